"""All of the auth service's SQL (tables in the `auth` schema, migrations/auth/).

Functions take an open connection; the caller owns the transaction.
"""

from typing import Any, TypeVar
from uuid import UUID

from psycopg import AsyncConnection
from psycopg.rows import class_row

from auth_service.models import (
    PresentedRefreshToken,
    PublishedKey,
    ServiceAccount,
    Session,
    SigningKey,
    ThrottleCount,
    User,
)

Conn = AsyncConnection[Any]
Row = TypeVar("Row")


async def _fetch_one(conn: Conn, row_type: type[Row], query: str, params: Any) -> Row | None:
    async with conn.cursor(row_factory=class_row(row_type)) as cursor:
        await cursor.execute(query, params)
        return await cursor.fetchone()


async def _fetch_all(conn: Conn, row_type: type[Row], query: str, params: Any) -> list[Row]:
    async with conn.cursor(row_factory=class_row(row_type)) as cursor:
        await cursor.execute(query, params)
        return await cursor.fetchall()


async def _execute(conn: Conn, query: str, params: Any) -> int:
    """Runs a statement; returns the number of rows it touched."""
    cursor = await conn.execute(query, params)
    return cursor.rowcount


# --- users ---------------------------------------------------------------------------------

USER_COLUMNS = "id, email, display_name, password_hash, created_at"

INSERT_USER = f"""
    INSERT INTO auth.users (email, display_name, password_hash) VALUES (%s, %s, %s)
    ON CONFLICT (email) DO NOTHING
    RETURNING {USER_COLUMNS}
"""
USER_BY_EMAIL = f"SELECT {USER_COLUMNS} FROM auth.users WHERE email = %s"
USER_BY_ID = f"SELECT {USER_COLUMNS} FROM auth.users WHERE id = %s"
UPDATE_PASSWORD_HASH = """
    UPDATE auth.users SET password_hash = %s, updated_at = now() WHERE id = %s
"""
# A rehash at a new bcrypt cost must not undo a password change made meanwhile.
REPLACE_PASSWORD_HASH = """
    UPDATE auth.users SET password_hash = %s, updated_at = now()
    WHERE id = %s AND password_hash = %s
"""


async def insert_user(conn: Conn, email: str, display_name: str, password_hash: str) -> User | None:
    """The new user, or None when the email is taken."""
    return await _fetch_one(conn, User, INSERT_USER, (email, display_name, password_hash))


async def user_by_email(conn: Conn, email: str) -> User | None:
    return await _fetch_one(conn, User, USER_BY_EMAIL, (email,))


async def user_by_id(conn: Conn, user_id: UUID) -> User | None:
    return await _fetch_one(conn, User, USER_BY_ID, (user_id,))


async def update_password_hash(conn: Conn, user_id: UUID, password_hash: str) -> None:
    await _execute(conn, UPDATE_PASSWORD_HASH, (password_hash, user_id))


async def replace_password_hash(conn: Conn, user_id: UUID, old_hash: str, new_hash: str) -> bool:
    """Swaps `old_hash` for `new_hash`; False when the hash is no longer `old_hash`."""
    return await _execute(conn, REPLACE_PASSWORD_HASH, (new_hash, user_id, old_hash)) == 1


# --- sessions and refresh tokens -----------------------------------------------------------

