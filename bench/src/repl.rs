//! Replication data set, opt-in (not in the default set; `replication.sh` runs it):
//!
//! - `repl_seed`: pushes a fixed image set, the same bytes on every run, into
//!   `bench-repl/app-NNN:v1` and nothing else (no probe blob when `--push-method` is given).
//!   Every image is a small config of its own, two 1 MiB base layers that all images share
//!   (pushed once, then mounted from `bench-repl/app-000`, as a client pushing images built on
//!   one base does), and a 1 MiB layer of its own; the first `--repl-big` images also have a
//!   layer of `--repl-big-mib` MiB of their own. Default 200 images, 4 of them with a 64 MiB
//!   layer; `--quick`: 20 images, the big layers 1 MiB.
//!
//! The row says what a copy of the set into an empty registry has to move (`unique_bytes`:
//! every distinct blob once, plus every manifest) and lists each image's manifest digest, so
//! the script can check that both copies hold exactly these manifests. Seeding is not what is
//! measured: the script times the copies.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Result;
use serde_json::json;

use crate::client::Conn;
use crate::data::{self, Blob, Manifest, MIB};
use crate::ops::{self, PushMethod};
use crate::runner::{drive, job, Limit, Measured, Row};
use crate::scenarios::Ctx;

/// Where the bytes come from: fixed, so every run pushes the same images.
const SEED: u64 = 0x7265_706c_0000_0000;
/// Base layers shared by every image.
const BASE_LAYERS: u64 = 2;
pub const TAG: &str = "v1";

pub fn repo_name(i: u64) -> String {
    format!("bench-repl/app-{i:03}")
}

/// The layer sizes and seeds of image `i`: the shared base first, then its own layers.
fn layers(i: u64, big: u64, big_len: u64) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = (0..BASE_LAYERS).map(|k| (SEED + k, MIB)).collect();
    v.push((SEED + 0x1_0000 + i, MIB));
    if i < big {
        v.push((SEED + 0x2_0000 + i, big_len));
    }
    v
}

/// Image `i` of the set (its blobs made on demand: a big layer is streamed, never held).
struct ReplImage {
    repo: String,
    config: Blob,
    layers: Vec<Blob>,
    manifest: Manifest,
}

impl ReplImage {
    fn new(i: u64, big: u64, big_len: u64) -> ReplImage {
        let layers: Vec<Blob> = layers(i, big, big_len)
            .into_iter()
            .map(|(seed, len)| Blob::prng(seed, len))
            .collect();
        let config = data::config(&format!("repl-{i:03}"));
        let manifest = data::manifest(&config, &layers, 0);
        ReplImage {
            repo: repo_name(i),
            config,
            layers,
            manifest,
        }
    }
}

/// Pushes image `img`: its layers (the base ones mounted from the first image's repository
/// unless this is it), the config, then the manifest by tag. Returns the bytes uploaded.
async fn push(c: &mut Conn, method: PushMethod, img: &ReplImage, first: bool) -> Result<u64> {
    let mut sent = 0;
    let from = repo_name(0);
    for (k, l) in img.layers.iter().enumerate() {
        let shared = (k as u64) < BASE_LAYERS && !first;
        let did =
            ops::ensure_blob(c, method, &img.repo, l, shared.then_some(from.as_str())).await?;
        if did && !shared {
            sent += l.len;
        }
    }
    if ops::ensure_blob(c, method, &img.repo, &img.config, None).await? {
        sent += img.config.len;
    }
    ops::put_manifest(c, &img.repo, TAG, &img.manifest).await?;
    Ok(sent + img.manifest.bytes.len() as u64)
}

