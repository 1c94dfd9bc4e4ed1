-- Identities and what they may do: local and LDAP users, LDAP groups, projects (the first path
-- component of a repository) and their members with Harbor's role ids, robot accounts, the
-- token signing keys every instance shares, the audit log, and failed-login counters.
-- Times are Unix milliseconds.
CREATE TABLE users (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    username    TEXT NOT NULL UNIQUE,
    email       TEXT NOT NULL DEFAULT '',
    realname    TEXT NOT NULL DEFAULT '',
    comment     TEXT NOT NULL DEFAULT '',
    -- argon2id PHC string; NULL for users whose password lives elsewhere (LDAP).
    password    TEXT,
    source      TEXT NOT NULL,
    ldap_dn     TEXT,
    sysadmin    INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE user_groups (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL,
    group_type  INTEGER NOT NULL,
    -- normalised (lower case, no spaces around separators)
    ldap_dn     TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

-- AUTOINCREMENT: an id is never given twice, so a token naming a deleted project's id never
-- matches the project re-created under the same name.
CREATE TABLE projects (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL UNIQUE,
    public      INTEGER NOT NULL DEFAULT 0,
    owner_id    INTEGER,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

-- entity_type: 'u' (users.id) or 'g' (user_groups.id).
CREATE TABLE project_members (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id  INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    entity_type TEXT NOT NULL,
    entity_id   INTEGER NOT NULL,
    role        INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    UNIQUE (project_id, entity_type, entity_id)
);
CREATE INDEX project_members_entity ON project_members(entity_type, entity_id);

-- secret: SHA-256 of the generated secret (high entropy, so a fast hash suffices).
-- expires_at: Unix seconds, -1 never. permissions: Harbor's v2 permission list, as JSON.
CREATE TABLE robots (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    secret      TEXT NOT NULL,
    level       TEXT NOT NULL,
    project_id  INTEGER REFERENCES projects(id) ON DELETE CASCADE,
    duration    INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    disabled    INTEGER NOT NULL DEFAULT 0,
    permissions TEXT NOT NULL,
    creator     TEXT NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

-- retire_at: when the key stops verifying (NULL: current or not yet superseded).
CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY,
    private_key TEXT NOT NULL,
    certificate TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    retire_at   INTEGER
) WITHOUT ROWID;

CREATE TABLE audit_log (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    at            INTEGER NOT NULL,
    username      TEXT NOT NULL,
    operation     TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource      TEXT NOT NULL,
    client        TEXT NOT NULL DEFAULT '',
    success       INTEGER NOT NULL DEFAULT 1,
    detail        TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_log_at ON audit_log(at);

-- Failed logins per key ('user:NAME', 'addr:IP') in the window starting at window_start.
CREATE TABLE login_failures (
    key          TEXT PRIMARY KEY,
    count        INTEGER NOT NULL,
    window_start INTEGER NOT NULL
) WITHOUT ROWID;
