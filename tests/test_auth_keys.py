"""Signing keys: GetPublicKeys, the shape of access tokens, persistence and rotation."""

import asyncio
import base64
import hashlib
import json
import os
import sys
import time
import uuid
from typing import Any

import grpc
import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from auth_service import keys
from auth_service.admin import rotate_keys
from shared.errors import ServiceError
from shared.gen.auth.v1 import auth_pb2
from shared.tokens import TokenVerifier, grpc_key_source
from tests.auth_helpers import (
    auth_database,
    auth_stub,
    expect_auth_error,
    extra_auth_server,
    get_me,
    register_and_login,
)
from tests.db_proxy import database_proxy

ISSUER, AUDIENCE = "wallet-system-auth", "wallet-system"


async def public_keys(auth_channel: grpc.aio.Channel) -> auth_pb2.GetPublicKeysResponse:
    return await auth_stub(auth_channel).GetPublicKeys(auth_pb2.GetPublicKeysRequest())


def base64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def stored_keys(database_url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT id, private_key_pem IS NOT NULL, retired_at IS NULL"
            " FROM auth.signing_keys ORDER BY created_at"
        ).fetchall()


async def test_get_public_keys_publishes_the_active_key(auth_channel: grpc.aio.Channel) -> None:
    response = await public_keys(auth_channel)
    assert response.issuer == ISSUER
    active = [key for key in response.keys if key.active]
    assert len(active) == 1
    key = active[0]
    assert key.algorithm == "EdDSA"
    assert not key.HasField("expire_time")
    assert abs(key.create_time.ToSeconds() - time.time()) < 3600
    public_key = serialization.load_pem_public_key(key.public_key_pem.encode())
    assert isinstance(public_key, Ed25519PublicKey)
    jwk = json.loads(key.jwk)
    assert jwk == {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": jwk["x"],
        "kid": key.key_id,
        "alg": "EdDSA",
        "use": "sig",
    }
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert base64url_decode(jwk["x"]) == raw
    # The key id is the RFC 7638 thumbprint of the key.
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": jwk["x"]}, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).digest()
    assert base64url_decode(key.key_id) == digest
    assert b"PRIVATE" not in response.SerializeToString()


async def test_access_tokens_have_the_rfc_9068_header_and_claims(
    auth_channel: grpc.aio.Channel,
) -> None:
    user_id, access_token = await register_and_login(auth_channel)
    _, other_token = await register_and_login(auth_channel)
    (active,) = [key for key in (await public_keys(auth_channel)).keys if key.active]
    header = jwt.get_unverified_header(access_token)
    assert header == {"alg": "EdDSA", "typ": "at+jwt", "kid": active.key_id}
    claims = jwt.decode(
        access_token,
        serialization.load_pem_public_key(active.public_key_pem.encode()),  # type: ignore[arg-type]
        algorithms=["EdDSA"],
        audience=AUDIENCE,
        issuer=ISSUER,
    )
    assert set(claims) == {"iss", "aud", "sub", "iat", "nbf", "exp", "jti", "scope", "sid"}
    assert claims["sub"] == user_id
    uuid.UUID(claims["sid"])  # the login session, so that ending it revokes the token
    assert claims["scope"] == ""
    assert claims["iat"] == claims["nbf"]
    assert claims["exp"] - claims["iat"] == 900
    assert abs(claims["iat"] - time.time()) < 60
    assert claims["jti"] != jwt.decode(other_token, options={"verify_signature": False})["jti"]


