"""What every route of the engine's API is, for access: one table, each row exact.

A changed operation name, access level, tenant, database or collection, or a method matched
wrongly, changes what a token may do; every row here is what routes.classify must say.
"""

from __future__ import annotations

import pytest

from chromaguard.access.routes import Route, canonical_segments, classify, route_of, template

ID = "0b5e8f3c-6d1a-4c2e-9f7a-1d2c3b4a5e6f"
T = "/api/v2/tenants/acme"
D = T + "/databases/main"
C = D + "/collections"
I = C + "/" + ID  # noqa: E741

TABLE = [
    ('GET', '/metrics', Route('metrics', 'metrics')),
    ('POST', '/metrics', Route('unknown', 'admin')),
    ('GET', '/healthz', Route('healthz', 'metrics')),
    ('HEAD', '/readyz', Route('readyz', 'metrics')),
    ('GET', '/chromaguard/snapshots', Route('snapshot', 'admin')),
    ('POST', '/chromaguard/snapshots/x/y', Route('snapshot', 'admin')),
    ('GET', '/chromaguard/status', Route('status', 'admin')),
    ('POST', '/chromaguard/status', Route('unknown', 'admin')),
    ('GET', '/chromaguard', Route('unknown', 'admin')),
    ('GET', '/api/v1/heartbeat', Route('unknown', 'admin')),
    ('GET', '/api/v2', Route('unknown', 'admin')),
    ('GET', '/api/v2/heartbeat', Route('heartbeat', 'metrics')),
    ('POST', '/api/v2/heartbeat', Route('unknown', 'admin')),
    ('GET', '/api/v2/version', Route('version', 'metrics')),
    ('GET', '/api/v2/pre-flight-checks', Route('pre-flight-checks', 'metrics')),
    ('GET', '/api/v2/healthcheck', Route('healthcheck', 'metrics')),
    ('POST', '/api/v2/reset', Route('reset', 'admin')),
    ('GET', '/api/v2/reset', Route('unknown', 'admin')),
    ('POST', '/api/v2/tenants', Route('create_tenant', 'admin')),
    ('GET', '/api/v2/tenants', Route('unknown', 'admin')),
    ('GET', '/api/v2/auth/identity', Route('identity', 'read')),
    ('POST', '/api/v2/auth/identity', Route('unknown', 'admin')),
    ('GET', '/api/v2/collections/crn:x', Route('get_collection_by_crn', 'read')),
    ('POST', '/api/v2/collections/crn:x', Route('unknown', 'admin')),
    ('GET', '/api/v2/other/x', Route('unknown', 'admin')),
    ('GET', f'{T}', Route('get_tenant', 'read', 'acme', None, None)),
    ('PATCH', f'{T}', Route('update_tenant', 'admin', 'acme', None, None)),
    ('DELETE', f'{T}', Route('unknown', 'admin')),
    ('GET', f'{T}/databases', Route('list_databases', 'read', 'acme', None, None)),
    ('POST', f'{T}/databases', Route('create_database', 'admin', 'acme', None, None)),
    ('PUT', f'{T}/databases', Route('unknown', 'admin')),
    ('GET', f'{T}/other', Route('unknown', 'admin')),
    ('GET', f'{D}', Route('get_database', 'read', 'acme', 'main', None)),
    ('DELETE', f'{D}', Route('delete_database', 'admin', 'acme', 'main', None)),
    ('POST', f'{D}', Route('unknown', 'admin')),
    ('GET', f'{C}_count', Route('count_collections', 'read', 'acme', 'main', None)),
    ('POST', f'{C}_count', Route('unknown', 'admin')),
    ('GET', f'{D}/other', Route('unknown', 'admin')),
    ('GET', f'{C}', Route('list_collections', 'read', 'acme', 'main', None)),
    ('POST', f'{C}', Route('create_collection', 'write', 'acme', 'main', None)),
    ('DELETE', f'{C}', Route('unknown', 'admin')),
    ('GET', f'{C}/name1', Route('get_collection', 'read', 'acme', 'main', 'name1')),
    ('DELETE', f'{C}/name1', Route('delete_collection', 'write', 'acme', 'main', 'name1')),
    ('PUT', f'{C}/name1', Route('modify_collection', 'write', 'acme', 'main', 'name1', by_id=True)),
    ('POST', f'{C}/name1', Route('unknown', 'admin', 'acme', 'main', 'name1', by_id=True)),
    ('GET', f'{C}/by-id/abc', Route('get_collection_by_id', 'read', 'acme', 'main', 'abc', by_id=True)),
    ('POST', f'{C}/by-id/abc', Route('unknown', 'admin', 'acme', 'main', 'by-id', by_id=True)),
    ('GET', f'{I}/add', Route('unknown', 'admin', 'acme', 'main', ID, by_id=True)),
    ('POST', f'{I}/add', Route('add', 'write', 'acme', 'main', ID, by_id=True)),
    ('GET', f'{I}/upsert', Route('unknown', 'admin', 'acme', 'main', ID, by_id=True)),
    ('POST', f'{I}/upsert', Route('upsert', 'write', 'acme', 'main', ID, by_id=True)),
    ('GET', f'{I}/update', Route('unknown', 'admin', 'acme', 'main', ID, by_id=True)),
    ('POST', f'{I}/update', Route('update', 'write', 'acme', 'main', ID, by_id=True)),
    ('GET', f'{I}/delete', Route('unknown', 'admin', 'acme', 'main', ID, by_id=True)),
    ('POST', f'{I}/delete', Route('delete', 'write', 'acme', 'main', ID, by_id=True)),
    ('GET', f'{I}/fork', Route('unknown', 'admin', 'acme', 'main', ID, by_id=True)),
    ('POST', f'{I}/fork', Route('fork', 'write', 'acme', 'main', ID, by_id=True)),
    ('GET', f'{I}/get', Route('unknown', 'admin', 'acme', 'main', ID, by_id=True)),
    ('POST', f'{I}/get', Route('get', 'read', 'acme', 'main', ID, by_id=True)),
    ('GET', f'{I}/query', Route('unknown', 'admin', 'acme', 'main', ID, by_id=True)),
    ('POST', f'{I}/query', Route('query', 'read', 'acme', 'main', ID, by_id=True)),
    ('GET', f'{I}/search', Route('unknown', 'admin', 'acme', 'main', ID, by_id=True)),
    ('POST', f'{I}/search', Route('search', 'read', 'acme', 'main', ID, by_id=True)),
    ('GET', f'{I}/count', Route('count', 'read', 'acme', 'main', ID, by_id=True)),
    ('POST', f'{I}/count', Route('unknown', 'admin', 'acme', 'main', ID, by_id=True)),
    ('GET', f'{I}/indexing_status', Route('indexing_status', 'read', 'acme', 'main', ID, by_id=True)),
    ('POST', f'{I}/indexing_status', Route('unknown', 'admin', 'acme', 'main', ID, by_id=True)),
    ('GET', f'{I}/fork_count', Route('fork_count', 'read', 'acme', 'main', ID, by_id=True)),
    ('POST', f'{I}/fork_count', Route('unknown', 'admin', 'acme', 'main', ID, by_id=True)),
    ('GET', f'{I}/newthing', Route('unknown', 'admin', 'acme', 'main', ID, by_id=True)),
    ('POST', f'{I}/newthing', Route('unknown', 'admin', 'acme', 'main', ID, by_id=True)),
    ('POST', f'{I}/add/extra', Route('unknown', 'admin', 'acme', 'main', ID, by_id=True)),
]


