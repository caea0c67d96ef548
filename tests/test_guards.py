"""The authentication and malformed-request guards on every kind of RPC, so that streaming
RPCs added later (the wallet's WatchEvents) are covered without a change: a real server with
a made-up service whose handlers are unary-stream and stream-unary."""

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from shared.authentication import AuthenticationInterceptor, current_principal
from shared.db import open_pool
from shared.gen.auth.v1 import auth_pb2
from shared.server import RunningServer, start_server
from shared.tokens import TokenVerifier, grpc_key_source
from tests.auth_helpers import bearer, register_and_login
from tests.grpc_errors import expect_status

DOMAIN = "test.v1.StreamService"
Request, Response = auth_pb2.LogoutRequest, auth_pb2.GetRevocationsResponse


async def watch(request: Any, context: Any) -> AsyncIterator[Any]:
    """Streams the caller's id once per character of the request's refresh_token."""
    for _ in request.refresh_token:
        yield Response(subjects=[current_principal().subject])


async def count(requests: Any, context: Any) -> Any:
    total = [message async for message in requests]
    return Response(subjects=[current_principal().subject] * len(total))


def add_stream_service(server: grpc.aio.Server) -> None:
    handlers = {
        "Watch": grpc.unary_stream_rpc_method_handler(
            watch, Request.FromString, Response.SerializeToString
        ),
        "Count": grpc.stream_unary_rpc_method_handler(
            count, Request.FromString, Response.SerializeToString
        ),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(DOMAIN, handlers)])


@pytest.fixture
async def stream_server(
    auth_channel: grpc.aio.Channel, database_url: str
) -> AsyncIterator[RunningServer]:
    verifier = TokenVerifier(
        grpc_key_source(auth_channel), issuer="wallet-system-auth", audience="wallet-system"
    )
    pool = await open_pool(database_url, min_size=1, max_size=1, name="stream-test")
    running = await start_server(
        service_name=DOMAIN,
        add_servicer=add_stream_service,
        address="127.0.0.1:0",
        pool=pool,
        interceptors=[AuthenticationInterceptor(verifier, DOMAIN, lambda method: True)],
    )
    yield running
    await running.stop(grace=0)


async def first_responses(call: Any) -> list[Any]:
    return [response async for response in call]


async def test_a_server_stream_needs_a_token_then_a_valid_body(
    stream_server: RunningServer, auth_channel: grpc.aio.Channel
) -> None:
    user_id, token = await register_and_login(auth_channel)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stream_server.port}") as channel:
        typed = channel.unary_stream(
            f"/{DOMAIN}/Watch", Request.SerializeToString, Response.FromString
        )
        raw = channel.unary_stream(f"/{DOMAIN}/Watch")
        await expect_status(
            grpc.StatusCode.UNAUTHENTICATED,
            DOMAIN,
            "MISSING_TOKEN",
            first_responses(raw(b"\xff\xff")),
        )
        await expect_status(
            grpc.StatusCode.INVALID_ARGUMENT,
            DOMAIN,
            "MALFORMED_REQUEST",
            first_responses(raw(b"\xff\xff", metadata=bearer(token))),
        )
        responses = await first_responses(
            typed(Request(refresh_token="abc"), metadata=bearer(token))
        )
        assert [list(response.subjects) for response in responses] == [[user_id]] * 3


async def test_a_client_stream_needs_a_token(
    stream_server: RunningServer, auth_channel: grpc.aio.Channel
) -> None:
    user_id, token = await register_and_login(auth_channel)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stream_server.port}") as channel:
        call = channel.stream_unary(
            f"/{DOMAIN}/Count", Request.SerializeToString, Response.FromString
        )
        await expect_status(
            grpc.StatusCode.UNAUTHENTICATED,
            DOMAIN,
            "MISSING_TOKEN",
            call(iter([Request(), Request()])),
        )
        response = await call(iter([Request(), Request()]), metadata=bearer(token))
        assert list(response.subjects) == [user_id, user_id]
