//! Pull-through caching: what the core asks of the registry a namespace mirrors.
//!
//! A repository is mirrored when the configured [`Upstream`] says so ([`Upstream::mirror`]).
//! Content found in the cache is served from it; a miss is fetched from the upstream once per
//! digest however many requests ask at once ([`Flights`]), verified, stored like a push and
//! served from storage. A cached tag is trusted for its mirror's `ttl` and revalidated with one
//! `HEAD` after it; an upstream that is down or refuses (429) leaves the cached content served.
//!
//! The freshness of cached tags is kept in memory: losing it (a restart, another instance)
//! costs one revalidation, never a wrong answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

use crate::oci::digest::Digest;
use crate::oci::name::{Reference, RepoName, Tag};
use crate::storage::ByteStream;

/// A mirrored repository: where its content comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    /// The upstream's name (metrics and messages).
    pub upstream: String,
    /// The repository's name at the upstream.
    pub repository: String,
    /// How long a cached tag is served before it is revalidated; zero revalidates every pull.
    pub ttl: Duration,
}

/// What the upstream answered for a manifest.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    pub media_type: String,
    pub bytes: Bytes,
}

/// Why the upstream could not answer. Cached content is served in spite of any of these.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Down, slow, rate-limiting (429) or failing (5xx): worth retrying later.
    #[error("the upstream registry {upstream} is unavailable: {why}")]
    Unavailable { upstream: String, why: String },
    /// It refused the request or answered something that is not a registry's answer.
    #[error("the upstream registry {upstream} refused: {why}")]
    Refused { upstream: String, why: String },
}

/// The registries that namespaces mirror (implemented by `remote`).
#[async_trait]
pub trait Upstream: Send + Sync {
    /// Whether `repo` is a pull-through cache, and of what.
    async fn mirror(&self, repo: &RepoName) -> Result<Option<Mirror>, UpstreamError>;

    /// The digest the upstream has under `tag`, without its bytes (`None`: it has no such tag).
    async fn manifest_digest(
        &self,
        mirror: &Mirror,
        tag: &Tag,
    ) -> Result<Option<Digest>, UpstreamError>;

    /// A manifest by tag or digest, byte for byte (`None`: the upstream does not have it).
    async fn manifest(
        &self,
        mirror: &Mirror,
        reference: &Reference,
    ) -> Result<Option<FetchedManifest>, UpstreamError>;

    /// The size of a blob the upstream serves in the mirror's repository, without its bytes
    /// (`None`: it does not have it there).
    async fn blob_size(
        &self,
        mirror: &Mirror,
        digest: &Digest,
    ) -> Result<Option<u64>, UpstreamError>;

    /// A blob's bytes, streamed (`None`: the upstream does not have it).
    async fn blob(
        &self,
        mirror: &Mirror,
        digest: &Digest,
    ) -> Result<Option<ByteStream>, UpstreamError>;
}

/// One fetch per key at a time: the first caller fetches while the others wait for it, then
/// find the content stored.
#[derive(Default)]
pub(super) struct Flights {
    running: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A key's turn, held while it fetches; dropping it lets the next caller in.
pub(super) struct Flight<'a> {
    flights: &'a Flights,
    key: String,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl Flights {
    /// Waits for the turn of `key`.
    pub(super) async fn enter(&self, key: String) -> Flight<'_> {
        let lock = self
            .running
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .clone();
        let turn = lock.lock_owned().await;
        Flight {
            flights: self,
            key,
            _turn: turn,
        }
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        // The last one out (the map's handle and this turn's are all that is left) forgets the
        // key; while others wait, they take their turns on the same lock.
        let mut running = self.flights.running.lock().unwrap();
        if running
            .get(&self.key)
            .is_some_and(|lock| Arc::strong_count(lock) <= 2)
        {
            running.remove(&self.key);
        }
    }
}

/// When each cached tag was last found current upstream.
#[derive(Default)]
pub(super) struct Freshness {
    checked: Mutex<HashMap<(RepoName, Tag), (Digest, Instant)>>,
}

/// Tags remembered at most; past it the memory starts over (each tag then revalidates once).
const MAX_TRACKED: usize = 100_000;

impl Freshness {
    /// Whether `tag` of `repo`, cached as `digest`, was found current within `ttl`.
    pub(super) fn fresh(&self, repo: &RepoName, tag: &Tag, digest: &Digest, ttl: Duration) -> bool {
        self.checked
            .lock()
            .unwrap()
            .get(&(repo.clone(), tag.clone()))
            .is_some_and(|(d, at)| d == digest && at.elapsed() < ttl)
    }

    /// Whether `tag` of `repo` was found to be `digest` upstream at or after `since`.
    pub(super) fn checked_since(
        &self,
        repo: &RepoName,
        tag: &Tag,
        digest: &Digest,
        since: Instant,
    ) -> bool {
        self.checked
            .lock()
            .unwrap()
            .get(&(repo.clone(), tag.clone()))
            .is_some_and(|(d, at)| d == digest && *at >= since)
    }

    /// Notes that `tag` of `repo` is `digest` upstream, now.
    pub(super) fn checked(&self, repo: &RepoName, tag: &Tag, digest: &Digest) {
        let mut checked = self.checked.lock().unwrap();
        if checked.len() >= MAX_TRACKED {
            checked.clear();
        }
        checked.insert(
            (repo.clone(), tag.clone()),
            (digest.clone(), Instant::now()),
        );
    }
}

/// Counts a cache answer: `hit`, `miss` (fetched), `revalidated`, `stale` (served while the
/// upstream failed) or `error` (nothing to serve).
pub(super) fn count(mirror: &Mirror, kind: &'static str, result: &'static str) {
    metrics::counter!(
        "berth_proxy_requests_total",
        "upstream" => mirror.upstream.clone(),
        "kind" => kind,
        "result" => result
    )
    .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_caller_per_key_holds_the_turn() {
        let flights = Arc::new(Flights::default());
        let inside = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (flights, inside, most) = (flights.clone(), inside.clone(), most.clone());
                tokio::spawn(async move {
                    let _turn = flights.enter("sha256:x".into()).await;
                    let now = inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    most.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(most.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(flights.running.lock().unwrap().is_empty());
    }

    #[test]
    fn a_tag_is_fresh_for_its_ttl_and_only_at_the_digest_checked() {
        let f = Freshness::default();
        let repo: RepoName = "library/alpine".parse().unwrap();
        let tag: Tag = "3".parse().unwrap();
        let a = Digest::of(crate::oci::digest::Algorithm::Sha256, b"a");
        let b = Digest::of(crate::oci::digest::Algorithm::Sha256, b"b");
        assert!(!f.fresh(&repo, &tag, &a, Duration::from_secs(60)));
        f.checked(&repo, &tag, &a);
        assert!(f.fresh(&repo, &tag, &a, Duration::from_secs(60)));
        assert!(!f.fresh(&repo, &tag, &b, Duration::from_secs(60)));
        assert!(!f.fresh(&repo, &tag, &a, Duration::ZERO));
    }
}
