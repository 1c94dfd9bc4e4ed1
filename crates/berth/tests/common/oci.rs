//! Small OCI Distribution client helpers for the integration tests.
//!
//! Everything here talks plain HTTP to a [`Registry`] started by the harness in `common/mod.rs`.
//! The helpers are deliberately thin: the "low-level" ones (`start_upload`, `patch_chunk`,
//! `finish_upload`, `push_manifest`, ...) return the raw [`reqwest::Response`] (or the URL) so a
//! test can assert on status codes and headers itself, while the "high-level" ones
//! (`push_blob`, `push_image`, ...) assert success and return what a test needs next.
//!
//! Conventions:
//! * Every digest is computed locally (`common::sha256`), never taken from the server.
//! * Locations returned by the server (relative paths or absolute URLs) are always followed as
//!   given, via [`resolve`]; query parameters are appended with [`with_query`].
//! * Manifest builders return the exact bytes that are sent, so tests can compare what the
//!   registry returns byte for byte.
#![allow(dead_code)]

use super::{sha256, Registry};
use reqwest::header::HeaderMap;
use reqwest::{Client, Response, StatusCode, Url};
use serde::Deserialize;
use serde_json::{json, Value};

/// `application/vnd.oci.image.manifest.v1+json`
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// `application/vnd.oci.image.index.v1+json`
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// `application/vnd.oci.image.config.v1+json`
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// `application/vnd.oci.image.layer.v1.tar+gzip`
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// `application/vnd.oci.empty.v1+json` (the `{}` blob used by artifacts)
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// `application/vnd.docker.distribution.manifest.v2+json`
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// `application/vnd.docker.distribution.manifest.list.v2+json`
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// `application/vnd.docker.container.image.v1+json`
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// `application/vnd.docker.image.rootfs.diff.tar.gzip`
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// `application/vnd.docker.distribution.manifest.v1+json` (schema1, must be rejected)
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
/// `application/vnd.docker.distribution.manifest.v1+prettyjws` (signed schema1, must be rejected)
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// The content of the OCI empty descriptor blob.
pub const EMPTY_JSON: &[u8] = b"{}";

/// A reqwest client suitable for talking to the test registry: never follows redirects and
/// ignores any proxy configured in the environment.
pub fn client() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .expect("reqwest client")
}

/// Resolve a `Location` header value (a path such as `/v2/<name>/blobs/uploads/<uuid>`, a
/// relative reference, or an absolute URL) against the registry's base URL.
pub fn resolve(reg: &Registry, location: &str) -> String {
    let base = Url::parse(&reg.url("/v2/")).expect("base url");
    base.join(location)
        .unwrap_or_else(|e| panic!("cannot resolve location {location:?}: {e}"))
        .to_string()
}

/// The path (plus query, if any) of a URL or `Location` value, e.g. to compare a returned
/// location with `/v2/<name>/blobs/<digest>` independently of whether it is absolute.
pub fn path_of(reg: &Registry, location: &str) -> String {
    let u = Url::parse(&resolve(reg, location)).expect("url");
    match u.query() {
        Some(q) => format!("{}?{}", u.path(), q),
        None => u.path().to_string(),
    }
}

/// Only the path of a URL or `Location` value (no query).
pub fn path_only(reg: &Registry, location: &str) -> String {
    Url::parse(&resolve(reg, location))
        .expect("url")
        .path()
        .to_string()
}

