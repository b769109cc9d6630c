"""When scheduled backups run: a cron expression (UTC) or an interval.

``0 3 * * *`` runs at 03:00 UTC each day; ``6h`` runs six hours after the last backup. Either
way a run missed while the service was down is due at once: cron when a fire time passed
after the newest backup, an interval when the newest backup is older than it.
"""

from __future__ import annotations

from dataclasses import dataclass

from croniter import croniter

from ..config.parsing import parse_duration


@dataclass(frozen=True)
class Schedule:
    text: str
    interval: float | None  # seconds, for an interval; None for a cron expression

    def due_after(self, last: float | None, now: float) -> float:
        """When the next backup is due, given the newest one's time (None: there is none)."""
        if last is None:
            return now
        if self.interval is not None:
            return max(now, last + self.interval)
        missed = croniter(self.text, now).get_prev(float)
        if missed > last:  # a fire time passed since the newest backup: it was missed
            return now
        return float(croniter(self.text, now).get_next(float))

    def describe(self) -> str:
        return f"every {self.text}" if self.interval is not None else f"cron {self.text!r} (UTC)"


def parse_schedule(raw: object) -> Schedule | None:
    """``CHROMAGUARD_BACKUP_SCHEDULE``: empty or ``off`` is no schedule."""
    text = " ".join(str(raw).split())
    if text.lower() in ("", "off", "none"):
        return None
    if len(text.split()) == 1:
        try:
            seconds = parse_duration(text)
        except ValueError:
            raise ValueError("not an interval (like 6h, 30m or 1d) nor a cron expression (like 0 3 * * *)") from None
        if seconds < 60:
            raise ValueError("an interval under a minute is not a backup schedule; use at least 1m")
        return Schedule(text, seconds)
    if not croniter.is_valid(text) or len(text.split()) != 5:
        raise ValueError("not a cron expression of five fields (minute hour day month weekday), like 0 3 * * *")
    return Schedule(text, None)
