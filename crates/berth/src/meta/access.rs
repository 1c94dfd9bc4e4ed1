//! The access records: users, LDAP groups, projects and their members, robot accounts, token
//! signing keys, the audit log and failed-login counters.
//!
//! [`AccessStore`] is implemented once, by [`access_store!`], for both SQL engines: the statements
//! are written with PostgreSQL's `$N` placeholders, which SQLite reads as `?N` after
//! [`sqlite_sql`]. Every value is stored as text or a 64-bit integer so rows decode the same way
//! on both.
//!
//! Invariants: ids are never reused (a project deleted and re-created gets a new id, which is how
//! a token minted for the old one is recognised); names are unique; deleting a project removes
//! its members and robots in the same transaction; deleting a user removes their memberships.

use async_trait::async_trait;

use super::rows::{parse_digest, parse_repo, Columns};
use super::{MetaError, Result};
use crate::oci::digest::Digest;
use crate::oci::name::RepoName;

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Where a user's password is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserSource {
    /// A password hash in this store.
    Local,
    /// An LDAP directory (the user record is made at first login).
    Ldap,
    /// The configured htpasswd file (the user record is made at first login).
    Htpasswd,
}

impl UserSource {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            UserSource::Local => "local",
            UserSource::Ldap => "ldap",
            UserSource::Htpasswd => "htpasswd",
        }
    }
    fn parse(s: &str) -> Result<UserSource> {
        match s {
            "local" => Ok(UserSource::Local),
            "ldap" => Ok(UserSource::Ldap),
            "htpasswd" => Ok(UserSource::Htpasswd),
            other => Err(MetaError::Corrupt(format!("user source {other:?}"))),
        }
    }
}

/// A user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub email: String,
    pub realname: String,
    pub comment: String,
    /// The argon2id PHC string; `None` for users whose password lives elsewhere.
    pub password: Option<String>,
    pub source: UserSource,
    pub ldap_dn: Option<String>,
    pub sysadmin: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A user to create.
#[derive(Clone, Debug, Default)]
pub struct NewUser {
    pub username: String,
    pub email: String,
    pub realname: String,
    pub comment: String,
    pub password: Option<String>,
    pub ldap_dn: Option<String>,
    pub sysadmin: bool,
}

/// Changes to a user; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct UserUpdate {
    pub email: Option<String>,
    pub realname: Option<String>,
    pub comment: Option<String>,
    pub password: Option<String>,
    pub sysadmin: Option<bool>,
}

/// A group of users known from a directory (Harbor's group type 1, LDAP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub id: i64,
    pub name: String,
    pub group_type: i64,
    pub ldap_dn: String,
}

/// A user as a directory (LDAP) describes it at a login, with the groups it is in now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirectoryUser {
    pub username: String,
    pub email: String,
    pub realname: String,
    pub ldap_dn: String,
    pub sysadmin: bool,
    /// `(name, normalised DN)` of each group.
    pub groups: Vec<(String, String)>,
}

/// A project.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Project {
    pub id: i64,
    pub name: String,
    pub public: bool,
    pub owner_id: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Bytes the project may store; -1 without a quota.
    pub storage_limit: i64,
    /// Whether garbage collection deletes its untagged manifests (`None`: as each run says).
    pub delete_untagged: Option<bool>,
    /// The remote registry it is a pull-through cache of (`None`: an ordinary project).
    pub registry_id: Option<i64>,
}

/// A remote registry (Harbor's registry endpoint).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegistryRecord {
    pub id: i64,
    pub name: String,
    /// `harbor`, `docker-registry`, `docker-hub`.
    pub kind: String,
    pub url: String,
    /// `basic` (a user name and password), `secret` (a token), or empty for none.
    pub credential_type: String,
    pub access_key: String,
    pub access_secret: String,
    pub insecure: bool,
    pub description: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A project's retention policy: Harbor's `RetentionPolicy` JSON as given (rules, trigger,
/// algorithm), checked by whoever runs it.
#[derive(Clone, Debug, PartialEq)]
pub struct RetentionRecord {
    pub id: i64,
    pub project_id: i64,
    pub policy: serde_json::Value,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One run of a retention policy.
#[derive(Clone, Debug, PartialEq)]
pub struct RetentionExecution {
    pub id: i64,
    pub policy_id: i64,
    pub dry_run: bool,
    /// `MANUAL` or `SCHEDULE`.
    pub trigger: String,
    /// `Success` or `Error`.
    pub status: String,
    /// Unix milliseconds.
    pub started_at: i64,
    pub finished_at: i64,
    /// Per repository: what was examined, retained and deleted (JSON array).
    pub tasks: serde_json::Value,
}

/// An immutable tag rule of a project (Harbor's shape: one tag selector, one repository
/// selector, doublestar patterns).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImmutableRule {
    pub id: i64,
    pub project_id: i64,
    pub priority: i64,
    pub disabled: bool,
    pub tag_pattern: String,
    /// `matches` or `excludes`.
    pub tag_decoration: String,
    pub repo_pattern: String,
    /// `repoMatches` or `repoExcludes`.
    pub repo_decoration: String,
}

/// Who a membership is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberEntity {
    User(i64),
    Group(i64),
}

impl MemberEntity {
    pub(crate) fn parts(self) -> (&'static str, i64) {
        match self {
            MemberEntity::User(id) => ("u", id),
            MemberEntity::Group(id) => ("g", id),
        }
    }
}

/// A project membership, with the name of its user or group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: i64,
    pub project_id: i64,
    pub entity: MemberEntity,
    pub entity_name: String,
    /// Harbor's role id: 1 project admin, 2 developer, 3 guest, 4 maintainer, 5 limited guest.
    pub role: i64,
}

/// A robot account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Robot {
    pub id: i64,
    /// The full name, `robot$<project>+<name>` or `robot$<name>`.
    pub name: String,
    pub description: String,
    /// SHA-256 (hex) of the secret.
    pub secret: String,
    /// `system` or `project`.
    pub level: String,
    pub project_id: Option<i64>,
    /// Days it was created for; -1 never expires.
    pub duration: i64,
    /// Unix seconds; -1 never.
    pub expires_at: i64,
    pub disabled: bool,
    /// Harbor's v2 permission list.
    pub permissions: serde_json::Value,
    pub creator: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A token signing key pair and its self-signed certificate, both PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SigningKey {
    pub kid: String,
    pub private_key: String,
    pub certificate: String,
    pub created_at: i64,
    /// When it stops verifying tokens; `None` while no newer key superseded it.
    pub retire_at: Option<i64>,
}

/// One entry of the audit log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: i64,
    /// Unix milliseconds.
    pub at: i64,
    pub username: String,
    /// `login`, `token`, `create`, `delete`, `pull`, `push`, `update`, ...
    pub operation: String,
    /// `user`, `project`, `member`, `robot`, `artifact`, `tag`, `repository`, `token`, ...
    pub resource_type: String,
    pub resource: String,
    /// Where the request came from (the client address).
    pub client: String,
    pub success: bool,
    pub detail: String,
}

/// A filter on the audit log: every `Some` field must match (`resource` by prefix).
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    pub username: Option<String>,
    pub operation: Option<String>,
    pub resource_type: Option<String>,
    pub resource: Option<String>,
    /// Only entries of this project: its own resource (the project name) and those under
    /// `name/`.
    pub project: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

/// A page of a listing: 1-based page number and its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRequest {
    pub page: u32,
    pub page_size: u32,
}

impl PageRequest {
    pub(crate) fn offset(&self) -> i64 {
        i64::from(self.page.saturating_sub(1)) * i64::from(self.page_size)
    }
}

/// Records of one page, and how many there are in all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listing<T> {
    pub items: Vec<T>,
    pub total: i64,
}

/// A repository as the management API lists it (times in Unix seconds, as the registry
/// records them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepositorySummary {
    pub id: i64,
    pub name: RepoName,
    /// How many manifests it holds.
    pub artifact_count: i64,
    pub created_at: i64,
    /// When a manifest was last pushed to it (its creation when none is newer).
    pub updated_at: i64,
    /// How many times its manifests were pulled.
    pub pull_count: i64,
}

/// A manifest of a repository with its tags (times in Unix seconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArtifactSummary {
    pub digest: Digest,
    pub media_type: String,
    pub artifact_type: Option<String>,
    /// The manifest's size plus that of every blob it references that the repository holds.
    pub size: i64,
    pub pushed_at: i64,
    /// When it was last pulled, by tag or digest (`None`: never).
    pub pulled_at: Option<i64>,
    /// Tags pointing at it, by name.
    pub tags: Vec<TagSummary>,
    /// The manifests it lists, when it is an index.
    pub children: Vec<Digest>,
}

/// A tag of an artifact (times in Unix seconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagSummary {
    pub name: String,
    /// When it was last set.
    pub pushed_at: i64,
    /// When the artifact was last pulled by this tag (`None`: never).
    pub pulled_at: Option<i64>,
}

/// Which manifests of a repository an artifact listing holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArtifactSelection<'a> {
    /// What Harbor lists as a repository's artifacts: manifests that are neither listed by an
    /// index of the repository nor attached to another manifest (a subject).
    TopLevel,
    /// Every manifest.
    All,
    /// The one with this digest.
    Digest(&'a Digest),
}

