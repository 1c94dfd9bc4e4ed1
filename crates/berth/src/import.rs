//! Takes over a storage root written by CNCF Distribution without copying a blob.
//!
//! Berth stores blobs at the same paths as Distribution, so taking over its root only needs the
//! metadata: which repositories exist, which blobs each may see (`_layers` links), which manifests
//! they hold (`_manifests/revisions`) and where their tags point (`_manifests/tags/*/current`).
//! This module reads that tree through the [`BlobStore`] and records it through the
//! [`MetaStore`], verifying every blob and manifest against its digest on the way: a corrupt or
//! missing one is reported and skipped, never served.
//!
//! Idempotent and resumable: every change is an upsert, what is already recorded is not verified
//! again, and a marker file written at the very end says the import finished. A run killed part
//! way is simply run again.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};

use crate::meta::{Change, Dependency, ManifestRecord, MetaError, MetaStore};
use crate::oci::digest::Digest;
use crate::oci::manifest;
use crate::oci::name::{Reference, RepoName, Tag};
use crate::storage::{BlobStore, StorageError};

const REPOSITORIES: &str = "docker/registry/v2/repositories/";
/// Written when an import has finished; its presence means there is nothing left to import.
const DONE_MARKER: &str = "berth/imported-distribution";

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Meta(#[from] MetaError),
}

/// What an import found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportReport {
    pub repositories: usize,
    pub blobs: usize,
    pub manifests: usize,
    pub tags: usize,
    /// Objects that were not imported, each with the reason (corrupt, missing, unsupported).
    pub skipped: Vec<String>,
}

