//! The registry core: blobs, upload sessions, manifests, tags, referrers and the catalog.
//!
//! No HTTP types here. The core talks to blob bytes only through [`BlobStore`] and to metadata only
//! through [`MetaStore`]; every value it receives is already validated (`RepoName`, `Digest`,
//! `Reference`). Errors are [`RegistryError`]; the HTTP edge maps them to OCI error codes.
//!
//! Ordering that keeps crashes safe: bytes are published to storage first (write-then-publish,
//! see `storage`), and only then does one metadata transaction make them visible. A crash in
//! between leaves unreferenced bytes, never a visible reference to missing or partial bytes.

pub mod digest;
pub mod events;
pub mod manifest;
pub mod name;

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::Stream;

use crate::meta::{Change, ManifestRecord, MetaError, MetaStore, Page, UploadRecord};
use crate::storage::{new_part_name, BlobStore, ByteStream, StorageError};
use digest::{Algorithm, Digest, Hasher};
use events::{EventAction, EventSink, RegistryEvent, RequestContext, BLOB_MEDIA_TYPE};
use manifest::MAX_MANIFEST_SIZE;
use name::{Reference, RepoName};

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
            e => RegistryError::Storage(e),
        }
    }
}

impl From<MetaError> for RegistryError {
    fn from(e: MetaError) -> Self {
        RegistryError::Meta(e)
    }
}

pub type Result<T> = std::result::Result<T, RegistryError>;

