"""The FastAPI router: routes, status codes, guards, and how it finds its scheduler.

Every test that serves requests runs on asyncio and on trio (``TestClient(backend=...)``).
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal, cast
from urllib.parse import quote, unquote

import pytest
from fastapi import Depends, FastAPI, HTTPException, Security
from fastapi.security import APIKeyHeader
from fastapi.testclient import TestClient
from helpers import noop
from hypothesis import given, settings
from hypothesis import strategies as st

from library.components.scheduling.task_scheduler import (
    SchedulerConfig,
    SchedulerState,
    SchedulerStatus,
    StoreUnavailableError,
    TaskScheduler,
)
from library.components.scheduling.task_scheduler._jobs import is_valid_job_id
from library.components.scheduling.task_scheduler.fastapi import (
    CSRF_HEADER,
    create_scheduler_router,
    get_scheduler,
)

API_KEY = "s3cret"
GOOD = {"X-API-Key": API_KEY}
CSRF = {CSRF_HEADER: "1"}
"""What an API client sends on every request: POST and DELETE need it (test_fastapi_csrf.py)."""
BAD = {"X-API-Key": "wrong"}

api_key_header = APIKeyHeader(name="X-API-Key")


async def require_api_key(key: str = Security(api_key_header)) -> None:
    # APIKeyHeader itself answers 401 when the header is missing; a wrong key is ours: 403.
    if key != API_KEY:
        raise HTTPException(status_code=403, detail="invalid API key")


GUARD = [Depends(require_api_key)]

gate = threading.Event()


def blocked() -> None:
    # A sync job runs in a worker thread, so the test thread can release it directly.
    gate.wait(10)


async def failing() -> None:
    raise ValueError("boom")


Backend = Literal["asyncio", "trio"]


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> Backend:
    return cast(Backend, request.param)


def make_scheduler(**config: Any) -> TaskScheduler:
    scheduler = TaskScheduler(SchedulerConfig(**config))
    scheduler.interval(seconds=3600, id="tick", name="Heartbeat tick")(noop)
    scheduler.cron("0 2 * * *", id="nightly", name="Nightly report")(noop)
    scheduler.interval(hours=1, id="paused", name="Paused sweep", paused=True)(noop)
    scheduler.interval(hours=1, id="blocked", max_instances=1)(blocked)
    scheduler.interval(hours=1, id="failing")(failing)
    return scheduler


def make_app(
    scheduler: TaskScheduler | None,
    *,
    lifespan: bool = True,
    explicit: bool = False,
    dependencies: list[Any] | None = None,
    **router_options: Any,
) -> FastAPI:
    app = FastAPI(lifespan=scheduler.lifespan if lifespan and scheduler else None)
    router = create_scheduler_router(
        scheduler if explicit else None, dependencies=dependencies, **router_options
    )
    app.include_router(router)
    return app


@pytest.fixture
def client(backend: Backend) -> Iterator[TestClient]:
    gate.clear()
    app = make_app(make_scheduler())
    try:
        with TestClient(app, backend=backend, headers=CSRF) as client:
            yield client
    finally:
        gate.set()


def ids(body: list[dict[str, Any]]) -> list[str]:
    return sorted(job["id"] for job in body)


# ---------------------------------------------------------------------------- jobs


def test_list_jobs_and_filters(client: TestClient) -> None:
    response = client.get("/scheduler/jobs")
    assert response.status_code == 200
    assert ids(response.json()) == ["blocked", "failing", "nightly", "paused", "tick"]
    assert ids(client.get("/scheduler/jobs", params={"paused": True}).json()) == ["paused"]
    unpaused = client.get("/scheduler/jobs", params={"paused": "false"}).json()
    assert "paused" not in ids(unpaused) and len(unpaused) == 4
    assert ids(client.get("/scheduler/jobs", params={"name": "NIGHTLY"}).json()) == ["nightly"]
    assert client.get("/scheduler/jobs", params={"name": "nope"}).json() == []
    both = {"name": "sweep", "paused": "false"}
    assert client.get("/scheduler/jobs", params=both).json() == []
    assert client.get("/scheduler/jobs", params={"paused": "maybe"}).status_code == 422


def test_get_job_and_unknown_job(client: TestClient) -> None:
    body = client.get("/scheduler/jobs/nightly").json()
    assert body["id"] == "nightly"
    assert body["trigger"]["type"] == "cron"
    assert body["next_run_time"] is not None
    response = client.get("/scheduler/jobs/nope")
    assert response.status_code == 404
    assert response.json() == {"detail": "no job with id 'nope'"}


def test_job_ids_with_reserved_characters(backend: Backend) -> None:
    # Default ids are "module:qualname"; a URL-encoded id reaches the route intact.
    scheduler = TaskScheduler()
    scheduler.interval(seconds=3600)(noop)
    job_id = "helpers:noop"
    with TestClient(make_app(scheduler), backend=backend, headers=CSRF) as client:
        assert client.get(f"/scheduler/jobs/{job_id}").json()["id"] == job_id
        assert client.get("/scheduler/jobs/" + job_id.replace(":", "%3A")).status_code == 200


def test_pause_and_resume_are_idempotent(client: TestClient) -> None:
    for _ in range(2):
        body = client.post("/scheduler/jobs/tick/pause").json()
        assert body["paused"] is True and body["next_run_time"] is None
    assert client.get("/scheduler/jobs/tick").json()["paused"] is True
    for _ in range(2):
        body = client.post("/scheduler/jobs/tick/resume").json()
        assert body["paused"] is False and body["next_run_time"] is not None
    assert client.post("/scheduler/jobs/nope/pause").status_code == 404
    assert client.post("/scheduler/jobs/nope/resume").status_code == 404


def test_remove_job(client: TestClient) -> None:
    response = client.delete("/scheduler/jobs/nightly")
    assert response.status_code == 204
    assert response.content == b""
    assert client.get("/scheduler/jobs/nightly").status_code == 404
    assert client.delete("/scheduler/jobs/nightly").status_code == 404
    assert "nightly" not in ids(client.get("/scheduler/jobs").json())


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/scheduler/jobs/nope"),
        ("POST", "/scheduler/jobs/nope/pause"),
        ("POST", "/scheduler/jobs/nope/resume"),
        ("POST", "/scheduler/jobs/nope/run"),
        ("POST", "/scheduler/jobs/nope/run?wait=true"),
        ("DELETE", "/scheduler/jobs/nope"),
        ("GET", "/scheduler/jobs/nope/runs"),
        ("GET", "/scheduler/jobs/nope/preview"),
    ],
)
def test_every_job_route_answers_an_unknown_id_alike(
    client: TestClient, method: str, path: str
) -> None:
    response = client.request(method, path)
    assert response.status_code == 404
    assert response.json() == {"detail": "no job with id 'nope'"}


JOB_ROUTES = [
    ("GET", ""),
    ("POST", "/pause"),
    ("POST", "/resume"),
    ("POST", "/run"),
    ("POST", "/run?wait=true"),
    ("DELETE", ""),
    ("GET", "/runs"),
    ("GET", "/preview"),
]


@pytest.mark.parametrize(("method", "route"), JOB_ROUTES)
def test_an_unknown_id_suggests_close_ids_in_the_same_404_body(
    client: TestClient, method: str, route: str
) -> None:
    response = client.request(method, f"/scheduler/jobs/nightyl{route}")
    assert response.status_code == 404
    assert response.json() == {"detail": "no job with id 'nightyl'; did you mean 'nightly'?"}


def job_url(job_id: str, route: str = "") -> str:
    """The job's URL, its id percent-encoded as any HTTP client encodes a path segment."""
    return f"/scheduler/jobs/{quote(job_id, safe='')}{route}"


