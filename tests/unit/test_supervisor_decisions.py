"""The supervisor's every decision, word for word: what it reports, what it tells whoever waits,
what its probes ask the engine and how it reads their answers.

Decisions run on the virtual clock of ``supervised``; the probes run against a scripted HTTP
engine on loopback (the smallest thing that speaks the engine's protocol), so that a timeout, a
refused connection and an error answer can each be had on demand.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support.supervised import NO_BEAT, NO_READ, OK, FakeEngine, FakePool, FakeTime, Scripted, supervised

from chromaguard.engine.supervisor import HealthPolicy, Probe, Supervisor
from chromaguard.http11.client import UpstreamTimeout

# ---- what it reports -------------------------------------------------------------------------


def test_the_health_report_holds_the_policy_the_last_probe_and_why_it_is_unavailable() -> None:
    async def scenario() -> None:
        probe = Scripted(OK, NO_BEAT)
        policy = HealthPolicy(interval=3, timeout=7, retries=4, start_period=0, heartbeat_timeout=1.5)
        sup, engine, fake = supervised(probe, policy=policy)
        sup.pool = pool = FakePool()
        await sup.start()
        assert sup.health_report() == {
            "policy": {"interval_s": 3, "timeout_s": 7, "heartbeat_timeout_s": 1.5, "retries": 4,
                       "start_period_s": 0},
            "failures_in_a_row": 0, "last_probe": None, "disk_full": False, "problem": None,
            "oldest_request_waiting_s": 0.0, "unavailable_reason": None}
        await fake.run_until(lambda: probe.calls == 1)
        pool.wait_on_engine("a-query")
        await fake.run_until(lambda: probe.calls == 2 and not sup.available)
        fake.now += 0.26
        report = sup.health_report()
        assert report["last_probe"] is not None and report["last_probe"].pop("at") > 0
        assert report == {
            "policy": {"interval_s": 3, "timeout_s": 7, "heartbeat_timeout_s": 1.5, "retries": 4,
                       "start_period_s": 0},
            "failures_in_a_row": 1, "last_probe": {"ok": False, "detail": "no heartbeat within 2s"},
            "disk_full": False,
            "problem": "the engine is not answering its health check (no heartbeat within 2s)",
            "oldest_request_waiting_s": 0.3,
            "unavailable_reason": "the engine is not answering its health check (no heartbeat within 2s)"}
        await sup.stop()

    asyncio.run(scenario())


def test_before_it_starts_it_reports_nothing_wrong_and_starting_waits_for_the_engine() -> None:
    async def scenario() -> None:
        fake = FakeTime()
        engine = FakeEngine(fake.clock)
        engine.ready = asyncio.Event()
        sup = Supervisor(engine, policy=HealthPolicy(interval=2, timeout=10, retries=3, start_period=60,  # type: ignore[arg-type]
                                                     heartbeat_timeout=2), clock=fake.clock, sleep=fake.sleep)
        assert (sup.state, sup.restarts, sup.last_failure, sup.last_failure_at, sup.disk_full, sup.problem) == \
            ("stopped", 0, "", None, False, "")
        assert sup.health_report() == {
            "policy": {"interval_s": 2, "timeout_s": 10, "heartbeat_timeout_s": 2, "retries": 3,
                       "start_period_s": 60},
            "failures_in_a_row": 0, "last_probe": None, "disk_full": False, "problem": None,
            "oldest_request_waiting_s": 0.0, "unavailable_reason": "the engine is stopped"}
        starting = asyncio.create_task(sup.start())
        await fake.run_until(lambda: bool(engine.ready_timeouts))
        assert sup.unavailable_reason == "the engine is starting" and engine.ready_timeouts == [60.0]
        engine.ready.set()
        await starting
        assert sup.available and sup.state == "running"
        await sup.stop()
        assert engine.stop_timeouts == [10.0] and sup.state == "stopped"
        engine.ready = None
        seen: list[bool] = []
        other = Supervisor(FakeEngine(fake.clock), ready_timeout=5, clock=fake.clock,  # type: ignore[arg-type]
                           sleep=fake.sleep, probe=Scripted(NO_BEAT), on_probe=seen.append)
        await other.stop()  # never started: nothing to cancel
        await other.start()
        await fake.run_until(lambda: bool(seen))
        await other.stop(timeout=3)
        assert other.engine.ready_timeouts == [5] and other.engine.stop_timeouts == [10.0, 3]  # type: ignore[attr-defined]
        assert seen == [False]

    asyncio.run(scenario())


def test_why_it_is_unavailable_in_each_state() -> None:
    fake = FakeTime()
    sup = Supervisor(FakeEngine(fake.clock), clock=fake.clock)  # type: ignore[arg-type]
    assert not sup.available and sup.unavailable_reason == "the engine is stopped"
    for state, reason in (("starting", "the engine is starting"), ("restarting", "the engine is restarting"),
                          ("odd", "odd")):
        sup.state = state
        assert not sup.available and sup.unavailable_reason == reason
    sup.state = "running"
    assert not sup.available and sup.unavailable_reason == "the engine process has exited"


def test_a_failed_start_period_probe_is_said_and_not_counted(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        probe = Scripted(NO_BEAT)
        sup, engine, fake = supervised(probe, policy=HealthPolicy(interval=2, retries=1, start_period=60))
        await sup.start()
        await fake.run_until(lambda: probe.calls == 1 and not sup.available)
        assert sup.problem == "the engine is not answering its health check yet (no heartbeat within 2s)"
        assert sup.judge.failures == 0 and sup.state == "running" and not engine.kills
        await sup.stop()

    with caplog.at_level(logging.WARNING, "chromaguard.supervisor"):
        asyncio.run(scenario())
    assert [r.getMessage() for r in caplog.records] == [
        "engine health check failed during its start period: no heartbeat within 2s"]


def test_each_counted_failure_is_logged_with_its_number_and_the_kill_says_why(
        caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        probe = Scripted(OK, NO_READ)
        sup, engine, fake = supervised(probe, policy=HealthPolicy(interval=2, retries=2, start_period=0))
        await sup.start()
        await fake.run_until(lambda: probe.calls == 2 and not sup.available)
        assert sup.problem == ("the engine does not answer data calls (a read of a collection got no answer "
                               "within 8s (the heartbeat did))"), "a room check found room: not the disk"
        assert sup.unavailable_reason == sup.problem and sup.state == "running"
        await fake.run_until(lambda: bool(engine.kills))
        assert sup.last_failure == ("engine unhealthy: 2 health checks failed in a row (a read of a collection got "
                                    "no answer within 8s (the heartbeat did)); killing and restarting it")
        assert sup.last_failure_at is not None and sup.last_failure_at > 1e9, "a wall-clock time, for the status"
        await fake.run_until(lambda: sup.available)
        assert sup.restarts == 1 and engine.kills == [6.0] and sup.problem == ""
        await sup.stop()

    with caplog.at_level(logging.WARNING, "chromaguard.supervisor"):
        asyncio.run(scenario())
    read = "a read of a collection got no answer within 8s (the heartbeat did)"
    assert [r.getMessage() for r in caplog.records] == [
        f"engine health check failed (1 of 2): {read}",
        f"engine health check failed (2 of 2): {read}",
        f"engine unhealthy: 2 health checks failed in a row ({read}); killing and restarting it",
        "engine restarted (restart 1)"]


def test_a_pass_after_failures_makes_it_available_and_forgets_failed_requests(
        caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        probe = Scripted(NO_BEAT, OK)
        sup, engine, fake = supervised(probe, policy=HealthPolicy(interval=2, retries=3, start_period=0))
        await sup.start()
        timeout = UpstreamTimeout("upstream did not answer in time")
        sup.request_failed(timeout)
        sup.request_failed(timeout)
        await fake.run_until(lambda: probe.calls == 2 and sup.available)
        assert sup.problem == "" and sup.judge.failures == 0
        sup.request_failed(timeout)
        assert sup.available, "the two failed requests before the pass no longer count"
        await sup.stop()

    with caplog.at_level(logging.WARNING, "chromaguard.supervisor"):
        asyncio.run(scenario())
    assert "engine answers its health check again" in [r.getMessage() for r in caplog.records]


def test_failed_requests_count_within_the_window_and_only_while_running(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "chromaguard.supervisor")
    fake = FakeTime()
    sup = Supervisor(FakeEngine(fake.clock), clock=fake.clock)  # type: ignore[arg-type]
    error = UpstreamTimeout("upstream did not answer in time")
    for _ in range(5):
        sup.request_failed(error)
    sup.state = "running"
    sup.request_failed(error)
    assert sup.responsive, "failures while it was not running were not counted"
    fake.now = 5.0
    sup.request_failed(error)
    fake.now = 10.0
    sup.request_failed(error)
    assert sup.problem == ("3 requests to the engine failed within 10s (last: upstream did not answer in time); "
                           "checking it now") and not sup.responsive, "at t=0, 5 and 10: within 10 s"
    sup.responsive, sup.problem = True, ""
    fake.now = 15.1
    sup.request_failed(error)
    assert sup.responsive, "the ones at t=0 and t=5 are more than 10 s old: two in the window"
    fake.now = 15.2
    sup.request_failed(error)
    assert not sup.responsive and sup.problem.startswith("3 requests")
    assert [r.getMessage() for r in caplog.records] == [
        f"engine marked unavailable: 3 requests to the engine failed within 10s (last: {error}); checking it now"] * 2


# ---- a full disk -----------------------------------------------------------------------------


def test_stuck_on_a_full_disk_says_where_and_what_to_do_once(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        probe = Scripted(OK, NO_READ)
        sup, engine, fake = supervised(probe, policy=HealthPolicy(interval=2, timeout=10, retries=3,
                                                                  start_period=0), room=[False])
        sup.pool = pool = FakePool()
        await sup.start()
        await fake.run_until(lambda: probe.calls == 1)
        pool.wait_on_engine("write-1")
        pool.wait_on_engine("query-1")
        await fake.run_until(lambda: sup.disk_full)
        reason = ("the data dir's disk is full (0.2 MiB free under the data dir) and the engine is stuck on it; "
                  "free space under the data dir and chromaguard restarts the engine")
        assert sup.problem == reason and sup.unavailable_reason == reason
        assert pool.aborted == [
            (name, f"the Chroma engine is unavailable ({reason}); this request may not have been applied")
            for name in ("write-1", "query-1")], "its reads hang: every request waiting is failed, short or long"
        assert sup.last_failure == (
            "engine stuck on a full disk (0.2 MiB free under the data dir): its reads hang too; not restarting "
            "it (that frees no space): requests waiting on it get 503; it is restarted once there is room")
        first = sup.last_failure_at
        await fake.run_until(lambda: probe.calls >= 5)
        assert sup.last_failure_at == first and sup.judge.failures >= 4 and not engine.kills, \
            "said once; failures counted past retries, and still no restart"
        await sup.stop()

    with caplog.at_level(logging.WARNING, "chromaguard.supervisor"):
        asyncio.run(scenario())
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("failed 2 request(s) waiting on the engine stuck on a full disk") == 1
    assert sum("stuck on a full disk (" in m for m in messages) == 1


def test_writes_stuck_on_a_full_disk_reads_still_answer(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        probe = Scripted(OK)
        sup, engine, fake = supervised(probe, policy=HealthPolicy(interval=2, timeout=10, retries=3,
                                                                  start_period=0), room=[False])
        sup.pool = pool = FakePool()
        await sup.start()
        pool.wait_on_engine("write-1")
        await fake.run_until(lambda: fake.now >= 11.9)
        assert not pool.aborted and not sup.disk_full, "waited 9.9 s of the 10 s timeout: left alone"
        await fake.run_until(lambda: sup.disk_full)
        assert fake.now == 12 and sup.available and sup.responsive
        assert pool.aborted[0][0] == "write-1"
        assert sup.last_failure.startswith("engine stuck on a full disk (0.2 MiB free under the data dir): writes "
                                           "hang, reads answer; not restarting it")
        pool.wait_on_engine("query-2")
        await fake.run_until(lambda: fake.now >= 13)
        assert ("query-2", pool.aborted[0][1]) not in pool.aborted, "waited 1 s: under the 2 s limit once stuck"
        await sup.stop()

    asyncio.run(scenario())


def test_a_stuck_heartbeat_on_a_full_disk_is_a_stuck_engine_not_the_disk() -> None:
    async def scenario() -> None:
        probe = Scripted(OK, NO_BEAT)
        sup, engine, fake = supervised(probe, policy=HealthPolicy(interval=2, timeout=2, retries=2,
                                                                  start_period=0), room=[False])
        sup.pool = pool = FakePool()
        await sup.start()
        pool.wait_on_engine("write-1")  # waited the timeout by t=4: the room is checked
        await fake.run_until(lambda: bool(engine.kills))
        assert not sup.disk_full and engine.kills == [6.0], "the heartbeat is not the disk's: restarted"
        assert "2 health checks failed in a row (no heartbeat within 2s)" in sup.last_failure
        await sup.stop()

    asyncio.run(scenario())


def test_room_again_restarts_the_stuck_engine_and_says_so() -> None:
    async def scenario() -> None:
        probe = Scripted(OK)
        room = [False]
        sup, engine, fake = supervised(probe, policy=HealthPolicy(interval=2, timeout=4, retries=3,
                                                                  start_period=0), room=room)
        sup.pool = pool = FakePool()
        await sup.start()
        pool.wait_on_engine("write-1")
        await fake.run_until(lambda: sup.disk_full)
        room[0] = True
        await fake.run_until(lambda: bool(engine.kills))
        assert sup.last_failure == ("the disk has room again (500 MiB free under the data dir); restarting the "
                                    "engine, stuck since it was full (its stuck writes do not come loose by "
                                    "themselves)")
        assert sup.disk_full is False and sup.state == "restarting"
        await fake.run_until(lambda: sup.available)
        assert sup.restarts == 1 and sup.problem == "" and sup.health_report()["disk_full"] is False
        await sup.stop()

    asyncio.run(scenario())


def test_a_crash_records_how_long_it_ran_and_a_failed_start_is_recorded_too(
        caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        probe = Scripted(OK, NO_BEAT, OK)
        sup, engine, fake = supervised(probe, policy=HealthPolicy(interval=2, start_period=0))
        seen: list[bool] = []
        sup.on_probe = seen.append
        await sup.start()
        await fake.run_until(lambda: probe.calls == 2)
        fake.now = 42.31
        engine.fail_ready = 3
        engine.exit(3)
        await fake.run_until(lambda: 1 in fake.slept)
        assert sup.unavailable_reason == "the engine is restarting"
        await fake.run_until(lambda: sup.available)
        assert sup.last_failure == "the Chroma engine exited during start-up (code 1)"
        assert sup.restarts == 1 and engine.starts == 5 and engine.ready_timeouts == [60.0] * 5
        calls = probe.calls
        await fake.run_until(lambda: probe.calls == calls + 2)
        assert seen == [True, False] + [True] * (len(seen) - 2), "each probe's outcome, as it came"
        await sup.stop()
        assert sup.state == "stopped" and not engine.running

    with caplog.at_level(logging.WARNING, "chromaguard.supervisor"):
        asyncio.run(scenario())
    messages = [r.getMessage() for r in caplog.records]
    assert messages[messages.index("engine exited with code 3 after 42.3s"):] == [
        "engine exited with code 3 after 42.3s", "the Chroma engine exited during start-up (code 1)",
        "restarting the engine in 1s (failure 2 in a row)", "the Chroma engine exited during start-up (code 1)",
        "restarting the engine in 2s (failure 3 in a row)", "the Chroma engine exited during start-up (code 1)",
        "restarting the engine in 4s (failure 4 in a row)", "engine restarted (restart 1)"]


def test_an_engine_that_exits_during_a_probe_is_left_to_the_restart_and_probed_after_it() -> None:
    async def scenario() -> None:
        sup, engine, fake = supervised(Scripted(OK), policy=HealthPolicy(interval=2, start_period=0))
        calls = [0]

        async def dying() -> Probe:
            calls[0] += 1
            if calls[0] == 2:
                engine.fail_ready = 1  # the restart takes a while: a second attempt, a second later
                engine.exit(1)
                for _ in range(5):
                    await asyncio.sleep(0)  # the watcher sees it exit and restarts it meanwhile
                assert sup.state == "restarting"
                return NO_BEAT
            return OK

        sup._probe = dying
        await sup.start()
        await fake.run_until(lambda: calls[0] == 4)
        assert sup.restarts == 1 and sup.judge.failures == 0 and not engine.kills, \
            "the probe that saw it die was not judged"
        await sup.stop()

    asyncio.run(scenario())


# ---- the probes, against a scripted engine ---------------------------------------------------


@dataclass
class Answer:
    status: int = 200
    body: bytes = b'{"nanosecond heartbeat":1}'
    hang: bool = False
    delay: float = 0.0


@dataclass
class ScriptedEngine:
    """An HTTP/1.1 server on loopback answering each path as scripted; it records what it was asked."""

    answers: dict[str, Answer]
    asked: list[tuple[str, str, bytes]] = field(default_factory=list)
    content_types: list[bytes | None] = field(default_factory=list)
    url: str = ""
    data_dir: Path = Path(".")
    running: bool = True

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target = head.split(b" ")[:2]
            length, content_type = 0, None
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
                elif name.strip().lower() == b"content-type":
                    content_type = value.strip()
            self.content_types.append(content_type)
            body = await reader.readexactly(length) if length else b""
            path = target.decode()
            self.asked.append((method.decode(), path, body))
            answer = self.answers.get(path.rsplit("/", 1)[-1], Answer(404, b'{"error":"NotFound"}'))
            await asyncio.sleep(30 if answer.hang else answer.delay)
            writer.write(b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                         % (answer.status, len(answer.body), answer.body))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def _probing(engine: ScriptedEngine, policy: HealthPolicy) -> tuple[Supervisor, asyncio.Server]:
    server = await asyncio.start_server(engine.serve, "127.0.0.1", 0)
    engine.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    return Supervisor(engine, policy=policy), server  # type: ignore[arg-type]


PROBE_POLICY = HealthPolicy(timeout=3, heartbeat_timeout=1)


def _probe(engine: ScriptedEngine, policy: HealthPolicy = PROBE_POLICY) -> Probe:
    async def run() -> Probe:
        sup, server = await _probing(engine, policy)
        async with server:
            return await sup.probe_now()

    return asyncio.run(run())


def _catalog(data_dir: Path, *collections: tuple[str, str, str]) -> Path:
    """The two tables of the engine's SQLite catalogue the supervisor reads a collection from."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(data_dir / "chroma.sqlite3") as db:
        db.execute("CREATE TABLE databases (id TEXT, name TEXT, tenant_id TEXT)")
        db.execute("CREATE TABLE collections (id TEXT, name TEXT, dimension INTEGER, database_id TEXT)")
        for n, (tenant, database, cid) in enumerate(collections):
            db.execute("INSERT INTO databases VALUES (?, ?, ?)", (f"db{n}", database, tenant))
            db.execute("INSERT INTO collections VALUES (?, ?, 3, ?)", (cid, f"c{n}", f"db{n}"))
    return data_dir


