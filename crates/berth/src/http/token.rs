//! The built-in token service's endpoint, `/service/token`: the Docker token spec (`GET` with
//! Basic credentials, `service`, repeated `scope`, `account`, `offline_token`) and its OAuth2
//! form (`POST` with `grant_type` `password` or `refresh_token`).
//!
//! Answers `token` and `access_token` (the same JWT), `expires_in`, `issued_at` and, for
//! offline access, `refresh_token`. What was asked and not allowed is left out of the grant; a
//! request without credentials gets what anonymous may have (pulls of public projects).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{header, Method, StatusCode};

use super::error::{ApiError, ErrorCode};
use crate::auth::builtin::{IssuedToken, LoginError, LDAP_UNAVAILABLE};
use crate::auth::{basic_credentials, Builtin, Principal, Scope};

/// The largest form body a `POST` may send.
const MAX_FORM: usize = 64 * 1024;

/// `GET` and `POST /service/token`.
pub async fn token(State(builtin): State<Arc<Builtin>>, req: Request) -> Response {
    match serve(&builtin, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn serve(builtin: &Builtin, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let client = super::client_ip(&parts);
    let mut params: Vec<(String, String)> =
        url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let post = parts.method == Method::POST;
    if post {
        let body: Bytes = axum::body::to_bytes(body, MAX_FORM).await.map_err(|_| {
            ApiError::new(
                ErrorCode::SizeInvalid,
                "the token request body is too large",
            )
        })?;
        params.extend(url::form_urlencoded::parse(&body).into_owned());
    }
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if let Some(service) = param("service") {
        if service != builtin.service() {
            return Err(bad_request(&format!(
                "this token service issues tokens for the service {:?}, not {service:?}",
                builtin.service()
            )));
        }
    }
    // GET repeats `scope`; the OAuth2 form separates scopes with spaces.
    let mut requested = Vec::new();
    for (_, v) in params.iter().filter(|(k, _)| k == "scope") {
        for s in v.split_whitespace() {
            match Scope::parse(s) {
                Ok(s) => requested.push(s),
                Err(e) => return Err(bad_request(&e.to_string())),
            }
        }
    }
    let principal = if post {
        match param("grant_type") {
            Some("password") => {
                let (Some(user), Some(password)) = (param("username"), param("password")) else {
                    return Err(bad_request(
                        "grant_type password needs username and password",
                    ));
                };
                login(builtin, user, password, client).await?
            }
            Some("refresh_token") => {
                let Some(refresh) = param("refresh_token") else {
                    return Err(bad_request("grant_type refresh_token needs refresh_token"));
                };
                builtin
                    .principal_of_refresh(refresh)
                    .await
                    .map_err(|e| match e {
                        crate::auth::AuthError::Unavailable(m) => unavailable(&m),
                        _ => unauthorized(builtin, "the refresh token is invalid or expired"),
                    })?
            }
            Some(other) => {
                return Err(bad_request(&format!(
                    "unsupported grant_type {other:?}: use password or refresh_token"
                )))
            }
            None => return Err(bad_request("grant_type is required")),
        }
    } else {
        let authorization = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match authorization {
            None => Principal::Anonymous,
            Some(a) => {
                let Some((user, password)) = basic_credentials(a.trim()) else {
                    return Err(unauthorized(builtin, "send Basic credentials"));
                };
                login(builtin, &user, &password, client).await?
            }
        }
    };
    let offline = if post {
        param("access_type") == Some("offline")
    } else {
        param("offline_token") == Some("true")
    };
    let (granted, projects) = builtin
        .grant(&principal, &requested)
        .await
        .map_err(|e| unavailable(&e.to_string()))?;
    let refused = refused(&requested, &granted);
    let issued = builtin
        .issue(&principal, granted, projects, offline)
        .await
        .map_err(|e| unavailable(&e.to_string()))?;
    let detail = format!(
        "granted: {}; refused: {}",
        Scope::format_list(&issued.access),
        Scope::format_list(&refused)
    );
    builtin
        .audit(
            &principal,
            "token",
            "token",
            &Scope::format_list(&requested),
            client,
            refused.is_empty(),
            &detail,
        )
        .await;
    Ok(answer(issued))
}

async fn login(
    builtin: &Builtin,
    user: &str,
    password: &str,
    client: Option<std::net::IpAddr>,
) -> Result<Principal, ApiError> {
    builtin
        .login(user, password, client)
        .await
        .map_err(|e| match e {
            LoginError::InvalidCredentials => unauthorized(builtin, "invalid username or password"),
            LoginError::Throttled(secs) => ApiError::new(
                ErrorCode::TooManyRequests,
                format!("too many failed logins; retry in {secs} s"),
            )
            .with_header(header::RETRY_AFTER, &secs.to_string()),
            LoginError::Unavailable(m) => unavailable(&m),
        })
}

/// The scopes (actions) asked for and not granted.
fn refused(requested: &[Scope], granted: &[Scope]) -> Vec<Scope> {
    let mut out = Vec::new();
    for s in requested {
        let actions: Vec<&str> = s
            .actions
            .iter()
            .filter(|a| {
                !granted
                    .iter()
                    .any(|g| g.kind == s.kind && g.name == s.name && g.actions.contains(a))
            })
            .map(String::as_str)
            .collect();
        if !actions.is_empty() {
            out.push(Scope::new(&s.kind, &s.name, &actions));
        }
    }
    out
}

fn answer(t: IssuedToken) -> Response {
    let issued_at = jiff::Timestamp::from_second(t.issued_at)
        .map(|ts| ts.to_string())
        .unwrap_or_default();
    let mut body = serde_json::json!({
        "token": t.token,
        "access_token": t.token,
        "expires_in": t.expires_in,
        "issued_at": issued_at,
    });
    if let Some(r) = t.refresh_token {
        body["refresh_token"] = serde_json::Value::String(r);
    }
    let mut resp = (StatusCode::OK, Json(body)).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

fn bad_request(message: &str) -> ApiError {
    ApiError::new(ErrorCode::Unsupported, message.to_string()).with_status(StatusCode::BAD_REQUEST)
}

fn unauthorized(builtin: &Builtin, message: &str) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, message.to_string()).with_header(
        header::WWW_AUTHENTICATE,
        &format!("Basic realm={}", crate::auth::quote(builtin.service())),
    )
}

fn unavailable(message: &str) -> ApiError {
    if message == LDAP_UNAVAILABLE {
        // The login's own log line says why; the client learns which service is down.
        return ApiError::new(ErrorCode::Unavailable, LDAP_UNAVAILABLE)
            .with_header(header::RETRY_AFTER, "5");
    }
    tracing::warn!(error = %message, "the token service's store is unavailable");
    ApiError::new(
        ErrorCode::Unavailable,
        "the user store is unavailable; retry once the metadata database is back",
    )
    .with_header(header::RETRY_AFTER, "1")
}
