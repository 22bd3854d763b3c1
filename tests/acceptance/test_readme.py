"""README.md's examples as a reader runs them: every Python block runs, or says it is a fragment.

The convention (README.md states it at the top of "Usage"):

* A ```python block whose first line starts with ``# fragment: `` (followed by what it leaves
  out) is an excerpt: it only has to compile.
* Every other ```python block is complete and must run as it is, on its own: it is executed in
  a fresh namespace holding nothing but the builtins, so it imports what it uses and defines what
  it calls (checked statically too: a name used anywhere in it, even in a function body that
  never runs here, must be defined in it or be a builtin). A top-level ``await`` or
  ``async with`` is allowed, as in ``python -m asyncio``: such a block is awaited, on asyncio
  and on trio.
* After a block has run, the harness starts and stops what it left behind, as a reader would
  by serving it: a FastAPI ``app`` through its lifespan (TestClient), else a stopped
  ``scheduler`` with ``async with``. Blocks with a promise of their own get a closer check
  (``CHECKS``); blocks that change the process (logging configuration) or run until Ctrl-C
  (``trio.run``) run in a subprocess instead (``SUBPROCESS``).
* Every fenced block names its language (python, bash, json or text), so no Python hides in an
  untagged block. The ```json logging config is given to a real uvicorn with ``--log-config``.

Blocks are keyed by the heading above them, numbered ``(1)``, ``(2)``... when a heading has
several ```python blocks.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import json
import logging
import os
import queue
import re
import signal
import socket
import subprocess
import symtable
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from library.components.scheduling.task_scheduler import (
    JobInfo,
    Outcome,
    RunInfo,
    SchedulerConfig,
    TaskScheduler,
)
from library.components.scheduling.task_scheduler.fastapi import CSRF_HEADER

README = Path(__file__).parents[2] / "README.md"
PACKAGE_LOGGER = "library.components.scheduling.task_scheduler"
LANGUAGES = {"python", "bash", "json", "text"}
FRAGMENT = re.compile(r"\A# fragment: \S")
_FENCE = re.compile(r"^```(\S*)\s*$")
_HEADING = re.compile(r"^#{1,6} (.*)$")


@dataclass(frozen=True)
class Block:
    key: str
    language: str
    source: str
    line: int

    @property
    def fragment(self) -> bool:
        return self.language == "python" and FRAGMENT.match(self.source) is not None

    def compile(self) -> Any:
        return compile(
            self.source,
            f"<README.md line {self.line}: {self.key}>",
            "exec",
            flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
        )


def parse(text: str) -> list[Block]:
    """Every fenced block of a markdown text, keyed by the heading above it."""
    found: list[tuple[str, str, str, int]] = []
    heading, language, start, body = "", None, 0, []
    for number, line in enumerate(text.splitlines(), 1):
        if language is None:
            if fence := _FENCE.match(line):
                language, start, body = fence.group(1), number + 1, []
            elif title := _HEADING.match(line):
                heading = title.group(1).strip()
        elif line.rstrip() == "```":
            found.append((heading, language, "\n".join(body) + "\n", start))
            language = None
        else:
            body.append(line)
    assert language is None, f"the block opened on line {start - 1} is never closed"
    per_heading: dict[tuple[str, str], int] = {}
    for heading, language, _, _ in found:
        per_heading[heading, language] = per_heading.get((heading, language), 0) + 1
    blocks, seen = [], dict.fromkeys(per_heading, 0)
    for heading, language, source, line in found:
        seen[heading, language] += 1
        several = per_heading[heading, language] > 1
        key = f"{heading} ({seen[heading, language]})" if several else heading
        blocks.append(Block(key, language, source, line))
    return blocks


BLOCKS = parse(README.read_text())
PYTHON = {b.key: b for b in BLOCKS if b.language == "python"}
RUNNABLE = {key: b for key, b in PYTHON.items() if not b.fragment}
FRAGMENTS = {key: b for key, b in PYTHON.items() if b.fragment}


def undefined_names(source: str) -> set[str]:
    """Names a block uses, in any scope, that it neither defines nor gets from the builtins."""
    top = symtable.symtable(source, "<block>", "exec")
    defined = set(dir(builtins))
    used: set[str] = set()

    def walk(table: symtable.SymbolTable) -> None:
        for symbol in table.get_symbols():
            name = symbol.get_name()
            if table is top:
                if symbol.is_assigned() or symbol.is_imported():
                    defined.add(name)
                elif symbol.is_referenced():
                    used.add(name)
            elif symbol.is_declared_global() and symbol.is_assigned():
                defined.add(name)
            elif symbol.is_global() and symbol.is_referenced():
                used.add(name)
        for child in table.get_children():
            walk(child)

    walk(top)
    return used - defined


# -- the convention itself ----------------------------------------------------------------------


def test_the_convention_on_a_sample() -> None:
    sample = parse(
        "# Title\n```python\nx = 1\n```\n## Part\n```bash\n# not a heading\n```\n"
        "```python\n# fragment: uses x from above\nprint(x)\n```\n```python\nawait f()\n```\n"
    )
    assert [(b.key, b.language, b.fragment) for b in sample] == [
        ("Title", "python", False),
        ("Part", "bash", False),
        ("Part (1)", "python", True),
        ("Part (2)", "python", False),
    ]
    assert undefined_names(sample[2].source) == {"x"}
    assert undefined_names(sample[3].source) == {"f"}
    assert undefined_names("import os\ndef g():\n    return os.sep, settings.key\n") == {"settings"}
    assert undefined_names("class C:\n    def m(self, r: logging.LogRecord): ...\n") == {"logging"}


def test_every_block_names_its_language() -> None:
    assert {b.language for b in BLOCKS} <= LANGUAGES, [
        (b.line, b.language) for b in BLOCKS if b.language not in LANGUAGES
    ]
    assert len(RUNNABLE) >= 15  # the README's examples did not silently vanish from the parse


def test_fragments_compile() -> None:
    for block in FRAGMENTS.values():
        block.compile()


@pytest.mark.parametrize("key", list(RUNNABLE))
def test_block_uses_only_names_it_defines(key: str) -> None:
    """Before: the opening block used ``FastAPI`` without importing it, and the router block an
    undefined ``settings`` (in a function body: it failed only at the first request)."""
    assert undefined_names(RUNNABLE[key].source) == set()


def test_every_check_names_a_runnable_block() -> None:
    assert set(CHECKS) <= set(RUNNABLE), set(CHECKS) - set(RUNNABLE)
    assert set(SUBPROCESS) <= set(RUNNABLE), set(SUBPROCESS) - set(RUNNABLE)
    assert not set(CHECKS) & set(SUBPROCESS)


# -- running a block in this process ------------------------------------------------------------


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The logging blocks change loggers: put back what they changed."""
    package, root = logging.getLogger(PACKAGE_LOGGER), logging.getLogger()
    level, filters, handlers, root_level = (
        package.level,
        package.filters[:],
        package.handlers[:],
        root.level,
    )
    yield
    package.filters[:], package.handlers[:] = filters, handlers
    package.setLevel(level)  # setLevel, not assignment: it clears the loggers' level caches
    root.setLevel(root_level)


