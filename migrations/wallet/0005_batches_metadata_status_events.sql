-- Atomic batches, metadata, wallet status, and the events that every committed change writes.

-- Metadata: a caller's own key/value pairs (at most 32, key <= 64, value <= 512 characters).
ALTER TABLE wallet.wallets ADD COLUMN metadata jsonb NOT NULL DEFAULT '{}';
ALTER TABLE wallet.transactions ADD COLUMN metadata jsonb NOT NULL DEFAULT '{}';
ALTER TABLE wallet.holds ADD COLUMN metadata jsonb NOT NULL DEFAULT '{}';
-- History filtered by one key and value: `metadata @> '{"order": "77"}'`.
CREATE INDEX transactions_metadata ON wallet.transactions USING gin (metadata jsonb_path_ops);

-- A batch's movements are transactions that share its key, numbered by their place in it.
-- A key is still used once: by one movement (index 0) or by one batch.
ALTER TABLE wallet.transactions ADD COLUMN batch_index smallint NOT NULL DEFAULT 0
    CHECK (batch_index >= 0 AND batch_index < 100);
DROP INDEX wallet.transactions_one_per_caller_key;
CREATE UNIQUE INDEX transactions_one_per_caller_key
    ON wallet.transactions (requested_by, idempotency_key, key_occurrence, batch_index);

-- Wallet status: ACTIVE, DEBITS_FROZEN (no money out, holds included), FROZEN (nothing in
-- or out), CLOSED (final). Every change is kept with who made it and why.
ALTER TABLE wallet.wallets
    ADD COLUMN status text NOT NULL DEFAULT 'active'
        CHECK (status IN ('active', 'debits_frozen', 'frozen', 'closed')),
    ADD COLUMN status_reason text NOT NULL DEFAULT '',
    ADD COLUMN status_changed_at timestamptz;
CREATE TABLE wallet.wallet_status_changes (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    wallet_id   uuid NOT NULL REFERENCES wallet.wallets (id),
    old_status  text NOT NULL,
    new_status  text NOT NULL,
    reason      text NOT NULL,
    changed_by  text NOT NULL,                    -- the caller's `sub`
    changed_at  timestamptz NOT NULL
);
CREATE INDEX wallet_status_changes_by_wallet ON wallet.wallet_status_changes (wallet_id, id);

-- The transaction id of the newest change written to each wallet. A transaction that finds
-- a newer one on a wallet it has just locked (it took its id before waiting for the lock)
-- starts again, so that a wallet's events are in transaction id order too (see events).
ALTER TABLE wallet.wallets ADD COLUMN last_xid xid8;

-- Events: one per committed change of a wallet, written in the same transaction as the
-- change (a transactional outbox). `xid` is the writing transaction's id; readers deliver
-- an event only once every transaction with a smaller id has finished, in (xid, id) order,
-- so an event that commits late can never be skipped by a reader that has seen later ones.
CREATE TABLE wallet.events (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid          xid8 NOT NULL DEFAULT pg_current_xact_id(),
    wallet_id    uuid NOT NULL,
    owner_id     text NOT NULL,                   -- the wallet's owner: who may watch it
    requested_by text NOT NULL,                   -- who made the change: sees every detail
    type         text NOT NULL,
    payload      bytea NOT NULL,                  -- a wallet.v1.WalletEvent, cursor left out
    created_at   timestamptz NOT NULL
);
CREATE INDEX events_in_order ON wallet.events (xid, id);
CREATE INDEX events_of_owner ON wallet.events (owner_id, xid, id);
CREATE INDEX events_of_wallet ON wallet.events (wallet_id, xid, id);
CREATE INDEX events_by_age ON wallet.events (created_at);

-- A wallet's balance at an instant is the balance after its newest entry up to then.
CREATE INDEX ledger_entries_wallet_time
    ON wallet.ledger_entries (wallet_id, created_at DESC, sequence DESC);
