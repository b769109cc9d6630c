"""``chromaguard verify`` and ``chromaguard restore``: prove an archive, then put it in place atomically."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import glob
import os
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..engine.datalock import LOCK_NAME, DataDirLock
from ..engine.scratch import engine_on
from ..errors import ChromaguardError, StartupError
from . import archive
from .repository import Repository, RepositoryError, go_on
from .snapshot import UPGRADE_BACKUPS, describe_collections, sample_digests

BEFORE_RESTORE = ".before-restore"  # the old data dir, renamed aside while the new one is renamed in
ASIDE_PREFIX = ".chromaguard-before-restore-"  # in a mount point: its old contents, while the new ones move in
STAGED_PREFIX = ".chromaguard-restore-"  # the new data, unpacked and verified before the swap
DISCARD_PREFIX = ".chromaguard-discard-"  # data a finished swap put out of the way, being removed
FETCH_PREFIX = ".chromaguard-fetch-"  # a backup's stream, read back to a file by earlier versions: removed if left
_PIPE_SIZE = 1 << 20  # a restore's stream, between its reading and its unpacking thread (written a quarter at a
# time, so that both work at once: 0.2 s of 1.3 s against writes of its whole size, measured on 281 MB)
# In a mount point: its lock, and the archives taken before an engine upgrade (the copy to fall
# back on after a bad upgrade, which a restore must not throw away with the old data).
_KEPT_IN_PLACE = {LOCK_NAME, UPGRADE_BACKUPS}
_STOP_POLL = 0.1  # seconds between asking a running engine check whether to go on
_SCRATCH_PREFIX = "chromaguard-verify-"  # a verify's scratch data dir in the temporary dir


class VerifyError(ChromaguardError):
    exit_code = 1


@dataclass
class VerifyReport:
    manifest: dict[str, Any]
    collections: int
    records: int
    sampled: int


def _compare(found: list[dict[str, Any]], manifest: dict[str, Any]) -> None:
    expected = {(c["tenant"], c["database"], c["name"]): c for c in manifest["collections"]}
    actual = {(c["tenant"], c["database"], c["name"]): c for c in found}
    for key in expected.keys() - actual.keys():
        raise VerifyError(f"collection {'/'.join(key)} is in the manifest but not in the restored data")
    for key in actual.keys() - expected.keys():
        raise VerifyError(f"collection {'/'.join(key)} is in the restored data but not in the manifest")
    for key, want in expected.items():
        got = actual[key]
        if got["count"] != want["count"]:
            raise VerifyError(f"collection {'/'.join(key)} has {got['count']} records, the manifest says "
                              f"{want['count']}")
        if got["dimension"] != want["dimension"]:
            raise VerifyError(f"collection {'/'.join(key)} has dimension {got['dimension']}, the manifest says "
                              f"{want['dimension']}")


async def _verify_extracted(data: Path, manifest: dict[str, Any]) -> int:
    """Open the data with the real engine; compare counts, dimensions and sampled records."""
    try:
        async with engine_on(data) as pool:
            found = await describe_collections(pool, data)
            _compare(found, manifest)
            sampled = 0
            for collection in manifest["collections"]:
                digests = await sample_digests(pool, collection)
                for record in collection["sample"]:
                    if digests.get(record["id"]) != record["sha256"]:
                        raise VerifyError(f"record {record['id']!r} of collection {collection['name']} differs "
                                          "from the one recorded at backup time")
                    sampled += 1
            return sampled
    except StartupError as exc:
        raise VerifyError(f"the Chroma engine cannot open the backed-up data: {exc}") from None


async def _engine_checked(data: Path, manifest: dict[str, Any], progress: Callable[[int], None] | None) -> int:
    """``_verify_extracted``, asking ``progress`` (with 0) every tenth of a second whether to go
    on: what it raises to stop (a stopping service) stops the engine and ends the check then,
    instead of after the engine's own work (loading a large index takes a while)."""
    task = asyncio.ensure_future(_verify_extracted(data, manifest))
    try:
        while not (await asyncio.wait({task}, timeout=_STOP_POLL))[0]:
            if progress is not None:
                progress(0)
        return task.result()
    finally:
        if not task.done():
            task.cancel()  # engine_on stops the engine on its way out
            await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved: when a stop goes out instead, what the check raised is not the news


def verify(path: Path, *, progress: Callable[[int], None] | None = None, keep_in: Path | None = None,
           prefix: str = STAGED_PREFIX) -> VerifyReport:
    """Every file unpacked and checked against the manifest, then the data opened by the real
    engine in a temporary dir (kept in ``keep_in``, for a restore to swap in). ``progress`` may
    raise to stop it (it is also called, with 0, before the engine starts)."""
    return _unpacked_and_verified(contextlib.nullcontext(path), str(path), progress, keep_in, prefix)


