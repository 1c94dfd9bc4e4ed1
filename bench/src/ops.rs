//! OCI distribution operations on one connection.

use anyhow::{anyhow, Context as _, Result};
use http::header::{HeaderName, ACCEPT, CONTENT_TYPE};
use http::{Method, StatusCode};

use crate::client::{header, read_all, read_verify, Conn, ReqBody};
use crate::data::{Blob, Manifest, MANIFEST_ACCEPT, OCI_MANIFEST};

const OCTET: &str = "application/octet-stream";
const CONTENT_RANGE: HeaderName = HeaderName::from_static("content-range");
/// What a blob GET may answer: the bytes, or a redirect to where they are.
const BLOB_GET: [StatusCode; 6] = REDIRECTS_AND_OK;
/// What a blob HEAD may answer (Distribution on an object store redirects HEADs too).
const BLOB_HEAD: [StatusCode; 7] = [
    StatusCode::OK,
    StatusCode::NOT_FOUND,
    StatusCode::MOVED_PERMANENTLY,
    StatusCode::FOUND,
    StatusCode::SEE_OTHER,
    StatusCode::TEMPORARY_REDIRECT,
    StatusCode::PERMANENT_REDIRECT,
];
const REDIRECTS_AND_OK: [StatusCode; 6] = [
    StatusCode::OK,
    StatusCode::MOVED_PERMANENTLY,
    StatusCode::FOUND,
    StatusCode::SEE_OTHER,
    StatusCode::TEMPORARY_REDIRECT,
    StatusCode::PERMANENT_REDIRECT,
];

/// How the registry takes a monolithic blob upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushMethod {
    /// `POST /blobs/uploads/?digest=` with the body: one request (the spec's single-POST upload).
    SinglePost,
    /// `POST /blobs/uploads/` then `PUT <location>&digest=` with the body.
    PostPut,
}

impl PushMethod {
    pub fn name(self) -> &'static str {
        match self {
            PushMethod::SinglePost => "single POST ?digest=",
            PushMethod::PostPut => "POST + PUT ?digest=",
        }
    }
}

/// Path on the target for `/v2/...`.
pub fn p(conn: &Conn, rest: &str) -> String {
    format!("{}/v2/{rest}", conn.target().prefix)
}

fn with_digest(path: &str, digest: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}digest={digest}")
}

fn body_of(b: &Blob) -> ReqBody {
    match &b.bytes {
        Some(bytes) => ReqBody::bytes(bytes.clone()),
        None => ReqBody::Prng {
            seed: b.seed,
            pos: 0,
            end: b.len,
        },
    }
}

fn location(
    conn: &Conn,
    resp: &http::Response<hyper::body::Incoming>,
    what: &str,
) -> Result<String> {
    let loc =
        header(resp, "location").ok_or_else(|| anyhow!("{what}: response has no Location"))?;
    Ok(conn.target().path_of(loc))
}

/// Starts an upload session; returns the session's path.
pub async fn start_upload(conn: &mut Conn, repo: &str) -> Result<String> {
    let path = p(conn, &format!("{repo}/blobs/uploads/"));
    let resp = conn
        .expect(
            Method::POST,
            &path,
            &[],
            ReqBody::Empty,
            &[StatusCode::ACCEPTED],
        )
        .await?;
    let loc = location(conn, &resp, "POST upload")?;
    read_all(resp).await?;
    Ok(loc)
}

/// Finishes an upload session with `PUT ?digest=` and `body`.
pub async fn finish_upload(
    conn: &mut Conn,
    session: &str,
    digest: &str,
    body: ReqBody,
) -> Result<()> {
    let path = with_digest(session, digest);
    let headers: &[(HeaderName, &str)] = if body.len() > 0 {
        &[(CONTENT_TYPE, OCTET)]
    } else {
        &[]
    };
    let resp = conn
        .expect(Method::PUT, &path, headers, body, &[StatusCode::CREATED])
        .await?;
    check_digest_header(&resp, digest, "blob PUT")?;
    read_all(resp).await?;
    Ok(())
}

fn check_digest_header(
    resp: &http::Response<hyper::body::Incoming>,
    digest: &str,
    what: &str,
) -> Result<()> {
    if let Some(d) = header(resp, "docker-content-digest") {
        if d != digest {
            return Err(crate::client::DigestMismatch(format!(
                "{what}: Docker-Content-Digest {d}, expected {digest}"
            ))
            .into());
        }
    }
    Ok(())
}

