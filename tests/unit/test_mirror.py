"""The snapshot mirror: what it copies under the hold, and what it never trusts.

A data dir here is files the way the engine lays them out (a real SQLite database and segment
files); the mirror only sees files, so no engine is needed. The end-to-end tests
(test_write_hold, test_backup) take mirrored snapshots of a real engine under write load.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

import pytest

from chromaguard.backup import mirror as mirror_module
from chromaguard.backup.mirror import Mirror
from chromaguard.backup.snapshot import CLOCK_NAME, SQLITE


def _data_dir(root: Path, segments: int = 3) -> Path:
    data = root / "data"
    data.mkdir()
    with sqlite3.connect(data / SQLITE) as db:
        db.execute("CREATE TABLE t (x)")
        db.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100)])
    for i in range(segments):
        seg = data / f"seg-{i}"
        seg.mkdir()
        (seg / "data_level0.bin").write_bytes(os.urandom(50_000))
        (seg / "header.bin").write_bytes(b"h" * 100)
    return data


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _live(data: Path) -> dict[str, bytes]:
    return {k: v for k, v in _files(data).items() if k != CLOCK_NAME}


def _snapshot(mirror: Mirror) -> dict[str, int]:
    """One mirrored copy as take_online makes it: refresh, then the copy under the hold."""
    staging = mirror.checkout()
    assert staging is mirror
    try:
        staging.refresh()
        staging.copy_held()
        return staging.copied()
    finally:
        staging.release()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return _data_dir(tmp_path)


@pytest.fixture
def mirror(data: Path, tmp_path: Path) -> Mirror:
    return Mirror(data, tmp_path / "staging")


def test_the_first_copy_is_made_before_the_hold_and_equals_the_data_dir(data: Path, mirror: Mirror) -> None:
    copied = _snapshot(mirror)
    assert copied == {"files": 0, "bytes": 0}, "everything was copied (and trusted) before the hold"
    assert _files(mirror.data) == _live(data)
    assert oct(os.stat(mirror.root).st_mode & 0o777) == "0o700"


def test_under_the_hold_only_what_changed_since_the_refresh_is_copied(data: Path, mirror: Mirror) -> None:
    _snapshot(mirror)
    staging = mirror.checkout()
    assert staging is not None
    staging.refresh()
    # A write lands between the refresh and the hold: only that file is copied under it.
    with open(data / "seg-1" / "data_level0.bin", "r+b") as fh:
        fh.seek(1000)
        fh.write(b"changed")
    staging.copy_held()
    assert staging.copied() == {"files": 1, "bytes": 50_000}
    staging.release()
    assert _files(mirror.data) == _live(data)


def test_a_copy_written_to_after_it_was_made_is_copied_again(data: Path, mirror: Mirror) -> None:
    """The scratch engine that describes a snapshot writes into the copy: what it touched is not
    trusted next time, even with its size and mtime put back."""
    _snapshot(mirror)
    copy = mirror.data / "seg-0" / "data_level0.bin"
    st = copy.stat()
    with open(copy, "r+b") as fh:
        fh.write(b"scratch engine")
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns))  # the ctime still moves
    (mirror.data / f"{SQLITE}-journal").write_bytes(b"a hot journal would roll the copy back")
    (mirror.data / "seg-9").mkdir()
    (mirror.data / "seg-9" / "left-over").write_bytes(b"x")
    _snapshot(mirror)
    assert _files(mirror.data) == _live(data)


def test_a_file_stamped_at_or_after_the_clock_reading_is_not_trusted(data: Path, mirror: Mirror,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Git's racy-clean case: a write in the same clock tick as the copy would leave the stat as
    it was. A file whose stamps are not older than the clock reading taken before its copy is
    copied again, under the hold if the clock never moves past it."""
    monkeypatch.setattr(mirror_module, "_CLOCK_WAIT", 0.05)
    monkeypatch.setattr(Mirror, "_clock", lambda self: 0)  # a clock that never passes any stamp
    copied = _snapshot(mirror)
    live = _live(data)
    assert copied == {"files": len(live), "bytes": sum(len(v) for v in live.values())}
    assert _files(mirror.data) == live


