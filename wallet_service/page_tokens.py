"""Opaque page tokens: a cursor plus a digest of the filters it was issued for, signed.

The signature (HMAC-SHA256 with the service's page token secret) is checked before anything
else is read, so garbage, a made-up cursor or a token from another deployment is refused as
INVALID_ARGUMENT `INVALID_PAGE_TOKEN` without being parsed. A token reused with other filters
is refused too. Authorisation is still checked on every page.

`configure()` (at start-up) sets the secret and the largest page size. Every instance behind
one balancer needs the same secret (PAGE_TOKEN_SECRET) so that a page token issued by one works
on the others; without one, each process makes up its own.
"""

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from datetime import datetime
from typing import Any
from uuid import UUID

from shared.errors import ServiceError, invalid_argument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
# Far longer than any token this API issues: longer ones are refused unread.
MAX_TOKEN_LENGTH = 512
_SIGNATURE_BYTES = 16

_secret = secrets.token_bytes(32)
_max_page_size = MAX_PAGE_SIZE


def configure(secret: bytes | None = None, max_page_size: int = MAX_PAGE_SIZE) -> None:
    """Sets the signing secret (None: a random one for this process) and the largest page."""
    global _secret, _max_page_size
    _secret = secret if secret is not None else secrets.token_bytes(32)
    _max_page_size = max_page_size


def page_size(requested: int) -> int:
    if requested < 0:
        raise invalid_argument("INVALID_PAGE_SIZE", "page_size must not be negative")
    return min(requested or min(DEFAULT_PAGE_SIZE, _max_page_size), _max_page_size)


def _filters_digest(filters: Any) -> str:
    return hashlib.sha256(json.dumps(filters, sort_keys=True).encode()).hexdigest()[:16]


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(payload: str) -> bytes:
    return hmac.new(_secret, payload.encode(), hashlib.sha256).digest()[:_SIGNATURE_BYTES]


def encode(cursor: list[Any], filters: Any) -> str:
    payload = _b64encode(json.dumps({"c": cursor, "f": _filters_digest(filters)}).encode())
    return f"{payload}.{_b64encode(_signature(payload))}"


def decode(token: str, filters: Any) -> list[Any] | None:
    """The cursor of `token`, or None for the first page."""
    if not token:
        return None
    payload = _signed_payload(token)
    try:
        content = json.loads(_b64decode(payload))
        cursor, digest = content["c"], content["f"]
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise _not_ours() from None  # signed by this service, yet not a page token
    if not isinstance(cursor, list) or digest != _filters_digest(filters):
        raise invalid_argument(
            "INVALID_PAGE_TOKEN", "page_token was issued for other filters; start again"
        )
    return cursor


def _signed_payload(token: str) -> str:
    """The payload of a token this service signed; INVALID_PAGE_TOKEN for anything else."""
    payload, _, signature = token.partition(".")
    if len(token) > MAX_TOKEN_LENGTH or not payload:
        raise _not_ours()
    try:
        presented = _b64decode(signature)
    except (binascii.Error, ValueError):
        raise _not_ours() from None
    if not hmac.compare_digest(presented, _signature(payload)):
        raise _not_ours()
    return payload


def sequence_cursor(cursor: list[Any]) -> int:
    """A history cursor: the sequence number of the last ledger entry seen."""
    if len(cursor) == 2 and cursor[0] == "seq" and type(cursor[1]) is int and 0 < cursor[1] < 2**63:
        return cursor[1]
    raise _not_ours()


def time_and_id_cursor(cursor: list[Any]) -> tuple[datetime, UUID]:
    """A list cursor: (created_at, id) of the last wallet or hold seen."""
    if len(cursor) == 2 and all(isinstance(part, str) for part in cursor):
        try:
            created_at = datetime.fromisoformat(cursor[0])
            if created_at.tzinfo is not None:
                return created_at, UUID(cursor[1])
        except ValueError:
            pass
    raise _not_ours()


def _not_ours() -> ServiceError:
    return invalid_argument("INVALID_PAGE_TOKEN", "page_token is not one this API issued")
