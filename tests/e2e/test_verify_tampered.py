"""``verify`` proves the data, not only the checksums; the copy is SQLite's own, not a file copy.

Each archive here has checksums that all match, so only the data comparison can catch it:
a manifest whose counts, dimensions or sampled records say something the data does not, and
data files taken from another moment with the checksums written anew.
"""

from __future__ import annotations

import asyncio
import copy
import gzip
import importlib.metadata
import json
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import chromadb
import pytest
from chromadb.config import Settings
from support.procs import Guard

import chromaguard
from chromaguard.backup import archive
from chromaguard.backup import snapshot as snapshots_module
from chromaguard.backup.restore import VerifyError, verify
from chromaguard.backup.snapshot import Snapshot, SnapshotError, copy_data_dir, file_entries, take_offline, take_online
from chromaguard.http11.client import UpstreamUnavailable
from chromaguard.proxy.writegate import HoldTimeout, WriteGate


def _data_dir(tmp: Path, records: int) -> Path:
    """A real engine's data dir with one collection of ``records`` records, the engine stopped."""
    data = tmp / f"data-{records}"
    with Guard(data_dir=data) as g:
        client = chromadb.HttpClient(host="127.0.0.1", port=g.port, settings=Settings(anonymized_telemetry=False))
        col = client.create_collection("proof", embedding_function=None)
        col.add(ids=[f"r{i}" for i in range(records)], embeddings=[[float(i), 1.0, 2.0] for i in range(records)],
                documents=[f"doc {i}" for i in range(records)], metadatas=[{"i": i} for i in range(records)])
        g.stop()
    return data


def _archive(snapshot: Snapshot, manifest: dict[str, Any], out: Path) -> Path:
    fake = Snapshot(snapshot.id, snapshot.root, manifest, snapshot.created)
    with gzip.open(out, "wb") as fh:
        archive.write_tar(fake, fh)  # type: ignore[arg-type]
    archive.check(out)  # every checksum matches: only the data can tell
    return out


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory: pytest.TempPathFactory) -> tuple[Snapshot, Snapshot]:
    tmp = tmp_path_factory.mktemp("tamper")
    small, large = _data_dir(tmp, 20), _data_dir(tmp, 25)
    return asyncio.run(take_offline(small)), asyncio.run(take_offline(large))


def test_the_untouched_archive_verifies(snapshots: tuple[Snapshot, Snapshot], tmp_path: Path) -> None:
    small, _ = snapshots
    report = verify(_archive(small, small.manifest, tmp_path / "good.tar.gz"))
    assert report.records == 20 and report.sampled == 5


@pytest.mark.parametrize("what", ["count", "dimension", "sample", "missing collection", "extra collection"])
def test_a_manifest_that_disagrees_with_the_data_is_caught(snapshots: tuple[Snapshot, Snapshot], tmp_path: Path,
                                                           what: str) -> None:
    small, _ = snapshots
    manifest = copy.deepcopy(small.manifest)
    collection = manifest["collections"][0]
    if what == "count":
        collection["count"] += 1
    elif what == "dimension":
        collection["dimension"] = 4
    elif what == "sample":
        collection["sample"][2]["sha256"] = "0" * 64
    elif what == "missing collection":
        manifest["collections"] = []
    else:
        manifest["collections"].append({**collection, "name": "ghost", "id": "00000000-0000-0000-0000-000000000000"})
    with pytest.raises(VerifyError) as caught:
        verify(_archive(small, manifest, tmp_path / "tampered.tar.gz"))
    message = str(caught.value)
    expected = {"count": "has 20 records, the manifest says 21", "dimension": "dimension 3, the manifest says 4",
                "sample": f"record {collection['sample'][2]['id']!r}", "missing collection": "not in the manifest",
                "extra collection": "ghost is in the manifest but not in the restored data"}[what]
    assert expected in message, message


def test_data_from_another_moment_with_fresh_checksums_is_caught(snapshots: tuple[Snapshot, Snapshot],
                                                                 tmp_path: Path) -> None:
    small, large = snapshots
    manifest = copy.deepcopy(small.manifest)  # says 20 records
    manifest["files"] = file_entries(large.data)  # the 25-record files, checksummed anew
    with pytest.raises(VerifyError, match="has 25 records, the manifest says 20"):
        verify(_archive(large, manifest, tmp_path / "swapped.tar.gz"))


def test_the_sqlite_copy_includes_what_only_the_write_ahead_log_holds(tmp_path: Path) -> None:
    """Committed rows still in chroma.sqlite3-wal: SQLite's backup API copies them, a copy of
    the main file alone would not."""
    data = tmp_path / "data"
    data.mkdir()
    writer = sqlite3.connect(data / "chroma.sqlite3", isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")  # keep everything in the log
    writer.execute("CREATE TABLE t (x INTEGER)")
    writer.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100)])
    assert (data / "chroma.sqlite3-wal").stat().st_size > 0
    try:
        assert copy_data_dir(data, tmp_path / "copy") is True
        copied = sqlite3.connect(tmp_path / "copy" / "chroma.sqlite3")
        assert copied.execute("SELECT count(*) FROM t").fetchone() == (100,)
        copied.close()
        assert not (tmp_path / "copy" / "chroma.sqlite3-wal").exists()
    finally:
        writer.close()


