"""Restore's swap, in-process, with a failure at every step: the data dir holds either all of the
old data or all of the new, never a mix, and nothing is left beside it.

The archive's verification (which starts a real engine, and is tested with one in
``test_backup.py`` and ``test_verify_tampered.py``) is replaced by one that stages a dir as
verify does; the renames are the real ones, failed one at a time.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chromaguard.backup import restore as restore_module
from chromaguard.backup.restore import VerifyError, VerifyReport, restore
from chromaguard.engine.datalock import LOCK_NAME, DataDirLock

PROGRESS = print  # passed on to verify as given
prefixes: list[str] = []  # the staging prefix each verify was given
OLD = {"chroma.sqlite3": b"old catalogue", "seg-1/data.bin": b"old vectors", "seg-1/nested/x": b"old x"}
NEW = {"chroma.sqlite3": b"new catalogue", "seg-2/data.bin": b"new vectors", "seg-3/y": b"new y"}


def _write(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _contents(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and p.name != LOCK_NAME}


@pytest.fixture
def verified(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """``verify`` as restore calls it: the new data unpacked in a fresh dir under ``keep_in``."""
    staged: list[Path] = []
    prefixes.clear()

    def fake_verify(path: Path, *, progress: Any = None, keep_in: Path | None = None,
                    prefix: str = "") -> VerifyReport:
        assert keep_in is not None and path.name == "backup.tar.gz" and progress is PROGRESS
        scratch = _write(Path(tempfile.mkdtemp(prefix=prefix, dir=keep_in)), NEW)
        staged.append(scratch)
        prefixes.append(prefix)
        return VerifyReport({"collections": [], "_verified_dir": str(scratch)}, 0, 0, 0)

    monkeypatch.setattr(restore_module, "verify", fake_verify)
    return staged


def _failing_rename(monkeypatch: pytest.MonkeyPatch, at: int) -> Callable[[], int]:
    """``os.rename`` (which ``Path.rename`` calls) failing at its ``at``-th call, only then."""
    real = os.rename
    calls = [0]

    def rename(src: Any, dst: Any) -> None:
        calls[0] += 1
        if calls[0] == at:
            raise OSError(5, "Input/output error (injected)")
        real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    return lambda: calls[0]


def _lock_is_free(data_dir: Path) -> bool:
    lock = DataDirLock(data_dir)
    lock.acquire()
    lock.release()
    return True


def _beside(data_dir: Path) -> list[str]:
    return sorted(p.name for p in data_dir.parent.iterdir() if p != data_dir)


def test_the_new_data_replaces_the_old_in_one_exchange(tmp_path: Path, verified: list[Path]) -> None:
    data_dir = _write(tmp_path / "data", OLD)
    report = restore(tmp_path / "backup.tar.gz", progress=PROGRESS, data_dir=data_dir, force=True)
    assert _contents(data_dir) == NEW and "_verified_dir" not in report.manifest
    assert _beside(data_dir) == [] and _lock_is_free(data_dir)
    assert verified[0].parent == tmp_path, "staged next to the data dir: the same filesystem, one rename"
    assert prefixes == [".chromaguard-restore-data-"], "named for its data dir: another's may be beside it"


def test_exchange_swaps_two_paths_and_says_when_it_cannot(tmp_path: Path) -> None:
    a, b = _write(tmp_path / "a", {"f": b"a"}), _write(tmp_path / "b", {"f": b"b"})
    assert restore_module._exchange(a, b) is True
    assert (a / "f").read_bytes() == b"b" and (b / "f").read_bytes() == b"a"
    assert restore_module._exchange(a, tmp_path / "missing") is False and (a / "f").read_bytes() == b"b"


@pytest.mark.parametrize("at", [1, 2])
def test_without_an_exchange_a_failed_rename_leaves_the_old_data_in_place(
        tmp_path: Path, verified: list[Path], monkeypatch: pytest.MonkeyPatch, at: int) -> None:
    data_dir = _write(tmp_path / "data", OLD)
    monkeypatch.setattr(restore_module, "_exchange", lambda a, b: False)
    calls = _failing_rename(monkeypatch, at)
    with pytest.raises(OSError, match="injected"):
        restore(tmp_path / "backup.tar.gz", progress=PROGRESS, data_dir=data_dir, force=True)
    assert _contents(data_dir) == OLD, "the old data, whole"
    assert _beside(data_dir) == [] and _lock_is_free(data_dir)
    assert calls() == {1: 2, 2: 4}[at], "(the old dir renamed back after the new one could not go in) and the " \
        "new copy renamed to a discard name before it is removed"


def test_without_an_exchange_every_rename_succeeding_swaps_and_leaves_nothing(
        tmp_path: Path, verified: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = _write(tmp_path / "data", OLD)
    monkeypatch.setattr(restore_module, "_exchange", lambda a, b: False)
    calls = _failing_rename(monkeypatch, 0)
    restore(tmp_path / "backup.tar.gz", progress=PROGRESS, data_dir=data_dir, force=True)
    assert _contents(data_dir) == NEW and _beside(data_dir) == [] and calls() == 3, \
        "aside, in, and the old one renamed to a discard name before it is removed"


@pytest.mark.parametrize("at", range(1, 6))
def test_in_a_mount_point_a_failed_move_is_undone(tmp_path: Path, verified: list[Path],
                                                  monkeypatch: pytest.MonkeyPatch, at: int) -> None:
    volume = _write(tmp_path / "volume", OLD)
    monkeypatch.setattr(restore_module.os.path, "ismount", lambda p: Path(p) == volume)
    _failing_rename(monkeypatch, at)  # 2 old entries aside, then 3 new ones in: 5 moves
    with pytest.raises(OSError, match="injected"):
        restore(tmp_path / "backup.tar.gz", progress=PROGRESS, data_dir=volume, force=True)
    assert _contents(volume) == OLD
    assert sorted(p.name for p in volume.iterdir()) == sorted({"chroma.sqlite3", "seg-1", LOCK_NAME}), \
        "no staged or set-aside dir is left inside"
    assert _lock_is_free(volume)


def test_in_a_mount_point_the_contents_are_swapped(tmp_path: Path, verified: list[Path],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    volume = _write(tmp_path / "volume", OLD)
    monkeypatch.setattr(restore_module.os.path, "ismount", lambda p: Path(p) == volume)
    calls = _failing_rename(monkeypatch, 0)
    restore(tmp_path / "backup.tar.gz", progress=PROGRESS, data_dir=volume, force=True)
    assert _contents(volume) == NEW and calls() == 6, "2 aside, 3 in, the old ones renamed to a discard name"
    assert verified[0].parent == volume, "staged inside the mount point: the same filesystem"
    assert prefixes == [".chromaguard-restore-"]
    assert sorted(p.name for p in volume.iterdir()) == sorted({"chroma.sqlite3", "seg-2", "seg-3", LOCK_NAME})


def test_a_restore_cut_short_is_never_built_upon(tmp_path: Path, verified: list[Path]) -> None:
    data_dir = tmp_path / "data"  # cut between the two renames: the old data aside, none in place
    held = _write(tmp_path / "data.before-restore", OLD)
    with pytest.raises(VerifyError) as error:
        restore(tmp_path / "backup.tar.gz", progress=PROGRESS, data_dir=data_dir, force=True)
    assert str(error.value) == (f"a restore into {data_dir} was cut short: {held} holds the data from before it; "
                                f"move it back to {data_dir} (mv {held} {data_dir}), then restore again")
    assert _contents(held) == OLD and not data_dir.exists() and not verified

    _write(data_dir, NEW)  # cut just after the swap: the new data in place
    with pytest.raises(VerifyError) as error:
        restore(tmp_path / "backup.tar.gz", progress=PROGRESS, data_dir=data_dir, force=True)
    assert str(error.value) == (f"a restore into {data_dir} was cut short just after its swap: {data_dir} holds "
                                f"the restored data and {held} the data from before it; check {data_dir}, then "
                                f"remove {held} (or move it back in place of the restored data)")
    assert _contents(held) == OLD and _contents(data_dir) == NEW and not verified

    volume = _write(tmp_path / "volume", NEW)  # in a mount point, cut just after the swap
    aside = _write(volume / ".chromaguard-before-restore-abc", OLD)
    with pytest.raises(VerifyError) as error:
        restore(tmp_path / "backup.tar.gz", progress=PROGRESS, data_dir=volume, force=True)
    assert "was cut short just after its swap" in str(error.value) and str(aside) in str(error.value)
    _write(volume / ".chromaguard-restore-xyz", {"seg-9/z": b"still to come"})  # ... or during it
    with pytest.raises(VerifyError) as error:
        restore(tmp_path / "backup.tar.gz", progress=PROGRESS, data_dir=volume, force=True)
    assert "was cut short while swapping its contents" in str(error.value)
    assert _contents(aside) == OLD and not verified and _lock_is_free(volume)


def test_what_a_killed_restore_leaves_that_holds_nothing_to_keep_is_removed_by_the_next(
        tmp_path: Path, verified: list[Path]) -> None:
    data_dir = _write(tmp_path / "data", OLD)
    leftovers = [_write(tmp_path / ".chromaguard-restore-data-a1b2c3d_", {"partial": b"x"}),
                 _write(tmp_path / ".chromaguard-discard-data-0123456789ab", {"old": b"x"})]
    others = [_write(tmp_path / ".chromaguard-restore-other-a1b2c3d_", {"theirs": b"x"}),
              _write(tmp_path / ".chromaguard-discard-other-0123456789ab", {"theirs": b"x"}),
              _write(tmp_path / ".chromaguard-restore-data-2-a1b2c3d_", {"data-2's": b"x"}),
              _write(tmp_path / ".chromaguard-discard-data-2-0123456789ab", {"data-2's": b"x"})]
    restore(tmp_path / "backup.tar.gz", progress=PROGRESS, data_dir=data_dir, force=True)
    assert not any(p.exists() for p in leftovers) and all(p.exists() for p in others), \
        "another data dir's restore may be running beside it (even one named data-2): its dirs are not touched"
    assert _contents(data_dir) == NEW


def test_what_restore_refuses_and_that_it_leaves_no_dir_it_made(tmp_path: Path, verified: list[Path],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    busy = _write(tmp_path / "busy", OLD)
    with pytest.raises(VerifyError) as error:
        restore(tmp_path / "backup.tar.gz", progress=PROGRESS, data_dir=busy)
    assert str(error.value) == f"{busy} is not empty; restore into an empty dir or add --force to replace it"
    assert _contents(busy) == OLD and _lock_is_free(busy)

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(VerifyError, match=f"^{a_file} is not a directory$"):
        restore(tmp_path / "backup.tar.gz", progress=PROGRESS, data_dir=a_file)

    lock = DataDirLock(busy)
    lock.acquire()
    try:
        with pytest.raises(VerifyError, match="; stop it before restoring$"):
            restore(tmp_path / "backup.tar.gz", progress=PROGRESS, data_dir=busy, force=True)
    finally:
        lock.release()
    assert _contents(busy) == OLD and not verified

    fresh = tmp_path / "new" / "data"
    monkeypatch.setattr(restore_module, "_exchange", lambda a, b: False)
    _failing_rename(monkeypatch, 2)
    with pytest.raises(OSError):
        restore(tmp_path / "backup.tar.gz", progress=PROGRESS, data_dir=fresh)
    assert not fresh.exists() and sorted(p.name for p in fresh.parent.iterdir()) == [], "nothing left of it"


def test_into_an_empty_dir_no_force_is_needed(tmp_path: Path, verified: list[Path]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    restore(tmp_path / "backup.tar.gz", progress=PROGRESS, data_dir=empty)
    assert _contents(empty) == NEW
    fresh = tmp_path / "fresh"
    restore(tmp_path / "backup.tar.gz", progress=PROGRESS, data_dir=fresh)
    assert _contents(fresh) == NEW


def test_a_swap_that_cannot_be_undone_leaves_the_old_data_aside_where_the_next_restore_finds_it(
        tmp_path: Path, verified: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    volume = _write(tmp_path / "volume", OLD)
    monkeypatch.setattr(restore_module.os.path, "ismount", lambda p: Path(p) == volume)
    real = os.rename
    calls = [0]

    def rename(src: Any, dst: Any) -> None:  # the disk turns read-only after the first move
        calls[0] += 1
        if calls[0] > 1:
            raise OSError(30, "Read-only file system (injected)")
        real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="Read-only"):
        restore(tmp_path / "backup.tar.gz", progress=PROGRESS, data_dir=volume, force=True)
    [aside] = [p for p in volume.iterdir() if p.name.startswith(".chromaguard-before-restore-")]
    in_place = {k: v for k, v in _contents(volume).items()
                if not k.startswith((aside.name, ".chromaguard-restore-"))}  # the new copy: removed next time
    assert in_place | _contents(aside) == OLD and _contents(aside), "all the old data, part of it set aside"
    monkeypatch.setattr(os, "rename", real)
    with pytest.raises(VerifyError, match="was cut short while swapping its contents"):
        restore(tmp_path / "backup.tar.gz", progress=PROGRESS, data_dir=volume, force=True)
    assert len(verified) == 1, "refused before anything was unpacked"


def test_where_paths_cannot_be_exchanged_at_once_the_renames_do_it(
        tmp_path: Path, verified: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    def no_renameat2(*_: Any) -> Any:
        raise OSError("no such library")

    monkeypatch.setattr(restore_module.ctypes, "CDLL", no_renameat2)
    data_dir = _write(tmp_path / "data", OLD)
    restore(tmp_path / "backup.tar.gz", progress=PROGRESS, data_dir=data_dir, force=True)
    assert _contents(data_dir) == NEW and _beside(data_dir) == []


def test_a_failure_after_the_swap_keeps_the_new_data_even_in_a_dir_restore_made(
        tmp_path: Path, verified: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = tmp_path / "fresh"
    _failing_rename(monkeypatch, 1)  # the exchange is done; renaming the old (empty) dir away fails
    with pytest.raises(OSError, match="injected"):
        restore(tmp_path / "backup.tar.gz", progress=PROGRESS, data_dir=fresh)
    assert _contents(fresh) == NEW


def test_old_data_being_removed_is_named_for_its_data_dir_so_the_next_restore_finds_it(
        tmp_path: Path, verified: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = _write(tmp_path / "data", OLD)
    real = restore_module.shutil.rmtree
    monkeypatch.setattr(restore_module.shutil, "rmtree", lambda path, **_: None)  # killed before it removed
    restore(tmp_path / "backup.tar.gz", progress=PROGRESS, data_dir=data_dir, force=True)
    [left] = _beside(data_dir)
    assert left.startswith(".chromaguard-discard-data-") and _contents(tmp_path / left) == OLD
    monkeypatch.setattr(restore_module.shutil, "rmtree", real)
    restore(tmp_path / "backup.tar.gz", progress=PROGRESS, data_dir=data_dir, force=True)
    assert _beside(data_dir) == [] and _contents(data_dir) == NEW


@pytest.mark.parametrize("mounted", [False, True])
def test_ctrl_c_once_the_new_data_is_in_place_keeps_it_even_in_a_dir_restore_made(
        tmp_path: Path, verified: list[Path], monkeypatch: pytest.MonkeyPatch, mounted: bool) -> None:
    target = tmp_path / "fresh"
    if mounted:
        _write(target, OLD)
        monkeypatch.setattr(restore_module.os.path, "ismount", lambda p: Path(p) == target)
    else:
        monkeypatch.setattr(restore_module, "_exchange", lambda a, b: False)
    real = restore_module._discard

    def interrupted(folder: Path, owner: str) -> None:  # Ctrl-C as the old data is put out of the way
        if folder.exists() and ".chromaguard-restore-" not in folder.name:
            raise KeyboardInterrupt
        real(folder, owner)

    monkeypatch.setattr(restore_module, "_discard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        restore(tmp_path / "backup.tar.gz", progress=PROGRESS, data_dir=target, force=True)
    assert {k: v for k, v in _contents(target).items() if not k.startswith(".chromaguard-")} == NEW


def test_in_a_mount_point_the_archives_taken_before_an_upgrade_stay(tmp_path: Path, verified: list[Path],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # The copy to fall back on after a bad upgrade: a restore neither counts it as data nor throws it
    # away with the old data.
    volume = _write(tmp_path / "volume", {".chromaguard-upgrade-backups/chroma-backup-1.tar.gz": b"archive"})
    monkeypatch.setattr(restore_module.os.path, "ismount", lambda p: Path(p) == volume)
    restore(tmp_path / "backup.tar.gz", progress=PROGRESS, data_dir=volume)  # no --force: nothing else there
    assert _contents(volume) == {**NEW, ".chromaguard-upgrade-backups/chroma-backup-1.tar.gz": b"archive"}
    _write(volume, OLD)
    restore(tmp_path / "backup.tar.gz", progress=PROGRESS, data_dir=volume, force=True)
    assert _contents(volume) == {**NEW, ".chromaguard-upgrade-backups/chroma-backup-1.tar.gz": b"archive"}
