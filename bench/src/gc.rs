//! Garbage-collection scenarios, opt-in (not in the default set; `compare.sh` never runs them,
//! `gc-scale.sh` does). The collection itself is a command of the server (`berth gc`,
//! `docker-registry garbage-collect`) that the script times; the generator makes the data and
//! checks the outcome:
//!
//! - `gc_seed`: pushes live images (tagged), loose garbage (blobs pushed without any manifest)
//!   and images whose manifests are then deleted by digest; writes `--state` (what is live,
//!   what is garbage).
//! - `gc_verify`: pulls every live image back, every byte checked against its digest (a
//!   collector that deleted something live fails the row; a wrong byte stops the run), and
//!   counts the garbage blobs the registry still serves (HEAD in their repository).
//! - `gc_load`: p50/p99 of image pushes and pulls at once, first idle, then while `--gc-cmd`
//!   runs in a loop collecting garbage seeded for the phase. Without `--gc-cmd` only the idle
//!   rows are made (a registry that cannot collect online).
//!
//! Nothing here asserts a timing: rows are measurements.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::client::{read_all, Conn, ReqBody};
use crate::data::{self, Blob, Manifest};
use crate::ops::{self, p, PushMethod};
use crate::runner::{drive, job, Limit, Measured, Row};
use crate::scenarios::Ctx;

/// An image the collector must keep: pulled back by `gc_verify`.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct LiveImage {
    pub repo: String,
    pub tag: String,
    pub manifest_digest: String,
    pub manifest_len: u64,
    /// (digest, size) of the config and every layer.
    pub blobs: Vec<(String, u64)>,
}

/// What `gc_seed` made, for `gc_verify` (and the record).
#[derive(Serialize, Deserialize, Debug, Default)]
pub struct GcState {
    pub live: Vec<LiveImage>,
    /// (repository, digest) of every blob that is garbage after the seeding.
    pub garbage: Vec<(String, String)>,
    pub loose_blobs: u64,
    pub deleted_images: u64,
    pub deleted_manifests: Vec<(String, String)>,
    pub garbage_bytes: u64,
}

/// An image: its config, layers and manifest.
pub struct Image {
    pub config: Blob,
    pub layers: Vec<Blob>,
    pub manifest: Manifest,
}

impl Image {
    /// `sizes.len()` PRNG layers from `seed`, and a config distinct per `label`.
    pub fn new(label: &str, seed: u64, sizes: &[u64]) -> Image {
        let layers: Vec<Blob> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| Blob::prng(seed.wrapping_add(i as u64), n))
            .collect();
        let config = data::config(label);
        let manifest = data::manifest(&config, &layers, 0);
        Image {
            config,
            layers,
            manifest,
        }
    }

    fn live(&self, repo: &str, tag: &str) -> LiveImage {
        let mut blobs = vec![(self.config.digest.clone(), self.config.len)];
        blobs.extend(self.layers.iter().map(|l| (l.digest.clone(), l.len)));
        LiveImage {
            repo: repo.to_string(),
            tag: tag.to_string(),
            manifest_digest: self.manifest.digest.clone(),
            manifest_len: self.manifest.bytes.len() as u64,
            blobs,
        }
    }

    fn bytes(&self) -> u64 {
        self.config.len + self.layers.iter().map(|l| l.len).sum::<u64>()
    }
}

/// Pushes an image the way a client does: per blob HEAD then upload, then the manifest by tag.
pub async fn push_image(
    c: &mut Conn,
    method: PushMethod,
    repo: &str,
    tag: &str,
    img: &Image,
) -> Result<u64> {
    for l in &img.layers {
        ops::ensure_blob(c, method, repo, l, None).await?;
    }
    ops::ensure_blob(c, method, repo, &img.config, None).await?;
    ops::put_manifest(c, repo, tag, &img.manifest).await?;
    Ok(img.bytes() + img.manifest.bytes.len() as u64)
}

