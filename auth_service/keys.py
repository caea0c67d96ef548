"""The Ed25519 keys that sign access tokens, kept in the database so that every instance
and every restart signs with the same active key.

One key is active at a time. Rotation retires it (erasing its private half: a retired
key never signs again) and makes a new one active; the retired key stays published
until every token it signed has expired. Key ids are RFC 7638 JWK thumbprints.
"""

import asyncio
import base64
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
import psycopg_pool
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from auth_service import repository as repo
from auth_service.models import PublishedKey
from auth_service.repository import Conn
from shared.errors import unavailable
from shared.gen.auth.v1 import auth_pb2
from shared.listener import notify
from shared.timestamps import to_timestamp

log = logging.getLogger(__name__)

ALGORITHM = "EdDSA"
# Published a little longer than the token lifetime: clocks differ, and an instance may
# sign with a key in the instant that a rotation retires it.
RETIREMENT_MARGIN_SECONDS = 60
# How stale the published key set may be: a rotation or revocation by another instance or
# an operator shows within this; within it, GetPublicKeys costs no database read.
PUBLISHED_KEYS_MAX_AGE_SECONDS = 1.0
# Rotations and revocations are announced here, so that every instance drops its cache at once.
KEYS_CHANNEL = "auth_keys"


@dataclass(frozen=True)
class NewKey:
    id: str
    private_key_pem: str
    public_key_pem: str


def generate_key() -> NewKey:
    private_key = Ed25519PrivateKey.generate()
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_key = private_key.public_key()
    return NewKey(thumbprint(public_key), private_pem.decode(), _public_pem(public_key))


def _public_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def _jwk_members(public_key: Ed25519PublicKey) -> dict[str, str]:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"crv": "Ed25519", "kty": "OKP", "x": _base64url(raw)}


def thumbprint(public_key: Ed25519PublicKey) -> str:
    """RFC 7638: SHA-256 of the required JWK members, sorted, without whitespace."""
    canonical = json.dumps(_jwk_members(public_key), separators=(",", ":"), sort_keys=True)
    return _base64url(hashlib.sha256(canonical.encode()).digest())


def _base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def _insert(conn: Conn, key: NewKey) -> None:
    await repo.insert_signing_key(conn, key.id, ALGORITHM, key.private_key_pem, key.public_key_pem)


async def create_first_key(conn: Conn) -> None:
    """Creates the active key unless there is one; safe when instances start together."""
    await repo.lock_signing_keys(conn)
    if await repo.active_signing_key(conn) is None:
        key = generate_key()
        await _insert(conn, key)
        log.info("created the first signing key", extra={"key_id": key.id})


async def rotate(conn: Conn) -> str:
    """Retires the active key and makes a new one active; returns the new key's id."""
    await repo.lock_signing_keys(conn)
    await repo.retire_active_signing_key(conn)
    key = generate_key()
    await _insert(conn, key)
    await notify(conn, KEYS_CHANNEL)
    return key.id


async def revoke(conn: Conn, key_id: str) -> bool:
    """Revokes a key at once: it leaves GetPublicKeys and its tokens are refused. The active
    key is replaced by a new one first. False if no unrevoked key has this id."""
    await repo.lock_signing_keys(conn)
    if await repo.is_active_signing_key(conn, key_id):
        await rotate(conn)
    await notify(conn, KEYS_CHANNEL)
    return await repo.revoke_signing_key(conn, key_id)


class KeyStore:
    """The signing key, read from the database on each use so that a rotation by any
    instance or operator takes effect everywhere at once, and the published keys, cached.

    The published set is read at most once per `PUBLISHED_KEYS_MAX_AGE_SECONDS` (every
    verifier asks for it), and at once after a rotation or revocation anywhere (announced on
    KEYS_CHANNEL) or when this instance signs with a key it does not list yet. It is kept
    through a database outage: verifiers can go on checking tokens."""

    def __init__(self, pool: psycopg_pool.AsyncConnectionPool[Any], access_token_ttl: int) -> None:
        self._pool = pool
        self._published_for = access_token_ttl + RETIREMENT_MARGIN_SECONDS
        self._published: list[auth_pb2.PublicKey] | None = None
        self._published_at = -math.inf
        self._refresh_lock = asyncio.Lock()

    async def signing_key(self) -> tuple[str, Ed25519PrivateKey]:
        async with self._pool.connection() as conn:
            key = await repo.active_signing_key(conn)
        if key is None:
            raise RuntimeError("no active signing key: the service creates one at start-up")
        if self._published is not None and all(k.key_id != key.id for k in self._published):
            self._published_at = -math.inf  # rotated: publish the new key before its tokens
        private_key = serialization.load_pem_private_key(key.private_key_pem.encode(), None)
        assert isinstance(private_key, Ed25519PrivateKey)
        return key.id, private_key

    def forget_published(self) -> None:
        """A rotation or revocation happened (KEYS_CHANNEL): read the keys again next time."""
        self._published_at = -math.inf

    async def public_keys(self) -> list[auth_pb2.PublicKey]:
        if time.monotonic() - self._published_at > PUBLISHED_KEYS_MAX_AGE_SECONDS:
            async with self._refresh_lock:  # one read for every caller waiting here
                if time.monotonic() - self._published_at > PUBLISHED_KEYS_MAX_AGE_SECONDS:
                    await self._refresh_published()
        if self._published is None:
            raise unavailable("KEYS_UNAVAILABLE", "the verification keys cannot be read now")
        return self._published

    async def _refresh_published(self) -> None:
        try:
            async with self._pool.connection() as conn:
                keys = await repo.published_keys(conn, self._published_for)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as error:
            if self._published is None:
                raise
            log.warning("serving cached public keys", extra={"error": str(error)})
            return
        self._published = [self._message(key) for key in keys]
        self._published_at = time.monotonic()

    def _message(self, key: PublishedKey) -> auth_pb2.PublicKey:
        public_key = serialization.load_pem_public_key(key.public_key_pem.encode())
        assert isinstance(public_key, Ed25519PublicKey)
        jwk = {**_jwk_members(public_key), "kid": key.id, "alg": key.algorithm, "use": "sig"}
        message = auth_pb2.PublicKey(
            key_id=key.id,
            algorithm=key.algorithm,
            public_key_pem=key.public_key_pem,
            jwk=json.dumps(jwk),
            create_time=to_timestamp(key.created_at),
            active=key.retired_at is None,
        )
        if key.retired_at is not None:
            expire_time = key.retired_at + timedelta(seconds=self._published_for)
            message.expire_time.CopyFrom(to_timestamp(expire_time))
        return message
