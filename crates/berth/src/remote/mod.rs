//! Other registries: a client of their distribution API ([`client`]) and the pull-through
//! caches that mirror them ([`mirrors`], the core's [`crate::registry::mirror::Upstream`]).

pub mod client;
pub mod mirrors;

pub use client::{Client, ClientError, Endpoint};
pub use mirrors::Mirrors;