def survives_test_client(job_id: str) -> bool:
    """False for ids with a %-escape in them ('%2F', '100%ab'): Starlette's TestClient decodes
    the path twice (httpx's decoded path, unquoted again), which a real server never does;
    test_fastapi_uvicorn.py reaches such ids through uvicorn."""
    return unquote(job_id) == job_id


def check_reachable(client: TestClient, job_id: str) -> None:
    """Every /jobs/{job_id} route reaches the job; an unknown id's 404 names that id."""
    assert client.get(job_url(job_id)).json()["id"] == job_id
    assert client.post(job_url(job_id, "/pause")).json()["paused"] is True
    assert client.post(job_url(job_id, "/resume")).json()["paused"] is False
    accepted = client.post(job_url(job_id, "/run"))
    assert accepted.status_code == 202 and accepted.json()["job_id"] == job_id
    waited = client.post(job_url(job_id, "/run"), params={"wait": True})
    assert waited.status_code == 200 and waited.json()["job_id"] == job_id
    runs = client.get(job_url(job_id, "/runs")).json()
    assert runs and {run["job_id"] for run in runs} == {job_id}
    assert len(client.get(job_url(job_id, "/preview"), params={"count": 2}).json()) == 2
    for unknown in (job_id[:199] + "~", "~" + job_id[:199]):  # unknown ids, valid ones
        response = client.get(job_url(unknown))
        assert response.status_code == 404
        assert response.json()["detail"].startswith(f"no job with id {unknown!r}")
    assert client.delete(job_url(job_id)).status_code == 204
    response = client.get(job_url(job_id))
    assert response.status_code == 404
    assert response.json() == {"detail": f"no job with id {job_id!r}"}


REACHABLE_IDS = [
    "helpers:noop",
    "mod:f.<locals>.g",
    "nightly report (v2)",
    " padded ",
    "50% off? #1 & more;",
    "back\\slash",
    'quote\'s "double"',
    "ünïcödé 日本語 🙂",
    "...",
    "100% sure",
    "x" * 200,
]


@pytest.mark.parametrize("job_id", REACHABLE_IDS)
def test_valid_ids_are_reachable_is_reachable_through_every_job_route(
    backend: Backend, job_id: str
) -> None:
    scheduler = TaskScheduler()
    scheduler.interval(hours=1, id=job_id)(noop)
    with TestClient(make_app(scheduler), backend=backend, headers=CSRF) as client:
        check_reachable(client, job_id)


