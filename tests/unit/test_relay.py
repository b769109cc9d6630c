"""A forwarded request on its way to the engine and back, with socketless connections.

Each scene feeds bytes to the client side and the engine side of a front door and checks what
each side was sent: the request the engine reads, the answer the client reads (as HTTP:
status, fields, body), what was counted, and where the engine connection went.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httptools
import pytest
from support.socketless import Socketless

from chromaguard.access.cors import CorsPolicy
from chromaguard.http11.client import EngineConnection, UpstreamPool
from chromaguard.http11.fields import HOP_BY_HOP, NOT_RELAYED
from chromaguard.http11.server import ClientConnection, HttpServer
from chromaguard.proxy.frontdoor import AlwaysAvailable, FrontDoor

QUERY = b"/api/v2/tenants/default_tenant/databases/default_database/collections/6f1c/query"
BODY = json.dumps({"query_embeddings": [[0.25, 0.5]], "n_results": 2}).encode()
ANSWER_BODY = json.dumps({"ids": [["a", "b"]], "distances": [[0.1, 0.2]]}).encode()
ANSWER = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
          b"date: Tue, 01 Dec 2026 10:00:00 GMT\r\n\r\n" % len(ANSWER_BODY)) + ANSWER_BODY


def query(body: bytes = BODY, *, extra: bytes = b"", path: bytes = QUERY, version: bytes = b"1.1") -> bytes:
    """The official client's query, as it sends it."""
    return (b"POST " + path + b" HTTP/" + version + b"\r\nhost: 127.0.0.1:8000\r\naccept: */*\r\n"
            b"accept-encoding: gzip, deflate\r\nconnection: keep-alive\r\nuser-agent: Chroma Python Client\r\n"
            + extra + b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body) + body)