/// Re-target a URL obtained from one registry instance at another instance (same path and
/// query, other host/port). Used by the multi-instance tests.
pub fn on_instance(reg: &Registry, url: &str) -> String {
    let u = Url::parse(url).expect("absolute url");
    let mut out = reg.url(u.path());
    if let Some(q) = u.query() {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Percent-encode a query parameter value (keeps `A-Za-z0-9-._~:/`; `+` becomes `%2B`).
pub fn encode_query_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Append `key=value` to a URL that may or may not already have a query string.
pub fn with_query(url: &str, key: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={}", encode_query_value(value))
}

/// A header value as a string, if present (and valid UTF-8).
pub fn header(resp: &Response, name: &str) -> Option<String> {
    header_of(resp.headers(), name)
}

/// A header value from a header map, if present.
pub fn header_of(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|v| v.to_str().expect("header is not UTF-8").to_string())
}

/// All values of a header (for repeated headers).
pub fn header_all(resp: &Response, name: &str) -> Vec<String> {
    resp.headers()
        .get_all(name)
        .iter()
        .map(|v| v.to_str().expect("header is not UTF-8").to_string())
        .collect()
}

/// A header that must be present.
pub fn must_header(resp: &Response, name: &str) -> String {
    header(resp, name).unwrap_or_else(|| {
        panic!(
            "missing header {name} on {} {} (headers: {:?})",
            resp.status(),
            resp.url(),
            resp.headers()
        )
    })
}

/// One entry of an OCI error response body.
#[derive(Debug, Clone, Deserialize)]
pub struct OciError {
    pub code: String,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub detail: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct OciErrors {
    errors: Vec<OciError>,
}

/// Parse an error body `{"errors":[{"code","message","detail"}]}`.
pub fn parse_errors(body: &[u8]) -> Result<Vec<OciError>, String> {
    serde_json::from_slice::<OciErrors>(body)
        .map(|e| e.errors)
        .map_err(|e| {
            format!(
                "not an OCI error body ({e}): {:?}",
                String::from_utf8_lossy(body)
            )
        })
}

/// The error codes defined by the distribution spec (plus the legacy `TAG_INVALID`, which
/// Berth uses for malformed tags, and Berth's `STORAGE_FULL` for a full disk).
pub const KNOWN_ERROR_CODES: &[&str] = &[
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
    "TAG_INVALID",
    "STORAGE_FULL",
    "UNAVAILABLE",
];

/// Assert that `resp` is an error with the given status and (for non-HEAD requests) a JSON
/// error body (`Content-Type: application/json`) containing `code`. Every code in the body
/// must be a known code. Returns the parsed errors.
pub async fn expect_error(resp: Response, status: u16, code: &str) -> Vec<OciError> {
    let st = resp.status().as_u16();
    let url = resp.url().to_string();
    let ct = header(&resp, "content-type");
    let body = resp.bytes().await.expect("read error body");
    assert_eq!(
        st,
        status,
        "unexpected status for {url} (expected {status} {code}); body: {}",
        String::from_utf8_lossy(&body)
    );
    let ct = ct.unwrap_or_default();
    assert!(
        ct.starts_with("application/json"),
        "error response for {url} must have Content-Type application/json, got {ct:?}"
    );
    let errors = parse_errors(&body).unwrap_or_else(|e| panic!("{url}: {e}"));
    assert!(!errors.is_empty(), "{url}: empty errors array");
    for e in &errors {
        assert!(
            KNOWN_ERROR_CODES.contains(&e.code.as_str()),
            "{url}: unknown error code {:?}",
            e.code
        );
    }
    assert!(
        errors.iter().any(|e| e.code == code),
        "{url}: expected error code {code}, got {:?}",
        errors
    );
    errors
}

/// Assert a response status, printing the body on mismatch. Returns the body.
pub async fn expect_status(resp: Response, status: u16) -> bytes::Bytes {
    let st = resp.status().as_u16();
    let url = resp.url().to_string();
    let body = resp.bytes().await.expect("read body");
    assert_eq!(
        st,
        status,
        "unexpected status for {url}; body: {}",
        String::from_utf8_lossy(&body)
    );
    body
}

/// Panic with the response body if the status is not `status`; otherwise give the response
/// back (headers still readable).
pub async fn check_status(resp: Response, status: u16) -> Response {
    if resp.status().as_u16() != status {
        let st = resp.status();
        let url = resp.url().to_string();
        let body = resp.text().await.unwrap_or_default();
        panic!("unexpected status {st} for {url} (expected {status}); body: {body}");
    }
    resp
}

// ---------------------------------------------------------------------------------------------
// Blobs and uploads
// ---------------------------------------------------------------------------------------------

/// Monolithic single-POST upload (`POST /v2/<repo>/blobs/uploads/?digest=<d>`); asserts 201 and
/// returns the (locally computed) sha256 digest.
pub async fn push_blob(reg: &Registry, repo: &str, data: &[u8]) -> String {
    let digest = sha256(data);
    let resp = post_blob(reg, repo, &digest, data.to_vec()).await;
    let resp = check_status(resp, 201).await;
    assert_eq!(
        header(&resp, "docker-content-digest").as_deref(),
        Some(digest.as_str()),
        "Docker-Content-Digest of monolithic upload"
    );
    digest
}

/// Raw single-POST monolithic upload with an explicit digest; returns the response.
pub async fn post_blob(reg: &Registry, repo: &str, digest: &str, data: Vec<u8>) -> Response {
    let url = with_query(
        &reg.url(&format!("/v2/{repo}/blobs/uploads/")),
        "digest",
        digest,
    );
    client()
        .post(url)
        .header("content-type", "application/octet-stream")
        .body(data)
        .send()
        .await
        .expect("POST blob")
}

/// `POST /v2/<repo>/blobs/uploads/` (raw response).
pub async fn post_upload(reg: &Registry, repo: &str) -> Response {
    client()
        .post(reg.url(&format!("/v2/{repo}/blobs/uploads/")))
        .header("content-length", "0")
        .send()
        .await
        .expect("POST upload")
}

/// Start an upload session; asserts 202 and returns the absolute session URL (the resolved
/// `Location`).
pub async fn start_upload(reg: &Registry, repo: &str) -> String {
    let resp = check_status(post_upload(reg, repo).await, 202).await;
    resolve(reg, &must_header(&resp, "location"))
}

/// `PATCH <url>` with a chunk. `start`: `Some(offset)` sends `Content-Range: <start>-<end>`
/// (inclusive, no `bytes=` prefix); `None` sends no Content-Range (streamed append). An empty
/// chunk never gets a Content-Range (there is no valid inclusive range for it).
pub async fn patch_chunk(url: &str, data: &[u8], start: Option<u64>) -> Response {
    let mut req = client()
        .patch(url)
        .header("content-type", "application/octet-stream")
        .body(data.to_vec());
    if let (Some(s), false) = (start, data.is_empty()) {
        let end = s + data.len() as u64 - 1;
        req = req.header("content-range", format!("{s}-{end}"));
    }
    req.send().await.expect("PATCH chunk")
}

/// `PATCH` a chunk, assert 202 and `Range: 0-<expected_end>`, and return the next session URL
/// (the resolved `Location`).
pub async fn patch_ok(reg: &Registry, url: &str, data: &[u8], start: Option<u64>) -> String {
    let resp = check_status(patch_chunk(url, data, start).await, 202).await;
    let loc = resolve(reg, &must_header(&resp, "location"));
    let expected_end = match start {
        Some(s) => s + data.len() as u64 - 1,
        None => u64::MAX, // unknown: checked by caller if needed
    };
    if expected_end != u64::MAX {
        assert_eq!(
            must_header(&resp, "range"),
            format!("0-{expected_end}"),
            "Range after PATCH"
        );
    }
    loc
}

/// `PUT <url>?digest=<digest>`, optionally with a final chunk (sent with Content-Type
/// application/octet-stream and, if `start` is given, a Content-Range). Raw response.
pub async fn finish_upload(
    url: &str,
    digest: &str,
    last_chunk: Option<&[u8]>,
    start: Option<u64>,
) -> Response {
    let mut req = client().put(with_query(url, "digest", digest));
    match last_chunk {
        Some(data) => {
            req = req
                .header("content-type", "application/octet-stream")
                .body(data.to_vec());
            if let (Some(s), false) = (start, data.is_empty()) {
                req = req.header(
                    "content-range",
                    format!("{s}-{}", s + data.len() as u64 - 1),
                );
            }
        }
        None => {
            req = req.header("content-length", "0");
        }
    }
    req.send().await.expect("PUT upload")
}

/// `GET <session url>` (upload status), raw response.
pub async fn upload_status(url: &str) -> Response {
    client().get(url).send().await.expect("GET upload status")
}

/// Chunked upload of `data` in chunks of `chunk` bytes (with Content-Range), closed by a PUT
/// without body. Asserts every step and returns the sha256 digest.
pub async fn push_blob_chunked(reg: &Registry, repo: &str, data: &[u8], chunk: usize) -> String {
    let digest = sha256(data);
    let mut url = start_upload(reg, repo).await;
    let mut off = 0usize;
    while off < data.len() {
        let end = (off + chunk).min(data.len());
        url = patch_ok(reg, &url, &data[off..end], Some(off as u64)).await;
        off = end;
    }
    let resp = check_status(finish_upload(&url, &digest, None, None).await, 201).await;
    assert_eq!(
        header(&resp, "docker-content-digest").as_deref(),
        Some(digest.as_str())
    );
    digest
}

/// `GET /v2/<repo>/blobs/<digest>`, raw response.
pub async fn get_blob(reg: &Registry, repo: &str, digest: &str) -> Response {
    client()
        .get(reg.url(&format!("/v2/{repo}/blobs/{digest}")))
        .send()
        .await
        .expect("GET blob")
}

/// Fetch a blob, asserting 200 and that the body equals `expected`.
pub async fn assert_blob(reg: &Registry, repo: &str, expected: &[u8]) {
    let digest = sha256(expected);
    let resp = check_status(get_blob(reg, repo, &digest).await, 200).await;
    assert_eq!(
        header(&resp, "docker-content-digest").as_deref(),
        Some(digest.as_str())
    );
    let body = resp.bytes().await.expect("blob body");
    assert_eq!(body.len(), expected.len(), "blob length for {digest}");
    assert!(body.as_ref() == expected, "blob content for {digest}");
}

// ---------------------------------------------------------------------------------------------
// Manifests
// ---------------------------------------------------------------------------------------------

/// `PUT /v2/<repo>/manifests/<reference>` with the given Content-Type; raw response.
pub async fn push_manifest(
    reg: &Registry,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) -> Response {
    client()
        .put(reg.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("content-type", media_type)
        .body(body.to_vec())
        .send()
        .await
        .expect("PUT manifest")
}

/// Push a manifest, asserting 201, `Docker-Content-Digest` and the `Location`
/// (`/v2/<repo>/manifests/<digest>`). Returns the digest.
pub async fn push_manifest_ok(
    reg: &Registry,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) -> String {
    let digest = sha256(body);
    let resp = check_status(
        push_manifest(reg, repo, reference, media_type, body).await,
        201,
    )
    .await;
    assert_eq!(
        header(&resp, "docker-content-digest").as_deref(),
        Some(digest.as_str()),
        "Docker-Content-Digest of manifest PUT"
    );
    assert_eq!(
        path_only(reg, &must_header(&resp, "location")),
        format!("/v2/{repo}/manifests/{digest}"),
        "Location of manifest PUT"
    );
    digest
}

/// `GET /v2/<repo>/manifests/<reference>` with an optional Accept header; raw response.
pub async fn get_manifest(
    reg: &Registry,
    repo: &str,
    reference: &str,
    accept: Option<&str>,
) -> Response {
    let mut req = client().get(reg.url(&format!("/v2/{repo}/manifests/{reference}")));
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    req.send().await.expect("GET manifest")
}

/// Fetch a manifest and assert it is exactly `expected` with the given media type.
pub async fn assert_manifest(
    reg: &Registry,
    repo: &str,
    reference: &str,
    media_type: &str,
    expected: &[u8],
) {
    let digest = sha256(expected);
    let resp = check_status(get_manifest(reg, repo, reference, None).await, 200).await;
    assert_eq!(header(&resp, "content-type").as_deref(), Some(media_type));
    assert_eq!(
        header(&resp, "docker-content-digest").as_deref(),
        Some(digest.as_str())
    );
    let body = resp.bytes().await.expect("manifest body");
    assert!(
        body.as_ref() == expected,
        "manifest {repo}:{reference} bytes differ: got {}",
        String::from_utf8_lossy(&body)
    );
}

/// A descriptor `{mediaType, digest, size}` for some content (sha256).
pub fn descriptor(media_type: &str, content: &[u8]) -> Value {
    json!({
        "mediaType": media_type,
        "digest": sha256(content),
        "size": content.len(),
    })
}

/// The OCI empty descriptor (`{}`, `application/vnd.oci.empty.v1+json`).
pub fn empty_descriptor() -> Value {
    descriptor(OCI_EMPTY, EMPTY_JSON)
}

/// An OCI image manifest (schemaVersion 2, `mediaType` set) as bytes.
pub fn image_manifest(config: &Value, layers: &[Value]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": layers,
    }))
    .unwrap()
}

