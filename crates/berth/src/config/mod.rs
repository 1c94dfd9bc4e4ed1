//! Distribution-compatible configuration (`config.yml`, version 0.1) and `REGISTRY_*` overrides.
//!
//! Berth reads CNCF Distribution's configuration file unchanged. This module owns the whole path
//! from text to a checked, typed [`Config`]:
//!
//! 1. the YAML text becomes a value tree;
//! 2. `REGISTRY_*` environment variables edit that tree, named and typed as Distribution names and
//!    types them (`env.rs`);
//! 3. the tree is deserialized into [`Config`] (`schema.rs`); unknown keys become warnings that
//!    name their full path, bad values become a [`ConfigError`] that names the key (`de.rs`);
//! 4. cross-field checks run ([`validate`](Config::validate)).
//!
//! It also explains the result: [`render_effective`] prints the effective configuration with
//! secrets masked, and [`option_report`] says which of the options the user set Berth honours
//! (the table of implemented options is [`OPTION_TABLE`]).
//!
//! Invariants: a [`Config`] returned by [`load`] has passed validation — version `0.1`, exactly one
//! storage driver, at most one auth method, a parseable listen address, absolute URLs where URLs
//! are required. Loading does no I/O besides [`load_file`] reading its one file, never reads the
//! process environment itself (the caller passes it in), and never logs: warnings are returned to
//! the caller, who decides where they go.

mod de;
mod duration;
mod env;
mod net;
mod report;
mod schema;
mod validate;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

pub use duration::{DurationParseError, GoDuration};
pub use env::ENV_PREFIX;
pub use net::{IpRange, IpRangeParseError};
pub use report::{option_report, render_effective, OptionStatus, Status, MASK, OPTION_TABLE};
pub use schema::*;
pub use validate::SUPPORTED_VERSION;

/// Why a configuration could not be loaded. Every variant tells the user what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read configuration file {}: {source}", path.display())]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// The underlying I/O failure.
        source: std::io::Error,
    },
    /// The text is not YAML.
    #[error("configuration is not valid YAML: {0}")]
    Yaml(#[source] serde_yaml::Error),
    /// A key holds a value of the wrong type or an unacceptable value, or a required key is missing.
    #[error("{path}: {message}")]
    Invalid {
        /// Dotted key path, e.g. `storage.maintenance.uploadpurging.age` or
        /// `notifications.endpoints[0].url`; `configuration` for the document as a whole.
        path: String,
        /// What is wrong and what was expected.
        message: String,
    },
}

/// A loaded configuration and the warnings produced while loading it.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The validated configuration.
    pub config: Config,
    /// Problems that did not stop loading: unknown keys (`unknown configuration key http.adr`),
    /// environment variables that name no key. The caller should log each one.
    pub warnings: Vec<String>,
}

/// Loads a configuration from YAML text, applying the `REGISTRY_*` variables found in `env`
/// (other variables are ignored). Pass `std::env::vars()` to use the process environment.
///
/// ```
/// let loaded = berth::config::load(
///     "version: 0.1\nstorage: {filesystem: {rootdirectory: /data}}\n",
///     [("REGISTRY_HTTP_ADDR".to_string(), "127.0.0.1:5000".to_string())],
/// )
/// .unwrap();
/// assert_eq!(loaded.config.http.addr, "127.0.0.1:5000");
/// ```
pub fn load(
    yaml_text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, ConfigError> {
    let mut root: Value = serde_yaml::from_str(yaml_text).map_err(ConfigError::Yaml)?;
    match root {
        Value::Null => root = Value::Mapping(Mapping::new()),
        Value::Mapping(_) => {}
        _ => {
            return Err(ConfigError::Invalid {
                path: "configuration".to_owned(),
                message: "expected a mapping of keys at the top level".to_owned(),
            })
        }
    }

    let mut warnings = Vec::new();
    let reference =
        serde_yaml::to_value(Config::schema_reference()).map_err(|e| ConfigError::Invalid {
            path: "configuration".to_owned(),
            message: format!("internal error: the schema cannot be serialized: {e}"),
        })?;
    normalize_choices(&mut root);
    env::apply(&mut root, &reference, env, &mut warnings);
    normalize_choices(&mut root);
    strip_nulls(&mut root);
    validate::check_tree(&root)?;

    let log_level_written = root.get("log").and_then(|log| log.get("level")).is_some();
    let mut unknown = Vec::new();
    let mut config: Config =
        serde_ignored::deserialize(de::ValueDeserializer::root(&root), |path| {
            unknown.push(render_path(&path));
        })
        .map_err(|e| ConfigError::Invalid {
            path: e
                .path
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "configuration".to_owned()),
            message: e.message,
        })?;
    warnings.extend(
        unknown
            .into_iter()
            .map(|path| format!("unknown configuration key {path}")),
    );

    apply_derived_defaults(&mut config, log_level_written);
    config.validate()?;
    Ok(Loaded { config, warnings })
}

