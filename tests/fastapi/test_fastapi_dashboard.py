"""The dashboard as HTTP sees it: one page and its two files, behind the router's guard, cached
by the browser, nothing loaded from elsewhere. What it shows and does in a browser is tested in
tests/browser (a real Chromium)."""

from __future__ import annotations

import base64
import re
import secrets
from html.parser import HTMLParser
from importlib.resources import files
from typing import Annotated, Any, Literal, cast

import pytest
from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from fastapi.testclient import TestClient
from helpers import noop

from library.components.scheduling.task_scheduler import SchedulerConfig, TaskScheduler
from library.components.scheduling.task_scheduler.fastapi import (
    CSRF_HEADER,
    create_scheduler_router,
)

Backend = Literal["asyncio", "trio"]
USER, PASSWORD = "ops", "s3cret"
BASIC = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
STATIC = files("library.components.scheduling.task_scheduler") / "_static"

basic = HTTPBasic()


def require_ops(credentials: Annotated[HTTPBasicCredentials, Depends(basic)]) -> None:
    user_ok = secrets.compare_digest(credentials.username.encode(), USER.encode())
    password_ok = secrets.compare_digest(credentials.password.encode(), PASSWORD.encode())
    if not (user_ok and password_ok):
        raise HTTPException(401, "wrong user name or password", {"WWW-Authenticate": "Basic"})


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> Backend:
    return cast(Backend, request.param)


def make_app(timezone: str = "UTC", **router_options: Any) -> FastAPI:
    scheduler = TaskScheduler(SchedulerConfig(timezone=timezone))
    scheduler.interval(hours=1, id="report")(noop)
    app = FastAPI(lifespan=scheduler.lifespan)
    options = {"dependencies": [Depends(require_ops)], **router_options}
    app.include_router(create_scheduler_router(**options))
    return app


