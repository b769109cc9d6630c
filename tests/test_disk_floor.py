"""The write floor's decisions, on a scripted ``statvfs`` and a clock the test moves.

test_stuck_engine fills a real tmpfs under a writer; these pin each rule: the floor, what
still goes through, a failed or stale sample, and that a write never waits on the disk.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from chromaguard.readiness import DiskFloor, room_floor

MiB = 2**20
UNTIL = "writes are refused until there is room (reads, and deleting collections, still work)"


class Disk:
    def __init__(self, free: int, total: int) -> None:
        self.free, self.total, self.error, self.calls = free, total, None, 0

    def __call__(self, path: object) -> SimpleNamespace:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return SimpleNamespace(f_bavail=self.free // 4096, f_frsize=4096, f_blocks=self.total // 4096)


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Disk:
    fake = Disk(free=100 * MiB, total=2048 * MiB)
    monkeypatch.setattr(os, "statvfs", fake)
    return fake


def test_the_floor_is_64_mib_or_a_twentieth_of_a_small_disk() -> None:
    assert room_floor(2048 * MiB) == 64 * MiB and room_floor(1280 * MiB) == 64 * MiB
    assert room_floor(200 * MiB) == 10 * MiB and room_floor(20 * MiB) == MiB


def test_writes_go_on_at_the_floor_and_stop_below_it(disk: Disk) -> None:
    now = [0.0]
    floor = DiskFloor(Path("/data"), clock=lambda: now[0])
    assert floor.refusal("add") is None
    disk.free = 64 * MiB
    floor.sample()
    assert floor.refusal("add") is None  # exactly the floor: room
    disk.free = 64 * MiB - 4096
    floor.sample()
    assert floor.refusal("add") == ("chromaguard: the data dir's disk has 63 MiB free, less than the 64 MiB the "
                                    f"engine's writes need; {UNTIL}: free space under the data dir")
    for operation in ("upsert", "update", "delete", "create_collection", "modify_collection", "fork", "unknown",
                      None):
        assert floor.refusal(operation) is not None, operation
    assert floor.refusal("delete_collection") is None and floor.refusal("delete_database") is None


def test_a_write_looks_at_the_last_sample_and_never_at_the_disk(disk: Disk) -> None:
    floor = DiskFloor(Path("/data"))
    calls = disk.calls
    for _ in range(100):
        floor.refusal("add")
    assert disk.calls == calls


def test_a_failed_sample_refuses_writes_and_says_why(disk: Disk) -> None:
    floor = DiskFloor(Path("/data"))
    disk.error = OSError(5, "Input/output error")
    floor.sample()
    assert floor.refusal("add") == f"chromaguard: cannot read the data dir's free space (Input/output error); {UNTIL}"
    assert floor.refusal("delete_collection") is None
    disk.error = None
    floor.sample()
    assert floor.refusal("add") is None


def test_a_sample_older_than_stale_after_refuses_writes(disk: Disk) -> None:
    now = [0.0]
    floor = DiskFloor(Path("/data"), stale_after=5.0, clock=lambda: now[0])
    now[0] = 5.0
    assert floor.refusal("add") is None  # exactly the limit: still fresh
    now[0] = 12.4
    assert floor.refusal("add") == ("chromaguard: the data dir's disk has not said how much space is free for 12s "
                                    f"(a hung disk?); {UNTIL}")
    floor.sample()
    assert floor.refusal("add") is None


def test_the_defaults_sample_five_times_a_second_and_give_up_after_five(disk: Disk) -> None:
    floor = DiskFloor(Path("/data"))
    assert (floor.every, floor.stale_after) == (0.2, 5.0)


def test_run_samples_in_a_thread_again_and_again(disk: Disk) -> None:
    async def scene() -> int:
        floor = DiskFloor(Path("/data"), every=0.01)
        before = disk.calls
        task = asyncio.create_task(floor.run())
        await asyncio.sleep(0.2)
        disk.free = 0
        await asyncio.sleep(0.1)
        refused = floor.refusal("add")
        task.cancel()
        assert refused is not None and "0.0 MiB free" in refused
        return disk.calls - before

    assert asyncio.run(scene()) >= 5
