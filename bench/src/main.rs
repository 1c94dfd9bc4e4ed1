//! `berth-bench`: a load generator that speaks the OCI distribution protocol to any registry
//! (plain HTTP), verifies every byte it pulls, and reports throughput, latency and the server's
//! CPU time per scenario. `berth-bench report` combines runs into medians and ratios.

mod client;
mod data;
mod gc;
mod ops;
mod repl;
mod report;
mod runner;
mod scale;
mod scenarios;

use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::client::{DigestMismatch, Target};
use crate::ops::PushMethod;
use crate::runner::{CpuMeter, Row};
use crate::scenarios::{Ctx, Knobs, ALL, OPT_IN};

#[derive(Parser)]
#[command(
    name = "berth-bench",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Combine run JSON files into medians per scenario per server, and ratios.
    Report {
        /// Where to write the combined JSON.
        #[arg(long)]
        out: Option<String>,
        /// The server the others are compared with.
        #[arg(long, default_value = "berth")]
        base: String,
        /// Run outputs as LABEL=FILE (repeat a label for each round).
        #[arg(required = true)]
        inputs: Vec<String>,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Registry base URL, e.g. http://127.0.0.1:5000 (plain HTTP).
    #[arg(long)]
    url: Option<String>,
    /// The server's PID: CPU time from /proc/PID/stat around each scenario, peak RSS at the end.
    #[arg(long)]
    server_pid: Option<u32>,
    /// The PID of the object store the server keeps blobs in (e.g. Garage): its CPU time around
    /// each scenario, reported beside the server's (`store CPU-s`).
    #[arg(long)]
    store_pid: Option<u32>,
    /// Comma-separated scenarios (default: all). Names: see --list.
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Seconds for each time-bound scenario (pull_blob_1m_*, manifest_*). Default 5 (1 with --quick).
    #[arg(long)]
    duration: Option<f64>,
    /// Run time-bound scenarios for this many operations instead of --duration.
    #[arg(long)]
    requests: Option<u64>,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<String>,
    /// Only the pull/GET scenarios, against data seeded beforehand (e.g. nginx serving files).
    #[arg(long)]
    read_only: bool,
    /// Push the fixed pull data set, write --seed-file, and exit.
    #[arg(long)]
    seed_only: bool,
    /// Where --seed-only writes the list of repo, tags, digests (JSON).
    #[arg(long, default_value = "seed.json")]
    seed_file: String,
    /// Small counts for a fast validation run.
    #[arg(long)]
    quick: bool,
    /// auto (probe with a tiny blob), single-post, or post-put.
    #[arg(long, default_value = "auto")]
    push_method: String,
    /// Runtime threads (1 = a single-threaded runtime, best when pinned to one core).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// A name for the server, copied into the JSON.
    #[arg(long, default_value = "")]
    label: String,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
    /// gc_seed writes here what is live and what is garbage; gc_verify reads it.
    #[arg(long, value_name = "FILE")]
    state: Option<String>,
    /// gc_load: a shell command that collects garbage (e.g. `berth gc --data DIR --grace 2s`),
    /// run back to back during the second phase. Without it gc_load measures only idle.
    #[arg(long, value_name = "CMD")]
    gc_cmd: Option<String>,
    /// gc_seed: live images kept (default 20; quick 4).
    #[arg(long)]
    gc_live: Option<u64>,
    /// gc_seed: loose garbage blobs, pushed without a manifest (default 20000; quick 1000).
    #[arg(long)]
    gc_blobs: Option<u64>,
    /// gc_seed: images pushed, then their manifests deleted (default 500; quick 20).
    #[arg(long)]
    gc_images: Option<u64>,
    /// gc_load: garbage blobs seeded before each phase (default 10000; quick 500).
    #[arg(long)]
    gc_load_garbage: Option<u64>,
    /// gc_load: seconds per phase (default 20; quick 3).
    #[arg(long)]
    gc_load_duration: Option<f64>,
    /// scale_seed/scale_pages: repositories (default 100000; quick 1000).
    #[arg(long)]
    scale_repos: Option<u64>,
    /// scale_seed: tags in each of those repositories (default 9; quick 1).
    #[arg(long)]
    scale_tags_per_repo: Option<u64>,
    /// scale_seed/scale_pages: tags in bench-scale/big (default 100000; quick 2000).
    #[arg(long)]
    scale_big_tags: Option<u64>,
    /// scale_pages: requests per page after the first (default 100; quick 20).
    #[arg(long)]
    page_requests: Option<u64>,
    /// Workers that seed the opt-in scenarios' data (default 16).
    #[arg(long)]
    seed_concurrency: Option<usize>,
    /// repl_seed: images pushed (default 200; quick 20).
    #[arg(long)]
    repl_images: Option<u64>,
    /// repl_seed: how many of them have a big layer of their own (default 4).
    #[arg(long)]
    repl_big: Option<u64>,
    /// repl_seed: the size of that layer in MiB (default 64; quick 1).
    #[arg(long)]
    repl_big_mib: Option<u64>,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Report { out, base, inputs }) => report_cmd(&inputs, &base, out.as_deref()),
        None => {
            let threads = cli.run.threads.max(1);
            let rt = if threads == 1 {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            } else {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(threads)
                    .enable_all()
                    .build()
            };
            match rt {
                Ok(rt) => rt.block_on(run_cmd(cli.run)),
                Err(e) => Err(e.into()),
            }
        }
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let mismatch = e.downcast_ref::<DigestMismatch>().is_some();
            eprintln!("berth-bench: {e:#}");
            std::process::exit(if mismatch { 3 } else { 1 });
        }
    }
}

