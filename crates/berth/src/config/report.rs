//! What the loaded configuration means to Berth: the effective configuration with secrets masked,
//! and which of the options the user set Berth acts on.
//!
//! [`OPTION_TABLE`] is the single list of key paths Berth implements or deliberately ignores; update
//! it as features land. Everything here works on a finished [`Config`] and never fails.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;
use serde_yaml::{Mapping, Value};

use super::de::{join_key, scalar_text};
use super::schema::{Config, HeaderMap, Parameters};

/// What Berth does with an option the user set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Berth honours the option.
    Active,
    /// Parsed and understood, but Berth does not act on it yet.
    NotImplemented,
    /// Accepted for compatibility; it has no effect in Berth by design.
    Ignored,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Active => "active",
            Status::NotImplemented => "not implemented",
            Status::Ignored => "ignored",
        })
    }
}

/// One row of [`option_report`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OptionStatus {
    /// Key path of the option or section, e.g. `log.formatter` or `auth.token`.
    pub key: String,
    /// What Berth does with it.
    pub status: Status,
}

/// Which options Berth implements: the one table to edit when a feature lands.
///
/// Each entry names a key path, or a section whose keys it covers (`storage.cache` covers
/// `storage.cache.layerinfo`). A set option is reported under the longest entry that equals it or
/// contains it, so an entry both assigns a status and sets the granularity of the report: a whole
/// `auth.token` section shows as one row. An option no entry covers is reported under its own path
/// as [`Status::NotImplemented`]; the `NotImplemented` entries below only group rows.
pub const OPTION_TABLE: &[(&str, Status)] = &[
    // Implemented.
    ("version", Status::Active),
    ("log.level", Status::Active),
    ("log.formatter", Status::Active),
    ("log.fields", Status::Active),
    ("log.accesslog.disabled", Status::Active),
    ("storage.filesystem", Status::Active),
    ("storage.filesystem.rootdirectory", Status::Active),
    ("storage.inmemory", Status::Active),
    ("storage.delete.enabled", Status::Active),
    ("storage.maintenance.uploadpurging", Status::Active),
    ("storage.maintenance.readonly.enabled", Status::Active),
    ("http.addr", Status::Active),
    ("http.host", Status::Active),
    ("http.prefix", Status::Active),
    ("http.secret", Status::Active),
    ("http.tls.certificate", Status::Active),
    ("http.tls.key", Status::Active),
    ("http.tls.clientcas", Status::Active),
    ("http.headers", Status::Active),
    ("http.debug.addr", Status::Active),
    ("http.debug.prometheus", Status::Active),
    ("http.draintimeout", Status::Active),
    ("http.relativeurls", Status::Active),
    ("http.trustedproxies", Status::Active),
    ("health.storagedriver", Status::Active),
    ("database", Status::Active),
    ("sqlite.path", Status::Active),
    // No effect by design.
    // Blob descriptors live in Berth's metadata store, so there is nothing to cache in front of it.
    ("storage.cache", Status::Ignored),
    // Berth runs blocking file-system calls on tokio's bounded blocking pool.
    ("storage.filesystem.maxthreads", Status::Ignored),
    // Object stores redirect pulls to presigned URLs unless `disable` is set.
    ("storage.redirect", Status::Active),
    // Tags are rows in the metadata store; there is no per-tag file lookup to parallelise.
    ("storage.tag", Status::Ignored),
    // Distribution uses Redis only as the blob descriptor cache (see storage.cache).
    ("redis", Status::Ignored),
    // Bugsnag / New Relic integrations are not part of Berth; errors go to the log.
    ("reporting", Status::Ignored),
    // Object stores through OpenDAL; azure, gcs and oss warn at start-up that the test suite
    // does not cover them.
    ("storage.s3", Status::Active),
    ("storage.s3.useragent", Status::Ignored),
    ("storage.s3.loglevel", Status::Ignored),
    ("storage.s3.usedualstack", Status::NotImplemented),
    ("storage.s3.usefipsendpoint", Status::NotImplemented),
    ("storage.s3.redirectendpoint", Status::NotImplemented),
    ("storage.swift", Status::Active),
    ("storage.swift.accesskey", Status::NotImplemented),
    ("storage.swift.tempurlcontainerkey", Status::NotImplemented),
    ("storage.swift.tempurlmethods", Status::NotImplemented),
    ("storage.azure", Status::Active),
    ("storage.gcs", Status::Active),
    ("storage.oss", Status::Active),
    ("auth.silly", Status::Active),
    ("auth.token", Status::Active),
    ("auth.htpasswd", Status::Active),
    ("auth.builtin", Status::Active),
    // Logins against an LDAP directory or Active Directory (Harbor's LDAP settings).
    ("auth.builtin.ldap", Status::Active),
    ("gc", Status::Active),
    ("notifications.endpoints", Status::Active),
    ("notifications.events", Status::NotImplemented),
    ("middleware", Status::NotImplemented),
    ("log.hooks", Status::NotImplemented),
    ("health", Status::NotImplemented),
    // A pull-through cache of one remote registry; `ttl` is how long a cached tag is served
    // before it is revalidated.
    ("proxy", Status::Active),
    ("proxy.cachewritetimeout", Status::NotImplemented),
    ("proxy.exec", Status::NotImplemented),
    ("validation", Status::NotImplemented),
    ("validation.manifests.indexes", Status::Active),
    ("compatibility", Status::NotImplemented),
    ("policy", Status::NotImplemented),
    ("replication", Status::Active),
];

