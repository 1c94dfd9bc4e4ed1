-- Repositories, per-repository blob links, manifests, tags, upload sessions, the event outbox, the
-- global blob table, leases, and the change counter read caches are checked against.
-- Names and digests compare byte by byte (COLLATE "C"), so listings are in the same lexical
-- order whatever the database's locale.
CREATE TABLE repositories (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT COLLATE "C" NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);

-- A blob is visible in a repository only through a row here.
CREATE TABLE repo_blobs (
    repo_id     BIGINT NOT NULL REFERENCES repositories(id),
    digest      TEXT COLLATE "C" NOT NULL,
    size        BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (repo_id, digest)
);
CREATE INDEX repo_blobs_digest ON repo_blobs(digest);

CREATE TABLE manifests (
    repo_id       BIGINT NOT NULL REFERENCES repositories(id),
    digest        TEXT COLLATE "C" NOT NULL,
    media_type    TEXT NOT NULL,
    size          BIGINT NOT NULL,
    artifact_type TEXT,
    subject       TEXT COLLATE "C",
    annotations   TEXT,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (repo_id, digest)
);
CREATE INDEX manifests_subject ON manifests(repo_id, subject) WHERE subject IS NOT NULL;

-- What each manifest references (blobs and child manifests), for deletion checks and GC.
CREATE TABLE manifest_refs (
    repo_id     BIGINT NOT NULL,
    manifest    TEXT COLLATE "C" NOT NULL,
    target      TEXT COLLATE "C" NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('blob', 'manifest')),
    PRIMARY KEY (repo_id, manifest, target)
);

CREATE TABLE tags (
    repo_id     BIGINT NOT NULL REFERENCES repositories(id),
    name        TEXT COLLATE "C" NOT NULL,
    digest      TEXT COLLATE "C" NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (repo_id, name)
);
CREATE INDEX tags_digest ON tags(repo_id, digest);

CREATE TABLE uploads (
    id          TEXT PRIMARY KEY,
    repo_id     BIGINT NOT NULL REFERENCES repositories(id),
    size        BIGINT NOT NULL,
    -- The storage part names acknowledged so far, in order.
    parts       TEXT[] NOT NULL DEFAULT '{}',
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX uploads_updated ON uploads(updated_at);

-- Events written in the same transaction as the change they report; delivered later. The topic
-- names the consumer (e.g. one notification endpoint), each of which acknowledges on its own.
-- Writers serialize on berth_state, so sequence numbers are taken in commit order.
CREATE TABLE outbox (
    seq         BIGSERIAL PRIMARY KEY,
    topic       TEXT NOT NULL,
    payload     TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX outbox_topic ON outbox(topic, seq);

-- The global blob table: one row per stored blob or manifest, whatever the number of repositories
-- that link it (see the SQLite migration 0002 for the meaning of each column).
CREATE TABLE blobs (
    digest              TEXT COLLATE "C" PRIMARY KEY,
    size                BIGINT NOT NULL,
    state               TEXT NOT NULL DEFAULT 'stored' CHECK (state IN ('stored', 'deleting')),
    created_at          BIGINT NOT NULL,
    last_referenced_at  BIGINT NOT NULL
);

-- Leases (expires_at in Unix milliseconds of the database server's clock).
CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    token       BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);

-- One row. Every write transaction locks it first (so writers from every instance commit one at
-- a time, and outbox sequence numbers follow commit order); a transaction that changes what
-- cached reads return also bumps generation and announces it, with the repositories it touched,
-- on the berth_changes channel.
CREATE TABLE berth_state (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    generation  BIGINT NOT NULL
);
INSERT INTO berth_state (id, generation) VALUES (1, 0);