# Only while the user's password hash is still the one the login checked: FOR SHARE waits for
# a concurrent ChangePassword (which updates the row, then revokes every session) and then
# sees the new hash, so a login with the old password cannot slip a session past it.
INSERT_SESSION = """
    INSERT INTO auth.sessions (user_id, expires_at)
    SELECT id, now() + make_interval(secs => %s) FROM auth.users
    WHERE id = %s AND password_hash = %s FOR SHARE
    RETURNING id, user_id, expires_at
"""
INSERT_REFRESH_TOKEN = "INSERT INTO auth.refresh_tokens (token_hash, session_id) VALUES (%s, %s)"
# The row lock makes two uses of one token take turns: the second sees it spent.
LOCK_REFRESH_TOKEN = """
    SELECT t.session_id, s.user_id, s.expires_at AS session_expires_at,
           t.spent_at IS NOT NULL AS spent,
           s.revoked_at IS NOT NULL AS revoked,
           s.expires_at <= now() AS expired
    FROM auth.refresh_tokens t JOIN auth.sessions s ON s.id = t.session_id
    WHERE t.token_hash = %s
    FOR UPDATE OF t
"""
SPEND_REFRESH_TOKEN = "UPDATE auth.refresh_tokens SET spent_at = now() WHERE token_hash = %s"
REVOKE_SESSION = """
    UPDATE auth.sessions SET revoked_at = now(), revoked_reason = %s
    WHERE id = %s AND revoked_at IS NULL
"""
REVOKE_SESSION_OF_TOKEN = """
    UPDATE auth.sessions SET revoked_at = now(), revoked_reason = %s
    WHERE id = (SELECT session_id FROM auth.refresh_tokens WHERE token_hash = %s)
      AND revoked_at IS NULL
"""
REVOKE_SESSIONS_OF_TOKEN_USER = """
    UPDATE auth.sessions SET revoked_at = now(), revoked_reason = %s
    WHERE user_id = (SELECT s.user_id FROM auth.refresh_tokens t
                     JOIN auth.sessions s ON s.id = t.session_id WHERE t.token_hash = %s)
      AND revoked_at IS NULL
"""
REVOKE_USER_SESSIONS = """
    UPDATE auth.sessions SET revoked_at = now(), revoked_reason = %s
    WHERE user_id = %s AND revoked_at IS NULL
"""


async def insert_session(
    conn: Conn, user_id: UUID, checked_password_hash: str, lifetime_seconds: int
) -> Session | None:
    """A new session, or None when the password changed since it was checked."""
    return await _fetch_one(
        conn, Session, INSERT_SESSION, (lifetime_seconds, user_id, checked_password_hash)
    )


async def insert_refresh_token(conn: Conn, token_hash: bytes, session_id: UUID) -> None:
    await _execute(conn, INSERT_REFRESH_TOKEN, (token_hash, session_id))


async def lock_refresh_token(conn: Conn, token_hash: bytes) -> PresentedRefreshToken | None:
    return await _fetch_one(conn, PresentedRefreshToken, LOCK_REFRESH_TOKEN, (token_hash,))


async def spend_refresh_token(conn: Conn, token_hash: bytes) -> None:
    await _execute(conn, SPEND_REFRESH_TOKEN, (token_hash,))


async def revoke_session(conn: Conn, session_id: UUID, reason: str) -> None:
    await _execute(conn, REVOKE_SESSION, (reason, session_id))


async def revoke_session_of_token(conn: Conn, token_hash: bytes, reason: str) -> None:
    await _execute(conn, REVOKE_SESSION_OF_TOKEN, (reason, token_hash))


async def revoke_sessions_of_token_user(conn: Conn, token_hash: bytes, reason: str) -> int:
    return await _execute(conn, REVOKE_SESSIONS_OF_TOKEN_USER, (reason, token_hash))


async def revoke_user_sessions(conn: Conn, user_id: UUID, reason: str) -> int:
    return await _execute(conn, REVOKE_USER_SESSIONS, (reason, user_id))


# --- signing keys --------------------------------------------------------------------------

# Serialises key creation and rotation across instances and operator commands.
LOCK_SIGNING_KEYS = "SELECT pg_advisory_xact_lock(hashtext('auth.signing_keys'))"
ACTIVE_SIGNING_KEY = """
    SELECT id, algorithm, private_key_pem FROM auth.signing_keys WHERE retired_at IS NULL
"""
INSERT_SIGNING_KEY = """
    INSERT INTO auth.signing_keys (id, algorithm, private_key_pem, public_key_pem)
    VALUES (%s, %s, %s, %s)
"""
# A retired key never signs again: its private half goes.
RETIRE_ACTIVE_SIGNING_KEY = """
    UPDATE auth.signing_keys SET retired_at = now(), private_key_pem = NULL
    WHERE retired_at IS NULL
"""
PUBLISHED_KEYS = """
    SELECT id, algorithm, public_key_pem, created_at, retired_at FROM auth.signing_keys
    WHERE (retired_at IS NULL OR retired_at > now() - make_interval(secs => %s))
      AND revoked_at IS NULL
    ORDER BY created_at DESC
"""
# Revoking a key retires it too (the active key is rotated first).
REVOKE_SIGNING_KEY = """
    UPDATE auth.signing_keys
    SET revoked_at = now(), retired_at = coalesce(retired_at, now()), private_key_pem = NULL
    WHERE id = %s AND revoked_at IS NULL
"""
IS_ACTIVE_SIGNING_KEY = "SELECT 1 FROM auth.signing_keys WHERE id = %s AND retired_at IS NULL"


