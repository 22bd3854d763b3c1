"""``Depends`` in jobs, at declaration: what is analysed, and what is refused (no engine).

A job runs outside any HTTP request: a parameter that only a request could fill (``Request``,
``Header``, ``Query``, a body...), on the job or anywhere in its dependencies, fails the
declaration with an error that names it.

No ``from __future__ import annotations`` here: jobs defined inside tests use local names in
their annotations, which FastAPI (like ``typing.get_type_hints``) could not evaluate as strings.
"""

import re
import subprocess
import sys
from typing import Annotated

import pytest
from fastapi import (
    BackgroundTasks,
    Body,
    Cookie,
    Depends,
    Header,
    Path,
    Query,
    Request,
    Response,
    Security,
    WebSocket,
)
from fastapi.security import OAuth2PasswordBearer, SecurityScopes

from library.components.scheduling.task_scheduler import (
    InvalidTypeError,
    InvalidValueError,
    TaskScheduler,
)


def get_settings() -> dict[str, str]:
    return {"env": "test"}


def needs_request(request: Request) -> str:
    return str(request.url)


def needs_header(x_token: Annotated[str, Header()]) -> str:
    return x_token


def needs_a_plain_parameter(limit: int) -> int:  # FastAPI reads it from the query string
    return limit


def via_header(token: str = Depends(needs_header)) -> str:
    return token


def spec_of(scheduler: TaskScheduler, job_id: str):  # type: ignore[no-untyped-def]
    return scheduler._registry[job_id].spec


def test_a_job_without_depends_carries_no_resolver() -> None:
    scheduler = TaskScheduler()

    @scheduler.interval(hours=1, id="plain", kwargs={"n": 1})
    async def plain(n: int, name: str = "x") -> None: ...

    assert spec_of(scheduler, "plain").dependencies is None


def test_a_job_with_depends_carries_one() -> None:
    scheduler = TaskScheduler()

    @scheduler.interval(hours=1, id="deps")
    async def deps(settings: dict[str, str] = Depends(get_settings), n: int = 1) -> None: ...

    assert spec_of(scheduler, "deps").dependencies is not None


def test_dependencies_given_explicitly_are_not_resolved() -> None:
    """kwargs (or args, by position) that give every dependency leave nothing to resolve."""
    scheduler = TaskScheduler()

    async def job(settings: dict[str, str] = Depends(get_settings)) -> None: ...

    scheduler.interval(hours=1, id="by-name", kwargs={"settings": {}})(job)
    scheduler.interval(hours=1, id="by-position", args=[{}])(job)
    assert spec_of(scheduler, "by-name").dependencies is None
    assert spec_of(scheduler, "by-position").dependencies is None


@pytest.mark.parametrize(
    ("annotation", "kind"),
    [
        (Request, "Request"),
        (WebSocket, "WebSocket"),
        (Response, "Response"),
        (BackgroundTasks, "BackgroundTasks"),
    ],
)
def test_a_job_parameter_only_a_request_has_is_refused(annotation: type, kind: str) -> None:
    scheduler = TaskScheduler()

    async def job(thing) -> None:  # type: ignore[no-untyped-def]
        ...

    job.__annotations__["thing"] = annotation
    with pytest.raises(InvalidTypeError) as info:
        scheduler.interval(hours=1, id="job")(job)
    assert str(info.value) == (
        f"job 'job': parameter 'thing' is a {kind}, which only an HTTP request has; a job "
        f"runs outside any request"
    )
    assert "job" not in scheduler._registry


@pytest.mark.parametrize(
    ("marker", "name"),
    [
        (Header(), "Header"),
        (Query(), "Query"),
        (Cookie(), "Cookie"),
        (Path(), "Path"),
        (Body(), "Body"),
    ],
)
def test_request_parameters_of_the_job_are_refused(marker: object, name: str) -> None:
    scheduler = TaskScheduler()

    async def as_default(value: str = marker) -> None:  # type: ignore[assignment]
        ...

    async def as_annotated(value: Annotated[str, marker]) -> None: ...

    for job in (as_default, as_annotated):
        with pytest.raises(InvalidValueError) as info:
            scheduler.interval(hours=1, id=job.__name__)(job)
        assert str(info.value) == (
            f"job {job.__name__!r}: parameter 'value' is a request parameter ({name}), which "
            f"only an HTTP request has; a job runs outside any request: give it a value with "
            f"kwargs=..., a plain default, or Depends(...)"
        )


def test_a_request_parameter_given_explicitly_is_the_jobs_own() -> None:
    scheduler = TaskScheduler()

    @scheduler.interval(hours=1, id="given", kwargs={"limit": 5})
    async def given(limit: int = Query(10)) -> None: ...

    assert spec_of(scheduler, "given").dependencies is None


