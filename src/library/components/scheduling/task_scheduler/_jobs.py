"""A declared job: the callable, its trigger spec and its options, validated once."""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypedDict

from pydantic import ValidationError

from ._config import JobDefaults
from ._depends import JobDependencies, job_dependencies
from ._errors import InvalidTypeError, InvalidValueError, shown_id
from ._shared import SHARED_EMPTY
from ._triggers import TriggerSpec


class JobOptions(TypedDict, total=False):
    """Options every way of adding a job accepts (defaults come from ``job_defaults``)."""

    id: str
    name: str
    args: Sequence[Any]
    kwargs: Mapping[str, Any]
    timeout: float | None
    max_instances: int
    coalesce: bool
    misfire_grace_time: float | None
    paused: bool
    retries: int
    retry_delay: float
    jitter: float
    max_staleness: float | None


_OWN_OPTIONS = ("id", "name", "args", "kwargs", "paused")
VALID_OPTIONS = (*_OWN_OPTIONS, *JobDefaults.model_fields)
_VALID_OPTIONS = frozenset(VALID_OPTIONS)
_DEFAULT_FIELDS = frozenset(JobDefaults.model_fields)


def callable_name(func: Callable[..., Any]) -> str:
    """``"module:qualname"`` of a function, bound method, partial or callable object."""
    target: Any = func
    while isinstance(target, functools.partial):
        target = target.func
    target = getattr(target, "__func__", target)
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None)
    if module is None or qualname is None:
        kind = type(target)
        module, qualname = kind.__module__, kind.__qualname__
    # Interned: every job of one callable shares the string (61 B a job, memory per idle schedule).
    return sys.intern(f"{module}:{qualname}")


def is_async_callable(func: Callable[..., Any]) -> bool:
    """True if calling ``func`` returns a coroutine (functions, partials, async ``__call__``)."""
    target: Any = func
    while isinstance(target, functools.partial):
        target = target.func
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
        getattr(target, "__call__", None)  # noqa: B004 - we want the async __call__ itself
    )


@dataclass(slots=True, frozen=True, eq=False)
class JobSpec:
    """A job's definition: everything needed to (re)create it in the engine. Immutable:
    pause state and runs are runtime state (:class:`~._registry.JobRuntime`)."""

    id: str
    name: str
    func: Callable[..., Any]
    func_ref: str
    is_async: bool
    trigger: TriggerSpec
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: JobDefaults
    declared: bool
    """True for decorator jobs, False for jobs added at run time."""
    dependencies: ClassVar[JobDependencies | None] = None
    """Its ``Depends`` parameters, analysed at declaration. A class-level None for jobs
    without any: only a :class:`DependentJobSpec` holds them, so other jobs pay no slot
    (memory per idle schedule: bench/README.md)."""

    def depending_on(self, dependencies: JobDependencies | None) -> JobSpec:
        """This spec, or a copy holding ``dependencies`` (when not None)."""
        if dependencies is None:
            return self
        fields = {name: getattr(self, name) for name in JobSpec.__slots__}
        return DependentJobSpec(**fields, dependencies=dependencies)


@dataclass(slots=True, frozen=True, eq=False)
class DependentJobSpec(JobSpec):
    """The definition of a job with ``Depends`` parameters (see :meth:`JobSpec.depending_on`)."""

    dependencies: JobDependencies  # type: ignore[misc]  # a slot here, a ClassVar None above


JOB_ID_MAX_LENGTH = 200
"""Characters a job id may have: the SQL stores' id columns hold 500 (PostgreSQL's
varchar(500)); the rest is headroom."""
JOB_ID_RULE = (
    f"ids are 1-{JOB_ID_MAX_LENGTH} printable characters without '/' (and not '.' or '..')"
)
"""The rule every job id follows, as its errors state it. Printable is ``str.isprintable()``:
no control characters (NUL, newlines, tabs...), no line separators, no lone surrogates. No
``/`` and not ``.`` or ``..``: the router's ``/jobs/{job_id}`` routes could not be reached for
such ids (a path's ``/``, even as ``%2F``, splits it; clients resolve dot segments)."""
_DOT_SEGMENTS = frozenset({".", ".."})


