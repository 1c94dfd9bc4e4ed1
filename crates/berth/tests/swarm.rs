//! Berth as a Docker swarm service, deployed from `deploy/swarm/stack.yml` with the image
//! `deploy/image/build` makes: three replicas behind the service's virtual IP on the stack's
//! attachable overlay network, one PostgreSQL database (on this host, listening on the
//! docker_gwbridge gateway that tasks reach it through) and one storage directory bound into
//! every task (all tasks run on this one node).
//!
//! One-shot containers of the same image on that network push images by the service's name
//! (`berth:5000`) with curl, every request on a new connection, so that the steps of one upload
//! (start, two chunks, commit) and the pulls after it are spread over the replicas; what comes
//! back must have the digests that were pushed, and each replica's access log must show
//! requests it served. `berth-bench` then pushes and pulls a 200-layer image over eight
//! connections, verifying every digest.
//!
//! A virtual IP is made of the kernel's IPVS. On a kernel without it (no `ip_vs`, built in or
//! as a module) a VIP routes nowhere, so there the stack is deployed with `endpoint_mode: dnsrr`:
//! the name resolves to every task and each new client picks one; pulls go on (a bounded
//! number) until every replica has served one, and `berth-bench` runs against every replica
//! at once.
//!
//! Needs root (the storage directory is handed to the image's user) and a Docker Engine; nothing
//! is pulled. The release binaries are built first (`cargo build --release`). The stack, its
//! network and volume, the containers, the image and the temporary directories are removed at
//! the end, also when the test fails; the swarm is left again only if the test initialised it.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cli::{describe, output, report, run};
use common::oci::{descriptor, image_manifest, OCI_CONFIG, OCI_LAYER, OCI_MANIFEST};
use common::postgres::Postgres;
use common::{pseudo_bytes, sha256};

/// Replicas of the Berth service (`deploy.replicas` in the stack file).
const REPLICAS: usize = 3;
/// Images pushed and pulled back, each by its own sequence of one-shot containers.
const ROUNDS: usize = 3;
/// The name tasks answer to on the stack's network.
const BASE_URL: &str = "http://berth:5000";
/// The database the replicas share.
const DBNAME: &str = "berth_swarm";
/// Pulls beyond the rounds' own, at most, until every replica has served one (with DNS round
/// robin each client picks a replica at random; one missed by this many has a problem).
const MAX_EXTRA_PULLS: usize = 60;
/// How long the replicas may take to become healthy, and the stack to go away. Bounds on
/// waiting, never asserted on.
const SETTLE: Duration = Duration::from_secs(300);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

fn docker() -> Command {
    Command::new("docker")
}

/// `docker <args>`, which must succeed; its stdout, trimmed.
fn docker_run(args: &[&str]) -> String {
    run(docker().args(args)).trim().to_string()
}

/// Everything the test creates in the engine, removed on drop in reverse order of creation.
struct Swarm {
    /// The stack's name: its service is `<stack>_berth`, its network `<stack>_berth`.
    stack: String,
    /// The image repository `deploy/image/build --name` was given.
    image: String,
    /// Whether the test ran `docker swarm init` (and so leaves the swarm at the end).
    initialised: bool,
    /// Whether docker_gwbridge was missing before the test (and so is removed at the end, when
    /// the swarm the test made is gone).
    made_gwbridge: bool,
    /// The overlay network used to bring docker_gwbridge up before the stack exists.
    probe_network: Option<String>,
    // Dropped after the engine's resources are gone (fields drop after `drop` has run):
    /// The database server on the host.
    postgres: Option<Postgres>,
    /// The storage directory, the clients' input and output, the stack file.
    dirs: tempfile::TempDir,
}

impl Swarm {
    fn service(&self) -> String {
        format!("{}_berth", self.stack)
    }

    fn network(&self) -> String {
        format!("{}_berth", self.stack)
    }