/// Pulls an image: the manifest by tag, then every blob, all verified. Returns the bytes moved.
pub async fn pull_image(c: &mut Conn, img: &LiveImage) -> Result<u64> {
    let mut n = ops::get_manifest(
        c,
        &img.repo,
        &img.tag,
        &img.manifest_digest,
        img.manifest_len,
    )
    .await?;
    for (d, len) in &img.blobs {
        n += ops::get_blob(c, &img.repo, d, *len).await?;
    }
    Ok(n)
}

/// `DELETE /manifests/<digest>` (both registries untag what pointed at it).
async fn delete_manifest(c: &mut Conn, repo: &str, digest: &str) -> Result<()> {
    let path = p(c, &format!("{repo}/manifests/{digest}"));
    let resp = c
        .expect(
            Method::DELETE,
            &path,
            &[],
            ReqBody::Empty,
            &[StatusCode::ACCEPTED, StatusCode::OK],
        )
        .await?;
    read_all(resp).await?;
    Ok(())
}

/// Pushes `n` loose blobs (1–4 KiB, no manifest names them), blob `i` into `repos[i % len]`,
/// `--seed-concurrency` at once. Returns the measurement, the (repo, digest) pairs and the bytes.
async fn push_loose(
    ctx: &mut Ctx,
    repos: Vec<String>,
    n: u64,
    seed: u64,
) -> Result<(Measured, Vec<(String, String)>, u64)> {
    let method = ctx.push_method().await?;
    let blobs: Arc<Vec<Blob>> = Arc::new(
        (0..n)
            .map(|i| Blob::prng(seed.wrapping_add(i), 1024 + (i * 7919) % 3072))
            .collect(),
    );
    let repos = Arc::new(repos);
    let nr = repos.len().max(1);
    let b = blobs.clone();
    let pre = repos.clone();
    let m = drive(
        &ctx.target,
        ctx.knobs.seed_concurrency,
        Limit::ops(n),
        ctx.cpu,
        job(move |c, i| {
            let (b, pre) = (b.clone(), pre.clone());
            Box::pin(async move {
                let blob = &b[i as usize];
                ops::push_blob(c, method, &pre[i as usize % nr], blob).await?;
                Ok(blob.len)
            })
        }),
    )
    .await?;
    let bytes = blobs.iter().map(|b| b.len).sum();
    let list = blobs
        .iter()
        .enumerate()
        .map(|(i, b)| (repos[i % nr].clone(), b.digest.clone()))
        .collect();
    Ok((m, list, bytes))
}

