//! `/robots`: robot accounts (Harbor's v2 robots). System-level robots are for system
//! administrators; a project's robots for its project admins. A robot may refresh its own
//! secret and read itself.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::request::Parts;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    body, created, ok, paged, paging, param, query, standing_in, time_ms, Api, ApiError, ApiResult,
    Caller, Filter,
};
use crate::auth::accounts::{Robot, RobotSpec};
use crate::auth::rbac::RobotPermission;
use crate::auth::Principal;

fn robot_json(r: &Robot) -> Value {
    json!({
        "id": r.id,
        "name": r.name,
        "description": r.description,
        "level": r.level,
        "duration": r.duration,
        "expires_at": r.expires_at,
        "disable": r.disabled,
        "editable": true,
        "permissions": r.permissions,
        "creator_type": "local",
        "creation_time": time_ms(r.created_at),
        "update_time": time_ms(r.updated_at),
    })
}

#[derive(Deserialize)]
struct NewRobot {
    name: String,
    #[serde(default, deserialize_with = "super::nullable")]
    description: String,
    duration: Option<i64>,
    level: String,
    #[serde(default, deserialize_with = "super::nullable")]
    disable: bool,
    permissions: Vec<RobotPermission>,
}

#[derive(Deserialize)]
struct RobotChange {
    description: Option<String>,
    duration: Option<i64>,
    disable: Option<bool>,
    permissions: Option<Vec<RobotPermission>>,
}

#[derive(Deserialize)]
struct RobotSecret {
    #[serde(default, deserialize_with = "super::nullable")]
    secret: String,
}

/// Whether the caller administers robots of `project_id` (`None`: system-level robots).
async fn manages(api: &Api, caller: &Caller, project_id: Option<i64>) -> Result<bool, ApiError> {
    if caller.is_sysadmin() {
        return Ok(true);
    }
    let (Some(id), Principal::User { .. }) = (project_id, &caller.principal) else {
        return Ok(false);
    };
    let project = api.accounts.project(&id.to_string()).await?;
    Ok(standing_in(api, caller, project).await?.manages())
}

/// The robot `raw` when the caller administers it (or is it, when `itself` is allowed).
async fn robot_for(api: &Api, caller: &Caller, raw: &str, itself: bool) -> Result<Robot, ApiError> {
    let id: i64 = raw
        .parse()
        .map_err(|_| ApiError::bad_request(format!("invalid robot id {raw:?}")))?;
    caller.authenticated()?;
    let robot = api
        .accounts
        .store()
        .robot(id)
        .await
        .map_err(|e| ApiError::new(super::Code::UNAVAILABLE, e.to_string()))?;
    let Some(robot) = robot else {
        return Err(ApiError::not_found(format!("robot {id} not found")));
    };
    if itself && matches!(&caller.principal, Principal::Robot(r) if r.id == robot.id) {
        return Ok(robot);
    }
    if !manages(api, caller, robot.project_id).await? {
        return Err(ApiError::forbidden(
            "only system administrators and admins of the robot's project may do this",
        ));
    }
    Ok(robot)
}

/// `POST /robots`.
pub async fn create(State(api): State<Api>, caller: Caller, parts: Parts, raw: Bytes) -> ApiResult {
    let creator = caller.user()?.username.clone();
    let req: NewRobot = body(&raw)?;
    let project = match req.level.as_str() {
        "system" => {
            caller.sysadmin()?;
            None
        }
        "project" => {
            let Some(ns) = req.permissions.first().map(|p| p.namespace.clone()) else {
                return Err(ApiError::bad_request(
                    "a project robot needs a permission naming its project",
                ));
            };
            let project = api.accounts.project(&ns).await?;
            if !manages(&api, &caller, Some(project.id)).await? {
                return Err(ApiError::forbidden(format!(
                    "only project admins of {ns} and system administrators may create its robots"
                )));
            }
            Some(project.name)
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "level must be \"system\" or \"project\", not {other:?}"
            )))
        }
    };
    let (robot, secret) = caller
        .accounts(&api)
        .add_robot(RobotSpec {
            project,
            name: req.name,
            description: req.description,
            duration_days: req.duration.unwrap_or(-1),
            permissions: req.permissions,
            disabled: req.disable,
            creator,
        })
        .await?;
    let body = json!({
        "id": robot.id,
        "name": robot.name,
        "secret": secret,
        "creation_time": time_ms(robot.created_at),
        "expires_at": robot.expires_at,
    });
    created(&parts, &robot.id.to_string(), Some(body))
}

