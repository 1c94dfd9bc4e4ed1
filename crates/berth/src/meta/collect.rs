//! The statements of garbage collection, written once for both engines (with `$N` placeholders,
//! rewritten for SQLite).
//!
//! The protocol they make up: a writer reserves a digest before it publishes the bytes and gives
//! the reservation up in the transaction that links them; a collector claims a blob (state
//! `deleting`) only in a transaction that sees nothing referencing or reserving it, deletes its
//! bytes, then forgets it. Write transactions are serialized (SQLite's write lock, PostgreSQL's
//! `berth_state` row), so a claim and a reservation or link of the same digest are ordered: a
//! reservation after a claim fails with `BlobCollecting` until the blob is forgotten, and a claim
//! after a reservation or link claims nothing. The bytes of a linked or reserved blob are never
//! deleted.

/// Nothing references or reserves the blob row of the enclosing statement (`blobs`).
macro_rules! unreferenced {
    () => {
        "NOT EXISTS (SELECT 1 FROM repo_blobs WHERE repo_blobs.digest = blobs.digest) \
         AND NOT EXISTS (SELECT 1 FROM manifests WHERE manifests.digest = blobs.digest) \
         AND NOT EXISTS (SELECT 1 FROM manifest_refs WHERE manifest_refs.target = blobs.digest) \
         AND NOT EXISTS (SELECT 1 FROM blob_reservations \
                         WHERE blob_reservations.digest = blobs.digest)"
    };
}

/// $1 digest, $2 size, $3 now. Affects no row while the blob is being deleted.
pub const RESERVE_RECORD: &str =
    "INSERT INTO blobs (digest, size, state, created_at, last_referenced_at) \
     VALUES ($1, $2, 'stored', $3, $3) ON CONFLICT (digest) DO UPDATE SET \
     last_referenced_at = excluded.last_referenced_at WHERE blobs.state = 'stored'";

/// $1 id, $2 digest, $3 now.
pub const RESERVE: &str =
    "INSERT INTO blob_reservations (id, digest, created_at) VALUES ($1, $2, $3)";

/// $1 id.
pub const RELEASE: &str = "DELETE FROM blob_reservations WHERE id = $1";

/// $1 before.
pub const EXPIRE: &str = "DELETE FROM blob_reservations WHERE created_at < $1";

/// $1 digest, $2 before.
pub const CLAIM: &str = concat!(
    "UPDATE blobs SET state = 'deleting' WHERE digest = $1 AND state = 'stored' \
     AND last_referenced_at < $2 AND ",
    unreferenced!()
);

/// $1 digest.
pub const FORGET: &str = "DELETE FROM blobs WHERE digest = $1 AND state = 'deleting'";

/// $1 before, $2 after (digest, '' for the start), $3 limit.
pub const COLLECTABLE: &str = concat!(
    "SELECT digest, size, state, created_at, last_referenced_at FROM blobs \
     WHERE state = 'stored' AND last_referenced_at < $1 AND digest > $2 AND ",
    unreferenced!(),
    " ORDER BY digest LIMIT $3"
);

/// $1 limit.
pub const CLAIMED: &str = "SELECT digest, size, state, created_at, last_referenced_at FROM blobs \
     WHERE state = 'deleting' ORDER BY digest LIMIT $1";

/// $1 repo id, $2 digest, $3 before.
pub const UNLINK_UNREFERENCED: &str = "DELETE FROM repo_blobs WHERE repo_id = $1 AND digest = $2 \
     AND created_at < $3 AND NOT EXISTS (SELECT 1 FROM manifest_refs \
     WHERE manifest_refs.repo_id = repo_blobs.repo_id AND manifest_refs.target = repo_blobs.digest)";

