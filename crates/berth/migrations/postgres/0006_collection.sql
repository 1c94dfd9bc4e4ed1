-- Reservations: a writer takes one for a digest before it publishes the bytes and gives it up in
-- the transaction that links them; garbage collection never claims a reserved blob. A writer
-- that crashed leaves its reservation behind; the collector expires it after a day.
CREATE TABLE blob_reservations (
    id          TEXT PRIMARY KEY,
    digest      TEXT COLLATE "C" NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX blob_reservations_digest ON blob_reservations(digest);

-- What the collector asks: is a digest named by any manifest, recorded as one, old enough.
CREATE INDEX manifests_digest ON manifests(digest);
CREATE INDEX manifest_refs_target ON manifest_refs(target);
CREATE INDEX blobs_collectable ON blobs(state, last_referenced_at);

-- One row per garbage collection run, newest last.
CREATE TABLE gc_runs (
    id                 BIGSERIAL PRIMARY KEY,
    started_at         BIGINT NOT NULL,
    finished_at        BIGINT,
    dry_run            BIGINT NOT NULL,
    kind               TEXT NOT NULL,
    status             TEXT NOT NULL,
    blobs_deleted      BIGINT NOT NULL DEFAULT 0,
    manifests_deleted  BIGINT NOT NULL DEFAULT 0,
    links_removed      BIGINT NOT NULL DEFAULT 0,
    bytes_freed        BIGINT NOT NULL DEFAULT 0,
    detail             TEXT NOT NULL DEFAULT ''
);

-- Collections asked for (through the API of any instance), run by whichever instance holds the
-- collection lease, oldest first.
CREATE TABLE gc_requests (
    id            BIGSERIAL PRIMARY KEY,
    requested_at  BIGINT NOT NULL,
    requested_by  TEXT NOT NULL,
    dry_run       BIGINT NOT NULL,
    untagged      BIGINT NOT NULL
);