/// An OCI image index over the given manifest descriptors.
pub fn image_index(manifests: &[Value]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    }))
    .unwrap()
}

/// An OCI image index with a `subject` (and optional artifactType / annotations).
pub fn image_index_with_subject(
    manifests: &[Value],
    subject: &Value,
    artifact_type: Option<&str>,
    annotations: Option<&Value>,
) -> Vec<u8> {
    let mut v = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
        "subject": subject,
    });
    if let Some(a) = artifact_type {
        v["artifactType"] = json!(a);
    }
    if let Some(a) = annotations {
        v["annotations"] = a.clone();
    }
    serde_json::to_vec(&v).unwrap()
}

/// A Docker image manifest v2 schema 2.
pub fn docker_manifest(config: &Value, layers: &[Value]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": config,
        "layers": layers,
    }))
    .unwrap()
}

/// A Docker manifest list.
pub fn docker_manifest_list(manifests: &[Value]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST_LIST,
        "manifests": manifests,
    }))
    .unwrap()
}

/// An OCI image manifest used as an artifact: optional `artifactType`, the given config and
/// layers, optional `subject` descriptor and `annotations`.
pub fn artifact_manifest(
    artifact_type: Option<&str>,
    config: &Value,
    layers: &[Value],
    subject: Option<&Value>,
    annotations: Option<&Value>,
) -> Vec<u8> {
    let mut v = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": layers,
    });
    if let Some(a) = artifact_type {
        v["artifactType"] = json!(a);
    }
    if let Some(s) = subject {
        v["subject"] = s.clone();
    }
    if let Some(a) = annotations {
        v["annotations"] = a.clone();
    }
    serde_json::to_vec(&v).unwrap()
}