def test_any_valid_id_is_reachable_through_every_job_route(backend: Backend) -> None:
    # Property: every id the rule accepts (_jobs.JOB_ID_RULE) is reachable, once added.
    scheduler = TaskScheduler()
    with TestClient(make_app(scheduler), backend=backend, headers=CSRF) as client:

        @settings(max_examples=60, deadline=None, database=None)
        @given(
            job_id=st.text(min_size=1, max_size=200)
            .filter(is_valid_job_id)
            .filter(survives_test_client)
        )
        def reachable(job_id: str) -> None:
            add = functools.partial(scheduler.add_interval_job, noop, job_id, hours=1)
            client.portal.call(add)  # type: ignore[union-attr]
            check_reachable(client, job_id)

        reachable()


# ---------------------------------------------------------------------------- runs


def wait_for_outcome(client: TestClient, job_id: str, run_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        runs: list[dict[str, Any]] = client.get(f"/scheduler/jobs/{job_id}/runs").json()
        run = next((run for run in runs if run["run_id"] == run_id), None)
        if run is not None and run["outcome"] is not None:
            return run
        time.sleep(0.01)
    raise AssertionError(f"run {run_id} of {job_id} did not finish")


def test_run_now_is_accepted(client: TestClient) -> None:
    response = client.post("/scheduler/jobs/tick/run")
    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"run_id", "job_id"} and body["job_id"] == "tick"
    assert wait_for_outcome(client, "tick", body["run_id"])["outcome"] == "success"


def test_run_now_and_wait(client: TestClient) -> None:
    response = client.post("/scheduler/jobs/tick/run", params={"wait": True})
    assert response.status_code == 200
    run = response.json()
    assert run["job_id"] == "tick" and run["outcome"] == "success"
    assert run["finished_at"] is not None and run["duration"] >= 0
    failed = client.post("/scheduler/jobs/failing/run?wait=true")
    assert failed.status_code == 200
    assert failed.json()["outcome"] == "error"
    assert failed.json()["error_type"] == "ValueError"
    assert failed.json()["error_message"] == "boom"


def test_run_now_errors(client: TestClient) -> None:
    assert client.post("/scheduler/jobs/nope/run").status_code == 404
    assert client.post("/scheduler/jobs/tick/run", params={"wait": "later"}).status_code == 422


def test_run_at_max_instances_is_a_conflict(client: TestClient) -> None:
    first = client.post("/scheduler/jobs/blocked/run")
    assert first.status_code == 202
    second = client.post("/scheduler/jobs/blocked/run", params={"wait": True})
    assert second.status_code == 409
    assert "max_instances" in second.json()["detail"]
    assert client.get("/scheduler/jobs/blocked").json()["running"] == 1
    gate.set()
    assert wait_for_outcome(client, "blocked", first.json()["run_id"])["outcome"] == "success"
    assert client.post("/scheduler/jobs/blocked/run?wait=true").status_code == 200


def test_run_when_the_scheduler_is_not_running_is_a_conflict(backend: Backend) -> None:
    scheduler = make_scheduler()  # explicit and never started
    with TestClient(
        make_app(scheduler, lifespan=False, explicit=True), backend=backend, headers=CSRF
    ) as client:
        response = client.post("/scheduler/jobs/tick/run")
    assert response.status_code == 409
    assert response.json() == {"detail": "cannot run job 'tick' now: the scheduler is stopped"}


def test_runs_newest_first_with_limit(client: TestClient) -> None:
    run_ids = [client.post("/scheduler/jobs/tick/run?wait=true").json()["run_id"] for _ in range(3)]
    runs = client.get("/scheduler/jobs/tick/runs").json()
    assert [run["run_id"] for run in runs] == run_ids[::-1]
    limited = client.get("/scheduler/jobs/tick/runs", params={"limit": 2}).json()
    assert [run["run_id"] for run in limited] == run_ids[:0:-1]
    assert client.get("/scheduler/jobs/tick/runs?limit=1000").status_code == 200
    assert client.get("/scheduler/jobs/nope/runs").status_code == 404


def run_now(client: TestClient, job_id: str) -> dict[str, Any]:
    run: dict[str, Any] = client.post(f"/scheduler/jobs/{job_id}/run?wait=true").json()
    return run


def run_ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return [run["run_id"] for run in response.json()]


def test_all_runs_newest_first_across_jobs(client: TestClient) -> None:
    done = [run_now(client, job_id) for job_id in ("tick", "failing", "tick", "nightly")]
    runs = client.get("/scheduler/runs").json()
    assert [run["run_id"] for run in runs] == [run["run_id"] for run in done[::-1]]
    assert [run["job_id"] for run in runs] == ["nightly", "tick", "failing", "tick"]
    worker = client.get("/scheduler/status").json()["worker_id"]
    assert {run["worker"] for run in runs} == {worker}
    assert run_ids(client.get("/scheduler/runs", params={"limit": 1})) == [done[-1]["run_id"]]


