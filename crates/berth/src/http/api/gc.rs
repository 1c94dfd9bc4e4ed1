//! Garbage collection in Harbor's shapes, for system administrators: `/system/gc` (the history
//! of runs), `/system/gc/{id}` and its `/log`, and `/system/gc/schedule`, whose `Manual` type
//! asks for a run now and whose other types set the cron schedule, stored, so every instance
//! follows it (over `gc.interval` in config.yml); each run goes to whichever instance holds the
//! collection lease.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{body, paged, paging, query, Api, ApiError, ApiResult, Caller};
use crate::gc::schedule::{self, Schedule};
use crate::registry::CollectionRun;

/// How many runs the history keeps answering about.
const HISTORY: u32 = 1000;

fn run_json(r: &CollectionRun) -> Value {
    let status = match r.status.as_str() {
        "success" => "Success",
        "stopped" => "Stopped",
        _ => "Error",
    };
    json!({
        "id": r.id,
        "job_name": "GARBAGE_COLLECTION",
        "job_kind": if r.kind == "schedule" { "SCHEDULE" } else { "MANUAL" },
        "job_parameters": json!({"dry_run": r.dry_run}).to_string(),
        "schedule": null,
        "job_status": status,
        "deleted": false,
        "creation_time": super::time_ms(r.started_at),
        "update_time": super::time_ms(r.finished_at),
        "blobs_deleted": r.blobs_deleted,
        "manifests_deleted": r.manifests_deleted,
        "links_removed": r.links_removed,
        "freed_space": r.bytes_freed,
    })
}

async fn history(api: &Api) -> Result<Vec<CollectionRun>, ApiError> {
    Ok(api.core.collection_runs(HISTORY).await?)
}

async fn run_of(api: &Api, id: &str) -> Result<CollectionRun, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::bad_request(format!("{id:?} is not a run id")))?;
    history(api)
        .await?
        .into_iter()
        .find(|r| r.id == id)
        .ok_or_else(|| ApiError::not_found(format!("garbage collection run {id} not found")))
}

/// `GET /system/gc`: newest first.
pub async fn list(State(api): State<Api>, caller: Caller, parts: Parts) -> ApiResult {
    caller.sysadmin()?;
    let page = paging(&query(&parts))?;
    let runs = history(&api).await?;
    let items: Vec<Value> = super::slice(&runs, page).iter().map(run_json).collect();
    paged(&parts, page, runs.len() as i64, &items)
}

/// `GET /system/gc/{gc_id}`.
pub async fn get(State(api): State<Api>, caller: Caller, Path(id): Path<String>) -> ApiResult {
    caller.sysadmin()?;
    super::json(&run_json(&run_of(&api, &id).await?))
}

/// `GET /system/gc/{gc_id}/log`: what the run did, as text.
pub async fn log(State(api): State<Api>, caller: Caller, Path(id): Path<String>) -> ApiResult {
    caller.sysadmin()?;
    let r = run_of(&api, &id).await?;
    let verb = if r.dry_run { "would delete" } else { "deleted" };
    let mut text = format!(
        "garbage collection {} ({}{}) started {} finished {}: {}\n{verb} {} manifests, {} links, \
         {} blobs; {} bytes\n",
        r.id,
        r.kind,
        if r.dry_run { ", dry run" } else { "" },
        super::time_ms(r.started_at),
        super::time_ms(r.finished_at),
        r.status,
        r.manifests_deleted,
        r.links_removed,
        r.blobs_deleted,
        r.bytes_freed
    );
    if !r.detail.is_empty() {
        text.push_str(&r.detail);
        text.push('\n');
    }
    Ok(([("content-type", "text/plain; charset=utf-8")], text).into_response())
}

