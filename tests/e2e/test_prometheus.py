"""The alert and recording rules (deploy/prometheus/): checked and unit-tested with promtool, then
loaded into a real Prometheus that scrapes a running chromaguard: every rule evaluates without
error on its real metrics, and killing the engine makes ChromaguardEngineDown fire."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.procs import Guard, free_port, pid_alive

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")

if PROMETHEUS is None or PROMTOOL is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI must have Prometheus for these tests: .ci/run installs Debian's prometheus")
    pytest.skip("Prometheus is not installed here (apt-get install prometheus); CI installs it",
                allow_module_level=True)


def test_the_rules_pass_promtool_check_and_their_unit_tests() -> None:
    assert PROMTOOL is not None
    checked = subprocess.run([PROMTOOL, "check", "rules", "chromaguard-rules.yml"], cwd=RULES, capture_output=True,
                             text=True)
    assert checked.returncode == 0 and "SUCCESS: 13 rules found" in checked.stdout, checked.stdout + checked.stderr
    tested = subprocess.run([PROMTOOL, "test", "rules", "chromaguard-rules.test.yml"], cwd=RULES,
                            capture_output=True, text=True)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


class Prometheus:
    """A real Prometheus scraping ``target`` every second, with our rules (their `for:` cut to 2 s)."""

    def __init__(self, target: str, folder: Path) -> None:
        self.port = free_port()
        rules = (RULES / "chromaguard-rules.yml").read_text()
        (folder / "rules.yml").write_text(re.sub(r"interval: \d+s", "interval: 1s", re.sub(r"for: \d+m", "for: 2s",
                                                                                          rules)))
        (folder / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "rule_files: [rules.yml]\n"
            f"scrape_configs:\n  - job_name: chromaguard\n    static_configs: [{{targets: ['{target}']}}]\n"
            "    authorization: {credentials: prom-metrics}\n")  # the metrics role: scrape only
        self.log = open(folder / "prometheus.log", "wb")
        assert PROMETHEUS is not None
        self.proc = subprocess.Popen([PROMETHEUS, f"--config.file={folder / 'prometheus.yml'}",
                                      f"--storage.tsdb.path={folder / 'data'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}"],
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd=folder)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, (folder / "prometheus.log").read_text()
            time.sleep(0.1)

    def api(self, path: str, **params: str) -> dict:
        answer = httpx.get(self.url + "/api/v1/" + path, params=params, timeout=10).json()
        assert answer["status"] == "success", answer
        return answer["data"]

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[Guard, Prometheus]]:
    """A chromaguard with token auth and an hourly backup to a folder (it runs one at start-up),
    so every metric a panel or rule reads exists."""
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps([{"token": "prom-admin", "name": "ops", "role": "admin"},
                                  {"token": "prom-metrics", "name": "prometheus", "role": "metrics"}]))
    env = {"CHROMA_SERVER_AUTH_PROVIDER": "token", "CHROMA_SERVER_AUTH_CREDENTIALS_FILE": str(tokens),
           "CHROMAGUARD_BACKUP_REPOSITORY": str(tmp_path / "backups"), "CHROMAGUARD_BACKUP_SCHEDULE": "1h",
           "CHROMAGUARD_BACKUP_VERIFY": "off"}
    with Guard(env=env) as g:
        # The start-up backup done first. Seen twice in CI: a request sent while it ran was cut
        # (reset, or closed unanswered); open, see the session 14 note on issue 23.
        deadline = time.monotonic() + 60
        while not re.search(r"scheduled backup \S+ to .* uploaded", g.log):  # its success, not a retry
            assert time.monotonic() < deadline, g.log
            time.sleep(0.1)
        prometheus = Prometheus(f"127.0.0.1:{g.port}", tmp_path)
        try:
            yield g, prometheus
        finally:
            prometheus.close()


def test_a_real_prometheus_evaluates_every_rule_and_sees_the_engine_go_down(
        watched: tuple[Guard, Prometheus]) -> None:
    g, prometheus = watched
    _traffic(g)
    deadline = time.monotonic() + 30
    while True:  # every rule evaluated at least once, none in error
        rules = [r for group in prometheus.api("rules")["groups"] for r in group["rules"]]
        if len(rules) == 13 and all(r.get("lastEvaluation", "").startswith("20") for r in rules):
            break
        assert time.monotonic() < deadline, rules
        time.sleep(0.5)
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    up = _until_data(prometheus, 'chromaguard_engine_up{job="chromaguard"}')  # rules run before the first scrape
    assert up[0]["value"][1] == "1", up
    free = _until_data(prometheus, "chromaguard_data_disk_free_bytes")
    assert float(free[0]["value"][1]) > 0, "the disk gauge the disk alert reads is there"
    assert not [a for a in prometheus.api("alerts")["alerts"] if a["labels"]["alertname"] == "ChromaguardEngineDown"]

    # Kill the engine whenever the supervisor brings it back: its back-off soon keeps it down.
    deadline = time.monotonic() + 90
    firing: list[dict] = []
    while not firing:
        assert time.monotonic() < deadline, prometheus.api("alerts")
        pid = _engine_pid(g)  # from status: the log also names the backup's scratch engines
        if pid and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.3)
        firing = [a for a in prometheus.api("alerts")["alerts"]
                  if a["labels"]["alertname"] == "ChromaguardEngineDown" and a["state"] == "firing"]
    alert = firing[0]
    assert alert["labels"]["severity"] == "critical" and alert["labels"]["instance"] == f"127.0.0.1:{g.port}"
    assert "is down" in alert["annotations"]["summary"]


def _until_data(prometheus: Prometheus, query: str, timeout: float = 30.0) -> list[dict]:
    """The query's result once it has one (scrapes run every second, the first at any moment)."""
    deadline = time.monotonic() + timeout
    while True:
        result = prometheus.api("query", query=query)["result"]
        if result:
            return result
        assert time.monotonic() < deadline, f"no data for {query} in {timeout} s"
        time.sleep(0.5)


