-- A user whose appDataFolder is over a limit ([sync] max_file_bytes, max_user_bytes,
-- max_files_per_user): why, for `ctl user`, metrics and the data API. NULL: within limits.
-- Content over a limit is not mirrored (the item is kept as metadata only); other users are
-- unaffected.
ALTER TABLE users ADD COLUMN over_quota TEXT;
