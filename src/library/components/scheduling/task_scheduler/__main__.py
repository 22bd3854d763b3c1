"""``python -m library.components.scheduling.task_scheduler``: the ``task-scheduler`` command
(also installed as a console script by the ``cli`` extra)."""

from __future__ import annotations

import sys

from ._errors import MissingDependencyError


def main() -> None:
    """Run the command, exit with its code (2 if the ``cli`` extra is not installed)."""
    try:
        from ._cli import main as run
    except MissingDependencyError as exc:
        print(f"task-scheduler: error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(run())


if __name__ == "__main__":
    main()
