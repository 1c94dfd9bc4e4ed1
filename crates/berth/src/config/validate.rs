//! Checks that need more than a field's type: one storage driver, a parseable listen address,
//! absolute URLs, settings that only make sense in pairs.
//!
//! Each check refuses what Distribution itself refuses at startup (or what could never work), and
//! names the offending key. Checks run on the value tree before deserialization where the tree
//! holds information the typed config loses (a driver name Berth has no field for), and on the
//! typed [`Config`] otherwise.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde_yaml::Value;

use super::de::scalar_text;
use super::schema::{Config, Database, AUTH_METHODS, STORAGE_DRIVERS, STORAGE_SECTIONS};
use super::ConfigError;

/// The only configuration format version there is.
pub const SUPPORTED_VERSION: &str = "0.1";

fn invalid(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.into(),
        message: message.into(),
    }
}

/// Driver and auth method names as written, before unknown ones are dropped by deserialization.
pub(crate) fn check_tree(root: &Value) -> Result<(), ConfigError> {
    let keys = |section: &str| -> Vec<String> {
        match root.get(section) {
            Some(Value::Mapping(map)) => map.keys().filter_map(scalar_text).collect(),
            _ => Vec::new(),
        }
    };

    let drivers: Vec<String> = keys("storage")
        .into_iter()
        .filter(|k| !STORAGE_SECTIONS.contains(&k.as_str()))
        .collect();
    if let Some(unknown) = drivers
        .iter()
        .find(|d| !STORAGE_DRIVERS.contains(&d.as_str()))
    {
        return Err(invalid(
            format!("storage.{unknown}"),
            format!(
                "unknown storage driver {unknown:?}; Distribution's drivers are filesystem, \
                 inmemory, s3, swift, azure, gcs and oss"
            ),
        ));
    }
    if drivers.len() > 1 {
        return Err(too_many_drivers(&drivers));
    }

    let methods = keys("auth");
    if let Some(unknown) = methods.iter().find(|m| !AUTH_METHODS.contains(&m.as_str())) {
        return Err(invalid(
            format!("auth.{unknown}"),
            format!("unknown authentication method {unknown:?}; expected silly, token, htpasswd or builtin"),
        ));
    }
    if methods.len() > 1 {
        return Err(too_many_auth(&methods));
    }
    Ok(())
}

fn too_many_drivers<S: AsRef<str>>(drivers: &[S]) -> ConfigError {
    let names: Vec<&str> = drivers.iter().map(AsRef::as_ref).collect();
    invalid(
        "storage",
        format!(
            "exactly one storage driver must be configured, found {} (a REGISTRY_STORAGE_<DRIVER>_* \
             variable adds a driver next to the file's; set REGISTRY_STORAGE=<driver> to replace it)",
            names.join(", ")
        ),
    )
}

fn too_many_auth<S: AsRef<str>>(methods: &[S]) -> ConfigError {
    let names: Vec<&str> = methods.iter().map(AsRef::as_ref).collect();
    invalid(
        "auth",
        format!(
            "only one authentication method may be configured, found {}",
            names.join(", ")
        ),
    )
}

/// Checks a typed configuration; `load` calls this, and code that builds a [`Config`] by hand
/// should too.
pub(crate) fn validate(config: &Config) -> Result<(), ConfigError> {
    if config.version.is_empty() {
        return Err(invalid(
            "version",
            format!("missing; Distribution configuration files start with `version: {SUPPORTED_VERSION}`"),
        ));
    }
    if config.version != SUPPORTED_VERSION {
        return Err(invalid(
            "version",
            format!(
                "unsupported configuration version {:?}; Berth reads version {SUPPORTED_VERSION}",
                config.version
            ),
        ));
    }

    let drivers = config.storage.configured_drivers();
    match drivers.len() {
        0 => {
            return Err(invalid(
                "storage",
                "no storage driver configured; expected one of filesystem, inmemory, s3, swift, \
                 azure, gcs, oss",
            ))
        }
        1 => {}
        _ => return Err(too_many_drivers(&drivers)),
    }
    if let Some(fs) = &config.storage.filesystem {
        if fs.rootdirectory.is_empty() {
            return Err(invalid(
                "storage.filesystem.rootdirectory",
                "must not be empty",
            ));
        }
    }

    let methods = config.auth.configured_methods();
    if methods.len() > 1 {
        return Err(too_many_auth(&methods));
    }
    check_auth(config)?;

    check_http(config)?;

    for (i, endpoint) in config.notifications.endpoints.iter().enumerate() {
        check_absolute_url(&format!("notifications.endpoints[{i}].url"), &endpoint.url)?;
    }
    if let Some(remote) = &config.proxy.remoteurl {
        check_absolute_url("proxy.remoteurl", remote)?;
    }
    check_replication(&config.replication)?;
    if config.tags.maxtags < 0 {
        return Err(invalid("tags.maxtags", "must not be negative"));
    }
    if !(config.gc.pace > 0.0 && config.gc.pace <= 1.0) {
        return Err(invalid(
            "gc.pace",
            "is the share of its time a collection works: more than 0, at most 1",
        ));
    }
    if let Some(database) = &config.database {
        check_database(database)?;
    }
    if let Some(path) = &config.sqlite.path {
        if path.trim().is_empty() {
            return Err(invalid("sqlite.path", "must not be empty when set"));
        }
    }
    if let Some(platforms) = &config.validation.manifests.indexes.platforms {
        if !["all", "none", "list"].contains(&platforms.to_ascii_lowercase().as_str()) {
            return Err(invalid(
                "validation.manifests.indexes.platforms",
                format!("invalid value {platforms:?}: expected all, none or list"),
            ));
        }
    }
    Ok(())
}