/// The options the user set (values that differ from the defaults, plus the chosen storage driver
/// and authentication method), each with what Berth does with it, sorted by key.
pub fn option_report(config: &Config) -> Vec<OptionStatus> {
    let actual = serde_yaml::to_value(config).unwrap_or(Value::Null);
    let reference = serde_yaml::to_value(Config::schema_reference()).unwrap_or(Value::Null);
    let mut changed = BTreeSet::new();
    collect_changed(&actual, Some(&reference), "", &mut changed);
    for driver in config.storage.configured_drivers() {
        changed.insert(format!("storage.{driver}"));
    }
    for method in config.auth.configured_methods() {
        changed.insert(format!("auth.{method}"));
    }

    let mut rows: BTreeMap<String, Status> = BTreeMap::new();
    for path in changed {
        let (key, status) = classify(&path);
        rows.entry(key).or_insert(status);
    }
    rows.into_iter()
        .map(|(key, status)| OptionStatus { key, status })
        .collect()
}

/// The table entry covering `path`, or `path` itself as not implemented.
fn classify(path: &str) -> (String, Status) {
    OPTION_TABLE
        .iter()
        .filter(|(key, _)| {
            path == *key
                || path
                    .strip_prefix(key)
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
        })
        .max_by_key(|(key, _)| key.len())
        .map_or(
            (path.to_owned(), Status::NotImplemented),
            |(key, status)| ((*key).to_owned(), *status),
        )
}

/// Adds to `out` the paths where `actual` differs from `reference`. Lists and free-form maps count
/// as one value: set when not empty.
fn collect_changed(
    actual: &Value,
    reference: Option<&Value>,
    path: &str,
    out: &mut BTreeSet<String>,
) {
    match actual {
        Value::Null => {}
        Value::Mapping(map) => match reference {
            Some(Value::Mapping(fields)) if !fields.is_empty() => {
                for (key, value) in map {
                    let key_text = scalar_text(key).unwrap_or_default();
                    collect_changed(value, fields.get(key), &join_key(path, &key_text), out);
                }
            }
            _ => {
                if !map.is_empty() {
                    out.insert(path.to_owned());
                }
            }
        },
        Value::Sequence(items) => {
            if !items.is_empty() {
                out.insert(path.to_owned());
            }
        }
        scalar => {
            if reference != Some(scalar) {
                out.insert(path.to_owned());
            }
        }
    }
}

/// What a masked secret is shown as.
pub const MASK: &str = "********";

/// Header names whose values are credentials.
const SECRET_HEADERS: &[&str] = &["authorization", "proxy-authorization", "cookie"];

/// Substrings of free-form parameter names whose values are credentials.
const SECRET_PARAMETER_WORDS: &[&str] = &[
    "password",
    "secret",
    "accountkey",
    "accesskey",
    "privatekey",
    "private_key",
    "apikey",
    "licensekey",
    "connectionstring",
];

