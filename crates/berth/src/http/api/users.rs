//! `/users`: local user accounts. Listing, creating and deleting users is for system
//! administrators; a user reads and edits their own profile and password.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::request::Parts;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    body, created, ok, paged, paging, param, query, time_ms, Api, ApiError, ApiResult, Caller,
    Filter, Term,
};
use crate::auth::accounts::{User, UserSpec, UserUpdate};

/// A user as Harbor shows one.
pub fn user_json(u: &User) -> Value {
    json!({
        "user_id": u.id,
        "username": u.username,
        "email": u.email,
        "realname": u.realname,
        "comment": u.comment,
        "sysadmin_flag": u.sysadmin,
        "admin_role_in_auth": false,
        "creation_time": time_ms(u.created_at),
        "update_time": time_ms(u.updated_at),
    })
}

#[derive(Deserialize)]
struct NewUser {
    username: String,
    password: String,
    #[serde(default, deserialize_with = "super::nullable")]
    email: String,
    #[serde(default, deserialize_with = "super::nullable")]
    realname: String,
    #[serde(default, deserialize_with = "super::nullable")]
    comment: String,
}

#[derive(Deserialize)]
struct Profile {
    email: Option<String>,
    realname: Option<String>,
    comment: Option<String>,
}

#[derive(Deserialize)]
struct PasswordChange {
    #[serde(default)]
    old_password: Option<String>,
    new_password: String,
}

#[derive(Deserialize)]
struct SysadminFlag {
    sysadmin_flag: bool,
}

fn user_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
        ApiError::bad_request(format!("invalid user id {raw:?}: a positive integer"))
    })
}

fn check_email(email: &str) -> Result<(), ApiError> {
    if !email.is_empty() && !email.contains('@') {
        return Err(ApiError::bad_request(format!("invalid email {email:?}")));
    }
    Ok(())
}

/// The user `id` when the caller is that user or a system administrator.
async fn own_or_admin(api: &Api, caller: &Caller, raw: &str) -> Result<User, ApiError> {
    let id = user_id(raw)?;
    let me = caller.user()?;
    if me.id != id && !me.sysadmin {
        return Err(ApiError::forbidden(
            "only the user themself and system administrators may do this",
        ));
    }
    Ok(api.accounts.user_by_id(id).await?)
}

/// `POST /users`.
pub async fn create(State(api): State<Api>, caller: Caller, parts: Parts, raw: Bytes) -> ApiResult {
    caller.sysadmin()?;
    let req: NewUser = body(&raw)?;
    check_email(&req.email)?;
    let user = caller
        .accounts(&api)
        .add_user(UserSpec {
            username: req.username,
            password: req.password,
            email: req.email,
            realname: req.realname,
            comment: req.comment,
            sysadmin: false,
        })
        .await?;
    created(&parts, &user.id.to_string(), None)
}

/// `GET /users`: `q` filters on `username` (exact, or `=~` contains).
pub async fn list(State(api): State<Api>, caller: Caller, parts: Parts) -> ApiResult {
    caller.sysadmin()?;
    let q = query(&parts);
    let page = paging(&q)?;
    let filter = Filter::parse(param(&q, "q"))?;
    filter.only(&["username"])?;
    let (users, total) = match filter.get("username") {
        Some(Term::Exact(name)) => match api.accounts.store().user_by_name(name).await {
            Ok(Some(u)) if page.page == 1 => (vec![u], 1),
            Ok(Some(_)) => (Vec::new(), 1),
            Ok(None) => (Vec::new(), 0),
            Err(e) => return Err(ApiError::new(super::Code::UNAVAILABLE, e.to_string())),
        },
        Some(Term::Fuzzy(name)) => {
            let l = api.accounts.users(Some(name), page).await?;
            (l.items, l.total)
        }
        Some(Term::Range(..)) => return Err(ApiError::bad_request("username takes no range")),
        None => {
            let l = api.accounts.users(None, page).await?;
            (l.items, l.total)
        }
    };
    let items: Vec<Value> = users.iter().map(user_json).collect();
    paged(&parts, page, total, &items)
}

/// `GET /users/search?username=`: ids and names of users whose name contains it, for any
/// logged-in user (to pick members).
pub async fn search(State(api): State<Api>, caller: Caller, parts: Parts) -> ApiResult {
    caller.authenticated()?;
    let q = query(&parts);
    let page = paging(&q)?;
    let Some(name) = param(&q, "username") else {
        return Err(ApiError::bad_request("the username parameter is required"));
    };
    let l = api.accounts.users(Some(name), page).await?;
    let items: Vec<Value> = l
        .items
        .iter()
        .map(|u| json!({"user_id": u.id, "username": u.username}))
        .collect();
    paged(&parts, page, l.total, &items)
}

/// `GET /users/current`.
pub async fn current(caller: Caller) -> ApiResult {
    super::json(&user_json(caller.user()?))
}

/// `GET /users/{user_id}`.
pub async fn get(State(api): State<Api>, caller: Caller, Path(id): Path<String>) -> ApiResult {
    let user = own_or_admin(&api, &caller, &id).await?;
    super::json(&user_json(&user))
}

/// `PUT /users/{user_id}`: email, realname and comment.
pub async fn update(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
    raw: Bytes,
) -> ApiResult {
    let user = own_or_admin(&api, &caller, &id).await?;
    let req: Profile = body(&raw)?;
    if let Some(e) = &req.email {
        check_email(e)?;
    }
    let update = UserUpdate {
        email: req.email,
        realname: req.realname,
        comment: req.comment,
        ..UserUpdate::default()
    };
    caller.accounts(&api).update_user(&user, update).await?;
    ok()
}

/// `DELETE /users/{user_id}`: system administrators, never themselves.
pub async fn delete(State(api): State<Api>, caller: Caller, Path(id): Path<String>) -> ApiResult {
    caller.sysadmin()?;
    let id = user_id(&id)?;
    if caller.user()?.id == id {
        return Err(ApiError::forbidden("you cannot delete your own account"));
    }
    let user = api.accounts.user_by_id(id).await?;
    caller.accounts(&api).remove_user(&user).await?;
    ok()
}

/// `PUT /users/{user_id}/password`: a user gives their old password; a system administrator
/// resets another user's without it.
pub async fn password(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
    raw: Bytes,
) -> ApiResult {
    let user = own_or_admin(&api, &caller, &id).await?;
    let req: PasswordChange = body(&raw)?;
    let me = caller.user()?;
    if me.id == user.id || !me.sysadmin {
        let old = req.old_password.as_deref().unwrap_or("");
        if !api.accounts.password_matches(&user, old).await {
            return Err(ApiError::forbidden("the old password is incorrect"));
        }
        if old == req.new_password {
            return Err(ApiError::bad_request(
                "the new password must differ from the old one",
            ));
        }
    }
    caller
        .accounts(&api)
        .set_password(&user, &req.new_password)
        .await?;
    ok()
}

/// `PUT /users/{user_id}/sysadmin`.
pub async fn sysadmin(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
    raw: Bytes,
) -> ApiResult {
    caller.sysadmin()?;
    let id = user_id(&id)?;
    let req: SysadminFlag = body(&raw)?;
    if caller.user()?.id == id && !req.sysadmin_flag {
        return Err(ApiError::forbidden(
            "you cannot take system administration away from yourself",
        ));
    }
    let user = api.accounts.user_by_id(id).await?;
    let update = UserUpdate {
        sysadmin: Some(req.sysadmin_flag),
        ..UserUpdate::default()
    };
    caller.accounts(&api).update_user(&user, update).await?;
    ok()
}
