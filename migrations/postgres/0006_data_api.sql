-- The data API (issue 14): API keys, the change feed and the webhooks outbox.
-- Timestamps are unix milliseconds. (0005 is the writes table.)

-- Bearer keys of the operator's backend. Only a SHA-256 of the key is kept: keys are 32
-- random bytes, so a plain hash cannot be reversed by guessing.
CREATE TABLE api_keys (
    name         TEXT PRIMARY KEY NOT NULL,
    key_hash     TEXT NOT NULL UNIQUE,       -- hex SHA-256 of the whole key
    can_write    BIGINT NOT NULL DEFAULT 0,
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT,                    -- coarse: refreshed at most once a minute
    revoked_at   BIGINT
);

-- The change feed. A change is inserted with seq NULL inside the transaction that makes it;
-- the sequencer (one at a time across instances, holding the change_head row) later gives
-- committed rows increasing seqs. Readers see only sequenced rows, so "seq > cursor" never
-- skips a row that committed late. No foreign key to users: a forgotten user's changes stay.
CREATE TABLE changes (
    id           BIGSERIAL PRIMARY KEY,
    seq          BIGINT UNIQUE,
    kind         TEXT NOT NULL,
    sub          TEXT NOT NULL,
    file_id      TEXT,
    path         TEXT,
    md5          TEXT,
    version      BIGINT,
    state        TEXT,                       -- user changes: the user's state after it
    detail       TEXT,                       -- JSON object with anything else, or NULL
    created_at   BIGINT NOT NULL,
    sequenced_at BIGINT
);
CREATE INDEX changes_unsequenced ON changes (id) WHERE seq IS NULL;
CREATE INDEX changes_by_time ON changes (sequenced_at);

-- The head of the feed: the last seq given, and the last seq pruned (a cursor below it has
-- lost changes: 410 cursor_expired). The one row sequencers lock.
CREATE TABLE change_head (
    id            INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    last_seq      BIGINT NOT NULL,
    pruned_through BIGINT NOT NULL
);
INSERT INTO change_head (id, last_seq, pruned_through) VALUES (1, 0, 0);

-- Each configured webhook endpoint: how far the feed has been copied into its outbox, and
-- its last outcomes for `ctl webhooks`.
CREATE TABLE webhook_endpoints (
    name            TEXT PRIMARY KEY NOT NULL,
    last_seq        BIGINT NOT NULL,
    last_success_at BIGINT,
    last_error      TEXT,
    last_error_at   BIGINT
);

-- One message per (endpoint, change): at-least-once delivery, claimed with a lease.
CREATE TABLE webhook_outbox (
    id               BIGSERIAL PRIMARY KEY,
    endpoint         TEXT NOT NULL,
    seq              BIGINT NOT NULL,
    msg_id           TEXT NOT NULL,
    event            TEXT NOT NULL,
    body             TEXT NOT NULL,
    state            TEXT NOT NULL DEFAULT 'pending',  -- pending | delivered | failed
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL,
    lease_owner      TEXT,
    lease_expires_at BIGINT,
    last_error       TEXT,
    created_at       BIGINT NOT NULL,
    finished_at      BIGINT,
    UNIQUE (endpoint, seq)
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (endpoint, state, next_attempt_at);