def run_block(block: Block, backend: str) -> dict[str, Any]:
    """Execute a block in a fresh namespace; a block with a top-level await is awaited."""
    namespace: dict[str, Any] = {"__name__": "readme_block"}
    code = block.compile()
    if code.co_flags & inspect.CO_COROUTINE:

        async def main() -> None:
            await eval(code, namespace)

        anyio.run(main, backend=backend)
    else:
        exec(code, namespace)
    return namespace


def serve(namespace: dict[str, Any], backend: str) -> list[JobInfo]:
    """Start and stop what a block left behind: its app's lifespan, else its scheduler."""
    app, scheduler = namespace.get("app"), namespace.get("scheduler")
    if isinstance(app, FastAPI):
        with TestClient(app, backend=backend) as client:
            assert client.get("/openapi.json").status_code == 200
            if isinstance(scheduler, TaskScheduler):
                assert scheduler.state == "running"
        if isinstance(scheduler, TaskScheduler):
            assert scheduler.state == "stopped"
        return []
    if isinstance(scheduler, TaskScheduler) and scheduler.state == "stopped":
        return anyio.run(started_jobs, scheduler, backend=backend)
    return []


async def started_jobs(scheduler: TaskScheduler) -> list[JobInfo]:
    async with scheduler:
        assert scheduler.state == "running"
        return await scheduler.get_jobs()


