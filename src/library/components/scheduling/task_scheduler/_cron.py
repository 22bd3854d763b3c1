"""A croniter-backed cron trigger for APScheduler 4 with an explicit DST policy.

:class:`CronTrigger` accepts either a crontab expression or APScheduler-style keyword
fields, validates it eagerly with messages that name the field, the value and what is
allowed, and implements :class:`apscheduler.abc.Trigger` (stateful ``next()``,
plain-data ``__getstate__``/``__setstate__``).

Expression form (``CronTrigger("*/5 * * * *")``)
    5 fields ``minute hour day month day_of_week``, or 6 with the **seconds first**
    (``second minute hour day month day_of_week``). Macros ``@yearly @annually
    @monthly @weekly @daily @midnight @hourly`` (never hashed). Lists, ranges
    (wrap-around ranges such as ``fri-mon`` or ``22-2`` are allowed, without a step),
    steps, month and weekday names, ``L`` (last day of the month), ``15W`` (weekday
    nearest the 15th, alone in its field), ``5#2`` (second Friday), ``L5``/``5L``
    (last Friday), ``?`` (same as ``*`` in day/day_of_week), and ``H``/``H/15``/
    ``H(0-29)``/``H(0-29)/10`` as the whole field, spread by ``hash_id`` (the job id;
    deterministic, see croniter's hash expander). Weekdays: 0 or 7 = Sunday.
    Day-of-month and day-of-week are **ORed** when both are restricted (Vixie cron and
    croniter's ``day_or=True``; a field counts as unrestricted when it is ``*``/``?``,
    or - as croniter decides - when it covers every value and the other day field
    contains ``*``).

Fields form (``CronTrigger(fields={"hour": 2, "minute": 0})``), APScheduler semantics
    Keys ``year month day week day_of_week hour minute second``. As in APScheduler
    (``CronTrigger._set_fields``), a field that is not given defaults to ``*`` when a
    less significant field is given, and otherwise to its default value: month=1,
    day=1, hour=0, minute=0, second=0 (year, week and day_of_week default to ``*``).
    So ``{"hour": 2}`` fires daily at 02:00:00 and ``{"month": 6}`` fires on June 1st
    at 00:00:00. ``day`` and ``day_of_week`` are **ANDed**. ``day`` also accepts
    ``last``, ``1st fri`` .. ``5th fri`` and ``last fri``. Weekday numbers are cron's
    (0 or 7 = Sunday) and names ``mon``..``sun`` work. Unsupported on purpose, each
    with a ValueError rather than a silent difference: ``week`` other than ``*`` (ISO
    weeks cannot be expressed with croniter), steps in ``day_of_week`` (APScheduler
    counts them from Monday, cron from Sunday), years outside 1970-2099 (croniter's
    year range).

DST policy (local wall-clock time in ``timezone``; implemented here with zoneinfo,
croniter only enumerates naive wall-clock times)
    * A job fires at each instant whose local wall-clock time matches.
    * **Gap** (clocks jump forward): every matching wall-clock time that does not
      exist that day fires **once**, at the first valid instant after the gap (the
      transition instant). ``30 2 * * *`` in America/New_York on 2026-03-08 fires at
      03:00 EDT; ``*/15 * * * *`` fires at 03:00 once, then 03:15; ``0 */2 * * *``
      fires at 00:00, 03:00, 04:00. If the first wall-clock time after the gap also
      matches, it is the same instant and fires once.
    * **Repeat** (clocks fall back): when the hour field matches every hour (``*``,
      ``*/1``, ``0-23``), the repeated wall-clock times fire in **both** passes - the
      job keeps running by real time (``*/30 * * * *``: 01:00 EDT, 01:30 EDT,
      01:00 EST, 01:30 EST, 02:00 EST). Otherwise (any restricted hour field) a
      repeated wall-clock time fires only at its **first** occurrence.
    * Fire times are returned as aware UTC datetimes (two datetimes sharing a ZoneInfo
      compare by wall-clock time and ignore ``fold``, which would misorder the
      repeated hour).

The trigger is stateful: the first ``next()`` returns the first fire time at or after
``start_time`` (default: the time of construction), each following call the next one
strictly after the previous; ``None`` once past ``end_time`` (inclusive) or when a
bounded ``year`` set is exhausted.

One module of ~1,100 lines on purpose: parsing, validation messages, the DST walk and the
plain-data state are one concept (a cron trigger) whose parts share the same field tables;
split, each part would import all the others. Its class path is stored in users'
databases (``_cron:CronTrigger``) and must not move.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.abc import Trigger
from croniter import (  # type: ignore[import-untyped]
    CroniterBadDateError,
    CroniterError,
    croniter,
)

from ._errors import InvalidValueError

__all__ = ["CronTrigger"]

_UTC: Final = dt_timezone.utc
_SECOND: Final = timedelta(seconds=1)
_EPOCH: Final = datetime(1970, 1, 1)
_EPOCH_UTC: Final = datetime(1970, 1, 1, tzinfo=_UTC)
# The hot path moves datetimes by arithmetic: datetime.replace() costs ten times as much.
_STATE_VERSION: Final = 1

_MONTH_LABELS: Final = (
    "",
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)  # not calendar.month_name: that one follows the process locale
_MONTH_NAMES: Final = {label[:3].lower(): i for i, label in enumerate(_MONTH_LABELS) if label}
_DOW_NAMES: Final = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
_DAY_LABELS: Final = (
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
)
_MAX_MONTH_DAYS: Final = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

_MACROS: Final = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_FIELD_KEYS: Final = ("year", "month", "day", "week", "day_of_week", "hour", "minute", "second")
# APScheduler's defaults for a field that is not given and has no less significant
# field given (apscheduler.triggers.cron.fields.DEFAULT_VALUES).
_FIELD_DEFAULTS: Final = {
    "year": "*",
    "month": "1",
    "day": "1",
    "week": "*",
    "day_of_week": "*",
    "hour": "0",
    "minute": "0",
    "second": "0",
}

_HASH_RE: Final = re.compile(r"^h(?:\((\d+)-(\d+)\))?(?:/(\d+))?$", re.ASCII)
_W_RE: Final = re.compile(r"^(?:(\d+)w|w(\d+))$", re.ASCII)
_NTH_KW_RE: Final = re.compile(r"^(1st|2nd|3rd|4th|5th|last)\s+([a-z]+)$", re.ASCII)
_NTH_KW: Final = {"1st": 1, "2nd": 2, "3rd": 3, "4th": 4, "5th": 5, "last": -1}


@dataclass(frozen=True)
class _Spec:
    name: str
    lo: int
    hi: int  # largest value accepted as written (7 for day_of_week)
    top: int  # largest canonical value (6 for day_of_week)
    names: Mapping[str, int]
    allowed: str
    croniter_index: int  # field position in croniter's internal order (for H)


_SEC: Final = _Spec("second", 0, 59, 59, {}, "0-59", 5)
_MIN: Final = _Spec("minute", 0, 59, 59, {}, "0-59", 0)
_HOUR: Final = _Spec("hour", 0, 23, 23, {}, "0-23", 1)
_DAY: Final = _Spec("day", 1, 31, 31, {}, "1-31", 2)
_MONTH: Final = _Spec("month", 1, 12, 12, _MONTH_NAMES, "1-12 or jan-dec", 3)
_DOW: Final = _Spec("day_of_week", 0, 7, 6, _DOW_NAMES, "0-7 (0 or 7 = Sunday) or sun-sat", 4)
_YEAR: Final = _Spec("year", 1970, 2099, 2099, {}, "1970-2099", 6)


@dataclass(frozen=True)
class _Field:
    """One parsed field; ``values`` are the plain values (weekdays normalized to 0-6)."""

    token: str
    values: frozenset[int]
    star: bool = False  # written as "*" or "?"
    last_day: bool = False  # "L" in day
    nearest: int | None = None  # "15W" in day
    nth: tuple[tuple[int, int], ...] = ()  # (weekday, n); n == -1 means the last one
    hashed: bool = False

    def is_full(self, spec: _Spec) -> bool:
        return (
            not self.last_day
            and self.nearest is None
            and not self.nth
            and len(self.values) == spec.top - spec.lo + 1
        )


@dataclass(frozen=True)
class _Parsed:
    second: _Field | None  # None for 5-field expressions (minute resolution)
    minute: _Field
    hour: _Field
    day: _Field
    month: _Field
    day_of_week: _Field
    year: _Field | None
    and_days: bool  # fields form: day AND day_of_week
    day_restricted: bool
    dow_restricted: bool


class _TimesOfDay:
    """The times of day a trigger matches (the product of its hour, minute and second
    sets), with "next value after v" tables: a matching time later the same day, without
    croniter."""

    __slots__ = ("deltas", "first_minute", "first_second", "hours", "minutes", "next_hour",
                 "next_minute", "next_second")  # fmt: skip

    def __init__(
        self, hours: Iterable[int], minutes: Iterable[int], seconds: Iterable[int]
    ) -> None:
        seconds = frozenset(seconds)
        self.hours = frozenset(hours)
        self.minutes = frozenset(minutes)
        self.next_hour = _next_table(self.hours, 24)
        self.next_minute = _next_table(self.minutes, 60)
        self.next_second = _next_table(seconds, 60)
        self.first_minute = min(self.minutes)
        self.first_second = min(seconds)
        self.deltas: dict[int, timedelta] = {}
        """The steps met so far, by seconds (few: the gaps between matching times)."""

    def after(self, x: datetime) -> datetime | None:
        """The first matching time of day strictly after ``x`` (whole seconds) on the same
        day, or None if none is left that day."""
        hour, minute, second = x.hour, x.minute, x.second
        if hour in self.hours:
            if minute in self.minutes:
                later = self.next_second[second]
                if later >= 0:
                    return x + self._delta(later - second)
            later = self.next_minute[minute]
            if later >= 0:
                return x + self._delta((later - minute) * 60 + self.first_second - second)
        later = self.next_hour[hour]
        if later >= 0:
            return x + self._delta(
                (later - hour) * 3600
                + (self.first_minute - minute) * 60
                + self.first_second
                - second
            )
        return None

    def _delta(self, seconds: int) -> timedelta:
        delta = self.deltas.get(seconds)
        if delta is None:
            delta = timedelta(0, seconds)
            if len(self.deltas) < 4096:
                self.deltas[seconds] = delta
        return delta


def _next_table(values: Iterable[int], size: int) -> tuple[int, ...]:
    """For each v in 0..size-1, the smallest value > v (-1: none)."""
    ordered = sorted(values)
    table = []
    for v in range(size):
        table.append(next((w for w in ordered if w > v), -1))
    return tuple(table)


class _Sub:
    """One croniter iterator over naive wall-clock times, with a one-entry cache.

    The day of the last time croniter returned is a matching day: the next match after a
    time on that day is found from ``times`` while that day has one left (the step from
    one fire to the next, nearly always), and by croniter otherwise. Only naive wall times
    are involved; the DST walk around them is unchanged.
    """

    __slots__ = ("cron", "day", "head", "times", "x")

    def __init__(self, cron: Any, times: _TimesOfDay | None) -> None:
        self.cron = cron
        self.times = times
        """None: croniter for every step (what a differential test compares with)."""
        self.day: date | None = None
        """The day of croniter's last result: every day field matches it."""
        self.x: datetime | None = None
        self.head: datetime | None = None

    def after(self, x: datetime) -> datetime | None:
        times = self.times
        if times is not None and self.day is not None and not x.microsecond:
            if x.date() == self.day:
                same_day = times.after(x)
                if same_day is not None:
                    return same_day
        try:
            result: datetime = self.cron.get_next(datetime, start_time=x)
        except (CroniterBadDateError, OverflowError):
            self.day = None
            return None
        self.day = result.date()
        return result

    def cached_after(self, x: datetime) -> datetime | None:
        # head is the first wall time > self.x, hence also the first one > x when
        # self.x <= x < head (or when the iterator is exhausted after self.x).
        if self.x is not None and self.x <= x and (self.head is None or x < self.head):
            return self.head
        head = self.after(x)
        self.x = x
        self.head = head
        return head

    def clone(self) -> _Sub:
        return _Sub(copy.copy(self.cron), self.times)


