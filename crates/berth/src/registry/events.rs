//! The stream of facts: what the core reports about the changes it makes ([`RegistryEvent`]),
//! produced in one place, and the [`EventSink`]s that turn each fact into outbox entries.
//!
//! Events are derived from the list of metadata changes the core is about to apply
//! ([`from_changes`]), never built by the operations themselves: whatever the core commits is
//! reported, whichever operation committed it, and the entries a sink returns are written in the
//! same transaction as the change they report. Pulls change nothing, so they are reported by
//! [`pull`] outside any change, best effort: a failed outbox write never fails a pull.
//!
//! Who asked ([`RequestContext`]) is not a parameter of the core's operations: the edge runs each
//! request inside [`with_request`], as a tracing span would, and only the event producer reads it.
//! Formatting and delivery (Distribution's webhook notifications now; the audit log and
//! replication later) belong to peer modules that implement [`EventSink`].

use std::future::Future;
use std::time::SystemTime;

use crate::meta::Change;
use crate::oci::digest::Digest;
use crate::oci::name::{RepoName, Tag};

/// Who asked for a change, and through which request. Filled by the edge.
#[derive(Clone, Debug, Default)]
pub struct RequestContext {
    /// The request id.
    pub id: String,
    /// The client's address.
    pub addr: String,
    /// The `Host` the request was sent to.
    pub host: String,
    pub method: String,
    pub user_agent: String,
    /// The authenticated identity, if any.
    pub actor: Option<String>,
    /// The registry's external base URL (e.g. `https://registry.example.com`), for URLs in events.
    pub base_url: String,
    /// For a push made by replication: the id of the registry the content was first pushed to
    /// (`Berth-Replication-Origin`), which replication never copies it back to.
    pub origin: Option<String>,
}

tokio::task_local! {
    static REQUEST: RequestContext;
}

/// Runs `f` (the core's work for one request) with `ctx` as the request its events report.
pub async fn with_request<F: Future>(ctx: RequestContext, f: F) -> F::Output {
    REQUEST.scope(ctx, f).await
}

/// The request being served, or an empty context outside [`with_request`] (background work).
fn current_request() -> RequestContext {
    REQUEST.try_with(Clone::clone).unwrap_or_default()
}

/// The kind of a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventAction {
    Push,
    Pull,
    Mount,
    Delete,
}

impl EventAction {
    pub fn as_str(self) -> &'static str {
        match self {
            EventAction::Push => "push",
            EventAction::Pull => "pull",
            EventAction::Mount => "mount",
            EventAction::Delete => "delete",
        }
    }
}

/// One change (or read) of a blob, manifest or tag.
#[derive(Clone, Debug)]
pub struct RegistryEvent {
    pub action: EventAction,
    pub repo: RepoName,
    /// The content concerned; absent when a tag is deleted.
    pub digest: Option<Digest>,
    /// Its media type (`application/octet-stream` for blobs), when known.
    pub media_type: Option<String>,
    pub size: Option<u64>,
    pub tag: Option<Tag>,
    /// For a mount: the repository the blob came from.
    pub from: Option<RepoName>,
    /// For a manifest pushed with a subject (a signature, an SBOM): the manifest it refers to.
    pub subject: Option<Digest>,
    pub timestamp: SystemTime,
    pub request: RequestContext,
}

impl RegistryEvent {
    pub fn new(action: EventAction, repo: &RepoName, request: &RequestContext) -> RegistryEvent {
        RegistryEvent {
            action,
            repo: repo.clone(),
            digest: None,
            media_type: None,
            size: None,
            tag: None,
            from: None,
            subject: None,
            timestamp: SystemTime::now(),
            request: request.clone(),
        }
    }

    /// Sets the content the event is about.
    pub fn target(mut self, digest: &Digest, media_type: &str, size: u64) -> RegistryEvent {
        self.digest = Some(digest.clone());
        self.media_type = Some(media_type.to_string());
        self.size = Some(size);
        self
    }
}

/// Turns events into outbox entries ([`Change::Enqueue`]); an empty list when nobody wants it.
pub trait EventSink: Send + Sync + 'static {
    fn changes_for(&self, event: &RegistryEvent) -> Vec<Change>;

    /// Whether any consumer wants events of this action (lets the core skip building them, and
    /// skip a metadata write for pulls nobody listens to).
    fn wants(&self, action: EventAction) -> bool;
}