/// `GET /system/gc/schedule`: the schedule set here, else `gc.interval` as Harbor's types.
pub async fn schedule(State(api): State<Api>, caller: Caller) -> ApiResult {
    caller.sysadmin()?;
    if let Some(set) = api.core.schedule(crate::gc::SCHEDULE).await? {
        let next = Schedule::parse(&set.cron)
            .ok()
            .and_then(|c| c.next())
            .map(super::time_ms);
        return super::json(&json!({
            "job_name": "GARBAGE_COLLECTION",
            "job_kind": "SCHEDULE",
            "schedule": {"type": schedule::kind_of(&set.cron), "cron": set.cron,
                         "next_scheduled_time": next},
            "job_parameters": set.parameters.to_string(),
            "parameters": set.parameters,
            "creation_time": super::time_ms(set.created_at),
            "update_time": super::time_ms(set.updated_at),
        }));
    }
    let secs = api.settings.gc_interval.as_secs();
    let (kind, cron) = match secs {
        0 => ("None", ""),
        3600 => ("Hourly", "0 0 * * * *"),
        86400 => ("Daily", "0 0 0 * * *"),
        604800 => ("Weekly", "0 0 0 * * 0"),
        _ => ("Custom", ""),
    };
    super::json(&json!({
        "schedule": {"type": kind, "cron": cron, "interval_seconds": secs},
        "parameters": {"delete_untagged": false, "dry_run": false},
    }))
}

#[derive(Deserialize)]
struct ScheduleReq {
    schedule: ScheduleObj,
    #[serde(default)]
    parameters: Parameters,
}

#[derive(Deserialize)]
struct ScheduleObj {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    cron: String,
}

#[derive(Deserialize, Default, serde::Serialize)]
struct Parameters {
    #[serde(default)]
    delete_untagged: bool,
    #[serde(default)]
    dry_run: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    workers: Option<u64>,
}

/// `POST /system/gc/schedule`: `Manual` asks for a run now; `Hourly`, `Daily`, `Weekly` or
/// `Custom` (with `cron`, seconds first) sets the schedule every instance follows (over
/// `gc.interval`); `None` removes it. 201.
pub async fn create_schedule(State(api): State<Api>, caller: Caller, raw: Bytes) -> ApiResult {
    set_schedule(&api, &caller, &raw).await?;
    Ok(StatusCode::CREATED.into_response())
}

/// `PUT /system/gc/schedule`: as `POST`, answering 200 (201 for `Manual`).
pub async fn update_schedule(State(api): State<Api>, caller: Caller, raw: Bytes) -> ApiResult {
    let status = set_schedule(&api, &caller, &raw).await?;
    Ok(status.into_response())
}

async fn set_schedule(api: &Api, caller: &Caller, raw: &Bytes) -> Result<StatusCode, ApiError> {
    caller.sysadmin()?;
    let req: ScheduleReq = body(raw)?;
    let p = &req.parameters;
    if let Some(w) = p
        .workers
        .filter(|w| *w == 0 || *w as usize > crate::gc::MAX_PARALLELISM)
    {
        return Err(ApiError::bad_request(format!(
            "parameters.workers is 1 to {}, not {w}",
            crate::gc::MAX_PARALLELISM
        )));
    }
    let accounts = caller.accounts(api);
    match req.schedule.kind.as_str() {
        "Manual" => {
            let by = caller.principal.name().to_string();
            api.core
                .request_collection(&by, p.dry_run, p.delete_untagged)
                .await?;
            let what = if p.dry_run { "dry run" } else { "run" };
            accounts.record("create", "gc", what).await;
            Ok(StatusCode::CREATED)
        }
        "None" => {
            api.core.set_schedule(crate::gc::SCHEDULE, None).await?;
            accounts.record("delete", "schedule", "gc").await;
            Ok(StatusCode::OK)
        }
        kind => {
            let cron = match schedule::preset(kind) {
                Some(Some(cron)) => cron.to_string(),
                Some(None) => req.schedule.cron.clone(),
                None => {
                    return Err(ApiError::bad_request(format!(
                        "schedule type {kind:?} is none of Hourly, Daily, Weekly, Custom, \
                         None, Manual"
                    )))
                }
            };
            let cron = Schedule::parse(&cron).map_err(ApiError::bad_request)?;
            let params = serde_json::to_value(p).expect("parameters serialize");
            api.core
                .set_schedule(crate::gc::SCHEDULE, Some((cron.text(), params)))
                .await?;
            accounts.record("update", "schedule", "gc").await;
            Ok(StatusCode::OK)
        }
    }
}
