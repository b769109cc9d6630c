"""Our span encoder gives the collector exactly the message the SDK's encoder gives."""

from __future__ import annotations

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from chromaguard.otlpencode import FastOTLPSpanExporter, SpanEncoder


def _spans() -> list[ReadableSpan]:
    memory = InMemorySpanExporter()
    spans: list[ReadableSpan] = []
    for service in ("relink-chromadb", "second-service"):
        provider = TracerProvider(resource=Resource.create({"service.name": service, "service.version": "0.1.0",
                                                            "shared": "same pair everywhere"}))
        provider.add_span_processor(SimpleSpanProcessor(memory))
        for scope, version in (("chromaguard", "0.1.0"), ("other-scope", None)):
            tracer = provider.get_tracer(scope, version, schema_url="https://opentelemetry.io/schemas/1.26.0"
                                         if version else None)
            remote = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, is_remote=True,
                                 trace_flags=TraceFlags(1), trace_state=TraceState([("vendor", "v1"), ("b", "2")]))
            with tracer.start_as_current_span(
                    "POST /api/v2/{collection_id}/query", context=set_span_in_context(NonRecordingSpan(remote)),
                    kind=SpanKind.SERVER, attributes={
                        "http.request.method": "POST", "server.port": 8000, "negative": -42, "huge": 2**62,
                        "ratio": 0.25, "flag": True, "off": False, "zero": 0, "empty": "", "unicode": "Привет ✓",
                        "list.str": ["a", "b"], "list.int": [1, -2, 3], "list.bool": [True, False],
                        "list.float": [1.5, -0.0], "shared": "same pair everywhere"}) as span:
                span.add_event("retry", {"attempt": 2, "reason": "engine closed", "shared": "same pair everywhere"})
                span.add_event("bare event")
                span.add_link(SpanContext(0x11112222333344445555666677778888, 0x1111222233334444, is_remote=True,
                                          trace_flags=TraceFlags(1)),
                              {"chroma.link": "engine trace", "shared": "same pair everywhere"})
                span.set_status(Status(StatusCode.ERROR, "HTTP 502"))
            with tracer.start_as_current_span("inner", kind=SpanKind.CLIENT,
                                              links=[Link(remote)]) as child:
                child.set_attribute("n", 1)  # a local parent, status UNSET, no description
            tracer.start_span("internal root", kind=SpanKind.INTERNAL).end()
            for kind in (SpanKind.PRODUCER, SpanKind.CONSUMER):
                tracer.start_span(kind.name, kind=kind, attributes={"n": True}).end()
    spans.extend(memory.get_finished_spans())
    assert len(spans) == 20
    return spans


def test_same_message_as_the_sdk_encoder() -> None:
    spans = _spans()
    encoder = SpanEncoder()
    ours = ExportTraceServiceRequest.FromString(encoder.encode(spans))
    assert ours == encode_spans(spans)
    again = ExportTraceServiceRequest.FromString(encoder.encode(spans))  # from the cached pieces
    assert again == ours


def test_one_span_at_a_time_and_mixed_batches() -> None:
    spans = _spans()
    encoder = SpanEncoder()
    for span in spans:
        assert ExportTraceServiceRequest.FromString(encoder.encode([span])) == encode_spans([span])
    mixed = spans[::-1]
    assert ExportTraceServiceRequest.FromString(encoder.encode(mixed)) == encode_spans(mixed)
    assert encoder.encode([]) == b""


def test_bool_and_int_of_equal_value_are_told_apart() -> None:
    """True == 1 in Python; a cache keyed on the value alone would send one as the other."""
    spans = _spans()
    encoder = SpanEncoder()
    message = ExportTraceServiceRequest.FromString(encoder.encode(spans))
    values = {}
    for resource_spans in message.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                for kv in span.attributes:
                    if kv.key == "n":
                        values[span.name] = kv.value.WhichOneof("value")
    assert values["inner"] == "int_value" and values["PRODUCER"] == "bool_value"


def test_values_equal_in_python_but_not_on_the_wire_are_kept_apart() -> None:
    """(True,) == (1,), 1 == 1.0 and 0.0 == -0.0: none may be sent as the other, from one encoder."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("chromaguard")
    for value in ((True,), (1,), (1.0,), 1, 1.0, True, 0.0, -0.0, "1"):
        tracer.start_span("s", attributes={"a": value}).end()
    spans = memory.get_finished_spans()
    encoder = SpanEncoder()
    for span in spans:
        assert ExportTraceServiceRequest.FromString(encoder.encode([span])) == encode_spans([span]), span.attributes
    assert ExportTraceServiceRequest.FromString(encoder.encode(spans)) == encode_spans(spans)


def test_an_integer_beyond_int64_is_left_to_the_sdk() -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.get_tracer("chromaguard").start_span("s", attributes={"big": 2**63}).end()
    [span] = memory.get_finished_spans()
    with pytest.raises(ValueError, match="int64"):
        SpanEncoder().encode([span])
    exporter = FastOTLPSpanExporter(endpoint="http://127.0.0.1:9", insecure=True)
    try:
        assert exporter._translate_data([span]) == encode_spans([span])  # the SDK's own encoding
    finally:
        exporter.shutdown()


def test_names_and_statuses_reused_only_where_they_are_the_same() -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("chromaguard")
    for name, status in (("GET /a", Status(StatusCode.ERROR, "HTTP 502")),
                         ("GET /a", Status(StatusCode.ERROR, "HTTP 503")),
                         ("GET /b", Status(StatusCode.OK)), ("GET /b", Status(StatusCode.ERROR)),
                         ("GET /a", Status(StatusCode.UNSET)), ("GET /c", Status(StatusCode.ERROR, "HTTP 502"))):
        with tracer.start_as_current_span(name) as span:
            span.set_status(status)
    spans = memory.get_finished_spans()
    encoder = SpanEncoder()
    for span in spans:
        assert ExportTraceServiceRequest.FromString(encoder.encode([span])) == encode_spans([span])
    assert ExportTraceServiceRequest.FromString(encoder.encode(spans)) == encode_spans(spans)
