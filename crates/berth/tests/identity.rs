//! The built-in token service against the real server: grants follow Harbor's roles, robots
//! hold what they were given, anonymous users pull public projects only, and every hole Harbor's
//! users have reported stays closed (each a hostile request that must be refused cleanly).

mod common;

use common::builtin::{bearer, granted, push_image, token_from, BuiltinRegistry, ADMIN_PASSWORD};
use common::oci::*;
use common::pseudo_bytes;
use serde_json::{json, Value};

const PW: &str = "Passw0rdX";

/// A user name and password, or none for anonymous.
type Credentials<'a> = Option<(&'a str, &'a str)>;

/// What identifies an audit entry: username, operation, resource type, resource, success.
type AuditKey = (String, String, String, String, bool);

/// A registry with projects `team` (private) and `pub` (public), users `dev` (developer of
/// team), `guest` (guest), `keeper` (maintainer), `stranger` (no membership), and robots
/// `robot$team+ci` (pull, push) and `robot$team+reader` (pull).
struct Setup {
    b: BuiltinRegistry,
    ci: (String, String),
    reader: (String, String),
}

fn setup() -> Setup {
    let b = BuiltinRegistry::start();
    b.add_project("team", false);
    b.add_project("pub", true);
    for (user, role) in [
        ("dev", Some("developer")),
        ("guest", Some("guest")),
        ("keeper", Some("maintainer")),
        ("stranger", None),
    ] {
        b.add_user(user, PW);
        if let Some(role) = role {
            b.add_member("team", user, role);
        }
    }
    let ci = b.add_robot("team", "ci", "pull,push");
    let reader = b.add_robot("team", "reader", "pull");
    Setup { b, ci, reader }
}

/// Pushes a blob with `token`; the status of the upload's start.
async fn start_upload_with(reg: &common::Registry, repo: &str, token: &str) -> reqwest::Response {
    bearer(
        client().post(reg.url(&format!("/v2/{repo}/blobs/uploads/"))),
        token,
    )
    .send()
    .await
    .unwrap()
}

/// The challenge of a 401: its `WWW-Authenticate` value.
fn challenge(resp: &reqwest::Response) -> String {
    header(resp, "www-authenticate").unwrap_or_default()
}

