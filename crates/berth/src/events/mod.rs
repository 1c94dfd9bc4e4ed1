//! Registry notifications: events in Distribution's envelope format, delivered from the durable
//! outbox.
//!
//! - [`envelope`]: the JSON an endpoint receives, and the one conversion from the core's
//!   [`RegistryEvent`](crate::registry::events::RegistryEvent) to it.
//! - [`sink`]: [`Notifier`], the [`EventSink`](crate::registry::events::EventSink) the core calls
//!   inside its metadata transactions; it writes one outbox entry per endpoint that wants the
//!   event (topic `notify:<endpoint name>`), so an event commits with the change it reports.
//! - [`audit`]: [`AuditTrail`], the sink that writes pushes, deletes and pulls of artifacts to
//!   the audit log in the change's own transaction.
//! - [`delivery`]: one task per endpoint reading its topic in order, POSTing batches and
//!   acknowledging them once accepted.
//!
//! Invariant: nothing about an event lives only in memory. Whatever the core committed is in the
//! outbox until an endpoint accepted it, so events survive restarts and crashes and are delivered
//! at least once, in order, per endpoint.
//!
//! Wiring: build a [`Notifier`] from `config.notifications`, pass it to
//! [`Registry::with_events`](crate::registry::Registry::with_events), and call
//! [`spawn_delivery`] with the same metadata store and endpoints; cancel the token on shutdown
//! and await the handles.

pub mod audit;
pub mod delivery;
pub mod envelope;
pub mod sink;

pub use audit::AuditTrail;
pub use delivery::{
    spawn_delivery, spawn_delivery_with, Delivery, DeliveryMetrics, DeliveryOptions,
};
pub use envelope::{to_event, Envelope, Event, EVENTS_MEDIA_TYPE};
pub use sink::{instance_id, topic, Notifier, NotifierError};
