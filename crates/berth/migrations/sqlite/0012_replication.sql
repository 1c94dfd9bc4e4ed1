-- Registry-wide settings written once (the registry's id, which replication carries as the
-- origin of what it copies).
CREATE TABLE settings (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);

-- What each replication rule has copied and given up on, in total.
CREATE TABLE replication_progress (
    rule        TEXT PRIMARY KEY,
    images      INTEGER NOT NULL,
    bytes       INTEGER NOT NULL,
    failures    INTEGER NOT NULL,
    last_error  TEXT,
    updated_at  INTEGER NOT NULL
);
