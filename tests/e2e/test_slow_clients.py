"""Slow clients cannot lock the others out: a deadline on the request head, a minimum body
rate, a cap on connections per client address, and headroom below the descriptor limit.

Every test talks to a real ``chromaguard serve`` over real sockets. Nothing waits on a bare
sleep for something to happen: each wait polls until a deadline with a generous margin.
"""

from __future__ import annotations

import json
import resource
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import chromadb
import httpx
import pytest
from chromadb.config import Settings
from support.procs import Guard, wait_http

BASE = "/api/v2/tenants/default_tenant/databases/default_database"
HEAD_TIMEOUT = 1.5  # short, so a test sees it pass; the sweep checks every HEAD_TIMEOUT / 2 s
MIN_RATE = 1000  # bytes/s; a body trickled at a few bytes a second is far below it



def _readable(socks: list[socket.socket], timeout: float) -> list[socket.socket]:
    """The sockets with something to read (poll, not select: in a long test run the
    descriptors here can be numbered past select's 1024)."""
    poller = select.poll()
    by_fd = {sock.fileno(): sock for sock in socks}
    for fd in by_fd:
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    return [by_fd[fd] for fd, _ in poller.poll(timeout * 1000)]

def _connect(port: int, source: str | None = None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10,
                                    source_address=(source, 0) if source else None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_until_closed(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes (a reset counts as a close)."""
    deadline = time.monotonic() + timeout
    data = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        except TimeoutError:
            break
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"still open after {timeout}s; got {data!r}")


def _response(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One whole response with a content-length, or AssertionError."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            head = data[:end].decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in head[1:])}
            length = int(headers.get("content-length", "0"))
            if len(data) >= end + 4 + length:
                return int(head[0].split()[1]), headers, data[end + 4:end + 4 + length]
        left = deadline - time.monotonic()
        assert left > 0, f"no whole response in {timeout}s: {data!r}"
        sock.settimeout(left)
        chunk = sock.recv(65536)
        assert chunk, f"closed before a whole response: {data!r}"
        data += chunk


def _trickle(sock: socket.socket, data: bytes, every: float, limit: float) -> tuple[int, float]:
    """Send ``data`` a byte each ``every`` seconds until the server says something or closes;
    returns (bytes sent, seconds until then). Before each byte it waits ``every`` for the
    server, so no byte is sent once the server has answered."""
    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < limit:
        readable = _readable([sock], every)
        if readable:
            return sent, time.monotonic() - started
        assert sent < len(data), "the whole request went out unanswered"
        sock.sendall(data[sent:sent + 1])
        sent += 1
    raise AssertionError(f"the server said nothing in {limit}s though {sent} bytes came slowly")


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"not {what} within {timeout}s")


@pytest.fixture(scope="module")
def strict() -> Iterator[Guard]:
    """A service with short time limits and a small per-client cap."""
    with Guard(env={"CHROMAGUARD_HEAD_TIMEOUT": f"{HEAD_TIMEOUT}s", "CHROMAGUARD_BODY_MIN_RATE": str(MIN_RATE),
                    "CHROMAGUARD_MAX_CONNECTIONS_PER_CLIENT": "20"}) as service:
        wait_http(service.url + "/api/v2/heartbeat", proc=service.proc, log=service.log_path)
        yield service


# ---- the request head's deadline -----------------------------------------------------------------

def test_a_trickled_head_gets_408_though_bytes_keep_coming(strict: Guard) -> None:
    head = b"GET /api/v2/heartbeat HTTP/1.1\r\nhost: x\r\nx-padding: " + b"a" * 100 + b"\r\n\r\n"
    with _connect(strict.port) as sock:
        sent, waited = _trickle(sock, head, every=0.25, limit=10)
        answer = _read_until_closed(sock)
    assert sent >= HEAD_TIMEOUT / 0.25 - 1, sent  # bytes kept coming up to the deadline and past it
    assert HEAD_TIMEOUT - 0.1 <= waited < HEAD_TIMEOUT + 3, waited  # each byte did not push it on
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"connection: close" in answer and b"took too long" in answer
    _wait_for(lambda: "request head was not whole" in strict.log, 5, "logged")


def test_a_connection_that_sends_nothing_is_closed_after_the_head_timeout(strict: Guard) -> None:
    with _connect(strict.port) as sock:
        started = time.monotonic()
        assert _read_until_closed(sock, timeout=HEAD_TIMEOUT + 5) == b""  # no request: closed without a word
        assert time.monotonic() - started >= HEAD_TIMEOUT - 0.1


def test_an_idle_keep_alive_connection_is_not_timed_by_the_head_deadline(strict: Guard) -> None:
    """Between requests only the idle timer (75 s) runs: the next head's deadline starts with its
    first byte, and then holds for it."""
    with _connect(strict.port) as sock:
        sock.sendall(b"GET /api/v2/heartbeat HTTP/1.1\r\nhost: x\r\n\r\n")
        assert _response(sock)[0] == 200
        readable = _readable([sock], HEAD_TIMEOUT * 2 + 1)  # idle well past a head timeout
        assert not readable, "an idle keep-alive connection was closed (or answered) early"
        sock.sendall(b"GET /api/v2/heartbeat HTTP/1.1\r\nhost: x\r\n\r\n")
        assert _response(sock)[0] == 200  # still open, and served
        sent, waited = _trickle(sock, b"GET /api/v2/heartbeat HTTP/1.1\r\nhost: x\r\n\r\n", every=0.25, limit=10)
        assert waited < HEAD_TIMEOUT + 3
        assert _read_until_closed(sock).startswith(b"HTTP/1.1 408 ")


def test_a_head_split_in_two_reads_in_time_is_served(strict: Guard) -> None:
    with _connect(strict.port) as sock:
        sock.sendall(b"GET /api/v2/heartbeat HTTP/1.1\r\nho")
        time.sleep(0.3)  # two reads on the server, well inside the deadline
        sock.sendall(b"st: x\r\n\r\n")
        status, _, body = _response(sock)
    assert status == 200 and "nanosecond heartbeat" in json.loads(body)


# ---- the body's minimum rate ---------------------------------------------------------------------

def _body_request(path: str, length: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            f"content-length: {length}\r\n\r\n").encode()


@pytest.mark.parametrize("path, length, answered", [
    (f"{BASE}/collections", 50_000, True),  # read whole before the handler runs: nobody began, so 408
    (f"{BASE}/collections/00000000-0000-0000-0000-000000000000/query", 5_000, True),  # a read: a body read whole, too
    (f"{BASE}/collections", 2_000_000, False),  # streamed to a running handler: the connection is cut
])
def test_a_trickled_body_is_cut_off(strict: Guard, path: str, length: int, answered: bool) -> None:
    with _connect(strict.port) as sock:
        sock.sendall(_body_request(path, length) + b'{"name": ')
        sent, waited = _trickle(sock, b"x" * length, every=0.2, limit=15)
        answer = _read_until_closed(sock)
    assert sent >= HEAD_TIMEOUT / 0.2 - 1, sent
    assert HEAD_TIMEOUT - 0.1 <= waited < HEAD_TIMEOUT + 4, waited
    if answered:
        assert answer.startswith(b"HTTP/1.1 408 ") and b"too slowly" in answer, answer
    else:
        assert b" 200 " not in answer.split(b"\r\n", 1)[0], answer
    _wait_for(lambda: "request body came slower than" in strict.log, 5, "logged")


def test_a_body_at_a_fair_rate_is_not_cut(strict: Guard, name: str) -> None:
    """Over twice the head timeout in all, but each second brings more than the minimum rate."""
    body = json.dumps({"name": name, "metadata": {"pad": "p" * 6000}}).encode()
    with _connect(strict.port) as sock:
        sock.sendall(_body_request(f"{BASE}/collections", len(body)))
        for at in range(0, len(body), 1500):  # 1500 bytes each 0.4 s: 3750 bytes/s
            readable = _readable([sock], 0.4)
            assert not readable, sock.recv(65536)
            sock.sendall(body[at:at + 1500])
        status, _, answer = _response(sock)
    assert status == 200 and json.loads(answer)["name"] == name


# ---- many slow clients at once ---------------------------------------------------------------------

def _room_for(connections: int) -> int:
    """Raise this process's descriptor limit (soft, up to the hard limit) to hold ``connections``
    sockets and some; the service started after inherits it. Returns how many fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections + 200
    if soft < want:
        top = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))
        soft = top
    return min(connections, soft - 200)


