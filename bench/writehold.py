"""How long an online snapshot holds writes, against the number of collections and the data size.

For each case: a fresh service, the data written through the API, then ``--runs`` snapshots
(``POST /chromaguard/snapshots``, dropped again without download) while one writer adds a
record at a time to a collection of its own. Prints per case the median write hold, the
description phase that follows it (counts from the copy, samples through the engine), and the
slowest write the writer saw during the snapshots: what a client feels.

    python bench/writehold.py            # 10/100/1000 collections, 10k and 40k x 384-d (~3 min)
    python bench/writehold.py --quick    # 10/100 collections, 10k x 384-d
    python bench/writehold.py --json     # the figures as JSON too
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.procs import Guard  # noqa: E402

from chromaguard.backup.snapshot import data_files  # noqa: E402

BASE = "/api/v2/tenants/default_tenant/databases/default_database"


def _fill(http: httpx.Client, collections: int, records: int, dim: int) -> None:
    rng = np.random.default_rng(7)
    per = max(1, records // collections)
    for i in range(collections):
        cid = http.post(f"{BASE}/collections", json={"name": f"bench-{i:04d}"}).json()["id"]
        for start in range(0, per, 5000):
            n = min(5000, per - start)
            r = http.post(f"{BASE}/collections/{cid}/add", json={
                "ids": [f"r{j}" for j in range(start, start + n)],
                "embeddings": rng.random((n, dim), dtype=np.float32).tolist(),
                "documents": [f"document {j}" for j in range(start, start + n)]})
            r.raise_for_status()


class _Writer:
    """One client adding a record at a time; the slowest answer while ``watching``."""

    def __init__(self, url: str, cid: str) -> None:
        self.url, self.cid = url, cid
        self.watching = False
        self.worst = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=120) as http:
            n = 0
            while not self.stop.is_set():
                watched = self.watching
                t0 = time.monotonic()
                http.post(f"{BASE}/collections/{self.cid}/add", json={"ids": [f"w{n}"], "embeddings": [[0.5]]})
                if watched or self.watching:
                    self.worst = max(self.worst, time.monotonic() - t0)
                n += 1
                time.sleep(0.002)


def case(collections: int, records: int, dim: int, runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cg-bench-hold-") as tmp:
        return _case(Path(tmp), collections, records, dim, runs)


def _case(work: Path, collections: int, records: int, dim: int, runs: int) -> dict[str, Any]:
    with Guard(data_dir=work / "data") as guard, httpx.Client(base_url=guard.url, timeout=300) as http:
        t0 = time.perf_counter()
        _fill(http, collections, records, dim)
        fill_s = time.perf_counter() - t0
        files = data_files(guard.data_dir)
        size = sum(st.st_size for st in files.values())
        writer = _Writer(guard.url, http.post(f"{BASE}/collections", json={"name": "writer"}).json()["id"])
        writer.thread.start()
        holds, describes = [], []
        try:
            for _ in range(runs):
                time.sleep(0.2)  # the writer is writing when the snapshot starts
                writer.watching = True
                created = http.post("/chromaguard/snapshots")
                time.sleep(0.05)  # a write sent just before the release is answered just after it
                writer.watching = False
                created.raise_for_status()
                info = created.json()
                holds.append(info["write_hold_ms"])
                # nan: before it was reported
                describes.append(info.get("after_hold_ms", {}).get("describe", float("nan")))
                http.delete(f"/chromaguard/snapshots/{info['id']}")
        finally:
            writer.stop.set()
            writer.thread.join()
    return {"collections": collections, "records": records, "dim": dim, "data_mb": round(size / 1e6, 1),
            "files": len(files), "hold_ms": statistics.median(holds), "hold_ms_max": max(holds),
            "describe_ms": statistics.median(describes), "writer_worst_ms": round(writer.worst * 1000, 1),
            "fill_s": round(fill_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer and smaller cases")
    parser.add_argument("--runs", type=int, default=3, help="snapshots per case (the median is shown)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    cases = [(10, 200, 16), (100, 2000, 16)] + ([] if args.quick else [(1000, 20000, 16)])
    cases += [(1, 10000, 384)] + ([] if args.quick else [(1, 40000, 384)])
    results = []
    print(f"{'collections':>11} {'records':>8} {'dim':>4} {'data MB':>8} {'files':>6} {'hold ms':>8} "
          f"{'(max)':>7} {'describe ms':>11} {'writer worst ms':>15}")
    for collections, records, dim in cases:
        r = case(collections, records, dim, args.runs)
        results.append(r)
        print(f"{r['collections']:>11} {r['records']:>8} {r['dim']:>4} {r['data_mb']:>8} {r['files']:>6} "
              f"{r['hold_ms']:>8.1f} {r['hold_ms_max']:>7.1f} {r['describe_ms']:>11.1f} {r['writer_worst_ms']:>15.1f}",
              flush=True)
    print("hold: writes held (in-flight ones answered, then the copy); describe: counts and samples, after the "
          "hold; writer worst: the slowest single add a concurrent client saw during the snapshots")
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
