//! The typed configuration tree: every key of Distribution's `config.yml` (version 0.1).
//!
//! Field names are the YAML keys verbatim (`rootdirectory`, not `root_directory`) so that a key path
//! in a warning, an error, an environment variable or Distribution's documentation maps onto a Rust
//! field path one to one. Settings Berth acts on carry their effective default as a concrete value;
//! settings Berth only accepts are `Option`s, where `None` means "not set".
//!
//! Invariants: every struct deserializes with `#[serde(default)]` (a missing key is never an error
//! here; [`validate`](super::validate) decides what is required), and [`Config::schema_reference`]
//! lists every optional section as present so the environment mapper and the option report can see
//! the whole key tree.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::duration::GoDuration;
use super::net::IpRange;

/// Free-form parameters whose keys Berth does not interpret (drivers it does not support, middleware
/// options, log fields).
pub type Parameters = BTreeMap<String, serde_yaml::Value>;

/// HTTP header name to its list of values, as Go's `http.Header` is written in YAML
/// (`X-Content-Type-Options: [nosniff]`). A single string is accepted as a one-value list.
pub type HeaderMap = BTreeMap<String, Vec<String>>;

/// The whole registry configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Version of the configuration format; Berth reads `0.1`, the only version Distribution has.
    pub version: String,
    /// Logging: level, output format, static fields, access log.
    pub log: Log,
    /// Old top-level spelling of `log.level`; used only when `log.level` is absent, then cleared.
    pub loglevel: Option<LogLevel>,
    /// Where blobs and manifests are kept (exactly one driver) plus storage-wide behaviour.
    pub storage: Storage,
    /// How clients are authenticated (at most one method).
    pub auth: Auth,
    /// Named middleware chains (`registry`, `repository`, `storage`) to wrap components in.
    pub middleware: BTreeMap<String, Vec<Middleware>>,
    /// Error reporting to third-party services (Distribution 2.x only).
    pub reporting: Reporting,
    /// The HTTP listener: address, TLS, public URL, headers, debug server.
    pub http: Http,
    /// Webhook endpoints that receive registry events.
    pub notifications: Notifications,
    /// Connection to a Redis server, which Distribution uses as a blob descriptor cache.
    pub redis: Redis,
    /// Periodic health checks that can mark the registry unhealthy.
    pub health: Health,
    /// Limits for the `/v2/_catalog` endpoint.
    pub catalog: Catalog,
    /// Limits for the `/v2/<name>/tags/list` endpoint.
    pub tags: Tags,
    /// Pull-through cache mode: mirror a remote registry.
    pub proxy: Proxy,
    /// Support for legacy image formats.
    pub compatibility: Compatibility,
    /// Checks applied to pushed manifests.
    pub validation: Validation,
    /// Content policies enforced on repositories.
    pub policy: Policy,
    /// An external PostgreSQL metadata database, in the GitLab container registry's form. When
    /// absent or not `enabled`, metadata lives in the embedded SQLite database (`sqlite`).
    pub database: Option<Database>,
    /// The embedded SQLite metadata database (Berth's own section).
    pub sqlite: Sqlite,
    /// Online garbage collection: its schedule and what it keeps (Berth's own section).
    pub gc: Gc,
    /// Remote registries and the rules that copy images to and from them (Berth's own section).
    pub replication: Replication,
}

// ---------------------------------------------------------------------------------------------
// log

/// Logging settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Log {
    /// Access log (one line per request) settings.
    pub accesslog: AccessLog,
    /// Least severe message level that is written.
    pub level: LogLevel,
    /// Output format of log lines.
    pub formatter: LogFormatter,
    /// Key/value pairs added to every log line (e.g. `service: registry`).
    pub fields: Parameters,
    /// Extra sinks (e-mail) triggered by messages at given levels.
    pub hooks: Vec<LogHook>,
    /// Add the source location of the logging call to each line (Distribution 3).
    pub reportcaller: bool,
}

/// Access log settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AccessLog {
    /// Turn the per-request access log off.
    pub disabled: bool,
}

/// Log verbosity. Distribution accepts exactly these four names, in any letter case.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Only errors.
    Error,
    /// Errors and warnings.
    Warn,
    /// Normal operational messages (the default).
    #[default]
    Info,
    /// Everything, including per-request detail.
    Debug,
}

impl LogLevel {
    /// The configuration spelling of this level.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        }
    }
}

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.to_ascii_lowercase().as_str() {
            "error" => Ok(LogLevel::Error),
            "warn" => Ok(LogLevel::Warn),
            "info" => Ok(LogLevel::Info),
            "debug" => Ok(LogLevel::Debug),
            _ => Err(de::Error::custom(format!(
                "invalid log level {text:?}: expected one of error, warn, info, debug"
            ))),
        }
    }
}

/// Shape of each log line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormatter {
    /// Human-readable `key=value` text (the default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
    /// JSON in Logstash's field layout.
    Logstash,
}

impl<'de> Deserialize<'de> for LogFormatter {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.as_str() {
            "text" => Ok(LogFormatter::Text),
            "json" => Ok(LogFormatter::Json),
            "logstash" => Ok(LogFormatter::Logstash),
            _ => Err(de::Error::custom(format!(
                "invalid log formatter {text:?}: expected one of text, json, logstash"
            ))),
        }
    }
}

/// A log hook: forward messages of some levels to another sink.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogHook {
    /// Keep the hook configured but inactive.
    pub disabled: bool,
    /// Kind of hook; Distribution knows `mail`.
    pub r#type: Option<String>,
    /// Levels (e.g. `panic`, `error`) whose messages trigger the hook.
    pub levels: Vec<String>,
    /// Settings for the hook's sink.
    pub options: MailOptions,
}

/// Settings of a `mail` log hook.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MailOptions {
    /// Outgoing mail server.
    pub smtp: Smtp,
    /// Sender address.
    pub from: Option<String>,
    /// Recipient addresses.
    pub to: Vec<String>,
}

