"""Keeps the engine alive, with Docker's health-check semantics.

- The engine exits → restarted at once; if it keeps dying, with exponential back-off.
- The engine hangs → every ``interval`` a heartbeat probe gets ``timeout`` to answer; after
  ``retries`` failures in a row (failures in the ``start_period`` after a start do not count,
  unless a probe already passed) it is killed and restarted.
- While a probe is failing the engine counts as unavailable, so new requests get a quick 503
  instead of waiting on an engine that may never answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable

from .engine import EngineProcess
from .errors import StartupError
from .upstream import UpstreamError, fetch

log = logging.getLogger("chromaguard.supervisor")

_BACKOFF_MAX = 30.0
_STABLE_AFTER = 60.0  # an engine up this long has recovered: the next crash restarts at once again


@dataclass(frozen=True)
class HealthPolicy:
    interval: float = 30.0
    timeout: float = 15.0
    retries: int = 3
    start_period: float = 60.0


class Supervisor:
    def __init__(self, engine: EngineProcess, *, policy: HealthPolicy = HealthPolicy(),
                 ready_timeout: float = 60.0, on_probe: Callable[[bool], None] | None = None) -> None:
        self.engine = engine
        self.policy = policy
        self.ready_timeout = ready_timeout
        self.on_probe = on_probe
        self.state = "stopped"
        self.responsive = True
        self.restarts = 0
        self.last_failure = ""
        self.last_failure_at: float | None = None
        self._stopping = False
        self._failures_in_a_row = 0
        self._probe_failures = 0
        self._passed_since_start = False
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def available(self) -> bool:
        return self.state == "running" and self.responsive and self.engine.running

    @property
    def unavailable_reason(self) -> str:
        if self.state == "running" and not self.engine.running:
            return "the engine process has exited"
        if self.state == "running" and not self.responsive:
            return "the engine is not answering its health check"
        return {"starting": "the engine is starting", "restarting": "the engine is restarting",
                "stopped": "the engine is stopped"}.get(self.state, self.state)

    async def start(self) -> None:
        self.state = "starting"
        await self.engine.start()
        await self.engine.wait_ready(self.ready_timeout)
        self._started()
        self._tasks = [asyncio.create_task(self._watch_engine()), asyncio.create_task(self._probe_engine())]

    def _started(self) -> None:
        self.state = "running"
        self.responsive = True
        self._probe_failures = 0
        self._passed_since_start = False

    async def _watch_engine(self) -> None:
        while not self._stopping:
            code = await self.engine.wait()
            if self._stopping:
                return
            up_for = time.monotonic() - (self.engine.started_at or time.monotonic())
            if self.state != "restarting":  # not killed by the health check, which said why already
                self._record_failure(f"engine exited with code {code} after {up_for:.1f}s")
            if up_for > _STABLE_AFTER:
                self._failures_in_a_row = 0
            await self._restart()

    async def _probe_engine(self) -> None:
        policy = self.policy
        while not self._stopping:
            await asyncio.sleep(policy.interval)
            if self.state != "running" or not self.engine.running:
                continue
            ok, detail = await self._probe_once()
            if self.on_probe is not None:
                self.on_probe(ok)
            if self.state != "running":
                continue
            if ok:
                self._probe_failures = 0
                self._passed_since_start = True
                if not self.responsive:
                    log.warning("engine answers its health check again")
                self.responsive = True
                continue
            self.responsive = False
            in_start_period = time.monotonic() - (self.engine.started_at or 0) < policy.start_period
            if in_start_period and not self._passed_since_start:
                log.warning("engine health check failed during its start period: %s", detail)
                continue
            self._probe_failures += 1
            log.warning("engine health check failed (%d of %d): %s", self._probe_failures, policy.retries, detail)
            if self._probe_failures >= policy.retries:
                self._record_failure(f"engine unhealthy: {policy.retries} health checks failed in a row "
                                     f"({detail}); killing and restarting it")
                self.state = "restarting"
                self.engine.kill()  # the watcher sees it exit and restarts it

    async def _probe_once(self) -> tuple[bool, str]:
        try:
            status, _ = await fetch(self.engine.url, "/api/v2/heartbeat", timeout=self.policy.timeout)
        except UpstreamError as exc:
            return False, str(exc)
        return status == 200, f"heartbeat answered {status}"

    def _record_failure(self, reason: str) -> None:
        self.last_failure = reason
        self.last_failure_at = time.time()
        log.error("%s", reason)

    async def _restart(self) -> None:
        self.state = "restarting"
        while not self._stopping:
            delay = 0.0 if self._failures_in_a_row == 0 else min(_BACKOFF_MAX, 2.0 ** (self._failures_in_a_row - 1))
            self._failures_in_a_row += 1
            if delay:
                log.warning("restarting the engine in %.0fs (failure %d in a row)", delay, self._failures_in_a_row)
                await asyncio.sleep(delay)
            try:
                self.engine.kill()
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
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self.state = "stopped"
        await self.engine.stop(timeout)
