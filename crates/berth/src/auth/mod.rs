//! Authentication and authorization, as Distribution's `auth` section configures them: Docker
//! token auth (JWT bearer tokens verified against a certificate bundle or JWKS), htpasswd (HTTP
//! Basic against bcrypt entries) and `silly` (any `Authorization` header; tests only).
//!
//! Owns: turning an `Authorization` header plus the access a request needs into either an
//! [`Identity`] or a [`Challenge`] (status, `WWW-Authenticate` value, message). Knows no HTTP
//! framework types: the edge (`http`) extracts the header and the needed [`Scope`]s and shapes
//! the response.
//!
//! Invariants:
//! - every failure is a [`Challenge`] with status 401 and a `WWW-Authenticate` value, except a
//!   broken server-side setup (htpasswd file gone), which is 500 without one;
//! - the challenge says `error="invalid_token"` for a bad token, `error="insufficient_scope"` for
//!   a good token lacking access, and carries no `error` when credentials are missing, exactly as
//!   Distribution;
//! - credentials (tokens, passwords) are never logged nor put in messages.
//!
//! The edge calls [`Authenticate::authenticate`] once per request, from its authentication
//! layer (`http::auth`), with the scopes the route needs. `builtin` also issues tokens
//! ([`Builtin`]), from users, projects and robots kept in the metadata store.

pub mod accounts;
pub mod builtin;
pub mod htpasswd;
pub mod keyring;
mod keys;
pub mod ldap;
pub mod policy;
pub mod rbac;
pub mod scope;
pub mod secret;
pub mod token;

pub use builtin::{Builtin, Principal};
pub use htpasswd::Htpasswd;
pub use scope::{Identity, Scope, ScopeParseError};
pub use token::TokenVerifier;

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::config::Auth;

/// Why a request is not authenticated or not authorized.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header, an empty one, or one of the wrong scheme (`Basic` where a
    /// `Bearer` token is expected and vice versa). Challenge without `error`.
    #[error("authentication required")]
    MissingCredentials,
    /// Not a well-formed JWS compact token. `invalid_token`.
    #[error("malformed token")]
    Malformed,
    /// The token's signing key is not trusted (unknown key, `x5c` chain not rooted in the
    /// bundle, algorithm not accepted). `invalid_token`.
    #[error("token signed by an untrusted key: {0}")]
    UntrustedKey(String),
    /// The signature does not verify with the trusted key(s). `invalid_token`.
    #[error("invalid token signature")]
    BadSignature,
    /// The signed claims are not a valid claim set. `invalid_token`.
    #[error("invalid token claims")]
    InvalidClaims,
    /// `iss` is not the configured issuer. `invalid_token`.
    #[error("token from an untrusted issuer")]
    WrongIssuer,
    /// `aud` does not contain the configured service. `invalid_token`.
    #[error("token intended for another audience")]
    WrongAudience,
    /// `exp` missing or in the past (beyond the leeway). `invalid_token`.
    #[error("token expired")]
    Expired,
    /// `nbf` in the future (beyond the leeway). `invalid_token`.
    #[error("token not valid yet")]
    NotYetValid,
    /// Valid credentials lacking some needed access. `insufficient_scope`.
    #[error("insufficient scope")]
    InsufficientScope,
    /// Wrong user name or password (htpasswd).
    #[error("invalid username or password")]
    InvalidCredentials,
    /// The token names a project that has been deleted (and perhaps re-created) since it was
    /// issued. `invalid_token`.
    #[error("the token was issued for a project that no longer exists")]
    ProjectChanged,
    /// The configuration or a file it names is unusable (at start-up, or an htpasswd file that
    /// became unreadable). Answer 500.
    #[error("authentication configuration: {0}")]
    Config(String),
    /// The store of users and keys cannot be reached. Answer 503.
    #[error("the user store is unavailable: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// The `error` parameter of a `Bearer` challenge for this error: `invalid_token`,
    /// `insufficient_scope`, or none (missing credentials, htpasswd, configuration).
    pub fn challenge_error(&self) -> Option<&'static str> {
        match self {
            AuthError::Malformed
            | AuthError::UntrustedKey(_)
            | AuthError::BadSignature
            | AuthError::InvalidClaims
            | AuthError::WrongIssuer
            | AuthError::WrongAudience
            | AuthError::Expired
            | AuthError::NotYetValid
            | AuthError::ProjectChanged => Some("invalid_token"),
            AuthError::InsufficientScope => Some("insufficient_scope"),
            AuthError::MissingCredentials
            | AuthError::InvalidCredentials
            | AuthError::Config(_)
            | AuthError::Unavailable(_) => None,
        }
    }
}

