"""Backup repositories end to end: the real engine's data, the CLI as users run it, and a real
S3-compatible server on loopback (moto's), reached by obstore over HTTP.

Faults are real too: a backup or a prune killed with SIGKILL, the store cut off mid-upload
(a relay in front of it closes), a byte flipped in a stored pack, a pack deleted.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from support.clients import http_client
from support.procs import Guard, clean_env
from support.repositories import backup, copy_data, dump, listed, ok, one_line_error, run, write_data
from support.s3 import MotoServer, Switch
from support.writers import BASE, Writers, all_ids, check_state_at_hold

pytestmark = pytest.mark.timeout(300)

@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two collections, a few MiB: the first state every test backs up."""
    path = tmp_path_factory.mktemp("source") / "data"
    write_data(path, {"docs": {"add": [0, 6000], "dim": 64, "seed": 1}, "small": {"add": [0, 300], "dim": 8}})
    return path


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 500 records of 2 048 dimensions, 33 MiB (a few packs): uploads that take long enough to
    be cut in the middle. Written once, copied by each test that uses it."""
    path = tmp_path_factory.mktemp("big") / "data"
    write_data(path, {"big": {"add": [0, 2500], "dim": 2048, "seed": 3}})
    return path


def _contents(root: Path) -> dict[str, object]:
    """A data dir's contents as the engine sees them: each index file's bytes, and each SQLite
    database's rows (a restore writes them through SQLite, whose page headers differ), but for
    ``acquire_write``: the engine's own lock rows, added each time it opens the data dir."""
    out: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if not path.is_file() or name.startswith(".chromaguard") or name.endswith(("-wal", "-shm", "-journal")):
            continue
        if name.endswith(".sqlite3"):
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
                out[name] = [line for line in db.iterdump() if not line.startswith('INSERT INTO "acquire_write"')]
        else:
            out[name] = path.read_bytes()
    return out


@pytest.mark.parametrize("kind", ["s3", "folder"])
def test_backup_then_restore_gives_back_every_record(kind: str, s3: MotoServer, data: Path, tmp_path: Path) -> None:
    if kind == "s3":
        repo, env = f"s3://{s3.bucket('roundtrip')}/team/chroma", s3.env()
    else:
        repo, env = str(tmp_path / "repo"), {}
    made = backup(data, repo, env)
    assert made["records"] == 6300 and made["collections"] == 2 and made["new_bytes"] == made["size"]
    restored = tmp_path / "restored"
    result = ok(run("restore", repo, "--data-dir", str(restored), env=env))
    assert made["id"] in result.stdout and "6300 record(s), verified" in result.stdout
    assert dump(restored) == dump(data)
    if kind == "s3":  # where it went: packs, one manifest, the repository's config; nothing else
        keys = s3.keys_under("roundtrip", "team/chroma/")
        assert {k.split("/")[2] for k in keys} == {"config.json", "packs", "backups", "locks"} - {"locks"}
        assert sum(size for key, size in keys.items() if "/packs/" in key) == made["stored_bytes"]


