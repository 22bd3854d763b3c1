"""The examples as a user runs them: Ctrl-C stops them cleanly, with the stop logged."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

EXAMPLES = Path(__file__).parents[2] / "examples"


def test_ctrl_c_stops_the_trio_example_cleanly() -> None:
    """Before: a 40-line ``BaseExceptionGroup: Exceptions from Trio nursery`` traceback, and
    "task scheduler stopped" never logged."""
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "trio_app.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Started from a shell without job control, a child inherits SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            lines.append(line)
            if "task scheduler started" in line or not line:
                break
        assert any("task scheduler started" in line for line in lines), lines
        time.sleep(1.5)  # some runs, then Ctrl-C
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=30)
    finally:
        process.kill()
        process.wait()
    output = "".join(lines) + rest
    assert process.returncode == 0, output
    assert "task scheduler stopped" in output
    assert "Traceback" not in output and "ExceptionGroup" not in output


OVERRIDE_IN_A_TEST = """
import sys
sys.path.insert(0, sys.argv[1])
from fastapi.testclient import TestClient
import fastapi_app

closed = []

async def fake_db():
    yield {"open_orders": 42}
    closed.append(True)

fastapi_app.app.dependency_overrides[fastapi_app.get_report_db] = fake_db
with TestClient(fastapi_app.app) as client:
    run = client.post(
        "/scheduler/jobs/weekday_report/run?wait=true",
        headers={"X-API-Key": fastapi_app.API_KEY, "X-Task-Scheduler": "1"},
    )
assert run.json()["outcome"] == "success", run.text
assert closed == [True], closed
"""


def test_the_fastapi_examples_job_dependency_is_replaced_as_an_endpoints() -> None:
    """A test of the example app overrides weekday_report's database through
    app.dependency_overrides, as it would an endpoint's (in a subprocess: the example
    configures logging when imported)."""
    result = subprocess.run(
        [sys.executable, "-c", OVERRIDE_IN_A_TEST, str(EXAMPLES)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Report: 42 open orders, for ops@example.com" in result.stdout, result.stdout