    fn volume(&self) -> String {
        format!("{}_berth-data", self.stack)
    }

    fn image_ref(&self) -> String {
        format!("{}:latest", self.image)
    }

    /// The label every one-shot container of the test carries.
    fn client_label(&self) -> String {
        format!("berth.test={}", self.stack)
    }

    /// Lines of `docker <args>` output, or none when the command fails (cleanup only).
    fn lines(args: &[&str]) -> Vec<String> {
        match docker().args(args).output() {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Runs a cleanup command, reporting (not panicking on) a failure.
    fn tidy(args: &[&str]) -> bool {
        let mut cmd = docker();
        cmd.args(args);
        match cmd.output() {
            Ok(out) if out.status.success() => true,
            Ok(out) => {
                eprintln!("cleanup: {}", report(&cmd, &out));
                false
            }
            Err(e) => {
                eprintln!("cleanup: cannot run `{}`: {e}", describe(&cmd));
                false
            }
        }
    }

    /// Retries a cleanup command until it succeeds (the engine removes tasks asynchronously).
    fn tidy_until_done(args: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = docker()
                .args(args)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok || Instant::now() > deadline {
                if !ok {
                    Swarm::tidy(args);
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let label = self.client_label();
        let clients = Swarm::lines(&["ps", "-aq", "--filter", &format!("label={label}")]);
        if !clients.is_empty() {
            let mut args = vec!["rm", "--force"];
            args.extend(clients.iter().map(String::as_str));
            Swarm::tidy(&args);
        }
        if let Some(net) = self.probe_network.take() {
            Swarm::tidy_until_done(&["network", "rm", &net]);
        }
        let namespace = format!("label=com.docker.stack.namespace={}", self.stack);
        if Swarm::lines(&["stack", "ls", "--format", "{{.Name}}"]).contains(&self.stack) {
            Swarm::tidy(&["stack", "rm", &self.stack]);
        }
        let deadline = Instant::now() + SETTLE;
        while !Swarm::lines(&["ps", "-aq", "--filter", &namespace]).is_empty()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(500));
        }
        let networks = Swarm::lines(&["network", "ls", "-q", "--filter", &namespace]);
        for net in &networks {
            Swarm::tidy_until_done(&["network", "rm", net]);
        }
        if !Swarm::lines(&[
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("name={}", self.volume()),
        ])
        .is_empty()
        {
            Swarm::tidy_until_done(&["volume", "rm", &self.volume()]);
        }
        let tags = Swarm::lines(&[
            "images",
            "--format",
            "{{.Repository}}:{{.Tag}}",
            &self.image,
        ]);
        if !tags.is_empty() {
            let mut args = vec!["rmi", "--force"];
            args.extend(tags.iter().map(String::as_str));
            Swarm::tidy(&args);
        }
        if self.initialised {
            Swarm::tidy(&["swarm", "leave", "--force"]);
        }
        if self.initialised && self.made_gwbridge {
            Swarm::tidy_until_done(&["network", "rm", "docker_gwbridge"]);
        }
    }
}

/// What curl's `--write-out` reports for one request.
#[derive(Debug)]
struct Reply {
    status: u16,
    digest: String,
    location: String,
    /// The whole curl command and its output, for failure messages.
    run: String,
}

/// One request of a one-shot curl container: its arguments (without the common ones) and where
/// the body goes inside the container (`/dev/null` when not kept).
struct Request {
    what: String,
    args: Vec<String>,
    body_to: String,
}

impl Request {
    fn new(what: impl Into<String>, args: &[&str]) -> Request {
        Request {
            what: what.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            body_to: "/dev/null".into(),
        }
    }

    fn keep_body(mut self, file: &str) -> Request {
        self.body_to = format!("/out/{file}");
        self
    }
}

/// Runs the requests in one one-shot container on the stack's network, each on a new
/// connection (`Connection: close`), so a VIP balances each on its own; returns each reply.
fn curl(swarm: &Swarm, input: &Path, out: &Path, requests: &[Request]) -> Vec<Reply> {
    let mut cmd = docker();
    cmd.args(["run", "--rm", "--label", &swarm.client_label()])
        .args(["--network", &swarm.network()])
        .arg("--volume")
        .arg(format!("{}:/in:ro", input.display()))
        .arg("--volume")
        .arg(format!("{}:/out", out.display()))
        .args(["--entrypoint", "curl", &swarm.image_ref()]);
    for (i, r) in requests.iter().enumerate() {
        if i > 0 {
            cmd.arg("--next");
        }
        cmd.args(["--silent", "--show-error", "--header", "Connection: close"])
            .args(["--max-time", &SETTLE.as_secs().to_string()])
            .args(["--output", &r.body_to])
            .args([
                "--write-out",
                "%{http_code}\t%header{docker-content-digest}\t%header{location}\n",
            ])
            .args(&r.args);
    }
    let out = output(&mut cmd);
    let run = report(&cmd, &out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let replies: Vec<Reply> = stdout
        .lines()
        .map(|line| {
            let mut f = line.split('\t');
            Reply {
                status: f.next().and_then(|s| s.parse().ok()).unwrap_or(0),
                digest: f.next().unwrap_or("").to_string(),
                location: f.next().unwrap_or("").to_string(),
                run: run.clone(),
            }
        })
        .collect();
    assert_eq!(
        replies.len(),
        requests.len(),
        "one reply per request expected: {run}"
    );
    replies
}

/// Asserts the status of a reply, naming the request.
fn expect(reply: &Reply, request: &Request, status: u16) {
    assert_eq!(
        reply.status, status,
        "{}: status {} (expected {status}), digest {:?}, location {:?}\n{}",
        request.what, reply.status, reply.digest, reply.location, reply.run
    );
}

/// An absolute URL on the service for a `Location` value.
fn absolute(location: &str) -> String {
    assert!(!location.is_empty(), "a Location header was expected");
    if location.starts_with("http://") {
        location.to_string()
    } else {
        format!("{BASE_URL}{location}")
    }
}

fn with_digest(url: &str, digest: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}digest={digest}")
}

/// One image of a round: a layer pushed in two chunks, a config pushed whole, a manifest by tag.
struct RoundImage {
    repo: String,
    layer: Vec<u8>,
    split: usize,
    config: Vec<u8>,
    manifest: Vec<u8>,
}

impl RoundImage {
    fn new(stack: &str, round: usize) -> RoundImage {
        let seed = format!("{stack} round {round}");
        let layer = pseudo_bytes(&seed, (1 << 20) + 4099 * round);
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"seed": seed}},
            "rootfs": {"type": "layers", "diff_ids": []},
        }))
        .expect("config JSON");
        let manifest = image_manifest(
            &descriptor(OCI_CONFIG, &config),
            &[descriptor(OCI_LAYER, &layer)],
        );
        RoundImage {
            repo: format!("swarm/round-{round}"),
            split: layer.len() / 2,
            layer,
            config,
            manifest,
        }
    }

    fn file(&self, part: &str) -> String {
        format!("{}-{part}", self.repo.replace('/', "-"))
    }

    fn write_to(&self, dir: &Path) {
        for (part, bytes) in [
            ("chunk1", &self.layer[..self.split]),
            ("chunk2", &self.layer[self.split..]),
            ("config", &self.config[..]),
            ("manifest", &self.manifest[..]),
        ] {
            let path = dir.join(self.file(part));
            std::fs::write(&path, bytes).expect("write test blob");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
                .expect("chmod test blob");
        }
    }
}

