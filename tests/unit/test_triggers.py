"""Trigger specs: what the decorators and add_*_job methods turn their arguments into."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from library.components.scheduling.task_scheduler._triggers import (
    CronSpec,
    DateSpec,
    IntervalSpec,
    describe_interval,
)

UTC = ZoneInfo("UTC")
NY = ZoneInfo("America/New_York")
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("interval", "text"),
    [
        (timedelta(seconds=30), "Every 30 seconds"),
        (timedelta(seconds=1), "Every second"),
        (timedelta(minutes=1), "Every minute"),
        (timedelta(minutes=5), "Every 5 minutes"),
        (timedelta(hours=1, minutes=30), "Every 1 hour 30 minutes"),
        (timedelta(days=1), "Every day"),
        (timedelta(weeks=2), "Every 2 weeks"),
        (timedelta(seconds=0.25), "Every 0.25 seconds"),
    ],
)
def test_interval_descriptions(interval: timedelta, text: str) -> None:
    assert describe_interval(interval) == text


def test_interval_first_fire_is_one_interval_after_now() -> None:
    spec = IntervalSpec(minutes=5, tz=UTC)
    trigger = spec.build(NOW)
    assert trigger is not None
    assert trigger.next() == NOW + timedelta(minutes=5)
    assert trigger.next() == NOW + timedelta(minutes=10)


def test_interval_future_start_is_the_first_fire() -> None:
    start = NOW + timedelta(hours=2)
    trigger = IntervalSpec(minutes=5, start=start, tz=UTC).build(NOW)
    assert trigger is not None and trigger.next() == start


def test_interval_naive_start_is_read_in_the_configured_zone() -> None:
    spec = IntervalSpec(hours=1, start=datetime(2026, 7, 1, 9, 0), tz=NY)
    assert spec.start == datetime(2026, 7, 1, 9, 0, tzinfo=NY)
    info = spec.info()
    assert info.start is not None and info.start.utcoffset() == timedelta(hours=-4)


def test_interval_past_end_never_fires() -> None:
    spec = IntervalSpec(minutes=5, end=NOW - timedelta(days=1), tz=UTC)
    assert spec.build(NOW) is None


def test_date_spec_in_the_past_is_skipped_unless_allowed() -> None:
    spec = DateSpec(NOW - timedelta(seconds=1), tz=UTC)
    assert spec.build(NOW) is None
    trigger = spec.build(NOW, allow_past=True)
    assert trigger is not None and trigger.next() == NOW - timedelta(seconds=1)


def test_date_spec_info() -> None:
    info = DateSpec(datetime(2026, 12, 31, 23, 59), tz=NY).info()
    assert info.type == "date"
    assert info.run_at == datetime(2026, 12, 31, 23, 59, tzinfo=NY)
    assert info.description == "Once at 2026-12-31 23:59:00 (America/New_York)"


def test_date_spec_rejects_non_datetimes() -> None:
    with pytest.raises(TypeError, match="run time must be a datetime, got '2026-01-01'"):
        DateSpec("2026-01-01", tz=UTC)  # type: ignore[arg-type]


def test_cron_spec_from_expression_and_from_fields() -> None:
    by_expression = CronSpec("0 2 * * *", {}, tz=NY, hash_id="a")
    by_fields = CronSpec(None, {"hour": 2, "minute": 0}, tz=NY, hash_id="b")
    first = by_expression.build(NOW)
    second = by_fields.build(NOW)
    assert first is not None and second is not None
    assert first.next() == second.next() == datetime(2026, 6, 2, 2, 0, tzinfo=NY)
    assert by_expression.info().expression == "0 2 * * *"
    assert by_fields.info().fields == {"hour": "2", "minute": "0"}
    assert by_fields.info().expression is None


def test_cron_spec_needs_exactly_one_form() -> None:
    with pytest.raises(ValueError, match="not both"):
        CronSpec("0 2 * * *", {"hour": 3}, tz=UTC, hash_id="x")
    with pytest.raises(ValueError, match="needs an expression"):
        CronSpec(None, {"hour": None}, tz=UTC, hash_id="x")


def test_cron_spec_validates_at_declaration() -> None:
    with pytest.raises(ValueError, match="minute must be 0-59, got 61"):
        CronSpec("61 * * * *", {}, tz=UTC, hash_id="x")


def test_cron_spec_starts_from_now_or_its_later_start() -> None:
    later = NOW + timedelta(days=10)
    trigger = CronSpec("0 * * * *", {}, start=later, tz=UTC, hash_id="x").build(NOW)
    assert trigger is not None and trigger.next() == later
    trigger = CronSpec("0 * * * *", {}, tz=UTC, hash_id="x").build(NOW)
    assert trigger is not None and trigger.next() == NOW


def test_equal_interval_specs_are_shared_and_others_kept_apart() -> None:
    # Memory per idle schedule: jobs with equal intervals hold one spec; anything that shows
    # differently (the zone of start, its fold, the timezone) keeps its own.
    start = datetime(2026, 7, 1, 9, 0, tzinfo=NY)
    first = IntervalSpec(hours=1, start=start, tz=UTC).shared()
    assert IntervalSpec(minutes=60, start=start, tz=UTC).shared() is first
    assert IntervalSpec(hours=1, start=start.astimezone(UTC), tz=UTC).shared() is not first
    assert IntervalSpec(hours=1, start=start, tz=NY).shared() is not first
    assert IntervalSpec(hours=2, start=start, tz=UTC).shared() is not first
    ambiguous = datetime(2026, 11, 1, 1, 30, tzinfo=NY)
    earlier = IntervalSpec(hours=1, start=ambiguous, tz=NY).shared()
    later = IntervalSpec(hours=1, start=ambiguous.replace(fold=1), tz=NY).shared()
    assert earlier is not later and earlier.to_dict() != later.to_dict()


def test_shared_interval_specs_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from library.components.scheduling.task_scheduler import _triggers

    monkeypatch.setattr(_triggers, "_shared_intervals", {})
    monkeypatch.setattr(_triggers, "SHARED_SPECS_MAX", 3)
    specs = [IntervalSpec(seconds=index + 1, tz=UTC).shared() for index in range(5)]
    assert len(_triggers._shared_intervals) == 3
    assert IntervalSpec(seconds=5, tz=UTC).shared() is not specs[4]
    assert IntervalSpec(seconds=1, tz=UTC).shared() is specs[0]
