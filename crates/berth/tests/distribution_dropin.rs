//! Berth as a drop-in for CNCF Distribution: its `config.yml` files (the three real-world
//! fixtures, rewritten to loopback and temporary directories), `REGISTRY_*` overrides, the
//! behaviours its options switch on, and an existing Distribution storage directory written by
//! the real Distribution (Debian's `docker-registry`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::cli::{run, Env};
use common::distribution::Distribution;
use common::image;
use common::token::{Signer, TokenService};
use common::{Launch, Registry};
use serde_yaml::Value;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/distribution-configs")
}

fn fixture(name: &str) -> Value {
    let path = fixtures_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()));
    serde_yaml::from_str(&text).expect("fixture YAML")
}

/// Sets `path` (dot-separated) in a YAML mapping, creating mappings on the way.
fn set(v: &mut Value, path: &str, value: Value) {
    let mut cur = v;
    let keys: Vec<&str> = path.split('.').collect();
    for (i, k) in keys.iter().enumerate() {
        let map = cur.as_mapping_mut().expect("mapping");
        if i == keys.len() - 1 {
            map.insert(Value::from(*k), value);
            return;
        }
        cur = map
            .entry(Value::from(*k))
            .or_insert_with(|| Value::Mapping(Default::default()));
    }
}

fn get<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |cur, k| cur.get(k))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A temporary directory with a config file in it.
struct Setup {
    tmp: tempfile::TempDir,
    port: u16,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            tmp: tempfile::tempdir().unwrap(),
            port: free_port(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Points a configuration at this setup: storage, listen address, external host, debug
    /// listener and notification endpoints all on loopback / in the temporary directory.
    fn loopback(&self, cfg: &mut Value, receiver: Option<&str>) {
        let root = self.path("root");
        set(
            cfg,
            "storage.filesystem.rootdirectory",
            root.to_string_lossy().as_ref().into(),
        );
        set(cfg, "http.addr", format!("127.0.0.1:{}", self.port).into());
        if get(cfg, "http.host").is_some() {
            set(
                cfg,
                "http.host",
                format!("http://127.0.0.1:{}", self.port).into(),
            );
        }
        if get(cfg, "http.debug.addr").is_some() {
            set(cfg, "http.debug.addr", "127.0.0.1:0".into());
        }
        if let Some(eps) = cfg
            .get_mut("notifications")
            .and_then(|n| n.get_mut("endpoints"))
            .and_then(|e| e.as_sequence_mut())
        {
            for ep in eps {
                let url = receiver.unwrap_or("http://127.0.0.1:9/unused");
                ep.as_mapping_mut()
                    .unwrap()
                    .insert("url".into(), url.into());
            }
        }
    }

    fn write(&self, cfg: &Value) -> PathBuf {
        let p = self.path("config.yml");
        std::fs::write(&p, serde_yaml::to_string(cfg).unwrap()).unwrap();
        p
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.path("stderr.log")).unwrap_or_default()
    }

