"""Three real uvicorn processes on one PostgreSQL schema, each serving the scheduler's router:
the deployment this project exists for. The store's database is the truth about runs, so
every worker answers the same about health, counts, runs and workers, across restarts and
after a worker is killed.

Each process (workers/cluster_worker.py, serving workers/cluster_app.py) listens on its own
free loopback port and stops by itself after LIFETIME seconds; the test stops (or kills) every
process it started, whatever happens. Nothing here asserts speed: runs and workers are
identified by their ids, and every wait has a generous deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from library.components.scheduling.task_scheduler.fastapi import CSRF_HEADER

WORKERS = Path(__file__).parent / "workers"
WORKER = WORKERS / "cluster_worker.py"
LIFETIME = 150  # seconds: every process stops by itself after this, even if the test hangs
START_WITHIN = 60  # seconds for a process to serve a running scheduler, on a busy machine
GONE_WITHIN = 25  # seconds: a killed worker leaves the list within 10 s + a heartbeat (~12 s)
PREFIX = "/scheduler"
RUNS, WORKERS_ROUTE = "/runs", "/workers"  # the router's

T = TypeVar("T")


@dataclass
class Worker:
    """One uvicorn process of the cluster."""

    process: subprocess.Popen[bytes]
    out: Path
    err: Path
    port: int = 0
    id: str = ""

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        return f"pid {self.process.pid}: {self.err.read_text()[-3000:]}"


@dataclass
class Cluster:
    """Starts worker processes on one store; stops every one of them in :meth:`close`."""

    store: str
    folder: Path
    client: httpx.Client
    started: list[Worker] = field(default_factory=list)

    def start(self, count: int) -> list[Worker]:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(sys.path),
            "TASK_SCHEDULER_STORE": self.store,
        }
        new = []
        for _ in range(count):
            index = len(self.started)
            out, err = self.folder / f"worker-{index}.out", self.folder / f"worker-{index}.err"
            with out.open("wb") as stdout, err.open("wb") as stderr:
                process = subprocess.Popen(
                    [sys.executable, str(WORKER), str(LIFETIME)],
                    cwd=WORKERS,
                    env=env,
                    stdout=stdout,
                    stderr=stderr,
                )
            worker = Worker(process, out, err)
            self.started.append(worker)
            new.append(worker)
        for worker in new:
            worker.port = wait_for(partial(port_of, worker), f"{name_of(worker)}'s port")
        for worker in new:
            status = wait_for(partial(self.running_status, worker), f"{name_of(worker)} running")
            worker.id = status["worker_id"]
        assert len({worker.id for worker in new}) == count, [worker.id for worker in new]
        return new

    def running_status(self, worker: Worker) -> dict[str, Any] | None:
        if worker.process.poll() is not None:
            pytest.fail(f"{name_of(worker)} exited: {worker.logs()}")
        try:
            response = self.client.get(f"{worker.base}{PREFIX}/status")
        except httpx.TransportError:
            return None
        status: dict[str, Any] = response.json() if response.status_code == 200 else {}
        return status if status.get("state") == "running" else None

    def get(self, worker: Worker, path: str, **params: Any) -> Any:
        response = self.client.get(f"{worker.base}{PREFIX}{path}", params=params)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()

    def job(self, worker: Worker) -> dict[str, Any]:
        job: dict[str, Any] = self.get(worker, "/jobs/tick")
        return job

    def runs(self, worker: Worker) -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = self.get(worker, RUNS, job_id="tick", limit=1000)
        return runs

    def worker_ids(self, worker: Worker) -> list[str]:
        return [listed["id"] for listed in self.get(worker, WORKERS_ROUTE)]

    def stop(self, workers: list[Worker]) -> None:
        """SIGTERM, then each must shut down cleanly by itself."""
        for worker in workers:
            worker.process.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.process.wait(timeout=60)
            assert worker.process.returncode == 0, worker.logs()
            assert "stopped" in worker.out.read_text(), worker.logs()

    def close(self) -> None:
        for worker in self.started:
            if worker.process.poll() is None:
                worker.process.kill()
        for worker in self.started:
            worker.process.wait(timeout=30)


def name_of(worker: Worker) -> str:
    return f"worker pid {worker.process.pid}"


def port_of(worker: Worker) -> int | None:
    if worker.process.poll() is not None:
        pytest.fail(f"{name_of(worker)} exited: {worker.logs()}")
    for line in worker.out.read_text().splitlines():
        if line.startswith("port "):
            return int(line.split()[1])
    return None


def wait_for(
    check: Callable[[], T | None], what: str, within: float = START_WITHIN, every: float = 0.2
) -> T:
    """Poll ``check`` until it returns something other than None (or False)."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within} s: {what}")
        time.sleep(every)


@pytest.fixture
def cluster(pg_url: str, tmp_path: Path) -> Iterator[Cluster]:
    # Loopback: no proxy. As an API client does: POST and DELETE carry the CSRF header.
    headers = {CSRF_HEADER: "1"}
    with httpx.Client(timeout=15, trust_env=False, headers=headers) as client:
        running = Cluster(pg_url, tmp_path, client)
        try:
            yield running
        finally:
            running.close()


def successes(cluster: Cluster, worker: Worker) -> int:
    count: int = cluster.job(worker)["counts"]["success"]
    return count


