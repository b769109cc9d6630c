"""Which database a collection id belongs to, for tokens scoped to a tenant or databases.

The engine finds a collection by its id alone on most collection routes, whatever tenant and
database the path names (``routes.Route.by_id``). So a scoped token may use such a route only
when the id, read as the engine reads it, is listed in the database the path names. Names
never count: a collection in the token's own database may be named like another's id. Any
doubt (the listing fails, times out, is not a list of ids) is a no.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable

from .auth import Denial
from .credentials import Principal
from .routes import Route, engine_collection_id

log = logging.getLogger("chromaguard.auth")

NOT_AN_ID = Denial(400, "InvalidArgumentError", "chromaguard: the collection in this path must be a collection id "
                                                "(a UUID)")
UNCHECKABLE = Denial(503, "ServiceUnavailable", "chromaguard: cannot check where the collection lives; retry shortly",
                     ((b"retry-after", b"1"),))
LOOK_UP = object()  # the cached listing cannot decide: fetch it (``check``)
_FRESH_FOR = 1.0  # an id missing from a listing this young is missing
MAX_LISTINGS = 10_000  # databases whose listings are cached; then the cache starts afresh

# The engine's listing of a database: (status, body); raises what the transport raises.
Fetch = Callable[[str, str], Awaitable[tuple[int, bytes]]]


def listed_ids(body: bytes) -> frozenset[str] | None:
    """The ids in a collection listing, in the engine's spelling; None when it is not one."""
    items = json.loads(body)
    if not isinstance(items, list):
        return None
    ids = set()
    for item in items:
        found = engine_collection_id(str(item.get("id"))) if isinstance(item, dict) else None
        if found is None:
            return None
        ids.add(found)
    return frozenset(ids)


class Ownership:
    """The owner check, with a short-lived cache of each database's collection ids."""

    def __init__(self, fetch: Fetch, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.fetch = fetch
        self.clock = clock
        self._listings: dict[tuple[str | None, str | None], tuple[float, frozenset[str]]] = {}

    @staticmethod
    def applies(principal: Principal, route: Route) -> bool:
        """Scoped tokens on routes where the engine reads the segment as an id."""
        return principal.tenant is not None and route.by_id

    def now(self, principal: Principal, route: Route) -> Denial | object | None:
        """Decide from the cache: None (allowed), a Denial, or LOOK_UP (``check`` must fetch)."""
        if not self.applies(principal, route):
            return None
        wanted = engine_collection_id(_place(route)[2])
        if wanted is None:
            return NOT_AN_ID
        listed = self._listings.get((route.tenant, route.database))
        if listed is None or (wanted not in listed[1] and self.clock() - listed[0] > _FRESH_FOR):
            return LOOK_UP
        return None if wanted in listed[1] else _not_owner(principal, route)

    async def check(self, principal: Principal, route: Route) -> Denial | None:
        """Decide, fetching the database's listing when the cache cannot."""
        decided = self.now(principal, route)
        if decided is not LOOK_UP:
            return decided  # type: ignore[return-value]
        tenant, database, collection = _place(route)
        wanted = engine_collection_id(collection)
        try:
            status, body = await self.fetch(tenant, database)
            ids = listed_ids(body) if status == 200 else None
        except Exception:  # noqa: BLE001 - whatever failed, the answer is no
            ids = None
        if ids is None:
            return UNCHECKABLE
        if len(self._listings) >= MAX_LISTINGS:
            self._listings.clear()
        self._listings[(route.tenant, route.database)] = (self.clock(), ids)
        return None if wanted in ids else _not_owner(principal, route)

    def forget(self, tenant: str | None, database: str | None) -> None:
        """A collection was made, deleted or renamed there: list it afresh next time."""
        self._listings.pop((tenant, database), None)


def _place(route: Route) -> tuple[str, str, str]:
    """(tenant, database, collection) of an id route: ``routes`` names all three on each."""
    if route.tenant is None or route.database is None or route.collection is None:
        raise ValueError(f"not an id route: {route}")
    return route.tenant, route.database, route.collection


def _not_owner(principal: Principal, route: Route) -> Denial:
    log.info("denied %s to %s: collection %s is not in %s/%s", route.operation, principal.name, route.collection,
             route.tenant, route.database)
    return Denial(403, "AuthorizationError", f"chromaguard: {principal.name} may not use collection "
                                             f"{route.collection}: it is not in {route.tenant}/{route.database}")
