//! What the owners of a registry decide about its content, asked by the core before it moves or
//! deletes a tag or stores bytes: which tags are immutable, how much a namespace (the first path
//! component of repository names: a project) may store. The core defines the question;
//! whoever keeps the rules (the built-in token service's projects) answers it.

use async_trait::async_trait;

use crate::oci::name::{RepoName, Tag};

/// A namespace's storage limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageLimit {
    /// The namespace (`team` for `team/app`).
    pub namespace: String,
    /// Bytes it may hold, each blob and manifest counted once however many of its repositories
    /// link it.
    pub bytes: u64,
}

/// The rules could not be read: nothing is changed.
#[derive(Debug, thiserror::Error)]
#[error("the content rules cannot be read: {0}")]
pub struct PolicyError(pub String);

#[async_trait]
pub trait Policy: Send + Sync {
    /// The tags among `tags` of `repo` that may never be moved or deleted, each with the rule
    /// that says so, in the order given; one lookup of the rules for all of them.
    async fn immutable(
        &self,
        repo: &RepoName,
        tags: &[Tag],
    ) -> Result<Vec<(Tag, String)>, PolicyError>;
    /// The storage limit of the namespace of `repo`, if it has one.
    async fn storage_limit(&self, repo: &RepoName) -> Result<Option<StorageLimit>, PolicyError>;
    /// Whether garbage collection deletes the untagged manifests of `repo`'s namespace
    /// (`None`: as the run says).
    async fn untagged_collection(&self, repo: &RepoName) -> Result<Option<bool>, PolicyError>;
    /// Whether any namespace asks for its untagged manifests to be deleted.
    async fn untagged_collection_anywhere(&self) -> Result<bool, PolicyError>;
}
