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

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .. import strictjson
from ..access.routes import Route

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
        return self.refusal_in(data)

    def refusal_in(self, data: Any, root: str = "", *, typed: bool = False, free: bool = False,
                   depth: int = 0) -> str | None:
        """Why ``data`` (a decoded body, or a stored collection) holds a configuration that
        would be refused; the field is named from ``root``. Where a value sits is decided by
        the structure (which key of which object), never by its dotted name: key names are
        anyone's to choose."""
        for node in _walk(data, root, depth, typed, free, top=not root):
            if node is None:
                return f"{root or 'the request body'} is nested too deeply"
            path, key, value = node.path, node.key, node.value
            if key is not None and _normal(key) == _REMOTE_CODE and value not in (False, None, 0, ""):
                return (f"{path} asks clients to run a model repository's code; chromaguard never stores that "
                        "(remove it, or set it to false)")
            if node.typed and not node.free and isinstance(value, list):
                return (f"{path} is an array where the engine expects an object (its fields by position); "
                        "write it as a JSON object")
            if key == "embedding_function" and not node.free and value is not None and not isinstance(value, dict):
                return f"{path} must be a JSON object"
            if (self.allowed_functions and isinstance(value, dict) and not node.free
                    and (key == "embedding_function" or (node.typed and value.get("type") == "known"))):
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
                why = self.refusal_in(inner, path, typed=node.typed or key in _CONFIGURATION_FIELDS,
                                      free=node.free, depth=node.depth + 1)
                if why:
                    return why
        return None


# Fields the engine deserialises into typed configuration structures (serde: a struct may
# also be written as an array of its fields in order, which would hide their names).
_CONFIGURATION_FIELDS = frozenset({"configuration", "new_configuration", "schema", "configuration_json"})
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_#$-]+")


@dataclass(frozen=True)
class _Node:
    path: str  # for messages only
    key: str | None  # the key this value sits under (None: an array item)
    value: Any
    typed: bool  # inside a typed configuration structure
    free: bool  # inside an embedding function's free-form ``config``: arrays there are data
    depth: int


def _normal(key: str) -> str:
    return key.casefold().replace("-", "_")


def _segment(key: str) -> str:
    return key if _PLAIN_KEY.fullmatch(key) else json.dumps(key)


def _walk(value: Any, path: str, depth: int, typed: bool, free: bool, *, top: bool = False,
          in_function: bool = False) -> Iterator[_Node | None]:
    """Every value below ``value`` with where it sits; None past a sane depth."""
    if depth > _MAX_DEPTH:
        yield None
        return
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{_segment(key)}" if path else _segment(key)
            item_typed = typed or (top and key in _CONFIGURATION_FIELDS)
            item_free = free or (in_function and key == "config")
            yield _Node(where, key, item, item_typed, item_free, depth)
            yield from _walk(item, where, depth + 1, item_typed, item_free,
                             in_function=key == "embedding_function" and not item_free)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            where = f"{path}[{index}]"
            yield _Node(where, None, item, typed, free, depth)
            yield from _walk(item, where, depth + 1, typed, free)
