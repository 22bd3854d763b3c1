"""Benchmark: our TaskScheduler on PostgreSQL, in 1 process and in 3 processes sharing the store.

    python bench/pg.py [--quick] [--dsn postgresql://user@host:port/db] [--out FILE]
                       [--counts 20,100] [--processes 1,3] [--repeat K] [--src SRC_DIR]
                       [--variant NAME=SRC_DIR ...] [--loop asyncio|trio]

Every cell runs its processes fresh (``_pg_worker.py``) on a fresh PostgreSQL schema, dropped
afterwards. N interval schedules of 1 s fire together each second; over a fixed window, once
every process has started, the cell measures runs per second, each job's coverage of its fires,
duplicated fires, start lateness, and CPU per run of the workers and of the PostgreSQL backends
that serve them. The last count is well past what the machine can run each second: its runs
per second is the throughput at saturation. ``--variant`` runs every cell also with our package
from another src/ directory, interleaved (same run: compare ratios, not runs). Prints a Markdown
table; writes JSON (``bench/results/pg-latest.json``). See ``bench/README.md`` for what each
number means.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]
from _common import BOUNDARY_LEAD, aligned_start, percentile, seconds_until
from run import busy_cpu_seconds, git_info, log, machine_info, median_of, write_report

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORKER = BENCH / "_pg_worker.py"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_OUT = BENCH / "results" / "pg-latest.json"
SCHEMA_PREFIX = "bench_pg_"
PG_PORT = 5432
"""The server's port when the DSN names none."""
METER_PERIOD = 0.5
"""Seconds between two samples of the backends' CPU during the window."""
FIRST_FIRE_LEAD = 1.0
"""Seconds from launching a cell's processes to the first fire of every schedule (they are
not started by then: the first fire runs when they are, as a fire missed while down)."""
READY_TIMEOUT = 300.0
"""Seconds a cell's processes may take to start before the cell fails."""
STOP_TIMEOUT = 120.0
"""Seconds past its planned end a cell's processes may take before they are killed."""
EPSILON = 1e-3
"""Seconds of slack when a fire time is compared with a window boundary (fires are whole)."""
LOG_LEVELS = ("WARNING", "ERROR", "CRITICAL", "Traceback")
"""Lines of a worker's stderr that count as log messages worth reporting."""
SAMPLE_LINES = 5
SUMMED = (
    "duplicated_fires",
    "history_mismatches",
    "log_lines",
    "history_missing",
    "history_extra",
)
"""Fields added up over the repeats of a cell, not their median: one duplicate shows."""
OURS = "ours"
"""The name of the code under test by default: the installed package, or ``--src``."""
APS4 = "aps4"
"""The variant that runs raw APScheduler 4.0.0a6 on the same PostgreSQL (unless --no-aps4):
the ratios table gives ours / raw APScheduler 4, measured in the same run."""
RUNS_TABLE = "task_scheduler_runs"
"""The run history's table in the store's schema, in versions that keep one there."""


@dataclass(frozen=True)
class Variant:
    """A version of our package under test: a name, and the src/ directory it is imported
    from (None: the installed one, i.e. this checkout's src/)."""

    name: str
    src: Path | None
    target: str = "ours"
    """What the workers run: ``ours`` (a TaskScheduler) or ``aps4`` (a raw AsyncScheduler of
    APScheduler 4.0.0a6 on its own SQLAlchemyDataStore and AsyncpgEventBroker)."""

    def expected_dir(self) -> Path:
        """Where its package must be imported from."""
        return (self.src if self.src is not None else ROOT / "src").resolve()


@dataclass(frozen=True)
class Plan:
    """The sizes and durations of one suite run."""

    mode: str
    counts: tuple[int, ...]
    """Schedules per cell; the last one is meant to saturate the processes."""
    processes: tuple[int, ...]
    warmup: int
    """Seconds from the moment every process has started to the window."""
    window: int
    tail: int
    """Seconds the processes keep running after the window: late runs of its fires count."""
    loop: str = "asyncio"
    """The event loop the workers run on: ``asyncio`` or ``trio``."""


FULL = Plan("full", (20, 50, 100, 1_000), (1, 3), warmup=5, window=15, tail=3)
QUICK = Plan("quick", (20, 100, 500), (1, 3), warmup=3, window=5, tail=2)


