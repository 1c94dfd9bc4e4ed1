-- Identities and what they may do: local and LDAP users, LDAP groups, projects (the first path
-- component of a repository) and their members with Harbor's role ids, robot accounts, the
-- token signing keys every instance shares, the audit log, and failed-login counters.
-- Times are Unix milliseconds.
CREATE TABLE users (
    id          BIGSERIAL PRIMARY KEY,
    username    TEXT COLLATE "C" NOT NULL UNIQUE,
    email       TEXT NOT NULL DEFAULT '',
    realname    TEXT NOT NULL DEFAULT '',
    comment     TEXT NOT NULL DEFAULT '',
    -- argon2id PHC string; NULL for users whose password lives elsewhere (LDAP).
    password    TEXT,
    source      TEXT NOT NULL,
    ldap_dn     TEXT,
    sysadmin    BIGINT NOT NULL DEFAULT 0,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE user_groups (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL,
    group_type  BIGINT NOT NULL,
    -- normalised (lower case, no spaces around separators)
    ldap_dn     TEXT COLLATE "C" NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);

-- BIGSERIAL: an id is never given twice, so a token naming a deleted project's id never
-- matches the project re-created under the same name.
CREATE TABLE projects (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT COLLATE "C" NOT NULL UNIQUE,
    public      BIGINT NOT NULL DEFAULT 0,
    owner_id    BIGINT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

-- entity_type: 'u' (users.id) or 'g' (user_groups.id).
CREATE TABLE project_members (
    id          BIGSERIAL PRIMARY KEY,
    project_id  BIGINT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    entity_type TEXT NOT NULL,
    entity_id   BIGINT NOT NULL,
    role        BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    UNIQUE (project_id, entity_type, entity_id)
);
CREATE INDEX project_members_entity ON project_members(entity_type, entity_id);

-- secret: SHA-256 of the generated secret (high entropy, so a fast hash suffices).
-- expires_at: Unix seconds, -1 never. permissions: Harbor's v2 permission list, as JSON.
CREATE TABLE robots (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT COLLATE "C" NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    secret      TEXT NOT NULL,
    level       TEXT NOT NULL,
    project_id  BIGINT REFERENCES projects(id) ON DELETE CASCADE,
    duration    BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    disabled    BIGINT NOT NULL DEFAULT 0,
    permissions TEXT NOT NULL,
    creator     TEXT NOT NULL DEFAULT '',
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

-- retire_at: when the key stops verifying (NULL: current or not yet superseded).
CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY,
    private_key TEXT NOT NULL,
    certificate TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    retire_at   BIGINT
);

CREATE TABLE audit_log (
    id            BIGSERIAL PRIMARY KEY,
    at            BIGINT NOT NULL,
    username      TEXT NOT NULL,
    operation     TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource      TEXT NOT NULL,
    client        TEXT NOT NULL DEFAULT '',
    success       BIGINT NOT NULL DEFAULT 1,
    detail        TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_log_at ON audit_log(at);

-- Failed logins per key ('user:NAME', 'addr:IP') in the window starting at window_start.
CREATE TABLE login_failures (
    key          TEXT PRIMARY KEY,
    count        BIGINT NOT NULL,
    window_start BIGINT NOT NULL
);