def settled_jobs(cluster: Cluster, workers: list[Worker]) -> list[dict[str, Any]]:
    """Each worker's view of the job once no run lands in between (the first worker reads
    the same before and after the others): equal views are then a fair comparison."""
    for _ in range(20):
        time.sleep(1)  # the batches (every 0.1 s) are written by now
        first = cluster.job(workers[0])
        views = [first] + [cluster.job(worker) for worker in workers[1:]]
        if cluster.job(workers[0])["counts"] == first["counts"]:
            return views
    pytest.fail("the job's counts never settled after it was paused")


def test_three_workers_agree_on_health_runs_and_counts_and_keep_them_across_a_restart(
    cluster: Cluster,
) -> None:
    # Phase 1: three processes, each listing all three workers.
    workers = cluster.start(3)
    ids = {worker.id for worker in workers}
    for worker in workers:
        listed = cluster.worker_ids(worker)
        assert set(listed) == ids, (worker.id, listed)
        assert cluster.get(worker, "/status")["workers"] == 3
    wait_for(lambda: successes(cluster, workers[0]) >= 1, "a first success of tick")

    # Phase 2: health is never 503 on any worker while the job succeeds on some worker.
    # (Judged by each worker's own runs, 9 of 24 polls answered 503.)
    before = successes(cluster, workers[0])
    polls: list[tuple[str, int, str]] = []
    for _ in range(30):
        for worker in workers:
            response = cluster.client.get(f"{worker.base}{PREFIX}/health")
            polls.append((worker.id, response.status_code, response.text))
        time.sleep(0.5)
    failing = [poll for poll in polls if poll[1] != 200]
    assert failing == [], failing
    assert successes(cluster, workers[0]) > before, "the job kept succeeding while polled"

    # Phase 3: the runs are every worker's, and each worker lists the same ones.
    runs = cluster.runs(workers[0])
    by = {run["worker"] for run in runs}
    assert by <= ids and len(by) >= 2, (by, ids)
    print(f"{len(runs)} runs by {len(by)} workers")

    # Phase 4: paused through one worker's API, every worker gives the same counts.
    response = cluster.client.post(f"{workers[0].base}{PREFIX}/jobs/tick/pause")
    assert response.status_code == 200 and response.json()["paused"] is True, response.text
    views = settled_jobs(cluster, workers)
    counts = [view["counts"] for view in views]
    last_success = [view["last_success_at"] for view in views]
    assert counts[0] == counts[1] == counts[2], counts
    assert last_success[0] == last_success[1] == last_success[2] is not None, last_success
    histories = [cluster.runs(worker) for worker in workers]
    assert histories[0] == histories[1] == histories[2]
    done = [run for run in histories[0] if run["outcome"] == "success"]
    assert counts[0]["success"] == len(done), (counts[0], len(done))  # fewer than history_size
    old_ids = {run["run_id"] for run in histories[0]}
    old_success = counts[0]["success"]
    # Resumed through the worker that paused it: the others do not know it is paused (their
    # resume_job would do nothing, and the job would stay paused in the store).
    response = cluster.client.post(f"{workers[0].base}{PREFIX}/jobs/tick/resume")
    assert response.status_code == 200, response.text

    # Phase 5: stop all three, start three new ones: history and counts are still there,
    # the stopped workers left the list at once, and the job runs on.
    cluster.stop(workers)
    new = cluster.start(3)
    new_ids = {worker.id for worker in new}
    assert new_ids.isdisjoint(ids)
    for worker in new:
        assert set(cluster.worker_ids(worker)) == new_ids
        assert successes(cluster, worker) >= old_success
        assert old_ids <= {run["run_id"] for run in cluster.runs(worker)}
    wait_for(lambda: successes(cluster, new[0]) > old_success, "a success after the restart")
    cluster.stop(new)


def test_a_killed_worker_leaves_the_list_and_the_others_keep_the_job_running(
    cluster: Cluster,
) -> None:
    workers = cluster.start(3)
    ids = [worker.id for worker in workers]
    wait_for(lambda: successes(cluster, workers[0]) >= 1, "a first success of tick")
    victim, survivors = workers[2], workers[:2]
    for worker in survivors:
        assert victim.id in cluster.worker_ids(worker), "listed before the kill"

    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(timeout=30)
    killed = time.monotonic()

    def victim_gone() -> list[str] | None:
        listed = [cluster.worker_ids(worker) for worker in survivors]
        return None if any(victim.id in ids_now for ids_now in listed) else listed[0]

    left = wait_for(victim_gone, "the killed worker leaves the list", within=GONE_WITHIN, every=0.5)
    print(f"killed worker left the list after {time.monotonic() - killed:.1f} s")
    assert sorted(left) == sorted(ids[:2]), left
    for worker in survivors:
        assert cluster.get(worker, "/status")["workers"] == 2

    # The survivors keep running the job: the runs recorded from now on are theirs.
    seen = {run["run_id"] for run in cluster.runs(survivors[0])}
    after_gone = successes(cluster, survivors[0])
    wait_for(
        lambda: successes(cluster, survivors[0]) >= after_gone + 3,
        "three more successes on the survivors",
        within=30,
    )
    new_runs = [run for run in cluster.runs(survivors[1]) if run["run_id"] not in seen]
    by_survivors = [run for run in new_runs if run["worker"] in ids[:2]]
    assert len([run for run in by_survivors if run["outcome"] == "success"]) >= 3, new_runs
    # Besides theirs, only a run the victim left in progress, found and finished as abandoned.
    others = [run for run in new_runs if run["worker"] not in ids[:2]]
    assert all(run["outcome"] == "abandoned" for run in others), others
    for worker in survivors:
        response = cluster.client.get(f"{worker.base}{PREFIX}/health")
        assert response.status_code == 200, response.text
    cluster.stop(survivors)
