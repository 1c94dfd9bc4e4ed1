//! Online garbage collection, driven by the metadata store and never by a walk of storage.
//!
//! A run, in order:
//! 1. untagged manifests (when the run asks, in projects that do not say otherwise, and in
//!    projects whose `delete_untagged` says so): deleted through the core, so their deletion
//!    is an event like any other, each in a transaction that first checks that nothing keeps it;
//! 2. repository links no manifest of the repository names and that are older than the grace
//!    period (layers pushed without a manifest, or whose manifests were deleted): removed;
//! 3. reservations of writers that died: expired after a day (or the grace period if longer);
//! 4. blobs claimed by a run that was stopped: their deletion is finished first;
//! 5. blobs that nothing references, reserves or touched within the grace period: claimed in a
//!    transaction, their bytes deleted one object at a time with bounded parallelism (retried),
//!    then forgotten.
//!
//! Safety rests on the protocol of `meta::collect`: a claim and a reservation or link of the
//! same digest are serialized, so a blob referenced while a run is under way is never deleted.
//! Nothing here needs a lock over pushes; one collector at a time (the `gc` lease) only keeps
//! two from doing the same work. A run stopped at any point leaves claimed blobs that the next
//! run deletes first.

pub mod retention;
pub mod schedule;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use indicatif::ProgressBar;
use tokio_util::sync::CancellationToken;

use crate::meta::{BlobRecord, Change, CollectionRun, MetaError, MetaStore};
use crate::oci::digest::Digest;
use crate::registry::{Registry, RegistryError};
use crate::storage::{BlobStore, StorageError};

/// The lease under which collections run, on any instance or on the command line.
pub const LEASE: &str = "gc";

/// The name of the collection's schedule when one is set through the API.
pub const SCHEDULE: &str = "gc";

/// The most object deletes in flight a schedule may ask for.
pub const MAX_PARALLELISM: usize = 64;

/// How many rows a step reads at a time.
const BATCH: u32 = 500;

/// How many rows one transaction of a step changes (short, so pushes seldom wait for one).
const WRITE_BATCH: usize = 100;

/// How long a writer's reservation lives at least before it is taken for abandoned.
const RESERVATION_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// How often a failed delete of one object is tried.
const DELETE_ATTEMPTS: u32 = 5;

/// What a run does.
#[derive(Clone, Debug)]
pub struct Options {
    /// Content referenced or unlinked within this long is kept.
    pub grace: Duration,
    /// Also delete manifests no tag, index or live subject keeps.
    pub untagged: bool,
    /// Report what would go without changing anything.
    pub dry_run: bool,
    /// Object deletes in flight at once.
    pub parallelism: usize,
    /// Run by the schedule (else asked for).
    pub scheduled: bool,
    /// The share of its wall time the run works (`gc.pace`): see [`Pacer`].
    pub pace: f64,
}

impl Options {
    /// The options the `gc` section of the configuration sets.
    pub fn of(gc: &crate::config::Gc) -> Options {
        Options {
            grace: gc.grace.0,
            untagged: gc.untagged,
            dry_run: false,
            parallelism: gc.parallelism,
            scheduled: false,
            pace: gc.pace,
        }
    }
}

impl Default for Options {
    /// The `gc` section's defaults.
    fn default() -> Self {
        Options::of(&crate::config::Gc::default())
    }
}

/// Keeps a run to its share of the wall time: after each batch of work, [`Pacer::pause`] sleeps
/// long enough that the work done so far took at most `pace` of the time since the run began,
/// so the requests served beside it keep the rest of the machine.
struct Pacer {
    pace: f64,
    started: Instant,
    /// Time spent sleeping so far.
    slept: Duration,
}

impl Pacer {
    fn new(pace: f64) -> Pacer {
        Pacer {
            pace: pace.clamp(0.01, 1.0),
            started: Instant::now(),
            slept: Duration::ZERO,
        }
    }

