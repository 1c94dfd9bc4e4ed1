//! The errors of the management API: Harbor's codes, each registered once with its HTTP status,
//! and the one renderer of `{"errors":[{"code":…,"message":…}]}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::accounts::AccountError;
use crate::registry::RegistryError;

/// An error code of the management API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Code {
    pub value: &'static str,
    pub status: StatusCode,
}

impl Code {
    pub const BAD_REQUEST: Code = Code::new("BAD_REQUEST", StatusCode::BAD_REQUEST);
    pub const UNAUTHORIZED: Code = Code::new("UNAUTHORIZED", StatusCode::UNAUTHORIZED);
    pub const FORBIDDEN: Code = Code::new("FORBIDDEN", StatusCode::FORBIDDEN);
    pub const NOT_FOUND: Code = Code::new("NOT_FOUND", StatusCode::NOT_FOUND);
    pub const METHOD_NOT_ALLOWED: Code =
        Code::new("METHOD_NOT_ALLOWED", StatusCode::METHOD_NOT_ALLOWED);
    pub const CONFLICT: Code = Code::new("CONFLICT", StatusCode::CONFLICT);
    pub const PRECONDITION: Code = Code::new("PRECONDITION", StatusCode::PRECONDITION_FAILED);
    pub const UNSUPPORTED_MEDIA_TYPE: Code =
        Code::new("UNSUPPORTED_MEDIA_TYPE", StatusCode::UNSUPPORTED_MEDIA_TYPE);
    pub const TOO_MANY_REQUESTS: Code =
        Code::new("TOO_MANY_REQUESTS", StatusCode::TOO_MANY_REQUESTS);
    pub const INTERNAL_SERVER_ERROR: Code =
        Code::new("INTERNAL_SERVER_ERROR", StatusCode::INTERNAL_SERVER_ERROR);
    pub const UNAVAILABLE: Code = Code::new("UNAVAILABLE", StatusCode::SERVICE_UNAVAILABLE);

    /// Every code, for the OpenAPI document and its test.
    pub const ALL: [Code; 11] = [
        Code::BAD_REQUEST,
        Code::UNAUTHORIZED,
        Code::FORBIDDEN,
        Code::NOT_FOUND,
        Code::METHOD_NOT_ALLOWED,
        Code::CONFLICT,
        Code::PRECONDITION,
        Code::UNSUPPORTED_MEDIA_TYPE,
        Code::TOO_MANY_REQUESTS,
        Code::INTERNAL_SERVER_ERROR,
        Code::UNAVAILABLE,
    ];

    const fn new(value: &'static str, status: StatusCode) -> Code {
        Code { value, status }
    }
}

/// An error answer: a code and a message that says what to do.
#[derive(Debug)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    /// `Retry-After` seconds (throttled logins).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(Code::BAD_REQUEST, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(Code::UNAUTHORIZED, message)
    }
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(Code::FORBIDDEN, message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(Code::NOT_FOUND, message)
    }
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(Code::CONFLICT, message)
    }
    pub fn internal(message: impl std::fmt::Display) -> ApiError {
        ApiError::new(Code::INTERNAL_SERVER_ERROR, message.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"errors": [{"code": self.code.value, "message": self.message}]});
        let mut resp = (self.code.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = secs.to_string().parse() {
                resp.headers_mut().insert(http::header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> Self {
        let code = match &e {
            AccountError::Invalid(_) => Code::BAD_REQUEST,
            AccountError::NotFound(_) => Code::NOT_FOUND,
            AccountError::Conflict(_) => Code::CONFLICT,
            AccountError::Unavailable(_) => Code::UNAVAILABLE,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let code = match &e {
            RegistryError::NameUnknown(_) | RegistryError::ManifestUnknown(_) => Code::NOT_FOUND,
            RegistryError::Unavailable(_) => Code::UNAVAILABLE,
            RegistryError::ManifestInvalid(_) => Code::BAD_REQUEST,
            // Harbor's answer to a change an immutable tag rule or a quota forbids.
            RegistryError::Denied(_) => Code::PRECONDITION,
            _ => Code::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(code, e.to_string())
    }
}
