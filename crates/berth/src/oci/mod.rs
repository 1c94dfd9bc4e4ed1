//! OCI value types: the vocabulary every layer speaks.
//!
//! Digests and their streaming hasher ([`digest`]), repository names, tags and references
//! ([`name`]), media types and manifest parsing ([`manifest`]), and a page of a sorted listing
//! ([`Page`]). Each type is parsed once and cannot hold an invalid value afterwards.
//!
//! Invariant: this is the bottom floor. It imports nothing of Berth and does no I/O.

pub mod digest;
pub mod manifest;
pub mod name;

/// A page of a sorted listing (the spec's `n` and `last`): at most `limit` names strictly after
/// `after`.
#[derive(Clone, Debug, Default)]
pub struct Page {
    pub after: Option<String>,
    pub limit: Option<u32>,
}
