"""Who may use /chromaguard/ (status, snapshots) with client auth off, decided in-process.

test_control_endpoints runs the same rules through a real service, from another network
namespace and through a browser's headers; these pin every rule and every word of the answer.
"""

from __future__ import annotations

import pytest

from chromaguard.access.auth import Denial
from chromaguard.backup.snapshot_api import ControlAccess, is_loopback

LOCAL_ONLY = Denial(403, "AuthorizationError", "chromaguard: with auth off, /chromaguard/ endpoints answer only "
                    "direct calls from this host (e.g. chromaguard backup --url http://127.0.0.1:PORT, no proxy or "
                    "browser); or set CHROMAGUARD_CONTROL_TOKEN on the server and send it as 'Authorization: "
                    "Bearer <token>'")
TOKEN_NEEDED = Denial(403, "AuthorizationError", "chromaguard: with auth off, /chromaguard/ endpoints answer only "
                      "direct calls from this host (e.g. chromaguard backup --url http://127.0.0.1:PORT, no proxy or "
                      "browser); send the control token (CHROMAGUARD_CONTROL_TOKEN) as 'Authorization: Bearer "
                      "<token>' (chromaguard backup --token)")
WRONG_TOKEN = Denial(403, "AuthorizationError", "chromaguard: the control token is not valid (it must equal "
                     "CHROMAGUARD_CONTROL_TOKEN on the server)")


@pytest.mark.parametrize("client, local", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("::ffff:127.0.0.1", True), ("::1%lo", True),
    ("10.0.0.1", False), ("::ffff:10.0.0.1", False), ("192.0.2.7", False), ("2001:db8::1", False),
    ("", False), ("localhost", False), ("not an address", False),
])
def test_only_a_loopback_peer_address_is_this_host(client: str, local: bool) -> None:
    assert is_loopback(client) is local


@pytest.mark.parametrize("host", [
    b"localhost", b"LOCALHOST:8000", b"app.localhost", b"127.0.0.1", b"127.0.0.1:8000", b"[::1]", b"[::1]:8000",
    b"::1", b" localhost ", b"10.0.0.5:8000",
])
def test_a_direct_local_call_may_whatever_host_names_this_machine(host: bytes) -> None:
    assert ControlAccess().refusal("127.0.0.1", [(b"host", host), (b"user-agent", b"curl")]) is None


@pytest.mark.parametrize("headers", [
    [(b"host", b"evil.example")], [(b"host", b"localhost.evil.example")], [(b"host", b"[::1]evil")],
    [(b"host", b"[::1]:80x")], [(b"host", b"evil.example:8000")],
    [(b"x-forwarded-for", b"127.0.0.1")], [(b"forwarded", b"for=127.0.0.1")], [(b"x-real-ip", b"127.0.0.1")],
    [(b"via", b"1.1 proxy")], [(b"origin", b"http://localhost")], [(b"referer", b"http://localhost/")],
    [(b"sec-fetch-site", b"cross-site")], [(b"sec-fetch-site", b"same-site")],
])
def test_a_local_peer_is_not_local_through_a_proxy_a_browser_or_a_foreign_name(
        headers: list[tuple[bytes, bytes]]) -> None:
    assert ControlAccess().refusal("127.0.0.1", [(b"host", b"localhost"), *headers]) == LOCAL_ONLY
    assert ControlAccess("s3cret").refusal("::1", headers) == TOKEN_NEEDED


@pytest.mark.parametrize("site", [b"none", b" Same-Origin "])
def test_a_browser_s_own_top_level_or_same_origin_fetch_stays_local(site: bytes) -> None:
    assert ControlAccess().refusal("127.0.0.1", [(b"sec-fetch-site", site)]) is None


def test_a_remote_caller_needs_the_control_token_and_it_must_match() -> None:
    access = ControlAccess("s3cret")
    assert ControlAccess().refusal("10.0.0.1", []) == LOCAL_ONLY
    assert ControlAccess().refusal("10.0.0.1", [(b"authorization", b"Bearer s3cret")]) == LOCAL_ONLY  # none set
    assert access.refusal("10.0.0.1", []) == TOKEN_NEEDED
    for good in ((b"authorization", b"Bearer s3cret"), (b"authorization", b" bearer \ts3cret\t "),
                 (b"x-chroma-token", b" s3cret\t")):
        assert access.refusal("10.0.0.1", [good]) is None, good
    for bad in ((b"authorization", b"Bearer s3cre"), (b"authorization", b"Bearer S3CRET"),
                (b"x-chroma-token", b"s3cret!"), (b"authorization", b"Bearer s3cret extra"),
                (b"authorization", b"Bearer \x0b")):  # not a blank: a (wrong) token
        assert access.refusal("10.0.0.1", [bad]) == WRONG_TOKEN, bad
    for unused in ((b"authorization", b"Basic s3cret"), (b"authorization", b"Bearer  "), (b"authorization", b"s3cret")):
        assert access.refusal("10.0.0.1", [unused]) == TOKEN_NEEDED, unused
    # One guess per request; a forwarded local caller gets in by token only.
    one = Denial(403, "AuthorizationError", "chromaguard: send the control token in exactly one header")
    assert access.refusal("10.0.0.1", [(b"x-chroma-token", b"other"), (b"authorization", b"Bearer s3cret")]) == one
    assert access.refusal("10.0.0.1", [(b"x-chroma-token", b"s3cret"), (b"x-chroma-token", b"s3cret")]) == one
    assert access.refusal("127.0.0.1", [(b"x-forwarded-for", b"1.2.3.4"), (b"x-chroma-token", b"s3cret")]) is None


def test_a_local_caller_may_send_any_token_along() -> None:
    assert ControlAccess("s3cret").refusal("127.0.0.1", [(b"authorization", b"Bearer for-another-server")]) is None


@pytest.mark.parametrize("value", [b"s3cret\x0b", b"\xa0s3cret", b"Xs3cretX"])
def test_only_spaces_and_tabs_are_trimmed_from_a_control_token(value: bytes) -> None:
    access = ControlAccess("s3cret")
    assert access.refusal("10.0.0.1", [(b"x-chroma-token", value)]) == WRONG_TOKEN
    assert access.refusal("10.0.0.1", [(b"authorization", b"Bearer " + value)]) == WRONG_TOKEN
    assert ControlAccess("Xs3cretX").refusal("10.0.0.1", [(b"authorization", b"Bearer Xs3cretX")]) is None


def test_a_bracketed_host_may_carry_only_a_numeric_port() -> None:
    for host in (b"[::1]:x8", b"[::1]:", b"[::1]]:80"):
        assert ControlAccess().refusal("127.0.0.1", [(b"host", host)]) == LOCAL_ONLY, host
