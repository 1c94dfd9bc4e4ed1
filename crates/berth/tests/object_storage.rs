//! Berth on object stores: S3 and OpenStack Swift.
//!
//! S3: every test starts a real three-node Garage cluster (`common/garage.rs`) and points
//! Berth's `storage.s3` section at one of its buckets, with the metadata in a local SQLite file
//! (`sqlite.path`). Real clients (skopeo, the docker CLI, Distribution's `docker-registry`) and
//! raw OCI requests go through it: pulls redirected to presigned Garage URLs or streamed through
//! Berth, monolithic and chunked uploads (parts of S3 multipart uploads), an upload moved between
//! two instances sharing the bucket and the SQLite file, a SIGKILL in the middle of a multipart
//! upload and the purging of what it left open, and a bucket written by Distribution taken over
//! in place.
//!
//! Swift: every test starts a real all-in-one Swift (`common/swift.rs`, tempauth) and points
//! Berth's `storage.swift` section at a container of its own. The same round trips (skopeo, the
//! docker CLI, raw uploads) go through it, pulls redirected to Swift temporary URLs (signed with
//! the account's key, `secretkey`) or streamed through Berth; objects larger than `chunksize`
//! are static large objects, whose segments must go when the object does.
//!
//! What a store holds is read with small clients of the test's own ([`S3`], [`SwiftListing`]),
//! so listings do not go through Berth. When a test fails, the log of every Berth (and
//! Distribution) process it started and the end of each Garage node's or Swift server's log are
//! printed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cli::{
    can_run, docker_inspect, parse_push_digest, repo_digests, run, run_fails, DockerImages, Env,
};
use common::distribution::Distribution;
use common::garage::Garage;
use common::image::{self, Blob};
use common::oci::{
    check_status, expect_error, finish_upload, header, must_header, on_instance, patch_ok,
    post_blob, start_upload, upload_status,
};
use common::swift::Swift;
use common::{sha256, Launch, Registry};
use reqwest::{Client, StatusCode, Url};
use serde_json::Value;

const MIB: usize = 1024 * 1024;
/// The part size of Berth's (and Distribution's) multipart uploads: S3's minimum; on Swift, the
/// size of a large object's segments.
const CHUNK_SIZE: usize = 5 * MIB;
/// Lines of each log printed when a test fails.
const LOG_TAIL: usize = 80;

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// What the tests know of a store
// ---------------------------------------------------------------------------------------------

/// Where one registry keeps its objects, as the tests see it: their keys (Distribution's layout
/// below a root) and what the URL a blob pull is redirected to must look like.
trait Store {
    /// The key prefix of every object (the root without its leading `/`).
    fn root(&self) -> &str;

    /// `scheme://host:port` of the URLs blob pulls are redirected to.
    fn origin(&self) -> String;

    /// The path of the URL of the object `key`.
    fn url_path(&self, key: &str) -> String;

    /// Whether the query of a redirect's URL carries the store's signature.
    fn signed(&self, query: &str) -> bool;

    /// The object key of a blob: Distribution's layout below the root.
    fn blob_key(&self, digest: &str) -> String {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        format!(
            "{}/docker/registry/v2/blobs/sha256/{}/{hex}/data",
            self.root(),
            &hex[..2]
        )
    }

    /// The prefix of every object of one upload session.
    fn upload_prefix(&self, upload: &str) -> String {
        format!("{}/berth/uploads/{upload}/", self.root())
    }

    /// The prefix of every object of every upload session.
    fn uploads_prefix(&self) -> String {
        format!("{}/berth/uploads/", self.root())
    }
}

/// One object of a listing.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Object {
    key: String,
    size: u64,
    etag: String,
    modified: String,
}

/// A client of the test's own that lists what a store holds, without going through Berth.
trait Listing {
    /// Every object whose key starts with `prefix`, sorted by key.
    async fn objects(&self, prefix: &str) -> Vec<Object>;

    /// The size of the object `key`, if it exists.
    async fn size_of(&self, key: &str) -> Option<u64> {
        self.objects(key)
            .await
            .into_iter()
            .find(|o| o.key == key)
            .map(|o| o.size)
    }
}

// ---------------------------------------------------------------------------------------------
// Garage, buckets and what Berth is told about them
// ---------------------------------------------------------------------------------------------

/// A Garage cluster owned by one test; the end of each node's log is printed if the test fails.
struct Cluster(Garage);

impl Cluster {
    fn start() -> Cluster {
        Cluster(blocking(Garage::start))
    }
}

impl std::ops::Deref for Cluster {
    type Target = Garage;
    fn deref(&self) -> &Garage {
        &self.0
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in 0..self.0.nodes() {
                eprintln!(
                    "--- Garage node {i} log (end) ---\n{}",
                    tail(&self.0.log(i), 30)
                );
            }
        }
    }
}

/// A bucket of the cluster and the key allowed on it.
#[derive(Clone, Debug)]
struct Bucket {
    endpoint: String,
    region: String,
    name: String,
    access_key: String,
    secret_key: String,
}

impl Bucket {
    /// The bucket `Garage::start` made.
    fn main(g: &Garage) -> Bucket {
        Bucket::named(g, g.bucket())
    }

    /// A new bucket of its own.
    fn create(g: &Garage, name: &str) -> Bucket {
        let name = blocking(|| g.create_bucket(name));
        Bucket::named(g, &name)
    }

    fn named(g: &Garage, name: &str) -> Bucket {
        Bucket {
            endpoint: g.endpoint(),
            region: g.region().to_string(),
            name: name.to_string(),
            access_key: g.access_key().to_string(),
            secret_key: g.secret_key().to_string(),
        }
    }

    /// The `s3:` section of a `storage:` mapping (indented for it), keeping everything below
    /// `root`. Every string is quoted: a secret that looks like a number would otherwise reach
    /// the driver as another string than the one requests must be signed with.
    fn s3_section(&self, root: &str) -> String {
        format!(
            "  s3:\n    accesskey: \"{}\"\n    secretkey: \"{}\"\n    region: \"{}\"\n    \
             regionendpoint: \"{}\"\n    bucket: \"{}\"\n    rootdirectory: \"{root}\"\n    \
             secure: false\n    v4auth: true\n    chunksize: {CHUNK_SIZE}\n    \
             multipartcopychunksize: {CHUNK_SIZE}\n",
            self.access_key, self.secret_key, self.region, self.endpoint, self.name
        )
    }
}

/// Where one registry keeps its data: a bucket and the `rootdirectory` within it.
#[derive(Clone, Debug)]
struct Site {
    bucket: Bucket,
    /// The key prefix (`rootdirectory` without its leading `/`).
    root: String,
}

impl Site {
    fn new(bucket: Bucket, root: &str) -> Site {
        Site {
            bucket,
            root: root.trim_matches('/').to_string(),
        }
    }

    /// Berth's configuration on this site.
    fn berth_config(&self, o: &Options) -> String {
        berth_config(&self.bucket.s3_section(&format!("/{}", self.root)), o)
    }
}

impl Store for Site {
    fn root(&self) -> &str {
        &self.root
    }

    fn origin(&self) -> String {
        self.bucket.endpoint.clone()
    }

    /// Path style: `/<bucket>/<key>`.
    fn url_path(&self, key: &str) -> String {
        format!("/{}/{key}", self.bucket.name)
    }

    fn signed(&self, query: &str) -> bool {
        query.contains("X-Amz-Signature=")
    }
}

/// Berth's configuration with `section` (one driver's mapping, indented for `storage:`, such as
/// [`Bucket::s3_section`] or [`Container::swift_section`]) as its storage.
fn berth_config(section: &str, o: &Options) -> String {
    let purging = match o.purging {
        Some((age, interval)) => format!(
            "      enabled: true\n      age: {age}\n      interval: {interval}\n      \
             dryrun: false\n"
        ),
        None => "      enabled: false\n".to_string(),
    };
    format!(
        "version: 0.1\nlog:\n  level: info\nstorage:\n{section}  delete:\n    enabled: true\n  \
         redirect:\n    disable: {disable}\n  maintenance:\n    uploadpurging:\n{purging}\
         sqlite:\n  path: \"{sqlite}\"\nhttp:\n  addr: 127.0.0.1:0\n",
        disable = !o.redirect,
        sqlite = o.sqlite.display(),
    )
}

