-- TURN credentials handed to clients through IMAP METADATA (metadata-proxy)
-- and checked by turnd: one row per credential, so that a blocked or
-- deleted account's credentials stop working before they expire.
CREATE TABLE turn_credentials (
    -- The credential's username: its expiry, a Unix time. Each credential
    -- has its own second, so the username alone names the account. The
    -- second is drawn at random within a day: the row tells the day the
    -- credential was issued (like last_login), not the time of the login.
    expiry  bigint PRIMARY KEY,
    -- NULL once the account is deleted: the row stays until it expires,
    -- so that its second, whose password still verifies, is never issued
    -- to another account before then.
    address text REFERENCES accounts (address) ON DELETE SET NULL
);
CREATE INDEX turn_credentials_address ON turn_credentials (address, expiry);
