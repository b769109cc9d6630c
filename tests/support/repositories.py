"""Shared by the repository tests: data written and read by the real engine, the CLI's results."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

from support.procs import clean_env, cli

if TYPE_CHECKING:
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


def write_stream(repo: Repository, stream: bytes) -> dict[str, Any]:
    """``stream`` backed up into ``repo`` as a service's snapshot would be: its manifest."""
    writer = repo.writer()
    for start in range(0, len(stream), 1 << 20):
        writer.write(stream[start:start + (1 << 20)])
    return repo.manifest(writer.commit().id)
