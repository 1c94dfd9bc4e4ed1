//! A read cache in front of a [`MetaStore`], for the hot read paths (manifest and blob lookups,
//! listings).
//!
//! Correctness rests on the store's *read points* ([`MetaStore::read_point`]): a point covers
//! every change committed before it was asked for, by any process sharing the store. An entry is
//! labelled with the point taken *before* its lookup, and served only while the store says
//! nothing it depends on has changed since ([`MetaStore::changed_since`]: per repository on
//! PostgreSQL, for the whole file on SQLite). A commit racing with a lookup can only make an
//! entry look older than it is, never wrongly fresh. Entries are also dropped after
//! [`MAX_AGE`], which bounds staleness should an announcement of a change ever be lost. A store
//! that cannot give a point (now) is read through.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use quick_cache::sync::Cache;

use super::{
    BlobRecord, Change, Lease, ManifestRecord, MetaStore, OutboxEvent, Page, Result, UploadRecord,
};
use crate::oci::digest::Digest;
use crate::oci::name::{Reference, RepoName};

/// The longest an entry is served, whatever the store says.
pub const MAX_AGE: Duration = Duration::from_secs(10);

/// Entries per cache.
const CAPACITY: usize = 100_000;

#[derive(Clone)]
struct Entry<T> {
    /// The read point taken before the lookup.
    point: u64,
    at: Instant,
    value: T,
}

pub struct CachedMetaStore {
    inner: Arc<dyn MetaStore>,
    manifests: Cache<(RepoName, Reference), Entry<Option<ManifestRecord>>>,
    blobs: Cache<(RepoName, Digest), Entry<Option<u64>>>,
    repositories: Cache<RepoName, Entry<bool>>,
    /// Listings (tags of a repository, the catalog), keyed by the page asked for.
    listings: Cache<ListingKey, Entry<Option<Vec<String>>>>,
}

/// A [`Page`] as a cache key.
type PageKey = (Option<String>, Option<u32>);

/// Which listing: the tags of a repository, or the catalog (`None`), and the page.
type ListingKey = (Option<RepoName>, PageKey);

fn page_key(page: &Page) -> PageKey {
    (page.after.clone(), page.limit)
}

/// Listing pages kept (each may hold many names).
const LISTING_CAPACITY: usize = 1_000;

impl CachedMetaStore {
    pub fn new(inner: Arc<dyn MetaStore>) -> CachedMetaStore {
        CachedMetaStore {
            inner,
            manifests: Cache::new(CAPACITY),
            blobs: Cache::new(CAPACITY),
            repositories: Cache::new(CAPACITY),
            listings: Cache::new(LISTING_CAPACITY),
        }
    }
}

/// Serves `key` from `cache` while its entry is current, else loads it with `load`. `repo` is
/// what the entry depends on (`None`: the catalog).
async fn cached<K, T, F>(
    store: &dyn MetaStore,
    cache: &Cache<K, Entry<T>>,
    repo: Option<&RepoName>,
    key: K,
    load: F,
) -> Result<T>
where
    K: Eq + std::hash::Hash + Clone,
    T: Clone,
    F: std::future::Future<Output = Result<T>>,
{
    let Some(point) = store.read_point().await else {
        return load.await;
    };
    if let Some(e) = cache.get(&key) {
        if e.at.elapsed() < MAX_AGE && !store.changed_since(repo, e.point) {
            return Ok(e.value);
        }
    }
    let value = load.await?;
    cache.insert(
        key,
        Entry {
            point,
            at: Instant::now(),
            value: value.clone(),
        },
    );
    Ok(value)
}

#[async_trait]
impl MetaStore for CachedMetaStore {
    async fn repository_exists(&self, repo: &RepoName) -> Result<bool> {
        cached(
            &*self.inner,
            &self.repositories,
            Some(repo),
            repo.clone(),
            self.inner.repository_exists(repo),
        )
        .await
    }

