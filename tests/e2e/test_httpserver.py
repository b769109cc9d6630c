"""The front door's own HTTP/1.1 server, spoken to byte by byte: what curl, browsers and
proxies send besides the official client."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from support.procs import Guard, read_head
from support.socketless import Socketless as _Socketless

BASE = "/api/v2/tenants/default_tenant/databases/default_database"


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_response(sock: socket.socket, buffer: bytearray,
                   head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
    """One response off the socket (content-length or chunked); the rest stays in ``buffer``."""
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed before a whole head")
        buffer += data
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    buffer[:] = rest
    if head_only or status in (100, 204, 304):
        return status, headers, b""
    if headers.get("transfer-encoding") == "chunked":
        body = bytearray()
        while True:
            while b"\r\n" not in buffer:
                buffer += sock.recv(65536)
            size_line, _, _ = bytes(buffer).partition(b"\r\n")
            size = int(size_line, 16)
            while len(buffer) < len(size_line) + 2 + size + 2:
                buffer += sock.recv(65536)
            start = len(size_line) + 2
            body += buffer[start:start + size]
            del buffer[:start + size + 2]
            if size == 0:
                return status, headers, bytes(body)
    length = int(headers.get("content-length", "0"))
    while len(buffer) < length:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed mid-body")
        buffer += data
    body = bytes(buffer[:length])
    del buffer[:length]
    return status, headers, body


def _closed(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_pipelined_requests_are_answered_in_order(guard: Guard) -> None:
    with _connect(guard.port) as sock:
        sock.sendall(b"GET /api/v2/version HTTP/1.1\r\nhost: x\r\n\r\n"
                     b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"
                     b"GET /api/v2/heartbeat HTTP/1.1\r\nhost: x\r\n\r\n")
        buffer = bytearray()
        answers = [_read_response(sock, buffer) for _ in range(3)]
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert json.loads(answers[0][2]).count(".") >= 1  # the engine's version string
    assert json.loads(answers[1][2]) == {"status": "ok"}
    assert "nanosecond heartbeat" in json.loads(answers[2][2])


def test_expect_100_continue_gets_continue_before_the_body(guard: Guard, name: str) -> None:
    body = json.dumps({"name": name}).encode()
    with _connect(guard.port) as sock:
        sock.sendall(f"POST {BASE}/collections HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     f"content-length: {len(body)}\r\nexpect: 100-continue\r\n\r\n".encode())
        buffer = bytearray()
        status, _, _ = _read_response(sock, buffer, head_only=True)
        assert status == 100  # curl waits for this before it sends a body over 1 KiB
        sock.sendall(body)
        status, _, answer = _read_response(sock, buffer)
    assert status == 200 and json.loads(answer)["name"] == name


def test_malformed_request_gets_400_and_the_connection_closes(guard: Guard) -> None:
    with _connect(guard.port) as sock:
        sock.sendall(b"GET /api/v2/version HTTP/1.1\r\nhost: x\r\nbroken header line\r\n\r\n")
        status, headers, body = _read_response(sock, bytearray())
        assert status == 400 and headers["connection"] == "close"
        assert "malformed HTTP request" in json.loads(body)["message"]
        assert _closed(sock)
    assert httpx.get(guard.url + "/healthz").status_code == 200  # the server itself is fine


def test_request_target_must_be_a_path(guard: Guard) -> None:
    with _connect(guard.port) as sock:
        sock.sendall(b"GET http://example.com/api/v2/version HTTP/1.1\r\nhost: example.com\r\n\r\n")
        status, _, body = _read_response(sock, bytearray())
    assert status == 400 and "must be a path" in json.loads(body)["message"]


def test_oversized_request_head_gets_431(guard: Guard) -> None:
    with _connect(guard.port) as sock:
        sock.sendall(b"GET /api/v2/version HTTP/1.1\r\nhost: x\r\nx-padding: " + b"a" * 40_000 + b"\r\n\r\n")
        status, _, body = _read_response(sock, bytearray())
        assert status == 431 and "larger than 32768 bytes" in json.loads(body)["message"]
        assert _closed(sock)


def test_http_1_0_client_gets_its_answer_and_a_close(guard: Guard) -> None:
    with _connect(guard.port) as sock:
        sock.sendall(b"GET /api/v2/version HTTP/1.0\r\n\r\n")
        status, headers, body = _read_response(sock, bytearray())
        assert status == 200 and json.loads(body)
        assert headers["connection"] == "close"
        assert _closed(sock)


def test_head_has_no_body_and_keeps_the_connection(guard: Guard) -> None:
    with _connect(guard.port) as sock:
        buffer = bytearray()
        sock.sendall(b"HEAD /api/v2/version HTTP/1.1\r\nhost: x\r\n\r\n")
        status, headers, _ = _read_response(sock, buffer, head_only=True)
        assert status == 200 and int(headers["content-length"]) > 0
        sock.sendall(b"GET /api/v2/version HTTP/1.1\r\nhost: x\r\n\r\n")
        status, headers, body = _read_response(sock, buffer)
        assert status == 200 and len(body) == int(headers["content-length"])  # no stray HEAD body before it


def test_half_closed_client_still_gets_its_answer(guard: Guard) -> None:
    with _connect(guard.port) as sock:
        sock.sendall(b"GET /api/v2/version HTTP/1.1\r\nhost: x\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        status, _, body = _read_response(sock, bytearray())
        assert status == 200 and json.loads(body)


def test_client_leaving_mid_body_and_mid_response_leaves_the_server_serving(guard: Guard, name: str) -> None:
    cid = httpx.post(f"{guard.url}{BASE}/collections", json={"name": name}).json()["id"]
    for _ in range(20):
        with _connect(guard.port) as sock:  # head and half a body, then gone
            sock.sendall(f"POST {BASE}/collections/{cid}/add HTTP/1.1\r\nhost: x\r\n"
                         f"content-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"ids\": [".encode())
        with _connect(guard.port) as sock:  # a whole request, gone before the answer
            sock.sendall(f"GET {BASE}/collections/{cid}/count HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    r = httpx.post(f"{guard.url}{BASE}/collections/{cid}/add", json={"ids": ["a"], "embeddings": [[1.0, 2.0]]})
    assert r.status_code in (200, 201), r.text
    assert httpx.get(f"{guard.url}{BASE}/collections/{cid}/count").json() == 1


def test_slow_reader_gets_every_byte_of_a_large_response(guard: Guard, name: str) -> None:
    cid = httpx.post(f"{guard.url}{BASE}/collections", json={"name": name}).json()["id"]
    ids = [f"id-{i}" for i in range(2000)]
    httpx.post(f"{guard.url}{BASE}/collections/{cid}/add", timeout=60,
               json={"ids": ids, "embeddings": [[float(i)] * 384 for i in range(2000)]}).raise_for_status()
    expected = httpx.post(f"{guard.url}{BASE}/collections/{cid}/get", timeout=60,
                          json={"include": ["embeddings"]}).content
    assert len(expected) > 4_000_000
    with _connect(guard.port) as sock:
        body = b'{"include": ["embeddings"]}'
        sock.sendall(f"POST {BASE}/collections/{cid}/get HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     f"content-length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(1.0)  # the front door has to stop reading the engine meanwhile, not buffer or drop
        status, _, got = _read_response(sock, bytearray())
    assert status == 200 and got == expected


class _ClosesSecondRequest(threading.Thread):
    """An upstream that, like a server closing an idle keep-alive connection just as a request
    arrives, drops every connection's second request unanswered."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests = 0

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            for n in range(2):
                if b"\r\n\r\n" not in read_head(conn):
                    return  # closed before a whole request
                self.requests += 1
                if n == 1:
                    return  # closed without a word: nothing was processed
                body = b'"1.0.0"'
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (len(body), body))


