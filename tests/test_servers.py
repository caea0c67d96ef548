"""Both servers: health, reflection, start-up configuration, graceful shutdown."""

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from auth_service.config import AuthSettings
from auth_service.server import start as start_auth
from shared.config import ConfigError, load_settings
from shared.gen.auth.v1 import auth_pb2, auth_pb2_grpc
from shared.migrations import migrate
from shared.server import RunningServer
from tests.databases import throwaway_database
from wallet_service.config import WalletSettings

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def health_status(port: int, service: str = "") -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return response.status


async def reflected_services(port: int) -> set[str]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for response in stub.ServerReflectionInfo(iter([request])):
            return {service.name for service in response.list_services_response.service}
    return set()


SERVICES = [("auth", "auth.v1.AuthService"), ("wallet", "wallet.v1.WalletService")]


@pytest.fixture
def servers(auth_server: RunningServer, wallet_server: RunningServer) -> dict[str, RunningServer]:
    return {"auth": auth_server, "wallet": wallet_server}


@pytest.mark.parametrize(("server_name", "service_name"), SERVICES)
async def test_health_is_serving_for_the_server_and_its_service(
    servers: dict[str, RunningServer], server_name: str, service_name: str
) -> None:
    server = servers[server_name]
    assert await health_status(server.port) == SERVING
    assert await health_status(server.port, service_name) == SERVING


@pytest.mark.parametrize(("server_name", "service_name"), SERVICES)
async def test_reflection_lists_the_service_health_and_reflection(
    servers: dict[str, RunningServer], server_name: str, service_name: str
) -> None:
    server = servers[server_name]
    assert await reflected_services(server.port) == {
        service_name,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


async def test_health_turns_not_serving_when_the_database_goes_away(
    database_server_url: str,
) -> None:
    with throwaway_database(database_server_url) as url:
        migrate(url, "auth")
        settings = AuthSettings(
            database_url=url,
            auth_host="127.0.0.1",
            auth_port=0,
            health_check_interval_seconds=0.2,
            db_pool_min_size=1,
        )
        running = await start_auth(settings)
        try:
            assert await health_status(running.port) == SERVING
            # Dropping the database (WITH FORCE) cuts every connection to it.
            import psycopg
            from psycopg import conninfo

            dbname = conninfo.conninfo_to_dict(url)["dbname"]
            with psycopg.connect(database_server_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE "{dbname}" WITH (FORCE)')
            deadline = time.monotonic() + 10
            status = SERVING
            while status == SERVING and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                status = await health_status(running.port)
            assert status == NOT_SERVING
        finally:
            await running.stop(grace=0)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("AUTH_PORT", "not-a-port", "AUTH_PORT"),
        ("AUTH_PORT", "70000", "AUTH_PORT"),
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL"),
        ("DB_POOL_MAX_SIZE", "0", "DB_POOL_MAX_SIZE"),
    ],
)
def test_a_bad_setting_stops_start_up_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as raised:
        load_settings(AuthSettings)
    assert message in str(raised.value.code)


def test_pool_bounds_must_be_ordered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_POOL_MIN_SIZE", "20")
    monkeypatch.setenv("DB_POOL_MAX_SIZE", "5")
    with pytest.raises(ConfigError, match="DB_POOL_MIN_SIZE"):
        load_settings(WalletSettings)


def test_money_transactions_leave_the_pool_a_connection_for_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DB_POOL_MAX_SIZE", "3")
    with pytest.raises(ConfigError, match="WALLET_MAX_TRANSACTIONS must be below"):
        load_settings(WalletSettings)
    monkeypatch.setenv("WALLET_MAX_TRANSACTIONS", "2")
    assert load_settings(WalletSettings).wallet_max_transactions == 2


def test_defaults_are_the_documented_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("AUTH_PORT", "WALLET_PORT"):
        monkeypatch.delenv(variable, raising=False)
    assert load_settings(AuthSettings).auth_port == 50051
    assert load_settings(WalletSettings).wallet_port == 50052


