//! Managing users, projects, members and robots: the one implementation behind the command line
//! (`berth user|project|robot`) and the REST API.
//!
//! Owns: the rules records must follow before they are stored (names, Harbor's password rule,
//! role ids, robot naming and permissions) and the hashing of what is secret.
//! Invariants: a clear-text password or robot secret never reaches the store; a robot's secret
//! is returned once, when it is made (or refreshed); every change that succeeds is written to the
//! audit log with the actor that made it, whichever front end (API or command line) asked.

use std::net::IpAddr;
use std::sync::Arc;

use super::builtin::ROBOT_PREFIX;
pub use super::ldap::normalize_dn;
use super::rbac::{check_robot_permissions, RobotPermission, Role};
use super::secret;
use crate::meta::access::{now_ms, AccessStore, NewUser, UserSource};
/// The records the account operations hand to their callers (the management API among them).
pub use crate::meta::access::{
    ArtifactSelection, ArtifactSummary, AuditEntry, AuditQuery, Group, ImmutableRule, Listing,
    Member, MemberEntity, PageRequest, Project, RegistryRecord, RepositorySummary,
    RetentionExecution, RetentionRecord, Robot, TagSummary, User, UserUpdate,
};
use crate::meta::MetaError;

/// Why an account operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The input breaks a rule; the message says which.
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the metadata database is unavailable: {0}")]
    Unavailable(String),
}

impl From<MetaError> for AccountError {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::NotFound(what) => AccountError::NotFound(what),
            MetaError::Conflict(what) => AccountError::Conflict(what),
            other => AccountError::Unavailable(other.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, AccountError>;

/// A user to create.
#[derive(Clone, Debug, Default)]
pub struct UserSpec {
    pub username: String,
    pub password: String,
    pub email: String,
    pub realname: String,
    pub comment: String,
    pub sysadmin: bool,
}

/// A robot to create.
#[derive(Clone, Debug)]
pub struct RobotSpec {
    /// The project of a project-level robot; `None` for a system-level one.
    pub project: Option<String>,
    /// The name after `robot$<project>+` (or `robot$`).
    pub name: String,
    pub description: String,
    /// Days until it expires; -1 never.
    pub duration_days: i64,
    pub permissions: Vec<RobotPermission>,
    pub disabled: bool,
    pub creator: String,
}

/// Who makes a change, as the audit log names them.
#[derive(Clone, Debug)]
pub struct Actor {
    /// A user or robot name, `anonymous`, or `cli:<login>` for the command line.
    pub name: String,
    /// The address the request came from (none on the command line).
    pub client: Option<IpAddr>,
}

impl Actor {
    /// The operator of the command line, named after their login.
    pub fn command_line() -> Actor {
        let login = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "unknown".into());
        Actor {
            name: format!("cli:{login}"),
            client: None,
        }
    }

    /// Changes nobody asked for directly (Berth's own, such as the first administrator).
    pub fn system() -> Actor {
        Actor {
            name: "system".into(),
            client: None,
        }
    }
}

/// The account operations over a store, made on behalf of an actor.
#[derive(Clone)]
pub struct Accounts {
    store: Arc<dyn AccessStore>,
    actor: Actor,
}

impl Accounts {
    /// The operations as Berth itself; [`Accounts::by`] names someone else.
    pub fn new(store: Arc<dyn AccessStore>) -> Accounts {
        Accounts {
            store,
            actor: Actor::system(),
        }
    }

    /// The same operations, recorded as made by `actor`.
    pub fn by(&self, actor: Actor) -> Accounts {
        Accounts {
            store: self.store.clone(),
            actor,
        }
    }

    /// Writes an audit entry of a change by this actor that succeeded. A failed write is
    /// logged and counted; the change it describes stands.
    pub async fn record(&self, operation: &str, resource_type: &str, resource: &str) {
        self.record_entry(operation, resource_type, resource, true, "")
            .await;
    }

