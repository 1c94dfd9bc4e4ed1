//! Berth: an OCI Distribution registry.
//!
//! Layers, each depending only on those below it:
//! - [`http`]: the axum edge (routes, OCI error mapping);
//! - [`registry`]: the core (names, digests, manifests, uploads, tags, referrers);
//! - [`storage`] (blob bytes over OpenDAL) and [`meta`] (metadata over sqlx);
//! - [`oci`]: the value types every layer speaks (digests, names, manifests), which import
//!   nothing of Berth.
//!
//! [`server`] wires them together for the `berth` binary.

pub mod auth;
pub mod config;
pub mod events;
pub mod gc;
pub mod http;
pub mod import;
pub mod listener;
pub mod logging;
pub mod meta;
pub mod oci;
pub mod registry;
pub mod remote;
pub mod replication;
pub mod server;
pub mod storage;
pub mod time;