@pytest.fixture
def flaky_upstream() -> Iterator[_ClosesSecondRequest]:
    server = _ClosesSecondRequest()
    server.start()
    yield server
    server.listener.close()


def test_request_on_a_connection_the_upstream_just_closed_goes_again(flaky_upstream: _ClosesSecondRequest,
                                                                    tmp_path) -> None:
    with Guard("--upstream", f"http://127.0.0.1:{flaky_upstream.port}", data_dir=tmp_path / "d") as service:
        with httpx.Client(base_url=service.url) as client:
            answers = [client.get("/api/v2/version") for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 200]
    assert all(r.json() == "1.0.0" for r in answers)
    assert flaky_upstream.requests >= 5  # two of them dropped and sent again on a fresh connection


def _relay_scene(timeout: float) -> tuple[object, _Socketless, object, _Socketless]:
    """A front door relaying from its callbacks: (client connection, its transport, engine connection, its
    transport)."""
    from chromaguard.http11.client import EngineConnection, UpstreamPool
    from chromaguard.http11.server import ClientConnection, HttpServer
    from chromaguard.proxy.frontdoor import AlwaysAvailable, FrontDoor

    pool = UpstreamPool("http://127.0.0.1:9")
    engine = EngineConnection()
    engine_side = _Socketless()
    engine.connection_made(engine_side)  # type: ignore[arg-type]
    engine.complete = True
    pool.release(engine)
    door = FrontDoor(pool, AlwaysAvailable(), max_payload_bytes=1 << 20, upstream_timeout=timeout)
    client = ClientConnection(HttpServer(door))
    client_side = _Socketless()
    client.connection_made(client_side)  # type: ignore[arg-type]
    return client, client_side, engine, engine_side


