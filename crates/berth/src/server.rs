//! Wiring: turns the configuration into running parts — stores, the core, the HTTP edge with its
//! layers, the debug server, maintenance tasks — and serves until a shutdown signal, letting
//! in-flight requests finish.

use std::future::Future;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use axum::http::{HeaderName, HeaderValue};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use tokio_util::sync::CancellationToken;

use crate::auth::{Authenticator, Builtin, Method};
use crate::config::{Config, Status};
use crate::http::health::StorageProbe;
use crate::http::{EdgeSettings, Health, TrustedProxies};
use crate::import;
use crate::meta::access::AccessStore;
use crate::meta::lease::{self, run_leased, run_once_leased};
use crate::meta::postgres::{PgMetaStore, PoolSettings};
use crate::meta::sqlite::SqliteMetaStore;
use crate::meta::{MetaError, MetaStore};
use crate::oci::manifest::Platform;
use crate::registry::{IndexChildren, Registry};
use crate::storage::BlobStore;

/// The configuration Berth uses when it is given no configuration file. `REGISTRY_*`
/// environment variables and command-line flags apply on top of it.
pub const DEFAULT_CONFIG: &str = "\
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: ./berth-data
  delete:
    enabled: true
http:
  addr: 0.0.0.0:5000
";

/// How long a URL handed out by a redirect to the storage backend stays valid (Distribution's
/// S3 driver: 20 minutes).
const BLOB_URL_LIFETIME: Duration = Duration::from_secs(20 * 60);

/// Where blobs are kept.
#[derive(Clone, Debug)]
pub enum StorageKind {
    /// The local filesystem under this root (Distribution's `filesystem.rootdirectory`).
    Fs(PathBuf),
    /// Process memory (Distribution's `inmemory`): lost on exit; for tests.
    Memory,
    /// An object store (`s3`, `swift`, `azure`, `gcs`, `oss`), opened from the configuration's
    /// `storage` section.
    Object(&'static str),
}

/// Where metadata lives.
#[derive(Clone, Debug)]
pub enum MetaKind {
    /// The embedded SQLite database file (`sqlite.path`).
    Sqlite(PathBuf),
    /// PostgreSQL (`database`), shared by any number of instances.
    Postgres(Box<PgConnectOptions>, PoolSettings),
}

/// Upload purging (`storage.maintenance.uploadpurging`).
#[derive(Clone, Debug)]
pub struct Purging {
    pub age: Duration,
    pub interval: Duration,
    pub dry_run: bool,
}

/// The debug listener (`http.debug`).
#[derive(Clone, Debug)]
pub struct DebugServer {
    pub addr: String,
    /// The Prometheus metrics path, when enabled.
    pub metrics_path: Option<String>,
}

/// Everything `serve` needs, derived from the configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    pub addr: String,
    pub storage: StorageKind,
    /// The metadata database.
    pub meta: MetaKind,
    pub edge: EdgeSettings,
    /// Certificate, key and client CA files for HTTPS.
    pub tls: Option<(PathBuf, PathBuf, Vec<String>)>,
    pub debug: Option<DebugServer>,
    pub purging: Option<Purging>,
    /// Extra headers on every response (`http.headers`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub access_log: bool,
    /// How long in-flight requests may take to finish after a shutdown signal
    /// (`http.draintimeout`); `None` waits for them however long they take.
    pub drain_timeout: Option<Duration>,
    /// The periodic storage probe (`health.storagedriver`), when enabled.
    pub storage_probe: Option<StorageProbe>,
    pub config: Config,
}

/// `:5000` listens on every address, as in Go.
fn listen_addr(addr: &str) -> String {
    match addr.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => addr.to_string(),
    }
}

