"""The tree is ruff clean, the package mypy clean (settings in pyproject.toml), the Dockerfiles hadolint clean: a
style or typing slip fails here, as any other defect does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          check=False)


def test_ruff_finds_nothing() -> None:
    result = _run("ruff", "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing_in_the_package() -> None:
    result = _run("mypy", "--no-incremental")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_finds_nothing_in_either_dockerfile(tmp_path: Path) -> None:
    """The repository's Dockerfile and the one `chromaguard init` writes, down to hadolint's
    info level (numeric USER, no pipe without pipefail, ...)."""
    from chromaguard.init import dockerfile_text

    written = tmp_path / "Dockerfile"
    written.write_text(dockerfile_text("chromaguard-0.1.0-py3-none-any.whl", "0" * 64))
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run([str(hadolint) if hadolint.exists() else "hadolint", "--no-color",
                             "--failure-threshold", "info", str(ROOT / "deploy" / "Dockerfile"), str(written)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
