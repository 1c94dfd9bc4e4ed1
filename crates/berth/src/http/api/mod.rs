//! The management API under `/api/v2.0`: users, projects, members, robots, repositories,
//! artifacts, tags and the audit log, with Harbor's API v2.0 paths, JSON fields, status codes
//! and headers for what Berth has, so Harbor's clients drive Berth unchanged.
//!
//! Owns: HTTP Basic authentication of API requests (through [`Builtin::login`], so failed
//! logins are throttled like token requests), Harbor's permission checks, pagination headers
//! (`X-Total-Count`, `Link`) and the error JSON of `error.rs`. Handlers are thin: they parse the
//! request, check who may ask, and call the account operations (`auth::accounts`) or the
//! registry core; every rule about records lives there.
//!
//! Invariants: every answer that is not a success is `{"errors":[{code,message}]}` with a code
//! of [`error::Code`]; a private project is never listed to, nor its contents shown to, a caller
//! without a role in it; `openapi.json` describes exactly the routes of [`router`] (checked by
//! the API's test).

mod artifacts;
mod audit;
pub mod error;
mod gc;
mod projects;
mod registries;
mod retention;
mod robots;
mod rules;
mod system;
mod users;

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::auth::accounts::{Accounts, Actor, PageRequest, Project};
use crate::auth::builtin::LoginError;
use crate::auth::rbac::{Action, Role};
use crate::auth::{Builtin, Principal};
use crate::registry::events::RequestContext;
use crate::registry::Registry;
pub use error::{ApiError, Code};

/// The API's shared state.
pub struct ApiState {
    pub builtin: Arc<Builtin>,
    pub accounts: Accounts,
    pub core: Arc<Registry>,
    pub settings: super::EdgeSettings,
}

type Api = Arc<ApiState>;
type ApiResult = Result<Response, ApiError>;