    /// How long to pause now that `worked` of the elapsed time was work.
    fn owed(&self, worked: Duration) -> Duration {
        if self.pace >= 1.0 {
            return Duration::ZERO;
        }
        // worked / (worked + slept + owed) = pace
        let total = worked.as_secs_f64() / self.pace;
        let owed = total - worked.as_secs_f64() - self.slept.as_secs_f64();
        Duration::from_micros((owed.max(0.0) * 1e6).round() as u64)
    }

    async fn pause(&mut self, stop: &CancellationToken) {
        let worked = self.started.elapsed().saturating_sub(self.slept);
        let owed = self.owed(worked);
        if owed.is_zero() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(owed) => {}
            _ = stop.cancelled() => {}
        }
        self.slept += owed;
    }
}

/// What a run did (or, dry, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub manifests_deleted: u64,
    pub links_removed: u64,
    pub blobs_deleted: u64,
    pub bytes_freed: u64,
    /// Dry runs: each manifest, link and blob that would go, one line each.
    pub would_delete: Vec<String>,
    /// Whether the run was stopped before it finished.
    pub stopped: bool,
}

/// Why a run failed; what it had done until then is kept, and the next run goes on from there.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("metadata: {0}")]
    Meta(#[from] MetaError),
    #[error("{0}")]
    Registry(#[from] RegistryError),
    /// Another registry writes to the same storage: collecting would delete what it uses.
    #[error("garbage collection refused: {0}")]
    Shared(String),
    #[error("importing: {0}")]
    Import(#[from] crate::import::ImportError),
    #[error("deleting {digest} from storage failed {DELETE_ATTEMPTS} times: {error}")]
    Delete { digest: Digest, error: StorageError },
}

/// The collector over the core and the stores it uses.
pub struct Collector {
    core: Arc<Registry>,
    meta: Arc<dyn MetaStore>,
    store: BlobStore,
}

impl Collector {
    pub fn new(core: Arc<Registry>, meta: Arc<dyn MetaStore>, store: BlobStore) -> Collector {
        Collector { core, meta, store }
    }

    /// The scheduled run that is due now, if one is: by the schedule set through the API (with
    /// its parameters over `base`) or, when none is set, every `interval` (never when zero)
    /// since the last scheduled run on any instance, or since `started` (Unix ms) without one.
    pub async fn scheduled_run(
        &self,
        base: &Options,
        interval: Duration,
        started: i64,
    ) -> Result<Option<Options>, GcError> {
        let now = crate::meta::access::now_ms();
        let last = self
            .meta
            .collection_runs(100)
            .await?
            .into_iter()
            .find(|r| r.kind == "schedule")
            .map(|r| r.started_at);
        let scheduled = Options {
            scheduled: true,
            ..base.clone()
        };
        if let Some(set) = self.meta.schedule(SCHEDULE).await? {
            let cron = match schedule::Schedule::parse(&set.cron) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "the stored collection schedule is not valid");
                    return Ok(None);
                }
            };
            // A schedule changed since the last run counts from the change.
            let since = last.unwrap_or(set.updated_at).max(set.updated_at);
            if !cron.due(since, now) {
                return Ok(None);
            }
            let p = &set.parameters;
            return Ok(Some(Options {
                untagged: p["delete_untagged"].as_bool().unwrap_or(base.untagged),
                dry_run: p["dry_run"].as_bool().unwrap_or(false),
                parallelism: p["workers"]
                    .as_u64()
                    .map_or(base.parallelism, |w| (w as usize).clamp(1, MAX_PARALLELISM)),
                ..scheduled
            }));
        }
        let since = last.unwrap_or(started);
        let due = !interval.is_zero() && now - since >= interval.as_millis() as i64;
        Ok(due.then_some(scheduled))
    }

    /// Takes the oldest collection asked for, if any: the options to run it with (`base` with
    /// its dry run and untagged settings).
    pub async fn take_request(&self, base: &Options) -> Result<Option<Options>, GcError> {
        let Some(req) = self.meta.collection_requests(1).await?.pop() else {
            return Ok(None);
        };
        match self
            .meta
            .apply(vec![Change::TakeCollectionRequest { id: req.id }])
            .await
        {
            Ok(()) => {}
            Err(MetaError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        tracing::info!(by = %req.requested_by, dry_run = req.dry_run, "running a collection asked for");
        Ok(Some(Options {
            dry_run: req.dry_run,
            untagged: req.untagged,
            scheduled: false,
            ..base.clone()
        }))
    }

    /// One run, until done or `stop`. `progress` counts what is examined. The run is recorded
    /// in the collection history whatever its outcome.
    pub async fn run(
        &self,
        opts: &Options,
        progress: &ProgressBar,
        stop: &CancellationToken,
    ) -> Result<Report, GcError> {
        let started = Instant::now();
        let started_at = crate::meta::access::now_ms();
        let mut report = Report::default();
        let outcome = self.steps(opts, progress, stop, &mut report).await;
        let status = match &outcome {
            Ok(()) if report.stopped => "stopped",
            Ok(()) => "success",
            Err(_) => "failed",
        };
        metrics::counter!("berth_gc_runs_total", "status" => status).increment(1);
        metrics::histogram!("berth_gc_run_seconds").record(started.elapsed().as_secs_f64());
        let run = CollectionRun {
            id: 0,
            started_at,
            finished_at: crate::meta::access::now_ms(),
            dry_run: opts.dry_run,
            kind: if opts.scheduled { "schedule" } else { "manual" }.into(),
            status: status.into(),
            blobs_deleted: report.blobs_deleted,
            manifests_deleted: report.manifests_deleted,
            links_removed: report.links_removed,
            bytes_freed: report.bytes_freed,
            detail: match &outcome {
                Err(e) => e.to_string(),
                Ok(()) => String::new(),
            },
        };
        if let Err(e) = self.meta.apply(vec![Change::RecordCollection(run)]).await {
            tracing::warn!(error = %e, "could not record the garbage collection run");
        }
        outcome.map(|()| report)
    }

    async fn steps(
        &self,
        opts: &Options,
        progress: &ProgressBar,
        stop: &CancellationToken,
        report: &mut Report,
    ) -> Result<(), GcError> {
        if let Some(why) = crate::import::foreign_writes(&self.store).await? {
            return Err(GcError::Shared(why));
        }
        let before = now_secs() - opts.grace.as_secs() as i64;
        let pacer = &mut Pacer::new(opts.pace);
        self.untagged(before, opts, progress, stop, report, pacer)
            .await?;
        self.links(before, opts, progress, stop, report, pacer)
            .await?;
        if !opts.dry_run {
            // What a stopped run claimed is deleted first.
            self.sweep(opts, stop, report, pacer).await?;
        }
        self.blobs(before, opts, progress, stop, report, pacer)
            .await?;
        report.stopped = stop.is_cancelled();
        Ok(())
    }

    /// Deletes manifests nothing keeps, through the core (their deletions are events), in the
    /// repositories whose project says so, or, where it says nothing, when the run says so.
    async fn untagged(
        &self,
        before: i64,
        opts: &Options,
        progress: &ProgressBar,
        stop: &CancellationToken,
        report: &mut Report,
        pacer: &mut Pacer,
    ) -> Result<(), GcError> {
        if !self.core.collects_untagged_anywhere(opts.untagged).await? {
            return Ok(());
        }
        // Each namespace's setting, asked once per run.
        let mut settings: std::collections::HashMap<String, bool> = Default::default();
        // Deleting an index can leave its children unkept: pass again until a pass deletes
        // nothing (a dry run makes one pass).
        loop {
            let mut deleted = 0;
            let mut found = Vec::new();
            let mut after = None;
            while !stop.is_cancelled() {
                let page = self
                    .meta
                    .untagged_manifests(before, after.as_ref(), BATCH)
                    .await?;
                let Some(last) = page.last().cloned() else {
                    break;
                };
                after = Some(last);
                for (repo, digest) in page {
                    let namespace = repo.as_str().split('/').next().unwrap_or("").to_string();
                    let collect = match settings.get(&namespace) {
                        Some(c) => *c,
                        None => {
                            let c = self.core.collects_untagged(&repo, opts.untagged).await?;
                            settings.insert(namespace, c);
                            c
                        }
                    };
                    if !collect {
                        continue;
                    }
                    if opts.dry_run {
                        found.push((repo, digest));
                        continue;
                    }
                    progress.inc(1);
                    if self
                        .core
                        .delete_unkept_manifest(&repo, &digest, before)
                        .await?
                    {
                        deleted += 1;
                    }
                }
                pacer.pause(stop).await;
            }
            if opts.dry_run {
                report.manifests_deleted += would_delete(progress, report, "manifest", found);
                return Ok(());
            }
            report.manifests_deleted += deleted;
            metrics::counter!("berth_gc_manifests_deleted_total").increment(deleted);
            if deleted == 0 || stop.is_cancelled() {
                return Ok(());
            }
        }
    }

    /// Removes repository links that no manifest of the repository names.
    async fn links(
        &self,
        before: i64,
        opts: &Options,
        progress: &ProgressBar,
        stop: &CancellationToken,
        report: &mut Report,
        pacer: &mut Pacer,
    ) -> Result<(), GcError> {
        if opts.dry_run {
            let found = self.meta.unreferenced_links(before, u32::MAX).await?;
            report.links_removed += would_delete(progress, report, "link", found);
            return Ok(());
        }
        while !stop.is_cancelled() {
            let found = self.meta.unreferenced_links(before, BATCH).await?;
            if found.is_empty() {
                break;
            }
            let n = found.len() as u64;
            let changes = found
                .into_iter()
                .map(|(repo, digest)| Change::UnlinkUnreferenced {
                    repo,
                    digest,
                    before,
                })
                .collect();
            self.write(changes, pacer, stop).await?;
            progress.inc(n);
            report.links_removed += n;
        }
        Ok(())
    }

    /// Claims unreferenced blobs a batch at a time, and deletes each batch.
    async fn blobs(
        &self,
        before: i64,
        opts: &Options,
        progress: &ProgressBar,
        stop: &CancellationToken,
        report: &mut Report,
        pacer: &mut Pacer,
    ) -> Result<(), GcError> {
        if !opts.dry_run {
            let expired = now_secs() - RESERVATION_LIFETIME.max(opts.grace).as_secs() as i64;
            self.meta
                .apply(vec![Change::ExpireReservations { before: expired }])
                .await?;
        }
        let mut after: Option<Digest> = None;
        while !stop.is_cancelled() {
            let found = self
                .meta
                .collectable_blobs(before, after.as_ref(), BATCH)
                .await?;
            let Some(last) = found.last() else { break };
            after = Some(last.digest.clone());
            progress.inc(found.len() as u64);
            if opts.dry_run {
                for b in &found {
                    report.blobs_deleted += 1;
                    report.bytes_freed += b.size;
                    report
                        .would_delete
                        .push(format!("blob {} ({} bytes)", b.digest, b.size));
                }
                continue;
            }
            let claims = found
                .iter()
                .map(|b| Change::ClaimBlob {
                    digest: b.digest.clone(),
                    before,
                })
                .collect();
            self.write(claims, pacer, stop).await?;
            self.sweep(opts, stop, report, pacer).await?;
        }
        Ok(())
    }

    /// Deletes the bytes of every claimed blob and forgets it.
    async fn sweep(
        &self,
        opts: &Options,
        stop: &CancellationToken,
        report: &mut Report,
        pacer: &mut Pacer,
    ) -> Result<(), GcError> {
        while !stop.is_cancelled() {
            let claimed = self.meta.claimed_blobs(BATCH).await?;
            if claimed.is_empty() {
                break;
            }
            let deleted: Vec<Result<BlobRecord, GcError>> = futures::stream::iter(claimed)
                .map(|b| self.delete_bytes(b))
                .buffer_unordered(opts.parallelism.max(1))
                .collect()
                .await;
            pacer.pause(stop).await;
            let mut gone = Vec::new();
            let mut failure = None;
            for d in deleted {
                match d {
                    Ok(b) => gone.push(b),
                    Err(e) => failure = Some(e),
                }
            }
            let digests: Vec<Digest> = gone.iter().map(|b| b.digest.clone()).collect();
            self.core.forget_manifest_bytes(&digests);
            if !gone.is_empty() {
                let forget = digests
                    .iter()
                    .map(|d| Change::ForgetBlob { digest: d.clone() })
                    .collect();
                self.write(forget, pacer, stop).await?;
            }
            let bytes: u64 = gone.iter().map(|b| b.size).sum();
            report.blobs_deleted += gone.len() as u64;
            report.bytes_freed += bytes;
            metrics::counter!("berth_gc_blobs_deleted_total").increment(gone.len() as u64);
            metrics::counter!("berth_gc_bytes_freed_total").increment(bytes);
            if let Some(e) = failure {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Applies the changes of a step [`WRITE_BATCH`] at a time, each its own transaction and
    /// each followed by the run's pause, so a push never waits long behind a collection.
    async fn write(
        &self,
        mut changes: Vec<Change>,
        pacer: &mut Pacer,
        stop: &CancellationToken,
    ) -> Result<(), GcError> {
        while !changes.is_empty() {
            let rest = changes.split_off(changes.len().min(WRITE_BATCH));
            self.meta.apply(changes).await?;
            pacer.pause(stop).await;
            changes = rest;
        }
        Ok(())
    }

    /// Deletes a claimed blob's bytes, retrying with backoff.
    async fn delete_bytes(&self, b: BlobRecord) -> Result<BlobRecord, GcError> {
        let mut wait = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match self.store.delete_blob(&b.digest).await {
                Ok(()) => return Ok(b),
                Err(error) if attempt >= DELETE_ATTEMPTS => {
                    return Err(GcError::Delete {
                        digest: b.digest,
                        error,
                    })
                }
                Err(e) => {
                    tracing::debug!(digest = %b.digest, error = %e, "deleting a blob failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                    attempt += 1;
                }
            }
        }
    }
}

/// A dry run's account of what a step would remove (`what` in `repo@digest`): how many.
fn would_delete(
    progress: &ProgressBar,
    report: &mut Report,
    what: &str,
    found: Vec<(crate::oci::name::RepoName, Digest)>,
) -> u64 {
    progress.inc(found.len() as u64);
    let n = found.len() as u64;
    report.would_delete.extend(
        found
            .into_iter()
            .map(|(repo, digest)| format!("{what} {repo}@{digest}")),
    );
    n
}

fn now_secs() -> i64 {
    crate::meta::access::now_ms() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_pauses_so_that_its_work_is_its_share_of_the_time() {
        let mut p = Pacer::new(0.5);
        // Half the time: as long a pause as the work took.
        assert_eq!(
            p.owed(Duration::from_millis(100)),
            Duration::from_millis(100)
        );
        p.slept = Duration::from_millis(100);
        assert_eq!(p.owed(Duration::from_millis(100)), Duration::ZERO);
        assert_eq!(
            p.owed(Duration::from_millis(150)),
            Duration::from_millis(50)
        );
        let p = Pacer::new(0.25);
        assert_eq!(
            p.owed(Duration::from_millis(100)),
            Duration::from_millis(300)
        );
        assert_eq!(Pacer::new(1.0).owed(Duration::from_secs(5)), Duration::ZERO);
        assert_eq!(Pacer::new(7.0).pace, 1.0, "at most all of the time");
        assert_eq!(Pacer::new(0.0).pace, 0.01, "never stopped altogether");
    }
}
