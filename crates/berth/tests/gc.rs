//! Online garbage collection against the real stores: the core and the collector built as the
//! server builds them (`server::build_core`), over a directory and SQLite, or over a real S3
//! (Garage); and `berth gc` as a process, killed with SIGKILL part-way.
//!
//! What must hold: every tagged image reads back with identical digests whatever ran
//! concurrently (pushes, tag moves, deletes, collections); after a final collection past the
//! grace period, storage holds exactly the live content; a blob claimed by a collector and
//! pushed again survives; a collector killed mid-run loses nothing and the next run finishes.

mod common;
// Only its API client (`call`) serves here; the harborapi driver is harbor_api.rs's.
#[allow(dead_code)]
#[path = "common/harbor.rs"]
mod harbor;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

use berth::gc::{Collector, Options, Report};
use berth::meta::{Change, MetaStore};
use berth::oci::digest::{Algorithm, Digest};
use berth::oci::name::{Reference, RepoName, Tag};
use berth::registry::{Registry, RegistryError};
use berth::storage::BlobStore;
use common::garage::Garage;
use common::pseudo_bytes;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const BLOBS: &str = "docker/registry/v2/blobs/";

/// A registry's core, collector and stores, built from a configuration as `serve` builds them.
struct Site {
    core: Arc<Registry>,
    meta: Arc<dyn MetaStore>,
    store: BlobStore,
    collector: Collector,
    _dir: tempfile::TempDir,
}

