"""``chromaguard doctor``: finds (and fixes) what breaks Chroma and Ollama deployments."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from .checks import examine
from .compose import ComposeFile, default_files, emptied_by, filled, load
from .model import DoctorError, Finding, at_least
from .patch import carry
from .rules import RULES, reference_markdown

__all__ = ["DoctorError", "Finding", "RULES", "Report", "check_files", "apply_fixes", "at_least",
           "reference_markdown", "default_files", "write_atomically"]


@dataclass
class Report:
    files: list[ComposeFile]
    findings: list[Finding]
    relaid: list[Path] = field(default_factory=list)  # fixed files whose own layout could not be kept


def _meaning(text: str) -> object:
    try:
        return YAML(typ="safe", pure=True).load(text)
    except YAMLError:
        return YAMLError


def check_files(paths: list[Path]) -> Report:
    if not paths:
        raise DoctorError("no compose file here (compose.yaml, docker-compose.yml, ...): name the files to check")
    files = [load(path) for path in paths]
    return Report(files, examine(files))


def apply_fixes(report: Report) -> dict[Path, tuple[str, str]]:
    """Apply every safe fix to the loaded documents; returns {path: (before, after)} for changed
    files, ``after`` being the original text changed only where the fixes change it."""
    bases = {file.path: (file.dump(), filled(file)) for file in report.files}
    for finding in report.findings:
        if finding.apply is not None:
            finding.apply()
    changed = {}
    for file in report.files:
        base, envs = bases[file.path]
        emptied_by(file, envs)
        fixed = file.dump()
        after = carry(file.text, base, fixed)
        if _meaning(after) != _meaning(fixed):  # never write a text that means anything else
            after = fixed
            report.relaid.append(file.path)
        if after != file.text:
            changed[file.path] = (file.text, after)
    return changed


def write_atomically(path: Path, text: str) -> None:
    """The fixed file replaces the old one whole (a crash leaves one or the other, never half)."""
    tmp = path.with_name(f".{path.name}.chromaguard-fix")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, path.stat().st_mode & 0o7777)
    os.replace(tmp, path)


def unified_diff(changes: dict[Path, tuple[str, str]]) -> str:
    out: list[str] = []
    for path, (before, after) in changes.items():
        out.extend(difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                        fromfile=f"a/{path}", tofile=f"b/{path}"))
    return "".join(out)