class Links(HTMLParser):
    """Every URL the page makes the browser load (src, href of links and scripts)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.body: dict[str, str | None] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag in ("script", "img", "iframe") and found.get("src"):
            self.urls.append(str(found["src"]))
        if tag == "link" and found.get("href"):
            self.urls.append(str(found["href"]))
        if tag == "body":
            self.body = found


def links(page: str) -> Links:
    parser = Links()
    parser.feed(page)
    return parser


def test_the_page_and_its_files(backend: Backend) -> None:
    with TestClient(make_app("Europe/Paris"), backend=backend) as client:
        page = client.get("/scheduler/dashboard", headers=BASIC)
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.headers["cache-control"] == "private, no-cache"
        assert page.headers["x-frame-options"] == "DENY"
        policy = page.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "script-src 'self'" in policy
        assert "frame-ancestors 'none'" in policy
        parsed = links(page.text)
        assert parsed.body["data-timezone"] == "Europe/Paris"  # times shown in the configured zone
        loaded = [url for url in parsed.urls if not url.startswith("data:")]
        assert len(loaded) == 2, parsed.urls
        for url in loaded:
            # Relative, under the router's prefix: right behind any proxy or mount.
            assert re.fullmatch(r"dashboard/static/dashboard-[0-9a-f]{12}\.(css|js)", url), url
            asset = client.get(f"/scheduler/{url}", headers=BASIC)
            assert asset.status_code == 200, url
            kind = "text/css" if url.endswith(".css") else "text/javascript"
            assert asset.headers["content-type"] == f"{kind}; charset=utf-8"
            assert asset.headers["cache-control"] == "private, max-age=31536000, immutable"
            assert asset.headers["x-content-type-options"] == "nosniff"
            hashed = url.rpartition("/")[2]  # dashboard-<hash>.js: the package's dashboard.js
            original = hashed.partition("-")[0] + "." + hashed.rpartition(".")[2]
            assert asset.content == (STATIC / original).read_bytes()


def test_a_copy_the_browser_has_is_not_sent_again(backend: Backend) -> None:
    with TestClient(make_app(), backend=backend) as client:
        page = client.get("/scheduler/dashboard", headers=BASIC)
        again = {**BASIC, "If-None-Match": page.headers["etag"]}
        unchanged = client.get("/scheduler/dashboard", headers=again)
        assert (unchanged.status_code, unchanged.content) == (304, b"")
        assert unchanged.headers["etag"] == page.headers["etag"]
        script = next(url for url in links(page.text).urls if url.endswith(".js"))
        asset = client.get(f"/scheduler/{script}", headers=BASIC)
        weak = {**BASIC, "If-None-Match": f'"other", W/{asset.headers["etag"]}'}
        assert client.get(f"/scheduler/{script}", headers=weak).status_code == 304
        other = {**BASIC, "If-None-Match": '"other"'}
        assert client.get(f"/scheduler/{script}", headers=other).status_code == 200


def test_the_guard_covers_the_page_and_its_files(backend: Backend) -> None:
    with TestClient(make_app(), backend=backend) as client:
        page = client.get("/scheduler/dashboard", headers=BASIC)
        for url in ["dashboard", *(u for u in links(page.text).urls if u.startswith("dash"))]:
            response = client.get(f"/scheduler/{url}")
            assert response.status_code == 401, url
            assert response.headers["WWW-Authenticate"] == "Basic"  # the browser asks for it
            wrong = {"Authorization": "Basic " + base64.b64encode(b"ops:guess").decode()}
            assert client.get(f"/scheduler/{url}", headers=wrong).status_code == 401


def test_an_unknown_file_is_a_404_naming_the_files(backend: Backend) -> None:
    with TestClient(make_app(), backend=backend) as client:
        response = client.get("/scheduler/dashboard/static/dashboard.js", headers=BASIC)
        assert response.status_code == 404
        detail = response.json()["detail"]
        named = re.fullmatch(
            r"no dashboard file 'dashboard\.js': its files are '(.+)', '(.+)'", detail
        )
        assert named, detail
        assert sorted(re.sub("[0-9a-f]{12}", "HASH", name) for name in named.groups()) == [
            "dashboard-HASH.css",
            "dashboard-HASH.js",
        ]


def test_under_another_prefix(backend: Backend) -> None:
    with TestClient(make_app(prefix="/admin/cron"), backend=backend) as client:
        page = client.get("/admin/cron/dashboard", headers=BASIC)
        assert page.status_code == 200
        for url in links(page.text).urls:
            if not url.startswith("data:"):
                assert client.get(f"/admin/cron/{url}", headers=BASIC).status_code == 200


def test_dashboard_false_leaves_it_out(backend: Backend) -> None:
    app = make_app(dashboard=False)
    assert "/scheduler/dashboard" not in app.openapi()["paths"]
    with TestClient(app, backend=backend) as client:
        assert client.get("/scheduler/dashboard", headers=BASIC).status_code == 404
        assert client.get("/scheduler/jobs", headers=BASIC).status_code == 200


def test_openapi_lists_the_page_but_not_its_files() -> None:
    paths = make_app().openapi()["paths"]
    page = paths["/scheduler/dashboard"]["get"]
    assert page["operationId"] == "scheduler_dashboard"
    assert set(page["responses"]["200"]["content"]) == {"text/html"}
    assert set(page["responses"]["503"]["content"]) == {"application/json"}
    assert not [path for path in paths if "static" in path]


def test_the_files_are_small_and_load_nothing_from_elsewhere() -> None:
    texts = {name: (STATIC / name).read_text() for name in ("dashboard.html", "dashboard.css")}
    texts["dashboard.js"] = (STATIC / "dashboard.js").read_text()
    assert sum(len(text.encode()) for text in texts.values()) < 40_000
    for name, text in texts.items():
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), name
        assert "@import" not in text and "url(" not in text, name


def test_the_script_never_parses_data_as_html() -> None:
    # The browser test shows an error message with markup rendering as text; this keeps every
    # other path of the script from writing HTML at all.
    script = (STATIC / "dashboard.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    assert "textContent" in script


def test_a_store_password_appears_nowhere_the_dashboard_reads(pg_url: str) -> None:
    # The server trusts loopback, so a password in the URL is accepted and must stay hidden.
    password = "S3cretPw-dashboard"
    store = pg_url.replace("postgres@", f"postgres:{password}@")
    scheduler = TaskScheduler(SchedulerConfig(store=store))
    scheduler.interval(hours=1, id="report")(noop)
    app = FastAPI(lifespan=scheduler.lifespan)
    app.include_router(create_scheduler_router(dependencies=[Depends(require_ops)]))
    with TestClient(app, backend="asyncio") as client:
        ran = client.post(
            "/scheduler/jobs/report/run?wait=true", headers={**BASIC, CSRF_HEADER: "1"}
        )
        assert ran.json()["outcome"] == "success", ran.text
        page = client.get("/scheduler/dashboard", headers=BASIC)
        # What the page's script loads, as it asks for it.
        for url in ["dashboard", "status", "jobs", "runs?limit=25", "workers"]:
            response = client.get(f"/scheduler/{url}", headers=BASIC)
            assert response.status_code == 200, (url, response.text)
            assert password not in response.text, url
        for url in links(page.text).urls:
            if not url.startswith("data:"):
                assert password not in client.get(f"/scheduler/{url}", headers=BASIC).text
