"""CronTrigger: syntax, validation messages, fields form, serialization, describe()."""

from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from apscheduler.serializers.json import JSONSerializer
from apscheduler.triggers.cron import CronTrigger as APSCronTrigger

from library.components.scheduling.task_scheduler._cron import CronTrigger

UTC = timezone.utc
START = datetime(2026, 1, 1, tzinfo=UTC)  # a Thursday


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def take(trigger: CronTrigger, count: int) -> list[datetime | None]:
    return [trigger.next() for _ in range(count)]


def first(expression: str, count: int = 3, **kwargs: Any) -> list[str]:
    kwargs.setdefault("start_time", START)
    trigger = CronTrigger(expression, **kwargs)
    return [f.strftime("%Y-%m-%d %H:%M:%S") for f in take(trigger, count) if f is not None]


def first_fields(fields: dict[str, Any], count: int = 3, **kwargs: Any) -> list[str]:
    kwargs.setdefault("start_time", START)
    trigger = CronTrigger(fields=fields, **kwargs)
    return [f.strftime("%Y-%m-%d %H:%M:%S") for f in take(trigger, count) if f is not None]


def error(*args: Any, **kwargs: Any) -> str:
    kwargs.setdefault("start_time", START)
    with pytest.raises(ValueError) as info:
        CronTrigger(*args, **kwargs)
    return str(info.value)


# ----------------------------------------------------------------------------- syntax


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("*/20 * * * *", ["2026-01-01 00:00:00", "2026-01-01 00:20:00", "2026-01-01 00:40:00"]),
        ("5,35 9-10 * * *", ["2026-01-01 09:05:00", "2026-01-01 09:35:00", "2026-01-01 10:05:00"]),
        ("0 12 * jan,mar *", ["2026-01-01 12:00:00", "2026-01-02 12:00:00", "2026-01-03 12:00:00"]),
        ("0 12 1 feb-apr *", ["2026-02-01 12:00:00", "2026-03-01 12:00:00", "2026-04-01 12:00:00"]),
        ("0 8 * * MON-FRI", ["2026-01-01 08:00:00", "2026-01-02 08:00:00", "2026-01-05 08:00:00"]),
        ("0 8 * * 1-5/2", ["2026-01-02 08:00:00", "2026-01-05 08:00:00", "2026-01-07 08:00:00"]),
        ("0 8 * * fri-mon", ["2026-01-02 08:00:00", "2026-01-03 08:00:00", "2026-01-04 08:00:00"]),
        ("0 22-2 1 1 *", ["2026-01-01 00:00:00", "2026-01-01 01:00:00", "2026-01-01 02:00:00"]),
        ("10/25 0 1 1 *", ["2026-01-01 00:10:00", "2026-01-01 00:35:00", "2027-01-01 00:10:00"]),
        ("5-5 0 1 1 *", ["2026-01-01 00:05:00", "2027-01-01 00:05:00", "2028-01-01 00:05:00"]),
        ("59/15 0 1 1 *", ["2026-01-01 00:59:00", "2027-01-01 00:59:00", "2028-01-01 00:59:00"]),
        ("0 0 L * *", ["2026-01-31 00:00:00", "2026-02-28 00:00:00", "2026-03-31 00:00:00"]),
        ("0 0 L 2 *", ["2026-02-28 00:00:00", "2027-02-28 00:00:00", "2028-02-29 00:00:00"]),
        ("0 0 1,L * *", ["2026-01-01 00:00:00", "2026-01-31 00:00:00", "2026-02-01 00:00:00"]),
        ("0 0 1W * *", ["2026-01-01 00:00:00", "2026-02-02 00:00:00", "2026-03-02 00:00:00"]),
        ("0 0 1W 8 *", ["2026-08-03 00:00:00", "2027-08-02 00:00:00", "2028-08-01 00:00:00"]),
        ("0 0 15W 2,8 *", ["2026-02-16 00:00:00", "2026-08-14 00:00:00", "2027-02-15 00:00:00"]),
        ("0 0 * * 5#2", ["2026-01-09 00:00:00", "2026-02-13 00:00:00", "2026-03-13 00:00:00"]),
        ("0 0 * * fri#2", ["2026-01-09 00:00:00", "2026-02-13 00:00:00", "2026-03-13 00:00:00"]),
        ("0 0 * * 1#5", ["2026-03-30 00:00:00", "2026-06-29 00:00:00", "2026-08-31 00:00:00"]),
        ("0 0 * * L5", ["2026-01-30 00:00:00", "2026-02-27 00:00:00", "2026-03-27 00:00:00"]),
        ("0 0 * * 5L", ["2026-01-30 00:00:00", "2026-02-27 00:00:00", "2026-03-27 00:00:00"]),
        ("0 0 * * FRIL", ["2026-01-30 00:00:00", "2026-02-27 00:00:00", "2026-03-27 00:00:00"]),
        ("0 0 * * 1,2#3", ["2026-01-05 00:00:00", "2026-01-12 00:00:00", "2026-01-19 00:00:00"]),
        ("0 0 ? * 1", ["2026-01-05 00:00:00", "2026-01-12 00:00:00", "2026-01-19 00:00:00"]),
        ("0 0 1 * ?", ["2026-01-01 00:00:00", "2026-02-01 00:00:00", "2026-03-01 00:00:00"]),
        # seconds first
        ("30 0 9 * * *", ["2026-01-01 09:00:30", "2026-01-02 09:00:30", "2026-01-03 09:00:30"]),
        ("*/15 * * * * *", ["2026-01-01 00:00:00", "2026-01-01 00:00:15", "2026-01-01 00:00:30"]),
        ("0 0 0 L * *", ["2026-01-31 00:00:00", "2026-02-28 00:00:00", "2026-03-31 00:00:00"]),
    ],
)
def test_expression_syntax(expression: str, expected: list[str]) -> None:
    assert first(expression) == expected


