"""Backup archives: a tar (gzip on disk, plain in a repository) whose first member is ``manifest.json``.

The manifest lists every file with its size and sha256, so a flipped byte or a cut-off
archive is caught before anything is restored. Archives are written to ``*.partial`` and
renamed only once they have been read back and every checksum matched.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO

from ..errors import ChromaguardError
from .snapshot import FORMAT, SQLITE, Snapshot

SUFFIX = ".tar.gz"
_READ_SIZE = 1 << 20
PREFIX = "chroma-backup-"


class ArchiveError(Exception):
    """The archive is unusable; the message says precisely what is wrong."""


class CannotUnpack(ChromaguardError):
    """A sound archive cannot be written where it is unpacked (a full disk, a quota, a read-only
    or forbidden folder): the place is at fault, not the backup, which is not to be noted as bad."""

    exit_code = 1


# A write failing for these means the member cannot be a file there (a name given twice in two
# spellings, a file where a folder is, a name too long): the archive's fault. Any other errno is the
# place's or the process's (a full disk, a quota, a read-only or forbidden folder, no file handles left).
_ARCHIVE_ERRORS = {errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP, errno.EILSEQ,
                   errno.EINVAL}


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


def _members(source: Path | IO[bytes], label: str) -> tarfile.TarFile:
    try:
        # A MiB at a time: tar's stream reader otherwise reads 10 KiB a call (a third of an unpack's time).
        if isinstance(source, Path):
            return tarfile.open(source, mode="r|*", bufsize=_READ_SIZE)  # gzip on disk, plain from a repository
        return tarfile.open(fileobj=source, mode="r|", bufsize=_READ_SIZE)
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise ArchiveError(f"{label}: not a readable backup archive ({exc})") from None


def check(archive: Path, on_bytes: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Read the whole archive, checking every file against the manifest; returns the manifest."""
    if not archive.is_file():
        raise ArchiveError(f"{archive}: no such file")
    return _read_checked(archive, str(archive), None, on_bytes)


def unpack(source: Path | IO[bytes], dest: Path, on_bytes: Callable[[int], None] | None = None,
           label: str | None = None) -> dict[str, Any]:
    """Unpack the data files into ``dest`` (which must exist), each checked against the manifest
    as it is written, in one read of the archive; paths cannot escape ``dest``. Returns the
    manifest. On an error ``dest`` holds part of the data: the caller removes it."""
    if isinstance(source, Path) and not source.is_file():
        raise ArchiveError(f"{source}: no such file")
    return _read_checked(source, label or str(source), dest, on_bytes)


def _read_checked(source: Path | IO[bytes], label: str, dest: Path | None,
                  on_bytes: Callable[[int], None] | None) -> dict[str, Any]:
    """The one reading of an archive: its manifest first, then each member listed there, of the
    listed size and sha256, once; with ``dest``, each also written there."""
    manifest: dict[str, Any] | None = None
    seen: set[str] = set()
    try:
        with _members(source, label) as tar:
            for member in tar:
                if manifest is None:
                    if member.name != "manifest.json":
                        raise ArchiveError(f"{label}: the first member is {member.name!r}, not manifest.json")
                    manifest = _load_manifest(label, tar.extractfile(member))
                    expected = {f["path"]: f for f in manifest["files"]}
                    if dest is not None:
                        _room_for(label, sum(f["size"] for f in expected.values()), dest)
                    continue
                entry = expected.get(member.name)
                if entry is None:
                    raise ArchiveError(f"{label}: {member.name} is not listed in the manifest")
                if member.name in seen:
                    raise ArchiveError(f"{label}: {member.name} is in the archive twice")
                if not member.isfile():
                    raise ArchiveError(f"{label}: {member.name} is not a regular file (tar type {member.type!r})")
                if member.size != entry["size"]:
                    raise ArchiveError(f"{label}: {member.name} is {member.size} bytes, manifest says "
                                       f"{entry['size']}")
                fh = tar.extractfile(member)
                assert fh is not None
                digest = hashlib.sha256()
                with _writing(label, member, dest) as out:
                    while block := fh.read(_READ_SIZE):
                        digest.update(block)
                        out(block)
                        if on_bytes is not None:
                            on_bytes(len(block))
                if digest.hexdigest() != entry["sha256"]:
                    raise ArchiveError(f"{label}: {member.name} is corrupt (sha256 {digest.hexdigest()[:12]}…, "
                                       f"manifest says {entry['sha256'][:12]}…)")
                seen.add(member.name)
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile, zlib_error()) as exc:
        raise ArchiveError(f"{label}: truncated or corrupt ({exc})") from None
    if manifest is None:
        raise ArchiveError(f"{label}: empty archive")
    missing = sorted(set(expected) - seen)
    if missing:
        raise ArchiveError(f"{label}: {len(missing)} file(s) missing, first {missing[0]}")
    return manifest


