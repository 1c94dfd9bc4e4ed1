//! A real Garage cluster for tests: the S3 API that Berth's object storage backend is tested
//! against. Every node is its own `garage server` process on loopback, with its own
//! configuration, metadata and data directories inside one temporary directory, listening on
//! free ports; all of them hold a storage role in zone `dc1`, and the replication factor is the
//! number of nodes, so every object is on every node and a write needs a quorum of them
//! (consistent mode: 2 of 3).
//!
//! [`Garage::start`] brings up three nodes, connects them, applies a layout, waits until every
//! node sees a healthy cluster and its S3 API answers, and makes one bucket ([`Garage::bucket`])
//! with one access key allowed to read, write and own it. [`Garage::stop_node`] kills a node
//! with SIGKILL and [`Garage::start_node`] brings it back on the same data, for tests of an
//! unavailable or recovering storage node. Dropping the value kills every node and removes the
//! directory.
//!
//! The `garage` binary is `GARAGE_BIN` if set, else `garage` on `PATH`, else the one
//! `cargo install garage --locked` puts in `$CARGO_HOME/bin` (which `scripts/test` does).
//! Each node's output goes to `nodeN.log` in the temporary directory; a failure panics with the
//! end of every node's log.
//!
//! Neither metadata nor data is fsynced: a test kills processes, never the machine, so what a
//! node wrote is in the page cache whether or not it was flushed.
//!
//! Self-contained (std and `tempfile` only): the library's own unit tests include this file with
//! `#[path]`, beside the integration tests that include it through `common`.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How many times to start a whole cluster when a port picked was taken before a node bound it.
const START_ATTEMPTS: usize = 4;
/// How long a node has to answer on its S3 port, and the cluster to become healthy.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long one `garage` command-line call may take before it is killed.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// The S3 region in every node's configuration; requests must be signed for it.
const REGION: &str = "garage";
/// The bucket [`Garage::start`] makes.
const BUCKET: &str = "berth";
/// The zone every node is assigned to.
const ZONE: &str = "dc1";
/// The capacity every node declares; only relative capacities matter to the layout.
const CAPACITY: &str = "1G";
/// How many lines of each node's log a failure shows.
const LOG_TAIL_LINES: usize = 40;

/// One `garage server` process and what it was configured with.
struct Node {
    /// Its configuration file (inside the temporary directory).
    config: PathBuf,
    /// Its metadata directory.
    meta: PathBuf,
    /// Its data directory.
    data: PathBuf,
    /// Where its stdout and stderr go.
    log: PathBuf,
    rpc_port: u16,
    s3_port: u16,
    admin_port: u16,
    /// Its node id and RPC address (`<hex id>@127.0.0.1:<port>`), once known.
    id: String,
    /// Where this run's lines start in `log`, so a failure shows the current process first.
    log_from: u64,
    child: Option<Child>,
}

/// A running Garage cluster owned by a test.
pub struct Garage {
    bin: PathBuf,
    nodes: Vec<Node>,
    /// Shared by every node: the key of the cluster's RPC network.
    rpc_secret: String,
    access_key: String,
    secret_key: String,
    tmp: tempfile::TempDir,
}

impl Garage {
    /// A 3-node cluster, replication factor 3, with one bucket and one key allowed
    /// read/write/owner on it.
    pub fn start() -> Garage {
        Garage::start_nodes(3)
    }

