//! A serde `Deserializer` over a `serde_yaml::Value` tree that knows where it is.
//!
//! The configuration is assembled as a YAML value tree (file, then environment overrides) before it
//! becomes a typed [`Config`](super::Config). Deserializing that tree with this type instead of
//! `serde_yaml::from_value` buys two things:
//!
//! - every error carries the dotted key path it happened at (`storage.maintenance.uploadpurging.age`),
//!   attached by the innermost deserializer that saw it;
//! - scalars are read the way Distribution's Go YAML decoder reads them: any scalar can fill a string
//!   field (`secret: 12345`, `version: 0.1`), and quoted `"true"` / `"5"` fill booleans and integers
//!   (Distribution's drivers accept those too).
//!
//! Unknown keys are not handled here: the caller wraps this deserializer in `serde_ignored`.
//! Invariant: every error leaving this deserializer carries the path of the innermost node that
//! produced it; a configuration section written as a list or a scalar is a type error, never read
//! positionally.

use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::forward_to_deserialize_any;
use serde_yaml::Value;

/// A deserialization failure and the key path it happened at.
#[derive(Debug)]
pub(crate) struct DeError {
    /// Dotted key path (`http.tls.key`, `notifications.endpoints[0].url`); `None` until the
    /// deserializer that produced the failure attaches its position.
    pub(crate) path: Option<String>,
    /// What went wrong, in serde's or the field type's words.
    pub(crate) message: String,
}

impl DeError {
    fn at(mut self, path: &str) -> Self {
        if self.path.is_none() {
            self.path = Some(path.to_owned());
        }
        self
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(path) if !path.is_empty() => write!(f, "{path}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            path: None,
            message: msg.to_string(),
        }
    }
}

/// Joins a parent path and a mapping key: `""` + `http` → `http`, `http` + `addr` → `http.addr`.
pub(crate) fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// Joins a parent path and a sequence index: `notifications.endpoints` + 0 → `…endpoints[0]`.
pub(crate) fn join_index(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

/// The text a scalar mapping key or scalar value stands for, if it is a scalar.
pub(crate) fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Tagged(t) => scalar_text(&t.value),
        Value::Null | Value::Sequence(_) | Value::Mapping(_) => None,
    }
}

/// How a value is described in error messages.
fn kind(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("boolean `{b}`"),
        Value::Number(n) => format!("number `{n}`"),
        Value::String(s) => format!("string {s:?}"),
        Value::Sequence(_) => "list".to_owned(),
        Value::Mapping(_) => "mapping".to_owned(),
        Value::Tagged(t) => kind(&t.value),
    }
}

/// Go's `strconv.ParseBool` spellings, which Distribution's drivers accept for booleans.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Deserializes one node of the value tree; `path` names the node.
pub(crate) struct ValueDeserializer<'de> {
    value: &'de Value,
    path: String,
}

impl<'de> ValueDeserializer<'de> {
    /// A deserializer for the whole tree (path `""`).
    pub(crate) fn root(value: &'de Value) -> Self {
        ValueDeserializer {
            value,
            path: String::new(),
        }
    }

    fn integer<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if let Value::String(s) = self.value {
            let s = s.trim();
            if let Ok(u) = s.parse::<u64>() {
                return visitor
                    .visit_u64::<DeError>(u)
                    .map_err(|e| e.at(&self.path));
            }
            if let Ok(i) = s.parse::<i64>() {
                return visitor
                    .visit_i64::<DeError>(i)
                    .map_err(|e| e.at(&self.path));
            }
        }
        self.deserialize_any_inner(visitor)
    }

    fn deserialize_any_inner<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let path = self.path;
        let result = match self.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    visitor.visit_u64(u)
                } else if let Some(i) = n.as_i64() {
                    visitor.visit_i64(i)
                } else {
                    visitor.visit_f64(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(s) => visitor.visit_borrowed_str(s),
            Value::Sequence(items) => visitor.visit_seq(SeqAccess {
                items: items.iter().enumerate(),
                parent: &path,
            }),
            Value::Mapping(map) => visitor.visit_map(MapAccess {
                entries: Some(map.iter()),
                pending: None,
                parent: &path,
            }),
            Value::Tagged(tagged) => {
                // Tags (`!foo value`) carry no meaning in Distribution's schema; read the value.
                return ValueDeserializer {
                    value: &tagged.value,
                    path,
                }
                .deserialize_any_inner(visitor);
            }
        };
        result.map_err(|e| e.at(&path))
    }
}

