//! `GET`/`HEAD`/`DELETE /v2/<name>/blobs/<digest>`.

use std::ops::Range;

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};

use super::{header_str, respond, ApiResult, AppState, CONTENT_DIGEST};
use crate::oci::digest::Digest;
use crate::oci::name::RepoName;
use crate::registry::RegistryError;

/// What a `Range` request header asks of a blob of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
enum RangeRequest {
    /// No usable range: serve the whole blob (absent, another unit, or several ranges).
    Whole,
    Part(Range<u64>),
    Unsatisfiable,
}

fn parse_range(value: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Unsatisfiable;
    };
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first.trim().is_empty(), num(first), num(last)) {
        // bytes=-N: the last N bytes.
        (true, _, Some(n)) if n > 0 && size > 0 => RangeRequest::Part(size.saturating_sub(n)..size),
        (false, Some(a), None) if last.trim().is_empty() && a < size => RangeRequest::Part(a..size),
        (false, Some(a), Some(b)) if a <= b && a < size => {
            RangeRequest::Part(a..b.saturating_add(1).min(size))
        }
        _ => RangeRequest::Unsatisfiable,
    }
}

pub async fn get(
    reg: &AppState,
    repo: &RepoName,
    digest: &str,
    req: &Parts,
    with_body: bool,
) -> ApiResult {
    let digest: Digest = digest.parse()?;
    let size = reg.core.resolve_blob(repo, &digest).await?;
    let range = parse_range(header_str(&req.headers, header::RANGE), size);
    let (status, range) = match range {
        RangeRequest::Whole => (StatusCode::OK, 0..size),
        RangeRequest::Part(r) => (StatusCode::PARTIAL_CONTENT, r),
        RangeRequest::Unsatisfiable => Err(RegistryError::RangeNotSatisfiable { size })?,
    };
    if with_body {
        // Pulls from an object store go to the backend, which serves the range asked for.
        if let Some(url) = reg.core.blob_url(repo, &digest, size).await? {
            return respond(
                StatusCode::TEMPORARY_REDIRECT,
                &[
                    (header::LOCATION, url.to_string()),
                    (CONTENT_DIGEST, digest.to_string()),
                ],
                Body::empty(),
            );
        }
    }
    let mut headers = vec![
        (header::CONTENT_TYPE, "application/octet-stream".to_string()),
        (
            header::CONTENT_LENGTH,
            (range.end - range.start).to_string(),
        ),
        (CONTENT_DIGEST, digest.to_string()),
        (header::ACCEPT_RANGES, "bytes".to_string()),
        (header::ETAG, format!("\"{digest}\"")),
        (header::CACHE_CONTROL, "max-age=31536000".to_string()),
    ];
    if status == StatusCode::PARTIAL_CONTENT {
        headers.push((
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{size}", range.start, range.end - 1),
        ));
    }
    let body = if with_body && range.end > range.start {
        let stream = reg.core.read_blob(repo, &digest, size, range).await?;
        Body::from_stream(stream)
    } else {
        Body::empty()
    };
    respond(status, &headers, body)
}

pub async fn delete(reg: &AppState, repo: &RepoName, digest: &str) -> ApiResult {
    let digest: Digest = digest.parse()?;
    reg.core.delete_blob(repo, &digest).await?;
    respond(
        StatusCode::ACCEPTED,
        &[(CONTENT_DIGEST, digest.to_string())],
        Body::empty(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeRequest::*;
        let cases = [
            (None, Whole),
            (Some("items=0-1"), Whole),
            (Some("bytes=0-1,4-5"), Whole),
            (Some("bytes=0-0"), Part(0..1)),
            (Some("bytes=2-"), Part(2..10)),
            (Some("bytes=5-100"), Part(5..10)),
            (Some("bytes=-3"), Part(7..10)),
            (Some("bytes=-30"), Part(0..10)),
            (Some("bytes=10-"), Unsatisfiable),
            (Some("bytes=10-12"), Unsatisfiable),
            (Some("bytes=5-2"), Unsatisfiable),
            (Some("bytes=-0"), Unsatisfiable),
            (Some("bytes=x-1"), Unsatisfiable),
            (Some("bytes=1"), Unsatisfiable),
        ];
        for (h, want) in cases {
            assert_eq!(parse_range(h, 10), want, "{h:?}");
        }
        assert_eq!(parse_range(Some("bytes=0-"), 0), Unsatisfiable);
    }
}