def test_a_thousand_slow_clients_do_not_keep_a_good_one_waiting(tmp_path) -> None:
    # 1,000 sockets here and 1,000 in the service: more than a 1024 default limit, so the soft
    # limit is raised (the service inherits it). Where the hard limit is lower, fewer are opened.
    count = _room_for(1000)
    assert count >= 500, f"the descriptor hard limit allows only {count} connections"
    with Guard(env={"CHROMAGUARD_MAX_CONNECTIONS_PER_CLIENT": "0"}) as service:
        wait_http(service.url + "/api/v2/heartbeat", proc=service.proc, log=service.log_path)
        slow: list[socket.socket] = []
        try:
            for _ in range(count):  # each a request head begun, never finished
                sock = _connect(service.port)
                sock.sendall(b"POST /api/v2/tenants/default_tenant/databases/default_database/coll")
                slow.append(sock)
            client = chromadb.HttpClient(host="127.0.0.1", port=service.port,
                                         settings=Settings(anonymized_telemetry=False))
            for round_ in range(3):
                for sock in slow:  # a byte more on each: nothing there is idle
                    sock.send(b"e")
                started = time.monotonic()
                heartbeat = httpx.get(service.url + "/api/v2/heartbeat", timeout=5)  # a fresh connection
                took = time.monotonic() - started
                assert heartbeat.status_code == 200 and took < 1.0, (round_, took)
                started = time.monotonic()
                assert client.heartbeat() > 0
                assert time.monotonic() - started < 1.0
            readable = _readable(slow, 0)
            assert not readable, "slow clients were answered or closed before their head timeout (10 s)"
        finally:
            for sock in slow:
                sock.close()


