//! A real OpenStack Swift for tests: an all-in-one cluster (proxy, account, container and object
//! servers, one device, one replica) in a temporary directory, on free loopback ports, with its
//! own memcached; stopped when the test drops it.
//!
//! The servers are Debian's (`swift-proxy`, `swift-account`, `swift-container`, `swift-object`,
//! run as `/usr/bin/swift-*-server <conf> -v` in the foreground, one process each, `workers = 0`).
//! Authentication is tempauth: user [`Swift::USERNAME`] with key [`Swift::PASSWORD`] owns account
//! `AUTH_test`; tokens come from `GET /auth/v1.0` and expire after the token life the instance
//! was started with (a day, or what [`Swift::start_with_token_life`] says, so that a test can
//! watch one expire). The proxy also runs `tempurl` (the account's key is set at start,
//! [`Swift::temp_url_key`]), `slo` and `dlo` (large objects), `bulk`, `copy` and `healthcheck`.
//!
//! What is not per instance: Swift reads `/etc/swift/swift.conf` (the hash path prefix and suffix,
//! the storage policies) from that fixed path whatever its `swift_dir` says, so the harness
//! writes that file, always with the same content, replacing the package's sample. Everything
//! else (configurations, rings, devices, logs) lives in the temporary directory: every server
//! has `swift_dir` pointing there and loads its rings from it.
//!
//! Swift listens with `SO_REUSEPORT`, so a port picked free and then taken by another instance
//! would be shared silently, the kernel splitting connections between the two. The harness
//! therefore checks that each of its ports has exactly one listener and starts over on other
//! ports when one does not.
//!
//! Self-contained (std and `tempfile` only): the library's own unit tests include this file with
//! `#[path]`, beside the integration tests that include it through `common`.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Swift reads its cluster-wide settings; fixed in Swift's code.
const SWIFT_CONF: &str = "/etc/swift/swift.conf";
/// What the harness puts there. Identical for every instance, so concurrent tests rewriting it
/// change nothing for servers already running.
const SWIFT_CONF_CONTENT: &str = "\
# Written by Berth's test harness (tests/common/swift.rs).
[swift-hash]
swift_hash_path_suffix = berth-test-suffix
swift_hash_path_prefix = berth-test-prefix

[storage-policy:0]
name = Policy-0
default = yes
";
/// The interpreter the packaged servers run with (a `python3` earlier on `PATH`, such as
/// pyenv's, does not have the `swift` modules).
const PYTHON: &str = "/usr/bin/python3";
/// tempauth's own default token life.
const DEFAULT_TOKEN_LIFE_SECS: u64 = 86_400;
/// How long start-up (and a restart of the proxy) may take before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How many sets of ports to try when one was taken before the servers bound it.
const PORT_ATTEMPTS: usize = 8;
/// Timeout of each request the harness makes.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of each log shown when start-up fails.
const LOG_TAIL_LINES: usize = 40;

/// Builds the three one-device rings (part power 10, one replica, min part hours 1) in one
/// interpreter: what `swift-ring-builder <ring>.builder create 10 1 1`, `add
/// r1z1-127.0.0.1:PORT/d1 100` and `rebalance` do, in a second instead of nine start-ups of
/// the command. Arguments: the directory, then `<ring>=<port>` for each ring.
const RING_SCRIPT: &str = r#"
import os, sys
from swift.common.ring import RingBuilder
swift_dir = sys.argv[1]
for arg in sys.argv[2:]:
    name, port = arg.split('=')
    builder = RingBuilder(10, 1, 1)
    builder.add_dev({'region': 1, 'zone': 1, 'ip': '127.0.0.1', 'port': int(port),
                     'replication_ip': '127.0.0.1', 'replication_port': int(port),
                     'device': 'd1', 'weight': 100.0, 'meta': ''})
    builder.rebalance()
    builder.get_ring().save(os.path.join(swift_dir, name + '.ring.gz'))
    builder.save(os.path.join(swift_dir, name + '.builder'))
"#;

/// The storage servers behind the proxy, as named in their programs and rings.
const STORAGE_SERVERS: [&str; 3] = ["account", "container", "object"];

