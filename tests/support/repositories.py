"""Shared by the repository tests: data written and read by the real engine, the CLI's results."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

from support.procs import clean_env, cli

if TYPE_CHECKING:
    import pytest

    from chromaguard.backup.repository import Repository

_WRITE = textwrap.dedent('''
    import json, sys
    import chromadb, numpy as np
    path, spec = sys.argv[1], json.loads(sys.argv[2])
    client = chromadb.PersistentClient(path)
    for name, job in spec.items():
        col = client.get_or_create_collection(name, embedding_function=None)
        rng = np.random.default_rng(job.get("seed", 0))
        if "add" in job:
            start, n = job["add"]
            for s in range(start, start + n, 2000):
                ids = [f"r{i}" for i in range(s, min(start + n, s + 2000))]
                col.add(ids=ids, embeddings=rng.random((len(ids), job["dim"]), dtype=np.float32),
                        documents=[f"document {i} of {name}" for i in ids], metadatas=[{"i": i} for i in ids])
        if "update" in job:
            ids = [f"r{i}" for i in job["update"]]
            col.update(ids=ids, embeddings=rng.random((len(ids), job["dim"]), dtype=np.float32),
                       documents=["changed"] * len(ids))
''')

_DUMP = textwrap.dedent('''
    import hashlib, json, sys
    import chromadb
    client = chromadb.PersistentClient(sys.argv[1])
    out = {}
    for col in sorted(client.list_collections(), key=lambda c: c.name):
        rows = {}
        for offset in range(0, col.count(), 5000):
            got = col.get(include=["embeddings", "documents", "metadatas"], limit=5000, offset=offset)
            for rid, emb, doc, meta in zip(got["ids"], got["embeddings"], got["documents"], got["metadatas"]):
                rows[rid] = hashlib.sha256(json.dumps([emb.tolist(), doc, meta], sort_keys=True).encode()).hexdigest()
        out[col.name] = rows
    print(json.dumps(out))
''')


def write_data(path: Path, spec: dict[str, Any]) -> None:
    """Change a data dir with the real engine (in a process of its own, which then exits)."""
    subprocess.run([sys.executable, "-c", _WRITE, str(path), json.dumps(spec)], check=True, env=clean_env(),
                   timeout=300)


def dump(path: Path) -> dict[str, Any]:
    """Every record of every collection in a data dir, as the engine reads it."""
    out = subprocess.run([sys.executable, "-c", _DUMP, str(path)], check=True, env=clean_env(), timeout=300,
                         capture_output=True, text=True)
    return json.loads(out.stdout)


def copy_data(data: Path, into: Path) -> Path:
    import shutil

    return Path(shutil.copytree(data, into / "data"))


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return cli(*args, **(env or {}))


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr
    return result


def one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> str:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def backup(source: Path, repo: str, env: dict[str, str], *more: str) -> dict[str, Any]:
    return json.loads(ok(run("backup", "--data-dir", str(source), "--to", repo, "--json", *more, env=env)).stdout)


def listed(repo: str, env: dict[str, str]) -> list[dict[str, Any]]:
    return json.loads(ok(run("backups", "list", repo, "--json", env=env)).stdout)["backups"]


def tar_stream(data: bytes) -> bytes:
    """A tar stream as snapshots make them (manifest.json first, then a data file), no engine needed."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, body in (("manifest.json", json.dumps({"collections": []}).encode()), ("data/index.bin", data)):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


def archive_stream(files: dict[str, bytes], extra: dict[str, bytes] | None = None) -> bytes:
    """A snapshot's tar stream with a real archive manifest listing ``files`` (names under
    ``data/``), no engine needed: what a restore unpacks and checks before the engine opens it.
    ``extra``: members in the stream but not in the manifest, right after it."""
    import hashlib

    from chromaguard.backup.snapshot import new_manifest

    entries = [{"path": name, "size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
               for name, body in files.items()]
    manifest = json.dumps(new_manifest([], entries, None, "offline")).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, body in {"manifest.json": manifest, **(extra or {}), **files}.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


def write_stream(repo: Repository, stream: bytes) -> dict[str, Any]:
    """``stream`` backed up into ``repo`` as a service's snapshot would be: its manifest."""
    writer = repo.writer()
    for start in range(0, len(stream), 1 << 20):
        writer.write(stream[start:start + (1 << 20)])
    return repo.manifest(writer.commit().id)


def read_back(repo: Repository, backup_id: str) -> bytes:
    """The backup's stream as a restore reads it: every chunk and the whole checked."""
    out = io.BytesIO()
    repo.read(backup_id, out)
    return out.getvalue()


def plant_manifest(folder: Path, manifest: dict[str, Any], backup_id: str | None = None) -> None:
    """Write a manifest into a folder repository by hand, as anyone who can write the bucket could
    (unencrypted): how tests forge, break or tamper with one. ``backup_id``: where, if not its id."""
    import zstandard

    (folder / "backups").mkdir(exist_ok=True)
    (folder / "backups" / f"{backup_id or manifest['id']}.json.zst").write_bytes(
        zstandard.ZstdCompressor().compress(json.dumps(manifest).encode()))


def with_deltas_and_a_repack_due(repo: Repository) -> list[str]:
    """Three backups: the second edits the first here and there (delta chunks against its chunks)
    and rewrites a third of it (so the first's pack is mostly unused once it goes, and is repacked),
    the third repeats the second (its deltas shared by two backups)."""
    rnd = random.Random(11)
    data = bytearray(rnd.randbytes(1 << 19).hex().encode())  # compressible: a small edit is a small delta
    ids = [write_stream(repo, tar_stream(bytes(data)))["id"]]
    for _ in range(30):
        at = rnd.randrange(len(data) - 8)
        data[at:at + 4] = rnd.randbytes(4)
    data[400_000:800_000] = rnd.randbytes(200_000).hex().encode()
    second = write_stream(repo, tar_stream(bytes(data)))
    assert second["stats"]["delta_chunks"] > 0
    return [*ids, second["id"], write_stream(repo, tar_stream(bytes(data)))["id"]]


def pack_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A spy on every store: the bytes of packs read, whole or in ranges, appended as they are read."""
    from chromaguard.backup.store import Store

    read: list[int] = []
    get, get_ranges = Store.get, Store.get_ranges

    def whole(store: Store, key: str) -> bytes:
        found = get(store, key)
        read.append(len(found) if key.startswith("packs/") else 0)
        return found

    def ranges(store: Store, key: str, wanted: list[tuple[int, int]]) -> list[bytes]:
        read.extend(end - start for start, end in wanted)
        return get_ranges(store, key, wanted)

    monkeypatch.setattr(Store, "get", whole)
    monkeypatch.setattr(Store, "get_ranges", ranges)
    return read