#[tokio::test]
async fn grants_follow_harbor_roles_and_robot_permissions() {
    let s = setup();
    let b = &s.b;
    let all = ["repository:team/app:pull,push,delete"];
    let cases: &[(Credentials<'_>, &[&str])] = &[
        (Some(("dev", PW)), &["pull", "push"]),
        (Some(("guest", PW)), &["pull"]),
        (Some(("keeper", PW)), &["delete", "pull", "push"]),
        (Some(("stranger", PW)), &[]),
        (Some(("admin", ADMIN_PASSWORD)), &["delete", "pull", "push"]),
        (Some((&s.ci.0, &s.ci.1)), &["pull", "push"]),
        (Some((&s.reader.0, &s.reader.1)), &["pull"]),
        (None, &[]),
    ];
    for (creds, want) in cases {
        let token = b.token_ok(*creds, &all).await;
        let who = creds.map_or("anonymous", |c| c.0);
        assert_eq!(granted(&token, "team/app"), *want, "grant of {who}");
    }
    // Public projects: anyone pulls, nobody without a role pushes.
    for creds in [None, Some(("stranger", PW))] {
        let token = b.token_ok(creds, &["repository:pub/app:pull,push"]).await;
        assert_eq!(granted(&token, "pub/app"), ["pull"]);
    }
    // The catalog is for system administrators.
    let token = b.token_ok(Some(("dev", PW)), &["registry:catalog:*"]).await;
    assert!(common::builtin::claims_of(&token)["access"]
        .as_array()
        .unwrap()
        .is_empty());
    let token = b
        .token_ok(Some(("admin", ADMIN_PASSWORD)), &["registry:catalog:*"])
        .await;
    let resp = bearer(client().get(b.reg.url("/v2/_catalog")), &token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // Wrong passwords, unknown users, robots with a wrong secret: 401 with a Basic challenge.
    for (user, pw) in [
        ("dev", "wrong"),
        ("nobody", PW),
        (s.ci.0.as_str(), "wrong"),
        ("dev", ""),
    ] {
        let (status, body) = b.token(Some((user, pw)), &all).await;
        assert_eq!(status, 401, "{user}: {body}");
        assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");
    }
    // A service this server does not issue tokens for, and a malformed scope: 400.
    let resp = client()
        .get(
            b.reg
                .url("/service/token?service=other&scope=repository:team/app:pull"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let (status, _) = b.token(None, &["repository:team/app"]).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn requests_need_the_actions_their_token_grants() {
    let s = setup();
    let b = &s.b;
    let reg = &b.reg;

    // Anonymous requests are challenged to this server's token service.
    let resp = client()
        .get(reg.url("/v2/team/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let www = challenge(&resp);
    assert!(
        www.contains(&format!("realm=\"http://{}/service/token\"", reg.host())),
        "{www}"
    );
    assert!(www.contains("service=\"berth\""), "{www}");
    assert!(www.contains("scope=\"repository:team/app:pull\""), "{www}");

    let dev = b
        .token_ok(Some(("dev", PW)), &["repository:team/app:pull,push,delete"])
        .await;
    let digest = push_image(reg, "team/app", "v1", &dev, "a").await;
    let get = |token: String| {
        bearer(client().get(reg.url("/v2/team/app/manifests/v1")), &token)
            .header("Accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
    };
    assert_eq!(get(dev.clone()).await.unwrap().status(), 200);

    // A guest pulls and cannot push; the robot without push cannot either.
    let guest = b
        .token_ok(Some(("guest", PW)), &["repository:team/app:pull,push"])
        .await;
    assert_eq!(get(guest.clone()).await.unwrap().status(), 200);
    let reader = b
        .token_ok(
            Some((&s.reader.0, &s.reader.1)),
            &["repository:team/app:pull,push"],
        )
        .await;
    for token in [&guest, &reader] {
        let resp = start_upload_with(reg, "team/app", token).await;
        assert_eq!(resp.status(), 401);
        assert!(challenge(&resp).contains("error=\"insufficient_scope\""));
        expect_error(resp, 401, "UNAUTHORIZED").await;
    }

    // DELETE needs delete: the developer's push token is refused, the maintainer deletes.
    let url = reg.url(&format!("/v2/team/app/manifests/{digest}"));
    let resp = bearer(client().delete(&url), &dev).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(challenge(&resp).contains("insufficient_scope"));
    let keeper = b
        .token_ok(
            Some(("keeper", PW)),
            &["repository:team/app:pull,push,delete"],
        )
        .await;
    let resp = bearer(client().delete(&url), &keeper).send().await.unwrap();
    assert_eq!(resp.status(), 202);

    // A token for one repository does not open another.
    let resp = bearer(client().get(reg.url("/v2/team/other/tags/list")), &dev)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // A cross-repository mount needs pull on the source: the stranger's public project
    // token cannot mount from team.
    let admin = b
        .token_ok(
            Some(("admin", ADMIN_PASSWORD)),
            &["repository:pub/base:pull,push"],
        )
        .await;
    push_image(reg, "pub/base", "v1", &admin, "b").await;
    b.add_project("own", false);
    b.berth(
        &[
            "project",
            "member",
            "add",
            "own",
            "stranger",
            "--role",
            "developer",
        ],
        None,
    );
    let blob = common::sha256(&pseudo_bytes("a-1", 1001));
    let stranger = b
        .token_ok(
            Some(("stranger", PW)),
            &["repository:own/x:pull,push", "repository:team/app:pull"],
        )
        .await;
    assert_eq!(granted(&stranger, "team/app"), Vec::<String>::new());
    let resp = bearer(
        client().post(reg.url(&format!(
            "/v2/own/x/blobs/uploads/?mount={blob}&from=team/app"
        ))),
        &stranger,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(
        resp.status(),
        401,
        "mount from a repository the caller cannot pull"
    );

    // Anonymous pulls of the public project work, of the private one do not.
    let anon = b.token_ok(None, &["repository:pub/base:pull"]).await;
    let resp = bearer(client().get(reg.url("/v2/pub/base/tags/list")), &anon)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let anon = b.token_ok(None, &["repository:team/app:pull"]).await;
    let resp = bearer(client().get(reg.url("/v2/team/app/tags/list")), &anon)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn an_upload_session_serves_only_its_repository_and_its_identity() {
    let s = setup();
    let b = &s.b;
    let reg = &b.reg;
    let both = [
        "repository:team/app:pull,push",
        "repository:team/other:pull,push",
    ];
    let dev = b.token_ok(Some(("dev", PW)), &both).await;
    let keeper = b.token_ok(Some(("keeper", PW)), &both).await;
    let robot = b.token_ok(Some((&s.ci.0, &s.ci.1)), &both).await;
    for token in [&dev, &keeper, &robot] {
        assert_eq!(granted(token, "team/other"), ["pull", "push"]);
    }

    let resp = start_upload_with(reg, "team/app", &dev).await;
    assert_eq!(resp.status(), 202);
    let location = resolve(reg, &must_header(&resp, "location"));
    let id = location
        .rsplit('/')
        .next()
        .and_then(|last| last.split('?').next())
        .unwrap()
        .to_string();
    let first = pseudo_bytes("bound-1", 3000);
    let second = pseudo_bytes("bound-2", 2000);
    let whole = [first.clone(), second.clone()].concat();
    let digest = common::sha256(&whole);
    let resp = bearer(client().patch(&location), &dev)
        .header("Content-Type", "application/octet-stream")
        .header("Content-Range", format!("0-{}", first.len() - 1))
        .body(first.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);

    // Another identity with push on the same repository, and the same identity through another
    // repository, find no such session: not its status, not a chunk, not the finish, not the
    // cancel.
    let foreign = reg.url(&format!("/v2/team/other/blobs/uploads/{id}"));
    let attempts = [
        (&location, &keeper, "another user"),
        (&location, &robot, "a robot of the project"),
        (&foreign, &dev, "another repository"),
    ];
    for (url, token, who) in attempts {
        let c = client();
        let with_digest = with_query(url, "digest", &digest);
        let requests = [
            bearer(c.get(url.as_str()), token),
            bearer(c.patch(url.as_str()), token)
                .header(
                    "Content-Range",
                    format!("{}-{}", first.len(), whole.len() - 1),
                )
                .body(second.clone()),
            bearer(c.put(&with_digest), token)
                .header(
                    "Content-Range",
                    format!("{}-{}", first.len(), whole.len() - 1),
                )
                .body(second.clone()),
            bearer(c.delete(url.as_str()), token),
        ];
        for req in requests {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 404, "a session used by {who}");
            expect_error(resp, 404, "BLOB_UPLOAD_UNKNOWN").await;
        }
    }
    // Nothing reached the blob or moved the session: its owner finishes it as it was.
    let resp = bearer(client().get(&location), &dev).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(
        must_header(&resp, "range"),
        format!("0-{}", first.len() - 1)
    );
    let resp = bearer(client().put(with_query(&location, "digest", &digest)), &dev)
        .header("Content-Type", "application/octet-stream")
        .body(second.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    for repo in ["team/app", "team/other"] {
        let resp = bearer(
            client().head(reg.url(&format!("/v2/{repo}/blobs/{digest}"))),
            &dev,
        )
        .send()
        .await
        .unwrap();
        let want = if repo == "team/app" { 200 } else { 404 };
        assert_eq!(resp.status(), want, "{repo}");
    }
}

/// The audit log's entries as `berth audit --json <args>` prints them.
fn audit(b: &BuiltinRegistry, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["audit", "--json"];
    all.extend_from_slice(args);
    b.berth(&all, None)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// (username, operation, resource_type, resource, success) of entries.
fn audit_keys(entries: &[Value]) -> Vec<AuditKey> {
    entries
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (
                s("username"),
                s("operation"),
                s("resource_type"),
                s("resource"),
                e["success"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_audit_log_records_logins_grants_pushes_pulls_and_deletes() {
    let b = BuiltinRegistry::start_with("audit:\n  pulls: true", "");
    b.add_project("team", false);
    b.add_user("dev", PW);
    b.add_user("keeper", PW);
    b.add_member("team", "dev", "developer");
    b.add_member("team", "keeper", "maintainer");
    let reg = &b.reg;

    let (status, _) = b.token(Some(("dev", "wrong")), &[]).await;
    assert_eq!(status, 401);
    let dev = b
        .token_ok(Some(("dev", PW)), &["repository:team/app:pull,push,delete"])
        .await;
    let digest = push_image(reg, "team/app", "v1", &dev, "audit").await;
    let resp = bearer(client().get(reg.url("/v2/team/app/manifests/v1")), &dev)
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let keeper = b
        .token_ok(Some(("keeper", PW)), &["repository:team/app:pull,delete"])
        .await;
    let resp = bearer(
        client().delete(reg.url(&format!("/v2/team/app/manifests/{digest}"))),
        &keeper,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 202);

    // Newest first; blobs are parts of the artifact and not entries of their own.
    let artifacts = audit_keys(&audit(&b, &["--resource", "team/app"]));
    let want = [
        ("keeper", "delete", "artifact", format!("team/app@{digest}")),
        ("dev", "pull", "artifact", "team/app:v1".to_string()),
        ("dev", "create", "artifact", "team/app:v1".to_string()),
    ];
    let want: Vec<_> = want
        .into_iter()
        .map(|(u, o, t, r)| (u.to_string(), o.to_string(), t.to_string(), r, true))
        .collect();
    assert_eq!(artifacts, want);

    // The developer's request for delete was granted in part: the grant says what was refused.
    let dev_tokens = audit(&b, &["--user", "dev", "--operation", "token"]);
    assert_eq!(dev_tokens.len(), 1, "{dev_tokens:?}");
    assert_eq!(
        dev_tokens[0]["success"], false,
        "a refused action is recorded"
    );
    let detail = dev_tokens[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("refused: repository:team/app:delete"),
        "{detail}"
    );
    assert_eq!(dev_tokens[0]["client"], "127.0.0.1");
    let logins = audit_keys(&audit(&b, &["--user", "dev", "--operation", "login"]));
    assert_eq!(
        logins,
        [
            (
                "dev".into(),
                "login".into(),
                "user".into(),
                "dev".into(),
                true
            ),
            (
                "dev".into(),
                "login".into(),
                "user".into(),
                "dev".into(),
                false
            ),
        ]
    );

    // Account changes made on the command line are entries too, named after its operator.
    let made: Vec<_> = audit_keys(&audit(&b, &["--operation", "create"]))
        .into_iter()
        .filter(|(user, _, kind, _, _)| user.starts_with("cli:") && kind != "artifact")
        .map(|(_, _, kind, what, ok)| (kind, what, ok))
        .collect();
    let want: Vec<_> = [
        ("member", "team/keeper"),
        ("member", "team/dev"),
        ("user", "keeper"),
        ("user", "dev"),
        ("project", "team"),
    ]
    .into_iter()
    .map(|(k, w)| (k.to_string(), w.to_string(), true))
    .collect();
    assert_eq!(made, want);
    b.berth(&["project", "member", "rm", "team", "keeper"], None);
    let removed = audit_keys(&audit(
        &b,
        &["--operation", "delete", "--resource", "team/keeper"],
    ));
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert!(removed[0].0.starts_with("cli:"), "{removed:?}");
}

#[tokio::test]
async fn a_token_from_before_its_project_was_recreated_is_refused() {
    let s = setup();
    let b = &s.b;
    let dev = b
        .token_ok(Some(("dev", PW)), &["repository:team/app:pull,push"])
        .await;
    push_image(&b.reg, "team/app", "v1", &dev, "c").await;
    b.berth(&["project", "rm", "team"], None);
    b.add_project("team", false);
    b.add_member("team", "dev", "developer");
    let resp = bearer(client().get(b.reg.url("/v2/team/app/tags/list")), &dev)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(
        challenge(&resp).contains("invalid_token"),
        "{}",
        challenge(&resp)
    );
    let errors = expect_error(resp, 401, "UNAUTHORIZED").await;
    let message = errors[0].message.clone().unwrap_or_default();
    assert!(message.contains("log in again"), "{message}");
    // A new token works.
    let fresh = b
        .token_ok(Some(("dev", PW)), &["repository:team/app:pull"])
        .await;
    let resp = bearer(client().get(b.reg.url("/v2/team/app/tags/list")), &fresh)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// The token service's own signing key, read from the store the server uses.
async fn own_key(b: &BuiltinRegistry) -> (jsonwebtoken::EncodingKey, String) {
    use berth::meta::access::AccessStore as _;
    let db = std::path::Path::new(b.config.parent().unwrap())
        .join("data")
        .join("berth")
        .join("meta.db");
    let store = berth::meta::sqlite::SqliteMetaStore::open(&db)
        .await
        .unwrap();
    let keys = store.signing_keys(0).await.unwrap();
    let key = keys.first().expect("a signing key");
    (
        jsonwebtoken::EncodingKey::from_ec_pem(key.private_key.as_bytes()).unwrap(),
        key.kid.clone(),
    )
}

#[tokio::test]
async fn forged_expired_and_malformed_tokens_get_a_clean_401() {
    use common::token::{now, KeyHint, Signer};
    let s = setup();
    let b = &s.b;
    let reg = &b.reg;
    let good = b
        .token_ok(Some(("dev", PW)), &["repository:team/app:pull,push"])
        .await;
    let good_claims = common::builtin::claims_of(&good);
    let (key, kid) = own_key(b).await;
    let sign = |claims: &Value| {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        h.kid = Some(kid.clone());
        jsonwebtoken::encode(&h, claims, &key).unwrap()
    };
    // Our own key signs the baseline, which works.
    assert_eq!(
        bearer(
            client().get(reg.url("/v2/team/app/tags/list")),
            &sign(&good_claims)
        )
        .send()
        .await
        .unwrap()
        .status(),
        404
    );
    let with = |k: &str, v: Value| {
        let mut c = good_claims.clone();
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v;
        }
        c
    };
    let b64 = |v: &Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    let foreign = Signer::ec("someone else");
    let mut tampered = good.clone();
    let payload_start = tampered.find('.').unwrap() + 1;
    let mut claims = good_claims.clone();
    claims["access"][0]["name"] = json!("team/other");
    tampered.replace_range(payload_start..tampered.rfind('.').unwrap(), &b64(&claims));
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&good_claims)
    );
    // The classic confusion: the public certificate used as an HMAC secret.
    let hs256 = {
        let pem = b.berth(&["token", "certificate"], None);
        let secret = jsonwebtoken::EncodingKey::from_secret(pem.as_bytes());
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some(kid.clone());
        jsonwebtoken::encode(&h, &good_claims, &secret).unwrap()
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "foreign key",
            foreign.sign(&good_claims, &KeyHint::Kid(kid.clone())),
        ),
        ("foreign x5c", foreign.sign_x5c(&good_claims)),
        ("alg none", none),
        ("HS256", hs256),
        ("expired", sign(&with("exp", json!(now() - 3600)))),
        ("not yet valid", sign(&with("nbf", json!(now() + 3600)))),
        (
            "wrong audience",
            sign(&with("aud", json!("another-service"))),
        ),
        ("wrong issuer", sign(&with("iss", json!("another-issuer")))),
        ("no iat", sign(&with("iat", Value::Null))),
        ("exp as text", sign(&with("exp", json!("tomorrow")))),
        (
            "access malformed",
            sign(&with("access", json!("everything"))),
        ),
        (
            "projects malformed",
            sign(&with("projects", json!(["team"]))),
        ),
        ("tampered", tampered),
        ("oversized", format!("{}{}", good, "A".repeat(20_000))),
        ("garbage", "not-a-token".into()),
    ];
    for (what, token) in cases {
        let resp = bearer(client().get(reg.url("/v2/team/app/tags/list")), &token)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(resp.status(), 401, "{what}");
        let www = challenge(&resp);
        assert!(www.contains("error=\"invalid_token\""), "{what}: {www}");
        expect_error(resp, 401, "UNAUTHORIZED").await;
    }
    // And the server keeps serving.
    let resp = bearer(client().get(reg.url("/v2/")), &good)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn failed_logins_are_throttled_per_account_and_address() {
    let b = BuiltinRegistry::start_with("loginattempts: 3\nloginwindow: 10m", "");
    b.add_user("alice", PW);
    b.add_user("bob", PW);
    let from = |ip: [u8; 4]| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from(ip))
            .build()
            .unwrap()
    };
    let (a, other) = (from([127, 0, 0, 1]), from([127, 0, 0, 2]));
    let scopes = ["repository:x/y:pull"];
    for _ in 0..3 {
        let (status, _) = token_from(&b.reg, &a, Some(("alice", "wrong")), &scopes).await;
        assert_eq!(status, 401);
    }
    // Even the right password waits now, from that address...
    let url = b.reg.url("/service/token?service=berth");
    let resp = a
        .get(&url)
        .basic_auth("alice", Some(PW))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let retry: u64 = header(&resp, "retry-after").unwrap().parse().unwrap();
    assert!(retry > 0 && retry <= 600, "Retry-After {retry}");
    expect_error(resp, 429, "TOOMANYREQUESTS").await;
    // ...but not from another address, nor for another account from the same address.
    let (status, _) = token_from(&b.reg, &other, Some(("alice", PW)), &scopes).await;
    assert_eq!(status, 200);
    let (status, _) = token_from(&b.reg, &a, Some(("bob", PW)), &scopes).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn oauth2_password_and_refresh_grants() {
    let s = setup();
    let b = &s.b;
    let c = client();
    let form = |pairs: &[(&str, &str)]| {
        c.post(b.reg.url("/service/token"))
            .form(
                &pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<Vec<_>>(),
            )
            .send()
    };
    let resp = form(&[
        ("grant_type", "password"),
        ("service", "berth"),
        ("client_id", "test"),
        ("access_type", "offline"),
        (
            "scope",
            "repository:team/app:pull,push repository:team/b:pull",
        ),
        ("username", "dev"),
        ("password", PW),
    ])
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    for field in [
        "token",
        "access_token",
        "expires_in",
        "issued_at",
        "refresh_token",
    ] {
        assert!(!body[field].is_null(), "{field} missing from {body}");
    }
    assert_eq!(body["token"], body["access_token"]);
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(granted(token, "team/app"), ["pull", "push"]);
    assert_eq!(granted(token, "team/b"), ["pull"]);
    let refresh = body["refresh_token"].as_str().unwrap().to_string();
    // A refresh token is not an access token.
    let resp = bearer(c.get(b.reg.url("/v2/team/app/tags/list")), &refresh)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = form(&[
        ("grant_type", "refresh_token"),
        ("service", "berth"),
        ("refresh_token", &refresh),
        ("scope", "repository:team/app:pull"),
    ])
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        granted(body["token"].as_str().unwrap(), "team/app"),
        ["pull"]
    );
    // A changed password revokes refresh tokens issued before it.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    b.berth(&["user", "passwd", "dev"], Some("N3wPassword"));
    let resp = form(&[
        ("grant_type", "refresh_token"),
        ("service", "berth"),
        ("refresh_token", &refresh),
    ])
    .await
    .unwrap();
    assert_eq!(resp.status(), 401);
    // GET with offline_token, as docker login asks.
    let resp = c
        .get(
            b.reg
                .url("/service/token?service=berth&offline_token=true&client_id=docker"),
        )
        .basic_auth("dev", Some("N3wPassword"))
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert!(body["refresh_token"].is_string(), "{body}");
}

#[tokio::test]
async fn two_instances_share_keys_and_rotation_keeps_old_tokens_valid() {
    let s = setup();
    let b = &s.b;
    let second = b.another_instance();
    let scopes = ["repository:team/app:pull"];
    let c = client();
    let check = |reg: &common::Registry, token: &str| {
        bearer(c.get(reg.url("/v2/team/app/tags/list")), token).send()
    };
    let old = b.token_ok(Some(("dev", PW)), &scopes).await;
    // 404: authorised, and the repository has nothing yet.
    assert_eq!(check(&second, &old).await.unwrap().status(), 404);
    let (_, from_second) = token_from(&second, &c, Some(("dev", PW)), &scopes).await;
    let from_second = from_second["token"].as_str().unwrap().to_string();
    assert_eq!(check(&b.reg, &from_second).await.unwrap().status(), 404);

    let kid = |t: &str| jsonwebtoken::decode_header(t).unwrap().kid.unwrap();
    let old_kid = kid(&old);
    let out = b.berth(&["token", "rotate"], None);
    assert!(!out.contains(&old_kid), "{out}");
    // Each instance signs with the new key once it has read it (within seconds).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut fresh = Vec::new();
    for reg in [&b.reg, &second] {
        loop {
            let (_, body) = token_from(reg, &c, Some(("dev", PW)), &scopes).await;
            let t = body["token"].as_str().unwrap().to_string();
            if kid(&t) != old_kid {
                fresh.push(t);
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no instance rotated");
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
    for reg in [&b.reg, &second] {
        for t in fresh.iter().chain([&old, &from_second]) {
            assert_eq!(check(reg, t).await.unwrap().status(), 404);
        }
    }
    // Another registry can trust this service through the exported certificates.
    let pem = b.berth(&["token", "certificate"], None);
    assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 2, "{pem}");
}
