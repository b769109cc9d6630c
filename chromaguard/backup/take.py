"""``chromaguard backup``: an archive from a running chromaguard (online) or a stopped data dir (offline)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gzip
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ..errors import ChromaguardError, StartupError
from ..probe import client_tls
from . import archive
from .repository import BackupInfo, Repository
from .snapshot import Snapshot, SnapshotError, take_offline


class BackupError(ChromaguardError):
    exit_code = 1


class UnreadableData(BackupError):
    """The data dir's SQLite file cannot be read: there is no consistent copy to take."""


@dataclass
class BackupResult:
    path: Path
    size: int
    collections: int
    records: int
    write_hold_ms: float | None
    seconds: float


def archive_name(now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    return f"{archive.PREFIX}{stamp}{archive.SUFFIX}"


def _target(output: Path) -> Path:
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupError(f"{output}: cannot make the backup folder there ({exc.strerror}); give a folder that "
                          "can be created and written") from None
    path = output / archive_name()
    n = 1
    while path.exists():  # two backups in the same second
        path = output / archive_name().replace(archive.SUFFIX, f"-{n}{archive.SUFFIX}")
        n += 1
    return path


@contextlib.contextmanager
def _partial(path: Path) -> Iterator[Path]:
    """Write to ``path.partial``; it becomes ``path`` only if the block completes (and is then checked)."""
    partial = path.with_name(path.name + ".partial")
    try:
        yield partial
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _finish(partial: Path, path: Path, progress: Callable[[int], None] | None) -> dict[str, Any]:
    """Read the archive back, every checksum against the manifest, then give it its real name."""
    try:
        manifest = archive.check(partial, progress)
    except archive.ArchiveError as exc:
        raise BackupError(f"the archive did not check out, nothing was kept: {exc}") from None
    with open(partial, "rb") as fh:
        os.fsync(fh.fileno())
    partial.replace(path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return manifest


def _headers(token: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token else {}


@contextlib.contextmanager
def _snapshot_stream(url: str, token: str | None, progress: Callable[[str, int, int | None], None] | None
                     ) -> Iterator[tuple[dict[str, Any], Iterator[bytes]]]:
    """Ask the service for a snapshot (it holds writes for the copy only); its tar stream, then it is dropped."""
    url = url.rstrip("/")
    with httpx.Client(timeout=httpx.Timeout(300.0, connect=10.0), headers=_headers(token),
                      verify=client_tls(url)) as http:
        try:
            created = http.post(f"{url}/chromaguard/snapshots")
        except httpx.HTTPError as exc:
            raise BackupError(f"cannot reach {url}: {exc}") from None
        if created.status_code in (401, 403):
            raise BackupError(f"{url}: backups need an admin token (--token or CHROMAGUARD_TOKEN) with auth on; "
                              "with auth off, a call from the server's own host or its control token; "
                              f"answered {created.status_code}: {_message(created)}")
        if created.status_code != 201:
            raise BackupError(f"{url}: snapshot failed ({created.status_code}): {_message(created)}")
        info = created.json()
        try:
            with http.stream("GET", f"{url}/chromaguard/snapshots/{info['id']}/archive") as response:
                if response.status_code != 200:
                    raise BackupError(f"{url}: download failed ({response.status_code})")

                def chunks() -> Iterator[bytes]:
                    for chunk in response.iter_bytes(1 << 20):
                        if progress:
                            progress("download", len(chunk), info["bytes"])
                        yield chunk

                yield info, chunks()
        except httpx.HTTPError as exc:
            raise BackupError(f"the download from {url} broke off, nothing was kept: {exc}") from None
        finally:
            with contextlib.suppress(httpx.HTTPError):
                http.delete(f"{url}/chromaguard/snapshots/{info['id']}")


def online(url: str, output: Path, *, token: str | None = None, level: int = 3,
           progress: Callable[[str, int, int | None], None] | None = None) -> BackupResult:
    """A single-file archive of a running service."""
    started = time.monotonic()
    path = _target(output)
    with _partial(path) as partial, _snapshot_stream(url, token, progress) as (info, chunks):
        with gzip.open(partial, "wb", compresslevel=level) as out:
            for chunk in chunks:
                out.write(chunk)
        manifest = _finish(partial, path, (lambda n: progress("check", n, info["bytes"])) if progress else None)
    return _result(path, manifest, started)


def online_to(url: str, repository: Repository, *, token: str | None = None,
              progress: Callable[[str, int, int | None], None] | None = None) -> BackupInfo:
    """A running service's snapshot into a repository: only chunks it lacks go up."""
    repository.check_writable()  # before the service takes a snapshot for nothing
    with repository.locked("backup", exclusive=False), concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(repository.writer)  # the newest manifests are read while the service snapshots
        try:
            with _snapshot_stream(url, token, progress) as (_, chunks):
                writer = pending.result()
                for chunk in chunks:
                    writer.write(chunk)
            return writer.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                pending.result().abandon()
            raise


def offline_to(data_dir: Path, repository: Repository, *,
               progress: Callable[[str, int, int | None], None] | None = None, lock_held: bool = False) -> BackupInfo:
    """A stopped data dir into a repository (its lock is taken for the copy, unless held already)."""
    snapshot = _take_offline(data_dir, lock_held)
    total = sum(f["size"] for f in snapshot.manifest["files"])
    return snapshot_to(repository, snapshot, "backup",
                       progress=(lambda n: progress("write", n, total)) if progress else None)


def snapshot_to(repository: Repository, snapshot: Snapshot, operation: str, *,
                progress: Callable[[int], None] | None = None, stop: threading.Event | None = None) -> BackupInfo:
    """A snapshot's tar stream into a repository, listed only once whole; the snapshot is removed after."""
    try:
        with repository.locked(operation, exclusive=False):
            writer = repository.writer(progress=progress, stop=stop)
            try:
                archive.write_tar(snapshot, writer)  # type: ignore[arg-type]  # write and flush are enough
                return writer.commit()
            except BaseException:
                writer.abandon()
                raise
    finally:
        snapshot.remove()


def _take_offline(data_dir: Path, lock_held: bool = False) -> Snapshot:
    try:
        return asyncio.run(take_offline(data_dir, lock_held=lock_held))
    except sqlite3.Error as exc:
        raise UnreadableData(f"{data_dir}/chroma.sqlite3 cannot be read by SQLite ({exc}); no consistent copy "
                             "of it can be taken") from None
    except (SnapshotError, StartupError) as exc:
        raise BackupError(str(exc)) from None


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message"))
    except ValueError:
        return response.text[:200]


def offline(data_dir: Path, output: Path, *, level: int = 3,
            progress: Callable[[str, int, int | None], None] | None = None, lock_held: bool = False) -> BackupResult:
    """Back up a data dir no service is running on (its lock is taken for the copy, unless held already)."""
    started = time.monotonic()
    snapshot = _take_offline(data_dir, lock_held)
    try:
        path = _target(output)
        total = sum(f["size"] for f in snapshot.manifest["files"])
        with _partial(path) as partial:
            with gzip.open(partial, "wb", compresslevel=level) as out:
                counted = (lambda n: progress("write", n, total)) if progress else None
                archive.write_tar(snapshot, _Counting(out, counted))  # type: ignore[arg-type]  # write and flush
            manifest = _finish(partial, path, (lambda n: progress("check", n, total)) if progress else None)
    finally:
        snapshot.remove()
    return _result(path, manifest, started)


class _Counting:
    """A write-only file wrapper reporting bytes written."""

    def __init__(self, out: Any, report: Callable[[int], None] | None) -> None:
        self.out = out
        self.report = report

    def write(self, data: bytes) -> int:
        if self.report:
            self.report(len(data))
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()


def _result(path: Path, manifest: dict[str, Any], started: float) -> BackupResult:
    return BackupResult(path, path.stat().st_size, len(manifest["collections"]),
                        sum(c["count"] for c in manifest["collections"]), manifest["write_hold_ms"],
                        time.monotonic() - started)


def prune(output: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` complete archives in ``output``; returns what was deleted."""
    archives = sorted((p for p in output.glob(f"{archive.PREFIX}*{archive.SUFFIX}") if p.is_file()),
                      key=lambda p: (p.stat().st_mtime_ns, p.name))  # names alone misorder "-1", "-10"
    doomed = archives[:-keep] if keep > 0 else []
    for path in doomed:
        path.unlink()
    return doomed

