"""Every command a developer or CI runs: ``nox`` runs tests, lint, typecheck and examples."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "examples"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

PYTHON = "3.11"
LINT_PATHS = ["src", "tests", "examples", "bench", "noxfile.py"]


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole test suite, on asyncio and trio."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff: lint rules and formatting."""
    session.install("ruff==0.17.6")
    session.run("ruff", "check", *LINT_PATHS)
    session.run("ruff", "format", "--check", *LINT_PATHS)


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the library."""
    session.install("-e", ".[trio,sqlite,postgres,redis]", "mypy==2.4.1")
    session.run("mypy", "--strict", "-p", "library.components.scheduling.task_scheduler")


@nox.session(python=PYTHON)
def examples(session: nox.Session) -> None:
    """Smoke-run every example: each starts, fires its jobs, and stops by itself."""
    session.install("-e", ".[test]")
    session.run("python", "examples/trio_app.py", "--smoke")
    session.run("python", "examples/fastapi_app.py", "--smoke")


@nox.session(python=PYTHON)
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


@nox.session(python=PYTHON)
def bench_pg(session: nox.Session) -> None:
    """PostgreSQL, 1 and 3 processes (needs a server): ``nox -s bench_pg [-- --quick]``."""
    session.install("-e", ".[postgres]")
    session.run("python", "bench/pg.py", *session.posargs)
