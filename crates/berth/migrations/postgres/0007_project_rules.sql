-- Immutable tag rules (Harbor's): a tag that an enabled rule of its project matches may be
-- pushed once and never moved or deleted. Patterns are doublestar globs; the repository pattern
-- applies to the name below the project.
CREATE TABLE immutable_rules (
    id              BIGSERIAL PRIMARY KEY,
    project_id      BIGINT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    priority        BIGINT NOT NULL DEFAULT 0,
    disabled        BIGINT NOT NULL DEFAULT 0,
    tag_pattern     TEXT NOT NULL,
    tag_decoration  TEXT NOT NULL,
    repo_pattern    TEXT NOT NULL,
    repo_decoration TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX immutable_rules_project ON immutable_rules(project_id);

-- A project's storage quota in bytes (-1: none).
ALTER TABLE projects ADD COLUMN storage_limit BIGINT NOT NULL DEFAULT -1;