def by_name(jobs: list[JobInfo]) -> dict[str, JobInfo]:
    return {job.name: job for job in jobs}


Check = Callable[[dict[str, Any], str], None]
CHECKS: dict[str, Check] = {}


def check(key: str) -> Callable[[Check], Check]:
    def register(func: Check) -> Check:
        CHECKS[key] = func
        return func

    return register


@check("fastapi-task-scheduler")
def _opening(ns: dict[str, Any], backend: str) -> None:
    scheduler: TaskScheduler = ns["scheduler"]
    with TestClient(ns["app"], backend=backend):
        assert scheduler.state == "running"
    assert scheduler.state == "stopped"
    (job,) = anyio.run(started_jobs, scheduler, backend=backend)
    assert job.name == "heartbeat" and job.trigger.interval_seconds == 30


@check("Interval jobs")
def _interval(ns: dict[str, Any], backend: str) -> None:
    jobs = by_name(serve(ns, backend))
    assert jobs["heartbeat"].trigger.interval_seconds == 30
    assert jobs["check_disk_space"].trigger.interval_seconds == 300


@check("Cron jobs")
def _cron(ns: dict[str, Any], backend: str) -> None:
    jobs = by_name(serve(ns, backend))
    times = {name: job.next_run_time for name, job in jobs.items()}
    assert all(times.values()), times
    backup, report = times["daily_backup"], times["weekly_report"]
    cleanup, poll = times["monthly_cleanup"], times["business_hours_poll"]
    assert backup is not None and (backup.hour, backup.minute) == (2, 0)
    assert report is not None and report.weekday() == 0 and report.hour == 9
    assert cleanup is not None and (cleanup.day, cleanup.hour, cleanup.minute) == (1, 0, 0)
    assert poll is not None and poll.weekday() < 5 and 9 <= poll.hour <= 17
    assert poll.minute % 15 == 0


@check("One-time jobs")
def _one_time(ns: dict[str, Any], backend: str) -> None:
    (job,) = serve(ns, backend)
    assert job.next_run_time == datetime(2030, 12, 31, 23, 59, tzinfo=timezone.utc)


@check("FastAPI integration (1)")
def _shortest_form(ns: dict[str, Any], backend: str) -> None:
    app: FastAPI = ns["app"]
    seen: list[object] = []

    @app.get("/probe")
    def probe(request: Request) -> None:
        seen.append(request.state.task_scheduler)

    with TestClient(app, backend=backend) as client:
        assert client.get("/probe").status_code == 200
    assert seen == [ns["scheduler"]]


@check("FastAPI integration (2)")
def _hand_written_lifespan(ns: dict[str, Any], backend: str) -> None:
    with TestClient(ns["app"], backend=backend) as client:
        (job,) = client.get("/jobs").json()
    assert job["name"] == "periodic_task" and job["trigger"]["interval_seconds"] == 60


@check("Management API (a FastAPI router)")
def _router(ns: dict[str, Any], backend: str) -> None:
    key = os.environ["SCHEDULER_API_KEY"]
    with TestClient(ns["app"], backend=backend) as client:
        assert client.get("/scheduler/health").json() == {"status": "ok", "stale_jobs": 0}
        assert client.get("/scheduler/jobs").status_code == 401
        assert client.get("/scheduler/jobs", headers={"X-API-Key": "wrong"}).status_code == 403
        jobs = client.get("/scheduler/jobs", headers={"X-API-Key": key})
        assert [job["id"] for job in jobs.json()] == ["daily-backup"], jobs.text
        headers = {"X-API-Key": key, CSRF_HEADER: "1"}  # a POST carries the CSRF header
        run = client.post("/scheduler/jobs/daily-backup/run?wait=true", headers=headers)
        assert run.json()["outcome"] == "success", run.text
        # The runs and workers routes the table lists, behind the same guard.
        assert client.get("/scheduler/runs").status_code == 401
        runs = client.get("/scheduler/runs?outcome=success&limit=20", headers={"X-API-Key": key})
        assert [r["run_id"] for r in runs.json()] == [run.json()["run_id"]], runs.text
        (worker,) = client.get("/scheduler/workers", headers={"X-API-Key": key}).json()
        assert worker["id"] == run.json()["worker"] and worker["state"] == "running"
        bad = client.get("/scheduler/runs?outcome=failed", headers={"X-API-Key": key})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "outcome"]


