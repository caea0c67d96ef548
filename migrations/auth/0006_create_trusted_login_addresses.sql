-- Client addresses an account has logged in from successfully. The account limit of login
-- throttling does not shut these out, so an attacker guessing from elsewhere cannot keep the
-- owner locked out for good.
CREATE TABLE auth.trusted_login_addresses (
    account         text NOT NULL,
    address         text NOT NULL,
    last_success_at timestamptz NOT NULL,
    PRIMARY KEY (account, address)
);

CREATE INDEX trusted_login_addresses_by_age ON auth.trusted_login_addresses (last_success_at);
