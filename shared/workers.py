"""Running a service: several worker processes on one port, so that a service uses every core.

`python -m auth_service` / `python -m wallet_service` end up in `run_service`. With one worker
(`AUTH_WORKERS` / `WALLET_WORKERS` = 1) the process serves by itself. With more, it becomes a
supervisor: it applies the migrations once, starts the workers (the same command, told which
worker they are), which all bind the port with SO_REUSEPORT so that the kernel spreads new
connections over them (gRPC keeps a connection on one worker: a client needs several
connections, or a balancer, to use them all), serves every worker's metrics together on one
port, passes SIGTERM/SIGINT on, and stops them all if one dies. A worker that finds its
supervisor gone stops too. Background jobs (clean-ups, sweeps) run in worker 0 only.
"""

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import uvloop

from shared.metrics import serve_metrics

log = logging.getLogger(__name__)

WORKER_VARIABLE = "SERVICE_WORKER"  # set by the supervisor in each worker: its index
PARENT_CHECK_SECONDS = 0.5


@dataclass(frozen=True)
class Worker:
    index: int  # 0 runs the background jobs
    count: int

    @property
    def shares_port(self) -> bool:
        return self.count > 1

    @property
    def runs_background_jobs(self) -> bool:
        return self.index == 0


ALONE = Worker(0, 1)  # a process that serves by itself


def this_worker(count: int) -> Worker | None:
    """This process's place among the workers, or None for the supervisor (of several)."""
    index = os.environ.get(WORKER_VARIABLE)
    if index is not None:
        return Worker(int(index), count)
    return ALONE if count <= 1 else None


def workers_for(setting: int) -> int:
    """The number of workers a setting asks for: 0 means one per core."""
    return setting or os.cpu_count() or 1


def run_service(
    module: str,
    worker: Worker | None,
    count: int,
    serve: Callable[[Worker], Coroutine[Any, Any, None]],
    metrics: tuple[str, int],
) -> int:
    """Serves as `worker`, or supervises `count` workers when `worker` is None."""
    if worker is not None:
        if worker.shares_port:
            _stop_when_orphaned()
        else:
            serve_metrics(metrics[1], metrics[0])
        # uvloop's event loop costs less per call than asyncio's own: 1.22 times the uniform
        # credits per second, alternated in one `make bench` (docs/performance.md).
        uvloop.run(serve(worker))
        return 0
    return _supervise(module, count, metrics)


def _stop_when_orphaned() -> None:
    """A worker whose supervisor died (SIGKILL) stops, so that no orphan keeps the port."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _supervise(module: str, count: int, metrics: tuple[str, int]) -> int:
    metrics_dir = tempfile.mkdtemp(prefix=f"{module}-metrics-")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    children = [
        subprocess.Popen([sys.executable, "-m", module], env={**env, WORKER_VARIABLE: str(i)})
        for i in range(count)
    ]
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    _serve_all_metrics(metrics, metrics_dir)
    log.info("workers started", extra={"service": module, "workers": count})
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.2)
        if not stopping:  # one died: the service is not whole, take the others down
            log.error("a worker stopped; stopping the others", extra={"service": module})
            stop(signal.SIGTERM, None)
        codes = [child.wait() for child in children]
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(metrics_dir)
    # A worker still starting when told to stop ends by the signal itself: that is a stop too.
    if stopping and all(code in (0, -signal.SIGTERM, -signal.SIGINT) for code in codes):
        return 0
    return max(codes) or 1


def _serve_all_metrics(metrics: tuple[str, int], metrics_dir: str) -> None:
    """One /metrics for every worker (prometheus_client's multiprocess mode)."""
    host, port = metrics
    if not port:
        return
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=metrics_dir)
    start_http_server(port, addr=host, registry=registry)
