"""Backup archives: a tar (gzip on disk, plain in a repository) whose first member is ``manifest.json``.

The manifest lists every file with its size and sha256, so a flipped byte or a cut-off
archive is caught before anything is restored. Archives are written to ``*.partial`` and
renamed only once they have been read back and every checksum matched.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import tarfile
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, Any, BinaryIO

from .snapshot import FORMAT, SQLITE, Snapshot

SUFFIX = ".tar.gz"
PREFIX = "chroma-backup-"


class ArchiveError(Exception):
    """The archive is unusable; the message says precisely what is wrong."""


def write_tar(snapshot: Snapshot, out: BinaryIO) -> None:
    """The snapshot as an uncompressed tar stream: manifest first, then the data files."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        manifest = json.dumps(snapshot.manifest, indent=2).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        info.mtime = int(snapshot.created)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(manifest))
        for entry in snapshot.manifest["files"]:
            tar.add(snapshot.root / entry["path"], arcname=entry["path"], recursive=False)


async def stream_tar(snapshot: Snapshot, chunk: int = 1 << 20) -> AsyncIterator[bytes]:
    """``write_tar`` in a thread, read here as it is produced (no second copy on disk)."""
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            with os.fdopen(write_fd, "wb", buffering=chunk) as out:
                write_tar(snapshot, out)
        except BaseException as exc:  # noqa: BLE001 - reported to the reader below
            failure.append(exc)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            data = await asyncio.to_thread(os.read, read_fd, chunk)
            if not data:
                break
            yield data
    finally:
        os.close(read_fd)
        await asyncio.to_thread(thread.join)
    if failure:
        raise ArchiveError(f"writing the archive failed: {failure[0]}")


def _members(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, mode="r|*")  # gzip on disk, plain from a repository
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise ArchiveError(f"{archive}: not a readable backup archive ({exc})") from None


def check(archive: Path, on_bytes: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Read the whole archive, checking every file against the manifest; returns the manifest."""
    if not archive.is_file():
        raise ArchiveError(f"{archive}: no such file")
    manifest: dict[str, Any] | None = None
    seen: set[str] = set()
    try:
        with _members(archive) as tar:
            for member in tar:
                if manifest is None:
                    if member.name != "manifest.json":
                        raise ArchiveError(f"{archive}: the first member is {member.name!r}, not manifest.json")
                    manifest = _load_manifest(archive, tar.extractfile(member))
                    expected = {f["path"]: f for f in manifest["files"]}
                    continue
                entry = expected.get(member.name)
                if entry is None:
                    raise ArchiveError(f"{archive}: {member.name} is not listed in the manifest")
                if not member.isfile() or member.size != entry["size"]:
                    raise ArchiveError(f"{archive}: {member.name} is {member.size} bytes, manifest says "
                                       f"{entry['size']}")
                digest = hashlib.sha256()
                fh = tar.extractfile(member)
                assert fh is not None
                while block := fh.read(1 << 20):
                    digest.update(block)
                    if on_bytes is not None:
                        on_bytes(len(block))
                if digest.hexdigest() != entry["sha256"]:
                    raise ArchiveError(f"{archive}: {member.name} is corrupt (sha256 {digest.hexdigest()[:12]}…, "
                                       f"manifest says {entry['sha256'][:12]}…)")
                seen.add(member.name)
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile, zlib_error()) as exc:
        raise ArchiveError(f"{archive}: truncated or corrupt ({exc})") from None
    if manifest is None:
        raise ArchiveError(f"{archive}: empty archive")
    missing = sorted(set(expected) - seen)
    if missing:
        raise ArchiveError(f"{archive}: {len(missing)} file(s) missing, first {missing[0]}")
    return manifest


def zlib_error() -> type[Exception]:
    import zlib

    return zlib.error


def _load_manifest(archive: Path, fh: IO[bytes] | None) -> dict[str, Any]:
    try:
        manifest = json.loads(fh.read() if fh else b"")
    except ValueError:
        raise ArchiveError(f"{archive}: manifest.json is not valid JSON") from None
    if not isinstance(manifest, dict):
        raise ArchiveError(f"{archive}: manifest.json is not an object")
    if manifest.get("format") != FORMAT:
        raise ArchiveError(f"{archive}: not a chromaguard backup (manifest format {manifest.get('format')!r})")
    files, collections = manifest.get("files"), manifest.get("collections")
    if not isinstance(files, list) or not isinstance(collections, list):
        raise ArchiveError(f"{archive}: the manifest lacks its file or collection list")
    if not any(isinstance(f, dict) and f.get("path") == f"data/{SQLITE}" for f in files):
        raise ArchiveError(f"{archive}: the backup holds no data/{SQLITE}: nothing to restore")
    return manifest


def extract(archive: Path, dest: Path) -> None:
    """Unpack the data files into ``dest`` (which must exist); paths cannot escape it."""
    with _members(archive) as tar:
        for member in tar:
            if member.name == "manifest.json":
                continue
            if not member.name.startswith("data/") or not member.isfile():
                raise ArchiveError(f"{archive}: unexpected member {member.name!r}")
            member.name = member.name[len("data/"):]
            try:
                tar.extract(member, dest, filter="data")
            except tarfile.FilterError as exc:
                raise ArchiveError(f"{archive}: refusing member {member.name!r}: {exc}") from None


def read_manifest(archive: Path) -> dict[str, Any]:
    with _members(archive) as tar:
        member = tar.next()
        if member is None or member.name != "manifest.json":
            raise ArchiveError(f"{archive}: the first member is not manifest.json")
        return _load_manifest(archive, tar.extractfile(member))