class _Counted:
    """Where the front door reports finished requests (the metrics' entry point)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, int]] = []
        self.in_flight: Any = None

    def request(self, operation: str, status: int, seconds: float) -> None:
        assert seconds >= 0
        self.requests.append((operation, status))


class Scene:
    """A front door with one kept-alive engine connection and one client connection."""

    def __init__(self, *, timeout: float = 30.0, cors: CorsPolicy | None = None,
                 max_payload: int = 1 << 24, backend: Any = None) -> None:
        self.pool = UpstreamPool("http://127.0.0.1:9")
        self.engine = EngineConnection()
        self.engine_side = Socketless(protocol=self.engine)
        self.engine.connection_made(self.engine_side)  # type: ignore[arg-type]
        self.engine.complete = True
        self.pool.release(self.engine)
        self.door = FrontDoor(self.pool, backend or AlwaysAvailable(), max_payload_bytes=max_payload,
                              upstream_timeout=timeout, cors=cors)
        self.door.metrics = self.counted = _Counted()  # type: ignore[assignment]
        self.client = ClientConnection(HttpServer(self.door))
        self.client_side = Socketless("10.0.0.7", protocol=None)
        self.client.connection_made(self.client_side)  # type: ignore[arg-type]

    async def play(self, steps: list[tuple[str, bytes]]) -> tuple[bytes, bytes]:
        """Feed each step's bytes to the client or the engine side (or: the client half-closes,
        the server stops); what each side was sent."""
        for side, data in steps:
            if side == "eof":
                if not self.client.eof_received():
                    self.client_side.close()
            elif side == "stop":
                self.client.server.stopping = True
            else:
                (self.client if side == "client" else self.engine).data_received(data)
            for _ in range(5):  # the general path may finish in a task
                await asyncio.sleep(0)
        return b"".join(self.engine_side.written), b"".join(self.client_side.written)


def _messages(parser_type: Any, data: bytes) -> list[tuple[object, list[tuple[bytes, bytes]], bytes]]:
    """HTTP messages as (status or method and URL, fields in lower case but framing ones, body)."""
    out: list[tuple[object, list[tuple[bytes, bytes]], bytes]] = []

    class Reader:
        def on_message_begin(self) -> None:
            self.fields: list[tuple[bytes, bytes]] = []
            self.body = b""
            self.url = b""

        def on_url(self, url: bytes) -> None:
            self.url += url

        def on_header(self, name: bytes, value: bytes) -> None:
            if name.lower() not in (b"content-length", b"transfer-encoding"):
                self.fields.append((name.lower(), value.strip()))

        def on_body(self, body: bytes) -> None:
            self.body += body

        def on_message_complete(self) -> None:
            first = parser.get_status_code() if parser_type is httptools.HttpResponseParser \
                else (parser.get_method(), self.url)
            out.append((first, sorted(self.fields), self.body))

    parser = parser_type(Reader())
    parser.feed_data(data)
    return out


def responses(data: bytes) -> list[tuple[object, list[tuple[bytes, bytes]], bytes]]:
    return _messages(httptools.HttpResponseParser, data)


def requests(data: bytes) -> list[tuple[object, list[tuple[bytes, bytes]], bytes]]:
    return _messages(httptools.HttpRequestParser, data)


def play(steps: list[tuple[str, bytes]], **options: Any) -> tuple[bytes, bytes, Scene]:
    """The steps in a fresh scene: (what the engine was sent, what the client was sent, the scene)."""
    async def run() -> tuple[bytes, bytes, Scene]:
        scene = Scene(**options)
        engine, client = await scene.play(steps)
        return engine, client, scene

    return asyncio.run(run())


SPLIT_ANSWER = [("engine", ANSWER[:60]), ("engine", ANSWER[60:])]
CHUNKED_ANSWER = [("engine", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: application/json\r\n\r\n"
                   b"%x\r\n%b\r\n0\r\n\r\n" % (len(ANSWER_BODY), ANSWER_BODY))]

# (steps, the statuses the client reads)
SCENES: dict[str, tuple[list[tuple[str, bytes]], list[int]]] = {
    "query": ([("client", query()), ("engine", ANSWER)], [200]),
    "count, with a query string": ([("client", b"GET /api/v2/tenants/t/databases/d/collections/c/count?x=1 HTTP/1.1"
                                               b"\r\nhost: x\r\n\r\n"), ("engine", ANSWER)], [200]),
    "mixed-case names and odd blanks": ([("client", query(extra=b"X-Custom-Thing:  two  words \r\nAccept-Language:\r\n")
                                           .replace(b"content-type: ", b"Content-Type:")), ("engine", ANSWER)], [200]),
    "head and body in two reads": ([("client", query()[:-len(BODY)]), ("client", BODY), ("engine", ANSWER)], [200]),
    "body in three reads, the next request in the last": (
        [("client", query()[:-30]), ("client", BODY[-30:-10]), ("client", BODY[-10:] + query(b"{}")),
         ("engine", ANSWER), ("engine", ANSWER)], [200, 200]),
    "engine's 404, whole": ([("client", query()), ("engine", b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json"
                                                             b"\r\ncontent-length: 2\r\n\r\n{}")], [404]),
    "client half-closes while the engine works": ([("client", query()), ("eof", b""), ("engine", ANSWER)], [200]),
    "server stops while the engine works": ([("client", query()), ("stop", b""), ("engine", ANSWER)], [200]),
    "an empty query": ([("client", b"GET /api/v2/tenants/t/databases/d/collections/c/count? HTTP/1.1\r\nhost: x"
                                   b"\r\n\r\n"), ("engine", ANSWER)], [200]),
    "engine's 204": ([("client", query()), ("engine", b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n"
                                                      b"date: Tue, 01 Dec 2026 10:00:00 GMT\r\n\r\n")], [204]),
    "engine's answer with a keep-alive field": (
        [("client", query()), ("engine", ANSWER.replace(b"\r\n\r\n", b"\r\nkeep-alive: timeout=5\r\n\r\n", 1))], [200]),
    "engine's head with a broken line": (
        [("client", query()), ("engine", ANSWER.replace(b"\r\n\r\n", b"\r\nbroken line\r\n\r\n", 1))], [502]),
    "two requests in one read": ([("client", query() + query(b"{}")), ("engine", ANSWER), ("engine", ANSWER)],
                                 [200, 200]),
    "answer in two reads": ([("client", query()), *SPLIT_ANSWER], [200]),
    "chunked answer": ([("client", query()), *CHUNKED_ANSWER], [200]),
    "answer closing the engine connection": (
        [("client", query()), ("engine", ANSWER.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n", 1))], [200]),
    "client asks to close, the proxy way": ([("client", query(extra=b"proxy-connection: close\r\n")),
                                             ("engine", ANSWER)], [200]),
    "client asks to close": ([("client", query().replace(b"connection: keep-alive", b"connection: close")),
                              ("engine", ANSWER)], [200]),
    "chunked request": ([("client", query().replace(b"content-length: %d" % len(BODY), b"transfer-encoding: chunked")
                         .replace(BODY, b"%x\r\n%b\r\n0\r\n\r\n" % (len(BODY), BODY))), ("engine", ANSWER)], [200]),
    "expect 100-continue": ([("client", query(extra=b"expect: 100-continue\r\n")), ("engine", ANSWER)], [200]),
    "percent-encoded path": ([("client", query(path=QUERY.replace(b"query", b"%71uery"))), ("engine", ANSWER)], [200]),
    "HTTP/1.0": ([("client", query(version=b"1.0")), ("engine", ANSWER)], [200]),
    "a write": ([("client", query(path=QUERY.replace(b"query", b"upsert"))), ("engine", ANSWER)], [200]),
    "a head the general path counts as too large": ([("client", query(extra=b"a:b\r\n" * 5600))], [431]),
    "a head just over what the general path allows": ([("client", query(extra=b"a:b\r\n" * 5450))], [431]),
    "a header line without a colon": ([("client", query(extra=b"broken line\r\n"))], [400]),
    "a folded header line": ([("client", query(extra=b"x-a: b\r\n c\r\n"))], [400]),
    "a bare LF": ([("client", query(extra=b"x-a: b\nx-b: c\r\n"))], [400]),
    "two lengths": ([("client", query().replace(b"\r\n\r\n", b"\r\ncontent-length: 3\r\n\r\n", 1))], [400]),
    "a length that is not digits": ([("client", query().replace(b"content-length: ", b"content-length: +"))], [400]),
}


@pytest.mark.parametrize("name", SCENES)
def test_the_engine_reads_the_request_and_the_client_the_answer(name: str) -> None:
    steps, statuses = SCENES[name]
    engine, client, scene = play(steps)
    assert [status for status, _, _ in responses(client)] == statuses
    answers = [data for side, data in steps if side == "engine"]
    sent = _parsed(responses, b"".join(answers))
    if statuses and statuses[0] not in (400, 431, 502) and not isinstance(sent, str):
        # Every answer reached the client as the engine gave it (framing fields aside).
        assert [(status, [f for f in fields if f[0] != b"connection"], body) for status, fields, body
                in responses(client)] == [(status, [f for f in fields if f[0] not in NOT_RELAYED], body)
                                          for status, fields, body in sent]
        # And every request reached the engine as the client sent it, less hop-by-hop fields.
        sent_requests = requests(b"".join(data for side, data in steps if side == "client"))
        added = (b"host", b"x-forwarded-for", b"x-forwarded-proto")
        assert [((method, url.rstrip(b"?")), [f for f in fields if f[0] not in HOP_BY_HOP], body)
                for (method, url), fields, body in sent_requests] == [
            (first, [f for f in fields if f[0] not in added], body) for first, fields, body in requests(engine)]
    assert scene.door.in_flight == 0


def test_the_forwarded_head_drops_hop_fields_and_says_who_asked() -> None:
    engine, _, _ = play([("client", query()), ("engine", ANSWER)])
    assert engine == (b"POST " + QUERY + b" HTTP/1.1\r\nhost: 127.0.0.1:9\r\naccept: */*\r\n"
                      b"accept-encoding: gzip, deflate\r\nuser-agent: Chroma Python Client\r\n"
                      b"content-type: application/json\r\nx-forwarded-for: 10.0.0.7\r\nx-forwarded-proto: http\r\n"
                      b"content-length: %d\r\n\r\n" % len(BODY) + BODY)


def test_relayed_requests_are_counted_and_the_connection_reused() -> None:
    steps = [("client", query()), ("engine", ANSWER),
             ("client", query()), ("engine", b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}")]
    _, _, scene = play(steps)
    assert scene.counted.requests == [("query", 200), ("query", 404)]
    assert scene.door.in_flight == 0
    assert scene.pool.idle() is scene.engine, "the engine connection went back to the pool"


def test_origin_with_cors_gets_the_cors_fields() -> None:
    steps = [("client", query(extra=b"origin: https://app.example\r\n")), ("engine", ANSWER)]
    _, client, _ = play(steps, cors=CorsPolicy(["https://app.example"]))
    assert b"access-control-allow-origin: https://app.example" in client
    assert responses(client)[0][2] == ANSWER_BODY


def test_client_asking_to_close_is_answered_and_closed() -> None:
    steps = [("client", query().replace(b"connection: keep-alive", b"connection: close")), ("engine", ANSWER)]
    _, client, scene = play(steps)
    assert b"\r\nconnection: close\r\n" in client and scene.client_side.closed


def test_client_gone_before_its_body_came_sends_nothing_and_keeps_the_engine_connection() -> None:
    async def run() -> Scene:
        scene = Scene()
        await scene.play([("client", query()[:-10])])
        scene.client.connection_lost(None)
        return scene

    scene = asyncio.run(run())
    assert scene.engine_side.written == [] and scene.counted.requests == []
    assert scene.pool.idle() is scene.engine


def test_client_gone_while_the_engine_answers_returns_the_connection() -> None:
    async def run() -> Scene:
        scene = Scene()
        await scene.play([("client", query())])
        scene.client.connection_lost(None)
        await scene.play([("engine", ANSWER)])
        return scene

    scene = asyncio.run(run())
    assert scene.counted.requests == [("query", 200)] and scene.door.in_flight == 0
    assert scene.pool.idle() is scene.engine


def test_engine_silent_past_the_timeout_gets_a_504() -> None:
    async def run() -> tuple[Scene, float]:
        scene = Scene(timeout=0.3)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await scene.play([("client", query())])
        assert scene.engine_side.written, "the request went to the engine"
        while not scene.client_side.written and loop.time() - started < 5:
            await asyncio.sleep(0.02)
        return scene, loop.time() - started

    scene, waited = asyncio.run(run())
    answer = b"".join(scene.client_side.written)
    assert answer.startswith(b"HTTP/1.1 504 ") and b"did not answer in time" in answer, answer
    assert 0.3 <= waited < 1.5, waited
    # Once: not sent again when the cut connection reports its close, nor answered or counted twice.
    assert len(requests(b"".join(scene.engine_side.written))) == 1 and len(responses(answer)) == 1
    assert scene.counted.requests == [("query", 504)] and scene.door.in_flight == 0
    assert not scene.client_side.closed, "the client's connection stays open for its next request"


def test_engine_sending_an_invalid_answer_gets_one_502_and_the_client_keeps_its_connection() -> None:
    async def run() -> Scene:
        scene = Scene()
        await scene.play([("client", query()),
                          ("engine", b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n{}")])
        await asyncio.sleep(0.05)  # the engine connection's close has been reported
        return scene

    scene = asyncio.run(run())
    answer = b"".join(scene.client_side.written)
    assert [status for status, _, _ in responses(answer)] == [502], answer
    assert not scene.client_side.closed
    assert scene.counted.requests == [("query", 502)] and scene.door.in_flight == 0
    assert len(requests(b"".join(scene.engine_side.written))) == 1


def test_engine_closing_a_kept_alive_connection_unanswered_is_retried_on_a_fresh_one() -> None:
    async def run() -> tuple[Scene, bytes]:
        engine = await asyncio.start_server(answer_once, "127.0.0.1", 0)
        port = engine.sockets[0].getsockname()[1]
        scene = Scene()
        scene.pool.retarget(f"http://127.0.0.1:{port}")  # and closes the idle one: the retry must connect
        stale = EngineConnection()
        stale.connection_made(Socketless())  # type: ignore[arg-type]
        stale.complete = True
        stale.used = True  # it carried a request before: the engine may have closed it since
        scene.pool.release(stale)
        await scene.play([("client", query())])
        stale.connection_lost(ConnectionResetError())  # the engine had closed it: nothing arrived
        for _ in range(200):
            if scene.client_side.written:
                break
            await asyncio.sleep(0.01)
        engine.close()
        return scene, b"".join(scene.client_side.written)

    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"x-forwarded-for: 10.0.0.7" in head
        await reader.readexactly(len(BODY))
        writer.write(ANSWER)
        await writer.drain()
        writer.close()

    scene, client = asyncio.run(run())
    assert responses(client) == responses(ANSWER)
    assert scene.counted.requests == [("query", 200)]


def test_an_engine_connection_closed_before_the_request_goes_is_never_written_to() -> None:
    """The retry's fresh connection, closed by an engine killed just after it was opened (its
    close not yet delivered): uvloop refuses a write there with a RuntimeError. The client gets
    one clean 5xx, no traceback."""
    class Closed(Socketless):
        def write(self, data: bytes) -> None:
            if self.closed:
                raise RuntimeError("unable to perform operation on a closed transport")
            super().write(data)

        def writelines(self, data: list[bytes]) -> None:
            self.write(b"".join(data))

    async def run() -> tuple[Scene, bytes]:
        scene = Scene()
        stale = EngineConnection()
        stale.connection_made(Socketless())  # type: ignore[arg-type]
        stale.complete = True
        stale.used = True
        scene.pool.release(stale)

        async def connect() -> EngineConnection:  # what the retry gets: a connection already dead
            dead = EngineConnection()
            transport = Closed()
            dead.connection_made(transport)  # type: ignore[arg-type]
            dead.complete = True
            transport.closed = True
            return dead

        scene.pool.connect = connect  # type: ignore[method-assign]
        await scene.play([("client", query())])
        stale.connection_lost(ConnectionResetError())  # the first try: nothing arrived, so a retry
        for _ in range(200):
            if scene.client_side.written:
                break
            await asyncio.sleep(0.01)
        return scene, b"".join(scene.client_side.written)

    scene, client = asyncio.run(run())
    assert client.startswith((b"HTTP/1.1 502 ", b"HTTP/1.1 503 ")), client[:200]
    assert [status for _, status in scene.counted.requests] in ([502], [503])


def test_a_body_over_the_payload_limit_gets_413_and_never_reaches_the_engine() -> None:
    engine, client, _ = play([("client", query())], max_payload=len(BODY) - 1)
    assert engine == b""
    assert client.startswith(b"HTTP/1.1 413 ")


def test_engine_down_gets_503_from_the_front_door() -> None:
    class Down:
        available = False
        unavailable_reason = "it is restarting"

    engine, client, _ = play([("client", query())], backend=Down())
    assert engine == b""
    assert client.startswith(b"HTTP/1.1 503 ") and b"restarting" in client


def test_answer_in_pieces_slower_than_a_timeout_tick_is_not_cut() -> None:
    """Bytes from the engine restart the watch's clock."""
    async def run() -> bytes:
        scene = Scene(timeout=0.4)  # the watch looks every 0.1 s
        head = ANSWER.index(b"\r\n\r\n") + 4
        await scene.play([("client", query()), ("engine", ANSWER[:head])])  # handed over here
        await asyncio.sleep(0.25)
        await scene.play([("engine", ANSWER[head:])])
        return b"".join(scene.client_side.written)

    assert responses(asyncio.run(run())) == responses(ANSWER)


