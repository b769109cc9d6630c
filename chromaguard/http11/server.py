"""chromaguard's HTTP/1.1 server: httptools parsing, one task per request, no ASGI layer.

Why our own: on two cores the ASGI machinery (a scope dict, message dicts, per-message
checks, a second write per response) cost more CPU per proxied request than everything
else the front door does (docs/performance.md). A proxy needs a request head, its body, and a
writer that sends a response's head and body in one go.

What it does: keep-alive and pipelining (answered in order), request bodies streamed with
back-pressure, ``Expect: 100-continue``, chunked responses when the length is unknown, a
32 KiB limit on a request head (431), malformed requests answered 400 and the connection
closed, idle connections closed after ``keep_alive`` seconds, and a graceful stop that lets
requests in flight finish.

Slow clients (a request trickled a byte at a time holds a descriptor for as long as it likes,
and enough of them lock everyone else out) meet three limits, all checked at accept or by the
sweep once a second, none per byte:

- a request head must be whole ``head_timeout`` seconds after its first byte arrived (the first
  request of a connection: after the accept); bytes arriving do not extend it. Past it the
  client gets 408 and a close (a connection that sent nothing is closed without a word);
- a request body must keep coming at ``body_min_rate`` bytes a second on average, after a grace
  of ``head_timeout`` seconds (mod_reqtimeout's rule); time while we hold the body back (reading
  paused, 100-continue not sent yet) does not count. Past it: 408 if the handler has not begun,
  else the connection is closed, which the handler sees as the client leaving;
- at most ``max_connections_per_client`` open connections per client address (IPv6: per /64);
  one more is answered 503 and closed; and no more client connections than the descriptor limit
  (RLIMIT_NOFILE) less a reserve for the engine connections, files and reloads: past it new
  connections are answered 503 and closed (one warning says so), until connections close.
"""

from __future__ import annotations

import asyncio
import collections
import http
import ipaddress
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from ssl import SSLContext
from typing import Any
from urllib.parse import unquote

import httptools

from .fields import NO_BODY_STATUS, Headers

try:
    import resource
except ImportError:  # pragma: no cover - not on Linux
    resource = None  # type: ignore[assignment]

log = logging.getLogger("chromaguard.http")

# Called in the parser's callback: answers at once (or starts a callback-driven relay) and
# returns None, or returns a coroutine that the server runs as the request's task.
Handler = Callable[["Exchange"], "Coroutine[Any, Any, None] | None"]

MAX_HEAD_BYTES = 32 * 1024
DISPATCH_WHOLE_BELOW = 1 << 20  # a request body up to this size is read whole before the handler runs
_BODY_HIGH_WATER = 1 << 20  # stop reading a client when this much of its body waits unread
_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in http.HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_FD_RESERVE = 64  # descriptors kept for everything but client connections: at least this, or a tenth
_LINGER = 1.0  # seconds a connection answered 408 stays open to read what the client still sends
_LOG_EVERY = 30.0  # seconds between two log lines about the same kind of refusal or timeout


def _refusal(message: str) -> bytes:
    """A whole 503 answer written before a request is read (the connection then closes)."""
    body = json.dumps({"error": "ServiceUnavailableError", "message": f"chromaguard: {message}"}).encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"retry-after: 5\r\nconnection: close\r\n\r\n%b" % (len(body), body))


_TOO_MANY_FROM_YOU = _refusal("too many open connections from your address; close some or reuse them")
_SERVER_FULL = _refusal("the server is at its connection limit; try again shortly")


class ClientDisconnected(Exception):
    """The client went away before its request body was whole."""


class _HeadTooLarge(Exception):
    pass


