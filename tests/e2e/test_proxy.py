"""Transparent forwarding: bodies, headers, streaming, limits, and a remote upstream."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest
from support.clients import http_client
from support.procs import BareEngine, Guard

BASE = "/api/v2/tenants/default_tenant/databases/default_database"


def _collection(url: str, name: str) -> str:
    response = httpx.post(f"{url}{BASE}/collections", json={"name": name, "get_or_create": True})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def test_query_string_status_and_headers_pass_through(guard: Guard, bare: BareEngine, name: str) -> None:
    for url in (guard.url, bare.url):
        for suffix in ("a", "b", "c"):
            _collection(url, f"{name}-{suffix}")
    ours = httpx.get(f"{guard.url}{BASE}/collections", params={"limit": 2, "offset": 1})
    theirs = httpx.get(f"{bare.url}{BASE}/collections", params={"limit": 2, "offset": 1})
    assert ours.status_code == theirs.status_code == 200
    assert len(ours.json()) == 2
    assert ours.headers["content-type"] == theirs.headers["content-type"]
    missing = httpx.get(f"{guard.url}{BASE}/collections/{name}-nope")
    assert missing.status_code == 404 and missing.json()["error"] == "NotFoundError"
    assert missing.headers.get("chroma-trace-id") is not None, "engine headers must reach the client"


def test_large_streamed_response_is_byte_identical(guard: Guard, bare: BareEngine, name: str) -> None:
    vectors = np.random.default_rng(5).random((4000, 128), dtype=np.float32).tolist()
    bodies = []
    for url in (guard.url, bare.url):
        cid = _collection(url, name)
        for start in range(0, 4000, 1000):
            r = httpx.post(f"{url}{BASE}/collections/{cid}/add",
                           json={"ids": [f"v{i}" for i in range(start, start + 1000)],
                                 "embeddings": vectors[start:start + 1000]}, timeout=60)
            assert r.status_code == 201, r.text
        r = httpx.post(f"{url}{BASE}/collections/{cid}/get", json={"include": ["embeddings"]}, timeout=60)
        assert r.status_code == 200
        bodies.append(r.content)
    assert len(bodies[0]) > 4 * 1024 * 1024  # several times the proxy's read buffer
    assert bodies[0] == bodies[1]


def _raw_query(port: int, collection: str) -> tuple[bytes, list[bytes], bytes]:
    """A query over a raw socket: (status line, header names in order, body)."""
    import socket

    from support.procs import read_head

    body = json.dumps({"query_embeddings": [[1.0, 0.0]], "n_results": 2, "include": ["distances"]}).encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(f"POST {BASE}/collections/{collection}/query HTTP/1.1\r\nhost: x\r\n"
                     f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body)
        data = read_head(sock)
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length:"))
        while len(rest) < length:
            rest += sock.recv(65536)
    return lines[0], [line.split(b":")[0].lower() for line in lines[1:]], rest


def test_a_plain_query_answer_comes_back_as_the_engine_wrote_it(guard: Guard, bare: BareEngine, name: str) -> None:
    """End to end with the real engine: a whole plain answer is passed on as it came (a head
    rebuilt from parsed fields would have its length last)."""
    answers = []
    for url, port in ((guard.url, guard.port), (bare.url, bare.port)):
        cid = _collection(url, name)
        r = httpx.post(f"{url}{BASE}/collections/{cid}/add",
                       json={"ids": ["a", "b", "c"], "embeddings": [[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]]})
        assert r.status_code == 201, r.text
        answers.append(_raw_query(port, cid))
    ours, theirs = answers
    assert ours == theirs and ours[0] == b"HTTP/1.1 200 OK"
    assert ours[1].index(b"content-length") < len(ours[1]) - 1, ours[1]  # not moved to the end
    assert json.loads(ours[2])["ids"] == [["a", "c"]]


def test_chunked_request_body_is_forwarded(guard: Guard, name: str) -> None:
    cid = _collection(guard.url, name)
    payload = json.dumps({"ids": ["a", "b"], "embeddings": [[1.0, 2.0], [2.0, 1.0]],
                          "documents": ["one", "two"]}).encode()

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(payload), 7):
            yield payload[i:i + 7]

    r = httpx.post(f"{guard.url}{BASE}/collections/{cid}/add", content=chunks())
    assert r.status_code == 201, r.text
    got = httpx.post(f"{guard.url}{BASE}/collections/{cid}/get", json={"include": ["documents"]}).json()
    assert sorted(got["documents"]) == ["one", "two"]


def test_streamed_upload_larger_than_one_read(guard: Guard, name: str) -> None:
    cid = _collection(guard.url, name)
    vectors = np.random.default_rng(9).random((3000, 384), dtype=np.float32).tolist()
    body = json.dumps({"ids": [f"u{i}" for i in range(3000)], "embeddings": vectors}).encode()
    assert len(body) > 10 * 1024 * 1024
    r = httpx.post(f"{guard.url}{BASE}/collections/{cid}/add", content=body,
                   headers={"content-type": "application/json"}, timeout=120)
    assert r.status_code == 201, r.text
    assert httpx.get(f"{guard.url}{BASE}/collections/{cid}/count").json() == 3000
    # The body reached the engine whole and in order, though it came (and went on) in pieces.
    picked = [0, 1, 1499, 2998, 2999]
    got = httpx.post(f"{guard.url}{BASE}/collections/{cid}/get", timeout=60,
                     json={"ids": [f"u{i}" for i in picked], "include": ["embeddings"]}).json()
    stored = dict(zip(got["ids"], got["embeddings"]))
    for i in picked:
        assert np.allclose(stored[f"u{i}"], vectors[i], rtol=1e-6, atol=0), i


def test_payload_limit_413_before_reaching_engine(name: str) -> None:
    with Guard(env={"CHROMA_MAX_PAYLOAD_SIZE_BYTES": "2000"}) as service:
        cid = _collection(service.url, name)
        big = json.dumps({"ids": [f"i{i}" for i in range(200)], "embeddings": [[0.5] * 4] * 200}).encode()
        r = httpx.post(f"{service.url}{BASE}/collections/{cid}/add", content=big)
        assert r.status_code == 413
        assert "CHROMA_MAX_PAYLOAD_SIZE_BYTES" in r.json()["message"]

        def chunks() -> Iterator[bytes]:
            yield big[:1000]
            yield big[1000:]

        r = httpx.post(f"{service.url}{BASE}/collections/{cid}/add", content=chunks())
        assert r.status_code == 413
        assert httpx.get(f"{service.url}{BASE}/collections/{cid}/count").json() == 0
        small = httpx.post(f"{service.url}{BASE}/collections/{cid}/add", json={"ids": ["a"], "embeddings": [[1, 2]]})
        assert small.status_code == 201


def test_head_and_keep_alive(guard: Guard) -> None:
    with httpx.Client(base_url=guard.url) as client:
        for _ in range(50):
            assert client.get("/api/v2/version").json() == client.get("/api/v2/version").json()
        head = client.head("/api/v2/version")
        assert head.status_code in (200, 405) and head.content == b""
        assert client.get("/api/v2/heartbeat").status_code == 200


def test_client_gone_mid_upload_does_not_poison_the_pool(guard: Guard, name: str) -> None:
    import socket

    cid = _collection(guard.url, name)
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", guard.port))
        sock.sendall(f"POST {BASE}/collections/{cid}/add HTTP/1.1\r\nHost: x\r\n"
                     f"Content-Length: 100000\r\n\r\n{{\"ids\": [".encode())
        time.sleep(0.1)
        sock.close()
    with httpx.Client(base_url=guard.url) as client:
        for i in range(20):
            r = client.post(f"{BASE}/collections/{cid}/add", json={"ids": [f"k{i}"], "embeddings": [[1.0, 0.0]]})
            assert r.status_code == 201, r.text
        assert client.get(f"{BASE}/collections/{cid}/count").json() == 20


# ---- remote upstream -------------------------------------------------------------------------


def test_upstream_fronts_an_existing_chroma(bare: BareEngine, name: str, tmp_path) -> None:
    data_dir = tmp_path / "unused"
    with Guard("--upstream", bare.url, data_dir=data_dir) as service:
        through = http_client(service.port)
        col = through.create_collection(name, embedding_function=None)
        col.add(ids=["a", "b"], embeddings=[[1.0, 0.0], [0.0, 1.0]], documents=["x", "y"])
        assert col.query(query_embeddings=[[1.0, 0.1]], n_results=1)["ids"] == [["a"]]
        assert httpx.get(service.url + "/api/v1/heartbeat").status_code == 200
        direct = http_client(bare.port).get_collection(name)
        assert direct.count() == 2, "writes must land in the upstream server"
        assert "upstream http://127.0.0.1" in service.log
    assert not data_dir.exists(), "an upstream guard keeps no data of its own"


def test_upstream_down_answers_503_quickly(tmp_path) -> None:
    from support.procs import free_port, wait_http

    service = Guard("--upstream", f"http://127.0.0.1:{free_port()}", data_dir=tmp_path / "d")
    try:
        service.start(wait=False)
        wait_http(service.url + "/healthz", proc=service.proc, log=service.log_path)
        started = time.monotonic()
        r = httpx.get(f"{service.url}{BASE}/collections", timeout=10)
        assert r.status_code == 503 and r.headers["retry-after"]
        assert "cannot connect" in r.json()["message"]
        assert httpx.get(service.url + "/api/v2/heartbeat").status_code == 503
        assert time.monotonic() - started < 2
    finally:
        service.close()


class _Recorder(BaseHTTPRequestHandler):
    """Stands in for Chroma Cloud (which cannot run here) to show what reaches the upstream."""

    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:  # noqa: N802
        _Recorder.seen.append({k.lower(): v for k, v in self.headers.items()} | {"path": self.path})
        body = json.dumps({"nanosecond heartbeat": time.time_ns()}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    _Recorder.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/prefix"
    server.shutdown()


def test_upstream_token_replaces_client_credentials(recorder: str, tmp_path) -> None:
    with Guard("--upstream", recorder, env={"CHROMAGUARD_UPSTREAM_TOKEN": "ck-upstream"},
               data_dir=tmp_path / "d") as service:
        r = httpx.get(service.url + "/api/v2/tenants/t?x=1", headers={"x-chroma-token": "client-token",
                                                                    "authorization": "Bearer client"})
        assert r.status_code == 200
        request = _Recorder.seen[-1]
        assert request["path"] == "/prefix/api/v2/tenants/t?x=1"
        assert request["x-chroma-token"] == "ck-upstream"
        assert "authorization" not in request
        assert "ck-upstream" not in service.log