# ---------------------------------------------------------------------------- parsing


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _int_or_name(spec: _Spec, text: str, prefix: str) -> int:
    if _digits(text):
        value = int(text)
        if not spec.lo <= value <= spec.hi:
            raise InvalidValueError(f"{prefix}: {spec.name} must be {spec.allowed}, got {value}")
        return value
    if text in spec.names:
        return spec.names[text]
    raise InvalidValueError(f"{prefix}: {spec.name} must be {spec.allowed}, got {text!r}")


def _weekday(text: str, prefix: str) -> int:
    return _int_or_name(_DOW, text, prefix) % 7


def _range_values(spec: _Spec, item: str, prefix: str, *, allow_step: bool) -> list[int]:
    base, sep, step_text = item.partition("/")
    step = 1
    if sep:
        if not allow_step:
            raise InvalidValueError(
                f"{prefix}: steps are not supported in {spec.name} in the fields form "
                f"(APScheduler counts them from Monday, cron from Sunday); list the days "
                f"instead, e.g. 'mon,wed,fri', got {item!r}"
            )
        if not _digits(step_text) or int(step_text) < 1:
            raise InvalidValueError(
                f"{prefix}: {spec.name} step must be a positive integer, got {item!r}"
            )
        step = int(step_text)
    if base == "*":
        return list(range(spec.lo, spec.top + 1, step))
    if not base:
        raise InvalidValueError(f"{prefix}: {spec.name} must be {spec.allowed}, got {item!r}")
    first_text, dash, last_text = base.partition("-")
    first = _int_or_name(spec, first_text, prefix)
    if dash:
        last = _int_or_name(spec, last_text, prefix)
    else:
        last = spec.top if sep else first
    if spec is _DOW and first == 7:
        # 7 is Sunday; as the end of a range ("5-7") it is folded to 0 below.
        first = 0
        if not dash and not sep:
            last = 0
    if first <= last:
        return [v % 7 if spec is _DOW else v for v in range(first, last + 1, step)]
    if sep:
        raise InvalidValueError(
            f"{prefix}: {spec.name} range {item!r} wraps around and cannot have a step"
        )
    return list(range(first, spec.top + 1)) + list(range(spec.lo, last + 1))


