"""Online backups under write load, verified restores, and export/import round trips."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from support.clients import http_client
from support.procs import BareEngine, Guard, cli
from support.writers import BASE, DIM, Writers, all_ids, check_state_at_hold, vector

from chromaguard.backup import archive
from chromaguard.backup import take as backups
from chromaguard.backup.restore import VerifyError, restore, verify
from chromaguard.backup.upgrade import MARKER


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return cli(*args, timeout=300, **env)


def test_online_backup_under_write_load_restores_exactly_the_state_at_the_hold(tmp_path: Path) -> None:
    with Guard() as live:
        cid = httpx.post(live.url + f"{BASE}/collections", json={"name": "busy"}).json()["id"]
        with Writers(live.url, cid) as writers:
            time.sleep(1.5)
            result = backups.online(live.url, tmp_path / "bk")
            time.sleep(0.5)
        hold = archive.read_manifest(result.path)["write_hold"]
        assert result.write_hold_ms is not None and result.write_hold_ms < 5000

    restore(result.path, tmp_path / "restored", force=False)
    with Guard(data_dir=tmp_path / "restored") as restored:
        present = all_ids(restored.url, cid)
        check_state_at_hold(present, writers.log, hold)

        # The index agrees with the data: each record is its own nearest neighbour, with its exact vector.
        client = http_client(restored.port)
        col = client.get_collection("busy")
        stored = col.get(ids=sorted(present), include=["embeddings"])
        for rid, emb in zip(stored["ids"], stored["embeddings"]):
            assert np.array_equal(np.asarray(emb, dtype=np.float32), np.asarray(vector(rid), dtype=np.float32))
        sample = sorted(present)[:: max(1, len(present) // 40)]
        hits = col.query(query_embeddings=[vector(i) for i in sample], n_results=1, include=["distances"])
        assert [h[0] for h in hits["ids"]] == sample
        # Neighbours equal exact search over the records present at the hold.
        keys = sorted(present)
        matrix = np.asarray([vector(k) for k in keys], dtype=np.float32)
        probes = np.random.default_rng(3).random((20, DIM), dtype=np.float32)
        got = col.query(query_embeddings=probes, n_results=5, include=[])["ids"]
        agree = sum(got[i] == [keys[j] for j in np.argsort(((matrix - p) ** 2).sum(1))[:5]]
                    for i, p in enumerate(probes))
        assert agree >= 19


def _small_backup(tmp_path: Path) -> Path:
    with Guard() as live:
        col = http_client(live.port).create_collection("small", embedding_function=None,
                                                       metadata={"hnsw:space": "cosine"})
        col.add(ids=[f"s{i}" for i in range(500)], embeddings=[vector(f"s{i}") for i in range(500)],
                documents=[f"doc {i}" for i in range(500)])
        result = _cli("backup", "--url", live.url, "--output", str(tmp_path / "bk"))
        assert result.returncode == 0, result.stderr
        assert "writes held for" in result.stdout
    return next((tmp_path / "bk").glob("*.tar.gz"))


def _rewrite(path: Path, change) -> None:
    """Decompress, let ``change`` edit the raw tar bytes, compress again (a corrupt but well-formed gzip)."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    change(raw)
    path.write_bytes(gzip.compress(bytes(raw)))


def test_flipped_byte_and_truncation_are_caught(tmp_path: Path) -> None:
    good = _small_backup(tmp_path)
    assert _cli("verify", str(good)).returncode == 0

    flipped = tmp_path / "flipped.tar.gz"
    flipped.write_bytes(good.read_bytes())

    def flip(raw: bytearray) -> None:
        with tarfile.open(fileobj=io.BytesIO(bytes(raw))) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("data_level0.bin"))
        raw[member.offset_data + 100] ^= 0xFF

    _rewrite(flipped, flip)
    result = _cli("verify", str(flipped))
    assert result.returncode == 1 and "data_level0.bin is corrupt" in result.stderr
    target = tmp_path / "target"
    result = _cli("restore", str(flipped), "--data-dir", str(target))
    assert result.returncode == 1 and "corrupt" in result.stderr
    assert not target.exists() or not any(target.iterdir()), "a refused restore must leave nothing behind"

    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    result = _cli("verify", str(truncated))
    assert result.returncode == 1 and "truncated or corrupt" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert _cli("restore", str(truncated), "--data-dir", str(target)).returncode == 1


