"""The file side of a snapshot, in-process and on real files: what is copied, how, and what
counts as a change while the copy ran. The end-to-end tests (test_backup, test_write_hold,
test_verify_tampered) run it against the real engine; these pin each rule on its own.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from chromaguard.backup import snapshot
from chromaguard.backup.snapshot import (
    SQLITE,
    SnapshotError,
    copy_consistent,
    copy_data_dir,
    estimated_size,
    file_entries,
    record_digest,
    sha256_file,
)


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """An engine-like data dir: SQLite in WAL mode with rows only in the WAL (its connection
    stays open meanwhile, as the engine's does), two segment folders, the guard's own files."""
    data = tmp_path / "data"
    data.mkdir()
    db = sqlite3.connect(data / SQLITE)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA wal_autocheckpoint=0")  # keep what follows in the WAL file
    db.execute("CREATE TABLE t (x)")
    db.executemany("INSERT INTO t VALUES (?)", [(n,) for n in range(100)])
    db.commit()
    for segment, size in (("seg-a", 3000), ("seg-b/nested", 10)):
        (data / segment).mkdir(parents=True)
        (data / segment / "data_level0.bin").write_bytes(os.urandom(size))
    (data / ".chromaguard.lock").write_text("")
    (data / ".chromaguard-write-test").write_bytes(b"x" * 4096)
    yield data
    db.close()


def _rows(path: Path) -> int:
    return sqlite3.connect(path).execute("SELECT count(*) FROM t").fetchone()[0]


def test_sqlite_is_copied_through_its_backup_api_with_what_is_still_in_the_wal(
        tmp_path: Path, data_dir: Path,
) -> None:
    data = data_dir
    assert (data / f"{SQLITE}-wal").stat().st_size > 0  # the rows live in the WAL, not in the file yet
    dest = tmp_path / "copy"
    assert copy_data_dir(data, dest) is True
    assert not (dest / f"{SQLITE}-wal").exists() and not (dest / f"{SQLITE}-shm").exists()  # folded in
    assert _rows(dest / SQLITE) == 100


def test_segment_files_are_copied_byte_for_byte_and_the_guard_s_own_files_are_not(
        tmp_path: Path, data_dir: Path,
) -> None:
    data = data_dir
    dest = tmp_path / "copy"
    copy_data_dir(data, dest)
    for rel in ("seg-a/data_level0.bin", "seg-b/nested/data_level0.bin"):
        assert (dest / rel).read_bytes() == (data / rel).read_bytes(), rel
    copied = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert copied == [SQLITE, "seg-a/data_level0.bin", "seg-b/nested/data_level0.bin"]


def test_a_file_that_changes_during_the_copy_makes_it_unusable(
        tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = data_dir
    real = snapshot.copy_file

    def copy_then_touch(src: str, dst: str, size: int) -> None:
        real(src, dst, size)
        with open(src, "ab") as grow:
            grow.write(b"!")

    monkeypatch.setattr(snapshot, "copy_file", copy_then_touch)
    assert copy_data_dir(data, tmp_path / "copy") is False


def test_a_changed_mtime_alone_is_a_change(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = data_dir
    real = snapshot.copy_file

    def copy_then_touch(src: str, dst: str, size: int) -> None:
        real(src, dst, size)
        st = os.stat(src)
        os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))

    monkeypatch.setattr(snapshot, "copy_file", copy_then_touch)
    assert copy_data_dir(data, tmp_path / "copy") is False


def test_copy_consistent_tries_again_from_scratch_then_gives_up(
        tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = data_dir
    dest = tmp_path / "copy"
    answers = [False, True]
    seen: list[bool] = []

    def fake_copy(src: Path, to: Path) -> bool:
        seen.append(to.exists())  # a failed attempt's files are gone before the next one
        to.mkdir(parents=True, exist_ok=True)
        (to / "partial").write_text("x")
        return answers.pop(0)

    monkeypatch.setattr(snapshot, "copy_data_dir", fake_copy)
    assert copy_consistent(data, dest) == 2 and seen == [False, False]
    monkeypatch.setattr(snapshot, "copy_data_dir", lambda src, to: to.mkdir(exist_ok=True) or False)
    with pytest.raises(SnapshotError) as error:
        copy_consistent(data, dest, attempts=3)
    assert str(error.value) == "the engine kept changing its files while writes were held"
    assert not dest.exists()


def test_copy_consistent_makes_three_attempts_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(snapshot, "copy_data_dir", lambda src, to: calls.append(to) or len(calls) == 3)
    assert copy_consistent(tmp_path, tmp_path / "copy") == 3 and len(calls) == 3


def test_copy_file_copies_exactly_size_bytes_and_stops_at_a_shorter_file(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(bytes(range(256)) * 8192)  # 2 MiB: more than one sendfile call may move
    snapshot.copy_file(str(src), str(tmp_path / "whole"), src.stat().st_size)
    assert (tmp_path / "whole").read_bytes() == src.read_bytes()
    snapshot.copy_file(str(src), str(tmp_path / "part"), 1000)
    assert (tmp_path / "part").read_bytes() == src.read_bytes()[:1000]
    snapshot.copy_file(str(src), str(tmp_path / "short"), src.stat().st_size + 5000)  # it shrank meanwhile
    assert (tmp_path / "short").read_bytes() == src.read_bytes()


@pytest.mark.parametrize("code", [errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP])
def test_copy_file_falls_back_to_read_and_write_where_sendfile_cannot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     code: int) -> None:
    src = tmp_path / "src"
    src.write_bytes(os.urandom(3 << 20))

    def no_sendfile(*args: object) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "sendfile", no_sendfile)
    snapshot.copy_file(str(src), str(tmp_path / "dst"), src.stat().st_size)
    assert (tmp_path / "dst").read_bytes() == src.read_bytes()


def test_copy_file_passes_on_a_real_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"x" * 100)

    def broken(*args: object) -> int:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "sendfile", broken)
    with pytest.raises(OSError) as error:
        snapshot.copy_file(str(src), str(tmp_path / "dst"), 100)
    assert error.value.errno == errno.EIO


def test_estimated_size_counts_sqlite_s_journal_files_too(tmp_path: Path, data_dir: Path) -> None:
    data = data_dir
    files = sum(p.stat().st_size for p in data.rglob("*") if p.is_file() and p.name not in (
        ".chromaguard.lock", ".chromaguard-write-test", f"{SQLITE}-shm"))
    assert estimated_size(data) == files
    (data / f"{SQLITE}-journal").write_bytes(b"j" * 777)
    assert estimated_size(data) == files + 777


def test_file_entries_and_sha256_name_every_copied_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "seg").mkdir(parents=True)
    (data / "seg" / "b.bin").write_bytes(b"bb")
    (data / "a.bin").write_bytes(b"a" * (3 << 20))
    seen: list[int] = []
    assert sha256_file(data / "a.bin", seen.append) == hashlib.sha256(b"a" * (3 << 20)).hexdigest()
    assert seen == [1 << 20] * 3
    assert file_entries(data) == [
        {"path": "data/a.bin", "size": 3 << 20, "sha256": hashlib.sha256(b"a" * (3 << 20)).hexdigest()},
        {"path": "data/seg/b.bin", "size": 2, "sha256": hashlib.sha256(b"bb").hexdigest()}]


def test_a_record_digest_is_canonical_and_covers_every_field() -> None:
    base = record_digest("id1", [0.5, 1.0], "doc", {"a": 1, "b": "x"})
    assert base == record_digest("id1", [0.5, 1.0], "doc", {"b": "x", "a": 1})  # key order does not count
    assert base == hashlib.sha256(json.dumps(["id1", [0.5, 1.0], "doc", {"a": 1, "b": "x"}],
                                             separators=(",", ":")).encode()).hexdigest()
    for other in (("id2", [0.5, 1.0], "doc", {"a": 1, "b": "x"}), ("id1", [0.5, 1.5], "doc", {"a": 1, "b": "x"}),
                  ("id1", [0.5, 1.0], "doc!", {"a": 1, "b": "x"}), ("id1", [0.5, 1.0], "doc", {"a": 2, "b": "x"})):
        assert record_digest(*other) != base, other


def test_a_file_gone_while_listing_is_skipped_and_the_rest_still_listed(
        data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.stat

    def vanishing(path: str, *args: object, **kwargs: object) -> os.stat_result:
        if str(path).endswith(os.path.join("seg-a", "data_level0.bin")):
            raise FileNotFoundError(2, "gone")
        return real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", vanishing)
    assert sorted(snapshot._stat_all(data_dir)) == [SQLITE, "seg-b/nested/data_level0.bin"]


def test_the_read_and_write_fallback_copies_exactly_size_bytes_too(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.write_bytes(os.urandom((3 << 20) + 100))

    def no_sendfile(*args: object) -> int:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "sendfile", no_sendfile)
    size = (2 << 20) + 50  # not a whole number of chunks, and less than the file holds
    snapshot.copy_file(str(src), str(tmp_path / "dst"), size)
    assert (tmp_path / "dst").read_bytes() == src.read_bytes()[:size]


def test_copy_consistent_gives_up_after_exactly_three_attempts(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(snapshot, "copy_data_dir", lambda src, to: calls.append(to) or False)
    with pytest.raises(SnapshotError):
        copy_consistent(tmp_path, tmp_path / "copy")
    assert len(calls) == 3


def test_a_manifest_s_time_is_utc_whatever_the_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        manifest = snapshot.new_manifest([], [], 12.345, "online")
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    created = datetime.strptime(manifest["created_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - created).total_seconds()) < 60
    assert manifest["write_hold_ms"] == 12.3 and isinstance(manifest["write_hold_ms"], float)
    assert snapshot.new_manifest([], [], None, "offline")["write_hold_ms"] is None
