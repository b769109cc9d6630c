"""What an adversarial review broke in backup repositories, kept broken no more: a prune cut short
mid-repack, an unreadable newest manifest under retention, two processes taking one stale lock,
a lost pack built on, hostile manifests (zstd bombs, missing fields), a first member too large
to find. Folder repositories and the real engine's data; the CLI where users meet it."""

from __future__ import annotations

import io
import json
import os
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import zstandard
from support.procs import cli
from support.repositories import backup, copy_data, dump, listed, one_line_error, plant_manifest, write_data

from chromaguard.backup import repository as repo_module
from chromaguard.backup.repository import Repository, RepositoryError, _head_needed
from chromaguard.backup.retention import Policy
from chromaguard.backup.store import Store


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One collection written by the real engine, once for the module."""
    path = tmp_path_factory.mktemp("written") / "data"
    write_data(path, {"docs": {"add": [0, 3000], "dim": 32, "seed": 1}})
    return path


@pytest.fixture
def source(written: Path, tmp_path: Path) -> Path:
    """A copy of it of each test's own, to change and back up."""
    return copy_data(written, tmp_path)


def _backups_with_churn(source: Path, repo: str, n: int = 3) -> list[str]:
    made = []
    for i in range(n):
        # Records rewritten as well as added: with only additions, delta chunks leave no pack
        # wasteful enough to be repacked.
        write_data(source, {"docs": {"add": [10_000 + 50 * i, 50], "update": list(range(700 * i, 700 * i + 700)),
                                     "dim": 32, "seed": 10 + i}})
        made.append(backup(source, repo, {})["id"])
    return made


def _verify_all(repo: str) -> None:
    for info in Repository.open(repo).backups():
        result = cli("verify", repo, "--id", info.id, "--chunks-only")
        assert result.returncode == 0, result.stderr


