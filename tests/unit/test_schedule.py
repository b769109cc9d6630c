"""When scheduled backups are due: cron in UTC, intervals, and a run missed while the service was down."""

from __future__ import annotations

import calendar
import time

import pytest

from chromaguard.backup.schedule import parse_schedule
from chromaguard.config.settings import load_settings
from chromaguard.errors import ConfigError


def at(stamp: str) -> float:
    return float(calendar.timegm(time.strptime(stamp, "%Y-%m-%d %H:%M")))


def test_cron_runs_at_the_next_fire_time_and_catches_up_a_missed_one() -> None:
    daily = parse_schedule("0 3 * * *")
    assert daily is not None and daily.interval is None
    now = at("2026-12-02 10:00")
    assert daily.due_after(at("2026-12-02 03:00"), now) == at("2026-12-03 03:00")  # today's ran
    assert daily.due_after(at("2026-12-01 03:00"), now) == now  # today's 03:00 was missed (service down)
    assert daily.due_after(None, now) == now  # none yet


def test_an_interval_counts_from_the_newest_backup() -> None:
    six = parse_schedule("6h")
    assert six is not None and six.interval == 6 * 3600
    now = at("2026-12-02 10:00")
    assert six.due_after(at("2026-12-02 08:00"), now) == at("2026-12-02 14:00")
    assert six.due_after(at("2026-12-01 08:00"), now) == now  # overdue: at once, and only once
    assert parse_schedule("1d").interval == 86400  # type: ignore[union-attr]


@pytest.mark.parametrize("value, problem", [
    ("0 3 * *", "five fields"), ("61 3 * * *", "five fields"), ("10s", "under a minute"),
    ("sometimes", "not an interval"), ("0 3 * * * *", "five fields"),
])
def test_bad_schedules_say_what_is_wrong(value: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_schedule(value)


def test_off_and_empty_mean_no_schedule() -> None:
    assert parse_schedule("off") is None and parse_schedule("") is None


def test_a_schedule_needs_a_repository_and_the_embedded_engine() -> None:
    with pytest.raises(ConfigError, match="needs a repository"):
        load_settings({}, {"CHROMAGUARD_BACKUP_SCHEDULE": "6h"})
    with pytest.raises(ConfigError, match="embedded engine"):
        load_settings({}, {"CHROMAGUARD_BACKUP_SCHEDULE": "6h", "CHROMAGUARD_BACKUP_REPOSITORY": "/b",
                           "CHROMAGUARD_UPSTREAM": "http://10.0.0.1:8000"})
    with pytest.raises(ConfigError, match="unknown repository scheme 'ftp'"):
        load_settings({}, {"CHROMAGUARD_BACKUP_REPOSITORY": "ftp://x/y"})
    with pytest.raises(ConfigError, match="credentials do not belong"):
        load_settings({}, {"CHROMAGUARD_BACKUP_REPOSITORY": "s3://AKIA:secret@bucket/x"})
    ok = load_settings({}, {"CHROMAGUARD_BACKUP_SCHEDULE": "0 3 * * *", "CHROMAGUARD_BACKUP_REPOSITORY": "s3://b/p",
                            "CHROMAGUARD_BACKUP_MAX_AGE": "26h"})
    assert ok.backup_schedule == "0 3 * * *" and ok.backup_max_age == 26 * 3600


def test_a_repository_url_with_credentials_is_refused_without_showing_them() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({}, {"CHROMAGUARD_BACKUP_REPOSITORY": "s3://AKIAEXAMPLE:s3cr3t@bucket/x"})
    assert "s3cr3t" not in str(caught.value) and "AKIAEXAMPLE" not in str(caught.value)
    assert "s3://bucket/x" in str(caught.value)
