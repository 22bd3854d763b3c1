"""What the scheduler tells users about jobs and runs: pydantic models, JSON-ready."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Outcome(str, Enum):
    """How one run attempt ended."""

    success = "success"
    error = "error"
    timed_out = "timed_out"
    cancelled = "cancelled"
    skipped = "skipped"
    """The job was already running ``max_instances`` times: the fire was not run."""
    missed = "missed"
    """The fire could not start within ``misfire_grace_time``: it was not run."""
    abandoned = "abandoned"
    """The process running it died."""


class RunInfo(BaseModel):
    """One attempt of one fire of a job."""

    model_config = ConfigDict(frozen=True)

    run_id: str = Field(description="Unique id of this attempt.")
    job_id: str
    attempt: int = Field(1, ge=1, description="1 for the first attempt, 2 for the first retry...")
    scheduled_at: datetime = Field(
        description="The fire time (without jitter), or the request time of a run-now."
    )
    started_at: datetime | None = Field(None, description="None if the run never started.")
    finished_at: datetime | None = Field(None, description="None while the run is in progress.")
    duration: float | None = Field(None, description="Seconds from start to finish.")
    outcome: Outcome | None = Field(None, description="None while the run is in progress.")
    error_type: str | None = Field(None, description="Exception class name, if any.")
    error_message: str | None = Field(None, description="Exception message (traceback is logged).")
    worker: str | None = Field(
        None, description="Id of the worker (process) that ran it, or that recorded it."
    )


class RunCounts(BaseModel):
    """Finished attempts of a job, per outcome: cumulative, and the cluster's on a persistent
    store (every worker answers the same; pruning old runs never lowers them)."""

    model_config = ConfigDict(frozen=True)

    success: int = 0
    error: int = 0
    timed_out: int = 0
    cancelled: int = 0
    skipped: int = 0
    missed: int = 0
    abandoned: int = 0


class TriggerInfo(BaseModel):
    """When a job fires."""

    model_config = ConfigDict(frozen=True)

    type: Literal["interval", "cron", "date"]
    description: str = Field(description='Plain English, e.g. "Every 30 seconds".')
    timezone: str
    interval_seconds: float | None = Field(None, description="Interval jobs: seconds between runs.")
    expression: str | None = Field(None, description="Cron jobs declared with a crontab string.")
    fields: dict[str, str] | None = Field(None, description="Cron jobs declared with fields.")
    run_at: datetime | None = Field(None, description="Date jobs: the one run time.")
    start: datetime | None = None
    end: datetime | None = None


class JobInfo(BaseModel):
    """A job as the scheduler holds it now."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    func: str = Field(description='"module:qualname" of the callable.')
    trigger: TriggerInfo
    next_run_time: datetime | None = Field(
        None, description="In the configured timezone; None when paused, finished or not started."
    )
    paused: bool
    timeout: float | None
    max_instances: int
    coalesce: bool
    misfire_grace_time: float | None
    retries: int
    retry_delay: float
    jitter: float
    max_staleness: float | None
    running: int = Field(0, description="Runs of this job in progress now, on every worker.")
    last_run: RunInfo | None = Field(None, description="The newest run, on any worker.")
    last_success_at: datetime | None = Field(
        None, description="When the job last finished a run successfully, on any worker."
    )
    counts: RunCounts = Field(default_factory=RunCounts)


SchedulerState = Literal["stopped", "starting", "running", "stopping", "failed"]


class SchedulerStatus(BaseModel):
    """The scheduler's own health."""

    model_config = ConfigDict(frozen=True)

    state: SchedulerState
    started_at: datetime | None = None
    engine_restarts: int = Field(0, description="Times the engine was restarted after a crash.")
    last_engine_error: str | None = None
    job_count: int = 0
    runs_in_progress: int = 0
    stale_jobs: list[str] = Field(
        default_factory=list,
        description="Jobs with max_staleness whose last success on any worker (or this "
        "worker's start) is older.",
    )
    unloadable_jobs: list[str] = Field(
        default_factory=list,
        description="Jobs with a row in the store (a schedule, or a queued fire) that this "
        "worker cannot load - corrupted, written by hand or by an older release: they do not "
        "run, every other job does. Each is logged once at ERROR with the reason, and left in "
        "the store; remove_job() removes it.",
    )
    worker_id: str | None = Field(None, description="This worker's (process's) id.")
    loop_lag: float = Field(
        0.0,
        description="Seconds: the longest the event loop was blocked in the last 5 minutes "
        "(a job calling blocking code in `async def`); over 1 s is logged as a WARNING.",
    )
    workers: int = Field(0, description="Live workers sharing the store (1 on memory://).")
    abandoned_threads: int = Field(
        0,
        description="Worker threads of plain `def` runs that timed out or were cancelled and "
        "still run (each keeps its job's max_instances slot until its function returns).",
    )


WorkerState = Literal["starting", "running", "stopping", "failed"]


class WorkerInfo(BaseModel):
    """A process running jobs from the store, as its heartbeat last told."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(description="host:pid:suffix, stable while the process lives.")
    host: str
    pid: int
    started_at: datetime
    last_seen: datetime = Field(description="Its last heartbeat.")
    state: WorkerState
    runs_in_progress: int = Field(0, description="Runs in progress on that worker.")
