"""A FastAPI router to inspect and manage a :class:`TaskScheduler` over HTTP.

.. code-block:: python

    from fastapi import Depends, FastAPI
    from library.components.scheduling.task_scheduler.fastapi import create_scheduler_router

    app = FastAPI(lifespan=scheduler.lifespan)
    app.include_router(create_scheduler_router(dependencies=[Depends(require_admin)]))

Nothing is mounted unless you include the router. ``dependencies`` guard every route but
``GET {prefix}/health``: probes carry no credentials, so health tells only ok/failing and
how many jobs are stale; the details are under ``GET {prefix}/status``.

``GET {prefix}/dashboard`` is a web page over these routes, behind the same guard. Every
request that changes something (POST, PUT, PATCH, DELETE) must carry the header
``X-Task-Scheduler`` (:data:`CSRF_HEADER`, any value): another site's HTML form cannot send it,
so a browser holding credentials for the router (HTTP Basic, a cookie) cannot be made to pause,
run or remove a job from another site (cross-site request forgery). Without it: a 403.

On a persistent store the runs, counts and workers these routes report are the cluster's, read
from the store's database: a store that does not answer (within 5 s) is a 503, not a 500.
``GET {prefix}/metrics`` serves the scheduler's Prometheus metrics (the ``metrics`` extra:
without it, a 501 naming the extra), behind the same ``dependencies``.

Every route gets its scheduler from the :func:`get_scheduler` dependency, so tests can
swap it with ``app.dependency_overrides[get_scheduler] = lambda: other``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.params import Depends as DependsParam
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from starlette.requests import HTTPConnection

from . import _dashboard
from ._errors import (
    InvalidTypeError,
    JobNotFoundError,
    MissingDependencyError,
    SchedulerStateError,
)
from ._models import JobInfo, Outcome, RunInfo, SchedulerStatus, WorkerInfo
from ._scheduler import TaskScheduler

__all__ = [
    "CSRF_HEADER",
    "ErrorDetail",
    "Health",
    "RunAccepted",
    "create_scheduler_router",
    "get_scheduler",
]

_EXPLICIT_SCHEDULER = "library.task_scheduler.explicit"
"""ASGI scope key where a router made with an explicit scheduler leaves it for get_scheduler."""

NO_SCHEDULER = (
    "no task scheduler is configured: pass one to create_scheduler_router(), use "
    "FastAPI(lifespan=scheduler.lifespan), or set app.state.task_scheduler"
)
STORE_UNAVAILABLE = "the scheduler's store is unavailable"
"""The 503 detail when the store does not answer (health says only this: it is unguarded)."""

CSRF_HEADER = "X-Task-Scheduler"
"""The header every POST, PUT, PATCH and DELETE to the router must carry (any non-empty value,
e.g. ``X-Task-Scheduler: 1``). A cross-site HTML form cannot set a header, and a cross-site
script can only with the app's CORS consent, so its presence shows the request was not forged
by another site in a browser holding the router's credentials."""

_UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class ErrorDetail(BaseModel):
    """An error response."""

    detail: str = Field(description="What went wrong, in plain English.")


class RunAccepted(BaseModel):
    """A run-now the scheduler accepted; its outcome shows up under ``.../runs``."""

    model_config = ConfigDict(frozen=True)

    run_id: str = Field(description="Id of the run's first attempt, as listed under .../runs.")
    job_id: str = Field(description="The job being run.")


class Health(BaseModel):
    """Liveness of the scheduler, without details (those are under ``/status``)."""

    model_config = ConfigDict(frozen=True)

    status: Literal["ok", "failing"] = Field(
        description='"ok" while this process\'s engine runs and no job is stale, else "failing".'
    )
    stale_jobs: int = Field(
        ge=0, description="Jobs that have not succeeded within their max_staleness."
    )


