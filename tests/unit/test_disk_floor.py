"""The write floor's decisions, on a scripted ``statvfs`` and a clock the test moves.

test_stuck_engine fills a real tmpfs under a writer; these pin each rule: the floor, what
still goes through, a failed or stale sample, and that a write never waits on the disk.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from chromaguard.health.readiness import DiskFloor, room_floor

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
    floor.sample()
    assert floor.refusal("add") is None
    disk.free = 64 * MiB
    floor.sample()
    assert floor.refusal("add") is None  # exactly the floor: room
    disk.free = 64 * MiB - 4096
    floor.sample()
    assert floor.refusal("add") == ("chromaguard: the data dir's disk has 63 MiB free, and the engine's writes need "
                                    f"64 MiB left after this one; {UNTIL}: free space under the data dir")
    for operation in ("upsert", "update", "delete", "create_collection", "modify_collection", "fork", "unknown",
                      None):
        assert floor.refusal(operation) is not None, operation
    assert floor.refusal("delete_collection") is None and floor.refusal("delete_database") is None


def test_a_write_counts_twice_its_size_and_what_was_let_through_since_the_last_sample(disk: Disk) -> None:
    floor = DiskFloor(Path("/data"))
    disk.free = 100 * MiB
    floor.sample()
    assert floor.refusal("add", 18 * MiB - 1) is None  # 100 - 2 x 18 = 64: just enough, and counted
    assert floor.refusal("add", 1) is None  # exactly the floor left
    assert floor.refusal("add", 1) is not None  # nothing more until the next sample
    assert floor.refusal("delete_collection", 10 * MiB) is None
    floor.sample()  # the disk still says 100 MiB: what was let through is forgotten with the old sample
    assert floor.refusal("upsert", 18 * MiB) is None
    disk.free = 100 * MiB
    floor.sample()
    # a refused one is not counted
    assert floor.refusal("add", 19 * MiB) is not None and floor.refusal("add", 18 * MiB) is None


def test_a_write_looks_at_the_last_sample_and_never_at_the_disk(disk: Disk) -> None:
    floor = DiskFloor(Path("/data"))
    floor.sample()
    calls = disk.calls
    for _ in range(100):
        floor.refusal("add")
    assert disk.calls == calls


def test_a_failed_sample_refuses_writes_and_says_why(disk: Disk) -> None:
    floor = DiskFloor(Path("/data"))
    floor.sample()
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
    floor.sample()
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


def test_before_its_first_sample_writes_are_refused(disk: Disk) -> None:
    floor = DiskFloor(Path("/data"))
    assert disk.calls == 0  # never on the caller's thread
    assert floor.refusal("add") == f"chromaguard: cannot read the data dir's free space (not read yet); {UNTIL}"
    floor.start()  # waits for the first sample
    try:
        assert floor.refusal("add") is None
    finally:
        floor.stop()


def test_its_own_thread_samples_again_and_again_until_stopped(disk: Disk) -> None:
    floor = DiskFloor(Path("/data"), every=0.01)
    floor.start()
    try:
        deadline = time.monotonic() + 5
        while disk.calls < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert disk.calls >= 5
        disk.free = 0
        time.sleep(0.1)
        refused = floor.refusal("add")
        assert refused is not None and "0.0 MiB free" in refused
    finally:
        floor.stop()
    time.sleep(0.05)
    calls = disk.calls
    time.sleep(0.1)
    assert disk.calls == calls, "stopped"


def test_a_hung_disk_stalls_only_the_sampling_thread(disk: Disk, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    release = threading.Event()

    def hung(path: object) -> None:
        release.wait(10)
        raise OSError(5, "Input/output error")

    floor = DiskFloor(Path("/data"), every=0.01, stale_after=0.2)
    floor.sample()
    monkeypatch.setattr(os, "statvfs", hung)
    floor.start()
    try:
        started = time.monotonic()
        assert floor.refusal("add") is None  # answered at once from the last sample
        time.sleep(0.3)
        refused = floor.refusal("add")
        assert refused is not None and "has not said how much space is free" in refused
        assert time.monotonic() - started < 2
    finally:
        floor.stop()
        release.set()