def _engine_pid(g: Guard) -> int | None:
    try:
        status = httpx.get(g.url + "/chromaguard/status", headers={"authorization": "Bearer prom-admin"}, timeout=10)
        return status.json()["engine"].get("pid")
    except (httpx.HTTPError, ValueError, KeyError):
        return None


def _traffic(g: Guard) -> None:
    """Requests of each kind a panel counts: data requests, readiness, an auth refusal."""
    admin = {"authorization": "Bearer prom-admin"}
    for _ in range(20):
        httpx.get(g.url + "/api/v2/heartbeat")
        httpx.get(g.url + "/readyz")
        httpx.get(g.url + "/api/v2/tenants/default_tenant/databases/default_database/collections", headers=admin)
    assert httpx.get(g.url + "/api/v2/tenants/default_tenant/databases/default_database/collections",
                     headers={"authorization": "Bearer wrong"}).status_code == 403


DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "chromaguard.json"


def test_every_dashboard_panel_returns_data_from_a_running_chromaguard(watched: tuple[Guard, Prometheus]) -> None:
    """No panel names a metric that does not exist: each query, run by the real Prometheus
    scraping a real chromaguard, returns series."""
    g, prometheus = watched
    dashboard = json.loads(DASHBOARD.read_text())
    targets = [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(dashboard["panels"]) >= 10 and len({t for t, _ in targets}) == len(dashboard["panels"])
    deadline = time.monotonic() + 60
    empty = targets
    while empty:
        _traffic(g)
        time.sleep(1)
        empty = [(title, expr) for title, expr in targets
                 if not prometheus.api("query", query=expr.replace("${datasource}", ""))["result"]]
        assert time.monotonic() < deadline, f"panels without data: {empty}"
