//! What S3 offers that OpenDAL does not: finding and aborting the multipart uploads that a
//! process killed in the middle of a write left behind.
//!
//! An OpenDAL writer aborts its multipart upload when the write fails or is cancelled, but a
//! process that dies mid-write leaves the upload open: invisible at any path, yet holding its
//! parts' storage until it is aborted. Upload purging lists the bucket's open multipart uploads
//! below the registry's root (`ListMultipartUploads`) and aborts those older than its cutoff
//! (`AbortMultipartUpload`), one call each, signed with AWS signature version 4 by the same
//! signing crate OpenDAL uses. Only static keys are supported here; with the AWS default
//! credential chain the bucket's lifecycle rule (`AbortIncompleteMultipartUpload`) does this.

use std::time::{Duration, SystemTime};

use reqsign_aws_v4::{RequestSigner, StaticCredentialProvider};
use reqsign_core::{Context, Signer};
use serde::Deserialize;

use super::driver::{http_status_kind, DriverError, ErrorKind, Result};

/// The multipart uploads of one bucket below one root.
#[derive(Clone)]
pub struct MultipartUploads {
    /// `https://endpoint/bucket` (path style) or `https://bucket.endpoint` (virtual host).
    bucket_url: String,
    /// The key prefix of the registry's objects (`rootdirectory`), without a leading `/`.
    prefix: String,
    /// The bucket's name, for `x-amz-copy-source`.
    bucket: String,
    /// Headers every new object gets (storage class, encryption), as OpenDAL's writes send them.
    object_headers: Vec<(String, String)>,
    signer: Signer<reqsign_aws_v4::Credential>,
    http: reqwest::Client,
}

impl std::fmt::Debug for MultipartUploads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultipartUploads")
            .field("bucket_url", &self.bucket_url)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// An open multipart upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenUpload {
    /// The object key, relative to the root.
    pub path: String,
    pub upload_id: String,
    pub initiated: Option<SystemTime>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct ListResult {
    upload: Vec<UploadXml>,
    is_truncated: bool,
    next_key_marker: Option<String>,
    next_upload_id_marker: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct UploadXml {
    key: String,
    upload_id: String,
    initiated: Option<String>,
}

/// Where a bucket is and how it is addressed.
pub struct Bucket<'a> {
    pub endpoint: &'a str,
    pub name: &'a str,
    /// `endpoint/bucket` rather than `bucket.endpoint`.
    pub path_style: bool,
    pub region: &'a str,
    /// The registry's root in it (`rootdirectory`).
    pub root: &'a str,
    /// Headers every new object gets (`x-amz-storage-class`, `x-amz-server-side-encryption`).
    pub object_headers: Vec<(String, String)>,
}

