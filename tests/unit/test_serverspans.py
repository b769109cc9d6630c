"""Server spans built whole at the end: the SDK's sampler, ids, processor and encoders still apply."""

from __future__ import annotations

import pytest
from opentelemetry.context import attach, detach
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from chromaguard.telemetry.otlpencode import SpanEncoder
from chromaguard.telemetry.spans import ServerSpans

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
ENGINE_TRACE = 0x11112222333344445555666677778888


def _spans(provider: TracerProvider) -> tuple[ServerSpans, InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    resource = Resource.create({"service.name": "relink-chromadb"})
    return ServerSpans(provider, SimpleSpanProcessor(memory), resource, InstrumentationScope("chromaguard", "0.1.0")), \
        memory


def _parent(flags: str) -> object:
    return TraceContextTextMapPropagator().extract({"traceparent": f"00-{TRACE_ID}-{PARENT}-{flags}",
                                                    "tracestate": "vendor=v1"})


def test_a_finished_span_carries_everything_given() -> None:
    spans, memory = _spans(TracerProvider())
    span = spans.start("POST /api/v2/{collection_id}/query", _parent("01"), {"chroma.operation": "query"})
    span.attributes["http.response.status_code"] = 502
    span.add_link(SpanContext(0x11112222333344445555666677778888, 1, is_remote=True,
                              trace_flags=TraceFlags(TraceFlags.SAMPLED)), {"chroma.link": "engine trace"})
    try:
        raise ConnectionResetError("engine went away")
    except ConnectionResetError as exc:
        span.record_exception(exc)
    spans.end(span, Status(StatusCode.ERROR, "HTTP 502"))
    [done] = memory.get_finished_spans()
    assert done.kind == SpanKind.SERVER and done.name == "POST /api/v2/{collection_id}/query"
    assert f"{done.context.trace_id:032x}" == TRACE_ID and f"{done.parent.span_id:016x}" == PARENT
    assert done.parent.is_remote and done.context.trace_state.get("vendor") == "v1"
    assert done.attributes == {"chroma.operation": "query", "http.response.status_code": 502}
    assert done.status.status_code == StatusCode.ERROR and done.status.description == "HTTP 502"
    assert done.events[0].name == "exception"
    assert done.events[0].attributes["exception.type"] == "ConnectionResetError"
    assert "engine went away" in done.events[0].attributes["exception.stacktrace"]
    assert done.links[0].attributes["chroma.link"] == "engine trace"
    assert done.start_time <= done.end_time
    assert ExportTraceServiceRequest.FromString(SpanEncoder().encode([done])) == encode_spans([done])



class _Kept(SimpleSpanProcessor):
    """Keeps what it is handed, unread (as the batch processor's queue does until export)."""

    def __init__(self) -> None:
        super().__init__(InMemorySpanExporter())
        self.kept: list = []

    def on_end(self, span) -> None:  # type: ignore[no-untyped-def]
        if span.context.trace_flags.sampled:
            self.kept.append(span)


def test_details_are_worked_out_where_the_span_is_first_read() -> None:
    kept = _Kept()
    spans = ServerSpans(TracerProvider(), kept, Resource.create({}), InstrumentationScope("chromaguard", "0.1.0"))
    calls: list[object] = []

    def details(facts: object) -> tuple[dict, Status, list]:
        calls.append(facts)
        engine = SpanContext(ENGINE_TRACE, 1, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
        return {"http.response.status_code": 503}, Status(StatusCode.ERROR, "HTTP 503"), [Link(engine)]

    span = spans.start("GET /x", None, {"http.route": "/x"})
    spans.end(span, None, details, ("the", "facts"))
    [handed] = kept.kept
    assert calls == [], "the details were worked out on the request's path"
    assert handed.attributes == {"http.route": "/x", "http.response.status_code": 503}
    assert handed.status.description == "HTTP 503" and handed.links[0].context.trace_id == ENGINE_TRACE
    assert calls == [("the", "facts")], "worked out once, when first read"
    encoded = ExportTraceServiceRequest.FromString(SpanEncoder().encode([handed]))
    assert encoded == encode_spans([handed])


def test_a_failing_details_builder_still_exports_the_span(caplog: pytest.LogCaptureFixture) -> None:
    spans, memory = _spans(TracerProvider())

    def broken(facts: object) -> tuple[dict, None, list]:
        raise KeyError("no such fact")

    span = spans.start("GET /y", None, {"http.route": "/y"})
    spans.end(span, Status(StatusCode.ERROR, "HTTP 500"), broken, ())
    [done] = memory.get_finished_spans()
    assert done.attributes == {"http.route": "/y"} and done.status.description == "HTTP 500"
    assert "could not complete the span GET /y" in caplog.text

def test_a_new_trace_gets_fresh_ids() -> None:
    spans, memory = _spans(TracerProvider())
    first, second = (spans.start("GET /api/v2/version", None, {}) for _ in range(2))
    assert first.parent is None and first.context.trace_id != second.context.trace_id
    for span in (first, second):
        spans.end(span)
    assert [s.parent for s in memory.get_finished_spans()] == [None, None]
    assert memory.get_finished_spans()[0].status.status_code == StatusCode.UNSET


def test_the_sampler_decides() -> None:
    """OTEL_TRACES_SAMPLER reaches the provider; a trace it drops is never exported, and a
    caller's sampled trace is still followed under a parent-based sampler."""
    spans, memory = _spans(TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.0))))
    dropped = spans.start("GET /api/v2/version", None, {})
    assert not dropped.context.trace_flags.sampled
    spans.end(dropped)
    followed = spans.start("GET /api/v2/version", _parent("01"), {})
    spans.end(followed)
    unsampled_parent = spans.start("GET /api/v2/version", _parent("00"), {})
    spans.end(unsampled_parent)
    assert [f"{s.context.trace_id:032x}" for s in memory.get_finished_spans()] == [TRACE_ID]


