//! The HTTP edge: the OCI Distribution API under `/v2/` as an axum router.
//!
//! The only module that knows HTTP status codes, headers and OCI error JSON. Handlers parse and
//! validate everything from the request (names, digests, references, ranges), call the core, and
//! shape the response. Cross-cutting concerns are tower layers added in [`router`]; this is also
//! where an authentication layer turns a request into an identity and checks its scope. The probe
//! endpoints `/readyz` and `/livez` sit outside authentication (`health.rs`); absolute URLs take
//! their origin from `http.host`, a trusted proxy's forwarded headers or the request (`origin.rs`).

pub mod api;
pub mod auth;
mod blobs;
pub mod debug;
mod error;
pub mod health;
mod layers;
mod listing;
mod manifests;
pub mod origin;
mod routes;
mod token;
mod uploads;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

pub use error::{ApiError, ErrorCode};
pub use health::Health;
pub use origin::TrustedProxies;
use routes::Endpoint;

use crate::oci::name::RepoName;
use crate::registry::events::RequestContext;
use crate::registry::Registry;

/// How the edge behaves, from configuration.
#[derive(Clone, Debug)]
pub struct EdgeSettings {
    /// The externally visible base URL (`http.host`), e.g. `https://registry.example.com`. When
    /// set, `Location` and `Link` headers are absolute URLs on it; otherwise they are on what a
    /// trusted proxy forwarded, or paths (see [`origin`]).
    pub host: Option<String>,
    /// Peers whose forwarded headers are believed (`http.trustedproxies`).
    pub trusted_proxies: TrustedProxies,
    /// Whether the listener serves HTTPS itself (the scheme of a request nobody forwarded).
    pub tls: bool,
    /// `Location` and `Link` are always paths (`http.relativeurls`).
    pub relative_urls: bool,
    /// The path prefix the API is served under (`http.prefix`), e.g. `/registry`; empty for none.
    pub prefix: String,
    /// Whether blobs and manifests may be deleted (`storage.delete.enabled`).
    pub delete_enabled: bool,
    /// Whether every write is refused (`storage.maintenance.readonly.enabled`).
    pub read_only: bool,
    /// Extra headers on every response (`http.headers`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Whether each request is logged (`log.accesslog.disabled` turns it off).
    pub access_log: bool,
    /// Whether request metrics are recorded (a Prometheus endpoint is configured).
    pub metrics: bool,
    /// How often garbage is collected on schedule (`gc.interval`); zero for never.
    pub gc_interval: std::time::Duration,
    /// No authentication is configured: every client is anonymous, and what a request says of
    /// itself (a replication's origin) is taken as it is; otherwise only from an authenticated
    /// client.
    pub open: bool,
}

impl Default for EdgeSettings {
    fn default() -> Self {
        EdgeSettings {
            host: None,
            trusted_proxies: TrustedProxies::default(),
            tls: false,
            relative_urls: false,
            prefix: String::new(),
            delete_enabled: true,
            read_only: false,
            headers: Vec::new(),
            access_log: false,
            metrics: false,
            gc_interval: std::time::Duration::ZERO,
            open: true,
        }
    }
}

/// The edge's shared state: the core, which handlers call as `edge.core.<operation>`, and the
/// settings.
pub struct Edge {
    pub core: Arc<Registry>,
    pub settings: EdgeSettings,
}

impl Edge {
    /// The URL the client of `req` should use for an API `path` (which starts with `/v2/`).
    pub fn url(&self, req: &Parts, path: &str) -> String {
        let origin = origin::resolve(&self.settings, req);
        let base = origin.link_base(self.settings.relative_urls);
        format!("{base}{}{path}", self.settings.prefix)
    }
}

/// Shared state of every handler.
pub type AppState = Arc<Edge>;

type ApiResult = Result<Response, ApiError>;

const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");
const CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");

/// The router for the whole registry API, behind `authenticator` when one is configured, with a
/// health state of its own (always ready, never draining).
pub fn router(
    registry: Arc<Registry>,
    settings: EdgeSettings,
    authenticator: Option<crate::auth::Authenticator>,
) -> Router {
    router_with_health(registry, settings, authenticator, None, Health::new())
}

