"""The ASGI front door: CORS, auth, telemetry and health answered here; everything else forwarded.

Forwarding is transparent: method, raw path and query, headers (less the
hop-by-hop ones), status and body pass through untouched and streamed.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Protocol
from urllib.parse import quote

from .auth import Authenticator, Denial
from .cors import CorsPolicy
from .logs import current_trace
from .responses import send_error, send_json
from .routes import READ, Route, canonical_segments, route_of
from .spanattrs import RESPONSE_PARSE_LIMIT, RESULT_OPS, CollectionNames, request_attributes, response_attributes
from .upstream import UpstreamError, UpstreamPool, UpstreamTimeout, UpstreamUnavailable

if TYPE_CHECKING:
    from .readiness import Dependencies
    from .snapshot_api import SnapshotService
    from .writegate import WriteGate
    from .telemetry import Telemetry

log = logging.getLogger("chromaguard.frontdoor")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

HEARTBEAT_PATHS = frozenset({"/api/v1/heartbeat", "/api/v2/heartbeat"})
# Never forwarded: they describe one hop, not the request.
_HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate", b"proxy-authorization",
    b"te", b"trailer", b"transfer-encoding", b"upgrade", b"expect", b"host", b"content-length",
})
_RESPONSE_HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade",
})
_TRACE_HEADERS = frozenset({b"traceparent", b"tracestate", b"user-agent"})
_RETRY_AFTER = [(b"retry-after", b"1")]
_NO_TRACE = "0" * 32
_DENIAL_REASONS = {400: "bad_request", 401: "missing_credentials", 403: "forbidden", 429: "rate_limited",
                   431: "headers_too_large"}
MAX_HEADER_BYTES = 32 * 1024
HEARTBEAT_CACHE_SECONDS = 1.0
_CATALOG_CHANGES = frozenset({"create_collection", "delete_collection", "modify_collection", "fork"})



class Backend(Protocol):
    """What the front door needs to know about the engine behind it."""

    @property
    def available(self) -> bool: ...

    @property
    def unavailable_reason(self) -> str: ...


class AlwaysAvailable:
    """A remote upstream: we learn it is down only by trying."""

    available = True
    unavailable_reason = ""


class ClientDisconnected(Exception):
    pass


class _Exchange:
    __slots__ = ("status",)

    def __init__(self) -> None:
        self.status = 0


class FrontDoor:
    def __init__(self, pool: UpstreamPool, backend: Backend, *, max_payload_bytes: int,
                 upstream_timeout: float, heartbeat_timeout: float = 5.0,
                 strip_request_headers: frozenset[bytes] = frozenset(),
                 auth: Authenticator | None = None, cors: CorsPolicy | None = None,
                 telemetry: Telemetry | None = None, deps: Dependencies | None = None,
                 gate: WriteGate | None = None, snapshots: SnapshotService | None = None) -> None:
        self.pool = pool
        self.backend = backend
        self.max_payload_bytes = max_payload_bytes
        self.upstream_timeout = upstream_timeout
        self.heartbeat_timeout = heartbeat_timeout
        self.auth = auth
        self.cors = cors
        self.telemetry = telemetry
        self.deps = deps
        self.gate = gate
        self.snapshots = snapshots
        self.metrics = telemetry.metrics if telemetry else None
        self.tracer = telemetry.tracer if telemetry else None
        self.names = CollectionNames()
        self.in_flight = 0
        self._alive_until = 0.0
        self._listings: dict[tuple[Any, ...], tuple[float, frozenset[str]]] = {}  # (tenant, db) -> ids, names
        if self.metrics is not None:
            self.metrics.in_flight = lambda: self.in_flight
        self._strip = _HOP_BY_HOP | strip_request_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":  # websockets: Chroma has none
            return
        method = scope["method"]
        route, http_route = route_of(method, scope["raw_path"])
        scope["chromaguard.route"] = route
        exchange = _Exchange()

        async def observed(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
            await send(message)

        span = self._start_span(scope, route, http_route) if self.tracer is not None else None
        self.in_flight += 1
        started = time.perf_counter()
        try:
            if self.auth is None and self.cors is None:
                await self._route(scope, receive, observed)
            else:
                await self._guarded(scope, receive, observed, route)
        except Exception as exc:
            if span is not None:
                span.record_exception(exc)
            raise
        finally:
            self.in_flight -= 1
            if self.metrics is not None:
                self.metrics.request(route.operation if route else "invalid_path", exchange.status or 499,
                                     time.perf_counter() - started)
            if span is not None:
                self._end_span(span, scope, exchange)

    # ---- telemetry ---------------------------------------------------------------------------

    def _start_span(self, scope: Scope, route: Route | None, http_route: str) -> Any:
        from opentelemetry.trace import SpanKind

        carrier: dict[str, str] = {}
        user_agent = ""
        for name, value in scope["headers"]:
            if name in (b"traceparent", b"tracestate"):
                carrier[name.decode()] = value.decode("latin-1")
            elif name == b"user-agent":
                user_agent = value.decode("latin-1")
        context = _propagator().extract(carrier) if carrier else None
        method = scope["method"]
        attributes: dict[str, Any] = {
            "http.request.method": method, "url.path": scope["path"], "url.scheme": scope.get("scheme", "http"),
            "http.route": http_route, "network.protocol.version": scope.get("http_version", "1.1"),
            "db.system.name": "chromadb", "chroma.operation": route.operation if route else "invalid_path",
        }
        server, client = scope.get("server"), scope.get("client")
        if server:
            attributes["server.address"], attributes["server.port"] = server[0], server[1]
        if client:
            attributes["client.address"] = client[0]
        if user_agent:
            attributes["user_agent.original"] = user_agent
        if route is not None:
            for key, value in (("chroma.tenant", route.tenant), ("chroma.database", route.database),
                               ("chroma.collection.id", route.collection),
                               ("chroma.collection.name", self.names.get(route.collection))):
                if value is not None:
                    attributes[key] = value
        span = self.tracer.start_span(f"{method} {http_route}", context=context, kind=SpanKind.SERVER,
                                      attributes=attributes)
        scope["chromaguard.span"] = span
        ctx = span.get_span_context()
        scope["chromaguard.trace"] = (f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}")
        current_trace.set(scope["chromaguard.trace"])
        return span

    def _end_span(self, span: Any, scope: Scope, exchange: _Exchange) -> None:
        from opentelemetry.trace import SpanContext, Status, StatusCode, TraceFlags

        status = exchange.status
        span.set_attribute("http.response.status_code", status or 499)
        principal = scope.get("chromaguard.principal")
        if principal is not None:
            span.set_attribute("enduser.id", principal.name)
        engine_trace_id = scope.get("chromaguard.engine_trace")
        if engine_trace_id:
            span.set_attribute("chroma.engine.trace_id", engine_trace_id)
            engine = SpanContext(int(engine_trace_id, 16), 1, is_remote=True,
                                 trace_flags=TraceFlags(TraceFlags.SAMPLED))
            span.add_link(engine, {"chroma.link": "engine trace"})
        if status >= 500 or status == 0:
            span.set_status(Status(StatusCode.ERROR, f"HTTP {status}" if status else "client went away"))
        span.end()
        current_trace.set(None)

    # ---- CORS and auth -----------------------------------------------------------------------

    async def _guarded(self, scope: Scope, receive: Receive, send: Send, route: Route | None) -> None:
        """CORS and auth, decided before anything reaches the engine."""
        origin = request_method = request_headers = None
        size = 0
        for name, value in scope["headers"]:
            size += len(name) + len(value)
            if name == b"origin":
                origin = value
            elif name == b"access-control-request-method":
                request_method = value
            elif name == b"access-control-request-headers":
                request_headers = value
        if size > MAX_HEADER_BYTES:
            await self._deny(send, Denial(431, "InvalidArgumentError",
                                          f"chromaguard: request headers exceed {MAX_HEADER_BYTES} bytes"))
            return
        method = scope["method"]
        if self.cors is not None and origin is not None:
            if method == "OPTIONS" and request_method is not None:
                status, headers = self.cors.preflight(origin, request_headers)
                await send({"type": "http.response.start", "status": status,
                            "headers": headers + [(b"content-length", b"0")]})
                await send({"type": "http.response.body", "body": b""})
                return
            extra = self.cors.response_headers(origin)
            if extra:
                send = _adding_headers(send, extra)
        if self.auth is not None and not self.auth.is_open(method, scope["path"]):
            client = scope.get("client")
            result = await self.auth.check(route, scope["headers"], client[0] if client else "")
            if isinstance(result, Denial):
                await self._deny(send, result)
                return
            scope["chromaguard.principal"] = result.principal
            if result.principal.tenant is not None and result.route.collection is not None:
                denial = await self._check_owner(result.principal, result.route)
                if denial is not None:
                    await self._deny(send, denial)
                    return
            if result.route.operation == "identity":
                await send_json(send, 200, result.principal.identity())
                return
        await self._route(scope, receive, send)
        if route is not None and route.operation in _CATALOG_CHANGES:
            self._listings.pop((route.tenant, route.database), None)

    async def _check_owner(self, principal: Any, route: Route) -> Denial | None:
        """The engine finds a collection by its id alone, whatever tenant and database the path
        names: a scoped token may only touch collections listed in the database it names."""
        key = (route.tenant, route.database)
        listed = self._listings.get(key)
        now = time.monotonic()
        if listed is None or (route.collection not in listed[1] and now - listed[0] > 1.0):
            path = "/api/v2/tenants/{}/databases/{}/collections?limit=1000000".format(
                *(quote(part or "", safe="") for part in key))
            try:
                response = await self.pool.request("GET", path.encode(), timeout=self.heartbeat_timeout)
                items = json.loads(await response.read()) if response.status == 200 else []
            except (UpstreamError, ValueError):
                return Denial(503, "ServiceUnavailable", "chromaguard: cannot check where the collection lives",
                              tuple(_RETRY_AFTER))
            names = {str(item.get(field)) for item in items if isinstance(item, dict) for field in ("id", "name")}
            if len(self._listings) > 10_000:
                self._listings.clear()
            listed = self._listings[key] = (now, frozenset(names))
        if route.collection not in listed[1]:
            log.info("denied %s to %s: collection %s is not in %s/%s", route.operation, principal.name,
                     route.collection, route.tenant, route.database)
            return Denial(403, "AuthorizationError",
                          f"chromaguard: {principal.name} may not use collection {route.collection}: it is not in "
                          f"{route.tenant}/{route.database}")
        return None

    async def _deny(self, send: Send, denial: Denial) -> None:
        if self.metrics is not None:
            self.metrics.auth_failure(_DENIAL_REASONS.get(denial.status, str(denial.status)))
        await send_error(send, denial.status, denial.error, denial.message, denial.headers)

    # ---- answered here -----------------------------------------------------------------------

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if scope["method"] in ("GET", "HEAD"):
            if path in HEARTBEAT_PATHS:
                await self.heartbeat(send)
                return
            if path == "/healthz":
                await send_json(send, 200, {"status": "ok"})
                return
            if path == "/readyz" and self.deps is not None:
                from .readiness import readiness

                ready, report = await readiness(self.deps)
                if self.metrics is not None:
                    for name, check in report["checks"].items():
                        self.metrics.health_check(name, check["ok"])
                await send_json(send, 200 if ready else 503, report, [] if ready else _RETRY_AFTER)
                return
            if path == "/chromaguard/status" and self.deps is not None:
                from .readiness import status

                await send_json(send, 200, await status(self.deps))
                return
            if path == "/metrics" and self.telemetry is not None:
                await self._metrics(send)
                return
        if path.startswith("/chromaguard/snapshots"):
            if self.snapshots is None:
                await send_error(send, 501, "InvalidArgumentError",
                                 "chromaguard: online backups need the embedded engine; for a remote Chroma use "
                                 "chromaguard export")
                return
            await self.snapshots.handle(scope["method"], canonical_segments(scope["raw_path"]) or [], send)
            return
        await self.forward(scope, receive, send)

    async def _metrics(self, send: Send) -> None:
        assert self.telemetry is not None
        body = self.telemetry.prometheus_text()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/plain; version=0.0.4; charset=utf-8"),
            (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def heartbeat(self, send: Send) -> None:
        """Both API lines' heartbeat, answered from the engine's v2 one (v1 is 410 on Chroma 1.x)."""
        problem = ""
        body = b""
        now = time.monotonic()
        if not self.backend.available:
            problem = self._down_message()
        elif now >= self._alive_until:  # else the engine answered a heartbeat less than a second ago
            try:
                status, body = await self._get("/api/v2/heartbeat")
                if status == 404:  # a Chroma 0.x upstream only has v1
                    status, body = await self._get("/api/v1/heartbeat")
                if status != 200:
                    problem = f"chromaguard: the Chroma engine heartbeat answered {status}"
                else:
                    self._alive_until = now + HEARTBEAT_CACHE_SECONDS
            except UpstreamError as exc:
                problem = f"chromaguard: the Chroma engine is not answering: {exc}"
        if self.metrics is not None:
            self.metrics.health_check("heartbeat", not problem)
        if problem:
            await send_error(send, 503, "ServiceUnavailable", problem, _RETRY_AFTER)
            return
        try:
            beat = int(json.loads(body)["nanosecond heartbeat"])
        except (ValueError, KeyError, TypeError):
            beat = time.time_ns()
        await send_json(send, 200, {"nanosecond heartbeat": beat})

    async def _get(self, path: str) -> tuple[int, bytes]:
        response = await self.pool.request("GET", path.encode(), timeout=self.heartbeat_timeout)
        return response.status, await response.read()

    def _down_message(self) -> str:
        reason = self.backend.unavailable_reason or "it is not running"
        return f"chromaguard: the Chroma engine is unavailable ({reason}); retry shortly"

    # ---- forwarded ---------------------------------------------------------------------------

    async def forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.backend.available:
            await send_error(send, 503, "ServiceUnavailable", self._down_message(), _RETRY_AFTER)
            return
        headers, length = self._request_headers(scope)
        if length is not None and length > self.max_payload_bytes:
            await self._too_large(send, length)
            return
        target = scope["raw_path"]
        if scope["query_string"]:
            target = target + b"?" + scope["query_string"]
        method = scope["method"]
        span = scope.get("chromaguard.span")
        route = scope.get("chromaguard.route")

        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body = message.get("body", b"")
        if span is not None and route is not None and body:
            span.set_attributes(request_attributes(route.operation, body))
        gated = self.gate is not None and (route is None or route.access != READ)
        if gated and message.get("more_body"):
            # A write counts as in flight for a snapshot's hold only once it can go to the engine
            # whole: a slow uploader must not keep every other writer (and the backup) waiting.
            try:
                whole = await _gather_body(body, receive, self.max_payload_bytes)
            except ClientDisconnected:
                return
            if whole is None:
                await self._too_large(send, None)
                return
            message = {"type": "http.request", "body": whole, "more_body": False}
        if gated:
            await self.gate.enter()  # type: ignore[union-attr]
        try:
            response = await self._exchange(scope, receive, send, message, headers, target, length)
        finally:
            if gated:
                self.gate.leave()  # type: ignore[union-attr]
        if response is None:
            return
        await self._relay(response, send, scope if span is not None else None)

    async def _exchange(self, scope: Scope, receive: Receive, send: Send, message: dict[str, Any],
                        headers: list[tuple[bytes, bytes]], target: bytes, length: int | None) -> Any:
        """Send the request to the engine; None when an error answer was already sent instead."""
        method = scope["method"]
        body = message.get("body", b"")
        try:
            if not message.get("more_body"):
                return await self.pool.request(method, target, headers, body, timeout=self.upstream_timeout)
            if length is not None:
                stream = _body_stream(body, receive)
                return await self.pool.request(method, target, headers, body_stream=stream, length=length,
                                               timeout=self.upstream_timeout)
            whole = await _gather_body(body, receive, self.max_payload_bytes)  # chunked: gather it (bounded)
            if whole is None:
                await self._too_large(send, None)
                return None
            return await self.pool.request(method, target, headers, whole, timeout=self.upstream_timeout)
        except ClientDisconnected:
            return None
        except UpstreamUnavailable as exc:
            await send_error(send, 503, "ServiceUnavailable", f"chromaguard: {exc}", _RETRY_AFTER)
        except UpstreamTimeout as exc:
            await send_error(send, 504, "GatewayTimeout", f"chromaguard: {exc}")
        except UpstreamError as exc:
            log.warning("upstream failed on %s %s: %s", method, scope["path"], exc)
            await send_error(send, 502, "BadGateway", f"chromaguard: {exc}")
        return None

    async def _relay(self, response: Any, send: Send, traced: Scope | None) -> None:
        headers = [(n, v) for n, v in response.headers if n not in _RESPONSE_HOP_BY_HOP]
        tap: list[bytes] | None = None
        if traced is not None:
            tap = self._tap_for(traced, response)
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        size = 0
        try:
            async for chunk in response.chunks():
                if tap is not None:
                    size += len(chunk)
                    if size <= RESPONSE_PARSE_LIMIT:
                        tap.append(chunk)
                    else:
                        tap = None
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamError as exc:
            # Headers are out: all we can do is cut the response so the client sees it failed.
            log.warning("upstream failed mid-response: %s", exc)
            raise
        finally:
            response.release()
        await send({"type": "http.response.body", "body": b""})
        if tap is not None and traced is not None and 200 <= response.status < 300:
            route = traced["chromaguard.route"]
            traced["chromaguard.span"].set_attributes(response_attributes(route.operation, b"".join(tap),
                                                                          self.names))

    def _tap_for(self, scope: Scope, response: Any) -> list[bytes] | None:
        """Start collecting the response body if the span wants facts from it; note the engine's trace id."""
        for name, value in response.headers:
            if name == b"chroma-trace-id":
                trace_id = value.decode("latin-1")
                if len(trace_id) == 32 and trace_id != _NO_TRACE:
                    scope["chromaguard.engine_trace"] = trace_id
        route = scope.get("chromaguard.route")
        return [] if route is not None and route.operation in RESULT_OPS else None

    def _request_headers(self, scope: Scope) -> tuple[list[tuple[bytes, bytes]], int | None]:
        headers: list[tuple[bytes, bytes]] = []
        length: int | None = None
        strip = self._strip
        trace = scope.get("chromaguard.trace")
        user_agent = b""
        for name, value in scope["headers"]:
            if name in strip:
                if name == b"content-length":
                    length = int(value)  # the server already rejected a malformed one
                continue
            if trace is not None and name in _TRACE_HEADERS:
                if name == b"user-agent":
                    user_agent = value
                continue
            headers.append((name, value))
        if trace is not None:
            # The engine starts its own trace whatever traceparent says, but it records the
            # user agent on its request span: our traceparent there ties its trace to ours.
            traceparent = f"00-{trace[0]}-{trace[1]}-01".encode()
            headers.append((b"traceparent", traceparent))
            headers.append((b"user-agent", (user_agent + b" " if user_agent else b"")
                            + b"chromaguard-traceparent/" + traceparent))
        client = scope.get("client")
        if client:
            headers.append((b"x-forwarded-for", client[0].encode()))
        headers.append((b"x-forwarded-proto", scope.get("scheme", "http").encode()))
        return headers, length

    async def _too_large(self, send: Send, length: int | None) -> None:
        size = f"{length} bytes" if length is not None else "the body"
        await send_error(send, 413, "PayloadTooLarge",
                         f"chromaguard: {size} exceeds the limit of {self.max_payload_bytes} bytes "
                         "(CHROMA_MAX_PAYLOAD_SIZE_BYTES); send smaller batches")


@functools.lru_cache(maxsize=1)
def _propagator() -> Any:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator()


def _adding_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message["headers"], *extra]}
        await send(message)

    return wrapped


async def _body_stream(first: bytes, receive: Receive) -> AsyncIterator[bytes]:
    if first:
        yield first
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body"):
            return


async def _gather_body(first: bytes, receive: Receive, limit: int) -> bytes | None:
    parts = [first]
    size = len(first)
    async for chunk in _body_stream(b"", receive):
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
