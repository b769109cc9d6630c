"""The backup writer under a failing store: the store's error is what the caller sees, nothing listed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from chromaguard.backup.repository import Repository
from chromaguard.backup.snapshot import Snapshot, new_manifest
from chromaguard.backup.store import Store, StoreError
from chromaguard.backup.take import snapshot_to


def test_an_upload_failing_mid_stream_is_the_error_reported_and_no_backup_is_listed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The tar's own closing write comes after the failure: a chunk's view of the writer's buffer
    # left alive in the traceback made that write fail with a BufferError that hid the store's.
    repo = Repository.open(str(tmp_path / "repo"), create=True)
    root = tmp_path / "snapshot"
    (root / "data").mkdir(parents=True)
    body = os.urandom(80 << 20)  # five packs: the first uploads are waited for while the stream is written
    (root / "data" / "chroma.sqlite3").write_bytes(body)
    files = [{"path": "data/chroma.sqlite3", "size": len(body), "sha256": hashlib.sha256(body).hexdigest()}]
    snapshot = Snapshot("s", root, new_manifest([], files, None, "offline"))
    real_put = Store.put

    def slow_down(store: Store, key: str, data: bytes, **kwargs: object) -> bool:
        if key.startswith("packs/"):
            raise StoreError("s3://bucket/prefix: upload of a pack failed (503 Slow Down); retry later")
        return real_put(store, key, data, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Store, "put", slow_down)
    with pytest.raises(StoreError, match="503 Slow Down"):
        snapshot_to(repo, snapshot, "backup")
    assert repo.ids() == []


def test_without_fastcdc_s_compiled_module_json_output_stays_json(tmp_path: Path) -> None:
    # Where fastcdc has no wheel (aarch64), pip builds it, without its C part when no compiler is
    # there; its import then prints a line to stdout.
    import json
    import subprocess
    import sys

    Repository.open(str(tmp_path / "repo"), create=True)
    script = ("import sys; sys.modules['fastcdc.fastcdc_cy'] = None; from chromaguard.cli import main; "
              f"main(['backups', 'list', {str(tmp_path / 'repo')!r}, '--json'])")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["backups"] == []
    assert "100 times slower" in done.stderr
