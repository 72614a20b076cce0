-- A bounded history. An idle sync (nothing changed, no error) writes no row in syncs: it counts
-- in idle_syncs (since the last recorded sync) instead, so 100,000 users on a 15-minute
-- schedule no longer add ~9.6 million rows a day. syncs_done and last_outcome count every
-- sync, recorded or not, for `ctl resync --wait` across instances. Old rows are pruned.
ALTER TABLE users ADD COLUMN idle_syncs INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN syncs_done INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN last_outcome TEXT;
CREATE INDEX syncs_by_age ON syncs (finished_at);
CREATE INDEX writes_by_age ON writes (updated_at);
