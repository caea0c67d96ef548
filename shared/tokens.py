"""Verification of the access tokens that the auth service signs, for every service.

`TokenVerifier.verify` accepts a token only if it is a JWT with `typ: at+jwt`, a `kid`
naming a key of the trusted set (the auth service's `GetPublicKeys`), signed with that
key's own published algorithm (never `none`, never HMAC), with the expected `iss`
and `aud`, a current `nbf`/`exp`, every required claim, a lifetime (`exp - iat`) no longer
than allowed, and nothing in it revoked (the auth service's `GetRevocations`: ended sessions,
disabled service accounts, revoked keys). Anything else is UNAUTHENTICATED with reason
INVALID_TOKEN, TOKEN_EXPIRED or TOKEN_REVOKED.

Keys and revocations are fetched together: lazily (a service may start before auth), every
`refresh_interval_seconds` in the background once `start()` is called (so a revocation takes
effect within that interval), and again when a token names an unknown `kid`; such refetches
are coalesced and at most one per `min_refetch_interval_seconds`, so a flood of made-up key
ids costs the auth service nothing. When the auth service cannot be reached, the last good
keys and revocations stay in force: verification goes on locally.
"""

import asyncio
import contextlib
import contextvars
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from shared.errors import ServiceError, unauthenticated, unavailable
from shared.gen.auth.v1 import auth_pb2, auth_pb2_grpc

log = logging.getLogger(__name__)

TOKEN_TYPE = "at+jwt"
REQUIRED_CLAIMS = ("iss", "aud", "sub", "iat", "nbf", "exp", "jti")
# Asymmetric algorithms only, each with the key type it must come with.
KEY_TYPES: dict[str, type] = {
    "EdDSA": ed25519.Ed25519PublicKey,
    "ES256": ec.EllipticCurvePublicKey,
    "RS256": rsa.RSAPublicKey,
}
MAX_TOKEN_LENGTH = 8192
# Verified tokens kept (about 1 KB each): a process serving 10,000 callers at once still
# checks each signature once per token.
MAX_VERIFIED_TOKENS = 10_000
DAY = 86400


@dataclass(frozen=True)
class Revocations:
    """What no longer authorises anything, although tokens naming it may not have expired."""

    session_ids: frozenset[str] = frozenset()  # `sid` claims of ended sessions
    subjects: frozenset[str] = frozenset()  # `sub` claims: disabled service accounts
    key_ids: frozenset[str] = frozenset()  # `kid` headers: revoked signing keys