/// Pushes one image through the service: the layer's upload is started, sent in two chunks and
/// committed by four separate containers (four connections), then the config and the manifest.
fn push(swarm: &Swarm, input: &Path, out: &Path, img: &RoundImage) {
    let repo = &img.repo;
    let layer_digest = sha256(&img.layer);

    let start = Request::new(
        format!("{repo}: start the layer upload"),
        &[
            "--request",
            "POST",
            "--data-binary",
            "",
            "--header",
            "Content-Type: application/octet-stream",
            &format!("{BASE_URL}/v2/{repo}/blobs/uploads/"),
        ],
    );
    let reply = &curl(swarm, input, out, std::slice::from_ref(&start))[0];
    expect(reply, &start, 202);
    let mut location = absolute(&reply.location);

    let n = img.layer.len();
    for (i, (from, to)) in [(0, img.split), (img.split, n)].into_iter().enumerate() {
        let chunk = Request::new(
            format!("{repo}: layer chunk {} ({from}-{})", i + 1, to - 1),
            &[
                "--request",
                "PATCH",
                "--data-binary",
                &format!("@/in/{}", img.file(&format!("chunk{}", i + 1))),
                "--header",
                "Content-Type: application/octet-stream",
                "--header",
                &format!("Content-Range: {from}-{}", to - 1),
                &location,
            ],
        );
        let reply = &curl(swarm, input, out, std::slice::from_ref(&chunk))[0];
        expect(reply, &chunk, 202);
        location = absolute(&reply.location);
    }

    let commit = Request::new(
        format!("{repo}: commit the layer"),
        &[
            "--request",
            "PUT",
            "--data-binary",
            "",
            "--header",
            "Content-Type: application/octet-stream",
            &with_digest(&location, &layer_digest),
        ],
    );
    let config = Request::new(
        format!("{repo}: push the config"),
        &[
            "--request",
            "POST",
            "--data-binary",
            &format!("@/in/{}", img.file("config")),
            "--header",
            "Content-Type: application/octet-stream",
            &with_digest(
                &format!("{BASE_URL}/v2/{repo}/blobs/uploads/"),
                &sha256(&img.config),
            ),
        ],
    );
    let manifest = Request::new(
        format!("{repo}: push the manifest as v1"),
        &[
            "--request",
            "PUT",
            "--data-binary",
            &format!("@/in/{}", img.file("manifest")),
            "--header",
            &format!("Content-Type: {OCI_MANIFEST}"),
            &format!("{BASE_URL}/v2/{repo}/manifests/v1"),
        ],
    );
    let requests = [commit, config, manifest];
    let replies = curl(swarm, input, out, &requests);
    let digests = [layer_digest, sha256(&img.config), sha256(&img.manifest)];
    for ((reply, request), digest) in replies.iter().zip(&requests).zip(&digests) {
        expect(reply, request, 201);
        assert_eq!(
            &reply.digest, digest,
            "{}: Docker-Content-Digest",
            request.what
        );
    }
}

