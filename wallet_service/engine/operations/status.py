"""UpdateWalletStatus: wallet:admin freezes, unfreezes or closes a wallet, under its row
lock like any movement, so a change and a movement never interleave. Setting a status is
idempotent by nature, so it takes no key; every change is recorded with who and why."""

import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar
from uuid import UUID

from google.protobuf.message import Message

from shared.gen.wallet.v1 import wallet_pb2
from wallet_service.engine.book import Book
from wallet_service.engine.operations.base import Operation, Refusal
from wallet_service.messages import wallet_message
from wallet_service.models import WalletStatus
from wallet_service.store import Conn


@dataclass
class SetStatus(Operation):
    wallet_id: UUID = field(default_factory=uuid.uuid4)
    status: WalletStatus = WalletStatus.ACTIVE
    reason: str = ""

    response_type: ClassVar[type[Message]] = wallet_pb2.UpdateWalletStatusResponse

    def request_fields(self) -> list[Any]:
        return ["UpdateWalletStatus", self.wallet_id, self.status.value, self.reason]

    def wallets(self) -> dict[UUID, str | None]:
        return {self.wallet_id: None}  # wallet:admin only: any wallet

    def apply(self, book: Book, request_hash: str) -> tuple[Message, UUID | None]:
        wallet = book.wallets[self.wallet_id]
        if (wallet.status, wallet.status_reason) == (self.status, self.reason):
            # Already so: a repeat (a retry after an unknown outcome, say) changes nothing.
            return wallet_pb2.UpdateWalletStatusResponse(
                wallet=wallet_message(wallet.as_wallet(book.at))
            ), None
        if wallet.status == WalletStatus.CLOSED:
            raise Refusal("WALLET_CLOSED", "a closed wallet stays closed", wallet_id=wallet.id)
        if self.status == WalletStatus.CLOSED and (wallet.balance or wallet.held):
            raise Refusal(
                "WALLET_NOT_EMPTY",
                "only a wallet with a zero balance and no live hold can be closed",
                wallet_id=wallet.id,
                balance=wallet.balance,
                held=wallet.held,
            )
        changed = book.set_status(self.wallet_id, self.status, self.reason, self.principal.subject)
        return wallet_pb2.UpdateWalletStatusResponse(wallet=wallet_message(changed)), None

    async def replay_stored(self, conn: Conn) -> Message:
        raise AssertionError("a status change has no key to replay")
