"""OpenTelemetry traces and metrics reach a real OTLP receiver; /metrics parses and moves."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import chromadb
import httpx
import pytest
from chromadb.config import Settings
from prometheus_client.parser import text_string_to_metric_families
from support.otlp_receiver import Receiver, Span
from support.procs import Guard

BASE = "/api/v2/tenants/default_tenant/databases/default_database"
SERVER_KIND = 2  # SPAN_KIND_SERVER in OTLP
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_METRIC_EXPORT_INTERVAL": "500"}


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def traced(receiver: Receiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guard]:
    tokens = tmp_path_factory.mktemp("otel") / "tokens.json"
    tokens.write_text(json.dumps([{"token": "span-secret-token", "name": "ingest-job", "role": "admin"}]))
    with Guard("--log-format", "json", env={
        "CHROMA_SERVER_OTEL_ENABLED": "True", "CHROMA_SERVER_OTEL_ENDPOINT": receiver.endpoint,
        "CHROMA_SERVER_OTEL_SERVICE_NAME": "relink-chromadb",
        "CHROMA_SERVER_AUTH_PROVIDER": "token", "CHROMA_SERVER_AUTH_CREDENTIALS_FILE": str(tokens),
        **FAST_EXPORT}) as g:
        yield g


def _client(port: int) -> chromadb.ClientAPI:
    return chromadb.HttpClient(host="127.0.0.1", port=port, settings=Settings(
        chroma_client_auth_provider="chromadb.auth.token_authn.TokenAuthClientProvider",
        chroma_client_auth_credentials="span-secret-token", anonymized_telemetry=False))


def _ours(spans: list[Span], operation: str) -> list[Span]:
    return [s for s in spans if s.service == "relink-chromadb" and s.kind == SERVER_KIND
            and s.attributes.get("chroma.operation") == operation]


def test_spans_carry_http_and_chroma_attributes(traced: Guard, receiver: Receiver) -> None:
    client = _client(traced.port)
    col = client.create_collection("traced-items", embedding_function=None)
    col.add(ids=["a", "b", "c"], embeddings=[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    col.query(query_embeddings=[[1.0, 0.0]], n_results=2)
    add = receiver.wait_for(lambda spans: _ours(spans, "add"))[-1]
    assert add.name == "POST /api/v2/tenants/{tenant}/databases/{database}/collections/{collection_id}/add"
    assert add.attributes["http.request.method"] == "POST"
    assert add.attributes["http.response.status_code"] == 201
    assert add.attributes["http.route"].endswith("/{collection_id}/add")
    assert add.attributes["chroma.batch_size"] == 3
    assert add.attributes["chroma.tenant"] == "default_tenant"
    assert add.attributes["chroma.database"] == "default_database"
    assert add.attributes["chroma.collection.id"] == str(col.id)
    assert add.attributes["chroma.collection.name"] == "traced-items"
    assert add.attributes["enduser.id"] == "ingest-job"
    query = receiver.wait_for(lambda spans: _ours(spans, "query"))[-1]
    assert query.attributes["chroma.n_results"] == 2 and query.attributes["chroma.result_count"] == 2
    for span in receiver.spans:
        assert "span-secret-token" not in json.dumps(span.attributes), "a token leaked into a span"


def test_result_counts_of_small_and_large_answers(traced: Guard, receiver: Receiver) -> None:
    # A small answer is counted in the export thread, one over 8 KiB on the request's path:
    # both must reach the span, with the count the client saw.
    col = _client(traced.port).create_collection("counted-items", embedding_function=None)
    col.add(ids=[f"item-{i:04d}" for i in range(600)], embeddings=[[float(i), 1.0] for i in range(600)],
            documents=[f"document number {i}" for i in range(600)])
    small, large = col.get(limit=3), col.get(include=["documents"])
    assert len(small["ids"]) == 3 and len(large["ids"]) == 600
    def both(spans: list[Span]) -> list[Span]:
        gets = [s for s in _ours(spans, "get") if s.attributes.get("chroma.collection.id") == str(col.id)]
        return gets if len(gets) >= 2 else []

    gets = receiver.wait_for(both)
    assert sorted(s.attributes["chroma.result_count"] for s in gets) == [3, 600]
    assert all(s.attributes["chroma.collection.name"] == "counted-items" for s in gets)


def test_client_traceparent_is_continued(traced: Guard, receiver: Receiver) -> None:
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    response = httpx.get(traced.url + "/api/v2/version", headers={
        "traceparent": f"00-{trace_id}-{parent}-01", "x-chroma-token": "span-secret-token"})
    assert response.status_code == 200
    span = receiver.wait_for(lambda spans: [s for s in _ours(spans, "version") if s.trace_id == trace_id])[0]
    assert span.parent_span_id == parent


def test_engine_spans_reach_the_same_collector_and_match_ours(traced: Guard, receiver: Receiver) -> None:
    trace_id = "11112222333344445555666677778888"
    httpx.get(traced.url + f"{BASE}/collections", headers={
        "traceparent": f"00-{trace_id}-1111222233334444-01", "x-chroma-token": "span-secret-token"})
    ours = receiver.wait_for(lambda spans: [s for s in _ours(spans, "list_collections") if s.trace_id == trace_id])[0]
    marker = f"chromaguard-traceparent/00-{ours.trace_id}-{ours.span_id}-01"
    engine = receiver.wait_for(lambda spans: [s for s in spans if s.service == "relink-chromadb-engine"
                                              and marker in str(s.attributes.get("http.user_agent", ""))])[0]
    assert engine.attributes["http.route"] == "/api/v2/tenants/{tenant}/databases/{database}/collections"


def test_engine_error_trace_is_linked(traced: Guard, receiver: Receiver) -> None:
    response = httpx.get(traced.url + f"{BASE}/collections/no-such-collection",
                         headers={"x-chroma-token": "span-secret-token"})
    assert response.status_code == 404
    engine_trace = response.headers["chroma-trace-id"]
    ours = receiver.wait_for(lambda spans: [s for s in _ours(spans, "get_collection")
                                            if s.attributes.get("chroma.engine.trace_id") == engine_trace])[0]
    assert ours.links and ours.links[0][0] == engine_trace
    receiver.wait_for(lambda spans: [s for s in spans if s.service == "relink-chromadb-engine"
                                     and s.trace_id == engine_trace])


def test_errors_are_recorded_with_status(traced: Guard, receiver: Receiver) -> None:
    httpx.get(traced.url + f"{BASE}/collections")  # no token: 401
    denied = receiver.wait_for(lambda spans: [s for s in _ours(spans, "list_collections")
                                              if s.attributes.get("http.response.status_code") == 401])[0]
    assert denied.status_code != 2  # a client error is not a server error (status UNSET, not ERROR)


def test_metrics_exported_over_otlp(traced: Guard, receiver: Receiver) -> None:
    httpx.get(traced.url + "/api/v2/heartbeat")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and "chromaguard.requests" not in receiver.metric_names:
        time.sleep(0.2)
    assert {"chromaguard.requests", "chromaguard.request.duration", "chromaguard.engine.up"} <= receiver.metric_names
    assert "relink-chromadb" in receiver.metric_services


def test_json_logs_carry_trace_and_span_ids(traced: Guard, receiver: Receiver) -> None:
    trace_id = "aaaabbbbccccddddeeeeffff00001111"
    httpx.post(traced.url + f"{BASE}/collections", json={"name": "x"},
               headers={"traceparent": f"00-{trace_id}-aaaabbbbccccdddd-01", "x-chroma-token": "wrong-token"})
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        records = [json.loads(line) for line in traced.log.splitlines() if line.startswith("{")]
        hits = [r for r in records if r.get("trace_id") == trace_id]
        if hits:
            break
        time.sleep(0.1)
    assert hits and hits[0]["msg"] == "rejected unknown credentials" and len(hits[0]["span_id"]) == 16


# ---- /metrics --------------------------------------------------------------------------------


def _samples(url: str, headers: dict[str, str] | None = None) -> dict[tuple[str, frozenset], float]:
    text = httpx.get(url + "/metrics", headers=headers).text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if not k.startswith("otel_scope")}
            out[(sample.name, frozenset(labels.items()))] = sample.value
    return out


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_prometheus_metrics_parse_and_move(guard: Guard) -> None:
    before = _samples(guard.url)
    for _ in range(3):
        httpx.get(guard.url + "/api/v2/heartbeat")
    httpx.get(guard.url + f"{BASE}/collections/missing-one")
    after = _samples(guard.url)
    assert _value(after, "chromaguard_requests_total", operation="heartbeat", status="200") - \
        _value(before, "chromaguard_requests_total", operation="heartbeat", status="200") == 3
    assert _value(after, "chromaguard_requests_total", operation="get_collection", status="404") - \
        _value(before, "chromaguard_requests_total", operation="get_collection", status="404") == 1
    assert _value(after, "chromaguard_request_duration_seconds_count", operation="heartbeat", status="200") >= 3
    assert _value(after, "chromaguard_health_checks_total", check="heartbeat", result="pass") >= 3
    assert _value(after, "chromaguard_engine_up") == 1
    assert _value(after, "chromaguard_engine_restarts_total") == 0
    assert ("chromaguard_requests_in_flight", frozenset()) in after
    assert ("process_resident_memory_bytes", frozenset()) in after


def test_collection_count_gauge(tmp_path: Path) -> None:
    with Guard() as g:
        assert _value(_samples(g.url), "chromaguard_collections") == 0
        for name in ("one", "two"):
            httpx.post(g.url + f"{BASE}/collections", json={"name": name})
        assert _value(_samples(g.url), "chromaguard_collections") == 2


def test_auth_failures_are_counted(traced: Guard) -> None:
    token = {"x-chroma-token": "span-secret-token"}
    before = _samples(traced.url, token)
    httpx.get(traced.url + f"{BASE}/collections")
    httpx.get(traced.url + f"{BASE}/collections", headers={"x-chroma-token": "bad"})
    after = _samples(traced.url, token)
    for reason in ("missing_credentials", "forbidden"):
        assert _value(after, "chromaguard_auth_failures_total", reason=reason) - \
            _value(before, "chromaguard_auth_failures_total", reason=reason) == 1
    assert httpx.get(traced.url + "/metrics").status_code == 401, "/metrics follows the auth settings"


# ---- the collector is down, slow, or speaks HTTP ---------------------------------------------


def _black_hole() -> tuple[socket.socket, int]:
    """A collector that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock, sock.getsockname()[1]