async def lock_signing_keys(conn: Conn) -> None:
    await conn.execute(LOCK_SIGNING_KEYS)


async def active_signing_key(conn: Conn) -> SigningKey | None:
    return await _fetch_one(conn, SigningKey, ACTIVE_SIGNING_KEY, ())


async def insert_signing_key(
    conn: Conn, key_id: str, algorithm: str, private_key_pem: str, public_key_pem: str
) -> None:
    await _execute(conn, INSERT_SIGNING_KEY, (key_id, algorithm, private_key_pem, public_key_pem))


async def retire_active_signing_key(conn: Conn) -> None:
    await _execute(conn, RETIRE_ACTIVE_SIGNING_KEY, ())


async def published_keys(conn: Conn, retired_for_seconds: float) -> list[PublishedKey]:
    """The active key and the keys retired less than `retired_for_seconds` ago."""
    return await _fetch_all(conn, PublishedKey, PUBLISHED_KEYS, (retired_for_seconds,))


async def is_active_signing_key(conn: Conn, key_id: str) -> bool:
    cursor = await conn.execute(IS_ACTIVE_SIGNING_KEY, (key_id,))
    return await cursor.fetchone() is not None


async def revoke_signing_key(conn: Conn, key_id: str) -> bool:
    """Revokes a retired key; False if there is no such key or it is revoked already."""
    return await _execute(conn, REVOKE_SIGNING_KEY, (key_id,)) == 1


# --- service accounts ----------------------------------------------------------------------

INSERT_SERVICE_ACCOUNT = """
    INSERT INTO auth.service_accounts (client_id, name, secret_hash, scopes)
    VALUES (%s, %s, %s, %s)
"""
ENABLED_SERVICE_ACCOUNT = """
    SELECT client_id, secret_hash, scopes FROM auth.service_accounts
    WHERE client_id = %s AND disabled_at IS NULL
"""
DISABLE_SERVICE_ACCOUNT = """
    UPDATE auth.service_accounts SET disabled_at = now()
    WHERE client_id = %s AND disabled_at IS NULL
"""


async def insert_service_account(
    conn: Conn, client_id: str, name: str, secret_hash: bytes, scopes: list[str]
) -> None:
    await _execute(conn, INSERT_SERVICE_ACCOUNT, (client_id, name, secret_hash, scopes))


async def enabled_service_account(conn: Conn, client_id: str) -> ServiceAccount | None:
    return await _fetch_one(conn, ServiceAccount, ENABLED_SERVICE_ACCOUNT, (client_id,))


async def disable_service_account(conn: Conn, client_id: str) -> bool:
    return await _execute(conn, DISABLE_SERVICE_ACCOUNT, (client_id,)) == 1


# --- login throttling ----------------------------------------------------------------------

# Counts an attempt in the subject's current window, starting a new window when the
# last one has ended.
COUNT_LOGIN_ATTEMPT = """
    INSERT INTO auth.login_throttle AS t (subject_kind, subject, window_start, attempts)
    VALUES (%(kind)s, %(subject)s, now(), 1)
    ON CONFLICT (subject_kind, subject) DO UPDATE SET
        window_start = CASE WHEN t.window_start <= now() - make_interval(secs => %(window)s)
                            THEN now() ELSE t.window_start END,
        attempts = CASE WHEN t.window_start <= now() - make_interval(secs => %(window)s)
                        THEN 1 ELSE t.attempts + 1 END
    RETURNING attempts, window_start,
        extract(epoch FROM window_start + make_interval(secs => %(window)s) - now())::float8
            AS retry_after_seconds
"""
# Takes back an attempt that succeeded, if its window is still the current one.
FORGIVE_LOGIN_ATTEMPT = """
    UPDATE auth.login_throttle SET attempts = greatest(attempts - 1, 0)
    WHERE subject_kind = %s AND subject = %s AND window_start = %s
"""
DELETE_ENDED_THROTTLE_WINDOWS = """
    DELETE FROM auth.login_throttle WHERE window_start <= now() - make_interval(secs => %s)
"""