impl Site {
    /// Over `storage` (a `storage:` mapping's body), with SQLite in a temporary directory.
    async fn open(storage: Option<String>) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage.unwrap_or_else(|| {
            format!(
                "  filesystem:\n    rootdirectory: {}\n",
                dir.path().join("data").display()
            )
        });
        let yaml = format!(
            "version: 0.1\nstorage:\n{storage}sqlite:\n  path: {}\n",
            dir.path().join("meta.db").display()
        );
        let cfg = berth::config::load(&yaml, []).unwrap().config;
        let settings = berth::server::Settings::from_config(&cfg).unwrap();
        let (store, redirect) = berth::server::open_blob_store(&settings).await.unwrap();
        let meta = berth::server::open_databases(&settings.meta)
            .await
            .unwrap()
            .0;
        let meta: Arc<dyn MetaStore> = Arc::new(berth::meta::cache::CachedMetaStore::new(meta));
        let core =
            berth::server::build_core(&settings, meta.clone(), None, store.clone(), redirect)
                .unwrap();
        let core = Arc::new(core);
        let collector = Collector::new(core.clone(), meta.clone(), store.clone());
        Site {
            core,
            meta,
            store,
            collector,
            _dir: dir,
        }
    }

    /// Over the stores of a data directory as `berth serve --data` opens them.
    async fn of_data(data: &std::path::Path) -> Site {
        let (store, meta) = berth::server::open_stores(data).await.unwrap();
        let core = Arc::new(Registry::new(meta.clone(), store.clone()));
        Site {
            collector: Collector::new(core.clone(), meta.clone(), store.clone()),
            core,
            meta,
            store,
            _dir: tempfile::tempdir().unwrap(),
        }
    }

    async fn on_disk() -> Site {
        Site::open(None).await
    }

    async fn on_garage(garage: &Garage, bucket: &str) -> Site {
        Site::open(Some(garage.s3_section(&garage.create_bucket(bucket)))).await
    }

    async fn collect(&self, grace: Duration, untagged: bool) -> Report {
        let opts = Options {
            grace,
            untagged,
            ..Options::default()
        };
        self.collector
            .run(
                &opts,
                &indicatif::ProgressBar::hidden(),
                &CancellationToken::new(),
            )
            .await
            .expect("a collection")
    }

    /// The digests of every blob file in storage.
    async fn stored(&self) -> HashSet<Digest> {
        self.store
            .list_files(BLOBS)
            .await
            .unwrap()
            .iter()
            .filter_map(|p| {
                let rest = p.strip_prefix(BLOBS)?.strip_suffix("/data")?;
                let (alg, path) = rest.split_once('/')?;
                let hex = path.rsplit('/').next()?;
                format!("{alg}:{hex}").parse().ok()
            })
            .collect()
    }

    async fn push_blob(&self, repo: &RepoName, data: &[u8]) -> Result<Digest, RegistryError> {
        let digest = Digest::of(Algorithm::Sha256, data);
        let body = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::copy_from_slice(data))]);
        self.core.push_blob(repo, &digest, body).await?;
        Ok(digest)
    }

    /// Pushes an image of `layers` layers made from `seed` under `tag`: its manifest digest and
    /// every digest it consists of (manifest, config, layers).
    async fn push_image(
        &self,
        repo: &RepoName,
        tag: Option<&str>,
        seed: &str,
        layers: usize,
    ) -> Result<(Digest, Vec<Digest>), RegistryError> {
        let config = format!("{{\"seed\":\"{seed}\"}}").into_bytes();
        let config_digest = self.push_blob(repo, &config).await?;
        let mut parts = vec![config_digest.clone()];
        let mut descriptors = Vec::new();
        for i in 0..layers {
            let data = pseudo_bytes(&format!("{seed}/{i}"), 1000 + i * 37);
            let d = self.push_blob(repo, &data).await?;
            descriptors.push(format!(
                "{{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"{d}\",\"size\":{}}}",
                data.len()
            ));
            parts.push(d);
        }
        let manifest = format!(
            "{{\"schemaVersion\":2,\"mediaType\":\"{OCI_MANIFEST}\",\"config\":{{\"mediaType\":\
             \"application/vnd.oci.image.config.v1+json\",\"digest\":\"{config_digest}\",\"size\":{}}},\
             \"layers\":[{}]}}",
            config.len(),
            descriptors.join(",")
        );
        let digest = self.put_manifest(repo, tag, OCI_MANIFEST, manifest).await?;
        parts.push(digest.clone());
        Ok((digest, parts))
    }

    async fn put_manifest(
        &self,
        repo: &RepoName,
        tag: Option<&str>,
        media_type: &str,
        body: String,
    ) -> Result<Digest, RegistryError> {
        let digest = Digest::of(Algorithm::Sha256, body.as_bytes());
        let reference = match tag {
            Some(t) => Reference::Tag(t.parse::<Tag>().unwrap()),
            None => Reference::Digest(digest.clone()),
        };
        let pushed = self
            .core
            .put_manifest(repo, &reference, &[], Some(media_type), Bytes::from(body))
            .await?;
        assert_eq!(pushed.digest, digest);
        Ok(digest)
    }

    /// Reads the image tagged `tag` back whole, checking every digest; returns what it
    /// consists of.
    async fn pull_image(&self, repo: &RepoName, tag: &str) -> Vec<Digest> {
        let reference = Reference::Tag(tag.parse().unwrap());
        let desc = self.core.manifest(repo, &reference).await.unwrap();
        let bytes = self
            .core
            .pull_manifest(repo, &reference, &desc)
            .await
            .unwrap();
        assert_eq!(
            Digest::of(Algorithm::Sha256, &bytes),
            desc.digest,
            "{repo}:{tag}"
        );
        let m: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let mut digests = vec![desc.digest.clone()];
        let named = std::iter::once(&m["config"]).chain(m["layers"].as_array().unwrap());
        for b in named {
            let d: Digest = b["digest"].as_str().unwrap().parse().unwrap();
            self.check_blob(repo, &d).await;
            digests.push(d);
        }
        digests
    }

    /// Reads a blob of `repo` whole and checks its digest.
    async fn check_blob(&self, repo: &RepoName, d: &Digest) {
        let size = self.core.blob_size(repo, d).await.unwrap_or_else(|e| {
            panic!("{d} of {repo}: {e}");
        });
        let mut stream = self.core.read_blob(repo, d, size, 0..size).await.unwrap();
        let mut h = Sha256::new();
        while let Some(chunk) = stream.next().await {
            h.update(chunk.unwrap());
        }
        assert_eq!(
            format!("sha256:{}", hex(&h.finalize())),
            d.to_string(),
            "{d} of {repo} reads back corrupt"
        );
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn repo(s: &str) -> RepoName {
    s.parse().unwrap()
}

/// Waits until the second of every row time written so far is over, so that a collection with
/// no grace period sees it as past.
async fn next_second() {
    tokio::time::sleep(Duration::from_millis(1100)).await;
}

// ---- the race, forced ------------------------------------------------------------------------

#[tokio::test]
async fn a_blob_claimed_by_a_collector_and_pushed_again_survives() {
    let site = Site::on_disk().await;
    let r = repo("race/app");
    let (m, parts) = site.push_image(&r, None, "race", 1).await.unwrap();
    let layer = parts[1].clone();
    site.core
        .delete_manifest(&r, &Reference::Digest(m.clone()))
        .await
        .unwrap();
    next_second().await;
    // What a collection's first steps do: its links go, so nothing references it.
    let links = site.meta.unreferenced_links(i64::MAX, 100).await.unwrap();
    assert!(links.contains(&(r.clone(), layer.clone())), "{links:?}");
    site.meta
        .apply(
            links
                .into_iter()
                .map(|(repo, digest)| Change::UnlinkUnreferenced {
                    repo,
                    digest,
                    before: i64::MAX,
                })
                .collect(),
        )
        .await
        .unwrap();
    next_second().await;
    let before = berth::meta::access::now_ms() / 1000;
    // The collector claims the layer (marks it) ...
    site.meta
        .apply(vec![Change::ClaimBlob {
            digest: layer.clone(),
            before,
        }])
        .await
        .unwrap();
    let claimed = site.meta.claimed_blobs(100).await.unwrap();
    assert!(claimed.iter().any(|b| b.digest == layer), "{claimed:?}");
    // ... a client pushes it again and names it in a new manifest before the sweep ...
    let again = {
        let site_core = site.core.clone();
        let r = r.clone();
        let data = pseudo_bytes("race/0", 1000);
        tokio::spawn(async move {
            let d = Digest::of(Algorithm::Sha256, &data);
            let body = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(data))]);
            site_core.push_blob(&r, &d, body).await.map(|_| d)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !again.is_finished(),
        "the push waits for the claimed blob to be deleted"
    );
    // ... the sweep deletes the claimed bytes ...
    let report = site.collect(Duration::from_secs(3600), false).await;
    assert!(report.blobs_deleted >= 1, "{report:?}");
    // ... and the push, published after the deletion, stands.
    assert_eq!(again.await.unwrap().unwrap(), layer);
    let (m2, _) = site.push_image(&r, Some("v2"), "race", 1).await.unwrap();
    assert_eq!(m2, m, "the same image again");
    let read = site.pull_image(&r, "v2").await;
    assert!(read.contains(&layer));
    assert!(site.stored().await.contains(&layer));
}