/// The outcome of a manifest push.
#[derive(Debug)]
pub struct PushedManifest {
    pub digest: Digest,
    pub subject: Option<Digest>,
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
pub struct Registry {
    meta: Arc<dyn MetaStore>,
    store: BlobStore,
    hashers: Mutex<HashMap<String, (u64, Hasher)>>,
    events: Option<Arc<dyn EventSink>>,
    /// Manifest bytes by digest. Content-addressed, so never stale: which repository may see
    /// a manifest is still decided by the metadata store on every request.
    manifest_bytes: quick_cache::sync::Cache<Digest, Bytes, ManifestWeight>,
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
            events: None,
            manifest_bytes: quick_cache::sync::Cache::with_weighter(
                16_384,
                MANIFEST_CACHE_BYTES,
                ManifestWeight,
            ),
        }
    }

    /// Reports every change (and pull) to `sink`, in the same transaction as the change.
    pub fn with_events(mut self, sink: Arc<dyn EventSink>) -> Registry {
        self.events = Some(sink);
        self
    }

    /// Whether any change is reported as an event (see [`Registry::with_events`]).
    pub fn reports_events(&self) -> bool {
        self.events.is_some()
    }

    /// The outbox entries for an event built by `event`, if anyone wants events of `action`.
    fn events_for(
        &self,
        action: EventAction,
        event: impl FnOnce() -> RegistryEvent,
    ) -> Vec<Change> {
        match &self.events {
            Some(sink) if sink.wants(action) => sink.changes_for(&event()),
            _ => Vec::new(),
        }
    }

    /// Records that content was pulled (a GET of a manifest or blob), for event consumers.
    pub async fn note_pull(
        &self,
        ctx: &RequestContext,
        repo: &RepoName,
        digest: &Digest,
        media_type: &str,
        size: u64,
        tag: Option<&name::Tag>,
    ) -> Result<()> {
        let changes = self.events_for(EventAction::Pull, || {
            let mut e =
                RegistryEvent::new(EventAction::Pull, repo, ctx).target(digest, media_type, size);
            e.tag = tag.cloned();
            e
        });
        if !changes.is_empty() {
            self.meta.apply(changes).await?;
        }
        Ok(())
    }

    // ---- blobs -------------------------------------------------------------------------------

    /// The size of a blob visible in `repo`.
    pub async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<u64> {
        self.meta
            .blob_in_repo(repo, digest)
            .await?
            .ok_or_else(|| RegistryError::BlobUnknown(digest.clone()))
    }

    /// Streams a byte range of a blob visible in `repo`.
    pub async fn read_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Range<u64>,
    ) -> Result<ByteStream> {
        match self.store.read_blob(digest, range).await {
            Err(StorageError::NotFound(_)) => {
                tracing::error!(%repo, %digest, "blob is linked but missing from storage");
                Err(RegistryError::BlobUnknown(digest.clone()))
            }
            other => Ok(other?),
        }
    }

    /// Removes a blob from a repository (its bytes stay while other repositories link them).
    pub async fn delete_blob(
        &self,
        ctx: &RequestContext,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<()> {
        let mut changes = vec![Change::UnlinkBlob {
            repo: repo.clone(),
            digest: digest.clone(),
        }];
        changes.extend(self.events_for(EventAction::Delete, || {
            let mut e = RegistryEvent::new(EventAction::Delete, repo, ctx);
            e.digest = Some(digest.clone());
            e
        }));
        match self.meta.apply(changes).await {
            Err(MetaError::NotFound(_)) => Err(RegistryError::BlobUnknown(digest.clone())),
            other => Ok(other?),
        }
    }

    /// Makes a blob that is already stored visible in `repo`, if it is visible in `from` (or, with
    /// no `from`, in some repository the caller may read: `readable`). Returns whether it was
    /// mounted.
    pub async fn mount_blob(
        &self,
        ctx: &RequestContext,
        repo: &RepoName,
        digest: &Digest,
        from: Option<&RepoName>,
        readable: &(dyn Fn(&RepoName) -> bool + Send + Sync),
    ) -> Result<bool> {
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
        let events = self.events_for(EventAction::Mount, || {
            let mut e = RegistryEvent::new(EventAction::Mount, repo, ctx).target(
                digest,
                BLOB_MEDIA_TYPE,
                size,
            );
            e.from = Some(source);
            e
        });
        self.link(repo, digest, size, events).await?;
        Ok(true)
    }

    /// Makes a blob visible in `repo`, with the outbox entries reporting it.
    async fn link(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
        events: Vec<Change>,
    ) -> Result<()> {
        let mut changes = vec![Change::LinkBlob {
            repo: repo.clone(),
            digest: digest.clone(),
            size,
        }];
        changes.extend(events);
        self.meta.apply(changes).await?;
        Ok(())
    }

    fn blob_pushed(
        &self,
        ctx: &RequestContext,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
    ) -> Vec<Change> {
        self.events_for(EventAction::Push, || {
            RegistryEvent::new(EventAction::Push, repo, ctx).target(digest, BLOB_MEDIA_TYPE, size)
        })
    }

    /// Stores a whole blob sent in one request and makes it visible in `repo`.
    pub async fn push_blob<S>(
        &self,
        ctx: &RequestContext,
        repo: &RepoName,
        digest: &Digest,
        body: S,
    ) -> Result<u64>
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
            self.store
                .commit_upload(&id, &parts, size, digest, Some(hasher.finish()))
                .await?;
            self.link(
                repo,
                digest,
                size,
                self.blob_pushed(ctx, repo, digest, size),
            )
            .await?;
            Ok(size)
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

    /// Starts an upload session in `repo`; returns its id.
    pub async fn start_upload(&self, repo: &RepoName) -> Result<String> {
        let id = uuid::Uuid::new_v4().to_string();
        self.meta
            .apply(vec![Change::CreateUpload {
                id: id.clone(),
                repo: repo.clone(),
            }])
            .await?;
        Ok(id)
    }

    /// An upload session of `repo`.
    pub async fn upload(&self, repo: &RepoName, id: &str) -> Result<UploadRecord> {
        match self.meta.upload(id).await? {
            Some(u) if &u.repo == repo => Ok(u),
            _ => Err(RegistryError::BlobUploadUnknown(id.to_string())),
        }
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
        start: Option<u64>,
        body: S,
    ) -> Result<UploadRecord>
    where
        S: Stream<Item = io::Result<Bytes>> + Send + Unpin,
    {
        let mut up = self.upload(repo, id).await?;
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
            match self.meta.apply(vec![change]).await {
                Err(MetaError::Conflict(_)) => {
                    let now = self.upload(repo, id).await?;
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
        ctx: &RequestContext,
        repo: &RepoName,
        id: &str,
        digest: &Digest,
        last_chunk: Option<(Option<u64>, S)>,
    ) -> Result<u64>
    where
        S: Stream<Item = io::Result<Bytes>> + Send + Unpin,
    {
        let up = match last_chunk {
            Some((start, body)) => self.write_chunk(repo, id, start, body).await?,
            None => self.upload(repo, id).await?,
        };
        let known = self.take_hasher(id, up.size).map(Hasher::finish);
        let committed: Result<()> = async {
            self.store
                .commit_upload(id, &up.parts, up.size, digest, known)
                .await?;
            let mut changes = vec![
                Change::LinkBlob {
                    repo: repo.clone(),
                    digest: digest.clone(),
                    size: up.size,
                },
                Change::DeleteUpload { id: id.to_string() },
            ];
            changes.extend(self.blob_pushed(ctx, repo, digest, up.size));
            self.meta.apply(changes).await?;
            Ok(())
        }
        .await;
        if let Err(e) = committed {
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
    pub async fn cancel_upload(&self, repo: &RepoName, id: &str) -> Result<()> {
        self.upload(repo, id).await?;
        match self
            .meta
            .apply(vec![Change::DeleteUpload { id: id.to_string() }])
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
    pub async fn purge_uploads(&self, age: std::time::Duration, dry_run: bool) -> Result<usize> {
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
                    .meta
                    .apply(vec![Change::DeleteUpload { id: up.id.clone() }])
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

    /// Validates and stores a manifest, tagging it when `reference` is a tag.
    pub async fn put_manifest(
        &self,
        ctx: &RequestContext,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        body: Bytes,
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
        let events = self.events_for(EventAction::Push, || {
            let mut e = RegistryEvent::new(EventAction::Push, repo, ctx).target(
                &digest,
                &parsed.media_type,
                body.len() as u64,
            );
            if let Reference::Tag(t) = reference {
                e.tag = Some(t.clone());
            }
            e
        });
        let record = ManifestRecord {
            digest: digest.clone(),
            media_type: parsed.media_type,
            size: body.len() as u64,
            artifact_type: parsed.artifact_type,
            subject: parsed.subject.clone(),
            annotations: parsed.annotations,
        };
        // Bytes already in the cache came from (or went to) storage, so they are stored.
        if self.manifest_bytes.get(&digest).is_none() {
            self.store.put_blob_bytes(&digest, body.clone()).await?;
            self.manifest_bytes.insert(digest.clone(), body);
        }
        let mut changes = vec![Change::PutManifest {
            repo: repo.clone(),
            manifest: record,
            blobs: parsed.blobs,
            children: parsed.children,
        }];
        if let Reference::Tag(tag) = reference {
            changes.push(Change::SetTag {
                repo: repo.clone(),
                tag: tag.clone(),
                digest: digest.clone(),
            });
        }
        changes.extend(events);
        match self.meta.apply(changes).await {
            Err(MetaError::MissingReference(d)) => Err(RegistryError::ManifestBlobUnknown(d)),
            other => other.map_err(RegistryError::from),
        }?;
        Ok(PushedManifest {
            digest,
            subject: parsed.subject,
        })
    }

    /// A manifest's record, without its bytes.
    pub async fn manifest(&self, repo: &RepoName, reference: &Reference) -> Result<ManifestRecord> {
        match self.meta.manifest(repo, reference).await? {
            Some(m) => Ok(m),
            None if !self.meta.repository_exists(repo).await? => {
                Err(RegistryError::NameUnknown(repo.clone()))
            }
            None => Err(RegistryError::ManifestUnknown(reference.to_string())),
        }
    }

    /// A manifest's bytes.
    pub async fn manifest_bytes(&self, record: &ManifestRecord) -> Result<Bytes> {
        if let Some(b) = self.manifest_bytes.get(&record.digest) {
            return Ok(b);
        }
        match self.store.read_blob_bytes(&record.digest).await {
            Ok(b) => {
                self.manifest_bytes.insert(record.digest.clone(), b.clone());
                Ok(b)
            }
            Err(StorageError::NotFound(_)) => {
                tracing::error!(digest = %record.digest, "manifest is recorded but missing from storage");
                Err(RegistryError::ManifestUnknown(record.digest.to_string()))
            }
            other => Ok(other?),
        }
    }

    /// Deletes a manifest (by digest: with every tag pointing at it) or just a tag.
    pub async fn delete_manifest(
        &self,
        ctx: &RequestContext,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<()> {
        let mut changes = vec![match reference {
            Reference::Digest(d) => Change::DeleteManifest {
                repo: repo.clone(),
                digest: d.clone(),
            },
            Reference::Tag(t) => Change::DeleteTag {
                repo: repo.clone(),
                tag: t.clone(),
            },
        }];
        changes.extend(self.events_for(EventAction::Delete, || {
            let mut e = RegistryEvent::new(EventAction::Delete, repo, ctx);
            match reference {
                Reference::Digest(d) => e.digest = Some(d.clone()),
                Reference::Tag(t) => e.tag = Some(t.clone()),
            }
            e
        }));
        match self.meta.apply(changes).await {
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
    ) -> Result<Vec<ManifestRecord>> {
        Ok(self.meta.referrers(repo, subject, artifact_type).await?)
    }
}
