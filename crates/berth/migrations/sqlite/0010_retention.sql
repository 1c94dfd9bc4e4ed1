-- Retention policies (Harbor's), at most one per project: rules saying which artifacts to keep;
-- running the policy deletes the others in the repositories its rules cover.
CREATE TABLE retention_policies (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id  INTEGER NOT NULL UNIQUE REFERENCES projects(id) ON DELETE CASCADE,
    policy      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

-- Each run of a policy, with what it decided per repository (JSON).
CREATE TABLE retention_executions (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    policy_id    INTEGER NOT NULL,
    dry_run      INTEGER NOT NULL,
    trigger_kind TEXT NOT NULL,
    status       TEXT NOT NULL,
    started_at   INTEGER NOT NULL,
    finished_at  INTEGER NOT NULL,
    tasks        TEXT NOT NULL
);
CREATE INDEX retention_executions_policy ON retention_executions(policy_id, id);
