"""The owner check's decisions, step by step: a scripted listing and a clock the test moves.

The end-to-end tests (test_access_holes, test_owner_check_failures) run it against the real
engine and a broken upstream; these pin each rule so a changed comparison or a dropped
check turns red at once.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from chromaguard.access.auth import Denial
from chromaguard.access.credentials import Principal
from chromaguard.access.ownership import LOOK_UP, MAX_LISTINGS, NOT_AN_ID, UNCHECKABLE, Ownership, listed_ids
from chromaguard.access.routes import Route, canonical_segments, classify

MINE = "0b5e8f3c-6d1a-4c2e-9f7a-1d2c3b4a5e6f"
THEIRS = "11111111-2222-3333-4444-555555555555"
SCOPED = Principal("a", "write", "acme", ("main",))
TENANT_ONLY = Principal("t", "write", "acme", None)
UNSCOPED = Principal("root", "admin")


def route(method: str, path: str) -> Route:
    segments = canonical_segments(path.encode())
    assert segments is not None
    return classify(method, segments)


class Listing:
    """The engine's answers, one per fetch, and what was asked."""

    def __init__(self, *answers: tuple[int, bytes] | Exception) -> None:
        self.answers = list(answers)
        self.asked: list[tuple[str, str]] = []

    async def __call__(self, tenant: str, database: str) -> tuple[int, bytes]:
        self.asked.append((tenant, database))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def ids(*values: str, **extra: str) -> tuple[int, bytes]:
    return 200, json.dumps([{"id": v, **extra} for v in values]).encode()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def check(ownership: Ownership, principal: Principal, r: Route) -> Denial | None:
    return asyncio.run(ownership.check(principal, r))


def test_only_scoped_tokens_on_id_routes_are_checked() -> None:
    listing = Listing()
    own = Ownership(listing)
    assert own.now(UNSCOPED, route("POST", f"/api/v2/tenants/acme/databases/main/collections/{THEIRS}/get")) is None
    assert own.now(SCOPED, route("GET", f"/api/v2/tenants/acme/databases/main/collections/{THEIRS}")) is None  # name
    assert own.now(SCOPED, route("GET", "/api/v2/tenants/acme/databases/main/collections")) is None
    assert own.now(SCOPED, route("POST", f"/api/v2/tenants/acme/databases/main/collections/{THEIRS}/get")) is LOOK_UP
    assert own.now(TENANT_ONLY, route("GET", f"/api/v2/tenants/acme/databases/x/collections/{THEIRS}/count")) \
        is LOOK_UP
    assert listing.asked == []


def test_the_id_must_be_listed_in_the_database_the_path_names() -> None:
    listing = Listing(ids(MINE), ids(THEIRS))
    own = Ownership(listing, clock=Clock())
    mine = route("POST", f"/api/v2/tenants/acme/databases/main/collections/{MINE.upper()}/get")
    assert check(own, SCOPED, mine) is None
    theirs = route("POST", f"/api/v2/tenants/acme/databases/main/collections/{THEIRS}/add")
    denied = check(own, SCOPED, theirs)
    assert isinstance(denied, Denial) and denied.status == 403 and "not in acme/main" in denied.message
    elsewhere = route("GET", f"/api/v2/tenants/acme/databases/other/collections/{THEIRS}/count")
    assert check(own, TENANT_ONLY, elsewhere) is None  # listed there
    assert listing.asked == [("acme", "main"), ("acme", "other")]


def test_names_never_count() -> None:
    listing = Listing(ids("99999999-9999-9999-9999-999999999999", name=THEIRS))
    own = Ownership(listing, clock=Clock())
    denied = check(own, SCOPED, route("POST", f"/api/v2/tenants/acme/databases/main/collections/{THEIRS}/get"))
    assert isinstance(denied, Denial) and denied.status == 403


def test_a_segment_that_is_no_id_is_refused_without_asking() -> None:
    listing = Listing()
    own = Ownership(listing)
    assert own.now(SCOPED, route("POST", "/api/v2/tenants/acme/databases/main/collections/by-name/get")) is NOT_AN_ID
    assert check(own, SCOPED, route("PUT", "/api/v2/tenants/acme/databases/main/collections/by-name")) is NOT_AN_ID
    assert listing.asked == []


@pytest.mark.parametrize("answer", [
    (500, b"[]"), (404, json.dumps([{"id": MINE}]).encode()), (200, b"not json"), (200, b'{"id": "x"}'),
    (200, json.dumps([{"name": MINE}]).encode()), (200, json.dumps([{"id": "nope"}, {"id": MINE}]).encode()),
    (200, json.dumps([MINE]).encode()), TimeoutError("slow"), RuntimeError("connection reset"),
])
def test_any_doubt_is_a_no_and_is_not_remembered(answer: tuple[int, bytes] | Exception) -> None:
    listing = Listing(answer, ids(MINE))
    own = Ownership(listing, clock=Clock())
    mine = route("GET", f"/api/v2/tenants/acme/databases/main/collections/{MINE}/count")
    assert check(own, SCOPED, mine) is UNCHECKABLE
    assert own.now(SCOPED, mine) is LOOK_UP  # the failure left nothing in the cache
    assert check(own, SCOPED, mine) is None  # the next good listing decides


