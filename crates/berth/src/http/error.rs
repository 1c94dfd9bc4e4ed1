//! OCI error responses. The one place where core, parse and storage errors become an HTTP status
//! and an OCI error code (`{"errors":[{"code","message","detail"}]}`).

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::registry::digest::DigestError;
use crate::registry::name::{NameError, ReferenceError, TagError};
use crate::registry::RegistryError;

/// An error as the client will see it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    /// Adds a response header (e.g. `Range` on a 416 for an upload).
    pub fn with_header(mut self, name: HeaderName, value: &str) -> ApiError {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((name, v));
        }
        self
    }

    pub fn unsupported(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", message)
    }
}

/// The `Range` header value of an upload holding `size` bytes (`0-0` when empty, as
/// Distribution reports it).
pub fn upload_range(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> ApiError {
        use RegistryError as E;
        use StatusCode as S;
        let message = e.to_string();
        match e {
            E::BlobUnknown(_) => ApiError::new(S::NOT_FOUND, "BLOB_UNKNOWN", message),
            E::BlobUploadUnknown(_) => ApiError::new(S::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN", message),
            E::BlobUploadInvalid(_) => {
                ApiError::new(S::BAD_REQUEST, "BLOB_UPLOAD_INVALID", message)
            }
            E::UploadOutOfOrder { size } => {
                ApiError::new(S::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID", message)
                    .with_header(header::RANGE, &upload_range(size))
            }
            E::RangeNotSatisfiable { size } => {
                ApiError::new(S::RANGE_NOT_SATISFIABLE, "SIZE_INVALID", message)
                    .with_header(header::CONTENT_RANGE, &format!("bytes */{size}"))
            }
            E::DigestInvalid(_) => ApiError::new(S::BAD_REQUEST, "DIGEST_INVALID", message),
            E::ManifestInvalid(_) => ApiError::new(S::BAD_REQUEST, "MANIFEST_INVALID", message),
            E::ManifestBlobUnknown(_) => {
                ApiError::new(S::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN", message)
            }
            E::ManifestUnknown(_) => ApiError::new(S::NOT_FOUND, "MANIFEST_UNKNOWN", message),
            E::NameUnknown(_) => ApiError::new(S::NOT_FOUND, "NAME_UNKNOWN", message),
            E::ManifestTooLarge(_) => ApiError::new(S::PAYLOAD_TOO_LARGE, "SIZE_INVALID", message),
            E::Storage(_) | E::Meta(_) => {
                tracing::error!(error = %message, "internal error");
                ApiError::new(
                    S::INTERNAL_SERVER_ERROR,
                    "UNKNOWN",
                    "internal server error; the registry log has the details",
                )
            }
        }
    }
}

impl From<NameError> for ApiError {
    fn from(e: NameError) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "NAME_INVALID", e.to_string())
    }
}

impl From<DigestError> for ApiError {
    fn from(e: DigestError) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "DIGEST_INVALID", e.to_string())
    }
}

impl From<TagError> for ApiError {
    fn from(e: TagError) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "TAG_INVALID", e.to_string())
    }
}

impl From<ReferenceError> for ApiError {
    fn from(e: ReferenceError) -> ApiError {
        match e {
            ReferenceError::Tag(t) => t.into(),
            ReferenceError::Digest(d) => d.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "errors": [{ "code": self.code, "message": self.message, "detail": null }]
        });
        let mut resp = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
        for (k, v) in self.headers {
            resp.headers_mut().insert(k, v);
        }
        resp
    }
}