impl<'de> de::Deserializer<'de> for ValueDeserializer<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_any_inner(visitor)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if let Value::String(s) = self.value {
            if let Some(b) = parse_bool(s.trim()) {
                return visitor
                    .visit_bool::<DeError>(b)
                    .map_err(|e| e.at(&self.path));
            }
        }
        self.deserialize_any_inner(visitor)
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.integer(visitor)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.integer(visitor)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.integer(visitor)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.integer(visitor)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.integer(visitor)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.integer(visitor)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.integer(visitor)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.integer(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.value {
            Value::Bool(_) | Value::Number(_) => {
                let text = scalar_text(self.value).unwrap_or_default();
                visitor
                    .visit_string::<DeError>(text)
                    .map_err(|e| e.at(&self.path))
            }
            _ => self.deserialize_any_inner(visitor),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.value {
            Value::Null => visitor
                .visit_none::<DeError>()
                .map_err(|e| e.at(&self.path)),
            _ => {
                let path = self.path.clone();
                visitor.visit_some(self).map_err(|e| e.at(&path))
            }
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let path = self.path.clone();
        visitor.visit_newtype_struct(self).map_err(|e| e.at(&path))
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if matches!(self.value, Value::Null) {
            // `key:` with nothing after it reads as an empty section, as in Go.
            return visitor
                .visit_map(MapAccess {
                    entries: None,
                    pending: None,
                    parent: &self.path,
                })
                .map_err(|e| e.at(&self.path));
        }
        self.deserialize_any_inner(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        // serde's derived structs would also take a list of fields in order; a configuration
        // section written as a list is a mistake, not a positional form.
        match self.value {
            Value::Sequence(_) | Value::String(_) | Value::Number(_) | Value::Bool(_) => {
                Err(DeError {
                    path: Some(self.path),
                    message: format!(
                        "invalid type: {}, expected a mapping of keys",
                        kind(self.value)
                    ),
                })
            }
            _ => self.deserialize_map(visitor),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        // Only unit variants written as a plain string are used by the schema.
        match scalar_text(self.value) {
            Some(text) => visitor
                .visit_enum(IntoDeserializer::<DeError>::into_deserializer(text))
                .map_err(|e| e.at(&self.path)),
            None => Err(DeError {
                path: Some(self.path),
                message: "expected a string".to_owned(),
            }),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    forward_to_deserialize_any! {
        i128 u128 f32 f64 char bytes byte_buf unit unit_struct seq tuple tuple_struct identifier
    }
}

struct SeqAccess<'de, 'p> {
    items: std::iter::Enumerate<std::slice::Iter<'de, Value>>,
    parent: &'p str,
}

impl<'de> de::SeqAccess<'de> for SeqAccess<'de, '_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.items.next() {
            None => Ok(None),
            Some((index, value)) => {
                let path = join_index(self.parent, index);
                // Attach the path here too: a `Deserialize` impl may reject a value after the
                // deserializer has returned it (e.g. an unknown log level read as a string).
                seed.deserialize(ValueDeserializer {
                    value,
                    path: path.clone(),
                })
                .map(Some)
                .map_err(|e| e.at(&path))
            }
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapAccess<'de, 'p> {
    /// `None` reads as an empty mapping.
    entries: Option<serde_yaml::mapping::Iter<'de>>,
    pending: Option<(String, &'de Value)>,
    parent: &'p str,
}

impl<'de> de::MapAccess<'de> for MapAccess<'de, '_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some((key, value)) = self.entries.as_mut().and_then(Iterator::next) else {
            return Ok(None);
        };
        let Some(key) = scalar_text(key) else {
            return Err(DeError {
                path: Some(self.parent.to_owned()),
                message: "mapping keys must be plain strings".to_owned(),
            });
        };
        self.pending = Some((key.clone(), value));
        seed.deserialize(IntoDeserializer::<DeError>::into_deserializer(key))
            .map(Some)
            .map_err(|e| e.at(self.parent))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let Some((key, value)) = self.pending.take() else {
            return Err(DeError {
                path: Some(self.parent.to_owned()),
                message: "internal error: value requested before its key".to_owned(),
            });
        };
        let path = join_key(self.parent, &key);
        seed.deserialize(ValueDeserializer {
            value,
            path: path.clone(),
        })
        .map_err(|e| e.at(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default)]
    struct Inner {
        flag: bool,
        count: u32,
        name: String,
        list: Vec<u8>,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default)]
    struct Outer {
        inner: Inner,
        items: Vec<Inner>,
    }

    fn read(yaml: &str) -> Result<Outer, DeError> {
        let value: Value = serde_yaml::from_str(yaml).expect("test YAML parses");
        Outer::deserialize(ValueDeserializer::root(&value))
    }

    #[test]
    fn scalars_are_read_leniently() {
        let got = read("inner: {flag: 'true', count: '7', name: 12345}").expect("reads");
        assert_eq!(
            got.inner,
            Inner {
                flag: true,
                count: 7,
                name: "12345".into(),
                list: vec![]
            }
        );
    }

    #[test]
    fn errors_name_the_key_path() {
        let err = read("inner: {count: lots}").unwrap_err();
        assert_eq!(err.path.as_deref(), Some("inner.count"));
        let err = read("items: [{}, {list: [1, x]}]").unwrap_err();
        assert_eq!(err.path.as_deref(), Some("items[1].list[1]"));
        let err = read("inner: [1]").unwrap_err();
        assert_eq!(err.path.as_deref(), Some("inner"));
    }
}