class Exchange:
    """One request and the writer of its response."""

    __slots__ = ("method", "raw_path", "path", "query", "headers", "client", "server", "certificate", "http_version",
                 "keep_alive", "status", "extra_headers", "_conn", "_chunks", "_buffered", "_body_done",
                 "_waiter", "_expect", "_head", "_chunked", "_started", "_finished", "_reject", "_gone", "_head_only")

    def __init__(self, conn: ClientConnection, method: str, url: bytes, headers: Headers, http_version: str,
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
        self.certificate = conn.certificate  # the verified client certificate's names (CN, SANs)
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
        elif b"#" in url:  # no fragment is sent in HTTP; the engine would cut the path there, we would not
            self._reject = (400, "the request target must not contain # (a fragment is never sent to a server)")

    # ---- request body ------------------------------------------------------------------------

    @property
    def body_complete(self) -> bool:
        return self._body_done

    @property
    def body_length(self) -> int:
        """Body bytes arrived and not yet taken (all of it once ``body_complete``, before ``take_body``)."""
        return self._buffered

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
        elif status >= 200 and status not in NO_BODY_STATUS and not self._head_only:
            if self.http_version == "1.1":
                self._chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
            else:  # HTTP/1.0: the end of the body is the end of the connection
                self.keep_alive = False
        if self._closes_after():
            self.keep_alive = False
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        elif self.http_version == "1.0":
            parts.append(b"connection: keep-alive\r\n")
        parts.append(b"\r\n")
        self._head = b"".join(parts)

    def _closes_after(self) -> bool:
        """The connection cannot carry another request after this answer."""
        # (the client may still send the body it announced; a stop; a close under way)
        return (self._expect and not self._body_done) or self._conn.server.stopping or self._conn.closing

    def pass_on(self, status: int, answer: bytes, body_at: int) -> bool:
        """Send a whole answer as it came (``httpfields.whole_answer`` vetted it), our extra fields
        added; False when this answer must say the connection closes: ``start`` writes that one."""
        if self._started or self._head_only or not self.keep_alive or self.http_version != "1.1" or \
                self._closes_after():
            return False
        self._started = True
        self.status = status
        extra = self.extra_headers
        if extra:
            fields = b"".join(name + b": " + value + b"\r\n" for name, value in extra)
            answer = answer[:body_at - 2] + fields + answer[body_at - 2:]
        self._conn.write(answer)
        self.end()
        return True

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


class ClientConnection(asyncio.Protocol):
    """One client connection: parses requests, runs one at a time, in order."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client = ""
        self.sockname: tuple[str, int] | None = None
        self.current: Exchange | None = None  # being answered
        self._between = True  # the parser is between two requests
        self.receiving: Exchange | None = None  # its request still arriving
        self.pipeline: collections.deque[Exchange] = collections.deque()
        self.task: asyncio.Task[None] | None = None
        self.closing = False
        self.upgraded = False
        self.handshaking = False  # HTTPS: admitted, its TLS handshake under way
        self._early = bytearray()  # what arrived before the TLS protocol took over (or before it returned)
        self._decrypted = False  # the TLS protocol has taken over the transport
        self._starting: asyncio.Future[Any] | None = None
        self.certificate: tuple[str, ...] = ()  # HTTPS: the names of a client certificate the CA bundle vouched for
        self.last_active = time.monotonic()
        self.head_started = self.last_active  # a request head is arriving since then (0.0: none is)
        self.received = 0  # bytes read from the client, for the sweep's body rate
        self._client_key: object = None  # counted in the server's per-client tally under this
        self._body_for: object = None  # the request whose body the sweep watches, since _body_since
        self._body_since = 0.0
        self._body_mark = 0  # ``received`` at _body_since
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
        refusal = self.server.admit(self, transport)
        if refusal is not None:  # over a limit: answered before it said anything, and closed
            self.closing = self.upgraded = True
            if self.server.tls is None:  # before a TLS handshake, an answer in clear would mean nothing
                transport.write(refusal)  # type: ignore[attr-defined]
            transport.close()
            return
        self.server.connections.add(self)
        if self.server.tls is not None:  # counted against the limits first, then the handshake
            self.handshaking = True
            self.loop.create_task(self._handshake(transport, self.server.tls))  # type: ignore[arg-type]

    async def _handshake(self, raw: asyncio.Transport, context: SSLContext) -> None:
        """TLS on an admitted connection; a handshake that fails or takes longer than the head
        timeout ends it (plain HTTP sent to the port fails at once).

        The event loop may hand this protocol the ClientHello before ``start_tls`` has put its
        TLS protocol on the transport (uvloop starts reading right after ``connection_made``):
        what came is kept (``data_received``) and given to the TLS protocol first."""
        if self.closing or raw.is_closing():  # reset before its turn: start_tls would never finish
            self._gone()
            return
        timeout = self.server.head_timeout or 10.0
        starting = asyncio.ensure_future(self.loop.start_tls(
            raw, self, context, server_side=True, ssl_handshake_timeout=timeout))  # type: ignore[arg-type]
        self._starting = starting
        await asyncio.sleep(0)  # start_tls has run to its first wait: the TLS protocol is on the transport
        tls_protocol = raw.get_protocol()
        early, self._early = bytes(self._early), bytearray()
        self._decrypted = True  # from now on data_received is the TLS protocol's, decrypted
        if early and tls_protocol is not self:
            self.loop.call_soon(_feed, tls_protocol, raw, early)  # after its connection_made, before more data
        try:  # bounded here too: a loop whose timeout misses a transport closed meanwhile must not keep it
            wrapped = await asyncio.wait_for(starting, timeout + 1.0)
        except (OSError, TimeoutError, ConnectionError, ValueError, RuntimeError, asyncio.CancelledError):
            raw.close()
            self._gone()
            return
        if wrapped is None:
            self._gone()
            return
        if self.server.tls_refuses(wrapped):
            wrapped.abort()
            self._gone()
            return
        self.transport = wrapped  # type: ignore[assignment]
        self.certificate = certificate_names(wrapped.get_extra_info("peercert"))
        self.handshaking = False
        self.last_active = self.head_started = time.monotonic()
        first, self._early = bytes(self._early), bytearray()
        if first:  # a request that came with the end of the handshake, before start_tls returned
            self.data_received(first)

    def _gone(self) -> None:
        """No longer counted anywhere (idempotent: a failed handshake and asyncio may both say so)."""
        self.closing = True
        self.handshaking = False
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
        self.server.connections.discard(self)
        if self._client_key is not None:
            self.server.release(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone()
        for exchange in (self.current, self.receiving, *self.pipeline):
            if exchange is not None:
                exchange._disconnect()
        self.pipeline.clear()
        self._writable()

    def eof_received(self) -> bool:
        receiving = self.receiving
        if receiving is not None:  # the rest of its request will never come
            receiving._disconnect()
            return False
        # A client may half-close after a whole request: answer it, then close.
        if self.current is not None:
            self.current.keep_alive = False
            return True
        return False

    def data_received(self, data: bytes) -> None:
        if self.handshaking:  # before start_tls returned: the ClientHello, or the first decrypted bytes
            self._early += data
            if not self._decrypted and len(self._early) > _EARLY_MAX:  # not a ClientHello: no TLS client
                self.abort()
            return
        self.last_active = time.monotonic()
        self.received += len(data)
        if self.upgraded:
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
        if not self.head_started:  # (the first request's head is due from the accept on)
            self.head_started = self.last_active  # the time of this read: when its first byte came
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
        self.head_started = 0.0
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
        # A request is being answered and what came after it is broken. A request whose body
        # was whole is answered as usual (the engine may have acted on it already), then the
        # connection closes; one whose own body broke learns it will not come, and its answer
        # is this error.
        current.keep_alive = False
        self._broken = (status, message)
        if not current.body_complete:
            current._disconnect()
        if receiving is not None:
            receiving._disconnect()

    def _head_overdue(self) -> bool:
        """The sweep's verdict on a head not whole in time; True when a request had begun."""
        self.head_started = 0.0
        if self._between and self.current is None and not self.pipeline:  # not a byte of a request
            log.debug("closed a connection from %s: no request in time", self.client or "?")
            self.close()
            return False
        log.debug("closed a connection from %s: its request head was not whole in time", self.client or "?")
        self.upgraded = True  # whatever else arrives is ignored
        last = self.pipeline[-1] if self.pipeline else self.current
        if last is not None:  # the requests before it are answered, then the connection closes
            last.keep_alive = False
        else:
            self._answer_408("the request head took too long to arrive")
        return True

    def _body_overdue(self) -> None:
        """The sweep's verdict on a body coming slower than the minimum rate."""
        log.debug("closed a connection from %s: its request body came too slowly", self.client or "?")
        self.upgraded = True
        receiving = self.receiving
        if self.current is None and not self.pipeline and not (receiving is not None and receiving.response_started):
            # Nothing has begun with it (a body read whole first): it is answered here.
            self.receiving = None
            self._answer_408("the request body arrived too slowly")
        else:  # a handler reads it: to it, the client has gone
            self.close()

    def _answer_408(self, message: str) -> None:
        """408 and a close, lingering: the client may still be sending, and a close with its bytes
        unread would be a reset, which can take the 408 with it before the client reads it."""
        transport = self.transport
        self.closing = True
        if transport is None or transport.is_closing():
            return
        body = json.dumps({"error": "RequestTimeoutError", "message": f"chromaguard: {message}"}).encode()
        transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                        b"content-length: %d\r\nconnection: close\r\n\r\n%b" % (len(body), body))
        if transport.can_write_eof():
            transport.write_eof()  # what comes meanwhile is read and dropped; the client's close ends it
            self.loop.call_later(_LINGER, transport.close)
        else:
            transport.close()

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
        return self.current is None and self.receiving is None and not self.pipeline


