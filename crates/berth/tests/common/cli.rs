//! Running external client programs (skopeo, podman, docker, ctr) from tests: private
//! environments and commands whose failures report their full output.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Output};

pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().to_string();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

pub fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run `{}`: {e}", describe(cmd)))
}

pub fn report(cmd: &Command, out: &Output) -> String {
    format!(
        "`{}` exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        describe(cmd),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Run a command that must succeed; returns its stdout. Panics with stdout+stderr otherwise.
pub fn run(cmd: &mut Command) -> String {
    let out = output(cmd);
    if !out.status.success() {
        panic!("command failed: {}", report(cmd, &out));
    }
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Run a command that must succeed; returns its raw stdout.
pub fn run_bytes(cmd: &mut Command) -> Vec<u8> {
    let out = output(cmd);
    if !out.status.success() {
        panic!("command failed: {}", report(cmd, &out));
    }
    out.stdout
}

/// Run a command that must fail; returns its stderr. Panics with stdout+stderr otherwise.
pub fn run_fails(cmd: &mut Command) -> String {
    let out = output(cmd);
    if out.status.success() {
        panic!("command unexpectedly succeeded: {}", report(cmd, &out));
    }
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// A private environment for client tools: HOME, XDG dirs, auth file and TMPDIR all inside a
/// temporary directory.
pub struct Env {
    pub tmp: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        let tmp = tempfile::tempdir().expect("tempdir");
        for d in ["home", "runtime", "config", "data", "cache", "tmp"] {
            std::fs::create_dir_all(tmp.path().join(d)).unwrap();
        }
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(
            tmp.path().join("runtime"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        std::fs::write(tmp.path().join("auth.json"), "{\"auths\":{}}").unwrap();
        Env { tmp }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        let p = self.tmp.path();
        c.env("HOME", p.join("home"))
            .env("XDG_RUNTIME_DIR", p.join("runtime"))
            .env("XDG_CONFIG_HOME", p.join("config"))
            .env("XDG_DATA_HOME", p.join("data"))
            .env("XDG_CACHE_HOME", p.join("cache"))
            .env("REGISTRY_AUTH_FILE", p.join("auth.json"))
            .env("DOCKER_CONFIG", p.join("home/.docker"))
            .env("TMPDIR", p.join("tmp"));
        c
    }

    /// `skopeo --insecure-policy <args>`.
    pub fn skopeo(&self) -> Command {
        let mut c = self.cmd("skopeo");
        c.arg("--insecure-policy");
        c
    }

    /// `skopeo copy --dest-tls-verify=false <extra> <src> <dest>`; returns the digest of the
    /// manifest skopeo pushed (its `--digestfile`).
    pub fn skopeo_push(&self, extra: &[&str], src: &str, dest: &str) -> String {
        let digestfile = self.path(&format!("digest-{}", uuid_like()));
        let mut c = self.skopeo();
        c.args(["copy", "--dest-tls-verify=false", "--digestfile"])
            .arg(&digestfile)
            .args(extra)
            .args([src, dest]);
        run(&mut c);
        read_digestfile(&digestfile)
    }

    /// Whether the machine's Docker Engine answers.
    pub fn docker_available(&self) -> Result<(), String> {
        let mut c = self.cmd("docker");
        c.arg("info");
        match c.output() {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(report(&c, &out)),
            Err(e) => Err(format!("cannot run docker: {e}")),
        }
    }
}

/// The digest a client wrote to its `--digestfile`.
pub fn read_digestfile(p: &std::path::Path) -> String {
    let d =
        std::fs::read_to_string(p).unwrap_or_else(|e| panic!("digest file {}: {e}", p.display()));
    d.trim().to_string()
}

/// The digest in `docker push` output ("<tag>: digest: sha256:... size: N").
pub fn parse_push_digest(out: &str) -> String {
    out.lines()
        .find_map(|l| {
            let i = l.find("digest: ")?;
            Some(l[i + 8..].split_whitespace().next()?.to_string())
        })
        .unwrap_or_else(|| panic!("no digest in docker push output:\n{out}"))
}

/// A name unique in this process (for files of one environment).
fn uuid_like() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Whether a test that needs `what` (Docker, containerd, ...) can run: `Ok` runs it. When it
/// cannot, it fails saying why, unless `skip_var=1` is set in the environment, which skips it
/// (printed) on a machine known to lack it.
pub fn can_run(test: &str, what: Result<(), String>, skip_var: &str) -> bool {
    let Err(why) = what else { return true };
    if std::env::var(skip_var).as_deref() == Ok("1") {
        eprintln!("skipping {test} ({skip_var}=1): {why}");
        return false;
    }
    panic!("{test} cannot run: {why} (set {skip_var}=1 to skip it)");
}

// ---- podman (vfs storage, private root)

/// podman with private storage (vfs) and run directories under an [`Env`]; its images are
/// removed on drop.
pub struct Podman<'a> {
    pub env: &'a Env,
}

impl Podman<'_> {
    pub fn cmd(&self) -> Command {
        let mut c = self.env.cmd("podman");
        c.arg("--root")
            .arg(self.env.path("podman/root"))
            .arg("--runroot")
            .arg(self.env.path("podman/runroot"))
            .arg("--tmpdir")
            .arg(self.env.path("podman/tmp"))
            .arg("--volumepath")
            .arg(self.env.path("podman/volumes"))
            .arg("--network-config-dir")
            .arg(self.env.path("podman/networks"))
            .args(["--storage-driver", "vfs", "--events-backend", "none"])
            .args(["--cgroup-manager", "cgroupfs"]);
        c
    }
}

impl Podman<'_> {
    /// The `containers-storage:` reference (for skopeo) of `name` in this podman's storage.
    pub fn storage_ref(&self, name: &str) -> String {
        format!(
            "containers-storage:[vfs@{}+{}]{name}",
            self.env.path("podman/root").display(),
            self.env.path("podman/runroot").display()
        )
    }

    /// `podman push --tls-verify=false <name>`; the digest of the manifest it pushed.
    pub fn push(&self, name: &str) -> String {
        let digestfile = self.env.path(&format!("podman-digest-{}", uuid_like()));
        run(self
            .cmd()
            .args(["push", "--tls-verify=false", "--digestfile"])
            .arg(&digestfile)
            .arg(name));
        read_digestfile(&digestfile)
    }
}

impl Drop for Podman<'_> {
    fn drop(&mut self) {
        let _ = self.cmd().args(["rmi", "--all", "--force"]).output();
    }
}

// ---- containerd (ctr), as kubelet would pull

/// dockerd's own containerd.
pub const CONTAINERD_SOCK: &str = "/run/docker/containerd/containerd.sock";

/// containerd's ctr in a namespace of its own, which is emptied and removed on drop with the
/// images `refs` names.
pub struct Ctr<'a> {
    pub env: &'a Env,
    pub ns: String,
    pub refs: Vec<String>,
}

