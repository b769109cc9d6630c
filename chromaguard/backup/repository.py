"""A backup repository: content-addressed chunks in packs, and one manifest per backup.

What a backup is: the snapshot's tar stream (the same stream a single-file archive holds),
cut into chunks by content (FastCDC), each chunk named by its sha256. Chunks the repository
already holds are referenced, not uploaded again, so a change inside a large index file
costs only the chunks around it. New chunks are compressed (zstd) and gathered into packs of
about 16 MiB, named by their own sha256, so an object store sees few large objects.

Why it survives a kill at any moment (the rules every operation keeps):
- a pack is written whole or not at all (object stores and obstore's local store both write
  by rename), and read back and checked before any manifest names it;
- a manifest is written last, after every pack it names is checked, so no partial backup is
  ever listed; a pack no manifest names is garbage, and ``prune`` removes it;
- ``prune`` deletes manifests first, then only the packs no remaining manifest names;
- backups and prunes of one repository take turns under a lock object, so a prune never
  deletes a pack a backup is about to reference. A lock left by a killed process goes stale.
"""

from __future__ import annotations

import calendar
import concurrent.futures
import contextlib
import hashlib
import io
import json
import logging
import math
import os
import re
import socket
import tarfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import zstandard

from .. import __version__
from ..errors import ChromaguardError
from . import delta
from .crypto import PASSWORD_ENV, Sealer, Unreadable
from .delta import Location, PreviousStream, Stored
from .retention import Policy, kept
from .store import MissingObject, Store, StoreError

with contextlib.redirect_stdout(io.StringIO()) as _said:  # without its compiled module it prints to stdout,
    from fastcdc import fastcdc as cut_chunks  # which would break `--json` output

FORMAT = "chromaguard-repository"
BACKUP_FORMAT = "chromaguard-repository-backup"
VERSION = 1  # of the repository (config.json)
MANIFEST_VERSION = 2  # 2: a chunk may be a delta (a sixth field: its base's index in "bases"); 1 otherwise
CONFIG = "config.json"
LOCKS = "locks"
PACK_SIZE = 16 << 20
_CHUNK_AAD = b"chunk"
# Small chunks: a change to 1 % of the records (spread over the index and the SQLite pages)
# re-uploads about 5 % of a full backup with 8 KiB chunks, 6 % with 16 KiB, 9 % with 64 KiB.
CHUNKING = {"min": 2 << 10, "avg": 8 << 10, "max": 32 << 10}
_REPACK_AT = 0.2  # a pack a fifth or more unused is rewritten by prune with only what is used
DEDUPLICATE_AGAINST = 2  # the newest backups whose chunks a new one reuses
_PACK = re.compile(r"^[0-9a-f]{64}$")
_ID = re.compile(r"^\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{6}$")  # sorts by time, to the millisecond
LOCK_STALE_AFTER = 15 * 60.0  # a live holder refreshes its lock every minute
_LOCK_REFRESH = 60.0
_UPLOADS_IN_FLIGHT = 2

log = logging.getLogger("chromaguard.backup")
if _said.getvalue():
    log.warning("fastcdc has no compiled module here: backups chunk about 100 times slower (pure Python); install "
                "a fastcdc wheel for this platform, or build it with a C compiler present")
Progress = Callable[[int], None]


class Sink(Protocol):
    """Where a backup's stream is read back to: a file, a socket's writer, a counter."""

    def write(self, data: bytes, /) -> object: ...


