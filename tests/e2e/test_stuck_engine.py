"""A stopped, stuck or disk-starved engine: found fast, answered with quick errors, replaced or reported.

The first tests drive the supervisor's decisions on a virtual clock, with a fake engine and
scripted probe results (no real sleeps); the last ones stop a real engine under load, and fill
a real (tmpfs) disk under a writer.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.mounts import tmpfs
from support.procs import Guard, Workers
from support.supervised import NO_BEAT, NO_READ, OK, FakePool, Scripted, supervised

from chromaguard.engine.supervisor import FAIL, GRACE, PASS, UNHEALTHY, Backoff, HealthJudge, HealthPolicy
from chromaguard.http11.client import UpstreamTimeout

BASE = "/api/v2/tenants/default_tenant/databases/default_database"


# ---- the rules, pure -------------------------------------------------------------------------


def test_judge_counts_failures_in_a_row_up_to_retries() -> None:
    judge = HealthJudge(HealthPolicy(retries=3, start_period=0))
    judge.started(0.0)
    assert [judge.judge(ok, 1.0) for ok in (False, False, True, False, False, False, False)] == \
        [FAIL, FAIL, PASS, FAIL, FAIL, UNHEALTHY, UNHEALTHY]


def test_judge_start_period_until_a_probe_passes() -> None:
    judge = HealthJudge(HealthPolicy(retries=2, start_period=60))
    judge.started(100.0)
    assert judge.judge(False, 130.0) == GRACE and judge.judge(False, 159.9) == GRACE
    assert judge.judge(False, 160.0) == FAIL  # the start period is over
    judge.started(200.0)
    assert judge.judge(True, 201.0) == PASS
    assert judge.judge(False, 202.0) == FAIL, "after a pass, failures count even within the start period"
    assert judge.judge(False, 203.0) == UNHEALTHY


def test_backoff_doubles_to_its_cap_and_restarts_the_series_after_a_stable_run() -> None:
    backoff = Backoff(cap=30, stable_after=60)
    assert [backoff.next_delay() for _ in range(9)] == [0, 1, 2, 4, 8, 16, 30, 30, 30]
    backoff.exited(up_for=60)
    assert backoff.next_delay() == 30, "up no longer than stable_after: still crashing"
    backoff.exited(up_for=61)
    assert backoff.next_delay() == 0, "up longer than stable_after: recovered, restarted at once"
    assert backoff.next_delay() == 1


# ---- the supervisor on a virtual clock -------------------------------------------------------


def test_stuck_engine_unavailable_at_the_first_failure_killed_after_retries() -> None:
    async def scenario() -> None:
        probe = Scripted(OK, NO_BEAT)
        sup, engine, fake = supervised(probe, policy=HealthPolicy(interval=2, retries=3, start_period=60))
        await sup.start()
        await fake.run_until(lambda: probe.calls == 1)
        await fake.run_until(lambda: probe.calls == 2)
        await fake.run_until(lambda: not sup.available)
        assert fake.now == 4 and "no heartbeat within 2s" in sup.unavailable_reason and not engine.kills
        await fake.run_until(lambda: bool(engine.kills))
        assert engine.kills == [8.0], "killed at the third failure in a row (t=4, 6, 8)"
        await fake.run_until(lambda: sup.available)
        assert sup.restarts == 1 and engine.starts == 2
        assert "3 health checks failed in a row" in sup.last_failure
        await sup.stop()

    asyncio.run(scenario())


def test_failures_in_the_start_period_do_not_count_until_a_probe_passed() -> None:
    async def scenario() -> None:
        probe = Scripted(NO_BEAT)
        sup, engine, fake = supervised(probe, policy=HealthPolicy(interval=2, retries=3, start_period=60))
        await sup.start()
        await fake.run_until(lambda: fake.now >= 58)
        assert not engine.kills and not sup.available, "failing, so unavailable, but not counted"
        await fake.run_until(lambda: bool(engine.kills))
        assert engine.kills == [64.0], "counted from t=60: killed at t=64"
        await sup.stop()

    asyncio.run(scenario())


def test_stuck_on_a_full_disk_reads_hang_too_reported_no_restart_until_there_is_room() -> None:
    async def scenario() -> None:
        probe = Scripted(OK, NO_READ)
        room = [False]
        sup, engine, fake = supervised(probe, policy=HealthPolicy(interval=2, timeout=10, retries=3,
                                                                   start_period=0), room=room)
        sup.pool = pool = FakePool()
        await sup.start()
        pool.wait_on_engine("write-1")
        await fake.run_until(lambda: sup.disk_full)
        assert fake.now == 4 and not sup.available and "disk is full (0.2 MiB free" in sup.unavailable_reason
        assert pool.aborted and pool.aborted[0][0] == "write-1", "its reads hang: what waits is failed at once"
        assert "free space under the data dir" in pool.aborted[0][1]
        pool.wait_on_engine("write-2")  # sent before the front door saw it unavailable
        await fake.run_until(lambda: len(pool.aborted) == 2)
        assert fake.now == 5, "probes every second while stuck: failed at the next one"
        assert "not restarting" in sup.last_failure
        await fake.run_until(lambda: fake.now >= 100)
        assert not engine.kills and sup.restarts == 0, "a restart frees no space: no restart loop"
        assert sup.health_report()["disk_full"] and not sup.available
        room[0] = True  # space freed; the engine stays stuck until restarted
        await fake.run_until(lambda: bool(engine.kills))
        assert engine.kills[0] <= 101 and "the disk has room again" in sup.last_failure
        await fake.run_until(lambda: sup.restarts == 1 and sup.state == "running")
        assert not sup.disk_full
        await sup.stop()

    asyncio.run(scenario())


def test_stuck_on_a_full_disk_writes_hang_reads_answer_waiting_requests_failed() -> None:
    async def scenario() -> None:
        probe = Scripted(OK)
        room = [False]
        sup, engine, fake = supervised(probe, policy=HealthPolicy(interval=2, timeout=10, retries=3,
                                                                   start_period=0), room=room)
        sup.pool = pool = FakePool()
        await sup.start()
        pool.wait_on_engine("write-1")  # hangs: the engine's writes found no room
        await fake.run_until(lambda: bool(pool.aborted))
        assert fake.now == 12, "first seen at t=2, failed once it had waited the probe timeout (10 s)"
        assert sup.disk_full and sup.available, "reads answer: they go on"
        pool.wait_on_engine("write-2")
        await fake.run_until(lambda: len(pool.aborted) == 2)
        assert fake.now == 15, "from then on, a write waiting 2 s is failed (probes every second)"
        await fake.run_until(lambda: fake.now >= 60)
        assert not engine.kills
        room[0] = True
        await fake.run_until(lambda: bool(engine.kills))
        assert engine.kills[0] <= 61, "restarted at the next probe once there is room"
        await sup.stop()

    asyncio.run(scenario())


def test_a_slow_request_on_a_disk_with_room_is_left_alone() -> None:
    async def scenario() -> None:
        sup, engine, fake = supervised(Scripted(OK), policy=HealthPolicy(interval=2, timeout=10, retries=3,
                                                                          start_period=0))
        sup.pool = pool = FakePool()
        await sup.start()
        pool.wait_on_engine("big-query")
        await fake.run_until(lambda: fake.now >= 100)
        assert not pool.aborted and not engine.kills and sup.available and not sup.disk_full
        assert sup.health_report()["oldest_request_waiting_s"] == 98.0
        await sup.stop()

    asyncio.run(scenario())


def test_failing_requests_mark_the_engine_unavailable_at_once_and_ask_for_a_probe_now() -> None:
    async def scenario() -> None:
        probe = Scripted(OK)
        sup, engine, fake = supervised(probe, policy=HealthPolicy(interval=1000, retries=3, start_period=0))
        await sup.start()
        timeout = UpstreamTimeout("upstream did not answer in time")
        sup.request_failed(timeout)
        await fake.run_until(lambda: probe.calls == 1)
        assert fake.now == 0 and sup.available, "one failure: a probe now (not at t=1000), still available"
        fake.now = 0.25
        for _ in range(2):
            sup.request_failed(timeout)
        sup.request_failed(timeout)
        assert not sup.available and "requests to the engine failed" in sup.unavailable_reason
        await fake.run_until(lambda: probe.calls == 2)
        await fake.run_until(lambda: sup.available)
        assert fake.now == 1.0, "the probe came one gap (1s) after the last one, not an interval"
        await sup.stop()

    asyncio.run(scenario())


def test_restart_back_off_is_capped_and_a_stable_run_restarts_at_once() -> None:
    async def scenario() -> None:
        probe = Scripted(OK)
        sup, engine, fake = supervised(probe, policy=HealthPolicy(interval=500, retries=3, start_period=0))
        await sup.start()
        engine.fail_ready = 7
        fake.slept.clear()
        engine.exit(1)  # crashes; the next 7 starts fail
        await fake.run_until(lambda: sup.state == "running" and sup.restarts == 1)
        assert [s for s in fake.slept if s != 500] == [1, 2, 4, 8, 16, 30, 30]
        fake.slept.clear()
        engine.exit(1)  # up for no time at all: still the capped delay
        await fake.run_until(lambda: sup.restarts == 2)
        assert [s for s in fake.slept if s != 500] == [30]
        start = fake.now
        await fake.run_until(lambda: fake.now > start + 60)  # a stable run
        fake.slept.clear()
        engine.exit(1)
        await fake.run_until(lambda: sup.restarts == 3)
        assert [s for s in fake.slept if s != 500] == [], "after a stable run: restarted at once"
        await sup.stop()

    asyncio.run(scenario())


# ---- a real engine ---------------------------------------------------------------------------


def _status(g: Guard) -> dict[str, Any]:
    return httpx.get(g.url + "/chromaguard/status", timeout=10).json()


def _until(what: Callable[[], Any], timeout: float, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(step)
    return what()


class Load(Workers):
    """Writers and readers in threads; every request's (start, end, status) on the test's clock."""

    def __init__(self, g: Guard, cid: str, writers: int = 2, readers: int = 2) -> None:
        super().__init__()
        self.g, self.cid = g, cid
        self.done: list[tuple[float, float, int | str]] = []
        self.acknowledged: list[str] = []
        self.threads = [threading.Thread(target=self._write, args=(w,)) for w in range(writers)] + \
                       [threading.Thread(target=self._read) for _ in range(readers)]

    def _record(self, send: Callable[[], httpx.Response], on_ok: Callable[[], None] | None = None) -> int | str:
        started = time.monotonic()
        try:
            status: int | str = send().status_code
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        self.done.append((started, time.monotonic(), status))
        if status in (200, 201) and on_ok is not None:
            on_ok()
        if status not in (200, 201):
            time.sleep(0.05)
        return status

    def _write(self, worker: int) -> None:
        with httpx.Client(base_url=self.g.url, timeout=120) as http:
            for n in itertools.count():
                if self.stop.is_set():
                    return
                ids = [f"load-{worker}-{n}-{i}" for i in range(5)]
                body = {"ids": ids, "embeddings": [[float(worker), float(n)]] * 5}
                self._record(lambda body=body: http.post(f"{BASE}/collections/{self.cid}/add", json=body),
                             lambda ids=ids: self.acknowledged.extend(ids))

    def _read(self) -> None:
        with httpx.Client(base_url=self.g.url, timeout=120) as http:
            while not self.stop.is_set():
                self._record(lambda: http.get(f"{BASE}/collections/{self.cid}/count"))


def _fresh(g: Guard, cid: str) -> int | None:
    """A new request's status, or None when it had no answer within a second."""
    try:
        return httpx.get(g.url + f"{BASE}/collections/{cid}/count", timeout=1.0).status_code
    except httpx.HTTPError:
        return None


