//! `/projects` and `/projects/{p}/members`: projects, who may see them, and their members.
//!
//! Any logged-in user creates projects (and becomes their project admin); public projects are
//! read by anybody, private ones by their members; project admins and system administrators
//! change a project and its members.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    body, created, managed, ok, paged, paging, param, query, readable, slice, standing_in, time_ms,
    Api, ApiError, ApiResult, Caller, Code, Standing,
};
use crate::auth::accounts::{check_project_name, Member, MemberEntity, PageRequest};
use crate::auth::rbac::Role;
use crate::auth::Principal;

/// A project as Harbor shows one, for the caller standing in it.
async fn project_json(api: &Api, st: &Standing) -> Result<Value, ApiError> {
    let p = &st.project;
    let owner_name = match p.owner_id {
        Some(id) => api
            .accounts
            .user_by_id(id)
            .await
            .map(|u| u.username)
            .unwrap_or_default(),
        None => String::new(),
    };
    let repos = api.accounts.repository_count(&p.name).await?;
    let role = st.role().map_or(0, Role::id);
    let mut roles = st.roles.clone();
    roles.sort();
    roles.dedup();
    Ok(json!({
        "project_id": p.id,
        "name": p.name,
        "owner_id": p.owner_id.unwrap_or(0),
        "owner_name": owner_name,
        "registry_id": p.registry_id,
        "creation_time": time_ms(p.created_at),
        "update_time": time_ms(p.updated_at),
        "deleted": false,
        "togglable": st.manages(),
        "repo_count": repos,
        "current_user_role_id": role,
        "current_user_role_ids": roles,
        "metadata": metadata_json(p),
    }))
}

/// Harbor's project metadata (strings): `public`, and `delete_untagged` when the project says
/// whether garbage collection deletes its untagged manifests.
fn metadata_json(p: &crate::auth::accounts::Project) -> Value {
    let mut m = json!({"public": p.public.to_string()});
    if let Some(d) = p.delete_untagged {
        m["delete_untagged"] = json!(d.to_string());
    }
    m
}

#[derive(Deserialize)]
struct ProjectReq {
    project_name: Option<String>,
    public: Option<bool>,
    metadata: Option<Metadata>,
    /// Bytes the project may store (-1: no quota); only system administrators set one.
    storage_limit: Option<i64>,
    registry_id: Option<i64>,
}

#[derive(Deserialize)]
struct Metadata {
    public: Option<String>,
    delete_untagged: Option<String>,
}

impl ProjectReq {
    /// Whether the request makes the project public: `metadata.public`, else the deprecated
    /// `public`; `None` when neither says.
    fn public(&self) -> Result<Option<bool>, ApiError> {
        if let Some(v) = self.metadata.as_ref().and_then(|m| m.public.as_deref()) {
            return match v.to_ascii_lowercase().as_str() {
                "true" => Ok(Some(true)),
                "false" => Ok(Some(false)),
                _ => Err(ApiError::bad_request(format!(
                    "metadata.public must be \"true\" or \"false\", not {v:?}"
                ))),
            };
        }
        Ok(self.public)
    }

    /// Whether the request says if garbage collection deletes the project's untagged
    /// manifests: `Some(None)` for `""` (as each run says).
    fn delete_untagged(&self) -> Result<Option<Option<bool>>, ApiError> {
        let Some(v) = self
            .metadata
            .as_ref()
            .and_then(|m| m.delete_untagged.as_deref())
        else {
            return Ok(None);
        };
        match v.to_ascii_lowercase().as_str() {
            "true" => Ok(Some(Some(true))),
            "false" => Ok(Some(Some(false))),
            "" => Ok(Some(None)),
            _ => Err(ApiError::bad_request(format!(
                "metadata.delete_untagged must be \"true\", \"false\" or \"\", not {v:?}"
            ))),
        }
    }
}

