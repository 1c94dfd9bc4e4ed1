//! Docker token authentication: verifying bearer JWTs issued by an external token service, and
//! the `Bearer` challenge that sends clients to it.
//!
//! Owns: the `auth.token` configuration section at run time (realm, service, issuer, root
//! certificate bundle, JWKS, accepted algorithms, auto-redirect), signature checks, the standard
//! claim checks and the `access` claim.
//! Invariants (as Distribution's `registry/auth/token`):
//! - the signing key is trusted: the `x5c` chain ends in the bundle (a token with an `x5c` is
//!   judged by that chain only), or an embedded `jwk`/`kid` names a bundle or JWKS key; a token
//!   naming no key (or an unknown `kid`) is tried against every trusted key of the right type;
//! - `iss` equals the configured issuer, `aud` (string or list) contains the configured service;
//! - `exp` is required and `exp`/`nbf` are checked with a 60 s leeway;
//! - the algorithm is one of `signingalgorithms` when configured, and always matches the key type
//!   (no RSA/HMAC confusion).
//!
//! Tokens are never logged.

use std::path::Path;

use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;

use super::keys::{decode_x5c, KeySet, TrustedKey};
use super::{quote, AuthError, Identity, Scope};
use crate::config::TokenAuth;

/// Clock-skew allowance on `exp` and `nbf`, as Distribution (`token.Leeway`).
pub const LEEWAY_SECS: i64 = 60;

/// Default `autoredirectpath` (Distribution 3).
const DEFAULT_AUTO_REDIRECT_PATH: &str = "/auth/token";

/// Verifies bearer tokens for one configured token service. Cheap to share (`Arc`); `verify`
/// takes `&self` and does no I/O.
#[derive(Clone)]
pub struct TokenVerifier {
    realm: String,
    service: String,
    issuer: String,
    keys: KeySet,
    /// Accepted algorithms; empty = every algorithm matching the key type.
    algorithms: Vec<Algorithm>,
    auto_redirect_path: Option<String>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("realm", &self.realm)
            .field("service", &self.service)
            .field("issuer", &self.issuer)
            .field("keys", &self.keys.keys.len())
            .finish()
    }
}

/// The claims Berth reads; others are ignored.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    nbf: Option<f64>,
    #[serde(default)]
    iat: Option<f64>,
    #[serde(default)]
    access: Option<Vec<ResourceActions>>,
    /// The ids of the projects the access was granted in (Berth's own tokens).
    #[serde(default)]
    projects: Option<std::collections::BTreeMap<String, i64>>,
    /// The groups of the account at login (Berth's refresh tokens).
    #[serde(default)]
    groups: Option<Vec<i64>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct ResourceActions {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    #[serde(default)]
    actions: Option<Vec<String>>,
}

