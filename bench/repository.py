"""Backup repositories on a loopback S3 server, side by side with tar, zstd and a plain copy.

One run on one data dir (100k x 384 with documents and metadata, about 500 MB by default) of a
running chromaguard: a full backup to moto's S3 server, then 1 % of the records added, and 1 %
changed, each followed by an incremental backup (and four more rounds of changes, to see where
delta chunks settle), then a restore from the repository (verified by the real engine), then a
prune. The references are taken of the same data dir in the same run: `tar czf` (the seed's
backup), `tar | zstd -T0`, and a plain copy. Figures are MB of data dir per second, and the
incremental's uploads, time and write hold as ratios to the full backup's.

    python bench/repository.py [--records N] [--dim D] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.clients import http_client  # noqa: E402
from support.procs import Guard  # noqa: E402
from support.s3 import MotoServer  # noqa: E402

from chromaguard.engine.catalog import directory_size  # noqa: E402


def _timed(*cmd: str, shell: bool = False, env: dict[str, str] | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(" ".join(cmd) if shell else list(cmd), shell=shell, check=True, capture_output=True,
                         text=True, env=env)
    return time.perf_counter() - t0, out.stdout


def run(records: int, dim: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="cg-bench-repo-"))
    s3 = MotoServer(work / "moto.log")
    import os

    env = {**os.environ, **s3.env()}
    repo = f"s3://{s3.bucket('bench')}/chroma"
    rng = np.random.default_rng(7)
    out: dict[str, Any] = {"records": records, "dim": dim}
    try:
        with Guard(data_dir=work / "data") as guard:
            col = http_client(guard.port).create_collection("bench", embedding_function=None)
            for start in range(0, records, 5000):
                ids = [f"r{i}" for i in range(start, min(records, start + 5000))]
                col.add(ids=ids, embeddings=rng.random((len(ids), dim), dtype=np.float32),
                        documents=[f"document {i}: " + "words " * 20 for i in ids],
                        metadatas=[{"n": i, "tag": f"t{i % 31}"} for i in range(start, start + len(ids))])
            size = directory_size(guard.data_dir)
            out["data_dir_mb"] = round(size / 1e6, 1)

            def backup() -> dict[str, Any]:
                seconds, text = _timed(sys.executable, "-m", "chromaguard", "backup", "--url", guard.url, "--to",
                                       repo, "--json", env=env)
                return {**json.loads(text), "seconds": seconds}

            full = backup()
            out["full"] = {"seconds": round(full["seconds"], 2), "mb_per_s": round(size / 1e6 / full["seconds"], 1),
                           "uploaded_mb": round(full["stored_bytes"] / 1e6, 1), "write_hold_ms": full["write_hold_ms"]}
            def incremental(made: dict[str, Any]) -> dict[str, Any]:
                return {"seconds": round(made["seconds"], 2), "uploaded_mb": round(made["stored_bytes"] / 1e6, 2),
                        "write_hold_ms": made["write_hold_ms"],
                        "uploaded_vs_full": round(made["stored_bytes"] / full["stored_bytes"], 4),
                        "time_vs_full": round(made["seconds"] / full["seconds"], 3),
                        "hold_vs_full": round(made["write_hold_ms"] / full["write_hold_ms"], 3)}

            # 1 % new records (an append-mostly workload), then 1 % of the records changed in place.
            new = [f"n{i}" for i in range(records // 100)]
            for start in range(0, len(new), 1000):
                part = new[start:start + 1000]
                col.add(ids=part, embeddings=rng.random((len(part), dim), dtype=np.float32),
                        documents=[f"new {i}" for i in part])
            out["incremental_after_adding_1pct"] = incremental(backup())

            def update_one_percent() -> None:
                changed = [f"r{i}" for i in rng.choice(records, records // 100, replace=False)]
                for start in range(0, len(changed), 1000):
                    part = changed[start:start + 1000]
                    col.update(ids=part, embeddings=rng.random((len(part), dim), dtype=np.float32),
                               documents=["changed " + i for i in part])

            update_one_percent()
            out["incremental_after_updating_1pct"] = incremental(backup())
            # The same hold without the mirror, in the same run: a second snapshot taken while the
            # first is kept for download copies the whole data dir under the hold.
            with httpx.Client(base_url=guard.url, timeout=600) as http:
                kept = http.post("/chromaguard/snapshots").json()
                fresh = http.post("/chromaguard/snapshots").json()
                for made in (kept, fresh):
                    http.delete(f"/chromaguard/snapshots/{made['id']}")
            assert kept["write_hold"]["mirror"] and not fresh["write_hold"]["mirror"]
            out["hold_without_mirror_ms"] = fresh["write_hold_ms"]
            out["hold_with_mirror_nothing_changed_ms"] = kept["write_hold_ms"]
            out["incremental_hold_vs_whole_copy"] = round(
                out["incremental_after_updating_1pct"]["write_hold_ms"] / fresh["write_hold_ms"], 3)
            # Deltas are taken against the chunk last stored whole, so they grow with each backup
            # until a chunk is stored whole again: four more rounds show where that settles.
            later = []
            for _ in range(4):
                update_one_percent()
                later.append(incremental(backup())["uploaded_vs_full"])
            out["later_updates_uploaded_vs_full"] = later
        data = work / "data"
        seconds, _ = _timed("tar", "czf", str(work / "seed.tgz"), "-C", str(data), ".")
        out["tar_czf_mb_per_s"] = round(size / 1e6 / seconds, 1)
        if shutil.which("zstd"):
            seconds, _ = _timed(f"tar cf - -C {data} . | zstd -T0 -q -o {work / 'z.tar.zst'}", shell=True)
            out["tar_zstd_mb_per_s"] = round(size / 1e6 / seconds, 1)
        seconds, _ = _timed("cp", "-r", str(data), str(work / "copy"))
        out["plain_copy_mb_per_s"] = round(size / 1e6 / seconds, 1)
        shutil.rmtree(work / "copy")
        seconds, _ = _timed(sys.executable, "-m", "chromaguard", "restore", repo, "--data-dir", str(work / "back"),
                            env=env)
        out["restore"] = {"seconds": round(seconds, 2), "mb_per_s": round(size / 1e6 / seconds, 1)}
        seconds, _ = _timed(sys.executable, "-m", "chromaguard", "backups", "prune", repo, "--keep-last", "1",
                            env=env)
        out["prune_s"] = round(seconds, 2)
        out["full_vs_tar_czf"] = round(out["full"]["mb_per_s"] / out["tar_czf_mb_per_s"], 2)
        return out
    finally:
        s3.close()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = run(args.records, args.dim)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