def _room_for(label: str, size: int, dest: Path) -> None:
    """Refused before the first byte is written when the data cannot fit, rather than at the end."""
    free = shutil.disk_usage(dest).free
    if size > free:
        raise CannotUnpack(f"{label} unpacks to {size / 1e6:.0f} MB and {dest.parent} has {free / 1e6:.0f} MB free; "
                           "free space there (a test restore unpacks in the staging folder or TMPDIR, a restore "
                           "beside the data dir), then retry")


@contextlib.contextmanager
def _writing(label: str, member: tarfile.TarInfo, dest: Path | None) -> Iterator[Callable[[bytes], object]]:
    """Where a data member's bytes go: nowhere (a check), or a new file in ``dest`` where tar's
    ``data`` filter allows it (no way out of ``dest``, no special bits), never over another."""
    if dest is None:
        yield len
        return
    if not member.name.startswith("data/"):
        raise ArchiveError(f"{label}: unexpected member {member.name!r}")
    inside = member.replace(name=member.name[len("data/"):], deep=False)
    try:
        safe = tarfile.data_filter(inside, str(dest))
    except tarfile.FilterError as exc:
        raise ArchiveError(f"{label}: refusing member {inside.name!r}: {exc}") from None
    path = os.path.join(dest, safe.name)

    def unwritable(exc: OSError) -> Exception:
        if exc.errno not in _ARCHIVE_ERRORS:
            return CannotUnpack(f"cannot write {member.name} of {label} into {dest.parent} ({exc.strerror}); free "
                                "space or fix the permissions there (a test restore unpacks in the staging folder or "
                                "TMPDIR, a restore beside the data dir), then retry")
        return ArchiveError(f"{label}: {member.name} cannot be unpacked ({exc.strerror}): the backup is malformed")

    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        out = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                                0o644 if safe.mode is None else safe.mode), "wb")
    except OSError as exc:
        raise unwritable(exc) from None

    def write(block: bytes) -> object:
        try:
            return out.write(block)
        except OSError as exc:
            raise unwritable(exc) from None

    try:
        yield write
    except BaseException:
        with contextlib.suppress(OSError):
            out.close()
        raise
    try:
        out.close()
    except OSError as exc:
        raise unwritable(exc) from None


def zlib_error() -> type[Exception]:
    import zlib

    return zlib.error


def _load_manifest(label: str, fh: IO[bytes] | None) -> dict[str, Any]:
    try:
        manifest = json.loads(fh.read() if fh else b"")
    except ValueError:
        raise ArchiveError(f"{label}: manifest.json is not valid JSON") from None
    if not isinstance(manifest, dict):
        raise ArchiveError(f"{label}: manifest.json is not an object")
    if manifest.get("format") != FORMAT:
        raise ArchiveError(f"{label}: not a chromaguard backup (manifest format {manifest.get('format')!r})")
    files, collections = manifest.get("files"), manifest.get("collections")
    if not isinstance(files, list) or not isinstance(collections, list):
        raise ArchiveError(f"{label}: the manifest lacks its file or collection list")
    for entry in files:
        if not _file_entry(entry):
            raise ArchiveError(f"{label}: the manifest lists a file without a path, a size and a sha256: "
                               f"{str(entry)[:120]}")
    if not any(f["path"] == f"data/{SQLITE}" for f in files):
        raise ArchiveError(f"{label}: the backup holds no data/{SQLITE}: nothing to restore")
    return manifest


def _file_entry(entry: Any) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("path"), str) and "\0" not in entry["path"]
            and type(entry.get("size")) is int and entry["size"] >= 0
            and isinstance(entry.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]) is not None)


def read_manifest(archive: Path) -> dict[str, Any]:
    with _members(archive, str(archive)) as tar:
        member = tar.next()
        if member is None or member.name != "manifest.json":
            raise ArchiveError(f"{archive}: the first member is not manifest.json")
        return _load_manifest(str(archive), tar.extractfile(member))