#[tokio::test]
async fn pushes_under_back_to_back_collections_without_grace_read_back_whole() {
    let site = Site::on_disk().await;
    let r = repo("race/pressure");
    let stop = CancellationToken::new();
    let collecting = async {
        let mut runs = 0u32;
        while !stop.is_cancelled() {
            site.collect(Duration::ZERO, true).await;
            runs += 1;
        }
        runs
    };
    let pushing = async {
        let mut retries = 0;
        for i in 0..15 {
            // The same layers each time, orphaned and collected in between.
            let tag = format!("t{}", i % 2);
            loop {
                match site.push_image(&r, Some(&tag), "pressure", 2).await {
                    Ok(_) => break,
                    // A link collected between the layer and the manifest: push again.
                    Err(RegistryError::ManifestBlobUnknown(_)) => retries += 1,
                    Err(e) => panic!("push {r}:{tag}: {e}"),
                }
            }
            // Whatever the collector does meanwhile, an acknowledged push reads back whole.
            site.pull_image(&r, &tag).await;
            site.core
                .delete_manifest(&r, &Reference::Tag(tag.parse().unwrap()))
                .await
                .ok();
            next_second().await;
        }
        site.push_image(&r, Some("last"), "pressure", 2)
            .await
            .unwrap();
        stop.cancel();
        retries
    };
    let (runs, retries) = tokio::join!(collecting, pushing);
    eprintln!("{runs} collections, {retries} pushes repeated");
    assert!(runs > 1);
    next_second().await;
    site.collect(Duration::ZERO, true).await;
    site.pull_image(&r, "last").await;
}

// ---- churn -----------------------------------------------------------------------------------

