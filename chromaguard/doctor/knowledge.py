"""How a compose service is recognised (which image, which Chroma line) and the rules about its settings.

The facts of each line (tools, data path, APIs, setting names, with their sources) are in
`lines.py`; this module decides with them.
"""

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


# CVE-2026-45829 (GHSA-f4j7-r4q5-qw2c, "ChromaToast"): the Python FastAPI server of chromadb builds a
# client-supplied embedding function (a Hugging Face model with trust_remote_code) before its auth
# check. Affected from 1.0.0; no fixed release was published when this rule was written (the
# advisory's last affected version: 1.5.9; the fix is merged upstream as chroma-core/chroma#7237).
ADVISORY_FROM = (1, 0, 0)
_PYTHON_SERVER = re.compile(r"chromadb\.app:app|chromadb/app\.py")
_PIP_CHROMADB = re.compile(r"\bpip3?\s+install\b[^;&|]*?\bchromadb\b(?:\[[^\]]*\])?(?:\s*(==|~=|>=|>)\s*v?(\d+)\.(\d+)"
                           r"(?:\.(\d+))?)?")


@dataclass(frozen=True)
class PythonServer:
    """A service that runs Chroma's Python server, and the chromadb it runs, as far as the file says."""

    version: tuple[int, int, int] | None  # None: the newest release (installed unpinned, or with >=)
    how: str  # where the version was read

    @property
    def affected(self) -> bool:
        return self.version is None or self.version >= ADVISORY_FROM


def python_server(service: Service, image: Image | None) -> PythonServer | None:
    """The Python server (``uvicorn chromadb.app:app``) and its version: a pip install in the
    command pins it (``chromadb==1.0.15``; unpinned or ``>=``: the newest), else the image's tag
    or the Dockerfile's base; None when it runs no Python server or its version cannot be read."""
    entry = service.get("entrypoint")
    entrypoint = "" if entry is None else " ".join(map(str, entry.value)) if isinstance(entry.value, list) \
        else str(entry.value)
    text = f"{entrypoint} {service.command()}"
    if not _PYTHON_SERVER.search(text):
        return None
    pip = _PIP_CHROMADB.search(text)
    if pip is not None:
        if pip.group(1) in (None, ">=", ">"):
            return PythonServer(None, f"`{pip.group(0).strip()}` installs the newest chromadb")
        return PythonServer((int(pip.group(2)), int(pip.group(3)), int(pip.group(4) or 0)), f"`{pip.group(0).strip()}`")
    if image is not None and image.kind == CHROMA and image.version is not None:
        return PythonServer(image.version, f"image {image.reference}")
    return None


def container_port(service: Service, image: Image | None = None) -> int:
    """The port the server listens on inside its container: the name the line reads (1.x
    CHROMA_PORT; the 0.x image's CHROMA_HOST_PORT; chromaguard CHROMA_SERVER_HTTP_PORT), else 8000."""
    names = {"1.x": ("CHROMA_PORT",)}.get(image.line, ("CHROMA_HOST_PORT",)) \
        if image is not None and image.kind == CHROMA else ("CHROMA_PORT", "CHROMA_SERVER_HTTP_PORT")
    env = service.environment()
    for name in names:
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

_FALSE = ("", "false", "0", "no", "off", "n", "f")


def _literal(value: str | None) -> str | None:
    """The value as the engine would read it, or None when the host decides (a bare NAME, or
    ``${VAR}`` in it)."""
    if value is None or "$" in value:
        return None
    return value.strip().strip("'\"").strip()


def widens_access(name: str, value: str | None) -> str | None:
    """Why turning on ``name=value`` (by renaming an ignored setting to it) would or could open
    access beyond what runs today; None only when it surely would not (deny by default)."""
    literal = _literal(value)
    if name in ("CHROMA_CORS_ALLOW_ORIGINS", "CHROMA_SERVER_CORS_ALLOW_ORIGINS") and literal not in ("", "[]"):
        return (f"it would let the web pages of {literal} call the database from a user's browser" if literal
                else "its origins would come from the host's environment, which may allow any web page")
    if name in ("CHROMA_ALLOW_RESET", "ALLOW_RESET") and (literal is None or literal.lower() not in _FALSE):
        return "it would let any client wipe the whole database with one call (reset)" if literal else \
            "reset would be on whenever the host's environment says so: any client could wipe the database"
    # CHROMA_LISTEN_ADDRESS is not here: the 1.x image listens on 0.0.0.0 already
    # (rust/frontend/src/config.rs default_listen_address); a different address is a change_on_rename.
    return None


