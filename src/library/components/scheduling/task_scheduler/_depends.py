"""``Depends`` in jobs: FastAPI's own dependency machinery, run once per attempt.

At declaration, :func:`job_dependencies` reads the job's signature and, for a job with
``Depends``/``Security`` parameters, has FastAPI analyse them (``get_dependant``) and checks
that nothing in the tree needs an HTTP request (``Request``, ``Header``, ``Query``, a body...):
such a parameter fails the declaration, named. Jobs without dependencies get ``None``: the
executor's hot path pays one attribute test for them.

Per attempt, :meth:`JobDependencies.resolve` runs FastAPI's ``solve_dependencies`` in the task
that runs the job, on an exit stack of its own (per-run cache, sub-dependencies, sync ones in
worker threads, overrides), and closes it when the call ends: generator dependencies are
cleaned up after a success, an error, a timeout or a cancellation at shutdown, shielded from
that cancellation (as FastAPI 0.163 and later shields an endpoint's; here on every version).

FastAPI is imported only when a job may use it: a ``Depends`` object cannot exist before
``fastapi.params`` is imported, so a process that never imported FastAPI skips the look.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from types import FunctionType
from typing import Annotated, Any, get_args, get_origin
from weakref import WeakKeyDictionary

import anyio
import anyio.lowlevel

from ._errors import InvalidTypeError, InvalidValueError

_FASTAPI_PARAMS = "fastapi.params"
_UNKNOWN = object()


@dataclass(frozen=True, slots=True)
class _FastAPI:
    """What this module uses of FastAPI and Starlette, imported once, when first needed."""

    depends: type[Any]
    request_markers: tuple[type[Any], ...]
    """``Header()``, ``Query()``, ``Body()``... (FastAPI's ``Param`` and ``Body``)."""
    request_types: tuple[type[Any], ...]
    """``Request``, ``WebSocket``, ``Response``, ``BackgroundTasks``."""
    request: type[Any]
    get_typed_signature: Callable[..., inspect.Signature]
    get_dependant: Callable[..., Any]
    solve_dependencies: Callable[..., Any]
    solve_options: Mapping[str, Any]
    pass_stack: bool


@functools.cache
def _fastapi() -> _FastAPI:
    from fastapi import params
    from fastapi.dependencies import utils
    from starlette.background import BackgroundTasks
    from starlette.requests import HTTPConnection, Request
    from starlette.responses import Response

    accepted = inspect.signature(utils.solve_dependencies).parameters
    return _FastAPI(
        depends=params.Depends,
        request_markers=(params.Param, params.Body),
        request_types=(HTTPConnection, Response, BackgroundTasks),
        request=Request,
        get_typed_signature=utils.get_typed_signature,
        get_dependant=utils.get_dependant,
        solve_dependencies=utils.solve_dependencies,
        solve_options=_solve_options(accepted),
        pass_stack="async_exit_stack" in accepted,
    )


class DependencyOverrides:
    """Where a run's dependency overrides come from: the scheduler's own mapping
    (``TaskScheduler.dependency_overrides``), and the app's ``dependency_overrides`` while the
    scheduler runs in that app's lifespan. Both are read at each run (tests change them);
    where both override one dependency, the scheduler's wins."""

    __slots__ = ("app", "own")

    def __init__(self) -> None:
        self.own: dict[Callable[..., Any], Callable[..., Any]] = {}
        self.app: object | None = None

    def current(self) -> Mapping[Callable[..., Any], Callable[..., Any]] | None:
        """The overrides in force now; None when there are none."""
        app = self.app
        from_app = None if app is None else getattr(app, "dependency_overrides", None)
        if not from_app:
            return self.own or None
        if not self.own:
            return from_app  # type: ignore[no-any-return]
        return {**from_app, **self.own}


@dataclass(frozen=True, slots=True)
class _OverridesProvider:
    """What ``solve_dependencies`` reads overrides from (FastAPI passes the app)."""

    dependency_overrides: Mapping[Callable[..., Any], Callable[..., Any]]


class _DependencyParameters:
    """Stands in for the job when FastAPI reads its signature: only the parameters that are
    dependencies, and not given explicitly (the job's other parameters are its own)."""

    def __init__(self, signature: inspect.Signature) -> None:
        self.__signature__ = signature

    def __call__(self, **values: Any) -> dict[str, Any]:  # never called: FastAPI reads only
        return values


@dataclass(frozen=True, slots=True, eq=False)
class JobDependencies:
    """A job's dependencies, analysed once by FastAPI; resolved anew for every attempt."""

    job_id: str
    dependant: Any
    """FastAPI's ``Dependant`` of the job's dependency parameters."""
    solve: Callable[..., Any]
    """``fastapi.dependencies.utils.solve_dependencies``."""
    solve_options: Mapping[str, Any]
    """Arguments this FastAPI version's ``solve_dependencies`` needs beyond ours."""
    pass_stack: bool
    """Whether it takes the exit stack as ``async_exit_stack`` (FastAPI 0.112 and later)."""
    request_class: type[Any]

    @asynccontextmanager
    async def resolve(
        self, kwargs: Mapping[str, Any], overrides: DependencyOverrides | None
    ) -> AsyncIterator[dict[str, Any]]:
        """The job's keyword arguments: its dependencies' values, then ``kwargs`` over them.
        Generator dependencies are closed when the block ends, however it ends."""
        current = None if overrides is None else overrides.current()
        # Entered before the stack, so it encloses every scope FastAPI enters on it.
        with anyio.CancelScope() as cleanup:
            async with AsyncExitStack() as stack:
                try:
                    yield await self._solve(stack, kwargs, current)
                finally:
                    # Generator dependencies close even when the run was cancelled (timeout,
                    # shutdown): their clean-up is shielded from that cancellation, as FastAPI
                    # 0.163 and later shields an endpoint's (and older versions do not).
                    cleanup.shield = True
        # A task group in a dependency can swallow the cancellation while shielded.
        await anyio.lowlevel.checkpoint_if_cancelled()

    async def _solve(
        self,
        stack: AsyncExitStack,
        kwargs: Mapping[str, Any],
        overrides: Mapping[Callable[..., Any], Callable[..., Any]] | None,
    ) -> dict[str, Any]:
        # solve_dependencies reads its exit stacks, and the (empty) query string, headers and
        # cookies, from a request's scope: one that stands for no request.
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/",
            "query_string": b"",
            "headers": [],
            "fastapi_inner_astack": stack,
            "fastapi_function_astack": stack,
            "fastapi_astack": stack,  # FastAPI < 0.112's name for it
        }
        solved = await self.solve(
            request=self.request_class(scope),
            dependant=self.dependant,
            dependency_overrides_provider=(
                None if overrides is None else _OverridesProvider(overrides)
            ),
            **self.solve_options,
            **({"async_exit_stack": stack} if self.pass_stack else {}),
        )
        if isinstance(solved, tuple):  # FastAPI < 0.112: (values, errors, ...)
            values, errors = solved[0], solved[1]
        else:
            values, errors = solved.values, solved.errors
        if errors:
            # Only an override can need what a request has: the declaration checked the rest.
            raise InvalidValueError(
                f"job {self.job_id!r}: its dependencies need values only an HTTP request "
                f"has (an override with request parameters?): {errors}"
            )
        if kwargs:
            values.update(kwargs)
        return values  # type: ignore[no-any-return]


