"""Password policy and hashing.

bcrypt reads at most 72 bytes, so every password is first reduced to the base64 of its
SHA-256 (44 bytes, no NUL): all of a long password counts, nothing is truncated.
Hashing runs in a worker thread (bcrypt releases the GIL), so the event loop keeps
serving and both cores work.
"""

import asyncio
import base64
import hashlib
import secrets
import unicodedata

import bcrypt

from shared.errors import invalid_argument

MIN_LENGTH = 8
MAX_LENGTH = 1024


def check_policy(password: str) -> None:
    """Length rules only, as NIST SP 800-63B advises: no composition rules."""
    if not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        raise invalid_argument(
            "WEAK_PASSWORD",
            f"password must have {MIN_LENGTH} to {MAX_LENGTH} characters",
            min_length=MIN_LENGTH,
            max_length=MAX_LENGTH,
        )


def _prehash(password: str) -> bytes:
    # NFKC, so that the same password typed on another keyboard still matches.
    normalised = unicodedata.normalize("NFKC", password).encode()
    return base64.b64encode(hashlib.sha256(normalised).digest())


class PasswordHasher:
    def __init__(self, cost: int) -> None:
        self.cost = cost
        # Checked against when the email is unknown, so that such a login takes as long.
        self._dummy_hash = bcrypt.hashpw(
            _prehash(secrets.token_urlsafe()), bcrypt.gensalt(self.cost)
        )

    async def hash(self, password: str) -> str:
        hashed = await asyncio.to_thread(
            bcrypt.hashpw, _prehash(password), bcrypt.gensalt(self.cost)
        )
        return hashed.decode()

    async def verify(self, password: str, password_hash: str | None) -> bool:
        """Whether `password` matches; with no hash (unknown user) as slow, and False."""
        candidate = _prehash(password)
        if password_hash is None:
            await asyncio.to_thread(bcrypt.checkpw, candidate, self._dummy_hash)
            return False
        return await asyncio.to_thread(bcrypt.checkpw, candidate, password_hash.encode())

    def needs_rehash(self, password_hash: str) -> bool:
        """True for a hash made with another cost (the setting changed since)."""
        return int(password_hash.split("$")[2]) != self.cost
