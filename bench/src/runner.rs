//! Runs a job on N workers (one connection each) until a request count or a deadline, and
//! measures wall time, latencies, and server/client CPU.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use serde::Serialize;

use crate::client::{Conn, Target};

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One operation: gets the worker's connection and the operation's sequence number, returns
/// the payload bytes it moved.
pub type Job = Arc<dyn for<'a> Fn(&'a mut Conn, u64) -> BoxFut<'a, Result<u64>> + Send + Sync>;

/// Forces a closure into the higher-ranked shape of [`Job`].
pub fn job<F>(f: F) -> Job
where
    F: for<'a> Fn(&'a mut Conn, u64) -> BoxFut<'a, Result<u64>> + Send + Sync + 'static,
{
    Arc::new(f)
}

#[derive(Clone, Copy, Debug)]
pub struct Limit {
    pub ops: Option<u64>,
    pub duration: Option<Duration>,
}

impl Limit {
    pub fn ops(n: u64) -> Limit {
        Limit {
            ops: Some(n),
            duration: None,
        }
    }
}

/// CPU seconds (user + system) of a process, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the ")" that ends the command name: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let tck = if tck > 0 { tck as f64 } else { 100.0 };
    Some((utime + stime) / tck)
}

/// Peak resident set size (VmHWM) in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A CPU meter for the server (if its PID is known), for the object store it keeps blobs in
/// (if that PID is known) and for this process.
#[derive(Clone, Copy)]
pub struct CpuMeter {
    pub server_pid: Option<u32>,
    pub store_pid: Option<u32>,
}

pub struct CpuMark {
    server: Option<f64>,
    store: Option<f64>,
    client: f64,
}

impl CpuMeter {
    pub fn mark(&self) -> CpuMark {
        CpuMark {
            server: self.server_pid.and_then(cpu_seconds),
            store: self.store_pid.and_then(cpu_seconds),
            client: cpu_seconds(std::process::id()).unwrap_or(0.0),
        }
    }

    /// The object store's CPU-s since `m` (sampled just after [`CpuMeter::since`]).
    pub fn store_since(&self, m: &CpuMark) -> Option<f64> {
        match (m.store, self.store_pid.and_then(cpu_seconds)) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        }
    }

    /// (server CPU-s, client CPU-s) since `m`.
    pub fn since(&self, m: &CpuMark) -> (Option<f64>, f64) {
        let now = self.mark();
        let server = match (m.server, now.server) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        (server, now.client - m.client)
    }
}

/// What one measured phase did.
#[derive(Default, Clone, Debug)]
pub struct Measured {
    pub ops: u64,
    pub http_requests: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// Per-operation latency in microseconds.
    pub lat_us: Vec<u32>,
    pub server_cpu_s: Option<f64>,
    /// CPU-s of the object store behind the server (`--store-pid`).
    pub store_cpu_s: Option<f64>,
    pub client_cpu_s: f64,
}

impl Measured {
    pub fn percentile_ms(&mut self, p: f64) -> Option<f64> {
        if self.lat_us.is_empty() {
            return None;
        }
        self.lat_us.sort_unstable();
        let idx = ((p / 100.0) * (self.lat_us.len() - 1) as f64).round() as usize;
        Some(self.lat_us[idx.min(self.lat_us.len() - 1)] as f64 / 1000.0)
    }
}

/// One row of the results.
#[derive(Serialize, Clone, Debug, Default)]
pub struct Row {
    pub scenario: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub concurrency: usize,
    /// Logical operations (one blob pushed/pulled, one manifest request, one tag, one page).
    pub ops: u64,
    pub http_requests: u64,
    pub bytes: u64,
    pub elapsed_s: f64,
    pub req_per_s: f64,
    pub mb_per_s: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Seconds per composite operation (image push/pull, listing walk): median over repeats.
    pub op_s: Option<f64>,
    pub server_cpu_s: Option<f64>,
    pub cpu_s_per_gib: Option<f64>,
    pub cpu_s_per_1k_req: Option<f64>,
    /// CPU-s of the object store behind the server during the phase (`--store-pid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_cpu_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_cpu_s_per_gib: Option<f64>,
    pub client_cpu_s: f64,
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub extra: serde_json::Value,
}