    /// Writes an audit entry of any outcome: a refusal (`success` false) says why in `detail`.
    pub async fn record_entry(
        &self,
        operation: &str,
        resource_type: &str,
        resource: &str,
        success: bool,
        detail: &str,
    ) {
        let entry = AuditEntry {
            id: 0,
            at: now_ms(),
            username: self.actor.name.clone(),
            operation: operation.to_string(),
            resource_type: resource_type.to_string(),
            resource: resource.to_string(),
            client: self.actor.client.map(|c| c.to_string()).unwrap_or_default(),
            success,
            detail: detail.to_string(),
        };
        if let Err(e) = self.store.audit(vec![entry]).await {
            tracing::warn!(error = %e, "writing the audit log failed");
            metrics::counter!("berth_audit_entries_lost_total").increment(1);
        }
    }

    /// Passes `result` through, recording the change when it succeeded.
    async fn recorded<T>(
        &self,
        result: Result<T>,
        operation: &str,
        resource_type: &str,
        resource: &str,
    ) -> Result<T> {
        if result.is_ok() {
            self.record(operation, resource_type, resource).await;
        }
        result
    }

    pub fn store(&self) -> &Arc<dyn AccessStore> {
        &self.store
    }

    pub async fn add_user(&self, spec: UserSpec) -> Result<User> {
        check_username(&spec.username)?;
        secret::check_password_rule(&spec.password).map_err(AccountError::Invalid)?;
        let hash = hash(spec.password).await?;
        let user = NewUser {
            username: spec.username,
            email: spec.email,
            realname: spec.realname,
            comment: spec.comment,
            password: Some(hash),
            ldap_dn: None,
            sysadmin: spec.sysadmin,
        };
        let name = user.username.clone();
        let made = self.store.create_user(user, UserSource::Local).await;
        self.recorded(made.map_err(Into::into), "create", "user", &name)
            .await
    }

    pub async fn user(&self, name: &str) -> Result<User> {
        self.store
            .user_by_name(name)
            .await?
            .ok_or_else(|| AccountError::NotFound(format!("user {name}")))
    }

    pub async fn users(&self, name: Option<&str>, page: PageRequest) -> Result<Listing<User>> {
        Ok(self.store.users(name, page).await?)
    }

    pub async fn set_password(&self, user: &User, password: &str) -> Result<()> {
        secret::check_password_rule(password).map_err(AccountError::Invalid)?;
        let hash = hash(password.to_string()).await?;
        let update = UserUpdate {
            password: Some(hash),
            ..UserUpdate::default()
        };
        let done = self.store.update_user(user.id, update).await;
        self.recorded(done.map_err(Into::into), "update", "user", &user.username)
            .await
    }

    pub async fn update_user(&self, user: &User, update: UserUpdate) -> Result<()> {
        if update.password.is_some() {
            return Err(AccountError::Invalid(
                "set passwords with set_password".into(),
            ));
        }
        let done = self.store.update_user(user.id, update).await;
        self.recorded(done.map_err(Into::into), "update", "user", &user.username)
            .await
    }

    pub async fn remove_user(&self, user: &User) -> Result<()> {
        let done = self.store.delete_user(user.id).await;
        self.recorded(done.map_err(Into::into), "delete", "user", &user.username)
            .await
    }

    pub async fn add_project(
        &self,
        name: &str,
        public: bool,
        owner: Option<i64>,
    ) -> Result<Project> {
        check_project_name(name)?;
        let made = self.store.create_project(name, public, owner).await;
        self.recorded(made.map_err(Into::into), "create", "project", name)
            .await
    }

    pub async fn project(&self, name_or_id: &str) -> Result<Project> {
        let found = match name_or_id.parse::<i64>() {
            Ok(id) => self.store.project(id).await?,
            Err(_) => self.store.project_by_name(name_or_id).await?,
        };
        found.ok_or_else(|| AccountError::NotFound(format!("project {name_or_id}")))
    }

    pub async fn remove_project(&self, project: &Project) -> Result<()> {
        let done = self.store.delete_project(project.id).await;
        self.recorded(done.map_err(Into::into), "delete", "project", &project.name)
            .await
    }

