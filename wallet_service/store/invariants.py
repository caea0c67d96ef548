"""What `check-invariants` asks of the database: each query lists what breaks an invariant,
so an empty list means it holds."""

from typing import Any

from wallet_service.store import Conn, all_rows

# Each wallet's balance is the sum of its ledger entries.
WALLETS_THAT_DRIFTED = """
SELECT w.id, w.balance, coalesce(sum(e.amount), 0) AS ledger_sum
FROM wallet.wallets w LEFT JOIN wallet.ledger_entries e ON e.wallet_id = w.id
GROUP BY w.id, w.balance
HAVING w.balance <> coalesce(sum(e.amount), 0)
"""

# ... and its newest entry's balance_after.
LAST_ENTRY_MISMATCHES = """
SELECT w.id, w.balance, last.balance_after
FROM wallet.wallets w
JOIN LATERAL (SELECT balance_after FROM wallet.ledger_entries e
              WHERE e.wallet_id = w.id ORDER BY e.sequence DESC LIMIT 1) last ON true
WHERE last.balance_after <> w.balance
"""

# Sequences run 1..n with no gap (they are unique per wallet, so n entries must end at n),
# and the wallet's last_sequence is the newest.
SEQUENCE_GAPS = """
SELECT w.id, w.last_sequence, count(e.sequence) AS entries,
       coalesce(max(e.sequence), 0) AS max_sequence
FROM wallet.wallets w LEFT JOIN wallet.ledger_entries e ON e.wallet_id = w.id
GROUP BY w.id, w.last_sequence
HAVING coalesce(max(e.sequence), 0) <> count(e.sequence)
    OR w.last_sequence <> count(e.sequence)
"""

# Per currency, money that came in (a transaction with only a destination) less money that
# went out (only a source) is the money in the wallets; movements between wallets net zero.
TOTALS_BY_CURRENCY = """
SELECT c.currency,
       coalesce((SELECT sum(balance) FROM wallet.wallets w WHERE w.currency = c.currency), 0)
           AS balances,
       coalesce((SELECT sum(amount) FROM wallet.transactions t WHERE t.currency = c.currency
                 AND t.source_wallet_id IS NULL), 0) AS money_in,
       coalesce((SELECT sum(amount) FROM wallet.transactions t WHERE t.currency = c.currency
                 AND t.destination_wallet_id IS NULL), 0) AS money_out
FROM (SELECT DISTINCT currency FROM wallet.wallets) c
ORDER BY c.currency
"""

# The held amount on each wallet row is the sum of its holds still marked held.
HELD_MISMATCHES = """
SELECT w.id, w.held, coalesce(sum(h.amount), 0) AS holds
FROM wallet.wallets w LEFT JOIN wallet.holds h ON h.wallet_id = w.id AND h.status = 'held'
GROUP BY w.id, w.held
HAVING w.held <> coalesce(sum(h.amount), 0)
"""

# The available balance (posted less live holds) is never negative.
NEGATIVE_AVAILABLE = """
SELECT w.id, w.balance, live.amount AS live_holds
FROM wallet.wallets w
JOIN LATERAL (SELECT coalesce(sum(h.amount), 0) AS amount FROM wallet.holds h
              WHERE h.wallet_id = w.id AND h.status = 'held'
              AND h.expires_at > clock_timestamp()) live ON true
WHERE w.balance < live.amount
"""

# No hold captured more than its amount, and a captured hold's transaction moved exactly
# what it says it captured.
BAD_CAPTURES = """
SELECT h.id, h.amount, h.captured_amount, t.amount AS transaction_amount
FROM wallet.holds h LEFT JOIN wallet.transactions t ON t.id = h.capture_transaction_id
WHERE h.captured_amount > h.amount
   OR (h.status = 'captured') <> (t.id IS NOT NULL)
   OR (t.id IS NOT NULL AND (t.amount <> h.captured_amount OR t.hold_id <> h.id))
"""

# No transaction refunded beyond its amount, and its refunded total is its refunds' sum.
BAD_REFUNDS = """
SELECT o.id, o.amount, coalesce(sum(r.amount), 0) AS refunds,
       coalesce(max(total.amount), 0) AS refunded_amount
FROM wallet.transactions o
LEFT JOIN wallet.transactions r ON r.refund_of = o.id
LEFT JOIN wallet.refunded_amounts total ON total.transaction_id = o.id
WHERE o.id IN (SELECT refund_of FROM wallet.transactions WHERE refund_of IS NOT NULL)
   OR o.id IN (SELECT transaction_id FROM wallet.refunded_amounts WHERE amount > 0)
GROUP BY o.id, o.amount
HAVING coalesce(sum(r.amount), 0) > o.amount
    OR coalesce(sum(r.amount), 0) <> coalesce(max(total.amount), 0)
"""


async def report(conn: Conn) -> dict[str, list[dict[str, Any]]]:
    return {
        "drifted_wallets": await all_rows(conn, WALLETS_THAT_DRIFTED),
        "stale_balance_after": await all_rows(conn, LAST_ENTRY_MISMATCHES),
        "sequence_gaps": await all_rows(conn, SEQUENCE_GAPS),
        "held_mismatches": await all_rows(conn, HELD_MISMATCHES),
        "negative_available": await all_rows(conn, NEGATIVE_AVAILABLE),
        "bad_captures": await all_rows(conn, BAD_CAPTURES),
        "bad_refunds": await all_rows(conn, BAD_REFUNDS),
        "totals": await all_rows(conn, TOTALS_BY_CURRENCY),
    }
