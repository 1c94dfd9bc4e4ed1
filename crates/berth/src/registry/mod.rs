//! The registry core: blobs, upload sessions, manifests, tags, referrers and the catalog.
//!
//! No HTTP types here. The core talks to blob bytes only through [`BlobStore`] and to metadata only
//! through [`MetaStore`]; every value it receives is already validated (`RepoName`, `Digest`,
//! `Reference`). Errors are [`RegistryError`]; the HTTP edge maps them to OCI error codes.
//!
//! Ordering that keeps crashes safe: bytes are published to storage first (write-then-publish,
//! see `storage`), and only then does one metadata transaction make them visible. A crash in
//! between leaves unreferenced bytes, never a visible reference to missing or partial bytes.

pub mod events;
pub mod mirror;
pub mod policy;
pub mod pulls;

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;

/// A garbage collection run, as [`Registry::collection_runs`] reports it.
pub use crate::meta::CollectionRun;
use crate::meta::{Change, Dependency, ManifestRecord, MetaError, MetaStore, UploadRecord};
use crate::oci::digest::{Algorithm, Digest, Hasher};
use crate::oci::manifest::{self, Platform, MAX_MANIFEST_SIZE};
use crate::oci::name::{Reference, RepoName, Tag};
use crate::oci::Page;
use crate::storage::{new_part_name, BlobStore, ByteStream, ErrorKind, StorageError};
use events::{EventAction, EventSink, RegistryEvent, BLOB_MEDIA_TYPE};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("blob {0} is not known to this repository")]
    BlobUnknown(Digest),
    #[error("upload {0} is not known (it may have finished, been cancelled or never started)")]
    BlobUploadUnknown(String),
    #[error("{0}")]
    BlobUploadInvalid(String),
    #[error(
        "chunk out of order: the upload has {size} bytes, so the next chunk must start at {size}"
    )]
    UploadOutOfOrder { size: u64 },
    #[error("requested range is not satisfiable for a blob of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("{0}")]
    DigestInvalid(String),
    #[error("{0}")]
    ManifestInvalid(String),
    #[error("manifest references {0}, which is not present in this repository; push it first")]
    ManifestBlobUnknown(Digest),
    #[error("manifest {0} is not known to this repository")]
    ManifestUnknown(String),
    #[error("repository {0} is not known to this registry")]
    NameUnknown(RepoName),
    #[error("manifest is {0} bytes; the limit is {MAX_MANIFEST_SIZE} bytes")]
    ManifestTooLarge(usize),
    /// The disk (or the database's disk) has no space left: nothing was stored.
    #[error("the registry's storage is full ({0}); nothing was stored. Free space or enlarge the volume, then push again")]
    StorageFull(String),
    /// A store the registry depends on cannot be reached; nothing was changed.
    #[error("{0}; nothing was changed. Retry once it is back")]
    Unavailable(String),
    /// A rule of the registry's owners forbids the change (an immutable tag, a full quota).
    #[error("{0}")]
    Denied(String),
    /// The repository does not take this operation (a push into a pull-through cache).
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Storage(StorageError),
    #[error(transparent)]
    Meta(MetaError),
}

impl From<StorageError> for RegistryError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::DigestMismatch { expected, actual } => RegistryError::DigestInvalid(
                format!("uploaded content has digest {actual}, not the {expected} given"),
            ),
            StorageError::Incomplete(m) => RegistryError::BlobUploadInvalid(m),
            StorageError::PartMissing(m) => RegistryError::BlobUploadUnknown(m),
            StorageError::Body(e) => {
                RegistryError::BlobUploadInvalid(format!("request body ended early: {e}"))
            }
            StorageError::Full(m) => RegistryError::StorageFull(m),
            // Worth a retry: the client hears 503 with Retry-After, not a fault.
            StorageError::Backend(e)
                if matches!(e.kind(), ErrorKind::Throttled | ErrorKind::Unavailable) =>
            {
                RegistryError::Unavailable(format!("the blob storage is unavailable: {e}"))
            }
            e => RegistryError::Storage(e),
        }
    }
}

impl From<policy::PolicyError> for RegistryError {
    fn from(e: policy::PolicyError) -> Self {
        RegistryError::Unavailable(e.to_string())
    }
}

impl From<MetaError> for RegistryError {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::Full(m) => RegistryError::StorageFull(m),
            e @ MetaError::Unavailable(_) => RegistryError::Unavailable(e.to_string()),
            MetaError::BlobCollecting(d) => RegistryError::Unavailable(format!(
                "blob {d} is being garbage-collected; push it again in a few seconds"
            )),
            e => RegistryError::Meta(e),
        }
    }
}

pub type Result<T> = std::result::Result<T, RegistryError>;

/// How long a push waits for a collector to finish deleting an earlier copy of its blob.
const RESERVE_WAIT: Duration = Duration::from_secs(30);

/// A writer's hold on a digest whose bytes it is publishing (see [`Registry::reserve`]).
struct Reservation {
    id: String,
}

impl Reservation {
    /// The change that gives it up, in the transaction that links what it protected.
    fn release(&self) -> Change {
        Change::ReleaseBlob {
            id: self.id.clone(),
        }
    }
}

/// An upload session as the edge sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadSession {
    pub id: String,
    /// Bytes received and acknowledged so far: the next chunk starts here.
    pub size: u64,
}

/// A stored manifest, described as the OCI descriptor a GET or a referrers listing reports.
#[derive(Clone, Debug, PartialEq)]
pub struct ManifestDescriptor {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// `artifactType`, else the config's media type (what the referrers API reports).
    pub artifact_type: Option<String>,
    /// The manifest's `annotations` object, as JSON.
    pub annotations: Option<serde_json::Value>,
}

impl From<ManifestRecord> for ManifestDescriptor {
    fn from(m: ManifestRecord) -> Self {
        ManifestDescriptor {
            digest: m.digest,
            media_type: m.media_type,
            size: m.size,
            artifact_type: m.artifact_type,
            annotations: m.annotations,
        }
    }
}

/// The outcome of a manifest push.
#[derive(Debug)]
pub struct PushedManifest {
    pub digest: Digest,
    pub subject: Option<Digest>,
    /// The tags now pointing at it.
    pub tags: Vec<Tag>,
}

/// Which children of an index must already be in the repository when the index is pushed
/// (Distribution's `validation.manifests.indexes.platforms`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum IndexChildren {
    /// Every child (the default).
    #[default]
    All,
    /// None: sparse manifests are accepted: an index may name children that are absent (e.g.
    /// one platform of a multi-platform image kept by a pull-through cache), and an image its
    /// layers (not its config), as the OCI conformance suite's sparse manifests do.
    None,
    /// The children for these platforms (same `os` and `architecture`); an empty list means
    /// every child, and a child that names no platform is not checked (as in Distribution).
    Platforms(Vec<Platform>),
}