/// `POST /projects`.
pub async fn create(State(api): State<Api>, caller: Caller, parts: Parts, raw: Bytes) -> ApiResult {
    let owner = caller.user()?;
    let req: ProjectReq = body(&raw)?;
    // A proxy-cache project mirrors a registry only system administrators manage.
    if let Some(id) = req.registry_id {
        caller.sysadmin()?;
        let found = api
            .accounts
            .store()
            .registry(id)
            .await
            .map_err(|e| ApiError::from(crate::auth::accounts::AccountError::from(e)))?;
        if found.is_none() {
            return Err(ApiError::bad_request(format!(
                "registry {id} does not exist: add it with POST /registries first"
            )));
        }
    }
    let Some(name) = req.project_name.as_deref() else {
        return Err(ApiError::bad_request("project_name is required"));
    };
    check_project_name(name)?;
    let public = req.public()?.unwrap_or(false);
    let delete_untagged = req.delete_untagged()?;
    let limit = req.storage_limit.filter(|l| *l != -1);
    if limit.is_some() {
        caller.sysadmin()?;
    }
    let accounts = caller.accounts(&api);
    let project = accounts.add_project(name, public, Some(owner.id)).await?;
    if let Some(limit) = limit {
        accounts.set_storage_limit(&project, limit).await?;
    }
    if let Some(d) = delete_untagged {
        accounts.set_untagged_collection(&project, d).await?;
    }
    if let Some(id) = req.registry_id {
        api.accounts
            .store()
            .set_project_registry(project.id, Some(id))
            .await
            .map_err(|e| ApiError::from(crate::auth::accounts::AccountError::from(e)))?;
    }
    let by_name = super::super::header_str(&parts.headers, "x-resource-name-in-location")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let id = if by_name {
        project.name.clone()
    } else {
        project.id.to_string()
    };
    created(&parts, &id, None)
}

/// `HEAD /projects?project_name=`: 200 if the project exists, else 404.
pub async fn head(State(api): State<Api>, caller: Caller, parts: Parts) -> ApiResult {
    caller.authenticated()?;
    let q = query(&parts);
    let Some(name) = param(&q, "project_name") else {
        return Err(ApiError::bad_request(
            "the project_name parameter is required",
        ));
    };
    match api.accounts.store().project_by_name(name).await {
        Ok(Some(_)) => ok(),
        Ok(None) => Ok(StatusCode::NOT_FOUND.into_response()),
        Err(e) => Err(ApiError::new(Code::UNAVAILABLE, e.to_string())),
    }
}

/// `GET /projects`: those the caller may see (`name` contains, `public`, `owner`).
pub async fn list(State(api): State<Api>, caller: Caller, parts: Parts) -> ApiResult {
    let q = query(&parts);
    let page = paging(&q)?;
    // `q` says the same as the parameters: name (exact or `=~`), public, owner.
    let filter = super::Filter::parse(param(&q, "q"))?;
    filter.only(&["name", "public", "owner"])?;
    let (name, exact) = match (param(&q, "name"), filter.text("name")) {
        (Some(n), _) => (Some(n), false),
        (None, Some((n, fuzzy))) => (Some(n), !fuzzy),
        (None, None) => (None, false),
    };
    let public_text = param(&q, "public").or(filter.text("public").map(|(v, _)| v));
    let owner_name = param(&q, "owner").or(filter.text("owner").map(|(v, _)| v));
    let public = match public_text {
        None => None,
        Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => Some(true),
        Some(v) if v.eq_ignore_ascii_case("false") || v == "0" => Some(false),
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "public must be true or false, not {v:?}"
            )))
        }
    };
    let owner = match owner_name {
        Some(o) => Some(api.accounts.user(o).await.map(|u| u.id).unwrap_or(-1)),
        None => None,
    };
    let none: &[i64] = &[];
    let visible = match &caller.principal {
        _ if caller.is_sysadmin() => None,
        Principal::User { user, groups } => Some((user.id, groups.as_slice())),
        _ => Some((-1, none)),
    };
    let listing = match owner {
        // Filters the store cannot apply run over the caller's whole view.
        _ if owner.is_some() || exact => {
            let all = api
                .accounts
                .projects(
                    name,
                    public,
                    visible,
                    PageRequest {
                        page: 1,
                        page_size: u32::MAX >> 1,
                    },
                )
                .await?;
            let mine: Vec<_> = all
                .items
                .into_iter()
                .filter(|p| owner.is_none() || p.owner_id == owner)
                .filter(|p| !exact || Some(p.name.as_str()) == name)
                .collect();
            crate::auth::accounts::Listing {
                total: mine.len() as i64,
                items: slice(&mine, page),
            }
        }
        _ => api.accounts.projects(name, public, visible, page).await?,
    };
    let mut items = Vec::new();
    for p in listing.items {
        let st = standing_in(&api, &caller, p).await?;
        items.push(project_json(&api, &st).await?);
    }
    paged(&parts, page, listing.total, &items)
}

