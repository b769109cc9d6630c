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
from chromaguard.backup.store import Store, StoreError


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


@pytest.mark.parametrize("damage", ["cut short", "flipped byte"])
@pytest.mark.parametrize("seed", range(3))
def test_a_damaged_pack_is_left_as_it_is_and_every_prune_still_frees_the_rest(
        tmp_path: Path, damage: str, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # A pack cut short inside a used chunk (or a byte flipped there), a delta's base or the delta:
    # the backups using it are broken, and verify says so; prunes must not stop for good.
    monkeypatch.setattr(repository, "PACK_SIZE", 256 << 10)
    repo = Repository.open(str(tmp_path / "repo"), create=True)
    rnd = random.Random(seed)
    data = bytearray(rnd.randbytes(300_000).hex().encode())
    for _ in range(4):
        for _ in range(40):
            at = rnd.randrange(len(data) - 8)
            data[at:at + 4] = rnd.randbytes(4)
        at = rnd.randrange(len(data))
        data[at:at + 150_000] = rnd.randbytes(75_000).hex().encode()
        newest = write_stream(repo, tar_stream(bytes(data)))
    entry = next(e for e in newest["chunks"] if len(e) == 6)
    pack, offset, length = newest["bases"][entry[5]][:3] if seed % 2 == 0 else entry[:3]
    name = newest["packs"][pack]
    with open(tmp_path / "repo" / "packs" / name[:2] / name, "r+b") as fh:
        if damage == "cut short":
            fh.truncate(offset + length - 1)
        else:
            fh.seek(offset + length // 2)
            byte = fh.read(1)[0]
            fh.seek(offset + length // 2)
            fh.write(bytes([byte ^ 0x40]))
    repo.prune(Policy(last=1))
    repo.prune(Policy(last=1))
    assert [info.id for info in repo.backups()] == [newest["id"]]
    with pytest.raises(repository.CorruptBackup):
        repo.check(newest["id"])


def test_a_range_past_the_end_of_an_object_is_a_store_error_not_a_panic(tmp_path: Path) -> None:
    # obstore panics (a BaseException that `except Exception` misses) on a range starting past the
    # end when it is merged with one before it: what a pack cut short under a restore gives.
    store = Store(str(tmp_path))
    store.put("packs/ab/obj", b"x" * 1000)
    with pytest.raises(StoreError, match="could not read"):
        store.get_ranges("packs/ab/obj", [(0, 10), (1005, 1010)])