/// $1 before, $2 limit.
pub const UNREFERENCED_LINKS: &str = "SELECT repositories.name, repo_blobs.digest FROM repo_blobs \
     JOIN repositories ON repositories.id = repo_blobs.repo_id \
     WHERE repo_blobs.created_at < $1 AND NOT EXISTS (SELECT 1 FROM manifest_refs \
     WHERE manifest_refs.repo_id = repo_blobs.repo_id AND manifest_refs.target = repo_blobs.digest) \
     ORDER BY repo_blobs.repo_id, repo_blobs.digest LIMIT $2";

/// The manifest rows (`manifests`) nothing keeps.
macro_rules! unkept {
    () => {
        "NOT EXISTS (SELECT 1 FROM tags WHERE tags.repo_id = manifests.repo_id \
                     AND tags.digest = manifests.digest) \
         AND NOT EXISTS (SELECT 1 FROM manifest_refs WHERE manifest_refs.repo_id = manifests.repo_id \
                         AND manifest_refs.target = manifests.digest AND manifest_refs.kind = 'manifest') \
         AND (manifests.subject IS NULL OR NOT EXISTS (SELECT 1 FROM manifests AS s \
              WHERE s.repo_id = manifests.repo_id AND s.digest = manifests.subject))"
    };
}

/// $1 before, $2 limit, $3 and $4 the repository name and digest to start after ('' for the
/// start).
pub const UNTAGGED: &str = concat!(
    "SELECT repositories.name, manifests.digest FROM manifests \
     JOIN repositories ON repositories.id = manifests.repo_id WHERE manifests.created_at < $1 \
     AND (repositories.name > $3 OR (repositories.name = $3 AND manifests.digest > $4)) AND ",
    unkept!(),
    " ORDER BY repositories.name, manifests.digest LIMIT $2"
);

/// $1 repo id, $2 digest, $3 before.
pub const IS_UNKEPT: &str = concat!(
    "SELECT COUNT(*) FROM manifests WHERE repo_id = $1 AND digest = $2 AND created_at < $3 AND ",
    unkept!()
);

/// $1 started_at … $10 detail.
pub const RECORD_RUN: &str =
    "INSERT INTO gc_runs (started_at, finished_at, dry_run, kind, status, \
     blobs_deleted, manifests_deleted, links_removed, bytes_freed, detail) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// $1 requested_at, $2 requested_by, $3 dry_run, $4 untagged.
pub const REQUEST: &str =
    "INSERT INTO gc_requests (requested_at, requested_by, dry_run, untagged) \
     VALUES ($1, $2, $3, $4)";

/// $1 limit.
pub const REQUESTS: &str =
    "SELECT id, requested_at, requested_by, dry_run, untagged FROM gc_requests \
     ORDER BY id LIMIT $1";

/// $1 repository name, $2 digest.
pub const TAGS_OF: &str =
    "SELECT tags.name FROM tags JOIN repositories ON repositories.id = tags.repo_id \
     WHERE repositories.name = $1 AND tags.digest = $2 ORDER BY tags.name";

/// $1 `<namespace>/`, $2 the first name past the namespace (`<namespace>0`).
pub const NAMESPACE_USAGE: &str = "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM (\
     SELECT repo_blobs.digest, MAX(repo_blobs.size) AS size FROM repo_blobs \
     JOIN repositories ON repositories.id = repo_blobs.repo_id \
     WHERE repositories.name >= $1 AND repositories.name < $2 GROUP BY repo_blobs.digest \
     UNION \
     SELECT manifests.digest, MAX(manifests.size) AS size FROM manifests \
     JOIN repositories ON repositories.id = manifests.repo_id \
     WHERE repositories.name >= $1 AND repositories.name < $2 GROUP BY manifests.digest) AS used";

/// $1 `<namespace>/`, $2 `<namespace>0`, $3 digest.
pub const NAMESPACE_HOLDS: &str = "SELECT COUNT(*) FROM (\
     SELECT 1 AS one FROM repo_blobs JOIN repositories ON repositories.id = repo_blobs.repo_id \
     WHERE repositories.name >= $1 AND repositories.name < $2 AND repo_blobs.digest = $3 \
     UNION ALL \
     SELECT 1 AS one FROM manifests JOIN repositories ON repositories.id = manifests.repo_id \
     WHERE repositories.name >= $1 AND repositories.name < $2 AND manifests.digest = $3) AS held";

