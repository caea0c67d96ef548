"""Login throttling per account and per client address, on a server with small limits and its
own database (the counts of other tests' logins from 127.0.0.1 must not leak in)."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from auth_service import passwords
from auth_service.throttle import (
    LoginThrottle,
    RegistrationThrottle,
    account_key,
    client_address,
)
from shared.db import open_pool
from shared.errors import ServiceError, error_info
from shared.gen.auth.v1 import auth_pb2
from tests.auth_helpers import (
    PASSWORD,
    auth_database,
    auth_stub,
    bearer,
    expect_auth_error,
    extra_auth_server,
    login,
    register,
    unique_email,
)

WINDOW_SECONDS = 2
PER_ACCOUNT = 3
PER_ADDRESS = 6
PER_TRUSTED_ADDRESS = 2
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture
async def throttled_channel(database_server_url: str) -> AsyncIterator[grpc.aio.Channel]:
    with auth_database(database_server_url) as url:
        async with extra_auth_server(
            url,
            login_throttle_window_seconds=WINDOW_SECONDS,
            login_max_failures_per_account=PER_ACCOUNT,
            login_max_failures_per_address=PER_ADDRESS,
            login_max_failures_per_trusted_address=PER_TRUSTED_ADDRESS,
        ) as channel:
            yield channel


async def fail_login(channel: grpc.aio.Channel, email: str) -> None:
    await expect_auth_error(
        UNAUTHENTICATED, "INVALID_CREDENTIALS", login(channel, email, "wrong password")
    )


async def test_an_account_is_throttled_after_its_failures_then_released(
    throttled_channel: grpc.aio.Channel,
) -> None:
    user = await register(throttled_channel)
    for _ in range(PER_ACCOUNT):
        await fail_login(throttled_channel, user.email)
    # Even the right password is refused now, without a password check.
    error = await expect_auth_error(
        RESOURCE_EXHAUSTED, "TOO_MANY_ATTEMPTS", login(throttled_channel, user.email)
    )
    info = error_info(error)
    assert info is not None
    assert 1 <= int(info.metadata["retry_after_seconds"]) <= WINDOW_SECONDS
    # Refused attempts do not push the window on: it lifts on time.
    await asyncio.sleep(WINDOW_SECONDS + 0.5)
    assert (await login(throttled_channel, user.email)).user.id == user.id


async def test_throttling_one_account_leaves_others_alone(
    throttled_channel: grpc.aio.Channel,
) -> None:
    victim, other = await register(throttled_channel), await register(throttled_channel)
    for _ in range(PER_ACCOUNT):
        await fail_login(throttled_channel, victim.email)
    await login(throttled_channel, other.email)


async def test_unknown_emails_are_throttled_like_known_ones(
    throttled_channel: grpc.aio.Channel,
) -> None:
    email = unique_email()
    for _ in range(PER_ACCOUNT):
        await fail_login(throttled_channel, email)
    await expect_auth_error(
        RESOURCE_EXHAUSTED, "TOO_MANY_ATTEMPTS", login(throttled_channel, email)
    )


async def test_an_address_is_throttled_after_failures_across_accounts(
    throttled_channel: grpc.aio.Channel,
) -> None:
    for _ in range(PER_ADDRESS):
        await fail_login(throttled_channel, unique_email())  # each account fails once only
    user = await register(throttled_channel)
    await expect_auth_error(
        RESOURCE_EXHAUSTED, "TOO_MANY_ATTEMPTS", login(throttled_channel, user.email)
    )


async def test_successful_logins_do_not_count(throttled_channel: grpc.aio.Channel) -> None:
    user = await register(throttled_channel)
    for _ in range(PER_ADDRESS + 2):
        await login(throttled_channel, user.email)
    for _ in range(PER_ACCOUNT):
        await fail_login(throttled_channel, user.email)


async def test_concurrent_guesses_cannot_slip_past_the_limit(
    throttled_channel: grpc.aio.Channel,
) -> None:
    user = await register(throttled_channel)
    guesses = PER_ADDRESS  # within the address limit: only the account's can refuse
    results = await asyncio.gather(
        *(login(throttled_channel, user.email, "wrong password") for _ in range(guesses)),
        return_exceptions=True,
    )
    codes = [result.code() for result in results if isinstance(result, grpc.aio.AioRpcError)]
    assert codes.count(UNAUTHENTICATED) == PER_ACCOUNT
    assert codes.count(RESOURCE_EXHAUSTED) == guesses - PER_ACCOUNT


async def test_change_password_guesses_count_against_the_account(
    throttled_channel: grpc.aio.Channel,
) -> None:
    user = await register(throttled_channel)
    access_token = (await login(throttled_channel, user.email)).tokens.access_token
    stub = auth_stub(throttled_channel)

    def change(current: str) -> object:
        return stub.ChangePassword(
            auth_pb2.ChangePasswordRequest(current_password=current, new_password="new password"),
            metadata=bearer(access_token),
        )

    for _ in range(PER_ACCOUNT):
        await expect_auth_error(UNAUTHENTICATED, "INVALID_CREDENTIALS", change("guess"))
    await expect_auth_error(RESOURCE_EXHAUSTED, "TOO_MANY_ATTEMPTS", change(PASSWORD))


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        ("ipv4:203.0.113.7:51234", "203.0.113.7"),
        ("ipv6:[2001:db8:1:2:3:4:5:6]:443", "2001:db8:1:2::/64"),
        ("ipv6:[2001:db8:1:2:ffff::9]:443", "2001:db8:1:2::/64"),
        ("ipv6:[::ffff:203.0.113.7]:443", "203.0.113.7"),
        ("unix:/tmp/socket", "unix:/tmp/socket"),
    ],
)
def test_client_address_ignores_the_port_and_groups_ipv6_by_64(peer: str, key: str) -> None:
    assert client_address(peer) == key


def test_an_absurdly_long_email_is_counted_under_a_short_key() -> None:
    assert account_key("ada@example.com") == "ada@example.com"
    long_key = account_key("x" * 1_000_000 + "@example.com")
    assert long_key.startswith("sha256:")
    assert len(long_key) == 71


@pytest.fixture
async def throttle_pool(database_server_url: str) -> AsyncIterator[Any]:
    """A pool on a database of its own, for LoginThrottle driven with made-up addresses."""
    with auth_database(database_server_url) as url:
        pool = await open_pool(url, min_size=1, max_size=2, name="throttle-test")
        try:
            yield pool
        finally:
            await pool.close()


def throttle_on(pool: Any, per_account: int) -> LoginThrottle:
    return LoginThrottle(
        pool,
        window_seconds=60,
        max_failures_per_account=per_account,
        max_failures_per_address=PER_ADDRESS,
        max_failures_per_trusted_address=PER_TRUSTED_ADDRESS,
        trusted_address_days=30,
    )


async def test_guesses_from_elsewhere_never_lock_the_owner_out(throttle_pool: Any) -> None:
    throttle = throttle_on(throttle_pool, PER_ACCOUNT)
    account, home, attacker = "ada@example.com", "198.51.100.7", "203.0.113.9"
    await throttle.succeeded(await throttle.attempt(account, home, trust_known_address=True))
    for _ in range(PER_ACCOUNT):  # failures: never forgiven
        await throttle.attempt(account, attacker, trust_known_address=True)
    for address in (attacker, "192.0.2.1"):  # the attacker, and any stranger
        with pytest.raises(ServiceError) as refused:
            await throttle.attempt(account, address, trust_known_address=True)
        assert refused.value.reason == "TOO_MANY_ATTEMPTS"
    # The owner's usual address still gets to try its password.
    await throttle.succeeded(await throttle.attempt(account, home, trust_known_address=True))


async def test_a_trusted_address_is_still_held_to_the_address_limit(throttle_pool: Any) -> None:
    throttle = throttle_on(throttle_pool, per_account=100)
    home = "198.51.100.8"
    await throttle.succeeded(
        await throttle.attempt("bob@example.com", home, trust_known_address=True)
    )
    for index in range(PER_ADDRESS):
        await throttle.attempt(f"guess-{index}@example.com", home, trust_known_address=True)
    with pytest.raises(ServiceError) as refused:
        await throttle.attempt("bob@example.com", home, trust_known_address=True)
    assert refused.value.reason == "TOO_MANY_ATTEMPTS"


# --- issue 8, finding 5: the trusted-address pass is no way around the limit ---------------


async def test_guesses_from_the_owners_usual_address_are_still_limited(
    throttled_channel: grpc.aio.Channel,
) -> None:
    """From the victim's usual address, 30 of 30 wrong guesses used to be evaluated."""
    user = await register(throttled_channel)
    await login(throttled_channel, user.email)  # 127.0.0.1 is now a trusted address
    evaluated = 0
    for _ in range(PER_ADDRESS - 1):
        try:
            await login(throttled_channel, user.email, "wrong password")
        except grpc.aio.AioRpcError as error:
            info = error_info(error)
            evaluated += info is not None and info.reason == "INVALID_CREDENTIALS"
    assert evaluated == max(PER_ACCOUNT, PER_TRUSTED_ADDRESS)


