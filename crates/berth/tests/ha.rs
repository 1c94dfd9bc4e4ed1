//! High availability: three `berth serve` processes on one PostgreSQL database and one shared
//! storage directory, behind nginx balancing round robin, as a scaled-out deployment runs them.
//!
//! Real clients (skopeo, the docker CLI) push and pull through nginx, so their requests land on
//! different instances; tag moves are read back through another instance than the one that
//! wrote them; an instance is killed with SIGKILL in the middle of a chunk; the instance holding
//! a notification endpoint's lease is killed; the database is stopped under load. Every digest
//! is computed here, never taken from the server.
//!
//! The same cluster runs on a three-node Garage cluster (S3) instead of the directory too: a
//! push and pulls through nginx, with pulls redirected to the object store and one of its nodes
//! stopped.
//!
//! No assertion depends on timing: what must happen eventually is awaited with a generous
//! deadline, and time only classifies requests as sent during the database outage or not.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

use common::cli::{can_run, run, run_fails, Env};
use common::garage::Garage;
use common::image;
use common::nginx::Nginx;
use common::oci::*;
use common::postgres::Postgres;
use common::{sha256, Launch, Registry};

/// Instances behind nginx.
const INSTANCES: usize = 3;
/// The database the instances share.
const DATABASE: &str = "registry";
/// How long anything that must happen eventually may take (a lease's time to live is 10 s).
const DEADLINE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// The cluster: PostgreSQL, three instances, nginx
// ---------------------------------------------------------------------------------------------