async def count_login_attempt(
    conn: Conn, kind: str, subject: str, window_seconds: int
) -> ThrottleCount:
    params = {"kind": kind, "subject": subject, "window": window_seconds}
    count = await _fetch_one(conn, ThrottleCount, COUNT_LOGIN_ATTEMPT, params)
    assert count is not None  # an upsert with RETURNING always returns the row
    return count


async def forgive_login_attempt(conn: Conn, kind: str, subject: str, count: ThrottleCount) -> None:
    await _execute(conn, FORGIVE_LOGIN_ATTEMPT, (kind, subject, count.window_start))


async def delete_ended_throttle_windows(conn: Conn, window_seconds: int) -> int:
    return await _execute(conn, DELETE_ENDED_THROTTLE_WINDOWS, (window_seconds,))


# An account's trusted addresses: where it logged in successfully within the trust period.
REMEMBER_TRUSTED_ADDRESS = """
    INSERT INTO auth.trusted_login_addresses (account, address, last_success_at)
    VALUES (%s, %s, now())
    ON CONFLICT (account, address) DO UPDATE SET last_success_at = now()
"""
IS_TRUSTED_ADDRESS = """
    SELECT 1 FROM auth.trusted_login_addresses
    WHERE account = %s AND address = %s AND last_success_at > now() - make_interval(secs => %s)
"""
DELETE_EXPIRED_TRUSTED_ADDRESSES = """
    DELETE FROM auth.trusted_login_addresses
    WHERE last_success_at <= now() - make_interval(secs => %s)
"""


async def remember_trusted_address(conn: Conn, account: str, address: str) -> None:
    await _execute(conn, REMEMBER_TRUSTED_ADDRESS, (account, address))


async def is_trusted_address(conn: Conn, account: str, address: str, trust_seconds: int) -> bool:
    cursor = await conn.execute(IS_TRUSTED_ADDRESS, (account, address, trust_seconds))
    return await cursor.fetchone() is not None


async def delete_expired_trusted_addresses(conn: Conn, trust_seconds: int) -> int:
    return await _execute(conn, DELETE_EXPIRED_TRUSTED_ADDRESSES, (trust_seconds,))


# --- revocations ---------------------------------------------------------------------------

# What may still have unexpired access tokens but must no longer be trusted: what was revoked
# within the given number of seconds (the caller passes the token lifetime and a margin);
# anything older can have no live token left.
REVOKED_SESSIONS = """
    SELECT id::text FROM auth.sessions WHERE revoked_at > now() - make_interval(secs => %s)
"""
DISABLED_SERVICE_ACCOUNTS = """
    SELECT client_id FROM auth.service_accounts
    WHERE disabled_at > now() - make_interval(secs => %s)
"""
REVOKED_SIGNING_KEYS = """
    SELECT id FROM auth.signing_keys WHERE revoked_at > now() - make_interval(secs => %s)
"""


async def _column(conn: Conn, query: str, params: Any) -> list[str]:
    cursor = await conn.execute(query, params)
    return [value for (value,) in await cursor.fetchall()]


async def revoked_sessions(conn: Conn, within_seconds: float) -> list[str]:
    return await _column(conn, REVOKED_SESSIONS, (within_seconds,))


async def disabled_service_accounts(conn: Conn, within_seconds: float) -> list[str]:
    return await _column(conn, DISABLED_SERVICE_ACCOUNTS, (within_seconds,))


async def revoked_signing_keys(conn: Conn, within_seconds: float) -> list[str]:
    return await _column(conn, REVOKED_SIGNING_KEYS, (within_seconds,))
