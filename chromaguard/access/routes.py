"""What a request asks the engine to do: operation, access level, tenant, database.

Authorisation depends on this, so it follows the engine's router exactly: the
engine matches raw paths literally (no dot-segment or slash folding, case
sensitive), and anything we do not recognise needs an admin.

How the engine resolves a collection segment matters as much (chromadb 1.5.9,
``rust/frontend/src/server.rs``): ``GET`` and ``DELETE`` of ``.../collections/{x}``
look ``x`` up by *name* inside the tenant and database of the path, while every other
collection route parses ``x`` as a UUID (hyphenated, simple, braced or URN, any case)
and finds the collection by that id alone, whatever tenant and database the path names.
``Route.by_id`` says which: only id routes need the owner check.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from urllib.parse import unquote

READ, WRITE, ADMIN, METRICS = "read", "write", "admin", "metrics"

_META = {"heartbeat", "version", "pre-flight-checks", "healthcheck"}
_COLLECTION_OPS = {
    # op: {method: (operation, access)}
    "add": {"POST": ("add", WRITE)},
    "upsert": {"POST": ("upsert", WRITE)},
    "update": {"POST": ("update", WRITE)},
    "delete": {"POST": ("delete", WRITE)},
    "fork": {"POST": ("fork", WRITE)},
    "get": {"POST": ("get", READ)},
    "query": {"POST": ("query", READ)},
    "search": {"POST": ("search", READ)},
    "count": {"GET": ("count", READ)},
    "indexing_status": {"GET": ("indexing_status", READ)},
    "fork_count": {"GET": ("fork_count", READ)},
}


@dataclass(frozen=True)
class Route:
    operation: str
    access: str
    tenant: str | None = None
    database: str | None = None
    collection: str | None = None  # the path's segment, as decoded
    by_id: bool = False  # the engine resolves ``collection`` as an id, ignoring tenant and database

    @property
    def writes(self) -> bool:
        """Whether it may change state: gated by snapshots and the disk floor, and audited."""
        return self.access in (WRITE, ADMIN)


UNKNOWN = Route("unknown", ADMIN)


def engine_collection_id(segment: str) -> str | None:
    """The collection id the engine reads from ``segment``, in the engine's own spelling
    (lower-case, hyphenated); None when it is no UUID (the engine refuses it too).

    Python's parser accepts every form Rust's ``Uuid::parse_str`` does (and a few more,
    which the engine then refuses): comparing this form with listed ids is comparing
    what the engine will look up."""
    try:
        return str(uuid.UUID(segment))
    except ValueError:
        return None


def template(route: Route, segments: list[str]) -> str:
    """The path with tenant, database and collection replaced by placeholders (``http.route``)."""
    if not segments:
        return "/"
    if route.operation in ("unknown", "snapshot") and route.tenant is None:  # no ids in span names
        kept = 2 if route.operation == "snapshot" else 3
        return "/" + "/".join(segments[:kept]) + ("/..." if len(segments) > kept else "")
    out = []
    for index, segment in enumerate(segments):
        before = segments[index - 1] if index else ""
        if before == "tenants" and route.tenant is not None:
            out.append("{tenant}")
        elif before == "databases" and route.database is not None:
            out.append("{database}")
        elif route.operation == "get_collection_by_id" and before == "collections":
            out.append(segment)  # the literal "by-id"
        elif before in ("collections", "by-id") and route.collection is not None:
            out.append("{collection_id}" if route.by_id else "{collection_name}")
        elif before == "collections" and route.operation == "get_collection_by_crn":
            out.append("{crn}")
        else:
            out.append(segment)
    return "/" + "/".join(out)


@functools.lru_cache(maxsize=8192)  # the same few paths, again and again: classify each once
def route_of(method: str, raw_path: bytes) -> tuple[Route | None, str]:
    """Route and ``http.route`` template for a raw request path; None for a non-canonical path."""
    segments = canonical_segments(raw_path)
    if segments is None:
        return None, "(non-canonical)"
    route = classify(method, segments)
    return route, template(route, segments)


def canonical_segments(raw_path: bytes) -> list[str] | None:
    """The decoded path segments, or None when the path is not in canonical form.

    Canonical: starts with '/', no empty segment (``//``, trailing slash), no ``.``
    or ``..`` segment (literal or percent-encoded), no encoded ``/`` or ``\\`` or NUL.
    """
    if not raw_path.startswith(b"/"):
        return None
    if raw_path == b"/":
        return []
    if not raw_path.isascii():
        return None
    segments = []
    for part in raw_path[1:].decode().split("/"):
        try:
            decoded = unquote(part, errors="strict")
        except UnicodeDecodeError:
            return None
        if decoded in ("", ".", "..") or "/" in decoded or "\\" in decoded or "\x00" in decoded:
            return None
        segments.append(decoded)
    return segments


_GUARD_PATHS: dict[tuple[str, ...], str] = {("metrics",): "metrics", ("healthz",): "healthz",
                                             ("readyz",): "readyz"}


def classify(method: str, segments: list[str]) -> Route:
    if method == "HEAD":
        method = "GET"  # the engine answers HEAD with its GET handler
    if method == "GET" and tuple(segments) in _GUARD_PATHS:
        return Route(_GUARD_PATHS[tuple(segments)], METRICS)  # every role, and a scrape-only token
    if segments[:2] == ["chromaguard", "snapshots"]:
        return Route("snapshot", ADMIN)
    if method == "GET" and segments == ["chromaguard", "status"]:
        return Route("status", ADMIN)  # names every collection of every tenant
    if len(segments) < 3 or segments[0] != "api" or segments[1] != "v2":
        return UNKNOWN
    rest = segments[2:]
    head = rest[0]
    if len(rest) == 1:
        if head in _META and method == "GET":
            return Route(head, METRICS)  # heartbeat, version...: what a scrape-only token may see too
        if head == "reset" and method == "POST":
            return Route("reset", ADMIN)
        if head == "tenants" and method == "POST":
            return Route("create_tenant", ADMIN)
        return UNKNOWN
    if rest == ["auth", "identity"] and method == "GET":
        return Route("identity", READ)
    if head == "collections" and len(rest) == 2 and method == "GET":
        return Route("get_collection_by_crn", READ)  # tenant and database live in the CRN
    if head != "tenants":
        return UNKNOWN
    return _tenant_route(method, rest[1], rest[2:])


def _tenant_route(method: str, tenant: str, rest: list[str]) -> Route:
    if not rest:
        if method == "GET":
            return Route("get_tenant", READ, tenant)
        return Route("update_tenant", ADMIN, tenant) if method == "PATCH" else UNKNOWN
    if rest[0] != "databases":
        return UNKNOWN
    if len(rest) == 1:
        if method == "GET":
            return Route("list_databases", READ, tenant)
        return Route("create_database", ADMIN, tenant) if method == "POST" else UNKNOWN
    database, rest = rest[1], rest[2:]
    if not rest:
        if method == "GET":
            return Route("get_database", READ, tenant, database)
        return Route("delete_database", ADMIN, tenant, database) if method == "DELETE" else UNKNOWN
    if rest == ["collections_count"] and method == "GET":
        return Route("count_collections", READ, tenant, database)
    if rest[0] != "collections":
        return UNKNOWN
    if len(rest) == 1:
        if method == "GET":
            return Route("list_collections", READ, tenant, database)
        return Route("create_collection", WRITE, tenant, database) if method == "POST" else UNKNOWN
    collection = rest[1]
    if len(rest) == 2:
        if method == "GET":  # by name, within the path's tenant and database
            return Route("get_collection", READ, tenant, database, collection)
        if method == "DELETE":  # by name too
            return Route("delete_collection", WRITE, tenant, database, collection)
        by_method = {"PUT": ("modify_collection", WRITE)}
    elif collection == "by-id" and len(rest) == 3 and method == "GET":
        return Route("get_collection_by_id", READ, tenant, database, rest[2], by_id=True)
    elif len(rest) == 3:
        by_method = _COLLECTION_OPS.get(rest[2], {})
    else:
        by_method = {}
    found = by_method.get(method)
    if found is None:  # a newer or unknown collection route: the engine reads an id there too
        return Route("unknown", ADMIN, tenant, database, collection, by_id=True)
    return Route(found[0], found[1], tenant, database, collection, by_id=True)
