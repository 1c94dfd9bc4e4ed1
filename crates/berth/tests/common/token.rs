//! Test support for Docker token authentication: a CA-less signing setup like real deployments
//! (a self-signed certificate + private key, written as a PEM root certificate bundle), JWTs as
//! the Docker token spec describes them (RS256 and ES256, with `kid`, `x5c` or no key hint), and a
//! real token service (`GET /token?service=..&scope=..`) on 127.0.0.1:0 with HTTP Basic users.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sha2::Digest as _;

/// A fixed 2048-bit RSA test key (ring, rcgen's backend, cannot generate RSA keys). Test only.
pub const RSA_TEST_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----\n\
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDKpYhuxIDeN0hI\n\
X4OpNMT3BUI35dxLyvIrrj5nK9FvGwErS/k5W6DhJk8tX9F7YMx8PifdrRMD0gL/\n\
TOhXRiXKoI9GZ/yTLKC5Bwnloky7t/zLXT37AniPWyp8ZRNr6tLeTPMTbDgc0RtX\n\
Ndoqo2z3C34pCo7h7RvD+GyQEssKGl5m5l8kZRV6PrTBONa0UKF5Hrm1OQkPAC68\n\
N7j0dTzNzldgH4KAQE+5wiu2AVPRfkCAhDcXs51YwUNmHXmZABRRkXe5NKw2n4KC\n\
REfBIAHCDFTVBIrzpIRg3Df7kyHU1Qc0aO6WE0UL5o+hojQVHis7xF48x4+Bd0OV\n\
xzGG6u5bAgMBAAECggEAPSzwvYO75ZmpzBNtk0C3b10aivZs5UKcjhw5gXrkbFaq\n\
KTBzyeGD9URT5b5F5qmnwaAf99deZKpbNkg44dPu57dF2Xrd8G4qDQF3dufio07d\n\
VWVOJz8tNxXOAySeUtdeljaDsSrb27MyvkanGHUimYfSK8CgtsqWNbiCyZGq0t7u\n\
J3CMnd1nc0hdOi3aqxyzKuFcyrfCwtQpxuXytd4lLtwyYQcusmmuL7hR3B6lq67D\n\
sKq9qhe59Tlnd0g/cd5J8JWhlD0kvQILBrttBYJWRXSEj4Un90M/Oy6s3I535VH+\n\
7YTwFjGqbFs75AoB9TKoGEGLuwYUBLxC8kT2R2OrdQKBgQDzx1ItxVYnrjEwfndZ\n\
Mydag2ugHMLS+7IxOj0nO8jn0KGKbM687RnZ8v20OIbKXdotToGh+wR4p+bPC0Ic\n\
D2FMEhUYok9Cbrt5L11V9BK4LIo9UduSqnXK4pAVF7AISBjxYhbR9clUGiTXS851\n\
qXqmPfsFqywj301aiJcTMkzWnQKBgQDUzlHloauRyE2CKFUck2UDz0GWMC6puGf7\n\
9Ea5CKJa46dO1V3OKlReK3SahkBiJoKGUyLKdqPzN7QMP5WUhAOzAnMcdaYOPSng\n\
Yuv33St3Cvs/+tp1yU/49k4nfl3ZqgFNLRyoXsRNIzCTSun+QstCV23TW0U+S88R\n\
GT+qIUZLVwKBgBQkaPbdMkQvEWNnX6cgIeVJrI/bMIHMSCnnHPxr5Sq6Q06ztNVJ\n\
ZfRrLmlArmp0HL3XmcBvhCwP+3MqA/lbj/eAGvwhFRlxGs5linm6o/1RuM5eQB07\n\
NmZgF/WWMnZMtrrjFu2cOFlZm6eqXNG+AiNQRbhvL0N7hOGxHYJ5in3FAoGAOxMf\n\
VwC/URPquFQb9HfSVfFmApxTh9fiPeY878a+0z5ZRqAij0Xe79leYDseimCoYUOY\n\
591xe+YdvDy2eGkBYeMvM1pRg6hlBJ5RZRhnpX9N6h/oH0SIR9OQNJR21yLDg7of\n\
N3o/Qi6foHPuax/9ruf4W/D9UuLWk6ePrdnY2rcCgYEAo2pjAalBfN7TM+/3T7kR\n\
OBuJDEhqS0Kh75YzxIIxdP1ydolNwZiCfJ2bsWu3CrmopJYHGOOvgxXZsqYrWsBE\n\
47DLo219lZN9zhpfwGvfLenZ53sNO0X2RmHXOWxyu281n4DhB6Ia0ZX8HqCjYT/0\n\
FtqdJW5WqG1/BiClVbt9fBI=\n\
-----END PRIVATE KEY-----";

