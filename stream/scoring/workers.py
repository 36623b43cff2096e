"""``glmix serve`` with ``serving.workers`` > 1: one scoring process per core on one port.

Scoring is CPU-bound Python, so one process serves one core. With N workers, this
process starts N ``glmix serve`` processes that each follow the models and listen on the
same port with ``SO_REUSEPORT``, so the kernel spreads connections evenly over them
(hashing each connection; a shared accept queue instead hands most connections to
whichever worker returned to ``accept`` first). It holds the port bound, not listening,
so a port of 0 is chosen once for all of them. Their Prometheus metrics live in a shared
directory (prometheus_client's multiprocess mode), so ``/metrics`` on any worker reports
the sum over all of them and each worker's request count by ``pid``.

Each worker loads the models itself, so ``/readyz`` answers for the worker that took the
connection: while they start, one may be ready before another (they read the same
topics, so moments apart), and a request that reaches one still loading gets the same
503 a single server gives before its models are loaded.

SIGTERM or SIGINT is passed to every worker, which finishes its requests and stops. A
worker that exits by itself stops the others and this process with status 1: the
service never runs on fewer workers than asked without anyone noticing, and the
orchestrator restarts the whole unit.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from stream.config import ServingSettings

log = logging.getLogger(__name__)

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client reads it when imported
WORKER_FLAG = "--worker-of-port"
_STOP_SECONDS = 15.0


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound (not listening) to ``host:port`` with ``SO_REUSEPORT``; port 0 gets a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    reserved = socket.socket(family, socket.SOCK_STREAM)
    reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserved.bind((host, port))
    return reserved


def serve_workers(argv: Sequence[str], limits: ServingSettings) -> int:
    """Run ``limits.workers`` copies of ``glmix serve <argv>`` on one port until a signal or a worker's exit."""
    reserved = reserve_port(limits.host, limits.port)
    port = reserved.getsockname()[1]
    metrics_dir = tempfile.mkdtemp(prefix="glmix-serve-metrics-")
    env = {**os.environ, METRICS_DIR_ENV: metrics_dir}  # for prometheus_client, which reads it itself
    command = [
        sys.executable,
        "-m",
        "stream",
        *argv,
        "--set",
        f"serving.metrics_dir={metrics_dir}",
        WORKER_FLAG,
        str(port),
    ]
    workers = [subprocess.Popen(command, env=env) for _ in range(limits.workers)]
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    print(f"glmix serve: {limits.workers} workers on http://{limits.host}:{port}", flush=True)
    try:
        while not stopping and all(w.poll() is None for w in workers):
            time.sleep(0.2)
        died = None if stopping else next(w for w in workers if w.poll() is not None)
        if died is not None:
            log.error("scoring worker %d exited with status %s; stopping the others", died.pid, died.returncode)
            stop(signal.SIGTERM, None)
        deadline = time.monotonic() + _STOP_SECONDS
        for worker in workers:
            try:
                worker.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        return 0 if died is None and all(w.returncode == 0 for w in workers) else 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        reserved.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
