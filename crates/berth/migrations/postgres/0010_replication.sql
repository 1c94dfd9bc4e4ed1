-- Registry-wide settings written once (the registry's id, which replication carries as the
-- origin of what it copies).
CREATE TABLE settings (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);

-- What each replication rule has copied and given up on, in total.
CREATE TABLE replication_progress (
    rule        TEXT PRIMARY KEY,
    images      BIGINT NOT NULL,
    bytes       BIGINT NOT NULL,
    failures    BIGINT NOT NULL,
    last_error  TEXT,
    updated_at  BIGINT NOT NULL
);