_SAN_KINDS = {"DNS": "DNS", "email": "email", "URI": "URI", "IP Address": "IP"}


def certificate_names(peercert: object) -> tuple[str, ...]:
    """A verified client certificate's names, each with its kind (``CN:alice``, ``DNS:host``,
    ``email:a@b``, ``URI:spiffe://...``, ``IP:10.0.0.1``: a DNS name is never taken for a CN);
    () with none (no certificate, or not verified: an empty dict)."""
    if not isinstance(peercert, dict) or not peercert:
        return ()
    names = [f"CN:{value}" for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName"]
    names += [f"{_SAN_KINDS[kind]}:{value}" for kind, value in peercert.get("subjectAltName", ()) if kind in _SAN_KINDS]
    return tuple(dict.fromkeys(str(n) for n in names))


_EARLY_MAX = 64 * 1024  # a ClientHello is a few hundred bytes; more before the handshake is not TLS


def _feed(protocol: asyncio.BaseProtocol, transport: asyncio.Transport, data: bytes) -> None:
    """``data`` into a protocol as if read from its transport (asyncio's and uvloop's TLS
    protocols are buffered protocols); nothing once the transport is closing (a reset client)."""
    if transport.is_closing():
        return
    try:
        _feed_into(protocol, data)
    except (RuntimeError, OSError):  # closed meanwhile: the handshake fails and says so
        transport.abort()


def _feed_into(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    view = memoryview(data)
    if isinstance(protocol, asyncio.BufferedProtocol) or hasattr(protocol, "buffer_updated"):
        while view:
            buffer = memoryview(protocol.get_buffer(len(view)))  # type: ignore[attr-defined]
            n = min(len(buffer), len(view))
            buffer[:n] = view[:n]
            protocol.buffer_updated(n)  # type: ignore[attr-defined]
            view = view[n:]
    else:
        protocol.data_received(data)  # type: ignore[attr-defined]


def _client_key(address: str) -> object:
    """What a client's connections are counted under: its address; for IPv6 its /64, which one
    host or site usually has whole (counting each address would let it open any number)."""
    if ":" not in address or address.startswith("::ffff:"):
        return address
    try:
        return ipaddress.IPv6Address(address.partition("%")[0]).packed[:8]
    except ValueError:
        return address


class _Every:
    """A log line at most once per ``interval`` seconds, counting the events held back meanwhile."""

    __slots__ = ("interval", "next", "held")

    def __init__(self, interval: float = _LOG_EVERY) -> None:
        self.interval = interval
        self.next = 0.0
        self.held = 0

    def note(self, now: float, events: int = 1) -> int:
        """Counts ``events``; returns how many to tell of now (those held back too), 0 to stay quiet."""
        self.held += events
        if now < self.next or not self.held:
            return 0
        self.next = now + self.interval
        told, self.held = self.held, 0
        return told


class HttpServer:
    """Serves ``handler`` on a listening socket until ``stop``; lets requests in flight finish.

    ``head_timeout``: seconds a request head may take from its first byte (0: no limit);
    ``body_min_rate``: bytes a second a body must average after that grace (0: no limit);
    ``max_connections_per_client``: open connections one address may have (0: no limit).
    """

    def __init__(self, handler: Handler, *, keep_alive: float = 75.0, drain_timeout: float = 30.0,
                 head_timeout: float = 10.0, body_min_rate: int = 500, max_connections_per_client: int = 256) -> None:
        self.handler = handler
        self.keep_alive = keep_alive
        self.drain_timeout = drain_timeout
        self.head_timeout = head_timeout
        self.body_min_rate = body_min_rate
        self.max_connections_per_client = max_connections_per_client
        self.connections: set[ClientConnection] = set()
        self.per_client: dict[object, int] = {}  # open connections by client (``_client_key``)
        self.descriptor_limit = 0  # RLIMIT_NOFILE's soft limit when serving began (0: none)
        self.max_clients = 0  # client connections allowed at once, below it (0: no limit)
        # What the limits did, for whoever wants to count it.
        self.refused_per_client = 0
        self.refused_full = 0
        self.head_timeouts = 0
        self.body_timeouts = 0
        self.stopping = False
        self.tls: SSLContext | None = None  # HTTPS: each admitted connection's handshake uses it
        self.tls_refuses: Callable[[asyncio.BaseTransport], bool] = lambda transport: False
        self._stop = asyncio.Event()
        self._force = False
        self._full = False  # refusing connections: at the descriptor limit
        self._full_told = False
        self._full_log = _Every(60.0)
        self._per_client_log = _Every()
        self._head_log = _Every()
        self._body_log = _Every()

    def stop(self, *, force: bool = False) -> None:
        """Stop accepting; ``force`` also cuts requests in flight (a second signal)."""
        self.stopping = True
        self._force = self._force or force
        self._stop.set()

    def limit_descriptors(self, soft: int | None = None) -> None:
        """Keep client connections below the descriptor limit (``soft``, else RLIMIT_NOFILE's soft
        limit), less a reserve for the engine connections, files, reloads: a tenth, at least 64."""
        if soft is None:
            if resource is None:
                return
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft <= 0 or soft == getattr(resource, "RLIM_INFINITY", -1):
            self.descriptor_limit = self.max_clients = 0
            return
        self.descriptor_limit = soft
        self.max_clients = max(soft - max(_FD_RESERVE, soft // 10), soft // 2)
        log.debug("at most %d client connections (the descriptor limit is %d)", self.max_clients, soft)

    def admit(self, conn: ClientConnection, transport: asyncio.BaseTransport) -> bytes | None:
        """None when ``conn`` (just accepted) may be served; else the answer for it: it is over a limit."""
        if self.max_clients and self._over_descriptors(transport):
            return _SERVER_FULL
        cap = self.max_connections_per_client
        if cap and conn.client:
            key = _client_key(conn.client)
            count = self.per_client.get(key, 0)
            if count >= cap:
                self.refused_per_client += 1
                told = self._per_client_log.note(time.monotonic())
                if told:
                    log.warning("refused a connection from %s: it has %d open already, the most one client may "
                                "have (CHROMAGUARD_MAX_CONNECTIONS_PER_CLIENT=%d)%s", conn.client, count, cap,
                                f"; {told} refused like this since the last such line" if told > 1 else "")
                return _TOO_MANY_FROM_YOU
            self.per_client[key] = count + 1
            conn._client_key = key
        return None

    def release(self, conn: ClientConnection) -> None:
        """``conn`` has closed: one fewer for its client."""
        key, conn._client_key = conn._client_key, None
        count = self.per_client.get(key, 0) - 1
        if count > 0:
            self.per_client[key] = count
        else:
            self.per_client.pop(key, None)

    def _over_descriptors(self, transport: asyncio.BaseTransport) -> bool:
        """Whether taking one more client connection would eat into the reserve of descriptors.

        The new socket's descriptor is the lowest one free, so every one below it is open: its
        number counts all the process holds (engine connections, files), not only clients.
        """
        sock = transport.get_extra_info("socket")
        level = max(sock.fileno() if sock is not None else -1, len(self.connections))
        limit = self.max_clients
        if self._full:
            if level < limit - max(8, (self.descriptor_limit - limit) // 4):  # not back at once: no flapping
                self._full = False
                if self._full_told:
                    log.info("accepting connections again (%d refused at the descriptor limit so far)",
                             self.refused_full)
                return False
        elif level < limit:
            return False
        else:
            self._full = True
            self._full_told = bool(self._full_log.note(time.monotonic()))
            if self._full_told:
                log.warning("%d client connections open and descriptors up to number %d in use, of the %d this "
                            "process may have (ulimit -n): new connections are answered 503 until some close, "
                            "keeping the rest for the engine, files and reloads; raise the limit (ulimit -n, "
                            "LimitNOFILE= with systemd, --ulimit nofile= with Docker), or lower "
                            "CHROMAGUARD_MAX_CONNECTIONS_PER_CLIENT if one client holds them",
                            len(self.connections), level, self.descriptor_limit)
        self.refused_full += 1
        return True

    async def serve(self, sock: object, ssl: SSLContext | None = None,
                    tls_refuses: Callable[[asyncio.BaseTransport], bool] | None = None) -> None:
        """``ssl``: HTTPS. Each connection is counted against the limits before its handshake
        (which the head timeout bounds); ``tls_refuses`` may then turn a finished handshake away."""
        self.limit_descriptors()
        self.tls = ssl
        if tls_refuses is not None:
            self.tls_refuses = tls_refuses
        loop = asyncio.get_running_loop()
        listener = await loop.create_server(lambda: ClientConnection(self), sock=sock,  # type: ignore[call-overload]
                                            backlog=2048)
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
        """The limits in time, about once a second: see ``check``."""
        tick = max(0.05, min(1.0, self.keep_alive, self.head_timeout / 2 if self.head_timeout else 1.0))
        last = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            self.check(now, now - last)
            last = now

    def check(self, now: float, elapsed: float) -> None:
        """Close connections that have sent nothing for ``keep_alive`` seconds between requests,
        whose request head is overdue, or whose body comes slower than the minimum rate;
        ``elapsed``: seconds since the last check."""
        idle = now - self.keep_alive
        head_timeout, rate = self.head_timeout, self.body_min_rate
        heads_due = now - head_timeout if head_timeout else -math.inf
        grace = head_timeout or 10.0
        heads = bodies = 0
        for conn in list(self.connections):
            if conn.closing or conn.handshaking:  # the handshake has its own timeout
                continue
            started = conn.head_started
            if started and started < heads_due:
                heads += conn._head_overdue()
                continue
            if rate:
                body = conn.receiving
                if body is None:
                    conn._body_for = None
                elif body is not conn._body_for:  # a body the check has not seen: its time runs from now
                    conn._body_for, conn._body_since, conn._body_mark = body, now, conn.received
                elif not conn._reading or body._expect:  # we hold it back: time stands still
                    conn._body_since += elapsed
                elif now - conn._body_since > grace + (conn.received - conn._body_mark) / rate:
                    conn._body_overdue()
                    bodies += 1
                    continue
            if conn.current is None and not conn.pipeline and conn.last_active < idle:
                conn.close()
        self.head_timeouts += heads
        self.body_timeouts += bodies
        told = self._head_log.note(now, heads)
        if told:
            log.info("closed %d connection(s) whose request head was not whole %gs after it began, with a 408 "
                     "(slow or stalled clients; CHROMAGUARD_HEAD_TIMEOUT)", told, head_timeout)
        told = self._body_log.note(now, bodies)
        if told:
            log.info("closed %d connection(s) whose request body came slower than %d bytes/s (slow or stalled "
                     "clients; CHROMAGUARD_BODY_MIN_RATE)", told, rate)
        told = self._per_client_log.note(now, 0)
        if told:
            log.warning("refused %d connection(s) from clients over CHROMAGUARD_MAX_CONNECTIONS_PER_CLIENT=%d "
                        "since the last such line", told, self.max_connections_per_client)
