//! `GET`/`HEAD`/`PUT`/`DELETE /v2/<name>/manifests/<reference>`.

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{header, HeaderName, StatusCode};

use super::{header_str, respond, ApiError, ApiResult, AppState, CONTENT_DIGEST};
use crate::registry::manifest::{self, MAX_MANIFEST_SIZE};
use crate::registry::name::{Reference, RepoName};
use crate::registry::RegistryError;

const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");

pub async fn get(
    reg: &AppState,
    repo: &RepoName,
    reference: &str,
    req: &Parts,
    with_body: bool,
) -> ApiResult {
    let reference: Reference = reference.parse()?;
    let record = reg.manifest(repo, &reference).await?;
    if let Reference::Tag(_) = reference {
        let accept: Vec<&str> = req
            .headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if !manifest::accepts(&accept, &record.media_type) {
            return Err(RegistryError::ManifestUnknown(format!(
                "{reference} (it is a {}, which the Accept header does not list)",
                record.media_type
            ))
            .into());
        }
    }
    let headers = [
        (header::CONTENT_TYPE, record.media_type.clone()),
        (header::CONTENT_LENGTH, record.size.to_string()),
        (CONTENT_DIGEST, record.digest.to_string()),
        (header::ETAG, format!("\"{}\"", record.digest)),
    ];
    let body = if with_body {
        Body::from(reg.manifest_bytes(&record).await?)
    } else {
        Body::empty()
    };
    respond(StatusCode::OK, &headers, body)
}

pub async fn put(
    reg: &AppState,
    repo: &RepoName,
    reference: &str,
    req: &Parts,
    body: Body,
) -> ApiResult {
    let reference: Reference = reference.parse()?;
    let too_large = |len: usize| ApiError::from(RegistryError::ManifestTooLarge(len));
    if let Some(len) =
        header_str(&req.headers, header::CONTENT_LENGTH).and_then(|l| l.parse::<usize>().ok())
    {
        if len > MAX_MANIFEST_SIZE {
            return Err(too_large(len));
        }
    }
    let content_type = header_str(&req.headers, header::CONTENT_TYPE).map(str::to_string);
    let body = axum::body::to_bytes(body, MAX_MANIFEST_SIZE)
        .await
        .map_err(|_| too_large(MAX_MANIFEST_SIZE + 1))?;
    let pushed = reg
        .put_manifest(repo, &reference, content_type.as_deref(), body)
        .await?;
    let mut headers = vec![
        (
            header::LOCATION,
            format!("/v2/{repo}/manifests/{}", pushed.digest),
        ),
        (CONTENT_DIGEST, pushed.digest.to_string()),
    ];
    if let Some(subject) = pushed.subject {
        headers.push((OCI_SUBJECT, subject.to_string()));
    }
    respond(StatusCode::CREATED, &headers, Body::empty())
}

pub async fn delete(reg: &AppState, repo: &RepoName, reference: &str) -> ApiResult {
    let reference: Reference = reference.parse()?;
    reg.delete_manifest(repo, &reference).await?;
    respond(StatusCode::ACCEPTED, &[], Body::empty())
}
