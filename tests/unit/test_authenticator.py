"""The Authenticator on its own: which header counts, how it is read, what each refusal says.

The end-to-end tests (test_auth.py) run the same rules through a real service and the
official client; these pin each one in-process, so the mutation run sees them too.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging

import bcrypt
import pytest

from chromaguard.access.auth import ANONYMOUS, PASSWORD_CHECKS_PER_SECOND, Authenticator, Denial, Grant, RateLimiter
from chromaguard.access.credentials import CredentialStore, Principal, parse_htpasswd, parse_tokens
from chromaguard.access.routes import canonical_segments, classify

TOKENS = parse_tokens(json.dumps([{"token": "w-tok", "name": "writer", "role": "write"},
                                  {"token": "r-tok", "name": "reader", "role": "read"}]), "t")
LIST = classify("GET", canonical_segments(b"/api/v2/tenants/default_tenant/databases/default_database/collections")
                or [])
ADD = classify("POST", canonical_segments(b"/api/v2/tenants/t/databases/d/collections/"
                                          b"0b5e8f3c-6d1a-4c2e-9f7a-1d2c3b4a5e6f/add") or [])


def decide(auth: Authenticator, *headers: tuple[bytes, bytes], route=LIST) -> Grant | Denial | None:  # noqa: ANN001
    return auth.check_now(route, list(headers))


@pytest.mark.parametrize("transport, header, value, status", [
    ("any", b"authorization", b"Bearer w-tok", None),
    ("any", b"x-chroma-token", b"w-tok", None),
    ("authorization", b"authorization", b"Bearer w-tok", None),
    ("authorization", b"x-chroma-token", b"w-tok", 401),  # that header does not count here
    ("x-chroma-token", b"x-chroma-token", b"w-tok", None),
    ("x-chroma-token", b"authorization", b"Bearer w-tok", 401),
    ("any", b"authorization", b"bearer w-tok", None),  # the scheme in any case
    ("any", b"authorization", b"BEARER \t w-tok \t", None),  # spaces and tabs around
    ("any", b"x-chroma-token", b" \tw-tok\t ", None),
    ("any", b"authorization", b"Bearer", 401),
    ("any", b"authorization", b"Bearer   ", 401),
    ("any", b"authorization", b"Token w-tok", 401),
    ("any", b"authorization", b"w-tok", 401),
    ("any", b"authorization", b"Bearer w-tok extra", 403),  # "w-tok extra" is no token
    ("any", b"authorization", b"Bearer W-TOK", 403),
    ("any", b"x-chroma-token", b"Bearer w-tok", 403),  # this header carries the token itself
])
def test_which_header_counts_and_how_it_is_read(transport: str, header: bytes, value: bytes,
                                                status: int | None) -> None:
    decided = decide(Authenticator("token", TOKENS, transport=transport), (header, value))
    if status is None:
        assert isinstance(decided, Grant) and decided.principal.name == "writer", decided
    else:
        assert isinstance(decided, Denial) and decided.status == status, decided


def test_the_refusals_say_what_to_do() -> None:
    auth = Authenticator("token", TOKENS)
    missing = decide(auth)
    assert missing == Denial(401, "AuthError", "chromaguard: authentication required: send Authorization: Bearer "
                             "<token> or X-Chroma-Token: <token>",
                             ((b"www-authenticate", b'Bearer realm="chromaguard"'),))
    wrong = decide(auth, (b"x-chroma-token", b"nope"))
    assert wrong == Denial(403, "AuthorizationError", "chromaguard: the credentials are not valid")
    two = decide(auth, (b"x-chroma-token", b"w-tok"), (b"authorization", b"Bearer w-tok"))
    assert two == Denial(400, "AuthError", "chromaguard: send credentials in exactly one header")
    role = decide(auth, (b"x-chroma-token", b"r-tok"), route=ADD)
    assert role == Denial(403, "AuthorizationError", "chromaguard: reader may not add (role read)")
    assert isinstance(role, Denial) and role.principal == "reader" and wrong.principal is None  # the audit log's
    basic = Authenticator("basic", CredentialStore())
    assert decide(basic) == Denial(401, "AuthError", "chromaguard: authentication required: send Authorization: "
                                   "Basic <user:password in base64>",
                                   ((b"www-authenticate", b'Basic realm="chromaguard"'),))


def test_a_grant_carries_the_principal_and_the_route() -> None:
    decided = decide(Authenticator("token", TOKENS), (b"x-chroma-token", b"w-tok"), route=ADD)
    assert decided == Grant(TOKENS.check_token("w-tok"), ADD)


def _basic(user: str, password: str) -> tuple[bytes, bytes]:
    return b"authorization", b"Basic " + base64.b64encode(f"{user}:{password}".encode())


HTPASSWD = f"alice:{bcrypt.hashpw(b'pw', bcrypt.gensalt(rounds=4)).decode()}\n"


def fresh_store() -> CredentialStore:
    """A new store each time: a verified password is remembered in the store it was checked in."""
    return parse_htpasswd(HTPASSWD, "h")


def test_basic_auth_goes_through_bcrypt_once_then_from_the_cache() -> None:
    auth = Authenticator("basic", fresh_store())
    assert decide(auth, _basic("alice", "pw")) is None  # not verified yet: bcrypt must run (check)
    granted = asyncio.run(auth.check(LIST, [_basic("alice", "pw")], "1.2.3.4"))
    assert isinstance(granted, Grant) and granted.principal.name == "alice"
    again = decide(auth, _basic("alice", "pw"))
    assert isinstance(again, Grant) and again.principal.name == "alice"  # remembered
    assert decide(auth, _basic("alice", "other")) is None  # a different password is not
    wrong = asyncio.run(auth.check(LIST, [_basic("alice", "other")], "1.2.3.4"))
    assert wrong == Denial(403, "AuthorizationError", "chromaguard: the credentials are not valid")
    for header in ((b"authorization", b"Basic !!!"), (b"authorization", b"Basic " + base64.b64encode(b"nocolon")),
                   (b"authorization", b"Bearer x"), (b"x-chroma-token", b"alice:pw")):
        missing = decide(auth, header)
        assert isinstance(missing, Denial) and missing.status == 401, header


def test_password_guessing_is_limited_per_address() -> None:
    auth = Authenticator("basic", fresh_store())
    now = [0.0]
    auth.guessing = RateLimiter(5.0, clock=lambda: now[0])
    answers = [asyncio.run(auth.check(LIST, [_basic("alice", f"guess-{i}")], "9.9.9.9")) for i in range(6)]
    assert all(isinstance(a, Denial) and a.status == 403 for a in answers[:5])
    limited = answers[5]
    assert isinstance(limited, Denial) and limited.status == 429 and limited.headers == ((b"retry-after", b"1"),)
    other = asyncio.run(auth.check(LIST, [_basic("alice", "guess-x")], "8.8.8.8"))  # another address
    assert isinstance(other, Denial) and other.status == 403


def test_the_rate_limit_is_a_bucket_per_token() -> None:
    now = [100.0]
    limiter = RateLimiter(2.0, clock=lambda: now[0])
    assert [limiter.allow("a") for _ in range(2)] == [0.0, 0.0]  # a burst of one second's worth
    assert limiter.allow("a") == pytest.approx(0.5)  # the next one in half a second
    assert limiter.allow("b") == 0.0  # another token has its own bucket
    now[0] += 0.5
    assert limiter.allow("a") == 0.0
    now[0] += 10
    assert [limiter.allow("a") for _ in range(3)] == [0.0, 0.0, pytest.approx(0.5)]  # never more than capacity
    slow = RateLimiter(0.5, clock=lambda: now[0])
    assert slow.capacity == 1.0 and slow.allow("c") == 0.0 and slow.allow("c") == pytest.approx(2.0)


def test_a_rate_limited_request_gets_429_with_retry_after() -> None:
    auth = Authenticator("token", TOKENS, rate_limit=1.0)
    now = [0.0]
    assert auth.limiter is not None
    auth.limiter.clock = lambda: now[0]
    assert isinstance(decide(auth, (b"x-chroma-token", b"w-tok")), Grant)
    limited = decide(auth, (b"x-chroma-token", b"w-tok"))
    assert limited == Denial(429, "RateLimitError", "chromaguard: rate limit reached for writer",
                             ((b"retry-after", b"2"),))  # 1 s to wait, rounded up with a margin
    assert isinstance(decide(auth, (b"x-chroma-token", b"r-tok")), Grant)  # per token


def test_open_paths_are_for_get_and_head_only() -> None:
    auth = Authenticator("token", TOKENS, open_paths=("/healthz",))
    assert auth.is_open("GET", "/healthz") and auth.is_open("HEAD", "/healthz")
    assert not auth.is_open("POST", "/healthz") and not auth.is_open("GET", "/healthz/")
    assert not auth.is_open("GET", "/api/v2/heartbeat")


def test_a_principal_without_credentials_file_entries_is_never_made() -> None:
    assert TOKENS.check_token("") is None and TOKENS.check_token(b"w-tok") == Principal(
        "writer", "write", None, None, "role from its record")


def test_password_checks_are_five_a_second_per_address_and_the_refusal_says_when_to_retry() -> None:
    assert PASSWORD_CHECKS_PER_SECOND == 5.0
    auth = Authenticator("basic", fresh_store())
    now = [0.0]
    auth.guessing = RateLimiter(PASSWORD_CHECKS_PER_SECOND, clock=lambda: now[0])
    for i in range(5):
        assert asyncio.run(auth.check(LIST, [_basic("alice", f"g{i}")], "9.9.9.9")).status == 403  # type: ignore[union-attr]
    limited = asyncio.run(auth.check(LIST, [_basic("alice", "g5")], "9.9.9.9"))
    assert limited == Denial(429, "RateLimitError", "chromaguard: too many password attempts",
                             ((b"retry-after", b"1"),))  # 0.2 s to wait
    now[0] += 0.2  # one check's worth has come back
    assert asyncio.run(auth.check(LIST, [_basic("alice", "g6")], "9.9.9.9")).status == 403  # type: ignore[union-attr]


@pytest.mark.parametrize("wait, header", [(0.01, b"1"), (0.5, b"1"), (0.51, b"2"), (1.0, b"2"), (2.0, b"3"),
                                          (2.6, b"4")])
def test_retry_after_is_whole_seconds_rounded_up_with_a_margin(wait: float, header: bytes) -> None:
    auth = Authenticator("token", TOKENS, rate_limit=min(1.0, 1.0 / wait))  # a bucket of one
    now = [0.0]
    assert auth.limiter is not None
    auth.limiter.clock = lambda: now[0]
    assert isinstance(decide(auth, (b"x-chroma-token", b"w-tok")), Grant)
    now[0] += max(0.0, 1.0 - wait)  # part of the next one has come back: ``wait`` seconds are left
    limited = decide(auth, (b"x-chroma-token", b"w-tok"))
    assert isinstance(limited, Denial) and limited.headers == ((b"retry-after", header),), (wait, limited)


def test_the_client_bootstrap_is_answered_without_credentials_and_carries_its_route() -> None:
    auth = Authenticator("token", TOKENS)
    for method, path in (("GET", b"/api/v2/auth/identity"), ("GET", b"/api/v2/tenants/default_tenant"),
                         ("GET", b"/api/v2/tenants/default_tenant/databases/default_database")):
        route = classify(method, canonical_segments(path) or [])
        granted = decide(auth, route=route)
        assert isinstance(granted, Grant) and granted.route == route and granted.principal == ANONYMOUS, path
    for path in (b"/api/v2/tenants/other", b"/api/v2/tenants/default_tenant/databases/other"):
        denied = decide(auth, route=classify("GET", canonical_segments(path) or []))
        assert isinstance(denied, Denial) and denied.status == 401, path


def test_refusals_are_logged_with_who_and_what(caplog: pytest.LogCaptureFixture) -> None:
    auth = Authenticator("token", TOKENS)
    delete = classify("DELETE", canonical_segments(b"/api/v2/tenants/t/databases/d/collections/c") or [])
    with caplog.at_level(logging.INFO, logger="chromaguard.auth"):
        assert decide(auth, (b"x-chroma-token", b"r-tok"), route=delete) == Denial(
            403, "AuthorizationError", "chromaguard: reader may not delete collection (role read)")
        decide(auth, (b"x-chroma-token", b"nope"))
    assert [r.getMessage() for r in caplog.records] == [
        "denied delete_collection to reader: delete collection (role read)", "rejected unknown credentials"]
    caplog.clear()
    basic = Authenticator("basic", fresh_store())
    with caplog.at_level(logging.INFO, logger="chromaguard.auth"):
        assert asyncio.run(basic.check(LIST, [_basic("alice", "wrong")], "1.1.1.1")).status == 403  # type: ignore[union-attr]
    assert [r.getMessage() for r in caplog.records] == ["rejected unknown credentials"]


@pytest.mark.parametrize("value", [b"w-tok\x0b", b"\x0cw-tok", b"w-tok\r", b"w-tok\n", b"\xa0w-tok"])
def test_only_spaces_and_tabs_are_trimmed_from_a_token(value: bytes) -> None:
    auth = Authenticator("token", TOKENS)
    assert decide(auth, (b"x-chroma-token", value)) == Denial(403, "AuthorizationError",
                                                              "chromaguard: the credentials are not valid")
    denied = decide(auth, (b"authorization", b"Bearer " + value))
    assert isinstance(denied, Denial) and denied.status == 403, value
    assert isinstance(decide(auth, (b"authorization", b"Bearer\x0bw-tok")), Denial)


def test_each_provider_reads_only_its_own_scheme() -> None:
    token = Authenticator("token", TOKENS)
    missing = decide(token, _basic("alice", "pw"))  # a Basic header is no token, and never a password check
    assert isinstance(missing, Denial) and missing.status == 401
    basic = Authenticator("basic", fresh_store())
    for header in ((b"authorization", b"Bearer w-tok"), (b"authorization", b"Bearer " + _basic("alice", "pw")[1][6:])):
        missing = decide(basic, header)
        assert isinstance(missing, Denial) and missing.status == 401, header


def test_basic_credentials_are_strict_base64_and_split_at_the_first_colon() -> None:
    store = parse_htpasswd(f"bob:{bcrypt.hashpw(b'p:w:d', bcrypt.gensalt(rounds=4)).decode()}\n", "h")
    auth = Authenticator("basic", store)
    granted = asyncio.run(auth.check(LIST, [_basic("bob", "p:w:d")], "1.1.1.1"))
    assert isinstance(granted, Grant) and granted.principal.name == "bob"  # a password may hold colons
    good = base64.b64encode(b"bob:p:w:d")
    for junk in (b"!" + good, good[:4] + b"*" + good[4:], good + b"$"):  # not base64: never decoded leniently
        missing = decide(auth, (b"authorization", b"Basic " + junk))
        assert isinstance(missing, Denial) and missing.status == 401, junk
    for bad in (base64.b64encode(b":pw"), base64.b64encode("bob:\udcff".encode("utf-8", "surrogateescape"))):
        missing = decide(auth, (b"authorization", b"Basic " + bad))
        assert isinstance(missing, Denial) and missing.status == 401, bad


def test_check_decides_tokens_at_once_too() -> None:
    auth = Authenticator("token", TOKENS)
    granted = asyncio.run(auth.check(ADD, [(b"x-chroma-token", b"w-tok")], "1.1.1.1"))
    assert granted == Grant(TOKENS.check_token("w-tok"), ADD)


def test_scope_refusals_name_the_operation_in_words() -> None:
    scoped = parse_tokens(json.dumps([{"token": "s", "name": "acme", "role": "admin", "tenant": "acme",
                                       "databases": ["main"]}]), "t")
    auth = Authenticator("token", scoped)
    reset = classify("POST", canonical_segments(b"/api/v2/reset") or [])
    assert decide(auth, (b"x-chroma-token", b"s"), route=reset) == Denial(
        403, "AuthorizationError", "chromaguard: acme may not reset outside its tenant")
    tenant_update = classify("PATCH", canonical_segments(b"/api/v2/tenants/acme") or [])
    assert decide(auth, (b"x-chroma-token", b"s"), route=tenant_update) == Denial(
        403, "AuthorizationError", "chromaguard: acme may not update tenant across databases")
    create_tenant = classify("POST", canonical_segments(b"/api/v2/tenants") or [])
    assert decide(auth, (b"x-chroma-token", b"s"), route=create_tenant) == Denial(
        403, "AuthorizationError", "chromaguard: acme may not create tenant outside its tenant")


@pytest.mark.parametrize("value", [b"Xw-tok", b"w-tokX"])
def test_only_blanks_are_trimmed_not_other_characters(value: bytes) -> None:
    tokens = parse_tokens(json.dumps([{"token": "w-tok", "role": "write"}]), "t")
    auth = Authenticator("token", tokens)
    for header in ((b"x-chroma-token", value), (b"authorization", b"Bearer " + value)):
        assert isinstance(decide(auth, header), Denial), header
    assert isinstance(decide(auth, (b"authorization", b"XBearer w-tok")), Denial)


def test_a_metrics_token_scrapes_and_checks_health_but_reads_no_data() -> None:
    """Prometheus's token: a read token would let whoever gets into Prometheus read every tenant."""
    tokens = parse_tokens(json.dumps([{"token": "m-tok", "name": "prometheus", "role": "metrics"},
                                      {"token": "r-tok", "name": "reader", "role": "read"}]), "t")
    auth = Authenticator("token", tokens)

    def route(method: str, path: bytes):  # noqa: ANN202
        return classify(method, canonical_segments(path) or [])

    collection = b"/api/v2/tenants/default_tenant/databases/default_database/collections"
    for method, path in (("GET", b"/metrics"), ("HEAD", b"/metrics"), ("GET", b"/readyz"), ("GET", b"/healthz"),
                         ("GET", b"/api/v2/heartbeat"), ("GET", b"/api/v2/version")):
        for token in (b"m-tok", b"r-tok"):  # the read role (and every role above it) keeps them
            assert isinstance(decide(auth, (b"x-chroma-token", token), route=route(method, path)), Grant), path
    for method, path in (("GET", collection), ("GET", b"/api/v2/auth/identity"), ("GET", b"/chromaguard/status"),
                         ("POST", collection + b"/0b5e8f3c-6d1a-4c2e-9f7a-1d2c3b4a5e6f/query"),
                         ("GET", collection + b"/0b5e8f3c-6d1a-4c2e-9f7a-1d2c3b4a5e6f/count"),
                         ("GET", b"/api/v2/tenants/default_tenant"), ("POST", b"/metrics"), ("GET", b"/metrics/x")):
        refused = decide(auth, (b"x-chroma-token", b"m-tok"), route=route(method, path))
        assert isinstance(refused, Denial) and refused.status == 403, (method, path, refused)
        assert "(role metrics)" in refused.message, refused.message
