"""Forwarding without a task: the request leaves for the engine from the client parser's
callback, and the response is written back from the engine parser's callbacks.

Why: on the common path (a whole request body, a kept-alive engine connection, no write
hold) an asyncio task and its futures cost two extra event-loop turns and tens of
microseconds per request, the largest share of what the front door added to a query
(BENCHMARKS.md). Anything else (a connection to open, a body still arriving, a hold on
writes, endpoints answered here) takes the front door's async path.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from .spanattrs import RESPONSE_PARSE_LIMIT
from .upstream import EngineConnection, UpstreamError, UpstreamPool, UpstreamTimeout

if TYPE_CHECKING:
    from .frontdoor import Call, FrontDoor

log = logging.getLogger("chromaguard.frontdoor")


class RelayWatch:
    """One timer for every relay in flight: the engine's silence is checked a few times per
    timeout, instead of a timer armed and cancelled per request (about 2 µs each)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.tick = min(1.0, timeout / 4)
        self.relays: set[Relay] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None

    def add(self, relay: Relay) -> None:
        self.relays.add(relay)
        loop = self._loop
        # The running loop is asked for only to arm the timer: on Python 3.11 each
        # get_running_loop() is a getpid system call, one per request otherwise.
        if self._handle is None or loop is None or loop.is_closed():  # none yet, or one left on a loop that ended
            loop = self._loop = asyncio.get_running_loop()
            self._handle = loop.call_later(self.tick, self._sweep)
        relay.since = loop.time()

    def _sweep(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        try:
            for relay in list(self.relays):
                try:
                    relay.check(now, self.timeout)
                except Exception:  # one request's failure must not end the others' timeouts
                    self.relays.discard(relay)
                    log.exception("could not time out a request to the engine")
        finally:
            self._handle = loop.call_later(self.tick, self._sweep) if self.relays else None


class Relay:
    """One request in flight to the engine; the upstream connection calls back as it parses."""

    __slots__ = ("door", "call", "pool", "conn", "gated", "since", "progress", "tap", "tap_size",
                 "request", "paused", "done")

    def __init__(self, door: FrontDoor, call: Call, pool: UpstreamPool, conn: EngineConnection, gated: bool) -> None:
        self.door = door
        self.call = call
        self.pool = pool
        self.conn = conn
        self.gated = gated
        self.since = 0.0  # the engine's last sign of life, on the loop's clock
        self.progress = False
        self.tap: list[bytes] | None = None
        self.tap_size = 0
        self.request: tuple[str, bytes, list[tuple[bytes, bytes]], bytes] | None = None
        self.paused = False  # we stopped reading the engine for a slow client
        self.done = False

    def send(self, method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.request = (method, target, headers, body)
        watch = self.door.watch
        if watch is not None:
            watch.add(self)
        self.pool.send_now(self.conn, self, method, target, headers, body)

    # ---- upstream callbacks ------------------------------------------------------------------

    def on_head(self, conn: EngineConnection) -> None:
        self._leave_gate()  # the engine has answered: this write is no longer in flight
        call = self.call
        if call.span is not None:
            self.tap = self.door._tap_for(call, conn.headers)
        call.exchange.start(conn.status, conn.relayed, conn.content_length)

    def on_body(self, chunk: bytes) -> None:
        exchange = self.call.exchange
        self.progress = True  # the timeout counts from the last bytes the engine sent
        if self.tap is not None:
            self.tap_size += len(chunk)
            if self.tap_size <= RESPONSE_PARSE_LIMIT:
                self.tap.append(chunk)
            else:
                self.tap = None
        exchange.write(chunk)
        if exchange.write_paused and self.conn.transport is not None and not self.paused:
            # The client reads slower than the engine answers: stop reading the engine until it catches up.
            self.paused = True
            self.conn.transport.pause_reading()
            exchange.when_writable(self._resume)

    def _resume(self) -> None:
        if self.paused:
            self.paused = False
            transport = self.conn.transport
            if transport is not None and not transport.is_closing():
                transport.resume_reading()

    def on_complete(self) -> None:
        self._unwatch()
        self.done = True
        self._resume()  # the connection goes back to the pool reading, whatever the client does
        exchange = self.call.exchange
        exchange.end()
        self.pool.release(self.conn)
        self.door._relayed(self.call, self.tap)

    def on_error(self, exc: BaseException) -> None:
        self._unwatch()
        self.done = True
        self.paused = False
        conn = self.conn
        if (conn.used and not conn.got_bytes and not isinstance(exc, UpstreamTimeout)
                and self.request is not None):
            # A kept-alive connection the engine had just closed: nothing reached it, so the
            # request goes again on a fresh connection (the async path opens one).
            method, target, headers, body = self.request
            self.door.retry(self.call, method, target, headers, body, self.gated)
            return
        self._leave_gate()
        exchange = self.call.exchange
        if not exchange.response_started:
            self.door._upstream_failed(exchange, exc if isinstance(exc, UpstreamError) else UpstreamError(str(exc)))
        else:
            exchange.abort()  # the head is out: cutting the connection tells the client
        self.door._relayed(self.call, None)

    # ---- internals ---------------------------------------------------------------------------

    def _leave_gate(self) -> None:
        if self.gated:
            self.gated = False
            self.door.gate.leave()  # type: ignore[union-attr]

    def _unwatch(self) -> None:
        watch = self.door.watch
        if watch is not None:
            watch.relays.discard(self)

    def check(self, now: float, timeout: float) -> None:
        """Called by the watch: fail the request once the engine has been silent for ``timeout``."""
        if self.done:
            self._unwatch()
        elif self.progress or self.paused:  # bytes came, or we are the ones waiting (for the client)
            self.progress = False
            self.since = now
        elif now - self.since >= timeout:
            self.conn._fail(UpstreamTimeout("upstream did not answer in time"))