def test_engine_connection_goes_back_to_the_pool_reading_after_a_slow_client() -> None:
    """A response whose last bytes arrive just as the client stops keeping up: the engine
    connection was paused for that client, and must not return to the pool paused (the next
    request on it would never be read)."""
    import asyncio

    async def scenario() -> None:
        client, _, engine, engine_side = _relay_scene(5)
        client.data_received(b"GET /api/v2/collections HTTP/1.1\r\nhost: x\r\n\r\n")  # type: ignore[attr-defined]
        assert engine_side.written, "the request went to the engine from the callback"
        client.pause_writing()  # type: ignore[attr-defined]  # the client's buffer is full
        engine.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n[]")  # type: ignore[attr-defined]
        pool = client.server.handler.pool  # type: ignore[attr-defined]
        assert pool.idle() is engine and engine_side.reading

    asyncio.run(scenario())


def test_an_engine_that_stops_answering_gets_a_504_after_the_timeout() -> None:
    import asyncio

    async def scenario() -> None:
        client, client_side, engine, engine_side = _relay_scene(0.3)
        started = asyncio.get_running_loop().time()
        client.data_received(b"GET /api/v2/collections HTTP/1.1\r\nhost: x\r\n\r\n")  # type: ignore[attr-defined]
        assert engine_side.written, "the request went to the engine from the callback"
        while not client_side.written and asyncio.get_running_loop().time() - started < 5:
            await asyncio.sleep(0.02)
        waited = asyncio.get_running_loop().time() - started
        answer = b"".join(client_side.written)
        assert answer.startswith(b"HTTP/1.1 504 "), answer
        assert b"did not answer in time" in answer
        assert 0.3 <= waited < 1.5, waited

    asyncio.run(scenario())


def _another_client(client: object) -> tuple[object, _Socketless]:
    """A second client of the same front door, with an engine connection of its own in the pool."""
    from chromaguard.http11.client import EngineConnection
    from chromaguard.http11.server import ClientConnection

    server = client.server  # type: ignore[attr-defined]
    spare = EngineConnection()
    spare.connection_made(_Socketless())  # type: ignore[arg-type]
    spare.complete = True
    server.handler.pool.release(spare)
    other, other_side = ClientConnection(server), _Socketless()
    other.connection_made(other_side)  # type: ignore[arg-type]
    return other, other_side


def test_one_request_failing_to_time_out_does_not_stop_the_others() -> None:
    import asyncio

    async def scenario() -> None:
        first, first_side, engine, _ = _relay_scene(0.2)
        door = first.server.handler  # type: ignore[attr-defined]
        second, second_side = _another_client(first)
        answer_error = door.answer_failure
        calls = []

        def broken_once(exchange: object, exc: Exception) -> None:
            calls.append(exc)
            if len(calls) == 1:
                raise RuntimeError("broken answer")
            answer_error(exchange, exc)

        door.answer_failure = broken_once
        for client in (first, second):
            client.data_received(b"GET /api/v2/collections HTTP/1.1\r\nhost: x\r\n\r\n")  # type: ignore[attr-defined]
        await asyncio.sleep(1.0)
        answers = [b"".join(side.written) for side in (first_side, second_side)]
        assert len(calls) == 2 and sum(a.startswith(b"HTTP/1.1 504 ") for a in answers) == 1, answers
        assert not door.watch.relays

    asyncio.run(scenario())


