"""The front door's control endpoints: backups (and, for access, ``/chromaguard/status``).

    POST   /chromaguard/snapshots               hold writes, copy, release → {id, write_hold_ms, ...}
    GET    /chromaguard/snapshots/{id}/archive  the snapshot as a tar stream
    DELETE /chromaguard/snapshots/{id}          drop it (also done after 1 h, and at shutdown)

Who may call them: with client auth on, an admin (the router says so); with auth off, only
direct callers on this host (``ControlAccess``) or whoever presents the control token.

What a snapshot may cost: one is taken at a time (another POST meanwhile is 409); it is
refused (507) unless it fits in the staging filesystem's free space with
``min_free`` to spare; at most ``max_kept`` are kept for download, a new one (once it exists)
dropping the oldest that nobody is downloading (503 when all are); at most ``MAX_STREAMS``
downloads run at once (429), and one that reads nothing for ``STALLED_AFTER`` is cut.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import ipaddress
import logging
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ..access.auth import HEADER_BLANKS, Denial
from ..access.credentials import digest
from ..proxy.writegate import HoldBusy, HoldTimeout, WriteGate
from .archive import stream_tar
from .mirror import Mirror
from .snapshot import Snapshot, SnapshotError, estimated_size, take_online

if TYPE_CHECKING:
    from ..http11.server import Exchange

log = logging.getLogger("chromaguard.backup")

_MAX_AGE = 3600.0
MAX_STREAMS = 4  # archive downloads at once: each pins a snapshot on disk and a thread
STALLED_AFTER = 60.0  # a download that reads nothing this long is cut (its snapshot unpinned)
DEFAULT_MAX_KEPT = 2
DEFAULT_MIN_FREE = 256 * 1024 * 1024
CONTROL_TOKEN_SETTING = "CHROMAGUARD_CONTROL_TOKEN"
# A request carrying one of these came through a proxy (or says it did): its peer address is
# the proxy's, so a loopback peer proves nothing about who is asking.
_FORWARDING_HEADERS = frozenset({b"x-forwarded-for", b"forwarded", b"x-real-ip", b"via"})


def is_loopback(client: str) -> bool:
    """Whether a peer address (as the server saw it, never a header) is this host: 127.0.0.0/8,
    ::1, or either spelled as IPv4-mapped IPv6 (a dual-stack listener's ``::ffff:127.0.0.1``)."""
    try:
        ip = ipaddress.ip_address(client)  # a scope (``::1%lo``) is part of the address
    except ValueError:  # "" (unknown) or not an address
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _local_host_header(value: bytes) -> bool:
    """A Host naming this machine by address or as localhost: a page on another site that got
    its name pointed at 127.0.0.1 (DNS rebinding) sends its own name here."""
    host = value.decode("latin-1").strip().lower()
    if host.startswith("["):
        host, _, rest = host[1:].partition("]")
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return False  # "[::1]evil": no browser sends that; nothing local does either
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class ControlAccess:
    """Who may use the control endpoints while client auth is off.

    A direct local caller may: the peer address is loopback, and the request neither came
    through a proxy (forwarding headers), nor from a browser (``Origin``), nor names a host
    that is not this one (DNS rebinding). So may anyone presenting the control token
    (``Authorization: Bearer`` or ``X-Chroma-Token``), compared by digest in constant time.
    ``X-Forwarded-For`` never makes a caller local.
    """

    def __init__(self, token: str = "") -> None:
        self._digest = digest(token) if token else None

    def refusal(self, client: str, headers: Iterable[tuple[bytes, bytes]]) -> Denial | None:
        """None to let the request in, else the 403 to answer."""
        indirect = False  # through a proxy, from a browser, or for a name that is not this host
        offered: list[bytes] = []  # compared as the bytes sent, as client tokens are
        for name, value in headers:
            if name in _FORWARDING_HEADERS or name == b"origin":
                indirect = True
            elif name == b"host" and not _local_host_header(value):
                indirect = True
            elif name == b"sec-fetch-site" and value.strip().lower() not in (b"none", b"same-origin"):
                indirect = True  # a browser sent it on a page's behalf
            elif name == b"referer":
                indirect = True  # only browsers send one; a local script does not
            elif name == b"authorization":
                scheme, _, rest = value.strip(HEADER_BLANKS).partition(b" ")
                if scheme.lower() == b"bearer" and rest.strip(HEADER_BLANKS):
                    offered.append(rest.strip(HEADER_BLANKS))
            elif name == b"x-chroma-token":
                offered.append(value.strip(HEADER_BLANKS))
        if is_loopback(client) and not indirect:
            return None  # whatever token it sends along (CHROMAGUARD_TOKEN may be set for another server)
        if self._digest is not None and offered:
            if len(offered) > 1:  # one guess per request, as for client tokens
                return Denial(403, "AuthorizationError", "chromaguard: send the control token in exactly one header")
            if hmac.compare_digest(digest(offered[0]), self._digest):
                return None
            return Denial(403, "AuthorizationError", "chromaguard: the control token is not valid "
                          f"(it must equal {CONTROL_TOKEN_SETTING} on the server)")
        how = (f"send the control token ({CONTROL_TOKEN_SETTING}) as 'Authorization: Bearer <token>' "
               "(chromaguard backup --token)" if self._digest is not None else
               f"or set {CONTROL_TOKEN_SETTING} on the server and send it as 'Authorization: Bearer <token>'")
        return Denial(403, "AuthorizationError",
                      "chromaguard: with auth off, /chromaguard/ endpoints answer only direct calls from this host "
                      f"(e.g. chromaguard backup --url http://127.0.0.1:PORT, no proxy or browser); {how}")


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


class SnapshotService:
    def __init__(self, gate: WriteGate, data_dir: Path, *, hold_timeout: float = 30.0,
                 staging_root: str | Path | None = None, max_kept: int = DEFAULT_MAX_KEPT,
                 min_free: int = DEFAULT_MIN_FREE, mirror: Mirror | None = None) -> None:
        self.gate = gate
        self.mirror = mirror
        self.data_dir = data_dir
        self.hold_timeout = hold_timeout
        self.staging_root = str(staging_root) if staging_root is not None else None
        self.max_kept = max(1, max_kept)
        self.min_free = max(0, min_free)
        self.snapshots: dict[str, Snapshot] = {}  # oldest first
        self._downloads: dict[str, int] = {}  # snapshot id -> archive streams running
        self.taking = False

    async def handle(self, exchange: Exchange, segments: list[str]) -> None:
        self._expire()
        method = exchange.method
        if method == "POST" and segments == ["chromaguard", "snapshots"]:
            await self._create(exchange)
        elif len(segments) == 4 and segments[3] == "archive" and method in ("GET", "HEAD"):
            await self._archive(segments[2], exchange)
        elif len(segments) == 3 and method == "DELETE":
            deleted = self._discard(segments[2])
            exchange.respond_json(200 if deleted else 404, {"deleted": deleted})
        else:
            exchange.respond_error(404, "NotFoundError", "chromaguard: no such snapshot endpoint")

    async def _create(self, exchange: Exchange) -> None:
        if self.taking or self.gate.held:
            exchange.respond_error(409, "ConflictError", "chromaguard: a snapshot is already being taken; "
                                   "retry when it is done (one at a time)", [(b"retry-after", b"5")])
            return
        self.taking = True  # set before the first await: a second POST sees it
        try:
            refusal = await self._make_room()
            if refusal is not None:
                exchange.respond_error(refusal.status, refusal.error, refusal.message, refusal.headers)
                return
            snapshot = await take_online(self.gate, self.data_dir, staging_root=self.staging_root,
                                         hold_timeout=self.hold_timeout, mirror=self.mirror)
        except HoldBusy as exc:
            exchange.respond_error(409, "ConflictError", f"chromaguard: {exc}", [(b"retry-after", b"5")])
            return
        except (SnapshotError, HoldTimeout) as exc:
            exchange.respond_error(503, "ServiceUnavailable", f"chromaguard: snapshot failed: {exc}",
                                   [(b"retry-after", b"5")])
            return
        except sqlite3.Error as exc:  # e.g. a hot journal left by a crash: the read-only copy cannot settle it
            exchange.respond_error(503, "ServiceUnavailable", f"chromaguard: snapshot failed: the engine's "
                                   f"chroma.sqlite3 could not be copied ({exc}); retry once the engine is up",
                                   [(b"retry-after", b"5")])
            return
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                exchange.respond_error(507, "InsufficientStorage", "chromaguard: the snapshot filled its "
                                       f"filesystem ({self._staging()}) and was dropped; free space there or set "
                                       "CHROMAGUARD_SNAPSHOT_DIR to a larger one")
            else:
                exchange.respond_error(500, "InternalError", f"chromaguard: snapshot failed: {exc}")
            return
        finally:
            self.taking = False
        self.snapshots[snapshot.id] = snapshot
        while len(self.snapshots) > self.max_kept and self._drop_oldest_idle(
                f"at most {self.max_kept} snapshot(s) are kept", keep=snapshot.id):
            pass  # only now: a failed POST must not cost another client its snapshot
        asyncio.get_running_loop().call_later(_MAX_AGE, self._discard, snapshot.id)  # a client that never came back
        manifest = snapshot.manifest
        log.info("snapshot %s taken: writes held for %.1f ms, %d collection(s), %d file(s); described in %.0f ms "
                 "after the hold", snapshot.id, manifest["write_hold_ms"], len(manifest["collections"]),
                 len(manifest["files"]), manifest["after_hold_ms"]["describe"])
        exchange.respond_json(201, {
            "id": snapshot.id, "write_hold_ms": manifest["write_hold_ms"], "write_hold": manifest["write_hold"],
            "after_hold_ms": manifest["after_hold_ms"],
            "collections": len(manifest["collections"]), "files": len(manifest["files"]),
            "bytes": sum(f["size"] for f in manifest["files"]),
        })

    def _staging(self) -> Path:
        return Path(self.staging_root or tempfile.gettempdir())

    async def _make_room(self) -> Denial | None:
        """Keep within ``max_kept`` and the staging filesystem's free space (less ``min_free``),
        dropping the oldest snapshots nobody is downloading; a Denial when that is not enough."""
        if len(self.snapshots) >= self.max_kept and all(key in self._downloads for key in self.snapshots):
            return Denial(503, "ServiceUnavailable", f"chromaguard: all {len(self.snapshots)} kept snapshot(s) "
                          "are being downloaded (CHROMAGUARD_SNAPSHOT_MAX_KEPT); retry when one is done",
                          ((b"retry-after", b"30"),))
        staging = self._staging()
        staging.mkdir(parents=True, exist_ok=True)
        need = await asyncio.to_thread(estimated_size, self.data_dir)
        if self.mirror is not None:  # a mirror not in use already holds most of it
            need = max(0, need - await asyncio.to_thread(self.mirror.held_bytes))
        while True:
            free = shutil.disk_usage(staging).free
            if free - need >= self.min_free:
                return None
            if not self._drop_oldest_idle("room on disk"):
                return Denial(507, "InsufficientStorage",
                              f"chromaguard: no room for a snapshot in {staging}: it needs about {_mib(need)} and "
                              f"{_mib(self.min_free)} must stay free (CHROMAGUARD_SNAPSHOT_MIN_FREE), {_mib(free)} "
                              "are free; free space there or set CHROMAGUARD_SNAPSHOT_DIR to a larger filesystem")

    def _drop_oldest_idle(self, why: str, keep: str = "") -> bool:
        for key in self.snapshots:
            if key not in self._downloads and key != keep:
                log.info("snapshot %s dropped before its client fetched it: %s", key, why)
                self._discard(key)
                return True
        return False

    async def _archive(self, snapshot_id: str, exchange: Exchange) -> None:
        snapshot = self.snapshots.get(snapshot_id)
        if snapshot is None:
            exchange.respond_error(404, "NotFoundError", f"chromaguard: no snapshot {snapshot_id}")
            return
        if exchange.method == "HEAD":  # it exists: nothing read, nothing counted
            exchange.start(200, [(b"content-type", b"application/x-tar")])
            exchange.end()
            return
        if sum(self._downloads.values()) >= MAX_STREAMS:
            exchange.respond_error(429, "RateLimitError", f"chromaguard: {MAX_STREAMS} snapshot downloads are "
                                   "running; retry when one is done", [(b"retry-after", b"10")])
            return
        self._downloads[snapshot_id] = self._downloads.get(snapshot_id, 0) + 1
        try:
            exchange.start(200, [(b"content-type", b"application/x-tar")])
            async for chunk in stream_tar(snapshot):
                if exchange.disconnected:
                    return
                exchange.write(chunk)
                try:
                    await asyncio.wait_for(exchange.drain(), STALLED_AFTER)
                except TimeoutError:
                    log.warning("snapshot %s: a download read nothing for %gs; cut", snapshot_id, STALLED_AFTER)
                    exchange.abort()
                    return
            exchange.end()
        finally:
            left = self._downloads.pop(snapshot_id) - 1
            if left:
                self._downloads[snapshot_id] = left
            elif self.snapshots.get(snapshot_id) is not snapshot:
                snapshot.remove()  # dropped while it was being read: its files went last

    def _discard(self, snapshot_id: str) -> bool:
        """Forget a snapshot; its files go now, or when the last download of it ends."""
        snapshot = self.snapshots.pop(snapshot_id, None)
        if snapshot is None:
            return False
        if snapshot_id not in self._downloads:
            snapshot.remove()
        return True

    def _expire(self) -> None:
        now = time.time()
        for key, snapshot in list(self.snapshots.items()):
            if now - snapshot.created > _MAX_AGE:
                self._discard(key)

    def close(self) -> None:
        for snapshot in self.snapshots.values():
            snapshot.remove()
        self.snapshots.clear()
