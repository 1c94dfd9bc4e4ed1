//! Registry notifications: events in Distribution's envelope format, delivered from the durable outbox.
