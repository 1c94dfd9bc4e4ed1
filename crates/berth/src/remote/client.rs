//! A client of another registry's distribution API: authentication by the Docker token spec
//! (or Basic), a bounded number of requests in flight, and guards on where it may be led.
//!
//! Credentials go to the remote itself and to a token realm on the remote's own host only (and,
//! for Docker Hub, to its token service); a realm on any other host is asked anonymously. Neither a redirect nor a realm may lead to a
//! loopback, link-local or private address unless the remote itself is at such an address (the
//! check is made on the addresses a name resolves to, by the resolver the connection uses).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode};
use url::Url;

use crate::oci::digest::Digest;
use crate::oci::manifest::{DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST};

/// The `Accept` header of manifest requests: every type Berth stores, so that the remote
/// answers with what it has, byte for byte, and converts nothing.
pub fn manifest_accept() -> String {
    [
        OCI_INDEX,
        OCI_MANIFEST,
        DOCKER_MANIFEST_LIST,
        DOCKER_MANIFEST,
    ]
    .join(", ")
}

/// Requests in flight to one remote at most, by default.
pub const DEFAULT_CONNECTIONS: usize = 8;

/// A remote registry as configured.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// What it is called in logs, metrics and messages.
    pub name: String,
    /// Its base URL (`https://registry.example.com`).
    pub url: Url,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Accepts any certificate (a remote with a self-signed one and no CA to trust).
    pub insecure: bool,
    /// PEM certificates trusted besides the usual roots.
    pub ca: Option<Vec<u8>>,
    /// Requests in flight at most.
    pub connections: usize,
}

/// Why a request to the remote failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// It does not have what was asked for (404).
    #[error("not found")]
    NotFound,
    /// Down, slow, rate-limiting (429) or failing (5xx).
    #[error("{0}")]
    Unavailable(String),
    /// It refused (401, 403, other 4xx), or answered what no registry answers.
    #[error("{0}")]
    Refused(String),
}

type Result<T> = std::result::Result<T, ClientError>;

/// A bearer token for one scope.
struct Token {
    value: String,
    until: Instant,
}

/// A client of one remote registry.
pub struct Client {
    endpoint: Endpoint,
    http: reqwest::Client,
    /// Bearer tokens by scope.
    tokens: Mutex<HashMap<String, Token>>,
    /// Whether the remote asked for Basic authentication.
    basic: std::sync::atomic::AtomicBool,
    permits: Arc<tokio::sync::Semaphore>,
    guard: Arc<AddressGuard>,
}

/// A request to send with [`Client::call`].
pub struct Call<'a> {
    pub method: Method,
    pub url: Url,
    /// The token scope it needs (`repository:NAME:pull,push`).
    pub scope: &'a str,
    pub accept: Option<&'a str>,
    pub content_type: Option<&'a str>,
    /// Kept whole so that it can be sent again after a challenge.
    pub body: Option<Bytes>,
    pub headers: Vec<(&'static str, String)>,
}

