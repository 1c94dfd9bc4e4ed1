//! Scale scenarios, opt-in (not in the default set; `gc-scale.sh` runs them):
//!
//! - `scale_seed`: `--scale-repos` repositories `bench-scale/rNNNNNN`, each with
//!   `--scale-tags-per-repo` tags of one small config-only manifest, and one repository
//!   `bench-scale/big` with `--scale-big-tags` tags, pushed through the API as fast as the
//!   server takes them (`--seed-concurrency` at once). Skipped where the last tag is there.
//! - `scale_pages`: the first page of `/v2/_catalog?n=100` and of `bench-scale/big`'s
//!   `tags/list?n=100`, and a page from the middle of each (`last=`): the very first request
//!   on a fresh connection (`cold_ms`: after a restart, the server's first), then
//!   `--page-requests` more for p50/p99.
//!
//! The restart itself (process start to `GET /v2/` 200) is timed by the script.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use http::{Method, StatusCode};
use serde_json::json;

use crate::client::{read_all, Conn, ReqBody};
use crate::data;
use crate::ops::{self, p};
use crate::runner::{drive, job, Limit, Row};
use crate::scenarios::{mount_or_push, Ctx};

const BASE_REPO: &str = "bench-scale/base";
const BIG_REPO: &str = "bench-scale/big";

fn repo_name(i: u64) -> String {
    format!("bench-scale/r{i:06}")
}

async fn has_manifest(c: &mut Conn, repo: &str, tag: &str) -> Result<bool> {
    let path = p(c, &format!("{repo}/manifests/{tag}"));
    let resp = c
        .send(
            Method::HEAD,
            &path,
            &[(http::header::ACCEPT, data::MANIFEST_ACCEPT)],
            ReqBody::Empty,
        )
        .await?;
    let ok = resp.status() == StatusCode::OK;
    read_all(resp).await?;
    Ok(ok)
}

/// `scale_seed`: the repositories and the big tag list.
pub async fn seed(ctx: &mut Ctx) -> Result<Vec<Row>> {
    let method = ctx.push_method().await?;
    let (repos, per, big) = (
        ctx.knobs.scale_repos,
        ctx.knobs.scale_tags_per_repo.max(1),
        ctx.knobs.scale_big_tags,
    );
    let conc = ctx.knobs.seed_concurrency;
    let config = data::config("scale");
    let manifest = data::manifest(&config, &[], 0);
    let mut c = ctx.conn();
    ops::ensure_blob(&mut c, method, BASE_REPO, &config, None).await?;
    ops::put_manifest(&mut c, BASE_REPO, "v0", &manifest).await?;
    let st = Arc::new((config, manifest));
    let mut rows = Vec::new();

    let last = format!("v{}", per - 1);
    if repos > 0 && !has_manifest(&mut c, &repo_name(repos - 1), &last).await? {
        let step = (repos / 10).max(1);
        let t0 = Instant::now();
        let s = st.clone();
        let m = drive(
            &ctx.target,
            conc,
            Limit::ops(repos),
            ctx.cpu,
            job(move |c, i| {
                let s = s.clone();
                Box::pin(async move {
                    let (config, manifest) = &*s;
                    let repo = repo_name(i);
                    mount_or_push(c, method, &repo, config, BASE_REPO).await?;
                    for t in 0..per {
                        ops::put_manifest(c, &repo, &format!("v{t}"), manifest).await?;
                    }
                    if (i + 1) % step == 0 {
                        eprintln!(
                            "  {} / {repos} repositories ({:.0} s)",
                            i + 1,
                            t0.elapsed().as_secs_f64()
                        );
                    }
                    Ok(0)
                })
            }),
        )
        .await?;
        let secs = m.elapsed.as_secs_f64();
        let mut row = Row::from_measured("scale_seed_repos", conc, m);
        row.extra = json!({
            "what": "one op = a repository: a blob mount and its tags' manifest PUTs",
            "repositories": repos,
            "tags_per_repo": per,
            "tags": repos * per,
            "tags_per_s": (repos * per) as f64 / secs.max(1e-9),
        });
        rows.push(row);
    } else {
        eprintln!("  {repos} repositories already there");
    }

    let last = format!("t{:07}", big.saturating_sub(1));
    if big > 0 && !has_manifest(&mut c, BIG_REPO, &last).await? {
        let (config, _) = &*st;
        mount_or_push(&mut c, method, BIG_REPO, config, BASE_REPO).await?;
        let step = (big / 10).max(1);
        let t0 = Instant::now();
        let s = st.clone();
        let m = drive(
            &ctx.target,
            conc,
            Limit::ops(big),
            ctx.cpu,
            job(move |c, i| {
                let s = s.clone();
                Box::pin(async move {
                    ops::put_manifest(c, BIG_REPO, &format!("t{i:07}"), &s.1).await?;
                    if (i + 1) % step == 0 {
                        eprintln!(
                            "  {} / {big} tags in {BIG_REPO} ({:.0} s)",
                            i + 1,
                            t0.elapsed().as_secs_f64()
                        );
                    }
                    Ok(0)
                })
            }),
        )
        .await?;
        let mut row = Row::from_measured("scale_seed_big", conc, m);
        row.extra = json!({ "what": "one op = a tag PUT", "tags": big, "repo": BIG_REPO });
        rows.push(row);
    } else {
        eprintln!("  {big} tags in {BIG_REPO} already there");
    }
    eprintln!(
        "  data set: {} repositories, {} tags",
        repos + 2,
        repos * per + big + 1
    );
    Ok(rows)
}

