"""The server span of each request, handed to the SDK whole when the request ends.

Why: the SDK's live Span checks every attribute as it is set, and the ones given at the
start twice (the sampler copies them): about 55 µs per request here, for attributes we
built ourselves from strings and numbers. The SDK still decides what is sampled (its
sampler and id generator, so ``OTEL_TRACES_SAMPLER`` works) and still batches and exports
(its span processor gets the finished ``ReadableSpan``, as from ``Span.end``).

A finished span's fields are filled in where they are first read: by the exporter, in its
thread, a batch at a time. Built on the request's path, between two of the engine's
searches, the same work ran from cold caches at several times the cost (docs/performance.md).
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

log = logging.getLogger("chromaguard.telemetry")

_UNSET = Status(StatusCode.UNSET)
_NO_PARENT = Context()  # not the ambient context: a request without traceparent starts a trace
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)


def _is_parent_based_always_on(sampler: Sampler) -> bool:
    """The SDK's default, by its very parts: a look-alike (a subclass, a copied description) is not."""
    parts = ("_root", "_remote_parent_sampled", "_remote_parent_not_sampled", "_local_parent_sampled",
             "_local_parent_not_sampled")
    expected = (ALWAYS_ON, ALWAYS_ON, ALWAYS_OFF, ALWAYS_ON, ALWAYS_OFF)
    return type(sampler) is ParentBased and all(
        getattr(sampler, name, None) is want for name, want in zip(parts, expected))


class ServerSpan:
    """What a span needs while its request is in flight: ids, start time, parent."""

    __slots__ = ("name", "context", "parent", "start_time", "attributes", "events", "links", "recording")

    def __init__(self, name: str, context: SpanContext, parent: SpanContext | None, attributes: dict[str, Any],
                 recording: bool) -> None:
        self.name = name
        self.context = context
        self.parent = parent
        self.start_time = time.time_ns()
        self.attributes = attributes
        self.events: list[Event] = []
        self.links: list[Link] = []
        self.recording = recording

    def record_exception(self, exc: BaseException) -> None:
        kind = type(exc)
        module = kind.__module__
        self.events.append(Event("exception", {
            "exception.type": f"{module}.{kind.__qualname__}" if module and module != "builtins" else kind.__qualname__,
            "exception.message": str(exc),
            "exception.stacktrace": "".join(traceback.format_exception(exc)),
            "exception.escaped": "False",
        }))

    def add_link(self, context: SpanContext, attributes: dict[str, Any]) -> None:
        self.links.append(Link(context, attributes))


# What a span learns at its end, worked out in the export thread: more attributes, a status
# (None: unset), more links.
SpanDetails = tuple[dict[str, Any], Status | None, Sequence[Link]]


class _FinishedSpan(ReadableSpan):
    """A finished span whose fields the SDK's ``ReadableSpan`` fills in on first read.

    Only the context is set at once (the batch processor reads its sampled flag when the
    span is handed over); any other field's first read builds them all, with the SDK's own
    constructor, so every field the SDK defines is there.
    """

    def __init__(self, spans: ServerSpans, span: ServerSpan, end_time: int,
                 details: Callable[[Any], SpanDetails] | None, facts: Any, status: Status | None) -> None:
        self._context = span.context
        self._pending = (spans, span, end_time, details, facts, status)

    def __getattr__(self, name: str) -> Any:
        pending = self.__dict__.pop("_pending", None)
        if pending is None:
            raise AttributeError(name)
        pending[0]._fill(self, *pending[1:])
        return getattr(self, name)


class ServerSpans:
    """Starts and ends server spans with the provider's sampler and ids, our processor and scope."""

    def __init__(self, provider: TracerProvider, processor: SpanProcessor, resource: Resource,
                 scope: InstrumentationScope) -> None:
        self._sampler = provider.sampler
        self._ids = provider.id_generator
        self._processor = processor
        # The SDK's default (parentbased_always_on) is decided here: the same answer, without
        # the sampler's context look-ups and result objects (a quarter of a traced request's span work).
        self._parent_based_always_on = _is_parent_based_always_on(self._sampler)
        self._resource = resource
        self._scope = scope
        # OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT and OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT, as the SDK reads them.
        limits = SpanLimits()
        self._max_attributes = limits.max_span_attributes
        self._max_length = limits.max_span_attribute_length

    def start(self, name: str, parent_context: Context | None, attributes: dict[str, Any] | None = None) -> ServerSpan:
        """``attributes``: what the sampler may look at; the span keeps what the sampler returns."""
        parent: SpanContext | None = None
        if parent_context is not None:
            found = trace.get_current_span(parent_context).get_span_context()
            parent = found if found.is_valid else None
        else:
            parent_context = _NO_PARENT
        trace_id = parent.trace_id if parent is not None else self._ids.generate_trace_id()
        if self._parent_based_always_on:  # a root is sampled; a (remote) parent's flag decides otherwise
            sampled = recording = parent is None or parent.trace_flags.sampled
            trace_state = parent.trace_state if parent is not None else None
            attributes = dict(attributes) if attributes and sampled else {}
        else:
            decision = self._sampler.should_sample(parent_context, trace_id, name, SpanKind.SERVER, attributes)
            attributes = dict(decision.attributes)  # what the sampler kept, as the SDK's tracer does
            sampled, recording = decision.decision.is_sampled(), decision.decision.is_recording()
            trace_state = decision.trace_state
        context = SpanContext(trace_id, self._ids.generate_span_id(), is_remote=False,
                              trace_flags=_SAMPLED if sampled else _NOT_SAMPLED, trace_state=trace_state)
        return ServerSpan(name, context, parent, attributes, recording)

    def end(self, span: ServerSpan, status: Status | None = None,
            details: Callable[[Any], SpanDetails] | None = None, facts: Any = None) -> None:
        """``details(facts)`` runs where the span is first read (the export thread): it must use
        only ``facts``, values that no longer change. What it returns completes the span."""
        if span.recording:
            self._processor.on_end(_FinishedSpan(self, span, time.time_ns(), details, facts, status))

    def _fill(self, target: _FinishedSpan, span: ServerSpan, end_time: int,
              details: Callable[[Any], SpanDetails] | None, facts: Any, status: Status | None) -> None:
        attributes: Any = span.attributes
        links: Sequence[Link] = span.links
        if details is not None:
            try:
                more, found, extra_links = details(facts)
            except Exception:  # the span still goes, with what it had at its start
                log.exception("could not complete the span %s", span.name)
            else:
                attributes.update(more)
                status = found or status
                links = [*links, *extra_links]
        if self._max_length is not None or (self._max_attributes is not None
                                            and len(attributes) > self._max_attributes):
            attributes = BoundedAttributes(self._max_attributes, attributes, max_value_len=self._max_length)
        ReadableSpan.__init__(target, span.name, span.context, span.parent, self._resource, attributes,
                              tuple(span.events), tuple(links), SpanKind.SERVER, status=status or _UNSET,
                              start_time=span.start_time, end_time=end_time, instrumentation_scope=self._scope)
