//! [`MetaStore`] on embedded SQLite (sqlx), the default metadata store.
//!
//! One writer connection driven by one task that commits the changes of many callers together
//! (group commit; see `write_loop`); `BEGIN IMMEDIATE` plus a busy timeout serializes it with
//! other processes sharing the file. A small pool of readers, WAL journal, `synchronous = FULL` so
//! that an acknowledged change survives a power cut.

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Acquire, Connection, Row, Sqlite, Transaction};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::access::sqlite_sql;
use super::group::{GroupWriter, WriteRequest, Writes};
use super::rows::{self, now, parse_repo, MANIFEST_COLUMNS};
use super::{
    BlobRecord, Change, Lease, ManifestRecord, MetaError, MetaStore, OutboxEvent, Page, Result,
    UploadRecord,
};
use crate::oci::digest::Digest;
use crate::oci::name::{Reference, RepoName};

pub struct SqliteMetaStore {
    reader: SqlitePool,
    writer: SqlitePool,
    writes: Writes,
    generation: Arc<Generation>,
}

/// A counter in a small memory-mapped file beside the database, shared by every process that
/// opens it, bumped after each commit: readers compare it to decide whether cached reads are
/// still current (see [`crate::meta::cache`]).
struct Generation {
    map: memmap2::MmapMut,
}

impl Generation {
    fn open(path: &Path) -> std::io::Result<Generation> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        if file.metadata()?.len() < 8 {
            // Written, not extended with set_len: a sparse file would fault (SIGBUS) when the
            // mapping is first touched on a full disk; a write fails here with an error instead.
            use std::io::Write;
            (&file).write_all(&[0u8; 8])?;
            file.sync_all()?;
        }
        // SAFETY: the mapping is private to this struct and lives as long as it; other processes
        // map the same 8 bytes and, like this one, only ever access them through the atomic
        // below. A file that shrinks under a live mapping would fault, and nothing truncates it.
        let map = unsafe { memmap2::MmapMut::map_mut(&file)? };
        Ok(Generation { map })
    }

    fn counter(&self) -> &AtomicU64 {
        // SAFETY: the mapping is page-aligned and at least 8 bytes long, so it holds a properly
        // aligned u64 for as long as `self` lives.
        unsafe { &*(self.map.as_ptr() as *const AtomicU64) }
    }

    fn bump(&self) {
        self.counter().fetch_add(1, Ordering::SeqCst);
    }

    fn get(&self) -> u64 {
        self.counter().load(Ordering::SeqCst)
    }
}

/// The writer task's state (see [`super::group`]).
struct SqliteWriter {
    pool: SqlitePool,
    ids: RepoIds,
    generation: Arc<Generation>,
}

#[async_trait]
impl GroupWriter for SqliteWriter {
    async fn write(&mut self, group: &mut [WriteRequest]) -> Result<Vec<Result<()>>> {
        let result = write_group(&self.pool, &mut self.ids, group).await;
        if result.is_err() {
            self.ids.clear();
        }
        result
    }

    /// Announces the commit to every process sharing the file before any caller hears of it.
    fn after(&mut self) {
        self.generation.bump();
    }
}

async fn write_group(
    pool: &SqlitePool,
    ids: &mut RepoIds,
    group: &mut [WriteRequest],
) -> Result<Vec<Result<()>>> {
    let mut conn = pool.acquire().await?;
    let written = write_group_on(&mut conn, ids, group).await;
    if written.is_err() {
        // A transaction that failed as a whole — most often a COMMIT that could not append to
        // the WAL of a full disk, which SQLite rolls back by itself — leaves sqlx counting a
        // transaction that no longer exists, and every later BEGIN on this connection would be
        // refused. Close it: the pool opens a fresh one for the next group.
        let _ = conn.close().await;
    }
    written
}