def test_interrupted_backup_leaves_no_archive_that_looks_complete(tmp_path: Path) -> None:
    with Guard() as live:
        col = http_client(live.port).create_collection("cut-short", embedding_function=None)
        col.add(ids=[str(i) for i in range(2000)], embeddings=[vector(str(i)) for i in range(2000)])
        created = []

        def interrupt(stage: str, n: int, total: int | None) -> None:
            created.append(stage)
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            backups.online(live.url, tmp_path / "bk", progress=interrupt)
        assert created == ["download"]
        assert list((tmp_path / "bk").iterdir()) == []
        assert "snapshot" in live.log
    partial = tmp_path / "cut.tar.gz.partial"
    partial.write_bytes(b"\x1f\x8b" + b"\x00" * 100)
    with pytest.raises(VerifyError):
        verify(partial)


def test_restore_refuses_busy_or_non_empty_dirs_and_swaps_atomically(tmp_path: Path) -> None:
    good = _small_backup(tmp_path)
    with Guard() as running:
        result = _cli("restore", str(good), "--data-dir", str(running.data_dir), "--force")
        assert result.returncode == 1 and "in use by chromaguard" in result.stderr
    existing = tmp_path / "existing"
    with Guard(data_dir=existing) as other:
        http_client(other.port).create_collection("old-data", embedding_function=None)
    result = _cli("restore", str(good), "--data-dir", str(existing))
    assert result.returncode == 1 and "not empty" in result.stderr and "--force" in result.stderr
    result = _cli("restore", str(good), "--data-dir", str(existing), "--force")
    assert result.returncode == 0, result.stderr
    with Guard(data_dir=existing) as served:
        client = http_client(served.port)
        assert [c.name for c in client.list_collections()] == ["small"]
        col = client.get_collection("small")
        assert col.count() == 500 and col.metadata["hnsw:space"] == "cosine"
        assert col.query(query_embeddings=[vector("s7")], n_results=1)["ids"] == [["s7"]]
    leftovers = [p.name for p in tmp_path.iterdir() if "verify" in p.name or "before-restore" in p.name]
    assert leftovers == []