/// The effective configuration as YAML: defaults filled in, unset optional keys left out, every
/// secret replaced by [`MASK`]. The output loads again with [`load`](super::load).
pub fn render_effective(config: &Config) -> String {
    let mut masked = config.clone();
    mask_secrets(&mut masked);
    let mut tree = match serde_yaml::to_value(&masked) {
        Ok(tree) => tree,
        Err(e) => return format!("# the effective configuration could not be rendered: {e}\n"),
    };
    prune(&mut tree);
    // A driver or method without parameters is still a choice; put it back after pruning.
    let chosen = masked
        .storage
        .configured_drivers()
        .into_iter()
        .map(|d| ("storage", d))
        .chain(
            masked
                .auth
                .configured_methods()
                .into_iter()
                .map(|m| ("auth", m)),
        );
    for (section, name) in chosen {
        if let Value::Mapping(root) = &mut tree {
            let section = root
                .entry(Value::from(section))
                .or_insert_with(|| Value::Mapping(Mapping::new()));
            if let Value::Mapping(section) = section {
                section
                    .entry(Value::from(name))
                    .or_insert_with(|| Value::Mapping(Mapping::new()));
            }
        }
    }
    serde_yaml::to_string(&tree)
        .unwrap_or_else(|e| format!("# the effective configuration could not be rendered: {e}\n"))
}

/// Replaces every credential in `config` by [`MASK`].
fn mask_secrets(config: &mut Config) {
    mask(&mut config.http.secret);
    for hook in &mut config.log.hooks {
        mask(&mut hook.options.smtp.password);
    }
    if let Some(s3) = &mut config.storage.s3 {
        mask(&mut s3.accesskey);
        mask(&mut s3.secretkey);
    }
    if let Some(swift) = &mut config.storage.swift {
        mask(&mut swift.password);
        mask(&mut swift.secretkey);
        mask(&mut swift.accesskey);
    }
    for params in [
        &mut config.storage.azure,
        &mut config.storage.gcs,
        &mut config.storage.oss,
    ]
    .into_iter()
    .flatten()
    {
        mask_parameters(params);
    }
    for chain in config.middleware.values_mut() {
        for middleware in chain {
            mask_parameters(&mut middleware.options);
        }
    }
    mask(&mut config.reporting.bugsnag.apikey);
    mask(&mut config.reporting.newrelic.licensekey);
    mask(&mut config.redis.password);
    mask(&mut config.redis.sentinelpassword);
    mask(&mut config.proxy.password);
    for remote in &mut config.replication.registries {
        mask(&mut remote.password);
    }
    if let Some(database) = &mut config.database {
        mask(&mut database.password);
    }
    if let Some(ldap) = config.auth.builtin.as_mut().and_then(|b| b.ldap.as_mut()) {
        if !ldap.searchpassword.is_empty() {
            ldap.searchpassword = MASK.to_owned();
        }
    }
    for endpoint in &mut config.notifications.endpoints {
        mask_headers(&mut endpoint.headers);
    }
    for check in &mut config.health.http {
        mask_headers(&mut check.headers);
    }
}

fn mask(secret: &mut Option<String>) {
    if secret.as_deref().is_some_and(|s| !s.is_empty()) {
        *secret = Some(MASK.to_owned());
    }
}

fn mask_headers(headers: &mut HeaderMap) {
    for (name, values) in headers.iter_mut() {
        if SECRET_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            values.iter_mut().for_each(|v| *v = MASK.to_owned());
        }
    }
}

fn mask_parameters(params: &mut Parameters) {
    for (name, value) in params.iter_mut() {
        mask_value(name, value);
    }
}

/// Masks `value` if `name` looks like a credential; otherwise looks inside it.
fn mask_value(name: &str, value: &mut Value) {
    let lower = name.to_ascii_lowercase();
    if SECRET_PARAMETER_WORDS.iter().any(|w| lower.contains(w))
        && !matches!(value, Value::Mapping(_))
    {
        *value = Value::from(MASK);
        return;
    }
    match value {
        Value::Mapping(map) => {
            for (key, inner) in map.iter_mut() {
                mask_value(&scalar_text(key).unwrap_or_default(), inner);
            }
        }
        Value::Sequence(items) => items.iter_mut().for_each(|item| mask_value(name, item)),
        _ => {}
    }
}

