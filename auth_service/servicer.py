"""The AuthService RPC handlers: they speak in domain terms and leave SQL to the repository.

Every string is checked for length and shape before any expensive work (a database lookup,
a password hash); GetMe and ChangePassword get their caller from the authentication
interceptor (`shared.authentication`), which checks the access token first.
"""

import hmac
import uuid
from typing import Any

import psycopg_pool

from auth_service import repository as repo
from auth_service.keys import KeyStore
from auth_service.messages import user_message
from auth_service.models import User
from auth_service.passwords import PasswordHasher, check_policy, check_presented
from auth_service.revocations import RevocationList
from auth_service.sessions import IssuedRefreshToken, Sessions, end_all_sessions
from auth_service.throttle import LoginThrottle, RegistrationThrottle, account_key, client_address
from auth_service.tokens import AccessTokenIssuer, looks_like_secret, secret_hash
from auth_service.validation import looks_like_client_id, valid_display_name, valid_email
from shared.authentication import current_principal
from shared.errors import already_exists, permission_denied, unauthenticated
from shared.gen.auth.v1 import auth_pb2, auth_pb2_grpc
from shared.timestamps import to_timestamp

TOKEN_TYPE = "Bearer"
# The RPCs that need an access token (checked by the authentication interceptor).
TOKEN_METHODS = frozenset(
    f"/{auth_pb2.DESCRIPTOR.services_by_name['AuthService'].full_name}/{name}"
    for name in ("GetMe", "ChangePassword")
)


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(
        self,
        *,
        pool: psycopg_pool.AsyncConnectionPool[Any],
        passwords: PasswordHasher,
        keys: KeyStore,
        access_tokens: AccessTokenIssuer,
        sessions: Sessions,
        throttle: LoginThrottle,
        registrations: RegistrationThrottle,
        revocations: RevocationList,
        token_issuer: str,
    ) -> None:
        self._pool = pool
        self._passwords = passwords
        self._keys = keys
        self._access_tokens = access_tokens
        self._sessions = sessions
        self._throttle = throttle
        self._registrations = registrations
        self._revocations = revocations
        self._token_issuer = token_issuer

    async def Register(
        self, request: auth_pb2.RegisterRequest, context: Any
    ) -> auth_pb2.RegisterResponse:
        email = valid_email(request.email)
        check_policy(request.password)
        display_name = valid_display_name(request.display_name)
        # Each attempt costs a hash, and EMAIL_TAKEN tells that an email is registered.
        await self._registrations.attempt(client_address(context.peer()))
        password_hash = await self._passwords.hash(request.password)
        async with self._pool.connection() as conn:
            user = await repo.insert_user(conn, email, display_name, password_hash)
        if user is None:
            raise already_exists("EMAIL_TAKEN", "a user with this email already exists")
        return auth_pb2.RegisterResponse(user=user_message(user))

    async def Login(self, request: auth_pb2.LoginRequest, context: Any) -> auth_pb2.LoginResponse:
        email = valid_email(request.email)  # no other kind can be registered
        check_presented(request.password)
        user = await self._check_password(email, request.password, context, login=True)
        password_hash = user.password_hash
        if self._passwords.needs_rehash(password_hash):  # BCRYPT_COST changed since
            password_hash = await self._rehash(user, request.password)
        session = await self._sessions.start(user.id, password_hash)
        tokens = await self._token_pair(user.id, session)
        return auth_pb2.LoginResponse(tokens=tokens, user=user_message(user))

    async def RefreshToken(
        self, request: auth_pb2.RefreshTokenRequest, context: Any
    ) -> auth_pb2.RefreshTokenResponse:
        user_id, refresh_token = await self._sessions.rotate(request.refresh_token)
        return auth_pb2.RefreshTokenResponse(tokens=await self._token_pair(user_id, refresh_token))

    async def Logout(
        self, request: auth_pb2.LogoutRequest, context: Any
    ) -> auth_pb2.LogoutResponse:
        await self._sessions.end(request.refresh_token, all_sessions=request.all_sessions)
        return auth_pb2.LogoutResponse()

    async def GetMe(self, request: auth_pb2.GetMeRequest, context: Any) -> auth_pb2.GetMeResponse:
        return auth_pb2.GetMeResponse(user=user_message(await self._calling_user(context)))

    async def ChangePassword(
        self, request: auth_pb2.ChangePasswordRequest, context: Any
    ) -> auth_pb2.ChangePasswordResponse:
        caller = await self._calling_user(context)
        check_presented(request.current_password)
        check_policy(request.new_password)
        user = await self._check_password(
            caller.email, request.current_password, context, login=False
        )
        new_hash = await self._passwords.hash(request.new_password)
        async with self._pool.connection() as conn:
            await repo.update_password_hash(conn, user.id, new_hash)
            await end_all_sessions(conn, user.id)
        return auth_pb2.ChangePasswordResponse()

    async def IssueServiceToken(
        self, request: auth_pb2.IssueServiceTokenRequest, context: Any
    ) -> auth_pb2.IssueServiceTokenResponse:
        account = None
        if looks_like_client_id(request.client_id) and looks_like_secret(request.client_secret):
            async with self._pool.connection() as conn:
                account = await repo.enabled_service_account(conn, request.client_id)
        presented = secret_hash(request.client_secret)
        if account is None or not hmac.compare_digest(presented, account.secret_hash):
            raise unauthenticated("INVALID_CLIENT", "unknown client or wrong secret")
        access_token = await self._access_tokens.issue(account.client_id, account.scopes)
        return auth_pb2.IssueServiceTokenResponse(
            access_token=access_token.token,
            access_token_expire_time=to_timestamp(access_token.expires_at),
            scopes=account.scopes,
            token_type=TOKEN_TYPE,
        )

    async def GetPublicKeys(
        self, request: auth_pb2.GetPublicKeysRequest, context: Any
    ) -> auth_pb2.GetPublicKeysResponse:
        return auth_pb2.GetPublicKeysResponse(
            keys=await self._keys.public_keys(), issuer=self._token_issuer
        )

    async def GetRevocations(
        self, request: auth_pb2.GetRevocationsRequest, context: Any
    ) -> auth_pb2.GetRevocationsResponse:
        return await self._revocations.message()

    async def _check_password(
        self, email: str, password: str, context: Any, *, login: bool
    ) -> User:
        """The user if the password is right; throttled, and as slow for an unknown email."""
        attempt = await self._throttle.attempt(
            account_key(email), client_address(context.peer()), trust_known_address=login
        )
        async with self._pool.connection() as conn:
            user = await repo.user_by_email(conn, email)
        if not await self._passwords.verify(password, user.password_hash if user else None):
            raise unauthenticated("INVALID_CREDENTIALS", "wrong email or password")
        assert user is not None  # verify() is False without a hash
        await self._throttle.succeeded(attempt)
        return user

    async def _rehash(self, user: User, password: str) -> str:
        """Stores the password at the current cost; the hash in force afterwards."""
        new_hash = await self._passwords.hash(password)
        async with self._pool.connection() as conn:
            if await repo.replace_password_hash(conn, user.id, user.password_hash, new_hash):
                return new_hash
        # The password changed while this login hashed it: the checked one is stale.
        raise unauthenticated("INVALID_CREDENTIALS", "wrong email or password")

    async def _calling_user(self, context: Any) -> User:
        """The user whose access token came with the call."""
        principal = current_principal()
        user = None
        try:
            user_id = uuid.UUID(principal.subject)
        except ValueError:
            pass  # a service account's client id
        else:
            async with self._pool.connection() as conn:
                user = await repo.user_by_id(conn, user_id)
        if user is None:
            raise permission_denied("USER_TOKEN_REQUIRED", "this call needs a user's access token")
        return user

    async def _token_pair(
        self, user_id: uuid.UUID, refresh_token: IssuedRefreshToken
    ) -> auth_pb2.TokenPair:
        access_token = await self._access_tokens.issue(
            str(user_id), session_id=refresh_token.session_id
        )
        return auth_pb2.TokenPair(
            access_token=access_token.token,
            access_token_expire_time=to_timestamp(access_token.expires_at),
            refresh_token=refresh_token.token,
            refresh_token_expire_time=to_timestamp(refresh_token.expires_at),
            token_type=TOKEN_TYPE,
        )
