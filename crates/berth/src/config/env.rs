//! `REGISTRY_*` environment overrides, resolved the way Distribution resolves them.
//!
//! A variable name is split on `_` after the `REGISTRY_` prefix; each part names a key one level
//! deeper (`REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY` → `storage.filesystem.rootdirectory`). Parts
//! are matched case-insensitively against the schema's keys, plus the Go field names Distribution
//! uses where they differ from the YAML key (`TRUSTKEY` for `signingkeyfile`, ...). The value is
//! parsed as YAML, so `true`, `5`, `300s` and `[a, b]` get their natural types, and it replaces the
//! node it names wholesale: `REGISTRY_STORAGE=s3` replaces the entire `storage` section, exactly as
//! Distribution does. Inside free-form maps (driver parameters, `log.fields`, `http.headers`) new
//! keys are created in lower case; inside lists a numeric part selects an element, and the index
//! one past the end appends.
//!
//! Variables are applied in lexical order of their names, so a section (`REGISTRY_STORAGE`) is set
//! before the keys inside it (`REGISTRY_STORAGE_S3_BUCKET`). A name that matches no key produces a
//! warning and is skipped (a Kubernetes service called `registry` injects `REGISTRY_PORT` and the
//! like); a value that is not valid YAML is used as a plain string, with a warning.
//!
//! This module edits the YAML value tree only; it never looks at the typed [`Config`](super::Config).

use serde_yaml::{Mapping, Value};

use super::de::{join_index, join_key, scalar_text};
use super::schema::STORAGE_SECTIONS;

/// Prefix of the variables that override configuration keys.
pub const ENV_PREFIX: &str = "REGISTRY_";

/// Go field names Distribution matches that differ from the YAML key: (parent key path with list
/// indices written `[]`, Go name in lower case, YAML key).
const GO_FIELD_ALIASES: &[(&str, &str, &str)] = &[
    ("compatibility.schema1", "trustkey", "signingkeyfile"),
    ("notifications", "eventconfig", "events"),
    ("health", "filecheckers", "file"),
    ("health", "httpcheckers", "http"),
    ("health", "tcpcheckers", "tcp"),
    ("log.hooks[]", "mailoptions", "options"),
];

/// What a reference node says about the keys below it.
enum Shape<'r> {
    /// A struct: only these keys exist.
    Struct(&'r Mapping),
    /// A map with keys chosen by the user.
    Free,
    /// A list; the reference element, when the schema knows it.
    List(Option<&'r Value>),
    /// A single value: nothing below it.
    Leaf,
}

fn shape(reference: Option<&Value>) -> Shape<'_> {
    match reference {
        None => Shape::Free,
        Some(Value::Mapping(m)) if m.is_empty() => Shape::Free,
        Some(Value::Mapping(m)) => Shape::Struct(m),
        Some(Value::Sequence(items)) => Shape::List(items.first()),
        Some(Value::Tagged(t)) => shape(Some(&t.value)),
        Some(_) => Shape::Leaf,
    }
}

/// Where the walk is: the key path shown to users and the schema path used for alias lookup.
struct Position {
    key_path: String,
    schema_path: String,
}

/// Applies every `REGISTRY_*` variable of `env` to `root`, walking `reference` (the serialized
/// [`Config::schema_reference`](super::Config::schema_reference)) to resolve names.
pub(crate) fn apply(
    root: &mut Value,
    reference: &Value,
    env: impl IntoIterator<Item = (String, String)>,
    warnings: &mut Vec<String>,
) {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    for (name, raw) in vars {
        let parts: Vec<&str> = name[ENV_PREFIX.len()..].split('_').collect();
        if parts.len() == 1 && parts[0].eq_ignore_ascii_case("version") {
            warnings.push(format!(
                "ignoring environment variable {name}: the configuration version cannot be overridden"
            ));
            continue;
        }
        let payload = match serde_yaml::from_str::<Value>(&raw) {
            Ok(value) => value,
            Err(_) => {
                warnings.push(format!(
                    "environment variable {name}: value is not valid YAML, using it as a plain string"
                ));
                Value::String(raw.clone())
            }
        };
        if parts.len() == 1 && parts[0].eq_ignore_ascii_case("storage") {
            warn_storage_replacement(root, &name, warnings);
        }
        let start = Position {
            key_path: String::new(),
            schema_path: String::new(),
        };
        // Work on a copy so that a name that fails half-way leaves no empty sections behind.
        let mut candidate = root.clone();
        match set(&mut candidate, Some(reference), &parts, start, payload) {
            Ok(()) => *root = candidate,
            Err(reason) => {
                warnings.push(format!("ignoring environment variable {name}: {reason}"));
            }
        }
    }
}