@pytest.mark.parametrize("method, path, expected", TABLE)
def test_each_route_is_classified_exactly(method: str, path: str, expected: Route) -> None:
    segments = canonical_segments(path.encode())
    assert segments is not None
    assert classify(method, segments) == expected


def test_head_is_classified_as_get() -> None:
    for _, path, _ in TABLE:
        segments = canonical_segments(path.encode())
        assert segments is not None
        assert classify("HEAD", segments) == classify("GET", segments), path


def test_percent_escapes_are_decoded_and_only_ascii_paths_are_canonical() -> None:
    assert canonical_segments(b"/api/v2/tenants/a%62c") == ["api", "v2", "tenants", "abc"]
    assert canonical_segments(b"/api/v2/tenants/a%2Bb+c") == ["api", "v2", "tenants", "a+b+c"]
    assert canonical_segments("/api/v2/tenants/\u00e9".encode()) is None
    assert canonical_segments(b"/api/v2/tenants/%C3%A9") == ["api", "v2", "tenants", "\u00e9"]
    assert canonical_segments(b"/api/v2/tenants/%FF") is None


@pytest.mark.parametrize("method, path, name", [
    ("GET", "/", "/"),
    ("GET", "/api/v2/heartbeat", "/api/v2/heartbeat"),
    ("GET", T, "/api/v2/tenants/{tenant}"),
    ("GET", D, "/api/v2/tenants/{tenant}/databases/{database}"),
    ("GET", D + "/collections_count", "/api/v2/tenants/{tenant}/databases/{database}/collections_count"),
    ("GET", C, "/api/v2/tenants/{tenant}/databases/{database}/collections"),
    ("GET", C + "/docs", "/api/v2/tenants/{tenant}/databases/{database}/collections/{collection_name}"),
    ("DELETE", C + "/docs", "/api/v2/tenants/{tenant}/databases/{database}/collections/{collection_name}"),
    ("PUT", I, "/api/v2/tenants/{tenant}/databases/{database}/collections/{collection_id}"),
    ("POST", I + "/query", "/api/v2/tenants/{tenant}/databases/{database}/collections/{collection_id}/query"),
    ("POST", I + "/newthing", "/api/v2/tenants/{tenant}/databases/{database}/collections/{collection_id}/newthing"),
    ("GET", C + "/by-id/abc", "/api/v2/tenants/{tenant}/databases/{database}/collections/by-id/{collection_id}"),
    ("GET", "/api/v2/collections/crn:x", "/api/v2/collections/{crn}"),
    ("GET", "/api/v2/other/a/b", "/api/v2/other/..."),
    ("GET", "/chromaguard/snapshots/0123abcd", "/chromaguard/snapshots/..."),
    ("GET", "/chromaguard/snapshots", "/chromaguard/snapshots"),
    ("GET", "/api/v2//x", "(non-canonical)"),
])
def test_span_names_carry_no_names_or_ids(method: str, path: str, name: str) -> None:
    assert route_of(method, path.encode())[1] == name
    segments = canonical_segments(path.encode())  # and uncached (route_of remembers its answers)
    if segments is not None:
        assert template(classify(method, segments), segments) == name
