"""The fast path for plain reads: it must do exactly what the general path does.

Each scene is played twice against a socketless front door, once with the fast path and once
without, and what reached the engine and what reached the client must be the same (the
client's answer compared as HTTP: status, fields, body). Where the fast path should take the
request, the client must also get the engine's answer byte for byte, which the general path
never gives (it writes its own head), so a fast path that quietly stopped working fails too.
The end-to-end suites (official client, real engine) run through it for every read as well.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httptools
import pytest
from socketless import Socketless

from chromaguard.cors import CorsPolicy
from chromaguard.fastpath import FastPath
from chromaguard.frontdoor import AlwaysAvailable, FrontDoor
from chromaguard.httpserver import ClientConnection, HttpServer
from chromaguard.upstream import EngineConnection, UpstreamPool

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

    def __init__(self, fast: bool, *, timeout: float = 30.0, cors: CorsPolicy | None = None,
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
        lane = FastPath.for_door(self.door) if fast else None
        self.client = ClientConnection(HttpServer(self.door, fast=lane.take if lane else None))
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


def both(steps: list[tuple[str, bytes]], **options: Any) -> tuple[tuple[bytes, bytes], tuple[bytes, bytes], Scene]:
    """The same steps with and without the fast path: ((engine, client) fast, general, fast scene)."""
    async def run() -> tuple[tuple[bytes, bytes], tuple[bytes, bytes], Scene]:
        fast = Scene(True, **options)
        general = Scene(False, **options)
        return await fast.play(steps), await general.play(steps), fast

    return asyncio.run(run())


SPLIT_ANSWER = [("engine", ANSWER[:60]), ("engine", ANSWER[60:])]
CHUNKED_ANSWER = [("engine", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: application/json\r\n\r\n"
                   b"%x\r\n%b\r\n0\r\n\r\n" % (len(ANSWER_BODY), ANSWER_BODY))]

# (steps, how many of the answers the fast path passes on as they came): the same requests
# reach the engine and the same answers reach the client either way.
SCENES: dict[str, tuple[list[tuple[str, bytes]], int]] = {
    "query": ([("client", query()), ("engine", ANSWER)], 1),
    "count, with a query string": ([("client", b"GET /api/v2/tenants/t/databases/d/collections/c/count?x=1 HTTP/1.1"
                                               b"\r\nhost: x\r\n\r\n"), ("engine", ANSWER)], 1),
    "mixed-case names and odd blanks": ([("client", query(extra=b"X-Custom-Thing:  two  words \r\nAccept-Language:\r\n")
                                           .replace(b"content-type: ", b"Content-Type:")), ("engine", ANSWER)], 1),
    "head and body in two reads": ([("client", query()[:-len(BODY)]), ("client", BODY), ("engine", ANSWER)], 1),
    "body in three reads, the next request in the last": (
        [("client", query()[:-30]), ("client", BODY[-30:-10]), ("client", BODY[-10:] + query(b"{}")),
         ("engine", ANSWER), ("engine", ANSWER)], 1),
    "engine's 404, whole": ([("client", query()), ("engine", b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json"
                                                             b"\r\ncontent-length: 2\r\n\r\n{}")], 1),
    "client half-closes while the engine works": ([("client", query()), ("eof", b""), ("engine", ANSWER)], 0),
    "server stops while the engine works": ([("client", query()), ("stop", b""), ("engine", ANSWER)], 0),
    "an empty query": ([("client", b"GET /api/v2/tenants/t/databases/d/collections/c/count? HTTP/1.1\r\nhost: x"
                                   b"\r\n\r\n"), ("engine", ANSWER)], 0),
    "engine's 204": ([("client", query()), ("engine", b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n"
                                                      b"date: Tue, 01 Dec 2026 10:00:00 GMT\r\n\r\n")], 0),
    "engine's answer with a keep-alive field": (
        [("client", query()), ("engine", ANSWER.replace(b"\r\n\r\n", b"\r\nkeep-alive: timeout=5\r\n\r\n", 1))], 0),
    "engine's head with a broken line": (
        [("client", query()), ("engine", ANSWER.replace(b"\r\n\r\n", b"\r\nbroken line\r\n\r\n", 1))], 0),
    "two requests in one read": ([("client", query() + query(b"{}")), ("engine", ANSWER), ("engine", ANSWER)], 0),
    "answer in two reads": ([("client", query()), *SPLIT_ANSWER], 0),
    "chunked answer": ([("client", query()), *CHUNKED_ANSWER], 0),
    "answer closing the engine connection": (
        [("client", query()), ("engine", ANSWER.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n", 1))], 0),
    "client asks to close, the proxy way": ([("client", query(extra=b"proxy-connection: close\r\n")),
                                             ("engine", ANSWER)], 0),
    "client asks to close": ([("client", query().replace(b"connection: keep-alive", b"connection: close")),
                              ("engine", ANSWER)], 0),
    "chunked request": ([("client", query().replace(b"content-length: %d" % len(BODY), b"transfer-encoding: chunked")
                         .replace(BODY, b"%x\r\n%b\r\n0\r\n\r\n" % (len(BODY), BODY))), ("engine", ANSWER)], 0),
    "expect 100-continue": ([("client", query(extra=b"expect: 100-continue\r\n")), ("engine", ANSWER)], 0),
    "percent-encoded path": ([("client", query(path=QUERY.replace(b"query", b"%71uery"))), ("engine", ANSWER)], 0),
    "HTTP/1.0": ([("client", query(version=b"1.0")), ("engine", ANSWER)], 0),
    "a write": ([("client", query(path=QUERY.replace(b"query", b"upsert"))), ("engine", ANSWER)], 0),
    "a head the general path counts as too large": ([("client", query(extra=b"a:b\r\n" * 5600))], 0),
    "a head just over what the general path allows": ([("client", query(extra=b"a:b\r\n" * 5450))], 0),
    "a header line without a colon": ([("client", query(extra=b"broken line\r\n"))], 0),
    "a folded header line": ([("client", query(extra=b"x-a: b\r\n c\r\n"))], 0),
    "a bare LF": ([("client", query(extra=b"x-a: b\nx-b: c\r\n"))], 0),
    "two lengths": ([("client", query().replace(b"\r\n\r\n", b"\r\ncontent-length: 3\r\n\r\n", 1))], 0),
    "a length that is not digits": ([("client", query().replace(b"content-length: ", b"content-length: +"))], 0),
}


@pytest.mark.parametrize("name", SCENES)
def test_the_engine_and_the_client_see_what_the_general_path_gives_them(name: str) -> None:
    steps, passed = SCENES[name]
    (fast_engine, fast_client), (engine, client), scene = both(steps)
    assert requests(fast_engine) == requests(engine)
    assert responses(fast_client) == responses(client)
    answers = [data for side, data in steps if side == "engine"]
    sent = _parsed(responses, b"".join(answers))
    if answers and not isinstance(sent, str):  # every answer reached the client (else the front door answered)
        assert len(responses(client)) == len(sent)
    # The fast path answered these: the engine's bytes as they came, nothing rebuilt.
    assert fast_client.startswith(b"".join(answers[:passed]))
    if passed < len(answers):
        assert not fast_client[len(b"".join(answers[:passed])):].startswith(answers[passed])


def test_forwarded_head_is_the_one_the_general_path_writes() -> None:
    (engine, _), _, _ = both([("client", query()), ("engine", ANSWER)])
    assert engine == (b"POST " + QUERY + b" HTTP/1.1\r\nhost: 127.0.0.1:9\r\naccept: */*\r\n"
                      b"accept-encoding: gzip, deflate\r\nuser-agent: Chroma Python Client\r\n"
                      b"content-type: application/json\r\nx-forwarded-for: 10.0.0.7\r\nx-forwarded-proto: http\r\n"
                      b"content-length: %d\r\n\r\n" % len(BODY) + BODY)


def test_fast_path_requests_are_counted_like_any_other() -> None:
    steps = [("client", query()), ("engine", ANSWER),
             ("client", query()), ("engine", b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}")]
    _, _, scene = both(steps)
    assert scene.counted.requests == [("query", 200), ("query", 404)]
    assert scene.door.in_flight == 0
    assert scene.pool.idle() is scene.engine, "the engine connection went back to the pool"


def test_origin_with_cors_gets_the_cors_fields() -> None:
    steps = [("client", query(extra=b"origin: https://app.example\r\n")), ("engine", ANSWER)]
    (_, fast_client), (_, client), _ = both(steps, cors=CorsPolicy(["https://app.example"]))
    assert fast_client == client
    assert b"access-control-allow-origin: https://app.example" in fast_client


def test_client_asking_to_close_is_answered_and_closed() -> None:
    steps = [("client", query().replace(b"connection: keep-alive", b"connection: close")), ("engine", ANSWER)]
    (_, fast_client), _, scene = both(steps)
    assert b"\r\nconnection: close\r\n" in fast_client and scene.client_side.closed


def test_client_gone_before_its_body_came_sends_nothing_and_keeps_the_engine_connection() -> None:
    async def run() -> Scene:
        scene = Scene(True)
        await scene.play([("client", query()[:-10])])
        scene.client.connection_lost(None)
        return scene

    scene = asyncio.run(run())
    assert scene.engine_side.written == [] and scene.counted.requests == []
    assert scene.pool.idle() is scene.engine and scene.client.idle


def test_client_gone_while_the_engine_answers_returns_the_connection() -> None:
    async def run() -> Scene:
        scene = Scene(True)
        await scene.play([("client", query())])
        scene.client.connection_lost(None)
        await scene.play([("engine", ANSWER)])
        return scene

    scene = asyncio.run(run())
    assert scene.counted.requests == [("query", 200)] and scene.door.in_flight == 0
    assert scene.pool.idle() is scene.engine


def test_engine_silent_past_the_timeout_gets_a_504() -> None:
    async def run() -> tuple[Scene, float]:
        scene = Scene(True, timeout=0.3)
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
        scene = Scene(True)
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
        scene = Scene(True)
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


def test_a_body_over_the_payload_limit_gets_413_and_never_reaches_the_engine() -> None:
    (fast_engine, fast_client), (engine, client), _ = both([("client", query())], max_payload=len(BODY) - 1)
    assert fast_engine == engine == b""
    assert fast_client == client and client.startswith(b"HTTP/1.1 413 ")


def test_engine_down_gets_503_from_the_front_door() -> None:
    class Down:
        available = False
        unavailable_reason = "it is restarting"

    (fast_engine, fast_client), (engine, client), _ = both([("client", query())], backend=Down())
    assert fast_engine == engine == b""
    assert fast_client == client and client.startswith(b"HTTP/1.1 503 ") and b"restarting" in client


def test_answer_in_pieces_slower_than_a_timeout_tick_is_not_cut() -> None:
    """Handed over to the general path after the head, the request keeps its time with the watch."""
    async def run() -> bytes:
        scene = Scene(True, timeout=0.4)  # the watch looks every 0.1 s
        head = ANSWER.index(b"\r\n\r\n") + 4
        await scene.play([("client", query()), ("engine", ANSWER[:head])])  # handed over here
        await asyncio.sleep(0.25)
        await scene.play([("engine", ANSWER[head:])])
        return b"".join(scene.client_side.written)

    assert responses(asyncio.run(run())) == responses(ANSWER)


def test_off_where_auth_or_tracing_have_work_to_do() -> None:
    from chromaguard.auth import Authenticator
    from chromaguard.credentials import load_store

    async def run() -> None:
        door = FrontDoor(UpstreamPool("http://127.0.0.1:9"), AlwaysAvailable(), max_payload_bytes=1 << 20,
                         upstream_timeout=30.0)
        assert FastPath.for_door(door) is not None
        door.auth = Authenticator("token", load_store("token", None, "t0ken", file_setting="-", inline_setting="-"))
        assert FastPath.for_door(door) is None
        door.auth, door.spans = None, object()  # tracing: a span for every request
        assert FastPath.for_door(door) is None

    asyncio.run(run())


def _parsed(parse: Any, data: bytes) -> object:
    try:
        return parse(data)
    except httptools.HttpParserError as exc:
        return f"unparseable: {type(exc).__name__}"


def _mutants(count: int) -> list[bytes]:
    """Variants of the official client's query with one change to its head: a byte put in,
    taken out or replaced, at a random place, from bytes that matter to HTTP parsers."""
    import random

    rng = random.Random(8)
    original = query()
    head_end = original.index(b"\r\n\r\n") + 4
    interesting = [b"\r", b"\n", b" ", b"\t", b":", b"\x00", b"\x7f", b"\x80", b"\xff", b"a", b"A", b"0", b"9",
                   b",", b";", b"%", b"?", b"#", b"/", b"\r\n", b"\r\n ", b"\r\ntransfer-encoding: chunked",
                   b"\r\ncontent-length: 1", b"\r\nconnection: close", b"\r\nexpect: 100-continue"]
    out = []
    for _ in range(count):
        data = bytearray(original)
        at = rng.randrange(0, head_end)
        kind = rng.randrange(3)
        if kind == 0:
            data[at:at] = rng.choice(interesting)
        elif kind == 1:
            del data[at]
        else:
            data[at:at + 1] = rng.choice(interesting)
        out.append(bytes(data))
    return out


def test_a_mutated_head_reaches_the_engine_and_the_client_as_on_the_general_path() -> None:
    """Whatever the fast path takes, the engine must read it as the general path's request, and
    whatever it refuses to take must be answered as the general path answers it."""
    async def play(fast: bool, data: bytes) -> tuple[bytes, bytes]:
        scene = Scene(fast)
        scene.client.data_received(data)
        for _ in range(5):
            await asyncio.sleep(0)
        if scene.engine_side.written:
            scene.engine.data_received(ANSWER)
            for _ in range(5):
                await asyncio.sleep(0)
        return b"".join(scene.engine_side.written), b"".join(scene.client_side.written)

    async def run() -> int:
        differing = 0
        for data in _mutants(400):
            fast_engine, fast_client = await play(True, data)
            engine, client = await play(False, data)
            assert _parsed(requests, fast_engine) == _parsed(requests, engine), data
            assert _parsed(responses, fast_client) == _parsed(responses, client), data
            differing += fast_client != client  # taken by the fast path (its answer is the engine's bytes)
        return differing

    taken = asyncio.run(run())
    assert 40 < taken < 400, taken  # some mutants are harmless, and the fast path takes them
