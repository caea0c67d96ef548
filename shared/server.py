"""gRPC server start-up and shutdown, the same for both services.

`start_server` builds an asyncio gRPC server with the shared interceptors,
health (`grpc.health.v1`, NOT_SERVING while the database is unreachable, as
`shared.db.DatabaseMonitor` decides) and reflection, binds it (port 0 picks a free
port, as tests do) and starts it. `serve_until_signal` runs it until SIGINT/SIGTERM,
then shuts down in three steps: NOT_SERVING while still serving for the drain period
(so balancers stop sending calls), then no new calls while in-flight ones finish
within the grace period. `main` is both services' `python -m` entry point.
"""

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from shared import tracing
from shared.config import CommonSettings
from shared.db import DatabaseMonitor, Pool
from shared.guards import MalformedRequestInterceptor
from shared.interceptors import ErrorInterceptor, LoggingInterceptor
from shared.logs import configure_logging
from shared.migrations import migrate
from shared.transport import ServerTransport
from shared.workers import Worker, run_service, this_worker, workers_for

log = logging.getLogger(__name__)

SettingsT = TypeVar("SettingsT", bound=CommonSettings)


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: Any  # grpc_health.v1.health.aio.HealthServicer (untyped)
    pool: Pool
    monitor: DatabaseMonitor
    on_stop: Sequence[Callable[[], Awaitable[None]]] = ()
    _monitor_task: asyncio.Task[None] | None = field(default=None, repr=False)

    async def stop(self, grace: float, drain: float = 0.0) -> None:
        """Says NOT_SERVING and keeps serving for `drain` seconds, then stops taking calls,
        lets in-flight ones finish for `grace` seconds, and closes the pool."""
        if self._monitor_task is not None:
            self._monitor_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor_task
        await self.health.enter_graceful_shutdown()
        if drain > 0:
            log.info("draining", extra={"drain_seconds": drain})
            await asyncio.sleep(drain)
        await self.server.stop(grace)
        for callback in self.on_stop:
            await callback()
        await self.pool.close()


async def start_server(
    *,
    service_name: str,
    add_servicer: Callable[[grpc.aio.Server], None],
    address: str,
    pool: Pool,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    health_check_interval: float = 5.0,
    on_stop: Sequence[Callable[[], Awaitable[None]]] = (),
    transport: ServerTransport | None = None,
    reuse_port: bool = False,
) -> RunningServer:
    transport = transport or ServerTransport()  # plaintext, gRPC's own limits
    server = grpc.aio.server(
        interceptors=[
            *tracing.server_interceptors(),  # outermost: the rest runs inside the call's span
            LoggingInterceptor(),
            ErrorInterceptor(service_name),
            *interceptors,
            # Innermost, so that a malformed call without a token is UNAUTHENTICATED first.
            MalformedRequestInterceptor(service_name),
        ],
        # Several workers of one service share its port; otherwise a taken port is an error.
        options=[("grpc.so_reuseport", int(reuse_port)), *transport.options],
        maximum_concurrent_rpcs=transport.maximum_concurrent_rpcs,
    )
    add_servicer(server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [service_name, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    port = transport.bind(server, address)
    if port == 0:
        raise OSError(f"could not bind {address}")
    await server.start()

    async def set_health(database_up: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if database_up
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", service_name):
            await health_servicer.set(name, status)

    monitor = DatabaseMonitor(pool, health_check_interval, set_health)
    await monitor.probe()
    running = RunningServer(server, port, health_servicer, pool, monitor, on_stop)
    running._monitor_task = asyncio.create_task(monitor.run())
    log.info(
        "listening",
        extra={
            "service_name": service_name,
            "port": port,
            "event_loop": type(asyncio.get_running_loop()).__module__,
        },
    )
    return running


def main(
    service: str,
    settings: SettingsT,
    start: Callable[[SettingsT, Worker], Awaitable[RunningServer]],
    *,
    workers: int,
    metrics: tuple[str, int],
    auto_migrate: bool,
) -> NoReturn:
    """`python -m <service>_service`: migrate (once, by the supervisor of several workers),
    then serve until SIGINT/SIGTERM, alone or as `workers` processes on one port."""
    configure_logging(service, settings.log_level)
    count = workers_for(workers)
    worker = this_worker(count)
    if auto_migrate and (worker is None or not worker.shares_port):
        migrate(settings.database_url, service)

    async def serve_as(worker: Worker) -> None:
        grace, drain = settings.shutdown_grace_seconds, settings.shutdown_drain_seconds
        await serve(service, lambda: start(settings, worker), grace, drain)

    sys.exit(run_service(f"{service}_service", worker, count, serve_as, metrics))


async def serve(
    service: str, start: Callable[[], Awaitable[RunningServer]], grace: float, drain: float
) -> None:
    """A serving process's life (one worker, or a service alone): tracing if asked for,
    the server, until SIGINT/SIGTERM; then the spans still unsent go out."""
    tracing.configure_tracing(service)
    try:
        await serve_until_signal(await start(), grace, drain)
    finally:
        tracing.shutdown_tracing()


async def serve_until_signal(running: RunningServer, grace: float, drain: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("shutting down", extra={"drain_seconds": drain, "grace_seconds": grace})
    await running.stop(grace, drain)
    log.info("stopped")
