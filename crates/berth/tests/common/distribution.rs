//! Debian's `docker-registry` (Distribution 2.8) on a free loopback port, configured by the test
//! (its storage section and any other top-level sections), logging to a file in its directory.
//! Stopped on drop; its log's end is printed when a test panics.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How much of the log a failing test prints.
const LOG_TAIL: usize = 8000;

/// A running Distribution.
pub struct Distribution {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub host: String,
    log: PathBuf,
}

impl Distribution {
    /// Starts Distribution in `dir` with `storage` (the YAML lines under `storage:`, indented by
    /// two spaces) and `extra` top-level YAML (e.g. an `auth:` section).
    pub fn start(dir: &Path, storage: &str, extra: &str) -> Distribution {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let config = dir.join("distribution.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n{storage}  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:{port}\n{extra}"
            ),
        )
        .expect("write distribution.yml");
        let log = dir.join("distribution.log");
        let out = std::fs::File::create(&log).expect("create distribution.log");
        let mut cmd = Command::new("docker-registry");
        // Only the configuration speaks to the AWS SDK: with `AWS_CA_BUNDLE` set (as it is on
        // machines with a custom CA), Distribution 2.8 panics at start ("unable to load custom
        // CA bundle, HTTPClient's transport unsupported type").
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("AWS_") {
                cmd.env_remove(key);
            }
        }
        let child = cmd
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::from(out.try_clone().expect("log handle")))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("docker-registry (Debian package docker-registry) must be installed");
        let mut d = Distribution {
            child,
            host: format!("127.0.0.1:{port}"),
            log,
        };
        d.wait_until_listening();
        d
    }

    /// Distribution on a local directory `root`.
    pub fn on_directory(dir: &Path, root: &Path, extra: &str) -> Distribution {
        let storage = format!("  filesystem:\n    rootdirectory: {}\n", root.display());
        Distribution::start(dir, &storage, extra)
    }

    fn wait_until_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("docker-registry exited ({status}):\n{}", self.log());
            }
            if std::net::TcpStream::connect(&self.host).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything Distribution logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let log = self.log();
            let start = log.len().saturating_sub(LOG_TAIL);
            let start = (start..log.len())
                .find(|&i| log.is_char_boundary(i))
                .unwrap_or(log.len());
            eprintln!("--- docker-registry log (end) ---\n{}", &log[start..]);
        }
    }
}
