"""The router in a real uvicorn process on loopback: serve, then stop on a signal and drain."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from library.components.scheduling.task_scheduler.fastapi import CSRF_HEADER

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

STARTUP_TIMEOUT = 30.0
EXIT_TIMEOUT = 15.0
CSRF = {CSRF_HEADER: "1"}
"""An API client's POSTs carry the CSRF header."""
UVICORN_ARGS = ["app_module:app", "--host", "127.0.0.1", "--port", "0"]

APP = textwrap.dedent(
    """
    import logging

    import anyio
    from fastapi import FastAPI

    from library.components.scheduling.task_scheduler import SchedulerConfig, TaskScheduler
    from library.components.scheduling.task_scheduler.fastapi import create_scheduler_router

    # uvicorn configures only its own loggers: make the scheduler's INFO lines visible.
    logging.basicConfig(
        level=logging.INFO, format="%(name)s %(levelname)s %(message)s", force=True
    )
    scheduler = TaskScheduler(SchedulerConfig(shutdown_timeout=5))

    @scheduler.interval(hours=1, id="tick")
    async def tick() -> None:
        pass

    @scheduler.interval(hours=1, id="slow")
    async def slow() -> None:
        await anyio.sleep(1)
        logging.getLogger("app").info("slow job finished")

    app = FastAPI(lifespan=scheduler.lifespan)
    app.include_router(create_scheduler_router())
    """
)


class Server:
    """A uvicorn child process whose combined output is collected by a thread."""

    def __init__(self, app_dir: Path) -> None:
        env = dict(os.environ)
        # The child imports the package exactly as this process does (src tree or installed).
        env["PYTHONPATH"] = os.pathsep.join([str(app_dir), *filter(None, sys.path)])
        env["PYTHONUNBUFFERED"] = "1"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", *UVICORN_ARGS],
            cwd=app_dir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_ready(self) -> str:
        """The base URL, once uvicorn listens (it reports the port it got for --port 0)."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            match = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", self.output)
            if match:
                return match.group(1)
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"uvicorn did not start:\n{self.output}")

    def stop(self, signum: signal.Signals) -> int:
        self.process.send_signal(signum)
        try:
            code = self.process.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"uvicorn still running {EXIT_TIMEOUT} s after {signum.name}:\n{self.output}"
            ) from None
        self.reader.join(5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    (tmp_path / "app_module.py").write_text(APP)
    server = Server(tmp_path)
    try:
        yield server
    finally:
        server.kill()


def assert_clean_exit(code: int, signum: signal.Signals, output: str) -> None:
    # After its graceful shutdown uvicorn re-raises the signal it caught (so a supervisor
    # sees why it ended): dying of that very signal is a clean exit too.
    assert code in (0, -signum), output
    assert "task scheduler stopped" in output
    assert "Application shutdown complete" in output
    assert "Finished server process" in output
    assert "Traceback" not in output and "ERROR" not in output and "cancelling" not in output


def test_serve_then_stop_on_sigint(server: Server) -> None:
    base_url = server.wait_ready()
    with httpx.Client(base_url=base_url, timeout=10, headers=CSRF) as client:
        jobs = client.get("/scheduler/jobs")
        assert jobs.status_code == 200
        assert sorted(job["id"] for job in jobs.json()) == ["slow", "tick"]
        run = client.post("/scheduler/jobs/tick/run", params={"wait": True})
        assert run.status_code == 200 and run.json()["outcome"] == "success"
        health = client.get("/scheduler/health")
        assert (health.status_code, health.json()) == (200, {"status": "ok", "stale_jobs": 0})
        assert client.get("/scheduler/status").json()["state"] == "running"
    code = server.stop(signal.SIGINT)
    assert_clean_exit(code, signal.SIGINT, server.output)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_job_running_at_shutdown_finishes(server: Server, signum: signal.Signals) -> None:
    base_url = server.wait_ready()
    with httpx.Client(base_url=base_url, timeout=10, headers=CSRF) as client:
        accepted = client.post("/scheduler/jobs/slow/run")
        assert accepted.status_code == 202
        run_id = accepted.json()["run_id"]
    started = time.monotonic()
    code = server.stop(signum)
    output = server.output
    assert_clean_exit(code, signum, output)
    # The 1 s job, shorter than shutdown_timeout=5, ran to the end before the scheduler stopped.
    assert time.monotonic() - started < EXIT_TIMEOUT
    finished = output.index("slow job finished")
    assert f"job 'slow' run {run_id} (attempt 1) success" in output
    assert finished < output.index("task scheduler stopped")


PERCENT_IDS = ["%2F", "a%2Fb", "100%ab", "%25", "50%"]
"""Valid ids with %-escapes in them: Starlette's TestClient decodes a path twice, so these are
only tested through a real server, which decodes it once."""


def test_ids_with_percent_escapes_are_reachable(tmp_path: Path) -> None:
    declared = "".join(
        f"scheduler.interval(hours=1, id={job_id!r})(tick)\n" for job_id in PERCENT_IDS
    )
    (tmp_path / "app_module.py").write_text(APP + declared)
    server = Server(tmp_path)
    try:
        base_url = server.wait_ready()
        with httpx.Client(base_url=base_url, timeout=10, headers=CSRF) as client:
            for job_id in PERCENT_IDS:
                url = f"/scheduler/jobs/{quote(job_id, safe='')}"
                assert client.get(url).json()["id"] == job_id
                assert client.post(f"{url}/pause").json()["paused"] is True
                assert client.post(f"{url}/resume").json()["paused"] is False
                run = client.post(f"{url}/run", params={"wait": True})
                assert run.status_code == 200 and run.json()["job_id"] == job_id
                assert client.get(f"{url}/runs").json()[0]["job_id"] == job_id
                assert len(client.get(f"{url}/preview", params={"count": 2}).json()) == 2
                missing = client.get(f"{url}~")
                assert missing.status_code == 404
                assert missing.json()["detail"].startswith(f"no job with id {job_id + '~'!r}")
    finally:
        server.kill()