/// What differs between the Berth configurations of these tests.
#[derive(Clone, Debug)]
struct Options {
    /// Redirect blob pulls to presigned URLs (Berth's default on S3, and on Swift with a
    /// `secretkey`); `redirect: disable: true` when false.
    redirect: bool,
    /// The metadata database file.
    sqlite: PathBuf,
    /// Upload purging's `age` and `interval`, when it is enabled.
    purging: Option<(&'static str, &'static str)>,
}

impl Options {
    fn new(dir: &Path) -> Options {
        Options {
            redirect: true,
            sqlite: dir.join("meta.db"),
            purging: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Berth processes
// ---------------------------------------------------------------------------------------------

/// A `berth serve <config.yml>` process; each run logs to a file of its own, and every run's log
/// is printed if the test fails.
struct Berth {
    reg: Registry,
    dir: PathBuf,
    name: String,
    config: PathBuf,
    runs: usize,
}

impl Berth {
    /// Writes `config` to `<dir>/<name>.yml` and starts Berth on it.
    fn start(dir: &Path, name: &str, config: &str) -> Berth {
        let path = dir.join(format!("{name}.yml"));
        std::fs::write(&path, config).expect("write the configuration");
        let reg = Berth::spawn(&path, &dir.join(format!("{name}-1.log")));
        Berth {
            reg,
            dir: dir.to_path_buf(),
            name: name.to_string(),
            config: path,
            runs: 1,
        }
    }

    fn spawn(config: &Path, log: &Path) -> Registry {
        let launch = Launch {
            args: vec![config.to_string_lossy().into_owned()],
            stderr: Some(log.to_path_buf()),
            keep_log_level: true,
            ..Launch::default()
        };
        blocking(|| Registry::launch(&launch)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn log_path(&self, run: usize) -> PathBuf {
        self.dir.join(format!("{}-{run}.log", self.name))
    }

    /// What every run has logged so far.
    fn logs(&self) -> String {
        (1..=self.runs)
            .map(|run| {
                let text = std::fs::read_to_string(self.log_path(run)).unwrap_or_default();
                format!("--- {} run {run} ---\n{text}", self.name)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// SIGKILL: a crash.
    fn kill(&mut self) {
        blocking(|| self.reg.kill());
    }

    /// Kills the process (if it runs) and starts it again on the same configuration.
    fn restart(&mut self) {
        self.kill();
        self.runs += 1;
        let log = self.log_path(self.runs);
        self.reg = Berth::spawn(&self.config, &log);
    }

    /// Kills the process and starts it again on another configuration.
    fn restart_with(&mut self, config: &str) {
        self.kill();
        std::fs::write(&self.config, config).expect("write the configuration");
        self.restart();
    }
}

impl std::ops::Deref for Berth {
    type Target = Registry;
    fn deref(&self) -> &Registry {
        &self.reg
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = self.logs();
            eprintln!("{}", tail(&logs, LOG_TAIL * self.runs));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A small S3 client of the test's own, to see what the bucket holds
// ---------------------------------------------------------------------------------------------

/// Signed requests to one bucket (path style, AWS signature version 4).
struct S3 {
    bucket: Bucket,
    signer: reqsign_core::Signer<reqsign_aws_v4::Credential>,
    http: Client,
}

impl S3 {
    fn new(bucket: &Bucket) -> S3 {
        S3 {
            bucket: bucket.clone(),
            signer: reqsign_core::Signer::new(
                reqsign_core::Context::new(),
                reqsign_aws_v4::StaticCredentialProvider::new(
                    &bucket.access_key,
                    &bucket.secret_key,
                ),
                reqsign_aws_v4::RequestSigner::new("s3", &bucket.region),
            ),
            http: Client::builder()
                .no_proxy()
                .build()
                .expect("reqwest client"),
        }
    }

    /// `GET /<bucket>?<query>`, signed; the body of a 200 answer.
    async fn get(&self, query: &[(&str, Option<&str>)]) -> String {
        let mut url = Url::parse(&format!("{}/{}", self.bucket.endpoint, self.bucket.name))
            .expect("bucket URL");
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in query {
                match v {
                    Some(v) => q.append_pair(k, v),
                    None => q.append_key_only(k),
                };
            }
        }
        let req = http::Request::builder()
            .method(http::Method::GET)
            .uri(url.as_str())
            .header(
                "x-amz-content-sha256",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            )
            .body(())
            .expect("request");
        let (mut parts, ()) = req.into_parts();
        self.signer
            .sign(&mut parts, None)
            .await
            .unwrap_or_else(|e| panic!("signing GET {url}: {e}"));
        let mut out = self.http.get(parts.uri.to_string());
        for (name, value) in &parts.headers {
            out = out.header(name, value);
        }
        let resp = out
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = resp.status();
        let body = resp.text().await.expect("S3 answer");
        assert_eq!(status, StatusCode::OK, "GET {url}: {body}");
        assert!(
            !body.contains("<IsTruncated>true</IsTruncated>"),
            "GET {url}: the listing is longer than one page"
        );
        body
    }

    /// The open (neither completed nor aborted) multipart uploads below `prefix`, as
    /// (key, upload id), sorted.
    async fn open_uploads(&self, prefix: &str) -> Vec<(String, String)> {
        let xml = self
            .get(&[("uploads", None), ("prefix", Some(prefix))])
            .await;
        let mut out: Vec<(String, String)> = elements(&xml, "Upload")
            .into_iter()
            .map(|u| (first(u, "Key"), first(u, "UploadId")))
            .collect();
        out.sort();
        out
    }
}

impl Listing for S3 {
    async fn objects(&self, prefix: &str) -> Vec<Object> {
        let xml = self
            .get(&[("list-type", Some("2")), ("prefix", Some(prefix))])
            .await;
        let mut out: Vec<Object> = elements(&xml, "Contents")
            .into_iter()
            .map(|c| Object {
                key: first(c, "Key"),
                size: first(c, "Size").parse().expect("object size"),
                etag: first(c, "ETag"),
                modified: first(c, "LastModified"),
            })
            .collect();
        out.sort();
        out
    }
}

/// The text inside every `<tag>…</tag>` of `xml` (no nesting of the same tag).
fn elements<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(&after[..j]);
        rest = &after[j + close.len()..];
    }
    out
}

/// The text of the first `<tag>` in `xml`, unescaped.
fn first(xml: &str, tag: &str) -> String {
    elements(xml, tag)
        .first()
        .unwrap_or_else(|| panic!("no <{tag}> in {xml}"))
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

// ---------------------------------------------------------------------------------------------
// Swift, containers and what Berth is told about them
// ---------------------------------------------------------------------------------------------

/// A Swift owned by one test; the end of each server's log is printed if the test fails.
struct SwiftCluster(Swift);

impl SwiftCluster {
    fn start() -> SwiftCluster {
        SwiftCluster(blocking(Swift::start))
    }
}

impl std::ops::Deref for SwiftCluster {
    type Target = Swift;
    fn deref(&self) -> &Swift {
        &self.0
    }
}

impl Drop for SwiftCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- Swift logs (end) ---\n{}", self.0.logs());
        }
    }
}

/// A container of the Swift's account (created for the test), the registry's root in it, and
/// what Berth authenticates with.
#[derive(Clone, Debug)]
struct Container {
    auth_url: String,
    username: String,
    password: String,
    /// The account's URL, `http://127.0.0.1:PORT/v1/AUTH_test`.
    storage_url: String,
    name: String,
    /// The key prefix (`prefix` without its leading `/`).
    root: String,
    /// The account's key for temporary URLs.
    temp_url_key: String,
}

impl Container {
    fn create(swift: &Swift, name: &str, root: &str) -> Container {
        let name = blocking(|| swift.create_container(name));
        Container {
            auth_url: swift.auth_url(),
            username: swift.username().to_string(),
            password: swift.password().to_string(),
            storage_url: swift.storage_url(),
            name,
            root: root.trim_matches('/').to_string(),
            temp_url_key: swift.temp_url_key().to_string(),
        }
    }

    /// The `swift:` section of a `storage:` mapping (indented for it); with `temp_urls`, the
    /// account's temporary URL key as `secretkey`, so that Berth can redirect pulls. Every string
    /// is quoted.
    fn swift_section(&self, temp_urls: bool) -> String {
        let mut out = format!(
            "  swift:\n    authurl: \"{}\"\n    username: \"{}\"\n    password: \"{}\"\n    \
             container: \"{}\"\n    prefix: \"/{}\"\n    chunksize: {CHUNK_SIZE}\n",
            self.auth_url, self.username, self.password, self.name, self.root
        );
        if temp_urls {
            out.push_str(&format!("    secretkey: \"{}\"\n", self.temp_url_key));
        }
        out
    }

    /// Berth's configuration on this container.
    fn berth_config(&self, temp_urls: bool, o: &Options) -> String {
        berth_config(&self.swift_section(temp_urls), o)
    }
}

impl Store for Container {
    fn root(&self) -> &str {
        &self.root
    }

    fn origin(&self) -> String {
        let u = Url::parse(&self.storage_url).expect("storage URL");
        format!(
            "{}://{}:{}",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port_or_known_default().unwrap_or(0)
        )
    }

    /// `/v1/<account>/<container>/<key>`.
    fn url_path(&self, key: &str) -> String {
        let u = Url::parse(&self.storage_url).expect("storage URL");
        format!("{}/{}/{key}", u.path().trim_end_matches('/'), self.name)
    }

    fn signed(&self, query: &str) -> bool {
        query.contains("temp_url_sig=") && query.contains("temp_url_expires=")
    }
}

/// Listings of one container (`GET <storage URL>/<container>?prefix=…&format=json` with a
/// token from tempauth).
struct SwiftListing {
    url: String,
    token: String,
    http: Client,
}

impl SwiftListing {
    fn new(swift: &Swift, container: &Container) -> SwiftListing {
        SwiftListing {
            url: format!("{}/{}", container.storage_url, container.name),
            token: blocking(|| swift.token()),
            http: plain(),
        }
    }

    /// Whether the object `key` is a static large object (a manifest of segments), by a HEAD.
    async fn is_large_object(&self, key: &str) -> bool {
        let url = format!("{}/{key}", self.url);
        let resp = self
            .http
            .head(&url)
            .header("x-auth-token", &self.token)
            .send()
            .await
            .unwrap_or_else(|e| panic!("HEAD {url}: {e}"));
        assert_eq!(resp.status(), StatusCode::OK, "HEAD {url}");
        header(&resp, "x-static-large-object").is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }
}

/// Swift's listing page size: a listing that long may have more.
const SWIFT_LISTING_LIMIT: usize = 10_000;

impl Listing for SwiftListing {
    async fn objects(&self, prefix: &str) -> Vec<Object> {
        let mut url = Url::parse(&self.url).expect("container URL");
        url.query_pairs_mut()
            .append_pair("prefix", prefix)
            .append_pair("format", "json");
        let resp = self
            .http
            .get(url.as_str())
            .header("x-auth-token", &self.token)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = resp.status();
        let body = resp.text().await.expect("Swift answer");
        assert!(
            status == StatusCode::OK || status == StatusCode::NO_CONTENT,
            "GET {url}: {status} {body}"
        );
        let list: Value = if body.is_empty() {
            Value::Array(Vec::new())
        } else {
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: {e}: {body}"))
        };
        let list = list.as_array().expect("a JSON listing");
        assert!(
            list.len() < SWIFT_LISTING_LIMIT,
            "GET {url}: the listing is longer than one page"
        );
        let text = |o: &Value, k: &str| o[k].as_str().unwrap_or_default().to_string();
        let mut out: Vec<Object> = list
            .iter()
            .map(|o| Object {
                key: text(o, "name"),
                size: o["bytes"].as_u64().expect("object size"),
                etag: text(o, "hash"),
                modified: text(o, "last_modified"),
            })
            .collect();
        out.sort();
        out
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP helpers
// ---------------------------------------------------------------------------------------------

/// A client that never follows redirects.
fn plain() -> Client {
    common::oci::client()
}

/// A client that follows redirects, as registry clients do.
fn following() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("reqwest client")
}

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        common::oci::header_of(&self.headers, name)
    }
}

async fn fetch(c: &Client, url: &str, range: Option<&str>) -> Answer {
    let mut req = c.get(url);
    if let Some(r) = range {
        req = req.header("range", r);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    Answer {
        status: resp.status(),
        headers: resp.headers().clone(),
        body: resp
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}")),
    }
}

async fn head_status(reg: &Registry, repo: &str, digest: &str) -> StatusCode {
    plain()
        .head(reg.url(&format!("/v2/{repo}/blobs/{digest}")))
        .send()
        .await
        .expect("HEAD blob")
        .status()
}

/// Pulls a blob the way a client does (following a redirect) and checks its bytes.
async fn assert_pulls(reg: &Registry, repo: &str, expected: &[u8]) {
    let digest = sha256(expected);
    let url = reg.url(&format!("/v2/{repo}/blobs/{digest}"));
    let a = fetch(&following(), &url, None).await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "GET {url} (redirects followed): {}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(a.body.len(), expected.len(), "length of {repo}@{digest}");
    assert!(a.body == expected, "content of {repo}@{digest}");
    let resp = plain().head(&url).send().await.expect("HEAD blob");
    assert_eq!(resp.status(), StatusCode::OK, "HEAD {url}");
    assert_eq!(
        header(&resp, "content-length"),
        Some(expected.len().to_string()),
        "Content-Length of HEAD {url}"
    );
    assert_eq!(
        header(&resp, "docker-content-digest").as_deref(),
        Some(digest.as_str())
    );
}

/// A blob GET answers 307 to a presigned URL of the blob's object in the store (a presigned
/// Garage URL, a Swift temporary URL; in Distribution's layout below the store's root), which
/// serves the bytes without credentials, a range included. Returns the URL.
async fn assert_redirects(reg: &Registry, store: &impl Store, repo: &str, data: &[u8]) -> String {
    let digest = sha256(data);
    let url = reg.url(&format!("/v2/{repo}/blobs/{digest}"));
    let a = fetch(&plain(), &url, None).await;
    assert_eq!(
        a.status,
        StatusCode::TEMPORARY_REDIRECT,
        "GET {url}: {}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(
        a.header("docker-content-digest").as_deref(),
        Some(digest.as_str())
    );
    let location = a
        .header("location")
        .unwrap_or_else(|| panic!("307 for {url} without a Location"));
    let u = Url::parse(&location).unwrap_or_else(|e| panic!("Location {location:?}: {e}"));
    assert_eq!(
        format!(
            "{}://{}:{}",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port_or_known_default().unwrap_or(0)
        ),
        store.origin(),
        "the redirect of {url} must go to the store's endpoint: {location}"
    );
    assert_eq!(
        u.path(),
        store.url_path(&store.blob_key(&digest)),
        "the redirect of {url} must name the blob's object: {location}"
    );
    assert!(
        u.query().is_some_and(|q| store.signed(q)),
        "the redirect of {url} is not presigned: {location}"
    );
    let whole = fetch(&plain(), &location, None).await;
    assert_eq!(
        whole.status,
        StatusCode::OK,
        "GET {location}: {}",
        String::from_utf8_lossy(&whole.body)
    );
    assert!(whole.body == data, "bytes behind the redirect of {url}");

    // A range beyond the end is refused by Berth itself.
    let beyond = format!("bytes={}-", data.len());
    let a = fetch(&plain(), &url, Some(&beyond)).await;
    assert_eq!(
        a.status,
        StatusCode::RANGE_NOT_SATISFIABLE,
        "GET {url} {beyond}"
    );

    // A range: Berth redirects (it checked the range against the blob's size), the client sends
    // the same Range header to the presigned URL.
    let (from, to) = (data.len() / 3, data.len() / 3 + data.len() / 4);
    let range = format!("bytes={from}-{to}");
    let a = fetch(&plain(), &url, Some(&range)).await;
    assert_eq!(
        a.status,
        StatusCode::TEMPORARY_REDIRECT,
        "GET {url} {range}"
    );
    let location = a.header("location").expect("Location of a range GET");
    let part = fetch(&plain(), &location, Some(&range)).await;
    assert_eq!(
        part.status,
        StatusCode::PARTIAL_CONTENT,
        "GET {location} {range}"
    );
    assert!(
        part.body == data[from..=to],
        "{range} behind the redirect of {url}"
    );
    // And the same as a client that follows redirects by itself does it, with a suffix range.
    let suffix = format!("bytes=-{}", data.len().min(100));
    let part = fetch(&following(), &url, Some(&suffix)).await;
    assert_eq!(
        part.status,
        StatusCode::PARTIAL_CONTENT,
        "GET {url} {suffix}"
    );
    assert!(
        part.body == data[data.len().saturating_sub(100)..],
        "{suffix} of {url} through the redirect"
    );
    location
}

/// A blob GET answers 200 with the bytes from Berth itself, and a range 206.
async fn assert_streams(reg: &Registry, repo: &str, data: &[u8]) {
    let digest = sha256(data);
    let url = reg.url(&format!("/v2/{repo}/blobs/{digest}"));
    let a = fetch(&plain(), &url, None).await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "GET {url} (redirects disabled): {}",
        String::from_utf8_lossy(&a.body)
    );
    assert!(a.header("location").is_none(), "GET {url}: a Location");
    assert!(a.body == data, "bytes of {url}");
    let (from, to) = (data.len() / 3, data.len() / 3 + data.len() / 4);
    let range = format!("bytes={from}-{to}");
    let part = fetch(&plain(), &url, Some(&range)).await;
    assert_eq!(
        part.status,
        StatusCode::PARTIAL_CONTENT,
        "GET {url} {range}"
    );
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes {from}-{to}/{}", data.len()))
    );
    assert!(part.body == data[from..=to], "{range} of {url}");
}

/// The upload id in a session URL (`.../blobs/uploads/<id>[?...]`).
fn upload_id(url: &str) -> String {
    let path = Url::parse(url).expect("session URL").path().to_string();
    path.rsplit('/').next().expect("upload id").to_string()
}

// ---------------------------------------------------------------------------------------------
// skopeo
// ---------------------------------------------------------------------------------------------

fn oci_ref(dir: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", dir.display())
}

/// Pushes a generated single-arch image and a multi-arch index to `host` with skopeo (as
/// `<namespace>/single:v1` and `<namespace>/multi:v1`), copies both back into new OCI layouts
/// and checks the digests and every blob's bytes. Returns the image and the index.
fn skopeo_round_trip(
    env: &Env,
    host: &str,
    namespace: &str,
    seed: u64,
) -> (image::Image, image::MultiArch) {
    let single = image::oci_image(seed, 3);
    let multi = image::oci_multi_arch(seed + 1);
    let single_src = env.path("single-src");
    let multi_src = env.path("multi-src");
    image::write_image_layout(&single_src, "v1", &single);
    image::write_multi_arch_layout(&multi_src, "v1", &multi);

    let pushed = env.skopeo_push(
        &[],
        &oci_ref(&single_src, "v1"),
        &format!("docker://{host}/{namespace}/single:v1"),
    );
    assert_eq!(pushed, single.manifest.digest, "digest skopeo pushed");
    let pushed = env.skopeo_push(
        &["--all"],
        &oci_ref(&multi_src, "v1"),
        &format!("docker://{host}/{namespace}/multi:v1"),
    );
    assert_eq!(pushed, multi.index.digest, "digest skopeo pushed");

    for (repo, src, all) in [("single", &single_src, false), ("multi", &multi_src, true)] {
        let repo = format!("{namespace}/{repo}");
        let back = env.path(&format!("{}-back", repo.replace('/', "-")));
        let mut c = env.skopeo();
        c.arg("copy");
        if all {
            c.arg("--all");
        }
        run(c.args([
            "--src-tls-verify=false",
            &format!("docker://{host}/{repo}:v1"),
            &oci_ref(&back, "v1"),
        ]));
        let source = image::read_oci_layout(src, "v1");
        let got = image::read_oci_layout(&back, "v1");
        assert_eq!(got.top_digest, source.top_digest, "{repo}:v1 digest");
        assert_eq!(got.top_media_type, source.top_media_type);
        assert_eq!(
            got.reachable.keys().collect::<Vec<_>>(),
            source.reachable.keys().collect::<Vec<_>>(),
            "{repo}:v1: the blobs copied back"
        );
        assert_eq!(got.reachable, source.reachable, "{repo}:v1: blob bytes");
    }
    (single, multi)
}

/// The configs and layers of what [`skopeo_round_trip`] pushed into `namespace`, with the
/// repository each was pushed to. (Manifests are blobs too in Distribution's layout, but a pull
/// of one goes through the manifest endpoint; only configs and layers are fetched as blobs.)
fn pulled_blobs<'a>(
    namespace: &str,
    single: &'a image::Image,
    multi: &'a image::MultiArch,
) -> Vec<(String, &'a Blob)> {
    let mut blobs: Vec<(String, &Blob)> = single
        .blobs()
        .into_iter()
        .map(|b| (format!("{namespace}/single"), b))
        .collect();
    blobs.extend(
        multi
            .blobs()
            .into_iter()
            .map(|b| (format!("{namespace}/multi"), b)),
    );
    blobs.retain(|(_, b)| b.media_type != image::OCI_MANIFEST);
    blobs
}

/// After [`skopeo_round_trip`] into `namespace`: every config and layer is pulled from Berth
/// (redirected to the store, or streamed by Berth itself when not `redirect`) and stored at its
/// key with its size, and the manifests are served by Berth.
async fn assert_round_trip_served(
    berth: &Registry,
    store: &impl Store,
    objects: &impl Listing,
    namespace: &str,
    redirect: bool,
    single: &image::Image,
    multi: &image::MultiArch,
) {
    for (repo, blob) in pulled_blobs(namespace, single, multi) {
        if redirect {
            assert_redirects(berth, store, &repo, &blob.data).await;
        } else {
            assert_streams(berth, &repo, &blob.data).await;
        }
        assert_pulls(berth, &repo, &blob.data).await;
        assert_eq!(
            objects.size_of(&store.blob_key(&blob.digest)).await,
            Some(blob.data.len() as u64),
            "the object of {repo}@{} in the store",
            blob.digest,
        );
    }
    // Manifests are always served by Berth itself.
    for (repo, reference, m) in [
        ("single", "v1", &single.manifest),
        ("multi", "v1", &multi.index),
        (
            "multi",
            multi.images[1].manifest.digest.as_str(),
            &multi.images[1].manifest,
        ),
    ] {
        let repo = format!("{namespace}/{repo}");
        let resp = plain()
            .get(berth.url(&format!("/v2/{repo}/manifests/{reference}")))
            .header(
                "accept",
                format!("{}, {}", image::OCI_MANIFEST, image::OCI_INDEX),
            )
            .send()
            .await
            .unwrap();
        let resp = check_status(resp, 200).await;
        assert_eq!(header(&resp, "content-type"), Some(m.media_type.clone()));
        assert!(resp.bytes().await.unwrap() == m.data, "{repo}:{reference}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn skopeo_round_trips_on_s3_with_and_without_redirect() {
    let garage = Cluster::start();
    let tmp = tempfile::tempdir().unwrap();
    for redirect in [true, false] {
        let (site, name) = if redirect {
            (Site::new(Bucket::main(&garage), "/registry"), "redirect")
        } else {
            let bucket = Bucket::create(&garage, "berth-streamed");
            (Site::new(bucket, "/registry"), "streamed")
        };
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let options = Options {
            redirect,
            ..Options::new(&dir)
        };
        let berth = Berth::start(&dir, "berth", &site.berth_config(&options));
        let env = Env::new();
        let host = berth.host();
        let seed = if redirect { 4100 } else { 4200 };
        let (single, multi) = blocking(|| skopeo_round_trip(&env, &host, "s3", seed));
        let s3 = S3::new(&site.bucket);
        assert_round_trip_served(&berth, &site, &s3, "s3", redirect, &single, &multi).await;
        // Nothing of the uploads is left in the bucket.
        assert_eq!(
            s3.objects(&site.uploads_prefix()).await,
            vec![],
            "upload data left in bucket {}",
            site.bucket.name
        );
        assert_eq!(
            s3.open_uploads("").await,
            vec![],
            "open multipart uploads in bucket {}",
            site.bucket.name
        );
    }
}

// ---------------------------------------------------------------------------------------------
// docker CLI
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_cli_round_trip_on_s3() {
    let env = Env::new();
    if !can_run(
        "docker_cli_round_trip_on_s3",
        env.docker_available(),
        "BERTH_SKIP_DOCKER",
    ) {
        return;
    }
    let garage = Cluster::start();
    let tmp = tempfile::tempdir().unwrap();
    let site = Site::new(Bucket::main(&garage), "/registry");
    let berth = Berth::start(
        tmp.path(),
        "berth",
        &site.berth_config(&Options::new(tmp.path())),
    );
    docker_round_trip(&env, &berth, &site, "s3", 4300).await;
}

/// docker import, push, rmi and pull of a generated root filesystem through Berth (pulls
/// redirected to `store`), then a docker pull of an OCI image pushed by skopeo. The images are
/// made from `seed` and `seed + 1`: tests running at the same time must use other seeds, lest
/// one's `docker rmi` remove the other's image.
async fn docker_round_trip(
    env: &Env,
    berth: &Registry,
    store: &impl Store,
    namespace: &str,
    seed: u64,
) {
    let host = berth.host();
    let unique = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let repo = format!("{namespace}/docker-{unique}");
    let name = format!("{host}/{repo}:v1");
    let mut images = DockerImages {
        env,
        refs: vec![name.clone()],
    };

    // docker import of a generated root filesystem, then push.
    let rootfs = env.path("rootfs.tar");
    std::fs::write(&rootfs, image::rootfs_tar(seed)).unwrap();
    let (id, pushed) = blocking(|| {
        let id = run(env
            .cmd("docker")
            .args(["import", rootfs.to_str().unwrap(), &name]))
        .trim()
        .to_string();
        let out = run(env.cmd("docker").args(["push", &name]));
        (id, parse_push_digest(&out))
    });
    assert!(id.starts_with("sha256:"), "docker import output: {id}");
    images.refs.push(id.clone());

    // The manifest Berth holds is the one docker pushed; its layer is in the store, and a pull
    // of it is redirected there.
    let manifest = fetch(
        &plain(),
        &berth.url(&format!("/v2/{repo}/manifests/v1")),
        None,
    )
    .await;
    assert_eq!(manifest.status, StatusCode::OK);
    assert_eq!(sha256(&manifest.body), pushed);
    let m: Value = serde_json::from_slice(&manifest.body).unwrap();
    assert_eq!(m["config"]["digest"], id.as_str());
    let layer_digest = m["layers"][0]["digest"].as_str().unwrap().to_string();
    let layer = fetch(
        &following(),
        &berth.url(&format!("/v2/{repo}/blobs/{layer_digest}")),
        None,
    )
    .await;
    assert_eq!(layer.status, StatusCode::OK);
    assert_eq!(sha256(&layer.body), layer_digest);
    assert_redirects(berth, store, &repo, &layer.body).await;
    let files: BTreeMap<String, Vec<u8>> = image::untar_files(&image::gunzip(&layer.body))
        .into_iter()
        .map(|(p, c)| (p.trim_start_matches("./").to_string(), c))
        .collect();
    for (path, content) in image::layer_files(seed, 0) {
        assert_eq!(
            files.get(&path),
            Some(&content),
            "{path} in the pushed layer"
        );
    }

    // Removed locally, pulled back: the daemon follows the redirects to the store.
    let want_repo_digest = format!("{host}/{repo}@{pushed}");
    blocking(|| {
        run(env.cmd("docker").args(["rmi", &name]));
        run_fails(env.cmd("docker").args(["image", "inspect", &id]));
        let out = run(env.cmd("docker").args(["pull", &name]));
        assert!(
            out.contains(&format!("Digest: {pushed}")),
            "docker pull output:\n{out}"
        );
        let inspect = docker_inspect(env, &name);
        assert_eq!(inspect["Id"], id.as_str(), "image id after the pull");
        assert!(
            repo_digests(&inspect).contains(&want_repo_digest),
            "RepoDigests after the pull: {}",
            inspect["RepoDigests"]
        );
        run(env.cmd("docker").args(["rmi", &name]));
    });

    // An OCI image pushed by skopeo, pulled by docker: its config is the image id.
    let img = image::oci_image(seed + 1, 2);
    let src = env.path("src");
    image::write_image_layout(&src, "v1", &img);
    let oci_name = format!("{host}/{repo}:oci");
    images.refs.push(oci_name.clone());
    blocking(|| {
        env.skopeo_push(&[], &oci_ref(&src, "v1"), &format!("docker://{oci_name}"));
        let out = run(env.cmd("docker").args(["pull", &oci_name]));
        assert!(
            out.contains(&format!("Digest: {}", img.manifest.digest)),
            "docker pull output:\n{out}"
        );
        let inspect = docker_inspect(env, &oci_name);
        assert_eq!(inspect["Id"], img.config.digest.as_str());
        run(env.cmd("docker").args(["rmi", &oci_name]));
    });
}

// ---------------------------------------------------------------------------------------------
// Raw uploads
// ---------------------------------------------------------------------------------------------

/// What [`upload_shapes`] left.
struct Uploaded {
    /// The ids of the upload sessions it finished.
    finished: Vec<String>,
    /// The session whose finish was refused (a wrong digest); still open.
    refused: String,
    /// The content of every blob it published (the empty blob included).
    blobs: Vec<Vec<u8>>,
}

/// Uploads of every shape to `<namespace>/uploads`, through Berth on `store`: monolithic PUT,
/// single POST ?digest=, three uneven PATCHes (one of more than a part), PATCH then PUT with
/// the last chunk, the empty blob, a cross-repository mount to `<namespace>/mounted`, and a
/// wrong digest refused (400 DIGEST_INVALID, nothing served). Every blob pulls back whole,
/// redirected to the store, and is at its key there; no finished upload left data behind.
async fn upload_shapes(
    berth: &Registry,
    store: &impl Store,
    objects: &impl Listing,
    namespace: &str,
) -> Uploaded {
    let repo = format!("{namespace}/uploads");
    let repo = repo.as_str();
    let mounted = format!("{namespace}/mounted");
    let mut finished = Vec::new();

    // 1. Monolithic: POST, then PUT ?digest= with the whole body (a multipart upload of two
    //    parts on S3, published by a multipart copy; a large object of two segments on Swift,
    //    published by a server-side copy).
    let mono = image::random_bytes(4401, 7 * MIB + 123);
    let digest = sha256(&mono);
    let url = start_upload(berth, repo).await;
    finished.push(upload_id(&url));
    let resp = check_status(finish_upload(&url, &digest, Some(&mono), None).await, 201).await;
    assert_eq!(must_header(&resp, "docker-content-digest"), digest);
    assert_eq!(
        common::oci::path_only(berth, &must_header(&resp, "location")),
        format!("/v2/{repo}/blobs/{digest}")
    );

    // 2. A single POST ?digest= (just over one part).
    let single = image::random_bytes(4402, CHUNK_SIZE + 3);
    let digest = sha256(&single);
    let resp = check_status(post_blob(berth, repo, &digest, single.clone()).await, 201).await;
    assert_eq!(must_header(&resp, "docker-content-digest"), digest);

    // 3. Chunked: three PATCHes of uneven sizes with Content-Range, then a PUT without body.
    let sizes = [6 * MIB, MIB, 700 * 1024];
    let chunked = image::random_bytes(4403, sizes.iter().sum());
    let digest = sha256(&chunked);
    let mut url = start_upload(berth, repo).await;
    finished.push(upload_id(&url));
    let mut offset = 0;
    for size in sizes {
        url = patch_ok(
            berth,
            &url,
            &chunked[offset..offset + size],
            Some(offset as u64),
        )
        .await;
        offset += size;
    }
    let resp = check_status(upload_status(&url).await, 204).await;
    assert_eq!(
        must_header(&resp, "range"),
        format!("0-{}", chunked.len() - 1)
    );
    let resp = check_status(finish_upload(&url, &digest, None, None).await, 201).await;
    assert_eq!(must_header(&resp, "docker-content-digest"), digest);

    // 4. Chunked with the last chunk on the PUT.
    let tailed = image::random_bytes(4404, 5 * MIB + 4321);
    let digest = sha256(&tailed);
    let url = start_upload(berth, repo).await;
    finished.push(upload_id(&url));
    let url = patch_ok(berth, &url, &tailed[..3 * MIB], Some(0)).await;
    let resp = finish_upload(
        &url,
        &digest,
        Some(&tailed[3 * MIB..]),
        Some(3 * MIB as u64),
    )
    .await;
    check_status(resp, 201).await;

    // 5. An empty blob (a single POST ?digest= without a body), and a cross-repository mount.
    let empty = sha256(b"");
    check_status(post_blob(berth, repo, &empty, Vec::new()).await, 201).await;
    let mount = format!(
        "/v2/{mounted}/blobs/uploads/?mount={}&from={repo}",
        sha256(&chunked)
    );
    let resp = plain()
        .post(berth.url(&mount))
        .header("content-length", "0")
        .send()
        .await
        .expect("POST mount");
    check_status(resp, 201).await;

    // 6. A wrong digest on finish: 400 DIGEST_INVALID, and neither digest becomes a blob.
    let wrong_data = image::random_bytes(4405, 6 * MIB + 10);
    let claimed = sha256(b"not these bytes");
    let url = start_upload(berth, repo).await;
    let url = patch_ok(berth, &url, &wrong_data[..5 * MIB], Some(0)).await;
    let refused = patch_ok(berth, &url, &wrong_data[5 * MIB..], Some(5 * MIB as u64)).await;
    expect_error(
        finish_upload(&refused, &claimed, None, None).await,
        400,
        "DIGEST_INVALID",
    )
    .await;
    // ... and as a single POST ?digest=.
    expect_error(
        post_blob(berth, repo, &claimed, wrong_data.clone()).await,
        400,
        "DIGEST_INVALID",
    )
    .await;
    for d in [&claimed, &sha256(&wrong_data)] {
        assert_eq!(
            head_status(berth, repo, d).await,
            StatusCode::NOT_FOUND,
            "HEAD {d}"
        );
        assert_eq!(
            fetch(&plain(), &berth.url(&format!("/v2/{repo}/blobs/{d}")), None)
                .await
                .status,
            StatusCode::NOT_FOUND,
            "GET {d}"
        );
        assert_eq!(
            objects.size_of(&store.blob_key(d)).await,
            None,
            "object of {d}"
        );
    }

    // Every blob pulls back whole, is at its key in the store, and no upload it came from left
    // data behind.
    for data in [&mono, &single, &chunked, &tailed] {
        assert_pulls(berth, repo, data).await;
        assert_redirects(berth, store, repo, data).await;
        assert_eq!(
            objects.size_of(&store.blob_key(&sha256(data))).await,
            Some(data.len() as u64)
        );
    }
    assert_pulls(berth, repo, b"").await;
    assert_eq!(objects.size_of(&store.blob_key(&empty)).await, Some(0));
    assert_pulls(berth, &mounted, &chunked).await;
    assert_redirects(berth, store, &mounted, &chunked).await;
    for id in &finished {
        assert_eq!(
            objects.objects(&store.upload_prefix(id)).await,
            vec![],
            "data of the finished upload {id}"
        );
    }
    Uploaded {
        finished,
        refused,
        blobs: vec![mono, single, chunked, tailed, Vec::new()],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunked_and_monolithic_uploads_on_s3() {
    let garage = Cluster::start();
    let tmp = tempfile::tempdir().unwrap();
    let site = Site::new(Bucket::main(&garage), "/registry");
    let berth = Berth::start(
        tmp.path(),
        "berth",
        &site.berth_config(&Options::new(tmp.path())),
    );
    let s3 = S3::new(&site.bucket);
    upload_shapes(&berth, &site, &s3, "s3").await;
    assert_eq!(
        s3.open_uploads("").await,
        vec![],
        "open multipart uploads after every write finished or failed"
    );
}

// ---------------------------------------------------------------------------------------------
// Two instances on one bucket and one SQLite file
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunked_upload_started_on_one_instance_finished_on_another() {
    let garage = Cluster::start();
    let tmp = tempfile::tempdir().unwrap();
    let site = Site::new(Bucket::main(&garage), "/registry");
    let config = site.berth_config(&Options::new(tmp.path()));
    let mut a = Berth::start(tmp.path(), "a", &config);
    let b = Berth::start(tmp.path(), "b", &config);
    let repo = "s3/hop";

    // POST + PATCH on A; PATCH + PUT (with a last chunk) on B.
    let data = image::random_bytes(4501, 6 * MIB + 2 * MIB + 300 * 1024);
    let digest = sha256(&data);
    let (first, second) = (6 * MIB, 8 * MIB);
    let url = start_upload(&a, repo).await;
    let url = patch_ok(&a, &url, &data[..first], Some(0)).await;
    let url_b = on_instance(&b, &url);
    let resp = check_status(upload_status(&url_b).await, 204).await;
    assert_eq!(must_header(&resp, "range"), format!("0-{}", first - 1));
    let url_b = patch_ok(&b, &url_b, &data[first..second], Some(first as u64)).await;
    let resp = finish_upload(&url_b, &digest, Some(&data[second..]), Some(second as u64)).await;
    let resp = check_status(resp, 201).await;
    assert_eq!(must_header(&resp, "docker-content-digest"), digest);
    for reg in [&a, &b] {
        assert_pulls(reg, repo, &data).await;
        assert_redirects(reg, &site, repo, &data).await;
    }
    for reg in [&a, &b] {
        expect_error(
            upload_status(&on_instance(reg, &url_b)).await,
            404,
            "BLOB_UPLOAD_UNKNOWN",
        )
        .await;
    }

    // POST + PATCH on A, A killed with SIGKILL; B carries on and finishes.
    let data = image::random_bytes(4502, 5 * MIB + MIB / 2 + MIB + 77);
    let digest = sha256(&data);
    let first = 5 * MIB + MIB / 2;
    let url = start_upload(&a, repo).await;
    let url = patch_ok(&a, &url, &data[..first], Some(0)).await;
    a.kill();
    let url_b = on_instance(&b, &url);
    let resp = check_status(upload_status(&url_b).await, 204).await;
    assert_eq!(must_header(&resp, "range"), format!("0-{}", first - 1));
    let url_b = patch_ok(&b, &url_b, &data[first..], Some(first as u64)).await;
    let resp = check_status(finish_upload(&url_b, &digest, None, None).await, 201).await;
    assert_eq!(must_header(&resp, "docker-content-digest"), digest);
    assert_pulls(&b, repo, &data).await;
    a.restart();
    assert_pulls(&a, repo, &data).await;
    assert_redirects(&a, &site, repo, &data).await;

    let s3 = S3::new(&site.bucket);
    for id in [upload_id(&url), upload_id(&url_b)] {
        assert_eq!(s3.objects(&site.upload_prefix(&id)).await, vec![]);
    }
}

// ---------------------------------------------------------------------------------------------
// SIGKILL in the middle of a multipart upload
// ---------------------------------------------------------------------------------------------

/// A request body that sends `data[..fast]` at once, then tells the test (`reached`) and
/// trickles the rest (64 KiB every 200 ms), so the server is still reading it when it is killed.
fn stalling_body(
    data: Bytes,
    fast: usize,
    reached: tokio::sync::oneshot::Sender<()>,
) -> reqwest::Body {
    let stream = futures::stream::unfold((0usize, Some(reached)), move |(pos, mut reached)| {
        let data = data.clone();
        async move {
            if pos >= data.len() {
                return None;
            }
            let end = if pos < fast {
                (pos + 256 * 1024).min(fast)
            } else {
                if let Some(tx) = reached.take() {
                    let _ = tx.send(());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                (pos + 64 * 1024).min(data.len())
            };
            Some((
                Ok::<Bytes, std::io::Error>(data.slice(pos..end)),
                (end, reached),
            ))
        }
    });
    reqwest::Body::wrap_stream(stream)
}

/// Waits until `cond` holds of the bucket's open multipart uploads below `prefix`; returns them.
async fn wait_for_uploads(
    s3: &S3,
    prefix: &str,
    what: &str,
    cond: impl Fn(&[(String, String)]) -> bool,
) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let open = s3.open_uploads(prefix).await;
        if cond(&open) {
            return open;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: open multipart uploads below {prefix:?} are {open:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How many unfinished multipart uploads `garage bucket info` counts in `bucket` (it prints the
/// line only when there are some).
fn garage_unfinished(garage: &Garage, bucket: &str) -> u64 {
    let info = blocking(|| garage.cli(&["bucket", "info", bucket]));
    info.lines()
        .find_map(|l| {
            let rest = l.trim().strip_prefix("Unfinished uploads:")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

/// Waits until Garage's count of unfinished multipart uploads in `bucket` (a counter it updates
/// in the background) satisfies `cond`.
async fn wait_for_garage_count(garage: &Garage, bucket: &str, what: &str, cond: fn(u64) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = garage_unfinished(garage, bucket);
        if cond(n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: `garage bucket info {bucket}` counts {n} unfinished multipart uploads"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_during_a_multipart_upload_leaves_nothing_and_stale_parts_are_purged() {
    let garage = Cluster::start();
    let tmp = tempfile::tempdir().unwrap();
    let site = Site::new(Bucket::main(&garage), "/registry");
    let options = Options::new(tmp.path());
    let mut berth = Berth::start(tmp.path(), "berth", &site.berth_config(&options));
    let s3 = S3::new(&site.bucket);
    let repo = "s3/crash";
    let data = Bytes::from(image::random_bytes(4601, 40 * MIB));
    let digest = sha256(&data);

    // A 40 MiB PATCH: 16 MiB at once (parts of a multipart upload on S3), then a trickle.
    let url = start_upload(&berth, repo).await;
    let id = upload_id(&url);
    let (tx, reached) = tokio::sync::oneshot::channel();
    let req = following()
        .patch(&url)
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("0-{}", data.len() - 1))
        .header("content-length", data.len().to_string())
        .body(stalling_body(data.clone(), 16 * MIB, tx));
    let mut inflight = tokio::spawn(req.send());
    tokio::select! {
        _ = reached => {}
        r = &mut inflight => panic!("the PATCH ended before its body was sent: {r:?}"),
    }
    // Berth is mid-multipart once S3 holds an open upload of a part of this session.
    let prefix = site.upload_prefix(&id);
    let open = wait_for_uploads(&s3, &prefix, "before the kill", |open| !open.is_empty()).await;
    assert!(
        !inflight.is_finished(),
        "the PATCH was answered before its body was complete: {:?}",
        inflight.await
    );
    berth.kill();
    if let Ok(resp) = inflight.await.expect("PATCH task") {
        assert!(
            !resp.status().is_success(),
            "the interrupted PATCH was acknowledged: {}",
            resp.status()
        );
    }
    wait_for_garage_count(&garage, &site.bucket.name, "after the kill", |n| n >= 1).await;

    // Restarted on the same configuration: nothing of the interrupted write is visible.
    berth.restart();
    assert_eq!(
        head_status(&berth, repo, &digest).await,
        StatusCode::NOT_FOUND
    );
    let session = on_instance(&berth, &url);
    let resp = check_status(upload_status(&session).await, 204).await;
    assert_eq!(
        must_header(&resp, "range"),
        "0-0",
        "the session acknowledged nothing"
    );
    assert_eq!(
        s3.open_uploads(&prefix).await,
        open,
        "the multipart upload the crash left open"
    );

    // A retry of the whole upload succeeds.
    let retry = start_upload(&berth, repo).await;
    let retry = patch_ok(&berth, &retry, &data, Some(0)).await;
    let resp = check_status(finish_upload(&retry, &digest, None, None).await, 201).await;
    assert_eq!(must_header(&resp, "docker-content-digest"), digest);
    assert_pulls(&berth, repo, &data).await;
    assert_eq!(
        s3.open_uploads("").await,
        open,
        "only the crash's multipart upload is open after the retry"
    );

    // Upload purging with a short age aborts the open multipart upload and removes the
    // abandoned session; the published blob stays.
    let purging = Options {
        purging: Some(("1s", "2s")),
        ..options.clone()
    };
    berth.restart_with(&site.berth_config(&purging));
    wait_for_uploads(&s3, "", "after purging", |open| open.is_empty()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = upload_status(&on_instance(&berth, &url)).await.status();
        if status == StatusCode::NOT_FOUND {
            break;
        }
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert!(
            Instant::now() < deadline,
            "the abandoned session was not purged"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        s3.objects(&prefix).await,
        vec![],
        "data of the purged session"
    );
    assert_pulls(&berth, repo, &data).await;
    assert_redirects(&berth, &site, repo, &data).await;

    // Garage's own count agrees.
    wait_for_garage_count(&garage, &site.bucket.name, "after purging", |n| n == 0).await;
}

// ---------------------------------------------------------------------------------------------
// A bucket written by Distribution
// ---------------------------------------------------------------------------------------------

/// Debian's `docker-registry` (Distribution 2.8) with its `s3` driver on a site.
fn distribution_on(site: &Site, dir: &Path) -> Distribution {
    let storage = format!(
        "{}  redirect:\n    disable: true\n",
        site.bucket.s3_section(&format!("/{}", site.root))
    );
    Distribution::start(dir, &storage, "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn taking_over_a_bucket_written_by_distribution_s3() {
    let garage = Cluster::start();
    let tmp = tempfile::tempdir().unwrap();
    let site = Site::new(Bucket::main(&garage), "/distribution");
    let s3 = S3::new(&site.bucket);
    let env = Env::new();

    // Distribution writes the bucket: a single-arch image under two tags, a multi-arch index.
    let single = image::oci_image(4701, 2);
    let multi = image::oci_multi_arch(4702);
    let single_src = env.path("single-src");
    let multi_src = env.path("multi-src");
    image::write_image_layout(&single_src, "v1", &single);
    image::write_multi_arch_layout(&multi_src, "v1", &multi);
    let mut dist = distribution_on(&site, tmp.path());
    let host = dist.host.clone();
    blocking(|| {
        for (extra, src, dest, want) in [
            (
                &[][..],
                &single_src,
                "lib/single:v1",
                &single.manifest.digest,
            ),
            (
                &[][..],
                &single_src,
                "lib/single:v2",
                &single.manifest.digest,
            ),
            (
                &["--all"][..],
                &multi_src,
                "lib/multi:v1",
                &multi.index.digest,
            ),
        ] {
            let got = env.skopeo_push(
                extra,
                &oci_ref(src, "v1"),
                &format!("docker://{host}/{dest}"),
            );
            assert_eq!(&got, want, "digest of {dest} pushed to Distribution");
        }
    });
    dist.stop();
    let blobs_prefix = format!("{}/docker/registry/v2/blobs/", site.root);
    let before = s3.objects(&blobs_prefix).await;
    let keys: BTreeSet<String> = before.iter().map(|o| o.key.clone()).collect();
    let mut expected: Vec<&Blob> = vec![&single.manifest, &multi.index];
    expected.extend(single.blobs());
    expected.extend(multi.blobs());
    for b in &expected {
        assert!(
            keys.contains(&site.blob_key(&b.digest)),
            "Distribution did not store {} at {}; the bucket holds {keys:?}",
            b.digest,
            site.blob_key(&b.digest)
        );
    }

    // Berth on the same s3 section imports the tree on start and serves it in place.
    let berth = Berth::start(
        tmp.path(),
        "berth",
        &site.berth_config(&Options::new(tmp.path())),
    );
    assert!(
        berth.logs().contains("import finished: 2 repositories")
            && berth.logs().contains("; 0 skipped"),
        "Berth did not import the Distribution tree:\n{}",
        berth.logs()
    );
    let catalog = fetch(&plain(), &berth.url("/v2/_catalog"), None).await;
    let catalog: Value = serde_json::from_slice(&catalog.body).expect("catalog JSON");
    assert_eq!(
        catalog["repositories"],
        serde_json::json!(["lib/multi", "lib/single"])
    );
    for (repo, tags) in [("lib/single", vec!["v1", "v2"]), ("lib/multi", vec!["v1"])] {
        let list = fetch(&plain(), &berth.url(&format!("/v2/{repo}/tags/list")), None).await;
        let list: Value = serde_json::from_slice(&list.body).expect("tags JSON");
        assert_eq!(list["tags"], serde_json::json!(tags), "tags of {repo}");
    }
    let accept = format!("{}, {}", image::OCI_MANIFEST, image::OCI_INDEX);
    let mut references = vec![
        ("lib/single", "v1".to_string(), &single.manifest),
        ("lib/single", "v2".to_string(), &single.manifest),
        (
            "lib/single",
            single.manifest.digest.clone(),
            &single.manifest,
        ),
        ("lib/multi", "v1".to_string(), &multi.index),
        ("lib/multi", multi.index.digest.clone(), &multi.index),
    ];
    for img in &multi.images {
        references.push(("lib/multi", img.manifest.digest.clone(), &img.manifest));
    }
    for (repo, reference, m) in &references {
        let resp = plain()
            .get(berth.url(&format!("/v2/{repo}/manifests/{reference}")))
            .header("accept", &accept)
            .send()
            .await
            .unwrap();
        let resp = check_status(resp, 200).await;
        assert_eq!(
            header(&resp, "content-type"),
            Some(m.media_type.clone()),
            "{repo}:{reference}"
        );
        assert!(resp.bytes().await.unwrap() == m.data, "{repo}:{reference}");
    }
    for b in single.blobs() {
        assert_redirects(&berth, &site, "lib/single", &b.data).await;
    }
    for img in &multi.images {
        for b in img.blobs() {
            assert_redirects(&berth, &site, "lib/multi", &b.data).await;
        }
    }

    // skopeo copies both back out of Berth.
    let host = berth.host();
    blocking(|| {
        for (repo, src, all) in [("single", &single_src, false), ("multi", &multi_src, true)] {
            let back = env.path(&format!("{repo}-back"));
            let mut c = env.skopeo();
            c.arg("copy");
            if all {
                c.arg("--all");
            }
            run(c.args([
                "--src-tls-verify=false",
                &format!("docker://{host}/lib/{repo}:v1"),
                &oci_ref(&back, "v1"),
            ]));
            let source = image::read_oci_layout(src, "v1");
            let got = image::read_oci_layout(&back, "v1");
            assert_eq!(
                got.top_digest, source.top_digest,
                "lib/{repo}:v1 from Berth"
            );
            assert_eq!(
                got.reachable, source.reachable,
                "lib/{repo}:v1 blobs from Berth"
            );
        }
        // And Berth keeps writing the taken-over bucket.
        let got = env.skopeo_push(
            &[],
            &oci_ref(&single_src, "v1"),
            &format!("docker://{host}/lib/single:v3"),
        );
        assert_eq!(got, single.manifest.digest);
    });

    // In place: not one blob object was copied, rewritten or added.
    assert_eq!(
        s3.objects(&blobs_prefix).await,
        before,
        "the blob objects Distribution wrote"
    );
}

// ---------------------------------------------------------------------------------------------
// OpenStack Swift
// ---------------------------------------------------------------------------------------------

/// Nothing of an upload is left in the container: no object below the uploads prefix, and no
/// segment of a large object but those of the published blobs among `blobs` (a blob published
/// by a server-side copy of a large upload part is an ordinary object: the part's segments went
/// with the part). A blob is a large object exactly when it has segments, and they add up to its
/// size.
async fn assert_nothing_left_on_swift(
    listing: &SwiftListing,
    container: &Container,
    blobs: &[&[u8]],
) {
    assert_eq!(
        listing.objects(&container.uploads_prefix()).await,
        vec![],
        "upload data left in container {}",
        container.name
    );
    let segments = listing.objects(".segments/").await;
    let of_uploads = format!(".segments/{}", container.uploads_prefix());
    let of_uploads: Vec<&Object> = segments
        .iter()
        .filter(|o| o.key.starts_with(of_uploads.trim_end_matches('/')))
        .collect();
    assert_eq!(
        of_uploads,
        Vec::<&Object>::new(),
        "segments of upload parts left in container {}",
        container.name
    );
    let mut sizes: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for data in blobs {
        let key = container.blob_key(&sha256(data));
        if listing.is_large_object(&key).await {
            sizes.insert(key, (0, data.len() as u64));
        }
    }
    for o in &segments {
        let owner = blobs.iter().find_map(|data| {
            let key = container.blob_key(&sha256(data));
            o.key
                .starts_with(&format!(".segments/{key}"))
                .then_some((key, data.len() as u64))
        });
        let Some((key, len)) = owner else {
            panic!(
                "segment {} belongs to no published blob; the container's segments are \
                 {segments:#?}",
                o.key
            );
        };
        let Some((sum, _)) = sizes.get_mut(&key) else {
            panic!(
                "segment {} of {key}, which is an ordinary object ({len} bytes)",
                o.key
            );
        };
        *sum += o.size;
    }
    for (key, (sum, len)) in sizes {
        assert_eq!(sum, len, "the segments of the large object {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn skopeo_round_trips_on_swift_with_and_without_redirect() {
    let swift = SwiftCluster::start();
    let tmp = tempfile::tempdir().unwrap();
    for redirect in [true, false] {
        let name = if redirect { "redirect" } else { "streamed" };
        let container = Container::create(&swift, &format!("berth-{name}"), "/registry");
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let options = Options {
            redirect,
            ..Options::new(&dir)
        };
        // The temporary URL key either way: with `redirect: disable: true`, Berth streams
        // although it could sign.
        let mut berth = Berth::start(&dir, "berth", &container.berth_config(true, &options));
        let env = Env::new();
        let host = berth.host();
        let seed = if redirect { 4150 } else { 4250 };
        let (single, multi) = blocking(|| skopeo_round_trip(&env, &host, "swift", seed));
        let listing = SwiftListing::new(&swift, &container);
        assert_round_trip_served(
            &berth, &container, &listing, "swift", redirect, &single, &multi,
        )
        .await;
        let mut stored: Vec<&[u8]> = vec![&single.manifest.data, &multi.index.data];
        stored.extend(single.blobs().iter().map(|b| &b.data[..]));
        stored.extend(multi.blobs().iter().map(|b| &b.data[..]));
        assert_nothing_left_on_swift(&listing, &container, &stored).await;

        if !redirect {
            // Redirects enabled but no `secretkey`: nothing to sign temporary URLs with, so
            // Berth streams as well.
            let unsigned = Options {
                redirect: true,
                ..options.clone()
            };
            berth.restart_with(&container.berth_config(false, &unsigned));
            for (repo, blob) in pulled_blobs("swift", &single, &multi) {
                assert_streams(&berth, &repo, &blob.data).await;
                assert_pulls(&berth, &repo, &blob.data).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_cli_round_trip_on_swift() {
    let env = Env::new();
    if !can_run(
        "docker_cli_round_trip_on_swift",
        env.docker_available(),
        "BERTH_SKIP_DOCKER",
    ) {
        return;
    }
    let swift = SwiftCluster::start();
    let tmp = tempfile::tempdir().unwrap();
    let container = Container::create(&swift, "berth", "/registry");
    let berth = Berth::start(
        tmp.path(),
        "berth",
        &container.berth_config(true, &Options::new(tmp.path())),
    );
    docker_round_trip(&env, &berth, &container, "swift", 4350).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunked_and_monolithic_uploads_on_swift() {
    let swift = SwiftCluster::start();
    let tmp = tempfile::tempdir().unwrap();
    let container = Container::create(&swift, "berth", "/registry");
    let berth = Berth::start(
        tmp.path(),
        "berth",
        &container.berth_config(true, &Options::new(tmp.path())),
    );
    let listing = SwiftListing::new(&swift, &container);
    let mut uploaded = upload_shapes(&berth, &container, &listing, "swift").await;

    // A part of more than one segment is a large object while its session is open. Its blob is
    // published by a server-side copy, as an ordinary object, and the part goes with its
    // segments.
    let repo = "swift/uploads";
    let data = image::random_bytes(4406, 6 * MIB + 1);
    let digest = sha256(&data);
    let url = start_upload(&berth, repo).await;
    let id = upload_id(&url);
    let url = patch_ok(&berth, &url, &data, Some(0)).await;
    let parts = listing.objects(&container.upload_prefix(&id)).await;
    assert_eq!(parts.len(), 1, "the parts of upload {id}: {parts:?}");
    assert!(
        listing.is_large_object(&parts[0].key).await,
        "the part {} of {} bytes is not a large object",
        parts[0].key,
        data.len()
    );
    let of_part = format!(".segments/{}", parts[0].key);
    let segments = listing.objects(&of_part).await;
    assert_eq!(
        segments.iter().map(|o| o.size).collect::<Vec<_>>(),
        vec![CHUNK_SIZE as u64, (data.len() - CHUNK_SIZE) as u64],
        "the segments of the part {}",
        parts[0].key
    );
    let resp = check_status(finish_upload(&url, &digest, None, None).await, 201).await;
    assert_eq!(must_header(&resp, "docker-content-digest"), digest);
    assert_pulls(&berth, repo, &data).await;
    assert_redirects(&berth, &container, repo, &data).await;
    assert!(
        !listing.is_large_object(&container.blob_key(&digest)).await,
        "the blob published by a copy of a large part is a large object"
    );
    assert_eq!(listing.objects(&container.upload_prefix(&id)).await, vec![]);
    assert_eq!(
        listing.objects(&of_part).await,
        vec![],
        "the segments of the deleted part {}",
        parts[0].key
    );
    uploaded.finished.push(id);
    uploaded.blobs.push(data);

    // The session whose finish was refused still holds its parts; cancelled, it holds nothing.
    let refused = upload_id(&uploaded.refused);
    assert_ne!(
        listing.objects(&container.upload_prefix(&refused)).await,
        vec![],
        "the parts of the refused upload {refused}"
    );
    let resp = plain()
        .delete(&uploaded.refused)
        .send()
        .await
        .expect("DELETE upload");
    check_status(resp, 204).await;
    let blobs: Vec<&[u8]> = uploaded.blobs.iter().map(|b| &b[..]).collect();
    assert_nothing_left_on_swift(&listing, &container, &blobs).await;
    for id in uploaded.finished.iter().chain([&refused]) {
        expect_error(
            upload_status(&berth.url(&format!("/v2/swift/uploads/blobs/uploads/{id}"))).await,
            404,
            "BLOB_UPLOAD_UNKNOWN",
        )
        .await;
    }
}
