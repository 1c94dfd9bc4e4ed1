-- The global blob table: one row per stored blob or manifest, whatever the number of repositories
-- that link it. Touched in the same transaction as every repository link, unlink, manifest record
-- and manifest delete, so garbage collection can decide from here alone what is unreferenced and
-- for how long (last_referenced_at), without walking storage.
--   state: 'stored'   - the bytes are published at the blob path;
--          'deleting' - a collector has claimed the blob and is removing its bytes.
CREATE TABLE blobs (
    digest              TEXT PRIMARY KEY,
    size                INTEGER NOT NULL,
    state               TEXT NOT NULL DEFAULT 'stored' CHECK (state IN ('stored', 'deleting')),
    created_at          INTEGER NOT NULL,
    last_referenced_at  INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO blobs (digest, size, state, created_at, last_referenced_at)
SELECT digest, MAX(size), 'stored', MIN(created_at), MAX(created_at)
FROM (
    SELECT digest, size, created_at FROM repo_blobs
    UNION ALL
    SELECT digest, size, created_at FROM manifests
)
GROUP BY digest;