/// A signing key and its self-signed certificate (or a certificate issued by a [`Signer`] CA).
pub struct Signer {
    pub alg: Algorithm,
    /// Private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The certificate, PEM and DER.
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    /// DER SubjectPublicKeyInfo of the key.
    pub spki_der: Vec<u8>,
    encoding: EncodingKey,
    key_pair: rcgen::KeyPair,
    params: rcgen::CertificateParams,
}

/// Where a token's header points at its key.
#[derive(Clone, Debug)]
pub enum KeyHint {
    /// No `kid`, no `x5c`.
    None,
    /// `kid` with this value.
    Kid(String),
    /// `x5c` with these DER certificates (leaf first).
    X5c(Vec<Vec<u8>>),
}

impl Signer {
    /// RS256 with the fixed test RSA key and a self-signed certificate.
    pub fn rsa(common_name: &str) -> Signer {
        let kp =
            rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(RSA_TEST_KEY_PEM, &rcgen::PKCS_RSA_SHA256)
                .expect("rsa key");
        Signer::build(kp, Algorithm::RS256, common_name, None, false)
    }

    /// ES256 with a fresh P-256 key and a self-signed certificate.
    pub fn ec(common_name: &str) -> Signer {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ec key");
        Signer::build(kp, Algorithm::ES256, common_name, None, false)
    }

    /// ES256 self-signed CA certificate (can issue [`Signer::ec_issued_by`]).
    pub fn ec_ca(common_name: &str) -> Signer {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ec key");
        Signer::build(kp, Algorithm::ES256, common_name, None, true)
    }

    /// ES256 key with a certificate issued by `ca` (a leaf, or an intermediate CA if `is_ca`).
    pub fn ec_issued_by(common_name: &str, ca: &Signer, is_ca: bool) -> Signer {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ec key");
        Signer::build(kp, Algorithm::ES256, common_name, Some(ca), is_ca)
    }

    fn build(
        kp: rcgen::KeyPair,
        alg: Algorithm,
        cn: &str,
        issuer: Option<&Signer>,
        is_ca: bool,
    ) -> Signer {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        if is_ca {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        let cert = match issuer {
            None => params.self_signed(&kp).expect("self-signed"),
            Some(ca) => {
                let iss = rcgen::Issuer::from_params(&ca.params, &ca.key_pair);
                params.signed_by(&kp, &iss).expect("signed")
            }
        };
        let key_pem = kp.serialize_pem();
        let encoding = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(key_pem.as_bytes()),
            _ => EncodingKey::from_ec_pem(key_pem.as_bytes()),
        }
        .expect("encoding key");
        Signer {
            alg,
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            spki_der: spki_of(cert.der()),
            key_pem,
            encoding,
            key_pair: kp,
            params,
        }
    }

    /// The libtrust key ID of this key (Distribution 2.x, docker_auth, GitLab).
    pub fn libtrust_kid(&self) -> String {
        const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        let hash = sha2::Sha256::digest(&self.spki_der);
        let mut bits = String::new();
        for b in &hash[..30] {
            bits.push_str(&format!("{b:08b}"));
        }
        let b32: Vec<char> = bits
            .as_bytes()
            .chunks(5)
            .map(|c| {
                let v = u8::from_str_radix(std::str::from_utf8(c).unwrap(), 2).unwrap();
                ALPHABET[v as usize] as char
            })
            .collect();
        b32.chunks(4)
            .map(|c| c.iter().collect::<String>())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// The RFC 7638 JWK thumbprint (SHA-256) of this key (Distribution 3's `kid`).
    pub fn thumbprint_kid(&self) -> String {
        let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&self.encoding, self.alg).expect("jwk");
        jwk.thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
            .expect("thumbprint")
    }