/// $1 limit.
pub const RUNS: &str = "SELECT id, started_at, finished_at, dry_run, kind, status, blobs_deleted, \
     manifests_deleted, links_removed, bytes_freed, detail FROM gc_runs ORDER BY id DESC LIMIT $1";

/// $1 name.
pub const SCHEDULE: &str =
    "SELECT name, cron, parameters, created_at, updated_at FROM schedules WHERE name = $1";

/// $1 name, $2 cron, $3 parameters, $4 now (ms).
pub const SET_SCHEDULE: &str =
    "INSERT INTO schedules (name, cron, parameters, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $4) ON CONFLICT (name) DO UPDATE SET cron = excluded.cron, \
     parameters = excluded.parameters, updated_at = excluded.updated_at";

/// $1 rule, $2 images, $3 bytes, $4 failures, $5 error (kept when NULL), $6 at.
pub const REPLICATION_PROGRESS: &str =
    "INSERT INTO replication_progress (rule, images, bytes, failures, last_error, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (rule) DO UPDATE SET \
     images = replication_progress.images + excluded.images, \
     bytes = replication_progress.bytes + excluded.bytes, \
     failures = replication_progress.failures + excluded.failures, \
     last_error = COALESCE(excluded.last_error, replication_progress.last_error), \
     updated_at = excluded.updated_at";

/// $1 repo id, $2 digest, $3 at.
pub const PULL_MANIFEST: &str = "UPDATE manifests SET pulled_at = $3 \
     WHERE repo_id = $1 AND digest = $2 AND (pulled_at IS NULL OR pulled_at < $3)";

/// $1 repo id, $2 tag, $3 digest, $4 at: only while the tag still points at what was pulled.
pub const PULL_TAG: &str = "UPDATE tags SET pulled_at = $4 \
     WHERE repo_id = $1 AND name = $2 AND digest = $3 AND (pulled_at IS NULL OR pulled_at < $4)";

/// $1 repo id, $2 how many.
pub const PULL_COUNT: &str = "UPDATE repositories SET pull_count = pull_count + $2 WHERE id = $1";