@check("Dashboard (in a browser)")
def _dashboard(ns: dict[str, Any], backend: str) -> None:
    basic = (os.environ.get("DASHBOARD_USER", "ops"), os.environ["DASHBOARD_PASSWORD"])
    with TestClient(ns["app"], backend=backend) as client:
        asked = client.get("/scheduler/dashboard")  # a browser without credentials is asked
        assert asked.status_code == 401 and asked.headers["WWW-Authenticate"] == "Basic"
        assert client.get("/scheduler/dashboard", auth=("ops", "guess")).status_code == 401
        page = client.get("/scheduler/dashboard", auth=basic)
        assert page.status_code == 200 and "<title>Task scheduler</title>" in page.text
        # The same credentials reach the API the page's script calls; a POST needs the header.
        url = "/scheduler/jobs/sync-invoices/pause"
        assert client.post(url, auth=basic).status_code == 403
        paused = client.post(url, auth=basic, headers={CSRF_HEADER: "1"})
        assert paused.json()["paused"] is True, paused.text


@check("Programmatic job management")
def _programmatic(ns: dict[str, Any], backend: str) -> None:
    # The block ran before start(), as the README says it may; now start the scheduler.
    jobs = {job.id: job for job in serve(ns, backend)}
    assert set(jobs) == {"health-check", "reminder"}  # custom-job was removed at the end
    assert jobs["health-check"].trigger.interval_seconds == 300
    assert jobs["reminder"].next_run_time is not None


@check("Runs, outcomes and history")
def _runs(ns: dict[str, Any], backend: str) -> None:
    # The block started and stopped its own scheduler: two runs, each reported by the hook.
    info: JobInfo = ns["info"]
    assert ns["run"].outcome is None or ns["run"].outcome is Outcome.success
    assert ns["runs"][-1].outcome is Outcome.success
    assert ns["errors"] == [] and ns["older"] == []  # no error; nothing before the first run
    assert info.counts.success >= 1 and info.counts.error == 0
    first = ns["runs"][-1].finished_at  # the run_job awaited; the other may have finished too
    assert info.last_success_at is not None and info.last_success_at >= first
    assert ns["scheduler"].state == "stopped"


@check("Logging (2)")
def _quiet_package(ns: dict[str, Any], backend: str) -> None:
    assert logging.getLogger(PACKAGE_LOGGER).level == logging.WARNING


@check("Logging (3)")
def _quiet_one_job(ns: dict[str, Any], backend: str) -> None:
    package = logging.getLogger(PACKAGE_LOGGER)
    package.setLevel(logging.INFO)  # as the reader's logging config would
    scheduler = TaskScheduler()

    @scheduler.interval(hours=1, id="heartbeat")
    async def heartbeat() -> None:
        pass

    @scheduler.interval(hours=1, id="other")
    async def other() -> None:
        pass

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    package.addHandler(Keep())

    async def main() -> None:
        async with scheduler:
            await scheduler.run_job("heartbeat")
            await scheduler.run_job("other")

    anyio.run(main, backend=backend)
    logged = [getattr(record, "job_id", None) for record in records]
    assert "other" in logged and "heartbeat" not in logged, logged
    warning = logging.makeLogRecord({"levelno": logging.WARNING, "job_id": "heartbeat"})
    (quiet,) = package.filters
    assert quiet.filter(warning)


@check("Health and supervision")
def _health(ns: dict[str, Any], backend: str) -> None:
    status = ns["status"]
    assert status.state == "running" and status.engine_restarts == 0
    assert status.workers == 1 and ns["worker"].id == status.worker_id


@check("Metrics and tracing (1)")
def _metrics(ns: dict[str, Any], backend: str) -> None:
    with TestClient(ns["app"], backend=backend) as client:
        assert client.get("/scheduler/metrics").status_code == 401
        token = {"Authorization": "Bearer readme-test-key"}
        response = client.get("/scheduler/metrics", headers=token)
        assert response.status_code == 200, response.text
        assert "task_scheduler_up 1.0" in response.text
        runs = 'task_scheduler_runs_total{job_id="sync-orders",outcome="success"} 0.0'
        assert runs in response.text, response.text