/// Outgoing mail server of a mail hook.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Smtp {
    /// `host:port` of the SMTP server.
    pub addr: Option<String>,
    /// Login name on the SMTP server.
    pub username: Option<String>,
    /// Login password on the SMTP server (secret).
    pub password: Option<String>,
    /// Skip verification of the server's TLS certificate.
    pub insecure: bool,
}

// ---------------------------------------------------------------------------------------------
// storage

/// Storage backend and storage-wide behaviour.
///
/// Distribution models this as a map from driver name to parameters; here each driver is an
/// optional field and validation insists on exactly one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Storage {
    /// Keep data in a directory of the local file system.
    pub filesystem: Option<Filesystem>,
    /// Keep data in process memory (lost on restart; for tests).
    pub inmemory: Option<InMemory>,
    /// Keep data in an Amazon S3 (or S3-compatible) bucket.
    #[serde(alias = "s3aws")]
    pub s3: Option<S3>,
    /// Keep data in an OpenStack Swift container (Distribution 2.x).
    pub swift: Option<Swift>,
    /// Keep data in Azure Blob Storage; parameters are kept as written.
    pub azure: Option<Parameters>,
    /// Keep data in Google Cloud Storage; parameters are kept as written.
    pub gcs: Option<Parameters>,
    /// Keep data in Alibaba Cloud OSS; parameters are kept as written.
    pub oss: Option<Parameters>,
    /// Caching of blob metadata in front of the driver.
    pub cache: Cache,
    /// Background housekeeping and the read-only switch.
    pub maintenance: Maintenance,
    /// Whether content may be deleted through the API.
    pub delete: Delete,
    /// Whether blob downloads may redirect clients to the backend's own URL.
    pub redirect: Redirect,
    /// Tag lookup tuning (Distribution 3).
    pub tag: TagStorage,
}

/// Keys under `storage` that are sections rather than driver names.
pub const STORAGE_SECTIONS: &[&str] = &["cache", "maintenance", "delete", "redirect", "tag"];

/// Driver names Distribution ships and this schema knows (`s3aws` is an old alias of `s3`).
pub const STORAGE_DRIVERS: &[&str] = &[
    "filesystem",
    "inmemory",
    "s3",
    "s3aws",
    "swift",
    "azure",
    "gcs",
    "oss",
];

/// Authentication methods Distribution ships.
pub const AUTH_METHODS: &[&str] = &["silly", "token", "htpasswd", "builtin"];

impl Storage {
    /// Names of the drivers that are configured; a valid configuration has exactly one.
    pub fn configured_drivers(&self) -> Vec<&'static str> {
        let present = [
            ("filesystem", self.filesystem.is_some()),
            ("inmemory", self.inmemory.is_some()),
            ("s3", self.s3.is_some()),
            ("swift", self.swift.is_some()),
            ("azure", self.azure.is_some()),
            ("gcs", self.gcs.is_some()),
            ("oss", self.oss.is_some()),
        ];
        present
            .into_iter()
            .filter_map(|(name, set)| set.then_some(name))
            .collect()
    }

    /// The configured driver's name, if exactly one is configured.
    pub fn driver_name(&self) -> Option<&'static str> {
        match self.configured_drivers().as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }
}

/// Parameters of the `filesystem` driver.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Filesystem {
    /// Directory under which all registry data is stored.
    pub rootdirectory: String,
    /// Cap on concurrent blocking file-system calls in Distribution (minimum 25).
    pub maxthreads: u64,
}

impl Default for Filesystem {
    fn default() -> Self {
        Filesystem {
            rootdirectory: "/var/lib/registry".to_owned(),
            maxthreads: 100,
        }
    }
}

/// The `inmemory` driver takes no parameters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InMemory {}

/// Parameters of the `s3` driver.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct S3 {
    /// AWS access key id; when unset the AWS default credential chain is used (secret).
    pub accesskey: Option<String>,
    /// AWS secret access key (secret).
    pub secretkey: Option<String>,
    /// AWS region of the bucket.
    pub region: Option<String>,
    /// Endpoint URL of an S3-compatible service instead of AWS.
    pub regionendpoint: Option<String>,
    /// Address the bucket as `endpoint/bucket` instead of `bucket.endpoint`.
    pub forcepathstyle: Option<bool>,
    /// Use S3 Transfer Acceleration endpoints.
    pub accelerate: Option<bool>,
    /// Bucket name.
    pub bucket: Option<String>,
    /// Ask S3 to encrypt objects at rest.
    pub encrypt: Option<bool>,
    /// KMS key id used when `encrypt` is on.
    pub keyid: Option<String>,
    /// Talk to S3 over HTTPS (default on).
    pub secure: Option<bool>,
    /// Skip TLS certificate verification towards the endpoint.
    pub skipverify: Option<bool>,
    /// Sign requests with AWS signature version 4 (default on).
    pub v4auth: Option<bool>,
    /// Part size of multipart uploads, in bytes (at least 5 MiB).
    pub chunksize: Option<u64>,
    /// Part size used when copying large objects server-side, in bytes.
    pub multipartcopychunksize: Option<u64>,
    /// Parallel parts when copying large objects server-side.
    pub multipartcopymaxconcurrency: Option<u64>,
    /// Object size above which server-side copies use multipart, in bytes.
    pub multipartcopythresholdsize: Option<u64>,
    /// Key prefix under which all registry data is stored in the bucket.
    pub rootdirectory: Option<String>,
    /// S3 storage class of new objects (e.g. `STANDARD`, `REDUCED_REDUNDANCY`, `NONE`).
    pub storageclass: Option<String>,
    /// User-Agent sent to S3.
    pub useragent: Option<String>,
    /// Use dual-stack (IPv4 + IPv6) S3 endpoints.
    pub usedualstack: Option<bool>,
    /// Use FIPS 140-2 validated S3 endpoints (Distribution 3).
    pub usefipsendpoint: Option<bool>,
    /// Canned ACL applied to new objects (default `private`).
    pub objectacl: Option<String>,
    /// AWS SDK log level (`off`, `debug`, ...).
    pub loglevel: Option<String>,
    /// Alternative endpoint used in redirect URLs handed to clients (Distribution 3).
    pub redirectendpoint: Option<String>,
}

