//! The scenarios. Each prepares (untimed), runs a measured phase, and returns result rows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, StatusCode};
use serde_json::json;

use crate::client::{read_all, Conn, ReqBody, Target};
use crate::data::{self, Blob, PullSet, MIB};
use crate::ops::{self, p, PushMethod};
use crate::runner::{drive, job, CpuMeter, Limit, Measured, Row};

/// Every scenario, in the order they run.
pub const ALL: &[&str] = &[
    "push_blob_1m_c8",
    "push_blob_256m_mono",
    "push_blob_256m_chunked",
    "pull_blob_1m_c1",
    "pull_blob_1m_c8",
    "pull_blob_1m_c32",
    "pull_blob_256m_c1",
    "pull_blob_256m_c8",
    "pull_blob_256m_c32",
    "manifest_head_tag_c64",
    "manifest_get_tag_c64",
    "manifest_head_digest_c64",
    "manifest_get_digest_c64",
    "tag_put",
    "image_200_layers",
    "tags_list_10k",
    "catalog_10k",
    "peak_rss",
];

/// Scenarios run only when named in `--scenarios` (the garbage-collection and scale ones, which
/// need a script around them: see `gc-scale.sh`), in the order they run.
pub const OPT_IN: &[&str] = &[
    "gc_seed",
    "gc_verify",
    "gc_load",
    "scale_seed",
    "scale_pages",
    "repl_seed",
];

/// Every row name prefix, in report order: `ALL`, then the opt-in scenarios' rows (with those the
/// script writes itself: `gc_delete*`, `scale_restart`).
pub const REPORT_ORDER: &[&str] = &[
    "gc_seed",
    "gc_delete",
    "gc_verify",
    "gc_load",
    "scale_seed",
    "scale_restart",
    "scale_catalog_page",
    "scale_tags_page",
    "repl_seed",
];

/// Scenarios that only read the fixed pull data set (all that nginx can serve).
pub fn read_only(name: &str) -> bool {
    name.starts_with("pull_") || name.starts_with("manifest_") || name == "peak_rss"
}

/// Counts and durations.
#[derive(Clone, Debug)]
pub struct Knobs {
    pub duration: Duration,
    pub requests: Option<u64>,
    pub push_1m: u64,
    pub push_256m: u64,
    pub pull_256m: [u64; 3],
    pub tag_puts: u64,
    pub layers: u64,
    pub tags: u64,
    pub repos: u64,
    pub walks: u64,
    pub full_lists: u64,
    /// gc_seed: live images, loose garbage blobs, images whose manifests are deleted.
    pub gc_live: u64,
    pub gc_blobs: u64,
    pub gc_images: u64,
    /// gc_load: garbage blobs seeded before each phase, phase length, workers per half.
    pub gc_load_garbage: u64,
    pub gc_load_duration: Duration,
    pub load_workers: usize,
    /// scale_seed / scale_pages.
    pub scale_repos: u64,
    pub scale_tags_per_repo: u64,
    pub scale_big_tags: u64,
    pub page_requests: u64,
    /// Workers for the opt-in scenarios' seeding.
    pub seed_concurrency: usize,
    /// repl_seed: images, how many of them have a big layer, its size in MiB.
    pub repl_images: u64,
    pub repl_big: u64,
    pub repl_big_mib: u64,
}