impl MultipartUploads {
    pub fn new(
        bucket: &Bucket<'_>,
        access_key: &str,
        secret_key: &str,
        insecure: bool,
    ) -> Result<MultipartUploads> {
        let endpoint = bucket.endpoint.trim_end_matches('/');
        let name = bucket.name;
        let bucket_url = if bucket.path_style {
            format!("{endpoint}/{name}")
        } else {
            match endpoint.split_once("://") {
                Some((scheme, host)) => format!("{scheme}://{name}.{host}"),
                None => format!("https://{name}.{endpoint}"),
            }
        };
        let (region, root) = (bucket.region, bucket.root);
        let signer = Signer::new(
            Context::new(),
            StaticCredentialProvider::new(access_key, secret_key),
            RequestSigner::new("s3", region),
        );
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(insecure)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| DriverError::caused(ErrorKind::Other, "building the HTTP client", e))?;
        Ok(MultipartUploads {
            bucket_url,
            bucket: name.to_string(),
            object_headers: bucket.object_headers.clone(),
            prefix: root.trim_start_matches('/').to_string(),
            signer,
            http,
        })
    }

    /// Sends a signed request without a body; returns the body of a successful response.
    async fn send(&self, method: http::Method, url: &str) -> Result<bytes::Bytes> {
        self.send_with(method, url, &[], bytes::Bytes::new()).await
    }

    /// Sends a signed request with `headers` and `body`; returns the body of a successful
    /// response.
    async fn send_with(
        &self,
        method: http::Method,
        url: &str,
        headers: &[(String, String)],
        body: bytes::Bytes,
    ) -> Result<bytes::Bytes> {
        let resp = self.signed(method, url, headers, body).await?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| {
            DriverError::caused(
                ErrorKind::Unavailable,
                format_args!("reading from {url}"),
                e,
            )
        })?;
        if status.is_success() {
            return Ok(body);
        }
        Err(DriverError::new(
            http_status_kind(status.as_u16()),
            format!(
                "{url} answered {status}: {}",
                String::from_utf8_lossy(&body).trim()
            ),
        ))
    }

    /// Sends a request signed with AWS signature version 4.
    async fn signed(
        &self,
        method: http::Method,
        url: &str,
        headers: &[(String, String)],
        body: bytes::Bytes,
    ) -> Result<reqwest::Response> {
        use sha2::Digest as _;
        let mut req = http::Request::builder()
            .method(method.clone())
            .uri(url)
            .header(
                "x-amz-content-sha256",
                hex::encode(sha2::Sha256::digest(&body)),
            );
        for (name, value) in headers {
            req = req.header(name.as_str(), value.as_str());
        }
        let req = req
            .body(())
            .map_err(|e| DriverError::caused(ErrorKind::Other, format_args!("{url}"), e))?;
        let (mut parts, ()) = req.into_parts();
        self.signer
            .sign(&mut parts, None)
            .await
            .map_err(|e| DriverError::caused(ErrorKind::Auth, "signing a request to S3", e))?;
        let mut out = self.http.request(method, parts.uri.to_string()).body(body);
        for (name, value) in &parts.headers {
            out = out.header(name, value);
        }
        out.send().await.map_err(|e| {
            DriverError::caused(ErrorKind::Unavailable, format_args!("reaching {url}"), e)
        })
    }

    /// Uploads `body` as a part (`UploadPart`) and returns its ETag.
    async fn send_for_etag(&self, url: &str, body: bytes::Bytes) -> Result<String> {
        let resp = self.signed(http::Method::PUT, url, &[], body).await?;
        let status = resp.status();
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        match etag {
            Some(etag) if status.is_success() => Ok(etag),
            _ => Err(DriverError::new(
                http_status_kind(status.as_u16()),
                format!("{url} answered {status} to a part upload"),
            )),
        }
    }

    /// Every open multipart upload below `dir` (relative to the root).
    pub async fn list(&self, dir: &str) -> Result<Vec<OpenUpload>> {
        let prefix = format!("{}{dir}", self.prefix);
        let mut out = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut url = url::Url::parse(&self.bucket_url)
                .map_err(|e| DriverError::caused(ErrorKind::Other, "the bucket URL", e))?;
            {
                let mut q = url.query_pairs_mut();
                q.append_key_only("uploads").append_pair("prefix", &prefix);
                if let Some((key, id)) = &markers {
                    q.append_pair("key-marker", key)
                        .append_pair("upload-id-marker", id);
                }
            }
            let body = self.send(http::Method::GET, url.as_str()).await?;
            let page: ListResult = quick_xml::de::from_reader(body.as_ref()).map_err(|e| {
                DriverError::caused(ErrorKind::Other, "reading the list of multipart uploads", e)
            })?;
            for u in page.upload {
                let Some(path) = u.key.strip_prefix(&self.prefix) else {
                    continue;
                };
                out.push(OpenUpload {
                    path: path.to_string(),
                    upload_id: u.upload_id,
                    initiated: u
                        .initiated
                        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                        .map(SystemTime::from),
                });
            }
            match (
                page.is_truncated,
                page.next_key_marker,
                page.next_upload_id_marker,
            ) {
                (true, Some(k), Some(i)) => markers = Some((k, i)),
                _ => return Ok(out),
            }
        }
    }

    /// The URL of the object at `path` (relative to the root).
    fn object_url(&self, path: &str) -> Result<url::Url> {
        let mut url = url::Url::parse(&self.bucket_url)
            .map_err(|e| DriverError::caused(ErrorKind::Other, "the bucket URL", e))?;
        {
            let mut segments = url
                .path_segments_mut()
                .map_err(|_| DriverError::new(ErrorKind::Other, "the bucket URL"))?;
            segments.pop_if_empty();
            for s in format!("{}{path}", self.prefix).split('/') {
                segments.push(s);
            }
        }
        Ok(url)
    }

    /// Writes the concatenation of `sources` (with their sizes), then `tail`, as the object at
    /// `to`, inside the bucket: one multipart upload whose parts are server-side copies of the
    /// sources (`UploadPartCopy`), a source past S3's 5 GiB part limit in several equal ranges,
    /// and `tail` uploaded as the last part. Every source must hold at least 5 MiB (see
    /// [`MIN_PART`]; some gateways refuse smaller copies even as the last part, so a small last
    /// piece comes as `tail`). The object appears when the upload completes; a failure aborts it
    /// and leaves nothing.
    pub async fn compose(
        &self,
        sources: &[(String, u64)],
        tail: Option<bytes::Bytes>,
        to: &str,
    ) -> Result<()> {
        let url = self.object_url(to)?;
        let mut create = url.clone();
        create.set_query(Some("uploads"));
        let body = self
            .send_with(
                http::Method::POST,
                create.as_str(),
                &self.object_headers,
                bytes::Bytes::new(),
            )
            .await?;
        let created: InitiateResult = xml(&body, "the new multipart upload")?;
        let upload = OpenUpload {
            path: to.to_string(),
            upload_id: created.upload_id,
            initiated: None,
        };
        match self
            .copy_parts(&url, &upload.upload_id, sources, tail)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => {
                // The copy has failed already: an abort that fails too changes nothing about
                // what the caller is told (purging aborts it later).
                let _ = self.abort(&upload).await;
                Err(e)
            }
        }
    }

    async fn copy_parts(
        &self,
        url: &url::Url,
        upload_id: &str,
        sources: &[(String, u64)],
        tail: Option<bytes::Bytes>,
    ) -> Result<()> {
        let mut parts = Vec::new();
        for (source, size) in sources.iter().filter(|(_, size)| *size > 0) {
            let copy_source = format!(
                "/{}/{}",
                self.bucket,
                percent_encoding::utf8_percent_encode(
                    &format!("{}{source}", self.prefix),
                    COPY_SOURCE
                )
            );
            for range in part_ranges(*size) {
                let number = parts.len() + 1;
                let mut part = url.clone();
                part.query_pairs_mut()
                    .append_pair("partNumber", &number.to_string())
                    .append_pair("uploadId", upload_id);
                let headers = [
                    ("x-amz-copy-source".to_string(), copy_source.clone()),
                    (
                        "x-amz-copy-source-range".to_string(),
                        format!("bytes={}-{}", range.start, range.end - 1),
                    ),
                ];
                let body = self
                    .send_with(
                        http::Method::PUT,
                        part.as_str(),
                        &headers,
                        bytes::Bytes::new(),
                    )
                    .await
                    .map_err(|e| not_found_as_missing(e, source))?;
                let copied: CopyPartResult = xml(&body, "a copied part")?;
                parts.push(copied.e_tag);
            }
        }
        if let Some(tail) = tail.filter(|t| !t.is_empty()) {
            let mut part = url.clone();
            part.query_pairs_mut()
                .append_pair("partNumber", &(parts.len() + 1).to_string())
                .append_pair("uploadId", upload_id);
            let etag = self.send_for_etag(part.as_str(), tail).await?;
            parts.push(etag);
        }
        let mut complete = String::from("<CompleteMultipartUpload>");
        for (i, etag) in parts.iter().enumerate() {
            complete.push_str(&format!(
                "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>",
                i + 1,
                quick_xml::escape::escape(etag.as_str())
            ));
        }
        complete.push_str("</CompleteMultipartUpload>");
        let mut done = url.clone();
        done.query_pairs_mut().append_pair("uploadId", upload_id);
        let body = self
            .send_with(
                http::Method::POST,
                done.as_str(),
                &[("content-type".to_string(), "application/xml".to_string())],
                bytes::Bytes::from(complete),
            )
            .await?;
        // A completion can fail after its 200 has been sent: the body then holds an error.
        if String::from_utf8_lossy(&body).contains("<Error>") {
            return Err(DriverError::new(
                ErrorKind::Unavailable,
                format!(
                    "completing the multipart upload of {to}: {}",
                    String::from_utf8_lossy(&body).trim(),
                    to = url
                ),
            ));
        }
        Ok(())
    }

    /// Aborts one multipart upload; one that is gone already is not an error.
    pub async fn abort(&self, upload: &OpenUpload) -> Result<()> {
        let mut url = self.object_url(&upload.path)?;
        url.query_pairs_mut()
            .append_pair("uploadId", &upload.upload_id);
        match self.send(http::Method::DELETE, url.as_str()).await {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            other => other.map(drop),
        }
    }

    /// Aborts the open multipart uploads below `dir` started before `cutoff` (or at an unknown
    /// time); returns how many.
    pub async fn abort_older_than(&self, dir: &str, cutoff: SystemTime) -> Result<usize> {
        let mut aborted = 0;
        for upload in self.list(dir).await? {
            if upload.initiated.is_none_or(|t| t < cutoff) {
                self.abort(&upload).await?;
                aborted += 1;
            }
        }
        Ok(aborted)
    }
}