def test_offline_backup_and_retention(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Guard(data_dir=data) as g:
        collection = http_client(g.port).create_collection("offline", embedding_function=None)
        collection.add(ids=["a"], embeddings=[[1.0, 2.0]])
        busy = _cli("backup", "--data-dir", str(data), "--output", str(tmp_path / "bk"))
        assert busy.returncode == 1 and "in use by chromaguard" in busy.stderr
    for _ in range(3):
        result = _cli("backup", "--data-dir", str(data), "--output", str(tmp_path / "bk"), "--keep", "2")
        assert result.returncode == 0, result.stderr
        assert "offline" in result.stdout and "1 record(s)" in result.stdout
        time.sleep(1.1)  # archive names carry the second
    kept = sorted((tmp_path / "bk").glob("*.tar.gz"))
    assert len(kept) == 2
    assert _cli("verify", str(kept[-1])).returncode == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _cli("backup", "--data-dir", str(empty), "--output", str(tmp_path / "bk"))
    assert result.returncode == 1 and "no Chroma data" in result.stderr


def test_backup_needs_admin_and_the_embedded_engine(tmp_path: Path, bare: BareEngine) -> None:
    tokens = tmp_path / "t.json"
    tokens.write_text(json.dumps([{"token": "adm", "role": "admin"}, {"token": "w", "name": "w", "role": "write"}]))
    with Guard(env={"CHROMA_SERVER_AUTH_PROVIDER": "token", "CHROMA_SERVER_AUTH_CREDENTIALS_FILE": str(tokens)}) as g:
        denied = _cli("backup", "--url", g.url, "--output", str(tmp_path / "bk"), CHROMAGUARD_TOKEN="w")
        assert denied.returncode == 1 and "admin token" in denied.stderr
        assert _cli("backup", "--url", g.url, "--output", str(tmp_path / "bk"), "--token", "adm").returncode == 0
    with Guard("--upstream", bare.url, data_dir=tmp_path / "none") as up:
        result = _cli("backup", "--url", up.url, "--output", str(tmp_path / "bk2"))
        assert result.returncode == 1 and "chromaguard export" in result.stderr


def test_reads_flow_while_writes_are_held(tmp_path: Path) -> None:
    """A slow snapshot (big files) does not stop queries."""
    with Guard() as g:
        col = http_client(g.port).create_collection("big", embedding_function=None)
        vectors = np.random.default_rng(1).random((5000, 384), dtype=np.float32)
        for start in range(0, 5000, 1000):
            col.add(ids=[str(i) for i in range(start, start + 1000)], embeddings=vectors[start:start + 1000])
        latencies: list[float] = []
        done = threading.Event()

        def reader() -> None:
            with httpx.Client(base_url=g.url) as http:
                while not done.is_set():
                    t0 = time.monotonic()
                    assert http.get(f"{BASE}/collections/{col.id}/count").json() == 5000
                    latencies.append(time.monotonic() - t0)

        thread = threading.Thread(target=reader)
        thread.start()
        try:
            result = backups.online(g.url, tmp_path / "bk")
        finally:
            done.set()
            thread.join()
        assert result.records == 5000 and latencies and max(latencies) < 5


# ---- export / import -------------------------------------------------------------------------


def test_export_import_round_trip_is_identical(guard: Guard, bare: BareEngine, tmp_path: Path) -> None:
    source = http_client(guard.port)
    col = source.create_collection("round-trip", embedding_function=None,
                                   metadata={"team": "search"}, configuration={"hnsw": {"ef_search": 77}})
    vectors = np.random.default_rng(11).random((1200, 24), dtype=np.float32)
    col.add(ids=[f"r{i}" for i in range(1200)], embeddings=vectors,
            documents=[f"document {i}" if i % 3 else None for i in range(1200)],
            metadatas=[{"i": i, "even": i % 2 == 0, "score": i / 7} if i % 5 else None for i in range(1200)],
            uris=[f"s3://bucket/{i}" if i % 4 == 0 else None for i in range(1200)])
    out = tmp_path / "export.jsonl.gz"
    result = _cli("export", "--url", guard.url, "--collection", "round-trip", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert "1200 record(s)" in result.stdout
    result = _cli("import", str(out), "--url", bare.url)
    assert result.returncode == 0, result.stderr
    target = http_client(bare.port).get_collection("round-trip")
    assert target.metadata == col.metadata
    assert target.configuration_json["hnsw"]["ef_search"] == 77
    include = ["embeddings", "documents", "metadatas", "uris"]
    a = col.get(ids=[f"r{i}" for i in range(1200)], include=include)
    b = target.get(ids=[f"r{i}" for i in range(1200)], include=include)

    def by_id(got: dict) -> dict:
        return {rid: (doc, meta, uri, np.asarray(emb).tobytes())
                for rid, doc, meta, uri, emb in zip(got["ids"], got["documents"], got["metadatas"], got["uris"],
                                                    got["embeddings"])}

    assert len(b["ids"]) == 1200 and by_id(a) == by_id(b)
    assert np.array_equal(np.asarray(col.get(ids=["r5"], include=["embeddings"])["embeddings"][0], dtype=np.float32),
                          vectors[5])
    again = _cli("import", str(out), "--url", bare.url)
    assert again.returncode == 1 and "already exists" in again.stderr and "--replace" in again.stderr
    assert _cli("import", str(out), "--url", bare.url, "--replace").returncode == 0
    assert http_client(bare.port).get_collection("round-trip").count() == 1200
    broken = tmp_path / "broken.jsonl.gz"  # a replacement that fails half-way keeps the original whole
    lines = gzip.decompress(out.read_bytes()).decode().splitlines()
    bad_record = json.loads(lines[5])
    bad_record["embedding"] = [1.0, 2.0]  # wrong dimension
    broken.write_bytes(gzip.compress(("\n".join(lines[:5] + [json.dumps(bad_record)]) + "\n").encode()))
    failed = _cli("import", str(broken), "--url", bare.url, "--replace")
    assert failed.returncode == 1 and "refused a batch" in failed.stderr
    assert [c.name for c in http_client(bare.port).list_collections() if "round-trip" in c.name] == ["round-trip"]
    assert http_client(bare.port).get_collection("round-trip").count() == 1200
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(gzip.compress(b'{"type": "header"}\n'))
    result = _cli("import", str(bad), "--url", bare.url)
    assert result.returncode == 1 and "not a chromaguard export" in result.stderr


def test_cosine_collections_round_trip_within_float32_rounding(guard: Guard, bare: BareEngine, tmp_path: Path) -> None:
    """The engine normalises vectors of cosine collections on every add, so a re-import may move the last bit."""
    col = http_client(guard.port).create_collection("cosine-trip", embedding_function=None,
                                                     configuration={"hnsw": {"space": "cosine"}})
    vectors = np.random.default_rng(5).random((300, 16), dtype=np.float32)
    col.add(ids=[f"c{i}" for i in range(300)], embeddings=vectors)
    out = tmp_path / "cosine.jsonl.gz"
    assert _cli("export", "--url", guard.url, "--collection", "cosine-trip", "--output", str(out)).returncode == 0
    assert _cli("import", str(out), "--url", bare.url).returncode == 0
    target = http_client(bare.port).get_collection("cosine-trip")
    assert target.configuration_json["hnsw"]["space"] == "cosine"
    ids = [f"c{i}" for i in range(300)]
    a = dict(zip(*(lambda g: (g["ids"], g["embeddings"]))(col.get(ids=ids, include=["embeddings"]))))
    b = dict(zip(*(lambda g: (g["ids"], g["embeddings"]))(target.get(ids=ids, include=["embeddings"]))))
    assert a.keys() == b.keys()
    assert all(np.allclose(a[k], b[k], rtol=1e-6, atol=1e-7) for k in ids)
    assert target.query(query_embeddings=vectors[:10], n_results=1)["ids"] == [[f"c{i}"] for i in range(10)]


# ---- edge cases found in review -----------------------------------------------------------------


def test_data_dir_with_uri_characters_in_its_path(tmp_path: Path) -> None:
    odd = tmp_path / "my#data?x%y"
    with Guard(data_dir=odd) as g:
        http_client(g.port).create_collection("odd-path", embedding_function=None).add(
            ids=["a", "b"], embeddings=[[1.0, 2.0], [2.0, 1.0]])
        result = backups.online(g.url, tmp_path / "bk")
        assert result.collections == 1 and result.records == 2
        status = httpx.get(g.url + "/chromaguard/status").json()
        assert [c["name"] for c in status["collections"]] == ["odd-path"]
    report = verify(result.path)
    assert report.records == 2
    restore(result.path, tmp_path / "r#x" / "data")
    assert not (tmp_path / "my").exists() and not (tmp_path / "r").exists()


def test_prune_keeps_the_newest_even_within_one_second(tmp_path: Path) -> None:
    names = ["chroma-backup-20261124T112537Z.tar.gz", "chroma-backup-20261124T112537Z-1.tar.gz",
             "chroma-backup-20261124T112537Z-2.tar.gz", "chroma-backup-20261124T112537Z-10.tar.gz"]
    for age, name in enumerate(names):
        path = tmp_path / name
        path.write_bytes(b"x")
        stamp = 1_700_000_000 + age
        import os

        os.utime(path, (stamp, stamp))
    deleted = backups.prune(tmp_path, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [names[-1]]
    assert len(deleted) == 3


def test_a_slow_uploader_does_not_hold_up_the_backup_or_other_writers(tmp_path: Path) -> None:
    import socket

    with Guard() as g:
        col = http_client(g.port).create_collection("slowpoke", embedding_function=None)
        sock = socket.create_connection(("127.0.0.1", g.port))
        sock.sendall(f"POST {BASE}/collections/{col.id}/add HTTP/1.1\r\nHost: x\r\n"
                     f"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{{\"ids\"".encode())
        try:
            time.sleep(0.3)
            started = time.monotonic()
            result = backups.online(g.url, tmp_path / "bk")
            assert time.monotonic() - started < 10 and result.write_hold_ms < 5000
            r = httpx.post(g.url + f"{BASE}/collections/{col.id}/add", json={"ids": ["x"], "embeddings": [[1.0]]},
                           timeout=10)
            assert r.status_code == 201
        finally:
            sock.close()


def _tar_gz(members: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue())


def test_hostile_or_empty_archives_are_refused_cleanly(tmp_path: Path) -> None:
    import hashlib

    def manifest(files: dict[str, bytes]) -> bytes:
        return json.dumps({"format": "chromaguard-backup", "format_version": 1, "collections": [],
                           "files": [{"path": n, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                                     for n, d in files.items()]}).encode()

    empty = tmp_path / "empty.tar.gz"
    empty.write_bytes(_tar_gz({"manifest.json": manifest({})}))
    result = _cli("verify", str(empty))
    assert result.returncode == 1 and "holds no data/chroma.sqlite3" in result.stderr
    escape = {"data/chroma.sqlite3": b"x", "data/../../escaped": b"evil"}
    hostile = tmp_path / "hostile.tar.gz"
    hostile.write_bytes(_tar_gz({"manifest.json": manifest(escape), **escape}))
    result = _cli("restore", str(hostile), "--data-dir", str(tmp_path / "target"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()
    assert not list(tmp_path.glob(".chromaguard-restore-*")) and not (tmp_path / "target").exists()


def test_restore_into_a_mount_point_swaps_its_contents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = _small_backup(tmp_path)
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "stale.txt").write_text("old data")
    import chromaguard.backup.restore as restore_module

    monkeypatch.setattr(restore_module.os.path, "ismount", lambda p: Path(p) == volume.resolve())
    restore(good, volume, force=True)
    assert not (volume / "stale.txt").exists() and (volume / "chroma.sqlite3").is_file()
    leftovers = [p.name for p in volume.iterdir() if p.name.startswith(".chromaguard-") and p.name != MARKER]
    assert leftovers in ([], [".chromaguard.lock"])  # the marker came with the restored data
    with Guard(data_dir=volume) as served:
        assert http_client(served.port).get_collection("small").count() == 500