/// Each method's required settings, as Distribution's access controllers demand them.
fn check_auth(config: &Config) -> Result<(), ConfigError> {
    let required = |path: &str, value: &Option<String>| match value.as_deref() {
        Some(v) if !v.is_empty() => Ok(()),
        _ => Err(invalid(path, "required by this authentication method")),
    };
    if let Some(silly) = &config.auth.silly {
        required("auth.silly.realm", &silly.realm)?;
        required("auth.silly.service", &silly.service)?;
    }
    if let Some(token) = &config.auth.token {
        if !token.autoredirect {
            required("auth.token.realm", &token.realm)?;
        }
        required("auth.token.service", &token.service)?;
        required("auth.token.issuer", &token.issuer)?;
        if token.rootcertbundle.is_none() && token.jwks.is_none() {
            return Err(invalid(
                "auth.token.rootcertbundle",
                "required (or auth.token.jwks): the keys that may sign tokens",
            ));
        }
    }
    if let Some(htpasswd) = &config.auth.htpasswd {
        required("auth.htpasswd.realm", &htpasswd.realm)?;
        required("auth.htpasswd.path", &htpasswd.path)?;
    }
    Ok(())
}

/// libpq's `sslmode` values.
const SSL_MODES: &[&str] = &[
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

/// The GitLab container registry's `database` section: a known `sslmode` always (a typo must not
/// silently weaken TLS once the section is enabled), and what a connection needs when enabled.
fn check_database(database: &Database) -> Result<(), ConfigError> {
    if !SSL_MODES.contains(&database.sslmode.as_str()) {
        return Err(invalid(
            "database.sslmode",
            format!(
                "invalid value {:?}: expected one of {}",
                database.sslmode,
                SSL_MODES.join(", ")
            ),
        ));
    }
    if database.enabled {
        for (key, value) in [
            ("database.host", &database.host),
            ("database.user", &database.user),
            ("database.dbname", &database.dbname),
        ] {
            if value.trim().is_empty() {
                return Err(invalid(key, "required when database.enabled is true"));
            }
        }
    }
    Ok(())
}

fn check_http(config: &Config) -> Result<(), ConfigError> {
    let http = &config.http;
    match http.net.as_str() {
        "unix" => {
            if http.addr.is_empty() {
                return Err(invalid(
                    "http.addr",
                    "a socket path is required with net: unix",
                ));
            }
        }
        "tcp" | "tcp4" | "tcp6" => {
            check_listen_addr(&http.addr).map_err(|m| invalid("http.addr", m))?;
        }
        other => {
            return Err(invalid(
                "http.net",
                format!("invalid value {other:?}: expected tcp, tcp4, tcp6 or unix"),
            ))
        }
    }
    if let Some(addr) = &http.debug.addr {
        check_listen_addr(addr).map_err(|m| invalid("http.debug.addr", m))?;
    }
    if let Some(host) = &http.host {
        check_absolute_url("http.host", host)?;
    }
    match (&http.tls.certificate, &http.tls.key) {
        (Some(_), None) => {
            return Err(invalid(
                "http.tls.key",
                "required when http.tls.certificate is set",
            ))
        }
        (None, Some(_)) => {
            return Err(invalid(
                "http.tls.certificate",
                "required when http.tls.key is set",
            ))
        }
        _ => {}
    }
    if let Some(min) = &http.tls.minimumtls {
        if !["tls1.0", "tls1.1", "tls1.2", "tls1.3"].contains(&min.as_str()) {
            return Err(invalid(
                "http.tls.minimumtls",
                format!("invalid value {min:?}: expected tls1.0, tls1.1, tls1.2 or tls1.3"),
            ));
        }
    }
    if let Some(mode) = &http.tls.clientauth {
        const MODES: &[&str] = &[
            "request-client-cert",
            "require-any-client-cert",
            "verify-client-cert-if-given",
            "require-and-verify-client-cert",
        ];
        if !MODES.contains(&mode.as_str()) {
            return Err(invalid(
                "http.tls.clientauth",
                format!(
                    "invalid value {mode:?}: expected one of {}",
                    MODES.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// Accepts Go listen addresses: `:5000`, `0.0.0.0:5000`, `[::]:5000`, `localhost:5000`.
pub(crate) fn check_listen_addr(addr: &str) -> Result<(), String> {
    const EXPECTED: &str =
        "expected host:port, e.g. :5000, 0.0.0.0:5000, [::]:5000 or localhost:5000";
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("invalid listen address {addr:?}: {EXPECTED}"));
    };
    if port.parse::<u16>().is_err() {
        return Err(format!(
            "invalid listen address {addr:?}: the port must be a number from 0 to 65535"
        ));
    }
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<Ipv6Addr>().is_ok())
    } else {
        host.is_empty()
            || host.parse::<Ipv4Addr>().is_ok()
            || (!host.contains(':')
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'))
    };
    if host_ok {
        Ok(())
    } else {
        Err(format!("invalid listen address {addr:?}: {EXPECTED}"))
    }
}

/// Remote registries with unique names, types and URLs; rules with unique names, each naming
/// exactly one known registry as its destination or its source, with valid globs.
fn check_replication(r: &super::Replication) -> Result<(), ConfigError> {
    let mut names = std::collections::BTreeSet::new();
    for (i, remote) in r.registries.iter().enumerate() {
        let at = format!("replication.registries[{i}]");
        if remote.name.trim().is_empty() {
            return Err(invalid(
                format!("{at}.name"),
                "must be set: rules name the registry",
            ));
        }
        if !names.insert(remote.name.as_str()) {
            return Err(invalid(
                format!("{at}.name"),
                format!("{:?} is used twice", remote.name),
            ));
        }
        if !matches!(remote.kind.as_str(), "harbor" | "docker-registry") {
            return Err(invalid(
                format!("{at}.type"),
                format!("{:?}: expected harbor or docker-registry", remote.kind),
            ));
        }
        check_absolute_url(&format!("{at}.url"), &remote.url)?;
    }
    let mut rules = std::collections::BTreeSet::new();
    for (i, rule) in r.rules.iter().enumerate() {
        let at = format!("replication.rules[{i}]");
        if rule.name.trim().is_empty() || rule.name.contains('/') {
            return Err(invalid(format!("{at}.name"), "must be set, without '/'"));
        }
        if !rules.insert(rule.name.as_str()) {
            return Err(invalid(
                format!("{at}.name"),
                format!("{:?} is used twice", rule.name),
            ));
        }
        let remote = match (&rule.destination, &rule.source) {
            (Some(d), None) => ("destination", d),
            (None, Some(s)) => ("source", s),
            _ => {
                return Err(invalid(
                    at,
                    "needs exactly one of destination (push replication) or source (pull)",
                ))
            }
        };
        if !names.contains(remote.1.as_str()) {
            return Err(invalid(
                format!("{at}.{}", remote.0),
                format!("{:?} is not a registry of replication.registries", remote.1),
            ));
        }
        for (key, globs) in [("repositories", &rule.repositories), ("tags", &rule.tags)] {
            for (j, g) in globs.iter().enumerate() {
                globset::GlobBuilder::new(g)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| invalid(format!("{at}.{key}[{j}]"), e.to_string()))?;
            }
        }
        if rule.source.is_some() && rule.interval.0.is_zero() {
            return Err(invalid(
                format!("{at}.interval"),
                "must be set for a pull rule: how often its source is listed (e.g. 5m)",
            ));
        }
    }
    Ok(())
}

fn check_absolute_url(path: &str, value: &str) -> Result<(), ConfigError> {
    match url::Url::parse(value) {
        Ok(url) if url.has_host() => Ok(()),
        Ok(_) => Err(invalid(
            path,
            format!("{value:?} is not an absolute URL with a host"),
        )),
        Err(e) => Err(invalid(
            path,
            format!("{value:?} is not an absolute URL ({e}); expected e.g. https://registry.example.com"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        for ok in [
            ":5000",
            "0.0.0.0:5000",
            "[::]:5000",
            "localhost:5000",
            "127.0.0.1:80",
            "[::1]:0",
        ] {
            assert!(check_listen_addr(ok).is_ok(), "{ok}");
        }
        for bad in [
            "5000",
            "localhost",
            ":http",
            "::5000",
            "[::1:5000",
            "host:70000",
            "a b:1",
            "",
        ] {
            assert!(check_listen_addr(bad).is_err(), "{bad}");
        }
    }
}