    /// The public key as a JWKS document with the given `kid`.
    pub fn jwks(&self, kid: &str) -> Value {
        let mut jwk =
            jsonwebtoken::jwk::Jwk::from_encoding_key(&self.encoding, self.alg).expect("jwk");
        jwk.common.key_id = Some(kid.to_string());
        json!({ "keys": [jwk] })
    }

    /// Sign arbitrary claims.
    pub fn sign(&self, claims: &Value, hint: &KeyHint) -> String {
        let mut header = Header::new(self.alg);
        match hint {
            KeyHint::None => {}
            KeyHint::Kid(k) => header.kid = Some(k.clone()),
            KeyHint::X5c(chain) => {
                header.x5c = Some(chain.iter().map(|d| STANDARD.encode(d)).collect())
            }
        }
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign")
    }

    /// Sign claims, putting this signer's own certificate in `x5c` (as Distribution's tests and
    /// many token services do).
    pub fn sign_x5c(&self, claims: &Value) -> String {
        self.sign(claims, &KeyHint::X5c(vec![self.cert_der.clone()]))
    }
}

/// The DER SubjectPublicKeyInfo of a DER certificate.
fn spki_of(cert_der: &[u8]) -> Vec<u8> {
    use x509_parser::prelude::FromDer as _;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(cert_der).expect("cert");
    cert.public_key().raw.to_vec()
}

/// Write a PEM root certificate bundle of these certificates; returns its path.
pub fn write_bundle(dir: &Path, certs: &[&Signer]) -> PathBuf {
    let path = dir.join("root-bundle.pem");
    let text: String = certs.iter().map(|s| s.cert_pem.clone()).collect();
    std::fs::write(&path, text).expect("write bundle");
    path
}

/// Current unix time.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Docker-token-spec claims: `iss`, `sub`, `aud`, `exp` (now + 300), `nbf` and `iat` (now),
/// `jti`, and `access` from scope strings (`repository:foo:pull,push`).
pub fn claims(issuer: &str, subject: &str, audience: &str, access: &[&str]) -> Value {
    let now = now();
    json!({
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "exp": now + 300,
        "nbf": now,
        "iat": now,
        "jti": format!("{}-{}", subject, now),
        "access": access_claim(access),
    })
}

/// The `access` claim for scope strings `type:name:a,b`.
pub fn access_claim(scopes: &[&str]) -> Value {
    Value::Array(
        scopes
            .iter()
            .map(|s| {
                let (kind, rest) = s.split_once(':').expect("scope type");
                let (name, actions) = rest.rsplit_once(':').expect("scope actions");
                json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()})
            })
            .collect(),
    )
}

/// A user of the test token service.
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub password: String,
    /// (type, name pattern, allowed actions); a pattern ending in `*` matches by prefix,
    /// `*` alone matches every name.
    pub grants: Vec<(String, String, Vec<String>)>,
}

impl User {
    pub fn new(name: &str, password: &str, grants: &[(&str, &str, &[&str])]) -> User {
        User {
            name: name.into(),
            password: password.into(),
            grants: grants
                .iter()
                .map(|(k, n, a)| {
                    (
                        k.to_string(),
                        n.to_string(),
                        a.iter().map(|x| x.to_string()).collect(),
                    )
                })
                .collect(),
        }
    }
}

/// The fixed users of [`TokenService::start_default`]:
/// - `admin` / `admin-pass`: everything (`*` on every repository, `registry:catalog:*`);
/// - `alice` / `alice-pass`: pull and push on `alice/*`, pull on everything else;
/// - anonymous (no credentials): pull on `public/*`.
pub fn default_users() -> Vec<User> {
    vec![
        User::new(
            "admin",
            "admin-pass",
            &[
                ("repository", "*", &["*", "pull", "push", "delete"]),
                ("registry", "catalog", &["*"]),
            ],
        ),
        User::new(
            "alice",
            "alice-pass",
            &[
                ("repository", "alice/*", &["pull", "push"]),
                ("repository", "*", &["pull"]),
            ],
        ),
        User::new("", "", &[("repository", "public/*", &["pull"])]),
    ]
}

struct ServiceState {
    signer: Signer,
    issuer: String,
    users: Vec<User>,
    hint: KeyHint,
}