/// Parameters of the `swift` driver (Distribution 2.x).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Swift {
    /// OpenStack user name.
    pub username: Option<String>,
    /// OpenStack password (secret).
    pub password: Option<String>,
    /// Keystone authentication URL.
    pub authurl: Option<String>,
    /// Tenant (project) name.
    pub tenant: Option<String>,
    /// Tenant (project) id.
    pub tenantid: Option<String>,
    /// User's domain name (Keystone v3).
    pub domain: Option<String>,
    /// User's domain id (Keystone v3).
    pub domainid: Option<String>,
    /// Tenant's domain name (Keystone v3).
    pub tenantdomain: Option<String>,
    /// Tenant's domain id (Keystone v3).
    pub tenantdomainid: Option<String>,
    /// Trust id for delegated authentication.
    pub trustid: Option<String>,
    /// Swift region.
    pub region: Option<String>,
    /// Keystone API version (1, 2 or 3); guessed from `authurl` when unset.
    pub authversion: Option<u32>,
    /// Container that holds the registry data.
    pub container: Option<String>,
    /// Object name prefix under which the registry data is stored.
    pub prefix: Option<String>,
    /// Endpoint type from the service catalog (`public`, `internal`, `admin`).
    pub endpointtype: Option<String>,
    /// Skip TLS certificate verification towards Swift.
    pub insecureskipverify: Option<bool>,
    /// Segment size of large objects, in bytes.
    pub chunksize: Option<u64>,
    /// Key used to sign temporary URLs for redirects (secret).
    pub secretkey: Option<String>,
    /// HP Cloud access key used with temporary URLs (secret).
    pub accesskey: Option<String>,
    /// Store the temporary-URL key on the container rather than the account.
    pub tempurlcontainerkey: Option<bool>,
    /// HTTP methods temporary URLs may be used with.
    pub tempurlmethods: Vec<String>,
}

/// Blob metadata cache settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Cache {
    /// Where blob descriptors are cached: `inmemory` or `redis`.
    pub blobdescriptor: Option<String>,
    /// Entry limit of the in-memory blob descriptor cache.
    pub blobdescriptorsize: Option<u64>,
    /// Old name of `blobdescriptor`, used when that key is absent.
    pub layerinfo: Option<String>,
}

/// Housekeeping settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Maintenance {
    /// Periodic removal of abandoned uploads.
    pub uploadpurging: UploadPurging,
    /// Reject all writes while keeping reads working.
    pub readonly: ReadOnly,
}

/// Removal of upload sessions that were started but never finished.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UploadPurging {
    /// Run the purger (default on).
    pub enabled: bool,
    /// Uploads older than this are removed (default 168h).
    pub age: GoDuration,
    /// Time between purger runs (default 24h).
    pub interval: GoDuration,
    /// Only log what would be removed.
    pub dryrun: bool,
}

impl Default for UploadPurging {
    fn default() -> Self {
        UploadPurging {
            enabled: true,
            age: GoDuration::from_secs(168 * 3600),
            interval: GoDuration::from_secs(24 * 3600),
            dryrun: false,
        }
    }
}

/// Read-only mode.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReadOnly {
    /// Refuse pushes and deletes.
    pub enabled: bool,
}

/// Deletion through the API.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Delete {
    /// Allow deleting manifests, tags and blobs (default off).
    pub enabled: bool,
}

/// Backend redirects.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Redirect {
    /// Always stream blobs through the registry instead of redirecting to the backend.
    pub disable: bool,
}

/// Tag lookup tuning (Distribution 3).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TagStorage {
    /// Parallel lookups when resolving tags of a manifest.
    pub concurrencylimit: Option<u64>,
}

// ---------------------------------------------------------------------------------------------
// auth

/// Authentication method; validation allows at most one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Auth {
    /// Test-only scheme: any request with an `Authorization` header is accepted.
    pub silly: Option<SillyAuth>,
    /// Bearer tokens issued by an external token service.
    pub token: Option<TokenAuth>,
    /// HTTP basic authentication against an Apache htpasswd file.
    pub htpasswd: Option<HtpasswdAuth>,
    /// Berth's own token service (`/service/token`), users, projects, robots and roles.
    pub builtin: Option<BuiltinAuth>,
}

impl Auth {
    /// Names of the configured methods; a valid configuration has zero or one.
    pub fn configured_methods(&self) -> Vec<&'static str> {
        [
            ("silly", self.silly.is_some()),
            ("token", self.token.is_some()),
            ("htpasswd", self.htpasswd.is_some()),
            ("builtin", self.builtin.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

/// Settings of the `silly` method.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SillyAuth {
    /// Realm announced in the authentication challenge.
    pub realm: Option<String>,
    /// Service announced in the authentication challenge.
    pub service: Option<String>,
}

/// Settings of the `token` method.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TokenAuth {
    /// URL of the token service clients are sent to.
    pub realm: Option<String>,
    /// Service name clients must request tokens for (the token audience).
    pub service: Option<String>,
    /// Expected issuer of tokens.
    pub issuer: Option<String>,
    /// PEM bundle of certificates whose keys may sign tokens.
    pub rootcertbundle: Option<String>,
    /// JSON Web Key Set file with keys that may sign tokens (Distribution 3).
    pub jwks: Option<String>,
    /// Signature algorithms accepted on tokens (Distribution 3).
    pub signingalgorithms: Vec<String>,
    /// Derive the realm from the request's host instead of `realm` (Distribution 3).
    pub autoredirect: bool,
    /// Path appended to the request host when `autoredirect` is on (Distribution 3).
    pub autoredirectpath: Option<String>,
}

/// Settings of the `htpasswd` method.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HtpasswdAuth {
    /// Realm announced in the basic-auth challenge.
    pub realm: Option<String>,
    /// Path of the htpasswd file (bcrypt entries).
    pub path: Option<String>,
}

