-- Wallets, the immutable ledger and idempotency outcomes.
-- Money is bigint minor units of the wallet's ISO 4217 currency.

CREATE TABLE wallet.wallets (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    text NOT NULL,                     -- the access token's `sub`
    currency   text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    balance    bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- The last line of defence: the service checks before it updates.
    CONSTRAINT wallets_balance_not_negative CHECK (balance >= 0),
    CONSTRAINT wallets_one_per_user_and_currency UNIQUE (user_id, currency)
);

-- One row per money movement.
CREATE TABLE wallet.transactions (
    id                    uuid PRIMARY KEY,
    type                  text NOT NULL CHECK (type IN ('credit', 'debit', 'transfer')),
    amount                bigint NOT NULL CHECK (amount > 0),
    currency              text NOT NULL,
    source_wallet_id      uuid REFERENCES wallet.wallets (id),
    destination_wallet_id uuid REFERENCES wallet.wallets (id),
    idempotency_key       text NOT NULL,
    reference             text NOT NULL DEFAULT '',
    requested_by          text NOT NULL,          -- the caller's `sub`
    created_at            timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT transactions_shape CHECK (
        (type = 'credit' AND source_wallet_id IS NULL AND destination_wallet_id IS NOT NULL)
        OR (type = 'debit' AND source_wallet_id IS NOT NULL AND destination_wallet_id IS NULL)
        OR (type = 'transfer' AND source_wallet_id IS NOT NULL
            AND destination_wallet_id IS NOT NULL AND source_wallet_id <> destination_wallet_id)
    )
);

-- One row per wallet a transaction touched: the signed change and the balance after it.
-- Within a wallet, ids grow in commit order (rows are written under the wallet's row lock),
-- which makes (wallet_id, id) a stable cursor for history.
CREATE TABLE wallet.ledger_entries (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    wallet_id      uuid NOT NULL REFERENCES wallet.wallets (id),
    transaction_id uuid NOT NULL REFERENCES wallet.transactions (id),
    type           text NOT NULL,                 -- copied from the transaction, for filters
    amount         bigint NOT NULL CHECK (amount <> 0),
    balance_after  bigint NOT NULL CHECK (balance_after >= 0),
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_entries_wallet_history ON wallet.ledger_entries (wallet_id, id DESC);
CREATE INDEX ledger_entries_transaction ON wallet.ledger_entries (transaction_id);

-- The ledger is append-only.
CREATE FUNCTION wallet.refuse_ledger_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only: % on % refused', TG_OP, TG_TABLE_NAME;
END
$$;
CREATE TRIGGER transactions_append_only BEFORE UPDATE OR DELETE ON wallet.transactions
    FOR EACH ROW EXECUTE FUNCTION wallet.refuse_ledger_change();
CREATE TRIGGER transactions_no_truncate BEFORE TRUNCATE ON wallet.transactions
    FOR EACH STATEMENT EXECUTE FUNCTION wallet.refuse_ledger_change();
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON wallet.ledger_entries
    FOR EACH ROW EXECUTE FUNCTION wallet.refuse_ledger_change();
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON wallet.ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION wallet.refuse_ledger_change();

-- The first outcome of each (caller, idempotency key): replayed on a retry.
CREATE TABLE wallet.idempotency_keys (
    principal       text NOT NULL,                -- the caller's `sub`: keys are per caller
    key             text NOT NULL,
    request_hash    text NOT NULL,                -- SHA-256 of the method and its arguments
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'succeeded', 'failed')),
    transaction_id  uuid REFERENCES wallet.transactions (id),
    balances_after  jsonb,                        -- {wallet_id: balance} on success
    error_reason    text,                         -- on a final business failure
    error_message   text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, key)
);
CREATE INDEX idempotency_keys_created_at ON wallet.idempotency_keys (created_at);
