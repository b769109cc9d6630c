"""``verify`` proves the data, not only the checksums; the copy is SQLite's own, not a file copy.

Each archive here has checksums that all match, so only the data comparison can catch it:
a manifest whose counts, dimensions or sampled records say something the data does not, and
data files taken from another moment with the checksums written anew.
"""

from __future__ import annotations

import asyncio
import copy
import gzip
import sqlite3
from pathlib import Path
from typing import Any

import chromadb
import pytest
from chromadb.config import Settings

from chromaguard import archive
from chromaguard.restore import VerifyError, verify
from chromaguard.snapshot import Snapshot, copy_data_dir, file_entries, take_offline
from procs import Guard


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
    import chromaguard.snapshot as snapshot_module

    data = tmp_path / "data"
    (data / "segment").mkdir(parents=True)
    with sqlite3.connect(data / "chroma.sqlite3") as db:
        db.execute("CREATE TABLE t (x)")
    target = data / "segment" / "data_level0.bin"
    target.write_bytes(b"\0" * 4096)
    real = snapshot_module._copy_file
    copied: list[str] = []

    def copy_then_write(src: str, dst: str, size: int) -> None:
        real(src, dst, size)
        copied.append(src)
        with open(target, "ab") as fh:
            fh.write(b"changed")

    monkeypatch.setattr(snapshot_module, "_copy_file", copy_then_write)
    assert copy_data_dir(data, tmp_path / "copy") is False
    assert copied == [str(target)]
    monkeypatch.setattr(snapshot_module, "_copy_file", real)
    assert copy_data_dir(data, tmp_path / "again") is True  # nothing writes now: a good copy
