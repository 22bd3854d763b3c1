"""Differential test: CronTrigger against croniter plus a brute-force DST oracle.

For a few hundred seeded random expressions and five zones, the fire times of
:class:`CronTrigger` must equal an independent oracle: croniter enumerating naive
wall-clock times, each mapped to instants in the simplest way the documented policy
allows (round trips through zoneinfo, gaps resolved by scanning minute by minute).
In UTC the output must equal croniter's own iteration exactly, and wherever the
output differs from plain "wall time -> fold=0 instant" mapping the difference must
be one of the documented DST exceptions.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter  # type: ignore[import-untyped]

from library.components.scheduling.task_scheduler._cron import CronTrigger

UTC = timezone.utc
ZONES = ["UTC", "America/New_York", "Europe/London", "Australia/Lord_Howe", "America/Santiago"]
YEAR = 2026
YEAR_CAP = 80  # fires compared from January 1st, per expression and zone
WINDOW = timedelta(hours=14)  # around each DST transition of the zone
SEED = 20260308
N_EXPRESSIONS = 240


@dataclass(frozen=True)
class Case:
    ours: str  # expression given to CronTrigger
    oracle: str  # the same schedule in croniter's own syntax
    six: bool  # seconds first
    hour_all: bool  # hour field matches every hour (both passes of a repeat fire)


def _pick_range(rng: random.Random, lo: int, hi: int) -> tuple[int, int]:
    a = rng.randint(lo, hi - 1)
    return a, rng.randint(a + 1, hi)


def _gen_minute(rng: random.Random, sparse: bool) -> str:
    kind = rng.randrange(6)
    if kind == 0:
        return str(rng.randint(0, 59))
    if kind == 1:
        return ",".join(str(v) for v in sorted(rng.sample(range(60), rng.randint(2, 3))))
    if kind == 2:
        a, b = _pick_range(rng, 0, 59)
        b = min(b, a + 4)
        return f"{a}-{b}"
    if kind == 3:
        return f"*/{rng.choice([10, 15, 20, 30] if sparse else [5, 10, 15, 20, 30])}"
    if kind == 4:
        a = rng.randint(0, 20)
        return f"{a}-59/{rng.choice([15, 20, 30])}"
    return "0"


def _gen_hour(rng: random.Random) -> str:
    return rng.choice(
        [
            "*",
            "*",
            "*",
            str(rng.randint(0, 23)),
            str(rng.choice([0, 1, 2, 3, 23])),
            "1,2",
            "0-3",
            f"{rng.randint(0, 3)}-{rng.randint(4, 23)}",
            f"*/{rng.choice([2, 3, 4, 6])}",
            f"{rng.randint(0, 2)}-23/{rng.choice([2, 3, 5])}",
            "*/1",
            "0-23",
        ]
    )


def _gen_day(rng: random.Random) -> str:
    return rng.choice(
        [
            "*",
            "*",
            "*",
            "?",
            str(rng.randint(1, 31)),
            f"{rng.randint(1, 14)},{rng.randint(15, 31)}",
            "{}-{}".format(*_pick_range(rng, 1, 31)),
            f"*/{rng.choice([2, 5, 10])}",
            "L",
            f"{rng.randint(1, 31)}W",
            "1,L",
        ]
    )


def _gen_month(rng: random.Random) -> str:
    return rng.choice(
        [
            "*",
            "*",
            "*",
            str(rng.randint(1, 12)),
            "3,4,9,10,11",
            "{}-{}".format(*_pick_range(rng, 1, 12)),
            "*/3",
            "jan-jun",
            "mar,apr,sep,oct,nov",
        ]
    )


def _gen_dow(rng: random.Random) -> tuple[str, str]:
    """(ours, croniter's)"""
    special = rng.choice(
        [
            ("*", "*"),
            ("*", "*"),
            ("*", "*"),
            ("?", "?"),
            ("mon-fri", "mon-fri"),
            ("1-5/2", "1-5/2"),
            ("0", "0"),
            ("7", "7"),
            ("sat,sun", "sat,sun"),
            ("sun", "sun"),
            ("5#2", "5#2"),
            ("0#1", "0#1"),
            ("L5", "L5"),
            ("0L", "L0"),
            ("6L", "L6"),
            ("fri#5", "5#5"),
        ]
    )
    return special


def _generate(rng: random.Random) -> Case:
    six = rng.random() < 0.25
    hour = _gen_hour(rng)
    hour_all = hour in ("*", "*/1", "0-23")
    minute = _gen_minute(rng, sparse=six or hour_all)
    day = _gen_day(rng)
    month = _gen_month(rng)
    dow, dow_oracle = _gen_dow(rng)
    day_special = day in ("L", "1,L") or day.endswith("W")
    dow_special = "#" in dow or "L" in dow
    # croniter intersects W/'#' with the other day field under day_or; the OR of
    # such fields is covered by hand-checked cases in test_cron.py instead.
    if day_special and dow not in ("*", "?"):
        dow, dow_oracle = "*", "*"
    if dow_special and day not in ("*", "?"):
        day = "*"
    fields = [minute, hour, day, month]
    if six:
        second = rng.choice(["0", "30", "0,30", "*/20", "15,45", str(rng.randint(0, 59))])
        ours = " ".join([second, *fields, dow])
        oracle = " ".join([second, *fields, dow_oracle])
    else:
        ours = " ".join([*fields, dow])
        oracle = " ".join([*fields, dow_oracle])
    return Case(ours, oracle, six, hour_all)


def _cases() -> list[Case]:
    rng = random.Random(SEED)
    cases: list[Case] = []
    seen: set[str] = set()
    while len(cases) < N_EXPRESSIONS:
        case = _generate(rng)
        if case.ours in seen:
            continue
        try:  # skip schedules that never fire (they are rejected, see test_cron.py)
            CronTrigger(case.ours, start_time=datetime(YEAR, 1, 1, tzinfo=UTC))
        except ValueError as exc:
            assert "never fires" in str(exc), exc
            continue
        seen.add(case.ours)
        cases.append(case)
    return cases


CASES = _cases()


def _transitions(zone: str) -> list[datetime]:
    z = ZoneInfo(zone)
    found: list[datetime] = []
    t = datetime(YEAR, 1, 1, tzinfo=UTC)
    prev = t.astimezone(z).utcoffset()
    while t.year == YEAR:
        nxt = t + timedelta(hours=1)
        offset = nxt.astimezone(z).utcoffset()
        if offset != prev:
            lo, hi = t, nxt
            while hi - lo > timedelta(seconds=1):
                mid = lo + (hi - lo) / 2
                if mid.astimezone(z).utcoffset() == offset:
                    hi = mid
                else:
                    lo = mid
            found.append(hi)
            prev = offset
        t = nxt
    return found


TRANSITIONS = {zone: _transitions(zone) for zone in ZONES}
EXCEPTIONS: dict[str, int] = {}  # per zone: differences from plain fold=0 mapping
FIRED: dict[str, int] = {}  # per zone: fire times compared


def test_every_dst_zone_has_two_transitions_in_the_year() -> None:
    assert TRANSITIONS["UTC"] == []
    for zone in ZONES[1:]:
        assert len(TRANSITIONS[zone]) == 2, zone


def _walls(case: Case, start: datetime, stop: datetime) -> Iterator[datetime]:
    it = croniter(case.oracle, start, ret_type=datetime, second_at_beginning=case.six)
    while True:
        wall = it.get_next(datetime)
        if wall > stop:
            return
        yield wall


def _oracle(
    case: Case, zone: str, start: datetime, end: datetime, walls: list[datetime] | None = None
) -> tuple[list[datetime], dict[datetime, datetime]]:
    """Fire instants in [start, end] by brute force over croniter's naive wall times.

    ``walls`` (croniter's wall times covering the range, shared between zones) is
    computed when not given. Also returns the plain mapping
    {wall.replace(tzinfo=zone) as UTC: wall} of the same wall times, the baseline the
    DST exceptions are measured against.
    """
    z = ZoneInfo(zone)
    pad = timedelta(hours=3)  # more than any offset change
    wall_start = start.astimezone(z).replace(tzinfo=None) - pad
    wall_stop = end.astimezone(z).replace(tzinfo=None) + pad
    instants: set[datetime] = set()
    naive: dict[datetime, datetime] = {}
    if walls is None:
        walls = list(_walls(case, wall_start, wall_stop))
    for wall in walls:
        if not wall_start < wall <= wall_stop:
            continue
        first = wall.replace(tzinfo=z).astimezone(UTC)
        second = wall.replace(tzinfo=z, fold=1).astimezone(UTC)
        if start <= first <= end:
            naive[first] = wall
        if first.astimezone(z).replace(tzinfo=None) != wall:
            # Does not exist: the first instant whose wall time has passed it (the
            # zones' transitions are on whole minutes).
            instant = second.replace(second=0)
            while instant.astimezone(z).replace(tzinfo=None) < wall:
                instant += timedelta(minutes=1)
            instants.add(instant)
        else:
            instants.add(first)
            if second != first and case.hour_all:
                instants.add(second)
    return sorted(i for i in instants if start <= i <= end), naive


def _ours(case: Case, zone: str, start: datetime, end: datetime, cap: int) -> list[datetime]:
    trigger = CronTrigger(case.ours, timezone=zone, start_time=start, end_time=end)
    out: list[datetime] = []
    while len(out) < cap:
        fire = trigger.next()
        if fire is None:
            break
        out.append(fire)
    return out


def _check_exceptions(
    case: Case, zone: str, ours: list[datetime], naive: dict[datetime, datetime]
) -> int:
    """Every difference from the plain fold=0 mapping must be a documented DST exception."""
    z = ZoneInfo(zone)
    transitions = TRANSITIONS[zone]
    exceptions = 0
    for instant in set(ours) - set(naive):
        exceptions += 1
        if instant in transitions:  # a gap's wall times fire at the end of the gap
            continue
        # otherwise: the second pass of a repeated wall time, only when hour is '*'
        assert instant.astimezone(z).fold == 1 and case.hour_all, (case, zone, instant)
    for instant in set(naive) - set(ours):
        exceptions += 1
        # only wall times that do not exist: the fold=0 mapping moved them past the gap
        assert instant.astimezone(z).replace(tzinfo=None) != naive[instant], (case, zone)
        assert any(t <= instant < t + timedelta(hours=1) for t in transitions), (case, zone)
    return exceptions


def _pairs() -> list[tuple[int, Case]]:
    return list(enumerate(CASES))


@pytest.mark.parametrize(("index", "case"), _pairs(), ids=lambda v: getattr(v, "ours", str(v)))
def test_matches_oracle(index: int, case: Case) -> None:
    # From January 1st for one year (capped) ...
    windows = {}
    for zone in ZONES:
        z = ZoneInfo(zone)
        start = datetime(YEAR, 1, 1, tzinfo=z).astimezone(UTC)
        end = datetime(YEAR + 1, 1, 1, tzinfo=z).astimezone(UTC)
        ours = _ours(case, zone, start, end, YEAR_CAP)
        windows[zone] = (start, ours[-1] if len(ours) == YEAR_CAP else end, ours)
    # croniter's wall times do not depend on the zone: enumerate them once
    stop = max(last for _, last, _ in windows.values()).replace(tzinfo=None) + timedelta(days=1)
    walls = list(_walls(case, datetime(YEAR - 1, 12, 31), stop))
    for zone, (start, last, ours) in windows.items():
        expected, naive = _oracle(case, zone, start, last, walls)
        assert ours == expected, (case, zone)
        FIRED[zone] = FIRED.get(zone, 0) + len(ours)
        EXCEPTIONS[zone] = EXCEPTIONS.get(zone, 0) + _check_exceptions(case, zone, ours, naive)
    # no DST: exactly croniter's own iteration
    start, last, ours = windows["UTC"]
    plain = [w for w in walls if start.replace(tzinfo=None) <= w <= last.replace(tzinfo=None)]
    assert [w.replace(tzinfo=UTC) for w in plain] == ours, case
    # ... and around every DST transition of each zone, uncapped.
    for zone in ZONES:
        for transition in TRANSITIONS[zone]:
            lo, hi = transition - WINDOW, transition + WINDOW
            ours = _ours(case, zone, lo, hi, 100_000)
            expected, naive = _oracle(case, zone, lo, hi)
            assert ours == expected, (case, zone, transition)
            EXCEPTIONS[zone] += _check_exceptions(case, zone, ours, naive)


def test_zz_dst_exceptions_were_exercised() -> None:
    """Runs after test_matches_oracle (definition order): the comparisons were not
    vacuous, and the windows really crossed gaps and repeats in every DST zone."""
    if len(EXCEPTIONS) < len(ZONES):
        pytest.skip("needs the whole module to run")
    assert EXCEPTIONS["UTC"] == 0
    for zone in ZONES:
        assert FIRED[zone] > 50 * len(CASES), (zone, FIRED)
    for zone in ZONES[1:]:
        assert EXCEPTIONS[zone] > 20, (zone, EXCEPTIONS)


# The same-day step (``_TimesOfDay``) against croniter for every step, trigger by trigger.

HAND_PICKED = [
    "* * * * *", "*/7 * * * *", "0 * * * *", "30 2 * * *", "*/15 1-3 * * *", "0 */2 * * *",
    "* * * * * *", "*/20 */30 * * * *", "0 0 L * *", "0 9 15W * *", "0 8 * * 5#2",
    "0 8 * * 5L", "59 23 31 12 *", "0 0 29 2 *", "H H * * *", "H/15 * * * *",
    "*/10 22-2 * * fri-mon", "0 0 1,15 * 1", "5 0-6 * * *", "0 30 1-3 * * 0",
]  # fmt: skip
FAST_ZONES = ["UTC", "America/New_York", "Europe/London", "Australia/Lord_Howe",
              "America/Santiago", "Asia/Kolkata"]  # fmt: skip


def _fires(trigger: CronTrigger, count: int) -> tuple[list[datetime], int]:
    """The next ``count`` fires, and how many times croniter was asked."""
    asked = 0
    for sub in trigger._subs:
        get_next = sub.cron.get_next

        def counting(*args: object, _get_next: object = get_next, **kwargs: object) -> object:
            nonlocal asked
            asked += 1
            return _get_next(*args, **kwargs)  # type: ignore[operator]

        sub.cron.get_next = counting
    out = []
    for _ in range(count):
        fire = trigger.next()
        if fire is None:
            break
        out.append(fire)
    return out, asked


@pytest.mark.parametrize("zone", FAST_ZONES)
def test_same_day_steps_match_croniter_around_every_transition(zone: str) -> None:
    expressions = HAND_PICKED + [case.ours for case in CASES[:6]]
    starts = [t - timedelta(days=1) for t in TRANSITIONS.get(zone, _transitions(zone))]
    starts = starts or [datetime(YEAR, 3, 1, tzinfo=UTC)]
    fast_total = slow_total = 0
    for expression in expressions:
        for start in starts:
            kwargs = {"timezone": zone, "start_time": start, "hash_id": "job-1"}
            fast = CronTrigger(expression, **kwargs)  # type: ignore[arg-type]
            slow = CronTrigger(expression, **kwargs)  # type: ignore[arg-type]
            for sub in slow._subs:
                sub.times = None  # croniter for every step
            count = 100 if expression.count(" ") < 5 else 300  # seconds: more steps a day
            fast_fires, fast_asked = _fires(fast, count)
            slow_fires, slow_asked = _fires(slow, count)
            assert fast_fires == slow_fires, (expression, zone, start)
            # on, from the state in between (restored: it starts without a known day)
            restored = CronTrigger.__new__(CronTrigger)
            restored.__setstate__(fast.__getstate__())
            assert _fires(restored, 30)[0] == _fires(slow, 30)[0], (expression, zone, start)
            fast_total += fast_asked
            slow_total += slow_asked
    assert fast_total < slow_total / 2, (fast_total, slow_total)  # the same-day step is used


def test_same_day_steps_match_croniter_from_any_wall_time() -> None:
    # Wall times the DST walk asks about need not follow a fire: random ones, some on the
    # day of the previous answer, some on other days (which need not match).
    rng = random.Random(SEED)
    for expression in HAND_PICKED + [case.ours for case in CASES[:20]]:
        fast = CronTrigger(expression, hash_id="job-1")
        slow = CronTrigger(expression, hash_id="job-1")
        for sub in slow._subs:
            sub.times = None
        x = datetime(YEAR, 1, 1)
        for _ in range(300):
            if rng.random() < 0.5:
                x += timedelta(seconds=rng.randint(1, 3 * 86400))
            else:
                x -= timedelta(seconds=rng.randint(0, 86400))
            assert fast._wall_after(x) == slow._wall_after(x), (expression, x)


@pytest.mark.parametrize("zone", ZONES[1:])
def test_wall_times_map_to_instants_as_zoneinfo_says_around_transitions(zone: str) -> None:
    # The hot path tells a gap by arithmetic (the fold=0 instant reads back as another wall
    # time); here every minute (and a few seconds) around each transition, against the
    # plain rule: fold=0 and fold=1 offsets - equal, or ambiguous (first pass), or a gap.
    z = ZoneInfo(zone)
    trigger = CronTrigger("* * * * * *", timezone=zone)
    gaps = 0
    for transition in TRANSITIONS.get(zone) or _transitions(zone):
        wall = transition.astimezone(z).replace(tzinfo=None) - timedelta(hours=3)
        for step in range(6 * 60 * 4):
            w = wall + timedelta(seconds=15 * step)
            off0, off1 = z.utcoffset(w), z.utcoffset(w.replace(fold=1))
            assert off0 is not None and off1 is not None
            if off0 >= off1:
                assert trigger._instant(w) == w - off0, (zone, w)
            else:
                gaps += 1
                assert trigger._instant(w) == transition.replace(tzinfo=None), (zone, w)
    assert gaps > 0