/// The largest JSON body accepted.
const MAX_BODY: usize = 1 << 20;
/// Harbor's default and largest page sizes.
const DEFAULT_PAGE_SIZE: u32 = 10;
const MAX_PAGE_SIZE: u32 = 100;

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The router of `/api/v2.0` (mounted there by the edge).
pub fn router(core: Arc<Registry>, builtin: Arc<Builtin>, settings: super::EdgeSettings) -> Router {
    let mount = Arc::new(format!("{}/api/v2.0", settings.prefix));
    let state = Arc::new(ApiState {
        accounts: Accounts::new(builtin.store().clone()),
        builtin,
        core,
        settings,
    });
    let project = "/projects/{project_name_or_id}";
    let repo = "/projects/{project_name}/repositories/{repository_name}";
    let artifact = "/projects/{project_name}/repositories/{repository_name}/artifacts/{reference}";
    Router::new()
        .route("/ping", get(system::ping))
        .route("/systeminfo", get(system::systeminfo))
        .route("/health", get(system::health))
        .route("/swagger.json", get(system::openapi))
        .route("/openapi.json", get(system::openapi))
        .route("/users", get(users::list).post(users::create))
        .route("/users/current", get(users::current))
        .route("/users/search", get(users::search))
        .route(
            "/users/{user_id}",
            get(users::get).put(users::update).delete(users::delete),
        )
        .route("/users/{user_id}/password", put(users::password))
        .route("/users/{user_id}/sysadmin", put(users::sysadmin))
        .route(
            "/projects",
            get(projects::list)
                .post(projects::create)
                .head(projects::head),
        )
        .route(
            project,
            get(projects::get)
                .put(projects::update)
                .delete(projects::delete),
        )
        .route(
            &format!("{project}/members"),
            get(projects::members).post(projects::add_member),
        )
        .route(
            &format!("{project}/members/{{mid}}"),
            get(projects::member)
                .put(projects::update_member)
                .delete(projects::delete_member),
        )
        .route(&format!("{project}/logs"), get(audit::project_logs))
        .route(&format!("{project}/summary"), get(rules::summary))
        .route(
            &format!("{project}/immutabletagrules"),
            get(rules::list).post(rules::create),
        )
        .route(
            &format!("{project}/immutabletagrules/{{immutable_rule_id}}"),
            put(rules::update).delete(rules::delete),
        )
        .route("/system/gc", get(gc::list))
        .route(
            "/system/gc/schedule",
            get(gc::schedule)
                .post(gc::create_schedule)
                .put(gc::update_schedule),
        )
        .route("/system/gc/{gc_id}", get(gc::get))
        .route("/system/gc/{gc_id}/log", get(gc::log))
        .route("/retentions", axum::routing::post(retention::create))
        .route("/retentions/metadatas", get(retention::metadatas))
        .route(
            "/retentions/{id}",
            get(retention::get)
                .put(retention::update)
                .delete(retention::delete),
        )
        .route(
            "/retentions/{id}/executions",
            get(retention::executions).post(retention::execute),
        )
        .route(
            "/retentions/{id}/executions/{eid}/tasks",
            get(retention::tasks),
        )
        .route(
            "/registries",
            get(registries::list).post(registries::create),
        )
        .route("/registries/ping", axum::routing::post(registries::ping))
        .route(
            "/registries/{id}",
            get(registries::get)
                .put(registries::update)
                .delete(registries::delete),
        )
        .route("/replication/adapters", get(registries::adapters))
        .route("/quotas", get(rules::quotas))
        .route("/quotas/{id}", get(rules::quota).put(rules::set_quota))
        .route("/audit-logs", get(audit::list))
        .route("/robots", get(robots::list).post(robots::create))
        .route(
            "/robots/{robot_id}",
            get(robots::get)
                .put(robots::update)
                .patch(robots::refresh)
                .delete(robots::delete),
        )
        .route(
            "/projects/{project_name}/repositories",
            get(artifacts::repositories),
        )
        .route(
            repo,
            get(artifacts::repository).delete(artifacts::delete_repository),
        )
        .route(&format!("{repo}/artifacts"), get(artifacts::list))
        .route(artifact, get(artifacts::get).delete(artifacts::delete))
        .route(
            &format!("{artifact}/tags"),
            get(artifacts::tags).post(artifacts::add_tag),
        )
        .route(
            &format!("{artifact}/tags/{{tag_name}}"),
            axum::routing::delete(artifacts::delete_tag),
        )
        .fallback(no_route)
        .method_not_allowed_fallback(no_method)
        .layer(axum::Extension(Mount(mount)))
        .with_state(state)
}

async fn no_route(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no API endpoint at /api/v2.0{}", uri.path()))
}

async fn no_method(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        Code::METHOD_NOT_ALLOWED,
        format!("{method} is not supported on /api/v2.0{}", uri.path()),
    )
}

// ---- who is asking -------------------------------------------------------------------------

/// The authenticated caller of a request (anonymous without an `Authorization` header).
pub struct Caller {
    pub principal: Principal,
    pub client: Option<IpAddr>,
}

impl Caller {
    fn is_sysadmin(&self) -> bool {
        self.principal.is_sysadmin()
    }

    /// The caller's user record, or 401/403 for anonymous callers and robots.
    fn user(&self) -> Result<&crate::auth::accounts::User, ApiError> {
        match &self.principal {
            Principal::User { user, .. } => Ok(user),
            Principal::Anonymous => Err(login_needed()),
            Principal::Robot(_) => Err(ApiError::forbidden(
                "robot accounts may not use this endpoint",
            )),
        }
    }

    /// 401 for anonymous callers, else nothing.
    fn authenticated(&self) -> Result<(), ApiError> {
        match self.principal {
            Principal::Anonymous => Err(login_needed()),
            _ => Ok(()),
        }
    }

    /// The refusal for this caller: 401 when nobody logged in, else 403 with `why`.
    fn refuse(&self, why: &str) -> ApiError {
        match self.principal {
            Principal::Anonymous => login_needed(),
            _ => ApiError::forbidden(why),
        }
    }

    /// Only system administrators.
    fn sysadmin(&self) -> Result<(), ApiError> {
        if self.is_sysadmin() {
            Ok(())
        } else {
            Err(self.refuse("only system administrators may do this"))
        }
    }

