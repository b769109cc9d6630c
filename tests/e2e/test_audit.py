"""The audit log, end to end: who changed what and who was refused, never a secret; reopened
on SIGHUP after a rotation; a disk that fills costs counted lines, never a request."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import chromadb
import httpx
import pytest
from chromadb.config import Settings
from support.mounts import tmpfs
from support.procs import Guard, cli, free_port

BASE = "/api/v2/tenants/default_tenant/databases/default_database"
TOKENS = [
    {"token": "admin-audit-secret", "name": "ops", "role": "admin"},
    {"token": "writer-audit-secret", "name": "ingest", "role": "write"},
    {"token": "reader-audit-secret", "name": "dashboard", "role": "read"},
]
TRACE = "0af7651916cd43dd8448eb211c80319c"


def _client(port: int, token: str) -> chromadb.ClientAPI:
    return chromadb.HttpClient(host="127.0.0.1", port=port, settings=Settings(
        anonymized_telemetry=False, chroma_client_auth_provider="chromadb.auth.token_authn.TokenAuthClientProvider",
        chroma_client_auth_credentials=token))


def _lines(path: Path, count: int | None = None, timeout: float = 10.0) -> list[dict]:
    """The audit file's lines, once there are at least ``count`` (they are written by a thread)."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        lines = [json.loads(line) for line in text.splitlines()]
        if count is None or len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


@pytest.fixture
def audited(tmp_path: Path) -> Iterator[tuple[Guard, Path]]:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps(TOKENS))
    audit = tmp_path / "audit.jsonl"
    with Guard(env={"CHROMA_SERVER_AUTH_PROVIDER": "token", "CHROMA_SERVER_AUTH_CREDENTIALS_FILE": str(tokens),
                    "CHROMAGUARD_AUDIT_LOG": str(audit)}) as g:
        yield g, audit


def test_changes_admin_calls_and_refusals_are_logged_reads_are_not(audited: tuple[Guard, Path]) -> None:
    g, audit = audited
    writer = _client(g.port, "writer-audit-secret")
    col = writer.create_collection("audited", embedding_function=None)
    col.add(ids=["a"], embeddings=[[1.0, 0.0]])
    reader = _client(g.port, "reader-audit-secret")
    assert reader.get_collection("audited").count() == 1  # a read: not logged
    with pytest.raises(Exception):  # noqa: B017 - the client raises its own error kinds
        reader.get_collection("audited").add(ids=["b"], embeddings=[[0.0, 1.0]])
    headers = {"authorization": "Bearer writer-audit-secret", "traceparent": f"00-{TRACE}-b7ad6b7169203331-01"}
    r = httpx.post(f"{g.url}{BASE}/collections/{col.id}/delete", json={"ids": ["a"]}, headers=headers)
    assert r.status_code == 200
    assert httpx.post(f"{g.url}{BASE}/collections/{col.id}/add", json={}).status_code == 401
    assert httpx.get(f"{g.url}{BASE}/collections", headers={"x-chroma-token": "wrong"}).status_code == 403
    snap = httpx.post(g.url + "/chromaguard/snapshots", headers={"authorization": "Bearer admin-audit-secret"},
                      timeout=120)
    assert snap.status_code == 201, snap.text
    httpx.delete(g.url + f"/chromaguard/snapshots/{snap.json()['id']}",
                 headers={"authorization": "Bearer admin-audit-secret"})

    lines = _lines(audit, 8)
    text = audit.read_text()
    assert not any(secret in text for secret in ("admin-audit-secret", "writer-audit-secret", "reader-audit-secret",
                                                 "wrong")), "never a secret"
    by_op = [(line["operation"], line["principal"], line["status"], line["outcome"]) for line in lines]
    assert ("create_collection", "ingest", 200, "ok") in by_op
    assert ("add", "ingest", 201, "ok") in by_op
    assert ("add", "dashboard", 403, "refused") in by_op, "a good token refused: its name, not its secret"
    assert ("add", None, 401, "refused") in by_op
    assert ("list_collections", None, 403, "refused") in by_op, "a read refused is logged too"
    assert ("snapshot", "ops", 201, "ok") in by_op and ("snapshot", "ops", 200, "ok") in by_op
    assert not any(op == "count" for op, *_ in by_op), "reads that were allowed are not audited"
    delete = next(line for line in lines if line["operation"] == "delete")
    assert delete["trace_id"] == TRACE and delete["collection"] == str(col.id)
    assert delete["tenant"] == "default_tenant" and delete["database"] == "default_database"
    assert delete["client"] == "127.0.0.1" and delete["method"] == "POST"
    assert delete["time"].endswith("Z") and len(delete["time"]) == len("2026-12-02T14:00:00.000Z")


def test_sighup_reopens_the_file_after_a_rotation(audited: tuple[Guard, Path]) -> None:
    g, audit = audited
    admin = _client(g.port, "admin-audit-secret")
    admin.create_collection("before-rotation", embedding_function=None)
    assert len(_lines(audit, 1)) == 1
    rotated = audit.with_name("audit.jsonl.1")
    audit.rename(rotated)  # logrotate's default: rename, then tell the service
    assert g.proc is not None
    g.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "audit log reopened" not in g.log:
        assert time.monotonic() < deadline, g.log[-2000:]
        time.sleep(0.05)
    admin.create_collection("after-rotation", embedding_function=None)
    after = _lines(audit, 1)
    assert [line["path"].rsplit("/", 1)[-1] for line in after] == ["collections"]
    assert len(_lines(rotated)) == 1, "the old file keeps what came before"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "small", "64k") as mount:
        yield mount


def test_a_full_disk_drops_counted_lines_and_requests_go_on(small_disk: Path) -> None:
    audit = small_disk / "audit.jsonl"
    with Guard(env={"CHROMAGUARD_AUDIT_LOG": str(audit)}) as g:
        with open(small_disk / "filler", "wb", buffering=0) as fh:  # fill what is left
            try:
                while True:
                    fh.write(b"x" * 4096)
            except OSError:
                pass
        col = chromadb.HttpClient(host="127.0.0.1", port=g.port,
                                  settings=Settings(anonymized_telemetry=False)).create_collection(
            "goes-on", embedding_function=None)
        for i in range(30):
            col.add(ids=[f"r{i}"], embeddings=[[float(i), 1.0]])
        assert col.count() == 30, "every write went through"
        deadline = time.monotonic() + 10
        while True:
            status = httpx.get(g.url + "/chromaguard/status", timeout=30).json()
            if status["audit"]["dropped"] > 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert status["audit"]["dropped"] > 0 and "No space left" in status["audit"]["last_error"]
        assert "audit log: lines are being dropped" in g.log
        metrics = httpx.get(g.url + "/metrics").text
        dropped = [line for line in metrics.splitlines() if line.startswith("chromaguard_audit_lines_dropped_total")]
        assert dropped and float(dropped[0].split()[-1]) > 0, dropped


def test_an_audit_log_that_cannot_be_opened_stops_the_start_with_one_line(tmp_path: Path) -> None:
    result = cli("serve", "--port", str(free_port()), "--ephemeral", timeout=60,
                 CHROMAGUARD_AUDIT_LOG=str(tmp_path / "missing" / "audit.jsonl"))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "CHROMAGUARD_AUDIT_LOG" in lines[0] and "No such file" in lines[0], result.stderr