def _parsed(parse: Any, data: bytes) -> object:
    try:
        return parse(data)
    except httptools.HttpParserError as exc:
        return f"unparseable: {type(exc).__name__}"


COUNT = b"/api/v2/tenants/default_tenant/databases/default_database/collections/6f1c/count"
ADD = b"/api/v2/tenants/default_tenant/databases/default_database/collections/6f1c/add"


def test_an_answer_before_a_streamed_body_is_all_sent_never_frees_the_connection_for_others() -> None:
    """Else the next client's request would follow a body the engine is still reading: its bytes
    would be read as the rest of that body (or a request hidden in them run unchecked)."""
    async def run() -> tuple[Scene, Socketless, bytes]:
        scene = Scene()
        started = b"GET " + COUNT + b" HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % (2 << 20) + b"x" * 1000
        await scene.play([("client", started)])
        await scene.play([("engine", b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1\r\n"
                                     b"\r\n5")])
        sent_for_a = b"".join(scene.engine_side.written)
        other = ClientConnection(scene.client.server)
        other_side = Socketless("10.0.0.8", protocol=None)
        other.connection_made(other_side)  # type: ignore[arg-type]
        other.data_received(query())
        for _ in range(5):
            await asyncio.sleep(0)
        assert b"".join(scene.engine_side.written) == sent_for_a, "nothing more on the half-fed connection"
        scene.client.connection_lost(None)  # the first client leaves mid-upload
        for _ in range(5):
            await asyncio.sleep(0)
        return scene, other_side, b"".join(scene.client_side.written)

    scene, other_side, first = asyncio.run(run())
    assert responses(first)[0][0] == 200
    assert scene.engine_side.closed and not scene.engine.alive
    # It asked for a connection of its own (none can be opened here: 503), not the half-fed one.
    answer = b"".join(other_side.written)
    assert answer.startswith(b"HTTP/1.1 503 ") and b"cannot connect" in answer, answer