    /// The account operations on behalf of this caller: each change they make is audited
    /// under the caller's name and address.
    fn accounts(&self, api: &ApiState) -> Accounts {
        let name = match &self.principal {
            Principal::Anonymous => "anonymous",
            p => p.name(),
        };
        api.accounts.by(Actor {
            name: name.to_string(),
            client: self.client,
        })
    }
}

impl Caller {
    /// The request as the registry core's events (and so the audit trail) report it: who asked
    /// and from where.
    fn request_context(&self, api: &ApiState, parts: &Parts) -> RequestContext {
        let h = |name| {
            super::header_str(&parts.headers, name)
                .unwrap_or("")
                .to_string()
        };
        let addr = parts
            .extensions
            .get::<axum::extract::ConnectInfo<super::PeerAddr>>()
            .map(|c| c.0 .0.to_string())
            .unwrap_or_default();
        let base_url = super::origin::resolve(&api.settings, parts).base_url();
        let actor = match &self.principal {
            Principal::Anonymous => None,
            p => Some(p.name().to_string()),
        };
        RequestContext {
            id: uuid::Uuid::new_v4().to_string(),
            addr,
            host: h(http::header::HOST),
            method: parts.method.to_string(),
            user_agent: h(http::header::USER_AGENT),
            actor,
            base_url: format!("{base_url}{}", api.settings.prefix),
            origin: None,
        }
    }
}

fn login_needed() -> ApiError {
    ApiError::unauthorized("authentication required: log in with HTTP Basic credentials")
}

impl FromRequestParts<Api> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, Self::Rejection> {
        let client = super::client_ip(parts);
        let Some(header) = parts.headers.get(http::header::AUTHORIZATION) else {
            return Ok(Caller {
                principal: Principal::Anonymous,
                client,
            });
        };
        let Some((username, password)) = header
            .to_str()
            .ok()
            .and_then(crate::auth::basic_credentials)
        else {
            return Err(ApiError::unauthorized(
                "the Authorization header must carry HTTP Basic credentials",
            ));
        };
        match api.builtin.authenticate(&username, &password, client).await {
            Ok(principal) => Ok(Caller { principal, client }),
            Err(LoginError::InvalidCredentials) => {
                Err(ApiError::unauthorized("invalid username or password"))
            }
            Err(e @ LoginError::Throttled(secs)) => {
                let mut err = ApiError::new(Code::TOO_MANY_REQUESTS, e.to_string());
                err.retry_after = Some(secs);
                Err(err)
            }
            Err(e @ LoginError::Unavailable(_)) => {
                Err(ApiError::new(Code::UNAVAILABLE, e.to_string()))
            }
        }
    }
}

// ---- what the caller is in a project --------------------------------------------------------

/// A project and what the caller may do in it.
pub struct Standing {
    pub project: Project,
    /// Harbor role ids the caller holds (directly or through groups).
    pub roles: Vec<i64>,
    pub sysadmin: bool,
    /// Repository actions the caller has (roles, robot permissions, public pulls).
    pub actions: Vec<Action>,
}

impl Standing {
    /// The caller's highest role (admin, maintainer, developer, guest, limited guest), if any.
    pub fn role(&self) -> Option<Role> {
        [1, 4, 2, 3, 5]
            .into_iter()
            .find(|r| self.roles.contains(r))
            .and_then(Role::from_id)
    }

    pub fn can_read(&self) -> bool {
        self.sysadmin || self.project.public || !self.roles.is_empty() || !self.actions.is_empty()
    }

    pub fn sees_members(&self) -> bool {
        self.sysadmin || self.role().is_some_and(Role::sees_members)
    }

    pub fn manages(&self) -> bool {
        self.sysadmin || self.role().is_some_and(Role::manages_project)
    }

    pub fn may(&self, action: Action) -> bool {
        self.actions.contains(&action)
    }
}

