"""The one typed configuration object, built once: flags > env > config file > defaults.

Every option knows all the names users write for it (the seed's names, Chroma's
own, chromaguard's), where its value came from, and a valid example for errors.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..backup.location import check_url
from ..backup.schedule import parse_schedule
from ..errors import ConfigError
from . import legacy, parsing

if TYPE_CHECKING:
    from ..http11.tls import TlsFiles


@dataclass(frozen=True)
class Option:
    name: str
    parse: Callable[[Any], Any]
    default: Any
    env: tuple[str, ...] = ()
    flag: str | None = None  # as cli.py declares it: "--persistent/--ephemeral" for a switch
    keys: tuple[str, ...] = ()  # config-file keys; dotted for nested ones
    example: str = ""
    secret: bool = False
    help: str = ""  # markdown: the meaning column of docs/configuration.md
    shown_default: str = ""  # markdown: the default as docs/configuration.md shows it


def _opt(name: str, parse: Callable[[Any], Any], default: Any, example: str, help: str, *, shown_default: str,
         env: tuple[str, ...] = (), flag: str | None = None, keys: tuple[str, ...] | None = None,
         secret: bool = False) -> Option:
    return Option(name, parse, default, env, flag, (name,) if keys is None else keys, example, secret, help,
                  shown_default)


def parse_repository(raw: Any) -> str | None:
    text = str(raw).strip()
    if text.lower() in ("", "none", "off"):
        return None
    check_url(text)
    return text


def parse_audit_target(raw: Any) -> str | None:
    from ..telemetry.audit import parse_target

    return parse_target(raw)


def parse_schedule_text(raw: Any) -> str | None:
    schedule = parse_schedule(raw)
    return None if schedule is None else schedule.text


# docs/configuration.md is generated from this table (chromaguard/config/docs.py).
OPTIONS: tuple[Option, ...] = (
    _opt("host", parsing.parse_host, "127.0.0.1", "0.0.0.0", "address the front door listens on",
         shown_default="`127.0.0.1`",
         env=("CHROMA_SERVER_HOST", "CHROMA_LISTEN_ADDRESS"), flag="--host", keys=("host", "listen_address")),
    _opt("port", parsing.parse_port, 8000, "8000", "port the front door listens on", shown_default="`8000`",
         env=("CHROMA_SERVER_HTTP_PORT", "CHROMA_PORT"), flag="--port", keys=("port",)),
    _opt("data_dir", parsing.parse_path, Path("chroma-data"), "./chroma-data",
         "where the engine keeps its data (chroma.sqlite3 and index segments)", shown_default="`./chroma-data`",
         env=("CHROMAGUARD_DATA_DIR", "PERSIST_DIRECTORY", "CHROMA_PERSIST_PATH"), flag="--data-dir",
         keys=("data_dir", "persist_path", "persist_directory")),
    _opt("persistent", parsing.parse_bool, True, "true",
         "`false` keeps data in a temporary directory that is deleted at shutdown", shown_default="`true`",
         env=("IS_PERSISTENT",), flag="--persistent/--ephemeral", keys=("persistent", "is_persistent")),
    _opt("allow_reset", parsing.parse_bool, False, "false", "allow the destructive reset API",
         shown_default="`false`", env=("ALLOW_RESET", "CHROMA_ALLOW_RESET"), flag="--allow-reset/--no-allow-reset"),
    _opt("cors_allow_origins", parsing.parse_origin_list, (), '["https://app.example.com"]',
         'origins allowed to call the API from a browser: a JSON list (`["https://app.example.com"]`) or a '
         "comma list", shown_default="none",
         env=("CHROMA_SERVER_CORS_ALLOW_ORIGINS", "CHROMA_CORS_ALLOW_ORIGINS"), flag="--cors-allow-origins"),
    _opt("anonymized_telemetry", parsing.parse_bool, False, "false",
         "accepted for compatibility; chromaguard never sends product telemetry", shown_default="`false`",
         env=("ANONYMIZED_TELEMETRY",)),
    _opt("max_payload_bytes", parsing.parse_positive_int, 41943040, "41943040",
         "largest request body accepted (also the engine's limit)", shown_default="`41943040`",
         env=("CHROMA_MAX_PAYLOAD_SIZE_BYTES",), keys=("max_payload_bytes", "max_payload_size_bytes")),
    _opt("otel_enabled", parsing.parse_bool, False, "true", "send OpenTelemetry traces and metrics",
         shown_default="`false` (on when an endpoint is set)", env=("CHROMA_SERVER_OTEL_ENABLED",)),
    _opt("otel_endpoint", parsing.parse_otlp_endpoint, None, "http://otel-collector:4317",
         "OTLP collector endpoint (4317 gRPC, 4318 HTTP)", shown_default="`http://localhost:4317` when enabled",
         env=("CHROMA_SERVER_OTEL_ENDPOINT", "CHROMA_OTEL_COLLECTION_ENDPOINT",
              "CHROMA_OPEN_TELEMETRY__ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
         keys=("otel_endpoint", "open_telemetry.endpoint")),
    _opt("otel_service_name", parsing.parse_text, "chromaguard", "relink-chromadb",
         "service name on traces and metrics", shown_default="`chromaguard`",
         env=("CHROMA_SERVER_OTEL_SERVICE_NAME", "CHROMA_OTEL_SERVICE_NAME",
              "CHROMA_OPEN_TELEMETRY__SERVICE_NAME", "OTEL_SERVICE_NAME"),
         keys=("otel_service_name", "open_telemetry.service_name")),
    _opt("otel_engine_spans", parsing.parse_engine_spans, "requests", "requests",
         "the engine's own spans to the same collector: `requests` (one span per request), `all` "
         "(its internal spans and per-request log lines too), `off`", shown_default="`requests`",
         env=("CHROMAGUARD_OTEL_ENGINE_SPANS",)),
    _opt("otel_protocol", parsing.choice("grpc", "http/protobuf", "auto"), "auto", "grpc",
         "OTLP transport: `grpc`, `http/protobuf`, or `auto` (4318 or a `/v1/` path means HTTP)",
         shown_default="`auto`", env=("OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")),
    _opt("otel_headers", parsing.parse_headers, (), "x-api-key=secret",
         "headers sent to the collector: a JSON object or `k=v,k=v`", shown_default="none",
         env=("CHROMA_OTEL_COLLECTION_HEADERS",), secret=True),
    _opt("auth_provider", legacy.auth_provider, "none", "token",
         "client auth: `none`, `token` or `basic`; Chroma 0.4/0.5 class names are accepted as aliases",
         shown_default="`none`",
         env=("CHROMA_SERVER_AUTH_PROVIDER", "CHROMA_SERVER_AUTHN_PROVIDER"), flag="--auth-provider"),
    _opt("auth_credentials_provider", parsing.parse_text, "",
         "chromadb.auth.token.TokenConfigServerAuthCredentialsProvider",
         "Chroma 0.4 credentials provider class, mapped to an auth mode (`chromaguard config` says which)",
         shown_default="none", env=("CHROMA_SERVER_AUTH_CREDENTIALS_PROVIDER",)),
    _opt("auth_credentials_file", parsing.parse_optional_path, None, "/etc/chromaguard/tokens.json",
         "tokens file (`.json`, `.yaml`, `.txt`: read in the format its name says) or htpasswd file for basic auth",
         shown_default="none (`none` means none)",
         env=("CHROMA_SERVER_AUTH_CREDENTIALS_FILE", "CHROMA_SERVER_AUTHN_CREDENTIALS_FILE"),
         flag="--auth-credentials-file"),
    _opt("auth_credentials", parsing.parse_text, "", "my-secret-token",
         "inline credentials (a token, or `user:password`)", shown_default="none",
         env=("CHROMA_SERVER_AUTH_CREDENTIALS", "CHROMA_SERVER_AUTHN_CREDENTIALS"), secret=True),
    _opt("authz_provider", parsing.parse_text, "", "chromadb.auth.simple_rbac_authz.SimpleRBACAuthorizationProvider",
         "Chroma 0.5/0.6 authorization: `chromadb.auth.simple_rbac_authz.SimpleRBACAuthorizationProvider` reads "
         "the RBAC file below and allows each user exactly its role's actions, as 0.6 did", shown_default="none",
         env=("CHROMA_SERVER_AUTHZ_PROVIDER",)),
    _opt("authz_config_file", parsing.parse_optional_path, None, "/etc/chroma/authz.yaml",
         "the RBAC file of Chroma 0.5/0.6 (`roles_mapping` and `users`), read at start, on SIGHUP and whenever "
         "the credentials reload", shown_default="none", env=("CHROMA_SERVER_AUTHZ_CONFIG_FILE",)),
    _opt("auth_token_transport_header", parsing.choice("authorization", "x-chroma-token", "any"), "any",
         "Authorization",
         "which header carries the token: `authorization`, `x-chroma-token` or `any` (either)",
         shown_default="`any`",
         env=("CHROMA_AUTH_TOKEN_TRANSPORT_HEADER", "CHROMA_SERVER_AUTH_TOKEN_TRANSPORT_HEADER")),
    _opt("auth_open_paths", parsing.parse_path_list,
         ("/api/v1/heartbeat", "/api/v2/heartbeat", "/healthz", "/readyz"), "/api/v2/heartbeat,/healthz",
         "paths that need no credentials (GET/HEAD only)",
         shown_default="`/api/v1/heartbeat,/api/v2/heartbeat,/healthz,/readyz`",
         env=("CHROMAGUARD_AUTH_OPEN_PATHS",)),
    _opt("auth_reload_interval", parsing.parse_duration, 1.0, "1s",
         "how often the credentials file is checked for changes", shown_default="`1s`",
         env=("CHROMAGUARD_AUTH_RELOAD_INTERVAL",)),
    _opt("rate_limit", parsing.parse_rate, 0.0, "20/s",
         "requests per token: `20/s`, `600/m` (a bare number is per second)", shown_default="`0` (off)",
         env=("CHROMAGUARD_RATE_LIMIT",)),
    _opt("allowed_embedding_functions", parsing.parse_name_list, (), "openai,ollama,default",
         "embedding-function names a collection configuration may name (comma list); remote model code "
         "(`trust_remote_code`) is refused whatever this says", shown_default="none (any name)",
         env=("CHROMAGUARD_ALLOWED_EMBEDDING_FUNCTIONS",)),
    _opt("health_interval", parsing.parse_duration, 2.0, "2s",
         "how often the supervisor probes the engine (its heartbeat, then a read through its storage)",
         shown_default="`2s`", env=("CHROMAGUARD_HEALTH_INTERVAL",)),
    _opt("health_timeout", parsing.parse_duration, 10.0, "10s", "how long one engine probe may take",
         shown_default="`10s`", env=("CHROMAGUARD_HEALTH_TIMEOUT",)),
    _opt("health_retries", parsing.parse_positive_int, 3, "3",
         "failed probes in a row before the engine is restarted", shown_default="`3`",
         env=("CHROMAGUARD_HEALTH_RETRIES",)),
    _opt("health_start_period", parsing.parse_duration, 60.0, "60s",
         "after a (re)start, failed probes do not count for this long", shown_default="`60s`",
         env=("CHROMAGUARD_HEALTH_START_PERIOD",)),
    _opt("health_heartbeat_timeout", parsing.parse_duration, 2.0, "2s",
         "how long the heartbeat part of a probe may take (on loopback it answers in about a millisecond: "
         "slower means stopped or stuck); at most the probe timeout", shown_default="`2s`",
         env=("CHROMAGUARD_HEALTH_HEARTBEAT_TIMEOUT",)),
    _opt("ollama_url", parsing.parse_ollama_url, None, "http://ollama:11434",
         "Ollama to check in `/readyz` and `status` (`host:port` or a URL)", shown_default="none",
         env=("CHROMAGUARD_OLLAMA_URL", "OLLAMA_HOST")),
    _opt("ollama_models", parsing.parse_name_list, (), "nomic-embed-text,llama3",
         "Ollama models that must be pulled for `/readyz` (comma list)", shown_default="none",
         env=("CHROMAGUARD_OLLAMA_MODELS",)),
    _opt("min_free_disk", parsing.parse_size, 512 * 1024 * 1024, "512MiB",
         "free space under the data dir below which `/readyz` fails (`0` = no threshold; a full disk fails it "
         "anyway)", shown_default="`512MiB`", env=("CHROMAGUARD_MIN_FREE_DISK",)),
    _opt("audit_log", parse_audit_target, None, "/var/log/chromaguard/audit.jsonl",
         "one JSON line per state-changing or admin request and per refused one (401, 403, 429): time, "
         "principal (never a secret), client address, method, path, operation, tenant, database, collection, "
         "status, outcome, trace id. `stdout` or a file (reopened on SIGHUP). A line that cannot be written is "
         "counted (`chromaguard_audit_lines_dropped_total`) and logged; the request goes on",
         shown_default="off", env=("CHROMAGUARD_AUDIT_LOG",)),
    _opt("ssl_certfile", parsing.parse_optional_path, None, "/etc/chromaguard/tls/tls.crt",
         "serve HTTPS with this PEM certificate (chain), on the same port; TLS 1.2 and 1.3 with forward-secret "
         "AEAD ciphers only. Re-read within 5 s when the file changes, open connections kept",
         shown_default="none (plain HTTP)", env=("CHROMAGUARD_SSL_CERTFILE",), flag="--ssl-certfile"),
    _opt("ssl_keyfile", parsing.parse_optional_path, None, "/etc/chromaguard/tls/tls.key",
         "the certificate's private key (PEM)", shown_default="none (in the certificate file)",
         env=("CHROMAGUARD_SSL_KEYFILE",), flag="--ssl-keyfile"),
    _opt("ssl_ca_certs", parsing.parse_optional_path, None, "/etc/chromaguard/tls/clients-ca.crt",
         "CA bundle that client certificates are checked against (needs `ssl_client_cert`)",
         shown_default="none", env=("CHROMAGUARD_SSL_CA_CERTS",), flag="--ssl-ca-certs"),
    _opt("ssl_client_cert", parsing.choice("none", "optional", "required"), "none", "required",
         "client certificates: `required` (a handshake without one signed by `ssl_ca_certs` fails), `optional` "
         "(one that is sent must verify) or `none`", shown_default="`none`",
         env=("CHROMAGUARD_SSL_CLIENT_CERT",)),
    _opt("upstream", parsing.parse_http_url, None, "https://api.trychroma.com",
         "front an existing Chroma server instead of starting the embedded engine", shown_default="none",
         env=("CHROMAGUARD_UPSTREAM",), flag="--upstream"),
    _opt("upstream_token", parsing.parse_text, "", "ck-...", "token sent to the upstream server",
         shown_default="none", env=("CHROMAGUARD_UPSTREAM_TOKEN",), flag="--upstream-token", secret=True),
    _opt("upstream_token_header", parsing.choice("x-chroma-token", "authorization"), "x-chroma-token",
         "x-chroma-token", "header that carries the upstream token: `x-chroma-token` or `authorization`",
         shown_default="`x-chroma-token`", env=("CHROMAGUARD_UPSTREAM_TOKEN_HEADER",)),
    _opt("upstream_timeout", parsing.parse_duration, 300.0, "300s",
         "longest a data request may wait for the engine", shown_default="`300s`",
         env=("CHROMAGUARD_UPSTREAM_TIMEOUT",)),
    _opt("engine_port", parsing.parse_engine_port, 0, "0", "private loopback port of the engine",
         shown_default="`0` (a free port)", env=("CHROMAGUARD_ENGINE_PORT",)),
    _opt("head_timeout", parsing.parse_duration, 10.0, "10s",
         "how long a request head may take to arrive, from its first byte (a connection's first request: from "
         "the accept); bytes arriving do not extend it. Later: 408 and the connection closes (one that sent "
         "nothing just closes). Idle keep-alive connections are timed separately (75 s). `0` = no limit",
         shown_default="`10s`", env=("CHROMAGUARD_HEAD_TIMEOUT",)),
    _opt("body_min_rate", parsing.parse_size, 500, "500",
         "bytes per second a request body must average (Apache's mod_reqtimeout rule): after a grace of the "
         "head timeout (10 s if that is off), each `body_min_rate` bytes that arrive buy one more second; time "
         "while chromaguard holds the body back does not count. Slower: 408 if nothing has begun with the "
         "request, else the connection closes. `0` = no limit", shown_default="`500`",
         env=("CHROMAGUARD_BODY_MIN_RATE",)),
    _opt("max_connections_per_client", parsing.parse_nonnegative_int, 256, "256",
         "open connections one client address may have (IPv6: one /64); one more is answered 503 and closed, "
         "with a rate-limited warning. Raise it (or `0` = no limit) behind a load balancer, where every "
         "connection comes from its address. Apart from this, new connections are answered 503 once client "
         "connections near the descriptor limit (`ulimit -n` less a tenth, at least 64, kept for the engine "
         "and files), with one warning, until some close", shown_default="`256`",
         env=("CHROMAGUARD_MAX_CONNECTIONS_PER_CLIENT",)),
    _opt("drain_timeout", parsing.parse_duration, 30.0, "30s",
         "on SIGTERM, how long in-flight requests may take to finish", shown_default="`30s`",
         env=("CHROMAGUARD_DRAIN_TIMEOUT",), flag="--drain-timeout"),
    _opt("control_token", parsing.parse_text, "", "a-long-random-secret",
         "with auth off: a secret that lets callers on other hosts use `/chromaguard/status` and the backup "
         "endpoints (`chromaguard backup --token`, sent as `Authorization: Bearer`); callers on the server's "
         "own host need none. Ignored with auth on (an admin token is needed)", shown_default="none",
         env=("CHROMAGUARD_CONTROL_TOKEN",), secret=True),
    _opt("snapshot_dir", parsing.parse_optional_path, None, "/var/tmp/chromaguard",
         "where online backups stage their copy of the data until it is downloaded",
         shown_default="the system temp dir", env=("CHROMAGUARD_SNAPSHOT_DIR",)),
    _opt("snapshot_mirror", parsing.parse_bool, True, "true",
         "keep a copy of the data dir in the snapshot dir between snapshots, brought up to date before each "
         "hold, so that writes are held only while the files changed since are copied (not the whole data "
         "dir); costs the data dir's size in the snapshot dir", shown_default="`true`",
         env=("CHROMAGUARD_SNAPSHOT_MIRROR",)),
    _opt("snapshot_min_free", parsing.parse_size, 256 * 1024 * 1024, "256MiB",
         "free space that must remain in the snapshot dir once a snapshot is copied; one that would leave "
         "less is refused with 507 (`0` = only that it fits)", shown_default="`256MiB`",
         env=("CHROMAGUARD_SNAPSHOT_MIN_FREE",)),
    _opt("snapshot_max_kept", parsing.parse_positive_int, 2, "2",
         "snapshots kept for download at once; a new one drops the oldest nobody is downloading (503 when "
         "all are)", shown_default="`2`", env=("CHROMAGUARD_SNAPSHOT_MAX_KEPT",)),
    _opt("backup_repository", parse_repository, None, "s3://my-bucket/chroma",
         "where scheduled backups go, and the default of `chromaguard backup --to`: a folder, "
         "`s3://bucket/prefix` (AWS or any S3-compatible store: credentials, region and `AWS_ENDPOINT_URL` from the "
         "standard AWS variables), `gs://bucket/prefix` or `az://container/prefix`", shown_default="none",
         env=("CHROMAGUARD_BACKUP_REPOSITORY",)),
    _opt("backup_schedule", parse_schedule_text, None, "0 3 * * *",
         "when `serve` backs up to the repository: a cron expression in UTC (`0 3 * * *`) or an interval "
         "(`6h`); a run missed while the service was down runs at start-up", shown_default="off",
         env=("CHROMAGUARD_BACKUP_SCHEDULE",)),
    *(_opt(f"backup_keep_{rule}", parsing.parse_nonnegative_int, 0, "7",
           f"after each scheduled backup, keep {meaning} (restic's `--keep-{rule}`); with no keep rule "
           "set nothing is pruned", shown_default="`0`", env=(f"CHROMAGUARD_BACKUP_KEEP_{rule.upper()}",))
      for rule, meaning in (("last", "the N newest backups"), ("hourly", "the newest of each of the last N hours"),
                            ("daily", "the newest of each of the last N days"),
                            ("weekly", "the newest of each of the last N weeks"),
                            ("monthly", "the newest of each of the last N months"))),
    _opt("backup_verify", parsing.choice("daily", "always", "off"), "daily", "daily",
         "after a scheduled backup, restore it into a scratch engine and compare with its manifest: after the "
         "first backup of each UTC day (`daily`), after every one (`always`) or never (`off`); every chunk is "
         "read back after upload whatever this says", shown_default="`daily`", env=("CHROMAGUARD_BACKUP_VERIFY",)),
    _opt("backup_max_age", parsing.parse_duration, 0.0, "26h",
         "`/readyz` fails once the newest successful backup is older than this (`0` = never)",
         shown_default="`0` (off)", env=("CHROMAGUARD_BACKUP_MAX_AGE",)),
    _opt("backup_password", parsing.parse_text, "", "a-long-passphrase",
         "encrypts a repository created with it (AES-256-GCM, key by scrypt) and opens an encrypted one; the "
         "same variable serves `chromaguard backup --to`, `restore`, `verify` and `backups`. Keep it apart from "
         "the backups: without it they cannot be read", shown_default="none (not encrypted)",
         env=("CHROMAGUARD_BACKUP_PASSWORD",), secret=True),
    _opt("backup_password_file", parsing.parse_optional_path, None, "/run/secrets/backup_password",
         "a file holding the backup password (wins over `CHROMAGUARD_BACKUP_PASSWORD`)", shown_default="none",
         env=("CHROMAGUARD_BACKUP_PASSWORD_FILE",)),
    _opt("upgrade_backup", parsing.parse_bool, True, "off",
         "when the installed chromadb is not the one that last served the data dir, back it up before the new "
         "engine opens it: to the backup repository when one is set, else to an archive beside the data dir "
         "(inside it, in `.chromaguard-upgrade-backups/`, when it is a mount point)", shown_default="`on`",
         env=("CHROMAGUARD_UPGRADE_BACKUP",)),
    _opt("log_format", parsing.choice("text", "json"), "text", "json", "log line format: `text` or `json`",
         shown_default="`text`", env=("CHROMAGUARD_LOG_FORMAT",), flag="--log-format"),
    _opt("log_level", parsing.choice("debug", "info", "warning", "error"), "info", "info",
         "log level: `debug`, `info`, `warning` or `error`", shown_default="`info`",
         env=("CHROMAGUARD_LOG_LEVEL",), flag="--log-level"),
)

OPTION_BY_NAME = {o.name: o for o in OPTIONS}
CONFIG_ENV = "CHROMAGUARD_CONFIG"


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("chroma-data")
    persistent: bool = True
    allow_reset: bool = False
    cors_allow_origins: tuple[str, ...] = ()
    anonymized_telemetry: bool = False
    max_payload_bytes: int = 41943040
    otel_enabled: bool = False
    otel_endpoint: str | None = None
    otel_service_name: str = "chromaguard"
    otel_protocol: str = "auto"
    otel_engine_spans: str = "requests"
    otel_headers: tuple[tuple[str, str], ...] = ()
    auth_provider: str = "none"
    auth_credentials_provider: str = ""
    auth_credentials_file: Path | None = None
    authz_provider: str = ""
    authz_config_file: Path | None = None
    auth_credentials: str = ""
    auth_token_transport_header: str = "any"
    auth_open_paths: tuple[str, ...] = ("/api/v1/heartbeat", "/api/v2/heartbeat", "/healthz", "/readyz")
    auth_reload_interval: float = 1.0
    rate_limit: float = 0.0
    allowed_embedding_functions: tuple[str, ...] = ()
    health_interval: float = 2.0
    health_timeout: float = 10.0
    health_retries: int = 3
    health_start_period: float = 60.0
    health_heartbeat_timeout: float = 2.0
    ollama_url: str | None = None
    ollama_models: tuple[str, ...] = ()
    min_free_disk: int = 512 * 1024 * 1024
    upstream: str | None = None
    upstream_token: str = ""
    upstream_token_header: str = "x-chroma-token"
    upstream_timeout: float = 300.0
    audit_log: str | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_ca_certs: Path | None = None
    ssl_client_cert: str = "none"
    engine_port: int = 0
    head_timeout: float = 10.0
    body_min_rate: int = 500
    max_connections_per_client: int = 256
    drain_timeout: float = 30.0
    control_token: str = ""
    snapshot_dir: Path | None = None
    snapshot_mirror: bool = True
    snapshot_min_free: int = 256 * 1024 * 1024
    snapshot_max_kept: int = 2
    backup_repository: str | None = None
    backup_schedule: str | None = None
    backup_keep_last: int = 0
    backup_keep_hourly: int = 0
    backup_keep_daily: int = 0
    backup_keep_weekly: int = 0
    backup_keep_monthly: int = 0
    backup_verify: str = "daily"
    backup_max_age: float = 0.0
    backup_password: str = ""
    backup_password_file: Path | None = None
    upgrade_backup: bool = True

    def tls_files(self) -> TlsFiles:
        from ..http11.tls import TlsFiles

        assert self.ssl_certfile is not None
        return TlsFiles(self.ssl_certfile, self.ssl_keyfile, self.ssl_ca_certs, self.ssl_client_cert)

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_certfile is not None else "http"

    def backup_password_value(self) -> str | None:
        """The backup repository's password, from the file when one is named."""
        from ..backup.crypto import PASSWORD_ENV, PASSWORD_FILE_ENV, password_from

        given = {PASSWORD_FILE_ENV: str(self.backup_password_file or "")}
        if self.source_of("backup_password") != "default":
            given[PASSWORD_ENV] = self.backup_password
        return password_from(given)
    log_format: str = "text"
    log_level: str = "info"
    config_file: Path | None = None
    sources: dict[str, str] = field(default_factory=dict)
    setting_names: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # legacy names honoured: worth knowing, not alarming

    def source_of(self, name: str) -> str:
        return self.sources.get(name, "default")

    def name_of(self, name: str) -> str:
        """The name the user set this option by, for messages about it."""
        return self.setting_names.get(name) or (OPTION_BY_NAME[name].env or (name,))[0]

    def redacted(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for option in OPTIONS:
            value = getattr(self, option.name)
            if option.secret and value:
                value = "***"
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[option.name] = value
        return out


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def read_config_file(path: Path, setting: str) -> dict[str, Any]:
    """Read the YAML config file into ``{dotted key: value}``."""
    from ruamel.yaml import YAML, YAMLError

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(setting, str(path), f"cannot read the config file ({exc.strerror})",
                          f"{setting}=./chromaguard.yaml") from None
    try:
        data = YAML(typ="safe").load(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(setting, str(path), f"not valid YAML{where}", "a file of 'key: value' lines") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(setting, str(path), "the config file must be a mapping of settings", "port: 8000")
    return _flatten(data)


def load_settings(flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None,
                  config_file: str | Path | None = None) -> Settings:
    """Build and validate the settings; raises ConfigError on the first bad value."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    env = os.environ if env is None else env
    settings = Settings()

    file_values: dict[str, Any] = {}
    file_setting = "--config" if config_file is not None else CONFIG_ENV
    if config_file is None and env.get(CONFIG_ENV):
        config_file = env[CONFIG_ENV]
    if config_file is not None:
        settings.config_file = Path(config_file)
        file_values = read_config_file(settings.config_file, file_setting)
        known = {key for option in OPTIONS for key in option.keys}
        for key in file_values:
            if key not in known:
                raise ConfigError(f"{settings.config_file}: {key}", file_values[key], "unknown setting",
                                  f"one of {', '.join(sorted(known))}")

    for option in OPTIONS:
        raw, source, name = _pick(option, flags, env, file_values, settings)
        if source == "default":
            setattr(settings, option.name, option.default)
            continue
        try:
            value = option.parse(raw)
        except ValueError as exc:
            shown = "***" if option.secret else parsing.without_credentials(raw)
            raise ConfigError(name, shown, str(exc), f"{name}={option.example}") from None
        setattr(settings, option.name, value)
        settings.sources[option.name] = source
        settings.setting_names[option.name] = name

    _check_together(settings, env)
    return settings


def _pick(option: Option, flags: Mapping[str, Any], env: Mapping[str, str],
          file_values: Mapping[str, Any], settings: Settings) -> tuple[Any, str, str]:
    if option.name in flags:
        flag = (option.flag or f"--{option.name.replace('_', '-')}").split("/")[0]  # a switch: its "on" name
        return flags[option.name], f"flag {flag}", flag
    present = [name for name in option.env if name in env]
    if present:
        chosen = present[0]
        for other in present[1:]:
            if env[other] != env[chosen]:
                settings.warnings.append(f"{other} is set too but {chosen} wins (it comes first); remove one of them")
        return env[chosen], f"env {chosen}", chosen
    for key in option.keys:
        if key in file_values:
            return file_values[key], f"config file {settings.config_file}: {key}", f"{settings.config_file}: {key}"
    return option.default, "default", option.name


def _check_together(settings: Settings, env: Mapping[str, str]) -> None:
    """Rules that involve more than one option."""
    for name, note in legacy.IGNORED_BY_CHROMA_1.items():
        if name in env:
            settings.notes.append(f"{name}: {note}; chromaguard honours it")

    if settings.auth_credentials_provider:
        try:
            mapped = legacy.credentials_provider(settings.auth_credentials_provider)
        except ValueError as exc:
            name = settings.name_of("auth_credentials_provider")
            raise ConfigError(name, settings.auth_credentials_provider, str(exc), f"{name}=none") from None
        note = legacy.credentials_provider_note(settings.auth_credentials_provider)
        if mapped != "none":
            settings.warnings.append(f"{settings.name_of('auth_credentials_provider')}: {note}")
            if settings.auth_provider == "none" and settings.source_of("auth_provider") == "default":
                settings.auth_provider = mapped
            elif settings.auth_provider not in ("none", mapped):
                raise ConfigError(settings.name_of("auth_credentials_provider"), settings.auth_credentials_provider,
                                  f"does not match {settings.name_of('auth_provider')}={settings.auth_provider}",
                                  f"{settings.name_of('auth_credentials_provider')}=none")

    _check_authz(settings)
    if settings.auth_provider == "none":
        if settings.auth_credentials_file or settings.auth_credentials:
            settings.warnings.append("auth credentials are set but the auth provider is none: no auth is enforced")
    else:
        _check_credentials(settings)

    if settings.otel_endpoint and not settings.otel_enabled and settings.source_of("otel_enabled") == "default":
        settings.otel_enabled = True
    if settings.otel_enabled and not settings.otel_endpoint:
        settings.otel_endpoint = "http://localhost:4317"
        settings.warnings.append("OpenTelemetry is on without an endpoint: using http://localhost:4317")

    if settings.upstream_token and not settings.upstream:
        name = settings.name_of("upstream_token")
        raise ConfigError(name, "***", "an upstream token needs an upstream server",
                          "CHROMAGUARD_UPSTREAM=https://chroma.internal:8000")
    _check_tls(settings)
    if settings.backup_schedule and not settings.backup_repository:
        raise ConfigError(settings.name_of("backup_schedule"), settings.backup_schedule,
                          "a backup schedule needs a repository to back up to",
                          "CHROMAGUARD_BACKUP_REPOSITORY=s3://my-bucket/chroma")
    if settings.backup_schedule and settings.upstream:
        raise ConfigError(settings.name_of("backup_schedule"), settings.backup_schedule,
                          "scheduled backups need the embedded engine (its data dir); with an upstream server, back "
                          "it up where it runs", "CHROMAGUARD_BACKUP_SCHEDULE=off")


def _check_authz(settings: Settings) -> None:
    """Chroma 0.6's RBAC: the one provider it had, its file, and an authentication to name the users."""
    from ..access.chroma06 import RBAC_PROVIDERS

    provider, name = settings.authz_provider, settings.name_of("authz_provider")
    if not provider:
        if settings.authz_config_file is not None:
            raise ConfigError(settings.name_of("authz_config_file"), str(settings.authz_config_file),
                              "an RBAC file is set without its provider",
                              f"{name}=chromadb.auth.simple_rbac_authz.SimpleRBACAuthorizationProvider")
        return
    if provider not in RBAC_PROVIDERS:
        raise ConfigError(name, provider, "not an authorization provider chromaguard reads (only Chroma 0.6's "
                          "simple RBAC)", f"{name}=chromadb.auth.simple_rbac_authz.SimpleRBACAuthorizationProvider")
    if settings.authz_config_file is None:
        raise ConfigError(name, provider, "the RBAC provider needs its file",
                          "CHROMA_SERVER_AUTHZ_CONFIG_FILE=/etc/chroma/authz.yaml")
    if settings.auth_provider == "none":
        raise ConfigError(name, provider, "authorization needs authentication to know who asks",
                          "CHROMA_SERVER_AUTHN_PROVIDER=chromadb.auth.token_authn.TokenAuthenticationServerProvider")


def _check_tls(settings: Settings) -> None:
    """The TLS files make sense together and can be loaded (so a bad one stops the start, not a client)."""
    if settings.ssl_keyfile is not None and settings.ssl_certfile is None:
        raise ConfigError(settings.name_of("ssl_keyfile"), str(settings.ssl_keyfile),
                          "a key needs its certificate", "CHROMAGUARD_SSL_CERTFILE=/etc/chromaguard/tls/tls.crt")
    if settings.ssl_client_cert != "none" and settings.ssl_ca_certs is None:
        raise ConfigError(settings.name_of("ssl_client_cert"), settings.ssl_client_cert,
                          "checking client certificates needs the CA bundle they are signed by",
                          "CHROMAGUARD_SSL_CA_CERTS=/etc/chromaguard/tls/clients-ca.crt")
    if settings.ssl_ca_certs is not None and settings.ssl_client_cert == "none":
        raise ConfigError(settings.name_of("ssl_ca_certs"), str(settings.ssl_ca_certs),
                          "a client CA bundle is set but client certificates are not asked for",
                          "CHROMAGUARD_SSL_CLIENT_CERT=required")
    if settings.ssl_ca_certs is not None and settings.ssl_certfile is None:
        raise ConfigError(settings.name_of("ssl_ca_certs"), str(settings.ssl_ca_certs),
                          "client certificates need HTTPS", "CHROMAGUARD_SSL_CERTFILE=/etc/chromaguard/tls/tls.crt")
    if settings.ssl_certfile is not None:
        from ..http11.tls import TlsError, server_context

        try:
            server_context(settings.tls_files())
        except TlsError as exc:
            raise ConfigError(settings.name_of("ssl_certfile"), str(settings.ssl_certfile), str(exc),
                              "CHROMAGUARD_SSL_CERTFILE=/etc/chromaguard/tls/tls.crt") from None


def _check_credentials(settings: Settings) -> None:
    path = settings.auth_credentials_file
    if path is None and not settings.auth_credentials:
        name = settings.name_of("auth_provider")
        raise ConfigError(name, settings.auth_provider, f"{settings.auth_provider} auth needs credentials",
                          "CHROMA_SERVER_AUTH_CREDENTIALS_FILE=/etc/chromaguard/tokens.json")
    if path is not None:
        name = settings.name_of("auth_credentials_file")
        if not path.is_file():
            raise ConfigError(name, str(path), "the credentials file does not exist or is not a file",
                              f"{name}=/etc/chromaguard/tokens.json")
        if not os.access(path, os.R_OK):
            raise ConfigError(name, str(path), "the credentials file is not readable",
                              f"{name}=/etc/chromaguard/tokens.json")