fn report_cmd(inputs: &[String], base: &str, out: Option<&str>) -> Result<i32> {
    let (table, combined) = report::combine(inputs, base)?;
    print!("{table}");
    if let Some(out) = out {
        std::fs::write(out, serde_json::to_string_pretty(&combined)?)
            .with_context(|| format!("writing {out}"))?;
    }
    Ok(0)
}

async fn run_cmd(args: RunArgs) -> Result<i32> {
    if args.list {
        for s in ALL {
            println!(
                "{s}{}",
                if scenarios::read_only(s) {
                    "  (read-only)"
                } else {
                    ""
                }
            );
        }
        for s in OPT_IN {
            println!("{s}  (opt-in: only when named in --scenarios)");
        }
        return Ok(0);
    }
    let url = args.url.clone().context("--url is required")?;
    let target = Arc::new(Target::parse(&url)?);
    let forced = match args.push_method.as_str() {
        "auto" => None,
        "single-post" => Some(PushMethod::SinglePost),
        "post-put" => Some(PushMethod::PostPut),
        other => bail!("--push-method: unknown {other:?}"),
    };
    let cpu = CpuMeter {
        server_pid: args.server_pid,
        store_pid: args.store_pid,
    };
    for (flag, pid) in [
        ("--server-pid", args.server_pid),
        ("--store-pid", args.store_pid),
    ] {
        if let Some(pid) = pid {
            if runner::cpu_seconds(pid).is_none() {
                bail!("{flag} {pid}: cannot read /proc/{pid}/stat");
            }
        }
    }
    let mut knobs = Knobs::new(args.quick, args.duration, args.requests);
    let set = |k: &mut u64, v: Option<u64>| {
        if let Some(v) = v {
            *k = v;
        }
    };
    set(&mut knobs.gc_live, args.gc_live);
    set(&mut knobs.gc_blobs, args.gc_blobs);
    set(&mut knobs.gc_images, args.gc_images);
    set(&mut knobs.gc_load_garbage, args.gc_load_garbage);
    set(&mut knobs.scale_repos, args.scale_repos);
    set(&mut knobs.scale_tags_per_repo, args.scale_tags_per_repo);
    set(&mut knobs.scale_big_tags, args.scale_big_tags);
    set(&mut knobs.page_requests, args.page_requests);
    set(&mut knobs.repl_images, args.repl_images);
    set(&mut knobs.repl_big, args.repl_big);
    set(&mut knobs.repl_big_mib, args.repl_big_mib);
    if let Some(d) = args.gc_load_duration {
        knobs.gc_load_duration = std::time::Duration::from_secs_f64(d);
    }
    if let Some(n) = args.seed_concurrency {
        knobs.seed_concurrency = n.max(1);
    }
    let mut ctx = Ctx::new(target.clone(), cpu, knobs.clone(), args.read_only, forced);
    ctx.state_file = args.state.clone();
    ctx.gc_cmd = args.gc_cmd.clone();

    if !args.read_only {
        check_api(&target).await?;
    }

    if args.seed_only {
        let set = ctx.seed_pull().await?;
        let blobs: Vec<_> = set
            .blobs()
            .iter()
            .map(|b| json!({ "digest": b.digest, "size": b.len }))
            .collect();
        let seed = json!({
            "repo": set.repo,
            "tags": { set.tag.clone(): set.manifest.digest },
            "manifests": [{ "digest": set.manifest.digest, "size": set.manifest.bytes.len(), "media_type": data::OCI_MANIFEST }],
            "blobs": blobs,
        });
        std::fs::write(&args.seed_file, serde_json::to_string_pretty(&seed)?)
            .with_context(|| format!("writing {}", args.seed_file))?;
        eprintln!("seed written to {}", args.seed_file);
        return Ok(0);
    }

    let wanted: Vec<String> = if args.scenarios.is_empty() {
        ALL.iter().map(|s| s.to_string()).collect()
    } else {
        for s in &args.scenarios {
            if !ALL.contains(&s.as_str()) && !OPT_IN.contains(&s.as_str()) {
                bail!(
                    "unknown scenario {s:?}; known: {},{}",
                    ALL.join(","),
                    OPT_IN.join(",")
                );
            }
        }
        ALL.iter()
            .chain(OPT_IN)
            .filter(|a| args.scenarios.iter().any(|s| s == *a))
            .map(|s| s.to_string())
            .collect()
    };
    let wanted: Vec<String> = wanted
        .into_iter()
        .filter(|s| !args.read_only || scenarios::read_only(s))
        .collect();

    let mut rows: Vec<Row> = Vec::new();
    let mut failed = false;
    for s in &wanted {
        eprintln!(
            "[{}] {s}",
            if args.label.is_empty() {
                &url
            } else {
                &args.label
            }
        );
        match ctx.run(s).await {
            Ok(r) => {
                for row in &r {
                    eprint!(
                        "{}",
                        report::run_table(std::slice::from_ref(row))
                            .lines()
                            .nth(1)
                            .unwrap_or("")
                    );
                    eprintln!();
                }
                rows.extend(r);
            }
            Err(e) => {
                if e.downcast_ref::<DigestMismatch>().is_some() {
                    return Err(e);
                }
                eprintln!("  FAILED: {e:#}");
                failed = true;
                rows.push(Row::failed(s, format!("{e:#}")));
            }
        }
    }

    println!(
        "\n{} ({})",
        if args.label.is_empty() {
            &url
        } else {
            &args.label
        },
        url
    );
    if let Some(m) = ctx.method {
        println!("monolithic push method: {}", m.name());
    }
    print!("{}", report::run_table(&rows));
    if let Some(path) = &args.json {
        let out = json!({
            "tool": "berth-bench",
            "label": args.label,
            "url": url,
            "server_pid": args.server_pid,
            "store_pid": args.store_pid,
            "quick": args.quick,
            "read_only": args.read_only,
            "push_method": ctx.method.map(|m| m.name()),
            "knobs": {
                "duration_s": knobs.duration.as_secs_f64(),
                "requests": knobs.requests,
                "push_1m": knobs.push_1m,
                "push_256m": knobs.push_256m,
                "pull_256m": knobs.pull_256m,
                "tag_puts": knobs.tag_puts,
                "layers": knobs.layers,
                "tags": knobs.tags,
                "repos": knobs.repos,
                "walks": knobs.walks,
                "gc_live": knobs.gc_live,
                "gc_blobs": knobs.gc_blobs,
                "gc_images": knobs.gc_images,
                "gc_load_garbage": knobs.gc_load_garbage,
                "gc_load_duration_s": knobs.gc_load_duration.as_secs_f64(),
                "scale_repos": knobs.scale_repos,
                "scale_tags_per_repo": knobs.scale_tags_per_repo,
                "scale_big_tags": knobs.scale_big_tags,
                "page_requests": knobs.page_requests,
                "seed_concurrency": knobs.seed_concurrency,
                "repl_images": knobs.repl_images,
                "repl_big": knobs.repl_big,
                "repl_big_mib": knobs.repl_big_mib,
            },
            "gc_cmd": ctx.gc_cmd,
            "results": rows,
        });
        std::fs::write(path, serde_json::to_string_pretty(&out)?)
            .with_context(|| format!("writing {path}"))?;
    }
    Ok(if failed { 2 } else { 0 })
}

/// `GET /v2/` must answer 200 (no auth).
async fn check_api(target: &Arc<Target>) -> Result<()> {
    let mut c = client::Conn::new(target.clone());
    let path = format!("{}/v2/", target.prefix);
    let resp = c
        .send(http::Method::GET, &path, &[], client::ReqBody::Empty)
        .await?;
    let status = resp.status();
    client::read_all(resp).await?;
    if status != http::StatusCode::OK {
        bail!("GET {path}: status {status}; is this an OCI registry without auth?");
    }
    Ok(())
}
