//! Access scopes (`repository:samalba/my-app:pull,push`, `registry:catalog:*`) and the identity a
//! verified credential grants.
//!
//! Owns: parsing and formatting of the Docker token spec scope grammar, and the one rule deciding
//! whether granted access covers needed access ([`Identity::allows`]).
//! Invariants: a parsed [`Scope`] has a non-empty kind, a non-empty name and at least one
//! non-empty action; matching compares kind and name exactly (no globbing: a granted name `*` is
//! a repository called `*`, as in Distribution), only the action `*` is a wildcard.

use std::fmt;

/// One resource and the actions wanted on it, or granted on it.
///
/// `kind` is the resource type (`repository`, `registry`); a class written in the scope string
/// (`repository(plugin):name:pull`) is dropped, as Distribution ignores it when matching.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Scope {
    /// Resource type: `repository` or `registry` (others are kept as written).
    pub kind: String,
    /// Resource name: a repository name (may carry a `host:port/` prefix), or `catalog`.
    pub name: String,
    /// Actions (`pull`, `push`, `delete`, `*`), in the order given.
    pub actions: Vec<String>,
}

/// Why a scope string could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid scope {scope:?}: expected type:name:action[,action...]")]
pub struct ScopeParseError {
    /// The offending text.
    pub scope: String,
}

impl Scope {
    /// A scope with the given kind, name and actions.
    pub fn new(kind: &str, name: &str, actions: &[&str]) -> Scope {
        Scope {
            kind: kind.to_string(),
            name: name.to_string(),
            actions: actions.iter().map(|a| a.to_string()).collect(),
        }
    }

    /// `repository:<name>:<actions>`.
    pub fn repository(name: &str, actions: &[&str]) -> Scope {
        Scope::new("repository", name, actions)
    }

    /// `registry:catalog:*`, the scope Distribution asks for on `/v2/_catalog`.
    pub fn catalog() -> Scope {
        Scope::new("registry", "catalog", &["*"])
    }

    /// Parse `type[(class)]:name:action[,action...]`.
    ///
    /// The type ends at the first `:` and the actions start after the last one, so a name may
    /// itself hold colons (`repository:localhost:5000/foo:pull`).
    pub fn parse(s: &str) -> Result<Scope, ScopeParseError> {
        let err = || ScopeParseError {
            scope: s.to_string(),
        };
        let (kind, rest) = s.split_once(':').ok_or_else(err)?;
        let (name, actions) = rest.rsplit_once(':').ok_or_else(err)?;
        let kind = match kind.split_once('(') {
            Some((k, class)) if class.ends_with(')') => k,
            Some(_) => return Err(err()),
            None => kind,
        };
        let actions: Vec<String> = actions.split(',').map(str::to_string).collect();
        if kind.is_empty() || name.is_empty() || actions.iter().any(String::is_empty) {
            return Err(err());
        }
        Ok(Scope {
            kind: kind.to_string(),
            name: name.to_string(),
            actions,
        })
    }

    /// Parse a space-separated list of scopes (the `scope` parameter of a challenge).
    pub fn parse_list(s: &str) -> Result<Vec<Scope>, ScopeParseError> {
        s.split_whitespace().map(Scope::parse).collect()
    }

