//! [`AuditTrail`]: the [`EventSink`] that records pushes, deletes and (when configured) pulls of
//! artifacts in the audit log, in the same metadata transaction as the change it records, so an
//! acknowledged push is never missing from the log and a failed one is never in it.
//!
//! Entries follow Harbor's audit log: a manifest pushed is operation `create` on resource type
//! `artifact`, named `<repository>:<tag>` (or `<repository>@<digest>` without a tag); a pull is
//! `pull`; a manifest deleted is `delete` on `artifact`, a tag deleted `delete` on `tag`. Blobs
//! are the parts of artifacts, not artifacts, and are not recorded (a blob deleted by itself is,
//! as `delete` on `blob`). Who is the authenticated identity of the request (`""` when
//! anonymous), from where its client address.

use std::time::UNIX_EPOCH;

use crate::meta::access::AuditEntry;
use crate::meta::Change;
use crate::registry::events::{EventAction, EventSink, RegistryEvent, BLOB_MEDIA_TYPE};

/// Records artifact events in the audit log.
#[derive(Clone, Copy, Debug, Default)]
pub struct AuditTrail {
    /// Whether pulls are recorded too (`auth.builtin.audit.pulls`).
    pub pulls: bool,
}

impl AuditTrail {
    /// The audit entry recording `event`, if it is one the log keeps.
    pub fn entry(event: &RegistryEvent) -> Option<AuditEntry> {
        let blob = event.media_type.as_deref() == Some(BLOB_MEDIA_TYPE);
        let (operation, resource_type) = match (event.action, blob, &event.tag) {
            (EventAction::Push, false, _) => ("create", "artifact"),
            (EventAction::Pull, false, _) => ("pull", "artifact"),
            (EventAction::Delete, false, Some(_)) => ("delete", "tag"),
            (EventAction::Delete, false, None) => ("delete", "artifact"),
            (EventAction::Delete, true, _) => ("delete", "blob"),
            _ => return None,
        };
        let resource = match (&event.tag, &event.digest) {
            (Some(tag), _) => format!("{}:{tag}", event.repo),
            (None, Some(digest)) => format!("{}@{digest}", event.repo),
            (None, None) => event.repo.to_string(),
        };
        let at = event
            .timestamp
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let detail = match (&event.tag, &event.digest) {
            (Some(_), Some(digest)) => digest.to_string(),
            _ => String::new(),
        };
        Some(AuditEntry {
            id: 0,
            at,
            username: event.request.actor.clone().unwrap_or_default(),
            operation: operation.to_string(),
            resource_type: resource_type.to_string(),
            resource,
            client: client_ip(&event.request.addr),
            success: true,
            detail,
        })
    }
}

/// The address part of a `host:port` peer address.
fn client_ip(addr: &str) -> String {
    addr.parse::<std::net::SocketAddr>()
        .map_or_else(|_| addr.to_string(), |a| a.ip().to_string())
}

impl EventSink for AuditTrail {
    fn changes_for(&self, event: &RegistryEvent) -> Vec<Change> {
        AuditTrail::entry(event)
            .map(Change::Audit)
            .into_iter()
            .collect()
    }

    fn wants(&self, action: EventAction) -> bool {
        match action {
            EventAction::Push | EventAction::Delete => true,
            EventAction::Pull => self.pulls,
            EventAction::Mount => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::digest::{Algorithm, Digest};
    use crate::registry::events::RequestContext;

    const OCI: &str = "application/vnd.oci.image.manifest.v1+json";

    fn event(action: EventAction, media_type: &str, tag: Option<&str>) -> RegistryEvent {
        let request = RequestContext {
            addr: "10.1.2.3:5555".into(),
            actor: Some("alice".into()),
            ..RequestContext::default()
        };
        let digest = Digest::of(Algorithm::Sha256, b"m");
        let mut e = RegistryEvent::new(action, &"team/app".parse().unwrap(), &request)
            .target(&digest, media_type, 7);
        e.tag = tag.map(|t| t.parse().unwrap());
        e
    }

    #[test]
    fn artifacts_are_recorded_in_harbor_terms_and_blobs_are_not() {
        let d = Digest::of(Algorithm::Sha256, b"m");
        let cases = [
            (
                event(EventAction::Push, OCI, Some("v1")),
                Some(("create", "artifact", "team/app:v1".to_string())),
            ),
            (
                event(EventAction::Push, OCI, None),
                Some(("create", "artifact", format!("team/app@{d}"))),
            ),
            (
                event(EventAction::Pull, OCI, Some("v1")),
                Some(("pull", "artifact", "team/app:v1".to_string())),
            ),
            (
                event(EventAction::Delete, OCI, Some("v1")),
                Some(("delete", "tag", "team/app:v1".to_string())),
            ),
            (
                event(EventAction::Delete, BLOB_MEDIA_TYPE, None),
                Some(("delete", "blob", format!("team/app@{d}"))),
            ),
            (event(EventAction::Push, BLOB_MEDIA_TYPE, None), None),
            (event(EventAction::Pull, BLOB_MEDIA_TYPE, None), None),
            (event(EventAction::Mount, BLOB_MEDIA_TYPE, None), None),
        ];
        for (e, want) in cases {
            let got = AuditTrail::entry(&e);
            let got_key = got.as_ref().map(|g| {
                (
                    g.operation.as_str(),
                    g.resource_type.as_str(),
                    g.resource.clone(),
                )
            });
            assert_eq!(got_key, want, "{:?} {:?}", e.action, e.media_type);
            if let Some(g) = got {
                assert_eq!(
                    (g.username.as_str(), g.client.as_str()),
                    ("alice", "10.1.2.3")
                );
                assert!(g.at > 0 && g.success);
            }
        }
    }

    #[test]
    fn pulls_are_recorded_only_when_asked() {
        assert!(!AuditTrail { pulls: false }.wants(EventAction::Pull));
        assert!(AuditTrail { pulls: true }.wants(EventAction::Pull));
        assert!(AuditTrail::default().wants(EventAction::Push));
        assert!(AuditTrail::default().wants(EventAction::Delete));
    }
}
