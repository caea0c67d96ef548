"""Opaque page tokens: a cursor plus a digest of the filters it was issued for.

Unsigned on purpose: a forged cursor can only point into data the caller may already list
(authorisation is checked on every page). Garbage, or a token reused with other filters, is
INVALID_ARGUMENT.
"""

import base64
import binascii
import hashlib
import json
from typing import Any

from shared.errors import invalid_argument

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
        raise invalid_argument(
            "INVALID_PAGE_TOKEN", "page_token is not one this API issued"
        ) from None
    if not isinstance(cursor, list) or digest != _filters_digest(filters):
        raise invalid_argument(
            "INVALID_PAGE_TOKEN", "page_token was issued for other filters; start again"
        )
    return cursor
