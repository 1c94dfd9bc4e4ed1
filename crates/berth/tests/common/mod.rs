//! Test harness: starts the real `berth` binary on an ephemeral loopback port with its own data
//! directory, and stops it (SIGKILL on drop, or on demand to simulate a crash).
#![allow(dead_code)]

pub mod builtin;
pub mod cli;
pub mod distribution;
pub mod oci;

pub mod image;

pub mod token;

pub mod garage;
pub mod nginx;
pub mod postgres;
pub mod slapd;
pub mod swift;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to start `berth serve`.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    /// Arguments after `serve`.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Where stderr goes (inherited when unset).
    pub stderr: Option<PathBuf>,
    /// Leave `RUST_LOG` unset so the configuration's log level applies.
    pub keep_log_level: bool,
}

/// A running `berth serve` process.
pub struct Registry {
    child: Option<Child>,
    /// The address the server listens on (127.0.0.1:<ephemeral>).
    pub addr: SocketAddr,
    /// The debug listener's address, when one is configured.
    pub debug_addr: Option<SocketAddr>,
    /// The data directory (storage + metadata). Survives restarts of the process.
    pub data: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Registry {
    /// Start a server with a fresh temporary data directory.
    pub fn start() -> Registry {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("data");
        let mut r = Registry::start_on(&data, &[]);
        r._tmp = Some(tmp);
        r
    }

    /// Start a server on an existing (or new) data directory, with extra CLI arguments.
    pub fn start_on(data: &Path, extra: &[&str]) -> Registry {
        let mut args: Vec<String> = vec!["--addr".into(), "127.0.0.1:0".into(), "--data".into()];
        args.push(data.to_string_lossy().into_owned());
        args.extend(extra.iter().map(|s| s.to_string()));
        let launch = Launch {
            args,
            ..Launch::default()
        };
        let mut r = Registry::launch(&launch).unwrap_or_else(|e| panic!("{e}"));
        r.data = data.to_path_buf();
        r
    }

    /// Start `berth serve <args>` as `launch` says. Fails (with the server's stderr when it was
    /// captured) if the process exits before it reports its listening address.
    pub fn launch(launch: &Launch) -> Result<Registry, String> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.arg("serve")
            .args(&launch.args)
            .env(
                "RUST_LOG",
                std::env::var("BERTH_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        if launch.keep_log_level {
            cmd.env_remove("RUST_LOG");
        }
        match &launch.stderr {
            Some(path) => {
                let f = std::fs::File::create(path).expect("stderr file");
                cmd.stderr(Stdio::from(f));
            }
            None => {
                cmd.stderr(Stdio::inherit());
            }
        }
        let mut child = cmd.spawn().expect("spawn berth");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let debug = std::sync::Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
        let debug_seen = debug.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("debug listening on ") {
                    *debug_seen.lock().unwrap() = rest.trim().parse().ok();
                }
                if let Some(rest) = line.strip_prefix("berth listening on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(rest.trim().to_string());
                    }
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                let stderr = launch
                    .stderr
                    .as_ref()
                    .and_then(|p| std::fs::read_to_string(p).ok())
                    .unwrap_or_default();
                return Err(format!(
                    "berth did not report its listening address (exit: {status:?}); stderr:\n{stderr}"
                ));
            }
        };
        let debug_addr = *debug.lock().unwrap();
        Ok(Registry {
            child: Some(child),
            addr: addr.parse().expect("listening address"),
            debug_addr,
            data: PathBuf::new(),
            _tmp: None,
        })
    }

    /// The process id of the running server.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// `http://127.0.0.1:PORT` + path.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `127.0.0.1:PORT`, as clients such as skopeo want it.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Kill the process with SIGKILL (a crash) and wait for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Send SIGTERM and wait (up to 30 s) for a graceful exit; returns the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Restart on the same data directory (after `kill` or `terminate`); the port changes.
    pub fn restart(&mut self) {
        self.kill();
        let tmp = self._tmp.take();
        let mut next = Registry::start_on(&self.data.clone(), &[]);
        next._tmp = tmp;
        *self = next;
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// sha256 digest string (`sha256:<hex>`) of some bytes, computed independently of the server.
/// Deterministic, seed-dependent bytes that do not compress trivially (test blobs).
pub fn pseudo_bytes(seed: &str, len: usize) -> Vec<u8> {
    let mut x: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.bytes() {
        x = (x ^ b as u64).wrapping_mul(0x1000_0000_01b3);
    }
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// sha512 digest string of some bytes.
pub fn sha512(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha512:{}", hex::encode(sha2::Sha512::digest(data)))
}

/// The Prometheus text of `reg`'s debug listener.
pub async fn metrics(reg: &Registry) -> String {
    let addr = reg.debug_addr.expect("a debug listener");
    oci::client()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// The sum of the samples of `name` whose labels include all of `labels` (0 when there are none:
/// a counter appears once it was first incremented).
pub fn sample_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labelset, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once('}')?,
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            let wanted = labels
                .iter()
                .all(|(k, v)| labelset.contains(&format!("{k}=\"{v}\"")));
            wanted.then(|| value.split_whitespace().next()?.parse::<f64>().ok())?
        })
        .sum()
}
