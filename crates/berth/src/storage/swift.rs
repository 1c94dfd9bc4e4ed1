//! OpenStack Swift: OpenDAL's Swift service with the authentication it leaves to its caller.
//!
//! OpenDAL's service is given a storage URL and a token; this driver gets both from the
//! configured identity service (tempauth or Swift's own v1 auth, Keystone v2 or v3, as
//! Distribution's `storage.swift` keys say), and gets a new token before the old one expires
//! and whenever Swift refuses one (every call is retried once with a fresh token after a 401).
//!
//! Large objects: OpenDAL writes an object of more than one part as a static large object
//! (segments below `.segments/` in the same container, and a manifest at the path). A manifest is
//! deleted through `?multipart-manifest=delete`, which removes its segments with it, so nothing
//! is left behind. A copy is a server-side copy of the
//! content up to Swift's 5 GiB object limit; a larger object is copied through this process as
//! a new large object, a part at a time. Segments of a write cut short by a crash (no manifest
//! names them) are removed by upload purging.

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::TryStreamExt;
use opendal::{services, Operator};
use serde_json::{json, Value};

use super::driver::{
    delete_each, http_status_kind, ByteStream, Capabilities, Driver, DriverError, DriverWriter,
    Durability, Entry, ErrorKind, Result,
};
use super::opendal::{OpenDalDriver, Tuning};

/// The largest object Swift stores (and copies) in one piece.
const SWIFT_MAX_OBJECT: u64 = 5 << 30;
/// A token is renewed this long before it expires.
const RENEW_MARGIN: Duration = Duration::from_secs(60);
/// How long a token is used when the identity service does not say when it expires.
const DEFAULT_TOKEN_LIFE: Duration = Duration::from_secs(3600);

/// Who to authenticate as, and where: Distribution's `storage.swift` keys.
#[derive(Clone, Debug)]
pub struct SwiftAuth {
    pub auth_url: String,
    pub username: String,
    pub password: String,
    /// 1, 2 or 3; guessed from the URL when unset.
    pub version: Option<u32>,
    pub tenant: Option<String>,
    pub tenant_id: Option<String>,
    pub domain: Option<String>,
    pub domain_id: Option<String>,
    pub tenant_domain: Option<String>,
    pub tenant_domain_id: Option<String>,
    pub region: Option<String>,
    /// `public` (default), `internal` or `admin`.
    pub endpoint_type: Option<String>,
    pub insecure: bool,
}

/// A token and the storage URL it is good for.
#[derive(Debug, Clone)]
struct Token {
    storage_url: String,
    token: String,
    expires: Option<Duration>,
}

impl SwiftAuth {
    fn version(&self) -> u32 {
        self.version.unwrap_or_else(|| {
            let url = self.auth_url.to_ascii_lowercase();
            if url.contains("/v3") {
                3
            } else if url.contains("/v2") {
                2
            } else {
                1
            }
        })
    }

    async fn token(&self, http: &reqwest::Client) -> Result<Token> {
        let token = match self.version() {
            1 => self.token_v1(http).await,
            2 => self.token_v2(http).await,
            3 => self.token_v3(http).await,
            v => Err(DriverError::new(
                ErrorKind::Other,
                format!("storage.swift.authversion is {v}; it must be 1, 2 or 3"),
            )),
        }?;
        tracing::debug!(storage_url = %token.storage_url, "authenticated to Swift");
        Ok(token)
    }

    async fn token_v1(&self, http: &reqwest::Client) -> Result<Token> {
        let resp = http
            .get(&self.auth_url)
            .header("X-Auth-User", &self.username)
            .header("X-Auth-Key", &self.password)
            .send()
            .await
            .map_err(unreachable(&self.auth_url))?;
        let resp = accepted(resp, &self.auth_url).await?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (Some(storage_url), Some(token)) = (header("X-Storage-Url"), header("X-Auth-Token"))
        else {
            return Err(DriverError::new(
                ErrorKind::Other,
                format!(
                    "{}: the answer has no X-Storage-Url or X-Auth-Token",
                    self.auth_url
                ),
            ));
        };
        let expires = header("X-Auth-Token-Expires")
            .and_then(|s| s.parse::<u64>().ok())
            .map(Duration::from_secs);
        Ok(Token {
            storage_url,
            token,
            expires,
        })
    }

