"""The front door: CORS, auth, telemetry and health answered here; everything else forwarded.

Forwarding is transparent: method, raw path and query, headers (less the
hop-by-hop ones), status and body pass through untouched and streamed.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import json
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from opentelemetry.trace import Link, SpanContext, Status, StatusCode, TraceFlags

from ..access.auth import Authenticator, Denial, Grant
from ..access.cors import CorsPolicy
from ..access.ownership import LOOK_UP, Ownership
from ..access.routes import Route, canonical_segments, route_of
from ..http11.client import UpstreamAborted, UpstreamError, UpstreamPool, UpstreamTimeout, UpstreamUnavailable
from ..http11.fields import HOP_BY_HOP, Headers, request_length
from ..http11.server import DISPATCH_WHOLE_BELOW, ClientDisconnected, Exchange
from ..telemetry.attributes import (
    COUNTED_OPS,
    CollectionNames,
    request_attributes,
    response_attributes,
    result_attributes,
)
from ..telemetry.audit import REFUSED as AUDIT_REFUSED
from ..telemetry.audit import AuditLog
from ..telemetry.logs import current_trace
from ..telemetry.spans import SpanDetails
from . import configpolicy
from .call import Call
from .configpolicy import ConfigPolicy
from .relay import Relay, RelayWatch

if TYPE_CHECKING:
    from ..backup.snapshot_api import ControlAccess, SnapshotService
    from ..health.readiness import Dependencies, DiskFloor
    from ..telemetry.instruments import Telemetry
    from .writegate import WriteGate

log = logging.getLogger("chromaguard.frontdoor")

HEARTBEAT_PATHS = frozenset({"/api/v1/heartbeat", "/api/v2/heartbeat"})
_TRACE_HEADERS = frozenset({b"traceparent", b"tracestate", b"user-agent"})
_RETRY_AFTER = [(b"retry-after", b"1")]
_RETRY_LATER = [(b"retry-after", b"10")]  # room comes back when someone makes it, not in a second
_DENIAL_REASONS = {400: "bad_request", 401: "missing_credentials", 403: "forbidden", 429: "rate_limited",
                   431: "headers_too_large"}
HEARTBEAT_CACHE_SECONDS = 1.0
_CATALOG_CHANGES = frozenset({"create_collection", "delete_collection", "modify_collection", "fork"})
_FORWARDED_PROTO = (b"x-forwarded-proto", b"http")
# A get or query answer up to this size waits with its span to be counted in the export thread
# (a top-10 query's is 1-3 KiB); a larger one is counted at once, so a span waiting in the
# export queue never holds more than this of an answer.
_COUNT_LATER_BELOW = 8 * 1024
HEALTHZ, READYZ, METRICS, STATUS, OWN_PREFIX = "/healthz", "/readyz", "/metrics", "/chromaguard/status", "/chromaguard/"
# Paths `_route` may answer itself: never relayed straight to the engine.
ANSWERED_HERE = HEARTBEAT_PATHS | {HEALTHZ, READYZ, METRICS}

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


class Admission(enum.Enum):
    """CORS's and auth's verdict before anything reaches the engine."""

    GO = "go"
    ANSWERED = "answered"  # refused, or answered here (a preflight, the identity)
    WAIT = "wait"  # the decision waits for a password check (bcrypt) or a listing (the owner check)


class FrontDoor:
    def __init__(self, pool: UpstreamPool, backend: Backend, *, max_payload_bytes: int,
                 upstream_timeout: float, heartbeat_timeout: float = 5.0,
                 strip_request_headers: frozenset[bytes] = frozenset(),
                 auth: Authenticator | None = None, cors: CorsPolicy | None = None,
                 telemetry: Telemetry | None = None, deps: Dependencies | None = None,
                 gate: WriteGate | None = None, snapshots: SnapshotService | None = None,
                 config_policy: ConfigPolicy | None = None, control: ControlAccess | None = None,
                 disk_floor: DiskFloor | None = None, audit: AuditLog | None = None) -> None:
        from ..backup.snapshot_api import ControlAccess

        self.pool = pool
        # With auth off, who may use /chromaguard/ (status, backups): this host, or the control token.
        self.control = control if control is not None else ControlAccess()
        self.backend = backend
        self.max_payload_bytes = max_payload_bytes
        self.upstream_timeout = upstream_timeout
        self.watch = RelayWatch(upstream_timeout) if upstream_timeout else None
        self.heartbeat_timeout = heartbeat_timeout
        self.auth = auth
        self.cors = cors
        self.telemetry = telemetry
        self.deps = deps
        self.gate = gate
        self.disk_floor = disk_floor
        self.snapshots = snapshots
        self.audit = audit
        self.config_policy = config_policy or ConfigPolicy()
        self.metrics = telemetry.metrics if telemetry else None
        self.spans = telemetry.spans if telemetry else None
        self.names = CollectionNames()
        self.in_flight = 0
        self._alive_until = 0.0
        self.ownership = Ownership(self._listing)
        if self.metrics is not None:
            self.metrics.in_flight = lambda: self.in_flight
        self._strip = HOP_BY_HOP | strip_request_headers

    def __call__(self, exchange: Exchange) -> Coroutine[Any, Any, None] | None:
        """Answer now, or start a callback relay (None); else the coroutine to run as a task."""
        route, http_route = route_of(exchange.method, exchange.raw_path)
        call = Call(exchange, route, http_route)
        if self.spans is not None:
            self._start_span(call)
        self.in_flight += 1
        try:
            admitted = Admission.GO if self.auth is None and self.cors is None else self._admit(call)
            if admitted is Admission.ANSWERED:
                self._finish(call)
                return None
            if admitted is Admission.GO and self._forward_now(call):
                return None
        except BaseException as exc:
            if call.relay is None:
                self._finish(call, exc)
            raise
        return self._serve(call, admitted is Admission.WAIT)

    async def _serve(self, call: Call, admit_first: bool) -> None:
        error: BaseException | None = None
        try:
            if admit_first and not await self._admit_waiting(call):
                return
            await self._route(call)
        except BaseException as exc:
            error = exc
            raise
        finally:
            if call.relay is None:  # else the relay ended it
                self._finish(call, error)

    def _finish(self, call: Call, error: BaseException | None = None) -> None:
        self.in_flight -= 1
        route = call.route
        status = call.exchange.status
        if self.metrics is not None:
            self.metrics.request(route.operation if route else "invalid_path", status or 499,
                                 time.perf_counter() - call.started)
        if call.span is not None:
            try:
                if error is not None and not isinstance(error, asyncio.CancelledError):
                    call.span.record_exception(error)
                self._end_span(call)
            except Exception:  # a span is never worth a request: the rest of this must run
                log.exception("could not end the span of %s %s", call.exchange.method, call.exchange.path)
        if call.trace is not None and current_trace.get() == call.trace:
            current_trace.set(None)
        if route is not None and route.operation in _CATALOG_CHANGES:
            self.ownership.forget(route.tenant, route.database)
        if self.audit is not None and _audited(call, status):
            self._audit(call, status or 499)

    def _audit(self, call: Call, status: int) -> None:
        """The request's line in the audit log (a state-changing, admin or refused request)."""
        exchange, route = call.exchange, call.route
        principal = call.principal.name if call.principal is not None else call.refused_principal
        trace_id = call.trace[0] if call.trace is not None else _trace_id(exchange.headers)
        assert self.audit is not None
        self.audit.record({
            "principal": principal, "client": exchange.client, "method": exchange.method,
            "path": exchange.raw_path.decode("latin-1"),  # as sent: %61dd is not "add"
            "operation": route.operation if route is not None else "invalid_path",
            "tenant": route.tenant if route is not None else None,
            "database": route.database if route is not None else None,
            "collection": route.collection if route is not None else None,
            "status": status, "outcome": "refused" if status in AUDIT_REFUSED else "ok" if status < 400 else "failed",
            "trace_id": trace_id})

    # ---- telemetry ---------------------------------------------------------------------------

    def _start_span(self, call: Call) -> None:
        """Ids and the parent now (the engine and our logs need them); attributes at the end,
        once the answer is out, so the request waits for no more than it must."""
        carrier: dict[str, str] | None = None
        for name, value in call.exchange.headers:
            if name == b"traceparent" or name == b"tracestate":
                if carrier is None:
                    carrier = {}
                carrier[name.decode()] = value.decode("latin-1")
            elif name == b"user-agent":
                call.user_agent = value
        context = _propagator().extract(carrier) if carrier else None
        method = call.exchange.method
        span = self.spans.start(f"{method} {call.http_route}", context, {  # type: ignore[union-attr]
            "http.request.method": method, "http.route": call.http_route})
        if span.recording:  # else the trace is only passed on: nothing to learn or export
            call.span = span
        ctx = span.context
        call.trace = (f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}")
        call.traceparent = f"00-{call.trace[0]}-{call.trace[1]}-{ctx.trace_flags:02x}".encode()
        current_trace.set(call.trace)

    def _end_span(self, call: Call) -> None:
        """Hand the span over with the request's last facts; its attributes are built from them
        in the export thread (``_span_details``), off the request's path."""
        exchange, route = call.exchange, call.route
        principal = call.principal
        self.spans.end(call.span, None, _span_details, (  # type: ignore[union-attr]
            exchange.path, exchange.http_version, exchange.server, exchange.client, call.user_agent, route,
            self.names.get(route.collection) if route is not None else None, call.facts, exchange.status,
            principal.name if principal is not None else None, call.engine_trace, call.answer))

    # ---- CORS and auth -----------------------------------------------------------------------

    def _admit(self, call: Call) -> Admission:
        """CORS and auth, decided before anything reaches the engine."""
        exchange, route = call.exchange, call.route
        origin = request_method = request_headers = None
        for name, value in exchange.headers:
            if name == b"origin":
                origin = value
            elif name == b"access-control-request-method":
                request_method = value
            elif name == b"access-control-request-headers":
                request_headers = value
        if self.cors is not None and origin is not None:
            if exchange.method == "OPTIONS" and request_method is not None:
                status, headers = self.cors.preflight(origin, request_headers)
                exchange.respond(status, headers, b"")
                return Admission.ANSWERED
            extra = self.cors.response_headers(origin)
            if extra:
                exchange.extra_headers = extra
        if self.auth is None or self.auth.is_open(exchange.method, exchange.path):
            return Admission.GO
        result = self.auth.check_now(route, exchange.headers, exchange.certificate)
        if result is None:
            return Admission.WAIT
        return self._granted(call, result, self._owner_now(result))

    def _owner_now(self, result: Grant | Denial) -> Denial | object | None:
        return self.ownership.now(result.principal, result.route) if isinstance(result, Grant) else None

    async def _listing(self, tenant: str, database: str) -> tuple[int, bytes]:
        """A database's collections, for the owner check."""
        path = "/api/v2/tenants/{}/databases/{}/collections?limit=1000000".format(
            quote(tenant, safe=""), quote(database, safe=""))
        response = await self.pool.request("GET", path.encode(), timeout=self.heartbeat_timeout)
        return response.status, await response.read()

    async def _admit_waiting(self, call: Call) -> bool:
        """The rest of ``_admit``: the password check (bcrypt) or the owner check (a listing)."""
        assert self.auth is not None
        result: Grant | Denial
        if call.grant is not None:  # decided already: asking again would count twice against rate limits
            result = call.grant
        else:
            exchange = call.exchange
            result = await self.auth.check(call.route, exchange.headers, exchange.client, exchange.certificate)
        owner = self._owner_now(result)
        if owner is LOOK_UP and isinstance(result, Grant):
            owner = await self.ownership.check(result.principal, result.route)
        return self._granted(call, result, owner) is Admission.GO

    def _granted(self, call: Call, result: Grant | Denial, owner: Denial | object | None) -> Admission:
        exchange = call.exchange
        if isinstance(result, Denial):
            call.refused_principal = result.principal
            self._deny(exchange, result)
            return Admission.ANSWERED
        call.principal = result.principal
        if owner is LOOK_UP:
            call.grant = result
            return Admission.WAIT
        if isinstance(owner, Denial):
            self._deny(exchange, owner)
            return Admission.ANSWERED
        if result.route.operation == "identity":
            exchange.respond_json(200, result.principal.identity())
            return Admission.ANSWERED
        return Admission.GO

    def _deny(self, exchange: Exchange, denial: Denial) -> None:
        if self.metrics is not None:
            self.metrics.auth_failure(_DENIAL_REASONS.get(denial.status, str(denial.status)))
        exchange.respond_error(denial.status, denial.error, denial.message, denial.headers)

    # ---- answered here -----------------------------------------------------------------------

    async def _route(self, call: Call) -> None:
        exchange = call.exchange
        path = exchange.path
        if self.auth is None and path.startswith(OWN_PREFIX):
            # Auth on: the router made these admin-only. Off: this host only (the peer address,
            # never a header), or the control token. A backup copies every byte of data.
            denial = self.control.refusal(exchange.client, exchange.headers)
            if denial is not None:
                self._deny(exchange, denial)
                return
        if exchange.method in ("GET", "HEAD"):
            if path in HEARTBEAT_PATHS:
                await self.heartbeat(exchange)
                return
            if path == HEALTHZ:
                exchange.respond_json(200, {"status": "ok"})
                return
            if path == READYZ and self.deps is not None:
                from ..health.readiness import readiness

                ready, report = await readiness(self.deps)
                if self.metrics is not None:
                    for name, check in report["checks"].items():
                        self.metrics.health_check(name, check["ok"])
                exchange.respond_json(200 if ready else 503, report, [] if ready else _RETRY_AFTER)
                return
            if path == STATUS and self.deps is not None:
                from ..health.readiness import status

                exchange.respond_json(200, await status(self.deps))
                return
            if path == METRICS and self.telemetry is not None:
                exchange.respond(200, [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")],
                                 self.telemetry.prometheus_text())
                return
        if path.startswith("/chromaguard/snapshots"):
            if self.snapshots is None:
                exchange.respond_error(501, "InvalidArgumentError",
                                       "chromaguard: online backups need the embedded engine; for a remote Chroma "
                                       "use chromaguard export")
                return
            await self.snapshots.handle(exchange, canonical_segments(exchange.raw_path) or [])
            return
        await self.forward(call)

    async def heartbeat(self, exchange: Exchange) -> None:
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
            exchange.respond_error(503, "ServiceUnavailable", problem, _RETRY_AFTER)
            return
        try:
            beat = int(json.loads(body)["nanosecond heartbeat"])
        except (ValueError, KeyError, TypeError):
            beat = time.time_ns()
        exchange.respond_json(200, {"nanosecond heartbeat": beat})

    async def _get(self, path: str) -> tuple[int, bytes]:
        response = await self.pool.request("GET", path.encode(), timeout=self.heartbeat_timeout)
        return response.status, await response.read()

    def _down_message(self) -> str:
        reason = self.backend.unavailable_reason or "it is not running"
        return f"chromaguard: the Chroma engine is unavailable ({reason}); retry shortly"

    # ---- forwarded ---------------------------------------------------------------------------

    def _forward_now(self, call: Call) -> bool:
        """Forward from this callback when nothing needs waiting for; False: take the async path."""
        exchange = call.exchange
        path = exchange.path
        if (not exchange.body_complete or path in ANSWERED_HERE or path.startswith(OWN_PREFIX)
                or not self.backend.available or configpolicy.checks(exchange.method, call.route)):
            return False  # configpolicy: a body that may be stored is checked in ``forward``
        fields, _ = self._fields(call)
        size = exchange.body_length  # whole: what came, whatever the framing said
        if size > self.max_payload_bytes:
            self._too_large(exchange, size)
            self._finish(call)
            return True
        route = call.route
        gated = self.gate is not None and (route is None or route.writes)
        if gated and self._no_room(route, size) is not None:
            return False
        if gated and not self.gate.try_enter():  # type: ignore[union-attr]
            return False
        conn = self.pool.idle()
        if conn is None:
            if gated:
                self.gate.leave()  # type: ignore[union-attr]
            return False
        body = exchange.take_body()
        if call.span is not None and route is not None and body:
            call.facts = request_attributes(route.operation, body)
        Relay(self, call, self._head(call, fields, request_length(exchange.method, len(body))), (body,), gated
              ).send(conn)
        return True

    async def forward(self, call: Call) -> None:
        exchange = call.exchange
        if not self.backend.available:
            exchange.respond_error(503, "ServiceUnavailable", self._down_message(), _RETRY_AFTER)
            return
        fields, length = self._fields(call)
        if length is not None and length > self.max_payload_bytes:
            self._too_large(exchange, length)
            return
        route = call.route
        gated = self.gate is not None and (route is None or route.writes)
        body: list[bytes] | None = None
        checked = configpolicy.checks(exchange.method, route)
        if exchange.body_complete or gated or checked or length is None or length <= DISPATCH_WHOLE_BELOW:
            # Whole before it goes on (bounded by the payload limit). A write counts as in flight
            # for a snapshot's hold only once it can go to the engine whole: a slow uploader must
            # not keep every other writer (and the backup) waiting. Kept in the pieces it came
            # in: they go on as they are, without a copy of megabytes into one.
            try:
                body = await exchange.read_body_parts(self.max_payload_bytes)
            except ClientDisconnected:
                return
            if body is None:
                self._too_large(exchange, None)
                return
            if checked and self._refused_config(call, b"".join(body)):
                return
            if call.span is not None and route is not None and body:
                call.facts = request_attributes(route.operation, b"".join(body))
        size = length if body is None else sum(map(len, body))
        if gated and self._refused_for_room(exchange, route, size or 0):
            return
        if gated:
            await self.gate.enter()  # type: ignore[union-attr]
            # A snapshot's hold may have lasted while the disk filled (this write is counted once already).
            if self._refused_for_room(exchange, route, 0):
                self.gate.leave()  # type: ignore[union-attr]
                return
        head = self._head(call, fields, request_length(exchange.method, size or 0))
        relay = Relay(self, call, head, body, gated)
        await relay.forward(exchange.body_chunks() if body is None else None)

    def _no_room(self, route: Route | None, size: int) -> str | None:
        if self.disk_floor is None:
            return None
        return self.disk_floor.refusal(route.operation if route is not None else None, size)

    def _refused_for_room(self, exchange: Exchange, route: Route | None, size: int) -> bool:
        refusal = self._no_room(route, size)
        if refusal is None:
            return False
        # "ChromaError": a name the official client knows, so it raises with this message.
        exchange.respond_error(507, "ChromaError", refusal, _RETRY_LATER)
        return True

    def relayed(self, call: Call, tap: list[bytes] | None) -> None:
        """A relay is over (answered, failed, or the client left)."""
        self._learn_from_response(call, tap)
        self._finish(call)

    def _learn_from_response(self, call: Call, tap: list[bytes] | None) -> None:
        """Facts for the span from a successful answer's body (result counts, collection names)."""
        if tap is not None and call.route is not None and 200 <= call.exchange.status < 300:
            operation, body = call.route.operation, b"".join(tap)
            if operation in COUNTED_OPS and len(body) <= _COUNT_LATER_BELOW:
                call.answer = (operation, body)  # a count only: the export thread works it out
            else:
                call.facts = {**(call.facts or {}), **response_attributes(operation, body, self.names)}

    def answer_failure(self, exchange: Exchange, exc: UpstreamError) -> None:
        """An engine that failed before its answer began: noted (the supervisor, the log) whether
        or not the client is still there, and answered if it is."""
        if isinstance(exc, UpstreamAborted):  # the supervisor gave up on a stuck engine; it says why
            if not exchange.disconnected:
                exchange.respond_error(503, "ServiceUnavailable", f"chromaguard: {exc}", _RETRY_AFTER)
            return
        noticed = getattr(self.backend, "request_failed", None)
        if noticed is not None:  # the embedded engine's supervisor: failing requests call for a probe now
            noticed(exc)
        if exchange.disconnected:  # nobody to answer (counted as 499)
            log.info("upstream failed on %s %s after the client left: %s", exchange.method, exchange.path, exc)
        elif isinstance(exc, UpstreamUnavailable):
            exchange.respond_error(503, "ServiceUnavailable", f"chromaguard: {exc}", _RETRY_AFTER)
        elif isinstance(exc, UpstreamTimeout):
            exchange.respond_error(504, "GatewayTimeout", f"chromaguard: {exc}")
        else:
            log.warning("upstream failed on %s %s: %s", exchange.method, exchange.path, exc)
            exchange.respond_error(502, "BadGateway", f"chromaguard: {exc}")

    def _fields(self, call: Call) -> tuple[Headers, int | None]:
        """The request's fields as the engine gets them, and the client's Content-Length."""
        headers: Headers = []
        length: int | None = None
        strip = self._strip
        trace = call.trace
        user_agent = b""
        for name, value in call.exchange.headers:
            if name in strip:
                if name == b"content-length":
                    length = int(value)  # the parser already refused a malformed one
                continue
            if trace is not None and name in _TRACE_HEADERS:
                if name == b"user-agent":
                    user_agent = value
                continue
            headers.append((name, value))
        if trace is not None:
            # The engine starts its own trace whatever traceparent says, but it records the
            # user agent on its request span: our traceparent there ties its trace to ours.
            headers.append((b"traceparent", call.traceparent))
            headers.append((b"user-agent", (user_agent + b" " if user_agent else b"")
                            + b"chromaguard-traceparent/" + call.traceparent))
        if call.exchange.client:
            headers.append((b"x-forwarded-for", call.exchange.client.encode()))
        headers.append(_FORWARDED_PROTO)
        return headers, length

    def _head(self, call: Call, fields: Headers, length: int | None) -> bytes:
        exchange = call.exchange
        target = exchange.raw_path + b"?" + exchange.query if exchange.query else exchange.raw_path
        return self.pool.head(exchange.method, target, fields, length)

    def _refused_config(self, call: Call, body: bytes) -> bool:
        """Answer 400 when the body would store a configuration that makes clients run code."""
        why = self.config_policy.refusal(call.route, body)
        if why is None:
            return False
        log.warning("refused %s %s: %s", call.exchange.method, call.exchange.path, why)
        call.exchange.respond_error(400, "InvalidArgumentError", f"chromaguard: {why}")
        return True

    def _too_large(self, exchange: Exchange, length: int | None) -> None:
        size = f"{length} bytes" if length is not None else "the body"
        exchange.respond_error(413, "PayloadTooLarge",
                               f"chromaguard: {size} exceeds the limit of {self.max_payload_bytes} bytes "
                               "(CHROMA_MAX_PAYLOAD_SIZE_BYTES); send smaller batches")


def _span_details(facts: tuple[Any, ...]) -> SpanDetails:
    """A server span's attributes, status and links from what ``_end_span`` kept (export thread)."""
    path, http_version, server, client, user_agent, route, name, learnt, status, principal, engine_trace, answer = facts
    attributes: dict[str, Any] = {
        "url.path": path, "url.scheme": "http", "network.protocol.version": http_version,
        "db.system.name": "chromadb", "chroma.operation": route.operation if route else "invalid_path",
    }
    if server:
        attributes["server.address"], attributes["server.port"] = server
    if client:
        attributes["client.address"] = client
    if user_agent is not None:
        attributes["user_agent.original"] = user_agent.decode("latin-1")
    if route is not None:
        collection_id, name = (route.collection, name) if route.by_id else (None, route.collection)
        for key, value in (("chroma.tenant", route.tenant), ("chroma.database", route.database),
                           ("chroma.collection.id", collection_id), ("chroma.collection.name", name)):
            if value is not None:
                attributes[key] = value
    if learnt:
        attributes.update(learnt)
    if answer is not None:
        attributes.update(result_attributes(*answer))
    attributes["http.response.status_code"] = status or 499
    if principal is not None:
        attributes["enduser.id"] = principal
    links: list[Link] = []
    if engine_trace:
        attributes["chroma.engine.trace_id"] = engine_trace
        engine = SpanContext(int(engine_trace, 16), 1, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
        links.append(Link(engine, {"chroma.link": "engine trace"}))
    failed = status >= 500 or status == 0
    return attributes, Status(StatusCode.ERROR, f"HTTP {status}" if status else "client went away") \
        if failed else None, links


def _audited(call: Call, status: int | None) -> bool:
    """Refused, or able to change something: a write or admin route, or a path no route knows
    sent with a method that could write (forwarded as it is with auth off)."""
    if status in AUDIT_REFUSED:
        return True
    method, route = call.exchange.method, call.route
    if method in ("GET", "HEAD", "OPTIONS"):  # reads; OPTIONS: CORS preflights
        return route is not None and route.writes and method != "OPTIONS"
    return route is None or route.writes


def _trace_id(headers: Headers) -> str | None:
    """The caller's trace id, from a well-formed ``traceparent`` (tracing off: ours is not made)."""
    for name, value in headers:
        if name == b"traceparent":
            parts = value.split(b"-")
            if len(parts) == 4 and len(parts[1]) == 32:
                try:
                    int(parts[1], 16)
                except ValueError:
                    return None
                return parts[1].decode().lower()
    return None


@functools.lru_cache(maxsize=1)
def _propagator() -> Any:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator()
