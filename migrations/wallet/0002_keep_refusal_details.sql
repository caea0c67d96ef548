-- A replayed refusal answers exactly as the first one did, ErrorInfo metadata included.
ALTER TABLE wallet.idempotency_keys ADD COLUMN error_metadata jsonb NOT NULL DEFAULT '{}';