/// Several writers push images, move tags and delete images while collections run back to
/// back; then every tagged image reads back whole, and after a last collection past the grace
/// period storage holds exactly the live images.
async fn churn(site: &Site) {
    let grace = Duration::from_secs(2);
    let writers = 4;
    let rounds = 12;
    let stop = CancellationToken::new();
    let collections = async {
        let mut runs = 0;
        while !stop.is_cancelled() {
            site.collect(grace, true).await;
            runs += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        runs
    };
    let work = async {
        let mut live = Vec::new();
        let mut tasks = Vec::new();
        for w in 0..writers {
            tasks.push(async move {
                let r = repo(&format!("churn/w{w}"));
                let mut tags: Vec<(String, Vec<Digest>)> = Vec::new();
                for i in 0..rounds {
                    let tag = format!("t{}", i % 3);
                    // Shared layers across writers (same seed) and unique ones.
                    let seed = if i % 4 == 0 {
                        "shared".to_string()
                    } else {
                        format!("w{w}-{i}")
                    };
                    let pushed = loop {
                        match site.push_image(&r, Some(&tag), &seed, 2).await {
                            Ok(p) => break p,
                            // A layer link older than the grace period may be collected
                            // before the manifest names it: the client pushes again.
                            Err(RegistryError::ManifestBlobUnknown(_)) => continue,
                            Err(e) => panic!("push {r}:{tag}: {e}"),
                        }
                    };
                    tags.retain(|(t, _)| *t != tag);
                    tags.push((tag.clone(), pushed.1));
                    if i % 5 == 4 {
                        // Delete an image outright.
                        let (t, parts) = tags.remove(0);
                        let m = parts.last().unwrap().clone();
                        match site.core.delete_manifest(&r, &Reference::Digest(m)).await {
                            Ok(()) | Err(RegistryError::ManifestUnknown(_)) => {}
                            Err(e) => panic!("delete {r}:{t}: {e}"),
                        }
                        // The same manifest may have been under another tag too.
                        tags.retain(|(_, p)| p.last() != parts.last());
                    }
                }
                (r, tags)
            });
        }
        for (r, tags) in futures::future::join_all(tasks).await {
            live.push((r, tags));
        }
        stop.cancel();
        live
    };
    let (runs, live) = tokio::join!(collections, work);
    assert!(runs > 0);
    let mut want = HashSet::new();
    for (r, tags) in &live {
        for (tag, parts) in tags {
            let read = site.pull_image(r, tag).await;
            assert_eq!(read.len(), parts.len(), "{r}:{tag}");
            want.extend(parts.iter().cloned());
        }
    }
    // Untagged manifests and orphaned links go first; what they referenced goes one grace
    // period later.
    for _ in 0..2 {
        tokio::time::sleep(grace + Duration::from_millis(1100)).await;
        site.collect(grace, true).await;
    }
    let stored = site.stored().await;
    let missing: Vec<_> = want.difference(&stored).collect();
    let extra: Vec<_> = stored.difference(&want).collect();
    assert!(
        missing.is_empty(),
        "live content missing from storage: {missing:?}"
    );
    assert!(extra.is_empty(), "garbage left in storage: {extra:?}");
    for (r, tags) in &live {
        for (tag, _) in tags {
            site.pull_image(r, tag).await;
        }
    }
}

#[tokio::test]
async fn churn_on_disk_loses_nothing_and_leaves_only_the_live_set() {
    churn(&Site::on_disk().await).await;
}

#[tokio::test]
async fn churn_on_s3_loses_nothing_and_leaves_only_the_live_set() {
    let garage = tokio::task::spawn_blocking(Garage::start).await.unwrap();
    churn(&Site::on_garage(&garage, "gc-churn").await).await;
}

// ---- what is kept ------------------------------------------------------------------------------

#[tokio::test]
async fn untagged_collection_keeps_indexes_children_and_live_referrers() {
    let site = Site::on_disk().await;
    let r = repo("keep/app");
    let (amd, amd_parts) = site.push_image(&r, None, "amd64", 1).await.unwrap();
    let (arm, _) = site.push_image(&r, None, "arm64", 1).await.unwrap();
    let child = |d: &Digest, arch: &str| {
        format!(
            "{{\"mediaType\":\"{OCI_MANIFEST}\",\"digest\":\"{d}\",\"size\":1,\
             \"platform\":{{\"os\":\"linux\",\"architecture\":\"{arch}\"}}}}"
        )
    };
    let index = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{OCI_INDEX}\",\"manifests\":[{},{}]}}",
        child(&amd, "amd64"),
        child(&arm, "arm64")
    );
    let idx = site
        .put_manifest(&r, Some("multi"), OCI_INDEX, index)
        .await
        .unwrap();
    // A signature of the tagged index, and an orphan image.
    let sig = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{OCI_MANIFEST}\",\"artifactType\":\"application/vnd.example.sig\",\
         \"config\":{{\"mediaType\":\"application/vnd.oci.empty.v1+json\",\"digest\":\"{}\",\"size\":2}},\
         \"layers\":[],\"subject\":{{\"mediaType\":\"{OCI_INDEX}\",\"digest\":\"{idx}\",\"size\":1}}}}",
        site.push_blob(&r, b"{}").await.unwrap()
    );
    let sig = site
        .put_manifest(&r, None, OCI_MANIFEST, sig)
        .await
        .unwrap();
    let (orphan, orphan_parts) = site.push_image(&r, None, "orphan", 2).await.unwrap();
    next_second().await;

    let dry = site
        .collector
        .run(
            &Options {
                grace: Duration::ZERO,
                untagged: true,
                dry_run: true,
                ..Options::default()
            },
            &indicatif::ProgressBar::hidden(),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        dry.would_delete,
        vec![format!("manifest {r}@{orphan}")],
        "a dry run lists what would go first"
    );
    assert!(
        site.stored().await.contains(&orphan),
        "a dry run deletes nothing"
    );

    let first = site.collect(Duration::ZERO, true).await;
    assert_eq!(first.manifests_deleted, 1, "{first:?}");
    // What the deletion unreferenced has its grace period from then on: the next run takes it.
    next_second().await;
    let second = site.collect(Duration::ZERO, true).await;
    assert_eq!(
        second.blobs_deleted,
        orphan_parts.len() as u64,
        "the orphan's manifest, config and layers: {second:?}"
    );
    let stored = site.stored().await;
    for d in [&amd, &arm, &idx, &sig] {
        assert!(stored.contains(d), "{d} was kept by the tagged index");
    }
    for d in &amd_parts {
        assert!(stored.contains(d));
    }
    for d in &orphan_parts {
        assert!(!stored.contains(d), "{d} of the orphan is still stored");
    }
    let runs = site.meta.collection_runs(10).await.unwrap();
    assert_eq!(runs.len(), 3);
    assert!(runs[2].dry_run && !runs[1].dry_run && !runs[0].dry_run);
    assert_eq!((runs[1].manifests_deleted, runs[1].links_removed), (1, 3));
    assert_eq!(runs[0].blobs_deleted, orphan_parts.len() as u64);
    assert_eq!(runs[0].status, "success");

    // Untagging the index lets everything go, children and signature included.
    site.core
        .delete_manifest(&r, &Reference::Tag("multi".parse().unwrap()))
        .await
        .ok();
    let _ = site
        .core
        .delete_manifest(&r, &Reference::Digest(idx.clone()))
        .await;
    next_second().await;
    site.collect(Duration::ZERO, true).await;
    next_second().await;
    site.collect(Duration::ZERO, true).await;
    assert_eq!(
        site.stored().await,
        HashSet::new(),
        "nothing is live any more"
    );
}

