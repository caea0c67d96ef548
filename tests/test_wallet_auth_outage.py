"""The wallet while the auth service is down: tokens it already trusts keep working, and tokens
signed by a new key work again soon after auth returns (no long reconnection backoff)."""

import asyncio
import contextlib
import time
import uuid

import grpc
import pytest

from auth_service.admin import rotate_keys
from auth_service.config import AuthSettings
from auth_service.server import start as start_auth
from shared.gen.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from tests.auth_helpers import login, register
from tests.test_auth_verifier import claims, new_signer
from tests.wallet_helpers import Caller
from wallet_service.config import WalletSettings
from wallet_service.server import start as start_wallet

# Long enough for grpc's default backoff to have grown past several seconds.
OUTAGE_SECONDS = 11.5


@pytest.mark.slow
async def test_after_an_auth_outage_new_keys_are_trusted_within_seconds(
    auth_settings: AuthSettings, wallet_settings: WalletSettings
) -> None:
    auth = await start_auth(auth_settings)
    port = auth.port
    wallet = await start_wallet(
        wallet_settings.model_copy(update={"auth_address": f"127.0.0.1:{port}"})
    )
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as auth_channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{wallet.port}") as wallet_channel,
        ):
            stub = wallet_pb2_grpc.WalletServiceStub(wallet_channel)
            email = f"outage-{uuid.uuid4().hex[:8]}@example.com"
            await register(auth_channel, email)
            user = Caller(stub, (await login(auth_channel, email)).tokens.access_token)
            await user.call("ListWallets", wallet_pb2.ListWalletsRequest())

            await auth.stop(grace=0)
            # While auth is down: tokens with unknown key ids make the wallet try to reach it,
            # so the channel backs off as it would under real traffic.
            stranger = new_signer()
            ended = time.monotonic() + OUTAGE_SECONDS
            while time.monotonic() < ended:
                forged = Caller(stub, stranger.sign(claims()))
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await forged.call("ListWallets", wallet_pb2.ListWalletsRequest())
                # A token it already trusts keeps working without auth.
                await user.call("ListWallets", wallet_pb2.ListWalletsRequest())
                await asyncio.sleep(0.2)

            auth = await start_auth(auth_settings.model_copy(update={"auth_port": port}))
            back = time.monotonic()
            await rotate_keys(auth_settings.database_url)
            # A channel of its own (not sharing the wallet's backed-off connection).
            async with grpc.aio.insecure_channel(
                f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
            ) as new_auth_channel:
                tokens = (await login(new_auth_channel, email)).tokens
            fresh = Caller(stub, tokens.access_token)
            while True:
                try:
                    await fresh.call("ListWallets", wallet_pb2.ListWalletsRequest())
                    break
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
                    assert time.monotonic() - back < 30
                    await asyncio.sleep(0.1)
            # grpc's default backoff would still be waiting seconds longer.
            assert time.monotonic() - back < 3.0
    finally:
        await wallet.stop(grace=0)
        await auth.stop(grace=0)
