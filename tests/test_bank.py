"""A short run of the bank workload (tests/bank.py) against the session's servers, with the
faults that need no private server: clients cancelling their own calls after 1-20 ms, and every
connection to the test database terminated each second. `make soak` runs it for minutes with
harder faults (tests/soak.py)."""

import collections

import pytest

from shared.server import RunningServer
from tests.bank import REFUSED, Bank, BankConfig
from tests.faults import Faults, kill_backends

pytestmark = pytest.mark.bank

LOAD_SECONDS = 8


async def test_the_books_balance_under_short_deadlines_cancels_and_killed_connections(
    auth_server: RunningServer, wallet_server: RunningServer, database_url: str
) -> None:
    config = BankConfig(cancel_share=0.2, snapshot_interval=1.0)
    bank = await Bank.open(
        config, f"127.0.0.1:{auth_server.port}", [f"127.0.0.1:{wallet_server.port}"], database_url
    )
    faults = Faults()
    try:
        async with faults.every(1.0, kill_backends(database_url, faults)):
            await bank.load(LOAD_SECONDS)
        await bank.settle(20)
        report = await bank.check()
    finally:
        await bank.close()
        # Later tests share these servers: drop the pooled connections the faults broke.
        for server in (auth_server, wallet_server):
            await server.pool.check()
    print(f"{report.summary()}\nfaults: {faults.summary()}")

    if not report.passed:
        pytest.fail(report.summary(), pytrace=False)
    # The run did what it claims: faults hit, retries of unclear answers were acknowledged,
    # refusals happened, snapshots were checked.
    answers = collections.Counter(answer for op in report.operations for answer in op.attempts)
    assert faults.counts["connections terminated"] > 0
    assert answers["OK"] > 100 and answers[REFUSED] > 0 and answers["CANCELLED"] > 0
    retried = [op for op in report.operations if op.outcome == "applied" and len(op.attempts) > 1]
    assert len(retried) > 10
    assert report.snapshots > 0
