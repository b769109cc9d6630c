"""The supervisor on a virtual clock: a fake engine, scripted probe results, no real sleeps."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from pathlib import Path

from chromaguard.engine.supervisor import HealthPolicy, Probe, Supervisor
from chromaguard.errors import StartupError


class FakeTime:
    """Virtual time: ``sleep`` waits for ``advance``; ``run_until`` moves time to the next sleeper
    whenever the event loop has nothing else to do."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._seq), future))
        await future

    async def run_until(self, condition: Callable[[], bool], *, before: float = 10_000.0) -> None:
        while True:
            for _ in range(50):  # let everything that is ready run first
                if condition():
                    return
                await asyncio.sleep(0)
            while self._sleepers and self._sleepers[0][2].done():  # cancelled sleeps
                heapq.heappop(self._sleepers)
            assert self._sleepers, "nothing left to wait for"
            due, _, future = heapq.heappop(self._sleepers)
            assert due <= before, f"not reached by t={before}"
            self.now = max(self.now, due)
            future.set_result(None)


class FakeEngine:
    def __init__(self, now: Callable[[], float]) -> None:
        self.url = "http://127.0.0.1:9"
        self.data_dir = Path(".")
        self.pid = 1
        self.started_at: float | None = None
        self.starts = 0
        self.kills: list[float] = []
        self.fail_ready = 0  # this many starts in a row fail
        self.ready_timeouts: list[float] = []
        self.stop_timeouts: list[float] = []
        self.ready: asyncio.Event | None = None  # when set: start-up waits for it
        self._now = now
        self._exit: asyncio.Future[int] | None = None

    @property
    def running(self) -> bool:
        return self._exit is not None and not self._exit.done()

    async def start(self) -> None:
        self.starts += 1
        self.pid += 1
        self._exit = asyncio.get_running_loop().create_future()

    async def wait_ready(self, timeout: float) -> None:
        self.ready_timeouts.append(timeout)
        if self.ready is not None:
            await self.ready.wait()
        if self.fail_ready:
            self.fail_ready -= 1
            self.exit(1)
            raise StartupError("the Chroma engine exited during start-up (code 1)")

    async def wait(self) -> int:
        while True:
            assert self._exit is not None
            exit_ = self._exit
            code = await exit_
            if exit_ is self._exit:
                return code

    def exit(self, code: int) -> None:
        if self.running:
            assert self._exit is not None
            self._exit.set_result(code)

    def kill(self) -> None:
        if self.running:
            self.kills.append(self._now())
            self.exit(-9)

    async def stop(self, timeout: float) -> None:
        self.stop_timeouts.append(timeout)
        self.exit(0)


class Scripted:
    """Probe results in order, then the last one forever."""

    def __init__(self, *results: Probe) -> None:
        self.results = list(results)
        self.calls = 0

    async def __call__(self) -> Probe:
        self.calls += 1
        return self.results.pop(0) if len(self.results) > 1 else self.results[0]


OK = Probe(True, "heartbeat and a read of a collection answered")
NO_BEAT = Probe(False, "no heartbeat within 2s", stuck=True)
NO_READ = Probe(False, "a read of a collection got no answer within 8s (the heartbeat did)", stuck=True,
                data_path=True)


def supervised(probe: Scripted, *, policy: HealthPolicy, room: list[bool] | None = None,
                ) -> tuple[Supervisor, FakeEngine, FakeTime]:
    fake = FakeTime()
    engine = FakeEngine(fake.clock)
    rooms = room if room is not None else [True]

    async def has_room() -> tuple[bool, str]:
        return (True, "500 MiB free under the data dir") if rooms[0] else (False, "0.2 MiB free under the data dir")

    sup = Supervisor(engine, policy=policy, clock=fake.clock, sleep=fake.sleep, probe=probe,  # type: ignore[arg-type]
                     room=has_room)
    return sup, engine, fake


class FakePool:
    """The data path's pool as the supervisor sees it: requests waiting on the engine."""

    def __init__(self) -> None:
        self.requests: dict[str, object] = {}
        self.aborted: list[tuple[str, str]] = []

    def wait_on_engine(self, name: str) -> None:
        self.requests[name] = object()

    def waiting(self) -> list[tuple[str, object]]:
        return list(self.requests.items())

    def abort(self, conns: list[str], reason: str) -> int:
        for conn in conns:
            del self.requests[conn]
            self.aborted.append((conn, reason))
        return len(conns)
