"""A prune rewrites mostly-unused packs (a repack): what it reads, and what a lost pack does to it."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from support.repositories import pack_reads, read_back, tar_stream, write_stream

from chromaguard.backup import repository
from chromaguard.backup.repository import Repository
from chromaguard.backup.retention import Policy


def _rounds(repo: Repository, rounds: int, size: int, rewritten: float) -> list[dict]:
    """Backups of a stream changed a little everywhere (deltas) and rewritten here and there
    (chunks stored whole in that round's packs): the kept backup's chunks and bases end up spread
    over every round's packs."""
    rnd = random.Random(5)
    data = bytearray(rnd.randbytes(size))
    made = []
    for r in range(rounds):
        for at in range((r % 8) * 8192, len(data), 8 * 8192):
            data[at:at + 8] = rnd.randbytes(8)
        for _ in range(int(len(data) // 8192 * rewritten)):
            at = rnd.randrange(len(data) // 8192) * 8192
            data[at:at + 8192] = rnd.randbytes(8192)
        made.append(write_stream(repo, tar_stream(bytes(data))))
    return made


@pytest.fixture(autouse=True)
def small_packs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(repository, "PACK_SIZE", 1 << 20)  # many packs from a few MiB


def test_a_repack_reads_about_what_it_keeps_not_every_pack_its_bases_are_in(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = Repository.open(str(tmp_path / "repo"), create=True)
    made = _rounds(repo, 12, 6 << 20, 0.03)
    before, expected = repo.size(), read_back(repo, made[-1]["id"])
    fetched = pack_reads(monkeypatch)
    report = repo.prune(Policy(last=1))
    assert report.packs_removed > 0
    # What it copies and the new packs read back once written: through whole packs and a cache of
    # eight, the bases spread over every round's packs were read twice that.
    assert sum(fetched) <= 1.5 * before, f"{sum(fetched) >> 20} MiB read to prune a {before >> 20} MiB repository"
    assert read_back(repo, made[-1]["id"]) == expected


def test_a_lost_pack_holding_a_base_does_not_stop_every_later_prune(tmp_path: Path) -> None:
    repo = Repository.open(str(tmp_path / "repo"), create=True)
    made = _rounds(repo, 4, 4 << 20, 0.10)
    newest = repo.manifest(made[-1]["id"])
    lost = newest["packs"][next(entry for entry in newest["bases"])[0]]
    os.remove(tmp_path / "repo" / "packs" / lost[:2] / lost)
    report = repo.prune(Policy(last=1))  # the backups needing it are broken; what else can go, goes
    assert report.removed and report.packs_removed > 0
    repo.prune(Policy(last=1))
    with pytest.raises(repository.CorruptBackup, match="missing"):
        repo.check(made[-1]["id"])  # and verify still says so
