"""OpenTelemetry: a span per run attempt and the run metrics, read back through the SDK's
in-memory exporter and reader, as an app's exporter would see them; nothing without providers.

The app sets the global providers; here each test sets them for itself (and puts back the
API's proxies afterwards: the API lets a process set them only once).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from library.components.scheduling.task_scheduler import Outcome, RunInfo, TaskScheduler

pytestmark = pytest.mark.anyio

PACKAGE = "library.components.scheduling.task_scheduler"


@dataclass
class Telemetry:
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader

    def runs(self) -> list[ReadableSpan]:
        """The scheduler's run spans, oldest first."""
        return [
            span for span in self.spans.get_finished_spans() if span.name == "task_scheduler.run"
        ]

    def points(self, name: str) -> dict[tuple[tuple[str, Any], ...], Any]:
        """The data points of one metric, by their sorted attributes."""
        data = self.reader.get_metrics_data()
        found = {}
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        for point in metric.data.data_points:
                            found[tuple(sorted(point.attributes.items()))] = point
        return found


@pytest.fixture
def telemetry(monkeypatch: pytest.MonkeyPatch) -> Iterator[Telemetry]:
    """The SDK's providers set as an app sets them (the API's globals), for this test only."""
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", tracer_provider)
    monkeypatch.setattr(
        sys.modules["opentelemetry.metrics._internal"], "_METER_PROVIDER", meter_provider
    )
    yield Telemetry(spans, reader)
    meter_provider.shutdown()
    tracer_provider.shutdown()


def ns(moment: datetime | None) -> int:
    assert moment is not None
    return int(moment.timestamp() * 1e9)


async def test_a_span_per_attempt(anyio_backend: str, telemetry: Telemetry) -> None:
    attempts = 0

    async def flaky() -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ValueError("first try fails")

    scheduler = TaskScheduler()
    scheduler.interval(hours=1, id="flaky", retries=1, retry_delay=0.01)(flaky)
    async with scheduler:
        await scheduler.run_job("flaky")
        runs = (await scheduler.get_runs("flaky"))[::-1]  # oldest first
    assert [run.outcome for run in runs] == [Outcome.error, Outcome.success]
    spans = telemetry.runs()
    assert len(spans) == 2
    for span, run in zip(spans, runs, strict=True):
        assert span.attributes is not None
        assert dict(span.attributes) == {
            "task_scheduler.job_id": "flaky",
            "task_scheduler.run_id": run.run_id,
            "task_scheduler.attempt": run.attempt,
            "task_scheduler.scheduled_at": run.scheduled_at.isoformat(),
            "task_scheduler.outcome": run.outcome.value if run.outcome else None,
        }
        assert (span.start_time, span.end_time) == (ns(run.started_at), ns(run.finished_at))
        assert span.kind is trace.SpanKind.INTERNAL
    failed, succeeded = spans
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "first try fails"
    (event,) = failed.events
    assert event.name == "exception" and event.attributes is not None
    assert event.attributes["exception.type"] == "ValueError"
    assert event.attributes["exception.message"] == "first try fails"
    assert succeeded.status.status_code is StatusCode.UNSET and not succeeded.events


async def test_a_timed_out_attempt_is_an_error(anyio_backend: str, telemetry: Telemetry) -> None:
    async def hangs() -> None:
        await anyio.sleep(30)

    scheduler = TaskScheduler()
    scheduler.interval(hours=1, id="hangs", timeout=0.05)(hangs)
    async with scheduler:
        run = await scheduler.run_job("hangs")
    assert run.outcome is Outcome.timed_out
    (span,) = telemetry.runs()
    assert span.attributes is not None
    assert span.attributes["task_scheduler.outcome"] == "timed_out"
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "timed out after 0.05 s"


