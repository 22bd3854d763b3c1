"""Browser tests: Debian's Chromium (``apt-get install -y chromium``), headless, driven by
Playwright's Python package (the ``test`` extra installs it; Playwright's own browser download
is not used). Without either, the tests are skipped locally, with the reason, and fail under
CI; the nox ``tests`` session installs Chromium when it runs as root on Debian."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("TASK_SCHEDULER_CHROMIUM", "/usr/bin/chromium"))
"""The browser binary; ``TASK_SCHEDULER_CHROMIUM`` names another (e.g. on macOS)."""


def require_browser() -> str:
    """The Chromium executable; skip locally when it or Playwright is missing, fail under CI."""
    if importlib.util.find_spec("playwright") is None:
        problem = "Playwright's Python package is not installed (pip install -e '.[test]')"
    elif not CHROMIUM.is_file():
        problem = f"Chromium is not installed at {CHROMIUM} (apt-get install -y chromium)"
    else:
        return str(CHROMIUM)
    if os.environ.get("CI"):
        pytest.fail(f"{problem}, and CI needs it")
    pytest.skip(problem)


@pytest.fixture(scope="session")
def chromium() -> str:
    return require_browser()
