//! A project's content rules in Harbor's shapes: `/projects/{p}/immutabletagrules` (immutable
//! tag rules: any member lists them; project admins and maintainers change them), `/quotas`
//! (storage quotas: system administrators) and `/projects/{p}/summary` (usage against quota).
//!
//! Quotas count every blob and manifest a project stores once, however many of its
//! repositories link it; a blob shared by two projects counts for each.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{body, created, ok, paged, paging, param, query, readable};
use super::{Api, ApiError, ApiResult, Caller, Standing};
use crate::auth::accounts::{ImmutableRule, Project};
use crate::auth::rbac::Role;

#[derive(Deserialize, Serialize)]
struct Selector {
    #[serde(default = "doublestar")]
    kind: String,
    decoration: String,
    pattern: String,
}

fn doublestar() -> String {
    "doublestar".into()
}

#[derive(Deserialize, Serialize, Default)]
struct Scopes {
    #[serde(default)]
    repository: Vec<Selector>,
}

/// Harbor's `ImmutableRule`.
#[derive(Deserialize)]
struct RuleReq {
    #[serde(default)]
    disabled: bool,
    #[serde(default)]
    priority: i64,
    #[serde(default)]
    tag_selectors: Vec<Selector>,
    #[serde(default)]
    scope_selectors: Scopes,
}

impl RuleReq {
    /// The one tag selector and one repository selector Harbor's rules have.
    fn rule(self, id: i64) -> Result<ImmutableRule, ApiError> {
        let one = |v: Vec<Selector>, what: &str| {
            let mut v = v;
            match v.len() {
                1 => {
                    let s = v.remove(0);
                    if s.kind != "doublestar" {
                        return Err(ApiError::bad_request(format!(
                            "{what} selectors are of kind doublestar, not {:?}",
                            s.kind
                        )));
                    }
                    Ok(s)
                }
                n => Err(ApiError::bad_request(format!(
                    "a rule has exactly one {what} selector, not {n}"
                ))),
            }
        };
        let tag = one(self.tag_selectors, "tag")?;
        let repo = one(self.scope_selectors.repository, "repository")?;
        Ok(ImmutableRule {
            id,
            project_id: 0,
            priority: self.priority,
            disabled: self.disabled,
            tag_pattern: tag.pattern,
            tag_decoration: tag.decoration,
            repo_pattern: repo.pattern,
            repo_decoration: repo.decoration,
        })
    }
}

fn rule_json(r: &ImmutableRule) -> Value {
    json!({
        "id": r.id,
        "project_id": r.project_id,
        "disabled": r.disabled,
        "priority": r.priority,
        "action": "immutable",
        "template": "immutable_template",
        "tag_selectors": [Selector {
            kind: doublestar(),
            decoration: r.tag_decoration.clone(),
            pattern: r.tag_pattern.clone(),
        }],
        "scope_selectors": {"repository": [Selector {
            kind: doublestar(),
            decoration: r.repo_decoration.clone(),
            pattern: r.repo_pattern.clone(),
        }]},
    })
}

/// Project admins, maintainers and system administrators change a project's rules.
pub(super) async fn rule_keeper(
    api: &Api,
    caller: &Caller,
    parts: &Parts,
    p: &str,
) -> Result<Standing, ApiError> {
    let st = readable(api, caller, parts, p).await?;
    let keeps = st.sysadmin || matches!(st.role(), Some(Role::ProjectAdmin | Role::Maintainer));
    if !keeps {
        return Err(caller.refuse(&format!(
            "only project admins and maintainers of {} change its immutable tag rules",
            st.project.name
        )));
    }
    Ok(st)
}

fn rule_id(id: &str) -> Result<i64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::bad_request(format!("{id:?} is not a rule id")))
}

/// `GET /projects/{p}/immutabletagrules`.
pub async fn list(
    State(api): State<Api>,
    caller: Caller,
    parts: Parts,
    Path(p): Path<String>,
) -> ApiResult {
    let st = readable(&api, &caller, &parts, &p).await?;
    if st.role().is_none() && !st.sysadmin {
        return Err(caller.refuse(&format!(
            "only members of {} see its immutable tag rules",
            st.project.name
        )));
    }
    let page = paging(&query(&parts))?;
    let rules = api.accounts.immutable_rules(&st.project).await?;
    let items: Vec<Value> = super::slice(&rules, page).iter().map(rule_json).collect();
    paged(&parts, page, rules.len() as i64, &items)
}