    /// Makes `user` (a user name) a member of `project` with `role` (Harbor's role id).
    pub async fn add_user_member(&self, project: &Project, user: &str, role: i64) -> Result<i64> {
        let role = check_role(role)?;
        let user = self.user(user).await?;
        let made = self
            .store
            .add_member(project.id, MemberEntity::User(user.id), role.id())
            .await;
        let what = format!("{}/{}", project.name, user.username);
        self.recorded(made.map_err(Into::into), "create", "member", &what)
            .await
    }

    /// Makes the LDAP group `ldap_dn` a member of `project` with `role`.
    pub async fn add_group_member(
        &self,
        project: &Project,
        name: &str,
        ldap_dn: &str,
        role: i64,
    ) -> Result<i64> {
        let role = check_role(role)?;
        if ldap_dn.trim().is_empty() {
            return Err(AccountError::Invalid(
                "a group member needs its ldap_group_dn".into(),
            ));
        }
        let group = self
            .store
            .ensure_group(name, &normalize_dn(ldap_dn))
            .await?;
        let made = self
            .store
            .add_member(project.id, MemberEntity::Group(group.id), role.id())
            .await;
        let what = format!("{}/{name}", project.name);
        self.recorded(made.map_err(Into::into), "create", "member", &what)
            .await
    }

    pub async fn members(&self, project_id: i64) -> Result<Vec<Member>> {
        Ok(self.store.members(project_id).await?)
    }

    pub async fn set_member_role(
        &self,
        project: &Project,
        member: &Member,
        role: i64,
    ) -> Result<()> {
        let role = check_role(role)?;
        let done = self
            .store
            .set_member_role(project.id, member.id, role.id())
            .await;
        let what = format!("{}/{}", project.name, member.entity_name);
        self.recorded(done.map_err(Into::into), "update", "member", &what)
            .await
    }

    pub async fn remove_member(&self, project: &Project, member: &Member) -> Result<()> {
        let done = self.store.delete_member(project.id, member.id).await;
        let what = format!("{}/{}", project.name, member.entity_name);
        self.recorded(done.map_err(Into::into), "delete", "member", &what)
            .await
    }

    /// Creates a robot and returns it with its secret (shown this once).
    pub async fn add_robot(&self, spec: RobotSpec) -> Result<(Robot, String)> {
        check_robot_name(&spec.name)?;
        let project = match &spec.project {
            Some(p) => Some(self.project(p).await?),
            None => None,
        };
        check_robot_permissions(&spec.permissions, spec.project.as_deref())
            .map_err(AccountError::Invalid)?;
        if spec.duration_days == 0 || spec.duration_days < -1 {
            return Err(AccountError::Invalid(
                "duration is a number of days, or -1 for never expiring".into(),
            ));
        }
        let full = match &spec.project {
            Some(p) => format!("{ROBOT_PREFIX}{p}+{}", spec.name),
            None => format!("{ROBOT_PREFIX}{}", spec.name),
        };
        let clear = secret::generate_secret();
        let expires_at = if spec.duration_days < 0 {
            -1
        } else {
            now_ms() / 1000 + spec.duration_days * 24 * 3600
        };
        let robot = Robot {
            id: 0,
            name: full,
            description: spec.description,
            secret: secret::hash_secret(&clear),
            level: if project.is_some() {
                "project"
            } else {
                "system"
            }
            .into(),
            project_id: project.map(|p| p.id),
            duration: spec.duration_days,
            expires_at,
            disabled: spec.disabled,
            permissions: serde_json::to_value(&spec.permissions)
                .map_err(|e| AccountError::Invalid(e.to_string()))?,
            creator: spec.creator,
            created_at: 0,
            updated_at: 0,
        };
        let robot = self.store.create_robot(robot).await?;
        self.record("create", "robot", &robot.name).await;
        Ok((robot, clear))
    }

    /// Stores a robot's changed description, duration, expiry, permissions or state.
    pub async fn update_robot(&self, robot: &Robot) -> Result<()> {
        let done = self.store.update_robot(robot).await;
        self.recorded(done.map_err(Into::into), "update", "robot", &robot.name)
            .await
    }