/// Settings of the `builtin` method: Berth issues and verifies its own tokens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BuiltinAuth {
    /// Token service URL announced in challenges; this server's `/service/token` when unset.
    pub realm: Option<String>,
    /// Service name tokens are issued for (their audience).
    pub service: String,
    /// Issuer written in and required of tokens.
    pub issuer: String,
    /// How long an issued token is valid.
    pub expiration: GoDuration,
    /// How often the signing key is replaced (`0s`: only by `berth token rotate`).
    pub keyrotation: GoDuration,
    /// An htpasswd file whose users may log in too (Distribution's format, bcrypt entries).
    pub htpasswd: Option<String>,
    /// Failed logins allowed for one account from one client address within `loginwindow`
    /// (ten times as many for an account from anywhere, and from an address for any account).
    pub loginattempts: u32,
    /// The window failed logins are counted in; further attempts wait for its end (429).
    pub loginwindow: GoDuration,
    /// The audit log.
    pub audit: AuditSettings,
    /// An LDAP directory (or Active Directory) users log in against. While it is set, only
    /// local system administrators (the first `admin`) and robots log in without it.
    pub ldap: Option<LdapConfig>,
}

impl Default for BuiltinAuth {
    fn default() -> Self {
        BuiltinAuth {
            realm: None,
            service: "berth".to_owned(),
            issuer: "berth".to_owned(),
            expiration: GoDuration::from_secs(300),
            keyrotation: GoDuration::from_secs(0),
            htpasswd: None,
            loginattempts: 10,
            loginwindow: GoDuration::from_secs(300),
            audit: AuditSettings::default(),
            ldap: None,
        }
    }
}

/// What the audit log records and for how long.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuditSettings {
    /// Entries older than this are deleted.
    pub retention: GoDuration,
    /// Record pulls too (one entry per manifest pulled).
    pub pulls: bool,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            retention: GoDuration::from_secs(90 * 24 * 3600),
            pulls: false,
        }
    }
}

/// How far below a base DN an LDAP search looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "LdapScopeSetting", rename_all = "lowercase")]
pub enum LdapScope {
    /// The base entry only (`0`, `base`).
    Base,
    /// The entries right below the base (`1`, `onelevel`).
    OneLevel,
    /// The base and everything below it (`2`, `subtree`).
    #[default]
    Subtree,
}

/// An LDAP scope as written in a configuration file: a number or a name.
#[derive(Deserialize)]
#[serde(untagged)]
enum LdapScopeSetting {
    Number(u64),
    Name(String),
}

impl TryFrom<LdapScopeSetting> for LdapScope {
    type Error = String;

    fn try_from(value: LdapScopeSetting) -> Result<Self, Self::Error> {
        let name = match value {
            LdapScopeSetting::Number(n) => n.to_string(),
            LdapScopeSetting::Name(name) => name.trim().to_ascii_lowercase(),
        };
        match name.as_str() {
            "0" | "base" => Ok(Self::Base),
            "1" | "one" | "onelevel" => Ok(Self::OneLevel),
            "2" | "sub" | "subtree" => Ok(Self::Subtree),
            other => Err(format!(
                "unknown LDAP scope `{other}`: use 0 (base), 1 (onelevel) or 2 (subtree)"
            )),
        }
    }
}

/// `auth.builtin.ldap`: the directory users log in against, with the key names of Harbor's LDAP
/// settings (`ldap_url` is `url`, `ldap_search_dn` is `searchdn`, ...). `searchpassword` is a
/// secret: `Debug` hides it and the effective configuration masks it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LdapConfig {
    /// Server address: `ldap://host:port` or `ldaps://host:port`.
    pub url: String,
    /// DN of the account that searches for users; empty for an anonymous search.
    pub searchdn: String,
    /// Password of `searchdn`.
    pub searchpassword: String,
    /// DN under which users are searched.
    pub basedn: String,
    /// Extra filter a user entry must match, such as `(objectClass=person)`; empty for none.
    pub filter: String,
    /// Attribute holding the login name: `uid`, or `sAMAccountName` on Active Directory.
    pub uid: String,
    /// Scope of the user search: 0/`base`, 1/`onelevel` or 2/`subtree`.
    pub scope: LdapScope,
    /// Seconds allowed for each connection and each LDAP operation.
    pub timeout: u64,
    /// Upgrade an `ldap://` connection with StartTLS before anything is sent.
    pub starttls: bool,
    /// Verify the server's certificate (against `ca`, or the system's roots without it).
    pub verifycert: bool,
    /// PEM file with the CA certificates that the server's certificate must chain to.
    pub ca: Option<std::path::PathBuf>,
    /// DN under which groups are searched; empty to rely on `groupmembershipattribute` only.
    pub groupbasedn: String,
    /// Extra filter a group entry must match, such as `(objectClass=groupOfNames)`.
    pub groupfilter: String,
    /// Attribute of a group entry holding the group's name.
    pub groupattribute: String,
    /// Attribute of the user entry listing the DNs of the user's groups (`memberOf`).
    pub groupmembershipattribute: String,
    /// Scope of the group search: 0/`base`, 1/`onelevel` or 2/`subtree`.
    pub groupscope: LdapScope,
    /// DN of the group whose members are system administrators; empty for none. Read at each
    /// login: leaving the group takes the role away at the next one.
    pub groupadmindn: String,
}

impl Default for LdapConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            searchdn: String::new(),
            searchpassword: String::new(),
            basedn: String::new(),
            filter: String::new(),
            uid: "uid".to_owned(),
            scope: LdapScope::Subtree,
            timeout: 5,
            starttls: false,
            verifycert: true,
            ca: None,
            groupbasedn: String::new(),
            groupfilter: String::new(),
            groupattribute: "cn".to_owned(),
            groupmembershipattribute: "memberof".to_owned(),
            groupscope: LdapScope::Subtree,
            groupadmindn: String::new(),
        }
    }
}

