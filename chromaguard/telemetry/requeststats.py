"""Request counts and latency histograms, kept in plain lists and read by both exporters.

Why not the OpenTelemetry SDK's synchronous instruments: a counter add plus a histogram
record cost ~20 µs per request there (attribute cleaning and hashing, view matching), as
much as the rest of our per-request Python. Here a request costs an append to a list (the
rest of the request path runs from cold caches, where touching less is what counts); the
appends are folded into the series a few thousand at a time, and whenever the Prometheus
page or the OTLP exporter collects.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

REQUESTS = "chromaguard.requests"
DURATION = "chromaguard.request.duration"

# One series: [sum, min, max, bucket_0, ..., bucket_n] (bucket n is above the last bound).
_SUM, _MIN, _MAX, _BUCKETS = 0, 1, 2, 3
_FOLD_AT = 4096  # requests waiting to be folded in: at most this many (a few hundred KiB)


class RequestStats:
    """Requests by operation and status: counts, latency sum/min/max and bucket counts."""

    def __init__(self, bounds: Sequence[float], scope_name: str = "chromaguard", scope_version: str = "") -> None:
        self.bounds = tuple(bounds)
        self.scope_name = scope_name
        self.scope_version = scope_version
        self.started_ns = time.time_ns()
        self._series: dict[tuple[str, int], list[Any]] = {}
        self._pending: list[tuple[str, int, float]] = []  # appended on the event loop, folded by anyone
        self._lock = threading.Lock()  # one fold at a time (the loop, the OTLP exporter's thread)

    def record(self, operation: str, status: int, seconds: float) -> None:
        pending = self._pending
        pending.append((operation, status, seconds))
        if len(pending) >= _FOLD_AT:
            self._fold()

    def _fold(self) -> None:
        with self._lock:
            pending = self._pending
            count = len(pending)
            taken = pending[:count]
            del pending[:count]  # what another thread appends meanwhile stays, after these
            series_of = self._series
            bounds = self.bounds
            for operation, status, seconds in taken:
                series = series_of.get((operation, status))
                if series is None:
                    series = series_of[(operation, status)] = [0.0, seconds, seconds] + [0] * (len(bounds) + 1)
                series[_SUM] += seconds
                if seconds < series[_MIN]:
                    series[_MIN] = seconds
                elif seconds > series[_MAX]:
                    series[_MAX] = seconds
                series[_BUCKETS + bisect.bisect_left(bounds, seconds)] += 1

    def snapshot(self) -> Iterator[tuple[str, int, list[Any]]]:
        """(operation, status, copy of the series); the count is the sum of the buckets."""
        self._fold()
        with self._lock:
            copies = [(operation, status, list(series)) for (operation, status), series in self._series.items()]
        yield from copies

    # ---- Prometheus --------------------------------------------------------------------------

    def collect(self) -> Iterator[Any]:
        """prometheus_client's collector protocol: the same names the OTel exporter used."""
        names = ["operation", "status", "otel_scope_name", "otel_scope_version"]  # as the OTel exporter labels
        counter = CounterMetricFamily("chromaguard_requests", "Requests by operation and status", labels=names)
        histogram = HistogramMetricFamily("chromaguard_request_duration_seconds",
                                          "Request latency by operation and status", labels=names, unit="seconds")
        for operation, status, series in self.snapshot():
            labels = [operation, str(status), self.scope_name, self.scope_version]
            buckets = series[_BUCKETS:]
            total = sum(buckets)
            counter.add_metric(labels, total)
            cumulative, running = [], 0
            for bound, count in zip(self.bounds, buckets):
                running += count
                cumulative.append((_prometheus_float(bound), running))
            cumulative.append(("+Inf", total))
            histogram.add_metric(labels, cumulative, series[_SUM])
        yield counter
        yield histogram

    # ---- OTLP --------------------------------------------------------------------------------

    def otlp_metrics(self) -> list[Metric]:
        now = time.time_ns()
        counts: list[NumberDataPoint] = []
        latencies: list[HistogramDataPoint] = []
        for operation, status, series in self.snapshot():
            attributes: dict[str, str | int] = {"operation": operation, "status": status}
            buckets = series[_BUCKETS:]
            total = sum(buckets)
            counts.append(NumberDataPoint(attributes, self.started_ns, now, total, []))
            latencies.append(HistogramDataPoint(attributes, self.started_ns, now, total, series[_SUM], buckets,
                                                list(self.bounds), series[_MIN], series[_MAX], []))
        if not counts:
            return []
        return [
            Metric(REQUESTS, "Requests by operation and status", "{request}",
                   Sum(counts, AggregationTemporality.CUMULATIVE, True)),
            Metric(DURATION, "Request latency by operation and status", "s",
                   Histogram(latencies, AggregationTemporality.CUMULATIVE)),
        ]


def _prometheus_float(value: float) -> str:
    return repr(float(value))


class ExporterWithRequestStats(MetricExporter):
    """An OTLP metric exporter that adds the request stats to every export of the SDK's metrics."""

    def __init__(self, inner: MetricExporter, stats: RequestStats, scope: InstrumentationScope) -> None:
        super().__init__(preferred_temporality=getattr(inner, "_preferred_temporality", None),
                         preferred_aggregation=getattr(inner, "_preferred_aggregation", None))
        self.inner = inner
        self.stats = stats
        self.scope = scope

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        return self.inner.export(self._with_stats(metrics_data), timeout_millis=timeout_millis, **kwargs)

    def _with_stats(self, data: MetricsData) -> MetricsData:
        extra = self.stats.otlp_metrics()
        if not extra or not data.resource_metrics:
            return data
        first, *rest = data.resource_metrics
        scopes = list(first.scope_metrics)
        for i, scoped in enumerate(scopes):
            if scoped.scope.name == self.scope.name:
                scopes[i] = ScopeMetrics(scoped.scope, [*scoped.metrics, *extra], scoped.schema_url)
                break
        else:
            scopes.append(ScopeMetrics(self.scope, extra, ""))
        return MetricsData([ResourceMetrics(first.resource, scopes, first.schema_url), *rest])

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.inner.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)