impl Settings {
    /// Derives the settings from a loaded configuration.
    pub fn from_config(config: &Config) -> anyhow::Result<Settings> {
        let storage = match (&config.storage.filesystem, &config.storage.inmemory) {
            (Some(fs), _) => StorageKind::Fs(PathBuf::from(&fs.rootdirectory)),
            (None, Some(_)) => StorageKind::Memory,
            _ => match config.storage.driver_name() {
                Some(name) => StorageKind::Object(name),
                None => bail!("exactly one storage driver must be configured"),
            },
        };
        let meta = match config.database.as_ref().filter(|d| d.enabled) {
            Some(db) => MetaKind::Postgres(Box::new(pg_options(db)?), pool_settings(db)),
            None => MetaKind::Sqlite(match (&config.sqlite.path, &storage) {
                (Some(path), _) => PathBuf::from(path),
                (None, StorageKind::Fs(root)) => root.join("berth").join("meta.db"),
                (None, StorageKind::Memory) => temporary_sqlite(),
                (None, StorageKind::Object(name)) => bail!(
                    "storage.{name} keeps blobs in an object store, which cannot hold the \
                     metadata database: configure `database` (PostgreSQL, which any number of \
                     instances can share) or `sqlite.path` (a local file, for one instance)"
                ),
            }),
        };
        if config.http.net == "unix" {
            bail!("http.net: unix sockets are not supported yet; use tcp");
        }
        let h = &config.http;
        let tls = match (&h.tls.certificate, &h.tls.key) {
            (Some(c), Some(k)) => {
                Some((PathBuf::from(c), PathBuf::from(k), h.tls.clientcas.clone()))
            }
            _ => None,
        };
        let mut headers = Vec::new();
        for (name, values) in &h.headers {
            let n = HeaderName::try_from(name.as_str())
                .with_context(|| format!("http.headers: {name:?} is not a header name"))?;
            for v in values {
                let v = HeaderValue::try_from(v.as_str())
                    .with_context(|| format!("http.headers.{name}: {v:?} is not a header value"))?;
                headers.push((n.clone(), v));
            }
        }
        let purge = &config.storage.maintenance.uploadpurging;
        Ok(Settings {
            addr: listen_addr(&h.addr),
            storage,
            meta,
            edge: EdgeSettings {
                host: h.host.clone().filter(|s| !s.is_empty()),
                trusted_proxies: TrustedProxies::new(
                    h.trustedproxies
                        .iter()
                        .map(|r| (r.network(), r.prefix_len())),
                ),
                tls: tls.is_some(),
                relative_urls: h.relativeurls,
                prefix: h
                    .prefix
                    .as_deref()
                    .unwrap_or("")
                    .trim_end_matches('/')
                    .to_string(),
                delete_enabled: config.storage.delete.enabled,
                read_only: config.storage.maintenance.readonly.enabled,
                headers: headers.clone(),
                access_log: !config.log.accesslog.disabled,
                metrics: false,
                gc_interval: config.gc.interval.0,
                open: config.auth.configured_methods().is_empty(),
            },
            tls,
            debug: h.debug.addr.as_ref().map(|addr| DebugServer {
                addr: listen_addr(addr),
                metrics_path: h
                    .debug
                    .prometheus
                    .enabled
                    .then(|| h.debug.prometheus.path.clone()),
            }),
            purging: purge.enabled.then_some(Purging {
                age: purge.age.0,
                interval: purge.interval.0,
                dry_run: purge.dryrun,
            }),
            headers,
            access_log: !config.log.accesslog.disabled,
            drain_timeout: h.draintimeout.map(|d| d.0),
            storage_probe: storage_probe(&config.health.storagedriver),
            config: config.clone(),
        })
    }
}

/// A fresh SQLite file in a temporary directory of its own (in-memory storage without
/// `sqlite.path`), removed at shutdown.
fn temporary_sqlite() -> PathBuf {
    std::env::temp_dir()
        .join(format!("berth-inmemory-{}", uuid::Uuid::new_v4().simple()))
        .join("meta.db")
}

