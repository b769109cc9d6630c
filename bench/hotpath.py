"""The Python cost of one relayed request, with no sockets: what profiling the hot path measures.

A request goes through the real code (HTTP server parser, front door, relay, engine-side
parser, response writer, metrics, spans) with transports that only keep what is written,
so neither the kernel nor the engine is in the figure. Hot caches make it a lower bound:
the same code run between an engine's searches costs several times more (docs/performance.md).
So each variant is also measured cold: before each request a 64 MiB buffer is walked, as a
search walks the index, and only the request's own CPU time counts (the event-loop
thread's; the span exporter's batches are not in it). Printed per variant, and as a ratio
to plain forwarding.

    python bench/hotpath.py [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent.parent / "tests"
TOKEN = "hot-token"
_BODY = json.dumps({"query_embeddings": [[0.5] * 32], "n_results": 10, "include": ["distances"]}).encode()
_ANSWER = json.dumps({"ids": [[f"r{i}" for i in range(10)]], "embeddings": None, "documents": [[None] * 10],
                      "uris": None, "metadatas": [[None] * 10], "distances": [[0.1 * i for i in range(10)]],
                      "include": ["distances"]}, separators=(",", ":")).encode()
RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nchroma-trace-id: " + b"0" * 32 + b"\r\n"
            b"vary: origin, access-control-request-method, access-control-request-headers\r\n"
            b"content-length: %d\r\ndate: Tue, 01 Dec 2026 10:00:00 GMT\r\n\r\n" % len(_ANSWER)) + _ANSWER


def request(token: bool) -> bytes:
    """The official client's query request, as it arrives in one read."""
    return (b"POST /api/v2/tenants/default_tenant/databases/default_database/collections/"
            b"0b6c8c1e-2f7e-4c1e-9d6e-1b1f1c1d1e1f/query HTTP/1.1\r\nhost: 127.0.0.1:8000\r\naccept: */*\r\n"
            b"accept-encoding: gzip, deflate\r\nconnection: keep-alive\r\n"
            + (b"x-chroma-token: " + TOKEN.encode() + b"\r\n" if token else b"")
            + b"user-agent: Chroma Python Client v1.5.9 (https://github.com/chroma-core/chroma)\r\n"
            b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(_BODY) + _BODY)


class _Written:
    """A transport that keeps what is written to it."""

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name in ("peername", "sockname") else default

    def is_closing(self) -> bool:
        return False

    def is_reading(self) -> bool:
        return True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


