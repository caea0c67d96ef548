"""Hostile requests (issue 8, findings 1, 2, 3, 9 and 11): each answers a documented status
with an ErrorInfo reason, never UNKNOWN or INTERNAL, and costs the service next to nothing."""

import asyncio
import base64
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as protobuf_descriptor
from prometheus_client import REGISTRY

from auth_service import passwords
from shared.errors import error_info
from shared.gen.auth.v1 import auth_pb2
from shared.gen.wallet.v1 import wallet_pb2
from tests.auth_helpers import (
    PASSWORD,
    auth_stub,
    bearer,
    expect_auth_error,
    extra_auth_server,
    logged_in_user,
    register,
)
from tests.grpc_errors import expect_status
from tests.wallet_helpers import Caller, expect_error

INVALID = grpc.StatusCode.INVALID_ARGUMENT
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
AUTH = auth_pb2.DESCRIPTOR.services_by_name["AuthService"]
WALLET = wallet_pb2.DESCRIPTOR.services_by_name["WalletService"]
# Bodies that are not a message of any kind: a truncated tag, a truncated length.
NOT_A_MESSAGE = (b"\xff\xff\xff", b"\x0a\x10abc")


def not_a_message(method: protobuf_descriptor.MethodDescriptor) -> list[bytes]:
    """Bodies that `method` cannot decode: NOT_A_MESSAGE, and invalid UTF-8 in a string field."""
    bodies = list(NOT_A_MESSAGE)
    strings = [
        field
        for field in method.input_type.fields
        if field.type == protobuf_descriptor.FieldDescriptor.TYPE_STRING
    ]
    if strings:
        bodies.append(bytes([strings[0].number << 3 | 2, 2]) + b"\xff\xfe")
    return bodies


