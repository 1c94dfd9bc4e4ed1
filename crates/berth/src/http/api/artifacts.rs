//! `/projects/{p}/repositories`, their artifacts (manifests) and tags, as Harbor shows them.
//!
//! Repository names in paths are those after the project (`app` for `team/app`); their slashes
//! come URL-encoded twice (`a%252Fb`), as Harbor's clients send them. Reading needs pull access
//! to the project, adding a tag push access, deleting delete access (the same actions tokens
//! grant). Changes go through the registry core inside the request's context, so they commit
//! with their events and the audit trail names who made them.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::request::Parts;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    body, created, ok, paged, paging, param, query, standing_in, time_s, Api, ApiError, ApiResult,
    Caller, Code, Standing,
};
use crate::auth::accounts::{
    ArtifactSelection, ArtifactSummary, PageRequest, RepositorySummary, TagSummary,
};
use crate::auth::rbac::Action;
use crate::oci::digest::Digest;
use crate::oci::name::{Reference, RepoName, Tag};
use crate::registry::events::with_request;

/// Harbor's time for "never" (content never pulled).
const NEVER: &str = "0001-01-01T00:00:00Z";

/// The project `name` (always a name on these paths) when the caller may do `action` in it.
async fn project_for(
    api: &Api,
    caller: &Caller,
    name: &str,
    action: Action,
) -> Result<Standing, ApiError> {
    let project = api
        .accounts
        .store()
        .project_by_name(name)
        .await
        .map_err(|e| ApiError::new(Code::UNAVAILABLE, e.to_string()))?
        .ok_or_else(|| ApiError::not_found(format!("project {name} not found")))?;
    let st = standing_in(api, caller, project).await?;
    if !st.may(Action::Pull) && !st.sysadmin {
        return Err(caller.refuse(&format!("no access to project {name}")));
    }
    if !st.may(action) && !st.sysadmin {
        return Err(caller.refuse(&format!(
            "{action} access to project {name} is needed for this"
        )));
    }
    Ok(st)
}

/// The full repository name of `repository` (once more percent-decoded) in `project`.
fn repo_name(project: &str, repository: &str) -> Result<RepoName, ApiError> {
    let decoded = percent_encoding::percent_decode_str(repository).decode_utf8_lossy();
    format!("{project}/{decoded}")
        .parse()
        .map_err(|e| ApiError::bad_request(format!("invalid repository name {decoded:?}: {e}")))
}

fn repository_json(project_id: i64, r: &RepositorySummary) -> Value {
    json!({
        "id": r.id,
        "project_id": project_id,
        "name": r.name.as_str(),
        "description": "",
        "artifact_count": r.artifact_count,
        "pull_count": r.pull_count,
        "creation_time": time_s(r.created_at),
        "update_time": time_s(r.updated_at),
    })
}

/// A number standing for `text` in Harbor's integer id fields (at most 2^52, so JSON readers
/// keep it exact); the same text always gives the same number.
fn number_for(text: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h >> 12) as i64
}

fn artifact_json(
    project_id: i64,
    repo_id: i64,
    repo: &RepoName,
    a: &ArtifactSummary,
    with_tags: bool,
) -> Value {
    let artifact_id = number_for(&a.digest.to_string());
    let kind = match a.artifact_type.as_deref() {
        None => "IMAGE",
        Some(t) if t.contains("image.config") || t.contains("container.image") => "IMAGE",
        Some(_) => "UNKNOWN",
    };
    let tags: Option<Vec<Value>> = with_tags.then(|| {
        a.tags
            .iter()
            .map(|t| tag_json(repo_id, repo, artifact_id, t))
            .collect()
    });
    // An index's children, as Harbor references them (Berth does not keep their platforms).
    let references: Option<Vec<Value>> = (!a.children.is_empty()).then(|| {
        a.children
            .iter()
            .map(|c| {
                json!({
                    "parent_id": artifact_id,
                    "child_id": number_for(&c.to_string()),
                    "child_digest": c.to_string(),
                })
            })
            .collect()
    });
    json!({
        "id": artifact_id,
        "type": kind,
        "media_type": a.artifact_type.clone().unwrap_or_else(|| a.media_type.clone()),
        "manifest_media_type": a.media_type,
        "artifact_type": a.artifact_type,
        "project_id": project_id,
        "repository_id": repo_id,
        "repository_name": repo.as_str(),
        "digest": a.digest.to_string(),
        "size": a.size,
        "icon": "",
        "push_time": time_s(a.pushed_at),
        "pull_time": pull_time(a.pulled_at),
        "extra_attrs": {},
        "tags": tags,
        "labels": null,
        "references": references,
    })
}

/// Harbor's `pull_time`: when, or its time for "never".
fn pull_time(at: Option<i64>) -> String {
    at.map_or_else(|| NEVER.to_string(), time_s)
}

