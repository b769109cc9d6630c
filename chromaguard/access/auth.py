"""Client authentication and authorisation at the front door (Chroma 1.x has none).

Missing credentials → 401 with ``WWW-Authenticate``; wrong credentials or an
operation the token may not do → 403. Error bodies use Chroma's error names so
the official client raises its own auth errors. Tokens never reach a log line.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from . import chroma06
from .credentials import CredentialStore, Principal
from .routes import ADMIN, METRICS, READ, WRITE, Route

ANONYMOUS = Principal("", "read", "default_tenant", ("default_database",))

log = logging.getLogger("chromaguard.auth")

# metrics: a token for Prometheus that reads no data (the read role's token could read it all).
_ALLOWED = {ADMIN: {READ, WRITE, ADMIN, METRICS}, WRITE: {READ, WRITE, METRICS}, READ: {READ, METRICS},
            METRICS: {METRICS}}
# What a token scoped to a tenant may ask that names no tenant. Not /metrics: it counts every
# tenant's collections and requests.
_TENANTLESS_OK = {"heartbeat", "version", "pre-flight-checks", "healthcheck", "identity", "healthz", "readyz"}
DEFAULT_OPEN_PATHS = ("/api/v1/heartbeat", "/api/v2/heartbeat", "/healthz", "/readyz")


@dataclass(frozen=True)
class Denial:
    status: int
    error: str
    message: str
    headers: tuple[tuple[bytes, bytes], ...] = ()
    principal: str | None = field(default=None, compare=False)  # refused with good credentials (the audit log)


class Grant(NamedTuple):
    """Who may do what was asked. A tuple: one is made for every authorised request, and a
    frozen dataclass costs twice as much to build from cold caches (docs/performance.md)."""

    principal: Principal
    route: Route


@dataclass(frozen=True)
class _Password:
    """Basic credentials not yet checked: bcrypt decides, unless the cache already knows them."""

    user: str
    password: str = field(repr=False)


_NOT_CANONICAL = Denial(400, "InvalidArgumentError",
                        "chromaguard: the request path is not in canonical form (no //, /./, /../, "
                        "encoded slashes or trailing slash)")
_INVALID = Denial(403, "AuthorizationError", "chromaguard: the credentials are not valid")
_AMBIGUOUS_CERTIFICATE = Denial(403, "AuthorizationError", "chromaguard: the client certificate's names match more "
                                "than one record of the credentials file; give each certificate one")


HEADER_BLANKS = b" \t"  # what HTTP allows around a header value, and all that is trimmed from credentials

# Uncached password checks (bcrypt, on purpose slow) per client address: online guessing stays slow.
PASSWORD_CHECKS_PER_SECOND = 5.0


class RateLimiter:
    """A token bucket per caller: ``rate`` requests a second, bursts up to one second's worth."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str) -> float:
        """0 when allowed, else the seconds until the next request would be."""
        now = self.clock()
        level, last = self._buckets.get(key, (self.capacity, now))
        level = min(self.capacity, level + (now - last) * self.rate)
        if level >= 1.0:
            self._buckets[key] = (level - 1.0, now)
            return 0.0
        self._buckets[key] = (level, now)
        return (1.0 - level) / self.rate


