"""`backups list` on a repository with many backups, behind a store with a WAN's round trip.

A listing reads one manifest per backup. moto's S3 server on loopback answers in a few
milliseconds; a real object store takes tens, so a relay adds a delay to every transfer (20 ms
each way by default). The same listing is timed with the manifests fetched one at a time and
side by side (the repository's own setting), in one run; the figure is their ratio.

    python bench/listing.py [--backups N] [--delay SECONDS]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.repositories import backup, write_data  # noqa: E402
from support.s3 import MotoServer, Switch  # noqa: E402

from chromaguard.backup import repository  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backups", type=int, default=300)
    parser.add_argument("--delay", type=float, default=0.02)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cg-listing-"))
    s3 = MotoServer(tmp / "moto.log")
    try:
        os.environ.update(s3.env())
        s3.client().create_bucket(Bucket="bench-listing")
        url = "s3://bench-listing/repo"
        data = tmp / "data"
        write_data(data, {"docs": {"add": [0, 200], "dim": 8, "seed": 1}})
        first = backup(data, url, s3.env())["id"]
        repo = repository.Repository.open(url)
        manifest = json.loads(zstandard.ZstdDecompressor().decompress(
            repo.store.get(f"backups/{first}.json.zst"), max_output_size=1 << 26))
        for n in range(args.backups - 1):  # the same backup under older ids: what is timed is reading them
            manifest["id"] = repository.new_id(time.time() - 86_400 - n)
            repo.store.put(f"backups/{manifest['id']}.json.zst",
                           zstandard.ZstdCompressor().compress(json.dumps(manifest).encode()))
        far = Switch(s3.port, delay=args.delay)
        os.environ["AWS_ENDPOINT_URL"] = far.endpoint
        repo = repository.Repository.open(url)
        side_by_side = repository.MANIFEST_READERS
        timed = {}
        for readers in (1, side_by_side):
            t0 = time.perf_counter()
            assert len(repo.backups(readers)) == args.backups
            timed[readers] = time.perf_counter() - t0
        print(f"backups list of {args.backups} backups, {args.delay * 1000:.0f} ms added each way: "
              f"one at a time {timed[1]:.2f} s, {side_by_side} side by side {timed[side_by_side]:.2f} s "
              f"({timed[1] / timed[side_by_side]:.1f}x faster)")
    finally:
        s3.close()


if __name__ == "__main__":
    main()