/// `gc_seed`: live images, loose garbage, deleted images; writes `--state`.
pub async fn seed(ctx: &mut Ctx) -> Result<Vec<Row>> {
    let method = ctx.push_method().await?;
    let state_file = ctx
        .state_file
        .clone()
        .context("gc_seed needs --state FILE")?;
    let (live_n, loose_n, gone_n) = (
        ctx.knobs.gc_live.max(1),
        ctx.knobs.gc_blobs,
        ctx.knobs.gc_images,
    );
    let nonce = ctx.nonce;
    let t0 = Instant::now();

    // Live images: a config and three layers of 4–16 KiB each, tagged v1.
    let live: Arc<Vec<(String, Image)>> = Arc::new(
        (0..live_n)
            .map(|i| {
                let seed = nonce.wrapping_mul(11_000_027).wrapping_add(i * 16);
                let sizes = [4096 + i * 37 % 4096, 8192, 16384];
                let repo = format!("bench-gc/live-{i:03}");
                let img = Image::new(&format!("gc-live-{nonce:x}-{i}"), seed, &sizes);
                (repo, img)
            })
            .collect(),
    );
    let l = live.clone();
    drive(
        &ctx.target,
        4,
        Limit::ops(live_n),
        ctx.cpu,
        job(move |c, i| {
            let l = l.clone();
            Box::pin(async move {
                let (repo, img) = &l[i as usize];
                push_image(c, method, repo, "v1", img).await
            })
        }),
    )
    .await?;

    // Loose garbage: blobs no manifest names, pushed into the live images' repositories (as a
    // failed or abandoned push leaves them).
    let loose_seed = nonce.wrapping_mul(13_000_039);
    let repos: Vec<String> = live.iter().map(|(r, _)| r.clone()).collect();
    let (m, mut garbage, mut garbage_bytes) = push_loose(ctx, repos, loose_n, loose_seed).await?;

    // Deleted images: pushed and tagged, then their manifests deleted by digest.
    let gone: Arc<Vec<(String, String, Image)>> = Arc::new(
        (0..gone_n)
            .map(|i| {
                let seed = nonce.wrapping_mul(17_000_071).wrapping_add(i * 4);
                let repo = format!("bench-gc/gone-{}", i % 10);
                let img = Image::new(
                    &format!("gc-gone-{nonce:x}-{i}"),
                    seed,
                    &[2048 + i % 2048, 6144],
                );
                (repo, format!("t{i:05}"), img)
            })
            .collect(),
    );
    let g = gone.clone();
    drive(
        &ctx.target,
        ctx.knobs.seed_concurrency,
        Limit::ops(gone_n),
        ctx.cpu,
        job(move |c, i| {
            let g = g.clone();
            Box::pin(async move {
                let (repo, tag, img) = &g[i as usize];
                let n = push_image(c, method, repo, tag, img).await?;
                delete_manifest(c, repo, &img.manifest.digest).await?;
                Ok(n)
            })
        }),
    )
    .await?;
    let mut deleted_manifests = Vec::new();
    for (repo, _, img) in gone.iter() {
        garbage.push((repo.clone(), img.config.digest.clone()));
        garbage.extend(img.layers.iter().map(|l| (repo.clone(), l.digest.clone())));
        garbage_bytes += img.bytes() + img.manifest.bytes.len() as u64;
        deleted_manifests.push((repo.clone(), img.manifest.digest.clone()));
    }

    let state = GcState {
        live: live.iter().map(|(r, img)| img.live(r, "v1")).collect(),
        garbage,
        loose_blobs: loose_n,
        deleted_images: gone_n,
        deleted_manifests,
        garbage_bytes,
    };
    std::fs::write(&state_file, serde_json::to_string(&state)?)
        .with_context(|| format!("writing {state_file}"))?;
    eprintln!(
        "  seeded {live_n} live images, {loose_n} loose blobs, {gone_n} deleted images ({} garbage blobs + {gone_n} manifests, {} bytes) in {:.1}s",
        state.garbage.len(),
        garbage_bytes,
        t0.elapsed().as_secs_f64()
    );
    let mut row = Row::from_measured("gc_seed", ctx.knobs.seed_concurrency, m);
    row.extra = json!({
        "what": "req/s = loose garbage blobs pushed per second",
        "live_images": live_n,
        "loose_blobs": loose_n,
        "deleted_images": gone_n,
        "garbage_blobs": state.garbage.len(),
        "garbage_manifests": gone_n,
        "garbage_bytes": garbage_bytes,
        "seed_s": t0.elapsed().as_secs_f64(),
    });
    Ok(vec![row])
}

/// `gc_verify`: every live image pulls back intact; how much garbage is still served.
pub async fn verify(ctx: &mut Ctx) -> Result<Vec<Row>> {
    let state_file = ctx
        .state_file
        .clone()
        .context("gc_verify needs --state FILE")?;
    let text =
        std::fs::read_to_string(&state_file).with_context(|| format!("reading {state_file}"))?;
    let state: GcState = serde_json::from_str(&text)?;
    let live = Arc::new(state.live);
    let n_live = live.len() as u64;
    let l = live.clone();
    let m = drive(
        &ctx.target,
        4,
        Limit::ops(n_live),
        ctx.cpu,
        job(move |c, i| {
            let l = l.clone();
            Box::pin(async move {
                let img = &l[i as usize];
                pull_image(c, img)
                    .await
                    .with_context(|| format!("live image {}:{}", img.repo, img.tag))
            })
        }),
    )
    .await?;
    let garbage = Arc::new(state.garbage);
    let left = Arc::new(AtomicU64::new(0));
    let (g, lf) = (garbage.clone(), left.clone());
    drive(
        &ctx.target,
        8,
        Limit::ops(garbage.len() as u64),
        ctx.cpu,
        job(move |c, i| {
            let (g, lf) = (g.clone(), lf.clone());
            Box::pin(async move {
                let (repo, d) = &g[i as usize];
                if ops::blob_exists(c, repo, d).await? {
                    lf.fetch_add(1, Ordering::Relaxed);
                }
                Ok(0)
            })
        }),
    )
    .await?;
    let left = left.load(Ordering::Relaxed);
    eprintln!(
        "  {n_live} live images pulled and verified; {left} of {} garbage blobs still served",
        garbage.len()
    );
    let mut row = Row::from_measured("gc_verify", 4, m);
    row.extra = json!({
        "what": "ops = live images pulled back (every byte verified)",
        "live_images": n_live,
        "live_blobs": live.iter().map(|i| i.blobs.len()).sum::<usize>(),
        "garbage_checked": garbage.len(),
        "garbage_left": left,
    });
    Ok(vec![row])
}