/// The engine's handling of the collection changes (and of pull records, written the same way
/// for both engines): `async fn apply_collection(tx, ids, change)`, for a transaction type
/// `$tx` whose statements are `$sql(..)` of the ones above. The engine's `repo_id` and `now`
/// must be in scope.
macro_rules! collection_changes {
    ($sql:path, $tx:ty) => {
        /// `NotFound` unless `source` links `digest` as of this transaction: a mount links only
        /// what its source links at that moment, so the bytes are there.
        async fn check_mount_source(
            tx: &mut $tx,
            ids: &mut RepoIds,
            source: &$crate::oci::name::RepoName,
            digest: &$crate::oci::digest::Digest,
        ) -> $crate::meta::Result<()> {
            let source_id = repo_id(tx, ids, source).await?;
            let linked: i64 = sqlx::query_scalar(&$sql(
                "SELECT COUNT(*) FROM repo_blobs WHERE repo_id = $1 AND digest = $2",
            ))
            .bind(source_id)
            .bind(digest.to_string())
            .fetch_one(&mut **tx)
            .await?;
            if linked == 0 {
                return Err($crate::meta::MetaError::NotFound(format!(
                    "blob {digest} in {source}"
                )));
            }
            Ok(())
        }

        /// Applies one of the garbage collection changes (any other change is not one).
        async fn apply_collection(
            tx: &mut $tx,
            ids: &mut RepoIds,
            change: $crate::meta::Change,
        ) -> $crate::meta::Result<()> {
            use $crate::meta::collect::*;
            use $crate::meta::{Change, MetaError};
            match change {
                Change::ReserveBlob { id, digest, size } => {
                    let t = now();
                    let done = sqlx::query(&$sql(RESERVE_RECORD))
                        .bind(digest.to_string())
                        .bind(size as i64)
                        .bind(t)
                        .execute(&mut **tx)
                        .await?;
                    if done.rows_affected() == 0 {
                        return Err(MetaError::BlobCollecting(digest));
                    }
                    sqlx::query(&$sql(RESERVE))
                        .bind(&id)
                        .bind(digest.to_string())
                        .bind(t)
                        .execute(&mut **tx)
                        .await?;
                }
                Change::ReleaseBlob { id } => {
                    let done = sqlx::query(&$sql(RELEASE))
                        .bind(&id)
                        .execute(&mut **tx)
                        .await?;
                    if done.rows_affected() == 0 {
                        return Err(MetaError::NotFound(format!("blob reservation {id}")));
                    }
                }
                Change::ExpireReservations { before } => {
                    sqlx::query(&$sql(EXPIRE))
                        .bind(before)
                        .execute(&mut **tx)
                        .await?;
                }
                Change::ClaimBlob { digest, before } => {
                    sqlx::query(&$sql(CLAIM))
                        .bind(digest.to_string())
                        .bind(before)
                        .execute(&mut **tx)
                        .await?;
                }
                Change::ForgetBlob { digest } => {
                    sqlx::query(&$sql(FORGET))
                        .bind(digest.to_string())
                        .execute(&mut **tx)
                        .await?;
                }
                Change::UnlinkUnreferenced {
                    repo,
                    digest,
                    before,
                } => {
                    let Some(id) = repo_id(tx, ids, &repo).await? else {
                        return Ok(());
                    };
                    let done = sqlx::query(&$sql(UNLINK_UNREFERENCED))
                        .bind(id)
                        .bind(digest.to_string())
                        .bind(before)
                        .execute(&mut **tx)
                        .await?;
                    if done.rows_affected() > 0 {
                        // Its grace period starts now.
                        sqlx::query(&$sql(
                            "UPDATE blobs SET last_referenced_at = $1 WHERE digest = $2",
                        ))
                        .bind(now())
                        .bind(digest.to_string())
                        .execute(&mut **tx)
                        .await?;
                    }
                }
                Change::RequireUnkeptManifest {
                    repo,
                    digest,
                    before,
                } => {
                    let kept = MetaError::Conflict(format!(
                        "manifest {digest} of {repo} is tagged, listed or recent"
                    ));
                    let Some(id) = repo_id(tx, ids, &repo).await? else {
                        return Err(kept);
                    };
                    let unkept: i64 = sqlx::query_scalar(&$sql(IS_UNKEPT))
                        .bind(id)
                        .bind(digest.to_string())
                        .bind(before)
                        .fetch_one(&mut **tx)
                        .await?;
                    if unkept == 0 {
                        return Err(kept);
                    }
                }
                Change::RequireManifest { repo, digest } => {
                    let gone = MetaError::NotFound(format!("manifest {digest} in {repo}"));
                    let Some(id) = repo_id(tx, ids, &repo).await? else {
                        return Err(gone);
                    };
                    let recorded: i64 = sqlx::query_scalar(&$sql(
                        "SELECT COUNT(*) FROM manifests WHERE repo_id = $1 AND digest = $2",
                    ))
                    .bind(id)
                    .bind(digest.to_string())
                    .fetch_one(&mut **tx)
                    .await?;
                    if recorded == 0 {
                        return Err(gone);
                    }
                }
                Change::RequireTagUnmoved { repo, tag, digest } => {
                    let Some(id) = repo_id(tx, ids, &repo).await? else {
                        return Ok(());
                    };
                    let elsewhere: i64 = sqlx::query_scalar(&$sql(
                        "SELECT COUNT(*) FROM tags WHERE repo_id = $1 AND name = $2 AND digest <> $3",
                    ))
                    .bind(id)
                    .bind(tag.as_str())
                    .bind(digest.to_string())
                    .fetch_one(&mut **tx)
                    .await?;
                    if elsewhere > 0 {
                        return Err(MetaError::Conflict(format!(
                            "tag {tag} of {repo} points at another manifest"
                        )));
                    }
                }
                Change::RecordCollection(run) => {
                    sqlx::query(&$sql(RECORD_RUN))
                        .bind(run.started_at)
                        .bind(run.finished_at)
                        .bind(i64::from(run.dry_run))
                        .bind(&run.kind)
                        .bind(&run.status)
                        .bind(run.blobs_deleted as i64)
                        .bind(run.manifests_deleted as i64)
                        .bind(run.links_removed as i64)
                        .bind(run.bytes_freed as i64)
                        .bind(&run.detail)
                        .execute(&mut **tx)
                        .await?;
                }
                Change::RequestCollection(r) => {
                    sqlx::query(&$sql(REQUEST))
                        .bind(r.requested_at)
                        .bind(&r.requested_by)
                        .bind(i64::from(r.dry_run))
                        .bind(i64::from(r.untagged))
                        .execute(&mut **tx)
                        .await?;
                }
                Change::TakeCollectionRequest { id } => {
                    let done = sqlx::query(&$sql("DELETE FROM gc_requests WHERE id = $1"))
                        .bind(id)
                        .execute(&mut **tx)
                        .await?;
                    if done.rows_affected() == 0 {
                        return Err(MetaError::NotFound(format!("collection request {id}")));
                    }
                }
                Change::RecordPulls(pulls) => {
                    for p in pulls {
                        let Some(id) = repo_id(tx, ids, &p.repo).await? else {
                            continue;
                        };
                        let digest = p.digest.to_string();
                        sqlx::query(&$sql(PULL_MANIFEST))
                            .bind(id)
                            .bind(&digest)
                            .bind(p.at)
                            .execute(&mut **tx)
                            .await?;
                        if let Some(tag) = &p.tag {
                            sqlx::query(&$sql(PULL_TAG))
                                .bind(id)
                                .bind(tag.as_str())
                                .bind(&digest)
                                .bind(p.at)
                                .execute(&mut **tx)
                                .await?;
                        }
                        sqlx::query(&$sql(PULL_COUNT))
                            .bind(id)
                            .bind(p.count as i64)
                            .execute(&mut **tx)
                            .await?;
                    }
                }
                Change::SetSchedule(s) => {
                    sqlx::query(&$sql(SET_SCHEDULE))
                        .bind(&s.name)
                        .bind(&s.cron)
                        .bind(s.parameters.to_string())
                        .bind(s.updated_at)
                        .execute(&mut **tx)
                        .await?;
                }
                Change::RemoveSchedule { name } => {
                    sqlx::query(&$sql("DELETE FROM schedules WHERE name = $1"))
                        .bind(&name)
                        .execute(&mut **tx)
                        .await?;
                }
                Change::InitSetting { key, value } => {
                    sqlx::query(&$sql(
                        "INSERT INTO settings (key, value) VALUES ($1, $2) \
                         ON CONFLICT (key) DO NOTHING",
                    ))
                    .bind(&key)
                    .bind(&value)
                    .execute(&mut **tx)
                    .await?;
                }
                Change::SetSetting { key, value: Some(value) } => {
                    sqlx::query(&$sql(
                        "INSERT INTO settings (key, value) VALUES ($1, $2) \
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    ))
                    .bind(&key)
                    .bind(&value)
                    .execute(&mut **tx)
                    .await?;
                }
                Change::SetSetting { key, value: None } => {
                    sqlx::query(&$sql("DELETE FROM settings WHERE key = $1"))
                        .bind(&key)
                        .execute(&mut **tx)
                        .await?;
                }
                Change::ReplicationCopy(c) => {
                    sqlx::query(&$sql(
                        "INSERT INTO replication_history (rule, action, repository, reference, \
                         outcome, bytes, error, finished_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    ))
                    .bind(&c.rule)
                    .bind(&c.action)
                    .bind(&c.repository)
                    .bind(&c.reference)
                    .bind(&c.outcome)
                    .bind(c.bytes as i64)
                    .bind(&c.error)
                    .bind(c.finished_at)
                    .execute(&mut **tx)
                    .await?;
                    sqlx::query(&$sql(
                        "DELETE FROM replication_history WHERE id <= \
                         (SELECT MAX(id) FROM replication_history) - 100000",
                    ))
                    .execute(&mut **tx)
                    .await?;
                }
                Change::Dequeue { topic, seq } => {
                    sqlx::query(&$sql("DELETE FROM outbox WHERE topic = $1 AND seq <= $2"))
                        .bind(&topic)
                        .bind(seq)
                        .execute(&mut **tx)
                        .await?;
                }
                Change::ReplicationProgress(p) => {
                    sqlx::query(&$sql(REPLICATION_PROGRESS))
                        .bind(&p.rule)
                        .bind(p.images as i64)
                        .bind(p.bytes as i64)
                        .bind(p.failures as i64)
                        .bind(&p.error)
                        .bind(p.updated_at)
                        .execute(&mut **tx)
                        .await?;
                }
                other => {
                    return Err(MetaError::Corrupt(format!(
                        "not a collection change: {other:?}"
                    )))
                }
            }
            Ok(())
        }
    };
}
pub(crate) use collection_changes;

/// [`UncachedReads`](crate::meta::UncachedReads) for `$store`, whose `reader()` pool takes
/// `$sql(..)` of the statements above.
macro_rules! collection_reads {
    ($store:ty, $sql:path) => {
        #[async_trait::async_trait]
        impl $crate::meta::UncachedReads for $store {
        async fn tags_of(
            &self,
            repo: &$crate::oci::name::RepoName,
            digest: &$crate::oci::digest::Digest,
        ) -> $crate::meta::Result<Vec<$crate::oci::name::Tag>> {
            use $crate::meta::collect::*;
            let names: Vec<String> = sqlx::query_scalar(&$sql(TAGS_OF))
                .bind(repo.as_str())
                .bind(digest.to_string())
                .fetch_all(self.reader())
                .await?;
            names
                .iter()
                .map(|n| {
                    n.parse().map_err(|e| {
                        $crate::meta::MetaError::Corrupt(format!("stored tag {n:?}: {e}"))
                    })
                })
                .collect()
        }

        async fn namespace_holds(
            &self,
            namespace: &str,
            digest: &$crate::oci::digest::Digest,
        ) -> $crate::meta::Result<bool> {
            use $crate::meta::collect::*;
            let held: i64 = sqlx::query_scalar(&$sql(NAMESPACE_HOLDS))
                .bind(format!("{namespace}/"))
                .bind(format!("{namespace}0"))
                .bind(digest.to_string())
                .fetch_one(self.reader())
                .await?;
            Ok(held > 0)
        }

        async fn namespace_usage(&self, namespace: &str) -> $crate::meta::Result<u64> {
            use $crate::meta::collect::*;
            let used: i64 = sqlx::query_scalar(&$sql(NAMESPACE_USAGE))
                .bind(format!("{namespace}/"))
                .bind(format!("{namespace}0"))
                .fetch_one(self.reader())
                .await?;
            Ok(used.max(0) as u64)
        }

        async fn collectable_blobs(
            &self,
            before: i64,
            after: Option<&$crate::oci::digest::Digest>,
            limit: u32,
        ) -> $crate::meta::Result<Vec<$crate::meta::BlobRecord>> {
            use $crate::meta::collect::*;
            let after = after.map(|d| d.to_string()).unwrap_or_default();
            let rows = sqlx::query(&$sql(COLLECTABLE))
                .bind(before)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(self.reader())
                .await?;
            blob_rows(&rows)
        }

        async fn claimed_blobs(
            &self,
            limit: u32,
        ) -> $crate::meta::Result<Vec<$crate::meta::BlobRecord>> {
            use $crate::meta::collect::*;
            let rows = sqlx::query(&$sql(CLAIMED))
                .bind(i64::from(limit))
                .fetch_all(self.reader())
                .await?;
            blob_rows(&rows)
        }

        async fn unreferenced_links(
            &self,
            before: i64,
            limit: u32,
        ) -> $crate::meta::Result<Vec<($crate::oci::name::RepoName, $crate::oci::digest::Digest)>>
        {
            use $crate::meta::collect::*;
            let rows = sqlx::query(&$sql(UNREFERENCED_LINKS))
                .bind(before)
                .bind(i64::from(limit))
                .fetch_all(self.reader())
                .await?;
            repo_digest_rows(&rows)
        }

        async fn untagged_manifests(
            &self,
            before: i64,
            after: Option<&($crate::oci::name::RepoName, $crate::oci::digest::Digest)>,
            limit: u32,
        ) -> $crate::meta::Result<Vec<($crate::oci::name::RepoName, $crate::oci::digest::Digest)>>
        {
            use $crate::meta::collect::*;
            let (repo, digest) = after
                .map(|(r, d)| (r.as_str().to_string(), d.to_string()))
                .unwrap_or_default();
            let rows = sqlx::query(&$sql(UNTAGGED))
                .bind(before)
                .bind(i64::from(limit))
                .bind(repo)
                .bind(digest)
                .fetch_all(self.reader())
                .await?;
            repo_digest_rows(&rows)
        }

        async fn collection_runs(
            &self,
            limit: u32,
        ) -> $crate::meta::Result<Vec<$crate::meta::CollectionRun>> {
            use $crate::meta::collect::*;
            let rows = sqlx::query(&$sql(RUNS))
                .bind(i64::from(limit))
                .fetch_all(self.reader())
                .await?;
            rows.iter().map(|r| run_row(r)).collect()
        }

        async fn collection_requests(
            &self,
            limit: u32,
        ) -> $crate::meta::Result<Vec<$crate::meta::CollectionRequest>> {
            use $crate::meta::collect::*;
            let rows = sqlx::query(&$sql(REQUESTS))
                .bind(i64::from(limit))
                .fetch_all(self.reader())
                .await?;
            rows.iter().map(|r| request_row(r)).collect()
        }

        async fn schedule(
            &self,
            name: &str,
        ) -> $crate::meta::Result<Option<$crate::meta::ScheduleRecord>> {
            use $crate::meta::collect::*;
            let row = sqlx::query(&$sql(SCHEDULE))
                .bind(name)
                .fetch_optional(self.reader())
                .await?;
            row.as_ref().map(|r| schedule_row(r)).transpose()
        }

        async fn setting(&self, key: &str) -> $crate::meta::Result<Option<String>> {
            let value: Option<String> =
                sqlx::query_scalar(&$sql("SELECT value FROM settings WHERE key = $1"))
                    .bind(key)
                    .fetch_optional(self.writer())
                    .await?;
            Ok(value)
        }

        async fn replication_history(
            &self,
            rule: Option<&str>,
            limit: u32,
        ) -> $crate::meta::Result<Vec<$crate::meta::ReplicationCopy>> {
            use $crate::meta::rows::Columns;
            let rows = sqlx::query(&$sql(
                "SELECT rule, action, repository, reference, outcome, bytes, error, finished_at \
                 FROM replication_history WHERE ($1 = '' OR rule = $1) ORDER BY id DESC LIMIT $2",
            ))
            .bind(rule.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(self.reader())
            .await?;
            rows.iter()
                .map(|r| {
                    Ok($crate::meta::ReplicationCopy {
                        rule: r.text("rule")?.to_string(),
                        action: r.text("action")?.to_string(),
                        repository: r.text("repository")?.to_string(),
                        reference: r.text("reference")?.to_string(),
                        outcome: r.text("outcome")?.to_string(),
                        bytes: r.int("bytes")? as u64,
                        error: r.maybe_text("error")?.map(str::to_string),
                        finished_at: r.int("finished_at")?,
                    })
                })
                .collect()
        }

        async fn replication_progress(
            &self,
        ) -> $crate::meta::Result<Vec<$crate::meta::ReplicationProgress>> {
            use $crate::meta::rows::Columns;
            let rows = sqlx::query(&$sql(
                "SELECT rule, images, bytes, failures, last_error, updated_at \
                 FROM replication_progress ORDER BY rule",
            ))
            .fetch_all(self.reader())
            .await?;
            rows.iter()
                .map(|r| {
                    Ok($crate::meta::ReplicationProgress {
                        rule: r.text("rule")?.to_string(),
                        images: r.int("images")? as u64,
                        bytes: r.int("bytes")? as u64,
                        failures: r.int("failures")? as u64,
                        error: r.maybe_text("last_error")?.map(str::to_string),
                        updated_at: r.int("updated_at")?,
                    })
                })
                .collect()
        }
        }
    };
}
pub(crate) use collection_reads;

use super::rows::{parse_digest, parse_repo, Columns};
use super::{BlobRecord, CollectionRequest, CollectionRun, Result, ScheduleRecord};

pub fn schedule_row<'r>(r: &'r impl Columns<'r>) -> Result<ScheduleRecord> {
    let parameters = r.text("parameters")?;
    Ok(ScheduleRecord {
        name: r.text("name")?.to_string(),
        cron: r.text("cron")?.to_string(),
        parameters: serde_json::from_str(parameters)
            .map_err(|e| super::MetaError::Corrupt(format!("stored schedule parameters: {e}")))?,
        created_at: r.int("created_at")?,
        updated_at: r.int("updated_at")?,
    })
}

pub fn request_row<'r>(r: &'r impl Columns<'r>) -> Result<CollectionRequest> {
    Ok(CollectionRequest {
        id: r.int("id")?,
        requested_at: r.int("requested_at")?,
        requested_by: r.text("requested_by")?.to_string(),
        dry_run: r.int("dry_run")? != 0,
        untagged: r.int("untagged")? != 0,
    })
}
use crate::oci::digest::Digest;
use crate::oci::name::RepoName;

pub fn blob_rows<R>(rows: &[R]) -> Result<Vec<BlobRecord>>
where
    for<'r> R: Columns<'r>,
{
    rows.iter()
        .map(|r| super::rows::blob(&parse_digest(r.text("digest")?)?, r))
        .collect()
}

pub fn repo_digest_rows<R>(rows: &[R]) -> Result<Vec<(RepoName, Digest)>>
where
    for<'r> R: Columns<'r>,
{
    rows.iter()
        .map(|r| {
            Ok((
                parse_repo(r.text("name")?)?,
                parse_digest(r.text("digest")?)?,
            ))
        })
        .collect()
}

pub fn run_row<'r>(r: &'r impl Columns<'r>) -> Result<CollectionRun> {
    Ok(CollectionRun {
        id: r.int("id")?,
        started_at: r.int("started_at")?,
        finished_at: r.int("finished_at")?,
        dry_run: r.int("dry_run")? != 0,
        kind: r.text("kind")?.to_string(),
        status: r.text("status")?.to_string(),
        blobs_deleted: r.int("blobs_deleted")? as u64,
        manifests_deleted: r.int("manifests_deleted")? as u64,
        links_removed: r.int("links_removed")? as u64,
        bytes_freed: r.int("bytes_freed")? as u64,
        detail: r.text("detail")?.to_string(),
    })
}