COUNT = "/api/v2/tenants/default_tenant/databases/default_database/collections_count"


def test_a_probe_is_a_heartbeat_then_the_collection_count_when_there_is_no_collection() -> None:
    engine = ScriptedEngine({"heartbeat": Answer(), "collections_count": Answer(body=b"0")})
    assert _probe(engine) == Probe(True, "heartbeat and the collection count answered")
    assert engine.asked == [("GET", "/api/v2/heartbeat", b""), ("GET", COUNT, b"")]
    assert engine.content_types == [None, None]


def test_a_probe_reads_a_collection_by_id_asking_for_an_id_that_is_never_there(tmp_path: Path) -> None:
    engine = ScriptedEngine({"heartbeat": Answer(), "get": Answer(body=b'{"ids":[]}')},
                            data_dir=_catalog(tmp_path, ("t/1", "d b", "c-1"), ("z", "y", "c-2")))
    assert _probe(engine) == Probe(True, "heartbeat and a read of a collection answered")
    method, path, body = engine.asked[1]
    assert (method, path) == ("POST", "/api/v2/tenants/t%2F1/databases/d%20b/collections/c-1/get"), \
        "the first collection, each part escaped"
    assert json.loads(body) == {"ids": ["chromaguard-probe"], "include": []}
    assert engine.content_types[1] == b"application/json"


