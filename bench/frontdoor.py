"""Front door vs bare engine, side by side in one run: add throughput and query latency.

Both servers run the same engine build on this machine, get the same data and
the same queries from the official Python client; requests alternate between
them so machine noise lands on both alike. Prints ratios (guard / bare).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import http_client  # noqa: E402
from procs import BareEngine, Guard  # noqa: E402


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(records: int, dim: int, queries: int, batch: int = 1000, guard_args: tuple[str, ...] = (),
        guard_env: dict[str, str] | None = None) -> dict[str, Any]:
    rng = np.random.default_rng(42)
    data = rng.random((records, dim), dtype=np.float32)
    probes = rng.random((queries, dim), dtype=np.float32)
    bare = BareEngine()
    guard = Guard(*guard_args, env=guard_env).start()
    try:
        clients = {"bare": http_client(bare.port), "guard": http_client(guard.port)}
        cols = {k: c.create_collection("bench", embedding_function=None) for k, c in clients.items()}
        add_seconds = {"bare": 0.0, "guard": 0.0}
        for start in range(0, records, batch):
            ids = [f"r{i}" for i in range(start, min(records, start + batch))]
            for key in ("bare", "guard") if (start // batch) % 2 == 0 else ("guard", "bare"):
                t0 = time.perf_counter()
                cols[key].add(ids=ids, embeddings=data[start:start + len(ids)])
                add_seconds[key] += time.perf_counter() - t0
        for key, col in cols.items():
            assert col.count() == records, key
        latencies: dict[str, list[float]] = {"bare": [], "guard": []}
        for i in range(min(50, queries)):  # warm-up
            for col in cols.values():
                col.query(query_embeddings=probes[i:i + 1], n_results=10)
        for i in range(queries):
            order = ("bare", "guard") if i % 2 == 0 else ("guard", "bare")
            for key in order:
                t0 = time.perf_counter()
                cols[key].query(query_embeddings=probes[i:i + 1], n_results=10)
                latencies[key].append((time.perf_counter() - t0) * 1000)
        result: dict[str, Any] = {"records": records, "dim": dim, "queries": queries}
        for key in ("bare", "guard"):
            result[f"{key}_add_records_per_s"] = records / add_seconds[key]
            result[f"{key}_query_p50_ms"] = statistics.median(latencies[key])
            result[f"{key}_query_p95_ms"] = _percentile(latencies[key], 0.95)
        result["add_throughput_ratio"] = result["guard_add_records_per_s"] / result["bare_add_records_per_s"]
        result["query_p50_ratio"] = result["guard_query_p50_ms"] / result["bare_query_p50_ms"]
        result["query_p95_ratio"] = result["guard_query_p95_ms"] / result["bare_query_p95_ms"]
        return result
    finally:
        guard.close()
        bare.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    result = run(args.records, args.dim, args.queries)
    print(f"{args.records} x {args.dim}-d, top-10, {args.queries} queries, official client")
    print(f"{'':24}{'bare engine':>14}{'chromaguard':>14}{'ratio':>8}")
    print(f"{'add (records/s)':24}{result['bare_add_records_per_s']:>14.0f}{result['guard_add_records_per_s']:>14.0f}"
          f"{result['add_throughput_ratio']:>8.3f}")
    for q in ("p50", "p95"):
        print(f"{'query ' + q + ' (ms)':24}{result[f'bare_query_{q}_ms']:>14.3f}{result[f'guard_query_{q}_ms']:>14.3f}"
              f"{result[f'query_{q}_ratio']:>8.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