    async fn token_v2(&self, http: &reqwest::Client) -> Result<Token> {
        let url = endpoint_url(&self.auth_url, "tokens");
        let mut auth = json!({
            "passwordCredentials": {"username": self.username, "password": self.password}
        });
        if let Some(t) = self.tenant.as_deref().filter(|t| !t.is_empty()) {
            auth["tenantName"] = json!(t);
        }
        if let Some(t) = self.tenant_id.as_deref().filter(|t| !t.is_empty()) {
            auth["tenantId"] = json!(t);
        }
        let resp = http
            .post(&url)
            .json(&json!({ "auth": auth }))
            .send()
            .await
            .map_err(unreachable(&url))?;
        let body: Value = accepted(resp, &url)
            .await?
            .json()
            .await
            .map_err(unreachable(&url))?;
        let access = &body["access"];
        let token = access["token"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let expires = access["token"]["expires"].as_str().and_then(until);
        let interface = format!("{}URL", self.interface());
        let storage_url = catalog_endpoint(&access["serviceCatalog"], |e| {
            self.region_matches(e["region"].as_str())
                .then(|| e[interface.as_str()].as_str())
                .flatten()
        });
        token_from(&url, token, storage_url, expires)
    }

    async fn token_v3(&self, http: &reqwest::Client) -> Result<Token> {
        let url = endpoint_url(&self.auth_url, "auth/tokens");
        let domain = |name: &Option<String>, id: &Option<String>| match (
            id.as_deref().filter(|s| !s.is_empty()),
            name.as_deref().filter(|s| !s.is_empty()),
        ) {
            (Some(id), _) => Some(json!({ "id": id })),
            (None, Some(name)) => Some(json!({ "name": name })),
            (None, None) => None,
        };
        let mut user = json!({ "name": self.username, "password": self.password });
        if let Some(d) = domain(&self.domain, &self.domain_id) {
            user["domain"] = d;
        }
        let mut body = json!({
            "auth": {"identity": {"methods": ["password"], "password": {"user": user}}}
        });
        let project = match (
            self.tenant_id.as_deref().filter(|s| !s.is_empty()),
            self.tenant.as_deref().filter(|s| !s.is_empty()),
        ) {
            (Some(id), _) => Some(json!({ "id": id })),
            (None, Some(name)) => {
                let mut p = json!({ "name": name });
                // A project named without a domain is looked up in the user's domain.
                if let Some(d) = domain(&self.tenant_domain, &self.tenant_domain_id)
                    .or_else(|| domain(&self.domain, &self.domain_id))
                {
                    p["domain"] = d;
                }
                Some(p)
            }
            (None, None) => None,
        };
        if let Some(p) = project {
            body["auth"]["scope"] = json!({ "project": p });
        }
        let resp = http
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(unreachable(&url))?;
        let resp = accepted(resp, &url).await?;
        let token = resp
            .headers()
            .get("X-Subject-Token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body: Value = resp.json().await.map_err(unreachable(&url))?;
        let expires = body["token"]["expires_at"].as_str().and_then(until);
        let interface = self.interface();
        let storage_url = catalog_endpoint(&body["token"]["catalog"], |e| {
            (e["interface"].as_str() == Some(interface)
                && (self.region_matches(e["region"].as_str())
                    || self.region_matches(e["region_id"].as_str())))
            .then(|| e["url"].as_str())
            .flatten()
        });
        token_from(&url, token, storage_url, expires)
    }

    fn interface(&self) -> &str {
        match self.endpoint_type.as_deref() {
            Some("internal") => "internal",
            Some("admin") => "admin",
            _ => "public",
        }
    }

    fn region_matches(&self, region: Option<&str>) -> bool {
        match self.region.as_deref().filter(|r| !r.is_empty()) {
            None => true,
            Some(want) => region == Some(want),
        }
    }
}

/// `base` with `path` appended unless it ends with it already (`.../v3` → `.../v3/auth/tokens`).
fn endpoint_url(base: &str, path: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with(path) {
        base.to_string()
    } else {
        format!("{base}/{path}")
    }
}

/// A time in a Swift listing (`2026-12-02T05:00:00.123456`, UTC).
fn swift_time(t: &str) -> Option<SystemTime> {
    let civil: jiff::civil::DateTime = t.parse().ok()?;
    let at = civil.to_zoned(jiff::tz::TimeZone::UTC).ok()?;
    Some(SystemTime::from(at.timestamp()))
}

/// How long from now until an ISO 8601 time from the identity service.
fn until(t: &str) -> Option<Duration> {
    let at: jiff::Timestamp = t.parse().ok()?;
    let secs = at.as_second() - jiff::Timestamp::now().as_second();
    Some(Duration::from_secs(secs.max(0) as u64))
}

/// The first object-store endpoint of a service catalog that `pick` accepts.
fn catalog_endpoint(catalog: &Value, pick: impl Fn(&Value) -> Option<&str>) -> Option<String> {
    catalog
        .as_array()?
        .iter()
        .filter(|s| s["type"].as_str() == Some("object-store"))
        .flat_map(|s| s["endpoints"].as_array().into_iter().flatten())
        .find_map(|e| pick(e).map(str::to_string))
}

fn token_from(
    url: &str,
    token: String,
    storage_url: Option<String>,
    expires: Option<Duration>,
) -> Result<Token> {
    if token.is_empty() {
        return Err(DriverError::new(
            ErrorKind::Other,
            format!("{url}: the answer carries no token"),
        ));
    }
    let storage_url = storage_url.ok_or_else(|| {
        DriverError::new(
            ErrorKind::Other,
            format!(
                "{url}: the service catalog has no object-store endpoint for the configured \
                 region and endpoint type"
            ),
        )
    })?;
    Ok(Token {
        storage_url,
        token,
        expires,
    })
}

fn unreachable(url: &str) -> impl Fn(reqwest::Error) -> DriverError + '_ {
    move |e| DriverError::caused(ErrorKind::Unavailable, format_args!("reaching {url}"), e)
}

/// The response if it is a success; otherwise an error of the kind its status says.
async fn accepted(resp: reqwest::Response, url: &str) -> Result<reqwest::Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let kind = http_status_kind(status.as_u16());
    let text = resp.text().await.unwrap_or_default();
    Err(DriverError::new(
        kind,
        format!("{url} answered {status}: {}", text.trim()),
    ))
}