/// Finds a project by name or id (`X-Is-Resource-Name: true` says it is a name) and what the
/// caller is in it. 404 if there is none.
async fn standing(
    api: &ApiState,
    caller: &Caller,
    parts: &Parts,
    name_or_id: &str,
) -> Result<Standing, ApiError> {
    let by_name = super::header_str(&parts.headers, "x-is-resource-name")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let project = if by_name {
        api.accounts
            .store()
            .project_by_name(name_or_id)
            .await
            .map_err(|e| ApiError::new(Code::UNAVAILABLE, e.to_string()))?
            .ok_or_else(|| ApiError::not_found(format!("project {name_or_id} not found")))?
    } else {
        api.accounts.project(name_or_id).await?
    };
    standing_in(api, caller, project).await
}

async fn standing_in(
    api: &ApiState,
    caller: &Caller,
    project: Project,
) -> Result<Standing, ApiError> {
    let roles = match &caller.principal {
        Principal::User { user, groups } => api.accounts.roles(project.id, user.id, groups).await?,
        _ => Vec::new(),
    };
    let (actions, _) = api
        .builtin
        .actions_in(&caller.principal, &project.name)
        .await
        .map_err(|e| ApiError::new(Code::UNAVAILABLE, e.to_string()))?;
    Ok(Standing {
        sysadmin: caller.is_sysadmin(),
        project,
        roles,
        actions,
    })
}

/// A project the caller may read, or 401/403 (the project exists: 404 is for those that do not).
async fn readable(
    api: &ApiState,
    caller: &Caller,
    parts: &Parts,
    name_or_id: &str,
) -> Result<Standing, ApiError> {
    let st = standing(api, caller, parts, name_or_id).await?;
    if !st.can_read() {
        return Err(caller.refuse(&format!(
            "no access to project {}: it is private and you hold no role in it",
            st.project.name
        )));
    }
    Ok(st)
}

/// A project the caller administers (project admin or system administrator).
async fn managed(
    api: &ApiState,
    caller: &Caller,
    parts: &Parts,
    name_or_id: &str,
) -> Result<Standing, ApiError> {
    let st = readable(api, caller, parts, name_or_id).await?;
    if !st.manages() {
        return Err(caller.refuse(&format!(
            "only project admins of {} and system administrators may do this",
            st.project.name
        )));
    }
    Ok(st)
}

// ---- requests and answers -------------------------------------------------------------------

/// The query parameters of a request.
fn query(parts: &Parts) -> Vec<(String, String)> {
    super::query(parts)
}

fn param<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    super::query_param(q, key).filter(|v| !v.is_empty())
}

/// `page` and `page_size` (Harbor's defaults 1 and 10; at most 100 a page).
fn paging(q: &[(String, String)]) -> Result<PageRequest, ApiError> {
    let number = |key: &str, default: u32| -> Result<u32, ApiError> {
        match param(q, key) {
            None => Ok(default),
            Some(v) => v.parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                ApiError::bad_request(format!("{key} must be a positive integer, not {v:?}"))
            }),
        }
    };
    let page = number("page", 1)?;
    let page_size = number("page_size", DEFAULT_PAGE_SIZE)?;
    if page_size > MAX_PAGE_SIZE {
        return Err(ApiError::bad_request(format!(
            "page_size is at most {MAX_PAGE_SIZE}, not {page_size}"
        )));
    }
    Ok(PageRequest { page, page_size })
}

/// The path and query the client asked for: the router is nested under `{http.prefix}/api/v2.0`,
/// which is stripped from the path it sees.
fn original(parts: &Parts) -> (String, Vec<(String, String)>) {
    let prefix = parts
        .extensions
        .get::<Mount>()
        .map_or("/api/v2.0", |m| m.0.as_str());
    (format!("{prefix}{}", parts.uri.path()), query(parts))
}

/// Where the API is mounted (`{http.prefix}/api/v2.0`), put in each request's extensions.
#[derive(Clone, Debug)]
struct Mount(Arc<String>);

