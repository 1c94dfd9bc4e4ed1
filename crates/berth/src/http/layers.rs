//! Cross-cutting layers of the edge: configured response headers (`http.headers`), the access
//! log (`log.accesslog`), and request metrics for the Prometheus endpoint.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

/// Adds the configured headers to every response (values the handler did not set itself).
pub async fn extra_headers(
    State(headers): State<Arc<Vec<(HeaderName, HeaderValue)>>>,
    req: Request,
    next: Next,
) -> Response {
    let mut resp = next.run(req).await;
    for (n, v) in headers.iter() {
        if !resp.headers().contains_key(n) {
            resp.headers_mut().append(n.clone(), v.clone());
        }
    }
    resp
}

/// One line per request at `info` on the `access` target.
pub async fn access_log(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let uri = req.uri().path().to_string();
    let remote = req
        .extensions()
        .get::<ConnectInfo<super::PeerAddr>>()
        .map(|c| c.0 .0.to_string())
        .unwrap_or_default();
    let agent = req
        .headers()
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let resp = next.run(req).await;
    tracing::info!(
        target: "access",
        remote = %remote,
        method = %method,
        path = %uri,
        status = resp.status().as_u16(),
        duration_ms = start.elapsed().as_secs_f64() * 1000.0,
        user_agent = %agent,
        "request"
    );
    resp
}

/// Counts requests by method and status, and their duration, for `/metrics`.
pub async fn request_metrics(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().as_str().to_string();
    let resp = next.run(req).await;
    let code = resp.status().as_u16().to_string();
    metrics::counter!("registry_http_requests_total", "method" => method.clone(), "code" => code)
        .increment(1);
    metrics::histogram!("registry_http_request_duration_seconds", "method" => method)
        .record(start.elapsed().as_secs_f64());
    resp
}