/// `GET /projects/{project_name_or_id}`.
pub async fn get(
    State(api): State<Api>,
    caller: Caller,
    parts: Parts,
    Path(p): Path<String>,
) -> ApiResult {
    let st = readable(&api, &caller, &parts, &p).await?;
    super::json(&project_json(&api, &st).await?)
}

/// `PUT /projects/{project_name_or_id}`: `metadata.public` (or `public`) and
/// `metadata.delete_untagged`.
pub async fn update(
    State(api): State<Api>,
    caller: Caller,
    parts: Parts,
    Path(p): Path<String>,
    raw: Bytes,
) -> ApiResult {
    let st = managed(&api, &caller, &parts, &p).await?;
    let req: ProjectReq = body(&raw)?;
    let delete_untagged = req.delete_untagged()?;
    let accounts = caller.accounts(&api);
    if let Some(public) = req.public()? {
        accounts.set_project_public(&st.project, public).await?;
    }
    if let Some(d) = delete_untagged {
        accounts.set_untagged_collection(&st.project, d).await?;
    }
    ok()
}

/// `DELETE /projects/{project_name_or_id}`: 412 while the project still has repositories.
pub async fn delete(
    State(api): State<Api>,
    caller: Caller,
    parts: Parts,
    Path(p): Path<String>,
) -> ApiResult {
    let st = managed(&api, &caller, &parts, &p).await?;
    let repos = api.accounts.repository_count(&st.project.name).await?;
    if repos > 0 {
        return Err(ApiError::new(
            Code::PRECONDITION,
            format!(
                "project {} still has {} repositories: delete them first",
                st.project.name, repos
            ),
        ));
    }
    caller.accounts(&api).remove_project(&st.project).await?;
    ok()
}

// ---- members --------------------------------------------------------------------------------

fn member_json(m: &Member) -> Value {
    let (kind, id) = match m.entity {
        MemberEntity::User(id) => ("u", id),
        MemberEntity::Group(id) => ("g", id),
    };
    json!({
        "id": m.id,
        "project_id": m.project_id,
        "entity_name": m.entity_name,
        "entity_id": id,
        "entity_type": kind,
        "role_id": m.role,
        "role_name": Role::from_id(m.role).map_or("", Role::name),
    })
}

#[derive(Deserialize)]
struct NewMember {
    role_id: i64,
    member_user: Option<MemberUser>,
    member_group: Option<MemberGroup>,
}

#[derive(Deserialize)]
struct MemberUser {
    user_id: Option<i64>,
    username: Option<String>,
}

#[derive(Deserialize)]
struct MemberGroup {
    id: Option<i64>,
    group_name: Option<String>,
    group_type: Option<i64>,
    ldap_group_dn: Option<String>,
}

#[derive(Deserialize)]
struct RoleReq {
    role_id: i64,
}

fn member_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::bad_request(format!("invalid member id {raw:?}")))
}

/// A project whose members the caller may see.
async fn members_visible(
    api: &Api,
    caller: &Caller,
    parts: &Parts,
    p: &str,
) -> Result<Standing, ApiError> {
    let st = readable(api, caller, parts, p).await?;
    if !st.sees_members() {
        return Err(caller.refuse(&format!(
            "only members of {} (not limited guests) see its members",
            st.project.name
        )));
    }
    Ok(st)
}