impl Row {
    pub fn from_measured(scenario: &str, concurrency: usize, mut m: Measured) -> Row {
        let secs = m.elapsed.as_secs_f64().max(1e-9);
        let gib = m.bytes as f64 / (1u64 << 30) as f64;
        let bulk = scenario.contains("_blob_") && m.bytes >= (1 << 24);
        Row {
            scenario: scenario.to_string(),
            ok: true,
            error: None,
            concurrency,
            ops: m.ops,
            http_requests: m.http_requests,
            bytes: m.bytes,
            elapsed_s: secs,
            req_per_s: m.ops as f64 / secs,
            mb_per_s: m.bytes as f64 / 1e6 / secs,
            p50_ms: m.percentile_ms(50.0),
            p99_ms: m.percentile_ms(99.0),
            op_s: None,
            server_cpu_s: m.server_cpu_s,
            cpu_s_per_gib: m.server_cpu_s.filter(|_| bulk).map(|c| c / gib),
            cpu_s_per_1k_req: m
                .server_cpu_s
                .filter(|_| m.ops > 0)
                .map(|c| c * 1000.0 / m.ops as f64),
            store_cpu_s: m.store_cpu_s,
            store_cpu_s_per_gib: m.store_cpu_s.filter(|_| bulk).map(|c| c / gib),
            client_cpu_s: m.client_cpu_s,
            extra: serde_json::Value::Null,
        }
    }

    pub fn failed(scenario: &str, err: String) -> Row {
        Row {
            scenario: scenario.to_string(),
            ok: false,
            error: Some(err),
            ..Default::default()
        }
    }
}

/// Runs `job` on `concurrency` workers until `limit`, with connections opened before the clock
/// starts. The first error stops every worker and is returned.
pub async fn drive(
    target: &Arc<Target>,
    concurrency: usize,
    limit: Limit,
    cpu: CpuMeter,
    job: Job,
) -> Result<Measured> {
    let mut conns = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let mut c = Conn::new(target.clone());
        c.connect().await?;
        conns.push(c);
    }
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let bytes = Arc::new(AtomicU64::new(0));
    let mark = cpu.mark();
    let start = Instant::now();
    let deadline = limit.duration.map(|d| start + d);
    let mut tasks = Vec::with_capacity(concurrency);
    for mut conn in conns {
        let (next, stop, bytes, job) = (next.clone(), stop.clone(), bytes.clone(), job.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1024);
            let mut ops = 0u64;
            loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if limit.ops.is_some_and(|n| i >= n) {
                    break;
                }
                let t0 = Instant::now();
                match job(&mut conn, i).await {
                    Ok(b) => {
                        bytes.fetch_add(b, Ordering::Relaxed);
                        lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        ops += 1;
                    }
                    Err(e) => {
                        stop.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                }
            }
            Ok((lat, ops, conn.requests))
        }));
    }
    let mut m = Measured::default();
    let mut first_err = None;
    for t in tasks {
        match t.await.map_err(|e| anyhow!("worker panicked: {e}"))? {
            Ok((lat, ops, reqs)) => {
                m.lat_us.extend(lat);
                m.ops += ops;
                m.http_requests += reqs;
            }
            Err(e) => {
                if first_err.is_none() {
                    first_err = Some(e);
                }
            }
        }
    }
    m.elapsed = start.elapsed();
    let (s, c) = cpu.since(&mark);
    m.store_cpu_s = cpu.store_since(&mark);
    m.server_cpu_s = s;
    m.client_cpu_s = c;
    m.bytes = bytes.load(Ordering::Relaxed);
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok(m)
}
