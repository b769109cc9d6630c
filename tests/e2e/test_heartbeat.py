"""The seed's health check target works again, and says 503 when the engine is gone."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import httpx
import pytest
from support.clients import http_client
from support.procs import Guard


@pytest.mark.parametrize("path", ["/api/v1/heartbeat", "/api/v2/heartbeat"])
def test_heartbeat_both_api_lines(guard: Guard, path: str) -> None:
    response = httpx.get(guard.url + path)
    assert response.status_code == 200
    beat = response.json()["nanosecond heartbeat"]
    assert isinstance(beat, int) and abs(beat - time.time_ns()) < 60 * 10**9


def test_seed_python_check(guard: Guard) -> None:
    client = http_client(guard.port)
    assert isinstance(client.heartbeat(), int)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed on this machine")
def test_seed_curl_check(guard: Guard) -> None:
    result = subprocess.run(["curl", "-f", "-s", f"http://localhost:{guard.port}/api/v1/heartbeat"],
                            capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr
    assert "nanosecond heartbeat" in result.stdout


def test_other_v1_paths_stay_gone_and_point_to_v2(guard: Guard) -> None:
    response = httpx.get(guard.url + "/api/v1/collections")
    assert response.status_code == 410
    assert "v2" in response.json()["message"]


def test_heartbeat_503_when_engine_dies_then_recovers() -> None:
    with Guard() as service:
        pid, _ = service.engine()
        os.kill(pid, signal.SIGKILL)
        statuses = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            response = httpx.get(service.url + "/api/v1/heartbeat", timeout=5)
            statuses.append(response.status_code)
            if response.status_code == 503:
                body = response.json()
                assert body["error"] == "ServiceUnavailable" and "engine" in body["message"]
                assert response.headers["retry-after"]
            if 503 in statuses and response.status_code == 200:
                break
            time.sleep(0.005)
        assert 503 in statuses, "a dead engine must make the heartbeat fail"
        assert statuses[-1] == 200, "the supervisor must bring the engine back"
        assert service.engine()[0] != pid
        assert "engine exited with code" in service.log


def test_heartbeat_503_when_engine_hangs() -> None:
    with Guard() as service:
        pid, _ = service.engine()
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            response = httpx.get(service.url + "/api/v2/heartbeat", timeout=30)
            assert response.status_code == 503
            assert time.monotonic() - started < 10, "a hung engine must not hang the health check"
        finally:
            os.kill(pid, signal.SIGCONT)
