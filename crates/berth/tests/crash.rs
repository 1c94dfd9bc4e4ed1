//! Crash safety: the server is killed with SIGKILL at awkward moments (mid-upload, mid-manifest
//! PUT, at random points of a push loop) and restarted on the same data directory. Whatever was
//! acknowledged before the crash must be intact; nothing partial may become visible.
//!
//! All digests are computed by the test (sha2) over the bytes it sent or read back.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::image::{self, Rng};
use common::{sha256, Registry};
use reqwest::{Client, StatusCode, Url};
use serde_json::{json, Value};

const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// HTTP helpers (local to this file)
// ---------------------------------------------------------------------------------------------

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .expect("reqwest client")
}

/// Resolve a Location header against the registry's base URL.
fn resolve(reg: &Registry, location: &str) -> String {
    Url::parse(&reg.url("/"))
        .unwrap()
        .join(location)
        .unwrap_or_else(|e| panic!("bad Location {location:?}: {e}"))
        .to_string()
}

/// The same path and query on the (restarted, new port) registry.
fn relocate(reg: &Registry, url: &str) -> String {
    let u = Url::parse(url).unwrap();
    let mut s = u.path().to_string();
    if let Some(q) = u.query() {
        s.push('?');
        s.push_str(q);
    }
    reg.url(&s)
}

fn with_digest(url: &str, digest: &str) -> String {
    let mut u = Url::parse(url).unwrap();
    u.query_pairs_mut().append_pair("digest", digest);
    u.to_string()
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().expect("header value").to_string())
}

async fn describe(resp: reqwest::Response) -> String {
    let status = resp.status();
    let headers = format!("{:?}", resp.headers());
    let body = resp.text().await.unwrap_or_default();
    format!("{status} {headers} {body}")
}

/// POST /v2/<repo>/blobs/uploads/ → the session URL.
async fn start_upload(c: &Client, reg: &Registry, repo: &str) -> String {
    let resp = c
        .post(reg.url(&format!("/v2/{repo}/blobs/uploads/")))
        .send()
        .await
        .expect("POST upload");
    assert_eq!(
        resp.status(),
        StatusCode::ACCEPTED,
        "start upload: {}",
        describe_ref(&resp)
    );
    let loc = header(&resp, "location").expect("Location on 202");
    resolve(reg, &loc)
}

fn describe_ref(resp: &reqwest::Response) -> String {
    format!("{} {:?}", resp.status(), resp.headers())
}

/// PATCH a chunk at `offset`; returns (next session URL, Range header).
async fn patch_chunk(
    c: &Client,
    reg: &Registry,
    url: &str,
    offset: usize,
    data: Bytes,
) -> (String, String) {
    let len = data.len();
    let resp = c
        .patch(url)
        .header("Content-Type", "application/octet-stream")
        .header("Content-Range", format!("{}-{}", offset, offset + len - 1))
        .header("Content-Length", len.to_string())
        .body(data)
        .send()
        .await
        .expect("PATCH chunk");
    if resp.status() != StatusCode::ACCEPTED {
        panic!("PATCH at {offset}: {}", describe(resp).await);
    }
    let loc = header(&resp, "location").expect("Location on PATCH 202");
    let range = header(&resp, "range").expect("Range on PATCH 202");
    (resolve(reg, &loc), range)
}

/// PUT <session>?digest=D with an optional final chunk → 201.
async fn finish_upload(c: &Client, url: &str, digest: &str, last: Option<Bytes>) {
    let mut req = c.put(with_digest(url, digest));
    if let Some(b) = last {
        req = req
            .header("Content-Type", "application/octet-stream")
            .header("Content-Length", b.len().to_string())
            .body(b);
    } else {
        req = req.header("Content-Length", "0");
    }
    let resp = req.send().await.expect("PUT upload");
    if resp.status() != StatusCode::CREATED {
        panic!("PUT {digest}: {}", describe(resp).await);
    }
    assert_eq!(
        header(&resp, "docker-content-digest").as_deref(),
        Some(digest)
    );
}

