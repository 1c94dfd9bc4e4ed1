//! A read cache in front of a [`MetaStore`], for the hot read paths (manifest and blob lookups).
//!
//! Correctness rests on the store's *generation*: a number that changes whenever any committed
//! change may alter what reads return, in this process or any other sharing the store. An entry
//! is served only while the generation it was read under is still current, so a write anywhere
//! invalidates everything at once; the generation is read *before* the lookup it labels, so a
//! commit racing with a lookup can only make the entry stale-labelled, never wrongly fresh.
//! Entries are also dropped after [`MAX_AGE`], which bounds staleness if a writer ever dies
//! between committing and announcing the new generation. Stores without a generation are not
//! cached at all.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use quick_cache::sync::Cache;

use super::{
    BlobRecord, Change, ManifestRecord, MetaStore, OutboxEvent, Page, Result, UploadRecord,
};
use crate::oci::digest::Digest;
use crate::oci::name::{Reference, RepoName};

/// The longest an entry is served, whatever the generation says.
pub const MAX_AGE: Duration = Duration::from_secs(10);

/// Entries per cache.
const CAPACITY: usize = 100_000;

#[derive(Clone)]
struct Entry<T> {
    generation: u64,
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

/// Serves `key` from `cache` while its entry is current, else loads it with `load`.
async fn cached<K, T, F>(
    cache: &Cache<K, Entry<T>>,
    generation: Option<u64>,
    key: K,
    load: F,
) -> Result<T>
where
    K: Eq + std::hash::Hash + Clone,
    T: Clone,
    F: std::future::Future<Output = Result<T>>,
{
    let Some(generation) = generation else {
        return load.await;
    };
    if let Some(e) = cache.get(&key) {
        if e.generation == generation && e.at.elapsed() < MAX_AGE {
            return Ok(e.value);
        }
    }
    let value = load.await?;
    cache.insert(
        key,
        Entry {
            generation,
            at: Instant::now(),
            value: value.clone(),
        },
    );
    Ok(value)
}

#[async_trait]
impl MetaStore for CachedMetaStore {
    async fn repository_exists(&self, repo: &RepoName) -> Result<bool> {
        let g = self.inner.generation();
        cached(
            &self.repositories,
            g,
            repo.clone(),
            self.inner.repository_exists(repo),
        )
        .await
    }

    async fn blob_in_repo(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>> {
        let g = self.inner.generation();
        cached(
            &self.blobs,
            g,
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
        let g = self.inner.generation();
        cached(
            &self.manifests,
            g,
            (repo.clone(), reference.clone()),
            self.inner.manifest(repo, reference),
        )
        .await
    }

    async fn tags(&self, repo: &RepoName, page: &Page) -> Result<Option<Vec<String>>> {
        let g = self.inner.generation();
        cached(
            &self.listings,
            g,
            (Some(repo.clone()), page_key(page)),
            self.inner.tags(repo, page),
        )
        .await
    }

    async fn repositories(&self, page: &Page) -> Result<Vec<String>> {
        let g = self.inner.generation();
        let load = async { Ok(Some(self.inner.repositories(page).await?)) };
        Ok(cached(&self.listings, g, (None, page_key(page)), load)
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

    fn generation(&self) -> Option<u64> {
        self.inner.generation()
    }
}