/// The smallest part of a multipart upload but the last: every source of [`MultipartUploads::compose`]
/// but the last must hold at least this much.
pub const MIN_PART: u64 = 5 << 20;
/// The largest part of a multipart upload (and of one `UploadPartCopy`).
const MAX_PART: u64 = 5 << 30;

/// The ranges a source of `size` bytes is copied in: as few as S3's part limit allows, of equal
/// size (so none falls below the minimum part when the source does not).
fn part_ranges(size: u64) -> Vec<std::ops::Range<u64>> {
    let count = size.div_ceil(MAX_PART).max(1);
    let step = size.div_ceil(count);
    (0..count)
        .map(|i| i * step..((i + 1) * step).min(size))
        .filter(|r| r.start < r.end)
        .collect()
}

/// Characters escaped in `x-amz-copy-source` (everything but unreserved characters and `/`).
const COPY_SOURCE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InitiateResult {
    upload_id: String,
}

#[derive(Deserialize)]
struct CopyPartResult {
    #[serde(rename = "ETag")]
    e_tag: String,
}

fn xml<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T> {
    quick_xml::de::from_reader(body).map_err(|e| {
        DriverError::caused(ErrorKind::Other, format_args!("reading {what} from S3"), e)
    })
}

/// A source that is gone is the store's `NotFound` (an upload finished or cancelled meanwhile).
fn not_found_as_missing(e: DriverError, source: &str) -> DriverError {
    if e.kind() == ErrorKind::NotFound {
        DriverError::new(ErrorKind::NotFound, format!("copying {source}: {e}"))
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_past_the_part_limit_are_copied_in_equal_ranges() {
        assert_eq!(part_ranges(10), vec![0..10]);
        assert_eq!(part_ranges(MAX_PART), vec![0..MAX_PART]);
        let r = part_ranges(MAX_PART + 6);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].end, r[1].start);
        assert_eq!(r[1].end, MAX_PART + 6);
        assert!(r
            .iter()
            .all(|r| r.end - r.start >= MIN_PART && r.end - r.start <= MAX_PART));
    }
}