def test_sunday_is_0_or_7() -> None:
    sundays = ["2026-01-04 00:00:00", "2026-01-11 00:00:00", "2026-01-18 00:00:00"]
    assert first("0 0 * * 0") == first("0 0 * * 7") == first("0 0 * * sun") == sundays
    assert first("0 0 * * 5-7") == ["2026-01-02 00:00:00", "2026-01-03 00:00:00", sundays[0]]


@pytest.mark.parametrize(
    ("macro", "expected"),
    [
        ("@yearly", ["2026-01-01 00:00:00", "2027-01-01 00:00:00"]),
        ("@annually", ["2026-01-01 00:00:00", "2027-01-01 00:00:00"]),
        ("@monthly", ["2026-01-01 00:00:00", "2026-02-01 00:00:00"]),
        ("@weekly", ["2026-01-04 00:00:00", "2026-01-11 00:00:00"]),
        ("@daily", ["2026-01-01 00:00:00", "2026-01-02 00:00:00"]),
        ("@midnight", ["2026-01-01 00:00:00", "2026-01-02 00:00:00"]),
        ("@hourly", ["2026-01-01 00:00:00", "2026-01-01 01:00:00"]),
        ("@Daily", ["2026-01-01 00:00:00", "2026-01-02 00:00:00"]),
    ],
)
def test_macros_are_never_hashed(macro: str, expected: list[str]) -> None:
    # croniter would hash a macro when given a hash_id; the trigger never does.
    assert first(macro, 2, hash_id="job-1") == expected
    assert first(macro, 2) == expected


def test_day_and_day_of_week_are_ored_in_an_expression() -> None:
    # the 13th OR any Friday
    assert first("0 0 13 * 5", 4) == [
        "2026-01-02 00:00:00",
        "2026-01-09 00:00:00",
        "2026-01-13 00:00:00",
        "2026-01-16 00:00:00",
    ]
    # also with '#', 'W' and 'L' (croniter alone would intersect these)
    assert first("0 0 15 * 1#2", 4) == [
        "2026-01-12 00:00:00",
        "2026-01-15 00:00:00",
        "2026-02-09 00:00:00",
        "2026-02-15 00:00:00",
    ]
    assert first("0 0 15W * 1", 4) == [
        "2026-01-05 00:00:00",
        "2026-01-12 00:00:00",
        "2026-01-15 00:00:00",
        "2026-01-19 00:00:00",
    ]
    assert first("0 0 L * 5L", 3) == [
        "2026-01-30 00:00:00",
        "2026-01-31 00:00:00",
        "2026-02-27 00:00:00",
    ]
    # an impossible day side does not hide the day_of_week side
    assert first("0 0 31 2 mon", 2) == ["2026-02-02 00:00:00", "2026-02-09 00:00:00"]


def test_day_and_day_of_week_are_anded_in_the_fields_form() -> None:
    # Friday the 13th only (APScheduler semantics)
    assert first_fields({"day": 13, "day_of_week": "fri"}, 3) == [
        "2026-02-13 00:00:00",
        "2026-03-13 00:00:00",
        "2026-11-13 00:00:00",
    ]