/// A page of a listing: the JSON array, `X-Total-Count`, and `Link` to the previous and next
/// pages (paths with the request's own query, its `page` replaced).
fn paged<T: Serialize>(parts: &Parts, page: PageRequest, total: i64, items: &[T]) -> ApiResult {
    let (path, q) = original(parts);
    let link = |n: u32| {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in q.iter().filter(|(k, _)| k != "page" && k != "page_size") {
            s.append_pair(k, v);
        }
        s.append_pair("page", &n.to_string());
        s.append_pair("page_size", &page.page_size.to_string());
        format!("<{path}?{}>", s.finish())
    };
    let mut links = Vec::new();
    if page.page > 1 && total > 0 {
        links.push(format!("{}; rel=\"prev\"", link(page.page - 1)));
    }
    if i64::from(page.page) * i64::from(page.page_size) < total {
        links.push(format!("{}; rel=\"next\"", link(page.page + 1)));
    }
    let mut resp = axum::Json(items).into_response();
    let h = resp.headers_mut();
    h.insert("x-total-count", HeaderValue::from(total.max(0)));
    if !links.is_empty() {
        h.insert(
            http::header::LINK,
            HeaderValue::from_str(&links.join(" , ")).map_err(ApiError::internal)?,
        );
    }
    Ok(resp)
}

/// One page of a listing held in memory.
fn slice<T: Clone>(all: &[T], page: PageRequest) -> Vec<T> {
    let start = (page.page as usize - 1).saturating_mul(page.page_size as usize);
    all.iter()
        .skip(start)
        .take(page.page_size as usize)
        .cloned()
        .collect()
}