@pytest.mark.parametrize("kind", ["down", "slow"])
def test_collector_trouble_does_not_affect_requests(kind: str) -> None:
    from support.procs import free_port

    hole = None
    if kind == "down":
        endpoint = f"http://127.0.0.1:{free_port()}"
    else:
        hole, port = _black_hole()
        endpoint = f"http://127.0.0.1:{port}"
    try:
        with Guard(env={"CHROMA_SERVER_OTEL_ENDPOINT": endpoint, "OTEL_BSP_MAX_QUEUE_SIZE": "16",
                        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "8",
                        "OTEL_BSP_SCHEDULE_DELAY": "100"}) as g:
            with httpx.Client(base_url=g.url) as http:
                statuses = [http.get("/api/v2/version").status_code for _ in range(300)]
            assert set(statuses) == {200}
            assert _value(_samples(g.url), "chromaguard_spans_dropped_total") > 0
            started = time.monotonic()
            assert g.stop() == 0
            assert time.monotonic() - started < 15, "a dead collector must not hold up shutdown"
    finally:
        if hole is not None:
            hole.close()


def test_otlp_over_http_protobuf(receiver: Receiver) -> None:
    base = receiver.start_http()
    with Guard(env={"CHROMA_SERVER_OTEL_ENDPOINT": base, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                    "CHROMA_SERVER_OTEL_SERVICE_NAME": "over-http", **FAST_EXPORT}) as g:
        httpx.get(g.url + "/api/v2/version", headers={"traceparent": "00-99998888777766665555444433332222-"
                                                                     "9999888877776666-01"})
        receiver.wait_for(lambda spans: [s for s in spans if s.service == "over-http"
                                         and s.trace_id == "99998888777766665555444433332222"])
        assert receiver.http_requests > 0