def test_files_written_just_before_the_refresh_are_copied_again_once_the_clock_passed_them(
        data: Path, mirror: Mirror) -> None:
    _snapshot(mirror)
    (data / "seg-2" / "data_level0.bin").write_bytes(os.urandom(50_000))  # just now: its stamp is "now"
    copied = _snapshot(mirror)
    assert copied == {"files": 0, "bytes": 0}, "the refresh waited for the clock and copied it again"
    assert _files(mirror.data) == _live(data)


def test_removed_and_new_files_and_folders_follow_the_data_dir(data: Path, mirror: Mirror) -> None:
    _snapshot(mirror)
    (data / "seg-0" / "header.bin").unlink()
    for name in ("data_level0.bin",):
        (data / "seg-1" / name).unlink()
    (data / "seg-1" / "header.bin").unlink()
    (data / "seg-1").rmdir()
    (data / "seg-new").mkdir()
    (data / "seg-new" / "data_level0.bin").write_bytes(b"new")
    _snapshot(mirror)
    assert _files(mirror.data) == _live(data)
    assert not (mirror.data / "seg-1").exists()


def test_sqlite_with_a_wal_is_copied_through_its_backup_api_under_the_hold(data: Path, mirror: Mirror) -> None:
    """A commit in WAL mode changes only the -wal file: the SQLite file's stamp includes its
    journals', and with one present the copy is SQLite's own backup, the WAL folded in."""
    _snapshot(mirror)
    db = sqlite3.connect(data / SQLITE)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA wal_autocheckpoint=0")
        db.execute("INSERT INTO t VALUES (1000)")
        db.commit()
        assert (data / f"{SQLITE}-wal").stat().st_size > 0
        _snapshot(mirror)
        assert not (mirror.data / f"{SQLITE}-wal").exists(), "folded into the copy, not copied beside it"
        copy = sqlite3.connect(f"{(mirror.data / SQLITE).as_uri()}?mode=ro", uri=True)
        try:
            assert copy.execute("SELECT count(*) FROM t").fetchone() == (101,)
        finally:
            copy.close()
    finally:
        db.close()


def test_a_torn_or_foreign_state_file_means_copying_again(data: Path, mirror: Mirror) -> None:
    _snapshot(mirror)
    (mirror.root / "mirror.json").write_text('{"version": 1, "files": {"chroma.sq')
    copy = mirror.data / "seg-0" / "data_level0.bin"
    copy.write_bytes(b"stale")  # whatever the copy holds, nothing of it is trusted now
    _snapshot(mirror)
    assert _files(mirror.data) == _live(data)


def test_one_snapshot_at_a_time_uses_the_mirror(mirror: Mirror) -> None:
    first = mirror.checkout()
    assert first is not None and mirror.checkout() is None
    assert mirror.held_bytes() == 0
    first.release()
    assert mirror.checkout() is mirror


