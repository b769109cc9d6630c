"""Who may use /chromaguard/ (status, backups), and what one snapshot may cost.

A non-loopback caller is real here: the service listens on 0.0.0.0 and the calls come from a
network namespace of the test's own, over a veth pair (``procs.NetnsPeer``), so the front door
sees another host's address, and no traffic leaves this machine. Where namespaces cannot be
made those tests skip, and the decision function's tests (every address form) still run.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from support.clients import http_client
from support.mounts import tmpfs
from support.procs import Guard, NetnsPeer, clean_env, cli

from chromaguard.backup.restore import verify
from chromaguard.backup.snapshot import Snapshot
from chromaguard.backup.snapshot_api import ControlAccess, SnapshotService, is_loopback
from chromaguard.proxy.writegate import WriteGate

BASE = "/api/v2/tenants/default_tenant/databases/default_database"
TOKEN = f"control-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def peer() -> Iterator[NetnsPeer]:
    try:
        with NetnsPeer() as host:
            yield host
    except RuntimeError as exc:
        pytest.skip(str(exc))  # no network namespaces where this runs (not root, no iproute2)


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return cli(*args, timeout=300, **env)


def _one_line(response: httpx.Response) -> str:
    message = response.json()["message"]
    assert "\n" not in message and message.startswith("chromaguard: "), message
    return message


# ---- the decision, address by address --------------------------------------------------------------


@pytest.mark.parametrize("client, local", [
    ("127.0.0.1", True), ("127.3.2.1", True), ("::1", True), ("::ffff:127.0.0.1", True), ("::ffff:7f00:1", True),
    ("192.0.2.2", False), ("10.0.0.1", False), ("::ffff:192.0.2.2", False), ("2001:db8::1", False),
    ("fe80::1%eth0", False), ("::127.0.0.1", False), ("0.0.0.0", False), ("", False), ("localhost", False),
    ("127.0.0.1.evil", False),
])
def test_local_means_the_peer_address_is_loopback(client: str, local: bool) -> None:
    assert is_loopback(client) is local


def test_the_control_access_rules() -> None:
    def refusal(access: ControlAccess, client: str, *headers: tuple[bytes, bytes]):
        return access.refusal(client, list(headers))

    host = (b"host", b"127.0.0.1:8000")
    none, with_token = ControlAccess(), ControlAccess("s3cret-control")
    assert refusal(none, "127.0.0.1", host) is None
    assert refusal(none, "::ffff:127.0.0.1", (b"host", b"localhost:8000")) is None
    assert refusal(none, "::1", (b"host", b"[::1]:8000")) is None
    assert refusal(none, "127.0.0.1", host, (b"authorization", b"Bearer some-other-servers-token")) is None
    for forged in ((b"x-forwarded-for", b"127.0.0.1"), (b"x-real-ip", b"127.0.0.1"),
                   (b"forwarded", b"for=127.0.0.1"), (b"via", b"1.1 proxy")):
        denial = refusal(none, "192.0.2.7", host, forged)
        assert denial is not None and denial.status == 403 and "CHROMAGUARD_CONTROL_TOKEN" in denial.message
        assert refusal(none, "127.0.0.1", host, forged) is not None, "a local proxy's callers are not local"
    assert refusal(none, "127.0.0.1", host, (b"origin", b"https://evil.example")) is not None  # a browser page
    assert refusal(none, "127.0.0.1", (b"host", b"rebound.evil.example:8000")) is not None  # DNS rebinding
    assert refusal(none, "192.0.2.7", host, (b"authorization", b"Bearer s3cret-control")) is not None  # no token set

    assert refusal(with_token, "192.0.2.7", host, (b"authorization", b"Bearer s3cret-control")) is None
    assert refusal(with_token, "192.0.2.7", host, (b"x-chroma-token", b"s3cret-control")) is None
    assert refusal(with_token, "192.0.2.7", (b"x-forwarded-for", b"10.1.1.1"),
                   (b"authorization", b"bearer s3cret-control")) is None  # the token is enough, proxied or not
    wrong = refusal(with_token, "192.0.2.7", host, (b"authorization", b"Bearer s3cret-contro"))
    assert wrong is not None and "not valid" in wrong.message
    bare = refusal(with_token, "192.0.2.7", host)
    assert bare is not None and "send the control token" in bare.message
    assert refusal(with_token, "", host) is not None  # unknown peer: not local


async def test_kept_snapshots_being_downloaded_are_never_dropped(tmp_path: Path) -> None:
    service = SnapshotService(WriteGate(), tmp_path, staging_root=tmp_path / "staging",
                              max_kept=1, min_free=0)
    (tmp_path / "staging").mkdir()
    root = tmp_path / "staging" / "one"
    (root / "data").mkdir(parents=True)
    service.snapshots["one"] = Snapshot("one", root, {})
    service._downloads["one"] = 1
    denial = await service._make_room()
    assert denial is not None and denial.status == 503 and "being downloaded" in denial.message
    assert root.exists()
    assert service._discard("one") and root.exists(), "dropped while downloading: the files wait for the stream"
    del service._downloads["one"]
    service.snapshots["two"] = Snapshot("two", tmp_path / "staging" / "two", {})
    (tmp_path / "staging" / "two").mkdir()
    # Room is made for a new one, but "two" is dropped only once the new snapshot exists: a POST
    # that then fails must not have cost another client its snapshot.
    assert await service._make_room() is None and "two" in service.snapshots
    assert service._drop_oldest_idle("test", keep="two") is False  # the new one is never the one dropped
    assert service._drop_oldest_idle("test") is True and not (tmp_path / "staging" / "two").exists()


# ---- end to end, auth off, listening on 0.0.0.0 --------------------------------------------------------


@pytest.fixture(scope="module")
def open_guard():
    with Guard("--host", "0.0.0.0", env={"CHROMAGUARD_CONTROL_TOKEN": TOKEN}) as g:
        col = http_client(g.port).create_collection("control", embedding_function=None)
        col.add(ids=[f"c{i}" for i in range(50)], embeddings=[[float(i), 1.0] for i in range(50)])
        yield g


def _remote(g: Guard, peer: NetnsPeer) -> str:
    return f"http://{peer.address}:{g.port}"


def _message(body: str) -> str:
    message = json.loads(body)["message"]
    assert "\n" not in message and message.startswith("chromaguard: "), message
    return message


def test_only_this_host_or_the_control_token_gets_in(open_guard: Guard, peer: NetnsPeer) -> None:
    g = open_guard
    remote = _remote(g, peer)
    with httpx.Client(base_url=g.url, timeout=60) as local:
        assert local.get("/chromaguard/status").status_code == 200
        created = local.post("/chromaguard/snapshots")
        assert created.status_code == 201, created.text
        sid = created.json()["id"]

        for method, path in (("POST", "/chromaguard/snapshots"), ("GET", "/chromaguard/status"),
                             ("GET", f"/chromaguard/snapshots/{sid}/archive"),
                             ("DELETE", f"/chromaguard/snapshots/{sid}")):
            status, body = peer.request(method, remote + path)
            assert status == 403, (method, path, body)
            message = _message(body)
            assert "CHROMAGUARD_CONTROL_TOKEN" in message and "--token" in message, message
        for forged in ({"x-forwarded-for": "127.0.0.1"}, {"x-real-ip": "127.0.0.1"},
                       {"forwarded": "for=127.0.0.1"}, {"x-forwarded-for": "::1", "host": "127.0.0.1"}):
            assert peer.request("POST", remote + "/chromaguard/snapshots", forged)[0] == 403, forged
        status, body = peer.request("POST", remote + "/chromaguard/snapshots", {"authorization": f"Bearer {TOKEN}x"})
        assert status == 403 and "not valid" in _message(body)
        assert peer.request("GET", remote + "/api/v2/heartbeat")[0] == 200  # the data API is no control endpoint

        # A proxy or a browser on this host does not make its callers local.
        assert local.get("/chromaguard/status", headers={"x-forwarded-for": "203.0.113.9"}).status_code == 403
        assert local.post("/chromaguard/snapshots", headers={"origin": "https://evil.example"}).status_code == 403
        assert local.get("/chromaguard/status", headers={"host": f"rebound.example:{g.port}"}).status_code == 403

        bearer = {"authorization": f"Bearer {TOKEN}"}
        assert peer.request("GET", remote + "/chromaguard/status", bearer)[0] == 200
        status, body = peer.request("GET", remote + f"/chromaguard/snapshots/{sid}/archive", bearer)
        assert status == 200 and len(body) > 0
        status, body = peer.request("POST", remote + "/chromaguard/snapshots", {"x-chroma-token": TOKEN})
        assert status == 201, body
        assert peer.request("DELETE", remote + f"/chromaguard/snapshots/{json.loads(body)['id']}", bearer)[0] == 200
        assert local.delete(f"/chromaguard/snapshots/{sid}").status_code == 200


def _peer_cli(peer: NetnsPeer, *args: str) -> subprocess.CompletedProcess[str]:
    return peer.run(sys.executable, "-m", "chromaguard", *args, env=clean_env())


def test_backup_from_this_host_needs_nothing_and_from_another_the_token(open_guard: Guard, peer: NetnsPeer,
                                                                        tmp_path: Path) -> None:
    g = open_guard
    # No --url: the default target for a service on 0.0.0.0 is 127.0.0.1.
    result = _cli("backup", "--output", str(tmp_path / "local"), CHROMA_SERVER_HOST="0.0.0.0",
                  CHROMA_SERVER_HTTP_PORT=str(g.port))
    assert result.returncode == 0, result.stderr
    result = _peer_cli(peer, "backup", "--output", str(tmp_path / "denied"), "--url", _remote(g, peer))
    assert result.returncode == 1 and "CHROMAGUARD_CONTROL_TOKEN" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not list((tmp_path / "denied").glob("*.tar.gz"))
    result = _peer_cli(peer, "backup", "--output", str(tmp_path / "remote"), "--url", _remote(g, peer),
                       "--token", TOKEN)
    assert result.returncode == 0, result.stderr
    report = verify(next((tmp_path / "remote").glob("*.tar.gz")))
    assert report.records == 50 and report.sampled == 5


def test_with_auth_on_an_admin_token_works_from_anywhere_and_loopback_alone_gives_nothing(
        tmp_path: Path, peer: NetnsPeer) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps([{"token": "adm-token", "role": "admin"},
                                  {"token": "w-token", "name": "w", "role": "write"}]))
    env = {"CHROMA_SERVER_AUTH_PROVIDER": "token", "CHROMA_SERVER_AUTH_CREDENTIALS_FILE": str(tokens),
           "CHROMAGUARD_CONTROL_TOKEN": TOKEN}
    with Guard("--host", "0.0.0.0", env=env) as g:
        remote = _remote(g, peer)
        assert httpx.post(g.url + "/chromaguard/snapshots").status_code == 401
        assert httpx.get(g.url + "/chromaguard/status").status_code == 401
        assert peer.request("POST", remote + "/chromaguard/snapshots",
                            {"authorization": f"Bearer {TOKEN}"})[0] == 403  # not an admin token
        denied = _peer_cli(peer, "backup", "--url", remote, "--output", str(tmp_path / "w"), "--token", "w-token")
        assert denied.returncode == 1 and "admin token" in denied.stderr
        result = _peer_cli(peer, "backup", "--url", remote, "--output", str(tmp_path / "bk"), "--token", "adm-token")
        assert result.returncode == 0, result.stderr
        result = _cli("backup", "--output", str(tmp_path / "bk2"), CHROMA_SERVER_HOST="0.0.0.0",
                      CHROMA_SERVER_HTTP_PORT=str(g.port), CHROMAGUARD_TOKEN="adm-token")
        assert result.returncode == 0, result.stderr


def test_the_loopback_check_end_to_end_without_a_second_address() -> None:
    """Always runs: a local call gets in, a forged or proxied one does not."""
    with Guard() as g:
        assert httpx.get(g.url + "/chromaguard/status").status_code == 200
        denied = httpx.get(g.url + "/chromaguard/status", headers={"x-forwarded-for": "198.51.100.1"})
        assert denied.status_code == 403 and "CHROMAGUARD_CONTROL_TOKEN" in _one_line(denied)


# ---- one at a time, and the disk budget --------------------------------------------------------------------


def test_two_snapshots_at_once_one_is_refused_clearly(open_guard: Guard) -> None:
    g = open_guard
    # Holding the engine's SQLite file exclusively keeps whichever snapshot starts first inside
    # its copy (SQLite's backup API waits for the lock), so the other surely overlaps it.
    lock = sqlite3.connect(g.data_dir / "chroma.sqlite3", timeout=30, isolation_level=None)
    answers: list[httpx.Response] = []

    def post() -> None:
        answers.append(httpx.post(g.url + "/chromaguard/snapshots", timeout=120))

    threads = [threading.Thread(target=post) for _ in range(2)]
    try:
        lock.execute("BEGIN EXCLUSIVE")
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while not answers:
            assert time.monotonic() < deadline, "neither snapshot answered"
            time.sleep(0.02)
        refused = answers[0]
        assert refused.status_code == 409, refused.text
        assert "already being taken" in _one_line(refused) and refused.headers["retry-after"]
    finally:
        lock.execute("ROLLBACK")
        lock.close()
        for t in threads:
            t.join(120)
    assert [a.status_code for a in answers] == [409, 201], [a.text for a in answers]
    httpx.delete(g.url + f"/chromaguard/snapshots/{answers[1].json()['id']}")
    col = http_client(g.port).get_collection("control")
    col.add(ids=["after"], embeddings=[[0.0, 0.0]])  # the gate is open again
    col.delete(ids=["after"])


def test_a_snapshot_that_would_not_leave_the_free_space_to_spare_is_refused(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    with Guard(env={"CHROMAGUARD_SNAPSHOT_DIR": str(staging), "CHROMAGUARD_SNAPSHOT_MIN_FREE": "1000TiB"}) as g:
        col = http_client(g.port).create_collection("budget", embedding_function=None)
        col.add(ids=["a"], embeddings=[[1.0, 2.0]])
        refused = httpx.post(g.url + "/chromaguard/snapshots", timeout=60)
        assert refused.status_code == 507, refused.text
        message = _one_line(refused)
        assert "no room" in message and "CHROMAGUARD_SNAPSHOT_MIN_FREE" in message and str(staging) in message
        assert list(staging.iterdir()) == []
        col.add(ids=["b"], embeddings=[[2.0, 1.0]])  # nothing was held
        result = _cli("backup", "--url", g.url, "--output", str(tmp_path / "bk"))
        assert result.returncode == 1 and "507" in result.stderr and "no room" in result.stderr


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "small", "2m") as mount:
        yield mount


def _staged(staging: Path) -> tuple[int, bool]:
    """Snapshot folders in the staging dir, and whether the mirror is there."""
    names = [p.name for p in staging.iterdir()]
    return (sum(n.startswith("chromaguard-snapshot-") for n in names),
            any(n.startswith("chromaguard-mirror-") for n in names))


def test_a_2_mib_disk_takes_a_small_snapshot_keeps_one_and_refuses_a_big_one(small_disk: Path,
                                                                              tmp_path: Path) -> None:
    env = {"CHROMAGUARD_SNAPSHOT_DIR": str(small_disk), "CHROMAGUARD_SNAPSHOT_MIN_FREE": "0",
           "CHROMAGUARD_SNAPSHOT_MAX_KEPT": "1"}
    with Guard(env=env) as g, httpx.Client(base_url=g.url, timeout=120) as http:
        col = http_client(g.port).create_collection("fits", embedding_function=None)
        col.add(ids=["a", "b"], embeddings=[[1.0, 2.0], [2.0, 1.0]])
        first = http.post("/chromaguard/snapshots")
        assert first.status_code == 201, first.text
        second = http.post("/chromaguard/snapshots")
        assert second.status_code == 201, second.text
        assert http.get(f"/chromaguard/snapshots/{first.json()['id']}/archive").status_code == 404, \
            "one kept at most: the older, undownloaded one made way"
        # The first one was made in the mirror (kept between snapshots), the second, taken while
        # the first was kept, in a folder of its own.
        assert first.json()["write_hold"]["mirror"] and not second.json()["write_hold"]["mirror"]
        assert _staged(small_disk) == (1, True)
        assert http.delete(f"/chromaguard/snapshots/{second.json()['id']}").status_code == 200
        assert _staged(small_disk) == (0, True)

        vectors = np.random.default_rng(3).random((3000, 128), dtype=np.float32)
        big = http_client(g.port).create_collection("too-big", embedding_function=None)
        for start in range(0, 3000, 1000):
            big.add(ids=[str(i) for i in range(start, start + 1000)], embeddings=vectors[start:start + 1000])
        refused = http.post("/chromaguard/snapshots")
        assert refused.status_code == 507, refused.text
        assert "no room" in _one_line(refused) and "CHROMAGUARD_SNAPSHOT_DIR" in refused.json()["message"]
        assert _staged(small_disk) == (0, True)
        big.add(ids=["after"], embeddings=[vectors[0]])  # the gate was never shut


def test_head_reads_nothing(open_guard: Guard) -> None:
    with httpx.Client(base_url=open_guard.url, timeout=60) as http:
        created = http.post("/chromaguard/snapshots")
        assert created.status_code == 201, created.text
        sid = created.json()["id"]
        head = http.head(f"/chromaguard/snapshots/{sid}/archive")
        assert head.status_code == 200 and head.content == b""
        assert http.delete(f"/chromaguard/snapshots/{sid}").status_code == 200


class _Answer:
    """What ``SnapshotService`` says to one archive request (it needs no more of an exchange)."""

    def __init__(self, method: str = "GET") -> None:
        self.method = method
        self.errors: list[tuple[int, str]] = []

    def respond_error(self, status: int, error: str, message: str, headers: object = ()) -> None:
        self.errors.append((status, message))


async def test_downloads_are_capped(tmp_path: Path) -> None:
    from chromaguard.backup.snapshot_api import MAX_STREAMS

    service = SnapshotService(WriteGate(), tmp_path, staging_root=tmp_path, max_kept=5)
    (tmp_path / "s" / "data").mkdir(parents=True)
    service.snapshots["s"] = Snapshot("s", tmp_path / "s", {"files": []})
    service._downloads["s"] = MAX_STREAMS  # that many streams running
    refused = _Answer()
    await service._archive("s", refused)  # type: ignore[arg-type]
    assert refused.errors and refused.errors[0][0] == 429 and "downloads are running" in refused.errors[0][1]
    assert service._downloads["s"] == MAX_STREAMS  # the refused one was never counted
