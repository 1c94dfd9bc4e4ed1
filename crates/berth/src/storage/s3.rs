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

use super::driver::{DriverError, ErrorKind, Result};

/// The multipart uploads of one bucket below one root.
#[derive(Clone)]
pub struct MultipartUploads {
    /// `https://endpoint/bucket` (path style) or `https://bucket.endpoint` (virtual host).
    bucket_url: String,
    /// The key prefix of the registry's objects (`rootdirectory`), without a leading `/`.
    prefix: String,
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
            prefix: root.trim_start_matches('/').to_string(),
            signer,
            http,
        })
    }

    /// Sends a signed request without a body; returns the body of a successful response.
    async fn send(&self, method: http::Method, url: &str) -> Result<bytes::Bytes> {
        let req = http::Request::builder()
            .method(method.clone())
            .uri(url)
            .header("x-amz-content-sha256", EMPTY_SHA256)
            .body(())
            .map_err(|e| DriverError::caused(ErrorKind::Other, format_args!("{url}"), e))?;
        let (mut parts, ()) = req.into_parts();
        self.signer
            .sign(&mut parts, None)
            .await
            .map_err(|e| DriverError::caused(ErrorKind::Auth, "signing a request to S3", e))?;
        let mut out = self.http.request(method, parts.uri.to_string());
        for (name, value) in &parts.headers {
            out = out.header(name, value);
        }
        let resp = out.send().await.map_err(|e| {
            DriverError::caused(ErrorKind::Unavailable, format_args!("reaching {url}"), e)
        })?;
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
        let kind = match status.as_u16() {
            401 | 403 => ErrorKind::Auth,
            404 => ErrorKind::NotFound,
            429 | 503 => ErrorKind::Throttled,
            s if s >= 500 => ErrorKind::Unavailable,
            _ => ErrorKind::Other,
        };
        Err(DriverError::new(
            kind,
            format!(
                "{url} answered {status}: {}",
                String::from_utf8_lossy(&body).trim()
            ),
        ))
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

    /// Aborts one multipart upload; one that is gone already is not an error.
    pub async fn abort(&self, upload: &OpenUpload) -> Result<()> {
        let mut url = url::Url::parse(&self.bucket_url)
            .map_err(|e| DriverError::caused(ErrorKind::Other, "the bucket URL", e))?;
        {
            let mut segments = url
                .path_segments_mut()
                .map_err(|_| DriverError::new(ErrorKind::Other, "the bucket URL"))?;
            segments.pop_if_empty();
            for s in format!("{}{}", self.prefix, upload.path).split('/') {
                segments.push(s);
            }
        }
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

/// The SHA-256 of an empty body, which S3 wants stated.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