def test_an_engine_going_silent_after_an_early_partial_answer_times_out() -> None:
    async def run() -> Scene:
        scene = Scene(timeout=0.3)
        started = b"POST " + QUERY + b" HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % (2 << 20) + b"x" * 1000
        await scene.play([("client", started)])
        await scene.play([("engine", b"HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")])
        await scene.play([("client", b"y" * 1000)])  # the upload notices the answer and stops
        await asyncio.sleep(0.9)  # three timeouts
        return scene

    scene = asyncio.run(run())
    assert scene.door.in_flight == 0 and scene.counted.requests == [("query", 400)]
    assert scene.client_side.closed, "the answer had begun: the client learns of the failure by the cut"


@pytest.mark.parametrize("expect", [False, True], ids=["resent from a callback", "resent from forward"])
def test_a_resend_cancelled_at_a_hard_stop_ends_the_request_and_writes_nothing_later(expect: bool) -> None:
    from chromaguard.proxy.writegate import WriteGate

    async def run() -> tuple[Scene, WriteGate, list[Socketless]]:
        scene = Scene()
        scene.door.gate = gate = WriteGate()
        scene.engine.used = True  # it carried a request before: the engine may have closed it since
        go = asyncio.Event()
        fresh: list[Socketless] = []

        async def slow_connect() -> EngineConnection:
            await go.wait()
            conn = EngineConnection()
            side = Socketless(protocol=conn)
            conn.connection_made(side)  # type: ignore[arg-type]
            fresh.append(side)
            return conn

        scene.pool.connect = slow_connect  # type: ignore[method-assign]
        await scene.play([("client", query(path=ADD, extra=b"expect: 100-continue\r\n" if expect else b""))])
        scene.engine.connection_lost(None)  # closed by the engine: nothing of the answer came
        for _ in range(5):
            await asyncio.sleep(0)
        assert scene.door.in_flight == 1 and gate.in_flight == 1
        task = scene.client.task
        assert task is not None
        task.cancel()  # what the server's drain does at a hard stop
        for _ in range(5):
            await asyncio.sleep(0)
        go.set()
        for _ in range(5):
            await asyncio.sleep(0)
        return scene, gate, fresh

    scene, gate, fresh = asyncio.run(run())
    assert scene.door.in_flight == 0 and gate.in_flight == 0
    assert scene.counted.requests == [("add", 499)] or [s for _, s in scene.counted.requests] == [500]
    assert all(not side.written for side in fresh), "no write reaches the engine after the stop"