async def get_scheduler(connection: HTTPConnection) -> TaskScheduler:
    """The scheduler a request works on.

    In order: the scheduler given to :func:`create_scheduler_router`; the lifespan state's
    ``task_scheduler`` (``FastAPI(lifespan=scheduler.lifespan)``); ``app.state.task_scheduler``.
    With none, a 503 (not a 500): the app is up, but it has no scheduler to report on.
    Usable in your own routes too: ``scheduler: TaskScheduler = Depends(get_scheduler)``.
    """
    candidates = (
        connection.scope.get(_EXPLICIT_SCHEDULER),
        getattr(connection.state, "task_scheduler", None),
        getattr(connection.app.state, "task_scheduler", None),
    )
    for candidate in candidates:
        if isinstance(candidate, TaskScheduler):
            return candidate
    raise HTTPException(status_code=503, detail=NO_SCHEDULER)


_NUMBER = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*")


def _iso_8601(value: object) -> object:
    """Only ISO 8601 text is a time here (pydantic would read a number as a Unix timestamp)."""
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        raise ValueError(
            "expected an ISO 8601 datetime such as 2026-05-01T12:00:00+02:00, not a number"
        )
    return value


SchedulerDep = Annotated[TaskScheduler, Depends(get_scheduler)]
JobId = Annotated[str, Path(description="The job's id.")]
RunLimit = Annotated[int, Query(ge=1, le=1000, description="At most this many runs (1-1000).")]
RunOutcome = Annotated[
    Outcome | None,
    Query(description="Only runs that ended with this outcome (runs in progress have none)."),
]
RunsBefore = Annotated[
    datetime | None,
    BeforeValidator(_iso_8601),
    Query(
        description="Only runs that started before this time (a run that never started: that "
        "finished, or was due, before it). ISO 8601, e.g. `2026-05-01T12:00:00+02:00` (a `+` "
        "URL-encoded as `%2B`); without an offset it is read in the scheduler's timezone. "
        'The next page: the `Link: rel="next"` header, or the last run\'s `started_at` '
        "(else `finished_at`)."
    ),
]

_ERRORS: dict[int, str] = {
    401: "No credentials (from the router's `dependencies`).",
    403: "Credentials refused (by the router's `dependencies`).",
    404: "No job has this id; the detail names it, and any ids close to it.",
    409: "The job is at its max_instances limit, or the scheduler is not running.",
    501: "prometheus_client is not installed: the detail names the extra that brings it.",
    503: "No scheduler is configured; or the scheduler's store is unavailable (it refused the "
    "connection, or did not answer within 5 s): the detail says which.",
}
_NEXT_PAGE = {
    "description": "The runs, newest first.",
    "headers": {
        "Link": {
            "description": 'When the page is full: `<?...&before=...>; rel="next"`, the next '
            "page's query (a reference relative to this request's URL).",
            "schema": {"type": "string"},
        }
    },
}


_CSRF_REFUSED = (
    "the scheduler's routes refuse a {method} without the header " + CSRF_HEADER + " (send "
    "any value, e.g. '" + CSRF_HEADER + ": 1'): this protects against cross-site request "
    "forgery, as another site's HTML form cannot send it"
)


async def require_csrf_header(request: Request) -> None:
    """403 for a state-changing request without :data:`CSRF_HEADER` (see there why)."""
    if request.method in _UNSAFE_METHODS and not request.headers.get(CSRF_HEADER, "").strip():
        raise HTTPException(status_code=403, detail=_CSRF_REFUSED.format(method=request.method))


def _csrf_parameter() -> dict[str, Any]:
    """The header in OpenAPI, required (the check is a dependency, which answers 403)."""
    return {
        "name": CSRF_HEADER,
        "in": "header",
        "required": True,
        "description": "Any non-empty value, e.g. `1`: protection against cross-site request "
        "forgery (a 403 without it).",
        "schema": {"type": "string", "minLength": 1, "pattern": "\\S"},
    }


