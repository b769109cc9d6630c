"""Keeps the engine alive, with Docker's health-check semantics, watching its data path too.

- The engine exits → restarted at once; if it keeps dying, with exponential back-off.
- Every ``interval`` a probe (``timeout`` for the whole of it) makes two calls on fresh connections:
  the heartbeat, which must answer within ``heartbeat_timeout`` (on loopback it answers in about a
  millisecond: one that takes seconds is stopped or stuck), then a read through the engine's
  storage: a ``get`` of an id that does not exist, in one of its collections. That read takes the
  engine's whole read path (the SQLite metadata, and the compactor that applies the write log
  before every read), which the heartbeat never touches: an engine stuck after a failed write
  (a full disk does that) still answers its heartbeat, and may hang on every data call. Without a
  collection it reads the collection count (SQLite, no compactor). An answer is a pass, even an
  error answer (a broken collection must not get the engine restarted); only no answer in time,
  or no connection, fails.
- After ``retries`` failed probes in a row (failures in the ``start_period`` after a start do not
  count, unless a probe already passed) the engine is killed and restarted; requests it had in
  flight fail at once (its connections close).
- A full disk is reported and not restarted. An engine whose writes found no room gets stuck on
  them: they hang, and so may its reads (the heartbeat still answers). When the data read hangs,
  or a request has waited ``timeout`` with no answer, and the data dir has no room
  (``readiness.disk_room``), the engine counts as stuck on the full disk: requests that wait on it
  get 503 with the reason (a couple of seconds from then on), new ones too if its reads hang, and
  it is not restarted, since a restart frees no space. Once there is room it is restarted, as
  the stuck writes do not come loose by themselves.
- From the first failed probe until one passes, the engine counts as unavailable: new requests get
  a quick 503 instead of waiting on an engine that may never answer.
- Client requests that fail at the transport level (``request_failed``, from the front door) ask
  for a probe now instead of at the next interval; a few within a short window mark the engine
  unavailable at once, until that probe passes.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from ..errors import StartupError
from ..health.readiness import disk_room
from ..http11.client import UpstreamError, UpstreamPool, UpstreamTimeout, fetch
from . import catalog
from .process import EngineProcess

log = logging.getLogger("chromaguard.supervisor")

BACKOFF_MAX = 30.0
STABLE_AFTER = 60.0  # an engine up this long has recovered: the next crash restarts at once again
REQUEST_FAILURES = 3  # client requests failing at the transport level within ...
REQUEST_FAILURE_WINDOW = 10.0  # ... this many seconds mark the engine unavailable at once
_WOKEN_GAP = 1.0  # probes asked for by failing requests start at least this far apart
_TARGET_REFRESH = 30.0  # how often the collection the data read uses is picked again
_PROBE_ID = "chromaguard-probe"  # the id the data read asks for: never there, so nothing to send back
_STUCK_AFTER = 2.0  # on a full disk the engine is stuck on: a request waiting this long is failed

PASS, GRACE, FAIL, UNHEALTHY = "pass", "grace", "fail", "unhealthy"


@dataclass(frozen=True)
class HealthPolicy:
    interval: float = 2.0
    timeout: float = 10.0
    retries: int = 3
    start_period: float = 60.0
    heartbeat_timeout: float = 2.0


@dataclass(frozen=True)
class Probe:
    """One probe's outcome."""

    ok: bool
    detail: str
    stuck: bool = False  # no answer in time, or no connection: requests would hang or fail
    data_path: bool = False  # the heartbeat answered; the read through storage did not


class HealthJudge:
    """Docker's rules over a run of probe results; no clock or I/O of its own."""

    def __init__(self, policy: HealthPolicy) -> None:
        self.policy = policy
        self.started(0.0)

    def started(self, now: float) -> None:
        self.failures = 0
        self.passed_since_start = False
        self.started_at = now

    def judge(self, ok: bool, now: float) -> str:
        """PASS; GRACE (failed in the start period before any pass: not counted); FAIL (counted);
        UNHEALTHY (``retries`` counted failures in a row, and every failure after them)."""
        if ok:
            self.failures = 0
            self.passed_since_start = True
            return PASS
        if not self.passed_since_start and now - self.started_at < self.policy.start_period:
            return GRACE
        self.failures += 1
        return UNHEALTHY if self.failures >= self.policy.retries else FAIL


class Backoff:
    """Delays between restarts of an engine that keeps dying: 0, 1, 2, 4, … ``cap`` seconds; an
    engine that had been up longer than ``stable_after`` starts the series again."""

    def __init__(self, cap: float = BACKOFF_MAX, stable_after: float = STABLE_AFTER) -> None:
        self.cap = cap
        self.stable_after = stable_after
        self.failures_in_a_row = 0

    def exited(self, up_for: float) -> None:
        if up_for > self.stable_after:
            self.failures_in_a_row = 0

    def next_delay(self) -> float:
        n = self.failures_in_a_row
        self.failures_in_a_row += 1
        return 0.0 if n == 0 else min(self.cap, 2.0 ** (n - 1))


