"""Holds write requests for a moment (reads keep flowing) so a snapshot sees a quiet data dir.

One hold at a time: ``hold`` closes the gate to new writes, waits for the writes already
sent to be answered, and returns a ``Hold`` whose ``release`` opens the gate again. Every
way out of ``hold`` other than success (the wait timing out, the caller being cancelled)
opens the gate itself, and ``Hold.release`` is idempotent and never opens a later hold.
"""

from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger("chromaguard.backup")
LEAVE_WITHOUT_ENTER = "write gate: leave() without a matching enter(); ignored"


class HoldTimeout(Exception):
    """In-flight writes did not finish in time; the hold was lifted again."""


class HoldBusy(HoldTimeout):
    """Another hold is on: holds never nest or overlap."""


class Hold:
    """One hold on the gate, from ``WriteGate.hold``: ``release`` it exactly when done (a
    second release, or one after the gate moved on to another hold, does nothing)."""

    __slots__ = ("_gate", "since")

    def __init__(self, gate: WriteGate) -> None:
        self._gate = gate
        self.since = time.monotonic()

    @property
    def active(self) -> bool:
        return self._gate.current is self

    def release(self) -> float:
        """Let writes go again; returns how long they were held, in seconds (0 if already released)."""
        if not self.active:
            return 0.0
        self._gate.current = None
        self._gate._open.set()
        return time.monotonic() - self.since


class WriteGate:
    def __init__(self) -> None:
        self.in_flight = 0
        self.current: Hold | None = None  # the hold that is on
        self._open = asyncio.Event()
        self._open.set()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def held(self) -> bool:
        return self.current is not None

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
        """A write that entered has been answered (or failed)."""
        if self.in_flight <= 0:  # a bug elsewhere; going negative would make every later hold wait forever
            log.error(LEAVE_WITHOUT_ENTER)
            return
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def hold(self, timeout: float) -> Hold:
        """Stop new writes, then wait until the ones already sent have been answered.

        Raises HoldBusy while another hold is on, HoldTimeout (gate open again) when the
        writes in flight take longer than ``timeout``; cancelled, it opens the gate too."""
        if self.current is not None:
            raise HoldBusy("another snapshot is holding writes; try again in a moment")
        handle = self.current = Hold(self)
        self._open.clear()
        try:
            if self.in_flight:
                await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            waiting = self.in_flight
            handle.release()
            raise HoldTimeout(f"{waiting} write(s) still in flight after {timeout:g}s; "
                              "the hold was lifted, writes go on") from None
        except BaseException:
            handle.release()
            raise
        return handle
