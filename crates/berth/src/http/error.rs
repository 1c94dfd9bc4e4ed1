//! OCI error responses: the one registry of error codes and the one renderer of the error JSON.
//!
//! Each [`ErrorCode`] is registered once in [`ErrorCode::ALL`] with its wire value, its HTTP
//! status and a default message (as Distribution's `errcode` registers its codes). Every error
//! answer of the edge is an [`ApiError`] rendered by its `IntoResponse`, including the
//! authentication layer's challenges; the `From` conversions below are the one place where core,
//! parse and storage errors become a code.

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::auth::Challenge;
use crate::oci::digest::DigestError;
use crate::oci::name::{NameError, ReferenceError, TagError};
use crate::registry::RegistryError;

/// An OCI error code (the spec's list, plus `STORAGE_FULL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    TagInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    /// The registry's disk is full. Not in the spec's list (whose codes say nothing of the
    /// server's state); clients show its message, which says what to do.
    StorageFull,
    /// A store the registry needs (the metadata database) cannot be reached. Distribution's
    /// `UNAVAILABLE`; the answer carries `Retry-After`.
    Unavailable,
    Unknown,
}

/// What is registered for a code.
#[derive(Debug)]
pub struct Registration {
    pub code: ErrorCode,
    /// The value of the `code` field.
    pub value: &'static str,
    pub status: StatusCode,
    /// The message when the error carries none of its own.
    pub message: &'static str,
}

const fn reg(
    code: ErrorCode,
    value: &'static str,
    status: StatusCode,
    message: &'static str,
) -> Registration {
    Registration {
        code,
        value,
        status,
        message,
    }
}

impl ErrorCode {
    /// Every code, each registered once.
    pub const ALL: &'static [Registration] = {
        use ErrorCode as C;
        use StatusCode as S;
        &[
            reg(
                C::BlobUnknown,
                "BLOB_UNKNOWN",
                S::NOT_FOUND,
                "blob unknown to registry",
            ),
            reg(
                C::BlobUploadInvalid,
                "BLOB_UPLOAD_INVALID",
                S::BAD_REQUEST,
                "blob upload invalid",
            ),
            reg(
                C::BlobUploadUnknown,
                "BLOB_UPLOAD_UNKNOWN",
                S::NOT_FOUND,
                "blob upload unknown to registry",
            ),
            reg(
                C::DigestInvalid,
                "DIGEST_INVALID",
                S::BAD_REQUEST,
                "provided digest did not match uploaded content",
            ),
            reg(
                C::ManifestBlobUnknown,
                "MANIFEST_BLOB_UNKNOWN",
                S::BAD_REQUEST,
                "manifest references a manifest or blob unknown to registry",
            ),
            reg(
                C::ManifestInvalid,
                "MANIFEST_INVALID",
                S::BAD_REQUEST,
                "manifest invalid",
            ),
            reg(
                C::ManifestUnknown,
                "MANIFEST_UNKNOWN",
                S::NOT_FOUND,
                "manifest unknown to registry",
            ),
            reg(
                C::NameInvalid,
                "NAME_INVALID",
                S::BAD_REQUEST,
                "invalid repository name",
            ),
            reg(
                C::NameUnknown,
                "NAME_UNKNOWN",
                S::NOT_FOUND,
                "repository name not known to registry",
            ),
            reg(
                C::SizeInvalid,
                "SIZE_INVALID",
                S::BAD_REQUEST,
                "provided length did not match content length",
            ),
            reg(C::TagInvalid, "TAG_INVALID", S::BAD_REQUEST, "invalid tag"),
            reg(
                C::Unauthorized,
                "UNAUTHORIZED",
                S::UNAUTHORIZED,
                "authentication required",
            ),
            reg(
                C::Denied,
                "DENIED",
                S::FORBIDDEN,
                "requested access to the resource is denied",
            ),
            reg(
                C::Unsupported,
                "UNSUPPORTED",
                S::METHOD_NOT_ALLOWED,
                "the operation is unsupported",
            ),
            reg(
                C::TooManyRequests,
                "TOOMANYREQUESTS",
                S::TOO_MANY_REQUESTS,
                "too many requests",
            ),
            reg(
                C::StorageFull,
                "STORAGE_FULL",
                S::INSUFFICIENT_STORAGE,
                "the registry's storage is full; free space or enlarge the volume, then retry",
            ),
            reg(
                C::Unavailable,
                "UNAVAILABLE",
                S::SERVICE_UNAVAILABLE,
                "service unavailable; retry later",
            ),
            reg(
                C::Unknown,
                "UNKNOWN",
                S::INTERNAL_SERVER_ERROR,
                "internal server error; the registry log has the details",
            ),
        ]
    };

    /// This code's registration.
    pub fn registration(self) -> &'static Registration {
        // Every code is registered (checked by a test), so the fallback is never taken.
        let all = ErrorCode::ALL;
        all.iter()
            .find(|r| r.code == self)
            .unwrap_or(&all[all.len() - 1])
    }

    pub fn value(self) -> &'static str {
        self.registration().value
    }
}

/// An error as the client will see it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    detail: serde_json::Value,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    /// An error with the code's registered status.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status: code.registration().status,
            code,
            message: message.into(),
            detail: serde_json::Value::Null,
            headers: Vec::new(),
        }
    }

    /// An error with the code's registered message.
    pub fn of(code: ErrorCode) -> ApiError {
        ApiError::new(code, code.registration().message)
    }

    /// Answers with another status than the code's own (the spec asks for 416 on an
    /// out-of-order chunk or a bad range, 404 for a path that is no endpoint).
    pub fn with_status(mut self, status: StatusCode) -> ApiError {
        self.status = status;
        self
    }

    /// Adds a response header (e.g. `Range` on a 416 for an upload).
    pub fn with_header(mut self, name: HeaderName, value: &str) -> ApiError {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((name, v));
        }
        self
    }

    pub fn unsupported(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Unsupported, message)
    }

    /// An internal failure: logged with its cause, answered without it.
    pub fn internal(cause: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %cause, "internal error");
        ApiError::of(ErrorCode::Unknown)
    }
}

