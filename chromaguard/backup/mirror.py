"""A standing copy of the data dir, so that a snapshot holds writes only for what changed.

Without it, an online snapshot copies the whole data dir while writes are held: the hold grows
with the data. With it, the copy is brought up to date first with writes flowing, then under
the hold, where only the files that changed since are copied again. Between snapshots the
mirror stays on disk (it costs the data dir's size in the snapshot dir).

When a file's copy can be trusted (git's rule for its index, made safe for every clock): the
file's stat (size, mtime, ctime, inode; for SQLite also its journals') is the one taken
before it was read, and both its stamps are older than a reading of the filesystem's own
clock taken before the read began. A write after that reading stamps the file at least that
late, so it changes the stat; a write in the same clock tick as the old stamp cannot hide.
The clock is read by touching a file in the data dir: a network filesystem stamps with its
server's clock, which need not be ours. A file written a moment before its copy is copied
again once the clock has moved on. The copy's own stat is kept too: the scratch engine that
describes a snapshot writes into it, and what it touched is copied again next time.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .snapshot import CLOCK_NAME, JOURNALS, SQLITE, SnapshotError, copy_file, copy_sqlite, data_files

log = logging.getLogger("chromaguard.backup")

STATE_NAME = "mirror.json"
_STATE_VERSION = 1
_REFRESH_ROUNDS = 3
_CLOCK_WAIT = 2.0  # longest wait for the filesystem clock to pass a file's stamp before the hold
_HELD_ATTEMPTS = 3

Stamp = list[int]  # size, mtime_ns, ctime_ns, inode, device


def _stamp(st: os.stat_result, *, ctime: bool = True) -> Stamp:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns if ctime else 0, st.st_ino, st.st_dev]


def _boot_id() -> str:
    """Which boot this is: a state written before a power cut may name data that never reached disk."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _stamp_of(path: str, *, ctime: bool = True) -> Stamp | None:
    """A journal's ctime is left out: SQLite's own read of a WAL database changes it."""
    try:
        return _stamp(os.stat(path), ctime=ctime)
    except FileNotFoundError:
        return None