def test_runs_filter_by_job_and_outcome(client: TestClient) -> None:
    ticks = [run_now(client, "tick")["run_id"] for _ in range(2)]
    failed = run_now(client, "failing")
    assert run_ids(client.get("/scheduler/runs", params={"job_id": "tick"})) == ticks[::-1]
    errors = client.get("/scheduler/runs", params={"outcome": "error"}).json()
    assert [(run["job_id"], run["error_message"]) for run in errors] == [("failing", "boom")]
    success = client.get("/scheduler/runs", params={"outcome": "success"})
    assert run_ids(success) == ticks[::-1]
    # The same filters on one job's runs.
    assert run_ids(client.get("/scheduler/jobs/failing/runs?outcome=error")) == [failed["run_id"]]
    assert client.get("/scheduler/jobs/failing/runs?outcome=success").json() == []
    assert client.get("/scheduler/runs?job_id=nightly").json() == []


def test_runs_of_an_unknown_job_is_a_404_with_suggestions(client: TestClient) -> None:
    response = client.get("/scheduler/runs", params={"job_id": "nightyl"})
    assert response.status_code == 404
    assert response.json() == {"detail": "no job with id 'nightyl'; did you mean 'nightly'?"}


def follow_pages(client: TestClient, url: str) -> list[list[str]]:
    """Every page's run ids, following the `Link: rel="next"` headers to the end."""
    pages = []
    response = client.get(url)
    while True:
        pages.append(run_ids(response))
        if "next" not in response.links:
            return pages
        response = client.get(response.url.join(response.links["next"]["url"]))


@pytest.mark.parametrize("route", ["/scheduler/runs", "/scheduler/jobs/tick/runs"])
def test_runs_page_by_page(client: TestClient, route: str) -> None:
    done = [run_now(client, "tick")["run_id"] for _ in range(5)]
    pages = follow_pages(client, f"{route}?limit=2&outcome=success")
    assert pages == [done[:2:-1], done[2:0:-1], done[:1]]  # no Link under a part-full page
    # By hand: before= the last run's started_at, in the scheduler's timezone as listed.
    first = client.get(route, params={"limit": 2}).json()
    rest = client.get(route, params={"before": first[-1]["started_at"]})
    assert run_ids(rest) == done[2::-1]
    assert client.get(route, params={"before": "2000-01-01T00:00:00Z"}).json() == []


def test_naive_before_is_read_in_the_schedulers_timezone(backend: Backend) -> None:
    scheduler = make_scheduler(timezone="Asia/Tokyo")  # UTC+9, no DST
    with TestClient(make_app(scheduler), backend=backend, headers=CSRF) as client:
        run = run_now(client, "tick")
        started = datetime.fromisoformat(run["started_at"])
        assert started.utcoffset() == timedelta(hours=9)
        wall_clock = started.replace(tzinfo=None)  # Tokyo's wall clock, no offset
        after = (wall_clock + timedelta(seconds=1)).isoformat()
        before = (wall_clock - timedelta(seconds=1)).isoformat()
        # Read as UTC, both would be 9 hours later than the run: it would be in both.
        assert run_ids(client.get("/scheduler/runs", params={"before": after})) == [run["run_id"]]
        assert client.get("/scheduler/runs", params={"before": before}).json() == []


RUNS_ROUTES = ["/scheduler/runs", "/scheduler/jobs/tick/runs"]


@pytest.mark.parametrize("route", RUNS_ROUTES)
@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=-5", "limit=two"])
def test_runs_limit_out_of_range(client: TestClient, route: str, query: str) -> None:
    response = client.get(f"{route}?{query}")
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["query", "limit"]


@pytest.mark.parametrize("route", RUNS_ROUTES)
def test_runs_unknown_outcome_names_the_valid_ones(client: TestClient, route: str) -> None:
    response = client.get(route, params={"outcome": "failed"})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["query", "outcome"] and error["input"] == "failed"
    valid = "'success', 'error', 'timed_out', 'cancelled', 'skipped', 'missed' or 'abandoned'"
    assert error["msg"] == f"Input should be {valid}"


@pytest.mark.parametrize("route", RUNS_ROUTES)
@pytest.mark.parametrize(
    "value",
    [
        "yesterday",
        "2026-13-01T00:00:00",
        "2026-05-01T12:00:00 02:00",  # an unencoded '+' arrives as a space
        "1767225600",  # pydantic alone would read a number as a Unix timestamp
        "1.5e3",
    ],
)
def test_runs_before_must_be_an_iso_datetime(client: TestClient, route: str, value: str) -> None:
    response = client.get(route, params={"before": value})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["query", "before"] and error["input"] == value
    assert error["msg"].startswith("Input should be a valid datetime") or error["msg"] == (
        "Value error, expected an ISO 8601 datetime such as 2026-05-01T12:00:00+02:00, not a number"
    )