/// Pushes a whole blob in one go (the monolithic way the registry takes).
pub async fn push_blob(conn: &mut Conn, method: PushMethod, repo: &str, blob: &Blob) -> Result<()> {
    match method {
        PushMethod::SinglePost => {
            let path = with_digest(&p(conn, &format!("{repo}/blobs/uploads/")), &blob.digest);
            let resp = conn
                .expect(
                    Method::POST,
                    &path,
                    &[(CONTENT_TYPE, OCTET)],
                    body_of(blob),
                    &[StatusCode::CREATED],
                )
                .await?;
            check_digest_header(&resp, &blob.digest, "blob POST")?;
            read_all(resp).await?;
            Ok(())
        }
        PushMethod::PostPut => {
            let session = start_upload(conn, repo).await?;
            finish_upload(conn, &session, &blob.digest, body_of(blob)).await
        }
    }
}

/// Pushes a PRNG blob as `chunk`-byte PATCHes with `Content-Range`, then `PUT ?digest=`.
pub async fn push_blob_chunked(conn: &mut Conn, repo: &str, blob: &Blob, chunk: u64) -> Result<()> {
    let mut session = start_upload(conn, repo).await?;
    let mut pos = 0u64;
    while pos < blob.len {
        let end = (pos + chunk).min(blob.len);
        let range = format!("{}-{}", pos, end - 1);
        let body = match &blob.bytes {
            Some(b) => ReqBody::bytes(b.slice(pos as usize..end as usize)),
            None => ReqBody::Prng {
                seed: blob.seed,
                pos,
                end,
            },
        };
        let resp = conn
            .expect(
                Method::PATCH,
                &session,
                &[(CONTENT_TYPE, OCTET), (CONTENT_RANGE, &range)],
                body,
                &[StatusCode::ACCEPTED],
            )
            .await?;
        session = location(conn, &resp, "PATCH")?;
        read_all(resp).await?;
        pos = end;
    }
    finish_upload(conn, &session, &blob.digest, ReqBody::Empty).await
}

/// `HEAD /blobs/<digest>`: does the repository have it? A redirect is followed with a HEAD of
/// its target (a URL presigned for HEAD).
pub async fn blob_exists(conn: &mut Conn, repo: &str, digest: &str) -> Result<bool> {
    let path = p(conn, &format!("{repo}/blobs/{digest}"));
    let mut resp = conn
        .expect(Method::HEAD, &path, &[], ReqBody::Empty, &BLOB_HEAD)
        .await?;
    if resp.status().is_redirection() {
        let loc = header(&resp, "location")
            .ok_or_else(|| anyhow!("HEAD {path}: {} without Location", resp.status()))?
            .to_string();
        read_all(resp).await?;
        resp = conn
            .follow(Method::HEAD, &loc, &[StatusCode::OK, StatusCode::NOT_FOUND])
            .await
            .with_context(|| format!("HEAD {path} redirected"))?;
    }
    let ok = resp.status() == StatusCode::OK;
    read_all(resp).await?;
    Ok(ok)
}

/// Makes sure `repo` has `blob`: HEAD, then a cross-repo mount from `from` (if given), then an
/// upload. Returns true if anything had to be done.
pub async fn ensure_blob(
    conn: &mut Conn,
    method: PushMethod,
    repo: &str,
    blob: &Blob,
    from: Option<&str>,
) -> Result<bool> {
    if blob_exists(conn, repo, &blob.digest).await? {
        return Ok(false);
    }
    if let Some(from) = from {
        let path = p(
            conn,
            &format!("{repo}/blobs/uploads/?mount={}&from={from}", blob.digest),
        );
        let resp = conn
            .expect(
                Method::POST,
                &path,
                &[],
                ReqBody::Empty,
                &[StatusCode::CREATED, StatusCode::ACCEPTED],
            )
            .await?;
        if resp.status() == StatusCode::CREATED {
            read_all(resp).await?;
            return Ok(true);
        }
        let session = location(conn, &resp, "mount fallback")?;
        read_all(resp).await?;
        finish_upload(conn, &session, &blob.digest, body_of(blob)).await?;
        return Ok(true);
    }
    push_blob(conn, method, repo, blob).await?;
    Ok(true)
}

/// `PUT /manifests/<reference>`.
pub async fn put_manifest(
    conn: &mut Conn,
    repo: &str,
    reference: &str,
    m: &Manifest,
) -> Result<()> {
    let path = p(conn, &format!("{repo}/manifests/{reference}"));
    let resp = conn
        .expect(
            Method::PUT,
            &path,
            &[(CONTENT_TYPE, OCI_MANIFEST)],
            ReqBody::bytes(m.bytes.clone()),
            &[StatusCode::CREATED],
        )
        .await?;
    check_digest_header(&resp, &m.digest, "manifest PUT")?;
    read_all(resp).await?;
    Ok(())
}