def test_sigstopped_engine_under_load_is_answered_fast_and_replaced() -> None:
    """Default health settings: a stopped engine gets 503s within seconds and is replaced."""
    with Guard() as g:
        cid = httpx.post(g.url + f"{BASE}/collections", json={"name": "stopped"}).json()["id"]
        before = [f"before-{i}" for i in range(50)]
        assert httpx.post(g.url + f"{BASE}/collections/{cid}/add",
                          json={"ids": before, "embeddings": [[1.0, 2.0]] * 50}).status_code == 201
        assert _until(lambda: (_status(g)["engine"]["health"]["last_probe"] or {}).get("ok"), 10), \
            "a probe passed: the start period is over"
        pid, _ = g.engine()
        with Load(g, cid) as load:
            time.sleep(1.0)
            os.kill(pid, signal.SIGSTOP)
            stopped = time.monotonic()
            try:
                # A request that reaches the engine after it stopped: it must not wait out the
                # upstream timeout (300 s).
                in_flight: dict[str, Any] = {}

                def send() -> None:
                    try:
                        r = httpx.post(g.url + f"{BASE}/collections/{cid}/add", timeout=120,
                                       json={"ids": ["in-flight"], "embeddings": [[3.0, 4.0]]})
                        in_flight["status"] = r.status_code
                    except httpx.HTTPError as exc:
                        in_flight["status"] = type(exc).__name__
                    in_flight["after"] = time.monotonic() - stopped

                sender = threading.Thread(target=send)
                sender.start()
                # The load's requests are all stuck in the engine by now: new ones tell when it is
                # answered for (each gives up after a second, so a hang does not hide the answer).
                first_503 = _until(lambda: _fresh(g, cid) == 503 and time.monotonic(), 20)
                assert first_503, "no 503 within 20s"
                quick = time.monotonic()
                assert _fresh(g, cid) == 503 and time.monotonic() - quick < 0.5, "a 503 must come at once"
                replaced = _until(lambda: g.engine()[0] != pid and time.monotonic(), 40, step=0.1)
                assert replaced, "the stopped engine was not replaced"
                sender.join(60)
            finally:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            served = _until(lambda: httpx.get(g.url + "/readyz", timeout=10).status_code == 200
                            and time.monotonic(), 20)
            time.sleep(0.5)
        timings = {"first_503_s": round(first_503 - stopped, 2), "replaced_s": round(replaced - stopped, 2),
                   "serving_s": round(served - stopped, 2), "in_flight_s": round(in_flight["after"], 2),
                   "in_flight_status": in_flight["status"],
                   "longest_request_s": round(max(end - start for start, end, _ in load.done), 2)}
        print("sigstop timings:", timings)
        assert timings["first_503_s"] < 8, timings  # at most an interval (2 s) and a heartbeat timeout (2 s)
        assert timings["replaced_s"] < 25, timings  # 3 probes of 2 s + 2 s, then a restart
        assert timings["in_flight_s"] < 25 and in_flight["status"] in (201, 502, 503), timings
        assert timings["longest_request_s"] < 25, timings
        assert served, "the service did not serve again"
        statuses = {status for _, _, status in load.done}
        assert statuses <= {200, 201, 502, 503}, statuses
        assert "engine unhealthy: 3 health checks failed in a row (no heartbeat within 2s)" in g.log
        got = httpx.post(g.url + f"{BASE}/collections/{cid}/get",
                         json={"ids": before + load.acknowledged, "include": []}, timeout=60).json()["ids"]
        assert set(got) == set(before + load.acknowledged), "data written before, or acknowledged, is missing"
        engine = _status(g)["engine"]
        assert engine["restarts"] == 1 and engine["state"] == "running"
        assert httpx.post(g.url + f"{BASE}/collections/{cid}/add",
                          json={"ids": ["after"], "embeddings": [[5.0, 6.0]]}).status_code == 201


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", "20m") as mount:
        yield mount