def test_engine_chatter_stays_out_of_the_info_log(traced: Guard) -> None:
    """With tracing on the engine prints about a dozen info lines per request; at the default
    level they must not flood chromaguard's log (they are there at --log-level debug)."""
    col = _client(traced.port).get_or_create_collection("chatter", embedding_function=None)
    col.upsert(ids=["a"], embeddings=[[1.0, 0.0]])
    before = len(traced.log.splitlines())
    for _ in range(5):
        col.query(query_embeddings=[[1.0, 0.0]], n_results=1)
    time.sleep(0.5)
    engine_lines = [line for line in traced.log.splitlines()[before:] if "chromaguard.engine" in line]
    assert engine_lines == []


@pytest.mark.parametrize("mode", ["requests", "all"])
def test_engine_spans_mode(mode: str, receiver: Receiver) -> None:
    """``requests`` (the default) keeps the engine's request spans, which tie to ours, and drops
    its internal spans and per-request log lines, which slow it down; ``all`` keeps everything."""
    service = f"spans-{mode}"
    env = {"CHROMA_SERVER_OTEL_ENDPOINT": receiver.endpoint, "CHROMA_SERVER_OTEL_SERVICE_NAME": service,
           **FAST_EXPORT}
    if mode != "requests":
        env["CHROMAGUARD_OTEL_ENGINE_SPANS"] = mode
    with Guard("--log-level", "debug", env=env) as g:
        col = chromadb.HttpClient(host="127.0.0.1", port=g.port, settings=Settings(anonymized_telemetry=False)) \
            .create_collection("modes", embedding_function=None)
        col.add(ids=["a", "b"], embeddings=[[1.0, 0.0], [0.0, 1.0]])
        before = len(g.log.splitlines())
        for _ in range(3):
            col.query(query_embeddings=[[1.0, 0.0]], n_results=1)
        queries = receiver.wait_for(lambda spans: len([
            s for s in spans if s.service == f"{service}-engine" and s.name.endswith("/query")
            and "chromaguard-traceparent/" in str(s.attributes.get("http.user_agent", ""))]) >= 3)
        assert queries
        time.sleep(0.3)  # the engine's output is read every 50 ms
        internal = {s.name for s in receiver.spans if s.service == f"{service}-engine"} & {"parsing_json",
                                                                                          "buffering_request_body"}
        chatter = [line for line in g.log.splitlines()[before:] if "Cache miss for collection" in line]
    assert bool(internal) == (mode == "all"), internal
    assert bool(chatter) == (mode == "all"), chatter[:3]


