//! [`Notifier`]: the [`EventSink`] that turns the core's events into outbox entries, one per
//! endpoint that wants the event, written in the same metadata transaction as the change.
//!
//! Invariants:
//! - Disabled endpoints get nothing; an endpoint's `ignore.actions`, `ignore.mediatypes` and
//!   `ignoredmediatypes` are applied here, before anything is written (as Distribution drops
//!   ignored events before queueing them).
//! - Every endpoint receiving an event gets the same payload (same `id`, same `timestamp`).
//! - The outbox topic of an endpoint is `notify:<name>` ([`topic`]); the delivery side derives it
//!   the same way, so names must be unique among enabled endpoints ([`Notifier::new`] checks).

use std::collections::{BTreeSet, HashSet};
use std::sync::OnceLock;

use crate::config::{Endpoint, Notifications};
use crate::meta::Change;
use crate::registry::events::{EventAction, EventSink, RegistryEvent};

use super::envelope::{to_event, SourceRecord};

/// The outbox topic holding the events of the endpoint named `name`.
pub fn topic(name: &str) -> String {
    format!("notify:{name}")
}

/// The identifier of this process, reported as `source.instanceID` (changes at each restart).
pub fn instance_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| uuid::Uuid::new_v4().to_string())
}

/// Why the notification configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NotifierError {
    /// Two enabled endpoints share a name, so they would share one outbox topic.
    #[error(
        "notifications.endpoints: two enabled endpoints are named {0:?}; names must be unique"
    )]
    DuplicateName(String),
}

/// One enabled endpoint's filters.
#[derive(Clone, Debug)]
struct Route {
    topic: String,
    ignored_media_types: HashSet<String>,
    ignored_actions: HashSet<String>,
}

impl Route {
    fn wants_action(&self, action: EventAction) -> bool {
        !self.ignored_actions.contains(action.as_str())
    }

    fn wants(&self, event: &RegistryEvent) -> bool {
        self.wants_action(event.action)
            && !self
                .ignored_media_types
                .contains(event.media_type.as_deref().unwrap_or(""))
    }
}

/// Routes registry events to the outbox topics of the configured endpoints.
#[derive(Clone, Debug)]
pub struct Notifier {
    routes: Vec<Route>,
    source: SourceRecord,
}

impl Notifier {
    /// A notifier for the enabled endpoints of `config`. `source_addr` is reported as
    /// `source.addr` (Distribution uses the host name and port of the registry node).
    pub fn new(
        config: &Notifications,
        source_addr: impl Into<String>,
    ) -> Result<Notifier, NotifierError> {
        let mut names = BTreeSet::new();
        let mut routes = Vec::new();
        for endpoint in config.endpoints.iter().filter(|e| !e.disabled) {
            if !names.insert(endpoint.name.as_str()) {
                return Err(NotifierError::DuplicateName(endpoint.name.clone()));
            }
            routes.push(route(endpoint));
        }
        Ok(Notifier {
            routes,
            source: SourceRecord {
                addr: source_addr.into(),
                instance_id: instance_id().to_string(),
            },
        })
    }

    /// Whether any endpoint is enabled (when not, the notifier need not be installed at all).
    pub fn is_active(&self) -> bool {
        !self.routes.is_empty()
    }
}

fn route(endpoint: &Endpoint) -> Route {
    Route {
        topic: topic(&endpoint.name),
        ignored_media_types: endpoint
            .ignoredmediatypes
            .iter()
            .chain(&endpoint.ignore.mediatypes)
            .cloned()
            .collect(),
        ignored_actions: endpoint.ignore.actions.iter().cloned().collect(),
    }
}

impl EventSink for Notifier {
    fn changes_for(&self, event: &RegistryEvent) -> Vec<Change> {
        let topics: Vec<&str> = self
            .routes
            .iter()
            .filter(|r| r.wants(event))
            .map(|r| r.topic.as_str())
            .collect();
        if topics.is_empty() {
            return Vec::new();
        }
        let id = uuid::Uuid::new_v4().to_string();
        let payload = match serde_json::to_value(to_event(event, &id, &self.source)) {
            Ok(v) => v,
            Err(e) => {
                // Cannot happen (plain strings and numbers); never fail the change for it.
                tracing::error!(error = %e, "could not encode a registry event");
                return Vec::new();
            }
        };
        topics
            .into_iter()
            .map(|topic| Change::Enqueue {
                topic: topic.to_string(),
                payload: payload.clone(),
            })
            .collect()
    }

