//! Replication between registries (Berth's `replication` section): pushes copied by a background
//! worker to another Berth or to Distribution (Debian's `docker-registry`), images pulled from a
//! Distribution on an interval, a ring of three Berths that copies once and then stops, and a
//! 1 GiB blob copied across a crash of its destination.
//!
//! Every Berth is the real binary started from a configuration file on a loopback port the test
//! picks, so that a restarted process is found again where the other registries' rules say it
//! is. Digests are computed here, from the bytes each side serves. Arrival is awaited with
//! generous deadlines; "not copied" is checked after later wanted copies arrived and the workers
//! had some more time.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::Digest as _;

use common::cli::{run, Env};
use common::distribution::Distribution;
use common::image::{self, Blob};
use common::oci::{self, client};
use common::{sha256, Launch, Registry};

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(200);
/// How long a copy that should happen promptly may take.
const ARRIVAL: Duration = Duration::from_secs(60);
/// How long a copy retried with backoff may take once its destination is back.
const RETRIED: Duration = Duration::from_secs(120);
/// How long the 1 GiB copy may take, its interruption included.
const BIG: Duration = Duration::from_secs(300);
/// How much of each log a failing test prints.
const LOG_TAIL: usize = 6000;

/// Manifest types a pull accepts.
const ACCEPT_ALL: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !done().await {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// A loopback port nothing listens on now; the registry that is given it binds it a moment later.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

// ---- Berth from its configuration file -------------------------------------------------------

/// A Berth started from its own configuration file on a fixed port, with a storage root that
/// survives its restarts. Each start writes stderr to a file of its own; the files' ends are
/// printed when the test fails.
struct Node {
    name: String,
    port: u16,
    dir: PathBuf,
    config: PathBuf,
    /// The storage root (blobs, uploads and the metadata database).
    root: PathBuf,
    logs: Vec<PathBuf>,
    reg: Option<Registry>,
}

impl Node {
    /// Writes the configuration of `name` into `dir`, listening on `port`, deletes enabled, with
    /// `replication` (a top-level `replication:` section, or nothing), and does not start it.
    fn configure(dir: &Path, name: &str, port: u16, replication: &str) -> Node {
        let root = dir.join(name);
        std::fs::create_dir_all(&root).unwrap();
        let config = dir.join(format!("{name}.yml"));
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  delete:\n    enabled: true\n  \
                 filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n  debug:\n    addr: 127.0.0.1:0\n    prometheus:\n      \
                 enabled: true\n      path: /metrics\n{replication}",
                root.display()
            ),
        )
        .unwrap();
        Node {
            name: name.to_string(),
            port,
            dir: dir.to_path_buf(),
            config,
            root,
            logs: Vec::new(),
            reg: None,
        }
    }

    /// Configures and starts `name`.
    fn start(dir: &Path, name: &str, port: u16, replication: &str) -> Node {
        let mut node = Node::configure(dir, name, port, replication);
        node.launch();
        node
    }

    fn launch(&mut self) {
        assert!(self.reg.is_none(), "{} is already running", self.name);
        let log = self
            .dir
            .join(format!("{}-{}.log", self.name, self.logs.len() + 1));
        self.logs.push(log.clone());
        let launch = Launch {
            args: vec![self.config.to_string_lossy().into_owned()],
            stderr: Some(log),
            ..Launch::default()
        };
        let reg = Registry::launch(&launch).unwrap_or_else(|e| panic!("{}: {e}", self.name));
        assert_eq!(
            reg.addr.port(),
            self.port,
            "{} listens where it was told",
            self.name
        );
        self.reg = Some(reg);
    }

    /// SIGKILL: a crash. The storage root stays.
    fn kill(&mut self) {
        if let Some(mut reg) = self.reg.take() {
            reg.kill();
        }
    }

    /// A crash, then a start on the same configuration, port and storage.
    fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    fn reg(&self) -> &Registry {
        self.reg
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not running", self.name))
    }

    /// `http://127.0.0.1:PORT`, the same across restarts.
    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            for log in &self.logs {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let start = text.len().saturating_sub(LOG_TAIL);
                let start = (start..text.len())
                    .find(|&i| text.is_char_boundary(i))
                    .unwrap_or(text.len());
                eprintln!("--- {} (end) ---\n{}", log.display(), &text[start..]);
            }
        }
    }
}

/// One `registries` entry of a `replication` section.
fn remote(name: &str, kind: &str, url: &str) -> String {
    format!("    - name: {name}\n      type: {kind}\n      url: {url}\n")
}

/// A `replication` section with these `registries` entries and `rules` (YAML list items).
fn replication(registries: &[String], rules: &str) -> String {
    format!(
        "replication:\n  registries:\n{}  rules:\n{rules}",
        registries.concat()
    )
}

// ---- what a registry serves ------------------------------------------------------------------

/// A manifest as a registry served it.
struct Fetched {
    /// 0 when the registry did not answer at all.
    status: u16,
    digest: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
}

