"""Every scope combination against every route class, decided by the real Authenticator.

No service is started: the decision is a pure function of the token's record and the route,
so each cell of the table is checked exactly, and a widened role, a dropped tenant check or a
lost default tenant turns a cell red.
"""

from __future__ import annotations

import json

import pytest

from chromaguard.access.auth import Authenticator, Denial, Grant
from chromaguard.access.credentials import parse_tokens
from chromaguard.access.routes import canonical_segments, classify, engine_collection_id

CID = "0b5e8f3c-6d1a-4c2e-9f7a-1d2c3b4a5e6f"
RECORDS = [
    {"token": "admin", "name": "admin", "role": "admin"},
    {"token": "write", "name": "write", "role": "write"},
    {"token": "read", "name": "read", "role": "read"},
    {"token": "tenant-w", "name": "tenant-w", "role": "write", "tenant": "acme"},
    {"token": "db-w", "name": "db-w", "role": "write", "databases": ["main"]},  # tenant: default_tenant
    {"token": "both-w", "name": "both-w", "role": "write", "tenant": "acme", "databases": ["main"]},
    {"token": "both-r", "name": "both-r", "role": "read", "tenant": "acme", "databases": ["main"]},
    {"token": "both-a", "name": "both-a", "role": "admin", "tenant": "acme", "databases": ["main"]},
]
AUTH = Authenticator("token", parse_tokens(json.dumps(RECORDS), "test"))
ACME = "/api/v2/tenants/acme/databases/main"
ACME_OTHER = "/api/v2/tenants/acme/databases/other"
DEFAULT = "/api/v2/tenants/default_tenant/databases/main"
ELSEWHERE = "/api/v2/tenants/globex/databases/main"

# (method, path) -> the tokens allowed. ``*`` stands for the unscoped three by role.
ROUTES: list[tuple[str, str, set[str]]] = [
    ("GET", "/api/v2/heartbeat", {"admin", "write", "read", "tenant-w", "db-w", "both-w", "both-r", "both-a"}),
    ("GET", "/api/v2/auth/identity", {"admin", "write", "read", "tenant-w", "db-w", "both-w", "both-r", "both-a"}),
    ("POST", "/api/v2/reset", {"admin"}),
    ("POST", "/api/v2/tenants", {"admin"}),
    ("GET", f"/api/v2/collections/acme:main:{CID}", {"admin", "write", "read"}),  # tenant-less: unscoped only
    ("GET", "/api/v2/tenants/acme", {"admin", "write", "read", "tenant-w", "both-w", "both-r", "both-a"}),
    ("GET", "/api/v2/tenants/globex", {"admin", "write", "read"}),
    ("PATCH", "/api/v2/tenants/acme", {"admin"}),  # tenant-wide: not for a database-scoped admin
    ("GET", "/api/v2/tenants/acme/databases", {"admin", "write", "read", "tenant-w"}),  # across databases
    ("POST", "/api/v2/tenants/acme/databases", {"admin"}),  # both-a: a database-scoped admin creates none
    ("GET", ACME, {"admin", "write", "read", "tenant-w", "both-w", "both-r", "both-a"}),
    ("DELETE", ACME, {"admin", "both-a"}),
    ("GET", ACME + "/collections", {"admin", "write", "read", "tenant-w", "both-w", "both-r", "both-a"}),
    ("POST", ACME + "/collections", {"admin", "write", "tenant-w", "both-w", "both-a"}),
    ("GET", ACME + "/collections_count", {"admin", "write", "read", "tenant-w", "both-w", "both-r", "both-a"}),
    ("GET", ACME + "/collections/by-name", {"admin", "write", "read", "tenant-w", "both-w", "both-r", "both-a"}),
    ("DELETE", ACME + "/collections/by-name", {"admin", "write", "tenant-w", "both-w", "both-a"}),
    ("PUT", f"{ACME}/collections/{CID}", {"admin", "write", "tenant-w", "both-w", "both-a"}),
    ("POST", f"{ACME}/collections/{CID}/add", {"admin", "write", "tenant-w", "both-w", "both-a"}),
    ("POST", f"{ACME}/collections/{CID}/upsert", {"admin", "write", "tenant-w", "both-w", "both-a"}),
    ("POST", f"{ACME}/collections/{CID}/update", {"admin", "write", "tenant-w", "both-w", "both-a"}),
    ("POST", f"{ACME}/collections/{CID}/delete", {"admin", "write", "tenant-w", "both-w", "both-a"}),
    ("POST", f"{ACME}/collections/{CID}/fork", {"admin", "write", "tenant-w", "both-w", "both-a"}),
    ("POST", f"{ACME}/collections/{CID}/get", {"admin", "write", "read", "tenant-w", "both-w", "both-r", "both-a"}),
    ("POST", f"{ACME}/collections/{CID}/query", {"admin", "write", "read", "tenant-w", "both-w", "both-r",
                                                 "both-a"}),
    ("GET", f"{ACME}/collections/{CID}/count", {"admin", "write", "read", "tenant-w", "both-w", "both-r", "both-a"}),
    ("GET", f"{ACME}/collections/by-id/{CID}", {"admin", "write", "read", "tenant-w", "both-w", "both-r",
                                                "both-a"}),
    ("POST", f"{ACME}/collections/{CID}/functions/attach", {"admin", "both-a"}),  # unknown: admins only
    ("GET", f"{ACME_OTHER}/collections/{CID}/count", {"admin", "write", "read", "tenant-w"}),
    ("POST", f"{ACME_OTHER}/collections/{CID}/add", {"admin", "write", "tenant-w"}),
    ("GET", f"{DEFAULT}/collections/{CID}/count", {"admin", "write", "read", "db-w"}),
    ("POST", f"{DEFAULT}/collections", {"admin", "write", "db-w"}),
    ("GET", f"{ELSEWHERE}/collections/{CID}/count", {"admin", "write", "read"}),
    ("POST", f"{ELSEWHERE}/collections", {"admin", "write"}),
    ("GET", "/api/v2/tenants/default_tenant/databases/other/collections", {"admin", "write", "read"}),
    ("GET", "/metrics", {"admin", "write", "read"}),  # counts every tenant: not for scoped tokens
    ("GET", "/readyz", {"admin", "write", "read", "tenant-w", "db-w", "both-w", "both-r", "both-a"}),
    ("GET", "/chromaguard/status", {"admin"}),
    ("POST", "/chromaguard/snapshots", {"admin"}),
    ("GET", "/docs", {"admin"}),
]