def _parse_cron_field(spec: _Spec, token: str, prefix: str) -> _Field:
    """Parse one field of a crontab expression (``token`` is lower case)."""
    if token == "?":
        if spec not in (_DAY, _DOW):
            raise InvalidValueError(
                f"{prefix}: '?' is only allowed in day or day_of_week, got it in {spec.name}"
            )
        return _Field(token, frozenset(range(spec.lo, spec.top + 1)), star=True)
    if token == "*":
        return _Field(token, frozenset(range(spec.lo, spec.top + 1)), star=True)
    if _HASH_RE.match(token):
        return _Field(token, frozenset(), hashed=True)  # resolved by _resolve_hashes
    items = token.split(",")
    values: set[int] = set()
    last_day = False
    nearest: int | None = None
    nth: list[tuple[int, int]] = []
    for item in items:
        if not item:
            raise InvalidValueError(f"{prefix}: {spec.name} has an empty list item in {token!r}")
        if item.startswith("h"):
            raise InvalidValueError(
                f"{prefix}: H (hashed) must be the whole {spec.name} field, e.g. 'H', "
                f"'H/15', 'H(0-29)' or 'H(0-29)/10', got {token!r}"
            )
        if "?" in item:
            raise InvalidValueError(
                f"{prefix}: '?' must be alone in day or day_of_week, got {token!r}"
            )
        if spec is _DAY:
            if item == "l":
                last_day = True
                continue
            match = _W_RE.match(item)
            if match:
                if len(items) > 1:
                    raise InvalidValueError(
                        f"{prefix}: day 'W' (nearest weekday) must be the only value in "
                        f"the field, got {token!r}"
                    )
                nearest = _int_or_name(spec, match.group(1) or match.group(2), prefix)
                continue
            if "l" in item or "w" in item:
                raise InvalidValueError(
                    f"{prefix}: day must be {spec.allowed}, 'L' (last day) or 'nW' "
                    f"(nearest weekday), got {item!r}"
                )
        if spec is _DOW:
            if "#" in item:
                day_text, _, n_text = item.partition("#")
                weekday = _weekday(day_text, prefix)
                if not _digits(n_text) or not 1 <= int(n_text) <= 5:
                    raise InvalidValueError(
                        f"{prefix}: day_of_week '#' must be followed by 1-5 (nth weekday "
                        f"of the month), got {item!r}"
                    )
                nth.append((weekday, int(n_text)))
                continue
            if item.startswith("l") or (item.endswith("l") and item not in spec.names):
                day_text = item[1:] if item.startswith("l") else item[:-1]
                if not day_text:
                    raise InvalidValueError(
                        f"{prefix}: day_of_week 'L' needs a weekday (e.g. 'L5' or '5L' for "
                        f"the last Friday of the month), got {item!r}"
                    )
                nth.append((_weekday(day_text, prefix), -1))
                continue
        if "#" in item:
            raise InvalidValueError(f"{prefix}: '#' is only allowed in day_of_week, got {item!r}")
        values.update(_range_values(spec, item, prefix, allow_step=True))
    return _Field(
        token, frozenset(values), last_day=last_day, nearest=nearest, nth=tuple(sorted(nth))
    )


def _parse_kw_field(spec: _Spec, raw: str, prefix: str) -> _Field:
    """Parse one field of the fields (APScheduler) form."""
    token = raw.strip().lower()
    if token == "*":
        return _Field(token, frozenset(range(spec.lo, spec.top + 1)), star=True)
    values: set[int] = set()
    last_day = False
    nth: list[tuple[int, int]] = []
    for item in (part.strip() for part in token.split(",")):
        if not item:
            raise InvalidValueError(f"{prefix}: {spec.name} has an empty list item in {raw!r}")
        if spec is _DAY:
            if item == "last":
                last_day = True
                continue
            match = _NTH_KW_RE.match(item)
            if match:
                if match.group(2) not in _DOW_NAMES:
                    raise InvalidValueError(
                        f"{prefix}: day {item!r} needs a weekday name (mon-sun), "
                        f"got {match.group(2)!r}"
                    )
                nth.append((_DOW_NAMES[match.group(2)], _NTH_KW[match.group(1)]))
                continue
            if any(c.isalpha() for c in item):
                raise InvalidValueError(
                    f"{prefix}: day must be {spec.allowed}, 'last', '1st'..'5th' or "
                    f"'last' followed by a weekday name (e.g. '2nd fri'), got {item!r}"
                )
        elif spec is not _MONTH and spec is not _DOW and any(c.isalpha() for c in item):
            raise InvalidValueError(f"{prefix}: {spec.name} must be {spec.allowed}, got {item!r}")
        values.update(_range_values(spec, item, prefix, allow_step=spec is not _DOW))
    return _Field(token, frozenset(values), last_day=last_day, nth=tuple(sorted(nth)))


