//! Registry notifications end to end, without the server: the core (`Registry`) with the
//! `Notifier` as its event sink over a real SQLite metadata file, the delivery tasks, and real
//! HTTP receivers in this process that record what they get and can be told to fail.
//!
//! No assertion depends on timing: arrival is awaited with a generous deadline, and "nothing
//! else was sent" is checked after a later wanted event arrived (delivery is in order).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use berth::config::{Endpoint, GoDuration, Notifications};
use berth::events::{
    spawn_delivery, spawn_delivery_with, DeliveryOptions, Notifier, EVENTS_MEDIA_TYPE,
};
use berth::meta::sqlite::SqliteMetaStore;
use berth::meta::MetaStore;
use berth::oci::digest::{Algorithm, Digest};
use berth::oci::name::{Reference, RepoName};
use berth::registry::events::{with_request, RequestContext};
use berth::registry::Registry;
use berth::storage::BlobStore;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DEADLINE: Duration = Duration::from_secs(60);

// ---- the receiver --------------------------------------------------------------------------

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Received {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

#[derive(Default)]
struct ReceiverState {
    requests: Mutex<Vec<Received>>,
    /// Answer 503 to every request while set.
    down: AtomicBool,
    /// Answer 500 to this many requests before accepting again.
    fail_next: AtomicU64,
    /// Hold each request until `release` is notified (after notifying `arrived`).
    hold: AtomicBool,
    arrived: Notify,
    release: Notify,
}

/// An HTTP server on 127.0.0.1 that records every notification POSTed to `/hook`.
struct Receiver {
    url: String,
    state: Arc<ReceiverState>,
}

async fn hook(State(st): State<Arc<ReceiverState>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if st.hold.load(Ordering::SeqCst) {
        st.arrived.notify_one();
        st.release.notified().await;
    }
    let failing = st.down.load(Ordering::SeqCst)
        || st
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
    let status = if st.down.load(Ordering::SeqCst) {
        StatusCode::SERVICE_UNAVAILABLE
    } else if failing {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    st.requests.lock().unwrap().push(Received {
        status: status.as_u16(),
        headers,
        body,
    });
    status
}

impl Receiver {
    async fn start() -> Receiver {
        let state = Arc::new(ReceiverState::default());
        let app = axum::Router::new()
            .route("/hook", post(hook))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver {
            url: format!("http://{addr}/hook"),
            state,
        }
    }

    fn requests(&self) -> Vec<Received> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The events of the accepted requests, in the order received.
    fn accepted(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r.status == 200)
            .flat_map(|r| r.body["events"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Accepted events with re-sent duplicates (same `id`) removed, first occurrence kept.
    fn accepted_once(&self) -> Vec<Value> {
        let mut seen = std::collections::HashSet::new();
        self.accepted()
            .into_iter()
            .filter(|e| seen.insert(e["id"].as_str().unwrap().to_string()))
            .collect()
    }

    fn failed_requests(&self) -> usize {
        self.requests().iter().filter(|r| r.status != 200).count()
    }

    fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// Waits until at least `n` distinct events were accepted, and returns them.
    async fn wait_events(&self, n: usize) -> Vec<Value> {
        let what = format!("{n} events at {}", self.url);
        wait_until(&what, || self.accepted_once().len() >= n).await;
        self.accepted_once()
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- the registry ----------------------------------------------------------------------------

fn endpoint(name: &str, url: &str) -> Endpoint {
    Endpoint {
        name: name.into(),
        url: url.into(),
        timeout: Some(GoDuration::from_secs(10)),
        threshold: Some(2),
        backoff: Some(GoDuration(Duration::from_millis(50))),
        ..Endpoint::default()
    }
}

fn notifications(endpoints: Vec<Endpoint>) -> Notifications {
    Notifications {
        endpoints,
        ..Notifications::default()
    }
}

async fn open_meta(path: &Path) -> Arc<dyn MetaStore> {
    Arc::new(SqliteMetaStore::open(path).await.unwrap())
}

fn registry(meta: &Arc<dyn MetaStore>, config: &Notifications) -> Registry {
    let notifier = Notifier::new(config, "berth-test:5000").unwrap();
    Registry::new(meta.clone(), BlobStore::memory().unwrap()).with_events(Arc::new(notifier))
}

fn ctx(method: &str) -> RequestContext {
    RequestContext {
        id: uuid::Uuid::new_v4().to_string(),
        addr: "192.0.2.7:41000".into(),
        host: "reg.test:5000".into(),
        method: method.into(),
        user_agent: "notifications-test/1".into(),
        actor: Some("alice".into()),
        base_url: "https://reg.test:5000".into(),
        origin: None,
    }
}

fn repo(name: &str) -> RepoName {
    name.parse().unwrap()
}

fn sha256(data: &[u8]) -> Digest {
    Digest::of(Algorithm::Sha256, data)
}

async fn push_blob(reg: &Registry, repo_name: &str, data: &[u8]) -> Digest {
    let digest = sha256(data);
    let body = futures::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::copy_from_slice(data))]);
    with_request(ctx("PUT"), reg.push_blob(&repo(repo_name), &digest, body))
        .await
        .unwrap();
    digest
}

/// An OCI image manifest over a config and one layer already in the repository.
fn image_manifest(config: &Digest, config_len: usize, layer: &Digest, layer_len: usize) -> Bytes {
    Bytes::from(
        json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config.to_string(),
                "size": config_len
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": layer.to_string(),
                "size": layer_len
            }]
        })
        .to_string(),
    )
}

