"""Consistent snapshots of an engine's data dir, and the manifest that proves them.

What the engine keeps on disk (checked on chromadb 1.5.9): ``chroma.sqlite3`` (catalogue,
metadata, documents, the write log, each segment's ``max_seq_id``) and one folder per
vector segment with the HNSW files. A write is applied to both before the engine answers
it, and nothing changes while no write is in flight. So: hold writes, wait for in-flight
ones, copy SQLite through its online backup API and the segment folders as they are,
re-check that no file changed during the copy (else copy again), release. That is all
the hold covers: its length grows with the bytes and files copied, not with the number of
collections or records.

The manifest is written after the hold, from the copy, by a scratch engine opened on it:
counts, dimensions and sampled record fingerprints are what ``verify`` and ``restore`` will
see, whatever the live data does meanwhile.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import shutil
import sqlite3
import stat
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, Protocol

from .. import __version__
from ..engine import catalog
from ..http11.client import UpstreamError, UpstreamPool
from ..proxy.writegate import WriteGate

FORMAT = "chromaguard-backup"
FORMAT_VERSION = 1
SQLITE = catalog.SQLITE_NAME
CLOCK_NAME = ".chromaguard-clock"  # touched to read the data dir's filesystem clock (see mirror.py)
JOURNALS = (f"{SQLITE}-journal", f"{SQLITE}-wal")
_SKIP = {".chromaguard.lock", ".chromaguard-write-test", CLOCK_NAME, *JOURNALS, f"{SQLITE}-shm"}
UPGRADE_BACKUPS = ".chromaguard-upgrade-backups"  # archives taken before an engine upgrade, in a mounted data dir
SAMPLE_SIZE = 5


class SnapshotError(Exception):
    """A snapshot could not be taken consistently; the message says why."""


@dataclass
class Snapshot:
    id: str
    root: Path  # holds data/ (the copy) and manifest.json
    manifest: dict[str, Any]
    created: float = field(default_factory=time.time)
    release: Callable[[], None] | None = None  # instead of deleting root (a mirror kept for the next one)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def remove(self) -> None:
        if self.release is not None:
            self.release()
        else:
            shutil.rmtree(self.root, ignore_errors=True)


class Staging(Protocol):
    """Where an online snapshot's copy is made: a fresh folder, or a mirror kept between snapshots."""

    root: Path  # the copy goes to root/data

    def refresh(self) -> None:
        """Copy what can be copied before the hold (in a thread, writes flowing)."""

    def copy_held(self) -> int:
        """Make root/data equal the data dir (in a thread, writes held); returns the attempts it took."""

    def copied(self) -> dict[str, int]:
        """What ``copy_held`` copied: files and bytes."""

    def release(self) -> None:
        """The snapshot is done with (or failed): delete, or keep for the next one."""


class StagingSource(Protocol):
    def checkout(self) -> Staging | None:
        """A staging to use now, or None when it is in use (a fresh folder is used then)."""


def data_files(data_dir: Path) -> dict[str, os.stat_result]:
    """Every file the engine keeps, by path relative to the data dir (``os.walk``: a tenth of
    ``rglob``'s time on thousands of segment files, and this runs twice under the hold)."""
    found = {}
    root = str(data_dir)
    cut = len(root) + 1
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != UPGRADE_BACKUPS)
        for name in sorted(filenames):
            if name in _SKIP:
                continue
            full = os.path.join(dirpath, name)
            try:
                st = os.stat(full)
            except FileNotFoundError:  # gone meanwhile: the check after the copy sees the change
                continue
            if stat.S_ISREG(st.st_mode):
                found[full[cut:].replace(os.sep, "/")] = st
    return found


def _stat_all(data_dir: Path) -> dict[str, tuple[int, int]]:
    """Size and mtime of every file the engine keeps."""
    return {rel: (st.st_size, st.st_mtime_ns) for rel, st in data_files(data_dir).items()}


