"""The owner check fails closed: when the listing behind it breaks, the request goes nowhere.

The upstream here is a small real HTTP server in front of which chromaguard runs with
``--upstream`` (as it would in front of a remote Chroma): it answers the collection listing
badly in each of the ways a listing can go wrong, and records every other request, so a
test sees whether anything was let through.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from support.procs import Guard

CID = "0b5e8f3c-6d1a-4c2e-9f7a-1d2c3b4a5e6f"
SCOPED = {"x-chroma-token": "scoped"}
LISTINGS: dict[str, tuple[int, bytes, float]] = {  # database -> (status, body, delay before answering)
    "garbage": (200, b"<html>not json</html>", 0.0),
    "object": (200, json.dumps({"id": CID}).encode(), 0.0),
    "error": (500, json.dumps([{"id": CID}]).encode(), 0.0),
    "no-ids": (200, json.dumps([{"name": CID}]).encode(), 0.0),
    "bad-id": (200, json.dumps([{"id": "not-a-uuid"}, {"id": CID}]).encode(), 0.0),
    "slow": (200, json.dumps([{"id": CID}]).encode(), 8.0),
    "names-only": (200, json.dumps([{"id": "11111111-2222-3333-4444-555555555555", "name": CID}]).encode(), 0.0),
    "good": (200, json.dumps([{"id": CID, "name": "c"}]).encode(), 0.0),
}


class Upstream(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.reached: list[str] = []  # data requests that got through


class _Handler(BaseHTTPRequestHandler):
    server: Upstream

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # chromaguard gave up waiting (the slow listing): as it should

    def do_GET(self) -> None:
        if self.path.endswith("/heartbeat"):
            self._answer(200, b'{"nanosecond heartbeat": 1}')
            return
        parts = self.path.split("?")[0].split("/")
        if parts[-1] == "collections" and "limit=" in self.path:
            status, body, delay = LISTINGS[parts[-2]]
            time.sleep(delay)
            self._answer(status, body)
            return
        self.server.reached.append(self.path)
        self._answer(200, b"1")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.server.reached.append(self.path)
        self._answer(200, b'{"ids": []}')


@pytest.fixture(scope="module")
def fronted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Guard, Upstream]]:
    upstream = Upstream()
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    tokens = tmp_path_factory.mktemp("owner") / "tokens.json"
    tokens.write_text(json.dumps([{"token": "scoped", "name": "scoped", "role": "write", "tenant": "acme"}]))
    with Guard("--upstream", f"http://127.0.0.1:{upstream.server_address[1]}",
               env={"CHROMA_SERVER_AUTH_PROVIDER": "token", "CHROMA_SERVER_AUTH_CREDENTIALS_FILE": str(tokens)}) as g:
        yield g, upstream
    upstream.shutdown()


@pytest.mark.parametrize("database, status", [
    ("garbage", 503), ("object", 503), ("error", 503), ("no-ids", 503), ("bad-id", 503), ("slow", 503),
    ("names-only", 403),
])
def test_a_broken_listing_lets_nothing_through(fronted: tuple[Guard, Upstream], database: str, status: int) -> None:
    guard, upstream = fronted
    before = len(upstream.reached)
    for method, op in (("POST", "get"), ("GET", "count"), ("POST", "add")):
        r = httpx.request(method, f"{guard.url}/api/v2/tenants/acme/databases/{database}/collections/{CID}/{op}",
                          json={} if method == "POST" else None, headers=SCOPED, timeout=30)
        assert r.status_code == status, (database, op, r.status_code, r.text)
        if status == 503:
            assert r.headers["retry-after"]
    assert upstream.reached[before:] == []


def test_a_good_listing_lets_the_owner_through(fronted: tuple[Guard, Upstream]) -> None:
    guard, upstream = fronted
    r = httpx.get(f"{guard.url}/api/v2/tenants/acme/databases/good/collections/{CID.upper()}/count", headers=SCOPED)
    assert r.status_code == 200 and upstream.reached[-1].endswith(f"/{CID.upper()}/count")


def test_the_listing_cache_does_not_outlive_a_failure(fronted: tuple[Guard, Upstream]) -> None:
    """A failed listing is not remembered as an empty one: the next try asks again."""
    guard, _ = fronted
    url = f"{guard.url}/api/v2/tenants/acme/databases/garbage/collections/{CID}/count"
    assert [httpx.get(url, headers=SCOPED).status_code for _ in range(3)] == [503, 503, 503]