impl<'a> Call<'a> {
    pub fn new(method: Method, url: Url, scope: &'a str) -> Call<'a> {
        Call {
            method,
            url,
            scope,
            accept: None,
            content_type: None,
            body: None,
            headers: Vec::new(),
        }
    }
}

/// A response whose body is still to be read, holding its request's place in flight.
pub struct Answer {
    pub response: reqwest::Response,
    permit: tokio::sync::OwnedSemaphorePermit,
}

impl Client {
    pub fn new(endpoint: Endpoint) -> anyhow::Result<Client> {
        let host = endpoint
            .url
            .host_str()
            .ok_or_else(|| anyhow::anyhow!("{} has no host", endpoint.url))?
            .to_string();
        let guard = Arc::new(AddressGuard::new(&host));
        let redirects = guard.clone();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(endpoint.connections)
            .dns_resolver(guard.clone())
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= 5 {
                    return attempt.error("more than 5 redirects");
                }
                match redirects.allows_url(attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(why) => attempt.error(why),
                }
            }))
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")));
        if endpoint.insecure {
            builder = builder.danger_accept_invalid_certs(true);
        }
        if let Some(pem) = &endpoint.ca {
            for cert in reqwest::Certificate::from_pem_bundle(pem)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(Client {
            permits: Arc::new(tokio::sync::Semaphore::new(endpoint.connections.max(1))),
            http: builder.build()?,
            endpoint,
            tokens: Mutex::new(HashMap::new()),
            basic: std::sync::atomic::AtomicBool::new(false),
            guard,
        })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// `GET`/`HEAD` of `path` (below `/v2/`), authenticated for `scope` as the remote asks.
    /// Any status but 2xx is an error.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        scope: &str,
        accept: Option<&str>,
    ) -> Result<Answer> {
        let mut call = Call::new(method, self.url(path)?, scope);
        call.accept = accept;
        self.call(call).await
    }

    /// The URL of `path` below the remote's `/v2/`.
    pub fn url(&self, path: &str) -> Result<Url> {
        self.endpoint
            .url
            .join(&format!("v2/{path}"))
            .map_err(|e| ClientError::Refused(format!("bad path {path}: {e}")))
    }

    /// A `Location` the remote answered, made absolute.
    pub fn location(&self, answer: &Answer) -> Result<Url> {
        let location = answer.header("location").ok_or_else(|| {
            ClientError::Refused(format!(
                "{} answered without a Location",
                self.endpoint.name
            ))
        })?;
        self.endpoint
            .url
            .join(location)
            .map_err(|e| ClientError::Refused(format!("bad Location {location:?}: {e}")))
    }

    /// The id the remote gives itself on `GET /v2/` (`Berth-Registry-Id`, sent by Berth), once
    /// it answers; the connectivity check.
    pub async fn ping(&self) -> Result<Option<String>> {
        let answer = self
            .call(Call::new(Method::GET, self.url("")?, "registry:catalog:*"))
            .await?;
        Ok(answer.header("berth-registry-id").map(str::to_string))
    }

    /// Sends `call`, answering the remote's authentication challenge once. Any status but 2xx
    /// is an error.
    pub async fn call(&self, call: Call<'_>) -> Result<Answer> {
        let Call {
            method,
            url,
            scope,
            accept,
            content_type,
            body,
            headers,
        } = call;
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ClientError::Unavailable("shutting down".into()))?;
        let mut challenged = false;
        loop {
            let mut req = self.http.request(method.clone(), url.clone());
            if let Some(accept) = accept {
                req = req.header(ACCEPT, accept);
            }
            if let Some(content_type) = content_type {
                req = req.header(CONTENT_TYPE, content_type);
            }
            for (name, value) in &headers {
                req = req.header(*name, value.as_str());
            }
            if let Some(body) = &body {
                req = req.body(body.clone());
            }
            if let Some(auth) = self.authorization(scope) {
                req = req.header(AUTHORIZATION, auth);
            }
            let response = req.send().await.map_err(|e| self.unreachable(&e))?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && !challenged {
                challenged = true;
                self.answer_challenge(response.headers(), scope).await?;
                continue;
            }
            return match status {
                s if s.is_success() => Ok(Answer { response, permit }),
                StatusCode::NOT_FOUND => Err(ClientError::NotFound),
                s => Err(self.failed(s, &response.text().await.unwrap_or_default())),
            };
        }
    }

    /// The `Authorization` header for `scope`: a token got for it, else Basic if the remote
    /// asked for it, else none.
    fn authorization(&self, scope: &str) -> Option<HeaderValue> {
        if let Some(token) = self.tokens.lock().unwrap().get(scope) {
            if token.until > Instant::now() {
                return HeaderValue::from_str(&format!("Bearer {}", token.value)).ok();
            }
        }
        if self.basic.load(std::sync::atomic::Ordering::Relaxed) {
            return self.basic_value();
        }
        None
    }

    fn basic_value(&self) -> Option<HeaderValue> {
        use base64::Engine;
        let user = self.endpoint.username.as_deref()?;
        let password = self.endpoint.password.as_deref().unwrap_or_default();
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    /// Does what a 401's challenge asks: gets a token from its realm, or notes that Basic is
    /// wanted.
    async fn answer_challenge(&self, headers: &HeaderMap, scope: &str) -> Result<()> {
        let challenge = headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(Challenge::parse)
            .ok_or_else(|| {
                ClientError::Refused(format!(
                    "{} answered 401 without a challenge Berth can answer",
                    self.endpoint.name
                ))
            })?;
        match challenge {
            Challenge::Basic => {
                if self.endpoint.username.is_none() {
                    return Err(ClientError::Refused(format!(
                        "{} asks for a user name and password, and none is configured",
                        self.endpoint.name
                    )));
                }
                self.basic.store(true, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            Challenge::Bearer { realm, service } => {
                let token = self.fetch_token(&realm, service.as_deref(), scope).await?;
                self.tokens.lock().unwrap().insert(scope.to_string(), token);
                Ok(())
            }
        }
    }

    /// A token from `realm` for `scope`, asked with the configured credentials only when the
    /// realm is on the remote's own host.
    async fn fetch_token(&self, realm: &str, service: Option<&str>, scope: &str) -> Result<Token> {
        let mut url = Url::parse(realm).map_err(|e| {
            ClientError::Refused(format!(
                "{} names a bad token realm {realm:?}: {e}",
                self.endpoint.name
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ClientError::Refused(format!(
                "{} names a token realm that is not http(s): {realm}",
                self.endpoint.name
            )));
        }
        self.guard.allows_url(&url).map_err(ClientError::Refused)?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            query.append_pair("scope", scope);
        }
        let mut req = self.http.get(url.clone());
        if same_host(&url, &self.endpoint.url) {
            if let Some(basic) = self.basic_value() {
                req = req.header(AUTHORIZATION, basic);
            }
        } else if self.endpoint.username.is_some() {
            tracing::warn!(
                remote = %self.endpoint.name,
                realm = %realm,
                "the token realm is on another host: asking it without credentials"
            );
        }
        let response = req.send().await.map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(self.failed(status, &response.text().await.unwrap_or_default()));
        }
        #[derive(serde::Deserialize)]
        struct Issued {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let issued: Issued = response.json().await.map_err(|e| {
            ClientError::Refused(format!(
                "{realm} answered something that is not a token: {e}"
            ))
        })?;
        let value = issued
            .token
            .or(issued.access_token)
            .ok_or_else(|| ClientError::Refused(format!("{realm} answered without a token")))?;
        // Used until shortly before it expires (60 s, the spec's default, when unsaid).
        let lifetime = issued.expires_in.unwrap_or(60).saturating_sub(10).max(5);
        Ok(Token {
            value,
            until: Instant::now() + Duration::from_secs(lifetime),
        })
    }

    fn unreachable(&self, e: &reqwest::Error) -> ClientError {
        let mut why = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            why = format!("{why}: {s}");
            source = s.source();
        }
        if e.is_redirect() {
            ClientError::Refused(format!("{}: {why}", self.endpoint.name))
        } else {
            ClientError::Unavailable(format!(
                "{} could not be reached: {why}",
                self.endpoint.name
            ))
        }
    }

    fn failed(&self, status: StatusCode, body: &str) -> ClientError {
        let body: String = body.chars().take(300).collect();
        let why = format!("{} answered {status}: {}", self.endpoint.name, body.trim());
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            ClientError::Unavailable(why)
        } else {
            ClientError::Refused(why)
        }
    }
}

impl Answer {
    /// The whole body, refused past `limit` bytes.
    pub async fn bytes_limited(self, limit: usize) -> Result<Bytes> {
        if self
            .response
            .content_length()
            .is_some_and(|n| n > limit as u64)
        {
            return Err(ClientError::Refused(format!(
                "the answer is larger than {limit} bytes"
            )));
        }
        let mut body = BytesMut::new();
        let mut stream = self.response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| ClientError::Unavailable(format!("the answer was cut: {e}")))?;
            if body.len() + chunk.len() > limit {
                return Err(ClientError::Refused(format!(
                    "the answer is larger than {limit} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        drop(self.permit);
        Ok(body.freeze())
    }

    /// The body as a stream that keeps the request's place in flight until it ends.
    pub fn into_stream(self) -> crate::storage::ByteStream {
        let permit = self.permit;
        Box::pin(self.response.bytes_stream().map(move |chunk| {
            let _held = &permit;
            chunk.map_err(std::io::Error::other)
        }))
    }

    pub fn status(&self) -> StatusCode {
        self.response.status()
    }

    /// A header's value, if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
    }

    /// The media type the answer declares (without parameters).
    pub fn media_type(&self) -> Option<String> {
        self.header(CONTENT_TYPE.as_str())
            .map(|v| v.split(';').next().unwrap_or_default().trim().to_string())
            .filter(|v| !v.is_empty())
    }

    /// `Docker-Content-Digest`, if the remote sent a valid one.
    pub fn digest(&self) -> Option<Digest> {
        self.header("docker-content-digest")
            .and_then(|d| d.parse().ok())
    }
}

/// What a `WWW-Authenticate` header asks for.
#[derive(Debug, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

impl Challenge {
    fn parse(header: &str) -> Option<Challenge> {
        let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = auth_params(params);
        let realm = params.get("realm")?.clone();
        Some(Challenge::Bearer {
            realm,
            service: params.get("service").cloned(),
        })
    }
}

/// `key="value", key=value` pairs of a challenge (keys lower-cased).
fn auth_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, next)) = chars.next() {
                            value.push(next);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end.min(quoted.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        out.insert(key, value);
        rest = tail.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

/// Whether a token realm at `realm` is the remote `remote`'s own: on the same host (any port),
/// or Docker Hub's token service for Docker Hub's registry.
fn same_host(realm: &Url, remote: &Url) -> bool {
    let host = |u: &Url| u.host_str().map(str::to_ascii_lowercase);
    host(realm) == host(remote)
        || (host(realm).as_deref() == Some("auth.docker.io")
            && realm.scheme() == "https"
            && matches!(
                host(remote).as_deref(),
                Some("registry-1.docker.io" | "index.docker.io" | "docker.io")
            ))
}

/// Where an address is, as far as where a request may be led is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Reach {
    Public,
    Loopback,
    LinkLocal,
    Private,
}

fn reach(ip: IpAddr) -> Reach {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                Reach::Loopback
            } else if v4.is_link_local() {
                Reach::LinkLocal
            } else if v4.is_private()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                // Shared address space (carrier-grade NAT), 100.64.0.0/10.
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || o[0] == 0
            {
                Reach::Private
            } else {
                Reach::Public
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return reach(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Reach::Loopback
            } else if (first & 0xffc0) == 0xfe80 {
                Reach::LinkLocal
            } else if (first & 0xfe00) == 0xfc00 || v6.is_unspecified() || v6.is_multicast() {
                Reach::Private
            } else {
                Reach::Public
            }
        }
    }
}