/// Pushes a config and a layer to `repo_name`, then a manifest over them by `reference`.
/// Returns the manifest's digest and bytes.
async fn push_image(
    reg: &Registry,
    repo_name: &str,
    seed: &str,
    reference: &str,
) -> (Digest, Bytes) {
    let config = format!("{{\"seed\":\"{seed}\"}}");
    let layer = format!("layer of {seed}");
    let c = push_blob(reg, repo_name, config.as_bytes()).await;
    let l = push_blob(reg, repo_name, layer.as_bytes()).await;
    let body = image_manifest(&c, config.len(), &l, layer.len());
    let digest = sha256(&body);
    let reference: Reference = reference.parse().unwrap();
    let target = repo(repo_name);
    let put = reg.put_manifest(&target, &reference, &[], Some(OCI_MANIFEST), body.clone());
    with_request(ctx("PUT"), put).await.unwrap();
    (digest, body)
}

/// Pulls a manifest by `reference` as a GET request would, returning its bytes.
async fn pull(reg: &Registry, repo_name: &str, reference: &str) -> Bytes {
    let reference: Reference = reference.parse().unwrap();
    let repo = repo(repo_name);
    let found = reg.manifest(&repo, &reference).await.unwrap();
    with_request(ctx("GET"), reg.pull_manifest(&repo, &reference, &found))
        .await
        .unwrap()
}

/// (action, repository, digest or tag) of an event, for comparing sequences.
fn summary(e: &Value) -> (String, String, String) {
    let t = &e["target"];
    let what = t["digest"].as_str().or(t["tag"].as_str()).unwrap_or("");
    (
        e["action"].as_str().unwrap().to_string(),
        t["repository"].as_str().unwrap().to_string(),
        what.to_string(),
    )
}

fn s(action: &str, repo: &str, what: impl ToString) -> (String, String, String) {
    (action.to_string(), repo.to_string(), what.to_string())
}

// ---- tests -----------------------------------------------------------------------------------

