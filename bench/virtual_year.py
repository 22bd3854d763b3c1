"""Wall time of a virtual year (or any span) of a ``* * * * *`` job under ``virtual_time``.

    python bench/virtual_year.py                         # a year, asyncio then trio
    python bench/virtual_year.py --days 30 --loop asyncio
    python bench/virtual_year.py --src /tmp/before/src   # our package from another src/

Each cell runs in a fresh subprocess. The job really runs at every fire and appends its
virtual ``scheduler.now()``; the run history keeps every run. Checked after the advance:
every minute ran once, in order, each at its own virtual instant, and the history's
``scheduled_at`` of the newest runs match them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent


async def _cell(days: float, zone: str) -> dict[str, object]:
    from zoneinfo import ZoneInfo

    from library.components.scheduling.task_scheduler import SchedulerConfig, TaskScheduler
    from library.components.scheduling.task_scheduler.testing import virtual_time

    scheduler = TaskScheduler(SchedulerConfig(timezone=zone, history_size=1000))
    seen: list[datetime] = []

    @scheduler.cron("* * * * *", id="minutely")
    async def minutely() -> None:
        seen.append(scheduler.now())

    start = datetime(2026, 1, 1, tzinfo=ZoneInfo(zone))
    async with virtual_time(scheduler, start=start, stall_timeout=300) as clock:
        began = time.perf_counter()
        cpu = time.process_time()
        await clock.advance(days=days)
        took = time.perf_counter() - began
        cpu = time.process_time() - cpu
        job = await scheduler.get_job("minutely")
        runs = await scheduler.get_runs("minutely", limit=1000)
    minutes = int(days * 1440)
    utc = timezone.utc
    expected = [start.astimezone(utc) + timedelta(minutes=i) for i in range(minutes + 1)]
    ok = [t.astimezone(utc) for t in seen] == expected and job.counts.success == minutes + 1
    ok = ok and [r.scheduled_at for r in runs] == [t for t in reversed(seen[-len(runs) :])]
    import library.components.scheduling.task_scheduler as package

    return {
        "package": str(Path(package.__file__).parents[4]),
        "days": days,
        "fires": len(seen),
        "wall_s": round(took, 2),
        "cpu_s": round(cpu, 2),
        "us_per_fire": round(took / len(seen) * 1e6, 1),
        "ok": ok,
    }


def _worker(days: float, loop: str, zone: str) -> None:
    import anyio

    result = anyio.run(_cell, days, zone, backend=loop)
    print(json.dumps({"loop": loop, **result}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=float, default=365)
    parser.add_argument("--loop", choices=["asyncio", "trio", "both"], default="both")
    parser.add_argument("--zone", default="UTC", help="the scheduler's timezone")
    parser.add_argument("--src", help="run our package from this src/ directory instead")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.days, args.loop, args.zone)
        return
    env = dict(os.environ)
    if args.src:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [args.src, env.get("PYTHONPATH")]))
    loops = ["asyncio", "trio"] if args.loop == "both" else [args.loop]
    failed = False
    for loop in loops:
        command = [sys.executable, str(Path(__file__)), "--worker", "--days", str(args.days)]
        command += ["--loop", loop, "--zone", args.zone]
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if out.returncode:
            print(out.stderr, file=sys.stderr)
            failed = True
            continue
        result = json.loads(out.stdout.strip().splitlines()[-1])
        failed = failed or not result["ok"]
        print(json.dumps(result))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
