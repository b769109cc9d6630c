"""A lean HTTP/1.1 client for the engine: pooled keep-alive connections, bodies streamed.

The hot path of every proxied request runs through here, so it does the least
it can: one write for head and body, httptools for parsing the response, no
per-request tasks or timers beyond one timeout handle.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import weakref
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import httptools

from .fields import NOT_RELAYED, Headers, request_length

_READ_HIGH_WATER = 1 << 20
_MAX_IDLE = 128
_JOIN_BELOW = 64 * 1024  # a body up to this size is joined to its head: one buffer, one write


class UpstreamError(Exception):
    """The upstream failed after the request may have reached it."""


class UpstreamUnavailable(UpstreamError):
    """The upstream could not be reached at all: the request was not sent."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer in time."""


class UpstreamAborted(UpstreamTimeout):
    """We gave up on the request: the engine was found stuck while it waited (never retried)."""


@dataclass(frozen=True)
class UpstreamTarget:
    scheme: str
    host: str
    port: int
    base_path: bytes
    host_header: bytes

    @classmethod
    def from_url(cls, url: str) -> UpstreamTarget:
        parts = urlsplit(url)
        scheme = parts.scheme or "http"
        port = parts.port or (443 if scheme == "https" else 80)
        host = parts.hostname or "127.0.0.1"
        default_port = (scheme == "https" and port == 443) or (scheme == "http" and port == 80)
        netloc = host if default_port else f"{host}:{port}"
        if ":" in host and not default_port:
            netloc = f"[{host}]:{port}"
        return cls(scheme, host, port, parts.path.rstrip("/").encode(), netloc.encode())

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host_header.decode()}{self.base_path.decode()}"


class Sink(Protocol):
    """Takes a response straight from the parser's callbacks (the front door's relay)."""

    def on_whole(self, data: bytes) -> bool:
        """The answer's first read: True when it was the whole answer and was dealt with."""
    def on_head(self, conn: EngineConnection) -> None: ...
    def on_body(self, chunk: bytes) -> None: ...
    def on_complete(self) -> None: ...
    def on_error(self, exc: BaseException) -> None: ...


