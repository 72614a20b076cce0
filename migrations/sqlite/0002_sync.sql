-- What sync needs: per-user scheduling state, the mirrored files, a record of every sync,
-- and uploads queued by `ctl push`. Timestamps are unix milliseconds.

-- NULL page_token: the next sync lists the whole appDataFolder.
ALTER TABLE users ADD COLUMN page_token TEXT;
-- The user is not synced before this time (backoff after failures).
ALTER TABLE users ADD COLUMN next_sync_at INTEGER NOT NULL DEFAULT 0;
-- Consecutive failed syncs; drives the backoff.
ALTER TABLE users ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN last_sync_at INTEGER;
-- Set by `ctl resync` (1, or 2 for --full) on any instance; cleared when a sync starts.
ALTER TABLE users ADD COLUMN resync_requested INTEGER NOT NULL DEFAULT 0;
CREATE INDEX users_due ON users (state, next_sync_at);

CREATE TABLE files (
    sub           TEXT NOT NULL REFERENCES users (sub) ON DELETE CASCADE,
    file_id       TEXT NOT NULL,
    -- Drive's name: not unique, may contain '/' or '..'; never used as a path.
    name          TEXT NOT NULL,
    mime_type     TEXT,
    size          INTEGER,
    md5           TEXT,
    version       INTEGER,
    modified_time TEXT,
    -- Relative to [sync] data_dir: SUB/FILE_ID.
    local_path    TEXT NOT NULL,
    PRIMARY KEY (sub, file_id)
);
CREATE INDEX files_by_name ON files (sub, name);

CREATE TABLE syncs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    sub         TEXT NOT NULL REFERENCES users (sub) ON DELETE CASCADE,
    kind        TEXT NOT NULL,            -- full | incremental
    started_at  INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    outcome     TEXT NOT NULL,            -- ok | failed | reauth_required | cancelled
    added       INTEGER NOT NULL DEFAULT 0,
    updated     INTEGER NOT NULL DEFAULT 0,
    removed     INTEGER NOT NULL DEFAULT 0,
    uploaded    INTEGER NOT NULL DEFAULT 0,
    bytes_down  INTEGER NOT NULL DEFAULT 0,
    bytes_up    INTEGER NOT NULL DEFAULT 0,
    api_calls   INTEGER NOT NULL DEFAULT 0,
    error       TEXT
);
CREATE INDEX syncs_by_user ON syncs (sub, id);

CREATE TABLE pushes (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    sub          TEXT NOT NULL REFERENCES users (sub) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    mime_type    TEXT NOT NULL,
    content      BLOB NOT NULL,
    -- The mirrored file the push replaces (NULL: none of that name existed) and its version
    -- then: if Drive's version moved on since, the push is a conflict, not an overwrite.
    base_file_id TEXT,
    base_version INTEGER,
    state        TEXT NOT NULL DEFAULT 'pending', -- pending | done | conflict | failed
    attempts     INTEGER NOT NULL DEFAULT 0,
    error        TEXT,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
CREATE INDEX pushes_pending ON pushes (sub, state);
