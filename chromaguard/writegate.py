"""Holds write requests for a moment (reads keep flowing) so a snapshot sees a quiet data dir."""

from __future__ import annotations

import asyncio
import time


class HoldTimeout(Exception):
    """In-flight writes did not finish in time; the hold was lifted again."""


class WriteGate:
    def __init__(self) -> None:
        self.in_flight = 0
        self.held = False
        self._open = asyncio.Event()
        self._open.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.held_since: float | None = None

    async def enter(self) -> None:
        """Before a write goes to the engine: wait while a hold is on."""
        while not self._open.is_set():
            await self._open.wait()
        self.in_flight += 1
        self._idle.clear()

    def try_enter(self) -> bool:
        """``enter`` without waiting: False while a hold is on."""
        if not self._open.is_set():
            return False
        self.in_flight += 1
        self._idle.clear()
        return True

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def hold(self, timeout: float) -> None:
        """Stop new writes, then wait until the ones already sent have been answered."""
        if self.held:
            raise HoldTimeout("another snapshot is being taken; try again in a moment")
        self.held = True
        self.held_since = time.monotonic()
        self._open.clear()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            self.release()
            raise HoldTimeout(f"writes still in flight after {timeout:g}s; the hold was lifted") from None

    def release(self) -> float:
        """Let writes go again; returns how long they were held, in seconds."""
        held_for = time.monotonic() - self.held_since if self.held_since is not None else 0.0
        self.held = False
        self.held_since = None
        self._open.set()
        return held_for
