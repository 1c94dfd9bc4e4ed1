//! Listings: `GET /v2/<name>/tags/list`, `GET /v2/_catalog` and
//! `GET /v2/<name>/referrers/<digest>`.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{query, query_param, respond, ApiError, ApiResult, AppState};
use crate::oci::digest::Digest;
use crate::oci::manifest::OCI_INDEX;
use crate::oci::name::RepoName;
use crate::oci::Page;

const FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");

/// Reads `n` and `last`; asks the store for one more than `n` to learn whether a next page exists.
fn page(req: &Parts) -> Result<(Page, Option<u32>), ApiError> {
    let q = query(req);
    let n = match query_param(&q, "n") {
        None | Some("") => None,
        Some(v) => Some(v.parse::<u32>().map_err(|_| {
            ApiError::unsupported(format!("n={v:?} is not a non-negative integer"))
                .with_status(StatusCode::BAD_REQUEST)
        })?),
    };
    let page = Page {
        after: query_param(&q, "last")
            .filter(|l| !l.is_empty())
            .map(String::from),
        limit: n.map(|n| n.saturating_add(1)),
    };
    Ok((page, n))
}

/// Trims a listing to `n` entries and returns the `Link` header for the next page, if any.
fn paginate(items: &mut Vec<String>, n: Option<u32>, path: &str) -> Vec<(HeaderName, String)> {
    match n {
        Some(n) if items.len() > n as usize => {
            items.truncate(n as usize);
            let last = items.last().cloned().unwrap_or_default();
            let last: String = url::form_urlencoded::byte_serialize(last.as_bytes()).collect();
            vec![(
                header::LINK,
                format!("<{path}?n={n}&last={last}>; rel=\"next\""),
            )]
        }
        _ => Vec::new(),
    }
}

fn json(
    status: StatusCode,
    mut headers: Vec<(HeaderName, String)>,
    content_type: &str,
    body: serde_json::Value,
) -> ApiResult {
    headers.push((header::CONTENT_TYPE, content_type.to_string()));
    respond(status, &headers, Body::from(body.to_string()))
}

pub async fn tags(reg: &AppState, repo: &RepoName, req: &Parts) -> ApiResult {
    let (page, n) = page(req)?;
    let mut tags = if n == Some(0) {
        reg.core
            .tags(
                repo,
                &Page {
                    limit: Some(0),
                    ..page
                },
            )
            .await?
    } else {
        reg.core.tags(repo, &page).await?
    };
    let link = paginate(
        &mut tags,
        n,
        &reg.url(req, &format!("/v2/{repo}/tags/list")),
    );
    json(
        StatusCode::OK,
        link,
        "application/json",
        serde_json::json!({ "name": repo.as_str(), "tags": tags }),
    )
}

pub async fn catalog(State(reg): State<AppState>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    let result = async {
        let (page, n) = page(&parts)?;
        let mut repos = if n == Some(0) {
            Vec::new()
        } else {
            reg.core.catalog(&page).await?
        };
        let link = paginate(&mut repos, n, &reg.url(&parts, "/v2/_catalog"));
        json(
            StatusCode::OK,
            link,
            "application/json",
            serde_json::json!({ "repositories": repos }),
        )
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

pub async fn referrers(reg: &AppState, repo: &RepoName, digest: &str, req: &Parts) -> ApiResult {
    let subject: Digest = digest.parse()?;
    let q = query(req);
    let artifact_type = query_param(&q, "artifactType").filter(|t| !t.is_empty());
    let records = reg.core.referrers(repo, &subject, artifact_type).await?;
    let manifests: Vec<serde_json::Value> = records
        .into_iter()
        .map(|m| {
            let mut d = serde_json::json!({
                "mediaType": m.media_type,
                "digest": m.digest.to_string(),
                "size": m.size,
            });
            if let Some(t) = m.artifact_type {
                d["artifactType"] = t.into();
            }
            if let Some(a) = m.annotations {
                d["annotations"] = a;
            }
            d
        })
        .collect();
    let mut headers = Vec::new();
    if artifact_type.is_some() {
        headers.push((FILTERS_APPLIED, "artifactType".to_string()));
    }
    json(
        StatusCode::OK,
        headers,
        OCI_INDEX,
        serde_json::json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests }),
    )
}
