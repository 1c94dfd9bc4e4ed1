//! Berth on S3. Every test starts a real three-node Garage cluster (`common/garage.rs`) and points
//! Berth's `storage.s3` section at one of its buckets, with the metadata in a local SQLite file
//! (`sqlite.path`). Real clients (skopeo, the docker CLI, Distribution's `docker-registry`) and
//! raw OCI requests go through it: pulls redirected to presigned Garage URLs or streamed through
//! Berth, monolithic and chunked uploads (parts of S3 multipart uploads), an upload moved between
//! two instances sharing the bucket and the SQLite file, a SIGKILL in the middle of a multipart
//! upload and the purging of what it left open, and a bucket written by Distribution taken over
//! in place.
//!
//! What the bucket holds is read with a small S3 client of the test's own ([`S3`]), so listings
//! do not go through Berth. When a test fails, the log of every Berth (and Distribution) process
//! it started and the end of each Garage node's log are printed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cli::{can_run, parse_push_digest, run, run_fails, Env};
use common::garage::Garage;
use common::image::{self, Blob};
use common::oci::{
    check_status, expect_error, finish_upload, header, must_header, on_instance, patch_ok,
    post_blob, start_upload, upload_status,
};
use common::{sha256, Launch, Registry};
use reqwest::{Client, StatusCode, Url};
use serde_json::Value;

const MIB: usize = 1024 * 1024;
/// The part size of Berth's (and Distribution's) multipart uploads: S3's minimum.
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

    /// The object key of a blob: Distribution's layout below the root.
    fn blob_key(&self, digest: &str) -> String {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        format!(
            "{}/docker/registry/v2/blobs/sha256/{}/{hex}/data",
            self.root,
            &hex[..2]
        )
    }

    /// The prefix of every object of one upload session.
    fn upload_prefix(&self, upload: &str) -> String {
        format!("{}/berth/uploads/{upload}/", self.root)
    }

    /// Berth's configuration on this site.
    fn berth_config(&self, o: &Options) -> String {
        let purging = match o.purging {
            Some((age, interval)) => format!(
                "      enabled: true\n      age: {age}\n      interval: {interval}\n      \
                 dryrun: false\n"
            ),
            None => "      enabled: false\n".to_string(),
        };
        format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n{s3}  delete:\n    enabled: true\n  \
             redirect:\n    disable: {disable}\n  maintenance:\n    uploadpurging:\n{purging}\
             sqlite:\n  path: \"{sqlite}\"\nhttp:\n  addr: 127.0.0.1:0\n",
            s3 = self.bucket.s3_section(&format!("/{}", self.root)),
            disable = !o.redirect,
            sqlite = o.sqlite.display(),
        )
    }
}