async fn fetch_manifest(base: &str, repo: &str, reference: &str) -> Fetched {
    let sent = client()
        .get(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header("accept", ACCEPT_ALL)
        .send()
        .await;
    let Ok(resp) = sent else {
        return Fetched {
            status: 0,
            digest: None,
            content_type: None,
            body: Vec::new(),
        };
    };
    let status = resp.status().as_u16();
    let digest = oci::header(&resp, "docker-content-digest");
    let content_type = oci::header(&resp, "content-type");
    let body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
    Fetched {
        status,
        digest,
        content_type,
        body,
    }
}

/// Whether `repo:reference` at `base` is the manifest with `digest`.
async fn has_manifest(base: &str, repo: &str, reference: &str, digest: &str) -> bool {
    let f = fetch_manifest(base, repo, reference).await;
    f.status == 200 && f.digest.as_deref() == Some(digest) && sha256(&f.body) == digest
}

/// The status of a manifest request (404 for what is not there).
async fn manifest_status(base: &str, repo: &str, reference: &str) -> u16 {
    fetch_manifest(base, repo, reference).await.status
}

/// Streams a blob from a registry: its status, size and the digest of the bytes received.
async fn blob_at(base: &str, repo: &str, digest: &str) -> (u16, u64, String) {
    let mut resp = client()
        .get(format!("{base}/v2/{repo}/blobs/{digest}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {base}/v2/{repo}/blobs/{digest}: {e}"));
    let status = resp.status().as_u16();
    let mut hasher = sha2::Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = resp.chunk().await.expect("blob body") {
        hasher.update(&chunk);
        size += chunk.len() as u64;
    }
    (
        status,
        size,
        format!("sha256:{}", hex::encode(hasher.finalize())),
    )
}

fn is_manifest(media_type: &str) -> bool {
    [
        image::OCI_MANIFEST,
        image::OCI_INDEX,
        image::DOCKER_MANIFEST,
        image::DOCKER_LIST,
    ]
    .contains(&media_type)
}

/// Checks that `repo:reference` at `base` is `expected`, byte for byte, with its digest and type.
async fn assert_manifest_at(base: &str, repo: &str, reference: &str, expected: &Blob) {
    let f = fetch_manifest(base, repo, reference).await;
    assert_eq!(
        f.status,
        200,
        "GET {base}/v2/{repo}/manifests/{reference}: {}",
        String::from_utf8_lossy(&f.body)
    );
    assert_eq!(
        f.digest.as_deref(),
        Some(expected.digest.as_str()),
        "Docker-Content-Digest of {repo}:{reference} at {base}"
    );
    assert_eq!(
        sha256(&f.body),
        expected.digest,
        "{repo}:{reference} at {base} hashes to its digest"
    );
    assert!(
        f.body == expected.data,
        "{repo}:{reference} at {base} is served byte for byte"
    );
    assert_eq!(
        f.content_type.as_deref(),
        Some(expected.media_type.as_str()),
        "Content-Type of {repo}:{reference} at {base}"
    );
}

/// Checks that `dst_repo:reference` at `dst` is `top` byte for byte, as `src_repo:reference` is
/// at `src`, and that everything it refers to, `parts` (child manifests, configs, layers), is
/// at `dst` under the same digests: child manifests byte for byte on both sides.
async fn assert_copied(
    (src, src_repo): (&str, &str),
    (dst, dst_repo): (&str, &str),
    reference: &str,
    top: &Blob,
    parts: &[&Blob],
) {
    assert_manifest_at(src, src_repo, reference, top).await;
    assert_manifest_at(dst, dst_repo, reference, top).await;
    assert_manifest_at(dst, dst_repo, &top.digest, top).await;
    for part in parts {
        if is_manifest(&part.media_type) {
            assert_manifest_at(src, src_repo, &part.digest, part).await;
            assert_manifest_at(dst, dst_repo, &part.digest, part).await;
        } else {
            let (status, size, digest) = blob_at(dst, dst_repo, &part.digest).await;
            assert_eq!(status, 200, "blob {} of {dst_repo} at {dst}", part.digest);
            assert_eq!(size, part.data.len() as u64, "size of blob {}", part.digest);
            assert_eq!(
                digest, part.digest,
                "blob {} at {dst} is intact",
                part.digest
            );
        }
    }
}

/// The manifest and the blobs of an image built by `common::oci::sample_image`.
fn parts_of(img: &oci::Image) -> (Blob, Vec<Blob>) {
    (
        Blob::new(image::OCI_MANIFEST, img.manifest.clone()),
        vec![
            Blob::new(oci::OCI_CONFIG, img.config.clone()),
            Blob::new(oci::OCI_LAYER, img.layer.clone()),
        ],
    )
}

async fn get_json(url: &str) -> Value {
    let resp = client()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let body = resp.bytes().await.expect("body");
    assert_eq!(status, 200, "GET {url}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e})"))
}

async fn catalog(base: &str) -> BTreeSet<String> {
    let v = get_json(&format!("{base}/v2/_catalog?n=1000")).await;
    oci::strings(&v["repositories"]).into_iter().collect()
}

