//! Tables: one run's rows, and the medians and ratios over several runs of several servers.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Context as _, Result};
use serde_json::{json, Value};

use crate::runner::Row;

fn f(v: Option<f64>, prec: usize) -> String {
    match v {
        Some(x) if x.is_finite() => {
            if x.abs() >= 100_000.0 {
                format!("{x:.0}")
            } else {
                format!("{x:.prec$}")
            }
        }
        _ => "-".into(),
    }
}

const HEADER: &str =
    "   ops     req/s     MB/s   p50 ms   p99 ms     op s  srv CPU-s  CPU-s/GiB  CPU-s/1k req  gen CPU-s";
/// The columns added when some run measured the object store behind the server (`--store-pid`).
const STORE_HEADER: &str = "  store CPU-s  store CPU-s/GiB";

fn header(store: bool) -> String {
    if store {
        format!("{HEADER}{STORE_HEADER}")
    } else {
        HEADER.to_string()
    }
}

fn row_cells(r: &Value, store: bool) -> String {
    let g = |k: &str| r.get(k).and_then(Value::as_f64);
    let mut cells = format!(
        "{:>6} {:>9} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10} {:>13} {:>10}",
        g("ops").map_or("-".into(), |v| format!("{v:.0}")),
        f(g("req_per_s"), 1),
        f(g("mb_per_s"), 1),
        f(g("p50_ms"), 2),
        f(g("p99_ms"), 2),
        f(g("op_s"), 3),
        f(g("server_cpu_s"), 2),
        f(g("cpu_s_per_gib"), 2),
        f(g("cpu_s_per_1k_req"), 3),
        f(g("client_cpu_s"), 2),
    );
    if store {
        cells += &format!(
            " {:>12} {:>16}",
            f(g("store_cpu_s"), 2),
            f(g("store_cpu_s_per_gib"), 2)
        );
    }
    cells
}

/// The table of one run.
pub fn run_table(rows: &[Row]) -> String {
    let mut out = String::new();
    let store = rows.iter().any(|r| r.store_cpu_s.is_some());
    let _ = writeln!(out, "{:<26} {}", "scenario", header(store));
    for r in rows {
        if r.scenario == "peak_rss" {
            let mib = r.extra.get("vmhwm_mib").and_then(Value::as_f64);
            let _ = writeln!(out, "{:<26} peak RSS (VmHWM) {} MiB", "peak_rss", f(mib, 1));
            continue;
        }
        if !r.ok {
            let _ = writeln!(
                out,
                "{:<26} FAILED: {}",
                r.scenario,
                r.error.as_deref().unwrap_or("?")
            );
            continue;
        }
        let v = serde_json::to_value(r).unwrap_or(Value::Null);
        let _ = writeln!(out, "{:<26} {}", r.scenario, row_cells(&v, store));
    }
    out
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

const METRICS: &[&str] = &[
    "req_per_s",
    "mb_per_s",
    "p50_ms",
    "p99_ms",
    "op_s",
    "server_cpu_s",
    "cpu_s_per_gib",
    "cpu_s_per_1k_req",
    "client_cpu_s",
    "ops",
    "store_cpu_s",
    "store_cpu_s_per_gib",
];

/// Speed of `base` relative to `other` (>1: base faster) and CPU per unit of work (<1: base
/// cheaper) for one scenario's medians.
fn ratios(base: &Value, other: &Value) -> (Option<f64>, Option<f64>) {
    let g = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64);
    let speed = match (g(base, "op_s"), g(other, "op_s")) {
        (Some(b), Some(o)) if b > 0.0 => Some(o / b),
        _ => match (g(base, "req_per_s"), g(other, "req_per_s")) {
            (Some(b), Some(o)) if o > 0.0 => Some(b / o),
            _ => None,
        },
    };
    // Composite operations (walks, image push/pull) do the same work on both sides: compare
    // the server CPU of the phase directly (a page is not a unit: page sizes can differ).
    if g(base, "op_s").is_some() && g(other, "op_s").is_some() {
        let cpu = match (g(base, "server_cpu_s"), g(other, "server_cpu_s")) {
            (Some(b), Some(o)) if o > 0.0 => Some(b / o),
            _ => None,
        };
        return (speed, cpu);
    }
    let cpu = match (g(base, "cpu_s_per_gib"), g(other, "cpu_s_per_gib")) {
        (Some(b), Some(o)) if o > 0.0 => Some(b / o),
        _ => match (g(base, "cpu_s_per_1k_req"), g(other, "cpu_s_per_1k_req")) {
            (Some(b), Some(o)) if o > 0.0 => Some(b / o),
            _ => None,
        },
    };
    (speed, cpu)
}

