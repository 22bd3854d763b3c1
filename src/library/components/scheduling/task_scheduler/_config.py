"""Configuration objects: validated once, when they are made, and frozen afterwards."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ._errors import InvalidValueError
from ._urls import parse_broker_url, parse_store_url, redact

DEFAULT_NAMESPACE = "default"
"""The namespace of jobs stored before namespaces existed, and of every app that sets none."""
NAMESPACE_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class JobDefaults(BaseModel):
    """Options every job gets unless it sets its own."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    coalesce: bool = Field(
        True, description="Run a backlog of missed fires once (True) or once per fire (False)."
    )
    max_instances: int = Field(
        1, ge=1, description="Runs of one job allowed at once; a fire beyond it is skipped."
    )
    misfire_grace_time: float | None = Field(
        None, gt=0, description="Seconds a fire may start late; later fires are not run."
    )
    timeout: float | None = Field(
        None, gt=0, description="Seconds a run may take before it is cancelled."
    )
    retries: int = Field(0, ge=0, description="Extra attempts after a failed or timed-out run.")
    retry_delay: float = Field(
        1.0, ge=0, description="Seconds before the first retry; doubles per attempt, capped."
    )
    jitter: float = Field(
        0.0, ge=0, description="Each run starts a random 0..jitter seconds after its fire time."
    )
    max_staleness: float | None = Field(
        None,
        gt=0,
        description="Seconds without a successful run after which the job counts as stale "
        "(health fails): a dead-man's switch.",
    )

    @model_validator(mode="before")
    @classmethod
    def _known_keys_only(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(cls.model_fields))
            if unknown:
                valid = ", ".join(cls.model_fields)
                raise InvalidValueError(
                    f"unknown job_defaults key {unknown[0]!r}; valid keys: {valid}"
                )
        return data


def validate_timezone(name: str) -> str:
    """Return ``name`` if it is an IANA timezone name this machine knows, else raise ValueError."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise InvalidValueError(
            f"unknown timezone {name!r}: use an IANA name such as 'UTC' or 'America/New_York'"
        ) from None
    return name


class SchedulerConfig(BaseModel):
    """Settings of one :class:`TaskScheduler`."""

    # Store URLs may hold passwords: errors name the value through our own messages only.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    timezone: str = Field(
        "UTC",
        description="IANA timezone in which cron fields and naive datetimes are read.",
    )
    job_defaults: JobDefaults = Field(default_factory=JobDefaults)
    max_concurrent_jobs: int = Field(
        100, ge=1, description="Runs allowed at once across all jobs; more wait for a slot."
    )
    shutdown_timeout: float = Field(
        25.0,
        ge=0,
        description="Seconds shutdown() waits for running jobs before cancelling them.",
    )
    history_size: int = Field(
        100,
        ge=1,
        description="Finished runs kept per job, newest first (in the store's database on "
        "persistent stores, pruned now and then: never a scan per run).",
    )
    gc_freeze: bool = Field(
        True,
        description="While the scheduler runs, keep the objects alive when it started out of "
        "the garbage collector's full passes (gc.freeze at start, gc.unfreeze at stop), so "
        "that no long full pass delays a second's fires. Skipped when the app disabled the "
        "collector or froze objects itself.",
    )
    history_max_age: float = Field(
        7 * 86400.0,
        gt=0,
        description="Seconds a finished run is kept in a persistent store's history.",
    )
    store: str = Field(
        default_factory=lambda: os.environ.get("TASK_SCHEDULER_STORE", "memory://"),
        description="Where schedules live: memory://, sqlite:///path/to/jobs.db, or "
        "postgresql://user@host:port/db (env TASK_SCHEDULER_STORE).",
    )
    event_broker: str | None = Field(
        default_factory=lambda: os.environ.get("TASK_SCHEDULER_EVENT_BROKER") or None,
        description="How processes wake each other: redis://host:port/db; default: "
        "PostgreSQL LISTEN/NOTIFY with a postgresql store, in-process otherwise "
        "(env TASK_SCHEDULER_EVENT_BROKER).",
    )
    connect_timeout: float = Field(
        10.0, gt=0, description="Seconds start() waits for a store or broker server to answer."
    )
    namespace: str = Field(
        DEFAULT_NAMESPACE,
        description="Which app's jobs these are, in a store several apps share: start() "
        "removes a declared job that is no longer declared only in its own namespace, and "
        "takes over only its own namespace's jobs added at run time. Every worker of one "
        "app uses the same value.",
    )

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # repr() and str() show the URLs without their passwords (model_dump keeps them:
        # it is the data, not a message).
        for name, value in super().__repr_args__():
            if name in ("store", "event_broker") and isinstance(value, str):
                yield name, redact(value)
            else:
                yield name, value

    @field_validator("timezone")
    @classmethod
    def _iana_timezone(cls, value: str) -> str:
        return validate_timezone(value)

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        if not NAMESPACE_PATTERN.fullmatch(value):
            raise InvalidValueError(
                f"invalid namespace {value!r}: use 1-64 letters, digits, '.', '_', ':' or '-'"
            )
        return value

    @field_validator("store")
    @classmethod
    def _store_url(cls, value: str) -> str:
        parse_store_url(value)
        return value

    @field_validator("event_broker")
    @classmethod
    def _broker_url(cls, value: str | None) -> str | None:
        if value is not None:
            parse_broker_url(value)
        return value

    @property
    def tzinfo(self) -> ZoneInfo:
        """The configured timezone as a :class:`~zoneinfo.ZoneInfo`."""
        return ZoneInfo(self.timezone)
