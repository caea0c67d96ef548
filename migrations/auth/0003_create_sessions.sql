-- A session is a refresh token family (RFC 9700): the tokens that descend from one
-- login. Only SHA-256 hashes of refresh tokens are stored. Each token is spent by its
-- first use; presenting a spent one revokes the whole session.
CREATE TABLE auth.sessions (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id        uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,           -- absolute: rotation does not extend it
    revoked_at     timestamptz,
    revoked_reason text CHECK (revoked_reason IN ('logout', 'reuse', 'password_change'))
);

CREATE INDEX sessions_live_by_user ON auth.sessions (user_id) WHERE revoked_at IS NULL;

CREATE TABLE auth.refresh_tokens (
    token_hash bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    session_id uuid NOT NULL REFERENCES auth.sessions (id) ON DELETE CASCADE,
    issued_at  timestamptz NOT NULL DEFAULT now(),
    spent_at   timestamptz
);

CREATE INDEX refresh_tokens_by_session ON auth.refresh_tokens (session_id);