/// PostgreSQL, [`INSTANCES`] instances sharing it and one storage directory, nginx in front.
/// Fields drop in order: nginx, the instances, then the database and the directories.
struct Cluster {
    nginx: Nginx,
    instances: Vec<Registry>,
    pg: Postgres,
    /// The shared storage root (`storage.filesystem.rootdirectory`).
    root: PathBuf,
    /// Each instance's stderr.
    logs: Vec<PathBuf>,
    /// Holds the configuration, the logs and the storage root.
    _tmp: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        Cluster::start_with("")
    }

    /// A cluster whose configuration ends with `extra` (top-level YAML sections).
    fn start_with(extra: &str) -> Cluster {
        Cluster::start_on(None, extra)
    }

    /// A cluster on `storage` (a `storage:` driver section, indented as in the file), or on a
    /// shared directory when `None`.
    fn start_on(storage: Option<String>, extra: &str) -> Cluster {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pg = Postgres::start();
        pg.create_database(DATABASE);
        let root = tmp.path().join("storage");
        std::fs::create_dir(&root).unwrap();
        let root = root.canonicalize().unwrap();
        let storage = storage
            .unwrap_or_else(|| format!("  filesystem:\n    rootdirectory: {}\n", root.display()));
        let config = tmp.path().join("config.yml");
        std::fs::write(&config, config_text(&pg, &storage, extra)).unwrap();
        let logs: Vec<PathBuf> = (0..INSTANCES)
            .map(|i| tmp.path().join(format!("berth-{i}.log")))
            .collect();
        // All at once, as a deployment rolls out its replicas: the first start on a new database
        // must cope with the others starting beside it.
        let started: Vec<Result<Registry, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = logs
                .iter()
                .map(|log| {
                    let launch = Launch {
                        args: vec![config.to_string_lossy().into_owned()],
                        stderr: Some(log.clone()),
                        ..Launch::default()
                    };
                    s.spawn(move || Registry::launch(&launch))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let instances: Vec<Registry> = started
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.unwrap_or_else(|e| panic!("instance {i}: {e}")))
            .collect();
        let addrs: Vec<SocketAddr> = instances.iter().map(|r| r.addr).collect();
        let nginx = Nginx::round_robin(&addrs);
        let cluster = Cluster {
            nginx,
            instances,
            pg,
            root,
            logs,
            _tmp: tmp,
        };
        cluster.assert_metadata_in_postgres();
        cluster
    }

    /// A handle on nginx for the `common::oci` helpers.
    fn front(&self) -> Registry {
        self.nginx.front()
    }

    fn instance(&self, i: usize) -> &Registry {
        &self.instances[i % INSTANCES]
    }

    /// SIGKILL instance `i` (a crash) and wait until it is gone.
    fn kill(&mut self, i: usize) {
        self.instances[i].kill();
    }

    /// The metadata went to PostgreSQL (its schema is there) and not to an embedded SQLite
    /// database in the storage root, so the instances share state through the database.
    fn assert_metadata_in_postgres(&self) {
        let tables = self.pg.psql(
            DATABASE,
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
        );
        assert!(
            tables.trim().parse::<u32>().unwrap_or(0) > 0,
            "no tables in the database after the instances started"
        );
        assert!(
            !self.root.join("berth/meta.db").exists(),
            "an instance opened an SQLite database in the shared storage root"
        );
    }

    /// Which instances (by index) served requests, from nginx's access log.
    fn instances_served(&self) -> BTreeSet<usize> {
        let by_addr: HashMap<String, usize> = self
            .instances
            .iter()
            .enumerate()
            .map(|(i, r)| (r.addr.to_string(), i))
            .collect();
        // Each line ends with `upstream=<addr>[, <addr>...]` (more than one when nginx tried
        // the next instance).
        self.nginx
            .access_log()
            .lines()
            .filter_map(|line| line.split_once("upstream=").map(|(_, u)| u.to_string()))
            .flat_map(|u| {
                u.split(',')
                    .filter_map(|a| by_addr.get(a.trim()).copied())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The instance whose process id is `pid`.
    fn instance_with_pid(&self, pid: u32) -> Option<usize> {
        self.instances.iter().position(|r| r.pid() == Some(pid))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (i, log) in self.logs.iter().enumerate() {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                eprintln!("--- instance {i} stderr ---\n{text}");
            }
            eprintln!("--- nginx error log ---\n{}", self.nginx.error_log());
            let log = self.pg.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "--- PostgreSQL log (last lines) ---\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

fn config_text(pg: &Postgres, storage: &str, extra: &str) -> String {
    format!(
        "version: 0.1
log:
  level: warn
storage:
{storage}  delete:
    enabled: true
http:
  addr: 127.0.0.1:0
database:
  enabled: true
  host: {host}
  port: {port}
  user: {user}
  password: \"{password}\"
  dbname: {DATABASE}
  sslmode: disable
{extra}",
        host = pg.host(),
        port = pg.port(),
        user = Postgres::USER,
        password = Postgres::PASSWORD,
    )
}

async fn wait_until<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !done().await {
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The digest a reference resolves to on one instance (GET, checking the body hashes to it).
async fn resolve_on(reg: &Registry, repo: &str, reference: &str, accept: &str) -> String {
    let resp = check_status(get_manifest(reg, repo, reference, Some(accept)).await, 200).await;
    let digest = must_header(&resp, "docker-content-digest");
    let body = resp.bytes().await.expect("manifest body");
    assert_eq!(
        sha256(&body),
        digest,
        "{repo}:{reference} on {}: the body hashes to its Docker-Content-Digest",
        reg.addr
    );
    digest
}

/// GET a blob on one instance and check its bytes hash to `digest`.
async fn assert_blob_digest(reg: &Registry, repo: &str, digest: &str) {
    let resp = check_status(get_blob(reg, repo, digest).await, 200).await;
    let body = resp.bytes().await.expect("blob body");
    assert_eq!(
        sha256(&body),
        digest,
        "blob {digest} of {repo} on {}",
        reg.addr
    );
}

// ---------------------------------------------------------------------------------------------
// The harnesses themselves
// ---------------------------------------------------------------------------------------------

#[test]
fn postgres_harness_keeps_what_it_acknowledged_across_stop_and_crash() {
    let mut pg = Postgres::start();
    assert_eq!(pg.host(), "127.0.0.1");
    pg.create_database("harness");
    assert_eq!(
        pg.url("harness"),
        format!(
            "postgres://{}:{}@127.0.0.1:{}/harness",
            Postgres::USER,
            Postgres::PASSWORD,
            pg.port()
        )
    );
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'harness'"
        )
        .trim(),
        Postgres::USER
    );
    pg.psql(
        "harness",
        "CREATE TABLE t (n INT); INSERT INTO t VALUES (1)",
    );
    let port = pg.port();

    pg.stop();
    pg.start_again();
    assert_eq!(pg.port(), port);
    pg.psql("harness", "INSERT INTO t VALUES (2)");

    // What was committed before a crash is there after recovery.
    pg.kill();
    pg.start_again();
    assert_eq!(pg.psql("harness", "SELECT n FROM t ORDER BY n"), "1\n2\n");
    assert!(
        pg.log().contains("database system was interrupted"),
        "{}",
        pg.log()
    );
}

/// A tiny HTTP server answering every request with its own name.
async fn named_server(name: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let app = axum::Router::new().fallback(move || async move { name });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_harness_balances_round_robin_and_skips_a_dead_upstream() {
    let (a, task_a) = named_server("a").await;
    let (b, _task_b) = named_server("b").await;
    let (c, _task_c) = named_server("c").await;
    let nginx = Nginx::round_robin(&[a, b, c]);
    let get = |path: &str| {
        let url = nginx.url(path);
        async move {
            let resp = client().get(url).send().await.expect("GET through nginx");
            assert_eq!(resp.status(), 200);
            resp.text().await.unwrap()
        }
    };
    let mut seen = BTreeMap::new();
    for i in 0..30 {
        *seen.entry(get(&format!("/{i}")).await).or_insert(0) += 1;
    }
    assert_eq!(
        seen,
        BTreeMap::from([("a".into(), 10), ("b".into(), 10), ("c".into(), 10)]),
        "30 requests in turn over three upstreams"
    );

    task_a.abort();
    let _ = task_a.await;
    for i in 0..30 {
        let answer = get(&format!("/after/{i}")).await;
        assert!(answer == "b" || answer == "c", "answered by {answer}");
    }
}

// ---------------------------------------------------------------------------------------------
// a. Real clients through nginx
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pushes_and_pulls_through_nginx() {
    let cluster = Cluster::start();
    let env = Env::new();
    let host = cluster.nginx.host();
    let repo = "ha/skopeo";
    let img = image::oci_image(301, 4);
    let src = env.path("src");
    image::write_image_layout(&src, "v1", &img);
    let dest = format!("docker://{host}/{repo}:v1");
    assert_eq!(
        env.skopeo_push(&[], &format!("oci:{}:v1", src.display()), &dest),
        img.manifest.digest
    );
    let served = cluster.instances_served();
    assert!(
        served.len() > 1,
        "the push's requests all went to instance(s) {served:?}:\n{}",
        cluster.nginx.access_log()
    );

    // Every instance serves the image as pushed.
    for i in 0..INSTANCES {
        let reg = cluster.instance(i);
        assert_eq!(
            resolve_on(reg, repo, "v1", OCI_MANIFEST).await,
            img.manifest.digest
        );
        for b in img.blobs() {
            assert_blob_digest(reg, repo, &b.digest).await;
        }
    }

    // Pulled back through nginx: exactly the source's content.
    let back = env.path("back");
    run(env.skopeo().args([
        "copy",
        "--src-tls-verify=false",
        &dest,
        &format!("oci:{}:v1", back.display()),
    ]));
    let got = image::read_oci_layout(&back, "v1");
    let source = image::read_oci_layout(&src, "v1");
    assert_eq!(got.top_digest, img.manifest.digest);
    assert_eq!(got.top, img.manifest.data);
    assert_eq!(got.reachable, source.reachable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_s3_serve_pulls_with_a_storage_node_stopped() {
    let mut garage = Garage::start();
    let storage = garage.s3_section(garage.bucket());
    let cluster = Cluster::start_on(Some(storage), "");
    let env = Env::new();
    let host = cluster.nginx.host();
    let repo = "ha/s3";
    let img = image::oci_image(303, 3);
    let src = env.path("src");
    image::write_image_layout(&src, "v1", &img);
    let dest = format!("docker://{host}/{repo}:v1");
    assert_eq!(
        env.skopeo_push(&[], &format!("oci:{}:v1", src.display()), &dest),
        img.manifest.digest
    );
    let served = cluster.instances_served();
    assert!(
        served.len() > 1,
        "the push went to instance(s) {served:?} only"
    );

    // A node of the object store goes down (not the one the presigned URLs name): every
    // instance still serves the image, and a client pulls it whole through nginx.
    garage.stop_node(2);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for i in 0..INSTANCES {
        let reg = cluster.instance(i);
        assert_eq!(
            resolve_on(reg, repo, "v1", OCI_MANIFEST).await,
            img.manifest.digest
        );
        let layer = &img.layers[0];
        let resp = client
            .get(reg.url(&format!("/v2/{repo}/blobs/{}", layer.digest)))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 307, "instance {i} redirects blob pulls");
        let location = resp.headers()["location"].to_str().unwrap().to_string();
        assert!(location.starts_with(&garage.endpoint()), "{location}");
        let bytes = reqwest::get(&location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(sha256(&bytes), layer.digest);
    }
    let back = env.path("back");
    run(env.skopeo().args([
        "copy",
        "--src-tls-verify=false",
        &dest,
        &format!("oci:{}:v1", back.display()),
    ]));
    let got = image::read_oci_layout(&back, "v1");
    assert_eq!(got.top_digest, img.manifest.digest);
    assert_eq!(got.reachable, image::read_oci_layout(&src, "v1").reachable);
    garage.start_node(2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_pushes_and_pulls_through_nginx() {
    let env = Env::new();
    if !can_run(
        "docker_pushes_and_pulls_through_nginx",
        env.docker_available(),
        "BERTH_SKIP_DOCKER",
    ) {
        return;
    }
    let cluster = Cluster::start();
    let host = cluster.nginx.host();
    let unique = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let repo = format!("ha/docker-{unique}");
    let name = format!("{host}/{repo}:v1");
    let rootfs = env.path("rootfs.tar");
    std::fs::write(&rootfs, image::rootfs_tar(302)).unwrap();
    let id = run(env
        .cmd("docker")
        .args(["import", rootfs.to_str().unwrap(), &name]))
    .trim()
    .to_string();
    // Whatever happens below, the engine forgets these images.
    struct Forget<'a>(&'a Env, Vec<String>);
    impl Drop for Forget<'_> {
        fn drop(&mut self) {
            for r in &self.1 {
                let _ = self.0.cmd("docker").args(["rmi", "--force", r]).output();
            }
        }
    }
    let _forget = Forget(&env, vec![name.clone(), id.clone()]);
    assert!(id.starts_with("sha256:"), "docker import output: {id}");

    let out = run(env.cmd("docker").args(["push", &name]));
    let pushed = out
        .lines()
        .find_map(|l| {
            let i = l.find("digest: ")?;
            Some(l[i + 8..].split_whitespace().next()?.to_string())
        })
        .unwrap_or_else(|| panic!("no digest in docker push output:\n{out}"));

    // Every instance serves that manifest, whose config is the image id.
    for i in 0..INSTANCES {
        let reg = cluster.instance(i);
        assert_eq!(resolve_on(reg, &repo, "v1", DOCKER_MANIFEST).await, pushed);
        let resp = get_manifest(reg, &repo, &pushed, Some(DOCKER_MANIFEST)).await;
        let manifest: Value =
            serde_json::from_slice(&check_status(resp, 200).await.bytes().await.unwrap()).unwrap();
        assert_eq!(manifest["config"]["digest"], id.as_str());
        for layer in manifest["layers"].as_array().unwrap() {
            assert_blob_digest(reg, &repo, layer["digest"].as_str().unwrap()).await;
        }
    }

    // Forgotten locally, pulled back through nginx: the same image.
    run(env.cmd("docker").args(["rmi", &name]));
    run_fails(env.cmd("docker").args(["image", "inspect", &id]));
    let out = run(env.cmd("docker").args(["pull", &name]));
    assert!(
        out.contains(&format!("Digest: {pushed}")),
        "docker pull output:\n{out}"
    );
    let inspect: Value =
        serde_json::from_str(&run(env.cmd("docker").args(["image", "inspect", &name]))).unwrap();
    assert_eq!(inspect[0]["Id"], id.as_str());
}

// ---------------------------------------------------------------------------------------------
// b. Tags read through another instance than the one that wrote them
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_moves_are_seen_at_once_through_every_other_instance() {
    let cluster = Cluster::start();
    let repo = "ha/moving";
    let a = push_image_by_digest(cluster.instance(0), repo, "moving-a").await;
    let b = push_image_by_digest(cluster.instance(1), repo, "moving-b").await;
    assert_ne!(a.digest, b.digest);

    const MOVES: usize = 1_000;
    let mut stale = Vec::new();
    for i in 0..MOVES {
        let target = if i % 2 == 0 { &a } else { &b };
        let writer = cluster.instance(i);
        let reader = cluster.instance(i + 1);
        push_manifest_ok(writer, repo, "current", OCI_MANIFEST, &target.manifest).await;
        let got = resolve_on(reader, repo, "current", OCI_MANIFEST).await;
        if got != target.digest {
            stale.push(format!(
                "move {i}: written through instance {}, read through {}: {got}",
                i % INSTANCES,
                (i + 1) % INSTANCES
            ));
        }
    }
    assert!(
        stale.is_empty(),
        "{} stale reads of {MOVES}:\n{}",
        stale.len(),
        stale.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_deleted_through_one_instance_is_gone_from_every_other() {
    let cluster = Cluster::start();
    let repo = "ha/tags";
    let a = push_image_by_digest(cluster.instance(0), repo, "tags-a").await;
    let b = push_image_by_digest(cluster.instance(0), repo, "tags-b").await;
    for tag in ["t1", "t2", "t3"] {
        push_manifest_ok(cluster.instance(0), repo, tag, OCI_MANIFEST, &a.manifest).await;
    }
    let all: Vec<String> = ["t1", "t2", "t3"].map(String::from).to_vec();
    for i in 0..INSTANCES {
        assert_eq!(list_tags(cluster.instance(i), repo).await, all);
        // Reading the tag fills whatever each instance caches.
        assert_eq!(
            resolve_on(cluster.instance(i), repo, "t2", OCI_MANIFEST).await,
            a.digest
        );
    }

    let resp = client()
        .delete(cluster.instance(1).url(&format!("/v2/{repo}/manifests/t2")))
        .send()
        .await
        .unwrap();
    expect_status(resp, 202).await;
    for i in [2, 0, 1] {
        let reg = cluster.instance(i);
        assert_eq!(
            list_tags(reg, repo).await,
            vec!["t1".to_string(), "t3".to_string()],
            "tags/list through instance {i} after the delete through instance 1"
        );
        expect_error(
            get_manifest(reg, repo, "t2", None).await,
            404,
            "MANIFEST_UNKNOWN",
        )
        .await;
        // Deleting a tag keeps the manifest it pointed to.
        assert_eq!(
            resolve_on(reg, repo, &a.digest, OCI_MANIFEST).await,
            a.digest
        );
    }

    // The tag comes back through another instance, on another manifest.
    push_manifest_ok(cluster.instance(2), repo, "t2", OCI_MANIFEST, &b.manifest).await;
    for i in 0..INSTANCES {
        let reg = cluster.instance(i);
        assert_eq!(list_tags(reg, repo).await, all);
        assert_eq!(resolve_on(reg, repo, "t2", OCI_MANIFEST).await, b.digest);
    }
}

// ---------------------------------------------------------------------------------------------
// c. An instance killed in the middle of a chunk
// ---------------------------------------------------------------------------------------------

/// A client that sends its requests, waiting no longer than `timeout` for an answer.
fn client_with_timeout(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(timeout)
        .build()
        .expect("reqwest client")
}

/// `PATCH <url>` with `Content-Range: <start>-<end>` whose body is what arrives on `rx`
/// (`len` bytes in all).
async fn patch_streamed(
    url: String,
    start: u64,
    len: u64,
    rx: tokio::sync::mpsc::Receiver<Bytes>,
) -> reqwest::Result<reqwest::Response> {
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::io::Error>(chunk), rx))
    });
    client()
        .patch(url)
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("{start}-{}", start + len - 1))
        .header("content-length", len)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
}

/// The instance writing a chunk of an upload right now: the one with a file open under the
/// storage root's `berth/tmp` or `berth/uploads` (only one upload is in flight when this asks).
fn instance_writing_a_part(cluster: &Cluster) -> Option<usize> {
    let tmp = cluster.root.join("berth/tmp");
    let uploads = cluster.root.join("berth/uploads");
    (0..INSTANCES).find(|&i| {
        let Some(pid) = cluster.instance(i).pid() else {
            return false;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return false;
        };
        fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .map(|target| target.starts_with(&tmp) || target.starts_with(&uploads))
                .unwrap_or(false)
        })
    })
}

/// Where an upload stands, asked through `front` (`GET` on the upload URL): `Some(size)`, or
/// `None` when the registry no longer knows the session.
async fn upload_offset(front: &Registry, url: &str) -> Option<u64> {
    let resp = upload_status(&on_instance(front, url)).await;
    match resp.status().as_u16() {
        204 => {
            let range = must_header(&resp, "range");
            let end: u64 = range
                .strip_prefix("0-")
                .and_then(|e| e.parse().ok())
                .unwrap_or_else(|| panic!("Range of an upload: {range:?}"));
            // "0-0" is an empty upload here: every part this client sends is larger than a byte.
            Some(if end == 0 { 0 } else { end + 1 })
        }
        404 => None,
        status => panic!(
            "GET on the upload answered {status}: {}",
            resp.text().await.unwrap_or_default()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_upload_survives_an_instance_killed_mid_chunk() {
    let mut cluster = Cluster::start();
    let front = cluster.front();
    let repo = "ha/big";

    // Content acknowledged before the crash, pushed through nginx (so through every instance).
    let mut before = Vec::new();
    for i in 0..6 {
        let tag = format!("before-{i}");
        before.push((tag.clone(), push_image(&front, repo, &tag, &tag).await));
    }

    const SIZE: usize = 64 << 20;
    const CHUNK: usize = 1 << 20;
    const KILL_AT: usize = 16 * CHUNK;
    let data = Bytes::from(image::random_bytes(303, SIZE));
    let digest = sha256(&data);

    let mut url = start_upload(&front, repo).await;
    let mut offset = 0usize;
    let mut victim = None;
    let mut failures = Vec::new();
    while offset < SIZE {
        let end = (offset + CHUNK).min(SIZE);
        let chunk = data.slice(offset..end);
        let outcome = if victim.is_none() && offset >= KILL_AT {
            // Half the chunk goes out; the instance receiving it is killed; then the rest.
            let (tx, rx) = tokio::sync::mpsc::channel(2);
            let patch = tokio::spawn(patch_streamed(
                url.clone(),
                offset as u64,
                chunk.len() as u64,
                rx,
            ));
            let half = chunk.len() / 2;
            tx.send(chunk.slice(..half)).await.unwrap();
            let start = Instant::now();
            let writer = loop {
                if let Some(i) = instance_writing_a_part(&cluster) {
                    break i;
                }
                assert!(
                    start.elapsed() < DEADLINE,
                    "no instance is writing the chunk at offset {offset}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            cluster.kill(writer);
            victim = Some(writer);
            let _ = tx.send(chunk.slice(half..)).await;
            drop(tx);
            let outcome = patch.await.unwrap();
            assert!(
                !matches!(&outcome, Ok(r) if r.status() == 202),
                "a chunk whose receiver was killed before it had all of it was acknowledged"
            );
            outcome
        } else {
            Ok(patch_chunk(&url, &chunk, Some(offset as u64)).await)
        };
        match outcome {
            Ok(resp) if resp.status() == 202 => {
                assert_eq!(must_header(&resp, "range"), format!("0-{}", end - 1));
                url = resolve(&front, &must_header(&resp, "location"));
                offset = end;
            }
            failed => {
                failures.push(match failed {
                    Ok(resp) => format!("offset {offset}: {}", resp.status()),
                    Err(e) => format!("offset {offset}: {e}"),
                });
                assert!(failures.len() < 10, "too many failed chunks: {failures:?}");
                // Resume from where the registry says the upload stands, or start over.
                match upload_offset(&front, &url).await {
                    Some(size) => {
                        assert_eq!(
                            size as usize % CHUNK,
                            0,
                            "the upload stands at {size}: part of a failed chunk was kept"
                        );
                        assert!(
                            size as usize <= offset,
                            "the upload grew past what was sent"
                        );
                        offset = size as usize;
                    }
                    None => {
                        url = start_upload(&front, repo).await;
                        offset = 0;
                    }
                }
            }
        }
    }
    assert!(
        !failures.is_empty(),
        "no chunk failed although its receiver was killed"
    );
    let resp = check_status(finish_upload(&url, &digest, None, None).await, 201).await;
    assert_eq!(must_header(&resp, "docker-content-digest"), digest);
    let victim = victim.expect("an instance was killed");

    // Through nginx (several rounds, so the dead instance's turn comes up) and through every
    // survivor: the big blob and everything acknowledged before.
    for _ in 0..INSTANCES {
        let resp = check_status(get_blob(&front, repo, &digest).await, 200).await;
        assert_eq!(
            sha256(&resp.bytes().await.unwrap()),
            digest,
            "the 64 MiB blob"
        );
        for (_, img) in &before {
            assert_blob(&front, repo, &img.config).await;
            assert_blob(&front, repo, &img.layer).await;
            assert_manifest(&front, repo, &img.digest, OCI_MANIFEST, &img.manifest).await;
        }
    }
    for i in (0..INSTANCES).filter(|&i| i != victim) {
        let reg = cluster.instance(i);
        assert_blob_digest(reg, repo, &digest).await;
        for (tag, img) in &before {
            assert_eq!(resolve_on(reg, repo, tag, OCI_MANIFEST).await, img.digest);
            assert_blob(reg, repo, &img.layer).await;
        }
    }
    // Pushes through nginx keep working too.
    let after = push_image(&front, repo, "after", "after").await;
    assert_manifest(&front, repo, "after", OCI_MANIFEST, &after.manifest).await;
}

// ---------------------------------------------------------------------------------------------
// d. Notifications: one sender per endpoint, and another after it died
// ---------------------------------------------------------------------------------------------

/// One event a webhook received, with when it arrived.
#[derive(Clone, Debug)]
struct Arrival {
    at: Instant,
    event: Value,
}

/// Webhook receivers on 127.0.0.1: `POST /<endpoint>` records the envelope's events under the
/// endpoint's name and answers 200.
#[derive(Clone, Default)]
struct Webhooks {
    received: Arc<Mutex<BTreeMap<String, Vec<Arrival>>>>,
}

impl Webhooks {
    async fn start() -> (Webhooks, SocketAddr) {
        let hooks = Webhooks::default();
        let state = hooks.clone();
        let app = axum::Router::new().route(
            "/{endpoint}",
            axum::routing::post(
                move |axum::extract::Path(endpoint): axum::extract::Path<String>, body: Bytes| {
                    let state = state.clone();
                    async move {
                        let envelope: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        let at = Instant::now();
                        let mut received = state.received.lock().unwrap();
                        let list = received.entry(endpoint).or_default();
                        for event in envelope["events"].as_array().cloned().unwrap_or_default() {
                            list.push(Arrival { at, event });
                        }
                        http::StatusCode::OK
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        (hooks, addr)
    }

    fn arrivals(&self, endpoint: &str) -> Vec<Arrival> {
        self.received
            .lock()
            .unwrap()
            .get(endpoint)
            .cloned()
            .unwrap_or_default()
    }

    /// The manifest digests whose push events `endpoint` received (with repetitions).
    fn manifest_pushes(&self, endpoint: &str) -> Vec<String> {
        self.arrivals(endpoint)
            .iter()
            .filter(|a| {
                a.event["action"] == "push" && a.event["target"]["mediaType"] == OCI_MANIFEST
            })
            .map(|a| {
                a.event["target"]["digest"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    }
}

/// Ids received more than once.
fn repeated_ids(arrivals: &[Arrival]) -> BTreeSet<String> {
    let mut count: HashMap<String, usize> = HashMap::new();
    for a in arrivals {
        *count
            .entry(a.event["id"].as_str().unwrap_or("").to_string())
            .or_default() += 1;
    }
    count
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(id, _)| id)
        .collect()
}

/// The process id in the holder (`<host>/<pid>/<random>`) of lease `name`, if it is held.
fn lease_holder_pid(pg: &Postgres, name: &str) -> Option<u32> {
    let holder = pg.psql(
        DATABASE,
        &format!("SELECT holder FROM leases WHERE name = '{name}'"),
    );
    let mut parts = holder.trim().rsplitn(3, '/');
    let _random = parts.next()?;
    parts.next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_are_sent_once_and_resume_after_the_sender_dies() {
    const ENDPOINTS: [&str; 2] = ["first", "second"];
    let (hooks, hook_addr) = Webhooks::start().await;
    let mut extra = String::from("notifications:\n  endpoints:\n");
    for name in ENDPOINTS {
        extra.push_str(&format!(
            "    - name: {name}\n      url: http://{hook_addr}/{name}\n      timeout: 5s\n      \
             threshold: 3\n      backoff: 200ms\n      ignore:\n        actions: [pull]\n"
        ));
    }
    let mut cluster = Cluster::start_with(&extra);
    let front = cluster.front();
    let repo = "ha/events";

    // While all three run: every event arrives once at each endpoint.
    let mut pushed = Vec::new();
    for i in 0..6 {
        pushed.push(
            push_image(&front, repo, &format!("v{i}"), &format!("events-{i}"))
                .await
                .digest,
        );
    }
    for name in ENDPOINTS {
        wait_until(&format!("the first pushes at {name}"), || {
            let got = hooks.manifest_pushes(name);
            let all = pushed.iter().all(|d| got.contains(d));
            async move { all }
        })
        .await;
    }
    // A later event arrived after these (delivery is in order): nothing was sent twice by then.
    let marker = push_image(&front, repo, "marker", "events-marker")
        .await
        .digest;
    pushed.push(marker.clone());
    for name in ENDPOINTS {
        wait_until(&format!("the marker at {name}"), || {
            let seen = hooks.manifest_pushes(name).contains(&marker);
            async move { seen }
        })
        .await;
        let arrivals = hooks.arrivals(name);
        assert_eq!(
            repeated_ids(&arrivals),
            BTreeSet::new(),
            "events sent twice to {name} while no instance died"
        );
        let mut got = hooks.manifest_pushes(name);
        got.sort();
        let mut want = pushed.clone();
        want.sort();
        assert_eq!(got, want, "the manifest pushes {name} received, once each");
    }

    // Kill the sender of the first endpoint.
    let lease = format!("notifications/{}", ENDPOINTS[0]);
    let mut holder = None;
    wait_until(&format!("a running instance holding {lease}"), || {
        holder = lease_holder_pid(&cluster.pg, &lease).and_then(|p| cluster.instance_with_pid(p));
        let held = holder.is_some();
        async move { held }
    })
    .await;
    let holders: BTreeMap<&str, Option<usize>> = ENDPOINTS
        .iter()
        .map(|name| {
            let pid = lease_holder_pid(&cluster.pg, &format!("notifications/{name}"));
            (*name, pid.and_then(|p| cluster.instance_with_pid(p)))
        })
        .collect();
    let victim = holder.unwrap();
    cluster.kill(victim);
    let killed_at = Instant::now();

    // More pushes: another instance takes the lease (its time to live is 10 s) and delivers
    // them, with nothing lost.
    for i in 0..6 {
        pushed.push(
            push_image(&front, repo, &format!("w{i}"), &format!("events-after-{i}"))
                .await
                .digest,
        );
    }
    for name in ENDPOINTS {
        wait_until(
            &format!("every push at {name} after the sender died"),
            || {
                let got = hooks.manifest_pushes(name);
                let all = pushed.iter().all(|d| got.contains(d));
                async move { all }
            },
        )
        .await;
    }
    let new_holder =
        lease_holder_pid(&cluster.pg, &lease).and_then(|p| cluster.instance_with_pid(p));
    assert!(
        new_holder.is_some_and(|h| h != victim),
        "{lease} is held by instance {new_holder:?} after instance {victim} died"
    );

    // Delivery is at least once: the dead sender may have had events accepted that it had not
    // yet acknowledged, and its successor sends those again. Only those: an event first
    // received after the crash comes once, and an endpoint whose sender did not die gets no
    // event twice.
    for name in ENDPOINTS {
        let arrivals = hooks.arrivals(name);
        let repeated = repeated_ids(&arrivals);
        if holders[name] == Some(victim) {
            let first_after_crash: Vec<&String> = repeated
                .iter()
                .filter(|id| {
                    arrivals
                        .iter()
                        .find(|a| a.event["id"] == id.as_str())
                        .is_some_and(|a| a.at > killed_at)
                })
                .collect();
            assert!(
                first_after_crash.is_empty(),
                "{name}: events first sent after the crash were sent again: {first_after_crash:?}"
            );
        } else {
            assert_eq!(repeated, BTreeSet::new(), "{name}: events sent twice");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// e. The database stopped under load
// ---------------------------------------------------------------------------------------------

/// How long a request may take before it counts as hanging.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);
/// How long the database stays down.
const OUTAGE: Duration = Duration::from_secs(10);

/// What one request got.
#[derive(Debug)]
enum Outcome {
    /// The expected success.
    Done,
    /// 503 with the OCI code `UNAVAILABLE` and a `Retry-After`.
    Unavailable,
    /// Anything else: another status, another code, no answer in time.
    Wrong(String),
}

#[derive(Debug)]
struct Request {
    what: String,
    write: bool,
    sent: Instant,
    answered: Instant,
    outcome: Outcome,
}

/// What a successful answer carries.
enum Want<'a> {
    /// Only the status.
    Status,
    /// `Docker-Content-Digest` (a manifest push).
    Digest(&'a str),
    /// `Docker-Content-Digest` and a body hashing to it (a pull).
    Content(&'a str),
}

async fn classify(sent: reqwest::Result<reqwest::Response>, ok: u16, want: Want<'_>) -> Outcome {
    let resp = match sent {
        Ok(resp) => resp,
        Err(e) => return Outcome::Wrong(format!("no answer: {e:?}")),
    };
    let status = resp.status().as_u16();
    let retry_after = resp.headers().contains_key("retry-after");
    let digest = header(&resp, "docker-content-digest");
    let body = match resp.bytes().await {
        Ok(body) => body,
        Err(e) => return Outcome::Wrong(format!("{status}, body cut: {e}")),
    };
    if status == ok {
        let right = match want {
            Want::Status => true,
            Want::Digest(d) => digest.as_deref() == Some(d),
            Want::Content(d) => digest.as_deref() == Some(d) && sha256(&body) == d,
        };
        return if right {
            Outcome::Done
        } else {
            Outcome::Wrong(format!(
                "{status} with the wrong digest or content ({digest:?})"
            ))
        };
    }
    let codes: Vec<String> = parse_errors(&body)
        .map(|errors| errors.into_iter().map(|e| e.code).collect())
        .unwrap_or_default();
    if status == 503 && codes.iter().any(|c| c == "UNAVAILABLE") && retry_after {
        Outcome::Unavailable
    } else {
        Outcome::Wrong(format!(
            "{status} {codes:?} (Retry-After: {retry_after}): {}",
            String::from_utf8_lossy(&body)
        ))
    }
}

/// Shared by the load workers and the test.
#[derive(Default)]
struct Load {
    stop: AtomicBool,
    requests: Mutex<Vec<Request>>,
    /// Images whose manifest push was acknowledged: (tag, image), per worker.
    acknowledged: Mutex<Vec<(usize, String, Image)>>,
}

impl Load {
    /// The requests that got neither their answer nor 503 `UNAVAILABLE`, described.
    fn wrong(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter_map(|r| match &r.outcome {
                Outcome::Wrong(why) => Some(format!("{}: {why}", r.what)),
                _ => None,
            })
            .collect()
    }

    /// Whether every worker had `n[w]` pushes acknowledged; panics as soon as a request got a
    /// wrong answer, so a broken run shows why instead of waiting out the deadline.
    fn acknowledged_at_least(&self, n: &[usize]) -> bool {
        let wrong = self.wrong();
        assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));
        (0..INSTANCES).all(|w| self.acknowledged_by(w) >= n[w])
    }

    fn acknowledged_by(&self, worker: usize) -> usize {
        self.acknowledged
            .lock()
            .unwrap()
            .iter()
            .filter(|(w, _, _)| *w == worker)
            .count()
    }
}

/// One worker: pushes whole images (two blobs, a tagged manifest) and reads back its last one,
/// through each instance in turn, until told to stop.
async fn load_worker(worker: usize, instances: Vec<String>, load: Arc<Load>) {
    let client = client_with_timeout(ANSWER_WITHIN);
    let repo = format!("ha/load-{worker}");
    let mut last: Option<(String, Image)> = None;
    let mut round = 0usize;
    while !load.stop.load(Ordering::SeqCst) {
        let base = &instances[(worker + round) % INSTANCES];
        let tag = format!("r{round}");
        let img = sample_image(&format!("load-{worker}-{round}"));
        let mut pushed = true;
        for (what, data) in [("config", &img.config), ("layer", &img.layer)] {
            let url = with_query(
                &format!("{base}/v2/{repo}/blobs/uploads/"),
                "digest",
                &sha256(data),
            );
            let sent = Instant::now();
            let resp = client.post(url).body(data.clone()).send().await;
            let outcome = classify(resp, 201, Want::Status).await;
            pushed &= matches!(outcome, Outcome::Done);
            load.requests.lock().unwrap().push(Request {
                what: format!("push {what} {repo} via {base}"),
                write: true,
                sent,
                answered: Instant::now(),
                outcome,
            });
            if !pushed {
                break;
            }
        }
        if pushed {
            let sent = Instant::now();
            let resp = client
                .put(format!("{base}/v2/{repo}/manifests/{tag}"))
                .header("content-type", OCI_MANIFEST)
                .body(img.manifest.clone())
                .send()
                .await;
            let outcome = classify(resp, 201, Want::Digest(&img.digest)).await;
            if matches!(outcome, Outcome::Done) {
                load.acknowledged
                    .lock()
                    .unwrap()
                    .push((worker, tag.clone(), img.clone()));
                last = Some((tag, img));
            }
            load.requests.lock().unwrap().push(Request {
                what: format!("push manifest {repo} via {base}"),
                write: true,
                sent,
                answered: Instant::now(),
                outcome,
            });
        }
        if let Some((tag, img)) = &last {
            let reader = &instances[(worker + round + 1) % INSTANCES];
            let sent = Instant::now();
            let resp = client
                .get(format!("{reader}/v2/{repo}/manifests/{tag}"))
                .header("accept", OCI_MANIFEST)
                .send()
                .await;
            let outcome = classify(resp, 200, Want::Content(&img.digest)).await;
            load.requests.lock().unwrap().push(Request {
                what: format!("pull {repo}:{tag} via {reader}"),
                write: false,
                sent,
                answered: Instant::now(),
                outcome,
            });
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_outage_answers_503_and_service_resumes_by_itself() {
    let mut cluster = Cluster::start();
    let pids: Vec<Option<u32>> = cluster.instances.iter().map(|r| r.pid()).collect();
    let bases: Vec<String> = (0..INSTANCES)
        .map(|i| cluster.instance(i).url(""))
        .collect();
    let load = Arc::new(Load::default());
    let workers: Vec<_> = (0..INSTANCES)
        .map(|w| tokio::spawn(load_worker(w, bases.clone(), load.clone())))
        .collect();
    wait_until("pushes acknowledged before the outage", || {
        let done = load.acknowledged_at_least(&[3; INSTANCES]);
        async move { done }
    })
    .await;

    cluster.pg.stop();
    let stopped = Instant::now();
    tokio::time::sleep(OUTAGE).await;
    let restarting = Instant::now();
    cluster.pg.start_again();
    let before_outage: Vec<usize> = (0..INSTANCES).map(|w| load.acknowledged_by(w)).collect();

    // Berth reconnects by itself: every worker gets pushes acknowledged again.
    let needed: Vec<usize> = before_outage.iter().map(|n| n + 3).collect();
    wait_until("pushes acknowledged after the outage", || {
        let done = load.acknowledged_at_least(&needed);
        async move { done }
    })
    .await;
    load.stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }

    let wrong = load.wrong();
    let requests = std::mem::take(&mut *load.requests.lock().unwrap());
    assert!(
        wrong.is_empty(),
        "{} of {} requests got neither their answer nor 503 UNAVAILABLE:\n{}",
        wrong.len(),
        requests.len(),
        wrong.join("\n")
    );
    // A write sent and answered while the database was down cannot have succeeded.
    let outage_writes: Vec<&Request> = requests
        .iter()
        .filter(|r| r.write && r.sent > stopped && r.answered < restarting)
        .collect();
    assert!(
        !outage_writes.is_empty(),
        "no write was sent during the outage"
    );
    let succeeded: Vec<&String> = outage_writes
        .iter()
        .filter(|r| !matches!(r.outcome, Outcome::Unavailable))
        .map(|r| &r.what)
        .collect();
    assert!(
        succeeded.is_empty(),
        "writes acknowledged while the database was down: {succeeded:?}"
    );
    eprintln!(
        "{} requests; {} writes during the outage, each answered 503 UNAVAILABLE",
        requests.len(),
        outage_writes.len()
    );
    // The same processes served throughout.
    for (i, pid) in pids.iter().enumerate() {
        let pid = pid.expect("running instance");
        assert_eq!(cluster.instance(i).pid(), Some(pid));
        // A process that exited stays a zombie until the harness reaps it: read its state.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
        assert!(
            state.is_some_and(|s| !s.starts_with('Z')),
            "instance {i} exited"
        );
    }

    // Everything acknowledged, before the outage or after, is there through every instance.
    let acknowledged = std::mem::take(&mut *load.acknowledged.lock().unwrap());
    for (worker, tag, img) in &acknowledged {
        let repo = format!("ha/load-{worker}");
        for i in 0..INSTANCES {
            let reg = cluster.instance(i);
            assert_eq!(resolve_on(reg, &repo, tag, OCI_MANIFEST).await, img.digest);
            assert_blob(reg, &repo, &img.config).await;
            assert_blob(reg, &repo, &img.layer).await;
        }
    }
}
