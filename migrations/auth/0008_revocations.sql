-- Revocation that reaches the verifiers within seconds (GetRevocations).

-- An operator can revoke a leaked signing key: it is unpublished at once and every token it
-- signed is refused.
ALTER TABLE auth.signing_keys ADD COLUMN revoked_at timestamptz;
ALTER TABLE auth.signing_keys ADD CONSTRAINT signing_keys_revoked_key_is_retired
    CHECK (revoked_at IS NULL OR retired_at IS NOT NULL);

-- Logout can end every session of the user at once.
ALTER TABLE auth.sessions DROP CONSTRAINT sessions_revoked_reason_check;
ALTER TABLE auth.sessions ADD CONSTRAINT sessions_revoked_reason_check
    CHECK (revoked_reason IN ('logout', 'logout_all', 'reuse', 'password_change'));

-- The revocation list names the sessions ended within the access token lifetime.
CREATE INDEX sessions_by_revoked_at ON auth.sessions (revoked_at) WHERE revoked_at IS NOT NULL;