def _unpacked_and_verified(source: contextlib.AbstractContextManager[Path | IO[bytes]], label: str,
                           progress: Callable[[int], None] | None, keep_in: Path | None, prefix: str,
                           scratch_in: Path | None = None) -> VerifyReport:
    """What ``verify`` does for an archive and a repository's stream alike: one read of ``source``
    into a new dir (kept in ``keep_in`` for a swap, else made in ``scratch_in`` or TMPDIR and
    removed), then the engine's check."""
    if keep_in is None:
        scratch_in = scratch_in or Path(tempfile.gettempdir())
        _remove_dead(scratch_in, _SCRATCH_PREFIX)
    scratch = Path(tempfile.mkdtemp(prefix=prefix if keep_in else f"{_SCRATCH_PREFIX}{os.getpid()}-",
                                    dir=keep_in or scratch_in))
    scratch.chmod(0o755)  # a data dir, not a secret: the service may run as another user
    try:
        try:
            with source as tar:
                manifest = archive.unpack(tar, scratch, progress, label)
        except archive.ArchiveError as exc:
            raise VerifyError(str(exc)) from None
        if progress is not None:
            progress(0)  # nothing more read, but a caller that stops there may (before the engine starts)
        sampled = asyncio.run(_engine_checked(scratch, manifest, progress))
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    if keep_in is None:
        shutil.rmtree(scratch, ignore_errors=True)
    else:
        manifest["_verified_dir"] = str(scratch)
    return VerifyReport(manifest, len(manifest["collections"]), sum(c["count"] for c in manifest["collections"]),
                        sampled)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the system cannot."""
    try:
        renameat2 = ctypes.CDLL(None).renameat2
    except (OSError, AttributeError):
        return False
    a, b = a.resolve(), b.resolve()  # absolute: the directory descriptors (AT_FDCWD) are not used
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0




def restore(path: Path, data_dir: Path, *, force: bool = False,
            progress: Callable[[int], None] | None = None) -> VerifyReport:
    """An archive verified, unpacked next to ``data_dir``, and swapped in: never a half-restored dir."""
    return _restore(data_dir, force, lambda keep_in, prefix: verify(path, progress=progress, keep_in=keep_in,
                                                                     prefix=prefix))


def _restore(data_dir: Path, force: bool, unpacked: Callable[[Path, str], VerifyReport]) -> VerifyReport:
    """Unpack and verify (``unpacked`` into a new dir in the folder given, named by the prefix
    given), then swap the result in: never a half-restored dir.

    The data dir's lock is held from the first check to the swap, so no service can start on
    it meanwhile. A data dir that is a mount point (a Docker volume) cannot be renamed: its
    contents are swapped instead, the new ones unpacked and verified inside it first. A swap
    that fails part way is undone; one cut by a kill leaves the old data where the next
    restore refuses to touch it. What a finished swap puts out of the way is renamed to a
    discard name first, so that a kill while it is being removed is never mistaken for that.
    """
    data_dir = data_dir.resolve()
    old = data_dir.with_name(data_dir.name + BEFORE_RESTORE)
    if old.exists():
        raise _cut_short_between_renames(old, data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise VerifyError(f"{data_dir} is not a directory")
    created = not data_dir.exists()
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = DataDirLock(data_dir)
    try:
        lock.acquire()  # refuses while a service runs on it; held until the swap is done
    except StartupError as exc:
        raise VerifyError(f"{exc}; stop it before restoring") from None
    swapped = False
    try:
        set_aside = sorted(p for p in data_dir.iterdir() if p.name.startswith(ASIDE_PREFIX))
        if set_aside:
            raise _cut_short_in_place(set_aside[0], data_dir)
        _remove_leftovers(data_dir)
        if _holds_data(data_dir) and not force:
            raise VerifyError(f"{data_dir} is not empty; restore into an empty dir or add --force to replace it")
        mounted = os.path.ismount(data_dir)
        report = unpacked(data_dir if mounted else data_dir.parent, _staged_prefix(data_dir, mounted))
        staged = Path(report.manifest.pop("_verified_dir"))
        try:
            if mounted:
                aside = _swap_contents(staged, data_dir)
            elif _exchange(staged, data_dir):
                aside = staged
            else:
                _swap_by_renames(staged, data_dir, old)
                aside = old
            swapped = True
            _discard(aside, data_dir.name)  # the old data
        finally:
            _discard(staged, data_dir.name)  # the new data, if the swap failed (else gone already)
    except BaseException:
        lock.release()
        if created and not swapped:  # refused or failed: leave no trace of a dir we made
            shutil.rmtree(data_dir, ignore_errors=True)
        raise
    lock.release()
    return report


def _staged_prefix(data_dir: Path, mounted: bool) -> str:
    """Named for its data dir when it sits beside it: another data dir's restore may share the parent."""
    return STAGED_PREFIX if mounted else f"{STAGED_PREFIX}{data_dir.name}-"