def test_second_backup_uploads_only_what_changed_and_each_restores_its_own_state(
        s3: MotoServer, data: Path, tmp_path: Path) -> None:
    source = copy_data(data, tmp_path)
    repo, env = f"s3://{s3.bucket('incremental')}/c", s3.env()
    first = backup(source, repo, env)
    unchanged = backup(source, repo, env)
    assert unchanged["stored_bytes"] < first["stored_bytes"] * 0.05, (unchanged, first)
    write_data(source, {"docs": {"update": list(range(0, 6000, 100)), "dim": 64, "seed": 5},  # 1 % of the records
                        "small": {"add": [300, 10], "dim": 8}})
    changed = backup(source, repo, env)
    assert changed["records"] == 6310
    assert changed["stored_bytes"] < first["stored_bytes"] * 0.25, (changed, first)
    stored = sum(size for key, size in s3.keys_under("incremental", "c/packs/").items())
    assert stored == first["stored_bytes"] + unchanged["stored_bytes"] + changed["stored_bytes"]

    old, new = tmp_path / "old", tmp_path / "new"
    ok(run("restore", repo, "--id", first["id"], "--data-dir", str(old), env=env))
    ok(run("restore", repo, "--data-dir", str(new), env=env))  # the newest
    assert dump(old) == dump(data)
    assert dump(new) == dump(source)
    between = tmp_path / "between"  # --at: the newest at or before a time
    at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 5))
    ok(run("restore", repo, "--at", at, "--data-dir", str(between), env=env))
    assert dump(between) == dump(source)
    one_line_error(run("restore", repo, "--at", "2001-01-01T00:00:00Z", "--data-dir", str(tmp_path / "x"),
                         env=env), "no backup at or before 2001-01-01")

    shown = listed(repo, env)
    assert [b["id"] for b in shown] == [first["id"], unchanged["id"], changed["id"]]
    assert [b["records"] for b in shown] == [6300, 6300, 6310]
    assert shown[2]["new_bytes"] == changed["new_bytes"] and shown[0]["verified"] is None
    ok(run("verify", repo, "--id", first["id"], env=env))
    checked = {b["id"]: b["verified"] for b in listed(repo, env)}[first["id"]]
    assert checked["ok"] is True and checked["kind"] == "full"
    table = ok(run("backups", "list", repo, env=env)).stdout
    assert first["id"] in table and "3 backup(s)" in table


def test_prune_keeps_what_the_policy_says_and_every_kept_backup_restores(
        s3: MotoServer, data: Path, tmp_path: Path) -> None:
    source = copy_data(data, tmp_path)
    repo, env = f"s3://{s3.bucket('retention')}/r", s3.env()
    made = []
    for n in range(4):
        # Records rewritten too: what only additions leave (delta chunks) is never wasteful enough to repack.
        write_data(source, {"small": {"add": [1000 + 10 * n, 10], "dim": 8},
                            "docs": {"update": list(range(1500 * n, 1500 * n + 600)), "dim": 64, "seed": 20 + n}})
        made.append(backup(source, repo, env)["id"])
    dry = json.loads(ok(run("backups", "prune", repo, "--keep-last", "2", "--dry-run", "--json", env=env)).stdout)
    assert dry["removed"] == made[:2] and len(listed(repo, env)) == 4
    one_line_error(run("backups", "prune", repo, env=env), "at least one --keep-* option")
    before = s3.keys_under("retention", "r/packs/")
    report = json.loads(ok(run("backups", "prune", repo, "--keep-last", "2", "--json", env=env)).stdout)
    assert report["removed"] == made[:2] and sorted(report["kept"]) == made[2:]
    assert [b["id"] for b in listed(repo, env)] == made[2:]
    after = s3.keys_under("retention", "r/packs/")
    # The packs only forgotten backups used went; those partly used were rewritten with what is used.
    assert report["packs_removed"] > 0 and sum(before.values()) - sum(after.values()) == report["bytes_freed"] > 0
    for backup_id in made[2:]:
        ok(run("verify", repo, "--id", backup_id, env=env))
    # --keep-* on a backup prunes after it.
    backup(source, repo, env, "--keep-last", "1")
    assert len(listed(repo, env)) == 1


