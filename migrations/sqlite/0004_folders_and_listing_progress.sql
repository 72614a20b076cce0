-- Folders and Google-native (Docs editors) files live in appDataFolder too. Drive gives them no
-- content to download, so they are mirrored as metadata only; every item keeps its parent so
-- that nested files get a path.

-- The folder the item is in; NULL (or an id that is no folder of ours): the appDataFolder.
ALTER TABLE files ADD COLUMN parent_id TEXT;
-- 1: no content in the mirror (a folder, a Google-native file, anything Drive will not serve).
ALTER TABLE files ADD COLUMN metadata_only INTEGER NOT NULL DEFAULT 0;

-- A full listing in progress, so that a sync that fails half way (a quota hit) resumes it at the
-- next page instead of listing everything again: the files.list page token of the next page,
-- the changes start token taken before the listing began, and the listing's generation, which
-- every item seen in it carries (items of an older generation are gone from Drive).
ALTER TABLE users ADD COLUMN listing_page TEXT;
ALTER TABLE users ADD COLUMN listing_start TEXT;
ALTER TABLE users ADD COLUMN listing_generation INTEGER NOT NULL DEFAULT 0;
ALTER TABLE files ADD COLUMN seen_generation INTEGER NOT NULL DEFAULT 0;
