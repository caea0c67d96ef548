-- Holds (two-phase payments) and refunds.

-- The amounts of a wallet's holds still marked 'held', kept on the wallet row so that every
-- change to its holds takes the wallet's row lock (SERIALIZABLE sees it as a conflict too).
-- Holds past their expiry but not yet swept are in it; the available balance leaves them out.
ALTER TABLE wallet.wallets ADD COLUMN held bigint NOT NULL DEFAULT 0 CHECK (held >= 0);

-- A hold reserves part of a wallet's balance until it is captured, voided or expires. Live
-- holds (status 'held' and not past expires_at) count against the available balance; a hold
-- past its expiry no longer counts, whether or not the sweep has marked it 'expired' yet.
CREATE TABLE wallet.holds (
    id                    uuid PRIMARY KEY,
    wallet_id             uuid NOT NULL REFERENCES wallet.wallets (id),
    destination_wallet_id uuid REFERENCES wallet.wallets (id),
    amount                bigint NOT NULL CHECK (amount > 0),
    currency              text NOT NULL,
    status                text NOT NULL DEFAULT 'held'
                          CHECK (status IN ('held', 'captured', 'voided', 'expired')),
    captured_amount       bigint NOT NULL DEFAULT 0,
    expires_at            timestamptz NOT NULL,
    requested_by          text NOT NULL,          -- the caller's `sub`: it may capture or void
    idempotency_key       text NOT NULL,
    request_hash          text NOT NULL,
    reference             text NOT NULL DEFAULT '',
    capture_transaction_id uuid,                  -- set when captured (FK added below)
    finished_by           text,                   -- who captured or voided it, with which key:
    finished_by_key       text,                   -- a late retry of that key replays
    created_at            timestamptz NOT NULL,
    finished_at           timestamptz,            -- captured, voided or expired
    CONSTRAINT holds_captured_within_amount
        CHECK (captured_amount >= 0 AND captured_amount <= amount),
    CONSTRAINT holds_captured_has_transaction
        CHECK ((status = 'captured') = (capture_transaction_id IS NOT NULL)),
    CONSTRAINT holds_destination_differs CHECK (destination_wallet_id <> wallet_id),
    -- Like a movement's, a hold's key is unique forever.
    CONSTRAINT holds_one_per_caller_key UNIQUE (requested_by, idempotency_key)
);
CREATE INDEX holds_live_by_wallet ON wallet.holds (wallet_id) WHERE status = 'held';
CREATE INDEX holds_by_wallet ON wallet.holds (wallet_id, created_at DESC, id DESC);
CREATE INDEX holds_to_expire ON wallet.holds (expires_at) WHERE status = 'held';
CREATE UNIQUE INDEX holds_finished_by_key ON wallet.holds (finished_by, finished_by_key)
    WHERE finished_by_key IS NOT NULL;

-- Captures and refunds are ledger transactions too, linked to their hold or original.
ALTER TABLE wallet.transactions
    DROP CONSTRAINT transactions_type_check,
    ADD CONSTRAINT transactions_type_check
        CHECK (type IN ('credit', 'debit', 'transfer', 'capture', 'refund')),
    ADD COLUMN hold_id uuid REFERENCES wallet.holds (id),
    ADD COLUMN refund_of uuid REFERENCES wallet.transactions (id),
    DROP CONSTRAINT transactions_shape,
    ADD CONSTRAINT transactions_shape CHECK (
        (type = 'credit' AND source_wallet_id IS NULL AND destination_wallet_id IS NOT NULL)
        OR (type = 'debit' AND source_wallet_id IS NOT NULL AND destination_wallet_id IS NULL)
        OR (type = 'transfer' AND source_wallet_id IS NOT NULL
            AND destination_wallet_id IS NOT NULL)
        OR (type = 'capture' AND source_wallet_id IS NOT NULL AND hold_id IS NOT NULL)
        OR (type = 'refund' AND refund_of IS NOT NULL
            AND (source_wallet_id IS NOT NULL OR destination_wallet_id IS NOT NULL))
    ),
    ADD CONSTRAINT transactions_two_different_wallets
        CHECK (source_wallet_id <> destination_wallet_id),
    ADD CONSTRAINT transactions_links_only_where_they_belong
        CHECK ((hold_id IS NULL OR type = 'capture') AND (refund_of IS NULL OR type = 'refund'));
CREATE UNIQUE INDEX transactions_one_capture_per_hold ON wallet.transactions (hold_id)
    WHERE hold_id IS NOT NULL;
CREATE INDEX transactions_refunds_of ON wallet.transactions (refund_of)
    WHERE refund_of IS NOT NULL;

ALTER TABLE wallet.holds ADD CONSTRAINT holds_capture_transaction
    FOREIGN KEY (capture_transaction_id) REFERENCES wallet.transactions (id);

-- How much of a transaction has been refunded: locked and raised by each refund, so that
-- concurrent refunds can never add up to more than the original.
CREATE TABLE wallet.refunded_amounts (
    transaction_id uuid PRIMARY KEY REFERENCES wallet.transactions (id),
    amount         bigint NOT NULL CHECK (amount >= 0)
);

-- The answer a key's first outcome gave, serialised, so a retry gets exactly it again.
ALTER TABLE wallet.idempotency_keys ADD COLUMN response bytea;
