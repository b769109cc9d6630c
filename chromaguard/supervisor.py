"""Keeps the engine alive: restarts it at once when it exits, backing off if it keeps dying."""

from __future__ import annotations

import asyncio
import logging
import time

from .engine import EngineProcess
from .errors import StartupError

log = logging.getLogger("chromaguard.supervisor")

_BACKOFF_MAX = 30.0
_STABLE_AFTER = 60.0  # an engine up this long has recovered: the next crash restarts at once again


class Supervisor:
    def __init__(self, engine: EngineProcess, *, ready_timeout: float = 60.0) -> None:
        self.engine = engine
        self.ready_timeout = ready_timeout
        self.state = "stopped"
        self.restarts = 0
        self.last_failure = ""
        self.last_failure_at: float | None = None
        self._stopping = False
        self._failures_in_a_row = 0
        self._watch: asyncio.Task[None] | None = None

    @property
    def available(self) -> bool:
        return self.state == "running" and self.engine.running

    @property
    def unavailable_reason(self) -> str:
        if self.state == "running" and not self.engine.running:
            return "the engine process has exited"
        return {"starting": "the engine is starting", "restarting": "the engine is restarting",
                "stopped": "the engine is stopped"}.get(self.state, self.state)

    async def start(self) -> None:
        self.state = "starting"
        await self.engine.start()
        await self.engine.wait_ready(self.ready_timeout)
        self.state = "running"
        self._watch = asyncio.create_task(self._watch_engine())

    async def _watch_engine(self) -> None:
        while not self._stopping:
            code = await self.engine.wait()
            if self._stopping:
                return
            up_for = time.monotonic() - (self.engine.started_at or time.monotonic())
            self._record_failure(f"engine exited with code {code} after {up_for:.1f}s")
            if up_for > _STABLE_AFTER:
                self._failures_in_a_row = 0
            await self._restart()

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
            self.state = "running"
            log.warning("engine restarted (restart %d)", self.restarts)
            return

    async def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
            try:
                await self._watch
            except asyncio.CancelledError:
                pass
        self.state = "stopped"
        await self.engine.stop(timeout)
