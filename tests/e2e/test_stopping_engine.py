"""A stopping service ends a test restore while its scratch engine is at work, not after it."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support.repositories import write_data

from chromaguard.backup import restore as restore_module
from chromaguard.backup.repository import Repository, Stopped
from chromaguard.backup.restore import verify_in
from chromaguard.backup.take import offline_to
from chromaguard.engine.process import EngineProcess


def test_a_test_restore_stopped_while_its_engine_checks_stops_the_engine_and_is_noted_neither_way(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "data"
    write_data(source, {"docs": {"add": [0, 500], "dim": 16}})
    repo = Repository.open(str(tmp_path / "repo"), create=True)
    made = offline_to(source, repo)
    stop = threading.Event()
    real_describe = restore_module.describe_collections

    async def a_minute_of_index_loading(pool: Any, data: Path) -> Any:
        stop.set()  # SIGTERM, while the real engine is up and at work
        await asyncio.sleep(60)
        return await real_describe(pool, data)

    exits: list[int | None] = []
    real_stop = EngineProcess.stop

    async def stop_and_note(engine: EngineProcess, timeout: float = 10.0) -> None:
        await real_stop(engine, timeout)
        exits.append(engine.returncode)

    monkeypatch.setattr(restore_module, "describe_collections", a_minute_of_index_loading)
    monkeypatch.setattr(EngineProcess, "stop", stop_and_note)
    staging = tmp_path / "staging"
    staging.mkdir()
    started = time.monotonic()
    with pytest.raises(Stopped, match="test restore was stopped"):
        verify_in(repo, made.id, into=staging, stop=stop)
    assert time.monotonic() - started < 30, "it waited for the engine's work"
    assert exits and exits[0] is not None, "the scratch engine was left running"
    assert repo.backups()[0].verified is None
    assert list(staging.iterdir()) == [], "the scratch data dir is removed"
