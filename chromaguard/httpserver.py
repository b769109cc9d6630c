"""chromaguard's HTTP/1.1 server: httptools parsing, one task per request, no ASGI layer.

Why our own: on two cores the ASGI machinery (a scope dict, message dicts, per-message
checks, a second write per response) cost more CPU per proxied request than everything
else the front door does (BENCHMARKS.md). A proxy needs a request head, its body, and a
writer that sends a response's head and body in one go.

What it does: keep-alive and pipelining (answered in order), request bodies streamed with
back-pressure, ``Expect: 100-continue``, chunked responses when the length is unknown, a
32 KiB limit on a request head (431), malformed requests answered 400 and the connection
closed, idle connections closed after ``keep_alive`` seconds, and a graceful stop that lets
requests in flight finish.
"""

from __future__ import annotations

import asyncio
import collections
import http
import json
import logging
import time
from typing import Any, AsyncIterator, Callable, Coroutine, Iterable
from urllib.parse import unquote

import httptools

log = logging.getLogger("chromaguard.http")

Headers = list[tuple[bytes, bytes]]
# Called in the parser's callback: answers at once (or starts a callback-driven relay) and
# returns None, or returns a coroutine that the server runs as the request's task.
Handler = Callable[["Exchange"], "Coroutine[Any, Any, None] | None"]
# Offered each read that starts a request on an idle connection: True when it took the
# request (and became the connection's current request), False to leave it to the parser.
FastPath = Callable[["_Connection", bytes], bool]

MAX_HEAD_BYTES = 32 * 1024
DISPATCH_WHOLE_BELOW = 1 << 20  # a request body up to this size is read whole before the handler runs
_BODY_HIGH_WATER = 1 << 20  # stop reading a client when this much of its body waits unread
_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in http.HTTPStatus}
_NO_BODY_STATUS = frozenset({204, 304})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class ClientDisconnected(Exception):
    """The client went away before its request body was whole."""


class _HeadTooLarge(Exception):
    pass