def _resolve_hashes(
    fields: dict[str, _Field],
    specs: Mapping[str, _Spec],
    with_seconds: bool,
    hash_id: str,
    prefix: str,
) -> None:
    """Replace hashed fields by croniter's deterministic expansion for ``hash_id``."""
    order = ["minute", "hour", "day", "month", "day_of_week"]
    if with_seconds:
        order.insert(0, "second")
    tokens = [fields[name].token if fields[name].hashed else "*" for name in order]
    try:
        expanded, _ = croniter.expand(
            " ".join(tokens), hash_id=hash_id.encode(), second_at_beginning=with_seconds
        )
    except CroniterError as exc:  # pragma: no cover - the tokens were validated already
        raise InvalidValueError(f"{prefix}: {exc}") from None
    for name in order:
        field = fields[name]
        if not field.hashed:
            continue
        spec = specs[name]
        got = expanded[spec.croniter_index]
        if got == ["*"]:
            values = frozenset(range(spec.lo, spec.top + 1))
        else:
            values = frozenset(int(v) % 7 if spec is _DOW else int(v) for v in got)
        fields[name] = _Field(field.token, values, hashed=True)


def _check_hash_token(spec: _Spec, token: str, prefix: str) -> None:
    match = _HASH_RE.match(token)
    assert match is not None
    begin, end, divisor = match.groups()
    if begin is not None and end is not None:
        if not spec.lo <= int(begin) < int(end) <= spec.hi:
            raise InvalidValueError(
                f"{prefix}: {spec.name} H range must be within {spec.lo}-{spec.hi} with "
                f"start < end, got {token!r}"
            )
    if divisor is not None and int(divisor) < 1:
        raise InvalidValueError(
            f"{prefix}: {spec.name} step must be a positive integer, got {token!r}"
        )


_YEAR_LIKE: Final = re.compile(r"(19|20|21)\d\d([-,](19|20|21)\d\d)*(/\d+)?")
"""A last field that looks like years (``2026``, ``2026-2030``, ``2026,2028``, ``2026/2``)."""


def _year_field_hint(tokens: list[str]) -> str:
    """Why an expression whose last field looks like a year fails, and what to write instead.

    A trailing year (``0 0 1 1 * 2026``, Quartz and some crontab dialects) would otherwise be
    read as the day_of_week of a seconds-first expression ("day_of_week ... got 2026").
    """
    year = tokens[-1]
    seconds_first = "the seconds FIRST (second minute hour day month day_of_week)"
    if len(tokens) == 6:
        order = f"a 6-field expression has {seconds_first}"
    else:
        order = f"an expression has 5 fields, or 6 with {seconds_first}"
    text = f"years are not a field: {year!r} looks like a year, but {order}"
    # Quartz (7 fields) counts weekdays 1 = Sunday, and in the fields form day and
    # day_of_week are ANDed: the fields are spelled out only when day_of_week is open.
    names = ["minute", "hour", "day", "month", "day_of_week"]
    if len(tokens) == 7:
        names.insert(0, "second")
    fields = {
        name: "*" if token == "?" else token
        for name, token in zip(names, tokens[:-1], strict=True)
        if not (name == "day_of_week" and token in ("*", "?"))
    }
    fields["year"] = year
    if "day_of_week" not in fields:
        try:
            _parse_fields(fields)
        except InvalidValueError:
            pass
        else:
            shown = ", ".join(f"{name}={value!r}" for name, value in fields.items())
            return f"{text}; to limit the years, use cron fields instead: {shown}"
    return f"{text}; to limit the years, use cron fields instead, with year={year!r}"


def _parse_expression(expression: str, hash_id: str | None) -> _Parsed:
    prefix = f"invalid cron expression {expression!r}"
    text = expression.strip()
    lowered = text.lower()
    if lowered.startswith("@"):
        if lowered not in _MACROS:
            raise InvalidValueError(
                f"{prefix}: unknown macro, expected one of {', '.join(_MACROS)}"
            )
        lowered = _MACROS[lowered]
    tokens = lowered.split()
    if len(tokens) in (6, 7) and _YEAR_LIKE.fullmatch(tokens[-1]):
        raise InvalidValueError(f"{prefix}: {_year_field_hint(tokens)}")
    if len(tokens) not in (5, 6):
        raise InvalidValueError(
            f"{prefix}: expected 5 fields (minute hour day month day_of_week) or 6 with "
            f"seconds first (second minute hour day month day_of_week), got {len(tokens)}"
        )
    with_seconds = len(tokens) == 6
    names = ["minute", "hour", "day", "month", "day_of_week"]
    specs: dict[str, _Spec] = {
        "second": _SEC,
        "minute": _MIN,
        "hour": _HOUR,
        "day": _DAY,
        "month": _MONTH,
        "day_of_week": _DOW,
    }
    if with_seconds:
        names.insert(0, "second")
    fields = {
        name: _parse_cron_field(specs[name], token, prefix)
        for name, token in zip(names, tokens, strict=True)
    }
    hashed = [name for name in names if fields[name].hashed]
    if hashed:
        for name in hashed:
            _check_hash_token(specs[name], fields[name].token, prefix)
        if hash_id is None:
            raise InvalidValueError(
                f"{prefix}: H (hashed) fields need a hash_id (normally the job id)"
            )
        _resolve_hashes(fields, specs, with_seconds, hash_id, prefix)
    day, dow = fields["day"], fields["day_of_week"]
    # croniter's rule: '*'/'?' is unrestricted, and so is a field covering every value
    # when the other day field contains '*'.
    day_free = day.star or (day.is_full(_DAY) and "*" in dow.token)
    dow_free = dow.star or (dow.is_full(_DOW) and "*" in day.token)
    return _Parsed(
        second=fields.get("second"),
        minute=fields["minute"],
        hour=fields["hour"],
        day=day,
        month=fields["month"],
        day_of_week=dow,
        year=None,
        and_days=False,
        day_restricted=not day_free,
        dow_restricted=not dow_free,
    )


