"""A forwarded request's way to the engine and its answer's way back, without a task where none is needed.

Why callbacks: on the common path (a whole request body, a kept-alive engine connection, no
write hold) an asyncio task and its futures cost two extra event-loop turns and tens of
microseconds per request, the largest share of what the front door added to a query
(docs/performance.md). So a relay is sent from the client parser's callback and the answer is
written back from the engine parser's callbacks. A request that must wait first (for a
connection to open, a body still arriving, a hold on writes) awaits ``forward``, which ends
in the same relay: one way to send, answer, time out and retry, whatever started it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Protocol

from ..http11.client import EngineConnection, UpstreamError, UpstreamPool, UpstreamTimeout, UpstreamUnavailable
from ..http11.fields import parse_fields, whole_answer
from ..http11.server import ClientDisconnected
from ..telemetry.attributes import RESPONSE_PARSE_LIMIT, RESULT_OPS, engine_trace_id
from .call import Call

if TYPE_CHECKING:
    from ..http11.fields import Headers
    from ..http11.server import Exchange
    from .writegate import WriteGate

log = logging.getLogger("chromaguard.frontdoor")

_JOIN_BELOW = 64 * 1024  # a body up to this size is joined to its head: one buffer, one write


class Owner(Protocol):
    """What a relay needs from the front door that started it."""

    pool: UpstreamPool
    gate: WriteGate | None
    watch: RelayWatch | None

    def answer_failure(self, exchange: Exchange, exc: UpstreamError) -> None:
        """Note an engine that failed before the answer began, and answer the client if it is there."""

    def relayed(self, call: Call, tap: list[bytes] | None) -> None:
        """The relay is over (answered, failed, or the client left): once per request."""


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

    def discard(self, relay: Relay) -> None:
        self.relays.discard(relay)

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
    """One request forwarded to the engine; its connection calls back as it parses the answer.

    ``head`` is the request head as the engine gets it; ``body`` the whole body in pieces, or
    None when it is streamed (``forward``) and so cannot be sent twice.
    """

    __slots__ = ("owner", "call", "head", "body", "gated", "conn", "since", "progress", "tap", "tap_size",
                 "paused", "uploading", "resent", "done", "_ended", "_resend_task")

    def __init__(self, owner: Owner, call: Call, head: bytes, body: Sequence[bytes] | None, gated: bool) -> None:
        self.owner = owner
        self.call = call
        self.head = head
        self.body = body
        self.gated = gated  # counted in the write gate until the engine answers
        self.conn: EngineConnection | None = None
        self.since = 0.0  # the engine's last sign of life, on the loop's clock
        self.progress = False
        self.tap: list[bytes] | None = None
        self.tap_size = 0
        self.paused = False  # we stopped reading the engine for a slow client
        self.uploading = False  # the body is still being streamed: the connection cannot be reused
        self.resent = False
        self.done = False
        self._ended: asyncio.Future[None] | None = None
        self._resend_task: asyncio.Task[None] | None = None
        call.relay = self

    # ---- sending -------------------------------------------------------------------------------

    def send(self, conn: EngineConnection) -> None:
        """Write the whole request on ``conn`` (kept alive, or just opened)."""
        self.conn = conn
        conn.sink = self
        watch = self.owner.watch
        if watch is not None:
            watch.add(self)
        transport = conn.transport
        assert transport is not None  # an open connection has one
        if transport.is_closing():  # the engine went away after the connection was handed out (killed)
            conn.fail(UpstreamUnavailable("the engine closed the connection before the request was sent"))
            return
        body = self.body
        if not body:
            transport.write(self.head)
        elif len(body) == 1 and len(body[0]) <= _JOIN_BELOW:
            transport.write(self.head + body[0])  # one small write: cheaper joined
        else:
            transport.writelines([self.head, *body])

    async def forward(self, stream: AsyncIterator[bytes] | None = None) -> None:
        """Send from a task: open a connection if none is idle, stream the body if there is
        one (``stream``), and wait for the end of the answer."""
        self._ended = asyncio.get_running_loop().create_future()
        try:
            if not await self._send_on_a_connection(stream):
                return
            await self._ended
        except asyncio.CancelledError:  # the server is stopping hard: the engine connection goes with it
            if self._resend_task is not None:
                self._resend_task.cancel()
            self._abandon()
            raise

    def _abandon(self) -> None:
        """A task carrying this relay was cancelled: its engine connection cannot be trusted."""
        conn = self.conn
        if conn is not None and conn.sink is self:  # else it went back to the pool, or failed: not ours
            conn.sink = None
            conn.close()
        self._over(None)

    async def _send_on_a_connection(self, stream: AsyncIterator[bytes] | None) -> bool:
        pool = self.owner.pool
        try:
            conn = pool.idle() or await pool.connect()
        except UpstreamError as exc:  # nothing was sent
            self._end_with(exc)
            return False
        if stream is None:
            self.send(conn)
        else:
            await self._stream(conn, stream)
        return True

    async def _stream(self, conn: EngineConnection, stream: AsyncIterator[bytes]) -> None:
        """A large body sent as it arrives from the client; the timeout starts once it is all sent."""
        self.conn = conn
        conn.sink = self
        self.uploading = True  # until the whole body is sent, the connection is never reused
        try:
            await conn.writelines((self.head,))
            async for chunk in stream:
                if self.done or conn.got_bytes or conn.sink is not self:  # answered early (a 413, say)
                    conn.alive = False  # the engine has a body it will never see the end of
                    return
                await conn.writelines((chunk,))
        except ClientDisconnected:
            if conn.sink is self:
                conn.fail(UpstreamError("the client went away while sending its body"))
            return
        except UpstreamError:  # the connection failed: its sink has been told
            return
        finally:
            self.uploading = False
            watch = self.owner.watch
            if watch is not None and not self.done:  # the timeout counts from here, whatever came early
                watch.add(self)

    def _resend(self) -> None:
        """A kept-alive connection the engine had just closed: nothing reached it, so the
        request goes again on a fresh one, once."""
        self.resent = True
        self.tap, self.tap_size, self.progress = None, 0, False

        async def again() -> None:
            pool = self.owner.pool
            try:
                try:
                    conn = await pool.connect()
                except UpstreamError as exc:
                    self._end_with(exc)
                    return
                self.send(conn)
                if self._ended is None:  # started from a callback: this task is the exchange's now
                    self._ended = asyncio.get_running_loop().create_future()
                    await self._ended
            except asyncio.CancelledError:
                self._abandon()
                raise

        if self._ended is None:
            self.call.exchange.continue_with(again())
        else:  # ``forward`` waits for the end already
            self._resend_task = asyncio.get_running_loop().create_task(again())

    # ---- the engine's callbacks ----------------------------------------------------------------

    def on_whole(self, data: bytes) -> bool:
        """A whole plain answer in one read goes to the client as the engine wrote it."""
        found = whole_answer(data) if not self.uploading else None  # the engine still has body to read
        if found is None:
            return False
        status, body_at = found
        call = self.call
        if call.span is not None:  # its facts, as ``on_head`` and ``on_body`` would have collected them
            tap = _tap_for(call, parse_fields(data[data.find(b"\r\n") + 2:body_at - 2]))
            if tap is not None and len(data) - body_at <= RESPONSE_PARSE_LIMIT:
                tap.append(data[body_at:])
                self.tap = tap
        if not call.exchange.pass_on(status, data, body_at):
            self.tap = None
            return False
        conn = self.conn
        assert conn is not None
        conn.sink = None
        conn.complete = True
        self.owner.pool.release(conn)
        self._over(self.tap)
        return True

    def on_head(self, conn: EngineConnection) -> None:
        self._leave_gate()  # the engine has answered: this write is no longer in flight
        call = self.call
        if call.span is not None:
            self.tap = _tap_for(call, conn.headers)
        exchange = call.exchange
        exchange.start(conn.status, conn.relayed, conn.content_length)
        if exchange.method == "HEAD":
            # The parser cannot skip a HEAD answer's announced body: the answer ends here, and
            # the connection with it.
            conn.sink = None
            conn.close()
            self.on_complete()

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
        conn = self.conn
        if exchange.write_paused and conn is not None and conn.transport is not None and not self.paused:
            # The client reads slower than the engine answers: stop reading the engine until it catches up.
            self.paused = True
            conn.transport.pause_reading()
            exchange.when_writable(self._resume)

    def on_complete(self) -> None:
        self._resume()  # the connection goes back to the pool reading, whatever the client does
        self.call.exchange.end()
        conn = self.conn
        assert conn is not None
        if self.uploading:
            conn.alive = False
        self.owner.pool.release(conn)
        self._over(self.tap)

    def on_error(self, exc: BaseException) -> None:
        if self.done:
            return
        conn = self.conn
        if (self.body is not None and not self.resent and conn is not None and conn.resendable(exc)
                and not self.call.exchange.disconnected):
            watch = self.owner.watch
            if watch is not None:
                watch.discard(self)
            self._resend()
            return
        self._end_with(exc if isinstance(exc, UpstreamError) else UpstreamError(str(exc)))

    def check(self, now: float, timeout: float) -> None:
        """Called by the watch: fail the request once the engine has been silent for ``timeout``."""
        if self.done:
            self.owner.watch.discard(self)  # type: ignore[union-attr]
        elif self.progress or self.paused:  # bytes came, or we are the ones waiting (for the client)
            self.progress = False
            self.since = now
        elif now - self.since >= timeout and self.conn is not None:
            self.conn.fail(UpstreamTimeout("upstream did not answer in time"))

    # ---- the end -------------------------------------------------------------------------------

    def _end_with(self, exc: UpstreamError) -> None:
        exchange = self.call.exchange
        if not exchange.response_started:
            self.owner.answer_failure(exchange, exc)
        else:
            log.warning("upstream failed mid-response on %s %s: %s", exchange.method, exchange.path, exc)
            exchange.abort()  # the head is out: cutting the connection tells the client
        self._over(None)

    def _over(self, tap: list[bytes] | None) -> None:
        if self.done:
            return
        self.done = True
        self.paused = False
        self._leave_gate()
        watch = self.owner.watch
        if watch is not None:
            watch.discard(self)
        self.owner.relayed(self.call, tap)
        ended = self._ended
        if ended is not None and not ended.done():
            ended.set_result(None)

    def _resume(self) -> None:
        if self.paused:
            self.paused = False
            transport = self.conn.transport if self.conn is not None else None
            if transport is not None and not transport.is_closing():
                transport.resume_reading()

    def _leave_gate(self) -> None:
        if self.gated:
            self.gated = False
            gate = self.owner.gate
            assert gate is not None  # gated: there is one
            gate.leave()


def _tap_for(call: Call, headers: Headers) -> list[bytes] | None:
    """Note the engine's trace id; collect the answer's body when the span wants facts from it."""
    call.engine_trace = engine_trace_id(headers)
    route = call.route
    return [] if route is not None and route.operation in RESULT_OPS else None