/// GET `path` once; returns (latency ms, items under `key`, body bytes).
async fn page(c: &mut Conn, path: &str, key: &str) -> Result<(f64, u64, u64)> {
    let t = Instant::now();
    let resp = c
        .expect(Method::GET, path, &[], ReqBody::Empty, &[StatusCode::OK])
        .await?;
    let body = read_all(resp).await?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    let items = v[key].as_array().map_or(0, |a| a.len()) as u64;
    Ok((ms, items, body.len() as u64))
}

/// `scale_pages`: first and middle pages of the catalog and of the big tag list.
pub async fn pages(ctx: &mut Ctx) -> Result<Vec<Row>> {
    let (repos, big) = (ctx.knobs.scale_repos, ctx.knobs.scale_big_tags);
    let c0 = ctx.conn();
    let cases = [
        (
            "scale_catalog_page",
            p(&c0, "_catalog?n=100"),
            "repositories",
            repos.min(100),
        ),
        (
            "scale_catalog_page_mid",
            p(
                &c0,
                &format!("_catalog?n=100&last={}", repo_name(repos / 2)),
            ),
            "repositories",
            repos.saturating_sub(repos / 2 + 1).min(100),
        ),
        (
            "scale_tags_page",
            p(&c0, &format!("{BIG_REPO}/tags/list?n=100")),
            "tags",
            big.min(100),
        ),
        (
            "scale_tags_page_mid",
            p(
                &c0,
                &format!("{BIG_REPO}/tags/list?n=100&last=t{:07}", big / 2),
            ),
            "tags",
            big.saturating_sub(big / 2 + 1).min(100),
        ),
    ];
    let mut rows = Vec::new();
    for (name, path, key, want) in cases {
        let mut c = ctx.conn();
        c.connect().await?;
        let (cold_ms, items, bytes) = page(&mut c, &path, key).await?;
        if items < want {
            bail!("GET {path}: {items} {key}, expected at least {want}");
        }
        let pth = path.clone();
        let m = drive(
            &ctx.target,
            1,
            Limit::ops(ctx.knobs.page_requests),
            ctx.cpu,
            job(move |c, _| {
                let pth = pth.clone();
                Box::pin(async move {
                    let resp = c
                        .expect(Method::GET, &pth, &[], ReqBody::Empty, &[StatusCode::OK])
                        .await?;
                    Ok(read_all(resp).await?.len() as u64)
                })
            }),
        )
        .await?;
        let mut row = Row::from_measured(name, 1, m);
        row.extra = json!({
            "path": path,
            "cold_ms": cold_ms,
            "items": items,
            "page_bytes": bytes,
            "repositories": repos,
            "big_tags": big,
        });
        eprintln!("  {name}: first request {cold_ms:.2} ms, {items} {key}, {bytes} bytes");
        rows.push(row);
    }
    Ok(rows)
}