/// A JSON request body, or 400 saying what is wrong with it.
fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.len() > MAX_BODY {
        return Err(ApiError::bad_request(format!(
            "the request body is larger than {MAX_BODY} bytes"
        )));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// A field that may be absent or `null`, read as its default then.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + serde::Deserialize<'de>,
{
    use serde::Deserialize as _;
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `201 Created` with `Location` set to the request's path and `id`.
fn created(parts: &Parts, id: &str, json: Option<serde_json::Value>) -> ApiResult {
    let (path, _) = original(parts);
    let location = format!("{}/{id}", path.trim_end_matches('/'));
    let mut resp = match json {
        Some(j) => (StatusCode::CREATED, axum::Json(j)).into_response(),
        None => StatusCode::CREATED.into_response(),
    };
    resp.headers_mut().insert(
        http::header::LOCATION,
        HeaderValue::from_str(&location).map_err(ApiError::internal)?,
    );
    Ok(resp)
}

fn ok() -> ApiResult {
    Ok(StatusCode::OK.into_response())
}

fn json<T: Serialize>(value: &T) -> ApiResult {
    Ok(axum::Json(value).into_response())
}

/// Unix milliseconds as RFC 3339.
fn time_ms(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Unix seconds as RFC 3339.
fn time_s(s: i64) -> String {
    time_ms(s.saturating_mul(1000))
}

/// Harbor's `q` query: `k=v`, `k=~v` (contains), `k=[a~b]` (range), separated by commas.
#[derive(Debug, Default, PartialEq, Eq)]
struct Filter {
    terms: Vec<(String, Term)>,
}

#[derive(Debug, PartialEq, Eq)]
enum Term {
    Exact(String),
    Fuzzy(String),
    Range(Option<String>, Option<String>),
}

impl Filter {
    fn parse(q: Option<&str>) -> Result<Filter, ApiError> {
        let mut terms = Vec::new();
        let Some(q) = q else {
            return Ok(Filter { terms });
        };
        let mut parts = Vec::new();
        let (mut depth, mut start) = (0i32, 0usize);
        for (i, c) in q.char_indices() {
            match c {
                '[' | '{' | '(' => depth += 1,
                ']' | '}' | ')' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&q[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&q[start..]);
        let unquote = |v: &str| v.trim().trim_matches(|c| c == '"' || c == '\'').to_string();
        for part in parts.into_iter().filter(|p| !p.trim().is_empty()) {
            let (key, value) = part.split_once('=').ok_or_else(|| {
                ApiError::bad_request(format!("invalid q term {part:?}: expected key=value"))
            })?;
            let key = key.trim().to_string();
            let term = if let Some(v) = value.strip_prefix('~') {
                Term::Fuzzy(unquote(v))
            } else if let Some(inner) = value.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
                let (a, b) = inner.split_once('~').ok_or_else(|| {
                    ApiError::bad_request(format!("invalid range in q term {part:?}: [min~max]"))
                })?;
                let side = |s: &str| Some(unquote(s)).filter(|s| !s.is_empty());
                Term::Range(side(a), side(b))
            } else if value.starts_with('{') || value.starts_with('(') {
                return Err(ApiError::bad_request(format!(
                    "list terms are not supported in q ({part:?}); use k=v or k=~v"
                )));
            } else {
                Term::Exact(unquote(value))
            };
            terms.push((key, term));
        }
        Ok(Filter { terms })
    }

    fn get(&self, key: &str) -> Option<&Term> {
        self.terms
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, t)| t)
    }

    /// A text term's value (exact or fuzzy).
    fn text(&self, key: &str) -> Option<(&str, bool)> {
        match self.get(key)? {
            Term::Exact(v) => Some((v, false)),
            Term::Fuzzy(v) => Some((v, true)),
            Term::Range(..) => None,
        }
    }

    /// Keys other than `known`, so a filter Berth cannot apply is refused, not ignored.
    fn only(&self, known: &[&str]) -> Result<(), ApiError> {
        match self
            .terms
            .iter()
            .find(|(k, _)| !known.iter().any(|n| n.eq_ignore_ascii_case(k)))
        {
            Some((k, _)) => Err(ApiError::bad_request(format!(
                "cannot filter on {k:?} here; known keys: {}",
                known.join(", ")
            ))),
            None => Ok(()),
        }
    }
}

/// A time in a `q` range: RFC 3339, `YYYY-MM-DD HH:MM:SS` (UTC) or Unix seconds; Unix ms.
fn parse_time(s: &str) -> Result<i64, ApiError> {
    if let Ok(secs) = s.parse::<i64>() {
        return Ok(secs * 1000);
    }
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t.as_millisecond());
    }
    if let Ok(dt) = s.replace(' ', "T").parse::<jiff::civil::DateTime>() {
        if let Ok(z) = dt.to_zoned(jiff::tz::TimeZone::UTC) {
            return Ok(z.timestamp().as_millisecond());
        }
    }
    Err(ApiError::bad_request(format!(
        "invalid time {s:?}: use RFC 3339, \"YYYY-MM-DD HH:MM:SS\" or Unix seconds"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q_filters() {
        let f = Filter::parse(Some(
            "operation=create,resource=~team,op_time=[2024-01-02 03:04:05~2024-02-01 00:00:00]",
        ))
        .unwrap();
        assert_eq!(f.text("operation"), Some(("create", false)));
        assert_eq!(f.text("resource"), Some(("team", true)));
        assert_eq!(
            f.get("op_time"),
            Some(&Term::Range(
                Some("2024-01-02 03:04:05".into()),
                Some("2024-02-01 00:00:00".into())
            ))
        );
        assert!(f.only(&["operation", "resource", "op_time"]).is_ok());
        assert!(f.only(&["operation"]).is_err());
        assert!(Filter::parse(Some("name={a b}")).is_err());
        assert!(Filter::parse(Some("novalue")).is_err());
        assert_eq!(
            Filter::parse(Some("Level=project,ProjectID=3"))
                .unwrap()
                .text("projectid"),
            Some(("3", false))
        );
        assert_eq!(
            parse_time("2024-01-02 03:04:05").unwrap(),
            1_704_164_645_000
        );
        assert_eq!(
            parse_time("2024-01-02T03:04:05Z").unwrap(),
            1_704_164_645_000
        );
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn pages() {
        let q = vec![("page_size".to_string(), "101".to_string())];
        assert!(paging(&q).is_err());
        let q = vec![("page".to_string(), "0".to_string())];
        assert!(paging(&q).is_err());
        assert_eq!(
            paging(&[]).unwrap(),
            PageRequest {
                page: 1,
                page_size: 10
            }
        );
        assert_eq!(
            slice(
                &[1, 2, 3, 4, 5],
                PageRequest {
                    page: 2,
                    page_size: 2
                }
            ),
            vec![3, 4]
        );
    }

    #[test]
    fn the_document_is_json() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert!(doc["paths"].as_object().is_some_and(|p| p.len() > 20));
    }
}