/// Removes nulls, empty lists and empty maps, bottom-up.
fn prune(value: &mut Value) {
    match value {
        Value::Mapping(map) => {
            map.values_mut().for_each(prune);
            map.retain(|_, v| !is_empty(v));
        }
        Value::Sequence(items) => items.iter_mut().for_each(prune),
        _ => {}
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Mapping(map) => map.is_empty(),
        Value::Sequence(items) => items.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{load, Config};
    use super::*;

    const LDAP: &str =
        "version: 0.1\nstorage:\n  inmemory: {}\nauth:\n  builtin:\n    ldap:\n      \
         url: ldaps://ldap.example.test:636\n      searchdn: cn=reader,dc=example,dc=test\n      \
         searchpassword: hunter2-secret\n      basedn: dc=example,dc=test\n      scope: 1\n";

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_reference_shows_every_ldap_key() {
        let reference = serde_yaml::to_value(Config::schema_reference()).expect("serializes");
        let ldap = &reference["auth"]["builtin"]["ldap"];
        for key in [
            "url",
            "searchdn",
            "searchpassword",
            "basedn",
            "filter",
            "uid",
            "scope",
            "timeout",
            "starttls",
            "verifycert",
            "ca",
            "groupbasedn",
            "groupfilter",
            "groupattribute",
            "groupmembershipattribute",
            "groupscope",
            "groupadmindn",
        ] {
            assert!(ldap.get(key).is_some(), "{key} missing from {ldap:?}");
        }
    }

    #[test]
    fn ldap_keys_load_from_the_file_and_the_environment() {
        let loaded = load(
            LDAP,
            env(&[
                (
                    "REGISTRY_AUTH_BUILTIN_LDAP_GROUPADMINDN",
                    "cn=admins,dc=example,dc=test",
                ),
                ("REGISTRY_AUTH_BUILTIN_LDAP_TIMEOUT", "9"),
                ("REGISTRY_AUTH_BUILTIN_LDAP_GROUPSCOPE", "onelevel"),
                ("REGISTRY_AUTH_BUILTIN_LDAP_SEARCHPASSWORD", "12345"),
            ]),
        )
        .expect("loads");
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let builtin = loaded.config.auth.builtin.expect("builtin");
        let ldap = builtin.ldap.expect("ldap");
        assert_eq!(ldap.url, "ldaps://ldap.example.test:636");
        assert_eq!(ldap.scope, crate::config::LdapScope::OneLevel);
        assert_eq!(ldap.groupscope, crate::config::LdapScope::OneLevel);
        assert_eq!(ldap.groupadmindn, "cn=admins,dc=example,dc=test");
        assert_eq!(ldap.timeout, 9);
        assert_eq!(ldap.searchpassword, "12345");
        assert_eq!(ldap.uid, "uid", "defaults fill what is not written");
    }

    #[test]
    fn the_search_password_is_never_shown() {
        let loaded = load(LDAP, env(&[])).expect("loads");
        let rendered = render_effective(&loaded.config);
        assert!(!rendered.contains("hunter2-secret"), "{rendered}");
        assert!(rendered.contains(MASK), "{rendered}");
        assert!(!format!("{:?}", loaded.config).contains("hunter2-secret"));
        let again = load(&rendered, env(&[])).expect("the rendering loads again");
        let ldap = again
            .config
            .auth
            .builtin
            .and_then(|b| b.ldap)
            .expect("ldap");
        assert_eq!(ldap.basedn, "dc=example,dc=test");
    }

    #[test]
    fn the_report_lists_the_ldap_section() {
        let loaded = load(LDAP, env(&[])).expect("loads");
        let report = option_report(&loaded.config);
        let row = report
            .iter()
            .find(|r| r.key == "auth.builtin.ldap")
            .unwrap_or_else(|| panic!("no auth.builtin.ldap row in {report:?}"));
        assert_eq!(row.status, Status::Active);
    }
}