def raw_call(channel: grpc.aio.Channel, method: protobuf_descriptor.MethodDescriptor) -> Any:
    """Calls `method` with a body of raw bytes, whatever it is."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    if method.server_streaming:
        call = channel.unary_stream(path)

        async def first_message(body: bytes, **kwargs: Any) -> Any:
            async for response in call(body, **kwargs):
                return response
            return None

        return first_message
    return channel.unary_unary(path)


def malformed_count(method: protobuf_descriptor.MethodDescriptor) -> float:
    path = f"/{method.containing_service.full_name}/{method.name}"
    value = REGISTRY.get_sample_value("grpc_server_malformed_requests_total", {"grpc_method": path})
    return value or 0.0


# --- 3: a body that is not a message -------------------------------------------------------


@pytest.mark.parametrize("method", list(WALLET.methods), ids=lambda method: method.name)
async def test_a_malformed_wallet_request_is_malformed_request_logged_and_counted(
    wallet_channel: grpc.aio.Channel,
    user: Caller,
    method: protobuf_descriptor.MethodDescriptor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = malformed_count(method)
    bodies = not_a_message(method)
    for body in bodies:
        error = await expect_error(
            INVALID,
            "MALFORMED_REQUEST",
            raw_call(wallet_channel, method)(body, metadata=user.metadata, timeout=10),
        )
        assert "Decode" not in (error.details() or "")  # no internals in the message
    assert malformed_count(method) == before + len(bodies)
    assert any(
        record.message == "malformed request" and record.method.endswith(method.name)  # type: ignore[attr-defined]
        for record in caplog.records
    )


@pytest.mark.parametrize("method", list(WALLET.methods), ids=lambda method: method.name)
async def test_a_malformed_wallet_request_without_a_token_is_unauthenticated_first(
    wallet_channel: grpc.aio.Channel, method: protobuf_descriptor.MethodDescriptor
) -> None:
    await expect_error(
        UNAUTHENTICATED,
        "MISSING_TOKEN",
        raw_call(wallet_channel, method)(NOT_A_MESSAGE[0], timeout=10),
    )


@pytest.mark.parametrize("method", list(AUTH.methods), ids=lambda method: method.name)
async def test_a_malformed_auth_request_is_malformed_request_after_any_token_check(
    auth_channel: grpc.aio.Channel, method: protobuf_descriptor.MethodDescriptor
) -> None:
    _, tokens = await logged_in_user(auth_channel)
    call = raw_call(auth_channel, method)
    if method.name in ("GetMe", "ChangePassword"):
        await expect_auth_error(
            UNAUTHENTICATED, "MISSING_TOKEN", call(NOT_A_MESSAGE[0], timeout=10)
        )
    for body in not_a_message(method):
        await expect_auth_error(
            INVALID,
            "MALFORMED_REQUEST",
            call(body, metadata=bearer(tokens.access_token), timeout=10),
        )


# --- 1: no request is big or slow enough to stall the auth service -------------------------


async def test_a_4_mb_login_is_refused_before_the_service_reads_it(
    auth_channel: grpc.aio.Channel,
) -> None:
    # U+FDFA grows 18-fold under NFKC: this used to freeze the event loop for seconds.
    request = auth_pb2.LoginRequest(email="a@example.com", password="\ufdfa" * 1_397_000)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await auth_stub(auth_channel).Login(request, timeout=30)
    assert raised.value.code() == RESOURCE_EXHAUSTED  # gRPC's own message size limit


async def test_a_password_longer_than_any_is_refused_without_hashing(
    auth_channel: grpc.aio.Channel, monkeypatch: pytest.MonkeyPatch
) -> None:
    user, tokens = await logged_in_user(auth_channel)
    checked: list[bytes] = []
    real_checkpw = passwords.bcrypt.checkpw

    def spying_checkpw(password: bytes, hashed: bytes) -> bool:
        checked.append(hashed)
        return real_checkpw(password, hashed)

    monkeypatch.setattr(passwords.bcrypt, "checkpw", spying_checkpw)
    too_long = "\ufdfa" * (passwords.MAX_LENGTH + 1)  # 3 KiB: under the message limit
    stub = auth_stub(auth_channel)
    await expect_auth_error(
        INVALID,
        "PASSWORD_TOO_LONG",
        stub.Login(auth_pb2.LoginRequest(email=user.email, password=too_long)),
    )
    await expect_auth_error(
        INVALID,
        "PASSWORD_TOO_LONG",
        stub.ChangePassword(
            auth_pb2.ChangePasswordRequest(current_password=too_long, new_password=PASSWORD),
            metadata=bearer(tokens.access_token),
        ),
    )
    assert checked == []


@pytest.fixture
async def one_worker_no_queue(database_url: str) -> AsyncIterator[grpc.aio.Channel]:
    """An auth server that hashes one password at a time (cost 12, a quarter second or more)
    and lets no other wait for it."""
    async with extra_auth_server(
        database_url, bcrypt_cost=12, password_hash_workers=1, password_hash_queue_size=0
    ) as channel:
        yield channel


async def test_password_work_beyond_the_queue_is_refused_as_server_busy(
    one_worker_no_queue: grpc.aio.Channel,
) -> None:
    results = await asyncio.gather(
        *(register(one_worker_no_queue) for _ in range(4)), return_exceptions=True
    )
    registered = [result for result in results if isinstance(result, auth_pb2.User)]
    refusals = [result for result in results if isinstance(result, grpc.aio.AioRpcError)]
    assert len(registered) + len(refusals) == len(results), results
    assert registered and refusals
    for error in refusals:
        info = error_info(error)
        assert (error.code(), info and info.reason) == (RESOURCE_EXHAUSTED, "SERVER_BUSY")
    # And the service answers at once while its one worker hashes.
    await auth_stub(one_worker_no_queue).GetPublicKeys(auth_pb2.GetPublicKeysRequest())


# --- 2: garbage page tokens ----------------------------------------------------------------


async def test_a_deeply_nested_page_token_is_invalid_page_token(user: Caller) -> None:
    """It used to make json.loads raise RecursionError: INTERNAL, with a logged traceback."""
    wallet_id = (await user.create_wallet()).id
    nested = base64.urlsafe_b64encode(b"[" * 979).decode()
    for rpc, request in (
        ("ListWallets", wallet_pb2.ListWalletsRequest(page_token=nested)),
        (
            "ListTransactions",
            wallet_pb2.ListTransactionsRequest(wallet_id=wallet_id, page_token=nested),
        ),
    ):
        await expect_error(INVALID, "INVALID_PAGE_TOKEN", user.call(rpc, request))


async def test_a_page_token_with_a_changed_cursor_is_refused(user: Caller) -> None:
    for currency in ("EUR", "USD", "GBP"):
        await user.create_wallet(currency)
    page = await user.call("ListWallets", wallet_pb2.ListWalletsRequest(page_size=1))
    payload, signature = page.next_page_token.split(".")
    content = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    changed = base64.urlsafe_b64encode(content.replace(b'"c": ["', b'"c": ["1')).decode()
    for token in (f"{changed.rstrip('=')}.{signature}", payload, f"{payload}.", "x" * 600):
        await expect_error(
            INVALID,
            "INVALID_PAGE_TOKEN",
            user.call("ListWallets", wallet_pb2.ListWalletsRequest(page_token=token)),
        )


# --- 11: headers ---------------------------------------------------------------------------


async def test_two_authorization_headers_are_refused(
    user: Caller, auth_channel: grpc.aio.Channel
) -> None:
    _, tokens = await logged_in_user(auth_channel)
    for metadata in (
        (("authorization", "Basic eA=="), ("authorization", f"Bearer {user.token}")),
        (("authorization", f"Bearer {user.token}"), ("authorization", f"Bearer {user.token}")),
    ):
        await expect_error(
            UNAUTHENTICATED,
            "INVALID_TOKEN",
            user.stub.ListWallets(wallet_pb2.ListWalletsRequest(), metadata=metadata),
        )
    await expect_auth_error(
        UNAUTHENTICATED,
        "INVALID_TOKEN",
        auth_stub(auth_channel).GetMe(
            auth_pb2.GetMeRequest(),
            metadata=(("authorization", "Basic eA=="), *bearer(tokens.access_token)),
        ),
    )


async def _echoed_request_id(channel: grpc.aio.Channel, request_id: str) -> str:
    call = auth_stub(channel).GetPublicKeys(
        auth_pb2.GetPublicKeysRequest(), metadata=(("x-request-id", request_id),)
    )
    await call
    echoed = dict(await call.initial_metadata())["x-request-id"]
    return echoed if isinstance(echoed, str) else echoed.decode()


async def test_a_sane_request_id_is_echoed_and_an_outsized_one_replaced(
    auth_channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    assert await _echoed_request_id(auth_channel, "trace-4bf92f3577b34da6") == (
        "trace-4bf92f3577b34da6"
    )
    huge = "r" * 7000
    with caplog.at_level(logging.INFO):
        echoed = await _echoed_request_id(auth_channel, huge)
    assert echoed != huge and len(echoed) <= 64
    assert all(huge not in record.getMessage() for record in caplog.records)
    assert all(getattr(record, "request_id", "") != huge for record in caplog.records)
    for odd in ("has space", "semi;colon", "<script>", "x" * 65):
        assert await _echoed_request_id(auth_channel, odd) != odd


async def test_oversized_metadata_is_refused_by_grpc(auth_channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await auth_stub(auth_channel).GetPublicKeys(
            auth_pb2.GetPublicKeysRequest(), metadata=(("x-padding", "p" * 10_000),)
        )
    assert raised.value.code() == RESOURCE_EXHAUSTED


async def test_nul_bytes_in_wallet_strings_are_documented_refusals(user: Caller) -> None:
    wallet_id = (await user.create_wallet()).id
    await expect_error(INVALID, "UNSUPPORTED_CURRENCY", user.create_wallet("E\x00R"))
    await expect_error(
        INVALID,
        "INVALID_IDEMPOTENCY_KEY",
        user.debit(wallet_id, 1, key="key\x00"),
    )
    await expect_status(
        INVALID,
        "wallet.v1.WalletService",
        "INVALID_WALLET_ID",
        user.call("GetWallet", wallet_pb2.GetWalletRequest(wallet_id="\x00")),
    )
