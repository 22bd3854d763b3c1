"""What every benchmark worker shares: the job body, the clocks, the statistics, the output.

Standard library only: the APScheduler 3 worker imports it from its own virtualenv.
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

STARTS: list[float] = []
"""Wall-clock start time of every run, appended by :func:`job`."""

QUEUED_JOBS = 10_000
ADD_CHUNK = 10_000
"""Adds per chunk whose rate is reported: a rate that falls chunk by chunk means O(n) adds."""
FAR_FUTURE_DAYS = 3650
"""Idle schedules first fire this many days from now: nothing fires while they are measured."""
POLL = 0.002
"""Seconds between checks of the run count while waiting for queued jobs."""
BOUNDARY_LEAD = 0.1
"""A measuring window opens and closes this many seconds before a fire second."""


async def job() -> None:
    """The job every scheduler runs: append one number to a list."""
    STARTS.append(time.time())


GC_PASSES: list[tuple[float, int, float]] = []
"""(wall time at its end, generation, seconds) of every garbage collection in this process."""
_gc_began = [0.0]


def _on_gc(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_began[0] = time.perf_counter()
    else:
        GC_PASSES.append((time.time(), info["generation"], time.perf_counter() - _gc_began[0]))


gc.callbacks.append(_on_gc)


def gc_result(since: float, until: float) -> dict[str, Any]:
    """The collector's passes between two wall times: full ones, and the longest pause."""
    passes = [(gen, seconds) for wall, gen, seconds in GC_PASSES if since <= wall <= until]
    full = [seconds for gen, seconds in passes if gen == 2]
    return {
        "gc_passes": len(passes),
        "gc_full_passes": len(full),
        "gc_full_ms": sum(full) * 1e3,
        "gc_longest_ms": max((seconds for _, seconds in passes), default=0.0) * 1e3,
    }


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted ``values`` (``fraction`` in 0..1)."""
    if not values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(values)))
    return values[rank - 1]


def aligned_start(lead: float = 2.0) -> float:
    """A whole second at least ``lead`` seconds from now: every schedule starts there."""
    return float(math.ceil(time.time() + lead))


def seconds_until(wall: float) -> float:
    """Seconds from now until the wall-clock time ``wall`` (0 if it has passed)."""
    return max(0.0, wall - time.time())


class Snapshot:
    """Process CPU time, run count and wall time, read together at a window boundary."""

    __slots__ = ("cpu", "runs", "wall")

    def __init__(self) -> None:
        self.cpu = time.process_time()
        self.runs = len(STARTS)
        self.wall = time.time()


def fire_result(t0: float, n: int, first: Snapshot, last: Snapshot, window: int) -> dict[str, Any]:
    """CPU per run and start lateness of the runs between two snapshots.

    All schedules fire at ``t0 + k`` seconds, so a run's fire time is the whole second (from
    ``t0``) at or before its start; this is exact while lateness stays under the 1 s interval,
    and ``fired`` below ``expected`` says when it did not.
    """
    starts = STARTS[first.runs : last.runs]
    lateness = sorted(start - (t0 + math.floor(start - t0 + 1e-5)) for start in starts)
    runs = len(starts)
    # Every run from the very first fire (the warm-up's too): the first seconds after start.
    from_first = sorted(
        start - (t0 + math.floor(start - t0 + 1e-5)) for start in STARTS[: last.runs]
    )
    return {
        "n": n,
        "window_s": window,
        "fired": runs,
        "expected": n * window,
        "cpu_us_per_run": (last.cpu - first.cpu) / runs * 1e6 if runs else math.nan,
        "cpu_share": (last.cpu - first.cpu) / (last.wall - first.wall),
        "lateness_p50_ms": percentile(lateness, 0.50) * 1e3,
        "lateness_p99_ms": percentile(lateness, 0.99) * 1e3,
        "lateness_max_ms": (lateness[-1] if lateness else math.nan) * 1e3,
        "lateness_p99_from_first_ms": percentile(from_first, 0.99) * 1e3,
        # From the first fire (a pass that delays the first one ends just after it).
        **gc_result(t0, last.wall),
    }


def queued_result(enqueue_s: float, run_s: float, cpu_s: float, runs: int) -> dict[str, Any]:
    """Throughput of ``runs`` pre-queued jobs: run phase, and enqueue plus run."""
    return {
        "jobs": runs,
        "enqueue_s": enqueue_s,
        "run_s": run_s,
        "jobs_per_s": runs / run_s,
        "jobs_per_s_with_enqueue": runs / (enqueue_s + run_s),
        "cpu_us_per_job": cpu_s / runs * 1e6,
    }


def rss_bytes() -> int:
    """Resident set size of this process, after a full garbage collection."""
    gc.collect()
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def adds_result(wanted: int, added: int, seconds: float, chunks: list[float]) -> dict[str, Any]:
    """Schedules added per second into a running scheduler (``chunks``: per ADD_CHUNK adds)."""
    return {
        "wanted": wanted,
        "added": added,
        "add_s": seconds,
        "adds_per_s": added / seconds,
        "chunk_adds_per_s": chunks,
        "complete": added == wanted,
    }


def bulk_result(
    n: int, declare_s: float, start_s: float, rss_before: int, rss_after: int
) -> dict[str, Any]:
    """Declare-then-start time, and resident memory per idle schedule."""
    return {
        "schedules": n,
        "declare_s": declare_s,
        "start_s": start_s,
        "total_s": declare_s + start_s,
        "rss_delta_mb": (rss_after - rss_before) / 2**20,
        "bytes_per_schedule": (rss_after - rss_before) / n,
    }


def versions(*names: str) -> dict[str, str]:
    """Installed versions of the named distributions (``"absent"`` when not installed)."""
    found: dict[str, str] = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def environment(*packages: str) -> dict[str, Any]:
    """The interpreter and package versions a worker ran with."""
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
        "packages": versions(*packages),
    }


def worker_main(
    measure: Callable[[dict[str, Any]], dict[str, Any]], packages: Sequence[str]
) -> None:
    """Run one measurement given as JSON in argv[1]; print its result as one JSON line."""
    params: dict[str, Any] = json.loads(sys.argv[1])
    result = measure(params)
    result["environment"] = environment(*packages)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
