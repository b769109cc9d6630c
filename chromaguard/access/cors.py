"""CORS as the seed configures it (``CHROMA_SERVER_CORS_ALLOW_ORIGINS``), enforced by the front door.

Origins match exactly (scheme, host and port). Preflights are answered here,
without credentials, since browsers never send credentials on a preflight.
"""

from __future__ import annotations

from collections.abc import Iterable

_METHODS = b"GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"
_EXPOSE = b"chroma-trace-id, retry-after, www-authenticate"
_MAX_AGE = b"600"


class CorsPolicy:
    def __init__(self, origins: Iterable[str]) -> None:
        origins = tuple(origins)
        self.any_origin = "*" in origins
        self.origins = frozenset(o.lower().encode() for o in origins if o != "*")

    def allows(self, origin: bytes) -> bool:
        return self.any_origin or origin.lower() in self.origins

    def _allow_origin(self, origin: bytes) -> list[tuple[bytes, bytes]]:
        if self.any_origin:
            return [(b"access-control-allow-origin", b"*")]
        return [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]

    def preflight(self, origin: bytes, request_headers: bytes | None) -> tuple[int, list[tuple[bytes, bytes]]]:
        """Status and headers for an ``OPTIONS`` preflight from ``origin``."""
        if not self.allows(origin):
            return 403, [(b"vary", b"Origin")]
        headers = self._allow_origin(origin) + [
            (b"access-control-allow-methods", _METHODS),
            (b"access-control-max-age", _MAX_AGE),
        ]
        if request_headers:
            headers.append((b"access-control-allow-headers", request_headers))
        return 204, headers

    def response_headers(self, origin: bytes) -> list[tuple[bytes, bytes]]:
        """Headers added to an actual response for ``origin`` (none if it is not allowed)."""
        if not self.allows(origin):
            return []
        return self._allow_origin(origin) + [(b"access-control-expose-headers", _EXPOSE)]
