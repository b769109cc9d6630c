"""Delta chunks end to end: records changed in place cost their changes, not the index chunks
around them, and every kept backup still restores the state it was taken of, also once the
backup whose chunks the deltas are taken against is pruned, and a damaged base is named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.repositories import backup, copy_data, dump, listed, ok, one_line_error, plant_manifest, run, write_data
from support.s3 import MotoServer

from chromaguard.backup.repository import Repository

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 000 records of 128 dimensions: an HNSW index of about 4 MiB, a dozen elements a chunk."""
    path = tmp_path_factory.mktemp("source") / "data"
    write_data(path, {"docs": {"add": [0, 6000], "dim": 128, "seed": 1}})
    return path


def _one_percent(source: Path, seed: int) -> None:
    """1 % of the records changed in place and 1 % added: links rewired all over the index."""
    write_data(source, {"docs": {"update": list(range(seed, 6000, 100)), "add": [10_000 + 60 * seed, 60],
                                 "dim": 128, "seed": seed}})


def _manifest(repo: str, backup_id: str, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> dict[str, object]:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Repository.open(repo, password=env.get("CHROMAGUARD_BACKUP_PASSWORD")).manifest(backup_id)


@pytest.mark.parametrize("kind", ["s3", "encrypted folder"])
def test_changed_records_go_up_as_deltas_and_each_backup_restores_its_own_state(
        kind: str, s3: MotoServer, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if kind == "s3":  # bases are read back with ranged GETs over HTTP
        repo, env = f"s3://{s3.bucket('deltas')}/c", s3.env()
    else:
        repo, env = str(tmp_path / "repo"), {"CHROMAGUARD_BACKUP_PASSWORD": "a long test passphrase"}
    source = copy_data(data, tmp_path)
    first = backup(source, repo, env)
    _one_percent(source, 1)
    second = backup(source, repo, env)

    m1, m2 = _manifest(repo, first["id"], monkeypatch, env), _manifest(repo, second["id"], monkeypatch, env)
    assert m1["version"] == 1 and "bases" not in m1  # no delta: what chromaguard wrote before them
    assert m2["version"] == 2 and m2["stats"]["delta_chunks"] > 20, m2["stats"]  # type: ignore[index]
    # Without deltas this change re-sent about a third of the first backup's bytes.
    assert second["stored_bytes"] < first["stored_bytes"] * 0.1, (second, first)

    old, new = tmp_path / "old", tmp_path / "new"
    ok(run("restore", repo, "--id", first["id"], "--data-dir", str(old), env=env))
    ok(run("restore", repo, "--id", second["id"], "--data-dir", str(new), env=env))
    assert dump(old) == dump(data)
    assert dump(new) == dump(source)
    ok(run("verify", repo, "--id", second["id"], "--chunks-only", env=env))


def test_pruning_the_backup_that_holds_the_bases_keeps_them_for_the_backups_kept(
        data: Path, tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    source = copy_data(data, tmp_path)
    made = [backup(source, repo, {})["id"]]
    for seed in (1, 2):
        _one_percent(source, seed)
        made.append(backup(source, repo, {})["id"])
    first, kept = (Repository.open(repo).manifest(i) for i in (made[0], made[2]))
    bases_packs = {kept["packs"][entry[0]] for entry in kept["bases"]}
    assert bases_packs & set(first["packs"]), "the kept backup's deltas are against the first backup's chunks"
    report = json.loads(ok(run("backups", "prune", repo, "--keep-last", "1", "--json")).stdout)
    assert report["kept"] == {made[2]: ["last"]} and [b["id"] for b in listed(repo, {})] == [made[2]]
    ok(run("verify", repo, "--id", made[2], "--chunks-only"))
    restored = tmp_path / "restored"
    ok(run("restore", repo, "--data-dir", str(restored)))
    assert dump(restored) == dump(source)
    # The next backup builds on the kept one, and on its bases.
    _one_percent(source, 3)
    latest = backup(source, repo, {})
    assert latest["stored_bytes"] < Repository.open(repo).size() * 0.1
    again = tmp_path / "again"
    ok(run("restore", repo, "--data-dir", str(again)))
    assert dump(again) == dump(source)


def _with_deltas(data: Path, tmp_path: Path) -> tuple[str, str, dict[str, object]]:
    repo = str(tmp_path / "repo")
    source = copy_data(data, tmp_path)
    backup(source, repo, {})
    _one_percent(source, 1)
    second = backup(source, repo, {})["id"]
    return repo, second, Repository.open(repo).manifest(second)


def test_a_flipped_byte_in_a_base_is_named_and_the_backup_needing_it_is_not_restored(
        data: Path, tmp_path: Path) -> None:
    repo, second, m = _with_deltas(data, tmp_path)
    pack_index, offset, length, _, _ = m["bases"][0]  # type: ignore[index]
    pack = m["packs"][pack_index]  # type: ignore[index]
    path = Path(repo) / "packs" / pack[:2] / pack
    body = bytearray(path.read_bytes())
    body[offset + length // 2] ^= 0x01
    path.write_bytes(bytes(body))
    one_line_error(run("verify", repo, "--id", second, "--chunks-only"), f"backup {second}", "is corrupt", pack[:16])
    target = tmp_path / "target"
    one_line_error(run("restore", repo, "--id", second, "--data-dir", str(target)), "is corrupt")
    assert not target.exists(), "a refused restore must leave nothing behind"


def test_a_manifest_naming_a_base_it_does_not_list_is_one_line(data: Path, tmp_path: Path) -> None:
    repo, second, m = _with_deltas(data, tmp_path)
    delta_entry = next(entry for entry in m["chunks"] if len(entry) == 6)  # type: ignore[attr-defined]
    delta_entry[5] = len(m["bases"])  # type: ignore[arg-type]
    plant_manifest(Path(repo), m)
    one_line_error(run("restore", repo, "--id", second, "--data-dir", str(tmp_path / "x")),
                   f"backup {second}", "malformed chunk entry")