/// Sets the node named by `parts` below `target` to `payload`.
fn set(
    target: &mut Value,
    reference: Option<&Value>,
    parts: &[&str],
    at: Position,
    payload: Value,
) -> Result<(), String> {
    let Some((&part, rest)) = parts.split_first() else {
        *target = payload;
        return Ok(());
    };
    match shape(reference) {
        Shape::Struct(fields) => {
            let Some((key, child_ref)) = struct_field(fields, &at.schema_path, part) else {
                return Err(if at.key_path.is_empty() {
                    format!(
                        "there is no configuration key {:?}",
                        part.to_ascii_lowercase()
                    )
                } else {
                    format!("{} has no key {:?}", at.key_path, part.to_ascii_lowercase())
                });
            };
            let map = as_mapping(target);
            let next = Position {
                key_path: join_key(&at.key_path, &key),
                schema_path: join_key(&at.schema_path, &key),
            };
            let child = map.entry(Value::String(key)).or_insert(Value::Null);
            set(child, Some(child_ref), rest, next, payload)
        }
        Shape::Free => {
            if !matches!(target, Value::Mapping(_) | Value::Null) && !rest.is_empty() {
                return Err(format!("{} is a single value", at.key_path));
            }
            let map = as_mapping(target);
            let existing = map
                .iter()
                .find(|(k, _)| scalar_text(k).is_some_and(|k| k.eq_ignore_ascii_case(part)))
                .map(|(k, _)| k.clone());
            let key = existing.unwrap_or_else(|| Value::String(part.to_ascii_lowercase()));
            let key_text = scalar_text(&key).unwrap_or_default();
            let next = Position {
                key_path: join_key(&at.key_path, &key_text),
                schema_path: join_key(&at.schema_path, &key_text),
            };
            let child = map.entry(key).or_insert(Value::Null);
            if !rest.is_empty() && !matches!(child, Value::Mapping(_) | Value::Null) {
                return Err(format!("{} is a single value", next.key_path));
            }
            set(child, None, rest, next, payload)
        }
        Shape::List(element_ref) => {
            let index: usize = part.parse().map_err(|_| {
                format!(
                    "{} is a list; expected a numeric index, found {part:?}",
                    at.key_path
                )
            })?;
            if matches!(target, Value::Null) {
                *target = Value::Sequence(Vec::new());
            }
            let Value::Sequence(items) = target else {
                return Err(format!(
                    "{} is not a list in the configuration file",
                    at.key_path
                ));
            };
            if index > items.len() {
                return Err(format!(
                    "{} has {} entries; index {index} would leave a gap",
                    at.key_path,
                    items.len()
                ));
            }
            if index == items.len() {
                items.push(Value::Null);
            }
            let next = Position {
                key_path: join_index(&at.key_path, index),
                schema_path: format!("{}[]", at.schema_path),
            };
            let child_shape = match element_ref {
                Some(element) => Some(element),
                // A list of plain values: its elements are leaves.
                None => Some(&Value::Null),
            };
            set(&mut items[index], child_shape, rest, next, payload)
        }
        Shape::Leaf => Err(format!(
            "{} takes a single value and has no key {:?}",
            at.key_path,
            part.to_ascii_lowercase()
        )),
    }
}

/// Finds the struct key named by an environment part, returning the key and its reference node.
fn struct_field<'r>(
    fields: &'r Mapping,
    schema_path: &str,
    part: &str,
) -> Option<(String, &'r Value)> {
    let direct = fields.iter().find_map(|(k, v)| {
        let k = k.as_str()?;
        k.eq_ignore_ascii_case(part).then(|| (k.to_owned(), v))
    });
    direct.or_else(|| {
        GO_FIELD_ALIASES
            .iter()
            .find(|(parent, go_name, _)| {
                *parent == schema_path && go_name.eq_ignore_ascii_case(part)
            })
            .and_then(|(_, _, key)| fields.get(*key).map(|v| ((*key).to_owned(), v)))
    })
}

/// Turns `value` into a mapping (replacing whatever it held) and returns it.
fn as_mapping(value: &mut Value) -> &mut Mapping {
    if !matches!(value, Value::Mapping(_)) {
        *value = Value::Mapping(Mapping::new());
    }
    match value {
        Value::Mapping(map) => map,
        _ => unreachable!("value was just made a mapping"),
    }
}

