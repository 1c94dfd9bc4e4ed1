//! `GET`/`HEAD`/`PUT`/`DELETE /v2/<name>/manifests/<reference>`.

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{header, HeaderName, StatusCode};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::{header_str, query, respond, ApiError, ApiResult, AppState, ErrorCode, CONTENT_DIGEST};
use crate::oci::manifest::{self, MAX_MANIFEST_SIZE};
use crate::oci::name::{Reference, ReferenceError, RepoName, Tag};
use crate::registry::RegistryError;

const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");
const OCI_TAG: HeaderName = HeaderName::from_static("oci-tag");

pub async fn get(
    reg: &AppState,
    repo: &RepoName,
    reference: &str,
    req: &Parts,
    with_body: bool,
) -> ApiResult {
    let reference: Reference = match reference.parse() {
        Ok(r) => r,
        // Nothing can be stored under a reference that is not a valid tag: it is unknown.
        Err(ReferenceError::Tag(e)) => {
            return Err(RegistryError::ManifestUnknown(format!("{reference} ({e})")).into())
        }
        Err(e) => return Err(e.into()),
    };
    let record = reg.core.resolve_manifest(repo, &reference).await?;
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
        Body::from(reg.core.pull_manifest(repo, &reference, &record).await?)
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
    // `?tag=` (when pushing by digest): more tags to point at the manifest.
    let tags = query(req)
        .into_iter()
        .filter(|(k, _)| k == "tag")
        .map(|(_, v)| v.parse::<Tag>())
        .collect::<Result<Vec<_>, _>>()?;
    let too_large = |len: usize| ApiError::from(RegistryError::ManifestTooLarge(len));
    let declared =
        header_str(&req.headers, header::CONTENT_LENGTH).and_then(|l| l.parse::<usize>().ok());
    if declared.is_some_and(|len| len > DRAIN_LIMIT) {
        return Err(too_large(declared.unwrap_or_default()));
    }
    let content_type = header_str(&req.headers, header::CONTENT_TYPE).map(str::to_string);
    let body = read_limited(body).await?.map_err(too_large)?;
    let pushed = reg
        .core
        .put_manifest(repo, &reference, &tags, content_type.as_deref(), body)
        .await?;
    let mut headers = vec![
        (
            header::LOCATION,
            reg.url(req, &format!("/v2/{repo}/manifests/{}", pushed.digest)),
        ),
        (CONTENT_DIGEST, pushed.digest.to_string()),
    ];
    if let Some(subject) = pushed.subject {
        headers.push((OCI_SUBJECT, subject.to_string()));
    }
    if !tags.is_empty() {
        let accepted: Vec<&str> = pushed.tags.iter().map(Tag::as_str).collect();
        headers.push((OCI_TAG, accepted.join(", ")));
    }
    respond(StatusCode::CREATED, &headers, Body::empty())
}

/// How much of an oversized manifest body is read (and discarded) so that a client still sending
/// it receives the 413 instead of a reset connection.
const DRAIN_LIMIT: usize = 4 * MAX_MANIFEST_SIZE;

/// Reads a manifest body: `Ok(bytes)`, or `Err(length read)` when it exceeds the size limit.
async fn read_limited(body: Body) -> Result<Result<Bytes, usize>, ApiError> {
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                ErrorCode::ManifestInvalid,
                format!("reading the manifest body failed: {e}"),
            )
        })?;
        total += chunk.len();
        if total <= MAX_MANIFEST_SIZE {
            buf.extend_from_slice(&chunk);
        } else if total > DRAIN_LIMIT {
            break;
        }
    }
    Ok(if total > MAX_MANIFEST_SIZE {
        Err(total)
    } else {
        Ok(buf.freeze())
    })
}

pub async fn delete(reg: &AppState, repo: &RepoName, reference: &str) -> ApiResult {
    let reference: Reference = reference.parse()?;
    reg.core.delete_manifest(repo, &reference).await?;
    respond(StatusCode::ACCEPTED, &[], Body::empty())
}
