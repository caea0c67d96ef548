-- Succeeded idempotency keys unique forever, and a gapless sequence number per wallet.
-- The ledger is append-only, so its triggers are set aside while existing rows are numbered.

ALTER TABLE wallet.transactions DISABLE TRIGGER transactions_append_only;
ALTER TABLE wallet.ledger_entries DISABLE TRIGGER ledger_entries_append_only;

-- What the caller's key was bound to (a SHA-256 of the request), so that a retry long after
-- the idempotency record has been cleaned up still replays, or is refused as a reused key.
-- Rows older than this migration take it from their idempotency record where one is left.
ALTER TABLE wallet.transactions ADD COLUMN request_hash text;
UPDATE wallet.transactions t SET request_hash = k.request_hash
FROM wallet.idempotency_keys k
WHERE k.transaction_id = t.id;

-- Before this migration a key could apply again once its record was cleaned up (24 h).
-- Those later applications are numbered 2, 3, ...; every transaction from now on is the
-- first (and only) of its key, which the unique index below enforces.
ALTER TABLE wallet.transactions
    ADD COLUMN key_occurrence smallint NOT NULL DEFAULT 1 CHECK (key_occurrence >= 1);
UPDATE wallet.transactions t SET key_occurrence = numbered.occurrence
FROM (
    SELECT id, row_number() OVER (
        PARTITION BY requested_by, idempotency_key ORDER BY created_at, id) AS occurrence
    FROM wallet.transactions
) numbered
WHERE numbered.id = t.id AND numbered.occurrence > 1;
CREATE UNIQUE INDEX transactions_one_per_caller_key
    ON wallet.transactions (requested_by, idempotency_key, key_occurrence);

-- Each wallet numbers its ledger entries 1, 2, 3, ... with no gap, under its row lock.
-- `last_sequence` is the newest number handed out.
ALTER TABLE wallet.wallets ADD COLUMN last_sequence bigint NOT NULL DEFAULT 0
    CHECK (last_sequence >= 0);
ALTER TABLE wallet.ledger_entries ADD COLUMN sequence bigint;
UPDATE wallet.ledger_entries e SET sequence = numbered.sequence
FROM (
    SELECT id, row_number() OVER (PARTITION BY wallet_id ORDER BY id) AS sequence
    FROM wallet.ledger_entries
) numbered
WHERE numbered.id = e.id;
ALTER TABLE wallet.ledger_entries ALTER COLUMN sequence SET NOT NULL,
    ADD CONSTRAINT ledger_entries_sequence_positive CHECK (sequence >= 1);
UPDATE wallet.wallets w SET last_sequence = counted.entries
FROM (SELECT wallet_id, count(*) AS entries FROM wallet.ledger_entries GROUP BY wallet_id) counted
WHERE counted.wallet_id = w.id;

-- History pages walk this index; it replaces the one on (wallet_id, id).
CREATE UNIQUE INDEX ledger_entries_wallet_sequence
    ON wallet.ledger_entries (wallet_id, sequence DESC);
DROP INDEX wallet.ledger_entries_wallet_history;

ALTER TABLE wallet.transactions ENABLE TRIGGER transactions_append_only;
ALTER TABLE wallet.ledger_entries ENABLE TRIGGER ledger_entries_append_only;
