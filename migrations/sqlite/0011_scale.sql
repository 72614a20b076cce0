-- Queries that run on a timer must not read every user (issue 17: flat cost per user).

-- Admin resync requests, polled every few seconds by every instance: only the users with one.
CREATE INDEX users_resync_requested ON users (sub) WHERE resync_requested > 0;

-- An instance's leases, renewed every third of a lease while it syncs: only the leased users
-- (at most a claim batch and the syncs in flight per instance).
CREATE INDEX users_leased ON users (lease_owner) WHERE lease_owner IS NOT NULL;