/// A refused request: what to answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// HTTP status: 401 (Distribution answers 401 for missing, invalid and insufficient
    /// credentials alike), 500 for [`AuthError::Config`], 503 for [`AuthError::Unavailable`].
    pub status: u16,
    /// The `WWW-Authenticate` header value; `None` only with status 500 or 503.
    pub www_authenticate: Option<String>,
    /// Why. Not to be shown verbatim to clients beyond [`message`](Self::message).
    pub error: AuthError,
    /// Short client-facing message for the OCI error body (`authentication required`,
    /// `insufficient scope`, ...). Never contains credentials.
    pub message: String,
    /// The access the request needed (for the error body's `detail`).
    pub needed: Vec<Scope>,
}

impl Challenge {
    /// The error body's `detail`, as Distribution writes it: one object per needed action,
    /// `[{"Type":"repository","Class":"","Name":"foo","Action":"pull"}, ...]`.
    pub fn detail(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.needed
                .iter()
                .flat_map(|s| {
                    s.actions.iter().map(move |a| {
                        serde_json::json!({"Type": s.kind, "Class": "", "Name": s.name, "Action": a})
                    })
                })
                .collect(),
        )
    }
}

/// What a request brings to authentication.
#[derive(Clone, Copy, Debug)]
pub struct AuthRequest<'a> {
    /// The raw `Authorization` header value, `None` when absent (or not valid UTF-8).
    pub authorization: Option<&'a str>,
    /// The access the request needs (see [`Method::authenticate`]).
    pub needed: &'a [Scope],
    /// The host the client asked for (token auth with `autoredirect`).
    pub host: Option<&'a str>,
    /// The scheme a trusted proxy forwarded (token auth with `autoredirect`).
    pub forwarded_proto: Option<&'a str>,
    /// `scheme://authority` of this server as the client reached it (the built-in realm).
    pub origin: &'a str,
    /// The client's address.
    pub client: Option<IpAddr>,
}

