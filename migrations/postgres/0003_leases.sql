-- Work distribution between instances sharing one database.

-- Which instance holds the user (syncing or about to), until when. An instance renews the
-- leases it holds; an expired lease may be taken over by anyone.
ALTER TABLE users ADD COLUMN lease_owner TEXT;
ALTER TABLE users ADD COLUMN lease_expires_at BIGINT;
-- The cycle (its cron tick, unix ms) in which the user was last claimed: one sync per cycle,
-- however many instances run that cycle.
ALTER TABLE users ADD COLUMN last_cycle BIGINT NOT NULL DEFAULT 0;

-- Live instances, for `ctl status`.
CREATE TABLE instances (
    id           TEXT PRIMARY KEY NOT NULL,
    version      TEXT NOT NULL,
    started_at   BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL
);
