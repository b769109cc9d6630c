"""What a span says about a Chroma request, read cheaply from the bodies.

Request bodies are only glanced at (the ``ids`` array, ``n_results``), never
parsed whole: an add can be tens of megabytes. Response bodies are parsed only
when small, and a get or query answer only as far as its ``ids``: the documents,
metadatas and embeddings after them cost far more to parse than the request did.
"""

from __future__ import annotations

import collections
import json
import re
from typing import Any

RESPONSE_PARSE_LIMIT = 256 * 1024
_N_RESULTS = re.compile(rb'"n_results"\s*:\s*(\d+)')
_IDS_KEY = re.compile(rb'"ids"\s*:\s*')
_LEADING_IDS = re.compile(rb'\s*\{\s*"ids"\s*:\s*')  # the engine writes a result's ids first
_DECODER = json.JSONDecoder()
_BATCH_OPS = frozenset({"add", "upsert", "update", "delete"})
RESULT_OPS = frozenset({"get", "query", "list_collections", "count", "create_collection", "get_collection"})
COUNTED_OPS = frozenset({"get", "query"})  # their answers only give a count: ``result_attributes``
_NO_TRACE = "0" * 32  # the engine's id when it traces nothing
_TRACE_ID = re.compile(r"[0-9a-f]{32}")


def engine_trace_id(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The trace id the engine's answer names (``chroma-trace-id``), when it is a real one."""
    found = None
    for name, value in headers:
        if name == b"chroma-trace-id":
            trace_id = value.decode("latin-1")
            if trace_id != _NO_TRACE and _TRACE_ID.fullmatch(trace_id):
                found = trace_id
    return found


def _count_ids(body: bytes) -> int | None:
    match = _IDS_KEY.search(body)
    if match is None or body[match.end():match.end() + 1] != b"[":
        return None
    start = match.end()
    end = body.find(b"]", start)
    for _ in range(64):  # an id may itself contain ']': widen until the array parses
        if end < 0:
            return None
        try:
            ids = json.loads(body[start:end + 1])
        except (ValueError, RecursionError):
            end = body.find(b"]", end + 1)
            continue
        return len(ids) if isinstance(ids, list) else None
    return None


def request_attributes(operation: str, first_chunk: bytes) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    if operation in _BATCH_OPS:
        count = _count_ids(first_chunk)
        if count is not None:
            attributes["chroma.batch_size"] = count
    elif operation == "query":
        match = _N_RESULTS.search(first_chunk)
        if match:
            attributes["chroma.n_results"] = int(match.group(1))
    elif operation == "create_collection":
        try:
            name = json.loads(first_chunk).get("name")
        except (ValueError, AttributeError, RecursionError):
            name = None
        if isinstance(name, str):
            attributes["chroma.collection.name"] = name
    return attributes


class CollectionNames:
    """Collection id → name, learnt from responses that carry both (bounded)."""

    def __init__(self, size: int = 10_000) -> None:
        self._names: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._size = size

    def get(self, collection_id: str | None) -> str | None:
        return self._names.get(collection_id) if collection_id else None

    def learn(self, item: Any) -> None:
        if isinstance(item, dict) and isinstance(item.get("id"), str) and isinstance(item.get("name"), str):
            self._names[item["id"]] = item["name"]
            self._names.move_to_end(item["id"])
            while len(self._names) > self._size:
                self._names.popitem(last=False)


def _leading_ids(body: bytes) -> Any:
    """The ``ids`` of a result whose first key it is, parsed alone; None when it is not first."""
    match = _LEADING_IDS.match(body)
    if match is None:
        return None
    start, size = match.end(), 4096
    while True:  # a prefix that holds the ids is enough: decoding the rest would cost more
        end = start + size
        try:
            return _DECODER.raw_decode(body[start:end].decode("utf-8", "replace"))[0]  # only counted
        except RecursionError:  # nested deeper than any answer of the engine's
            return None
        except ValueError:
            if end >= len(body):
                return None
            size *= 8


def result_attributes(operation: str, body: bytes) -> dict[str, Any]:
    """The result count of a get or query answer: counting only, so it may run in any thread."""
    ids = _leading_ids(body)
    if ids is None:
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            return {}
        ids = data.get("ids") if isinstance(data, dict) else None
    if not isinstance(ids, list):
        return {}
    if operation == "get":
        return {"chroma.result_count": len(ids)}
    return {"chroma.result_count": sum(len(row) for row in ids if isinstance(row, list))}


def response_attributes(operation: str, body: bytes, names: CollectionNames) -> dict[str, Any]:
    if operation in COUNTED_OPS:
        return result_attributes(operation, body)
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return {}
    attributes: dict[str, Any] = {}
    if operation == "list_collections" and isinstance(data, list):
        attributes["chroma.result_count"] = len(data)
        for item in data:
            names.learn(item)
    elif operation == "count" and isinstance(data, int):
        attributes["chroma.result_count"] = data
    elif operation in ("create_collection", "get_collection"):
        names.learn(data)
        if isinstance(data, dict) and isinstance(data.get("id"), str):
            attributes["chroma.collection.id"] = data["id"]
            if isinstance(data.get("name"), str):
                attributes["chroma.collection.name"] = data["name"]
    return attributes
