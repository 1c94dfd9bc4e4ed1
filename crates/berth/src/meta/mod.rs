//! The metadata store: repositories, which blobs each repository may see, manifests, tags,
//! referrers, upload sessions and the event outbox.
//!
//! [`MetaStore`] is the one interface the core uses; SQLite implements it now and PostgreSQL will
//! implement the same trait and pass the same test suite (`testsuite`). Every change goes
//! through [`MetaStore::apply`]: one call, one transaction, so a change and the event that reports
//! it ([`Change::Enqueue`]) commit together or not at all.
//!
//! Invariants: the store never touches blob bytes; every value passed in is already validated
//! (`RepoName`, `Digest`, `Tag`); checks that must be atomic with a write (a manifest's references
//! exist, an upload is at the expected offset) happen inside the write's transaction.

pub mod cache;
pub mod sqlite;
#[cfg(test)]
pub mod testsuite;

use async_trait::async_trait;

use crate::registry::digest::Digest;
use crate::registry::name::{Reference, RepoName, Tag};

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
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
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub type Result<T> = std::result::Result<T, MetaError>;

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
    /// Bytes received and acknowledged so far.
    pub size: u64,
    /// The storage parts holding those bytes, in order.
    pub parts: Vec<String>,
    /// Unix seconds when the session started.
    pub created_at: i64,
}

/// A page of a sorted listing: at most `limit` names strictly after `after`.
#[derive(Clone, Debug, Default)]
pub struct Page {
    pub after: Option<String>,
    pub limit: Option<u32>,
}

/// One change to the metadata. A list of changes is applied in one transaction.
#[derive(Clone, Debug)]
pub enum Change {
    /// Makes a stored blob visible in a repository (creating the repository if needed).
    LinkBlob {
        repo: RepoName,
        digest: Digest,
        size: u64,
    },
    /// Removes a blob from a repository. `NotFound` if it was not linked.
    UnlinkBlob { repo: RepoName, digest: Digest },
    /// Records a manifest. Fails with `MissingReference` unless every blob in `blobs` is linked in
    /// the repository and every manifest in `children` is recorded there.
    PutManifest {
        repo: RepoName,
        manifest: ManifestRecord,
        blobs: Vec<Digest>,
        children: Vec<Digest>,
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
    CreateUpload { id: String, repo: RepoName },
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
}

/// An event waiting in the outbox.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxEvent {
    pub seq: i64,
    pub topic: String,
    pub payload: serde_json::Value,
}

/// The metadata store interface.
#[async_trait]
pub trait MetaStore: Send + Sync + 'static {
    /// Whether a repository exists (has ever had a blob, manifest or upload).
    async fn repository_exists(&self, repo: &RepoName) -> Result<bool>;
    /// The size of `digest` if it is linked in `repo`.
    async fn blob_in_repo(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>>;
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

    /// A number that changes (before `apply` returns) whenever a committed change may alter what
    /// reads return — including changes made by other processes sharing the store. `None` when
    /// the store cannot tell, which disables read caching ([`cache::CachedMetaStore`]).
    fn generation(&self) -> Option<u64> {
        None
    }
}
