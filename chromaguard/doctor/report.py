"""Findings as text for people, JSON for scripts, SARIF 2.1.0 for code-scanning UIs."""

from __future__ import annotations

import json
from pathlib import Path

from .. import __version__
from .model import Finding
from .rules import RULES

_SARIF_LEVEL = {"error": "error", "warning": "warning", "info": "note"}


def text(findings: list[Finding]) -> str:
    if not findings:
        return "no findings"
    lines = []
    for f in findings:
        lines.append(f"{f.location}: {f.rule.id} {f.rule.severity} [{f.service}] {f.message}")
        lines.append(f"    why: {f.why}")
        lines.append(f"    fix: {f.fix}" + ("  (--fix applies it)" if f.fixable else ""))
    counts = {s: sum(1 for f in findings if f.rule.severity == s) for s in ("error", "warning", "info")}
    fixable = sum(1 for f in findings if f.fixable)
    lines.append(f"{len(findings)} finding(s): {counts['error']} error, {counts['warning']} warning, "
                 f"{counts['info']} info; {fixable} fixable with --fix")
    return "\n".join(lines)


def as_json(findings: list[Finding]) -> str:
    return json.dumps({"findings": [f.as_dict() for f in findings]}, indent=2)


def sarif(findings: list[Finding]) -> str:
    used = sorted({f.rule.id for f in findings} | set(RULES))
    index = {rule_id: i for i, rule_id in enumerate(used)}
    rules = [{
        "id": RULES[r].id, "name": RULES[r].name,
        "shortDescription": {"text": RULES[r].summary},
        "fullDescription": {"text": RULES[r].explanation},
        "help": {"text": RULES[r].explanation, "markdown": RULES[r].explanation},
        "defaultConfiguration": {"level": _SARIF_LEVEL[RULES[r].severity]},
    } for r in used]
    results = []
    for f in findings:
        location: dict[str, object] = {"artifactLocation": {"uri": _uri(f.location.file)}}
        if f.location.line:
            location["region"] = {"startLine": f.location.line, "startColumn": max(1, f.location.column)}
        results.append({
            "ruleId": f.rule.id, "ruleIndex": index[f.rule.id], "level": _SARIF_LEVEL[f.rule.severity],
            "message": {"text": f"[{f.service}] {f.message}. Why: {f.why}. Fix: {f.fix}"},
            "locations": [{"physicalLocation": location}],
        })
    log = {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{"tool": {"driver": {"name": "chromaguard-doctor", "version": __version__,
                                      "informationUri": "https://pypi.org/project/chromaguard/", "rules": rules}},
                  "results": results}],
    }
    return json.dumps(log, indent=2)


def _uri(file: str) -> str:
    if "://" in file:
        return file
    path = Path(file)
    return path.as_posix() if not path.is_absolute() else path.as_uri()