    /// Starts Berth with its defaults on a data directory, logging to this setup's stderr file.
    fn launch_on(&self, root: &Path) -> Registry {
        Registry::launch(&Launch {
            args: vec![
                "--addr".into(),
                "127.0.0.1:0".into(),
                "--data".into(),
                root.to_string_lossy().into_owned(),
            ],
            stderr: Some(self.path("stderr.log")),
            ..Launch::default()
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn launch(&self, config: &Path, env: &[(&str, &str)]) -> Result<Registry, String> {
        Registry::launch(&Launch {
            args: vec![config.to_string_lossy().into_owned()],
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            stderr: Some(self.path("stderr.log")),
            keep_log_level: true,
        })
    }
}

/// Pushes a generated image with skopeo (optionally with credentials) and pulls it back;
/// returns the digest of the manifest and checks every blob that came back.
fn skopeo_round_trip(
    reg_host: &str,
    repo: &str,
    creds: Option<&str>,
    tls: Option<&Path>,
) -> String {
    let env = Env::new();
    let src = env.path("src");
    let img = image::oci_image(repo.len() as u64 * 7 + 3, 2);
    image::write_image_layout(&src, "v1", &img);
    let dest = format!("docker://{reg_host}/{repo}:v1");
    let mut push = env.skopeo();
    push.arg("copy");
    match tls {
        Some(dir) => push.arg(format!("--dest-cert-dir={}", dir.display())),
        None => push.arg("--dest-tls-verify=false"),
    };
    if let Some(c) = creds {
        push.arg(format!("--dest-creds={c}"));
    }
    run(push.arg(format!("oci:{}:v1", src.display())).arg(&dest));
    let out = env.path("out");
    let mut pull = env.skopeo();
    pull.arg("copy");
    match tls {
        Some(dir) => pull.arg(format!("--src-cert-dir={}", dir.display())),
        None => pull.arg("--src-tls-verify=false"),
    };
    if let Some(c) = creds {
        pull.arg(format!("--src-creds={c}"));
    }
    run(pull.arg(&dest).arg(format!("oci:{}:v1", out.display())));
    let got = image::read_oci_layout(&out, "v1");
    assert_eq!(
        got.top, img.manifest.data,
        "manifest bytes differ after the round trip"
    );
    for b in img.blobs() {
        assert_eq!(
            got.reachable.get(&b.digest),
            Some(&b.data),
            "blob {} differs after the round trip",
            b.digest
        );
    }
    img.manifest.digest.clone()
}

/// A webhook receiver on loopback that records every envelope POSTed to it.
struct Receiver {
    url: String,
    events: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        use axum::routing::post;
        let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = events.clone();
        let app = axum::Router::new().route(
            "/notify",
            post(move |body: axum::body::Bytes| {
                let seen = seen.clone();
                async move {
                    let envelope: serde_json::Value =
                        serde_json::from_slice(&body).expect("envelope JSON");
                    let list = envelope["events"].as_array().cloned().unwrap_or_default();
                    seen.lock().unwrap().extend(list);
                    http::StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/notify", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { url, events }
    }

    /// Waits (up to a minute) for an event matching `pred`.
    async fn wait_for(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(e) = self.events.lock().unwrap().iter().find(|e| pred(e)) {
                return e.clone();
            }
            assert!(Instant::now() < deadline, "no {what} event arrived");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn internal_registry_fixture_serves_and_logs_json_with_fields() {
    let s = Setup::new();
    let receiver = Receiver::start().await;
    let mut cfg = fixture("internal-registry.yml");
    s.loopback(&mut cfg, Some(&receiver.url));
    let config = s.write(&cfg);
    let reg = s.launch(&config, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reg.addr.port(), s.port, "http.addr from the file is used");
    assert!(
        reg.debug_addr.is_some(),
        "http.debug.addr starts the debug listener"
    );

    let host = reg.host();
    let digest = tokio::task::spawn_blocking(move || {
        skopeo_round_trip(&host, "fixtures/internal", None, None)
    })
    .await
    .unwrap();
    // notifications.endpoints: the push reaches the webhook in Distribution's envelope.
    let event = receiver
        .wait_for("manifest push", |e| {
            e["action"] == "push" && e["target"]["digest"] == digest.as_str()
        })
        .await;
    assert_eq!(event["target"]["repository"], "fixtures/internal");
    assert_eq!(event["target"]["tag"], "v1");
    assert_eq!(
        event["target"]["url"],
        format!(
            "http://127.0.0.1:{}/v2/fixtures/internal/manifests/{digest}",
            s.port
        )
    );
    receiver
        .wait_for("manifest pull", |e| {
            e["action"] == "pull" && e["target"]["digest"] == digest.as_str()
        })
        .await;

    // http.host: Location headers are absolute URLs on it.
    let resp = client()
        .post(reg.url("/v2/fixtures/internal/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let loc = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(
        loc.starts_with(&format!(
            "http://127.0.0.1:{}/v2/fixtures/internal/blobs/uploads/",
            s.port
        )),
        "{loc}"
    );

    // The debug listener answers its health check.
    let health = client()
        .get(format!("http://{}/debug/health", reg.debug_addr.unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    // log.formatter json with log.fields: every line is a JSON object carrying service=registry;
    // the access log is on and shows the requests.
    let log = s.stderr();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty(), "no log lines at debug level");
    for l in &lines {
        assert_eq!(l["service"], "registry", "{l}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l["target"] == "access" && l["method"] == "PUT"),
        "no access log line for the manifest PUT"
    );
}

/// Starts a token service and points a token-auth fixture at it.
fn token_setup(name: &str) -> (Setup, TokenService, PathBuf) {
    let s = Setup::new();
    let mut cfg = fixture(name);
    let issuer = get(&cfg, "auth.token.issuer")
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    let signer = Signer::ec("token-signer");
    let bundle = common::token::write_bundle(s.tmp.path(), &[&signer]);
    let tokens = TokenService::start_default(signer, &issuer);
    s.loopback(&mut cfg, None);
    set(&mut cfg, "auth.token.realm", tokens.realm().into());
    set(
        &mut cfg,
        "auth.token.rootcertbundle",
        bundle.to_string_lossy().as_ref().into(),
    );
    let config = s.write(&cfg);
    (s, tokens, config)
}

async fn assert_challenge(reg: &Registry, realm: &str, service: &str) {
    let resp = client().get(reg.url("/v2/")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(
        challenge.contains(&format!("realm=\"{realm}\"")),
        "{challenge}"
    );
    assert!(
        challenge.contains(&format!("service=\"{service}\"")),
        "{challenge}"
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");
    // A repository request names its scope.
    let resp = client()
        .get(reg.url("/v2/team/app/manifests/latest"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains("scope=\"repository:team/app:pull\""),
        "{challenge}"
    );
    // A forged token is refused as invalid.
    let resp = client()
        .get(reg.url("/v2/"))
        .bearer_auth("not.a.token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
}

#[tokio::test]
async fn external_registry_fixture_uses_token_auth() {
    let (s, tokens, config) = token_setup("external-registry.yml");
    let reg = s.launch(&config, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_challenge(&reg, &tokens.realm(), "caas-registry").await;
    let host = reg.host();
    tokio::task::spawn_blocking(move || {
        skopeo_round_trip(&host, "alice/app", Some("alice:alice-pass"), None)
    })
    .await
    .unwrap();
    // alice may not push outside alice/*.
    let host = reg.host();
    let denied = tokio::task::spawn_blocking(move || {
        std::panic::catch_unwind(|| {
            skopeo_round_trip(&host, "bob/app", Some("alice:alice-pass"), None)
        })
    })
    .await
    .unwrap();
    assert!(denied.is_err(), "alice pushed to bob/app");
    // The refusal is the registry's: nothing reached bob/app.
    let admin = token_for(&tokens, "admin", "admin-pass", &["repository:bob/app:pull"]).await;
    let resp = client()
        .head(reg.url("/v2/bob/app/manifests/v1"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        404,
        "bob/app:v1 exists after alice's refused push"
    );
}

#[tokio::test]
async fn private_cloud_fixture_uses_token_auth_without_access_log() {
    let (s, tokens, config) = token_setup("private-cloud-registry.yml");
    let reg = s.launch(&config, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_challenge(&reg, &tokens.realm(), "caas-registry").await;
    let host = reg.host();
    tokio::task::spawn_blocking(move || {
        skopeo_round_trip(&host, "team/app", Some("admin:admin-pass"), None)
    })
    .await
    .unwrap();
    let log = s.stderr();
    assert!(!log.is_empty(), "debug logging produced nothing");
    assert!(
        !log.contains("\"target\":\"access\""),
        "log.accesslog.disabled is true, yet requests were logged"
    );
}

#[tokio::test]
async fn environment_overrides_beat_the_file() {
    let s = Setup::new();
    let mut cfg = fixture("internal-registry.yml");
    s.loopback(&mut cfg, None);
    // The file asks for a port that cannot be bound by us and a root we will not use.
    set(&mut cfg, "http.addr", "127.0.0.1:1".into());
    let config = s.write(&cfg);
    let other_root = s.path("env-root");
    let reg = s
        .launch(
            &config,
            &[
                ("REGISTRY_HTTP_ADDR", "127.0.0.1:0"),
                (
                    "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY",
                    other_root.to_str().unwrap(),
                ),
                ("REGISTRY_LOG_FORMATTER", "text"),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(reg.addr.port(), 1);
    let resp = client()
        .post(reg.url("/v2/env/blobs/uploads/?digest=sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert!(other_root
        .join("docker/registry/v2/blobs/sha256/2c")
        .is_dir());
    assert!(!s.path("root").join("docker").exists());
    let log = s.stderr();
    assert!(
        log.lines().any(|l| l.starts_with("time=")),
        "text formatter not applied: {log}"
    );
}

#[test]
fn unknown_keys_warn_and_bad_values_fail_naming_the_key() {
    let s = Setup::new();
    let mut cfg = fixture("internal-registry.yml");
    s.loopback(&mut cfg, None);
    set(&mut cfg, "http.adr", ":5000".into());
    let config = s.write(&cfg);
    let reg = s.launch(&config, &[]).unwrap_or_else(|e| panic!("{e}"));
    drop(reg);
    assert!(
        s.stderr().contains("unknown configuration key http.adr"),
        "{}",
        s.stderr()
    );

    set(
        &mut cfg,
        "storage.maintenance.uploadpurging.age",
        "5x".into(),
    );
    let config = s.write(&cfg);
    let err = match s.launch(&config, &[]) {
        Ok(_) => panic!("a bad duration was accepted"),
        Err(e) => e,
    };
    assert!(
        err.contains("storage.maintenance.uploadpurging.age"),
        "{err}"
    );
    assert!(err.contains("5x"), "{err}");
}

#[test]
fn config_check_prints_masked_effective_configuration() {
    let s = Setup::new();
    let mut cfg = fixture("external-registry.yml");
    s.loopback(&mut cfg, None);
    set(&mut cfg, "http.secret", "very-secret-value".into());
    let config = s.write(&cfg);
    let out = run(Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["config", "check"])
        .arg(&config));
    assert!(!out.contains("very-secret-value"), "{out}");
    assert!(out.contains("********"), "{out}");
    assert!(out.contains("caas-registry"), "{out}");
    assert!(out.contains("auth.token"), "{out}");
    assert!(out.contains("configuration is valid"), "{out}");
    set(&mut cfg, "version", "0.2".into());
    let bad = s.write(&cfg);
    let fail = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!fail.status.success());
    assert!(String::from_utf8_lossy(&fail.stderr).contains("version"));
}

fn minimal(s: &Setup, extra: &str) -> PathBuf {
    let text = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n{extra}\nhttp:\n  addr: 127.0.0.1:0\n",
        s.path("root").display()
    );
    let p = s.path("config.yml");
    std::fs::write(&p, text).unwrap();
    p
}

#[tokio::test]
async fn deletes_can_be_disabled_and_writes_refused_in_read_only_mode() {
    let s = Setup::new();
    // Distribution's default: delete disabled.
    let config = minimal(&s, "");
    let reg = s.launch(&config, &[]).unwrap_or_else(|e| panic!("{e}"));
    let d = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
    let resp = client()
        .post(reg.url(&format!("/v2/ro/blobs/uploads/?digest={d}")))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let resp = client()
        .delete(reg.url(&format!("/v2/ro/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "UNSUPPORTED");
    drop(reg);

    let s2 = Setup::new();
    let config = minimal(&s2, "  maintenance:\n    readonly:\n      enabled: true");
    let reg = s2.launch(&config, &[]).unwrap_or_else(|e| panic!("{e}"));
    let resp = client()
        .post(reg.url("/v2/ro/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "UNSUPPORTED");
    let ok = client().get(reg.url("/v2/")).send().await.unwrap();
    assert_eq!(ok.status(), 200, "reads still work in read-only mode");
}

#[tokio::test]
async fn prefix_headers_and_metrics() {
    let s = Setup::new();
    let text = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
         http:\n  addr: 127.0.0.1:0\n  prefix: /registry/\n  headers:\n    X-Content-Type-Options: [nosniff]\n\
         \n  debug:\n    addr: 127.0.0.1:0\n    prometheus:\n      enabled: true\n      path: /metrics\n",
        s.path("root").display()
    );
    let config = s.path("config.yml");
    std::fs::write(&config, text).unwrap();
    let reg = s.launch(&config, &[]).unwrap_or_else(|e| panic!("{e}"));
    let resp = client().get(reg.url("/registry/v2/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    // An upload through the prefix: the Location keeps it.
    let resp = client()
        .post(reg.url("/registry/v2/pre/fixed/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let loc = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(
        loc.starts_with("/registry/v2/pre/fixed/blobs/uploads/"),
        "{loc}"
    );
    let data = b"through the prefix";
    let d = common::sha256(data);
    let resp = client()
        .put(reg.url(&format!("{loc}?digest={d}")))
        .body(&data[..])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let got = client()
        .get(reg.url(&format!("/registry/v2/pre/fixed/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(got.bytes().await.unwrap(), &data[..]);
    // Prometheus metrics on the debug listener count those requests.
    let metrics = common::metrics(&reg).await;
    assert!(
        metrics.contains("registry_http_requests_total"),
        "{metrics}"
    );
    assert!(metrics.contains("method=\"PUT\""), "{metrics}");
}

#[tokio::test]
async fn abandoned_uploads_are_purged() {
    let s = Setup::new();
    let config = minimal(
        &s,
        "  maintenance:\n    uploadpurging:\n      enabled: true\n      age: 1s\n      interval: 1s\n      dryrun: false",
    );
    let reg = s.launch(&config, &[]).unwrap_or_else(|e| panic!("{e}"));
    // A temporary file left by a write cut short by a crash, an hour old.
    let stale = s.path("root").join("berth/tmp/part-left-by-a-crash");
    std::fs::write(&stale, b"partial").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    let resp = client()
        .post(reg.url("/v2/purge/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let loc = resp.headers()["location"].to_str().unwrap().to_string();
    let resp = client()
        .patch(reg.url(&loc))
        .body("some bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = client().get(reg.url(&loc)).send().await.unwrap().status();
        if st == 404 {
            break;
        }
        assert_eq!(st, 204);
        assert!(
            Instant::now() < deadline,
            "the abandoned upload was never purged"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let uploads = s.path("root").join("berth/uploads");
    let left: Vec<_> = std::fs::read_dir(&uploads)
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "upload data left behind: {left:?}");
    assert!(!stale.exists(), "a stale temporary file was not removed");
}

#[tokio::test]
async fn serves_https_with_a_generated_ca() {
    let s = Setup::new();
    // A CA and a server certificate for 127.0.0.1 issued by it.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "berth test CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
    let certs = s.path("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(certs.join("server.crt"), server_cert.pem()).unwrap();
    std::fs::write(certs.join("server.key"), server_key.serialize_pem()).unwrap();
    // The directory skopeo trusts: just the CA.
    let trust = s.path("trust");
    std::fs::create_dir_all(&trust).unwrap();
    let ca_pem = ca_cert.pem();
    std::fs::write(trust.join("ca.crt"), &ca_pem).unwrap();
    let config = minimal(&s, "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "http:\n  addr: 127.0.0.1:0\n",
        &format!(
            "http:\n  addr: 127.0.0.1:0\n  tls:\n    certificate: {}\n    key: {}\n",
            certs.join("server.crt").display(),
            certs.join("server.key").display()
        ),
    );
    std::fs::write(&config, text).unwrap();
    let reg = s.launch(&config, &[]).unwrap_or_else(|e| panic!("{e}"));
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let resp = https
        .get(format!("https://127.0.0.1:{}/v2/", reg.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Plain HTTP is not served on the TLS port.
    let plain = client().get(reg.url("/v2/")).send().await;
    assert!(
        !plain.map(|r| r.status() == 200).unwrap_or(false),
        "plain HTTP answered on the TLS port"
    );
    let host = reg.host();
    tokio::task::spawn_blocking(move || skopeo_round_trip(&host, "tls/app", None, Some(&trust)))
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Taking over a storage directory written by the real Distribution
// ---------------------------------------------------------------------------------------------

/// What was pushed: repository → tag → manifest digest.
type Pushed = std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>;

fn push_to(
    env: &Env,
    host: &str,
    layout: &str,
    repo_tag: &str,
    extra: &[&str],
    pushed: &mut Pushed,
) {
    let digestfile = env.path("digest");
    let mut c = env.skopeo();
    c.arg("copy")
        .arg("--dest-tls-verify=false")
        .args(extra)
        .arg(format!("--digestfile={}", digestfile.display()))
        .arg(layout)
        .arg(format!("docker://{host}/{repo_tag}"));
    run(&mut c);
    let digest = std::fs::read_to_string(&digestfile)
        .unwrap()
        .trim()
        .to_string();
    let (repo, tag) = repo_tag.split_once(':').unwrap();
    pushed
        .entry(repo.to_string())
        .or_default()
        .insert(tag.to_string(), digest);
}

/// Fills Distribution with single-arch, multi-arch, schema2 and many-tag repositories.
fn populate(env: &Env, host: &str, repos: usize) -> Pushed {
    let mut pushed = Pushed::new();
    let single = env.path("single");
    image::write_image_layout(&single, "v1", &image::oci_image(101, 2));
    let multi = env.path("multi");
    image::write_multi_arch_layout(&multi, "v1", &image::oci_multi_arch(202));
    let single_ref = format!("oci:{}:v1", single.display());
    let multi_ref = format!("oci:{}:v1", multi.display());
    push_to(env, host, &single_ref, "lib/single:v1", &[], &mut pushed);
    push_to(
        env,
        host,
        &multi_ref,
        "lib/multi:v1",
        &["--all"],
        &mut pushed,
    );
    push_to(
        env,
        host,
        &single_ref,
        "lib/schema2:v1",
        &["--format=v2s2"],
        &mut pushed,
    );
    for t in 0..12 {
        push_to(
            env,
            host,
            &single_ref,
            &format!("lib/tags:t{t:02}"),
            &[],
            &mut pushed,
        );
    }
    for r in 0..repos {
        let dir = env.path(&format!("img{r}"));
        image::write_image_layout(&dir, "v1", &image::oci_image(1000 + r as u64, 1));
        let src = format!("oci:{}:v1", dir.display());
        push_to(
            env,
            host,
            &src,
            &format!("many/repo{r:03}:v1"),
            &[],
            &mut pushed,
        );
    }
    pushed
}

/// Every repository, tag and manifest pushed into Distribution is served by Berth, byte for
/// byte, and nothing else.
async fn assert_serves_everything(reg: &Registry, pushed: &Pushed) {
    let c = client();
    let catalog: serde_json::Value = c
        .get(reg.url("/v2/_catalog"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let repos: Vec<String> = serde_json::from_value(catalog["repositories"].clone()).unwrap();
    assert_eq!(repos, pushed.keys().cloned().collect::<Vec<_>>());
    for (repo, tags) in pushed {
        let list: serde_json::Value = c
            .get(reg.url(&format!("/v2/{repo}/tags/list")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let got: Vec<String> = serde_json::from_value(list["tags"].clone()).unwrap();
        assert_eq!(
            got,
            tags.keys().cloned().collect::<Vec<_>>(),
            "tags of {repo}"
        );
        for (tag, digest) in tags {
            let resp = c
                .get(reg.url(&format!("/v2/{repo}/manifests/{tag}")))
                .header("accept", "*/*")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{repo}:{tag}");
            let body = resp.bytes().await.unwrap();
            assert_eq!(&common::sha256(&body), digest, "{repo}:{tag}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn takes_over_a_distribution_root_without_copying_blobs() {
    let s = Setup::new();
    let root = s.path("root");
    let env = Env::new();
    let pushed = {
        let dist = Distribution::on_directory(s.tmp.path(), &root, "");
        let host = dist.host.clone();
        let env_ref = &env;
        let pushed = tokio::task::block_in_place(|| populate(env_ref, &host, 3));
        drop(dist);
        pushed
    };
    // Blob files before Berth: their inodes must not change (no copy, no rewrite).
    let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let blobs_dir = root.join("docker/registry/v2/blobs/sha256");
    let mut before = Vec::new();
    for prefix in std::fs::read_dir(&blobs_dir).unwrap().flatten() {
        for blob in std::fs::read_dir(prefix.path()).unwrap().flatten() {
            let data = blob.path().join("data");
            before.push((data.clone(), inode(&data)));
        }
    }
    assert!(before.len() > 10);

    let reg = s.launch_on(&root);
    assert!(s.stderr().contains("import finished"), "{}", s.stderr());
    assert_serves_everything(&reg, &pushed).await;
    for (path, ino) in &before {
        assert_eq!(inode(path), *ino, "{} was rewritten", path.display());
    }
    // Real clients pull the images back out, multi-arch included.
    let host = reg.host();
    tokio::task::block_in_place(|| {
        let out = env.path("pulled");
        let mut c = env.skopeo();
        c.args(["copy", "--all", "--src-tls-verify=false"])
            .arg(format!("docker://{host}/lib/multi:v1"))
            .arg(format!("oci:{}:v1", out.display()));
        run(&mut c);
        let got = image::read_oci_layout(&out, "v1");
        assert_eq!(common::sha256(&got.top), pushed["lib/multi"]["v1"]);
    });
    // Berth keeps working on the taken-over root: push a new tag.
    let host = reg.host();
    tokio::task::block_in_place(|| {
        let mut more = Pushed::new();
        let src = format!("oci:{}:v1", env.path("single").display());
        push_to(&env, &host, &src, "lib/single:v2", &[], &mut more);
        assert_eq!(more["lib/single"]["v2"], pushed["lib/single"]["v1"]);
    });
    drop(reg);

    // The tree is Berth's now: its collector runs (and finds nothing to delete) ...
    let gc = || {
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["gc", "--grace", "0s", "--data"])
            .arg(&root)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let ran = gc();
    let out = String::from_utf8_lossy(&ran.stdout);
    assert!(
        ran.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    assert!(
        out.contains("deleted 0 manifests, 0 links, 0 blobs"),
        "{out}"
    );
    // ... until Distribution writes to it again: then collecting is refused, so that two
    // collectors never share a tree, until the tree is imported anew.
    {
        let dist = Distribution::on_directory(s.tmp.path(), &root, "");
        let host = dist.host.clone();
        tokio::task::block_in_place(|| {
            let mut more = Pushed::new();
            let src = format!("oci:{}:v1", env.path("single").display());
            push_to(&env, &host, &src, "lib/again:v1", &[], &mut more);
        });
    }
    let refused = gc();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
    assert!(
        err.contains("Distribution wrote") && err.contains("lib/again"),
        "{err}"
    );
    run(Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["import", "distribution"])
        .arg(&root));
    let ran = gc();
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn import_killed_part_way_finishes_on_restart_without_duplicates() {
    let s = Setup::new();
    let root = s.path("root");
    let env = Env::new();
    let pushed = {
        let dist = Distribution::on_directory(s.tmp.path(), &root, "");
        let host = dist.host.clone();
        let env_ref = &env;
        let pushed = tokio::task::block_in_place(|| populate(env_ref, &host, 40));
        drop(dist);
        pushed
    };
    // Kill the first starts at several moments during their import: counted from when the
    // metadata database appears, so the first kill lands before the import can have finished.
    let marker = root.join("berth/imported-distribution");
    let db = root.join("berth/meta.db");
    let mut interrupted = 0;
    for delay_ms in [0u64, 40, 150] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["serve", "--addr", "127.0.0.1:0", "--data"])
            .arg(&root)
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !db.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        if !marker.exists() {
            interrupted += 1;
        }
    }
    assert!(interrupted > 0, "no kill interrupted the import");
    let reg = s.launch_on(&root);
    assert_serves_everything(&reg, &pushed).await;
    drop(reg);
    // Running the import again by hand changes nothing and finds everything.
    let out = run(Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["import", "distribution"])
        .arg(&root));
    let tags: usize = pushed.values().map(|t| t.len()).sum();
    assert!(
        out.contains(&format!("{} repositories", pushed.len()))
            && out.contains(&format!("{tags} tags")),
        "{out}"
    );
    assert!(out.contains("0 skipped"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_blobs_are_reported_and_never_served() {
    let s = Setup::new();
    let root = s.path("root");
    let env = Env::new();
    let pushed = {
        let dist = Distribution::on_directory(s.tmp.path(), &root, "");
        let host = dist.host.clone();
        let env_ref = &env;
        let pushed = tokio::task::block_in_place(|| populate(env_ref, &host, 2));
        drop(dist);
        pushed
    };
    // Corrupt one layer of many/repo001's image.
    let img = image::oci_image(1001, 1);
    let layer = &img.layers[0];
    let path = root.join(format!(
        "docker/registry/v2/blobs/sha256/{}/{}/data",
        &layer.hex()[..2],
        layer.hex()
    ));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();

    let reg = s.launch_on(&root);
    let log = s.stderr();
    assert!(
        log.contains(&format!("blob {}: corrupt", layer.digest)),
        "{log}"
    );
    let c = client();
    let resp = c
        .get(reg.url(&format!("/v2/many/repo001/blobs/{}", layer.digest)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "a corrupt blob was served");
    let resp = c
        .get(reg.url("/v2/many/repo001/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        404,
        "a manifest with a corrupt layer was served"
    );
    // Everything else is intact.
    let mut rest = pushed.clone();
    rest.remove("many/repo001");
    for (repo, tags) in &rest {
        for (tag, digest) in tags {
            let body = c
                .get(reg.url(&format!("/v2/{repo}/manifests/{tag}")))
                .header("accept", "*/*")
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert_eq!(&common::sha256(&body), digest);
        }
    }
}

/// A token from the test token service for `scopes`, as `user`.
async fn token_for(tokens: &TokenService, user: &str, password: &str, scopes: &[&str]) -> String {
    let mut query = vec![("service", "caas-registry")];
    query.extend(scopes.iter().map(|s| ("scope", *s)));
    let resp = client()
        .get(tokens.realm())
        .query(&query)
        .basic_auth(user, Some(password))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    body["token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn mounts_without_from_only_reach_repositories_the_caller_may_read() {
    let s = Setup::new();
    let mut cfg = fixture("external-registry.yml");
    let signer = Signer::ec("token-signer");
    let bundle = common::token::write_bundle(s.tmp.path(), &[&signer]);
    let users = vec![
        common::token::User::new(
            "admin",
            "admin-pass",
            &[("repository", "*", &["pull", "push", "delete"])],
        ),
        common::token::User::new(
            "bob",
            "bob-pass",
            &[("repository", "bob/*", &["pull", "push"])],
        ),
    ];
    let hint = common::token::KeyHint::X5c(vec![signer.cert_der.clone()]);
    let tokens = TokenService::start(signer, "caas-issuer", users, hint);
    s.loopback(&mut cfg, None);
    set(&mut cfg, "auth.token.realm", tokens.realm().into());
    set(
        &mut cfg,
        "auth.token.rootcertbundle",
        bundle.to_string_lossy().as_ref().into(),
    );
    let config = s.write(&cfg);
    let reg = s.launch(&config, &[]).unwrap_or_else(|e| panic!("{e}"));

    // admin pushes a blob into a private repository.
    let data = b"private layer bytes";
    let d = common::sha256(data);
    let admin = token_for(
        &tokens,
        "admin",
        "admin-pass",
        &["repository:secret/app:pull,push"],
    )
    .await;
    let resp = client()
        .post(reg.url(&format!("/v2/secret/app/blobs/uploads/?digest={d}")))
        .bearer_auth(&admin)
        .body(&data[..])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    // bob knows the digest but may not read secret/app: no mount, a fresh upload instead.
    let bob = token_for(
        &tokens,
        "bob",
        "bob-pass",
        &["repository:bob/app:pull,push"],
    )
    .await;
    let resp = client()
        .post(reg.url(&format!("/v2/bob/app/blobs/uploads/?mount={d}")))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        202,
        "bob mounted a blob from a repository he cannot read"
    );
    let resp = client()
        .head(reg.url(&format!("/v2/bob/app/blobs/{d}")))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    // Naming the source explicitly needs pull on it: refused with insufficient_scope.
    let resp = client()
        .post(reg.url(&format!(
            "/v2/bob/app/blobs/uploads/?mount={d}&from=secret/app"
        )))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(challenge.contains("insufficient_scope"), "{challenge}");

    // A token that grants pull on secret/app mounts it without naming it.
    let admin2 = token_for(
        &tokens,
        "admin",
        "admin-pass",
        &[
            "repository:other/app:pull,push",
            "repository:secret/app:pull",
        ],
    )
    .await;
    let resp = client()
        .post(reg.url(&format!("/v2/other/app/blobs/uploads/?mount={d}")))
        .bearer_auth(&admin2)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
}