class _Counted:
    """A sink that keeps only the count: what checking a backup needs."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes, /) -> int:
        self.size += len(data)
        return len(data)


class RepositoryError(ChromaguardError):
    exit_code = 1


class CorruptBackup(RepositoryError):
    """A backup cannot be read back whole; the message names the backup and the chunk or pack."""


class Stopped(ChromaguardError):
    """The service is stopping, and work that a kill may cut at any moment was cut: not a failure
    of the backup or repository, so never noted as one."""


def go_on(stop: threading.Event | None, message: str) -> None:
    """A point where work may be cut short: the repository is as a kill here would leave it."""
    if stop is not None and stop.is_set():
        raise Stopped(message)


_BACKUP_STOPPED = "the backup was stopped before it was complete (the service is stopping); nothing was listed"
_PRUNE_STOPPED = ("prune was stopped (the service is stopping); every kept backup is whole, and the next prune "
                  "deletes what this one left")


@dataclass
class BackupInfo:
    id: str
    time: float
    size: int
    new_bytes: int
    stored_bytes: int
    collections: int
    records: int
    write_hold_ms: float | None
    verified: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "time": _iso(self.time), "size": self.size, "new_bytes": self.new_bytes,
                "stored_bytes": self.stored_bytes, "collections": self.collections, "records": self.records,
                "write_hold_ms": self.write_hold_ms, "verified": self.verified}


@dataclass
class PruneReport:
    kept: dict[str, list[str]]
    removed: list[str]
    packs_removed: int = 0
    bytes_freed: int = 0


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def new_id(now: float | None = None) -> str:
    now = time.time() if now is None else now
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}.{int(now * 1000) % 1000:03d}Z-{uuid.uuid4().hex[:6]}"


def _pack_key(pack: str) -> str:
    return f"packs/{pack[:2]}/{pack}"


def _manifest_key(backup_id: str) -> str:
    return f"backups/{backup_id}.json.zst"


MANIFEST_READERS = 16  # manifests fetched at once by `backups list`
_READ_WINDOW = 16 << 20  # a window of a restore: chunks as stored, bases opened (two are held: one read ahead)
_READERS = 8  # packs read side by side


def _verified_key(backup_id: str) -> str:
    return f"verified/{backup_id}.json"


class Repository:
    """One repository; ``open`` checks it is one (and creates it when asked)."""

    def __init__(self, store: Store, config: dict[str, Any], sealer: Sealer | None = None,
                 password_given: bool = False) -> None:
        self.store = store
        self.config = config
        self.sealer = sealer  # None: an unencrypted repository
        self._lost: threading.Event | None = None  # set when the lock held by this process was taken over
        self._lock_key = ""
        self._checked_at = 0.0
        self._password_given = password_given
        chunking = config["chunking"]
        self.min_chunk, self.avg_chunk, self.max_chunk = chunking["min"], chunking["avg"], chunking["max"]

    @property
    def url(self) -> str:
        return self.store.url

    @classmethod
    def open(cls, url: str, *, create: bool = False, password: str | None = None) -> Repository:
        """With ``password``, a repository created here is encrypted, and an encrypted one opened."""
        store = Store(url, create=create)
        try:
            raw = store.get(CONFIG)
        except MissingObject:
            if not create:
                raise RepositoryError(f"{url}: no backup repository there (no {CONFIG}); `chromaguard backup "
                                      f"--to {url}` creates one") from None
            config: dict[str, Any] = {"format": FORMAT, "version": VERSION, "id": uuid.uuid4().hex,
                                      "created": _iso(time.time()), "chunking": dict(CHUNKING), "compression": "zstd"}
            sealer = None
            if password is not None:
                sealer, config["encryption"] = Sealer.create(password)
            if store.put(CONFIG, json.dumps(config, indent=2).encode(), new=True):
                return cls(store, config, sealer, password is not None)
            raw = store.get(CONFIG)  # another process created it just now
        config = _parse_config(url, raw)
        entry = config.get("encryption")
        if entry is not None and not isinstance(entry, dict):
            raise RepositoryError(f"{url}: {CONFIG} has a damaged encryption entry")
        if entry is None and password is not None:  # a downgrade (config.json edited) must not pass unseen
            raise RepositoryError(f"{url}: this repository is not encrypted, but a backup password is set "
                                  f"({PASSWORD_ENV}); unset it to use this repository, or back up to a new one to "
                                  "encrypt")
        sealer = Sealer.open(url, entry, password) if entry is not None else None
        return cls(store, config, sealer, password is not None)

    # ---- the lock ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self, operation: str, *, exclusive: bool = True) -> Iterator[None]:
        """Each holder writes a lock object of its own (``locks/<token>.json``), then looks at the
        others: it gives way to one that holds already, or that came first (by the store's clock),
        when either of them is exclusive. Prunes are exclusive; backups, restores and verifies
        share. Refreshed while held, stale once not; one found deleted (taken over) stops the work
        before its next deletion."""
        token = uuid.uuid4().hex
        key = f"{LOCKS}/{token}.json"
        body: dict[str, Any] = {"operation": operation, **_this_process(), "since": time.time(), "token": token,
                                "exclusive": exclusive, "held": False, "refreshed": time.time()}
        self.store.put(key, json.dumps(body).encode(), new=True)
        try:
            holder = self._conflict(token, exclusive)
            if holder is not None:
                raise RepositoryError(
                    f"{self.url}: the repository is locked by a {holder.get('operation', '?')} on "
                    f"{holder.get('host', '?')} (pid {holder.get('pid', '?')}) since {_iso(_number(holder, 'since'))}; "
                    f"wait for it, or if that process is gone run `chromaguard backups unlock {self.url}`")
            body["held"] = True
            self.store.put(key, json.dumps(body).encode())
        except BaseException:
            with contextlib.suppress(StoreError):
                self.store.delete(key)
            raise
        stop, lost = threading.Event(), threading.Event()

        def refresh() -> None:
            while not stop.wait(_LOCK_REFRESH):
                with contextlib.suppress(StoreError):
                    if self.store.size(key) is None:  # taken over as stale: this process must stop
                        lost.set()
                        return
                    body["refreshed"] = time.time()
                    self.store.put(key, json.dumps(body).encode())

        keeper = threading.Thread(target=refresh, name="chromaguard-repository-lock", daemon=True)
        keeper.start()
        self._lost, self._lock_key, self._checked_at = lost, key, time.monotonic()
        try:
            yield
        finally:
            stop.set()
            keeper.join()
            self._lost = None
            with contextlib.suppress(StoreError):
                self.store.delete(key)

    def _conflict(self, token: str, exclusive: bool) -> dict[str, Any] | None:
        """The live lock this one must give way to, if any; stale ones are removed on the way."""
        others = self.store.list(LOCKS)
        mine = next((o for o in others if o.key.endswith(f"/{token}.json")), None)
        for other in others:
            if other is mine or not other.key.endswith(".json"):
                continue
            holder = self._read_lock(other.key)
            if holder is None:
                continue
            # Stale by the store's clock (its time of our lock is "now" there), so a machine whose
            # clock runs ahead cannot take over a live lock; or a holder here that is gone.
            silent = (mine.modified if mine is not None else time.time()) - other.modified
            if silent >= LOCK_STALE_AFTER or _gone(holder) or holder.get("operation") == "unreadable lock":
                with contextlib.suppress(StoreError):
                    self.store.delete(other.key)
                continue
            if not (exclusive or holder.get("exclusive", True)):
                continue  # both share
            # Came first, or at the same instant (S3 keeps whole seconds): then both give way.
            if holder.get("held") or mine is None or other.modified <= mine.modified:
                return holder
        return None

    def _read_lock(self, key: str) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.store.get(key))
        except MissingObject:
            return None  # released meanwhile
        except ValueError:
            return {"operation": "unreadable lock", "refreshed": 0}
        return holder if isinstance(holder, dict) else {"refreshed": 0}

    def _still_locked(self) -> None:
        """Before each deletion: stop if another process took this one's lock over as stale."""
        if self._lost is None:
            return
        if not self._lost.is_set() and time.monotonic() - self._checked_at >= 1.0:  # at most once a second
            self._checked_at = time.monotonic()
            if self._lock_key and self.store.size(self._lock_key) is None:
                self._lost.set()
        if self._lost.is_set():
            raise RepositoryError(f"{self.url}: this process's repository lock was taken over by another (it was "
                                  "thought gone); stopped before deleting anything more")

    def unlock(self) -> int:
        """Remove every lock whoever holds it (``backups unlock``: the holders are known to be gone)."""
        found = [info.key for info in self.store.list(LOCKS)]
        for key in found:
            self.store.delete(key)
        return len(found)

    # ---- backups -----------------------------------------------------------------------------

    def ids(self) -> list[str]:
        """Every complete backup, oldest first."""
        found = []
        for info in self.store.list("backups"):
            name = info.key.rsplit("/", 1)[-1]
            if name.endswith(".json.zst") and _ID.match(name[:-9]):
                found.append(name[:-9])
        return sorted(found)

    def manifest(self, backup_id: str) -> dict[str, Any]:
        if not _ID.match(backup_id):
            raise RepositoryError(f"{backup_id!r} is not a backup id (like 20261202T030000.000Z-1a2b3c); "
                                  f"`chromaguard backups list {self.url}` shows them")
        try:
            raw = self.store.get(_manifest_key(backup_id))
        except MissingObject:
            raise RepositoryError(f"{self.url}: no backup {backup_id}; `chromaguard backups list {self.url}` "
                                  "shows them") from None
        if self.sealer is not None:
            try:
                raw = self.sealer.unseal(raw, backup_id.encode())
            except Unreadable:
                raise CorruptBackup(f"backup {backup_id}: its manifest in {self.url} does not decrypt (corrupt, or "
                                    "not this repository's)") from None
        return _parse_manifest(self.url, backup_id, raw)

    def backups(self, readers: int = MANIFEST_READERS) -> list[BackupInfo]:
        """Every backup with its facts and last verification, oldest first.

        The manifests are fetched side by side: one GET each, so thousands of backups on an object
        store would otherwise take a round trip apiece, one after another."""
        verified = {info.key.rsplit("/", 1)[-1][:-5] for info in self.store.list("verified")}

        def one(backup_id: str) -> BackupInfo:
            try:
                m = self.manifest(backup_id)
            except CorruptBackup as exc:
                return BackupInfo(backup_id, _id_time(backup_id), 0, 0, 0, 0, 0, None,
                                  {"ok": False, "message": str(exc)})
            return _info(m, self._verification(backup_id) if backup_id in verified else None)

        with concurrent.futures.ThreadPoolExecutor(readers) as pool:
            return list(pool.map(one, self.ids()))

    def _verification(self, backup_id: str) -> dict[str, Any] | None:
        """The last verification of a backup. In an encrypted repository its record is sealed and
        bound to the backup, and only a sealed one can say it passed: a record in clear (written
        before records were sealed, or planted) counts as none, and one that does not open (copied
        from another backup, corrupt) as a failure. Either way a backup is never shown verified
        on someone else's word; a failure only means the next backup does not build on it."""
        try:
            raw = self.store.get(_verified_key(backup_id))
        except MissingObject:
            return None
        found = _record(raw)
        if self.sealer is None:
            return found
        try:
            return _record(self.sealer.unseal(raw, _verified_key(backup_id).encode()))
        except Unreadable:
            if found is not None:  # in clear: a "failed" is believed (the safe way), a "passed" is not
                return found if found.get("ok") is False else None
            return {"ok": False, "message": "its verification record does not decrypt with the repository key "
                    f"(copied from another backup, or corrupt): not trusted; `chromaguard verify {self.url} --id "
                    f"{backup_id}` writes a new one"}

    def note_verification(self, backup_id: str, ok: bool, message: str, kind: str) -> None:
        record = json.dumps({"time": _iso(time.time()), "ok": ok, "kind": kind, "message": message}).encode()
        if self.sealer is not None:
            record = self.sealer.seal(record, _verified_key(backup_id).encode())
        self.store.put(_verified_key(backup_id), record)

    def select(self, backup_id: str | None = None, at: float | None = None) -> str:
        """A backup by id, else the newest at or before ``at``, else the newest."""
        if backup_id:
            self.manifest(backup_id)  # exists and is readable
            return backup_id
        ids = self.ids()
        if at is not None:
            ids = [i for i in ids if _id_time(i) <= at]
            if not ids:
                raise RepositoryError(f"{self.url}: no backup at or before {_iso(at)}")
        if not ids:
            raise RepositoryError(f"{self.url}: the repository holds no backup yet")
        return ids[-1]

    def reusable(self) -> tuple[dict[str, list[Any]], PreviousStream | None]:
        """What a new backup builds on: the chunks of the newest backups (sha256 -> [pack, offset,
        length, raw length, base]), and the newest one's stream, where changed chunks find their
        delta bases.

        Why not every backup's: what changed since the last backup is what a new one must
        upload; reading every manifest would cost more than the rare chunk it saves."""
        known: dict[str, list[Any]] = {}
        previous: PreviousStream | None = None
        used = 0
        present = self.pack_sizes()

        def there(at: Location | None) -> bool:  # a pack lost or cut short is not built on
            return at is None or _holds(present, at)

        for backup_id in reversed(self.ids()):
            if used >= DEDUPLICATE_AGAINST:
                break
            found = self._verification(backup_id)
            if found is not None and found.get("ok") is False:
                continue  # a backup that failed its verification is not built on: a new one starts clean
            try:
                m = self.manifest(backup_id)
            except CorruptBackup:
                continue  # its chunks are simply not reused
            used += 1
            stream = _stored(m)
            if previous is None:
                previous = PreviousStream(stream, there)
            for chunk in stream:
                if there(chunk.at) and there(chunk.base):
                    had = known.get(chunk.at.digest)
                    # A chunk stored whole is preferred over its delta: one read, and no base to
                    # trust (a bad base, or a planted manifest's, breaks every backup reusing the delta).
                    if had is None or (had[4] is not None and chunk.base is None):
                        known[chunk.at.digest] = [*chunk.at[:4], chunk.base]
        return known, previous

    def pack_sizes(self) -> dict[str, int]:
        """Every pack there is, and its size."""
        return {info.key.rsplit("/", 1)[-1]: info.size for info in self.store.list("packs")}

    def check_writable(self) -> None:
        """Refuse what no backup may write, without a request: before a snapshot is taken for nothing."""
        if self.sealer is None and self._password_given:
            raise RepositoryError(f"{self.url}: this repository is not encrypted, but a backup password is set "
                                  f"({PASSWORD_ENV}); unset it, or back up to a new repository to encrypt")

    def writer(self, *, progress: Progress | None = None, stop: threading.Event | None = None) -> BackupWriter:
        """A file-like sink for a snapshot's tar stream; ``commit`` makes it a listed backup.
        Once ``stop`` is set, the next write fails: how a stopping service cuts an upload short."""
        self.check_writable()
        known, previous = self.reusable()
        return BackupWriter(self, known, previous, progress, stop)

    # ---- reading back --------------------------------------------------------------------------

    def read(self, backup_id: str, out: Sink, progress: Progress | None = None,
             manifest: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write the backup's tar stream to ``out``, every chunk and the whole checked; its manifest
        (``manifest``: read already, and found whole by ``check_packs_exist``)."""
        m = manifest
        if m is None:
            m = self.manifest(backup_id)
            self.check_packs_exist(backup_id, m)
        whole = hashlib.sha256()
        for _, data in self._opened(backup_id, _stored(m)):
            whole.update(data)
            out.write(data)
            if progress is not None:
                progress(len(data))
        if whole.hexdigest() != m["stream"]["sha256"]:
            raise CorruptBackup(f"backup {backup_id}: the stream read back does not match its checksum")
        return m

    def check_packs_exist(self, backup_id: str, m: dict[str, Any]) -> None:
        """Every pack the backup names is there and long enough: found before anything is written."""
        needed: dict[str, int] = {}
        for at in _locations(m):
            needed[at.pack] = max(needed.get(at.pack, 0), at.offset + at.length)
        present = self.pack_sizes()
        for pack, end in needed.items():
            size = present.get(pack)
            if size is None:
                raise CorruptBackup(f"backup {backup_id}: pack {pack[:16]}… is missing from {self.url}; restore "
                                    "another backup (`chromaguard backups list`)")
            if size < end:
                raise CorruptBackup(f"backup {backup_id}: pack {pack[:16]}… is cut short ({size} of {end} bytes)")

    def check(self, backup_id: str, progress: Progress | None = None) -> int:
        """Read every chunk of a backup (a delta with its base) and the whole stream back, and check
        them against their names; the bytes checked."""
        counted = _Counted()
        self.read(backup_id, counted, progress)
        return counted.size

    def _opened(self, backup_id: str, chunks: list[Stored]) -> Iterator[tuple[bytes, bytes]]:
        """Each chunk as stored and its content, in order, checked against its name. Read a window
        at a time, each pack's part of it in ranged reads, side by side: a backup made over many
        others has its chunks (and a delta's base) spread over their packs, and reading whole packs
        downloaded those many times over (26.9 GB for a 111 MB stream after 30 incrementals). The
        next window is read while this one is opened and handed out. Chunks are opened here, one
        after another: opened in the reader threads they fought over the GIL (a 281 MB backup
        read in 1.06 s instead of 0.85, one of 29,000 chunks, 20,000 of them deltas, 1.8 s
        instead of 1.6)."""
        pool = concurrent.futures.ThreadPoolExecutor(_READERS, "chromaguard-pack-read")
        try:
            ahead: tuple[list[Stored], list[_Reading]] | None = None
            for window in _windows(chunks):
                started = self._start_window(pool, backup_id, window)
                if ahead is not None:
                    yield from self._finish_window(backup_id, *ahead)
                ahead = window, started
            if ahead is not None:
                yield from self._finish_window(backup_id, *ahead)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _start_window(self, pool: concurrent.futures.ThreadPoolExecutor, backup_id: str,
                      window: list[Stored]) -> list[_Reading]:
        """A reader per pack for its part of the window (chunks and bases)."""
        by_pack: dict[str, set[Location]] = {}
        for chunk in window:
            for at in (chunk.at, chunk.base):
                if at is not None:
                    by_pack.setdefault(at.pack, set()).add(at)

        def fetch(pack: str) -> dict[Location, bytes]:
            try:
                return self.ranged(pack, by_pack[pack])
            except MissingObject:
                raise CorruptBackup(f"backup {backup_id}: pack {pack[:16]}… is missing from {self.url}") from None

        return [pool.submit(fetch, pack) for pack in by_pack]

    def _finish_window(self, backup_id: str, window: list[Stored],
                       started: list[_Reading]) -> Iterator[tuple[bytes, bytes]]:
        stored: dict[Location, bytes] = {}
        for future in started:
            stored.update(future.result())
        bases: dict[Location, bytes] = {}
        for chunk in window:
            base = None
            if chunk.base is not None:
                base = bases.get(chunk.base)
                if base is None:
                    base = bases[chunk.base] = _open_chunk(backup_id, chunk.base, stored[chunk.base], self.sealer)
            blob = stored[chunk.at]
            yield blob, _open_chunk(backup_id, chunk.at, blob, self.sealer, base)

    def ranged(self, pack: str, wanted: set[Location] | list[Location]) -> dict[Location, bytes]:
        """The stored blobs at ``wanted`` in one pack, by ranged reads (StoreError as the store says)."""
        ordered = sorted(wanted)
        blobs = self.store.get_ranges(_pack_key(pack), [(at.offset, at.offset + at.length) for at in ordered])
        return dict(zip(ordered, blobs))

    # ---- retention -----------------------------------------------------------------------------

    def prune(self, policy: Policy, *, dry_run: bool = False, stop: threading.Event | None = None) -> PruneReport:
        """Forget the backups the policy does not keep, then delete the packs no kept one uses.
        Once ``stop`` is set, it stops at the next deletion (how a stopping service cuts it short)."""
        with self.locked("prune"):
            manifests = self._all_manifests("prune")  # every one readable, before anything is deleted
            ids = sorted(manifests)
            keep = kept(((i, _id_time(i)) for i in ids), policy)
            doomed = [i for i in ids if i not in keep]
            report = PruneReport(keep, doomed)
            if dry_run:
                return report
            for backup_id in doomed:  # manifests first: a kill from here on leaves only garbage packs
                go_on(stop, _PRUNE_STOPPED)
                self._still_locked()
                self.store.delete(_manifest_key(backup_id))
                self.store.delete(_verified_key(backup_id))
                del manifests[backup_id]
            report.packs_removed, report.bytes_freed = self._collect_garbage(manifests, stop)
            return report

    def _all_manifests(self, doing: str) -> dict[str, dict[str, Any]]:
        manifests: dict[str, dict[str, Any]] = {}
        for backup_id in self.ids():
            try:
                manifests[backup_id] = self.manifest(backup_id)
            except CorruptBackup as exc:  # what it names cannot be known: nothing may go
                raise RepositoryError(f"{exc}; {doing} stopped before deleting anything: remove that backup "
                                      f"first (`chromaguard backups forget {self.url} --id {backup_id}`)") from None
        return manifests

    def _collect_garbage(self, manifests: dict[str, dict[str, Any]],
                         stop: threading.Event | None = None) -> tuple[int, int]:
        """Delete the packs no listed backup names (also those a killed backup left behind), after
        rewriting the packs that are mostly unused: (packs deleted, bytes freed)."""
        used: dict[str, dict[int, Stored]] = {}  # pack -> offset -> the chunk there (a base is one too)
        for backup_id, m in manifests.items():
            for chunk in [*_stored(m), *(Stored(base, None) for base in _base_locations(m))]:
                known = used.setdefault(chunk.at.pack, {}).setdefault(chunk.at.offset, chunk)
                if not _same_chunk(known, chunk):
                    raise RepositoryError(f"backup {backup_id}: its manifest disagrees with another about the chunk "
                                          f"at {chunk.at.offset} of pack {chunk.at.pack[:16]}…; prune stopped before "
                                          "deleting any pack: verify the backups (`chromaguard verify --all`)")
        present = {info.key.rsplit("/", 1)[-1]: info for info in self.store.list("packs")}
        # A pack with a chunk or base that is not there whole (lost, cut short) is left as it is: its
        # chunks cannot be checked to be copied, and a prune must still free what it can (verify
        # names the loss).
        sizes = {pack: info.size for pack, info in present.items()}
        wasteful = [pack for pack, chunks in used.items() if pack in present and
                    present[pack].size - sum(c.at.length for c in chunks.values()) > present[pack].size * _REPACK_AT
                    and all(_holds(sizes, c.at) and (c.base is None or _holds(sizes, c.base))
                            for c in chunks.values())]
        written = self._repack(manifests, used, wasteful, stop) if wasteful else 0
        # What the manifests name now (after a repack, its new packs): a pack listed above with the
        # same name, left by a repack killed before, is one of them and stays.
        named = {pack for m in manifests.values() for pack in m["packs"]}
        removed = freed = 0
        for pack, info in present.items():
            if pack not in named:
                go_on(stop, _PRUNE_STOPPED)
                self._still_locked()
                self.store.delete(info.key)
                removed += 1
                freed += info.size
        return removed, freed - written

    def _repack(self, manifests: dict[str, dict[str, Any]], used: dict[str, dict[int, Stored]],
                wasteful: list[str], stop: threading.Event | None) -> int:
        """Copy the used chunks of ``wasteful`` packs into new packs, then point every manifest at
        them, each replaced whole. Only after that may the old packs go. Returns the bytes written."""
        moved: dict[tuple[str, int], tuple[str, int]] = {}  # (old pack, offset) -> (new pack, offset)
        buffer = bytearray()
        staged: list[tuple[str, int, int]] = []
        written = 0

        def seal() -> None:
            nonlocal buffer, staged, written
            data = bytes(buffer)
            pack = hashlib.sha256(data).hexdigest()
            _put_checked(self.store, self.url, pack, data)
            moved.update({(old, offset): (pack, at) for old, offset, at in staged})
            written += len(data)
            buffer, staged = bytearray(), []

        copied: set[str] = set()
        for pack in wasteful:
            go_on(stop, _PRUNE_STOPPED)
            chunks = [chunk for _, chunk in sorted(used[pack].items())]
            # Checked before it is copied (a delta with its base): one rewritten wrong would be lost
            # for every backup. Copied as stored, still compressed (and sealed).
            try:
                blobs = [blob for blob, _ in self._opened("(repack)", chunks)]
            except CorruptBackup as exc:  # left named as it is: the backups using it are broken, not the prune
                log.warning("prune: pack %s… is not repacked: %s; `chromaguard verify %s --all` names the backups "
                            "using it", pack[:16], exc, self.url)
                continue
            for chunk, blob in zip(chunks, blobs):
                staged.append((pack, chunk.at.offset, len(buffer)))
                buffer += blob
            copied.add(pack)
            if len(buffer) >= PACK_SIZE:
                seal()
        if buffer:
            seal()
        doomed = copied
        for backup_id, m in manifests.items():
            if doomed.isdisjoint(m["packs"]):
                continue
            go_on(stop, _PRUNE_STOPPED)
            self._still_locked()

            def move(at: Location) -> Location:
                pack, offset = moved.get((at.pack, at.offset), (at.pack, at.offset))
                return at._replace(pack=pack, offset=offset)

            m.update(_entries([Stored(move(c.at), c.base and move(c.base)) for c in _stored(m)]))
            self.store.put(_manifest_key(backup_id), _encode_manifest(m, self.sealer))
        return written

    def forget(self, backup_id: str) -> None:
        """Remove one backup by id, then its packs no other backup uses."""
        if not _ID.match(backup_id) or self.store.size(_manifest_key(backup_id)) is None:
            raise RepositoryError(f"{self.url}: no backup {backup_id!r}; `chromaguard backups list {self.url}` "
                                  "shows them")
        with self.locked("forget"):
            self.store.delete(_manifest_key(backup_id))  # the one that may be unreadable: it goes first
            self.store.delete(_verified_key(backup_id))
            self._collect_garbage(self._all_manifests("forget"))

    def size(self) -> int:
        return sum(info.size for info in self.store.list("packs"))


class BackupWriter:
    """Takes the tar stream as it is written; new chunks go up in packs while it comes."""

    def __init__(self, repo: Repository, known: dict[str, list[Any]], previous: PreviousStream | None,
                 progress: Progress | None, stop: threading.Event | None = None) -> None:
        self.repo = repo
        self.stop = stop
        self.known = known
        self.previous = previous
        self._cut_at = 0  # the stream offset of the buffer's start
        self.progress = progress
        self.started = time.monotonic()
        self.id = new_id()
        self._buffer = bytearray()
        self._head = bytearray()  # the stream's start, up to the end of its first member (manifest.json)
        self._head_needed: int | None = None
        self._whole = hashlib.sha256()
        self._size = 0
        self._chunks: list[list[Any]] = []
        self._batch: list[tuple[list[Any], bytes, Location | None]] = []  # new chunks not sent yet: where
        # they will be, what they hold, and the whole chunk of the last backup they may be a delta of
        self._batch_bytes = 0
        self._uploads: list[concurrent.futures.Future[int]] = []
        self._pool = concurrent.futures.ThreadPoolExecutor(_UPLOADS_IN_FLIGHT, "chromaguard-pack-upload")
        self.new_bytes = 0
        self.stored_bytes = 0
        self.reused_chunks = 0
        self._closed = False

    # file-like: what tarfile and a download loop call
    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._closed:
            raise ValueError("the backup was committed or abandoned already")
        go_on(self.stop, _BACKUP_STOPPED)
        n = len(data)
        if self._head_needed is None or len(self._head) < self._head_needed:
            self._keep_head(data)
        self._whole.update(data)
        self._size += n
        self._buffer += data
        if len(self._buffer) >= 4 * self.repo.max_chunk + (1 << 20):
            self._cut(final=False)
        if self.progress is not None:
            self.progress(n)
        return n

    def flush(self) -> None:
        pass

    def _keep_head(self, data: bytes | bytearray | memoryview) -> None:
        want = _MANIFEST_MAX + 8192 if self._head_needed is None else self._head_needed
        self._head += data[:max(0, want - len(self._head))]
        if self._head_needed is None:
            self._head_needed = _head_needed(self._head)
            if self._head_needed is not None and self._head_needed > _MANIFEST_MAX + 8192:
                raise RepositoryError("the stream backed up does not start with a manifest.json of a sane size; "
                                      "is it a chromaguard snapshot?")

    def _cut(self, final: bool) -> None:
        end = 0
        with memoryview(self._buffer) as data:  # chunks are hashed in place; only new ones are copied
            chunks = list(cut_chunks(data, min_size=self.repo.min_chunk, avg_size=self.repo.avg_chunk,
                                     max_size=self.repo.max_chunk))
            if not final and chunks:
                chunks = chunks[:-1]  # the last may be cut by the buffer's end: it starts the next round
            for chunk in chunks:
                # Released even when _add raises: a view left alive in the traceback would keep the
                # buffer from growing, and the tar's closing write would hide the real error.
                with data[chunk.offset:chunk.offset + chunk.length] as raw:
                    self._add(raw, self._cut_at + chunk.offset)
                end = chunk.offset + chunk.length
        del self._buffer[:end]
        self._cut_at += end

    def _add(self, raw: memoryview, offset: int) -> None:
        digest = hashlib.sha256(raw).hexdigest()
        where = self.known.get(digest)
        if where is None:
            where = ["", 0, 0, len(raw), None]  # pack, offset, length, base: filled in when its pack is made
            self.known[digest] = where  # a repeat later in this stream references it
            base = self.previous.base_for(offset, len(raw)) if self.previous is not None else None
            self._batch.append((where, bytes(raw), base))
            self._batch_bytes += len(raw)
            self.new_bytes += len(raw)
            if self._batch_bytes >= PACK_SIZE:
                self._send_batch()
        else:
            self.reused_chunks += 1
            if self.previous is not None:
                self.previous.shared(digest, offset)
        self._chunks.append([where, digest])

    def _send_batch(self) -> None:
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        self._wait_uploads(_UPLOADS_IN_FLIGHT)
        self._uploads.append(self._pool.submit(self._pack_and_upload, batch))

    def _pack_and_upload(self, batch: list[tuple[list[Any], bytes, Location | None]]) -> int:
        """In an upload thread (so compression runs on every core): compress (as a delta where that
        is small enough: ``delta.WORTH``), name the pack by its content, send it, read it back. Returns its size."""
        compress = zstandard.ZstdCompressor(level=1)  # vectors compress little at any level; 1 is the fastest
        bases = self._bases({base for _, _, base in batch if base is not None},
                            budget=2 * sum(len(raw) for _, raw, _ in batch))
        blobs = []
        offset = 0
        for where, raw, base in batch:
            blob = compress.compress(raw)
            base_raw = bases.get(base) if base is not None else None
            if base_raw is not None:
                patch = delta.compress(raw, base_raw)
                if len(patch) <= len(blob) * delta.WORTH:
                    blob, where[4] = patch, base
            if self.repo.sealer is not None:
                blob = self.repo.sealer.seal(blob, _CHUNK_AAD)
            where[1], where[2] = offset, len(blob)
            blobs.append(blob)
            offset += len(blob)
        data = b"".join(blobs)
        pack = hashlib.sha256(data).hexdigest()
        for where, _, _ in batch:
            where[0] = pack
        _put_checked(self.repo.store, self.repo.url, pack, data)
        return len(data)

    def _bases(self, wanted: set[Location], budget: int) -> dict[Location, bytes]:
        """The whole chunks deltas are taken against, read back from the repository (a few ranged
        reads per pack). One that cannot be read or is not what its name says is left out: the
        chunk is then stored whole, which costs bytes, never a backup. Bases are chunks the size
        of those they serve: past ``budget`` raw bytes (a forged manifest's huge "chunks") no more
        are read, so a batch never holds more than a few times its own size."""
        by_pack: dict[str, list[Location]] = {}
        for at in sorted(wanted):
            if at.raw_length > budget:
                continue
            budget -= at.raw_length
            by_pack.setdefault(at.pack, []).append(at)
        found: dict[Location, bytes] = {}
        for pack, wanted_here in by_pack.items():
            try:
                blobs = self.repo.ranged(pack, wanted_here)
            except StoreError as exc:
                log.warning("backup: the delta bases in pack %s… could not be read (%s); those chunks go up whole",
                            pack[:16], exc)
                continue
            for at, blob in blobs.items():
                try:
                    found[at] = _open_chunk("(base)", at, blob, self.repo.sealer)
                except CorruptBackup:  # the backups holding it are broken: worth a look now, not at a restore
                    log.warning("backup: the chunk %s… at %d of pack %s… is corrupt; the chunk changed from it goes "
                                "up whole; check the older backups (`chromaguard verify %s --all`)",
                                at.digest[:16], at.offset, pack[:16], self.repo.url)
        return found

    def _wait_uploads(self, below: int) -> None:
        while len(self._uploads) >= max(below, 1) or (below == 0 and self._uploads):
            self.stored_bytes += self._uploads.pop(0).result()

    def commit(self, extra: dict[str, Any] | None = None) -> BackupInfo:
        """Every pack up and checked, then the manifest: from now on the backup is listed."""
        try:
            self._cut(final=True)
            if self._batch:
                self._send_batch()
            self._wait_uploads(0)
        finally:
            self._closed = True
            self._pool.shutdown(wait=True)
        snapshot = _first_member_manifest(bytes(self._head))
        stream = [Stored(Location(pack, offset, length, raw_length, digest), base)
                  for (pack, offset, length, raw_length, base), digest in self._chunks]
        entries = _entries(stream)
        manifest = {
            "format": BACKUP_FORMAT, "id": self.id, "time": _id_time(self.id),
            "chromaguard_version": __version__, "snapshot": snapshot,
            "stream": {"size": self._size, "sha256": self._whole.hexdigest()},
            "stats": {"new_bytes": self.new_bytes, "stored_bytes": self.stored_bytes,
                      "chunks": len(stream), "reused_chunks": self.reused_chunks,
                      "delta_chunks": sum(c.base is not None for c in stream),
                      "seconds": round(time.monotonic() - self.started, 3), **(extra or {})},
            **entries,
        }
        self.repo._still_locked()
        present = self.repo.pack_sizes()
        for at in _locations(manifest):  # a prune may have run meanwhile (a lock taken over)
            if not _holds(present, at):
                raise RepositoryError(f"{self.repo.url}: pack {at.pack[:16]}… this backup builds on is gone "
                                      "(a prune ran meanwhile?); nothing was listed, back up again")
        if not self.repo.store.put(_manifest_key(self.id), _encode_manifest(manifest, self.repo.sealer), new=True):
            raise RepositoryError(f"{self.repo.url}: a backup named {self.id} exists already; retry")
        return _info(manifest, None)

    def abandon(self) -> None:
        """Stop without a manifest: what went up is garbage for the next prune."""
        self._closed = True
        for upload in self._uploads:
            upload.cancel()
        self._pool.shutdown(wait=True)


def _put_checked(store: Store, url: str, pack: str, data: bytes) -> None:
    """Upload a pack and read it back before any manifest names it: what is stored is what was sent."""
    key = _pack_key(pack)
    store.put(key, data)
    if hashlib.sha256(store.get(key)).hexdigest() != pack:
        raise RepositoryError(f"{url}: pack {pack[:16]}… read back different from what was sent; the store is "
                              "corrupting data, nothing was listed")


def _encode_manifest(manifest: dict[str, Any], sealer: Sealer | None) -> bytes:
    # Level 3: a manifest is mostly hex digests, which no level packs much; on one of 29,000 chunks
    # (4.5 MB of JSON) level 9 took 0.10 s for 2.32 MB, level 3 0.02 s for 2.29 MB.
    packed = zstandard.ZstdCompressor(level=3).compress(json.dumps(manifest, separators=(",", ":")).encode())
    return packed if sealer is None else sealer.seal(packed, manifest["id"].encode())


def _this_process() -> dict[str, Any]:
    """Who holds a lock: enough to tell, on the same machine, that its holder has gone."""
    try:
        pidns = os.readlink("/proc/self/ns/pid")  # two containers may share a host name, never this
    except OSError:
        pidns = ""
    return {"host": socket.gethostname(), "pid": os.getpid(), "boot": _read("/proc/sys/kernel/random/boot_id"),
            "pidns": pidns, "started": _start_ticks(os.getpid())}


def _read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> str:
    stat = _read(f"/proc/{pid}/stat")
    return stat.rsplit(")", 1)[-1].split()[19] if stat else ""  # field 22: start time since boot


def _number(found: dict[str, Any], key: str) -> float:
    value = found.get(key)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0.0


def _gone(holder: dict[str, Any]) -> bool:
    """A lock's holder ran on this machine, in this PID namespace, and that process is not running."""
    me = _this_process()
    if holder.get("host") != me["host"] or not me["boot"] or holder.get("pidns") != me["pidns"]:
        return False  # another machine or container (or no way to tell): only the clock can say
    if holder.get("boot") != me["boot"]:
        return True  # the machine restarted since
    pid = holder.get("pid")
    return not isinstance(pid, int) or _start_ticks(pid) != holder.get("started")


def _open_chunk(backup_id: str, at: Location, blob: bytes, sealer: Sealer | None, base: bytes | None = None) -> bytes:
    """A stored chunk's content, checked against its name; ``base``: the whole chunk it is a delta of."""
    try:
        if sealer is not None:
            blob = sealer.unseal(blob, _CHUNK_AAD)
        # Our frames say their size: one that says another (a bomb says gigabytes) is not opened.
        if zstandard.frame_content_size(blob) != at.raw_length:
            raise zstandard.ZstdError("the frame's size is not the chunk's")
        decompress = _thread_decompressor() if base is None else delta.decompressor(base)
        raw = decompress.decompress(blob, max_output_size=at.raw_length)
    except (zstandard.ZstdError, Unreadable):
        raw = b""
    if len(raw) != at.raw_length or hashlib.sha256(raw).hexdigest() != at.digest:
        raise CorruptBackup(f"backup {backup_id}: chunk {at.digest[:16]}… in pack {at.pack[:16]}… (offset {at.offset}) "
                            "is corrupt; restore another backup, or back up again")
    return raw


_decompressors = threading.local()


def _thread_decompressor() -> zstandard.ZstdDecompressor:
    """This thread's own: a decompressor is not thread-safe (upload threads read bases side by
    side), and making one per chunk (14 µs) was a third of a restore's time on its main thread."""
    made: zstandard.ZstdDecompressor | None = getattr(_decompressors, "one", None)
    if made is None:
        made = _decompressors.one = zstandard.ZstdDecompressor()
    return made


_Reading = concurrent.futures.Future[dict[Location, bytes]]  # one pack's part of a window, being read


def _windows(chunks: list[Stored]) -> Iterator[list[Stored]]:
    """The stream cut so that what a window holds (its chunks as stored, its bases as stored and
    opened) stays within ``_READ_WINDOW``, or is one chunk: a forged manifest's huge or many bases
    cannot make a restore hold more than two windows' worth."""
    window: list[Stored] = []
    bases: set[Location] = set()
    size = 0
    for chunk in chunks:
        cost = chunk.at.length
        if chunk.base is not None and chunk.base not in bases:
            cost += chunk.base.length + chunk.base.raw_length
        if window and size + cost > _READ_WINDOW:
            yield window
            window, bases, size = [], set(), 0
            cost = chunk.at.length + (0 if chunk.base is None else chunk.base.length + chunk.base.raw_length)
        window.append(chunk)
        if chunk.base is not None:
            bases.add(chunk.base)
        size += cost
    if window:
        yield window


def _stored(m: dict[str, Any]) -> list[Stored]:
    """A backup's stream, chunk by chunk: where each is, and the base of a delta."""
    packs, bases = m["packs"], m.get("bases", [])

    def at(entry: list[Any]) -> Location:
        return Location(packs[entry[0]], entry[1], entry[2], entry[3], entry[4])

    return [Stored(at(entry), at(bases[entry[5]]) if len(entry) == 6 else None) for entry in m["chunks"]]


def _base_locations(m: dict[str, Any]) -> list[Location]:
    packs = m["packs"]
    return [Location(packs[entry[0]], entry[1], entry[2], entry[3], entry[4]) for entry in m.get("bases", [])]


def _locations(m: dict[str, Any]) -> list[Location]:
    """Every blob a backup needs: its chunks, and the bases of its deltas."""
    return [chunk.at for chunk in _stored(m)] + _base_locations(m)


def _entries(stream: list[Stored]) -> dict[str, Any]:
    """The manifest's fields for a stream of stored chunks: packs named once, by index."""
    packs: list[str] = []
    index: dict[str, int] = {}
    bases: list[list[Any]] = []
    base_index: dict[Location, int] = {}

    def entry(at: Location) -> list[Any]:
        if at.pack not in index:
            index[at.pack] = len(packs)
            packs.append(at.pack)
        return [index[at.pack], at.offset, at.length, at.raw_length, at.digest]

    chunks = []
    for chunk in stream:
        found = entry(chunk.at)
        if chunk.base is not None:
            if chunk.base not in base_index:
                base_index[chunk.base] = len(bases)
                bases.append(entry(chunk.base))
            found.append(base_index[chunk.base])
        chunks.append(found)
    # Without deltas, the manifest is what chromaguard wrote before them, readable by it still.
    return {"version": MANIFEST_VERSION, "packs": packs, "chunks": chunks, "bases": bases} if bases else \
        {"version": 1, "packs": packs, "chunks": chunks}


def _head_needed(head: bytes | bytearray) -> int | None:
    """Where the tar stream's first member ends (past any pax or long-name headers before it);
    None until enough of it has come to tell."""
    offset = 0
    for _ in range(4):
        if len(head) < offset + 512:
            return None
        try:
            info = tarfile.TarInfo.frombuf(bytes(head[offset:offset + 512]), "utf-8", "surrogateescape")
        except tarfile.TarError:
            return len(head)  # not a tar header: what came is parsed (and refused) as it is
        end = offset + 512 + -(-info.size // 512) * 512
        if info.type not in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
            return end
        offset = end
    return offset


def _first_member_manifest(head: bytes) -> dict[str, Any]:
    """The snapshot's manifest.json, the tar stream's first member."""
    try:
        with tarfile.open(fileobj=io.BytesIO(head), mode="r|") as tar:
            member = tar.next()
            if member is None or member.name != "manifest.json":
                raise RepositoryError("the stream backed up is not a chromaguard snapshot (no manifest.json first)")
            fh = tar.extractfile(member)
            found = json.loads(fh.read() if fh else b"")
    except (tarfile.TarError, ValueError, EOFError) as exc:
        raise RepositoryError(f"the stream backed up is not a chromaguard snapshot ({exc})") from None
    if not isinstance(found, dict):
        raise RepositoryError("the stream backed up is not a chromaguard snapshot (its manifest is not an object)")
    return found


def _id_time(backup_id: str) -> float:
    return calendar.timegm(time.strptime(backup_id[:15], "%Y%m%dT%H%M%S")) + int(backup_id[16:19]) / 1000


def _record(raw: bytes) -> dict[str, Any] | None:
    """A verification record as JSON, None when it is not one."""
    with contextlib.suppress(ValueError):
        found = json.loads(raw)
        return found if isinstance(found, dict) else None
    return None


def _info(m: dict[str, Any], verified: dict[str, Any] | None) -> BackupInfo:
    snapshot = m.get("snapshot") or {}
    collections = snapshot.get("collections") or []
    return BackupInfo(m["id"], float(m["time"]), int(m["stream"]["size"]), int(m["stats"].get("new_bytes", 0)),
                      int(m["stats"].get("stored_bytes", 0)), len(collections),
                      sum(int(c.get("count", 0)) for c in collections), snapshot.get("write_hold_ms"), verified)


def _parse_config(url: str, raw: bytes) -> dict[str, Any]:
    try:
        config = json.loads(raw)
    except ValueError:
        raise RepositoryError(f"{url}: {CONFIG} is not valid JSON; is this a chromaguard repository?") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise RepositoryError(f"{url}: not a chromaguard backup repository ({CONFIG} has another format)")
    if not isinstance(config.get("version"), int) or config["version"] > VERSION:
        raise RepositoryError(f"{url}: the repository has format version {config.get('version')!r}, this "
                              f"chromaguard ({__version__}) reads up to {VERSION}; upgrade chromaguard")
    chunking = config.get("chunking")
    if not isinstance(chunking, dict) or not all(isinstance(chunking.get(k), int) and chunking[k] > 0
                                                 for k in ("min", "avg", "max")):
        raise RepositoryError(f"{url}: {CONFIG} has no valid chunking settings")
    return config


_MANIFEST_MAX = 512 << 20  # decompressed: what a manifest of a very large data dir could need
_CHUNK_MAX = 16 << 20  # raw: far above any chunker setting


def _stored_bound(raw_length: int) -> int:
    """The most a chunk of ``raw_length`` takes stored: zstd's bound for incompressible data, its
    frame and a seal's nonce and tag, with room to spare. A manifest naming more is forged or broken."""
    return raw_length + (raw_length >> 7) + 1024


def _bounded_decompress(blob: bytes, at_most: int) -> bytes:
    """zstd without trusting the frame's declared size (a bomb declares gigabytes)."""
    declared = zstandard.frame_content_size(blob)
    if declared > at_most:
        raise zstandard.ZstdError(f"declares {declared} bytes, more than {at_most}")
    reader = zstandard.ZstdDecompressor().stream_reader(blob, read_across_frames=False)
    out = bytearray()
    while piece := reader.read(1 << 20):  # a piece at a time: one read(at_most) reserves all of it
        out += piece
        if len(out) > at_most:
            raise zstandard.ZstdError(f"more than {at_most} bytes")
    return bytes(out)


def _parse_manifest(url: str, backup_id: str, raw: bytes) -> dict[str, Any]:
    def bad(what: str) -> CorruptBackup:
        return CorruptBackup(f"backup {backup_id}: its manifest in {url} {what}; restore another backup, and "
                             f"remove this one (`chromaguard backups forget {url} --id {backup_id}`)")

    try:
        m = json.loads(_bounded_decompress(raw, _MANIFEST_MAX))
    except (ValueError, zstandard.ZstdError, RecursionError):
        raise bad("is not valid (cut short, or not zstd JSON)") from None
    if not isinstance(m, dict) or m.get("format") != BACKUP_FORMAT:
        raise bad("is not a chromaguard backup manifest")
    if not isinstance(m.get("version"), int) or m["version"] > MANIFEST_VERSION:
        raise CorruptBackup(f"backup {backup_id} was written by a newer chromaguard ({m.get('chromaguard_version')}, "
                            f"format {m.get('version')!r}); this one ({__version__}) reads up to {MANIFEST_VERSION}: "
                            "upgrade chromaguard to restore it")
    packs, chunks, stream, stats = m.get("packs"), m.get("chunks"), m.get("stream"), m.get("stats")
    if m.get("id") != backup_id:
        raise bad("names another backup")
    if not isinstance(packs, list) or not isinstance(chunks, list) or not isinstance(stream, dict) or \
            not isinstance(stats, dict) or not _finite(m.get("time")):
        raise bad("lacks its packs, chunks, stream or time")
    if not (_count(stream.get("size")) and isinstance(stream.get("sha256"), str) and _PACK.match(stream["sha256"])):
        raise bad("has no valid stream size and checksum")
    if not all(_count(stats.get(k, 0)) for k in ("new_bytes", "stored_bytes")):
        raise bad("has malformed statistics")
    if not all(isinstance(p, str) and _PACK.match(p) for p in packs):
        raise bad("names a pack that is not a sha256")
    bases = m.get("bases", [])
    if not isinstance(bases, list) or (bases and m["version"] < MANIFEST_VERSION):
        raise bad("has a malformed list of delta bases")
    for entry in bases:
        if not _chunk_entry(entry, len(packs)):
            raise bad("has a malformed delta base entry")
    for entry in chunks:
        if not (_chunk_entry(entry, len(packs)) or (isinstance(entry, list) and len(entry) == 6
                                                    and _chunk_entry(entry[:5], len(packs))
                                                    and _count(entry[5]) and entry[5] < len(bases))):
            raise bad("has a malformed chunk entry")
    if sum(entry[3] for entry in chunks) != stream["size"]:
        raise bad("has chunks that do not add up to its stream")
    snapshot = m.get("snapshot")
    if not isinstance(snapshot, dict) or not isinstance(snapshot.get("collections", []), list) or \
            not all(isinstance(c, dict) and _count(c.get("count", 0)) for c in snapshot.get("collections", [])):
        raise bad("has a malformed snapshot description")
    hold = snapshot.get("write_hold_ms")
    if hold is not None and not _finite(hold):
        raise bad("has a malformed write-hold time")
    return m


def _chunk_entry(entry: Any, packs: int) -> bool:
    """[pack index, offset, length, raw length, sha256]"""
    return (isinstance(entry, list) and len(entry) == 5 and all(_count(v) for v in entry[:4])
            and entry[0] < packs and 0 < entry[3] <= _CHUNK_MAX and 0 < entry[2] <= _stored_bound(entry[3])
            and isinstance(entry[4], str) and _PACK.match(entry[4]) is not None)


def _holds(pack_sizes: dict[str, int], at: Location) -> bool:
    """Whether the stored chunk at ``at`` is there whole: its pack present and long enough."""
    return pack_sizes.get(at.pack, -1) >= at.offset + at.length


def _same_chunk(a: Stored, b: Stored) -> bool:
    """Two manifests' entries for one place in a pack agree: the same chunk, and for a delta a base
    with the same content. Its base's place may differ: a repack cut short moved the base of the
    manifests it had rewritten, and both places stay named, so either copy reads back."""
    if a.at != b.at or (a.base is None) != (b.base is None):
        return False
    return b.base is None or a.base is not None and (a.base.digest, a.base.raw_length) == (b.base.digest,
                                                                                         b.base.raw_length)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and \
        0 <= value < 1e11