def _responses(
    *codes: int, guarded: bool = True, unsafe: bool = False
) -> dict[int | str, dict[str, Any]]:
    if guarded:
        codes = (401, 403, *codes)
    elif unsafe:
        codes = (403, *codes)
    answers: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorDetail, "description": _ERRORS[code]} for code in codes
    }
    if unsafe:
        refused = f"The {CSRF_HEADER} header is missing (cross-site request forgery protection)."
        if guarded:
            refused = f"{_ERRORS[403]} Or: {refused[0].lower()}{refused[1:]}"
        answers[403] = {"model": ErrorDetail, "description": refused}
    return answers


@contextmanager
def _answers() -> Iterator[None]:
    """Answer the scheduler's errors as the routes document them: an unknown job 404, a store
    that does not answer 503 (its reason in the detail).

    ``ConnectionError``: :class:`StoreUnavailableError` (a call on the store that timed out or
    could not connect), or any other connection lost on the way. Per route, not an app
    exception handler: the router must not change the user's other routes.
    """
    try:
        yield
    except JobNotFoundError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
    except ConnectionError as exc:
        raise HTTPException(status_code=503, detail=_unavailable(exc)) from None


def _unavailable(exc: ConnectionError) -> str:
    """The 503 detail: the store is unavailable, and why (first line: no SQL statements)."""
    reason = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
    first_line = next(iter(str(reason).splitlines()), "") or type(reason).__name__
    return f"{STORE_UNAVAILABLE}: {first_line}"


def _page(runs: list[RunInfo], limit: int, request: Request, response: Response) -> list[RunInfo]:
    """A full page links to the next one: the same query, ``before`` the last run's time.

    The link is relative (``<?query>``): right behind any proxy or mount that changes the path.
    """
    if len(runs) == limit:
        last = runs[-1]
        cursor = last.started_at or last.finished_at or last.scheduled_at
        query = request.url.include_query_params(before=cursor.isoformat()).query
        response.headers["Link"] = f'<?{query}>; rel="next"'
    return runs


