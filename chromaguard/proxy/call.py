"""What the front door learns about one request on its way through."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..access.auth import Grant
    from ..access.routes import Route
    from ..http11.server import Exchange
    from .relay import Relay


class Call:
    """One request's route, span, principal and the facts its span is built from."""

    __slots__ = ("exchange", "route", "http_route", "span", "trace", "traceparent", "user_agent", "principal",
                 "engine_trace", "started", "grant", "facts", "answer", "relay", "refused_principal")

    def __init__(self, exchange: Exchange, route: Route | None, http_route: str) -> None:
        self.exchange = exchange
        self.route = route
        self.http_route = http_route
        self.span: Any = None
        self.trace: tuple[str, str] | None = None
        self.traceparent = b""  # ours, for the engine: it carries our sampling decision
        self.user_agent: bytes | None = None  # read with the trace headers, for the span
        self.principal: Any = None
        self.engine_trace: str | None = None
        self.started = time.perf_counter()
        self.grant: Grant | None = None  # auth said yes; the owner check still needs a listing
        self.facts: dict[str, Any] | None = None  # span attributes learnt on the way, set once at its end
        self.answer: tuple[str, bytes] | None = None  # (operation, body) of a result counted in the export thread
        self.relay: Relay | None = None  # forwarded: the relay ends the request
        self.refused_principal: str | None = None  # good credentials, refused anyway (the audit log)