async def test_the_run_span_is_current_while_the_job_runs(
    anyio_backend: str, telemetry: Telemetry
) -> None:
    """A job's own spans (an HTTP call's, say) are children of its run's span, async or not."""
    threads: list[int] = []
    tracer = trace.get_tracer("tests.otel")  # the job's own instrumentation

    async def async_job() -> None:
        with tracer.start_as_current_span("inside async"):
            pass

    def sync_job() -> None:
        threads.append(threading.get_ident())
        with tracer.start_as_current_span("inside sync"):
            pass

    scheduler = TaskScheduler()
    scheduler.interval(hours=1, id="async_job")(async_job)
    scheduler.interval(hours=1, id="sync_job")(sync_job)
    async with scheduler:
        await scheduler.run_job("async_job")
        await scheduler.run_job("sync_job")
    assert threads and threads[0] != threading.get_ident()  # it ran in a worker thread
    by_name = {span.name: span for span in telemetry.spans.get_finished_spans()}
    runs = {span.attributes["task_scheduler.job_id"]: span for span in telemetry.runs()}  # type: ignore[index]
    for job_id, inner in [("async_job", "inside async"), ("sync_job", "inside sync")]:
        run_span, child = runs[job_id], by_name[inner]
        assert child.parent is not None and run_span.context is not None
        assert child.parent.span_id == run_span.context.span_id
        assert child.context is not None
        assert child.context.trace_id == run_span.context.trace_id
    # Nothing stays current after the run: the next run is a root span of its own.
    assert all(span.parent is None for span in telemetry.runs())


async def test_the_run_metrics(anyio_backend: str, telemetry: Telemetry) -> None:
    async def tick() -> None:
        pass

    async def fail() -> None:
        raise RuntimeError("boom")

    scheduler = TaskScheduler()
    scheduler.interval(hours=1, id="tick")(tick)
    scheduler.interval(hours=1, id="fail")(fail)
    async with scheduler:
        await scheduler.run_job("tick")
        await scheduler.run_job("tick")
        await scheduler.run_job("fail")
        jobs = {job.id: job for job in await scheduler.get_jobs()}
    runs = telemetry.points("task_scheduler.runs")
    tick_ok = (("task_scheduler.job_id", "tick"), ("task_scheduler.outcome", "success"))
    fail_error = (("task_scheduler.job_id", "fail"), ("task_scheduler.outcome", "error"))
    assert {key: point.value for key, point in runs.items()} == {tick_ok: 2, fail_error: 1}
    assert jobs["tick"].counts.success == 2 and jobs["fail"].counts.error == 1
    duration = telemetry.points("task_scheduler.run.duration")
    assert duration[(("task_scheduler.job_id", "tick"),)].count == 2
    assert duration[(("task_scheduler.job_id", "fail"),)].count == 1
    lateness = telemetry.points("task_scheduler.run.lateness")
    assert lateness[(("task_scheduler.job_id", "tick"),)].count == 2
    assert all(point.min >= 0 for point in lateness.values())


async def test_nothing_per_run_without_a_provider(anyio_backend: str) -> None:
    """The API installed but no provider set (the proxies): the scheduler finds none at start
    and its executor is told of no run (the run path has nothing more to do)."""
    assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"
    scheduler = TaskScheduler()
    ran: list[RunInfo] = []

    async def tick() -> None:
        pass

    scheduler.interval(hours=1, id="tick")(tick)
    async with scheduler:
        ran.append(await scheduler.run_job("tick"))
        assert scheduler._executor._observer is None  # white box: what "no cost" means
    assert ran[0].outcome is Outcome.success


async def test_without_the_otel_api(anyio_backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """opentelemetry-api not installed (its import blocked): the scheduler runs as ever."""
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.delitem(sys.modules, f"{PACKAGE}._otel", raising=False)

    async def tick() -> None:
        pass

    scheduler = TaskScheduler()
    scheduler.interval(hours=1, id="tick")(tick)
    async with scheduler:
        run = await scheduler.run_job("tick")
        assert scheduler._executor._observer is None
    assert run.outcome is Outcome.success


async def test_prometheus_and_otel_together(anyio_backend: str, telemetry: Telemetry) -> None:
    """Both on: each attempt is a span and is in the Prometheus histograms."""
    from prometheus_client import generate_latest

    async def tick() -> None:
        pass

    scheduler = TaskScheduler()
    scheduler.interval(hours=1, id="tick")(tick)
    collector = scheduler.metrics_collector()
    async with scheduler:
        await scheduler.run_job("tick")
        await scheduler.run_job("tick")
        await collector.refresh()
        text = generate_latest(collector.registry).decode()
    assert len(telemetry.runs()) == 2
    assert 'task_scheduler_run_duration_seconds_count{job_id="tick"} 2.0' in text
    assert 'task_scheduler_runs_total{job_id="tick",outcome="success"} 2.0' in text