def _parse_fields(given: Mapping[str, str]) -> _Parsed:
    shown = ", ".join(f"{k}={v!r}" for k, v in given.items())
    if not given:
        raise InvalidValueError(
            f"invalid cron fields: give at least one of {', '.join(_FIELD_KEYS)}"
        )
    week = given.get("week")
    if week is not None and week.strip() != "*":
        raise InvalidValueError(
            f"invalid cron fields ({shown}): week (ISO week number) is not supported; "
            f"use day, day_of_week and month instead"
        )
    # APScheduler's defaulting (CronTrigger._set_fields).
    effective: dict[str, str] = {}
    remaining = dict(given)
    for key in _FIELD_KEYS:
        value = remaining.pop(key, None)
        if value is None:
            value = "*" if remaining else _FIELD_DEFAULTS[key]
        effective[key] = value
    specs = {
        "year": _YEAR,
        "month": _MONTH,
        "day": _DAY,
        "day_of_week": _DOW,
        "hour": _HOUR,
        "minute": _MIN,
        "second": _SEC,
    }
    fields = {
        key: _parse_kw_field(spec, effective[key], f"invalid cron field {key}={effective[key]!r}")
        for key, spec in specs.items()
    }
    day, dow = fields["day"], fields["day_of_week"]
    return _Parsed(
        second=fields["second"],
        minute=fields["minute"],
        hour=fields["hour"],
        day=day,
        month=fields["month"],
        day_of_week=dow,
        year=fields["year"],
        and_days=True,
        day_restricted=not (day.star or day.is_full(_DAY)),
        dow_restricted=not (dow.star or dow.is_full(_DOW)),
    )


# ------------------------------------------------------------ croniter sub-expressions


def _emit(values: Iterable[int], spec: _Spec) -> str:
    ordered = sorted(set(values))
    if len(ordered) == spec.top - spec.lo + 1:
        return "*"
    # Explicit values only: croniter reads an equal range such as "5-5" as the whole
    # field, and its wrap-around ranges with steps are unreliable.
    return ",".join(str(v) for v in ordered)


def _nth_text(items: Iterable[tuple[int, int]]) -> str:
    return ",".join(f"l{wd}" if n == -1 else f"{wd}#{n}" for wd, n in items)


def _day_text(day: _Field) -> str:
    if day.nearest is not None:
        return f"{day.nearest}w"
    parts = [str(v) for v in sorted(day.values)]
    if day.last_day:
        parts.append("l")
    return ",".join(parts)


def _day_possible(day: _Field, months: frozenset[int]) -> bool:
    if day.last_day or day.nearest is not None:
        return True
    return any(d <= _MAX_MONTH_DAYS[m] for d in day.values for m in months)


def _build_sub_texts(p: _Parsed) -> list[tuple[str, str]]:
    """(day, day_of_week) croniter texts whose union is the schedule.

    croniter only handles one kind of day/day_of_week item per iterator correctly
    (mixing '#'/'L' with plain weekdays is rejected, and with day_or it intersects
    W/'#' with the other field), so the OR of the two fields and the OR inside a
    day_of_week list are built here as a union of iterators, each with one side '*'
    (expression form) or ANDed with day_or=False (fields form).
    """
    day, dow = p.day, p.day_of_week
    plain_dow = _emit(dow.values, _DOW) if dow.values else None
    if p.and_days:
        dow_text = _emit(dow.values, _DOW) if p.dow_restricted else "*"
        if not p.day_restricted:
            return [("*", dow_text)]
        texts: list[tuple[str, str]] = []
        if day.values or day.last_day:
            if _day_possible(day, p.month.values):
                texts.append((_day_text(day), dow_text))
        nth = [(wd, n) for wd, n in day.nth if not p.dow_restricted or wd in dow.values]
        if nth:
            texts.append(("*", _nth_text(nth)))
        return texts
    day_groups: list[str] = []
    if p.day_restricted and _day_possible(day, p.month.values):
        day_groups.append(_day_text(day))
    dow_groups: list[str] = []
    if p.dow_restricted:
        if plain_dow is not None:
            dow_groups.append(plain_dow)
        if dow.nth:
            dow_groups.append(_nth_text(dow.nth))
    if not p.day_restricted and not p.dow_restricted:
        return [("*", "*")]
    return [(text, "*") for text in day_groups] + [("*", text) for text in dow_groups]


def _never_fires_detail(p: _Parsed) -> str:
    reasons = []
    if p.day.values:
        days = ",".join(str(d) for d in sorted(p.day.values))
        months = ",".join(str(m) for m in sorted(p.month.values))
        reasons.append(f"day {days} does not occur in month {months}")
    if p.day.nth:
        reasons.append(f"day {p.day.token!r} never falls on day_of_week {p.day_of_week.token!r}")
    return "; ".join(reasons)


# ---------------------------------------------------------------------------- helpers


def _utc_naive(name: str, value: object) -> datetime:
    if not isinstance(value, datetime):
        raise InvalidValueError(f"{name} must be a timezone-aware datetime, got {value!r}")
    offset = value.utcoffset()
    if offset is None:
        raise InvalidValueError(
            f"{name} must be timezone-aware (e.g. datetime(..., tzinfo=ZoneInfo('UTC'))), "
            f"got naive {value.isoformat()}"
        )
    return (value.replace(tzinfo=None) - offset).replace(fold=0)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.replace(tzinfo=_UTC).isoformat()


def _from_iso(name: str, value: object) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidValueError(f"invalid CronTrigger state: {name} must be an ISO string")
    return _utc_naive(name, datetime.fromisoformat(value))


_FIXED_ZONE = re.compile(
    r"(Etc/)?(UTC|UCT|Universal|Zulu|Greenwich|GMT|GMT[+-]?0)|Etc/GMT[+-]1?[0-9]"
)
"""Zones whose offset never changes: UTC's aliases and the ``Etc/GMT±N`` zones."""


