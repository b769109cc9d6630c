"""What each image and Chroma line really does (checked facts; see DESIGN.md and the README)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .compose import Service
from .lines import LINES

CHROMA = "chroma"
CHROMAGUARD = "chromaguard"
OLLAMA = "ollama"

_TAG_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class Image:
    kind: str
    line: str  # "0.4", "0.5", "0.6", "1.x" for Chroma ("0.x": built from source, version unknown); "" otherwise
    version: tuple[int, int, int] | None
    floating: bool  # `latest` or no tag: whatever was pulled last
    reference: str
    built: bool = False  # built from source (`build:`): the line is read from its Dockerfile

    @property
    def is_1x(self) -> bool:
        return self.kind == CHROMA and self.line == "1.x"

    def binaries(self) -> frozenset[str]:
        """Programs a health check can call inside this image."""
        if self.kind == CHROMA:
            return LINES[self.line].tools.value
        if self.kind == OLLAMA:
            return frozenset({"bash", "ollama"})
        if self.kind == CHROMAGUARD:
            return frozenset({"bash", "python", "python3", "chromaguard"})
        return frozenset()


def _tag(reference: str) -> str:
    name = reference.split("@")[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else ""


def _built_line(service: Service) -> tuple[str, tuple[int, int, int] | None] | None:
    """The Chroma line a ``build:`` makes: Chroma's own Rust Dockerfile is 1.x; a Dockerfile that
    starts ``FROM chromadb/chroma:TAG`` is that tag's line; anything else is not known to be Chroma."""
    entry = service.get("build")
    if entry is None:
        return None
    build = entry.value
    context = str(build.get("context", ".")) if hasattr(build, "get") else str(build)
    dockerfile = str(build.get("dockerfile", "Dockerfile")) if hasattr(build, "get") else "Dockerfile"
    if dockerfile.startswith("rust/") or "/rust/" in dockerfile:
        return "1.x", None
    path = entry.file.path.parent / context / dockerfile
    try:
        text = path.read_text(encoding="utf-8", errors="replace")[:65536]
    except OSError:  # not here: Chroma's own 0.x Dockerfile shows in the arguments its entrypoint takes
        return ("0.x", None) if re.search(r"chromadb/log_config\.yml|chromadb\.app:app", service.command()) else None
    for line in text.splitlines():
        match = re.match(r"\s*FROM\s+(?:--\S+\s+)*(\S+)", line, re.IGNORECASE)
        if match and re.search(r"chromadb/chroma|chroma-core/chroma", match.group(1), re.IGNORECASE):
            version = _TAG_VERSION.match(_tag(match.group(1)))
            if version is None:
                return "1.x", None
            numbers = (int(version.group(1)), int(version.group(2)), int(version.group(3) or 0))
            return ("1.x" if numbers[0] >= 1 else f"0.{numbers[1]}"), numbers
    return None


def identify(service: Service) -> Image | None:
    reference = service.image()
    command = service.command()
    lowered = reference.lower()
    tag = _tag(reference)
    built = _built_line(service)
    if built is not None:
        source = f"Chroma {built[0]} built from source"
        return Image(CHROMA, built[0], built[1], False, f"{reference} ({source})" if reference else source,
                     built=True)
    if "chromaguard" in lowered or command.strip().startswith("chromaguard"):
        return Image(CHROMAGUARD, "", None, tag in ("", "latest"), reference)
    if "ollama/ollama" in lowered:
        return Image(OLLAMA, "", None, tag in ("", "latest"), reference)
    is_chroma = "chromadb/chroma" in lowered or "chroma-core/chroma" in lowered
    if not is_chroma and not re.search(r"\bchroma run\b|uvicorn\s+chromadb\.app:app", command):
        return None
    match = _TAG_VERSION.match(tag)
    if match:
        version = (int(match.group(1)), int(match.group(2)), int(match.group(3) or 0))
        line = "1.x" if version[0] >= 1 else f"0.{version[1]}"
        return Image(CHROMA, line, version, False, reference)
    if not is_chroma:  # a command, no image: `uvicorn chromadb.app:app` is the 0.x server
        return Image(CHROMA, "0.6" if "uvicorn" in command else "1.x", None, False, reference)
    return Image(CHROMA, "1.x", None, True, reference)


def container_port(service: Service) -> int:
    env = service.environment()
    for name in ("CHROMA_PORT", "CHROMA_SERVER_HTTP_PORT"):
        var = env.get(name)
        if var is not None and var.value and var.value.strip().isdigit():
            return int(var.value)
    return 8000


