//! Real clients (skopeo, podman, the docker CLI) logging in to the built-in token service with
//! users and robots, then pushing and pulling; what each role may do holds through them; and
//! Distribution (Debian's `docker-registry`) using Berth as its token service through the
//! exported certificate.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::builtin::{BuiltinRegistry, ADMIN_PASSWORD};
use common::cli::{
    can_run, output, parse_push_digest, read_digestfile, report, run, run_fails, DockerImages, Env,
    Podman,
};
use common::distribution::Distribution;
use common::image;

const PW: &str = "Passw0rdX";

/// A registry with a private project `team` (users `dev` developer, `guest` guest, `keeper`
/// maintainer; robots `ci` with pull and push, `reader` with pull) and a public project `pub`.
struct Site {
    b: BuiltinRegistry,
    ci: (String, String),
    reader: (String, String),
}

fn site() -> Site {
    let b = BuiltinRegistry::start();
    b.add_project("team", false);
    b.add_project("pub", true);
    for (user, role) in [
        ("dev", "developer"),
        ("guest", "guest"),
        ("keeper", "maintainer"),
    ] {
        b.add_user(user, PW);
        b.add_member("team", user, role);
    }
    let ci = b.add_robot("team", "ci", "pull,push");
    let reader = b.add_robot("team", "reader", "pull");
    Site { b, ci, reader }
}

/// Runs `cmd` with `input` on its standard input.
fn with_stdin(cmd: &mut Command, input: &str) -> Output {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).expect("write stdin");
    drop(stdin);
    child.wait_with_output().expect("wait")
}

/// `<tool> login` to `host` as `user` with the password on standard input (`skopeo` and
/// `podman` take `--tls-verify=false`; docker treats loopback registries as insecure).
fn login(mut cmd: Command, host: &str, user: &str, password: &str) -> Result<(), String> {
    let tool = cmd.get_program().to_string_lossy().to_string();
    cmd.arg("login");
    if tool != "docker" {
        cmd.arg("--tls-verify=false");
    }
    cmd.args(["--username", user, "--password-stdin", host]);
    let out = with_stdin(&mut cmd, password);
    if out.status.success() {
        Ok(())
    } else {
        Err(report(&cmd, &out))
    }
}

fn logout(mut cmd: Command, host: &str) {
    cmd.args(["logout", host]);
    let _ = output(&mut cmd);
}

fn oci_ref(dir: &std::path::Path, tag: &str) -> String {
    format!("oci:{}:{tag}", dir.display())
}

/// skopeo pushes the layout `src:v1` to `docker://<dest>` with the logged-in credentials.
fn skopeo_push(env: &Env, src: &std::path::Path, dest: &str) -> Result<String, String> {
    let digestfile = env.path("push-digest");
    let mut c = env.skopeo();
    c.args(["copy", "--dest-tls-verify=false", "--digestfile"])
        .arg(&digestfile)
        .arg(oci_ref(src, "v1"))
        .arg(format!("docker://{dest}"));
    let out = output(&mut c);
    match out.status.success() {
        true => Ok(read_digestfile(&digestfile)),
        false => Err(report(&c, &out)),
    }
}

/// skopeo pulls `docker://<name>` into a new layout; the digest of the manifest it wrote.
fn skopeo_pull(env: &Env, name: &str, extra: &[&str]) -> Result<String, String> {
    let dir = env.path(&format!("pulled-{}", uuid::Uuid::new_v4().simple()));
    let digestfile = dir.with_extension("digest");
    let mut c = env.skopeo();
    c.args(["copy", "--src-tls-verify=false", "--digestfile"])
        .arg(&digestfile)
        .args(extra)
        .arg(format!("docker://{name}"))
        .arg(oci_ref(&dir, "v1"));
    let out = output(&mut c);
    match out.status.success() {
        true => Ok(read_digestfile(&digestfile)),
        false => Err(report(&c, &out)),
    }
}

/// The failure is a refusal by the registry (not, say, a connection error).
fn assert_refused(result: Result<String, String>, what: &str) {
    match result {
        Ok(d) => panic!("{what} succeeded ({d})"),
        Err(e) => {
            let lower = e.to_lowercase();
            assert!(
                [
                    "unauthorized",
                    "denied",
                    "authentication required",
                    "401",
                    "403"
                ]
                .iter()
                .any(|w| lower.contains(w)),
                "{what} failed for another reason:\n{e}"
            );
        }
    }
}

/// The login was refused for its credentials (the token service's 401).
fn assert_bad_password(result: Result<(), String>) {
    let err = result.expect_err("a login with a wrong password succeeded");
    let lower = err.to_lowercase();
    assert!(
        ["401", "unauthorized", "invalid username/password"]
            .iter()
            .any(|w| lower.contains(w)),
        "the login failed for another reason:\n{err}"
    );
}

