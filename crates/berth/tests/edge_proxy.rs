//! Running behind a load balancer or a TLS proxy, against the real `berth serve`: which origin
//! absolute URLs are built on (`http.host`, `http.trustedproxies`, the request's own), the probe
//! endpoints `/readyz` and `/livez`, the drain on SIGTERM (`http.draintimeout`) and the storage
//! probe (`health.storagedriver`) that takes the registry out of service while storage fails.
//!
//! The registry is reached over 127.0.0.1, so "a trusted proxy" is a configuration that trusts
//! 127.0.0.1 and "an untrusted peer" one that trusts other addresses only.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::oci::*;
use common::postgres::Postgres;
use common::token::{write_bundle, Signer};
use common::{pseudo_bytes, sha256, Launch, Registry};
use reqwest::Response;

/// A data directory and configuration files in a temporary directory.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The filesystem storage root.
    fn root(&self) -> PathBuf {
        self.path("data")
    }

    /// Starts Berth on 127.0.0.1:0 with a debug listener; `http` lines go into the `http:`
    /// section (two spaces of indentation added), `rest` is appended at the top level.
    fn start(&self, http: &[&str], rest: &str) -> Registry {
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n  debug:\n    addr: 127.0.0.1:0\n",
            self.root().display()
        );
        for line in http {
            yaml.push_str("  ");
            yaml.push_str(line);
            yaml.push('\n');
        }
        yaml.push_str(rest);
        let config = self.path("config.yml");
        std::fs::write(&config, yaml).expect("write config");
        let mut reg = Registry::launch(&Launch {
            args: vec![config.to_string_lossy().into_owned()],
            stderr: Some(self.path("stderr.log")),
            ..Launch::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        reg.data = self.root();
        reg
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.path("stderr.log")).unwrap_or_default()
    }
}

fn debug_url(reg: &Registry, path: &str) -> String {
    format!("http://{}{path}", reg.debug_addr.expect("debug listener"))
}

