//! [`MetaStore`] on PostgreSQL (sqlx), for any number of instances sharing one database.
//!
//! Writes: one writer task per instance commits the changes of many callers together (group
//! commit, [`super::group`]). Every write transaction first locks the one row of `berth_state`,
//! so the instances' transactions commit one at a time: outbox sequence numbers follow commit
//! order (a consumer acknowledging "up to `seq`" never skips an event committed late), and the
//! `generation` in that row counts the commits that may change what cached reads return. Such a
//! transaction bumps it first thing (taking the lock) and announces, with `NOTIFY berth_changes`
//! (sent at commit), its generation and the repositories it may have touched.
//!
//! Reads through the cache ([`super::cache`]) are never stale: [`MetaStore::read_point`] reads
//! the committed generation *after* the read was asked for (one query, shared by every reader
//! waiting at that moment), then waits until this instance's listener has applied the
//! announcements up to it. Since announcements arrive in commit order, every change committed
//! before the read — through any instance — has then invalidated what it touched, per
//! repository. Should the listener lose its connection, reads bypass the cache until it is back
//! and everything cached before is void.
//!
//! Migrations take PostgreSQL's advisory lock (sqlx), so instances starting together apply each
//! migration once. A database that cannot be reached is [`MetaError::Unavailable`] after the
//! pool's acquire timeout: callers answer 503 and nothing is half-written (one transaction per
//! group).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Acquire, Connection, PgConnection, Postgres, Row, Transaction};
use tokio::sync::watch;

use super::group::{GroupWriter, WriteRequest, Writes};
use super::rows::{self, now, parse_repo, MANIFEST_COLUMNS};
use super::{
    affected, BlobRecord, Change, Lease, ManifestRecord, MetaError, MetaStore, OutboxEvent, Page,
    Result, UploadRecord,
};
use crate::oci::digest::Digest;
use crate::oci::name::{Reference, RepoName};

/// The channel commits are announced on.
const CHANNEL: &str = "berth_changes";

/// The longest a read waits for this instance's listener to catch up with a commit before it
/// reads through the cache instead.
const CATCH_UP: Duration = Duration::from_secs(1);

/// PostgreSQL's limit on a notification's payload is 8000 bytes; longer lists of repositories
/// are announced as "everything changed".
const MAX_PAYLOAD: usize = 7900;

/// The connection pool (the `database.pool` section).
#[derive(Clone, Debug)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub min_connections: u32,
    pub max_lifetime: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    /// How long a caller waits for a connection before the database counts as unavailable.
    pub acquire_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_connections: 16,
            min_connections: 0,
            max_lifetime: Some(Duration::from_secs(30 * 60)),
            idle_timeout: Some(Duration::from_secs(10 * 60)),
            acquire_timeout: Duration::from_secs(2),
        }
    }
}

