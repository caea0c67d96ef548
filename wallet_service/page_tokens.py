"""Opaque page tokens: a cursor plus a digest of the filters it was issued for.

Unsigned on purpose: a forged cursor can only point into data the caller may already list
(authorisation is checked on every page). Garbage, or a token reused with other filters, is
INVALID_ARGUMENT.
"""

import base64
import binascii
import hashlib
import json
from datetime import datetime
from typing import Any
from uuid import UUID

from shared.errors import ServiceError, invalid_argument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100


def page_size(requested: int) -> int:
    if requested < 0:
        raise invalid_argument("INVALID_PAGE_SIZE", "page_size must not be negative")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _filters_digest(filters: Any) -> str:
    return hashlib.sha256(json.dumps(filters, sort_keys=True).encode()).hexdigest()[:16]


def encode(cursor: list[Any], filters: Any) -> str:
    payload = json.dumps({"c": cursor, "f": _filters_digest(filters)}).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def decode(token: str, filters: Any) -> list[Any] | None:
    """The cursor of `token`, or None for the first page."""
    if not token:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        cursor, digest = payload["c"], payload["f"]
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise _not_ours() from None
    if not isinstance(cursor, list) or digest != _filters_digest(filters):
        raise invalid_argument(
            "INVALID_PAGE_TOKEN", "page_token was issued for other filters; start again"
        )
    return cursor


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
