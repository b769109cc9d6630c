"""The front door's backup endpoints (admin only):

    POST   /chromaguard/snapshots               hold writes, copy, release → {id, write_hold_ms, ...}
    GET    /chromaguard/snapshots/{id}/archive  the snapshot as a tar stream
    DELETE /chromaguard/snapshots/{id}          drop it (also done after 1 h, and at shutdown)
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .archive import stream_tar
from .snapshot import Snapshot, SnapshotError, take_online
from .upstream import UpstreamPool
from .writegate import HoldTimeout, WriteGate

if TYPE_CHECKING:
    from .httpserver import Exchange

log = logging.getLogger("chromaguard.backup")

_MAX_AGE = 3600.0


class SnapshotService:
    def __init__(self, gate: WriteGate, data_dir: Path, pool: UpstreamPool, *, hold_timeout: float = 30.0,
                 staging_root: str | None = None) -> None:
        self.gate = gate
        self.data_dir = data_dir
        self.pool = pool
        self.hold_timeout = hold_timeout
        self.staging_root = staging_root
        self.snapshots: dict[str, Snapshot] = {}

    async def handle(self, exchange: Exchange, segments: list[str]) -> None:
        self._expire()
        method = exchange.method
        if method == "POST" and segments == ["chromaguard", "snapshots"]:
            await self._create(exchange)
        elif len(segments) == 4 and segments[3] == "archive" and method in ("GET", "HEAD"):
            await self._archive(segments[2], exchange)
        elif len(segments) == 3 and method == "DELETE":
            snapshot = self.snapshots.pop(segments[2], None)
            if snapshot is not None:
                snapshot.remove()
            exchange.respond_json(200 if snapshot else 404, {"deleted": snapshot is not None})
        else:
            exchange.respond_error(404, "NotFoundError", "chromaguard: no such snapshot endpoint")

    async def _create(self, exchange: Exchange) -> None:
        try:
            snapshot = await take_online(self.gate, self.data_dir, self.pool, staging_root=self.staging_root,
                                         hold_timeout=self.hold_timeout)
        except (SnapshotError, HoldTimeout) as exc:
            exchange.respond_error(503, "ServiceUnavailable", f"chromaguard: snapshot failed: {exc}",
                                   [(b"retry-after", b"5")])
            return
        except OSError as exc:
            exchange.respond_error(500, "InternalError", f"chromaguard: snapshot failed: {exc}")
            return
        self.snapshots[snapshot.id] = snapshot
        asyncio.get_running_loop().call_later(_MAX_AGE, self._drop, snapshot.id)  # a client that never came back
        manifest = snapshot.manifest
        log.info("snapshot %s taken: writes held for %.1f ms, %d collection(s), %d file(s)", snapshot.id,
                 manifest["write_hold_ms"], len(manifest["collections"]), len(manifest["files"]))
        exchange.respond_json(201, {
            "id": snapshot.id, "write_hold_ms": manifest["write_hold_ms"], "write_hold": manifest["write_hold"],
            "collections": len(manifest["collections"]), "files": len(manifest["files"]),
            "bytes": sum(f["size"] for f in manifest["files"]),
        })

    async def _archive(self, snapshot_id: str, exchange: Exchange) -> None:
        snapshot = self.snapshots.get(snapshot_id)
        if snapshot is None:
            exchange.respond_error(404, "NotFoundError", f"chromaguard: no snapshot {snapshot_id}")
            return
        exchange.start(200, [(b"content-type", b"application/x-tar")])
        async for chunk in stream_tar(snapshot):
            if exchange.disconnected:
                return
            exchange.write(chunk)
            await exchange.drain()
        exchange.end()

    def _drop(self, snapshot_id: str) -> None:
        snapshot = self.snapshots.pop(snapshot_id, None)
        if snapshot is not None:
            snapshot.remove()

    def _expire(self) -> None:
        now = time.time()
        for key, snapshot in list(self.snapshots.items()):
            if now - snapshot.created > _MAX_AGE:
                snapshot.remove()
                del self.snapshots[key]

    def close(self) -> None:
        for snapshot in self.snapshots.values():
            snapshot.remove()
        self.snapshots.clear()
