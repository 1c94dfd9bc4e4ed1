//! Retention policies in Harbor's shapes: `/retentions` (one policy per project, whose
//! `scope.ref` is the project's id), `/retentions/{id}/executions` (a run, dry or real, and the
//! history of runs) and `.../executions/{eid}/tasks` (what each repository kept and lost), and
//! `/retentions/metadatas` (the templates). Project admins and maintainers manage a project's
//! policy; its members read it.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::request::Parts;
use serde::Deserialize;
use serde_json::{json, Value};

use super::rules::rule_keeper;
use super::{body, created, ok, paged, paging, query, readable, Api, ApiError, ApiResult, Caller};
use crate::auth::accounts::{PageRequest, RetentionExecution, RetentionRecord};
use crate::gc::retention;

fn policy_id(id: &str) -> Result<i64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::bad_request(format!("{id:?} is not a retention policy id")))
}

/// The policy `id` and its project, for a caller who may read it (`manage`: change it).
async fn policy_for(
    api: &Api,
    caller: &Caller,
    parts: &Parts,
    id: &str,
    manage: bool,
) -> Result<(RetentionRecord, super::Standing), ApiError> {
    let record = api.accounts.retention(policy_id(id)?).await?;
    let project = record.project_id.to_string();
    let st = if manage {
        rule_keeper(api, caller, parts, &project).await?
    } else {
        readable(api, caller, parts, &project).await?
    };
    if !manage && st.role().is_none() && !st.sysadmin {
        return Err(caller.refuse("only members of the project see its retention policy"));
    }
    Ok((record, st))
}

/// Checks a policy as given; the project id of its scope.
fn checked(policy: &Value) -> Result<i64, ApiError> {
    retention::parse(policy).map_err(ApiError::bad_request)?;
    if policy["scope"]["level"].as_str().unwrap_or("project") != "project" {
        return Err(ApiError::bad_request(
            "a retention policy's scope level is project",
        ));
    }
    retention::schedule_of(policy).map_err(ApiError::bad_request)?;
    policy["scope"]["ref"]
        .as_i64()
        .ok_or_else(|| ApiError::bad_request("scope.ref must be the project's id"))
}

fn policy_json(r: &RetentionRecord) -> Value {
    let mut p = r.policy.clone();
    p["id"] = json!(r.id);
    p["scope"] = json!({"level": "project", "ref": r.project_id});
    p
}

/// `GET /retentions/metadatas`.
pub async fn metadatas(caller: Caller) -> ApiResult {
    caller.authenticated()?;
    let selector = |kind: &str, decorations: &[&str]| json!({"display_text": kind, "kind": "doublestar", "decorations": decorations});
    super::json(&json!({
        "templates": retention::templates(),
        "scope_selectors": [selector("Repositories", &["repoMatches", "repoExcludes"])],
        "tag_selectors": [selector("Tags", &["matches", "excludes"])],
    }))
}

/// `POST /retentions`.
pub async fn create(State(api): State<Api>, caller: Caller, parts: Parts, raw: Bytes) -> ApiResult {
    let policy: Value = body(&raw)?;
    let project = checked(&policy)?;
    let st = rule_keeper(&api, &caller, &parts, &project.to_string()).await?;
    let id = caller
        .accounts(&api)
        .add_retention(&st.project, &policy)
        .await?;
    created(&parts, &id.to_string(), None)
}

/// `GET /retentions/{id}`.
pub async fn get(
    State(api): State<Api>,
    caller: Caller,
    parts: Parts,
    Path(id): Path<String>,
) -> ApiResult {
    let (record, _) = policy_for(&api, &caller, &parts, &id, false).await?;
    super::json(&policy_json(&record))
}

