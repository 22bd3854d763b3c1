"""The router's tests. schemathesis needs Python 3.11+ (the ``test`` extra installs it only
there, see pyproject.toml): without it, the fuzz test is not collected and the rest runs."""

from __future__ import annotations

import importlib.util

collect_ignore_glob = (
    ["test_fastapi_fuzz.py"] if importlib.util.find_spec("schemathesis") is None else []
)