/// A way of turning a request into an identity with the access it needs, or a challenge.
#[async_trait]
pub trait Authenticate: Send + Sync + std::fmt::Debug {
    /// `Ok(identity)`: go on. `Err(challenge)`: answer `challenge.status` with
    /// `WWW-Authenticate: challenge.www_authenticate` and an OCI error body.
    async fn authenticate(&self, req: &AuthRequest<'_>) -> Result<Identity, Challenge>;
}

/// The configured authentication, shared by every request.
pub type Authenticator = Arc<dyn Authenticate>;

#[async_trait]
impl Authenticate for Method {
    async fn authenticate(&self, req: &AuthRequest<'_>) -> Result<Identity, Challenge> {
        if let Method::Htpasswd(h) = self {
            // A bcrypt check takes tens of milliseconds: off the async threads.
            let h = h.clone();
            let authorization = req.authorization.map(str::to_string);
            let needed = req.needed.to_vec();
            return tokio::task::spawn_blocking(move || {
                Method::Htpasswd(h).authenticate_request(
                    authorization.as_deref(),
                    &needed,
                    None,
                    None,
                )
            })
            .await
            .unwrap_or_else(|e| {
                Err(challenge(
                    500,
                    None,
                    AuthError::Config(format!("the authentication task failed: {e}")),
                    req.needed,
                ))
            });
        }
        self.authenticate_request(req.authorization, req.needed, req.host, req.forwarded_proto)
    }
}

/// A method Distribution's `auth` section configures. Build once at start-up with
/// [`Method::from_config`] and share as an [`Authenticator`].
#[derive(Debug)]
pub enum Method {
    /// `auth.token`: bearer JWTs from an external token service.
    Token(TokenVerifier),
    /// `auth.htpasswd`: HTTP Basic against bcrypt entries; everything is allowed once
    /// authenticated.
    Htpasswd(Arc<Htpasswd>),
    /// `auth.silly`: any `Authorization` header is accepted (tests only).
    Silly {
        /// Realm announced in the challenge.
        realm: String,
        /// Service announced in the challenge.
        service: String,
    },
}

impl Method {
    /// The method of an `auth` section: `Ok(None)` when no method is configured (every
    /// request allowed) or only `builtin` (which needs the metadata store: [`Builtin::start`]),
    /// an error when several are or when the one configured is unusable (missing
    /// `realm`/`service`/`issuer`, unreadable bundle or htpasswd file, no signing key).
    pub fn from_config(auth: &Auth) -> Result<Option<Method>, AuthError> {
        let methods = auth.configured_methods();
        if methods.len() > 1 {
            return Err(AuthError::Config(format!(
                "auth: only one method may be configured, found {}",
                methods.join(", ")
            )));
        }
        if let Some(t) = &auth.token {
            return Ok(Some(Method::Token(TokenVerifier::from_config(t)?)));
        }
        if let Some(h) = &auth.htpasswd {
            return Ok(Some(Method::Htpasswd(Arc::new(Htpasswd::from_config(h)?))));
        }
        if let Some(s) = &auth.silly {
            let (Some(realm), Some(service)) = (&s.realm, &s.service) else {
                return Err(AuthError::Config(
                    "auth.silly: realm and service must be set".into(),
                ));
            };
            return Ok(Some(Method::Silly {
                realm: realm.clone(),
                service: service.clone(),
            }));
        }
        Ok(None)
    }

    /// Authenticate a request and check that it may do everything in `needed`.
    ///
    /// - `authorization`: the raw `Authorization` header value, `None` when absent (or not
    ///   valid UTF-8).
    /// - `needed`: the access the request needs, e.g. `repository:<name>:pull` for GET/HEAD of
    ///   blobs, manifests and tags, `repository:<name>:pull,push` for uploads and manifest PUT
    ///   (plus `repository:<from>:pull` for a cross-repository mount), `repository:<name>:delete`
    ///   for DELETE, `registry:catalog:*` for `/v2/_catalog`, nothing for `/v2/`.
    ///
    /// `Ok(identity)`: go on. `Err(challenge)`: answer `challenge.status` with
    /// `WWW-Authenticate: challenge.www_authenticate` and an OCI error body
    /// (`challenge.message`, `challenge.detail()`; the edge renders it as `UNAUTHORIZED`).
    ///
    /// Token auth with `autoredirect`: use [`authenticate_request`](Self::authenticate_request).
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        needed: &[Scope],
    ) -> Result<Identity, Challenge> {
        self.authenticate_request(authorization, needed, None, None)
    }