#[test]
fn skopeo_logins_pushes_pulls_and_role_rules() {
    let s = site();
    let host = s.b.reg.host();
    let env = Env::new();
    let img = image::oci_image(1501, 2);
    let src = env.path("src");
    image::write_image_layout(&src, "v1", &img);
    let skopeo = || env.skopeo();

    // A wrong password is refused at login.
    assert_bad_password(login(skopeo(), &host, "dev", "not-the-password"));

    // A developer pushes and pulls back the same digest.
    login(skopeo(), &host, "dev", PW).unwrap();
    let pushed = skopeo_push(&env, &src, &format!("{host}/team/app:v1")).unwrap();
    assert_eq!(pushed, img.manifest.digest);
    let name = format!("{host}/team/app:v1");
    assert_eq!(skopeo_pull(&env, &name, &[]).unwrap(), pushed);

    // Anonymous: the private project is refused, the public one pulls.
    logout(skopeo(), &host);
    assert_refused(
        skopeo_pull(&env, &name, &[]),
        "anonymous pull of a private project",
    );
    login(skopeo(), &host, "admin", ADMIN_PASSWORD).unwrap();
    skopeo_push(&env, &src, &format!("{host}/pub/app:v1")).unwrap();
    logout(skopeo(), &host);
    let public = format!("{host}/pub/app:v1");
    assert_eq!(skopeo_pull(&env, &public, &[]).unwrap(), pushed);

    // A guest pulls and cannot push.
    login(skopeo(), &host, "guest", PW).unwrap();
    assert_eq!(skopeo_pull(&env, &name, &[]).unwrap(), pushed);
    assert_refused(
        skopeo_push(&env, &src, &format!("{host}/team/app:guest")),
        "a guest's push",
    );

    // The robot with push pushes and pulls; the one without push only pulls.
    login(skopeo(), &host, &s.ci.0, &s.ci.1).unwrap();
    skopeo_push(&env, &src, &format!("{host}/team/app:ci")).unwrap();
    assert_eq!(
        skopeo_pull(&env, &format!("{host}/team/app:ci"), &[]).unwrap(),
        pushed
    );
    login(skopeo(), &host, &s.reader.0, &s.reader.1).unwrap();
    assert_eq!(skopeo_pull(&env, &name, &[]).unwrap(), pushed);
    assert_refused(
        skopeo_push(&env, &src, &format!("{host}/team/app:reader")),
        "a pull-only robot's push",
    );

    // Deleting: a developer may not, a maintainer may.
    let delete = || {
        let mut c = env.skopeo();
        c.args(["delete", "--tls-verify=false", &format!("docker://{name}")]);
        c
    };
    login(skopeo(), &host, "dev", PW).unwrap();
    let err = run_fails(&mut delete());
    assert!(
        ["unauthorized", "denied", "401"]
            .iter()
            .any(|w| err.to_lowercase().contains(w)),
        "a developer's delete failed for another reason:\n{err}"
    );
    assert_eq!(skopeo_pull(&env, &name, &[]).unwrap(), pushed);
    login(skopeo(), &host, "keeper", PW).unwrap();
    run(&mut delete());
    let err = skopeo_pull(&env, &name, &[]).unwrap_err();
    assert!(
        err.contains("manifest unknown") || err.to_lowercase().contains("not found"),
        "{err}"
    );
}

#[test]
fn podman_logins_push_and_pull_as_user_and_robot() {
    let s = site();
    let host = s.b.reg.host();
    let env = Env::new();
    let podman = Podman { env: &env };
    let img = image::oci_image(1502, 2);
    let src = env.path("src");
    image::write_image_layout(&src, "v1", &img);

    assert_bad_password(login(podman.cmd(), &host, "dev", "wrong-password"));

    for ((user, password), tag) in [(("dev", PW), "user"), ((&*s.ci.0, &*s.ci.1), "robot")] {
        login(podman.cmd(), &host, user, password).unwrap();
        let name = format!("{host}/team/podman:{tag}");
        let store = podman.storage_ref(&name);
        run(env.skopeo().args(["copy", &oci_ref(&src, "v1"), &store]));
        let pushed = podman.push(&name);
        run(podman.cmd().args(["rmi", "--force", &name]));
        run(podman.cmd().args(["pull", "--tls-verify=false", &name]));
        let digest = run(podman
            .cmd()
            .args(["image", "inspect", "--format", "{{.Digest}}", &name]));
        assert_eq!(digest.trim(), pushed, "{user}");
        run(podman.cmd().args(["rmi", "--force", &name]));
    }

    // The guest may pull what was pushed and may not push.
    login(podman.cmd(), &host, "guest", PW).unwrap();
    let name = format!("{host}/team/podman:user");
    run(podman.cmd().args(["pull", "--tls-verify=false", &name]));
    let out = output(podman.cmd().args(["push", "--tls-verify=false", &name]));
    assert!(!out.status.success(), "a guest's podman push succeeded");
}