/// `PUT /retentions/{id}`.
pub async fn update(
    State(api): State<Api>,
    caller: Caller,
    parts: Parts,
    Path(id): Path<String>,
    raw: Bytes,
) -> ApiResult {
    let (record, st) = policy_for(&api, &caller, &parts, &id, true).await?;
    let policy: Value = body(&raw)?;
    let project = checked(&policy)?;
    if project != record.project_id {
        return Err(ApiError::bad_request("a policy stays with its project"));
    }
    caller
        .accounts(&api)
        .update_retention(&st.project, &record, &policy)
        .await?;
    ok()
}

/// `DELETE /retentions/{id}`.
pub async fn delete(
    State(api): State<Api>,
    caller: Caller,
    parts: Parts,
    Path(id): Path<String>,
) -> ApiResult {
    let (record, st) = policy_for(&api, &caller, &parts, &id, true).await?;
    caller
        .accounts(&api)
        .remove_retention(&st.project, &record)
        .await?;
    ok()
}

#[derive(Deserialize, Default)]
struct RunReq {
    #[serde(default)]
    dry_run: bool,
}

fn execution_json(e: &RetentionExecution) -> Value {
    json!({
        "id": e.id,
        "policy_id": e.policy_id,
        "start_time": super::time_ms(e.started_at),
        "end_time": super::time_ms(e.finished_at),
        "status": e.status,
        "trigger": e.trigger,
        "dry_run": e.dry_run,
    })
}

/// `POST /retentions/{id}/executions`: `{"dry_run": true}` lists what would go. The run is
/// done when the answer comes.
pub async fn execute(
    State(api): State<Api>,
    caller: Caller,
    parts: Parts,
    Path(id): Path<String>,
    raw: Bytes,
) -> ApiResult {
    let (record, st) = policy_for(&api, &caller, &parts, &id, true).await?;
    let req: RunReq = if raw.is_empty() {
        RunReq::default()
    } else {
        body(&raw)?
    };
    let run = crate::registry::events::with_request(
        caller.request_context(&api, &parts),
        retention::execute(
            &api.core,
            api.accounts.store().as_ref(),
            &st.project,
            &record,
            req.dry_run,
            "MANUAL",
        ),
    )
    .await
    .map_err(ApiError::bad_request)?;
    created(&parts, &run.id.to_string(), None)
}

/// `GET /retentions/{id}/executions`, newest first.
pub async fn executions(
    State(api): State<Api>,
    caller: Caller,
    parts: Parts,
    Path(id): Path<String>,
) -> ApiResult {
    let (record, _) = policy_for(&api, &caller, &parts, &id, false).await?;
    let page = paging(&query(&parts))?;
    let l = api.accounts.retention_executions(record.id, page).await?;
    let items: Vec<Value> = l.items.iter().map(execution_json).collect();
    paged(&parts, page, l.total, &items)
}

/// `GET /retentions/{id}/executions/{eid}/tasks`: one task per repository.
pub async fn tasks(
    State(api): State<Api>,
    caller: Caller,
    parts: Parts,
    Path((id, eid)): Path<(String, String)>,
) -> ApiResult {
    let (record, _) = policy_for(&api, &caller, &parts, &id, false).await?;
    let eid: i64 = eid
        .parse()
        .map_err(|_| ApiError::bad_request(format!("{eid:?} is not an execution id")))?;
    let everything = PageRequest {
        page: 1,
        page_size: 10_000,
    };
    let all = api
        .accounts
        .retention_executions(record.id, everything)
        .await?;
    let run = all
        .items
        .into_iter()
        .find(|e| e.id == eid)
        .ok_or_else(|| ApiError::not_found(format!("execution {eid} not found")))?;
    let page = paging(&query(&parts))?;
    let tasks: Vec<Value> = run
        .tasks
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, mut t)| {
            t["id"] = json!(i + 1);
            t["execution_id"] = json!(run.id);
            t["status"] = json!(run.status);
            t
        })
        .collect();
    let items = super::slice(&tasks, page);
    paged(&parts, page, tasks.len() as i64, &items)
}