async fn write_group_on(
    conn: &mut SqliteConnection,
    ids: &mut RepoIds,
    group: &mut [WriteRequest],
) -> Result<Vec<Result<()>>> {
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
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

/// Milliseconds since the Unix epoch (lease expiry: every process sharing a SQLite file runs on
/// one host, so they share this clock).
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn limit(page: &Page) -> i64 {
    page.limit.map(i64::from).unwrap_or(-1)
}

const UPLOAD_SELECT: &str =
    "SELECT u.id, r.name, u.owner, u.size, u.parts, u.created_at FROM uploads u \
     JOIN repositories r ON r.id = u.repo_id";

fn upload_row(row: &SqliteRow) -> Result<UploadRecord> {
    Ok(UploadRecord {
        id: row.try_get("id")?,
        repo: parse_repo(row.try_get("name")?)?,
        owner: row.try_get("owner")?,
        size: row.try_get::<i64, _>("size")? as u64,
        parts: serde_json::from_str(row.try_get::<&str, _>("parts")?)
            .map_err(|e| MetaError::Corrupt(format!("stored upload parts: {e}")))?,
        created_at: row.try_get("created_at")?,
    })
}

impl SqliteMetaStore {
    fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    /// Opens (creating if needed) the database file at `path` and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<SqliteMetaStore> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| MetaError::from(sqlx::Error::from(e)))?;
        }
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30));
        // Several processes may open one file at the same moment: the first to take the lock
        // brings the schema up to date, the others then find nothing left to do.
        let lock = MigrationLock::take(path).await?;
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
        drop(lock);
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options.read_only(true))
            .await?;
        let mut gen_path = path.as_os_str().to_owned();
        gen_path.push("-generation");
        let generation = Arc::new(
            Generation::open(Path::new(&gen_path))
                .map_err(|e| MetaError::from(sqlx::Error::from(e)))?,
        );
        // Whatever this process cached before (nothing) or another process may have cached while
        // a previous writer died between commit and bump: start a new generation.
        generation.bump();
        let writes = Writes::spawn(SqliteWriter {
            pool: writer.clone(),
            ids: RepoIds::new(),
            generation: generation.clone(),
        });
        Ok(SqliteMetaStore {
            reader,
            writer,
            writes,
            generation,
        })
    }
}

/// An exclusive lock on a file beside the database, held while migrations run.
struct MigrationLock(std::fs::File);

impl MigrationLock {
    async fn take(db: &Path) -> Result<MigrationLock> {
        let mut path = db.as_os_str().to_owned();
        path.push("-migrate.lock");
        let io = |e: std::io::Error| MetaError::from(sqlx::Error::from(e));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        tokio::task::spawn_blocking(move || file.lock().map(|()| MigrationLock(file)))
            .await
            .map_err(|e| MetaError::CommitFailed(format!("taking the migration lock: {e}")))?
            .map_err(io)
    }
}

impl Drop for MigrationLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// Repository ids the writer has read, by name. Ids never change and repositories are never
/// removed, so an id read once stays right — unless the transaction that created it is rolled
/// back, which is why the writer clears this on every rollback.
type RepoIds = std::collections::HashMap<String, i64>;

async fn repo_id(
    tx: &mut Transaction<'_, Sqlite>,
    ids: &mut RepoIds,
    repo: &RepoName,
) -> Result<Option<i64>> {
    if let Some(id) = ids.get(repo.as_str()) {
        return Ok(Some(*id));
    }
    let id: Option<i64> = sqlx::query_scalar("SELECT id FROM repositories WHERE name = ?")
        .bind(repo.as_str())
        .fetch_optional(&mut **tx)
        .await?;
    if let Some(id) = id {
        ids.insert(repo.as_str().to_string(), id);
    }
    Ok(id)
}

async fn ensure_repo(
    tx: &mut Transaction<'_, Sqlite>,
    ids: &mut RepoIds,
    repo: &RepoName,
) -> Result<i64> {
    if let Some(id) = repo_id(tx, ids, repo).await? {
        return Ok(id);
    }
    Ok(
        sqlx::query_scalar(
            "INSERT INTO repositories (name, created_at) VALUES (?, ?) RETURNING id",
        )
        .bind(repo.as_str())
        .bind(now())
        .fetch_one(&mut **tx)
        .await?,
    )
}

async fn existing_repo(
    tx: &mut Transaction<'_, Sqlite>,
    ids: &mut RepoIds,
    repo: &RepoName,
) -> Result<i64> {
    repo_id(tx, ids, repo)
        .await?
        .ok_or_else(|| MetaError::NotFound(format!("repository {repo}")))
}

