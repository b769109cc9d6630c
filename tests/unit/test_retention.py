"""Retention with restic's meaning of --keep-*: a table of backups and what each policy keeps."""

from __future__ import annotations

import calendar
import time

import pytest

from chromaguard.backup.retention import Policy, RetentionError, kept


def at(stamp: str) -> float:
    return float(calendar.timegm(time.strptime(stamp, "%Y-%m-%d %H:%M")))


# Three a day at 01:00, 09:00 and 17:00 for 40 days from 2026-10-01 (a Thursday): 120 backups.
BACKUPS = [(f"b{d:02d}-{h:02d}", at(f"2026-10-01 {h:02d}:00") + d * 86400) for d in range(40) for h in (1, 9, 17)]


def ids(found: dict[str, list[str]]) -> list[str]:
    return sorted(found)


def test_keep_last_keeps_the_newest_n() -> None:
    assert ids(kept(BACKUPS, Policy(last=3))) == ["b39-01", "b39-09", "b39-17"]


def test_keep_daily_keeps_the_newest_of_each_of_the_last_n_days_that_have_one() -> None:
    assert ids(kept(BACKUPS, Policy(daily=3))) == ["b37-17", "b38-17", "b39-17"]
    gappy = [b for b in BACKUPS if not b[0].startswith(("b38", "b37"))]  # two days without a backup
    assert ids(kept(gappy, Policy(daily=2))) == ["b36-17", "b39-17"]  # days with backups count, not calendar days


def test_keep_hourly_counts_hours_that_have_a_backup() -> None:
    assert ids(kept(BACKUPS, Policy(hourly=4))) == ["b38-17", "b39-01", "b39-09", "b39-17"]


def test_keep_weekly_uses_iso_weeks_and_monthly_calendar_months() -> None:
    # 2026-11-09 (day 39) is a Monday: the newest backup is alone in its ISO week.
    weekly = ids(kept(BACKUPS, Policy(weekly=2)))
    assert weekly == ["b38-17", "b39-17"]
    monthly = ids(kept(BACKUPS, Policy(monthly=3)))
    assert monthly == ["b30-17", "b39-17"]  # October's last (day 30 = 10-31) and November's newest; no September


def test_rules_add_up_and_say_why() -> None:
    found = kept(BACKUPS, Policy(last=1, daily=2, monthly=2))
    assert found["b39-17"] == ["last", "daily", "monthly"]
    assert found["b38-17"] == ["daily"] and found["b30-17"] == ["monthly"]
    assert len(found) == 3


def test_a_policy_that_keeps_nothing_is_refused() -> None:
    with pytest.raises(RetentionError, match="at least one --keep-"):
        kept(BACKUPS, Policy())
    with pytest.raises(RetentionError, match="cannot be negative"):
        Policy(daily=-1)


def test_ties_in_time_keep_one_deterministically() -> None:
    same = [("a", 1000.0), ("b", 1000.0)]
    assert ids(kept(same, Policy(last=1))) == ids(kept(list(reversed(same)), Policy(last=1)))
