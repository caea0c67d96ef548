"""Property-based fuzzing of every RPC of both services through real gRPC calls.

RPCs are discovered from the service descriptors, so new ones are fuzzed without a change
here. Each example sends random and extreme values, raw bytes that may not be a message,
garbage or real tokens and page tokens. Every answer must be OK or a documented status with
an ErrorInfo whose reason the README or docs/ document, never UNKNOWN or INTERNAL; afterwards
both servers still serve and the ledger invariants hold.

`make test` runs a few examples per RPC (FUZZ_EXAMPLES, default 8); `make fuzz` runs many.
"""

import os
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as protobuf_descriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auth_service.admin import create_service_account
from shared.errors import error_info
from shared.gen.auth.v1 import auth_pb2, auth_pb2_grpc
from shared.gen.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from tests.auth_helpers import PASSWORD, logged_in_user, login, register, service_token
from tests.fuzzing import metadata, requests_for
from tests.service_pair import ServicePair, service_pair
from tests.wallet_helpers import Caller, new_key
from wallet_service.admin import check_invariants

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "8"))
SERVICES = [
    auth_pb2.DESCRIPTOR.services_by_name["AuthService"],
    wallet_pb2.DESCRIPTOR.services_by_name["WalletService"],
]
METHODS = [method for service in SERVICES for method in service.methods]
ROOT = Path(__file__).resolve().parent.parent
# What a fuzzed call may answer besides OK: each with an ErrorInfo. Never UNKNOWN, INTERNAL,
# UNAVAILABLE or DEADLINE_EXCEEDED: nothing here should break or stall a service.
EXPECTED_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
}


def documented_reasons() -> set[str]:
    """Every UPPER_SNAKE word in the README and docs/: the reasons a client is told about."""
    text = "".join(path.read_text() for path in [ROOT / "README.md", *ROOT.glob("docs/*.md")])
    return set(re.findall(r"`([A-Z][A-Z0-9_]+)`", text))


REASONS = documented_reasons()


@dataclass
class Target:
    pair: ServicePair
    known: dict[str, list[str]]  # real values by field name ending (see tests/fuzzing.py)
    tokens: list[str]  # access tokens of every kind of caller


@pytest.fixture(scope="module")
async def target(database_server_url: str) -> AsyncIterator[Target]:
    async with service_pair(database_server_url) as pair:
        yield await _populate(pair)


async def _populate(pair: ServicePair) -> Target:
    """Identities, wallets, movements and tokens whose values the fuzzer mixes in."""
    # Their passwords are not among the values the fuzzer knows: their tokens stay valid.
    owner_user, owner_tokens = await _user_with_unknown_password(pair.auth_channel)
    other_user, other_tokens = await _user_with_unknown_password(pair.auth_channel)
    stub = wallet_pb2_grpc.WalletServiceStub(pair.wallet_channel)
    owner = Caller(stub, owner_tokens.access_token)
    other = Caller(stub, other_tokens.access_token)
    payments = Caller(
        stub, await service_token(pair.auth_channel, pair.database_url, ["wallet:credit"])
    )
    admin = Caller(
        stub, await service_token(pair.auth_channel, pair.database_url, ["wallet:admin"])
    )
    client_id, secret = await create_service_account(pair.database_url, "fuzz", ["wallet:credit"])
    wallets = [(await owner.create_wallet()).id, (await other.create_wallet()).id]
    credited = await payments.credit(wallets[0], 10_000)
    await owner.transfer(wallets[0], wallets[1], 100)
    await owner.debit(wallets[0], 1)
    holds = [(await owner.create_hold(wallets[0], 10)).hold.id for _ in range(2)]
    history = await owner.call(
        "ListTransactions", wallet_pb2.ListTransactionsRequest(wallet_id=wallets[0], page_size=1)
    )
    listed = await owner.call("ListWallets", wallet_pb2.ListWalletsRequest(page_size=1))
    # A user whose password and refresh token the fuzzer may use (and change, and end).
    spare_user, spare_tokens = await logged_in_user(pair.auth_channel)
    tokens = [owner.token, other.token, payments.token, admin.token]
    known = {
        "wallet_id": wallets,
        "transaction_id": [credited.transaction.id],
        "page_token": [history.next_page_token, listed.next_page_token],
        "email": [owner_user.email, other_user.email, spare_user.email],
        "password": [PASSWORD, "another passphrase"],
        "refresh_token": [spare_tokens.refresh_token],
        "client_id": [client_id],
        "client_secret": [secret],
        "currency": ["EUR", "USD", "JPY"],
        "idempotency_key": [new_key(), "replayed-key"],
        "hold_id": holds,
        "reason": ["compliance review"],
    }
    # Any other string field (one added later) draws from all of them.
    known[""] = [value for values in known.values() for value in values]
    return Target(pair, known, tokens)


