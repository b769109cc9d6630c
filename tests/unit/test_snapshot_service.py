"""The snapshot endpoints' every answer, in-process: one snapshot at a time, the disk budget, who
keeps what, the download and its limits, and every failure of a snapshot said in one line.

The service is served by the real HTTP server on loopback and called with a real client. The
snapshot itself (``take_online``, which needs an engine and is tested with one elsewhere) is
replaced by one that builds a snapshot from files on disk, or fails as told, so that each
answer can be had on demand.
"""

from __future__ import annotations

import asyncio
import errno
import io
import json
import logging
import socket
import sqlite3
import tarfile
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from chromaguard.access.routes import canonical_segments
from chromaguard.backup import snapshot_api
from chromaguard.backup.snapshot import Snapshot, SnapshotError
from chromaguard.backup.snapshot_api import MAX_STREAMS, SnapshotService
from chromaguard.http11.server import Exchange, HttpServer
from chromaguard.proxy.writegate import HoldBusy, HoldTimeout, WriteGate

MiB = 2**20


class Taker:
    """Stands in for ``take_online``: a snapshot of ``size`` bytes in the staging dir, or the
    exception it is given; ``release`` lets a held one finish."""

    def __init__(self, size: int = 1000) -> None:
        self.size = size
        self.hold_timeout = 7.5
        self.fail: BaseException | None = None
        self.calls = 0
        self.release: asyncio.Event | None = None
        self.taken: list[Snapshot] = []

    async def __call__(self, gate: WriteGate, data_dir: Path, *, staging_root: str | None = None,
                       hold_timeout: float = 30.0, mirror: object = None) -> Snapshot:
        self.calls += 1
        assert hold_timeout == self.hold_timeout, "the service's own settings are passed on"
        staging_root = staging_root if staging_root is not None else tempfile.gettempdir()
        assert isinstance(gate, WriteGate) and (data_dir / "chroma.sqlite3").read_bytes() == b"d" * 4000
        if self.release is not None:
            await self.release.wait()
        if self.fail is not None:
            raise self.fail
        root = Path(tempfile.mkdtemp(prefix=f"snap-{self.calls}-", dir=staging_root))
        (root / "data").mkdir()
        (root / "data" / "chroma.sqlite3").write_bytes(b"s" * self.size)
        (root / "data" / "x").write_bytes(b"x" * 24)
        manifest = {"write_hold_ms": 1.5, "write_hold": {"copy_attempts": 1}, "after_hold_ms": {"describe": 3.0},
                    "collections": [{"name": "a"}, {"name": "b"}],
                    "files": [{"path": "data/chroma.sqlite3", "size": self.size}, {"path": "data/x", "size": 24}]}
        (root / "manifest.json").write_text(json.dumps(manifest))
        snapshot = Snapshot(f"{self.calls:032x}", root, manifest)
        self.taken.append(snapshot)
        return snapshot


