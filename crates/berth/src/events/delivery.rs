//! Delivery: one task per enabled endpoint that sends its outbox topic to the endpoint's URL.
//!
//! Each task loops: peek up to [`DeliveryOptions::batch_size`] events of `notify:<name>` in
//! outbox order, POST them as one envelope, and acknowledge (delete) them only after the
//! endpoint accepted the request. When the topic is empty the task sleeps for
//! [`DeliveryOptions::poll_interval`] (polling, so events written by other processes sharing the
//! database are seen too; no in-process wake-up, as the sink runs before the commit).
//!
//! Failure handling follows Distribution: a response in 200..400 is accepted; anything else, a
//! timeout or a connection error is a failure. Attempts are retried at once until `threshold`
//! consecutive failures, then every retry waits `backoff`, until one succeeds. Defaults as
//! Distribution's: `timeout` 1s, `threshold` 10, `backoff` 1s.
//!
//! Invariants:
//! - Never drops an event: an event leaves the outbox only after a request containing it was
//!   accepted. Delivery is at-least-once (a crash between acceptance and acknowledgement re-sends
//!   the batch) and in order per endpoint (a batch is retried whole before anything after it).
//! - Endpoints are independent: each has its own task, client, failure count and backoff.
//! - One sender per endpoint, whatever the number of instances: a task delivers only while its
//!   instance holds the endpoint's lease (`notifications/<name>`, [`run_leased`]). When the holder
//!   dies another instance takes the lease within its time to live and resends from the oldest
//!   unacknowledged event (so a batch sent but not acknowledged by the dead holder is sent again).
//! - Shutdown ([`CancellationToken`]) interrupts waits, never a request in flight: a task stops
//!   after its current POST (and its acknowledgement) is done.
//! - Logs name the endpoint, never its URL or headers (they may hold credentials).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Endpoint, GoDuration};
use crate::meta::lease::{run_leased, Holder};
use crate::meta::{MetaStore, OutboxEvent};

use super::envelope::EVENTS_MEDIA_TYPE;
use super::sink::topic;

/// Distribution's default time limit of one delivery attempt.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Distribution's default number of consecutive failures before backing off.
pub const DEFAULT_THRESHOLD: u64 = 10;
/// Distribution's default pause between retries once backing off.
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(1);

/// Tuning that is not part of Distribution's configuration.
#[derive(Clone, Debug)]
pub struct DeliveryOptions {
    /// The most events sent in one request.
    pub batch_size: u32,
    /// How long an idle task waits before looking at its topic again.
    pub poll_interval: Duration,
    /// Who takes each endpoint's delivery lease, and for how long it lasts unless renewed (the
    /// longest another instance waits to take over from one that died).
    pub holder: Holder,
}

/// The lease under which one instance delivers an endpoint's events.
pub fn lease_name(endpoint: &str) -> String {
    format!("notifications/{endpoint}")
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        DeliveryOptions {
            batch_size: 64,
            poll_interval: Duration::from_millis(100),
            holder: Holder::default(),
        }
    }
}

/// Counters of one endpoint's delivery, cheap to read at any time (e.g. for metrics).
#[derive(Debug, Default)]
pub struct DeliveryMetrics {
    /// Events accepted by the endpoint (re-sent events count again).
    pub events_sent: AtomicU64,
    /// Requests accepted by the endpoint.
    pub successes: AtomicU64,
    /// Requests that failed (error, timeout or unaccepted status).
    pub failures: AtomicU64,
    /// Events found waiting at the last look at the outbox (at most one batch).
    pub pending: AtomicU64,
    /// Failures since the last success.
    pub consecutive_failures: AtomicU64,
}

/// A running delivery task.
#[derive(Debug)]
pub struct Delivery {
    /// The endpoint's name.
    pub endpoint: String,
    pub metrics: Arc<DeliveryMetrics>,
    pub task: JoinHandle<()>,
}

/// Starts one delivery task per enabled endpoint (default [`DeliveryOptions`]). The tasks run
/// until `shutdown` is cancelled; await the handles to know they have stopped.
pub fn spawn_delivery(
    meta: Arc<dyn MetaStore>,
    endpoints: &[Endpoint],
    shutdown: CancellationToken,
) -> Vec<JoinHandle<()>> {
    spawn_delivery_with(meta, endpoints, &DeliveryOptions::default(), shutdown)
        .into_iter()
        .map(|d| d.task)
        .collect()
}