def _read_clock(path: Path) -> tuple[int, int] | None:
    """A filesystem's time now (the stamp a write made now would get) and its device: a file
    there touched and read back. Not a regular file of ours (a FIFO would block): none."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
    except OSError:  # a read-only data dir: nothing is trusted, all is copied under the hold
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        os.utime(fd)
        st = os.fstat(fd)
        return st.st_mtime_ns, st.st_dev
    except OSError:
        return None
    finally:
        os.close(fd)


def _stamps_ok(stamps: Any, allow_none: bool = False) -> bool:
    return isinstance(stamps, list) and bool(stamps) and all(
        (allow_none and s is None) or (isinstance(s, list) and len(s) == 5 and all(isinstance(x, int) for x in s))
        for s in stamps)


class Mirror:
    """The mirror of one data dir, lent to one snapshot at a time (``checkout``)."""

    def __init__(self, data_dir: Path, staging_root: str | Path | None = None) -> None:
        self.data_dir = data_dir
        base = Path(staging_root) if staging_root is not None else Path(tempfile.gettempdir())
        name = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
        self.root = base / f"chromaguard-mirror-{name}"
        self.data = self.root / "data"
        self.busy = False
        self._entries: dict[str, dict[str, Any]] = {}
        self._copied = {"files": 0, "bytes": 0}
        self._warned = False
        self._lock_fd: int | None = None
        self._device = -1  # the data dir filesystem's, learnt with its clock

    # ---- lending ---------------------------------------------------------------------------------

    def checkout(self) -> Mirror | None:
        if self.busy or not self._usable():
            return None
        try:  # another process on the same snapshot dir (a shared volume) may have it
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        self._lock_fd, self.busy = fd, True
        self._entries = self._load()
        return self

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self.busy = False

    def held_bytes(self) -> int:
        """What a snapshot taken now need not find room for: the mirror already holds it."""
        if self.busy:
            return 0
        return sum(entry["copy"][0] for entry in self._load().values())

    def _usable(self) -> bool:
        """Ours alone: a folder we made, owned by us, closed to others (a planted one in a shared
        temp dir, or a symlink, would let another user read or steer the copy)."""
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = os.lstat(self.root)
            ok = stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077
            if ok:
                self.data.mkdir(mode=0o700, exist_ok=True)
                ok = stat.S_ISDIR(os.lstat(self.data).st_mode)
        except OSError as exc:
            ok, why = False, f"{exc.strerror or exc}"
        else:
            why = "it is not a folder of this user's, closed to others"
        if not ok and not self._warned:
            self._warned = True
            log.warning("snapshot mirror %s cannot be used (%s): each snapshot copies the whole data dir while "
                        "writes are held; remove it or set CHROMAGUARD_SNAPSHOT_DIR", self.root, why)
        return ok

    # ---- the two refreshes (each in a thread) ----------------------------------------------------

    def refresh(self) -> None:
        """Before the hold: copy what changed, again until every copy can be trusted (the clock
        has passed its file's stamps) or a few rounds have run; what still changes is copied
        under the hold."""
        with self._room_kept():
            self._refresh()

    def copy_held(self) -> int:
        """Under the hold: copy only what is not trusted, until a pass saw nothing change."""
        with self._room_kept():
            return self._copy_held()

    @contextlib.contextmanager
    def _room_kept(self) -> Iterator[None]:
        """A full disk empties the mirror (it is only a cache) rather than leave it half there."""
        try:
            yield
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                log.warning("snapshot mirror %s: its filesystem is full; the mirror was emptied", self.root)
                self._entries = {}
                shutil.rmtree(self.data, ignore_errors=True)
                with contextlib.suppress(OSError):
                    (self.root / STATE_NAME).unlink()
            raise

    def _refresh(self) -> None:
        for _ in range(_REFRESH_ROUNDS):
            clock = self._clock()
            live = self._live()
            self._drop_extras(live)
            todo = [rel for rel in live if not self._trusted(rel, live[rel])]
            if not todo:
                break
            for rel in todo:
                self._copy_file(rel)
                if self._live_stamp(rel) == live[rel]:
                    self._entries[rel] = {"live": live[rel], "copy": _stamp_of(self._path(rel)), "clock": clock}
                else:
                    self._entries.pop(rel, None)  # written during the copy: the hold copies it
            copies = [self._newest([self._entries[rel]["copy"]]) for rel in todo if rel in self._entries]
            if copies:  # so that they can be trusted: before the scratch engine may write into them
                self._wait_past(max(copies), self._mirror_clock)
            self._bound_copies(todo)
            self._save()
            racy = [stamp for stamp in (self._newest(self._entries[rel]["live"]) for rel in todo
                                        if rel in self._entries) if clock is not None and stamp >= clock]
            if not racy or not self._wait_past(max(racy), self._clock):
                break  # all trusted, or only what keeps changing is left: the hold copies that

    def _copy_held(self) -> int:
        for attempt in range(1, _HELD_ATTEMPTS + 1):
            clock = self._clock()
            before = self._live()
            self._drop_extras(before)
            todo = [rel for rel in before if not self._trusted(rel, before[rel])]
            size = 0
            for rel in todo:
                self._entries.pop(rel, None)
                size += self._copy_file(rel)
            after = self._live()
            if after == before:
                for rel in todo:
                    self._entries[rel] = {"live": before[rel], "copy": _stamp_of(self._path(rel)), "clock": clock}
                self._bound_copies(todo)  # no wait here (the hold): a copy in the clock's tick is copied again
                self._save()
                self._copied = {"files": len(todo), "bytes": size}
                return attempt
            for rel in set(before) | set(after):
                if before.get(rel) != after.get(rel):
                    self._entries.pop(rel, None)
        self._save()
        raise SnapshotError("the engine kept changing its files while writes were held")

    def copied(self) -> dict[str, int]:
        return dict(self._copied)

    # ---- what is trusted -------------------------------------------------------------------------

    def _trusted(self, rel: str, live: list[Stamp | None]) -> bool:
        """The live file and its copy both unchanged since the copy, each by its own filesystem's
        clock (the copy's: the scratch engine may write into it within the same tick), and the
        live file on the data dir's own filesystem (whose clock was read)."""
        entry = self._entries.get(rel)
        if entry is None or entry.get("clock") is None or entry.get("copy_clock") is None or entry["live"] != live:
            return False
        copy = entry["copy"]
        return (self._newest(live) < entry["clock"] and self._newest([copy]) < entry["copy_clock"]
                and all(s is None or s[4] == self._device for s in live) and _stamp_of(self._path(rel)) == copy)

    @staticmethod
    def _newest(live: list[Stamp | None]) -> int:
        return max((max(s[1], s[2]) for s in live if s is not None), default=0)

    def _live(self) -> dict[str, list[Stamp | None]]:
        return {rel: self._live_stamp(rel, st) for rel, st in data_files(self.data_dir).items()}

    def _live_stamp(self, rel: str, st: os.stat_result | None = None) -> list[Stamp | None]:
        """The file's stamp; for SQLite, its journals' too (a commit may change only those)."""
        first = _stamp(st) if st is not None else _stamp_of(str(self.data_dir / rel))
        if rel != SQLITE:
            return [first]
        return [first, *(_stamp_of(str(self.data_dir / name), ctime=False) for name in JOURNALS)]

    def _clock(self) -> int | None:
        """The data dir filesystem's time now: the stamp a write made now would get."""
        clock = _read_clock(self.data_dir / CLOCK_NAME)
        if clock is not None:
            self._device = clock[1]
        return None if clock is None else clock[0]

    def _mirror_clock(self) -> int | None:
        clock = _read_clock(self.root / CLOCK_NAME)
        return None if clock is None else clock[0]

    def _wait_past(self, stamp: int, clock: Callable[[], int | None]) -> bool:
        """Until ``clock`` is past ``stamp``; False if it did not get there in time."""
        deadline = time.monotonic() + _CLOCK_WAIT
        while time.monotonic() < deadline:
            now = clock()
            if now is None:
                return False
            if now > stamp:
                return True
            time.sleep(0.005)
        return False

    # ---- the copy --------------------------------------------------------------------------------

    def _path(self, rel: str) -> str:
        return os.path.join(self.data, rel)

    def _copy_file(self, rel: str) -> int:
        """Copy one file into the mirror; returns its size. SQLite goes through its backup API
        when a journal is present (commits or a transaction the raw file does not show)."""
        src, dst = os.path.join(self.data_dir, rel), self._path(rel)
        os.makedirs(os.path.dirname(dst), mode=0o700, exist_ok=True)
        if rel == SQLITE and any(os.path.exists(self.data_dir / name) for name in JOURNALS):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dst)
            copy_sqlite(self.data_dir, self.data)
            return os.stat(dst).st_size
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(dst)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:  # never write through a link
                os.unlink(dst)
        try:
            size = os.stat(src).st_size
            copy_file(src, dst, size)
        except FileNotFoundError:  # gone meanwhile: the check after the pass sees it
            return 0
        return size

    def _drop_extras(self, live: dict[str, Any]) -> None:
        """Delete what the mirror has and the data dir does not: files the engine removed, and what
        the scratch engine left (a journal there would roll the copy back when it is opened)."""
        for dirpath, dirnames, filenames in os.walk(self.data, topdown=False):
            for name in filenames:
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, self.data).replace(os.sep, "/")
                if rel not in live:
                    os.unlink(full)
                    self._entries.pop(rel, None)
            for name in dirnames:
                full = os.path.join(dirpath, name)
                if os.path.islink(full):
                    os.unlink(full)
                elif not os.listdir(full):
                    os.rmdir(full)

    # ---- what the mirror knows, kept beside it ---------------------------------------------------

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            state = json.loads((self.root / STATE_NAME).read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION \
                or state.get("data_dir") != str(self.data_dir.resolve()) or not isinstance(state.get("files"), dict) \
                or state.get("boot") != _boot_id() or state.get("host") != socket.gethostname():
            return {}  # another boot (a power cut may have lost what it wrote) or another machine
        return {rel: entry for rel, entry in state["files"].items()
                if isinstance(entry, dict) and _stamps_ok(entry.get("live"), allow_none=True)
                and _stamps_ok([entry.get("copy")]) and isinstance(entry.get("clock"), int)
                and isinstance(entry.get("copy_clock"), int)}

    def _bound_copies(self, rels: list[str]) -> None:
        """The mirror's clock now, after these copies: a copy stamped at or after it (the same
        tick) could be rewritten unseen, and is not trusted."""
        copy_clock = self._mirror_clock()
        for rel in rels:
            if rel in self._entries:
                self._entries[rel]["copy_clock"] = copy_clock

    def _save(self) -> None:
        """Atomically; a state lost or torn only costs copying again."""
        temp = self.root / f".{STATE_NAME}.{os.getpid()}"
        temp.write_text(json.dumps({"version": _STATE_VERSION, "data_dir": str(self.data_dir.resolve()),
                                    "boot": _boot_id(), "host": socket.gethostname(), "files": self._entries}))
        os.replace(temp, self.root / STATE_NAME)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