/// Reads `path` and [`load`]s it.
pub fn load_file(
    path: impl AsRef<Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, ConfigError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    load(&text, env)
}

impl Config {
    /// Checks what types alone cannot: version `0.1`, exactly one storage driver, at most one
    /// authentication method with its required settings, listen addresses, absolute URLs, TLS
    /// certificate and key set together. [`load`] runs this; call it on hand-built configurations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate::validate(self)
    }
}

/// Distribution resolves a few settings from others after parsing; do the same.
fn apply_derived_defaults(config: &mut Config, log_level_written: bool) {
    // The deprecated top-level `loglevel` counts only when `log.level` is absent.
    if let Some(level) = config.loglevel.take() {
        if !log_level_written {
            config.log.level = level;
        }
    }
    if config.catalog.maxentries <= 0 {
        config.catalog.maxentries = Catalog::default().maxentries;
    }
    if config.tags.maxtags == 0 {
        config.tags.maxtags = Tags::default().maxtags;
    }
    if config.http.net.is_empty() {
        config.http.net = Http::default().net;
    }
    if config.http.addr.is_empty() && config.http.net != "unix" {
        config.http.addr = Http::default().addr;
    }
}

/// `storage` and `auth` may name their choice as a bare string (`storage: inmemory`) or with an
/// empty value (`inmemory:`); both mean "this driver, no parameters". Rewrite them as empty maps so
/// that the choice survives null stripping and deserializes as present.
fn normalize_choices(root: &mut Value) {
    let Value::Mapping(root) = root else { return };
    for section in ["storage", "auth"] {
        let Some(value) = root.get_mut(section) else {
            continue;
        };
        match value {
            Value::String(name) => {
                let mut map = Mapping::new();
                map.insert(Value::String(name.clone()), Value::Mapping(Mapping::new()));
                *value = Value::Mapping(map);
            }
            Value::Mapping(map) => {
                for (key, param) in map.iter_mut() {
                    let is_section = section == "storage"
                        && key.as_str().is_some_and(|k| STORAGE_SECTIONS.contains(&k));
                    if param.is_null() && !is_section {
                        *param = Value::Mapping(Mapping::new());
                    }
                }
            }
            _ => {}
        }
    }
}

/// Drops `key: null` entries everywhere: an empty value means "use the default", as in Go.
fn strip_nulls(value: &mut Value) {
    match value {
        Value::Mapping(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Sequence(items) => items.iter_mut().for_each(strip_nulls),
        Value::Tagged(tagged) => strip_nulls(&mut tagged.value),
        _ => {}
    }
}

/// `serde_ignored`'s path in this module's notation: `notifications.endpoints[0].url`.
fn render_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => de::join_index(&render_path(parent), *index),
        P::Map { parent, key } => de::join_key(&render_path(parent), key),
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            render_path(parent)
        }
    }
}
