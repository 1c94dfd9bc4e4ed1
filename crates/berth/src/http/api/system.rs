//! `/ping`, `/systeminfo`, `/health` and the OpenAPI document: what anybody may read.

use axum::extract::State;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{Api, ApiResult, Caller};

/// `GET /ping`: `Pong`.
pub async fn ping() -> Response {
    (
        [(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "Pong",
    )
        .into_response()
}

/// `GET /systeminfo`: Berth's version and what Harbor's clients ask about the installation.
/// Anonymous callers get the same fields: none of them is a secret.
pub async fn systeminfo(State(api): State<Api>, parts: Parts, _caller: Caller) -> ApiResult {
    let origin = crate::http::origin::resolve(&api.settings, &parts);
    let base = origin.base_url();
    let host = base
        .split_once("://")
        .map(|(_, h)| h.to_string())
        .unwrap_or_else(|| base.clone());
    let now = jiff::Timestamp::now().to_string();
    super::json(&json!({
        "with_notary": false,
        "with_chartmuseum": false,
        "auth_mode": api.builtin.auth_mode(),
        "primary_auth_mode": false,
        "registry_url": host,
        "external_url": base,
        "project_creation_restriction": "everyone",
        "self_registration": false,
        "has_ca_root": false,
        "harbor_version": format!("berth-{}", env!("CARGO_PKG_VERSION")),
        "registry_storage_provider_name": "berth",
        "read_only": api.settings.read_only,
        "notification_enable": true,
        "current_time": now,
        "banner_message": "",
    }))
}

/// `GET /health`: the registry core's health (storage and metadata), as Harbor's components.
pub async fn health(State(api): State<Api>) -> ApiResult {
    let (status, error) = match api.core.check_health().await {
        Ok(()) => ("healthy", None),
        Err(e) => ("unhealthy", Some(e.to_string())),
    };
    let mut registry = json!({"name": "registry", "status": status});
    if let Some(e) = &error {
        registry["error"] = json!(e);
    }
    let database = match api.accounts.store().user(0).await {
        Ok(_) => json!({"name": "database", "status": "healthy"}),
        Err(e) => json!({"name": "database", "status": "unhealthy", "error": e.to_string()}),
    };
    let overall = if error.is_none() && database["status"] == "healthy" {
        "healthy"
    } else {
        "unhealthy"
    };
    super::json(&json!({
        "status": overall,
        "components": [{"name": "core", "status": "healthy"}, registry, database],
    }))
}

/// `GET /swagger.json` (and `/openapi.json`): this API's OpenAPI document.
pub async fn openapi() -> Response {
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        super::OPENAPI,
    )
        .into_response()
}