// ---- berth gc, killed ------------------------------------------------------------------------

#[tokio::test]
async fn a_killed_collector_loses_nothing_and_the_next_run_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let r = repo("kill/app");
    let (live, garbage) = {
        let site = Site::of_data(&data).await;
        let (_, live) = site.push_image(&r, Some("v1"), "kept", 3).await.unwrap();
        let garbage: Vec<Digest> = futures::stream::iter(0..3000)
            .map(|i| {
                let site = &site;
                let r = &r;
                async move {
                    site.push_blob(r, format!("garbage {i}").as_bytes())
                        .await
                        .unwrap()
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        (live, garbage)
    };
    next_second().await;
    let berth = env!("CARGO_BIN_EXE_berth");
    let gc = |extra: &[&str]| {
        let mut c = std::process::Command::new(berth);
        c.arg("gc")
            .arg("--data")
            .arg(&data)
            .args(["--grace", "0s", "--parallelism", "1"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c
    };
    let dry = gc(&["--dry-run"]).output().unwrap();
    let out = String::from_utf8_lossy(&dry.stdout);
    assert!(
        dry.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    assert!(
        out.contains(&format!(
            "would delete 0 manifests, {} links, 0 blobs",
            garbage.len()
        )),
        "{out}"
    );
    let files = || walk(&data.join("docker/registry/v2/blobs"));
    assert_eq!(
        files(),
        live.len() + garbage.len(),
        "a dry run deletes nothing"
    );

    // A first run removes the links; the blobs they held go one grace period later.
    let first = gc(&[]).output().unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(files(), live.len() + garbage.len());
    next_second().await;
    // Kill the next once it has deleted some, and before it is done.
    let mut child = gc(&[]).spawn().unwrap();
    let total = files();
    let mut killed_at = None;
    while killed_at.is_none() && child.try_wait().unwrap().is_none() {
        let now = files();
        if now < total {
            child.kill().unwrap();
            killed_at = Some(now);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = child.wait();
    let killed_at = killed_at.expect("the collector was killed while it deleted");
    assert!(
        killed_at > live.len(),
        "killed before it was done: {killed_at} files left"
    );
    Site::of_data(&data).await.pull_image(&r, "v1").await;

    // The killed run's lease outlives it by its time to live: until then, runs are refused.
    let mut done = gc(&[]).output().unwrap();
    for _ in 0..30 {
        if done.status.success()
            || !String::from_utf8_lossy(&done.stderr).contains("another collection")
        {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
        done = gc(&[]).output().unwrap();
    }
    let out = String::from_utf8_lossy(&done.stdout);
    assert!(
        done.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert_eq!(files(), live.len(), "the next run finishes the job: {out}");
    let history = gc(&["--history"]).output().unwrap();
    let history = String::from_utf8_lossy(&history.stdout);
    assert!(history.lines().count() >= 2, "{history}");
    assert!(
        history.lines().next().unwrap().contains("success"),
        "{history}"
    );

    let site = Site::of_data(&data).await;
    let read = site.pull_image(&r, "v1").await;
    assert_eq!(read.len(), live.len());
    assert_eq!(site.stored().await, live.into_iter().collect());
}

/// The number of files below `dir`.
fn walk(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                walk(&p)
            } else {
                1
            }
        })
        .sum()
}

// ---- the management API ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_collection_asked_for_through_the_api_runs_and_is_in_its_history() {
    use common::builtin::{bearer, BuiltinRegistry, ADMIN_PASSWORD};
    use harbor::call;
    let b = BuiltinRegistry::start_with("", "gc:\n  grace: 0s\n");
    let u = b.reg.url("");
    let admin = Some(("admin", ADMIN_PASSWORD));
    b.add_project("team", false);
    b.add_user("dev", "Passw0rdX");
    b.add_member("team", "dev", "projectAdmin");
    let token = b
        .token_ok(
            Some(("admin", ADMIN_PASSWORD)),
            &["repository:team/app:pull,push"],
        )
        .await;
    // A blob pushed without a manifest: garbage once its link goes.
    let data = pseudo_bytes("api garbage", 4000);
    let digest = common::sha256(&data);
    let resp = bearer(
        common::oci::client().post(
            b.reg
                .url(&format!("/v2/team/app/blobs/uploads/?digest={digest}")),
        ),
        &token,
    )
    .body(data)
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 201);
    let blob = b.data().join(format!(
        "docker/registry/v2/blobs/sha256/{}/{}/data",
        &digest[7..9],
        &digest[7..]
    ));
    assert!(blob.exists());

    let manual = serde_json::json!({"schedule": {"type": "Manual"},
        "parameters": {"delete_untagged": false, "dry_run": false}})
    .to_string();
    let a = call(
        &u,
        Some(("dev", "Passw0rdX")),
        "POST",
        "/system/gc/schedule",
        Some(&manual),
        &[],
    )
    .await;
    assert_eq!(a.status, 403, "only system administrators: {}", a.body);
    let schedule = call(&u, admin, "GET", "/system/gc/schedule", None, &[]).await;
    assert_eq!(
        schedule.body["schedule"]["type"], "None",
        "{}",
        schedule.body
    );

    // The link goes in a first run, the blob one grace period (none) later in a second.
    let mut runs = 0;
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let a = call(&u, admin, "POST", "/system/gc/schedule", Some(&manual), &[]).await;
        assert_eq!(a.status, 201, "{}", a.body);
        runs += 1;
        let mut done = false;
        for _ in 0..100 {
            let history = call(&u, admin, "GET", "/system/gc", None, &[]).await;
            assert_eq!(history.status, 200, "{}", history.body);
            if history.body.as_array().unwrap().len() == runs {
                assert_eq!(history.body[0]["job_status"], "Success", "{}", history.body);
                assert_eq!(history.body[0]["job_kind"], "MANUAL");
                done = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(done, "run {runs} did not happen");
    }
    assert!(
        !blob.exists(),
        "the collection asked for deleted the garbage"
    );
    let history = call(&u, admin, "GET", "/system/gc", None, &[]).await;
    assert_eq!(history.body[0]["blobs_deleted"], 1, "{}", history.body);
    assert_eq!(history.body[1]["links_removed"], 1, "{}", history.body);
    let id = history.body[0]["id"].as_i64().unwrap();
    let log = common::oci::client()
        .get(b.reg.url(&format!("/api/v2.0/system/gc/{id}/log")))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(log.status(), 200);
    let text = log.text().await.unwrap();
    assert!(
        text.contains("deleted 0 manifests, 0 links, 1 blobs"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schedule_set_through_the_api_runs_until_it_is_removed() {
    use common::builtin::{push_image_blobs, put_manifest, BuiltinRegistry, ADMIN_PASSWORD};
    use harbor::call;
    let b = BuiltinRegistry::start_with("", "gc:\n  grace: 0s\n");
    let u = b.reg.url("");
    let admin = Some(("admin", ADMIN_PASSWORD));
    b.add_project("team", false);
    b.add_user("dev", "Passw0rdX");
    b.add_member("team", "dev", "projectAdmin");
    let token = b.token_ok(admin, &["repository:team/app:pull,push"]).await;
    // An untagged manifest: what a schedule with delete_untagged collects.
    let manifest = push_image_blobs(&b.reg, "team/app", &token, "scheduled").await;
    let digest = common::sha256(&manifest);
    let resp = put_manifest(&b.reg, "team/app", &digest, &token, manifest).await;
    assert_eq!(resp.status(), 201);

    let every = |kind: &str, cron: &str| {
        serde_json::json!({"schedule": {"type": kind, "cron": cron},
            "parameters": {"delete_untagged": true, "dry_run": false, "workers": 2}})
        .to_string()
    };
    let dev = Some(("dev", "Passw0rdX"));
    let every_two = every("Custom", "*/2 * * * * *");
    let a = call(&u, dev, "PUT", "/system/gc/schedule", Some(&every_two), &[]).await;
    assert_eq!(a.status, 403, "only system administrators: {}", a.body);
    for bad in [
        every("Custom", "every night"),
        every("Custom", ""),
        every("Sometimes", ""),
    ] {
        let a = call(&u, admin, "PUT", "/system/gc/schedule", Some(&bad), &[]).await;
        assert_eq!(a.status, 400, "{bad}: {}", a.body);
        assert!(!a.message().is_empty());
    }
    let a = call(
        &u,
        admin,
        "PUT",
        "/system/gc/schedule",
        Some(&every_two),
        &[],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let schedule = call(&u, admin, "GET", "/system/gc/schedule", None, &[]).await;
    assert_eq!(
        schedule.body["schedule"]["type"], "Custom",
        "{}",
        schedule.body
    );
    assert_eq!(schedule.body["schedule"]["cron"], "*/2 * * * * *");
    assert!(schedule.body["schedule"]["next_scheduled_time"].is_string());
    assert_eq!(schedule.body["parameters"]["delete_untagged"], true);

    let scheduled_runs = || {
        let u = u.clone();
        async move {
            let history = call(&u, admin, "GET", "/system/gc?page_size=100", None, &[]).await;
            assert_eq!(history.status, 200, "{}", history.body);
            history
                .body
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["job_kind"] == "SCHEDULE")
                .count()
        }
    };
    let manifest_url = b.reg.url(&format!("/v2/team/app/manifests/{digest}"));
    let mut gone = false;
    for _ in 0..100 {
        let status = common::builtin::bearer(common::oci::client().get(&manifest_url), &token)
            .send()
            .await
            .unwrap()
            .status();
        if status == 404 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(gone, "a scheduled run collected the untagged manifest");
    // The run is recorded when it ends, after its other steps.
    let mut recorded = false;
    for _ in 0..100 {
        if scheduled_runs().await >= 1 {
            recorded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(recorded, "the scheduled run is in the history");

    // Removed: no scheduled run starts any more (one under way may still finish).
    let none = every("None", "");
    let a = call(&u, admin, "PUT", "/system/gc/schedule", Some(&none), &[]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let schedule = call(&u, admin, "GET", "/system/gc/schedule", None, &[]).await;
    assert_eq!(
        schedule.body["schedule"]["type"], "None",
        "{}",
        schedule.body
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = scheduled_runs().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(scheduled_runs().await, settled, "the schedule was removed");
    // Changing the schedule is in the audit log.
    let log = b.berth(&["audit", "--json", "--resource", "gc"], None);
    let changes = log
        .lines()
        .filter(|l| l.contains("\"resource_type\":\"schedule\""))
        .count();
    assert_eq!(changes, 2, "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_project_says_whether_its_untagged_manifests_are_collected() {
    use common::builtin::{
        bearer, push_image_blobs, put_manifest, BuiltinRegistry, ADMIN_PASSWORD,
    };
    use harbor::call;
    let b = BuiltinRegistry::start_with("", "gc:\n  grace: 0s\n");
    let u = b.reg.url("");
    let admin = Some(("admin", ADMIN_PASSWORD));
    let projects = ["clean", "keep", "plain"];
    for p in projects {
        b.add_project(p, false);
    }
    let scopes: Vec<String> = projects
        .iter()
        .map(|p| format!("repository:{p}/app:pull,push"))
        .collect();
    let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
    let token = b.token_ok(admin, &scopes).await;
    let mut untagged = std::collections::HashMap::new();
    for p in projects {
        let repo = format!("{p}/app");
        let manifest = push_image_blobs(&b.reg, &repo, &token, p).await;
        let digest = common::sha256(&manifest);
        let resp = put_manifest(&b.reg, &repo, &digest, &token, manifest).await;
        assert_eq!(resp.status(), 201);
        untagged.insert(p, digest);
    }
    let set = |project: &str, value: &str| {
        let (u, path) = (u.clone(), format!("/projects/{project}"));
        let body = serde_json::json!({"metadata": {"delete_untagged": value}}).to_string();
        async move {
            let a = call(&u, admin, "PUT", &path, Some(&body), &[]).await;
            assert_eq!(a.status, 200, "{}", a.body);
        }
    };
    set("clean", "true").await;
    set("keep", "false").await;
    let a = call(
        &u,
        admin,
        "PUT",
        "/projects/plain",
        Some(r#"{"metadata": {"delete_untagged": "sometimes"}}"#),
        &[],
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.body);
    let shown = call(&u, admin, "GET", "/projects/clean", None, &[]).await;
    assert_eq!(
        shown.body["metadata"]["delete_untagged"], "true",
        "{}",
        shown.body
    );

    let present = |project: &'static str| {
        let url = b.reg.url(&format!(
            "/v2/{project}/app/manifests/{}",
            untagged[project]
        ));
        let token = token.clone();
        async move {
            let status = bearer(common::oci::client().head(url), &token)
                .header("accept", "application/vnd.oci.image.manifest.v1+json")
                .send()
                .await
                .unwrap()
                .status();
            status == 200
        }
    };
    let mut runs = 0;
    let mut collect = |untagged_run: bool| {
        runs += 1;
        let (u, want) = (u.clone(), runs);
        async move {
            tokio::time::sleep(Duration::from_millis(1100)).await;
            let body = serde_json::json!({"schedule": {"type": "Manual"},
                "parameters": {"delete_untagged": untagged_run}})
            .to_string();
            let a = call(&u, admin, "POST", "/system/gc/schedule", Some(&body), &[]).await;
            assert_eq!(a.status, 201, "{}", a.body);
            for _ in 0..100 {
                let h = call(&u, admin, "GET", "/system/gc", None, &[]).await;
                if h.body.as_array().unwrap().len() == want {
                    assert_eq!(h.body[0]["job_status"], "Success", "{}", h.body);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            panic!("run {want} did not happen");
        }
    };
    // A run that does not ask: only the project that does loses its untagged manifest.
    collect(false).await;
    assert!(!present("clean").await);
    assert!(present("keep").await && present("plain").await);
    // A run that asks: every project but the one that says no.
    collect(true).await;
    assert!(present("keep").await, "the project said no");
    assert!(
        !present("plain").await,
        "the run's choice where the project says nothing"
    );
}
