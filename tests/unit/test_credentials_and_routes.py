"""Credentials formats and the request classifier that authorisation relies on."""

from __future__ import annotations

import hashlib

import pytest

from chromaguard.access.credentials import CredentialsError, parse_htpasswd, parse_inline, parse_tokens
from chromaguard.access.routes import ADMIN, METRICS, READ, WRITE, canonical_segments, classify


def test_plain_text_one_token_per_line() -> None:
    store = parse_tokens("# comment\nalpha\n\nbeta\n", "f")
    assert store.check_token("alpha").name == "token-1" and store.check_token("beta").role == "admin"
    assert store.check_token("gamma") is None and store.check_token("alph") is None


def test_yaml_records_with_scope_and_hash() -> None:
    digest = hashlib.sha256(b"from-vault").hexdigest()
    store = parse_tokens(f"tokens:\n  - sha256: 'sha256:{digest}'\n    name: vault\n    role: read\n"
                         "    tenant: acme\n    databases: prod\n", "f")
    principal = store.check_token("from-vault")
    assert (principal.name, principal.role, principal.tenant, principal.databases) == ("vault", "read", "acme",
                                                                                       ("prod",))
    assert principal.identity() == {"user_id": "vault", "tenant": "acme", "databases": ["prod"]}


@pytest.mark.parametrize("token", ["from-vault", "tøken-ünïcode", "x" * 4096, "sp ace\ttab"])
def test_a_token_stored_as_its_sha256sum_matches_the_token(token: str) -> None:
    """What `sha256sum` printed for a token (hashlib's SHA-256) opens the door to that token only."""
    digest = hashlib.sha256(token.encode()).hexdigest()
    store = parse_tokens(f'[{{"sha256": "{digest}", "name": "hashed", "role": "read"}}]', "f")
    assert store.check_token(token).name == "hashed"
    assert store.check_token(token + "!") is None and store.check_token(token[:-1]) is None


@pytest.mark.parametrize("text, fragment", [
    ('[{"token": "a", "colour": "red"}]', "unknown field 'colour'"),
    ('[{"token": "a", "sha256": "' + "0" * 64 + '"}]', "exactly one of token or sha256"),
    ('[{"token": " padded "}]', "surrounding spaces"),
    ('[{"token": "a", "name": "x", "role": "read"}, {"token": "b", "name": "x", "role": "read"}]',
     "name 'x' appears twice"),
    ('["a", ', "not valid JSON"),
    ("[1.5]", "entry 1 must be a token string"),
])
def test_bad_token_files(text: str, fragment: str) -> None:
    with pytest.raises(CredentialsError, match=fragment):
        parse_tokens(text, "f")


def test_htpasswd_bcrypt_only() -> None:
    with pytest.raises(CredentialsError, match="only bcrypt"):
        parse_htpasswd("admin:{SHA}abc\n", "f")
    store = parse_inline("basic", "admin:pw1, reader:pw2", "inline")
    assert store.check_password("admin", "pw1").name == "admin"
    assert store.check_password("admin", "pw2") is None and store.check_password("nobody", "pw1") is None


B = "/api/v2/tenants/t/databases/d"


@pytest.mark.parametrize("method, path, operation, access", [
    ("GET", "/api/v2/heartbeat", "heartbeat", METRICS),
    ("POST", "/api/v2/reset", "reset", ADMIN),
    ("POST", "/api/v2/tenants", "create_tenant", ADMIN),
    ("GET", "/api/v2/tenants/t", "get_tenant", READ),
    ("POST", "/api/v2/tenants/t/databases", "create_database", ADMIN),
    ("DELETE", B, "delete_database", ADMIN),
    ("GET", B + "/collections", "list_collections", READ),
    ("POST", B + "/collections", "create_collection", WRITE),
    ("GET", B + "/collections_count", "count_collections", READ),
    ("PUT", B + "/collections/c", "modify_collection", WRITE),
    ("DELETE", B + "/collections/c", "delete_collection", WRITE),
    ("POST", B + "/collections/c/add", "add", WRITE),
    ("POST", B + "/collections/c/upsert", "upsert", WRITE),
    ("POST", B + "/collections/c/query", "query", READ),
    ("POST", B + "/collections/c/get", "get", READ),
    ("HEAD", B + "/collections/c/count", "count", READ),
    ("GET", B + "/collections/c/add", "unknown", ADMIN),
    ("POST", B + "/collections/c/add/more", "unknown", ADMIN),
    ("POST", "/API/v2/reset", "unknown", ADMIN),
    ("GET", "/docs", "unknown", ADMIN),
])
def test_classify(method: str, path: str, operation: str, access: str) -> None:
    route = classify(method, canonical_segments(path.encode()))
    assert (route.operation, route.access) == (operation, access)


@pytest.mark.parametrize("path", ["//api/v2/x", "/api/./v2", "/api/v2/../v2", "/api/%2e%2e/v2", "/api/v2%2Fx",
                                  "/api/v2/", "/api/%5cv2", "/api/%00", "api/v2", "/api/%ff"])
def test_non_canonical_paths_are_refused(path: str) -> None:
    assert canonical_segments(path.encode()) is None


def test_canonical_paths_decode_segments() -> None:
    assert canonical_segments(b"/api/v2/tenants/my%20tenant") == ["api", "v2", "tenants", "my tenant"]
    assert canonical_segments(b"/") == []
