"""``chromaguard doctor``: finds (and fixes) what breaks Chroma and Ollama deployments."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from .checks import examine
from .compose import ComposeFile, default_files, load
from .model import DoctorError, Finding, at_least
from .rules import RULES, reference_markdown

__all__ = ["DoctorError", "Finding", "RULES", "Report", "check_files", "apply_fixes", "at_least",
           "reference_markdown", "default_files"]


@dataclass
class Report:
    files: list[ComposeFile]
    findings: list[Finding]


def check_files(paths: list[Path]) -> Report:
    if not paths:
        raise DoctorError("no compose file here (compose.yaml, docker-compose.yml, ...): name the files to check")
    files = [load(path) for path in paths]
    return Report(files, examine(files))


def apply_fixes(report: Report) -> dict[Path, tuple[str, str]]:
    """Apply every safe fix to the loaded documents; returns {path: (before, after)} for changed files."""
    for finding in report.findings:
        if finding.apply is not None:
            finding.apply()
    changed = {}
    for file in report.files:
        after = file.dump()
        if after != file.text:
            changed[file.path] = (file.text, after)
    return changed


def unified_diff(changes: dict[Path, tuple[str, str]]) -> str:
    out = []
    for path, (before, after) in changes.items():
        out.extend(difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                        fromfile=f"a/{path}", tofile=f"b/{path}"))
    return "".join(out)
