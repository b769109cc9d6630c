"""The deploy/ files: no Docker engine runs here, so they are checked by parsing, against the code."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from ruamel.yaml import YAML

from chromaguard.config.settings import load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _compose() -> dict:
    return YAML(typ="safe").load((DEPLOY / "docker-compose.yml").read_text())


def _env(service: dict) -> dict[str, str]:
    return dict(item.split("=", 1) for item in service["environment"])


def test_compose_mirrors_the_seed_names_and_ports() -> None:
    compose = _compose()
    chroma = compose["services"]["chromadb"]
    assert chroma["container_name"] == "relink-chromadb"
    assert chroma["ports"] == ["8006:8000"]
    assert "chromadb_data" in compose["volumes"]
    assert _env(chroma)["CHROMA_SERVER_OTEL_SERVICE_NAME"] == "relink-chromadb"


def test_compose_lets_the_drain_finish_and_keeps_unauthenticated_uis_on_this_host() -> None:
    services = _compose()["services"]
    grace = services["chromadb"]["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1]) > load_settings(env={}).drain_timeout, \
        "docker's default 10 s would SIGKILL a 30 s drain"
    for name in ("ollama", "jaeger", "prometheus", "grafana"):  # no auth of their own
        assert all(str(port).startswith("127.0.0.1:") for port in services[name]["ports"]), name


def test_compose_environment_is_valid_chromaguard_configuration(tmp_path: Path) -> None:
    env = _env(_compose()["services"]["chromadb"])
    tokens = tmp_path / "tokens.json"
    tokens.write_text((DEPLOY / "chroma_tokens.example.json").read_text())
    env["CHROMA_SERVER_AUTH_CREDENTIALS_FILE"] = str(tokens)  # the secret's path inside the container
    settings = load_settings(env=env)
    assert settings.port == 8000 and settings.host == "0.0.0.0"
    assert settings.auth_provider == "token" and settings.otel_enabled
    assert settings.otel_endpoint == "http://otel-collector:4317", "not localhost: that is the container itself"
    assert settings.cors_allow_origins == ("http://localhost:3000",)
    assert settings.ollama_url == "http://ollama:11434"


def test_data_volume_is_mounted_where_the_engine_writes() -> None:
    chroma = _compose()["services"]["chromadb"]
    env = {k: v for k, v in _env(chroma).items() if "AUTH" not in k}
    data_dir = str(load_settings(env=env).data_dir)
    mounts = {v.split(":")[0]: v.split(":")[1] for v in chroma["volumes"]}
    assert mounts["chromadb_data"] == data_dir == "/data"
    assert 'PERSIST_DIRECTORY=/data' in (DEPLOY / "Dockerfile").read_text()


def test_health_checks_use_binaries_the_images_have() -> None:
    services = _compose()["services"]
    test = services["chromadb"]["healthcheck"]["test"]
    assert test[:4] == ["CMD", "python", "-m", "chromaguard.probe"]
    assert services["chromadb"]["healthcheck"]["start_period"] == "60s"
    assert services["ollama"]["healthcheck"]["test"] == ["CMD", "ollama", "list"]
    for service in services.values():
        if "healthcheck" in service:
            assert "curl" not in service["healthcheck"]["test"] and "wget" not in service["healthcheck"]["test"]


def test_dockerfile_healthcheck_and_signals() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    healthcheck = next(x for x in text.replace("\\\n", " ").splitlines() if x.startswith("HEALTHCHECK"))
    assert "--start-period=60s" in healthcheck and '"chromaguard.probe"' in healthcheck
    cmd = next(x for x in text.splitlines() if x.startswith("CMD"))
    assert json.loads(cmd[4:]) == ["chromaguard", "serve"], "exec form, so chromaguard gets SIGTERM itself"
    assert "VOLUME" in text and "/data" in text


def test_collector_and_jaeger_are_wired() -> None:
    compose = _compose()
    assert {"otel-collector", "jaeger", "ollama", "chromadb"} <= set(compose["services"])
    collector = YAML(typ="safe").load((DEPLOY / "otel-collector.yaml").read_text())
    assert collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")
    assert collector["exporters"]["otlp/jaeger"]["endpoint"] == "jaeger:4317"
    assert collector["service"]["pipelines"]["traces"]["exporters"] == ["otlp/jaeger"]
    mount = compose["services"]["otel-collector"]["volumes"][0]
    assert mount.split(":")[0] == "./otel-collector.yaml"
    assert shlex.split(compose["services"]["otel-collector"]["command"][0])[0].startswith("--config=")


def test_the_monitoring_profile_loads_the_rules_and_the_dashboard_it_names() -> None:
    """Prometheus and Grafana in the `monitoring` profile mount files that exist, where their
    configurations look for them; the scrape uses a token the example credentials give a role."""
    services = _compose()["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert prometheus["profiles"] == ["monitoring"] == grafana["profiles"]
    mounts = {m.split(":")[1]: DEPLOY / m.split(":")[0] for m in prometheus["volumes"] + grafana["volumes"]}
    assert all(path.exists() for path in mounts.values()), mounts
    config = YAML(typ="safe").load(mounts["/etc/prometheus/prometheus.yml"].read_text())
    rules = [Path("/etc/prometheus") / f for f in config["rule_files"]]
    assert all(str(r) in mounts for r in rules), (rules, mounts)
    assert config["scrape_configs"][0]["job_name"] == "chromaguard"  # what the rules select
    token_file = config["scrape_configs"][0]["authorization"]["credentials_file"]
    assert token_file == "/run/secrets/" + prometheus["secrets"][0]["target"]
    provider = YAML(typ="safe").load((DEPLOY / "grafana/provisioning/dashboards/chromaguard.yml").read_text())
    assert mounts["/var/lib/grafana/dashboards/chromaguard.json"].name == "chromaguard.json"
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    roles = {t["name"]: t["role"] for t in json.loads((DEPLOY / "chroma_tokens.example.json").read_text())}
    assert roles["prometheus"] == "metrics", "Prometheus scrapes with a token that reads no data"