fn tag_json(repo_id: i64, repo: &RepoName, artifact_id: i64, tag: &TagSummary) -> Value {
    json!({
        "id": number_for(&format!("{}:{}", repo.as_str(), tag.name)),
        "repository_id": repo_id,
        "artifact_id": artifact_id,
        "name": tag.name,
        "push_time": time_s(tag.pushed_at),
        "pull_time": pull_time(tag.pulled_at),
        "immutable": false,
    })
}

/// The repository record of `repo` (404 when it holds no manifest).
async fn repository_of(
    api: &Api,
    project: &str,
    repo: &RepoName,
) -> Result<RepositorySummary, ApiError> {
    let rest = &repo.as_str()[project.len() + 1..];
    let all = api
        .accounts
        .repositories(
            project,
            Some(rest),
            PageRequest {
                page: 1,
                page_size: 100,
            },
        )
        .await?;
    all.items
        .into_iter()
        .find(|r| r.name == *repo)
        .ok_or_else(|| ApiError::not_found(format!("repository {repo} not found")))
}

/// The digest `reference` (a digest or a tag) names in `repo`.
async fn resolve(api: &Api, repo: &RepoName, reference: &str) -> Result<Digest, ApiError> {
    let reference: Reference = reference
        .parse()
        .map_err(|e| ApiError::bad_request(format!("invalid reference {reference:?}: {e}")))?;
    Ok(api.core.manifest(repo, &reference).await?.digest)
}

async fn artifact_of(
    api: &Api,
    repo: &RepoName,
    reference: &str,
) -> Result<ArtifactSummary, ApiError> {
    let digest = resolve(api, repo, reference).await?;
    let found = api
        .accounts
        .artifacts(
            repo,
            ArtifactSelection::Digest(&digest),
            PageRequest {
                page: 1,
                page_size: 1,
            },
        )
        .await?;
    found
        .items
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::not_found(format!("artifact {reference} not found in {repo}")))
}

/// `GET /projects/{project_name}/repositories` (`q=name=~…`).
pub async fn repositories(
    State(api): State<Api>,
    caller: Caller,
    parts: Parts,
    Path(p): Path<String>,
) -> ApiResult {
    let st = project_for(&api, &caller, &p, Action::Pull).await?;
    let q = query(&parts);
    let page = paging(&q)?;
    let filter = super::Filter::parse(param(&q, "q"))?;
    filter.only(&["name"])?;
    let name = filter.text("name").map(|(v, _)| {
        v.strip_prefix(&format!("{}/", st.project.name))
            .unwrap_or(v)
            .to_string()
    });
    let l = api
        .accounts
        .repositories(&st.project.name, name.as_deref(), page)
        .await?;
    let items: Vec<Value> = l
        .items
        .iter()
        .map(|r| repository_json(st.project.id, r))
        .collect();
    paged(&parts, page, l.total, &items)
}

/// `GET /projects/{p}/repositories/{r}`.
pub async fn repository(
    State(api): State<Api>,
    caller: Caller,
    Path((p, r)): Path<(String, String)>,
) -> ApiResult {
    let st = project_for(&api, &caller, &p, Action::Pull).await?;
    let repo = repo_name(&st.project.name, &r)?;
    let found = repository_of(&api, &st.project.name, &repo).await?;
    super::json(&repository_json(st.project.id, &found))
}

/// `DELETE /projects/{p}/repositories/{r}`: every artifact of it.
pub async fn delete_repository(
    State(api): State<Api>,
    caller: Caller,
    parts: Parts,
    Path((p, r)): Path<(String, String)>,
) -> ApiResult {
    let st = project_for(&api, &caller, &p, Action::Delete).await?;
    let repo = repo_name(&st.project.name, &r)?;
    repository_of(&api, &st.project.name, &repo).await?;
    with_request(
        caller.request_context(&api, &parts),
        delete_artifacts(&api, &repo),
    )
    .await?;
    caller
        .accounts(&api)
        .record("delete", "repository", repo.as_str())
        .await;
    ok()
}

