-- Cross-Account Protection (RISC): Google's security events and what they did to our users.
-- https://developers.google.com/identity/protocols/risc . Timestamps are unix milliseconds.
-- (0006 belongs to another branch; the numbers only order the files.)

-- Google disabled the account (account-disabled): the reason Google gave ('hijacking',
-- 'bulk-account', or 'unspecified'); NULL when not suspended. Nothing calls Google for the user
-- while it is set; account-enabled clears it. Kept apart from `state`, whose CHECK constraint
-- SQLite cannot alter, and because it is orthogonal: a suspended user may also need a sign-in.
ALTER TABLE users ADD COLUMN suspended_by_google TEXT;
-- The `iat` of the SET that last set or cleared the suspension: an older SET delivered late
-- (Google retries) does not undo a newer one.
ALTER TABLE users ADD COLUMN suspension_changed_at BIGINT;
-- account-credential-change-required: when Google said so (the SET's iat); NULL: no flag.
-- Cleared by an operator (`ctl acknowledge SUB`).
ALTER TABLE users ADD COLUMN credential_change_required_at BIGINT;

-- What identifies the stored refresh token in a token-revoked event without storing it:
-- Google's `hash_base64_sha512_sha512` (base64 of SHA-512 of SHA-512) of the token, and the
-- same hash of its first 16 characters (for `token_identifier_alg = prefix`). Computed at
-- sign-in and whenever the token is opened (refresh), which backfills older rows.
ALTER TABLE credentials ADD COLUMN refresh_token_hash TEXT;
ALTER TABLE credentials ADD COLUMN refresh_token_prefix_hash TEXT;
CREATE INDEX credentials_by_refresh_hash ON credentials (refresh_token_hash);
CREATE INDEX credentials_by_prefix_hash ON credentials (refresh_token_prefix_hash);

-- Every security event token (SET) accepted at POST /risc, persisted before the 202: the
-- inbox the processor acts on (processed_at NULL: not yet), the `jti` de-duplication, and
-- each user's security history (`ctl user SUB`). No foreign key: events for unknown users are
-- kept (deduplicated, then dropped), and history outlives a forgotten user until pruned.
CREATE TABLE security_events (
    id              BIGSERIAL PRIMARY KEY,
    jti             TEXT NOT NULL UNIQUE,
    -- sessions-revoked | tokens-revoked | token-revoked | account-disabled | account-enabled |
    -- account-credential-change-required | verification | unsupported
    kind            TEXT NOT NULL,
    event_uri       TEXT NOT NULL,
    -- The Google account the event is about: from the subject, or, for a token-revoked event
    -- (whose subject is a token hash), the user whose token matched, once processed.
    sub             TEXT,
    -- The subject as Google sent it (JSON; a token subject holds a hash, never a token).
    subject         TEXT,
    reason          TEXT,                 -- account-disabled
    state           TEXT,                 -- verification
    issued_at       BIGINT NOT NULL,     -- the SET's iat
    received_at     BIGINT NOT NULL,
    -- Acted on when (NULL: not yet), and how (store::security_events::Outcome; 'pending').
    processed_at    BIGINT,
    outcome         TEXT NOT NULL DEFAULT 'pending',
    detail          TEXT,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX security_events_pending ON security_events (processed_at, next_attempt_at, id);
CREATE INDEX security_events_by_user ON security_events (sub, id);
CREATE INDEX security_events_by_age ON security_events (received_at);