def is_valid_job_id(job_id: object) -> bool:
    """True if ``job_id`` follows :data:`JOB_ID_RULE`."""
    return (
        isinstance(job_id, str)
        and 0 < len(job_id) <= JOB_ID_MAX_LENGTH
        and job_id.isprintable()
        and "/" not in job_id
        and job_id not in _DOT_SEGMENTS
    )


def validate_job_id(job_id: object, *, default: bool = False) -> str:
    """``job_id`` if it follows :data:`JOB_ID_RULE`; else InvalidTypeError (not a string) or
    InvalidValueError naming it (cut when huge) and the rule. ``default``: the id was made
    from the callable's name, so the error says to pass ``id=...``."""
    if is_valid_job_id(job_id):
        assert isinstance(job_id, str)
        return job_id
    if not isinstance(job_id, str):
        raise InvalidTypeError(f"job id must be a string, got {job_id!r}; {JOB_ID_RULE}")
    hint = (
        " (the default id, from the function's module and name): pass id=...;" if default else ":"
    )
    raise InvalidValueError(f"invalid job id {shown_id(job_id)}{hint} {JOB_ID_RULE}")


def job_id_for(func: Callable[..., Any], options: Mapping[str, Any]) -> str:
    """The ``id`` option, or ``"module:qualname"`` of ``func``; either checked against
    :data:`JOB_ID_RULE`."""
    job_id = options.get("id")
    if job_id is None:
        return validate_job_id(callable_name(func), default=True)
    return validate_job_id(job_id)


def make_spec(
    func: Callable[..., Any],
    job_id: str,
    trigger: TriggerSpec,
    options: Mapping[str, Any],
    defaults: JobDefaults,
    *,
    declared: bool,
) -> JobSpec:
    """Validate ``options`` against :data:`VALID_OPTIONS` and ``defaults``; raise ValueError."""
    if not callable(func):
        raise InvalidTypeError(f"job {job_id!r}: expected a callable, got {func!r}")
    unknown = sorted(options.keys() - _VALID_OPTIONS)
    if unknown:
        raise InvalidValueError(
            f"job {job_id!r}: unknown option {unknown[0]!r}; valid options: "
            f"{', '.join(VALID_OPTIONS)}"
        )
    overrides = {key: value for key, value in options.items() if key in _DEFAULT_FIELDS}
    try:
        # Frozen, so jobs without overrides share the defaults object itself.
        resolved = (
            defaults
            if not overrides
            else JobDefaults.model_validate({**defaults.model_dump(), **overrides})
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"])
        raise InvalidValueError(
            f"job {job_id!r}: invalid {field} {error['input']!r}: {error['msg'].lower()}"
        ) from None
    name = options.get("name", getattr(func, "__name__", None) or job_id)
    args = options.get("args", ())
    kwargs = options.get("kwargs", {})
    if isinstance(args, (str, bytes)) or not isinstance(args, Sequence):
        raise InvalidValueError(f"job {job_id!r}: args must be a list or tuple, got {args!r}")
    if not isinstance(kwargs, Mapping):
        raise InvalidValueError(f"job {job_id!r}: kwargs must be a mapping, got {kwargs!r}")
    return JobSpec(
        id=job_id,
        name=str(name),
        func=func,
        func_ref=callable_name(func),
        is_async=is_async_callable(func),
        trigger=trigger.shared(),
        args=tuple(args),
        kwargs=dict(kwargs) if kwargs else SHARED_EMPTY,
        options=resolved,
        declared=declared,
    ).depending_on(job_dependencies(func, job_id, args, kwargs))
