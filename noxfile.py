"""Every command a developer or CI runs.

``nox`` runs tests, lint, typecheck, examples and package on the Python that nox itself runs
under (README's "Set up" runs it from the checkout's ``.venv``); ``nox -s tests_versions`` runs
the test suite on each of Python 3.10-3.13 found on the machine, skipping the missing ones.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import tempfile
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "examples", "package"]
nox.options.reuse_existing_virtualenvs = True
# Only tests_versions names interpreters; one not on the machine is skipped, not failed (also
# under CI=true, where nox would otherwise fail on it). The default sessions use nox's own.
nox.options.error_on_missing_interpreters = False

SUPPORTED_PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
LINT_PATHS = ["src", "tests", "examples", "bench", "docs", "noxfile.py"]
PACKAGE = "library.components.scheduling.task_scheduler"
DEBIAN_CHROMIUM = "/usr/bin/chromium"
CHROMIUM = os.environ.get("TASK_SCHEDULER_CHROMIUM", DEBIAN_CHROMIUM)
"""The browser tests/browser drive (through Playwright, which the test extra installs)."""
XDIST = ["-n", "2", "--dist", "loadgroup"]
"""Two pytest-xdist workers, one per core here; tests/conftest.py keeps the tests that start
processes or own a PostgreSQL cluster on one worker, one after another."""


def ensure_chromium(session: nox.Session) -> None:
    """Install Debian's Chromium for the browser tests when it is missing and we are root on a
    machine with apt-get (as in CI); otherwise say why those tests will be skipped (locally)
    or fail (under CI)."""
    if os.path.exists(CHROMIUM):
        return
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    if not (root and shutil.which("apt-get") and CHROMIUM == DEBIAN_CHROMIUM):
        session.warn(f"no Chromium at {CHROMIUM}: install it (apt-get install -y chromium)")
        return
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", "-qq", external=True, env=env)
    session.run("apt-get", "install", "-y", "-qq", "chromium", external=True, env=env)


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, on asyncio and trio, browser tests included, on two workers."""
    session.install("-e", ".[test]")
    ensure_chromium(session)
    session.run("pytest", *XDIST, *session.posargs)


@nox.session(python=SUPPORTED_PYTHONS)
def tests_versions(session: nox.Session) -> None:
    """The test suite on each supported Python found here (not a default session)."""
    session.install("-e", ".[test]")
    ensure_chromium(session)
    session.run("pytest", *XDIST, *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint rules and formatting."""
    session.install("ruff==0.17.6")
    session.run("ruff", "check", *LINT_PATHS)
    session.run("ruff", "format", "--check", *LINT_PATHS)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the library."""
    session.install("-e", ".[trio,sqlite,postgres,redis,metrics,otel,cli]", "mypy==2.4.1")
    session.run("mypy", "--strict", "-p", PACKAGE)


@nox.session
def examples(session: nox.Session) -> None:
    """Smoke-run every example: each starts, fires its jobs, and stops by itself."""
    session.install("-e", ".[test]")
    session.run("python", "examples/trio_app.py", "--smoke")
    with tempfile.TemporaryDirectory(prefix="fastapi-task-scheduler-trio-") as tmp:
        store = f"sqlite:///{Path(tmp) / 'trio_app.db'}"
        for _ in range(2):  # the second start finds the first one's schedules
            session.run("python", "examples/trio_app.py", "--smoke", "--store", store)
    session.run("python", "examples/fastapi_app.py", "--smoke")


@nox.session
def package(session: nox.Session) -> None:
    """``python -m build``, then install the wheel in a fresh venv and import it elsewhere."""
    session.install("build")
    with tempfile.TemporaryDirectory(prefix="fastapi-task-scheduler-package-") as tmp:
        dist = Path(tmp) / "dist"
        session.run("python", "-m", "build", "--outdir", str(dist))
        wheels = glob.glob(str(dist / "*.whl"))
        if len(wheels) != 1:
            session.error(f"expected one wheel in {dist}, found {wheels}")
        venv = Path(tmp) / "venv"
        session.run("python", "-m", "venv", str(venv))
        bindir = "Scripts" if sys.platform == "win32" else "bin"
        python = str(venv / bindir / "python")
        session.run(python, "-m", "pip", "install", "-q", wheels[0], external=True)
        # -I: no PYTHONPATH, no user site, no script or current directory on sys.path; run in
        # the temporary directory, so the only copy of the package it can find is the wheel's.
        check = (
            f"import {PACKAGE} as pkg\n"
            "from pathlib import Path\n"
            "import sys\n"
            f"from {PACKAGE} import TaskScheduler\n"
            "where = Path(pkg.__file__).resolve()\n"
            "assert Path(sys.prefix).resolve() in where.parents, where\n"
            # The dashboard's files are package data: the router serves them from the wheel.
            f"from {PACKAGE}._dashboard import assets, page\n"
            "assert len(assets()) == 2 and b'<html' in page('UTC').body, assets()\n"
            "print(TaskScheduler, 'from', where)\n"
        )
        with session.chdir(tmp):
            session.run(python, "-I", "-c", check, external=True)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmark vs raw APScheduler 4 and APScheduler 3.11: ``nox -s bench [-- --quick]``."""
    session.install("-e", ".[trio]")
    # APScheduler 3 has the same import name as 4: it gets a venv of its own, reused across runs.
    aps3 = Path(session.create_tmp()) / "aps3"
    python = aps3 / "bin" / "python"
    if not python.exists():
        session.run("python", "-m", "venv", str(aps3))
    session.run(str(python), "-m", "pip", "install", "-q", "apscheduler>=3.11,<4", external=True)
    session.run("python", "bench/run.py", "--aps3-python", str(python), *session.posargs)


@nox.session
def bench_pg(session: nox.Session) -> None:
    """PostgreSQL, 1 and 3 processes (needs a server): ``nox -s bench_pg [-- --quick]``."""
    session.install("-e", ".[postgres]")
    session.run("python", "bench/pg.py", *session.posargs)