_CLASSES_OF_0_4 = ("chromadb.auth.token.", "chromadb.auth.basic.", "chromadb.auth.providers.")
_CLASSES_SINCE_0_5 = ("chromadb.auth.token_authn.", "chromadb.auth.basic_authn.", "chromadb.auth.simple_rbac_authz.")


def _default_of(value: str) -> str | None:
    """The default of a ``${VAR:-default}`` value, unquoted; None when it has none."""
    match = re.fullmatch(r"\s*\$\{[A-Za-z_][A-Za-z0-9_]*:?-(.*)\}\s*", value)
    return match.group(1).strip().strip("'\"").strip() if match else None


def empty_unless_set(value: str | None) -> bool:
    """An empty value, or one only the host fills (``${NAME}``, or a default that is blank)."""
    literal = _literal(value)
    return literal == "" or (literal is None and not _default_of(value or ""))


def change_on_rename(name: str, value: str | None, line: str) -> str | None:
    """Why turning on ``name=value`` on ``line`` would change what runs today in a way that can
    break it; None when the renamed setting means what the server does today anyway."""
    literal = _literal(value)
    if line == "1.x" and name == "CHROMA_PORT" and literal != "8000":
        return (f"the server listens on 8000 today; renamed, it would listen on {value}: the published port and "
                "the health check must follow")
    if line == "1.x" and name == "CHROMA_LISTEN_ADDRESS" and literal != "0.0.0.0":
        return f"the server listens on 0.0.0.0 today; renamed, it would listen on {value}"
    if line == "1.x" and name == "CHROMA_OPEN_TELEMETRY__ENDPOINT" and empty_unless_set(value):
        return ("Chroma 1.x panics at start-up on an empty endpoint, which this is" + ("" if literal == "" else
                " whenever the host does not set it") + ": give it a default first (${NAME:-http://collector:4317})")
    if line == "1.x" and name == "CHROMA_ALLOW_RESET" and (literal or "").lower() != "false":
        return f"Chroma 1.x reads true or false here: {value or 'an empty value'} may keep it from starting"
    if line == "1.x" and name == "CHROMA_CORS_ALLOW_ORIGINS" and literal == "":
        return "Chroma 1.x reads a list of origins here: an empty value may keep it from starting"
    foreign = _CLASSES_OF_0_4 if line in ("0.5", "0.6") else _CLASSES_SINCE_0_5 if line == "0.4" else ()
    if name.endswith("_PROVIDER") and (literal or "").lower().startswith(foreign):
        return (f"{value} is a class of another Chroma line: renamed, Chroma {line} would fail to start; name "
                "this line's class (chromaguard doctor --explain CG203)")
    return None


AUTH_PREFIXES = ("CHROMA_SERVER_AUTH", "CHROMA_SERVER_AUTHN", "CHROMA_AUTH_TOKEN_TRANSPORT_HEADER")
NONEXISTENT_AUTH_CLASSES = {"chromadb.auth.token.tokenauthserver"}


def is_auth_var(name: str) -> bool:
    return name.startswith(AUTH_PREFIXES)


_AUTH_SPELLINGS = {  # an auth name of one 0.x line -> the same setting's name in the other lines
    "CHROMA_SERVER_AUTHN_": "CHROMA_SERVER_AUTH_", "CHROMA_SERVER_AUTH_": "CHROMA_SERVER_AUTHN_",
}
_TRANSPORT_HEADERS = ("CHROMA_SERVER_AUTH_TOKEN_TRANSPORT_HEADER", "CHROMA_AUTH_TOKEN_TRANSPORT_HEADER")


def auth_rename_for_line(name: str, line: str) -> tuple[str | None, str] | None:
    """The name this 0.x line reads for an auth setting spelled as another line spells it (0.4
    reads CHROMA_SERVER_AUTH_*, 0.5 and 0.6 CHROMA_SERVER_AUTHN_*); None when the line reads the
    name as it is, or reads no spelling of it."""
    reads = LINES[line].reads
    if line not in ("0.4", "0.5", "0.6") or reads(name):
        return None
    candidates = [other for other in _TRANSPORT_HEADERS if other != name] if name in _TRANSPORT_HEADERS else \
        [name.replace(old, new, 1) for old, new in _AUTH_SPELLINGS.items() if name.startswith(old)]
    for candidate in candidates:
        if reads(candidate):
            return candidate, f"Chroma {line} reads {candidate}"
    return None