    /// Gives a robot a new secret (returned this once); the old one stops working.
    pub async fn refresh_robot_secret(&self, robot: &Robot) -> Result<String> {
        let clear = secret::generate_secret();
        let mut updated = robot.clone();
        updated.secret = secret::hash_secret(&clear);
        self.update_robot(&updated).await?;
        Ok(clear)
    }

    pub async fn robot(&self, name_or_id: &str) -> Result<Robot> {
        let found = match name_or_id.parse::<i64>() {
            Ok(id) => self.store.robot(id).await?,
            Err(_) => self.store.robot_by_name(name_or_id).await?,
        };
        found.ok_or_else(|| AccountError::NotFound(format!("robot {name_or_id}")))
    }

    pub async fn remove_robot(&self, robot: &Robot) -> Result<()> {
        let done = self.store.delete_robot(robot.id).await;
        self.recorded(done.map_err(Into::into), "delete", "robot", &robot.name)
            .await
    }

    /// Gives a robot the secret `clear`, which must follow the password rule; the old one stops
    /// working.
    pub async fn set_robot_secret(&self, robot: &Robot, clear: &str) -> Result<()> {
        secret::check_password_rule(clear).map_err(AccountError::Invalid)?;
        let mut updated = robot.clone();
        updated.secret = secret::hash_secret(clear);
        self.update_robot(&updated).await
    }

    /// Whether `password` is the user's current one (false for users whose password lives
    /// elsewhere).
    pub async fn password_matches(&self, user: &User, password: &str) -> bool {
        match &user.password {
            Some(hash) => secret::check_password(hash, password).await,
            None => false,
        }
    }

    pub async fn user_by_id(&self, user_id: i64) -> Result<User> {
        self.store
            .user(user_id)
            .await?
            .ok_or_else(|| AccountError::NotFound(format!("user {user_id}")))
    }

    pub async fn set_project_public(&self, project: &Project, public: bool) -> Result<()> {
        let done = self.store.set_project_public(project.id, public).await;
        self.recorded(done.map_err(Into::into), "update", "project", &project.name)
            .await
    }

    /// Sets whether garbage collection deletes a project's untagged manifests (`None`: as each
    /// run says).
    pub async fn set_untagged_collection(
        &self,
        project: &Project,
        delete: Option<bool>,
    ) -> Result<()> {
        let done = self.store.set_project_untagged(project.id, delete).await;
        self.recorded(done.map_err(Into::into), "update", "project", &project.name)
            .await
    }

    /// Sets a project's storage quota (`-1`: none).
    pub async fn set_storage_limit(&self, project: &Project, bytes: i64) -> Result<()> {
        if bytes < -1 {
            return Err(AccountError::Invalid(
                "a storage limit is a number of bytes, or -1 for none".into(),
            ));
        }
        let done = self
            .store
            .set_project_storage_limit(project.id, bytes)
            .await;
        self.recorded(done.map_err(Into::into), "update", "quota", &project.name)
            .await
    }

    pub async fn retention(&self, id: i64) -> Result<RetentionRecord> {
        self.store
            .retention(id)
            .await?
            .ok_or_else(|| AccountError::NotFound(format!("retention policy {id}")))
    }

    /// Gives `project` its retention policy (checked by the caller); `Conflict` if it has one.
    pub async fn add_retention(
        &self,
        project: &Project,
        policy: &serde_json::Value,
    ) -> Result<i64> {
        let made = self.store.create_retention(project.id, policy).await;
        let made = made.map_err(|e| match e {
            MetaError::Conflict(_) => AccountError::Conflict(format!(
                "project {} has a retention policy already: update it",
                project.name
            )),
            e => e.into(),
        });
        self.recorded(made, "create", "retention", &project.name)
            .await
    }

    pub async fn update_retention(
        &self,
        project: &Project,
        record: &RetentionRecord,
        policy: &serde_json::Value,
    ) -> Result<()> {
        let done = self.store.update_retention(record.id, policy).await;
        self.recorded(
            done.map_err(Into::into),
            "update",
            "retention",
            &project.name,
        )
        .await
    }