/// `POST /projects/{p}/immutabletagrules`.
pub async fn create(
    State(api): State<Api>,
    caller: Caller,
    parts: Parts,
    Path(p): Path<String>,
    raw: Bytes,
) -> ApiResult {
    let st = rule_keeper(&api, &caller, &parts, &p).await?;
    let rule = body::<RuleReq>(&raw)?.rule(0)?;
    let id = caller
        .accounts(&api)
        .add_immutable_rule(&st.project, rule)
        .await?;
    created(&parts, &id.to_string(), None)
}

/// `PUT /projects/{p}/immutabletagrules/{id}`.
pub async fn update(
    State(api): State<Api>,
    caller: Caller,
    parts: Parts,
    Path((p, id)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult {
    let st = rule_keeper(&api, &caller, &parts, &p).await?;
    let rule = body::<RuleReq>(&raw)?.rule(rule_id(&id)?)?;
    caller
        .accounts(&api)
        .update_immutable_rule(&st.project, rule)
        .await?;
    ok()
}

/// `DELETE /projects/{p}/immutabletagrules/{id}`.
pub async fn delete(
    State(api): State<Api>,
    caller: Caller,
    parts: Parts,
    Path((p, id)): Path<(String, String)>,
) -> ApiResult {
    let st = rule_keeper(&api, &caller, &parts, &p).await?;
    caller
        .accounts(&api)
        .remove_immutable_rule(&st.project, rule_id(&id)?)
        .await?;
    ok()
}

// ---- quotas ----------------------------------------------------------------------------------

/// Harbor's `Quota` of a project (its id is the project's).
async fn quota_json(api: &Api, p: &Project) -> Result<Value, ApiError> {
    let used = api.core.namespace_usage(&p.name).await?;
    let owner = match p.owner_id {
        Some(id) => api
            .accounts
            .user_by_id(id)
            .await
            .map(|u| u.username)
            .unwrap_or_default(),
        None => String::new(),
    };
    Ok(json!({
        "id": p.id,
        "ref": {"id": p.id, "name": p.name, "owner_name": owner},
        "creation_time": super::time_ms(p.created_at),
        "update_time": super::time_ms(p.updated_at),
        "hard": {"storage": p.storage_limit},
        "used": {"storage": used},
    }))
}

/// `GET /quotas`: `reference=project` and `reference_id` narrow it to one project.
pub async fn quotas(State(api): State<Api>, caller: Caller, parts: Parts) -> ApiResult {
    caller.sysadmin()?;
    let q = query(&parts);
    let page = paging(&q)?;
    if let Some(kind) = param(&q, "reference").filter(|k| *k != "project") {
        return Err(ApiError::bad_request(format!(
            "quotas are per project: reference={kind} is not one"
        )));
    }
    let (projects, total) = match param(&q, "reference_id") {
        Some(id) => match api.accounts.project(id).await {
            Ok(p) => (vec![p], 1),
            Err(_) => (Vec::new(), 0),
        },
        None => {
            let l = api.accounts.projects(None, None, None, page).await?;
            (l.items, l.total)
        }
    };
    let mut items = Vec::new();
    for p in &projects {
        items.push(quota_json(&api, p).await?);
    }
    paged(&parts, page, total, &items)
}

/// `GET /quotas/{id}`.
pub async fn quota(State(api): State<Api>, caller: Caller, Path(id): Path<String>) -> ApiResult {
    caller.sysadmin()?;
    let p = api.accounts.project(&rule_id(&id)?.to_string()).await?;
    super::json(&quota_json(&api, &p).await?)
}

#[derive(Deserialize)]
struct QuotaReq {
    hard: Hard,
}

#[derive(Deserialize)]
struct Hard {
    storage: i64,
}

/// `PUT /quotas/{id}`: `{"hard": {"storage": bytes}}`, `-1` for none.
pub async fn set_quota(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
    raw: Bytes,
) -> ApiResult {
    caller.sysadmin()?;
    let req: QuotaReq = body(&raw)?;
    let p = api.accounts.project(&rule_id(&id)?.to_string()).await?;
    caller
        .accounts(&api)
        .set_storage_limit(&p, req.hard.storage)
        .await?;
    ok()
}

/// `GET /projects/{p}/summary`: repositories and usage against quota.
pub async fn summary(
    State(api): State<Api>,
    caller: Caller,
    parts: Parts,
    Path(p): Path<String>,
) -> ApiResult {
    let st = readable(&api, &caller, &parts, &p).await?;
    let repos = api.accounts.repository_count(&st.project.name).await?;
    let quota = quota_json(&api, &st.project).await?;
    super::json(&json!({
        "repo_count": repos,
        "quota": {"hard": quota["hard"], "used": quota["used"]},
    }))
}