# Environment names a Chroma 1.x server ignores: (replacement or None to drop it, why).
IGNORED_ON_1X: dict[str, tuple[str | None, str]] = {
    "CHROMA_SERVER_HOST": ("CHROMA_LISTEN_ADDRESS", "Chroma 1.x reads CHROMA_LISTEN_ADDRESS"),
    "CHROMA_SERVER_HTTP_PORT": ("CHROMA_PORT", "Chroma 1.x reads CHROMA_PORT"),
    "CHROMA_SERVER_CORS_ALLOW_ORIGINS": ("CHROMA_CORS_ALLOW_ORIGINS", "Chroma 1.x reads CHROMA_CORS_ALLOW_ORIGINS"),
    "IS_PERSISTENT": (None, "Chroma 1.x always persists"),
    "PERSIST_DIRECTORY": (None, "Chroma 1.x's image writes to /data (set by its config file)"),
    "ALLOW_RESET": ("CHROMA_ALLOW_RESET", "Chroma 1.x reads CHROMA_ALLOW_RESET"),
    "ANONYMIZED_TELEMETRY": (None, "a no-op since Chroma 1.5.4"),
    "CHROMA_SERVER_OTEL_ENABLED": (None, "never existed in any Chroma; setting an endpoint is what turns it on"),
    "CHROMA_SERVER_OTEL_ENDPOINT": ("CHROMA_OPEN_TELEMETRY__ENDPOINT",
                                    "never existed in any Chroma; Chroma 1.x reads CHROMA_OPEN_TELEMETRY__ENDPOINT"),
    "CHROMA_SERVER_OTEL_SERVICE_NAME": ("CHROMA_OPEN_TELEMETRY__SERVICE_NAME",
                                        "never existed in any Chroma; Chroma 1.x reads "
                                        "CHROMA_OPEN_TELEMETRY__SERVICE_NAME"),
    "CHROMA_OTEL_COLLECTION_ENDPOINT": ("CHROMA_OPEN_TELEMETRY__ENDPOINT",
                                        "the Chroma 0.x name; Chroma 1.x reads CHROMA_OPEN_TELEMETRY__ENDPOINT"),
    "CHROMA_OTEL_SERVICE_NAME": ("CHROMA_OPEN_TELEMETRY__SERVICE_NAME",
                                 "the Chroma 0.x name; Chroma 1.x reads CHROMA_OPEN_TELEMETRY__SERVICE_NAME"),
}

# Names that never existed in a 0.x line, with the line's real name (or None).
NEVER_IN_0X: dict[str, tuple[str | None, str]] = {
    "CHROMA_SERVER_OTEL_ENABLED": (None, "never existed in any Chroma: Chroma 0.x traces when "
                                         "CHROMA_OTEL_COLLECTION_ENDPOINT is set"),
    "CHROMA_SERVER_OTEL_ENDPOINT": ("CHROMA_OTEL_COLLECTION_ENDPOINT", "never existed in any Chroma; Chroma 0.x "
                                                                       "reads CHROMA_OTEL_COLLECTION_ENDPOINT"),
    "CHROMA_SERVER_OTEL_SERVICE_NAME": ("CHROMA_OTEL_SERVICE_NAME", "never existed in any Chroma; Chroma 0.x "
                                                                    "reads CHROMA_OTEL_SERVICE_NAME"),
}

def widens_access(name: str, value: str | None) -> str | None:
    """Why turning on ``name=value`` (by renaming an ignored setting to it) would open access
    beyond what runs today; None when it would not."""
    value = (value or "").strip().strip("'\"")
    if name in ("CHROMA_CORS_ALLOW_ORIGINS", "CHROMA_SERVER_CORS_ALLOW_ORIGINS") and value not in ("", "[]"):
        return f"it would let the web pages of {value} call the database from a user's browser"
    if name in ("CHROMA_ALLOW_RESET", "ALLOW_RESET") and value.lower() in ("true", "1", "yes", "on"):
        return "it would let any client wipe the whole database with one call (reset)"
    # CHROMA_LISTEN_ADDRESS is not here: the 1.x image listens on 0.0.0.0 already
    # (rust/frontend/src/config.rs default_listen_address), so no value of it opens more.
    return None


AUTH_PREFIXES = ("CHROMA_SERVER_AUTH", "CHROMA_SERVER_AUTHN", "CHROMA_AUTH_TOKEN_TRANSPORT_HEADER")
NONEXISTENT_AUTH_CLASSES = {"chromadb.auth.token.tokenauthserver"}


def is_auth_var(name: str) -> bool:
    return name.startswith(AUTH_PREFIXES)


def auth_rename_for_line(name: str, line: str) -> tuple[str | None, str] | None:
    """0.4 reads CHROMA_SERVER_AUTH_*, 0.5/0.6 read CHROMA_SERVER_AUTHN_*: the other spelling is ignored."""
    if line == "0.4" and name.startswith("CHROMA_SERVER_AUTHN_"):
        return name.replace("CHROMA_SERVER_AUTHN_", "CHROMA_SERVER_AUTH_"), "Chroma 0.4 reads CHROMA_SERVER_AUTH_*"
    if line in ("0.5", "0.6") and name.startswith("CHROMA_SERVER_AUTH_"):
        return (name.replace("CHROMA_SERVER_AUTH_", "CHROMA_SERVER_AUTHN_", 1),
                f"Chroma {line} reads CHROMA_SERVER_AUTHN_*")
    return None