    pub async fn remove_retention(
        &self,
        project: &Project,
        record: &RetentionRecord,
    ) -> Result<()> {
        let done = self.store.delete_retention(record.id).await;
        self.recorded(
            done.map_err(Into::into),
            "delete",
            "retention",
            &project.name,
        )
        .await
    }

    /// A policy's runs, newest first.
    pub async fn retention_executions(
        &self,
        policy_id: i64,
        page: PageRequest,
    ) -> Result<Listing<RetentionExecution>> {
        Ok(self.store.retention_executions(policy_id, page).await?)
    }

    pub async fn immutable_rules(&self, project: &Project) -> Result<Vec<ImmutableRule>> {
        Ok(self.store.immutable_rules(project.id).await?)
    }

    /// Adds an immutable tag rule to `project` (checked: patterns and decorations); its id.
    pub async fn add_immutable_rule(&self, project: &Project, rule: ImmutableRule) -> Result<i64> {
        let rule = check_rule(project, rule)?;
        let made = self.store.create_immutable_rule(&rule).await;
        let what = |id: &i64| format!("{}/immutable/{id}", project.name);
        if let Ok(id) = &made {
            self.record("create", "immutable_rule", &what(id)).await;
        }
        Ok(made?)
    }

    pub async fn update_immutable_rule(
        &self,
        project: &Project,
        rule: ImmutableRule,
    ) -> Result<()> {
        let rule = check_rule(project, rule)?;
        let done = self.store.update_immutable_rule(&rule).await;
        let what = format!("{}/immutable/{}", project.name, rule.id);
        self.recorded(done.map_err(Into::into), "update", "immutable_rule", &what)
            .await
    }

    pub async fn remove_immutable_rule(&self, project: &Project, id: i64) -> Result<()> {
        let done = self.store.delete_immutable_rule(project.id, id).await;
        let what = format!("{}/immutable/{id}", project.name);
        self.recorded(done.map_err(Into::into), "delete", "immutable_rule", &what)
            .await
    }

    /// Projects in name order: all of them (`visible_to` `None`), or the public ones and those
    /// the user (with these groups) is a member of.
    pub async fn projects(
        &self,
        name: Option<&str>,
        public: Option<bool>,
        visible_to: Option<(i64, &[i64])>,
        page: PageRequest,
    ) -> Result<Listing<Project>> {
        Ok(self.store.projects(name, public, visible_to, page).await?)
    }

    /// The role ids a user holds in a project, directly or through `groups`.
    pub async fn roles(&self, project_id: i64, user_id: i64, groups: &[i64]) -> Result<Vec<i64>> {
        Ok(self.store.roles(project_id, user_id, groups).await?)
    }

    pub async fn member(&self, project_id: i64, member_id: i64) -> Result<Member> {
        self.store
            .member(project_id, member_id)
            .await?
            .ok_or_else(|| AccountError::NotFound(format!("member {member_id}")))
    }

    pub async fn group(&self, group_id: i64) -> Result<Group> {
        self.store
            .group(group_id)
            .await?
            .ok_or_else(|| AccountError::NotFound(format!("group {group_id}")))
    }

    pub async fn robots(
        &self,
        project_id: Option<i64>,
        page: PageRequest,
    ) -> Result<Listing<Robot>> {
        Ok(self.store.robots(project_id, page).await?)
    }

    pub async fn audit_log(
        &self,
        query: &AuditQuery,
        page: PageRequest,
    ) -> Result<Listing<AuditEntry>> {
        Ok(self.store.audit_log(query, page).await?)
    }

    /// The repositories of a project that hold manifests, optionally only those whose name
    /// contains `name`.
    pub async fn repositories(
        &self,
        project: &str,
        name: Option<&str>,
        page: PageRequest,
    ) -> Result<Listing<RepositorySummary>> {
        Ok(self
            .store
            .repository_summaries(&format!("{project}/"), name, page)
            .await?)
    }