# ---------------------------------------------------------------------------- PostgreSQL


def store_url(dsn: str, schema: str) -> str:
    """The store URL of ``dsn`` in ``schema``."""
    return urlunsplit(urlsplit(dsn)._replace(query=f"schema={schema}"))


def without_credentials(dsn: str) -> str:
    """``dsn`` without its user and password, for the report."""
    parts = urlsplit(dsn)
    host = parts.hostname or ""
    return urlunsplit(parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host))


def fetch_value(dsn: str, query: str) -> Any:
    """Run one statement on a connection of its own; the first value it returns."""

    async def fetch() -> Any:
        connection = await asyncpg.connect(dsn)
        try:
            return await connection.fetchval(query)
        finally:
            await connection.close()

    return asyncio.run(fetch())


def cpu_ticks(pid: int) -> int | None:
    """User plus system CPU of a live process, in clock ticks (Linux; None if unknown)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(") ")[2].split()
    return int(fields[11]) + int(fields[12])


def client_ports(pids: list[int], server_port: int) -> list[int]:
    """Local ports of the TCP connections that ``pids`` hold to ``server_port`` (Linux)."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue  # it has exited, or a descriptor closed while listed
        inodes.update(link[8:-1] for link in links if link.startswith("socket:["))
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if inode in inodes and int(remote.rpartition(":")[2], 16) == server_port:
                ports.append(int(local.rpartition(":")[2], 16))
    return ports


class BackendMeter:
    """CPU of the PostgreSQL backends that serve the workers' connections, from the window's
    first sample on: found by the workers' client ports in ``pg_stat_activity``, read from
    /proc (the server must run on this machine). A backend born later counts from 0; one that
    exits between two samples loses what it used since the one before."""

    def __init__(self, worker_pids: list[int], server_port: int) -> None:
        self.worker_pids = worker_pids
        self.server_port = server_port
        self.base: dict[int, int] = {}
        self.latest: dict[int, int] = {}

    async def sample(self, connection: Any) -> None:
        ports = client_ports(self.worker_pids, self.server_port)
        rows = await connection.fetch(
            "SELECT pid FROM pg_stat_activity WHERE client_port = ANY($1::int[])", ports
        )
        first = not self.latest
        for row in rows:
            ticks = cpu_ticks(row["pid"])
            if ticks is not None:
                self.base.setdefault(row["pid"], ticks if first else 0)
                self.latest[row["pid"]] = ticks

    def seconds(self) -> float:
        if not self.latest:
            return math.nan  # a server elsewhere: its processes are not visible here
        ticks = sum(self.latest[pid] - self.base[pid] for pid in self.latest)
        return ticks / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------- one cell


@dataclass
class Worker:
    process: subprocess.Popen[str]
    stderr: IO[bytes]
    """A file, not a pipe: a full pipe would block the worker while this process sleeps."""