@pytest.mark.parametrize("plant", ["open to others", "symlink"])
def test_a_planted_mirror_folder_is_not_used(data: Path, tmp_path: Path, plant: str,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """In a shared temp dir someone else could make the mirror's folder first: one that is a
    symlink or open to others is refused (with one warning) and snapshots copy afresh."""
    mirror = Mirror(data, tmp_path / "staging")
    mirror.root.parent.mkdir(parents=True)
    if plant == "symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        mirror.root.symlink_to(tmp_path / "elsewhere")
    else:
        mirror.root.mkdir(mode=0o777)
        os.chmod(mirror.root, 0o777)
    with caplog.at_level(logging.WARNING, "chromaguard.backup"):
        assert mirror.checkout() is None and mirror.checkout() is None
    warnings = [r.getMessage() for r in caplog.records if "cannot be used" in r.getMessage()]
    assert len(warnings) == 1 and str(mirror.root) in warnings[0]
    assert not any((tmp_path / "elsewhere").iterdir()) if plant == "symlink" else True


def test_a_full_disk_empties_the_mirror_and_says_so(data: Path, mirror: Mirror, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """The mirror is a cache: a copy that fills its filesystem gives the space back (and the
    snapshot fails with the disk error, which the snapshot service answers 507)."""
    import errno

    _snapshot(mirror)
    (data / "seg-0" / "data_level0.bin").write_bytes(os.urandom(60_000))

    def full(src: str, dst: str, size: int) -> None:
        with open(dst, "wb") as fh:
            fh.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mirror_module, "copy_file", full)
    staging = mirror.checkout()
    assert staging is not None
    with caplog.at_level(logging.WARNING, "chromaguard.backup"), pytest.raises(OSError) as raised:
        staging.refresh()
    staging.release()
    assert raised.value.errno == errno.ENOSPC
    assert not mirror.data.exists() and not (mirror.root / "mirror.json").exists()
    assert any("filesystem is full" in r.getMessage() for r in caplog.records)
    monkeypatch.undo()
    _snapshot(mirror)
    assert _files(mirror.data) == _live(data)


def test_a_copy_stamped_in_the_mirror_clocks_tick_is_not_trusted(data: Path, mirror: Mirror,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The scratch engine could rewrite a copy in place within the tick the copy was made in,
    leaving its stamp as it was: copies not older than the mirror's clock reading are copied again."""
    monkeypatch.setattr(mirror_module, "_CLOCK_WAIT", 0.05)
    monkeypatch.setattr(Mirror, "_mirror_clock", lambda self: 0)
    _snapshot(mirror)
    copy = mirror.data / "seg-0" / "data_level0.bin"
    st = copy.stat()
    with open(copy, "r+b") as fh:
        fh.write(b"scratch")
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns))
    copied = _snapshot(mirror)
    live = _live(data)
    assert copied["files"] == len(live), "nothing about the copies was trusted"
    assert _files(mirror.data) == live


def test_another_process_on_the_same_snapshot_dir_does_not_share_the_mirror(data: Path, tmp_path: Path) -> None:
    first, second = Mirror(data, tmp_path / "staging"), Mirror(data, tmp_path / "staging")
    assert first.checkout() is first
    assert second.checkout() is None, "the folder's lock is held by the first"
    first.release()
    assert second.checkout() is second
    second.release()


def test_a_state_from_another_boot_or_with_wrong_types_is_dropped(data: Path, mirror: Mirror,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    _snapshot(mirror)
    copies: list[str] = []
    real = mirror_module.copy_file

    def counted(src: str, dst: str, size: int) -> None:
        copies.append(src)
        real(src, dst, size)

    monkeypatch.setattr(mirror_module, "copy_file", counted)
    _snapshot(mirror)
    assert copies == [], "same boot, nothing changed: nothing copied"
    monkeypatch.setattr(mirror_module, "_boot_id", lambda: "another boot")
    _snapshot(mirror)
    assert len(copies) == len(_live(data)), "a power cut may have lost what the state names: all copied again"
    state = json.loads((mirror.root / "mirror.json").read_text())
    for entry in state["files"].values():
        entry["copy"], entry["clock"] = None, "soon"
    (mirror.root / "mirror.json").write_text(json.dumps(state))
    assert mirror.held_bytes() == 0
    _snapshot(mirror)
    assert _files(mirror.data) == _live(data)


def test_a_fifo_for_the_clock_or_links_in_the_copy_neither_hang_nor_write_elsewhere(
        data: Path, mirror: Mirror, tmp_path: Path) -> None:
    _snapshot(mirror)
    (data / CLOCK_NAME).unlink()
    os.mkfifo(data / CLOCK_NAME)  # opening it for writing would block
    outside = tmp_path / "outside"
    outside.write_bytes(b"untouched")
    copy = mirror.data / "seg-0" / "header.bin"
    copy.unlink()
    copy.symlink_to(outside)
    (data / "seg-0" / "header.bin").write_bytes(b"H" * 100)
    copied = _snapshot(mirror)
    assert copied["files"] == 1, "without a clock reading the changed file's copy is not trusted: the hold copies it"
    assert outside.read_bytes() == b"untouched"
    assert _files(mirror.data) == _live(data) and not copy.is_symlink()
