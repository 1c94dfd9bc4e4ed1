//! Blob uploads: `POST /v2/<name>/blobs/uploads/` (start, monolithic, mount) and
//! `GET`/`PATCH`/`PUT`/`DELETE /v2/<name>/blobs/uploads/<id>`.

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{header, HeaderName, StatusCode};

use super::error::upload_range;
use super::{
    actor, body_stream, header_str, query, query_param, respond, ApiError, ApiResult, AppState,
    ErrorCode, CONTENT_DIGEST,
};
use std::sync::Arc;

use crate::auth::{Identity, Scope};
use crate::oci::digest::Digest;
use crate::oci::name::RepoName;

const UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");

fn session_headers(
    reg: &AppState,
    req: &Parts,
    repo: &RepoName,
    id: &str,
    size: u64,
) -> Vec<(HeaderName, String)> {
    vec![
        (
            header::LOCATION,
            reg.url(req, &format!("/v2/{repo}/blobs/uploads/{id}")),
        ),
        (UPLOAD_UUID, id.to_string()),
        (header::RANGE, upload_range(size)),
    ]
}

fn created(reg: &AppState, req: &Parts, repo: &RepoName, digest: &Digest) -> ApiResult {
    respond(
        StatusCode::CREATED,
        &[
            (
                header::LOCATION,
                reg.url(req, &format!("/v2/{repo}/blobs/{digest}")),
            ),
            (CONTENT_DIGEST, digest.to_string()),
        ],
        Body::empty(),
    )
}

fn digest_param(q: &[(String, String)]) -> Result<Option<Digest>, ApiError> {
    Ok(query_param(q, "digest").map(str::parse).transpose()?)
}

/// Adds the session's headers to an error about it (e.g. the 416 of an out-of-order chunk), so
/// the client knows where to resume.
fn with_location(reg: &AppState, req: &Parts, e: ApiError, repo: &RepoName, id: &str) -> ApiError {
    e.with_header(
        header::LOCATION,
        &reg.url(req, &format!("/v2/{repo}/blobs/uploads/{id}")),
    )
    .with_header(UPLOAD_UUID, id)
}

pub async fn start(reg: &AppState, repo: &RepoName, req: &Parts, body: Body) -> ApiResult {
    let q = query(req);
    if let Some(mount) = query_param(&q, "mount") {
        let digest: Digest = mount.parse()?;
        let from = query_param(&q, "from")
            .map(str::parse::<RepoName>)
            .transpose()?;
        // Without `from`, only repositories the caller may pull from are candidates.
        let identity = req.extensions.get::<Arc<Identity>>().cloned();
        let readable = move |r: &RepoName| match &identity {
            Some(id) => id.allows(&Scope::repository(r.as_str(), &["pull"])),
            None => true,
        };
        if reg
            .core
            .mount_blob(repo, &digest, from.as_ref(), &readable)
            .await?
        {
            return created(reg, req, repo, &digest);
        }
        // Not mountable: fall back to a new upload session, as the spec asks.
    } else if let Some(digest) = digest_param(&q)? {
        // Over a quota, refused before a byte is read.
        let len = content_length(req).unwrap_or(0);
        reg.core.admit(repo, Some(&digest), len).await?;
        reg.core.push_blob(repo, &digest, body_stream(body)).await?;
        return created(reg, req, repo, &digest);
    }
    let id = reg.core.start_upload(repo, actor(req)).await?;
    respond(
        StatusCode::ACCEPTED,
        &session_headers(reg, req, repo, &id, 0),
        Body::empty(),
    )
}

pub async fn status(reg: &AppState, repo: &RepoName, id: &str, req: &Parts) -> ApiResult {
    let up = reg.core.upload(repo, id, actor(req)).await?;
    respond(
        StatusCode::NO_CONTENT,
        &session_headers(reg, req, repo, id, up.size),
        Body::empty(),
    )
}

/// The request's `Content-Length`, when it has a valid one.
fn content_length(req: &Parts) -> Option<u64> {
    header_str(&req.headers, header::CONTENT_LENGTH).and_then(|l| l.trim().parse().ok())
}

/// Parses `Content-Range: <start>-<end>` (the spec's form; a `bytes ` prefix is tolerated).
fn content_range(value: &str) -> Option<(u64, u64)> {
    let v = value.trim();
    let v = v
        .strip_prefix("bytes ")
        .or_else(|| v.strip_prefix("bytes="))
        .unwrap_or(v);
    let v = v.split('/').next()?;
    let (a, b) = v.split_once('-')?;
    let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a <= b).then_some((a, b))
}

/// The start offset a chunk declares with `Content-Range`, checked against its `Content-Length`.
fn chunk_start(req: &Parts) -> Result<Option<u64>, ApiError> {
    Ok(match header_str(&req.headers, header::CONTENT_RANGE) {
        None => None,
        Some(v) => {
            let (a, b) = content_range(v).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::BlobUploadInvalid,
                    format!("Content-Range {v:?} is not of the form <start>-<end>"),
                )
            })?;
            if let Some(len) = content_length(req) {
                if len != b - a + 1 {
                    return Err(ApiError::new(
                        ErrorCode::BlobUploadInvalid,
                        format!(
                            "Content-Range {v:?} covers {} bytes but Content-Length is {len}",
                            b - a + 1
                        ),
                    ));
                }
            }
            Some(a)
        }
    })
}

pub async fn patch(
    reg: &AppState,
    repo: &RepoName,
    id: &str,
    req: &Parts,
    body: Body,
) -> ApiResult {
    let start = chunk_start(req)?;
    if let Some(len) = content_length(req) {
        let so_far = start.unwrap_or(0);
        reg.core
            .admit(repo, None, so_far.saturating_add(len))
            .await
            .map_err(|e| with_location(reg, req, e.into(), repo, id))?;
    }
    let up = reg
        .core
        .write_chunk(repo, id, actor(req), start, body_stream(body))
        .await
        .map_err(|e| with_location(reg, req, e.into(), repo, id))?;
    respond(
        StatusCode::ACCEPTED,
        &session_headers(reg, req, repo, id, up.size),
        Body::empty(),
    )
}

pub async fn put(reg: &AppState, repo: &RepoName, id: &str, req: &Parts, body: Body) -> ApiResult {
    let q = query(req);
    let digest = digest_param(&q)?.ok_or_else(|| {
        ApiError::new(
            ErrorCode::DigestInvalid,
            "the digest query parameter is required to finish an upload",
        )
    })?;
    let has_body = match header_str(&req.headers, header::CONTENT_LENGTH) {
        Some(len) => len.trim() != "0",
        None => req.headers.contains_key(header::TRANSFER_ENCODING),
    };
    let last = match has_body {
        true => Some((chunk_start(req)?, body_stream(body))),
        false => None,
    };
    reg.core
        .finish_upload(repo, id, actor(req), &digest, last)
        .await
        .map_err(|e| with_location(reg, req, e.into(), repo, id))?;
    created(reg, req, repo, &digest)
}

pub async fn cancel(reg: &AppState, repo: &RepoName, id: &str, req: &Parts) -> ApiResult {
    reg.core.cancel_upload(repo, id, actor(req)).await?;
    respond(StatusCode::NO_CONTENT, &[], Body::empty())
}

#[cfg(test)]
mod tests {
    #[test]
    fn content_ranges() {
        use super::content_range;
        assert_eq!(content_range("0-9"), Some((0, 9)));
        assert_eq!(content_range("bytes 10-19/100"), Some((10, 19)));
        assert_eq!(content_range("9-0"), None);
        assert_eq!(content_range("x"), None);
        assert_eq!(content_range("1-"), None);
    }
}
