"""The one APScheduler version our engine internals (broker, store, scheduler loops) are
written against. They replace parts of 4.0.0a6 and must be re-checked on any upgrade."""

from __future__ import annotations

from importlib.metadata import version

from .._errors import MissingDependencyError

ENGINE_VERSION = "4.0.0a6"


def require_engine_version() -> None:
    """Refuse to import against any other APScheduler: our overrides follow its internals."""
    found = version("apscheduler")
    if found != ENGINE_VERSION:
        raise MissingDependencyError(
            f"fastapi-task-scheduler's engine needs apscheduler=={ENGINE_VERSION} exactly "
            f"(its scheduler loops, memory store and event broker are replaced), found {found}"
        )
