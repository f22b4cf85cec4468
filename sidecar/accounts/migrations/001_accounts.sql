-- One row per account, and nothing more than the server needs to serve it.
CREATE TABLE accounts (
    -- Normalized (lower-case) address; the key everything else hangs on.
    address            text PRIMARY KEY,
    -- A hash in a scheme Dovecot verifies itself, with its {SCHEME} prefix.
    password_hash      text NOT NULL,
    -- Maintained by Dovecot's quota dict; NULL until Dovecot first counts.
    storage_bytes      bigint,
    message_count      bigint,
    created_at         timestamptz NOT NULL DEFAULT now(),
    -- Day resolution on purpose: enough for expiry, too coarse to track anyone.
    last_login         date,
    -- The registration token used, once token registration exists.
    registration_token text,
    -- NULL when message counting is switched off.
    sent_messages      bigint,
    received_messages  bigint,
    blocked            boolean NOT NULL DEFAULT false
);