/// The driver in use, the token it was made with, and when to renew it.
struct Session {
    driver: Arc<OpenDalDriver>,
    token: Token,
    renew_at: Instant,
    generation: u64,
}

/// Objects in a Swift container, with authentication kept fresh.
pub struct SwiftDriver {
    auth: SwiftAuth,
    container: String,
    root: String,
    temp_url_key: Option<String>,
    tuning: Tuning,
    http: reqwest::Client,
    capabilities: Capabilities,
    session: tokio::sync::RwLock<Session>,
    /// Held while a new token is fetched, so that one fetch serves every caller that needed it.
    renewing: tokio::sync::Mutex<()>,
}

impl SwiftDriver {
    /// Authenticates and opens `container` (which must exist) below `root`.
    pub async fn connect(
        auth: SwiftAuth,
        container: String,
        root: String,
        temp_url_key: Option<String>,
        tuning: Tuning,
    ) -> Result<SwiftDriver> {
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(auth.insecure)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| DriverError::caused(ErrorKind::Other, "building the HTTP client", e))?;
        let token = auth.token(&http).await?;
        let mut driver = SwiftDriver {
            auth,
            container,
            root,
            temp_url_key,
            tuning,
            http,
            capabilities: Capabilities::default(),
            session: tokio::sync::RwLock::new(Session {
                driver: Arc::new(OpenDalDriver::memory()?),
                token: token.clone(),
                renew_at: Instant::now(),
                generation: 0,
            }),
            renewing: tokio::sync::Mutex::new(()),
        };
        let session = driver.session_for(token, 1)?;
        driver.capabilities = session.driver.capabilities();
        *driver.session.get_mut() = session;
        Ok(driver)
    }

    fn session_for(&self, token: Token, generation: u64) -> Result<Session> {
        let mut b = services::Swift::default()
            .endpoint(&token.storage_url)
            .container(&self.container)
            .root(&self.root)
            .token(&token.token);
        if let Some(key) = &self.temp_url_key {
            b = b.temp_url_key(key);
        }
        let op = Operator::new(b)
            .map_err(|e| DriverError::caused(ErrorKind::Other, "opening the Swift container", e))?;
        let mut op = super::opendal::with_retries(op);
        if self.auth.insecure {
            op = super::opendal::without_certificate_checks(op)?;
        }
        let life = token.expires.unwrap_or(DEFAULT_TOKEN_LIFE);
        Ok(Session {
            driver: Arc::new(OpenDalDriver::with_tuning(op, self.tuning)),
            renew_at: Instant::now() + life.saturating_sub(RENEW_MARGIN).max(life / 2),
            token,
            generation,
        })
    }

    /// The driver to use now (renewing the token first if it is about to expire).
    async fn current(&self) -> Result<(Arc<OpenDalDriver>, Token, u64)> {
        let (driver, token, generation, due) = {
            let s = self.session.read().await;
            (
                s.driver.clone(),
                s.token.clone(),
                s.generation,
                Instant::now() >= s.renew_at,
            )
        };
        if due {
            return self.renew(generation).await;
        }
        Ok((driver, token, generation))
    }

    /// A new token, unless another caller got one since `seen` was current.
    async fn renew(&self, seen: u64) -> Result<(Arc<OpenDalDriver>, Token, u64)> {
        let _one = self.renewing.lock().await;
        {
            let s = self.session.read().await;
            if s.generation != seen {
                return Ok((s.driver.clone(), s.token.clone(), s.generation));
            }
        }
        let token = self.auth.token(&self.http).await?;
        let session = self.session_for(token, seen + 1)?;
        let out = (
            session.driver.clone(),
            session.token.clone(),
            session.generation,
        );
        *self.session.write().await = session;
        Ok(out)
    }

    /// Runs `op` with the current driver, and once more with a new token if Swift refused it.
    async fn call<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: Fn(Arc<OpenDalDriver>, Token) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let (driver, token, generation) = self.current().await?;
        match op(driver, token).await {
            Err(e) if e.kind() == ErrorKind::Auth => {
                tracing::info!(error = %e, "Swift refused the token; authenticating again");
                let (driver, token, _) = self.renew(generation).await?;
                op(driver, token).await
            }
            other => other,
        }
    }

    /// The URL of the object at `path` (below the root), its segments percent-encoded.
    fn object_url(&self, storage_url: &str, path: &str) -> Result<url::Url> {
        let name = format!("{}{path}", self.root.trim_start_matches('/'));
        self.container_url(storage_url, &name)
    }

    /// The URL of the object `name` of the container (outside the root too: `.segments/`).
    fn container_url(&self, storage_url: &str, name: &str) -> Result<url::Url> {
        let mut url = url::Url::parse(storage_url)
            .map_err(|e| DriverError::caused(ErrorKind::Other, "the storage URL of Swift", e))?;
        {
            let mut segments = url
                .path_segments_mut()
                .map_err(|_| DriverError::new(ErrorKind::Other, "the storage URL of Swift"))?;
            segments.pop_if_empty().push(&self.container);
            for s in name.split('/') {
                if !s.is_empty() {
                    segments.push(s);
                }
            }
        }
        Ok(url)
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        token: &Token,
        url: &str,
    ) -> Result<reqwest::Response> {
        req.header("X-Auth-Token", &token.token)
            .send()
            .await
            .map_err(unreachable(url))
    }

    /// Removes the segments of large objects whose writes were cut short (no manifest names
    /// them) and whose newest segment is older than `cutoff`; returns how many writes' segments
    /// were removed.
    async fn purge_segments(&self, token: &Token, cutoff: SystemTime) -> Result<usize> {
        let prefix = format!(".segments/{}", self.root.trim_start_matches('/'));
        // Segments by the write they belong to: `.segments/<object><write id>/<number>`.
        let mut writes: std::collections::HashMap<String, (SystemTime, Vec<String>)> =
            std::collections::HashMap::new();
        let mut marker = String::new();
        loop {
            let mut url = self.container_url(&token.storage_url, "")?;
            url.query_pairs_mut()
                .append_pair("format", "json")
                .append_pair("prefix", &prefix)
                .append_pair("marker", &marker);
            let resp = self
                .send(self.http.get(url.clone()), token, url.as_str())
                .await?;
            if resp.status().as_u16() == 404 {
                return Ok(0);
            }
            let page: Vec<Value> = accepted(resp, url.as_str())
                .await?
                .json()
                .await
                .map_err(unreachable(url.as_str()))?;
            let Some(last) = page.last().and_then(|o| o["name"].as_str()) else {
                break;
            };
            marker = last.to_string();
            for object in &page {
                let Some(name) = object["name"].as_str() else {
                    continue;
                };
                let Some((write, _number)) = name.rsplit_once('/') else {
                    continue;
                };
                let modified = object["last_modified"]
                    .as_str()
                    .and_then(swift_time)
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                let entry = writes
                    .entry(write.to_string())
                    .or_insert((SystemTime::UNIX_EPOCH, Vec::new()));
                entry.0 = entry.0.max(modified);
                entry.1.push(name.to_string());
            }
        }
        let mut purged = 0;
        for (write, (newest, segments)) in writes {
            if newest >= cutoff || self.manifest_names(token, &write).await? {
                continue;
            }
            for name in segments {
                let url = self.container_url(&token.storage_url, &name)?;
                let resp = self
                    .send(self.http.delete(url.clone()), token, url.as_str())
                    .await?;
                if resp.status().as_u16() != 404 {
                    accepted(resp, url.as_str()).await?;
                }
            }
            purged += 1;
        }
        Ok(purged)
    }

    /// Whether the object the segments `write` (`.segments/<object><write id>`) were written
    /// for is a large object made of them.
    async fn manifest_names(&self, token: &Token, write: &str) -> Result<bool> {
        // The write id is a UUID in its hyphenated form.
        let Some(object) = write
            .strip_prefix(".segments/")
            .and_then(|w| w.get(..w.len().checked_sub(36)?))
        else {
            return Ok(false);
        };
        let mut url = self.container_url(&token.storage_url, object)?;
        url.set_query(Some("multipart-manifest=get"));
        let resp = self
            .send(self.http.get(url.clone()), token, url.as_str())
            .await?;
        if resp.status().as_u16() == 404 {
            return Ok(false);
        }
        let resp = accepted(resp, url.as_str()).await?;
        let large = resp
            .headers()
            .get("X-Static-Large-Object")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if !large {
            return Ok(false);
        }
        let manifest: Vec<Value> = resp.json().await.map_err(unreachable(url.as_str()))?;
        let wanted = format!("/{}/{write}/", self.container);
        Ok(manifest
            .iter()
            .filter_map(|seg| seg["name"].as_str())
            .any(|name| name.starts_with(&wanted)))
    }

    /// Deletes one object, and the segments of a large object with it: Swift's
    /// `?multipart-manifest=delete` takes manifests only, so the object is looked at first.
    async fn delete_object(&self, token: &Token, path: &str) -> Result<()> {
        let url = self.object_url(&token.storage_url, path)?;
        let head = self
            .http
            .head(url.clone())
            .header("X-Auth-Token", &token.token)
            .send()
            .await
            .map_err(unreachable(url.as_str()))?;
        if head.status().as_u16() == 404 {
            return Ok(());
        }
        let head = accepted(head, url.as_str()).await?;
        let manifest = head
            .headers()
            .get("X-Static-Large-Object")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let mut delete_url = url.clone();
        if manifest {
            delete_url.set_query(Some("multipart-manifest=delete"));
        }
        let resp = self
            .http
            .delete(delete_url)
            .header("X-Auth-Token", &token.token)
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(unreachable(url.as_str()))?;
        if resp.status().as_u16() == 404 {
            return Ok(());
        }
        let resp = accepted(resp, url.as_str()).await?;
        if !manifest {
            return Ok(());
        }
        // A manifest's delete answers like a bulk delete: 200, with the outcome in the body.
        let body: Value = resp.json().await.map_err(unreachable(url.as_str()))?;
        let status = body["Response Status"].as_str().unwrap_or_default();
        if status.starts_with("200") || status.starts_with("404") {
            Ok(())
        } else {
            Err(DriverError::new(
                ErrorKind::Unavailable,
                format!(
                    "deleting the large object {url}: {status}: {}",
                    body["Errors"]
                ),
            ))
        }
    }
}

