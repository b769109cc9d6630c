"""OTLP span encoding straight to protobuf bytes, for the gRPC span exporter.

Why: the SDK's encoder builds a protobuf object for every span, attribute and value in
Python, about 130 µs per span here: more CPU than everything else the front door spends
on a request (docs/performance.md). Our spans repeat most attribute values (method, route,
tenant, database, collection), so each key and value pair is encoded once and reused;
a span then costs a few microseconds. The output parses to the same message as the
SDK's (tests/test_otlpencode.py). It is plugged in through the SDK exporter's private
``_translate_data``, so only on the SDK releases it was checked against (``span_exporter_class``).
"""

from __future__ import annotations

import logging
import re
import struct
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan

log = logging.getLogger("chromaguard.telemetry")

SDK_EXPORTER = "opentelemetry-exporter-otlp-proto-grpc"
# The releases of SDK_EXPORTER our ``_translate_data`` was checked against, as (major, minor):
# from the lowest pyproject.toml allows to below the minor after the newest checked (1.45.2).
CHECKED_RELEASES = ((1, 30), (1, 46))

_CACHE_LIMIT = 8192
_CACHED_TYPES = (str, bool, int)  # equal values of these types encode alike (unlike 1 == 1.0, 0.0 == -0.0)
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_HAS_IS_REMOTE = 0x100  # SpanFlags: the context says whether the parent is remote
_IS_REMOTE = 0x200
_fixed64 = struct.Struct("<Q").pack
_double = struct.Struct("<d").pack
_fixed32 = struct.Struct("<I").pack


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 as protobuf writes it: ten bytes of two's complement
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes or message)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value) if value else b""


def _any_value(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10" + (b"\x01" if value else b"\x00")
    if isinstance(value, str):
        return _field(1, value.encode())
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"integer attribute {value} does not fit in int64")  # the SDK's encoder decides
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _double(value)
    if isinstance(value, bytes):
        return _field(7, value)
    if isinstance(value, Sequence):
        return _field(5, b"".join(_field(1, _any_value(item)) for item in value))
    if isinstance(value, Mapping):
        return _field(6, b"".join(_field(1, _key_value(str(k), v)) for k, v in value.items()))
    raise TypeError(f"cannot encode an attribute value of type {type(value).__name__}")


def _key_value(key: str, value: Any) -> bytes:
    return _field(1, key.encode()) + _field(2, _any_value(value))


