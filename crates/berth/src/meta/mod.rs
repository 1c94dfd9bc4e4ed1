//! The metadata store: repositories, which blobs each repository may see, manifests, tags,
//! referrers, upload sessions and the event outbox.
//!
//! [`MetaStore`] is the one interface the core uses; SQLite (`sqlite`, the default) and
//! PostgreSQL (`postgres`, for many instances) implement it and pass the same test suite
//! (`testsuite`). Every change goes
//! through [`MetaStore::apply`]: one call, one transaction, so a change and the event that reports
//! it ([`Change::Enqueue`]) commit together or not at all.
//!
//! Invariants: the store never touches blob bytes; every value passed in is already validated
//! (`RepoName`, `Digest`, `Tag`); checks that must be atomic with a write (a manifest's references
//! exist, an upload is at the expected offset) happen inside the write's transaction.

pub mod access;
pub mod cache;
mod collect;
mod group;
pub mod lease;
pub mod postgres;
mod rows;
pub mod sqlite;
#[cfg(test)]
pub mod testsuite;

use std::time::Duration;

use async_trait::async_trait;

use crate::oci::digest::Digest;
use crate::oci::name::{Reference, RepoName, Tag};
use crate::oci::Page;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// A blob a change needs is being deleted by a collector; the same change may succeed once
    /// the collector is done with it.
    #[error("blob {0} is being garbage-collected")]
    BlobCollecting(Digest),
    /// A manifest references something the repository does not have.
    #[error("{0} is not present in the repository")]
    MissingReference(Digest),
    /// The thing a change acts on does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A conditional change found a different state (e.g. an upload at another offset).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The transaction holding the change could not be committed.
    #[error("commit failed: {0}")]
    CommitFailed(String),
    /// Stored data could not be decoded.
    #[error("corrupt metadata: {0}")]
    Corrupt(String),
    /// The database's disk is full: nothing was written.
    #[error("the metadata database's disk is full: {0}")]
    Full(String),
    /// The database cannot be reached (down, restarting, or every connection is in use): nothing
    /// was written, and the same request may succeed once it is back.
    #[error("the metadata database is unreachable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Database(sqlx::Error),
    #[error("database migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for MetaError {
    fn from(e: sqlx::Error) -> Self {
        // SQLITE_FULL, and SQLITE_IOERR_SHMSIZE (the WAL index cannot grow on a full disk).
        const FULL_CODES: [&str; 2] = ["13", "4874"];
        let full = match &e {
            sqlx::Error::Database(d) => d.code().is_some_and(|c| FULL_CODES.contains(&c.as_ref())),
            sqlx::Error::Io(io) => io.kind() == std::io::ErrorKind::StorageFull,
            _ => false,
        };
        if full {
            return MetaError::Full(e.to_string());
        }
        if is_unavailable(&e) {
            return MetaError::Unavailable(e.to_string());
        }
        MetaError::Database(e)
    }
}

/// Whether `e` says the database could not be reached rather than that it refused a statement:
/// a connection that could not be opened or was lost, a pool with no connection to give, or a
/// server shutting down or starting (PostgreSQL's class 57P, and 08 connection exceptions).
fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("57P") || c.starts_with("08")),
        _ => false,
    }
}

pub type Result<T> = std::result::Result<T, MetaError>;

/// Where a blob's bytes are in their life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobState {
    /// Published at the blob path.
    Stored,
    /// Claimed by a collector, whose deletion of the bytes is under way.
    Deleting,
}

/// A blob (or manifest) as the global blob table knows it, whatever repositories link it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobRecord {
    pub digest: Digest,
    pub size: u64,
    pub state: BlobState,
    /// Unix seconds when it was first recorded.
    pub created_at: i64,
    /// Unix seconds when a repository last linked or unlinked it, or a manifest recorded or
    /// deleted named it.
    pub last_referenced_at: i64,
}

/// A manifest as the metadata store knows it.
#[derive(Clone, Debug, PartialEq)]
pub struct ManifestRecord {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub artifact_type: Option<String>,
    pub subject: Option<Digest>,
    /// The manifest's `annotations` object, as JSON.
    pub annotations: Option<serde_json::Value>,
}

