"""A Python client of the wallet system (auth.v1 and wallet.v1), asyncio first.

    import asyncio
    from wallet_client import WalletClient, errors

    async def main() -> None:
        async with WalletClient("localhost:50052", "localhost:50051") as client:
            await client.login("ada@example.com", "correct horse battery staple")
            wallet = (await client.create_wallet("EUR")).wallet
            try:
                debit = await client.debit(wallet.id, 2500, idempotency_key="coffee-0001")
                print(debit.balance_after)
            except errors.InsufficientFunds as error:
                print("not enough money in", error.metadata["wallet_id"])

    asyncio.run(main())

The guide is docs/client.md. Answers are the contract's response messages (`shared.gen`,
made by `make proto`); failures raise `wallet_client.errors.WalletError` subclasses.
"""

from wallet_client import errors
from wallet_client.calls import RetryPolicy, new_idempotency_key
from wallet_client.client import (
    WalletClient,
    credit_movement,
    debit_movement,
    transfer_movement,
)
from wallet_client.errors import OutcomeUnknown, WalletError
from wallet_client.events import EventStream
from wallet_client.sync import SyncWalletClient

__all__ = [
    "EventStream",
    "OutcomeUnknown",
    "RetryPolicy",
    "SyncWalletClient",
    "WalletClient",
    "WalletError",
    "credit_movement",
    "debit_movement",
    "errors",
    "new_idempotency_key",
    "transfer_movement",
]