    /// How many repositories of a project hold manifests.
    pub async fn repository_count(&self, project: &str) -> Result<i64> {
        let one = PageRequest {
            page: 1,
            page_size: 1,
        };
        Ok(self.repositories(project, None, one).await?.total)
    }

    /// The manifests of a repository that `which` selects, with their tags.
    pub async fn artifacts(
        &self,
        repo: &crate::oci::name::RepoName,
        which: ArtifactSelection<'_>,
        page: PageRequest,
    ) -> Result<Listing<ArtifactSummary>> {
        Ok(self.store.artifact_summaries(repo, which, page).await?)
    }
}

async fn hash(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || secret::hash_password(&password))
        .await
        .map_err(|e| AccountError::Unavailable(format!("hashing a password: {e}")))
}

/// A rule of `project` with valid patterns and decorations.
fn check_rule(project: &Project, mut rule: ImmutableRule) -> Result<ImmutableRule> {
    use super::policy::{pattern, REPO_DECORATIONS, TAG_DECORATIONS};
    pattern(&rule.tag_pattern).map_err(AccountError::Invalid)?;
    pattern(&rule.repo_pattern).map_err(AccountError::Invalid)?;
    if !TAG_DECORATIONS.contains(&rule.tag_decoration.as_str()) {
        return Err(AccountError::Invalid(format!(
            "a tag selector's decoration is matches or excludes, not {:?}",
            rule.tag_decoration
        )));
    }
    if !REPO_DECORATIONS.contains(&rule.repo_decoration.as_str()) {
        return Err(AccountError::Invalid(format!(
            "a repository selector's decoration is repoMatches or repoExcludes, not {:?}",
            rule.repo_decoration
        )));
    }
    rule.project_id = project.id;
    Ok(rule)
}

fn check_role(role: i64) -> Result<Role> {
    Role::from_id(role).ok_or_else(|| {
        AccountError::Invalid(format!(
            "unknown role_id {role}: 1 project admin, 2 developer, 3 guest, 4 maintainer, \
             5 limited guest"
        ))
    })
}

/// User names: 1 to 255 characters, none of them a control character or one of `,~#$%` (a
/// robot's `$` in particular), as Harbor requires.
fn check_username(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name.chars().count() > 255
        || name
            .chars()
            .any(|c| c.is_control() || ",~#$%:".contains(c) || c.is_whitespace());
    if bad {
        return Err(AccountError::Invalid(format!(
            "invalid user name {name:?}: 1 to 255 characters, without spaces or any of ,~#$%:"
        )));
    }
    Ok(())
}

/// Project names: a valid first path component of a repository name, 1 to 255 characters of
/// lower-case letters, digits and `._-`, starting and ending with a letter or digit.
pub fn check_project_name(name: &str) -> Result<()> {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok = !name.is_empty()
        && name.len() <= 255
        && name.starts_with(alnum)
        && name.ends_with(alnum)
        && name.chars().all(|c| alnum(c) || "._-".contains(c));
    if !ok {
        return Err(AccountError::Invalid(format!(
            "invalid project name {name:?}: 1 to 255 lower-case letters, digits, '.', '_' or \
             '-', starting and ending with a letter or digit"
        )));
    }
    Ok(())
}

fn check_robot_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    if !ok {
        return Err(AccountError::Invalid(format!(
            "invalid robot name {name:?}: lower-case letters, digits, '.', '_' or '-'"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_project_name("team").is_ok());
        assert!(check_project_name("a.b-c_d9").is_ok());
        assert!(check_project_name("Team").is_err());
        assert!(check_project_name("-team").is_err());
        assert!(check_project_name("a/b").is_err());
        assert!(check_project_name("").is_err());
        assert!(check_username("alice").is_ok());
        assert!(check_username("robot$x").is_err());
        assert!(check_username("a b").is_err());
        assert!(check_robot_name("ci").is_ok());
        assert!(check_robot_name("ci+x").is_err());
        assert_eq!(
            normalize_dn("CN=Dev , OU=Groups,dc=Berth"),
            "cn=dev,ou=groups,dc=berth"
        );
    }
}