async fn has_manifest(tx: &mut Transaction<'_, Sqlite>, repo: i64, digest: &str) -> Result<bool> {
    Ok(
        sqlx::query_scalar::<_, i64>("SELECT 1 FROM manifests WHERE repo_id = ? AND digest = ?")
            .bind(repo)
            .bind(digest)
            .fetch_optional(&mut **tx)
            .await?
            .is_some(),
    )
}

/// Records a stored blob (or manifest) in the global blob table, or marks it referenced now;
/// `BlobCollecting` while a collector deletes it.
async fn record_blob(tx: &mut Transaction<'_, Sqlite>, digest: &Digest, size: u64) -> Result<()> {
    let t = now();
    let done = sqlx::query(
        "INSERT INTO blobs (digest, size, state, created_at, last_referenced_at) \
         VALUES (?, ?, 'stored', ?, ?) ON CONFLICT (digest) DO UPDATE SET \
         last_referenced_at = excluded.last_referenced_at WHERE blobs.state = 'stored'",
    )
    .bind(digest.to_string())
    .bind(size as i64)
    .bind(t)
    .bind(t)
    .execute(&mut **tx)
    .await?;
    if done.rows_affected() == 0 {
        return Err(MetaError::BlobCollecting(digest.clone()));
    }
    Ok(())
}

