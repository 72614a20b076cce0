-- Writes into users' appDataFolders (`ctl push`, the data API's PUT and DELETE), carried out on
-- the user's next sync. The content waits in the mirror's spool (`.spool/ID`, shared by every
-- instance like the mirror itself), never in the database.
CREATE TABLE writes (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    sub          TEXT NOT NULL REFERENCES users (sub) ON DELETE CASCADE,
    op           TEXT NOT NULL,                   -- put | delete
    -- The item written: an existing file, or (create_new = 1) the id files.generateIds gave for
    -- a new one, taken before the first attempt so that a retried create cannot make two files.
    file_id      TEXT,
    create_new   INTEGER NOT NULL DEFAULT 0,
    name         TEXT,                            -- a new file's name
    parent_id    TEXT,                            -- a new file's folder; NULL: the appDataFolder
    mime_type    TEXT,
    -- The content to put: `.spool/SPOOL` in the mirror (a random name, given before the row).
    spool        TEXT,
    size         INTEGER,                         -- of the content to put
    md5          TEXT,
    -- The writer's precondition: the md5 or version of the file it saw (If-Match), or, for a new
    -- file, that none of that name exists in the folder (must_be_new = 1); all empty: none.
    base_md5     TEXT,
    base_version INTEGER,
    must_be_new  INTEGER NOT NULL DEFAULT 0,
    state        TEXT NOT NULL DEFAULT 'pending', -- pending | done | conflict | failed
    attempts     INTEGER NOT NULL DEFAULT 0,
    error        TEXT,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
CREATE INDEX writes_by_user ON writes (sub, state, id);