/// A running token service (axum on its own thread and runtime, so it works from sync and
/// async tests alike). Stops on drop.
pub struct TokenService {
    pub addr: SocketAddr,
    pub issuer: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokenService {
    /// Start with the given signer, issuer, users and header key hint.
    pub fn start(signer: Signer, issuer: &str, users: Vec<User>, hint: KeyHint) -> TokenService {
        use axum::routing::get;
        let state = std::sync::Arc::new(ServiceState {
            signer,
            issuer: issuer.to_string(),
            users,
            hint,
        });
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind token service");
                let _ = addr_tx.send(listener.local_addr().expect("local addr"));
                let app = axum::Router::new()
                    .route("/token", get(token_handler))
                    .with_state(state);
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stop_rx.await;
                    })
                    .await;
            });
        });
        let addr = addr_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("token service address");
        TokenService {
            addr,
            issuer: issuer.to_string(),
            shutdown: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Start with [`default_users`] and `x5c` headers carrying the signer's certificate.
    pub fn start_default(signer: Signer, issuer: &str) -> TokenService {
        let hint = KeyHint::X5c(vec![signer.cert_der.clone()]);
        TokenService::start(signer, issuer, default_users(), hint)
    }

    /// The realm URL to configure: `http://127.0.0.1:PORT/token`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }
}

impl Drop for TokenService {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

async fn token_handler(
    axum::extract::State(state): axum::extract::State<std::sync::Arc<ServiceState>>,
    axum::extract::Query(query): axum::extract::Query<Vec<(String, String)>>,
    headers: http::HeaderMap,
) -> axum::response::Response {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;

    let unauthorized = || {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"token\"")],
            axum::Json(json!({"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]})),
        )
            .into_response()
    };
    let Some(service) = query
        .iter()
        .find(|(k, _)| k == "service")
        .map(|(_, v)| v.clone())
    else {
        return (StatusCode::BAD_REQUEST, "service is required").into_response();
    };
    // Who is asking.
    let user = match headers.get(header::AUTHORIZATION) {
        None => state.users.iter().find(|u| u.name.is_empty()),
        Some(v) => {
            let decoded = v
                .to_str()
                .ok()
                .and_then(|s| s.strip_prefix("Basic "))
                .and_then(|b| STANDARD.decode(b).ok())
                .and_then(|b| String::from_utf8(b).ok());
            let Some((name, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
                return unauthorized();
            };
            match state
                .users
                .iter()
                .find(|u| !u.name.is_empty() && u.name == name && u.password == password)
            {
                Some(u) => Some(u),
                None => return unauthorized(),
            }
        }
    };
    // Grant only the requested actions the user is allowed.
    let mut access = Vec::new();
    for (_, scope) in query.iter().filter(|(k, _)| k == "scope") {
        for one in scope.split_whitespace() {
            let Some((kind, rest)) = one.split_once(':') else {
                continue;
            };
            let Some((name, actions)) = rest.rsplit_once(':') else {
                continue;
            };
            let granted: Vec<&str> = actions
                .split(',')
                .filter(|a| {
                    user.is_some_and(|u| {
                        u.grants.iter().any(|(k, p, allowed)| {
                            k == kind && pattern_matches(p, name) && allowed.iter().any(|x| x == a)
                        })
                    })
                })
                .collect();
            if !granted.is_empty() {
                access.push(json!({"type": kind, "name": name, "actions": granted}));
            }
        }
    }
    let now = now();
    let subject = user.map(|u| u.name.clone()).unwrap_or_default();
    let claims = json!({
        "iss": state.issuer,
        "sub": subject,
        "aud": service,
        "exp": now + 300,
        "nbf": now,
        "iat": now,
        "jti": format!("{subject}-{now}-{}", access.len()),
        "access": access,
    });
    let token = state.signer.sign(&claims, &state.hint);
    axum::Json(json!({
        "token": token,
        "access_token": token,
        "expires_in": 300,
        "issued_at": rfc3339(now),
    }))
    .into_response()
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a unix time (UTC).
pub fn rfc3339(unix: i64) -> String {
    let t = if unix >= 0 {
        UNIX_EPOCH + std::time::Duration::from_secs(unix as u64)
    } else {
        UNIX_EPOCH - std::time::Duration::from_secs(unix.unsigned_abs())
    };
    berth::time::rfc3339(t)
}
