//! Jobs that must run on one instance at a time, whatever the number of instances: each runs
//! only while its instance holds the job's lease in the metadata store ([`MetaStore`] leases).
//!
//! [`run_leased`] tries to take the lease every third of its time to live; once held, it starts
//! the job and renews the lease at that pace. When a renewal fails, or cannot be confirmed before
//! the lease would expire (the database is unreachable), the job is told to stop (its token is
//! cancelled) and the loop goes back to trying. A holder killed with SIGKILL stops renewing, and
//! another instance takes the lease within its time to live. Jobs must therefore be safe to run
//! again from wherever the last holder got to (outbox delivery acknowledges after sending;
//! purging and importing are idempotent).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{Lease, MetaStore};

/// How long a lease lasts unless renewed.
pub const TTL: Duration = Duration::from_secs(10);

/// This process's name as a lease holder: `<host>/<pid>/<random>`, unique per process start.
pub fn holder_id() -> String {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host".into());
        let random = uuid::Uuid::new_v4().simple().to_string();
        format!("{host}/{}/{}", std::process::id(), &random[..8])
    })
    .clone()
}

/// Who takes a lease, and for how long.
#[derive(Clone, Debug)]
pub struct Holder {
    /// The holder's name ([`holder_id`] in a server).
    pub id: String,
    pub ttl: Duration,
}

impl Default for Holder {
    fn default() -> Self {
        Holder {
            id: holder_id(),
            ttl: TTL,
        }
    }
}

/// Runs `job` whenever `holder` holds the lease `name`, until `shutdown`. `job` gets a token
/// cancelled when the lease is lost or on shutdown, and should return soon after. The lease is
/// released on shutdown so another instance takes over at once.
pub async fn run_leased<F, Fut>(
    meta: Arc<dyn MetaStore>,
    name: String,
    holder: Holder,
    shutdown: CancellationToken,
    mut job: F,
) where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = ()>,
{
    let Holder { id: holder, ttl } = holder;
    let pace = ttl / 3;
    while !shutdown.is_cancelled() {
        let lease = match meta.lease_acquire(&name, &holder, ttl).await {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                pause(&shutdown, pace).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(lease = %name, error = %e, "taking a lease failed; will retry");
                pause(&shutdown, pace).await;
                continue;
            }
        };
        tracing::info!(lease = %name, token = lease.token, "lease taken: this instance runs the job");
        let stop = shutdown.child_token();
        let keeper = keep(meta.clone(), lease.clone(), ttl, stop.clone());
        tokio::join!(job(stop.clone()), keeper);
        if shutdown.is_cancelled() {
            if let Err(e) = meta.lease_release(&lease).await {
                tracing::debug!(lease = %name, error = %e, "releasing a lease failed");
            }
        } else {
            tracing::warn!(lease = %name, "lease lost: the job stopped here");
        }
    }
}

/// Renews `lease` every third of `ttl` until `stop`; cancels `stop` when the lease is lost or
/// may have expired unrenewed.
async fn keep(meta: Arc<dyn MetaStore>, lease: Lease, ttl: Duration, stop: CancellationToken) {
    let pace = ttl / 3;
    // The lease is certainly held until this instant (measured from before the last renewal).
    let mut held_until = Instant::now() + ttl;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pace) => {}
        }
        let asked = Instant::now();
        let renewal = tokio::time::timeout(
            held_until.saturating_duration_since(asked),
            meta.lease_renew(&lease, ttl),
        )
        .await;
        match renewal {
            Ok(Ok(true)) => held_until = asked + ttl,
            Ok(Ok(false)) => break,
            Ok(Err(e)) if Instant::now() + pace < held_until => {
                tracing::warn!(lease = %lease.name, error = %e, "renewing a lease failed; will retry");
            }
            Ok(Err(_)) | Err(_) => break,
        }
    }
    stop.cancel();
}

async fn pause(shutdown: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

/// Runs `job` once under the lease `name`, renewing the lease while it runs, if the lease can be
/// taken now; `Ok(None)` when another instance holds it.
pub async fn run_once_leased<T>(
    meta: Arc<dyn MetaStore>,
    name: &str,
    ttl: Duration,
    job: impl Future<Output = T>,
) -> super::Result<Option<T>> {
    let Some(lease) = meta.lease_acquire(name, &holder_id(), ttl).await? else {
        return Ok(None);
    };
    let stop = CancellationToken::new();
    let keeper = tokio::spawn(keep(meta.clone(), lease.clone(), ttl, stop.clone()));
    let out = job.await;
    stop.cancel();
    let _ = keeper.await;
    if let Err(e) = meta.lease_release(&lease).await {
        tracing::debug!(lease = %name, error = %e, "releasing a lease failed");
    }
    Ok(Some(out))
}
