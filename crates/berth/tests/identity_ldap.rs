//! The built-in token service with `auth.builtin.ldap`, against a real slapd per test: LDAP users
//! get the roles of their groups, lose them (and sysadmin) at the next login after leaving a
//! group, refresh tokens die with a group change, a directory that is down is a 503 while the
//! local `admin` still logs in, other local accounts are refused (Harbor's `ldap_auth`), ldaps
//! with a CA works, and skopeo logs in and pushes as an LDAP user.

mod common;

use common::builtin::{granted, BuiltinRegistry, ADMIN_PASSWORD};
use common::cli::{output, report, Env};
use common::image;
use common::slapd::{group_dn, Slapd};
use serde_json::Value;

const ALICE_PW: &str = "alice-pass";
const BOB_PW: &str = "bob-pass";
const PUSH: &str = "repository:team/app:pull,push";

/// A directory with alice (in `devs`), bob (in no group) and the empty group `admins`.
fn directory() -> Slapd {
    let slapd = Slapd::start();
    slapd.add_user("alice", ALICE_PW, "Alice Liddell", "alice@example.org");
    slapd.add_user("bob", BOB_PW, "Bob Builder", "bob@example.org");
    slapd.add_group("devs");
    slapd.add_group("admins");
    slapd.add_member("devs", "alice");
    slapd
}

/// `auth.builtin` settings logging in against `ldap` (the LdapConfig YAML) plus `extra` keys.
fn builtin_yaml(ldap: &str, extra: &str) -> String {
    let ldap: String = ldap.lines().map(|l| format!("  {l}\n")).collect();
    format!("ldap:\n{ldap}{extra}")
}

/// A registry on `slapd` (plain ldap://, `groupadmindn` the `admins` group) with the private
/// project `team`, where the `devs` group is developer.
fn registry(slapd: &Slapd, extra: &str) -> BuiltinRegistry {
    let ldap = format!(
        "{}groupadmindn: {}\n",
        slapd.config(),
        group_dn("admins").to_uppercase()
    );
    let b = BuiltinRegistry::start_with(&builtin_yaml(&ldap, extra), "");
    b.add_project("team", false);
    b.berth(
        &[
            "project",
            "member",
            "add",
            "team",
            "--group",
            "CN=devs, ou=groups,dc=example,dc=org",
            "--role",
            "developer",
        ],
        None,
    );
    b
}

/// The actions a successful token request for `scope` grants on `team/app`.
async fn team_app(b: &BuiltinRegistry, user: &str, password: &str) -> Vec<String> {
    let token = b.token_ok(Some((user, password)), &[PUSH]).await;
    granted(&token, "team/app")
}

/// Whether a token for `user` carries the catalog scope (what only system administrators get).
async fn has_catalog(b: &BuiltinRegistry, user: &str, password: &str) -> bool {
    let token = b
        .token_ok(Some((user, password)), &["registry:catalog:*"])
        .await;
    let claims = common::builtin::claims_of(&token);
    claims["access"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|a| a["type"] == "registry" && a["name"] == "catalog")
}

