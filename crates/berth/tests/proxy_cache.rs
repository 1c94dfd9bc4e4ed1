//! Berth as a pull-through cache (Distribution's `proxy` section) in front of a real upstream,
//! Debian's `docker-registry` (Distribution 2.8) behind htpasswd, and in front of hostile
//! upstreams that try to collect its credentials or lead it to addresses it must not reach.

mod common;
#[allow(dead_code)]
#[path = "common/harbor.rs"]
mod harbor;

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::distribution::Distribution;
use common::oci::{
    client, descriptor, image_index, sample_image, upload_blob_to, upload_image_to,
    upload_manifest_to, Image, OCI_INDEX, OCI_MANIFEST,
};
use common::{sha256, Launch, Registry};

const USER: &str = "mirror";
const PASSWORD: &str = "upstream-secret";

/// Manifest types a pull accepts.
const ACCEPT: &str =
    "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json";

/// Distribution behind htpasswd, in its own directory.
struct Upstream {
    dist: Distribution,
    base: String,
}

impl Upstream {
    fn start(dir: &Path) -> Upstream {
        let hash = bcrypt::hash(PASSWORD, 4).unwrap();
        let htpasswd = dir.join("htpasswd");
        std::fs::write(&htpasswd, format!("{USER}:{hash}\n")).unwrap();
        let root = dir.join("upstream");
        std::fs::create_dir_all(&root).unwrap();
        let extra = format!(
            "auth:\n  htpasswd:\n    realm: upstream\n    path: {}\n",
            htpasswd.display()
        );
        let dist = Distribution::on_directory(dir, &root, &extra);
        let base = format!("http://{}", dist.host);
        Upstream { dist, base }
    }

    async fn push_blob(&self, repo: &str, data: &[u8]) {
        upload_blob_to(&self.base, Some((USER, PASSWORD)), repo, data).await;
    }

    async fn push_manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) {
        let who = Some((USER, PASSWORD));
        upload_manifest_to(&self.base, who, repo, reference, media_type, body).await;
    }

    async fn push_image(&self, repo: &str, tag: &str, img: &Image) {
        upload_image_to(&self.base, Some((USER, PASSWORD)), repo, tag, img).await;
    }

    /// How many `method path` requests the upstream answered with `status`.
    fn answered(&self, method: &str, path: &str, status: u16) -> usize {
        let needle = format!("\"{method} {path} HTTP/1.1\" {status} ");
        self.dist.log().matches(&needle).count()
    }
}

/// Berth mirroring `upstream` (`proxy` section lines `proxy`), in `dir`.
fn cache(dir: &Path, name: &str, proxy: &str) -> Registry {
    let root = dir.join(name);
    std::fs::create_dir_all(&root).unwrap();
    let config = dir.join(format!("{name}.yml"));
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:0\n  debug:\n    addr: 127.0.0.1:0\n    prometheus:\n      \
             enabled: true\n      path: /metrics\nproxy:\n{proxy}",
            root.display()
        ),
    )
    .unwrap();
    let launch = Launch {
        args: vec![config.to_string_lossy().into_owned()],
        ..Launch::default()
    };
    Registry::launch(&launch).unwrap_or_else(|e| panic!("{e}"))
}

fn proxy_of(upstream: &str, ttl: &str) -> String {
    format!("  remoteurl: {upstream}\n  username: {USER}\n  password: {PASSWORD}\n  ttl: {ttl}\n")
}