#[test]
fn docker_logins_push_and_pull_as_user_and_robot() {
    let env = Env::new();
    if !can_run(
        "docker_logins_push_and_pull_as_user_and_robot",
        env.docker_available(),
        "BERTH_SKIP_DOCKER",
    ) {
        return;
    }
    let s = site();
    let host = s.b.reg.host();
    let rootfs = env.path("rootfs.tar");
    std::fs::write(&rootfs, image::rootfs_tar(1503)).unwrap();
    let mut images = DockerImages {
        env: &env,
        refs: Vec::new(),
    };
    let docker = || env.cmd("docker");

    assert_bad_password(login(docker(), &host, "dev", "wrong-password"));

    let unique = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    for ((user, password), tag) in [(("dev", PW), "user"), ((&*s.ci.0, &*s.ci.1), "robot")] {
        login(docker(), &host, user, password).unwrap();
        let name = format!("{host}/team/docker-{unique}:{tag}");
        images.refs.push(name.clone());
        run(docker().args(["import", rootfs.to_str().unwrap(), &name]));
        let pushed = parse_push_digest(&run(docker().args(["push", &name])));
        run(docker().args(["rmi", &name]));
        let out = run(docker().args(["pull", &name]));
        assert!(
            out.contains(&format!("Digest: {pushed}")),
            "docker pull as {user}:\n{out}"
        );
    }

    // A guest pulls and cannot push; after logging out, the private project is refused.
    login(docker(), &host, "guest", PW).unwrap();
    let name = format!("{host}/team/docker-{unique}:user");
    run(docker().args(["pull", &name]));
    let guest_tag = format!("{host}/team/docker-{unique}:guest");
    images.refs.push(guest_tag.clone());
    run(docker().args(["tag", &name, &guest_tag]));
    let err = run_fails(docker().args(["push", &guest_tag]));
    assert!(
        err.contains("denied") || err.contains("unauthorized") || err.contains("authentication"),
        "a guest's docker push failed for another reason:\n{err}"
    );
    logout(docker(), &host);
    run(docker().args(["rmi", &name]));
    let err = run_fails(docker().args(["pull", &name]));
    assert!(
        err.contains("denied") || err.contains("unauthorized") || err.contains("authentication"),
        "an anonymous docker pull failed for another reason:\n{err}"
    );
}

#[test]
fn distribution_uses_berth_as_its_token_service() {
    let s = site();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("berth-tokens.pem");
    std::fs::write(&certs, s.b.berth(&["token", "certificate"], None)).unwrap();
    let auth = format!(
        "auth:\n  token:\n    realm: http://{}/service/token\n    service: berth\n    \
         issuer: berth\n    rootcertbundle: {}\n",
        s.b.reg.host(),
        certs.display()
    );
    let dist = Distribution::on_directory(dir.path(), &dir.path().join("root"), &auth);
    let env = Env::new();
    let img = image::oci_image(1504, 2);
    let src = env.path("src");
    image::write_image_layout(&src, "v1", &img);

    // Berth's users and roles decide what Distribution allows.
    let name = format!("{}/team/app:v1", dist.host);
    assert_refused(
        skopeo_push(&env, &src, &name),
        "an anonymous push to Distribution",
    );
    login(env.skopeo(), &dist.host, "dev", PW).unwrap();
    assert_eq!(skopeo_push(&env, &src, &name).unwrap(), img.manifest.digest);
    assert_eq!(skopeo_pull(&env, &name, &[]).unwrap(), img.manifest.digest);
    login(env.skopeo(), &dist.host, "guest", PW).unwrap();
    assert_eq!(skopeo_pull(&env, &name, &[]).unwrap(), img.manifest.digest);
    assert_refused(
        skopeo_push(&env, &src, &format!("{}/team/app:guest", dist.host)),
        "a guest's push to Distribution",
    );
    login(env.skopeo(), &dist.host, &s.ci.0, &s.ci.1).unwrap();
    skopeo_push(&env, &src, &format!("{}/team/app:ci", dist.host)).unwrap();
    assert!(
        login(env.skopeo(), &dist.host, "dev", "wrong-password").is_err(),
        "a wrong password logs in to Distribution"
    );
}
