//! Who may do what: Harbor's project roles, robot permissions, and the typed actions on a
//! repository that tokens grant.
//!
//! Owns: the role table (which repository actions each role has) and the reading of a robot's
//! v2 permission list. Invariants: an unknown role id or permission grants nothing; a robot's
//! permissions count only in the namespaces they name (`*` is every project, and only a
//! system-level robot may name it).

use std::fmt;

/// An action on a repository, as the Docker token spec names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Pull, Action::Push, Action::Delete];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    /// The actions a scope's action word stands for (`*` is all of them); none if unknown.
    pub fn parse(word: &str) -> &'static [Action] {
        match word {
            "pull" => &[Action::Pull],
            "push" => &[Action::Push],
            "delete" => &[Action::Delete],
            "*" => &Action::ALL,
            _ => &[],
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Harbor's project roles, with Harbor's ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    ProjectAdmin = 1,
    Developer = 2,
    Guest = 3,
    Maintainer = 4,
    LimitedGuest = 5,
}

impl Role {
    pub fn from_id(id: i64) -> Option<Role> {
        Some(match id {
            1 => Role::ProjectAdmin,
            2 => Role::Developer,
            3 => Role::Guest,
            4 => Role::Maintainer,
            5 => Role::LimitedGuest,
            _ => return None,
        })
    }

    pub fn id(self) -> i64 {
        self as i64
    }

    /// Harbor's name of the role (`projectAdmin`, `developer`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Role::ProjectAdmin => "projectAdmin",
            Role::Developer => "developer",
            Role::Guest => "guest",
            Role::Maintainer => "maintainer",
            Role::LimitedGuest => "limitedGuest",
        }
    }

    pub fn from_name(name: &str) -> Option<Role> {
        [
            Role::ProjectAdmin,
            Role::Developer,
            Role::Guest,
            Role::Maintainer,
            Role::LimitedGuest,
        ]
        .into_iter()
        .find(|r| r.name().eq_ignore_ascii_case(name) || r.id().to_string() == name)
    }

    /// What the role may do to the project's repositories: admins and maintainers pull, push
    /// and delete; developers pull and push; guests and limited guests only pull.
    pub fn actions(self) -> &'static [Action] {
        match self {
            Role::ProjectAdmin | Role::Maintainer => &Action::ALL,
            Role::Developer => &[Action::Pull, Action::Push],
            Role::Guest | Role::LimitedGuest => &[Action::Pull],
        }
    }

    /// Whether the role manages the project's members and robots (project admins).
    pub fn manages_project(self) -> bool {
        self == Role::ProjectAdmin
    }

    /// Whether the role may see the project's members and logs (all but limited guests).
    pub fn sees_members(self) -> bool {
        self != Role::LimitedGuest
    }
}

/// One entry of a robot's v2 permission list.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RobotPermission {
    /// `project` (or `system` for system-wide resources, which grant nothing on repositories).
    pub kind: String,
    /// The project name, or `*` for every project.
    pub namespace: String,
    pub access: Vec<RobotAccess>,
}

/// A resource and action a robot may use.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RobotAccess {
    pub resource: String,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
}

/// The repository actions a robot's permissions give in `project`.
pub fn robot_actions(permissions: &[RobotPermission], project: &str) -> Vec<Action> {
    let mut out = Vec::new();
    for p in permissions {
        if p.kind != "project" || (p.namespace != project && p.namespace != "*") {
            continue;
        }
        for a in &p.access {
            if a.effect.as_deref().is_some_and(|e| e != "allow") {
                continue;
            }
            let action = match (a.resource.as_str(), a.action.as_str()) {
                ("repository", "pull") => Action::Pull,
                ("repository", "push") => Action::Push,
                ("repository", "delete") | ("artifact", "delete") => Action::Delete,
                ("repository" | "artifact", "*") | ("*", "*") => {
                    out.extend(Action::ALL);
                    continue;
                }
                _ => continue,
            };
            out.push(action);
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Checks a robot's permission list: known kinds, and for a project-level robot only its own
/// project as namespace. An error says what is wrong.
pub fn check_robot_permissions(
    permissions: &[RobotPermission],
    project: Option<&str>,
) -> Result<(), String> {
    if permissions.is_empty() {
        return Err("a robot needs at least one permission".into());
    }
    for p in permissions {
        if p.kind != "project" && p.kind != "system" {
            return Err(format!("unknown permission kind {:?}", p.kind));
        }
        if let Some(project) = project {
            if p.kind != "project" || p.namespace != project {
                return Err(format!(
                    "a project robot of {project} may only hold permissions on {project}"
                ));
            }
        }
        if p.access.is_empty() {
            return Err(format!("no access listed for namespace {:?}", p.namespace));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_table() {
        use Action::*;
        assert_eq!(Role::ProjectAdmin.actions(), &[Pull, Push, Delete]);
        assert_eq!(Role::Maintainer.actions(), &[Pull, Push, Delete]);
        assert_eq!(Role::Developer.actions(), &[Pull, Push]);
        assert_eq!(Role::Guest.actions(), &[Pull]);
        assert_eq!(Role::LimitedGuest.actions(), &[Pull]);
        for id in 1..=5 {
            assert_eq!(Role::from_id(id).unwrap().id(), id);
        }
        assert_eq!(Role::from_id(0), None);
        assert_eq!(Role::from_id(6), None);
        assert_eq!(Role::from_name("maintainer"), Some(Role::Maintainer));
        assert_eq!(Role::from_name("2"), Some(Role::Developer));
    }

    #[test]
    fn robots() {
        let perms: Vec<RobotPermission> = serde_json::from_value(serde_json::json!([
            {"kind": "project", "namespace": "team", "access": [
                {"resource": "repository", "action": "pull"},
                {"resource": "repository", "action": "push"},
                {"resource": "artifact", "action": "delete", "effect": "deny"},
                {"resource": "tag", "action": "list"}
            ]},
            {"kind": "project", "namespace": "*", "access": [
                {"resource": "repository", "action": "pull"}
            ]}
        ]))
        .unwrap();
        assert_eq!(
            robot_actions(&perms, "team"),
            vec![Action::Pull, Action::Push]
        );
        assert_eq!(robot_actions(&perms, "other"), vec![Action::Pull]);
        assert!(check_robot_permissions(&perms, None).is_ok());
        assert!(check_robot_permissions(&perms, Some("team")).is_err());
        assert!(check_robot_permissions(&perms[..1], Some("team")).is_ok());
        assert!(check_robot_permissions(&[], None).is_err());
    }
}
