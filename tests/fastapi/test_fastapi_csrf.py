"""Cross-site request forgery: a state-changing request needs the ``X-Task-Scheduler`` header.

A browser that holds the router's credentials (HTTP Basic, a cookie) sends them with any request
another site makes it send, such as an HTML form's POST; such a form cannot set a header. So
every POST, PUT, PATCH and DELETE of the router must carry the header, credentials or not.
The browser-side half (the dashboard sends it) is tested in tests/browser.
"""

from __future__ import annotations

import base64
import secrets
from typing import Annotated, Literal, cast

import pytest
from fastapi import APIRouter, Depends, FastAPI, HTTPException
from fastapi.routing import APIRoute
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from fastapi.testclient import TestClient
from helpers import noop

from library.components.scheduling.task_scheduler import TaskScheduler
from library.components.scheduling.task_scheduler.fastapi import (
    CSRF_HEADER,
    create_scheduler_router,
)

Backend = Literal["asyncio", "trio"]
USER, PASSWORD = "admin", "correct horse"
BASIC = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}

basic = HTTPBasic()


def require_admin(credentials: Annotated[HTTPBasicCredentials, Depends(basic)]) -> None:
    user_ok = secrets.compare_digest(credentials.username.encode(), USER.encode())
    password_ok = secrets.compare_digest(credentials.password.encode(), PASSWORD.encode())
    if not (user_ok and password_ok):
        raise HTTPException(401, "wrong user name or password", {"WWW-Authenticate": "Basic"})


def refused(method: str) -> str:
    return (
        f"the scheduler's routes refuse a {method} without the header X-Task-Scheduler (send any "
        "value, e.g. 'X-Task-Scheduler: 1'): this protects against cross-site request forgery, "
        "as another site's HTML form cannot send it"
    )


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> Backend:
    return cast(Backend, request.param)


def make_router(guarded: bool = True) -> APIRouter:
    dependencies = [Depends(require_admin)] if guarded else None
    return create_scheduler_router(dependencies=dependencies)


def make_app(router: APIRouter | None = None) -> FastAPI:
    scheduler = TaskScheduler()
    scheduler.interval(hours=1, id="report")(noop)
    scheduler.interval(hours=1, id="spare")(noop)
    app = FastAPI(lifespan=scheduler.lifespan)
    app.include_router(router or make_router())
    return app


def unsafe_routes(router: APIRouter) -> list[tuple[str, str]]:
    """Every state-changing (method, path) of the router: found, not listed, so a route added
    later is checked too."""
    found = [
        (method, route.path.replace("{job_id}", "spare"))
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in sorted(route.methods & UNSAFE)
    ]
    # The delete last: it removes the job the others act on.
    return sorted(found, key=lambda item: item[0] == "DELETE")


def test_a_cross_site_form_post_is_refused(backend: Backend) -> None:
    """What another site's page can make a signed-in browser send: a form POST, form-encoded,
    with the browser's cached HTTP Basic credentials, the other site's Origin and no header."""
    forged = {
        **BASIC,
        "Content-Type": "application/x-www-form-urlencoded",
        "Origin": "https://evil.example",
        "Referer": "https://evil.example/cats.html",
        "Sec-Fetch-Site": "cross-site",
        "Sec-Fetch-Mode": "navigate",
    }
    with TestClient(make_app(), backend=backend) as client:
        for action in ("pause", "run"):
            response = client.post(
                f"/scheduler/jobs/report/{action}", content=b"submit=1", headers=forged
            )
            assert response.status_code == 403, response.text
            assert response.json() == {"detail": refused("POST")}
        job = client.get("/scheduler/jobs/report", headers=BASIC).json()
        assert job["paused"] is False and job["last_run"] is None  # nothing happened
        # The same browser on the dashboard (same origin, the header set by its script): allowed.
        own = {**BASIC, CSRF_HEADER: "1", "Origin": str(client.base_url)}
        assert client.post("/scheduler/jobs/report/pause", headers=own).json()["paused"] is True


def test_every_state_changing_route_needs_the_header(backend: Backend) -> None:
    router = make_router()
    app = make_app(router)
    routes = unsafe_routes(router)
    assert {path for _, path in routes} == {
        "/scheduler/jobs/spare/pause",
        "/scheduler/jobs/spare/resume",
        "/scheduler/jobs/spare/run",
        "/scheduler/jobs/spare",
    }
    with TestClient(app, backend=backend) as client:
        for method, path in routes:
            for headers in ({}, {CSRF_HEADER: ""}, {CSRF_HEADER: "   "}):
                response = client.request(method, path, headers={**BASIC, **headers})
                assert response.status_code == 403, (method, path, headers)
                assert response.json() == {"detail": refused(method)}
        for method, path in routes:  # any non-empty value will do
            response = client.request(method, path, headers={**BASIC, CSRF_HEADER: "yes"})
            assert response.status_code in (200, 202, 204), (method, path, response.text)
        assert client.get("/scheduler/jobs/spare", headers=BASIC).status_code == 404


def test_without_a_guard_too(backend: Backend) -> None:
    # A router left open on an intranet is reachable from a browser there: same protection.
    with TestClient(make_app(make_router(guarded=False)), backend=backend) as client:
        response = client.post("/scheduler/jobs/report/pause")
        assert (response.status_code, response.json()) == (403, {"detail": refused("POST")})
        assert client.post("/scheduler/jobs/report/pause", headers={CSRF_HEADER: "1"}).is_success


def test_safe_methods_need_no_header(backend: Backend) -> None:
    with TestClient(make_app(), backend=backend) as client:
        for path in ("/scheduler/jobs", "/scheduler/runs", "/scheduler/dashboard"):
            assert client.get(path, headers=BASIC).status_code == 200, path
        assert client.get("/scheduler/health").status_code == 200


def test_the_guard_still_applies_with_the_header(backend: Backend) -> None:
    with TestClient(make_app(), backend=backend) as client:
        response = client.post("/scheduler/jobs/report/pause", headers={CSRF_HEADER: "1"})
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Basic"


def test_openapi_documents_the_header_on_every_state_changing_operation() -> None:
    schema = make_app().openapi()
    seen = 0
    for item in schema["paths"].values():
        for method, operation in item.items():
            headers = {p["name"]: p for p in operation.get("parameters", ()) if p["in"] == "header"}
            if method.upper() in UNSAFE:
                seen += 1
                assert headers[CSRF_HEADER]["required"] is True
                assert headers[CSRF_HEADER]["schema"]["minLength"] == 1
                assert "cross-site request forgery" in operation["responses"]["403"]["description"]
            else:
                assert CSRF_HEADER not in headers
    assert seen == 4