/// `GET /robots`: all for system administrators; a project's (`q=Level=project,ProjectID=N`)
/// for its admins.
pub async fn list(State(api): State<Api>, caller: Caller, parts: Parts) -> ApiResult {
    caller.authenticated()?;
    let q = query(&parts);
    let page = paging(&q)?;
    let filter = Filter::parse(param(&q, "q"))?;
    filter.only(&["Level", "ProjectID", "name"])?;
    let project = match filter.text("ProjectID") {
        Some((v, _)) => Some(v.parse::<i64>().map_err(|_| {
            ApiError::bad_request(format!("ProjectID must be a number, not {v:?}"))
        })?),
        None => None,
    };
    let level = filter.text("Level").map(|(v, _)| v.to_string());
    if project.is_none() && !caller.is_sysadmin() {
        return Err(ApiError::forbidden(
            "only system administrators list every robot; project admins ask with \
             q=Level=project,ProjectID=<id>",
        ));
    }
    if !manages(&api, &caller, project).await? {
        return Err(ApiError::forbidden(
            "only system administrators and the project's admins list its robots",
        ));
    }
    let name = filter.text("name").map(|(v, _)| v.to_string());
    let needs_scan = level.is_some() || name.is_some();
    let fetch = if needs_scan {
        crate::auth::accounts::PageRequest {
            page: 1,
            page_size: u32::MAX >> 1,
        }
    } else {
        page
    };
    let listing = api.accounts.robots(project, fetch).await?;
    let (items, total) = if needs_scan {
        let kept: Vec<Robot> = listing
            .items
            .into_iter()
            .filter(|r| level.as_ref().is_none_or(|l| &r.level == l))
            .filter(|r| name.as_ref().is_none_or(|n| r.name.contains(n.as_str())))
            .collect();
        let total = kept.len() as i64;
        (super::slice(&kept, page), total)
    } else {
        (listing.items, listing.total)
    };
    let items: Vec<Value> = items.iter().map(robot_json).collect();
    paged(&parts, page, total, &items)
}

/// `GET /robots/{robot_id}`.
pub async fn get(State(api): State<Api>, caller: Caller, Path(id): Path<String>) -> ApiResult {
    let robot = robot_for(&api, &caller, &id, true).await?;
    super::json(&robot_json(&robot))
}

/// `PUT /robots/{robot_id}`: description, duration, disable and permissions.
pub async fn update(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
    raw: Bytes,
) -> ApiResult {
    let mut robot = robot_for(&api, &caller, &id, false).await?;
    let req: RobotChange = body(&raw)?;
    if let Some(d) = req.description {
        robot.description = d;
    }
    if let Some(disable) = req.disable {
        robot.disabled = disable;
    }
    if let Some(days) = req.duration {
        if days == 0 || days < -1 {
            return Err(ApiError::bad_request(
                "duration is a number of days, or -1 for never expiring",
            ));
        }
        robot.duration = days;
        robot.expires_at = if days < 0 {
            -1
        } else {
            robot.created_at / 1000 + days * 24 * 3600
        };
    }
    if let Some(perms) = req.permissions {
        let project = match robot.project_id {
            Some(id) => Some(api.accounts.project(&id.to_string()).await?.name),
            None => None,
        };
        crate::auth::rbac::check_robot_permissions(&perms, project.as_deref())
            .map_err(ApiError::bad_request)?;
        robot.permissions = serde_json::to_value(&perms).map_err(ApiError::internal)?;
    }
    caller.accounts(&api).update_robot(&robot).await?;
    ok()
}

/// `PATCH /robots/{robot_id}`: a new secret, generated (`{"secret": ""}`) or given.
pub async fn refresh(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
    raw: Bytes,
) -> ApiResult {
    let robot = robot_for(&api, &caller, &id, true).await?;
    let req: RobotSecret = body(&raw)?;
    let secret = if req.secret.is_empty() {
        caller.accounts(&api).refresh_robot_secret(&robot).await?
    } else {
        caller
            .accounts(&api)
            .set_robot_secret(&robot, &req.secret)
            .await?;
        req.secret
    };
    super::json(&json!({"secret": secret}))
}

/// `DELETE /robots/{robot_id}`.
pub async fn delete(State(api): State<Api>, caller: Caller, Path(id): Path<String>) -> ApiResult {
    let robot = robot_for(&api, &caller, &id, false).await?;
    caller.accounts(&api).remove_robot(&robot).await?;
    ok()
}