def test_sampler_setting_is_honoured_and_passed_on(receiver: Receiver) -> None:
    """OTEL_TRACES_SAMPLER=always_off: none of our spans leave, and the engine is told so."""
    with Guard(env={"CHROMA_SERVER_OTEL_ENDPOINT": receiver.endpoint, "CHROMA_SERVER_OTEL_SERVICE_NAME": "unsampled",
                    "OTEL_TRACES_SAMPLER": "always_off", **FAST_EXPORT}) as g:
        assert httpx.get(g.url + f"{BASE}/collections").status_code == 200
        engine = receiver.wait_for(lambda spans: [
            s for s in spans if s.service == "unsampled-engine"
            and "chromaguard-traceparent/" in str(s.attributes.get("http.user_agent", ""))])[0]
    assert str(engine.attributes["http.user_agent"]).endswith("-00"), "the engine must hear: not sampled"
    assert not [s for s in receiver.spans if s.service == "unsampled"]


def test_engine_line_levels() -> None:
    import logging

    from chromaguard.engine.process import _level_of

    warn = "  2026-11-24T12:53:46.270237Z  WARN  compaction is behind"
    assert _level_of(warn, True) == logging.WARNING
    assert _level_of("    at rust/frontend/src/server.rs:3037", True, logging.WARNING) == logging.WARNING
    assert _level_of("  2026-11-24T12:53:46.270237Z  ERROR  cannot open segment", True) == logging.ERROR
    assert _level_of("  2026-11-24T12:53:46.270237Z  INFO  Cache miss for collection x", True) == logging.DEBUG
    assert _level_of("thread 'main' panicked at src/main.rs:1", True) == logging.ERROR
    assert _level_of("Saving data to: /data", False) == logging.DEBUG


def test_request_counts_are_exact_while_another_thread_collects() -> None:
    """Requests are recorded as appends and folded in later, by the event loop or by whoever
    collects (the OTLP exporter's thread): none may be lost or counted twice."""
    import sys
    import threading

    from chromaguard.telemetry.requeststats import RequestStats

    stats = RequestStats([0.001, 0.01, 0.1])
    done = threading.Event()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the threads take turns as often as they can

    def collect() -> None:
        while not done.is_set():
            list(stats.snapshot())

    collector = threading.Thread(target=collect)
    collector.start()
    try:
        for n in range(30_000):  # past the fold threshold several times
            stats.record("query", 200 if n % 3 else 404, 0.0005 if n % 2 else 0.05)
    finally:
        done.set()
        collector.join()
        sys.setswitchinterval(interval)
    series = {(operation, status): values for operation, status, values in stats.snapshot()}
    assert sum(series[("query", 200)][3:]) == 20_000 and sum(series[("query", 404)][3:]) == 10_000
    assert series[("query", 200)][3:] == [10_000, 0, 10_000, 0]  # each latency in its bucket
    assert series[("query", 404)][1:3] == [0.0005, 0.05]  # min and max
