-- Issue 17, goal 4: a cycle spreads its users over the interval instead of starting them all
-- on the tick. Each user has a stable slot in [0, 65536), from a hash of the sub computed in
-- Rust (`store::schedule::slot_of`); a cycle starts slot s at s/65536 of its spread window.
-- -1: not placed yet (a row from before this migration): the daemon places those at start-up,
-- and until then a cycle takes them first, as before.
ALTER TABLE users ADD COLUMN slot INTEGER NOT NULL DEFAULT -1;

-- A cycle's claims walk the users in (slot, sub) order from a cursor, reading only the rows
-- they pass.
CREATE INDEX users_slot ON users (slot, sub);
