"""Rules and findings: what the doctor knows and what it reports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

SEVERITIES = ("info", "warning", "error")


def at_least(severity: str, level: str) -> bool:
    return SEVERITIES.index(severity) >= SEVERITIES.index(level)


@dataclass(frozen=True)
class Rule:
    id: str
    name: str
    severity: str
    summary: str
    explanation: str
    fixable: bool = False


@dataclass(frozen=True)
class Location:
    file: str
    line: int = 0  # 1-based; 0 when unknown
    column: int = 0

    def __str__(self) -> str:
        if self.line:
            return f"{self.file}:{self.line}:{self.column}"
        return self.file


@dataclass
class Finding:
    rule: Rule
    service: str
    message: str
    location: Location
    why: str
    fix: str
    apply: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    @property
    def fixable(self) -> bool:
        return self.apply is not None

    def as_dict(self) -> dict[str, object]:
        return {"rule": self.rule.id, "name": self.rule.name, "severity": self.rule.severity,
                "service": self.service, "message": self.message, "file": self.location.file,
                "line": self.location.line, "column": self.location.column, "why": self.why, "fix": self.fix,
                "fixable": self.fixable}


class DoctorError(Exception):
    """A file the doctor cannot read as compose: one line, exit code 2."""
