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
