-- A deleted account leaves a tombstone, so that its address cannot be
-- registered again (by the abuser it was deleted for, or by someone
-- collecting mail meant for its former owner). The address itself is not
-- kept: only HMAC-SHA256(server key, normalized address), with the key in a
-- file outside the database ([accounts] tombstone_key_file).
CREATE TABLE tombstones (
    address_hmac bytea PRIMARY KEY,
    -- When the account was deleted; [accounts] tombstone_lifetime counts
    -- from here (0 keeps tombstones forever).
    created_at   timestamptz NOT NULL DEFAULT now()
);