KeySource = Callable[[], Awaitable[Sequence[auth_pb2.PublicKey]]]
RevocationSource = Callable[[], Awaitable[Revocations]]


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: a user (`subject` is its id) or a service account."""

    subject: str
    scopes: frozenset[str]
    token_id: str
    session_id: str | None = None  # the `sid` of a user's token: its login session

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


@dataclass(frozen=True)
class _Verified:
    principal: Principal
    key_id: str
    expires_at: float  # the token's `exp`


@dataclass(frozen=True)
class TrustedKey:
    key_id: str
    algorithm: str
    key: Any  # a cryptography public key of the type KEY_TYPES[algorithm]
    expires_at: float  # epoch seconds after which no token it signed is valid; inf if active


class TokenVerifier:
    def __init__(
        self,
        key_source: KeySource,
        *,
        issuer: str,
        audience: str,
        revocation_source: RevocationSource | None = None,
        leeway_seconds: float = 30.0,
        min_refetch_interval_seconds: float = 1.0,
        refresh_interval_seconds: float = 10.0,
        max_token_lifetime_seconds: float = DAY,
    ) -> None:
        self._key_source = key_source
        self._revocation_source = revocation_source
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_seconds
        self._min_refetch_interval = min_refetch_interval_seconds
        self._refresh_interval = refresh_interval_seconds
        self._max_lifetime = max_token_lifetime_seconds
        self._keys: dict[str, TrustedKey] = {}
        self._revocations = Revocations()
        self._fetched_at = -math.inf  # last successful fetch (monotonic)
        self._attempted_at = -math.inf  # last fetch attempt, successful or not
        self._fetches = 0  # attempts so far: lets waiters see that one happened meanwhile
        self._last_fetch_failed = False
        self._lock = asyncio.Lock()
        self._refresh: asyncio.Task[None] | None = None  # a background refresh under way
        self._refresher: asyncio.Task[None] | None = None  # the periodic refresh, once started
        # Tokens whose signature was checked, most recently used last: a client sends the same
        # token with every call until it expires, and EdDSA is most of a check's cost.
        self._verified: OrderedDict[str, _Verified] = OrderedDict()

    async def verify(self, token: str) -> Principal:
        cached = self._verified.get(token)
        if cached is not None and self._still_good(cached):
            self._verified.move_to_end(token)
            return cached.principal
        header = _unverified_header(token)
        key = await self._trusted_key(header["kid"])
        if header.get("alg") != key.algorithm:
            raise _invalid("token algorithm does not match its key")
        claims = self._decode(token, key)
        principal = _principal(claims)
        self._check_not_revoked(principal)
        self._remember(token, _Verified(principal, key.key_id, float(claims["exp"])))
        return principal

    def _still_good(self, verified: "_Verified") -> bool:
        """A token verified before may skip the signature check, but not the rest: it must not
        have expired, its key must still be trusted, and revocations apply on every call."""
        if time.time() > verified.expires_at + self._leeway:
            return False
        key = self._keys.get(verified.key_id)
        if key is None or verified.key_id in self._revocations.key_ids:
            return False
        if verified.expires_at > key.expires_at + self._leeway:  # its key retired since
            return False
        self._check_not_revoked(verified.principal)
        return True

    def _check_not_revoked(self, principal: Principal) -> None:
        if principal.subject in self._revocations.subjects:
            raise _revoked("this account's access tokens were revoked")
        if principal.session_id in self._revocations.session_ids:
            raise _revoked("the session of this access token has ended")

    def _remember(self, token: str, verified: "_Verified") -> None:
        self._verified[token] = verified
        if len(self._verified) > MAX_VERIFIED_TOKENS:
            self._verified.popitem(last=False)

    def start(self) -> None:
        """Refreshes keys and revocations every `refresh_interval_seconds` from now on."""
        if self._refresher is None:
            self._refresher = asyncio.create_task(self._refresh_periodically())

    async def close(self) -> None:
        for task in (self._refresher, self._refresh):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _refresh_periodically(self) -> None:
        while True:
            async with self._lock:  # periodic already: no need to wait out the refetch interval
                await self._fetch_once()
            await asyncio.sleep(self._refresh_interval)

    def _decode(self, token: str, key: TrustedKey) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": list(REQUIRED_CLAIMS), "strict_aud": True},
            )
        except jwt.ExpiredSignatureError:
            raise unauthenticated("TOKEN_EXPIRED", "access token expired") from None
        except jwt.PyJWTError as error:
            raise _invalid(f"access token rejected: {error}") from None
        if claims["exp"] > key.expires_at + self._leeway:
            raise _invalid("access token outlives its signing key")
        # A leaked key must not mint long-lived tokens: no token lives longer than allowed.
        if claims["exp"] - claims["iat"] > self._max_lifetime:
            raise _invalid("access token lifetime is longer than allowed")
        return claims

    async def _trusted_key(self, key_id: str) -> TrustedKey:
        fetches_seen = self._fetches
        if time.monotonic() - self._fetched_at > self._refresh_interval:
            self._refresh_in_background(fetches_seen)
        if key_id not in self._keys and key_id not in self._revocations.key_ids:
            await self._refetch(fetches_seen, wait=True)  # perhaps a key newer than the cache
        if key_id in self._revocations.key_ids:
            raise _revoked("the key that signed this access token was revoked")
        if key_id in self._keys:
            # A retired key needs no check of its own: no token it signed may outlive it.
            return self._keys[key_id]
        if self._last_fetch_failed:
            raise unavailable("KEYS_UNAVAILABLE", "token verification keys are unavailable")
        raise _invalid("access token signed by an unknown key")

    def _refresh_in_background(self, fetches_seen: int) -> None:
        """Refreshes an old key set without making calls wait: they go on with the cached
        keys, which matters most while the auth service is slow or down."""
        if self._lock.locked() or (self._refresh is not None and not self._refresh.done()):
            return
        self._refresh = asyncio.create_task(  # not bound by the deadline of the call that saw it
            self._refetch(fetches_seen, wait=False), context=contextvars.Context()
        )

    async def _refetch(self, fetches_seen: int, *, wait: bool) -> None:
        """Fetches the key set once for every caller waiting here, at most once per interval;
        `wait=False` skips the fetch rather than wait for the interval to pass."""
        async with self._lock:
            if self._fetches != fetches_seen:
                return  # fetched since this caller looked: coalesce
            delay = self._attempted_at + self._min_refetch_interval - time.monotonic()
            if delay > 0 and not wait:
                return
            if delay > 0:
                await asyncio.sleep(delay)
            await self._fetch_once()

    async def _fetch_once(self) -> None:
        """One fetch, with the lock held."""
        self._attempted_at = time.monotonic()
        try:
            await self._fetch()
        finally:
            # Counted once done, so that callers who arrived meanwhile use this fetch.
            self._fetches += 1

    async def _fetch(self) -> None:
        """Fetches keys, then revocations, and puts both in force together (a revoked key
        leaves the key set as it joins the revocations); what cannot be fetched stays."""
        try:
            published = await self._key_source()
        except Exception as error:
            self._last_fetch_failed = True
            log.warning("could not fetch token verification keys", extra={"error": repr(error)})
            return
        revocations = self._revocations
        if self._revocation_source is not None:
            try:
                revocations = await self._revocation_source()
            except Exception as error:
                log.warning("could not fetch token revocations", extra={"error": repr(error)})
        self._keys, self._revocations = trusted_keys(published), revocations
        self._fetched_at = time.monotonic()
        self._last_fetch_failed = False


def trusted_keys(published: Iterable[auth_pb2.PublicKey]) -> dict[str, TrustedKey]:
    """The published keys that are usable, by key id; unusable ones are logged and skipped."""
    keys = {}
    for public_key in published:
        try:
            keys[public_key.key_id] = _parse_public_key(public_key)
        except ValueError as error:
            log.warning(
                "ignoring a published key", extra={"key_id": public_key.key_id, "error": str(error)}
            )
    return keys


def _parse_public_key(public_key: auth_pb2.PublicKey) -> TrustedKey:
    key_type = KEY_TYPES.get(public_key.algorithm)
    if key_type is None:
        raise ValueError(f"algorithm {public_key.algorithm!r} is not accepted")
    key = serialization.load_pem_public_key(public_key.public_key_pem.encode())
    if not isinstance(key, key_type):
        raise ValueError(f"key type does not match algorithm {public_key.algorithm}")
    expires_at = (
        public_key.expire_time.ToNanoseconds() / 1e9
        if public_key.HasField("expire_time")
        else math.inf
    )
    return TrustedKey(public_key.key_id, public_key.algorithm, key, expires_at)


def _unverified_header(token: str) -> dict[str, Any]:
    if len(token) > MAX_TOKEN_LENGTH:
        raise _invalid("access token too long")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise _invalid("access token is not a JWT") from None
    if header.get("typ") != TOKEN_TYPE:
        raise _invalid(f"token type must be {TOKEN_TYPE}")
    if not isinstance(header.get("kid"), str) or not header["kid"]:
        raise _invalid("access token names no key")
    return header


def _principal(claims: dict[str, Any]) -> Principal:
    subject, token_id, scope = claims["sub"], claims["jti"], claims.get("scope", "")
    session_id = claims.get("sid")
    if not (isinstance(subject, str) and subject and isinstance(token_id, str) and token_id):
        raise _invalid("access token has a malformed sub or jti")
    if not isinstance(scope, str):
        raise _invalid("access token scope must be a string")
    if session_id is not None and not isinstance(session_id, str):
        raise _invalid("access token sid must be a string")
    return Principal(
        subject=subject, scopes=frozenset(scope.split()), token_id=token_id, session_id=session_id
    )


def _invalid(message: str) -> ServiceError:
    return unauthenticated("INVALID_TOKEN", message)


def _revoked(message: str) -> ServiceError:
    return unauthenticated("TOKEN_REVOKED", message)


def grpc_key_source(channel: grpc.aio.Channel, timeout_seconds: float = 5.0) -> KeySource:
    """A key source that asks the auth service behind `channel` for its public keys."""
    stub = auth_pb2_grpc.AuthServiceStub(channel)

    async def fetch() -> Sequence[auth_pb2.PublicKey]:
        response = await stub.GetPublicKeys(
            auth_pb2.GetPublicKeysRequest(), timeout=timeout_seconds
        )
        return list(response.keys)

    return fetch


def grpc_revocation_source(
    channel: grpc.aio.Channel, timeout_seconds: float = 5.0
) -> RevocationSource:
    """A revocation source that asks the auth service behind `channel` (GetRevocations)."""
    stub = auth_pb2_grpc.AuthServiceStub(channel)

    async def fetch() -> Revocations:
        response = await stub.GetRevocations(
            auth_pb2.GetRevocationsRequest(), timeout=timeout_seconds
        )
        return Revocations(
            session_ids=frozenset(response.session_ids),
            subjects=frozenset(response.subjects),
            key_ids=frozenset(response.key_ids),
        )

    return fetch


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The token of the call's `authorization: Bearer <token>` metadata. Two `authorization`
    entries are refused: proxies and servers may disagree on which one counts."""
    values = [value for key, value in metadata or () if key == "authorization"]
    if len(values) > 1:
        raise _invalid("send exactly one authorization header")
    for value in values:
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    raise unauthenticated("MISSING_TOKEN", "send `authorization: Bearer <access token>`")