# ---- the per-client cap ----------------------------------------------------------------------------

def test_one_address_gets_at_most_its_cap_and_another_is_still_served(strict: Guard) -> None:
    cap = 20
    held: list[socket.socket] = []
    try:
        while len(held) < cap:  # each served, then kept open (keep-alive)
            sock = _connect(strict.port)
            sock.sendall(b"GET /api/v2/heartbeat HTTP/1.1\r\nhost: x\r\n\r\n")
            status, _, _ = _response(sock)
            if status == 503:  # an earlier test's connection is still being let go: try again
                sock.close()
                time.sleep(0.1)
                continue
            assert status == 200
            held.append(sock)
        refused = []
        for _ in range(30):  # one more each, and then a flood of them
            with _connect(strict.port) as sock:
                refused.append(_read_until_closed(sock, timeout=5))
        assert all(answer.startswith(b"HTTP/1.1 503 ") for answer in refused), refused[0]
        assert b"too many open connections from your address" in refused[0]
        with _connect(strict.port, source="127.0.0.2") as other:  # another loopback address
            other.sendall(b"GET /api/v2/heartbeat HTTP/1.1\r\nhost: x\r\n\r\n")
            assert _response(other)[0] == 200
        for sock in held[:3]:  # the held ones still work
            sock.sendall(b"GET /api/v2/heartbeat HTTP/1.1\r\nhost: x\r\n\r\n")
            assert _response(sock)[0] == 200
        held.pop().close()

        def served_again() -> bool:
            with _connect(strict.port) as sock:
                sock.sendall(b"GET /api/v2/heartbeat HTTP/1.1\r\nhost: x\r\n\r\n")
                return _response(sock)[0] == 200

        _wait_for(served_again, 5, "served again after one closed")
    finally:
        for sock in held:
            sock.close()
    lines = [line for line in strict.log.splitlines() if "refused a connection from 127.0.0.1" in line]
    assert len(lines) == 1, lines  # 30 refusals, one line: a flood does not flood the log
    assert " WARNING " in lines[0], lines