def test_attribute_limits_from_the_environment_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "10")
    spans, memory = _spans(TracerProvider())
    span = spans.start("GET /api/v2/version", None, {})
    span.attributes["user_agent.original"] = "a-very-long-user-agent-from-a-client"
    spans.end(span)
    assert memory.get_finished_spans()[0].attributes["user_agent.original"] == "a-very-lon"


def test_the_sampler_sees_the_route_and_no_ambient_trace() -> None:
    seen: list[object] = []

    class Spy(ParentBased):
        def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None,
                          trace_state=None):  # type: ignore[no-untyped-def]
            seen.append(dict(attributes or {}))
            return super().should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    spans, memory = _spans(TracerProvider(sampler=Spy(TraceIdRatioBased(0.0))))
    ambient = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, is_remote=True,
                          trace_flags=TraceFlags(TraceFlags.SAMPLED))
    token = attach(set_span_in_context(NonRecordingSpan(ambient)))
    try:
        span = spans.start("GET /api/v2/version", None, {"http.route": "/api/v2/version"})
    finally:
        detach(token)
    assert seen == [{"http.route": "/api/v2/version"}]
    assert span.parent is None and not span.recording, "a request without traceparent starts its own trace"
    assert span.context.trace_id != ambient.trace_id


def test_facts_from_answers_never_carry_a_missing_name() -> None:
    from chromaguard.telemetry.attributes import CollectionNames, response_attributes

    names = CollectionNames()
    facts = response_attributes("get_collection", b'{"id": "c1", "name": null}', names)
    assert facts == {"chroma.collection.id": "c1"}
    facts = response_attributes("create_collection", b'{"id": "c2", "name": "docs"}', names)
    assert facts == {"chroma.collection.id": "c2", "chroma.collection.name": "docs"} and names.get("c2") == "docs"


