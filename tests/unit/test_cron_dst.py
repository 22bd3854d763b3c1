"""The DST policy of CronTrigger, with exact expected UTC instants.

Policy (see the docstring of ``_cron``): a job fires at each instant whose local
wall-clock time matches; a matching wall time inside a gap fires once at the end of
the gap; a repeated wall time fires in both passes only when the hour field matches
every hour, otherwise only at its first occurrence.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from library.components.scheduling.task_scheduler._cron import CronTrigger

UTC = timezone.utc


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def fires(expression: str, zone: str, start: str, count: int) -> list[str]:
    """The first ``count`` fire times from ``start`` (UTC), as 'YYYY-MM-DD HH:MM[:SS]'."""
    trigger = CronTrigger(expression, timezone=zone, start_time=_utc(start))
    out = []
    for _ in range(count):
        fire = trigger.next()
        assert fire is not None
        assert fire.tzinfo is UTC
        text = fire.strftime("%Y-%m-%d %H:%M:%S")
        out.append(text[:-3] if text.endswith(":00") else text)
    return out


# --------------------------------------------------------------------- America/New_York
# 2026-03-08 02:00 EST -> 03:00 EDT (07:00Z); 2026-11-01 02:00 EDT -> 01:00 EST (06:00Z)
NY = "America/New_York"


def test_gap_fixed_time_fires_at_end_of_gap() -> None:
    assert fires("30 2 * * *", NY, "2026-03-07 00:00", 3) == [
        "2026-03-07 07:30",  # 02:30 EST
        "2026-03-08 07:00",  # 02:30 does not exist -> 03:00 EDT
        "2026-03-09 06:30",  # 02:30 EDT
    ]


def test_gap_every_15_minutes_fires_once_at_end_of_gap() -> None:
    assert fires("*/15 * * * *", NY, "2026-03-08 06:30", 5) == [
        "2026-03-08 06:30",  # 01:30 EST
        "2026-03-08 06:45",  # 01:45 EST
        "2026-03-08 07:00",  # 02:00, 02:15, 02:30, 02:45 and 03:00 EDT: once
        "2026-03-08 07:15",  # 03:15 EDT
        "2026-03-08 07:30",
    ]


def test_gap_every_two_hours() -> None:
    assert fires("0 */2 * * *", NY, "2026-03-08 04:00", 4) == [
        "2026-03-08 05:00",  # 00:00 EST
        "2026-03-08 07:00",  # 02:00 missing -> 03:00 EDT
        "2026-03-08 08:00",  # 04:00 EDT
        "2026-03-08 10:00",  # 06:00 EDT
    ]


def test_gap_time_and_first_time_after_gap_both_matching_fire_once() -> None:
    assert fires("0 2,3 * * *", NY, "2026-03-08 00:00", 3) == [
        "2026-03-08 07:00",  # 02:00 (missing) and 03:00 EDT are the same instant
        "2026-03-09 06:00",  # 02:00 EDT
        "2026-03-09 07:00",  # 03:00 EDT
    ]


def test_gap_start_time_exactly_at_the_transition_still_fires_the_gap_time() -> None:
    assert fires("30 2 * * *", NY, "2026-03-08 07:00", 1) == ["2026-03-08 07:00"]
    assert fires("30 2 * * *", NY, "2026-03-08 07:00:01", 1) == ["2026-03-09 06:30"]


def test_repeat_every_hour_fires_in_both_passes() -> None:
    assert fires("*/30 * * * *", NY, "2026-11-01 04:00", 8) == [
        "2026-11-01 04:00",  # 00:00 EDT
        "2026-11-01 04:30",  # 00:30 EDT
        "2026-11-01 05:00",  # 01:00 EDT
        "2026-11-01 05:30",  # 01:30 EDT
        "2026-11-01 06:00",  # 01:00 EST
        "2026-11-01 06:30",  # 01:30 EST
        "2026-11-01 07:00",  # 02:00 EST
        "2026-11-01 07:30",
    ]
    assert fires("0 * * * *", NY, "2026-11-01 04:00", 4) == [
        "2026-11-01 04:00",
        "2026-11-01 05:00",
        "2026-11-01 06:00",
        "2026-11-01 07:00",
    ]


@pytest.mark.parametrize("hour", ["*", "*/1", "0-23"])
def test_repeat_hour_field_matching_every_hour_counts_as_unrestricted(hour: str) -> None:
    assert fires(f"45 {hour} * * *", NY, "2026-11-01 05:00", 3) == [
        "2026-11-01 05:45",  # 01:45 EDT
        "2026-11-01 06:45",  # 01:45 EST
        "2026-11-01 07:45",  # 02:45 EST
    ]


def test_repeat_fixed_hour_fires_only_first_occurrence() -> None:
    assert fires("30 1 * * *", NY, "2026-10-31 00:00", 3) == [
        "2026-10-31 05:30",  # 01:30 EDT
        "2026-11-01 05:30",  # 01:30 EDT (first pass only)
        "2026-11-02 06:30",  # 01:30 EST
    ]


@pytest.mark.parametrize("hour", ["1", "1-2", "0,1", "1-23/2", "0-5"])
def test_repeat_restricted_hour_forms_fire_only_first_occurrence(hour: str) -> None:
    out = fires(f"15 {hour} * * *", NY, "2026-11-01 05:00", 2)
    assert out[0] == "2026-11-01 05:15"  # 01:15 EDT
    assert out[1] != "2026-11-01 06:15"  # never 01:15 EST


def test_repeat_hour_range_continues_after_the_repeat() -> None:
    assert fires("0 1-2 * * *", NY, "2026-11-01 00:00", 3) == [
        "2026-11-01 05:00",  # 01:00 EDT
        "2026-11-01 07:00",  # 02:00 EST
        "2026-11-02 06:00",  # 01:00 EST
    ]


def test_repeat_start_time_inside_second_pass() -> None:
    # 06:10Z is 01:10 EST (second pass): 01:30 already fired in the first pass.
    assert fires("30 1 * * *", NY, "2026-11-01 06:10", 1) == ["2026-11-02 06:30"]
    # With every hour matching, the second pass still fires.
    assert fires("*/30 * * * *", NY, "2026-11-01 06:10", 2) == [
        "2026-11-01 06:30",
        "2026-11-01 07:00",
    ]


def test_repeat_start_time_inside_first_pass_every_hour() -> None:
    # 05:40Z is 01:40 EDT: 01:30 EDT is before the start, 01:30 EST is not.
    assert fires("30 * * * *", NY, "2026-11-01 05:40", 2) == [
        "2026-11-01 06:30",
        "2026-11-01 07:30",
    ]


def test_seconds_resolution_gap_and_repeat() -> None:
    assert fires("*/20 * * * * *", NY, "2026-03-08 06:59:20", 4) == [
        "2026-03-08 06:59:20",  # 01:59:20 EST
        "2026-03-08 06:59:40",
        "2026-03-08 07:00",  # the whole missing hour, once
        "2026-03-08 07:00:20",  # 03:00:20 EDT
    ]
    assert fires("0 30 2 * * *", NY, "2026-03-08 00:00", 2) == [
        "2026-03-08 07:00",
        "2026-03-09 06:30",
    ]
    assert fires("*/20 * * * * *", NY, "2026-11-01 05:59:20", 5) == [
        "2026-11-01 05:59:20",  # 01:59:20 EDT
        "2026-11-01 05:59:40",
        "2026-11-01 06:00",  # 01:00:00 EST: second pass
        "2026-11-01 06:00:20",
        "2026-11-01 06:00:40",
    ]
    assert fires("30 30 1 * * *", NY, "2026-11-01 00:00", 2) == [
        "2026-11-01 05:30:30",  # 01:30:30 EDT only
        "2026-11-02 06:30:30",
    ]


# ------------------------------------------------------------------------ Europe/London
# 2026-03-29 01:00 GMT -> 02:00 BST (01:00Z); 2026-10-25 02:00 BST -> 01:00 GMT (01:00Z)
LONDON = "Europe/London"


def test_london_gap_and_repeat() -> None:
    assert fires("30 1 * * *", LONDON, "2026-03-28 00:00", 3) == [
        "2026-03-28 01:30",  # 01:30 GMT
        "2026-03-29 01:00",  # 01:30 missing -> 02:00 BST
        "2026-03-30 00:30",  # 01:30 BST
    ]
    assert fires("30 1 * * *", LONDON, "2026-10-24 00:00", 3) == [
        "2026-10-24 00:30",  # 01:30 BST
        "2026-10-25 00:30",  # 01:30 BST, first occurrence only
        "2026-10-26 01:30",  # 01:30 GMT
    ]
    assert fires("*/30 * * * *", LONDON, "2026-10-24 23:30", 6) == [
        "2026-10-24 23:30",  # 00:30 BST
        "2026-10-25 00:00",  # 01:00 BST
        "2026-10-25 00:30",  # 01:30 BST
        "2026-10-25 01:00",  # 01:00 GMT
        "2026-10-25 01:30",  # 01:30 GMT
        "2026-10-25 02:00",  # 02:00 GMT
    ]


# ------------------------------------------------------------------ Australia/Lord_Howe
# 30-minute shifts. 2026-04-05 02:00 +11 -> 01:30 +10:30 (2026-04-04 15:00Z);
# 2026-10-04 02:00 +10:30 -> 02:30 +11 (2026-10-03 15:30Z).
LORD_HOWE = "Australia/Lord_Howe"


def test_lord_howe_half_hour_repeat() -> None:
    assert fires("*/15 * * * *", LORD_HOWE, "2026-04-04 14:00", 8) == [
        "2026-04-04 14:00",  # 01:00 +11
        "2026-04-04 14:15",  # 01:15 +11
        "2026-04-04 14:30",  # 01:30 +11
        "2026-04-04 14:45",  # 01:45 +11
        "2026-04-04 15:00",  # 01:30 +10:30 (second pass)
        "2026-04-04 15:15",  # 01:45 +10:30
        "2026-04-04 15:30",  # 02:00 +10:30
        "2026-04-04 15:45",
    ]
    assert fires("45 1 * * *", LORD_HOWE, "2026-04-03 00:00", 3) == [
        "2026-04-03 14:45",  # 01:45 +11
        "2026-04-04 14:45",  # 01:45 +11, first occurrence only
        "2026-04-05 15:15",  # 01:45 +10:30
    ]


def test_lord_howe_half_hour_gap() -> None:
    assert fires("15 2 * * *", LORD_HOWE, "2026-10-02 00:00", 3) == [
        "2026-10-02 15:45",  # 02:15 +10:30
        "2026-10-03 15:30",  # 02:15 missing -> 02:30 +11
        "2026-10-04 15:15",  # 02:15 +11
    ]
    assert fires("*/15 * * * *", LORD_HOWE, "2026-10-03 15:00", 5) == [
        "2026-10-03 15:00",  # 01:30 +10:30
        "2026-10-03 15:15",  # 01:45 +10:30
        "2026-10-03 15:30",  # 02:00, 02:15 missing and 02:30 +11: once
        "2026-10-03 15:45",  # 02:45 +11
        "2026-10-03 16:00",
    ]


# ------------------------------------------------- transitions at midnight (local day)
SANTIAGO = "America/Santiago"  # 2026-09-06 00:00 -04 -> 01:00 -03 (04:00Z)
HAVANA = "America/Havana"  # 2026-03-08 00:00 CST -> 01:00 CDT (05:00Z)


def test_santiago_day_starts_at_one_on_spring_forward() -> None:
    assert fires("0 0 * * *", SANTIAGO, "2026-09-05 00:00", 3) == [
        "2026-09-05 04:00",  # 00:00 -04
        "2026-09-06 04:00",  # 00:00 missing -> 01:00 -03
        "2026-09-07 03:00",  # 00:00 -03
    ]


def test_santiago_repeat_of_the_last_hour_of_the_day() -> None:
    # 2026-04-05 00:00 -03 -> 2026-04-04 23:00 -04 (03:00Z): 23:00-23:59 repeat.
    assert fires("30 23 * * *", SANTIAGO, "2026-04-04 12:00", 2) == [
        "2026-04-05 02:30",  # 23:30 -03, first occurrence only
        "2026-04-06 03:30",  # 23:30 -04
    ]
    assert fires("*/30 * * * *", SANTIAGO, "2026-04-05 02:00", 5) == [
        "2026-04-05 02:00",  # 23:00 -03
        "2026-04-05 02:30",  # 23:30 -03
        "2026-04-05 03:00",  # 23:00 -04
        "2026-04-05 03:30",  # 23:30 -04
        "2026-04-05 04:00",  # 00:00 -04 (April 5th)
    ]
    assert fires("0 0 * * *", SANTIAGO, "2026-04-04 00:00", 2) == [
        "2026-04-04 03:00",
        "2026-04-05 04:00",
    ]


def test_havana_midnight_gap() -> None:
    assert fires("0 0 * * *", HAVANA, "2026-03-07 00:00", 3) == [
        "2026-03-07 05:00",  # 00:00 CST
        "2026-03-08 05:00",  # 00:00 missing -> 01:00 CDT
        "2026-03-09 04:00",  # 00:00 CDT
    ]


# ------------------------------------- Europe/Moscow: standard offset changed in history
MOSCOW = "Europe/Moscow"


def test_moscow_2014_permanent_fall_back() -> None:
    # 2014-10-26 02:00 +04 -> 01:00 +03 for good (2014-10-25 22:00Z).
    assert fires("30 1 * * *", MOSCOW, "2014-10-24 00:00", 3) == [
        "2014-10-24 21:30",  # 01:30 +04
        "2014-10-25 21:30",  # 01:30 +04, first occurrence only
        "2014-10-26 22:30",  # 01:30 +03
    ]
    assert fires("*/30 * * * *", MOSCOW, "2014-10-25 20:30", 6) == [
        "2014-10-25 20:30",  # 00:30 +04
        "2014-10-25 21:00",  # 01:00 +04
        "2014-10-25 21:30",  # 01:30 +04
        "2014-10-25 22:00",  # 01:00 +03
        "2014-10-25 22:30",  # 01:30 +03
        "2014-10-25 23:00",  # 02:00 +03
    ]


def test_moscow_2011_permanent_spring_forward() -> None:
    # 2011-03-27 02:00 +03 -> 03:00 +04 for good (2011-03-26 23:00Z).
    assert fires("30 2 * * *", MOSCOW, "2011-03-25 00:00", 3) == [
        "2011-03-25 23:30",  # 02:30 +03
        "2011-03-26 23:00",  # 02:30 missing -> 03:00 +04
        "2011-03-27 22:30",  # 02:30 +04
    ]


# ------------------------------------------------------------------ general properties


def test_fire_times_are_aware_utc_and_strictly_increasing_across_transitions() -> None:
    trigger = CronTrigger("*/10 * * * *", timezone=LORD_HOWE, start_time=_utc("2026-04-04 12:00"))
    previous = None
    for _ in range(60):
        fire = trigger.next()
        assert fire is not None and fire.tzinfo is UTC
        if previous is not None:
            assert fire - previous == (fire - previous).__class__(minutes=10)
        previous = fire


def test_deepcopy_preview_across_a_repeat_does_not_disturb_the_original() -> None:
    import copy

    trigger = CronTrigger("*/30 * * * *", timezone=NY, start_time=_utc("2026-11-01 05:00"))
    assert trigger.next() == _utc("2026-11-01 05:00")
    preview = copy.deepcopy(trigger)
    assert [preview.next() for _ in range(3)] == [
        _utc("2026-11-01 05:30"),
        _utc("2026-11-01 06:00"),
        _utc("2026-11-01 06:30"),
    ]
    assert trigger.next() == _utc("2026-11-01 05:30")
