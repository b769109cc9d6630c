"""Our span encoder gives the collector exactly the message the SDK's encoder gives, and is the
one in use on the SDK releases it was checked against (the SDK's own everywhere else)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.exporter import OTLPExporterMixin
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
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
from prometheus_client import CollectorRegistry
from support.otlp_receiver import Receiver

from chromaguard.config.settings import Settings
from chromaguard.telemetry import otlpencode
from chromaguard.telemetry.instruments import Telemetry
from chromaguard.telemetry.otlpencode import FastOTLPSpanExporter, SpanEncoder, span_exporter_class


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


def test_an_integer_beyond_int64_is_left_to_the_sdk(caplog: pytest.LogCaptureFixture) -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.get_tracer("chromaguard").start_span("s", attributes={"big": 2**63}).end()
    [span] = memory.get_finished_spans()
    with pytest.raises(ValueError, match="int64"):
        SpanEncoder().encode([span])
    exporter = FastOTLPSpanExporter(endpoint="http://127.0.0.1:9", insecure=True)
    try:
        with caplog.at_level(logging.WARNING, "chromaguard.telemetry"):
            assert exporter._translate_data([span]) == encode_spans([span])  # the SDK's own encoding
        assert "using the SDK's encoder" in caplog.text
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
    for finished in spans:
        assert ExportTraceServiceRequest.FromString(encoder.encode([finished])) == encode_spans([finished])
    assert ExportTraceServiceRequest.FromString(encoder.encode(spans)) == encode_spans(spans)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def _telemetry(receiver: Receiver, service: str) -> Telemetry:
    return Telemetry(Settings(otel_enabled=True, otel_endpoint=receiver.endpoint, otel_service_name=service),
                     registry=CollectorRegistry())


def _export_through(telemetry: Telemetry, receiver: Receiver, service: str, count: int = 5) -> None:
    """Spans ended on chromaguard's tracer provider, flushed, and received by the collector."""
    assert telemetry.tracer_provider is not None
    tracer = telemetry.tracer_provider.get_tracer("chromaguard")
    for i in range(count):
        tracer.start_span(f"GET /item/{i}", kind=SpanKind.SERVER,
                          attributes={"http.request.method": "GET", "n": i}).end()
    assert telemetry.tracer_provider.force_flush(10_000)
    got = receiver.wait_for(lambda spans: (ours := [s for s in spans if s.service == service])
                            and len(ours) >= count and ours)
    assert sorted(s.name for s in got) == [f"GET /item/{i}" for i in range(count)]
    assert {s.attributes["n"] for s in got} == set(range(count))


def _count_encodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    encode = SpanEncoder.encode

    def counting(self: SpanEncoder, spans: Sequence[ReadableSpan]) -> bytes:
        calls.append(len(spans))
        return encode(self, spans)

    monkeypatch.setattr(SpanEncoder, "encode", counting)
    return calls


def test_with_the_installed_sdk_grpc_spans_go_through_our_encoder(
        receiver: Receiver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A silent fall back to the SDK's encoder (a renamed hook, a version check gone wrong) fails here."""
    calls = _count_encodes(monkeypatch)
    with caplog.at_level(logging.WARNING, "chromaguard.telemetry"):
        assert span_exporter_class() is FastOTLPSpanExporter
        telemetry = _telemetry(receiver, "fast-encoder")
    try:
        span_exporter, metric_exporter = telemetry._exporters()  # what Telemetry() built its pipeline with
        assert type(span_exporter) is FastOTLPSpanExporter
        span_exporter.shutdown()
        metric_exporter.shutdown()
        _export_through(telemetry, receiver, "fast-encoder")
    finally:
        telemetry.shutdown()
    assert sum(calls) == 5, calls  # the collector's spans were encoded by ours, not the SDK's
    assert not caplog.records


@pytest.mark.parametrize("version", ["1.29.9", "1.46.0", "1.46.0rc1", "2.0.0", "garbage", None])
def test_an_sdk_release_outside_the_checked_ones_gets_the_sdk_encoder(
        version: str | None, receiver: Receiver, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(otlpencode, "_installed_version", lambda: version)
    calls = _count_encodes(monkeypatch)
    with caplog.at_level(logging.WARNING, "chromaguard.telemetry"):
        assert span_exporter_class() is OTLPSpanExporter
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert f"opentelemetry-exporter-otlp-proto-grpc {version or '(version unknown)'} is outside" in record.message
    assert ">=1.30,<1.46" in record.message
    caplog.clear()
    with caplog.at_level(logging.WARNING, "chromaguard.telemetry"):
        telemetry = _telemetry(receiver, f"sdk-encoder-{version}")
    try:
        assert len(caplog.records) == 1  # one line, when the exporter is built
        span_exporter, metric_exporter = telemetry._exporters()
        assert type(span_exporter) is OTLPSpanExporter
        span_exporter.shutdown()
        metric_exporter.shutdown()
        _export_through(telemetry, receiver, f"sdk-encoder-{version}")
    finally:
        telemetry.shutdown()
    assert calls == []


@pytest.mark.parametrize("version", ["1.30.0", "1.45.2", "1.45.17"])
def test_checked_releases_get_ours(version: str, monkeypatch: pytest.MonkeyPatch,
                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(otlpencode, "_installed_version", lambda: version)
    with caplog.at_level(logging.WARNING, "chromaguard.telemetry"):
        assert span_exporter_class() is FastOTLPSpanExporter
    assert not caplog.records


def test_the_checked_range_holds_the_installed_sdk_and_matches_pyproject() -> None:
    import re
    import tomllib
    from pathlib import Path

    version = otlpencode._installed_version()
    assert version is not None
    low, high = otlpencode.CHECKED_RELEASES
    assert low <= tuple(int(p) for p in version.split(".")[:2]) < high
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    [requirement] = [d for d in pyproject["project"]["dependencies"]
                     if re.match(r"opentelemetry-exporter-otlp-proto-grpc\b", d)]
    assert requirement.replace(" ", "").endswith(f">={low[0]}.{low[1]},<{high[0]}.{high[1]}")


@pytest.mark.parametrize("without", [(OTLPSpanExporter,), (OTLPSpanExporter, OTLPExporterMixin)],
                         ids=["abstract-only", "gone"])
def test_an_sdk_without_the_hook_we_override_gets_the_sdk_encoder(
        without: tuple[type, ...], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    for cls in without:
        monkeypatch.delattr(cls, "_translate_data")
    with caplog.at_level(logging.WARNING, "chromaguard.telemetry"):
        assert span_exporter_class() is OTLPSpanExporter
    [record] = caplog.records
    assert "no _translate_data to replace" in record.message


def test_when_our_encoder_raises_the_batch_still_reaches_the_collector(
        receiver: Receiver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def broken(self: SpanEncoder, spans: Sequence[ReadableSpan]) -> bytes:
        raise RuntimeError("encoder bug")

    monkeypatch.setattr(SpanEncoder, "encode", broken)
    telemetry = _telemetry(receiver, "broken-encoder")
    try:
        with caplog.at_level(logging.WARNING, "chromaguard.telemetry"):
            _export_through(telemetry, receiver, "broken-encoder")
    finally:
        telemetry.shutdown()
    assert "fast span encoding failed (encoder bug); using the SDK's encoder" in caplog.text
