"""The fast path: a plain read relayed with a few byte operations, no parser callbacks.

Why: between an engine's searches the front door's code runs from cold caches, and what a
request costs is how much code and data it touches. The general path (a parser callback
per header, an ``Exchange``, a ``Call``, a ``Relay``, their checks) touches a lot of it;
that was most of what chromaguard added to a query over a bare byte forwarder
(BENCHMARKS.md). This path takes the common case and nothing else:

- a whole, strictly formed HTTP/1.1 ``GET`` or ``POST`` for an engine read (query, get,
  count, ...), with no auth or tracing to do, no CORS origin, no framing to think about;
- answered by the engine whole, in one read, with a content length.

Anything else goes to the general path: before anything happened (nothing is consumed), or,
once the request is at the engine, by building the objects the general path would have
built and handing them the rest (``_promote``): errors, timeouts, retries, streamed or
split answers and a closing connection all behave exactly as there.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

from .frontdoor import ANSWERED_HERE, OWN_PREFIX, Call, FrontDoor
from .httpserver import DISPATCH_WHOLE_BELOW, MAX_HEAD_BYTES, Exchange, parse_fields
from .relay import Relay
from .routes import READ, Route, route_of
from .upstream import NOT_RELAYED, UpstreamTimeout

if TYPE_CHECKING:
    from .httpserver import ClientConnection
    from .upstream import EngineConnection

# Origin-form targets only, no percent-encoding in the path (the general path decodes it), no
# empty query (the general path drops its "?").
_REQUEST_LINE = re.compile(rb"(GET|POST) ((/[A-Za-z0-9\-._~!$&'()*+,;=:@/]*)(?:\?[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]+)?)"
                           rb" HTTP/1\.1\r\n")
# Header lines, each after a CRLF, and the CRLF that ends the head: names are tokens, values
# hold no control character but tab (no CR or LF alone, no NUL, no folded lines). Linear.
_FIELDS = re.compile(rb"(?:\r\n[!#$%&'*+\-.^_`|~0-9A-Za-z]++:[^\x00-\x08\x0a-\x1f\x7f]*+)*+\r\n\r\n")
# An answer's head: a 2xx-5xx status line with a reason, then header lines as above.
_ANSWER_HEAD = re.compile(rb"HTTP/1\.1 ([2-5][0-9][0-9]) [\t !-~\x80-\xff]*+" + _FIELDS.pattern)
_NO_BODY_STATUS = (b"204", b"304")
# The general path counts a head as its URL and name + value + 4 per field: at most 5/4 of its
# bytes. Below this many bytes it cannot reach that limit (431), so both paths agree.
_HEAD_LIMIT = MAX_HEAD_BYTES * 3 // 4
_ROUTE_CACHE = 4096
_ROUTE_KEY_LIMIT = 512  # longer paths are not remembered: the cache stays under 2 MiB


def _names(names: frozenset[bytes]) -> bytes:
    """Header names as a regex alternation."""
    return b"|".join(re.escape(name) for name in sorted(names))


# Fields of an answer that the general path leaves out (framing, hop-by-hop), in lower-cased lines.
_NOT_PASSED = re.compile(rb"\n(?:" + _names(NOT_RELAYED - {b"content-length"}) + rb"):")


def _content_length(low: bytes) -> int | None:
    """The Content-Length in lower-cased header lines, each after a CRLF: -1 when there is
    none, None when there are two or it is not plain digits."""
    at = low.find(b"\ncontent-length:")
    if at < 0:
        return -1
    value = low[at + 16:low.find(b"\r", at)].strip(b" \t")
    if not value.isdigit() or len(value) > 15 or low.find(b"\ncontent-length:", at + 1) >= 0:
        return None
    return int(value)


class FastPath:
    """Takes plain reads off the HTTP server's connections (``take``), for one front door."""

    def __init__(self, door: FrontDoor) -> None:
        self.door = door
        # the line, less its CRLF
        self.strip = re.compile(rb"\r\n(?:" + _names(door._strip) + rb"):[^\r\n]*(?=\r\n)", re.I)
        self._routes: dict[bytes, tuple[Route, str] | None] = {}

    @classmethod
    def for_door(cls, door: FrontDoor) -> FastPath | None:
        """None where every request has work only the general path does (auth, spans)."""
        return cls(door) if door.auth is None and door.spans is None else None

    def take(self, conn: ClientConnection, data: bytes) -> bool:
        """Take the request that starts ``data``; False: nothing was done, the parser reads it."""
        end = data.find(b"\r\n\r\n")
        if end < 0 or end >= _HEAD_LIMIT:
            return False
        line = _REQUEST_LINE.match(data)
        if line is None:
            return False
        key = data[:line.end(3)]
        try:
            route = self._routes[key]
        except KeyError:
            route = self._eligible(line.group(1), line.group(3), key)
        if route is None:
            return False
        if _FIELDS.fullmatch(data, line.end() - 2, end + 4) is None:
            return False
        block = data[line.end() - 2:end + 2]  # each header line after a CRLF
        low = block.lower()
        # Only the general path reads other framing, 100-continue, upgrades, CORS, closing.
        if (b"\ntransfer-encoding:" in low or b"\nexpect:" in low or b"\nupgrade:" in low
                or b"\norigin:" in low or b"\nproxy-connection:" in low):  # llhttp reads it as Connection
            return False
        at = low.find(b"\nconnection:")
        if at >= 0 and (low[at + 12:low.find(b"\r", at)].strip(b" \t") != b"keep-alive"
                        or low.find(b"\nconnection:", at + 1) >= 0):
            return False
        length = _content_length(low)
        if length is None or length > self.door.max_payload_bytes or length > DISPATCH_WHOLE_BELOW:
            return False
        length = max(length, 0)
        have = len(data) - end - 4
        if have > length:  # another request follows in this read: the parser pipelines them
            return False
        request = FastRequest(self, conn, line.group(1), line.group(2), block, route, length - have)
        if have == length:
            request.dispatch(data[end + 4:])
        else:
            request.parts.append(data[end + 4:])
            conn.diverted = request
        return True

    def _eligible(self, method: bytes, raw_path: bytes, key: bytes) -> tuple[Route, str] | None:
        route, http_route = route_of(method.decode(), raw_path)
        path = raw_path.decode("latin-1")
        found = (route, http_route) if (route is not None and route.access == READ and path not in ANSWERED_HERE
                                        and not path.startswith(OWN_PREFIX)) else None
        if len(key) <= _ROUTE_KEY_LIMIT:
            if len(self._routes) >= _ROUTE_CACHE:
                self._routes.clear()
            self._routes[key] = found
        return found