def test_a_pipelined_chunked_body_over_the_limit_gets_413_and_never_reaches_the_engine() -> None:
    body = b"x" * 5000
    chunked = (b"POST " + QUERY + b" HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
               + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
    engine, client, scene = play([("client", query() + chunked), ("engine", ANSWER)], max_payload=1000)
    assert len(requests(engine)) == 1
    assert [status for status, _, _ in responses(client)] == [200, 413]


# Reads and health checks are never taken for writes: a snapshot's hold does not stop them, a full
# disk does not refuse them, and the audit log (state changes, admin, refusals) does not list them.
READS = [b"/api/v2/version", b"/api/v2/pre-flight-checks", b"/api/v2/healthcheck", b"/api/v2/auth/identity",
         b"/api/v2/tenants/default_tenant", COUNT]


def _get(path: bytes) -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nhost: x\r\n\r\n"


@pytest.mark.parametrize("path", READS)
def test_a_read_or_health_route_is_not_held_by_a_snapshot_nor_refused_on_a_full_disk(path: bytes) -> None:
    from chromaguard.proxy.writegate import WriteGate

    class FullDisk:
        def refusal(self, operation: str | None, size: int = 0) -> str | None:
            return "chromaguard: the disk is full; writes are refused"

    async def run() -> tuple[bytes, bytes, bytes]:
        held = Scene()
        held.door.gate = gate = WriteGate()
        hold = await gate.hold(30)
        during, _ = await held.play([("client", _get(path))])
        hold.release()
        full = Scene()
        full.door.gate, full.door.disk_floor = WriteGate(), FullDisk()  # type: ignore[assignment]
        reached, _ = await full.play([("client", _get(path))])
        write = Scene()
        write.door.gate, write.door.disk_floor = WriteGate(), FullDisk()  # type: ignore[assignment]
        _, refused = await write.play([("client", query(path=ADD))])
        return during, reached, refused

    during, reached, refused = asyncio.run(run())
    assert during.startswith(b"GET " + path), "held by the snapshot like a write"
    assert reached.startswith(b"GET " + path), "refused on a full disk like a write"
    assert refused.startswith(b"HTTP/1.1 507 "), refused  # a write is, both times


def test_the_audit_log_lists_writes_not_reads_health_checks_or_scrapes(tmp_path: Any) -> None:
    from chromaguard.telemetry.audit import AuditLog

    async def run() -> None:
        for path in (*READS, b"/api/v2/heartbeat", b"/healthz", b"/readyz", b"/metrics"):
            scene = Scene()
            scene.door.audit = audit
            await scene.play([("client", _get(path)), ("engine", ANSWER)])
        scene = Scene()
        scene.door.audit = audit
        await scene.play([("client", query(path=ADD)), ("engine", ANSWER)])

    audit = AuditLog(str(tmp_path / "audit.jsonl"))
    asyncio.run(run())
    audit.close()
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [line["operation"] for line in lines] == ["add"], lines
