"""What each Chroma image line holds: its tools, data path, API and setting names, each with its source.

The one table the doctor's checks read. Sources are paths in github.com/chroma-core/chroma at the
tag named (``Dockerfile @ 0.5.0`` is ``git show 0.5.0:Dockerfile``), or the base image's build
files in docker-library/python and debuerreotype/docker-debian-artifacts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Fact(Generic[T]):
    value: T
    source: str


@dataclass(frozen=True)
class ImageLine:
    line: str
    tools: Fact[frozenset[str]]  # programs a health check can call
    data_path: Fact[str]
    heartbeat: Fact[str]  # the heartbeat path every version of the line serves
    settings: Fact[frozenset[str]]  # every environment name the server reads
    apis: Fact[dict[str, tuple[int, int, int]]]  # API prefix -> the first version that serves it
    setting_prefixes: tuple[str, ...] = ()  # whole subtrees read (1.x: nested config keys)

    def serves(self, api: str, version: tuple[int, int, int] | None) -> bool | None:
        """Whether this line (at ``version``, when known) answers ``api`` ("v1", "v2"); None
        when it depends on a version that is not known."""
        since = self.apis.value.get(api)
        if since is None:
            return False
        if version is not None:
            return version >= since
        return True if since == (0, 0, 0) else None

    def reads(self, name: str) -> bool:
        key = name if self.line == "1.x" else name.upper()  # 0.x matches case-insensitively (pydantic v1)
        return key in self.settings.value or name.startswith(self.setting_prefixes)


# The 0.x servers read every field of chromadb.config.Settings, upper-cased, with no prefix.
_SETTINGS_0X_COMMON = frozenset({
    "ENVIRONMENT", "CHROMA_DB_IMPL", "CHROMA_API_IMPL", "CHROMA_TELEMETRY_IMPL", "CHROMA_PRODUCT_TELEMETRY_IMPL",
    "CHROMA_SYSDB_IMPL", "CHROMA_PRODUCER_IMPL", "CHROMA_CONSUMER_IMPL", "CHROMA_SEGMENT_MANAGER_IMPL",
    "CHROMA_QUOTA_PROVIDER_IMPL", "CHROMA_SEGMENT_DIRECTORY_IMPL", "CHROMA_MEMBERLIST_PROVIDER_IMPL",
    "CHROMA_COLLECTION_ASSIGNMENT_POLICY_IMPL", "WORKER_MEMBERLIST_NAME", "CHROMA_COORDINATOR_HOST", "TENANT_ID",
    "TOPIC_NAMESPACE", "IS_PERSISTENT", "PERSIST_DIRECTORY", "CHROMA_MEMORY_LIMIT_BYTES",
    "CHROMA_SEGMENT_CACHE_POLICY", "CHROMA_SERVER_HOST", "CHROMA_SERVER_HEADERS", "CHROMA_SERVER_HTTP_PORT",
    "CHROMA_SERVER_SSL_ENABLED", "CHROMA_SERVER_SSL_VERIFY", "CHROMA_SERVER_API_DEFAULT_PATH",
    "CHROMA_SERVER_GRPC_PORT", "CHROMA_SERVER_CORS_ALLOW_ORIGINS", "CHROMA_SERVER_NOFILE",
    "CHROMA_CLIENT_AUTH_PROVIDER", "CHROMA_CLIENT_AUTH_CREDENTIALS", "CHROMA_SERVER_AUTH_IGNORE_PATHS",
    "CHROMA_SERVER_AUTHZ_PROVIDER", "CHROMA_SERVER_AUTHZ_CONFIG", "CHROMA_SERVER_AUTHZ_CONFIG_FILE",
    "CHROMA_OVERWRITE_SINGLETON_TENANT_DATABASE_ACCESS_FROM_AUTH", "ANONYMIZED_TELEMETRY",
    "CHROMA_OTEL_COLLECTION_ENDPOINT", "CHROMA_OTEL_SERVICE_NAME", "CHROMA_OTEL_COLLECTION_HEADERS",
    "CHROMA_OTEL_GRANULARITY", "ALLOW_RESET", "MIGRATIONS", "MIGRATIONS_HASH_ALGORITHM",
    # Not Settings: the image's CMD expands these (Dockerfile ENV, from 0.4.23), and server code reads HOSTNAME.
    "CHROMA_HOST_ADDR", "CHROMA_HOST_PORT", "CHROMA_WORKERS", "CHROMA_LOG_CONFIG", "CHROMA_TIMEOUT_KEEP_ALIVE",
    "HOSTNAME",
})
_SETTINGS_0_4 = _SETTINGS_0X_COMMON | {
    "PULSAR_BROKER_URL", "PULSAR_ADMIN_PORT", "PULSAR_BROKER_PORT", "CHROMA_SERVER_AUTH_PROVIDER",
    "CHROMA_SERVER_AUTH_CONFIGURATION_PROVIDER", "CHROMA_SERVER_AUTH_CONFIGURATION_FILE",
    "CHROMA_SERVER_AUTH_CREDENTIALS_PROVIDER", "CHROMA_SERVER_AUTH_CREDENTIALS_FILE",
    "CHROMA_SERVER_AUTH_CREDENTIALS", "CHROMA_CLIENT_AUTH_CREDENTIALS_PROVIDER",
    "CHROMA_CLIENT_AUTH_PROTOCOL_ADAPTER", "CHROMA_CLIENT_AUTH_CREDENTIALS_FILE",
    "CHROMA_CLIENT_AUTH_TOKEN_TRANSPORT_HEADER", "CHROMA_SERVER_AUTH_TOKEN_TRANSPORT_HEADER",
    "CHROMA_SERVER_AUTHZ_IGNORE_PATHS", "CHROMA_SERVER_AUTHZ_CONFIG_PROVIDER",
}
_SETTINGS_0_5 = _SETTINGS_0X_COMMON | {
    "CHROMA_SERVER_THREAD_POOL_SIZE", "CHROMA_AUTH_TOKEN_TRANSPORT_HEADER", "CHROMA_SERVER_AUTHN_PROVIDER",
    "CHROMA_SERVER_AUTHN_CREDENTIALS", "CHROMA_SERVER_AUTHN_CREDENTIALS_FILE", "CHROMA_LOGSERVICE_HOST",
    "CHROMA_LOGSERVICE_PORT", "CHROMA_RATE_LIMITING_PROVIDER_IMPL", "CHROMA_EXECUTOR_IMPL",
    "CHROMA_QUOTA_ENFORCER_IMPL", "CHROMA_RATE_LIMIT_ENFORCER_IMPL", "CHROMA_LOGSERVICE_REQUEST_TIMEOUT_SECONDS",
    "CHROMA_SYSDB_REQUEST_TIMEOUT_SECONDS", "CHROMA_QUERY_REQUEST_TIMEOUT_SECONDS", "CHROMA_CLI",
}
_SETTINGS_0_6 = _SETTINGS_0_5 | {"CHROMA_ASYNC_RATE_LIMIT_ENFORCER_IMPL"}
# 1.x: figment over /config.yaml, Env::prefixed("CHROMA_") with "__" for nesting.
_SETTINGS_1X = frozenset({
    "CHROMA_PORT", "CHROMA_LISTEN_ADDRESS", "CHROMA_MAX_PAYLOAD_SIZE_BYTES", "CHROMA_CIRCUIT_BREAKER__REQUESTS",
    "CHROMA_SCORECARD_ENABLED", "CHROMA_SCORECARD", "CHROMA_OPEN_TELEMETRY__ENDPOINT",
    "CHROMA_OPEN_TELEMETRY__SERVICE_NAME", "CHROMA_OPEN_TELEMETRY__FILTERS", "CHROMA_PERSIST_PATH",
    "CHROMA_SQLITE_FILENAME", "CHROMA_CORS_ALLOW_ORIGINS", "CHROMA_ENABLE_SPAN_INDEXING", "CHROMA_ALLOW_RESET",
    "CHROMA_SQLITEDB__HASH_TYPE", "CHROMA_SQLITEDB__MIGRATION_MODE", "CHROMA_SQLITEDB__URL",
    "CHROMA_SEGMENT_MANAGER__PERSIST_PATH", "CHROMA_STDOUT_TRACING", "CHROMA_REGION", "CHROMA_DEFAULT_KNN_INDEX",
    "CHROMA_TENANTS_TO_MIGRATE_IMMEDIATELY", "CHROMA_TENANTS_TO_MIGRATE_IMMEDIATELY_THRESHOLD",
    "CHROMA_ENABLE_SCHEMA", "CHROMA_MIN_RECORDS_FOR_INVOCATION", "CHROMA_TENANTS_WITH_QUANTIZATION_ENABLED",
    "CHROMA_TENANTS_WITH_MAXSCORE_ENABLED", "CHROMA_ENABLE_LOG_SCOUTING", "CHROMA_THREAD_STACK_SIZE_BYTES",
    "RUST_LOG", "RUST_MIN_STACK", "HOSTNAME", "OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_METRICS_HEADERS", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
})

_PYTHON_SLIM = "python:3.1x-slim-bookworm (docker-library/python slim Dockerfile; debian bookworm slim manifest)"
_SETTINGS_SOURCE = "chromadb/config.py Settings fields @ {tags} (pydantic v1, no prefix, case-insensitive)"

LINES: dict[str, ImageLine] = {line.line: line for line in (
    ImageLine(
        "0.4",
        Fact(frozenset({"bash", "sh", "perl", "python", "python3", "uvicorn"}),
             f"Dockerfile @ 0.4.0:14, 0.4.24:19 (final stage FROM {_PYTHON_SLIM}; no apt-get install: no curl)"),
        Fact("/chroma/chroma", "chromadb/config.py @ 0.4.24 persist_directory './chroma'; Dockerfile WORKDIR /chroma"),
        Fact("/api/v1/heartbeat", "chromadb/server/fastapi/__init__.py @ 0.4.24:168 (no /api/v2 in any 0.4 tag)"),
        Fact(_SETTINGS_0_4, _SETTINGS_SOURCE.format(tags="0.4.0, 0.4.24") + "; Dockerfile @ 0.4.24 ENV"),
        Fact({"v1": (0, 0, 0)}, "chromadb/server/fastapi/__init__.py @ 0.4.24:165 (no /api/v2 route in any 0.4 tag)")),
    ImageLine(
        "0.5",
        Fact(frozenset({"bash", "sh", "perl", "python", "python3", "uvicorn", "curl"}),
             "Dockerfile @ 0.5.0, 0.5.23 final stage: `apt-get install -y curl` (commit 87e5903e, #1753)"),
        Fact("/chroma/chroma", "chromadb/config.py @ 0.5.23:141-142; Dockerfile @ 0.5.23:22 WORKDIR /chroma"),
        Fact("/api/v1/heartbeat", "chromadb/server/fastapi/__init__.py @ 0.5.0 (v1 only until 0.5.15; "
                                  "/api/v2/heartbeat too from 0.5.16, @ 0.5.23:227)"),
        Fact(_SETTINGS_0_5, _SETTINGS_SOURCE.format(tags="0.5.0, 0.5.23") + "; Dockerfile @ 0.5.23:33-37 ENV"),
        Fact({"v1": (0, 0, 0), "v2": (0, 5, 16)}, "chromadb/server/fastapi/__init__.py: v2 routes from 0.5.16 "
                                                  "(commit bc26b0a4, #2954)")),
    ImageLine(
        "0.6",
        Fact(frozenset({"bash", "sh", "perl", "python", "python3", "uvicorn", "curl"}),
             "Dockerfile @ 0.6.0:50, 0.6.3:50: `apt-get install -y curl`"),
        Fact("/chroma/chroma", "chromadb/config.py @ 0.6.3:142-143; Dockerfile @ 0.6.3:45 WORKDIR /chroma"),
        Fact("/api/v2/heartbeat", "chromadb/server/fastapi/__init__.py @ 0.6.3:276 (and v1, :1253)"),
        Fact(_SETTINGS_0_6, _SETTINGS_SOURCE.format(tags="0.6.0, 0.6.3") + "; Dockerfile @ 0.6.3:58-62 ENV"),
        Fact({"v1": (0, 0, 0), "v2": (0, 0, 0)}, "chromadb/server/fastapi/__init__.py @ 0.6.3:231-234")),
    ImageLine(
        "1.x",
        Fact(frozenset({"bash", "sh", "perl", "chroma"}),
             "rust/cli/Dockerfile @ 1.0.0:27-29, rust/Dockerfile @ 1.5.9:72-93 (FROM debian:stable-slim, "
             "apt-get install dumb-init [libssl-dev ca-certificates]: no curl, wget, nc or python)"),
        Fact("/data", "rust/Dockerfile @ 1.5.9:87 COPY config.yaml with persist_path: \"/data\""),
        Fact("/api/v2/heartbeat", "rust/frontend/src/server.rs @ 1.5.9:290-295 (every /api/v1 path answers 410)"),
        Fact(_SETTINGS_1X, "rust/frontend/src/config.rs @ 1.0.0, 1.5.9 (figment Env::prefixed(\"CHROMA_\"), "
                           "'__' nests); opentelemetry-otlp reads OTEL_EXPORTER_OTLP_*"),
        Fact({"v2": (0, 0, 0)}, "rust/frontend/src/server.rs @ 1.5.9:290-295 (/api/v1/* answers 410 Gone)"),
        ("CHROMA_SYSDB__", "CHROMA_LOG__", "CHROMA_EXECUTOR__", "CHROMA_SEGMENT_MANAGER__",
         "CHROMA_COLLECTIONS_WITH_SEGMENTS_PROVIDER__", "CHROMA_MCMR_SYSDB__")),
)}


def _any_0x() -> ImageLine:
    """A 0.x built from source whose version cannot be read: what some 0.x line has may be there
    (no false alarm for a tool or a name of another 0.x line)."""
    lines = [LINES[name] for name in ("0.4", "0.5", "0.6")]
    return ImageLine(
        "0.x", Fact(frozenset().union(*(x.tools.value for x in lines)), "the 0.4, 0.5 and 0.6 lines together"),
        LINES["0.6"].data_path, LINES["0.4"].heartbeat,
        Fact(frozenset().union(*(x.settings.value for x in lines)), "the 0.4, 0.5 and 0.6 lines together"),
        Fact({"v1": (0, 0, 0), "v2": (0, 5, 16)}, "the 0.4, 0.5 and 0.6 lines together"))


LINES["0.x"] = _any_0x()
