-- Keys that sign access tokens. Exactly one is active (retired_at IS NULL); a retired key
-- stays published until every token it signed has expired. A retired key never signs
-- again, so its private half is erased when it retires.
CREATE TABLE auth.signing_keys (
    id              text PRIMARY KEY,              -- the `kid` header: RFC 7638 thumbprint
    algorithm       text NOT NULL CHECK (algorithm = 'EdDSA'),
    private_key_pem text,                          -- PKCS#8; NULL once retired
    public_key_pem  text NOT NULL,                 -- SubjectPublicKeyInfo
    created_at      timestamptz NOT NULL DEFAULT now(),
    retired_at      timestamptz,
    CONSTRAINT signing_keys_active_has_private_key
        CHECK (retired_at IS NOT NULL OR private_key_pem IS NOT NULL)
);

-- At most one active key: instances that start together race on this index.
CREATE UNIQUE INDEX signing_keys_one_active ON auth.signing_keys ((true))
    WHERE retired_at IS NULL;