impl Knobs {
    pub fn new(quick: bool, duration: Option<f64>, requests: Option<u64>) -> Knobs {
        let d = duration.unwrap_or(if quick { 1.0 } else { 5.0 });
        Knobs {
            duration: Duration::from_secs_f64(d),
            requests,
            push_1m: if quick { 16 } else { 64 },
            push_256m: if quick { 1 } else { 4 },
            pull_256m: if quick { [1, 8, 32] } else { [4, 16, 32] },
            tag_puts: if quick { 200 } else { 2000 },
            layers: 200,
            tags: if quick { 1000 } else { 10_000 },
            repos: if quick { 1000 } else { 10_000 },
            walks: if quick { 2 } else { 5 },
            full_lists: if quick { 5 } else { 20 },
            gc_live: if quick { 4 } else { 20 },
            gc_blobs: if quick { 1000 } else { 20_000 },
            gc_images: if quick { 20 } else { 500 },
            gc_load_garbage: if quick { 500 } else { 10_000 },
            gc_load_duration: Duration::from_secs(if quick { 3 } else { 20 }),
            load_workers: 4,
            scale_repos: if quick { 1000 } else { 100_000 },
            scale_tags_per_repo: if quick { 1 } else { 9 },
            scale_big_tags: if quick { 2000 } else { 100_000 },
            page_requests: if quick { 20 } else { 100 },
            seed_concurrency: 16,
            repl_images: if quick { 20 } else { 200 },
            repl_big: 4,
            repl_big_mib: if quick { 1 } else { 64 },
        }
    }

    /// The limit of a time-bound scenario: `--requests` if given, else `--duration`.
    fn timed(&self) -> Limit {
        match self.requests {
            Some(n) => Limit::ops(n),
            None => Limit {
                ops: None,
                duration: Some(self.duration),
            },
        }
    }
}

pub struct Ctx {
    pub target: Arc<Target>,
    pub cpu: CpuMeter,
    pub knobs: Knobs,
    pub method: Option<PushMethod>,
    pub forced_method: Option<PushMethod>,
    pub nonce: u64,
    pub read_only: bool,
    /// gc_seed writes, gc_verify reads: what is live and what is garbage (`--state`).
    pub state_file: Option<String>,
    /// gc_load: the collector command run in a loop during the second phase (`--gc-cmd`).
    pub gc_cmd: Option<String>,
    pull: Option<Arc<PullSet>>,
    pull_seeded: bool,
}

