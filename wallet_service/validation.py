"""Request checks that do not need the database: INVALID_ARGUMENT with a precise reason."""

from collections.abc import Mapping
from datetime import UTC, datetime
from uuid import UUID

from google.protobuf.timestamp_pb2 import Timestamp

from shared.errors import invalid_argument
from shared.gen.wallet.v1 import wallet_pb2
from wallet_service.messages import PROTO_TO_HOLD_STATUS, PROTO_TO_TYPE, PROTO_TO_WALLET_STATUS
from wallet_service.models import HoldStatus, Metadata, TransactionType, WalletStatus

MAX_IDEMPOTENCY_KEY_LENGTH = 128
MAX_REFERENCE_LENGTH = 256
MAX_METADATA_KEYS = 32
MAX_METADATA_KEY_LENGTH = 64
MAX_METADATA_VALUE_LENGTH = 512
MAX_REASON_LENGTH = 256


def wallet_id(value: str, field: str = "wallet_id") -> UUID:
    return _uuid(value, field, "INVALID_WALLET_ID")


def transaction_id(value: str) -> UUID:
    return _uuid(value, "transaction_id", "INVALID_TRANSACTION_ID")


def hold_id(value: str) -> UUID:
    return _uuid(value, "hold_id", "INVALID_HOLD_ID")


def optional_wallet_id(value: str, field: str) -> UUID | None:
    return wallet_id(value, field) if value else None


def _uuid(value: str, field: str, reason: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise invalid_argument(reason, f"{field} must be a UUID", field=field) from None


def amount(value: int) -> int:
    if value <= 0:
        raise invalid_argument("INVALID_AMOUNT", "amount must be a positive number of minor units")
    return value


def amount_or_all(value: int) -> int:
    """An amount where 0 means "all of it" (a capture, a refund)."""
    if value < 0:
        raise invalid_argument(
            "INVALID_AMOUNT", "amount must be a positive number of minor units, or 0 for all"
        )
    return value


def expiry(value: Timestamp, has_value: bool) -> datetime | None:
    """A hold's requested expiry; None for the default. How far ahead it may be is checked
    against the clock when the hold is placed."""
    if not has_value:
        return None
    try:
        return value.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise invalid_argument("INVALID_EXPIRY", "expire_time is not a valid time") from None


def hold_status_filter(value: int) -> HoldStatus | None:
    if value == wallet_pb2.HOLD_STATUS_UNSPECIFIED:
        return None
    if value not in PROTO_TO_HOLD_STATUS:
        raise invalid_argument("INVALID_HOLD_STATUS", f"unknown hold status {value}")
    return PROTO_TO_HOLD_STATUS[value]  # type: ignore[index]


def idempotency_key(value: str) -> str:
    if not 1 <= len(value) <= MAX_IDEMPOTENCY_KEY_LENGTH:
        raise invalid_argument(
            "INVALID_IDEMPOTENCY_KEY",
            f"idempotency_key is required: 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters",
        )
    if not value.isprintable():
        raise invalid_argument(
            "INVALID_IDEMPOTENCY_KEY", "idempotency_key must not contain control characters"
        )
    return value


def reference(value: str) -> str:
    if len(value) > MAX_REFERENCE_LENGTH or not value.isprintable():
        raise invalid_argument(
            "INVALID_REFERENCE",
            f"reference is at most {MAX_REFERENCE_LENGTH} printable characters",
        )
    return value


def transaction_type_filter(value: int) -> TransactionType | None:
    if value == wallet_pb2.TRANSACTION_TYPE_UNSPECIFIED:
        return None
    if value not in PROTO_TO_TYPE:
        raise invalid_argument("INVALID_TRANSACTION_TYPE", f"unknown transaction type {value}")
    return PROTO_TO_TYPE[value]  # type: ignore[index]


def time_range(
    start: Timestamp, end: Timestamp, has_start: bool, has_end: bool
) -> tuple[datetime | None, datetime | None]:
    start_time = _datetime(start, "start_time") if has_start else None
    end_time = _datetime(end, "end_time") if has_end else None
    if start_time and end_time and start_time >= end_time:
        raise invalid_argument("INVALID_TIME_RANGE", "start_time must be before end_time")
    return start_time, end_time


def _datetime(value: Timestamp, field: str, reason: str = "INVALID_TIME_RANGE") -> datetime:
    try:
        return value.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise invalid_argument(reason, f"{field} is not a valid time", field=field) from None


def metadata(value: Mapping[str, str], field: str = "metadata") -> Metadata:
    """At most 32 pairs; keys of 1 to 64 characters, values of at most 512, all printable."""
    if len(value) > MAX_METADATA_KEYS:
        raise invalid_argument(
            "INVALID_METADATA", f"{field} has more than {MAX_METADATA_KEYS} keys", field=field
        )
    for key, text in value.items():
        if not (1 <= len(key) <= MAX_METADATA_KEY_LENGTH and key.isprintable()):
            raise invalid_argument(
                "INVALID_METADATA",
                f"{field} keys have 1 to {MAX_METADATA_KEY_LENGTH} printable characters",
                field=field,
            )
        if not (len(text) <= MAX_METADATA_VALUE_LENGTH and text.isprintable()):
            raise invalid_argument(
                "INVALID_METADATA",
                f"{field} values have at most {MAX_METADATA_VALUE_LENGTH} printable characters",
                field=field,
            )
    return dict(value)


def metadata_filter(key: str, value: str) -> tuple[str, str] | None:
    if not key and not value:
        return None
    if not key:
        raise invalid_argument("INVALID_METADATA", "metadata_value needs a metadata_key")
    metadata({key: value}, "metadata filter")
    return key, value


def wallet_status(value: int) -> WalletStatus:
    if value not in PROTO_TO_WALLET_STATUS:
        raise invalid_argument(
            "INVALID_STATUS", "status must be ACTIVE, DEBITS_FROZEN, FROZEN or CLOSED"
        )
    return PROTO_TO_WALLET_STATUS[value]  # type: ignore[index]


def reason(value: str) -> str:
    text = value.strip()
    if not (1 <= len(text) <= MAX_REASON_LENGTH and text.isprintable()):
        raise invalid_argument(
            "INVALID_REASON",
            f"a reason of 1 to {MAX_REASON_LENGTH} printable characters is required",
        )
    return text


def instant(value: Timestamp, has_value: bool, field: str = "time") -> datetime:
    """A past (or present) instant; required."""
    if not has_value:
        raise invalid_argument("INVALID_TIME", f"{field} is required", field=field)
    moment = _datetime(value, field, "INVALID_TIME")
    if moment > datetime.now(UTC):
        raise invalid_argument("INVALID_TIME", f"{field} must not be in the future", field=field)
    return moment