class FastRequest:
    """One request on the fast path: the client connection's current request, the engine
    connection's sink, and the timeout watch's entry, until answered or promoted."""

    __slots__ = ("lane", "conn", "method", "target", "block", "route", "need", "parts", "keep_alive", "gone",
                 "up", "body", "started", "since", "done")

    def __init__(self, lane: FastPath, conn: ClientConnection, method: bytes, target: bytes, block: bytes,
                 route: tuple[Route, str], need: int) -> None:
        self.lane = lane
        self.conn = conn
        self.method = method
        self.target = target
        self.block = block
        self.route = route
        self.need = need  # body bytes still to come
        self.parts: list[bytes] = []
        self.keep_alive = True
        self.gone = False
        self.up: EngineConnection | None = None
        self.body = b""
        self.started = 0.0
        self.since = 0.0
        self.done = False

    # ---- the client's side -------------------------------------------------------------------

    def more(self, data: bytes) -> bytes:
        """Body bytes that came in a later read; returns what follows the body (a next request)."""
        need = self.need
        if len(data) < need:
            self.parts.append(data)
            self.need = need - len(data)
            return b""
        self.parts.append(data[:need] if len(data) > need else data)
        self.need = 0
        self.dispatch(b"".join(self.parts))
        return data[need:]

    def dispatch(self, body: bytes) -> None:
        """The request is whole: to the engine on a kept-alive connection, or to the general path."""
        conn, door = self.conn, self.lane.door
        conn.diverted = None
        self.parts = []
        up = door.pool.idle() if door.backend.available and not conn.server.stopping and not conn.closing else None
        if up is None:  # a connection to open, an engine down, a stop: as for any request
            conn._run(Exchange.received(conn, self.method.decode(), self.target, parse_fields(self.block[2:]), True,
                                        body))
            return
        conn.current = self  # type: ignore[assignment]
        door.in_flight += 1
        self.started = time.perf_counter()
        self.up, self.body = up, body
        up.sink = self
        up.whole = self.answered
        if door.watch is not None:
            door.watch.add(self)  # type: ignore[arg-type]
        pool = door.pool
        assert up.transport is not None  # an idle connection has one
        length = b"content-length: %d\r\n" % len(body) if body or self.method == b"POST" else b""
        client = conn.client
        forwarded = b"x-forwarded-for: " + client.encode() + b"\r\n" if client else b""
        # What the general path sends (``FrontDoor._request_headers``, ``UpstreamPool._head``),
        # with the client's header lines as they came.
        up.transport.write(b"".join((self.method, b" ", pool.target.base_path, self.target, b" HTTP/1.1\r\n",
                                     pool._host_line, pool._extra, self.lane.strip.sub(b"", self.block)[2:], forwarded,
                                     b"x-forwarded-proto: http\r\n", length, b"\r\n", body)))

    def _disconnect(self) -> None:
        self.gone = True
        if self.conn.diverted is self:  # its body will never come: it was never a request
            self.conn.diverted = None

    # ---- the engine's side -------------------------------------------------------------------

    def answered(self, data: bytes) -> bool:
        """The engine's first read: a whole plain answer goes to the client as it came."""
        conn = self.conn
        if not self.keep_alive or conn.closing or conn.server.stopping:
            return False  # the answer must say the connection closes: the general path writes it
        end = data.find(b"\r\n\r\n")
        head = _ANSWER_HEAD.fullmatch(data, 0, end + 4) if end >= 0 else None
        if head is None:  # a body still to come, a 1xx, or a head the general path's parser refuses (502)
            return False
        status = head.group(1)
        if status in _NO_BODY_STATUS:
            return False
        low = data[data.find(b"\r\n"):end + 2].lower()
        if len(data) - end - 4 != _content_length(low) or _NOT_PASSED.search(low) is not None:
            return False  # no single length, a body still to come, or fields the general path leaves out
        up, door = self.up, self.lane.door
        assert up is not None
        self.done = True
        if door.watch is not None:
            door.watch.relays.discard(self)  # type: ignore[arg-type]
        up.sink = None
        up.complete = True
        conn.write(data)
        door.pool.release(up)
        conn.response_done(self)  # type: ignore[arg-type]
        door.in_flight -= 1
        if door.metrics is not None:
            door.metrics.request(self.route[0].operation, int(status), time.perf_counter() - self.started)
        return True

    def on_head(self, up: EngineConnection) -> None:
        self._promote().on_head(up)

    def on_body(self, chunk: bytes) -> None:
        self._promote().on_body(chunk)

    def on_complete(self) -> None:
        self._promote().on_complete()

    def on_error(self, exc: BaseException) -> None:
        self._promote().on_error(exc)

    def check(self, now: float, timeout: float) -> None:
        """The timeout watch's question: nothing came from the engine since ``since``."""
        if self.done:
            self.lane.door.watch.relays.discard(self)  # type: ignore[union-attr, arg-type]
        elif now - self.since >= timeout:
            assert self.up is not None
            self.up._fail(UpstreamTimeout("upstream did not answer in time"))

    def _promote(self) -> Relay:
        """The general path's objects for this request, as if they had sent it; they take over."""
        conn, door, up = self.conn, self.lane.door, self.up
        assert up is not None
        exchange = Exchange.received(conn, self.method.decode(), self.target, parse_fields(self.block[2:]),
                                     self.keep_alive)
        if self.gone:
            exchange._disconnect()
        call = Call(exchange, *self.route)
        call.started = self.started
        relay = Relay(door, call, door.pool, up, False)
        relay.request = (exchange.method, self.target, door._request_headers(call)[0], self.body)
        relay.since = self.since
        self.done = True
        if door.watch is not None:
            door.watch.relays.discard(self)  # type: ignore[arg-type]
            door.watch.relays.add(relay)  # its timer runs: this request was in the watch
        if up.sink is self:  # else the connection has failed and let go of its sink: it must stay so
            up.sink = relay
        if conn.current is self:  # type: ignore[comparison-overlap]
            conn.current = exchange
        return relay