/// Pulls an image back through the service (manifest by `reference`, layer, config; each on its
/// own connection) and checks every byte against what was pushed.
fn pull(swarm: &Swarm, input: &Path, out: &Path, img: &RoundImage, reference: &str) {
    let repo = &img.repo;
    let tagged = reference.replace(':', "-");
    let files = [
        img.file(&format!("pulled-{tagged}-manifest")),
        img.file(&format!("pulled-{tagged}-layer")),
        img.file(&format!("pulled-{tagged}-config")),
    ];
    let requests = [
        Request::new(
            format!("{repo}: pull the manifest {reference}"),
            &[
                "--header",
                &format!("Accept: {OCI_MANIFEST}"),
                &format!("{BASE_URL}/v2/{repo}/manifests/{reference}"),
            ],
        )
        .keep_body(&files[0]),
        Request::new(
            format!("{repo}: pull the layer"),
            &[&format!(
                "{BASE_URL}/v2/{repo}/blobs/{}",
                sha256(&img.layer)
            )],
        )
        .keep_body(&files[1]),
        Request::new(
            format!("{repo}: pull the config"),
            &[&format!(
                "{BASE_URL}/v2/{repo}/blobs/{}",
                sha256(&img.config)
            )],
        )
        .keep_body(&files[2]),
    ];
    let replies = curl(swarm, input, out, &requests);
    let expected = [&img.manifest, &img.layer, &img.config];
    for ((reply, request), (file, want)) in replies
        .iter()
        .zip(&requests)
        .zip(files.iter().zip(expected))
    {
        expect(reply, request, 200);
        let got = std::fs::read(out.join(file)).expect("pulled bytes");
        assert_eq!(
            sha256(&got),
            sha256(want),
            "{}: the bytes pulled are not the ones pushed",
            request.what
        );
        assert_eq!(
            reply.digest,
            sha256(want),
            "{}: Docker-Content-Digest",
            request.what
        );
    }
}