def decide(token: str | None, method: str, path: str) -> Grant | Denial:
    segments = canonical_segments(path.encode())
    assert segments is not None, path
    headers = [(b"x-chroma-token", token.encode())] if token else []
    decided = AUTH.check_now(classify(method, segments), headers)
    assert decided is not None
    return decided


@pytest.mark.parametrize("method, path, allowed", ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_each_token_on_each_route(method: str, path: str, allowed: set[str]) -> None:
    for record in RECORDS:
        token = str(record["token"])
        decided = decide(token, method, path)
        if token in allowed:
            assert isinstance(decided, Grant), (token, method, path, decided)
        else:
            assert isinstance(decided, Denial) and decided.status == 403, (token, method, path, decided)


def test_databases_without_a_tenant_means_the_default_tenant() -> None:
    principal = AUTH.store.check_token("db-w")
    assert principal is not None and (principal.tenant, principal.databases) == ("default_tenant", ("main",))


@pytest.mark.parametrize("method, path", [
    ("GET", "/api/v2/tenants/acme"),
    ("GET", ACME),
    ("GET", "/api/v2/tenants/acme/databases"),
    ("GET", "/api/v2/tenants/default_tenant/databases"),
    ("GET", "/api/v2/tenants/default_tenant/databases/other"),
    ("GET", ACME + "/collections"),
    ("GET", f"{ACME}/collections/{CID}/count"),
])
def test_anonymous_callers_learn_nothing_beyond_the_client_bootstrap(method: str, path: str) -> None:
    decided = decide(None, method, path)
    assert isinstance(decided, Denial) and decided.status == 401, (path, decided)


def test_the_client_bootstrap_is_answered_without_credentials() -> None:
    for path in ("/api/v2/auth/identity", "/api/v2/tenants/default_tenant",
                 "/api/v2/tenants/default_tenant/databases/default_database"):
        decided = decide(None, "GET", path)
        assert isinstance(decided, Grant) and decided.principal.role == "read", path


@pytest.mark.parametrize("segment, expected", [
    (CID, CID), (CID.upper(), CID), (CID.replace("-", ""), CID), ("{" + CID + "}", CID),
    (f"urn:uuid:{CID}", CID), ("by-name", None), ("", None), (CID[:-1], None), (CID + "0", None),
])
def test_the_id_read_from_a_segment_is_the_engines(segment: str, expected: str | None) -> None:
    assert engine_collection_id(segment) == expected


@pytest.mark.parametrize("method, path, by_id", [
    ("GET", ACME + "/collections/x", False), ("HEAD", ACME + "/collections/x", False),
    ("DELETE", ACME + "/collections/x", False), ("PUT", ACME + "/collections/x", True),
    ("GET", ACME + "/collections/by-id/x", True), ("GET", ACME + "/collections/x/count", True),
    ("POST", ACME + "/collections/x/fork", True), ("GET", ACME + "/collections/x/fork_count", True),
    ("POST", ACME + "/collections/x/search", True), ("POST", ACME + "/collections/x/functions/attach", True),
    ("GET", ACME + "/collections/x/attached_functions/f/detach", True), ("OPTIONS", ACME + "/collections/x", True),
])
def test_which_routes_the_engine_resolves_by_id(method: str, path: str, by_id: bool) -> None:
    segments = canonical_segments(path.encode())
    assert segments is not None
    assert classify(method, segments).by_id is by_id