impl std::fmt::Display for ImportReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} repositories, {} blob links, {} manifests, {} tags imported; {} skipped",
            self.repositories,
            self.blobs,
            self.manifests,
            self.tags,
            self.skipped.len()
        )?;
        for s in &self.skipped {
            write!(f, "\n  skipped: {s}")?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct RepoTree {
    layers: Vec<Digest>,
    revisions: Vec<Digest>,
    /// Tag name and the path of its `current/link` file.
    tags: Vec<(String, String)>,
}

/// Why collecting garbage in `store` would be unsafe because Distribution uses the same tree:
/// files in its repositories tree written after Berth imported it (Berth itself writes
/// nothing there), or a tree never imported. `None` when Berth alone owns it. The import's
/// marker is what marks the tree as Berth's.
pub async fn foreign_writes(store: &BlobStore) -> Result<Option<String>, ImportError> {
    let repos = store.list_entries(REPOSITORIES).await?;
    if repos.is_empty() {
        return Ok(None);
    }
    let marker = store
        .list_entries("berth/")
        .await?
        .into_iter()
        .find(|(p, _)| p == DONE_MARKER);
    let Some((_, imported)) = marker else {
        return Ok(Some(format!(
            "{REPOSITORIES} holds a Distribution tree Berth has not imported: start `berth serve` \
             on it or run `berth import distribution` first"
        )));
    };
    let Some(imported) = imported else {
        return Ok(None);
    };
    let newer = repos
        .into_iter()
        .find(|(_, m)| m.is_some_and(|m| m > imported));
    Ok(newer.map(|(path, _)| {
        format!(
            "Distribution wrote {path} after Berth took this storage over: stop it (two \
             registries must not collect garbage in one tree), then run `berth import \
             distribution` again"
        )
    }))
}

/// Whether `store` holds a Distribution tree that has not been imported yet.
pub async fn needs_import(store: &BlobStore) -> Result<bool, ImportError> {
    if store.read_file(DONE_MARKER).await?.is_some() {
        return Ok(false);
    }
    Ok(!store.list_files(REPOSITORIES).await?.is_empty())
}

fn parse_link(data: &Bytes) -> Option<Digest> {
    std::str::from_utf8(data).ok()?.trim().parse().ok()
}

/// Groups the link files of the repositories tree by repository.
fn scan(files: &[String], report: &mut ImportReport) -> BTreeMap<String, RepoTree> {
    let mut repos: BTreeMap<String, RepoTree> = BTreeMap::new();
    for path in files {
        let Some(rel) = path.strip_prefix(REPOSITORIES) else {
            continue;
        };
        let Some(rel) = rel.strip_suffix("/link") else {
            continue;
        };
        let digest_of = |rest: &str| {
            let (alg, hex) = rest.split_once('/')?;
            format!("{alg}:{hex}").parse::<Digest>().ok()
        };
        if let Some((name, rest)) = rel.split_once("/_layers/") {
            match digest_of(rest) {
                Some(d) => repos.entry(name.to_string()).or_default().layers.push(d),
                None => report.skipped.push(format!("{path}: not a blob link")),
            }
        } else if let Some((name, rest)) = rel.split_once("/_manifests/revisions/") {
            match digest_of(rest) {
                Some(d) => repos.entry(name.to_string()).or_default().revisions.push(d),
                None => report.skipped.push(format!("{path}: not a manifest link")),
            }
        } else if let Some((name, rest)) = rel.split_once("/_manifests/tags/") {
            if let Some(tag) = rest.strip_suffix("/current") {
                repos
                    .entry(name.to_string())
                    .or_default()
                    .tags
                    .push((tag.to_string(), path.clone()));
            }
        }
    }
    repos
}

/// Imports the Distribution tree in `store` into `meta`. With `progress`, draws a progress bar
/// on stderr.
pub async fn import_distribution(
    store: &BlobStore,
    meta: &dyn MetaStore,
    progress: bool,
) -> Result<ImportReport, ImportError> {
    let mut report = ImportReport::default();
    let files = store.list_files(REPOSITORIES).await?;
    let repos = scan(&files, &mut report);
    let total: usize = repos
        .values()
        .map(|r| r.layers.len() + r.revisions.len() + r.tags.len())
        .sum();
    let bar = if progress {
        let bar = ProgressBar::new(total as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "importing {bar:40} {pos}/{len} objects ({per_sec}, eta {eta}) {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    // Blobs shared by several repositories are hashed once, and reserved (so that no collector
    // deletes them) from before they are verified until the import ends.
    let mut verified = Verified::default();
    for (name, tree) in &repos {
        bar.set_message(name.clone());
        let repo: RepoName = match name.parse() {
            Ok(r) => r,
            Err(e) => {
                report.skipped.push(format!("repository {name:?}: {e}"));
                bar.inc((tree.layers.len() + tree.revisions.len() + tree.tags.len()) as u64);
                continue;
            }
        };
        report.repositories += 1;
        import_repo(store, meta, &repo, tree, &mut verified, &mut report, &bar).await?;
    }
    bar.finish_and_clear();
    store
        .write_file(DONE_MARKER, Bytes::from(report.to_string()))
        .await?;
    for ids in verified.reservations.chunks(256) {
        let releases = ids
            .iter()
            .map(|id| Change::ReleaseBlob { id: id.clone() })
            .collect();
        meta.apply(releases).await?;
    }
    Ok(report)
}

/// What the import verified, and the reservations it holds on it.
#[derive(Default)]
struct Verified {
    sizes: HashMap<Digest, Option<u64>>,
    reservations: Vec<String>,
}

impl Verified {
    /// Reserves `d` (`size` bytes) for the rest of the import.
    async fn hold(
        &mut self,
        meta: &dyn MetaStore,
        d: &Digest,
        size: u64,
    ) -> Result<(), ImportError> {
        let id = format!("import-{}", uuid::Uuid::new_v4());
        meta.apply(vec![Change::ReserveBlob {
            id: id.clone(),
            digest: d.clone(),
            size,
        }])
        .await?;
        self.reservations.push(id);
        Ok(())
    }
}

async fn verify(
    store: &BlobStore,
    meta: &dyn MetaStore,
    d: &Digest,
    verified: &mut Verified,
    report: &mut ImportReport,
) -> Result<Option<u64>, ImportError> {
    if let Some(v) = verified.sizes.get(d) {
        return Ok(*v);
    }
    if let Some(size) = store.stat_blob(d).await? {
        verified.hold(meta, d, size).await?;
    }
    let v = match store.verify_blob(d).await {
        Ok(Some(size)) => Some(size),
        Ok(None) => {
            report
                .skipped
                .push(format!("blob {d}: missing from storage"));
            None
        }
        Err(StorageError::DigestMismatch { actual, .. }) => {
            report
                .skipped
                .push(format!("blob {d}: corrupt (content hashes to {actual})"));
            None
        }
        Err(e) => return Err(e.into()),
    };
    verified.sizes.insert(d.clone(), v);
    Ok(v)
}

async fn import_repo(
    store: &BlobStore,
    meta: &dyn MetaStore,
    repo: &RepoName,
    tree: &RepoTree,
    verified: &mut Verified,
    report: &mut ImportReport,
    bar: &ProgressBar,
) -> Result<(), ImportError> {
    // Blob links.
    let mut links = Vec::new();
    for d in &tree.layers {
        bar.inc(1);
        if meta.blob_in_repo(repo, d).await?.is_some() {
            report.blobs += 1;
            continue;
        }
        if let Some(size) = verify(store, meta, d, verified, report).await? {
            links.push(Change::LinkBlob {
                repo: repo.clone(),
                digest: d.clone(),
                size,
                mounted_from: None,
            });
            report.blobs += 1;
        }
        if links.len() >= 256 {
            meta.apply(std::mem::take(&mut links)).await?;
        }
    }
    if !links.is_empty() {
        meta.apply(links).await?;
    }

    // Manifests: read, verify, parse; then record them, children before the indexes that
    // reference them.
    let mut pending: Vec<Change> = Vec::new();
    let mut imported: HashSet<Digest> = HashSet::new();
    for d in &tree.revisions {
        bar.inc(1);
        if meta
            .manifest(repo, &Reference::Digest(d.clone()))
            .await?
            .is_some()
        {
            imported.insert(d.clone());
            report.manifests += 1;
            continue;
        }
        if let Some(size) = store.stat_blob(d).await? {
            verified.hold(meta, d, size).await?;
        }
        let bytes = match store.read_blob_bytes(d).await {
            Ok(b) => b,
            Err(StorageError::NotFound(_)) => {
                report
                    .skipped
                    .push(format!("manifest {d} in {repo}: missing from storage"));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let actual = Digest::of(d.algorithm(), &bytes);
        if &actual != d {
            report.skipped.push(format!(
                "manifest {d} in {repo}: corrupt (content hashes to {actual})"
            ));
            continue;
        }
        let parsed = match manifest::parse(None, &bytes) {
            Ok(p) => p,
            Err(e) => {
                report.skipped.push(format!("manifest {d} in {repo}: {e}"));
                continue;
            }
        };
        pending.push(Change::PutManifest {
            repo: repo.clone(),
            manifest: ManifestRecord {
                digest: d.clone(),
                media_type: parsed.media_type,
                size: bytes.len() as u64,
                artifact_type: parsed.artifact_type,
                subject: parsed.subject,
                annotations: parsed.annotations,
            },
            blobs: parsed
                .blobs
                .into_iter()
                .map(|digest| Dependency {
                    digest,
                    required: true,
                })
                .collect(),
            children: parsed
                .children
                .into_iter()
                .map(|c| Dependency {
                    digest: c.digest,
                    required: true,
                })
                .collect(),
        });
    }
    loop {
        let before = pending.len();
        let mut waiting = Vec::new();
        let pending_digests: HashSet<Digest> = pending
            .iter()
            .filter_map(|c| match c {
                Change::PutManifest { manifest, .. } => Some(manifest.digest.clone()),
                _ => None,
            })
            .collect();
        for change in pending.drain(..) {
            let Change::PutManifest { manifest, .. } = &change else {
                continue;
            };
            let digest = manifest.digest.clone();
            match meta.apply(vec![change.clone()]).await {
                Ok(()) => {
                    imported.insert(digest);
                    report.manifests += 1;
                }
                // A child manifest not recorded yet: try again in the next pass.
                Err(MetaError::MissingReference(r)) if pending_digests.contains(&r) => {
                    waiting.push(change)
                }
                Err(MetaError::MissingReference(r)) => report.skipped.push(format!(
                    "manifest {digest} in {repo}: references {r}, which is missing or corrupt"
                )),
                Err(e) => return Err(e.into()),
            }
        }
        pending = waiting;
        if pending.is_empty() || pending.len() == before {
            for c in &pending {
                if let Change::PutManifest { manifest, .. } = c {
                    report.skipped.push(format!(
                        "manifest {} in {repo}: its child manifests could not be imported",
                        manifest.digest
                    ));
                }
            }
            break;
        }
    }

    // Tags.
    for (tag, link_path) in &tree.tags {
        bar.inc(1);
        let Ok(tag) = tag.parse::<Tag>() else {
            report
                .skipped
                .push(format!("tag {tag:?} in {repo}: not a valid tag"));
            continue;
        };
        let Some(digest) = store
            .read_file(link_path)
            .await?
            .as_ref()
            .and_then(parse_link)
        else {
            report
                .skipped
                .push(format!("tag {tag} in {repo}: unreadable link"));
            continue;
        };
        if !imported.contains(&digest) {
            report.skipped.push(format!(
                "tag {tag} in {repo}: its manifest {digest} was not imported"
            ));
            continue;
        }
        meta.apply(vec![Change::SetTag {
            repo: repo.clone(),
            tag,
            digest,
        }])
        .await?;
        report.tags += 1;
    }
    Ok(())
}
