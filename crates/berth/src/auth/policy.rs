//! The core's [`Policy`] from projects: their immutable tag rules and storage quotas.
//!
//! Rules are Harbor's: a tag selector (`matches` or `excludes` a doublestar pattern) and a
//! repository selector (`repoMatches` or `repoExcludes`, matched against the repository's name
//! below the project). `*` stays within one path segment, `**` crosses them, `{a,b}` is either.
//! Rules are read from the shared store at every check, so a rule added through one instance
//! holds on every other at once.

use std::sync::Arc;

use async_trait::async_trait;
use globset::{GlobBuilder, GlobMatcher};

use super::builtin::project_of;
use crate::meta::access::{AccessStore, ImmutableRule, Project};
use crate::oci::name::{RepoName, Tag};
use crate::registry::policy::{Policy, PolicyError, StorageLimit};

/// The decorations Harbor's selectors take.
pub const TAG_DECORATIONS: [&str; 2] = ["matches", "excludes"];
pub const REPO_DECORATIONS: [&str; 2] = ["repoMatches", "repoExcludes"];

/// A doublestar pattern, or why it is not one.
pub fn pattern(p: &str) -> Result<GlobMatcher, String> {
    if p.trim().is_empty() {
        return Err("an empty pattern matches nothing: use ** for everything".into());
    }
    // Harbor's doublestar: `*` never crosses a `/`.
    GlobBuilder::new(p)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("invalid pattern {p:?}: {e}"))
}

/// Whether `rule` protects `tag` of the repository `below` (its name below the project).
pub fn protects(rule: &ImmutableRule, below: &str, tag: &str) -> bool {
    if rule.disabled {
        return false;
    }
    let (Ok(tags), Ok(repos)) = (pattern(&rule.tag_pattern), pattern(&rule.repo_pattern)) else {
        return false;
    };
    let tag_ok = tags.is_match(tag) == (rule.tag_decoration != "excludes");
    let repo_ok = repos.is_match(below) == (rule.repo_decoration != "repoExcludes");
    tag_ok && repo_ok
}

/// Projects' rules, read from the access store.
pub struct ProjectPolicy {
    store: Arc<dyn AccessStore>,
}

impl ProjectPolicy {
    pub fn new(store: Arc<dyn AccessStore>) -> ProjectPolicy {
        ProjectPolicy { store }
    }

    async fn project(&self, repo: &RepoName) -> Result<Option<Project>, PolicyError> {
        self.store
            .project_by_name(project_of(repo.as_str()))
            .await
            .map_err(|e| PolicyError(e.to_string()))
    }
}

#[async_trait]
impl Policy for ProjectPolicy {
    async fn immutable(
        &self,
        repo: &RepoName,
        tags: &[Tag],
    ) -> Result<Vec<(Tag, String)>, PolicyError> {
        let Some(project) = self.project(repo).await? else {
            return Ok(Vec::new());
        };
        let rules = self
            .store
            .immutable_rules(project.id)
            .await
            .map_err(|e| PolicyError(e.to_string()))?;
        let below = repo
            .as_str()
            .strip_prefix(&format!("{}/", project.name))
            .unwrap_or(repo.as_str());
        Ok(tags
            .iter()
            .filter_map(|tag| {
                let r = rules.iter().find(|r| protects(r, below, tag.as_str()))?;
                let why = format!(
                    "rule {} of project {}: tags {} {}, repositories {} {}",
                    r.id,
                    project.name,
                    r.tag_decoration,
                    r.tag_pattern,
                    r.repo_decoration,
                    r.repo_pattern
                );
                Some((tag.clone(), why))
            })
            .collect())
    }

    async fn untagged_collection(&self, repo: &RepoName) -> Result<Option<bool>, PolicyError> {
        Ok(self.project(repo).await?.and_then(|p| p.delete_untagged))
    }

    async fn untagged_collection_anywhere(&self) -> Result<bool, PolicyError> {
        self.store
            .projects_deleting_untagged()
            .await
            .map(|n| n > 0)
            .map_err(|e| PolicyError(e.to_string()))
    }

    async fn storage_limit(&self, repo: &RepoName) -> Result<Option<StorageLimit>, PolicyError> {
        Ok(self.project(repo).await?.and_then(|p| {
            let bytes = u64::try_from(p.storage_limit).ok()?;
            Some(StorageLimit {
                namespace: p.name,
                bytes,
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(tag: &str, tag_dec: &str, repo: &str, repo_dec: &str) -> ImmutableRule {
        ImmutableRule {
            id: 1,
            project_id: 1,
            priority: 0,
            disabled: false,
            tag_pattern: tag.into(),
            tag_decoration: tag_dec.into(),
            repo_pattern: repo.into(),
            repo_decoration: repo_dec.into(),
        }
    }

    #[test]
    fn selectors_match_as_harbor_documents_them() {
        let releases = rule("v*", "matches", "**", "repoMatches");
        assert!(protects(&releases, "app", "v1.2"));
        assert!(protects(&releases, "tools/lint", "v1"));
        assert!(!protects(&releases, "app", "latest"));
        let not_latest = rule("latest", "excludes", "app*", "repoMatches");
        assert!(protects(&not_latest, "app-server", "1.0"));
        assert!(!protects(&not_latest, "app", "latest"));
        assert!(!protects(&not_latest, "web", "1.0"));
        // `*` stays within a segment; `**` crosses.
        let one_level = rule("**", "matches", "*", "repoMatches");
        assert!(protects(&one_level, "app", "x"));
        assert!(!protects(&one_level, "tools/lint", "x"));
        let except_tmp = rule("{1.*,2.*}", "matches", "tmp/**", "repoExcludes");
        assert!(protects(&except_tmp, "app", "2.0"));
        assert!(!protects(&except_tmp, "tmp/x", "2.0"));
        let mut off = releases.clone();
        off.disabled = true;
        assert!(!protects(&off, "app", "v1"));
        assert!(pattern("").is_err() && pattern("[").is_err());
    }
}