class Disk:
    """``shutil.disk_usage`` of a filesystem of ``size`` bytes that holds only the staging dir."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, path: Any) -> Any:
        used = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
        return type("usage", (), {"total": self.size, "used": used, "free": self.size - used})()


class Served:
    def __init__(self, service: SnapshotService, url: str) -> None:
        self.service = service
        self.http = httpx.AsyncClient(base_url=url, timeout=10)

    async def post(self) -> httpx.Response:
        return await self.http.post("/chromaguard/snapshots")


async def _handle(service: SnapshotService, exchange: Exchange) -> None:
    await service.handle(exchange, canonical_segments(exchange.raw_path) or [])


def _serving(tmp_path: Path, taker: Taker, disk: Disk, monkeypatch: pytest.MonkeyPatch, **options: Any,
             ) -> Callable[[Callable[[Served], Awaitable[None]]], None]:
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    (data_dir / "chroma.sqlite3").write_bytes(b"d" * 4000)
    monkeypatch.setattr(snapshot_api, "take_online", taker)
    monkeypatch.setattr(snapshot_api.shutil, "disk_usage", disk)
    options.setdefault("staging_root", tmp_path / "staging")

    def run(scenario: Callable[[Served], Awaitable[None]]) -> None:
        async def main() -> None:
            service = SnapshotService(WriteGate(), data_dir, hold_timeout=7.5, **options)
            server = HttpServer(lambda exchange: _handle(service, exchange))
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            served = Served(service, f"http://127.0.0.1:{sock.getsockname()[1]}")
            serving = asyncio.create_task(server.serve(sock))
            try:
                await scenario(served)
            finally:
                await served.http.aclose()
                server.stop(force=True)
                await serving
                service.close()

        asyncio.run(main())

    return run


@pytest.fixture
def taker() -> Taker:
    return Taker()


# ---- taking one --------------------------------------------------------------------------------


def test_a_snapshot_is_described_in_its_answer_and_kept_for_download(
        tmp_path: Path, taker: Taker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(s: Served) -> None:
        answer = await s.post()
        assert answer.status_code == 201
        assert answer.json() == {"id": f"{1:032x}", "write_hold_ms": 1.5, "write_hold": {"copy_attempts": 1},
                                 "after_hold_ms": {"describe": 3.0}, "collections": 2, "files": 2,
                                 "bytes": 1024}
        assert list(s.service.snapshots) == [f"{1:032x}"] and s.service.taking is False
        assert (tmp_path / "deep" / "staging").is_dir(), "the staging dir is made when missing, parents too"

    with caplog.at_level(logging.INFO, "chromaguard.backup"):
        _serving(tmp_path, taker, Disk(10**12), monkeypatch, staging_root=tmp_path / "deep" / "staging")(scenario)
    assert (f"snapshot {1:032x} taken: writes held for 1.5 ms, 2 collection(s), 2 file(s); described in 3 ms "
            "after the hold") in [r.getMessage() for r in caplog.records]


def test_one_snapshot_at_a_time(tmp_path: Path, taker: Taker, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(s: Served) -> None:
        taker.release = asyncio.Event()
        first = asyncio.create_task(s.post())
        while not s.service.taking:
            await asyncio.sleep(0.01)
        second = await s.post()
        assert second.status_code == 409 and second.headers["retry-after"] == "5"
        assert second.json() == {"error": "ConflictError", "message": "chromaguard: a snapshot is already being "
                                 "taken; retry when it is done (one at a time)"}
        taker.release.set()
        assert (await first).status_code == 201 and taker.calls == 1
        await s.service.gate.hold(1.0)  # a hold that is not ours (another snapshot path) counts too
        third = await s.post()
        assert third.status_code == 409 and taker.calls == 1
        s.service.gate.current.release()  # type: ignore[union-attr]
        assert (await s.post()).status_code == 201

    _serving(tmp_path, taker, Disk(10**12), monkeypatch, max_kept=5)(scenario)


@pytest.mark.parametrize("failure, status, error, message", [
    (HoldBusy("another hold is in place"), 409, "ConflictError", "chromaguard: another hold is in place"),
    (HoldTimeout("in-flight writes did not finish within 7.5s"), 503, "ServiceUnavailable",
     "chromaguard: snapshot failed: in-flight writes did not finish within 7.5s"),
    (SnapshotError("the data dir changed during the copy"), 503, "ServiceUnavailable",
     "chromaguard: snapshot failed: the data dir changed during the copy"),
    (sqlite3.OperationalError("database is locked"), 503, "ServiceUnavailable",
     "chromaguard: snapshot failed: the engine's chroma.sqlite3 could not be copied (database is locked); "
     "retry once the engine is up"),
    (OSError(errno.ENOSPC, "No space left on device"), 507, "InsufficientStorage", "chromaguard: the snapshot "
     "filled its filesystem ({staging}) and was dropped; free space there or set CHROMAGUARD_SNAPSHOT_DIR to a "
     "larger one"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), 507, "InsufficientStorage", "chromaguard: the snapshot "
     "filled its filesystem ({staging}) and was dropped; free space there or set CHROMAGUARD_SNAPSHOT_DIR to a "
     "larger one"),
    (OSError(errno.EIO, "Input/output error"), 500, "InternalError",
     "chromaguard: snapshot failed: [Errno 5] Input/output error"),
])
def test_every_failure_is_one_line_and_the_next_snapshot_can_be_taken(
        tmp_path: Path, taker: Taker, monkeypatch: pytest.MonkeyPatch, failure: BaseException, status: int,
        error: str, message: str) -> None:
    async def scenario(s: Served) -> None:
        await s.post()
        taker.fail = failure
        answer = await s.post()
        assert answer.status_code == status
        assert answer.json() == {"error": error, "message": message.format(staging=tmp_path / "staging")}
        assert answer.headers.get("retry-after") == ("5" if status in (409, 503) else None)
        assert not s.service.taking and list(s.service.snapshots) == [f"{1:032x}"], \
            "a failed snapshot costs no one the one they kept"
        taker.fail = None
        assert (await s.post()).status_code == 201, "nothing is left taken"

    _serving(tmp_path, taker, Disk(10**12), monkeypatch, max_kept=1)(scenario)


# ---- what is kept ------------------------------------------------------------------------------


def test_at_most_max_kept_are_kept_the_oldest_idle_one_goes(
        tmp_path: Path, taker: Taker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(s: Served) -> None:
        for _ in range(3):
            assert (await s.post()).status_code == 201
        assert list(s.service.snapshots) == [f"{2:032x}", f"{3:032x}"]
        assert not taker.taken[0].root.exists() and taker.taken[1].root.exists(), "its files went with it"

    with caplog.at_level(logging.INFO, "chromaguard.backup"):
        _serving(tmp_path, taker, Disk(10**12), monkeypatch, max_kept=2)(scenario)
    assert (f"snapshot {1:032x} dropped before its client fetched it: at most 2 snapshot(s) are kept"
            in [r.getMessage() for r in caplog.records])


def test_max_kept_below_one_keeps_one_and_negative_min_free_is_none(tmp_path: Path) -> None:
    service = SnapshotService(WriteGate(), tmp_path, max_kept=0, min_free=-5)
    assert service.max_kept == 1 and service.min_free == 0


def test_by_default_writes_are_held_30_s_at_most_and_snapshots_staged_in_the_temp_dir(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    taker = Taker()
    taker.hold_timeout = 30.0
    taker.fail = OSError(errno.ENOSPC, "No space left on device")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "chroma.sqlite3").write_bytes(b"d" * 4000)
    monkeypatch.setattr(snapshot_api, "take_online", taker)

    async def run() -> dict[str, Any]:
        service = SnapshotService(WriteGate(), data_dir)
        server = HttpServer(lambda exchange: _handle(service, exchange))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        serving = asyncio.create_task(server.serve(sock))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}") as http:
            answer = (await http.post("/chromaguard/snapshots")).json()
        server.stop(force=True)
        await serving
        return answer

    answer = asyncio.run(run())
    assert taker.calls == 1 and f"filled its filesystem ({tempfile.gettempdir()})" in answer["message"]


def test_a_snapshot_needs_room_for_itself_and_min_free_dropping_idle_ones_first(
        tmp_path: Path, taker: Taker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    disk = Disk(4000 + 1 * MiB)  # the data dir holds 4000 bytes: exactly enough with 1 MiB kept free

    async def scenario(s: Served) -> None:
        assert (await s.post()).status_code == 201
        assert (await s.post()).status_code == 201, "the first one was dropped to make room"
        assert list(s.service.snapshots) == [f"{2:032x}"] and not taker.taken[0].root.exists()
        s.service._downloads[f"{2:032x}"] = 1  # being downloaded: not dropped
        answer = await s.post()
        assert answer.status_code == 507 and "retry-after" not in answer.headers
        assert answer.json() == {"error": "InsufficientStorage", "message": (
            f"chromaguard: no room for a snapshot in {tmp_path / 'staging'}: it needs about 0.0 MiB and 1.0 MiB must "
            "stay free (CHROMAGUARD_SNAPSHOT_MIN_FREE), 1.0 MiB are free; free space there or set "
            "CHROMAGUARD_SNAPSHOT_DIR to a larger filesystem")}
        assert taker.calls == 2 and list(s.service.snapshots) == [f"{2:032x}"] and not s.service.taking

    with caplog.at_level(logging.INFO, "chromaguard.backup"):
        _serving(tmp_path, taker, disk, monkeypatch, min_free=MiB, max_kept=5)(scenario)
    assert (f"snapshot {1:032x} dropped before its client fetched it: room on disk"
            in [r.getMessage() for r in caplog.records])


def test_when_every_kept_snapshot_is_being_downloaded_a_new_one_waits(
        tmp_path: Path, taker: Taker, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(s: Served) -> None:
        await s.post()
        await s.post()
        for key in s.service.snapshots:
            s.service._downloads[key] = 1
        answer = await s.post()
        assert answer.status_code == 503 and answer.headers["retry-after"] == "30"
        assert answer.json()["error"] == "ServiceUnavailable"
        assert answer.json()["message"] == ("chromaguard: all 2 kept snapshot(s) are being downloaded "
                                            "(CHROMAGUARD_SNAPSHOT_MAX_KEPT); retry when one is done")
        del s.service._downloads[f"{1:032x}"]
        assert (await s.post()).status_code == 201
        assert list(s.service.snapshots) == [f"{2:032x}", f"{3:032x}"]

    _serving(tmp_path, taker, Disk(10**12), monkeypatch, max_kept=2)(scenario)


# ---- downloads and the other endpoints ---------------------------------------------------------


def _members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def test_the_archive_is_the_snapshot_and_head_only_says_it_exists(
        tmp_path: Path, taker: Taker, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(s: Served) -> None:
        sid = (await s.post()).json()["id"]
        head = await s.http.head(f"/chromaguard/snapshots/{sid}/archive")
        assert head.status_code == 200 and head.headers["content-type"] == "application/x-tar"
        assert s.service._downloads == {}
        got = await s.http.get(f"/chromaguard/snapshots/{sid}/archive")
        assert got.status_code == 200 and got.headers["content-type"] == "application/x-tar"
        members = _members(got.content)
        assert members["data/chroma.sqlite3"] == b"s" * 1000 and json.loads(members["manifest.json"])["files"]
        assert s.service._downloads == {} and taker.taken[0].root.exists(), "kept after a download, for another"
        for path in (f"/chromaguard/snapshots/{'f' * 32}/archive",):
            missing = await s.http.get(path)
            assert missing.status_code == 404 and missing.json() == {
                "error": "NotFoundError", "message": f"chromaguard: no snapshot {'f' * 32}"}

    _serving(tmp_path, taker, Disk(10**12), monkeypatch)(scenario)


def test_delete_drops_it_once_and_unknown_endpoints_are_404(
        tmp_path: Path, taker: Taker, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(s: Served) -> None:
        sid = (await s.post()).json()["id"]
        first = await s.http.delete(f"/chromaguard/snapshots/{sid}")
        assert first.status_code == 200 and first.json() == {"deleted": True}
        assert not taker.taken[0].root.exists() and s.service.snapshots == {}
        again = await s.http.delete(f"/chromaguard/snapshots/{sid}")
        assert again.status_code == 404 and again.json() == {"deleted": False}
        for method, path in (("GET", "/chromaguard/snapshots"), ("PUT", "/chromaguard/snapshots"),
                             ("POST", f"/chromaguard/snapshots/{sid}"), ("GET", f"/chromaguard/snapshots/{sid}"),
                             ("POST", f"/chromaguard/snapshots/{sid}/archive"),
                             ("GET", f"/chromaguard/snapshots/{sid}/files"),
                             ("DELETE", f"/chromaguard/snapshots/{sid}/archive"),
                             ("DELETE", "/chromaguard/snapshots")):
            answer = await s.http.request(method, path)
            assert answer.status_code == 404, (method, path)
            assert answer.json() == {"error": "NotFoundError", "message": "chromaguard: no such snapshot endpoint"}

    _serving(tmp_path, taker, Disk(10**12), monkeypatch)(scenario)


def test_snapshots_expire_after_an_hour(tmp_path: Path, taker: Taker, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(s: Served) -> None:
        await s.post()
        await s.post()
        s.service.snapshots[f"{1:032x}"].created -= 3601
        s.service.snapshots[f"{2:032x}"].created -= 3599
        await s.http.delete(f"/chromaguard/snapshots/{'0' * 32}")  # any request expires the old ones
        assert list(s.service.snapshots) == [f"{2:032x}"] and not taker.taken[0].root.exists()

    _serving(tmp_path, taker, Disk(10**12), monkeypatch, max_kept=5)(scenario)


def test_downloads_at_once_are_limited(tmp_path: Path, taker: Taker, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(s: Served) -> None:
        sid = (await s.post()).json()["id"]
        s.service._downloads[sid] = MAX_STREAMS
        answer = await s.http.get(f"/chromaguard/snapshots/{sid}/archive")
        assert answer.status_code == 429 and answer.headers["retry-after"] == "10"
        assert (await s.http.head(f"/chromaguard/snapshots/{sid}/archive")).status_code == 200, \
            "asking whether it exists is not a download"
        assert answer.json()["error"] == "RateLimitError"
        assert answer.json()["message"] == (f"chromaguard: {MAX_STREAMS} snapshot downloads are running; retry "
                                            "when one is done")
        assert s.service._downloads == {sid: MAX_STREAMS}, "a refused download is not counted"
        s.service._downloads[sid] = MAX_STREAMS - 1
        assert (await s.http.get(f"/chromaguard/snapshots/{sid}/archive")).status_code == 200
        assert s.service._downloads == {sid: MAX_STREAMS - 1}

    _serving(tmp_path, taker, Disk(10**12), monkeypatch)(scenario)


def test_a_snapshot_dropped_while_downloaded_goes_when_its_download_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    taker = Taker(size=8 * MiB)

    async def scenario(s: Served) -> None:
        sid = (await s.post()).json()["id"]
        async with s.http.stream("GET", f"/chromaguard/snapshots/{sid}/archive") as download:
            chunks = download.aiter_raw()
            first = await chunks.__anext__()
            assert first and s.service._downloads == {sid: 1}
            assert (await s.http.delete(f"/chromaguard/snapshots/{sid}")).json() == {"deleted": True}
            assert taker.taken[0].root.exists(), "being read: its files stay until the download ends"
            rest = b"".join([chunk async for chunk in chunks])
        assert len(first + rest) > 8 * MiB
        assert not taker.taken[0].root.exists() and s.service._downloads == {}

    _serving(tmp_path, taker, Disk(10**12), monkeypatch)(scenario)


def test_a_download_that_stalls_is_cut_and_its_snapshot_unpinned(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    taker = Taker(size=32 * MiB)
    monkeypatch.setattr(snapshot_api, "STALLED_AFTER", 0.3)

    async def scenario(s: Served) -> None:
        sid = (await s.post()).json()["id"]
        port = int(str(s.http.base_url).rsplit(":", 1)[1].rstrip("/"))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /chromaguard/snapshots/{sid}/archive HTTP/1.1\r\nhost: x\r\n\r\n".encode())
        await reader.read(1000)  # the head and a little: then nothing more is read
        for _ in range(100):
            if not s.service._downloads:
                break
            await asyncio.sleep(0.05)
        assert s.service._downloads == {} and taker.taken[0].root.exists(), "unpinned, still kept"
        writer.close()

    with caplog.at_level(logging.WARNING, "chromaguard.backup"):
        _serving(tmp_path, taker, Disk(10**12), monkeypatch)(scenario)
    assert f"snapshot {1:032x}: a download read nothing for 0.3s; cut" in [r.getMessage() for r in caplog.records]


def test_close_removes_every_kept_snapshot(tmp_path: Path, taker: Taker, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(s: Served) -> None:
        await s.post()
        await s.post()
        s.service.close()
        assert s.service.snapshots == {} and not any(t.root.exists() for t in taker.taken)

    _serving(tmp_path, taker, Disk(10**12), monkeypatch, max_kept=3)(scenario)


def test_a_snapshot_taken_while_the_kept_one_began_downloading_is_kept(
        tmp_path: Path, taker: Taker, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(s: Served) -> None:
        first = (await s.post()).json()["id"]
        taker.release = asyncio.Event()
        second = asyncio.create_task(s.post())
        while taker.calls < 2:
            await asyncio.sleep(0.01)
        s.service._downloads[first] = 1  # a download of the kept one began meanwhile
        taker.release.set()
        answer = await second
        assert answer.status_code == 201
        assert list(s.service.snapshots) == [first, answer.json()["id"]], \
            "over the limit for a while: the new one is never the one dropped"

    _serving(tmp_path, taker, Disk(10**12), monkeypatch, max_kept=1)(scenario)


def test_a_snapshot_nobody_fetches_is_dropped_after_its_time(
        tmp_path: Path, taker: Taker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshot_api, "_MAX_AGE", 0.3)

    async def scenario(s: Served) -> None:
        await s.post()
        await asyncio.sleep(0.6)  # no request comes: the timer alone drops it
        assert s.service.snapshots == {} and not taker.taken[0].root.exists()

    _serving(tmp_path, taker, Disk(10**12), monkeypatch)(scenario)
