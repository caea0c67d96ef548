"""`make bench`: throughput of the money path, measured side by side in one run.

Starts both services as separate processes on a throwaway database (as in production: the
client does not share their event loop), then drives them over gRPC with N concurrent
callers for a fixed number of calls per scenario. Machines are shared and noisy: compare the
scenarios' ratios within one run, not absolute numbers across runs.

    make bench                  # defaults
    BENCH_CALLS=2000 BENCH_CONCURRENCY=32 make bench
"""

import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from shared.gen.auth.v1 import auth_pb2, auth_pb2_grpc
from shared.gen.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from shared.migrations import SERVICES, migrate
from tests.auth_helpers import register_and_login, service_token
from tests.databases import admin_url, throwaway_database
from tests.processes import running_services

CALLS = int(os.environ.get("BENCH_CALLS", "1000"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "16"))


async def run_scenario(name: str, call: Callable[[int], Awaitable[object]]) -> float:
    """Runs CALLS calls with CONCURRENCY in flight; returns calls per second."""
    counter = iter(range(CALLS))

    async def worker() -> None:
        for index in counter:
            await call(index)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    rate = CALLS / (time.perf_counter() - started)
    print(f"  {name:<44} {rate:8.0f} calls/s")
    return rate


async def bench(auth_port: int, wallet_port: int, database_url: str) -> None:
    auth_channel = grpc.aio.insecure_channel(f"127.0.0.1:{auth_port}")
    wallet_channel = grpc.aio.insecure_channel(f"127.0.0.1:{wallet_port}")
    auth = auth_pb2_grpc.AuthServiceStub(auth_channel)
    wallets = wallet_pb2_grpc.WalletServiceStub(wallet_channel)

    _, user_token = await register_and_login(auth_channel)
    _, other_token = await register_and_login(auth_channel)
    payments_token = await service_token(auth_channel, database_url, ["wallet:credit"])
    user = (("authorization", f"Bearer {user_token}"),)
    other = (("authorization", f"Bearer {other_token}"),)
    payments = (("authorization", f"Bearer {payments_token}"),)

    async def open_wallet(metadata: tuple[tuple[str, str], ...], currency: str) -> str:
        request = wallet_pb2.CreateWalletRequest(currency=currency)
        return str((await wallets.CreateWallet(request, metadata=metadata)).wallet.id)

    hot = await open_wallet(user, "EUR")
    cold = await open_wallet(other, "EUR")
    big = 10**15
    for wallet_id in (hot, cold):
        await wallets.Credit(
            wallet_pb2.CreditRequest(
                wallet_id=wallet_id, amount=big, idempotency_key=str(uuid.uuid4())
            ),
            metadata=payments,
        )
    run = uuid.uuid4().hex[:8]

    def debit(index: int) -> Awaitable[object]:
        return wallets.Debit(
            wallet_pb2.DebitRequest(wallet_id=hot, amount=1, idempotency_key=f"d-{run}-{index}"),
            metadata=user,
        )

    def transfer_both_ways(index: int) -> Awaitable[object]:
        source, destination, metadata = (hot, cold, user) if index % 2 else (cold, hot, other)
        return wallets.Transfer(
            wallet_pb2.TransferRequest(
                source_wallet_id=source,
                destination_wallet_id=destination,
                amount=1,
                idempotency_key=f"t-{run}-{index}",
            ),
            metadata=metadata,
        )

    def get_wallet(index: int) -> Awaitable[object]:
        return wallets.GetWallet(wallet_pb2.GetWalletRequest(wallet_id=hot), metadata=user)

    def public_keys(index: int) -> Awaitable[object]:
        return auth.GetPublicKeys(auth_pb2.GetPublicKeysRequest())

    print(f"{CALLS} calls per scenario, {CONCURRENCY} in flight")
    read = await run_scenario("GetWallet (token check + one SELECT)", get_wallet)
    fresh = await run_scenario("Debit, one hot wallet", debit)
    replay = await run_scenario("Debit replayed with the same keys", debit)
    both = await run_scenario("Transfer, two wallets, both directions", transfer_both_ways)
    await run_scenario("auth GetPublicKeys (no database)", public_keys)
    print("ratios (same run):")
    print(f"  replay / fresh debit                        {replay / fresh:6.2f}")
    print(f"  fresh debit / GetWallet                     {fresh / read:6.2f}")
    print(f"  opposite transfers / fresh debit            {both / fresh:6.2f}")
    await auth_channel.close()
    await wallet_channel.close()


def main() -> int:
    with throwaway_database(admin_url()) as database_url:
        for service in SERVICES:
            migrate(database_url, service)
        asyncio.run(_bench_with_services(database_url))
    return 0


async def _bench_with_services(database_url: str) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-logs-") as logs:
        settings = {"BCRYPT_COST": os.environ.get("BCRYPT_COST", "4")}
        async with running_services(database_url, Path(logs), **settings) as (auth, [wallet]):
            await bench(auth.port, wallet.port, database_url)


if __name__ == "__main__":
    sys.exit(main())
