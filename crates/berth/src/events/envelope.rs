//! The wire format of notifications: Distribution's event envelope
//! (`application/vnd.docker.distribution.events.v1+json`, the version `registry:2` sends).
//!
//! Owns the one conversion from the core's [`RegistryEvent`] to a Distribution event
//! ([`to_event`]) and the serde types that give the JSON its field names and shapes.
//!
//! Invariants:
//! - Field names and optionality are Distribution 2.x's: empty strings and absent values are
//!   omitted (`omitempty`), except `request.id`, `request.method` and `request.useragent`, which
//!   are always present, and `target`, `request`, `actor`, `source`, which are always objects.
//! - Delete events carry only the repository and the digest (or the tag, for a tag delete):
//!   no media type, size or URL, as Distribution sends them.
//! - An event's `id` and `timestamp` are fixed when it is written to the outbox, so a re-sent
//!   event is byte-for-byte the event first sent (receivers can de-duplicate on `id`).

use serde::{Deserialize, Serialize};

use crate::registry::events::{EventAction, RegistryEvent, BLOB_MEDIA_TYPE};

/// The media type of the envelope (the `Content-Type` of every delivery).
pub const EVENTS_MEDIA_TYPE: &str = "application/vnd.docker.distribution.events.v1+json";

/// A delivery body: one or more events, not necessarily related.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Envelope<E = Event> {
    pub events: Vec<E>,
}

/// One event, as Distribution serializes it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// A unique identifier of the event (a UUID).
    pub id: String,
    /// When the event happened, RFC 3339 with nanoseconds, UTC.
    pub timestamp: String,
    /// `push`, `pull`, `mount` or `delete`.
    pub action: String,
    pub target: Target,
    pub request: RequestRecord,
    pub actor: ActorRecord,
    pub source: SourceRecord,
}

/// What the event is about: a descriptor plus where it lives.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    /// The same as `size`, kept by Distribution for older consumers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub repository: String,
    /// For a mount: the repository the blob was mounted from.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub from_repository: String,
    /// A direct link to the content (`<base>/v2/<repo>/{manifests,blobs}/<digest>`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tag: String,
    /// The manifest's references (`events.includereferences`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<Descriptor>,
}

/// A content descriptor inside `target.references`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    #[serde(default)]
    pub size: u64,
    pub digest: String,
}

/// The request that caused the event.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub addr: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    pub method: String,
    pub useragent: String,
}

/// Who caused the event (`{}` for anonymous requests).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ActorRecord {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// Which registry instance generated the event.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceRecord {
    /// Host and port of the registry node.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub addr: String,
    /// Identifies the running process; changes at each restart.
    #[serde(
        rename = "instanceID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub instance_id: String,
}

/// Converts a core event into Distribution's event, with the given `id` and `source`.
///
/// This is the only place that decides which fields an event of each action carries.
pub fn to_event(event: &RegistryEvent, id: &str, source: &SourceRecord) -> Event {
    let repo = event.repo.as_str();
    let digest = event.digest.as_ref().map(|d| d.to_string());
    let mut target = Target {
        repository: repo.to_string(),
        digest: digest.clone().unwrap_or_default(),
        tag: event
            .tag
            .as_ref()
            .map(|t| t.to_string())
            .unwrap_or_default(),
        ..Target::default()
    };
    if event.action != EventAction::Delete {
        target.media_type = event.media_type.clone().unwrap_or_default();
        target.size = event.size;
        target.length = event.size;
        if let Some(from) = &event.from {
            target.from_repository = from.to_string();
        }
        if let Some(digest) = &digest {
            let is_blob = event.action == EventAction::Mount
                || event.media_type.as_deref() == Some(BLOB_MEDIA_TYPE);
            let kind = if is_blob { "blobs" } else { "manifests" };
            target.url = format!("{}/v2/{repo}/{kind}/{digest}", base_url(event));
        }
    }
    let r = &event.request;
    Event {
        id: id.to_string(),
        timestamp: rfc3339_nanos(event.timestamp),
        action: event.action.as_str().to_string(),
        target,
        request: RequestRecord {
            id: r.id.clone(),
            addr: r.addr.clone(),
            host: r.host.clone(),
            method: r.method.clone(),
            useragent: r.user_agent.clone(),
        },
        actor: ActorRecord {
            name: r.actor.clone().unwrap_or_default(),
        },
        source: source.clone(),
    }
}

/// The registry's external base URL without a trailing `/`; `http://<Host>` when the edge gave
/// none (what Distribution builds from the request when `http.host` is not configured).
fn base_url(event: &RegistryEvent) -> String {
    let base = event.request.base_url.trim_end_matches('/');
    if base.is_empty() && !event.request.host.is_empty() {
        format!("http://{}", event.request.host)
    } else {
        base.to_string()
    }
}