/// Monolithic upload: POST ?digest= with the body → 201.
async fn push_blob(c: &Client, reg: &Registry, repo: &str, data: &[u8]) -> String {
    let d = sha256(data);
    let resp = c
        .post(with_digest(
            &reg.url(&format!("/v2/{repo}/blobs/uploads/")),
            &d,
        ))
        .header("Content-Type", "application/octet-stream")
        .body(data.to_vec())
        .send()
        .await
        .expect("POST blob");
    match resp.status() {
        StatusCode::CREATED => {}
        // A registry may answer a monolithic POST with an upload session (spec-compliant).
        StatusCode::ACCEPTED => {
            let url = resolve(reg, &header(&resp, "location").expect("Location"));
            finish_upload(c, &url, &d, Some(Bytes::from(data.to_vec()))).await;
        }
        _ => panic!("monolithic upload of {d}: {}", describe(resp).await),
    }
    d
}

async fn put_manifest(
    c: &Client,
    reg: &Registry,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) {
    let resp = c
        .put(reg.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("Content-Type", media_type)
        .body(body.to_vec())
        .send()
        .await
        .expect("PUT manifest");
    if resp.status() != StatusCode::CREATED {
        panic!("PUT manifest {repo}:{reference}: {}", describe(resp).await);
    }
    assert_eq!(
        header(&resp, "docker-content-digest"),
        Some(sha256(body)),
        "Docker-Content-Digest of PUT manifest"
    );
}

/// GET → (status, body).
async fn get(c: &Client, url: &str) -> (StatusCode, Vec<u8>) {
    let resp = c
        .get(url)
        .header(
            "Accept",
            format!("{}, {}", image::OCI_MANIFEST, image::OCI_INDEX),
        )
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status();
    (status, resp.bytes().await.expect("body").to_vec())
}

async fn head_status(c: &Client, url: &str) -> StatusCode {
    c.head(url)
        .header(
            "Accept",
            format!("{}, {}", image::OCI_MANIFEST, image::OCI_INDEX),
        )
        .send()
        .await
        .unwrap_or_else(|e| panic!("HEAD {url}: {e}"))
        .status()
}

async fn assert_blob(c: &Client, reg: &Registry, repo: &str, digest: &str, expected: &[u8]) {
    let (status, body) = get(c, &reg.url(&format!("/v2/{repo}/blobs/{digest}"))).await;
    assert_eq!(status, StatusCode::OK, "GET blob {repo}@{digest}");
    assert_eq!(sha256(&body), digest, "blob {digest} is corrupt");
    assert!(body == expected, "blob {digest} content differs");
}

async fn assert_manifest(c: &Client, reg: &Registry, repo: &str, reference: &str, expected: &[u8]) {
    let (status, body) = get(c, &reg.url(&format!("/v2/{repo}/manifests/{reference}"))).await;
    assert_eq!(status, StatusCode::OK, "GET manifest {repo}:{reference}");
    assert_eq!(
        sha256(&body),
        sha256(expected),
        "manifest {repo}:{reference} content"
    );
}

async fn tags(c: &Client, reg: &Registry, repo: &str) -> BTreeSet<String> {
    let (status, body) = get(c, &reg.url(&format!("/v2/{repo}/tags/list"))).await;
    if status == StatusCode::NOT_FOUND {
        // A repository with no tags (or not known yet) may be reported as unknown.
        return BTreeSet::new();
    }
    assert_eq!(
        status,
        StatusCode::OK,
        "tags/list: {}",
        String::from_utf8_lossy(&body)
    );
    let v: Value = serde_json::from_slice(&body).expect("tags json");
    v["tags"]
        .as_array()
        .map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// A request body that sends `data[..stall_at]` quickly, then tells the test (`reached`) and
/// trickles the rest very slowly, so the server is mid-request when the test kills it.
fn stalling_body(
    data: Bytes,
    stall_at: usize,
    reached: tokio::sync::oneshot::Sender<()>,
) -> reqwest::Body {
    const CHUNK: usize = 64 * 1024;
    let stream = futures::stream::unfold((0usize, Some(reached)), move |(pos, mut reached)| {
        let data = data.clone();
        async move {
            if pos >= data.len() {
                return None;
            }
            let end = if pos < stall_at {
                (pos + CHUNK).min(stall_at)
            } else {
                if let Some(tx) = reached.take() {
                    let _ = tx.send(());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                (pos + 16).min(data.len())
            };
            let chunk = data.slice(pos..end);
            Some((Ok::<Bytes, std::io::Error>(chunk), (end, reached)))
        }
    });
    reqwest::Body::wrap_stream(stream)
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// A seed for the randomised tests: BERTH_CRASH_SEED or a fresh one (printed, to reproduce).
fn test_seed(name: &str) -> u64 {
    let seed = std::env::var("BERTH_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| uuid::Uuid::new_v4().as_u64_pair().0);
    eprintln!("{name}: BERTH_CRASH_SEED={seed}");
    seed
}

// ---------------------------------------------------------------------------------------------
// kill -9 during a blob upload
// ---------------------------------------------------------------------------------------------

/// Send `req` (whose body is a `stalling_body` that signals `reached`), SIGKILL the server while
/// the body is still being sent, check the request was never acknowledged, and restart.
async fn kill_during(
    reg: &mut Registry,
    req: reqwest::RequestBuilder,
    reached: tokio::sync::oneshot::Receiver<()>,
    what: &str,
) {
    let mut inflight = tokio::spawn(req.send());
    tokio::select! {
        _ = reached => {}
        r = &mut inflight => panic!("{what} ended before the kill: {r:?}"),
    }
    // Let the server receive and process what was sent so far (not a correctness condition).
    tokio::time::sleep(Duration::from_millis(300)).await;
    if inflight.is_finished() {
        panic!(
            "the server answered {what} before its body was complete: {:?}",
            inflight.await
        );
    }
    blocking(|| reg.kill());
    if let Ok(resp) = inflight.await.expect("task") {
        // (Only a connection error is really expected here.)
        assert!(
            !resp.status().is_success(),
            "the interrupted {what} was acknowledged: {}",
            describe_ref(&resp)
        );
    }
    blocking(|| reg.restart());
}

/// GET the upload session: 204 with `Range: 0-<acked-1>`; returns the URL to continue with.
async fn assert_session(c: &Client, reg: &Registry, url: &str, acked: usize) -> String {
    let resp = c.get(url).send().await.expect("GET upload session");
    assert_eq!(
        resp.status(),
        StatusCode::NO_CONTENT,
        "upload session status: {}",
        describe_ref(&resp)
    );
    assert_eq!(
        header(&resp, "range").as_deref(),
        Some(format!("0-{}", acked - 1).as_str()),
        "the upload session must hold exactly the acknowledged bytes"
    );
    header(&resp, "location")
        .map(|l| resolve(reg, &l))
        .unwrap_or_else(|| url.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_during_blob_upload_keeps_only_acknowledged_bytes() {
    let mut reg = Registry::start();
    let c = client();
    let repo = "crash/upload";
    let seed = test_seed("upload");

    let chunk1 = MIB;
    let chunk2 = 777_777;
    let acked = chunk1 + chunk2;
    let big = 64 * MIB;
    let data = Bytes::from(image::random_bytes(seed, acked + big));
    let digest = sha256(&data);

    let url = start_upload(&c, &reg, repo).await;
    let (url, range) = patch_chunk(&c, &reg, &url, 0, data.slice(0..chunk1)).await;
    assert_eq!(range, format!("0-{}", chunk1 - 1));
    let (url, range) = patch_chunk(&c, &reg, &url, chunk1, data.slice(chunk1..acked)).await;
    assert_eq!(range, format!("0-{}", acked - 1));
    let url = assert_session(&c, &reg, &url, acked).await;

    // 1. A large PATCH, killed mid-stream.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let req = c
        .patch(&url)
        .header("Content-Type", "application/octet-stream")
        .header("Content-Range", format!("{}-{}", acked, acked + big - 1))
        .header("Content-Length", big.to_string())
        .body(stalling_body(data.slice(acked..), 16 * MIB, tx));
    kill_during(&mut reg, req, rx, "large PATCH").await;

    let blob_url = reg.url(&format!("/v2/{repo}/blobs/{digest}"));
    assert_eq!(head_status(&c, &blob_url).await, StatusCode::NOT_FOUND);
    assert_eq!(get(&c, &blob_url).await.0, StatusCode::NOT_FOUND);
    let url = assert_session(&c, &reg, &relocate(&reg, &url), acked).await;

    // 2. The closing PUT ?digest= carrying the rest of the data, killed mid-stream.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let req = c
        .put(with_digest(&url, &digest))
        .header("Content-Type", "application/octet-stream")
        .header("Content-Length", big.to_string())
        .body(stalling_body(data.slice(acked..), 8 * MIB, tx));
    kill_during(&mut reg, req, rx, "closing PUT").await;

    let blob_url = reg.url(&format!("/v2/{repo}/blobs/{digest}"));
    assert_eq!(head_status(&c, &blob_url).await, StatusCode::NOT_FOUND);
    assert_eq!(get(&c, &blob_url).await.0, StatusCode::NOT_FOUND);
    let url = assert_session(&c, &reg, &relocate(&reg, &url), acked).await;

    // 3. Resume from the acknowledged offset and finish: the blob is exact.
    let (url, range) = patch_chunk(&c, &reg, &url, acked, data.slice(acked..)).await;
    assert_eq!(range, format!("0-{}", data.len() - 1));
    finish_upload(&c, &url, &digest, None).await;
    let resp = c.head(&blob_url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        header(&resp, "content-length"),
        Some(data.len().to_string())
    );
    assert_blob(&c, &reg, repo, &digest, &data).await;

    // 4. A monolithic POST ?digest= killed mid-stream leaves nothing; pushing again works.
    let other = Bytes::from(image::random_bytes(seed ^ 1, 12 * MIB));
    let other_digest = sha256(&other);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let req = c
        .post(with_digest(
            &reg.url(&format!("/v2/{repo}/blobs/uploads/")),
            &other_digest,
        ))
        .header("Content-Type", "application/octet-stream")
        .header("Content-Length", other.len().to_string())
        .body(stalling_body(other.clone(), 6 * MIB, tx));
    kill_during(&mut reg, req, rx, "monolithic POST").await;
    let other_url = reg.url(&format!("/v2/{repo}/blobs/{other_digest}"));
    assert_eq!(head_status(&c, &other_url).await, StatusCode::NOT_FOUND);
    assert_eq!(get(&c, &other_url).await.0, StatusCode::NOT_FOUND);
    assert_blob(&c, &reg, repo, &digest, &data).await;
    push_blob(&c, &reg, repo, &other).await;
    assert_blob(&c, &reg, repo, &other_digest, &other).await;

    // 5. A fresh upload of the first blob (another repository, chunked) also works.
    let fresh = "crash/upload-fresh";
    let url = start_upload(&c, &reg, fresh).await;
    let (url, _) = patch_chunk(&c, &reg, &url, 0, data.slice(0..acked)).await;
    finish_upload(&c, &url, &digest, Some(data.slice(acked..))).await;
    assert_blob(&c, &reg, fresh, &digest, &data).await;
}

// ---------------------------------------------------------------------------------------------
// kill -9 during a manifest PUT
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_during_manifest_put_leaves_no_trace() {
    let mut reg = Registry::start();
    let c = client();
    let repo = "crash/manifest";
    let a = image::oci_image(301, 2);
    let b = image::oci_image(302, 2);
    for blob in a.blobs().into_iter().chain(b.blobs()) {
        push_blob(&c, &reg, repo, &blob.data).await;
    }
    put_manifest(
        &c,
        &reg,
        repo,
        "stable",
        image::OCI_MANIFEST,
        &a.manifest.data,
    )
    .await;
    assert_eq!(tags(&c, &reg, repo).await, set(&["stable"]));

    // Two manifest PUTs stalled half-way: a new tag, and moving "stable" to B.
    let mut inflight = Vec::new();
    let mut reached = Vec::new();
    for tag in ["inflight", "stable"] {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let body = stalling_body(
            Bytes::from(b.manifest.data.clone()),
            b.manifest.data.len() / 2,
            tx,
        );
        let req = c
            .put(reg.url(&format!("/v2/{repo}/manifests/{tag}")))
            .header("Content-Type", image::OCI_MANIFEST)
            .header("Content-Length", b.manifest.data.len().to_string())
            .body(body)
            .send();
        inflight.push(tokio::spawn(req));
        reached.push(rx);
    }
    for rx in reached {
        rx.await.expect("stalled body");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for t in &inflight {
        assert!(!t.is_finished(), "a stalled manifest PUT already finished");
    }
    blocking(|| reg.kill());
    for t in inflight {
        if let Ok(resp) = t.await.expect("task") {
            assert!(
                !resp.status().is_success(),
                "an interrupted manifest PUT was acknowledged: {}",
                describe_ref(&resp)
            );
        }
    }
    blocking(|| reg.restart());

    // Neither the new manifest nor the new tag exist; "stable" still points to A.
    for reference in ["inflight", b.manifest.digest.as_str()] {
        let u = reg.url(&format!("/v2/{repo}/manifests/{reference}"));
        assert_eq!(
            get(&c, &u).await.0,
            StatusCode::NOT_FOUND,
            "GET {reference}"
        );
        assert_eq!(
            head_status(&c, &u).await,
            StatusCode::NOT_FOUND,
            "HEAD {reference}"
        );
    }
    assert_eq!(tags(&c, &reg, repo).await, set(&["stable"]));
    assert_manifest(&c, &reg, repo, "stable", &a.manifest.data).await;
    assert_manifest(&c, &reg, repo, &a.manifest.digest, &a.manifest.data).await;
    for blob in a.blobs().into_iter().chain(b.blobs()) {
        assert_blob(&c, &reg, repo, &blob.digest, &blob.data).await;
    }

    // Re-PUT succeeds.
    put_manifest(
        &c,
        &reg,
        repo,
        "inflight",
        image::OCI_MANIFEST,
        &b.manifest.data,
    )
    .await;
    assert_manifest(&c, &reg, repo, "inflight", &b.manifest.data).await;
    assert_manifest(&c, &reg, repo, &b.manifest.digest, &b.manifest.data).await;
    assert_eq!(tags(&c, &reg, repo).await, set(&["inflight", "stable"]));
    assert_manifest(&c, &reg, repo, "stable", &a.manifest.data).await;
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// Repeated kills at random points of a push loop
// ---------------------------------------------------------------------------------------------

/// What the pusher has had acknowledged, and what it has in flight.
#[derive(Default)]
struct Ledger {
    blobs: BTreeMap<String, Bytes>,
    /// manifest digest → bytes
    manifests: BTreeMap<String, Vec<u8>>,
    /// tag → manifest digest
    tags: BTreeMap<String, String>,
    /// Blobs whose upload started but was not acknowledged.
    inflight_blobs: BTreeMap<String, Bytes>,
    /// The manifest PUT in flight, if any: (tag, digest, bytes).
    inflight_manifest: Option<(String, String, Vec<u8>)>,
    /// Blobs acknowledged since the last full verification.
    fresh: BTreeSet<String>,
}

const LOOP_REPO: &str = "crash/loop";

/// Push images until a request fails (the server was killed). Every acknowledged object is
/// recorded in the ledger as soon as its response arrives.
async fn pusher(base: String, iteration: u64, seed: u64, ledger: Arc<Mutex<Ledger>>) {
    let c = client();
    let mut rng = Rng::new(seed ^ (iteration << 32));
    for k in 0u64.. {
        let img_seed = seed.wrapping_add(iteration * 1000 + k);
        let img = image::oci_image(img_seed, 1);
        let big_len = 16 * 1024 + rng.below(3 * MIB as u64) as usize;
        let big = Bytes::from(image::random_bytes(img_seed, big_len));
        let big_digest = sha256(&big);

        // Large blob: chunked upload (POST, PATCH..., PUT).
        ledger
            .lock()
            .unwrap()
            .inflight_blobs
            .insert(big_digest.clone(), big.clone());
        if push_chunked(&c, &base, &big, &big_digest, &mut rng)
            .await
            .is_err()
        {
            return;
        }
        ack_blob(&ledger, &big_digest, &big);

        // Small layer and config: monolithic uploads.
        for blob in [&img.layers[0], &img.config] {
            let data = Bytes::from(blob.data.clone());
            ledger
                .lock()
                .unwrap()
                .inflight_blobs
                .insert(blob.digest.clone(), data.clone());
            if push_monolithic(&c, &base, &data, &blob.digest)
                .await
                .is_err()
            {
                return;
            }
            ack_blob(&ledger, &blob.digest, &data);
        }

        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": image::OCI_MANIFEST,
            "config": img.config.descriptor(),
            "layers": [
                img.layers[0].descriptor(),
                {"mediaType": "application/vnd.berth.test.data", "digest": big_digest, "size": big_len},
            ],
            "annotations": {"org.berth.test.iteration": format!("{iteration}/{k}")},
        });
        let manifest = serde_json::to_vec(&manifest).unwrap();
        let md = sha256(&manifest);
        // A new tag, and (every other time) moving "latest".
        let mut tags = vec![format!("i{iteration}-{k}")];
        if k % 2 == 1 {
            tags.push("latest".to_string());
        }
        for tag in tags {
            ledger.lock().unwrap().inflight_manifest =
                Some((tag.clone(), md.clone(), manifest.clone()));
            let r = c
                .put(format!("{base}/v2/{LOOP_REPO}/manifests/{tag}"))
                .header("Content-Type", image::OCI_MANIFEST)
                .body(manifest.clone())
                .send()
                .await;
            match r {
                Ok(resp) if resp.status() == StatusCode::CREATED => {
                    let mut l = ledger.lock().unwrap();
                    l.manifests.insert(md.clone(), manifest.clone());
                    l.tags.insert(tag, md.clone());
                    l.inflight_manifest = None;
                }
                Ok(resp) => panic!("manifest PUT failed: {}", describe(resp).await),
                Err(_) => return,
            }
        }
    }
}

fn ack_blob(ledger: &Mutex<Ledger>, digest: &str, data: &Bytes) {
    let mut l = ledger.lock().unwrap();
    l.inflight_blobs.remove(digest);
    l.blobs.insert(digest.to_string(), data.clone());
    l.fresh.insert(digest.to_string());
}

/// Err(()) when the server went away; panics on protocol errors from a live server.
async fn push_chunked(
    c: &Client,
    base: &str,
    data: &Bytes,
    digest: &str,
    rng: &mut Rng,
) -> Result<(), ()> {
    let base_url = Url::parse(base).unwrap();
    let resp = c
        .post(format!("{base}/v2/{LOOP_REPO}/blobs/uploads/"))
        .send()
        .await
        .map_err(|_| ())?;
    if resp.status() != StatusCode::ACCEPTED {
        panic!("start upload: {}", describe(resp).await);
    }
    let mut url = base_url
        .join(&header(&resp, "location").expect("Location"))
        .unwrap()
        .to_string();
    let mut pos = 0;
    while pos < data.len() {
        let n = (64 * 1024 + rng.below(MIB as u64) as usize).min(data.len() - pos);
        let resp = c
            .patch(&url)
            .header("Content-Type", "application/octet-stream")
            .header("Content-Range", format!("{}-{}", pos, pos + n - 1))
            .header("Content-Length", n.to_string())
            .body(data.slice(pos..pos + n))
            .send()
            .await
            .map_err(|_| ())?;
        if resp.status() != StatusCode::ACCEPTED {
            panic!("PATCH: {}", describe(resp).await);
        }
        pos += n;
        assert_eq!(
            header(&resp, "range"),
            Some(format!("0-{}", pos - 1)),
            "PATCH Range"
        );
        url = base_url
            .join(&header(&resp, "location").expect("Location"))
            .unwrap()
            .to_string();
    }
    let resp = c
        .put(with_digest(&url, digest))
        .header("Content-Length", "0")
        .send()
        .await
        .map_err(|_| ())?;
    if resp.status() != StatusCode::CREATED {
        panic!("PUT upload: {}", describe(resp).await);
    }
    Ok(())
}

async fn push_monolithic(c: &Client, base: &str, data: &Bytes, digest: &str) -> Result<(), ()> {
    let resp = c
        .post(with_digest(
            &format!("{base}/v2/{LOOP_REPO}/blobs/uploads/"),
            digest,
        ))
        .header("Content-Type", "application/octet-stream")
        .body(data.clone())
        .send()
        .await
        .map_err(|_| ())?;
    match resp.status() {
        StatusCode::CREATED => Ok(()),
        // A registry may answer a monolithic POST with an upload session (spec-compliant).
        StatusCode::ACCEPTED => {
            let url = Url::parse(base)
                .unwrap()
                .join(&header(&resp, "location").expect("Location"))
                .unwrap();
            let resp = c
                .put(with_digest(url.as_str(), digest))
                .header("Content-Type", "application/octet-stream")
                .body(data.clone())
                .send()
                .await
                .map_err(|_| ())?;
            if resp.status() != StatusCode::CREATED {
                panic!("PUT after monolithic POST: {}", describe(resp).await);
            }
            Ok(())
        }
        _ => panic!("monolithic upload: {}", describe(resp).await),
    }
}

/// Check the registry against the ledger. `full`: GET every acknowledged blob (otherwise only
/// those acknowledged since the last full check; the others are checked with HEAD).
async fn verify(c: &Client, reg: &Registry, ledger: &Mutex<Ledger>, full: bool) {
    let (blobs, fresh, manifests, acked_tags, inflight_blobs, inflight_manifest) = {
        let mut l = ledger.lock().unwrap();
        let fresh = std::mem::take(&mut l.fresh);
        (
            l.blobs.clone(),
            fresh,
            l.manifests.clone(),
            l.tags.clone(),
            l.inflight_blobs.clone(),
            l.inflight_manifest.clone(),
        )
    };
    let blob_url = |d: &str| reg.url(&format!("/v2/{LOOP_REPO}/blobs/{d}"));

    // Every acknowledged blob is intact.
    for (d, data) in &blobs {
        if full || fresh.contains(d) {
            assert_blob(c, reg, LOOP_REPO, d, data).await;
        } else {
            let resp = c.head(blob_url(d)).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "HEAD acknowledged blob {d}");
            assert_eq!(
                header(&resp, "content-length"),
                Some(data.len().to_string()),
                "size of acknowledged blob {d}"
            );
        }
    }
    // A blob whose upload was interrupted is either absent or complete and exact.
    for (d, data) in &inflight_blobs {
        match head_status(c, &blob_url(d)).await {
            StatusCode::NOT_FOUND => {}
            StatusCode::OK => assert_blob(c, reg, LOOP_REPO, d, data).await,
            s => panic!("HEAD in-flight blob {d}: {s}"),
        }
    }
    // Every acknowledged manifest is intact.
    for (d, m) in &manifests {
        assert_manifest(c, reg, LOOP_REPO, d, m).await;
    }
    // The interrupted manifest PUT is all or nothing.
    let mut inflight_tag = None;
    if let Some((tag, d, m)) = &inflight_manifest {
        inflight_tag = Some(tag.clone());
        let (status, body) = get(c, &reg.url(&format!("/v2/{LOOP_REPO}/manifests/{d}"))).await;
        match status {
            StatusCode::NOT_FOUND => {}
            StatusCode::OK => assert!(body == *m, "in-flight manifest {d} served partially"),
            s => panic!("GET in-flight manifest {d}: {s}"),
        }
    }
    // Tags: exactly the acknowledged ones, plus at most the one in flight.
    let listed = tags(c, reg, LOOP_REPO).await;
    for tag in acked_tags.keys() {
        assert!(
            listed.contains(tag),
            "acknowledged tag {tag} lost; listed: {listed:?}"
        );
    }
    for tag in &listed {
        assert!(
            acked_tags.contains_key(tag) || inflight_tag.as_ref() == Some(tag),
            "tag {tag} was never acknowledged; acknowledged: {:?}, in flight: {inflight_tag:?}",
            acked_tags.keys().collect::<Vec<_>>()
        );
        let (status, body) = get(c, &reg.url(&format!("/v2/{LOOP_REPO}/manifests/{tag}"))).await;
        assert_eq!(status, StatusCode::OK, "listed tag {tag} cannot be fetched");
        let d = sha256(&body);
        let mut allowed = Vec::new();
        if let Some(acked) = acked_tags.get(tag) {
            allowed.push(acked.clone());
        }
        if let Some((t, inflight_digest, _)) = &inflight_manifest {
            if t == tag {
                allowed.push(inflight_digest.clone());
            }
        }
        assert!(
            allowed.contains(&d),
            "tag {tag} points to {d}, expected one of {allowed:?}"
        );
        // Everything the manifest refers to is there.
        let v: Value = serde_json::from_slice(&body).expect("manifest json");
        let mut refs = vec![v["config"]["digest"].as_str().unwrap().to_string()];
        for l in v["layers"].as_array().unwrap() {
            refs.push(l["digest"].as_str().unwrap().to_string());
        }
        for r in refs {
            assert_eq!(
                head_status(c, &blob_url(&r)).await,
                StatusCode::OK,
                "blob {r} of tag {tag}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_kills_during_pushes_lose_nothing_acknowledged() {
    let seed = test_seed("repeated_kills");
    let mut rng = Rng::new(seed);
    let mut reg = Registry::start();
    let c = client();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    const ITERATIONS: u64 = 20;

    for i in 0..ITERATIONS {
        let task = tokio::spawn(pusher(reg.url(""), i, seed, ledger.clone()));
        // Kill at a random moment of the push loop (from "immediately" to a few pushes in).
        let delay = rng.below(400);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        assert!(
            !task.is_finished(),
            "the pusher stopped while the server was up: {:?}",
            task.await
        );
        blocking(|| reg.kill());
        task.await.expect("pusher panicked");
        blocking(|| reg.restart());
        verify(&c, &reg, &ledger, false).await;
        // Whatever was in flight is now settled one way or the other; forget it (a blob that
        // became visible is checked above; one that did not is simply not acknowledged).
        let inflight = {
            let mut l = ledger.lock().unwrap();
            l.inflight_blobs.clear();
            l.inflight_manifest.take()
        };
        if let Some((tag, d, m)) = inflight {
            // If the PUT landed, its tag may stay visible: adopt it (it was checked above).
            let (status, body) =
                get(&c, &reg.url(&format!("/v2/{LOOP_REPO}/manifests/{tag}"))).await;
            let mut l = ledger.lock().unwrap();
            if status == StatusCode::OK && sha256(&body) == d {
                l.manifests.insert(d.clone(), m);
                l.tags.insert(tag, d);
            }
        }
    }
    verify(&c, &reg, &ledger, true).await;
    let l = ledger.lock().unwrap();
    eprintln!(
        "repeated_kills: {} blobs, {} manifests, {} tags acknowledged over {ITERATIONS} kills",
        l.blobs.len(),
        l.manifests.len(),
        l.tags.len()
    );
    assert!(
        !l.tags.is_empty(),
        "nothing was ever acknowledged: the test exercised nothing"
    );
}

// ---------------------------------------------------------------------------------------------
// Graceful shutdown
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly_and_keeps_data() {
    let mut reg = Registry::start();
    let c = client();
    let repo = "crash/graceful";
    let img = image::oci_image(401, 2);
    for b in img.blobs() {
        push_blob(&c, &reg, repo, &b.data).await;
    }
    put_manifest(
        &c,
        &reg,
        repo,
        "v1",
        image::OCI_MANIFEST,
        &img.manifest.data,
    )
    .await;
    // An upload session left open, and the client's idle keep-alive connection still open.
    let session = start_upload(&c, &reg, repo).await;
    let (session, _) = patch_chunk(&c, &reg, &session, 0, Bytes::from_static(b"partial")).await;

    let status = blocking(|| reg.terminate()).expect("the server was running");
    assert!(status.success(), "SIGTERM exit status: {status:?}");
    assert_eq!(status.code(), Some(0));

    blocking(|| reg.restart());
    assert_manifest(&c, &reg, repo, "v1", &img.manifest.data).await;
    for b in img.blobs() {
        assert_blob(&c, &reg, repo, &b.digest, &b.data).await;
    }
    let resp = c.get(relocate(&reg, &session)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&resp, "range").as_deref(), Some("0-6"));
}