def _first_pack(s3: MotoServer, bucket: str, prefix: str) -> tuple[str, bytes]:
    key = sorted(k for k in s3.keys_under(bucket, prefix) if "/packs/" in k)[0]
    return key, s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def test_a_flipped_byte_or_a_missing_pack_is_named_and_nothing_is_restored(
        s3: MotoServer, data: Path, tmp_path: Path) -> None:
    repo, env = f"s3://{s3.bucket('damaged')}/d", s3.env()
    made = backup(data, repo, env)
    key, body = _first_pack(s3, "damaged", "d/")
    flipped = bytearray(body)
    flipped[len(flipped) // 2] ^= 0x01
    s3.client().put_object(Bucket="damaged", Key=key, Body=bytes(flipped))
    target = tmp_path / "target"
    line = one_line_error(run("verify", repo, env=env), f"backup {made['id']}", "chunk", "is corrupt",
                           key.rsplit("/", 1)[-1][:16])
    assert "pack" in line
    one_line_error(run("restore", repo, "--data-dir", str(target), env=env), "is corrupt")
    assert not target.exists(), "a refused restore must leave nothing behind"
    assert listed(repo, env)[0]["verified"]["ok"] is False  # the failure is noted for `backups list`

    s3.client().delete_object(Bucket="damaged", Key=key)
    one_line_error(run("verify", repo, "--chunks-only", env=env), f"backup {made['id']}", "is missing",
                    key.rsplit("/", 1)[-1][:16])
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    one_line_error(run("restore", repo, "--data-dir", str(target), "--force", env=env), "is missing")
    assert [p.name for p in target.iterdir()] == ["keep.txt"], "a refused restore must not touch the data dir"


def _wait_for(predicate: Any, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _popen(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "chromaguard", *args], env=clean_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill_9_mid_upload_and_mid_prune_leaves_every_listed_backup_restorable(
        s3: MotoServer, data: Path, big: Path, tmp_path: Path) -> None:
    source = copy_data(data, tmp_path)
    bucket = s3.bucket("killed")
    slow = Switch(s3.port, delay=0.002)  # every transfer slowed: the kills land inside operations
    repo, env = f"s3://{bucket}/k", s3.env(slow.endpoint)
    first = backup(source, repo, s3.env())
    shutil.rmtree(source)  # the data dir now holds what none of the repository's packs has
    shutil.copytree(big, source)
    proc = _popen("backup", "--data-dir", str(source), "--to", repo, env=env)
    packs = len([k for k in s3.keys_under(bucket, "k/packs/")])
    _wait_for(lambda: len(s3.keys_under(bucket, "k/packs/")) > packs, what="the first new pack")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [b["id"] for b in listed(repo, s3.env())] == [first["id"]], "a killed backup must not be listed"
    # Same machine, holder gone: the next backup takes the lock at once and completes.
    second = backup(source, repo, s3.env())
    assert second["records"] == 2500

    orphans = set(s3.keys_under(bucket, "k/packs/"))
    proc = _popen("backups", "prune", repo, "--keep-last", "1", env=env)
    _wait_for(lambda: len(s3.keys_under(bucket, "k/backups/")) < 2 or proc.poll() is not None, what="prune")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = [b["id"] for b in listed(repo, s3.env())]
    assert second["id"] in left
    for backup_id in left:
        ok(run("verify", repo, "--id", backup_id, "--chunks-only", env=s3.env()))
    assert orphans, "the killed backup left packs behind"
    ok(run("backups", "prune", repo, "--keep-last", "1", env=s3.env()))
    present = {key.rsplit("/", 1)[-1] for key in s3.keys_under(bucket, "k/packs/")}
    assert present == _named_packs(s3, bucket, "k/"), "after a prune, every pack left is one a backup names"
    restored = tmp_path / "restored"
    result = ok(run("restore", repo, "--data-dir", str(restored), env=s3.env()))
    assert "2500 record(s), verified" in result.stdout, result.stdout
    assert _contents(restored) == _contents(source)
    slow.stop()


def test_the_store_going_away_mid_upload_is_one_clear_error_and_the_next_run_completes(
        s3: MotoServer, big: Path, tmp_path: Path) -> None:
    source = copy_data(big, tmp_path)
    bucket = s3.bucket("flaky")
    switch = Switch(s3.port, delay=0.002)
    repo, env = f"s3://{bucket}/f", s3.env(switch.endpoint)
    proc = _popen("backup", "--data-dir", str(source), "--to", repo, env=env)
    _wait_for(lambda: any("/packs/" in k for k in s3.keys_under(bucket, "f/")), what="the first pack")
    switch.stop()
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 1, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and f"s3://{bucket}/f" in lines[0], err
    assert not s3.keys_under(bucket, "f/backups/"), "a failed backup must not be listed"
    switch.start()
    made = backup(source, repo, env)  # the lock its predecessor left is its own machine's: taken over
    assert [b["id"] for b in listed(repo, env)] == [made["id"]]
    switch.stop()


def test_bad_input_is_one_line_naming_what_and_how(s3: MotoServer, data: Path, tmp_path: Path) -> None:
    env = s3.env()
    one_line_error(run("backup", "--data-dir", str(data), "--to", "ftp://host/x", env=env),
                    "unknown repository scheme 'ftp'", "s3://bucket/prefix")
    one_line_error(run("backup", "--data-dir", str(data), "--to", "s3://no-such-bucket/x", env=env),
                    "bucket does not exist")
    one_line_error(run("backups", "list", "s3:///x", env=env), "names no bucket")
    one_line_error(run("backups", "list", "s3://key:secret@bucket/x", env=env), "credentials do not belong")
    one_line_error(run("backups", "list", str(tmp_path / "nothing"), env=env), "no backup repository there")
    repo = f"s3://{s3.bucket('inputs')}/i"
    one_line_error(run("backups", "list", repo, env=env), "no backup repository there", "creates one")
    made = backup(data, repo, env)
    one_line_error(run("restore", repo, "--id", "latest", "--data-dir", str(tmp_path / "t"), env=env),
                    "not a backup id")
    one_line_error(run("restore", repo, "--id", "20261202T030000.000Z-1a2b3c", "--data-dir",
                         str(tmp_path / "t"), env=env), "no backup 20261202T030000.000Z-1a2b3c")
    one_line_error(run("restore", repo, "--at", "yesterday", "--data-dir", str(tmp_path / "t"), env=env),
                    "not a time")
    # A manifest written by a newer chromaguard: refused by name, with the way out.
    import zstandard

    key = f"i/backups/{made['id']}.json.zst"
    manifest = json.loads(zstandard.ZstdDecompressor().decompress(
        s3.client().get_object(Bucket="inputs", Key=key)["Body"].read()))
    manifest.update(version=99, chromaguard_version="9.0.0")
    s3.client().put_object(Bucket="inputs", Key=key, Body=zstandard.ZstdCompressor().compress(
        json.dumps(manifest).encode()))
    one_line_error(run("restore", repo, "--data-dir", str(tmp_path / "t"), env=env), "newer chromaguard (9.0.0",
                    "upgrade chromaguard")
    assert not (tmp_path / "t").exists()


def test_wrong_credentials_and_a_read_only_bucket(tmp_path: Path, data: Path) -> None:
    server = MotoServer(tmp_path / "moto.log", auth=True)
    try:
        repo = "s3://guarded/chroma"
        one_line_error(run("backups", "list", repo, env=server.env(user="rw", AWS_SECRET_ACCESS_KEY="wrong")),
                        "refused the credentials", "AWS_ACCESS_KEY_ID")
        one_line_error(run("backup", "--data-dir", str(data), "--to", repo, env=server.env(user="ro")),
                        "access denied", "write", "read, write, list and delete")
        assert server.keys_under("guarded", "chroma/") == {}, "a refused backup writes nothing"
    finally:
        server.close()


def test_online_backups_under_writes_restore_exactly_the_state_at_their_hold(s3: MotoServer, tmp_path: Path) -> None:
    repo, env = f"s3://{s3.bucket('online')}/o", s3.env()
    with Guard() as live:
        cid = httpx.post(live.url + f"{BASE}/collections", json={"name": "busy"}).json()["id"]
        static = http_client(live.port).create_collection("static", embedding_function=None)
        for start in range(0, 6000, 2000):  # what does not change between the two backups
            static.add(ids=[f"s{i}" for i in range(start, start + 2000)],
                       embeddings=np.random.default_rng(start).random((2000, 64), dtype=np.float32))
        with Writers(live.url, cid) as writers:
            time.sleep(1.0)
            first = json.loads(ok(run("backup", "--url", live.url, "--to", repo, "--json", env=env)).stdout)
            time.sleep(1.0)
            second = json.loads(ok(run("backup", "--url", live.url, "--to", repo, "--json", env=env)).stdout)
            time.sleep(0.3)
    assert first["write_hold_ms"] is not None and second["write_hold_ms"] is not None
    assert second["new_bytes"] < second["size"] * 0.5, second  # what the first holds already is not sent again
    for made in (first, second):
        restored = tmp_path / made["id"]
        ok(run("restore", repo, "--id", made["id"], "--data-dir", str(restored), env=env))
        hold = _hold_of(s3, "online", f"o/backups/{made['id']}.json.zst")
        with Guard(data_dir=restored) as back:
            check_state_at_hold(all_ids(back.url, cid), writers.log, hold)


def _manifests(s3: MotoServer, bucket: str, prefix: str) -> list[dict[str, Any]]:
    import zstandard

    return [json.loads(zstandard.ZstdDecompressor().decompress(s3.client().get_object(Bucket=bucket, Key=key)
                                                               ["Body"].read()))
            for key in s3.keys_under(bucket, prefix + "backups/")]


def _named_packs(s3: MotoServer, bucket: str, prefix: str) -> set[str]:
    return {pack for m in _manifests(s3, bucket, prefix) for pack in m["packs"]}


def _hold_of(s3: MotoServer, bucket: str, key: str) -> dict[str, float]:
    import zstandard

    manifest = json.loads(zstandard.ZstdDecompressor().decompress(
        s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()))
    return manifest["snapshot"]["write_hold"]


def _status(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/chromaguard/status", timeout=30).json()


def _metric(url: str, name: str) -> float | None:
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_scheduled_backups_run_inside_serve_catch_up_once_and_are_watched(
        s3: MotoServer, tmp_path: Path) -> None:
    bucket = s3.bucket("scheduled")
    repo = f"s3://{bucket}/s"
    settings = {"CHROMAGUARD_BACKUP_REPOSITORY": repo, "CHROMAGUARD_BACKUP_SCHEDULE": "6h",
                "CHROMAGUARD_BACKUP_KEEP_LAST": "5", "CHROMAGUARD_BACKUP_MAX_AGE": "1h"}
    data_dir = tmp_path / "data"
    with Guard(data_dir=data_dir, env={**s3.env(), **settings}) as live:
        # None yet: due at start-up. The first of the day is also restored into a scratch engine.
        _wait_for(lambda: (_status(live.url)["backup"]["verified_ok"] is not None), timeout=120,
                  what="the start-up backup and its verification")
        state = _status(live.url)["backup"]
        assert state["last_id"] and state["verified_ok"] is True, state
        if state["failures"]:  # seen once in CI under load: a start-up attempt failed and its retry succeeded
            failed = [line for line in live.log.splitlines() if "scheduled backup to" in line and "failed" in line]
            print("\n".join(failed))  # for whoever reads the run: why it failed
            assert state["failures"] == 1 and failed, (state, live.log[-3000:])
        assert 6 * 3600 - 60 < state["next_run"] - state["last_success"] <= 6 * 3600 + 1
        assert _metric(live.url, "chromaguard_backup_last_success_timestamp_seconds") == pytest.approx(
            state["last_success"], abs=1)
        assert _metric(live.url, "chromaguard_backup_last_verification_success") == 1
        assert (_metric(live.url, "chromaguard_backup_uploaded_bytes_total") or 0) > 0
        ready = httpx.get(f"{live.url}/readyz").json()
        assert ready["checks"]["backup"]["ok"] is True, ready
        shown = ok(run("status", live.url)).stdout
        assert state["last_id"] in shown and "next run" in shown
    assert [b["id"] for b in listed(repo, s3.env())] == [state["last_id"]]

    # Restarted within the interval: nothing is due; the newest backup is what it counts from.
    with Guard(data_dir=data_dir, env={**s3.env(), **settings}) as again:
        _wait_for(lambda: _status(again.url)["backup"]["next_run"] is not None, what="the schedule")
        assert _status(again.url)["backup"]["last_id"] == state["last_id"]
    assert len(listed(repo, s3.env())) == 1

    # The store unreachable: the run fails, is counted and shown, /readyz says so; it comes back: retried.
    switch = Switch(s3.port)
    switch.stop()
    cron = {**settings, "CHROMAGUARD_BACKUP_SCHEDULE": "0 3 * * *", "CHROMAGUARD_BACKUP_MAX_AGE": "1s"}
    other = tmp_path / "other"
    with Guard(data_dir=other, env={**s3.env(switch.endpoint), **cron,
                                    "CHROMAGUARD_BACKUP_REPOSITORY": f"s3://{bucket}/other"}) as failing:
        _wait_for(lambda: _status(failing.url)["backup"]["failures"] > 0, timeout=120, what="a failed run")
        state = _status(failing.url)["backup"]
        assert state["last_success"] is None and f"s3://{bucket}/other" in state["last_error"], state
        assert _metric(failing.url, "chromaguard_backup_failures_total") >= 1
        _wait_for(lambda: httpx.get(f"{failing.url}/readyz").status_code == 503, what="/readyz failing")
        assert httpx.get(f"{failing.url}/readyz").json()["checks"]["backup"]["detail"].startswith(
            "no successful backup yet")
        assert "scheduled backup to" in failing.log and "Traceback" not in failing.log
        switch.start()
        _wait_for(lambda: _status(failing.url)["backup"]["last_success"] is not None, timeout=120,
                  what="the retry after the store came back")
        state = _status(failing.url)["backup"]
        assert time.strftime("%H:%M", time.gmtime(state["next_run"])) == "03:00"  # cron, UTC
    switch.stop()
    assert len(listed(f"s3://{bucket}/other", s3.env())) == 1


def test_an_encrypted_repository_needs_its_password_and_shows_nothing_in_clear(data: Path, tmp_path: Path) -> None:
    secret = {"CHROMAGUARD_BACKUP_PASSWORD": "correct horse battery staple"}
    clear, sealed = str(tmp_path / "clear"), str(tmp_path / "sealed")
    backup(data, clear, {})
    made = backup(data, sealed, secret)
    config = json.loads((tmp_path / "sealed" / "config.json").read_text())
    assert config["encryption"]["cipher"] == "AES-256-GCM" and "correct horse" not in json.dumps(config)

    def packs(root: str) -> bytes:
        return b"".join(p.read_bytes() for p in sorted((Path(root) / "packs").rglob("*")) if p.is_file())

    import zstandard

    zstd_frame = b"\x28\xb5\x2f\xfd"
    clear_packs, sealed_packs = packs(clear), packs(sealed)
    readable = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True).decompress(clear_packs)
    assert b"document r123 of docs" in readable  # a document of the data, as the engine stores it
    assert clear_packs.count(zstd_frame) > 100 and sealed_packs.count(zstd_frame) < 3  # only ciphertext

    one_line_error(run("backups", "list", sealed), "the repository is encrypted", "CHROMAGUARD_BACKUP_PASSWORD")
    one_line_error(run("restore", sealed, "--data-dir", str(tmp_path / "t"),
                         env={"CHROMAGUARD_BACKUP_PASSWORD": "wrong"}), "wrong password")
    assert not (tmp_path / "t").exists()
    restored = tmp_path / "restored"
    ok(run("restore", sealed, "--data-dir", str(restored), env=secret))
    assert dump(restored) == dump(data)
    second = backup(data, sealed, secret)
    assert second["stored_bytes"] < made["stored_bytes"] * 0.1  # deduplicated as without encryption

    password_file = tmp_path / "password"
    password_file.write_text(secret["CHROMAGUARD_BACKUP_PASSWORD"] + "\n")
    assert len(listed(sealed, {"CHROMAGUARD_BACKUP_PASSWORD_FILE": str(password_file)})) == 2

    # An unencrypted repository stays readable without a password; with one set it is refused, so a
    # config.json stripped of its encryption entry cannot pass plaintext off as the real backups.
    assert len(listed(clear, {})) == 1
    one_line_error(run("backup", "--data-dir", str(data), "--to", clear, env=secret), "not encrypted")
    one_line_error(run("backups", "list", clear, env=secret), "not encrypted")

    manifest = next((tmp_path / "sealed" / "backups").glob(f"{made['id']}*"))
    raw = bytearray(manifest.read_bytes())
    raw[40] ^= 1
    manifest.write_bytes(bytes(raw))
    one_line_error(run("verify", sealed, "--id", made["id"], env=secret), made["id"], "does not decrypt")