pub struct PgMetaStore {
    pool: PgPool,
    writes: Writes,
    changes: Arc<ChangeLog>,
    point: ReadPoint,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for PgMetaStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl PgMetaStore {
    fn reader(&self) -> &PgPool {
        &self.pool
    }

    fn writer(&self) -> &PgPool {
        &self.pool
    }

    /// Connects, brings the schema up to date and starts the writer and the change listener.
    pub async fn connect(options: PgConnectOptions, pool: &PoolSettings) -> Result<PgMetaStore> {
        let pool = PgPoolOptions::new()
            .max_connections(pool.max_connections.max(2))
            .min_connections(pool.min_connections)
            .max_lifetime(pool.max_lifetime)
            .idle_timeout(pool.idle_timeout)
            .acquire_timeout(pool.acquire_timeout)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        let changes = Arc::new(ChangeLog::default());
        let listener = tokio::spawn(listen(pool.clone(), changes.clone()));
        let writes = Writes::spawn(PgWriter {
            pool: pool.clone(),
            ids: RepoIds::new(),
        });
        Ok(PgMetaStore {
            pool,
            writes,
            changes,
            point: ReadPoint::default(),
            listener,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Cache invalidation across instances

/// What this instance's listener has learnt of the commits of every instance.
#[derive(Default)]
struct ChangeLog {
    /// Whether the listener is connected and has applied every announcement since it connected.
    synced: AtomicBool,
    /// The generation up to which announcements have been applied.
    applied: watch::Sender<u64>,
    log: Mutex<Changed>,
}

/// The last generation that changed each repository, the catalog, and everything at once.
#[derive(Default)]
struct Changed {
    repos: HashMap<String, u64>,
    catalog: u64,
    all: u64,
}

impl ChangeLog {
    fn changed_since(&self, repo: Option<&RepoName>, point: u64) -> bool {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.all > point
            || match repo {
                Some(r) => log.repos.get(r.as_str()).is_some_and(|g| *g > point),
                None => log.catalog > point,
            }
    }

    /// Applies one announcement: `<generation>\t<c|->\t<repo>\t<repo>...` or `<generation>\t*`.
    /// `false` if it cannot be read, which leaves this instance not knowing what changed.
    fn apply(&self, payload: &str) -> bool {
        let mut parts = payload.split('\t');
        let Some(generation) = parts.next().and_then(|g| g.parse::<u64>().ok()) else {
            return false;
        };
        {
            let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
            match parts.next() {
                Some("c") => log.catalog = generation,
                Some("-") => {}
                _ => log.all = generation,
            }
            for repo in parts {
                log.repos.insert(repo.to_string(), generation);
            }
        }
        self.applied_up_to(generation);
        true
    }

    /// Marks everything changed at `generation`, as after a (re)connect.
    fn everything_changed(&self, generation: u64) {
        {
            let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
            log.all = generation;
            log.repos.clear();
        }
        self.applied_up_to(generation);
    }

    fn applied_up_to(&self, generation: u64) {
        self.applied.send_if_modified(|g| {
            let newer = generation > *g;
            if newer {
                *g = generation;
            }
            newer
        });
    }
}

/// The listener task: (re)connects, listens, then applies announcements in commit order.
async fn listen(pool: PgPool, changes: Arc<ChangeLog>) {
    loop {
        match listen_once(&pool, &changes).await {
            Ok(()) => tracing::warn!("the change listener's connection closed; reconnecting"),
            Err(e) => tracing::warn!(error = %e, "the change listener failed; reconnecting"),
        }
        changes.synced.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn listen_once(pool: &PgPool, changes: &ChangeLog) -> Result<()> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.ignore_pool_close_event(true);
    listener.listen(CHANNEL).await?;
    // Announcements missed while not listening are unknown: what was cached before is void.
    let generation = current_generation(pool).await?;
    changes.everything_changed(generation);
    changes.synced.store(true, Ordering::SeqCst);
    while let Some(n) = listener.try_recv().await? {
        if !changes.apply(n.payload()) {
            // What changed is unknown: start over (reads bypass the cache until then).
            return Err(MetaError::Corrupt(format!(
                "unreadable change announcement {:?}",
                n.payload()
            )));
        }
    }
    Ok(())
}

async fn current_generation(pool: &PgPool) -> Result<u64> {
    let g: i64 = sqlx::query_scalar("SELECT generation FROM berth_state WHERE id = 1")
        .fetch_one(pool)
        .await?;
    Ok(g as u64)
}

/// Reads of the committed generation, shared: a caller waits for one that *started after* it
/// asked (so it covers every commit acknowledged before), and one query serves every caller
/// that was waiting when it started. Callers take turns on one lock (fair, first come first
/// served); whoever holds it either finds a result new enough or runs the query itself, so a
/// caller never waits for a query nobody runs, even when the caller running one is cancelled.
#[derive(Default)]
struct ReadPoint {
    /// Queries started so far.
    started: AtomicU64,
    /// The last query's number and result.
    last: tokio::sync::Mutex<(u64, Option<u64>)>,
}

/// The longest a read point's query may take before the read goes to the database uncached.
const READ_POINT_TIMEOUT: Duration = Duration::from_secs(2);

impl ReadPoint {
    async fn get(&self, pool: &PgPool) -> Option<u64> {
        let want = self.started.load(Ordering::SeqCst) + 1;
        let mut last = self.last.lock().await;
        if last.0 >= want {
            return last.1;
        }
        let mine = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        let value = tokio::time::timeout(READ_POINT_TIMEOUT, current_generation(pool))
            .await
            .ok()
            .and_then(|g| g.ok());
        *last = (mine, value);
        value
    }
}

// ---------------------------------------------------------------------------------------------
// Writes

struct PgWriter {
    pool: PgPool,
    ids: RepoIds,
}

#[async_trait]
impl GroupWriter for PgWriter {
    async fn write(&mut self, group: &mut [WriteRequest]) -> Result<Vec<Result<()>>> {
        let mut conn = self.pool.acquire().await?;
        let written = write_group(&mut conn, &mut self.ids, group).await;
        if written.is_err() {
            self.ids.clear();
            // The connection may be broken or left inside a failed transaction: do not reuse it.
            let _ = conn.detach().close().await;
        }
        written
    }
}

async fn write_group(
    conn: &mut PgConnection,
    ids: &mut RepoIds,
    group: &mut [WriteRequest],
) -> Result<Vec<Result<()>>> {
    // Most groups succeed whole: first apply every request in the one transaction, with no
    // savepoints (each costs two round trips). Only when a request fails is the group run again
    // with each request in its own savepoint, so that one caller's failure undoes nothing else.
    let mut tx = begin_group(conn, group).await?;
    let mut first = Ok(());
    'all: for req in group.iter() {
        for change in req.changes.iter().cloned() {
            if let Err(e) = apply_one(&mut tx, ids, change).await {
                first = Err(e);
                break 'all;
            }
        }
    }
    match first {
        Ok(()) => {
            tx.commit().await?;
            return Ok(group.iter().map(|_| Ok(())).collect());
        }
        Err(e) => {
            ids.clear();
            tx.rollback().await?;
            if group.len() == 1 {
                return Ok(vec![Err(e)]);
            }
        }
    }
    let mut tx = begin_group(conn, group).await?;
    let mut outcomes = Vec::with_capacity(group.len());
    for req in group.iter_mut() {
        let mut savepoint = tx.begin().await?;
        let mut outcome = Ok(());
        for change in std::mem::take(&mut req.changes) {
            if let Err(e) = apply_one(&mut savepoint, ids, change).await {
                outcome = Err(e);
                break;
            }
        }
        match outcome {
            Ok(()) => savepoint.commit().await?,
            Err(_) => {
                ids.clear();
                savepoint.rollback().await?
            }
        }
        outcomes.push(outcome);
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// Opens a group's transaction: bumps and announces the generation (or only locks the state
/// row when the group changes no cached read), which orders it after every other instance's.
async fn begin_group<'c>(conn: &'c mut PgConnection, group: &[WriteRequest]) -> Result<Tx<'c>> {
    let mut tx = Connection::begin(conn).await?;
    // What the group may change for cached reads, announced up front: the statement that bumps
    // the generation also takes the row lock that orders this group after every other instance's.
    // A request that then fails only makes the announcement cover more than changed.
    let mut repos: Vec<String> = Vec::new();
    let mut catalog = false;
    for req in group.iter() {
        let (touched, lists) = affected(&req.changes);
        catalog |= lists;
        for r in touched {
            if !repos.iter().any(|x| x == r.as_str()) {
                repos.push(r.as_str().to_string());
            }
        }
    }
    if catalog || !repos.is_empty() {
        let mut announced = String::from(if catalog { "c" } else { "-" });
        for r in &repos {
            announced.push('\t');
            announced.push_str(r);
        }
        if announced.len() > MAX_PAYLOAD {
            announced = "*".into();
        }
        sqlx::query(
            "WITH g AS (UPDATE berth_state SET generation = generation + 1 WHERE id = 1 \
             RETURNING generation) SELECT pg_notify($1, g.generation || E'\\t' || $2) FROM g",
        )
        .bind(CHANNEL)
        .bind(announced)
        .execute(&mut *tx)
        .await?;
    } else {
        sqlx::query("SELECT generation FROM berth_state WHERE id = 1 FOR UPDATE")
            .execute(&mut *tx)
            .await?;
    }
    Ok(tx)
}

/// Repository ids the writer has read, by name (see the SQLite store: ids never change and
/// repositories are never removed; cleared on every rollback).
type RepoIds = HashMap<String, i64>;

type Tx<'c> = Transaction<'c, Postgres>;

async fn repo_id(tx: &mut Tx<'_>, ids: &mut RepoIds, repo: &RepoName) -> Result<Option<i64>> {
    if let Some(id) = ids.get(repo.as_str()) {
        return Ok(Some(*id));
    }
    let id: Option<i64> = sqlx::query_scalar("SELECT id FROM repositories WHERE name = $1")
        .bind(repo.as_str())
        .fetch_optional(&mut **tx)
        .await?;
    if let Some(id) = id {
        ids.insert(repo.as_str().to_string(), id);
    }
    Ok(id)
}

async fn ensure_repo(tx: &mut Tx<'_>, ids: &mut RepoIds, repo: &RepoName) -> Result<i64> {
    if let Some(id) = repo_id(tx, ids, repo).await? {
        return Ok(id);
    }
    Ok(sqlx::query_scalar(
        "INSERT INTO repositories (name, created_at) VALUES ($1, $2) RETURNING id",
    )
    .bind(repo.as_str())
    .bind(now())
    .fetch_one(&mut **tx)
    .await?)
}

async fn existing_repo(tx: &mut Tx<'_>, ids: &mut RepoIds, repo: &RepoName) -> Result<i64> {
    repo_id(tx, ids, repo)
        .await?
        .ok_or_else(|| MetaError::NotFound(format!("repository {repo}")))
}

async fn exists(tx: &mut Tx<'_>, sql: &str, repo: i64, digest: &str) -> Result<bool> {
    Ok(sqlx::query(sql)
        .bind(repo)
        .bind(digest)
        .fetch_optional(&mut **tx)
        .await?
        .is_some())
}

async fn has_manifest(tx: &mut Tx<'_>, repo: i64, digest: &str) -> Result<bool> {
    exists(
        tx,
        "SELECT 1 FROM manifests WHERE repo_id = $1 AND digest = $2",
        repo,
        digest,
    )
    .await
}

async fn record_blob(tx: &mut Tx<'_>, digest: &Digest, size: u64) -> Result<()> {
    let t = now();
    let done = sqlx::query(
        "INSERT INTO blobs (digest, size, state, created_at, last_referenced_at) \
         VALUES ($1, $2, 'stored', $3, $3) ON CONFLICT (digest) DO UPDATE SET \
         last_referenced_at = excluded.last_referenced_at WHERE blobs.state = 'stored'",
    )
    .bind(digest.to_string())
    .bind(size as i64)
    .bind(t)
    .execute(&mut **tx)
    .await?;
    if done.rows_affected() == 0 {
        return Err(MetaError::BlobCollecting(digest.clone()));
    }
    Ok(())
}

async fn touch_blobs(tx: &mut Tx<'_>, digests: &[Digest]) -> Result<()> {
    if digests.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = digests.iter().map(|d| d.to_string()).collect();
    sqlx::query("UPDATE blobs SET last_referenced_at = $1 WHERE digest = ANY($2)")
        .bind(now())
        .bind(&names)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn apply_one(tx: &mut Tx<'_>, ids: &mut RepoIds, change: Change) -> Result<()> {
    match change {
        Change::LinkBlob {
            repo,
            digest,
            size,
            mounted_from,
        } => {
            if let Some(source) = &mounted_from {
                check_mount_source(tx, ids, source, &digest).await?;
            }
            let id = ensure_repo(tx, ids, &repo).await?;
            record_blob(tx, &digest, size).await?;
            sqlx::query(
                "INSERT INTO repo_blobs (repo_id, digest, size, created_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (repo_id, digest) DO NOTHING",
            )
            .bind(id)
            .bind(digest.to_string())
            .bind(size as i64)
            .bind(now())
            .execute(&mut **tx)
            .await?;
        }
        Change::UnlinkBlob { repo, digest } => {
            let id = existing_repo(tx, ids, &repo).await?;
            let done = sqlx::query("DELETE FROM repo_blobs WHERE repo_id = $1 AND digest = $2")
                .bind(id)
                .bind(digest.to_string())
                .execute(&mut **tx)
                .await?;
            if done.rows_affected() == 0 {
                return Err(MetaError::NotFound(format!("blob {digest} in {repo}")));
            }
            touch_blobs(tx, std::slice::from_ref(&digest)).await?;
        }
        Change::PutManifest {
            repo,
            manifest,
            blobs,
            children,
        } => {
            let id = ensure_repo(tx, ids, &repo).await?;
            let digest = manifest.digest.to_string();
            if has_manifest(tx, id, &digest).await? {
                // Pushed before (e.g. under another tag): its references are recorded.
                return Ok(());
            }
            for b in blobs.iter().filter(|b| b.required) {
                let linked = exists(
                    tx,
                    "SELECT 1 FROM repo_blobs WHERE repo_id = $1 AND digest = $2",
                    id,
                    &b.digest.to_string(),
                )
                .await?;
                if !linked {
                    return Err(MetaError::MissingReference(b.digest.clone()));
                }
            }
            let named: Vec<Digest> = blobs.iter().map(|b| b.digest.clone()).collect();
            record_blob(tx, &manifest.digest, manifest.size).await?;
            touch_blobs(tx, &named).await?;
            for c in children.iter().filter(|c| c.required) {
                if !has_manifest(tx, id, &c.digest.to_string()).await? {
                    return Err(MetaError::MissingReference(c.digest.clone()));
                }
            }
            sqlx::query(
                "INSERT INTO manifests (repo_id, digest, media_type, size, artifact_type, subject, \
                 annotations, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (repo_id, digest) DO NOTHING",
            )
            .bind(id)
            .bind(&digest)
            .bind(&manifest.media_type)
            .bind(manifest.size as i64)
            .bind(&manifest.artifact_type)
            .bind(manifest.subject.as_ref().map(|s| s.to_string()))
            .bind(manifest.annotations.as_ref().map(|a| a.to_string()))
            .bind(now())
            .execute(&mut **tx)
            .await?;
            let (targets, kinds): (Vec<String>, Vec<&str>) = blobs
                .iter()
                .map(|b| (b.digest.to_string(), "blob"))
                .chain(children.iter().map(|c| (c.digest.to_string(), "manifest")))
                .unzip();
            sqlx::query(
                "INSERT INTO manifest_refs (repo_id, manifest, target, kind) \
                 SELECT $1, $2, t, k FROM UNNEST($3::text[], $4::text[]) AS r(t, k) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(&digest)
            .bind(&targets)
            .bind(&kinds)
            .execute(&mut **tx)
            .await?;
        }
        Change::SetTag { repo, tag, digest } => {
            let id = ensure_repo(tx, ids, &repo).await?;
            let done = sqlx::query(
                "INSERT INTO tags (repo_id, name, digest, updated_at) SELECT $1, $2, $3, $4 \
                 WHERE EXISTS (SELECT 1 FROM manifests WHERE repo_id = $1 AND digest = $3) \
                 ON CONFLICT (repo_id, name) DO UPDATE SET digest = excluded.digest, \
                 updated_at = excluded.updated_at",
            )
            .bind(id)
            .bind(tag.as_str())
            .bind(digest.to_string())
            .bind(now())
            .execute(&mut **tx)
            .await?;
            if done.rows_affected() == 0 {
                return Err(MetaError::MissingReference(digest));
            }
        }
        Change::DeleteTag { repo, tag } => {
            let id = existing_repo(tx, ids, &repo).await?;
            let done = sqlx::query("DELETE FROM tags WHERE repo_id = $1 AND name = $2")
                .bind(id)
                .bind(tag.as_str())
                .execute(&mut **tx)
                .await?;
            if done.rows_affected() == 0 {
                return Err(MetaError::NotFound(format!("tag {tag} in {repo}")));
            }
        }
        Change::DeleteManifest { repo, digest } => {
            let id = existing_repo(tx, ids, &repo).await?;
            let d = digest.to_string();
            let done = sqlx::query("DELETE FROM manifests WHERE repo_id = $1 AND digest = $2")
                .bind(id)
                .bind(&d)
                .execute(&mut **tx)
                .await?;
            if done.rows_affected() == 0 {
                return Err(MetaError::NotFound(format!("manifest {digest} in {repo}")));
            }
            let targets: Vec<String> = sqlx::query_scalar(
                "DELETE FROM manifest_refs WHERE repo_id = $1 AND manifest = $2 RETURNING target",
            )
            .bind(id)
            .bind(&d)
            .fetch_all(&mut **tx)
            .await?;
            let mut named = vec![digest.clone()];
            named.extend(targets.iter().filter_map(|t| t.parse::<Digest>().ok()));
            touch_blobs(tx, &named).await?;
            sqlx::query("DELETE FROM tags WHERE repo_id = $1 AND digest = $2")
                .bind(id)
                .bind(&d)
                .execute(&mut **tx)
                .await?;
        }
        Change::CreateUpload { id, repo, owner } => {
            let rid = ensure_repo(tx, ids, &repo).await?;
            sqlx::query(
                "INSERT INTO uploads (id, repo_id, owner, size, created_at, updated_at) \
                 VALUES ($1, $2, $3, 0, $4, $4)",
            )
            .bind(&id)
            .bind(rid)
            .bind(&owner)
            .bind(now())
            .execute(&mut **tx)
            .await?;
        }
        Change::AdvanceUpload { id, from, to, part } => {
            let done = sqlx::query(
                "UPDATE uploads SET size = $1, parts = array_append(parts, $2), updated_at = $3 \
                 WHERE id = $4 AND size = $5",
            )
            .bind(to as i64)
            .bind(part)
            .bind(now())
            .bind(&id)
            .bind(from as i64)
            .execute(&mut **tx)
            .await?;
            if done.rows_affected() == 0 {
                let size: Option<i64> =
                    sqlx::query_scalar("SELECT size FROM uploads WHERE id = $1")
                        .bind(&id)
                        .fetch_optional(&mut **tx)
                        .await?;
                return Err(match size {
                    None => MetaError::NotFound(format!("upload {id}")),
                    Some(s) => {
                        MetaError::Conflict(format!("upload {id} is at offset {s}, not {from}"))
                    }
                });
            }
        }
        Change::DeleteUpload { id } => {
            let done = sqlx::query("DELETE FROM uploads WHERE id = $1")
                .bind(&id)
                .execute(&mut **tx)
                .await?;
            if done.rows_affected() == 0 {
                return Err(MetaError::NotFound(format!("upload {id}")));
            }
        }
        Change::Enqueue { topic, payload } => {
            sqlx::query("INSERT INTO outbox (topic, payload, created_at) VALUES ($1, $2, $3)")
                .bind(topic)
                .bind(payload.to_string())
                .bind(now())
                .execute(&mut **tx)
                .await?;
        }
        Change::Audit(entry) => {
            super::access::bind_audit(sqlx::query(super::access::AUDIT_INSERT), &entry)
                .execute(&mut **tx)
                .await?;
        }
        other => apply_collection(tx, ids, other).await?,
    }
    Ok(())
}

super::collect::collection_reads!(PgMetaStore, String::from);
super::collect::collection_changes!(String::from, Tx<'_>);

// ---------------------------------------------------------------------------------------------
// Reads

fn limit(page: &Page) -> Option<i64> {
    page.limit.map(i64::from)
}

const UPLOAD_SELECT: &str =
    "SELECT u.id, r.name, u.owner, u.size, u.parts, u.created_at FROM uploads u \
     JOIN repositories r ON r.id = u.repo_id";

/// The server's clock in Unix milliseconds (lease expiry: one clock for every instance).
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

fn upload_row(row: &PgRow) -> Result<UploadRecord> {
    Ok(UploadRecord {
        id: row.try_get("id")?,
        repo: parse_repo(row.try_get::<&str, _>("name")?)?,
        owner: row.try_get("owner")?,
        size: row.try_get::<i64, _>("size")? as u64,
        parts: row.try_get("parts")?,
        created_at: row.try_get("created_at")?,
    })
}

#[async_trait]
impl MetaStore for PgMetaStore {
    async fn repository_exists(&self, repo: &RepoName) -> Result<bool> {
        Ok(sqlx::query("SELECT 1 FROM repositories WHERE name = $1")
            .bind(repo.as_str())
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }

    async fn blob_in_repo(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>> {
        let size: Option<i64> = sqlx::query_scalar(
            "SELECT b.size FROM repo_blobs b JOIN repositories r ON r.id = b.repo_id \
             WHERE r.name = $1 AND b.digest = $2",
        )
        .bind(repo.as_str())
        .bind(digest.to_string())
        .fetch_optional(&self.pool)
        .await?;
        Ok(size.map(|s| s as u64))
    }

    async fn blob(&self, digest: &Digest) -> Result<Option<BlobRecord>> {
        let row = sqlx::query(
            "SELECT size, state, created_at, last_referenced_at FROM blobs WHERE digest = $1",
        )
        .bind(digest.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| rows::blob(digest, &r)).transpose()
    }

    async fn repos_with_blob(&self, digest: &Digest, limit: u32) -> Result<Vec<(RepoName, u64)>> {
        let found = sqlx::query(
            "SELECT r.name, b.size FROM repo_blobs b JOIN repositories r ON r.id = b.repo_id \
             WHERE b.digest = $1 ORDER BY r.name LIMIT $2",
        )
        .bind(digest.to_string())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        found.iter().map(rows::repo_and_size).collect()
    }

    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Option<ManifestRecord>> {
        let row = match reference {
            Reference::Tag(tag) => {
                sqlx::query(&format!(
                    "SELECT {MANIFEST_COLUMNS} FROM tags t \
                     JOIN repositories r ON r.id = t.repo_id \
                     JOIN manifests m ON m.repo_id = t.repo_id AND m.digest = t.digest \
                     WHERE r.name = $1 AND t.name = $2"
                ))
                .bind(repo.as_str())
                .bind(tag.as_str())
                .fetch_optional(&self.pool)
                .await?
            }
            Reference::Digest(d) => {
                sqlx::query(&format!(
                    "SELECT {MANIFEST_COLUMNS} FROM manifests m \
                     JOIN repositories r ON r.id = m.repo_id WHERE r.name = $1 AND m.digest = $2"
                ))
                .bind(repo.as_str())
                .bind(d.to_string())
                .fetch_optional(&self.pool)
                .await?
            }
        };
        row.as_ref().map(rows::manifest).transpose()
    }

    async fn tags(&self, repo: &RepoName, page: &Page) -> Result<Option<Vec<String>>> {
        let Some(id) = sqlx::query_scalar::<_, i64>("SELECT id FROM repositories WHERE name = $1")
            .bind(repo.as_str())
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let tags = sqlx::query_scalar(
            "SELECT name FROM tags WHERE repo_id = $1 AND name > $2 ORDER BY name LIMIT $3",
        )
        .bind(id)
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(limit(page))
        .fetch_all(&self.pool)
        .await?;
        Ok(Some(tags))
    }

    async fn repositories(&self, page: &Page) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT name FROM repositories r WHERE name > $1 \
             AND EXISTS (SELECT 1 FROM manifests m WHERE m.repo_id = r.id) \
             ORDER BY name LIMIT $2",
        )
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(limit(page))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<ManifestRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {MANIFEST_COLUMNS} FROM manifests m JOIN repositories r ON r.id = m.repo_id \
             WHERE r.name = $1 AND m.subject = $2 \
             AND ($3::text IS NULL OR m.artifact_type = $3) ORDER BY m.digest"
        ))
        .bind(repo.as_str())
        .bind(subject.to_string())
        .bind(artifact_type)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::manifest).collect()
    }

    async fn upload(&self, id: &str) -> Result<Option<UploadRecord>> {
        let row = sqlx::query(&format!("{UPLOAD_SELECT} WHERE u.id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(upload_row).transpose()
    }

    async fn idle_uploads(&self, before: i64, limit: u32) -> Result<Vec<UploadRecord>> {
        let rows = sqlx::query(&format!(
            "{UPLOAD_SELECT} WHERE u.updated_at < $1 ORDER BY u.updated_at LIMIT $2"
        ))
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(upload_row).collect()
    }

    async fn apply(&self, changes: Vec<Change>) -> Result<()> {
        self.writes.apply(changes).await
    }

    async fn outbox_peek(&self, topic: &str, limit: u32) -> Result<Vec<OutboxEvent>> {
        let found = sqlx::query(
            "SELECT seq, topic, payload FROM outbox WHERE topic = $1 ORDER BY seq LIMIT $2",
        )
        .bind(topic)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        found.iter().map(rows::outbox).collect()
    }

    async fn outbox_ack(&self, topic: &str, seq: i64) -> Result<()> {
        sqlx::query("DELETE FROM outbox WHERE topic = $1 AND seq <= $2")
            .bind(topic)
            .bind(seq)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn lease_acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>> {
        let row = sqlx::query(&format!(
            "INSERT INTO leases (name, holder, token, expires_at) VALUES ($1, $2, 1, {NOW_MS} + $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
             token = leases.token + 1, expires_at = excluded.expires_at \
             WHERE leases.expires_at <= {NOW_MS} OR leases.holder = excluded.holder \
             RETURNING holder, token"
        ))
        .bind(name)
        .bind(holder)
        .bind(ttl.as_millis() as i64)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| rows::lease(name, &r)).transpose()
    }

    async fn lease_renew(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
        let done = sqlx::query(&format!(
            "UPDATE leases SET expires_at = {NOW_MS} + $1 \
             WHERE name = $2 AND holder = $3 AND token = $4 AND expires_at > {NOW_MS}"
        ))
        .bind(ttl.as_millis() as i64)
        .bind(&lease.name)
        .bind(&lease.holder)
        .bind(lease.token)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn lease_release(&self, lease: &Lease) -> Result<()> {
        sqlx::query(
            "UPDATE leases SET expires_at = 0 WHERE name = $1 AND holder = $2 AND token = $3",
        )
        .bind(&lease.name)
        .bind(&lease.holder)
        .bind(lease.token)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn lease_holder(&self, name: &str) -> Result<Option<Lease>> {
        let row = sqlx::query(&format!(
            "SELECT holder, token FROM leases WHERE name = $1 AND expires_at > {NOW_MS}"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| rows::lease(name, &r)).transpose()
    }

    async fn read_point(&self) -> Option<u64> {
        if !self.changes.synced.load(Ordering::SeqCst) {
            return None;
        }
        let point = self.point.get(&self.pool).await?;
        let mut applied = self.changes.applied.subscribe();
        let caught_up = tokio::time::timeout(CATCH_UP, applied.wait_for(|g| *g >= point)).await;
        match caught_up {
            Ok(Ok(_)) if self.changes.synced.load(Ordering::SeqCst) => Some(point),
            _ => None,
        }
    }

    fn changed_since(&self, repo: Option<&RepoName>, point: u64) -> bool {
        self.changes.changed_since(repo, point)
    }
}

#[cfg(test)]
#[path = "../../tests/common/postgres.rs"]
mod server;

#[cfg(test)]
mod tests {
    use super::server::Postgres;
    use super::{PgMetaStore, PoolSettings};
    use sqlx::postgres::PgConnectOptions;
    use std::sync::Arc;

    async fn store(pg: &Postgres, db: &str) -> PgMetaStore {
        let options = PgConnectOptions::new()
            .host(pg.host())
            .port(pg.port())
            .username(Postgres::USER)
            .password(Postgres::PASSWORD)
            .database(db);
        PgMetaStore::connect(options, &PoolSettings::default())
            .await
            .expect("connect")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_passes_the_suite() {
        let pg = Postgres::start();
        pg.create_database("suite");
        crate::meta::testsuite::run(&store(&pg, "suite").await).await;
        pg.create_database("cached");
        let cached = crate::meta::cache::CachedMetaStore::new(Arc::new(store(&pg, "cached").await));
        crate::meta::testsuite::run(&cached).await;
    }

    #[test]
    fn announcements_invalidate_what_they_name_and_unreadable_ones_are_refused() {
        let log = super::ChangeLog::default();
        let (a, b): (crate::oci::name::RepoName, crate::oci::name::RepoName) =
            ("team/a".parse().unwrap(), "team/b".parse().unwrap());
        log.everything_changed(3);
        assert!(log.changed_since(Some(&a), 2) && !log.changed_since(Some(&a), 3));
        assert!(log.apply("5\t-\tteam/a"));
        assert!(log.changed_since(Some(&a), 4) && !log.changed_since(Some(&b), 4));
        assert!(!log.changed_since(None, 4), "the catalog did not change");
        assert!(log.apply("6\tc"));
        assert!(log.changed_since(None, 5));
        assert!(log.apply("7\t*"));
        assert!(log.changed_since(Some(&b), 6));
        assert_eq!(*log.applied.borrow(), 7);
        assert!(!log.apply("not a generation"));
    }

    /// Every caller asking for a read point gets one, also when other callers asking at the
    /// same moment give up half-way (their request was cancelled) while their query runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn read_points_are_answered_even_when_other_callers_give_up() {
        use crate::meta::MetaStore;
        use std::time::Duration;
        let pg = Postgres::start();
        pg.create_database("points");
        let store = Arc::new(store(&pg, "points").await);
        // The change listener is connected once a read point is given at all.
        tokio::time::timeout(Duration::from_secs(30), async {
            while store.read_point().await.is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the change listener connects");
        for round in 0..100 {
            let calls = (0..16).map(|i| {
                let store = store.clone();
                async move {
                    if i % 4 == 0 {
                        let gave_up =
                            tokio::time::timeout(Duration::from_micros(20), store.read_point());
                        let _ = gave_up.await;
                        Some(0)
                    } else {
                        store.read_point().await
                    }
                }
            });
            let answered =
                tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(calls))
                    .await
                    .unwrap_or_else(|_| panic!("round {round}: a read point was never answered"));
            assert!(answered.iter().all(Option::is_some), "round {round}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn instances_share_leases_and_see_each_others_changes() {
        let pg = Postgres::start();
        pg.create_database("shared");
        // Several instances starting at once apply the migrations once.
        let (a, b, c) = tokio::join!(
            store(&pg, "shared"),
            store(&pg, "shared"),
            store(&pg, "shared")
        );
        drop(c);
        crate::meta::testsuite::leases(&a, &b).await;
        let a = crate::meta::cache::CachedMetaStore::new(Arc::new(a));
        let b = crate::meta::cache::CachedMetaStore::new(Arc::new(b));
        crate::meta::testsuite::shared(&a, &b).await;
    }
}

super::access::access_store!(
    PgMetaStore,
    String::from,
    "LOCK TABLE signing_keys IN SHARE ROW EXCLUSIVE MODE"
);
