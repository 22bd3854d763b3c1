"""One worker process of the cluster tests: cluster_app's FastAPI app under uvicorn.

Usage: TASK_SCHEDULER_STORE=URL python cluster_worker.py LIFETIME_SECONDS

Binds a free loopback port and prints ``port N``; serves until SIGTERM or until
LIFETIME_SECONDS have passed (it stops by itself), then prints ``stopped`` and exits 0 once
uvicorn and the scheduler have shut down.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys

import uvicorn
from cluster_app import app


async def serve(server: uvicorn.Server, sock: socket.socket, lifetime: float) -> None:
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    done, _ = await asyncio.wait({serving}, timeout=lifetime)
    if not done:
        server.should_exit = True
    await serving


def main(lifetime: float) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print(f"port {sock.getsockname()[1]}", flush=True)
    # uvicorn stops gracefully on SIGTERM, then raises the signal again once it is done:
    # a no-op handler lets this process tell how it ended, with exit code 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    asyncio.run(serve(server, sock, lifetime))
    if not server.started:
        sys.exit("the app did not start")
    print("stopped", flush=True)


if __name__ == "__main__":
    main(float(sys.argv[1]))