def launch(params: dict[str, Any], count: int, src: Path | None) -> list[Worker]:
    """Start ``count`` worker processes with the same params. ``src``: import our package from
    that src/ directory instead of the installed one (first on PYTHONPATH)."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    workers = []
    for _ in range(count):
        stderr = tempfile.TemporaryFile()
        process = subprocess.Popen(
            [sys.executable, str(WORKER), json.dumps(params)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        workers.append(Worker(process, stderr))
    return workers


def wait_ready(workers: list[Worker], deadline: float) -> bool:
    """Wait until every worker has printed ``ready`` (False: one died or the deadline passed)."""
    for worker in workers:
        stdout = worker.process.stdout
        assert stdout is not None
        readable, _, _ = select.select([stdout], [], [], max(0.0, deadline - time.time()))
        if not readable or stdout.readline().strip() != "ready":
            return False
    return True


def open_window(workers: list[Worker], window_open: float) -> None:
    for worker in workers:
        stdin = worker.process.stdin
        assert stdin is not None
        try:
            stdin.write(f"{window_open}\n")
            stdin.flush()  # communicate() closes it
        except BrokenPipeError:
            pass  # it died: finish() reports it


def finish(worker: Worker, timeout: float) -> tuple[dict[str, Any] | None, str]:
    """Wait for a worker: its result (None if it failed) and its stderr."""
    try:
        out, _ = worker.process.communicate(timeout=max(0.0, timeout))
    except subprocess.TimeoutExpired:
        worker.process.kill()
        out, _ = worker.process.communicate()
    worker.stderr.seek(0)
    err = worker.stderr.read().decode(errors="replace")
    worker.stderr.close()
    lines = out.strip().splitlines()
    if worker.process.returncode != 0 or not lines or not lines[-1].startswith("{"):
        return None, err
    result: dict[str, Any] = json.loads(lines[-1])
    return result, err


@dataclass(frozen=True)
class Window:
    """What the driver saw over the window: wall time, and CPU of the machine and of the
    PostgreSQL backends serving the workers."""

    wall_s: float
    busy_s: float
    postgres_s: float


async def watch(dsn: str, workers: list[Worker], window_open: float, window: int) -> Window:
    """Sleep through the window, sampling the CPU of the workers' backends every so often."""
    window_close = window_open + window
    meter = BackendMeter([w.process.pid for w in workers], urlsplit(dsn).port or PG_PORT)
    connection = await asyncpg.connect(dsn)
    try:
        await asyncio.sleep(seconds_until(window_open - BOUNDARY_LEAD))
        wall, busy = time.time(), busy_cpu_seconds()
        await meter.sample(connection)
        while time.time() + METER_PERIOD < window_close - BOUNDARY_LEAD:
            await asyncio.sleep(METER_PERIOD)
            await meter.sample(connection)
        await asyncio.sleep(seconds_until(window_close - BOUNDARY_LEAD))
        wall, busy = time.time() - wall, busy_cpu_seconds() - busy
        await meter.sample(connection)
    finally:
        await connection.close()
    return Window(wall, busy, meter.seconds())


async def history_rows(dsn: str, schema: str) -> list[tuple[str, int, bool]] | None:
    """(job id, scheduled fire time in µs, started) of every row of the cell's run history
    table; None if the version under test keeps no such table."""
    connection = await asyncpg.connect(dsn)
    try:
        table = f'"{schema}".{RUNS_TABLE}'
        if await connection.fetchval("SELECT to_regclass($1) IS NULL", table):
            return None
        rows = await connection.fetch(
            f"SELECT job_id, scheduled_at, started_at IS NOT NULL AS started FROM {table}"
        )
    finally:
        await connection.close()
    return [(row["job_id"], row["scheduled_at"], row["started"]) for row in rows]


def run_cell(plan: Plan, dsn: str, n: int, processes: int, variant: Variant) -> dict[str, Any]:
    """One measurement: ``processes`` fresh processes, ``n`` schedules, a fresh schema."""
    schema = f"{SCHEMA_PREFIX}{uuid.uuid4().hex[:12]}"
    t0 = aligned_start(FIRST_FIRE_LEAD)
    params = {
        "store": store_url(dsn, schema),
        "t0": t0,
        "n": n,
        "warmup": plan.warmup,
        "window": plan.window,
        "tail": plan.tail,
        "loop": plan.loop,
        "target": variant.target,
    }
    workers = launch(params, processes, variant.src)
    outputs: list[tuple[dict[str, Any] | None, str]] = []
    stored: list[tuple[str, int, bool]] | None = None
    try:
        if wait_ready(workers, time.time() + READY_TIMEOUT):
            # A whole second from t0, as every fire: the window opens warmup s after the last
            # process has started.
            window_open = float(math.ceil(time.time() + plan.warmup))
            open_window(workers, window_open)
            seen = asyncio.run(watch(dsn, workers, window_open, plan.window))
            deadline = window_open + plan.window + plan.tail + STOP_TIMEOUT
        else:
            window_open, seen = math.nan, Window(math.nan, math.nan, math.nan)
            for worker in workers:
                worker.process.kill()
            deadline = time.time()
        for worker in workers:
            outputs.append(finish(worker, deadline - time.time()))
        stored = asyncio.run(history_rows(dsn, schema))  # every process has stopped
    finally:
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait()
        fetch_value(dsn, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    result = analyse(plan, n, window_open, outputs, seen)
    if "error" in result:
        return result
    imported = {r["task_scheduler_package"] for r, _ in outputs if r is not None}
    wrong = [f for f in imported if not Path(f).resolve().is_relative_to(variant.expected_dir())]
    if wrong:
        expected = variant.expected_dir()
        return {"error": f"{variant.name} imported {sorted(wrong)}, not from {expected}"}
    return {"variant": variant.name, **result, **stored_history(outputs, stored)}


def stored_history(
    outputs: list[tuple[dict[str, Any] | None, str]], stored: list[tuple[str, int, bool]] | None
) -> dict[str, Any]:
    """The run history the processes wrote to the store, against the runs their job saw over
    the whole cell: rows, rows of started runs, and runs missing from it or only in it."""
    if stored is None:
        return {"history_rows": None}
    ran = {
        (job_id, round(fire * 1e6))
        for result, _ in outputs
        if result is not None
        for job_id, fire, *_ in result["runs"]
    }
    started = {(job_id, fire) for job_id, fire, was_started in stored if was_started}
    return {
        "history_rows": len(stored),
        "history_rows_started": sum(1 for *_, was_started in stored if was_started),
        "runs_total": len(ran),
        "history_missing": len(ran - started),
        "history_extra": len(started - ran),
    }


def log_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(LOG_LEVELS)]