def test_runs_accept_a_date_or_an_offset(client: TestClient) -> None:
    run_now(client, "tick")
    for value in ("2999-01-01", "2999-01-01T00:00:00+02:00", "2999-01-01T00:00:00Z"):
        response = client.get("/scheduler/runs", params={"before": value})
        assert len(run_ids(response)) == 1, value


# ---------------------------------------------------------------------------- workers


def test_workers_on_memory_is_this_process(client: TestClient) -> None:
    status = client.get("/scheduler/status").json()
    (worker,) = client.get("/scheduler/workers").json()
    assert worker["id"] == status["worker_id"] and status["workers"] == 1
    assert worker["pid"] == os.getpid() and worker["id"].split(":")[:2] == [
        worker["host"],
        str(os.getpid()),
    ]
    assert worker["state"] == "running" and worker["runs_in_progress"] == 0
    assert worker["started_at"] == status["started_at"]


def test_workers_of_a_stopped_scheduler_is_empty(backend: Backend) -> None:
    scheduler = make_scheduler()  # explicit and never started
    with TestClient(
        make_app(scheduler, lifespan=False, explicit=True), backend=backend, headers=CSRF
    ) as client:
        response = client.get("/scheduler/workers")
    assert response.status_code == 200
    assert response.json() == []


def test_preview(client: TestClient) -> None:
    body = client.get("/scheduler/jobs/nightly/preview").json()
    times = [datetime.fromisoformat(t) for t in body]
    assert len(times) == 10
    assert times == sorted(times) and all(t.hour == 2 and t.minute == 0 for t in times)
    assert all(t.tzinfo is not None for t in times)
    assert len(client.get("/scheduler/jobs/tick/preview", params={"count": 1000}).json()) == 1000
    assert len(client.get("/scheduler/jobs/paused/preview?count=3").json()) == 3
    assert client.get("/scheduler/jobs/nope/preview").status_code == 404


@pytest.mark.parametrize("query", ["count=0", "count=1001", "count=1.5"])
def test_preview_count_out_of_range(client: TestClient, query: str) -> None:
    response = client.get(f"/scheduler/jobs/tick/preview?{query}")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "count"]


# ---------------------------------------------------------------------------- status, health


def test_status(client: TestClient) -> None:
    body = client.get("/scheduler/status").json()
    status = SchedulerStatus.model_validate(body)
    assert status.state == "running"
    assert status.job_count == 5
    assert status.started_at is not None
    assert status.stale_jobs == []