/// The `Range` header value of an upload holding `size` bytes (`0-0` when empty, as
/// Distribution reports it).
pub fn upload_range(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> ApiError {
        use ErrorCode as C;
        use RegistryError as E;
        let message = e.to_string();
        let code = match e {
            E::BlobUnknown(_) => C::BlobUnknown,
            E::BlobUploadUnknown(_) => C::BlobUploadUnknown,
            E::BlobUploadInvalid(_) => C::BlobUploadInvalid,
            E::UploadOutOfOrder { size } => {
                return ApiError::new(C::BlobUploadInvalid, message)
                    .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .with_header(header::RANGE, &upload_range(size))
            }
            E::RangeNotSatisfiable { size } => {
                return ApiError::new(C::SizeInvalid, message)
                    .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .with_header(header::CONTENT_RANGE, &format!("bytes */{size}"))
            }
            E::DigestInvalid(_) => C::DigestInvalid,
            E::ManifestInvalid(_) => C::ManifestInvalid,
            E::ManifestBlobUnknown(_) => C::ManifestBlobUnknown,
            E::ManifestUnknown(_) => C::ManifestUnknown,
            E::NameUnknown(_) => C::NameUnknown,
            E::Denied(_) => C::Denied,
            E::Unsupported(_) => C::Unsupported,
            E::ManifestTooLarge(_) => {
                return ApiError::new(C::SizeInvalid, message)
                    .with_status(StatusCode::PAYLOAD_TOO_LARGE)
            }
            E::StorageFull(_) => {
                tracing::error!(error = %message, "storage is full");
                C::StorageFull
            }
            E::Unavailable(_) => {
                tracing::warn!(error = %message, "a store is unavailable");
                return ApiError::new(C::Unavailable, message)
                    .with_header(header::RETRY_AFTER, "1");
            }
            E::Storage(_) | E::Meta(_) => return ApiError::internal(message),
        };
        ApiError::new(code, message)
    }
}

impl From<NameError> for ApiError {
    fn from(e: NameError) -> ApiError {
        ApiError::new(ErrorCode::NameInvalid, e.to_string())
    }
}

impl From<DigestError> for ApiError {
    fn from(e: DigestError) -> ApiError {
        ApiError::new(ErrorCode::DigestInvalid, e.to_string())
    }
}

impl From<TagError> for ApiError {
    fn from(e: TagError) -> ApiError {
        ApiError::new(ErrorCode::TagInvalid, e.to_string())
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

impl From<Challenge> for ApiError {
    /// A refused request: 401 `UNAUTHORIZED` with the challenge (Distribution answers 401 for
    /// missing, invalid and insufficient credentials alike), or 500 when authentication itself
    /// is misconfigured.
    fn from(ch: Challenge) -> ApiError {
        let Some(www_authenticate) = ch.www_authenticate.as_deref() else {
            if ch.status == 503 {
                tracing::warn!(error = %ch.error, "authentication cannot reach its store");
                return ApiError::new(ErrorCode::Unavailable, ch.message.clone())
                    .with_header(header::RETRY_AFTER, "1");
            }
            return ApiError::internal(&ch.error);
        };
        let mut e = ApiError::new(ErrorCode::Unauthorized, ch.message.clone())
            .with_header(header::WWW_AUTHENTICATE, www_authenticate);
        e.detail = ch.detail();
        e
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "errors": [{ "code": self.code.value(), "message": self.message, "detail": self.detail }]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_registered_once() {
        let codes = [
            ErrorCode::BlobUnknown,
            ErrorCode::BlobUploadInvalid,
            ErrorCode::BlobUploadUnknown,
            ErrorCode::DigestInvalid,
            ErrorCode::ManifestBlobUnknown,
            ErrorCode::ManifestInvalid,
            ErrorCode::ManifestUnknown,
            ErrorCode::NameInvalid,
            ErrorCode::NameUnknown,
            ErrorCode::SizeInvalid,
            ErrorCode::TagInvalid,
            ErrorCode::Unauthorized,
            ErrorCode::Denied,
            ErrorCode::Unsupported,
            ErrorCode::TooManyRequests,
            ErrorCode::StorageFull,
            ErrorCode::Unavailable,
            ErrorCode::Unknown,
        ];
        assert_eq!(codes.len(), ErrorCode::ALL.len());
        for code in codes {
            let n = ErrorCode::ALL.iter().filter(|r| r.code == code).count();
            assert_eq!(n, 1, "{code:?} is registered {n} times");
            let value = code.value();
            assert!(
                value.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'),
                "{value}"
            );
            let same_value = ErrorCode::ALL.iter().filter(|r| r.value == value).count();
            assert_eq!(same_value, 1, "{value} is used by several codes");
        }
    }

    #[test]
    fn one_renderer_for_every_answer() {
        let resp = ApiError::from(RegistryError::UploadOutOfOrder { size: 10 }).into_response();
        assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(resp.headers()[header::RANGE], "0-9");
        let resp = ApiError::from(RegistryError::StorageFull("disk".into())).into_response();
        assert_eq!(resp.status(), StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "application/json",
            "every error is OCI error JSON"
        );
    }
}
