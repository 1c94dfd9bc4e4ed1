//! Projects' content rules against the real server: immutable tag rules (Harbor's
//! `/immutabletagrules`) hold for everyone, through the registry API and the management API;
//! storage quotas (`/quotas`, `storage_limit`) refuse a push before its bytes are stored and
//! count a blob once per project.

mod common;
// Only its API client (`call`) serves here; the harborapi driver is harbor_api.rs's.
#[allow(dead_code)]
#[path = "common/harbor.rs"]
mod harbor;

use common::builtin::ADMIN_PASSWORD;
use common::builtin::{bearer, push_image, push_image_blobs, put_manifest, BuiltinRegistry};
use common::oci::{client, expect_error};
use common::pseudo_bytes;
use harbor::{call, Answer, Who};
use serde_json::json;

const PW: &str = "Passw0rdX";
const ADMIN: Who<'static> = Some(("admin", ADMIN_PASSWORD));

fn refused(a: &Answer, status: u16, code: &str, what: &str) {
    assert_eq!(a.status, status, "{what}: {}", a.body);
    assert_eq!(a.code(), code, "{what}: {}", a.body);
    assert!(!a.message().is_empty(), "{what}: an error says why");
}

/// Project `team` with `lead` (project admin), `dev` (developer), and `stranger` (no role).
fn setup() -> BuiltinRegistry {
    let b = BuiltinRegistry::start();
    b.add_project("team", false);
    for (user, role) in [("lead", "projectAdmin"), ("dev", "developer")] {
        b.add_user(user, PW);
        b.add_member("team", user, role);
    }
    b.add_user("stranger", PW);
    b
}

