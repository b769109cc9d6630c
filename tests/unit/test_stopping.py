"""A stopping service cuts a prune or a test restore short at a safe point, as a kill would."""

from __future__ import annotations

import contextlib
import io
import os
import random
import threading
from pathlib import Path

import pytest
from support.repositories import tar_stream, write_stream

from chromaguard.backup.repository import Repository, Stopped
from chromaguard.backup.restore import verify_in
from chromaguard.backup.retention import Policy


class _SetAfter(threading.Event):
    """Set from the ``n``-th question on: a SIGTERM arriving in the middle of the work."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.asked, self.n = 0, n

    def is_set(self) -> bool:
        self.asked += 1
        return self.asked > self.n


def _three_backups(repo: Repository) -> list[str]:
    return [write_stream(repo, tar_stream(os.urandom(3 << 20)))["id"] for _ in range(3)]


def _read(repo: Repository, backup_id: str) -> bytes:
    out = io.BytesIO()
    repo.read(backup_id, out)  # every chunk and the whole stream checked against their sha256
    return out.getvalue()


def _restores(repo: Repository, backup_id: str) -> bool:
    return len(_read(repo, backup_id)) > 3 << 20


@pytest.mark.parametrize("after", [0, 1, 2, 3])
def test_a_prune_stopped_at_any_deletion_leaves_every_kept_backup_and_the_next_one_finishes(
        tmp_path: Path, after: int) -> None:
    repo = Repository.open(str(tmp_path / "repo"), create=True)
    ids = _three_backups(repo)
    packs = repo.size()
    with pytest.raises(Stopped, match="prune was stopped"):
        repo.prune(Policy(last=1), stop=_SetAfter(after))
    left = [info.id for info in repo.backups()]
    assert ids[-1] in left and _restores(repo, ids[-1])
    assert all(_restores(repo, i) for i in left)  # what is still listed is whole, not half deleted
    report = repo.prune(Policy(last=1))
    assert [info.id for info in repo.backups()] == [ids[-1]] and _restores(repo, ids[-1])
    assert repo.size() < packs / 2, report


def test_a_test_restore_stopped_is_noted_neither_as_passed_nor_failed(tmp_path: Path) -> None:
    repo = Repository.open(str(tmp_path / "repo"), create=True)
    backup_id = _three_backups(repo)[0]
    with pytest.raises(Stopped, match="test restore was stopped"):
        verify_in(repo, backup_id, into=tmp_path, stop=_SetAfter(2))
    assert repo.backups()[0].verified is None
    assert [p.name for p in tmp_path.iterdir()] == ["repo"], "the fetched stream is removed"


def _with_deltas_and_a_repack_due(repo: Repository) -> list[str]:
    """Three backups: the second edits the first here and there (delta chunks against its chunks)
    and rewrites a third of it (so the first's pack is mostly unused once it goes, and is repacked),
    the third repeats the second (its deltas shared by two backups)."""
    rnd = random.Random(11)
    data = bytearray(rnd.randbytes(1 << 19).hex().encode())  # compressible: a small edit is a small delta
    ids = [write_stream(repo, tar_stream(bytes(data)))["id"]]
    for _ in range(30):
        at = rnd.randrange(len(data) - 8)
        data[at:at + 4] = rnd.randbytes(4)
    data[400_000:800_000] = rnd.randbytes(200_000).hex().encode()
    second = write_stream(repo, tar_stream(bytes(data)))
    assert second["stats"]["delta_chunks"] > 0
    ids += [second["id"], write_stream(repo, tar_stream(bytes(data)))["id"]]
    return ids


@pytest.mark.parametrize("after", range(8))
def test_a_prune_stopped_while_it_repacks_leaves_a_repository_the_next_prune_cleans(
        tmp_path: Path, after: int) -> None:
    # A repack moves bases to new packs and then rewrites the manifests one by one: stopped in
    # between, two kept manifests name one delta with its base at two places, both still there.
    repo = Repository.open(str(tmp_path / "repo"), create=True)
    ids = _with_deltas_and_a_repack_due(repo)
    expected = {i: _read(repo, i) for i in ids[1:]}
    with contextlib.suppress(Stopped):
        repo.prune(Policy(last=2), stop=_SetAfter(after))
    assert all(_read(repo, i) == expected[i] for i in ids[1:])
    repo.prune(Policy(last=2))
    repo.prune(Policy(last=2))
    assert [info.id for info in repo.backups()] == ids[1:]
    assert all(_read(repo, i) == expected[i] and repo.check(i) for i in ids[1:])