class Supervisor:
    def __init__(self, engine: EngineProcess, *, policy: HealthPolicy = HealthPolicy(),
                 ready_timeout: float = 60.0, on_probe: Callable[[bool], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 probe: Callable[[], Awaitable[Probe]] | None = None,
                 room: Callable[[], Awaitable[tuple[bool, str]]] | None = None) -> None:
        """``clock``, ``sleep``, ``probe`` and ``room`` (is there room on the data dir's disk?)
        are for tests; by default the real time and the real engine."""
        self.engine = engine
        self.policy = policy
        self.ready_timeout = ready_timeout
        self.on_probe = on_probe
        # Set by the wiring: the data path's pool, whose waiting requests are watched (``waiting``,
        # ``abort``).
        self.pool: Any = None
        self.state = "stopped"
        self.responsive = True
        self.problem = ""  # what is wrong: why it is unavailable, or that it is stuck on a full disk
        self.disk_full = False  # stuck on a full disk: requests waiting on it failed, restart withheld
        self.restarts = 0
        self.last_failure = ""
        self.last_failure_at: float | None = None
        self.last_probe: dict[str, Any] | None = None
        self.judge = HealthJudge(policy)
        self.backoff = Backoff()
        self._clock = clock
        self._sleep = sleep
        self._probe = probe or self.probe_now
        self._room = room or self._disk_room
        self._launched_at = 0.0
        self._woken = asyncio.Event()
        self._last_probe_at = -math.inf
        self._request_failures: collections.deque[float] = collections.deque()
        self._waiting: dict[Any, tuple[object, float]] = {}  # connection -> (its request, first seen waiting)
        self._target: tuple[str, str, str] | None = None
        self._target_checked = -math.inf
        self._tasks: list[asyncio.Task[None]] = []

    # ---- what the front door asks --------------------------------------------------------------

    @property
    def available(self) -> bool:
        return self.state == "running" and self.responsive and self.engine.running

    @property
    def unavailable_reason(self) -> str:
        if self.state == "running" and not self.engine.running:
            return "the engine process has exited"
        if self.state == "running" and not self.responsive:
            return self.problem or "the engine is not answering its health check"
        return {"starting": "the engine is starting", "restarting": "the engine is restarting",
                "stopped": "the engine is stopped"}.get(self.state, self.state)

    def request_failed(self, exc: BaseException) -> None:
        """A client request to the engine failed at the transport level: probe now; several in a
        short window mark the engine unavailable until that probe passes."""
        if self.state != "running":
            return
        now = self._clock()
        failures = self._request_failures
        failures.append(now)
        while failures and now - failures[0] > REQUEST_FAILURE_WINDOW:
            failures.popleft()
        if self.responsive and len(failures) >= REQUEST_FAILURES:
            self._unresponsive(f"{len(failures)} requests to the engine failed within "
                               f"{REQUEST_FAILURE_WINDOW:g}s (last: {exc}); checking it now")
            log.warning("engine marked unavailable: %s", self.problem)
        self._woken.set()

    def health_report(self) -> dict[str, Any]:
        """The supervisor's view for ``/chromaguard/status``."""
        p = self.policy
        return {
            "policy": {"interval_s": p.interval, "timeout_s": p.timeout, "heartbeat_timeout_s": p.heartbeat_timeout,
                       "retries": p.retries, "start_period_s": p.start_period},
            "failures_in_a_row": self.judge.failures,
            "last_probe": self.last_probe,
            "disk_full": self.disk_full,
            "problem": self.problem or None,
            "oldest_request_waiting_s": round(max((self._clock() - since for _, since in self._waiting.values()),
                                                  default=0.0), 1),
            "unavailable_reason": None if self.available else self.unavailable_reason,
        }

    # ---- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self.state = "starting"
        self._launched_at = self._clock()
        await self.engine.start()
        await self.engine.wait_ready(self.ready_timeout)
        self._started()
        self._tasks = [asyncio.create_task(self._watch_engine()), asyncio.create_task(self._probe_engine())]

    def _started(self) -> None:
        self.state = "running"
        self.responsive = True
        self.problem = ""
        self.disk_full = False
        self.judge.started(self._clock())
        self._request_failures.clear()
        self._waiting = {}

    def _unresponsive(self, problem: str) -> None:
        self.responsive = False
        self.problem = problem

    async def _watch_engine(self) -> None:
        while True:  # until stop() cancels it
            code = await self.engine.wait()
            up_for = self._clock() - self._launched_at
            if self.state != "restarting":  # not killed by the health check, which said why already
                self._record_failure(f"engine exited with code {code} after {up_for:.1f}s")
            self.backoff.exited(up_for)
            await self._restart()

    async def _restart(self) -> None:
        self.state = "restarting"
        while True:
            delay = self.backoff.next_delay()
            if delay:
                log.warning("restarting the engine in %.0fs (failure %d in a row)", delay,
                            self.backoff.failures_in_a_row)
                await self._sleep(delay)
            try:
                self.engine.kill()
                self._launched_at = self._clock()
                await self.engine.start()
                await self.engine.wait_ready(self.ready_timeout)
            except StartupError as exc:
                self._record_failure(str(exc))
                continue
            self.restarts += 1
            self._started()
            log.warning("engine restarted (restart %d)", self.restarts)
            return

    async def stop(self, timeout: float = 10.0) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self.state = "stopped"
        await self.engine.stop(timeout)

    def _record_failure(self, reason: str) -> None:
        self.last_failure = reason
        self.last_failure_at = time.time()
        log.error("%s", reason)

    # ---- probing -------------------------------------------------------------------------------

    async def _probe_engine(self) -> None:
        while True:  # until stop() cancels it
            await self._pause(self.policy.interval)
            if self.state != "running" or not self.engine.running:
                continue
            self._last_probe_at = self._clock()
            probe = await self._probe()
            if self.on_probe is not None:
                self.on_probe(probe.ok)
            if self.state != "running":  # it exited meanwhile: the watcher has it
                continue
            await self._judged(probe)

    async def _pause(self, seconds: float) -> None:
        """``seconds`` (less while stuck on a full disk: requests waiting on it are failed after
        ``_STUCK_AFTER``), or until a failing request asks for a probe now (then at least
        ``_WOKEN_GAP`` after the last probe began)."""
        if self.disk_full:
            seconds = min(seconds, _STUCK_AFTER / 2)
        if not self._woken.is_set():
            timer = asyncio.ensure_future(self._sleep(seconds))
            woken = asyncio.ensure_future(self._woken.wait())
            try:
                await asyncio.wait((timer, woken), return_when=asyncio.FIRST_COMPLETED)
            finally:
                timer.cancel()
                woken.cancel()
        if self._woken.is_set():
            self._woken.clear()
            wait = self._last_probe_at + _WOKEN_GAP - self._clock()
            if wait > 0:
                await self._sleep(wait)

    def _waited_too_long(self, now: float) -> list[Any]:
        """Requests to the engine with no answer for ``timeout`` (``_STUCK_AFTER`` once stuck on a
        full disk), as seen by this probe and the ones before."""
        if self.pool is None:
            return []
        seen: dict[Any, tuple[object, float]] = {}
        for conn, request in self.pool.waiting():
            before = self._waiting.get(conn)
            seen[conn] = before if before is not None and before[0] is request else (request, now)
        self._waiting = seen
        limit = _STUCK_AFTER if self.disk_full else self.policy.timeout
        return [conn for conn, (_, since) in seen.items() if now - since >= limit]

    async def _judged(self, probe: Probe) -> None:
        """Act on one probe's outcome, and on the requests waiting on the engine."""
        policy = self.policy
        now = self._clock()
        self.last_probe = {"ok": probe.ok, "detail": probe.detail, "at": time.time()}
        verdict = self.judge.judge(probe.ok, now)
        stalled = self._waited_too_long(now)
        read_stuck = not probe.ok and probe.data_path
        if read_stuck or stalled or self.disk_full:  # is the disk to blame?
            room, disk = await self._room()
            if self.state != "running":  # it exited meanwhile: the watcher has it
                return
            beat_failed = not probe.ok and not probe.data_path  # the whole engine is stuck: not the disk's doing
            if not room and not beat_failed:
                self._stuck_on_full_disk(disk, stalled, reads_hang=read_stuck)
                return
            if self.disk_full:  # and now there is room
                self.disk_full = False
                self._record_failure(f"the disk has room again ({disk}); restarting the engine, stuck since it "
                                     "was full (its stuck writes do not come loose by themselves)")
                self.state = "restarting"
                self.engine.kill()  # the watcher sees it exit and restarts it
                return
        if verdict == PASS:
            if not self.responsive:
                log.warning("engine answers its health check again")
            self.responsive = True
            self.problem = ""
            self._request_failures.clear()
            return
        if verdict == GRACE:
            self._unresponsive(f"the engine is not answering its health check yet ({probe.detail})")
            log.warning("engine health check failed during its start period: %s", probe.detail)
            return
        log.warning("engine health check failed (%d of %d): %s", self.judge.failures, policy.retries, probe.detail)
        self._unresponsive(f"the engine is not answering its health check ({probe.detail})" if not probe.data_path
                           else f"the engine does not answer data calls ({probe.detail})")
        if verdict == UNHEALTHY:
            self._record_failure(f"engine unhealthy: {self.judge.failures} health checks failed in a row "
                                 f"({probe.detail}); killing and restarting it")
            self.state = "restarting"
            self.engine.kill()  # the watcher sees it exit and restarts it

    def _stuck_on_full_disk(self, disk: str, stalled: list[Any], *, reads_hang: bool) -> None:
        """The engine's writes found no room and it is stuck on them: say so to whoever waits on
        it (and to every new request, if its reads hang too); no restart, which frees no space."""
        reason = (f"the data dir's disk is full ({disk}) and the engine is stuck on it; free space under the "
                  "data dir and chromaguard restarts the engine")
        if not self.disk_full:
            self.disk_full = True
            self._record_failure(f"engine stuck on a full disk ({disk}): "
                                 + ("its reads hang too" if reads_hang else "writes hang, reads answer")
                                 + "; not restarting it (that frees no space): requests waiting on it get 503; "
                                 "it is restarted once there is room")
        self.problem = reason
        self.responsive = not reads_hang  # reads that answer may go on
        if reads_hang:  # nothing will be answered: fail all that waits, not only the long waits
            stalled = list(self._waiting)
        if stalled:  # only a pool's requests are ever waiting
            failed = self.pool.abort(stalled, f"the Chroma engine is unavailable ({reason}); this request may "
                                              "not have been applied")
            if failed:
                log.warning("failed %d request(s) waiting on the engine stuck on a full disk", failed)

    async def probe_now(self) -> Probe:
        """The heartbeat, then the read through storage, within ``timeout`` in all."""
        policy = self.policy
        started = self._clock()
        beat = min(policy.heartbeat_timeout, policy.timeout) or policy.timeout
        try:
            status, _ = await fetch(self.engine.url, "/api/v2/heartbeat", timeout=beat)
        except UpstreamTimeout:
            return Probe(False, f"no heartbeat within {beat:g}s", stuck=True)
        except UpstreamError as exc:
            return Probe(False, f"heartbeat: {exc}", stuck=True)
        if status != 200:
            return Probe(False, f"heartbeat answered {status}")
        left = max(policy.timeout - (self._clock() - started), 0.5)
        if self.disk_full:  # known stuck: probe often and briefly, to fail what waits on it and see room come back
            left = min(left, _STUCK_AFTER)
        return await self.read_probe(left)

    async def read_probe(self, timeout: float) -> Probe:
        """The read through the engine's storage alone (``/readyz`` asks for it too)."""
        target = await self._read_target()
        if target is None:
            method, path, body, what = ("GET", "/api/v2/tenants/default_tenant/databases/default_database/"
                                        "collections_count", b"", "the collection count")
        else:
            tenant, database, cid = (quote(part, safe="") for part in target)
            method, path, what = "POST", f"/api/v2/tenants/{tenant}/databases/{database}/collections/{cid}/get", \
                "a read of a collection"
            body = json.dumps({"ids": [_PROBE_ID], "include": []}).encode()
        pool = UpstreamPool(self.engine.url, connect_timeout=timeout)
        try:
            response = await pool.request(method, path.encode(), [(b"content-type", b"application/json")]
                                          if body else [], body or None, timeout=timeout)
            answer = await response.read()
        except UpstreamTimeout:
            return Probe(False, f"{what} got no answer within {timeout:g}s (the heartbeat did)", stuck=True,
                         data_path=True)
        except UpstreamError as exc:
            return Probe(False, f"{what} failed: {exc}", stuck=True, data_path=True)
        finally:
            pool.close()
        if response.status == 404 and target is not None:
            self._target = None  # deleted meanwhile: pick another next time
        if response.status >= 500:
            return Probe(True, f"{what} answered {response.status}: {answer[:200].decode(errors='replace')}")
        return Probe(True, f"heartbeat and {what} answered")

    async def _read_target(self) -> tuple[str, str, str] | None:
        """A collection to read (picked again now and then); None while there is none (or the
        catalog was busy: asked again at the next probe)."""
        now = self._clock()
        if self._target is None or now - self._target_checked >= _TARGET_REFRESH:
            self._target_checked = now
            try:
                entries = await asyncio.to_thread(catalog.collections, self.engine.data_dir)
            except Exception:  # the catalog is a convenience: the collection count will do
                entries = []
            self._target = (entries[0].tenant, entries[0].database, entries[0].id) if entries else None
        return self._target

    async def _disk_room(self) -> tuple[bool, str]:
        room, _, detail = await disk_room(self.engine.data_dir)
        return room, detail