def test_a_file_that_changes_during_the_copy_makes_it_unusable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    """The check after the copy: a segment file written while the copy ran (injected as the
    engine would: right after that file was copied)."""
    import chromaguard.backup.snapshot as snapshot_module

    data = tmp_path / "data"
    (data / "segment").mkdir(parents=True)
    with sqlite3.connect(data / "chroma.sqlite3") as db:
        db.execute("CREATE TABLE t (x)")
    target = data / "segment" / "data_level0.bin"
    target.write_bytes(b"\0" * 4096)
    real = snapshot_module.copy_file
    copied: list[str] = []

    def copy_then_write(src: str, dst: str, size: int) -> None:
        real(src, dst, size)
        copied.append(src)
        with open(target, "ab") as fh:
            fh.write(b"changed")

    monkeypatch.setattr(snapshot_module, "copy_file", copy_then_write)
    assert copy_data_dir(data, tmp_path / "copy") is False
    assert copied == [str(target)]
    monkeypatch.setattr(snapshot_module, "copy_file", real)
    assert copy_data_dir(data, tmp_path / "again") is True  # nothing writes now: a good copy


# ---- what a snapshot records, taken in-process -----------------------------------------------


@pytest.fixture(scope="module")
def stopped_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _data_dir(tmp_path_factory.mktemp("manifest"), 12)


def _check_common(snapshot: Snapshot, staging: Path, mode: str) -> dict[str, Any]:
    manifest = snapshot.manifest
    assert re.fullmatch(r"[0-9a-f]{32}", snapshot.id)
    assert snapshot.root.parent == staging and snapshot.root.name.startswith("chromaguard-snapshot-")
    assert json.loads((snapshot.root / "manifest.json").read_text()) == manifest
    assert (snapshot.root / "manifest.json").read_text() == json.dumps(manifest, indent=2)
    assert manifest["format"] == "chromaguard-backup" and manifest["format_version"] == 1
    assert manifest["mode"] == mode and manifest["chromaguard_version"] == chromaguard.__version__
    assert manifest["chromadb_version"] == importlib.metadata.version("chromadb")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", manifest["created_at"])
    [collection] = manifest["collections"]
    assert collection["name"] == "proof" and collection["count"] == 12 and collection["dimension"] == 3
    assert manifest["files"] == file_entries(snapshot.data) and manifest["files"]
    assert any(f["path"] == "data/chroma.sqlite3" for f in manifest["files"])
    return manifest


def test_an_online_snapshot_records_its_hold_and_what_came_after(stopped_data_dir: Path, tmp_path: Path) -> None:
    gate = WriteGate()
    before = time.time()
    snapshot = asyncio.run(take_online(gate, stopped_data_dir, staging_root=str(tmp_path)))
    after = time.time()
    manifest = _check_common(snapshot, tmp_path, "online")
    assert not gate.held
    held = manifest["write_hold"]
    assert set(held) == {"from", "until", "copy_attempts", "waiting_for_writes_ms", "copy_ms", "copied", "mirror"}
    assert held["mirror"] is False, "no mirror given: a fresh copy, all of it under the hold"
    assert held["copied"]["files"] == len(manifest["files"]) and held["copied"]["bytes"] > 0
    assert before <= held["from"] <= held["until"] <= after and held["copy_attempts"] == 1
    span_ms = (held["until"] - held["from"]) * 1000
    assert 0 <= manifest["write_hold_ms"] <= span_ms + 50 and manifest["write_hold_ms"] == round(
        manifest["write_hold_ms"], 1)
    assert 0 <= held["waiting_for_writes_ms"] < 1000 and 0 < held["copy_ms"] <= manifest["write_hold_ms"] + 1
    assert set(manifest["after_hold_ms"]) == {"describe", "checksums"}
    assert manifest["after_hold_ms"]["describe"] > held["copy_ms"] / 100  # the scratch engine takes its time
    assert all(v >= 0 for v in manifest["after_hold_ms"].values())
    assert (after - before) * 1000 >= manifest["write_hold_ms"] + manifest["after_hold_ms"]["describe"]


def test_an_offline_snapshot_has_no_hold(stopped_data_dir: Path, tmp_path: Path) -> None:
    snapshot = asyncio.run(take_offline(stopped_data_dir, staging_root=str(tmp_path)))
    manifest = _check_common(snapshot, tmp_path, "offline")
    assert manifest["write_hold_ms"] is None and "write_hold" not in manifest and "after_hold_ms" not in manifest


def test_a_scratch_engine_that_does_not_answer_is_one_line_and_leaves_nothing(
        stopped_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def silent(copy: Path) -> list[dict[str, Any]]:
        raise UpstreamUnavailable("connection refused")

    monkeypatch.setattr(snapshots_module, "describe_copy", silent)
    gate = WriteGate()
    with pytest.raises(SnapshotError) as error:
        asyncio.run(take_online(gate, stopped_data_dir, staging_root=str(tmp_path)))
    assert str(error.value) == ("the scratch engine did not answer while the copy was described: "
                                "connection refused")
    assert list(tmp_path.iterdir()) == [] and not gate.held


def test_a_hold_that_times_out_takes_no_snapshot(stopped_data_dir: Path, tmp_path: Path) -> None:
    async def run() -> None:
        gate = WriteGate()
        await gate.enter()  # a write that never finishes
        with pytest.raises(HoldTimeout):
            await take_online(gate, stopped_data_dir, staging_root=str(tmp_path), hold_timeout=0.05)
        assert not gate.held and gate.try_enter()

    asyncio.run(run())
    assert list(tmp_path.iterdir()) == []