/// `REGISTRY_STORAGE` replaces the whole storage section, as in Distribution; say what is lost.
fn warn_storage_replacement(root: &Value, name: &str, warnings: &mut Vec<String>) {
    let Some(Value::Mapping(storage)) = root.get("storage") else {
        return;
    };
    let dropped: Vec<String> = storage
        .keys()
        .filter_map(Value::as_str)
        .filter(|k| STORAGE_SECTIONS.contains(k))
        .map(|k| format!("storage.{k}"))
        .collect();
    if !dropped.is_empty() {
        warnings.push(format!(
            "environment variable {name} replaces the whole storage section, as in Distribution; \
             {} from the configuration file no longer apply",
            dropped.join(", ")
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn reference() -> Value {
        serde_yaml::to_value(Config::schema_reference()).expect("reference serializes")
    }

    fn run(yaml: &str, env: &[(&str, &str)]) -> (Value, Vec<String>) {
        let mut root: Value = serde_yaml::from_str(yaml).expect("test YAML parses");
        let mut warnings = Vec::new();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        apply(&mut root, &reference(), env, &mut warnings);
        (root, warnings)
    }

    fn at<'v>(root: &'v Value, path: &[&str]) -> &'v Value {
        path.iter().fold(root, |v, k| {
            v.get(*k).unwrap_or_else(|| panic!("no {k} in {v:?}"))
        })
    }

    #[test]
    fn nested_keys_and_types() {
        let (root, warnings) = run(
            "http: {addr: ':5000'}",
            &[
                ("REGISTRY_HTTP_ADDR", "127.0.0.1:6000"),
                ("REGISTRY_STORAGE_DELETE_ENABLED", "true"),
                ("REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_AGE", "300s"),
                ("REGISTRY_NOTIFICATIONS_ENDPOINTS_0_THRESHOLD", "5"),
                ("REGISTRY_LOG_FIELDS_SERVICE", "registry"),
                ("PATH", "/usr/bin"),
            ],
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(at(&root, &["http", "addr"]), &Value::from("127.0.0.1:6000"));
        assert_eq!(
            at(&root, &["storage", "delete", "enabled"]),
            &Value::Bool(true)
        );
        assert_eq!(
            at(&root, &["storage", "maintenance", "uploadpurging", "age"]),
            &Value::from("300s")
        );
        assert_eq!(
            root["notifications"]["endpoints"][0]["threshold"],
            Value::from(5)
        );
        assert_eq!(
            at(&root, &["log", "fields", "service"]),
            &Value::from("registry")
        );
    }

    #[test]
    fn section_variable_replaces_section_first() {
        let (root, warnings) = run(
            "storage: {filesystem: {rootdirectory: /x}, delete: {enabled: true}}",
            &[
                ("REGISTRY_STORAGE_S3_BUCKET", "b"),
                ("REGISTRY_STORAGE", "s3"),
            ],
        );
        // Sorted: REGISTRY_STORAGE applies first, then the bucket lands inside the new section.
        assert_eq!(root["storage"]["s3"]["bucket"], Value::from("b"));
        assert!(root["storage"].get("filesystem").is_none());
        assert!(
            warnings.iter().any(|w| w.contains("storage.delete")),
            "{warnings:?}"
        );
    }

    #[test]
    fn go_field_names_and_unknown_names() {
        let (root, warnings) = run(
            "",
            &[
                ("REGISTRY_COMPATIBILITY_SCHEMA1_TRUSTKEY", "/k.pem"),
                ("REGISTRY_PORT_5000_TCP", "tcp://10.0.0.1:5000"),
                ("REGISTRY_HTTP_ADDR_X", "1"),
            ],
        );
        assert_eq!(
            root["compatibility"]["schema1"]["signingkeyfile"],
            Value::from("/k.pem")
        );
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("REGISTRY_HTTP_ADDR_X"), "{warnings:?}");
        assert!(
            warnings[1].contains("REGISTRY_PORT_5000_TCP"),
            "{warnings:?}"
        );
    }

    #[test]
    fn a_rejected_name_leaves_no_trace() {
        let (root, warnings) = run(
            "storage: {filesystem: {rootdirectory: /x}}",
            &[
                ("REGISTRY_STORAGE_S3_FROB", "1"),
                ("REGISTRY_STORAGE_CEPH_POOL", "p"),
            ],
        );
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(root["storage"].get("s3").is_none(), "{root:?}");
        assert!(root["storage"].get("ceph").is_none(), "{root:?}");
    }

    #[test]
    fn lists_take_whole_values_or_indices() {
        let (root, warnings) = run(
            "notifications: {endpoints: [{name: a, url: 'http://a/'}]}",
            &[
                ("REGISTRY_NOTIFICATIONS_ENDPOINTS_1_URL", "http://b/"),
                ("REGISTRY_HTTP_TLS_CLIENTCAS_0", "/ca.pem"),
                ("REGISTRY_HTTP_TLS_CLIENTCAS_5", "/gap.pem"),
            ],
        );
        assert_eq!(
            root["notifications"]["endpoints"][1]["url"],
            Value::from("http://b/")
        );
        assert_eq!(root["http"]["tls"]["clientcas"][0], Value::from("/ca.pem"));
        assert_eq!(warnings.len(), 1, "{warnings:?}");

        let (root, _) = run(
            "",
            &[(
                "REGISTRY_NOTIFICATIONS_ENDPOINTS",
                r#"[{"name": "x", "url": "http://x/"}]"#,
            )],
        );
        assert_eq!(
            root["notifications"]["endpoints"][0]["name"],
            Value::from("x")
        );
    }
}