    /// A cluster of `n` nodes with replication factor `n` (every object on every node), with one
    /// bucket and one key allowed read/write/owner on it.
    pub fn start_nodes(n: usize) -> Garage {
        assert!(n >= 1, "a Garage cluster needs at least one node");
        let bin = garage_bin();
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            match Garage::try_start(&bin, n) {
                Ok(garage) => return garage,
                Err(failure) if failure.contains("Address already in use") => last = failure,
                Err(failure) => panic!("{failure}"),
            }
        }
        panic!("Garage found no free ports in {START_ATTEMPTS} attempts:\n{last}");
    }

    /// `http://127.0.0.1:PORT`: node 0's S3 API.
    pub fn endpoint(&self) -> String {
        self.endpoint_of(0)
    }

    /// `http://127.0.0.1:PORT`: the S3 API of node `node`. Every node serves every bucket.
    pub fn endpoint_of(&self, node: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[node].s3_port)
    }

    /// The S3 region requests are signed for.
    pub fn region(&self) -> &str {
        REGION
    }

    /// The bucket made by [`Garage::start`].
    pub fn bucket(&self) -> &str {
        BUCKET
    }

    /// The access key id (`GK...`), allowed on every bucket made here.
    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    /// Its secret key.
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// How many nodes the cluster has (running or stopped).
    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Berth's `s3:` section (indented for a `storage:` mapping) for `bucket`, everything below
    /// `/registry`, 5 MiB parts. Every string is quoted: a secret that looks like a number would
    /// otherwise reach the driver as another string than the one requests are signed with.
    pub fn s3_section(&self, bucket: &str) -> String {
        format!(
            "  s3:\n    accesskey: \"{}\"\n    secretkey: \"{}\"\n    region: \"{}\"\n    \
             regionendpoint: \"{}\"\n    bucket: \"{bucket}\"\n    rootdirectory: /registry\n    \
             chunksize: 5242880\n",
            self.access_key(),
            self.secret_key(),
            self.region(),
            self.endpoint()
        )
    }

    /// Creates another bucket, allowed read/write/owner to [`Garage::access_key`]; returns its
    /// name.
    pub fn create_bucket(&self, name: &str) -> String {
        self.cli(&["bucket", "create", name]);
        self.cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            name,
            "--key",
            &self.access_key,
        ]);
        name.to_string()
    }

    /// Kills node `i` with SIGKILL (a crash: no clean shutdown) and waits for it to exit. Its
    /// directories stay; [`Garage::start_node`] brings it back.
    pub fn stop_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the stopped node `i` again on the same configuration, data and ports, and waits
    /// until its S3 API answers and every running node sees every running node up.
    pub fn start_node(&mut self, i: usize) {
        assert!(
            self.nodes[i].child.is_none(),
            "Garage node {i} is already running"
        );
        let started = self.spawn(i).and_then(|()| {
            self.wait_answers(i)?;
            let running: Vec<usize> = (0..self.nodes.len())
                .filter(|&j| self.is_running(j))
                .collect();
            // The node connects to the others itself (its bootstrap peers), but a node counts a
            // peer up only over a connection of its own, and it retries a peer that refused it
            // only every 30 s: each one is told to connect now.
            let id = self.nodes[i].id.clone();
            for &j in running.iter().filter(|&&j| j != i) {
                self.cli_on(j, &["node", "connect", &id])?;
            }
            running
                .iter()
                .try_for_each(|&j| self.wait_healthy(j, running.len(), false))
        });
        if let Err(failure) = started {
            panic!("{failure}");
        }
    }

    /// Whether node `i` is running (not stopped by [`Garage::stop_node`]).
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// Runs `garage <args>` against node 0 (e.g. `["status"]` for diagnostics) and returns what
    /// it printed on stdout. Panics with its error output and the nodes' logs if it fails.
    pub fn cli(&self, args: &[&str]) -> String {
        self.cli_on(0, args)
            .unwrap_or_else(|failure| panic!("{failure}"))
    }

    /// Node `i`'s log so far (all of its runs).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    // ---- internals ---------------------------------------------------------------------------

    /// One attempt at a whole cluster, on freshly picked ports.
    fn try_start(bin: &Path, n: usize) -> Result<Garage, String> {
        let tmp = tempfile::Builder::new()
            .prefix("berth-garage")
            .tempdir()
            .expect("temporary directory for Garage");
        let ports = free_ports(3 * n);
        let nodes = (0..n)
            .map(|i| {
                let dir = tmp.path().join(format!("node{i}"));
                Node {
                    config: tmp.path().join(format!("node{i}.toml")),
                    meta: dir.join("meta"),
                    data: dir.join("data"),
                    log: tmp.path().join(format!("node{i}.log")),
                    rpc_port: ports[3 * i],
                    s3_port: ports[3 * i + 1],
                    admin_port: ports[3 * i + 2],
                    id: String::new(),
                    log_from: 0,
                    child: None,
                }
            })
            .collect();
        let mut garage = Garage {
            bin: bin.to_path_buf(),
            nodes,
            rpc_secret: random_hex(32),
            access_key: format!("GK{}", random_hex(12)),
            secret_key: random_hex(32),
            tmp,
        };
        for i in 0..n {
            garage.write_config(i, &[]);
        }
        for i in 0..n {
            garage.spawn(i)?;
        }
        for i in 0..n {
            garage.wait_answers(i)?;
        }
        garage.form_cluster()?;
        garage.cli_on(
            0,
            &[
                "key",
                "import",
                "--yes",
                "-n",
                "berth",
                &garage.access_key,
                &garage.secret_key,
            ],
        )?;
        garage.create_bucket(BUCKET);
        Ok(garage)
    }

    /// Connects node 0 to every other node, gives them all a storage role, applies the layout
    /// and waits until every node sees all of them up. Each configuration then names the other
    /// nodes as bootstrap peers, so a restarted node finds them at once instead of waiting for
    /// them to retry it.
    fn form_cluster(&mut self) -> Result<(), String> {
        let n = self.nodes.len();
        for i in 0..n {
            // The node writes its key pair when it starts, before its S3 API answers.
            let id = self.cli_on(i, &["node", "id", "-q"])?;
            self.nodes[i].id = id.trim().to_string();
        }
        for i in 1..n {
            let id = self.nodes[i].id.clone();
            self.cli_on(0, &["node", "connect", &id])?;
        }
        let mut assign = vec!["layout", "assign", "-z", ZONE, "-c", CAPACITY];
        let ids: Vec<String> = self.nodes.iter().map(|n| hex_id(&n.id)).collect();
        assign.extend(ids.iter().map(String::as_str));
        self.cli_on(0, &assign)?;
        self.cli_on(0, &["layout", "apply", "--version", "1"])?;
        for i in 0..n {
            self.wait_healthy(i, n, true)?;
        }
        let peers: Vec<String> = self.nodes.iter().map(|n| n.id.clone()).collect();
        for i in 0..n {
            let others: Vec<String> = peers
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(_, p)| p.clone())
                .collect();
            self.write_config(i, &others);
        }
        Ok(())
    }

    fn write_config(&self, i: usize, bootstrap_peers: &[String]) {
        let node = &self.nodes[i];
        let peers = bootstrap_peers
            .iter()
            .map(|p| format!("\"{p}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut config = String::new();
        let _ = write!(
            config,
            "# Written by the test harness.\n\
             metadata_dir = \"{meta}\"\n\
             data_dir = \"{data}\"\n\
             db_engine = \"sqlite\"\n\
             metadata_fsync = false\n\
             data_fsync = false\n\
             replication_factor = {n}\n\
             rpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
             rpc_public_addr = \"127.0.0.1:{rpc}\"\n\
             rpc_secret = \"{secret}\"\n\
             bootstrap_peers = [{peers}]\n\
             \n\
             [s3_api]\n\
             s3_region = \"{REGION}\"\n\
             api_bind_addr = \"127.0.0.1:{s3}\"\n\
             \n\
             [admin]\n\
             api_bind_addr = \"127.0.0.1:{admin}\"\n",
            meta = node.meta.display(),
            data = node.data.display(),
            n = self.nodes.len(),
            rpc = node.rpc_port,
            secret = self.rpc_secret,
            s3 = node.s3_port,
            admin = node.admin_port,
        );
        std::fs::write(&node.config, config)
            .unwrap_or_else(|e| panic!("write {}: {e}", node.config.display()));
    }

    /// Starts `garage server` for node `i`, its output appended to its log.
    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap_or_else(|e| panic!("open {}: {e}", node.log.display()));
        node.log_from = log.metadata().map(|m| m.len()).unwrap_or(0);
        let err = log.try_clone().expect("clone log file handle");
        let mut cmd = garage_command(&self.bin, &node.config);
        // Plain text in the log: Garage colours its output unless told not to.
        cmd.arg("server")
            .env("RUST_LOG", "garage=info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err));
        match cmd.spawn() {
            Ok(child) => {
                node.child = Some(child);
                Ok(())
            }
            Err(e) => Err(format!("start {}: {e}", self.bin.display())),
        }
    }

    /// Waits until node `i`'s S3 API answers an HTTP request; fails if the node exits or
    /// reports a port it could not bind (its S3 server failing alone does not end the process).
    fn wait_answers(&mut self, i: usize) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.nodes[i].s3_port));
        loop {
            if let Some(child) = self.nodes[i].child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.nodes[i].child = None;
                    return Err(self.failure(&format!("Garage node {i} exited ({status})")));
                }
            }
            if self.current_log(i).contains("Address already in use") {
                return Err(self.failure(&format!("Garage node {i} could not bind a port")));
            }
            if http_answers(addr) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.failure(&format!(
                    "Garage node {i} does not answer on its S3 port {}",
                    addr.port()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until node `i` sees `up` storage nodes up and, if `all` is set, a fully healthy
    /// cluster (every node up, every partition with all its copies reachable).
    fn wait_healthy(&self, i: usize, up: usize, all: bool) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            // `garage health` fails while the cluster is unavailable: that is waited out too.
            let report = self.cli_on(i, &["health"]).unwrap_or_default();
            let field = |name: &str| {
                report.lines().find_map(|line| {
                    let value = line.trim().strip_prefix(name)?.trim();
                    Some(value.to_string())
                })
            };
            let status = field("Cluster health:").unwrap_or_default();
            let nodes_up = field("Storage nodes up:").and_then(|v| v.parse::<usize>().ok());
            if nodes_up == Some(up) && (!all || status == "HEALTHY") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.failure(&format!(
                    "Garage node {i} does not see {up} storage nodes up{}; last `garage health`:\n\
                     {report}",
                    if all { " and a healthy cluster" } else { "" }
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs `garage -c <node i's config> <args>`; stdout on success, else what went wrong.
    fn cli_on(&self, i: usize, args: &[&str]) -> Result<String, String> {
        let mut cmd = garage_command(&self.bin, &self.nodes[i].config);
        cmd.args(args)
            .env("RUST_LOG", "garage=warn")
            .env("NO_COLOR", "1");
        let what = format!("garage {} (node {i})", args.join(" "));
        match run(cmd, CLI_TIMEOUT) {
            Ok((true, stdout, _)) => Ok(stdout),
            Ok((false, stdout, stderr)) => {
                Err(self.failure(&format!("{what} failed:\n{stdout}{stderr}")))
            }
            Err(e) => Err(self.failure(&format!("{what}: {e}"))),
        }
    }

    /// What this run of node `i` has logged.
    fn current_log(&self, i: usize) -> String {
        let log = self.log(i);
        log.get(self.nodes[i].log_from as usize..)
            .unwrap_or(&log)
            .to_string()
    }

    /// `what`, followed by the end of every node's log.
    fn failure(&self, what: &str) -> String {
        let mut out = format!("{what}\n");
        for i in 0..self.nodes.len() {
            let log = self.log(i);
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            let _ = writeln!(out, "--- node {i} log (last {} lines) ---", tail.len());
            for line in tail {
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop_node(i);
        }
    }
}

/// The `garage` binary: `GARAGE_BIN`, else `garage` on `PATH`, else `$CARGO_HOME/bin/garage`
/// (`$HOME/.cargo/bin/garage` without `CARGO_HOME`).
fn garage_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("GARAGE_BIN") {
        let bin = PathBuf::from(bin);
        assert!(bin.is_file(), "GARAGE_BIN={} is not a file", bin.display());
        return bin;
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")));
    on_path
        .into_iter()
        .chain(cargo_home.map(|home| home.join("bin")))
        .map(|dir| dir.join("garage"))
        .find(|bin| bin.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no `garage` binary (GARAGE_BIN, PATH, $CARGO_HOME/bin): scripts/test installs it \
                 with `cargo install garage --locked`"
            )
        })
}

/// `garage -c <config>`, without the caller's `GARAGE_*` variables (an RPC host, secret or
/// admin token meant for another cluster would override the configuration file).
fn garage_command(bin: &Path, config: &Path) -> Command {
    let mut cmd = Command::new(bin);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("GARAGE_") {
            cmd.env_remove(key);
        }
    }
    cmd.arg("-c").arg(config);
    cmd
}

/// Runs `cmd` to the end, killing it after `timeout`: (success, stdout, stderr).
fn run(mut cmd: Command, timeout: Duration) -> Result<(bool, String, String), String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    // Both pipes are drained while the program runs, so a long output cannot block it.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer in {} s", timeout.as_secs()));
            }
            Err(e) => return Err(format!("wait: {e}")),
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    Ok((status.success(), stdout, stderr))
}

/// Reads `pipe` to its end on a thread of its own; the thread returns the text.
fn drain<R: std::io::Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

/// Whether an HTTP server answers `GET /` on `addr` with a status line (any status: without
/// credentials Garage answers 403).
fn http_answers(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}

/// `count` distinct ports that were free on 127.0.0.1 a moment ago (all held open until the
/// last one is picked, so none repeats).
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect()
}

/// `bytes` random bytes from /dev/urandom, as lowercase hex.
fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The hexadecimal node id of `<id>@<address>`.
fn hex_id(id_at_addr: &str) -> String {
    id_at_addr.split('@').next().unwrap_or("").to_string()
}