impl IndexChildren {
    fn requires(&self, platform: Option<&Platform>) -> bool {
        match self {
            IndexChildren::All => true,
            IndexChildren::None => false,
            IndexChildren::Platforms(list) if list.is_empty() => true,
            IndexChildren::Platforms(list) => {
                let p = platform.cloned().unwrap_or_default();
                list.iter()
                    .any(|want| want.os == p.os && want.architecture == p.architecture)
            }
        }
    }
}

/// How many repositories holding a blob are considered for a mount without `from`.
const MOUNT_CANDIDATES: u32 = 256;

/// The most running hashes kept for uploads in progress (a cache: see [`Registry`]).
const MAX_CACHED_HASHERS: usize = 4096;

/// The registry service. Cheap to share behind an `Arc`.
///
/// State lives in the stores only. The one thing held in process is a cache of running SHA-256
/// states for uploads in progress, so finishing an upload need not re-read its data; an upload
/// continued on another instance (or after a restart) is re-hashed from storage instead.
///
/// Every metadata write goes through [`Registry::commit`], which is where events are produced.
pub struct Registry {
    meta: Arc<dyn MetaStore>,
    store: BlobStore,
    hashers: Mutex<HashMap<String, (u64, Hasher)>>,
    sinks: Vec<Arc<dyn EventSink>>,
    /// Immutable tags and storage limits; none without one.
    policy: Option<Arc<dyn policy::Policy>>,
    index_children: IndexChildren,
    /// Manifest bytes by digest. Content-addressed, so never stale: which repository may see
    /// a manifest is still decided by the metadata store on every request.
    manifest_bytes: quick_cache::sync::Cache<Digest, Bytes, ManifestWeight>,
    /// How long the backend URLs that blob pulls are redirected to stay valid; `None` serves
    /// every blob through this process.
    redirect: Option<Duration>,
    /// Manifest pulls not yet written (see [`pulls`]).
    pulls: pulls::PullTally,
    /// The registries that pull-through caches mirror; none without one.
    upstream: Option<Arc<dyn mirror::Upstream>>,
    /// Upstream fetches under way, one per manifest or blob.
    flights: mirror::Flights,
    /// When cached tags were last found current upstream.
    freshness: mirror::Freshness,
    /// The registry's id (shared by every instance of it), when it has one.
    id: Option<String>,
}

/// Whether what a stored manifest references must be stored already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Present {
    /// A push: as `IndexChildren` says.
    Required,
    /// Fetched into a pull-through cache: what it references is fetched when it is asked for.
    Fetched,
}

/// Weighs cached manifests by their size.
#[derive(Clone)]
struct ManifestWeight;

impl quick_cache::Weighter<Digest, Bytes> for ManifestWeight {
    fn weight(&self, _key: &Digest, val: &Bytes) -> u64 {
        val.len().max(1) as u64
    }
}

/// Bytes of manifests kept in memory.
const MANIFEST_CACHE_BYTES: u64 = 64 << 20;

impl Registry {
    pub fn new(meta: Arc<dyn MetaStore>, store: BlobStore) -> Registry {
        Registry {
            meta,
            store,
            hashers: Mutex::new(HashMap::new()),
            sinks: Vec::new(),
            policy: None,
            pulls: pulls::PullTally::default(),
            index_children: IndexChildren::All,
            manifest_bytes: quick_cache::sync::Cache::with_weighter(
                16_384,
                MANIFEST_CACHE_BYTES,
                ManifestWeight,
            ),
            redirect: None,
            upstream: None,
            flights: mirror::Flights::default(),
            freshness: mirror::Freshness::default(),
            id: None,
        }
    }

    /// Names the registry: `id` is shared by every instance (see `meta::Change::InitSetting`).
    pub fn with_id(mut self, id: String) -> Registry {
        self.id = Some(id);
        self
    }

    /// The registry's id, if it has one.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// Serves the repositories `upstream` mirrors as pull-through caches of it.
    pub fn with_upstream(mut self, upstream: Arc<dyn mirror::Upstream>) -> Registry {
        self.upstream = Some(upstream);
        self
    }

    /// Reports every change (and pull) to `sink`; a change's entries commit with the change.
    pub fn with_events(mut self, sink: Arc<dyn EventSink>) -> Registry {
        self.sinks.push(sink);
        self
    }

    /// Asks `policy` before tags move or are deleted and before bytes are stored.
    pub fn with_policy(mut self, policy: Arc<dyn policy::Policy>) -> Registry {
        self.policy = Some(policy);
        self
    }

    /// Which children of an index must be present when it is pushed.
    /// Pulls of blobs are redirected to URLs of the storage backend that stay valid for
    /// `lifetime` (see [`Registry::blob_url`]).
    pub fn with_redirects(mut self, lifetime: Duration) -> Registry {
        self.redirect = Some(lifetime);
        self
    }

    pub fn with_index_children(mut self, policy: IndexChildren) -> Registry {
        self.index_children = policy;
        self
    }

    /// The upstream `repo` is a pull-through cache of, if it is one.
    async fn mirrored(
        &self,
        repo: &RepoName,
    ) -> Result<Option<(&dyn mirror::Upstream, mirror::Mirror)>> {
        let Some(upstream) = self.upstream.as_deref() else {
            return Ok(None);
        };
        let mirror = upstream
            .mirror(repo)
            .await
            .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        Ok(mirror.map(|m| (upstream, m)))
    }

    /// Refuses a push into a pull-through cache: its content comes from its upstream only.
    async fn writable(&self, repo: &RepoName) -> Result<()> {
        match self.mirrored(repo).await? {
            Some((_, m)) => Err(RegistryError::Unsupported(format!(
                "{repo} is a pull-through cache of {} (repository {}): it cannot be pushed                  to; push to the upstream registry instead",
                m.upstream, m.repository
            ))),
            None => Ok(()),
        }
    }

    /// Whether any change is reported as an event (see [`Registry::with_events`]).
    pub fn reports_events(&self) -> bool {
        !self.sinks.is_empty()
    }

    /// The outbox entries reporting `event` to every sink that wants it.
    fn entries_for(&self, event: &RegistryEvent, into: &mut Vec<Change>) {
        for sink in self.sinks.iter().filter(|s| s.wants(event.action)) {
            into.extend(sink.changes_for(event));
        }
    }

