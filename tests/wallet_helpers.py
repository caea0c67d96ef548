"""Callers of the wallet service for tests: a user, a crediting service, an admin."""

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import psycopg

from shared.gen.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from tests.auth_helpers import register_and_login, service_token
from tests.grpc_errors import expect_status


@dataclass
class Caller:
    """A wallet client that sends one identity's access token with every call."""

    stub: wallet_pb2_grpc.WalletServiceStub
    token: str
    subject: str = ""

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)

    async def call(self, rpc: str, request: Any, deadline_seconds: float = 30) -> Any:
        return await getattr(self.stub, rpc)(
            request, metadata=self.metadata, timeout=deadline_seconds
        )

    async def create_wallet(self, currency: str = "EUR") -> wallet_pb2.Wallet:
        response = await self.call(
            "CreateWallet", wallet_pb2.CreateWalletRequest(currency=currency)
        )
        return response.wallet

    async def balance(self, wallet_id: str) -> int:
        response = await self.call("GetWallet", wallet_pb2.GetWalletRequest(wallet_id=wallet_id))
        return int(response.wallet.balance)

    async def credit(self, wallet_id: str, amount: int, key: str | None = None) -> Any:
        return await self.call(
            "Credit",
            wallet_pb2.CreditRequest(
                wallet_id=wallet_id, amount=amount, idempotency_key=key or new_key()
            ),
        )

    async def debit(self, wallet_id: str, amount: int, key: str | None = None) -> Any:
        return await self.call(
            "Debit",
            wallet_pb2.DebitRequest(
                wallet_id=wallet_id, amount=amount, idempotency_key=key or new_key()
            ),
        )

    async def transfer(
        self, source: str, destination: str, amount: int, key: str | None = None
    ) -> Any:
        return await self.call(
            "Transfer",
            wallet_pb2.TransferRequest(
                source_wallet_id=source,
                destination_wallet_id=destination,
                amount=amount,
                idempotency_key=key or new_key(),
            ),
        )

    async def create_hold(
        self,
        wallet_id: str,
        amount: int,
        key: str | None = None,
        *,
        destination: str = "",
        expires_in_seconds: float | None = None,
    ) -> Any:
        request = wallet_pb2.CreateHoldRequest(
            wallet_id=wallet_id,
            amount=amount,
            destination_wallet_id=destination,
            idempotency_key=key or new_key(),
        )
        if expires_in_seconds is not None:
            request.expire_time.FromDatetime(
                datetime.now(UTC) + timedelta(seconds=expires_in_seconds)
            )
        return await self.call("CreateHold", request)

    async def capture(self, hold_id: str, amount: int = 0, key: str | None = None) -> Any:
        return await self.call(
            "CaptureHold",
            wallet_pb2.CaptureHoldRequest(
                hold_id=hold_id, amount=amount, idempotency_key=key or new_key()
            ),
        )

    async def void(self, hold_id: str, key: str | None = None) -> Any:
        return await self.call(
            "VoidHold",
            wallet_pb2.VoidHoldRequest(hold_id=hold_id, idempotency_key=key or new_key()),
        )

    async def refund(self, transaction_id: str, amount: int = 0, key: str | None = None) -> Any:
        return await self.call(
            "RefundTransaction",
            wallet_pb2.RefundTransactionRequest(
                transaction_id=transaction_id, amount=amount, idempotency_key=key or new_key()
            ),
        )

    async def wallet(self, wallet_id: str) -> wallet_pb2.Wallet:
        response = await self.call("GetWallet", wallet_pb2.GetWalletRequest(wallet_id=wallet_id))
        return response.wallet


def new_key() -> str:
    return f"test-{uuid.uuid4()}"


async def new_user(auth_channel: grpc.aio.Channel, wallet_channel: grpc.aio.Channel) -> Caller:
    user_id, token = await register_and_login(auth_channel)
    return Caller(wallet_pb2_grpc.WalletServiceStub(wallet_channel), token, user_id)


async def new_service(
    auth_channel: grpc.aio.Channel,
    wallet_channel: grpc.aio.Channel,
    database_url: str,
    scopes: list[str],
) -> Caller:
    token = await service_token(auth_channel, database_url, scopes)
    return Caller(wallet_pb2_grpc.WalletServiceStub(wallet_channel), token)


async def expect_error(code: grpc.StatusCode, reason: str, awaitable: Any) -> grpc.aio.AioRpcError:
    """Awaits a call that must fail with `code` and a wallet ErrorInfo carrying `reason`."""
    return await expect_status(code, "wallet.v1.WalletService", reason, awaitable)


def insert_aged_idempotency_key(
    database_url: str, principal: str, key: str, age_hours: float
) -> None:
    """An idempotency outcome recorded `age_hours` ago, straight into the database."""
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO wallet.idempotency_keys (principal, key, request_hash, status,"
            " error_reason, error_message, created_at)"
            " VALUES (%s, %s, 'h', 'failed', 'R', 'm', now() - make_interval(hours => %s))",
            (principal, key, age_hours),
        )


def idempotency_keys_of(database_url: str, principal: str) -> list[str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT key FROM wallet.idempotency_keys WHERE principal = %s ORDER BY key",
            (principal,),
        )
        return [key for (key,) in rows]