def _leftovers(data_dir: Path) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """The names of what a killed restore of this data dir leaves that holds nothing to keep,
    inside it and beside it: a partial or verified new copy, and data a finished swap had put out
    of the way. Whole names, so that another data dir's (``data-2`` beside ``data``) never match."""
    staged = r"[a-z0-9_]{8}"  # what tempfile.mkdtemp adds
    discard = r"[0-9a-f]{12}"  # what _discard adds
    inside = re.compile(rf"({re.escape(STAGED_PREFIX)}{staged}|{re.escape(DISCARD_PREFIX)}.*-{discard})")
    beside = re.compile(rf"({re.escape(_staged_prefix(data_dir, False))}{staged}"
                        rf"|{re.escape(DISCARD_PREFIX + data_dir.name)}-{discard})")
    return inside, beside


def _holds_data(data_dir: Path) -> bool:
    """Anything in the data dir but its lock and a killed restore's leftovers (a mount point's
    staged copy is unpacked inside it)."""
    inside, _ = _leftovers(data_dir)
    return any(p.name not in _KEPT_IN_PLACE and not (inside.fullmatch(p.name) and p.is_dir() and not p.is_symlink())
               for p in data_dir.iterdir())


def _remove_leftovers(data_dir: Path) -> None:
    """What a killed restore of this data dir left (``_leftovers``)."""
    inside, beside = _leftovers(data_dir)
    for folder, pattern in ((data_dir, inside), (data_dir.parent, beside)):
        for entry in list(folder.iterdir()):
            if pattern.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)


def _discard(folder: Path, owner: str) -> None:
    """Rename, then remove: a kill during the removal leaves a name that says it is garbage."""
    if not folder.exists():
        return
    target = folder.with_name(f"{DISCARD_PREFIX}{owner}-{uuid.uuid4().hex[:12]}")
    folder.rename(target)
    shutil.rmtree(target, ignore_errors=True)


def _cut_short_between_renames(old: Path, data_dir: Path) -> VerifyError:
    restored = data_dir.is_dir() and any(p.name != LOCK_NAME for p in data_dir.iterdir())
    if restored:
        return VerifyError(f"a restore into {data_dir} was cut short just after its swap: {data_dir} holds the "
                           f"restored data and {old} the data from before it; check {data_dir}, then remove {old} "
                           "(or move it back in place of the restored data)")
    return VerifyError(f"a restore into {data_dir} was cut short: {old} holds the data from before it; move it "
                       f"back to {data_dir} (mv {old} {data_dir}), then restore again")


def _cut_short_in_place(aside: Path, data_dir: Path) -> VerifyError:
    staged = [p for p in data_dir.iterdir() if p.name.startswith(STAGED_PREFIX) and any(p.iterdir())]
    if not staged:  # every new entry had moved in
        return VerifyError(f"a restore into {data_dir} was cut short just after its swap: {data_dir} holds the "
                           f"restored data and {aside} the data from before it; check {data_dir}, then remove "
                           f"{aside}")
    return VerifyError(f"a restore into {data_dir} was cut short while swapping its contents: {aside} holds the "
                       f"data from before it (or part of it, the rest still in {data_dir}); remove the restore's "
                       f"entries ({staged[0]} lists what was still to come), move {aside}'s entries back into "
                       f"{data_dir}, then restore again")


def _swap_by_renames(staged: Path, data_dir: Path, old: Path) -> None:
    """Where paths cannot be exchanged at once: the old dir aside to ``old``, the new one in (or
    the old one back, if it cannot go)."""
    data_dir.rename(old)
    try:
        staged.rename(data_dir)
    except BaseException:
        old.rename(data_dir)
        raise


def _swap_contents(staged: Path, data_dir: Path) -> Path:
    """Replace a mount point's contents with ``staged`` (inside it): old entries aside, new ones
    in, each move undone if one fails. Returns the dir the old entries are in."""
    aside = Path(tempfile.mkdtemp(prefix=ASIDE_PREFIX, dir=data_dir))
    keep = {staged.name, aside.name, *_KEPT_IN_PLACE}
    moved: list[tuple[Path, Path]] = []
    try:
        for entry in sorted(data_dir.iterdir()):
            if entry.name not in keep:
                entry.rename(aside / entry.name)
                moved.append((entry, aside / entry.name))
        for entry in sorted(staged.iterdir()):
            entry.rename(data_dir / entry.name)
            moved.append((entry, data_dir / entry.name))
    except BaseException:
        for before, now in reversed(moved):
            now.rename(before)
        aside.rmdir()
        raise
    staged.rmdir()  # emptied: every new entry is in place
    return aside


