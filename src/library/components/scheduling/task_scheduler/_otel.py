"""OpenTelemetry: a span per run attempt, and run counters and histograms, through the API only.

Needs ``opentelemetry-api`` (the ``otel`` extra); the app brings the SDK and its exporters and
sets the global providers. The scheduler looks for them when it starts (:func:`observer`):
with the API missing, or neither a tracer nor a meter provider set, it gets no observer and
nothing is done per run.

Each attempt this process runs is a span ``task_scheduler.run``, current while the job runs (a
job's own spans, an HTTP call's say, are its children), with the job id, run id, attempt,
scheduled time and outcome as attributes; a failed or timed-out attempt has an error status,
and a failed one the exception as an event. The metrics are this process's runs (an OTel
backend adds up the processes; the cluster's cumulative counts are the Prometheus
``task_scheduler_runs_total``).
"""

from __future__ import annotations

from contextvars import Token

from opentelemetry import context, metrics, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from ._models import Outcome
from ._runs import RunRecord

SCOPE = "library.components.scheduling.task_scheduler"
"""The instrumentation scope of the spans and metrics (the package's name)."""
SPAN_NAME = "task_scheduler.run"
JOB_ID = "task_scheduler.job_id"
RUN_ID = "task_scheduler.run_id"
ATTEMPT = "task_scheduler.attempt"
SCHEDULED_AT = "task_scheduler.scheduled_at"
OUTCOME = "task_scheduler.outcome"

_FAILED = {Outcome.error, Outcome.timed_out, Outcome.abandoned}


def _ns(record_time: float) -> int:
    return int(record_time * 1e9)


def provider_set(provider: object, api_module: str) -> bool:
    """False for the API's own providers (the proxy before one is set, the no-op)."""
    return not type(provider).__module__.startswith(api_module)


class OTelRuns:
    """The executor's :class:`~._runs.RunObserver` for OpenTelemetry."""

    def __init__(self, tracer: trace.Tracer | None, meter: metrics.Meter | None) -> None:
        self._tracer = tracer
        self._spans: dict[int, tuple[Span, Token[Context]]] = {}
        """Per run number: its span and the context token to detach when it finishes."""
        self._runs: metrics.Counter | None = None
        self._duration: metrics.Histogram | None = None
        self._lateness: metrics.Histogram | None = None
        if meter is not None:
            self._runs = meter.create_counter(
                "task_scheduler.runs", unit="{run}", description="Finished run attempts."
            )
            self._duration = meter.create_histogram(
                "task_scheduler.run.duration",
                unit="s",
                description="Seconds a run attempt took, from start to finish.",
            )
            self._lateness = meter.create_histogram(
                "task_scheduler.run.lateness",
                unit="s",
                description="Seconds a first attempt started after its scheduled time.",
            )

    def started(self, record: RunRecord) -> None:
        tracer, started = self._tracer, record.started_at
        if tracer is None or started is None:
            return
        span = tracer.start_span(
            SPAN_NAME,
            kind=SpanKind.INTERNAL,
            attributes={
                JOB_ID: record.job_id,
                RUN_ID: record.run_id,
                ATTEMPT: record.attempt,
                SCHEDULED_AT: record.scheduled_at.isoformat(),
            },
            start_time=_ns(started.timestamp()),
        )
        # Current while the job runs: it runs in this task (or a worker thread given a copy
        # of its context), and finished() is called in this task too.
        token = context.attach(trace.set_span_in_context(span))
        self._spans[record.seq] = (span, token)

    def finished(self, record: RunRecord, exc: BaseException | None) -> None:
        outcome = record.outcome
        assert outcome is not None
        started, finished = record.started_at, record.finished_at
        held = self._spans.pop(record.seq, None)
        if held is not None:
            span, token = held
            span.set_attribute(OUTCOME, outcome.value)
            if outcome in _FAILED:
                if exc is not None:
                    span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, record.error_message or outcome.value))
            end = None if finished is None else _ns(finished.timestamp())
            span.end(end_time=end)
            context.detach(token)
        if self._runs is None:
            return
        job = {JOB_ID: record.job_id}
        self._runs.add(1, {JOB_ID: record.job_id, OUTCOME: outcome.value})
        if started is not None and finished is not None:
            assert self._duration is not None and self._lateness is not None
            self._duration.record((finished - started).total_seconds(), job)
            if record.attempt == 1:
                lateness = (started - record.scheduled_at).total_seconds()
                self._lateness.record(max(0.0, lateness), job)


def observer() -> OTelRuns | None:
    """An observer for the providers set now; None (nothing per run) when none is set."""
    tracer_provider = trace.get_tracer_provider()
    meter_provider = metrics.get_meter_provider()
    tracing = provider_set(tracer_provider, "opentelemetry.trace")
    metering = provider_set(meter_provider, "opentelemetry.metrics")
    if not tracing and not metering:
        return None
    return OTelRuns(
        tracer_provider.get_tracer(SCOPE) if tracing else None,
        meter_provider.get_meter(SCOPE) if metering else None,
    )