/// One run of the collector command during `gc_load`.
#[derive(Serialize, Debug)]
struct GcRun {
    wall_s: f64,
    ok: bool,
    last_line: String,
}

/// The number written just before `word` in `line` ("…, 1500 blobs; …" → 1500 for "blobs").
pub fn count_before(line: &str, word: &str) -> Option<u64> {
    let toks: Vec<&str> = line
        .split([' ', ',', ';'])
        .filter(|t| !t.is_empty())
        .collect();
    toks.windows(2)
        .find(|w| w[1] == word)
        .and_then(|w| w[0].parse().ok())
}

/// Runs `sh -c cmd` back to back until `stop` (on its own thread: the collector is another
/// process; this thread only waits for it).
fn gc_loop(cmd: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<GcRun>> {
    std::thread::spawn(move || {
        let mut runs = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(&cmd)
                .stdin(std::process::Stdio::null())
                .output();
            let (ok, last_line) = match out {
                Ok(o) => {
                    let text = String::from_utf8_lossy(&o.stdout).into_owned()
                        + &String::from_utf8_lossy(&o.stderr);
                    let last = text.lines().rev().find(|l| !l.trim().is_empty());
                    (o.status.success(), last.unwrap_or("").to_string())
                }
                Err(e) => (false, format!("cannot run sh -c: {e}")),
            };
            runs.push(GcRun {
                wall_s: t.elapsed().as_secs_f64(),
                ok,
                last_line,
            });
            if !ok {
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        runs
    })
}

/// `gc_load`: pushes and pulls at once, idle and while the collector runs.
pub async fn load(ctx: &mut Ctx) -> Result<Vec<Row>> {
    let method = ctx.push_method().await?;
    let nonce = ctx.nonce;
    let workers = ctx.knobs.load_workers;
    let dur = ctx.knobs.gc_load_duration;
    // The image every pull fetches: a config and four 64 KiB layers.
    let live_repo = "bench-gcload/live";
    let img = Image::new(
        &format!("gcload-live-{nonce:x}"),
        nonce.wrapping_mul(19_000_003),
        &[65536; 4],
    );
    let mut c = ctx.conn();
    push_image(&mut c, method, live_repo, "v1", &img).await?;
    let live = Arc::new(img.live(live_repo, "v1"));

    let mut phases = vec![("idle", None)];
    if let Some(cmd) = ctx.gc_cmd.clone() {
        phases.push(("gc", Some(cmd)));
    }
    let mut rows = Vec::new();
    let mut idle_p: Option<[(Option<f64>, Option<f64>); 2]> = None;
    for (k, (phase, cmd)) in phases.into_iter().enumerate() {
        // Garbage for the collector to find: loose blobs, old enough for a short grace period.
        let junk_seed = nonce
            .wrapping_mul(23_000_009)
            .wrapping_add(k as u64 * 10_000_000);
        let junk = ctx.knobs.gc_load_garbage;
        let repos = (0..4)
            .map(|r| format!("bench-gcload/junk{k}-{r}"))
            .collect();
        push_loose(ctx, repos, junk, junk_seed).await?;
        tokio::time::sleep(Duration::from_millis(1200)).await;
        eprintln!("  {phase}: {junk} garbage blobs seeded; pushes and pulls for {dur:?}");

        let stop = Arc::new(AtomicBool::new(false));
        let looper = cmd.map(|cmd| gc_loop(cmd, stop.clone()));
        let limit = Limit {
            ops: None,
            duration: Some(dur),
        };
        let push_job = job(move |c, i| {
            Box::pin(async move {
                let seed = nonce
                    .wrapping_mul(29_000_023)
                    .wrapping_add(k as u64 * 100_000_000 + i * 2);
                let img = Image::new(&format!("gcload-{nonce:x}-{k}-{i}"), seed, &[32768; 2]);
                push_image(
                    c,
                    method,
                    "bench-gcload/push",
                    &format!("p{nonce:x}-{k}-{i}"),
                    &img,
                )
                .await
            })
        });
        let l = live.clone();
        let pull_job = job(move |c, _| {
            let l = l.clone();
            Box::pin(async move { pull_image(c, &l).await })
        });
        let (push, pull) = tokio::join!(
            drive(&ctx.target, workers, limit, ctx.cpu, push_job),
            drive(&ctx.target, workers, limit, ctx.cpu, pull_job)
        );
        stop.store(true, Ordering::Relaxed);
        let runs = match looper {
            Some(h) => Some(
                tokio::task::spawn_blocking(move || h.join())
                    .await?
                    .map_err(|_| anyhow::anyhow!("gc loop thread panicked"))?,
            ),
            None => None,
        };
        let (push, pull) = (push?, pull?);
        let mut pr = Vec::new();
        for (what, m) in [("push", push), ("pull", pull)] {
            let mut row = Row::from_measured(&format!("gc_load_{what}_{phase}"), workers, m);
            // Both halves ran at once: the server's CPU is the whole phase's, in each row.
            row.cpu_s_per_1k_req = None;
            row.cpu_s_per_gib = None;
            row.extra = json!({
                "phase": phase,
                "what": format!("one op = a whole image {what} ({} workers pushing and {} pulling at once)", workers, workers),
                "garbage_seeded": junk,
            });
            pr.push(row);
        }
        let this = [(pr[0].p50_ms, pr[0].p99_ms), (pr[1].p50_ms, pr[1].p99_ms)];
        if let Some(runs) = runs {
            let failures = runs.iter().filter(|r| !r.ok).count();
            if failures == runs.len() {
                let last = runs.last().map_or("", |r| r.last_line.as_str());
                bail!(
                    "every --gc-cmd run failed ({} runs); last: {last}",
                    runs.len()
                );
            }
            let blobs: u64 = runs
                .iter()
                .filter_map(|r| count_before(&r.last_line, "blobs"))
                .sum();
            let links: u64 = runs
                .iter()
                .filter_map(|r| count_before(&r.last_line, "links"))
                .sum();
            eprintln!(
                "  gc: {} runs during the phase ({failures} failed), {links} links and {blobs} blobs deleted",
                runs.len()
            );
            for (i, row) in pr.iter_mut().enumerate() {
                let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                    (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                    _ => None,
                };
                let idle = idle_p.map(|p| p[i]);
                row.extra["p99_vs_idle"] = json!(ratio(this[i].1, idle.and_then(|p| p.1)));
                row.extra["p50_vs_idle"] = json!(ratio(this[i].0, idle.and_then(|p| p.0)));
                row.extra["gc_runs"] = json!(runs.len());
                row.extra["gc_failures"] = json!(failures);
                row.extra["gc_blobs_deleted"] = json!(blobs);
                row.extra["gc_links_deleted"] = json!(links);
                if i == 0 {
                    row.extra["gc_run_list"] = json!(runs);
                }
            }
        } else {
            idle_p = Some(this);
        }
        rows.extend(pr);
    }
    // Everything pushed during the phases is still there and intact.
    let mut c = ctx.conn();
    pull_image(&mut c, &live).await?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_a_summary_line() {
        let l = "deleted 3 manifests, 12 links, 1500 blobs; 1234567 bytes freed in 1.2s";
        assert_eq!(count_before(l, "blobs"), Some(1500));
        assert_eq!(count_before(l, "links"), Some(12));
        assert_eq!(count_before(l, "manifests"), Some(3));
        assert_eq!(count_before("nothing", "blobs"), None);
    }
}