class Exchange:
    """One request and the writer of its response."""

    __slots__ = ("method", "raw_path", "path", "query", "headers", "client", "server", "http_version",
                 "keep_alive", "status", "extra_headers", "_conn", "_chunks", "_buffered", "_body_done",
                 "_waiter", "_expect", "_head", "_chunked", "_started", "_finished", "_reject", "_gone", "_head_only")

    def __init__(self, conn: "_Connection", method: str, url: bytes, headers: Headers, http_version: str,
                 keep_alive: bool, expect_continue: bool) -> None:
        raw_path, _, query = url.partition(b"?")
        self.method = method
        self.raw_path = raw_path
        text = raw_path.decode("latin-1")
        self.path = unquote(text) if "%" in text else text
        self.query = query
        self.headers = headers
        self.client = conn.client
        self.server = conn.sockname
        self.http_version = http_version
        self.keep_alive = keep_alive
        self.status = 0
        self.extra_headers: Headers | None = None  # added to the response head (CORS)
        self._conn = conn
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._body_done = False
        self._waiter: asyncio.Future[None] | None = None
        self._expect = expect_continue
        self._head: bytes | None = None
        self._chunked = False
        self._started = False
        self._finished = False
        self._gone = False
        self._head_only = method == "HEAD"
        self._reject: tuple[int, str] | None = None
        if not raw_path.startswith(b"/"):
            self._reject = (400, "the request target must be a path starting with /")

    @classmethod
    def received(cls, conn: "_Connection", method: str, url: bytes, headers: Headers, keep_alive: bool,
                 body: bytes = b"") -> "Exchange":
        """A request that was read whole without the parser (the front door's fast path)."""
        exchange = cls(conn, method, url, headers, "1.1", keep_alive, False)
        if body:
            exchange._chunks.append(body)
            exchange._buffered = len(body)
        exchange._body_done = True
        return exchange

    # ---- request body ------------------------------------------------------------------------

    @property
    def body_complete(self) -> bool:
        return self._body_done

    @property
    def disconnected(self) -> bool:
        return self._gone

    def take_body(self) -> bytes:
        """What has arrived of the body (all of it once ``body_complete``)."""
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)  # the relay's path: no list made
        self._taken()
        return data

    def _take_parts(self) -> list[bytes]:
        parts = list(self._chunks)
        self._taken()
        return parts

    def _taken(self) -> None:
        self._chunks.clear()
        paused = self._buffered > _BODY_HIGH_WATER
        self._buffered = 0
        if paused:
            self._conn.update_reading()

    async def body_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; ClientDisconnected if the client leaves before its end."""
        self._send_continue()
        while True:
            if self._chunks:
                yield self.take_body()
                continue
            if self._body_done:
                return
            if self._gone:
                raise ClientDisconnected()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def read_body(self, limit: int) -> bytes | None:
        """The whole body, or None when it is longer than ``limit`` bytes."""
        parts = await self.read_body_parts(limit)
        if parts is None:
            return None
        return b"".join(parts)  # one piece comes back as it is, not copied

    async def read_body_parts(self, limit: int) -> list[bytes] | None:
        """The whole body in the pieces it arrived in, or None when it is longer than ``limit``.

        Why pieces: joining a body of megabytes is a copy into fresh memory, page faults
        included, about 5 ms for an 8 MB add here; the pieces can go on as they are.
        """
        if self._body_done:
            parts = self._take_parts()
            return parts if sum(map(len, parts)) <= limit else None
        parts = []
        size = 0
        async for chunk in self.body_chunks():
            size += len(chunk)
            if size > limit:
                return None
            parts.append(chunk)
        return parts

    def _send_continue(self) -> None:
        if self._expect and not self._body_done and not self._started:
            self._conn.write(_CONTINUE)
        self._expect = False

    def _feed(self, chunk: bytes) -> None:
        if self._finished:  # answered without reading it: the rest is dropped
            return
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > _BODY_HIGH_WATER:
            self._conn.update_reading()
        self._wake()

    def _complete(self) -> None:
        self._body_done = True
        self._wake()

    def _disconnect(self) -> None:
        self._gone = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def reading_paused(self) -> bool:
        return self._buffered > _BODY_HIGH_WATER

    # ---- response ----------------------------------------------------------------------------

    @property
    def response_started(self) -> bool:
        return self._started

    def start(self, status: int, headers: Iterable[tuple[bytes, bytes]], content_length: int | None = None) -> None:
        """Begin the response; the head leaves with the first body bytes (one write, not two).

        ``headers`` must not carry content-length, transfer-encoding or connection: the
        server writes those from ``content_length`` and the connection's state.
        """
        if self._started:
            raise RuntimeError("response already started")
        self._started = True
        self.status = status
        parts = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        if self.extra_headers:
            for name, value in self.extra_headers:
                parts += (name, b": ", value, b"\r\n")
        if content_length is not None:
            parts.append(b"content-length: %d\r\n" % content_length)
        elif status >= 200 and status not in _NO_BODY_STATUS and not self._head_only:
            if self.http_version == "1.1":
                self._chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
            else:  # HTTP/1.0: the end of the body is the end of the connection
                self.keep_alive = False
        if self._expect and not self._body_done:  # the client may still send the body it announced
            self.keep_alive = False
        if self._conn.server.stopping or self._conn.closing:
            self.keep_alive = False
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        elif self.http_version == "1.0":
            parts.append(b"connection: keep-alive\r\n")
        parts.append(b"\r\n")
        self._head = b"".join(parts)

    def write(self, data: bytes) -> None:
        if not data or self._head_only or self._finished:
            return
        if self._chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        head = self._head
        if head is not None:
            self._head = None
            data = head + data
        self._conn.write(data)

    async def drain(self) -> None:
        """Wait while the client reads slower than we write."""
        await self._conn.drain()

    @property
    def write_paused(self) -> bool:
        return self._conn.write_paused

    def continue_with(self, work: Coroutine[Any, Any, None]) -> None:
        """Finish this exchange in a task (a handler that began in a callback needs to wait)."""
        self._conn.adopt(self, work)

    def abort(self) -> None:
        """Cut the connection: how a client learns a response that had begun has failed."""
        self._conn.abort()

    def when_writable(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the client has read what was written (or has gone)."""
        self._conn.when_writable(callback)

    def end(self) -> None:
        if self._finished:
            return
        if not self._started:
            raise RuntimeError("response not started")
        out = self._head or b""
        self._head = None
        if self._chunked:
            out += b"0\r\n\r\n"
        if out:
            self._conn.write(out)
        self._finished = True
        if self._chunks:  # answered without reading all of it
            self._chunks.clear()
            self._buffered = 0
        self._conn.response_done(self)

    def respond(self, status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes) -> None:
        self.start(status, headers, len(body))
        self.write(body)
        self.end()

    def respond_json(self, status: int, payload: object, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
        self.respond(status, [(b"content-type", b"application/json"), *headers], body)

    def respond_error(self, status: int, error: str, message: str,
                      headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        """An error in the shape Chroma itself uses, so the official client shows the message."""
        self.respond_json(status, {"error": error, "message": message}, headers)


def parse_fields(block: bytes) -> Headers:
    """Header lines (each ending in CRLF, checked already) as the parser gives them:
    names in lower case, values without the blanks around them."""
    fields = []
    for line in block.split(b"\r\n")[:-1]:
        name, _, value = line.partition(b":")
        fields.append((name.lower(), value.strip(b" \t")))
    return fields


class _Connection(asyncio.Protocol):
    """One client connection: parses requests, runs one at a time, in order."""

    def __init__(self, server: "HttpServer") -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client = ""
        self.sockname: tuple[str, int] | None = None
        self.current: Exchange | None = None  # being answered
        self.diverted: Any = None  # taken by the fast path, its body still arriving
        self._fast = server.fast
        self._between = True  # the parser is between two requests
        self.receiving: Exchange | None = None  # its request still arriving
        self.pipeline: collections.deque[Exchange] = collections.deque()
        self.task: asyncio.Task[None] | None = None
        self.closing = False
        self.upgraded = False
        self.last_active = time.monotonic()
        self._write_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._on_writable: Callable[[], None] | None = None
        self._reading = True
        self._url: list[bytes] = []
        self._headers: Headers = []
        self._head_bytes = 0
        self._expect = False
        self._length = -1
        self._chunked = False
        self._broken: tuple[int, str] | None = None
        self._next_scheduled = False

    # ---- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if isinstance(peer, tuple) else ""
        sockname = transport.get_extra_info("sockname")
        self.sockname = (sockname[0], sockname[1]) if isinstance(sockname, tuple) else None
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.connections.discard(self)
        for exchange in (self.current, self.receiving, self.diverted, *self.pipeline):
            if exchange is not None:
                exchange._disconnect()
        self.pipeline.clear()
        self._writable()

    def eof_received(self) -> bool:
        receiving = self.receiving or self.diverted
        if receiving is not None:  # the rest of its request will never come
            receiving._disconnect()
            return False
        # A client may half-close after a whole request: answer it, then close.
        if self.current is not None:
            self.current.keep_alive = False
            return True
        return False

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        if self.upgraded:
            return
        if self.diverted is not None:  # the fast path's request: the rest of its body, maybe more
            data = self.diverted.more(data)
            if not data:
                return
        elif self.current is None and self._between and self._fast is not None and not self.pipeline:
            if self._fast(self, data):
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Chroma speaks no other protocol: the request is served as HTTP/1.1, then we close.
            self.upgraded = True
            busy = False
            for exchange in (self.current, self.receiving, *self.pipeline):
                if exchange is not None:
                    exchange.keep_alive = False
                    busy = True
            if not busy:  # already answered
                self.close()
        except _HeadTooLarge:
            self._fail(431, f"the request head is larger than {MAX_HEAD_BYTES} bytes")
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._fail(431, f"the request head is larger than {MAX_HEAD_BYTES} bytes")
            else:
                self._fail(400, f"malformed HTTP request ({exc})")

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._writable()

    def _writable(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        callback, self._on_writable = self._on_writable, None
        if callback is not None:
            callback()

    @property
    def write_paused(self) -> bool:
        return self._write_paused and not self.closing

    def when_writable(self, callback: Callable[[], None]) -> None:
        if self.write_paused:
            self._on_writable = callback
        else:
            callback()

    # ---- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._between = False
        self._url = []
        self._headers = []
        self._head_bytes = 0
        self._expect = False
        self._length = -1
        self._chunked = False

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._head_bytes += len(url)
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge()
        name = name.lower()
        if name == b"content-length":
            self._length = int(value) if value.isdigit() else -1
        elif name == b"transfer-encoding":
            self._chunked = True
        elif name == b"expect" and value.lower() == b"100-continue":
            self._expect = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        url = self._url[0] if len(self._url) == 1 else b"".join(self._url)
        exchange = Exchange(self, parser.get_method().decode("ascii", "replace"), url, self._headers,
                            parser.get_http_version(), parser.should_keep_alive(), self._expect)
        self.receiving = exchange
        if self.current is not None:
            self.pipeline.append(exchange)
            self.update_reading()
        elif self._expect or self._chunked or self._length > DISPATCH_WHOLE_BELOW:
            self._run(exchange)  # the handler reads the body as it comes
        # else: no body, or a small one most likely in this very read: the handler starts with all of it

    def on_body(self, body: bytes) -> None:
        if self.receiving is not None:
            self.receiving._feed(body)

    def on_message_complete(self) -> None:
        self._between = True
        exchange = self.receiving
        if exchange is not None:
            self.receiving = None
            exchange._complete()
            if self.current is None and not self.pipeline and not exchange._finished:
                self._run(exchange)  # held back until its body was whole
            self.update_reading()

    # ---- running requests --------------------------------------------------------------------

    def _run(self, exchange: Exchange) -> None:
        self.current = exchange
        if exchange._reject is not None:
            status, message = exchange._reject
            exchange.keep_alive = False
            exchange.respond_error(status, "InvalidArgumentError", f"chromaguard: {message}")
            return
        try:
            work = self.server.handler(exchange)
        except Exception:
            log.exception("unhandled error answering %s %s", exchange.method, exchange.path)
            self.failed(exchange)
            return
        if work is not None:
            self.adopt(exchange, work)

    def adopt(self, exchange: Exchange, work: Coroutine[Any, Any, None]) -> None:
        self.task = self.loop.create_task(self._handle(exchange, work))

    async def _handle(self, exchange: Exchange, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except Exception:
            log.exception("unhandled error answering %s %s", exchange.method, exchange.path)
        finally:
            if not exchange._finished:
                self.failed(exchange)

    def failed(self, exchange: Exchange) -> None:
        """The handler stopped without finishing its response."""
        if exchange._finished:
            return
        if not exchange._started:
            exchange.keep_alive = False
            if self._broken is not None:
                exchange.respond_error(self._broken[0], "InvalidArgumentError", f"chromaguard: {self._broken[1]}")
            else:
                exchange.respond_error(500, "InternalError", "chromaguard: internal error; see the server log")
        else:  # the head is out: cutting the connection is how the client learns it failed
            self.abort()

    def response_done(self, exchange: Exchange) -> None:
        if self.current is exchange:
            self.current = None
            self.task = None
        if not exchange.keep_alive or self.closing or self.server.stopping:
            self.close()
            return
        if self.pipeline and not self._next_scheduled:
            # Not from here: answers given at once would otherwise nest one call deeper each.
            self._next_scheduled = True
            self.loop.call_soon(self._run_next)
        if self.pipeline or self.receiving is not None or not self._reading:  # else reading is on, as it should be
            self.update_reading()

    def _run_next(self) -> None:
        self._next_scheduled = False
        if self.current is None and self.pipeline and not self.closing:
            self._run(self.pipeline.popleft())
            self.update_reading()

    def update_reading(self) -> None:
        """Read from the client unless requests queue up behind one or a body waits unread."""
        transport = self.transport
        if transport is None or self.closing:
            return
        receiving = self.receiving
        want = not self.pipeline and (receiving is None or not receiving.reading_paused)
        if want != self._reading:
            self._reading = want
            if want:
                transport.resume_reading()
            else:
                transport.pause_reading()

    def write(self, data: bytes) -> None:
        if not self.closing and self.transport is not None:
            self.transport.write(data)

    async def drain(self) -> None:
        if self._write_paused and not self.closing:
            self._drained = self.loop.create_future()
            await self._drained

    def _fail(self, status: int, message: str) -> None:
        """A request we cannot parse: answer it if it is the client's turn, and close."""
        self.upgraded = True  # ignore whatever else arrives
        log.info("refused a request from %s: %s", self.client or "?", message)
        self.pipeline.clear()
        current, receiving = self.current, self.receiving
        self.receiving = None
        if current is None:
            if self.transport is not None:
                exchange = Exchange(self, "GET", b"/", [], "1.1", False, False)
                self.current = exchange
                exchange.respond_error(status, "InvalidArgumentError", f"chromaguard: {message}")
            return
        # A request is being answered while its own body (or what followed it) is broken:
        # whoever waits for that body learns it will not come; the answer is this error.
        current.keep_alive = False
        self._broken = (status, message)
        for exchange in (current, receiving):
            if exchange is not None:
                exchange._disconnect()

    def close(self) -> None:
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    @property
    def idle(self) -> bool:
        return self.current is None and self.receiving is None and self.diverted is None and not self.pipeline


class HttpServer:
    """Serves ``handler`` on a listening socket until ``stop``; lets requests in flight finish."""

    def __init__(self, handler: Handler, *, keep_alive: float = 75.0, drain_timeout: float = 30.0,
                 fast: FastPath | None = None) -> None:
        self.handler = handler
        self.fast = fast
        self.keep_alive = keep_alive
        self.drain_timeout = drain_timeout
        self.connections: set[_Connection] = set()
        self.stopping = False
        self._stop = asyncio.Event()
        self._force = False

    def stop(self, *, force: bool = False) -> None:
        """Stop accepting; ``force`` also cuts requests in flight (a second signal)."""
        self.stopping = True
        self._force = self._force or force
        self._stop.set()

    async def serve(self, sock: object) -> None:
        loop = asyncio.get_running_loop()
        listener = await loop.create_server(lambda: _Connection(self), sock=sock, backlog=2048)  # type: ignore[arg-type]
        sweeper = loop.create_task(self._sweep())
        try:
            await self._stop.wait()
        finally:
            sweeper.cancel()
            listener.close()
            await self._drain()
            await listener.wait_closed()

    async def _drain(self) -> None:
        for conn in list(self.connections):
            if conn.idle:
                conn.close()
        deadline = time.monotonic() + self.drain_timeout
        while self.connections and not self._force and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            for conn in list(self.connections):
                if conn.idle:
                    conn.close()
        if self.connections:
            log.warning("stopping with %d connection(s) still busy: cut", len(self.connections))
        tasks = [conn.task for conn in self.connections if conn.task is not None]
        for conn in list(self.connections):
            conn.abort()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)

    async def _sweep(self) -> None:
        """Close connections that have sent nothing for ``keep_alive`` seconds between requests."""
        while True:
            await asyncio.sleep(min(5.0, self.keep_alive))
            limit = time.monotonic() - self.keep_alive
            for conn in list(self.connections):
                if conn.current is None and not conn.pipeline and conn.last_active < limit:
                    conn.close()