class Authenticator:
    def __init__(self, provider: str, store: CredentialStore, *, transport: str = "any",
                 open_paths: Iterable[str] = DEFAULT_OPEN_PATHS, rate_limit: float = 0.0) -> None:
        self.provider = provider
        self.store = store
        self.transport = transport
        self.open_paths = frozenset(open_paths)
        self.limiter = RateLimiter(rate_limit) if rate_limit > 0 else None
        self.guessing = RateLimiter(PASSWORD_CHECKS_PER_SECOND)  # per client address
        scheme = b"Bearer" if provider == "token" else b"Basic"
        self._challenge = ((b"www-authenticate", scheme + b' realm="chromaguard"'),)

    def is_open(self, method: str, path: str) -> bool:
        return method in ("GET", "HEAD") and path in self.open_paths

    def check_now(self, route: Route | None, headers: Iterable[tuple[bytes, bytes]],
                  certificate: tuple[str, ...] = ()) -> Grant | Denial | None:
        """Decide without waiting; None when a password must first go through bcrypt (``check``).
        ``certificate``: the names (CN, SANs) of the connection's verified client certificate."""
        if route is None:
            return _NOT_CANONICAL
        found = self._credentials(headers, certificate)
        if isinstance(found, _Password):
            principal = self.store.cached_password(found.user, found.password)
            if principal is None:
                return None
            found = principal
        return self._decide(route, found)

    async def check(self, route: Route | None, headers: Iterable[tuple[bytes, bytes]],
                    client: str, certificate: tuple[str, ...] = ()) -> Grant | Denial:
        """Decide on a request whose route (None: non-canonical path) is already known."""
        decided = self.check_now(route, headers, certificate)
        if decided is not None:
            return decided
        assert route is not None
        found = self._credentials(headers)
        assert isinstance(found, _Password)  # a password the cache does not know yet
        # bcrypt takes its time on purpose: off the event loop, and bounded per client.
        wait = self.guessing.allow(client)
        if wait:
            return Denial(429, "RateLimitError", "chromaguard: too many password attempts", _retry_after(wait))
        principal = await asyncio.to_thread(self.store.check_password, found.user, found.password)
        if principal is None:
            log.info("rejected unknown credentials")
        return self._decide(route, principal or _INVALID)

    def _decide(self, route: Route, found: Principal | Denial) -> Grant | Denial:
        if isinstance(found, Denial):
            if found.status == 401 and _client_bootstrap(route):
                # The official client asks who it is and checks the default tenant and database
                # exist before anything else; answering those without credentials lets the seed's
                # `HttpClient(...).heartbeat()` work with auth on. Every data call still needs a token.
                return Grant(ANONYMOUS, route)
            return found
        principal = found
        why = self._forbidden(principal, route)
        if why:
            log.info("denied %s to %s: %s", route.operation, principal.name, why)
            return Denial(403, "AuthorizationError", f"chromaguard: {principal.name} may not {why}",
                          principal=principal.name)
        if self.limiter is not None:
            wait = self.limiter.allow(principal.name)
            if wait:
                return Denial(429, "RateLimitError", f"chromaguard: rate limit reached for {principal.name}",
                              _retry_after(wait), principal.name)
        return Grant(principal, route)

    def _credentials(self, headers: Iterable[tuple[bytes, bytes]],
                     certificate: tuple[str, ...] = ()) -> Principal | Denial | _Password:
        offered: list[tuple[bytes, bytes]] = []
        for name, value in headers:
            if name == b"authorization" and self.transport != "x-chroma-token":
                offered.append((name, value))
            elif name == b"x-chroma-token" and self.transport != "authorization" and self.provider == "token":
                offered.append((name, value))
        if not offered:
            # No credentials in the request: a verified client certificate a record names stands
            # for that principal (credentials sent do decide, whatever certificate came with them).
            named = self.store.check_certificate(certificate) if certificate else []
            if len(named) > 1:  # which one it is would be a guess (and would change as records go)
                log.info("refused a client certificate that records of %s name", ", ".join(p.name for p in named))
                return _AMBIGUOUS_CERTIFICATE
            return named[0] if named else self._missing()
        if len(offered) > 1:
            return Denial(400, "AuthError", "chromaguard: send credentials in exactly one header")
        # Tokens are compared as the bytes the client sent: a UTF-8 client's non-ASCII token
        # matches the token written in the (UTF-8) credentials file.
        name, value = offered[0]
        if name == b"x-chroma-token":
            principal = self.store.check_token(value.strip(HEADER_BLANKS))
        else:
            scheme, _, rest = value.strip(HEADER_BLANKS).partition(b" ")
            rest = rest.strip(HEADER_BLANKS)
            if self.provider == "token" and scheme.lower() == b"bearer" and rest:
                principal = self.store.check_token(rest)
            elif self.provider == "basic" and scheme.lower() == b"basic" and rest:
                user_password = _basic(rest)
                if user_password is None:
                    return self._missing()
                return _Password(*user_password)
            else:
                return self._missing()
        if principal is None:
            log.info("rejected unknown credentials")
            return _INVALID
        return principal

    def _missing(self) -> Denial:
        how = ("Authorization: Bearer <token> or X-Chroma-Token: <token>" if self.provider == "token"
               else "Authorization: Basic <user:password in base64>")
        return Denial(401, "AuthError", f"chromaguard: authentication required: send {how}", self._challenge)

    @staticmethod
    def _forbidden(principal: Principal, route: Route) -> str:
        if principal.actions is not None:  # a Chroma 0.6 RBAC role: its actions decide, as in 0.6...
            why = chroma06.refusal(principal.actions, route.operation)
            if why or route.access in _ALLOWED[principal.role]:  # ...within the role of its record, if any
                return why
        if route.access not in _ALLOWED[principal.role]:
            return f"{route.operation.replace('_', ' ')} (role {principal.role})"
        if principal.tenant is None:
            return ""
        if route.tenant is None:
            if route.operation in _TENANTLESS_OK:
                return ""
            return f"{route.operation.replace('_', ' ')} outside its tenant"
        if route.tenant != principal.tenant:
            return f"use tenant {route.tenant}"
        if principal.databases is None:
            return ""
        if route.database is None:
            return "" if route.operation == "get_tenant" else f"{route.operation.replace('_', ' ')} across databases"
        if route.database not in principal.databases:
            return f"use database {route.database}"
        return ""


def _retry_after(wait: float) -> tuple[tuple[bytes, bytes]]:
    """Whole seconds, rounded up with half a second's margin: a client that waits that long gets in."""
    return ((b"retry-after", str(max(1, math.ceil(wait + 0.5))).encode()),)


def _client_bootstrap(route: Route) -> bool:
    if route.operation == "identity":
        return True
    return (route.operation in ("get_tenant", "get_database") and route.tenant == "default_tenant"
            and route.database in (None, "default_database"))


def _basic(encoded: bytes) -> tuple[str, str] | None:
    try:
        decoded = base64.b64decode(encoded, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep and user else None