def analyse(
    plan: Plan,
    n: int,
    window_open: float,
    outputs: list[tuple[dict[str, Any] | None, str]],
    seen: Window,
) -> dict[str, Any]:
    """Merge the processes' runs into the numbers of the cell."""
    logs = [line for _, err in outputs for line in log_lines(err)]
    failed = [err.strip().splitlines()[-3:] for result, err in outputs if result is None]
    if failed:
        return {"error": f"{len(failed)} process(es) failed: {failed}", "log_sample": logs[:9]}
    results = [result for result, _ in outputs if result is not None]
    window_close = window_open + plan.window
    wall_open, wall_close = window_open - BOUNDARY_LEAD, window_close - BOUNDARY_LEAD

    fires: Counter[tuple[str, float]] = Counter()
    ran_as: defaultdict[tuple[str, float], list[tuple[int, float, str]]] = defaultdict(list)
    per_job: Counter[str] = Counter({f"j{index}": 0 for index in range(n)})
    lateness: list[float] = []
    started_per_process: list[int] = []
    for process, result in enumerate(results):
        started = 0
        for job_id, fire, start, *row in result["runs"]:
            fires[job_id, fire] += 1
            ran_as[job_id, fire].append((process, start, row[0] if row else ""))
            if window_open - EPSILON <= fire < window_close - EPSILON:
                per_job[job_id] += 1
                lateness.append(start - fire)
            if wall_open <= start < wall_close:
                started += 1
        started_per_process.append(started)
    lateness.sort()
    started = sum(started_per_process)
    in_window = sum(per_job.values())
    worker_cpu = sum(r["window_last"]["cpu"] - r["window_first"]["cpu"] for r in results)
    span, busy, postgres = seen.wall_s, seen.busy_s, seen.postgres_s
    outcomes: defaultdict[str, int] = defaultdict(int)
    for result in results:
        for outcome, count in result["outcomes"].items():
            outcomes[outcome] += count

    def per_run_ms(seconds: float) -> float:
        return seconds / started * 1e3 if started else float("nan")

    return {
        "n": n,
        "processes": len(results),
        "window_s": plan.window,
        "runs_per_s": started / span,
        "fires_per_s": n,
        "started_in_window": started,
        "started_per_process": started_per_process,
        "fired_in_window": in_window,
        "expected": n * plan.window,
        "min_coverage": min(per_job.values()) / plan.window,
        "duplicated_fires": sum(count - 1 for count in fires.values() if count > 1),
        # Which fires ran twice: (job, fire time, [(process, start, the queued job's id)]);
        # the same id twice is one queued fire run twice, two ids a fire enqueued twice.
        "duplicates_sample": [
            (job_id, fire, ran_as[job_id, fire])
            for (job_id, fire), count in fires.items()
            if count > 1
        ][:5],
        "lateness_p50_ms": percentile(lateness, 0.50) * 1e3,
        "lateness_p99_ms": percentile(lateness, 0.99) * 1e3,
        "lateness_max_ms": (lateness[-1] if lateness else float("nan")) * 1e3,
        "cpu_ms_per_run_workers": per_run_ms(worker_cpu),
        "cpu_ms_per_run_postgres": per_run_ms(postgres),
        "cpu_ms_per_run_machine": per_run_ms(busy),
        "cpu_ms_per_run_total": per_run_ms(worker_cpu + postgres),
        "worker_cores": worker_cpu / span,
        "postgres_cores": postgres / span,
        "others_cpu_cores": max(0.0, busy - worker_cpu - (postgres or 0.0)) / span,
        "start_s_max": max(r["start_s"] for r in results),
        "stop_s_max": max(r["stop_s"] for r in results),
        "outcomes": dict(outcomes),
        "history_mismatches": sum(r["history_mismatches"] for r in results),
        "log_lines": len(logs),
        "log_sample": logs[:SAMPLE_LINES],
        "task_scheduler_from": results[0]["task_scheduler_from"],
        "task_scheduler_package": results[0]["task_scheduler_package"],
        "environment": results[0]["environment"],
    }