#[async_trait::async_trait]
impl Driver for SwiftDriver {
    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    async fn stat(&self, path: &str) -> Result<Option<u64>> {
        self.call(|d, _| async move { d.stat(path).await }).await
    }

    async fn read(&self, path: &str, range: Range<u64>) -> Result<ByteStream> {
        self.call(|d, _| {
            let range = range.clone();
            async move { d.read(path, range).await }
        })
        .await
    }

    async fn read_all(&self, path: &str) -> Result<Bytes> {
        self.call(|d, _| async move { d.read_all(path).await })
            .await
    }

    async fn writer(&self, path: &str, durability: Durability) -> Result<Box<dyn DriverWriter>> {
        self.call(|d, _| async move { d.writer(path, durability).await })
            .await
    }

    async fn sync(&self, _path: &str) -> Result<()> {
        Ok(())
    }

    async fn copy(&self, from: &str, to: &str) -> Result<()> {
        let size = self
            .stat(from)
            .await?
            .ok_or_else(|| DriverError::new(ErrorKind::NotFound, format!("copying {from}")))?;
        if size <= SWIFT_MAX_OBJECT {
            return self
                .call(|d, _| async move { d.copy(from, to).await })
                .await;
        }
        // Past Swift's copy limit: a new large object, written a part at a time.
        let mut w = self.writer(to, Durability::Durable).await?;
        let copied: Result<()> = async {
            let mut s = self.read(from, 0..size).await?;
            while let Some(chunk) = s
                .try_next()
                .await
                .map_err(|e| DriverError::io(e, format_args!("reading {from}")))?
            {
                w.write(chunk).await?;
            }
            Ok(())
        }
        .await;
        match copied {
            Ok(()) => w.commit().await,
            Err(e) => {
                let _ = w.abort().await;
                Err(e)
            }
        }
    }