/// The access records.
#[async_trait]
pub trait AccessStore: Send + Sync + 'static {
    /// Creates a user; `Conflict` if the name is taken.
    async fn create_user(&self, user: NewUser, source: UserSource) -> Result<User>;
    async fn user(&self, id: i64) -> Result<Option<User>>;
    async fn user_by_name(&self, username: &str) -> Result<Option<User>>;
    /// Users in id order, optionally only those whose name contains `name`.
    async fn users(&self, name: Option<&str>, page: PageRequest) -> Result<Listing<User>>;
    /// `NotFound` if absent.
    async fn update_user(&self, id: i64, update: UserUpdate) -> Result<()>;
    /// Deletes a user and their memberships; `NotFound` if absent.
    async fn delete_user(&self, id: i64) -> Result<()>;

    /// The group of `ldap_dn` (normalised by the caller), created with `name` if new.
    async fn ensure_group(&self, name: &str, ldap_dn: &str) -> Result<Group>;
    async fn group(&self, id: i64) -> Result<Option<Group>>;
    /// Records what a directory said of a user at a login, in one transaction: creates the user
    /// (source LDAP) or updates its e-mail, real name, DN and sysadmin flag, ensures a group per
    /// DN and makes the user's group memberships exactly these. `updated_at` moves only when
    /// something changed, so refresh tokens issued before a change are refused. Returns the user
    /// and its group ids (sorted); `Conflict` if the name belongs to a user of another source.
    async fn sync_directory_user(&self, user: &DirectoryUser) -> Result<(User, Vec<i64>)>;
    /// The ids of the groups the user was in at its last directory login (sorted).
    async fn user_group_ids(&self, user_id: i64) -> Result<Vec<i64>>;

    /// Creates a project with `owner` as its project admin; `Conflict` if the name is taken.
    async fn create_project(&self, name: &str, public: bool, owner: Option<i64>)
        -> Result<Project>;
    async fn project(&self, id: i64) -> Result<Option<Project>>;
    async fn project_by_name(&self, name: &str) -> Result<Option<Project>>;
    /// Projects in name order. `visible_to`: only public ones and those the user (with these
    /// groups) is a member of; `None` lists all. `name`: those whose name contains it.
    async fn projects(
        &self,
        name: Option<&str>,
        public: Option<bool>,
        visible_to: Option<(i64, &[i64])>,
        page: PageRequest,
    ) -> Result<Listing<Project>>;
    async fn set_project_public(&self, id: i64, public: bool) -> Result<()>;
    /// Sets a project's storage quota in bytes (-1: none).
    async fn set_project_storage_limit(&self, id: i64, bytes: i64) -> Result<()>;
    /// Sets whether garbage collection deletes a project's untagged manifests (`None`: as each
    /// run says); `NotFound` if absent.
    async fn set_project_untagged(&self, id: i64, delete: Option<bool>) -> Result<()>;
    /// How many projects ask for their untagged manifests to be deleted.
    async fn projects_deleting_untagged(&self) -> Result<i64>;
    /// A retention policy by id.
    async fn retention(&self, id: i64) -> Result<Option<RetentionRecord>>;
    /// The retention policy of a project.
    async fn retention_of(&self, project_id: i64) -> Result<Option<RetentionRecord>>;
    /// Every project's retention policy, by id.
    async fn retention_policies(&self) -> Result<Vec<RetentionRecord>>;
    /// Gives a project its retention policy; `Conflict` if it has one. Its id.
    async fn create_retention(&self, project_id: i64, policy: &serde_json::Value) -> Result<i64>;
    async fn update_retention(&self, id: i64, policy: &serde_json::Value) -> Result<()>;
    async fn delete_retention(&self, id: i64) -> Result<()>;
    /// Records a run of a policy; its id.
    async fn add_retention_execution(&self, run: &RetentionExecution) -> Result<i64>;
    /// A policy's runs, newest first.
    async fn retention_executions(
        &self,
        policy_id: i64,
        page: PageRequest,
    ) -> Result<Listing<RetentionExecution>>;
    /// A project's immutable tag rules, by priority then id.
    async fn immutable_rules(&self, project_id: i64) -> Result<Vec<ImmutableRule>>;
    /// Adds a rule (its `id` is ignored) and returns its id.
    async fn create_immutable_rule(&self, rule: &ImmutableRule) -> Result<i64>;
    /// Replaces the rule `rule.id` of `rule.project_id`; `NotFound` if there is none.
    async fn update_immutable_rule(&self, rule: &ImmutableRule) -> Result<()>;
    async fn delete_immutable_rule(&self, project_id: i64, id: i64) -> Result<()>;
    /// Deletes a project, its members and its robots; `NotFound` if absent.
    async fn delete_project(&self, id: i64) -> Result<()>;
    /// Makes a project a pull-through cache of the registry `registry_id`.
    async fn set_project_registry(&self, id: i64, registry_id: Option<i64>) -> Result<()>;

    /// Adds a remote registry (its `id` and times are ignored); `Conflict` if the name is
    /// taken. Returns it as stored.
    async fn create_registry(&self, r: &RegistryRecord) -> Result<RegistryRecord>;
    async fn registry(&self, id: i64) -> Result<Option<RegistryRecord>>;
    /// Registries by id, optionally only those whose name contains `name`.
    async fn registries(
        &self,
        name: Option<&str>,
        page: PageRequest,
    ) -> Result<Listing<RegistryRecord>>;
    /// Replaces everything but the id and the creation time; `NotFound` if absent.
    async fn update_registry(&self, r: &RegistryRecord) -> Result<()>;
    /// Deletes a registry; `Conflict` while a project mirrors it, `NotFound` if absent.
    async fn delete_registry(&self, id: i64) -> Result<()>;

    /// Adds a member; `Conflict` if already one.
    async fn add_member(&self, project_id: i64, entity: MemberEntity, role: i64) -> Result<i64>;
    async fn members(&self, project_id: i64) -> Result<Vec<Member>>;
    async fn member(&self, project_id: i64, member_id: i64) -> Result<Option<Member>>;
    async fn set_member_role(&self, project_id: i64, member_id: i64, role: i64) -> Result<()>;
    async fn delete_member(&self, project_id: i64, member_id: i64) -> Result<()>;
    /// The roles a user holds in a project, directly or through any of `groups`.
    async fn roles(&self, project_id: i64, user_id: i64, groups: &[i64]) -> Result<Vec<i64>>;

    /// Creates a robot; `Conflict` if the name is taken.
    async fn create_robot(&self, robot: Robot) -> Result<Robot>;
    async fn robot(&self, id: i64) -> Result<Option<Robot>>;
    async fn robot_by_name(&self, name: &str) -> Result<Option<Robot>>;
    /// Robots in id order, optionally only those of a project.
    async fn robots(&self, project_id: Option<i64>, page: PageRequest) -> Result<Listing<Robot>>;
    /// Replaces description, secret, disabled, expiry and permissions.
    async fn update_robot(&self, robot: &Robot) -> Result<()>;
    async fn delete_robot(&self, id: i64) -> Result<()>;

    /// Every signing key not retired before `now_ms`, newest first.
    async fn signing_keys(&self, now_ms: i64) -> Result<Vec<SigningKey>>;
    /// Adds a key unless one exists created after `unless_newer_than` (so instances starting
    /// or rotating at once add one key, not several); marks every current key to retire at
    /// `retire_others_at`. Returns whether it was added.
    async fn add_signing_key(
        &self,
        key: SigningKey,
        unless_newer_than: i64,
        retire_others_at: i64,
    ) -> Result<bool>;

    async fn audit(&self, entries: Vec<AuditEntry>) -> Result<()>;
    /// Audit entries, newest first.
    async fn audit_log(&self, query: &AuditQuery, page: PageRequest)
        -> Result<Listing<AuditEntry>>;
    /// Deletes entries older than `before_ms`; how many.
    async fn prune_audit(&self, before_ms: i64) -> Result<u64>;

    /// Counts a failed login under `key` and returns the failures within the window that
    /// started at most `window_ms` ago (a new window starts when the last one is over).
    async fn count_failure(&self, key: &str, window_ms: i64) -> Result<i64>;
    /// The failures under `key` in its current window, and when that window started.
    async fn failures(&self, key: &str, window_ms: i64) -> Result<(i64, i64)>;
    async fn clear_failures(&self, key: &str) -> Result<()>;

    /// Repositories holding at least one manifest whose names start with `prefix` (a project's
    /// `name/`), optionally only those whose name contains `name`, in name order. They are
    /// registry records, read here because the management API lists them per project.
    async fn repository_summaries(
        &self,
        prefix: &str,
        name: Option<&str>,
        page: PageRequest,
    ) -> Result<Listing<RepositorySummary>>;
    /// The manifests of `repo` that `which` selects, newest first, with the tags pointing at
    /// each and the children of indexes. An unknown repository lists nothing.
    async fn artifact_summaries(
        &self,
        repo: &RepoName,
        which: ArtifactSelection<'_>,
        page: PageRequest,
    ) -> Result<Listing<ArtifactSummary>>;
}

/// The insert of one audit entry, bound by [`bind_audit`].
pub(crate) const AUDIT_INSERT: &str = "INSERT INTO audit_log (at, username, operation, \
     resource_type, resource, client, success, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// [`AUDIT_INSERT`] with the values of `e`, on either engine.
pub(crate) fn bind_audit<'q, DB>(
    q: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>,
    e: &'q AuditEntry,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    DB: sqlx::Database,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    q.bind(e.at)
        .bind(e.username.as_str())
        .bind(e.operation.as_str())
        .bind(e.resource_type.as_str())
        .bind(e.resource.as_str())
        .bind(e.client.as_str())
        .bind(i64::from(e.success))
        .bind(e.detail.as_str())
}

/// A statement written with `$N` placeholders, for SQLite (`?N`: the same numbered binding).
pub(crate) fn sqlite_sql(sql: &str) -> String {
    sql.replace('$', "?")
}

/// The unique-constraint violation of a failed insert, as `Conflict`.
pub(crate) fn conflict_or(e: sqlx::Error, what: &str) -> MetaError {
    if let sqlx::Error::Database(d) = &e {
        if d.is_unique_violation() {
            return MetaError::Conflict(format!("{what} already exists"));
        }
    }
    MetaError::from(e)
}

pub(crate) const USER_COLUMNS: &str = "id, username, email, realname, comment, password, source, \
     ldap_dn, sysadmin, created_at, updated_at";
pub(crate) const PROJECT_COLUMNS: &str = "id, name, public, owner_id, created_at, updated_at, \
     storage_limit, delete_untagged, registry_id";
pub(crate) const REGISTRY_COLUMNS: &str = "id, name, type, url, credential_type, access_key, \
     access_secret, insecure, description, created_at, updated_at";

pub(crate) fn registry_row<'r>(r: &'r impl Columns<'r>) -> Result<RegistryRecord> {
    Ok(RegistryRecord {
        id: r.int("id")?,
        name: r.text("name")?.to_string(),
        kind: r.text("type")?.to_string(),
        url: r.text("url")?.to_string(),
        credential_type: r.text("credential_type")?.to_string(),
        access_key: r.text("access_key")?.to_string(),
        access_secret: r.text("access_secret")?.to_string(),
        insecure: r.int("insecure")? != 0,
        description: r.text("description")?.to_string(),
        created_at: r.int("created_at")?,
        updated_at: r.int("updated_at")?,
    })
}

pub(crate) const RULE_COLUMNS: &str = "id, project_id, priority, disabled, tag_pattern, \
     tag_decoration, repo_pattern, repo_decoration";
pub(crate) const ROBOT_COLUMNS: &str = "id, name, description, secret, level, project_id, \
     duration, expires_at, disabled, permissions, creator, created_at, updated_at";
pub(crate) const AUDIT_COLUMNS: &str =
    "id, at, username, operation, resource_type, resource, client, success, detail";

pub(crate) fn user_row<'r>(r: &'r impl Columns<'r>) -> Result<User> {
    Ok(User {
        id: r.int("id")?,
        username: r.text("username")?.to_string(),
        email: r.text("email")?.to_string(),
        realname: r.text("realname")?.to_string(),
        comment: r.text("comment")?.to_string(),
        password: r.maybe_text("password")?.map(String::from),
        source: UserSource::parse(r.text("source")?)?,
        ldap_dn: r.maybe_text("ldap_dn")?.map(String::from),
        sysadmin: r.int("sysadmin")? != 0,
        created_at: r.int("created_at")?,
        updated_at: r.int("updated_at")?,
    })
}

pub(crate) fn group_row<'r>(r: &'r impl Columns<'r>) -> Result<Group> {
    Ok(Group {
        id: r.int("id")?,
        name: r.text("name")?.to_string(),
        group_type: r.int("group_type")?,
        ldap_dn: r.text("ldap_dn")?.to_string(),
    })
}

pub(crate) fn project_row<'r>(r: &'r impl Columns<'r>) -> Result<Project> {
    let owner = r.int("owner_id").ok();
    Ok(Project {
        id: r.int("id")?,
        name: r.text("name")?.to_string(),
        public: r.int("public")? != 0,
        owner_id: owner,
        created_at: r.int("created_at")?,
        updated_at: r.int("updated_at")?,
        storage_limit: r.int("storage_limit")?,
        delete_untagged: r.maybe_int("delete_untagged")?.map(|v| v != 0),
        registry_id: r.maybe_int("registry_id")?,
    })
}

pub(crate) fn retention_row<'r>(r: &'r impl Columns<'r>) -> Result<RetentionRecord> {
    Ok(RetentionRecord {
        id: r.int("id")?,
        project_id: r.int("project_id")?,
        policy: serde_json::from_str(r.text("policy")?)
            .map_err(|e| MetaError::Corrupt(format!("stored retention policy: {e}")))?,
        created_at: r.int("created_at")?,
        updated_at: r.int("updated_at")?,
    })
}