/// The connection to PostgreSQL that `database` describes.
fn pg_options(db: &crate::config::Database) -> anyhow::Result<PgConnectOptions> {
    let ssl_mode = PgSslMode::from_str(&db.sslmode)
        .map_err(|_| anyhow::anyhow!("database.sslmode: {:?} is not an SSL mode", db.sslmode))?;
    let mut options = PgConnectOptions::new_without_pgpass()
        .host(&db.host)
        .port(db.port)
        .username(&db.user)
        .database(&db.dbname)
        .ssl_mode(ssl_mode)
        .application_name("berth");
    if let Some(password) = &db.password {
        options = options.password(password);
    }
    if let Some(ca) = &db.sslrootcert {
        options = options.ssl_root_cert(ca.as_str());
    }
    if let Some(cert) = &db.sslcert {
        options = options.ssl_client_cert(cert.as_str());
    }
    if let Some(key) = &db.sslkey {
        options = options.ssl_client_key(key.as_str());
    }
    Ok(options)
}

/// The pool `database.pool` describes. `maxidle` is how many connections stay open while idle;
/// `connecttimeout` bounds how long a request waits for a connection before it answers 503.
fn pool_settings(db: &crate::config::Database) -> PoolSettings {
    let mut pool = PoolSettings::default();
    let p = &db.pool;
    if let Some(n) = p.maxopen.filter(|n| *n > 0) {
        pool.max_connections = n;
    }
    if let Some(n) = p.maxidle {
        pool.min_connections = n.min(pool.max_connections);
    }
    let nonzero = |d: Option<crate::config::GoDuration>| d.map(|d| d.0).filter(|d| !d.is_zero());
    if let Some(d) = nonzero(p.maxlifetime) {
        pool.max_lifetime = Some(d);
    }
    if let Some(d) = nonzero(p.maxidletime) {
        pool.idle_timeout = Some(d);
    }
    if let Some(d) = nonzero(db.connecttimeout) {
        pool.acquire_timeout = d;
    }
    pool
}

/// Opens the metadata store. PostgreSQL is waited for while it cannot be reached (an instance
/// may start before its database); a refusal (bad password, no such database) ends start-up.
pub async fn open_meta(kind: &MetaKind) -> anyhow::Result<Arc<dyn MetaStore>> {
    Ok(open_databases(kind).await?.0)
}

