"""Collection configurations that would make clients run code are never stored.

The official Python client builds a collection's stored ``embedding_function``
(``{"type": "known", "name": ..., "config": {...}}``, under ``configuration``,
``new_configuration`` or a ``schema`` index) as soon as it reads the collection, passing
``config`` (and its ``kwargs``) to the model loader: ``trust_remote_code`` there runs the
model repository's code in every application that opens the collection (CVE-2026-45829,
chroma-core/chroma#6717). Chroma's engine stores whatever it is sent, so the front door
refuses such a request, with or without auth, and optionally allows only listed
embedding-function names.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from . import strictjson
from .routes import Route

# Routes whose body the engine may store as a collection's configuration. "unknown" covers
# routes newer than this table (admin only): their JSON bodies are checked too.
STORING_OPERATIONS = frozenset({"create_collection", "modify_collection", "fork", "unknown"})
_REMOTE_CODE = "trust_remote_code"
_NO_CODE_TYPES = frozenset({"legacy", "unknown"})  # the client builds nothing for these
_MAX_DEPTH = 64


def checks(method: str, route: Route | None) -> bool:
    """Whether a request on ``route`` (None: a path we could not classify) carries a body to check.
    The engine reads no body on GET or HEAD."""
    return method not in ("GET", "HEAD") and (route is None or route.operation in STORING_OPERATIONS)


@dataclass(frozen=True)
class ConfigPolicy:
    """``allowed_functions`` empty: any embedding-function name, never remote code."""

    allowed_functions: tuple[str, ...] = ()

    def refusal(self, route: Route | None, body: bytes) -> str | None:
        """Why ``body`` may not go to the engine (one line naming the field); None when it may."""
        if not body.strip():
            return None
        # The engine reads any body as JSON, and its parser skips what it does not need unread
        # (bad UTF-8, a 5,000-digit number): a body we cannot read whole is a body we cannot check.
        try:
            data = strictjson.loads(body)
        except strictjson.DuplicateKey as exc:
            return f"the request body is ambiguous: {exc}"
        except RecursionError:
            return "the request body is nested too deeply"
        except ValueError:
            return "the request body is not valid JSON (UTF-8, numbers under 4,300 digits)"
        if not isinstance(data, dict):
            # The engine also takes a struct as an array of its fields in order: only objects say
            # plainly which field is which.
            return "the request body must be a JSON object"
        return self.refusal_in(data, "")

    def refusal_in(self, data: Any, root: str, depth: int = 0) -> str | None:
        """Why ``data`` (a decoded body, or a stored collection) holds a configuration that
        would be refused; the field is named from ``root``."""
        for path, value in _walk(data, root, depth):
            if path == "...":
                return f"{root or 'the request body'} is nested too deeply"
            key = path.rsplit(".", 1)[-1]
            if _normal(key) == _REMOTE_CODE and value not in (False, None, 0, ""):
                return (f"{path} asks clients to run a model repository's code; chromaguard never stores that "
                        "(remove it, or set it to false)")
            if _inside_configuration(path) and isinstance(value, list) and not _inside_function_config(path):
                return (f"{path} is an array where the engine expects an object (its fields by position); "
                        "write it as a JSON object")
            if key == "embedding_function" and value is not None and not isinstance(value, dict):
                return f"{path} must be a JSON object"
            if key == "embedding_function" and isinstance(value, dict) and self.allowed_functions:
                kind, name = value.get("type"), value.get("name")
                if kind not in _NO_CODE_TYPES and name not in self.allowed_functions:
                    return (f"{path}.name {name!r} is not an allowed embedding function "
                            f"(CHROMAGUARD_ALLOWED_EMBEDDING_FUNCTIONS={','.join(self.allowed_functions)})")
            if isinstance(value, str) and value.lstrip().startswith(("{", "[")):
                # JSON inside a string (as in a listing's configuration_json): read it as well.
                try:
                    inner = strictjson.loads(value)
                except (ValueError, RecursionError):
                    continue
                why = self.refusal_in(inner, path, depth + 1 + path.count("."))
                if why:
                    return why
        return None


_CONFIGURATION_FIELDS = ("configuration", "new_configuration", "schema", "configuration_json")


def _inside_configuration(path: str) -> bool:
    """A path in one of the structures the engine deserialises into typed configuration."""
    head = path.split(".", 1)[0].split("[", 1)[0]
    return head in _CONFIGURATION_FIELDS


def _inside_function_config(path: str) -> bool:
    """Below an embedding function's ``config``: free-form JSON, where arrays are data."""
    return ".embedding_function.config." in path or ".embedding_function.config[" in path


def _normal(key: str) -> str:
    return key.casefold().replace("-", "_")


def _walk(value: Any, path: str, depth: int) -> Iterator[tuple[str, Any]]:
    """Every (dotted path, value) below ``value``; ("...", None) past a sane depth."""
    if depth > _MAX_DEPTH:
        yield "...", None
        return
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            yield where, item
            yield from _walk(item, where, depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, f"{path}[{index}]", depth + 1)
