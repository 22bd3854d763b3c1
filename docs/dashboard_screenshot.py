"""Make docs/dashboard.png, the README's picture of the dashboard.

    python docs/dashboard_screenshot.py [--output docs/dashboard.png] [--width 1100]

Serves a small demo app with uvicorn on a free loopback port, runs a few of its jobs, and
photographs ``/scheduler/dashboard`` with headless Chromium through Playwright (the same
browser and driver as tests/browser: ``pip install -e '.[test]'``, ``apt-get install -y
chromium``; ``TASK_SCHEDULER_CHROMIUM`` names another Chromium).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import threading
import time
from pathlib import Path

import anyio
import uvicorn
from fastapi import FastAPI
from playwright.sync_api import expect, sync_playwright

from library.components.scheduling.task_scheduler import SchedulerConfig, TaskScheduler
from library.components.scheduling.task_scheduler.fastapi import create_scheduler_router

CHROMIUM = os.environ.get("TASK_SCHEDULER_CHROMIUM", "/usr/bin/chromium")


def demo_app() -> FastAPI:
    scheduler = TaskScheduler(SchedulerConfig(timezone="Europe/Paris"))

    @scheduler.interval(seconds=30, id="heartbeat", name="Heartbeat")
    async def heartbeat() -> None:
        pass

    @scheduler.cron("0 2 * * *", id="nightly-report", name="Nightly report")
    async def nightly_report() -> None:
        await anyio.sleep(0.4)

    @scheduler.interval(minutes=15, id="sync-invoices", name="Sync invoices", retries=1)
    async def sync_invoices() -> None:
        raise ConnectionError("billing API answered 502 Bad Gateway")

    @scheduler.cron("0 9 * * mon-fri", id="weekday-digest", name="Weekday digest", paused=True)
    async def weekday_digest() -> None:
        pass

    async def warm_up() -> None:  # a few runs for the tables to show
        for job_id in ("heartbeat", "nightly-report", "sync-invoices", "heartbeat"):
            await scheduler.run_job(job_id, wait=True)

    app = FastAPI(lifespan=scheduler.lifespan)
    app.include_router(create_scheduler_router())

    @app.post("/warm-up", include_in_schema=False)
    async def run_warm_up() -> None:
        await warm_up()

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "dashboard.png")
    parser.add_argument("--width", type=int, default=1100)
    args = parser.parse_args()
    logging.getLogger("library.components.scheduling.task_scheduler").setLevel(logging.CRITICAL)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(demo_app(), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise SystemExit("uvicorn did not start")
            time.sleep(0.02)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM)
            page = browser.new_page(viewport={"width": args.width, "height": 900})
            page.request.post(f"{base}/warm-up")
            page.goto(f"{base}/scheduler/dashboard")
            expect(page.locator("#runs tbody tr")).to_have_count(5, timeout=10_000)
            page.get_by_role("button", name="Pause job heartbeat").click()
            expect(page.get_by_role("status")).to_have_text("Paused job heartbeat.")
            page.mouse.move(0, 0)  # no hover highlight in the picture
            page.screenshot(path=str(args.output), full_page=True)
            browser.close()
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
    print("wrote", args.output)


if __name__ == "__main__":
    main()
