"""One service per data directory, enforced by an flock the kernel drops on death.

The lock file descriptor is also handed to the engine, so the directory stays
locked for as long as either the guard or its engine is alive.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..errors import StartupError

LOCK_NAME = ".chromaguard.lock"


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StartupError(
                f"data dir {self.path.parent} is in use by chromaguard (pid {holder}); "
                "stop that service or choose another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