/// Status and body of a GET.
async fn get(url: &str) -> (u16, String) {
    let resp = client().get(url).send().await.expect("GET");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// Polls `url` until its status is `want`; panics with the last answer after a minute (a bound
/// for a broken build, not a measurement).
async fn wait_for_status(url: &str, want: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let last = match client().get(url).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body = resp.text().await.unwrap_or_default();
                if status == want {
                    return body;
                }
                format!("{status} {body}")
            }
            Err(e) => format!("error: {e}"),
        };
        assert!(
            Instant::now() < deadline,
            "{url} never answered {want}; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Headers a hostile client (or a proxy nobody trusts) sends to move absolute URLs elsewhere.
const EVIL: &[(&str, &str)] = &[
    ("x-forwarded-proto", "https"),
    ("x-forwarded-host", "evil.example"),
    ("forwarded", "for=192.0.2.1;proto=https;host=evil.example"),
];

/// `POST /v2/<repo>/blobs/uploads/` with extra headers: the session's `Location`.
async fn upload_location(reg: &Registry, repo: &str, headers: &[(&str, &str)]) -> String {
    let mut req = client()
        .post(reg.url(&format!("/v2/{repo}/blobs/uploads/")))
        .header("content-length", "0");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = check_status(req.send().await.expect("POST"), 202).await;
    must_header(&resp, "location")
}

/// A monolithic blob push with extra headers: the `Location` of the 201.
async fn blob_location(reg: &Registry, repo: &str, headers: &[(&str, &str)]) -> String {
    let data = pseudo_bytes(repo, 100);
    let mut req = client()
        .post(with_query(
            &reg.url(&format!("/v2/{repo}/blobs/uploads/")),
            "digest",
            &sha256(&data),
        ))
        .header("content-type", "application/octet-stream")
        .body(data);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = check_status(req.send().await.expect("POST"), 201).await;
    must_header(&resp, "location")
}

/// The `Link` of a tags listing cut to one entry, with extra headers.
async fn tags_link(reg: &Registry, repo: &str, headers: &[(&str, &str)]) -> String {
    let mut req = client().get(reg.url(&format!("/v2/{repo}/tags/list?n=1")));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = check_status(req.send().await.expect("GET tags"), 200).await;
    must_header(&resp, "link")
}

// ---------------------------------------------------------------------------------------------
// Origins
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn forwarded_headers_of_an_untrusted_peer_are_ignored() {
    let setup = Setup::new();
    // Trusts other addresses, IPv6 loopback among them: not 127.0.0.1, which the test uses.
    let reg = setup.start(
        &["trustedproxies: [10.0.0.0/8, 127.0.0.2, '::1', 'fd00::/8']"],
        "",
    );
    push_image(&reg, "edge/untrusted", "a", "x").await;
    push_image(&reg, "edge/untrusted", "b", "x").await;

    let session = upload_location(&reg, "edge/untrusted", EVIL).await;
    let blob = blob_location(&reg, "edge/untrusted", EVIL).await;
    let link = tags_link(&reg, "edge/untrusted", EVIL).await;
    for (what, value) in [("session", &session), ("blob", &blob), ("link", &link)] {
        assert!(!value.contains("evil"), "{what}: {value}");
        assert!(!value.contains("https"), "{what}: {value}");
    }
    assert!(
        session.starts_with("/v2/edge/untrusted/blobs/uploads/"),
        "{session}"
    );
    assert!(
        blob.starts_with("/v2/edge/untrusted/blobs/sha256:"),
        "{blob}"
    );
    assert!(
        link.starts_with("</v2/edge/untrusted/tags/list?n=1&last=a>"),
        "{link}"
    );
    // The session is on this registry and works.
    check_status(upload_status(&resolve(&reg, &session)).await, 204).await;

    // Nobody is trusted without the key.
    let setup = Setup::new();
    let reg = setup.start(&[], "");
    let session = upload_location(&reg, "edge/nobody", EVIL).await;
    assert!(
        session.starts_with("/v2/edge/nobody/blobs/uploads/"),
        "{session}"
    );
}

#[tokio::test]
async fn a_trusted_proxy_sets_the_origin_of_locations_and_links() {
    let setup = Setup::new();
    let reg = setup.start(&["trustedproxies: [127.0.0.1/32]"], "");
    push_image(&reg, "edge/trusted", "a", "x").await;
    push_image(&reg, "edge/trusted", "b", "x").await;
    let proxy = [
        ("x-forwarded-proto", "https"),
        // A proxy that appends: the first value is the one nearest the client.
        (
            "x-forwarded-host",
            "registry.example:8443, internal.example",
        ),
    ];
    let public = "https://registry.example:8443";

    let session = upload_location(&reg, "edge/trusted", &proxy).await;
    assert!(
        session.starts_with(&format!("{public}/v2/edge/trusted/blobs/uploads/")),
        "{session}"
    );
    let blob = blob_location(&reg, "edge/trusted", &proxy).await;
    assert!(
        blob.starts_with(&format!("{public}/v2/edge/trusted/blobs/sha256:")),
        "{blob}"
    );
    let link = tags_link(&reg, "edge/trusted", &proxy).await;
    assert_eq!(
        link,
        format!("<{public}/v2/edge/trusted/tags/list?n=1&last=a>; rel=\"next\"")
    );
    // The forwarded Location still names this registry's session: continue it directly.
    check_status(upload_status(&on_instance(&reg, &session)).await, 204).await;

    // RFC 7239 alone.
    let session = upload_location(
        &reg,
        "edge/trusted",
        &[(
            "forwarded",
            "for=192.0.2.9;proto=https;host=\"registry.example\"",
        )],
    )
    .await;
    assert!(
        session.starts_with("https://registry.example/v2/edge/trusted/blobs/uploads/"),
        "{session}"
    );
    // Only the scheme forwarded: the request's own host with it.
    let session = upload_location(&reg, "edge/trusted", &[("x-forwarded-proto", "https")]).await;
    assert!(
        session.starts_with(&format!("https://{}/v2/", reg.host())),
        "{session}"
    );

    // Malformed forwarded values are not used, even from a trusted proxy.
    for headers in [
        &[("x-forwarded-host", "user@evil.example")][..],
        &[("x-forwarded-host", "evil.example/path")],
        &[("x-forwarded-host", "evil.example:99999")],
        &[("x-forwarded-proto", "javascript")],
        &[("forwarded", "host=\"evil example\";proto=gopher")],
    ] {
        let session = upload_location(&reg, "edge/trusted", headers).await;
        assert!(!session.contains("evil"), "{headers:?}: {session}");
        assert!(!session.contains("javascript"), "{headers:?}: {session}");
        assert!(
            session.starts_with("/v2/edge/trusted/blobs/uploads/"),
            "{headers:?}: {session}"
        );
    }
    // A trusted proxy that forwards nothing: paths, as for any direct request.
    let session = upload_location(&reg, "edge/trusted", &[]).await;
    assert!(session.starts_with("/v2/"), "{session}");
}

#[tokio::test]
async fn http_host_wins_over_forwarded_headers_and_relativeurls_over_both() {
    let setup = Setup::new();
    let reg = setup.start(
        &[
            "host: https://configured.example",
            "trustedproxies: [127.0.0.1/32]",
        ],
        "",
    );
    let session = upload_location(&reg, "edge/host", EVIL).await;
    assert!(
        session.starts_with("https://configured.example/v2/edge/host/blobs/uploads/"),
        "{session}"
    );
    let blob = blob_location(&reg, "edge/host", EVIL).await;
    assert!(
        blob.starts_with("https://configured.example/v2/edge/host/blobs/"),
        "{blob}"
    );
    drop(reg);

    let setup = Setup::new();
    let reg = setup.start(
        &[
            "host: https://configured.example",
            "trustedproxies: [127.0.0.1/32]",
            "relativeurls: true",
        ],
        "",
    );
    let session = upload_location(&reg, "edge/relative", EVIL).await;
    assert!(
        session.starts_with("/v2/edge/relative/blobs/uploads/"),
        "{session}"
    );
}

/// The realm of an auto-redirected token challenge is built from the request's host; a scheme
/// or host forwarded by a peer nobody trusts must not reach it.
#[tokio::test]
async fn token_realm_follows_only_trusted_forwarded_headers() {
    let setup = Setup::new();
    let signer = Signer::ec("edge-issuer");
    let bundle = write_bundle(setup.dir.path(), &[&signer]);
    let auth = format!(
        "auth:\n  token:\n    autoredirect: true\n    service: edge-registry\n    issuer: edge-issuer\n    rootcertbundle: {}\n",
        bundle.display()
    );
    let realm_of = |resp: &Response| {
        let www = must_header(resp, "www-authenticate");
        let start = www.find("realm=\"").expect("realm") + 7;
        www[start..start + www[start..].find('"').expect("closing quote")].to_string()
    };

    let reg = setup.start(&["trustedproxies: ['10.0.0.0/8']"], &auth);
    let resp = client()
        .get(reg.url("/v2/"))
        .header("x-forwarded-proto", "http")
        .header("x-forwarded-host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(
        realm_of(&resp),
        format!("https://{}/auth/token", reg.host())
    );
    drop(reg);

    let reg = setup.start(&["trustedproxies: ['127.0.0.1']"], &auth);
    let resp = client()
        .get(reg.url("/v2/"))
        .header("x-forwarded-proto", "http")
        .header("x-forwarded-host", "registry.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(realm_of(&resp), "http://registry.example/auth/token");
}

#[tokio::test]
async fn a_bad_trusted_proxy_entry_stops_start_up_naming_it() {
    let setup = Setup::new();
    std::fs::write(
        setup.path("config.yml"),
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n  trustedproxies: [10.0.0.0/8, 192.168.1.10/24]\n",
            setup.root().display()
        ),
    )
    .unwrap();
    let err = Registry::launch(&Launch {
        args: vec![setup.path("config.yml").to_string_lossy().into_owned()],
        stderr: Some(setup.path("stderr.log")),
        ..Launch::default()
    })
    .err()
    .expect("a bad entry must stop start-up");
    assert!(err.contains("http.trustedproxies[1]"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Probes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn probes_answer_without_authentication_and_outside_the_prefix() {
    let setup = Setup::new();
    let reg = setup.start(
        &["prefix: /registry/"],
        "auth:\n  silly:\n    realm: r\n    service: s\n",
    );
    // The API needs credentials and lives under the prefix...
    let resp = client().get(reg.url("/registry/v2/")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    // ...the probes need neither.
    for path in ["/readyz", "/livez"] {
        let resp = client().get(reg.url(path)).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        assert_eq!(
            header(&resp, "content-type").as_deref(),
            Some("text/plain; charset=utf-8"),
            "{path}"
        );
        assert_eq!(resp.text().await.unwrap(), "ok", "{path}");
        let resp = client().head(reg.url(path)).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "HEAD {path}");
        assert!(resp.bytes().await.unwrap().is_empty(), "HEAD {path}");
        let resp = client().post(reg.url(path)).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 405, "POST {path}");
        // The debug listener answers them too.
        assert_eq!(get(&debug_url(&reg, path)).await, (200, "ok".to_string()));
    }
    // Under the prefix they are not probes but unknown API paths behind authentication.
    let resp = client()
        .get(reg.url("/registry/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}

/// Puts a file where the storage root's `docker` tree was, so that every blob path lookup
/// fails with "not a directory" (the tests run as root, for whom permissions would not), and
/// puts the tree back.
struct BrokenStorage {
    tree: PathBuf,
    away: PathBuf,
}

impl BrokenStorage {
    fn break_it(root: &std::path::Path) -> BrokenStorage {
        let tree = root.join("docker");
        let away = root.join("docker.away");
        std::fs::rename(&tree, &away).expect("move the blob tree away");
        std::fs::write(&tree, b"not a directory").expect("file in its place");
        BrokenStorage { tree, away }
    }

    fn repair(self) {
        std::fs::remove_file(&self.tree).expect("remove the file");
        std::fs::rename(&self.away, &self.tree).expect("put the blob tree back");
    }
}

#[tokio::test]
async fn readyz_fails_while_storage_cannot_be_reached() {
    let setup = Setup::new();
    let reg = setup.start(&[], "");
    let data = pseudo_bytes("readyz", 4096);
    let digest = push_blob(&reg, "edge/ready", &data).await;
    assert_eq!(get(&reg.url("/readyz")).await, (200, "ok".to_string()));

    let broken = BrokenStorage::break_it(&setup.root());
    let (status, body) = get(&reg.url("/readyz")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("unavailable: "), "{body}");
    let (status, body) = get(&debug_url(&reg, "/debug/health")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"health\""), "{body}");
    // Liveness is not readiness: the process still serves.
    assert_eq!(get(&reg.url("/livez")).await.0, 200);
    // Without the storage probe, the API itself is not gated.
    assert_eq!(get(&reg.url("/v2/")).await.0, 200);

    broken.repair();
    assert_eq!(get(&reg.url("/readyz")).await, (200, "ok".to_string()));
    let resp = check_status(get_blob(&reg, "edge/ready", &digest).await, 200).await;
    assert_eq!(resp.bytes().await.unwrap().as_ref(), data.as_slice());
}

/// The parent pid of a process, from `/proc/<pid>/stat` (`pid (comm) state ppid ...`; comm may
/// hold spaces, so fields are counted from the closing parenthesis).
fn parent_of(pid: &str) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.get(stat.rfind(')')? + 2..)?;
    after.split(' ').nth(1).map(str::to_string)
}

/// A PostgreSQL server whose processes are stopped (SIGSTOP) until this is dropped (SIGCONT),
/// also when the test fails half-way: its postmaster (the parent of its checkpointer) first, so
/// that it forks nothing more, then the postmaster's children (backends and helpers, each in a
/// session of its own).
struct Frozen(Vec<String>);

impl Frozen {
    fn freeze(pg: &Postgres) -> Frozen {
        let checkpointer = pg.psql(
            "postgres",
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'",
        );
        let postmaster = parent_of(checkpointer.trim()).expect("the checkpointer's parent");
        assert!(
            signal(&postmaster, "STOP"),
            "SIGSTOP to the postmaster {postmaster} failed"
        );
        let mut pids = vec![postmaster.clone()];
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let pid = entry.file_name().to_string_lossy().into_owned();
            let child = pid.bytes().all(|b| b.is_ascii_digit())
                && parent_of(&pid).as_ref() == Some(&postmaster);
            // A backend that exited since the listing cannot answer anyway.
            if child && signal(&pid, "STOP") {
                pids.push(pid);
            }
        }
        Frozen(pids)
    }
}

/// Sends `sig` to `pid`; whether it was delivered.
fn signal(pid: &str, sig: &str) -> bool {
    std::process::Command::new("kill")
        .args([&format!("-{sig}"), pid])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for pid in self.0.iter().rev() {
            signal(pid, "CONT");
        }
    }
}

/// A database that hangs (every server process stopped, connections open) makes `/readyz`
/// answer 503 within its check's bound instead of hanging with it. The pool would wait up to
/// `connecttimeout` (30 s here) for a connection; the check gives up long before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_instead_of_hanging_when_the_database_hangs() {
    let pg = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    pg.create_database("edge");
    let setup = Setup::new();
    let reg = setup.start(
        &[],
        &format!(
            "database:\n  enabled: true\n  host: {}\n  port: {}\n  user: {}\n  password: {}\n  dbname: edge\n  sslmode: disable\n  connecttimeout: 30s\n",
            pg.host(),
            pg.port(),
            Postgres::USER,
            Postgres::PASSWORD
        ),
    );
    push_blob(&reg, "edge/hung", &pseudo_bytes("hung", 100)).await;
    assert_eq!(get(&reg.url("/readyz")).await, (200, "ok".to_string()));

    let frozen = Frozen::freeze(&pg);
    // A client that would wait far longer than the check may take: a hang fails the test.
    let patient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let answer = patient.get(reg.url("/readyz")).send().await;
    let livez = patient.get(reg.url("/livez")).send().await;
    drop(frozen);
    let resp = answer.expect("/readyz answers while the database hangs");
    assert_eq!(resp.status().as_u16(), 503);
    let body = resp.text().await.unwrap();
    assert!(body.contains("did not answer within 2s"), "{body}");
    assert_eq!(livez.expect("/livez answers").status().as_u16(), 200);

    // Continued, the database serves again and so does the registry.
    wait_for_status(&reg.url("/readyz"), 200).await;
    push_blob(&reg, "edge/hung", &pseudo_bytes("after", 100)).await;
}

#[tokio::test]
async fn failing_storage_probe_answers_503_to_everything_until_it_passes() {
    let setup = Setup::new();
    let reg = setup.start(
        &[],
        "health:\n  storagedriver:\n    enabled: true\n    interval: 100ms\n    threshold: 2\n",
    );
    let data = pseudo_bytes("probe", 4096);
    let digest = push_blob(&reg, "edge/probe", &data).await;
    assert_eq!(get(&reg.url("/readyz")).await.0, 200);

    let broken = BrokenStorage::break_it(&setup.root());
    let body = wait_for_status(&reg.url("/v2/"), 503).await;
    assert!(body.contains("UNAVAILABLE"), "{body}");
    // Every API request, with the registered error code and a retry hint.
    let resp = client().get(reg.url("/v2/")).send().await.unwrap();
    assert!(header(&resp, "retry-after").is_some());
    expect_error(resp, 503, "UNAVAILABLE").await;
    expect_error(
        get_blob(&reg, "edge/probe", &digest).await,
        503,
        "UNAVAILABLE",
    )
    .await;
    expect_error(post_upload(&reg, "edge/probe").await, 503, "UNAVAILABLE").await;
    expect_error(
        client().get(reg.url("/v2/_catalog")).send().await.unwrap(),
        503,
        "UNAVAILABLE",
    )
    .await;
    // The probe endpoints say why, liveness holds, and both health reports name the probe.
    let (status, body) = get(&reg.url("/readyz")).await;
    assert_eq!(status, 503);
    assert!(body.starts_with("unhealthy: storage: "), "{body}");
    assert_eq!(get(&reg.url("/livez")).await.0, 200);
    for url in [reg.url("/debug/health"), debug_url(&reg, "/debug/health")] {
        let (status, body) = get(&url).await;
        assert_eq!(status, 503, "{url}: {body}");
        let report: serde_json::Value = serde_json::from_str(&body).expect("JSON report");
        assert!(report["storagedriver"].is_string(), "{url}: {body}");
    }

    // One passing probe brings service back.
    broken.repair();
    wait_for_status(&reg.url("/readyz"), 200).await;
    assert_eq!(get(&reg.url("/v2/")).await.0, 200);
    let resp = check_status(get_blob(&reg, "edge/probe", &digest).await, 200).await;
    assert_eq!(resp.bytes().await.unwrap().as_ref(), data.as_slice());
    assert_eq!(
        get(&debug_url(&reg, "/debug/health")).await,
        (200, "{}".to_string())
    );
    push_blob(&reg, "edge/probe", &pseudo_bytes("after", 100)).await;
}

// ---------------------------------------------------------------------------------------------
// Drain
// ---------------------------------------------------------------------------------------------

/// A PATCH whose body is sent in 8 KiB chunks: the first at once, the others once the returned
/// sender fires (if it is dropped instead, the body never completes). Returns once the first
/// chunk was handed to the connection, with the request's task.
async fn slow_patch(
    url: String,
    data: Vec<u8>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<reqwest::Result<Response>>,
) {
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let chunks: Vec<Vec<u8>> = data.chunks(8192).map(<[u8]>::to_vec).collect();
    let stream = futures::stream::unfold(
        (
            chunks.into_iter(),
            Some(started_tx),
            Some(release_rx),
            0usize,
        ),
        |(mut it, mut started, mut release, i)| async move {
            if i == 1 {
                if let Some(tx) = started.take() {
                    let _ = tx.send(());
                }
                if let Some(rx) = release.take() {
                    if rx.await.is_err() {
                        // Never released: the body stays incomplete.
                        std::future::pending::<()>().await;
                    }
                }
            }
            let next = it.next()?;
            Some((Ok::<_, std::io::Error>(next), (it, started, release, i + 1)))
        },
    );
    let request = tokio::spawn(async move {
        client()
            .patch(&url)
            .header("content-type", "application/octet-stream")
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
    });
    started_rx.await.expect("the body started");
    (release_tx, request)
}

/// Sends SIGTERM and waits for the exit on a thread of its own, so the test can watch the drain.
fn terminate_in_background(
    mut reg: Registry,
) -> std::thread::JoinHandle<Option<std::process::ExitStatus>> {
    std::thread::spawn(move || reg.terminate())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_fails_readiness_at_once_and_in_flight_requests_finish_within_draintimeout() {
    let setup = Setup::new();
    let reg = setup.start(&["draintimeout: 120s"], "");
    let debug_readyz = debug_url(&reg, "/readyz");
    let main_livez = reg.url("/livez");
    assert_eq!(get(&debug_readyz).await.0, 200);
    let data = pseudo_bytes("drain", 10 * 8192);
    let url = start_upload(&reg, "edge/drain").await;
    let (release, request) = slow_patch(url, data.clone()).await;

    let exit = terminate_in_background(reg);
    // Draining: not ready, and no new connections on the main listener.
    let body = wait_for_status(&debug_readyz, 503).await;
    assert!(body.starts_with("draining"), "{body}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while client().get(&main_livez).send().await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the main listener kept accepting"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!exit.is_finished(), "exited with a request in flight");

    // The request in flight is let finish.
    release.send(()).expect("the body is waiting");
    let resp = request
        .await
        .unwrap()
        .expect("the in-flight PATCH completes during the drain");
    let resp = check_status(resp, 202).await;
    assert_eq!(must_header(&resp, "range"), format!("0-{}", data.len() - 1));
    let status = tokio::task::spawn_blocking(move || exit.join().unwrap())
        .await
        .unwrap()
        .expect("exit status");
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", setup.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn draintimeout_drops_requests_that_do_not_finish_and_the_process_exits() {
    let setup = Setup::new();
    let reg = setup.start(&["draintimeout: 1s"], "");
    let url = start_upload(&reg, "edge/stuck").await;
    // A body that never completes: without the drain timeout the server would wait for ever.
    let (release, request) = slow_patch(url, pseudo_bytes("stuck", 4 * 8192)).await;

    let status = tokio::task::spawn_blocking(move || terminate_in_background(reg).join().unwrap())
        .await
        .unwrap()
        .expect("exit status");
    // Exited by itself (the harness would have killed it with SIGKILL after 30 s).
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", setup.stderr());
    assert!(
        setup.stderr().contains("draintimeout elapsed"),
        "{}",
        setup.stderr()
    );
    // The stuck request was dropped, not answered.
    let result = request.await.unwrap();
    assert!(result.is_err(), "{result:?}");
    drop(release);
}
