"""How long one full garbage collection takes with a full in-memory run history.

    python bench/history_gc.py [--jobs 3000] [--runs 100]

Builds ``jobs`` histories of ``runs`` finished runs each (the default history size), once as
``RunRecord`` objects (what the history kept before) and once as the rows it keeps now, and
times ``gc.collect()`` over them. Everything alive before is frozen first, so only the history
is measured.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections import deque
from datetime import datetime, timedelta, timezone
from pathlib import Path

try:
    from library.components.scheduling.task_scheduler._models import Outcome
    from library.components.scheduling.task_scheduler._runs import RunRecord
except ImportError:  # a source checkout that is not installed: use its src/ directly
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from library.components.scheduling.task_scheduler._models import Outcome
    from library.components.scheduling.task_scheduler._runs import RunRecord


def histories(jobs: int, runs: int, *, rows: bool) -> list[deque[object]]:
    now = datetime.now(timezone.utc)
    made: list[deque[object]] = []
    seq = 0
    for job in range(jobs):
        history: deque[object] = deque(maxlen=runs)
        for run in range(runs):
            seq += 1
            record = RunRecord(seq, f"j{job}", 1, now + timedelta(seconds=run), now, now)
            record.outcome = Outcome.success
            history.appendleft(record.row() if rows else record)
        made.append(history)
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    gc.collect()
    gc.freeze()
    for rows in (False, True):
        kept = histories(args.jobs, args.runs, rows=rows)
        gc.collect()  # the first pass untracks the rows
        begin = time.perf_counter()
        gc.collect()
        seconds = time.perf_counter() - begin
        tracked = sum(gc.is_tracked(entry) for history in kept for entry in history)
        what = "rows (now)" if rows else "RunRecords (before)"
        print(f"{what}: full pass {seconds * 1e3:.1f} ms, {tracked:,} history entries tracked")
        del kept
        gc.collect()


if __name__ == "__main__":
    main()
