"""The ``task-scheduler`` command: see and drive the jobs of a persistent store from a shell.

It opens the store the app's workers share (``--store`` or ``TASK_SCHEDULER_STORE``) through
:class:`~._admin.StoreAdmin`, never imports the app, and runs nothing itself: ``run`` queues
a run-now that a live worker runs. ``--json`` prints JSON for scripts. Exit codes: 0 done,
1 the action failed (an unknown job, a run that did not succeed, an unhealthy cluster),
2 a usage error (also memory://, which nothing outside its process can reach), 3 the store
is unavailable. Nothing printed shows the store's password.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import anyio

from ._errors import MissingDependencyError

try:
    import click
except ImportError:  # pragma: no cover - the cli extra brings it
    raise MissingDependencyError(
        'the task-scheduler command needs click: pip install "fastapi-task-scheduler[cli]"'
    ) from None

from ._admin import QueuedRun, RunProgress, StoreAdmin, StoreStatus, as_json
from ._errors import (
    InvalidTypeError,
    InvalidValueError,
    JobNotFoundError,
    StoreUnavailableError,
    TaskSchedulerError,
    UnsupportedError,
)
from ._models import JobInfo, Outcome, RunInfo, WorkerInfo

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

T = TypeVar("T")

OK, FAILED, USAGE, UNAVAILABLE = 0, 1, 2, 3
"""The exit codes."""
OUTCOMES = [outcome.value for outcome in Outcome]
DEFAULT_WAIT = 60.0
"""Seconds ``run --wait`` waits for the outcome by default."""


class Settings:
    """The group's options, for every command."""

    def __init__(
        self,
        store: str | None,
        event_broker: str | None,
        timezone: str,
        connect_timeout: float,
        json_output: bool,
    ) -> None:
        self.store = store
        self.event_broker = event_broker
        self.timezone = timezone
        self.connect_timeout = connect_timeout
        self.json = json_output

    def secrets(self) -> list[str]:
        """The passwords in the URLs given: never printed."""
        found = []
        for url in (self.store, self.event_broker):
            try:
                password = urlsplit(url).password if url else None
            except ValueError:
                password = None
            if password:
                found.append(password)
        return found


def fail(settings: Settings | None, message: str, code: int) -> NoReturn:
    """Print ``message`` (without any password) on stderr and exit with ``code``."""
    for secret in settings.secrets() if settings is not None else ():
        message = message.replace(secret, "***")
    click.echo(f"task-scheduler: error: {message}", err=True)
    sys.exit(code)


def _first_error(exc: BaseException) -> BaseException:
    """The error inside a task group's exception group."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def call(settings: Settings, action: Callable[[StoreAdmin], Awaitable[T]]) -> T:
    """Open the store, run ``action`` on it, close it; errors become messages and exit codes."""
    if not settings.store:
        fail(settings, "no store given: pass --store URL or set TASK_SCHEDULER_STORE", USAGE)

    async def main() -> T:
        assert settings.store is not None
        async with StoreAdmin.open(
            settings.store,
            event_broker=settings.event_broker,
            timezone=settings.timezone,
            connect_timeout=settings.connect_timeout,
        ) as admin:
            return await action(admin)

    try:
        return anyio.run(main, backend="asyncio")
    except BaseException as raised:
        exc = _first_error(raised)
        if isinstance(exc, (SystemExit, KeyboardInterrupt)) or not isinstance(exc, Exception):
            raise
        if isinstance(exc, StoreUnavailableError):
            fail(settings, str(exc), UNAVAILABLE)
        if isinstance(exc, JobNotFoundError):
            fail(settings, str(exc), FAILED)
        if isinstance(exc, (InvalidValueError, InvalidTypeError, UnsupportedError)):
            fail(settings, str(exc), USAGE)
        if isinstance(exc, MissingDependencyError):
            fail(settings, str(exc), USAGE)
        if isinstance(exc, TaskSchedulerError):
            fail(settings, str(exc), FAILED)
        # Anything else is a bug: said in one line, as a traceback could quote a password.
        fail(settings, f"unexpected {type(exc).__name__}: {exc}", FAILED)


def emit(settings: Settings, data: Any, text: str) -> None:
    """``data`` as JSON with ``--json``, else ``text``."""
    if settings.json:
        click.echo(json.dumps(as_json(data), indent=2))
    else:
        click.echo(text)


# -- text ---------------------------------------------------------------------------------


def when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart."""
    widths = [len(header) for header in headers]
    for row in rows:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in [headers, *rows]
    ]
    return "\n".join(lines)


def outcome_of(run: RunInfo | None) -> str:
    if run is None:
        return "-"
    return "running" if run.outcome is None else run.outcome.value


def jobs_text(jobs: Sequence[JobInfo]) -> str:
    if not jobs:
        return "no jobs in the store"
    rows = [
        [
            job.id,
            job.trigger.description,
            when(job.next_run_time),
            "yes" if job.paused else "no",
            outcome_of(job.last_run),
        ]
        for job in jobs
    ]
    return table(["ID", "TRIGGER", "NEXT RUN", "PAUSED", "LAST OUTCOME"], rows)


