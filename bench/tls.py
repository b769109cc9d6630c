"""HTTPS on the front door, side by side in one run with plain HTTP and with nginx over TLS.

Four servers in front of one bare engine and one collection (the same data for all):
chromaguard with token auth over HTTP and over HTTPS, nginx with a token check over HTTPS (the
reference TLS proxy), and the bare engine itself. Per server: query latency p50 from the official
Python client (rounds rotate between the servers so machine noise lands on all alike), and
saturated throughput from wrk (a count request on 32 kept-alive connections). Prints ratios
to the bare engine, and HTTPS against HTTP and against nginx.

    python bench/tls.py [--records N] [--rounds R] [--wrk-seconds S] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import chromadb
import numpy as np
from chromadb.config import Settings

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from nginxproxy import NginxProxy  # noqa: E402
from nginxproxy import available as nginx_available  # noqa: E402
from support.procs import BareEngine, Guard  # noqa: E402
from support.tls import Authority  # noqa: E402

TOKEN = "bench-token"
BASE = "/api/v2/tenants/default_tenant/databases/default_database"


class _Kept:
    """The shared engine, which a proxy must not close with itself."""

    def __init__(self, engine: BareEngine) -> None:
        self.port = engine.port

    def close(self) -> None:
        pass


def _client(port: int, https: bool, ca: Path | None, token: bool) -> chromadb.ClientAPI:
    settings: dict[str, Any] = {"anonymized_telemetry": False}
    if token:
        settings |= {"chroma_client_auth_provider": "chromadb.auth.token_authn.TokenAuthClientProvider",
                     "chroma_client_auth_credentials": TOKEN}
    if https:
        settings["chroma_server_ssl_verify"] = str(ca)
    return chromadb.HttpClient(host="127.0.0.1", port=port, ssl=https, settings=Settings(**settings))


def _wrk(url: str, seconds: int, token: bool) -> float | None:
    if shutil.which("wrk") is None:
        return None
    headers = ["-H", f"x-chroma-token: {TOKEN}"] if token else []
    out = subprocess.run(["wrk", "-t1", "-c32", f"-d{seconds}s", *headers, url], capture_output=True, text=True,
                         timeout=seconds + 30).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return float(found.group(1)) if found else None


def run(records: int, rounds: int, wrk_seconds: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="cg-bench-tls-"))
    authority = Authority(work / "ca")
    issued = authority.issue("chromaguard", "server")
    tokens = work / "tokens.json"
    tokens.write_text(json.dumps([TOKEN]))
    engine = BareEngine()
    rng = np.random.default_rng(3)
    collection = _client(engine.port, False, None, False).create_collection("tls", embedding_function=None)
    for start in range(0, records, 1000):
        n = min(1000, records - start)
        collection.add(ids=[f"r{i}" for i in range(start, start + n)],
                       embeddings=rng.random((n, 128), dtype=np.float32))
    queries = rng.random((rounds * 20, 128), dtype=np.float32)
    auth = {"CHROMA_SERVER_AUTH_PROVIDER": "token", "CHROMA_SERVER_AUTH_CREDENTIALS_FILE": str(tokens),
            "CHROMAGUARD_UPSTREAM": engine.url}
    tls_env = {"CHROMAGUARD_SSL_CERTFILE": str(issued.cert), "CHROMAGUARD_SSL_KEYFILE": str(issued.key)}
    servers: dict[str, tuple[Any, bool, bool]] = {}  # label: (server, https, token)
    opened: list[Any] = []
    try:
        plain = Guard(env=auth).start()
        opened.append(plain)
        secure = Guard(env={**auth, **tls_env}, ca=authority.cert).start()
        opened.append(secure)
        servers = {"bare engine": (engine, False, False), "chromaguard+token, HTTP": (plain, False, True),
                   "chromaguard+token, HTTPS": (secure, True, True)}
        if nginx_available():
            proxy = NginxProxy(_Kept(engine), TOKEN, tls=(issued.cert, issued.key))
            opened.append(proxy)
            servers["nginx+token, HTTPS"] = (proxy, True, True)
        clients = {label: _client(server.port, https, authority.cert, token).get_collection("tls")
                   for label, (server, https, token) in servers.items()}
        latencies: dict[str, list[float]] = {label: [] for label in servers}
        for round_ in range(rounds):
            for label, col in clients.items():
                for query in queries[round_ * 20:(round_ + 1) * 20]:
                    t0 = time.perf_counter()
                    col.query(query_embeddings=[query], n_results=5)
                    latencies[label].append(time.perf_counter() - t0)
        cid = collection.id
        throughput: dict[str, float | None] = {label: None for label in servers}
        for _ in range(2):  # two alternating rounds, the better of each kept
            for label, (server, _https, token) in servers.items():
                got = _wrk(f"{server.url}{BASE}/collections/{cid}/count", wrk_seconds, token)
                if got is not None:
                    throughput[label] = max(throughput[label] or 0.0, got)
        out: dict[str, Any] = {"records": records, "queries_per_server": rounds * 20, "rows": {}}
        bare_p50 = statistics.median(latencies["bare engine"])
        bare_rps = throughput["bare engine"]
        for label in servers:
            p50 = statistics.median(latencies[label])
            rps = throughput[label]
            out["rows"][label] = {"p50_ms": round(p50 * 1000, 3), "p50_vs_bare": round(p50 / bare_p50, 3),
                                  "req_per_s": rps, "throughput_vs_bare": round(rps / bare_rps, 3)
                                  if rps and bare_rps else None}
        rows = out["rows"]
        https, http = rows["chromaguard+token, HTTPS"], rows["chromaguard+token, HTTP"]
        out["https_vs_http"] = {"p50": round(https["p50_ms"] / http["p50_ms"], 3),
                                "throughput": round(https["req_per_s"] / http["req_per_s"], 3)
                                if https["req_per_s"] and http["req_per_s"] else None}
        if "nginx+token, HTTPS" in rows:
            nginx = rows["nginx+token, HTTPS"]
            out["https_vs_nginx_https"] = {"p50": round(https["p50_ms"] / nginx["p50_ms"], 3),
                                           "throughput": round(https["req_per_s"] / nginx["req_per_s"], 3)
                                           if https["req_per_s"] and nginx["req_per_s"] else None}
        return out
    finally:
        for server in reversed(opened):
            server.close()
        engine.close()
        shutil.rmtree(work, ignore_errors=True)


def report(result: dict[str, Any]) -> str:
    lines = [f"{'server':28}{'p50 ms':>9}{'x bare':>8}{'req/s':>10}{'x bare':>8}"]
    for label, row in result["rows"].items():
        rps = "-" if row["req_per_s"] is None else f"{row['req_per_s']:.0f}"
        ratio = "-" if row["throughput_vs_bare"] is None else f"{row['throughput_vs_bare']:.2f}"
        lines.append(f"{label:28}{row['p50_ms']:>9.2f}{row['p50_vs_bare']:>8.2f}{rps:>10}{ratio:>8}")
    lines.append(f"HTTPS against HTTP: {result['https_vs_http']}")
    if "https_vs_nginx_https" in result:
        lines.append(f"HTTPS against nginx HTTPS: {result['https_vs_nginx_https']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--wrk-seconds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = run(args.records, args.rounds, args.wrk_seconds)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