def estimated_size(data_dir: Path) -> int:
    """Bytes a snapshot of ``data_dir`` will take (SQLite's journal files included: the backup
    API folds a WAL into the copy)."""
    total = sum(size for size, _ in _stat_all(data_dir).values())
    for name in (f"{SQLITE}-wal", f"{SQLITE}-journal"):
        try:
            total += (data_dir / name).stat().st_size
        except OSError:
            pass
    return total


def copy_file(src: str, dst: str, size: int) -> None:
    """``size`` bytes of ``src`` into a new ``dst``: two opens and a sendfile. ``shutil.copyfile``
    spends six stats and pathlib work per file on top, which under the hold, on a data dir with
    thousands of segment files, was half the copy's time. A size changed meanwhile is caught by
    the check after the copy."""
    fin = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            offset = 0
            while offset < size:
                try:
                    sent = os.sendfile(fout, fin, offset, size - offset)
                except OSError as exc:
                    if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                        raise
                    os.lseek(fin, offset, os.SEEK_SET)
                    sent = os.write(fout, os.read(fin, min(size - offset, 1 << 20)))
                if sent == 0:  # shorter than it was a moment ago
                    break
                offset += sent
        finally:
            os.close(fout)
    finally:
        os.close(fin)


def copy_sqlite(data_dir: Path, dest: Path) -> None:
    """The engine's SQLite file through SQLite's backup API: consistent whatever its journal holds."""
    source = sqlite3.connect(f"{(data_dir / SQLITE).resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    target = sqlite3.connect(dest / SQLITE)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()


def copy_data_dir(data_dir: Path, dest: Path) -> bool:
    """Copy the engine's files; False if any changed while copying (the copy is then unusable)."""
    before = _stat_all(data_dir)
    dest.mkdir(parents=True, exist_ok=True)
    if SQLITE in before:
        copy_sqlite(data_dir, dest)
    source_root, dest_root = str(data_dir), str(dest)
    made: set[str] = set()
    for rel, (size, _) in before.items():
        if rel == SQLITE:
            continue
        parent = rel.rpartition("/")[0]
        if parent and parent not in made:
            os.makedirs(os.path.join(dest_root, parent), exist_ok=True)
            made.add(parent)
        copy_file(os.path.join(source_root, rel), os.path.join(dest_root, rel), size)
    return _stat_all(data_dir) == before


def copy_consistent(data_dir: Path, dest: Path, attempts: int = 3) -> int:
    """``copy_data_dir`` until a copy saw no change; returns how many it took."""
    for attempt in range(1, attempts + 1):
        if copy_data_dir(data_dir, dest):
            return attempt
        shutil.rmtree(dest, ignore_errors=True)
    raise SnapshotError("the engine kept changing its files while writes were held")


def sha256_file(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
    return digest.hexdigest()


def file_entries(data: Path) -> list[dict[str, Any]]:
    return [{"path": f"data/{p.relative_to(data).as_posix()}", "size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(data.rglob("*")) if p.is_file()]


def record_digest(record_id: str, embedding: Any, document: Any, metadata: Any) -> str:
    """A fingerprint of one record as the engine returns it, to compare a restore with the original."""
    canonical = json.dumps([record_id, embedding, document, metadata], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


async def describe_collections(pool: UpstreamPool, data: Path, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Per collection: count, dimension and a fingerprinted sample, read through the engine's API,
    several collections at a time (``verify`` on a restored copy, an offline backup on a scratch
    engine: nothing else writes there; an online snapshot uses ``describe_copy``)."""
    slots = asyncio.Semaphore(8)

    async def one(entry: catalog.CollectionEntry) -> dict[str, Any]:
        async with slots:
            return await _describe(pool, entry, timeout)

    return list(await asyncio.gather(*(one(entry) for entry in catalog.collections(data))))


async def _describe(pool: UpstreamPool, entry: catalog.CollectionEntry, timeout: float) -> dict[str, Any]:
    base = f"/api/v2/tenants/{entry.tenant}/databases/{entry.database}/collections/{entry.id}"
    count_response = await pool.request("GET", f"{base}/count".encode(), timeout=timeout)
    count_body = await count_response.read()
    if count_response.status != 200:
        raise SnapshotError(f"counting {entry.name} answered {count_response.status}: {count_body[:200]!r}")
    body = json.dumps({"limit": SAMPLE_SIZE, "include": ["embeddings", "documents", "metadatas"]}).encode()
    sample_response = await pool.request("POST", f"{base}/get".encode(),
                                         [(b"content-type", b"application/json")], body, timeout=timeout)
    got = json.loads(await sample_response.read())
    sample = [{"id": rid, "sha256": record_digest(rid, emb, doc, meta)}
              for rid, emb, doc, meta in zip(got["ids"], got.get("embeddings") or [None] * len(got["ids"]),
                                             got.get("documents") or [None] * len(got["ids"]),
                                             got.get("metadatas") or [None] * len(got["ids"]))]
    return {"tenant": entry.tenant, "database": entry.database, "name": entry.name, "id": entry.id,
            "dimension": entry.dimension, "count": int(json.loads(count_body)), "sample": sample}


def _digests(got: dict[str, Any]) -> dict[str, str]:
    """``record_digest`` of every record in a ``/get`` answer, by id."""
    ids = got.get("ids") or []
    n = len(ids)
    return {rid: record_digest(rid, emb, doc, meta)
            for rid, emb, doc, meta in zip(ids, got.get("embeddings") or [None] * n,
                                           got.get("documents") or [None] * n, got.get("metadatas") or [None] * n)}


async def sample_digests(pool: UpstreamPool, collection: dict[str, Any], timeout: float = 30.0) -> dict[str, str]:
    """The same fingerprints, read from another engine (a restore) for the manifest's sample ids."""
    ids = [s["id"] for s in collection["sample"]]
    if not ids:
        return {}
    base = f"/api/v2/tenants/{collection['tenant']}/databases/{collection['database']}/collections/{collection['id']}"
    body = json.dumps({"ids": ids, "include": ["embeddings", "documents", "metadatas"]}).encode()
    response = await pool.request("POST", f"{base}/get".encode(), [(b"content-type", b"application/json")], body,
                                  timeout=timeout)
    return _digests(json.loads(await response.read()))


async def describe_copy(copy: Path) -> list[dict[str, Any]]:
    """Counts, dimensions and sampled fingerprints of the copy, read by a scratch engine opened
    on it: what ``verify`` and ``restore`` will see, whatever happened to the live data since
    (the live engine can even answer a sampled record stale under concurrent writes), and a
    write the engine had logged but not yet applied is counted as the restored engine will."""
    from ..engine.scratch import engine_on

    async with engine_on(copy) as scratch:
        return await describe_collections(scratch, copy)


async def _finish_in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn`` in a thread, awaited to its end even if the caller is cancelled meanwhile: a copy
    cannot be stopped half-way, and the gate must not open (nor the copy be removed) under it."""
    future = asyncio.get_running_loop().run_in_executor(None, fn, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            try:
                await asyncio.wait({future})
            except asyncio.CancelledError:
                pass
        raise


def new_manifest(collections: list[dict[str, Any]], files: list[dict[str, Any]], held_ms: float | None,
                 mode: str) -> dict[str, Any]:
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "mode": mode,
        "chromaguard_version": __version__, "chromadb_version": version("chromadb"),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "write_hold_ms": None if held_ms is None else round(held_ms, 1),
        "collections": collections, "files": files,
    }


class FreshStaging:
    """A new folder per snapshot, the whole data dir copied under the hold: with no mirror, or
    while the mirror serves another snapshot."""

    def __init__(self, data_dir: Path, staging_root: str | None) -> None:
        self.data_dir = data_dir
        self.root = Path(tempfile.mkdtemp(prefix="chromaguard-snapshot-", dir=staging_root))

    def refresh(self) -> None:
        pass

    def copy_held(self) -> int:
        return copy_consistent(self.data_dir, self.root / "data")

    def copied(self) -> dict[str, int]:
        files = _stat_all(self.root / "data")
        return {"files": len(files), "bytes": sum(size for size, _ in files.values())}

    def release(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


async def take_online(gate: WriteGate, data_dir: Path, *, staging_root: str | None = None,
                      hold_timeout: float = 30.0, mirror: StagingSource | None = None) -> Snapshot:
    """Snapshot a running engine: writes are held only while in-flight ones finish and the files
    are copied (with a mirror: only those changed since it was refreshed a moment before);
    counts, samples and checksums come after, with writes flowing."""
    staging = (mirror.checkout() if mirror is not None else None) or FreshStaging(data_dir, staging_root)
    snapshot = Snapshot(uuid.uuid4().hex, staging.root, {}, release=staging.release)
    try:
        refresh_started = time.monotonic()
        await _finish_in_thread(staging.refresh)
        asked = time.monotonic()
        hold = await gate.hold(hold_timeout)  # lifts itself if it fails or is cancelled
        held_from, drained = time.time(), time.monotonic()
        try:
            attempts = await _finish_in_thread(staging.copy_held)
        finally:
            copied = time.monotonic()
            held_ms = hold.release() * 1000
            held_until = time.time()
        started = time.monotonic()
        collections = await describe_copy(snapshot.data)
        described = time.monotonic()
        files = await asyncio.to_thread(file_entries, snapshot.data)
        snapshot.manifest = new_manifest(collections, files, held_ms, "online")
        snapshot.manifest["write_hold"] = {"from": held_from, "until": held_until, "copy_attempts": attempts,
                                           "waiting_for_writes_ms": round((drained - asked) * 1000, 1),
                                           "copy_ms": round((copied - drained) * 1000, 1),
                                           "copied": staging.copied(), "mirror": not isinstance(staging, FreshStaging)}
        snapshot.manifest["before_hold_ms"] = {"refresh": round((asked - refresh_started) * 1000, 1)}
        snapshot.manifest["after_hold_ms"] = {"describe": round((described - started) * 1000, 1),
                                              "checksums": round((time.monotonic() - described) * 1000, 1)}
        (staging.root / "manifest.json").write_text(json.dumps(snapshot.manifest, indent=2))
        return snapshot
    except UpstreamError as exc:
        snapshot.remove()
        raise SnapshotError(f"the scratch engine did not answer while the copy was described: {exc}") from None
    except BaseException:
        snapshot.remove()
        raise


async def take_offline(data_dir: Path, *, staging_root: str | None = None, lock_held: bool = False) -> Snapshot:
    """Snapshot a data dir no service runs on (its lock proves it: taken here, or by the caller
    with ``lock_held``), counted by a scratch engine."""
    from ..engine.datalock import DataDirLock

    if not (data_dir / SQLITE).is_file():
        raise SnapshotError(f"{data_dir} holds no Chroma data ({SQLITE} is missing)")
    root = Path(tempfile.mkdtemp(prefix="chromaguard-snapshot-", dir=staging_root))
    snapshot = Snapshot(uuid.uuid4().hex, root, {})
    try:
        lock = None if lock_held else DataDirLock(data_dir)
        if lock is not None:
            lock.acquire()
        try:
            if not await _finish_in_thread(copy_data_dir, data_dir, snapshot.data):
                raise SnapshotError(f"files in {data_dir} changed during the copy: is another program writing there?")
        finally:
            if lock is not None:
                lock.release()
        collections = await describe_copy(snapshot.data)
        files = await asyncio.to_thread(file_entries, snapshot.data)
        snapshot.manifest = new_manifest(collections, files, None, "offline")
        (root / "manifest.json").write_text(json.dumps(snapshot.manifest, indent=2))
        return snapshot
    except BaseException:
        snapshot.remove()
        raise
