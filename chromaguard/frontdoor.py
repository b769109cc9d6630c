"""The ASGI front door: answers health endpoints itself and forwards everything else.

Forwarding is transparent: method, raw path and query, headers (less the
hop-by-hop ones), status and body pass through untouched and streamed.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Protocol

from .auth import Authenticator, Denial
from .cors import CorsPolicy
from .responses import send_error, send_json
from .upstream import UpstreamError, UpstreamPool, UpstreamTimeout, UpstreamUnavailable

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
_RETRY_AFTER = [(b"retry-after", b"1")]
MAX_HEADER_BYTES = 32 * 1024


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


class FrontDoor:
    def __init__(self, pool: UpstreamPool, backend: Backend, *, max_payload_bytes: int,
                 upstream_timeout: float, heartbeat_timeout: float = 5.0,
                 strip_request_headers: frozenset[bytes] = frozenset(),
                 auth: Authenticator | None = None, cors: CorsPolicy | None = None) -> None:
        self.pool = pool
        self.backend = backend
        self.max_payload_bytes = max_payload_bytes
        self.upstream_timeout = upstream_timeout
        self.heartbeat_timeout = heartbeat_timeout
        self.auth = auth
        self.cors = cors
        self._strip = _HOP_BY_HOP | strip_request_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":  # websockets: Chroma has none
            return
        if self.auth is None and self.cors is None:
            await self._route(scope, receive, send)
        else:
            await self._guarded(scope, receive, send)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
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
            await send_error(send, 431, "InvalidArgumentError",
                             f"chromaguard: request headers exceed {MAX_HEADER_BYTES} bytes")
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
            result = self.auth.check(method, scope["raw_path"], scope["headers"])
            if isinstance(result, Denial):
                await send_error(send, result.status, result.error, result.message, result.headers)
                return
            scope["chromaguard.principal"] = result.principal
            scope["chromaguard.route"] = result.route
            if result.route.operation == "identity":
                await send_json(send, 200, result.principal.identity())
                return
        await self._route(scope, receive, send)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if path in HEARTBEAT_PATHS and scope["method"] in ("GET", "HEAD"):
            await self.heartbeat(send)
        elif path == "/healthz" and scope["method"] in ("GET", "HEAD"):
            await send_json(send, 200, {"status": "ok"})
        else:
            await self.forward(scope, receive, send)

    async def heartbeat(self, send: Send) -> None:
        """Both API lines' heartbeat, answered from the engine's v2 one (v1 is 410 on Chroma 1.x)."""
        if not self.backend.available:
            await send_error(send, 503, "ServiceUnavailable", self._down_message(), _RETRY_AFTER)
            return
        try:
            status, body = await self._get("/api/v2/heartbeat")
            if status == 404:  # a Chroma 0.x upstream only has v1
                status, body = await self._get("/api/v1/heartbeat")
        except UpstreamError as exc:
            await send_error(send, 503, "ServiceUnavailable", f"chromaguard: the Chroma engine is not answering: {exc}",
                             _RETRY_AFTER)
            return
        if status != 200:
            await send_error(send, 503, "ServiceUnavailable",
                             f"chromaguard: the Chroma engine heartbeat answered {status}", _RETRY_AFTER)
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

    async def forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.backend.available:
            await send_error(send, 503, "ServiceUnavailable", self._down_message(), _RETRY_AFTER)
            return
        headers, length, chunked = self._request_headers(scope)
        if length is not None and length > self.max_payload_bytes:
            await self._too_large(send, length)
            return
        target = scope["raw_path"]
        if scope["query_string"]:
            target = target + b"?" + scope["query_string"]
        method = scope["method"]

        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body = message.get("body", b"")
        try:
            if not message.get("more_body"):
                response = await self.pool.request(method, target, headers, body, timeout=self.upstream_timeout)
            elif length is not None:
                stream = _body_stream(body, receive)
                response = await self.pool.request(method, target, headers, body_stream=stream, length=length,
                                                   timeout=self.upstream_timeout)
            else:  # chunked upload: gather it (bounded) so the engine gets a plain body
                whole = await _gather_body(body, receive, self.max_payload_bytes)
                if whole is None:
                    await self._too_large(send, None)
                    return
                response = await self.pool.request(method, target, headers, whole, timeout=self.upstream_timeout)
        except ClientDisconnected:
            return
        except UpstreamUnavailable as exc:
            await send_error(send, 503, "ServiceUnavailable", f"chromaguard: {exc}", _RETRY_AFTER)
            return
        except UpstreamTimeout as exc:
            await send_error(send, 504, "GatewayTimeout", f"chromaguard: {exc}")
            return
        except UpstreamError as exc:
            log.warning("upstream failed on %s %s: %s", method, scope["path"], exc)
            await send_error(send, 502, "BadGateway", f"chromaguard: {exc}")
            return
        await self._relay(response, send)

    async def _relay(self, response: Any, send: Send) -> None:
        headers = [(n, v) for n, v in response.headers if n not in _RESPONSE_HOP_BY_HOP]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        try:
            async for chunk in response.chunks():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamError as exc:
            # Headers are out: all we can do is cut the response so the client sees it failed.
            log.warning("upstream failed mid-response: %s", exc)
            raise
        finally:
            response.release()
        await send({"type": "http.response.body", "body": b""})

    def _request_headers(self, scope: Scope) -> tuple[list[tuple[bytes, bytes]], int | None, bool]:
        headers: list[tuple[bytes, bytes]] = []
        length: int | None = None
        chunked = False
        strip = self._strip
        for name, value in scope["headers"]:
            if name in strip:
                if name == b"content-length":
                    length = int(value)  # the server already rejected a malformed one
                elif name == b"transfer-encoding":
                    chunked = True
                continue
            headers.append((name, value))
        client = scope.get("client")
        if client:
            headers.append((b"x-forwarded-for", client[0].encode()))
        headers.append((b"x-forwarded-proto", scope.get("scheme", "http").encode()))
        return headers, length, chunked

    async def _too_large(self, send: Send, length: int | None) -> None:
        size = f"{length} bytes" if length is not None else "the body"
        await send_error(send, 413, "PayloadTooLarge",
                         f"chromaguard: {size} exceeds the limit of {self.max_payload_bytes} bytes "
                         "(CHROMA_MAX_PAYLOAD_SIZE_BYTES); send smaller batches")


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