def test_an_error_answer_is_a_pass_with_what_it_said() -> None:
    engine = ScriptedEngine({"heartbeat": Answer(), "collections_count": Answer(500, b"x" * 300)})
    assert _probe(engine) == Probe(True, "the collection count answered 500: " + "x" * 200)
    engine = ScriptedEngine({"heartbeat": Answer(), "collections_count": Answer(503, b"\xffbad")})
    assert _probe(engine) == Probe(True, "the collection count answered 503: \ufffdbad")
    engine = ScriptedEngine({"heartbeat": Answer(), "collections_count": Answer(499, b"no")})
    assert _probe(engine) == Probe(True, "heartbeat and the collection count answered")


def test_a_heartbeat_that_is_not_200_fails_but_is_not_a_stuck_engine() -> None:
    engine = ScriptedEngine({"heartbeat": Answer(503, b"busy")})
    assert _probe(engine) == Probe(False, "heartbeat answered 503")
    assert len(engine.asked) == 1, "no read after a failed heartbeat"


def test_no_heartbeat_in_time_is_a_stuck_engine() -> None:
    engine = ScriptedEngine({"heartbeat": Answer(hang=True)})
    started = time.monotonic()
    assert _probe(engine, HealthPolicy(timeout=3, heartbeat_timeout=0.2)) == \
        Probe(False, "no heartbeat within 0.2s", stuck=True)
    assert time.monotonic() - started < 1.5, "given up after the heartbeat timeout, not another one"
    engine = ScriptedEngine({"heartbeat": Answer(hang=True)})
    assert _probe(engine, HealthPolicy(timeout=0.3, heartbeat_timeout=5)) == \
        Probe(False, "no heartbeat within 0.3s", stuck=True), "the whole probe's timeout bounds the heartbeat"
    engine = ScriptedEngine({"heartbeat": Answer(hang=True)})
    assert _probe(engine, HealthPolicy(timeout=0.3, heartbeat_timeout=0)) == \
        Probe(False, "no heartbeat within 0.3s", stuck=True), "no heartbeat timeout of its own: the probe's"