def test_expression_attribute_is_whitespace_normalized_and_keeps_macros() -> None:
    trigger = CronTrigger("  */5   *  * * *  ", start_time=START)
    assert trigger.expression == "*/5 * * * *"
    assert CronTrigger("@Daily", start_time=START).expression == "@Daily"
    assert CronTrigger("0 0 * * 5L", start_time=START).expression == "0 0 * * 5L"
    assert trigger.timezone == "UTC"
    assert trigger.fields_dict() is None


# ----------------------------------------------------------------------------- hashing


def test_hashed_fields_are_stable_per_id_and_spread_across_ids() -> None:
    a1 = first("H H * * *", 2, hash_id="job-a")
    a2 = first("H H * * *", 2, hash_id="job-a")
    assert a1 == a2
    spread = {first("H H * * *", 1, hash_id=f"job-{i}")[0] for i in range(20)}
    assert len(spread) > 10
    # H/15 keeps the step, with a hashed offset inside the first period
    fires = [_utc(s) for s in first("H/15 * * * *", 4, hash_id="job-a")]
    assert {f - fires[0] for f in fires} == {timedelta(minutes=m) for m in (0, 15, 30, 45)}
    assert fires[0].minute < 15
    # H(a-b) stays within its range
    for i in range(30):
        (fire,) = first("0 H(2-4) * * *", 1, hash_id=f"job-{i}")
        assert fire[11:13] in {"02", "03", "04"}


def test_hashed_fields_are_stable_across_processes() -> None:
    code = (
        "from datetime import datetime, timezone\n"
        "from library.components.scheduling.task_scheduler._cron import CronTrigger\n"
        "t = CronTrigger('H H(0-5) * * H', hash_id='nightly-report', "
        "start_time=datetime(2026, 1, 1, tzinfo=timezone.utc))\n"
        "print(t.next().isoformat())\n"
    )
    src = Path(__file__).resolve().parents[2] / "src"  # tests/unit/ -> the checkout
    assert (src / "library").is_dir(), src
    outputs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(src)}
        result = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        outputs.add(result.stdout.strip())
    local = CronTrigger("H H(0-5) * * H", hash_id="nightly-report", start_time=START)
    assert outputs == {local.next().isoformat()}  # type: ignore[union-attr]


def test_hash_requires_hash_id() -> None:
    assert error("H 2 * * *") == (
        "invalid cron expression 'H 2 * * *': H (hashed) fields need a hash_id "
        "(normally the job id)"
    )


def test_hash_id_is_ignored_without_h() -> None:
    assert first("30 2 * * *", 1, hash_id="x") == first("30 2 * * *", 1)


# -------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("61 * * * *", "minute must be 0-59, got 61"),
        ("* 24 * * *", "hour must be 0-23, got 24"),
        ("* * 0 * *", "day must be 1-31, got 0"),
        ("* * 32 * *", "day must be 1-31, got 32"),
        ("* * * 13 *", "month must be 1-12 or jan-dec, got 13"),
        ("* * * foo *", "month must be 1-12 or jan-dec, got 'foo'"),
        ("* * * * 8", "day_of_week must be 0-7 (0 or 7 = Sunday) or sun-sat, got 8"),
        ("* * * * mon-xyz", "day_of_week must be 0-7 (0 or 7 = Sunday) or sun-sat, got 'xyz'"),
        ("60 * * * * *", "second must be 0-59, got 60"),
        ("*/0 * * * *", "minute step must be a positive integer, got '*/0'"),
        ("1-5/x * * * *", "minute step must be a positive integer, got '1-5/x'"),
        ("1,,2 * * * *", "minute has an empty list item in '1,,2'"),
        ("50-10/5 * * * *", "minute range '50-10/5' wraps around and cannot have a step"),
        ("* ? * * *", "'?' is only allowed in day or day_of_week, got it in hour"),
        ("* * 1,? * *", "'?' must be alone in day or day_of_week, got '1,?'"),
        (
            "* * 1,15W * *",
            "day 'W' (nearest weekday) must be the only value in the field, got '1,15w'",
        ),
        ("* * 32W * *", "day must be 1-31, got 32"),
        (
            "* * LW * *",
            "day must be 1-31, 'L' (last day) or 'nW' (nearest weekday), got 'lw'",
        ),
        (
            "* * * * 1#6",
            "day_of_week '#' must be followed by 1-5 (nth weekday of the month), got '1#6'",
        ),
        (
            "* * * * L",
            "day_of_week 'L' needs a weekday (e.g. 'L5' or '5L' for the last Friday of the "
            "month), got 'l'",
        ),
        ("* * 5#2 * *", "'#' is only allowed in day_of_week, got '5#2'"),
        (
            "H,5 * * * *",
            "H (hashed) must be the whole minute field, e.g. 'H', 'H/15', 'H(0-29)' or "
            "'H(0-29)/10', got 'h,5'",
        ),
        (
            "H(5-3) * * * *",
            "minute H range must be within 0-59 with start < end, got 'h(5-3)'",
        ),
        ("R * * * *", "minute must be 0-59, got 'r'"),
        (
            "* * * * * * *",
            "expected 5 fields (minute hour day month day_of_week) or 6 with seconds first "
            "(second minute hour day month day_of_week), got 7",
        ),
        (
            "* * * *",
            "expected 5 fields (minute hour day month day_of_week) or 6 with seconds first "
            "(second minute hour day month day_of_week), got 4",
        ),
        (
            "@reboot",
            "unknown macro, expected one of @yearly, @annually, @monthly, @weekly, @daily, "
            "@midnight, @hourly",
        ),
        ("0 0 30 2 *", "never fires (day 30 does not occur in month 2)"),
        ("0 0 31 4 *", "never fires (day 31 does not occur in month 4)"),
        ("0 0 31 apr,jun,sep,nov ?", "never fires (day 31 does not occur in month 4,6,9,11)"),
        ("0 0 0 30,31 2 *", "never fires (day 30,31 does not occur in month 2)"),
    ],
)
def test_invalid_expressions_name_the_field_and_what_is_allowed(
    expression: str, message: str
) -> None:
    assert error(expression, hash_id="job") == f"invalid cron expression {expression!r}: {message}"


