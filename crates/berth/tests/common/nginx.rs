//! A real nginx in front of several Berth instances: a load balancer as deployments run one,
//! started by the test that owns it on a free loopback port, with its configuration, pid file,
//! logs and temporary paths in a temporary directory.
//!
//! Plain round robin (no `ip_hash`, no stickiness), so consecutive requests of one client land on
//! different instances. Bodies stream both ways (no request or response buffering, no body size
//! limit), connections to the instances are kept alive, and an instance that fails once is
//! skipped for two seconds (`max_fails=1 fail_timeout=2s`). nginx passes a request to the next
//! instance only when it could not be sent, or when it is idempotent: a POST or PATCH that
//! reached a dying instance fails back to the client, which must retry it.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Registry;

/// How many ports to try when the one picked was taken before nginx bound it.
const PORT_ATTEMPTS: usize = 8;

/// A running nginx; killed (with its workers) when dropped.
pub struct Nginx {
    child: Child,
    addr: SocketAddr,
    tmp: tempfile::TempDir,
}

impl Nginx {
    /// nginx on a free 127.0.0.1 port, balancing over `upstreams` in turn.
    pub fn round_robin(upstreams: &[SocketAddr]) -> Nginx {
        assert!(!upstreams.is_empty(), "nginx needs at least one upstream");
        let tmp = tempfile::Builder::new()
            .prefix("berth-nginx")
            .tempdir()
            .expect("temporary directory for nginx");
        // Workers run as an unprivileged user when the tests run as root: let them reach the
        // temporary paths (nothing in the directory is secret).
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod nginx directory");
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let conf = tmp.path().join("nginx.conf");
            std::fs::write(&conf, config(tmp.path(), port, upstreams)).expect("write nginx.conf");
            match start(tmp.path(), &conf, port) {
                Ok(child) => {
                    return Nginx {
                        child,
                        addr: SocketAddr::from(([127, 0, 0, 1], port)),
                        tmp,
                    }
                }
                Err(failure) if failure.contains("Address already in use") => last = failure,
                Err(failure) => panic!("{failure}"),
            }
        }
        panic!("nginx found no free port in {PORT_ATTEMPTS} attempts:\n{last}");
    }

    /// The address it listens on (127.0.0.1:<port>).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`, as clients such as skopeo and docker want it.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT` + path.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A [`Registry`] handle addressing nginx, for the helpers that speak to a registry by its
    /// address (`common::oci`). It owns no process: killing or dropping it does nothing.
    pub fn front(&self) -> Registry {
        Registry {
            child: None,
            addr: self.addr,
            debug_addr: None,
            data: PathBuf::new(),
            _tmp: None,
        }
    }

    /// nginx's error log so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("error.log")).unwrap_or_default()
    }

    /// nginx's access log so far: one line a request, with the instance that served it.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // The master and its workers share the process group it was started in.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .output();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(dir: &Path, port: u16, upstreams: &[SocketAddr]) -> String {
    let d = dir.display();
    let mut servers = String::new();
    for u in upstreams {
        let _ = writeln!(servers, "        server {u} max_fails=1 fail_timeout=2s;");
    }
    format!(
        "# Written by the test harness.
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;

events {{
    worker_connections 1024;
}}

http {{
    log_format upstream '$remote_addr \"$request\" $status upstream=$upstream_addr';
    access_log {d}/access.log upstream;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;

    upstream berth {{
{servers}        keepalive 32;
    }}

    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;

        location / {{
            proxy_pass http://berth;
            proxy_http_version 1.1;
            # An empty Connection header keeps connections to the instances alive.
            proxy_set_header Connection \"\";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
        }}
    }}
}}
"
    )
}

/// Starts nginx and waits until it accepts connections; on failure returns its error output.
fn start(dir: &Path, conf: &Path, port: u16) -> Result<Child, String> {
    let stderr = dir.join("stderr.log");
    let mut child = Command::new(nginx_bin())
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(&stderr).expect("nginx stderr file"),
        ))
        // Its own process group, so that dropping it takes the workers too.
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run nginx (install Debian's nginx package): {e}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "nginx exited ({status}):\n{}{}",
                std::fs::read_to_string(&stderr).unwrap_or_default(),
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            ));
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "nginx does not accept connections on port {port}:\n{}",
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `nginx` from PATH, or Debian's /usr/sbin/nginx (not on a normal user's PATH).
fn nginx_bin() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("nginx"))
            .find(|p| p.is_file())
    });
    on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"))
}

/// A port that was free on 127.0.0.1 a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}