@check("Testing your jobs")
def _testing(ns: dict[str, Any], backend: str) -> None:
    anyio.run(ns["test_heartbeat"], backend=backend)


@check("Dependencies in jobs (Depends)")
def _depends(ns: dict[str, Any], backend: str) -> None:
    # The app's lifespan runs the job with its dependencies; an app override replaces one.
    scheduler: TaskScheduler = ns["scheduler"]
    app: FastAPI = ns["app"]
    closed: list[bool] = []

    async def recording_db() -> Any:
        session = ns["Session"]()
        yield session
        closed.append(True)

    async def main() -> list[RunInfo]:
        async with scheduler.lifespan(app):
            runs = [await scheduler.run_job("purge")]
            app.dependency_overrides[ns["get_db"]] = recording_db
            runs.append(await scheduler.run_job("purge"))
            app.dependency_overrides.clear()
        return runs

    runs = anyio.run(main, backend=backend)
    assert [run.outcome for run in runs] == [Outcome.success] * 2, runs
    assert closed == [True]


@check("Overriding a job's dependencies")
def _testing_overrides(ns: dict[str, Any], backend: str) -> None:
    anyio.run(ns["test_digest_is_sent"], backend=backend)
    assert ns["scheduler"].dependency_overrides == {}


@check("Testing with virtual time")
def _virtual_time(ns: dict[str, Any], backend: str) -> None:
    anyio.run(ns["test_a_week_of_reports"], backend=backend)
    assert len(ns["sent"]) == 5


@check("Schedules that survive restarts, and several workers")
def _stores(ns: dict[str, Any], backend: str) -> None:
    assert ns["SchedulerConfig"] is SchedulerConfig  # the block made five valid configs


@check("Configuration")
def _configuration(ns: dict[str, Any], backend: str) -> None:
    config, scheduler = ns["config"], ns["scheduler"]
    assert scheduler.config is config and scheduler.timezone == "America/New_York"
    assert config.job_defaults.max_instances == 3 and config.job_defaults.misfire_grace_time == 60


# -- blocks run in a subprocess -----------------------------------------------------------------


def lines_of(stream: Any) -> queue.Queue[str]:
    """A subprocess's output lines, read in a thread: waiting for one never blocks forever."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line)
        lines.put("")

    threading.Thread(target=read, daemon=True).start()
    return lines


def wait_for(lines: queue.Queue[str], text: str, seen: list[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in line for line in seen):
        line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        if not line:
            pytest.fail(f"ended before printing {text!r}:\n{''.join(seen)}")
        seen.append(line)


def drain(lines: queue.Queue[str], seen: list[str]) -> str:
    while (line := lines.get(timeout=30)) != "":
        seen.append(line)
    return "".join(seen)


def _trio(block: Block, tmp_path: Path) -> None:
    """Runs until Ctrl-C; then it stops cleanly: no traceback, exit status 0."""
    script = tmp_path / "trio_block.py"
    script.write_text(block.source)
    process = subprocess.Popen(
        [sys.executable, "-u", str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Started from a shell without job control, a child inherits SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen: list[str] = []
    try:
        lines = lines_of(process.stdout)
        wait_for(lines, "tick", seen)
        # Ctrl-C between two ticks, while every task waits. (Landing inside a running job or
        # the engine's job loop on trio, it still ends in a BaseExceptionGroup traceback: a
        # bug of the scheduler's, reported, not the README's.)
        time.sleep(0.4)
        process.send_signal(signal.SIGINT)
        output = drain(lines, seen)
        process.wait(timeout=30)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0, output
    assert "Traceback" not in output, output


TAIL = """
import anyio
from library.components.scheduling.task_scheduler import TaskScheduler

probe = TaskScheduler()

@probe.interval(hours=1, id="probe-job")
async def probe_job():
    pass

async def probe_main():
    async with probe:
        await probe.run_job("probe-job")