/// Pulls `repo:reference` through `reg`: the manifest's digest and bytes.
async fn pull_manifest(
    reg: &Registry,
    repo: &str,
    reference: &str,
) -> (u16, Option<String>, Vec<u8>) {
    let resp = client()
        .get(reg.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("accept", ACCEPT)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let digest = resp
        .headers()
        .get("docker-content-digest")
        .map(|v| v.to_str().unwrap().to_string());
    (status, digest, resp.bytes().await.unwrap().to_vec())
}

async fn pull_blob(reg: &Registry, repo: &str, digest: &str) -> (u16, Vec<u8>) {
    let resp = client()
        .get(reg.url(&format!("/v2/{repo}/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.bytes().await.unwrap().to_vec())
}

/// Pulls a whole image by tag through `reg` and checks every byte against `img`.
async fn pull_image(reg: &Registry, repo: &str, tag: &str, img: &Image) {
    let (status, digest, body) = pull_manifest(reg, repo, tag).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(digest.as_deref(), Some(img.digest.as_str()));
    assert_eq!(body, img.manifest);
    for blob in [&img.config, &img.layer] {
        let (status, got) = pull_blob(reg, repo, &sha256(blob)).await;
        assert_eq!(status, 200);
        assert_eq!(sha256(&got), sha256(blob));
    }
}

async fn metric(reg: &Registry, kind: &str, result: &str) -> u64 {
    let labels = [("kind", kind), ("result", result)];
    let text = common::metrics(reg).await;
    common::sample_sum(&text, "berth_proxy_requests_total", &labels) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pull_through_cache_fetches_once_and_serves_while_the_upstream_is_down() {
    let tmp = tempfile::tempdir().unwrap();
    let mut upstream = Upstream::start(tmp.path());
    let app = sample_image("proxied app v1");
    upstream.push_image("team/app", "v1", &app).await;
    // A two-platform index: a pull of one platform fetches that platform only.
    let amd64 = sample_image("proxied amd64");
    let arm64 = sample_image("proxied arm64");
    upstream
        .push_image("team/multi", &amd64.digest, &amd64)
        .await;
    upstream
        .push_image("team/multi", &arm64.digest, &arm64)
        .await;
    let mut amd64_desc = descriptor(OCI_MANIFEST, &amd64.manifest);
    amd64_desc["platform"] = serde_json::json!({"os": "linux", "architecture": "amd64"});
    let mut arm64_desc = descriptor(OCI_MANIFEST, &arm64.manifest);
    arm64_desc["platform"] = serde_json::json!({"os": "linux", "architecture": "arm64"});
    let index = image_index(&[amd64_desc, arm64_desc]);
    upstream
        .push_manifest("team/multi", "latest", OCI_INDEX, &index)
        .await;

    // Tags trusted for an hour: a second pull does not ask the upstream.
    let reg = cache(tmp.path(), "steady", &proxy_of(&upstream.base, "1h"));
    pull_image(&reg, "team/app", "v1", &app).await;
    let manifest_path = "/v2/team/app/manifests/v1";
    let layer_path = format!("/v2/team/app/blobs/{}", sha256(&app.layer));
    assert_eq!(upstream.answered("GET", manifest_path, 200), 1);
    assert_eq!(upstream.answered("GET", &layer_path, 200), 1);
    let before = upstream.dist.log().matches("\" 200 ").count();
    pull_image(&reg, "team/app", "v1", &app).await;
    pull_image(&reg, "team/app", &app.digest, &app).await;
    assert_eq!(
        upstream.dist.log().matches("\" 200 ").count(),
        before,
        "pulls of cached content reached the upstream"
    );
    assert!(metric(&reg, "manifest", "hit").await >= 2);
    assert!(metric(&reg, "blob", "hit").await >= 4);

    // The index, then one platform: the other platform's manifest and blobs stay upstream.
    let (status, digest, body) = pull_manifest(&reg, "team/multi", "latest").await;
    assert_eq!(status, 200);
    assert_eq!(digest, Some(sha256(&index)));
    assert_eq!(body, index, "the index is served byte for byte");
    pull_image(&reg, "team/multi", &amd64.digest, &amd64).await;
    let arm64_path = format!("/v2/team/multi/manifests/{}", arm64.digest);
    assert_eq!(upstream.answered("GET", &arm64_path, 200), 0);
    let arm64_layer = format!("/v2/team/multi/blobs/{}", sha256(&arm64.layer));
    assert_eq!(upstream.answered("GET", &arm64_layer, 200), 0);

    // A layer cached for one repository is linked into another once the upstream says that
    // one has it too, not fetched again; one the upstream does not have there stays unknown.
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let manifest = common::oci::image_manifest(
        &descriptor(common::oci::OCI_CONFIG, config),
        &[descriptor(common::oci::OCI_LAYER, &app.layer)],
    );
    let sibling = Image {
        digest: sha256(&manifest),
        config: config.to_vec(),
        layer: app.layer.clone(),
        manifest,
    };
    upstream.push_image("team/sibling", "v1", &sibling).await;
    pull_image(&reg, "team/sibling", "v1", &sibling).await;
    let sibling_layer = format!("/v2/team/sibling/blobs/{}", sha256(&app.layer));
    assert_eq!(
        upstream.answered("GET", &sibling_layer, 200),
        0,
        "fetched again"
    );
    assert_eq!(upstream.answered("HEAD", &sibling_layer, 200), 1);
    assert!(metric(&reg, "blob", "linked").await >= 1);
    let (status, _) = pull_blob(&reg, "team/nothing", &sha256(&app.layer)).await;
    assert_eq!(
        status, 404,
        "a repository the upstream lacks must not see another's blob"
    );

    // A cache is not pushed to.
    let resp = client()
        .post(reg.url("/v2/team/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    common::oci::expect_error(resp, 405, "UNSUPPORTED").await;
    let resp = client()
        .put(reg.url("/v2/team/app/manifests/mine"))
        .header("content-type", OCI_MANIFEST)
        .body(app.manifest.clone())
        .send()
        .await
        .unwrap();
    common::oci::expect_error(resp, 405, "UNSUPPORTED").await;

    // Tags revalidated after a second: a tag moved upstream is seen once the ttl has passed.
    let quick = cache(tmp.path(), "quick", &proxy_of(&upstream.base, "1s"));
    pull_image(&quick, "team/app", "v1", &app).await;
    let v2 = sample_image("proxied app v2");
    upstream.push_image("team/app", "v1", &v2).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    pull_image(&quick, "team/app", "v1", &v2).await;
    assert!(metric(&quick, "manifest", "miss").await >= 2);
    // The steady cache still trusts what it has, for its hour.
    pull_image(&reg, "team/app", "v1", &app).await;

    // Twenty clients asking at once for a blob nobody has pulled yet: one upstream fetch.
    let big = common::pseudo_bytes("a shared layer", 4 << 20);
    let config = serde_json::to_vec(&serde_json::json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})).unwrap();
    let shared = common::oci::image_manifest(
        &descriptor(common::oci::OCI_CONFIG, &config),
        &[descriptor(common::oci::OCI_LAYER, &big)],
    );
    upstream.push_blob("team/shared", &config).await;
    upstream.push_blob("team/shared", &big).await;
    upstream
        .push_manifest("team/shared", "1", OCI_MANIFEST, &shared)
        .await;
    let (status, ..) = pull_manifest(&reg, "team/shared", "1").await;
    assert_eq!(status, 200);
    let big_digest = sha256(&big);
    let reg = Arc::new(reg);
    let pulls: Vec<_> = (0..20)
        .map(|_| {
            let (reg, digest) = (reg.clone(), big_digest.clone());
            tokio::spawn(async move { pull_blob(&reg, "team/shared", &digest).await })
        })
        .collect();
    for p in pulls {
        let (status, body) = p.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(sha256(&body), big_digest);
    }
    let big_path = format!("/v2/team/shared/blobs/{big_digest}");
    assert_eq!(
        upstream.answered("GET", &big_path, 200),
        1,
        "one upstream fetch"
    );

    // The upstream goes away: what is cached still pulls, a stale tag included, and the
    // failure is counted; what is not cached is 503, not a hang.
    upstream.dist.stop();
    pull_image(&reg, "team/app", "v1", &app).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    pull_image(&quick, "team/app", "v1", &v2).await;
    assert!(metric(&quick, "manifest", "stale").await >= 1);
    let (status, ..) = pull_manifest(&quick, "team/never", "pulled").await;
    assert_eq!(status, 503);
    let (status, _) = pull_blob(&reg, "team/multi", &sha256(&arm64.layer)).await;
    assert_eq!(status, 503);
}

/// What a hostile upstream's token endpoint saw.
#[derive(Default)]
struct Seen {
    token_requests: AtomicUsize,
    authorizations: Mutex<Vec<String>>,
    /// Connections to the address a redirect points at.
    redirected: AtomicUsize,
}

/// An upstream that challenges with a token realm at `realm` (a shared, changeable value),
/// accepts the token it issues, serves one image, and redirects blob pulls to `redirect`.
async fn hostile_upstream(
    bind: IpAddr,
    realm: Arc<Mutex<String>>,
    redirect: Arc<Mutex<String>>,
    img: Image,
) -> SocketAddr {
    use axum::extract::Path as UrlPath;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let app = axum::Router::new().route(
        "/v2/{*rest}",
        axum::routing::get(move |UrlPath(rest): UrlPath<String>, headers: HeaderMap| {
            let (realm, redirect, img) = (realm.clone(), redirect.clone(), img.clone());
            async move {
                let authorized = headers
                    .get("authorization")
                    .is_some_and(|v| v.to_str().unwrap_or_default() == "Bearer issued");
                if !authorized {
                    let challenge = format!(
                        "Bearer realm=\"{}\",service=\"hostile\"",
                        realm.lock().unwrap()
                    );
                    return (
                        StatusCode::UNAUTHORIZED,
                        [("www-authenticate", challenge)],
                        "",
                    )
                        .into_response();
                }
                if rest.contains("/manifests/") {
                    return (
                        StatusCode::OK,
                        [
                            ("content-type", OCI_MANIFEST.to_string()),
                            ("docker-content-digest", img.digest.clone()),
                        ],
                        img.manifest.clone(),
                    )
                        .into_response();
                }
                let digest = rest.rsplit('/').next().unwrap_or_default().to_string();
                let to = format!("{}/{digest}", redirect.lock().unwrap());
                (StatusCode::TEMPORARY_REDIRECT, [("location", to)], "").into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind((bind, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A token endpoint that notes every request's `Authorization` and issues `issued`.
async fn token_endpoint(bind: IpAddr, seen: Arc<Seen>) -> SocketAddr {
    let app = axum::Router::new().route(
        "/token",
        axum::routing::get(move |headers: HeaderMap| {
            let seen = seen.clone();
            async move {
                seen.token_requests.fetch_add(1, Ordering::SeqCst);
                if let Some(v) = headers.get("authorization") {
                    seen.authorizations
                        .lock()
                        .unwrap()
                        .push(v.to_str().unwrap_or_default().to_string());
                }
                axum::Json(serde_json::json!({"token": "issued", "expires_in": 300}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind((bind, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A blob server that counts who reaches it and serves `data` under any path.
async fn blob_server(bind: IpAddr, data: Vec<u8>, seen: Arc<Seen>) -> SocketAddr {
    let app = axum::Router::new().fallback(move || {
        let (data, seen) = (data.clone(), seen.clone());
        async move {
            seen.redirected.fetch_add(1, Ordering::SeqCst);
            data
        }
    });
    let listener = tokio::net::TcpListener::bind((bind, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// An address of this machine that is not a loopback address (the docker bridge, the LAN).
fn outside_address() -> IpAddr {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .expect("ip (iproute2) lists this machine's addresses");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next()?.parse().ok())
        .expect("this machine has a non-loopback IPv4 address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn credentials_go_only_to_the_upstreams_host_and_redirects_stay_where_it_is() {
    use base64::Engine;
    let tmp = tempfile::tempdir().unwrap();
    let img = sample_image("hostile upstream");
    let loopback: IpAddr = "127.0.0.1".parse().unwrap();
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    );

    // An upstream on 127.0.0.1 whose realm names `localhost`: another host.
    let seen = Arc::new(Seen::default());
    let token = token_endpoint(loopback, seen.clone()).await;
    let realm = Arc::new(Mutex::new(format!(
        "http://localhost:{}/token",
        token.port()
    )));
    let nowhere = Arc::new(Mutex::new(String::new()));
    let up = hostile_upstream(loopback, realm.clone(), nowhere, img.clone()).await;
    let reg = cache(tmp.path(), "wary", &proxy_of(&format!("http://{up}"), "1h"));
    let (status, digest, _) = pull_manifest(&reg, "some/app", "v1").await;
    assert_eq!(status, 200);
    assert_eq!(digest.as_deref(), Some(img.digest.as_str()));
    assert_eq!(seen.token_requests.load(Ordering::SeqCst), 1);
    assert!(
        seen.authorizations.lock().unwrap().is_empty(),
        "credentials were sent to a realm on another host: {:?}",
        seen.authorizations.lock().unwrap()
    );
    // A realm on the upstream's own host gets them: the check above can fail.
    *realm.lock().unwrap() = format!("http://{token}/token");
    let (status, ..) = pull_manifest(&reg, "other/app", "v1").await;
    assert_eq!(status, 200);
    assert_eq!(*seen.authorizations.lock().unwrap(), vec![basic.clone()]);

    // An upstream on this machine's outside address: loopback is not where it is.
    let outside = outside_address();
    let seen = Arc::new(Seen::default());
    let token = token_endpoint(outside, seen.clone()).await;
    let realm = Arc::new(Mutex::new(format!("http://{token}/token")));
    let near = blob_server(outside, img.layer.clone(), seen.clone()).await;
    let local = blob_server(loopback, img.layer.clone(), seen.clone()).await;
    let redirect = Arc::new(Mutex::new(format!("http://{local}")));
    let up = hostile_upstream(outside, realm, redirect.clone(), img.clone()).await;
    let reg = cache(
        tmp.path(),
        "fenced",
        &proxy_of(&format!("http://{up}"), "1h"),
    );
    let (status, ..) = pull_manifest(&reg, "some/app", "v1").await;
    assert_eq!(status, 200);
    let (status, ..) = pull_blob(&reg, "some/app", &sha256(&img.layer)).await;
    assert_eq!(status, 503, "a redirect to a loopback address was followed");
    assert_eq!(
        seen.redirected.load(Ordering::SeqCst),
        0,
        "the redirect reached loopback"
    );
    // A redirect to where the upstream itself is, is followed, and the bytes are verified.
    *redirect.lock().unwrap() = format!("http://{near}");
    let (status, body) = pull_blob(&reg, "some/app", &sha256(&img.layer)).await;
    assert_eq!(status, 200);
    assert_eq!(body, img.layer);
    assert_eq!(seen.redirected.load(Ordering::SeqCst), 1);
    assert_eq!(*seen.authorizations.lock().unwrap(), vec![basic]);
}

/// A second upstream without authentication, in its own directory.
fn open_upstream(dir: &Path) -> (Distribution, String) {
    let root = dir.join("open-upstream");
    std::fs::create_dir_all(&root).unwrap();
    let dist = Distribution::on_directory(&root, &root.join("data"), "");
    let base = format!("http://{}", dist.host);
    (dist, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proxy_cache_projects_each_mirror_their_own_registry() {
    use common::builtin::{bearer, BuiltinRegistry, ADMIN_PASSWORD};
    use harbor::call;
    let tmp = tempfile::tempdir().unwrap();
    let guarded = Upstream::start(tmp.path());
    let app = sample_image("project mirror a");
    guarded.push_image("team/app", "v1", &app).await;
    let (open_dist, open_base) = open_upstream(tmp.path());
    let tool = sample_image("project mirror b");
    upload_image_to(&open_base, None, "lib/tool", "1", &tool).await;

    let berth = BuiltinRegistry::start();
    let base = berth.reg.url("");
    let admin = Some(("admin", ADMIN_PASSWORD));
    let add = |name: &str, url: &str, credential: serde_json::Value| {
        serde_json::json!({"name": name, "type": "docker-registry", "url": url, "credential": credential, "insecure": false})
            .to_string()
    };
    let a = call(
        &base,
        admin,
        "POST",
        "/registries",
        Some(&add(
            "guarded",
            &guarded.base,
            serde_json::json!({"type": "basic", "access_key": USER, "access_secret": PASSWORD}),
        )),
        &[],
    )
    .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    let a_id = a.header("location").rsplit('/').next().unwrap().to_string();
    let b = call(
        &base,
        admin,
        "POST",
        "/registries",
        Some(&add("open", &open_base, serde_json::json!({}))),
        &[],
    )
    .await;
    assert_eq!(b.status, 201, "{:?}", b.body);
    let b_id = b.header("location").rsplit('/').next().unwrap().to_string();
    // The secret is never shown; only system administrators see registries at all.
    let listed = call(&base, admin, "GET", "/registries", None, &[]).await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.body[0]["credential"]["access_secret"], "*****");
    assert!(!listed.body.to_string().contains(PASSWORD));
    berth.add_user("carol", "Carol12345");
    let denied = call(
        &base,
        Some(("carol", "Carol12345")),
        "GET",
        "/registries",
        None,
        &[],
    )
    .await;
    assert_eq!(denied.status, 403);
    let ping = call(
        &base,
        admin,
        "POST",
        "/registries/ping",
        Some(&format!("{{\"id\": {a_id}}}")),
        &[],
    )
    .await;
    assert_eq!(ping.status, 200, "{:?}", ping.body);
    let wrong = call(
        &base,
        admin,
        "POST",
        "/registries/ping",
        Some(&format!(
            "{{\"id\": {a_id}, \"credential\": {{\"access_secret\": \"wrong\"}}}}"
        )),
        &[],
    )
    .await;
    assert_eq!(wrong.status, 400, "a ping with a wrong password must fail");
    // Carol may not make a proxy-cache project.
    let project = |name: &str, id: &str| {
        format!("{{\"project_name\": \"{name}\", \"registry_id\": {id}, \"metadata\": {{\"public\": \"true\"}}}}")
    };
    let refused = call(
        &base,
        Some(("carol", "Carol12345")),
        "POST",
        "/projects",
        Some(&project("carols", &a_id)),
        &[],
    )
    .await;
    assert_eq!(refused.status, 403);
    for (name, id) in [("mirror-a", &a_id), ("mirror-b", &b_id)] {
        let made = call(
            &base,
            admin,
            "POST",
            "/projects",
            Some(&project(name, id)),
            &[],
        )
        .await;
        assert_eq!(made.status, 201, "{:?}", made.body);
        let shown = call(&base, admin, "GET", &format!("/projects/{name}"), None, &[]).await;
        assert_eq!(shown.body["registry_id"].to_string(), *id);
    }

    // Anybody pulls through the public mirrors, each from its own upstream.
    for (repo, tag, img) in [
        ("mirror-a/team/app", "v1", &app),
        ("mirror-b/lib/tool", "1", &tool),
    ] {
        let token = berth
            .token_ok(None, &[&format!("repository:{repo}:pull")])
            .await;
        let resp = bearer(
            client().get(berth.reg.url(&format!("/v2/{repo}/manifests/{tag}"))),
            &token,
        )
        .header("accept", ACCEPT)
        .send()
        .await
        .unwrap();
        assert_eq!(resp.status(), 200, "{repo}");
        assert_eq!(resp.headers()["docker-content-digest"], img.digest.as_str());
        for blob in [&img.config, &img.layer] {
            let resp = bearer(
                client().get(berth.reg.url(&format!("/v2/{repo}/blobs/{}", sha256(blob)))),
                &token,
            )
            .send()
            .await
            .unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(sha256(&resp.bytes().await.unwrap()), sha256(blob));
        }
    }
    assert_eq!(guarded.answered("GET", "/v2/team/app/manifests/v1", 200), 1);
    assert!(open_dist.log().contains("/v2/lib/tool/manifests/1"));

    // Nobody pushes into a mirror, not even its admin.
    let token = berth
        .token_ok(admin, &["repository:mirror-a/team/app:pull,push"])
        .await;
    let resp = bearer(
        client().post(berth.reg.url("/v2/mirror-a/team/app/blobs/uploads/")),
        &token,
    )
    .send()
    .await
    .unwrap();
    common::oci::expect_error(resp, 405, "UNSUPPORTED").await;
    // A registry a project mirrors is not deleted from under it.
    let gone = call(
        &base,
        admin,
        "DELETE",
        &format!("/registries/{a_id}"),
        None,
        &[],
    )
    .await;
    assert_eq!(gone.status, 409, "{:?}", gone.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_an_upstream_sends_is_verified_before_it_is_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let loopback: IpAddr = "127.0.0.1".parse().unwrap();
    let seen = Arc::new(Seen::default());
    let token = token_endpoint(loopback, seen.clone()).await;
    let realm = Arc::new(Mutex::new(format!("http://{token}/token")));
    let img = sample_image("verified on the way in");
    // Blobs come from a server that sends other bytes than the digest names, until mended.
    let wrong = blob_server(loopback, b"not the layer".to_vec(), seen.clone()).await;
    let right = blob_server(loopback, img.layer.clone(), seen.clone()).await;
    let redirect = Arc::new(Mutex::new(format!("http://{wrong}")));
    // Its manifests carry a digest their bytes do not have.
    let mut tampered = img.clone();
    tampered.manifest.extend_from_slice(b"\n");
    let liar = hostile_upstream(loopback, realm.clone(), redirect.clone(), tampered).await;
    let reg = cache(
        tmp.path(),
        "careful",
        &proxy_of(&format!("http://{liar}"), "1h"),
    );

    let (status, ..) = pull_manifest(&reg, "some/app", "v1").await;
    assert_eq!(
        status, 503,
        "a manifest whose bytes are not its digest was served"
    );
    let (status, ..) = pull_manifest(&reg, "some/app", &img.digest).await;
    assert_eq!(
        status, 503,
        "a manifest that is not the digest asked for was served"
    );
    let layer = sha256(&img.layer);
    let (status, _) = pull_blob(&reg, "some/app", &layer).await;
    assert_eq!(
        status, 503,
        "a blob whose bytes are not its digest was served"
    );
    // Nothing of it was kept: once the upstream sends the right bytes, they are what is served.
    *redirect.lock().unwrap() = format!("http://{right}");
    let (status, body) = pull_blob(&reg, "some/app", &layer).await;
    assert_eq!(status, 200);
    assert_eq!(sha256(&body), layer);
}

/// docker pulls a multi-platform image through the cache: it gets the index's digest and its
/// platform's image, and the cache fetched that platform only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_pulls_one_platform_through_the_cache() {
    use common::cli::{can_run, docker_inspect, run, DockerImages, Env};
    use common::image;
    let env = Env::new();
    if !can_run(
        "docker_pulls_one_platform_through_the_cache",
        env.docker_available(),
        "BERTH_SKIP_DOCKER",
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (upstream, upstream_base) = open_upstream(tmp.path());
    let m = image::oci_multi_arch(116);
    let layout = env.path("multi");
    image::write_multi_arch_layout(&layout, "v1", &m);
    run(env.skopeo().args([
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{}/team/multi:v1", upstream.host),
    ]));
    let reg = cache(
        tmp.path(),
        "docker",
        &format!("  remoteurl: {upstream_base}\n"),
    );
    let name = format!("{}/team/multi:v1", reg.host());
    let _images = DockerImages {
        env: &env,
        refs: vec![name.clone()],
    };
    let out = run(env.cmd("docker").args(["pull", &name]));
    assert!(
        out.contains(&format!("Digest: {}", m.index.digest)),
        "docker pull output:\n{out}"
    );
    let inspect = docker_inspect(&env, &name);
    assert_eq!(inspect["Id"], m.images[0].config.digest.as_str());
    assert_eq!(inspect["Architecture"], "amd64");
    // The arm64 image stayed upstream: neither its manifest nor its layers were fetched.
    let log = upstream.log();
    let amd64 = format!(
        "\"GET /v2/team/multi/manifests/{} ",
        m.images[0].manifest.digest
    );
    assert!(
        log.contains(&amd64),
        "the amd64 image came from elsewhere:\n{log}"
    );
    let arm64 = &m.images[1];
    let fetched = format!("\"GET /v2/team/multi/manifests/{} ", arm64.manifest.digest);
    assert!(!log.contains(&fetched), "{log}");
    for blob in arm64.blobs() {
        let fetched = format!("\"GET /v2/team/multi/blobs/{} ", blob.digest);
        assert!(!log.contains(&fetched), "{} was fetched", blob.digest);
    }
}
