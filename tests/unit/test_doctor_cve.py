"""CG210: Chroma's Python server on a chromadb affected by CVE-2026-45829, reachable without an
auth proxy; and no alarm for the servers that are not affected or are fronted."""

from __future__ import annotations

from pathlib import Path

import pytest

from chromaguard.doctor import check_files

PYTHON_1X = """\
services:
  chroma:
    image: python:3.11-slim
    command: sh -c "pip install chromadb==1.0.15 && uvicorn chromadb.app:app --host 0.0.0.0 --port 8000"
{ports}
"""


def _rules(tmp_path: Path, text: str) -> list[tuple[str, str]]:
    path = tmp_path / "compose.yaml"
    path.write_text(text)
    return [(f.rule.id, f.message) for f in check_files([path]).findings]


def _cg210(tmp_path: Path, text: str) -> list[str]:
    return [message for rule, message in _rules(tmp_path, text) if rule == "CG210"]


def test_a_published_python_server_on_1x_is_flagged_with_its_version(tmp_path: Path) -> None:
    found = _cg210(tmp_path, PYTHON_1X.format(ports='    ports: ["8000:8000"]'))
    assert len(found) == 1
    assert "chromadb 1.0.15" in found[0] and "CVE-2026-45829" in found[0] and "published" in found[0]


@pytest.mark.parametrize("pip, version", [
    ("pip install chromadb", "the newest chromadb"),
    ("pip install 'chromadb>=0.6'", "the newest chromadb"),
    ("pip3 install chromadb[server]==1.5.9", "chromadb 1.5.9"),
])
def test_an_unpinned_or_open_ended_install_means_the_newest_release(tmp_path: Path, pip: str, version: str) -> None:
    text = PYTHON_1X.format(ports='    ports: ["8000:8000"]').replace("pip install chromadb==1.0.15", pip)
    found = _cg210(tmp_path, text)
    assert len(found) == 1 and version in found[0], found


def test_not_published_still_reachable_on_its_network_unless_chromaguard_fronts_it(tmp_path: Path) -> None:
    alone = _cg210(tmp_path, PYTHON_1X.format(ports=""))
    assert len(alone) == 1 and "every container on its network" in alone[0]
    fronted = PYTHON_1X.format(ports="") + """\
  guard:
    image: chromaguard:local
    environment:
      CHROMAGUARD_UPSTREAM: http://chroma:8000
    ports: ["8001:8000"]
"""
    assert _cg210(tmp_path, fronted) == []


@pytest.mark.parametrize("text", [
    # 0.x: not affected
    PYTHON_1X.format(ports='    ports: ["8000:8000"]').replace("chromadb==1.0.15", "chromadb==0.6.3"),
    'services:\n  chroma:\n    image: chromadb/chroma:1.5.9\n    ports: ["8000:8000"]\n',  # the Rust server
    'services:\n  chroma:\n    image: chromadb/chroma:0.6.3\n    ports: ["8000:8000"]\n'
    '    command: uvicorn chromadb.app:app --host 0.0.0.0\n',  # the 0.6.3 image's own Python server
])
def test_servers_outside_the_advisory_are_not_flagged(tmp_path: Path, text: str) -> None:
    assert _cg210(tmp_path, text) == []


def test_the_1x_image_made_to_run_the_python_server_is_flagged(tmp_path: Path) -> None:
    text = ('services:\n  chroma:\n    image: chromadb/chroma:1.3.0\n    ports: ["8000:8000"]\n'
            '    entrypoint: ["uvicorn", "chromadb.app:app", "--host", "0.0.0.0"]\n')
    found = _cg210(tmp_path, text)
    assert len(found) == 1 and "chromadb 1.3.0" in found[0] and "image chromadb/chroma:1.3.0" in found[0]