def test_a_dependency_that_needs_the_request_is_refused_naming_both() -> None:
    scheduler = TaskScheduler()

    async def job(url: str = Depends(needs_request)) -> None: ...

    with pytest.raises(InvalidValueError) as info:
        scheduler.interval(hours=1, id="job")(job)
    assert str(info.value) == (
        f"job 'job': dependency '{__name__}:needs_request' needs the Request in parameter "
        f"'request', which only an HTTP request has; a job runs outside any request: give the "
        f"job what it needs through dependencies that do not read the request"
    )


@pytest.mark.parametrize(
    ("dependency", "owner", "what"),
    [
        (needs_header, "needs_header", "header 'x_token'"),
        (via_header, "needs_header", "header 'x_token'"),  # a sub-dependency's
        (needs_a_plain_parameter, "needs_a_plain_parameter", "query parameter 'limit'"),
    ],
)
def test_request_parameters_anywhere_in_the_tree_are_refused(
    dependency: object, owner: str, what: str
) -> None:
    scheduler = TaskScheduler()

    async def job(value: Annotated[object, Depends(dependency)]) -> None:  # type: ignore[arg-type]
        ...

    with pytest.raises(InvalidValueError) as info:
        scheduler.interval(hours=1, id="job")(job)
    assert str(info.value).startswith(f"job 'job': dependency '{__name__}:{owner}' needs {what},")


def test_a_security_scheme_that_reads_the_request_is_refused() -> None:
    scheduler = TaskScheduler()
    oauth2 = OAuth2PasswordBearer(tokenUrl="token")

    async def job(token: str = Security(oauth2, scopes=["jobs"])) -> None: ...

    with pytest.raises(InvalidValueError) as info:
        scheduler.interval(hours=1, id="job")(job)
    # What it reads is FastAPI's choice: the HTTP connection (0.13x and later), the Request.
    assert re.match(
        r"job 'job': dependency 'fastapi\.security\.oauth2:OAuth2PasswordBearer' needs the "
        r"(HTTP connection \(Request or WebSocket\)|Request) in parameter 'request', which only "
        r"an HTTP request has",
        str(info.value),
    ), str(info.value)


def test_security_with_scopes_alone_is_accepted() -> None:
    scheduler = TaskScheduler()

    def scopes_of(security_scopes: SecurityScopes) -> list[str]:
        return security_scopes.scopes

    @scheduler.interval(hours=1, id="job")
    async def job(scopes: list[str] = Security(scopes_of, scopes=["jobs:run"])) -> None: ...

    assert spec_of(scheduler, "job").dependencies is not None


def test_a_positional_only_dependency_is_refused() -> None:
    scheduler = TaskScheduler()

    async def job(settings: dict[str, str] = Depends(get_settings), /) -> None: ...

    with pytest.raises(InvalidValueError) as info:
        scheduler.interval(hours=1, id="job")(job)
    assert str(info.value) == (
        "job 'job': dependency parameter 'settings' is positional-only; dependencies are "
        "passed by name: make it a regular parameter"
    )


@pytest.mark.anyio
async def test_jobs_added_at_run_time_are_checked_too(anyio_backend: str) -> None:
    scheduler = TaskScheduler()

    async def job(url: str = Depends(needs_request)) -> None: ...

    with pytest.raises(InvalidValueError, match="needs the Request in parameter 'request'"):
        await scheduler.add_interval_job(job, "job", hours=1)
    assert await scheduler.get_jobs() == []


def test_fastapi_is_not_imported_for_jobs_without_it() -> None:
    """Importing FastAPI costs ~0.3 s: a trio program whose jobs use no Depends never does."""
    code = (
        "import sys\n"
        "from library.components.scheduling.task_scheduler import TaskScheduler\n"
        "scheduler = TaskScheduler()\n"
        "@scheduler.interval(hours=1, id='job')\n"
        "async def job(n: int = 1): ...\n"
        "assert scheduler._registry['job'].spec.dependencies is None\n"
        "print('fastapi' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False"


def test_what_fastapi_itself_refuses_fails_the_declaration_naming_the_job() -> None:
    scheduler = TaskScheduler()

    async def job(
        settings: Annotated[dict[str, str], Depends(get_settings)] = Depends(get_settings),
    ) -> None: ...

    with pytest.raises(InvalidValueError) as info:
        scheduler.interval(hours=1, id="job")(job)
    assert str(info.value).startswith("job 'job': invalid dependencies: Cannot specify `Depends`")
