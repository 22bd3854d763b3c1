"""How long claims last on the SQL stores, and how often the engine cleans up after the dead."""

from __future__ import annotations

LEASE_DURATION = 10.0
"""Seconds a process holds a claim on a schedule or job without renewing it, on SQL stores.
Recovery after a process dies takes about this long (APScheduler's default: 30 s)."""
CLEANUP_INTERVAL = 5.0
"""Seconds between the engine's clean-ups on SQL stores (APScheduler's default: 15 min)."""

STATEMENT_TIMEOUT = 5.0
"""Seconds one SQL statement may take on PostgreSQL (asyncpg's ``command_timeout``).

4.0.0a6's ``_begin_transaction`` shields the whole transaction from cancellation, so a
server that stops answering on an open connection (a hung host, dropped packets) hung
every store call - the management API's too - for good. Past this, the statement fails
as a ``TimeoutError``: the API says the store is unavailable, the engine restarts.
"""
VIRTUAL_LEASE = 100 * 365 * 86400.0
"""Seconds of the memory engine's lease under virtual time (tests): one process, and a clock
that jumps; a lease of real length would lapse in one jump while its job merely waits."""
