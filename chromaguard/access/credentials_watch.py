"""Re-reads the credentials file when it changes, and on demand (SIGHUP).

A file can be read half written, and a half-written file can parse: a token cut short, or
a record whose ``tenant`` line has not arrived yet (its token then reaches every tenant). A
new inode proves nothing (an editor that renames the old file away first, ``rm`` then
``cat >``). So a new version is applied

- once it has been unchanged for ``settle`` seconds, when it only revokes or narrows;
- once it has been unchanged for ``hold`` seconds, when it looks unfinished (no newline at
  the end of a YAML or text file) or when it would widen access (a new token, a higher
  role, a wider scope): a writer that stalls longer than that is taken to have finished.
  ``SIGHUP`` applies a finished file at once.

A file that does not load is refused with an ERROR; the previous credentials stay in force.
Parsing runs off the event loop: a large file never stalls requests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from .credentials import CredentialsError, CredentialStore, half_written

log = logging.getLogger("chromaguard.auth")

Version = tuple[int, int, int, int, int]  # mtime_ns, ctime_ns, size, inode, device
CHANGED = "the file changed"  # why a reload the watcher itself started happened


class CredentialsWatcher:
    def __init__(self, path: Path, load: Callable[[], CredentialStore], apply: Callable[[CredentialStore], None],
                 current: CredentialStore, *, interval: float = 1.0, hold: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.clock = clock
        self.load = load
        self.apply = apply
        self.current = current
        self.interval = interval
        self.settle = min(0.5, interval)
        self.hold = max(hold, self.settle)
        self._applied = self._version()
        self._pending: tuple[Version | None, float] | None = None  # a new version, and since when it is so
        # The version a refusal or a wait was already logged for (a list: a deleted file's
        # version is None, and its refusal must be logged too).
        self._reported: list[Version | None] = []
        self._task: asyncio.Task[None] | None = None

    def _version(self) -> Version | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        # ctime too: an in-place change of the same size with its mtime put back (touch -r,
        # rsync -t --inplace) still moves it.
        return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_dev)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.check()

    async def check(self) -> None:
        """One look at the file: apply a new version once it has been still long enough."""
        version = self._version()
        if version == self._applied:
            self._pending = None
            return
        now = self.clock()
        if self._pending is None or self._pending[0] != version:
            self._pending = (version, now)
        still_for = now - self._pending[1]
        if still_for < self.settle:
            return
        store = await self._load(version, CHANGED)
        if store is None or self._version() != version:
            return  # refused, or it changed while being read: looked at again next round
        doubt = half_written(self.path) or self.current.widened_by(store)
        if doubt and still_for < self.hold:
            if self._reported != [version]:
                log.warning("credentials not reloaded yet: %s: %s; applied once the file has been unchanged "
                            "for %gs (send SIGHUP to apply a finished file at once)",
                            self.path, doubt, self.hold)
                self._reported = [version]
            return
        self._use(store, version, CHANGED)

    async def reload(self, why: str) -> bool:
        """Apply the file now (SIGHUP: the operator says it is finished), unless it is unfinished."""
        version = self._version()
        unfinished = half_written(self.path)
        if unfinished:
            log.error("credentials not reloaded (%s): %s: %s; end the file with a newline", why, self.path,
                      unfinished)
            return False
        store = await self._load(version, why)
        if store is None:
            return False
        self._use(store, version, why)
        return True

    async def _load(self, version: Version | None, why: str) -> CredentialStore | None:
        try:
            return await asyncio.to_thread(self.load)
        except CredentialsError as exc:
            if self._reported != [version] or why != CHANGED:
                log.error("credentials not reloaded (%s): %s; the previous credentials stay in force", why, exc)
                self._reported = [version]
            return None
        except Exception:  # noqa: BLE001 - a reader's bug must not end the watch (revocations would stop)
            if self._reported != [version] or why != CHANGED:
                log.exception("credentials not reloaded (%s): the previous credentials stay in force", why)
                self._reported = [version]
            return None

    def _use(self, store: CredentialStore, version: Version | None, why: str) -> None:
        store.keep_verified(self.current)
        self.apply(store)
        self.current = store
        self._applied = version
        self._pending = None
        log.info("credentials reloaded (%s): %d entries", why, len(store))