    async fn blob_in_repo(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>> {
        cached(
            &*self.inner,
            &self.blobs,
            Some(repo),
            (repo.clone(), digest.clone()),
            self.inner.blob_in_repo(repo, digest),
        )
        .await
    }

    async fn repos_with_blob(&self, digest: &Digest, limit: u32) -> Result<Vec<(RepoName, u64)>> {
        self.inner.repos_with_blob(digest, limit).await
    }

    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Option<ManifestRecord>> {
        cached(
            &*self.inner,
            &self.manifests,
            Some(repo),
            (repo.clone(), reference.clone()),
            self.inner.manifest(repo, reference),
        )
        .await
    }

    async fn tags(&self, repo: &RepoName, page: &Page) -> Result<Option<Vec<String>>> {
        cached(
            &*self.inner,
            &self.listings,
            Some(repo),
            (Some(repo.clone()), page_key(page)),
            self.inner.tags(repo, page),
        )
        .await
    }

    async fn repositories(&self, page: &Page) -> Result<Vec<String>> {
        let load = async { Ok(Some(self.inner.repositories(page).await?)) };
        Ok(cached(
            &*self.inner,
            &self.listings,
            None,
            (None, page_key(page)),
            load,
        )
        .await?
        .unwrap_or_default())
    }

    async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<ManifestRecord>> {
        self.inner.referrers(repo, subject, artifact_type).await
    }

    async fn blob(&self, digest: &Digest) -> Result<Option<BlobRecord>> {
        self.inner.blob(digest).await
    }

    async fn upload(&self, id: &str) -> Result<Option<UploadRecord>> {
        self.inner.upload(id).await
    }

    async fn idle_uploads(&self, before: i64, limit: u32) -> Result<Vec<UploadRecord>> {
        self.inner.idle_uploads(before, limit).await
    }

    async fn apply(&self, changes: Vec<Change>) -> Result<()> {
        self.inner.apply(changes).await
    }

    async fn outbox_peek(&self, topic: &str, limit: u32) -> Result<Vec<OutboxEvent>> {
        self.inner.outbox_peek(topic, limit).await
    }

    async fn outbox_ack(&self, topic: &str, seq: i64) -> Result<()> {
        self.inner.outbox_ack(topic, seq).await
    }

    async fn lease_acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>> {
        self.inner.lease_acquire(name, holder, ttl).await
    }

    async fn lease_renew(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
        self.inner.lease_renew(lease, ttl).await
    }

    async fn lease_release(&self, lease: &Lease) -> Result<()> {
        self.inner.lease_release(lease).await
    }

    async fn lease_holder(&self, name: &str) -> Result<Option<Lease>> {
        self.inner.lease_holder(name).await
    }

    async fn read_point(&self) -> Option<u64> {
        self.inner.read_point().await
    }

    fn changed_since(&self, repo: Option<&RepoName>, point: u64) -> bool {
        self.inner.changed_since(repo, point)
    }
}

/// Never cached (see [`super::UncachedReads`]).
#[async_trait]
impl super::UncachedReads for CachedMetaStore {
    async fn tags_of(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Vec<crate::oci::name::Tag>> {
        self.inner.tags_of(repo, digest).await
    }

    async fn namespace_usage(&self, namespace: &str) -> Result<u64> {
        self.inner.namespace_usage(namespace).await
    }

    async fn namespace_holds(&self, namespace: &str, digest: &Digest) -> Result<bool> {
        self.inner.namespace_holds(namespace, digest).await
    }

    async fn collectable_blobs(
        &self,
        before: i64,
        after: Option<&Digest>,
        limit: u32,
    ) -> Result<Vec<BlobRecord>> {
        self.inner.collectable_blobs(before, after, limit).await
    }

    async fn claimed_blobs(&self, limit: u32) -> Result<Vec<BlobRecord>> {
        self.inner.claimed_blobs(limit).await
    }

    async fn unreferenced_links(&self, before: i64, limit: u32) -> Result<Vec<(RepoName, Digest)>> {
        self.inner.unreferenced_links(before, limit).await
    }

    async fn untagged_manifests(
        &self,
        before: i64,
        after: Option<&(RepoName, Digest)>,
        limit: u32,
    ) -> Result<Vec<(RepoName, Digest)>> {
        self.inner.untagged_manifests(before, after, limit).await
    }

    async fn collection_runs(&self, limit: u32) -> Result<Vec<super::CollectionRun>> {
        self.inner.collection_runs(limit).await
    }

    async fn collection_requests(&self, limit: u32) -> Result<Vec<super::CollectionRequest>> {
        self.inner.collection_requests(limit).await
    }

    async fn schedule(&self, name: &str) -> Result<Option<super::ScheduleRecord>> {
        self.inner.schedule(name).await
    }

    async fn setting(&self, key: &str) -> Result<Option<String>> {
        self.inner.setting(key).await
    }

    async fn replication_progress(&self) -> Result<Vec<super::ReplicationProgress>> {
        self.inner.replication_progress().await
    }

    async fn replication_history(
        &self,
        rule: Option<&str>,
        limit: u32,
    ) -> Result<Vec<super::ReplicationCopy>> {
        self.inner.replication_history(rule, limit).await
    }
}