# ---- headroom below the descriptor limit -------------------------------------------------------------

class _LimitedGuard(Guard):
    """The service started with a low descriptor limit (soft and hard: it cannot raise it)."""

    def __init__(self, *args: str, nofile: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.nofile = nofile

    def start(self, wait: bool = True) -> Guard:
        nofile = self.nofile
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chromaguard", "serve", *self.args], stdout=self._log, stderr=subprocess.STDOUT,
            env=self.env, start_new_session=True,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile)))
        if wait:
            wait_http(self.url + "/api/v2/heartbeat", proc=self.proc, log=self.log_path)
        return self


def test_near_the_descriptor_limit_new_connections_are_refused_and_then_served_again() -> None:
    # 256 descriptors: the service keeps 64 of them for itself, so about 190 client connections.
    with _LimitedGuard(nofile=256, env={"CHROMAGUARD_MAX_CONNECTIONS_PER_CLIENT": "0",
                                        "CHROMAGUARD_HEAD_TIMEOUT": "60s"}) as service:
        flood: list[socket.socket] = []
        warning = "new connections are answered 503 until some close"
        try:
            while warning not in service.log:  # open connections until it stops accepting
                assert len(flood) < 400, "never stopped accepting"
                flood.append(_connect(service.port))
                if len(flood) % 10 == 0:
                    time.sleep(0.05)  # let the service's log catch up now and then
            assert 150 <= len(flood) <= 300, len(flood)
            with _connect(service.port) as late:  # still full: refused at once
                answer = _read_until_closed(late, timeout=5)
            assert answer.startswith(b"HTTP/1.1 503 ") and b"connection limit" in answer, answer
            assert service.proc.poll() is None
            first = flood[0]  # an existing connection still works, the engine's descriptors kept for it
            first.sendall(b"GET /api/v2/heartbeat HTTP/1.1\r\nhost: x\r\n\r\n")
            status, _, body = _response(first)
            assert status == 200 and "nanosecond heartbeat" in json.loads(body)
        finally:
            for sock in flood:
                sock.close()

        def served() -> bool:
            try:
                return httpx.get(service.url + "/api/v2/heartbeat", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait_for(served, 10, "served again after the flood closed")
        assert service.proc.poll() is None
        log = service.log
        lines = [line for line in log.splitlines() if warning in line]
        assert len(lines) == 1 and " WARNING " in lines[0], lines  # one line, however many were refused
        assert "ulimit -n" in log and "accepting connections again" in log


# ---- a slow head behind a request being answered ---------------------------------------------------

def test_a_slow_pipelined_head_lets_the_answer_before_it_finish_then_closes() -> None:
    """The server in-process with a handler that holds its answer: the partial head after it is
    overdue while a response is due, so no 408 can go between; the answer goes, with a close."""
    import asyncio

    from chromaguard.http11.server import HttpServer

    async def scenario() -> None:
        release = asyncio.Event()

        async def answer(exchange) -> None:
            await release.wait()
            exchange.respond(200, [], b"held")

        server = HttpServer(lambda exchange: answer(exchange), head_timeout=0.4)
        listener = socket.create_server(("127.0.0.1", 0))
        serving = asyncio.ensure_future(server.serve(listener))
        reader, writer = await asyncio.open_connection(*listener.getsockname())
        writer.write(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /b HTTP/1.1\r\nho")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while server.head_timeouts == 0:  # polled: the sweep has found the second head overdue
            assert loop.time() < deadline, "the slow head was never timed out"
            writer.write(b"s")  # still coming, a byte at a time
            await asyncio.sleep(0.1)
        release.set()
        answer_bytes = await asyncio.wait_for(reader.read(), 10)  # all of it, to the close
        assert answer_bytes.startswith(b"HTTP/1.1 200 ") and answer_bytes.endswith(b"held"), answer_bytes
        assert b"connection: close" in answer_bytes and answer_bytes.count(b"HTTP/1.1") == 1
        writer.close()
        server.stop()
        await asyncio.wait_for(serving, 10)

    asyncio.run(scenario())
