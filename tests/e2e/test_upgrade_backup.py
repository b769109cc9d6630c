"""A backup before an engine upgrade: taken when the installed chromadb is not the one that last
served the data dir, before the new engine opens it; never twice; off on request; and a start
refused when it cannot be taken."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

from support.clients import http_client
from support.procs import Guard, cli

from chromaguard.backup.upgrade import MARKER

INSTALLED = version("chromadb")


def _seed(data_dir: Path) -> None:
    with Guard(data_dir=data_dir) as first:
        col = http_client(first.port).create_collection("kept", embedding_function=None)
        col.add(ids=[f"k{i}" for i in range(200)], embeddings=[[float(i), 1.0] for i in range(200)])
        assert "backing it up first" not in first.log  # a new data dir: nothing to lose


def _pretend_served_by(data_dir: Path, engine: str | None) -> None:
    marker = data_dir / MARKER
    if engine is None:
        marker.unlink()
    else:
        marker.write_text(json.dumps({"chromadb": engine}))


def test_an_engine_change_is_backed_up_first_once_and_the_archive_restores(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    _seed(data_dir)
    assert json.loads((data_dir / MARKER).read_text())["chromadb"] == INSTALLED
    archives = tmp_path / "data-before-upgrade"
    assert not archives.exists()

    _pretend_served_by(data_dir, "0.6.3")
    with Guard(data_dir=data_dir) as upgraded:
        assert f"chromadb {INSTALLED} is about to open a data dir last served by chromadb 0.6.3" in upgraded.log
        assert http_client(upgraded.port).get_collection("kept").count() == 200
    made = sorted(archives.glob("chroma-backup-*.tar.gz"))
    assert len(made) == 1, list(archives.iterdir())
    assert json.loads((data_dir / MARKER).read_text())["chromadb"] == INSTALLED  # recorded once the engine was up
    result = cli("verify", str(made[0]))
    assert result.returncode == 0 and "200 record(s)" in result.stdout, result.stderr

    with Guard(data_dir=data_dir) as again:  # the same engine as last time: nothing to do
        assert "backing it up first" not in again.log
    assert len(list(archives.glob("*.tar.gz"))) == 1

    _pretend_served_by(data_dir, "0.6.3")
    with Guard(data_dir=data_dir, env={"CHROMAGUARD_UPGRADE_BACKUP": "off"}) as skipped:
        assert "backing it up first" not in skipped.log
    assert len(list(archives.glob("*.tar.gz"))) == 1


def test_an_unrecorded_engine_backs_up_to_the_repository_when_one_is_set(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    _seed(data_dir)
    _pretend_served_by(data_dir, None)  # a data dir from plain Chroma, or from before chromaguard recorded it
    repo = tmp_path / "repo"
    with Guard(data_dir=data_dir, env={"CHROMAGUARD_BACKUP_REPOSITORY": str(repo)}) as upgraded:
        assert "last served by an unrecorded version" in upgraded.log
    listed = json.loads(cli("backups", "list", str(repo), "--json").stdout)["backups"]
    assert len(listed) == 1 and listed[0]["records"] == 200
    assert not (tmp_path / "data-before-upgrade").exists()


def test_a_start_is_refused_when_the_backup_before_an_upgrade_fails(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    _seed(data_dir)
    _pretend_served_by(data_dir, "0.6.3")
    (tmp_path / "data-before-upgrade").write_text("a file where the archives would go")
    guard = Guard(data_dir=data_dir)
    try:
        guard.start(wait=False)
        assert guard.proc is not None and guard.proc.wait(120) != 0
        log = guard.log
        assert "the backup before the upgrade failed" in log and "CHROMAGUARD_UPGRADE_BACKUP=off" in log, log
        assert "Traceback" not in log
        assert json.loads((data_dir / MARKER).read_text())["chromadb"] == "0.6.3"  # the new engine never opened it
    finally:
        guard.close()


def test_a_data_dir_sqlite_cannot_read_is_one_line_for_backup_and_left_to_the_engine_at_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "chroma.sqlite3").write_bytes(b"this is not a sqlite database" * 100)
    result = cli("backup", "--data-dir", str(data_dir), "--to", str(tmp_path / "repo"))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "cannot be read by SQLite" in result.stderr
    guard = Guard(data_dir=data_dir)
    try:
        guard.start(wait=False)
        assert guard.proc is not None and guard.proc.wait(60) == 2
        assert "it cannot be backed up" in guard.log and "the Chroma engine exited during start-up" in guard.log
        assert "Traceback" not in guard.log.split("the Chroma engine exited")[0]
    finally:
        guard.close()