impl Ctr<'_> {
    pub fn cmd(&self) -> Command {
        let mut c = self.env.cmd("ctr");
        c.args(["-a", CONTAINERD_SOCK, "-n", &self.ns]);
        c
    }

    /// Remove images, snapshots and content of the namespace, then the namespace itself.
    pub fn cleanup(&self) -> Result<(), String> {
        for r in &self.refs {
            let _ = self.cmd().args(["images", "rm", "--sync", r]).output();
        }
        for snapshotter in ["overlayfs", "native"] {
            // Remove snapshots leaves-first, a few rounds.
            for _ in 0..10 {
                let Ok(out) = self
                    .cmd()
                    .args(["snapshots", "--snapshotter", snapshotter, "ls"])
                    .output()
                else {
                    break;
                };
                let keys: Vec<String> = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .skip(1)
                    .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                    .collect();
                if keys.is_empty() {
                    break;
                }
                for k in keys {
                    let _ = self
                        .cmd()
                        .args(["snapshots", "--snapshotter", snapshotter, "rm", &k])
                        .output();
                }
            }
        }
        if let Ok(out) = self.cmd().args(["content", "ls", "-q"]).output() {
            let digests: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect();
            if !digests.is_empty() {
                let _ = self.cmd().args(["content", "rm"]).args(&digests).output();
            }
        }
        let mut c = self.env.cmd("ctr");
        c.args(["-a", CONTAINERD_SOCK, "namespaces", "remove", &self.ns]);
        let out = output(&mut c);
        if out.status.success() {
            Ok(())
        } else {
            Err(report(&c, &out))
        }
    }

    /// `ctr images ls` as (ref → target digest).
    pub fn images(&self) -> BTreeMap<String, String> {
        let out = run(self.cmd().args(["images", "ls"]));
        out.lines()
            .skip(1)
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                let digest = cols.iter().find(|c| c.starts_with("sha256:"))?;
                Some((cols[0].to_string(), digest.to_string()))
            })
            .collect()
    }

    pub fn content(&self) -> BTreeSet<String> {
        run(self.cmd().args(["content", "ls", "-q"]))
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Ctr<'_> {
    fn drop(&mut self) {
        if !self.ns.is_empty() {
            let _ = self.cleanup();
        }
    }
}

// ---- the docker CLI

/// Removes every image reference it was given when dropped.
pub struct DockerImages<'a> {
    pub env: &'a Env,
    pub refs: Vec<String>,
}

impl Drop for DockerImages<'_> {
    fn drop(&mut self) {
        for r in self.refs.iter().rev() {
            let _ = self.env.cmd("docker").args(["rmi", "--force", r]).output();
        }
    }
}

/// `docker image inspect` of one reference.
pub fn docker_inspect(env: &Env, reference: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&run(env
        .cmd("docker")
        .args(["image", "inspect", reference])))
    .unwrap();
    v[0].clone()
}

/// The `RepoDigests` of an inspected image.
pub fn repo_digests(inspect: &serde_json::Value) -> Vec<String> {
    inspect["RepoDigests"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