/// An upload session.
#[derive(Clone, Debug, PartialEq)]
pub struct UploadRecord {
    pub id: String,
    pub repo: RepoName,
    /// The identity that started the session (`""` for anonymous): the only one that may use it.
    pub owner: String,
    /// Bytes received and acknowledged so far.
    pub size: u64,
    /// The storage parts holding those bytes, in order.
    pub parts: Vec<String>,
    /// Unix seconds when the session started.
    pub created_at: i64,
}

/// Something a manifest references (a blob, or a manifest an index lists), and whether it must
/// already be in the repository (a sparse manifest may name content that is absent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dependency {
    pub digest: Digest,
    pub required: bool,
}

/// One change to the metadata. A list of changes is applied in one transaction.
#[derive(Clone, Debug)]
pub enum Change {
    /// Makes a stored blob visible in a repository (creating the repository if needed).
    /// `mounted_from` names the repository it was mounted from (the metadata store does not
    /// need it; it is part of the fact reported).
    LinkBlob {
        repo: RepoName,
        digest: Digest,
        size: u64,
        mounted_from: Option<RepoName>,
    },
    /// Removes a blob from a repository. `NotFound` if it was not linked.
    UnlinkBlob { repo: RepoName, digest: Digest },
    /// Records a manifest. Fails with `MissingReference` unless every required blob in `blobs`
    /// is linked in the repository and every required manifest in `children` is recorded there.
    /// All of them are recorded as its references.
    PutManifest {
        repo: RepoName,
        manifest: ManifestRecord,
        blobs: Vec<Dependency>,
        children: Vec<Dependency>,
    },
    /// Points a tag at a manifest (which must be recorded in the repository).
    SetTag {
        repo: RepoName,
        tag: Tag,
        digest: Digest,
    },
    /// Removes a tag. `NotFound` if absent.
    DeleteTag { repo: RepoName, tag: Tag },
    /// Removes a manifest and every tag pointing at it. `NotFound` if absent.
    DeleteManifest { repo: RepoName, digest: Digest },
    /// Starts an upload session with zero bytes.
    CreateUpload {
        id: String,
        repo: RepoName,
        owner: String,
    },
    /// Records that an upload grew from `from` to `to` bytes, held by the storage part `part`.
    /// `Conflict` if it is not at `from`; `NotFound` if the session does not exist.
    AdvanceUpload {
        id: String,
        from: u64,
        to: u64,
        part: String,
    },
    /// Ends an upload session. `NotFound` if absent.
    DeleteUpload { id: String },
    /// Appends an event to the outbox under `topic` (the consumer it is for).
    Enqueue {
        topic: String,
        payload: serde_json::Value,
    },
    /// Appends an entry to the audit log (with the change it records).
    Audit(access::AuditEntry),
    /// Reserves `digest` for a writer about to publish its bytes (recording the blob, `size`
    /// bytes, if it is new): a reserved blob is never claimed by a collector.
    /// `BlobCollecting` while a collector is deleting it.
    ReserveBlob {
        id: String,
        digest: Digest,
        size: u64,
    },
    /// Gives a reservation up. `NotFound` if it is gone (it expired): the bytes it protected
    /// may have been collected, so whatever links them in the same transaction must not commit.
    ReleaseBlob { id: String },
    /// Claims `digest` for collection if, as of this transaction, nothing references it (no
    /// repository links it, no manifest is it or names it, nobody reserved it) and nothing has
    /// since `before` (Unix seconds). Claiming nothing is not an error.
    ClaimBlob { digest: Digest, before: i64 },
    /// Removes the record of a claimed blob whose bytes are deleted.
    ForgetBlob { digest: Digest },
    /// Removes reservations taken before `before` (Unix seconds): their writers are gone.
    ExpireReservations { before: i64 },
    /// Removes the link of `digest` in `repo` if it was made before `before` and no manifest
    /// of the repository names it. Removing nothing is not an error.
    UnlinkUnreferenced {
        repo: RepoName,
        digest: Digest,
        before: i64,
    },
    /// Fails the transaction with `Conflict` unless the manifest `digest` of `repo` was
    /// recorded before `before` and nothing keeps it: no tag, no index of the repository, no
    /// subject still in the repository. Put before a `DeleteManifest` of untagged content.
    RequireUnkeptManifest {
        repo: RepoName,
        digest: Digest,
        before: i64,
    },
    /// Fails the transaction with `NotFound` unless the manifest `digest` is recorded in
    /// `repo` (whose row keeps its bytes from collection).
    RequireManifest { repo: RepoName, digest: Digest },
    /// Fails the transaction with `Conflict` if `tag` of `repo` points at a manifest other
    /// than `digest` (an immutable tag may be set once, never moved).
    RequireTagUnmoved {
        repo: RepoName,
        tag: Tag,
        digest: Digest,
    },
    /// Records a finished garbage collection run.
    RecordCollection(CollectionRun),
    /// Asks for a garbage collection (its `id` is ignored).
    RequestCollection(CollectionRequest),
    /// Takes a request to run it. `NotFound` if it is gone (taken already).
    TakeCollectionRequest { id: i64 },
    /// Records pulls served: each manifest's (and tag's, when pulled by tag) last pull time
    /// moves forward to the record's, and the repository's pull count grows. Pulls of content
    /// that is gone are skipped.
    RecordPulls(Vec<PullRecord>),
    /// Sets the schedule `name` (keeping its creation time when it exists).
    SetSchedule(ScheduleRecord),
    /// Removes the schedule `name`; removing none is not an error.
    RemoveSchedule { name: String },
    /// Sets the registry-wide setting `key` to `value` unless it is set already (the first
    /// writer wins: settings such as the registry's id are made once).
    InitSetting { key: String, value: String },
    /// Sets (or, with `None`, removes) the setting `key`, whatever it was.
    SetSetting { key: String, value: Option<String> },
    /// Adds to a replication rule's totals, and sets its last error when one is given.
    ReplicationProgress(ReplicationProgress),
    /// Records one copy of a replication rule (the oldest beyond the last 100,000 go).
    ReplicationCopy(ReplicationCopy),
    /// Removes the outbox events of `topic` up to and including `seq`, with the change that
    /// records what they led to.
    Dequeue { topic: String, seq: i64 },
}