    /// Applies `changes` as one metadata transaction, together with the outbox entries of the
    /// facts they establish: the one place where the core writes metadata and produces events.
    async fn commit(&self, mut changes: Vec<Change>) -> std::result::Result<(), MetaError> {
        if !self.sinks.is_empty() {
            for event in events::from_changes(&changes) {
                self.entries_for(&event, &mut changes);
            }
        }
        self.meta.apply(changes).await
    }

    /// Reports a pull. Best effort: a pull has already been served, so a failed outbox write is
    /// logged and counted, never returned.
    async fn note_pull(&self, event: impl FnOnce() -> RegistryEvent) {
        if !self.sinks.iter().any(|s| s.wants(EventAction::Pull)) {
            return;
        }
        let mut changes = Vec::new();
        self.entries_for(&event(), &mut changes);
        if changes.is_empty() {
            return;
        }
        if let Err(e) = self.meta.apply(changes).await {
            metrics::counter!("berth_pull_events_lost_total").increment(1);
            tracing::warn!(error = %e, "could not record a pull event");
        }
    }

    /// Deletes the manifest `digest` of `repo` if, in the same transaction, it was recorded
    /// before `before` (Unix seconds) and no tag, index or subject in the repository keeps it
    /// (see `Change::RequireUnkeptManifest`). The deletion is reported like any other. Returns
    /// whether it was deleted.
    pub async fn delete_unkept_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        before: i64,
    ) -> Result<bool> {
        let changes = vec![
            Change::RequireUnkeptManifest {
                repo: repo.clone(),
                digest: digest.clone(),
                before,
            },
            Change::DeleteManifest {
                repo: repo.clone(),
                digest: digest.clone(),
            },
        ];
        match self.commit(changes).await {
            Ok(()) => Ok(true),
            Err(MetaError::Conflict(_) | MetaError::NotFound(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The guards that keep immutable tags among `tags` from moving off `digest`, in the
    /// commit that sets them.
    async fn tag_guards(
        &self,
        repo: &RepoName,
        tags: &[Tag],
        digest: &Digest,
    ) -> Result<Vec<Change>> {
        let Some(policy) = &self.policy else {
            return Ok(Vec::new());
        };
        if tags.is_empty() {
            return Ok(Vec::new());
        }
        Ok(policy
            .immutable(repo, tags)
            .await?
            .into_iter()
            .map(|(tag, _)| Change::RequireTagUnmoved {
                repo: repo.clone(),
                tag,
                digest: digest.clone(),
            })
            .collect())
    }

    /// Asks for a garbage collection, run by whichever instance holds the collection lease.
    pub async fn request_collection(&self, by: &str, dry_run: bool, untagged: bool) -> Result<()> {
        let request = crate::meta::CollectionRequest {
            id: 0,
            requested_at: crate::meta::access::now_ms(),
            requested_by: by.to_string(),
            dry_run,
            untagged,
        };
        Ok(self
            .meta
            .apply(vec![Change::RequestCollection(request)])
            .await?)
    }

    /// Whether garbage collection deletes the untagged manifests of `repo`: its namespace's
    /// setting, else `default` (the run's).
    pub async fn collects_untagged(&self, repo: &RepoName, default: bool) -> Result<bool> {
        let Some(policy) = &self.policy else {
            return Ok(default);
        };
        Ok(policy.untagged_collection(repo).await?.unwrap_or(default))
    }

    /// Whether garbage collection may delete untagged manifests anywhere: the run asks for it
    /// (`default`), or some namespace does.
    pub async fn collects_untagged_anywhere(&self, default: bool) -> Result<bool> {
        match &self.policy {
            _ if default => Ok(true),
            None => Ok(false),
            Some(policy) => Ok(policy.untagged_collection_anywhere().await?),
        }
    }

    /// The schedule `name` set through the API, if any.
    pub async fn schedule(&self, name: &str) -> Result<Option<crate::meta::ScheduleRecord>> {
        Ok(self.meta.schedule(name).await?)
    }

    /// Sets the schedule `name` to the cron expression `cron` (checked by the caller) with
    /// `parameters` for each run, or removes it (`None`).
    pub async fn set_schedule(
        &self,
        name: &str,
        cron: Option<(&str, serde_json::Value)>,
    ) -> Result<()> {
        let change = match cron {
            Some((cron, parameters)) => {
                let now = crate::meta::access::now_ms();
                Change::SetSchedule(crate::meta::ScheduleRecord {
                    name: name.to_string(),
                    cron: cron.to_string(),
                    parameters,
                    created_at: now,
                    updated_at: now,
                })
            }
            None => Change::RemoveSchedule {
                name: name.to_string(),
            },
        };
        Ok(self.meta.apply(vec![change]).await?)
    }

    /// The last `limit` garbage collection runs, newest first.
    pub async fn collection_runs(&self, limit: u32) -> Result<Vec<CollectionRun>> {
        Ok(self.meta.collection_runs(limit).await?)
    }

    /// The bytes a namespace stores, each blob and manifest once.
    pub async fn namespace_usage(&self, namespace: &str) -> Result<u64> {
        Ok(self.meta.namespace_usage(namespace).await?)
    }

    /// Refuses to store `incoming` more bytes (of `digest`, when known) in `repo` if that would
    /// take its namespace past its storage limit. Content the namespace already holds is free.
    pub async fn admit(
        &self,
        repo: &RepoName,
        digest: Option<&Digest>,
        incoming: u64,
    ) -> Result<()> {
        let Some(policy) = &self.policy else {
            return Ok(());
        };
        let Some(limit) = policy.storage_limit(repo).await? else {
            return Ok(());
        };
        if let Some(d) = digest {
            if self.meta.namespace_holds(&limit.namespace, d).await? {
                return Ok(());
            }
        }
        let used = self.meta.namespace_usage(&limit.namespace).await?;
        if used.saturating_add(incoming) > limit.bytes {
            return Err(RegistryError::Denied(format!(
                "storing {incoming} more bytes in {} would exceed its quota: {used} of {} bytes are \
                 used. Delete images (and collect garbage) or ask for a larger quota",
                limit.namespace, limit.bytes
            )));
        }
        Ok(())
    }

    /// Reserves `digest` (`size` bytes) before its bytes are published, so that no collector
    /// deletes them before the commit that links them (which carries
    /// [`Reservation::release`]). Waits while a collector finishes deleting an earlier copy.
    async fn reserve(&self, digest: &Digest, size: u64) -> Result<Reservation> {
        let deadline = tokio::time::Instant::now() + RESERVE_WAIT;
        loop {
            let id = uuid::Uuid::new_v4().to_string();
            let change = Change::ReserveBlob {
                id: id.clone(),
                digest: digest.clone(),
                size,
            };
            match self.meta.apply(vec![change]).await {
                Ok(()) => return Ok(Reservation { id }),
                Err(MetaError::BlobCollecting(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Gives up a reservation whose commit did not happen, behind the answer: best effort (an
    /// abandoned reservation expires), and a request whose commit failed because the database
    /// is unreachable is answered at once instead of waiting for a second failure.
    fn release(&self, reservation: Reservation) {
        let meta = self.meta.clone();
        tokio::spawn(async move {
            if let Err(e) = meta.apply(vec![reservation.release()]).await {
                tracing::debug!(error = %e, "could not release a blob reservation");
            }
        });
    }

    /// Forgets the cached bytes of manifests whose bytes a collector deleted.
    pub fn forget_manifest_bytes(&self, digests: &[Digest]) {
        for d in digests {
            self.manifest_bytes.remove(d);
        }
    }

    // ---- blobs -------------------------------------------------------------------------------

    /// The size of a blob visible in `repo`.
    pub async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<u64> {
        self.meta
            .blob_in_repo(repo, digest)
            .await?
            .ok_or_else(|| RegistryError::BlobUnknown(digest.clone()))
    }

    /// Streams a byte range of a blob of `size` bytes visible in `repo` (see
    /// [`Registry::blob_size`]), and reports the pull.
    pub async fn read_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
        range: Range<u64>,
    ) -> Result<ByteStream> {
        let stream = match self.store.read_blob(digest, range).await {
            Err(StorageError::NotFound(_)) => {
                tracing::error!(%repo, %digest, "blob is linked but missing from storage");
                return Err(RegistryError::BlobUnknown(digest.clone()));
            }
            other => other?,
        };
        self.note_pull(|| events::pull(repo, digest, BLOB_MEDIA_TYPE, size, None))
            .await;
        Ok(stream)
    }

    /// Where a client can fetch a blob of `size` bytes visible in `repo` (see
    /// [`Registry::blob_size`]) directly from the storage backend, when pulls are redirected;
    /// reports the pull when it hands out a URL.
    pub async fn blob_url(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
    ) -> Result<Option<url::Url>> {
        let Some(lifetime) = self.redirect else {
            return Ok(None);
        };
        let url = self.store.blob_url(digest, lifetime).await?;
        if url.is_some() {
            self.note_pull(|| events::pull(repo, digest, BLOB_MEDIA_TYPE, size, None))
                .await;
        }
        Ok(url)
    }

    /// Removes a blob from a repository (its bytes stay while other repositories link them).
    pub async fn delete_blob(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        let change = Change::UnlinkBlob {
            repo: repo.clone(),
            digest: digest.clone(),
        };
        match self.commit(vec![change]).await {
            Err(MetaError::NotFound(_)) => Err(RegistryError::BlobUnknown(digest.clone())),
            other => Ok(other?),
        }
    }

    /// Makes a blob that is already stored visible in `repo`, if it is visible in `from` (or, with
    /// no `from`, in some repository the caller may read: `readable`). Returns whether it was
    /// mounted.
    pub async fn mount_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: Option<&RepoName>,
        readable: &(dyn Fn(&RepoName) -> bool + Send + Sync),
    ) -> Result<bool> {
        self.writable(repo).await?;
        let source = match from {
            Some(from) => self
                .meta
                .blob_in_repo(from, digest)
                .await?
                .map(|size| (from.clone(), size)),
            None => self
                .meta
                .repos_with_blob(digest, MOUNT_CANDIDATES)
                .await?
                .into_iter()
                .find(|(r, _)| readable(r)),
        };
        let Some((source, size)) = source else {
            return Ok(false);
        };
        if self.store.stat_blob(digest).await?.is_none() {
            tracing::error!(%digest, "blob is linked but missing from storage; not mounting");
            return Ok(false);
        }
        self.admit(repo, Some(digest), size).await?;
        let linked = self
            .commit(vec![Change::LinkBlob {
                repo: repo.clone(),
                digest: digest.clone(),
                size,
                mounted_from: Some(source),
            }])
            .await;
        match linked {
            // The source let go of it meanwhile: the client uploads it instead.
            Err(MetaError::NotFound(_) | MetaError::BlobCollecting(_)) => Ok(false),
            other => other.map(|()| true).map_err(Into::into),
        }
    }

    /// Stores a whole blob sent in one request and makes it visible in `repo`.
    pub async fn push_blob<S>(&self, repo: &RepoName, digest: &Digest, body: S) -> Result<u64>
    where
        S: Stream<Item = io::Result<Bytes>> + Send + Unpin,
    {
        self.writable(repo).await?;
        self.store_blob(repo, digest, body).await
    }

    /// Stores a whole blob and makes it visible in `repo`, verifying its digest.
    async fn store_blob<S>(&self, repo: &RepoName, digest: &Digest, body: S) -> Result<u64>
    where
        S: Stream<Item = io::Result<Bytes>> + Send + Unpin,
    {
        let id = uuid::Uuid::new_v4().to_string();
        let result = async {
            let mut hasher = digest.algorithm().hasher();
            let part = new_part_name(0);
            let size = self
                .store
                .write_part(&id, &part, body, Some(&mut hasher))
                .await?;
            let parts = if size == 0 { Vec::new() } else { vec![part] };
            self.admit(repo, Some(digest), size).await?;
            let reservation = self.reserve(digest, size).await?;
            let linked = async {
                self.store
                    .commit_upload(&id, &parts, size, digest, Some(hasher.finish()))
                    .await?;
                self.commit(vec![
                    Change::LinkBlob {
                        repo: repo.clone(),
                        digest: digest.clone(),
                        size,
                        mounted_from: None,
                    },
                    reservation.release(),
                ])
                .await?;
                Ok(size)
            }
            .await;
            if linked.is_err() {
                self.release(reservation);
            }
            linked
        }
        .await;
        self.cleanup_upload_data(&id).await;
        result
    }

    async fn cleanup_upload_data(&self, id: &str) {
        if let Err(e) = self.store.delete_upload(id).await {
            tracing::warn!(upload = id, error = %e, "could not remove upload data");
        }
    }

    // ---- uploads -----------------------------------------------------------------------------

    /// Starts an upload session in `repo` for the identity `owner` (`""` for anonymous);
    /// returns its id. The session is bound to both: every later use of it must name the same
    /// repository and come from the same identity, or the session is unknown to it.
    pub async fn start_upload(&self, repo: &RepoName, owner: &str) -> Result<String> {
        self.writable(repo).await?;
        let id = uuid::Uuid::new_v4().to_string();
        self.commit(vec![Change::CreateUpload {
            id: id.clone(),
            repo: repo.clone(),
            owner: owner.to_string(),
        }])
        .await?;
        Ok(id)
    }

    /// The session record of an upload of `repo` started by `owner`. A session of another
    /// repository or identity is reported unknown, exactly like one that does not exist, so its
    /// id reveals nothing and grants nothing.
    async fn upload_record(&self, repo: &RepoName, id: &str, owner: &str) -> Result<UploadRecord> {
        match self.meta.upload(id).await? {
            Some(u) if &u.repo == repo && u.owner == owner => Ok(u),
            _ => Err(RegistryError::BlobUploadUnknown(id.to_string())),
        }
    }

    /// An upload session of `repo` started by `owner`.
    pub async fn upload(&self, repo: &RepoName, id: &str, owner: &str) -> Result<UploadSession> {
        let up = self.upload_record(repo, id, owner).await?;
        Ok(UploadSession {
            id: up.id,
            size: up.size,
        })
    }

    fn take_hasher(&self, id: &str, offset: u64) -> Option<Hasher> {
        let mut map = self.hashers.lock().unwrap_or_else(|e| e.into_inner());
        match map.remove(id) {
            Some((at, h)) if at == offset => Some(h),
            _ => None,
        }
    }

    fn keep_hasher(&self, id: &str, offset: u64, h: Hasher) {
        let mut map = self.hashers.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_CACHED_HASHERS {
            // Abandoned uploads would otherwise pin entries forever; the cache is only an
            // optimisation, so dropping everything is correct.
            map.clear();
        }
        map.insert(id.to_string(), (offset, h));
    }

    /// Appends a chunk to an upload. `start`, from `Content-Range`, must equal the bytes received
    /// so far. Returns the session after the chunk.
    pub async fn write_chunk<S>(
        &self,
        repo: &RepoName,
        id: &str,
        owner: &str,
        start: Option<u64>,
        body: S,
    ) -> Result<UploadSession>
    where
        S: Stream<Item = io::Result<Bytes>> + Send + Unpin,
    {
        let up = self.append_chunk(repo, id, owner, start, body).await?;
        Ok(UploadSession {
            id: up.id,
            size: up.size,
        })
    }

    async fn append_chunk<S>(
        &self,
        repo: &RepoName,
        id: &str,
        owner: &str,
        start: Option<u64>,
        body: S,
    ) -> Result<UploadRecord>
    where
        S: Stream<Item = io::Result<Bytes>> + Send + Unpin,
    {
        let mut up = self.upload_record(repo, id, owner).await?;
        if let Some(start) = start {
            if start != up.size {
                return Err(RegistryError::UploadOutOfOrder { size: up.size });
            }
        }
        let mut hasher = self.take_hasher(id, up.size);
        if hasher.is_none() && up.size == 0 {
            hasher = Some(Algorithm::Sha256.hasher());
        }
        // Every chunk gets a part of its own: a concurrent or retried chunk for the same offset
        // cannot overwrite the one the session acknowledges.
        let part = new_part_name(up.size);
        let n = self
            .store
            .write_part(id, &part, body, hasher.as_mut())
            .await?;
        if n > 0 {
            let change = Change::AdvanceUpload {
                id: id.to_string(),
                from: up.size,
                to: up.size + n,
                part: part.clone(),
            };
            let recorded = self.commit(vec![change]).await;
            if recorded.is_err() {
                // Not acknowledged: the part is residue; remove it now rather than at purge time.
                if let Err(e) = self.store.delete_part(id, &part).await {
                    tracing::warn!(upload = id, error = %e, "could not remove an unrecorded part");
                }
            }
            match recorded {
                Err(MetaError::Conflict(_)) => {
                    let now = self.upload_record(repo, id, owner).await?;
                    return Err(RegistryError::UploadOutOfOrder { size: now.size });
                }
                Err(MetaError::NotFound(_)) => {
                    return Err(RegistryError::BlobUploadUnknown(id.to_string()))
                }
                other => other?,
            }
            up.size += n;
            up.parts.push(part);
        }
        if let Some(h) = hasher {
            self.keep_hasher(id, up.size, h);
        }
        Ok(up)
    }

    /// Finishes an upload: appends the optional last chunk (which must start at the given offset
    /// when one is given), verifies the whole content against `digest`, publishes the blob and
    /// makes it visible in `repo`.
    pub async fn finish_upload<S>(
        &self,
        repo: &RepoName,
        id: &str,
        owner: &str,
        digest: &Digest,
        last_chunk: Option<(Option<u64>, S)>,
    ) -> Result<u64>
    where
        S: Stream<Item = io::Result<Bytes>> + Send + Unpin,
    {
        let up = match last_chunk {
            Some((start, body)) => self.append_chunk(repo, id, owner, start, body).await?,
            None => self.upload_record(repo, id, owner).await?,
        };
        let known = self.take_hasher(id, up.size).map(Hasher::finish);
        if let Err(e) = self.admit(repo, Some(digest), up.size).await {
            // Refused for good: nothing of the session is kept.
            let _ = self.cancel_upload(repo, id, owner).await;
            return Err(e);
        }
        let reservation = self.reserve(digest, up.size).await?;
        let committed: Result<()> = async {
            self.store
                .commit_upload(id, &up.parts, up.size, digest, known)
                .await?;
            self.commit(vec![
                Change::LinkBlob {
                    repo: repo.clone(),
                    digest: digest.clone(),
                    size: up.size,
                    mounted_from: None,
                },
                Change::DeleteUpload { id: id.to_string() },
                reservation.release(),
            ])
            .await?;
            Ok(())
        }
        .await;
        if let Err(e) = committed {
            self.release(reservation);
            if matches!(e, RegistryError::Unavailable(_)) {
                return Err(e);
            }
            // A concurrent finish (or cancel) of the same session may have got there first.
            return match self.meta.upload(id).await? {
                None => Err(RegistryError::BlobUploadUnknown(id.to_string())),
                Some(_) => Err(e),
            };
        }
        self.cleanup_upload_data(id).await;
        Ok(up.size)
    }

    /// Cancels an upload and removes its data.
    pub async fn cancel_upload(&self, repo: &RepoName, id: &str, owner: &str) -> Result<()> {
        self.upload_record(repo, id, owner).await?;
        match self
            .commit(vec![Change::DeleteUpload { id: id.to_string() }])
            .await
        {
            Err(MetaError::NotFound(_)) => {
                return Err(RegistryError::BlobUploadUnknown(id.to_string()))
            }
            other => other?,
        }
        self.take_hasher(id, u64::MAX);
        self.cleanup_upload_data(id).await;
        Ok(())
    }

    /// Removes upload sessions idle for longer than `age`, and upload data that no session owns
    /// and that nothing has written for as long. With `dry_run`, only counts them. Returns the
    /// number of sessions and orphaned data directories concerned.
    pub async fn purge_uploads(&self, age: Duration, dry_run: bool) -> Result<usize> {
        let cutoff = std::time::SystemTime::now()
            .checked_sub(age)
            .unwrap_or(std::time::UNIX_EPOCH);
        let before = cutoff
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let mut purged = 0;
        loop {
            let idle = self.meta.idle_uploads(before, 500).await?;
            if idle.is_empty() || dry_run {
                purged += idle.len();
                break;
            }
            for up in idle {
                match self
                    .commit(vec![Change::DeleteUpload { id: up.id.clone() }])
                    .await
                {
                    Ok(()) | Err(MetaError::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
                self.take_hasher(&up.id, u64::MAX);
                self.cleanup_upload_data(&up.id).await;
                purged += 1;
            }
        }
        // Temporary files of writes cut short by a crash.
        if !dry_run {
            purged += self.store.remove_stale_temporaries(cutoff).await?;
        }
        // Data without a session: monolithic pushes that crashed, sessions removed above whose
        // data removal failed, residue of concurrent finishes.
        for id in self.store.upload_data_older_than(cutoff).await? {
            if self.meta.upload(&id).await?.is_none() {
                if !dry_run {
                    self.cleanup_upload_data(&id).await;
                }
                purged += 1;
            }
        }
        Ok(purged)
    }

    /// Checks that storage and metadata answer (for health endpoints).
    pub async fn check_health(&self) -> Result<()> {
        self.meta.idle_uploads(0, 1).await?;
        let probe = Digest::of(Algorithm::Sha256, b"berth health probe");
        self.store.stat_blob(&probe).await?;
        Ok(())
    }

    // ---- manifests ---------------------------------------------------------------------------

    /// Validates and stores a manifest, pointing `tags` at it (and `reference`, when it is a tag).
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        tags: &[Tag],
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<PushedManifest> {
        self.writable(repo).await?;
        self.store_manifest(repo, reference, tags, content_type, body, Present::Required)
            .await
    }

    /// Stores a manifest under `reference` (and `tags`); `present` says whether what it
    /// references must be stored already.
    async fn store_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        tags: &[Tag],
        content_type: Option<&str>,
        body: Bytes,
        present: Present,
    ) -> Result<PushedManifest> {
        if body.len() > MAX_MANIFEST_SIZE {
            return Err(RegistryError::ManifestTooLarge(body.len()));
        }
        let parsed = manifest::parse(content_type, &body)
            .map_err(|e| RegistryError::ManifestInvalid(e.0))?;
        let digest = match reference {
            Reference::Digest(d) => {
                let actual = Digest::of(d.algorithm(), &body);
                if &actual != d {
                    return Err(RegistryError::DigestInvalid(format!(
                        "manifest content has digest {actual}, not {d} as given in the URL"
                    )));
                }
                actual
            }
            Reference::Tag(_) => Digest::of(Algorithm::Sha256, &body),
        };
        let mut all_tags: Vec<Tag> = Vec::with_capacity(tags.len() + 1);
        if let Reference::Tag(t) = reference {
            all_tags.push(t.clone());
        }
        for t in tags {
            if !all_tags.contains(t) {
                all_tags.push(t.clone());
            }
        }
        let children = parsed
            .children
            .iter()
            .map(|c| Dependency {
                digest: c.digest.clone(),
                required: present == Present::Required
                    && self.index_children.requires(c.platform.as_ref()),
            })
            .collect();
        let layers_required = self.index_children != IndexChildren::None;
        let blobs = parsed
            .blobs
            .into_iter()
            .map(|digest| Dependency {
                required: present == Present::Required
                    && (layers_required || Some(&digest) == parsed.config.as_ref()),
                digest,
            })
            .collect();
        let record = ManifestRecord {
            digest: digest.clone(),
            media_type: parsed.media_type,
            size: body.len() as u64,
            artifact_type: parsed.artifact_type,
            subject: parsed.subject.clone(),
            annotations: parsed.annotations,
        };
        let mut changes = self.tag_guards(repo, &all_tags, &digest).await?;
        self.admit(repo, Some(&digest), body.len() as u64).await?;
        changes.push(Change::PutManifest {
            repo: repo.clone(),
            manifest: record,
            blobs,
            children,
        });
        changes.extend(all_tags.iter().map(|tag| Change::SetTag {
            repo: repo.clone(),
            tag: tag.clone(),
            digest: digest.clone(),
        }));
        // Already recorded in the repository (a new tag for it): its row keeps its bytes, which
        // the commit checks; if it went meanwhile, it is published anew below.
        let by_digest = Reference::Digest(digest.clone());
        let mut committed = None;
        if self.meta.manifest(repo, &by_digest).await?.is_some() {
            let mut kept = vec![Change::RequireManifest {
                repo: repo.clone(),
                digest: digest.clone(),
            }];
            kept.extend(changes.iter().cloned());
            match self.commit(kept).await {
                Err(MetaError::NotFound(_)) => {}
                other => committed = Some(other),
            }
        }
        let committed = match committed {
            Some(done) => done,
            None => {
                // Reserved, the bytes found at the blob path stay there until the commit.
                let reservation = self.reserve(&digest, body.len() as u64).await?;
                if let Err(e) = self.store.put_blob_bytes(&digest, body.clone()).await {
                    self.release(reservation);
                    return Err(e.into());
                }
                self.manifest_bytes.insert(digest.clone(), body);
                changes.push(reservation.release());
                let done = self.commit(changes).await;
                if done.is_err() {
                    self.release(reservation);
                }
                done
            }
        };
        match committed {
            Err(MetaError::MissingReference(d)) => Err(RegistryError::ManifestBlobUnknown(d)),
            // Only a guard of an immutable tag conflicts here.
            Err(MetaError::Conflict(why)) => Err(RegistryError::Denied(format!(
                "{why}, and the tag is immutable: it cannot be moved; push under a new tag"
            ))),
            other => other.map_err(RegistryError::from),
        }?;
        Ok(PushedManifest {
            digest,
            subject: parsed.subject,
            tags: all_tags,
        })
    }

    /// The descriptor of the manifest a pull of `reference` gets: the stored one, or in a
    /// pull-through cache the upstream's (fetched once, then served from the cache; a cached
    /// tag is revalidated after its mirror's ttl, and served as it is while the upstream fails).
    pub async fn resolve_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<ManifestDescriptor> {
        let Some((upstream, mirror)) = self.mirrored(repo).await? else {
            return self.manifest(repo, reference).await;
        };
        let cached = self.meta.manifest(repo, reference).await?;
        let (tag, cached) = match (reference, cached) {
            (Reference::Digest(_), Some(m)) => {
                mirror::count(&mirror, "manifest", "hit");
                return Ok(m.into());
            }
            (Reference::Tag(tag), Some(m)) => {
                if self.freshness.fresh(repo, tag, &m.digest, mirror.ttl) {
                    mirror::count(&mirror, "manifest", "hit");
                    return Ok(m.into());
                }
                match upstream.manifest_digest(&mirror, tag).await {
                    Ok(Some(d)) if d == m.digest => {
                        self.freshness.checked(repo, tag, &d);
                        mirror::count(&mirror, "manifest", "revalidated");
                        return Ok(m.into());
                    }
                    // Moved upstream: fetched anew below.
                    Ok(Some(_)) => (Some(tag), Some(m)),
                    Ok(None) => {
                        mirror::count(&mirror, "manifest", "gone");
                        return Err(RegistryError::ManifestUnknown(format!(
                            "{tag} (the upstream registry {} no longer has it)",
                            mirror.upstream
                        )));
                    }
                    Err(e) => {
                        tracing::warn!(%repo, %tag, error = %e, "serving a cached tag unrevalidated");
                        mirror::count(&mirror, "manifest", "stale");
                        return Ok(m.into());
                    }
                }
            }
            (Reference::Tag(tag), None) => (Some(tag), None),
            (Reference::Digest(_), None) => (None, None),
        };
        let asked = std::time::Instant::now();
        let _turn = self.flights.enter(format!("{repo}@{reference}")).await;
        // Fetched by another request while this one waited for its turn.
        if let Some(m) = self.meta.manifest(repo, reference).await? {
            let current = match tag {
                Some(tag) => self.freshness.checked_since(repo, tag, &m.digest, asked),
                None => true,
            };
            if current {
                mirror::count(&mirror, "manifest", "hit");
                return Ok(m.into());
            }
        }
        let fetched = match upstream.manifest(&mirror, reference).await {
            Ok(Some(f)) => f,
            Ok(None) => {
                mirror::count(&mirror, "manifest", "absent");
                return Err(RegistryError::ManifestUnknown(format!(
                    "{reference} (the upstream registry {} does not have it)",
                    mirror.upstream
                )));
            }
            Err(e) => {
                return self.stale_or(&mirror, repo, cached, e.to_string());
            }
        };
        let stored = self
            .store_manifest(
                repo,
                reference,
                &[],
                Some(&fetched.media_type),
                fetched.bytes,
                Present::Fetched,
            )
            .await;
        let digest = match stored {
            Ok(pushed) => pushed.digest,
            Err(RegistryError::ManifestInvalid(why) | RegistryError::DigestInvalid(why)) => {
                mirror::count(&mirror, "manifest", "error");
                return Err(RegistryError::Unavailable(format!(
                    "the upstream registry {} answered {reference} with a manifest that is not                      valid ({why})",
                    mirror.upstream
                )));
            }
            Err(e) => return self.stale_or(&mirror, repo, cached, e.to_string()),
        };
        if let Some(tag) = tag {
            self.freshness.checked(repo, tag, &digest);
        }
        mirror::count(&mirror, "manifest", "miss");
        self.manifest(repo, &Reference::Digest(digest)).await
    }

    /// The cached manifest, served while the upstream fails; without one, the failure.
    fn stale_or(
        &self,
        mirror: &mirror::Mirror,
        repo: &RepoName,
        cached: Option<ManifestRecord>,
        why: String,
    ) -> Result<ManifestDescriptor> {
        match cached {
            Some(m) => {
                tracing::warn!(%repo, error = %why, "serving a cached tag: the upstream failed");
                mirror::count(mirror, "manifest", "stale");
                Ok(m.into())
            }
            None => {
                mirror::count(mirror, "manifest", "error");
                Err(RegistryError::Unavailable(why))
            }
        }
    }

    /// The size of a blob a pull of `digest` from `repo` gets: a stored one, or in a
    /// pull-through cache the upstream's, fetched once however many requests ask at once,
    /// verified and stored.
    pub async fn resolve_blob(&self, repo: &RepoName, digest: &Digest) -> Result<u64> {
        let cached = self.meta.blob_in_repo(repo, digest).await?;
        let Some((upstream, mirror)) = self.mirrored(repo).await? else {
            return cached.ok_or_else(|| RegistryError::BlobUnknown(digest.clone()));
        };
        if let Some(size) = cached {
            mirror::count(&mirror, "blob", "hit");
            return Ok(size);
        }
        let _turn = self.flights.enter(format!("{repo}@{digest}")).await;
        if let Some(size) = self.meta.blob_in_repo(repo, digest).await? {
            mirror::count(&mirror, "blob", "hit");
            return Ok(size);
        }
        // Stored already for another repository: linked once the upstream confirms that this
        // repository has it (so no repository reveals another's content), not fetched again.
        if let Some(size) = self.link_stored(upstream, &mirror, repo, digest).await {
            mirror::count(&mirror, "blob", "linked");
            return Ok(size);
        }
        let body = match upstream.blob(&mirror, digest).await {
            Ok(Some(body)) => body,
            Ok(None) => {
                mirror::count(&mirror, "blob", "absent");
                return Err(RegistryError::BlobUnknown(digest.clone()));
            }
            Err(e) => {
                mirror::count(&mirror, "blob", "error");
                return Err(RegistryError::Unavailable(e.to_string()));
            }
        };
        match self.store_blob(repo, digest, body).await {
            Ok(size) => {
                mirror::count(&mirror, "blob", "miss");
                Ok(size)
            }
            Err(e @ (RegistryError::StorageFull(_) | RegistryError::Denied(_))) => Err(e),
            Err(e) => {
                mirror::count(&mirror, "blob", "error");
                Err(RegistryError::Unavailable(format!(
                    "fetching {digest} from the upstream registry {} failed: {e}",
                    mirror.upstream
                )))
            }
        }
    }

    /// Links into `repo` a blob stored for another repository, if the upstream serves it in
    /// `repo`'s upstream repository with the same size; its size when it did.
    async fn link_stored(
        &self,
        upstream: &dyn mirror::Upstream,
        mirror: &mirror::Mirror,
        repo: &RepoName,
        digest: &Digest,
    ) -> Option<u64> {
        let (source, size) = self
            .meta
            .repos_with_blob(digest, 1)
            .await
            .ok()?
            .into_iter()
            .next()?;
        self.store.stat_blob(digest).await.ok()??;
        if upstream.blob_size(mirror, digest).await.ok()?? != size {
            return None;
        }
        self.admit(repo, Some(digest), size).await.ok()?;
        let link = Change::LinkBlob {
            repo: repo.clone(),
            digest: digest.clone(),
            size,
            mounted_from: Some(source),
        };
        self.commit(vec![link]).await.ok().map(|()| size)
    }

    /// A manifest's descriptor, without its bytes.
    pub async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<ManifestDescriptor> {
        match self.meta.manifest(repo, reference).await? {
            Some(m) => Ok(m.into()),
            None if !self.meta.repository_exists(repo).await? => {
                Err(RegistryError::NameUnknown(repo.clone()))
            }
            None => Err(RegistryError::ManifestUnknown(reference.to_string())),
        }
    }

    /// Puts `tag` on the manifest `digest` of `repo`, which must exist there: the same bytes
    /// pushed again under the tag, recorded and reported as a push (and not as a pull).
    pub async fn tag_manifest(
        &self,
        repo: &RepoName,
        tag: &Tag,
        digest: &Digest,
    ) -> Result<PushedManifest> {
        let descriptor = self
            .manifest(repo, &Reference::Digest(digest.clone()))
            .await?;
        let bytes = self.manifest_content(&descriptor.digest).await?;
        let by_tag = Reference::Tag(tag.clone());
        self.put_manifest(repo, &by_tag, &[], Some(&descriptor.media_type), bytes)
            .await
    }

    /// The bytes of a manifest of `repo` found by [`Registry::manifest`] under `reference`, and
    /// reports the pull.
    pub async fn pull_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        manifest: &ManifestDescriptor,
    ) -> Result<Bytes> {
        let bytes = self.manifest_content(&manifest.digest).await?;
        let tag = match reference {
            Reference::Tag(t) => Some(t),
            Reference::Digest(_) => None,
        };
        self.pulls
            .note(repo, &manifest.digest, tag, pulls::unix_now());
        self.note_pull(|| {
            events::pull(
                repo,
                &manifest.digest,
                &manifest.media_type,
                manifest.size,
                tag,
            )
        })
        .await;
        Ok(bytes)
    }

    /// Writes the pull times tallied since the last call (see [`pulls`]); returns how many
    /// manifests' times it wrote. On failure the tally is kept for the next call.
    pub async fn record_pulls(&self) -> std::result::Result<usize, MetaError> {
        let records = self.pulls.take();
        if records.is_empty() {
            return Ok(0);
        }
        let n = records.len();
        match self
            .meta
            .apply(vec![Change::RecordPulls(records.clone())])
            .await
        {
            Ok(()) => Ok(n),
            Err(e) => {
                self.pulls.restore(records);
                Err(e)
            }
        }
    }

    /// A manifest of `repo` under `reference` with its bytes, read to be copied elsewhere:
    /// not reported as a pull.
    pub async fn replica_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<(ManifestDescriptor, Bytes)> {
        let descriptor = self.manifest(repo, reference).await?;
        let bytes = self.manifest_content(&descriptor.digest).await?;
        Ok((descriptor, bytes))
    }

    /// A byte range of a blob visible in `repo`, read to be copied elsewhere: not reported as a
    /// pull.
    pub async fn replica_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Range<u64>,
    ) -> Result<ByteStream> {
        self.blob_size(repo, digest).await?;
        match self.store.read_blob(digest, range).await {
            Err(StorageError::NotFound(_)) => Err(RegistryError::BlobUnknown(digest.clone())),
            other => Ok(other?),
        }
    }

    async fn manifest_content(&self, digest: &Digest) -> Result<Bytes> {
        if let Some(b) = self.manifest_bytes.get(digest) {
            return Ok(b);
        }
        match self.store.read_blob_bytes(digest).await {
            Ok(b) => {
                self.manifest_bytes.insert(digest.clone(), b.clone());
                Ok(b)
            }
            Err(StorageError::NotFound(_)) => {
                tracing::error!(%digest, "manifest is recorded but missing from storage");
                Err(RegistryError::ManifestUnknown(digest.to_string()))
            }
            other => Ok(other?),
        }
    }

    /// Deletes a manifest (by digest: with every tag pointing at it) or just a tag.
    pub async fn delete_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<()> {
        let tags = match reference {
            Reference::Tag(t) => vec![t.clone()],
            Reference::Digest(d) if self.policy.is_some() => self.meta.tags_of(repo, d).await?,
            Reference::Digest(_) => Vec::new(),
        };
        if let Some(policy) = self.policy.as_ref().filter(|_| !tags.is_empty()) {
            if let Some((tag, rule)) = policy.immutable(repo, &tags).await?.into_iter().next() {
                return Err(RegistryError::Denied(format!(
                    "tag {tag} of {repo} is immutable ({rule}): it cannot be deleted, nor the \
                     manifest it points at"
                )));
            }
        }
        let change = match reference {
            Reference::Digest(d) => Change::DeleteManifest {
                repo: repo.clone(),
                digest: d.clone(),
            },
            Reference::Tag(t) => Change::DeleteTag {
                repo: repo.clone(),
                tag: t.clone(),
            },
        };
        match self.commit(vec![change]).await {
            Err(MetaError::NotFound(_)) => {
                Err(RegistryError::ManifestUnknown(reference.to_string()))
            }
            other => Ok(other?),
        }
    }

    // ---- listings ----------------------------------------------------------------------------

    /// Tags of a repository, sorted.
    pub async fn tags(&self, repo: &RepoName, page: &Page) -> Result<Vec<String>> {
        self.meta
            .tags(repo, page)
            .await?
            .ok_or_else(|| RegistryError::NameUnknown(repo.clone()))
    }

    /// Repositories, sorted.
    pub async fn catalog(&self, page: &Page) -> Result<Vec<String>> {
        Ok(self.meta.repositories(page).await?)
    }

    /// Manifests whose subject is `subject`.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<ManifestDescriptor>> {
        let records = self.meta.referrers(repo, subject, artifact_type).await?;
        Ok(records.into_iter().map(ManifestDescriptor::from).collect())
    }
}

#[cfg(test)]
mod error_tests {
    use super::RegistryError;
    use crate::storage::{DriverError, ErrorKind, StorageError};

    #[test]
    fn a_throttled_or_unavailable_backend_is_unavailable_and_a_fault_is_not() {
        for kind in [ErrorKind::Throttled, ErrorKind::Unavailable] {
            let e = StorageError::from(DriverError::new(kind, "slow down"));
            assert!(
                matches!(RegistryError::from(e), RegistryError::Unavailable(m) if m.contains("slow down"))
            );
        }
        for kind in [ErrorKind::Auth, ErrorKind::Other] {
            let e = StorageError::from(DriverError::new(kind, "denied"));
            assert!(matches!(RegistryError::from(e), RegistryError::Storage(_)));
        }
    }
}