def test_the_cache_answers_for_a_second_then_a_missing_id_is_looked_up_again() -> None:
    clock = Clock()
    listing = Listing(ids(MINE), ids(MINE, THEIRS))
    own = Ownership(listing, clock=clock)
    mine = route("GET", f"/api/v2/tenants/acme/databases/main/collections/{MINE}/count")
    new = route("GET", f"/api/v2/tenants/acme/databases/main/collections/{THEIRS}/count")
    assert check(own, SCOPED, mine) is None
    assert own.now(SCOPED, mine) is None  # cached
    denied = own.now(SCOPED, new)  # missing from a fresh listing: missing
    assert isinstance(denied, Denial) and denied.status == 403
    clock.now += 1.0  # a listing exactly one second old still answers
    denied = own.now(SCOPED, new)
    assert isinstance(denied, Denial) and denied.status == 403
    clock.now += 0.01
    assert own.now(SCOPED, mine) is None  # a listed id stays listed: ids never move between databases
    assert own.now(SCOPED, new) is LOOK_UP  # made since? ask again
    assert check(own, SCOPED, new) is None
    assert len(listing.asked) == 2


def test_forget_drops_the_database_listing() -> None:
    listing = Listing(ids(MINE), ids())
    own = Ownership(listing, clock=Clock())
    mine = route("GET", f"/api/v2/tenants/acme/databases/main/collections/{MINE}/count")
    assert check(own, SCOPED, mine) is None
    own.forget("acme", "main")
    assert own.now(SCOPED, mine) is LOOK_UP
    denied = check(own, SCOPED, mine)
    assert isinstance(denied, Denial) and denied.status == 403


def test_listed_ids_reads_the_engine_spelling() -> None:
    assert listed_ids(json.dumps([{"id": MINE.upper()}, {"id": THEIRS}]).encode()) == frozenset({MINE, THEIRS})
    assert listed_ids(b"[]") == frozenset()
    assert listed_ids(b'{"a": 1}') is None
    assert listed_ids(b"[1]") is None and listed_ids(b'["' + MINE.encode() + b'"]') is None  # items must be objects
    with pytest.raises(ValueError):
        listed_ids(b"nope")


def test_a_refusal_names_the_collection_and_the_database_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    own = Ownership(Listing(ids(MINE)), clock=Clock())
    theirs = route("POST", f"/api/v2/tenants/acme/databases/main/collections/{THEIRS}/add")
    with caplog.at_level(logging.INFO, logger="chromaguard.auth"):
        denied = check(own, SCOPED, theirs)
    assert denied == Denial(403, "AuthorizationError",
                            f"chromaguard: a may not use collection {THEIRS}: it is not in acme/main")
    assert [r.getMessage() for r in caplog.records] == [f"denied add to a: collection {THEIRS} is not in acme/main"]


def test_the_listing_asked_for_is_the_path_s_tenant_and_database() -> None:
    listing = Listing(ids(MINE))
    own = Ownership(listing, clock=Clock())
    assert check(own, TENANT_ONLY, route("GET", f"/api/v2/tenants/acme/databases/db2/collections/{MINE}/count")) \
        is None
    assert listing.asked == [("acme", "db2")]


def test_the_cache_starts_afresh_once_it_holds_max_listings_databases() -> None:
    listing = Listing(*[ids(MINE)] * (MAX_LISTINGS + 2))
    own = Ownership(listing, clock=Clock())

    def count_in(database: str) -> Route:
        return route("GET", f"/api/v2/tenants/acme/databases/{database}/collections/{MINE}/count")

    for n in range(MAX_LISTINGS):
        assert check(own, TENANT_ONLY, count_in(f"db{n}")) is None
    assert own.now(TENANT_ONLY, count_in("db0")) is None, "all of them cached"
    assert check(own, TENANT_ONLY, count_in("one-more")) is None  # the cache was full: cleared, then this one
    assert own.now(TENANT_ONLY, count_in("one-more")) is None
    assert own.now(TENANT_ONLY, count_in("db0")) is LOOK_UP


def test_forgetting_a_database_never_listed_is_harmless() -> None:
    own = Ownership(Listing(), clock=Clock())
    own.forget("acme", "never-listed")
    own.forget(None, None)


def test_a_route_without_its_place_is_a_bug_not_a_pass() -> None:
    own = Ownership(Listing(), clock=Clock())
    with pytest.raises(ValueError, match="not an id route"):
        own.now(SCOPED, Route("get", "read", "acme", None, MINE, by_id=True))
