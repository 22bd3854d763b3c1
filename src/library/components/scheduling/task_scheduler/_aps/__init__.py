"""The APScheduler adapter layer: every module that subclasses, overrides or touches the
internals of APScheduler 4.0.0a6, and nothing else - the engine factory and the memory-store
engine with its own schedule and job loops (``engine``), the indexed memory store
(``memstore``), APScheduler's SQL store made safe for several processes (``sqlstore``) and
its engine, whose runs start at their fire time on a local timer (``sqlengine``, with its job
loop in ``sqljobloop``), where job loops start each job (``jobtasks``), the
in-process event broker (``broker``), the JSON-only serializer and callable references
(``serializer``), APScheduler's exceptions mapped to ours (``errors``), stores and brokers
opened from a URL (``stores``), lease settings (``leases``) and the engine version (``pin``).
Its rule: nothing outside ``_aps/`` imports ``apscheduler._*`` or reads a private attribute
of an APScheduler object (``test_layers.py`` checks the imports); every workaround of an
engine defect lives in one place - here, or in the layer above where the list below says
so - names the defect in a short comment ("trap N" as numbered in
``docs/apscheduler-4.0.0a6.md``, "upstream #N" for APScheduler's issue tracker) and has a
regression test that fails without it. Re-check all of them, and this list, on any engine
upgrade: ``pin.py`` refuses any other version at import
(``test_engine.py::test_the_engine_version_is_pinned``).

Engine defects: where each is closed, and its regression test
-------------------------------------------------------------

Places are ``module:Class.method`` in the ``task_scheduler`` package (``_aps.sqlstore`` is
``_aps/sqlstore.py``); tests are ``file::test`` by the file's base name.

Traps, numbered as in the field notes:

trap 1: ``add_schedule(func)`` / ``add_job(func)`` reset the task's settings
    closed: _backend:SQLBackend._configure_task (a task per job, configured and scheduled by
            its id); _backend:MemoryBackend._task_for (one task for all jobs, by id)
    tests:  test_executor.py::test_max_instances_allows_that_many_at_once
            test_scheduler.py::test_persistent_store_jobs_keep_their_own_engine_task
trap 2: lambdas, closures, partials, bound methods cannot be referenced; ``func=None`` crashes
    a process that did not register the task
    closed: _backend:MemoryBackend._task_for and _aps.engine:run_by_executor (one placeholder
            task; the executor finds each job's callable by schedule id);
            _backend:SQLBackend._configure_task (every process configures every task);
            _reconcile:check_storable (importable by name, else an error at declaration);
            _backend:SQLBackend.adopt via _executor:TaskExecutor.run_job (jobs added elsewhere)
    tests:  test_executor.py::test_any_callable_works_on_the_memory_store
            test_persistence.py::test_unstorable_callables_fail_at_declaration
            test_persistence.py::test_a_job_added_by_another_process_runs_here_too
trap 3: the default executor runs plain ``def`` jobs on the event-loop thread
    closed: _executor:TaskExecutor._call (a worker thread, abandoned on timeout or cancel)
    test:   test_executor.py::test_sync_jobs_run_in_worker_threads
trap 4: no per-job timeout (upstream #1005)
    closed: _executor:TaskExecutor._attempt (``anyio.move_on_after``; outcome ``timed_out``)
    tests:  test_executor.py::test_async_job_past_its_timeout_is_cancelled_and_recorded
            test_executor.py::test_sync_job_past_its_timeout_is_abandoned_and_logged
trap 5: ``stop()`` cancels running async jobs at once, no drain
    closed: _lifecycle:Lifecycle._drain (TaskExecutor.begin_drain, then wait_idle up to
            shutdown_timeout, before ``engine.stop()``)
    test:   test_lifecycle.py::test_shutdown_lets_short_jobs_finish_and_cancels_long_ones
trap 6: a crash of the engine's loops stops it for good
    closed: _lifecycle:Lifecycle._supervise (restart with backoff; ``failed`` if too often)
    tests:  test_lifecycle.py::test_engine_crash_is_restarted_and_reported
            test_lifecycle.py::test_engine_that_keeps_crashing_is_given_up
trap 7: ``max_running_jobs`` queues fires instead of skipping them
    closed: _executor:TaskExecutor.run_job (skip at max_instances, recorded ``skipped``);
            _backend:MemoryBackend.install_all (engine limit off); across processes
            _aps.sqlstore:SQLStore.add_job and SQLStore._enqueue_fires (a fire due at the
            limit is not enqueued)
    tests:  test_executor.py::test_max_instances_skips_fires_instead_of_queueing
            test_sqlstore.py::test_a_fire_due_while_max_instances_run_anywhere_is_skipped
            test_sqlstore.py::test_max_instances_is_a_limit_across_processes
trap 8: ``max_jitter`` delays nothing
    closed: _executor:TaskExecutor._jitter (never past misfire_grace_time)
    tests:  test_executor.py::test_jitter_delays_the_start_within_its_bound
            test_executor.py::test_jitter_never_pushes_a_run_past_misfire_grace_time
trap 9: a paused schedule spins the stock memory store's schedule loop
    closed: _aps.memstore:MemoryStore.next_run_time (paused schedules are in no slot)
    tests:  test_memstore.py::test_paused_schedule_does_not_spin_the_schedule_loop
            test_memstore.py::test_the_stock_store_still_spins (fails once upstream fixes it)
trap 10: the stock memory store keeps every removed schedule
    closed: _aps.memstore:MemoryStore.remove_schedules (nothing else indexes schedules)
    test:   test_memstore.py::test_removed_schedules_leave_nothing_behind
trap 11: ``do_nothing`` keeps an old definition silently; ``replace`` fires an interval at once
    closed: _backend:_EngineBackend._schedule (default policy ``exception``: duplicate ids
            fail); _backend:SQLBackend.install_all (a changed job is replaced with a fresh
            trigger from now)
    tests:  test_scheduler.py::test_duplicate_id_at_run_time_keeps_the_old_definition
            test_scheduler.py::test_restart_does_not_fire_interval_jobs_at_once
            test_persistence.py::test_changed_definition_is_updated_without_an_extra_run
trap 12: ``get_job_result()`` pops; results are kept only with an expiration time
    closed: avoided - engine results are never read; _executor:TaskExecutor._finish records
            every run in the job's own history
    test:   no dedicated test
trap 13: an unknown ``job_executor`` name leaves the job acquired for good
    closed: avoided - _aps.engine:make_engine registers one executor (EXECUTOR_NAME) and every
            task is configured with it (_backend:MemoryBackend.install_all,
            _backend:SQLBackend._configure_task); _aps.engine:MemoryEngine._run_job keeps the
            stock behaviour
    test:   no dedicated test
trap 14: ``SerializationError`` has an empty message; the reason is in ``__cause__``
    closed: _aps.errors:engine_errors
    test:   test_aps_boundary.py::test_a_serialization_error_names_the_job_and_its_reason
trap 15: naive datetimes and ``CronTrigger`` use the machine's zone; fixed offsets not stored
    closed: _triggers:as_aware (naive means the configured zone); _triggers:CronSpec._make
            and _cron:CronTrigger (an IANA zone name, stored as a name)
    tests:  test_scheduler.py::test_naive_datetimes_are_read_in_the_configured_timezone
            test_triggers.py::test_interval_naive_start_is_read_in_the_configured_zone
            test_scheduler.py::test_cron_job_runs_in_the_configured_timezone
trap 16: the SQL store needs ``sniffio`` and ``greenlet`` without declaring them
    closed: pyproject.toml extras ``sqlite`` and ``postgres`` (``sqlalchemy[asyncio]``,
            ``sniffio``); _aps.stores:require_modules (a clear MissingDependencyError)
    test:   test_aps_boundary.py::test_a_missing_store_dependency_names_the_extra

Several processes on one SQL store (upstream issues, and those reproduced in the field notes):

upstream #1110: a dead holder's running slot leaks for good; its job is re-acquired and run
    twice; a late or second release decrements the count again
    closed: _aps.sqlstore:SQLStore._release_job and SQLStore._give_back_slot (a slot comes
            back only with the row that held it); SQLStore._sweep_abandoned_jobs (a dead
            holder's job is released ``abandoned`` once, before anyone re-acquires it)
    tests:  test_sqlstore.py::test_a_running_slot_comes_back_exactly_once
            test_sqlstore.py::test_jobs_whose_lease_ran_out_are_abandoned_once_and_free_their_slot
            test_multiprocess.py::test_kill_9_of_a_process_running_a_job
upstream #1116: a loop blocked past the lease re-runs its own job, then crashes (KeyError)
    closed: _aps.sqlstore:SQLStore._sweep_abandoned_jobs (a job still running here is
            renewed, never abandoned)
    test:   test_sqlstore.py::test_a_job_still_running_here_is_not_taken_again_after_a_blocked_loop
a dead process is noticed only when its leases run out (30 s; slots after 15 min cleanup)
    closed: _aps.leases:LEASE_DURATION and CLEANUP_INTERVAL (set by _backend:SQLBackend.open);
            _aps.sqlstore:SQLStore._announce (a liveness advisory lock per process) and
            SQLStore._free_dead_claims
    tests:  test_sqlstore.py::test_jobs_of_a_process_that_is_gone_are_abandoned_within_a_grace
            test_multiprocess.py::test_kill_9_of_a_process_running_a_job
a connection blip (sessions cut, a restarted server) made a live process look dead: peers
swept its runs ``abandoned`` (and retried them) on one look at its missing liveness lock; a
statement on a cut connection (a ``DBAPIError``, not retried) crashed the engine, cancelling
its runs; the restarted engine's ``reap_abandoned_jobs`` released its own acquired jobs
``abandoned`` - never-started ones lost, ended ones recorded as never finished
    closed: _aps.sqlstore:SQLStore, the "connection blips" block: SQLStore._retry (a cut
            connection is retried), SQLStore._keep_liveness (the lock is taken again at
            once; leases of jobs in hand renewed every second), SQLStore._gone_holders (a
            lock missing for HOLDER_GRACE), SQLStore.reap_abandoned_jobs with
            SQLStore.release_job (a release that could not be written is written at the
            restart; never-started jobs are queued again); _aps.stores:open_sql_store (the
            lock lives as long as the store, not the engine); on trio the same code, with
            ThreadedSQLStore._liveness_lost (psycopg's session seen closed) and
            sqlstore:_disconnected (psycopg's refused connect, asyncpg's OSError)
    tests:  test_blips.py::test_cut_sessions_of_a_live_scheduler_leave_its_runs_alone
            test_blips.py::test_a_short_outage_while_a_job_runs_keeps_its_real_outcome
            (both on asyncio and trio)
            test_sqlstore.py::test_a_cut_liveness_session_is_taken_again_at_once
            test_sqlstore.py::test_leases_of_jobs_in_hand_are_renewed_every_second
            test_sqlstore.py::
            test_jobs_left_by_the_previous_engine_are_settled_not_abandoned
            test_sqlstore.py::test_jobs_of_a_process_that_is_gone_are_abandoned_within_a_grace
a transaction PostgreSQL rolls back for a deadlock with another is not retried: under load,
a batch of releases failed so, its jobs stayed acquired without renewal, and another process
ran them again once their leases lapsed (92-100 duplicated fires at 3,000 fires/s)
    closed: _aps.sqlstore:SQLStore._retry with sqlstore:_worth_retrying (deadlock and
            serialization failures are run again, as cut connections are)
    test:   test_conflicts.py::test_a_transaction_rolled_back_for_a_deadlock_is_run_again
processes starting together on an empty database race in ``create_all`` / CREATE SCHEMA
    closed: _aps.sqlstore:SQLStore._create_metadata and _aps.sqlstore:ensure_schema
            (``pg_advisory_xact_lock``)
    test:   test_sqlstore.py::test_stores_starting_together_on_an_empty_database_all_start
a dead process's schedules are invisible to ``get_next_schedule_run_time``
    closed: _aps.sqlstore:SQLStore.get_next_schedule_run_time (also wakes for claims)
    test:   test_sqlstore.py::test_peers_wake_within_a_sweep_while_another_process_holds_a_claim
``stop()`` leaves schedules claimed and jobs acquired (and a stopping process takes new jobs)
    closed: _aps.sqlstore:SQLStore.stop_taking_jobs, SQLStore.stop_claiming and
            SQLStore.release_claims (called by _lifecycle:Lifecycle._drain and
            Lifecycle._release_claims through the backend)
    tests:  test_sqlstore.py::test_release_claims_gives_back_unstarted_jobs_and_schedules
            test_sqlstore.py::test_a_draining_process_leaves_new_fires_to_the_others
a fire is enqueued twice when a process dies before its schedule is advanced
    closed: _aps.sqlstore:SQLStore.add_job (a ledger row per fire, in the job's transaction;
            a batch's fires in the transaction that advances its schedules:
            SQLStore.release_schedules, SQLStore._enqueue_fires); SQLStore._prune_fired
    tests:  test_sqlstore.py::test_a_fire_is_enqueued_once_even_if_its_schedule_was_not_advanced
            test_sqlstore.py::test_a_batchs_fires_are_enqueued_with_its_release
            test_sqlstore.py::test_the_ledger_forgets_fires_its_schedule_moved_past
the SQL store refuses trio (its ``start()`` checks for asyncio, although it drives a
synchronous engine through anyio's threads, which trio runs), and those thread calls share
anyio's default limiter, and check connections out of the pool inside a thread (a deadlock
once every thread waits for a connection)
    closed: _aps.threadstore:ThreadedSQLStore (the same start without the check; its own
            transaction slots and thread limiter, as many as connections; rows fetched in the
            thread) on stdlib sqlite3 and psycopg 3, opened by _aps.stores:open_sql_store;
            wake-ups across processes: _aps.wakeups (LISTEN/NOTIFY on a thread, or a poll)
    tests:  every test of tests/sql runs on trio too (test_sqlstore.py, test_persistence.py,
            test_history_store.py, test_cluster.py); test_multiprocess.py::
            test_three_processes_starting_together_on_an_empty_database_run_each_fire_once
            and test_kill_9_of_a_process_running_a_job under trio.run,
            test_rolling_restart_of_all_processes_keeps_fires_once_and_pauses[trio] (asyncio
            processes replaced by trio ones); test_trio_stores.py (the poll, a reconnect)

Found later, while building on it:

the metadata validator rejects any nested ``None``
    closed: _reconcile:as_metadata (the job definition as one JSON string)
    test:   test_definitions.py::test_a_definition_full_of_none_is_stored_as_one_string
``AsyncpgEventBroker`` drops every NOTIFY under plain asyncio once sniffio is installed
    closed: _aps.stores:open_sql_store (names the async library for the broker's callbacks)
    test:   no dedicated test (test_multiprocess.py's workers run on plain asyncio)
``SQLAlchemyDataStore`` replace clears a live claim held by another process
    closed: _aps.sqlstore:SQLStore.add_schedule (waits for the claim; the old last fire is
            not fired again)
    test:   no dedicated test (test_multiprocess.py::
            test_rolling_restart_of_all_processes_keeps_fires_once_and_pauses pauses - a
            replace - while peers hold claims)
the schedule loop ignores a ``ScheduleUpdated`` without a next fire time
    closed: _aps.sqlstore:SQLStore._free_dead_claims and SQLStore._release_schedule_claims
            (freed claims are announced with their due time)
    test:   test_sqlstore.py::
            test_schedules_claimed_by_a_process_that_is_gone_are_freed_within_a_grace
a decorator runs before its module binds the name ("importable by name" only at start)
    closed: _reconcile:check_storable with ``resolve=True``, called by
            _backend:SQLBackend.install_all
    test:   test_definitions.py::test_a_decorated_function_is_checked_by_name_only_at_start

coalescing covers only the fires one batch finds due: fires left queued unstarted (by a
stopping process) ran besides the backlog's catch-up run after a restart
    closed: _aps.sqlstore:SQLStore._coalesce_queue and SQLStore._enqueue_fires (a new fire
            supersedes queued ones) and
            SQLStore._drop_superseded_fires (at start, before the engine's loops)
    tests:  test_sqlstore.py::
            test_a_coalescing_schedules_new_fire_supersedes_its_unstarted_queued_ones
            test_persistence.py::
            test_fires_left_queued_by_a_stop_and_the_backlog_make_one_catch_up_run
SQLite shared between processes (upstream #959, #1032): duplicated fires, stalled jobs, and
running counts left in the file that throttled every later start
    closed: _aps.stores:hold_sqlite_file (a file lock: the second process fails at start,
            naming the first); _aps.sqlstore:SQLStore._recount_running (counts repaired at
            start)
    tests:  test_sqlite_one_process.py::test_a_second_process_on_one_sqlite_file_is_refused
            test_sqlite_one_process.py::
            test_running_counts_left_in_the_file_are_repaired_at_start
a row it cannot load (corrupted, written by hand or by an older release) stops the engine:
``_deserialize_schedules``/``_deserialize_jobs`` catch only SerializationError (not
DeserializationError, nor a date's ValueError), so one bad schedule failed every
``get_schedules()`` - start()'s reconcile - and a dead process's bad run failed the sweep;
``acquire_jobs`` crashed on a fire row's ValueError (year 0) and silently deleted one it
could not deserialize
    closed: _aps.sqlstore:SQLStore._deserialize_schedules and SQLStore._deserialize_jobs
            (skipped, logged once, listed in ``SQLStore.unloadable``);
            SQLStore.acquire_jobs and SQLStore._release_job, through SQLStore._park_job (a
            queued fire is parked, never deleted, and tried again at the next start; a
            dead process's run is released at once); SQLStore.remove_task (``remove_job``
            removes them); reported as ``unloadable_jobs`` by
            _scheduler:TaskScheduler.get_status
    tests:  test_bad_rows.py::test_a_schedule_row_that_cannot_load_is_reported_and_skipped
            test_bad_rows.py::
            test_a_queued_fire_that_cannot_load_is_reported_and_left_in_the_store
            test_bad_rows.py::
            test_a_queued_fire_with_a_fire_time_out_of_range_does_not_crash_the_engine
            test_bad_rows.py::
            test_a_next_fire_time_past_year_9999_does_not_stall_the_other_schedules
            test_bad_rows.py::
            test_a_run_of_a_dead_process_that_cannot_load_does_not_crash_the_sweep
            test_sqlstore.py::
            test_a_dead_processs_run_that_cannot_load_stays_cleared_after_a_racing_sweep
            (the sweep's read of such a run, racing the job loop that released it, no
            longer lists it again: SQLStore._deleted_rows)
    not closed: on PostgreSQL, a timestamp outside years 1..9999 (only SQL can write one)
            fails in asyncpg for every query that reads its row
SQLite: ``acquire_jobs`` reads the queue before its write transaction (no row locks): a fire
deleted in between (superseded by a coalescing fire) was returned and run, and its task's
running count kept for good - every later fire of a max_instances job was skipped
    closed: _aps.sqlstore:SQLStore._drop_vanished (called by SQLStore.acquire_jobs)
    test:   test_sqlstore.py::
            test_a_fire_deleted_while_it_is_being_acquired_is_not_run_nor_holds_a_slot
``_begin_transaction`` shields the whole transaction: with a server that stops answering on
open connections, every store call (the management API's too) hung for good
    closed: _aps.leases:STATEMENT_TIMEOUT, set by _aps.stores:open_sql_store (asyncpg's
            ``command_timeout``); on trio (psycopg has no such timeout)
            _aps.threadstore:call_bounded, for every statement of ThreadedSQLStore and the
            wake-ups' NOTIFY (waits as long, then shuts the connection's socket down and
            raises the same TimeoutError)
    test:   test_outage.py::test_a_frozen_server_bounds_every_call_and_the_scheduler_recovers
            (asyncio and trio); test_trio_stores.py::
            test_a_wake_up_sent_to_a_frozen_server_gives_up_as_a_statement_does

No marked workaround: the 8000-byte NOTIFY payload limit (our executor records a job's
``Exception`` itself and returns normally: no traceback reaches a ``JobReleased``). Ours,
closed since: the sweep of a dead process's job writes the job-result row the stock
``cleanup()`` writes (APScheduler's own data-store test suite, run against our stores, showed
it missing; test_sqlstore.py::test_a_swept_job_leaves_its_result_as_the_stock_cleanup_does).
"""

from __future__ import annotations
