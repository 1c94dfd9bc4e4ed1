//! `/audit-logs` (system administrators) and `/projects/{p}/logs` (the project's members): the
//! audit log, newest first, filtered with Harbor's `q` (`operation`, `resource_type`,
//! `resource` (`=~` is a prefix here), `username`, `op_time=[from~to]`).

use axum::extract::{Path, State};
use axum::http::request::Parts;
use serde_json::{json, Value};

use super::{
    paged, paging, param, parse_time, query, readable, time_ms, Api, ApiError, ApiResult, Caller,
    Filter, Term,
};
use crate::auth::accounts::{AuditEntry, AuditQuery};

fn entry_json(e: &AuditEntry) -> Value {
    json!({
        "id": e.id,
        "username": e.username,
        "resource": e.resource,
        "resource_type": e.resource_type,
        "operation": e.operation,
        "op_time": time_ms(e.at),
    })
}

/// The audit query of a request's `q`.
fn audit_query(q: Option<&str>) -> Result<AuditQuery, ApiError> {
    let filter = Filter::parse(q)?;
    filter.only(&[
        "operation",
        "resource_type",
        "resource",
        "username",
        "op_time",
    ])?;
    let mut out = AuditQuery::default();
    let text = |key: &str| filter.text(key).map(|(v, _)| v.to_string());
    out.operation = text("operation");
    out.resource_type = text("resource_type");
    out.resource = text("resource");
    out.username = text("username");
    match filter.get("op_time") {
        Some(Term::Range(from, to)) => {
            out.from_ms = from.as_deref().map(parse_time).transpose()?;
            out.to_ms = to.as_deref().map(parse_time).transpose()?;
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "op_time takes a range: op_time=[from~to]",
            ))
        }
        None => {}
    }
    Ok(out)
}

async fn answer(api: &Api, parts: &Parts, query_of: AuditQuery) -> ApiResult {
    let q = query(parts);
    let page = paging(&q)?;
    let l = api.accounts.audit_log(&query_of, page).await?;
    let items: Vec<Value> = l.items.iter().map(entry_json).collect();
    paged(parts, page, l.total, &items)
}

/// `GET /audit-logs`.
pub async fn list(State(api): State<Api>, caller: Caller, parts: Parts) -> ApiResult {
    caller.sysadmin()?;
    let q = query(&parts);
    let filter = audit_query(param(&q, "q"))?;
    answer(&api, &parts, filter).await
}

/// `GET /projects/{project_name_or_id}/logs`: entries about the project and what is in it.
pub async fn project_logs(
    State(api): State<Api>,
    caller: Caller,
    parts: Parts,
    Path(p): Path<String>,
) -> ApiResult {
    let st = readable(&api, &caller, &parts, &p).await?;
    if !st.sees_members() {
        return Err(caller.refuse(&format!(
            "only members of {} (not limited guests) read its logs",
            st.project.name
        )));
    }
    let q = query(&parts);
    let mut filter = audit_query(param(&q, "q"))?;
    filter.project = Some(st.project.name.clone());
    answer(&api, &parts, filter).await
}
