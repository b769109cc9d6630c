"""A real OTLP/gRPC receiver for tests: keeps every span and metric it is sent."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, Any]
    status_code: int
    links: list[tuple[str, str]]


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class Receiver(trace_service_pb2_grpc.TraceServiceServicer, metrics_service_pb2_grpc.MetricsServiceServicer):
    """``count_only``: count spans without turning them into Python objects (benchmarks, where
    this receiver shares the CPU with the servers measured, as a collector would not)."""

    def __init__(self, count_only: bool = False) -> None:
        self.count_only = count_only
        self.span_count = 0
        self.spans: list[Span] = []
        self.metric_names: set[str] = set()
        self.metric_services: set[str] = set()
        self.http_server: ThreadingHTTPServer | None = None
        self.http_requests = 0
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Receiver:
        self.server.start()
        return self

    def start_http(self) -> str:
        """Also accept OTLP over HTTP/protobuf; returns the base endpoint (…/v1/traces is appended)."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.path == "/v1/traces":
                    request = trace_service_pb2.ExportTraceServiceRequest()
                    request.ParseFromString(body)
                    receiver._spans(request)
                    receiver.http_requests += 1
                elif self.path == "/v1/metrics":
                    request = metrics_service_pb2.ExportMetricsServiceRequest()
                    request.ParseFromString(body)
                    receiver._metrics(request)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.http_server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http_server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.http_server.server_address[1]}"

    def stop(self) -> None:
        self.server.stop(0)
        if self.http_server is not None:
            self.http_server.shutdown()

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC method name
        if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
            self._spans(request)
            return trace_service_pb2.ExportTraceServiceResponse()
        self._metrics(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()

    def _spans(self, request: Any) -> None:
        if self.count_only:
            counted = sum(len(scoped.spans) for rs in request.resource_spans for scoped in rs.scope_spans)
            with self._lock:
                self.span_count += counted
            return
        found = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    found.append(Span(
                        service=resource.get("service.name", ""), name=s.name, trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(), parent_span_id=s.parent_span_id.hex(), kind=s.kind,
                        attributes={a.key: _value(a.value) for a in s.attributes}, status_code=s.status.code,
                        links=[(link.trace_id.hex(), link.span_id.hex()) for link in s.links]))
        with self._lock:
            self.spans.extend(found)
            self.span_count += len(found)

    def _metrics(self, request: Any) -> None:
        with self._lock:
            for resource_metrics in request.resource_metrics:
                for a in resource_metrics.resource.attributes:
                    if a.key == "service.name":
                        self.metric_services.add(_value(a.value))
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        self.metric_names.add(metric.name)

    def wait_for(self, predicate: Callable[[list[Span]], Any], timeout: float = 15.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                result = predicate(list(self.spans))
            if result:
                return result
            time.sleep(0.1)
        with self._lock:
            names = sorted({(s.service, s.name) for s in self.spans})
        raise AssertionError(f"no matching spans within {timeout}s; received {names[:40]}")