/// A small image: a config blob, one layer blob, and the OCI manifest over them.
#[derive(Debug, Clone)]
pub struct Image {
    pub config: Vec<u8>,
    pub layer: Vec<u8>,
    pub manifest: Vec<u8>,
    /// sha256 digest of `manifest`.
    pub digest: String,
}

impl Image {
    /// Descriptor of this image's manifest (for indexes / subjects).
    pub fn descriptor(&self) -> Value {
        descriptor(OCI_MANIFEST, &self.manifest)
    }
}

/// Deterministic, seed-unique image content (different seeds give different digests).
pub fn sample_image(seed: &str) -> Image {
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": {"seed": seed}},
        "rootfs": {"type": "layers", "diff_ids": []},
    }))
    .unwrap();
    let layer = format!("layer bytes for {seed}\n").repeat(7).into_bytes();
    let manifest = image_manifest(
        &descriptor(OCI_CONFIG, &config),
        &[descriptor(OCI_LAYER, &layer)],
    );
    let digest = sha256(&manifest);
    Image {
        config,
        layer,
        manifest,
        digest,
    }
}

/// Push the blobs of `img` (monolithic) into `repo`.
pub async fn push_image_blobs(reg: &Registry, repo: &str, img: &Image) {
    push_blob(reg, repo, &img.config).await;
    push_blob(reg, repo, &img.layer).await;
}

