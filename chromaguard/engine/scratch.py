"""A short-lived real engine on a directory, for verifying snapshots and restores."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from ..http11.client import UpstreamPool
from .process import EngineProcess


@contextlib.asynccontextmanager
async def engine_on(data_dir: Path, *, ready_timeout: float = 60.0) -> AsyncIterator[UpstreamPool]:
    engine = EngineProcess(data_dir)
    try:
        await engine.start()  # inside: cancelled once the process exists, it is still stopped
        await engine.wait_ready(ready_timeout)
        pool = UpstreamPool(engine.url)
        try:
            yield pool
        finally:
            pool.close()
    finally:
        await engine.stop()
        engine.cleanup()