impl fmt::Debug for LdapConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LdapConfig")
            .field("url", &self.url)
            .field("searchdn", &self.searchdn)
            .field("searchpassword", &"<redacted>")
            .field("basedn", &self.basedn)
            .field("filter", &self.filter)
            .field("uid", &self.uid)
            .field("scope", &self.scope)
            .field("timeout", &self.timeout)
            .field("starttls", &self.starttls)
            .field("verifycert", &self.verifycert)
            .field("ca", &self.ca)
            .field("groupbasedn", &self.groupbasedn)
            .field("groupfilter", &self.groupfilter)
            .field("groupattribute", &self.groupattribute)
            .field("groupmembershipattribute", &self.groupmembershipattribute)
            .field("groupscope", &self.groupscope)
            .field("groupadmindn", &self.groupadmindn)
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// middleware, reporting

/// One middleware in a chain.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Middleware {
    /// Name the middleware is registered under (e.g. `cloudfront`, `redirect`).
    pub name: String,
    /// Keep the entry but skip it.
    pub disabled: bool,
    /// Middleware-specific settings, kept as written.
    pub options: Parameters,
}

/// Error reporting services (Distribution 2.x).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Reporting {
    /// Bugsnag error reporting.
    pub bugsnag: Bugsnag,
    /// New Relic error reporting.
    pub newrelic: NewRelic,
}

/// Bugsnag settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Bugsnag {
    /// Bugsnag project API key (secret).
    pub apikey: Option<String>,
    /// Deployment stage reported with errors (e.g. `production`).
    pub releasestage: Option<String>,
    /// URL of a self-hosted Bugsnag.
    pub endpoint: Option<String>,
}

/// New Relic settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NewRelic {
    /// New Relic license key (secret).
    pub licensekey: Option<String>,
    /// Application name shown in New Relic.
    pub name: Option<String>,
    /// Print New Relic agent debug output.
    pub verbose: bool,
}

// ---------------------------------------------------------------------------------------------
// http

/// The registry's HTTP server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Http {
    /// Listen address: `host:port` (`:5000`, `[::]:5000`) or, with `net: unix`, a socket path.
    pub addr: String,
    /// Listener type: `tcp` (default), `tcp4`, `tcp6` or `unix`.
    pub net: String,
    /// Public base URL of the registry (scheme and host), used in `Location` headers.
    pub host: Option<String>,
    /// Path prefix under which the API is served (e.g. `/registry/`).
    pub prefix: Option<String>,
    /// Key used to sign state handed to clients, such as upload session state (secret).
    pub secret: Option<String>,
    /// Send relative URLs in `Location` headers.
    pub relativeurls: bool,
    /// How long shutdown waits for in-flight requests. Unset: as long as they take.
    pub draintimeout: Option<GoDuration>,
    /// Peers (IP addresses or CIDR ranges) whose `X-Forwarded-Proto` / `X-Forwarded-Host` and
    /// `Forwarded` headers are believed: the load balancers and TLS proxies in front of the
    /// registry (Berth's own key). Forwarded headers from any other peer are ignored.
    #[serde(deserialize_with = "super::net::ip_ranges")]
    pub trustedproxies: Vec<IpRange>,
    /// Serve HTTPS directly.
    pub tls: Tls,
    /// Headers added to every response.
    #[serde(deserialize_with = "header_map")]
    pub headers: HeaderMap,
    /// Separate debug listener (metrics, profiling).
    pub debug: Debug,
    /// HTTP/2 settings.
    pub http2: Http2,
    /// Cleartext HTTP/2 settings (Distribution 3).
    pub h2c: H2c,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            addr: ":5000".to_owned(),
            net: "tcp".to_owned(),
            host: None,
            prefix: None,
            secret: None,
            relativeurls: false,
            draintimeout: None,
            trustedproxies: Vec::new(),
            tls: Tls::default(),
            headers: HeaderMap::new(),
            debug: Debug::default(),
            http2: Http2::default(),
            h2c: H2c::default(),
        }
    }
}

/// Built-in TLS.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Tls {
    /// PEM certificate chain file; set together with `key`.
    pub certificate: Option<String>,
    /// PEM private key file for `certificate`.
    pub key: Option<String>,
    /// CA files whose certificates clients may present (mutual TLS).
    pub clientcas: Vec<String>,
    /// How client certificates are requested and checked (Distribution 3).
    pub clientauth: Option<String>,
    /// Oldest TLS version accepted: `tls1.0`, `tls1.1`, `tls1.2` or `tls1.3`.
    pub minimumtls: Option<String>,
    /// Allowed cipher suites, by Go name.
    pub ciphersuites: Vec<String>,
    /// Obtain certificates automatically over ACME.
    pub letsencrypt: LetsEncrypt,
}

/// ACME (Let's Encrypt) certificates.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LetsEncrypt {
    /// File where obtained certificates are cached.
    pub cachefile: Option<String>,
    /// Account e-mail given to the CA.
    pub email: Option<String>,
    /// Host names certificates may be obtained for.
    pub hosts: Vec<String>,
    /// ACME directory URL of a CA other than Let's Encrypt (Distribution 3).
    pub directoryurl: Option<String>,
}

/// Debug listener.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Debug {
    /// Address of the debug listener; unset means no debug listener.
    pub addr: Option<String>,
    /// Prometheus metrics on the debug listener.
    pub prometheus: Prometheus,
}

/// Prometheus metrics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Prometheus {
    /// Expose metrics.
    pub enabled: bool,
    /// URL path of the metrics endpoint (default `/metrics`).
    pub path: String,
}

impl Default for Prometheus {
    fn default() -> Self {
        Prometheus {
            enabled: false,
            path: "/metrics".to_owned(),
        }
    }
}

/// HTTP/2 settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Http2 {
    /// Serve HTTP/1.1 only.
    pub disabled: bool,
}

