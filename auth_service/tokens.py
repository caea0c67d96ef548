"""Access tokens (JWTs per RFC 9068, signed with the active key) and opaque secrets
(refresh tokens, client secrets), which are stored only as SHA-256 hashes."""

import hashlib
import re
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

    async def issue(
        self, subject: str, scopes: Sequence[str] = (), session_id: uuid.UUID | None = None
    ) -> AccessToken:
        """A token for a user (its id and session, no scopes) or a service account (client
        id, scopes). A user's token names its session (`sid`), so that ending the session
        revokes the token too."""
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
        if session_id is not None:
            claims["sid"] = str(session_id)
        token = jwt.encode(
            claims, private_key, algorithm=ALGORITHM, headers={"kid": key_id, "typ": TOKEN_TYPE}
        )
        return AccessToken(token, datetime.fromtimestamp(expires_at, UTC))


# What `new_secret` makes: 43 URL-safe characters. Anything much longer, or of other
# characters, is not one of ours, and is refused before it is hashed or looked up.
_SECRET = re.compile(r"[A-Za-z0-9_-]{1,128}")


def new_secret() -> str:
    """256 random bits, URL-safe: refresh tokens and client secrets."""
    return secrets.token_urlsafe(32)


def looks_like_secret(text: str) -> bool:
    return _SECRET.fullmatch(text) is not None


def secret_hash(secret: str) -> bytes:
    """What is stored of a secret. A fast hash is enough: 256 random bits cannot be guessed."""
    return hashlib.sha256(secret.encode()).digest()