pub use crate::time::rfc3339 as rfc3339_nanos;

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use serde_json::json;

    use super::*;
    use crate::registry::events::RequestContext;

    fn ctx() -> RequestContext {
        RequestContext {
            id: "req-1".into(),
            addr: "10.0.0.1:5555".into(),
            host: "reg.example:5000".into(),
            method: "PUT".into(),
            user_agent: "docker/27".into(),
            actor: None,
            base_url: "https://reg.example:5000/".into(),
            origin: None,
        }
    }

    fn source() -> SourceRecord {
        SourceRecord {
            addr: "node-1:5000".into(),
            instance_id: "inst".into(),
        }
    }

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn timestamps_are_go_rfc3339_nano() {
        assert_eq!(rfc3339_nanos(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::new(1_457_563_466, 402_973_972);
        assert_eq!(rfc3339_nanos(t), "2016-03-09T22:44:26.402973972Z");
        let t = UNIX_EPOCH + Duration::new(951_782_400, 500_000_000); // leap day 2000
        assert_eq!(rfc3339_nanos(t), "2000-02-29T00:00:00.5Z");
        let t = UNIX_EPOCH - Duration::new(1, 0);
        assert_eq!(rfc3339_nanos(t), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn manifest_push_by_tag() {
        let mut e = RegistryEvent::new(EventAction::Push, &"lib/app".parse().unwrap(), &ctx())
            .target(
                &D.parse().unwrap(),
                "application/vnd.oci.image.manifest.v1+json",
                708,
            );
        e.tag = Some("latest".parse().unwrap());
        e.timestamp = UNIX_EPOCH;
        let v = serde_json::to_value(to_event(&e, "ev-1", &source())).unwrap();
        assert_eq!(
            v,
            json!({
                "id": "ev-1",
                "timestamp": "1970-01-01T00:00:00Z",
                "action": "push",
                "target": {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "size": 708,
                    "digest": D,
                    "length": 708,
                    "repository": "lib/app",
                    "url": format!("https://reg.example:5000/v2/lib/app/manifests/{D}"),
                    "tag": "latest"
                },
                "request": {
                    "id": "req-1",
                    "addr": "10.0.0.1:5555",
                    "host": "reg.example:5000",
                    "method": "PUT",
                    "useragent": "docker/27"
                },
                "actor": {},
                "source": {"addr": "node-1:5000", "instanceID": "inst"}
            })
        );
    }

    #[test]
    fn mount_is_a_blob_with_its_origin() {
        let mut c = ctx();
        c.actor = Some("alice".into());
        let mut e = RegistryEvent::new(EventAction::Mount, &"b".parse().unwrap(), &c).target(
            &D.parse().unwrap(),
            BLOB_MEDIA_TYPE,
            3,
        );
        e.from = Some("a".parse().unwrap());
        let v = serde_json::to_value(to_event(&e, "x", &source())).unwrap();
        assert_eq!(v["target"]["fromRepository"], "a");
        assert_eq!(
            v["target"]["url"],
            format!("https://reg.example:5000/v2/b/blobs/{D}")
        );
        assert_eq!(v["actor"], json!({"name": "alice"}));
    }

    #[test]
    fn deletes_carry_only_repository_and_digest_or_tag() {
        let repo = "r".parse().unwrap();
        let mut e = RegistryEvent::new(EventAction::Delete, &repo, &ctx());
        e.digest = Some(D.parse().unwrap());
        let v = serde_json::to_value(to_event(&e, "x", &source())).unwrap();
        assert_eq!(v["target"], json!({"repository": "r", "digest": D}));

        let mut e = RegistryEvent::new(EventAction::Delete, &repo, &ctx());
        e.tag = Some("v1".parse().unwrap());
        let v = serde_json::to_value(to_event(&e, "x", &source())).unwrap();
        assert_eq!(v["target"], json!({"repository": "r", "tag": "v1"}));
    }

    #[test]
    fn base_url_falls_back_to_the_host() {
        let mut c = ctx();
        c.base_url = String::new();
        let e = RegistryEvent::new(EventAction::Pull, &"r".parse().unwrap(), &c).target(
            &D.parse().unwrap(),
            BLOB_MEDIA_TYPE,
            1,
        );
        let v = serde_json::to_value(to_event(&e, "x", &source())).unwrap();
        assert_eq!(
            v["target"]["url"],
            format!("http://reg.example:5000/v2/r/blobs/{D}")
        );
    }
}