/// What differs between the Berth configurations of these tests.
#[derive(Clone, Debug)]
struct Options {
    /// Redirect blob pulls to presigned URLs (Berth's default on S3).
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

/// One object of a listing.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Object {
    key: String,
    size: u64,
    etag: String,
    modified: String,
}

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

    /// Every object whose key starts with `prefix`, sorted by key.
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

    /// The size of the object `key`, if it exists.
    async fn size_of(&self, key: &str) -> Option<u64> {
        self.objects(key)
            .await
            .into_iter()
            .find(|o| o.key == key)
            .map(|o| o.size)
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

/// A blob GET answers 307 to a presigned URL of the blob's object on the Garage endpoint (in
/// Distribution's layout below the site's root), which serves the bytes without credentials, a
/// range included. Returns the URL.
async fn assert_redirects(reg: &Registry, site: &Site, repo: &str, data: &[u8]) -> String {
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
        site.bucket.endpoint,
        "the redirect of {url} must go to the Garage endpoint: {location}"
    );
    assert_eq!(
        u.path(),
        format!("/{}/{}", site.bucket.name, site.blob_key(&digest)),
        "the redirect of {url} must name the blob's object: {location}"
    );
    assert!(
        u.query().is_some_and(|q| q.contains("X-Amz-Signature=")),
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

/// Pushes a generated single-arch image and a multi-arch index to `host` with skopeo, copies
/// both back into new OCI layouts and checks the digests and every blob's bytes. Returns the
/// image and the index.
fn skopeo_round_trip(env: &Env, host: &str, seed: u64) -> (image::Image, image::MultiArch) {
    let single = image::oci_image(seed, 3);
    let multi = image::oci_multi_arch(seed + 1);
    let single_src = env.path("single-src");
    let multi_src = env.path("multi-src");
    image::write_image_layout(&single_src, "v1", &single);
    image::write_multi_arch_layout(&multi_src, "v1", &multi);

    let pushed = env.skopeo_push(
        &[],
        &oci_ref(&single_src, "v1"),
        &format!("docker://{host}/s3/single:v1"),
    );
    assert_eq!(pushed, single.manifest.digest, "digest skopeo pushed");
    let pushed = env.skopeo_push(
        &["--all"],
        &oci_ref(&multi_src, "v1"),
        &format!("docker://{host}/s3/multi:v1"),
    );
    assert_eq!(pushed, multi.index.digest, "digest skopeo pushed");

    for (repo, src, all) in [("single", &single_src, false), ("multi", &multi_src, true)] {
        let back = env.path(&format!("{repo}-back"));
        let mut c = env.skopeo();
        c.arg("copy");
        if all {
            c.arg("--all");
        }
        run(c.args([
            "--src-tls-verify=false",
            &format!("docker://{host}/s3/{repo}:v1"),
            &oci_ref(&back, "v1"),
        ]));
        let source = image::read_oci_layout(src, "v1");
        let got = image::read_oci_layout(&back, "v1");
        assert_eq!(got.top_digest, source.top_digest, "s3/{repo}:v1 digest");
        assert_eq!(got.top_media_type, source.top_media_type);
        assert_eq!(
            got.reachable.keys().collect::<Vec<_>>(),
            source.reachable.keys().collect::<Vec<_>>(),
            "s3/{repo}:v1: the blobs copied back"
        );
        assert_eq!(got.reachable, source.reachable, "s3/{repo}:v1: blob bytes");
    }
    (single, multi)
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
        let (single, multi) = blocking(|| skopeo_round_trip(&env, &host, seed));

        let mut blobs: Vec<(&str, &Blob)> = single
            .blobs()
            .into_iter()
            .map(|b| ("s3/single", b))
            .collect();
        blobs.extend(multi.blobs().into_iter().map(|b| ("s3/multi", b)));
        let s3 = S3::new(&site.bucket);
        for (repo, blob) in &blobs {
            // Manifests are blobs too in Distribution's layout, but a pull of one goes through
            // the manifest endpoint; only configs and layers are fetched as blobs.
            if blob.media_type == image::OCI_MANIFEST {
                continue;
            }
            if redirect {
                assert_redirects(&berth, &site, repo, &blob.data).await;
            } else {
                assert_streams(&berth, repo, &blob.data).await;
            }
            assert_pulls(&berth, repo, &blob.data).await;
            assert_eq!(
                s3.size_of(&site.blob_key(&blob.digest)).await,
                Some(blob.data.len() as u64),
                "the object of {repo}@{} in bucket {}",
                blob.digest,
                site.bucket.name
            );
        }
        // Manifests are always served by Berth itself.
        for (repo, reference, m) in [
            ("s3/single", "v1", &single.manifest),
            ("s3/multi", "v1", &multi.index),
            (
                "s3/multi",
                multi.images[1].manifest.digest.as_str(),
                &multi.images[1].manifest,
            ),
        ] {
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
        // Nothing of the uploads is left in the bucket.
        assert_eq!(
            s3.objects(&format!("{}/berth/uploads/", site.root)).await,
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

/// Removes every image reference it was given when dropped.
struct DockerImages<'a> {
    env: &'a Env,
    refs: Vec<String>,
}

impl Drop for DockerImages<'_> {
    fn drop(&mut self) {
        for r in self.refs.iter().rev() {
            let _ = self.env.cmd("docker").args(["rmi", "--force", r]).output();
        }
    }
}

fn docker_inspect(env: &Env, reference: &str) -> Value {
    let v: Value = serde_json::from_str(&run(env
        .cmd("docker")
        .args(["image", "inspect", reference])))
    .unwrap();
    v[0].clone()
}

fn repo_digests(inspect: &Value) -> Vec<String> {
    inspect["RepoDigests"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

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
    let host = berth.host();
    let unique = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let repo = format!("s3/docker-{unique}");
    let name = format!("{host}/{repo}:v1");
    let mut images = DockerImages {
        env: &env,
        refs: vec![name.clone()],
    };

    // docker import of a generated root filesystem, then push.
    let seed = 4300;
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

    // The manifest Berth holds is the one docker pushed; its layer is in the bucket, and a pull
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
    assert_redirects(&berth, &site, &repo, &layer.body).await;
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

    // Removed locally, pulled back: the daemon follows the redirects to Garage.
    let want_repo_digest = format!("{host}/{repo}@{pushed}");
    blocking(|| {
        run(env.cmd("docker").args(["rmi", &name]));
        run_fails(env.cmd("docker").args(["image", "inspect", &id]));
        let out = run(env.cmd("docker").args(["pull", &name]));
        assert!(
            out.contains(&format!("Digest: {pushed}")),
            "docker pull output:\n{out}"
        );
        let inspect = docker_inspect(&env, &name);
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
        let inspect = docker_inspect(&env, &oci_name);
        assert_eq!(inspect["Id"], img.config.digest.as_str());
        run(env.cmd("docker").args(["rmi", &oci_name]));
    });
}

// ---------------------------------------------------------------------------------------------
// Raw uploads
// ---------------------------------------------------------------------------------------------

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
    let repo = "s3/uploads";
    let mut finished = Vec::new();

    // 1. Monolithic: POST, then PUT ?digest= with the whole body (a multipart upload of two
    //    parts on S3, published by a multipart copy).
    let mono = image::random_bytes(4401, 7 * MIB + 123);
    let digest = sha256(&mono);
    let url = start_upload(&berth, repo).await;
    finished.push(upload_id(&url));
    let resp = check_status(finish_upload(&url, &digest, Some(&mono), None).await, 201).await;
    assert_eq!(must_header(&resp, "docker-content-digest"), digest);
    assert_eq!(
        common::oci::path_only(&berth, &must_header(&resp, "location")),
        format!("/v2/{repo}/blobs/{digest}")
    );

    // 2. A single POST ?digest= (just over one part).
    let single = image::random_bytes(4402, CHUNK_SIZE + 3);
    let digest = sha256(&single);
    let resp = check_status(post_blob(&berth, repo, &digest, single.clone()).await, 201).await;
    assert_eq!(must_header(&resp, "docker-content-digest"), digest);

    // 3. Chunked: three PATCHes of uneven sizes with Content-Range, then a PUT without body.
    let sizes = [6 * MIB, MIB, 700 * 1024];
    let chunked = image::random_bytes(4403, sizes.iter().sum());
    let digest = sha256(&chunked);
    let mut url = start_upload(&berth, repo).await;
    finished.push(upload_id(&url));
    let mut offset = 0;
    for size in sizes {
        url = patch_ok(
            &berth,
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
    let url = start_upload(&berth, repo).await;
    finished.push(upload_id(&url));
    let url = patch_ok(&berth, &url, &tailed[..3 * MIB], Some(0)).await;
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
    check_status(post_blob(&berth, repo, &empty, Vec::new()).await, 201).await;
    let mount = format!(
        "/v2/s3/mounted/blobs/uploads/?mount={}&from={repo}",
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
    let url = start_upload(&berth, repo).await;
    let url = patch_ok(&berth, &url, &wrong_data[..5 * MIB], Some(0)).await;
    let url = patch_ok(&berth, &url, &wrong_data[5 * MIB..], Some(5 * MIB as u64)).await;
    expect_error(
        finish_upload(&url, &claimed, None, None).await,
        400,
        "DIGEST_INVALID",
    )
    .await;
    // ... and as a single POST ?digest=.
    expect_error(
        post_blob(&berth, repo, &claimed, wrong_data.clone()).await,
        400,
        "DIGEST_INVALID",
    )
    .await;
    for d in [&claimed, &sha256(&wrong_data)] {
        assert_eq!(
            head_status(&berth, repo, d).await,
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
        assert_eq!(s3.size_of(&site.blob_key(d)).await, None, "object of {d}");
    }

    // Every blob pulls back whole, is at its key in the bucket, and no upload it came from left
    // data or an open multipart upload behind.
    for data in [&mono, &single, &chunked, &tailed] {
        assert_pulls(&berth, repo, data).await;
        assert_redirects(&berth, &site, repo, data).await;
        assert_eq!(
            s3.size_of(&site.blob_key(&sha256(data))).await,
            Some(data.len() as u64)
        );
    }
    assert_pulls(&berth, repo, b"").await;
    assert_eq!(s3.size_of(&site.blob_key(&empty)).await, Some(0));
    assert_pulls(&berth, "s3/mounted", &chunked).await;
    assert_redirects(&berth, &site, "s3/mounted", &chunked).await;
    for id in &finished {
        assert_eq!(
            s3.objects(&site.upload_prefix(id)).await,
            vec![],
            "data of the finished upload {id}"
        );
    }
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
struct Distribution {
    child: std::process::Child,
    host: String,
    log: PathBuf,
}

impl Distribution {
    fn start(site: &Site, dir: &Path) -> Distribution {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join("distribution.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n{}  delete:\n    enabled: true\n  \
                 redirect:\n    disable: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                site.bucket.s3_section(&format!("/{}", site.root))
            ),
        )
        .unwrap();
        let log = dir.join("distribution.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new("docker-registry");
        // Only the configuration speaks to the AWS SDK: with `AWS_CA_BUNDLE` set (as it is on
        // machines with a custom CA), Distribution 2.8 panics at start ("unable to load custom
        // CA bundle, HTTPClient's transport unsupported type").
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("AWS_") {
                cmd.env_remove(key);
            }
        }
        let child = cmd
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("docker-registry (Debian package docker-registry) must be installed");
        let mut d = Distribution {
            child,
            host: format!("127.0.0.1:{port}"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("docker-registry exited ({status}):\n{}", d.log());
            }
            let up = blocking(|| {
                Command::new("curl")
                    .args(["-fsS", "-o", "/dev/null"])
                    .arg(format!("http://{}/v2/", d.host))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            });
            if up {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "--- docker-registry log (end) ---\n{}",
                tail(&self.log(), LOG_TAIL)
            );
        }
    }
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
    let mut dist = Distribution::start(&site, tmp.path());
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
