"""CreateWallet, GetWallet, ListWallets and the authentication interceptor."""

import uuid

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared.gen.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from tests.wallet_helpers import Caller, expect_error

NOT_FOUND = grpc.StatusCode.NOT_FOUND
INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def test_create_wallet_normalises_the_currency_and_starts_at_zero(user: Caller) -> None:
    wallet = await user.create_wallet(" eur ")
    assert wallet.currency == "EUR"
    assert wallet.currency_exponent == 2
    assert wallet.balance == 0
    assert wallet.user_id == user.subject
    uuid.UUID(wallet.id)
    assert wallet.create_time.seconds > 0


async def test_currency_exponent_follows_iso_4217(user: Caller) -> None:
    assert (await user.create_wallet("JPY")).currency_exponent == 0
    assert (await user.create_wallet("BHD")).currency_exponent == 3


async def test_a_second_wallet_in_one_currency_is_refused(user: Caller) -> None:
    await user.create_wallet("USD")
    await expect_error(grpc.StatusCode.ALREADY_EXISTS, "WALLET_EXISTS", user.create_wallet("usd"))


async def test_two_users_may_each_have_a_wallet_in_one_currency(
    user: Caller, other_user: Caller
) -> None:
    first = await user.create_wallet("GBP")
    second = await other_user.create_wallet("GBP")
    assert first.id != second.id


async def test_unknown_or_unusable_currencies_are_refused(user: Caller) -> None:
    for code in ("ABC", "XAU", "XXX", "", "EURO", "€"):
        await expect_error(INVALID, "UNSUPPORTED_CURRENCY", user.create_wallet(code))


async def test_get_wallet_returns_the_owners_wallet(user: Caller) -> None:
    created = await user.create_wallet()
    response = await user.call("GetWallet", wallet_pb2.GetWalletRequest(wallet_id=created.id))
    assert response.wallet == created


async def test_another_users_wallet_is_not_found_rather_than_forbidden(
    user: Caller, other_user: Caller
) -> None:
    wallet = await user.create_wallet()
    await expect_error(
        NOT_FOUND,
        "WALLET_NOT_FOUND",
        other_user.call("GetWallet", wallet_pb2.GetWalletRequest(wallet_id=wallet.id)),
    )
    await expect_error(
        NOT_FOUND,
        "WALLET_NOT_FOUND",
        other_user.call("GetWallet", wallet_pb2.GetWalletRequest(wallet_id=str(uuid.uuid4()))),
    )


async def test_a_malformed_wallet_id_is_an_invalid_argument(user: Caller) -> None:
    await expect_error(
        INVALID,
        "INVALID_WALLET_ID",
        user.call("GetWallet", wallet_pb2.GetWalletRequest(wallet_id="not-a-uuid")),
    )


async def test_admin_may_read_any_wallet(user: Caller, admin: Caller) -> None:
    wallet = await user.create_wallet()
    response = await admin.call("GetWallet", wallet_pb2.GetWalletRequest(wallet_id=wallet.id))
    assert response.wallet.id == wallet.id


async def test_list_wallets_pages_through_the_callers_wallets_only(
    user: Caller, other_user: Caller
) -> None:
    created = [await user.create_wallet(code) for code in ("EUR", "USD", "JPY")]
    await other_user.create_wallet("EUR")
    first = await user.call("ListWallets", wallet_pb2.ListWalletsRequest(page_size=2))
    assert len(first.wallets) == 2 and first.next_page_token
    second = await user.call(
        "ListWallets",
        wallet_pb2.ListWalletsRequest(page_size=2, page_token=first.next_page_token),
    )
    assert second.next_page_token == ""
    listed = [wallet.id for wallet in [*first.wallets, *second.wallets]]
    assert listed == [wallet.id for wallet in created]  # oldest first, each once


async def test_list_wallets_rejects_bad_paging(user: Caller, other_user: Caller) -> None:
    await expect_error(
        INVALID,
        "INVALID_PAGE_SIZE",
        user.call("ListWallets", wallet_pb2.ListWalletsRequest(page_size=-1)),
    )
    await expect_error(
        INVALID,
        "INVALID_PAGE_TOKEN",
        user.call("ListWallets", wallet_pb2.ListWalletsRequest(page_token="garbage!")),
    )
    for code in ("EUR", "USD"):
        await user.create_wallet(code)
    page = await user.call("ListWallets", wallet_pb2.ListWalletsRequest(page_size=1))
    # Another caller cannot reuse the token.
    await expect_error(
        INVALID,
        "INVALID_PAGE_TOKEN",
        other_user.call(
            "ListWallets", wallet_pb2.ListWalletsRequest(page_token=page.next_page_token)
        ),
    )


async def test_calls_without_a_valid_token_are_unauthenticated(
    wallet_channel: grpc.aio.Channel,
) -> None:
    stub = wallet_pb2_grpc.WalletServiceStub(wallet_channel)
    request = wallet_pb2.ListWalletsRequest()
    for metadata in (
        (),
        (("authorization", "Bearer"),),
        (("authorization", "Basic dXNlcjpwYXNz"),),
        (("authorization", "Bearer not.a.jwt"),),
    ):
        try:
            await stub.ListWallets(request, metadata=metadata, timeout=10)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
        else:
            raise AssertionError(f"accepted {metadata}")


async def test_a_forged_token_is_unauthenticated(
    user: Caller, wallet_channel: grpc.aio.Channel
) -> None:
    header, payload, signature = user.token.split(".")
    forged = f"{header}.{payload}.{signature[:-4]}AAAA"
    stub = wallet_pb2_grpc.WalletServiceStub(wallet_channel)
    try:
        await stub.ListWallets(
            wallet_pb2.ListWalletsRequest(), metadata=(("authorization", f"Bearer {forged}"),)
        )
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    else:
        raise AssertionError("a forged signature was accepted")


async def test_health_needs_no_token(wallet_channel: grpc.aio.Channel) -> None:
    response = await health_pb2_grpc.HealthStub(wallet_channel).Check(
        health_pb2.HealthCheckRequest(), timeout=10
    )
    assert response.status == health_pb2.HealthCheckResponse.SERVING
