-- Values sealed under each encryption key, ever: AES-GCM with random nonces is safe for 2^32
-- encryptions per key, and the daemon warns from half of that (rotate the key).
CREATE TABLE key_usage (
    key_id      TEXT PRIMARY KEY NOT NULL,
    encryptions INTEGER NOT NULL DEFAULT 0
);