/// `POST /service/token` with the OAuth2 `form`: the status and the JSON body.
async fn post_token(b: &BuiltinRegistry, form: &[(&str, &str)]) -> (u16, Value) {
    let body: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let resp = reqwest::Client::new()
        .post(b.reg.url("/service/token"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .expect("token request");
    let status = resp.status().as_u16();
    let json = resp.json().await.unwrap_or(Value::Null);
    (status, json)
}

#[tokio::test]
async fn ldap_users_hold_the_roles_of_their_groups_until_they_leave_them() {
    let slapd = directory();
    let b = registry(&slapd, "");

    assert_eq!(team_app(&b, "alice", ALICE_PW).await, ["pull", "push"]);
    let info: Value = reqwest::get(b.reg.url("/api/v2.0/systeminfo"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["auth_mode"], "ldap_auth", "{info}");
    // The directory's spelling of the name is the user's.
    let token = b.token_ok(Some(("ALICE", ALICE_PW)), &[PUSH]).await;
    assert_eq!(common::builtin::claims_of(&token)["sub"], "alice");
    assert_eq!(team_app(&b, "bob", BOB_PW).await, Vec::<String>::new());

    let (status, body) = b.token(Some(("alice", "wrong-password")), &[PUSH]).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = b.token(Some(("nobody", "whatever")), &[PUSH]).await;
    assert_eq!(status, 401, "{body}");

    // The record follows the directory.
    let users = b.berth(&["user", "list"], None);
    assert!(users.contains("alice"), "{users}");

    // Leaving the group takes the role away at the next login; joining gives it.
    slapd.remove_member("devs", "alice");
    assert_eq!(team_app(&b, "alice", ALICE_PW).await, Vec::<String>::new());
    slapd.add_member("devs", "bob");
    assert_eq!(team_app(&b, "bob", BOB_PW).await, ["pull", "push"]);

    // The group's membership is removed by its DN, written any way.
    let members = b.berth(&["project", "member", "list", "team"], None);
    assert!(members.contains("devs"), "{members}");
    b.berth(
        &[
            "project",
            "member",
            "rm",
            "team",
            "--group",
            "cn=DEVS,ou=groups,dc=example,dc=org",
        ],
        None,
    );
    assert_eq!(team_app(&b, "bob", BOB_PW).await, Vec::<String>::new());
}

#[tokio::test]
async fn the_admin_group_makes_system_administrators_at_each_login() {
    let slapd = directory();
    let b = registry(&slapd, "");
    assert!(!has_catalog(&b, "bob", BOB_PW).await);

    slapd.add_member("admins", "bob");
    assert!(has_catalog(&b, "bob", BOB_PW).await);
    // A system administrator may do everything in every project.
    assert_eq!(team_app(&b, "bob", BOB_PW).await, ["pull", "push"]);

    slapd.remove_member("admins", "bob");
    assert!(!has_catalog(&b, "bob", BOB_PW).await);
    assert_eq!(team_app(&b, "bob", BOB_PW).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_directory_that_is_down_is_503_and_the_local_admin_still_logs_in() {
    let mut slapd = directory();
    let b = registry(&slapd, "loginattempts: 2\n");
    assert_eq!(team_app(&b, "alice", ALICE_PW).await, ["pull", "push"]);

    slapd.stop();
    for _ in 0..3 {
        let (status, body) = b.token(Some(("alice", ALICE_PW)), &[PUSH]).await;
        assert_eq!(status, 503, "{body}");
        let message = body.to_string();
        assert!(
            message.contains("LDAP directory is unavailable"),
            "{message}"
        );
        assert!(message.contains("auth.builtin.ldap"), "{message}");
        assert!(!message.contains("reader-secret"), "{message}");
    }
    let token = b.token_ok(Some(("admin", ADMIN_PASSWORD)), &[PUSH]).await;
    assert_eq!(granted(&token, "team/app"), ["pull", "push"]);

    // An unavailable directory counted no failure: alice logs in once it is back.
    slapd.restart();
    assert_eq!(team_app(&b, "alice", ALICE_PW).await, ["pull", "push"]);
}

#[tokio::test]
async fn ldap_failures_are_throttled_like_local_ones() {
    let slapd = directory();
    let b = registry(&slapd, "loginattempts: 2\n");
    for _ in 0..2 {
        let (status, body) = b.token(Some(("alice", "wrong-password")), &[PUSH]).await;
        assert_eq!(status, 401, "{body}");
    }
    let (status, body) = b.token(Some(("alice", ALICE_PW)), &[PUSH]).await;
    assert_eq!(status, 429, "{body}");
    // Another account from the same address is not affected yet.
    assert_eq!(team_app(&b, "bob", BOB_PW).await, Vec::<String>::new());
}

#[tokio::test]
async fn only_local_administrators_log_in_locally_while_ldap_is_set() {
    let slapd = directory();
    let b = registry(&slapd, "");
    b.add_user("localdev", "Passw0rdX");
    b.add_member("team", "localdev", "developer");
    let (status, body) = b.token(Some(("localdev", "Passw0rdX")), &[PUSH]).await;
    assert_eq!(status, 401, "{body}");

    // A local account's name is not taken over by a directory entry of the same name.
    slapd.add_user("localdev", "dir-pass", "Local Dev", "ld@example.org");
    slapd.add_member("devs", "localdev");
    let (status, body) = b.token(Some(("localdev", "dir-pass")), &[PUSH]).await;
    assert_eq!(status, 401, "{body}");

    let (status, body) = b.token(Some(("admin", "wrong-password")), &[PUSH]).await;
    assert_eq!(status, 401, "{body}");
    let token = b.token_ok(Some(("admin", ADMIN_PASSWORD)), &[PUSH]).await;
    assert_eq!(granted(&token, "team/app"), ["pull", "push"]);

    // Robots log in as always.
    let (robot, secret) = b.add_robot("team", "ci", "pull,push");
    let token = b.token_ok(Some((&robot, &secret)), &[PUSH]).await;
    assert_eq!(granted(&token, "team/app"), ["pull", "push"]);
}

#[tokio::test]
async fn refresh_tokens_end_when_the_groups_change() {
    let slapd = directory();
    let b = registry(&slapd, "");
    let login = [
        ("grant_type", "password"),
        ("username", "alice"),
        ("password", ALICE_PW),
        ("access_type", "offline"),
        ("service", "berth"),
        ("scope", PUSH),
    ];
    let (status, body) = post_token(&b, &login).await;
    assert_eq!(status, 200, "{body}");
    let refresh = body["refresh_token"]
        .as_str()
        .expect("refresh token")
        .to_owned();
    let with_refresh = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh.as_str()),
        ("service", "berth"),
        ("scope", PUSH),
    ];

    // Unchanged groups: the refresh token carries them.
    let (status, body) = post_token(&b, &with_refresh).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().expect("token");
    assert_eq!(granted(token, "team/app"), ["pull", "push"]);

    // The directory is read again at a refresh: out of the group, the session is over.
    slapd.remove_member("devs", "alice");
    let (status, body) = post_token(&b, &with_refresh).await;
    assert_eq!(status, 401, "{body}");
    // Even once the group is back: the token was issued for a state that changed.
    slapd.add_member("devs", "alice");
    let (status, body) = post_token(&b, &with_refresh).await;
    assert_eq!(status, 401, "{body}");

    // A new login with the password gives a new session.
    let (status, body) = post_token(&b, &login).await;
    assert_eq!(status, 200, "{body}");
    let refresh = body["refresh_token"]
        .as_str()
        .expect("refresh token")
        .to_owned();

    // A login that reads other groups ends the sessions of earlier logins too.
    slapd.remove_member("devs", "alice");
    let (status, _) = post_token(&b, &login).await;
    assert_eq!(status, 200);
    let with_refresh = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh.as_str()),
        ("service", "berth"),
    ];
    let (status, body) = post_token(&b, &with_refresh).await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test]
async fn ldaps_with_the_directory_ca_works_end_to_end() {
    let slapd = directory();
    let ldap = format!(
        "{}ca: {}\n",
        slapd.config().replace(&slapd.url(), &slapd.ldaps_url()),
        slapd.ca_path().display()
    );
    assert!(ldap.contains("ldaps://"), "{ldap}");
    let b = BuiltinRegistry::start_with(&builtin_yaml(&ldap, ""), "");
    b.add_project("team", false);
    b.berth(
        &[
            "project",
            "member",
            "add",
            "team",
            "--group",
            &group_dn("devs"),
            "--role",
            "developer",
        ],
        None,
    );
    assert_eq!(team_app(&b, "alice", ALICE_PW).await, ["pull", "push"]);
    let (status, body) = b.token(Some(("alice", "wrong-password")), &[PUSH]).await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test]
async fn a_directory_without_its_ca_is_unavailable() {
    let slapd = directory();
    let ldap = slapd.config().replace(&slapd.url(), &slapd.ldaps_url());
    let b = BuiltinRegistry::start_with(&builtin_yaml(&ldap, ""), "");
    let (status, body) = b.token(Some(("alice", ALICE_PW)), &[PUSH]).await;
    assert_eq!(status, 503, "{body}");
}

/// `skopeo login` as `user`, the password on standard input.
fn skopeo_login(env: &Env, host: &str, user: &str, password: &str) -> Result<(), String> {
    use std::io::Write as _;
    let mut cmd = env.skopeo();
    cmd.args(["login", "--tls-verify=false", "--username", user])
        .args(["--password-stdin", host])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("skopeo runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(password.as_bytes())
        .expect("write the password");
    let out = child.wait_with_output().expect("skopeo login");
    match out.status.success() {
        true => Ok(()),
        false => Err(report(&cmd, &out)),
    }
}

#[test]
fn skopeo_logs_in_and_pushes_as_an_ldap_user() {
    let slapd = directory();
    let b = registry(&slapd, "");
    let host = b.reg.host();
    let env = Env::new();
    let img = image::oci_image(4242, 2);
    let src = env.path("src");
    image::write_image_layout(&src, "v1", &img);
    let layout = format!("oci:{}:v1", src.display());

    assert!(skopeo_login(&env, &host, "alice", "wrong-password").is_err());
    skopeo_login(&env, &host, "alice", ALICE_PW).expect("alice logs in");
    let pushed = env.skopeo_push(&[], &layout, &format!("docker://{host}/team/app:v1"));
    assert_eq!(pushed, img.manifest.digest);

    // bob, in no group, logs in but may not push to the private project.
    skopeo_login(&env, &host, "bob", BOB_PW).expect("bob logs in");
    let mut push = env.skopeo();
    push.args(["copy", "--dest-tls-verify=false", &layout])
        .arg(format!("docker://{host}/team/app:bob"));
    let out = output(&mut push);
    assert!(!out.status.success(), "bob pushed: {}", report(&push, &out));
}
