"""Value parsers for settings.

Each parser takes the raw value (a string from the environment or a flag, or a
YAML scalar/list) and returns the typed value, or raises ``ValueError`` whose
text says what is wrong; the config loader turns that into a one-line error
naming the setting.
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def without_credentials(raw: Any) -> Any:
    """A setting as it may be shown in a message: a URL's user and password left out (everything
    up to the last ``@``: a secret may hold ``/``, which hides it from ``urlsplit``)."""
    if not isinstance(raw, str) or "@" not in raw or "://" not in raw:
        return raw
    scheme, rest = raw.strip().split("://", 1)
    return f"{scheme}://{rest.rsplit('@', 1)[1]}"


def parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("not a boolean (use true or false)")


def parse_port(raw: Any, *, allow_zero: bool = False) -> int:
    try:
        port = int(str(raw).strip())
    except ValueError:
        raise ValueError("not a port number") from None
    low = 0 if allow_zero else 1
    if not low <= port <= 65535:
        raise ValueError(f"port out of range {low}-65535")
    return port


def parse_engine_port(raw: Any) -> int:
    return parse_port(raw, allow_zero=True)


def parse_host(raw: Any) -> str:
    text = str(raw).strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if not text:
        raise ValueError("empty listen address")
    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        pass
    if _HOSTNAME.match(text):
        return text
    raise ValueError("not an IP address or host name")


def parse_positive_int(raw: Any) -> int:
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise ValueError("not a whole number") from None
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


def parse_duration(raw: Any) -> float:
    """Seconds from ``30``, ``30s``, ``500ms``, ``2m`` or ``1h`` (Docker's spelling)."""
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        value = float(raw)
    else:
        match = _DURATION.match(str(raw))
        if not match:
            raise ValueError("not a duration (use seconds like 30 or 30s, 500ms, 2m, 6h, 1d)")
        value = float(match.group(1)) * _UNITS[match.group(2)]
    if value < 0:
        raise ValueError("a duration cannot be negative")
    return value


def parse_path(raw: Any) -> Path:
    text = str(raw).strip()
    if not text:
        raise ValueError("empty path")
    return Path(text).expanduser()


def parse_optional_path(raw: Any) -> Path | None:
    """A path, where the seed's literal ``none`` (or empty) means "no file"."""
    text = str(raw).strip()
    if text.lower() in ("", "none", "null"):
        return None
    return Path(text).expanduser()


def parse_text(raw: Any) -> str:
    return str(raw).strip()


def _json(text: str, kind: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"malformed JSON {kind} ({exc.msg} at column {exc.colno})") from None


def parse_origin_list(raw: Any) -> tuple[str, ...]:
    """CORS origins as the seed writes them (``["*"]``, a JSON list) or a comma list."""
    if isinstance(raw, (list, tuple)):
        items = [str(item) for item in raw]
    else:
        text = str(raw).strip()
        if text.startswith("["):
            loaded = _json(text, "list")
            if not isinstance(loaded, list) or not all(isinstance(i, str) for i in loaded):
                raise ValueError("the JSON must be a list of strings")
            items = loaded
        else:
            items = [part for part in text.split(",")]
    origins = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        if item != "*":
            _check_origin(item)
        origins.append(item.rstrip("/") if item != "*" else item)
    return tuple(origins)


def _check_origin(origin: str) -> None:
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{origin!r} is not an origin (scheme://host[:port])")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{origin!r} is not an origin: it must not have a path")


def parse_url(raw: Any, *, schemes: tuple[str, ...] = ("http", "https")) -> str:
    text = str(raw).strip()
    parts = urlsplit(text)
    if parts.scheme not in schemes or not parts.hostname:
        raise ValueError(f"not a URL ({'/'.join(schemes)}://host:port)")
    try:
        _ = parts.port  # reading it validates it
    except ValueError:
        raise ValueError("the URL has an invalid port") from None
    return text.rstrip("/")


def parse_http_url(raw: Any) -> str:
    return parse_url(raw)


def parse_otlp_endpoint(raw: Any) -> str:
    """An OTLP endpoint; ``host:port`` without a scheme is taken as gRPC over plain HTTP/2."""
    text = str(raw).strip()
    if text and "://" not in text:
        text = "http://" + text
    return parse_url(text, schemes=("http", "https", "grpc", "grpcs"))


def parse_engine_spans(raw: Any) -> str:
    """``requests``, ``all`` or ``off``; a boolean still works (true is ``requests``)."""
    text = str(raw).strip().lower()
    if text in ("requests", "all", "off"):
        return text
    try:
        return "requests" if parse_bool(raw) else "off"
    except ValueError:
        raise ValueError("must be requests, all or off (true means requests, false off)") from None


def choice(*allowed: str):
    """A parser accepting one of ``allowed`` (case-insensitive)."""

    def parse(raw: Any) -> str:
        text = str(raw).strip().lower()
        if text not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return text

    return parse


def parse_path_list(raw: Any) -> tuple[str, ...]:
    """URL paths, as a YAML list or a comma list; each must start with '/'."""
    items = raw if isinstance(raw, (list, tuple)) else str(raw).split(",")
    paths = tuple(str(item).strip() for item in items if str(item).strip())
    for path in paths:
        if not path.startswith("/"):
            raise ValueError(f"{path!r} is not a URL path (it must start with /)")
    return paths


def parse_rate(raw: Any) -> float:
    """Requests per second from ``20``, ``20/s``, ``600/m`` or ``0`` (off)."""
    text = str(raw).strip().lower()
    number, _, unit = text.partition("/")
    try:
        value = float(number)
    except ValueError:
        raise ValueError("not a rate (use 20/s, 600/m or 0 for no limit)") from None
    if value < 0 or unit not in ("", "s", "m", "h"):
        raise ValueError("not a rate (use 20/s, 600/m or 0 for no limit)")
    return value / {"": 1, "s": 1, "m": 60, "h": 3600}[unit]


def parse_headers(raw: Any) -> tuple[tuple[str, str], ...]:
    """Headers from a JSON object or ``k=v,k=v`` (the OTel spelling)."""
    if isinstance(raw, dict):
        pairs = list(raw.items())
    else:
        text = str(raw).strip()
        if text.startswith("{"):
            loaded = _json(text, "object")
            if not isinstance(loaded, dict):
                raise ValueError("the JSON must be an object of header names to values")
            pairs = list(loaded.items())
        else:
            pairs = []
            for item in filter(None, (part.strip() for part in text.split(","))):
                name, sep, value = item.partition("=")
                if not sep or not name.strip():
                    raise ValueError(f"{item!r} is not name=value")
                pairs.append((name.strip(), value.strip()))
    return tuple((str(k).strip().lower(), str(v)) for k, v in pairs)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "ki": 1024, "kib": 1024, "m": 1000**2, "mb": 1000**2,
               "mi": 1024**2, "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gi": 1024**3, "gib": 1024**3,
               "t": 1000**4, "tb": 1000**4, "ti": 1024**4, "tib": 1024**4}


def parse_size(raw: Any) -> int:
    """Bytes from ``1073741824``, ``512MiB``, ``1GB``, ``0`` (off)."""
    match = _SIZE.match(str(raw))
    if not match:
        raise ValueError("not a size (use bytes or a unit: 512MiB, 1GB)")
    return int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower()])


def parse_nonnegative_int(raw: Any) -> int:
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise ValueError("not a whole number") from None
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def parse_ollama_url(raw: Any) -> str | None:
    """Ollama's address as users write it: a URL, ``host:port``, or OLLAMA_HOST's ``0.0.0.0`` bind form."""
    text = str(raw).strip()
    if not text:
        return None
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    host = parts.hostname or ""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    port = parts.port or 11434
    if parts.scheme not in ("http", "https"):
        raise ValueError("not an Ollama address (use http://ollama:11434)")
    return f"{parts.scheme}://{host}:{port}"


def parse_name_list(raw: Any) -> tuple[str, ...]:
    items = raw if isinstance(raw, (list, tuple)) else str(raw).split(",")
    return tuple(str(i).strip() for i in items if str(i).strip())