/// The media type reported for blobs.
pub const BLOB_MEDIA_TYPE: &str = "application/octet-stream";

/// The facts a list of changes establishes, in order, reported as the current request.
///
/// - a blob linked into a repository: `push` (or `mount` when it came from another repository);
/// - a manifest recorded: one `push` per tag set on it in the same list, or one without a tag;
/// - a blob unlinked, a manifest or a tag deleted: `delete` (a blob's with the blob media type);
/// - upload bookkeeping and outbox entries are not facts anyone is told about.
pub fn from_changes(changes: &[Change]) -> Vec<RegistryEvent> {
    // Upload bookkeeping (most writes of a chunked push) reports nothing: skip the request copy.
    let reports = |c: &Change| {
        matches!(
            c,
            Change::LinkBlob { .. }
                | Change::PutManifest { .. }
                | Change::UnlinkBlob { .. }
                | Change::DeleteManifest { .. }
                | Change::DeleteTag { .. }
        )
    };
    if !changes.iter().any(reports) {
        return Vec::new();
    }
    let request = current_request();
    let mut events = Vec::new();
    for change in changes {
        match change {
            Change::LinkBlob {
                repo,
                digest,
                size,
                mounted_from,
            } => {
                let action = match mounted_from {
                    Some(_) => EventAction::Mount,
                    None => EventAction::Push,
                };
                let mut e = RegistryEvent::new(action, repo, &request).target(
                    digest,
                    BLOB_MEDIA_TYPE,
                    *size,
                );
                e.from = mounted_from.clone();
                events.push(e);
            }
            Change::PutManifest { repo, manifest, .. } => {
                let mut pushed = RegistryEvent::new(EventAction::Push, repo, &request).target(
                    &manifest.digest,
                    &manifest.media_type,
                    manifest.size,
                );
                pushed.subject = manifest.subject.clone();
                let tags: Vec<&Tag> = changes
                    .iter()
                    .filter_map(|c| match c {
                        Change::SetTag {
                            repo: r,
                            tag,
                            digest,
                        } if r == repo && digest == &manifest.digest => Some(tag),
                        _ => None,
                    })
                    .collect();
                if tags.is_empty() {
                    events.push(pushed);
                } else {
                    for tag in tags {
                        let mut e = pushed.clone();
                        e.tag = Some(tag.clone());
                        events.push(e);
                    }
                }
            }
            Change::UnlinkBlob { repo, digest } => {
                let mut e = RegistryEvent::new(EventAction::Delete, repo, &request);
                e.digest = Some(digest.clone());
                e.media_type = Some(BLOB_MEDIA_TYPE.to_string());
                events.push(e);
            }
            Change::DeleteManifest { repo, digest } => {
                let mut e = RegistryEvent::new(EventAction::Delete, repo, &request);
                e.digest = Some(digest.clone());
                events.push(e);
            }
            Change::DeleteTag { repo, tag } => {
                let mut e = RegistryEvent::new(EventAction::Delete, repo, &request);
                e.tag = Some(tag.clone());
                events.push(e);
            }
            Change::SetTag { .. }
            | Change::CreateUpload { .. }
            | Change::AdvanceUpload { .. }
            | Change::DeleteUpload { .. }
            | Change::Enqueue { .. }
            | Change::Audit(_) => {}
            // Bookkeeping of garbage collection: what a run removed is its record's to say,
            // and manifests it deletes are `DeleteManifest`s.
            Change::ReserveBlob { .. }
            | Change::ReleaseBlob { .. }
            | Change::ClaimBlob { .. }
            | Change::ForgetBlob { .. }
            | Change::ExpireReservations { .. }
            | Change::UnlinkUnreferenced { .. }
            | Change::RequireUnkeptManifest { .. }
            | Change::RequireTagUnmoved { .. }
            | Change::RequireManifest { .. }
            | Change::RecordCollection(_)
            | Change::RequestCollection(_)
            | Change::TakeCollectionRequest { .. }
            | Change::RecordPulls(_)
            | Change::SetSchedule(_)
            | Change::RemoveSchedule { .. }
            | Change::InitSetting { .. }
            | Change::SetSetting { .. }
            | Change::ReplicationProgress(_)
            | Change::ReplicationCopy(_)
            | Change::Dequeue { .. } => {}
        }
    }
    events
}