/// One copy a replication rule made, skipped or gave up on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplicationCopy {
    pub rule: String,
    /// `push`, `delete` or `pull`.
    pub action: String,
    pub repository: String,
    /// The tag or digest.
    pub reference: String,
    /// `copied`, `skipped` or `failed`.
    pub outcome: String,
    pub bytes: u64,
    pub error: Option<String>,
    /// Unix milliseconds.
    pub finished_at: i64,
}

/// What a replication rule has done, in total.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplicationProgress {
    pub rule: String,
    /// Images (manifests with what they reference) copied.
    pub images: u64,
    /// Blob and manifest bytes copied.
    pub bytes: u64,
    /// Copies given up on.
    pub failures: u64,
    /// The last failure's reason (kept until the next one).
    pub error: Option<String>,
    /// Unix milliseconds of the last change.
    pub updated_at: i64,
}

/// A recurring job's schedule, set through the API.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScheduleRecord {
    /// What it schedules (`gc`).
    pub name: String,
    /// A cron expression with seconds.
    pub cron: String,
    /// What each run gets (JSON).
    pub parameters: serde_json::Value,
    /// Unix milliseconds.
    pub created_at: i64,
    pub updated_at: i64,
}

/// Manifest pulls of one repository, manifest and tag, gathered since the last record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullRecord {
    pub repo: RepoName,
    pub digest: Digest,
    /// The tag it was pulled by (none when pulled by digest).
    pub tag: Option<Tag>,
    /// The last of the pulls, Unix seconds.
    pub at: i64,
    pub count: u64,
}

/// A garbage collection asked for, waiting for the instance that holds the collection lease.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CollectionRequest {
    pub id: i64,
    /// Unix milliseconds.
    pub requested_at: i64,
    pub requested_by: String,
    pub dry_run: bool,
    pub untagged: bool,
}

/// One garbage collection run, as its history shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CollectionRun {
    pub id: i64,
    /// Unix milliseconds.
    pub started_at: i64,
    pub finished_at: i64,
    pub dry_run: bool,
    /// `manual` (asked for) or `schedule`.
    pub kind: String,
    /// `success`, `stopped` or `failed`.
    pub status: String,
    pub blobs_deleted: u64,
    pub manifests_deleted: u64,
    pub links_removed: u64,
    pub bytes_freed: u64,
    pub detail: String,
}