SECONDS_FIRST = (
    "years are not a field: {year!r} looks like a year, but a 6-field expression has the "
    "seconds FIRST (second minute hour day month day_of_week); to limit the years, use cron "
    "fields instead"
)


@pytest.mark.parametrize(
    ("expression", "fields"),
    [
        ("0 0 1 1 * 2026", "minute='0', hour='0', day='1', month='1', year='2026'"),
        ("0 0 1 1 * 2026/2", "minute='0', hour='0', day='1', month='1', year='2026/2'"),
        (
            "*/5 9-17 * * ? 2026-2030",
            "minute='*/5', hour='9-17', day='*', month='*', year='2026-2030'",
        ),
        (
            "0 12 ? jan,jul * 2026,2028",
            "minute='0', hour='12', day='*', month='jan,jul', year='2026,2028'",
        ),
    ],
)
def test_a_trailing_year_says_seconds_come_first_and_spells_out_the_fields(
    expression: str, fields: str
) -> None:
    # Before: "day_of_week must be 0-7 (0 or 7 = Sunday) or sun-sat, got 2026".
    year = expression.split()[-1]
    message = error(expression)
    assert message == (
        f"invalid cron expression {expression!r}: {SECONDS_FIRST.format(year=year)}: {fields}"
    )
    # The fields it names are valid, and fire where the expression meant to.
    spelled = dict(item.split("=") for item in fields.split(", "))
    given = {name: value.strip("'") for name, value in spelled.items()}
    by_fields = CronTrigger(fields=given, timezone="UTC", start_time=START)
    by_expression = CronTrigger(" ".join(expression.split()[:5]), timezone="UTC", start_time=START)
    assert by_fields.next() == by_expression.next()


@pytest.mark.parametrize(
    "expression", ["0 0 1 1 mon 2026", "0 0 L * * 2026", "0 0 15W * * 2026", "H 0 * * * 2027"]
)
def test_a_trailing_year_that_cannot_be_spelled_out_still_says_why(expression: str) -> None:
    # A restricted day_of_week means something else in the fields form (ANDed with day).
    year = expression.split()[-1]
    assert error(expression, hash_id="job") == (
        f"invalid cron expression {expression!r}: {SECONDS_FIRST.format(year=year)}, "
        f"with year={year!r}"
    )


def test_a_quartz_expression_with_a_year_says_years_are_not_a_field() -> None:
    assert error("0 0 12 * * ? 2026") == (
        "invalid cron expression '0 0 12 * * ? 2026': years are not a field: '2026' looks like "
        "a year, but an expression has 5 fields, or 6 with the seconds FIRST (second minute "
        "hour day month day_of_week); to limit the years, use cron fields instead: second='0', "
        "minute='0', hour='12', day='*', month='*', year='2026'"
    )


@pytest.mark.parametrize("expression", ["* * * * * 0", "0 30 9 * * 7", "0 0 0 1 1 *"])
def test_six_fields_ending_in_a_weekday_stay_valid_seconds_first(expression: str) -> None:
    # croniter-style seconds-last "* * * * * 0" is also a valid seconds-first expression.
    assert CronTrigger(expression, timezone="UTC", start_time=START).next() is not None


