"""Configuration: the seed's names, Chroma's names, precedence, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest
from support.procs import cli

from chromaguard.config.settings import load_settings
from chromaguard.errors import ConfigError

SEED_MAIN = {
    "CHROMA_SERVER_HOST": "0.0.0.0",
    "CHROMA_SERVER_HTTP_PORT": "8000",
    "CHROMA_SERVER_CORS_ALLOW_ORIGINS": '["*"]',
    "ANONYMIZED_TELEMETRY": "False",
    "CHROMA_SERVER_OTEL_ENABLED": "True",
    "CHROMA_SERVER_OTEL_ENDPOINT": "http://localhost:4317",
    "CHROMA_SERVER_OTEL_SERVICE_NAME": "relink-chromadb",
    "CHROMA_SERVER_AUTH_PROVIDER": "none",
    "CHROMA_SERVER_AUTH_CREDENTIALS_PROVIDER": "none",
    "CHROMA_SERVER_AUTH_CREDENTIALS_FILE": "none",
}


def test_defaults() -> None:
    s = load_settings(env={})
    assert (s.host, s.port, s.data_dir, s.persistent, s.allow_reset) == ("127.0.0.1", 8000, Path("chroma-data"),
                                                                          True, False)
    assert s.auth_provider == "none" and s.cors_allow_origins == () and not s.otel_enabled
    assert s.source_of("port") == "default" and s.warnings == []


def test_seed_main_block_means_what_the_seed_expects() -> None:
    s = load_settings(env=SEED_MAIN)
    assert s.host == "0.0.0.0" and s.port == 8000
    assert s.cors_allow_origins == ("*",)
    assert s.otel_enabled and s.otel_endpoint == "http://localhost:4317" and s.otel_service_name == "relink-chromadb"
    assert s.auth_provider == "none" and s.auth_credentials_file is None
    assert s.anonymized_telemetry is False
    assert s.source_of("host") == "env CHROMA_SERVER_HOST"
    warned = " ".join(s.notes)
    for name in ("CHROMA_SERVER_HOST", "CHROMA_SERVER_HTTP_PORT", "CHROMA_SERVER_OTEL_ENDPOINT",
                 "ANONYMIZED_TELEMETRY"):
        assert name in warned


def test_seed_llm_tuning_auth_block(tmp_path: Path) -> None:
    tokens = tmp_path / "chroma_auth.json"
    tokens.write_text('["t-123"]')
    s = load_settings(env={
        "CHROMA_SERVER_AUTH_CREDENTIALS_FILE": str(tokens),
        "CHROMA_SERVER_AUTH_CREDENTIALS_PROVIDER": "chromadb.auth.token.TokenAuthServer",
        "CHROMA_SERVER_AUTH_PROVIDER": "token",
        "CHROMA_SERVER_OTEL_ENDPOINT": "http://jaeger:4317",
    })
    assert s.auth_provider == "token" and s.auth_credentials_file == tokens
    assert any("never existed" in w for w in s.warnings)
    assert s.otel_enabled and s.otel_endpoint == "http://jaeger:4317"


@pytest.mark.parametrize("provider, expected", [
    ("token", "token"), ("basic", "basic"), ("", "none"),
    ("chromadb.auth.token.TokenAuthServerProvider", "token"),
    ("chromadb.auth.token_authn.TokenAuthenticationServerProvider", "token"),
    ("chromadb.auth.basic_authn.BasicAuthenticationServerProvider", "basic"),
])
def test_auth_provider_aliases(tmp_path: Path, provider: str, expected: str) -> None:
    creds = tmp_path / "creds"
    creds.write_text("x")
    s = load_settings(env={"CHROMA_SERVER_AUTHN_PROVIDER": provider,
                           "CHROMA_SERVER_AUTHN_CREDENTIALS_FILE": str(creds)})
    assert s.auth_provider == expected


def test_chroma_own_names() -> None:
    s = load_settings(env={"CHROMA_LISTEN_ADDRESS": "0.0.0.0", "CHROMA_PORT": "9100",
                           "CHROMA_CORS_ALLOW_ORIGINS": "https://a.example, https://b.example:8443",
                           "PERSIST_DIRECTORY": "/srv/chroma", "IS_PERSISTENT": "FALSE", "CHROMA_ALLOW_RESET": "true"})
    assert (s.host, s.port, s.data_dir, s.persistent, s.allow_reset) == ("0.0.0.0", 9100, Path("/srv/chroma"),
                                                                          False, True)
    assert s.cors_allow_origins == ("https://a.example", "https://b.example:8443")
    assert load_settings(env={"ALLOW_RESET": "1"}).allow_reset


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("port: 7001\nhost: 0.0.0.0\nallow_reset: true\nopen_telemetry:\n  service_name: from-file\n")
    s = load_settings(flags={"port": "7003", "host": None}, env={"CHROMA_SERVER_HTTP_PORT": "7002",
                                                                 "CHROMA_SERVER_HOST": "127.0.0.2"},
                      config_file=config)
    assert s.port == 7003 and s.source_of("port") == "flag --port"
    assert s.host == "127.0.0.2" and s.source_of("host") == "env CHROMA_SERVER_HOST"
    assert s.allow_reset and s.source_of("allow_reset").startswith("config file")
    assert s.otel_service_name == "from-file"
    assert s.data_dir == Path("chroma-data") and s.source_of("data_dir") == "default"


def test_config_file_from_env(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("listen_address: 0.0.0.0\npersist_path: /data\n")
    s = load_settings(env={"CHROMAGUARD_CONFIG": str(config)})
    assert s.host == "0.0.0.0" and s.data_dir == Path("/data")


def test_two_names_for_one_setting_warns() -> None:
    s = load_settings(env={"CHROMA_SERVER_HTTP_PORT": "8001", "CHROMA_PORT": "8002"})
    assert s.port == 8001
    assert any("CHROMA_PORT" in w and "wins" in w for w in s.warnings)


@pytest.mark.parametrize("env, setting, fragment", [
    ({"CHROMA_SERVER_HTTP_PORT": "99999"}, "CHROMA_SERVER_HTTP_PORT", "out of range"),
    ({"CHROMA_PORT": "eighty"}, "CHROMA_PORT", "not a port"),
    ({"CHROMA_SERVER_HOST": "not a host!"}, "CHROMA_SERVER_HOST", "not an IP address"),
    ({"CHROMA_SERVER_CORS_ALLOW_ORIGINS": '["*"'}, "CHROMA_SERVER_CORS_ALLOW_ORIGINS", "malformed JSON"),
    ({"CHROMA_SERVER_CORS_ALLOW_ORIGINS": "https://a.example/path"}, "CHROMA_SERVER_CORS_ALLOW_ORIGINS", "path"),
    ({"CHROMA_SERVER_AUTH_PROVIDER": "tokens"}, "CHROMA_SERVER_AUTH_PROVIDER", "unknown auth provider"),
    ({"CHROMA_SERVER_AUTH_CREDENTIALS_PROVIDER": "my.Provider"}, "CHROMA_SERVER_AUTH_CREDENTIALS_PROVIDER",
     "unknown credentials provider"),
    ({"CHROMA_SERVER_OTEL_ENDPOINT": "ftp://collector"}, "CHROMA_SERVER_OTEL_ENDPOINT", "not a URL"),
    ({"CHROMA_SERVER_OTEL_ENABLED": "maybe"}, "CHROMA_SERVER_OTEL_ENABLED", "not a boolean"),
    ({"CHROMA_SERVER_AUTH_PROVIDER": "token", "CHROMA_SERVER_AUTH_CREDENTIALS_FILE": "/nonexistent/tokens.json"},
     "CHROMA_SERVER_AUTH_CREDENTIALS_FILE", "does not exist"),
    ({"CHROMA_SERVER_AUTH_PROVIDER": "token"}, "CHROMA_SERVER_AUTH_PROVIDER", "needs credentials"),
    ({"CHROMAGUARD_UPSTREAM": "chroma:8000"}, "CHROMAGUARD_UPSTREAM", "not a URL"),
    ({"CHROMAGUARD_DRAIN_TIMEOUT": "soon"}, "CHROMAGUARD_DRAIN_TIMEOUT", "not a duration"),
    ({"CHROMAGUARD_LOG_FORMAT": "xml"}, "CHROMAGUARD_LOG_FORMAT", "one of text, json"),
    ({"CHROMAGUARD_OTEL_ENGINE_SPANS": "some"}, "CHROMAGUARD_OTEL_ENGINE_SPANS", "must be requests, all or off"),
])
def test_each_bad_value_names_setting_value_and_example(env: dict[str, str], setting: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env=env)
    message = str(caught.value)
    assert message.startswith(f"{setting}=") and fragment in message
    assert "for example" in message and "\n" not in message


def test_bad_config_file_errors(tmp_path: Path) -> None:
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("prot: 8000\n")
    with pytest.raises(ConfigError, match="prot.*unknown setting"):
        load_settings(env={}, config_file=unknown)
    broken = tmp_path / "broken.yaml"
    broken.write_text("port: [8000\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_settings(env={}, config_file=broken)
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_settings(env={}, config_file=tmp_path / "missing.yaml")
    bad_value = tmp_path / "bad.yaml"
    bad_value.write_text("port: 0\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: port='0'.*out of range"):
        load_settings(env={}, config_file=bad_value)


def test_secrets_are_redacted() -> None:
    s = load_settings(env={"CHROMAGUARD_UPSTREAM": "https://chroma.example", "CHROMAGUARD_UPSTREAM_TOKEN": "sekret"})
    assert s.redacted()["upstream_token"] == "***"
    assert "sekret" not in json.dumps(s.redacted())


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return cli(*args, timeout=60, **env)


def test_config_command_json_shows_sources_and_warnings() -> None:
    result = _cli("config", "--json", "--port", "9001", CHROMA_SERVER_HOST="0.0.0.0",
                  CHROMAGUARD_UPSTREAM="https://chroma.example", CHROMAGUARD_UPSTREAM_TOKEN="sekret")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["settings"]["port"] == {"value": 9001, "source": "flag --port"}
    assert data["settings"]["host"] == {"value": "0.0.0.0", "source": "env CHROMA_SERVER_HOST"}
    assert data["settings"]["upstream_token"]["value"] == "***" and "sekret" not in result.stdout
    assert any("CHROMA_SERVER_HOST" in w and "CHROMA_LISTEN_ADDRESS" in w for w in data["notes"])


def test_config_command_table() -> None:
    result = _cli("config", **SEED_MAIN)
    assert result.returncode == 0, result.stderr
    assert "relink-chromadb" in result.stdout and "env CHROMA_SERVER_OTEL_SERVICE_NAME" in result.stdout
    assert "note: CHROMA_SERVER_OTEL_ENABLED: never existed" in result.stdout


def _assert_one_line_exit_2(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_serve_rejects_bad_value_before_starting(tmp_path: Path) -> None:
    result = _cli("serve", "--data-dir", str(tmp_path / "d"), CHROMA_SERVER_HTTP_PORT="70000")
    _assert_one_line_exit_2(result, "CHROMA_SERVER_HTTP_PORT='70000'", "for example CHROMA_SERVER_HTTP_PORT=8000")
    assert not (tmp_path / "d").exists(), "nothing may be created before validation passes"
    result = _cli("serve", "--data-dir", str(tmp_path / "d"), CHROMA_SERVER_CORS_ALLOW_ORIGINS='["*",]')
    _assert_one_line_exit_2(result, "CHROMA_SERVER_CORS_ALLOW_ORIGINS", "malformed JSON")


def test_serve_port_taken(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _cli("serve", "--data-dir", str(tmp_path / "d"), CHROMA_SERVER_HTTP_PORT=str(port))
    _assert_one_line_exit_2(result, f"CHROMA_SERVER_HTTP_PORT='{port}'", "already in use")


def test_serve_data_dir_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = _cli("serve", PERSIST_DIRECTORY=str(blocker / "data"))
    _assert_one_line_exit_2(result, "PERSIST_DIRECTORY=", "not writable")


def test_serve_unreadable_credentials_file(tmp_path: Path) -> None:
    result = _cli("serve", "--data-dir", str(tmp_path / "d"), CHROMA_SERVER_AUTH_PROVIDER="token",
                  CHROMA_SERVER_AUTH_CREDENTIALS_FILE=str(tmp_path / "missing.json"))
    _assert_one_line_exit_2(result, "CHROMA_SERVER_AUTH_CREDENTIALS_FILE=", "does not exist")


@pytest.mark.parametrize("raw, mode", [("requests", "requests"), ("ALL", "all"), ("off", "off"),
                                       ("true", "requests"), ("false", "off")])
def test_engine_spans_modes(raw: str, mode: str) -> None:
    assert load_settings(env={"CHROMAGUARD_OTEL_ENGINE_SPANS": raw}).otel_engine_spans == mode
