"""Decorator arguments -> trigger specs -> APScheduler triggers.

A *trigger spec* is our own, validated description of when a job fires. It is made when a
job is declared (so bad input fails there), and turned into a fresh, stateful APScheduler
trigger each time the job is handed to the engine.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.abc import Trigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from ._cron import CronTrigger
from ._errors import InvalidTypeError, InvalidValueError
from ._models import TriggerInfo

CRON_FIELDS = ("year", "month", "day", "week", "day_of_week", "hour", "minute", "second")


def as_aware(value: datetime, tz: ZoneInfo, what: str) -> datetime:
    """Read a naive datetime in ``tz`` (never the machine's zone: trap 15); keep aware ones."""
    if not isinstance(value, datetime):
        raise InvalidTypeError(f"{what} must be a datetime, got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        return value.replace(tzinfo=tz)
    return value


EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(9000, 1, 1, tzinfo=timezone.utc)
"""Fire times, starts and ends a store can hold and the engine can compute with (room for a
100-year interval past the latest). Outside: an error at declaration. PostgreSQL took a
``datetime(1, 1, 1)`` run time, then the engine crash-looped on it in every process."""


def in_range(value: datetime, what: str) -> datetime:
    """``value`` if it is within :data:`EARLIEST` .. :data:`LATEST`, else InvalidValueError."""
    if not EARLIEST <= value <= LATEST:
        raise InvalidValueError(
            f"{what} {value.isoformat()} is out of range: it must be from "
            f"{EARLIEST.date().isoformat()} to {LATEST.date().isoformat()} (UTC)"
        )
    return value


class TriggerSpec(ABC):
    """When a job fires, as declared."""

    __slots__ = ("end", "start", "tz")

    def __init__(self, tz: ZoneInfo, start: datetime | None, end: datetime | None) -> None:
        self.tz = tz
        self.start = None if start is None else in_range(as_aware(start, tz, "start"), "start")
        self.end = None if end is None else in_range(as_aware(end, tz, "end"), "end")
        if self.start is not None and self.end is not None and self.end < self.start:
            raise InvalidValueError(
                f"end {self.end.isoformat()} is before start {self.start.isoformat()}"
            )

    @abstractmethod
    def build(self, now: datetime, *, allow_past: bool = False) -> Trigger | None:
        """A fresh engine trigger, first firing from ``now`` on; None if it never fires again.

        ``allow_past``: a one-time job added while the scheduler runs still fires if its time
        has just passed (a declared one whose time passed before start does not).
        """

    @abstractmethod
    def info(self) -> TriggerInfo:
        """The spec as users see it."""

    def shared(self) -> TriggerSpec:
        """An equal spec that other jobs may hold too (specs are never changed once made),
        or this one."""
        return self

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data that :func:`spec_from_dict` turns back into an equal spec."""

    def _bounds(self) -> dict[str, Any]:
        return {"start": _iso(self.start), "end": _iso(self.end)}

    def _local(self, value: datetime | None) -> datetime | None:
        return None if value is None else value.astimezone(self.tz)


def _plural(count: int, unit: str) -> str:
    return f"{count} {unit}" if count == 1 else f"{count} {unit}s"


def describe_interval(interval: timedelta) -> str:
    """``timedelta(minutes=5)`` -> ``"Every 5 minutes"``; one unit -> ``"Every minute"``."""
    total = interval.total_seconds()
    parts: list[str] = []
    for unit, size in (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60)):
        count, total = divmod(total, size)
        if count:
            parts.append(_plural(int(count), unit))
    if total:
        seconds = int(total) if float(total).is_integer() else round(total, 6)
        parts.append(f"{seconds} second" + ("" if seconds == 1 else "s"))
    if len(parts) == 1 and parts[0].startswith("1 "):
        return f"Every {parts[0][2:]}"
    return "Every " + " ".join(parts)


SHARED_SPECS_MAX = 1024
"""At most this many distinct interval specs are shared between jobs; more are kept apart."""
_shared_intervals: dict[tuple[object, ...], IntervalSpec] = {}
"""Shared interval specs, by everything that makes them differ."""


def _moment(value: datetime | None) -> tuple[object, ...]:
    """What tells two datetimes apart in every output: ``==`` compares instants (or, in one
    zone, wall times), but the zone and fold also decide how a datetime is shown."""
    return () if value is None else (value, value.tzinfo, value.fold)


MIN_INTERVAL = timedelta(milliseconds=1)
"""The shortest interval. A shorter one is almost surely a unit mistake (``seconds=1e-9``),
and timedelta keeps whole microseconds only: it would be rounded, below 0.5 us to nothing."""
MAX_INTERVAL = timedelta(days=36525)
"""The longest interval, 100 years: fire times (start + n intervals) stay far inside what
datetimes and the stores can hold, with seconds exact to the microsecond as a float."""
INTERVAL_RANGE = "an interval is from 1 ms to 100 years (36525 days)"
"""The valid range, as every interval error states it."""
INTERVAL_UNITS: tuple[tuple[str, float], ...] = (
    ("weeks", 604800.0), ("days", 86400.0), ("hours", 3600.0), ("minutes", 60.0),
    ("seconds", 1.0),
)  # fmt: skip
"""The interval's units, with their size in seconds."""
_MAX_SECONDS = MAX_INTERVAL.total_seconds()


def interval_from_units(
    weeks: object, days: object, hours: object, minutes: object, seconds: object
) -> timedelta:
    """The interval the units add up to; InvalidTypeError or InvalidValueError, naming the
    units given and the valid range, unless it is from :data:`MIN_INTERVAL` to
    :data:`MAX_INTERVAL`.

    Each unit is an int or float >= 0 (not a bool, not NaN or infinite); each is checked
    against the maximum on its own before any arithmetic, so no value overflows.
    """
    values = (weeks, days, hours, minutes, seconds)
    checked: list[float] = []
    total = 0.0
    for (unit, size), value in zip(INTERVAL_UNITS, values, strict=True):
        kind = type(value)
        if kind is not int and kind is not float:  # the common case skips isinstance
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise InvalidTypeError(
                    f"interval {unit} must be an int or float, got {value!r} "
                    f"({kind.__name__}); {INTERVAL_RANGE}"
                )
        assert isinstance(value, (int, float))
        if not 0 <= value < math.inf:  # also NaN, which compares false to everything
            raise InvalidValueError(
                f"invalid interval {_given(values)}: {unit} must be a finite number >= 0; "
                f"{INTERVAL_RANGE}"
            )
        if value > _MAX_SECONDS / size:  # exact for huge ints too: no float conversion
            raise InvalidValueError(
                f"invalid interval {_given(values)}: more than 100 years; {INTERVAL_RANGE}"
            )
        checked.append(value)
        total += value * size
    if total == 0:
        raise InvalidValueError(
            "invalid interval: it must be positive: give weeks, days, hours, minutes or "
            f"seconds; {INTERVAL_RANGE}"
        )
    interval = timedelta(weeks=checked[0], days=checked[1], hours=checked[2], minutes=checked[3])
    interval += timedelta(seconds=checked[4])
    if interval < MIN_INTERVAL:
        raise InvalidValueError(
            f"invalid interval {_given(values)}: {total:g} s is shorter than 1 ms; {INTERVAL_RANGE}"
        )
    if interval > MAX_INTERVAL:
        raise InvalidValueError(
            f"invalid interval {_given(values)}: {total:g} s is more than 100 years; "
            f"{INTERVAL_RANGE}"
        )
    return interval


def _given(values: tuple[object, ...]) -> str:
    """``"hours=1, seconds=5"``: the units given (not 0), as the user wrote them."""
    return ", ".join(
        f"{unit}={value!r}"
        for (unit, _), value in zip(INTERVAL_UNITS, values, strict=True)
        if not (type(value) in (int, float) and value == 0)
    )


class IntervalSpec(TriggerSpec):
    """Fires every ``interval``; the first fire is one interval after start, unless ``start``.

    The interval is from :data:`MIN_INTERVAL` (1 ms) to :data:`MAX_INTERVAL` (100 years);
    anything else fails here, at declaration (:func:`interval_from_units`).
    """

    __slots__ = ("interval",)

    def __init__(
        self,
        *,
        weeks: float = 0,
        days: float = 0,
        hours: float = 0,
        minutes: float = 0,
        seconds: float = 0,
        start: datetime | None = None,
        end: datetime | None = None,
        tz: ZoneInfo,
    ) -> None:
        super().__init__(tz, start, end)
        self.interval = interval_from_units(weeks, days, hours, minutes, seconds)

    def shared(self) -> IntervalSpec:
        # Jobs with equal intervals (the common case: many jobs, few distinct intervals)
        # hold one spec: 112 B less per job (memory per idle schedule). Bounded, so that
        # distinct starts cannot grow the table without end.
        key = (self.interval, self.tz, _moment(self.start), _moment(self.end))
        spec = _shared_intervals.get(key)
        if spec is None:
            if len(_shared_intervals) >= SHARED_SPECS_MAX:
                return self
            _shared_intervals[key] = spec = self
        return spec

    def first_fire(self, now: datetime) -> datetime:
        if self.start is None:
            return now + self.interval
        if self.start >= now:
            return self.start
        # A start in the past keeps its phase: the first fire is the next one on its grid.
        steps = math.ceil((now - self.start) / self.interval)
        return self.start + steps * self.interval

    def build(self, now: datetime, *, allow_past: bool = False) -> Trigger | None:
        first = self.first_fire(now)
        if self.end is not None and first > self.end:
            return None
        return IntervalTrigger(
            seconds=self.interval.total_seconds(),
            start_time=first,
            end_time=self.end,  # type: ignore[arg-type]  # attrs converter accepts None
        )

    def to_dict(self) -> dict[str, Any]:
        return {"type": "interval", "seconds": self.interval.total_seconds(), **self._bounds()}

    def info(self) -> TriggerInfo:
        return TriggerInfo(
            type="interval",
            description=describe_interval(self.interval),
            timezone=self.tz.key,
            interval_seconds=self.interval.total_seconds(),
            start=self._local(self.start),
            end=self._local(self.end),
        )


class CronSpec(TriggerSpec):
    """Fires when the wall-clock time in ``tz`` matches a cron expression or cron fields."""

    __slots__ = ("_probe", "expression", "fields", "hash_id")

    def __init__(
        self,
        expression: str | None,
        fields: Mapping[str, int | str | None],
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        tz: ZoneInfo,
        hash_id: str,
    ) -> None:
        super().__init__(tz, start, end)
        given = {name: value for name, value in fields.items() if value is not None}
        if expression is not None and given:
            raise InvalidValueError(
                f"give a cron expression or cron fields, not both (got {expression!r} "
                f"and {', '.join(given)})"
            )
        if expression is None and not given:
            raise InvalidValueError(
                "a cron job needs an expression such as '0 2 * * *' or at least one field "
                f"of: {', '.join(CRON_FIELDS)}"
            )
        if expression is not None and not isinstance(expression, str):
            raise InvalidValueError(f"cron expression must be a string, got {expression!r}")
        self.expression = expression
        self.fields = given or None
        self.hash_id = hash_id
        # Built once now, so that every mistake in the expression fails at declaration.
        self._probe = self._make(self.start)

    def _make(self, start: datetime | None) -> CronTrigger:
        return CronTrigger(
            self.expression,
            fields=self.fields,
            timezone=self.tz.key,
            start_time=start,
            end_time=self.end,
            hash_id=self.hash_id,
        )

    def build(self, now: datetime, *, allow_past: bool = False) -> Trigger | None:
        start = now if self.start is None or self.start < now else self.start
        return self._make(start)

    def to_dict(self) -> dict[str, Any]:
        fields = None if self.fields is None else {k: str(v) for k, v in self.fields.items()}
        return {
            "type": "cron",
            "expression": self.expression,
            "fields": fields,
            "hash_id": self.hash_id,
            **self._bounds(),
        }

    def info(self) -> TriggerInfo:
        fields = self._probe.fields_dict()
        return TriggerInfo(
            type="cron",
            description=self._probe.describe(),
            timezone=self.tz.key,
            expression=self.expression,
            fields=fields,
            start=self._local(self.start),
            end=self._local(self.end),
        )


class DateSpec(TriggerSpec):
    """Fires once, at ``run_at``."""

    __slots__ = ("run_at",)

    def __init__(self, run_at: datetime, *, tz: ZoneInfo) -> None:
        super().__init__(tz, None, None)
        self.run_at = in_range(as_aware(run_at, tz, "run time"), "run time")

    def build(self, now: datetime, *, allow_past: bool = False) -> Trigger | None:
        if self.run_at < now and not allow_past:
            return None
        return DateTrigger(self.run_at)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "date", "run_at": _iso(self.run_at)}

    def info(self) -> TriggerInfo:
        local = self.run_at.astimezone(self.tz)
        return TriggerInfo(
            type="date",
            description=f"Once at {local:%Y-%m-%d %H:%M:%S} ({self.tz.key})",
            timezone=self.tz.key,
            run_at=local,
        )


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def spec_from_dict(data: Mapping[str, Any], tz: ZoneInfo) -> TriggerSpec:
    """The inverse of ``TriggerSpec.to_dict()``; a ValueError for data it does not know."""
    kind = data.get("type")
    if kind == "interval":
        return IntervalSpec(
            seconds=float(data["seconds"]), start=_dt(data["start"]), end=_dt(data["end"]), tz=tz
        )
    if kind == "cron":
        return CronSpec(
            data["expression"],
            data["fields"] or {},
            start=_dt(data["start"]),
            end=_dt(data["end"]),
            tz=tz,
            hash_id=str(data["hash_id"]),
        )
    if kind == "date":
        run_at = _dt(data["run_at"])
        assert run_at is not None
        return DateSpec(run_at, tz=tz)
    raise InvalidValueError(f"unknown trigger type {kind!r} in a stored job definition")
