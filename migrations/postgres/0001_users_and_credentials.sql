-- Users, keyed by the ID token's `sub`, and their encrypted credentials.
-- Timestamps are unix milliseconds.

CREATE TABLE users (
    sub            TEXT PRIMARY KEY NOT NULL,
    email          TEXT,
    email_verified BIGINT NOT NULL DEFAULT 0,
    name           TEXT,
    given_name     TEXT,
    family_name    TEXT,
    picture        TEXT,
    locale         TEXT,
    state          TEXT NOT NULL DEFAULT 'active'
                   CHECK (state IN ('active', 'reauth_required', 'paused', 'forgotten')),
    last_error     TEXT,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);

CREATE TABLE credentials (
    sub               TEXT PRIMARY KEY NOT NULL REFERENCES users (sub) ON DELETE CASCADE,
    -- AES-256-GCM: nonce || ciphertext || tag, sealed under key `key_id` with the sub as AAD.
    refresh_token     BYTEA NOT NULL,
    key_id            TEXT NOT NULL,
    -- Space-separated scopes Google granted.
    scopes            TEXT NOT NULL,
    obtained_at       BIGINT NOT NULL,
    -- The cached access token, sealed the same way, so a restart does not force a refresh.
    access_token      BYTEA,
    access_key_id     TEXT,
    access_expires_at BIGINT
);
