"""A PostgreSQL cluster of a test's own, on another port, that the test may freeze or stop.

The shared server on 5432 is never stopped: a test that needs an outage makes its own
cluster with Debian's ``pg_createcluster`` (root only), and drops it afterwards. Locally
without root or Debian's tools the test skips with the reason; under CI it fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

PORTS = range(5450, 5500)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}, and CI needs an own PostgreSQL cluster")
    pytest.skip(reason)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    for port in PORTS:
        if not _listening(port):
            return port
    raise RuntimeError(f"no free port in {PORTS.start}-{PORTS.stop - 1} for a test cluster")


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=60)


@dataclass
class Cluster:
    version: str
    name: str
    port: int
    data: Path

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pids(self) -> list[int]:
        """The postmaster and every process it started (backends included)."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = subprocess.run(
            ["pgrep", "-P", str(postmaster)], capture_output=True, text=True, check=False
        ).stdout.split()
        return [postmaster, *map(int, children)]

    @contextmanager
    def frozen(self, limit: float) -> Iterator[None]:
        """The server stops answering, on open connections and new ones (SIGSTOP), and
        answers again afterwards (SIGCONT): a hung host, or a network that drops packets.

        It thaws by itself after ``limit`` seconds, from a thread: code that cannot be
        cancelled while it waits (a shielded call) then fails its test instead of hanging.
        """
        pids = self._pids()

        def thaw() -> None:
            for pid in pids:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        timer = threading.Timer(limit, thaw)
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
            thaw()

    def stop(self) -> None:
        _run("pg_ctlcluster", self.version, self.name, "stop", "-m", "immediate")

    def start(self) -> None:
        _run("pg_ctlcluster", self.version, self.name, "start")


@contextmanager
def own_cluster() -> Iterator[Cluster]:
    """A fresh cluster (trust auth, loopback) on a free port; dropped afterwards."""
    if os.geteuid() != 0 or shutil.which("pg_createcluster") is None:
        _unavailable("an own PostgreSQL cluster needs root and Debian's pg_createcluster")
    versions = sorted(Path("/usr/lib/postgresql").iterdir(), key=lambda p: int(p.name))
    version = versions[-1].name
    port = _free_port()
    name = f"ts_test_{port}"
    subprocess.run(
        ["pg_dropcluster", version, name, "--stop"], capture_output=True, check=False, timeout=60
    )  # a cluster a killed run left behind
    _run("pg_createcluster", version, name, "--port", str(port), "--", "--auth=trust")
    try:
        _run("pg_ctlcluster", version, name, "start")
        data = Path(f"/var/lib/postgresql/{version}/{name}")
        cluster = Cluster(version, name, port, data)
        deadline = time.monotonic() + 30
        while not _listening(port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"test cluster {name} did not listen on {port} within 30 s")
            time.sleep(0.1)
        yield cluster
    finally:
        subprocess.run(
            ["pg_dropcluster", version, name, "--stop"],
            capture_output=True,
            check=False,
            timeout=60,
        )
