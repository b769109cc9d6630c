"""``/readyz`` and ``/chromaguard/status``: what the service depends on, checked now.

Readiness has one entry per check (engine heartbeat and healthcheck; a read
through the engine's storage; Ollama and its models when configured; room on
the data dir's disk); any failing one makes it 503. Status adds what an
operator wants on one screen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from .. import __version__
from ..backup.scheduler import readiness_check
from ..engine import catalog
from ..http11.client import UpstreamError, UpstreamPool, fetch
from ..probe import model_present

_CHECK_TIMEOUT = 3.0
# The disk counts as full below this much free space (or 5% of a smaller filesystem): the engine's
# writes need room for a batch, its SQLite journal and rewritten index files, and it was seen to
# fail (and then hang on every data call) with a few hundred KiB still free.
_FULL_BELOW = 64 * 2**20
WRITE_TEST = ".chromaguard-write-test"  # in the data dir; snapshots skip it
_WRITE_TEST_BYTES = 4096
_write_tests: dict[str, asyncio.Future[None]] = {}  # one test write at a time per data dir (a hung disk)


@dataclass
class Dependencies:
    pool: UpstreamPool
    backend: Any
    data_dir: Path | None = None
    min_free_disk: int = 0
    ollama_url: str | None = None
    ollama_models: tuple[str, ...] = ()
    started_at: float = field(default_factory=time.time)
    listen: str = ""
    upstream: str | None = None
    backups: Any = None  # the BackupScheduler, when backups are scheduled
    backup_max_age: float = 0.0
    audit: Any = None  # the AuditLog, when one is kept


def _check(ok: bool, detail: str) -> dict[str, Any]:
    return {"ok": ok, "detail": detail}


async def _engine(deps: Dependencies, path: str) -> dict[str, Any]:
    if not deps.backend.available:
        return _check(False, deps.backend.unavailable_reason)
    try:
        response = await deps.pool.request("GET", path.encode(), timeout=_CHECK_TIMEOUT)
        body = await response.read()
    except UpstreamError as exc:
        return _check(False, str(exc))
    if response.status != 200:
        return _check(False, f"{path} answered {response.status}: {body[:200].decode(errors='replace')}")
    return _check(True, f"{path} answered 200")


async def ollama_state(url: str, models: tuple[str, ...]) -> dict[str, Any]:
    try:
        status, body = await fetch(url, "/api/tags", timeout=_CHECK_TIMEOUT)
    except UpstreamError as exc:
        return {"ok": False, "detail": f"Ollama at {url} is not reachable: {exc}", "models": [], "missing": []}
    if status != 200:
        return {"ok": False, "detail": f"Ollama at {url} answered {status}", "models": [], "missing": []}
    try:
        present = [m["name"] for m in json.loads(body)["models"]]
    except (ValueError, KeyError, TypeError):
        return {"ok": False, "detail": f"{url} does not answer like Ollama", "models": [], "missing": []}
    missing = [m for m in models if not model_present(m, present)]
    detail = (f"models not pulled: {', '.join(missing)}" if missing else f"up with {len(present)} model(s)")
    return {"ok": not missing, "detail": detail, "models": present, "missing": missing}


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size < 10 * 2**20 else f"{size // 2**20} MiB"


def _write_test(data_dir: Path) -> None:
    path = data_dir / WRITE_TEST
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, b"\0" * _WRITE_TEST_BYTES)
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def room_floor(total: int) -> int:
    """Free bytes below which the disk counts as full for the engine's writes."""
    return min(_FULL_BELOW, total // 20)


# Below the floor these still go on: one SQLite transaction each (a full disk rolls it back),
# and no index file is rewritten. A record delete is logged and indexed like an add: refused.
_ALLOWED_ON_A_FULL_DISK = frozenset({"delete_collection", "delete_database"})


class DiskFloor:
    """Refuses writes before the engine runs out of room under its data dir.

    chromadb 1.5.9 rewrites its index files in place: a write that meets a full disk can leave
    a collection's index unreadable (an empty ``index_metadata.pickle``) or the engine stuck. Like
    a database's flood-stage watermark, writes get a 507 from here while free space, less twice
    the bytes of the writes let through since the last look and of this one (the engine writes
    a record more than once: log, index, journal), is under :func:`room_floor`. Reads and
    dropping collections go on.

    Free space is sampled by a thread of its own every ``every`` seconds (``start``): a write
    costs a look at the last sample, and a disk that hangs (a network filesystem) stalls that
    thread, never the front door nor the threads bcrypt uses. A sample older than
    ``stale_after``, or one that failed, refuses writes: when nobody can tell whether there is
    room, there may be none.
    """

    def __init__(self, data_dir: Path, *, every: float = 0.2, stale_after: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.data_dir = data_dir
        self.every = every
        self.stale_after = stale_after
        self.clock = clock
        self._sample: tuple[float, int, int, str] = (clock(), 0, 0, "not read yet")  # when, free, total, failure
        self._let_through = 0  # bytes of writes allowed since that sample
        self._stop = threading.Event()
        self._first = threading.Event()

    def sample(self) -> None:
        """Read free space now (blocking: the sampling thread calls it)."""
        try:
            usage = os.statvfs(self.data_dir)
        except OSError as exc:
            self._sample = (self.clock(), 0, 0, exc.strerror or str(exc))
        else:
            self._sample = (self.clock(), usage.f_bavail * usage.f_frsize, usage.f_blocks * usage.f_frsize, "")
        self._let_through = 0
        self._first.set()

    def start(self) -> None:
        """Sample from now on; waits up to a second for the first sample (writes are refused until it)."""
        threading.Thread(target=self._sample_until_stopped, name="chromaguard-disk-floor", daemon=True).start()
        self._first.wait(1.0)

    def stop(self) -> None:
        self._stop.set()

    def _sample_until_stopped(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every)

    def refusal(self, operation: str | None, size: int = 0) -> str | None:
        """Why this write of ``size`` bytes may not go to the engine now, or None (it is counted)."""
        if operation in _ALLOWED_ON_A_FULL_DISK:
            return None
        when, free, total, failed = self._sample
        until = "writes are refused until there is room (reads, and deleting collections, still work)"
        if failed:
            return f"chromaguard: cannot read the data dir's free space ({failed}); {until}"
        age = self.clock() - when
        if age > self.stale_after:
            return (f"chromaguard: the data dir's disk has not said how much space is free for {age:.0f}s (a hung "
                    f"disk?); {until}")
        floor = room_floor(total)
        if free - 2 * (self._let_through + size) >= floor:
            self._let_through += size
            return None
        return (f"chromaguard: the data dir's disk has {_mib(free)} free, and the engine's writes need "
                f"{_mib(floor)} left after this one; {until}: free space under the data dir")


async def disk_room(data_dir: Path, timeout: float = _CHECK_TIMEOUT) -> tuple[bool, int, str]:
    """(room, free bytes, detail): whether the engine's writes can find room under ``data_dir``.

    No room: less than 64 MiB free (5% of a smaller filesystem), or a 4 KiB test write fails
    (full, read-only, over quota) or hangs. The detail names no path (``/readyz`` is open).
    """
    try:
        usage = shutil.disk_usage(data_dir)
    except OSError as exc:
        return False, 0, f"cannot read the data dir's disk usage ({exc.strerror})"
    free = usage.free
    shown = f"{_mib(free)} free under the data dir"
    floor = room_floor(usage.total)
    if free < floor:
        return False, free, f"{shown}, less than the {_mib(floor)} the engine's writes need"
    key = str(data_dir)
    test = _write_tests.get(key)
    if test is None or test.done() or test.get_loop() is not asyncio.get_running_loop():
        test = _write_tests[key] = asyncio.ensure_future(asyncio.to_thread(_write_test, data_dir))
        test.add_done_callback(lambda done: done.cancelled() or done.exception())  # seen, even if late
    try:
        await asyncio.wait_for(asyncio.shield(test), timeout)
    except TimeoutError:
        return False, free, f"{shown}, but a {_WRITE_TEST_BYTES // 1024} KiB test write there has not finished " \
                            f"within {timeout:g}s: the disk hangs"
    except OSError as exc:
        return False, free, f"{shown}, but a {_WRITE_TEST_BYTES // 1024} KiB test write there failed: {exc.strerror}"
    return True, free, shown


async def _disk(deps: Dependencies) -> dict[str, Any]:
    assert deps.data_dir is not None
    room, free, detail = await disk_room(deps.data_dir)
    if free < deps.min_free_disk:
        detail += f" (needs at least {_mib(deps.min_free_disk)}: CHROMAGUARD_MIN_FREE_DISK)"
    return _check(room and free >= deps.min_free_disk, detail)


async def _engine_data(deps: Dependencies) -> dict[str, Any]:
    """A read through the engine's storage, which a heartbeat never touches (the supervisor's)."""
    backend = deps.backend
    if not backend.available:
        return _check(False, backend.unavailable_reason)
    if backend.disk_full:  # its reads answer; its writes are stuck
        return _check(False, f"writes do not complete: {backend.problem}")
    probe = await backend.read_probe(_CHECK_TIMEOUT)
    return _check(probe.ok, probe.detail)


async def readiness(deps: Dependencies) -> tuple[bool, dict[str, Any]]:
    names = ["engine_heartbeat", "engine_healthcheck"]
    jobs = [_engine(deps, "/api/v2/heartbeat"), _engine(deps, "/api/v2/healthcheck")]
    if hasattr(deps.backend, "read_probe"):  # the embedded engine's supervisor
        names.append("engine_data")
        jobs.append(_engine_data(deps))
    if deps.ollama_url:
        names.append("ollama")
        jobs.append(ollama_state(deps.ollama_url, deps.ollama_models))
    if deps.data_dir is not None:
        names.append("disk")
        jobs.append(_disk(deps))
    results = dict(zip(names, await asyncio.gather(*jobs)))
    if deps.backups is not None and deps.backup_max_age > 0:
        results["backup"] = readiness_check(deps.backups.state, deps.backup_max_age, deps.started_at)
    if "ollama" in results:
        results["ollama"] = _check(results["ollama"]["ok"], results["ollama"]["detail"])
    ready = all(check["ok"] for check in results.values())
    return ready, {"status": "ready" if ready else "not ready", "checks": results}


async def status(deps: Dependencies) -> dict[str, Any]:
    """Everything ``chromaguard status`` shows, as JSON."""
    backend = deps.backend
    engine: dict[str, Any] = {"mode": "upstream" if deps.upstream else "embedded"}
    if hasattr(backend, "restarts"):  # the embedded engine's supervisor
        proc = backend.engine
        engine.update({
            "state": "unresponsive" if backend.state == "running" and not backend.responsive else backend.state,
            "pid": proc.pid, "restarts": backend.restarts, "last_failure": backend.last_failure or None,
            "last_failure_at": backend.last_failure_at,
            "uptime_s": round(time.monotonic() - proc.started_at, 1) if proc.started_at and proc.running else None,
        })
        if hasattr(backend, "health_report"):
            engine["health"] = backend.health_report()
    else:
        engine["url"] = deps.upstream
    try:
        response = await deps.pool.request("GET", b"/api/v2/version", timeout=_CHECK_TIMEOUT)
        engine["version"] = json.loads(await response.read())
        engine.setdefault("state", "running")
    except (UpstreamError, ValueError) as exc:
        engine["version"] = None
        engine.setdefault("state", f"unreachable: {exc}")
    out: dict[str, Any] = {
        "chromaguard": {"version": __version__, "chromadb_package": version("chromadb"), "pid": os.getpid(),
                        "uptime_s": round(time.time() - deps.started_at, 1), "listen": deps.listen},
        "engine": engine,
        "collections": await _collections(deps),
    }
    if deps.data_dir is not None:
        usage = shutil.disk_usage(deps.data_dir)
        room, _, detail = await disk_room(deps.data_dir)
        out["data"] = {"dir": str(deps.data_dir), "size_bytes": catalog.directory_size(deps.data_dir),
                       "free_bytes": usage.free, "room": {"ok": room, "detail": detail}}
    if deps.backups is not None:
        out["backup"] = deps.backups.state.as_json()
    if deps.audit is not None:
        out["audit"] = {"target": deps.audit.target, "written": deps.audit.written, "dropped": deps.audit.dropped,
                        "last_error": deps.audit.last_error}
    if deps.ollama_url:
        out["ollama"] = {"url": deps.ollama_url, **(await ollama_state(deps.ollama_url, deps.ollama_models))}
    return out


async def _collections(deps: Dependencies) -> list[dict[str, Any]]:
    if deps.data_dir is not None:
        entries = [(c.tenant, c.database, c.name, c.id, c.dimension) for c in catalog.collections(deps.data_dir)]
    else:
        entries = await _listed(deps)
    out = []
    for tenant, database, name, cid, dimension in entries[:200]:
        count = None
        try:
            path = f"/api/v2/tenants/{tenant}/databases/{database}/collections/{cid}/count"
            response = await deps.pool.request("GET", path.encode(), timeout=_CHECK_TIMEOUT)
            body = await response.read()
            if response.status == 200:
                count = int(json.loads(body))
        except (UpstreamError, ValueError):
            pass
        out.append({"tenant": tenant, "database": database, "name": name, "id": cid, "dimension": dimension,
                    "count": count})
    return out


async def _listed(deps: Dependencies) -> list[tuple[str, str, str, str, int | None]]:
    path = b"/api/v2/tenants/default_tenant/databases/default_database/collections"
    try:
        response = await deps.pool.request("GET", path, timeout=_CHECK_TIMEOUT)
        items = json.loads(await response.read())
    except (UpstreamError, ValueError):
        return []
    if not isinstance(items, list):
        return []
    return [("default_tenant", "default_database", c.get("name"), c.get("id"), c.get("dimension")) for c in items]