/// `GET /manifests/<reference>`, verified against `m`. Returns the bytes moved.
pub async fn get_manifest(
    conn: &mut Conn,
    repo: &str,
    reference: &str,
    digest: &str,
    len: u64,
) -> Result<u64> {
    let path = p(conn, &format!("{repo}/manifests/{reference}"));
    let resp = conn
        .expect(
            Method::GET,
            &path,
            &[(ACCEPT, MANIFEST_ACCEPT)],
            ReqBody::Empty,
            &[StatusCode::OK],
        )
        .await?;
    check_digest_header(&resp, digest, "manifest GET")?;
    read_verify(resp, digest, len, &format!("manifest {repo}:{reference}")).await
}

/// `GET /manifests/<reference>` returning the body (verified if the server names a digest).
pub async fn fetch_manifest(conn: &mut Conn, repo: &str, reference: &str) -> Result<bytes::Bytes> {
    let path = p(conn, &format!("{repo}/manifests/{reference}"));
    let resp = conn
        .expect(
            Method::GET,
            &path,
            &[(ACCEPT, MANIFEST_ACCEPT)],
            ReqBody::Empty,
            &[StatusCode::OK],
        )
        .await?;
    let d = header(&resp, "docker-content-digest").map(str::to_string);
    let body = read_all(resp).await?;
    if let Some(d) = d {
        crate::client::verify_bytes(&body, &d, &format!("manifest {repo}:{reference}"))?;
    }
    Ok(body)
}

/// `HEAD /manifests/<reference>`: checks the size (and digest header, when the server sends one).
pub async fn head_manifest(
    conn: &mut Conn,
    repo: &str,
    reference: &str,
    digest: &str,
    len: u64,
) -> Result<u64> {
    let path = p(conn, &format!("{repo}/manifests/{reference}"));
    let resp = conn
        .expect(
            Method::HEAD,
            &path,
            &[(ACCEPT, MANIFEST_ACCEPT)],
            ReqBody::Empty,
            &[StatusCode::OK],
        )
        .await?;
    check_digest_header(&resp, digest, "manifest HEAD")?;
    let cl = header(&resp, "content-length").and_then(|v| v.parse::<u64>().ok());
    if cl != Some(len) {
        return Err(anyhow!(
            "HEAD {path}: Content-Length {cl:?}, expected {len}"
        ));
    }
    read_all(resp).await?;
    Ok(0)
}

/// `GET /blobs/<digest>`, hashed and verified, following one redirect (to another host on the
/// worker's side connection). Returns the bytes moved.
pub async fn get_blob(conn: &mut Conn, repo: &str, digest: &str, len: u64) -> Result<u64> {
    let path = p(conn, &format!("{repo}/blobs/{digest}"));
    let mut resp = conn
        .expect(Method::GET, &path, &[], ReqBody::Empty, &BLOB_GET)
        .await?;
    if resp.status() != StatusCode::OK {
        // A registry on an object store sends the client to the store (a presigned URL): the
        // bytes come from there, verified all the same.
        let loc = header(&resp, "location")
            .ok_or_else(|| anyhow!("GET {path}: {} without Location", resp.status()))?
            .to_string();
        read_all(resp).await?;
        resp = conn
            .follow(Method::GET, &loc, &[StatusCode::OK])
            .await
            .with_context(|| format!("GET {path} redirected"))?;
    }
    read_verify(resp, digest, len, &format!("blob {repo}@{digest}"))
        .await
        .with_context(|| format!("GET {path}"))
}

/// Follows `Link: <...>; rel="next"` from `first`; returns (pages, items) where items are
/// the strings under `key` in each page's JSON.
pub async fn walk(conn: &mut Conn, first: &str, key: &str) -> Result<(u64, Vec<String>)> {
    let mut next = Some(first.to_string());
    let mut pages = 0u64;
    let mut items = Vec::new();
    while let Some(path) = next.take() {
        let resp = conn
            .expect(Method::GET, &path, &[], ReqBody::Empty, &[StatusCode::OK])
            .await?;
        next = crate::client::next_link(&resp).map(|l| conn.target().path_of(&l));
        let body = read_all(resp).await?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .with_context(|| format!("GET {path}: body is not JSON"))?;
        pages += 1;
        let list = v
            .get(key)
            .and_then(|l| l.as_array())
            .cloned()
            .unwrap_or_default();
        if list.is_empty() {
            break;
        }
        items.extend(
            list.into_iter()
                .filter_map(|s| s.as_str().map(str::to_string)),
        );
        if pages > 1_000_000 {
            return Err(anyhow!("pagination from {first} does not end"));
        }
    }
    Ok((pages, items))
}