def _fixed_offset(zone: ZoneInfo) -> timedelta | None:
    """The offset of a zone that only ever has one (None for every other zone): its fire
    times need none of the DST handling (``_next_after`` is about twice as fast)."""
    if _FIXED_ZONE.fullmatch(zone.key or "") is None:
        return None
    offsets = {
        zone.utcoffset(datetime(year, month, 1)) for year in (1970, 2025) for month in (1, 7)
    }
    if len(offsets) != 1:  # pragma: no cover - a tz database that disagrees
        return None
    return offsets.pop()


def _fold1(wall: datetime) -> datetime:
    """``wall.replace(fold=1)``, at a third of its cost."""
    return datetime(
        wall.year, wall.month, wall.day, wall.hour, wall.minute, wall.second, wall.microsecond,
        fold=1,
    )  # fmt: skip


def _join_words(words: list[str]) -> str:
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " and " + words[-1]


def _step_of(values: frozenset[int], size: int) -> int | None:
    """N when values == {0, N, 2N, ...} and N divides size (N > 1)."""
    ordered = sorted(values)
    if len(ordered) < 2 or ordered[0] != 0:
        return None
    step = ordered[1]
    if size % step or ordered != list(range(0, size, step)):
        return None
    return step


# ---------------------------------------------------------------------------- trigger


