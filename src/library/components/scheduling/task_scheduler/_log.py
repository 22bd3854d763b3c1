"""The package's one logger (and the engine's child logger, quiet by default)."""

from __future__ import annotations

import logging

logger = logging.getLogger("library.components.scheduling.task_scheduler")

engine_logger = logger.getChild("engine")
if engine_logger.level == logging.NOTSET:
    # APScheduler logs every run at INFO; ours already does, once, with the outcome.
    engine_logger.setLevel(logging.WARNING)