async def test_the_access_token_lifetime_is_configurable(database_server_url: str) -> None:
    with auth_database(database_server_url) as url:
        async with extra_auth_server(url, access_token_ttl_seconds=120) as channel:
            _, access_token = await register_and_login(channel)
    claims = jwt.decode(access_token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 120


async def test_the_signing_key_survives_a_restart(database_server_url: str) -> None:
    with auth_database(database_server_url) as url:
        async with extra_auth_server(url) as channel:
            first = [key.key_id for key in (await public_keys(channel)).keys]
            _, access_token = await register_and_login(channel)
        async with extra_auth_server(url) as channel:
            assert [key.key_id for key in (await public_keys(channel)).keys] == first
            await get_me(channel, access_token)


async def test_instances_starting_together_create_one_key(database_server_url: str) -> None:
    with auth_database(database_server_url) as url:

        async def first_start() -> None:
            async with await psycopg.AsyncConnection.connect(url) as conn:
                await keys.create_first_key(conn)

        await asyncio.gather(*(first_start() for _ in range(5)))
        assert len(stored_keys(url)) == 1


async def test_rotation_signs_with_a_new_key_and_keeps_the_old_one_until_its_tokens_expire(
    database_server_url: str,
) -> None:
    with auth_database(database_server_url) as url:
        async with extra_auth_server(url) as channel:
            user_id, old_token = await register_and_login(channel)
            wallet_verifier = TokenVerifier(
                grpc_key_source(channel), issuer=ISSUER, audience=AUDIENCE
            )
            assert (await wallet_verifier.verify(old_token)).subject == user_id
            (old_key,) = (await public_keys(channel)).keys

            new_key_id = await rotate_keys(url)
            _, new_token = await register_and_login(channel)
            assert jwt.get_unverified_header(new_token)["kid"] == new_key_id

            published = {key.key_id: key for key in (await public_keys(channel)).keys}
            assert set(published) == {old_key.key_id, new_key_id}
            assert published[new_key_id].active
            retired = published[old_key.key_id]
            assert not retired.active
            # Published until every token it signed has expired (900 s), plus a margin.
            old_expiry = jwt.decode(old_token, options={"verify_signature": False})["exp"]
            assert retired.expire_time.ToSeconds() >= old_expiry
            assert retired.expire_time.ToSeconds() <= time.time() + 900 + 120

            # Both tokens verify: in the auth service itself and in another service.
            await get_me(channel, old_token)
            await get_me(channel, new_token)
            await wallet_verifier.verify(old_token)
            await wallet_verifier.verify(new_token)

            # The retired key's private half is gone; only the new one can sign.
            assert stored_keys(url) == [(old_key.key_id, False, False), (new_key_id, True, True)]

            # Once the old key's tokens have all expired it is no longer published.
            with psycopg.connect(url) as conn:
                conn.execute(
                    "UPDATE auth.signing_keys SET retired_at = now() - interval '961 seconds'"
                    " WHERE id = %s",
                    (old_key.key_id,),
                )
            await asyncio.sleep(keys.PUBLISHED_KEYS_MAX_AGE_SECONDS)  # the cache's age
            assert [key.key_id for key in (await public_keys(channel)).keys] == [new_key_id]
            fresh_verifier = TokenVerifier(
                grpc_key_source(channel), issuer=ISSUER, audience=AUDIENCE
            )
            with pytest.raises(ServiceError) as raised:
                await fresh_verifier.verify(old_token)
            assert raised.value.reason == "INVALID_TOKEN"
            await fresh_verifier.verify(new_token)


async def test_the_rotate_keys_command_makes_a_new_active_key(database_server_url: str) -> None:
    with auth_database(database_server_url) as url:
        async with extra_auth_server(url) as channel:
            (before,) = (await public_keys(channel)).keys
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "auth_service.admin",
                "rotate-keys",
                env={**os.environ, "DATABASE_URL": url},
                stdout=asyncio.subprocess.PIPE,
            )
            stdout, _ = await asyncio.wait_for(process.communicate(), timeout=60)
            assert process.returncode == 0
            await asyncio.sleep(keys.PUBLISHED_KEYS_MAX_AGE_SECONDS)  # the cache's age
            (after,) = [key for key in (await public_keys(channel)).keys if key.active]
            assert after.key_id != before.key_id
            assert after.key_id in stdout.decode()


async def test_get_me_with_a_token_from_a_key_that_was_never_published_is_refused(
    auth_channel: grpc.aio.Channel,
) -> None:
    new_key = keys.generate_key()
    private_key = serialization.load_pem_private_key(new_key.private_key_pem.encode(), None)
    now = int(time.time())
    forged = jwt.encode(
        {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "iat": now, "nbf": now, "exp": now + 60}
        | {"jti": "j", "scope": ""},
        private_key,  # type: ignore[arg-type]
        algorithm="EdDSA",
        headers={"kid": new_key.id, "typ": "at+jwt"},
    )
    await expect_auth_error(
        grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN", get_me(auth_channel, forged)
    )


async def test_public_keys_are_cached_and_served_through_a_database_outage(
    database_server_url: str,
) -> None:
    with auth_database(database_server_url) as url:
        async with database_proxy(url) as proxy, extra_auth_server(proxy.url(url)) as channel:
            before = await public_keys(channel)
            proxy.refusing = True
            proxy.cut_all()
            await asyncio.sleep(keys.PUBLISHED_KEYS_MAX_AGE_SECONDS + 0.2)
            # Verifiers keep getting the keys while the auth database is away.
            for _ in range(3):
                assert await public_keys(channel) == before
            proxy.refusing = False


async def test_a_rotation_by_another_process_is_published_within_the_cache_age(
    database_server_url: str,
) -> None:
    with auth_database(database_server_url) as url:
        async with extra_auth_server(url) as channel:
            await public_keys(channel)
            new_key_id = await rotate_keys(url)
            await asyncio.sleep(keys.PUBLISHED_KEYS_MAX_AGE_SECONDS + 0.1)
            active = [key.key_id for key in (await public_keys(channel)).keys if key.active]
            assert active == [new_key_id]