class CronTrigger(Trigger):
    """Cron trigger backed by croniter, with the DST policy of this module's docstring.

    :param expression: crontab expression (5 fields, or 6 with seconds first, or a macro)
    :param fields: APScheduler-style fields (``year month day week day_of_week hour
        minute second``); exactly one of ``expression`` and ``fields`` must be given
    :param timezone: IANA time zone name the wall-clock times are read in
    :param start_time: earliest fire time (aware; default: now)
    :param end_time: latest fire time, inclusive (aware)
    :param hash_id: key spreading ``H`` fields (the job id); required when the
        expression uses ``H``, ignored otherwise
    :raises ValueError: on any invalid argument, naming the field and what is allowed
    """

    _expression: str | None
    _fields_given: dict[str, str] | None
    _timezone: str
    _zone: ZoneInfo
    _epoch: datetime  # 1970-01-01 in _zone: datetimes move by arithmetic from it
    _start: datetime  # naive UTC
    _end: datetime | None  # naive UTC
    _hash_id: str | None
    _last: datetime | None  # naive UTC, last fire time
    _parsed: _Parsed
    _subs: list[_Sub]
    _hour_all: bool
    _fixed: timedelta | None  # the zone's one offset, if it never changes (UTC ...)

    def __init__(
        self,
        expression: str | None = None,
        *,
        fields: Mapping[str, int | str | None] | None = None,
        timezone: str = "UTC",
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        hash_id: str | None = None,
    ) -> None:
        if (expression is None) == (fields is None):
            raise InvalidValueError(
                "CronTrigger needs exactly one of expression (e.g. '0 2 * * *') or "
                "fields (e.g. {'hour': 2})"
            )
        given: dict[str, str] | None = None
        if fields is not None:
            if not isinstance(fields, Mapping):
                raise InvalidValueError(f"fields must be a mapping, got {fields!r}")
            unknown = [key for key in fields if key not in _FIELD_KEYS]
            if unknown:
                raise InvalidValueError(
                    f"invalid cron fields: unknown field(s) {', '.join(map(repr, unknown))}; "
                    f"valid fields are {', '.join(_FIELD_KEYS)}"
                )
            given = {}
            for key, value in fields.items():
                if value is None:
                    continue
                if isinstance(value, bool) or not isinstance(value, (int, str)):
                    raise InvalidValueError(
                        f"invalid cron field {key}={value!r}: must be an int or a string"
                    )
                given[key] = str(value)
        start = (
            _utc_naive("start_time", start_time)
            if start_time is not None
            else datetime.now(_UTC).replace(tzinfo=None)
        )
        end = _utc_naive("end_time", end_time) if end_time is not None else None
        self._setup(expression, given, timezone, start, end, hash_id, None)

    def _setup(
        self,
        expression: str | None,
        given: dict[str, str] | None,
        timezone: str,
        start: datetime,
        end: datetime | None,
        hash_id: str | None,
        last: datetime | None,
    ) -> None:
        if not isinstance(timezone, str) or not timezone:
            raise InvalidValueError(f"timezone must be an IANA time zone name, got {timezone!r}")
        try:
            zone = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise InvalidValueError(
                f"unknown time zone {timezone!r} (expected an IANA name)"
            ) from None
        if hash_id is not None and not isinstance(hash_id, str):
            raise InvalidValueError(f"hash_id must be a string, got {hash_id!r}")
        if expression is not None:
            if not isinstance(expression, str):
                raise InvalidValueError(f"cron expression must be a string, got {expression!r}")
            parsed = _parse_expression(expression, hash_id)
            expression = expression.strip()
            if not expression.startswith("@"):
                expression = " ".join(expression.split())
            prefix = f"invalid cron expression {expression!r}"
        else:
            assert given is not None
            parsed = _parse_fields(given)
            prefix = (
                "invalid cron fields (" + ", ".join(f"{k}={v!r}" for k, v in given.items()) + ")"
            )

        texts = _build_sub_texts(parsed)
        if not texts:
            raise InvalidValueError(f"{prefix}: never fires ({_never_fires_detail(parsed)})")
        with_seconds = parsed.second is not None
        head: list[str] = []
        if with_seconds:
            assert parsed.second is not None
            head.append(_emit(parsed.second.values, _SEC))
        head += [_emit(parsed.minute.values, _MIN), _emit(parsed.hour.values, _HOUR)]
        month = _emit(parsed.month.values, _MONTH)
        year = None
        if parsed.year is not None and not parsed.year.is_full(_YEAR):
            year = _emit(parsed.year.values, _YEAR)
        origin = datetime(2000, 1, 1)
        times = _TimesOfDay(
            parsed.hour.values,
            parsed.minute.values,
            parsed.second.values if parsed.second is not None else (0,),
        )
        subs: list[_Sub] = []
        for day_text, dow_text in texts:
            parts = [*head, day_text, month, dow_text]
            if year is not None:
                parts.append(year)
            try:
                cron = croniter(
                    " ".join(parts),
                    origin,
                    ret_type=datetime,
                    day_or=not parsed.and_days,
                    second_at_beginning=with_seconds,
                    max_years_between_matches=300 if year is not None else 100,
                )
            except (CroniterError, ValueError) as exc:  # pragma: no cover - defensive
                raise InvalidValueError(f"{prefix}: {exc}") from None
            subs.append(_Sub(cron, times))
        if year is not None:
            assert parsed.year is not None
            probe_from = datetime(min(parsed.year.values), 1, 1) - _SECOND
            subs = [sub for sub in subs if sub.after(probe_from) is not None]
            if not subs:
                years = ",".join(str(y) for y in sorted(parsed.year.values))
                raise InvalidValueError(f"{prefix}: never fires in year(s) {years}")

        self._expression = expression
        self._fields_given = dict(given) if given is not None else None
        self._timezone = timezone
        self._zone = zone
        self._epoch = datetime(1970, 1, 1, tzinfo=zone)
        self._start = start
        self._end = end
        self._hash_id = hash_id
        self._last = last
        self._parsed = parsed
        self._subs = subs
        self._hour_all = parsed.hour.is_full(_HOUR)
        self._fixed = _fixed_offset(zone)

    # ------------------------------------------------------------------ public API

    @property
    def expression(self) -> str:
        """The expression as given (whitespace normalized, macros kept).

        For the fields form: the effective fields in ``key=value`` form (display only;
        use :meth:`fields_dict` for the fields as given).
        """
        if self._expression is not None:
            return self._expression
        p = self._parsed
        parts = []
        if p.year is not None and not p.year.star:
            parts.append(f"year={p.year.token}")
        for name, field in (
            ("month", p.month),
            ("day", p.day),
            ("day_of_week", p.day_of_week),
            ("hour", p.hour),
            ("minute", p.minute),
            ("second", p.second),
        ):
            assert field is not None
            parts.append(f"{name}={field.token}")
        return " ".join(parts)

    @property
    def timezone(self) -> str:
        """IANA name of the zone the wall-clock times are read in."""
        return self._timezone

    @property
    def hash_id(self) -> str | None:
        return self._hash_id

    @property
    def start_time(self) -> datetime:
        return self._start.replace(tzinfo=_UTC)

    @property
    def end_time(self) -> datetime | None:
        return None if self._end is None else self._end.replace(tzinfo=_UTC)

    @property
    def last_fire_time(self) -> datetime | None:
        return None if self._last is None else self._last.replace(tzinfo=_UTC)

    def fields_dict(self) -> dict[str, str] | None:
        """The fields as given (stringified) for the fields form; None for an expression."""
        return None if self._fields_given is None else dict(self._fields_given)

    def next(self) -> datetime | None:
        if self._last is not None:
            bound = self._last
        elif self._start.microsecond:
            bound = self._start.replace(microsecond=0)
        else:
            bound = self._start - _SECOND
        fire = self._next_after(bound)
        if fire is None or (self._end is not None and fire > self._end):
            return None
        self._last = fire
        return _EPOCH_UTC + (fire - _EPOCH)

    def describe(self) -> str:
        """Plain-English description, or ``Cron '<expression>' (<zone>)`` when complex."""
        text = self._describe()
        if text is None:
            return f"Cron {self.expression!r} ({self._timezone})"
        return f"{text} ({self._timezone})"

    def __getstate__(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "expression": self._expression,
            "fields": None if self._fields_given is None else dict(self._fields_given),
            "timezone": self._timezone,
            "start_time": _iso(self._start),
            "end_time": _iso(self._end),
            "hash_id": self._hash_id,
            "last_fire_time": _iso(self._last),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        if not isinstance(state, Mapping) or state.get("version") != _STATE_VERSION:
            version = state.get("version") if isinstance(state, Mapping) else None
            raise InvalidValueError(
                f"cannot restore CronTrigger state version {version!r} "
                f"(this version reads {_STATE_VERSION})"
            )
        expression = state.get("expression")
        fields = state.get("fields")
        if (expression is None) == (fields is None):
            raise InvalidValueError("invalid CronTrigger state: needs expression or fields")
        given = None if fields is None else {str(k): str(v) for k, v in fields.items()}
        start = _from_iso("start_time", state.get("start_time"))
        if start is None:
            raise InvalidValueError("invalid CronTrigger state: start_time is missing")
        self._setup(
            expression,
            given,
            state.get("timezone", "UTC"),
            start,
            _from_iso("end_time", state.get("end_time")),
            state.get("hash_id"),
            _from_iso("last_fire_time", state.get("last_fire_time")),
        )

    def __deepcopy__(self, memo: dict[int, Any]) -> CronTrigger:
        clone = CronTrigger.__new__(type(self))
        clone.__dict__.update(self.__dict__)  # all immutable except the iterators
        clone._fields_given = copy.deepcopy(self._fields_given, memo)
        clone._subs = [sub.clone() for sub in self._subs]
        return clone

    def __repr__(self) -> str:
        if self._expression is not None:
            parts = [repr(self._expression)]
        else:
            parts = [f"fields={self._fields_given!r}"]
        parts.append(f"timezone={self._timezone!r}")
        parts.append(f"start_time={_iso(self._start)!r}")
        if self._end is not None:
            parts.append(f"end_time={_iso(self._end)!r}")
        if self._hash_id is not None:
            parts.append(f"hash_id={self._hash_id!r}")
        if self._last is not None:
            parts.append(f"last_fire_time={_iso(self._last)!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    # ------------------------------------------------------------------ internals

    def _wall_after(self, x: datetime) -> datetime | None:
        """First matching naive wall-clock time strictly after ``x``."""
        subs = self._subs
        if len(subs) == 1:
            return subs[0].after(x)
        best: datetime | None = None
        for sub in subs:
            head = sub.cached_after(x)
            if head is not None and (best is None or head < best):
                best = head
        return best

    def _offset_at(self, instant: datetime) -> timedelta:
        zone = self._zone
        offset = zone.fromutc(instant.replace(tzinfo=zone)).utcoffset()
        assert offset is not None
        return offset

    def _transition(self, lo: datetime, hi: datetime, after: timedelta) -> datetime:
        """The instant in (lo, hi] (naive UTC, whole seconds) where the offset becomes
        ``after``; lo has the offset before the transition and hi the one after."""
        low, high = 0, int((hi - lo).total_seconds())
        while high - low > 1:
            mid = (low + high) // 2
            if self._offset_at(lo + timedelta(seconds=mid)) == after:
                high = mid
            else:
                low = mid
        return lo + timedelta(seconds=high)

    def _instant(self, wall: datetime) -> datetime:
        """Naive UTC instant of a matching wall time (first pass; gap -> its end)."""
        zone = self._zone
        off0 = zone.utcoffset(wall)
        assert off0 is not None
        instant = wall - off0
        # It exists (ambiguous: fold=0 is the first pass) iff that instant reads back as the
        # same wall time: in a gap, fold=0 carries the offset before the transition, and the
        # instant it gives is after it.
        epoch = self._epoch
        if zone.fromutc(epoch + (instant - _EPOCH)) - epoch == wall - _EPOCH:
            return instant
        off1 = zone.utcoffset(_fold1(wall))
        assert off1 is not None
        return self._transition(wall - off1, instant, off1)

    def _next_after(self, a: datetime) -> datetime | None:
        """First fire instant strictly after ``a`` (naive UTC, whole seconds)."""
        fixed = self._fixed
        if fixed is not None:
            # No gap, no repeat: the wall time is the instant plus the one offset.
            first = self._wall_after(a + fixed)
            return None if first is None else first - fixed
        zone = self._zone
        local = zone.fromutc(self._epoch + (a - _EPOCH))
        if local.fold:
            return self._next_in_second_pass(a, local.replace(tzinfo=None))
        off0 = local.utcoffset()
        assert off0 is not None
        wall = a + off0
        first = self._wall_after(wall)
        best = None if first is None else self._instant(first)
        if not self._hour_all:
            return best
        off1 = zone.utcoffset(_fold1(wall))
        assert off1 is not None
        if off0 <= off1:
            return best
        # a is in the first pass of a repeated hour and every hour matches: the
        # repeated wall times from the start of the repeat up to a's wall time fire
        # again in the second pass, which starts at the transition.
        transition = self._transition(a, a + (off0 - off1), off1)
        nxt = self._wall_after(transition + off1 - _SECOND)
        if nxt is not None and nxt <= wall:
            candidate = nxt - off1
            if best is None or candidate < best:
                best = candidate
        return best

    def _next_in_second_pass(self, a: datetime, wall: datetime) -> datetime | None:
        """Like _next_after, for ``a`` in the second pass of a repeated hour."""
        zone = self._zone
        off0 = zone.utcoffset(wall.replace(fold=0))
        off1 = zone.utcoffset(wall)  # wall has fold=1
        assert off0 is not None and off1 is not None
        shift = off0 - off1
        if self._hour_all:
            nxt = self._wall_after(wall)
            if nxt is None:
                return None
            o0 = zone.utcoffset(nxt)
            o1 = zone.utcoffset(nxt.replace(fold=1))
            assert o0 is not None and o1 is not None
            if o0 > o1 and nxt - o1 - a < shift:  # still in this repeat: second pass
                return nxt - o1
            return self._instant(nxt)
        # Repeated wall times fire only in the first pass: resume at the end of the
        # repeat (the wall time the transition instant would have had before it).
        transition = self._transition(a - shift, a, off1)
        nxt = self._wall_after(transition + off0 - _SECOND)
        return None if nxt is None else self._instant(nxt)

    def _describe(self) -> str | None:
        p = self._parsed
        if any(
            f is not None and f.hashed
            for f in (p.second, p.minute, p.hour, p.day, p.month, p.day_of_week)
        ):
            return None
        if p.year is not None and not p.year.is_full(_YEAR):
            return None
        seconds = p.second.values if p.second is not None else frozenset({0})
        minutes, hours = p.minute.values, p.hour.values
        every_hour = len(hours) == 24
        every_minute = len(minutes) == 60
        time: str | None = None
        at_time = False
        if len(hours) == 1 and len(minutes) == 1 and len(seconds) == 1:
            (h,), (m,), (s,) = hours, minutes, seconds
            time = f"At {h:02d}:{m:02d}" + (f":{s:02d}" if s else "")
            at_time = True
        elif seconds == {0}:
            if every_hour and every_minute:
                time = "Every minute"
            elif every_hour and (step := _step_of(minutes, 60)) is not None:
                time = f"Every {step} minutes"
            elif len(minutes) == 1:
                (m,) = minutes
                suffix = f" at minute {m}" if m else ""
                if every_hour:
                    time = "Every hour" + suffix
                elif (step := _step_of(hours, 24)) is not None:
                    time = f"Every {step} hours" + suffix
        elif every_hour and every_minute:
            if len(seconds) == 60:
                time = "Every second"
            elif (step := _step_of(seconds, 60)) is not None:
                time = f"Every {step} seconds"
        if time is None:
            return None

        day, dow = p.day, p.day_of_week
        if day.last_day or day.nearest is not None or day.nth or dow.nth:
            return None
        month_all = len(p.month.values) == 12
        when: str | None = None
        if not p.day_restricted and not p.dow_restricted:
            if month_all:
                when = "every day" if at_time else ""
            elif len(p.month.values) == 1:
                (month,) = p.month.values
                when = f"every day in {_MONTH_LABELS[month]}"
        elif p.dow_restricted and not p.day_restricted and month_all:
            days = sorted(dow.values)
            if len(days) >= 3 and days == list(range(days[0], days[-1] + 1)):
                when = f"on {_DAY_LABELS[days[0]]} through {_DAY_LABELS[days[-1]]}"
            else:
                when = "on " + _join_words([_DAY_LABELS[d] for d in days])
        elif p.day_restricted and not p.dow_restricted:
            days_of_month = sorted(day.values)
            if month_all:
                label = "day" if len(days_of_month) == 1 else "days"
                numbers = _join_words([str(d) for d in days_of_month])
                when = f"on {label} {numbers} of the month"
            elif len(p.month.values) == 1 and len(days_of_month) == 1:
                (month,) = p.month.values
                when = f"on {_MONTH_LABELS[month]} {days_of_month[0]}"
        if when is None:
            return None
        return f"{time} {when}" if when else time
