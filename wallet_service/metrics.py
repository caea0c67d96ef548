"""The wallet's own metrics, beside the per-RPC ones of shared/metrics.py: money moved by
type and currency, hold changes by status, pool use and event streams. Counted after commit,
so they count what happened, not what was tried. With several workers, prometheus_client's
multiprocess mode adds up every worker's counts (gauges: the sum over live workers)."""

import asyncio
import logging
from typing import Any

import psycopg_pool
from prometheus_client import Counter, Gauge

from wallet_service.store.ledger import Writes

log = logging.getLogger(__name__)

MOVEMENTS = Counter(
    "wallet_movements_total",
    "Committed ledger transactions, by type and currency.",
    ["type", "currency"],
)
AMOUNTS = Counter(
    "wallet_moved_minor_units_total",
    "Money moved by committed transactions, in minor units, by type and currency.",
    ["type", "currency"],
)
HOLD_CHANGES = Counter(
    "wallet_hold_changes_total",
    "Holds placed, captured, voided and expired, by the status they reached.",
    ["status"],
)
EVENT_STREAMS = Gauge(
    "wallet_event_streams",
    "WatchEvents streams open now.",
    multiprocess_mode="livesum",
)
POOL_CONNECTIONS = Gauge(
    "db_pool_connections",
    "Database connections of the pool, by state (idle, in use).",
    ["state"],
    multiprocess_mode="livesum",
)
POOL_WAITING = Gauge(
    "db_pool_requests_waiting",
    "Calls waiting for a database connection now.",
    multiprocess_mode="livesum",
)
POOL_SAMPLE_SECONDS = 5.0


def record_committed(writes: Writes) -> None:
    for transaction, _ in writes.transactions:
        labels = (transaction.type.value, transaction.currency)
        MOVEMENTS.labels(*labels).inc()
        AMOUNTS.labels(*labels).inc(transaction.amount)
    for hold, _ in writes.new_holds:
        HOLD_CHANGES.labels(hold.status.value).inc()
    for hold, _, _ in writes.finished_holds:
        HOLD_CHANGES.labels(hold.status.value).inc()


async def sample_pool_periodically(pool: psycopg_pool.AsyncConnectionPool[Any]) -> None:
    while True:
        stats = pool.get_stats()
        size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
        POOL_CONNECTIONS.labels("idle").set(idle)
        POOL_CONNECTIONS.labels("in_use").set(size - idle)
        POOL_WAITING.set(stats.get("requests_waiting", 0))
        await asyncio.sleep(POOL_SAMPLE_SECONDS)