/// Reads `LABEL=FILE` run outputs, prints medians per scenario per server and the ratios of
/// `base` to every other server, and returns the combined JSON.
pub fn combine(inputs: &[String], base: &str) -> Result<(String, Value)> {
    let mut labels: Vec<String> = Vec::new();
    let mut scenarios: Vec<String> = Vec::new();
    // label -> scenario -> rows
    let mut rows: BTreeMap<String, BTreeMap<String, Vec<Value>>> = BTreeMap::new();
    let mut failures: Vec<Value> = Vec::new();
    let mut runs = Vec::new();
    for spec in inputs {
        let (label, file) = spec
            .split_once('=')
            .with_context(|| format!("{spec:?} is not LABEL=FILE"))?;
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
        let run: Value = serde_json::from_str(&text).with_context(|| format!("parsing {file}"))?;
        if !labels.iter().any(|l| l == label) {
            labels.push(label.to_string());
        }
        for r in run["results"].as_array().cloned().unwrap_or_default() {
            let s = r["scenario"].as_str().unwrap_or("?").to_string();
            if !scenarios.contains(&s) {
                scenarios.push(s.clone());
            }
            if r["ok"].as_bool() != Some(true) {
                failures.push(
                    json!({ "server": label, "file": file, "scenario": s, "error": r["error"] }),
                );
                continue;
            }
            rows.entry(label.to_string())
                .or_default()
                .entry(s)
                .or_default()
                .push(r);
        }
        runs.push(json!({ "server": label, "file": file, "run": run }));
    }
    // Keep scenarios in the canonical order.
    let order = |s: &str| {
        crate::scenarios::ALL
            .iter()
            .chain(crate::scenarios::REPORT_ORDER)
            .position(|a| s.starts_with(a))
            .unwrap_or(usize::MAX)
    };
    scenarios.sort_by_key(|s| order(s));

    let mut medians: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
    for (label, by_s) in &rows {
        for (s, rs) in by_s {
            let mut m = serde_json::Map::new();
            for k in METRICS {
                let vals: Vec<f64> = rs
                    .iter()
                    .filter_map(|r| r.get(*k).and_then(Value::as_f64))
                    .collect();
                if let Some(v) = median(vals) {
                    m.insert(k.to_string(), json!(v));
                }
            }
            let rss: Vec<f64> = rs
                .iter()
                .filter_map(|r| r["extra"]["vmhwm_mib"].as_f64())
                .collect();
            if let Some(v) = median(rss) {
                m.insert("peak_rss_mib".into(), json!(v));
            }
            m.insert("runs".into(), json!(rs.len()));
            medians
                .entry(label.clone())
                .or_default()
                .insert(s.clone(), Value::Object(m));
        }
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "Medians over runs (req = one logical operation; MB = 10^6 bytes)\n"
    );
    let store = medians
        .values()
        .flat_map(|m| m.values())
        .any(|m| m.get("store_cpu_s").is_some());
    let lw = labels.iter().map(String::len).max().unwrap_or(0).max(13);
    let _ = writeln!(
        out,
        "{:<26} {:<lw$} {}",
        "scenario",
        "server",
        header(store)
    );
    for s in &scenarios {
        for l in &labels {
            let Some(m) = medians.get(l).and_then(|m| m.get(s)) else {
                if rows.contains_key(l)
                    && failures
                        .iter()
                        .any(|f| f["server"] == l.as_str() && f["scenario"] == s.as_str())
                {
                    let _ = writeln!(out, "{:<26} {:<lw$} FAILED (see JSON)", s, l);
                }
                continue;
            };
            if s == "peak_rss" {
                let _ = writeln!(
                    out,
                    "{:<26} {:<lw$} peak RSS {} MiB",
                    s,
                    l,
                    f(m["peak_rss_mib"].as_f64(), 1)
                );
            } else {
                let _ = writeln!(out, "{:<26} {:<lw$} {}", s, l, row_cells(m, store));
            }
        }
    }

    let others: Vec<&String> = labels.iter().filter(|l| l.as_str() != base).collect();
    let mut ratio_json = serde_json::Map::new();
    if medians.contains_key(base) && !others.is_empty() {
        let _ = writeln!(
            out,
            "\nRatios of {base} to each server. speed: >1 = {base} faster (req/s, or time per op for op-s rows);\n\
             cpu: {base}'s server CPU per unit of work / the other's (<1 = {base} cheaper; per GiB for blob rows,\n\
             per op-s row's whole phase for walks and images, per 1k req otherwise);\n\
             rss: peak RSS ratio.\n"
        );
        let w = others
            .iter()
            .map(|o| o.len() + 9)
            .max()
            .unwrap_or(16)
            .max(16);
        let mut head = format!("{:<26}", "scenario");
        for o in &others {
            head += &format!(
                " {:>w$} {:>w$}",
                format!("speed vs {o}"),
                format!("cpu vs {o}")
            );
        }
        let _ = writeln!(out, "{head}");
        for s in &scenarios {
            let Some(b) = medians[base].get(s) else {
                continue;
            };
            let mut line = format!("{s:<26}");
            let mut any = false;
            let mut rj = serde_json::Map::new();
            for o in &others {
                let om = medians.get(*o).and_then(|m| m.get(s));
                let (speed, cpu) = match om {
                    Some(om) if s == "peak_rss" => {
                        let r = match (b["peak_rss_mib"].as_f64(), om["peak_rss_mib"].as_f64()) {
                            (Some(x), Some(y)) if y > 0.0 => Some(x / y),
                            _ => None,
                        };
                        (None, r)
                    }
                    Some(om) => ratios(b, om),
                    None => (None, None),
                };
                any |= om.is_some();
                if s == "peak_rss" {
                    line += &format!(" {:>w$} {:>w$}", "", format!("rss {}", f(cpu, 2)));
                    rj.insert(o.to_string(), json!({ "rss": cpu }));
                } else {
                    line += &format!(" {:>w$} {:>w$}", f(speed, 2), f(cpu, 2));
                    rj.insert(o.to_string(), json!({ "speed": speed, "cpu": cpu }));
                }
            }
            if any {
                let _ = writeln!(out, "{line}");
                ratio_json.insert(s.clone(), Value::Object(rj));
            }
        }
    }
    if !failures.is_empty() {
        let _ = writeln!(out, "\nFailures:");
        for fl in &failures {
            let _ = writeln!(
                out,
                "  {} {} ({}): {}",
                fl["server"], fl["scenario"], fl["file"], fl["error"]
            );
        }
    }
    let combined = json!({
        "base": base,
        "servers": labels,
        "scenarios": scenarios,
        "medians": medians,
        "ratios": ratio_json,
        "failures": failures,
        "runs": runs,
    });
    Ok((out, combined))
}