impl TokenVerifier {
    /// Build from the parsed `auth.token` section: reads the certificate bundle and the JWKS
    /// file. `realm`, `service` and `issuer` are required, and at least one signing key, as in
    /// Distribution. Errors are `AuthError::Config` naming the key or file.
    pub fn from_config(cfg: &TokenAuth) -> Result<TokenVerifier, AuthError> {
        let required = |v: &Option<String>, key: &str| {
            v.clone()
                .ok_or_else(|| AuthError::Config(format!("auth.token.{key} is required")))
        };
        let realm = if cfg.autoredirect {
            cfg.realm.clone().unwrap_or_default()
        } else {
            required(&cfg.realm, "realm")?
        };
        let service = required(&cfg.service, "service")?;
        let issuer = required(&cfg.issuer, "issuer")?;
        let mut keys = KeySet::default();
        if let Some(path) = cfg.rootcertbundle.as_deref().filter(|p| !p.is_empty()) {
            let bytes = read(path, "rootcertbundle")?;
            keys.add_pem_bundle(&bytes)
                .map_err(|e| AuthError::Config(format!("auth.token.rootcertbundle {path}: {e}")))?;
        }
        if let Some(path) = cfg.jwks.as_deref().filter(|p| !p.is_empty()) {
            let bytes = read(path, "jwks")?;
            keys.add_jwks(&bytes)
                .map_err(|e| AuthError::Config(format!("auth.token.jwks {path}: {e}")))?;
        }
        if keys.keys.is_empty() {
            return Err(AuthError::Config(
                "auth.token requires at least one token signing key (rootcertbundle or jwks)"
                    .into(),
            ));
        }
        let mut algorithms = Vec::new();
        for name in &cfg.signingalgorithms {
            let alg: Algorithm = name.parse().map_err(|_| {
                AuthError::Config(format!(
                    "auth.token.signingalgorithms: unsupported signing algorithm {name}"
                ))
            })?;
            algorithms.push(alg);
        }
        let auto_redirect_path = cfg.autoredirect.then(|| {
            cfg.autoredirectpath
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| DEFAULT_AUTO_REDIRECT_PATH.to_string())
        });
        Ok(TokenVerifier {
            realm,
            service,
            issuer,
            keys,
            algorithms,
            auto_redirect_path,
        })
    }

    /// The configured realm (token service URL).
    /// A verifier of tokens signed by `keys`, for `service` from `issuer`, announcing `realm`.
    pub(crate) fn with_keys(realm: &str, service: &str, issuer: &str, keys: KeySet) -> Self {
        TokenVerifier {
            realm: realm.to_string(),
            service: service.to_string(),
            issuer: issuer.to_string(),
            keys,
            algorithms: vec![Algorithm::ES256],
            auto_redirect_path: None,
        }
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// The configured service name (the token audience).
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Verify a raw bearer token (the text after `Bearer `) and return who it identifies and the
    /// access it grants. Does not check that access against any need: see [`Identity::allows`].
    ///
    /// Errors: `Malformed` (not a JWS), `UntrustedKey` (no trusted key named or chain not rooted
    /// in the bundle), `BadSignature`, `InvalidClaims`, `WrongIssuer`, `WrongAudience`,
    /// `Expired`, `NotYetValid`; all of them answer `error="invalid_token"`.
    pub fn verify(&self, bearer_token: &str) -> Result<Identity, AuthError> {
        self.verify_at(bearer_token, now())
    }

    /// [`verify`](Self::verify) at a given unix time.
    pub fn verify_at(&self, bearer_token: &str, now: i64) -> Result<Identity, AuthError> {
        let token = bearer_token.trim();
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        if token.split('.').count() != 3 {
            return Err(AuthError::Malformed);
        }
        let alg = header.alg;
        if !self.algorithms.is_empty() && !self.algorithms.contains(&alg) {
            return Err(AuthError::UntrustedKey(format!(
                "signing algorithm {alg:?} not accepted"
            )));
        }

        // Which keys may have signed it.
        let candidates: Vec<TrustedKey> = if let Some(x5c) = &header.x5c {
            let chain = decode_x5c(x5c).map_err(|_| AuthError::Malformed)?;
            vec![self
                .keys
                .verify_chain(&chain, now)
                .map_err(AuthError::UntrustedKey)?]
        } else if let Some(jwk) = &header.jwk {
            if let Some(x5c) = &jwk.common.x509_chain {
                let chain = decode_x5c(x5c).map_err(|_| AuthError::Malformed)?;
                vec![self
                    .keys
                    .verify_chain(&chain, now)
                    .map_err(AuthError::UntrustedKey)?]
            } else {
                let kid = jwk.common.key_id.as_deref().unwrap_or_default();
                let found: Vec<TrustedKey> = self.keys.by_kid(kid).cloned().collect();
                if found.is_empty() {
                    return Err(AuthError::UntrustedKey(
                        "untrusted JWK with no certificate chain".into(),
                    ));
                }
                found
            }
        } else {
            let named: Vec<TrustedKey> = match header.kid.as_deref() {
                Some(kid) => self.keys.by_kid(kid).cloned().collect(),
                None => Vec::new(),
            };
            if named.is_empty() {
                self.keys.keys.clone()
            } else {
                named
            }
        };

        let mut validation = Validation::new(alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();

        let mut tried = false;
        let mut claims = None;
        for key in candidates.iter().filter(|k| k.kind.accepts(alg)) {
            tried = true;
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => {
                    claims = Some(data.claims);
                    break;
                }
                Err(e) => match e.kind() {
                    jsonwebtoken::errors::ErrorKind::Json(_)
                    | jsonwebtoken::errors::ErrorKind::Utf8(_) => {
                        // The signature verified (claims are decoded after it) but they are
                        // not a valid claim set.
                        return Err(AuthError::InvalidClaims);
                    }
                    jsonwebtoken::errors::ErrorKind::Base64(_)
                    | jsonwebtoken::errors::ErrorKind::InvalidToken => {
                        return Err(AuthError::Malformed)
                    }
                    _ => continue,
                },
            }
        }
        let Some(claims) = claims else {
            return Err(if tried {
                AuthError::BadSignature
            } else {
                AuthError::UntrustedKey(format!("no trusted key for algorithm {alg:?}"))
            });
        };

        if claims.iss.as_deref() != Some(self.issuer.as_str()) {
            return Err(AuthError::WrongIssuer);
        }
        let aud_ok = match &claims.aud {
            Some(Audience::One(a)) => *a == self.service,
            Some(Audience::Many(list)) => list.contains(&self.service),
            None => false,
        };
        if !aud_ok {
            return Err(AuthError::WrongAudience);
        }
        let exp = claims.exp.ok_or(AuthError::Expired)? as i64;
        if now > exp.saturating_add(LEEWAY_SECS) {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = claims.nbf {
            if now < (nbf as i64).saturating_sub(LEEWAY_SECS) {
                return Err(AuthError::NotYetValid);
            }
        }

        let access = claims
            .access
            .unwrap_or_default()
            .into_iter()
            .map(|ra| Scope {
                kind: ra.kind,
                name: ra.name,
                actions: ra.actions.unwrap_or_default(),
            })
            .collect();
        Ok(Identity {
            subject: claims.sub.unwrap_or_default(),
            access,
            unrestricted: false,
            issued_at: claims.iat.map(|t| t as i64),
            projects: claims.projects.unwrap_or_default(),
            groups: claims.groups.unwrap_or_default(),
        })
    }

    /// The `WWW-Authenticate` value, exactly as Distribution writes it:
    /// `Bearer realm="<realm>",service="<service>"`, then `,scope="<s1> <s2>"` when scopes are
    /// given (scopes on the same resource merged), then `,error="<error>"` when given
    /// (`invalid_token` or `insufficient_scope`).
    pub fn challenge(&self, scopes: &[Scope], error: Option<&str>) -> String {
        bearer_challenge(&self.realm, &self.service, scopes, error)
    }

    /// [`challenge`](Self::challenge) with the realm derived from the request when
    /// `autoredirect` is configured: `<X-Forwarded-Proto or https>://<Host><autoredirectpath>`.
    pub fn challenge_for(
        &self,
        scopes: &[Scope],
        error: Option<&str>,
        host: Option<&str>,
        forwarded_proto: Option<&str>,
    ) -> String {
        match (&self.auto_redirect_path, host) {
            (Some(path), Some(host)) => {
                let scheme = forwarded_proto.filter(|p| !p.is_empty()).unwrap_or("https");
                let realm = format!("{scheme}://{host}{path}");
                bearer_challenge(&realm, &self.service, scopes, error)
            }
            _ => self.challenge(scopes, error),
        }
    }
}

/// `Bearer realm="..",service=".."[,scope=".."][,error=".."]`.
pub(crate) fn bearer_challenge(
    realm: &str,
    service: &str,
    scopes: &[Scope],
    error: Option<&str>,
) -> String {
    let mut s = format!("Bearer realm={},service={}", quote(realm), quote(service));
    let scope = Scope::format_list(scopes);
    if !scope.is_empty() {
        s.push_str(",scope=");
        s.push_str(&quote(&scope));
    }
    if let Some(e) = error {
        s.push_str(",error=");
        s.push_str(&quote(e));
    }
    s
}

fn read(path: &str, key: &str) -> Result<Vec<u8>, AuthError> {
    std::fs::read(Path::new(path))
        .map_err(|e| AuthError::Config(format!("auth.token.{key}: cannot read {path}: {e}")))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