/// Cleartext HTTP/2.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct H2c {
    /// Accept HTTP/2 without TLS.
    pub enabled: bool,
}

// ---------------------------------------------------------------------------------------------
// notifications

/// Event notifications.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Notifications {
    /// Contents of the event envelope.
    pub events: Events,
    /// Webhook receivers.
    pub endpoints: Vec<Endpoint>,
}

/// Event contents.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Events {
    /// Include the manifest's references (layers, config) in manifest events.
    pub includereferences: bool,
}

/// One webhook receiver.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Endpoint {
    /// Name identifying the endpoint in logs and metrics.
    pub name: String,
    /// Keep the endpoint configured but send nothing to it.
    pub disabled: bool,
    /// Absolute URL events are POSTed to.
    pub url: String,
    /// Headers added to each delivery (an `Authorization` value is a secret).
    #[serde(deserialize_with = "header_map")]
    pub headers: HeaderMap,
    /// Time limit of one delivery attempt.
    pub timeout: Option<GoDuration>,
    /// Consecutive failures after which delivery backs off.
    pub threshold: Option<u64>,
    /// Pause after `threshold` failures before retrying.
    pub backoff: Option<GoDuration>,
    /// Events about targets of these media types are not sent.
    pub ignoredmediatypes: Vec<String>,
    /// Further filters on which events are not sent.
    pub ignore: Ignore,
}

/// Event filters of an endpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Ignore {
    /// Target media types whose events are dropped.
    pub mediatypes: Vec<String>,
    /// Actions (`pull`, `push`, `delete`, `mount`) whose events are dropped.
    pub actions: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// redis

/// Redis connection (Distribution 2.x keys and Distribution 3's go-redis options).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Redis {
    /// `host:port` of the Redis server (Distribution 2.x).
    pub addr: Option<String>,
    /// Server or cluster/sentinel seed addresses (Distribution 3).
    pub addrs: Vec<String>,
    /// User name for Redis ACL authentication.
    pub username: Option<String>,
    /// Password for Redis authentication (secret).
    pub password: Option<String>,
    /// Database number to select.
    pub db: Option<i64>,
    /// Name set on each connection with `CLIENT SETNAME`.
    pub clientname: Option<String>,
    /// RESP protocol version.
    pub protocol: Option<i64>,
    /// User name for Sentinel authentication.
    pub sentinelusername: Option<String>,
    /// Password for Sentinel authentication (secret).
    pub sentinelpassword: Option<String>,
    /// Sentinel master name (failover mode).
    pub mastername: Option<String>,
    /// Time limit for establishing a connection.
    pub dialtimeout: Option<GoDuration>,
    /// Time limit for reading a reply.
    pub readtimeout: Option<GoDuration>,
    /// Time limit for writing a command.
    pub writetimeout: Option<GoDuration>,
    /// Retries before a command fails.
    pub maxretries: Option<i64>,
    /// Shortest pause between retries.
    pub minretrybackoff: Option<GoDuration>,
    /// Longest pause between retries.
    pub maxretrybackoff: Option<GoDuration>,
    /// Apply the caller's deadline to each command.
    pub contexttimeoutenabled: Option<bool>,
    /// Hand out pooled connections first-in first-out.
    pub poolfifo: Option<bool>,
    /// Maximum number of pooled connections.
    pub poolsize: Option<u64>,
    /// Wait limit for a free pooled connection.
    pub pooltimeout: Option<GoDuration>,
    /// Idle connections kept open at least.
    pub minidleconns: Option<u64>,
    /// Idle connections kept open at most.
    pub maxidleconns: Option<u64>,
    /// Open connections at most (cluster mode).
    pub maxactiveconns: Option<u64>,
    /// Idle time after which a connection is closed.
    pub connmaxidletime: Option<GoDuration>,
    /// Age after which a connection is closed.
    pub connmaxlifetime: Option<GoDuration>,
    /// Redirects followed in cluster mode.
    pub maxredirects: Option<i64>,
    /// Send read commands to replicas (cluster mode).
    pub readonly: Option<bool>,
    /// Route read commands to the closest node (cluster mode).
    pub routebylatency: Option<bool>,
    /// Route read commands to a random node (cluster mode).
    pub routerandomly: Option<bool>,
    /// Do not send `CLIENT SETINFO` on connect.
    pub disableidentity: Option<bool>,
    /// Suffix for the library name sent with `CLIENT SETINFO`.
    pub identitysuffix: Option<String>,
    /// Enable unfinished RESP3 features.
    pub unstableresp3: Option<bool>,
    /// Connection pool (Distribution 2.x).
    pub pool: RedisPool,
    /// TLS towards Redis.
    pub tls: RedisTls,
}

/// Redis connection pool (Distribution 2.x).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RedisPool {
    /// Idle connections kept open at most.
    pub maxidle: Option<u64>,
    /// Open connections at most (0 means unlimited).
    pub maxactive: Option<u64>,
    /// Idle time after which a connection is closed.
    pub idletimeout: Option<GoDuration>,
}

/// TLS towards Redis.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RedisTls {
    /// Use TLS (older spelling; presence of the other keys also enables it).
    pub enabled: Option<bool>,
    /// Client certificate file for mutual TLS.
    pub certificate: Option<String>,
    /// Client private key file for mutual TLS.
    pub key: Option<String>,
    /// CA files trusted for the server certificate.
    pub rootcas: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// health

/// Health checks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Health {
    /// Periodically probe the storage driver.
    pub storagedriver: StorageDriverCheck,
    /// Unhealthy while a given file exists.
    pub file: Vec<FileCheck>,
    /// Unhealthy while a URL does not answer with the expected status.
    pub http: Vec<HttpCheck>,
    /// Unhealthy while a TCP address refuses connections.
    pub tcp: Vec<TcpCheck>,
}

/// Storage driver probe.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageDriverCheck {
    /// Run the probe.
    pub enabled: bool,
    /// Time between probes (Distribution's default is 10s).
    pub interval: Option<GoDuration>,
    /// Failed probes in a row before the registry reports unhealthy.
    pub threshold: Option<u64>,
}