def restore_from(repository: Repository, backup_id: str, data_dir: Path, *, force: bool = False,
                 progress: Callable[[int], None] | None = None) -> VerifyReport:
    """A repository's backup read back (every chunk checked) and unpacked as it comes, then
    verified and swapped in as ``restore`` does."""
    data_dir = data_dir.resolve()
    if data_dir.is_dir() and not force and _holds_data(data_dir):
        raise VerifyError(f"{data_dir} is not empty; restore into an empty dir or add --force to replace it")
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead(data_dir.parent, f"{FETCH_PREFIX}{data_dir.name}-")
    with repository.locked("restore", exclusive=False):
        manifest = repository.manifest(backup_id)
        repository.check_packs_exist(backup_id, manifest)  # a pack missing: refused before the data dir is locked
        return _restore(data_dir, force, lambda keep_in, prefix: _unpacked_and_verified(
            _streamed(repository, backup_id, progress, manifest), f"backup {backup_id}", None, keep_in, prefix))


def _remove_dead(folder: Path, prefix: str) -> None:
    """What a killed restore or verify left in ``folder``: named ``prefix`` + its pid, and the
    process gone. One with this process's pid is from an earlier process too (in a container the
    service has the same pid each time), since this one has not made its own yet."""
    for leftover in folder.glob(f"{glob.escape(prefix)}*"):
        pid = leftover.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and (int(pid) == os.getpid() or not _running(int(pid))):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def verify_in(repository: Repository, backup_id: str, *, progress: Callable[[int], None] | None = None,
              full: bool = True, into: Path | None = None, stop: threading.Event | None = None) -> VerifyReport | int:
    """Every chunk of a backup checked; with ``full``, also restored into a scratch engine and
    compared with its manifest. The result is noted in the repository for ``backups list``.
    Once ``stop`` is set, it stops at the next piece read, or within a tenth of a second while the
    scratch engine checks the copy (Stopped; nothing is noted)."""
    def step(n: int) -> None:
        go_on(stop, "the test restore was stopped (the service is stopping); it is noted neither as passed nor "
                    "as failed")
        if progress is not None:
            progress(n)

    with repository.locked("verify", exclusive=False):
        return _verify_in(repository, backup_id, step, full, into)


def _verify_in(repository: Repository, backup_id: str, progress: Callable[[int], None], full: bool,
               into: Path | None) -> VerifyReport | int:
    try:
        if not full:
            checked = repository.check(backup_id, progress)
            repository.note_verification(backup_id, True, f"{checked} bytes of chunks checked", "chunks")
            return checked
        _remove_dead(into or Path(tempfile.gettempdir()), f"{FETCH_PREFIX}verify-")
        report = _unpacked_and_verified(_streamed(repository, backup_id, progress), f"backup {backup_id}",
                                        lambda _: progress(0), None, STAGED_PREFIX, into)  # read bytes counted once
    except (RepositoryError, VerifyError) as exc:
        repository.note_verification(backup_id, False, str(exc), "full" if full else "chunks")
        raise
    repository.note_verification(backup_id, True, f"{report.collections} collection(s), {report.records} record(s), "
                                 f"{report.sampled} sampled record(s) identical", "full")
    return report


@contextlib.contextmanager
def _streamed(repository: Repository, backup_id: str, progress: Callable[[int], None] | None,
              manifest: dict[str, Any] | None = None) -> Iterator[IO[bytes]]:
    """The backup's tar stream, read back in a thread while it is unpacked: no copy of it on
    disk. The reader checks every chunk and, at the end, the whole stream; what it raised is
    raised here when the block ends, before anything unpacked is trusted."""
    read_fd, write_fd = os.pipe()
    with contextlib.suppress(OSError):  # a bigger pipe: fewer switches between the two threads
        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
    failed: list[BaseException] = []

    def produce() -> None:
        try:
            with open(write_fd, "wb", buffering=_PIPE_SIZE // 4) as out:
                repository.read(backup_id, out, progress, manifest)
        except BaseException as exc:  # noqa: BLE001 - raised in the unpacking thread below
            failed.append(exc)

    reader = open(read_fd, "rb")
    thread = threading.Thread(target=produce, name="chromaguard-restore-read", daemon=True)
    thread.start()
    try:
        yield reader
        while reader.read(1 << 20):  # a tar's end may leave padding: read to the end, so the whole is checked
            pass
    except BaseException:
        reader.close()  # the reader's next write fails: it stops
        thread.join()
        if failed and not isinstance(failed[0], BrokenPipeError):
            raise failed[0] from None  # the cause: unpacking saw only the stream cut short
        raise
    reader.close()
    thread.join()
    if failed:
        raise failed[0]
