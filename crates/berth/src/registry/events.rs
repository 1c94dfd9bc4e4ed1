//! What the core reports about the changes it makes: [`RegistryEvent`]s, and the [`EventSink`]
//! that turns each into outbox entries written in the same metadata transaction as the change.
//!
//! The core only describes events; formatting and delivery (e.g. Distribution-style webhook
//! notifications) belong to a peer module that implements [`EventSink`].

use std::time::SystemTime;

use super::digest::Digest;
use super::name::{RepoName, Tag};
use crate::meta::Change;

/// Who asked for a change, and through which request. Filled by the edge; the core passes it on.
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
