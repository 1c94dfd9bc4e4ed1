//! The authentication layer: the one place where a request becomes an identity and its scope is
//! checked. It works out what the request needs (`repository:<name>:pull,push`, ...) from the
//! route, asks the configured [`Authenticator`], and either lets the request through with the
//! identity in its extensions or answers 401 with the challenge.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::routes::{self, Endpoint};
use super::Actor;
use crate::auth::{AuthRequest, Authenticator, Scope};

/// The state of the layer: the authenticator, the API's path prefix, and the edge settings the
/// origin of a request is resolved with.
pub struct AuthState {
    pub authenticator: Authenticator,
    pub prefix: String,
    pub settings: super::EdgeSettings,
}

/// The access a request needs, from its method and path (`None`: no authentication at all).
fn needed(method: &Method, path: &str, query: Option<&str>, prefix: &str) -> Option<Vec<Scope>> {
    let path = path.strip_prefix(prefix).unwrap_or(path);
    if path == "/debug/health" {
        return None;
    }
    if path == "/v2/" || path == "/v2" {
        return Some(Vec::new());
    }
    if path == "/v2/_catalog" {
        return Some(vec![Scope::catalog()]);
    }
    let Some((name, endpoint)) = path.strip_prefix("/v2/").and_then(routes::parse) else {
        return Some(Vec::new());
    };
    let read = matches!(*method, Method::GET | Method::HEAD);
    let actions: &[&str] = match endpoint {
        Endpoint::Blob(_) | Endpoint::Manifest(_) if *method == Method::DELETE => &["delete"],
        Endpoint::Blob(_) | Endpoint::Manifest(_) | Endpoint::Tags | Endpoint::Referrers(_)
            if read =>
        {
            &["pull"]
        }
        _ => &["pull", "push"],
    };
    let mut scopes = vec![Scope::repository(name, actions)];
    if let (Endpoint::UploadStart, Some(q)) = (endpoint, query) {
        let from = url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "from")
            .map(|(_, v)| v.into_owned());
        if let Some(from) = from.filter(|f| f != name) {
            scopes.push(Scope::repository(&from, &["pull"]));
        }
    }
    Some(scopes)
}

/// The middleware.
pub async fn authenticate(
    State(state): State<Arc<AuthState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(needed) = needed(
        req.method(),
        req.uri().path(),
        req.uri().query(),
        &state.prefix,
    ) else {
        return next.run(req).await;
    };
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // What an auto-redirected token realm is built on: the host the client asked for and, only
    // when a trusted proxy forwarded it, the scheme (Distribution's default is https).
    let (host, proto, origin, client) = {
        let (parts, body) = req.into_parts();
        let origin = super::origin::resolve_request(&state.settings, &parts);
        let host = origin.request_authority().map(str::to_string);
        let proto = origin.forwarded_scheme().map(str::to_string);
        let base = origin.base_url();
        let client = super::client_ip(&parts);
        req = Request::from_parts(parts, body);
        (host, proto, base, client)
    };
    let result = state
        .authenticator
        .authenticate(&AuthRequest {
            authorization: authorization.as_deref(),
            needed: &needed,
            host: host.as_deref(),
            forwarded_proto: proto.as_deref(),
            origin: &origin,
            client,
        })
        .await;
    match result {
        Ok(identity) => {
            req.extensions_mut().insert(Actor(identity.subject.clone()));
            req.extensions_mut().insert(Arc::new(identity));
            next.run(req).await
        }
        Err(ch) => super::ApiError::from(ch).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes(method: Method, path: &str, query: Option<&str>) -> Option<Vec<String>> {
        needed(&method, path, query, "").map(|v| v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn scopes_by_route() {
        // (method, path, query, the scopes it needs; None: no authentication at all)
        type Case<'a> = (Method, &'a str, Option<&'a str>, Option<&'a [&'a str]>);
        let cases: &[Case<'_>] = &[
            (Method::GET, "/v2/", None, Some(&[])),
            (Method::GET, "/debug/health", None, None),
            (
                Method::GET,
                "/v2/_catalog",
                None,
                Some(&["registry:catalog:*"]),
            ),
            (
                Method::HEAD,
                "/v2/a/b/manifests/latest",
                None,
                Some(&["repository:a/b:pull"]),
            ),
            (
                Method::PUT,
                "/v2/a/manifests/latest",
                None,
                Some(&["repository:a:pull,push"]),
            ),
            (
                Method::DELETE,
                "/v2/a/blobs/sha256:x",
                None,
                Some(&["repository:a:delete"]),
            ),
            (
                Method::PATCH,
                "/v2/a/blobs/uploads/u1",
                None,
                Some(&["repository:a:pull,push"]),
            ),
            (
                Method::POST,
                "/v2/a/blobs/uploads/",
                Some("mount=sha256:x&from=other/repo"),
                Some(&["repository:a:pull,push", "repository:other/repo:pull"]),
            ),
            (
                Method::GET,
                "/v2/a/tags/list",
                None,
                Some(&["repository:a:pull"]),
            ),
        ];
        for (method, path, query, want) in cases {
            let want = want.map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            assert_eq!(
                scopes(method.clone(), path, *query),
                want,
                "{method} {path}"
            );
        }
    }
}