/// Like [`spawn_delivery`], with explicit options, returning each task's counters.
///
/// Disabled endpoints get no task (their queued events, if any, stay in the outbox). Of several
/// enabled endpoints with the same name only the first is served (they share one topic).
pub fn spawn_delivery_with(
    meta: Arc<dyn MetaStore>,
    endpoints: &[Endpoint],
    options: &DeliveryOptions,
    shutdown: CancellationToken,
) -> Vec<Delivery> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for endpoint in endpoints.iter().filter(|e| !e.disabled) {
        if !seen.insert(endpoint.name.clone()) {
            tracing::warn!(
                endpoint = %endpoint.name,
                "notification endpoint name used twice; serving the first only"
            );
            continue;
        }
        let worker = match Worker::new(meta.clone(), endpoint, options) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(
                    endpoint = %endpoint.name,
                    error = %e,
                    "cannot deliver notifications to this endpoint; its events stay queued"
                );
                continue;
            }
        };
        let metrics = worker.metrics.clone();
        let worker = Arc::new(worker);
        let task = tokio::spawn(run_leased(
            meta.clone(),
            lease_name(&endpoint.name),
            options.holder.clone(),
            shutdown.clone(),
            move |stop| {
                let worker = worker.clone();
                async move { worker.run(stop).await }
            },
        ));
        out.push(Delivery {
            endpoint: endpoint.name.clone(),
            metrics,
            task,
        });
    }
    out
}

/// One endpoint's delivery loop and its state.
struct Worker {
    meta: Arc<dyn MetaStore>,
    name: String,
    topic: String,
    url: String,
    client: reqwest::Client,
    headers: HeaderMap,
    timeout: Duration,
    threshold: u64,
    backoff: Duration,
    options: DeliveryOptions,
    metrics: Arc<DeliveryMetrics>,
}

/// The outcome of one attempt.
enum Attempt {
    Accepted,
    Failed(String),
}

impl Worker {
    fn new(
        meta: Arc<dyn MetaStore>,
        endpoint: &Endpoint,
        options: &DeliveryOptions,
    ) -> Result<Worker, String> {
        let client = reqwest::Client::builder()
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        let (timeout, threshold, backoff) = limits(endpoint);
        Ok(Worker {
            meta,
            name: endpoint.name.clone(),
            topic: topic(&endpoint.name),
            url: endpoint.url.clone(),
            client,
            headers: headers(endpoint)?,
            timeout,
            threshold,
            backoff,
            options: DeliveryOptions {
                batch_size: options.batch_size.max(1),
                poll_interval: options.poll_interval,
                holder: options.holder.clone(),
            },
            metrics: Arc::new(DeliveryMetrics::default()),
        })
    }

    /// Delivers until `shutdown` (or the loss of the endpoint's lease) cancels it.
    async fn run(&self, shutdown: CancellationToken) {
        tracing::debug!(endpoint = %self.name, "notification delivery started");
        let mut failures: u64 = 0;
        while !shutdown.is_cancelled() {
            let batch = match self
                .meta
                .outbox_peek(&self.topic, self.options.batch_size)
                .await
            {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(endpoint = %self.name, error = %e, "reading the notification outbox failed");
                    if !sleep(&shutdown, self.backoff).await {
                        break;
                    }
                    continue;
                }
            };
            self.metrics
                .pending
                .store(batch.len() as u64, Ordering::Relaxed);
            let Some(last) = batch.last().map(|e| e.seq) else {
                if !sleep(&shutdown, self.options.poll_interval).await {
                    break;
                }
                continue;
            };
            match self.post(&batch).await {
                Attempt::Accepted => {
                    failures = 0;
                    self.metrics
                        .consecutive_failures
                        .store(0, Ordering::Relaxed);
                    self.metrics.successes.fetch_add(1, Ordering::Relaxed);
                    self.metrics
                        .events_sent
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    if !self.ack(last, &shutdown).await {
                        break;
                    }
                }
                Attempt::Failed(reason) => {
                    failures += 1;
                    self.metrics.failures.fetch_add(1, Ordering::Relaxed);
                    self.metrics
                        .consecutive_failures
                        .store(failures, Ordering::Relaxed);
                    tracing::warn!(
                        endpoint = %self.name,
                        events = batch.len(),
                        consecutive_failures = failures,
                        error = %reason,
                        "notification delivery failed; will retry"
                    );
                    if failures >= self.threshold && !sleep(&shutdown, self.backoff).await {
                        break;
                    }
                }
            }
        }
        tracing::debug!(endpoint = %self.name, "notification delivery stopped");
    }

    /// Sends one envelope holding `batch`.
    async fn post(&self, batch: &[OutboxEvent]) -> Attempt {
        let payloads: Vec<&serde_json::Value> = batch.iter().map(|e| &e.payload).collect();
        let body = match serde_json::to_vec(&serde_json::json!({ "events": payloads })) {
            Ok(b) => b,
            Err(e) => return Attempt::Failed(format!("encoding the envelope: {e}")),
        };
        let sent = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .timeout(self.timeout)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(resp) => {
                let status = resp.status();
                // Read (and discard) the body so the connection can be reused.
                let _ = resp.bytes().await;
                if (200..400).contains(&status.as_u16()) {
                    Attempt::Accepted
                } else {
                    Attempt::Failed(format!("response status {status} unaccepted"))
                }
            }
            Err(e) => Attempt::Failed(describe(e)),
        }
    }

    /// Removes the delivered events up to `seq`, retrying until it works: re-sending what was
    /// already accepted is allowed, but avoidable. Returns `false` if shutdown came first.
    async fn ack(&self, seq: i64, shutdown: &CancellationToken) -> bool {
        loop {
            match self.meta.outbox_ack(&self.topic, seq).await {
                Ok(()) => return true,
                Err(e) => {
                    tracing::warn!(endpoint = %self.name, error = %e, "acknowledging delivered notifications failed");
                    if !sleep(shutdown, self.options.poll_interval).await {
                        return false;
                    }
                }
            }
        }
    }
}