/// An event waiting in the outbox.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxEvent {
    pub seq: i64,
    pub topic: String,
    pub payload: serde_json::Value,
}

/// Reads that are never cached, because what asks must see what is committed: garbage
/// collection, quotas and tag rules (`collect.rs` implements them once for both engines).
#[async_trait]
pub trait UncachedReads: Send + Sync {
    /// The tags of `repo` pointing at the manifest `digest`.
    async fn tags_of(&self, repo: &RepoName, digest: &Digest) -> Result<Vec<Tag>>;
    /// The bytes stored for repositories named `<namespace>/...`: each blob and manifest once,
    /// however many of them link it.
    async fn namespace_usage(&self, namespace: &str) -> Result<u64>;
    /// Whether a repository named `<namespace>/...` links the blob or records the manifest
    /// `digest`.
    async fn namespace_holds(&self, namespace: &str, digest: &Digest) -> Result<bool>;
    /// Up to `limit` blobs a collector may claim: stored, unreferenced (see
    /// [`Change::ClaimBlob`]) and untouched since `before`, in digest order after `after`.
    async fn collectable_blobs(
        &self,
        before: i64,
        after: Option<&Digest>,
        limit: u32,
    ) -> Result<Vec<BlobRecord>>;
    /// Up to `limit` blobs claimed by a collector and not yet forgotten.
    async fn claimed_blobs(&self, limit: u32) -> Result<Vec<BlobRecord>>;
    /// Up to `limit` repository links made before `before` that no manifest of their repository
    /// names (layers pushed without a manifest, or whose manifests were deleted).
    async fn unreferenced_links(&self, before: i64, limit: u32) -> Result<Vec<(RepoName, Digest)>>;
    /// Up to `limit` manifests recorded before `before` that no tag points at, no index of their
    /// repository lists, and whose subject (if any) is gone from the repository, in order of
    /// repository name and digest after `after`.
    async fn untagged_manifests(
        &self,
        before: i64,
        after: Option<&(RepoName, Digest)>,
        limit: u32,
    ) -> Result<Vec<(RepoName, Digest)>>;
    /// The last `limit` garbage collection runs, newest first.
    async fn collection_runs(&self, limit: u32) -> Result<Vec<CollectionRun>>;
    /// Up to `limit` collections asked for and not yet taken, oldest first.
    async fn collection_requests(&self, limit: u32) -> Result<Vec<CollectionRequest>>;
    /// The schedule `name`, if one is set.
    async fn schedule(&self, name: &str) -> Result<Option<ScheduleRecord>>;
    /// The registry-wide setting `key`, if it is set.
    async fn setting(&self, key: &str) -> Result<Option<String>>;
    /// Every replication rule's totals.
    async fn replication_progress(&self) -> Result<Vec<ReplicationProgress>>;
    /// The last `limit` copies, of `rule` or of every rule, newest first.
    async fn replication_history(
        &self,
        rule: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ReplicationCopy>>;
}

/// The metadata store interface.
#[async_trait]
pub trait MetaStore: UncachedReads + Send + Sync + 'static {
    /// Whether a repository exists (has ever had a blob, manifest or upload).
    async fn repository_exists(&self, repo: &RepoName) -> Result<bool>;
    /// The size of `digest` if it is linked in `repo`.
    async fn blob_in_repo(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>>;
    /// The global record of a stored blob or manifest.
    async fn blob(&self, digest: &Digest) -> Result<Option<BlobRecord>>;
    /// Repositories in which `digest` is linked (at most `limit`), with its size.
    async fn repos_with_blob(&self, digest: &Digest, limit: u32) -> Result<Vec<(RepoName, u64)>>;
    /// A manifest by tag or digest.
    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Option<ManifestRecord>>;
    /// Tags of a repository in lexical order; `None` if the repository does not exist.
    async fn tags(&self, repo: &RepoName, page: &Page) -> Result<Option<Vec<String>>>;
    /// Repositories that hold at least one manifest, in lexical order.
    async fn repositories(&self, page: &Page) -> Result<Vec<String>>;
    /// Manifests in `repo` whose subject is `subject`, optionally only those of `artifact_type`.
    async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<ManifestRecord>>;
    /// An upload session.
    async fn upload(&self, id: &str) -> Result<Option<UploadRecord>>;
    /// Up to `limit` upload sessions that have not grown since `before` (Unix seconds).
    async fn idle_uploads(&self, before: i64, limit: u32) -> Result<Vec<UploadRecord>>;
    /// Applies `changes` in one transaction: all or nothing.
    async fn apply(&self, changes: Vec<Change>) -> Result<()>;

    /// The oldest `limit` events of `topic` in the outbox, in the order they were written.
    async fn outbox_peek(&self, topic: &str, limit: u32) -> Result<Vec<OutboxEvent>>;
    /// Removes the events of `topic` up to and including `seq` (delivered).
    async fn outbox_ack(&self, topic: &str, seq: i64) -> Result<()>;

    /// Takes the lease `name` for `holder` for `ttl`, if it is free, expired or already
    /// `holder`'s. Each taking gives a larger fencing token than any before it.
    async fn lease_acquire(&self, name: &str, holder: &str, ttl: Duration)
        -> Result<Option<Lease>>;
    /// Extends a held lease by `ttl` from now; `false` if it is no longer held under `lease`'s
    /// token (it expired and another holder took it).
    async fn lease_renew(&self, lease: &Lease, ttl: Duration) -> Result<bool>;
    /// Gives a held lease up (nothing happens if it was lost meanwhile).
    async fn lease_release(&self, lease: &Lease) -> Result<()>;
    /// Who holds `name` now, if anyone holds it unexpired.
    async fn lease_holder(&self, name: &str) -> Result<Option<Lease>>;

    /// A point in the store's history that covers every change committed before this call,
    /// by any process sharing the store: reads made after it see at least those changes. Cache
    /// entries are labelled with the point read *before* their lookup. `None` when the store
    /// cannot tell (or cannot tell now), which makes [`cache::CachedMetaStore`] read through.
    async fn read_point(&self) -> Option<u64> {
        None
    }

    /// Whether something that reads of `repo` (`None`: the catalog) return may have changed
    /// since `point`. Only asked about a point the store gave and after a fresh
    /// [`MetaStore::read_point`], so the answer covers every change committed before that.
    fn changed_since(&self, _repo: Option<&RepoName>, _point: u64) -> bool {
        true
    }
}

/// A lease: the right, for a while, to be the one instance doing a job (delivering an
/// endpoint's events, purging uploads). `token` fences: every taking of the lease gets a larger
/// one, so work done under an older token can be refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub name: String,
    pub holder: String,
    pub token: i64,
}

