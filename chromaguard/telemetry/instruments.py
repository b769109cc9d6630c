"""OpenTelemetry traces and metrics, and the Prometheus ``/metrics`` page, from one set of instruments.

Exporting never touches the request path: spans go to a bounded queue drained
by a background thread (full queue → the span is dropped and counted), metrics
are collected on a timer or on scrape. chromaguard sends no product telemetry.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from .. import __version__
from ..config.settings import Settings
from .requeststats import ExporterWithRequestStats, RequestStats
from .spans import ServerSpans

log = logging.getLogger("chromaguard.telemetry")

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def otlp_protocol(settings: Settings) -> str:
    """``grpc`` or ``http/protobuf``: as configured, else guessed from the endpoint (4318 or /v1/ is HTTP)."""
    if settings.otel_protocol != "auto":
        return settings.otel_protocol
    parts = urlsplit(settings.otel_endpoint or "")
    if parts.port == 4318 or parts.path.startswith("/v1/"):
        return "http/protobuf"
    return "grpc"


def _grpc_endpoint(endpoint: str) -> tuple[str, bool]:
    parts = urlsplit(endpoint)
    secure = parts.scheme in ("https", "grpcs")
    return f"{'https' if secure else 'http'}://{parts.netloc}", not secure


def _http_endpoint(endpoint: str, signal: str) -> str:
    base = endpoint.rstrip("/")
    for suffix in ("/v1/traces", "/v1/metrics"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return f"{base}/v1/{signal}"


def engine_telemetry(settings: Settings) -> dict[str, str] | None:
    """The engine's own ``open_telemetry`` block: same collector, service ``<name>-engine`` (gRPC only)."""
    if not settings.otel_enabled or not settings.otel_endpoint or settings.otel_engine_spans == "off" \
            or otlp_protocol(settings) != "grpc":
        return None
    endpoint, _ = _grpc_endpoint(settings.otel_endpoint)
    return {"service_name": f"{settings.otel_service_name}-engine", "endpoint": endpoint}


# The engine's own filter puts every chroma crate at trace level, for its spans and its
# console alike: three spans and sixteen log lines per query, which slow the engine down
# (docs/performance.md). Its request spans come from chroma_tracing alone; warnings and errors stay.
ENGINE_REQUEST_SPANS_FILTER = "warn,chroma_tracing=trace"


def engine_log_filter(settings: Settings) -> str | None:
    """``RUST_LOG`` for the engine: None keeps the engine's own (``all``, or tracing off)."""
    if settings.otel_engine_spans == "requests" and engine_telemetry(settings) is not None:
        return ENGINE_REQUEST_SPANS_FILTER
    return None


class _CountingSpanProcessor(BatchSpanProcessor):
    """The SDK's batch processor, counting the spans it drops when its queue is full."""

    dropped = 0

    def on_end(self, span: ReadableSpan) -> None:
        queue = getattr(getattr(self, "_batch_processor", None), "_queue", None)
        if queue is not None and queue.maxlen is not None and len(queue) >= queue.maxlen:
            self.dropped += 1
        super().on_end(span)


class Telemetry:
    def __init__(self, settings: Settings, *, registry: CollectorRegistry = REGISTRY) -> None:
        self.settings = settings
        self.registry = registry
        self.enabled = settings.otel_enabled and bool(settings.otel_endpoint)
        resource = Resource.create({"service.name": settings.otel_service_name, "service.version": __version__})
        self._prometheus = PrometheusMetricReader()
        self.requests = RequestStats(_LATENCY_BUCKETS, "chromaguard", __version__)
        registry.register(self.requests)
        readers: list[Any] = [self._prometheus]
        self.tracer_provider: TracerProvider | None = None
        self.spans: ServerSpans | None = None
        self._spans: _CountingSpanProcessor | None = None
        if self.enabled:
            span_exporter, metric_exporter = self._exporters()
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

            readers.append(PeriodicExportingMetricReader(ExporterWithRequestStats(
                metric_exporter, self.requests, InstrumentationScope("chromaguard", __version__))))
            self.tracer_provider = TracerProvider(resource=resource)
            self._spans = _CountingSpanProcessor(span_exporter)
            self.tracer_provider.add_span_processor(self._spans)
            if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() != "true":  # as the SDK's tracers do
                self.spans = ServerSpans(self.tracer_provider, self._spans, resource,
                                         InstrumentationScope("chromaguard", __version__))
            logging.getLogger("opentelemetry.sdk._shared_internal").setLevel(logging.ERROR)  # drops are counted
        self.meter_provider = MeterProvider(metric_readers=readers, resource=resource)
        self.metrics = Metrics(self.meter_provider, self.requests, lambda: self._spans.dropped if self._spans else 0)

    def _exporters(self) -> tuple[Any, Any]:
        endpoint = self.settings.otel_endpoint or ""
        headers = dict(self.settings.otel_headers) or None
        if otlp_protocol(self.settings) == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

            from .otlpencode import span_exporter_class

            target, insecure = _grpc_endpoint(endpoint)
            return (span_exporter_class()(endpoint=target, insecure=insecure, headers=headers),
                    OTLPMetricExporter(endpoint=target, insecure=insecure, headers=headers))
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HTTPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HTTPSpanExporter

        return (HTTPSpanExporter(endpoint=_http_endpoint(endpoint, "traces"), headers=headers),
                HTTPMetricExporter(endpoint=_http_endpoint(endpoint, "metrics"), headers=headers))

    def prometheus_text(self) -> bytes:
        return generate_latest(self.registry)

    def shutdown(self, timeout: float = 3.0) -> None:
        """Flush what can be flushed in ``timeout``; a dead collector must not hold up shutdown."""

        def close() -> None:
            if self.tracer_provider is not None:
                self.tracer_provider.shutdown()
            self.meter_provider.shutdown(timeout_millis=timeout * 1000)

        worker = threading.Thread(target=close, daemon=True)
        worker.start()
        worker.join(timeout)
        for collector in (getattr(self._prometheus, "_collector", None), self.requests):
            try:
                self.registry.unregister(collector)  # type: ignore[arg-type]
            except (KeyError, TypeError):
                pass


