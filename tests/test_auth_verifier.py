"""The shared access token verifier (shared/tokens.py): what it refuses, and its key cache."""

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization

from auth_service import keys
from shared.errors import ServiceError
from shared.gen.auth.v1 import auth_pb2
from shared.tokens import (
    REQUIRED_CLAIMS,
    Revocations,
    TokenVerifier,
    bearer_token,
    grpc_key_source,
)
from tests.auth_helpers import login, register

ISSUER, AUDIENCE = "wallet-system-auth", "wallet-system"


@dataclass(frozen=True)
class Signer:
    """A key pair that signs test tokens; `key_id` is what goes in the `kid` header."""

    key_id: str
    private_key: Any
    public_key_pem: str

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        """A token with `header` changed; a change to None leaves that header out."""
        headers = {"alg": "EdDSA", "kid": self.key_id, "typ": "at+jwt", **header}
        headers = {name: value for name, value in headers.items() if value is not None}
        signing_input = f"{b64(headers)}.{b64(claims)}"
        return f"{signing_input}.{b64(self.private_key.sign(signing_input.encode()))}"

    def published(self, **fields: Any) -> auth_pb2.PublicKey:
        return auth_pb2.PublicKey(
            key_id=self.key_id, algorithm="EdDSA", public_key_pem=self.public_key_pem, **fields
        )


def new_signer() -> Signer:
    key = keys.generate_key()
    private_key = serialization.load_pem_private_key(key.private_key_pem.encode(), None)
    return Signer(key.id, private_key, key.public_key_pem)


def claims(**changes: Any) -> dict[str, Any]:
    """Valid claims with `changes`; a change to None removes the claim."""
    now = int(time.time())
    valid = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": str(uuid.uuid4()),
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": str(uuid.uuid4()),
        "scope": "",
    }
    return {key: value for key, value in (valid | changes).items() if value is not None}