/// Which addresses requests may be led to: public ones, and those where the remote itself is.
struct AddressGuard {
    /// The remote's host name (lower case), whose addresses are always allowed.
    home: String,
    /// The kinds of address the remote itself was found at (learned as its name resolves).
    allowed: Arc<Mutex<Vec<Reach>>>,
}

impl AddressGuard {
    fn new(home: &str) -> AddressGuard {
        let home = home
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let allowed = match home.parse::<IpAddr>() {
            Ok(ip) => vec![Reach::Public, reach(ip)],
            Err(_) => vec![Reach::Public],
        };
        AddressGuard {
            home,
            allowed: Arc::new(Mutex::new(allowed)),
        }
    }

    fn allows(&self, ip: IpAddr) -> bool {
        self.allowed.lock().unwrap().contains(&reach(ip))
    }

    /// Whether a request may go to `url` (its host, when it is an address; names are checked
    /// when they resolve).
    fn allows_url(&self, url: &Url) -> std::result::Result<(), String> {
        let host = url.host_str().unwrap_or_default();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        match bare.parse::<IpAddr>() {
            Ok(ip) if !self.allows(ip) && bare.to_ascii_lowercase() != self.home => Err(format!(
                "refusing to follow {url}: {ip} is a {:?} address and the remote is not",
                reach(ip)
            )),
            _ => Ok(()),
        }
    }
}