anyio.run(probe_main)
"""


def _basic_config(block: Block, tmp_path: Path) -> None:
    """With it, the scheduler's INFO lines appear: start, each run, stop."""
    result = subprocess.run(
        [sys.executable, "-c", block.source + TAIL],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    for text in ("task scheduler started", "job 'probe-job' run", "task scheduler stopped"):
        (line,) = [line for line in lines if text in line]
        assert f"INFO {PACKAGE_LOGGER}: " in line, line


def json_objects(text: str) -> list[Any]:
    """The JSON documents printed one after another (the console exporters' output)."""
    decoder, found, index = json.JSONDecoder(), [], 0
    while (index := text.find("{", index)) != -1:
        document, index = decoder.raw_decode(text, index)
        found.append(document)
    return found


def _otel_console(block: Block, tmp_path: Path) -> None:
    """The console exporters print the run's span, with the job's own span as its child,
    and the run metrics (the SDK exports what is left when the process exits)."""
    result = subprocess.run(
        [sys.executable, "-c", block.source], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    documents = json_objects(result.stdout)
    spans = {doc["name"]: doc for doc in documents if "context" in doc}
    run, child = spans["task_scheduler.run"], spans["build report"]
    assert run["attributes"]["task_scheduler.job_id"] == "report"
    assert run["attributes"]["task_scheduler.outcome"] == "success"
    assert child["parent_id"] == run["context"]["span_id"]
    exported = json.dumps([doc for doc in documents if "resource_metrics" in doc])
    for name in ("task_scheduler.runs", "task_scheduler.run.duration"):
        assert f'"{name}"' in exported, result.stdout


SUBPROCESS: dict[str, Callable[[Block, Path], None]] = {
    "On trio, or without a web framework": _trio,
    "Logging (1)": _basic_config,
    "Metrics and tracing (3)": _otel_console,
}


def _params() -> list[Any]:
    params = []
    for key in RUNNABLE:
        backends = ["asyncio"] if key in SUBPROCESS else ["asyncio", "trio"]
        params += [pytest.param(key, backend, id=f"{key}-{backend}") for backend in backends]
    return params


@pytest.mark.parametrize(("key", "backend"), _params())
def test_block_runs(
    key: str, backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    block = RUNNABLE[key]
    if key in SUBPROCESS:
        SUBPROCESS[key](block, tmp_path)
        return
    monkeypatch.setenv("SCHEDULER_API_KEY", "readme-test-key")  # the router block reads it
    monkeypatch.setenv("DASHBOARD_PASSWORD", "readme-test-password")  # and the dashboard's
    namespace = run_block(block, backend)
    CHECKS.get(key, serve)(namespace, backend)


# -- the logging config for uvicorn --log-config ------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def uvicorn_output(tmp_path: Path, *options: str) -> str:
    """Serve the README's opening block as app.py under uvicorn, then stop it (SIGTERM)."""
    (tmp_path / "app.py").write_text(RUNNABLE["fastapi-task-scheduler"].source)
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "--port", str(port), *options, "app:app"]
    process = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen: list[str] = []
    try:
        lines = lines_of(process.stdout)
        wait_for(lines, "Application startup complete", seen)
        process.send_signal(signal.SIGTERM)
        output = drain(lines, seen)
        process.wait(timeout=30)
    finally:
        process.kill()
        process.wait()
    # uvicorn shuts down gracefully, then re-raises the signal (newer versions) or exits 0.
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output, output
    return output


def test_uvicorn_log_config_shows_the_scheduler_lines(tmp_path: Path) -> None:
    (block,) = [b for b in BLOCKS if b.language == "json" and b.key == "Logging"]
    config = json.loads(block.source)
    assert PACKAGE_LOGGER in config["loggers"]
    (tmp_path / "log.json").write_text(block.source)
    output = uvicorn_output(tmp_path, "--log-config", "log.json")
    for text in ("task scheduler started", "task scheduler stopped"):
        assert f"INFO {PACKAGE_LOGGER}: {text}" in output, output
    assert "INFO uvicorn.error: Application startup complete" in output, output


def test_plain_uvicorn_shows_no_scheduler_info_lines(tmp_path: Path) -> None:
    """What the README's Logging section says: uvicorn configures only its own loggers."""
    output = uvicorn_output(tmp_path)
    assert "Application startup complete" in output
    assert "task scheduler started" not in output, output
