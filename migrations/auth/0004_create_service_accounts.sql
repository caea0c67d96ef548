-- Machine clients created by an operator. The secret is 256 random bits, so a SHA-256
-- hash is enough to store it (no slow hash needed: it cannot be guessed).
CREATE TABLE auth.service_accounts (
    client_id   text PRIMARY KEY,
    name        text NOT NULL,
    secret_hash bytea NOT NULL CHECK (length(secret_hash) = 32),
    scopes      text[] NOT NULL CHECK (cardinality(scopes) > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    disabled_at timestamptz
);