    fn wants(&self, action: EventAction) -> bool {
        self.routes.iter().any(|r| r.wants_action(action))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Ignore;
    use crate::registry::events::{RequestContext, BLOB_MEDIA_TYPE};

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const OCI: &str = "application/vnd.oci.image.manifest.v1+json";

    fn endpoint(name: &str) -> Endpoint {
        Endpoint {
            name: name.into(),
            url: "http://127.0.0.1:1/".into(),
            ..Endpoint::default()
        }
    }

    fn event(action: EventAction, media_type: &str) -> RegistryEvent {
        RegistryEvent::new(action, &"r".parse().unwrap(), &RequestContext::default()).target(
            &D.parse().unwrap(),
            media_type,
            1,
        )
    }

    fn topics(changes: &[Change]) -> Vec<&str> {
        changes
            .iter()
            .map(|c| match c {
                Change::Enqueue { topic, .. } => topic.as_str(),
                other => panic!("unexpected change {other:?}"),
            })
            .collect()
    }

    #[test]
    fn filters_per_endpoint() {
        let mut no_pulls = endpoint("no-pulls");
        no_pulls.ignore = Ignore {
            mediatypes: vec![],
            actions: vec!["pull".into()],
        };
        let mut no_blobs = endpoint("no-blobs");
        no_blobs.ignoredmediatypes = vec![BLOB_MEDIA_TYPE.into()];
        let mut no_oci = endpoint("no-oci");
        no_oci.ignore.mediatypes = vec![OCI.into()];
        let mut off = endpoint("off");
        off.disabled = true;
        let config = Notifications {
            endpoints: vec![no_pulls, no_blobs, no_oci, off],
            ..Notifications::default()
        };
        let n = Notifier::new(&config, "node:5000").unwrap();
        assert!(n.is_active());
        assert!(n.wants(EventAction::Pull));

        let c = n.changes_for(&event(EventAction::Pull, BLOB_MEDIA_TYPE));
        assert_eq!(topics(&c), ["notify:no-oci"]);
        let c = n.changes_for(&event(EventAction::Push, OCI));
        assert_eq!(topics(&c), ["notify:no-pulls", "notify:no-blobs"]);
        // Same payload for every endpoint.
        match (&c[0], &c[1]) {
            (Change::Enqueue { payload: a, .. }, Change::Enqueue { payload: b, .. }) => {
                assert_eq!(a, b);
                assert_eq!(a["source"]["addr"], "node:5000");
                assert_eq!(a["source"]["instanceID"], instance_id());
            }
            _ => unreachable!(),
        }
    }

    #[test]
    fn wants_is_false_when_every_endpoint_ignores_the_action() {
        let mut a = endpoint("a");
        a.ignore.actions = vec!["pull".into()];
        let mut b = endpoint("b");
        b.ignore.actions = vec!["pull".into(), "mount".into()];
        let mut c = endpoint("c");
        c.disabled = true;
        let config = Notifications {
            endpoints: vec![a, b, c],
            ..Notifications::default()
        };
        let n = Notifier::new(&config, "").unwrap();
        assert!(!n.wants(EventAction::Pull));
        assert!(n.wants(EventAction::Mount));
        assert!(n.wants(EventAction::Push));

        let none = Notifier::new(&Notifications::default(), "").unwrap();
        assert!(!none.is_active());
        assert!(!none.wants(EventAction::Push));
        assert!(none.changes_for(&event(EventAction::Push, OCI)).is_empty());
    }

    #[test]
    fn duplicate_enabled_names_are_rejected() {
        let mut off = endpoint("a");
        off.disabled = true;
        let ok = Notifications {
            endpoints: vec![endpoint("a"), off],
            ..Notifications::default()
        };
        assert!(Notifier::new(&ok, "").is_ok());
        let dup = Notifications {
            endpoints: vec![endpoint("a"), endpoint("a")],
            ..Notifications::default()
        };
        assert!(matches!(
            Notifier::new(&dup, ""),
            Err(NotifierError::DuplicateName(n)) if n == "a"
        ));
    }
}
