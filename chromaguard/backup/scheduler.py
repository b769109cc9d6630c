"""Scheduled backups inside ``serve``: no cron, no sidecar.

One run at a time: writes are held only while the data files are copied (``take_online``),
then the copy goes to the repository with writes flowing, then retention, then (daily by
default) a test restore into a scratch engine. A failed run is retried with back-off until
the next scheduled one, and every outcome is logged, counted and shown in ``status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ChromaguardError
from .retention import Policy
from .schedule import Schedule, parse_schedule

if TYPE_CHECKING:
    from ..config.settings import Settings
    from ..proxy.writegate import WriteGate
    from .mirror import Mirror
    from .repository import BackupInfo, Repository

log = logging.getLogger("chromaguard.backup")

FIRST_RETRY = 10.0
LAST_RETRY = 30 * 60.0


@dataclass
class BackupState:
    """What the last runs did: for ``status``, metrics and ``/readyz``."""

    repository: str
    schedule: str
    last_success: float | None = None
    last_id: str | None = None
    last_size: int | None = None
    last_uploaded: int | None = None
    last_duration_s: float | None = None
    last_write_hold_ms: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    failures: int = 0
    uploaded_bytes: int = 0
    repository_bytes: int | None = None
    verified_ok: bool | None = None
    verified_at: float | None = None
    verified_detail: str | None = None
    next_run: float | None = None
    running: bool = False

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["age_s"] = None if self.last_success is None else round(time.time() - self.last_success, 1)
        return out


class BackupScheduler:
    def __init__(self, settings: Settings, gate: WriteGate, data_dir: Path, mirror: Mirror | None = None) -> None:
        schedule = parse_schedule(settings.backup_schedule or "")
        assert schedule is not None and settings.backup_repository  # load_settings checked both
        self.schedule: Schedule = schedule
        self.url = settings.backup_repository
        self.policy = Policy(settings.backup_keep_last, settings.backup_keep_hourly, settings.backup_keep_daily,
                             settings.backup_keep_weekly, settings.backup_keep_monthly)
        self.verify = settings.backup_verify
        self.password = settings.backup_password_value()
        self.staging_root = str(settings.snapshot_dir) if settings.snapshot_dir else None
        self.gate = gate
        self.data_dir = data_dir
        self.mirror = mirror
        self.state = BackupState(self.url, schedule.describe())
        self.stopping = threading.Event()  # the service is stopping: an upload under way gives up
        self._repository: Repository | None = None
        self._last_attempt: float | None = None

    async def run(self) -> None:
        """The task ``serve`` keeps: learn the newest backup, then back up whenever one is due."""
        await self._learn_newest()
        while True:
            due = self.schedule.due_after(self._reference(), time.time())
            self.state.next_run = due
            await asyncio.sleep(max(0.0, due - time.time()))
            await self._until_done()

    def _reference(self) -> float | None:
        """What the next run counts from: the newest success, or a later run that failed."""
        times = [t for t in (self.state.last_success, self._last_attempt) if t is not None]
        return max(times) if times else None

    async def _learn_newest(self) -> None:
        delay = FIRST_RETRY
        while True:
            try:
                repository = await self._open()
                infos = await asyncio.to_thread(repository.backups)
                self.state.repository_bytes = await asyncio.to_thread(repository.size)
            except Exception as exc:  # noqa: BLE001 - a repository that cannot be read must not end the schedule
                self._failed(exc, "reading the repository")
                self.state.next_run = time.time() + delay
                await asyncio.sleep(delay)
                delay = min(delay * 2, LAST_RETRY)
                continue
            # The newest that could be read, and not from the future (a clock far ahead, a planted id).
            usable = [i for i in infos if i.size > 0 and i.time <= time.time() + 300]
            if usable:
                newest = usable[-1]
                self.state.last_success, self.state.last_id, self.state.last_size = newest.time, newest.id, newest.size
                if newest.verified is not None:
                    self.state.verified_ok = bool(newest.verified.get("ok"))
                    self.state.verified_detail = str(newest.verified.get("message"))
            return

    async def _until_done(self) -> None:
        """One backup, retried with back-off; left to the next scheduled run when that comes first."""
        self._last_attempt = time.time()
        delay = FIRST_RETRY
        while True:
            try:
                await self.run_once()
                return
            except Exception as exc:  # noqa: BLE001 - whatever failed, the schedule goes on
                self._failed(exc, "backing up")
            retry_at = time.time() + delay
            if self.schedule.due_after(self._last_attempt, time.time()) <= retry_at:
                return  # the next scheduled run comes first
            self.state.next_run = retry_at
            log.warning("scheduled backup: retrying in %.0f s", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, LAST_RETRY)

    def _failed(self, exc: BaseException, doing: str) -> None:
        foreseen = isinstance(exc, (ChromaguardError, OSError, sqlite3.Error))
        self.state.failures += 1
        self.state.last_error = str(exc) if foreseen else f"{type(exc).__name__}: {exc}"
        self.state.last_error_at = time.time()
        if foreseen:
            log.error("scheduled backup to %s failed while %s: %s", self.url, doing, exc)
        else:  # not one we foresaw: the whole story, once
            log.exception("scheduled backup to %s failed while %s", self.url, doing)

    async def _open(self) -> Repository:
        if self._repository is None:
            from .repository import Repository

            self._repository = await asyncio.to_thread(Repository.open, self.url, create=True,
                                                       password=self.password)
        return self._repository

    async def run_once(self) -> BackupInfo:
        """Snapshot (writes held for the copy only), upload, prune, verify when due."""
        from .snapshot import take_online

        if self.state.running:
            raise ChromaguardError("a scheduled backup is running already")
        self.state.running = True
        started = time.monotonic()
        try:
            repository = await self._open()
            info = await self._in_thread(self._locked_backup, repository,
                                         await take_online(self.gate, self.data_dir, staging_root=self.staging_root,
                                                                 mirror=self.mirror))
            self.state.last_success, self.state.last_id = info.time, info.id
            self.state.last_size, self.state.last_uploaded = info.size, info.stored_bytes
            self.state.last_write_hold_ms = info.write_hold_ms
            self.state.uploaded_bytes += info.stored_bytes
            self.state.last_duration_s = round(time.monotonic() - started, 3)
            self.state.last_error = None
            self.state.next_run = self.schedule.due_after(self._reference(), time.time())
            log.info("scheduled backup %s to %s: %.1f MiB, %.1f MiB uploaded, writes held for %s ms, %.1f s",
                     info.id, self.url, info.size / 2**20, info.stored_bytes / 2**20, info.write_hold_ms,
                     self.state.last_duration_s)
            await self._after(repository, info)  # the backup is made: what fails from here is not retried
            return info
        finally:
            self.state.running = False

    async def _in_thread(self, fn: Any, *args: Any) -> Any:
        """``fn`` in a thread; cancelled (the service stops), the thread is told and waited for, so
        nothing it uses (the snapshot, the lock) goes away under it."""
        work = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            self.stopping.set()
            with contextlib.suppress(Exception):
                await work
            raise

    def _locked_backup(self, repository: Repository, snapshot: Any) -> BackupInfo:
        from .take import snapshot_to

        return snapshot_to(repository, snapshot, "scheduled backup", stop=self.stopping)

    async def _after(self, repository: Repository, info: BackupInfo) -> None:
        """Retention, the repository's size, a test restore when due: each failure logged and shown."""
        try:
            if not self.policy.empty:
                report = await self._in_thread(lambda: repository.prune(self.policy, stop=self.stopping))
                if report.removed:
                    log.info("retention (%s): forgot %d backup(s), deleted %d pack(s)", self.policy.describe(),
                             len(report.removed), report.packs_removed)
            self.state.repository_bytes = await self._in_thread(repository.size)
        except Exception as exc:  # noqa: BLE001 - the backup itself is fine
            self.state.last_error, self.state.last_error_at = f"retention after {info.id}: {exc}", time.time()
            log.error("retention after scheduled backup %s failed: %s", info.id, exc)
        if self._verify_due():
            await self._verify(repository, info.id)

    def _verify_due(self) -> bool:
        if self.verify == "off":
            return False
        if self.verify == "always" or self.state.verified_at is None:
            return True
        return time.strftime("%Y-%m-%d", time.gmtime(self.state.verified_at)) != time.strftime("%Y-%m-%d",
                                                                                                 time.gmtime())

    async def _verify(self, repository: Repository, backup_id: str) -> None:
        from .restore import verify_in

        into = Path(self.staging_root) if self.staging_root else None
        try:
            report = await self._in_thread(lambda: verify_in(repository, backup_id, into=into, stop=self.stopping))
        except Exception as exc:  # noqa: BLE001 - a failed test restore is reported, not retried as a backup
            self.state.verified_ok, self.state.verified_detail = False, str(exc)
            log.error("scheduled backup %s did not verify: %s", backup_id, exc)
        else:
            self.state.verified_ok = True
            self.state.verified_detail = f"{backup_id}: {getattr(report, 'records', '?')} record(s) restored"
            log.info("scheduled backup %s verified: restored into a scratch engine, %s", backup_id,
                     self.state.verified_detail)
        self.state.verified_at = time.time()


def readiness_check(state: BackupState, max_age: float, started_at: float) -> dict[str, Any]:
    """``/readyz``'s backup check: the newest success is recent enough (none yet: within the first max age)."""
    now = time.time()
    if state.last_success is None:
        ok = now - started_at < max_age
        detail = "no successful backup yet" + ("" if ok else f" in {max_age:.0f} s of running")
    else:
        age = now - state.last_success
        ok = age <= max_age
        detail = f"newest backup {state.last_id} is {age:.0f} s old (at most {max_age:.0f} s)"
    return {"ok": ok, "detail": detail}
