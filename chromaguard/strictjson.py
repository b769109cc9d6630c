"""JSON read the one way every reader agrees on: no key twice in an object.

With a key given twice, Python keeps the last value and other parsers may keep the first
or refuse; a check made on one reading must not be walked around by another.
"""

from __future__ import annotations

import json
from typing import Any


class DuplicateKey(ValueError):
    """An object names the same key twice."""


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise DuplicateKey(f"the key {key!r} appears twice in one object")
        found[key] = value
    return found


def loads(text: str | bytes) -> Any:
    """``json.loads`` that refuses duplicate keys (``DuplicateKey``, a ``ValueError``)."""
    return json.loads(text, object_pairs_hook=_unique)
