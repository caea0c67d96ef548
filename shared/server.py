"""gRPC server start-up and shutdown, the same for both services.

`start_server` builds an asyncio gRPC server with the shared interceptors,
health (`grpc.health.v1`, NOT_SERVING while the database is unreachable) and
reflection, binds it (port 0 picks a free port, as tests do) and starts it.
`serve_until_signal` runs it until SIGINT/SIGTERM, then lets in-flight calls
finish within the grace period.
"""

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import psycopg_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from shared.db import database_is_reachable
from shared.guards import MalformedRequestInterceptor
from shared.interceptors import ErrorInterceptor, LoggingInterceptor
from shared.transport import ServerTransport

log = logging.getLogger(__name__)


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: Any  # grpc_health.v1.health.aio.HealthServicer (untyped)
    pool: psycopg_pool.AsyncConnectionPool
    on_stop: Sequence[Callable[[], Awaitable[None]]] = ()
    _monitor: asyncio.Task[None] | None = field(default=None, repr=False)

    async def stop(self, grace: float) -> None:
        """Stops taking calls, lets in-flight ones finish for `grace` seconds, closes the pool."""
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        for callback in self.on_stop:
            await callback()
        await self.pool.close()


async def start_server(
    *,
    service_name: str,
    add_servicer: Callable[[grpc.aio.Server], None],
    address: str,
    pool: psycopg_pool.AsyncConnectionPool,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    health_check_interval: float = 5.0,
    on_stop: Sequence[Callable[[], Awaitable[None]]] = (),
    transport: ServerTransport | None = None,
) -> RunningServer:
    transport = transport or ServerTransport()  # plaintext, gRPC's own limits
    server = grpc.aio.server(
        interceptors=[
            LoggingInterceptor(),
            ErrorInterceptor(service_name),
            *interceptors,
            # Innermost, so that a malformed call without a token is UNAUTHENTICATED first.
            MalformedRequestInterceptor(service_name),
        ],
        options=[("grpc.so_reuseport", 0), *transport.options],
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
    running = RunningServer(server, port, health_servicer, pool, on_stop)
    await _update_health(running, service_name)
    running._monitor = asyncio.create_task(
        _monitor_health(running, service_name, health_check_interval)
    )
    log.info("listening", extra={"service_name": service_name, "port": port})
    return running


async def _update_health(running: RunningServer, service_name: str) -> None:
    serving = await database_is_reachable(running.pool)
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ("", service_name):
        await running.health.set(name, status)


async def _monitor_health(running: RunningServer, service_name: str, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        await _update_health(running, service_name)


async def serve_until_signal(running: RunningServer, grace: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("shutting down", extra={"grace_seconds": grace})
    await running.stop(grace)
    log.info("stopped")