def test_never_fires_is_detected_quickly() -> None:
    started = time.perf_counter()
    for _ in range(20):
        error("0 0 30 2 *")
        error(fields={"year": "2027,2029", "month": 2, "day": 29})
    assert (time.perf_counter() - started) / 40 < 0.05


def test_february_29th_is_not_never_fires() -> None:
    assert first("0 0 29 2 *", 2) == ["2028-02-29 00:00:00", "2032-02-29 00:00:00"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {},
            "CronTrigger needs exactly one of expression (e.g. '0 2 * * *') or fields "
            "(e.g. {'hour': 2})",
        ),
        ({"expression": "* * * * *", "fields": {"hour": 1}}, "CronTrigger needs exactly one"),
        ({"expression": 5}, "cron expression must be a string, got 5"),
        (
            {"expression": "* * * * *", "timezone": "Mars/Olympus"},
            "unknown time zone 'Mars/Olympus' (expected an IANA name)",
        ),
        (
            {"expression": "* * * * *", "start_time": datetime(2026, 1, 1)},
            "start_time must be timezone-aware",
        ),
        (
            {"expression": "* * * * *", "end_time": datetime(2026, 1, 1)},
            "end_time must be timezone-aware",
        ),
        (
            {"expression": "* * * * *", "start_time": "2026-01-01"},
            "start_time must be a timezone-aware datetime, got '2026-01-01'",
        ),
    ],
)
def test_invalid_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        CronTrigger(**kwargs)
    assert str(info.value).startswith(message)


# -------------------------------------------------------------------------- fields form


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"hour": 2, "minute": 0}, ["2026-01-01 02:00:00", "2026-01-02 02:00:00"]),
        ({"hour": 2}, ["2026-01-01 02:00:00", "2026-01-02 02:00:00"]),
        ({"day_of_week": "mon", "hour": 9}, ["2026-01-05 09:00:00", "2026-01-12 09:00:00"]),
        ({"day": 1, "hour": 0, "minute": 0}, ["2026-01-01 00:00:00", "2026-02-01 00:00:00"]),
        ({"minute": "*/5"}, ["2026-01-01 00:00:00", "2026-01-01 00:05:00"]),
        ({"second": 30}, ["2026-01-01 00:00:30", "2026-01-01 00:01:30"]),
        # month given as the least significant field: day defaults to 1 (APScheduler)
        ({"month": 6}, ["2026-06-01 00:00:00", "2027-06-01 00:00:00"]),
        ({"year": 2027}, ["2027-01-01 00:00:00", None]),
        ({"day": "last"}, ["2026-01-31 00:00:00", "2026-02-28 00:00:00"]),
        ({"day": "last fri", "hour": 17}, ["2026-01-30 17:00:00", "2026-02-27 17:00:00"]),
        ({"day": "2nd fri"}, ["2026-01-09 00:00:00", "2026-02-13 00:00:00"]),
        ({"day": "1st mon,last fri"}, ["2026-01-05 00:00:00", "2026-01-30 00:00:00"]),
        ({"day": "5th mon"}, ["2026-03-30 00:00:00", "2026-06-29 00:00:00"]),
        ({"day_of_week": "0"}, ["2026-01-04 00:00:00", "2026-01-11 00:00:00"]),
        ({"day_of_week": 7}, ["2026-01-04 00:00:00", "2026-01-11 00:00:00"]),
        ({"day_of_week": "sat-mon"}, ["2026-01-03 00:00:00", "2026-01-04 00:00:00"]),
        ({"week": "*", "hour": 3}, ["2026-01-01 03:00:00", "2026-01-02 03:00:00"]),
        (
            {"year": "2026-2027", "month": "feb", "day": "last"},
            ["2026-02-28 00:00:00", "2027-02-28 00:00:00"],
        ),
        ({"hour": None, "minute": 15}, ["2026-01-01 00:15:00", "2026-01-01 01:15:00"]),
    ],
)
def test_fields_form_defaults_and_forms(fields: dict[str, Any], expected: list[str | None]) -> None:
    trigger = CronTrigger(fields=fields, start_time=START)
    got = [None if f is None else f.strftime("%Y-%m-%d %H:%M:%S") for f in take(trigger, 2)]
    assert got == expected


