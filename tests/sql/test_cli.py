"""The task-scheduler command on real SQLite and PostgreSQL stores, with a live worker process.

One worker process per store (workers/cli_worker.py, a TaskScheduler on that store) serves
every test of the module; the command runs in this process through Click's CliRunner, and
as a real process where that is the point (``python -m``, the console script). The
PostgreSQL URL carries a password (the server trusts loopback, so it is not checked): no
output of any test may show it.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from library.components.scheduling.task_scheduler._cli import cli

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"

WORKERS = Path(__file__).parent / "workers"
PASSWORD = "S3cretPw"
PG_WITH_PASSWORD = f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/test"
JOB_IDS = ["broken", "nightly-backup", "report", "tick"]


@dataclass
class Cluster:
    url: str
    worker_id: str
    process: subprocess.Popen[str]


def require_postgresql() -> None:
    """As conftest's require_server (a module-scoped fixture cannot use pg_url): skip when
    PostgreSQL is down, fail under CI."""
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=2).close()
    except OSError:
        message = "PostgreSQL is not running on 127.0.0.1:5432"
        if os.environ.get("CI"):
            pytest.fail(f"{message}, and CI needs it")
        pytest.skip(message)


def _read_line(process: subprocess.Popen[str], limit: float) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], limit)
    if not ready:
        raise TimeoutError(f"the worker printed nothing within {limit} s")
    return process.stdout.readline().strip()


def _drop_schema(schema: str) -> None:
    import asyncio

    import asyncpg

    async def drop() -> None:
        connection = await asyncpg.connect(PG_DSN)
        try:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await connection.close()

    asyncio.run(drop())


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """A worker process running the jobs of workers/cli_worker.py on a fresh store."""
    schema = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('cli')}/jobs.db"
    else:
        require_postgresql()
        schema = f"ts_cli_{uuid.uuid4().hex[:12]}"
        url = f"{PG_WITH_PASSWORD}?schema={schema}"
    log = tmp_path_factory.mktemp("log") / "worker.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "cli_worker.py"],
            cwd=WORKERS,
            env={**os.environ, "TASK_SCHEDULER_STORE": url},
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        line = _read_line(process, 60)
        assert line.startswith("ready "), f"{line!r}; worker log:\n{log.read_text()}"
        yield Cluster(url, line.split()[1], process)
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        text = log.read_text()
        if schema is not None:
            _drop_schema(schema)
    assert process.returncode == 0, text
    assert PASSWORD not in text  # the worker's own log lines, the start line included
    assert "started with 4 job(s) on store" in text


def invoke(*args: str, store: str | None = None, code: int = 0) -> Result:
    """Run the command in this process; check its exit code and that no password shows."""
    arguments = [*(["--store", store] if store is not None else []), *args]
    result = CliRunner().invoke(cli, arguments, catch_exceptions=False)
    assert PASSWORD not in result.stdout + result.stderr
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    return result


def invoke_json(cluster: Cluster, *args: str, code: int = 0) -> Any:
    return json.loads(invoke("--json", *args, store=cluster.url, code=code).stdout)


def test_jobs_lists_every_job_as_a_table_and_as_json(cluster: Cluster) -> None:
    lines = invoke("jobs", store=cluster.url).stdout.splitlines()
    assert lines[0].split() == ["ID", "TRIGGER", "NEXT", "RUN", "PAUSED", "LAST", "OUTCOME"]
    assert [line.split()[0] for line in lines[1:]] == JOB_IDS
    nightly = next(line for line in lines if line.startswith("nightly-backup"))
    assert "At 03:00 every day (Europe/Paris)" in nightly

    jobs = invoke_json(cluster, "jobs")
    assert [job["id"] for job in jobs] == JOB_IDS
    by_id = {job["id"]: job for job in jobs}
    assert by_id["nightly-backup"]["trigger"]["timezone"] == "Europe/Paris"
    assert by_id["broken"]["retries"] == 1
    assert by_id["report"]["func"] == "__main__:report"  # named: the app is never imported
    assert all(job["paused"] is False for job in jobs)
    assert datetime.fromisoformat(by_id["report"]["next_run_time"]).tzinfo is not None


def test_job_shows_one_job(cluster: Cluster) -> None:
    text = invoke("job", "nightly-backup", store=cluster.url).stdout
    assert "id:           nightly-backup" in text
    assert "callable:     __main__:nightly_backup" in text
    assert "trigger:      At 03:00 every day (Europe/Paris)" in text
    assert "paused:       no" in text

    job = invoke_json(cluster, "job", "nightly-backup")
    assert job["id"] == "nightly-backup"
    assert job["trigger"]["expression"] == "0 3 * * *"
    # Shown in the zone asked for: 03:00 in Paris is 02:00 UTC in winter, 01:00 in summer.
    assert job["next_run_time"].endswith(("T02:00:00Z", "T01:00:00Z"))
    paris = invoke("--timezone", "Europe/Paris", "job", "nightly-backup", store=cluster.url)
    assert " 03:00:00 CE" in paris.stdout  # CET or CEST


@pytest.mark.parametrize("command", ["job", "pause", "resume", "run", "runs"])
def test_an_unknown_job_fails_naming_it_and_close_matches(cluster: Cluster, command: str) -> None:
    result = invoke(command, "repot", store=cluster.url, code=1)
    assert result.stdout == ""
    assert (
        result.stderr == "task-scheduler: error: no job with id 'repot'; did you mean 'report'?\n"
    )
    nothing_close = invoke(command, "zzz", store=cluster.url, code=1)
    assert nothing_close.stderr == "task-scheduler: error: no job with id 'zzz'\n"


def _started(runs: list[dict[str, Any]]) -> list[datetime]:
    return [datetime.fromisoformat(run["started_at"]) for run in runs if run["started_at"]]


def _wait_for_a_tick_after(cluster: Cluster, moment: float, limit: float = 10) -> None:
    deadline = time.time() + limit
    while time.time() < deadline:
        runs = invoke_json(cluster, "runs", "tick", "--limit", "1")
        if any(started.timestamp() > moment for started in _started(runs)):
            return
        time.sleep(0.3)
    pytest.fail(f"tick did not run within {limit} s")


def test_pause_reaches_the_worker_and_resume_brings_the_job_back(cluster: Cluster) -> None:
    _wait_for_a_tick_after(cluster, 0)  # it has run: its last outcome shows
    paused = invoke("pause", "tick", store=cluster.url)
    paused_at = time.time()
    assert paused.stdout == "paused job 'tick'\n"
    assert invoke_json(cluster, "job", "tick")["paused"] is True
    table = invoke("jobs", store=cluster.url).stdout
    tick_row = next(line for line in table.splitlines() if line.startswith("tick"))
    assert tick_row.split()[-3:-1] == ["-", "yes"]  # no next run while paused
    assert tick_row.split()[-1] in ("success", "running")
    assert invoke_json(cluster, "pause", "tick")["paused"] is True  # pausing twice: same

    time.sleep(3)  # every second, were it not paused
    newest = max(_started(invoke_json(cluster, "runs", "tick", "--limit", "5")))
    assert newest.timestamp() < paused_at + 1.5  # at most a fire already under way

    resumed = invoke_json(cluster, "resume", "tick")
    assert resumed["paused"] is False and resumed["next_run_time"] is not None
    _wait_for_a_tick_after(cluster, time.time())
    assert invoke("resume", "tick", store=cluster.url).stdout.startswith("resumed job 'tick'")


def test_run_wait_runs_the_job_in_the_worker_and_reports_its_outcome(cluster: Cluster) -> None:
    text = invoke("run", "report", "--wait", store=cluster.url).stdout
    assert text.startswith("job 'report' attempt 1: success in 0.")
    assert text.endswith(f" s on worker {cluster.worker_id}\n")

    run = invoke_json(cluster, "run", "report", "--wait", "--timeout", "30")
    assert run["outcome"] == "success" and run["worker"] == cluster.worker_id
    assert run["duration"] >= 0.05  # report sleeps 0.05 s: it really ran
    newest = invoke_json(cluster, "runs", "report", "--limit", "1")[0]
    assert newest["run_id"] == run["run_id"]
    assert invoke_json(cluster, "job", "report")["last_run"]["run_id"] == run["run_id"]


def test_a_failed_run_exits_1_after_its_retries(cluster: Cluster) -> None:
    result = invoke("run", "broken", "--wait", store=cluster.url, code=1)
    assert result.stdout.startswith("job 'broken' attempt 2: error in ")
    assert result.stdout.endswith(f"on worker {cluster.worker_id} (ValueError: disk full)\n")

    run = invoke_json(cluster, "run", "broken", "--wait", code=1)
    assert (run["attempt"], run["outcome"], run["error_message"]) == (2, "error", "disk full")
    attempts = invoke_json(cluster, "runs", "broken", "--limit", "2")
    assert [attempt["attempt"] for attempt in attempts] == [2, 1]
    assert {attempt["scheduled_at"] for attempt in attempts} == {run["scheduled_at"]}


def test_run_without_wait_queues_the_run_for_the_worker(cluster: Cluster) -> None:
    before = {run["run_id"] for run in invoke_json(cluster, "runs", "report", "--limit", "100")}
    queued = invoke("run", "report", store=cluster.url)
    assert queued.stdout.startswith("queued a run of job 'report' (fire id ")
    assert queued.stderr == ""  # a worker is live: no warning
    data = invoke_json(cluster, "run", "report")
    assert data["state"] == "queued" and data["job_id"] == "report"
    uuid.UUID(data["fire_id"])
    deadline = time.time() + 15
    while time.time() < deadline:
        runs = invoke_json(cluster, "runs", "report", "--limit", "100")
        new = [run for run in runs if run["run_id"] not in before and run["outcome"]]
        if len(new) >= 2:
            break
        time.sleep(0.3)
    else:
        pytest.fail("the queued runs did not run within 15 s")
    assert {run["worker"] for run in new} == {cluster.worker_id}


def test_runs_filters_by_job_outcome_and_limit(cluster: Cluster) -> None:
    invoke("run", "broken", "--wait", store=cluster.url, code=1)
    errors = invoke_json(cluster, "runs", "--outcome", "error", "--limit", "3")
    assert errors and {run["outcome"] for run in errors} == {"error"}
    assert {run["job_id"] for run in errors} == {"broken"}
    assert len(invoke_json(cluster, "runs", "--limit", "1")) == 1
    text = invoke("runs", "broken", "--limit", "1", store=cluster.url).stdout.splitlines()
    assert text[0].split() == ["AT", "JOB", "ATTEMPT", "OUTCOME", "SECONDS", "WORKER", "ERROR"]
    row = text[1].split()  # AT is three words: date, time, zone
    assert row[3:6] == ["broken", "2", "error"]
    assert row[7:] == [cluster.worker_id, "disk", "full"]


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["runs", "--limit", "0"], "Invalid value for '--limit'"),
        (["runs", "--outcome", "fine"], "Invalid value for '--outcome'"),
        (["run"], "Missing argument 'ID'"),
        (["launch", "report"], "No such command 'launch'"),
        (["run", "report", "--timeout", "0"], "Invalid value for '--timeout'"),
    ],
)
def test_usage_errors_exit_2(cluster: Cluster, args: list[str], complaint: str) -> None:
    assert complaint in invoke(*args, store=cluster.url, code=2).stderr


def test_workers_lists_the_live_worker(cluster: Cluster) -> None:
    workers = invoke_json(cluster, "workers")
    assert [(worker["id"], worker["pid"]) for worker in workers] == [
        (cluster.worker_id, cluster.process.pid)
    ]
    assert workers[0]["state"] == "running"
    after_command = json.loads(invoke("workers", "--json", store=cluster.url).stdout)
    assert [worker["id"] for worker in after_command] == [cluster.worker_id]
    lines = invoke("workers", store=cluster.url).stdout.splitlines()
    assert lines[0].split() == ["ID", "STATE", "STARTED", "LAST", "SEEN", "RUNNING"]
    assert lines[1].split()[:2] == [cluster.worker_id, "running"]


def test_status_reports_a_healthy_cluster(cluster: Cluster) -> None:
    status = invoke_json(cluster, "status")
    assert status["healthy"] is True and status["problems"] == []
    assert status["jobs"] == 4 and status["stale_jobs"] == []
    assert [worker["id"] for worker in status["workers"]] == [cluster.worker_id]
    assert status["store"] == cluster.url.split("?")[0].replace(PASSWORD, "***")
    text = invoke("status", store=cluster.url).stdout
    assert "healthy:    yes" in text and "workers:    1" in text


def test_python_m_and_the_console_script_run_the_command(cluster: Cluster) -> None:
    env = {**os.environ, "TASK_SCHEDULER_STORE": cluster.url}
    module = "library.components.scheduling.task_scheduler"
    by_module = subprocess.run(
        [sys.executable, "-m", module, "--json", "workers"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert by_module.returncode == 0, by_module.stderr
    assert [worker["id"] for worker in json.loads(by_module.stdout)] == [cluster.worker_id]
    script = Path(sys.executable).with_name("task-scheduler")
    by_script = subprocess.run(
        [str(script), "job", "nope"], env=env, capture_output=True, text=True, timeout=60
    )
    assert by_script.returncode == 1
    assert by_script.stderr == "task-scheduler: error: no job with id 'nope'\n"
    assert PASSWORD not in by_module.stdout + by_module.stderr + by_script.stderr