/// [`router`] with the shared `health` state: the server marks it draining on shutdown and the
/// storage probe marks it unhealthy.
pub fn router_with_health(
    registry: Arc<Registry>,
    settings: EdgeSettings,
    authenticator: Option<crate::auth::Authenticator>,
    builtin: Option<Arc<crate::auth::Builtin>>,
    health: Health,
) -> Router {
    let prefix = settings.prefix.clone();
    let probes = Arc::new(health::Probes {
        core: registry.clone(),
        health: health.clone(),
    });
    let auth_settings = settings.clone();
    let (edge_settings, prefix_api) = (settings.clone(), settings.prefix.clone());
    let headers = Arc::new(settings.headers.clone());
    let (access_log, metrics) = (settings.access_log, settings.metrics);
    let edge = Arc::new(Edge {
        core: registry.clone(),
        settings,
    });
    let api = Router::new()
        .route("/v2/", get(base))
        .route("/v2", get(base))
        .route("/v2/_catalog", get(listing::catalog))
        .fallback(dispatch)
        .with_state(edge)
        .route(
            "/debug/health",
            get(debug::health).with_state(probes.clone()),
        );
    let app = if prefix.is_empty() {
        api
    } else {
        Router::new().nest(&prefix, api)
    };
    let mut app = app.layer(SetResponseHeaderLayer::if_not_present(
        API_VERSION,
        HeaderValue::from_static("registry/2.0"),
    ));
    if !headers.is_empty() {
        app = app.layer(axum::middleware::from_fn_with_state(
            headers,
            layers::extra_headers,
        ));
    }
    if let Some(authenticator) = authenticator {
        let state = Arc::new(auth::AuthState {
            authenticator,
            prefix: prefix.clone(),
            settings: auth_settings,
        });
        app = app.layer(axum::middleware::from_fn_with_state(
            state,
            auth::authenticate,
        ));
    }
    let gate = Arc::new(health::Gate { health, prefix });
    app = app.layer(axum::middleware::from_fn_with_state(
        gate,
        health::unavailable_while_unhealthy,
    ));
    // Added after the gate and authentication, so neither applies to them.
    let mut app = app
        .route("/readyz", get(health::readyz).with_state(probes.clone()))
        .route("/livez", get(health::livez));
    if let Some(builtin) = builtin {
        // The management API authenticates each request itself (HTTP Basic), like the token
        // endpoint, so neither sits behind the registry's auth layer.
        let management = api::router(registry.clone(), builtin.clone(), edge_settings);
        app = app
            .route(
                "/service/token",
                get(token::token).post(token::token).with_state(builtin),
            )
            .nest(&format!("{prefix_api}/api/v2.0"), management);
    }
    if metrics {
        app = app.layer(axum::middleware::from_fn(layers::request_metrics));
    }
    if access_log {
        app = app.layer(axum::middleware::from_fn(layers::access_log));
    }
    app.layer(TraceLayer::new_for_http())
}

/// The header naming the registry (its id, shared by every instance), which replication reads
/// to know where content came from.
pub const REGISTRY_ID: HeaderName = HeaderName::from_static("berth-registry-id");
/// The header a replicated push carries: the id of the registry the content came from.
pub const REPLICATION_ORIGIN: HeaderName = HeaderName::from_static("berth-replication-origin");

/// `GET /v2/`: the API version check; also says which registry this is.
async fn base(State(edge): State<AppState>) -> Response {
    let mut resp = ([(http::header::CONTENT_TYPE, "application/json")], "{}").into_response();
    if let Some(id) = edge.core.id().and_then(|id| HeaderValue::from_str(id).ok()) {
        resp.headers_mut().insert(REGISTRY_ID, id);
    }
    resp
}

/// Routes `/v2/<name>/...` requests, whose names span several path segments.
async fn dispatch(State(edge): State<AppState>, req: Request) -> Response {
    // Events report who asked: run the request with its context when anybody listens.
    if edge.core.reports_events() {
        let (parts, body) = req.into_parts();
        let ctx = request_context(&edge, &parts);
        let req = Request::from_parts(parts, body);
        crate::registry::events::with_request(ctx, serve(edge, req)).await
    } else {
        serve(edge, req).await
    }
}

