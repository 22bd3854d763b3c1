"""Jobs in a persistent store: their stored definitions, and reconciling them at start.

Each schedule we put in a persistent store carries our job definition in its metadata
(``{"task_scheduler": {...}}``): name, callable reference, trigger spec, options, whether
code declared it, and a fingerprint. At start, declared jobs are reconciled with what the
store holds; jobs added at run time (by this or another process) are rebuilt from theirs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler import DeserializationError, Job, Schedule, SerializationError
from apscheduler.abc import Serializer

from ._aps.serializer import reference_to, resolve_reference
from ._config import DEFAULT_NAMESPACE, JobDefaults
from ._depends import job_dependencies
from ._errors import InvalidValueError
from ._jobs import JobSpec, callable_name, is_async_callable
from ._triggers import spec_from_dict

META_KEY = "task_scheduler"


def definition(spec: JobSpec, namespace: str = DEFAULT_NAMESPACE) -> dict[str, Any]:
    """The job as plain JSON data, with a fingerprint of everything but pause state and
    namespace (the app it belongs to)."""
    body = {
        "name": spec.name,
        "func": spec.func_ref,
        "trigger": spec.trigger.to_dict(),
        "options": spec.options.model_dump(),
        "args": list(spec.args),
        "kwargs": spec.kwargs,
    }
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
    return {
        "v": 1,
        "declared": spec.declared,
        "ns": namespace,
        "fingerprint": digest[:32],
        # The zone its trigger reads wall-clock times in (for readers without the code:
        # the task-scheduler command); outside the fingerprint, as it was added later.
        "timezone": spec.trigger.tz.key,
        **body,
    }


def namespace_of(data: Mapping[str, Any]) -> str:
    """The namespace a stored definition belongs to (stored before namespaces: the default)."""
    return str(data.get("ns", DEFAULT_NAMESPACE))


def as_metadata(spec: JobSpec, namespace: str = DEFAULT_NAMESPACE) -> dict[str, str]:
    """Schedule metadata carrying the job's definition.

    As a JSON string: APScheduler 4.0.0a6's metadata validator rejects any None nested in
    a dict (it tests the outer value for None), and definitions are full of them.
    """
    return {META_KEY: json.dumps(definition(spec, namespace), sort_keys=True)}


def stored_definition(schedule: Schedule | Job) -> dict[str, Any] | None:
    """The job definition a schedule (or a job, which copies its metadata) carries."""
    raw = schedule.metadata.get(META_KEY) if schedule.metadata else None
    if not isinstance(raw, str):
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def check_storable(spec: JobSpec, serializer: Serializer, *, resolve: bool = False) -> None:
    """Raise a ValueError naming the job if a persistent store could not hold or rerun it.

    ``resolve``: also import the callable back by name. Not at declaration: a decorator
    runs before its module has bound the function's name.
    """
    try:
        ref = reference_to(spec.func)
        found = resolve_reference(ref) if resolve else spec.func
    except (SerializationError, DeserializationError, LookupError, ValueError) as exc:
        raise InvalidValueError(
            f"job {spec.id!r} cannot be stored: its callable {spec.func_ref!r} must be "
            f"importable by name (a module-level function, not a lambda, a <locals> "
            f"function, a partial or a bound method): {exc}"
        ) from None
    if found is not spec.func:
        raise InvalidValueError(
            f"job {spec.id!r} cannot be stored: {ref!r} does not import as the same callable"
        )
    try:
        serializer.deserialize(serializer.serialize([list(spec.args), spec.kwargs]))
        json.dumps([list(spec.args), spec.kwargs])
    except (SerializationError, DeserializationError, TypeError, ValueError) as exc:
        reason = exc.__cause__ or exc
        raise InvalidValueError(
            f"job {spec.id!r} cannot be stored: its args and kwargs must be JSON data "
            f"(str, int, float, bool, None, lists, dicts): {reason}"
        ) from None


def spec_from_definition(
    job_id: str,
    data: Mapping[str, Any],
    tz: ZoneInfo,
) -> JobSpec:
    """Rebuild a job another process (or an earlier run) added at run time."""
    func = resolve_reference(str(data["func"]))
    args, kwargs = tuple(data.get("args", ())), dict(data.get("kwargs", {}))
    return JobSpec(
        id=job_id,
        name=str(data["name"]),
        func=func,
        func_ref=callable_name(func),
        is_async=is_async_callable(func),
        trigger=spec_from_dict(data["trigger"], tz),
        args=args,
        kwargs=kwargs,
        options=JobDefaults.model_validate(data["options"]),
        declared=False,
    ).depending_on(job_dependencies(func, job_id, args, kwargs))  # resolved here, per run


@dataclass
class Plan:
    """What start() does with each job, after comparing code with the store."""

    create: list[JobSpec] = field(default_factory=list)
    """Declared jobs the store lacks."""
    replace: list[JobSpec] = field(default_factory=list)
    """Declared jobs whose definition changed: new trigger from now (no extra run)."""
    keep: list[tuple[JobSpec, Schedule]] = field(default_factory=list)
    """Unchanged declared jobs: their pause state and next fire time stay."""
    remove: list[str] = field(default_factory=list)
    """Schedules declared by an earlier version of this app's code, and no longer."""
    adopt: list[tuple[str, dict[str, Any], Schedule]] = field(default_factory=list)
    """Jobs added at run time: rebuilt from their stored definitions."""


def plan(
    declared: Mapping[str, JobSpec], stored: list[Schedule], namespace: str = DEFAULT_NAMESPACE
) -> Plan:
    """Compare the declared jobs with the stored schedules of ``namespace``.

    Schedules that are not ours (no definition: added with raw APScheduler) and jobs of
    other namespaces (other apps sharing the store) are left alone. A declared id that
    another namespace holds is an error: replacing it would take that app's job.
    """
    result = Plan()
    by_id = {schedule.id: schedule for schedule in stored}
    for job_id, spec in declared.items():
        schedule = by_id.pop(job_id, None)
        data = None if schedule is None else stored_definition(schedule)
        if data is not None and namespace_of(data) != namespace:
            raise InvalidValueError(
                f"job {job_id!r} is declared in namespace {namespace!r}, but the store holds "
                f"a job {job_id!r} of namespace {namespace_of(data)!r} (another app sharing "
                f"this store): give one of them another id, or each app its own schema "
                f"(?schema=NAME in the store URL)"
            )
        if schedule is None:
            result.create.append(spec)
        elif (
            data is not None
            and data.get("fingerprint") == definition(spec, namespace)["fingerprint"]
        ):
            result.keep.append((spec, schedule))
        else:
            result.replace.append(spec)
    for schedule in by_id.values():
        data = stored_definition(schedule)
        if data is None or namespace_of(data) != namespace:
            continue
        if data.get("declared"):
            result.remove.append(schedule.id)
        else:
            result.adopt.append((schedule.id, data, schedule))
    return result