/// `GET /projects/{p}/members` (`entityname` contains).
pub async fn members(
    State(api): State<Api>,
    caller: Caller,
    parts: Parts,
    Path(p): Path<String>,
) -> ApiResult {
    let st = members_visible(&api, &caller, &parts, &p).await?;
    let q = query(&parts);
    let page = paging(&q)?;
    let mut all = api.accounts.members(st.project.id).await?;
    if let Some(name) = param(&q, "entityname") {
        all.retain(|m| m.entity_name.contains(name));
    }
    let items: Vec<Value> = slice(&all, page).iter().map(member_json).collect();
    paged(&parts, page, all.len() as i64, &items)
}

/// `POST /projects/{p}/members`: a user (by id or name) or an LDAP group with a role.
pub async fn add_member(
    State(api): State<Api>,
    caller: Caller,
    parts: Parts,
    Path(p): Path<String>,
    raw: Bytes,
) -> ApiResult {
    let st = managed(&api, &caller, &parts, &p).await?;
    let req: NewMember = body(&raw)?;
    let project = &st.project;
    let id = match (&req.member_user, &req.member_group) {
        (Some(u), _) => {
            let user = match (u.user_id, u.username.as_deref()) {
                (Some(id), _) => api.accounts.user_by_id(id).await?,
                (None, Some(name)) => api.accounts.user(name).await?,
                (None, None) => {
                    return Err(ApiError::bad_request(
                        "member_user needs user_id or username",
                    ))
                }
            };
            caller
                .accounts(&api)
                .add_user_member(project, &user.username, req.role_id)
                .await?
        }
        (None, Some(g)) => {
            if g.group_type.is_some_and(|t| t != 1) {
                return Err(ApiError::bad_request(
                    "only LDAP groups (group_type 1) can be members",
                ));
            }
            let (name, dn) = match g.id {
                Some(id) => {
                    let group = api.accounts.group(id).await?;
                    (group.name, group.ldap_dn)
                }
                None => {
                    let dn = g.ldap_group_dn.clone().unwrap_or_default();
                    (g.group_name.clone().unwrap_or_else(|| dn.clone()), dn)
                }
            };
            caller
                .accounts(&api)
                .add_group_member(project, &name, &dn, req.role_id)
                .await?
        }
        (None, None) => {
            return Err(ApiError::bad_request(
                "a member needs member_user or member_group",
            ))
        }
    };
    created(&parts, &id.to_string(), None)
}

/// `GET /projects/{p}/members/{mid}`.
pub async fn member(
    State(api): State<Api>,
    caller: Caller,
    parts: Parts,
    Path((p, mid)): Path<(String, String)>,
) -> ApiResult {
    let st = members_visible(&api, &caller, &parts, &p).await?;
    let m = api.accounts.member(st.project.id, member_id(&mid)?).await?;
    super::json(&member_json(&m))
}

/// `PUT /projects/{p}/members/{mid}`: `{"role_id": …}`.
pub async fn update_member(
    State(api): State<Api>,
    caller: Caller,
    parts: Parts,
    Path((p, mid)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult {
    let st = managed(&api, &caller, &parts, &p).await?;
    let req: RoleReq = body(&raw)?;
    let m = api.accounts.member(st.project.id, member_id(&mid)?).await?;
    caller
        .accounts(&api)
        .set_member_role(&st.project, &m, req.role_id)
        .await?;
    ok()
}

/// `DELETE /projects/{p}/members/{mid}`.
pub async fn delete_member(
    State(api): State<Api>,
    caller: Caller,
    parts: Parts,
    Path((p, mid)): Path<(String, String)>,
) -> ApiResult {
    let st = managed(&api, &caller, &parts, &p).await?;
    let m = api.accounts.member(st.project.id, member_id(&mid)?).await?;
    caller.accounts(&api).remove_member(&st.project, &m).await?;
    ok()
}
