"""The real services as child processes, for tests and tools that stop, kill or restart them.

    async with running_services(database_url, log_dir) as (auth, [wallet]):
        wallet.kill()              # SIGKILL, as a crash
        wallet.start()             # again, on the same port
        await wallet.wait_serving()

Each process runs `python -m auth_service` or `python -m wallet_service` on a free port of
127.0.0.1 with the given DATABASE_URL (metrics off, bcrypt at its cheapest), and writes its
stdout and stderr to `<log_dir>/<name>.log`, appended across restarts, for diagnosis.
"""

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_serving(
    address: str, seconds: float = 30, alive: Callable[[], bool] = lambda: True
) -> None:
    """Waits until the gRPC health service at `address` answers SERVING (while `alive()`)."""
    deadline = time.monotonic() + seconds
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while alive():
            with contextlib.suppress(grpc.aio.AioRpcError):
                response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if response.status == SERVING:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address} is not SERVING after {seconds} s")
            await asyncio.sleep(0.05)
    raise RuntimeError(f"the server for {address} exited")


class ServiceProcess:
    """One service process on a fixed port; it can be stopped, killed and started again."""

    def __init__(self, name: str, module: str, port: int, env: dict[str, str], log_dir: Path):
        self.name = name
        self.module = module
        self.port = port
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """Its process id, which is also its process group's (its workers belong to it)."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Starts the process (not waiting for it to serve: see `wait_serving`)."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", self.module],
                env=self.env,
                stdout=log,
                stderr=log,
                start_new_session=True,  # its own process group: see kill()
            )

    async def wait_serving(self, seconds: float = 30) -> None:
        try:
            await wait_serving(self.address, seconds, alive=lambda: self.running)
        except (TimeoutError, RuntimeError) as error:
            code = self._process.poll() if self._process else None
            raise RuntimeError(
                f"{self.name}: {error} (exit code {code}); its log ends:\n{self.log_tail()}"
            ) from None

    def terminate(self) -> None:
        """Sends SIGTERM (graceful shutdown: in-flight calls finish within the grace)."""
        if self.running:
            assert self._process is not None
            self._process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing finishes, nothing is cleaned up. The whole process
        group goes at once: a service running several workers is killed with its workers
        (killing the supervisor alone would let them shut down gracefully)."""
        if self.running:
            assert self._process is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()

    async def wait_exit(self, seconds: float = 30) -> int | None:
        """Waits for the process to exit; its exit code, or None if it still runs."""
        if self._process is None:
            return None
        with contextlib.suppress(subprocess.TimeoutExpired):
            return await asyncio.to_thread(self._process.wait, seconds)
        return None

    async def stop(self, seconds: float = 30) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within `seconds`; its exit code."""
        self.terminate()
        code = await self.wait_exit(seconds)
        if self.running:
            self.kill()
        return code

    def log_tail(self, characters: int = 4000) -> str:
        with contextlib.suppress(FileNotFoundError):
            return self.log_path.read_text(errors="replace")[-characters:]
        return ""


def service_env(database_url: str, **settings: str) -> dict[str, str]:
    """The environment of a service process: the database, no metrics server, cheap bcrypt,
    warnings-only logs, migrations left to the caller; `settings` override (AUTO_MIGRATE=...)."""
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "AUTO_MIGRATE": "false",
        "LOG_LEVEL": "WARNING",
        "AUTH_METRICS_PORT": "0",
        "WALLET_METRICS_PORT": "0",
        "BCRYPT_COST": "4",
        "PYTHONUNBUFFERED": "1",
        **settings,
    }


def auth_process(database_url: str, log_dir: Path, **settings: str) -> ServiceProcess:
    port = free_port()
    env = service_env(database_url, AUTH_HOST="127.0.0.1", AUTH_PORT=str(port), **settings)
    return ServiceProcess("auth", "auth_service", port, env, log_dir)


def wallet_process(
    database_url: str, log_dir: Path, auth_address: str, name: str = "wallet", **settings: str
) -> ServiceProcess:
    port = free_port()
    env = service_env(
        database_url,
        WALLET_HOST="127.0.0.1",
        WALLET_PORT=str(port),
        AUTH_ADDRESS=auth_address,
        **settings,
    )
    return ServiceProcess(name, "wallet_service", port, env, log_dir)


@contextlib.asynccontextmanager
async def running_services(
    database_url: str, log_dir: Path, wallets: int = 1, **settings: str
) -> AsyncIterator[tuple[ServiceProcess, list[ServiceProcess]]]:
    """The auth service and `wallets` wallet instances, serving; all stopped on the way out."""
    os.makedirs(log_dir, exist_ok=True)
    auth = auth_process(database_url, log_dir, **settings)
    instances = [
        wallet_process(database_url, log_dir, auth.address, f"wallet-{index + 1}", **settings)
        for index in range(wallets)
    ]
    processes = [auth, *instances]
    try:
        for process in processes:
            process.start()
        for process in processes:
            await process.wait_serving()
        yield auth, instances
    finally:
        await asyncio.gather(*(process.stop() for process in processes))