async fn serve(reg: AppState, req: Request) -> Response {
    let path = req.uri().path().to_string();
    // Under `http.prefix` the router is nested, which strips the prefix before this point.
    let Some(rest) = path.strip_prefix("/v2/") else {
        return ApiError::unsupported("not an OCI API path")
            .with_status(StatusCode::NOT_FOUND)
            .into_response();
    };
    let Some((name, endpoint)) = routes::parse(rest) else {
        return ApiError::unsupported(format!("no API endpoint at {path}"))
            .with_status(StatusCode::NOT_FOUND)
            .into_response();
    };
    let repo = match name.parse::<RepoName>() {
        Ok(r) => r,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let (parts, body) = req.into_parts();
    if let Err(e) = check_allowed(&reg.settings, &parts.method, &endpoint) {
        return e.into_response();
    }
    let p = &parts;
    let result = match (endpoint, parts.method.clone()) {
        (Endpoint::Blob(d), Method::GET) => blobs::get(&reg, &repo, &d, p, true).await,
        (Endpoint::Blob(d), Method::HEAD) => blobs::get(&reg, &repo, &d, p, false).await,
        (Endpoint::Blob(d), Method::DELETE) => blobs::delete(&reg, &repo, &d).await,
        (Endpoint::UploadStart, Method::POST) => uploads::start(&reg, &repo, p, body).await,
        (Endpoint::Upload(id), Method::GET) => uploads::status(&reg, &repo, &id, p).await,
        (Endpoint::Upload(id), Method::PATCH) => uploads::patch(&reg, &repo, &id, p, body).await,
        (Endpoint::Upload(id), Method::PUT) => uploads::put(&reg, &repo, &id, p, body).await,
        (Endpoint::Upload(id), Method::DELETE) => uploads::cancel(&reg, &repo, &id, p).await,
        (Endpoint::Manifest(r), Method::GET) => manifests::get(&reg, &repo, &r, p, true).await,
        (Endpoint::Manifest(r), Method::HEAD) => manifests::get(&reg, &repo, &r, p, false).await,
        (Endpoint::Manifest(r), Method::PUT) => manifests::put(&reg, &repo, &r, p, body).await,
        (Endpoint::Manifest(r), Method::DELETE) => manifests::delete(&reg, &repo, &r).await,
        (Endpoint::Tags, Method::GET) => listing::tags(&reg, &repo, p).await,
        (Endpoint::Referrers(d), Method::GET) => listing::referrers(&reg, &repo, &d, p).await,
        (_, m) => Err(ApiError::unsupported(format!(
            "method {m} is not supported on {path}"
        ))),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// Refuses writes in read-only mode and deletes when deleting is disabled, before any work.
fn check_allowed(s: &EdgeSettings, method: &Method, endpoint: &Endpoint) -> Result<(), ApiError> {
    let write = !matches!(*method, Method::GET | Method::HEAD);
    if s.read_only && write {
        return Err(ApiError::unsupported(
            "the registry is in read-only mode (storage.maintenance.readonly)",
        ));
    }
    let deletes_content = matches!(endpoint, Endpoint::Blob(_) | Endpoint::Manifest(_));
    if !s.delete_enabled && *method == Method::DELETE && deletes_content {
        return Err(ApiError::unsupported(
            "deleting is disabled on this registry (storage.delete.enabled is false)",
        ));
    }
    Ok(())
}

/// Who is asking, through which request: what the events of the request report.
fn request_context(edge: &Edge, req: &Parts) -> RequestContext {
    let h = |name| header_str(&req.headers, name).unwrap_or("").to_string();
    let addr = req
        .extensions
        .get::<axum::extract::ConnectInfo<PeerAddr>>()
        .map(|c| c.0 .0.to_string())
        .unwrap_or_default();
    let base_url = origin::resolve(&edge.settings, req).base_url();
    let base_url = if base_url.is_empty() {
        // Nothing says where the client went; the envelope falls back to the host.
        base_url
    } else {
        format!("{base_url}{}", edge.settings.prefix)
    };
    let actor = req.extensions.get::<Actor>().map(|a| a.0.clone());
    RequestContext {
        id: uuid::Uuid::new_v4().to_string(),
        addr,
        host: h(http::header::HOST),
        method: req.method.to_string(),
        user_agent: h(http::header::USER_AGENT),
        actor: actor.clone(),
        base_url,
        origin: (actor.is_some() || edge.settings.open)
            .then(|| header_str(&req.headers, REPLICATION_ORIGIN).map(str::to_string))
            .flatten()
            .filter(|o| !o.is_empty() && o.len() <= 64),
    }
}

pub use crate::listener::PeerAddr;

/// The address of the client that sent a request (its peer; a proxy's forwarded client address
/// is not trusted for this).
fn client_ip(req: &Parts) -> Option<std::net::IpAddr> {
    req.extensions
        .get::<axum::extract::ConnectInfo<PeerAddr>>()
        .map(|c| c.0 .0.ip())
}

/// The authenticated name of the client, put in the request extensions by the auth layer.
#[derive(Clone, Debug)]
pub struct Actor(pub String);

/// The authenticated name of the client of `req` (`""` when anonymous or unauthenticated).
fn actor(req: &Parts) -> &str {
    req.extensions.get::<Actor>().map_or("", |a| a.0.as_str())
}

/// The query parameters of a request.
fn query(req: &Parts) -> Vec<(String, String)> {
    url::form_urlencoded::parse(req.uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn query_param<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn header_str(headers: &HeaderMap, name: impl http::header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The request body as a byte stream for the core.
fn body_stream(body: Body) -> impl Stream<Item = std::io::Result<Bytes>> + Send + Unpin {
    body.into_data_stream().map_err(std::io::Error::other)
}

/// Builds a response with a status, headers and a body.
fn respond(status: StatusCode, headers: &[(HeaderName, String)], body: Body) -> ApiResult {
    let mut resp = Response::builder().status(status);
    for (k, v) in headers {
        resp = resp.header(k, v);
    }
    resp.body(body).map_err(ApiError::internal)
}