fn rule(tag: &str, tag_decoration: &str, repo: &str, repo_decoration: &str) -> String {
    json!({
        "disabled": false,
        "action": "immutable",
        "template": "immutable_template",
        "tag_selectors": [{"kind": "doublestar", "decoration": tag_decoration, "pattern": tag}],
        "scope_selectors": {"repository": [
            {"kind": "doublestar", "decoration": repo_decoration, "pattern": repo}]},
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_immutable_tag_is_never_moved_or_deleted_by_anyone() {
    let b = setup();
    let u = b.reg.url("");
    let reg = &b.reg;
    let admin = b
        .token_ok(
            Some(("admin", ADMIN_PASSWORD)),
            &[
                "repository:team/app:pull,push,delete",
                "repository:team/tmp/x:pull,push,delete",
            ],
        )
        .await;
    let v1 = push_image(reg, "team/app", "v1", &admin, "first").await;

    // Only project admins and maintainers (and system administrators) make rules.
    let rules = "/projects/team/immutabletagrules";
    let releases = rule("v*", "matches", "tmp/**", "repoExcludes");
    refused(
        &call(&u, Some(("dev", PW)), "POST", rules, Some(&releases), &[]).await,
        403,
        "FORBIDDEN",
        "a developer makes a rule",
    );
    refused(
        &call(&u, Some(("stranger", PW)), "GET", rules, None, &[]).await,
        403,
        "FORBIDDEN",
        "a stranger lists the rules",
    );
    refused(
        &call(
            &u,
            Some(("lead", PW)),
            "POST",
            rules,
            Some(&rule("[", "matches", "**", "repoMatches")),
            &[],
        )
        .await,
        400,
        "BAD_REQUEST",
        "an invalid pattern",
    );
    let made = call(&u, Some(("lead", PW)), "POST", rules, Some(&releases), &[]).await;
    assert_eq!(made.status, 201, "{}", made.body);
    let id = made
        .header("location")
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let listed = call(&u, Some(("dev", PW)), "GET", rules, None, &[]).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(listed.body[0]["tag_selectors"][0]["pattern"], "v*");
    assert_eq!(
        listed.body[0]["scope_selectors"]["repository"][0]["decoration"],
        "repoExcludes"
    );

    // The same manifest again is no move; another one is refused, and v1 stays.
    let again = push_image(reg, "team/app", "v1", &admin, "first").await;
    assert_eq!(again, v1);
    let other = push_image_blobs(reg, "team/app", &admin, "second").await;
    let resp = put_manifest(reg, "team/app", "v1", &admin, other.clone()).await;
    let errors = expect_error(resp, 403, "DENIED").await;
    assert!(
        errors[0]
            .message
            .as_deref()
            .unwrap_or("")
            .contains("immutable"),
        "{errors:?}"
    );
    let resp = bearer(client().head(reg.url("/v2/team/app/manifests/v1")), &admin)
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["docker-content-digest"].to_str().unwrap(),
        v1
    );
    // A push by digest with ?tag=v1 is a move too.
    let other_digest = common::sha256(&other);
    let resp = put_manifest(
        reg,
        "team/app",
        &format!("{other_digest}?tag=v1"),
        &admin,
        other.clone(),
    )
    .await;
    expect_error(resp, 403, "DENIED").await;
    // Tags the rule does not match move freely, in repositories it excludes too.
    push_image(reg, "team/app", "latest", &admin, "first").await;
    push_image(reg, "team/app", "latest", &admin, "second").await;
    push_image(reg, "team/tmp/x", "v1", &admin, "first").await;
    push_image(reg, "team/tmp/x", "v1", &admin, "second").await;

    // Neither the tag nor the manifest it points at can be deleted, by the system
    // administrator either, through either API.
    for reference in ["v1", v1.as_str()] {
        let resp = bearer(
            client().delete(reg.url(&format!("/v2/team/app/manifests/{reference}"))),
            &admin,
        )
        .send()
        .await
        .unwrap();
        expect_error(resp, 403, "DENIED").await;
    }
    let artifact = format!("/projects/team/repositories/app/artifacts/{v1}");
    refused(
        &call(
            &u,
            ADMIN,
            "DELETE",
            &format!("{artifact}/tags/v1"),
            None,
            &[],
        )
        .await,
        412,
        "PRECONDITION",
        "deleting an immutable tag through the API",
    );
    refused(
        &call(&u, ADMIN, "DELETE", &artifact, None, &[]).await,
        412,
        "PRECONDITION",
        "deleting the artifact of an immutable tag through the API",
    );

    // Disabled, the rule protects nothing; deleted, it is gone.
    let disabled = releases.replace("\"disabled\":false", "\"disabled\":true");
    let path = format!("{rules}/{id}");
    let a = call(&u, Some(("lead", PW)), "PUT", &path, Some(&disabled), &[]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let resp = put_manifest(reg, "team/app", "v1", &admin, other).await;
    assert_eq!(resp.status(), 201);
    refused(
        &call(&u, Some(("dev", PW)), "DELETE", &path, None, &[]).await,
        403,
        "FORBIDDEN",
        "a developer deletes a rule",
    );
    let a = call(&u, Some(("lead", PW)), "DELETE", &path, None, &[]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let listed = call(&u, Some(("lead", PW)), "GET", rules, None, &[]).await;
    assert_eq!(listed.body, json!([]));
    let log = b.berth(&["audit", "--json", "--resource", "team/immutable"], None);
    assert_eq!(log.lines().count(), 3, "create, update, delete: {log}");
}

/// The number of files below `dir`.
fn files(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            if e.path().is_dir() {
                files(&e.path())
            } else {
                1
            }
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_over_quota_is_refused_before_its_bytes_are_stored() {
    let b = setup();
    let u = b.reg.url("");
    let reg = &b.reg;
    // Only system administrators give a project a quota.
    let small = json!({"project_name": "small", "storage_limit": 4000}).to_string();
    refused(
        &call(
            &u,
            Some(("dev", PW)),
            "POST",
            "/projects",
            Some(&small),
            &[],
        )
        .await,
        403,
        "FORBIDDEN",
        "a user asks for a quota",
    );
    let a = call(&u, ADMIN, "POST", "/projects", Some(&small), &[]).await;
    assert_eq!(a.status, 201, "{}", a.body);
    let id: i64 = a
        .header("location")
        .rsplit('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let token = b
        .token_ok(
            Some(("admin", ADMIN_PASSWORD)),
            &[
                "repository:small/app:pull,push",
                "repository:small/copy:pull,push",
                "repository:team/app:pull,push",
            ],
        )
        .await;
    // About 2.4 kB: within the quota.
    push_image(reg, "small/app", "v1", &token, "fits").await;
    let quota = call(&u, ADMIN, "GET", &format!("/quotas/{id}"), None, &[]).await;
    assert_eq!(quota.status, 200, "{}", quota.body);
    assert_eq!(quota.body["hard"]["storage"], 4000);
    let used = quota.body["used"]["storage"].as_i64().unwrap();
    assert!(used > 2000 && used < 4000, "{}", quota.body);
    refused(
        &call(
            &u,
            Some(("lead", PW)),
            "GET",
            &format!("/quotas/{id}"),
            None,
            &[],
        )
        .await,
        403,
        "FORBIDDEN",
        "a project admin reads quotas",
    );

    let blobs = b.data().join("docker/registry/v2/blobs");
    let stored = files(&blobs);
    assert_eq!(stored, 3, "the image's config, layer and manifest");
    // A monolithic push past the quota: refused, nothing stored.
    let big = pseudo_bytes("too big", 3000);
    let digest = common::sha256(&big);
    let resp = bearer(
        client().post(reg.url(&format!("/v2/small/app/blobs/uploads/?digest={digest}"))),
        &token,
    )
    .header("Content-Type", "application/octet-stream")
    .body(big.clone())
    .send()
    .await
    .unwrap();
    let errors = expect_error(resp, 403, "DENIED").await;
    assert!(
        errors[0].message.as_deref().unwrap_or("").contains("quota"),
        "{errors:?}"
    );
    // A chunk past the quota: refused, nothing stored.
    let resp = bearer(
        client().post(reg.url("/v2/small/app/blobs/uploads/")),
        &token,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 202);
    let location = common::oci::resolve(reg, &common::oci::must_header(&resp, "location"));
    let resp = bearer(client().patch(&location), &token)
        .header("Content-Type", "application/octet-stream")
        .header("Content-Range", format!("0-{}", big.len() - 1))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    expect_error(resp, 403, "DENIED").await;
    assert_eq!(files(&blobs), stored, "a refused push stores nothing");
    let after = call(&u, ADMIN, "GET", &format!("/quotas/{id}"), None, &[]).await;
    assert_eq!(after.body["used"]["storage"], used);

    // What the project already holds is free in another of its repositories; the same blob in
    // another project counts there.
    let a = call(
        &u,
        ADMIN,
        "PUT",
        &format!("/quotas/{id}"),
        Some(&json!({"hard": {"storage": used}}).to_string()),
        &[],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    push_image(reg, "small/copy", "v1", &token, "fits").await;
    push_image(reg, "team/app", "v1", &token, "fits").await;
    let quotas = call(&u, ADMIN, "GET", "/quotas?reference=project", None, &[]).await;
    let of = |name: &str| {
        quotas
            .body
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["ref"]["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(of("small")["used"]["storage"], used);
    assert_eq!(
        of("team")["used"]["storage"],
        used,
        "counted for each project"
    );
    assert_eq!(of("team")["hard"]["storage"], -1);
    let summary = call(
        &u,
        Some(("lead", PW)),
        "GET",
        "/projects/team/summary",
        None,
        &[],
    )
    .await;
    assert_eq!(
        summary.body["quota"]["used"]["storage"], used,
        "{}",
        summary.body
    );
    assert_eq!(summary.body["repo_count"], 1);

    // Raised, the push goes through.
    let a = call(
        &u,
        ADMIN,
        "PUT",
        &format!("/quotas/{id}"),
        Some(&json!({"hard": {"storage": -1}}).to_string()),
        &[],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let resp = bearer(
        client().post(reg.url(&format!("/v2/small/app/blobs/uploads/?digest={digest}"))),
        &token,
    )
    .header("Content-Type", "application/octet-stream")
    .body(big)
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 201);
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_keeps_exactly_what_its_rules_say_dry_and_for_real() {
    let b = setup();
    let u = b.reg.url("");
    let reg = &b.reg;
    let token = b
        .token_ok(
            Some(("admin", ADMIN_PASSWORD)),
            &[
                "repository:team/app:pull,push",
                "repository:team/other:pull,push",
            ],
        )
        .await;
    // A known history, a second apart so that push times order it.
    let mut pushed = std::collections::BTreeMap::new();
    for tag in ["v1", "v2", "dev-1", "v3", "v4", "v5"] {
        pushed.insert(tag, push_image(reg, "team/app", tag, &token, tag).await);
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
    let untagged = push_image_blobs(reg, "team/app", &token, "untagged").await;
    let untagged_digest = common::sha256(&untagged);
    let resp = put_manifest(reg, "team/app", &untagged_digest, &token, untagged).await;
    assert_eq!(resp.status(), 201);
    push_image(reg, "team/other", "v1", &token, "other").await;
    // v1 is immutable: retention cannot delete it either.
    let made = call(
        &u,
        ADMIN,
        "POST",
        "/projects/team/immutabletagrules",
        Some(&rule("v1", "matches", "**", "repoMatches")),
        &[],
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);

    let project = call(&u, ADMIN, "GET", "/projects/team", None, &[]).await;
    let project_id = project.body["project_id"].as_i64().unwrap();
    let selector = |decoration: &str, pattern: &str| {
        json!([{"kind": "doublestar", "decoration": decoration, "pattern": pattern,
                "extras": "{\"untagged\":false}"}])
    };
    let policy = json!({
        "algorithm": "or",
        "rules": [
            {"disabled": false, "action": "retain", "template": "latestPushedK",
             "params": {"latestPushedK": 2}, "tag_selectors": selector("matches", "v*"),
             "scope_selectors": {"repository": selector("repoMatches", "app")}},
            {"disabled": false, "action": "retain", "template": "always", "params": {},
             "tag_selectors": selector("matches", "dev-*"),
             "scope_selectors": {"repository": selector("repoMatches", "app")}},
        ],
        "trigger": {"kind": "Schedule", "settings": {"cron": ""}},
        "scope": {"level": "project", "ref": project_id},
    })
    .to_string();
    refused(
        &call(
            &u,
            Some(("dev", PW)),
            "POST",
            "/retentions",
            Some(&policy),
            &[],
        )
        .await,
        403,
        "FORBIDDEN",
        "a developer sets a retention policy",
    );
    for (bad, what) in [
        (
            policy.replace("latestPushedK", "latestPulledTen"),
            "an unknown template",
        ),
        (
            policy.replace("\"cron\":\"\"", "\"cron\":\"nightly\""),
            "a schedule that is not cron",
        ),
    ] {
        assert_ne!(bad, policy);
        refused(
            &call(
                &u,
                Some(("lead", PW)),
                "POST",
                "/retentions",
                Some(&bad),
                &[],
            )
            .await,
            400,
            "BAD_REQUEST",
            what,
        );
    }
    let made = call(
        &u,
        Some(("lead", PW)),
        "POST",
        "/retentions",
        Some(&policy),
        &[],
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let id = made
        .header("location")
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    refused(
        &call(
            &u,
            Some(("lead", PW)),
            "POST",
            "/retentions",
            Some(&policy),
            &[],
        )
        .await,
        409,
        "CONFLICT",
        "a second policy for the project",
    );

    let tags_of = |repo: &'static str| {
        let u = u.clone();
        async move {
            let a = call(
                &u,
                ADMIN,
                "GET",
                &format!("/projects/team/repositories/{repo}/artifacts?page_size=100"),
                None,
                &[],
            )
            .await;
            let mut tags: Vec<String> = a
                .body
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|a| a["tags"].as_array().cloned().unwrap_or_default())
                .map(|t| t["name"].as_str().unwrap().to_string())
                .collect();
            tags.sort();
            (tags, a.body.as_array().unwrap().len())
        }
    };
    let before = tags_of("app").await;
    let run = |dry: bool| {
        let (u, id) = (u.clone(), id.clone());
        async move {
            let body = json!({"dry_run": dry}).to_string();
            let a = call(
                &u,
                Some(("lead", PW)),
                "POST",
                &format!("/retentions/{id}/executions"),
                Some(&body),
                &[],
            )
            .await;
            assert_eq!(a.status, 201, "{}", a.body);
            let eid = a.header("location").rsplit('/').next().unwrap().to_string();
            call(
                &u,
                Some(("dev", PW)),
                "GET",
                &format!("/retentions/{id}/executions/{eid}/tasks"),
                None,
                &[],
            )
            .await
        }
    };
    let deleted_of = |tasks: &Answer| -> Vec<String> {
        let app = tasks
            .body
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["repository"] == "team/app")
            .unwrap();
        let mut d: Vec<String> = app["deleted"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["digest"].as_str().unwrap().to_string())
            .collect();
        d.sort();
        d
    };
    // Dry: v2 and v3 (older than the 2 latest v*), and the untagged one; v1 would go but is
    // immutable, which only a real run finds out. Nothing changes.
    let dry = run(true).await;
    assert_eq!(dry.status, 200, "{}", dry.body);
    let mut want: Vec<String> = [
        pushed["v1"].clone(),
        pushed["v2"].clone(),
        pushed["v3"].clone(),
        untagged_digest.clone(),
    ]
    .into();
    want.sort();
    assert_eq!(deleted_of(&dry), want, "{}", dry.body);
    assert!(
        !dry.body
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["repository"] == "team/other"),
        "a repository no rule covers is left alone: {}",
        dry.body
    );
    assert_eq!(tags_of("app").await, before, "a dry run deletes nothing");

    let real = run(false).await;
    let mut want: Vec<String> =
        [pushed["v2"].clone(), pushed["v3"].clone(), untagged_digest].into();
    want.sort();
    assert_eq!(deleted_of(&real), want, "{}", real.body);
    let app = real
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["repository"] == "team/app")
        .unwrap()
        .clone();
    assert_eq!(app["refused"][0]["digest"], pushed["v1"].as_str(), "{app}");
    let (tags, artifacts) = tags_of("app").await;
    assert_eq!(tags, ["dev-1", "v1", "v4", "v5"]);
    assert_eq!(artifacts, 4);
    assert_eq!(tags_of("other").await.0, ["v1"]);
    let history = call(
        &u,
        Some(("dev", PW)),
        "GET",
        &format!("/retentions/{id}/executions"),
        None,
        &[],
    )
    .await;
    assert_eq!(
        history.body.as_array().unwrap().len(),
        2,
        "{}",
        history.body
    );
    assert_eq!(history.body[1]["dry_run"], true);
    // Each deletion is an event like any other, in the audit log.
    let log = b.berth(
        &[
            "audit",
            "--json",
            "--operation",
            "delete",
            "--resource",
            "team/app",
        ],
        None,
    );
    assert_eq!(log.lines().count(), 3, "{log}");
    assert!(log.contains("\"username\":\"lead\""), "{log}");
}

/// The artifacts of `repo` (below project `team`) by tag: (tag, push time, pull time) and the
/// artifact's own pull time.
async fn pull_times(u: &str, repo: &str) -> Vec<(String, String, String)> {
    let a = call(
        u,
        ADMIN,
        "GET",
        &format!("/projects/team/repositories/{repo}/artifacts?page_size=100"),
        None,
        &[],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let mut out = Vec::new();
    for art in a.body.as_array().unwrap() {
        for t in art["tags"].as_array().cloned().unwrap_or_default() {
            out.push((
                t["name"].as_str().unwrap().to_string(),
                t["pull_time"].as_str().unwrap().to_string(),
                art["pull_time"].as_str().unwrap().to_string(),
            ));
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn pulls_are_timed_and_a_scheduled_policy_keeps_what_was_pulled_last() {
    const NEVER: &str = "0001-01-01T00:00:00Z";
    let b = setup();
    let u = b.reg.url("");
    let token = b.token_ok(ADMIN, &["repository:team/app:pull,push"]).await;
    let mut pushed = std::collections::BTreeMap::new();
    for tag in ["v1", "v2", "v3"] {
        pushed.insert(tag, push_image(&b.reg, "team/app", tag, &token, tag).await);
    }
    assert!(
        pull_times(&u, "app")
            .await
            .iter()
            .all(|(_, t, a)| t == NEVER && a == NEVER),
        "nothing pulled yet"
    );
    // v3 is pulled by tag, then v1 by digest a second later; v2 never.
    let pull = |reference: String| {
        let (reg, token) = (
            b.reg.url(&format!("/v2/team/app/manifests/{reference}")),
            token.clone(),
        );
        async move {
            let resp = bearer(client().get(reg), &token)
                .header("accept", "application/vnd.oci.image.manifest.v1+json")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
        }
    };
    pull("v3".into()).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    pull(pushed["v1"].clone()).await;
    // Written behind the pulls: seen within a few seconds.
    let mut times = Vec::new();
    for _ in 0..50 {
        times = pull_times(&u, "app").await;
        if times.iter().filter(|(_, _, a)| a != NEVER).count() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let [(t1, p1, a1), (t2, p2, a2), (t3, p3, a3)] = &times[..] else {
        panic!("{times:?}");
    };
    assert_eq!((t1.as_str(), t2.as_str(), t3.as_str()), ("v1", "v2", "v3"));
    assert_eq!(p1, NEVER, "v1 was pulled by digest, not by its tag");
    assert_ne!(a1, NEVER);
    assert_eq!((p2.as_str(), a2.as_str()), (NEVER, NEVER));
    assert_ne!(p3, NEVER);
    assert_eq!(p3, a3);
    assert!(a1 > a3, "v1 was pulled after v3: {times:?}");
    let repo = call(
        &u,
        ADMIN,
        "GET",
        "/projects/team/repositories/app",
        None,
        &[],
    )
    .await;
    assert_eq!(repo.body["pull_count"], 2, "{}", repo.body);

    // Keep the most recently pulled artifact, every second.
    let project = call(&u, ADMIN, "GET", "/projects/team", None, &[]).await;
    let selector = |decoration: &str| json!([{"kind": "doublestar", "decoration": decoration, "pattern": "**"}]);
    let policy = json!({
        "algorithm": "or",
        "rules": [{"disabled": false, "action": "retain", "template": "latestPulledN",
                   "params": {"latestPulledN": 1}, "tag_selectors": selector("matches"),
                   "scope_selectors": {"repository": selector("repoMatches")}}],
        "trigger": {"kind": "Schedule", "settings": {"cron": "* * * * * *"}},
        "scope": {"level": "project", "ref": project.body["project_id"]},
    })
    .to_string();
    let made = call(
        &u,
        Some(("lead", PW)),
        "POST",
        "/retentions",
        Some(&policy),
        &[],
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let id = made
        .header("location")
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let mut left = Vec::new();
    for _ in 0..100 {
        left = pull_times(&u, "app").await;
        if left.len() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(
        left.iter().map(|(t, _, _)| t.as_str()).collect::<Vec<_>>(),
        ["v1"],
        "only the last pulled stays"
    );
    let runs = call(
        &u,
        Some(("dev", PW)),
        "GET",
        &format!("/retentions/{id}/executions"),
        None,
        &[],
    )
    .await;
    let runs = runs.body.as_array().unwrap();
    assert!(!runs.is_empty());
    assert!(runs
        .iter()
        .all(|r| r["trigger"] == "SCHEDULE" && r["dry_run"] == false));
}