/// Build, push blobs and push the manifest of `sample_image(seed)` under `reference`
/// (a tag or the digest). Asserts success; returns the image.
pub async fn push_image(reg: &Registry, repo: &str, reference: &str, seed: &str) -> Image {
    let img = sample_image(seed);
    push_image_blobs(reg, repo, &img).await;
    push_manifest_ok(reg, repo, reference, OCI_MANIFEST, &img.manifest).await;
    img
}

/// Push `sample_image(seed)` by its own digest (no tag). Returns the image.
pub async fn push_image_by_digest(reg: &Registry, repo: &str, seed: &str) -> Image {
    let img = sample_image(seed);
    push_image_blobs(reg, repo, &img).await;
    push_manifest_ok(reg, repo, &img.digest, OCI_MANIFEST, &img.manifest).await;
    img
}

/// `GET` a URL (relative to the registry) and parse the JSON body; asserts 200.
pub async fn get_json(reg: &Registry, path: &str) -> (HeaderMap, Value) {
    let resp = check_status(client().get(reg.url(path)).send().await.expect("GET"), 200).await;
    let headers = resp.headers().clone();
    let body = resp.bytes().await.expect("body");
    let v = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "GET {path}: body is not JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        )
    });
    (headers, v)
}

/// The tags of `repo` (`GET /v2/<repo>/tags/list`, asserting 200 and `name`).
pub async fn list_tags(reg: &Registry, repo: &str) -> Vec<String> {
    let (_, v) = get_json(reg, &format!("/v2/{repo}/tags/list")).await;
    assert_eq!(v["name"], json!(repo));
    strings(&v["tags"])
}

