-- When each manifest and tag was last pulled (Unix seconds, NULL for never) and how many
-- manifests each repository served: written behind the pulls, in batches.
ALTER TABLE manifests ADD COLUMN pulled_at INTEGER;
ALTER TABLE tags ADD COLUMN pulled_at INTEGER;
ALTER TABLE repositories ADD COLUMN pull_count INTEGER NOT NULL DEFAULT 0;

-- Schedules set through the API (the garbage collection's is named 'gc'): a cron expression
-- with seconds, and the parameters each run gets (JSON).
CREATE TABLE schedules (
    name        TEXT PRIMARY KEY,
    cron        TEXT NOT NULL,
    parameters  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

-- Whether garbage collection deletes the project's untagged manifests (NULL: as the run says).
ALTER TABLE projects ADD COLUMN delete_untagged INTEGER;