def run_line(run: RunInfo) -> str:
    """One attempt in a sentence."""
    text = f"job {run.job_id!r} attempt {run.attempt}: {outcome_of(run)}"
    if run.duration is not None:
        text += f" in {run.duration:.3f} s"
    if run.worker:
        text += f" on worker {run.worker}"
    if run.error_message:
        kind = f"{run.error_type}: " if run.error_type else ""
        text += f" ({kind}{run.error_message})"
    return text


def job_text(job: JobInfo) -> str:
    options = {
        "timeout": job.timeout,
        "max_instances": job.max_instances,
        "coalesce": job.coalesce,
        "misfire_grace_time": job.misfire_grace_time,
        "retries": job.retries,
        "retry_delay": job.retry_delay,
        "jitter": job.jitter,
        "max_staleness": job.max_staleness,
    }
    counts = " ".join(f"{name}={count}" for name, count in job.counts.model_dump().items())
    lines = [
        ("id", job.id),
        ("name", job.name),
        ("callable", job.func),
        ("trigger", job.trigger.description),
        ("next run", when(job.next_run_time)),
        ("paused", "yes" if job.paused else "no"),
        ("running", str(job.running)),
        ("options", ", ".join(f"{key}={value}" for key, value in options.items())),
        ("last run", "-" if job.last_run is None else run_line(job.last_run)),
        ("last success", when(job.last_success_at)),
        ("counts", counts),
    ]
    return "\n".join(f"{key + ':':14}{value}" for key, value in lines)


def runs_text(runs: Sequence[RunInfo]) -> str:
    if not runs:
        return "no runs"
    rows = [
        [
            when(run.started_at or run.finished_at or run.scheduled_at),
            run.job_id,
            str(run.attempt),
            outcome_of(run),
            "-" if run.duration is None else f"{run.duration:.3f}",
            run.worker or "-",
            run.error_message or "",
        ]
        for run in runs
    ]
    return table(["AT", "JOB", "ATTEMPT", "OUTCOME", "SECONDS", "WORKER", "ERROR"], rows)


def workers_text(workers: Sequence[WorkerInfo]) -> str:
    if not workers:
        return "no live worker"
    rows = [
        [
            worker.id,
            worker.state,
            when(worker.started_at),
            when(worker.last_seen),
            str(worker.runs_in_progress),
        ]
        for worker in workers
    ]
    return table(["ID", "STATE", "STARTED", "LAST SEEN", "RUNNING"], rows)


def status_text(status: StoreStatus) -> str:
    lines = [
        ("store", status.store),
        ("healthy", "yes" if status.healthy else "no: " + "; ".join(status.problems)),
        ("workers", str(len(status.workers))),
        ("jobs", f"{status.jobs} ({status.paused} paused)"),
        ("running", str(status.runs_in_progress)),
        ("queued", str(status.queued_runs)),
        ("stale jobs", ", ".join(status.stale_jobs) or "-"),
    ]
    return "\n".join(f"{key + ':':12}{value}" for key, value in lines)


# -- the commands ---------------------------------------------------------------------------

json_option = click.option("--json", "json_output", is_flag=True, help="Print JSON.")


def settings_of(ctx: click.Context, json_output: bool) -> Settings:
    settings = ctx.find_object(Settings)
    assert settings is not None  # the group made it
    if json_output:
        settings.json = True
    return settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--store",
    envvar="TASK_SCHEDULER_STORE",
    metavar="URL",
    help="The app's persistent store: sqlite:///path/to/jobs.db or "
    "postgresql://user@host:port/db (env TASK_SCHEDULER_STORE).",
)
@click.option(
    "--event-broker",
    envvar="TASK_SCHEDULER_EVENT_BROKER",
    metavar="URL",
    help="The Redis broker the app's workers use, if any (env TASK_SCHEDULER_EVENT_BROKER).",
)
@click.option(
    "--timezone", default="UTC", show_default=True, help="IANA timezone the times are shown in."
)
@click.option(
    "--connect-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds to wait for the store's server.",
)
@json_option
@click.version_option(package_name="fastapi-task-scheduler")
@click.pass_context
def cli(
    ctx: click.Context,
    store: str | None,
    event_broker: str | None,
    timezone: str,
    connect_timeout: float,
    json_output: bool,
) -> None:
    """See and manage the jobs of a task scheduler's persistent store, without the app.

    Exit codes: 0 done, 1 the action failed (unknown job, run not successful, cluster not
    healthy), 2 usage error, 3 store unavailable.
    """
    ctx.obj = Settings(store, event_broker, timezone, connect_timeout, json_output)


