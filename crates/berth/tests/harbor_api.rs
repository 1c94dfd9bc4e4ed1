//! The management API at `/api/v2.0` against the real server: driven end to end by harborapi
//! (a Harbor client from PyPI) around a skopeo push made with a robot it created; every
//! permission rule held against a hostile caller; Harbor's error shapes and pagination headers;
//! and the OpenAPI document Berth serves matching the routes that answer.

mod common;
#[path = "common/harbor.rs"]
mod harbor;

use common::builtin::{BuiltinRegistry, ADMIN_PASSWORD};
use common::cli::Env;
use common::image::{oci_image, oci_multi_arch, write_image_layout, write_multi_arch_layout};
use harbor::{call, run_script, Answer, Who};
use serde_json::{json, Value};

const PW: &str = "Passw0rdX";
const ADMIN: Who<'static> = Some(("admin", ADMIN_PASSWORD));

fn base(b: &BuiltinRegistry) -> String {
    b.reg.url("")
}

/// Pushes a one-layer image to `repo:tag` with skopeo as `creds` (`user:password`); its digest.
fn push(b: &BuiltinRegistry, env: &Env, seed: u64, repo: &str, tag: &str, creds: &str) -> String {
    let layout = env.path(&format!("layout-{seed}"));
    write_image_layout(&layout, tag, &oci_image(seed, 1));
    env.skopeo_push(
        &["--dest-creds", creds],
        &format!("oci:{}:{tag}", layout.display()),
        &format!("docker://{}/{repo}:{tag}", b.reg.host()),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn harborapi_manages_users_projects_robots_and_artifacts() {
    let b = BuiltinRegistry::start();
    let url = base(&b);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let state_arg = state.to_str().unwrap().to_string();
    let out = tokio::task::spawn_blocking({
        let (url, state_arg) = (url.clone(), state_arg.clone());
        move || run_script("drive.py", &["setup", &url, ADMIN_PASSWORD, &state_arg])
    })
    .await
    .unwrap();
    assert!(out.contains("setup: ok"), "{out}");

    let mut s: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    let creds = format!(
        "{}:{}",
        s["robot"].as_str().unwrap(),
        s["secret"].as_str().unwrap()
    );
    let env = Env::new();
    let digest = push(&b, &env, 1, "team/app", "v1", &creds);
    push(&b, &env, 2, "team/tools/lint", "v1", &creds);
    s["digest"] = json!(digest);
    std::fs::write(&state, serde_json::to_vec(&s).unwrap()).unwrap();

    let out = tokio::task::spawn_blocking(move || {
        run_script("drive.py", &["content", &url, ADMIN_PASSWORD, &state_arg])
    })
    .await
    .unwrap();
    assert!(out.contains("content: ok"), "{out}");
}

/// Users `dev` (developer of team), `lead` (project admin of team), `limited` (limited guest),
/// `stranger` (no role); projects `team` (private) and `other` (private); a robot of team.
struct Hostile {
    b: BuiltinRegistry,
    url: String,
    robot: (String, String),
    dev_id: i64,
    other_id: i64,
}

async fn hostile_setup() -> Hostile {
    let b = BuiltinRegistry::start();
    let url = base(&b);
    let mut ids = std::collections::BTreeMap::new();
    for name in ["dev", "lead", "limited", "stranger"] {
        let body =
            json!({"username": name, "password": PW, "email": format!("{name}@example.com")});
        let a = call(&url, ADMIN, "POST", "/users", Some(&body.to_string()), &[]).await;
        assert_eq!(a.status, 201, "{}", a.body);
        let id: i64 = a
            .header("location")
            .rsplit('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        ids.insert(name, id);
    }
    let mut other_id = 0;
    for p in ["team", "other"] {
        let body = json!({"project_name": p, "metadata": {"public": "false"}});
        let a = call(
            &url,
            ADMIN,
            "POST",
            "/projects",
            Some(&body.to_string()),
            &[],
        )
        .await;
        assert_eq!(a.status, 201, "{}", a.body);
        other_id = a
            .header("location")
            .rsplit('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
    }
    for (user, role) in [("dev", 2), ("lead", 1), ("limited", 5)] {
        let body = json!({"role_id": role, "member_user": {"username": user}});
        let a = call(
            &url,
            ADMIN,
            "POST",
            "/projects/team/members",
            Some(&body.to_string()),
            &[],
        )
        .await;
        assert_eq!(a.status, 201, "{}", a.body);
    }
    let robot = json!({"name": "ci", "level": "project", "duration": -1, "permissions": [
        {"kind": "project", "namespace": "team", "access": [
            {"resource": "repository", "action": "pull"}, {"resource": "repository", "action": "push"}]}]});
    let a = call(
        &url,
        ADMIN,
        "POST",
        "/robots",
        Some(&robot.to_string()),
        &[],
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let robot = (
        a.body["name"].as_str().unwrap().to_string(),
        a.body["secret"].as_str().unwrap().to_string(),
    );
    Hostile {
        b,
        url,
        robot,
        dev_id: ids["dev"],
        other_id,
    }
}

fn refused(a: &Answer, status: u16, code: &str, what: &str) {
    assert_eq!(a.status, status, "{what}: {}", a.body);
    assert_eq!(a.code(), code, "{what}: {}", a.body);
    assert!(!a.message().is_empty(), "{what}: an error says why");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_permission_holds_against_a_hostile_caller() {
    let h = hostile_setup().await;
    let u = h.url.as_str();
    let dev = Some(("dev", PW));
    let lead = Some(("lead", PW));
    let limited = Some(("limited", PW));
    let stranger = Some(("stranger", PW));
    let robot = Some((h.robot.0.as_str(), h.robot.1.as_str()));
    let member = json!({"role_id": 2, "member_user": {"username": "stranger"}}).to_string();

    // Users: only system administrators list, create, delete or promote.
    refused(
        &call(u, None, "GET", "/users", None, &[]).await,
        401,
        "UNAUTHORIZED",
        "anonymous users list",
    );
    refused(
        &call(u, stranger, "GET", "/users", None, &[]).await,
        403,
        "FORBIDDEN",
        "a user lists users",
    );
    let new = json!({"username": "mallory", "password": PW}).to_string();
    refused(
        &call(u, dev, "POST", "/users", Some(&new), &[]).await,
        403,
        "FORBIDDEN",
        "a user creates a user",
    );
    let path = format!("/users/{}", h.dev_id);
    refused(
        &call(u, stranger, "GET", &path, None, &[]).await,
        403,
        "FORBIDDEN",
        "another user's profile",
    );
    assert_eq!(
        call(u, dev, "GET", &path, None, &[]).await.status,
        200,
        "one's own profile"
    );
    refused(
        &call(u, stranger, "DELETE", &path, None, &[]).await,
        403,
        "FORBIDDEN",
        "a user deletes a user",
    );
    let promote = json!({"sysadmin_flag": true}).to_string();
    refused(
        &call(
            u,
            dev,
            "PUT",
            &format!("{path}/sysadmin"),
            Some(&promote),
            &[],
        )
        .await,
        403,
        "FORBIDDEN",
        "a user makes themself admin",
    );
    let pw = json!({"old_password": "Wr0ngWrong", "new_password": "Other0neX"}).to_string();
    refused(
        &call(u, dev, "PUT", &format!("{path}/password"), Some(&pw), &[]).await,
        403,
        "FORBIDDEN",
        "a wrong old password",
    );
    refused(
        &call(
            u,
            Some(("dev", "Wr0ngWrong")),
            "GET",
            "/users/current",
            None,
            &[],
        )
        .await,
        401,
        "UNAUTHORIZED",
        "a wrong password",
    );
    refused(
        &call(u, robot, "GET", "/users/current", None, &[]).await,
        403,
        "FORBIDDEN",
        "a robot has no profile",
    );

    // Projects: a private project is neither listed nor shown to those without a role in it.
    refused(
        &call(u, stranger, "GET", "/projects/team", None, &[]).await,
        403,
        "FORBIDDEN",
        "a stranger reads a private project",
    );
    refused(
        &call(u, None, "GET", "/projects/team", None, &[]).await,
        401,
        "UNAUTHORIZED",
        "anonymous reads a private project",
    );
    refused(
        &call(u, stranger, "GET", "/projects/absent", None, &[]).await,
        404,
        "NOT_FOUND",
        "a project that does not exist",
    );
    let listed = call(u, stranger, "GET", "/projects", None, &[]).await;
    assert_eq!(
        (listed.status, listed.body.clone()),
        (200, json!([])),
        "a stranger sees no private project"
    );
    let listed = call(u, None, "GET", "/projects", None, &[]).await;
    assert_eq!(
        (listed.status, listed.body.clone()),
        (200, json!([])),
        "anonymous sees no private project"
    );
    let listed = call(u, dev, "GET", "/projects", None, &[]).await;
    let names: Vec<&str> = listed
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["team"], "a member sees its project only");
    assert_eq!(listed.body[0]["current_user_role_id"], 2);
    let public = json!({"metadata": {"public": "true"}}).to_string();
    refused(
        &call(u, dev, "PUT", "/projects/team", Some(&public), &[]).await,
        403,
        "FORBIDDEN",
        "a developer publishes the project",
    );
    refused(
        &call(u, dev, "DELETE", "/projects/team", None, &[]).await,
        403,
        "FORBIDDEN",
        "a developer deletes the project",
    );
    refused(
        &call(u, stranger, "DELETE", "/projects/team", None, &[]).await,
        403,
        "FORBIDDEN",
        "a stranger deletes the project",
    );

    // Members: developers read but do not change them; limited guests do not even read them.
    assert_eq!(
        call(u, dev, "GET", "/projects/team/members", None, &[])
            .await
            .status,
        200
    );
    refused(
        &call(u, dev, "POST", "/projects/team/members", Some(&member), &[]).await,
        403,
        "FORBIDDEN",
        "a developer adds a member",
    );
    refused(
        &call(u, limited, "GET", "/projects/team/members", None, &[]).await,
        403,
        "FORBIDDEN",
        "a limited guest lists members",
    );
    refused(
        &call(u, stranger, "GET", "/projects/team/members", None, &[]).await,
        403,
        "FORBIDDEN",
        "a stranger lists members",
    );
    refused(
        &call(
            u,
            lead,
            "POST",
            "/projects/other/members",
            Some(&member),
            &[],
        )
        .await,
        403,
        "FORBIDDEN",
        "an admin of one project adds members to another",
    );
    let added = call(
        u,
        lead,
        "POST",
        "/projects/team/members",
        Some(&member),
        &[],
    )
    .await;
    assert_eq!(
        added.status, 201,
        "a project admin adds a member: {}",
        added.body
    );
    let mid = added
        .header("location")
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let role = json!({"role_id": 1}).to_string();
    refused(
        &call(
            u,
            stranger,
            "PUT",
            &format!("/projects/team/members/{mid}"),
            Some(&role),
            &[],
        )
        .await,
        403,
        "FORBIDDEN",
        "a stranger changes a role",
    );
    refused(
        &call(
            u,
            dev,
            "DELETE",
            &format!("/projects/team/members/{mid}"),
            None,
            &[],
        )
        .await,
        403,
        "FORBIDDEN",
        "a developer removes a member",
    );
    assert_eq!(
        call(
            u,
            lead,
            "DELETE",
            &format!("/projects/team/members/{mid}"),
            None,
            &[]
        )
        .await
        .status,
        200
    );

    // Robots: a project robot stays in its project; developers do not make robots.
    let robot_of = |ns: &str| {
        json!({"name": "evil", "level": "project", "duration": -1, "permissions": [
        {"kind": "project", "namespace": ns, "access": [{"resource": "repository", "action": "push"}]}]}).to_string()
    };
    refused(
        &call(u, dev, "POST", "/robots", Some(&robot_of("team")), &[]).await,
        403,
        "FORBIDDEN",
        "a developer creates a robot",
    );
    refused(
        &call(u, lead, "POST", "/robots", Some(&robot_of("other")), &[]).await,
        403,
        "FORBIDDEN",
        "a robot for another project",
    );
    refused(
        &call(u, robot, "POST", "/robots", Some(&robot_of("team")), &[]).await,
        403,
        "FORBIDDEN",
        "a robot creates a robot",
    );
    let system = json!({"name": "all", "level": "system", "duration": -1, "permissions": [
        {"kind": "project", "namespace": "*", "access": [{"resource": "repository", "action": "pull"}]}]}).to_string();
    refused(
        &call(u, lead, "POST", "/robots", Some(&system), &[]).await,
        403,
        "FORBIDDEN",
        "a project admin creates a system robot",
    );
    refused(
        &call(u, dev, "GET", "/robots", None, &[]).await,
        403,
        "FORBIDDEN",
        "a user lists every robot",
    );
    let q = format!("/robots?q=Level%3Dproject%2CProjectID%3D{}", h.other_id);
    refused(
        &call(u, robot, "GET", &q, None, &[]).await,
        403,
        "FORBIDDEN",
        "a robot lists another project's robots",
    );
    refused(
        &call(u, robot, "GET", "/projects/other/repositories", None, &[]).await,
        403,
        "FORBIDDEN",
        "a robot reads another project",
    );
    refused(
        &call(u, robot, "GET", "/projects/other", None, &[]).await,
        403,
        "FORBIDDEN",
        "a robot reads another project",
    );
    assert_eq!(
        call(u, robot, "GET", "/projects/team/repositories", None, &[])
            .await
            .status,
        200,
        "a robot reads its project"
    );
    refused(
        &call(
            u,
            robot,
            "DELETE",
            "/projects/team/repositories/app",
            None,
            &[],
        )
        .await,
        403,
        "FORBIDDEN",
        "a push robot deletes",
    );
    refused(
        &call(u, robot, "GET", "/audit-logs", None, &[]).await,
        403,
        "FORBIDDEN",
        "a robot reads the audit log",
    );
    refused(
        &call(u, lead, "GET", "/audit-logs", None, &[]).await,
        403,
        "FORBIDDEN",
        "a project admin reads the whole audit log",
    );
    refused(
        &call(u, stranger, "GET", "/projects/team/logs", None, &[]).await,
        403,
        "FORBIDDEN",
        "a stranger reads a project's log",
    );
    assert_eq!(
        call(u, lead, "GET", "/projects/team/logs", None, &[])
            .await
            .status,
        200
    );

    // Repository contents: guests read, only delete rights delete.
    let env = Env::new();
    let creds = format!("{}:{}", h.robot.0, h.robot.1);
    let digest = push(&h.b, &env, 3, "team/app", "v1", &creds);
    refused(
        &call(
            u,
            stranger,
            "GET",
            "/projects/team/repositories/app/artifacts",
            None,
            &[],
        )
        .await,
        403,
        "FORBIDDEN",
        "a stranger lists artifacts",
    );
    refused(
        &call(
            u,
            None,
            "GET",
            "/projects/team/repositories/app/artifacts",
            None,
            &[],
        )
        .await,
        401,
        "UNAUTHORIZED",
        "anonymous lists artifacts",
    );
    let listed = call(
        u,
        dev,
        "GET",
        "/projects/team/repositories/app/artifacts",
        None,
        &[],
    )
    .await;
    assert_eq!(listed.body[0]["digest"], digest.as_str(), "{}", listed.body);
    let path = format!("/projects/team/repositories/app/artifacts/{digest}");
    refused(
        &call(u, dev, "DELETE", &path, None, &[]).await,
        403,
        "FORBIDDEN",
        "a developer deletes an artifact",
    );
    refused(
        &call(u, dev, "DELETE", &format!("{path}/tags/v1"), None, &[]).await,
        403,
        "FORBIDDEN",
        "a developer deletes a tag",
    );
    let tag = json!({"name": "dev-tag"}).to_string();
    assert_eq!(
        call(u, dev, "POST", &format!("{path}/tags"), Some(&tag), &[])
            .await
            .status,
        201,
        "a developer tags"
    );
    refused(
        &call(u, limited, "POST", &format!("{path}/tags"), Some(&tag), &[]).await,
        403,
        "FORBIDDEN",
        "a limited guest tags",
    );
    refused(
        &call(u, lead, "DELETE", "/projects/team", None, &[]).await,
        412,
        "PRECONDITION",
        "a project with repositories",
    );
    assert_eq!(
        call(u, lead, "DELETE", &path, None, &[]).await.status,
        200,
        "a project admin deletes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_and_pages_are_harbors() {
    let b = BuiltinRegistry::start();
    let u = base(&b);
    let u = u.as_str();

    let a = call(
        u,
        ADMIN,
        "POST",
        "/users",
        Some("{\"username\": \"x\", "),
        &[],
    )
    .await;
    refused(&a, 400, "BAD_REQUEST", "truncated JSON");
    assert!(a.message().contains("invalid JSON body"), "{}", a.message());
    let a = call(
        u,
        ADMIN,
        "POST",
        "/users",
        Some("{\"username\": 5, \"password\": \"x\"}"),
        &[],
    )
    .await;
    refused(&a, 400, "BAD_REQUEST", "a number for a name");
    assert!(a.message().contains("invalid type"), "{}", a.message());
    let weak = json!({"username": "weak", "password": "short"}).to_string();
    let a = call(u, ADMIN, "POST", "/users", Some(&weak), &[]).await;
    refused(&a, 400, "BAD_REQUEST", "a weak password");
    assert!(a.message().contains("8 to 128"), "{}", a.message());
    refused(
        &call(u, ADMIN, "GET", "/nothing-here", None, &[]).await,
        404,
        "NOT_FOUND",
        "an unknown path",
    );
    refused(
        &call(u, ADMIN, "PATCH", "/users", None, &[]).await,
        405,
        "METHOD_NOT_ALLOWED",
        "an unknown method",
    );
    refused(
        &call(u, ADMIN, "GET", "/users/999", None, &[]).await,
        404,
        "NOT_FOUND",
        "an unknown user",
    );
    refused(
        &call(u, ADMIN, "GET", "/users?page_size=101", None, &[]).await,
        400,
        "BAD_REQUEST",
        "a page too large",
    );
    refused(
        &call(u, ADMIN, "GET", "/users?page=0", None, &[]).await,
        400,
        "BAD_REQUEST",
        "page 0",
    );
    refused(
        &call(u, ADMIN, "GET", "/users?q=email%3Dx", None, &[]).await,
        400,
        "BAD_REQUEST",
        "an unknown filter",
    );
    let bad = json!({"project_name": "Bad Name"}).to_string();
    refused(
        &call(u, ADMIN, "POST", "/projects", Some(&bad), &[]).await,
        400,
        "BAD_REQUEST",
        "an invalid project name",
    );

    // Anonymous callers may read what Harbor lets them.
    let a = call(u, None, "GET", "/systeminfo", None, &[]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body["auth_mode"], "db_auth");

    // Credentials sent with each API request are checked, not logged in: no audit entry each.
    let logins = || {
        b.berth(
            &["audit", "--json", "--user", "admin", "--operation", "login"],
            None,
        )
        .lines()
        .count()
    };
    let before = logins();
    for _ in 0..3 {
        assert_eq!(
            call(u, ADMIN, "GET", "/users/current", None, &[])
                .await
                .status,
            200
        );
    }
    assert_eq!(logins(), before, "API requests wrote login entries");
    let (status, _) = b.token(Some(("admin", ADMIN_PASSWORD)), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(
        logins(),
        before + 1,
        "a token service login is an audit entry"
    );
    assert_eq!(a.body["with_notary"], false);
    assert_eq!(
        call(u, None, "GET", "/health", None, &[]).await.body["status"],
        "healthy"
    );
    let pong = reqwest::get(format!("{u}/api/v2.0/ping")).await.unwrap();
    assert_eq!(pong.text().await.unwrap(), "Pong");

    for i in 0..5 {
        let body = json!({"username": format!("p{i}"), "password": PW}).to_string();
        assert_eq!(
            call(u, ADMIN, "POST", "/users", Some(&body), &[])
                .await
                .status,
            201
        );
    }
    let a = call(u, ADMIN, "GET", "/users?page=2&page_size=2", None, &[]).await;
    assert_eq!(a.header("x-total-count"), "6");
    assert_eq!(
        a.header("link"),
        "</api/v2.0/users?page=1&page_size=2>; rel=\"prev\" , </api/v2.0/users?page=3&page_size=2>; rel=\"next\""
    );
    let names: Vec<&str> = a
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["p1", "p2"]);
    let a = call(
        u,
        ADMIN,
        "GET",
        "/users?page=3&page_size=2&q=username%3D~p",
        None,
        &[],
    )
    .await;
    assert_eq!(a.header("x-total-count"), "5");
    assert_eq!(
        a.header("link"),
        "</api/v2.0/users?q=username%3D%7Ep&page=2&page_size=2>; rel=\"prev\""
    );

    // Members: an LDAP group by its DN, a role change, and the rules on their input.
    let team = json!({"project_name": "team"}).to_string();
    assert_eq!(
        call(u, ADMIN, "POST", "/projects", Some(&team), &[])
            .await
            .status,
        201
    );
    let group = json!({"role_id": 3, "member_group": {"group_name": "devs", "group_type": 1,
        "ldap_group_dn": "CN=Devs, OU=Groups, DC=example, DC=org"}})
    .to_string();
    let added = call(
        u,
        ADMIN,
        "POST",
        "/projects/team/members",
        Some(&group),
        &[],
    )
    .await;
    assert_eq!(added.status, 201, "{}", added.body);
    let location = added.header("location").to_string();
    let mid = location.rsplit('/').next().unwrap();
    assert_eq!(location, format!("/api/v2.0/projects/team/members/{mid}"));
    let role = json!({"role_id": 4}).to_string();
    let path = format!("/projects/team/members/{mid}");
    assert_eq!(
        call(u, ADMIN, "PUT", &path, Some(&role), &[]).await.status,
        200
    );
    let m = call(u, ADMIN, "GET", &path, None, &[]).await;
    assert_eq!(
        (
            m.body["entity_type"].clone(),
            m.body["entity_name"].clone(),
            m.body["role_name"].clone()
        ),
        (json!("g"), json!("devs"), json!("maintainer")),
        "{}",
        m.body
    );
    refused(
        &call(
            u,
            ADMIN,
            "POST",
            "/projects/team/members",
            Some(&group),
            &[],
        )
        .await,
        409,
        "CONFLICT",
        "the same group twice",
    );
    let bad_role = json!({"role_id": 9, "member_user": {"username": "p0"}}).to_string();
    refused(
        &call(
            u,
            ADMIN,
            "POST",
            "/projects/team/members",
            Some(&bad_role),
            &[],
        )
        .await,
        400,
        "BAD_REQUEST",
        "an unknown role",
    );
    let nobody = json!({"role_id": 2, "member_user": {"username": "nobody"}}).to_string();
    refused(
        &call(
            u,
            ADMIN,
            "POST",
            "/projects/team/members",
            Some(&nobody),
            &[],
        )
        .await,
        404,
        "NOT_FOUND",
        "a user that does not exist",
    );
    let neither = json!({"role_id": 2}).to_string();
    refused(
        &call(
            u,
            ADMIN,
            "POST",
            "/projects/team/members",
            Some(&neither),
            &[],
        )
        .await,
        400,
        "BAD_REQUEST",
        "a member of nobody",
    );

    // Locations, by id or by name, and projects named by digits.
    let p = json!({"project_name": "2024", "public": true}).to_string();
    let a = call(
        u,
        ADMIN,
        "POST",
        "/projects",
        Some(&p),
        &[("X-Resource-Name-In-Location", "true")],
    )
    .await;
    assert_eq!(
        (a.status, a.header("location")),
        (201, "/api/v2.0/projects/2024")
    );
    let by_name = call(
        u,
        ADMIN,
        "GET",
        "/projects/2024",
        None,
        &[("X-Is-Resource-Name", "true")],
    )
    .await;
    assert_eq!(by_name.body["name"], "2024", "{}", by_name.body);
    assert_eq!(by_name.body["metadata"]["public"], "true");
    let id = by_name.body["project_id"].as_i64().unwrap();
    let by_id = call(u, None, "GET", &format!("/projects/{id}"), None, &[]).await;
    assert_eq!(
        by_id.body["name"], "2024",
        "anonymous reads a public project by id"
    );
    for p in ["20240", "x2024"] {
        let body = json!({"project_name": p}).to_string();
        assert_eq!(
            call(u, ADMIN, "POST", "/projects", Some(&body), &[])
                .await
                .status,
            201
        );
    }
    let exact = call(u, ADMIN, "GET", "/projects?q=name%3D2024", None, &[]).await;
    assert_eq!(
        (exact.header("x-total-count"), exact.body[0]["name"].clone()),
        ("1", json!("2024"))
    );
    let fuzzy = call(u, ADMIN, "GET", "/projects?q=name%3D~2024", None, &[]).await;
    assert_eq!(fuzzy.header("x-total-count"), "3", "{}", fuzzy.body);
    let public = call(u, None, "GET", "/projects?q=public%3Dtrue", None, &[]).await;
    assert_eq!(public.header("x-total-count"), "1", "{}", public.body);
    let head = call(u, ADMIN, "HEAD", "/projects?project_name=2024", None, &[]).await;
    assert_eq!(head.status, 200);
    let head = call(u, ADMIN, "HEAD", "/projects?project_name=absent", None, &[]).await;
    assert_eq!(head.status, 404);
}

/// A value for a path parameter of the OpenAPI document (none of them names something that
/// exists, so no documented call changes anything).
fn sample(name: &str) -> &'static str {
    match name {
        "user_id" | "mid" | "robot_id" => "999999",
        "reference" => "v0",
        _ => "absent",
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_is_the_routes() {
    let b = BuiltinRegistry::start();
    let u = base(&b);
    let u = u.as_str();
    let doc = call(u, None, "GET", "/swagger.json", None, &[]).await;
    assert_eq!(doc.status, 200);
    assert_eq!(
        doc.body,
        call(u, None, "GET", "/openapi.json", None, &[]).await.body
    );
    let paths = doc.body["paths"].as_object().expect("paths");
    assert!(paths.len() >= 25, "{} paths", paths.len());
    let methods = ["get", "post", "put", "patch", "delete"];
    for (path, ops) in paths {
        let concrete: String = path
            .split('/')
            .map(
                |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(name) => sample(name).to_string(),
                    None => seg.to_string(),
                },
            )
            .collect::<Vec<_>>()
            .join("/");
        for m in methods {
            let body = (m != "get" && m != "delete").then_some("{}");
            let a = call(u, ADMIN, &m.to_uppercase(), &concrete, body, &[]).await;
            if ops.get(m).is_some() {
                assert_ne!(a.status, 405, "{m} {path} is documented: {}", a.body);
                assert!(
                    !a.message().starts_with("no API endpoint"),
                    "{m} {path} is documented but not routed"
                );
                let documented: Vec<&String> =
                    ops[m]["responses"].as_object().unwrap().keys().collect();
                assert!(
                    documented
                        .iter()
                        .any(|s| s.as_str() == a.status.to_string()),
                    "{m} {path} answered {} ({}), documented {documented:?}",
                    a.status,
                    a.body
                );
            } else {
                refused(
                    &a,
                    405,
                    "METHOD_NOT_ALLOWED",
                    &format!("{m} {path} is not documented"),
                );
            }
        }
    }
    refused(
        &call(u, ADMIN, "GET", "/replication/policies", None, &[]).await,
        404,
        "NOT_FOUND",
        "an undocumented path",
    );
}

/// The repository and artifact listings read the registry's tables through the access store;
/// on PostgreSQL too: a project's repositories (not another's with a longer name), artifacts
/// with their tags and sizes, pages, the project's log, and deletes through the core.
#[tokio::test(flavor = "multi_thread")]
async fn repositories_and_artifacts_on_postgresql() {
    use common::postgres::Postgres;
    let pg = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    pg.create_database("harbor");
    let database = format!(
        "database:\n  enabled: true\n  host: {}\n  port: {}\n  user: {}\n  password: {}\n  \
         dbname: harbor\n  sslmode: disable\n",
        pg.host(),
        pg.port(),
        Postgres::USER,
        Postgres::PASSWORD
    );
    let b = BuiltinRegistry::start_with("audit:\n  pulls: true", &database);
    let url = base(&b);
    let u = url.as_str();
    for p in ["team", "teamster"] {
        let body = json!({"project_name": p}).to_string();
        assert_eq!(
            call(u, ADMIN, "POST", "/projects", Some(&body), &[])
                .await
                .status,
            201
        );
    }
    let env = Env::new();
    let creds = format!("admin:{ADMIN_PASSWORD}");
    let first = push(&b, &env, 11, "team/app", "v1", &creds);
    let second = push(&b, &env, 12, "team/app", "v2", &creds);
    push(&b, &env, 13, "team/tools/lint", "v1", &creds);
    push(&b, &env, 14, "teamster/app", "v1", &creds);

    let repos = call(u, ADMIN, "GET", "/projects/team/repositories", None, &[]).await;
    assert_eq!(repos.status, 200, "{}", repos.body);
    let names: Vec<&str> = repos
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["team/app", "team/tools/lint"]);
    assert_eq!(repos.body[0]["artifact_count"], 2);
    let project = call(u, ADMIN, "GET", "/projects/team", None, &[]).await;
    assert_eq!(project.body["repo_count"], 2, "{}", project.body);
    let nested = call(
        u,
        ADMIN,
        "GET",
        "/projects/team/repositories/tools%252Flint",
        None,
        &[],
    )
    .await;
    assert_eq!(nested.body["name"], "team/tools/lint", "{}", nested.body);

    let arts = call(
        u,
        ADMIN,
        "GET",
        "/projects/team/repositories/app/artifacts?page_size=1",
        None,
        &[],
    )
    .await;
    assert_eq!(arts.header("x-total-count"), "2");
    assert!(
        arts.header("link").contains("rel=\"next\""),
        "{}",
        arts.header("link")
    );
    let page2 = call(
        u,
        ADMIN,
        "GET",
        "/projects/team/repositories/app/artifacts?page=2&page_size=1",
        None,
        &[],
    )
    .await;
    let seen = [
        arts.body[0]["digest"].as_str().unwrap(),
        page2.body[0]["digest"].as_str().unwrap(),
    ];
    assert!(
        seen.contains(&first.as_str()) && seen.contains(&second.as_str()),
        "{seen:?}"
    );
    let one = call(
        u,
        ADMIN,
        "GET",
        "/projects/team/repositories/app/artifacts/v1",
        None,
        &[],
    )
    .await;
    assert_eq!(one.body["digest"], first.as_str(), "{}", one.body);
    assert_eq!(one.body["tags"][0]["name"], "v1");
    assert!(
        one.body["size"].as_i64().unwrap()
            > one.body["manifest_media_type"].as_str().unwrap().len() as i64
    );
    let no_tags = call(
        u,
        ADMIN,
        "GET",
        "/projects/team/repositories/app/artifacts/v1?with_tag=false",
        None,
        &[],
    )
    .await;
    assert_eq!(no_tags.body["tags"], Value::Null);

    let tag = json!({"name": "stable"}).to_string();
    let path = format!("/projects/team/repositories/app/artifacts/{first}/tags");
    let pulls = || b.berth(&["audit", "--json", "--operation", "pull"], None);
    let pulls_before = pulls();
    let added = call(u, ADMIN, "POST", &path, Some(&tag), &[]).await;
    assert_eq!(
        (added.status, added.header("location")),
        (201, format!("/api/v2.0{path}/stable").as_str())
    );
    // Tagging is a push of the tag, not a pull of the artifact.
    assert_eq!(pulls(), pulls_before, "tagging recorded a pull");
    let tagged = b.berth(
        &[
            "audit",
            "--json",
            "--operation",
            "create",
            "--resource",
            "team/app:stable",
        ],
        None,
    );
    assert_eq!(tagged.lines().count(), 1, "{tagged}");
    assert!(tagged.contains("\"username\":\"admin\""), "{tagged}");
    refused(
        &call(u, ADMIN, "POST", &path, Some(&tag), &[]).await,
        409,
        "CONFLICT",
        "a tag that exists",
    );
    let tags = call(u, ADMIN, "GET", &path, None, &[]).await;
    let names: Vec<&str> = tags
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["stable", "v1"]);
    refused(
        &call(
            u,
            ADMIN,
            "DELETE",
            &format!("/projects/team/repositories/app/artifacts/{second}/tags/stable"),
            None,
            &[],
        )
        .await,
        404,
        "NOT_FOUND",
        "a tag of another artifact",
    );
    assert_eq!(
        call(u, ADMIN, "DELETE", &format!("{path}/stable"), None, &[])
            .await
            .status,
        200
    );

    let logs = call(
        u,
        ADMIN,
        "GET",
        "/projects/team/logs?page_size=100",
        None,
        &[],
    )
    .await;
    let entries: Vec<(String, String, String)> = logs
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["operation"].to_string(),
                l["resource"].to_string(),
                l["username"].to_string(),
            )
        })
        .collect();
    let has = |op: &str, res: &str| {
        entries.iter().any(|(o, r, who)| {
            o.trim_matches('"') == op && r.trim_matches('"') == res && who == "\"admin\""
        })
    };
    assert!(has("create", "team"), "{entries:?}");
    assert!(
        has("create", "team/app:stable") && has("delete", "team/app:stable"),
        "{entries:?}"
    );
    assert!(
        !entries.iter().any(|(_, r, _)| r.contains("teamster")),
        "another project's entries: {entries:?}"
    );

    // A multi-platform image is one artifact referencing its children.
    let layout = env.path("multi");
    write_multi_arch_layout(&layout, "v1", &oci_multi_arch(15));
    let index = env.skopeo_push(
        &["--all", "--dest-creds", &creds],
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{}/team/multi:v1", b.reg.host()),
    );
    let multi = call(
        u,
        ADMIN,
        "GET",
        "/projects/team/repositories/multi/artifacts",
        None,
        &[],
    )
    .await;
    assert_eq!(multi.header("x-total-count"), "1", "{}", multi.body);
    assert_eq!(multi.body[0]["digest"], index.as_str());
    assert_eq!(
        multi.body[0]["references"].as_array().map(Vec::len),
        Some(2),
        "{}",
        multi.body
    );
    let repo = call(
        u,
        ADMIN,
        "GET",
        "/projects/team/repositories/multi",
        None,
        &[],
    )
    .await;
    assert_eq!(repo.body["artifact_count"], 1, "{}", repo.body);
    assert_eq!(
        call(
            u,
            ADMIN,
            "DELETE",
            "/projects/team/repositories/multi",
            None,
            &[]
        )
        .await
        .status,
        200
    );
    refused(
        &call(
            u,
            ADMIN,
            "GET",
            "/projects/team/repositories/multi",
            None,
            &[],
        )
        .await,
        404,
        "NOT_FOUND",
        "a deleted repository, children and all",
    );

    refused(
        &call(u, ADMIN, "DELETE", "/projects/team", None, &[]).await,
        412,
        "PRECONDITION",
        "a project with repositories",
    );
    assert_eq!(
        call(
            u,
            ADMIN,
            "DELETE",
            "/projects/team/repositories/app",
            None,
            &[]
        )
        .await
        .status,
        200
    );
    assert_eq!(
        call(
            u,
            ADMIN,
            "DELETE",
            "/projects/team/repositories/tools%252Flint",
            None,
            &[]
        )
        .await
        .status,
        200
    );
    let repos = call(u, ADMIN, "GET", "/projects/team/repositories", None, &[]).await;
    assert_eq!(
        (repos.body.clone(), repos.header("x-total-count")),
        (json!([]), "0")
    );
    assert_eq!(
        call(u, ADMIN, "DELETE", "/projects/team", None, &[])
            .await
            .status,
        200
    );
    let other = call(
        u,
        ADMIN,
        "GET",
        "/projects/teamster/repositories",
        None,
        &[],
    )
    .await;
    assert_eq!(
        other.body.as_array().unwrap().len(),
        1,
        "another project is untouched"
    );
}
