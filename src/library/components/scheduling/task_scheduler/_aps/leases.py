"""How long claims last on the SQL stores, and how often the engine cleans up after the dead."""

from __future__ import annotations

LEASE_DURATION = 10.0
"""Seconds a process holds a claim on a schedule or job without renewing it, on SQL stores.
Recovery after a process dies takes about this long (APScheduler's default: 30 s)."""
CLEANUP_INTERVAL = 5.0
"""Seconds between the engine's clean-ups on SQL stores (APScheduler's default: 15 min)."""
VIRTUAL_LEASE = 100 * 365 * 86400.0
"""Seconds of the memory engine's lease under virtual time (tests): one process, and a clock
that jumps; a lease of real length would lapse in one jump while its job merely waits."""
