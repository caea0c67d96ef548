"""The wallet's own metrics, scraped as Prometheus text: money moved by type and currency,
hold changes by status, pool use and open event streams."""

import asyncio

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shared.gen.wallet.v1 import wallet_pb2
from tests.wallet_helpers import Caller


def scraped() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition text, by name and labels."""
    text = generate_latest(REGISTRY).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_money_moved_and_hold_changes_are_counted_after_commit(
    user: Caller, payments: Caller
) -> None:
    before = scraped()
    wallet_id = (await user.create_wallet("CHF")).id
    await payments.credit(wallet_id, 700)
    await user.debit(wallet_id, 200)
    hold = (await user.create_hold(wallet_id, 100)).hold
    await user.capture(hold.id, 60)
    await user.void((await user.create_hold(wallet_id, 10)).hold.id)
    after = scraped()

    def moved(name: str, type_: str) -> float:
        labels = {"type": type_, "currency": "CHF"}
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("wallet_movements_total", "credit") == 1
    assert moved("wallet_moved_minor_units_total", "credit") == 700
    assert moved("wallet_moved_minor_units_total", "debit") == 200
    assert moved("wallet_moved_minor_units_total", "capture") == 60
    for status, count in (("held", 2), ("captured", 1), ("voided", 1)):
        name = "wallet_hold_changes_total"
        assert value(after, name, status=status) - value(before, name, status=status) == count


async def test_pool_use_and_open_event_streams_are_gauged(admin: Caller) -> None:
    await asyncio.sleep(0.1)  # the server sampled its pool as it started
    call = admin.stub.WatchEvents(wallet_pb2.WatchEventsRequest(), metadata=admin.metadata)
    await asyncio.sleep(0.5)
    assert value(scraped(), "wallet_event_streams") >= 1
    call.cancel()
    await asyncio.sleep(0.3)
    samples = scraped()
    assert (
        value(samples, "db_pool_connections", state="idle")
        + value(samples, "db_pool_connections", state="in_use")
        >= 1
    )
