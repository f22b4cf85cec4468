-- Push tokens that Delta Chat's mobile apps set with SETMETADATA INBOX
-- (/private/devicetoken) through metadata-proxy, and the notifications
-- waiting to be posted to the push gateway for them. Both go with their
-- account.
CREATE TABLE device_tokens (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    address  text NOT NULL REFERENCES accounts (address) ON DELETE CASCADE,
    -- Opaque to us: Delta Chat sends "openpgp:" and the base64 of the token
    -- encrypted to the gateway's key. At most 6000 bytes (metadata-proxy).
    token    text NOT NULL,
    -- SHA-256 of token: the key of deduplication (a btree index cannot
    -- hold a token of 6 KB).
    digest   bytea NOT NULL,
    -- Day resolution on purpose, like last_login: enough for the 90-day
    -- expiry, too coarse to track anyone's sessions.
    last_set date NOT NULL,
    UNIQUE (address, digest)
);

-- At most one row per token: new mail while a notification is pending
-- adds nothing, which bounds the queue whatever a user does. After a
-- notification is done the row stays until the token's cooldown ends
-- (push_cooldown), as the marker that holds back new mail meanwhile, then
-- goes: nothing here outlives it, so nothing keeps when an account last
-- got mail.
CREATE TABLE push_queue (
    token_id     bigint PRIMARY KEY REFERENCES device_tokens (id) ON DELETE CASCADE,
    -- When the notification was first queued; the worker gives up
    -- push_give_up after it.
    queued_at    timestamptz NOT NULL,
    -- Due time of the next attempt; while a worker holds the row, the end
    -- of its lease (a worker that dies mid-POST is retried then); while
    -- the row is cooling, the end of the cooldown.
    next_attempt timestamptz NOT NULL,
    attempts     integer NOT NULL DEFAULT 0,
    -- Counts the claims, so that a worker whose lease ran out cannot
    -- settle the row another worker holds now.
    claim        bigint NOT NULL DEFAULT 0,
    in_flight    boolean NOT NULL DEFAULT false,
    -- The token's notification is done and nothing is pending: the row
    -- is only the cooldown's marker.
    cooling      boolean NOT NULL DEFAULT false,
    -- New mail arrived while the row was in flight or cooling: notify
    -- once more when the cooldown ends.
    again        boolean NOT NULL DEFAULT false
);
CREATE INDEX push_queue_due ON push_queue (next_attempt);