def test_the_sdk_default_sampler_is_decided_here_with_the_same_answers() -> None:
    """parentbased_always_on (the SDK's default) without the sampler's machinery: a root is
    sampled, a caller's flag is followed and its trace state kept, a dropped trace records nothing."""
    assert TracerProvider().sampler.get_description() == ParentBased(ALWAYS_ON).get_description()
    provider = TracerProvider(sampler=ParentBased(ALWAYS_ON))  # its own: the SDK's default is shared
    reference = ParentBased(ALWAYS_ON)
    spans, memory = _spans(provider)
    calls: list[object] = []
    provider.sampler.should_sample = lambda *args, **kwargs: calls.append(args)  # type: ignore[method-assign]
    for parent in (None, _parent("01"), _parent("00")):
        span = spans.start("POST /api/v2/{collection_id}/query", parent, {"http.route": "/q"})
        expected = reference.should_sample(parent, span.context.trace_id, span.name, SpanKind.SERVER,
                                           {"http.route": "/q"})
        assert span.context.trace_flags.sampled == expected.decision.is_sampled()
        assert span.recording == expected.decision.is_recording()
        assert dict(span.context.trace_state) == dict(expected.trace_state or {})
        assert span.attributes == dict(expected.attributes)
        spans.end(span)
    assert calls == [], "the default sampler went through the SDK's should_sample"
    assert [s.parent is None for s in memory.get_finished_spans()] == [True, False]


def test_result_counts_come_from_the_leading_ids_alone() -> None:
    from chromaguard.telemetry.attributes import CollectionNames, response_attributes

    names = CollectionNames()
    # As the engine writes them: ids first (one may hold "]"), then metadatas that may say "ids" too.
    get = b'{"ids":["a","b]","c"],"documents":["x","y","z"],"metadatas":[{"ids":[1,2,3,4,5]},null,null]}'
    assert response_attributes("get", get, names) == {"chroma.result_count": 3}
    query = b'{"ids":[["a","b]"],["c"]],"metadatas":[[{"ids":["z"]},null],[null]],"distances":[[0.1,0.2],[0.3]]}'
    assert response_attributes("query", query, names) == {"chroma.result_count": 3}
    # Nothing after the ids is parsed (documents and embeddings are the bulk of an answer).
    assert response_attributes("get", b'{"ids":["a","b"],"documents":[' + b"\xff" * 10, names) == \
        {"chroma.result_count": 2}
    many = b'{"ids":[' + b",".join(b'"id-%d-\xc3\xa9"' % i for i in range(3000)) + b'],"documents":[' + b"\xff" * 10
    assert response_attributes("get", many, names) == {"chroma.result_count": 3000}, "ids longer than a first look"
    # Ids not first: the whole answer is parsed, as before.
    assert response_attributes("get", b'{"documents":["x"],"ids":["a"]}', names) == {"chroma.result_count": 1}
    assert response_attributes("query", b'{"ids": "oops"}', names) == {}
    assert response_attributes("get", b"not json", names) == {}
    deep = b"[" * 100_000 + b"]" * 100_000
    assert response_attributes("get", b'{"ids":' + deep + b"}", names) == {}
    assert response_attributes("list_collections", deep, names) == {}


def test_request_bodies_nested_too_deep_give_no_facts() -> None:
    from chromaguard.telemetry.attributes import request_attributes

    deep = b"[" * 100_000 + b"]" * 100_000
    assert request_attributes("add", b'{"ids":' + deep + b"}") == {}
    assert request_attributes("create_collection", b'{"name":' + deep + b"}") == {}


def test_a_sampler_that_looks_like_the_default_is_still_asked() -> None:
    """A root sampler with the default's description (a StaticSampler subclass) keeps its say."""
    from opentelemetry.sdk.trace.sampling import Decision, SamplingResult, StaticSampler

    class Tagging(StaticSampler):
        def should_sample(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            result = super().should_sample(*args, **kwargs)
            return SamplingResult(result.decision, {**(result.attributes or {}), "sampler.tag": "x"},
                                  result.trace_state)

    sampler = ParentBased(Tagging(Decision.RECORD_AND_SAMPLE))
    assert sampler.get_description() == ParentBased(ALWAYS_ON).get_description()
    spans, memory = _spans(TracerProvider(sampler=sampler))
    span = spans.start("GET /api/v2/version", None, {"a": 1})
    assert span.attributes == {"a": 1, "sampler.tag": "x"}