    /// [`authenticate`](Self::authenticate), with the request's `Host` and `X-Forwarded-Proto`
    /// headers, from which token auth with `autoredirect: true` derives the challenge realm.
    pub fn authenticate_request(
        &self,
        authorization: Option<&str>,
        needed: &[Scope],
        host: Option<&str>,
        forwarded_proto: Option<&str>,
    ) -> Result<Identity, Challenge> {
        let authorization = authorization.map(str::trim).filter(|a| !a.is_empty());
        match self {
            Method::Token(v) => {
                let fail = |error: AuthError| {
                    let www =
                        v.challenge_for(needed, error.challenge_error(), host, forwarded_proto);
                    challenge(401, Some(www), error, needed)
                };
                let Some(token) = authorization.and_then(|a| credentials(a, "bearer")) else {
                    return Err(fail(AuthError::MissingCredentials));
                };
                let identity = v.verify(token).map_err(fail)?;
                if !identity.allows_all(needed) {
                    return Err(fail(AuthError::InsufficientScope));
                }
                Ok(identity)
            }
            Method::Htpasswd(h) => {
                let fail = |error: AuthError| {
                    if let AuthError::Config(_) = error {
                        return challenge(500, None, error, needed);
                    }
                    challenge(401, Some(h.challenge()), error, needed)
                };
                let Some((user, password)) = authorization.and_then(basic_credentials) else {
                    return Err(fail(AuthError::MissingCredentials));
                };
                h.verify(&user, &password).map_err(fail)
            }
            Method::Silly { realm, service } => {
                if authorization.is_some() {
                    return Ok(Identity::unrestricted("silly"));
                }
                // Distribution's silly challenge lists one scope per action, unmerged.
                let split: Vec<Scope> = needed
                    .iter()
                    .flat_map(|s| {
                        s.actions.iter().map(|a| Scope {
                            kind: s.kind.clone(),
                            name: s.name.clone(),
                            actions: vec![a.clone()],
                        })
                    })
                    .collect();
                let scope = split
                    .iter()
                    .map(Scope::to_string)
                    .collect::<Vec<_>>()
                    .join(" ");
                let mut www = format!("Bearer realm={},service={}", quote(realm), quote(service));
                if !scope.is_empty() {
                    www.push_str(",scope=");
                    www.push_str(&quote(&scope));
                }
                Err(challenge(
                    401,
                    Some(www),
                    AuthError::MissingCredentials,
                    needed,
                ))
            }
        }
    }
}

pub(crate) fn challenge(
    status: u16,
    www: Option<String>,
    error: AuthError,
    needed: &[Scope],
) -> Challenge {
    let message = match &error {
        AuthError::InsufficientScope => "insufficient scope",
        AuthError::Config(_) => "authentication is unavailable",
        AuthError::Unavailable(_) => {
            "the user store is unavailable; retry once the metadata database is back"
        }
        AuthError::ProjectChanged => {
            "invalid token: its project was deleted since it was issued; log in again"
        }
        AuthError::InvalidCredentials => "invalid username or password",
        e if e.challenge_error() == Some("invalid_token") => "invalid token",
        _ => "authentication required",
    };
    Challenge {
        status,
        www_authenticate: www,
        error,
        message: message.to_string(),
        needed: needed.to_vec(),
    }
}

/// The credentials of an `Authorization` header of the given scheme (case-insensitive), if
/// non-empty.
pub(crate) fn credentials<'a>(header: &'a str, scheme: &str) -> Option<&'a str> {
    let (s, rest) = header.split_once(' ')?;
    if !s.eq_ignore_ascii_case(scheme) {
        return None;
    }
    let rest = rest.trim();
    (!rest.is_empty()).then_some(rest)
}