def _solve_options(accepted: Mapping[str, inspect.Parameter]) -> dict[str, Any]:
    """Arguments that FastAPI versions added to ``solve_dependencies``, as we pass them."""
    return {"embed_body_fields": False} if "embed_body_fields" in accepted else {}


def _shown(call: object) -> str:
    """``'module:qualname'`` of a dependency (its class's, for a callable object)."""
    module, name = getattr(call, "__module__", None), getattr(call, "__qualname__", None)
    if module is None or name is None:
        module, name = type(call).__module__, type(call).__qualname__
    return repr(f"{module}:{name}")


def _metadata(annotation: object) -> tuple[object, tuple[object, ...]]:
    """The type and the ``Annotated`` extras of an annotation."""
    if get_origin(annotation) is Annotated:
        base, *extras = get_args(annotation)
        return base, tuple(extras)
    return annotation, ()


def _covered(
    signature: inspect.Signature, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> set[str]:
    """Names of the parameters the explicit ``args`` and ``kwargs`` give a value to."""
    covered = set(kwargs)
    positional = [
        p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    covered.update(p.name for p in positional[: len(args)])
    return covered


_SIGNATURES: WeakKeyDictionary[Callable[..., Any], inspect.Signature | None] = WeakKeyDictionary()
"""Plain functions' signatures, read once: with FastAPI imported, every job added is looked at,
and jobs added at run time often share a function (~50 us a look, ~1 us from here)."""


def _signature(func: Callable[..., Any]) -> inspect.Signature | None:
    cacheable = type(func) is FunctionType
    if cacheable and (known := _SIGNATURES.get(func, _UNKNOWN)) is not _UNKNOWN:
        return known  # type: ignore[return-value]
    signature: inspect.Signature | None
    try:
        signature = _fastapi().get_typed_signature(
            func
        )  # string annotations evaluated as FastAPI does
    except Exception:
        try:
            signature = inspect.signature(func)
        except (TypeError, ValueError):
            signature = None  # a builtin without a signature: it has no dependencies
    if cacheable:
        _SIGNATURES[func] = signature
    return signature


def job_dependencies(
    func: Callable[..., Any], job_id: str, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> JobDependencies | None:
    """The job's dependencies, analysed by FastAPI; None if it declares none (or if the
    explicit ``args``/``kwargs`` give every one of them). Raises InvalidValueError or
    InvalidTypeError naming a parameter that only an HTTP request could fill."""
    if _FASTAPI_PARAMS not in sys.modules:
        return None  # no Depends object can exist yet: nothing to look for
    fastapi = _fastapi()
    signature = _signature(func)
    if signature is None:
        return None
    given = _covered(signature, args, kwargs)
    wanted: list[inspect.Parameter] = []
    for parameter in signature.parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        base, extras = _metadata(parameter.annotation)
        markers = (*extras, parameter.default)
        if any(isinstance(marker, fastapi.depends) for marker in markers):
            if parameter.name in given:
                continue  # explicit arguments win over dependencies
            if parameter.kind is parameter.POSITIONAL_ONLY:
                raise InvalidValueError(
                    f"job {job_id!r}: dependency parameter {parameter.name!r} is "
                    f"positional-only; dependencies are passed by name: make it a regular "
                    f"parameter"
                )
            wanted.append(parameter.replace(kind=parameter.KEYWORD_ONLY))
        elif parameter.name not in given:
            _check_not_request_bound(fastapi, job_id, parameter.name, base, markers)
    if not wanted:
        return None
    try:
        dependant = fastapi.get_dependant(
            path="", call=_DependencyParameters(inspect.Signature(wanted))
        )
    except Exception as exc:  # FastAPI's own checks (assertions, DependencyScopeError...)
        raise InvalidValueError(f"job {job_id!r}: invalid dependencies: {exc}") from exc
    for name, dependency, what in _request_bound(dependant):
        raise InvalidValueError(
            f"job {job_id!r}: dependency {dependency} needs {what} {name!r}, which only an "
            f"HTTP request has; a job runs outside any request: give the job what it needs "
            f"through dependencies that do not read the request"
        )
    return JobDependencies(
        job_id=job_id,
        dependant=dependant,
        solve=fastapi.solve_dependencies,
        solve_options=fastapi.solve_options,
        pass_stack=fastapi.pass_stack,
        request_class=fastapi.request,
    )


def _check_not_request_bound(
    fastapi: _FastAPI, job_id: str, name: str, base: object, markers: tuple[object, ...]
) -> None:
    """A parameter of the job itself that FastAPI would fill from a request: rejected."""
    for marker in markers:
        if isinstance(marker, fastapi.request_markers):
            raise InvalidValueError(
                f"job {job_id!r}: parameter {name!r} is a request parameter "
                f"({type(marker).__name__}), which only an HTTP request has; a job runs "
                f"outside any request: give it a value with kwargs=..., a plain default, "
                f"or Depends(...)"
            )
    # isinstance(list[int], type) is True on Python 3.10, and issubclass() then raises.
    if (
        isinstance(base, type)
        and get_origin(base) is None
        and issubclass(base, fastapi.request_types)
    ):
        raise InvalidTypeError(
            f"job {job_id!r}: parameter {name!r} is a {base.__name__}, which only an HTTP "
            f"request has; a job runs outside any request"
        )


def _request_bound(dependant: Any) -> Iterator[tuple[str, str, str]]:
    """(parameter, dependency, what) for every parameter in the tree a request would fill."""
    todo = list(dependant.dependencies)
    while todo:
        current = todo.pop()
        todo.extend(current.dependencies)
        owner = _shown(current.call)
        for kind, fields in (
            ("path parameter", current.path_params),
            ("query parameter", current.query_params),
            ("header", current.header_params),
            ("cookie", current.cookie_params),
            ("request body parameter", current.body_params),
        ):
            for field in fields:
                yield field.name, owner, kind
        for kind, attribute in (
            ("the Request in parameter", "request_param_name"),
            ("the WebSocket in parameter", "websocket_param_name"),
            (
                "the HTTP connection (Request or WebSocket) in parameter",
                "http_connection_param_name",
            ),
            ("the Response in parameter", "response_param_name"),
            ("the BackgroundTasks in parameter", "background_tasks_param_name"),
        ):
            name = getattr(current, attribute, None)
            if name is not None:
                yield name, owner, kind