/// File presence check.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FileCheck {
    /// File whose existence means unhealthy.
    pub file: String,
    /// Time between checks.
    pub interval: Option<GoDuration>,
    /// Failed checks in a row before reporting unhealthy.
    pub threshold: Option<u64>,
}

/// HTTP check.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpCheck {
    /// URL to request.
    pub uri: String,
    /// Headers sent with the request (an `Authorization` value is a secret).
    #[serde(deserialize_with = "header_map")]
    pub headers: HeaderMap,
    /// Status code that counts as healthy (default 200).
    pub statuscode: Option<u16>,
    /// Time limit of one request.
    pub timeout: Option<GoDuration>,
    /// Time between checks.
    pub interval: Option<GoDuration>,
    /// Failed checks in a row before reporting unhealthy.
    pub threshold: Option<u64>,
}

/// TCP check.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TcpCheck {
    /// `host:port` to connect to.
    pub addr: String,
    /// Time limit of one connection attempt.
    pub timeout: Option<GoDuration>,
    /// Time between checks.
    pub interval: Option<GoDuration>,
    /// Failed checks in a row before reporting unhealthy.
    pub threshold: Option<u64>,
}

// ---------------------------------------------------------------------------------------------
// catalog, tags, proxy, compatibility, validation, policy

/// `/v2/_catalog` limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Catalog {
    /// Most repositories returned by one catalog request (zero or less means 1000).
    pub maxentries: i64,
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog { maxentries: 1000 }
    }
}

/// Tag list limits (Distribution 3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Tags {
    /// Most tags returned by one tag list request (zero means 1000; negative is invalid).
    pub maxtags: i64,
}

impl Default for Tags {
    fn default() -> Self {
        Tags { maxtags: 1000 }
    }
}

/// Pull-through cache of a remote registry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Proxy {
    /// URL of the registry to mirror; setting it turns proxy mode on.
    pub remoteurl: Option<String>,
    /// User name at the remote registry.
    pub username: Option<String>,
    /// Password at the remote registry (secret).
    pub password: Option<String>,
    /// How long cached content is kept (Distribution 3; default 168h, 0 keeps it forever).
    pub ttl: Option<GoDuration>,
    /// Time limit for writing fetched content to the cache (Distribution 3).
    pub cachewritetimeout: Option<GoDuration>,
    /// Credential helper command used instead of `username`/`password` (Distribution 3).
    pub exec: Option<ProxyExec>,
}

/// Credential helper for the proxy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxyExec {
    /// Command that prints credentials.
    pub command: String,
    /// How long printed credentials are reused.
    pub lifetime: Option<GoDuration>,
}

/// Legacy format support.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Compatibility {
    /// Docker image manifest schema 1.
    pub schema1: Schema1,
}

/// Schema 1 manifests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Schema1 {
    /// Private key file used to sign schema 1 manifests.
    pub signingkeyfile: Option<String>,
    /// Accept and serve schema 1 manifests.
    pub enabled: bool,
}

/// Manifest validation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Validation {
    /// Old switch that turned the checks below on; superseded by `disabled`.
    pub enabled: bool,
    /// Turn the checks below off.
    pub disabled: bool,
    /// Checks on manifests.
    pub manifests: ManifestValidation,
}

/// Checks on pushed manifests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ManifestValidation {
    /// Rules for foreign-layer URLs in manifests.
    pub urls: UrlRules,
    /// Rules for image indexes (Distribution 3).
    pub indexes: IndexValidation,
}

/// Foreign-layer URL rules (Go regular expressions).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UrlRules {
    /// A URL must match one of these.
    pub allow: Vec<String>,
    /// A URL must match none of these.
    pub deny: Vec<String>,
}

/// Image index rules (Distribution 3).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IndexValidation {
    /// Which referenced platform manifests must exist: `all`, `none` or `list`.
    pub platforms: Option<String>,
    /// Platforms checked when `platforms` is `list`.
    pub platformlist: Vec<Platform>,
}

/// A platform in `validation.manifests.indexes.platformlist`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Platform {
    /// CPU architecture (e.g. `amd64`).
    pub architecture: Option<String>,
    /// Operating system (e.g. `linux`).
    pub os: Option<String>,
}

/// Repository policies.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    /// Policies on repository content.
    pub repository: RepositoryPolicy,
}

/// Repository content policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RepositoryPolicy {
    /// Repository classes (config media types) that may be stored; empty allows all.
    pub classes: Vec<String>,
}

// ---------------------------------------------------------------------------------------------

impl Config {
    /// A configuration in which every optional section is present with its defaults and every list
    /// holds one default element. Serialized, it is the full key tree of the schema with default
    /// values at the leaves: the environment mapper walks it to resolve `REGISTRY_*` names, and the
    /// option report compares against it to find what the user changed.
    pub(crate) fn schema_reference() -> Config {
        let mut c = Config::default();
        c.storage.filesystem = Some(Filesystem::default());
        c.storage.inmemory = Some(InMemory::default());
        c.storage.s3 = Some(S3::default());
        c.storage.swift = Some(Swift::default());
        c.storage.azure = Some(Parameters::new());
        c.storage.gcs = Some(Parameters::new());
        c.storage.oss = Some(Parameters::new());
        c.auth.silly = Some(SillyAuth::default());
        c.auth.token = Some(TokenAuth::default());
        c.auth.htpasswd = Some(HtpasswdAuth::default());
        c.auth.builtin = Some(BuiltinAuth {
            ldap: Some(LdapConfig::default()),
            ..BuiltinAuth::default()
        });
        c.log.hooks = vec![LogHook::default()];
        c.notifications.endpoints = vec![Endpoint::default()];
        c.health.file = vec![FileCheck::default()];
        c.health.http = vec![HttpCheck::default()];
        c.health.tcp = vec![TcpCheck::default()];
        c.proxy.exec = Some(ProxyExec::default());
        c.validation.manifests.indexes.platformlist = vec![Platform::default()];
        c.database = Some(Database::default());
        c.replication.registries = vec![RemoteRegistry::default()];
        c.replication.rules = vec![ReplicationRule::default()];
        c
    }
}

