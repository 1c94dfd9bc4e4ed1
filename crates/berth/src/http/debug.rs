//! The debug listener (`http.debug.addr`): a health check and, when enabled, Prometheus metrics.
//! It serves nothing of the registry API.

use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::registry::Registry;

/// `GET /debug/health`: 200 `{}` when storage and metadata answer, 503 with the failure otherwise.
pub async fn health(State(reg): State<Arc<Registry>>) -> Response {
    match reg.check_health().await {
        Ok(()) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            "{}",
        )
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            serde_json::json!({ "health": e.to_string() }).to_string(),
        )
            .into_response(),
    }
}

/// Starts the debug listener on `addr` (prints `debug listening on ADDR`). With a
/// `metrics_path`, installs the Prometheus recorder and serves it there. Returns whether metrics
/// are being recorded.
pub async fn start(
    addr: &str,
    metrics_path: Option<&str>,
    registry: Arc<Registry>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<bool> {
    let mut app = Router::new().route("/debug/health", get(health));
    let metrics = match metrics_path {
        Some(path) => {
            let handle: PrometheusHandle = PrometheusBuilder::new()
                .install_recorder()
                .context("installing the Prometheus recorder")?;
            app = app.route(path, get(move || async move { handle.render() }));
            true
        }
        None => false,
    };
    let app = app.with_state(registry);
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