/// Deletes every manifest of `repo`, a page at a time.
async fn delete_artifacts(api: &Api, repo: &RepoName) -> Result<(), ApiError> {
    loop {
        let batch = api
            .accounts
            .artifacts(
                repo,
                ArtifactSelection::All,
                PageRequest {
                    page: 1,
                    page_size: 100,
                },
            )
            .await?;
        if batch.items.is_empty() {
            return Ok(());
        }
        for a in batch.items {
            match api
                .core
                .delete_manifest(repo, &Reference::Digest(a.digest))
                .await
            {
                Ok(()) | Err(crate::registry::RegistryError::ManifestUnknown(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// `GET …/artifacts` (`with_tag`, default true).
pub async fn list(
    State(api): State<Api>,
    caller: Caller,
    parts: Parts,
    Path((p, r)): Path<(String, String)>,
) -> ApiResult {
    let st = project_for(&api, &caller, &p, Action::Pull).await?;
    let repo = repo_name(&st.project.name, &r)?;
    let q = query(&parts);
    let page = paging(&q)?;
    let with_tags = param(&q, "with_tag").is_none_or(|v| !v.eq_ignore_ascii_case("false"));
    let found = repository_of(&api, &st.project.name, &repo).await?;
    let l = api
        .accounts
        .artifacts(&repo, ArtifactSelection::TopLevel, page)
        .await?;
    let items: Vec<Value> = l
        .items
        .iter()
        .map(|a| artifact_json(st.project.id, found.id, &repo, a, with_tags))
        .collect();
    paged(&parts, page, l.total, &items)
}

/// `GET …/artifacts/{reference}` (a digest or a tag).
pub async fn get(
    State(api): State<Api>,
    caller: Caller,
    parts: Parts,
    Path((p, r, reference)): Path<(String, String, String)>,
) -> ApiResult {
    let st = project_for(&api, &caller, &p, Action::Pull).await?;
    let repo = repo_name(&st.project.name, &r)?;
    let q = query(&parts);
    let with_tags = param(&q, "with_tag").is_none_or(|v| !v.eq_ignore_ascii_case("false"));
    let found = repository_of(&api, &st.project.name, &repo).await?;
    let a = artifact_of(&api, &repo, &reference).await?;
    super::json(&artifact_json(
        st.project.id,
        found.id,
        &repo,
        &a,
        with_tags,
    ))
}

/// `DELETE …/artifacts/{reference}`: the manifest and every tag on it.
pub async fn delete(
    State(api): State<Api>,
    caller: Caller,
    parts: Parts,
    Path((p, r, reference)): Path<(String, String, String)>,
) -> ApiResult {
    let st = project_for(&api, &caller, &p, Action::Delete).await?;
    let repo = repo_name(&st.project.name, &r)?;
    let digest = resolve(&api, &repo, &reference).await?;
    let reference = Reference::Digest(digest);
    let change = api.core.delete_manifest(&repo, &reference);
    with_request(caller.request_context(&api, &parts), change).await?;
    ok()
}

/// `GET …/artifacts/{reference}/tags`.
pub async fn tags(
    State(api): State<Api>,
    caller: Caller,
    parts: Parts,
    Path((p, r, reference)): Path<(String, String, String)>,
) -> ApiResult {
    let st = project_for(&api, &caller, &p, Action::Pull).await?;
    let repo = repo_name(&st.project.name, &r)?;
    let page = paging(&query(&parts))?;
    let found = repository_of(&api, &st.project.name, &repo).await?;
    let a = artifact_of(&api, &repo, &reference).await?;
    let artifact_id = number_for(&a.digest.to_string());
    let items: Vec<Value> = super::slice(&a.tags, page)
        .iter()
        .map(|t| tag_json(found.id, &repo, artifact_id, t))
        .collect();
    paged(&parts, page, a.tags.len() as i64, &items)
}

#[derive(Deserialize)]
struct NewTag {
    name: String,
}

/// `POST …/artifacts/{reference}/tags`: 409 if the tag exists in the repository.
pub async fn add_tag(
    State(api): State<Api>,
    caller: Caller,
    parts: Parts,
    Path((p, r, reference)): Path<(String, String, String)>,
    raw: Bytes,
) -> ApiResult {
    let st = project_for(&api, &caller, &p, Action::Push).await?;
    let repo = repo_name(&st.project.name, &r)?;
    let req: NewTag = body(&raw)?;
    let tag: Tag = req
        .name
        .parse()
        .map_err(|e| ApiError::bad_request(format!("invalid tag {:?}: {e}", req.name)))?;
    let digest = resolve(&api, &repo, &reference).await?;
    match api.core.manifest(&repo, &Reference::Tag(tag.clone())).await {
        Ok(_) => {
            return Err(ApiError::conflict(format!(
                "tag {tag} already exists in {repo}"
            )))
        }
        Err(crate::registry::RegistryError::ManifestUnknown(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let push = api.core.tag_manifest(&repo, &tag, &digest);
    with_request(caller.request_context(&api, &parts), push).await?;
    created(&parts, tag.as_str(), None)
}

/// `DELETE …/artifacts/{reference}/tags/{tag_name}`: the tag must be on this artifact.
pub async fn delete_tag(
    State(api): State<Api>,
    caller: Caller,
    parts: Parts,
    Path((p, r, reference, tag)): Path<(String, String, String, String)>,
) -> ApiResult {
    let st = project_for(&api, &caller, &p, Action::Delete).await?;
    let repo = repo_name(&st.project.name, &r)?;
    let a = artifact_of(&api, &repo, &reference).await?;
    if !a.tags.iter().any(|t| t.name == tag) {
        return Err(ApiError::not_found(format!(
            "tag {tag} is not on artifact {reference} of {repo}"
        )));
    }
    let tag: Tag = tag
        .parse()
        .map_err(|e| ApiError::bad_request(format!("invalid tag: {e}")))?;
    let reference = Reference::Tag(tag);
    let change = api.core.delete_manifest(&repo, &reference);
    with_request(caller.request_context(&api, &parts), change).await?;
    ok()
}