def create_scheduler_router(
    scheduler: TaskScheduler | None = None,
    *,
    prefix: str = "/scheduler",
    dependencies: Sequence[DependsParam] | None = None,
    tags: Sequence[str] = ("scheduler",),
    dashboard: bool = True,
) -> APIRouter:
    """Routes to list, inspect, pause, resume, run and remove jobs, list runs and workers,
    serve Prometheus metrics, check health; and a dashboard page over them.

    ``scheduler`` defaults to the one :func:`get_scheduler` finds per request.
    ``dependencies`` (e.g. an API-key check) guard every route except ``{prefix}/health``;
    give them here, not to ``include_router()``, which would guard health too. For the
    dashboard in a browser, guard with something a browser sends by itself (HTTP Basic, a
    session cookie). ``dashboard=False`` leaves out ``{prefix}/dashboard`` and its files.
    POST and DELETE routes refuse a request without the :data:`CSRF_HEADER` header (403).
    """
    if scheduler is not None and not isinstance(scheduler, TaskScheduler):
        raise InvalidTypeError(f"scheduler must be a TaskScheduler, got {scheduler!r}")
    explicit = scheduler
    if explicit is not None:
        try:
            explicit.metrics_collector()  # its histograms count runs from now, not the 1st scrape
        except MissingDependencyError:
            pass  # /metrics answers 501, saying which extra to install

    async def bind_scheduler(connection: HTTPConnection) -> None:
        # Route-level dependencies are solved before the endpoint's own, so get_scheduler
        # sees this; an override of get_scheduler skips get_scheduler, and so this value.
        connection.scope[_EXPLICIT_SCHEDULER] = explicit

    bind: list[DependsParam] = [] if explicit is None else [Depends(bind_scheduler)]
    guarded = [*bind, *(dependencies or ())]
    # The CSRF check first: a forged request is refused before any guard acts on it.
    unsafe = [Depends(require_csrf_header), *guarded]
    is_guarded = bool(dependencies)
    router = APIRouter(prefix=prefix, tags=list(tags))

    @router.get(
        "/jobs",
        response_model=list[JobInfo],
        operation_id="scheduler_list_jobs",
        summary="List jobs",
        dependencies=guarded,
        responses=_responses(503, guarded=is_guarded),
    )
    async def list_jobs(
        scheduler: SchedulerDep,
        paused: Annotated[
            bool | None, Query(description="Only paused (true) or unpaused (false) jobs.")
        ] = None,
        name: Annotated[
            str | None, Query(description="Only jobs whose name contains this (any case).")
        ] = None,
    ) -> list[JobInfo]:
        with _answers():
            jobs = await scheduler.get_jobs()
        if paused is not None:
            jobs = [job for job in jobs if job.paused == paused]
        if name is not None:
            needle = name.casefold()
            jobs = [job for job in jobs if needle in job.name.casefold()]
        return jobs

    @router.get(
        "/jobs/{job_id}",
        response_model=JobInfo,
        operation_id="scheduler_get_job",
        summary="Get a job",
        dependencies=guarded,
        responses=_responses(404, 503, guarded=is_guarded),
    )
    async def get_job(job_id: JobId, scheduler: SchedulerDep) -> JobInfo:
        with _answers():
            return await scheduler.get_job(job_id)

    @router.post(
        "/jobs/{job_id}/pause",
        response_model=JobInfo,
        operation_id="scheduler_pause_job",
        summary="Pause a job (idempotent); a run in progress goes on",
        dependencies=unsafe,
        openapi_extra={"parameters": [_csrf_parameter()]},
        responses=_responses(404, 503, guarded=is_guarded, unsafe=True),
    )
    async def pause_job(job_id: JobId, scheduler: SchedulerDep) -> JobInfo:
        with _answers():
            return await scheduler.pause_job(job_id)

    @router.post(
        "/jobs/{job_id}/resume",
        response_model=JobInfo,
        operation_id="scheduler_resume_job",
        summary="Resume a job (idempotent); fires missed while paused are not run",
        dependencies=unsafe,
        openapi_extra={"parameters": [_csrf_parameter()]},
        responses=_responses(404, 503, guarded=is_guarded, unsafe=True),
    )
    async def resume_job(job_id: JobId, scheduler: SchedulerDep) -> JobInfo:
        with _answers():
            return await scheduler.resume_job(job_id)

    @router.post(
        "/jobs/{job_id}/run",
        status_code=202,
        response_model=RunAccepted,
        operation_id="scheduler_run_job",
        summary="Run a job now, outside its schedule",
        description="202 at once; with `wait=true`, 200 with the finished run (its last attempt).",
        dependencies=unsafe,
        openapi_extra={"parameters": [_csrf_parameter()]},
        responses={
            200: {"model": RunInfo, "description": "With wait=true: the finished run."},
            **_responses(404, 409, 503, guarded=is_guarded, unsafe=True),
        },
    )
    async def run_job(
        job_id: JobId,
        scheduler: SchedulerDep,
        wait: Annotated[
            bool, Query(description="Wait for the run to finish and return it (200).")
        ] = False,
    ) -> RunAccepted | Response:
        with _answers():
            try:
                run = await scheduler.run_job(job_id, wait=wait)
            except SchedulerStateError as exc:
                raise HTTPException(status_code=409, detail=str(exc)) from None
        if run.outcome is Outcome.skipped:
            raise HTTPException(
                status_code=409,
                detail=f"job {job_id!r} is already running at its max_instances limit: "
                f"the run was skipped",
            )
        if wait:
            # A different model and status than the route's default: serialize it here.
            return JSONResponse(run.model_dump(mode="json"), status_code=200)
        return RunAccepted(run_id=run.run_id, job_id=run.job_id)

    @router.delete(
        "/jobs/{job_id}",
        status_code=204,
        response_class=Response,
        operation_id="scheduler_remove_job",
        summary="Remove a job; a run in progress is allowed to finish",
        dependencies=unsafe,
        openapi_extra={"parameters": [_csrf_parameter()]},
        responses=_responses(404, 503, guarded=is_guarded, unsafe=True),
    )
    async def remove_job(job_id: JobId, scheduler: SchedulerDep) -> None:
        with _answers():
            await scheduler.remove_job(job_id)

    @router.get(
        "/runs",
        response_model=list[RunInfo],
        operation_id="scheduler_list_all_runs",
        summary="Runs of every job (or of one), newest first, runs in progress included",
        description="On a persistent store: every worker's runs (`worker` names the process), "
        "kept across restarts (`history_size` per job, `history_max_age`).",
        dependencies=guarded,
        responses={200: _NEXT_PAGE, **_responses(404, 503, guarded=is_guarded)},
    )
    async def list_all_runs(
        request: Request,
        response: Response,
        scheduler: SchedulerDep,
        job_id: Annotated[str | None, Query(description="Only this job's runs.")] = None,
        outcome: RunOutcome = None,
        limit: RunLimit = 20,
        before: RunsBefore = None,
    ) -> list[RunInfo]:
        with _answers():
            runs = await scheduler.get_runs(job_id, limit, outcome=outcome, before=before)
        return _page(runs, limit, request, response)

    @router.get(
        "/jobs/{job_id}/runs",
        response_model=list[RunInfo],
        operation_id="scheduler_list_runs",
        summary="Recent runs of a job, newest first (runs in progress included)",
        description="On a persistent store: every worker's runs of the job.",
        dependencies=guarded,
        responses={200: _NEXT_PAGE, **_responses(404, 503, guarded=is_guarded)},
    )
    async def list_runs(
        job_id: JobId,
        request: Request,
        response: Response,
        scheduler: SchedulerDep,
        outcome: RunOutcome = None,
        limit: RunLimit = 20,
        before: RunsBefore = None,
    ) -> list[RunInfo]:
        with _answers():
            runs = await scheduler.get_runs(job_id, limit, outcome=outcome, before=before)
        return _page(runs, limit, request, response)

    @router.get(
        "/jobs/{job_id}/preview",
        response_model=list[datetime],
        operation_id="scheduler_preview_job",
        summary="The job's next fire times, in the scheduler's timezone",
        description="Empty for a finished job; for a paused job, the times it would have if "
        "resumed now.",
        dependencies=guarded,
        responses=_responses(404, 503, guarded=is_guarded),
    )
    async def preview_job(
        job_id: JobId,
        scheduler: SchedulerDep,
        count: Annotated[int, Query(ge=1, le=1000, description="How many fire times.")] = 10,
    ) -> list[datetime]:
        with _answers():
            return await scheduler.preview(job_id, count)

    @router.get(
        "/status",
        response_model=SchedulerStatus,
        operation_id="scheduler_status",
        summary="The scheduler's state, engine restarts, run counts and stale jobs",
        dependencies=guarded,
        responses=_responses(503, guarded=is_guarded),
    )
    async def get_status(scheduler: SchedulerDep) -> SchedulerStatus:
        with _answers():
            return await scheduler.get_status()

    @router.get(
        "/workers",
        response_model=list[WorkerInfo],
        operation_id="scheduler_list_workers",
        summary="The live workers sharing the store, oldest first",
        description="Every process running jobs from this store, as its heartbeat (every 2 s) "
        "last told; on memory:// this process alone, while it runs. A stopped worker leaves "
        "at once, a killed one within about 12 s.",
        dependencies=guarded,
        responses=_responses(503, guarded=is_guarded),
    )
    async def list_workers(scheduler: SchedulerDep) -> list[WorkerInfo]:
        with _answers():
            return await scheduler.get_workers()

    @router.get(
        "/metrics",
        response_class=Response,
        operation_id="scheduler_metrics",
        summary="Prometheus metrics: runs, durations, lateness, next runs, workers",
        description="The Prometheus text format (needs the `metrics` extra). Runs per job and "
        "outcome are the cluster's cumulative counts on a persistent store (the same from "
        "every worker); the duration and lateness histograms count this process's runs.",
        dependencies=guarded,
        responses={
            200: {
                "description": "The metrics, in the Prometheus text format.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            **_responses(501, 503, guarded=is_guarded),
        },
    )
    async def metrics(scheduler: SchedulerDep) -> Response:
        try:
            collector = scheduler.metrics_collector()
        except MissingDependencyError as exc:
            raise HTTPException(status_code=501, detail=str(exc)) from None
        with _answers():
            await collector.refresh()
        body, content_type = collector.exposition()
        return Response(body, media_type=content_type, headers={"Cache-Control": "no-store"})

    @router.get(
        "/health",
        response_model=Health,
        operation_id="scheduler_health",
        summary="200 while the engine runs and no job is stale, else 503",
        description="Stale: a job with `max_staleness` that has not succeeded within it, on any "
        "worker. A store that does not answer is a 503 with only a `detail` (no reason: the "
        "route is unguarded).",
        dependencies=bind,  # never the guards: probes carry no credentials
        responses={
            503: {
                "model": Health | ErrorDetail,
                "description": "This process's engine is not running, or a job is stale "
                "(`Health`); or the store is unavailable, or no scheduler is configured "
                "(`ErrorDetail`).",
            }
        },
    )
    async def health(scheduler: SchedulerDep, response: Response) -> Health:
        try:
            status = await scheduler.get_status()
        except ConnectionError:
            raise HTTPException(
                status_code=503, detail=STORE_UNAVAILABLE, headers={"Cache-Control": "no-store"}
            ) from None
        ok = status.state == "running" and not status.stale_jobs
        response.status_code = 200 if ok else 503
        response.headers["Cache-Control"] = "no-store"
        return Health(status="ok" if ok else "failing", stale_jobs=len(status.stale_jobs))

    if dashboard:
        _add_dashboard(router, guarded, is_guarded)
    return router


def _add_dashboard(router: APIRouter, guarded: list[DependsParam], is_guarded: bool) -> None:
    """``GET /dashboard``, the page, and ``GET /dashboard/static/{name}``, its two files."""

    @router.get(
        "/dashboard",
        # Response, not HTMLResponse: the errors stay documented (and sent) as JSON.
        response_class=Response,
        operation_id="scheduler_dashboard",
        summary="The dashboard: a web page over these routes, for a browser",
        description="Jobs, recent runs, workers and the scheduler's state, refreshed every "
        "5 s, with buttons to pause, resume and run jobs. Its stylesheet and script are served "
        "under `dashboard/static/`; nothing is loaded from anywhere else.",
        dependencies=guarded,
        responses={
            200: {
                "description": "The page.",
                "content": {"text/html": {"schema": {"type": "string"}}},
            },
            304: {"description": "Not modified: `If-None-Match` names the page's `ETag`."},
            **_responses(503, guarded=is_guarded),
        },
    )
    async def show_dashboard(request: Request, scheduler: SchedulerDep) -> Response:
        page = _dashboard.page(scheduler.timezone)
        return _serve(page, request, _dashboard.PAGE_HEADERS)

    @router.get("/dashboard/static/{name}", include_in_schema=False, dependencies=guarded)
    async def dashboard_file(name: str, request: Request) -> Response:
        files = _dashboard.assets()
        asset = files.get(name)
        if asset is None:
            known = ", ".join(repr(known) for known in sorted(files))
            raise HTTPException(
                status_code=404, detail=f"no dashboard file {name!r}: its files are {known}"
            )
        headers = {
            "Cache-Control": _dashboard.ASSET_CACHE_CONTROL,
            "X-Content-Type-Options": "nosniff",
        }
        return _serve(asset, request, headers)


def _serve(asset: _dashboard.Asset, request: Request, headers: dict[str, str]) -> Response:
    """The file, or a 304 when the browser's copy (``If-None-Match``) is this version."""
    headers = {**headers, "ETag": asset.etag}
    wanted = request.headers.get("if-none-match", "")
    tags = {tag.strip().removeprefix("W/") for tag in wanted.split(",")}
    if asset.etag in tags or "*" in tags:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)
