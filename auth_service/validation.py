"""Normalisation and validation of what users type in: email addresses and display names."""

import re
import unicodedata

from shared.errors import invalid_argument

MAX_EMAIL_LENGTH = 254  # RFC 5321 path limit
MAX_DISPLAY_NAME_LENGTH = 100
# A pragmatic address check: a local part without spaces or a second `@`, and a
# dotted domain of letters, digits and hyphens (internationalised names in punycode).
_EMAIL = re.compile(
    r"^[^\s@\"(),:;<>\[\\\]\x00-\x1f\x7f]{1,64}@"
    r"(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$"
)


# What `create-service-account` makes: `svc_` and 24 hex digits.
_CLIENT_ID = re.compile(r"svc_[0-9a-f]{24}")


def looks_like_client_id(client_id: str) -> bool:
    return _CLIENT_ID.fullmatch(client_id) is not None


def normalise_email(email: str) -> str:
    """The stored form: trimmed and lower-cased, so that lookups ignore case."""
    return email.strip().lower()


def valid_email(email: str) -> str:
    normalised = normalise_email(email)
    if len(normalised) > MAX_EMAIL_LENGTH or not _EMAIL.match(normalised):
        raise invalid_argument("INVALID_EMAIL", "not a valid email address")
    return normalised


def valid_display_name(display_name: str) -> str:
    name = display_name.strip()
    if not 1 <= len(name) <= MAX_DISPLAY_NAME_LENGTH or _has_control_characters(name):
        raise invalid_argument(
            "INVALID_DISPLAY_NAME",
            f"display name must have 1 to {MAX_DISPLAY_NAME_LENGTH} printable characters",
        )
    return name


def _has_control_characters(text: str) -> bool:
    return any(unicodedata.category(character) in ("Cc", "Zl", "Zp") for character in text)