impl reqwest::dns::Resolve for AddressGuard {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let name = name.as_str().to_ascii_lowercase();
        let home = name == self.home;
        let allowed = self.allowed.clone();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let kept: Vec<SocketAddr> = if home {
                let mut allowed = allowed.lock().unwrap();
                for a in &addrs {
                    if !allowed.contains(&reach(a.ip())) {
                        allowed.push(reach(a.ip()));
                    }
                }
                addrs
            } else {
                let allowed = allowed.lock().unwrap();
                addrs
                    .into_iter()
                    .filter(|a| allowed.contains(&reach(a.ip())))
                    .collect()
            };
            if kept.is_empty() {
                return Err(format!(
                    "{name} resolves only to loopback, link-local or private addresses, \
                     where the remote is not: refused"
                )
                .into());
            }
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_read_as_registries_send_them() {
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into())
            })
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            Challenge::parse(r#"bearer realm="http://h/t\"x", service=svc"#),
            Some(Challenge::Bearer {
                realm: "http://h/t\"x".into(),
                service: Some("svc".into())
            })
        );
        assert_eq!(Challenge::parse("Bearer service=x"), None);
        assert_eq!(Challenge::parse("Negotiate"), None);
    }

    #[test]
    fn addresses_are_classed_by_where_they_lead() {
        for (ip, want) in [
            ("8.8.8.8", Reach::Public),
            ("127.0.0.1", Reach::Loopback),
            ("169.254.169.254", Reach::LinkLocal),
            ("10.1.2.3", Reach::Private),
            ("172.16.0.1", Reach::Private),
            ("192.168.1.1", Reach::Private),
            ("100.64.0.1", Reach::Private),
            ("0.0.0.0", Reach::Private),
            ("::1", Reach::Loopback),
            ("fe80::1", Reach::LinkLocal),
            ("fd00::1", Reach::Private),
            ("::ffff:127.0.0.1", Reach::Loopback),
            ("2606:4700::1111", Reach::Public),
        ] {
            assert_eq!(reach(ip.parse().unwrap()), want, "{ip}");
        }
    }

    #[test]
    fn redirects_stay_where_the_remote_is() {
        let public = AddressGuard::new("registry.example.com");
        for url in [
            "http://127.0.0.1/x",
            "http://169.254.169.254/latest",
            "http://[::1]/",
            "http://10.0.0.1/",
        ] {
            assert!(
                public.allows_url(&Url::parse(url).unwrap()).is_err(),
                "{url}"
            );
        }
        assert!(public
            .allows_url(&Url::parse("https://1.2.3.4/x").unwrap())
            .is_ok());
        let local = AddressGuard::new("127.0.0.1");
        assert!(local
            .allows_url(&Url::parse("http://127.0.0.2/x").unwrap())
            .is_ok());
        assert!(local
            .allows_url(&Url::parse("http://169.254.169.254/x").unwrap())
            .is_err());
        assert!(local
            .allows_url(&Url::parse("http://192.168.0.1/x").unwrap())
            .is_err());
    }

    #[test]
    fn credentials_go_to_the_remotes_own_host() {
        let u = |s: &str| Url::parse(s).unwrap();
        let own = |realm: &str, remote: &str| same_host(&u(realm), &u(remote));
        assert!(own("https://r.example/token", "https://R.example/"));
        assert!(own("https://r.example:444/token", "https://r.example/"));
        assert!(own(
            "https://auth.docker.io/token",
            "https://registry-1.docker.io/"
        ));
        assert!(!own(
            "http://auth.docker.io/token",
            "https://registry-1.docker.io/"
        ));
        assert!(!own(
            "https://auth.docker.io/token",
            "https://evil.example/"
        ));
        assert!(!own("https://auth.example/token", "https://r.example/"));
        assert!(!own("http://localhost:5000/", "http://127.0.0.1:5000/"));
    }
}
