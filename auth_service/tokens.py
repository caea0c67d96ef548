"""Access tokens (JWTs per RFC 9068, signed with the active key) and opaque secrets
(refresh tokens, client secrets), which are stored only as SHA-256 hashes."""

import hashlib
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import jwt

from auth_service.keys import ALGORITHM, KeyStore
from shared.tokens import TOKEN_TYPE


@dataclass(frozen=True)
class AccessToken:
    token: str
    expires_at: datetime


class AccessTokenIssuer:
    def __init__(self, keys: KeyStore, *, issuer: str, audience: str, ttl_seconds: int) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._ttl = ttl_seconds

    async def issue(self, subject: str, scopes: Sequence[str] = ()) -> AccessToken:
        """A token for a user (its id, no scopes) or a service account (client id, scopes)."""
        key_id, private_key = await self._keys.signing_key()
        now = int(time.time())
        expires_at = now + self._ttl
        claims = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": subject,
            "iat": now,
            "nbf": now,
            "exp": expires_at,
            "jti": str(uuid.uuid4()),
            "scope": " ".join(scopes),
        }
        token = jwt.encode(
            claims, private_key, algorithm=ALGORITHM, headers={"kid": key_id, "typ": TOKEN_TYPE}
        )
        return AccessToken(token, datetime.fromtimestamp(expires_at, UTC))


def new_secret() -> str:
    """256 random bits, URL-safe: refresh tokens and client secrets."""
    return secrets.token_urlsafe(32)


def secret_hash(secret: str) -> bytes:
    """What is stored of a secret. A fast hash is enough: 256 random bits cannot be guessed."""
    return hashlib.sha256(secret.encode()).digest()