#[tokio::test]
async fn every_kind_of_event_arrives_with_distributions_fields() {
    let dir = tempfile::tempdir().unwrap();
    let meta = open_meta(&dir.path().join("meta.db")).await;
    let rx = Receiver::start().await;
    let mut ep = endpoint("hook", &rx.url);
    ep.headers
        .insert("Authorization".into(), vec!["Bearer s3cret".into()]);
    let config = notifications(vec![ep]);
    let reg = registry(&meta, &config);
    let shutdown = CancellationToken::new();
    let tasks = spawn_delivery(meta.clone(), &config.endpoints, shutdown.clone());

    let blob = push_blob(&reg, "lib/app", b"a layer").await;
    let (manifest, body) = push_image(&reg, "lib/app", "one", "latest").await;
    assert_eq!(pull(&reg, "lib/app", "latest").await, body);
    let (other, app) = (repo("other"), repo("lib/app"));
    let mount = reg.mount_blob(&other, &blob, Some(&app), &|_| true);
    assert!(with_request(ctx("POST"), mount).await.unwrap());
    let latest = "latest".parse().unwrap();
    with_request(
        ctx("DELETE"),
        reg.delete_manifest(&repo("lib/app"), &latest),
    )
    .await
    .unwrap();
    let by_digest = Reference::Digest(manifest.clone());
    with_request(
        ctx("DELETE"),
        reg.delete_manifest(&repo("lib/app"), &by_digest),
    )
    .await
    .unwrap();
    with_request(ctx("DELETE"), reg.delete_blob(&repo("other"), &blob))
        .await
        .unwrap();

    let events = rx.wait_events(9).await;
    let config_digest = sha256(b"{\"seed\":\"one\"}");
    let layer_digest = sha256(b"layer of one");
    assert_eq!(
        events.iter().map(summary).collect::<Vec<_>>(),
        vec![
            s("push", "lib/app", &blob),
            s("push", "lib/app", &config_digest),
            s("push", "lib/app", &layer_digest),
            s("push", "lib/app", &manifest),
            s("pull", "lib/app", &manifest),
            s("mount", "other", &blob),
            s("delete", "lib/app", "latest"),
            s("delete", "lib/app", &manifest),
            s("delete", "other", &blob),
        ]
    );

    // Every request: the envelope's media type and the configured headers.
    for r in rx.requests() {
        assert_eq!(r.headers["content-type"], EVENTS_MEDIA_TYPE);
        assert_eq!(r.headers["authorization"], "Bearer s3cret");
        assert!(r.body["events"].as_array().is_some_and(|e| !e.is_empty()));
    }

    // Fields every event has.
    for e in &events {
        assert!(
            uuid::Uuid::parse_str(e["id"].as_str().unwrap()).is_ok(),
            "{e}"
        );
        let ts = e["timestamp"].as_str().unwrap();
        assert!(
            ts.len() >= 20 && ts.ends_with('Z') && &ts[10..11] == "T",
            "{ts}"
        );
        assert_eq!(e["actor"], json!({"name": "alice"}));
        assert_eq!(e["source"]["addr"], "berth-test:5000");
        assert_eq!(e["source"]["instanceID"], berth::events::instance_id());
        let r = &e["request"];
        assert_eq!(r["addr"], "192.0.2.7:41000");
        assert_eq!(r["host"], "reg.test:5000");
        assert_eq!(r["useragent"], "notifications-test/1");
        assert!(r["id"].as_str().is_some_and(|id| !id.is_empty()));
    }
    let ids: std::collections::HashSet<_> = events.iter().map(|e| e["id"].clone()).collect();
    assert_eq!(ids.len(), events.len(), "event ids are unique");

    // Blob push.
    assert_eq!(
        events[0]["target"],
        json!({
            "mediaType": "application/octet-stream",
            "size": 7,
            "length": 7,
            "digest": blob.to_string(),
            "repository": "lib/app",
            "url": format!("https://reg.test:5000/v2/lib/app/blobs/{blob}")
        })
    );
    assert_eq!(events[0]["request"]["method"], "PUT");
    // Manifest push by tag.
    assert_eq!(
        events[3]["target"],
        json!({
            "mediaType": OCI_MANIFEST,
            "size": body.len(),
            "length": body.len(),
            "digest": manifest.to_string(),
            "repository": "lib/app",
            "url": format!("https://reg.test:5000/v2/lib/app/manifests/{manifest}"),
            "tag": "latest"
        })
    );
    // Manifest pull (by tag).
    assert_eq!(events[4]["action"], "pull");
    assert_eq!(events[4]["request"]["method"], "GET");
    assert_eq!(events[4]["target"]["tag"], "latest");
    assert_eq!(events[4]["target"]["mediaType"], OCI_MANIFEST);
    assert_eq!(
        events[4]["target"]["url"],
        format!("https://reg.test:5000/v2/lib/app/manifests/{manifest}")
    );
    // Mount.
    assert_eq!(
        events[5]["target"],
        json!({
            "mediaType": "application/octet-stream",
            "size": 7,
            "length": 7,
            "digest": blob.to_string(),
            "repository": "other",
            "fromRepository": "lib/app",
            "url": format!("https://reg.test:5000/v2/other/blobs/{blob}")
        })
    );
    // Deletes: by tag (no digest), by digest, a blob.
    assert_eq!(
        events[6]["target"],
        json!({"repository": "lib/app", "tag": "latest"})
    );
    assert_eq!(
        events[7]["target"],
        json!({"repository": "lib/app", "digest": manifest.to_string()})
    );
    assert_eq!(
        events[8]["target"],
        json!({"repository": "other", "digest": blob.to_string()})
    );
    assert_eq!(events[8]["request"]["method"], "DELETE");

    // Everything delivered is acknowledged (at the latest before the task stops).
    shutdown.cancel();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(meta
        .outbox_peek("notify:hook", 10)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn ignored_actions_and_media_types_are_not_sent() {
    let dir = tempfile::tempdir().unwrap();
    let meta = open_meta(&dir.path().join("meta.db")).await;
    let rx = Receiver::start().await;
    let mut no_blobs_no_pulls = endpoint("filtered", &rx.url);
    no_blobs_no_pulls.ignoredmediatypes = vec!["application/octet-stream".into()];
    no_blobs_no_pulls.ignore.actions = vec!["pull".into(), "delete".into()];
    let rx2 = Receiver::start().await;
    let mut no_manifests = endpoint("no-manifests", &rx2.url);
    no_manifests.ignore.mediatypes = vec![OCI_MANIFEST.into()];
    let config = notifications(vec![no_blobs_no_pulls, no_manifests]);
    let reg = registry(&meta, &config);
    let shutdown = CancellationToken::new();
    let tasks = spawn_delivery(meta.clone(), &config.endpoints, shutdown.clone());

    let (first, body) = push_image(&reg, "r", "one", "v1").await;
    assert_eq!(pull(&reg, "r", &first.to_string()).await, body);
    let v1 = "v1".parse().unwrap();
    with_request(ctx("DELETE"), reg.delete_manifest(&repo("r"), &v1))
        .await
        .unwrap();
    // A wanted event after the ignored ones: once it is in, nothing else will come.
    let (second, _) = push_image(&reg, "r", "two", "v2").await;

    // Delivery is in order, so once the last wanted event is in, anything wrongly sent would
    // have arrived before it.
    wait_until("the last manifest push", || {
        rx.accepted_once()
            .iter()
            .any(|e| e["target"]["tag"] == "v2")
    })
    .await;
    let events = rx.accepted_once();
    assert_eq!(
        events.iter().map(summary).collect::<Vec<_>>(),
        vec![s("push", "r", &first), s("push", "r", &second)]
    );
    assert_eq!(events[0]["target"]["mediaType"], OCI_MANIFEST);

    // The other endpoint gets the blobs and the tag delete (which has no media type), not the
    // manifest push or pull.
    let last_layer = sha256(b"layer of two").to_string();
    wait_until("the last layer push", || {
        rx2.accepted_once()
            .iter()
            .any(|e| e["target"]["digest"] == last_layer.as_str())
    })
    .await;
    assert_eq!(
        rx2.accepted_once().iter().map(summary).collect::<Vec<_>>(),
        vec![
            s("push", "r", sha256(b"{\"seed\":\"one\"}")),
            s("push", "r", sha256(b"layer of one")),
            s("delete", "r", "v1"),
            s("push", "r", sha256(b"{\"seed\":\"two\"}")),
            s("push", "r", &last_layer),
        ]
    );

    shutdown.cancel();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn a_failing_endpoint_gets_everything_in_order_once_it_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let meta = open_meta(&dir.path().join("meta.db")).await;
    let rx = Receiver::start().await;
    rx.state.fail_next.store(5, Ordering::SeqCst);
    let config = notifications(vec![endpoint("flaky", &rx.url)]);
    let reg = registry(&meta, &config);
    let shutdown = CancellationToken::new();
    let options = DeliveryOptions {
        batch_size: 3,
        ..DeliveryOptions::default()
    };
    let deliveries =
        spawn_delivery_with(meta.clone(), &config.endpoints, &options, shutdown.clone());

    let mut expected = Vec::new();
    for i in 0..20 {
        let d = push_blob(&reg, "seq", format!("blob {i}").as_bytes()).await;
        expected.push(s("push", "seq", d));
    }

    let events = rx.wait_events(20).await;
    assert_eq!(events.iter().map(summary).collect::<Vec<_>>(), expected);
    assert!(rx.failed_requests() >= 5);
    // Batches never exceed the configured size.
    for r in rx.requests() {
        assert!(r.body["events"].as_array().unwrap().len() <= 3);
    }
    let m = &deliveries[0].metrics;
    wait_until("the counters", || {
        m.events_sent.load(Ordering::SeqCst) >= 20
    })
    .await;
    assert!(m.failures.load(Ordering::SeqCst) >= 5);

    shutdown.cancel();
    for d in deliveries {
        d.task.await.unwrap();
    }
    assert!(meta
        .outbox_peek("notify:flaky", 10)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn queued_events_survive_a_restart_of_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("meta.db");
    let rx = Receiver::start().await;
    rx.set_down(true);
    let config = notifications(vec![endpoint("later", &rx.url)]);

    let mut expected = Vec::new();
    {
        let meta = open_meta(&db).await;
        let reg = registry(&meta, &config);
        let shutdown = CancellationToken::new();
        let tasks = spawn_delivery(meta.clone(), &config.endpoints, shutdown.clone());
        for i in 0..5 {
            let d = push_blob(&reg, "r", format!("before restart {i}").as_bytes()).await;
            expected.push(s("push", "r", d));
        }
        wait_until("a failed attempt", || rx.failed_requests() >= 3).await;
        shutdown.cancel();
        for t in tasks {
            t.await.unwrap();
        }
        // Written while no delivery task runs at all.
        let d = push_blob(&reg, "r", b"while stopped").await;
        expected.push(s("push", "r", d));
    }
    assert!(rx.accepted().is_empty());

    // A new process: new store handle and tasks on the same database file.
    rx.set_down(false);
    let meta = open_meta(&db).await;
    let shutdown = CancellationToken::new();
    let tasks = spawn_delivery(meta.clone(), &config.endpoints, shutdown.clone());
    let reg = registry(&meta, &config);
    let d = push_blob(&reg, "r", b"after restart").await;
    expected.push(s("push", "r", d));

    let events = rx.wait_events(7).await;
    assert_eq!(events.iter().map(summary).collect::<Vec<_>>(), expected);

    shutdown.cancel();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn endpoints_are_independent_and_disabled_ones_get_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let meta = open_meta(&dir.path().join("meta.db")).await;
    let (good, bad, off) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    bad.set_down(true);
    let mut disabled = endpoint("off", &off.url);
    disabled.disabled = true;
    let mut bad_ep = endpoint("bad", &bad.url);
    bad_ep.threshold = Some(1);
    let config = notifications(vec![bad_ep, endpoint("good", &good.url), disabled]);
    let reg = registry(&meta, &config);
    let shutdown = CancellationToken::new();
    let tasks = spawn_delivery(meta.clone(), &config.endpoints, shutdown.clone());
    assert_eq!(tasks.len(), 2, "no task for a disabled endpoint");

    let mut expected = Vec::new();
    for i in 0..10 {
        let d = push_blob(&reg, "r", format!("blob {i}").as_bytes()).await;
        expected.push(s("push", "r", d));
    }
    // The healthy endpoint gets everything while the other one keeps failing.
    let events = good.wait_events(10).await;
    assert_eq!(events.iter().map(summary).collect::<Vec<_>>(), expected);
    wait_until("a failed attempt at the failing endpoint", || {
        bad.failed_requests() >= 1
    })
    .await;
    assert!(bad.accepted().is_empty());

    // The failing one catches up once it recovers.
    bad.set_down(false);
    let events = bad.wait_events(10).await;
    assert_eq!(events.iter().map(summary).collect::<Vec<_>>(), expected);
    // Both received the same events (same ids).
    assert_eq!(
        good.accepted_once()
            .iter()
            .map(|e| e["id"].clone())
            .collect::<Vec<_>>(),
        events.iter().map(|e| e["id"].clone()).collect::<Vec<_>>()
    );

    assert!(off.requests().is_empty());
    assert!(meta.outbox_peek("notify:off", 10).await.unwrap().is_empty());

    shutdown.cancel();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn shutdown_waits_for_the_request_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let meta = open_meta(&dir.path().join("meta.db")).await;
    let rx = Receiver::start().await;
    rx.state.hold.store(true, Ordering::SeqCst);
    let config = notifications(vec![endpoint("slow", &rx.url)]);
    let reg = registry(&meta, &config);
    let shutdown = CancellationToken::new();
    let tasks = spawn_delivery(meta.clone(), &config.endpoints, shutdown.clone());

    push_blob(&reg, "r", b"in flight").await;
    tokio::time::timeout(DEADLINE, rx.state.arrived.notified())
        .await
        .expect("the request reaches the receiver");
    shutdown.cancel();
    rx.state.release.notify_one();
    for t in tasks {
        t.await.unwrap();
    }
    // The request completed and was acknowledged before the task stopped.
    assert_eq!(rx.accepted().len(), 1);
    assert!(meta
        .outbox_peek("notify:slow", 10)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_sharing_a_database_deliver_each_event_once_and_take_over_from_a_dead_one() {
    use berth::meta::lease::Holder;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("meta.db");
    let rx = Receiver::start().await;
    let config = notifications(vec![endpoint("hook", &rx.url)]);
    let shutdown = CancellationToken::new();
    // Three instances: each its own store handle, registry, delivery task and lease holder name.
    let mut instances = Vec::new();
    for i in 0..3 {
        let meta = open_meta(&db).await;
        let options = DeliveryOptions {
            holder: Holder {
                id: format!("instance-{i}"),
                ttl: Duration::from_secs(1),
            },
            ..DeliveryOptions::default()
        };
        let mut deliveries =
            spawn_delivery_with(meta.clone(), &config.endpoints, &options, shutdown.clone());
        let reg = registry(&meta, &config);
        instances.push((meta, reg, Some(deliveries.remove(0))));
    }

    let mut expected = Vec::new();
    for i in 0..30 {
        let (_, reg, _) = &instances[i % 3];
        let d = push_blob(reg, "shared", format!("blob {i}").as_bytes()).await;
        expected.push(s("push", "shared", d));
    }
    let events = rx.wait_events(30).await;
    assert_eq!(events.iter().map(summary).collect::<Vec<_>>(), expected);
    // While every instance runs, nothing was sent twice.
    assert_eq!(
        rx.accepted().len(),
        30,
        "an event was delivered more than once"
    );

    // The instance holding the delivery lease dies (its task is gone; the lease is not given up).
    let holder = instances[0]
        .0
        .lease_holder("notifications/hook")
        .await
        .unwrap()
        .expect("some instance holds the delivery lease");
    let dead: usize = holder.holder["instance-".len()..].parse().unwrap();
    let delivery = instances[dead].2.take().unwrap();
    delivery.task.abort();
    let _ = delivery.task.await;

    for i in 30..40 {
        let alive = (dead + 1 + i % 2) % 3;
        let (_, reg, _) = &instances[alive];
        let d = push_blob(reg, "shared", format!("blob {i}").as_bytes()).await;
        expected.push(s("push", "shared", d));
    }
    // Another instance takes the lease once it expires and delivers everything, in order. (An
    // event the dead holder sent but had not acknowledged may arrive twice: at least once.)
    let events = rx.wait_events(40).await;
    assert_eq!(events.iter().map(summary).collect::<Vec<_>>(), expected);
    let now = instances[(dead + 1) % 3]
        .0
        .lease_holder("notifications/hook")
        .await
        .unwrap()
        .expect("the lease is held again");
    assert_ne!(now.holder, holder.holder);
    assert!(now.token > holder.token);

    shutdown.cancel();
    for (_, _, d) in instances {
        if let Some(d) = d {
            d.task.await.unwrap();
        }
    }
}