/// The stack file as shipped, adapted to this machine: no PostgreSQL service (the image cannot
/// be pulled; the test's server on the host stands in), no port published on the host (the
/// routing mesh is not used; clients are on the overlay network), the database's address, and
/// the service's endpoint mode.
fn stack_file(pg: &Postgres, gateway: &str, endpoint_mode: &str) -> String {
    let shipped = workspace().join("deploy/swarm/stack.yml");
    let text = std::fs::read_to_string(&shipped).expect("deploy/swarm/stack.yml");
    let mut stack: serde_yaml::Value = serde_yaml::from_str(&text).expect("stack.yml is YAML");
    let services = stack["services"]
        .as_mapping_mut()
        .expect("stack.yml: services");
    services.remove("postgres");
    let berth = services
        .get_mut("berth")
        .and_then(|b| b.as_mapping_mut())
        .expect("stack.yml: services.berth");
    berth.remove("ports");
    let deploy = berth
        .get_mut("deploy")
        .and_then(|d| d.as_mapping_mut())
        .expect("stack.yml: services.berth.deploy");
    assert_eq!(
        deploy.get("endpoint_mode").and_then(|m| m.as_str()),
        Some("vip"),
        "stack.yml: services.berth.deploy.endpoint_mode"
    );
    deploy.insert("endpoint_mode".into(), endpoint_mode.into());
    let env = berth
        .get_mut("environment")
        .and_then(|e| e.as_mapping_mut())
        .expect("stack.yml: services.berth.environment");
    for (key, value) in [
        ("REGISTRY_DATABASE_HOST", gateway.to_string()),
        ("REGISTRY_DATABASE_PORT", pg.port().to_string()),
        ("REGISTRY_DATABASE_USER", Postgres::USER.to_string()),
        ("REGISTRY_DATABASE_DBNAME", DBNAME.to_string()),
    ] {
        assert!(
            env.contains_key(key),
            "stack.yml: services.berth.environment has no {key}"
        );
        env.insert(key.into(), value.into());
    }
    if let Some(volumes) = stack["volumes"].as_mapping_mut() {
        volumes.remove("postgres-data");
    }
    serde_yaml::to_string(&stack).expect("stack file")
}

