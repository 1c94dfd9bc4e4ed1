//! `/registries`: remote registries (Harbor's registry endpoints), which proxy-cache projects
//! mirror; system administrators manage them. A registry's secret is never shown.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::request::Parts;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    body, created, ok, paged, paging, param, query, time_ms, Api, ApiError, ApiResult, Caller,
};
use crate::auth::accounts::{AccountError, RegistryRecord};
use crate::remote::mirrors::endpoint_of;

/// The types of registry Berth speaks to, as Harbor names them.
pub const TYPES: &[&str] = &["harbor", "docker-registry", "docker-hub"];

fn registry_json(r: &RegistryRecord) -> Value {
    json!({
        "id": r.id,
        "name": r.name,
        "type": r.kind,
        "url": r.url,
        "credential": {
            "type": r.credential_type,
            "access_key": r.access_key,
            "access_secret": if r.access_secret.is_empty() { "" } else { "*****" },
        },
        "insecure": r.insecure,
        "description": r.description,
        "status": "healthy",
        "creation_time": time_ms(r.created_at),
        "update_time": time_ms(r.updated_at),
    })
}

#[derive(Deserialize, Default)]
struct Credential {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    access_key: Option<String>,
    access_secret: Option<String>,
}

/// Harbor's `Registry` (create) and `RegistryUpdate` (change) bodies, in one.
#[derive(Deserialize, Default)]
struct RegistryReq {
    id: Option<i64>,
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    url: Option<String>,
    credential: Option<Credential>,
    credential_type: Option<String>,
    access_key: Option<String>,
    access_secret: Option<String>,
    insecure: Option<bool>,
    description: Option<String>,
}

impl RegistryReq {
    /// `r` changed as the request says.
    fn apply(self, mut r: RegistryRecord) -> Result<RegistryRecord, ApiError> {
        let credential = self.credential.unwrap_or_default();
        if let Some(v) = self.name {
            r.name = v;
        }
        if let Some(v) = self.kind {
            r.kind = v;
        }
        if let Some(v) = self.url {
            r.url = v.trim_end_matches('/').to_string();
        }
        if let Some(v) = credential.kind.or(self.credential_type) {
            r.credential_type = v;
        }
        if let Some(v) = credential.access_key.or(self.access_key) {
            r.access_key = v;
        }
        // The masked value shown by GET, sent back unchanged, keeps the secret.
        if let Some(v) = credential.access_secret.or(self.access_secret) {
            if v != "*****" {
                r.access_secret = v;
            }
        }
        if let Some(v) = self.insecure {
            r.insecure = v;
        }
        if let Some(v) = self.description {
            r.description = v;
        }
        check(&r)?;
        Ok(r)
    }
}

fn check(r: &RegistryRecord) -> Result<(), ApiError> {
    if r.name.trim().is_empty() {
        return Err(ApiError::bad_request("a registry needs a name"));
    }
    if !TYPES.contains(&r.kind.as_str()) {
        return Err(ApiError::bad_request(format!(
            "registry type {:?} is not supported; use one of {}",
            r.kind,
            TYPES.join(", ")
        )));
    }
    let url = url::Url::parse(&r.url)
        .map_err(|e| ApiError::bad_request(format!("url {:?}: {e}", r.url)))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ApiError::bad_request(format!(
            "url {:?} must be http(s)://host[:port]",
            r.url
        )));
    }
    Ok(())
}

/// A store's failure, as the account operations report it.
fn store_error(e: impl Into<AccountError>) -> ApiError {
    ApiError::from(e.into())
}

/// `GET /registries` (`q=name=~x` or `name=x`: names containing it).
pub async fn list(State(api): State<Api>, caller: Caller, parts: Parts) -> ApiResult {
    caller.sysadmin()?;
    let q = query(&parts);
    let page = paging(&q)?;
    let filter = super::Filter::parse(param(&q, "q"))?;
    filter.only(&["name"])?;
    let name = param(&q, "name").or(filter.text("name").map(|(v, _)| v));
    let listing = api
        .accounts
        .store()
        .registries(name, page)
        .await
        .map_err(store_error)?;
    let items: Vec<Value> = listing.items.iter().map(registry_json).collect();
    paged(&parts, page, listing.total, &items)
}

/// `POST /registries`.
pub async fn create(State(api): State<Api>, caller: Caller, parts: Parts, raw: Bytes) -> ApiResult {
    caller.sysadmin()?;
    let req: RegistryReq = body(&raw)?;
    let record = req.apply(RegistryRecord::default())?;
    let stored = api
        .accounts
        .store()
        .create_registry(&record)
        .await
        .map_err(store_error)?;
    created(&parts, &stored.id.to_string(), None)
}

async fn registry(api: &Api, id: i64) -> Result<RegistryRecord, ApiError> {
    api.accounts
        .store()
        .registry(id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found(format!("registry {id} not found")))
}

/// `GET /registries/{id}`.
pub async fn get(State(api): State<Api>, caller: Caller, Path(id): Path<i64>) -> ApiResult {
    caller.sysadmin()?;
    super::json(&registry_json(&registry(&api, id).await?))
}

/// `PUT /registries/{id}`.
pub async fn update(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<i64>,
    raw: Bytes,
) -> ApiResult {
    caller.sysadmin()?;
    let req: RegistryReq = body(&raw)?;
    let record = req.apply(registry(&api, id).await?)?;
    api.accounts
        .store()
        .update_registry(&record)
        .await
        .map_err(store_error)?;
    ok()
}

/// `DELETE /registries/{id}`: refused while a project mirrors it.
pub async fn delete(State(api): State<Api>, caller: Caller, Path(id): Path<i64>) -> ApiResult {
    caller.sysadmin()?;
    api.accounts
        .store()
        .delete_registry(id)
        .await
        .map_err(store_error)?;
    ok()
}

/// `POST /registries/ping`: whether a registry (a stored one by `id`, changed by the rest of
/// the body, or one described in full) answers its API with the credentials given.
pub async fn ping(State(api): State<Api>, caller: Caller, raw: Bytes) -> ApiResult {
    caller.sysadmin()?;
    let req: RegistryReq = body(&raw)?;
    let base = match req.id {
        Some(id) => registry(&api, id).await?,
        None => RegistryRecord {
            name: "ping".into(),
            ..RegistryRecord::default()
        },
    };
    let mut record = req.apply(base)?;
    if record.name.is_empty() {
        record.name = "ping".into();
    }
    let (endpoint, _) = endpoint_of(&record).map_err(ApiError::bad_request)?;
    let client =
        crate::remote::Client::new(endpoint).map_err(|e| ApiError::bad_request(e.to_string()))?;
    match client.ping().await {
        Ok(_) => ok(),
        Err(e) => Err(ApiError::bad_request(format!(
            "the registry at {} did not answer its API: {e}",
            record.url
        ))),
    }
}

/// `GET /replication/adapters`: the registry types that can be added.
pub async fn adapters(caller: Caller) -> ApiResult {
    caller.sysadmin()?;
    super::json(&json!(TYPES))
}