/// Reads a header map whose values may be a list or a single scalar.
fn header_map<'de, D: Deserializer<'de>>(deserializer: D) -> Result<HeaderMap, D::Error> {
    let raw = BTreeMap::<String, OneOrMany>::deserialize(deserializer)?;
    Ok(raw
        .into_iter()
        .map(|(name, values)| (name, values.0))
        .collect())
}

/// A list of strings, or one scalar standing for a list of one.
struct OneOrMany(Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OneOrManyVisitor;

        impl<'de> Visitor<'de> for OneOrManyVisitor {
            type Value = OneOrMany;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of strings or a single string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_owned()]))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_string()]))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_string()]))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_string()]))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_string()]))
            }
            fn visit_unit<E: de::Error>(self) -> Result<OneOrMany, E> {
                Ok(OneOrMany(Vec::new()))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut values = Vec::new();
                while let Some(value) = seq.next_element::<String>()? {
                    values.push(value);
                }
                Ok(OneOrMany(values))
            }
        }

        deserializer.deserialize_any(OneOrManyVisitor)
    }
}

// ---------------------------------------------------------------------------------------------
// database (the GitLab container registry's section) and sqlite (Berth's)

/// The PostgreSQL metadata database, keyed as the GitLab container registry keys it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Database {
    /// Use this database for metadata.
    pub enabled: bool,
    /// Server host name, address, or a directory holding its Unix socket.
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
    /// libpq's `sslmode`: disable, allow, prefer, require, verify-ca or verify-full.
    pub sslmode: String,
    /// Client certificate, its key, and the CA bundle that verifies the server.
    pub sslcert: Option<String>,
    pub sslkey: Option<String>,
    pub sslrootcert: Option<String>,
    /// How long to wait for a connection to open.
    pub connecttimeout: Option<GoDuration>,
    /// The connection pool.
    pub pool: DatabasePool,
}

impl Default for Database {
    fn default() -> Database {
        Database {
            enabled: false,
            host: "localhost".into(),
            port: 5432,
            user: String::new(),
            password: None,
            dbname: String::new(),
            sslmode: "prefer".into(),
            sslcert: None,
            sslkey: None,
            sslrootcert: None,
            connecttimeout: None,
            pool: DatabasePool::default(),
        }
    }
}

/// The connection pool of `database`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DatabasePool {
    /// Most connections open at once.
    pub maxopen: Option<u32>,
    /// Most idle connections kept.
    pub maxidle: Option<u32>,
    /// Longest a connection is reused.
    pub maxlifetime: Option<GoDuration>,
    /// Longest a connection stays idle.
    pub maxidletime: Option<GoDuration>,
}

/// Online garbage collection (`berth gc` runs the same with its own flags).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Gc {
    /// Run a collection this often, on one instance at a time; `0` (the default) never.
    pub interval: GoDuration,
    /// Content referenced, unlinked or pushed within this long is kept.
    pub grace: GoDuration,
    /// Also delete manifests that no tag, no index and no live subject keeps.
    pub untagged: bool,
    /// Object deletes in flight at once.
    pub parallelism: usize,
    /// The share of its time a run works (0.01 to 1): after each batch it pauses so that its
    /// work takes at most this share of the wall time, leaving the rest to requests.
    pub pace: f64,
}

impl Default for Gc {
    fn default() -> Self {
        Gc {
            interval: GoDuration::from_secs(0),
            grace: GoDuration::from_secs(3600),
            untagged: false,
            parallelism: 8,
            pace: 0.5,
        }
    }
}

/// Remote registries and replication rules.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Replication {
    /// Registries rules copy to or from.
    pub registries: Vec<RemoteRegistry>,
    /// What is copied where.
    pub rules: Vec<ReplicationRule>,
}

/// A remote registry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RemoteRegistry {
    /// Its name, unique; rules name it.
    pub name: String,
    /// `harbor` (another Berth or a Harbor) or `docker-registry` (any registry that speaks the
    /// distribution API).
    #[serde(rename = "type")]
    pub kind: String,
    /// Its base URL.
    pub url: String,
    pub username: Option<String>,
    /// (secret)
    pub password: Option<String>,
    /// Accept any TLS certificate.
    pub insecure: bool,
    /// A PEM file of certificates to trust besides the usual roots.
    pub ca: Option<String>,
}

/// A replication rule: push (`destination`) or pull (`source`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReplicationRule {
    /// Its name, unique.
    pub name: String,
    /// Push replication: every push here that matches is copied to this registry.
    pub destination: Option<String>,
    /// Pull replication: what matches there is copied here every `interval`.
    pub source: Option<String>,
    /// Repository name globs (`**` crosses `/`); empty matches every repository.
    pub repositories: Vec<String>,
    /// Tag globs; empty matches every tag.
    pub tags: Vec<String>,
    /// Where copies go: this namespace replaces the first segment of the name; empty keeps it.
    pub namespace: String,
    /// Deletes are replicated too (push rules).
    pub deletes: bool,
    pub enabled: bool,
    /// A pull rule lists its source this often (required); a push rule, when set, also
    /// queues everything that matches this often, so what the destination lost comes back.
    pub interval: GoDuration,
}

impl Default for ReplicationRule {
    fn default() -> Self {
        ReplicationRule {
            name: String::new(),
            destination: None,
            source: None,
            repositories: Vec::new(),
            tags: Vec::new(),
            namespace: String::new(),
            deletes: false,
            enabled: true,
            interval: GoDuration::from_secs(0),
        }
    }
}

/// The embedded SQLite metadata database.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Sqlite {
    /// The database file. Default: `berth/meta.db` under the filesystem storage root, or a
    /// temporary file for in-memory storage.
    pub path: Option<String>,
}