pub(crate) fn execution_row<'r>(r: &'r impl Columns<'r>) -> Result<RetentionExecution> {
    Ok(RetentionExecution {
        id: r.int("id")?,
        policy_id: r.int("policy_id")?,
        dry_run: r.int("dry_run")? != 0,
        trigger: r.text("trigger_kind")?.to_string(),
        status: r.text("status")?.to_string(),
        started_at: r.int("started_at")?,
        finished_at: r.int("finished_at")?,
        tasks: serde_json::from_str(r.text("tasks")?)
            .map_err(|e| MetaError::Corrupt(format!("stored retention tasks: {e}")))?,
    })
}

pub(crate) fn rule_row<'r>(r: &'r impl Columns<'r>) -> Result<ImmutableRule> {
    Ok(ImmutableRule {
        id: r.int("id")?,
        project_id: r.int("project_id")?,
        priority: r.int("priority")?,
        disabled: r.int("disabled")? != 0,
        tag_pattern: r.text("tag_pattern")?.to_string(),
        tag_decoration: r.text("tag_decoration")?.to_string(),
        repo_pattern: r.text("repo_pattern")?.to_string(),
        repo_decoration: r.text("repo_decoration")?.to_string(),
    })
}

pub(crate) fn member_row<'r>(r: &'r impl Columns<'r>) -> Result<Member> {
    let id = r.int("entity_id")?;
    let entity = match r.text("entity_type")? {
        "u" => MemberEntity::User(id),
        "g" => MemberEntity::Group(id),
        other => return Err(MetaError::Corrupt(format!("member entity type {other:?}"))),
    };
    Ok(Member {
        id: r.int("id")?,
        project_id: r.int("project_id")?,
        entity,
        entity_name: r.maybe_text("entity_name")?.unwrap_or_default().to_string(),
        role: r.int("role")?,
    })
}

pub(crate) fn robot_row<'r>(r: &'r impl Columns<'r>) -> Result<Robot> {
    let permissions = r.text("permissions")?;
    Ok(Robot {
        id: r.int("id")?,
        name: r.text("name")?.to_string(),
        description: r.text("description")?.to_string(),
        secret: r.text("secret")?.to_string(),
        level: r.text("level")?.to_string(),
        project_id: r.int("project_id").ok(),
        duration: r.int("duration")?,
        expires_at: r.int("expires_at")?,
        disabled: r.int("disabled")? != 0,
        permissions: serde_json::from_str(permissions)
            .map_err(|e| MetaError::Corrupt(format!("robot permissions: {e}")))?,
        creator: r.text("creator")?.to_string(),
        created_at: r.int("created_at")?,
        updated_at: r.int("updated_at")?,
    })
}

pub(crate) fn key_row<'r>(r: &'r impl Columns<'r>) -> Result<SigningKey> {
    Ok(SigningKey {
        kid: r.text("kid")?.to_string(),
        private_key: r.text("private_key")?.to_string(),
        certificate: r.text("certificate")?.to_string(),
        created_at: r.int("created_at")?,
        retire_at: r.int("retire_at").ok(),
    })
}

pub(crate) fn audit_row<'r>(r: &'r impl Columns<'r>) -> Result<AuditEntry> {
    Ok(AuditEntry {
        id: r.int("id")?,
        at: r.int("at")?,
        username: r.text("username")?.to_string(),
        operation: r.text("operation")?.to_string(),
        resource_type: r.text("resource_type")?.to_string(),
        resource: r.text("resource")?.to_string(),
        client: r.text("client")?.to_string(),
        success: r.int("success")? != 0,
        detail: r.text("detail")?.to_string(),
    })
}

/// The `WHERE` clause of an audit query (placeholders numbered from 1: the text values first,
/// then the times) and the values to bind, in that order.
pub(crate) fn audit_filter(q: &AuditQuery) -> (String, Vec<String>, Vec<i64>) {
    let mut clauses = Vec::new();
    let mut texts = Vec::new();
    let mut n = 0;
    let mut text = |clauses: &mut Vec<String>, col: &str, v: &Option<String>, prefix: bool| {
        if let Some(v) = v {
            n += 1;
            if prefix {
                clauses.push(format!("substr({col}, 1, length(${n})) = ${n}"));
            } else {
                clauses.push(format!("{col} = ${n}"));
            }
            texts.push(v.clone());
        }
    };
    text(&mut clauses, "username", &q.username, false);
    text(&mut clauses, "operation", &q.operation, false);
    text(&mut clauses, "resource_type", &q.resource_type, false);
    text(&mut clauses, "resource", &q.resource, true);
    if let Some(p) = &q.project {
        n += 1;
        clauses.push(format!(
            "(resource = ${n} OR substr(resource, 1, length(${n}) + 1) = ${n} || '/')"
        ));
        texts.push(p.clone());
    }
    let mut ints = Vec::new();
    let mut n = texts.len();
    for (col, op, v) in [("at", ">=", q.from_ms), ("at", "<=", q.to_ms)] {
        if let Some(v) = v {
            n += 1;
            clauses.push(format!("{col} {op} ${n}"));
            ints.push(v);
        }
    }
    let clause = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    (clause, texts, ints)
}