@pytest.mark.parametrize(
    "fields",
    [
        {"hour": 2, "minute": 0},
        {"month": 6},
        {"day": 15},
        {"day_of_week": "mon-fri", "hour": 9, "minute": 30},
        {"day_of_week": "0,6", "hour": "8-10"},
        {"day_of_week": "5-7"},
        {"day_of_week": "sat-mon", "hour": 1},
        {"day": 13, "day_of_week": "fri"},
        {"month": "6", "day": "1-7", "day_of_week": "sun"},
        {"day": "last fri", "hour": 17},
        {"day": "2nd wed,last", "minute": 30},
        {"day": "*/10", "hour": 12},
        {"month": "*/4", "day": "last"},
        {"year": "2027", "month": 3},
        {"second": "*/20", "minute": 5},
        {"minute": "10-50/20"},
        {"day": "5/7", "hour": "*/6"},
    ],
)
def test_fields_form_matches_apscheduler(fields: dict[str, Any]) -> None:
    """Same fire times as APScheduler 4's own CronTrigger for the same fields (UTC)."""
    ours = CronTrigger(fields=fields, start_time=START)
    theirs = APSCronTrigger(**fields, timezone="UTC", start_time=START)
    assert take(ours, 12) == [theirs.next() for _ in range(12)]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"hour": 24}, "invalid cron field hour='24': hour must be 0-23, got 24"),
        (
            {"minute": "*/0"},
            "invalid cron field minute='*/0': minute step must be a positive integer, got '*/0'",
        ),
        (
            {"month": "foo"},
            "invalid cron field month='foo': month must be 1-12 or jan-dec, got 'foo'",
        ),
        (
            {"day": "xth fri"},
            "invalid cron field day='xth fri': day must be 1-31, 'last', "
            "'1st'..'5th' or 'last' followed by a weekday name (e.g. '2nd fri'), got 'xth fri'",
        ),
        (
            {"day": "2nd xyz"},
            "invalid cron field day='2nd xyz': day '2nd xyz' needs a weekday "
            "name (mon-sun), got 'xyz'",
        ),
        ({"hour": "a"}, "invalid cron field hour='a': hour must be 0-23, got 'a'"),
        ({"year": 2150}, "invalid cron field year='2150': year must be 1970-2099, got 2150"),
        (
            {"day_of_week": "*/2"},
            "invalid cron field day_of_week='*/2': steps are not "
            "supported in day_of_week in the fields form",
        ),
        ({"week": 3}, "invalid cron fields (week='3'): week (ISO week number) is not supported"),
        (
            {"foo": 1, "hour": 2},
            "invalid cron fields: unknown field(s) 'foo'; valid fields are "
            "year, month, day, week, day_of_week, hour, minute, second",
        ),
        ({}, "invalid cron fields: give at least one of year"),
        ({"hour": None}, "invalid cron fields: give at least one of year"),
        ({"hour": True}, "invalid cron field hour=True: must be an int or a string"),
        ({"hour": 1.5}, "invalid cron field hour=1.5: must be an int or a string"),
        (
            {"day": 31, "month": "apr"},
            "invalid cron fields (day='31', month='apr'): never "
            "fires (day 31 does not occur in month 4)",
        ),
        (
            {"year": 2027, "month": 2, "day": 29},
            "invalid cron fields (year='2027', month='2', day='29'): never fires in year(s) 2027",
        ),
        (
            {"day": "2nd fri", "day_of_week": "mon"},
            "invalid cron fields (day='2nd fri', "
            "day_of_week='mon'): never fires (day '2nd fri' never falls on day_of_week 'mon')",
        ),
    ],
)
def test_invalid_fields(fields: dict[str, Any], message: str) -> None:
    assert error(fields=fields).startswith(message)


def test_fields_dict_and_expression_of_the_fields_form() -> None:
    trigger = CronTrigger(fields={"day_of_week": "mon", "hour": 9, "year": None}, start_time=START)
    assert trigger.fields_dict() == {"day_of_week": "mon", "hour": "9"}
    assert trigger.expression == "month=* day=* day_of_week=mon hour=9 minute=0 second=0"
    returned = trigger.fields_dict()
    assert returned is not None
    returned["hour"] = "10"  # a copy
    assert trigger.fields_dict() == {"day_of_week": "mon", "hour": "9"}


# ------------------------------------------------------------------- start/end, state


def test_first_fire_is_at_or_after_start_time() -> None:
    assert first("*/5 * * * *", 1, start_time=_utc("2026-01-01 00:05")) == ["2026-01-01 00:05:00"]
    assert first("*/5 * * * *", 1, start_time=_utc("2026-01-01 00:05:00.000001")) == [
        "2026-01-01 00:10:00"
    ]
    other_zone = datetime(2026, 1, 1, 9, 0, tzinfo=ZoneInfo("Asia/Tokyo"))  # 00:00Z
    assert first("0 * * * *", 1, start_time=other_zone) == ["2026-01-01 00:00:00"]


