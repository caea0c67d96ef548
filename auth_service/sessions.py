"""Sessions: refresh token families (RFC 9700).

Login starts a session with one refresh token. Each RefreshToken call spends the
presented token and hands out its successor; presenting a spent token again means it
was stolen (or replayed), so the whole session is revoked. A session ends at a fixed
time after login: rotation does not extend it.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg_pool

from auth_service import repository as repo
from auth_service.models import PresentedRefreshToken
from auth_service.repository import Conn
from auth_service.tokens import looks_like_secret, new_secret, secret_hash
from shared.errors import ServiceError, unauthenticated


@dataclass(frozen=True)
class IssuedRefreshToken:
    token: str
    expires_at: datetime
    session_id: UUID  # the `sid` of the access tokens issued with it


class Sessions:
    def __init__(self, pool: psycopg_pool.AsyncConnectionPool[Any], lifetime_seconds: int) -> None:
        self._pool = pool
        self._lifetime = lifetime_seconds

    async def start(self, user_id: UUID, checked_password_hash: str) -> IssuedRefreshToken:
        """A new session for a user whose password was just checked against
        `checked_password_hash`; INVALID_CREDENTIALS if the password changed meanwhile."""
        async with self._pool.connection() as conn:
            session = await repo.insert_session(
                conn, user_id, checked_password_hash, self._lifetime
            )
            if session is None:
                raise unauthenticated("INVALID_CREDENTIALS", "wrong email or password")
            token = await _issue_refresh_token(conn, session.id)
        return IssuedRefreshToken(token, session.expires_at, session.id)

    async def rotate(self, refresh_token: str) -> tuple[UUID, IssuedRefreshToken]:
        """Spends `refresh_token`; returns its user and the successor token."""
        if not looks_like_secret(refresh_token):
            raise unauthenticated("REFRESH_TOKEN_INVALID", "unknown refresh token")
        token_hash = secret_hash(refresh_token)
        async with self._pool.connection() as conn:
            presented = await repo.lock_refresh_token(conn, token_hash)
            if presented is None:
                raise unauthenticated("REFRESH_TOKEN_INVALID", "unknown refresh token")
            refusal = _refusal(presented)
            if refusal is None:
                await repo.spend_refresh_token(conn, token_hash)
                successor = await _issue_refresh_token(conn, presented.session_id)
                return presented.user_id, IssuedRefreshToken(
                    successor, presented.session_expires_at, presented.session_id
                )
            if refusal.reason == "REFRESH_TOKEN_REUSED":
                await repo.revoke_session(conn, presented.session_id, "reuse")
        # Raised once the transaction has committed, so that the revocation sticks.
        raise refusal

    async def end(self, refresh_token: str, *, all_sessions: bool = False) -> None:
        """Revokes the session of any of its refresh tokens, or with `all_sessions` every
        session of its user; an unknown token does nothing."""
        if not looks_like_secret(refresh_token):
            return
        token_hash = secret_hash(refresh_token)
        async with self._pool.connection() as conn:
            if all_sessions:
                await repo.revoke_sessions_of_token_user(conn, token_hash, "logout_all")
            else:
                await repo.revoke_session_of_token(conn, token_hash, "logout")


async def end_all_sessions(conn: Conn, user_id: UUID) -> None:
    await repo.revoke_user_sessions(conn, user_id, "password_change")


async def _issue_refresh_token(conn: Conn, session_id: UUID) -> str:
    token = new_secret()
    await repo.insert_refresh_token(conn, secret_hash(token), session_id)
    return token


def _refusal(presented: PresentedRefreshToken) -> ServiceError | None:
    if presented.revoked:
        return unauthenticated("REFRESH_TOKEN_REVOKED", "this session has ended; log in again")
    if presented.spent:
        return unauthenticated(
            "REFRESH_TOKEN_REUSED", "refresh token already used; the session is revoked"
        )
    if presented.expired:
        return unauthenticated("REFRESH_TOKEN_EXPIRED", "this session has expired; log in again")
    return None
