"""A stopping service cuts a prune or a test restore short at a safe point, as a kill would."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from support.repositories import archive_stream, read_back, with_deltas_and_a_repack_due, write_stream

from chromaguard.backup.repository import Repository, Stopped
from chromaguard.backup.restore import VerifyError, verify, verify_in
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
    # Real archive manifests: a test restore stopped part way finds nothing wrong in what it read.
    return [write_stream(repo, archive_stream({"data/chroma.sqlite3": os.urandom(3 << 20)}))["id"] for _ in range(3)]


def _restores(repo: Repository, backup_id: str) -> bool:
    return len(read_back(repo, backup_id)) > 3 << 20


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


def _bases_at_two_places(repo: Repository) -> bool:
    """Whether two backups name one delta chunk with its base at different places."""
    seen: dict[tuple[str, int], tuple[str, int]] = {}
    for backup_id in repo.ids():
        m = repo.manifest(backup_id)
        for entry in m["chunks"]:
            if len(entry) == 6:
                base = m["bases"][entry[5]]
                where = (m["packs"][base[0]], base[1])
                if seen.setdefault((m["packs"][entry[0]], entry[1]), where) != where:
                    return True
    return False


def test_a_prune_stopped_at_each_point_of_a_repack_leaves_a_repository_the_next_prune_cleans(
        tmp_path: Path) -> None:
    # A repack moves bases to new packs, then rewrites the manifests one by one: stopped in
    # between, two kept manifests name one delta with its base at two places, both still there.
    split = False
    for after in range(50):
        repo = Repository.open(str(tmp_path / f"repo-{after}"), create=True)
        ids = with_deltas_and_a_repack_due(repo)
        expected = {i: read_back(repo, i) for i in ids[1:]}
        try:
            repo.prune(Policy(last=2), stop=_SetAfter(after))
        except Stopped:
            pass
        else:
            break  # past the last stop point: every one was tried
        split = split or _bases_at_two_places(repo)
        assert all(read_back(repo, i) == expected[i] for i in ids[1:])
        repo.prune(Policy(last=2))
        repo.prune(Policy(last=2))
        assert [info.id for info in repo.backups()] == ids[1:]
        assert all(read_back(repo, i) == expected[i] and repo.check(i) for i in ids[1:])
    else:
        raise AssertionError("the prune never finished")
    assert split, "no stop point left a delta's base at two places: the case this test is for"


def test_what_a_killed_test_restore_left_is_removed_by_the_next_and_a_live_ones_is_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # SIGKILL (a supervisor out of patience) leaves the fetched stream and the scratch data dir.
    repo = Repository.open(str(tmp_path / "repo"), create=True)
    backup_id = _three_backups(repo)[0]
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tmp = tmp_path / "tmp"
        tmp.mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(tmp))
        left = {pid: (tmp_path / f".chromaguard-fetch-verify-{pid}-x.tar", tmp / f"chromaguard-verify-{pid}-x")
                for pid in (gone.pid, live.pid, os.getpid())}  # this process's pid: an earlier process's
        for stream, scratch in left.values():
            stream.write_bytes(b"partial")
            (scratch / "data").mkdir(parents=True)
        with pytest.raises(Stopped):
            verify_in(repo, backup_id, into=tmp_path, stop=_SetAfter(0))
        with pytest.raises(VerifyError):
            verify(tmp_path / "not-an-archive.tar")
        assert {pid for pid, (stream, scratch) in left.items() if stream.exists() and scratch.exists()} == {live.pid}
    finally:
        live.kill()
        live.wait()
