"""The audit log's writer: every line written or counted as dropped, never a wait on the
request path, reopened between writes, nothing lost silently at close."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from chromaguard.telemetry import audit as audit_module
from chromaguard.telemetry.audit import AuditLog


def test_lines_from_many_threads_with_reopens_are_all_written_or_counted(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path))
    sent = 0
    lock = threading.Lock()

    def writer(k: int) -> None:
        nonlocal sent
        for i in range(2000):
            log.record({"operation": "add", "n": i, "k": k})
            with lock:
                sent += 1

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    rotated = []
    for n in range(5):  # logrotate, again and again, while lines flow
        time.sleep(0.01)
        moved = path.with_name(f"audit.jsonl.{n}")
        if path.exists():
            path.rename(moved)
            rotated.append(moved)
        log.reopen()
    for t in threads:
        t.join()
    log.close()
    lines = [json.loads(line) for f in [*rotated, path] if f.exists() for line in f.read_text().splitlines()]
    assert sent == 8000 and len(lines) + log.dropped == sent, (len(lines), log.dropped)
    assert log.written == len(lines)
    assert all(line["operation"] == "add" and line["time"].endswith("Z") for line in lines)


def test_a_full_queue_drops_and_counts_without_waiting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_module, "QUEUE_LINES", 10)
    gate = threading.Event()
    log = AuditLog(str(tmp_path / "audit.jsonl"))
    real = log._write  # the writer is made slow: the disk stalls

    def stalled(data: bytes, count: int) -> None:
        gate.wait(10)
        real(data, count)

    log._write = stalled  # type: ignore[method-assign]
    started = time.monotonic()
    for i in range(200):
        log.record({"n": i})
    assert time.monotonic() - started < 1, "the request path never waits for the disk"
    assert log.dropped >= 180 and "queue is full" in (log.last_error or "")
    gate.set()
    log.close()
    written = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert len(written) + log.dropped == 200


def test_after_close_a_line_is_counted_as_dropped(tmp_path: Path) -> None:
    log = AuditLog(str(tmp_path / "audit.jsonl"))
    log.record({"n": 1})
    log.close()
    log.record({"n": 2})
    assert log.written == 1 and log.dropped == 1 and "closed" in (log.last_error or "")