fn median(v: &mut [f64]) -> Option<f64> {
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

impl Ctx {
    pub fn new(
        target: Arc<Target>,
        cpu: CpuMeter,
        knobs: Knobs,
        read_only: bool,
        forced: Option<PushMethod>,
    ) -> Ctx {
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            ^ ((std::process::id() as u64) << 40);
        Ctx {
            target,
            cpu,
            knobs,
            method: None,
            forced_method: forced,
            nonce,
            read_only,
            state_file: None,
            gc_cmd: None,
            pull: None,
            pull_seeded: false,
        }
    }

    pub fn conn(&self) -> Conn {
        Conn::new(self.target.clone())
    }

    pub fn pull_set(&mut self) -> Arc<PullSet> {
        self.pull
            .get_or_insert_with(|| Arc::new(PullSet::new()))
            .clone()
    }

    /// Finds out whether the registry takes a single-POST monolithic upload (201) or needs
    /// POST + PUT (a 202 on the POST: Distribution 2.8 ignores `?digest=` there).
    pub async fn push_method(&mut self) -> Result<PushMethod> {
        if let Some(m) = self.forced_method.or(self.method) {
            return Ok(m);
        }
        let mut c = self.conn();
        let blob = Blob::literal(Bytes::from(format!("berth-bench probe {}", self.nonce)));
        let path = format!(
            "{}?digest={}",
            p(&c, "bench/probe/blobs/uploads/"),
            blob.digest
        );
        let resp = c
            .expect(
                Method::POST,
                &path,
                &[(CONTENT_TYPE, "application/octet-stream")],
                ReqBody::bytes(blob.bytes.clone().expect("literal")),
                &[StatusCode::CREATED, StatusCode::ACCEPTED],
            )
            .await?;
        let m = if resp.status() == StatusCode::CREATED {
            read_all(resp).await?;
            PushMethod::SinglePost
        } else {
            let loc = crate::client::header(&resp, "location")
                .map(|l| c.target().path_of(l))
                .ok_or_else(|| anyhow!("POST upload: 202 without Location"))?;
            read_all(resp).await?;
            ops::finish_upload(
                &mut c,
                &loc,
                &blob.digest,
                ReqBody::bytes(blob.bytes.clone().expect("literal")),
            )
            .await?;
            PushMethod::PostPut
        };
        self.method = Some(m);
        Ok(m)
    }

    /// Pushes the fixed pull data set (skipping what is there already).
    pub async fn seed_pull(&mut self) -> Result<Arc<PullSet>> {
        let set = self.pull_set();
        if self.pull_seeded || self.read_only {
            return Ok(set);
        }
        let method = self.push_method().await?;
        let t0 = Instant::now();
        let blobs: Arc<Vec<Blob>> = Arc::new(set.blobs().into_iter().cloned().collect());
        let n = blobs.len() as u64;
        let repo = set.repo.clone();
        drive(
            &self.target,
            4,
            Limit::ops(n),
            self.cpu,
            job(move |c, i| {
                let (blobs, repo) = (blobs.clone(), repo.clone());
                Box::pin(async move {
                    ops::ensure_blob(c, method, &repo, &blobs[i as usize], None).await?;
                    Ok(0)
                })
            }),
        )
        .await?;
        let mut c = self.conn();
        ops::put_manifest(&mut c, &set.repo, &set.tag, &set.manifest).await?;
        eprintln!(
            "  seeded {} ({} blobs) in {:.1}s",
            set.repo,
            n,
            t0.elapsed().as_secs_f64()
        );
        self.pull_seeded = true;
        Ok(set)
    }

    pub async fn run(&mut self, name: &str) -> Result<Vec<Row>> {
        match name {
            "push_blob_1m_c8" => self.push_1m().await,
            "push_blob_256m_mono" => self.push_256m(false).await,
            "push_blob_256m_chunked" => self.push_256m(true).await,
            "pull_blob_1m_c1" => self.pull(name, false, 1).await,
            "pull_blob_1m_c8" => self.pull(name, false, 8).await,
            "pull_blob_1m_c32" => self.pull(name, false, 32).await,
            "pull_blob_256m_c1" => self.pull(name, true, 1).await,
            "pull_blob_256m_c8" => self.pull(name, true, 8).await,
            "pull_blob_256m_c32" => self.pull(name, true, 32).await,
            "manifest_head_tag_c64" => self.manifest(name, false, false).await,
            "manifest_get_tag_c64" => self.manifest(name, true, false).await,
            "manifest_head_digest_c64" => self.manifest(name, false, true).await,
            "manifest_get_digest_c64" => self.manifest(name, true, true).await,
            "tag_put" => self.tag_put().await,
            "image_200_layers" => self.image().await,
            "tags_list_10k" => self.tags_list().await,
            "catalog_10k" => self.catalog().await,
            "peak_rss" => Ok(vec![self.peak_rss()]),
            "gc_seed" => crate::gc::seed(self).await,
            "gc_verify" => crate::gc::verify(self).await,
            "gc_load" => crate::gc::load(self).await,
            "scale_seed" => crate::scale::seed(self).await,
            "scale_pages" => crate::scale::pages(self).await,
            "repl_seed" => crate::repl::seed(self).await,
            _ => bail!("unknown scenario {name:?}"),
        }
    }

    async fn push_1m(&mut self) -> Result<Vec<Row>> {
        let method = self.push_method().await?;
        let n = self.knobs.push_1m;
        let base = self.nonce.wrapping_mul(1_000_003);
        let blobs: Arc<Vec<Blob>> = Arc::new(
            (0..n)
                .map(|i| Blob::prng(base.wrapping_add(i), MIB))
                .collect(),
        );
        let m = drive(
            &self.target,
            8,
            Limit::ops(n),
            self.cpu,
            job(move |c, i| {
                let blobs = blobs.clone();
                Box::pin(async move {
                    let b = &blobs[i as usize];
                    ops::push_blob(c, method, "bench/push", b).await?;
                    Ok(b.len)
                })
            }),
        )
        .await?;
        let mut row = Row::from_measured("push_blob_1m_c8", 8, m);
        row.extra = json!({ "push_method": method.name(), "blobs": n });
        Ok(vec![row])
    }

    async fn push_256m(&mut self, chunked: bool) -> Result<Vec<Row>> {
        let method = self.push_method().await?;
        let n = self.knobs.push_256m;
        let base = self
            .nonce
            .wrapping_mul(7_000_003)
            .wrapping_add(if chunked { 500 } else { 0 });
        let blobs: Arc<Vec<Blob>> = Arc::new(
            (0..n)
                .map(|i| Blob::prng(base.wrapping_add(i), data::BIG_LEN))
                .collect(),
        );
        let m = drive(
            &self.target,
            1,
            Limit::ops(n),
            self.cpu,
            job(move |c, i| {
                let blobs = blobs.clone();
                Box::pin(async move {
                    let b = &blobs[i as usize];
                    if chunked {
                        ops::push_blob_chunked(c, "bench/push", b, 16 * MIB).await?;
                    } else {
                        // Always the two-step monolithic upload, the body streamed in one PUT.
                        let session = ops::start_upload(c, "bench/push").await?;
                        let body = ReqBody::Prng {
                            seed: b.seed,
                            pos: 0,
                            end: b.len,
                        };
                        ops::finish_upload(c, &session, &b.digest, body).await?;
                    }
                    Ok(b.len)
                })
            }),
        )
        .await?;
        let name = if chunked {
            "push_blob_256m_chunked"
        } else {
            "push_blob_256m_mono"
        };
        let mut row = Row::from_measured(name, 1, m);
        row.extra = json!({ "blobs": n, "blob_bytes": data::BIG_LEN, "chunk_bytes": if chunked { 16 * MIB } else { data::BIG_LEN } });
        let _ = method;
        Ok(vec![row])
    }

    async fn pull(&mut self, name: &str, big: bool, conc: usize) -> Result<Vec<Row>> {
        let set = self.seed_pull().await?;
        let limit = if big {
            let idx = match conc {
                1 => 0,
                8 => 1,
                _ => 2,
            };
            Limit::ops(self.knobs.pull_256m[idx])
        } else {
            self.knobs.timed()
        };
        let s = set.clone();
        let m = drive(
            &self.target,
            conc,
            limit,
            self.cpu,
            job(move |c, i| {
                let s = s.clone();
                Box::pin(async move {
                    let b = if big {
                        &s.big[i as usize % s.big.len()]
                    } else {
                        &s.small[i as usize % s.small.len()]
                    };
                    ops::get_blob(c, &s.repo, &b.digest, b.len).await
                })
            }),
        )
        .await?;
        Ok(vec![Row::from_measured(name, conc, m)])
    }

    async fn manifest(&mut self, name: &str, get: bool, by_digest: bool) -> Result<Vec<Row>> {
        let set = self.seed_pull().await?;
        let s = set.clone();
        let m = drive(
            &self.target,
            64,
            self.knobs.timed(),
            self.cpu,
            job(move |c, _| {
                let s = s.clone();
                Box::pin(async move {
                    let r = if by_digest {
                        s.manifest.digest.as_str()
                    } else {
                        s.tag.as_str()
                    };
                    let len = s.manifest.bytes.len() as u64;
                    if get {
                        ops::get_manifest(c, &s.repo, r, &s.manifest.digest, len).await
                    } else {
                        ops::head_manifest(c, &s.repo, r, &s.manifest.digest, len).await
                    }
                })
            }),
        )
        .await?;
        let mut row = Row::from_measured(name, 64, m);
        row.extra = json!({ "manifest_bytes": set.manifest.bytes.len() });
        Ok(vec![row])
    }

    async fn tag_put(&mut self) -> Result<Vec<Row>> {
        let set = self.seed_pull().await?;
        let method = self.push_method().await?;
        let repo = "bench/tagput";
        let mut c = self.conn();
        ops::ensure_blob(&mut c, method, repo, &set.config, Some(&set.repo)).await?;
        for b in &set.small[..5] {
            ops::ensure_blob(&mut c, method, repo, b, Some(&set.repo)).await?;
        }
        let n = self.knobs.tag_puts;
        let nonce = self.nonce;
        let s = set.clone();
        let m = drive(
            &self.target,
            8,
            Limit::ops(n),
            self.cpu,
            job(move |c, i| {
                let s = s.clone();
                Box::pin(async move {
                    ops::put_manifest(c, repo, &format!("p{nonce:x}-{i}"), &s.manifest).await?;
                    Ok(0)
                })
            }),
        )
        .await?;
        let mut row = Row::from_measured("tag_put", 8, m);
        row.extra = json!({ "tags": n });
        Ok(vec![row])
    }

    async fn image(&mut self) -> Result<Vec<Row>> {
        let method = self.push_method().await?;
        let n = self.knobs.layers;
        let repo = format!("bench/img-{:x}", self.nonce);
        let base = self.nonce.wrapping_mul(3_000_017);
        let layers: Vec<Blob> = (0..n)
            .map(|i| Blob::prng(base.wrapping_add(i), (16 + (i * 7919) % 48) * 1024))
            .collect();
        let config = data::config(&repo);
        let manifest = data::manifest(&config, &layers, 0);
        let layers = Arc::new(layers);
        let total_bytes: u64 =
            layers.iter().map(|l| l.len).sum::<u64>() + config.len + manifest.bytes.len() as u64;

        // Push: every layer (HEAD, then upload), the config, then the manifest by tag.
        let mark = self.cpu.mark();
        let t0 = Instant::now();
        let (ls, r) = (layers.clone(), repo.clone());
        let m = drive(
            &self.target,
            8,
            Limit::ops(n),
            self.cpu,
            job(move |c, i| {
                let (ls, r) = (ls.clone(), r.clone());
                Box::pin(async move {
                    let b = &ls[i as usize];
                    ops::ensure_blob(c, method, &r, b, None).await?;
                    Ok(b.len)
                })
            }),
        )
        .await?;
        let mut c = self.conn();
        ops::ensure_blob(&mut c, method, &repo, &config, None).await?;
        ops::put_manifest(&mut c, &repo, "v1", &manifest).await?;
        let push = finish_op(
            "image_200_layers_push",
            t0,
            &mark,
            self.cpu,
            m.http_requests + c.requests,
            n + 2,
            total_bytes,
        );

        // Pull: the manifest by tag, then config and layers.
        let mark = self.cpu.mark();
        let t0 = Instant::now();
        let mut c = self.conn();
        let body = ops::fetch_manifest(&mut c, &repo, "v1").await?;
        crate::client::verify_bytes(&body, &manifest.digest, "image manifest")?;
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        let mut descs: Vec<(String, u64)> = vec![(
            v["config"]["digest"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            v["config"]["size"].as_u64().unwrap_or_default(),
        )];
        for l in v["layers"].as_array().cloned().unwrap_or_default() {
            descs.push((
                l["digest"].as_str().unwrap_or_default().to_string(),
                l["size"].as_u64().unwrap_or_default(),
            ));
        }
        let descs = Arc::new(descs);
        let nd = descs.len() as u64;
        let (d, r) = (descs.clone(), repo.clone());
        let m = drive(
            &self.target,
            8,
            Limit::ops(nd),
            self.cpu,
            job(move |c, i| {
                let (d, r) = (d.clone(), r.clone());
                Box::pin(async move {
                    let (digest, size) = &d[i as usize];
                    ops::get_blob(c, &r, digest, *size).await
                })
            }),
        )
        .await?;
        let pull = finish_op(
            "image_200_layers_pull",
            t0,
            &mark,
            self.cpu,
            m.http_requests + c.requests,
            nd + 1,
            total_bytes,
        );
        Ok(vec![push, pull])
    }

    /// A config-only manifest in `bench/tags` (and the blob it needs).
    async fn small_manifest(&mut self) -> Result<(Blob, data::Manifest)> {
        let method = self.push_method().await?;
        let config = data::config("tags");
        let manifest = data::manifest(&config, &[], 0);
        let mut c = self.conn();
        ops::ensure_blob(&mut c, method, "bench/tags", &config, None).await?;
        Ok((config, manifest))
    }

    async fn tags_list(&mut self) -> Result<Vec<Row>> {
        let (_, manifest) = self.small_manifest().await?;
        let n = self.knobs.tags;
        let repo = "bench/tags";
        let mut c = self.conn();
        let list_path = p(&c, &format!("{repo}/tags/list"));
        let have = {
            let resp = c
                .expect(
                    Method::GET,
                    &list_path,
                    &[],
                    ReqBody::Empty,
                    &[StatusCode::OK, StatusCode::NOT_FOUND],
                )
                .await?;
            let ok = resp.status() == StatusCode::OK;
            let body = read_all(resp).await?;
            if ok {
                let v: serde_json::Value = serde_json::from_slice(&body)?;
                v["tags"].as_array().map_or(0, |a| a.len()) as u64
            } else {
                0
            }
        };
        if have < n {
            let t0 = Instant::now();
            let m = Arc::new(manifest);
            drive(
                &self.target,
                8,
                Limit::ops(n),
                self.cpu,
                job(move |c, i| {
                    let m = m.clone();
                    Box::pin(async move {
                        ops::put_manifest(c, repo, &format!("t{i:05}"), &m).await?;
                        Ok(0)
                    })
                }),
            )
            .await?;
            eprintln!("  seeded {n} tags in {:.1}s", t0.elapsed().as_secs_f64());
        }

        // Whole list, one connection.
        let lp = list_path.clone();
        let m = drive(
            &self.target,
            1,
            Limit::ops(self.knobs.full_lists),
            self.cpu,
            job(move |c, _| {
                let lp = lp.clone();
                Box::pin(async move {
                    let resp = c
                        .expect(Method::GET, &lp, &[], ReqBody::Empty, &[StatusCode::OK])
                        .await?;
                    let body = read_all(resp).await?;
                    let v: serde_json::Value = serde_json::from_slice(&body)?;
                    let got = v["tags"].as_array().map_or(0, |a| a.len()) as u64;
                    if got < n {
                        bail!("GET {lp}: {got} tags, expected at least {n}");
                    }
                    Ok(body.len() as u64)
                })
            }),
        )
        .await?;
        let mut full = Row::from_measured("tags_list_10k", 1, m);
        full.extra = json!({ "tags": n });

        // Paginated walk, n=100.
        let first = format!("{list_path}?n=100");
        let mut paged = self
            .walks("tags_list_10k_paged", &first, "tags", n, |_| true)
            .await?;
        paged.extra["tags"] = json!(n);
        Ok(vec![full, paged])
    }

    /// Repeated paginated walks from `first`; checks that at least `want` items pass `filter`.
    async fn walks(
        &mut self,
        name: &str,
        first: &str,
        key: &str,
        want: u64,
        filter: impl Fn(&str) -> bool,
    ) -> Result<Row> {
        let mut c = self.conn();
        c.connect().await?;
        let mark = self.cpu.mark();
        let t0 = Instant::now();
        let mut times = Vec::new();
        let mut pages_total = 0;
        let mut pages_per_walk = 0;
        for _ in 0..self.knobs.walks {
            let t = Instant::now();
            let (pages, items) = ops::walk(&mut c, first, key).await?;
            times.push(t.elapsed().as_secs_f64());
            let got = items.iter().filter(|s| filter(s)).count() as u64;
            if got < want {
                bail!("walk from {first}: {got} items, expected at least {want}");
            }
            pages_total += pages;
            pages_per_walk = pages;
        }
        let elapsed = t0.elapsed();
        let (server, client) = self.cpu.since(&mark);
        let m = Measured {
            ops: pages_total,
            http_requests: c.requests,
            bytes: 0,
            elapsed,
            lat_us: Vec::new(),
            server_cpu_s: server,
            store_cpu_s: self.cpu.store_since(&mark),
            client_cpu_s: client,
        };
        let mut row = Row::from_measured(name, 1, m);
        row.op_s = median(&mut times);
        row.extra = json!({ "walks": self.knobs.walks, "pages_per_walk": pages_per_walk });
        Ok(row)
    }

    async fn catalog(&mut self) -> Result<Vec<Row>> {
        let (config, manifest) = self.small_manifest().await?;
        let method = self.push_method().await?;
        let n = self.knobs.repos;
        let prefix = "bench-cat/r";
        let mut c = self.conn();
        let first = p(&c, "_catalog?n=1000");
        let (_, existing) = ops::walk(&mut c, &first, "repositories").await?;
        let existing: std::collections::HashSet<String> = existing.into_iter().collect();
        let missing: Vec<String> = (0..n)
            .map(|i| format!("{prefix}{i:05}"))
            .filter(|r| !existing.contains(r))
            .collect();
        if !missing.is_empty() {
            let t0 = Instant::now();
            let k = missing.len() as u64;
            let st = Arc::new((missing, config, manifest));
            drive(
                &self.target,
                8,
                Limit::ops(k),
                self.cpu,
                job(move |c, i| {
                    let st = st.clone();
                    Box::pin(async move {
                        let (repos, config, manifest) = &*st;
                        let repo = &repos[i as usize];
                        mount_or_push(c, method, repo, config, "bench/tags").await?;
                        ops::put_manifest(c, repo, "v1", manifest).await?;
                        Ok(0)
                    })
                }),
            )
            .await?;
            eprintln!(
                "  seeded {k} repositories in {:.1}s",
                t0.elapsed().as_secs_f64()
            );
        }
        let mut row = self
            .walks("catalog_10k", &first, "repositories", n, |r| {
                r.starts_with(prefix)
            })
            .await?;
        row.extra["repositories"] = json!(n);
        Ok(vec![row])
    }

    fn peak_rss(&self) -> Row {
        let kib = self.cpu.server_pid.and_then(crate::runner::peak_rss_kib);
        let mut row = Row {
            scenario: "peak_rss".into(),
            ok: kib.is_some(),
            ..Default::default()
        };
        if kib.is_none() {
            row.error = Some("needs --server-pid".into());
        }
        row.extra = json!({ "vmhwm_kib": kib, "vmhwm_mib": kib.map(|k| k as f64 / 1024.0) });
        row
    }
}

/// Cross-repo mount of `blob` from `from` into a new repository, uploading if the mount is refused.
pub async fn mount_or_push(
    c: &mut Conn,
    method: PushMethod,
    repo: &str,
    blob: &Blob,
    from: &str,
) -> Result<()> {
    let path = p(
        c,
        &format!("{repo}/blobs/uploads/?mount={}&from={from}", blob.digest),
    );
    let resp = c
        .expect(
            Method::POST,
            &path,
            &[],
            ReqBody::Empty,
            &[StatusCode::CREATED, StatusCode::ACCEPTED],
        )
        .await?;
    if resp.status() == StatusCode::CREATED {
        read_all(resp).await?;
        return Ok(());
    }
    let loc = crate::client::header(&resp, "location").map(|l| c.target().path_of(l));
    read_all(resp).await?;
    match loc {
        Some(loc) => {
            ops::finish_upload(
                c,
                &loc,
                &blob.digest,
                ReqBody::bytes(blob.bytes.clone().unwrap_or_default()),
            )
            .await
        }
        None => ops::push_blob(c, method, repo, blob).await,
    }
}

fn finish_op(
    name: &str,
    t0: Instant,
    mark: &crate::runner::CpuMark,
    cpu: CpuMeter,
    http_requests: u64,
    ops: u64,
    bytes: u64,
) -> Row {
    let elapsed = t0.elapsed();
    let (server, client) = cpu.since(mark);
    let m = Measured {
        ops,
        http_requests,
        bytes,
        elapsed,
        lat_us: Vec::new(),
        server_cpu_s: server,
        store_cpu_s: cpu.store_since(mark),
        client_cpu_s: client,
    };
    let mut row = Row::from_measured(name, 8, m);
    row.op_s = Some(elapsed.as_secs_f64());
    row
}