@cli.command()
@json_option
@click.pass_context
def jobs(ctx: click.Context, json_output: bool) -> None:
    """List the jobs: id, trigger, next run, paused, last outcome."""
    settings = settings_of(ctx, json_output)
    found = call(settings, lambda admin: admin.jobs())
    emit(settings, found, jobs_text(found))


@cli.command()
@click.argument("job_id", metavar="ID")
@json_option
@click.pass_context
def job(ctx: click.Context, job_id: str, json_output: bool) -> None:
    """Show one job."""
    settings = settings_of(ctx, json_output)
    found = call(settings, lambda admin: admin.job(job_id))
    emit(settings, found, job_text(found))


@cli.command()
@click.argument("job_id", metavar="ID")
@json_option
@click.pass_context
def pause(ctx: click.Context, job_id: str, json_output: bool) -> None:
    """Pause a job on every worker (a run in progress goes on)."""
    settings = settings_of(ctx, json_output)
    found = call(settings, lambda admin: admin.pause(job_id))
    emit(settings, found, f"paused job {found.id!r}")


@cli.command()
@click.argument("job_id", metavar="ID")
@json_option
@click.pass_context
def resume(ctx: click.Context, job_id: str, json_output: bool) -> None:
    """Resume a job from now on (fires missed while paused are not run)."""
    settings = settings_of(ctx, json_output)
    found = call(settings, lambda admin: admin.resume(job_id))
    emit(settings, found, f"resumed job {found.id!r}; next run: {when(found.next_run_time)}")


@cli.command()
@click.argument("job_id", metavar="ID")
@click.option("--wait", is_flag=True, help="Wait for the outcome; exit 1 unless it succeeded.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_WAIT,
    show_default=True,
    help="Seconds --wait waits.",
)
@json_option
@click.pass_context
def run(ctx: click.Context, job_id: str, wait: bool, timeout: float, json_output: bool) -> None:
    """Queue a run of a job now, for the live workers (the first free one runs it)."""
    settings = settings_of(ctx, json_output)

    async def queue(admin: StoreAdmin) -> tuple[QueuedRun, int, RunProgress | None]:
        queued = await admin.run(job_id)
        workers = len(await admin.workers())
        progress = await admin.wait(queued, timeout) if wait else None
        return queued, workers, progress

    queued, workers, progress = call(settings, queue)
    if not workers:
        click.echo(
            f"task-scheduler: warning: no live worker: the run of {job_id!r} waits in the "
            f"store's queue until one starts",
            err=True,
        )
    if progress is None:
        data = {
            "job_id": queued.job_id,
            "fire_id": queued.fire_id,
            "requested_at": queued.requested_at.isoformat(),
            "state": "queued",
        }
        emit(settings, data, f"queued a run of job {job_id!r} (fire id {queued.fire_id})")
        return
    last = progress.last
    if progress.done and last is not None:
        emit(settings, last, run_line(last))
        sys.exit(OK if last.outcome is Outcome.success else FAILED)
    if progress.lost:
        fail(
            settings,
            f"a worker took the run of job {job_id!r} (fire id {queued.fire_id}) but recorded "
            f"no attempt: see that worker's log",
            FAILED,
        )
    state = "still queued" if last is None and progress.queued else "not finished"
    if last is not None and last.outcome is None:
        state = f"still running (attempt {last.attempt})"
    if settings.json and last is not None:
        emit(settings, last, "")
    fail(
        settings,
        f"the run of job {job_id!r} (fire id {queued.fire_id}) is {state} after {timeout:g} s",
        FAILED,
    )


@cli.command()
@click.argument("job_id", metavar="[ID]", required=False)
@click.option("--outcome", type=click.Choice(OUTCOMES), help="Only runs that ended so.")
@click.option(
    "--limit",
    type=click.IntRange(1, 1000),
    default=20,
    show_default=True,
    help="At most this many runs.",
)
@json_option
@click.pass_context
def runs(
    ctx: click.Context, job_id: str | None, outcome: str | None, limit: int, json_output: bool
) -> None:
    """List runs, newest first (of one job, or of every job), on every worker."""
    settings = settings_of(ctx, json_output)
    wanted = None if outcome is None else Outcome(outcome)
    found = call(settings, lambda admin: admin.runs(job_id, limit, wanted))
    emit(settings, found, runs_text(found))


@cli.command()
@json_option
@click.pass_context
def workers(ctx: click.Context, json_output: bool) -> None:
    """List the live workers, oldest first."""
    settings = settings_of(ctx, json_output)
    found = call(settings, lambda admin: admin.workers())
    emit(settings, found, workers_text(found))


@cli.command()
@json_option
@click.pass_context
def status(ctx: click.Context, json_output: bool) -> None:
    """Show the cluster's health; exit 1 if no worker is live or a job is stale."""
    settings = settings_of(ctx, json_output)
    found = call(settings, lambda admin: admin.status())
    emit(settings, found, status_text(found))
    sys.exit(OK if found.healthy else FAILED)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit code."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="task-scheduler")
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else FAILED)
    return OK