def test_start_time_defaults_to_now() -> None:
    before = datetime.now(UTC)
    fire = CronTrigger("* * * * * *").next()
    assert fire is not None
    assert before - timedelta(seconds=1) <= fire <= before + timedelta(seconds=2)


def test_end_time_is_inclusive_and_then_none_for_good() -> None:
    trigger = CronTrigger("0 * * * *", start_time=START, end_time=_utc("2026-01-01 02:00"))
    assert take(trigger, 5) == [
        _utc("2026-01-01 00:00"),
        _utc("2026-01-01 01:00"),
        _utc("2026-01-01 02:00"),
        None,
        None,
    ]
    assert trigger.end_time == _utc("2026-01-01 02:00")
    assert trigger.start_time == START
    assert trigger.last_fire_time == _utc("2026-01-01 02:00")


def test_exhausted_year_returns_none() -> None:
    trigger = CronTrigger(fields={"year": 2026, "month": 12, "day": 31}, start_time=START)
    assert take(trigger, 2) == [_utc("2026-12-31 00:00"), None]
    late = CronTrigger(fields={"year": 2026}, start_time=_utc("2027-01-01 00:00"))
    assert late.next() is None


def _plain(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return value is None or isinstance(value, (str, int, float, bool))


def test_state_is_plain_data_with_version() -> None:
    trigger = CronTrigger(
        "*/7 * * * *",
        timezone="America/New_York",
        start_time=START,
        end_time=_utc("2027-01-01 00:00"),
        hash_id="job-1",
    )
    trigger.next()
    state = trigger.__getstate__()
    assert _plain(state)
    assert state == {
        "version": 1,
        "expression": "*/7 * * * *",
        "fields": None,
        "timezone": "America/New_York",
        "start_time": "2026-01-01T00:00:00+00:00",
        "end_time": "2027-01-01T00:00:00+00:00",
        "hash_id": "job-1",
        "last_fire_time": "2026-01-01T00:00:00+00:00",
    }
    fields_state = CronTrigger(fields={"hour": 3}, start_time=START).__getstate__()
    assert fields_state["fields"] == {"hour": "3"} and fields_state["expression"] is None


@pytest.mark.parametrize(
    "make",
    [
        lambda: CronTrigger("*/7 * * * *", timezone="America/New_York", start_time=START),
        lambda: CronTrigger(
            "H/10 H * * 1,3#2", hash_id="job", timezone="Europe/London", start_time=START
        ),
        lambda: CronTrigger(
            fields={"day": "last fri,1", "hour": "*/6"},
            start_time=START,
            end_time=_utc("2026-09-01 00:00"),
        ),
    ],
)
def test_state_round_trips_continue_the_same_sequence(make: Any) -> None:
    reference = make()
    trigger = make()
    for _ in range(5):
        trigger.next()
    expected = take(reference, 15)[5:]

    rebuilt = CronTrigger.__new__(CronTrigger)  # as APScheduler's serializers do
    rebuilt.__setstate__(json.loads(json.dumps(trigger.__getstate__())))
    assert take(rebuilt, 10) == expected

    serializer = JSONSerializer()
    restored = serializer.deserialize(serializer.serialize(trigger))
    assert isinstance(restored, CronTrigger)
    assert take(restored, 10) == expected

    assert take(pickle.loads(pickle.dumps(trigger)), 10) == expected
    assert take(trigger, 10) == expected  # none of the above advanced the original


def test_setstate_rejects_unknown_version() -> None:
    state = CronTrigger("* * * * *", start_time=START).__getstate__()
    state["version"] = 2
    with pytest.raises(ValueError, match="cannot restore CronTrigger state version 2"):
        CronTrigger.__new__(CronTrigger).__setstate__(state)


@pytest.mark.parametrize("expression", ["*/10 * * * *", "0 0 15 * 1#2", "0 0 * * 1,5L"])
def test_deepcopy_is_independent(expression: str) -> None:
    trigger = CronTrigger(expression, timezone="America/New_York", start_time=START)
    reference = CronTrigger(expression, timezone="America/New_York", start_time=START)
    trigger.next()
    preview = copy.deepcopy(trigger)
    expected = take(reference, 8)[1:]
    assert take(preview, 7) == expected
    assert take(preview, 1) != expected[:1]
    assert take(trigger, 7) == expected


def test_repr() -> None:
    trigger = CronTrigger(
        "0 2 * * *", timezone="America/New_York", start_time=START, hash_id="job-1"
    )
    assert repr(trigger) == (
        "CronTrigger('0 2 * * *', timezone='America/New_York', "
        "start_time='2026-01-01T00:00:00+00:00', hash_id='job-1')"
    )
    trigger.next()
    assert repr(trigger).endswith("last_fire_time='2026-01-01T07:00:00+00:00')")
    fields = CronTrigger(fields={"hour": 2}, start_time=START, end_time=_utc("2026-02-01 00:00"))
    assert repr(fields) == (
        "CronTrigger(fields={'hour': '2'}, timezone='UTC', "
        "start_time='2026-01-01T00:00:00+00:00', end_time='2026-02-01T00:00:00+00:00')"
    )


# ---------------------------------------------------------------------------- describe


@pytest.mark.parametrize(
    ("args", "description"),
    [
        (("0 2 * * *", "America/New_York"), "At 02:00 every day (America/New_York)"),
        (("*/15 * * * *",), "Every 15 minutes (UTC)"),
        (("0 9 * * 1",), "At 09:00 on Monday (UTC)"),
        (("0 0 1 * *",), "At 00:00 on day 1 of the month (UTC)"),
        (("0 9 L * *",), "Cron '0 9 L * *' (UTC)"),
        (("0 9 * * mon-fri",), "At 09:00 on Monday through Friday (UTC)"),
        (("0 9 * * 1,3,5",), "At 09:00 on Monday, Wednesday and Friday (UTC)"),
        (("30 8 1,15 * *",), "At 08:30 on days 1 and 15 of the month (UTC)"),
        (("0 0 25 12 *",), "At 00:00 on December 25 (UTC)"),
        (("0 6 * 7 *",), "At 06:00 every day in July (UTC)"),
        (("30 15 10 * * *",), "At 10:15:30 every day (UTC)"),
        (("* * * * *",), "Every minute (UTC)"),
        (("0 * * * *",), "Every hour (UTC)"),
        (("5 * * * *",), "Every hour at minute 5 (UTC)"),
        (("0 */2 * * *",), "Every 2 hours (UTC)"),
        (("*/10 * * * * *",), "Every 10 seconds (UTC)"),
        (("* * * * * *",), "Every second (UTC)"),
        (("*/5 * * * 1-5",), "Every 5 minutes on Monday through Friday (UTC)"),
        (("@yearly",), "At 00:00 on January 1 (UTC)"),
        (("@daily",), "At 00:00 every day (UTC)"),
        (("0 0 13 * 5",), "Cron '0 0 13 * 5' (UTC)"),
        (("7-59/15 * * * *",), "Cron '7-59/15 * * * *' (UTC)"),
        (("0 9 * * 5#2",), "Cron '0 9 * * 5#2' (UTC)"),
        (("H 2 * * *",), "Cron 'H 2 * * *' (UTC)"),
    ],
)
def test_describe(args: tuple[str, ...], description: str) -> None:
    zone = args[1] if len(args) > 1 else "UTC"
    trigger = CronTrigger(args[0], timezone=zone, start_time=START, hash_id="job")
    assert trigger.describe() == description


def test_describe_fields_form() -> None:
    assert CronTrigger(fields={"hour": 2, "minute": 0}).describe() == "At 02:00 every day (UTC)"
    assert CronTrigger(fields={"minute": "*/5"}).describe() == "Every 5 minutes (UTC)"
    assert (
        CronTrigger(fields={"day_of_week": "mon", "hour": 9}, timezone="Europe/Paris").describe()
        == "At 09:00 on Monday (Europe/Paris)"
    )
    assert CronTrigger(fields={"day": 13, "day_of_week": "fri"}).describe() == (
        "Cron 'month=* day=13 day_of_week=fri hour=0 minute=0 second=0' (UTC)"
    )


@pytest.mark.parametrize("zone", ["UTC", "Etc/GMT-5", "Etc/GMT+11"])
@pytest.mark.parametrize(
    "expression", ["* * * * *", "*/7 3-5 * * 1-5", "0 0 29 2 *", "30 23 L * *", "5 4 * * sun"]
)
def test_fixed_offset_zones_fire_as_the_general_path_does(zone: str, expression: str) -> None:
    fast = CronTrigger(
        expression, timezone=zone, start_time=datetime(2027, 12, 30, 22, 0, tzinfo=UTC)
    )
    general = copy.deepcopy(fast)
    general._fixed = None  # every step through the zone-aware path, as for any other zone
    assert fast._fixed is not None
    assert take(fast, 300) == take(general, 300)
    assert fast.__getstate__() == general.__getstate__()
