"""The write hold: the gate step by step, and a snapshot of many collections end to end.

The gate tests drive the asyncio code one scheduling step at a time (``_steps``): no timers
race anything, so each interleaving is the one written down. The end-to-end test uses the
real engine: the hold covers the copy only, whatever the number of collections.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from support.clients import http_client
from support.procs import Guard, cli

from chromaguard.backup import archive
from chromaguard.backup import snapshot as snapshots
from chromaguard.backup.restore import restore, verify
from chromaguard.backup.snapshot import SnapshotError, copy_data_dir, take_online
from chromaguard.proxy.writegate import LEAVE_WITHOUT_ENTER, HoldBusy, HoldTimeout, WriteGate

BASE = "/api/v2/tenants/default_tenant/databases/default_database"


async def _steps(n: int = 10) -> None:
    """Let every ready task run until it next waits (deterministic: no time passes)."""
    for _ in range(n):
        await asyncio.sleep(0)


# ---- the gate ------------------------------------------------------------------------------------


async def test_a_hold_waits_for_the_writes_in_flight() -> None:
    gate = WriteGate()
    assert gate.try_enter() and gate.try_enter() and gate.in_flight == 2
    holding = asyncio.create_task(gate.hold(30))
    await _steps()
    assert not holding.done() and gate.held
    assert not gate.try_enter() and gate.in_flight == 2, "no new write while the hold is on"
    gate.leave()
    await _steps()
    assert not holding.done(), "one write is still in flight"
    gate.leave()
    await _steps()
    assert holding.done() and gate.in_flight == 0
    hold = holding.result()
    assert hold.active and hold.release() >= 0 and not gate.held


async def test_a_new_write_waits_during_the_hold_and_goes_on_after() -> None:
    gate = WriteGate()
    hold = await gate.hold(30)  # nothing in flight: at once
    writers = [asyncio.create_task(gate.enter()) for _ in range(3)]
    await _steps()
    assert not any(w.done() for w in writers) and gate.in_flight == 0
    hold.release()
    await _steps()
    assert all(w.done() for w in writers) and gate.in_flight == 3
    for _ in writers:
        gate.leave()
    assert gate.in_flight == 0


async def test_a_hold_that_times_out_opens_the_gate_and_writes_flow() -> None:
    gate = WriteGate()
    assert gate.try_enter()  # a write that never finishes
    holding = asyncio.create_task(gate.hold(0.05))
    await _steps()
    waiting = asyncio.create_task(gate.enter())
    await _steps()
    assert not waiting.done()
    with pytest.raises(HoldTimeout, match="still in flight"):
        await holding
    assert not gate.held
    await _steps()
    assert waiting.done() and gate.in_flight == 2
    assert gate.try_enter() and gate.in_flight == 3
    hold = await asyncio.wait_for(_hold_when_idle(gate, 3), 5)  # and a later hold works normally
    hold.release()


async def test_the_hold_reports_how_long_writes_were_held_and_why_it_failed() -> None:
    """``write_hold_ms`` in every manifest comes from here: it must measure the hold itself."""
    gate = WriteGate()
    hold = await gate.hold(30)
    await asyncio.sleep(0.05)
    held = hold.release()
    assert 0.05 <= held < 30, held
    assert hold.release() == 0.0
    assert gate.try_enter() and gate.try_enter()  # two writes that never finish
    with pytest.raises(HoldTimeout) as caught:
        await gate.hold(0.01)
    assert str(caught.value) == "2 write(s) still in flight after 0.01s; the hold was lifted, writes go on"
    held_again = await asyncio.wait_for(_hold_when_idle(gate, 2), 5)
    with pytest.raises(HoldBusy) as busy:
        await gate.hold(1)
    assert str(busy.value) == "another snapshot is holding writes; try again in a moment"
    assert held_again.release() >= 0.0 and not gate.held


async def _hold_when_idle(gate: WriteGate, leaving: int):
    holding = asyncio.create_task(gate.hold(30))
    await _steps()
    for _ in range(leaving):
        gate.leave()
    return await holding


async def test_a_second_hold_is_refused_and_does_not_lift_the_first() -> None:
    gate = WriteGate()
    assert gate.try_enter()
    first = asyncio.create_task(gate.hold(30))
    await _steps()
    with pytest.raises(HoldBusy, match="another snapshot"):
        await gate.hold(30)
    assert gate.held and not gate.try_enter(), "the refused hold must leave the first one on"
    gate.leave()
    hold = await first
    with pytest.raises(HoldBusy):
        await gate.hold(30)
    assert gate.held
    hold.release()
    assert not gate.held


async def test_release_always_reopens_and_a_stale_release_never_lifts_a_later_hold() -> None:
    gate = WriteGate()
    first = await gate.hold(30)
    assert first.release() >= 0 and not gate.held
    assert first.release() == 0.0 and not gate.held  # twice: nothing more
    second = await gate.hold(30)
    assert first.release() == 0.0 and gate.held, "the old handle must not open the new hold"
    assert not gate.try_enter()
    assert second.release() >= 0 and gate.try_enter()
    gate.leave()
    assert gate.in_flight == 0 and not gate.held


async def test_a_cancelled_hold_opens_the_gate() -> None:
    gate = WriteGate()
    assert gate.try_enter()
    holding = asyncio.create_task(gate.hold(30))
    await _steps()
    assert gate.held
    holding.cancel()
    await _steps()
    assert holding.cancelled() and not gate.held
    assert gate.try_enter() and gate.in_flight == 2


async def test_the_in_flight_count_is_exact(caplog: pytest.LogCaptureFixture) -> None:
    gate = WriteGate()
    await gate.enter()
    assert gate.try_enter()
    await gate.enter()
    assert gate.in_flight == 3
    gate.leave()
    gate.leave()
    assert gate.in_flight == 1 and not gate._idle.is_set()
    gate.leave()
    assert gate.in_flight == 0 and gate._idle.is_set()
    with caplog.at_level(logging.ERROR, logger="chromaguard.backup"):
        gate.leave()  # one leave too many (a bug elsewhere): logged, never negative
    assert gate.in_flight == 0
    assert [r.getMessage() for r in caplog.records] == [LEAVE_WITHOUT_ENTER]
    assert LEAVE_WITHOUT_ENTER == "write gate: leave() without a matching enter(); ignored"
    hold = await asyncio.wait_for(gate.hold(30), 1)  # and a hold is not stuck waiting for "-1" writes
    assert not gate.try_enter() and gate.in_flight == 0  # a refused try_enter counts nothing
    hold.release()
    assert gate.try_enter() and gate.in_flight == 1
    gate.leave()
    assert gate.in_flight == 0


# ---- take_online: the gate opens whatever happens ---------------------------------------------------


def _tiny_scene(root: Path) -> tuple[Path, Path, WriteGate]:
    """A data dir with one segment and an empty SQLite, an empty staging dir, and a gate."""
    data = root / "data"
    data.mkdir()
    (data / "seg").mkdir()
    (data / "seg" / "header.bin").write_bytes(b"x" * 100)
    sqlite3.connect(data / "chroma.sqlite3").close()
    staging = root / "staging"
    staging.mkdir()
    return data, staging, WriteGate()


async def test_a_snapshot_that_fails_mid_copy_opens_the_gate_and_leaves_nothing(tmp_path: Path,
                                                                                 monkeypatch) -> None:
    data, staging, gate = _tiny_scene(tmp_path)

    def broken_copy(src: Path, dest: Path, attempts: int = 3) -> int:
        (dest / "partial").mkdir(parents=True)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(snapshots, "copy_consistent", broken_copy)
    with pytest.raises(OSError):
        await take_online(gate, data, staging_root=str(staging))
    assert not gate.held and gate.try_enter()
    gate.leave()
    assert list(staging.iterdir()) == []

    monkeypatch.undo()
    monkeypatch.setattr(snapshots, "copy_data_dir", lambda src, dest: False)  # files changing all the time
    with pytest.raises(SnapshotError, match="kept changing"):
        await take_online(gate, data, staging_root=str(staging))
    assert not gate.held and list(staging.iterdir()) == []


async def test_a_cancelled_snapshot_keeps_writes_held_until_its_copy_ends_then_opens(tmp_path: Path,
                                                                                      monkeypatch) -> None:
    data, staging, gate = _tiny_scene(tmp_path)
    started, finish = threading.Event(), threading.Event()

    def slow_copy(src: Path, dest: Path, attempts: int = 3) -> int:
        started.set()
        finish.wait(30)
        copy_data_dir(src, dest)
        return 1

    monkeypatch.setattr(snapshots, "copy_consistent", slow_copy)
    task = asyncio.create_task(take_online(gate, data, staging_root=str(staging)))
    deadline = time.monotonic() + 10
    while not started.is_set():
        assert time.monotonic() < deadline, "the copy never started"
        await asyncio.sleep(0.01)
    second = asyncio.create_task(take_online(gate, data, staging_root=str(staging)))
    with pytest.raises(HoldBusy):
        await second
    task.cancel()
    await _steps()
    assert not task.done() and gate.held, "the gate must stay shut while the copy still runs"
    finish.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert not gate.held and list(staging.iterdir()) == []


# ---- end to end: many collections ----------------------------------------------------------------------


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return cli(*args, timeout=600, **env)


def test_the_hold_does_not_grow_with_the_number_of_collections(tmp_path: Path) -> None:
    n = 120
    with Guard() as g:
        expected: dict[str, int] = {}
        with httpx.Client(base_url=g.url, timeout=60) as http:
            for i in range(n):
                cid = http.post(f"{BASE}/collections", json={"name": f"many-{i:03d}"}).json()["id"]
                size = i % 7  # some empty
                if size:
                    r = http.post(f"{BASE}/collections/{cid}/add", json={
                        "ids": [f"x{j}" for j in range(size)],
                        "embeddings": [[float(i), float(j)] for j in range(size)],
                        "documents": [f"d{i}-{j}" for j in range(size)],
                        "metadatas": [{"i": i, "j": j, "half": j / 2, "odd": bool(j % 2)} for j in range(size)]})
                    assert r.status_code == 201, r.text
                if i % 50 == 0 and size > 1:
                    assert http.post(f"{BASE}/collections/{cid}/delete", json={"ids": ["x0"]}).status_code == 200
                    size -= 1
                expected[f"many-{i:03d}"] = size
        started = time.monotonic()
        created = httpx.post(g.url + "/chromaguard/snapshots", timeout=300)
        assert created.status_code == 201, created.text
        info = created.json()
        httpx.delete(g.url + f"/chromaguard/snapshots/{info['id']}", timeout=30)
        elapsed = time.monotonic() - started
        hold_ms, describe_ms = info["write_hold_ms"], info["after_hold_ms"]["describe"]
        # What the hold used to cover (a count and a sample per collection: 2.5 s for 300 before) now
        # runs after it; the hold is the copy alone. Generous: other tests may share the machine.
        assert hold_ms < describe_ms and hold_ms < elapsed * 1000 / 2, (hold_ms, describe_ms, elapsed)
        assert hold_ms < 2000, hold_ms

        assert info["write_hold"]["mirror"] is True
        # The mirror is up to date now: one collection written, and the next hold copies its
        # files and SQLite's, not the other collections'.
        with httpx.Client(base_url=g.url, timeout=60) as http:
            cid = http.get(f"{BASE}/collections/many-006").json()["id"]
            r = http.post(f"{BASE}/collections/{cid}/add", json={
                "ids": ["late"], "embeddings": [[6.0, 99.0]], "documents": ["late"]})
            assert r.status_code == 201, r.text
        again = httpx.post(g.url + "/chromaguard/snapshots", timeout=300).json()
        httpx.delete(g.url + f"/chromaguard/snapshots/{again['id']}", timeout=30)
        assert again["write_hold"]["mirror"] is True
        assert again["write_hold"]["copied"]["files"] <= 8 < again["files"], again
        expected["many-006"] += 1

        result = _cli("backup", "--url", g.url, "--output", str(tmp_path / "bk"))
        assert result.returncode == 0, result.stderr
    path = next((tmp_path / "bk").glob("*.tar.gz"))
    manifest = archive.read_manifest(path)
    assert manifest["write_hold_ms"] < 2000
    counts = {c["name"]: c["count"] for c in manifest["collections"]}
    assert counts == expected
    for c in manifest["collections"]:
        assert len(c["sample"]) == min(5, c["count"]), c  # nothing wrote meanwhile: all confirmed
        filled = int(c["name"].rsplit("-", 1)[1]) % 7 != 0
        assert c["dimension"] == (2 if filled else None), c
    report = verify(path)
    assert report.collections == n and report.records == sum(expected.values())
    assert report.sampled == sum(min(5, v) for v in expected.values())
    restored = tmp_path / "restored"
    restore(path, restored)
    with Guard(data_dir=restored) as again:
        client = http_client(again.port)
        assert client.get_collection("many-006").count() == 7
        got = client.get_collection("many-013").get(ids=["x5"], include=["documents", "metadatas"])
        assert got["documents"] == ["d13-5"] and got["metadatas"] == [{"i": 13, "j": 5, "half": 2.5, "odd": True}]


def test_backups_taken_under_racing_writers_always_verify(tmp_path: Path) -> None:
    """Writers that update a missing id, then add it (the live engine can then answer a get
    stale): every backup taken meanwhile verifies, its sample read from the copy itself."""
    with Guard() as g:
        col = http_client(g.port).create_collection("race", embedding_function=None)
        col.add(ids=[f"z{i}" for i in range(20)], embeddings=[[float(i), 0.0] for i in range(20)])
        stop = threading.Event()
        errors: list[str] = []

        def writer(k: int) -> None:
            client = http_client(g.port).get_collection("race")
            n = 0
            while not stop.is_set():
                rid = f"0{k}{n:05d}"  # ids that sort first: they land in the sample
                try:
                    client.update(ids=[rid], embeddings=[[9.0, 9.0]])
                except Exception:  # noqa: BLE001 - an update of a missing id may be refused
                    pass
                try:
                    client.add(ids=[rid], embeddings=[[float(n), float(k)]], documents=[f"w{k}-{n}"])
                except Exception as exc:  # noqa: BLE001
                    errors.append(repr(exc))
                n += 1

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
        for thread in threads:
            thread.start()
        try:
            for i in range(3):
                result = _cli("backup", "--url", g.url, "--output", str(tmp_path / f"bk{i}"))
                assert result.returncode == 0, result.stderr
        finally:
            stop.set()
            for thread in threads:
                thread.join()
    assert errors == []
    for i in range(3):
        report = verify(next((tmp_path / f"bk{i}").glob("*.tar.gz")))
        assert report.sampled == 5 and report.records >= 20
