"""The dashboard in a real browser: headless Chromium on a real uvicorn server on loopback.

The app guards the router with HTTP Basic, as the README shows for browsers; the browser holds
the credentials, as a signed-in user's would. What the test does is what a user does: click
pause, resume with the keyboard, run a job, read the result; what it checks is what the user
sees, and through the API that it happened. A job's error message with markup in it must show
as text. uvicorn runs on asyncio only, so this runs there.
"""

from __future__ import annotations

import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import httpx
import pytest
import uvicorn
from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from library.components.scheduling.task_scheduler import SchedulerConfig, TaskScheduler
from library.components.scheduling.task_scheduler.fastapi import create_scheduler_router

pytestmark = pytest.mark.browser

USER, PASSWORD = "ops", "correct horse battery"
XSS = "<img src=x onerror=alert(1)>"
HOSTILE_NAME = "<b>Sync</b> invoices"
WAIT_MS = 10_000  # for anything the page shows: generous, the machine may be busy
START_WITHIN = 15.0

basic = HTTPBasic()


def require_ops(credentials: Annotated[HTTPBasicCredentials, Depends(basic)]) -> None:
    user_ok = secrets.compare_digest(credentials.username.encode(), USER.encode())
    password_ok = secrets.compare_digest(credentials.password.encode(), PASSWORD.encode())
    if not (user_ok and password_ok):
        raise HTTPException(401, "wrong user name or password", {"WWW-Authenticate": "Basic"})


def make_app() -> FastAPI:
    scheduler = TaskScheduler(SchedulerConfig(timezone="Europe/Paris"))

    @scheduler.interval(hours=1, id="report", name="Nightly report")
    async def report() -> None:
        pass

    @scheduler.interval(hours=1, id="hostile", name=HOSTILE_NAME)
    async def hostile() -> None:
        raise RuntimeError(XSS)

    app = FastAPI(lifespan=scheduler.lifespan)
    app.include_router(create_scheduler_router(dependencies=[Depends(require_ops)]))
    return app


@dataclass
class Served:
    base: str
    api: httpx.Client


@pytest.fixture
def served() -> Iterator[Served]:
    """The app under a real uvicorn, in a thread of this process, on a free loopback port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(make_app(), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + START_WITHIN
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                pytest.fail(f"uvicorn did not start within {START_WITHIN} s")
            time.sleep(0.02)
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, auth=(USER, PASSWORD), timeout=10) as api:
            yield Served(base, api)
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


@dataclass
class Seen:
    """What the page did besides rendering: dialogs (an alert() would be one), errors."""

    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@pytest.fixture
def browser(chromium: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            yield launched
        finally:
            launched.close()


def job(served: Served, job_id: str) -> dict[str, Any]:
    response = served.api.get(f"/scheduler/jobs/{job_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_pause_resume_and_run_from_the_dashboard(served: Served, browser: Any) -> None:
    from playwright.sync_api import expect

    started = time.monotonic()
    context = browser.new_context(
        http_credentials={"username": USER, "password": PASSWORD},
        viewport={"width": 1200, "height": 900},
    )
    page = context.new_page()
    seen = Seen()
    page.on("dialog", lambda dialog: (seen.dialogs.append(dialog.message), dialog.dismiss()))
    page.on("pageerror", lambda error: seen.errors.append(str(error)))
    # A console error would also be a request the page made and lost, or a blocked script.
    page.on("console", lambda msg: seen.errors.append(msg.text) if msg.type == "error" else None)
    page.goto(f"{served.base}/scheduler/dashboard")

    report = page.locator('#jobs tr[data-job-id="report"]')
    expect(report).to_contain_text("Every hour", timeout=WAIT_MS)
    expect(report).to_contain_text("Nightly report")
    expect(page.locator("#zone")).to_have_text("Europe/Paris")
    expect(page.locator("#state")).to_contain_text("running")
    expect(page.locator("#workers tbody tr")).to_have_count(1)

    # Pause with a click: the page says so, and the API agrees.
    status = page.get_by_role("status")
    page.get_by_role("button", name="Pause job report").click()
    expect(status).to_have_text("Paused job report.", timeout=WAIT_MS)
    assert job(served, "report")["paused"] is True
    expect(report).to_contain_text("paused")

    # Resume with the keyboard; the button keeps the focus through the refresh after it.
    resume = page.get_by_role("button", name="Resume job report")
    resume.focus()
    page.keyboard.press("Enter")
    expect(status).to_contain_text("Resumed job report; next run", timeout=WAIT_MS)
    assert job(served, "report")["paused"] is False
    pause = page.get_by_role("button", name="Pause job report")
    expect(pause).to_be_focused(timeout=WAIT_MS)

    # Run a job now: its run appears under recent runs, with its worker and its error.
    page.get_by_role("button", name="Run job hostile now").click()
    expect(status).to_contain_text("Started a run of job hostile (run ", timeout=WAIT_MS)
    match = re.fullmatch(r"Started a run of job hostile \(run (.+)\)\.", status.inner_text())
    assert match, status.inner_text()
    run_id = match.group(1)
    run = page.locator(f'#runs tr[data-run-id="{run_id}"]')
    expect(run).to_contain_text("error", timeout=WAIT_MS)
    worker = served.api.get("/scheduler/workers").json()[0]["id"]
    expect(run).to_contain_text(worker)
    error_cell = run.locator('td[data-label="Error"]')
    expect(error_cell).to_have_text(f"RuntimeError: {XSS}")
    runs = served.api.get("/scheduler/runs", params={"job_id": "hostile"}).json()
    assert [r["run_id"] for r in runs] == [run_id]

    # The markup in the error message and in the job's name is text: no element made of it,
    # no script run (an alert would be a dialog).
    assert "&lt;img src=x onerror=alert(1)&gt;" in error_cell.inner_html()
    hostile = page.locator('#jobs tr[data-job-id="hostile"]')
    expect(hostile).to_contain_text(HOSTILE_NAME, timeout=WAIT_MS)
    expect(hostile).to_contain_text(f"RuntimeError: {XSS}")
    assert page.locator("img").count() == 0
    assert page.locator("#jobs b, #runs b").count() == 0
    page.wait_for_timeout(300)  # an onerror handler would have fired by now
    assert seen.dialogs == []

    # On a phone: no sideways scrolling; the buttons are still there to tap.
    page.set_viewport_size({"width": 390, "height": 844})
    expect(page.get_by_role("button", name="Run job report now")).to_be_visible()
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], width

    assert seen.errors == []
    context.close()
    assert time.monotonic() - started < 30


def test_a_failing_action_is_reported(served: Served, browser: Any) -> None:
    """An action the server refuses shows its reason in the result, and the page goes on."""
    from playwright.sync_api import expect

    page = browser.new_page(http_credentials={"username": USER, "password": PASSWORD})
    page.goto(f"{served.base}/scheduler/dashboard")
    pause = page.get_by_role("button", name="Pause job report")
    expect(pause).to_be_visible(timeout=WAIT_MS)
    # The job is removed behind the page's back (another operator): the click is a 404.
    assert served.api.delete("/scheduler/jobs/report", headers={"X-Task-Scheduler": "1"})
    pause.click()
    status = page.get_by_role("status")
    expect(status).to_have_text(
        re.compile(r"Could not pause job report: no job with id 'report'.*\(HTTP 404\)\."),
        timeout=WAIT_MS,
    )
    expect(page.locator('#jobs tr[data-job-id="report"]')).to_have_count(0, timeout=WAIT_MS)
    expect(page.locator('#jobs tr[data-job-id="hostile"]')).to_have_count(1)
    page.close()