/// The fact that content was pulled (a GET of a manifest or blob), as the current request.
pub fn pull(
    repo: &RepoName,
    digest: &Digest,
    media_type: &str,
    size: u64,
    tag: Option<&Tag>,
) -> RegistryEvent {
    let mut e = RegistryEvent::new(EventAction::Pull, repo, &current_request())
        .target(digest, media_type, size);
    e.tag = tag.cloned();
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::ManifestRecord;
    use crate::oci::digest::Algorithm;

    fn digest(s: &str) -> Digest {
        Digest::of(Algorithm::Sha256, s.as_bytes())
    }

    fn manifest(d: &Digest) -> ManifestRecord {
        ManifestRecord {
            digest: d.clone(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            size: 7,
            artifact_type: None,
            subject: None,
            annotations: None,
        }
    }

    /// (action, tag, digest, from) of each event, for comparing.
    fn summary(events: &[RegistryEvent]) -> Vec<(&'static str, String, String, String)> {
        events
            .iter()
            .map(|e| {
                (
                    e.action.as_str(),
                    e.tag.as_ref().map(|t| t.to_string()).unwrap_or_default(),
                    e.digest.as_ref().map(|d| d.to_string()).unwrap_or_default(),
                    e.from.as_ref().map(|r| r.to_string()).unwrap_or_default(),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn facts_come_from_the_changes_as_the_current_request() {
        let repo: RepoName = "lib/app".parse().unwrap();
        let (blob, m) = (digest("blob"), digest("manifest"));
        let changes = vec![
            Change::LinkBlob {
                repo: repo.clone(),
                digest: blob.clone(),
                size: 4,
                mounted_from: None,
            },
            Change::LinkBlob {
                repo: repo.clone(),
                digest: blob.clone(),
                size: 4,
                mounted_from: Some("other".parse().unwrap()),
            },
            Change::CreateUpload {
                id: "u".into(),
                repo: repo.clone(),
                owner: String::new(),
            },
            Change::PutManifest {
                repo: repo.clone(),
                manifest: manifest(&m),
                blobs: vec![crate::meta::Dependency {
                    digest: blob.clone(),
                    required: true,
                }],
                children: vec![],
            },
            Change::SetTag {
                repo: repo.clone(),
                tag: "v1".parse().unwrap(),
                digest: m.clone(),
            },
            Change::SetTag {
                repo: repo.clone(),
                tag: "latest".parse().unwrap(),
                digest: m.clone(),
            },
            Change::DeleteTag {
                repo: repo.clone(),
                tag: "old".parse().unwrap(),
            },
            Change::UnlinkBlob {
                repo: repo.clone(),
                digest: blob.clone(),
            },
        ];
        let ctx = RequestContext {
            actor: Some("alice".into()),
            ..RequestContext::default()
        };
        let events = with_request(ctx, async { from_changes(&changes) }).await;
        let (b, m) = (blob.to_string(), m.to_string());
        let s = |a, t: &str, d: &str, f: &str| (a, t.to_string(), d.to_string(), f.to_string());
        assert_eq!(
            summary(&events),
            [
                s("push", "", &b, ""),
                s("mount", "", &b, "other"),
                s("push", "v1", &m, ""),
                s("push", "latest", &m, ""),
                s("delete", "old", "", ""),
                s("delete", "", &b, ""),
            ]
        );
        assert!(events
            .iter()
            .all(|e| e.request.actor.as_deref() == Some("alice")));
        // Outside a request, events carry an empty context.
        assert_eq!(from_changes(&changes)[0].request.actor, None);
    }

    #[tokio::test]
    async fn a_manifest_pushed_without_a_tag_is_one_event() {
        let repo: RepoName = "r".parse().unwrap();
        let m = digest("m");
        let events = from_changes(&[Change::PutManifest {
            repo,
            manifest: manifest(&m),
            blobs: vec![],
            children: vec![],
        }]);
        assert_eq!(
            summary(&events),
            [("push", String::new(), m.to_string(), String::new())]
        );
    }
}