    async fn delete(&self, path: &str) -> Result<()> {
        self.call(|_, token| async move { self.delete_object(&token, path).await })
            .await
    }

    async fn delete_all(&self, dir: &str) -> Result<()> {
        delete_each(self, dir, self.tuning.delete_concurrency).await
    }

    async fn list(&self, dir: &str) -> Result<Vec<Entry>> {
        self.call(|d, _| async move { d.list(dir).await }).await
    }

    async fn presign_read(&self, path: &str, expires: Duration) -> Result<Option<url::Url>> {
        self.call(|d, _| async move { d.presign_read(path, expires).await })
            .await
    }

    async fn purge_temporaries(&self, cutoff: SystemTime) -> Result<usize> {
        // A large object's segments are written before its manifest: a write cut short by a
        // crash leaves segments that no manifest names.
        self.call(|_, token| async move { self.purge_segments(&token, cutoff).await })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_versions_are_guessed_from_the_url() {
        let auth = |url: &str, version| SwiftAuth {
            auth_url: url.into(),
            username: "u".into(),
            password: "p".into(),
            version,
            tenant: None,
            tenant_id: None,
            domain: None,
            domain_id: None,
            tenant_domain: None,
            tenant_domain_id: None,
            region: None,
            endpoint_type: None,
            insecure: false,
        };
        assert_eq!(auth("http://h/auth/v1.0", None).version(), 1);
        assert_eq!(auth("https://keystone/v2.0", None).version(), 2);
        assert_eq!(auth("https://keystone/v3", None).version(), 3);
        assert_eq!(auth("https://keystone/v3", Some(2)).version(), 2);
        assert_eq!(
            endpoint_url("https://k/v3/", "auth/tokens"),
            "https://k/v3/auth/tokens"
        );
        assert_eq!(
            endpoint_url("https://k/v3/auth/tokens", "auth/tokens"),
            "https://k/v3/auth/tokens"
        );
    }

    #[test]
    fn catalog_endpoints_follow_region_and_interface() {
        let catalog = json!([
            {"type": "identity", "endpoints": [{"interface": "public", "url": "http://id"}]},
            {"type": "object-store", "endpoints": [
                {"interface": "internal", "region": "r1", "url": "http://r1-internal"},
                {"interface": "public", "region": "r1", "url": "http://r1"},
                {"interface": "public", "region": "r2", "url": "http://r2"}
            ]}
        ]);
        let pick = |region: Option<&str>, interface: &str| {
            catalog_endpoint(&catalog, |e| {
                (e["interface"].as_str() == Some(interface)
                    && region.is_none_or(|r| e["region"].as_str() == Some(r)))
                .then(|| e["url"].as_str())
                .flatten()
            })
        };
        assert_eq!(pick(Some("r2"), "public").as_deref(), Some("http://r2"));
        assert_eq!(
            pick(None, "internal").as_deref(),
            Some("http://r1-internal")
        );
        assert_eq!(pick(Some("r3"), "public"), None);
    }
}