/// The endpoint's `timeout`, `threshold` and `backoff`; unset or zero means Distribution's default.
fn limits(endpoint: &Endpoint) -> (Duration, u64, Duration) {
    let nonzero = |d: Option<GoDuration>, default| match d {
        Some(d) if !d.get().is_zero() => d.get(),
        _ => default,
    };
    (
        nonzero(endpoint.timeout, DEFAULT_TIMEOUT),
        endpoint
            .threshold
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_THRESHOLD),
        nonzero(endpoint.backoff, DEFAULT_BACKOFF),
    )
}

/// The request headers: the envelope's media type, then the configured headers (appended, as
/// Distribution merges them).
fn headers(endpoint: &Endpoint) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    map.insert(CONTENT_TYPE, HeaderValue::from_static(EVENTS_MEDIA_TYPE));
    for (name, values) in &endpoint.headers {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid header name {name:?}"))?;
        for value in values {
            let value = HeaderValue::from_str(value)
                .map_err(|_| format!("invalid value for header {name:?}"))?;
            map.append(header.clone(), value);
        }
    }
    Ok(map)
}

/// A request error with its causes, without the URL (it may hold credentials).
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = if e.is_timeout() {
        "timed out".to_string()
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// Waits `d`, or until shutdown. Returns `false` on shutdown.
async fn sleep(shutdown: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_distributions() {
        let mut e = Endpoint::default();
        assert_eq!(limits(&e), (DEFAULT_TIMEOUT, 10, DEFAULT_BACKOFF));
        e.timeout = Some(GoDuration::from_secs(0));
        e.threshold = Some(0);
        assert_eq!(limits(&e), (DEFAULT_TIMEOUT, 10, DEFAULT_BACKOFF));
        e.timeout = Some(GoDuration(Duration::from_millis(250)));
        e.threshold = Some(3);
        e.backoff = Some(GoDuration::from_secs(5));
        assert_eq!(
            limits(&e),
            (Duration::from_millis(250), 3, Duration::from_secs(5))
        );
    }

    #[test]
    fn configured_headers_follow_the_media_type() {
        let mut e = Endpoint::default();
        e.headers
            .insert("Authorization".into(), vec!["Bearer x".into()]);
        e.headers
            .insert("X-Multi".into(), vec!["1".into(), "2".into()]);
        let h = headers(&e).unwrap();
        assert_eq!(h[CONTENT_TYPE], EVENTS_MEDIA_TYPE);
        assert_eq!(h["authorization"], "Bearer x");
        assert_eq!(h.get_all("x-multi").iter().count(), 2);
        e.headers.insert("Bad Name".into(), vec![]);
        assert!(headers(&e).is_err());
    }

    #[tokio::test]
    async fn failures_are_described_without_the_url() {
        let e = reqwest::Client::new()
            .post("http://user:pw-secret@127.0.0.1:1/hook?token=tok-secret")
            .send()
            .await
            .unwrap_err();
        let text = describe(e);
        assert!(!text.is_empty());
        assert!(!text.contains("secret"), "{text}");
    }
}
