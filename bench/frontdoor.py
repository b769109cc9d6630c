"""Front door vs bare engine, side by side in one run: add throughput and query latency.

Every server runs the same engine build on this machine and gets the same data
and the same queries from the official Python client; requests rotate between
them so machine noise lands on all alike, and queries go to byte-identical copies
of one index. Prints ratios against the bare engine: plain chromaguard (embedded,
and in front of the bare engine itself), and chromaguard with token auth and
OpenTelemetry tracing on (spans exported to a real OTLP receiver in a process of its own).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import chromadb
import numpy as np
from chromadb.config import Settings

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))
from nginxproxy import NginxProxy  # noqa: E402
from nginxproxy import available as nginx_available  # noqa: E402
from support.procs import BareEngine, Guard  # noqa: E402
from tcpforward import TcpForwarder  # noqa: E402

TOKEN = "bench-token"
SAME_ENGINE = "guard, same engine as bare"
FORWARDER = "bare engine behind a TCP forwarder"
NGINX = "bare engine behind nginx + token auth"
TRACED_BARE = "bare engine, its own tracing on"
TRACED = ("guard+auth+tracing", "guard+auth+tracing, no engine spans")


class ReceiverProcess:
    """The tests' OTLP receiver (counting spans, not decoding them) in a process of its own.

    Why not in this one: its gRPC threads would take this process's GIL from the official
    client, and slow the client of every traced server (and only theirs).
    """

    _CODE = ("import sys; sys.path.insert(0, sys.argv[1]); from support.otlp_receiver import Receiver; "
             "r = Receiver(count_only=True).start(); print(r.endpoint, flush=True); sys.stdin.readline(); "
             "print(r.span_count, flush=True)")

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", self._CODE, str(TESTS)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.endpoint = self.proc.stdout.readline().strip()
        self.span_count = 0

    def stop(self) -> int:
        """The spans it received; it exits."""
        if self.proc.poll() is None:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
            self.span_count = int(self.proc.stdout.readline() or 0)
            self.proc.kill()
            self.proc.wait(10)
        return self.span_count


def _client(port: int, token: str | None = None) -> chromadb.ClientAPI:
    extra: dict[str, Any] = {}
    if token:
        extra = {"chroma_client_auth_provider": "chromadb.auth.token_authn.TokenAuthClientProvider",
                 "chroma_client_auth_credentials": token}
    return chromadb.HttpClient(host="127.0.0.1", port=port, settings=Settings(anonymized_telemetry=False, **extra))


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


_WRK_SCRIPT = """
local f = io.open(os.getenv("CG_BODY"), "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
local token = os.getenv("CG_TOKEN")
if token and #token > 0 then wrk.headers["X-Chroma-Token"] = token end
"""


def saturated_throughput(url: str, path: str, body: bytes, token: str | None, seconds: float,
                         connections: int = 8) -> float:
    """Requests/s from wrk (C, two threads, keep-alive) POSTing the same query as fast as it can."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "query.lua"
        script.write_text(_WRK_SCRIPT)
        payload = Path(tmp) / "body.json"
        payload.write_bytes(body)
        env = {**os.environ, "CG_BODY": str(payload), "CG_TOKEN": token or ""}
        out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "-s", str(script), url + path],
                             capture_output=True, text=True, env=env, check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"wrk saw {errors.group(1)} failed requests against {url}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def heartbeat_p50_ms(url: str, n: int = 2000) -> float:
    import httpx

    with httpx.Client(base_url=url) as http:
        for _ in range(100):
            http.get("/api/v2/heartbeat")
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            http.get("/api/v2/heartbeat")
            samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def _turns(keys: list[str], n: int) -> list[str]:
    """Round ``n``'s order: each server first in turn, and every other round backwards, so no
    server always follows the same one (and pays for what that one leaves running)."""
    turn = keys[n % len(keys):] + keys[:n % len(keys)]
    return turn[::-1] if (n // len(keys)) % 2 else turn


def _query_index(into: Path, data: np.ndarray, batch: int) -> Path:
    """The collection every server is queried on, built once by an engine that then stops.

    Why: an HNSW graph built with several threads differs from build to build, and so does
    what a search of it costs (by several per cent). Each server gets a byte-identical copy
    of this one, so the ratios measure the front door, not two different indexes.
    """
    engine = BareEngine(into)
    try:
        col = _client(engine.port).create_collection("bench", embedding_function=None)
        for start in range(0, len(data), batch):
            col.add(ids=[f"r{i}" for i in range(start, min(len(data), start + batch))],
                    embeddings=data[start:start + batch])
    finally:
        engine.close()
    return into


def run(records: int, dim: int, queries: int, batch: int = 1000, traced: bool = True,
        wrk_seconds: float = 20.0) -> dict[str, Any]:
    rng = np.random.default_rng(42)
    data = rng.random((records, dim), dtype=np.float32)
    probes = rng.random((queries, dim), dtype=np.float32)
    tmp = tempfile.TemporaryDirectory()
    root = Path(tmp.name)
    tokens = root / "tokens.json"
    tokens.write_text(json.dumps([TOKEN]))
    template = _query_index(root / "template", data, batch)

    def data_dir(name: str) -> Path:
        return Path(shutil.copytree(template, root / name))

    receiver = ReceiverProcess()
    bare_engine = BareEngine(data_dir("bare"))
    servers: dict[str, Any] = {"bare": bare_engine, "guard": Guard(data_dir=data_dir("guard")).start(),
                               # In front of the bare engine itself: the one difference is the front door.
                               SAME_ENGINE: Guard("--upstream", bare_engine.url).start(),
                               # The cost of a hop alone on this machine: bytes passed on unread.
                               FORWARDER: TcpForwarder(BareEngine(data_dir("forwarded")))}
    if nginx_available():  # the reference proxy the targets were set against (optional: apt-get install nginx-light)
        servers[NGINX] = NginxProxy(BareEngine(data_dir("nginx")), TOKEN)
    if traced:
        secured = {"CHROMA_SERVER_AUTH_PROVIDER": "token", "CHROMA_SERVER_AUTH_CREDENTIALS_FILE": str(tokens),
                   "CHROMA_SERVER_OTEL_ENDPOINT": receiver.endpoint, "CHROMA_SERVER_OTEL_SERVICE_NAME": "bench",
                   # Export often, so what a server's spans cost lands in its own wrk slice, not the next one's.
                   "OTEL_BSP_SCHEDULE_DELAY": "200"}
        # Like with like: the engine tracing itself, as chromaguard sets it up (request spans, the
        # same collector and export delay). The traced front door is measured against it too.
        servers[TRACED_BARE] = BareEngine(data_dir("traced-bare"), otel_endpoint=receiver.endpoint,
                                          env={"OTEL_BSP_SCHEDULE_DELAY": "200"})
        servers[TRACED[0]] = Guard(data_dir=data_dir("traced"), env=secured).start()
        # What the engine's own request spans cost is the engine's: shown apart.
        servers[TRACED[1]] = Guard(data_dir=data_dir("traced-own"), env={
            **secured, "CHROMAGUARD_OTEL_ENGINE_SPANS": "off"}).start()
    try:
        clients = {k: _client(s.port, TOKEN if "auth" in k else None) for k, s in servers.items()}
        keys = list(servers)
        # Adds and single queries leave the row in front of the bare engine out: its requests
        # would keep the bare engine's caches warmer than the others' (saturated runs take turns).
        alone = [key for key in keys if key != SAME_ENGINE]
        adds = {k: clients[k].create_collection(f"adds-{n}", embedding_function=None) for n, k in enumerate(alone)}
        add_seconds = dict.fromkeys(alone, 0.0)
        for n, start in enumerate(range(0, records, batch)):
            ids = [f"r{i}" for i in range(start, min(records, start + batch))]
            for key in _turns(alone, n):
                t0 = time.perf_counter()
                adds[key].add(ids=ids, embeddings=data[start:start + len(ids)])
                add_seconds[key] += time.perf_counter() - t0
        cols = {k: c.get_collection("bench", embedding_function=None) for k, c in clients.items()}
        for key in keys:
            assert cols[key].count() == records and (key not in adds or adds[key].count() == records), key
            assert cols[key].id == cols["bare"].id, "every server must query the same copied index"
        latencies: dict[str, list[float]] = {k: [] for k in alone}
        for i in range(min(50, queries)):  # warm-up
            for key in alone:
                cols[key].query(query_embeddings=probes[i:i + 1], n_results=10)
        for i in range(queries):
            for key in _turns(alone, i):
                t0 = time.perf_counter()
                cols[key].query(query_embeddings=probes[i:i + 1], n_results=10)
                latencies[key].append((time.perf_counter() - t0) * 1000)
        result: dict[str, Any] = {"records": records, "dim": dim, "queries": queries, "servers": {}}
        for key in keys:
            result["servers"][key] = {} if key not in alone else {
                "add_records_per_s": records / add_seconds[key],
                "query_p50_ms": statistics.median(latencies[key]),
                "query_p95_ms": _percentile(latencies[key], 0.95),
            }
        if shutil.which("wrk") and wrk_seconds > 0:
            body = json.dumps({"query_embeddings": [probes[0].tolist()], "n_results": 10,
                               "include": ["distances", "metadatas", "documents"]}).encode()
            # Short slices taken in turn, so a busy moment on the machine lands on every server alike.
            rounds = max(1, round(wrk_seconds / 2))
            served: dict[str, list[float]] = {key: [] for key in keys}
            rss: dict[str, list[float]] = {key: [] for key in keys}
            for n in range(rounds):
                for key in _turns(keys, n):
                    server = servers[key]
                    path = (f"/api/v2/tenants/default_tenant/databases/default_database/collections/"
                            f"{cols[key].id}/query")
                    stop = threading.Event()
                    if key not in ("bare", NGINX, TRACED_BARE):  # nginx's master is not the process that works
                        def sample(pid: int = server.proc.pid, into: list[float] = rss[key],
                                   stop: threading.Event = stop) -> None:
                            while not stop.is_set():
                                into.append(_rss_mb(pid))
                                time.sleep(0.2)
                        threading.Thread(target=sample, daemon=True).start()
                    served[key].append(saturated_throughput(server.url, path, body,
                                                            TOKEN if "auth" in key else None,
                                                            wrk_seconds / rounds))
                    stop.set()
                    time.sleep(0.3)  # the last spans leave before the next server's slice
            for key in keys:
                result["servers"][key]["query_throughput_rps"] = statistics.fmean(served[key])
                result["servers"][key]["query_throughput_slices"] = served[key]
                if rss[key]:
                    result["servers"][key]["front_door_rss_mb_max"] = max(rss[key])
            result["wrk"] = {"threads": 2, "connections": 8, "seconds_per_server": wrk_seconds, "slices": rounds}
        for key in keys:
            if "auth" not in key:
                result["servers"][key]["heartbeat_p50_ms"] = heartbeat_p50_ms(servers[key].url)
        for key in keys[1:]:
            _ratios(result["servers"][key], result["servers"]["bare"], key in alone)
        if TRACED_BARE in result["servers"]:
            result["traced"] = {"baseline": TRACED_BARE, "servers": {}}
            for key in TRACED:
                versus = result["traced"]["servers"][key] = dict(result["servers"][key])
                _ratios(versus, result["servers"][TRACED_BARE], True)
        if traced:
            result["spans_received"] = receiver.stop()
        return result
    finally:
        for server in servers.values():
            server.close()
        receiver.stop()
        tmp.cleanup()


def _ratios(mine: dict[str, Any], bare: dict[str, Any], alone: bool) -> None:
    """``mine``'s figures as ratios to ``bare``'s, written into ``mine``."""
    if alone:
        mine["add_throughput_ratio"] = mine["add_records_per_s"] / bare["add_records_per_s"]
        mine["query_p50_ratio"] = mine["query_p50_ms"] / bare["query_p50_ms"]
        mine["query_p95_ratio"] = mine["query_p95_ms"] / bare["query_p95_ms"]
    if "query_throughput_rps" in mine:
        # Each slice against the bare engine's slice of the same round (seconds apart):
        # the median of these pairs is what the machine's swings move least.
        pairs = sorted(a / b for a, b in zip(mine["query_throughput_slices"], bare["query_throughput_slices"]))
        mine["query_throughput_ratio"] = statistics.median(pairs)
        mine["query_throughput_ratio_of_means"] = mine["query_throughput_rps"] / bare["query_throughput_rps"]
        mine["query_throughput_ratio_range"] = [pairs[len(pairs) // 4], pairs[(3 * len(pairs)) // 4]]


def report(result: dict[str, Any]) -> str:
    lines = [(f"{result['records']} x {result['dim']}-d, top-10, {result['queries']} queries (official client); "
              f"saturated throughput: wrk {result.get('wrk', {}).get('connections', '-')} connections, "
              "ratio = median of slices paired with the bare engine's (IQR after it)"), _HEADER]
    lines += [_row(key, row) for key, row in result["servers"].items()]
    traced = result.get("traced")
    if traced:
        lines += ["", f"with tracing on both sides: ratios to the {traced['baseline']}", _HEADER]
        lines += [_row(key, row) for key, row in traced["servers"].items()]
    return "\n".join(lines)


_HEADER = (f"{'':38}{'add rec/s':>10}{'ratio':>7}{'p50 ms':>8}{'ratio':>7}{'p95 ms':>8}{'ratio':>7}"
           f"{'qps':>8}{'ratio':>7}{'IQR':>12}{'rss MB':>8}{'hb ms':>7}")


def _row(key: str, row: dict[str, Any]) -> str:
    def cell(name: str, width: int = 7, fmt: str = ".3f") -> str:
        return f"{row[name]:>{width}{fmt}}" if name in row else f"{'':>{width}}"
    spread = row.get("query_throughput_ratio_range")
    iqr = f"{spread[0]:.2f}-{spread[1]:.2f}" if spread else ""
    return (f"{key:38}{cell('add_records_per_s', 10, '.0f')}{cell('add_throughput_ratio')}"
            f"{cell('query_p50_ms', 8)}{cell('query_p50_ratio')}{cell('query_p95_ms', 8)}"
            f"{cell('query_p95_ratio')}{cell('query_throughput_rps', 8, '.0f')}"
            f"{cell('query_throughput_ratio')}{iqr:>12}{cell('front_door_rss_mb_max', 8, '.1f')}"
            f"{cell('heartbeat_p50_ms', 7, '.3f')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--no-tracing", action="store_true", help="skip the auth+tracing variant")
    parser.add_argument("--wrk-seconds", type=float, default=20.0,
                        help="saturated-throughput seconds per server, in 2 s slices taken in turn (0: skip)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    result = run(args.records, args.dim, args.queries, traced=not args.no_tracing, wrk_seconds=args.wrk_seconds)
    print(report(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
