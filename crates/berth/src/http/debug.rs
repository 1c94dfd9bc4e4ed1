//! The debug listener (`http.debug.addr`): the health report, the probe endpoints (`/readyz`,
//! `/livez`, as on the main listener) and, when enabled, Prometheus metrics. It serves nothing
//! of the registry API, and it keeps answering while the main listener drains, so a probe
//! pointed at it sees `/readyz` fail for the whole shutdown.

use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use super::health::{self, Probes};

/// `GET /debug/health`: 200 `{}` when storage and metadata answer and the storage probe
/// (`health.storagedriver`) passes; 503 with each failing check by name otherwise
/// (`storagedriver`: the periodic probe; `health`: the check run for this request).
pub async fn health(State(probes): State<Arc<Probes>>) -> Response {
    let failures = probes.failures().await;
    let status = if failures.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(http::header::CONTENT_TYPE, "application/json")],
        serde_json::Value::Object(failures).to_string(),
    )
        .into_response()
}

/// Starts the debug listener on `addr` (prints `debug listening on ADDR`) and serves until
/// `stop` changes. With a `metrics_path`, installs the Prometheus recorder and serves it there.
/// Returns whether metrics are being recorded.
pub async fn start(
    addr: &str,
    metrics_path: Option<&str>,
    probes: Arc<Probes>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<bool> {
    let mut app = Router::new()
        .route("/debug/health", get(health))
        .route("/readyz", get(health::readyz))
        .route("/livez", get(health::livez));
    let metrics = match metrics_path {
        Some(path) => {
            if ["/debug/health", "/readyz", "/livez"].contains(&path) {
                anyhow::bail!(
                    "http.debug.prometheus.path: {path} is already served by the debug listener"
                );
            }
            let handle: PrometheusHandle = PrometheusBuilder::new()
                .install_recorder()
                .context("installing the Prometheus recorder")?;
            app = app.route(path, get(move || async move { handle.render() }));
            true
        }
        None => false,
    };
    let app = app.with_state(probes);
    let (listener, _) = crate::listener::bind(addr, "debug").await?;
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.changed().await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "debug listener failed");
        }
    });
    Ok(metrics)
}