def test_the_timeout_still_works_on_a_new_event_loop() -> None:
    """A front door that outlives its event loop (tests, embedding) must not keep a dead timer."""
    import asyncio

    scene: list[object] = []

    async def first() -> None:  # ends with a request in flight and the watch's timer pending
        scene.extend(_relay_scene(0.2))
        scene[0].data_received(b"GET /api/v2/collections HTTP/1.1\r\nhost: x\r\n\r\n")  # type: ignore[attr-defined]

    asyncio.run(first())
    client = scene[0]

    async def third() -> None:
        other, other_side = _another_client(client)
        other.data_received(b"GET /api/v2/collections HTTP/1.1\r\nhost: x\r\n\r\n")
        await asyncio.sleep(1.0)
        assert b"".join(other_side.written).startswith(b"HTTP/1.1 504 "), other_side.written

    asyncio.run(third())


def test_an_engine_still_sending_is_not_cut_by_the_timeout() -> None:
    """The timeout counts from the engine's last bytes: a long answer that keeps coming is whole."""
    import asyncio

    async def scenario() -> None:
        client, client_side, engine, engine_side = _relay_scene(0.3)
        client.data_received(b"GET /api/v2/collections HTTP/1.1\r\nhost: x\r\n\r\n")  # type: ignore[attr-defined]
        engine.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n[")  # type: ignore[attr-defined]
        for _ in range(10):  # 1 s in all, more than three timeouts, a byte each 0.1 s
            await asyncio.sleep(0.1)
            engine.data_received(b" ")  # type: ignore[attr-defined]
        engine.data_received(b"]")  # type: ignore[attr-defined]
        answer = b"".join(client_side.written)
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"[          ]"), answer

    asyncio.run(scenario())


def test_an_answer_held_back_for_a_slow_client_is_not_cut_by_the_timeout() -> None:
    """While we stop reading the engine because the client reads slowly, the engine is not late."""
    import asyncio

    async def scenario() -> None:
        client, client_side, engine, engine_side = _relay_scene(0.2)
        client.data_received(b"GET /api/v2/collections HTTP/1.1\r\nhost: x\r\n\r\n")  # type: ignore[attr-defined]
        client.pause_writing()  # type: ignore[attr-defined]
        engine.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n[1")  # type: ignore[attr-defined]
        assert not engine_side.reading, "the engine is not read while the client cannot keep up"
        await asyncio.sleep(0.8)
        client.resume_writing()  # type: ignore[attr-defined]
        assert engine_side.reading
        engine.data_received(b",2]")  # type: ignore[attr-defined]
        answer = b"".join(client_side.written)
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"[1,2]"), answer

    asyncio.run(scenario())


def test_a_broken_chunked_body_gets_400_and_a_close(guard: Guard, name: str) -> None:
    cid = httpx.post(f"{guard.url}{BASE}/collections", json={"name": name}).json()["id"]
    with _connect(guard.port) as sock:
        sock.sendall(f"POST {BASE}/collections/{cid}/add HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     "transfer-encoding: chunked\r\n\r\nZZ\r\nxx\r\n".encode())
        status, headers, body = _read_response(sock, bytearray())
        assert status == 400 and headers["connection"] == "close"
        assert "malformed HTTP request" in json.loads(body)["message"]
        assert _closed(sock)


def test_a_client_that_half_closes_mid_body_is_let_go(guard: Guard) -> None:
    with _connect(guard.port) as sock:
        sock.sendall(f"POST {BASE}/collections HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     "content-length: 2000000\r\n\r\n{".encode())
        sock.shutdown(socket.SHUT_WR)  # the rest of the body will never come
        assert _closed(sock)