def test_no_connection_is_a_stuck_engine() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = ScriptedEngine({}, url=f"http://127.0.0.1:{port}")
    sup = Supervisor(engine, policy=HealthPolicy(timeout=2, heartbeat_timeout=1))  # type: ignore[arg-type]
    probe = asyncio.run(sup.probe_now())
    assert probe.ok is False and probe.stuck and not probe.data_path and probe.detail.startswith("heartbeat: ")


def test_a_read_with_no_answer_in_the_time_left_is_a_stuck_data_path() -> None:
    engine = ScriptedEngine({"heartbeat": Answer(delay=0.4), "collections_count": Answer(hang=True)})
    assert _probe(engine, HealthPolicy(timeout=0.6, heartbeat_timeout=1)) == Probe(
        False, "the collection count got no answer within 0.5s (the heartbeat did)", stuck=True, data_path=True), \
        "what is left of the probe's timeout, at least half a second"


def test_while_stuck_on_a_full_disk_the_read_waits_two_seconds_at_most() -> None:
    async def run() -> Probe:
        engine = ScriptedEngine({"heartbeat": Answer(), "collections_count": Answer(hang=True)})
        sup, server = await _probing(engine, HealthPolicy(timeout=30, heartbeat_timeout=1))
        sup.disk_full = True
        async with server:
            return await sup.probe_now()

    probe = asyncio.run(run())
    assert probe.detail == "the collection count got no answer within 2s (the heartbeat did)" and probe.data_path