/// `AccessStore` for a store type with a `reader()` and a `writer()` pool of one engine, given
/// the function turning `$N` statements into the engine's and the statement that, inside a
/// transaction, makes concurrent key rotations wait for each other.
macro_rules! access_store {
    ($store:ty, $sql:path, $lock_keys:expr) => {
        #[async_trait::async_trait]
        impl $crate::meta::access::AccessStore for $store {
            async fn create_user(
                &self,
                u: $crate::meta::access::NewUser,
                source: $crate::meta::access::UserSource,
            ) -> $crate::meta::Result<$crate::meta::access::User> {
                use $crate::meta::access::*;
                let now = now_ms();
                let sql = $sql(&format!(
                    "INSERT INTO users (username, email, realname, comment, password, source, \
                     ldap_dn, sysadmin, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) RETURNING {USER_COLUMNS}"
                ));
                let row = sqlx::query(&sql)
                    .bind(&u.username)
                    .bind(&u.email)
                    .bind(&u.realname)
                    .bind(&u.comment)
                    .bind(&u.password)
                    .bind(source.as_str())
                    .bind(&u.ldap_dn)
                    .bind(i64::from(u.sysadmin))
                    .bind(now)
                    .fetch_one(self.writer())
                    .await
                    .map_err(|e| conflict_or(e, &format!("user {}", u.username)))?;
                user_row(&row)
            }

            async fn user(&self, id: i64) -> $crate::meta::Result<Option<$crate::meta::access::User>> {
                use $crate::meta::access::*;
                let sql = $sql(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"));
                let row = sqlx::query(&sql).bind(id).fetch_optional(self.reader()).await?;
                row.as_ref().map(|r| user_row(r)).transpose()
            }

            async fn user_by_name(
                &self,
                username: &str,
            ) -> $crate::meta::Result<Option<$crate::meta::access::User>> {
                use $crate::meta::access::*;
                let sql = $sql(&format!("SELECT {USER_COLUMNS} FROM users WHERE username = $1"));
                let row = sqlx::query(&sql)
                    .bind(username)
                    .fetch_optional(self.reader())
                    .await?;
                row.as_ref().map(|r| user_row(r)).transpose()
            }

            async fn users(
                &self,
                name: Option<&str>,
                page: $crate::meta::access::PageRequest,
            ) -> $crate::meta::Result<$crate::meta::access::Listing<$crate::meta::access::User>> {
                use $crate::meta::access::*;
                let pattern = name.map(like_pattern).unwrap_or_else(|| "%".to_string());
                let sql = $sql(&format!(
                    "SELECT {USER_COLUMNS} FROM users WHERE username LIKE $1 ESCAPE '\\' \
                     ORDER BY id LIMIT $2 OFFSET $3"
                ));
                let rows = sqlx::query(&sql)
                    .bind(&pattern)
                    .bind(i64::from(page.page_size))
                    .bind(page.offset())
                    .fetch_all(self.reader())
                    .await?;
                let sql = $sql("SELECT count(*) AS n FROM users WHERE username LIKE $1 ESCAPE '\\'");
                let total: i64 = sqlx::query_scalar(&sql)
                    .bind(&pattern)
                    .fetch_one(self.reader())
                    .await?;
                Ok(Listing {
                    items: rows.iter().map(|r| user_row(r)).collect::<$crate::meta::Result<_>>()?,
                    total,
                })
            }

            async fn update_user(
                &self,
                id: i64,
                u: $crate::meta::access::UserUpdate,
            ) -> $crate::meta::Result<()> {
                use $crate::meta::access::*;
                let sql = $sql(
                    "UPDATE users SET email = COALESCE($1, email), \
                     realname = COALESCE($2, realname), comment = COALESCE($3, comment), \
                     password = COALESCE($4, password), sysadmin = COALESCE($5, sysadmin), \
                     updated_at = $6 WHERE id = $7",
                );
                let done = sqlx::query(&sql)
                    .bind(&u.email)
                    .bind(&u.realname)
                    .bind(&u.comment)
                    .bind(&u.password)
                    .bind(u.sysadmin.map(i64::from))
                    .bind(now_ms())
                    .bind(id)
                    .execute(self.writer())
                    .await?;
                found(done.rows_affected(), "user")
            }

            async fn delete_user(&self, id: i64) -> $crate::meta::Result<()> {
                use $crate::meta::access::*;
                let mut tx = self.writer().begin().await?;
                sqlx::query(&$sql(
                    "DELETE FROM project_members WHERE entity_type = 'u' AND entity_id = $1",
                ))
                .bind(id)
                .execute(&mut *tx)
                .await?;
                sqlx::query(&$sql("DELETE FROM user_group_members WHERE user_id = $1"))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                let done = sqlx::query(&$sql("DELETE FROM users WHERE id = $1"))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                found(done.rows_affected(), "user")?;
                tx.commit().await?;
                Ok(())
            }

            async fn ensure_group(
                &self,
                name: &str,
                ldap_dn: &str,
            ) -> $crate::meta::Result<$crate::meta::access::Group> {
                use $crate::meta::access::*;
                let sql = $sql(
                    "INSERT INTO user_groups (name, group_type, ldap_dn, created_at) \
                     VALUES ($1, 1, $2, $3) ON CONFLICT (ldap_dn) DO NOTHING",
                );
                sqlx::query(&sql)
                    .bind(name)
                    .bind(ldap_dn)
                    .bind(now_ms())
                    .execute(self.writer())
                    .await?;
                let sql = $sql(
                    "SELECT id, name, group_type, ldap_dn FROM user_groups WHERE ldap_dn = $1",
                );
                let row = sqlx::query(&sql).bind(ldap_dn).fetch_one(self.writer()).await?;
                group_row(&row)
            }

            async fn group(&self, id: i64) -> $crate::meta::Result<Option<$crate::meta::access::Group>> {
                use $crate::meta::access::*;
                let sql =
                    $sql("SELECT id, name, group_type, ldap_dn FROM user_groups WHERE id = $1");
                let row = sqlx::query(&sql).bind(id).fetch_optional(self.reader()).await?;
                row.as_ref().map(|r| group_row(r)).transpose()
            }

            async fn sync_directory_user(
                &self,
                d: &$crate::meta::access::DirectoryUser,
            ) -> $crate::meta::Result<($crate::meta::access::User, Vec<i64>)> {
                use $crate::meta::access::*;
                let now = now_ms();
                let mut tx = self.writer().begin().await?;
                let sql = $sql(&format!("SELECT {USER_COLUMNS} FROM users WHERE username = $1"));
                let row = sqlx::query(&sql)
                    .bind(&d.username)
                    .fetch_optional(&mut *tx)
                    .await?;
                let existing = row.as_ref().map(|r| user_row(r)).transpose()?;
                let (mut user, mut changed) = match existing {
                    Some(u) if u.source != UserSource::Ldap => {
                        return Err($crate::meta::MetaError::Conflict(format!(
                            "user {} is not an LDAP user",
                            d.username
                        )));
                    }
                    Some(u) => {
                        let same = u.email == d.email
                            && u.realname == d.realname
                            && u.ldap_dn.as_deref() == Some(d.ldap_dn.as_str())
                            && u.sysadmin == d.sysadmin;
                        (u, !same)
                    }
                    None => {
                        let sql = $sql(&format!(
                            "INSERT INTO users (username, email, realname, comment, password,                              source, ldap_dn, sysadmin, created_at, updated_at)                              VALUES ($1, $2, $3, '', NULL, $4, $5, $6, $7, $7)                              RETURNING {USER_COLUMNS}"
                        ));
                        let row = sqlx::query(&sql)
                            .bind(&d.username)
                            .bind(&d.email)
                            .bind(&d.realname)
                            .bind(UserSource::Ldap.as_str())
                            .bind(&d.ldap_dn)
                            .bind(i64::from(d.sysadmin))
                            .bind(now)
                            .fetch_one(&mut *tx)
                            .await
                            .map_err(|e| conflict_or(e, &format!("user {}", d.username)))?;
                        (user_row(&row)?, false)
                    }
                };
                let mut ids = Vec::with_capacity(d.groups.len());
                for (name, dn) in &d.groups {
                    let sql = $sql(
                        "INSERT INTO user_groups (name, group_type, ldap_dn, created_at)                          VALUES ($1, 1, $2, $3) ON CONFLICT (ldap_dn) DO NOTHING",
                    );
                    sqlx::query(&sql)
                        .bind(name)
                        .bind(dn)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    let sql = $sql("SELECT id FROM user_groups WHERE ldap_dn = $1");
                    let id: i64 = sqlx::query_scalar(&sql).bind(dn).fetch_one(&mut *tx).await?;
                    ids.push(id);
                }
                ids.sort_unstable();
                ids.dedup();
                let sql = $sql(
                    "SELECT group_id FROM user_group_members WHERE user_id = $1 ORDER BY group_id",
                );
                let current: Vec<i64> = sqlx::query_scalar(&sql)
                    .bind(user.id)
                    .fetch_all(&mut *tx)
                    .await?;
                if current != ids {
                    changed = true;
                    sqlx::query(&$sql("DELETE FROM user_group_members WHERE user_id = $1"))
                        .bind(user.id)
                        .execute(&mut *tx)
                        .await?;
                    let sql = $sql(
                        "INSERT INTO user_group_members (user_id, group_id) VALUES ($1, $2)",
                    );
                    for id in &ids {
                        sqlx::query(&sql)
                            .bind(user.id)
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                if changed {
                    let sql = $sql(
                        "UPDATE users SET email = $1, realname = $2, ldap_dn = $3, sysadmin = $4, \
                         updated_at = $5 WHERE id = $6",
                    );
                    sqlx::query(&sql)
                        .bind(&d.email)
                        .bind(&d.realname)
                        .bind(&d.ldap_dn)
                        .bind(i64::from(d.sysadmin))
                        .bind(now)
                        .bind(user.id)
                        .execute(&mut *tx)
                        .await?;
                    user.email = d.email.clone();
                    user.realname = d.realname.clone();
                    user.ldap_dn = Some(d.ldap_dn.clone());
                    user.sysadmin = d.sysadmin;
                    user.updated_at = now;
                }
                tx.commit().await?;
                Ok((user, ids))
            }

            async fn user_group_ids(&self, user_id: i64) -> $crate::meta::Result<Vec<i64>> {
                let sql = $sql(
                    "SELECT group_id FROM user_group_members WHERE user_id = $1 ORDER BY group_id",
                );
                Ok(sqlx::query_scalar(&sql)
                    .bind(user_id)
                    .fetch_all(self.reader())
                    .await?)
            }

            async fn create_project(
                &self,
                name: &str,
                public: bool,
                owner: Option<i64>,
            ) -> $crate::meta::Result<$crate::meta::access::Project> {
                use $crate::meta::access::*;
                let now = now_ms();
                let mut tx = self.writer().begin().await?;
                let sql = $sql(&format!(
                    "INSERT INTO projects (name, public, owner_id, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $4) RETURNING {PROJECT_COLUMNS}"
                ));
                let row = sqlx::query(&sql)
                    .bind(name)
                    .bind(i64::from(public))
                    .bind(owner)
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(|e| conflict_or(e, &format!("project {name}")))?;
                let project = project_row(&row)?;
                if let Some(owner) = owner {
                    let sql = $sql(
                        "INSERT INTO project_members (project_id, entity_type, entity_id, role, \
                         created_at, updated_at) VALUES ($1, 'u', $2, 1, $3, $3)",
                    );
                    sqlx::query(&sql)
                        .bind(project.id)
                        .bind(owner)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(project)
            }

            async fn project(&self, id: i64) -> $crate::meta::Result<Option<$crate::meta::access::Project>> {
                use $crate::meta::access::*;
                let sql = $sql(&format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE id = $1"));
                let row = sqlx::query(&sql).bind(id).fetch_optional(self.reader()).await?;
                row.as_ref().map(|r| project_row(r)).transpose()
            }

            async fn project_by_name(
                &self,
                name: &str,
            ) -> $crate::meta::Result<Option<$crate::meta::access::Project>> {
                use $crate::meta::access::*;
                let sql = $sql(&format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE name = $1"));
                let row = sqlx::query(&sql).bind(name).fetch_optional(self.reader()).await?;
                row.as_ref().map(|r| project_row(r)).transpose()
            }

            async fn projects(
                &self,
                name: Option<&str>,
                public: Option<bool>,
                visible_to: Option<(i64, &[i64])>,
                page: $crate::meta::access::PageRequest,
            ) -> $crate::meta::Result<$crate::meta::access::Listing<$crate::meta::access::Project>> {
                use $crate::meta::access::*;
                let pattern = name.map(like_pattern).unwrap_or_else(|| "%".to_string());
                let public = public.map(i64::from).unwrap_or(-1);
                let (user, groups) = visible_to.unwrap_or((-1, &[]));
                let all = i64::from(visible_to.is_none());
                let groups = groups
                    .iter()
                    .map(|g| g.to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                let group_clause = if groups.is_empty() {
                    String::new()
                } else {
                    format!(" OR (m.entity_type = 'g' AND m.entity_id IN ({groups}))")
                };
                let filter = format!(
                    "FROM projects p WHERE p.name LIKE $1 ESCAPE '\\' \
                     AND ($2 < 0 OR p.public = $2) \
                     AND ($3 = 1 OR p.public = 1 OR EXISTS (SELECT 1 FROM project_members m \
                     WHERE m.project_id = p.id AND ((m.entity_type = 'u' AND m.entity_id = $4)\
                     {group_clause})))"
                );
                let sql = $sql(&format!(
                    "SELECT p.id, p.name, p.public, p.owner_id, p.created_at, p.updated_at, \
                     p.storage_limit, p.delete_untagged, p.registry_id {filter} ORDER BY p.name LIMIT $5 OFFSET $6"
                ));
                let rows = sqlx::query(&sql)
                    .bind(&pattern)
                    .bind(public)
                    .bind(all)
                    .bind(user)
                    .bind(i64::from(page.page_size))
                    .bind(page.offset())
                    .fetch_all(self.reader())
                    .await?;
                let sql = $sql(&format!("SELECT count(*) AS n {filter}"));
                let total: i64 = sqlx::query_scalar(&sql)
                    .bind(&pattern)
                    .bind(public)
                    .bind(all)
                    .bind(user)
                    .fetch_one(self.reader())
                    .await?;
                Ok(Listing {
                    items: rows
                        .iter()
                        .map(|r| project_row(r))
                        .collect::<$crate::meta::Result<_>>()?,
                    total,
                })
            }

            async fn set_project_public(&self, id: i64, public: bool) -> $crate::meta::Result<()> {
                use $crate::meta::access::*;
                let sql = $sql("UPDATE projects SET public = $1, updated_at = $2 WHERE id = $3");
                let done = sqlx::query(&sql)
                    .bind(i64::from(public))
                    .bind(now_ms())
                    .bind(id)
                    .execute(self.writer())
                    .await?;
                found(done.rows_affected(), "project")
            }

            async fn projects_deleting_untagged(&self) -> $crate::meta::Result<i64> {
                let sql = $sql("SELECT count(*) FROM projects WHERE delete_untagged = 1");
                Ok(sqlx::query_scalar(&sql).fetch_one(self.reader()).await?)
            }

            async fn set_project_untagged(
                &self,
                id: i64,
                delete: Option<bool>,
            ) -> $crate::meta::Result<()> {
                use $crate::meta::access::*;
                let sql = $sql("UPDATE projects SET delete_untagged = $1, updated_at = $2 WHERE id = $3");
                let done = sqlx::query(&sql)
                    .bind(delete.map(i64::from))
                    .bind(now_ms())
                    .bind(id)
                    .execute(self.writer())
                    .await?;
                found(done.rows_affected(), "project")
            }

            async fn set_project_storage_limit(
                &self,
                id: i64,
                bytes: i64,
            ) -> $crate::meta::Result<()> {
                use $crate::meta::access::*;
                let sql = $sql("UPDATE projects SET storage_limit = $1, updated_at = $2 WHERE id = $3");
                let done = sqlx::query(&sql)
                    .bind(bytes)
                    .bind(now_ms())
                    .bind(id)
                    .execute(self.writer())
                    .await?;
                found(done.rows_affected(), "project")
            }

            async fn retention(
                &self,
                id: i64,
            ) -> $crate::meta::Result<Option<$crate::meta::access::RetentionRecord>> {
                use $crate::meta::access::*;
                let sql = $sql("SELECT id, project_id, policy, created_at, updated_at \
                     FROM retention_policies WHERE id = $1");
                let row = sqlx::query(&sql).bind(id).fetch_optional(self.reader()).await?;
                row.as_ref().map(|r| retention_row(r)).transpose()
            }

            async fn retention_of(
                &self,
                project_id: i64,
            ) -> $crate::meta::Result<Option<$crate::meta::access::RetentionRecord>> {
                use $crate::meta::access::*;
                let sql = $sql("SELECT id, project_id, policy, created_at, updated_at \
                     FROM retention_policies WHERE project_id = $1");
                let row = sqlx::query(&sql).bind(project_id).fetch_optional(self.reader()).await?;
                row.as_ref().map(|r| retention_row(r)).transpose()
            }

            async fn retention_policies(
                &self,
            ) -> $crate::meta::Result<Vec<$crate::meta::access::RetentionRecord>> {
                use $crate::meta::access::*;
                let sql = $sql("SELECT id, project_id, policy, created_at, updated_at \
                     FROM retention_policies ORDER BY id");
                let rows = sqlx::query(&sql).fetch_all(self.reader()).await?;
                rows.iter().map(|r| retention_row(r)).collect()
            }

            async fn create_retention(
                &self,
                project_id: i64,
                policy: &serde_json::Value,
            ) -> $crate::meta::Result<i64> {
                use $crate::meta::access::*;
                let sql = $sql("INSERT INTO retention_policies (project_id, policy, created_at, \
                     updated_at) VALUES ($1, $2, $3, $3) RETURNING id");
                sqlx::query_scalar(&sql)
                    .bind(project_id)
                    .bind(policy.to_string())
                    .bind(now_ms())
                    .fetch_one(self.writer())
                    .await
                    .map_err(|e| conflict_or(e, "a retention policy of this project"))
            }

            async fn update_retention(
                &self,
                id: i64,
                policy: &serde_json::Value,
            ) -> $crate::meta::Result<()> {
                use $crate::meta::access::*;
                let sql = $sql("UPDATE retention_policies SET policy = $1, updated_at = $2 WHERE id = $3");
                let done = sqlx::query(&sql)
                    .bind(policy.to_string())
                    .bind(now_ms())
                    .bind(id)
                    .execute(self.writer())
                    .await?;
                found(done.rows_affected(), "retention policy")
            }

            async fn delete_retention(&self, id: i64) -> $crate::meta::Result<()> {
                use $crate::meta::access::*;
                let sql = $sql("DELETE FROM retention_policies WHERE id = $1");
                let done = sqlx::query(&sql).bind(id).execute(self.writer()).await?;
                found(done.rows_affected(), "retention policy")
            }

            async fn add_retention_execution(
                &self,
                run: &$crate::meta::access::RetentionExecution,
            ) -> $crate::meta::Result<i64> {
                let sql = $sql("INSERT INTO retention_executions (policy_id, dry_run, trigger_kind, \
                     status, started_at, finished_at, tasks) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     RETURNING id");
                Ok(sqlx::query_scalar(&sql)
                    .bind(run.policy_id)
                    .bind(i64::from(run.dry_run))
                    .bind(&run.trigger)
                    .bind(&run.status)
                    .bind(run.started_at)
                    .bind(run.finished_at)
                    .bind(run.tasks.to_string())
                    .fetch_one(self.writer())
                    .await?)
            }

            async fn retention_executions(
                &self,
                policy_id: i64,
                page: $crate::meta::access::PageRequest,
            ) -> $crate::meta::Result<
                $crate::meta::access::Listing<$crate::meta::access::RetentionExecution>,
            > {
                use $crate::meta::access::*;
                let sql = $sql("SELECT id, policy_id, dry_run, trigger_kind, status, started_at, \
                     finished_at, tasks FROM retention_executions WHERE policy_id = $1 \
                     ORDER BY id DESC LIMIT $2 OFFSET $3");
                let rows = sqlx::query(&sql)
                    .bind(policy_id)
                    .bind(i64::from(page.page_size))
                    .bind(page.offset())
                    .fetch_all(self.reader())
                    .await?;
                let sql = $sql("SELECT count(*) FROM retention_executions WHERE policy_id = $1");
                let total: i64 = sqlx::query_scalar(&sql)
                    .bind(policy_id)
                    .fetch_one(self.reader())
                    .await?;
                Ok(Listing {
                    items: rows
                        .iter()
                        .map(|r| execution_row(r))
                        .collect::<$crate::meta::Result<_>>()?,
                    total,
                })
            }

            async fn immutable_rules(
                &self,
                project_id: i64,
            ) -> $crate::meta::Result<Vec<$crate::meta::access::ImmutableRule>> {
                use $crate::meta::access::*;
                let sql = $sql(&format!(
                    "SELECT {RULE_COLUMNS} FROM immutable_rules WHERE project_id = $1 \
                     ORDER BY priority, id"
                ));
                let rows = sqlx::query(&sql).bind(project_id).fetch_all(self.reader()).await?;
                rows.iter().map(|r| rule_row(r)).collect()
            }

            async fn create_immutable_rule(
                &self,
                rule: &$crate::meta::access::ImmutableRule,
            ) -> $crate::meta::Result<i64> {
                use $crate::meta::access::*;
                let sql = $sql(
                    "INSERT INTO immutable_rules (project_id, priority, disabled, tag_pattern, \
                     tag_decoration, repo_pattern, repo_decoration, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) RETURNING id",
                );
                Ok(sqlx::query_scalar(&sql)
                    .bind(rule.project_id)
                    .bind(rule.priority)
                    .bind(i64::from(rule.disabled))
                    .bind(&rule.tag_pattern)
                    .bind(&rule.tag_decoration)
                    .bind(&rule.repo_pattern)
                    .bind(&rule.repo_decoration)
                    .bind(now_ms())
                    .fetch_one(self.writer())
                    .await?)
            }

            async fn update_immutable_rule(
                &self,
                rule: &$crate::meta::access::ImmutableRule,
            ) -> $crate::meta::Result<()> {
                use $crate::meta::access::*;
                let sql = $sql(
                    "UPDATE immutable_rules SET priority = $1, disabled = $2, tag_pattern = $3, \
                     tag_decoration = $4, repo_pattern = $5, repo_decoration = $6, updated_at = $7 \
                     WHERE id = $8 AND project_id = $9",
                );
                let done = sqlx::query(&sql)
                    .bind(rule.priority)
                    .bind(i64::from(rule.disabled))
                    .bind(&rule.tag_pattern)
                    .bind(&rule.tag_decoration)
                    .bind(&rule.repo_pattern)
                    .bind(&rule.repo_decoration)
                    .bind(now_ms())
                    .bind(rule.id)
                    .bind(rule.project_id)
                    .execute(self.writer())
                    .await?;
                found(done.rows_affected(), "immutable tag rule")
            }

            async fn delete_immutable_rule(
                &self,
                project_id: i64,
                id: i64,
            ) -> $crate::meta::Result<()> {
                use $crate::meta::access::*;
                let sql = $sql("DELETE FROM immutable_rules WHERE id = $1 AND project_id = $2");
                let done = sqlx::query(&sql)
                    .bind(id)
                    .bind(project_id)
                    .execute(self.writer())
                    .await?;
                found(done.rows_affected(), "immutable tag rule")
            }

            async fn delete_project(&self, id: i64) -> $crate::meta::Result<()> {
                use $crate::meta::access::*;
                let mut tx = self.writer().begin().await?;
                for table in [
                    "project_members",
                    "robots",
                    "immutable_rules",
                    "retention_policies",
                ] {
                    sqlx::query(&$sql(&format!("DELETE FROM {table} WHERE project_id = $1")))
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
                let done = sqlx::query(&$sql("DELETE FROM projects WHERE id = $1"))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                found(done.rows_affected(), "project")?;
                tx.commit().await?;
                Ok(())
            }

            async fn set_project_registry(
                &self,
                id: i64,
                registry_id: Option<i64>,
            ) -> $crate::meta::Result<()> {
                use $crate::meta::access::*;
                let sql = $sql("UPDATE projects SET registry_id = $1, updated_at = $2 WHERE id = $3");
                let done = sqlx::query(&sql)
                    .bind(registry_id)
                    .bind(now_ms())
                    .bind(id)
                    .execute(self.writer())
                    .await?;
                found(done.rows_affected(), "project")
            }

            async fn create_registry(
                &self,
                r: &$crate::meta::access::RegistryRecord,
            ) -> $crate::meta::Result<$crate::meta::access::RegistryRecord> {
                use $crate::meta::access::*;
                let sql = $sql(&format!(
                    "INSERT INTO registries (name, type, url, credential_type, access_key, \
                     access_secret, insecure, description, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) RETURNING {REGISTRY_COLUMNS}"
                ));
                let row = sqlx::query(&sql)
                    .bind(&r.name)
                    .bind(&r.kind)
                    .bind(&r.url)
                    .bind(&r.credential_type)
                    .bind(&r.access_key)
                    .bind(&r.access_secret)
                    .bind(i64::from(r.insecure))
                    .bind(&r.description)
                    .bind(now_ms())
                    .fetch_one(self.writer())
                    .await
                    .map_err(|e| conflict_or(e, &format!("registry {}", r.name)))?;
                registry_row(&row)
            }

            async fn registry(
                &self,
                id: i64,
            ) -> $crate::meta::Result<Option<$crate::meta::access::RegistryRecord>> {
                use $crate::meta::access::*;
                let sql = $sql(&format!("SELECT {REGISTRY_COLUMNS} FROM registries WHERE id = $1"));
                let row = sqlx::query(&sql).bind(id).fetch_optional(self.reader()).await?;
                row.as_ref().map(|r| registry_row(r)).transpose()
            }

            async fn registries(
                &self,
                name: Option<&str>,
                page: $crate::meta::access::PageRequest,
            ) -> $crate::meta::Result<$crate::meta::access::Listing<$crate::meta::access::RegistryRecord>> {
                use $crate::meta::access::*;
                let pattern = name.map(like_pattern).unwrap_or_else(|| "%".to_string());
                let sql = $sql(&format!(
                    "SELECT {REGISTRY_COLUMNS} FROM registries WHERE name LIKE $1 ESCAPE '\\' \
                     ORDER BY id LIMIT $2 OFFSET $3"
                ));
                let rows = sqlx::query(&sql)
                    .bind(&pattern)
                    .bind(i64::from(page.page_size))
                    .bind(page.offset())
                    .fetch_all(self.reader())
                    .await?;
                let total: i64 = sqlx::query_scalar(&$sql(
                    "SELECT COUNT(*) FROM registries WHERE name LIKE $1 ESCAPE '\\'",
                ))
                .bind(&pattern)
                .fetch_one(self.reader())
                .await?;
                Ok(Listing {
                    items: rows.iter().map(|r| registry_row(r)).collect::<$crate::meta::Result<_>>()?,
                    total,
                })
            }

            async fn update_registry(
                &self,
                r: &$crate::meta::access::RegistryRecord,
            ) -> $crate::meta::Result<()> {
                use $crate::meta::access::*;
                let sql = $sql(
                    "UPDATE registries SET name = $1, type = $2, url = $3, credential_type = $4, \
                     access_key = $5, access_secret = $6, insecure = $7, description = $8, \
                     updated_at = $9 WHERE id = $10",
                );
                let done = sqlx::query(&sql)
                    .bind(&r.name)
                    .bind(&r.kind)
                    .bind(&r.url)
                    .bind(&r.credential_type)
                    .bind(&r.access_key)
                    .bind(&r.access_secret)
                    .bind(i64::from(r.insecure))
                    .bind(&r.description)
                    .bind(now_ms())
                    .bind(r.id)
                    .execute(self.writer())
                    .await
                    .map_err(|e| conflict_or(e, &format!("registry {}", r.name)))?;
                found(done.rows_affected(), "registry")
            }

            async fn delete_registry(&self, id: i64) -> $crate::meta::Result<()> {
                use $crate::meta::access::*;
                let mut tx = self.writer().begin().await?;
                let users: i64 =
                    sqlx::query_scalar(&$sql("SELECT COUNT(*) FROM projects WHERE registry_id = $1"))
                        .bind(id)
                        .fetch_one(&mut *tx)
                        .await?;
                if users > 0 {
                    return Err($crate::meta::MetaError::Conflict(format!(
                        "registry {id} is mirrored by {users} project(s): delete them first"
                    )));
                }
                let done = sqlx::query(&$sql("DELETE FROM registries WHERE id = $1"))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                found(done.rows_affected(), "registry")?;
                tx.commit().await?;
                Ok(())
            }

            async fn add_member(
                &self,
                project_id: i64,
                entity: $crate::meta::access::MemberEntity,
                role: i64,
            ) -> $crate::meta::Result<i64> {
                use $crate::meta::access::*;
                let (kind, entity_id) = entity.parts();
                let sql = $sql(
                    "INSERT INTO project_members (project_id, entity_type, entity_id, role, \
                     created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5) RETURNING id",
                );
                sqlx::query_scalar(&sql)
                    .bind(project_id)
                    .bind(kind)
                    .bind(entity_id)
                    .bind(role)
                    .bind(now_ms())
                    .fetch_one(self.writer())
                    .await
                    .map_err(|e| conflict_or(e, "the member"))
            }

            async fn members(
                &self,
                project_id: i64,
            ) -> $crate::meta::Result<Vec<$crate::meta::access::Member>> {
                use $crate::meta::access::*;
                let sql = $sql(&format!("{MEMBER_SELECT} WHERE m.project_id = $1 ORDER BY m.id"));
                let rows = sqlx::query(&sql).bind(project_id).fetch_all(self.reader()).await?;
                rows.iter().map(|r| member_row(r)).collect()
            }

            async fn member(
                &self,
                project_id: i64,
                member_id: i64,
            ) -> $crate::meta::Result<Option<$crate::meta::access::Member>> {
                use $crate::meta::access::*;
                let sql =
                    $sql(&format!("{MEMBER_SELECT} WHERE m.project_id = $1 AND m.id = $2"));
                let row = sqlx::query(&sql)
                    .bind(project_id)
                    .bind(member_id)
                    .fetch_optional(self.reader())
                    .await?;
                row.as_ref().map(|r| member_row(r)).transpose()
            }

            async fn set_member_role(
                &self,
                project_id: i64,
                member_id: i64,
                role: i64,
            ) -> $crate::meta::Result<()> {
                use $crate::meta::access::*;
                let sql = $sql(
                    "UPDATE project_members SET role = $1, updated_at = $2 \
                     WHERE project_id = $3 AND id = $4",
                );
                let done = sqlx::query(&sql)
                    .bind(role)
                    .bind(now_ms())
                    .bind(project_id)
                    .bind(member_id)
                    .execute(self.writer())
                    .await?;
                found(done.rows_affected(), "member")
            }

            async fn delete_member(&self, project_id: i64, member_id: i64) -> $crate::meta::Result<()> {
                use $crate::meta::access::*;
                let sql = $sql("DELETE FROM project_members WHERE project_id = $1 AND id = $2");
                let done = sqlx::query(&sql)
                    .bind(project_id)
                    .bind(member_id)
                    .execute(self.writer())
                    .await?;
                found(done.rows_affected(), "member")
            }

            async fn roles(
                &self,
                project_id: i64,
                user_id: i64,
                groups: &[i64],
            ) -> $crate::meta::Result<Vec<i64>> {
                let groups = groups
                    .iter()
                    .map(|g| g.to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                let group_clause = if groups.is_empty() {
                    String::new()
                } else {
                    format!(" OR (entity_type = 'g' AND entity_id IN ({groups}))")
                };
                let sql = $sql(&format!(
                    "SELECT role FROM project_members WHERE project_id = $1 \
                     AND ((entity_type = 'u' AND entity_id = $2){group_clause})"
                ));
                Ok(sqlx::query_scalar(&sql)
                    .bind(project_id)
                    .bind(user_id)
                    .fetch_all(self.reader())
                    .await?)
            }

            async fn create_robot(
                &self,
                r: $crate::meta::access::Robot,
            ) -> $crate::meta::Result<$crate::meta::access::Robot> {
                use $crate::meta::access::*;
                let now = now_ms();
                let sql = $sql(&format!(
                    "INSERT INTO robots (name, description, secret, level, project_id, duration, \
                     expires_at, disabled, permissions, creator, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) \
                     RETURNING {ROBOT_COLUMNS}"
                ));
                let row = sqlx::query(&sql)
                    .bind(&r.name)
                    .bind(&r.description)
                    .bind(&r.secret)
                    .bind(&r.level)
                    .bind(r.project_id)
                    .bind(r.duration)
                    .bind(r.expires_at)
                    .bind(i64::from(r.disabled))
                    .bind(r.permissions.to_string())
                    .bind(&r.creator)
                    .bind(now)
                    .fetch_one(self.writer())
                    .await
                    .map_err(|e| conflict_or(e, &format!("robot {}", r.name)))?;
                robot_row(&row)
            }

            async fn robot(&self, id: i64) -> $crate::meta::Result<Option<$crate::meta::access::Robot>> {
                use $crate::meta::access::*;
                let sql = $sql(&format!("SELECT {ROBOT_COLUMNS} FROM robots WHERE id = $1"));
                let row = sqlx::query(&sql).bind(id).fetch_optional(self.reader()).await?;
                row.as_ref().map(|r| robot_row(r)).transpose()
            }

            async fn robot_by_name(
                &self,
                name: &str,
            ) -> $crate::meta::Result<Option<$crate::meta::access::Robot>> {
                use $crate::meta::access::*;
                let sql = $sql(&format!("SELECT {ROBOT_COLUMNS} FROM robots WHERE name = $1"));
                let row = sqlx::query(&sql).bind(name).fetch_optional(self.reader()).await?;
                row.as_ref().map(|r| robot_row(r)).transpose()
            }

            async fn robots(
                &self,
                project_id: Option<i64>,
                page: $crate::meta::access::PageRequest,
            ) -> $crate::meta::Result<$crate::meta::access::Listing<$crate::meta::access::Robot>> {
                use $crate::meta::access::*;
                let project = project_id.unwrap_or(-1);
                let filter = "FROM robots WHERE ($1 < 0 OR project_id = $1)";
                let sql = $sql(&format!(
                    "SELECT {ROBOT_COLUMNS} {filter} ORDER BY id LIMIT $2 OFFSET $3"
                ));
                let rows = sqlx::query(&sql)
                    .bind(project)
                    .bind(i64::from(page.page_size))
                    .bind(page.offset())
                    .fetch_all(self.reader())
                    .await?;
                let total: i64 = sqlx::query_scalar(&$sql(&format!("SELECT count(*) {filter}")))
                    .bind(project)
                    .fetch_one(self.reader())
                    .await?;
                Ok(Listing {
                    items: rows.iter().map(|r| robot_row(r)).collect::<$crate::meta::Result<_>>()?,
                    total,
                })
            }

            async fn update_robot(&self, r: &$crate::meta::access::Robot) -> $crate::meta::Result<()> {
                use $crate::meta::access::*;
                let sql = $sql(
                    "UPDATE robots SET description = $1, secret = $2, disabled = $3, \
                     duration = $4, expires_at = $5, permissions = $6, updated_at = $7 \
                     WHERE id = $8",
                );
                let done = sqlx::query(&sql)
                    .bind(&r.description)
                    .bind(&r.secret)
                    .bind(i64::from(r.disabled))
                    .bind(r.duration)
                    .bind(r.expires_at)
                    .bind(r.permissions.to_string())
                    .bind(now_ms())
                    .bind(r.id)
                    .execute(self.writer())
                    .await?;
                found(done.rows_affected(), "robot")
            }

            async fn delete_robot(&self, id: i64) -> $crate::meta::Result<()> {
                use $crate::meta::access::*;
                let done = sqlx::query(&$sql("DELETE FROM robots WHERE id = $1"))
                    .bind(id)
                    .execute(self.writer())
                    .await?;
                found(done.rows_affected(), "robot")
            }

            async fn signing_keys(
                &self,
                at: i64,
            ) -> $crate::meta::Result<Vec<$crate::meta::access::SigningKey>> {
                use $crate::meta::access::*;
                let sql = $sql(
                    "SELECT kid, private_key, certificate, created_at, retire_at FROM signing_keys \
                     WHERE retire_at IS NULL OR retire_at > $1 ORDER BY created_at DESC, kid",
                );
                let rows = sqlx::query(&sql).bind(at).fetch_all(self.reader()).await?;
                rows.iter().map(|r| key_row(r)).collect()
            }

            async fn add_signing_key(
                &self,
                key: $crate::meta::access::SigningKey,
                unless_newer_than: i64,
                retire_others_at: i64,
            ) -> $crate::meta::Result<bool> {
                let mut tx = self.writer().begin().await?;
                // Taken first, so concurrent rotations serialise on it.
                sqlx::query($lock_keys)
                .execute(&mut *tx)
                .await?;
                let newer: i64 = sqlx::query_scalar(&$sql(
                    "SELECT count(*) FROM signing_keys WHERE created_at > $1",
                ))
                .bind(unless_newer_than)
                .fetch_one(&mut *tx)
                .await?;
                if newer > 0 {
                    return Ok(false);
                }
                sqlx::query(&$sql(
                    "UPDATE signing_keys SET retire_at = $1 WHERE retire_at IS NULL",
                ))
                .bind(retire_others_at)
                .execute(&mut *tx)
                .await?;
                sqlx::query(&$sql(
                    "INSERT INTO signing_keys (kid, private_key, certificate, created_at) \
                     VALUES ($1, $2, $3, $4)",
                ))
                .bind(&key.kid)
                .bind(&key.private_key)
                .bind(&key.certificate)
                .bind(key.created_at)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn audit(
                &self,
                entries: Vec<$crate::meta::access::AuditEntry>,
            ) -> $crate::meta::Result<()> {
                let mut tx = self.writer().begin().await?;
                let sql = $sql($crate::meta::access::AUDIT_INSERT);
                for e in &entries {
                    $crate::meta::access::bind_audit(sqlx::query(&sql), e)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn audit_log(
                &self,
                query: &$crate::meta::access::AuditQuery,
                page: $crate::meta::access::PageRequest,
            ) -> $crate::meta::Result<$crate::meta::access::Listing<$crate::meta::access::AuditEntry>>
            {
                use $crate::meta::access::*;
                let (clause, texts, ints) = audit_filter(query);
                let n = texts.len() + ints.len();
                let sql = $sql(&format!(
                    "SELECT {AUDIT_COLUMNS} FROM audit_log {clause} ORDER BY id DESC \
                     LIMIT ${} OFFSET ${}",
                    n + 1,
                    n + 2
                ));
                let mut q = sqlx::query(&sql);
                for t in &texts {
                    q = q.bind(t);
                }
                for i in &ints {
                    q = q.bind(*i);
                }
                let rows = q
                    .bind(i64::from(page.page_size))
                    .bind(page.offset())
                    .fetch_all(self.reader())
                    .await?;
                let sql = $sql(&format!("SELECT count(*) FROM audit_log {clause}"));
                let mut q = sqlx::query_scalar(&sql);
                for t in &texts {
                    q = q.bind(t);
                }
                for i in &ints {
                    q = q.bind(*i);
                }
                let total: i64 = q.fetch_one(self.reader()).await?;
                Ok(Listing {
                    items: rows.iter().map(|r| audit_row(r)).collect::<$crate::meta::Result<_>>()?,
                    total,
                })
            }

            async fn prune_audit(&self, before_ms: i64) -> $crate::meta::Result<u64> {
                let done = sqlx::query(&$sql("DELETE FROM audit_log WHERE at < $1"))
                    .bind(before_ms)
                    .execute(self.writer())
                    .await?;
                Ok(done.rows_affected())
            }

            async fn count_failure(&self, key: &str, window_ms: i64) -> $crate::meta::Result<i64> {
                use $crate::meta::access::*;
                let now = now_ms();
                let sql = $sql(
                    "INSERT INTO login_failures (key, count, window_start) VALUES ($1, 1, $2) \
                     ON CONFLICT (key) DO UPDATE SET \
                     count = CASE WHEN login_failures.window_start > $2 - $3 \
                         THEN login_failures.count + 1 ELSE 1 END, \
                     window_start = CASE WHEN login_failures.window_start > $2 - $3 \
                         THEN login_failures.window_start ELSE $2 END \
                     RETURNING count",
                );
                Ok(sqlx::query_scalar(&sql)
                    .bind(key)
                    .bind(now)
                    .bind(window_ms)
                    .fetch_one(self.writer())
                    .await?)
            }

            async fn failures(&self, key: &str, window_ms: i64) -> $crate::meta::Result<(i64, i64)> {
                use $crate::meta::access::*;
                let sql = $sql(
                    "SELECT count, window_start FROM login_failures \
                     WHERE key = $1 AND window_start > $2",
                );
                let row: Option<(i64, i64)> = sqlx::query_as(&sql)
                    .bind(key)
                    .bind(now_ms() - window_ms)
                    .fetch_optional(self.reader())
                    .await?;
                Ok(row.unwrap_or((0, 0)))
            }

            async fn clear_failures(&self, key: &str) -> $crate::meta::Result<()> {
                sqlx::query(&$sql("DELETE FROM login_failures WHERE key = $1"))
                    .bind(key)
                    .execute(self.writer())
                    .await?;
                Ok(())
            }

            async fn repository_summaries(
                &self,
                prefix: &str,
                name: Option<&str>,
                page: $crate::meta::access::PageRequest,
            ) -> $crate::meta::Result<
                $crate::meta::access::Listing<$crate::meta::access::RepositorySummary>,
            > {
                use $crate::meta::access::*;
                let pattern = name.map(like_pattern).unwrap_or_else(|| "%".to_string());
                let sql = $sql(&format!(
                    "SELECT r.id, r.name, r.created_at, r.pull_count, \
                     (SELECT count(*) FROM manifests m WHERE m.repo_id = r.id {TOP_LEVEL}) \
                     AS artifact_count, \
                     (SELECT max(m.created_at) FROM manifests m WHERE m.repo_id = r.id) \
                     AS updated_at {REPOSITORY_FILTER} ORDER BY r.name LIMIT $3 OFFSET $4"
                ));
                let rows = sqlx::query(&sql)
                    .bind(prefix)
                    .bind(&pattern)
                    .bind(i64::from(page.page_size))
                    .bind(page.offset())
                    .fetch_all(self.reader())
                    .await?;
                let sql = $sql(&format!("SELECT count(*) {REPOSITORY_FILTER}"));
                let total: i64 = sqlx::query_scalar(&sql)
                    .bind(prefix)
                    .bind(&pattern)
                    .fetch_one(self.reader())
                    .await?;
                Ok(Listing {
                    items: rows
                        .iter()
                        .map(|r| repository_row(r))
                        .collect::<$crate::meta::Result<_>>()?,
                    total,
                })
            }

            async fn artifact_summaries(
                &self,
                repo: &$crate::oci::name::RepoName,
                which: $crate::meta::access::ArtifactSelection<'_>,
                page: $crate::meta::access::PageRequest,
            ) -> $crate::meta::Result<
                $crate::meta::access::Listing<$crate::meta::access::ArtifactSummary>,
            > {
                use $crate::meta::access::*;
                let (digest, filter) = artifact_filter(which);
                let sql = $sql(&format!(
                    "SELECT m.digest, m.media_type, m.artifact_type, m.created_at, m.pulled_at, \
                     m.size + COALESCE(CAST((SELECT sum(b.size) FROM manifest_refs f \
                     JOIN repo_blobs b ON b.repo_id = f.repo_id AND b.digest = f.target \
                     WHERE f.repo_id = m.repo_id AND f.manifest = m.digest AND f.kind = 'blob') \
                     AS BIGINT), 0) AS size {filter} \
                     ORDER BY m.created_at DESC, m.digest LIMIT $3 OFFSET $4"
                ));
                let rows = sqlx::query(&sql)
                    .bind(repo.as_str())
                    .bind(&digest)
                    .bind(i64::from(page.page_size))
                    .bind(page.offset())
                    .fetch_all(self.reader())
                    .await?;
                let sql = $sql(&format!("SELECT count(*) {filter}"));
                let total: i64 = sqlx::query_scalar(&sql)
                    .bind(repo.as_str())
                    .bind(&digest)
                    .fetch_one(self.reader())
                    .await?;
                let mut items: Vec<ArtifactSummary> = rows
                    .iter()
                    .map(|r| artifact_row(r))
                    .collect::<$crate::meta::Result<_>>()?;
                if !items.is_empty() {
                    // One query for the tags of the whole page.
                    let marks = (0..items.len())
                        .map(|i| format!("${}", i + 2))
                        .collect::<Vec<_>>()
                        .join(", ");
                    let sql = $sql(&format!(
                        "SELECT t.name, t.digest, t.updated_at, t.pulled_at FROM tags t \
                         JOIN repositories r ON r.id = t.repo_id \
                         WHERE r.name = $1 AND t.digest IN ({marks}) ORDER BY t.name"
                    ));
                    let mut q = sqlx::query(&sql).bind(repo.as_str());
                    for a in &items {
                        q = q.bind(a.digest.to_string());
                    }
                    for row in q.fetch_all(self.reader()).await? {
                        let (digest, tag) = tag_row(&row)?;
                        if let Some(a) = items.iter_mut().find(|a| a.digest.to_string() == digest) {
                            a.tags.push(tag);
                        }
                    }
                    // And one for the children of the indexes among them.
                    let sql = $sql(&format!(
                        "SELECT f.manifest, f.target FROM manifest_refs f \
                         JOIN repositories r ON r.id = f.repo_id WHERE r.name = $1 \
                         AND f.kind = 'manifest' AND f.manifest IN ({marks}) ORDER BY f.target"
                    ));
                    let mut q = sqlx::query(&sql).bind(repo.as_str());
                    for a in &items {
                        q = q.bind(a.digest.to_string());
                    }
                    for row in q.fetch_all(self.reader()).await? {
                        let (parent, child) = child_row(&row)?;
                        if let Some(a) = items.iter_mut().find(|a| a.digest.to_string() == parent) {
                            a.children.push(child);
                        }
                    }
                }
                Ok(Listing { items, total })
            }
        }
    };
}
pub(crate) use access_store;

/// A membership row with the name of its user or group.
pub(crate) const MEMBER_SELECT: &str = "SELECT m.id, m.project_id, m.entity_type, m.entity_id, \
     m.role, COALESCE(u.username, g.name) AS entity_name FROM project_members m \
     LEFT JOIN users u ON m.entity_type = 'u' AND u.id = m.entity_id \
     LEFT JOIN user_groups g ON m.entity_type = 'g' AND g.id = m.entity_id";

/// A `LIKE` pattern matching names that contain `s` literally.
pub(crate) fn like_pattern(s: &str) -> String {
    let escaped = s
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// `NotFound` when an update or delete touched no row.
pub(crate) fn found(rows: u64, what: &str) -> Result<()> {
    if rows == 0 {
        return Err(MetaError::NotFound(what.to_string()));
    }
    Ok(())
}

/// The rows `repository_summaries` lists: `$1` the name prefix, `$2` a `LIKE` pattern.
pub(crate) const REPOSITORY_FILTER: &str = "FROM repositories r \
     WHERE substr(r.name, 1, length($1)) = $1 AND r.name LIKE $2 ESCAPE '\\' \
     AND EXISTS (SELECT 1 FROM manifests m WHERE m.repo_id = r.id)";

/// The condition on `manifests m` that keeps what Harbor lists as artifacts.
pub(crate) const TOP_LEVEL: &str = "AND m.subject IS NULL AND NOT EXISTS (SELECT 1 \
     FROM manifest_refs f WHERE f.repo_id = m.repo_id AND f.target = m.digest \
     AND f.kind = 'manifest')";

/// The digest to bind as `$2` (`''` for none) and the rows `artifact_summaries` lists of the
/// repository bound as `$1`.
pub(crate) fn artifact_filter(which: ArtifactSelection<'_>) -> (String, String) {
    let (digest, extra) = match which {
        ArtifactSelection::TopLevel => (String::new(), TOP_LEVEL),
        ArtifactSelection::All => (String::new(), ""),
        ArtifactSelection::Digest(d) => (d.to_string(), ""),
    };
    let filter = format!(
        "FROM manifests m JOIN repositories r ON r.id = m.repo_id \
         WHERE r.name = $1 AND ($2 = '' OR m.digest = $2) {extra}"
    );
    (digest, filter)
}

/// A row of `manifest, target` from `manifest_refs`: an index and one of its children.
pub(crate) fn child_row<'r>(r: &'r impl Columns<'r>) -> Result<(String, Digest)> {
    Ok((
        r.text("manifest")?.to_string(),
        parse_digest(r.text("target")?)?,
    ))
}

pub(crate) fn repository_row<'r>(r: &'r impl Columns<'r>) -> Result<RepositorySummary> {
    let created_at = r.int("created_at")?;
    Ok(RepositorySummary {
        id: r.int("id")?,
        name: parse_repo(r.text("name")?)?,
        artifact_count: r.int("artifact_count")?,
        created_at,
        updated_at: r.int("updated_at").unwrap_or(created_at),
        pull_count: r.int("pull_count")?,
    })
}

pub(crate) fn artifact_row<'r>(r: &'r impl Columns<'r>) -> Result<ArtifactSummary> {
    Ok(ArtifactSummary {
        digest: parse_digest(r.text("digest")?)?,
        media_type: r.text("media_type")?.to_string(),
        artifact_type: r.maybe_text("artifact_type")?.map(String::from),
        size: r.int("size")?,
        pushed_at: r.int("created_at")?,
        pulled_at: r.maybe_int("pulled_at")?,
        tags: Vec::new(),
        children: Vec::new(),
    })
}

/// A row of `name, digest, updated_at, pulled_at` from `tags`: the digest and the tag.
pub(crate) fn tag_row<'r>(r: &'r impl Columns<'r>) -> Result<(String, TagSummary)> {
    Ok((
        r.text("digest")?.to_string(),
        TagSummary {
            name: r.text("name")?.to_string(),
            pushed_at: r.int("updated_at")?,
            pulled_at: r.maybe_int("pulled_at")?,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::sqlite::SqliteMetaStore;
    use crate::meta::{Change, Dependency, ManifestRecord, MetaStore};
    use crate::oci::digest::{Algorithm, Digest};

    fn page(page: u32, page_size: u32) -> PageRequest {
        PageRequest { page, page_size }
    }

    /// Pushes a manifest of `size` bytes referencing one blob of 100 bytes, tagged `tags`.
    async fn push(store: &SqliteMetaStore, repo: &str, seed: &str, tags: &[&str]) -> Digest {
        let repo: RepoName = repo.parse().unwrap();
        let blob = Digest::of(Algorithm::Sha256, format!("blob {seed}").as_bytes());
        let digest = Digest::of(Algorithm::Sha256, format!("manifest {seed}").as_bytes());
        let mut changes = vec![
            Change::LinkBlob {
                repo: repo.clone(),
                digest: blob.clone(),
                size: 100,
                mounted_from: None,
            },
            Change::PutManifest {
                repo: repo.clone(),
                manifest: ManifestRecord {
                    digest: digest.clone(),
                    media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                    size: 10,
                    artifact_type: None,
                    subject: None,
                    annotations: None,
                },
                blobs: vec![Dependency {
                    digest: blob,
                    required: true,
                }],
                children: Vec::new(),
            },
        ];
        for t in tags {
            changes.push(Change::SetTag {
                repo: repo.clone(),
                tag: t.parse().unwrap(),
                digest: digest.clone(),
            });
        }
        store.apply(changes).await.unwrap();
        digest
    }

    #[tokio::test]
    async fn pulls_move_pull_times_forward_and_count_per_repository() {
        use crate::meta::PullRecord;
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteMetaStore::open(&dir.path().join("meta.db"))
            .await
            .unwrap();
        let one = push(&store, "team/app", "1", &["v1", "latest"]).await;
        let two = push(&store, "team/app", "2", &["old"]).await;
        let app: RepoName = "team/app".parse().unwrap();
        let record = |digest: &Digest, tag: Option<&str>, at: i64, count: u64| PullRecord {
            repo: app.clone(),
            digest: digest.clone(),
            tag: tag.map(|t| t.parse().unwrap()),
            at,
            count,
        };
        store
            .apply(vec![Change::RecordPulls(vec![
                record(&one, Some("v1"), 1000, 3),
                record(&one, None, 900, 1),
                // A tag pulled while it pointed at another manifest is not this one's.
                record(&two, Some("latest"), 2000, 1),
                // Nothing of a repository that does not exist.
                PullRecord {
                    repo: "team/gone".parse().unwrap(),
                    ..record(&one, None, 5, 1)
                },
            ])])
            .await
            .unwrap();
        // An older time never moves a pull time back.
        store
            .apply(vec![Change::RecordPulls(vec![record(
                &one,
                Some("v1"),
                10,
                1,
            )])])
            .await
            .unwrap();
        let arts = store
            .artifact_summaries(&app, ArtifactSelection::All, page(1, 10))
            .await
            .unwrap();
        let a1 = arts.items.iter().find(|a| a.digest == one).unwrap();
        let a2 = arts.items.iter().find(|a| a.digest == two).unwrap();
        assert_eq!(a1.pulled_at, Some(1000));
        assert_eq!(a2.pulled_at, Some(2000));
        let tag = |a: &ArtifactSummary, name: &str| {
            a.tags.iter().find(|t| t.name == name).unwrap().pulled_at
        };
        assert_eq!(tag(a1, "v1"), Some(1000));
        assert_eq!(
            tag(a1, "latest"),
            None,
            "pulled by digest or another tag only"
        );
        assert_eq!(tag(a2, "old"), None);
        let repos = store
            .repository_summaries("team/", None, page(1, 10))
            .await
            .unwrap();
        assert_eq!(repos.items[0].pull_count, 6);
    }

    #[tokio::test]
    async fn repositories_and_artifacts_of_a_project() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteMetaStore::open(&dir.path().join("meta.db"))
            .await
            .unwrap();
        let one = push(&store, "team/app", "1", &["v1", "latest"]).await;
        let two = push(&store, "team/app", "2", &[]).await;
        push(&store, "team/tools/lint", "3", &["v1"]).await;
        push(&store, "teamster/app", "4", &["v1"]).await;

        let repos = store
            .repository_summaries("team/", None, page(1, 10))
            .await
            .unwrap();
        assert_eq!(
            repos.total, 2,
            "other projects' repositories are not listed"
        );
        let names: Vec<&str> = repos.items.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["team/app", "team/tools/lint"]);
        assert_eq!(repos.items[0].artifact_count, 2);
        let second = store
            .repository_summaries("team/", None, page(2, 1))
            .await
            .unwrap();
        assert_eq!((second.total, second.items.len()), (2, 1));
        assert_eq!(second.items[0].name.as_str(), "team/tools/lint");
        let filtered = store
            .repository_summaries("team/", Some("lint"), page(1, 10))
            .await
            .unwrap();
        assert_eq!(filtered.total, 1);

        let app: RepoName = "team/app".parse().unwrap();
        let arts = store
            .artifact_summaries(&app, ArtifactSelection::TopLevel, page(1, 10))
            .await
            .unwrap();
        assert_eq!(arts.total, 2);
        let first = arts.items.iter().find(|a| a.digest == one).unwrap();
        let tags: Vec<&str> = first.tags.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(tags, ["latest", "v1"]);
        assert_eq!(first.size, 110, "the manifest and the blob it references");
        let untagged = arts.items.iter().find(|a| a.digest == two).unwrap();
        assert!(untagged.tags.is_empty());
        let only = store
            .artifact_summaries(&app, ArtifactSelection::Digest(&one), page(1, 10))
            .await
            .unwrap();
        assert_eq!((only.total, only.items[0].digest.clone()), (1, one));
        let none = store
            .artifact_summaries(
                &"team/none".parse().unwrap(),
                ArtifactSelection::All,
                page(1, 10),
            )
            .await
            .unwrap();
        assert_eq!((none.total, none.items.len()), (0, 0));

        // An index lists its children; they are not artifacts of their own, nor is a manifest
        // attached to another (a signature), though both are there by digest.
        let child = push(&store, "team/multi", "child", &[]).await;
        let multi: RepoName = "team/multi".parse().unwrap();
        let record = |seed: &str, subject: Option<Digest>| ManifestRecord {
            digest: Digest::of(Algorithm::Sha256, seed.as_bytes()),
            media_type: "application/vnd.oci.image.index.v1+json".into(),
            size: 5,
            artifact_type: None,
            subject,
            annotations: None,
        };
        let index = record("index", None);
        let signature = record("signature", Some(child.clone()));
        for (m, children) in [
            (index.clone(), vec![child.clone()]),
            (signature, Vec::new()),
        ] {
            store
                .apply(vec![Change::PutManifest {
                    repo: multi.clone(),
                    manifest: m,
                    blobs: Vec::new(),
                    children: children
                        .into_iter()
                        .map(|digest| Dependency {
                            digest,
                            required: true,
                        })
                        .collect(),
                }])
                .await
                .unwrap();
        }
        let top = store
            .artifact_summaries(&multi, ArtifactSelection::TopLevel, page(1, 10))
            .await
            .unwrap();
        assert_eq!(top.total, 1, "{top:?}");
        assert_eq!(top.items[0].digest, index.digest);
        assert_eq!(top.items[0].children, vec![child.clone()]);
        let all = store
            .artifact_summaries(&multi, ArtifactSelection::All, page(1, 10))
            .await
            .unwrap();
        assert_eq!(all.total, 3);
        let by_digest = store
            .artifact_summaries(&multi, ArtifactSelection::Digest(&child), page(1, 10))
            .await
            .unwrap();
        assert_eq!(by_digest.total, 1);
        let repos = store
            .repository_summaries("team/", Some("multi"), page(1, 10))
            .await
            .unwrap();
        assert_eq!(repos.items[0].artifact_count, 1, "only the index counts");
    }
}

// The PostgreSQL test server, as `postgres.rs` includes it too (its copy is private there).
#[cfg(test)]
#[allow(clippy::duplicate_mod)]
#[path = "../../tests/common/postgres.rs"]
mod server;

/// [`AccessStore::sync_directory_user`] on both engines.
#[cfg(test)]
mod directory_tests {
    use super::*;

    fn alice(groups: &[&str], sysadmin: bool) -> DirectoryUser {
        DirectoryUser {
            username: "alice".into(),
            email: "alice@example.org".into(),
            realname: "Alice Liddell".into(),
            ldap_dn: "uid=alice,ou=people,dc=example,dc=org".into(),
            sysadmin,
            groups: groups
                .iter()
                .map(|g| {
                    (
                        (*g).to_string(),
                        format!("cn={g},ou=groups,dc=example,dc=org"),
                    )
                })
                .collect(),
        }
    }

    async fn directory_users_follow_the_directory(store: &dyn AccessStore) {
        let (first, ids) = store
            .sync_directory_user(&alice(&["devs", "ops"], false))
            .await
            .unwrap();
        assert_eq!(first.source, UserSource::Ldap);
        assert_eq!(first.password, None);
        assert_eq!(first.realname, "Alice Liddell");
        assert_eq!(ids.len(), 2);
        assert_eq!(store.user_group_ids(first.id).await.unwrap(), ids);
        let devs = store
            .ensure_group("devs", "cn=devs,ou=groups,dc=example,dc=org")
            .await
            .unwrap();
        assert!(ids.contains(&devs.id));

        // The same answer changes nothing, not even `updated_at`.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let (same, same_ids) = store
            .sync_directory_user(&alice(&["ops", "devs"], false))
            .await
            .unwrap();
        assert_eq!(
            (same.id, same.updated_at, &same_ids),
            (first.id, first.updated_at, &ids)
        );

        // A group left, then admin rights: each a change.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let (fewer, fewer_ids) = store
            .sync_directory_user(&alice(&["devs"], false))
            .await
            .unwrap();
        assert_eq!(fewer_ids, [devs.id]);
        assert!(fewer.updated_at > first.updated_at);
        assert_eq!(store.user_group_ids(first.id).await.unwrap(), [devs.id]);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let (admin, _) = store
            .sync_directory_user(&alice(&["devs"], true))
            .await
            .unwrap();
        assert!(admin.sysadmin && admin.updated_at > fewer.updated_at);
        let read = store.user(first.id).await.unwrap().expect("user");
        assert_eq!(read, admin);

        // The group's role reaches its members.
        let project = store.create_project("team", false, None).await.unwrap();
        store
            .add_member(project.id, MemberEntity::Group(devs.id), 2)
            .await
            .unwrap();
        assert_eq!(
            store.roles(project.id, first.id, &fewer_ids).await.unwrap(),
            [2]
        );

        // A local account is not taken over.
        let local = NewUser {
            username: "bob".into(),
            ..NewUser::default()
        };
        store.create_user(local, UserSource::Local).await.unwrap();
        let mut bob = alice(&[], false);
        bob.username = "bob".into();
        assert!(matches!(
            store.sync_directory_user(&bob).await,
            Err(MetaError::Conflict(_))
        ));

        // Deleting the user deletes its memberships.
        store.delete_user(first.id).await.unwrap();
        assert!(store.user_group_ids(first.id).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn sqlite_directory_users() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::meta::sqlite::SqliteMetaStore::open(&dir.path().join("meta.db"))
            .await
            .unwrap();
        directory_users_follow_the_directory(&store).await;
        registries_are_kept_and_guarded(&store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_directory_users() {
        use super::server::Postgres;
        let pg = Postgres::start();
        pg.create_database("directory");
        let options = sqlx::postgres::PgConnectOptions::new()
            .host(pg.host())
            .port(pg.port())
            .username(Postgres::USER)
            .password(Postgres::PASSWORD)
            .database("directory");
        let pool = crate::meta::postgres::PoolSettings::default();
        let store = crate::meta::postgres::PgMetaStore::connect(options, &pool)
            .await
            .unwrap();
        directory_users_follow_the_directory(&store).await;
        registries_are_kept_and_guarded(&store).await;
    }

    /// Remote registries: created, listed by name, changed, refused a duplicate name, and not
    /// deleted while a project mirrors one.
    async fn registries_are_kept_and_guarded(store: &dyn AccessStore) {
        let page = PageRequest {
            page: 1,
            page_size: 10,
        };
        let new = RegistryRecord {
            name: "central".into(),
            kind: "docker-registry".into(),
            url: "https://central.example".into(),
            credential_type: "basic".into(),
            access_key: "u".into(),
            access_secret: "p".into(),
            ..RegistryRecord::default()
        };
        let made = store.create_registry(&new).await.unwrap();
        assert_eq!(
            (made.name.as_str(), made.access_secret.as_str()),
            ("central", "p")
        );
        assert!(matches!(
            store.create_registry(&new).await,
            Err(MetaError::Conflict(_))
        ));
        let other = RegistryRecord {
            name: "edge".into(),
            ..new.clone()
        };
        store.create_registry(&other).await.unwrap();
        let found = store.registries(Some("cen"), page).await.unwrap();
        assert_eq!((found.total, found.items[0].id), (1, made.id));
        assert_eq!(store.registries(None, page).await.unwrap().total, 2);
        let mut changed = made.clone();
        changed.url = "https://moved.example".into();
        changed.insecure = true;
        store.update_registry(&changed).await.unwrap();
        let read = store.registry(made.id).await.unwrap().unwrap();
        assert_eq!(
            (read.url.as_str(), read.insecure),
            ("https://moved.example", true)
        );
        let project = store.create_project("hub", true, None).await.unwrap();
        store
            .set_project_registry(project.id, Some(made.id))
            .await
            .unwrap();
        let project = store.project_by_name("hub").await.unwrap().unwrap();
        assert_eq!(project.registry_id, Some(made.id));
        assert!(matches!(
            store.delete_registry(made.id).await,
            Err(MetaError::Conflict(_))
        ));
        store.delete_project(project.id).await.unwrap();
        store.delete_registry(made.id).await.unwrap();
        assert_eq!(store.registry(made.id).await.unwrap(), None);
        assert!(matches!(
            store.delete_registry(made.id).await,
            Err(MetaError::NotFound(_))
        ));
    }
}
