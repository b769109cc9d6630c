"""Which backups a retention policy keeps, with restic's meaning of ``--keep-*``.

``last N`` keeps the N newest. ``hourly N`` keeps, for each of the N most recent hours that
have a backup, the newest backup of that hour; likewise daily, weekly (ISO weeks), monthly.
A backup kept by any rule is kept. A policy that keeps nothing is refused: pruning
everything is never what an unset option meant.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..errors import ChromaguardError


class RetentionError(ChromaguardError):
    exit_code = 2


@dataclass(frozen=True)
class Policy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0

    def __post_init__(self) -> None:
        for name in ("last", "hourly", "daily", "weekly", "monthly"):
            if getattr(self, name) < 0:
                raise RetentionError(f"--keep-{name}={getattr(self, name)}: a count cannot be negative")

    @property
    def empty(self) -> bool:
        return not (self.last or self.hourly or self.daily or self.weekly or self.monthly)

    def describe(self) -> str:
        parts = [f"{name} {getattr(self, name)}" for name in ("last", "hourly", "daily", "weekly", "monthly")
                 if getattr(self, name)]
        return ", ".join(parts) or "nothing"


def _bucket(fmt: str) -> Callable[[float], str]:
    return lambda t: time.strftime(fmt, time.gmtime(t))


_RULES: tuple[tuple[str, Callable[[float], str]], ...] = (
    ("hourly", _bucket("%Y-%m-%d %H")),
    ("daily", _bucket("%Y-%m-%d")),
    ("weekly", _bucket("%G-W%V")),
    ("monthly", _bucket("%Y-%m")),
)


def kept(backups: Iterable[tuple[str, float]], policy: Policy) -> dict[str, list[str]]:
    """Each kept backup's id with the rules that keep it (for ``--dry-run`` and the log)."""
    if policy.empty:
        raise RetentionError("a retention policy needs at least one --keep-* option (for example --keep-daily 7); "
                             "without one every backup would go")
    newest_first = sorted(backups, key=lambda b: (b[1], b[0]), reverse=True)
    reasons: dict[str, list[str]] = {}
    for backup_id, _ in newest_first[:policy.last]:
        reasons.setdefault(backup_id, []).append("last")
    for name, bucket_of in _RULES:
        count = getattr(policy, name)
        seen: set[str] = set()
        for backup_id, at in newest_first:
            if len(seen) >= count:
                break
            bucket = bucket_of(at)
            if bucket not in seen:
                seen.add(bucket)
                reasons.setdefault(backup_id, []).append(name)
    return reasons