/// User and password of a `Basic` header (`base64(user:password)`, split at the first `:`).
pub(crate) fn basic_credentials(header: &str) -> Option<(String, String)> {
    let encoded = credentials(header, "basic")?;
    let decoded = STANDARD.decode(encoded).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// A double-quoted string as Go's `%q` writes it for printable text: `\` and `"` escaped,
/// control characters as `\xNN` (`\n`, `\r`, `\t` by name).
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HtpasswdAuth, SillyAuth, TokenAuth};

    #[test]
    fn quoting() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(quote("x\ny\u{1}"), r#""x\ny\x01""#);
    }

    #[test]
    fn header_parsing() {
        assert_eq!(credentials("Bearer abc", "bearer"), Some("abc"));
        assert_eq!(credentials("bearer  abc ", "bearer"), Some("abc"));
        assert_eq!(credentials("Bearer ", "bearer"), None);
        assert_eq!(credentials("Basic abc", "bearer"), None);
        assert_eq!(credentials("Bearer", "bearer"), None);
        // "alice:pa:ss"
        assert_eq!(
            basic_credentials("Basic YWxpY2U6cGE6c3M="),
            Some(("alice".into(), "pa:ss".into()))
        );
        assert_eq!(basic_credentials("Basic !!!"), None);
        assert_eq!(basic_credentials("Basic YWxpY2U="), None);
    }

    #[test]
    fn error_kinds() {
        assert_eq!(AuthError::Expired.challenge_error(), Some("invalid_token"));
        assert_eq!(
            AuthError::InsufficientScope.challenge_error(),
            Some("insufficient_scope")
        );
        assert_eq!(AuthError::MissingCredentials.challenge_error(), None);
    }

    #[test]
    fn silly() {
        let cfg = Auth {
            silly: Some(SillyAuth {
                realm: Some("https://auth.example/token".into()),
                service: Some("registry".into()),
            }),
            ..Auth::default()
        };
        let a = Method::from_config(&cfg).unwrap().unwrap();
        let needed = [Scope::repository("foo", &["pull", "push"])];
        let ch = a.authenticate(None, &needed).unwrap_err();
        assert_eq!(ch.status, 401);
        assert_eq!(
            ch.www_authenticate.as_deref(),
            Some(
                r#"Bearer realm="https://auth.example/token",service="registry",scope="repository:foo:pull repository:foo:push""#
            )
        );
        assert_eq!(
            ch.detail(),
            serde_json::json!([
                {"Type":"repository","Class":"","Name":"foo","Action":"pull"},
                {"Type":"repository","Class":"","Name":"foo","Action":"push"}
            ])
        );
        let id = a.authenticate(Some("anything"), &needed).unwrap();
        assert_eq!(id.subject, "silly");
    }

    #[test]
    fn config_errors() {
        assert!(Method::from_config(&Auth::default()).unwrap().is_none());
        let two = Auth {
            silly: Some(SillyAuth::default()),
            htpasswd: Some(HtpasswdAuth::default()),
            ..Auth::default()
        };
        assert!(matches!(
            Method::from_config(&two),
            Err(AuthError::Config(_))
        ));
        let no_keys = Auth {
            token: Some(TokenAuth {
                realm: Some("r".into()),
                service: Some("s".into()),
                issuer: Some("i".into()),
                ..TokenAuth::default()
            }),
            ..Auth::default()
        };
        assert!(matches!(
            Method::from_config(&no_keys),
            Err(AuthError::Config(_))
        ));
        let missing_file = Auth {
            htpasswd: Some(HtpasswdAuth {
                realm: Some("r".into()),
                path: Some("/nonexistent/htpasswd".into()),
            }),
            ..Auth::default()
        };
        assert!(matches!(
            Method::from_config(&missing_file),
            Err(AuthError::Config(_))
        ));
    }

    #[test]
    fn htpasswd_flow() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        let hash = bcrypt::hash("pw", 4).unwrap();
        std::fs::write(&path, format!("alice:{hash}\n")).unwrap();
        let cfg = Auth {
            htpasswd: Some(HtpasswdAuth {
                realm: Some("basic-realm".into()),
                path: Some(path.to_string_lossy().into_owned()),
            }),
            ..Auth::default()
        };
        let a = Method::from_config(&cfg).unwrap().unwrap();
        let needed = [Scope::repository("foo", &["push"])];
        let ch = a.authenticate(None, &needed).unwrap_err();
        assert_eq!(ch.status, 401);
        assert_eq!(
            ch.www_authenticate.as_deref(),
            Some(r#"Basic realm="basic-realm""#)
        );
        assert_eq!(ch.error, AuthError::MissingCredentials);
        let good = format!("Basic {}", STANDARD.encode("alice:pw"));
        let id = a.authenticate(Some(&good), &needed).unwrap();
        assert_eq!(id.subject, "alice");
        let bad = format!("Basic {}", STANDARD.encode("alice:nope"));
        let ch = a.authenticate(Some(&bad), &needed).unwrap_err();
        assert_eq!(ch.error, AuthError::InvalidCredentials);
        assert_eq!(ch.status, 401);
        let ch = a.authenticate(Some("Bearer xyz"), &needed).unwrap_err();
        assert_eq!(ch.error, AuthError::MissingCredentials);
        std::fs::remove_file(&path).unwrap();
        let ch = a.authenticate(Some(&good), &needed).unwrap_err();
        assert_eq!(ch.status, 500);
        assert!(ch.www_authenticate.is_none());
    }
}