def test_a_prune_cut_short_mid_repack_then_run_again_keeps_everybackup(source: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    repo = str(tmp_path / "repo")
    made = _backups_with_churn(source, repo, 4)
    real_put = Store.put

    def cut_before_manifests(self: Store, key: str, data: bytes, *, new: bool = False) -> bool:
        if key.startswith("backups/"):
            raise RuntimeError("killed after the repacked pack went up, before any manifest was rewritten")
        return real_put(self, key, data, new=new)

    monkeypatch.setattr(Store, "put", cut_before_manifests)
    with pytest.raises(RuntimeError):
        Repository.open(repo).prune(Policy(last=2))
    monkeypatch.setattr(Store, "put", real_put)
    Repository.open(repo).unlock()  # what the killed process left
    report = Repository.open(repo).prune(Policy(last=2))
    assert sorted(report.kept) == made[2:]
    _verify_all(repo)
    restored = tmp_path / "restored"
    assert cli("restore", repo, "--data-dir", str(restored)).returncode == 0
    assert dump(restored) == dump(source)


def test_an_unreadable_newest_manifest_stops_a_prune_before_anything_is_deleted(source: Path, tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    made = _backups_with_churn(source, repo, 3)
    newest = next((tmp_path / "repo" / "backups").glob(f"{made[-1]}*"))
    newest.write_bytes(newest.read_bytes()[:100])
    before = sorted(p.name for p in (tmp_path / "repo").rglob("*") if p.is_file())
    line = one_line_error(cli("backups", "prune", repo, "--keep-last", "1"), made[-1], "stopped before deleting")
    assert f"forget {repo} --id {made[-1]}" in line
    assert sorted(p.name for p in (tmp_path / "repo").rglob("*") if p.is_file()) == before
    assert cli("backups", "forget", repo, "--id", made[-1]).returncode == 0  # what the message says to do
    _verify_all(repo)
    assert [b.id for b in Repository.open(repo).backups()] == made[:2]


def test_two_processes_taking_over_one_stale_lock_never_both_hold_it(tmp_path: Path) -> None:
    repo = Repository.open(str(tmp_path / "repo"), create=True)
    stale = {"operation": "prune", "host": "elsewhere", "pid": 1, "since": 0, "refreshed": 0, "exclusive": True,
             "held": True, "token": "gone"}
    inside: list[str] = []
    overlaps: list[list[str]] = []
    entered: list[str] = []
    for round_ in range(8):
        repo.store.put("locks/gone.json", json.dumps(stale).encode())
        old = time.time() - 3600  # silent for an hour by the store's own clock (a folder: the file's mtime)
        os.utime(tmp_path / "repo" / "locks" / "gone.json", (old, old))
        barrier = threading.Barrier(2)

        def take(name: str, barrier: threading.Barrier = barrier) -> None:
            mine = Repository.open(repo.url)
            barrier.wait()
            try:
                with mine.locked("prune"):
                    inside.append(name)
                    entered.append(name)
                    if len(inside) > 1:
                        overlaps.append(list(inside))
                    time.sleep(0.05)
                    inside.remove(name)
            except RepositoryError as exc:
                assert "locked by a prune" in str(exc)

        threads = [threading.Thread(target=take, args=(f"{round_}{x}",)) for x in "AB"]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert overlaps == []
    assert entered, "a stale lock is taken over, not a door closed for good"
    # Two takers that tie both give way (neither may assume it won), and then the stale lock is
    # still there: the next taker alone takes it over. No lock of a taker is ever left behind.
    with repo.locked("prune"):
        pass
    assert not repo.store.list("locks"), "every lock was released, the stale one removed"


def test_a_backup_shares_with_a_restore_but_never_runs_beside_a_prune(tmp_path: Path) -> None:
    repo = Repository.open(str(tmp_path / "repo"), create=True)
    with repo.locked("verify", exclusive=False):
        with Repository.open(repo.url).locked("backup", exclusive=False):
            pass  # readers and writers share
        with pytest.raises(RepositoryError, match="locked by a verify"):
            with Repository.open(repo.url).locked("prune"):
                pass


def test_a_lost_pack_is_not_built_on_by_the_nextbackup(source: Path, tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    backup(source, repo, {})
    for pack in (tmp_path / "repo" / "packs").rglob("*"):
        if pack.is_file():
            pack.unlink()
            break
    second = backup(source, repo, {})
    result = cli("verify", repo, "--id", second["id"])
    assert result.returncode == 0, result.stderr


def _tamper(repo: Path, backup_id: str, change: Any) -> None:
    path = next((repo / "backups").glob(f"{backup_id}*"))
    manifest = json.loads(zstandard.ZstdDecompressor().decompress(path.read_bytes()))
    change(manifest)
    plant_manifest(repo, manifest, backup_id)


@pytest.mark.parametrize("case", ["no_sha", "huge_raw", "no_id", "stats_str", "float_time", "bad_count",
                                  "pack_path", "overlong"])
def test_a_hostile_manifest_is_one_line_never_a_traceback(case: str, source: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    made = backup(source, str(repo), {})
    changes = {
        "no_sha": lambda m: m["stream"].pop("sha256"),
        "huge_raw": lambda m: m["chunks"][0].__setitem__(3, 10**30),
        "no_id": lambda m: m.pop("id"),
        "stats_str": lambda m: m.__setitem__("stats", {"new_bytes": "lots"}),
        "float_time": lambda m: m.__setitem__("time", 1e308),
        "bad_count": lambda m: m["snapshot"]["collections"][0].__setitem__("count", "many"),
        "pack_path": lambda m: m["packs"].__setitem__(0, "../../../../etc/passwd"),
        "overlong": lambda m: m["chunks"][0].__setitem__(2, 2**40),
    }
    _tamper(repo, made["id"], changes[case])
    for args in (("backups", "list", str(repo)), ("restore", str(repo), "--data-dir", str(tmp_path / "t")),
                 ("backups", "prune", str(repo), "--keep-last", "1")):
        result = cli(*args)
        if args[1] == "list":  # the list shows the backup as damaged
            assert result.returncode == 0 and "FAILED" in result.stdout, result.stderr
        else:
            one_line_error(result, made["id"])
    assert not (tmp_path / "t").exists()


def test_zstd_bombs_in_a_manifest_or_a_chunk_are_refused_without_inflating(source: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    made = backup(source, str(repo), {})
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\0" * (64 << 20))  # small, declares 64 MiB
    pack = next(p for p in (repo / "packs").rglob("*") if p.is_file())
    original = pack.read_bytes()
    pack.write_bytes(bomb + original[len(bomb):])  # the pack's first chunk is now a bomb
    one_line_error(cli("verify", str(repo), "--chunks-only"), made["id"], "is corrupt")
    pack.write_bytes(original)
    manifest = next((repo / "backups").glob(f"{made['id']}*"))
    fake = zstandard.ZstdCompressor().compress(b" " * (600 << 20))  # declares 600 MiB of manifest
    manifest.write_bytes(fake)
    one_line_error(cli("restore", str(repo), "--data-dir", str(tmp_path / "t")), made["id"], "is not valid")


def test_a_first_member_larger_than_any_fixed_head_is_still_found() -> None:
    buf = io.BytesIO()
    big = json.dumps({"format": "x", "pad": "y" * (9 << 20)}).encode()
    with tarfile.open(fileobj=buf, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(big)
        tar.addfile(info, io.BytesIO(big))
        long_name = tarfile.TarInfo("data/" + "a" * 200)  # a pax header before it
        long_name.size = 3
        tar.addfile(long_name, io.BytesIO(b"abc"))
    stream = buf.getvalue()
    end = _head_needed(stream)
    assert end is not None and end >= 512 + len(big)
    assert repo_module._first_member_manifest(stream[:end])["pad"] == "y" * (9 << 20)
    assert _head_needed(stream[:100]) is None


def test_id_and_at_together_are_refused(source: Path, tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    made = backup(source, repo, {})
    one_line_error(cli("restore", repo, "--id", made["id"], "--at", "2000-01-01", "--data-dir", str(tmp_path / "t")),
                    "--id and --at")


def test_a_lock_written_from_a_clock_far_ahead_does_not_make_a_live_one_stale(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    repo = Repository.open(str(tmp_path / "repo"), create=True)
    with repo.locked("prune"):
        skewed = Repository.open(repo.url)
        real = time.time
        monkeypatch.setattr(repo_module.time, "time", lambda: real() + 3600)  # this "machine" runs an hour ahead
        with pytest.raises(RepositoryError, match="locked by a prune"):
            with skewed.locked("prune"):
                pass


def test_an_unlock_during_a_prune_stops_it_before_its_next_deletion(source: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    repo_url = str(tmp_path / "repo")
    for i in range(3):
        write_data(source, {"docs": {"add": [20_000 + 50 * i, 50], "dim": 32, "seed": 30 + i}})
        backup(source, repo_url, {})
    orphan = tmp_path / "repo" / "packs" / "ab" / ("ab" * 32)  # what a killed backup leaves: GC deletes it
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(os.urandom(1000))
    repo = Repository.open(repo_url)
    real_collect = Repository._collect_garbage

    def unlocked_meanwhile(self: Repository, *args: Any) -> Any:
        Repository.open(repo_url).unlock()  # a forgotten backup's manifest is gone; its packs are next
        time.sleep(1.1)  # past the once-a-second check
        return real_collect(self, *args)

    monkeypatch.setattr(Repository, "_collect_garbage", unlocked_meanwhile)
    with pytest.raises(RepositoryError, match="taken over"):
        repo.prune(Policy(last=2))
    monkeypatch.setattr(Repository, "_collect_garbage", real_collect)
    assert orphan.exists(), "nothing was deleted once the lock was gone"
    for info in Repository.open(repo_url).backups():
        assert cli("verify", repo_url, "--id", info.id, "--chunks-only").returncode == 0


def test_an_empty_password_or_a_downgraded_config_never_means_plaintext(source: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("")
    one_line_error(cli("backup", "--data-dir", str(source), "--to", str(tmp_path / "r1"),
                       CHROMAGUARD_BACKUP_PASSWORD_FILE=str(empty)), "password file is empty")
    one_line_error(cli("backup", "--data-dir", str(source), "--to", str(tmp_path / "r1"),
                       CHROMAGUARD_BACKUP_PASSWORD=""), "set but empty")
    sealed = tmp_path / "sealed"
    backup(source, str(sealed), {"CHROMAGUARD_BACKUP_PASSWORD": "pw"})
    config = json.loads((sealed / "config.json").read_text())
    config.pop("encryption")  # an attacker with write access to the store
    (sealed / "config.json").write_text(json.dumps(config))
    one_line_error(cli("restore", str(sealed), "--data-dir", str(tmp_path / "t"), CHROMAGUARD_BACKUP_PASSWORD="pw"),
                   "not encrypted, but a backup password is set")
    assert not (tmp_path / "t").exists()


def test_an_encrypted_repositorys_verification_records_cannot_be_planted_or_moved(source: Path,
                                                                                    tmp_path: Path) -> None:
    secret = {"CHROMAGUARD_BACKUP_PASSWORD": "pw"}
    sealed = tmp_path / "sealed"
    first = backup(source, str(sealed), secret)["id"]
    write_data(source, {"docs": {"add": [20_000, 40], "dim": 32, "seed": 7}})
    second = backup(source, str(sealed), secret)["id"]
    assert cli("verify", str(sealed), "--id", first, "--chunks-only", **secret).returncode == 0
    record = sealed / "verified" / f"{first}.json"
    assert b'"ok"' not in record.read_bytes()  # sealed, not readable (or writable) without the key

    def verification(backup_id: str) -> dict[str, Any] | None:
        [found] = [b for b in listed(str(sealed), secret) if b["id"] == backup_id]
        return found["verified"]

    def built_on() -> int:  # chunks a new backup would not upload again
        return len(Repository.open(str(sealed), password="pw").reusable()[0])

    assert verification(first)["ok"] is True
    everything = built_on()
    # Someone with write access to the store marks the unverified backup as verified, in clear (as
    # records were written before they were sealed): it stays unverified, and is still built on.
    planted = sealed / "verified" / f"{second}.json"
    planted.write_text(json.dumps({"time": "2026-12-03T00:00:00Z", "ok": True, "kind": "full", "message": "fine"}))
    assert verification(second) is None
    assert built_on() == everything
    # The first backup's sealed record copied over: not trusted, shown as failed, not built on.
    planted.write_bytes(record.read_bytes())
    assert verification(second)["ok"] is False and "not trusted" in verification(second)["message"]
    assert built_on() < everything
    assert verification(first)["ok"] is True
    # An unencrypted repository's records stay plain JSON.
    clear = tmp_path / "clear"
    made = backup(source, str(clear), {})["id"]
    assert cli("verify", str(clear), "--id", made, "--chunks-only").returncode == 0
    assert json.loads((clear / "verified" / f"{made}.json").read_text())["ok"] is True


def test_a_backup_copied_from_another_repository_with_the_same_password_does_not_open(source: Path,
                                                                                      tmp_path: Path) -> None:
    secret = {"CHROMAGUARD_BACKUP_PASSWORD": "reused"}
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    backup(source, str(mine), secret)
    foreign = backup(source, str(theirs), secret)["id"]
    # Each repository derives its own key (its own salt): their manifest and packs, copied into mine,
    # are refused as not this repository's, and nothing is restored.
    for part in ("backups", "packs"):
        for path in (theirs / part).rglob("*"):
            if path.is_file():
                target = mine / path.relative_to(theirs)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(path.read_bytes())
    one_line_error(cli("restore", str(mine), "--id", foreign, "--data-dir", str(tmp_path / "t"), **secret),
                   foreign, "does not decrypt")
    assert not (tmp_path / "t").exists()
