-- The throttle table also counts, in windows of their own: a trusted address's failed logins
-- per account ('account_address': the owner's usual address has a budget of its own once the
-- account limit is reached), and registrations per client address and in total.
ALTER TABLE auth.login_throttle DROP CONSTRAINT login_throttle_subject_kind_check;
ALTER TABLE auth.login_throttle ADD CONSTRAINT login_throttle_subject_kind_check
    CHECK (subject_kind IN ('account', 'address', 'account_address', 'register_address',
                            'register_total'));
