"""Where delta chunks settle: many backups in a row, each after a few records changed.

A delta is taken against the chunk last stored whole, so it grows with every backup until the
chunk is stored whole again; ``delta.WORTH`` decides when. This takes one snapshot of a running
chromaguard per round (``--update`` records changed before each) and writes the same stream into
one folder repository per threshold, side by side, so every threshold sees the same data. It
prints each round's upload as a part of that repository's full backup, and the mean.

    python bench/deltasteady.py [--records N] [--update N] [--rounds N] [--worth 0.5,0.25,0.15]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.clients import http_client  # noqa: E402
from support.procs import Guard  # noqa: E402
from support.repositories import read_back, write_stream  # noqa: E402

from chromaguard.backup import delta, take  # noqa: E402
from chromaguard.backup.repository import Repository  # noqa: E402


def _copy(source: Repository, backup_id: str, into: Repository, worth: float) -> int:
    """The backup's stream written into ``into`` with ``worth`` as the threshold: bytes stored."""
    delta.WORTH = worth
    return int(write_stream(into, read_back(source, backup_id))["stats"]["stored_bytes"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--update", type=int, default=1000, help="records changed before each backup")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--worth", default="0.5,0.25,0.15")
    args = parser.parse_args()
    worths = [float(w) for w in args.worth.split(",")]
    work = Path(tempfile.mkdtemp(prefix="cg-bench-deltas-"))
    rng = np.random.default_rng(7)
    source = Repository.open(str(work / "source"), create=True)
    repos = {w: Repository.open(str(work / f"worth-{w}"), create=True) for w in worths}
    stored: dict[float, list[int]] = {w: [] for w in worths}
    with Guard(data_dir=work / "data") as guard:
        col = http_client(guard.port).create_collection("bench", embedding_function=None)
        for start in range(0, args.records, 5000):
            ids = [f"r{i}" for i in range(start, min(args.records, start + 5000))]
            col.add(ids=ids, embeddings=rng.random((len(ids), args.dim), dtype=np.float32),
                    documents=[f"document {i}" for i in ids])
        print("round  " + "  ".join(f"worth {w:<5}" for w in worths))
        for round_ in range(args.rounds + 1):
            if round_:
                changed = [f"r{i}" for i in rng.choice(args.records, args.update, replace=False)]
                col.update(ids=changed, embeddings=rng.random((len(changed), args.dim), dtype=np.float32))
            info = take.online_to(guard.url, source)
            for w in worths:
                stored[w].append(_copy(source, info.id, repos[w], w))
            print(f"{round_:5}  " + "  ".join(f"{stored[w][-1] / stored[w][0]:11.4f}" for w in worths), flush=True)
    for w in worths:
        later = stored[w][1:]
        print(f"worth {w}: an incremental uploaded {sum(later) / len(later) / stored[w][0]:.4f} of the full "
              f"backup on average; all {len(stored[w])} backups {sum(stored[w]) / stored[w][0]:.2f} full backups")


if __name__ == "__main__":
    main()
