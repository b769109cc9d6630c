"""Consistent snapshots of an engine's data dir, and the manifest that proves them.

What the engine keeps on disk (checked on chromadb 1.5.9): ``chroma.sqlite3`` (catalogue,
metadata, documents, the write log, each segment's ``max_seq_id``) and one folder per
vector segment with the HNSW files. A write is applied to both before the engine answers
it, and nothing changes while no write is in flight. So: hold writes, wait for in-flight
ones, copy SQLite through its online backup API and the segment folders as they are,
re-check that no file changed during the copy (else copy again), release.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import sqlite3
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable

from . import __version__, catalog
from .upstream import UpstreamError, UpstreamPool
from .writegate import WriteGate

FORMAT = "chromaguard-backup"
FORMAT_VERSION = 1
SQLITE = catalog.SQLITE_NAME
_SKIP = {".chromaguard.lock", ".chromaguard-write-test", f"{SQLITE}-journal", f"{SQLITE}-wal", f"{SQLITE}-shm"}
SAMPLE_SIZE = 5


class SnapshotError(Exception):
    """A snapshot could not be taken consistently; the message says why."""


@dataclass
class Snapshot:
    id: str
    root: Path  # holds data/ (the copy) and manifest.json
    manifest: dict[str, Any]
    created: float = field(default_factory=time.time)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _stat_all(data_dir: Path) -> dict[str, tuple[int, int]]:
    found = {}
    for path in sorted(data_dir.rglob("*")):
        if path.is_file() and path.name not in _SKIP:
            st = path.stat()
            found[path.relative_to(data_dir).as_posix()] = (st.st_size, st.st_mtime_ns)
    return found


def copy_data_dir(data_dir: Path, dest: Path) -> bool:
    """Copy the engine's files; False if any changed while copying (the copy is then unusable)."""
    before = _stat_all(data_dir)
    dest.mkdir(parents=True, exist_ok=True)
    if SQLITE in before:
        source = sqlite3.connect(f"{(data_dir / SQLITE).resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        target = sqlite3.connect(dest / SQLITE)
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()
    for rel in before:
        if rel == SQLITE:
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(data_dir / rel, dest / rel)
    return _stat_all(data_dir) == before


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
    """Per collection: count, dimension and a fingerprinted sample, read through the engine's API
    (several collections at a time: this runs while writes are held)."""
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


async def sample_digests(pool: UpstreamPool, collection: dict[str, Any], timeout: float = 30.0) -> dict[str, str]:
    """The same fingerprints, read from another engine (a restore) for the manifest's sample ids."""
    ids = [s["id"] for s in collection["sample"]]
    if not ids:
        return {}
    base = f"/api/v2/tenants/{collection['tenant']}/databases/{collection['database']}/collections/{collection['id']}"
    body = json.dumps({"ids": ids, "include": ["embeddings", "documents", "metadatas"]}).encode()
    response = await pool.request("POST", f"{base}/get".encode(), [(b"content-type", b"application/json")], body,
                                  timeout=timeout)
    got = json.loads(await response.read())
    n = len(got.get("ids", []))
    return {rid: record_digest(rid, emb, doc, meta)
            for rid, emb, doc, meta in zip(got.get("ids", []), got.get("embeddings") or [None] * n,
                                           got.get("documents") or [None] * n, got.get("metadatas") or [None] * n)}


def new_manifest(collections: list[dict[str, Any]], files: list[dict[str, Any]], held_ms: float | None,
                 mode: str) -> dict[str, Any]:
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "mode": mode,
        "chromaguard_version": __version__, "chromadb_version": version("chromadb"),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "write_hold_ms": None if held_ms is None else round(held_ms, 1),
        "collections": collections, "files": files,
    }


async def take_online(gate: WriteGate, data_dir: Path, pool: UpstreamPool, *, staging_root: str | None = None,
                      hold_timeout: float = 30.0) -> Snapshot:
    """Snapshot a running engine: writes are held only while files are copied and counted."""
    root = Path(tempfile.mkdtemp(prefix="chromaguard-snapshot-", dir=staging_root))
    snapshot = Snapshot(uuid.uuid4().hex, root, {})
    try:
        await gate.hold(hold_timeout)
        held_from = time.time()
        try:
            for _ in range(3):
                if await asyncio.to_thread(copy_data_dir, data_dir, snapshot.data):
                    break
                shutil.rmtree(snapshot.data, ignore_errors=True)
            else:
                raise SnapshotError("the engine kept changing its files while writes were held")
            collections = await describe_collections(pool, snapshot.data)
        finally:
            held_ms = gate.release() * 1000
            held_until = time.time()
        files = await asyncio.to_thread(file_entries, snapshot.data)
        snapshot.manifest = new_manifest(collections, files, held_ms, "online")
        snapshot.manifest["write_hold"] = {"from": held_from, "until": held_until}
        (root / "manifest.json").write_text(json.dumps(snapshot.manifest, indent=2))
        return snapshot
    except UpstreamError as exc:
        snapshot.remove()
        raise SnapshotError(f"the engine did not answer while the snapshot was taken: {exc}") from None
    except BaseException:
        snapshot.remove()
        raise


async def take_offline(data_dir: Path, *, staging_root: str | None = None) -> Snapshot:
    """Snapshot a data dir no service runs on (its lock proves it), counted by a scratch engine."""
    from .datalock import DataDirLock
    from .scratchengine import engine_on

    if not (data_dir / SQLITE).is_file():
        raise SnapshotError(f"{data_dir} holds no Chroma data ({SQLITE} is missing)")
    root = Path(tempfile.mkdtemp(prefix="chromaguard-snapshot-", dir=staging_root))
    snapshot = Snapshot(uuid.uuid4().hex, root, {})
    try:
        lock = DataDirLock(data_dir)
        lock.acquire()
        try:
            if not await asyncio.to_thread(copy_data_dir, data_dir, snapshot.data):
                raise SnapshotError(f"files in {data_dir} changed during the copy: is another program writing there?")
        finally:
            lock.release()
        async with engine_on(snapshot.data) as pool:
            collections = await describe_collections(pool, snapshot.data)
        files = await asyncio.to_thread(file_entries, snapshot.data)
        snapshot.manifest = new_manifest(collections, files, None, "offline")
        (root / "manifest.json").write_text(json.dumps(snapshot.manifest, indent=2))
        return snapshot
    except BaseException:
        snapshot.remove()
        raise