async def _user_with_unknown_password(channel: grpc.aio.Channel) -> tuple[Any, Any]:
    password = secrets.token_urlsafe()
    user = await register(channel, password=password)
    return user, (await login(channel, user.email, password)).tokens


async def _call(channel: grpc.aio.Channel, method: Any, body: bytes, call_metadata: Any) -> None:
    path = f"/{method.containing_service.full_name}/{method.name}"
    if method.server_streaming:
        try:
            async for _ in channel.unary_stream(path)(body, metadata=call_metadata, timeout=2):
                break  # a stream may go on for ever: its first answer will do
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
            # Accepted and still open (an idle WatchEvents waits for events): an answer too.
        return
    await channel.unary_unary(path)(body, metadata=call_metadata, timeout=10)


def _check_answer(
    error: grpc.aio.AioRpcError, domain: str, body: bytes, limit: int, reasons: set[str]
) -> None:
    if len(body) > limit:  # refused by gRPC itself, before the service sees it
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
        return
    assert error.code() in EXPECTED_CODES, (error.code(), error.details())
    info = error_info(error)
    assert info is not None, f"no ErrorInfo: {error.code()} {error.details()}"
    assert info.domain == domain, info
    assert info.reason in reasons, f"undocumented reason {info.reason}"


@pytest.mark.parametrize("method", METHODS, ids=lambda method: method.full_name)
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_every_answer_is_documented(
    target: Target, method: protobuf_descriptor.MethodDescriptor, data: st.DataObject
) -> None:
    service = method.containing_service.full_name
    auth = service == SERVICES[0].full_name
    channel = target.pair.auth_channel if auth else target.pair.wallet_channel
    config = target.pair.auth_settings if auth else target.pair.wallet_settings
    limit = config.grpc_max_receive_message_bytes
    body = data.draw(requests_for(method, target.known), label="body")
    call_metadata = data.draw(metadata(target.tokens), label="metadata")
    try:
        await _call(channel, method, body, call_metadata)
    except grpc.aio.AioRpcError as error:
        _check_answer(error, service, body, limit, REASONS)


async def test_after_fuzzing_both_servers_serve_and_the_ledger_holds(target: Target) -> None:
    pair = target.pair
    for channel in (pair.auth_channel, pair.wallet_channel):
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    auth = auth_pb2_grpc.AuthServiceStub(pair.auth_channel)
    await auth.GetPublicKeys(auth_pb2.GetPublicKeysRequest(), timeout=10)
    await register(pair.auth_channel)  # (logins from here may be throttled by now)
    owner = Caller(wallet_pb2_grpc.WalletServiceStub(pair.wallet_channel), target.tokens[0])
    await auth.GetMe(auth_pb2.GetMeRequest(), metadata=owner.metadata, timeout=10)
    listed = await owner.call("ListWallets", wallet_pb2.ListWalletsRequest(page_size=100))
    for wallet in listed.wallets:
        assert await owner.balance(wallet.id) == wallet.balance >= 0
    ok, report = await check_invariants(pair.database_url)
    assert ok, report