class SpanEncoder:
    """Encodes batches of finished spans; remembers the pieces that repeat."""

    def __init__(self) -> None:
        self._attributes: dict[tuple[int, str, type, Any], bytes] = {}  # (field, key, type, value)
        self._strings: dict[tuple[int, str, str], bytes] = {}  # (field, key, value) for str values: most of them
        self._names: dict[str, bytes] = {}  # span name -> its field
        self._statuses: dict[tuple[Any, str | None], bytes] = {}  # (code, description) -> its field
        self._blocks: dict[int, tuple[Any, bytes]] = {}  # id(resource or scope) -> (it, encoded)

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        groups: dict[int, tuple[Any, dict[int, tuple[Any, list[bytes]]]]] = {}
        for span in spans:
            resource, scope = span.resource, span.instrumentation_scope
            scopes = groups.setdefault(id(resource), (resource, {}))[1]
            scopes.setdefault(id(scope), (scope, []))[1].append(self._span(span))
        out = []
        for resource, scopes in groups.values():
            body = [_field(1, self._block(resource, self._resource))]
            for scope, encoded in scopes.values():
                scope_spans = _field(1, self._block(scope, self._scope)) + b"".join(_field(2, s) for s in encoded)
                if scope is not None and scope.schema_url:
                    scope_spans += _field(3, scope.schema_url.encode())
                body.append(_field(2, scope_spans))
            if resource.schema_url:
                body.append(_field(3, resource.schema_url.encode()))
            out.append(_field(1, b"".join(body)))
        for cache in (self._attributes, self._strings, self._names, self._statuses):
            if len(cache) > _CACHE_LIMIT:  # values that never repeat must not grow it for ever
                cache.clear()
        return b"".join(out)

    def _block(self, item: Any, encode: Any) -> bytes:
        cached = self._blocks.get(id(item))
        if cached is None or cached[0] is not item:
            cached = self._blocks[id(item)] = (item, encode(item))
        return cached[1]

    def _resource(self, resource: Any) -> bytes:
        return self._attrs(1, resource.attributes)

    def _scope(self, scope: Any) -> bytes:
        if scope is None:
            return b""
        parts = [_field(1, scope.name.encode()) if scope.name else b"",
                 _field(2, scope.version.encode()) if scope.version else b"",
                 self._attrs(3, scope.attributes)]
        return b"".join(parts)

    def _attrs(self, number: int, attributes: Mapping[str, Any] | None) -> bytes:
        if not attributes:
            return b""
        cache, strings = self._attributes, self._strings
        parts = []
        for key, value in attributes.items():
            kind = type(value)
            if kind is str:
                string_key = (number, key, value)
                encoded = strings.get(string_key)
                if encoded is None:
                    encoded = strings[string_key] = _field(number, _key_value(key, value))
            elif kind in _CACHED_TYPES:
                cache_key = (number, key, kind, value)
                encoded = cache.get(cache_key)
                if encoded is None:
                    encoded = cache[cache_key] = _field(number, _key_value(key, value))
            else:  # floats, bytes, sequences: encoded each time
                encoded = _field(number, _key_value(key, value))
            parts.append(encoded)
        return b"".join(parts)

    def _span(self, span: ReadableSpan) -> bytes:
        context = span.get_span_context()
        assert context is not None  # a span the SDK ended always has one
        parent = span.parent
        flags = _HAS_IS_REMOTE | (_IS_REMOTE if parent is not None and parent.is_remote else 0)
        parts = [
            b"\x0a\x10" + context.trace_id.to_bytes(16, "big"),
            b"\x12\x08" + context.span_id.to_bytes(8, "big"),
        ]
        if context.trace_state:
            parts.append(_field(3, ",".join(f"{k}={v}" for k, v in context.trace_state.items()).encode()))
        if parent is not None:
            parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
        name = self._names.get(span.name)
        if name is None:
            name = self._names[span.name] = _field(5, span.name.encode())
        parts += (name, _varint_field(6, span.kind.value + 1),
                  b"\x39" + _fixed64(span.start_time or 0), b"\x41" + _fixed64(span.end_time or 0),
                  self._attrs(9, span.attributes), _varint_field(10, span.dropped_attributes))
        for event in span.events:
            parts.append(_field(11, b"\x09" + _fixed64(event.timestamp) + _field(2, event.name.encode())
                                + self._attrs(3, event.attributes)
                                + _varint_field(4, getattr(event, "dropped_attributes", 0))))
        parts.append(_varint_field(12, span.dropped_events))
        for link in span.links:
            linked = link.context
            link_flags = _HAS_IS_REMOTE | (_IS_REMOTE if linked.is_remote else 0)
            parts.append(_field(13, b"\x0a\x10" + linked.trace_id.to_bytes(16, "big")
                                + b"\x12\x08" + linked.span_id.to_bytes(8, "big")
                                + self._attrs(4, link.attributes)
                                + _varint_field(5, link.dropped_attributes) + b"\x35" + _fixed32(link_flags)))
        parts.append(_varint_field(14, span.dropped_links))
        status = span.status
        if status is not None:
            status_key = (status.status_code, status.description)
            encoded = self._statuses.get(status_key)
            if encoded is None:
                encoded = self._statuses[status_key] = _field(
                    15, (_field(2, status.description.encode()) if status.description else b"")
                    + _varint_field(3, status.status_code.value))
            parts.append(encoded)
        parts.append(b"\x85\x01" + _fixed32(flags))  # field 16, fixed32
        return b"".join(parts)


class FastOTLPSpanExporter(OTLPSpanExporter):
    """The SDK's gRPC span exporter (retries, timeouts, TLS, headers) with our encoder."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._encoder = SpanEncoder()

    def _translate_data(self, data: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
        try:
            return ExportTraceServiceRequest.FromString(self._encoder.encode(data))
        except Exception as exc:  # never lose a batch to our encoder: the SDK's is the reference
            log.warning("fast span encoding failed (%s); using the SDK's encoder", exc)
            return super()._translate_data(data)


def _installed_version() -> str | None:
    try:
        return metadata.version(SDK_EXPORTER)
    except metadata.PackageNotFoundError:
        return None


def _overridable(method: Any) -> bool:
    """A method the SDK exporter has and implements (not only the mixin's abstract declaration)."""
    return callable(method) and not getattr(method, "__isabstractmethod__", False)


def span_exporter_class() -> type[OTLPSpanExporter]:
    """The gRPC span exporter class to use: ours, or the SDK's where ours is not known to fit.

    Why: ours works by overriding the SDK exporter's private ``_translate_data``, which a release
    may rename (ours would then never be called) or change the contract of; the SDK's own encoder
    is slower but always right. So ours only on the checked releases (``CHECKED_RELEASES``) and
    while the SDK exporter still has the method; else the SDK's, with one warning saying why.
    """
    version = _installed_version()
    found = re.match(r"(\d+)\.(\d+)", version or "")
    release = (int(found[1]), int(found[2])) if found else None
    low, high = CHECKED_RELEASES
    if release is None or not low <= release < high:
        why = (f"{SDK_EXPORTER} {version or '(version unknown)'} is outside the releases it was checked "
               f"against (>={low[0]}.{low[1]},<{high[0]}.{high[1]})")
    elif not _overridable(getattr(OTLPSpanExporter, "_translate_data", None)):
        why = f"{SDK_EXPORTER} {version}'s span exporter has no _translate_data to replace"
    else:
        return FastOTLPSpanExporter
    log.warning("fast OTLP span encoding off: %s; spans are encoded by the SDK's encoder", why)
    return OTLPSpanExporter
