//! What a load balancer or an orchestrator asks the registry: `/readyz` (should traffic come
//! here?), `/livez` (is the process serving?), and the storage probe of `health.storagedriver`
//! that takes the whole registry out of service while its blob storage fails.
//!
//! [`Health`] is the shared state: `draining` is set once, by the server, when a shutdown signal
//! arrives; the storage verdict is set by [`probe_storage`]. The edge reads both; per request
//! that is one atomic load (the reason string is only locked while unhealthy).
//!
//! Invariants: `/readyz` and `/livez` are never behind authentication nor behind the unhealthy
//! gate; every check a probe endpoint runs is bounded by [`CHECK_TIMEOUT`], so a hung database
//! makes `/readyz` fail instead of hang.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, ErrorCode};
use crate::registry::Registry;

/// How long one check of the metadata store and storage may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Readiness and health, shared by the server (draining), the storage probe and the edge.
#[derive(Clone, Debug, Default)]
pub struct Health(Arc<HealthState>);

#[derive(Debug, Default)]
struct HealthState {
    draining: AtomicBool,
    /// Set while the storage probe has failed `threshold` times in a row.
    unhealthy: AtomicBool,
    /// Why, while `unhealthy`.
    reason: Mutex<String>,
}

impl Health {
    pub fn new() -> Health {
        Health::default()
    }

    /// The server is shutting down: `/readyz` fails from now on.
    pub fn start_draining(&self) {
        self.0.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.0.draining.load(Ordering::SeqCst)
    }

    /// Why the storage probe says the registry is unhealthy, if it does.
    pub fn storage_failure(&self) -> Option<String> {
        if !self.0.unhealthy.load(Ordering::Acquire) {
            return None;
        }
        let reason = self.0.reason.lock().map(|r| r.clone()).unwrap_or_default();
        Some(reason)
    }

    fn set_storage_failure(&self, failure: Option<String>) {
        if let Ok(mut reason) = self.0.reason.lock() {
            *reason = failure.clone().unwrap_or_default();
        }
        self.0.unhealthy.store(failure.is_some(), Ordering::Release);
    }
}

/// The storage probe (`health.storagedriver`).
#[derive(Clone, Copy, Debug)]
pub struct StorageProbe {
    /// Time between probes.
    pub interval: Duration,
    /// Failed probes in a row that make the registry unhealthy (at least 1).
    pub threshold: u32,
}

/// Probes storage (with the core's health check, bounded by [`CHECK_TIMEOUT`]) every
/// `interval` until `stop` changes: after `threshold` failures in a row the registry is
/// unhealthy, and one success makes it healthy again.
pub async fn probe_storage(
    core: Arc<Registry>,
    health: Health,
    probe: StorageProbe,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let threshold = probe.threshold.max(1);
    let mut ticks = tokio::time::interval(probe.interval.max(Duration::from_millis(10)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => return,
        }
        match check(&core).await {
            Ok(()) => {
                if health.storage_failure().is_some() {
                    tracing::info!("storage health check passes again; serving");
                }
                failures = 0;
                health.set_storage_failure(None);
            }
            Err(reason) => {
                failures = failures.saturating_add(1);
                tracing::warn!(failures, threshold, error = %reason, "storage health check failed");
                if failures >= threshold {
                    if health.storage_failure().is_none() {
                        tracing::error!(
                            error = %reason,
                            "storage is unhealthy; answering 503 until a health check passes"
                        );
                    }
                    health.set_storage_failure(Some(reason));
                }
            }
        }
    }
}

/// The core's health check (metadata store and storage), bounded by [`CHECK_TIMEOUT`].
async fn check(core: &Registry) -> Result<(), String> {
    match tokio::time::timeout(CHECK_TIMEOUT, core.check_health()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "the metadata store or storage did not answer within {}s",
            CHECK_TIMEOUT.as_secs()
        )),
    }
}

/// What the probe endpoints need.
pub struct Probes {
    pub core: Arc<Registry>,
    pub health: Health,
}

impl Probes {
    /// Whether traffic should come here, and if not, why (a short reason for the operator).
    async fn readiness(&self) -> Result<(), String> {
        if self.health.is_draining() {
            return Err("draining: the server is shutting down".to_string());
        }
        if let Some(reason) = self.health.storage_failure() {
            return Err(format!("unhealthy: storage: {reason}"));
        }
        check(&self.core)
            .await
            .map_err(|e| format!("unavailable: {e}"))
    }

    /// Each failing health check by name (`storagedriver`: the periodic probe, `health`: a check
    /// run now), for `/debug/health`.
    pub async fn failures(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut failures = serde_json::Map::new();
        if let Some(reason) = self.health.storage_failure() {
            failures.insert("storagedriver".into(), reason.into());
        }
        if let Err(e) = check(&self.core).await {
            failures.insert("health".into(), e.into());
        }
        failures
    }
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// `GET`/`HEAD /readyz`: 200 `ok` when ready; 503 with the reason while draining, while the
/// storage probe reports failure, or when the metadata store or storage does not answer.
pub async fn readyz(State(probes): State<Arc<Probes>>) -> Response {
    match probes.readiness().await {
        Ok(()) => text(StatusCode::OK, "ok".to_string()),
        Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, reason),
    }
}

/// `GET`/`HEAD /livez`: 200 `ok` while the process serves, draining or not.
pub async fn livez() -> Response {
    text(StatusCode::OK, "ok".to_string())
}

/// The state of [`unavailable_while_unhealthy`].
pub struct Gate {
    pub health: Health,
    /// `http.prefix`, under which `/debug/health` is served.
    pub prefix: String,
}

/// While the storage probe reports failure, answers every request 503 `UNAVAILABLE` (as
/// Distribution does while a health check fails), except `/debug/health`, which reports it.
pub async fn unavailable_while_unhealthy(
    State(gate): State<Arc<Gate>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(reason) = gate.health.storage_failure() else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    if path.strip_prefix(gate.prefix.as_str()).unwrap_or(path) == "/debug/health" {
        return next.run(req).await;
    }
    ApiError::new(
        ErrorCode::Unavailable,
        format!("the registry is unhealthy (storage: {reason}); retry later"),
    )
    .with_header(header::RETRY_AFTER, "10")
    .into_response()
}