def test_a_read_whose_connection_breaks_is_a_stuck_data_path() -> None:
    async def run() -> Probe:
        engine = ScriptedEngine({"heartbeat": Answer()})
        sup, server = await _probing(engine, HealthPolicy(timeout=2, heartbeat_timeout=1))
        async with server:
            assert (await sup.probe_now()).ok is True  # a 404 on the count: an answer
            server.close()
            await server.wait_closed()
        return await sup.read_probe(1.0)

    probe = asyncio.run(run())
    assert probe.ok is False and probe.stuck and probe.data_path
    assert probe.detail.startswith("the collection count failed: ")


def test_a_collection_gone_is_read_no_more_and_the_catalogue_is_read_again(tmp_path: Path) -> None:
    async def run() -> list[tuple[str, str, bytes]]:
        data_dir = _catalog(tmp_path, ("t", "d", "gone"))
        engine = ScriptedEngine({"heartbeat": Answer(), "get": Answer(404, b'{"error":"NotFound"}')},
                                data_dir=data_dir)
        sup, server = await _probing(engine, HealthPolicy(timeout=2, heartbeat_timeout=1))
        async with server:
            assert await sup.read_probe(1.0) == Probe(True, "heartbeat and a read of a collection answered")
            (data_dir / "chroma.sqlite3").unlink()
            _catalog(data_dir, ("t", "d", "other"))
            await sup.read_probe(1.0)
        return engine.asked

    asked = asyncio.run(run())
    assert [path.split("/")[-2] for _, path, _ in asked] == ["gone", "other"]


