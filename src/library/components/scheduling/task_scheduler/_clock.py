"""The package's one clock: aware UTC datetimes (converted to the configured zone at the edge)."""

from __future__ import annotations

from datetime import datetime, timezone

UTC = timezone.utc


def utcnow() -> datetime:
    """Now, as an aware UTC datetime."""
    return datetime.now(UTC)
