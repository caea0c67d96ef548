-- Login attempts per account (normalised email) and per client address, in fixed
-- windows. Kept in the database so every instance sees the same counts.
CREATE TABLE auth.login_throttle (
    subject_kind text NOT NULL CHECK (subject_kind IN ('account', 'address')),
    subject      text NOT NULL,
    window_start timestamptz NOT NULL,
    attempts     integer NOT NULL CHECK (attempts >= 0),
    PRIMARY KEY (subject_kind, subject)
);

CREATE INDEX login_throttle_by_window ON auth.login_throttle (window_start);
