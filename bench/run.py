"""Benchmark: our TaskScheduler (asyncio, trio) vs raw APScheduler 4.0.0a6 vs APScheduler 3.11.

    python bench/run.py [--quick] [--aps3-python PATH] [--out FILE] [--repeat K]

Every measurement runs in a fresh subprocess. APScheduler 3 shares the import name
``apscheduler`` with 4, so it runs in its own virtualenv: ``--aps3-python``, or one this script
makes at ``bench/.venv-aps3``. Prints a Markdown table; writes JSON (``bench/results/latest.json``).
See ``bench/README.md`` for what each number means.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
APS4_WORKER = BENCH / "_aps4_worker.py"
APS3_WORKER = BENCH / "_aps3_worker.py"
APS3_VENV = BENCH / ".venv-aps3"
APS3_REQUIREMENT = "apscheduler>=3.11,<4"
DEFAULT_OUT = BENCH / "results" / "latest.json"


@dataclass(frozen=True)
class Column:
    """One scheduler under test: the interpreter and worker that run it, and fixed params."""

    key: str
    title: str
    worker: Path
    params: dict[str, Any]
    pythonpath: str | None = None
    """Our package from this src/ directory instead (``--variant``: compare code versions)."""


@dataclass(frozen=True)
class Plan:
    """The sizes and durations of one suite run."""

    mode: str
    fire_counts: tuple[int, ...]
    warmup: int
    window: int
    queued_jobs: int = 10_000
    memory_schedules: int = 100_000
    add_budget_s: float = 30.0
    startup_jobs: int = 10_000

    def cells(self) -> list[tuple[str, dict[str, Any], float]]:
        """(result key, worker params, timeout in seconds) for every measurement."""
        fire_timeout = self.warmup + self.window + 120
        cells: list[tuple[str, dict[str, Any], float]] = [
            (
                f"fires-{n}",
                {"metric": "fires", "n": n, "warmup": self.warmup, "window": self.window},
                fire_timeout,
            )
            for n in self.fire_counts
        ]
        cells += [
            ("queued", {"metric": "queued", "jobs": self.queued_jobs}, 300),
            (
                "adds",
                {
                    "metric": "adds",
                    "schedules": self.memory_schedules,
                    "budget_s": self.add_budget_s,
                },
                self.add_budget_s + 120,
            ),
            ("memory", {"metric": "bulk", "schedules": self.memory_schedules}, 300),
            ("startup", {"metric": "bulk", "schedules": self.startup_jobs}, 300),
        ]
        return cells


FULL = Plan(mode="full", fire_counts=(100, 1_000, 3_000), warmup=2, window=10)
QUICK = Plan(
    mode="quick",
    fire_counts=(100, 1_000, 3_000),
    warmup=1,
    window=3,
    memory_schedules=20_000,
    add_budget_s=5.0,
)


# ---------------------------------------------------------------------------- environment


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ensure_aps3_python(given: str | None) -> str:
    """The python of a virtualenv with APScheduler 3.11: given, or made at bench/.venv-aps3."""
    if given:
        python = given
    else:
        python = str(APS3_VENV / "bin" / "python")
        if not Path(python).exists():
            log(f"creating {APS3_VENV} with {APS3_REQUIREMENT} ...")
            subprocess.run([sys.executable, "-m", "venv", str(APS3_VENV)], check=True)
            subprocess.run(
                [python, "-m", "pip", "install", "--quiet", APS3_REQUIREMENT], check=True
            )
    version = subprocess.run(
        [python, "-c", "from importlib.metadata import version; print(version('apscheduler'))"],
        capture_output=True,
        text=True,
        check=True,
        env=child_env(aps3=True),
    ).stdout.strip()
    if not version.startswith("3."):
        sys.exit(f"{python} has APScheduler {version}, not 3.x: pass --aps3-python")
    return python


def child_env(*, aps3: bool) -> dict[str, str]:
    """The environment of a worker: no PYTHONPATH may leak APScheduler 4 into the 3.x venv."""
    env = dict(os.environ)
    if aps3:
        env.pop("PYTHONPATH", None)
    return env


def read_first(path: str, prefix: str) -> str | None:
    try:
        with open(path) as file:
            for line in file:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, kernel and load: what the numbers depend on."""
    return {
        "cpu_model": read_first("/proc/cpuinfo", "model name") or platform.processor(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mem_total": read_first("/proc/meminfo", "MemTotal"),
        "system": f"{platform.system()} {platform.release()}",
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
    }


def git_info() -> dict[str, Any]:
    """The commit measured, whether the tree had local changes, and a digest of src/ as run."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    digest = hashlib.sha256()
    for path in sorted((ROOT / "src").rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain")),
        "src_sha256": digest.hexdigest()[:16],
    }


# ---------------------------------------------------------------------------- running


def busy_cpu_seconds() -> float:
    """CPU seconds all processes on the machine have used since boot (Linux; else 0)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_cell(python: str, column: Column, params: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one measurement in a fresh subprocess, and note how busy other processes were."""
    busy, own, begin = busy_cpu_seconds(), children_cpu_seconds(), time.perf_counter()
    result = run_worker(python, column, params, timeout)
    elapsed = time.perf_counter() - begin
    others = busy_cpu_seconds() - busy - (children_cpu_seconds() - own)
    result["others_cpu_cores"] = round(max(0.0, others) / elapsed, 3)
    result["cell_s"] = round(elapsed, 2)
    return result


def run_worker(
    python: str, column: Column, params: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """Run one measurement in a fresh subprocess; its result, or ``{"error": ...}``."""
    args = [python, str(column.worker), json.dumps({**column.params, **params})]
    env = child_env(aps3=column.key == "aps3")
    if column.pythonpath is not None:
        env["PYTHONPATH"] = column.pythonpath
    try:
        done = subprocess.run(
            args,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = done.stderr.strip().splitlines()[-3:]
        return {"error": f"exit {done.returncode}: {' | '.join(tail)}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per numeric field, the median of the repeats; other fields from the first."""
    good = [run for run in runs if "error" not in run]
    if not good:
        return runs[0]
    merged = dict(good[0])
    for name, value in good[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            merged[name] = statistics.median(run[name] for run in good)
    if len(runs) > 1:
        merged["repeats"] = runs
    return merged


def all_columns(variants: list[str], telemetry: bool = False) -> list[Column]:
    """The standard columns, then per ``NAME=SRC`` variant one asyncio and one trio column
    running our package from that src/ directory (e.g. a snapshot of an earlier step); with
    ``telemetry``, ours on asyncio with Prometheus' run histograms on (``prom-asyncio``) and
    with OpenTelemetry's SDK providers set (``otel-asyncio``)."""
    columns = [
        Column("ours-asyncio", "ours asyncio", APS4_WORKER, {"target": "ours"}),
        Column("ours-trio", "ours trio", APS4_WORKER, {"target": "ours", "backend": "trio"}),
        Column("aps4", "raw APS4 a6", APS4_WORKER, {"target": "aps4"}),
        Column("aps3", "APS3 3.11", APS3_WORKER, {}),
    ]
    if telemetry:
        columns += [
            Column(
                "prom-asyncio",
                "ours asyncio, Prometheus on",
                APS4_WORKER,
                {"target": "ours", "telemetry": ["prometheus"]},
            ),
            Column(
                "otel-asyncio",
                "ours asyncio, OTel SDK on",
                APS4_WORKER,
                {"target": "ours", "telemetry": ["otel"]},
            ),
        ]
    for variant in variants:
        name, sep, src = variant.partition("=")
        if not sep or not name or not Path(src).is_dir():
            sys.exit(f"--variant wants NAME=SRC_DIR, got {variant!r}")
        src = str(Path(src).resolve())
        for backend in ("asyncio", "trio"):
            params = {"target": "ours", "backend": backend}
            key, title = f"{name}-{backend}", f"{name} {backend}"
            columns.append(Column(key, title, APS4_WORKER, params, src))
    return columns


def run_suite(
    plan: Plan,
    aps3_python: str,
    repeat: int,
    only: str | None,
    columns: list[Column],
) -> dict[str, Any]:
    results: dict[str, dict[str, Any]] = {}
    for key, params, timeout in plan.cells():
        if only and not any(part in key for part in only.split(",")):
            continue
        runs: dict[str, list[dict[str, Any]]] = {column.key: [] for column in columns}
        for _ in range(repeat):  # columns interleaved, so drift hits them all alike
            for column in columns:
                python = aps3_python if column.key == "aps3" else sys.executable
                result = run_cell(python, column, params, timeout)
                log(
                    f"{key:>12} {column.key:>12} {result['cell_s']:6.1f} s  "
                    f"{summary(key, result)}  [others: {result['others_cpu_cores']:.2f} cores]"
                )
                runs[column.key].append(result)
        results[key] = {name: median_of(found) for name, found in runs.items()}
    return {
        "columns": [column.key for column in columns],
        "titles": {column.key: column.title for column in columns},
        "pythonpaths": {column.key: column.pythonpath for column in columns if column.pythonpath},
        "results": results,
    }


def summary(key: str, result: dict[str, Any]) -> str:
    if "error" in result:
        return f"ERROR {result['error']}"
    if key.startswith("fires"):
        return (
            f"{result['cpu_us_per_run']:.1f} us/run, p99 {result['lateness_p99_ms']:.1f} ms, "
            f"{result['fired']}/{result['expected']} fired"
        )
    if key == "queued":
        return f"{result['jobs_per_s']:,.0f} jobs/s"
    if key == "adds":
        return f"{result['adds_per_s']:,.0f} adds/s ({result['added']:,} added)"
    return f"{result['bytes_per_schedule']:,.0f} B/schedule, {result['total_s']:.3f} s"


# ---------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Row:
    """A table row: which result field, how to show it, and which direction is better."""

    label: str
    key: str
    metric: str
    fmt: Callable[[float], str]
    better: str
    mark: Callable[[dict[str, Any]], str] = field(default=lambda result: "")


def _us(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def _ms(value: float) -> str:
    return f"{value:,.1f}"


def _int(value: float) -> str:
    return f"{value:,.0f}"


def _s(value: float) -> str:
    return f"{value:,.3f}"


def _overloaded(result: dict[str, Any]) -> str:
    return " ‡" if result["fired"] < 0.99 * result["expected"] else ""


def _partial(result: dict[str, Any]) -> str:
    return "" if result["complete"] else f" † ({int(result['added']):,})"


def rows(plan: Plan) -> list[Row]:
    table: list[Row] = []
    for n in plan.fire_counts:
        key = f"fires-{n}"
        table += [
            Row(
                f"CPU per fired run, N={n:,} (µs)", key, "cpu_us_per_run", _us, "lower", _overloaded
            ),
            Row(f"start lateness p50, N={n:,} (ms)", key, "lateness_p50_ms", _ms, "lower"),
            Row(f"start lateness p99, N={n:,} (ms)", key, "lateness_p99_ms", _ms, "lower"),
            Row(f"start lateness max, N={n:,} (ms)", key, "lateness_max_ms", _ms, "lower"),
            Row(
                f"start lateness p99 from the first fire, N={n:,} (ms)",
                key,
                "lateness_p99_from_first_ms",
                _ms,
                "lower",
            ),
            Row(
                f"full GC passes from the first fire, N={n:,}", key, "gc_full_passes", _int, "lower"
            ),
            Row(
                f"longest GC pause from the first fire, N={n:,} (ms)",
                key,
                "gc_longest_ms",
                _ms,
                "lower",
            ),
        ]
    jobs, schedules, startup = plan.queued_jobs, plan.memory_schedules, plan.startup_jobs
    table += [
        Row(f"pre-queued jobs run/s ({jobs:,}), run phase", "queued", "jobs_per_s", _int, "higher"),
        Row(
            "pre-queued jobs/s incl. enqueueing",
            "queued",
            "jobs_per_s_with_enqueue",
            _int,
            "higher",
        ),
        Row("CPU per queued job, enqueue + run (µs)", "queued", "cpu_us_per_job", _us, "lower"),
        Row(
            f"memory per idle schedule, {schedules:,} (B, RSS)",
            "memory",
            "bytes_per_schedule",
            _int,
            "lower",
        ),
        Row(f"declare + start {schedules:,} schedules (s)", "memory", "total_s", _s, "lower"),
        Row("schedules added/s at run time", "adds", "adds_per_s", _int, "higher", _partial),
        Row(
            f"time to start, {startup:,} declared jobs: declare + start (s)",
            "startup",
            "total_s",
            _s,
            "lower",
        ),
        Row(
            f"time to start, {startup:,} declared jobs: start only (s)",
            "startup",
            "start_s",
            _s,
            "lower",
        ),
    ]
    return table


def cell(result: dict[str, Any] | None, row: Row) -> str:
    if result is None:
        return "—"
    if "error" in result:
        return "error"
    return row.fmt(result[row.metric]) + row.mark(result)


def ratio(results: dict[str, Any], row: Row) -> str:
    ours, theirs = results.get("ours-asyncio"), results.get("aps3")
    if not ours or not theirs or "error" in ours or "error" in theirs:
        return "—"
    if not theirs[row.metric]:
        return "—"
    return f"{ours[row.metric] / theirs[row.metric]:.2f}x"


def markdown(plan: Plan, suite: dict[str, Any]) -> str:
    titles = suite.get("titles", {})
    names = " | ".join(titles.get(column, column) for column in suite["columns"])
    head = f"| metric | better | {names} | ours:APS3 |"
    lines = [head, "|---|---|" + "---:|" * (len(suite["columns"]) + 1)]
    for row in rows(plan):
        results = suite["results"].get(row.key)
        if results is None:
            continue
        cells = [cell(results.get(column), row) for column in suite["columns"]]
        lines.append(
            f"| {row.label} | {row.better} | {' | '.join(cells)} | {ratio(results, row)} |"
        )
    body = "\n".join(lines)
    notes = [
        ("‡", "fewer runs than fires in the window: overloaded, lateness beyond 1 s not seen."),
        ("†", f"stopped after {plan.add_budget_s:.0f} s; the number of schedules added is shown."),
    ]
    used = [f"{mark} {text}" for mark, text in notes if f" {mark}" in body]
    return "\n".join([body, "", *used]) if used else body


def machine_line(machine: dict[str, Any], envs: dict[str, Any]) -> str:
    ours = envs.get("ours", {}).get("packages", {})
    aps3 = envs.get("aps3", {}).get("packages", {})
    return (
        f"{machine['cpu_model']}, {machine['cpus_usable']} usable of {machine['cpu_count']} "
        f"cores, {machine['mem_total']}, {machine['system']}, load {machine['load_average'][0]:.2f}"
        f"; Python {envs.get('ours', {}).get('python')}; apscheduler {ours.get('apscheduler')} "
        f"(anyio {ours.get('anyio')}, trio {ours.get('trio')}); APScheduler 3: "
        f"{aps3.get('apscheduler')} on Python {envs.get('aps3', {}).get('python')}"
    )


def background(suite: dict[str, Any]) -> str:
    """How busy the rest of the machine was: the median and worst cell, in cores."""
    loads = [
        result["others_cpu_cores"]
        for results in suite["results"].values()
        for result in results.values()
        if "others_cpu_cores" in result
    ]
    if not loads:
        return "unknown"
    return f"median {statistics.median(loads):.2f} cores, worst cell {max(loads):.2f} cores"


def environments(suite: dict[str, Any]) -> dict[str, Any]:
    """The interpreter and package versions each side reported."""
    envs: dict[str, Any] = {}
    for results in suite["results"].values():
        for column, result in results.items():
            side = "aps3" if column == "aps3" else "ours"
            if "environment" in result:
                envs.setdefault(side, result["environment"])
    return envs


# ---------------------------------------------------------------------------- main


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Write the JSON report whole or not at all (a run cut short leaves the last one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(report, indent=2) + "\n")
    partial.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~2 minutes: smaller and shorter")
    parser.add_argument("--aps3-python", help="python of a venv with APScheduler 3.11")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell (median kept)")
    parser.add_argument(
        "--only", help="run only the cells whose key contains this (comma-separated: any)"
    )
    parser.add_argument(
        "--columns", help="comma-separated column keys to run (default: all): ours-asyncio,aps3"
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=SRC",
        help="also run our package from another src/ directory (repeatable)",
    )
    parser.add_argument(
        "--telemetry",
        action="store_true",
        help="also the columns prom-asyncio and otel-asyncio: metrics or tracing on "
        "(needs the metrics and otel extras, and opentelemetry-sdk)",
    )
    args = parser.parse_args(argv)

    plan = QUICK if args.quick else FULL
    aps3_python = ensure_aps3_python(args.aps3_python)
    machine, git = machine_info(), git_info()
    begin = time.perf_counter()
    columns = all_columns(args.variant, args.telemetry)
    if args.columns:
        wanted = args.columns.split(",")
        unknown = sorted(set(wanted) - {column.key for column in columns})
        if unknown:
            sys.exit(f"unknown column(s) {', '.join(unknown)}")
        columns = [column for column in columns if column.key in wanted]
    suite = run_suite(plan, aps3_python, max(1, args.repeat), args.only, columns)
    envs = environments(suite)
    table = markdown(plan, suite)
    report = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": plan.mode,
        "plan": asdict(plan),
        "repeat": args.repeat,
        "duration_s": round(time.perf_counter() - begin, 1),
        "machine": machine,
        "git": git,
        "environments": envs,
        **suite,
        "table_markdown": table,
    }
    write_report(args.out, report)
    print(f"Machine: {machine_line(machine, envs)}")
    print(f"Other processes' CPU during the cells: {background(suite)}\n")
    print(table)
    print(f"\n{plan.mode} run in {report['duration_s']:.0f} s; JSON: {args.out}")
    failed = any("error" in r for cells in suite["results"].values() for r in cells.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
