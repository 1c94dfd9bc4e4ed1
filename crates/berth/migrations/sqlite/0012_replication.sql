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

-- Remote registries (Harbor's registry endpoints): what pull-through cache projects mirror and
-- replication copies to and from. The secret is stored as given and never shown by the API.
CREATE TABLE registries (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    name             TEXT NOT NULL UNIQUE,
    type             TEXT NOT NULL,
    url              TEXT NOT NULL,
    credential_type  TEXT NOT NULL,
    access_key       TEXT NOT NULL,
    access_secret    TEXT NOT NULL,
    insecure         INTEGER NOT NULL,
    description      TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);

-- The registry a pull-through cache project mirrors (NULL: an ordinary project).
ALTER TABLE projects ADD COLUMN registry_id INTEGER REFERENCES registries (id);

-- Each copy a replication rule made, skipped or gave up on, newest last (the last 100,000 kept).
CREATE TABLE replication_history (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    rule         TEXT NOT NULL,
    action       TEXT NOT NULL,
    repository   TEXT NOT NULL,
    reference    TEXT NOT NULL,
    outcome      TEXT NOT NULL,
    bytes        INTEGER NOT NULL,
    error        TEXT,
    finished_at  INTEGER NOT NULL
);
CREATE INDEX replication_history_rule ON replication_history (rule, id);
