//! The HTTP edge: the OCI Distribution API under `/v2/` as an axum router.
//!
//! The only module that knows HTTP status codes, headers and OCI error JSON. Handlers parse and
//! validate everything from the request (names, digests, references, ranges), call the core, and
//! shape the response. Cross-cutting concerns are tower layers added in [`router`]; this is also
//! where an authentication layer will turn a request into an identity and check its scope.

mod blobs;
mod error;
mod listing;
mod manifests;
mod routes;
mod uploads;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

pub use error::ApiError;
use routes::Endpoint;

use crate::registry::name::RepoName;
use crate::registry::Registry;

/// Shared state of every handler.
pub type AppState = Arc<Registry>;

type ApiResult = Result<Response, ApiError>;

const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");
const CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");

/// The router for the whole registry API.
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/v2/", get(base))
        .route("/v2", get(base))
        .route("/v2/_catalog", get(listing::catalog))
        .fallback(dispatch)
        .with_state(registry)
        .layer(SetResponseHeaderLayer::if_not_present(
            API_VERSION,
            HeaderValue::from_static("registry/2.0"),
        ))
        .layer(TraceLayer::new_for_http())
}

/// `GET /v2/`: the API version check.
async fn base() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        "{}",
    )
        .into_response()
}

/// Routes `/v2/<name>/...` requests, whose names span several path segments.
async fn dispatch(State(reg): State<AppState>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let Some(rest) = path.strip_prefix("/v2/") else {
        return ApiError::new(StatusCode::NOT_FOUND, "UNSUPPORTED", "not an OCI API path")
            .into_response();
    };
    let Some((name, endpoint)) = routes::parse(rest) else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
            format!("no API endpoint at {path}"),
        )
        .into_response();
    };
    let repo = match name.parse::<RepoName>() {
        Ok(r) => r,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let (parts, body) = req.into_parts();
    let p = &parts;
    let result = match (endpoint, parts.method.clone()) {
        (Endpoint::Blob(d), Method::GET) => blobs::get(&reg, &repo, &d, p, true).await,
        (Endpoint::Blob(d), Method::HEAD) => blobs::get(&reg, &repo, &d, p, false).await,
        (Endpoint::Blob(d), Method::DELETE) => blobs::delete(&reg, &repo, &d).await,
        (Endpoint::UploadStart, Method::POST) => uploads::start(&reg, &repo, p, body).await,
        (Endpoint::Upload(id), Method::GET) => uploads::status(&reg, &repo, &id).await,
        (Endpoint::Upload(id), Method::PATCH) => uploads::patch(&reg, &repo, &id, p, body).await,
        (Endpoint::Upload(id), Method::PUT) => uploads::put(&reg, &repo, &id, p, body).await,
        (Endpoint::Upload(id), Method::DELETE) => uploads::cancel(&reg, &repo, &id).await,
        (Endpoint::Manifest(r), Method::GET) => manifests::get(&reg, &repo, &r, p, true).await,
        (Endpoint::Manifest(r), Method::HEAD) => manifests::get(&reg, &repo, &r, p, false).await,
        (Endpoint::Manifest(r), Method::PUT) => manifests::put(&reg, &repo, &r, p, body).await,
        (Endpoint::Manifest(r), Method::DELETE) => manifests::delete(&reg, &repo, &r).await,
        (Endpoint::Tags, Method::GET) => listing::tags(&reg, &repo, p).await,
        (Endpoint::Referrers(d), Method::GET) => listing::referrers(&reg, &repo, &d, p).await,
        (_, m) => Err(ApiError::unsupported(format!(
            "method {m} is not supported on {path}"
        ))),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// The query parameters of a request.
fn query(req: &Parts) -> Vec<(String, String)> {
    url::form_urlencoded::parse(req.uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn query_param<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn header_str(headers: &HeaderMap, name: impl axum::http::header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The request body as a byte stream for the core.
fn body_stream(body: Body) -> impl Stream<Item = std::io::Result<Bytes>> + Send + Unpin {
    body.into_data_stream().map_err(std::io::Error::other)
}

/// Builds a response with a status, headers and a body.
fn respond(status: StatusCode, headers: &[(HeaderName, String)], body: Body) -> ApiResult {
    let mut resp = Response::builder().status(status);
    for (k, v) in headers {
        resp = resp.header(k, v);
    }
    resp.body(body)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e.to_string()))
}