async fn tags(base: &str, repo: &str) -> BTreeSet<String> {
    let v = get_json(&format!("{base}/v2/{repo}/tags/list")).await;
    oci::strings(&v["tags"]).into_iter().collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The id a Berth answers `GET /v2/` with, which its replicated pushes carry as their origin.
async fn registry_id(base: &str) -> String {
    let resp = client()
        .get(format!("{base}/v2/"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {base}/v2/: {e}"));
    assert_eq!(resp.status(), 200, "GET {base}/v2/");
    oci::header(&resp, "berth-registry-id")
        .unwrap_or_else(|| panic!("{base}/v2/ answered without Berth-Registry-Id"))
}

/// How many manifest PUTs into `repo` Distribution accepted, by its access log.
fn manifest_puts(dist: &Distribution, repo: &str) -> usize {
    let put = format!("\"PUT /v2/{repo}/manifests/");
    dist.log()
        .lines()
        .filter(|l| l.contains(&put) && l.contains(" HTTP/1.1\" 201 "))
        .count()
}

// ---- metrics and `berth replication status` ---------------------------------------------------

/// `berth_replication_<what>_total{rule}` on `reg`.
async fn replication_metric(reg: &Registry, what: &str, rule: &str) -> u64 {
    let name = format!("berth_replication_{what}_total");
    common::sample_sum(&common::metrics(reg).await, &name, &[("rule", rule)]) as u64
}

/// How many PUT requests `reg` answered since it started.
async fn puts(reg: &Registry) -> u64 {
    common::sample_sum(
        &common::metrics(reg).await,
        "registry_http_requests_total",
        &[("method", "PUT")],
    ) as u64
}

/// One line of `berth replication status`.
#[derive(Debug, Clone, PartialEq)]
struct RuleStatus {
    queued: u64,
    images: u64,
    bytes: u64,
    failures: u64,
    last_error: Option<String>,
}

/// `<rule>: <queued> queued, <images> images, <bytes> bytes copied, <failures> failures`, with
/// `; last error: ...` after it when there was one.
fn parse_status(line: &str) -> Option<(String, RuleStatus)> {
    let (rule, rest) = line.split_once(": ")?;
    let (counts, last_error) = match rest.split_once("; last error: ") {
        Some((counts, error)) => (counts, Some(error.trim().to_string())),
        None => (rest, None),
    };
    let mut fields = BTreeMap::new();
    for part in counts.split(", ") {
        let (n, label) = part.trim().split_once(' ')?;
        // Singular or plural, whichever the count calls for.
        let key = ["queued", "image", "byte", "failure"]
            .into_iter()
            .find(|k| label.starts_with(k))?;
        fields.insert(key, n.parse::<u64>().ok()?);
    }
    Some((
        rule.trim().to_string(),
        RuleStatus {
            queued: *fields.get("queued")?,
            images: *fields.get("image")?,
            bytes: *fields.get("byte")?,
            failures: *fields.get("failure")?,
            last_error,
        },
    ))
}

/// What `berth replication status CONFIG` prints, and its lines by rule.
fn replication_status(config: &Path) -> (String, BTreeMap<String, RuleStatus>) {
    let out = run(Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["replication", "status"])
        .arg(config));
    let rules = out.lines().filter_map(parse_status).collect();
    (out, rules)
}

/// Waits until `berth replication status` shows nothing queued for any of `rules`; returns
/// their lines.
async fn settled_status(config: &Path, rules: &[&str]) -> BTreeMap<String, RuleStatus> {
    let start = Instant::now();
    loop {
        let (out, status) = replication_status(config);
        let settled = rules
            .iter()
            .all(|r| status.get(*r).is_some_and(|s| s.queued == 0));
        if settled {
            return status;
        }
        assert!(
            start.elapsed() < ARRIVAL,
            "`berth replication status` did not show {rules:?} with nothing queued within \
             {ARRIVAL:?}; it printed:\n{out}"
        );
        tokio::time::sleep(POLL).await;
    }
}

fn oci_ref(dir: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", dir.display())
}

// ---- the tests -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_replicate_berth_to_berth_byte_for_byte_with_filters() {
    let tmp = tempfile::tempdir().unwrap();
    let b = Node::start(tmp.path(), "b", free_port(), "");
    let rules = "    - name: to-b\n      destination: b\n      repositories: [\"team/**\"]\n      \
                 tags: [\"v*\"]\n    - name: vendored\n      destination: b\n      repositories: \
                 [\"vendor/**\"]\n      namespace: copies\n";
    let a = Node::start(
        tmp.path(),
        "a",
        free_port(),
        &replication(&[remote("b", "harbor", &b.base())], rules),
    );
    let (a_url, b_url) = (a.base(), b.base());
    let b_id = registry_id(&b_url).await;
    assert_ne!(
        registry_id(&a_url).await,
        b_id,
        "each Berth has an id of its own"
    );

    let env = Env::new();
    let single = image::oci_image(3101, 2);
    let latest = image::oci_image(3102, 1);
    let stray = image::oci_image(3103, 1);
    let lint = image::oci_image(3104, 1);
    let multi = image::oci_multi_arch(3105);
    for (dir, tag, img) in [
        ("single", "v1", &single),
        ("latest", "latest", &latest),
        ("stray", "v1", &stray),
        ("lint", "1.0", &lint),
    ] {
        image::write_image_layout(&env.path(dir), tag, img);
    }
    image::write_multi_arch_layout(&env.path("multi"), "v2", &multi);
    let push = |dir: &str, tag: &str, dest: &str, extra: &[&str]| {
        env.skopeo_push(
            extra,
            &oci_ref(&env.path(dir), tag),
            &format!("docker://{}/{dest}", a.reg().host()),
        )
    };

    // What is not to be copied goes first, so that the copies awaited below come after it: a
    // push that came from b, which a rule would otherwise take back there,
    let returned = oci::sample_image("came from b");
    oci::push_image_blobs(a.reg(), "team/app", &returned).await;
    let resp = client()
        .put(a.reg().url("/v2/team/app/manifests/v9"))
        .header("content-type", oci::OCI_MANIFEST)
        .header("berth-replication-origin", &b_id)
        .body(returned.manifest.clone())
        .send()
        .await
        .unwrap();
    oci::check_status(resp, 201).await;
    // and what no rule takes.
    assert_eq!(
        push("stray", "v1", "other/app:v1", &[]),
        stray.manifest.digest
    );
    assert_eq!(
        push("latest", "latest", "team/app:latest", &[]),
        latest.manifest.digest
    );
    assert_eq!(
        push("single", "v1", "team/app:v1", &[]),
        single.manifest.digest
    );
    assert_eq!(
        push("multi", "v2", "team/multi:v2", &["--all"]),
        multi.index.digest
    );
    assert_eq!(
        push("lint", "1.0", "vendor/tools/lint:1.0", &[]),
        lint.manifest.digest
    );

    for (repo, tag, digest) in [
        ("team/app", "v1", &single.manifest.digest),
        ("team/multi", "v2", &multi.index.digest),
        ("copies/tools/lint", "1.0", &lint.manifest.digest),
    ] {
        wait_until(&format!("{repo}:{tag} on b"), ARRIVAL, || {
            has_manifest(&b_url, repo, tag, digest)
        })
        .await;
    }

    // Byte for byte: the same digests on both sides, the index with every child and blob.
    assert_copied(
        (&a_url, "team/app"),
        (&b_url, "team/app"),
        "v1",
        &single.manifest,
        &single.blobs(),
    )
    .await;
    assert_copied(
        (&a_url, "team/multi"),
        (&b_url, "team/multi"),
        "v2",
        &multi.index,
        &multi.blobs(),
    )
    .await;
    // The namespace replaces the first segment of the name.
    assert_copied(
        (&a_url, "vendor/tools/lint"),
        (&b_url, "copies/tools/lint"),
        "1.0",
        &lint.manifest,
        &lint.blobs(),
    )
    .await;

    // What the filters leave out stays on a, after the worker had time for all of it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(manifest_status(&b_url, "other/app", "v1").await, 404);
    assert_eq!(
        manifest_status(&b_url, "other/app", &stray.manifest.digest).await,
        404
    );
    assert_eq!(
        manifest_status(&b_url, "team/app", "v9").await,
        404,
        "a push that came from b was copied back to it"
    );
    assert_eq!(
        manifest_status(&b_url, "team/app", &returned.digest).await,
        404
    );
    assert_eq!(manifest_status(&b_url, "team/app", "latest").await, 404);
    assert_eq!(
        manifest_status(&b_url, "team/app", &latest.manifest.digest).await,
        404,
        "a tag the rule does not take is not copied by digest either"
    );
    assert_eq!(tags(&b_url, "team/app").await, set(&["v1"]));
    assert_eq!(
        manifest_status(&b_url, "vendor/tools/lint", "1.0").await,
        404
    );
    assert_eq!(
        catalog(&b_url).await,
        set(&["copies/tools/lint", "team/app", "team/multi"])
    );

    // The counters and the status command agree with what was copied.
    let layer_bytes: u64 = single
        .layers
        .iter()
        .chain(multi.images.iter().flat_map(|i| i.layers.iter()))
        .map(|l| l.data.len() as u64)
        .sum();
    assert!(replication_metric(a.reg(), "images", "to-b").await >= 2);
    assert!(replication_metric(a.reg(), "images", "vendored").await >= 1);
    assert!(replication_metric(a.reg(), "bytes", "to-b").await >= layer_bytes);
    assert_eq!(replication_metric(a.reg(), "failures", "to-b").await, 0);
    let status = settled_status(&a.config, &["to-b", "vendored"]).await;
    let to_b = &status["to-b"];
    assert!(to_b.images >= 2, "{to_b:?}");
    assert!(to_b.bytes >= layer_bytes, "{to_b:?}");
    assert_eq!((to_b.failures, &to_b.last_error), (0, &None), "{to_b:?}");
    let vendored = &status["vendored"];
    assert!(vendored.images >= 1, "{vendored:?}");
    assert_eq!(vendored.failures, 0, "{vendored:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_replicate_to_distribution() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("dist-root");
    std::fs::create_dir_all(&root).unwrap();
    let dist = Distribution::on_directory(tmp.path(), &root, "");
    let dist_url = format!("http://{}", dist.host);
    let rules = "    - name: to-dr\n      destination: dr\n      repositories: [\"team/**\"]\n";
    let a = Node::start(
        tmp.path(),
        "a",
        free_port(),
        &replication(&[remote("dr", "docker-registry", &dist_url)], rules),
    );
    let a_url = a.base();

    let env = Env::new();
    let single = image::oci_image(3201, 2);
    let multi = image::oci_multi_arch(3202);
    let single_src = oci_ref(&env.path("single"), "v1");
    image::write_image_layout(&env.path("single"), "v1", &single);
    image::write_multi_arch_layout(&env.path("multi"), "v2", &multi);
    let host = a.reg().host();
    let app = format!("docker://{host}/team/app:v1");
    assert_eq!(
        env.skopeo_push(&[], &single_src, &app),
        single.manifest.digest
    );
    assert_eq!(
        env.skopeo_push(
            &["--all"],
            &oci_ref(&env.path("multi"), "v2"),
            &format!("docker://{host}/team/multi:v2")
        ),
        multi.index.digest
    );

    for (repo, tag, digest) in [
        ("team/app", "v1", &single.manifest.digest),
        ("team/multi", "v2", &multi.index.digest),
    ] {
        wait_until(&format!("{repo}:{tag} on Distribution"), ARRIVAL, || {
            has_manifest(&dist_url, repo, tag, digest)
        })
        .await;
    }
    assert_copied(
        (&a_url, "team/app"),
        (&dist_url, "team/app"),
        "v1",
        &single.manifest,
        &single.blobs(),
    )
    .await;
    assert_copied(
        (&a_url, "team/multi"),
        (&dist_url, "team/multi"),
        "v2",
        &multi.index,
        &multi.blobs(),
    )
    .await;

    // A destination that has the tag at that digest is not pushed to again: neither after the
    // same push to a once more, nor for an image it had before a got it.
    let app_puts = manifest_puts(&dist, "team/app");
    assert!(app_puts >= 1);
    assert_eq!(
        env.skopeo_push(&[], &single_src, &app),
        single.manifest.digest
    );
    let before = oci::sample_image("already at the destination");
    oci::upload_image_to(&dist_url, None, "team/before", "v1", &before).await;
    oci::push_image(a.reg(), "team/before", "v1", "already at the destination").await;
    // A later push, awaited, after which the worker had time for the ones above.
    let marker = oci::push_image(a.reg(), "team/marker", "v1", "distribution marker").await;
    wait_until("team/marker:v1 on Distribution", ARRIVAL, || {
        has_manifest(&dist_url, "team/marker", "v1", &marker.digest)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        manifest_puts(&dist, "team/app"),
        app_puts,
        "team/app:v1 was pushed to Distribution again"
    );
    assert_eq!(
        manifest_puts(&dist, "team/before"),
        1,
        "team/before:v1, there already, was pushed again"
    );
    assert!(has_manifest(&dist_url, "team/before", "v1", &before.digest).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_destination_down_at_the_push_gets_it_once_back_across_a_source_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = Node::start(tmp.path(), "b", free_port(), "");
    let rules = "    - name: to-b\n      destination: b\n";
    let mut a = Node::start(
        tmp.path(),
        "a",
        free_port(),
        &replication(&[remote("b", "harbor", &b.base())], rules),
    );
    let b_url = b.base();
    b.kill();

    // Pushed while b is down: the copy fails, is retried and waits in the outbox. A failed
    // attempt counts as a retry; a failure is a copy given up on, which this must not be.
    let first = oci::push_image(a.reg(), "team/app", "v1", "pushed while b is down").await;
    wait_until("a copy to b retried", ARRIVAL, || async {
        replication_metric(a.reg(), "retries", "to-b").await >= 1
    })
    .await;
    assert_eq!(replication_metric(a.reg(), "failures", "to-b").await, 0);

    // a crashes with the copy still owed, and takes another push once it is back.
    a.restart();
    let second = oci::push_image(a.reg(), "team/app", "v2", "pushed after a's crash").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        manifest_status(&b_url, "team/app", "v1").await,
        0,
        "b is down"
    );

    b.launch();
    for (tag, img) in [("v1", &first), ("v2", &second)] {
        wait_until(&format!("team/app:{tag} on b"), RETRIED, || {
            has_manifest(&b_url, "team/app", tag, &img.digest)
        })
        .await;
    }
    let a_url = a.base();
    for (tag, img) in [("v1", &first), ("v2", &second)] {
        let (top, blobs) = parts_of(img);
        let blobs: Vec<&Blob> = blobs.iter().collect();
        assert_copied(
            (&a_url, "team/app"),
            (&b_url, "team/app"),
            tag,
            &top,
            &blobs,
        )
        .await;
    }
    assert_eq!(tags(&b_url, "team/app").await, set(&["v1", "v2"]));
    let status = settled_status(&a.config, &["to-b"]).await;
    let to_b = &status["to-b"];
    assert!(to_b.images >= 2, "{to_b:?}");
    assert_eq!(to_b.failures, 0, "nothing was given up on: {to_b:?}");
    // The history says, copy by copy, what happened: both copied, across the crash.
    let history = run(Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["replication", "status"])
        .arg(&a.config)
        .args(["--history", "20", "--rule", "to-b"]));
    for tag in ["v1", "v2"] {
        let copied = format!(" to-b push team/app:{tag} copied, ");
        assert!(history.lines().any(|l| l.contains(&copied)), "{history}");
    }
    assert!(!history.contains(" failed"), "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deletes_are_replicated_only_where_the_rule_says() {
    let tmp = tempfile::tempdir().unwrap();
    let b = Node::start(tmp.path(), "b", free_port(), "");
    let rules =
        "    - name: mirror\n      destination: b\n      repositories: [\"team/**\"]\n      \
                 deletes: true\n    - name: keep\n      destination: b\n      \
                 repositories: [\"kept/**\"]\n";
    let a = Node::start(
        tmp.path(),
        "a",
        free_port(),
        &replication(&[remote("b", "harbor", &b.base())], rules),
    );
    let (a_url, b_url) = (a.base(), b.base());
    let one = oci::push_image(a.reg(), "team/app", "v1", "deleted by tag").await;
    let two = oci::push_image(a.reg(), "team/app", "v2", "deleted by digest").await;
    let kept = oci::push_image(
        a.reg(),
        "kept/app",
        "v1",
        "kept where deletes are not copied",
    )
    .await;
    for (repo, tag, img) in [
        ("team/app", "v1", &one),
        ("team/app", "v2", &two),
        ("kept/app", "v1", &kept),
    ] {
        wait_until(&format!("{repo}:{tag} on b"), ARRIVAL, || {
            has_manifest(&b_url, repo, tag, &img.digest)
        })
        .await;
    }

    // A tag deleted here goes there; the manifest it pointed at stays there by digest.
    let delete = |path: String| {
        let url = format!("{a_url}{path}");
        async move {
            let resp = client().delete(&url).send().await.unwrap();
            assert_eq!(resp.status(), 202, "DELETE {url}");
        }
    };
    delete("/v2/team/app/manifests/v1".into()).await;
    wait_until("team/app:v1 deleted on b", ARRIVAL, || async {
        manifest_status(&b_url, "team/app", "v1").await == 404
    })
    .await;
    assert!(has_manifest(&b_url, "team/app", &one.digest, &one.digest).await);
    // A manifest deleted by digest goes there with its tags.
    delete(format!("/v2/team/app/manifests/{}", two.digest)).await;
    wait_until("team/app@v2's digest deleted on b", ARRIVAL, || async {
        manifest_status(&b_url, "team/app", &two.digest).await == 404
    })
    .await;
    assert_eq!(manifest_status(&b_url, "team/app", "v2").await, 404);
    // A rule without deletes leaves the copy alone.
    delete("/v2/kept/app/manifests/v1".into()).await;
    let status = settled_status(&a.config, &["mirror", "keep"]).await;
    assert_eq!(status["mirror"].failures, 0, "{:?}", status["mirror"]);
    assert!(has_manifest(&b_url, "kept/app", "v1", &kept.digest).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_signature_pushed_by_digest_is_copied_with_its_subject() {
    let tmp = tempfile::tempdir().unwrap();
    let b = Node::start(tmp.path(), "b", free_port(), "");
    let rules = "    - name: to-b\n      destination: b\n      repositories: [\"team/**\"]\n      \
                 tags: [\"v*\"]\n";
    let a = Node::start(
        tmp.path(),
        "a",
        free_port(),
        &replication(&[remote("b", "harbor", &b.base())], rules),
    );
    let b_url = b.base();
    let img = oci::push_image(a.reg(), "team/app", "v1", "signed image").await;
    // A signature: an artifact whose subject is the image, pushed by its digest, untagged.
    let signature = b"a signature".to_vec();
    oci::push_blob(a.reg(), "team/app", &signature).await;
    oci::push_blob(a.reg(), "team/app", oci::EMPTY_JSON).await;
    let referrer = oci::artifact_manifest(
        Some("application/vnd.example.signature"),
        &oci::empty_descriptor(),
        &[oci::descriptor(
            "application/vnd.example.signature",
            &signature,
        )],
        Some(&img.descriptor()),
        None,
    );
    let referrer_digest = sha256(&referrer);
    oci::push_manifest_ok(
        a.reg(),
        "team/app",
        &referrer_digest,
        oci::OCI_MANIFEST,
        &referrer,
    )
    .await;
    wait_until("the image on b", ARRIVAL, || {
        has_manifest(&b_url, "team/app", "v1", &img.digest)
    })
    .await;
    wait_until("its signature on b", ARRIVAL, || {
        has_manifest(&b_url, "team/app", &referrer_digest, &referrer_digest)
    })
    .await;
    let listed = get_json(&format!("{b_url}/v2/team/app/referrers/{}", img.digest)).await;
    let found: Vec<&str> = listed["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["digest"].as_str())
        .collect();
    assert_eq!(found, [referrer_digest.as_str()], "{listed}");
    let (status, _, got) = blob_at(&b_url, "team/app", &sha256(&signature)).await;
    assert_eq!((status, got), (200, sha256(&signature)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_registries_in_a_ring_copy_once_and_stop() {
    let tmp = tempfile::tempdir().unwrap();
    // Every port is known before any registry starts: each one's rule names the next.
    let ports = [free_port(), free_port(), free_port()];
    let names = ["a", "b", "c"];
    let url = |i: usize| format!("http://127.0.0.1:{}", ports[i % 3]);
    let rule = |i: usize| format!("{}-to-{}", names[i], names[(i + 1) % 3]);
    let nodes: Vec<Node> = (0..3)
        .map(|i| {
            let next = names[(i + 1) % 3];
            let rules = format!("    - name: {}\n      destination: {next}\n", rule(i));
            Node::start(
                tmp.path(),
                names[i],
                ports[i],
                &replication(&[remote(next, "harbor", &url(i + 1))], &rules),
            )
        })
        .collect();
    let mut ids = BTreeSet::new();
    for node in &nodes {
        ids.insert(registry_id(&node.base()).await);
    }
    assert_eq!(ids.len(), 3, "each Berth has an id of its own: {ids:?}");

    let img = oci::push_image(nodes[0].reg(), "ring/app", "v1", "once around the ring").await;
    // Nothing else is pushed to a: any later PUT there came from c.
    let puts_at_a = puts(nodes[0].reg()).await;
    for node in &nodes[1..] {
        let base = node.base();
        wait_until(&format!("ring/app:v1 on {}", node.name), ARRIVAL, || {
            has_manifest(&base, "ring/app", "v1", &img.digest)
        })
        .await;
    }

    // Settled: a snapshot of the copies and of every registry's PUTs, taken once the copies
    // stopped changing, is still the same five seconds later.
    async fn snapshot(nodes: &[Node], rule: &dyn Fn(usize) -> String) -> (u64, Vec<u64>) {
        let mut copied = 0;
        let mut put_counts = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            copied += replication_metric(node.reg(), "images", &rule(i)).await;
            put_counts.push(puts(node.reg()).await);
        }
        (copied, put_counts)
    }
    wait_until("the copies a-to-b and b-to-c counted", ARRIVAL, || async {
        snapshot(&nodes, &rule).await.0 >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = snapshot(&nodes, &rule).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let later = snapshot(&nodes, &rule).await;
    assert_eq!(
        later, settled,
        "copies or PUTs went on after the ring settled"
    );
    assert_eq!(
        settled.0, 2,
        "a-to-b and b-to-c copy; c-to-a does not, a being the origin"
    );
    assert_eq!(
        replication_metric(nodes[2].reg(), "images", "c-to-a").await,
        0
    );
    assert_eq!(puts(nodes[0].reg()).await, puts_at_a, "c pushed to a");

    // Every registry holds the image once, under its one name and tag.
    let (top, blobs) = parts_of(&img);
    let blobs: Vec<&Blob> = blobs.iter().collect();
    for node in &nodes {
        let base = node.base();
        assert_eq!(catalog(&base).await, set(&["ring/app"]), "{}", node.name);
        assert_eq!(tags(&base, "ring/app").await, set(&["v1"]), "{}", node.name);
        assert_copied(
            (&nodes[0].base(), "ring/app"),
            (&base, "ring/app"),
            "v1",
            &top,
            &blobs,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pull_replication_copies_from_a_distribution() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("dist-root");
    std::fs::create_dir_all(&root).unwrap();
    let dist = Distribution::on_directory(tmp.path(), &root, "");
    let central = format!("http://{}", dist.host);

    let os1 = oci::sample_image("base os v1");
    let os2 = oci::sample_image("base os v2");
    let jq = oci::sample_image("base tools jq");
    let other = oci::sample_image("other app");
    let stable1 = oci::sample_image("stable 1.0");
    let stable2 = oci::sample_image("stable 2.0");
    oci::upload_image_to(&central, None, "base/os", "v1", &os1).await;
    oci::upload_image_to(&central, None, "base/os", "v2", &os2).await;
    oci::upload_image_to(&central, None, "base/tools/jq", "1.7", &jq).await;
    oci::upload_image_to(&central, None, "other/app", "v1", &other).await;
    oci::upload_image_to(&central, None, "stable/app", "1.0", &stable1).await;
    oci::upload_image_to(&central, None, "stable/app", "2.0", &stable2).await;
    // A two-platform index, its children pushed by digest only.
    let amd64 = oci::sample_image("base multi amd64");
    let arm64 = oci::sample_image("base multi arm64");
    let mut children = Vec::new();
    for (img, arch) in [(&amd64, "amd64"), (&arm64, "arm64")] {
        oci::upload_image_to(&central, None, "base/multi", &img.digest, img).await;
        let mut desc = img.descriptor();
        desc["platform"] = json!({"os": "linux", "architecture": arch});
        children.push(desc);
    }
    let index = oci::image_index(&children);
    oci::upload_manifest_to(
        &central,
        None,
        "base/multi",
        "latest",
        oci::OCI_INDEX,
        &index,
    )
    .await;

    let rules = "    - name: from-central\n      source: central\n      repositories: \
                 [\"base/**\"]\n      tags: []\n      interval: 2s\n    - name: stable-from-central\n      \
                 source: central\n      repositories: [\"stable/**\"]\n      tags: [\"1.*\"]\n      \
                 interval: 2s\n";
    let local = Node::start(
        tmp.path(),
        "local",
        free_port(),
        &replication(&[remote("central", "docker-registry", &central)], rules),
    );
    let here = local.base();

    let wanted = [
        ("base/os", "v1", &os1),
        ("base/os", "v2", &os2),
        ("base/tools/jq", "1.7", &jq),
        ("stable/app", "1.0", &stable1),
    ];
    for (repo, tag, img) in wanted {
        wait_until(&format!("{repo}:{tag} pulled"), ARRIVAL, || {
            has_manifest(&here, repo, tag, &img.digest)
        })
        .await;
    }
    let index_blob = Blob::new(image::OCI_INDEX, index.clone());
    wait_until("base/multi:latest pulled", ARRIVAL, || {
        has_manifest(&here, "base/multi", "latest", &index_blob.digest)
    })
    .await;

    // Pushed to the source after the first copies: a later listing finds them.
    let os3 = oci::sample_image("base os v3");
    let late = oci::sample_image("base late");
    oci::upload_image_to(&central, None, "base/os", "v3", &os3).await;
    oci::upload_image_to(&central, None, "base/late", "v1", &late).await;
    for (repo, tag, img) in [("base/os", "v3", &os3), ("base/late", "v1", &late)] {
        wait_until(&format!("{repo}:{tag} pulled later"), ARRIVAL, || {
            has_manifest(&here, repo, tag, &img.digest)
        })
        .await;
    }

    for (repo, tag, img) in wanted
        .into_iter()
        .chain([("base/os", "v3", &os3), ("base/late", "v1", &late)])
    {
        let (top, blobs) = parts_of(img);
        let blobs: Vec<&Blob> = blobs.iter().collect();
        assert_copied((&central, repo), (&here, repo), tag, &top, &blobs).await;
    }
    let mut index_parts = Vec::new();
    for img in [&amd64, &arm64] {
        let (top, blobs) = parts_of(img);
        index_parts.push(top);
        index_parts.extend(blobs);
    }
    let index_parts: Vec<&Blob> = index_parts.iter().collect();
    assert_copied(
        (&central, "base/multi"),
        (&here, "base/multi"),
        "latest",
        &index_blob,
        &index_parts,
    )
    .await;

    // What no rule takes stays at the source, several listings after it was there.
    assert_eq!(manifest_status(&here, "other/app", "v1").await, 404);
    assert_eq!(tags(&here, "stable/app").await, set(&["1.0"]));
    assert_eq!(
        manifest_status(&here, "stable/app", &stable2.digest).await,
        404
    );
    assert_eq!(
        catalog(&here).await,
        set(&[
            "base/late",
            "base/multi",
            "base/os",
            "base/tools/jq",
            "stable/app"
        ])
    );
    assert!(replication_metric(local.reg(), "images", "from-central").await >= 6);
    assert!(replication_metric(local.reg(), "images", "stable-from-central").await >= 1);
}

/// Peak resident memory of a process (`VmHWM`), in KiB.
fn peak_memory_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in:\n{status}"))
}

/// Bytes in the files under `dir` (files that vanish while it looks count as nothing).
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

/// Pushes to `reg` an image of one `size`-byte layer, generated chunk by chunk and hashed on
/// the way (the test never holds it): the layer's digest, the manifest and its digest.
async fn push_big_image(reg: &Registry, repo: &str, size: u64) -> (String, Vec<u8>, String) {
    const CHUNK: usize = 8 << 20;
    let mut rng = image::Rng::new(size);
    let mut hasher = sha2::Sha256::new();
    let mut url = oci::start_upload(reg, repo).await;
    let mut offset = 0u64;
    while offset < size {
        let chunk = rng.bytes(CHUNK.min((size - offset) as usize));
        hasher.update(&chunk);
        url = oci::patch_ok(reg, &url, &chunk, Some(offset)).await;
        offset += chunk.len() as u64;
    }
    let layer_digest = format!("sha256:{}", hex::encode(hasher.finalize()));
    let resp = oci::finish_upload(&url, &layer_digest, None, None).await;
    oci::check_status(resp, 201).await;
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
    }))
    .unwrap();
    oci::push_blob(reg, repo, &config).await;
    let layer = json!({"mediaType": oci::OCI_LAYER, "digest": layer_digest, "size": size});
    let manifest = oci::image_manifest(&oci::descriptor(oci::OCI_CONFIG, &config), &[layer]);
    let digest = oci::push_manifest_ok(reg, repo, "v1", oci::OCI_MANIFEST, &manifest).await;
    (layer_digest, manifest, digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_cut_by_the_sources_crash_goes_on_from_where_the_destination_got() {
    const SIZE: u64 = 256 << 20;
    const UNDER_WAY: u64 = 96 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let b = Node::start(tmp.path(), "b", free_port(), "");
    let rules = "    - name: to-b\n      destination: b\n      repositories: [\"big/**\"]\n";
    let mut a = Node::start(
        tmp.path(),
        "a",
        free_port(),
        &replication(&[remote("b", "harbor", &b.base())], rules),
    );
    let b_url = b.base();
    let (layer_digest, _, digest) = push_big_image(a.reg(), "big/blob", SIZE).await;

    // a dies with the copy well under way; the restarted process finds where it was.
    wait_until("more than 96 MiB at b", BIG, || {
        let size = dir_size(&b.root);
        async move { size > UNDER_WAY }
    })
    .await;
    let (status, ..) = blob_at(&b_url, "big/blob", &layer_digest).await;
    assert_eq!(status, 404, "the copy was over before a could be killed");
    a.kill();
    a.restart();
    wait_until("big/blob:v1 on b", BIG, || {
        has_manifest(&b_url, "big/blob", "v1", &digest)
    })
    .await;
    let (status, size, got) = blob_at(&b_url, "big/blob", &layer_digest).await;
    assert_eq!(
        (status, size, got.as_str()),
        (200, SIZE, layer_digest.as_str())
    );
    // The new process sent only what b did not have: not the blob again from its start.
    let sent = replication_metric(a.reg(), "bytes", "to-b").await;
    assert!(
        sent > 0 && sent < SIZE - UNDER_WAY + (16 << 20),
        "the restarted a sent {sent} bytes of a {SIZE}-byte blob b had {UNDER_WAY}+ of"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_1_gib_blob_resumes_after_the_destination_dies_midway() {
    const SIZE: u64 = 1 << 30;
    const UNDER_WAY: u64 = 100 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let mut b = Node::start(tmp.path(), "b", free_port(), "");
    let rules = "    - name: to-b\n      destination: b\n      repositories: [\"big/**\"]\n";
    let a = Node::start(
        tmp.path(),
        "a",
        free_port(),
        &replication(&[remote("b", "harbor", &b.base())], rules),
    );
    let (a_url, b_url) = (a.base(), b.base());

    let (layer_digest, manifest, digest) = push_big_image(a.reg(), "big/blob", SIZE).await;

    // b dies once the copy is well under way, and comes back on the same port and storage.
    wait_until("more than 100 MiB at b", BIG, || {
        let size = dir_size(&b.root);
        async move { size > UNDER_WAY }
    })
    .await;
    let (status, ..) = blob_at(&b_url, "big/blob", &layer_digest).await;
    assert_eq!(status, 404, "the copy was over before b could be killed");
    b.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    b.launch();

    wait_until("big/blob:v1 on b", BIG, || {
        has_manifest(&b_url, "big/blob", "v1", &digest)
    })
    .await;
    let (status, size, got) = blob_at(&b_url, "big/blob", &layer_digest).await;
    assert_eq!((status, size), (200, SIZE));
    assert_eq!(got, layer_digest, "the 1 GiB layer at b is intact");
    assert_manifest_at(
        &a_url,
        "big/blob",
        "v1",
        &Blob::new(oci::OCI_MANIFEST, manifest.clone()),
    )
    .await;
    assert_manifest_at(
        &b_url,
        "big/blob",
        "v1",
        &Blob::new(oci::OCI_MANIFEST, manifest),
    )
    .await;

    // The upload went on where b said it stopped: what b had before it died was not sent again.
    let sent = replication_metric(a.reg(), "bytes", "to-b").await;
    assert!(
        (SIZE..SIZE + UNDER_WAY).contains(&sent),
        "a counted {sent} bytes sent for a blob of {SIZE}"
    );
    // The blob streamed through a: it never held much of it.
    let peak = peak_memory_kib(a.reg().pid().expect("a runs"));
    assert!(peak < 512 * 1024, "a's peak memory was {} MiB", peak / 1024);
}