def b64(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.fixture
async def auth_signer(auth_channel: grpc.aio.Channel, database_url: str) -> Signer:
    """The auth service's own active key, read from its database."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT id, private_key_pem, public_key_pem FROM auth.signing_keys"
            " WHERE retired_at IS NULL"
        ).fetchone()
    assert row is not None
    key_id, private_pem, public_pem = row
    return Signer(
        key_id, serialization.load_pem_private_key(private_pem.encode(), None), public_pem
    )


@pytest.fixture
def verifier(auth_channel: grpc.aio.Channel) -> TokenVerifier:
    return TokenVerifier(grpc_key_source(auth_channel), issuer=ISSUER, audience=AUDIENCE)


async def assert_refused(
    verifier: TokenVerifier, token: str, reason: str = "INVALID_TOKEN"
) -> None:
    with pytest.raises(ServiceError) as raised:
        await verifier.verify(token)
    assert raised.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert raised.value.reason == reason


# --- what it accepts -----------------------------------------------------------------------


async def test_a_well_formed_token_gives_its_principal(
    verifier: TokenVerifier, auth_signer: Signer
) -> None:
    token_claims = claims(sub="svc_payments", scope="wallet:credit wallet:admin")
    principal = await verifier.verify(auth_signer.sign(token_claims))
    assert principal.subject == "svc_payments"
    assert principal.scopes == {"wallet:credit", "wallet:admin"}
    assert principal.token_id == token_claims["jti"]


async def test_a_token_just_past_exp_is_accepted_within_the_leeway(
    verifier: TokenVerifier, auth_signer: Signer
) -> None:
    await verifier.verify(auth_signer.sign(claims(exp=int(time.time()) - 5)))


# --- what it refuses -----------------------------------------------------------------------


async def test_alg_none_is_refused(verifier: TokenVerifier, auth_signer: Signer) -> None:
    header = {"alg": "none", "typ": "at+jwt", "kid": auth_signer.key_id}
    await assert_refused(verifier, f"{b64(header)}.{b64(claims())}.")


async def test_hs256_signed_with_the_public_key_is_refused(
    verifier: TokenVerifier, auth_signer: Signer
) -> None:
    header = {"alg": "HS256", "typ": "at+jwt", "kid": auth_signer.key_id}
    signing_input = f"{b64(header)}.{b64(claims())}"
    secret = auth_signer.public_key_pem.encode()
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    await assert_refused(verifier, f"{signing_input}.{b64(signature)}")


async def test_a_tampered_payload_is_refused(verifier: TokenVerifier, auth_signer: Signer) -> None:
    header, _, signature = auth_signer.sign(claims(scope="")).split(".")
    forged_payload = b64(claims(scope="wallet:admin"))
    await assert_refused(verifier, f"{header}.{forged_payload}.{signature}")


async def test_an_expired_token_is_refused(verifier: TokenVerifier, auth_signer: Signer) -> None:
    now = int(time.time())
    expired = claims(iat=now - 1000, nbf=now - 1000, exp=now - 100)
    await assert_refused(verifier, auth_signer.sign(expired), "TOKEN_EXPIRED")


async def test_a_token_not_yet_valid_is_refused(
    verifier: TokenVerifier, auth_signer: Signer
) -> None:
    await assert_refused(verifier, auth_signer.sign(claims(nbf=int(time.time()) + 300)))


@pytest.mark.parametrize(
    "changes",
    [
        {"aud": "another-audience"},
        {"aud": [AUDIENCE, "another-audience"]},
        {"iss": "https://evil.example.com"},
        {"sub": ""},
        {"sub": 42},
        {"jti": ""},
        {"scope": ["wallet:admin"]},
    ],
)
async def test_a_wrong_audience_issuer_or_claim_is_refused(
    verifier: TokenVerifier, auth_signer: Signer, changes: dict[str, Any]
) -> None:
    await assert_refused(verifier, auth_signer.sign(claims(**changes)))


@pytest.mark.parametrize("missing", REQUIRED_CLAIMS)
async def test_a_token_missing_a_required_claim_is_refused(
    verifier: TokenVerifier, auth_signer: Signer, missing: str
) -> None:
    await assert_refused(verifier, auth_signer.sign(claims(**{missing: None})))


@pytest.mark.parametrize("typ", ["JWT", "at+JWT", None])
async def test_a_token_of_another_type_is_refused(
    verifier: TokenVerifier, auth_signer: Signer, typ: str | None
) -> None:
    await assert_refused(verifier, auth_signer.sign(claims(), typ=typ))


async def test_an_unknown_kid_is_refused(verifier: TokenVerifier) -> None:
    await assert_refused(verifier, new_signer().sign(claims()))


async def test_a_known_kid_on_a_token_signed_by_another_key_is_refused(
    verifier: TokenVerifier, auth_signer: Signer
) -> None:
    impostor = new_signer()
    await assert_refused(verifier, impostor.sign(claims(), kid=auth_signer.key_id))


async def test_a_token_without_a_kid_is_refused(
    verifier: TokenVerifier, auth_signer: Signer
) -> None:
    await assert_refused(verifier, auth_signer.sign(claims(), kid=None))


async def test_a_refresh_token_is_not_an_access_token(
    verifier: TokenVerifier, auth_channel: grpc.aio.Channel
) -> None:
    user = await register(auth_channel)
    tokens = (await login(auth_channel, user.email)).tokens
    await verifier.verify(tokens.access_token)
    await assert_refused(verifier, tokens.refresh_token)


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "x" * 10_000])
async def test_garbage_is_refused(verifier: TokenVerifier, token: str) -> None:
    await assert_refused(verifier, token)


# --- the key set ---------------------------------------------------------------------------


class KeySource:
    """A stand-in for GetPublicKeys that counts its calls."""

    def __init__(self, *published: auth_pb2.PublicKey) -> None:
        self.published = list(published)
        self.calls = 0
        self.failing = False
        self.delay_seconds = 0.01

    async def __call__(self) -> Sequence[auth_pb2.PublicKey]:
        self.calls += 1
        await asyncio.sleep(self.delay_seconds)
        if self.failing:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata()
            )
        return self.published


def verifier_on(source: KeySource, **options: Any) -> TokenVerifier:
    return TokenVerifier(source, issuer=ISSUER, audience=AUDIENCE, **options)


async def test_unknown_kids_cost_at_most_one_fetch_per_interval() -> None:
    signer = new_signer()
    source = KeySource(signer.published())
    verifier = verifier_on(source, min_refetch_interval_seconds=0.3)

    async def wave() -> None:
        tokens = [new_signer().sign(claims()) for _ in range(50)]
        results = await asyncio.gather(
            *(verifier.verify(token) for token in tokens), return_exceptions=True
        )
        assert all(isinstance(result, ServiceError) for result in results)

    started = time.monotonic()
    await wave()
    assert source.calls == 1  # the first fetch, shared by all 50
    await wave()
    await wave()
    assert source.calls == 3  # one more per wave, however many tokens
    assert time.monotonic() - started >= 0.6  # and no sooner than the interval allows
    await verifier.verify(signer.sign(claims()))
    assert source.calls == 3  # known keys need no fetch


async def test_a_new_key_is_fetched_when_a_token_names_it() -> None:
    old, new = new_signer(), new_signer()
    source = KeySource(old.published())
    verifier = verifier_on(source, min_refetch_interval_seconds=0.05)
    await verifier.verify(old.sign(claims()))
    source.published.append(new.published())
    await verifier.verify(new.sign(claims()))
    assert source.calls == 2


async def test_keys_are_fetched_lazily_and_an_unreachable_auth_is_unavailable() -> None:
    signer = new_signer()
    source = KeySource(signer.published())
    source.failing = True
    verifier = verifier_on(source, min_refetch_interval_seconds=0.05)
    assert source.calls == 0
    with pytest.raises(ServiceError) as raised:
        await verifier.verify(signer.sign(claims()))
    assert (raised.value.code, raised.value.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        "KEYS_UNAVAILABLE",
    )
    source.failing = False  # the auth service has started
    await asyncio.sleep(0.05)
    await verifier.verify(signer.sign(claims()))


async def test_a_key_that_goes_unpublished_is_dropped_when_the_cache_is_renewed() -> None:
    signer = new_signer()
    source = KeySource(signer.published())
    verifier = verifier_on(source, refresh_interval_seconds=0.1, min_refetch_interval_seconds=0.05)
    await verifier.verify(signer.sign(claims()))
    source.published = [new_signer().published()]
    await asyncio.sleep(0.15)
    # This call is served from the old cache and starts the renewal in the background...
    await verifier.verify(signer.sign(claims()))
    await asyncio.sleep(0.05)
    # ... after which the unpublished key is gone.
    await assert_refused(verifier, signer.sign(claims()))


async def test_an_old_cache_is_renewed_without_making_calls_wait() -> None:
    signer = new_signer()
    source = KeySource(signer.published())
    verifier = verifier_on(source, refresh_interval_seconds=0.1, min_refetch_interval_seconds=0.05)
    await verifier.verify(signer.sign(claims()))
    source.delay_seconds = 1.5  # the auth service has become very slow
    await asyncio.sleep(0.15)
    started = time.monotonic()
    for _ in range(5):
        await verifier.verify(signer.sign(claims()))
    assert time.monotonic() - started < 1.0
    await asyncio.sleep(0.05)
    assert source.calls == 2  # one renewal under way, not one per call


async def test_an_unreachable_auth_does_not_drop_cached_keys() -> None:
    signer = new_signer()
    source = KeySource(signer.published())
    verifier = verifier_on(source, refresh_interval_seconds=0.1, min_refetch_interval_seconds=0.05)
    await verifier.verify(signer.sign(claims()))
    source.failing = True
    await asyncio.sleep(0.15)
    await verifier.verify(signer.sign(claims()))


@pytest.mark.parametrize("algorithm", ["HS256", "none", "RS256", ""])
async def test_a_key_is_used_only_with_an_asymmetric_algorithm_that_fits_it(
    algorithm: str,
) -> None:
    signer = new_signer()
    mislabelled = signer.published()
    mislabelled.algorithm = algorithm
    await assert_refused(verifier_on(KeySource(mislabelled)), signer.sign(claims()))


async def test_a_retired_key_is_not_trusted_after_its_expire_time() -> None:
    signer = new_signer()
    retired = signer.published()
    retired.expire_time.FromSeconds(int(time.time()) - 120)
    now = int(time.time())
    old_token = signer.sign(claims(iat=now - 600, nbf=now - 600, exp=now + 60))
    await assert_refused(verifier_on(KeySource(retired)), old_token)


async def test_a_token_that_outlives_its_signing_key_is_refused() -> None:
    signer = new_signer()
    retired = signer.published()
    retired.expire_time.FromSeconds(int(time.time()) + 60)
    verifier = verifier_on(KeySource(retired))
    await verifier.verify(signer.sign(claims(exp=int(time.time()) + 30)))
    await assert_refused(verifier, signer.sign(claims(exp=int(time.time()) + 600)))


# --- bearer_token --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata",
    [
        [("authorization", "Bearer abc.def.ghi")],
        [("authorization", "bearer abc.def.ghi")],
        [("x-request-id", "1"), ("authorization", b"Bearer abc.def.ghi")],
    ],
)
def test_bearer_token_reads_the_authorization_metadata(metadata: Any) -> None:
    assert bearer_token(metadata) == "abc.def.ghi"


@pytest.mark.parametrize(
    "metadata",
    [None, [], [("authorization", "Basic dXNlcjpwYXNz")], [("authorization", "Bearer")]],
)
def test_bearer_token_without_one_is_missing_token(metadata: Any) -> None:
    with pytest.raises(ServiceError) as raised:
        bearer_token(metadata)
    assert (raised.value.code, raised.value.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "MISSING_TOKEN",
    )


# --- revocations and lifetime (issue 8, finding 7) -----------------------------------------


class RevocationSource:
    """A stand-in for GetRevocations."""

    def __init__(self) -> None:
        self.revocations = Revocations()
        self.failing = False

    async def __call__(self) -> Revocations:
        if self.failing:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata()
            )
        return self.revocations


async def test_revoked_keys_subjects_and_sessions_are_refused() -> None:
    signer, revocations = new_signer(), RevocationSource()
    verifier = verifier_on(
        KeySource(signer.published()),
        revocation_source=revocations,
        refresh_interval_seconds=0.05,
        min_refetch_interval_seconds=0.01,
    )
    verifier.start()
    try:
        session_id = str(uuid.uuid4())
        user_token = signer.sign(claims(sid=session_id))
        service_token = signer.sign(claims(sub="svc_0123456789abcdef01234567"))
        assert (await verifier.verify(user_token)).session_id == session_id
        await verifier.verify(service_token)
        for revoked, expected in (
            (Revocations(session_ids=frozenset({session_id})), [user_token]),
            (Revocations(subjects=frozenset({"svc_0123456789abcdef01234567"})), [service_token]),
            (Revocations(key_ids=frozenset({signer.key_id})), [user_token, service_token]),
            (Revocations(session_ids=frozenset({session_id})), [user_token]),
        ):
            revocations.revocations = revoked
            await asyncio.sleep(0.15)
            refused = [
                token
                for token in (user_token, service_token)
                if await _refused_as(verifier, token, "TOKEN_REVOKED")
            ]
            assert refused == expected, revoked
        # The last good list stays in force while the auth service is unreachable.
        revocations.failing = True
        await asyncio.sleep(0.15)
        await assert_refused(verifier, user_token, "TOKEN_REVOKED")
    finally:
        await verifier.close()


async def _refused_as(verifier: TokenVerifier, token: str, reason: str) -> bool:
    try:
        await verifier.verify(token)
    except ServiceError as error:
        return error.reason == reason
    return False


async def test_a_retired_key_is_known_as_retired_within_the_refresh_interval() -> None:
    signer = new_signer()
    source = KeySource(signer.published())
    verifier = verifier_on(source, refresh_interval_seconds=0.05, min_refetch_interval_seconds=0.01)
    verifier.start()
    try:
        now = int(time.time())
        token = signer.sign(claims(iat=now - 200, nbf=now - 200, exp=now + 100))
        await verifier.verify(token)
        retired = signer.published()
        retired.expire_time.FromSeconds(now - 60)  # retired long enough for its tokens to end
        source.published = [retired, new_signer().published()]
        await asyncio.sleep(0.2)
        await assert_refused(verifier, token)
    finally:
        await verifier.close()


async def test_a_token_living_longer_than_allowed_is_refused_however_well_signed() -> None:
    signer = new_signer()
    verifier = verifier_on(KeySource(signer.published()), max_token_lifetime_seconds=900)
    now = int(time.time())
    await verifier.verify(signer.sign(claims(iat=now, exp=now + 900)))
    await assert_refused(verifier, signer.sign(claims(iat=now, exp=now + 901)))
    await assert_refused(verifier, signer.sign(claims(iat=now, exp=now + 365 * 86400)))
    # And iat cannot be moved into the future to stretch it.
    await assert_refused(
        verifier, signer.sign(claims(iat=now + 3600, nbf=now, exp=now + 3600 + 900))
    )
    await assert_refused(verifier, signer.sign(claims(sid=42)))


@pytest.mark.parametrize(
    "metadata",
    [
        [("authorization", "Basic dXNlcjpwYXNz"), ("authorization", "Bearer abc.def.ghi")],
        [("authorization", "Bearer abc.def.ghi"), ("authorization", "Bearer abc.def.ghi")],
    ],
)
def test_two_authorization_entries_are_refused(metadata: Any) -> None:
    with pytest.raises(ServiceError) as raised:
        bearer_token(metadata)
    assert (raised.value.code, raised.value.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_TOKEN",
    )


async def test_a_token_seen_before_skips_the_signature_check_but_not_expiry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    signer = new_signer()
    verifier = verifier_on(KeySource(signer.published()), leeway_seconds=0)
    decoded: list[str] = []
    real_decode = jwt.decode

    def counting_decode(token: str, *args: Any, **kwargs: Any) -> Any:
        decoded.append(token)
        return real_decode(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting_decode)
    token = signer.sign(claims())
    for _ in range(5):
        await verifier.verify(token)
    assert len(decoded) == 1
    now = int(time.time())
    short_lived = signer.sign(claims(iat=now - 10, nbf=now - 10, exp=now + 1))
    await verifier.verify(short_lived)
    await asyncio.sleep(1.5)
    await assert_refused(verifier, short_lived, "TOKEN_EXPIRED")