/// The repositories whose cached reads a change list may alter, and whether the catalog may
/// change; upload progress and outbox entries alter no cached read.
pub fn affected(changes: &[Change]) -> (Vec<&RepoName>, bool) {
    let mut repos: Vec<&RepoName> = Vec::new();
    let mut catalog = false;
    for c in changes {
        let repo = match c {
            Change::LinkBlob { repo, .. }
            | Change::UnlinkBlob { repo, .. }
            | Change::SetTag { repo, .. }
            | Change::DeleteTag { repo, .. }
            | Change::CreateUpload { repo, .. } => repo,
            Change::PutManifest { repo, .. } | Change::DeleteManifest { repo, .. } => {
                catalog = true;
                repo
            }
            Change::UnlinkUnreferenced { repo, .. } => repo,
            Change::AdvanceUpload { .. }
            | Change::DeleteUpload { .. }
            | Change::Enqueue { .. }
            | Change::Audit(_)
            | Change::ReserveBlob { .. }
            | Change::ReleaseBlob { .. }
            | Change::ClaimBlob { .. }
            | Change::ForgetBlob { .. }
            | Change::ExpireReservations { .. }
            | Change::RequireUnkeptManifest { .. }
            | Change::RequireTagUnmoved { .. }
            | Change::RequireManifest { .. }
            | Change::RecordCollection(_)
            | Change::RequestCollection(_)
            | Change::TakeCollectionRequest { .. }
            | Change::RecordPulls(_)
            | Change::SetSchedule(_)
            | Change::RemoveSchedule { .. }
            | Change::InitSetting { .. }
            | Change::SetSetting { .. }
            | Change::ReplicationProgress(_)
            | Change::ReplicationCopy(_)
            | Change::Dequeue { .. } => continue,
        };
        if !repos.contains(&repo) {
            repos.push(repo);
        }
    }
    (repos, catalog)
}
