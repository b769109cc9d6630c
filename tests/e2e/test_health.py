"""Probe, readiness, supervision and status: the seed's "stable health checks and automatic recovery"."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from support.clients import http_client
from support.fake_ollama import FakeOllama
from support.procs import BareEngine, Guard, clean_env, free_port

BASE = "/api/v2/tenants/default_tenant/databases/default_database"
FAST_HEALTH = {"CHROMAGUARD_HEALTH_INTERVAL": "0.3s", "CHROMAGUARD_HEALTH_TIMEOUT": "0.5s",
               "CHROMAGUARD_HEALTH_RETRIES": "2", "CHROMAGUARD_HEALTH_START_PERIOD": "0"}


def probe(*args: str, **env: str) -> tuple[int, str]:
    result = subprocess.run([sys.executable, "-m", "chromaguard.probe", *args], capture_output=True, text=True,
                            env=clean_env(**env), timeout=60)
    return result.returncode, (result.stdout + result.stderr).strip()


@pytest.fixture(scope="module")
def ollama() -> Iterator[FakeOllama]:
    server = FakeOllama(["nomic-embed-text:latest", "llama3.2:3b"])
    yield server
    server.stop()


# ---- the probe -------------------------------------------------------------------------------


def test_probe_chromaguard_liveness_and_readiness(guard: Guard) -> None:
    assert probe(guard.url) == (0, f"healthy: {guard.url}: alive")
    code, line = probe(guard.url, "--ready")
    assert code == 0 and "ready" in line
    code, line = probe("--ready", CHROMA_SERVER_HTTP_PORT=str(guard.port))  # the default target
    assert code == 0, line


def test_probe_plain_chroma(bare: BareEngine) -> None:
    assert probe(bare.url)[0] == 0
    code, line = probe(bare.url, "--ready")  # no /readyz on a bare engine: its /api/v2/healthcheck
    assert code == 0 and "ready" in line


class _Chroma04(BaseHTTPRequestHandler):
    """Stands in for a Chroma 0.x server (only the v1 API), which cannot be installed beside 1.x."""

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/api/v1/heartbeat":
            body, status = b'{"nanosecond heartbeat": 1732000000000000000}', 200
        else:
            body, status = b'{"detail":"Not Found"}', 404
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_probe_falls_back_to_v1_for_chroma_0x() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Chroma04)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert probe(f"http://127.0.0.1:{server.server_address[1]}")[0] == 0
    finally:
        server.shutdown()


def test_probe_unhealthy_targets() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    code, line = probe(dead)
    assert code == 1 and line.startswith("unhealthy:") and "refused" in line.lower()
    assert len(line.splitlines()) == 1
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen()
    try:
        started = time.monotonic()
        code, line = probe(f"http://127.0.0.1:{hole.getsockname()[1]}", "--timeout", "0.5")
        assert code == 1 and "no answer within 0.5s" in line
        assert time.monotonic() - started < 5
    finally:
        hole.close()


def test_probe_tcp_and_any_url(guard: Guard) -> None:
    assert probe(f"tcp://127.0.0.1:{guard.port}")[0] == 0
    assert probe(f"tcp://127.0.0.1:{free_port()}")[0] == 1
    assert probe(guard.url + "/healthz")[0] == 0
    code, line = probe(guard.url + "/healthz", "--expect-status", "204")
    assert code == 1 and "expected 204" in line
    assert probe(guard.url + "/api/v2/nope", "--expect-status", "404")[0] == 0


def test_probe_ollama(ollama: FakeOllama) -> None:
    assert probe(ollama.url, "--kind", "ollama")[0] == 0
    assert probe(ollama.url, "--require-model", "nomic-embed-text")[0] == 0  # :latest is implied
    assert probe(ollama.url, "--require-model", "llama3.2:3b")[0] == 0
    code, line = probe(ollama.url, "--require-model", "mxbai-embed-large")
    assert code == 1 and "not pulled: mxbai-embed-large" in line and "ollama pull" in line
    code, line = probe(f"http://127.0.0.1:{free_port()}", "--kind", "ollama")
    assert code == 1


def test_probe_usage_errors() -> None:
    code, line = probe("ftp://example")
    assert code == 2 and "is not a target" in line
    assert probe("--bogus-flag")[0] == 2


def test_chromaguard_health_is_the_same_probe(guard: Guard) -> None:
    result = subprocess.run([sys.executable, "-m", "chromaguard", "health", guard.url, "--ready"],
                            capture_output=True, text=True, env=clean_env(), timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("healthy:")


# ---- liveness and readiness ------------------------------------------------------------------


def test_healthz_and_readyz(guard: Guard) -> None:
    assert httpx.get(guard.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(guard.url + "/readyz")
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    assert checks["engine_heartbeat"]["ok"] and checks["engine_healthcheck"]["ok"] and checks["disk"]["ok"]
    assert "ollama" not in checks


def test_readyz_follows_ollama(ollama: FakeOllama) -> None:
    models = FakeOllama(["nomic-embed-text:latest"])
    with Guard(env={"OLLAMA_HOST": f"127.0.0.1:{models.port}", "CHROMAGUARD_OLLAMA_MODELS": "nomic-embed-text"}) as g:
        up = httpx.get(g.url + "/readyz")
        assert up.status_code == 200 and up.json()["checks"]["ollama"]["ok"]
        assert probe(g.url, "--ready")[0] == 0
        status = json.loads(subprocess.run([sys.executable, "-m", "chromaguard", "status", g.url, "--json"],
                                           capture_output=True, text=True, env=clean_env(), timeout=60).stdout)
        assert status["ollama"]["ok"] and status["ollama"]["models"] == ["nomic-embed-text:latest"]

        models.models = ["llama3.2:3b"]  # the required model is gone
        missing = httpx.get(g.url + "/readyz")
        assert missing.status_code == 503
        assert "nomic-embed-text" in missing.json()["checks"]["ollama"]["detail"]
        code, line = probe(g.url, "--ready")
        assert code == 1 and "ollama" in line

        models.stop()  # Ollama is down
        down = httpx.get(g.url + "/readyz")
        assert down.status_code == 503 and "not reachable" in down.json()["checks"]["ollama"]["detail"]
        assert down.json()["checks"]["engine_heartbeat"]["ok"], "the engine itself is fine"
        table = subprocess.run([sys.executable, "-m", "chromaguard", "status", g.url], capture_output=True,
                               text=True, env=clean_env(), timeout=60).stdout
        assert "ollama" in table and "down" in table


def test_readyz_fails_on_low_disk() -> None:
    with Guard(env={"CHROMAGUARD_MIN_FREE_DISK": "1000TiB"}) as g:
        r = httpx.get(g.url + "/readyz")
        assert r.status_code == 503 and not r.json()["checks"]["disk"]["ok"]
        assert "CHROMAGUARD_MIN_FREE_DISK" in r.json()["checks"]["disk"]["detail"]
        assert httpx.get(g.url + "/api/v2/heartbeat").status_code == 200, "liveness is not readiness"


# ---- supervision -----------------------------------------------------------------------------


def test_kill_9_under_write_load_loses_no_acknowledged_write() -> None:
    with Guard() as g:
        cid = httpx.post(g.url + f"{BASE}/collections", json={"name": "durable"}).json()["id"]
        acknowledged: list[str] = []
        refused: list[int] = []
        bodies: list[str] = []
        stop = threading.Event()

        def writer(worker: int) -> None:
            with httpx.Client(base_url=g.url, timeout=30) as http:
                n = 0
                while not stop.is_set():
                    ids = [f"w{worker}-{n}-{i}" for i in range(20)]
                    n += 1
                    try:
                        r = http.post(f"{BASE}/collections/{cid}/add",
                                      json={"ids": ids, "embeddings": [[float(worker), float(n)]] * 20})
                    except httpx.HTTPError:
                        continue
                    if r.status_code == 201:
                        acknowledged.extend(ids)
                    else:
                        refused.append(r.status_code)
                        if r.status_code == 500:
                            bodies.append(r.text)

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        pid, _ = g.engine()
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        deadline = killed_at + 20
        while time.monotonic() < deadline:
            if g.engine()[0] != pid and httpx.get(g.url + "/api/v2/heartbeat").status_code == 200:
                break
            time.sleep(0.05)
        recovered_in = time.monotonic() - killed_at
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join()
        assert recovered_in < 20, "the engine was not back within the window"
        # 502/503 from chromaguard while the engine is down; a 500 may only be the engine's own JSON error
        # (its first requests after a crash), never chromaguard failing.
        assert set(refused) <= {500, 502, 503}, refused
        assert all(json.loads(body).get("error") for body in bodies), bodies[:3]
        assert "Exception in ASGI application" not in g.log and "Traceback" not in g.log
        got = httpx.post(g.url + f"{BASE}/collections/{cid}/get", json={"ids": acknowledged, "include": []},
                         timeout=60).json()["ids"]
        assert len(acknowledged) > 100
        assert set(got) == set(acknowledged), f"{len(set(acknowledged) - set(got))} acknowledged writes lost"
        status = httpx.get(g.url + "/chromaguard/status").json()["engine"]
        assert status["restarts"] == 1 and "exited with code" in status["last_failure"]


def test_hung_engine_is_detected_killed_and_restarted() -> None:
    with Guard(env=FAST_HEALTH) as g:
        http_client(g.port).create_collection("survivor", embedding_function=None)
        pid, _ = g.engine()
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(1.0)  # past the first failed probe
            started = time.monotonic()
            r = httpx.get(g.url + f"{BASE}/collections", timeout=10)
            assert r.status_code == 503 and r.headers["retry-after"], "requests must not hang on a hung engine"
            assert time.monotonic() - started < 1.0
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and g.engine()[0] == pid:
                time.sleep(0.1)
            assert g.engine()[0] != pid, "the hung engine was not replaced"
        finally:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and httpx.get(g.url + "/readyz").status_code != 200:
            time.sleep(0.1)
        assert [c.name for c in http_client(g.port).list_collections()] == ["survivor"]
        assert "engine unhealthy: 2 health checks failed in a row" in g.log


def test_engine_that_keeps_dying_backs_off_then_recovers() -> None:
    with Guard() as g:
        pid, _ = g.engine()
        sqlite = g.data_dir / "chroma.sqlite3"
        good = sqlite.read_bytes()
        sqlite.write_bytes(b"garbage" * 1000)  # the next start will fail
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "restarting the engine in" not in g.log:
            time.sleep(0.1)
        assert "restarting the engine in" in g.log
        started = time.monotonic()
        r = httpx.get(g.url + f"{BASE}/collections", timeout=10)
        assert r.status_code == 503 and r.headers["retry-after"] and time.monotonic() - started < 1.0
        sqlite.write_bytes(good)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and httpx.get(g.url + "/api/v2/heartbeat").status_code != 200:
            time.sleep(0.2)
        assert httpx.get(g.url + "/api/v2/heartbeat").status_code == 200


def test_status_table(guard: Guard) -> None:
    http_client(guard.port).get_or_create_collection("status-shown", embedding_function=None).add(
        ids=["a", "b", "c"], embeddings=[[1.0, 2.0]] * 3)
    result = subprocess.run([sys.executable, "-m", "chromaguard", "status", guard.url], capture_output=True,
                            text=True, env=clean_env(), timeout=60)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "engine (embedded)" in out and "running" in out and "front door" in out
    line = next(x for x in out.splitlines() if "status-shown" in x)
    assert " 3 " in line and "free disk" in out


def test_status_needs_admin_when_auth_is_on(tmp_path: Path) -> None:
    tokens = tmp_path / "t.json"
    tokens.write_text(json.dumps([{"token": "adm", "role": "admin"}, {"token": "rd", "name": "r", "role": "read"}]))
    with Guard(env={"CHROMA_SERVER_AUTH_PROVIDER": "token", "CHROMA_SERVER_AUTH_CREDENTIALS_FILE": str(tokens)}) as g:
        run = lambda *a, **e: subprocess.run([sys.executable, "-m", "chromaguard", "status", g.url, *a],  # noqa
                                             capture_output=True, text=True, env=clean_env(**e), timeout=60)
        denied = run()
        assert denied.returncode == 1 and "admin token" in denied.stderr
        assert run("--token", "rd").returncode == 1
        assert run("--json", CHROMAGUARD_TOKEN="adm").returncode == 0
        # and the seed's unauthenticated checks still work with auth on
        assert probe(g.url)[0] == 0
        import chromadb

        assert isinstance(chromadb.HttpClient(host="localhost", port=g.port).heartbeat(), int)