def test_a_bad_setting_exits_the_process_non_zero() -> None:
    env = {**os.environ, "AUTH_PORT": "nope"}
    result = subprocess.run(
        [sys.executable, "-m", "auth_service"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "invalid configuration: AUTH_PORT" in result.stderr


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_until_serving(port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if await health_status(port) == SERVING:
                return
        except grpc.aio.AioRpcError:
            pass
        assert time.monotonic() < deadline, "server did not become healthy"
        await asyncio.sleep(0.2)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


async def test_the_process_serves_metrics_and_stops_cleanly_on_sigterm(
    database_url: str,
) -> None:
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "AUTH_HOST": "127.0.0.1",
        "AUTH_PORT": str(port),
        "AUTH_METRICS_PORT": str(metrics_port),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "auth_service", env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        await wait_until_serving(port)
        metrics = await asyncio.to_thread(scrape, metrics_port)
        assert (
            'grpc_server_handled_total{grpc_code="OK",grpc_method="/grpc.health.v1.Health/Check"}'
            in metrics
        )
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
        assert process.returncode == 0
        assert b'"message": "stopped"' in stderr
        assert b'"event_loop": "uvloop"' in stderr  # the faster loop, in the real process
    finally:
        if process.returncode is None:
            process.kill()


async def test_sigterm_says_not_serving_first_and_keeps_serving_while_draining(
    database_url: str,
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "AUTH_HOST": "127.0.0.1",
        "AUTH_PORT": str(port),
        "AUTH_METRICS_PORT": "0",
        "SHUTDOWN_DRAIN_SECONDS": "2",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "auth_service", env=env, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        await wait_until_serving(port)
        process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        # A balancer's prober sees NOT_SERVING while calls are still answered.
        assert await health_status(port) == NOT_SERVING
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            keys = await auth_pb2_grpc.AuthServiceStub(channel).GetPublicKeys(
                auth_pb2.GetPublicKeysRequest(), timeout=5
            )
        assert keys.keys
        await asyncio.wait_for(process.wait(), timeout=30)
        assert process.returncode == 0
    finally:
        if process.returncode is None:
            process.kill()


async def test_several_workers_share_one_port_and_one_metrics_endpoint(database_url: str) -> None:
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "AUTH_HOST": "127.0.0.1",
        "AUTH_PORT": str(port),
        "AUTH_METRICS_PORT": str(metrics_port),
        "AUTH_WORKERS": "2",
        "SHUTDOWN_DRAIN_SECONDS": "0",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "auth_service", env=env, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        await wait_until_serving(port)
        workers = await asyncio.to_thread(child_pids, process.pid)
        assert len(workers) == 2
        # Each channel is one connection, kept on one worker: several channels reach both.
        for _ in range(20):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await auth_pb2_grpc.AuthServiceStub(channel).GetPublicKeys(
                    auth_pb2.GetPublicKeysRequest(), timeout=5
                )
        metrics = await asyncio.to_thread(scrape, metrics_port)
        line = next(
            line
            for line in metrics.splitlines()
            if line.startswith("grpc_server_handled_total")
            and "GetPublicKeys" in line
            and 'grpc_code="OK"' in line
        )
        assert float(line.rsplit(" ", 1)[1]) == 20  # both workers' counts, added up
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), timeout=30)
        assert process.returncode == 0
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)  # noqa: ASYNC240
    finally:
        if process.returncode is None:
            process.kill()


def child_pids(parent: int) -> list[int]:
    deadline = time.monotonic() + 10
    while True:
        with open(f"/proc/{parent}/task/{parent}/children") as children:
            pids = [int(pid) for pid in children.read().split()]
        if len(pids) >= 2 or time.monotonic() > deadline:
            return pids
        time.sleep(0.1)
