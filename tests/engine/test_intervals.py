"""Interval bounds: every interval is from 1 ms to 100 years, or fails at declaration.

Before, ``seconds=1e12`` raised ``OverflowError: date value out of range``, ``weeks=1e9``
``OverflowError: Python int too large to convert to C int``, ``seconds=nan`` "cannot convert
float NaN to integer", and ``seconds=1e-9`` "interval must be positive" (it is positive).
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Any

import pytest
from helpers import noop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from library.components.scheduling.task_scheduler import (
    InvalidTypeError,
    InvalidValueError,
    TaskScheduler,
)
from library.components.scheduling.task_scheduler.testing import wait_for_runs

pytestmark = pytest.mark.anyio

UNITS = ("weeks", "days", "hours", "minutes", "seconds")
RANGE = "an interval is from 1 ms to 100 years (36525 days)"


BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    ({"seconds": 1e12}, f"invalid interval seconds=1000000000000.0: more than 100 years; {RANGE}"),
    ({"weeks": 1e9}, f"invalid interval weeks=1000000000.0: more than 100 years; {RANGE}"),
    ({"days": 10**400}, "more than 100 years"),
    (
        {"seconds": math.nan},
        f"invalid interval seconds=nan: seconds must be a finite number >= 0; {RANGE}",
    ),
    ({"hours": math.inf}, "invalid interval hours=inf: hours must be a finite number >= 0"),
    ({"minutes": -math.inf}, "invalid interval minutes=-inf: minutes must be a finite number"),
    (
        {"seconds": -5},
        f"invalid interval seconds=-5: seconds must be a finite number >= 0; {RANGE}",
    ),
    ({"hours": 1, "seconds": -1}, "invalid interval hours=1, seconds=-1: seconds must be"),
    ({"seconds": 1e-9}, f"invalid interval seconds=1e-09: 1e-09 s is shorter than 1 ms; {RANGE}"),
    ({"seconds": 0.0009}, "invalid interval seconds=0.0009: 0.0009 s is shorter than 1 ms"),
    (
        {"weeks": 5000, "days": 2000},
        f"invalid interval weeks=5000, days=2000: 3.1968e+09 s is more than 100 years; {RANGE}",
    ),
    ({}, "invalid interval: it must be positive: give weeks, days, hours, minutes or seconds; "),
    ({"seconds": 0.0}, "invalid interval: it must be positive"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_VALUES)
async def test_bad_intervals_fail_at_declaration_naming_value_and_range(
    anyio_backend: str, kwargs: dict[str, Any], message: str
) -> None:
    scheduler = TaskScheduler()
    with pytest.raises(InvalidValueError, match=re.escape(message)):
        scheduler.interval(id="decorated", **kwargs)(noop)
    with pytest.raises(InvalidValueError, match=re.escape(message)):
        await scheduler.add_interval_job(noop, "added", **kwargs)
    assert await scheduler.get_jobs() == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seconds": True}, "interval seconds must be an int or float, got True (bool); "),
        ({"minutes": "5"}, "interval minutes must be an int or float, got '5' (str); "),
        ({"hours": None}, "interval hours must be an int or float, got None (NoneType); "),
    ],
)
async def test_intervals_of_the_wrong_type_fail_at_declaration(
    anyio_backend: str, kwargs: dict[str, Any], message: str
) -> None:
    scheduler = TaskScheduler()
    with pytest.raises(InvalidTypeError, match=re.escape(message + RANGE)):
        scheduler.interval(id="decorated", **kwargs)(noop)
    with pytest.raises(InvalidTypeError, match=re.escape(message + RANGE)):
        await scheduler.add_interval_job(noop, "added", **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "interval"),
    [
        ({"seconds": 0.001}, timedelta(milliseconds=1)),
        ({"days": 36525}, timedelta(days=36525)),
        ({"weeks": 5000, "days": 1525}, timedelta(days=36525)),
        ({"minutes": 0.5, "seconds": 0.25}, timedelta(seconds=30.25)),
    ],
)
async def test_the_bounds_themselves_are_valid(
    anyio_backend: str, kwargs: dict[str, Any], interval: timedelta
) -> None:
    scheduler = TaskScheduler()
    scheduler.interval(id="j", **kwargs)(noop)
    info = await scheduler.get_job("j")
    assert info.trigger.interval_seconds == interval.total_seconds()
    first, second, third = await scheduler.preview("j", 3)
    assert second - first == third - second == interval


NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0, max_value=1e-2),
    st.floats(min_value=0, max_value=1e10),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-9, 1e-3, 1e12, 1e300]),
    st.integers(min_value=-(10**20), max_value=10**20),
)


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(unit=st.sampled_from(UNITS), value=NUMBERS)
async def test_any_number_in_any_unit_is_a_working_interval_or_an_invalid_value_error(
    anyio_backend: str, unit: str, value: float
) -> None:
    scheduler = TaskScheduler()
    try:
        scheduler.interval(id="j", **{unit: value})(noop)  # type: ignore[arg-type]
    except InvalidValueError as exc:
        assert RANGE in str(exc) and unit in str(exc)
        return
    times = await scheduler.preview("j", 3)
    assert len(times) == 3
    assert times[0] < times[1] < times[2]
    assert times[1] - times[0] == times[2] - times[1]
    assert timedelta(milliseconds=1) <= times[1] - times[0] <= timedelta(days=36525)


async def test_the_shortest_interval_runs(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    scheduler.interval(seconds=0.001, id="fast")(noop)
    async with scheduler:
        await wait_for_runs(scheduler, "fast", 20)
        assert scheduler.state == "running"