/// Marks blobs already in the global blob table as referenced now.
async fn touch_blobs(tx: &mut Transaction<'_, Sqlite>, digests: &[Digest]) -> Result<()> {
    let t = now();
    for d in digests {
        sqlx::query("UPDATE blobs SET last_referenced_at = ? WHERE digest = ?")
            .bind(t)
            .bind(d.to_string())
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

async fn apply_one(
    tx: &mut Transaction<'_, Sqlite>,
    ids: &mut RepoIds,
    change: Change,
) -> Result<()> {
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
                "INSERT INTO repo_blobs (repo_id, digest, size, created_at) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (repo_id, digest) DO NOTHING",
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
            let done = sqlx::query("DELETE FROM repo_blobs WHERE repo_id = ? AND digest = ?")
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
                // The same content again (e.g. pushed under another tag): its references were
                // checked and recorded when it was first pushed.
                return Ok(());
            }
            for b in blobs.iter().filter(|b| b.required) {
                let b = &b.digest;
                let linked: Option<i64> =
                    sqlx::query_scalar("SELECT 1 FROM repo_blobs WHERE repo_id = ? AND digest = ?")
                        .bind(id)
                        .bind(b.to_string())
                        .fetch_optional(&mut **tx)
                        .await?;
                if linked.is_none() {
                    return Err(MetaError::MissingReference(b.clone()));
                }
            }
            let named: Vec<Digest> = blobs.iter().map(|b| b.digest.clone()).collect();
            // First recorded in this repository: the manifest's bytes and what it names are
            // referenced now. (A manifest already recorded here stays referenced by its row.)
            record_blob(tx, &manifest.digest, manifest.size).await?;
            touch_blobs(tx, &named).await?;
            for c in children.iter().filter(|c| c.required) {
                if !has_manifest(tx, id, &c.digest.to_string()).await? {
                    return Err(MetaError::MissingReference(c.digest.clone()));
                }
            }
            sqlx::query(
                "INSERT INTO manifests (repo_id, digest, media_type, size, artifact_type, subject, \
                 annotations, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
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
            let refs = blobs
                .iter()
                .map(|b| (&b.digest, "blob"))
                .chain(children.iter().map(|c| (&c.digest, "manifest")));
            for (target, kind) in refs {
                sqlx::query(
                    "INSERT INTO manifest_refs (repo_id, manifest, target, kind) VALUES (?, ?, ?, ?) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(id)
                .bind(&digest)
                .bind(target.to_string())
                .bind(kind)
                .execute(&mut **tx)
                .await?;
            }
        }
        Change::SetTag { repo, tag, digest } => {
            let id = ensure_repo(tx, ids, &repo).await?;
            let d = digest.to_string();
            // One statement: set the tag only if the manifest is recorded in the repository.
            let done = sqlx::query(
                "INSERT INTO tags (repo_id, name, digest, updated_at) SELECT ?, ?, ?, ? \
                 WHERE EXISTS (SELECT 1 FROM manifests WHERE repo_id = ? AND digest = ?) \
                 ON CONFLICT (repo_id, name) DO UPDATE SET digest = excluded.digest, \
                 updated_at = excluded.updated_at",
            )
            .bind(id)
            .bind(tag.as_str())
            .bind(&d)
            .bind(now())
            .bind(id)
            .bind(&d)
            .execute(&mut **tx)
            .await?;
            if done.rows_affected() == 0 {
                return Err(MetaError::MissingReference(digest));
            }
        }
        Change::DeleteTag { repo, tag } => {
            let id = existing_repo(tx, ids, &repo).await?;
            let done = sqlx::query("DELETE FROM tags WHERE repo_id = ? AND name = ?")
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
            let done = sqlx::query("DELETE FROM manifests WHERE repo_id = ? AND digest = ?")
                .bind(id)
                .bind(&d)
                .execute(&mut **tx)
                .await?;
            if done.rows_affected() == 0 {
                return Err(MetaError::NotFound(format!("manifest {digest} in {repo}")));
            }
            let targets: Vec<String> = sqlx::query_scalar(
                "SELECT target FROM manifest_refs WHERE repo_id = ? AND manifest = ?",
            )
            .bind(id)
            .bind(&d)
            .fetch_all(&mut **tx)
            .await?;
            let mut named = vec![digest.clone()];
            named.extend(targets.iter().filter_map(|t| t.parse::<Digest>().ok()));
            touch_blobs(tx, &named).await?;
            sqlx::query("DELETE FROM tags WHERE repo_id = ? AND digest = ?")
                .bind(id)
                .bind(&d)
                .execute(&mut **tx)
                .await?;
            sqlx::query("DELETE FROM manifest_refs WHERE repo_id = ? AND manifest = ?")
                .bind(id)
                .bind(&d)
                .execute(&mut **tx)
                .await?;
        }
        Change::CreateUpload { id, repo, owner } => {
            let rid = ensure_repo(tx, ids, &repo).await?;
            let t = now();
            sqlx::query(
                "INSERT INTO uploads (id, repo_id, owner, size, created_at, updated_at) \
                 VALUES (?, ?, ?, 0, ?, ?)",
            )
            .bind(&id)
            .bind(rid)
            .bind(&owner)
            .bind(t)
            .bind(t)
            .execute(&mut **tx)
            .await?;
        }
        Change::AdvanceUpload { id, from, to, part } => {
            let done = sqlx::query(
                "UPDATE uploads SET size = ?, parts = json_insert(parts, '$[#]', ?), \
                 updated_at = ? WHERE id = ? AND size = ?",
            )
            .bind(to as i64)
            .bind(part)
            .bind(now())
            .bind(&id)
            .bind(from as i64)
            .execute(&mut **tx)
            .await?;
            if done.rows_affected() == 0 {
                let size: Option<i64> = sqlx::query_scalar("SELECT size FROM uploads WHERE id = ?")
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
            let done = sqlx::query("DELETE FROM uploads WHERE id = ?")
                .bind(&id)
                .execute(&mut **tx)
                .await?;
            if done.rows_affected() == 0 {
                return Err(MetaError::NotFound(format!("upload {id}")));
            }
        }
        Change::Enqueue { topic, payload } => {
            sqlx::query("INSERT INTO outbox (topic, payload, created_at) VALUES (?, ?, ?)")
                .bind(topic)
                .bind(payload.to_string())
                .bind(now())
                .execute(&mut **tx)
                .await?;
        }
        Change::Audit(entry) => {
            let sql = sqlite_sql(super::access::AUDIT_INSERT);
            super::access::bind_audit(sqlx::query(&sql), &entry)
                .execute(&mut **tx)
                .await?;
        }
        other => apply_collection(tx, ids, other).await?,
    }
    Ok(())
}

super::collect::collection_reads!(SqliteMetaStore, sqlite_sql);
super::collect::collection_changes!(sqlite_sql, Transaction<'_, Sqlite>);

#[async_trait]
impl MetaStore for SqliteMetaStore {
    async fn repository_exists(&self, repo: &RepoName) -> Result<bool> {
        Ok(
            sqlx::query_scalar::<_, i64>("SELECT 1 FROM repositories WHERE name = ?")
                .bind(repo.as_str())
                .fetch_optional(&self.reader)
                .await?
                .is_some(),
        )
    }

    async fn blob_in_repo(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>> {
        let size: Option<i64> = sqlx::query_scalar(
            "SELECT b.size FROM repo_blobs b JOIN repositories r ON r.id = b.repo_id \
             WHERE r.name = ? AND b.digest = ?",
        )
        .bind(repo.as_str())
        .bind(digest.to_string())
        .fetch_optional(&self.reader)
        .await?;
        Ok(size.map(|s| s as u64))
    }

    async fn repos_with_blob(&self, digest: &Digest, limit: u32) -> Result<Vec<(RepoName, u64)>> {
        let found = sqlx::query(
            "SELECT r.name, b.size FROM repo_blobs b JOIN repositories r ON r.id = b.repo_id \
             WHERE b.digest = ? ORDER BY r.name LIMIT ?",
        )
        .bind(digest.to_string())
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
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
                     WHERE r.name = ? AND t.name = ?"
                ))
                .bind(repo.as_str())
                .bind(tag.as_str())
                .fetch_optional(&self.reader)
                .await?
            }
            Reference::Digest(d) => {
                sqlx::query(&format!(
                    "SELECT {MANIFEST_COLUMNS} FROM manifests m \
                     JOIN repositories r ON r.id = m.repo_id WHERE r.name = ? AND m.digest = ?"
                ))
                .bind(repo.as_str())
                .bind(d.to_string())
                .fetch_optional(&self.reader)
                .await?
            }
        };
        row.as_ref().map(rows::manifest).transpose()
    }

    async fn tags(&self, repo: &RepoName, page: &Page) -> Result<Option<Vec<String>>> {
        let Some(id) = sqlx::query_scalar::<_, i64>("SELECT id FROM repositories WHERE name = ?")
            .bind(repo.as_str())
            .fetch_optional(&self.reader)
            .await?
        else {
            return Ok(None);
        };
        let tags = sqlx::query_scalar(
            "SELECT name FROM tags WHERE repo_id = ? AND name > ? ORDER BY name LIMIT ?",
        )
        .bind(id)
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(limit(page))
        .fetch_all(&self.reader)
        .await?;
        Ok(Some(tags))
    }

    async fn repositories(&self, page: &Page) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT name FROM repositories r WHERE name > ? \
             AND EXISTS (SELECT 1 FROM manifests m WHERE m.repo_id = r.id) \
             ORDER BY name LIMIT ?",
        )
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(limit(page))
        .fetch_all(&self.reader)
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
             WHERE r.name = ? AND m.subject = ? AND (? IS NULL OR m.artifact_type = ?) \
             ORDER BY m.digest"
        ))
        .bind(repo.as_str())
        .bind(subject.to_string())
        .bind(artifact_type)
        .bind(artifact_type)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(rows::manifest).collect()
    }

    async fn blob(&self, digest: &Digest) -> Result<Option<BlobRecord>> {
        let row = sqlx::query(
            "SELECT size, state, created_at, last_referenced_at FROM blobs WHERE digest = ?",
        )
        .bind(digest.to_string())
        .fetch_optional(&self.reader)
        .await?;
        row.map(|r| rows::blob(digest, &r)).transpose()
    }

    async fn upload(&self, id: &str) -> Result<Option<UploadRecord>> {
        let row = sqlx::query(&format!("{UPLOAD_SELECT} WHERE u.id = ?"))
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(upload_row).transpose()
    }

    async fn idle_uploads(&self, before: i64, limit: u32) -> Result<Vec<UploadRecord>> {
        let rows = sqlx::query(&format!(
            "{UPLOAD_SELECT} WHERE u.updated_at < ? ORDER BY u.updated_at LIMIT ?"
        ))
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(upload_row).collect()
    }

    async fn apply(&self, changes: Vec<Change>) -> Result<()> {
        self.writes.apply(changes).await
    }

    async fn outbox_peek(&self, topic: &str, limit: u32) -> Result<Vec<OutboxEvent>> {
        let found = sqlx::query(
            "SELECT seq, topic, payload FROM outbox WHERE topic = ? ORDER BY seq LIMIT ?",
        )
        .bind(topic)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        found.iter().map(rows::outbox).collect()
    }

    async fn read_point(&self) -> Option<u64> {
        Some(self.generation.get())
    }

    /// One counter for the whole file: any commit anywhere changes everything.
    fn changed_since(&self, _repo: Option<&RepoName>, point: u64) -> bool {
        self.generation.get() != point
    }

    async fn lease_acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>> {
        let now = now_ms();
        let token: Option<i64> = sqlx::query_scalar(
            "INSERT INTO leases (name, holder, token, expires_at) VALUES (?1, ?2, 1, ?3 + ?4) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
             token = leases.token + 1, expires_at = excluded.expires_at \
             WHERE leases.expires_at <= ?3 OR leases.holder = excluded.holder \
             RETURNING token",
        )
        .bind(name)
        .bind(holder)
        .bind(now)
        .bind(ttl.as_millis() as i64)
        .fetch_optional(&self.writer)
        .await?;
        Ok(token.map(|token| Lease {
            name: name.to_string(),
            holder: holder.to_string(),
            token,
        }))
    }

    async fn lease_renew(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE leases SET expires_at = ? WHERE name = ? AND holder = ? AND token = ?",
        )
        .bind(now_ms() + ttl.as_millis() as i64)
        .bind(&lease.name)
        .bind(&lease.holder)
        .bind(lease.token)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn lease_release(&self, lease: &Lease) -> Result<()> {
        sqlx::query("UPDATE leases SET expires_at = 0 WHERE name = ? AND holder = ? AND token = ?")
            .bind(&lease.name)
            .bind(&lease.holder)
            .bind(lease.token)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn lease_holder(&self, name: &str) -> Result<Option<Lease>> {
        let row = sqlx::query("SELECT holder, token FROM leases WHERE name = ? AND expires_at > ?")
            .bind(name)
            .bind(now_ms())
            .fetch_optional(&self.reader)
            .await?;
        row.map(|r| rows::lease(name, &r)).transpose()
    }

    async fn outbox_ack(&self, topic: &str, seq: i64) -> Result<()> {
        sqlx::query("DELETE FROM outbox WHERE topic = ? AND seq <= ?")
            .bind(topic)
            .bind(seq)
            .execute(&self.writer)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    /// A store on a fresh database file (the directory must outlive the store).
    async fn fresh(dir: &tempfile::TempDir) -> super::SqliteMetaStore {
        super::SqliteMetaStore::open(&dir.path().join("meta.db"))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn sqlite_passes_the_suite() {
        let dir = tempfile::tempdir().unwrap();
        crate::meta::testsuite::run(&fresh(&dir).await).await;
    }

    #[tokio::test]
    async fn cached_sqlite_passes_the_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = fresh(&dir).await;
        let cached = crate::meta::cache::CachedMetaStore::new(std::sync::Arc::new(store));
        crate::meta::testsuite::run(&cached).await;
    }

    #[tokio::test]
    async fn the_generation_is_shared_by_stores_on_one_file() {
        use crate::meta::{Change, MetaStore};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let a = super::SqliteMetaStore::open(&path).await.unwrap();
        let b = super::SqliteMetaStore::open(&path).await.unwrap();
        let before = b.read_point().await.unwrap();
        assert!(!b.changed_since(None, before));
        a.apply(vec![Change::CreateUpload {
            id: "u".into(),
            repo: "r".parse().unwrap(),
            owner: String::new(),
        }])
        .await
        .unwrap();
        assert!(b.changed_since(None, before));
        assert!(b.read_point().await.unwrap() > before);
    }

    #[tokio::test]
    async fn stores_opened_at_once_on_a_new_file_all_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let opens = (0..6).map(|_| super::SqliteMetaStore::open(&path));
        for store in futures::future::join_all(opens).await {
            store.expect("every store opens");
        }
    }

    #[tokio::test]
    async fn stores_on_one_file_share_leases_and_see_each_others_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let a = super::SqliteMetaStore::open(&path).await.unwrap();
        let b = super::SqliteMetaStore::open(&path).await.unwrap();
        crate::meta::testsuite::leases(&a, &b).await;
        let a = crate::meta::cache::CachedMetaStore::new(std::sync::Arc::new(a));
        let b = crate::meta::cache::CachedMetaStore::new(std::sync::Arc::new(b));
        crate::meta::testsuite::shared(&a, &b).await;
    }
}

// A write statement takes SQLite's write lock at once, even when it changes no row.
super::access::access_store!(
    SqliteMetaStore,
    sqlite_sql,
    "UPDATE signing_keys SET retire_at = retire_at WHERE kid = ''"
);