class Metrics:
    """The instruments; observed values come from callables the service plugs in once it has them."""

    def __init__(self, provider: MeterProvider, requests: RequestStats, dropped_spans: Callable[[], int]) -> None:
        meter = provider.get_meter("chromaguard", __version__)
        self.request = requests.record  # (operation, status, seconds): on every request, so kept cheap
        self._auth_failures = meter.create_counter("chromaguard.auth.failures", "{request}",
                                                   "Requests refused by auth, by reason")
        self._health = meter.create_counter("chromaguard.health.checks", "{check}", "Health check results")
        self.in_flight: Callable[[], int] = lambda: 0
        self.engine_up: Callable[[], bool] = lambda: True
        self.engine_restarts: Callable[[], int] = lambda: 0
        self.collections: Callable[[], int | None] = lambda: None
        meter.create_observable_gauge("chromaguard.requests.in_flight", [self._gauge(lambda: self.in_flight())],
                                      "{request}", "Requests being handled")
        meter.create_observable_gauge("chromaguard.engine.up", [self._gauge(lambda: int(self.engine_up()))],
                                      "1", "1 while the engine answers, else 0")
        meter.create_observable_counter("chromaguard.engine.restarts", [self._gauge(lambda: self.engine_restarts())],
                                        "{restart}", "Engine restarts by the supervisor")
        meter.create_observable_gauge("chromaguard.collections", [self._gauge(lambda: self.collections())],
                                      "{collection}", "Collections in the engine")
        meter.create_observable_counter("chromaguard.spans.dropped", [self._gauge(dropped_spans)],
                                        "{span}", "Spans dropped because the export queue was full")
        self.data_dir: Any = None  # the engine's data dir, for the disk gauges (None: upstream, or not yet)
        meter.create_observable_gauge("chromaguard.data.disk.free", [self._gauge(lambda: self._disk(0))], "By",
                                      "Free bytes on the data dir's filesystem (for non-root users)")
        meter.create_observable_gauge("chromaguard.data.disk.size", [self._gauge(lambda: self._disk(1))], "By",
                                      "Size of the data dir's filesystem")
        self.audit_dropped: Callable[[], int | None] = lambda: None  # with an audit log: its lines dropped
        meter.create_observable_counter("chromaguard.audit.lines_dropped", [self._gauge(lambda: self.audit_dropped())],
                                        "{line}", "Audit log lines that could not be written (the requests went on)")
        self.backup: Callable[[], Any] = lambda: None  # the BackupState of scheduled backups, if any
        for name, unit, meaning, read, counter in (
            ("last_success_timestamp", "s", "When the newest scheduled backup succeeded (Unix time)",
             lambda b: b.last_success, False),
            ("duration", "s", "How long the last scheduled backup took", lambda b: b.last_duration_s, False),
            ("write_hold", "s", "How long the last scheduled backup held writes",
             lambda b: None if b.last_write_hold_ms is None else b.last_write_hold_ms / 1000, False),
            ("size", "By", "Size of the newest backup (its tar stream)", lambda b: b.last_size, False),
            ("uploaded", "By", "Bytes uploaded by scheduled backups", lambda b: b.uploaded_bytes, True),
            ("failures", "{failure}", "Scheduled backup runs that failed", lambda b: b.failures, True),
            ("repository_size", "By", "Bytes of packs in the backup repository", lambda b: b.repository_bytes, False),
            ("last_verification_success", "1", "1 if the last test restore matched its manifest, 0 if not",
             lambda b: None if b.verified_ok is None else int(b.verified_ok), False),
            ("last_verification_timestamp", "s", "When the last test restore ran (Unix time)",
             lambda b: b.verified_at, False),
        ):
            make = meter.create_observable_counter if counter else meter.create_observable_gauge
            make(f"chromaguard.backup.{name}", [self._backup_gauge(read)], unit, meaning)

    @staticmethod
    def _gauge(read: Callable[[], int | None]) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            value = read()
            return [] if value is None else [Observation(value)]

        return callback

    def _backup_gauge(self, read: Callable[[Any], float | int | None]) -> Callable[[CallbackOptions],
                                                                                  Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            state = self.backup()
            value = None if state is None else read(state)
            return [] if value is None else [Observation(value)]

        return callback

    def _disk(self, which: int) -> int | None:
        if self.data_dir is None:
            return None
        try:
            usage = shutil.disk_usage(self.data_dir)
        except OSError:
            return None
        return usage.free if which == 0 else usage.total

    def auth_failure(self, reason: str) -> None:
        self._auth_failures.add(1, {"reason": reason})

    def health_check(self, check: str, ok: bool) -> None:
        self._health.add(1, {"check": check, "result": "pass" if ok else "fail"})