/// A running Swift all-in-one owned by a test.
pub struct Swift {
    token_life: u64,
    /// The proxy's port (auth and storage URLs).
    proxy_port: u16,
    /// memcached's port.
    memcached_port: u16,
    /// The account, container and object servers' ports, in [`STORAGE_SERVERS`] order.
    storage_ports: [u16; 3],
    /// memcached and the storage servers; they keep running across [`Swift::stop`].
    backends: Vec<Process>,
    /// The proxy, `None` while stopped.
    proxy: Option<Process>,
    tmp: tempfile::TempDir,
}

/// One server process and the file its output goes to.
struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
    /// The port it listens on.
    port: u16,
}

/// Why an attempt to start failed.
enum StartError {
    /// A port was taken by someone else: try again on other ports.
    PortClash(String),
    Fatal(String),
}

impl Swift {
    /// The tempauth user (`<account>:<user>`).
    pub const USERNAME: &'static str = "test:tester";
    /// Its key.
    pub const PASSWORD: &'static str = "testing";
    /// The account the user owns.
    pub const ACCOUNT: &'static str = "AUTH_test";
    /// The account's key for temporary URLs (`X-Account-Meta-Temp-URL-Key`).
    pub const TEMP_URL_KEY: &'static str = "berth-test-temp-url-key";

    /// A new cluster whose tokens live a day (tempauth's default).
    pub fn start() -> Swift {
        Swift::start_with_token_life(DEFAULT_TOKEN_LIFE_SECS)
    }