class EngineConnection(asyncio.Protocol):
    """One keep-alive connection; carries one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.sink: Sink | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.alive = True
        self.used = False
        self._loop = asyncio.get_running_loop()
        self._write_ready = asyncio.Event()
        self._write_ready.set()
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: Headers = []
        self.relayed: Headers = []
        self.content_length: int | None = None
        self.head: asyncio.Future[None] | None = None  # the async path waits on it; a sink does not
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.complete = False
        self.waiter: asyncio.Future[None] | None = None
        self.error: BaseException | None = None
        self.got_bytes = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if not self.got_bytes and sink is not None:
            self.got_bytes = True
            if sink.on_whole(data):
                return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail(UpstreamError("upstream tried to upgrade the connection"))
        except httptools.HttpParserError as exc:
            self.fail(UpstreamError(f"upstream sent an invalid response: {exc}"))

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        if not self.complete:
            self.fail(UpstreamError("upstream closed the connection" + (f": {exc}" if exc else "")))
        self._write_ready.set()

    def pause_writing(self) -> None:
        self._write_ready.clear()

    def resume_writing(self) -> None:
        self._write_ready.set()

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self.headers.append((name, value))
        if name not in NOT_RELAYED:
            self.relayed.append((name, value))
        elif name == b"content-length":
            self.content_length = int(value)  # the parser refused a malformed one

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.sink is not None:
            self.sink.on_head(self)
        elif self.head is not None and not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.sink is not None:
            self.sink.on_body(body)
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _READ_HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        if not self.parser.should_keep_alive():
            self.alive = False
        sink = self.sink
        if sink is not None:
            self.sink = None
            sink.on_complete()
        else:
            self._wake()

    # internals
    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def resendable(self, exc: BaseException) -> bool:
        """A kept-alive connection the engine had just closed: nothing reached it, so the request
        may go again on a fresh one (never after a timeout: the engine may be working on it)."""
        return self.used and not self.got_bytes and isinstance(exc, UpstreamError) and not isinstance(
            exc, UpstreamTimeout)

    def fail(self, exc: BaseException) -> None:
        self.alive = False
        if self.error is None:
            self.error = exc
        sink = self.sink
        if sink is not None:
            self.sink = None
            if self.transport is not None:
                self.transport.close()
            sink.on_error(exc)
            return
        if self.head is not None and not self.head.done():
            self.head.set_exception(exc)
            self.head.exception()  # retrieved: no "never retrieved" warning if nobody waits
        self._wake()
        if self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        self.alive = False
        if self.transport is not None:
            self.transport.close()

    async def write(self, data: bytes) -> None:
        await self.writelines((data,))

    async def writelines(self, parts: Sequence[bytes]) -> None:
        """Send ``parts`` in order without joining them (the event loop writes them together)."""
        if not self.alive or self.transport is None:
            raise self.error or UpstreamError("upstream connection closed while sending the request")
        if len(parts) == 1:
            self.transport.write(parts[0])
        else:
            self.transport.writelines(parts)
        if not self._write_ready.is_set():
            await self._write_ready.wait()

    async def wait(self, timeout: float | None) -> None:
        """Wait until more body arrives, the message completes, or it fails."""
        self.waiter = self._loop.create_future()
        handle = self._loop.call_later(timeout, self._timeout) if timeout else None
        try:
            await self.waiter
        finally:
            self.waiter = None
            if handle is not None:
                handle.cancel()

    def _timeout(self) -> None:
        self.fail(UpstreamTimeout("upstream did not answer in time"))

    async def wait_head(self, timeout: float | None) -> None:
        handle = self._loop.call_later(timeout, self._timeout) if timeout else None
        try:
            await self.head  # type: ignore[misc]
        finally:
            if handle is not None:
                handle.cancel()

    def take(self) -> bytes:
        data = b"".join(self.chunks) if len(self.chunks) != 1 else self.chunks[0]
        self.chunks.clear()
        if self.buffered > _READ_HIGH_WATER and self.transport is not None and self.alive:
            self.transport.resume_reading()
        self.buffered = 0
        return data


class Response:
    """A response whose body is read on demand; return the connection with ``release``."""

    __slots__ = ("status", "headers", "relayed_headers", "content_length", "_conn", "_pool", "_timeout", "_done")

    def __init__(self, conn: EngineConnection, pool: UpstreamPool, timeout: float | None) -> None:
        self.status = conn.status
        self.headers = conn.headers
        self.relayed_headers = conn.relayed
        self.content_length = conn.content_length
        self._conn = conn
        self._pool = pool
        self._timeout = timeout
        self._done = False

    async def chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while True:
            if conn.chunks:
                yield conn.take()
                continue
            if conn.complete:
                break
            if conn.error is not None:
                raise conn.error
            await conn.wait(self._timeout)
        self.release()

    async def read(self) -> bytes:
        parts = [chunk async for chunk in self.chunks()]
        return b"".join(parts)

    def release(self) -> None:
        if not self._done:
            self._done = True
            self._pool.release(self._conn)


class UpstreamPool:
    """Keep-alive connections to one upstream server."""

    def __init__(self, url: str, *, connect_timeout: float = 5.0, extra_headers: Headers | None = None) -> None:
        self.target = UpstreamTarget.from_url(url)
        self.connect_timeout = connect_timeout
        self.extra_headers = extra_headers or []
        self._idle: collections.deque[EngineConnection] = collections.deque()
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if self.target.scheme == "https" else None
        self._host_line = b"host: " + self.target.host_header + b"\r\n"
        self._extra = b"".join(name + b": " + value + b"\r\n" for name, value in self.extra_headers)
        # Every connection opened (noted on connect only, nothing per request), for ``waiting``.
        self._opened: weakref.WeakSet[EngineConnection] = weakref.WeakSet()

    def retarget(self, url: str) -> None:
        """Point the pool at a new address (the engine came back on another port)."""
        self.target = UpstreamTarget.from_url(url)
        self._host_line = b"host: " + self.target.host_header + b"\r\n"
        self.close()

    async def connect(self) -> EngineConnection:
        loop = asyncio.get_running_loop()
        target = self.target
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(EngineConnection, target.host, target.port, ssl=self._ssl,
                                       server_hostname=target.host if self._ssl else None),
                self.connect_timeout,
            )
        except TimeoutError:
            raise UpstreamUnavailable(f"connecting to {target.url} timed out") from None
        except OSError as exc:
            raise UpstreamUnavailable(f"cannot connect to {target.url}: {exc.strerror or exc}") from None
        self._opened.add(conn)
        return conn

    def idle(self) -> EngineConnection | None:
        """A kept-alive connection ready for a request, if there is one."""
        while self._idle:
            conn = self._idle.pop()
            if conn.alive and conn.transport is not None and not conn.transport.is_closing():
                conn._reset()
                return conn
        return None

    async def _acquire(self) -> EngineConnection:
        return self.idle() or await self.connect()

    def release(self, conn: EngineConnection) -> None:
        reading = conn.transport is not None and conn.transport.is_reading()
        if conn.alive and conn.complete and not conn.chunks and reading and len(self._idle) < _MAX_IDLE:
            conn.used = True
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

    def waiting(self) -> list[tuple[EngineConnection, object]]:
        """Requests sent with nothing of their answer back yet: (connection, an object that is the
        same for as long as that one request waits). For the supervisor, a few times a minute."""
        idle = set(self._idle)
        out: list[tuple[EngineConnection, object]] = []
        for conn in list(self._opened):
            request = conn.sink if conn.sink is not None else conn.head
            if conn.alive and request is not None and not conn.got_bytes and not conn.complete and conn not in idle:
                out.append((conn, request))
        return out

    @staticmethod
    def abort(conns: Iterable[EngineConnection], reason: str) -> int:
        """Fail these requests now (``UpstreamAborted``: never retried); how many were still waiting."""
        failed = 0
        for conn in conns:
            if conn.alive and not conn.complete:
                conn.fail(UpstreamAborted(reason))
                failed += 1
        return failed

    def head(self, method: str, path: bytes, headers: Iterable[tuple[bytes, bytes]], length: int | None) -> bytes:
        lines = [method.encode(), b" ", self.target.base_path, path, b" HTTP/1.1\r\n", self._host_line, self._extra]
        for name, value in headers:
            lines += (name, b": ", value, b"\r\n")
        if length is not None:
            lines += (b"content-length: ", str(length).encode(), b"\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    async def request(self, method: str, path: bytes, headers: Iterable[tuple[bytes, bytes]] = (),
                      body: bytes | Sequence[bytes] | None = None, *,
                      body_stream: AsyncIterator[bytes] | None = None,
                      length: int | None = None, timeout: float | None = None) -> Response:
        """Send one request; ``body`` (bytes, or pieces sent as they are) is sent whole,
        ``body_stream`` chunk by chunk (``length`` bytes).

        Raises UpstreamUnavailable when nothing was sent, UpstreamError otherwise.
        """
        parts: list[bytes] = []
        if body_stream is None:
            parts = [body] if isinstance(body, bytes) else [part for part in body or () if part]
            size = sum(map(len, parts))
            length = request_length(method, size)
        headers = list(headers)
        retry_ok = body_stream is None
        for attempt in (0, 1):
            conn = await self._acquire()
            conn.head = asyncio.get_running_loop().create_future()
            head = self.head(method, path, headers, length)
            try:
                if body_stream is None:
                    if len(parts) == 1 and len(parts[0]) <= _JOIN_BELOW:
                        await conn.write(head + parts[0])  # one small write: cheaper joined
                    else:
                        await conn.writelines([head, *parts])
                else:
                    await conn.write(head)
                    async for chunk in body_stream:
                        if conn.head is not None and conn.head.done():  # answered early (e.g. 413): stop sending
                            conn.alive = False
                            break
                        await conn.write(chunk)
                await conn.wait_head(timeout)
            except UpstreamError:
                conn.close()
                if attempt == 0 and retry_ok and conn.error is not None and conn.resendable(conn.error):
                    continue
                raise
            except BaseException:  # the client went away or we were cancelled mid-request
                conn.close()
                raise
            if method == "HEAD":
                # httptools cannot skip a HEAD response's announced body; never reuse this one.
                conn.complete = True
                conn.alive = False
            return Response(conn, self, timeout)
        raise AssertionError("unreachable")


async def fetch(url: str, path: str, *, timeout: float = 2.0) -> tuple[int, bytes]:
    """One GET on a fresh connection (probes that must not share the data path's pool)."""
    pool = UpstreamPool(url, connect_timeout=timeout)
    try:
        response = await pool.request("GET", path.encode(), timeout=timeout)
        body = await response.read()
        return response.status, body
    finally:
        pool.close()