def test_the_collection_read_is_picked_again_every_thirty_seconds(tmp_path: Path) -> None:
    async def run() -> list[str]:
        fake = FakeTime()
        data_dir = _catalog(tmp_path / "a", ("t", "d", "first"))
        engine = ScriptedEngine({"get": Answer(body=b"{}")}, data_dir=data_dir)
        sup, server = await _probing(engine, HealthPolicy(timeout=2))
        sup._clock = fake.clock
        async with server:
            for now, collection in ((100.0, None), (129.9, "second"), (130.0, None)):
                fake.now = now
                if collection:
                    (data_dir / "chroma.sqlite3").unlink()
                    _catalog(data_dir, ("t", "d", collection))
                await sup.read_probe(1.0)
        return [path.split("/")[-2] for _, path, _ in engine.asked]

    assert asyncio.run(run()) == ["first", "first", "second"]


def test_an_unreadable_catalogue_falls_back_to_the_collection_count(tmp_path: Path) -> None:
    (tmp_path / "chroma.sqlite3").write_bytes(b"not a database at all" * 100)
    engine = ScriptedEngine({"heartbeat": Answer(), "collections_count": Answer(body=b"0")}, data_dir=tmp_path)
    assert _probe(engine).detail == "heartbeat and the collection count answered"