/// [`open_meta`], with the access records (users, projects, robots, keys, audit log) of the
/// same database.
pub async fn open_databases(
    kind: &MetaKind,
) -> anyhow::Result<(Arc<dyn MetaStore>, Arc<dyn AccessStore>)> {
    match kind {
        MetaKind::Sqlite(path) => {
            let meta =
                Arc::new(SqliteMetaStore::open(path).await.with_context(|| {
                    format!("opening the metadata database {}", path.display())
                })?);
            Ok((meta.clone(), meta))
        }
        MetaKind::Postgres(options, pool) => loop {
            match PgMetaStore::connect((**options).clone(), pool).await {
                Ok(meta) => {
                    let meta = Arc::new(meta);
                    return Ok((meta.clone(), meta));
                }
                Err(MetaError::Unavailable(e)) => {
                    tracing::warn!(error = %e, "the metadata database cannot be reached yet; retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                Err(e) => {
                    return Err(
                        anyhow::Error::new(e).context("opening the PostgreSQL metadata database")
                    )
                }
            }
        },
    }
}

/// The name of the variable holding the first administrator's password.
pub const ADMIN_PASSWORD_VAR: &str = "BERTH_ADMIN_PASSWORD";

/// The configured authentication, and the built-in token service when that is it.
async fn authentication(
    auth: &crate::config::Auth,
    access: Arc<dyn AccessStore>,
) -> anyhow::Result<(Option<Authenticator>, Option<Arc<Builtin>>)> {
    let method = Method::from_config(auth).context("auth")?;
    if let Some(b) = &auth.builtin {
        let password = std::env::var(ADMIN_PASSWORD_VAR).ok();
        let builtin = Arc::new(
            Builtin::start(b, access, password.as_deref())
                .await
                .context("auth.builtin")?,
        );
        return Ok((Some(builtin.clone() as Authenticator), Some(builtin)));
    }
    Ok((method.map(|m| Arc::new(m) as Authenticator), None))
}

/// Which children of a pushed index must be present (`validation.manifests.indexes`). With
/// `validation.disabled`, Distribution skips index checks altogether.
fn index_children(v: &crate::config::Validation) -> IndexChildren {
    let indexes = &v.manifests.indexes;
    match indexes.platforms.as_deref().map(str::to_ascii_lowercase) {
        _ if v.disabled && !v.enabled => IndexChildren::None,
        Some(p) if p == "none" => IndexChildren::None,
        Some(p) if p == "list" => IndexChildren::Platforms(
            indexes
                .platformlist
                .iter()
                .map(|p| Platform {
                    architecture: p.architecture.clone().unwrap_or_default(),
                    os: p.os.clone().unwrap_or_default(),
                })
                .collect(),
        ),
        _ => IndexChildren::All,
    }
}

pub async fn open_stores(data: &Path) -> anyhow::Result<(BlobStore, Arc<dyn MetaStore>)> {
    let store =
        BlobStore::fs(data).with_context(|| format!("opening storage under {}", data.display()))?;
    let meta = SqliteMetaStore::open(&data.join("berth").join("meta.db"))
        .await
        .context("opening the metadata database")?;
    Ok((store, Arc::new(meta)))
}

/// Indexes a Distribution storage tree found in `store` into `meta`, unless that was done before.
/// One instance imports (under the lease `import/distribution`); others sharing the store wait
/// until it is done, or take over if it dies.
pub async fn import_if_needed(store: &BlobStore, meta: Arc<dyn MetaStore>) -> anyhow::Result<()> {
    let mut waiting = false;
    while import::needs_import(store).await? {
        let job = async {
            eprintln!("found a Distribution storage tree that is not indexed yet; importing it");
            let report =
                import::import_distribution(store, meta.as_ref(), std::io::stderr().is_terminal())
                    .await
                    .context("importing the Distribution storage tree")?;
            eprintln!("import finished: {report}");
            anyhow::Ok(())
        };
        match run_once_leased(meta.clone(), "import/distribution", lease::TTL, job).await {
            Ok(Some(done)) => return done,
            Ok(None) if !waiting => {
                waiting = true;
                tracing::info!(
                    "another instance is importing the Distribution storage tree; waiting"
                );
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "taking the import lease failed; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

/// Logs what the configuration asks for that Berth does not do (yet), so nothing is ignored
/// silently.
pub fn report_options(config: &Config) {
    for opt in crate::config::option_report(config) {
        match opt.status {
            Status::NotImplemented => tracing::warn!(
                key = %opt.key,
                "configuration option is accepted but not implemented by Berth yet; it has no effect"
            ),
            Status::Ignored => tracing::info!(
                key = %opt.key,
                "configuration option is accepted for compatibility and not needed by Berth"
            ),
            Status::Active => {}
        }
    }
}

/// The configured blob store, and whether pulls are redirected to it.
pub async fn open_blob_store(settings: &Settings) -> anyhow::Result<(BlobStore, bool)> {
    let store = match &settings.storage {
        StorageKind::Fs(root) => BlobStore::fs(root)
            .with_context(|| format!("opening storage under {}", root.display()))?,
        StorageKind::Memory => BlobStore::memory()?,
        StorageKind::Object(name) => {
            let backend = crate::storage::open(&settings.config.storage)
                .await
                .with_context(|| format!("opening storage.{name}"))?;
            for warning in &backend.warnings {
                tracing::warn!(driver = backend.name, "{warning}");
            }
            check_backend(name, backend.driver.as_ref()).await?;
            BlobStore::new(backend.driver)
        }
    };
    // Distribution's default: object stores hand pulls to the backend unless told not to.
    let redirect = matches!(settings.storage, StorageKind::Object(_))
        && !settings.config.storage.redirect.disable
        && store.can_redirect();
    Ok((store, redirect))
}

/// The registry core over `meta` and `store` as configured: its validation, redirects and the
/// sinks of its events (notifications, the audit trail). The server and the command line's
/// maintenance (`berth gc`) build it alike, so what either changes is reported alike.
/// `access` (the projects' store) is given when the built-in token service is on: its
/// immutable tag rules and quotas then hold.
pub fn build_core(
    settings: &Settings,
    meta: Arc<dyn MetaStore>,
    access: Option<Arc<dyn AccessStore>>,
    store: BlobStore,
    redirect: bool,
) -> anyhow::Result<Registry> {
    let notifications = &settings.config.notifications;
    let notifier = crate::events::Notifier::new(notifications, settings.addr.clone())
        .context("notifications")?;
    let mut registry =
        Registry::new(meta, store).with_index_children(index_children(&settings.config.validation));
    if redirect {
        registry = registry.with_redirects(BLOB_URL_LIFETIME);
    }
    if notifier.is_active() {
        registry = registry.with_events(Arc::new(notifier));
    }
    if let Some(audit) = audit_settings(settings) {
        registry = registry.with_events(Arc::new(crate::events::AuditTrail { pulls: audit.pulls }));
    }
    if let Some(access) = access.clone() {
        registry = registry.with_policy(Arc::new(crate::auth::policy::ProjectPolicy::new(access)));
    }
    if let Some(mirrors) =
        crate::remote::Mirrors::from_config(&settings.config, access).context("proxy")?
    {
        registry = registry.with_upstream(Arc::new(mirrors));
    }
    if let Some(replication) =
        crate::replication::Replication::from_config(&settings.config).context("replication")?
    {
        registry = registry.with_events(replication.sink());
    }
    Ok(registry)
}

/// The registry's id, shared by every instance on the same metadata store: made by the first
/// instance that starts, then read.
pub async fn registry_id(meta: &dyn MetaStore) -> anyhow::Result<String> {
    const KEY: &str = "registry_id";
    if let Some(id) = meta.setting(KEY).await? {
        return Ok(id);
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    meta.apply(vec![crate::meta::Change::InitSetting {
        key: KEY.into(),
        value: id,
    }])
    .await?;
    meta.setting(KEY)
        .await?
        .context("the registry's id was written but cannot be read")
}

/// The audit log's settings, when the built-in token service (and so the audit log) is on.
fn audit_settings(settings: &Settings) -> Option<crate::config::AuditSettings> {
    let builtin = settings.config.auth.builtin.as_ref()?;
    Some(builtin.audit.clone())
}

/// The collection options of the `gc` section.
pub fn gc_options(settings: &Settings) -> crate::gc::Options {
    crate::gc::Options::of(&settings.config.gc)
}

/// Runs the registry until `shutdown` completes.
pub async fn serve(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (store, redirect) = open_blob_store(&settings).await?;
    let (meta, access) = open_databases(&settings.meta).await?;
    import_if_needed(&store, meta.clone()).await?;
    let meta: Arc<dyn MetaStore> = Arc::new(crate::meta::cache::CachedMetaStore::new(meta));
    let notifications = &settings.config.notifications;
    let audit = audit_settings(&settings);
    let projects = settings
        .config
        .auth
        .builtin
        .is_some()
        .then(|| access.clone());
    let id = registry_id(meta.as_ref()).await?;
    let registry = Arc::new(
        build_core(&settings, meta.clone(), projects, store.clone(), redirect)?.with_id(id),
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let delivery_stop = CancellationToken::new();
    let mut tasks = crate::events::spawn_delivery(
        meta.clone(),
        &notifications.endpoints,
        delivery_stop.clone(),
    );
    if let Some(p) = settings.purging.clone() {
        let registry = registry.clone();
        tasks.push(tokio::spawn(run_leased(
            meta.clone(),
            "uploads/purge".into(),
            lease::Holder::default(),
            delivery_stop.clone(),
            move |stop| purge_loop(registry.clone(), p.clone(), stop),
        )));
    }
    if let Some(audit) = audit.filter(|a| !a.retention.0.is_zero()) {
        let access = access.clone();
        tasks.push(tokio::spawn(run_leased(
            meta.clone(),
            "audit/prune".into(),
            lease::Holder::default(),
            delivery_stop.clone(),
            move |stop| prune_audit_loop(access.clone(), audit.retention.0, stop),
        )));
    }
    // Every instance watches for collections asked for (through any instance's API) and for
    // the schedule; a run happens under the collection lease, on one instance at a time, and
    // `berth gc` takes the same lease.
    let interval = settings.config.gc.interval.0;
    {
        let collector = Arc::new(crate::gc::Collector::new(
            registry.clone(),
            meta.clone(),
            store.clone(),
        ));
        let opts = gc_options(&settings);
        tasks.push(tokio::spawn(gc_loop(
            meta.clone(),
            collector,
            opts,
            interval,
            delivery_stop.clone(),
        )));
    }
    if settings.config.auth.builtin.is_some() {
        tasks.push(tokio::spawn(retention_loop(
            meta.clone(),
            registry.clone(),
            access.clone(),
            delivery_stop.clone(),
        )));
    }
    tasks.push(tokio::spawn(pull_times_loop(
        registry.clone(),
        delivery_stop.clone(),
    )));
    if let Some(replication) = crate::replication::Replication::from_config(&settings.config)? {
        tasks.extend(replication.spawn(registry.clone(), meta.clone(), delivery_stop.clone()));
    }
    let health = Health::new();
    if let Some(probe) = settings.storage_probe {
        tasks.push(tokio::spawn(crate::http::health::probe_storage(
            registry.clone(),
            health.clone(),
            probe,
            stop_rx.clone(),
        )));
    }
    let mut edge = settings.edge.clone();
    // The debug listener outlives the main one's drain, so probes on it see `/readyz` fail.
    let (debug_stop_tx, debug_stop_rx) = tokio::sync::watch::channel(false);
    if let Some(d) = &settings.debug {
        let probes = Arc::new(crate::http::health::Probes {
            core: registry.clone(),
            health: health.clone(),
        });
        edge.metrics =
            crate::http::debug::start(&d.addr, d.metrics_path.as_deref(), probes, debug_stop_rx)
                .await?;
    }
    let (authenticator, builtin) = authentication(&settings.config.auth, access).await?;
    let app = crate::http::router_with_health(
        registry.clone(),
        edge,
        authenticator,
        builtin,
        health.clone(),
    );
    let (listener, local) = crate::listener::bind(&settings.addr, "berth").await?;
    tracing::info!(%local, tls = settings.tls.is_some(), "serving");
    let graceful = async move {
        shutdown.await;
        // Not ready from this moment; the listener stops accepting as this future completes.
        health.start_draining();
        let _ = stop_tx.send(true);
        delivery_stop.cancel();
    };
    let drain = settings.drain_timeout;
    match &settings.tls {
        None => {
            serve_on(
                crate::listener::PlainListener(listener),
                app,
                graceful,
                drain,
            )
            .await?
        }
        Some((cert, key, cas)) => {
            let config = crate::listener::server_config(cert, key, cas)?;
            let listener = crate::listener::TlsListener::new(listener, config)?;
            serve_on(listener, app, graceful, drain).await?
        }
    }
    let _ = debug_stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    // The pulls served while draining.
    if let Err(e) = registry.record_pulls().await {
        tracing::warn!(error = %e, "could not record the last pull times");
    }
    if let (StorageKind::Memory, MetaKind::Sqlite(path), None) = (
        &settings.storage,
        &settings.meta,
        &settings.config.sqlite.path,
    ) {
        if let Some(dir) = path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    tracing::info!("shut down");
    Ok(())
}

/// Lists an empty prefix of an object store at start-up, so that wrong credentials or a bucket
/// that does not exist stop the server with a message that says so; a store that cannot be
/// reached yet is only warned about (requests answer 503 until it is back).
async fn check_backend(name: &str, driver: &dyn crate::storage::Driver) -> anyhow::Result<()> {
    use crate::storage::ErrorKind;
    match driver.list("berth/probe/").await {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Throttled) => {
            tracing::warn!(error = %e, "storage.{name} cannot be reached yet; serving anyway");
            Ok(())
        }
        Err(e) if e.kind() == ErrorKind::Auth => {
            bail!("storage.{name} refused the configured credentials: {e}")
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            bail!("storage.{name}: the bucket or container does not exist (create it first): {e}")
        }
        Err(e) => bail!("storage.{name}: {e}"),
    }
}

/// Serves `app` on `listener` until `graceful` completes, then stops accepting and lets
/// in-flight requests finish: all of them, or with a `drain` timeout those that finish within
/// it. Connections still open when it elapses are dropped as the process exits.
async fn serve_on<L>(
    listener: L,
    app: axum::Router,
    graceful: impl Future<Output = ()> + Send + 'static,
    drain: Option<Duration>,
) -> anyhow::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
    crate::http::PeerAddr:
        for<'a> axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, L>>,
{
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let graceful = async move {
        graceful.await;
        let _ = signalled_tx.send(());
    };
    let serving = std::future::IntoFuture::into_future(
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<crate::http::PeerAddr>(),
        )
        .with_graceful_shutdown(graceful),
    );
    let Some(drain) = drain else {
        return serving.await.context("serving");
    };
    let deadline = async move {
        if signalled_rx.await.is_err() {
            // The server ended without a shutdown signal: nothing to time.
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(drain).await;
    };
    tokio::select! {
        served = serving => served.context("serving"),
        () = deadline => {
            tracing::warn!(
                drain_timeout = ?drain,
                "http.draintimeout elapsed with requests still in flight; dropping them"
            );
            Ok(())
        }
    }
}

/// `health.storagedriver` with Distribution's defaults (every 10 s, unhealthy after 1 failure).
fn storage_probe(check: &crate::config::StorageDriverCheck) -> Option<StorageProbe> {
    check.enabled.then(|| StorageProbe {
        interval: check
            .interval
            .map(|i| i.0)
            .filter(|i| !i.is_zero())
            .unwrap_or(Duration::from_secs(10)),
        threshold: check.threshold.unwrap_or(1).clamp(1, u64::from(u32::MAX)) as u32,
    })
}

/// Removes abandoned uploads every `interval`, until `stop`.
async fn purge_loop(registry: Arc<Registry>, p: Purging, stop: CancellationToken) {
    let interval = p.interval.max(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => return,
        }
        match registry.purge_uploads(p.age, p.dry_run).await {
            Ok(0) => {}
            Ok(n) if p.dry_run => {
                tracing::info!(uploads = n, "upload purging (dry run): would remove")
            }
            Ok(n) => tracing::info!(uploads = n, "upload purging: removed abandoned uploads"),
            Err(e) => tracing::warn!(error = %e, "upload purging failed"),
        }
    }
}

/// How often the pull times tallied in memory are written.
const PULL_TIMES_INTERVAL: Duration = Duration::from_secs(1);

/// Writes the pull times tallied by the core every [`PULL_TIMES_INTERVAL`], until `stop`.
async fn pull_times_loop(registry: Arc<Registry>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PULL_TIMES_INTERVAL) => {}
            _ = stop.cancelled() => return,
        }
        if let Err(e) = registry.record_pulls().await {
            tracing::warn!(error = %e, "could not record pull times; trying again");
        }
    }
}

/// How often the holder of the collection lease looks for collections asked for.
const GC_REQUEST_POLL: Duration = Duration::from_secs(2);

/// How long the collection lease lives unrenewed.
const GC_LEASE_TTL: Duration = Duration::from_secs(10);

/// Runs the collections asked for as they come, and the scheduled ones as they fall due (see
/// `gc::Collector::scheduled_run`), each under the collection lease, until `stop`. What to run
/// is decided again once the lease is held, so an instance that waited for it does not repeat
/// the run another instance just finished.
async fn gc_loop(
    meta: Arc<dyn MetaStore>,
    collector: Arc<crate::gc::Collector>,
    opts: crate::gc::Options,
    interval: Duration,
    stop: CancellationToken,
) {
    let started = crate::meta::access::now_ms();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(GC_REQUEST_POLL) => {}
            _ = stop.cancelled() => return,
        }
        let asked = match meta.collection_requests(1).await {
            Ok(r) => !r.is_empty(),
            Err(e) => {
                tracing::warn!(error = %e, "reading the collections asked for failed");
                continue;
            }
        };
        let due = match collector.scheduled_run(&opts, interval, started).await {
            Ok(due) => due.is_some(),
            Err(e) => {
                tracing::warn!(error = %e, "reading the collection schedule failed");
                false
            }
        };
        if !asked && !due {
            continue;
        }
        let job = async {
            let run = match collector.take_request(&opts).await? {
                Some(asked) => asked,
                None => match collector.scheduled_run(&opts, interval, started).await? {
                    Some(scheduled) => scheduled,
                    None => return Ok(None),
                },
            };
            let hidden = indicatif::ProgressBar::hidden();
            collector.run(&run, &hidden, &stop).await.map(Some)
        };
        match run_once_leased(meta.clone(), crate::gc::LEASE, GC_LEASE_TTL, job).await {
            Ok(Some(Ok(Some(r)))) => tracing::info!(
                blobs = r.blobs_deleted,
                manifests = r.manifests_deleted,
                links = r.links_removed,
                bytes = r.bytes_freed,
                stopped = r.stopped,
                "garbage collection finished"
            ),
            // Nothing to run after all, or another instance (or `berth gc`) is collecting.
            Ok(Some(Ok(None))) | Ok(None) => {}
            Ok(Some(Err(e))) => {
                tracing::warn!(error = %e, "garbage collection failed; the next run goes on")
            }
            Err(e) => tracing::warn!(error = %e, "taking the collection lease failed"),
        }
    }
}

/// How often every instance looks for scheduled retention runs that fell due.
const RETENTION_POLL: Duration = Duration::from_secs(5);

/// Runs the retention policies whose schedules fell due, under the retention lease (so on one
/// instance at a time, which decides again what is due once it holds it), until `stop`.
async fn retention_loop(
    meta: Arc<dyn MetaStore>,
    registry: Arc<Registry>,
    access: Arc<dyn AccessStore>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RETENTION_POLL) => {}
            _ = stop.cancelled() => return,
        }
        let job = crate::registry::events::with_request(
            crate::registry::events::RequestContext {
                actor: Some("retention".into()),
                ..Default::default()
            },
            crate::gc::retention::run_due(&registry, access.as_ref()),
        );
        match run_once_leased(meta.clone(), crate::gc::retention::LEASE, GC_LEASE_TTL, job).await {
            Ok(Some(Ok(_))) | Ok(None) => {}
            Ok(Some(Err(e))) => tracing::warn!(error = %e, "scheduled retention failed"),
            Err(e) => tracing::warn!(error = %e, "taking the retention lease failed"),
        }
    }
}

/// How often audit entries past their retention are removed.
const AUDIT_PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// Removes audit entries older than `retention` now and every hour, until `stop`.
async fn prune_audit_loop(
    access: Arc<dyn AccessStore>,
    retention: Duration,
    stop: CancellationToken,
) {
    loop {
        let before = crate::meta::access::now_ms() - retention.as_millis() as i64;
        match access.prune_audit(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(entries = n, "audit log: removed entries past retention"),
            Err(e) => tracing::warn!(error = %e, "audit log pruning failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(AUDIT_PRUNE_INTERVAL) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received; not ready, finishing in-flight requests");
}
