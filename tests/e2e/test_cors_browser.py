"""CORS as a real browser enforces it: headless Chromium loads pages from two origins."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from support.procs import Guard
from support.tls import serving, spki_pin, trusted_by_httpx

BASE = "/api/v2/tenants/default_tenant/databases/default_database"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

if CHROMIUM is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI must have Chromium for the CORS tests: .ci/run installs Debian's chromium")
    pytest.skip("Chromium is not installed here (apt-get install chromium); CI installs it", allow_module_level=True)

PAGE = """<!doctype html><html><body><pre id="out">pending</pre><script>
const out = document.getElementById('out');
async function run() {
  const headers = {'X-Chroma-Token': %(token)s, 'Content-Type': 'application/json'};
  try {
    const list = await fetch(%(guard)s + '%(base)s/collections', {headers});
    const names = (await list.json()).map(c => c.name).sort();
    const add = await fetch(%(guard)s + '%(base)s/collections/' + %(cid)s + '/add', {method: 'POST', headers,
      body: JSON.stringify({ids: [%(marker)s], embeddings: [[0.5, 0.5]]})});
    const miss = await fetch(%(guard)s + '%(base)s/collections/missing-one', {headers});
    out.textContent = 'READ:' + list.status + ':' + names.join(',') + ' ADD:' + add.status +
      ' MISS:' + miss.status + ':' + (miss.headers.get('chroma-trace-id') !== null);
  } catch (e) {
    out.textContent = 'BLOCKED:' + e.name;
  }
}
run();
</script></body></html>"""


class _Pages(BaseHTTPRequestHandler):
    page = b""

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(self.page)))
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, *args: object) -> None:
        pass


_TRUSTED: list[str] = []  # HTTPS: the guard's key, the one certificate the browser is told to accept


def _browse(url: str) -> str:
    """The page's text once its script has run, as headless Chromium renders it."""
    trust = [f"--ignore-certificate-errors-spki-list={_TRUSTED[0]}"] if _TRUSTED else []
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", *trust,
             f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", url],
            capture_output=True, text=True, timeout=90)
    assert "<pre" in result.stdout, result.stderr[-2000:]
    return result.stdout.split('<pre id="out">')[1].split("</pre>")[0]


@pytest.fixture(scope="module", params=["http", "https"])
def origins(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[Guard, int, int]]:
    """A guard that allows one page origin; a second page origin that it does not allow. Over
    plain HTTP, and over HTTPS (the browser trusting exactly the guard's key)."""
    from support.procs import free_port

    allowed_port, other_port = free_port(), free_port()
    folder = tmp_path_factory.mktemp("cors")
    tokens = folder / "tokens.json"
    tokens.write_text('["browser-token"]')
    env = {"CHROMA_SERVER_AUTH_PROVIDER": "token", "CHROMA_SERVER_AUTH_CREDENTIALS_FILE": str(tokens),
           "CHROMA_SERVER_CORS_ALLOW_ORIGINS": json.dumps([f"http://127.0.0.1:{allowed_port}"])}
    ca = None
    if request.param == "https":
        tls, ca = serving(folder / "tls")
        env |= tls
        _TRUSTED[:] = [spki_pin(Path(tls["CHROMAGUARD_SSL_CERTFILE"]))]
    try:
        with trusted_by_httpx(ca), Guard(env=env, ca=ca) as g:  # the test's own httpx calls trust it
            yield g, allowed_port, other_port
    finally:
        _TRUSTED.clear()


def _page_for(guard: Guard, cid: str, marker: str) -> str:
    return PAGE % {"token": json.dumps("browser-token"), "guard": json.dumps(guard.url), "base": BASE,
                   "cid": json.dumps(cid), "marker": json.dumps(marker)}


def _setup_collection(guard: Guard) -> str:
    r = httpx.post(guard.url + f"{BASE}/collections", json={"name": "web", "get_or_create": True},
                   headers={"x-chroma-token": "browser-token"})
    return r.json()["id"]


def _ids(guard: Guard, cid: str) -> list[str]:
    return httpx.post(guard.url + f"{BASE}/collections/{cid}/get", json={},
                      headers={"x-chroma-token": "browser-token"}).json()["ids"]


def _page_server_on(port: int, page: str) -> ThreadingHTTPServer:
    handler = type("Handler", (_Pages,), {"page": page.encode()})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _visit(guard: Guard, port: int, marker: str) -> tuple[str, str]:
    """Serve the page from origin http://127.0.0.1:PORT, load it in Chromium; (its text, collection id)."""
    cid = _setup_collection(guard)
    server = _page_server_on(port, _page_for(guard, cid, marker))
    try:
        return _browse(f"http://127.0.0.1:{port}/"), cid
    finally:
        server.shutdown()


def test_allowed_origin_reads_and_writes_with_a_token(origins: tuple[Guard, int, int]) -> None:
    guard, allowed_port, _ = origins
    text, cid = _visit(guard, allowed_port, "from-allowed")
    assert text == "READ:200:web ADD:201 MISS:404:true", text
    assert "from-allowed" in _ids(guard, cid)


def test_other_origin_is_blocked_by_the_browser(origins: tuple[Guard, int, int]) -> None:
    guard, _, other_port = origins
    text, cid = _visit(guard, other_port, "from-other")
    assert text == "BLOCKED:TypeError", text
    assert "from-other" not in _ids(guard, cid), "a blocked preflight must keep the write from happening"


def test_preflight_needs_no_credentials_and_matches_origins_exactly(origins: tuple[Guard, int, int]) -> None:
    guard, allowed_port, other_port = origins
    allowed = f"http://127.0.0.1:{allowed_port}"
    ok = httpx.options(guard.url + f"{BASE}/collections", headers={
        "origin": allowed, "access-control-request-method": "POST",
        "access-control-request-headers": "x-chroma-token, content-type"})
    assert ok.status_code == 204
    assert ok.headers["access-control-allow-origin"] == allowed
    assert "x-chroma-token" in ok.headers["access-control-allow-headers"]
    assert "POST" in ok.headers["access-control-allow-methods"]
    for origin in (f"http://127.0.0.1:{other_port}", f"https://127.0.0.1:{allowed_port}",
                   f"http://127.0.0.1:{allowed_port}.evil.example", "null"):
        denied = httpx.options(guard.url + f"{BASE}/collections", headers={
            "origin": origin, "access-control-request-method": "GET"})
        assert "access-control-allow-origin" not in denied.headers, origin
    # An actual response to an allowed origin carries the header; auth still applies to it.
    unauth = httpx.get(guard.url + f"{BASE}/collections", headers={"origin": allowed})
    assert unauth.status_code == 401 and unauth.headers["access-control-allow-origin"] == allowed
