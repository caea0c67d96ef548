"""The revocation list (GetRevocations): what verifiers must stop trusting before the access
tokens naming it expire. Ended sessions (Logout, ChangePassword, refresh token reuse: the
`sid` claim), disabled service accounts (the `sub` claim) and revoked signing keys (`kid`).

Only entries younger than the access token lifetime plus a margin are listed: anything older
can have no unexpired token left, so the list stays small.
"""

from typing import Any

import psycopg_pool

from auth_service import repository as repo
from auth_service.keys import RETIREMENT_MARGIN_SECONDS
from shared.gen.auth.v1 import auth_pb2
from shared.tokens import Revocations


class RevocationList:
    def __init__(self, pool: psycopg_pool.AsyncConnectionPool[Any], access_token_ttl: int) -> None:
        self._pool = pool
        self._within = access_token_ttl + RETIREMENT_MARGIN_SECONDS

    async def current(self) -> Revocations:
        async with self._pool.connection() as conn, conn.transaction():
            return Revocations(
                session_ids=frozenset(await repo.revoked_sessions(conn, self._within)),
                subjects=frozenset(await repo.disabled_service_accounts(conn, self._within)),
                key_ids=frozenset(await repo.revoked_signing_keys(conn, self._within)),
            )

    async def message(self) -> auth_pb2.GetRevocationsResponse:
        revocations = await self.current()
        response = auth_pb2.GetRevocationsResponse(
            session_ids=sorted(revocations.session_ids),
            subjects=sorted(revocations.subjects),
            key_ids=sorted(revocations.key_ids),
        )
        response.list_time.GetCurrentTime()
        return response