async def test_the_owners_usual_address_has_a_budget_of_its_own_past_the_account_limit(
    throttle_pool: Any,
) -> None:
    throttle = throttle_on(throttle_pool, PER_ACCOUNT)
    account, home, attacker = "eve-target@example.com", "198.51.100.9", "203.0.113.10"
    await throttle.succeeded(await throttle.attempt(account, home, trust_known_address=True))
    for _ in range(PER_ACCOUNT):
        await throttle.attempt(account, attacker, trust_known_address=True)
    # The account is at its limit: strangers are refused, the owner's address goes on ...
    for _ in range(PER_TRUSTED_ADDRESS):
        await throttle.attempt(account, home, trust_known_address=True)
    # ... within its own budget, after which it is refused too.
    with pytest.raises(ServiceError) as refused:
        await throttle.attempt(account, home, trust_known_address=True)
    assert refused.value.reason == "TOO_MANY_ATTEMPTS"


# --- issue 8, finding 4: registration is throttled -----------------------------------------


async def test_registration_is_throttled_per_address_taken_emails_included(
    database_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with auth_database(database_server_url) as url:
        async with extra_auth_server(url, register_max_per_address=3) as channel:
            known = await register(channel)
            await register(channel)
            # Probing for a registered email counts like any registration ...
            await expect_auth_error(
                grpc.StatusCode.ALREADY_EXISTS, "EMAIL_TAKEN", register(channel, known.email)
            )
            hashed: list[bytes] = []
            real_hashpw = passwords.bcrypt.hashpw
            monkeypatch.setattr(
                passwords.bcrypt,
                "hashpw",
                lambda password, salt: hashed.append(salt) or real_hashpw(password, salt),
            )
            # ... and past the limit both are refused before any password is hashed.
            for email in (known.email, unique_email()):
                error = await expect_auth_error(
                    RESOURCE_EXHAUSTED, "TOO_MANY_ATTEMPTS", register(channel, email)
                )
                info = error_info(error)
                assert info is not None and int(info.metadata["retry_after_seconds"]) > 0
            assert hashed == []


async def test_registration_is_throttled_in_total(throttle_pool: Any) -> None:
    throttle = RegistrationThrottle(
        throttle_pool, window_seconds=60, max_per_address=100, max_total=2
    )
    await throttle.attempt("198.51.100.20")
    await throttle.attempt("198.51.100.21")
    with pytest.raises(ServiceError) as refused:
        await throttle.attempt("198.51.100.22")  # a third address, over the total
    assert refused.value.reason == "TOO_MANY_ATTEMPTS"