/// Whether the kernel has IPVS, which a service's virtual IP is made of: loaded or built in, or
/// a module the engine can load.
fn kernel_has_ipvs() -> bool {
    if Path::new("/proc/net/ip_vs").exists() || Path::new("/sys/module/ip_vs").exists() {
        return true;
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let modules = Path::new("/lib/modules").join(release.trim());
    ["modules.dep", "modules.builtin"].iter().any(|list| {
        std::fs::read_to_string(modules.join(list))
            .map(|text| text.lines().any(|l| l.contains("/ipvs/ip_vs.ko")))
            .unwrap_or(false)
    })
}

/// The IPv4 gateway of docker_gwbridge: the host's address as tasks on overlay networks see it.
fn gwbridge_gateway() -> String {
    let gateways = docker_run(&[
        "network",
        "inspect",
        "docker_gwbridge",
        "--format",
        "{{range .IPAM.Config}}{{.Gateway}} {{end}}",
    ]);
    gateways
        .split_whitespace()
        .find(|g| g.parse::<std::net::Ipv4Addr>().is_ok())
        .unwrap_or_else(|| panic!("docker_gwbridge has no IPv4 gateway: {gateways:?}"))
        .to_string()
}

fn network_exists(name: &str) -> bool {
    docker()
        .args(["network", "inspect", name])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Waits until the service runs `REPLICAS` healthy tasks (a task with a health check is
/// `Running` once healthy). A task that failed or was replaced fails the test at once.
fn wait_for_replicas(swarm: &Swarm) {
    let service = swarm.service();
    let deadline = Instant::now() + SETTLE;
    loop {
        let states = docker_run(&["service", "ps", &service, "--format", "{{.CurrentState}}"]);
        let states: Vec<&str> = states.lines().collect();
        let running = states.iter().filter(|s| s.starts_with("Running")).count();
        if running == REPLICAS && states.len() == REPLICAS {
            return;
        }
        let diagnose = || {
            format!(
                "{}\n--- service logs ---\n{}",
                run(docker().args(["service", "ps", "--no-trunc", &service])),
                String::from_utf8_lossy(
                    &output(docker().args(["service", "logs", "--raw", &service])).stdout
                )
            )
        };
        assert!(
            states.len() <= REPLICAS,
            "a task of {service} failed or was replaced:\n{}",
            diagnose()
        );
        assert!(
            Instant::now() < deadline,
            "{service}: {running} of {REPLICAS} tasks running after {SETTLE:?}:\n{}",
            diagnose()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The service's containers, each with its address on the stack's network; all must be running,
/// one per replica.
fn replicas(swarm: &Swarm) -> BTreeMap<String, String> {
    let ids = docker_run(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=com.docker.swarm.service.name={}", swarm.service()),
        "--format",
        "{{.ID}} {{.State}}",
    ]);
    let format = format!(
        "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
        swarm.network()
    );
    let mut containers = BTreeMap::new();
    for line in ids.lines() {
        let (id, state) = line.split_once(' ').unwrap_or((line, ""));
        assert_eq!(state, "running", "container {id} of the service");
        let addr = docker_run(&["inspect", "--format", &format, id]);
        containers.insert(id.to_string(), addr);
    }
    assert_eq!(
        containers.len(),
        REPLICAS,
        "one container per replica: {containers:?}"
    );
    containers
}

/// How many of the test's requests a container's access log shows.
fn served(container: &str) -> usize {
    let logs = output(docker().args(["logs", container]));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&logs.stdout),
        String::from_utf8_lossy(&logs.stderr),
    );
    stdout
        .lines()
        .chain(stderr.lines())
        .filter(|l| l.contains("/v2/swarm/round-"))
        .count()
}

/// The service's virtual IP on the stack's network.
fn service_vip(swarm: &Swarm) -> String {
    let network_id = docker_run(&[
        "network",
        "inspect",
        &swarm.network(),
        "--format",
        "{{.Id}}",
    ]);
    let vips = docker_run(&[
        "service",
        "inspect",
        &swarm.service(),
        "--format",
        "{{range .Endpoint.VirtualIPs}}{{.NetworkID}} {{.Addr}}\n{{end}}",
    ]);
    vips.lines()
        .find_map(|l| {
            let (net, addr) = l.split_once(' ')?;
            (net == network_id).then(|| addr.split('/').next().unwrap_or(addr).to_string())
        })
        .unwrap_or_else(|| {
            panic!(
                "no virtual IP of {} on its network: {vips}",
                swarm.service()
            )
        })
}

fn chown_to(path: &Path, user: &str) {
    let (uid, gid) = user
        .split_once(':')
        .and_then(|(u, g)| Some((u.parse::<u32>().ok()?, g.parse::<u32>().ok()?)))
        .unwrap_or_else(|| panic!("the image's user is not numeric uid:gid: {user:?}"));
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap_or_else(|e| {
        panic!(
            "chown {} to {user} (the test needs root): {e}",
            path.display()
        )
    });
}

#[test]
fn three_replicas_of_a_swarm_service_serve_as_one_registry() {
    let info = output(docker().args(["info", "--format", "{{.Swarm.LocalNodeState}}"]));
    assert!(
        info.status.success(),
        "this test needs a running Docker Engine: {}",
        String::from_utf8_lossy(&info.stderr)
    );
    let state = String::from_utf8_lossy(&info.stdout).trim().to_string();

    let dirs = tempfile::Builder::new()
        .prefix("berth-swarm")
        .tempdir()
        .expect("temporary directory");
    let stack = format!("berth-swarm-{}", std::process::id());
    let mut swarm = Swarm {
        image: format!("{stack}-image"),
        stack,
        initialised: false,
        made_gwbridge: !network_exists("docker_gwbridge"),
        probe_network: None,
        postgres: None,
        dirs,
    };

    // The image, from release binaries of this tree.
    let root = workspace();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!(
        "swarm: building the release binaries: cargo build --release -p berth -p berth-bench"
    );
    run(Command::new(&cargo)
        .args(["build", "--release", "-p", "berth", "-p", "berth-bench"])
        .current_dir(&root));
    eprintln!(
        "swarm: deploy/image/build --no-build --name {}",
        swarm.image
    );
    run(Command::new(root.join("deploy/image/build"))
        .args(["--no-build", "--name", &swarm.image])
        .current_dir(&root));
    let user = docker_run(&[
        "image",
        "inspect",
        "--format",
        "{{.Config.User}}",
        &swarm.image_ref(),
    ]);

    // A swarm: this engine's, or one made for the test.
    match state.as_str() {
        "inactive" => {
            eprintln!("swarm: docker swarm init");
            docker_run(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
            swarm.initialised = true;
        }
        "active" => {
            let manager = docker_run(&["info", "--format", "{{.Swarm.ControlAvailable}}"]);
            assert_eq!(
                manager, "true",
                "this engine is in a swarm but not a manager"
            );
        }
        other => {
            panic!("this engine's swarm state is {other:?}; the test needs inactive or active")
        }
    }

    // docker_gwbridge exists once a container has joined an overlay network; PostgreSQL must
    // listen on its gateway before the first task starts.
    if !network_exists("docker_gwbridge") {
        let probe = format!("{}-probe", swarm.stack);
        docker_run(&[
            "network",
            "create",
            "--driver",
            "overlay",
            "--attachable",
            &probe,
        ]);
        swarm.probe_network = Some(probe.clone());
        docker_run(&[
            "run",
            "--rm",
            "--label",
            &swarm.client_label(),
            "--network",
            &probe,
            &swarm.image_ref(),
            "--version",
        ]);
        docker_run(&["network", "rm", &probe]);
        swarm.probe_network = None;
    }
    let gateway = gwbridge_gateway();
    let pg = Postgres::start_listening(&format!("127.0.0.1,{gateway}"));
    pg.create_database(DBNAME);
    let vip = kernel_has_ipvs();
    if !vip {
        eprintln!("swarm: this kernel has no IPVS, so no virtual IP: endpoint_mode dnsrr");
    }
    let stack_text = stack_file(&pg, &gateway, if vip { "vip" } else { "dnsrr" });
    swarm.postgres = Some(pg);

    let tmp = swarm.dirs.path().to_path_buf();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .expect("chmod temporary directory");
    let storage = tmp.join("storage");
    let input = tmp.join("in");
    let out = tmp.join("out");
    for d in [&storage, &input, &out] {
        std::fs::create_dir(d).expect("create directory");
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    chown_to(&storage, &user);
    chown_to(&out, &user);

    // The stack.
    let stack_path = tmp.join("stack.yml");
    std::fs::write(&stack_path, stack_text).expect("write stack file");
    eprintln!("swarm: docker stack deploy {}", swarm.stack);
    run(docker()
        .args([
            "stack",
            "deploy",
            "--resolve-image",
            "never",
            "--compose-file",
        ])
        .arg(&stack_path)
        .arg(&swarm.stack)
        .env("BERTH_IMAGE", swarm.image_ref())
        .env("BERTH_STORAGE", &storage)
        .env("BERTH_DB_PASSWORD", Postgres::PASSWORD));
    wait_for_replicas(&swarm);

    // A VIP forwards to a task only once the engine has programmed it; wait for an answer.
    let ping = Request::new(
        "GET /v2/ by the service's name",
        &[
            "--retry",
            "30",
            "--retry-all-errors",
            "--retry-delay",
            "1",
            &format!("{BASE_URL}/v2/"),
        ],
    );
    expect(
        &curl(&swarm, &input, &out, std::slice::from_ref(&ping))[0],
        &ping,
        200,
    );

    // Push and pull images, each request on its own connection.
    let images: Vec<RoundImage> = (0..ROUNDS)
        .map(|r| RoundImage::new(&swarm.stack, r))
        .collect();
    for img in &images {
        img.write_to(&input);
        push(&swarm, &input, &out, img);
        pull(&swarm, &input, &out, img, "v1");
    }
    // Every image again, by digest, now that all were pushed through whichever replicas.
    for img in &images {
        pull(&swarm, &input, &out, img, &sha256(&img.manifest));
    }

    // Each replica served some of those requests: the service spread them, and what one replica
    // wrote the others read. Behind a VIP the requests so far went round-robin; with DNS round
    // robin each client picked a replica at random, so pull on until each has served one.
    let containers = replicas(&swarm);
    let mut extra = 0;
    loop {
        let idle: Vec<&String> = containers.keys().filter(|id| served(id) == 0).collect();
        if idle.is_empty() {
            break;
        }
        assert!(
            extra < MAX_EXTRA_PULLS,
            "replicas {idle:?} served none of the test's requests after {extra} more pulls"
        );
        let img = &images[extra % ROUNDS];
        pull(&swarm, &input, &out, img, &sha256(&img.manifest));
        extra += 1;
    }
    assert_eq!(
        replicas(&swarm),
        containers,
        "the replicas are those that started"
    );

    // The project's own client: a 200-layer image pushed and pulled over eight connections,
    // every digest verified (a mismatch exits 3, a failed request 2). Through the VIP; without
    // one, against every replica at once.
    let targets: Vec<String> = if vip {
        vec![service_vip(&swarm)]
    } else {
        containers.values().cloned().collect()
    };
    let benches: Vec<(Command, std::process::Child)> = targets
        .iter()
        .map(|addr| {
            let url = format!("http://{addr}:5000");
            eprintln!("swarm: berth-bench --url {url} --scenarios image_200_layers --quick");
            let mut cmd = docker();
            cmd.args(["run", "--rm", "--label", &swarm.client_label()])
                .args(["--network", &swarm.network()])
                .args(["--entrypoint", "berth-bench", &swarm.image_ref()])
                .args(["--url", &url, "--scenarios", "image_200_layers", "--quick"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run `{}`: {e}", describe(&cmd)));
            (cmd, child)
        })
        .collect();
    let deadline = Instant::now() + SETTLE;
    for (cmd, mut child) in benches {
        while child.try_wait().expect("berth-bench container").is_none() {
            // The guard removes the container, which ends `docker run`.
            assert!(
                Instant::now() < deadline,
                "`{}` has not finished after {SETTLE:?}: a request the registry never answered?",
                describe(&cmd)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let out = child.wait_with_output().expect("berth-bench container");
        assert!(out.status.success(), "{}", report(&cmd, &out));
    }
}
