"""Backup and export/import, side by side with `tar czf` of the same dir, on 100k x 384-d vectors.

Prints backup throughput (MB/s of data dir), the write-hold time, `tar czf` throughput of the same
(stopped) data dir in the same run, and export/import records per second.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.clients import http_client  # noqa: E402
from support.procs import BareEngine, Guard  # noqa: E402

from chromaguard.backup import take as backups  # noqa: E402
from chromaguard.backup.restore import restore  # noqa: E402
from chromaguard.backup.transfer import export, import_  # noqa: E402
from chromaguard.engine.catalog import directory_size  # noqa: E402


def run(records: int, dim: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="cg-bench-backup-"))
    data = work / "data"
    vectors = np.random.default_rng(7).random((records, dim), dtype=np.float32)
    out: dict[str, Any] = {"records": records, "dim": dim}
    with Guard(data_dir=data) as guard:
        col = http_client(guard.port).create_collection("bench", embedding_function=None)
        batch = 5000
        for start in range(0, records, batch):
            col.add(ids=[f"r{i}" for i in range(start, min(records, start + batch))],
                    embeddings=vectors[start:start + batch],
                    documents=[f"doc {i}" for i in range(start, min(records, start + batch))])
        size = directory_size(data)
        out["data_dir_mb"] = size / 1e6
        result = backups.online(guard.url, work / "bk")
        out["backup_s"] = result.seconds
        out["backup_mb_per_s"] = size / 1e6 / result.seconds
        out["write_hold_ms"] = result.write_hold_ms
        out["archive_mb"] = result.size / 1e6
        t0 = time.perf_counter()
        exported = export(guard.url, work / "export.jsonl.gz")
        out["export_records_per_s"] = exported.records / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    subprocess.run(["tar", "czf", str(work / "tar.tgz"), "-C", str(data), "."], check=True)
    tar_s = time.perf_counter() - t0
    out["tar_czf_s"] = tar_s
    out["tar_czf_mb_per_s"] = size / 1e6 / tar_s
    out["backup_vs_tar_throughput"] = out["backup_mb_per_s"] / out["tar_czf_mb_per_s"]
    t0 = time.perf_counter()
    restore(result.path, work / "restored")
    out["restore_with_verify_s"] = time.perf_counter() - t0
    bare = BareEngine()
    try:
        t0 = time.perf_counter()
        imported = import_(work / "export.jsonl.gz", bare.url)
        out["import_records_per_s"] = imported.records / (time.perf_counter() - t0)
    finally:
        bare.close()
    subprocess.run(["rm", "-rf", str(work)], check=False)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = run(args.records, args.dim)
    for key, value in result.items():
        print(f"{key:28}{value:>14.2f}" if isinstance(value, float) else f"{key:28}{value:>14}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