    /// A new cluster whose tokens expire `secs` seconds after they were issued.
    pub fn start_with_token_life(secs: u64) -> Swift {
        for program in [
            "/usr/bin/swift-proxy-server",
            "/usr/bin/swift-account-server",
            "/usr/bin/swift-container-server",
            "/usr/bin/swift-object-server",
            "/usr/bin/memcached",
        ] {
            assert!(
                Path::new(program).is_file(),
                "{program} is missing (install Debian's swift, swift-proxy, swift-account, \
                 swift-container, swift-object and memcached packages; scripts/test does)"
            );
        }
        write_swift_conf();
        let tmp = tempfile::Builder::new()
            .prefix("berth-swift")
            .tempdir()
            .expect("temporary directory for Swift");
        for dir in ["etc", "cache", "log"] {
            std::fs::create_dir_all(tmp.path().join(dir)).expect("Swift directories");
        }
        let mut swift = Swift {
            token_life: secs,
            proxy_port: 0,
            memcached_port: 0,
            storage_ports: [0; 3],
            backends: Vec::new(),
            proxy: None,
            tmp,
        };
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            swift.proxy_port = free_port();
            swift.memcached_port = free_port();
            swift.storage_ports = [free_port(), free_port(), free_port()];
            match swift.start_all() {
                Ok(()) => return swift,
                Err(StartError::PortClash(why)) => {
                    swift.kill_all();
                    last = why;
                }
                Err(StartError::Fatal(why)) => {
                    swift.kill_all();
                    panic!("{why}");
                }
            }
        }
        panic!("Swift found no free ports in {PORT_ATTEMPTS} attempts: {last}");
    }

    /// `http://127.0.0.1:PORT/auth/v1.0`, tempauth's v1 endpoint.
    pub fn auth_url(&self) -> String {
        format!("http://127.0.0.1:{}/auth/v1.0", self.proxy_port)
    }

    /// [`Swift::USERNAME`].
    pub fn username(&self) -> &str {
        Swift::USERNAME
    }

    /// [`Swift::PASSWORD`].
    pub fn password(&self) -> &str {
        Swift::PASSWORD
    }

    /// `http://127.0.0.1:PORT/v1/AUTH_test`, the account's URL (what tempauth answers as
    /// `X-Storage-Url`).
    pub fn storage_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/{}", self.proxy_port, Swift::ACCOUNT)
    }

    /// The key for temporary URLs set on the account at start.
    pub fn temp_url_key(&self) -> &str {
        Swift::TEMP_URL_KEY
    }

    /// How long a token lives, in seconds.
    pub fn token_life(&self) -> u64 {
        self.token_life
    }

    /// A token from tempauth (`GET /auth/v1.0` with `X-Auth-User` and `X-Auth-Key`). tempauth
    /// hands out the same token until it expires.
    pub fn token(&self) -> String {
        match self.try_token() {
            Ok(token) => token,
            Err(e) => panic!("Swift authentication failed: {e}"),
        }
    }

    /// Creates a container (`PUT` with a fresh token) and returns its name.
    pub fn create_container(&self, name: &str) -> String {
        let token = self.token();
        let path = format!("/v1/{}/{name}", Swift::ACCOUNT);
        let resp = http(
            self.proxy_port,
            "PUT",
            &path,
            &[("X-Auth-Token", &token), ("Content-Length", "0")],
        )
        .unwrap_or_else(|e| panic!("PUT {path}: {e}"));
        assert!(
            resp.status == 201 || resp.status == 202,
            "PUT {path}: {} {}",
            resp.status,
            String::from_utf8_lossy(&resp.body)
        );
        name.to_string()
    }

    /// Stops the proxy (SIGKILL): clients see connections refused. The storage servers and
    /// memcached keep running, so data and tokens survive until [`Swift::start_again`].
    pub fn stop(&mut self) {
        if let Some(mut proxy) = self.proxy.take() {
            proxy.kill();
        }
    }

    /// Starts the proxy again after [`Swift::stop`], on the same port, and waits until it
    /// serves the account.
    pub fn start_again(&mut self) {
        if self.proxy.is_some() {
            return;
        }
        let result = self.spawn_proxy().and_then(|()| self.wait_ready(false));
        match result {
            Ok(()) => {}
            Err(StartError::PortClash(why) | StartError::Fatal(why)) => {
                panic!("Swift's proxy did not start again: {why}")
            }
        }
    }

    /// The last lines of every server's log.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for p in self.backends.iter().chain(self.proxy.iter()) {
            let log = std::fs::read_to_string(&p.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            let _ = writeln!(out, "--- {} ({}) ---", p.name, p.log.display());
            for line in tail {
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }

    // ---- internals ---------------------------------------------------------------------------

    /// One attempt on the ports chosen: configurations, rings, every process, then readiness.
    fn start_all(&mut self) -> Result<(), StartError> {
        // A fresh device: nothing left from an attempt that clashed.
        let device = self.tmp.path().join("srv");
        let _ = std::fs::remove_dir_all(&device);
        std::fs::create_dir_all(device.join("d1")).expect("Swift's device directory");
        self.write_configs();
        self.build_rings()?;
        let memcached = self.spawn(
            "memcached",
            Command::new("/usr/bin/memcached").args([
                "-l",
                "127.0.0.1",
                "-p",
                &self.memcached_port.to_string(),
                // No UDP listener: it would be one more port to clash on.
                "-U",
                "0",
                "-m",
                "64",
                "-u",
                &user_name(),
            ]),
            self.memcached_port,
        )?;
        self.backends.push(memcached);
        for (i, server) in STORAGE_SERVERS.iter().enumerate() {
            let mut cmd = Command::new(format!("/usr/bin/swift-{server}-server"));
            cmd.arg(self.conf_path(server)).arg("-v");
            let process = self.spawn(server, &mut cmd, self.storage_ports[i])?;
            self.backends.push(process);
        }
        self.spawn_proxy()?;
        self.wait_ready(true)
    }

    fn spawn_proxy(&mut self) -> Result<(), StartError> {
        let mut cmd = Command::new("/usr/bin/swift-proxy-server");
        cmd.arg(self.conf_path("proxy")).arg("-v");
        self.proxy = Some(self.spawn("proxy", &mut cmd, self.proxy_port)?);
        Ok(())
    }

    /// Starts a program with its output appended to `log/<name>.log`.
    fn spawn(
        &self,
        name: &'static str,
        cmd: &mut Command,
        port: u16,
    ) -> Result<Process, StartError> {
        let log = self.tmp.path().join("log").join(format!("{name}.log"));
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| StartError::Fatal(format!("open {}: {e}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(|e| StartError::Fatal(format!("{}: {e}", log.display())))?;
        clean_env(cmd);
        let child = cmd
            .current_dir(self.tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| StartError::Fatal(format!("cannot run {:?}: {e}", cmd.get_program())))?;
        Ok(Process {
            name,
            child,
            log,
            port,
        })
    }

    /// Waits until every server answers its health check, the port of each has no other
    /// listener, tempauth issues a token and the account holds the temporary URL key (set here
    /// when `set_key`).
    fn wait_ready(&mut self, set_key: bool) -> Result<(), StartError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut key_set = !set_key;
        loop {
            self.check_processes()?;
            let last = match self.probe(&mut key_set) {
                Ok(()) => {
                    // Checked once more now that all are listening: a clash shows as a second
                    // listener on one of the ports.
                    self.check_processes()?;
                    return Ok(());
                }
                Err(why) => why,
            };
            if Instant::now() > deadline {
                return Err(StartError::Fatal(format!(
                    "Swift is not ready after {} s: {last}\n{}",
                    START_TIMEOUT.as_secs(),
                    self.logs()
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// One round of readiness checks; the error says which one failed.
    fn probe(&self, key_set: &mut bool) -> Result<(), String> {
        for (i, server) in STORAGE_SERVERS.iter().enumerate() {
            expect_ok(self.storage_ports[i], "GET", "/healthcheck", &[])
                .map_err(|e| format!("{server} server: {e}"))?;
        }
        expect_ok(self.proxy_port, "GET", "/healthcheck", &[])
            .map_err(|e| format!("proxy: {e}"))?;
        let token = self.try_token()?;
        let account = format!("/v1/{}", Swift::ACCOUNT);
        if !*key_set {
            // The first POST also creates the account (`account_autocreate`).
            expect_ok(
                self.proxy_port,
                "POST",
                &account,
                &[
                    ("X-Auth-Token", &token),
                    ("X-Account-Meta-Temp-URL-Key", Swift::TEMP_URL_KEY),
                    ("Content-Length", "0"),
                ],
            )
            .map_err(|e| format!("setting the temporary URL key: {e}"))?;
            *key_set = true;
        }
        let head = expect_ok(
            self.proxy_port,
            "HEAD",
            &account,
            &[("X-Auth-Token", &token)],
        )
        .map_err(|e| format!("account: {e}"))?;
        match head.header("x-account-meta-temp-url-key") {
            Some(key) if key == Swift::TEMP_URL_KEY => Ok(()),
            other => Err(format!("account's temporary URL key is {other:?}")),
        }
    }

    /// Fails when a process has exited (a port clash when its log says it could not bind), or
    /// when one of the ports has a listener besides ours.
    fn check_processes(&mut self) -> Result<(), StartError> {
        let mut exited = None;
        for p in self.backends.iter_mut().chain(self.proxy.iter_mut()) {
            if let Ok(Some(status)) = p.child.try_wait() {
                exited = Some((p.name, p.port, status, p.log.clone()));
                break;
            }
        }
        if let Some((name, port, status, log)) = exited {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let why = format!("{name} exited ({status})");
            if text.contains("Could not bind") || text.contains("Address already in use") {
                return Err(StartError::PortClash(format!(
                    "{why}: port {port} is taken"
                )));
            }
            return Err(StartError::Fatal(format!("{why}\n{}", self.logs())));
        }
        for p in self.backends.iter().chain(self.proxy.iter()) {
            let n = listeners(p.port);
            if n > 1 {
                return Err(StartError::PortClash(format!(
                    "{} listeners on {}'s port {}",
                    n, p.name, p.port
                )));
            }
        }
        Ok(())
    }

    fn try_token(&self) -> Result<String, String> {
        let resp = expect_ok(
            self.proxy_port,
            "GET",
            "/auth/v1.0",
            &[
                ("X-Auth-User", Swift::USERNAME),
                ("X-Auth-Key", Swift::PASSWORD),
            ],
        )
        .map_err(|e| format!("GET /auth/v1.0: {e}"))?;
        resp.header("x-auth-token")
            .map(str::to_string)
            .ok_or_else(|| "GET /auth/v1.0: no X-Auth-Token".to_string())
    }

    fn conf_path(&self, server: &str) -> PathBuf {
        self.tmp
            .path()
            .join("etc")
            .join(format!("{server}-server.conf"))
    }

    fn write_configs(&self) {
        let root = self.tmp.path();
        let etc = root.join("etc");
        // Settings every server shares. `log_address` names something that is not a socket so
        // that Swift's syslog handler sends nowhere useful (UDP to localhost:514) instead of
        // into the host's journal; `-v` adds the console handler whose output the log files get.
        let common = |port: u16, name: &str| {
            format!(
                "[DEFAULT]\n\
                 bind_ip = 127.0.0.1\n\
                 bind_port = {port}\n\
                 bind_timeout = 2\n\
                 workers = 0\n\
                 user = {user}\n\
                 swift_dir = {etc}\n\
                 devices = {devices}\n\
                 mount_check = false\n\
                 disable_fallocate = true\n\
                 fallocate_reserve = 0\n\
                 recon_cache_path = {cache}\n\
                 log_name = {name}\n\
                 log_address = /dev/null\n\
                 log_level = INFO\n",
                user = user_name(),
                etc = etc.display(),
                devices = root.join("srv").display(),
                cache = root.join("cache").display(),
            )
        };
        for (i, server) in STORAGE_SERVERS.iter().enumerate() {
            let conf = format!(
                "{}\n\
                 [pipeline:main]\n\
                 pipeline = healthcheck {server}-server\n\
                 \n\
                 [app:{server}-server]\n\
                 use = egg:swift#{server}\n\
                 \n\
                 [filter:healthcheck]\n\
                 use = egg:swift#healthcheck\n",
                common(self.storage_ports[i], &format!("{server}-server")),
            );
            write(&etc.join(format!("{server}-server.conf")), &conf);
        }
        // The pipeline's order is Swift's sample's: tempurl before the auth it overrides
        // (`allow_overrides`), copy, slo, dlo and versioned_writes after it (the proxy would
        // insert versioned_writes itself). Timeouts are longer than the defaults so that a
        // loaded test machine does not turn slow storage servers into 503s.
        let proxy = format!(
            "{}\n\
             [pipeline:main]\n\
             pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats \
             bulk tempurl tempauth copy slo dlo versioned_writes proxy-logging proxy-server\n\
             \n\
             [app:proxy-server]\n\
             use = egg:swift#proxy\n\
             account_autocreate = true\n\
             allow_account_management = true\n\
             conn_timeout = 5\n\
             node_timeout = 30\n\
             \n\
             [filter:tempauth]\n\
             use = egg:swift#tempauth\n\
             user_test_tester = {password} .admin\n\
             token_life = {token_life}\n\
             allow_overrides = true\n\
             \n\
             [filter:cache]\n\
             use = egg:swift#memcache\n\
             memcache_servers = 127.0.0.1:{memcached}\n\
             \n\
             [filter:catch_errors]\nuse = egg:swift#catch_errors\n\n\
             [filter:gatekeeper]\nuse = egg:swift#gatekeeper\n\n\
             [filter:healthcheck]\nuse = egg:swift#healthcheck\n\n\
             [filter:proxy-logging]\nuse = egg:swift#proxy_logging\n\n\
             [filter:listing_formats]\nuse = egg:swift#listing_formats\n\n\
             [filter:bulk]\nuse = egg:swift#bulk\n\n\
             [filter:tempurl]\nuse = egg:swift#tempurl\n\n\
             [filter:copy]\nuse = egg:swift#copy\n\n\
             [filter:slo]\nuse = egg:swift#slo\n\n\
             [filter:dlo]\nuse = egg:swift#dlo\n\n\
             [filter:versioned_writes]\nuse = egg:swift#versioned_writes\n",
            common(self.proxy_port, "proxy-server"),
            password = Swift::PASSWORD,
            token_life = self.token_life,
            memcached = self.memcached_port,
        );
        write(&etc.join("proxy-server.conf"), &proxy);
    }

    fn build_rings(&self) -> Result<(), StartError> {
        let etc = self.tmp.path().join("etc");
        let mut cmd = Command::new(PYTHON);
        cmd.arg("-c").arg(RING_SCRIPT).arg(&etc);
        for (i, server) in STORAGE_SERVERS.iter().enumerate() {
            cmd.arg(format!("{server}={}", self.storage_ports[i]));
        }
        clean_env(&mut cmd);
        let out = cmd
            .output()
            .map_err(|e| StartError::Fatal(format!("cannot run {PYTHON}: {e}")))?;
        if !out.status.success() {
            return Err(StartError::Fatal(format!(
                "building the rings failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    fn kill_all(&mut self) {
        self.stop();
        for mut p in self.backends.drain(..) {
            p.kill();
        }
    }
}

impl Drop for Swift {
    fn drop(&mut self) {
        self.kill_all();
    }
}

impl Process {
    /// SIGKILL, then waits so that no zombie is left.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes [`SWIFT_CONF_CONTENT`] to [`SWIFT_CONF`] unless it is there already: to a temporary
/// name, then renamed, so a server starting meanwhile reads the old file or the new one.
fn write_swift_conf() {
    let path = Path::new(SWIFT_CONF);
    if std::fs::read_to_string(path).ok().as_deref() == Some(SWIFT_CONF_CONTENT) {
        return;
    }
    let dir = path.parent().expect("/etc/swift");
    let result = std::fs::create_dir_all(dir).and_then(|()| {
        let tmp = tempfile::NamedTempFile::new_in(dir)?;
        std::fs::write(tmp.path(), SWIFT_CONF_CONTENT)?;
        let mut perms = std::fs::metadata(tmp.path())?.permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
        std::fs::set_permissions(tmp.path(), perms)?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    });
    if let Err(e) = result {
        panic!(
            "cannot write {SWIFT_CONF}, which Swift reads from that fixed path ({e}); \
             run the tests as root or write it with this content:\n{SWIFT_CONF_CONTENT}"
        );
    }
}

/// The name of the user the tests run as; the servers run as that user too (`user`, which
/// Swift switches to, would otherwise be `swift`, who cannot write the temporary directory).
fn user_name() -> String {
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0);
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            (fields.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_string())
        })
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "root".to_string())
}

/// A port that was free on 127.0.0.1 a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// How many sockets listen on `port` (any address, IPv4 or IPv6), from `/proc/net/tcp*`.
fn listeners(port: u16) -> usize {
    let port_hex = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .map(|table| {
            table
                .lines()
                .skip(1)
                .filter(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    // local_address is the second field, the state (0A = LISTEN) the fourth.
                    fields.len() > 3 && fields[1].ends_with(&port_hex) && fields[3] == "0A"
                })
                .count()
        })
        .sum()
}

fn write(path: &Path, content: &str) {
    std::fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Keeps a Python environment (pyenv's `PYTHONPATH`, a virtualenv, ...) from reaching the
/// packaged Swift programs.
fn clean_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PYTHON") {
            cmd.env_remove(&key);
        }
    }
    cmd.env_remove("VIRTUAL_ENV");
}

/// An HTTP response as the harness needs it.
struct Response {
    status: u16,
    /// Header names in lower case.
    headers: Vec<(String, String)>,
    /// The body as sent (not de-chunked); only shown in messages.
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A request without a body to 127.0.0.1:`port` over a fresh connection (`Connection: close`,
/// so the response ends where the stream does).
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> Result<Response, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(HTTP_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(HTTP_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (name, value) in headers {
        let _ = write!(request, "{name}: {value}\r\n");
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("incomplete response: {:?}", String::from_utf8_lossy(&raw)))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

/// [`http`], failing unless the status is 2xx.
fn expect_ok(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Response, String> {
    let resp = http(port, method, path, headers)?;
    if (200..300).contains(&resp.status) {
        Ok(resp)
    } else {
        Err(format!(
            "{method} {path}: {} {}",
            resp.status,
            String::from_utf8_lossy(&resp.body).trim()
        ))
    }
}