/// A JSON array of strings (`null` counts as empty).
pub fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Null => vec![],
        Value::Array(a) => a
            .iter()
            .map(|s| s.as_str().expect("string").to_string())
            .collect(),
        other => panic!("expected an array of strings, got {other}"),
    }
}

/// Whether `GET /v2/` answers 200 (used to check the server survived a bad request).
pub async fn is_healthy(reg: &Registry) -> bool {
    matches!(
        client().get(reg.url("/v2/")).send().await,
        Ok(r) if r.status() == StatusCode::OK
    )
}

/// Who pushes to another registry: Basic credentials, or nobody.
pub type Credentials<'a> = Option<(&'a str, &'a str)>;

fn as_who(req: reqwest::RequestBuilder, who: Credentials<'_>) -> reqwest::RequestBuilder {
    match who {
        Some((user, password)) => req.basic_auth(user, Some(password)),
        None => req,
    }
}

/// Pushes a blob to any registry at `base` (Distribution included): POST, then PUT with the
/// digest, as `who`. Asserts success.
pub async fn upload_blob_to(base: &str, who: Credentials<'_>, repo: &str, data: &[u8]) {
    let resp = as_who(
        client().post(format!("{base}/v2/{repo}/blobs/uploads/")),
        who,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
    let location = must_header(&resp, "location");
    let location = if location.starts_with('/') {
        format!("{base}{location}")
    } else {
        location
    };
    let put = client()
        .put(with_query(&location, "digest", &sha256(data)))
        .header("content-type", "application/octet-stream")
        .body(data.to_vec());
    let resp = as_who(put, who).send().await.unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
}

/// Pushes a manifest to any registry at `base` as `who`. Asserts success.
pub async fn upload_manifest_to(
    base: &str,
    who: Credentials<'_>,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) {
    let put = client()
        .put(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header("content-type", media_type)
        .body(body.to_vec());
    let resp = as_who(put, who).send().await.unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
}

/// Pushes `img` (its blobs, then its manifest under `reference`) to any registry at `base`.
pub async fn upload_image_to(
    base: &str,
    who: Credentials<'_>,
    repo: &str,
    reference: &str,
    img: &Image,
) {
    upload_blob_to(base, who, repo, &img.config).await;
    upload_blob_to(base, who, repo, &img.layer).await;
    upload_manifest_to(base, who, repo, reference, OCI_MANIFEST, &img.manifest).await;
}