def test_health_ok_while_running(client: TestClient) -> None:
    response = client.get("/scheduler/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "stale_jobs": 0}
    assert response.headers["cache-control"] == "no-store"


def wait_for_health(client: TestClient, code: int) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while (response := client.get("/scheduler/health")).status_code != code:
        assert time.monotonic() < deadline, f"health stayed {response.status_code}"
        time.sleep(0.01)
    body: dict[str, Any] = response.json()
    return body


def test_health_fails_when_a_job_is_stale(backend: Backend) -> None:
    scheduler = make_scheduler()
    scheduler.interval(hours=1, id="watched", max_staleness=0.3)(noop)
    with TestClient(make_app(scheduler), backend=backend, headers=CSRF) as client:
        assert wait_for_health(client, 503) == {"status": "failing", "stale_jobs": 1}
        assert client.get("/scheduler/status").json()["stale_jobs"] == ["watched"]
        # A success resets the clock; a paused job is not checked.
        assert client.post("/scheduler/jobs/watched/run?wait=true").json()["outcome"] == "success"
        assert client.get("/scheduler/health").json() == {"status": "ok", "stale_jobs": 0}
        assert wait_for_health(client, 503) == {"status": "failing", "stale_jobs": 1}
        client.post("/scheduler/jobs/watched/pause")
        assert client.get("/scheduler/health").status_code == 200


def test_health_fails_when_the_scheduler_is_stopped(backend: Backend) -> None:
    scheduler = make_scheduler()
    with TestClient(
        make_app(scheduler, lifespan=False, explicit=True), backend=backend, headers=CSRF
    ) as client:
        response = client.get("/scheduler/health")
    assert response.status_code == 503
    assert response.json() == {"status": "failing", "stale_jobs": 0}


class StubScheduler:
    """Reports a given status: states a real scheduler only passes through briefly."""

    def __init__(self, state: SchedulerState, stale: list[str] | None = None) -> None:
        self.status = SchedulerStatus(state=state, stale_jobs=stale or [])

    async def get_status(self) -> SchedulerStatus:
        return self.status


@pytest.mark.parametrize(
    ("state", "stale", "code", "body"),
    [
        ("running", [], 200, {"status": "ok", "stale_jobs": 0}),
        ("running", ["a", "b"], 503, {"status": "failing", "stale_jobs": 2}),
        ("starting", [], 503, {"status": "failing", "stale_jobs": 0}),
        ("stopping", [], 503, {"status": "failing", "stale_jobs": 0}),
        ("stopped", [], 503, {"status": "failing", "stale_jobs": 0}),
        ("failed", ["a"], 503, {"status": "failing", "stale_jobs": 1}),
    ],
)
def test_health_per_state(
    backend: Backend, state: SchedulerState, stale: list[str], code: int, body: dict[str, Any]
) -> None:
    app = make_app(None, dependencies=GUARD)
    app.dependency_overrides[get_scheduler] = lambda: StubScheduler(state, stale)
    with TestClient(app, backend=backend, headers=CSRF) as client:
        response = client.get("/scheduler/health")
        assert (response.status_code, response.json()) == (code, body)
        # The details stay behind the guard.
        assert client.get("/scheduler/status").status_code == 401
        assert client.get("/scheduler/status", headers=GOOD).json()["stale_jobs"] == stale


# ---------------------------------------------------------------------------- guards

GUARDED_ROUTES = [
    ("GET", "/scheduler/jobs", 200),
    ("GET", "/scheduler/jobs/tick", 200),
    ("POST", "/scheduler/jobs/tick/pause", 200),
    ("POST", "/scheduler/jobs/tick/resume", 200),
    ("POST", "/scheduler/jobs/tick/run", 202),
    ("GET", "/scheduler/jobs/tick/runs", 200),
    ("GET", "/scheduler/jobs/tick/preview", 200),
    ("GET", "/scheduler/runs", 200),
    ("GET", "/scheduler/workers", 200),
    ("GET", "/scheduler/status", 200),
    ("GET", "/scheduler/dashboard", 200),
    ("GET", "/scheduler/metrics", 200),
    ("DELETE", "/scheduler/jobs/tick", 204),  # last: it removes the job
]


def test_dependencies_guard_every_route_but_health(backend: Backend) -> None:
    app = make_app(make_scheduler(), dependencies=GUARD)
    operations = {
        (method.upper(), path)
        for path, item in app.openapi()["paths"].items()
        for method in item
        if path != "/scheduler/health"
    }
    expected = {(m, p.replace("tick", "{job_id}")) for m, p, _ in GUARDED_ROUTES}
    assert operations == expected  # the table below covers every guarded route
    with TestClient(app, backend=backend, headers=CSRF) as client:
        for method, path, ok in GUARDED_ROUTES:
            missing = client.request(method, path)
            assert missing.status_code == 401, (method, path)
            assert missing.json() == {"detail": "Not authenticated"}
            assert client.request(method, path, headers=BAD).status_code == 403, (method, path)
            assert client.request(method, path, headers=GOOD).status_code == ok, (method, path)
        assert client.get("/scheduler/health").status_code == 200


def test_nothing_is_mounted_unless_included(backend: Backend) -> None:
    scheduler = make_scheduler()
    create_scheduler_router(scheduler)
    with TestClient(FastAPI(lifespan=scheduler.lifespan), backend=backend, headers=CSRF) as client:
        assert client.get("/scheduler/jobs").status_code == 404
        assert client.get("/scheduler/health").status_code == 404


def test_prefix_and_tags(backend: Backend) -> None:
    app = make_app(make_scheduler(), prefix="/admin/cron", tags=["ops", "cron"])
    operation = app.openapi()["paths"]["/admin/cron/jobs"]["get"]
    assert operation["tags"] == ["ops", "cron"]
    with TestClient(app, backend=backend, headers=CSRF) as client:
        assert client.get("/admin/cron/health").status_code == 200
        assert client.get("/scheduler/health").status_code == 404


# ---------------------------------------------------------------------------- finding the scheduler


def job_ids(client: TestClient) -> list[str]:
    return ids(client.get("/scheduler/jobs").json())


def lone_scheduler(job_id: str) -> TaskScheduler:
    scheduler = TaskScheduler()
    scheduler.interval(hours=1, id=job_id)(noop)
    return scheduler


def test_scheduler_from_lifespan_state(backend: Backend) -> None:
    app = make_app(lone_scheduler("from-lifespan"))
    with TestClient(app, backend=backend, headers=CSRF) as client:
        assert job_ids(client) == ["from-lifespan"]
        assert client.get("/scheduler/health").status_code == 200


def test_explicit_scheduler_without_lifespan_state(backend: Backend) -> None:
    app = make_app(lone_scheduler("explicit"), lifespan=False, explicit=True)
    with TestClient(app, backend=backend, headers=CSRF) as client:
        assert job_ids(client) == ["explicit"]


def test_explicit_scheduler_wins_over_lifespan_and_app_state(backend: Backend) -> None:
    explicit = lone_scheduler("explicit")
    app = FastAPI(lifespan=lone_scheduler("from-lifespan").lifespan)
    app.state.task_scheduler = lone_scheduler("from-app-state")
    app.include_router(create_scheduler_router(explicit))
    app.include_router(create_scheduler_router(prefix="/implicit"))
    with TestClient(app, backend=backend, headers=CSRF) as client:
        assert job_ids(client) == ["explicit"]
        assert ids(client.get("/implicit/jobs").json()) == ["from-lifespan"]


def test_scheduler_from_app_state(backend: Backend) -> None:
    app = make_app(None)
    app.state.task_scheduler = lone_scheduler("from-app-state")
    with TestClient(app, backend=backend, headers=CSRF) as client:
        assert job_ids(client) == ["from-app-state"]


@pytest.mark.parametrize("explicit", [False, True])
def test_dependency_override_wins(backend: Backend, explicit: bool) -> None:
    scheduler = lone_scheduler("original")
    app = make_app(scheduler, explicit=explicit)
    app.dependency_overrides[get_scheduler] = lambda: lone_scheduler("override")
    with TestClient(app, backend=backend, headers=CSRF) as client:
        assert job_ids(client) == ["override"]
        app.dependency_overrides.clear()
        assert job_ids(client) == ["original"]


def test_get_scheduler_in_your_own_routes(backend: Backend) -> None:
    scheduler = lone_scheduler("mine")
    app = FastAPI(lifespan=scheduler.lifespan)

    @app.get("/count")
    async def count(found: Annotated[TaskScheduler, Depends(get_scheduler)]) -> int:
        return len(await found.get_jobs())

    with TestClient(app, backend=backend, headers=CSRF) as client:
        assert client.get("/count").json() == 1


ALL_ROUTES: list[tuple[str, str]] = [
    *((method, path) for method, path, _ in GUARDED_ROUTES),
    ("GET", "/scheduler/health"),
]


def test_no_scheduler_is_a_503_with_an_explanation(backend: Backend) -> None:
    app = make_app(None)
    app.state.task_scheduler = "not a scheduler"  # ignored: only a TaskScheduler counts
    with TestClient(app, backend=backend, headers=CSRF) as client:
        for method, path in ALL_ROUTES:
            response = client.request(method, path)
            assert response.status_code == 503, (method, path)
            assert "no task scheduler is configured" in response.json()["detail"]


def test_no_scheduler_still_checks_credentials_first(backend: Backend) -> None:
    with TestClient(make_app(None, dependencies=GUARD), backend=backend, headers=CSRF) as client:
        assert client.get("/scheduler/jobs").status_code == 401
        assert client.get("/scheduler/jobs", headers=GOOD).status_code == 503


SCHEDULER_CALLS = [
    "get_jobs",
    "get_job",
    "pause_job",
    "resume_job",
    "run_job",
    "remove_job",
    "get_runs",
    "preview",
    "get_status",
    "get_workers",
]


def store_goes_away(
    scheduler: TaskScheduler, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    """Every call of the scheduler's public API raises ``error``, as it does when its store
    does not answer (tests/fastapi/test_fastapi_store.py takes a real PostgreSQL away)."""

    async def unavailable(*args: object, **kwargs: object) -> None:
        raise error

    for name in SCHEDULER_CALLS:
        monkeypatch.setattr(scheduler, name, unavailable)


def test_every_route_answers_503_when_the_store_is_unavailable(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    scheduler = make_scheduler()
    app = make_app(scheduler, dependencies=GUARD)
    routed = {
        (method.upper(), path) for path, item in app.openapi()["paths"].items() for method in item
    }
    assert routed == {(m, p.replace("tick", "{job_id}")) for m, p in ALL_ROUTES}
    with TestClient(app, backend=backend, headers=CSRF) as client:
        store_goes_away(
            scheduler, monkeypatch, StoreUnavailableError("the store did not answer within 5.0 s")
        )
        for method, path in ALL_ROUTES:
            response = client.request(method, path, headers=GOOD)
            if path == "/scheduler/dashboard":  # the page loads, and shows its calls' 503s
                assert response.status_code == 200, response.text
                continue
            assert response.status_code == 503, (method, path, response.text)
            if path == "/scheduler/health":  # unguarded: no reason given
                assert response.json() == {"detail": "the scheduler's store is unavailable"}
                assert response.headers["cache-control"] == "no-store"
            else:
                assert response.json() == {
                    "detail": "the scheduler's store is unavailable: "
                    "the store did not answer within 5.0 s"
                }, (method, path)
        # The guard still comes first.
        assert client.get("/scheduler/runs").status_code == 401


def test_the_503_detail_gives_the_cause_without_the_sql(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    scheduler = make_scheduler()
    with TestClient(make_app(scheduler), backend=backend, headers=CSRF) as client:
        cause = ConnectionRefusedError(111, "Connect call failed ('10.0.0.7', 5432)")
        error = StoreUnavailableError(f"the store is unavailable: {cause}")
        error.__cause__ = cause
        store_goes_away(scheduler, monkeypatch, error)
        expected = "the scheduler's store is unavailable: [Errno 111] Connect call failed"
        assert client.get("/scheduler/runs").json()["detail"].startswith(expected)
        # A connection the store's driver lost under a write: a ConnectionError too.
        lost = ConnectionResetError(104, "Connection reset by peer")
        store_goes_away(scheduler, monkeypatch, lost)
        response = client.post("/scheduler/jobs/tick/pause")
        assert response.status_code == 503
        assert response.json() == {
            "detail": "the scheduler's store is unavailable: [Errno 104] Connection reset by peer"
        }
        multi_line = StoreUnavailableError("the store is unavailable: connection closed")
        multi_line.__cause__ = RuntimeError("connection closed\n[SQL: SELECT secret_table]")
        store_goes_away(scheduler, monkeypatch, multi_line)
        detail = client.get("/scheduler/jobs").json()["detail"]
        assert detail == "the scheduler's store is unavailable: connection closed"


def test_explicit_scheduler_must_be_a_task_scheduler() -> None:
    bad: Callable[..., Any] = create_scheduler_router
    with pytest.raises(TypeError, match="must be a TaskScheduler"):
        bad("scheduler")


# ---------------------------------------------------------------------------- OpenAPI


OPERATIONS = {
    ("get", "/scheduler/jobs"): ("scheduler_list_jobs", {"200", "401", "403", "422", "503"}),
    ("get", "/scheduler/jobs/{job_id}"): (
        "scheduler_get_job",
        {"200", "401", "403", "404", "422", "503"},
    ),
    ("post", "/scheduler/jobs/{job_id}/pause"): (
        "scheduler_pause_job",
        {"200", "401", "403", "404", "422", "503"},
    ),
    ("post", "/scheduler/jobs/{job_id}/resume"): (
        "scheduler_resume_job",
        {"200", "401", "403", "404", "422", "503"},
    ),
    ("post", "/scheduler/jobs/{job_id}/run"): (
        "scheduler_run_job",
        {"200", "202", "401", "403", "404", "409", "422", "503"},
    ),
    ("delete", "/scheduler/jobs/{job_id}"): (
        "scheduler_remove_job",
        {"204", "401", "403", "404", "422", "503"},
    ),
    ("get", "/scheduler/jobs/{job_id}/runs"): (
        "scheduler_list_runs",
        {"200", "401", "403", "404", "422", "503"},
    ),
    ("get", "/scheduler/jobs/{job_id}/preview"): (
        "scheduler_preview_job",
        {"200", "401", "403", "404", "422", "503"},
    ),
    ("get", "/scheduler/runs"): (
        "scheduler_list_all_runs",
        {"200", "401", "403", "404", "422", "503"},
    ),
    ("get", "/scheduler/workers"): ("scheduler_list_workers", {"200", "401", "403", "503"}),
    ("get", "/scheduler/status"): ("scheduler_status", {"200", "401", "403", "503"}),
    ("get", "/scheduler/metrics"): ("scheduler_metrics", {"200", "401", "403", "501", "503"}),
    ("get", "/scheduler/health"): ("scheduler_health", {"200", "503"}),
    ("get", "/scheduler/dashboard"): ("scheduler_dashboard", {"200", "304", "401", "403", "503"}),
}


def test_openapi_operation_ids_and_documented_status_codes() -> None:
    schema = make_app(None, dependencies=GUARD).openapi()
    found = {
        (method, path): (operation["operationId"], set(operation["responses"]))
        for path, item in schema["paths"].items()
        for method, operation in item.items()
    }
    assert found == OPERATIONS
    models = schema["components"]["schemas"]
    assert models["RunAccepted"]["properties"]["run_id"]["description"]
    assert models["Health"]["properties"]["status"]["enum"] == ["ok", "failing"]
    assert "security" not in schema["paths"]["/scheduler/health"]["get"]
    assert "security" in schema["paths"]["/scheduler/jobs"]["get"]
    assert "security" in schema["paths"]["/scheduler/runs"]["get"]
    assert "security" in schema["paths"]["/scheduler/workers"]["get"]


def test_openapi_documents_the_runs_and_workers_models() -> None:
    schema = make_app(None, dependencies=GUARD).openapi()
    ref = "#/components/schemas/"
    for path, model in [
        ("/scheduler/runs", "RunInfo"),
        ("/scheduler/jobs/{job_id}/runs", "RunInfo"),
        ("/scheduler/workers", "WorkerInfo"),
    ]:
        ok = schema["paths"][path]["get"]["responses"]["200"]
        assert ok["content"]["application/json"]["schema"]["items"]["$ref"] == ref + model
    runs = schema["paths"]["/scheduler/runs"]["get"]
    assert "Link" in runs["responses"]["200"]["headers"]
    params = {param["name"]: param for param in runs["parameters"]}
    assert set(params) == {"job_id", "outcome", "limit", "before"}
    assert params["limit"]["schema"]["maximum"] == 1000
    assert params["before"]["schema"]["anyOf"][0]["format"] == "date-time"
    outcome = schema["components"]["schemas"]["Outcome"]["enum"]
    assert outcome == [
        "success",
        "error",
        "timed_out",
        "cancelled",
        "skipped",
        "missed",
        "abandoned",
    ]
    assert "unavailable" in runs["responses"]["503"]["description"]


def test_openapi_without_guards_documents_no_401() -> None:
    schema = make_app(None).openapi()
    for item in schema["paths"].values():
        for method, operation in item.items():
            assert "401" not in operation["responses"]
            if method in ("post", "delete"):  # the CSRF check's 403 only
                refused = operation["responses"]["403"]["description"]
                assert refused.startswith("The X-Task-Scheduler header is missing")
            else:
                assert "403" not in operation["responses"]
