//! A real PostgreSQL server for tests: its own cluster in a temporary directory, listening on a
//! free loopback port, started and stopped by the test that owns it.
//!
//! The server is Debian's (`/usr/lib/postgresql/<version>/bin`, the newest version installed).
//! Its superuser `postgres` is reached only through the Unix socket inside the temporary
//! directory (trust); Berth connects over TCP as [`Postgres::USER`] with a password (SCRAM),
//! from any address. `fsync` stays on: crash tests rely on what the server acknowledged being
//! durable.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root every server program runs
//! as the `postgres` user that Debian's package creates (`runuser`), and the temporary directory
//! is handed to that user.
//!
//! Self-contained (std and `tempfile` only): the library's own unit tests include this file with
//! `#[path]`, beside the integration tests that include it through `common`.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// How many ports to try when the one picked was taken before the server bound it.
const PORT_ATTEMPTS: usize = 8;
/// How long `pg_ctl` waits for the server to start or stop.
const PG_CTL_TIMEOUT_SECS: &str = "120";

/// A running (or stopped) PostgreSQL server owned by a test.
pub struct Postgres {
    bin: PathBuf,
    /// `Some(uid)` when server programs run as the `postgres` user (the tests run as root).
    run_as: Option<u32>,
    port: u16,
    /// The addresses it listens on (`listen_addresses`), the first one is [`Postgres::host`].
    addrs: Vec<String>,
    /// The cluster's data directory (inside `tmp`).
    data: PathBuf,
    /// The Unix socket directory (inside `tmp`).
    socket: PathBuf,
    /// The server's log (inside `tmp`).
    log: PathBuf,
    running: bool,
    tmp: tempfile::TempDir,
}

impl Postgres {
    /// The role Berth connects as; it owns the databases made by [`Postgres::create_database`].
    pub const USER: &'static str = "berth";
    /// Its password.
    pub const PASSWORD: &'static str = "berth-test-password";

    /// A new cluster listening on 127.0.0.1, on a free port.
    pub fn start() -> Postgres {
        Postgres::start_listening("127.0.0.1")
    }

    /// A new cluster listening on the given addresses (`listen_addresses`, comma-separated, e.g.
    /// `"127.0.0.1,172.18.0.1"`), on a port free on all of them.
    pub fn start_listening(addrs: &str) -> Postgres {
        let bin = server_bin();
        let tmp = tempfile::Builder::new()
            .prefix("berth-pg")
            .tempdir()
            .expect("temporary directory for PostgreSQL");
        let run_as = if tmp.path().metadata().expect("stat temp dir").uid() == 0 {
            let uid = postgres_uid();
            std::os::unix::fs::chown(tmp.path(), Some(uid), None)
                .expect("hand the temporary directory to the postgres user");
            Some(uid)
        } else {
            None
        };
        let socket = tmp.path().join("socket");
        std::fs::create_dir(&socket).expect("socket directory");
        if let Some(uid) = run_as {
            std::os::unix::fs::chown(&socket, Some(uid), None).expect("chown socket directory");
        }
        let mut pg = Postgres {
            bin,
            run_as,
            port: 0,
            addrs: addrs.split(',').map(|a| a.trim().to_string()).collect(),
            data: tmp.path().join("data"),
            socket,
            log: tmp.path().join("server.log"),
            running: false,
            tmp,
        };
        pg.init_cluster();
        pg.start_on_free_port();
        pg.psql(
            "postgres",
            &format!(
                "CREATE ROLE {} LOGIN PASSWORD '{}'",
                ident(Postgres::USER),
                Postgres::PASSWORD
            ),
        );
        pg
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address clients connect to: the first address it listens on (`127.0.0.1` unless
    /// told otherwise).
    pub fn host(&self) -> &str {
        &self.addrs[0]
    }

    /// Creates a database owned by [`Postgres::USER`].
    pub fn create_database(&self, name: &str) {
        self.psql(
            "postgres",
            &format!(
                "CREATE DATABASE {} OWNER {}",
                ident(name),
                ident(Postgres::USER)
            ),
        );
    }

    /// `postgres://berth:<password>@<host>:<port>/<dbname>`.
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "postgres://{}:{}@{}:{}/{dbname}",
            Postgres::USER,
            Postgres::PASSWORD,
            self.host(),
            self.port
        )
    }