def summary(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"ERROR {result['error']}"
    return (
        f"{result['runs_per_s']:,.0f} runs/s, coverage {result['min_coverage']:.2f}, "
        f"{result['duplicated_fires']} duplicated, p99 {result['lateness_p99_ms']:,.0f} ms, "
        f"{result['cpu_ms_per_run_workers']:.2f} + {result['cpu_ms_per_run_postgres']:.2f} ms "
        f"CPU/run (workers + PostgreSQL), {result['log_lines']} log lines"
        + (
            ""
            if result.get("history_rows") is None
            else f", {result['history_rows']} history rows, {result['history_missing']} missing"
        )
    )


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The repeats of one cell: the median of each number, but totals of what must be 0."""
    merged = median_of(runs)
    good = [run for run in runs if "error" not in run]
    if good:
        for name in SUMMED:
            if all(run.get(name) is not None for run in good):
                merged[name] = sum(run[name] for run in good)
        if len(good) < len(runs):
            merged["failed_repeats"] = len(runs) - len(good)
    return merged


def cell_key(variant: str, n: int, processes: int) -> str:
    """``n20-p1`` for our code, ``NAME-n20-p1`` for a ``--variant``."""
    return f"n{n}-p{processes}" if variant == OURS else f"{variant}-n{n}-p{processes}"


def run_suite(
    plan: Plan, dsn: str, variants: list[Variant], repeat: int
) -> dict[str, dict[str, Any]]:
    cells = [(n, processes) for n in plan.counts for processes in plan.processes]
    runs: dict[str, list[dict[str, Any]]] = {
        cell_key(v.name, n, p): [] for n, p in cells for v in variants
    }
    for round_ in range(repeat):  # cells interleaved, so drift hits them all alike
        # The variants of a cell run back to back, in an order that turns each round.
        turn = variants[round_ % len(variants) :] + variants[: round_ % len(variants)]
        for n, processes in cells:
            for variant in turn:
                key = cell_key(variant.name, n, processes)
                which = f" (repeat {round_ + 1}/{repeat})" if repeat > 1 else ""
                log(f"{key}{which}: {n:,} schedules in {processes} process(es) ...")
                result = run_cell(plan, dsn, n, processes, variant)
                log(f"  {summary(result)}  [load {os.getloadavg()[0]:.2f}]")
                runs[key].append(result)
    return {key: merge(found) for key, found in runs.items()}


def ratios(
    plan: Plan, variants: list[Variant], results: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Per cell and ``--variant``, CPU per run of ours (workers + PostgreSQL) / the variant's:
    per repeat (the same round of the same run), their median, and the ratio of the medians."""
    found: dict[str, dict[str, Any]] = {}
    for variant in variants:
        if variant.name == OURS:
            continue
        for n in plan.counts:
            for processes in plan.processes:
                ours = results[cell_key(OURS, n, processes)]
                theirs = results[cell_key(variant.name, n, processes)]
                if "error" in ours or "error" in theirs:
                    continue
                field = "cpu_ms_per_run_total"
                pairs = zip(
                    ours.get("repeats", [ours]), theirs.get("repeats", [theirs]), strict=True
                )
                each = [
                    a[field] / b[field]
                    for a, b in pairs
                    if "error" not in a and "error" not in b and b[field]
                ]
                found[f"{variant.name}-n{n}-p{processes}"] = {
                    "variant": variant.name,
                    "n": n,
                    "processes": processes,
                    "ours_ms": ours[field],
                    "variant_ms": theirs[field],
                    "ratio_of_medians": ours[field] / theirs[field] if theirs[field] else None,
                    "ratio_per_repeat": each,
                    "median_ratio": statistics.median(each) if each else None,
                }
    return found


# ---------------------------------------------------------------------------- the table


def _mark(result: dict[str, Any]) -> str:
    marks = ""
    if result["min_coverage"] < 0.99:
        marks += " ‡"
    return marks


def markdown(plan: Plan, results: dict[str, dict[str, Any]], several: bool) -> str:
    """The table; ``several``: more than one version of our code ran (a column says which)."""
    head = (
        "| schedules (fires/s) | processes | runs/s | min coverage | duplicated fires "
        "| lateness p50 / p99 / max (ms) | CPU/run, workers (ms) | CPU/run, PostgreSQL (ms) "
        "| cores: workers / PostgreSQL / others | start, slowest process (s) |"
    )
    rule = "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    if several:
        head, rule = "| code " + head, "|---" + rule
    lines = [head, rule]
    for key, result in results.items():
        code = f"| {result.get('variant', key)} " if several else ""
        if "error" in result:
            lines.append(f"{code}| | | error: {result['error'][:80]} | | | | | | | |")
            continue
        lines.append(
            f"{code}| {int(result['n']):,} | {int(result['processes'])} "
            f"| {result['runs_per_s']:,.0f}"
            f"{_mark(result)} | {result['min_coverage']:.2f} | {int(result['duplicated_fires'])} "
            f"| {result['lateness_p50_ms']:,.0f} / {result['lateness_p99_ms']:,.0f} / "
            f"{result['lateness_max_ms']:,.0f} | {result['cpu_ms_per_run_workers']:.2f} "
            f"| {result['cpu_ms_per_run_postgres']:.2f} | {result['worker_cores']:.2f} / "
            f"{result['postgres_cores']:.2f} / {result['others_cpu_cores']:.2f} "
            f"| {result['start_s_max']:.1f} |"
        )
    body = "\n".join(lines)
    notes = [
        ("‡", "some job ran fewer than 99 % of its fires: saturated, runs/s is the throughput."),
    ]
    used = [f"{mark} {text}" for mark, text in notes if f" {mark}" in body]
    return "\n".join([body, "", *used]) if used else body


def ratio_markdown(found: dict[str, dict[str, Any]]) -> str:
    """CPU per run, workers + PostgreSQL: ours against each ``--variant``, cell by cell."""
    lines = [
        "| schedules (fires/s) | processes | variant | CPU/run, ours (ms) | CPU/run, variant (ms) "
        "| ours / variant, per repeat | median of those |",
        "|---:|---:|---|---:|---:|---|---:|",
    ]
    for row in found.values():
        each = ", ".join(f"{value:.2f}" for value in row["ratio_per_repeat"])
        median = "—" if row["median_ratio"] is None else f"{row['median_ratio']:.2f}"
        lines.append(
            f"| {row['n']:,} | {row['processes']} | {row['variant']} | {row['ours_ms']:.2f} "
            f"| {row['variant_ms']:.2f} | {each} | {median} |"
        )
    return "\n".join(lines)


def machine_line(machine: dict[str, Any], results: dict[str, dict[str, Any]]) -> str:
    env: dict[str, Any] = next(
        (r["environment"] for r in results.values() if "environment" in r), {}
    )
    packages = env.get("packages", {})
    return (
        f"{machine['cpu_model']}, {machine['cpus_usable']} usable of {machine['cpu_count']} "
        f"cores, {machine['mem_total']}, {machine['system']}, load {machine['load_average'][0]:.2f}"
        f"; PostgreSQL {machine.get('postgresql', '?')} on the same machine (loopback); "
        f"Python {env.get('python')}; apscheduler {packages.get('apscheduler')}, "
        f"sqlalchemy {packages.get('sqlalchemy')}, asyncpg {packages.get('asyncpg')}"
    )


def background(results: dict[str, dict[str, Any]]) -> str:
    """How busy the rest of the machine was during the windows: median and worst, in cores."""
    loads = sorted(r["others_cpu_cores"] for r in results.values() if "others_cpu_cores" in r)
    if not loads:
        return "unknown"
    return f"median {loads[len(loads) // 2]:.2f} cores, worst {loads[-1]:.2f} cores"


def counts_arg(text: str) -> tuple[int, ...]:
    values = tuple(int(part) for part in text.split(","))
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"want positive comma-separated numbers, got {text!r}")
    return values


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~2 minutes: shorter windows")
    parser.add_argument("--dsn", default=DEFAULT_DSN, help="PostgreSQL database to use")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument("--counts", type=counts_arg, help="schedules per cell, e.g. 20,100")
    parser.add_argument("--processes", type=counts_arg, help="processes per cell, e.g. 1,3")
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell (median kept)")
    parser.add_argument(
        "--src", type=Path, help="run our package from this src/ directory (e.g. a snapshot)"
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=SRC",
        help="also run every cell with our package from another src/ directory (repeatable)",
    )
    parser.add_argument(
        "--loop", choices=("asyncio", "trio"), default="asyncio", help="the workers' event loop"
    )
    parser.add_argument(
        "--no-aps4",
        action="store_true",
        help=f"skip the cells of raw APScheduler 4 on the same store (variant {APS4!r})",
    )
    args = parser.parse_args(argv)

    plan = QUICK if args.quick else FULL
    if args.loop != plan.loop:
        plan = Plan(**{**asdict(plan), "loop": args.loop})
    if args.counts:
        plan = Plan(**{**asdict(plan), "counts": args.counts})
    if args.processes:
        plan = Plan(**{**asdict(plan), "processes": args.processes})
    if args.src is not None and not (args.src / "library").is_dir():
        sys.exit(f"--src wants a src/ directory holding library/, got {args.src}")
    src = args.src.resolve() if args.src is not None else None
    variants = [Variant(OURS, src)]
    for text in args.variant:
        name, sep, where = text.partition("=")
        if not sep or not name or name in {v.name for v in variants} or "/" in name:
            sys.exit(f"--variant wants NAME=SRC_DIR with a new name, got {text!r}")
        if not (Path(where) / "library").is_dir():
            sys.exit(f"--variant wants a src/ directory holding library/, got {where!r}")
        if name == APS4:
            sys.exit(f"--variant: the name {APS4!r} is raw APScheduler 4's (--no-aps4 skips it)")
        variants.append(Variant(name, Path(where).resolve()))
    if not args.no_aps4:
        if plan.loop != "asyncio":
            sys.exit("raw APScheduler 4's SQL store runs on asyncio only: add --no-aps4")
        variants.append(Variant(APS4, src, target=APS4))
    machine, git = machine_info(), git_info()
    machine["postgresql"] = fetch_value(args.dsn, "SHOW server_version")
    begin = time.perf_counter()
    results = run_suite(plan, args.dsn, variants, max(1, args.repeat))
    table = markdown(plan, results, several=len(variants) > 1)
    compared = ratios(plan, variants, results)
    if compared:
        table += "\n\n" + ratio_markdown(compared)
    report = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": plan.mode,
        "plan": asdict(plan),
        "repeat": max(1, args.repeat),
        "duration_s": round(time.perf_counter() - begin, 1),
        "machine": machine,
        "git": git,
        "src": str(src) if src is not None else None,
        "variants": {v.name: str(v.src) if v.src else None for v in variants},
        "database": without_credentials(args.dsn),
        "results": results,
        "ratios": compared,
        "table_markdown": table,
    }
    write_report(args.out, report)
    print(f"Machine: {machine_line(machine, results)}")
    print(f"Other processes' CPU during the windows: {background(results)}\n")
    print(table)
    print(f"\n{plan.mode} run in {report['duration_s']:.0f} s; JSON: {args.out}")
    bad = any(
        "error" in r or r["duplicated_fires"] or r.get("failed_repeats")
        for r in results.values()
        if r.get("variant") != APS4  # 4.0.0a6's own duplicates are its known defects
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
