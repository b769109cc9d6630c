"""The audit log: one JSON line per state-changing or admin request and per refused one.

Who did what, from where, to which tenant, database and collection, with what result and under
which trace id; never a secret (the principal's name, not its token). Lines are written by a
thread of their own, so a slow or full disk, or a stdout nobody reads, never holds up a
request: the request path only puts a line on a bounded queue.

When a line cannot be written (the queue full, the file unwritable), the request still goes
ahead. An audit log that fails must not take the database down with it, and a dropped line is
never silent: each is counted (``chromaguard_audit_lines_dropped_total`` and
``chromaguard status``) and logged, at most once a minute. Alert on that counter. ``SIGHUP``
reopens the file, for log rotation (logrotate's default, or ``copytruncate`` left unneeded).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sys
import threading
import time
from typing import Any

log = logging.getLogger("chromaguard.audit")

STDOUT = "stdout"
QUEUE_LINES = 10_000
REFUSED = frozenset({401, 403, 429})
_REPORT_EVERY = 60.0


def parse_target(raw: Any) -> str | None:
    """``stdout``, a file path, or off (empty, ``off``, ``none``)."""
    text = str(raw).strip()
    if text.lower() in ("", "off", "none", "false"):
        return None
    if text.lower() in (STDOUT, "-"):
        return STDOUT
    return text


class AuditLog:
    def __init__(self, target: str) -> None:
        self.target = target
        self.written = 0
        self._dropped_here = 0  # by the request path (queue full)
        self._dropped_writing = 0  # by the writer thread (each counter has one writer)
        self.last_error: str | None = None
        self._queue: queue.Queue[str] = queue.Queue(QUEUE_LINES)
        self._reopen = threading.Event()  # flags, not queue items: the writer never waits to put one back
        self._stop = threading.Event()
        self._closed = False
        self._fd = self._open()  # at start-up an unwritable file is an error, not a drop
        self._reported_at = 0.0
        self._thread = threading.Thread(target=self._run, name="chromaguard-audit", daemon=True)
        self._thread.start()

    def _open(self) -> int:
        if self.target == STDOUT:
            return sys.stdout.fileno()
        return os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def record(self, entry: dict[str, Any]) -> None:
        """Queue one line; never blocks, never raises."""
        if self._closed:
            self._drop("the audit log was closed (the service is stopping)")
            return
        entry = {"time": _now(), **entry}
        try:
            self._queue.put_nowait(json.dumps(entry, separators=(",", ":"), default=str) + "\n")
        except queue.Full:
            self._drop("the queue is full (the audit log is not being written fast enough)")

    def reopen(self) -> None:
        """After a rotation: the lines from the next write on go to a new file of the same name."""
        self._reopen.set()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (for at most ``timeout``), then stop; later lines count as dropped."""
        self._closed = True
        self._stop.set()
        self._thread.join(timeout)
        left = self._queue.qsize()
        if self._thread.is_alive() or left:
            self._dropped_here += left
            self._report(f"{left} line(s) were still queued when the service stopped")

    def _run(self) -> None:
        while True:
            if self._reopen.is_set():
                self._reopen.clear()
                self._swap()
            try:
                lines = [self._queue.get(timeout=0.2)]
            except queue.Empty:
                if self._stop.is_set():
                    break
                continue
            while len(lines) < 512:  # one write for what queued up meanwhile
                try:
                    lines.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._write("".join(lines).encode(), len(lines))
        if self.target != STDOUT:
            os.close(self._fd)

    def _write(self, data: bytes, count: int) -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            self._dropped_writing += count
            self._report(f"{self.target}: {exc.strerror or exc}")
            return
        self.written += count

    def _swap(self) -> None:
        if self.target == STDOUT:
            return
        try:
            fd = self._open()
        except OSError as exc:
            self._report(f"cannot reopen {self.target} ({exc.strerror or exc}); still writing to the old file")
            return
        old, self._fd = self._fd, fd
        os.close(old)
        log.info("audit log reopened: %s", self.target)

    def _drop(self, why: str) -> None:
        self._dropped_here += 1
        self._report(why)

    @property
    def dropped(self) -> int:
        return self._dropped_here + self._dropped_writing

    def _report(self, why: str) -> None:
        self.last_error = why
        now = time.monotonic()
        if now - self._reported_at >= _REPORT_EVERY:
            self._reported_at = now
            log.error("audit log: lines are being dropped (%d so far): %s; requests go on", self.dropped, why)


def _now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