    /// Runs `sql` in `dbname` as the superuser (through the Unix socket) and returns what it
    /// printed: tuples only, unaligned (`|` between columns, one row a line). Panics with
    /// psql's error output if the statement fails.
    pub fn psql(&self, dbname: &str, sql: &str) -> String {
        let mut cmd = Command::new(self.bin.join("psql"));
        clean_env(&mut cmd);
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg("-h")
            .arg(&self.socket)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", dbname, "-c", sql])
            .current_dir(self.tmp.path());
        let out = output(&mut cmd);
        if !out.status.success() {
            panic!(
                "psql failed on {dbname:?} ({}): {sql}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops the server (`pg_ctl stop -m fast`: sessions are ended, a checkpoint is written).
    /// The data directory stays; [`Postgres::start_again`] brings it back.
    pub fn stop(&mut self) {
        let out = output(self.pg_ctl().args(["stop", "-w", "-m", "fast"]));
        if !out.status.success() {
            panic!("{}", self.failure("pg_ctl stop", &out));
        }
        self.running = false;
    }

    /// Starts the stopped (or killed) server again: same data directory, same port.
    pub fn start_again(&mut self) {
        if let Err(failure) = self.pg_ctl_start() {
            panic!("{failure}");
        }
    }

    /// A crash of the database server: SIGKILL to the postmaster and every process of its
    /// group (its backends), then waits until they are gone. No checkpoint, no clean shutdown;
    /// [`Postgres::start_again`] recovers from the write-ahead log.
    pub fn kill(&mut self) {
        if let Some(pid) = self.postmaster_pid() {
            kill_group(pid);
            let deadline = Instant::now() + Duration::from_secs(60);
            while group_alive(pid) {
                assert!(
                    Instant::now() < deadline,
                    "PostgreSQL processes of group {pid} still alive a minute after SIGKILL"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            // The postmaster is dead but, until whoever adopted it reaps it, a zombie that the
            // next server's stale-lock check (`kill(pid, 0)`) takes for a running postmaster.
            let deadline = Instant::now() + Duration::from_secs(10);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if Path::new(&format!("/proc/{pid}")).exists() {
                // Never reaped: the lock file belongs to a dead server, so it goes.
                let _ = std::fs::remove_file(self.data.join("postmaster.pid"));
            }
        }
        self.running = false;
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    // ---- internals ---------------------------------------------------------------------------

    fn init_cluster(&self) {
        // `--no-sync` only skips initdb's own final flush of the new cluster; the server itself
        // runs with fsync on.
        let mut cmd = self.server_command("initdb");
        cmd.arg("-D")
            .arg(&self.data)
            .args([
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
            ])
            .current_dir(self.tmp.path());
        let out = output(&mut cmd);
        if !out.status.success() {
            panic!(
                "initdb failed ({}):\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut hba = String::new();
        hba.push_str("# Written by the test harness.\n");
        hba.push_str("local all postgres trust\n");
        for net in ["0.0.0.0/0", "::/0"] {
            let _ = writeln!(
                hba,
                "host all {} {net} scram-sha-256",
                ident(Postgres::USER)
            );
        }
        self.write_owned(&self.data.join("pg_hba.conf"), &hba);
        let mut conf = std::fs::read_to_string(self.data.join("postgresql.conf"))
            .expect("read postgresql.conf");
        conf.push_str("\n# Test harness settings.\ninclude 'harness.conf'\n");
        self.write_owned(&self.data.join("postgresql.conf"), &conf);
    }

    /// Picks a free port, writes it into the configuration and starts; on a clash (the port
    /// was taken before the server bound it) tries another one.
    fn start_on_free_port(&mut self) {
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            self.port = free_port();
            self.write_settings();
            match self.pg_ctl_start() {
                Ok(()) => return,
                Err(failure) if failure.contains("could not bind") => last = failure,
                Err(failure) => panic!("{failure}"),
            }
        }
        panic!("PostgreSQL found no free port in {PORT_ATTEMPTS} attempts:\n{last}");
    }

    fn write_settings(&self) {
        let settings = format!(
            "listen_addresses = '{}'\n\
             port = {}\n\
             unix_socket_directories = '{}'\n\
             max_connections = 200\n\
             shared_buffers = 32MB\n\
             fsync = on\n\
             logging_collector = off\n\
             log_line_prefix = '%m [%p] %q%u@%d '\n\
             log_connections = off\n",
            self.addrs.join(","),
            self.port,
            self.socket.display()
        );
        self.write_owned(&self.data.join("harness.conf"), &settings);
    }

    fn pg_ctl_start(&mut self) -> Result<(), String> {
        // Where the new server's log starts, so a failure shows this attempt's lines.
        let from = std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let mut cmd = self.pg_ctl();
        cmd.arg("-l").arg(&self.log).args(["start", "-w"]);
        let out = output(&mut cmd);
        if !out.status.success() {
            let log = self.log();
            let tail = log.get(from as usize..).unwrap_or(&log);
            return Err(format!(
                "pg_ctl start failed ({}):\n{}{}--- server log ---\n{tail}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        self.running = true;
        self.wait_ready();
        Ok(())
    }

    /// `pg_ctl -w` returned once the server said it is ready; check it answers a query over
    /// the socket too, before any test talks to it.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut cmd = Command::new(self.bin.join("psql"));
            clean_env(&mut cmd);
            cmd.args(["-X", "-q", "-A", "-t"])
                .arg("-h")
                .arg(&self.socket)
                .arg("-p")
                .arg(self.port.to_string())
                .args(["-U", "postgres", "-d", "postgres", "-c", "SELECT 1"])
                .current_dir(self.tmp.path());
            let out = output(&mut cmd);
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "1" {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "PostgreSQL does not answer on port {}: {}\n--- server log ---\n{}",
                    self.port,
                    String::from_utf8_lossy(&out.stderr),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn pg_ctl(&self) -> Command {
        let mut cmd = self.server_command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-t", PG_CTL_TIMEOUT_SECS])
            .current_dir(self.tmp.path());
        cmd
    }

    /// A server program (`initdb`, `pg_ctl`), run as the `postgres` user when we are root.
    fn server_command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut cmd = match self.run_as {
            Some(_) => {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(path);
                c
            }
            None => Command::new(path),
        };
        clean_env(&mut cmd);
        cmd
    }

    /// Writes a file the server reads, owned by the user it runs as.
    fn write_owned(&self, path: &Path, content: &str) {
        std::fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        if let Some(uid) = self.run_as {
            std::os::unix::fs::chown(path, Some(uid), None)
                .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
        }
    }

    /// The postmaster's process id, from `postmaster.pid` (absent when it is not running).
    fn postmaster_pid(&self) -> Option<u32> {
        let pidfile = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        let pid: u32 = pidfile.lines().next()?.trim().parse().ok()?;
        alive(pid).then_some(pid)
    }

    fn failure(&self, what: &str, out: &Output) -> String {
        format!(
            "{what} failed ({}):\n{}{}--- server log ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self
                .pg_ctl()
                .args(["stop", "-w", "-m", "immediate"])
                .output();
        }
        // Whatever survived (a failed stop) goes with SIGKILL, so the directory can go.
        if let Some(pid) = self.postmaster_pid() {
            kill_group(pid);
        }
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` that has `initdb`.
fn server_bin() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version: Vec<u32> = name
                .split('.')
                .map(|p| p.parse().ok())
                .collect::<Option<_>>()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "no PostgreSQL server in /usr/lib/postgresql/*/bin (install Debian's postgresql \
             package; scripts/test does)"
        ),
    }
}

/// The uid of the `postgres` user (from /etc/passwd; Debian's package creates it).
fn postgres_uid() -> u32 {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            (fields.next()? == "postgres").then_some(())?;
            fields.nth(1)?.parse().ok()
        })
        .unwrap_or_else(|| {
            panic!(
                "running as root, but there is no `postgres` user to run PostgreSQL as \
                 (Debian's postgresql package creates it)"
            )
        })
}

/// A port that was free on 127.0.0.1 a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A quoted SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Keeps libpq's environment (a developer's `PGHOST`, `PGPASSWORD`, service files, ...) from
/// reaching the programs the harness runs.
fn clean_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("PGSYSCONFDIR", "/nonexistent")
        .env("PGPASSFILE", "/dev/null");
}

fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd.get_program()))
}

/// Whether a process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Whether any live process belongs to process group `pgid`.
fn group_alive(pgid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            return false;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // Fields after the command name: state ppid pgrp ...
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return false;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string()
    })
}

/// SIGKILL to the postmaster's process group (`pg_ctl` starts it as a session leader, its
/// backends share the group), and to the postmaster itself in case it is not the leader.
fn kill_group(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}"), &pid.to_string()])
        .output();
}
