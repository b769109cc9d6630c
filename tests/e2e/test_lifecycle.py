"""Start, stop, drain, crash: the service's lifecycle as an operator sees it."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest
from support.clients import http_client
from support.procs import Guard, pid_alive


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on ``port`` (from /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                local, _, state = line.split()[1:4]
                address, port_hex = local.split(":")
                if state == "0A" and int(port_hex, 16) == port:
                    found.add(address)
    return found


def test_engine_listens_on_loopback_only_and_not_on_the_public_port() -> None:
    with Guard(env={"CHROMA_PORT": "1", "CHROMA_LISTEN_ADDRESS": "0.0.0.0"}, port=None) as service:
        pid, engine_port = service.engine()
        assert engine_port != service.port
        # 127.0.0.1 in /proc/net/tcp's little-endian hex: the engine is reachable from this host only.
        assert _listening_addresses(engine_port) == {"0100007F"}
        assert "Saving data to" not in service.log.split("engine ready")[-1]


def test_start_prints_where_it_listens_and_where_data_lives() -> None:
    with Guard() as service:
        line = next(x for x in service.log.splitlines() if "serving Chroma" in x)
        assert f"http://127.0.0.1:{service.port}" in line and str(service.data_dir) in line


def test_sigterm_drains_in_flight_request_then_stops_engine() -> None:
    with Guard() as service:
        client = http_client(service.port)
        collection = client.create_collection("drain", embedding_function=None)
        pid, engine_port = service.engine()
        body = json.dumps({"ids": ["late"], "embeddings": [[0.5, 0.25, 0.125]], "documents": ["arrived"],
                           "metadatas": None, "uris": None}).encode()
        path = (f"/api/v2/tenants/default_tenant/databases/default_database/collections/{collection.id}/add")
        sock = socket.create_connection(("127.0.0.1", service.port))
        head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        sock.sendall(head + body[:10])  # the request is in flight: half its body is still coming
        time.sleep(0.3)
        service.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert service.proc.poll() is None, "the guard must wait for the in-flight request"
        with pytest.raises(httpx.ConnectError):
            httpx.get(service.url + "/healthz", timeout=2)  # no new requests once draining
        sock.sendall(body[10:])
        reply = sock.recv(65536).decode()
        sock.close()
        assert reply.startswith("HTTP/1.1 201") or reply.startswith("HTTP/1.1 200"), reply
        assert service.proc.wait(20) == 0
        assert not pid_alive(pid), "the engine must be stopped with the guard"
        assert "engine stopped (code 0)" in service.log

        with Guard(data_dir=service.data_dir) as again:  # the drained write is on disk
            assert http_client(again.port).get_collection("drain").get(ids=["late"])["documents"] == ["arrived"]


def test_drain_is_bounded() -> None:
    with Guard("--drain-timeout", "1") as service:
        sock = socket.create_connection(("127.0.0.1", service.port))
        sock.sendall(b"POST /api/v2/tenants HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        time.sleep(0.2)
        started = time.monotonic()
        service.proc.send_signal(signal.SIGTERM)
        assert service.proc.wait(20) == 0
        assert time.monotonic() - started < 8
        sock.close()


def test_kill_9_of_the_guard_leaves_no_engine_behind() -> None:
    with Guard() as service:
        http_client(service.port).create_collection("survives", embedding_function=None)
        pid, engine_port = service.engine()
        service.proc.kill()
        service.proc.wait(10)
        deadline = time.monotonic() + 10
        while (pid_alive(pid) or _listening_addresses(engine_port)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(pid), "the engine outlived its guard"
        assert not _listening_addresses(engine_port), "the engine port is still held"
        with Guard(data_dir=service.data_dir) as again:  # lock released, data intact
            assert [c.name for c in http_client(again.port).list_collections()] == ["survives"]


def test_second_guard_on_the_same_data_dir_is_refused() -> None:
    with Guard() as first:
        http_client(first.port).create_collection("mine", embedding_function=None)
        second = Guard(data_dir=first.data_dir)
        try:
            second.start(wait=False)
            code = second.proc.wait(30)
            assert code == 2
            last = second.log.strip().splitlines()[-1]
            assert last.startswith("chromaguard: error: data dir") and "in use by chromaguard" in last
        finally:
            second.close()
        assert [c.name for c in http_client(first.port).list_collections()] == ["mine"]


def test_sigint_stops_cleanly() -> None:
    with Guard() as service:
        pid, _ = service.engine()
        assert service.stop(signal.SIGINT) == 0
        assert not pid_alive(pid)


def test_ephemeral_mode_removes_its_data(tmp_path: Path) -> None:
    with Guard(env={"IS_PERSISTENT": "FALSE"}) as service:
        http_client(service.port).create_collection("temp", embedding_function=None)
        line = next(x for x in service.log.splitlines() if "serving Chroma" in x)
        where = Path(line.split("data in ")[1].split(" (ephemeral)")[0])
        assert (where / "chroma.sqlite3").exists()
        assert service.stop() == 0
        assert not where.exists()
        assert not service.data_dir.exists()


def test_json_logs_one_record_per_line_with_engine_output() -> None:
    with Guard("--log-format", "json", "--log-level", "debug") as service:
        service.stop()
        records = [json.loads(line) for line in service.log.splitlines() if line.strip()]
        assert any(r["logger"] == "chromaguard.engine" and "Saving data to" in r["msg"] for r in records)
        assert all({"ts", "level", "logger", "msg"} <= r.keys() for r in records)
        assert not any("\x1b[" in r["msg"] for r in records)


def test_engine_that_cannot_start_is_a_clear_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "chroma.sqlite3").write_bytes(b"this is not a sqlite database" * 100)
    service = Guard(data_dir=data)
    try:
        service.start(wait=False)
        assert service.proc.wait(60) == 2
        assert "chromaguard: error: the Chroma engine exited during start-up" in service.log
    finally:
        service.close()


def test_engine_error_keeps_its_detail_lines_across_reads(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    """The engine's output is read in blocks; an error's indented detail lines that start the
    next block are part of the error, not chatter to skip."""
    import asyncio
    import logging

    from chromaguard.engine.process import EngineProcess

    first = (b"  2026-11-24T12:00:00Z  INFO  Cache miss for collection c1\n    at rust/frontend/src/x.rs:1\n"
             b"  2026-11-24T12:00:01Z  ERROR  cannot open segment\n")
    second = (b"    with error: disk I/O error (os error 5)\n    at rust/index/src/hnsw.rs:42\n"
              b"  2026-11-24T12:00:02Z  INFO  Cache miss for collection c2\n")

    async def scenario() -> None:
        engine = EngineProcess(tmp_path)
        engine.ready = True
        output = asyncio.StreamReader()
        pump = asyncio.create_task(engine._pump_output(output))
        output.feed_data(first)
        await asyncio.sleep(0.01)
        output.feed_data(second)
        output.feed_eof()
        await pump

    with caplog.at_level(logging.INFO, logger="chromaguard.engine"):
        asyncio.run(scenario())
    logged = [(r.levelno, r.getMessage().strip()) for r in caplog.records if r.name == "chromaguard.engine"]
    assert (logging.ERROR, "with error: disk I/O error (os error 5)") in logged
    assert (logging.ERROR, "at rust/index/src/hnsw.rs:42") in logged
    assert not any("Cache miss" in message for _, message in logged)