@pytest.fixture
def disk_200m(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", "200m") as mount:
        yield mount


def _fill(filler: Path, leave: int = 0) -> None:
    """Grow ``filler`` until its filesystem has at most ``leave`` bytes free (0: until it is full)."""
    with open(filler, "ab") as out:
        while (room := shutil.disk_usage(filler.parent).free - leave) > 0:
            try:
                out.write(b"\0" * min(room, 1 << 20))
                out.flush()
            except OSError:
                return


def test_writes_are_refused_before_the_disk_fills_and_nothing_acknowledged_is_lost(disk_200m: Path) -> None:
    """The flood-stage floor: below it chromaguard answers writes itself, so the engine never
    meets a full disk (chromadb 1.5.9 can leave a collection's index unreadable when it does)."""
    with Guard(data_dir=disk_200m / "data", env={"CHROMAGUARD_MIN_FREE_DISK": "0"}) as g:
        cid = httpx.post(g.url + f"{BASE}/collections", json={"name": "filled"}).json()["id"]
        spare = httpx.post(g.url + f"{BASE}/collections", json={"name": "spare"}).json()["id"]
        assert httpx.post(g.url + f"{BASE}/collections/{spare}/add",
                          json={"ids": ["s1", "s2"], "embeddings": [[0.1] * 64] * 2}).status_code == 201
        floor = shutil.disk_usage(disk_200m).total // 20
        _fill(disk_200m / "filler", leave=floor + (3 << 20))
        acked: list[str] = []
        answers: dict[int, str] = {}
        with httpx.Client(base_url=g.url, timeout=60) as http:
            for n in range(2000):
                ids = [f"w-{n}-{i}" for i in range(50)]
                r = http.post(f"{BASE}/collections/{cid}/add", json={
                    "ids": ids, "embeddings": [[(n * 50 + i) / 9.0] * 64 for i in range(50)],
                    "documents": [f"doc {n} {i} " + "x" * 300 for i in range(50)]})
                answers.setdefault(r.status_code, r.text)
                if r.status_code != 201:
                    break
                acked += ids
            else:
                pytest.fail("3 MiB of writes never reached the floor")
            assert r.status_code == 507, answers
            assert set(answers) == {201, 507}, answers  # the engine never answered an error of its own
            message = r.json()["message"]
            assert "the engine's writes need" in message and "free space under the data dir" in message, message
            assert r.headers["retry-after"] == "10" and r.json()["error"] == "ChromaError"
            # Right at the floor the engine's own journal files come and go: go well below it.
            _fill(disk_200m / "filler", leave=floor - (2 << 20))
            time.sleep(0.5)  # a few samples
            assert http.post(f"{BASE}/collections", json={"name": "another"}).status_code == 507
            # A record delete is logged and indexed like an add: refused too.
            assert http.post(f"{BASE}/collections/{spare}/delete", json={"ids": ["s1"]}).status_code == 507
            # Reads go on, and so does dropping a collection (one SQLite transaction, no index file).
            assert http.get(f"{BASE}/collections/{cid}/count").json() == len(acked)
            assert http.post(f"{BASE}/collections/{cid}/query", json={
                "query_embeddings": [[1.0] * 64], "n_results": 3, "include": []}).status_code == 200
            assert http.delete(f"{BASE}/collections/spare").status_code == 200
            ready = http.get("/readyz")
            assert ready.status_code == 503 and not ready.json()["checks"]["disk"]["ok"], ready.text

            (disk_200m / "filler").unlink()
            # Free space is sampled five times a second: writes are taken again within that.
            freed = time.monotonic()
            assert _until(lambda: http.post(f"{BASE}/collections/{cid}/add", json={
                "ids": ["after"], "embeddings": [[0.3] * 64]}).status_code == 201, 5, step=0.05)
            assert time.monotonic() - freed < 2
            assert http.get(f"{BASE}/collections/{cid}/count").json() == len(acked) + 1
            got = http.post(f"{BASE}/collections/{cid}/get", json={"ids": acked[-50:], "include": []}).json()
            assert sorted(got["ids"]) == sorted(acked[-50:])
        assert _status(g)["engine"]["restarts"] == 0


def test_an_engine_that_meets_a_full_disk_is_reported_not_restarted_in_a_loop_and_recovers(small_disk: Path) -> None:
    """Something else filled the disk while writes were in flight (here: writes sent to the
    engine's own port): the engine fails or gets stuck; chromaguard says so, refuses writes,
    does not restart it while there is no room, and brings it back once there is."""
    env = {"CHROMAGUARD_MIN_FREE_DISK": "0", "CHROMAGUARD_HEALTH_TIMEOUT": "2s"}
    with Guard(data_dir=small_disk / "data", env=env) as g:
        assert httpx.get(g.url + "/readyz").status_code == 200
        cid = httpx.post(g.url + f"{BASE}/collections", json={"name": "filled"}).json()["id"]
        before = [f"before-{i}" for i in range(20)]
        assert httpx.post(g.url + f"{BASE}/collections/{cid}/add",
                          json={"ids": before, "embeddings": [[0.5] * 64] * 20}).status_code == 201
        assert _until(lambda: "a read of a collection answered" in (
            _status(g)["engine"]["health"]["last_probe"] or {}).get("detail", ""), 10), \
            "a probe read the collection: the start period is over"
        pid, port = g.engine()
        _fill(small_disk / "filler")
        filled = time.monotonic()
        # Under the engine's index sync threshold (1,000 records), so no index file is rewritten:
        # what this test watches is chromaguard, not chromadb's own damage on a full disk.
        direct: list[int | str] = []

        def write_to_the_engine() -> None:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as engine:
                for n in range(5):
                    try:
                        r = engine.post(f"{BASE}/collections/{cid}/add", json={
                            "ids": [f"direct-{n}-{i}" for i in range(100)],
                            "embeddings": [[n + i / 100] * 64 for i in range(100)],
                            "documents": ["d" * 2000] * 100})
                        direct.append(r.status_code)
                    except httpx.HTTPError as exc:
                        direct.append(type(exc).__name__)
                        return

        thread = threading.Thread(target=write_to_the_engine, daemon=True)
        thread.start()

        def not_ready() -> dict[str, Any] | None:
            r = httpx.get(g.url + "/readyz", timeout=10)
            return r.json() if r.status_code == 503 else None

        report = _until(not_ready, 20, step=0.2)
        assert report, "/readyz stayed 200 on a full disk"
        reported = time.monotonic()
        failing = {name: c["detail"] for name, c in report["checks"].items() if not c["ok"]}
        assert "disk" in failing, failing
        assert "test write there failed" in failing["disk"] or "less than" in failing["disk"], failing
        time.sleep(0.5)  # free space is sampled five times a second: a few samples
        started = time.monotonic()
        refused = httpx.post(g.url + f"{BASE}/collections/{cid}/add", timeout=30,
                             json={"ids": ["while-full"], "embeddings": [[0.1] * 64]})
        assert refused.status_code in (507, 503), refused.text  # 503: stuck even for reads (C)
        assert time.monotonic() - started < 12, "a write waited on the full disk"
        # The engine failed those writes (500 "database or disk is full"), or it is stuck on them
        # and the supervisor says so and withholds the restart.
        held = _until(lambda: _status(g)["engine"]["health"]["disk_full"], 20, step=0.25)
        time.sleep(3.0)  # a few more probes: still no restart
        engine = _status(g)["engine"]
        assert engine["restarts"] == 0 and g.engine()[0] == pid, "restarted on a full disk"
        print("full-disk:", {"reported_s": round(reported - filled, 2), "held": bool(held), "direct": direct})
        assert held or (direct and all(s == 500 for s in direct)), direct

        freed = time.monotonic()
        (small_disk / "filler").unlink()
        ready = _until(lambda: httpx.get(g.url + "/readyz", timeout=10).status_code == 200 and time.monotonic(), 30,
                       step=0.2)
        assert ready, f"not ready after space was freed: {httpx.get(g.url + '/readyz').text}"
        print("full-disk recovery:", {"ready_after_free_s": round(ready - freed, 2),
                                      "restarts": _status(g)["engine"]["restarts"]})
        assert _status(g)["engine"]["restarts"] <= (1 if held else 0)
        # The restarted engine first applies what its stuck writes had logged: seen once in a dozen
        # runs to answer a write with its own 500 meanwhile. Writes work again within seconds.
        answers: list[str] = []

        def write_after_free() -> bool:
            r = httpx.post(g.url + f"{BASE}/collections/{cid}/add", timeout=30,
                           json={"ids": ["after-free"], "embeddings": [[0.2] * 64]})
            if r.status_code != 201:
                answers.append(f"{r.status_code} {r.text[:200]}")
            return r.status_code == 201

        assert _until(write_after_free, 10, step=0.5), answers
        if answers:
            print("writes refused right after recovery:", answers)
        thread.join(30)
        got = httpx.post(g.url + f"{BASE}/collections/{cid}/get", json={"ids": before + ["after-free"],
                                                                        "include": []}, timeout=30).json()["ids"]
        assert set(got) == set(before) | {"after-free"}