    /// Format a list of scopes as one `scope` parameter value: scopes on the same resource are
    /// merged (actions deduplicated, first-seen order), resources are separated by one space.
    pub fn format_list(scopes: &[Scope]) -> String {
        merge(scopes)
            .iter()
            .map(Scope::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl fmt::Display for Scope {
    /// `kind:name:action1,action2`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.kind, self.name, self.actions.join(","))
    }
}

impl std::str::FromStr for Scope {
    type Err = ScopeParseError;
    fn from_str(s: &str) -> Result<Scope, ScopeParseError> {
        Scope::parse(s)
    }
}

/// Merge scopes on the same (kind, name), keeping first-seen order of resources and actions.
pub(crate) fn merge(scopes: &[Scope]) -> Vec<Scope> {
    let mut out: Vec<Scope> = Vec::new();
    for s in scopes {
        let slot = match out
            .iter_mut()
            .find(|o| o.kind == s.kind && o.name == s.name)
        {
            Some(slot) => slot,
            None => {
                out.push(Scope {
                    kind: s.kind.clone(),
                    name: s.name.clone(),
                    actions: Vec::new(),
                });
                let last = out.len() - 1;
                &mut out[last]
            }
        };
        for a in &s.actions {
            if !slot.actions.contains(a) {
                slot.actions.push(a.clone());
            }
        }
    }
    out
}

/// Who a verified credential belongs to and what it may do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// The subject: the token's `sub` claim, the htpasswd user name, or `silly`.
    pub subject: String,
    /// Granted access (the token's `access` claim). Ignored when `unrestricted`.
    pub access: Vec<Scope>,
    /// Everything is allowed (htpasswd and silly authentication grant all access to any
    /// authenticated user, as Distribution does).
    pub unrestricted: bool,
    /// When the token was issued (its `iat`), if it says.
    pub issued_at: Option<i64>,
    /// The id each project had when access in it was granted (Berth's own tokens; 0: the
    /// project did not exist).
    pub projects: std::collections::BTreeMap<String, i64>,
    /// The groups of the account at login (Berth's refresh tokens).
    pub groups: Vec<i64>,
}

impl Identity {
    /// An identity allowed to do anything.
    pub fn unrestricted(subject: &str) -> Identity {
        Identity {
            subject: subject.to_string(),
            access: Vec::new(),
            unrestricted: true,
            issued_at: None,
            projects: Default::default(),
            groups: Vec::new(),
        }
    }

    /// Whether every action of `needed` is granted on its kind and name. An entry granting the
    /// action `*` grants every action on that resource. Grants on several entries for the same
    /// resource add up.
    pub fn allows(&self, needed: &Scope) -> bool {
        if self.unrestricted {
            return true;
        }
        let granted = |action: &str| {
            self.access.iter().any(|g| {
                g.kind == needed.kind
                    && g.name == needed.name
                    && g.actions.iter().any(|a| a == "*" || a == action)
            })
        };
        needed.actions.iter().all(|a| granted(a))
    }

    /// Whether every scope of `needed` is allowed.
    pub fn allows_all(&self, needed: &[Scope]) -> bool {
        needed.iter().all(|s| self.allows(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_format() {
        let s = Scope::parse("repository:samalba/my-app:pull,push").unwrap();
        assert_eq!(s, Scope::repository("samalba/my-app", &["pull", "push"]));
        assert_eq!(s.to_string(), "repository:samalba/my-app:pull,push");
        let c = Scope::parse("registry:catalog:*").unwrap();
        assert_eq!(c, Scope::catalog());
        assert_eq!(c.to_string(), "registry:catalog:*");
        let h = Scope::parse("repository:localhost:5000/foo/bar:pull").unwrap();
        assert_eq!(h.name, "localhost:5000/foo/bar");
        assert_eq!(h.actions, vec!["pull"]);
        let p = Scope::parse("repository(plugin):foo:pull").unwrap();
        assert_eq!(p.kind, "repository");
    }

    #[test]
    fn parse_rejects() {
        for bad in [
            "",
            "repository",
            "repository:foo",
            ":foo:pull",
            "repository::pull",
            "repository:foo:",
            "repository:foo:pull,,push",
            "repository(x:foo:pull",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn list_merges() {
        let l = Scope::parse_list("repository:a:pull repository:b:push repository:a:push,pull")
            .unwrap();
        assert_eq!(
            Scope::format_list(&l),
            "repository:a:pull,push repository:b:push"
        );
    }

    #[test]
    fn allows() {
        let id = Identity {
            subject: "u".into(),
            access: vec![
                Scope::repository("foo", &["pull"]),
                Scope::repository("foo", &["push"]),
                Scope::repository("bar", &["*"]),
                Scope::catalog(),
            ],
            unrestricted: false,
            ..Identity::default()
        };
        assert!(id.allows(&Scope::repository("foo", &["pull", "push"])));
        assert!(!id.allows(&Scope::repository("foo", &["delete"])));
        assert!(id.allows(&Scope::repository("bar", &["delete", "pull"])));
        assert!(!id.allows(&Scope::repository("baz", &["pull"])));
        assert!(!id.allows(&Scope::new("registry", "foo", &["pull"])));
        assert!(id.allows(&Scope::catalog()));
        assert!(Identity::unrestricted("x").allows(&Scope::catalog()));
        let star_name = Identity {
            subject: "u".into(),
            access: vec![Scope::repository("*", &["*"])],
            unrestricted: false,
            ..Identity::default()
        };
        assert!(!star_name.allows(&Scope::repository("foo", &["pull"])));
    }
}