async def _measure(requests: int, env: dict[str, str], auth: bool) -> tuple[float, float, float]:
    """µs per relayed request: of the event-loop thread, of the whole process, and of the
    event-loop thread with cold caches (the median request)."""
    from chromaguard.access.auth import Authenticator
    from chromaguard.access.credentials import load_store
    from chromaguard.config.settings import load_settings
    from chromaguard.http11.client import EngineConnection, UpstreamPool
    from chromaguard.http11.server import ClientConnection, HttpServer
    from chromaguard.proxy.frontdoor import AlwaysAvailable, FrontDoor
    from chromaguard.telemetry.instruments import Telemetry

    telemetry = Telemetry(load_settings({}, env))
    pool = UpstreamPool("http://127.0.0.1:9")
    engine, engine_side = EngineConnection(), _Written()
    engine.connection_made(engine_side)  # type: ignore[arg-type]
    engine.complete = True
    pool.release(engine)
    authenticator = Authenticator("token", load_store("token", None, TOKEN, file_setting="-", inline_setting="-")) \
        if auth else None
    door = FrontDoor(pool, AlwaysAvailable(), max_payload_bytes=1 << 24, upstream_timeout=60.0,
                     telemetry=telemetry, auth=authenticator)
    client, client_side = ClientConnection(HttpServer(door)), _Written()
    client.connection_made(client_side)  # type: ignore[arg-type]
    data = request(auth)

    def once() -> None:
        client.data_received(data)
        engine.data_received(RESPONSE)

    for _ in range(2000):
        once()
    assert len(engine_side.out) == 2000 and client_side.out[-1].startswith(b"HTTP/1.1 200 "), client_side.out[-1][:80]
    thread0, process0 = time.thread_time(), time.process_time()
    for _ in range(requests):
        once()
    thread = time.thread_time() - thread0
    await asyncio.sleep(1.0)  # the span exporter's last batch counts too
    process = time.process_time() - process0
    cold = _cold(once, requests // 10)
    return thread / requests * 1e6, process / requests * 1e6, cold


def _cold(once: Any, requests: int) -> float:
    """The median request's CPU µs after the caches were filled with something else."""
    import numpy as np

    other = np.zeros(64 << 20, dtype=np.uint8)
    samples = []
    for _ in range(requests):
        other[::64] += 1  # a line in every 64 bytes: what the engine's search leaves in the caches
        start = time.thread_time_ns()
        once()
        samples.append(time.thread_time_ns() - start)
    return statistics.median(samples) / 1000


def _child(variant: str, requests: int) -> None:
    import uvloop

    env = {"CHROMA_ANONYMIZED_TELEMETRY": "false"}
    if "tracing" in variant:
        env.update({"CHROMA_SERVER_OTEL_ENDPOINT": os.environ["CG_OTLP"], "CHROMA_SERVER_OTEL_SERVICE_NAME": "hot"})
    print(json.dumps(uvloop.run(_measure(requests, env, "auth" in variant))))


VARIANTS = ("plain", "auth", "tracing", "auth+tracing")


def run(requests: int = 40_000, repeats: int = 3) -> dict[str, Any]:
    """Each variant in fresh processes, taking turns; the median of ``repeats``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from frontdoor import ReceiverProcess

    receiver = ReceiverProcess()
    try:
        samples: dict[str, list[tuple[float, float, float]]] = {v: [] for v in VARIANTS}
        for _ in range(repeats):
            for variant in VARIANTS:
                out = subprocess.run([sys.executable, __file__, "--child", variant, "--requests", str(requests)],
                                     capture_output=True, text=True, check=True,
                                     env={**os.environ, "CG_OTLP": receiver.endpoint}).stdout
                samples[variant].append(tuple(json.loads(out.strip().splitlines()[-1])))  # type: ignore[arg-type]
    finally:
        receiver.stop()
    result: dict[str, Any] = {"requests": requests, "repeats": repeats, "variants": {}}
    plain = statistics.median(s[1] for s in samples["plain"])
    plain_cold = statistics.median(s[2] for s in samples["plain"])
    for variant, values in samples.items():
        process = statistics.median(s[1] for s in values)
        cold = statistics.median(s[2] for s in values)
        result["variants"][variant] = {"loop_thread_us": statistics.median(s[0] for s in values),
                                       "process_us": process, "ratio_to_plain": process / plain,
                                       "cold_loop_thread_us": cold, "cold_ratio_to_plain": cold / plain_cold}
    return result


def report(result: dict[str, Any]) -> str:
    lines = [f"Python per relayed request, no sockets: hot caches ({result['requests']} requests), and cold "
             f"(the median of {result['requests'] // 10}, each after a 64 MiB walk); "
             f"median of {result['repeats']} processes",
             f"{'':16}{'loop thread us':>16}{'process us':>12}{'x plain':>9}{'cold us':>10}{'x plain':>9}"]
    for variant, row in result["variants"].items():
        lines.append(f"{variant:16}{row['loop_thread_us']:>16.2f}{row['process_us']:>12.2f}{row['ratio_to_plain']:>9.2f}"
                     f"{row['cold_loop_thread_us']:>10.1f}{row['cold_ratio_to_plain']:>9.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40_000)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.requests)
        return
    print(report(run(args.requests)))


if __name__ == "__main__":
    main()