/// `repl_seed`: the image set, pushed `--seed-concurrency` images at once after the first.
pub async fn seed(ctx: &mut Ctx) -> Result<Vec<Row>> {
    let method = match ctx.forced_method {
        Some(m) => m,
        None => ctx.push_method().await?,
    };
    let n = ctx.knobs.repl_images.max(1);
    let big = ctx.knobs.repl_big.min(n);
    let big_len = ctx.knobs.repl_big_mib.max(1) * MIB;
    let conc = ctx.knobs.seed_concurrency;
    let mark = ctx.cpu.mark();
    let t0 = Instant::now();

    // The first image alone: the others mount the base layers from it.
    let mut c = ctx.conn();
    let first = ReplImage::new(0, big, big_len);
    let mut sent = push(&mut c, method, &first, true).await?;
    let mut requests = c.requests;
    // (index, repository, manifest digest, manifest bytes, config bytes) of every image.
    let pushed = Arc::new(Mutex::new(vec![(
        0u64,
        first.repo.clone(),
        first.manifest.digest.clone(),
        first.manifest.bytes.len() as u64,
        first.config.len,
    )]));
    drop(first);

    let pu = pushed.clone();
    let m = drive(
        &ctx.target,
        conc,
        Limit::ops(n - 1),
        ctx.cpu,
        job(move |c, i| {
            let pu = pu.clone();
            Box::pin(async move {
                let img = ReplImage::new(i + 1, big, big_len);
                let sent = push(c, method, &img, false).await?;
                pu.lock().unwrap().push((
                    i + 1,
                    img.repo.clone(),
                    img.manifest.digest.clone(),
                    img.manifest.bytes.len() as u64,
                    img.config.len,
                ));
                Ok(sent)
            })
        }),
    )
    .await?;
    sent += m.bytes;
    requests += m.http_requests;
    let elapsed = t0.elapsed();
    let (server, client) = ctx.cpu.since(&mark);
    let mut pushed = std::mem::take(&mut *pushed.lock().unwrap());
    pushed.sort_by_key(|p| p.0);
    let manifest_bytes: u64 = pushed.iter().map(|p| p.3).sum();
    let config_bytes: u64 = pushed.iter().map(|p| p.4).sum();

    let base_bytes = BASE_LAYERS * MIB;
    let own_layer_bytes = n * MIB + big * big_len;
    let unique_bytes = base_bytes + own_layer_bytes + config_bytes + manifest_bytes;
    let logical_bytes = n * base_bytes + own_layer_bytes + config_bytes + manifest_bytes;
    let blobs = BASE_LAYERS + n * 2 + big;
    eprintln!(
        "  seeded {n} images ({big} with a {} MiB layer): {blobs} distinct blobs, {unique_bytes} bytes to copy ({logical_bytes} counting the shared base in every image) in {:.1}s",
        big_len / MIB,
        elapsed.as_secs_f64()
    );
    let measured = Measured {
        ops: n,
        http_requests: requests,
        bytes: sent,
        elapsed,
        lat_us: Vec::new(),
        server_cpu_s: server,
        store_cpu_s: ctx.cpu.store_since(&mark),
        client_cpu_s: client,
    };
    let mut row = Row::from_measured("repl_seed", conc, measured);
    row.op_s = Some(elapsed.as_secs_f64());
    row.extra = json!({
        "what": "ops = images pushed (seeding, not the measurement); bytes = bytes uploaded",
        "images": n,
        "tag": TAG,
        "big_images": big,
        "big_layer_bytes": big_len,
        "base_layers": BASE_LAYERS,
        "layers_per_image": BASE_LAYERS + 1,
        "distinct_blobs": blobs,
        "unique_bytes": unique_bytes,
        "logical_bytes": logical_bytes,
        "manifest_bytes": manifest_bytes,
        "push_method": method.name(),
        "manifests": pushed
            .iter()
            .map(|(_, r, d, _, _)| json!({ "repo": r, "digest": d }))
            .collect::<Vec<_>>(),
    });
    Ok(vec![row])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_set_is_fixed_and_shares_its_base() {
        let a = ReplImage::new(3, 4, 2 * MIB);
        let b = ReplImage::new(3, 4, 2 * MIB);
        assert_eq!(a.manifest.digest, b.manifest.digest);
        let c = ReplImage::new(7, 4, 2 * MIB);
        assert_eq!(a.layers.len(), 4);
        assert_eq!(c.layers.len(), 3);
        assert_eq!(a.layers[0].digest, c.layers[0].digest);
        assert_eq!(a.layers[1].digest, c.layers[1].digest);
        assert_ne!(a.layers[2].digest, c.layers[2].digest);
        assert_ne!(a.config.digest, c.config.digest);
        assert_eq!(repo_name(7), "bench-repl/app-007");
    }
}
