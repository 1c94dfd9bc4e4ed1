//! The built-in token service (`auth.builtin`): logins, grants, token issue and verification
//! against the users, projects, members and robots of the metadata store.
//!
//! Owns: turning credentials into a [`Principal`] (local users, htpasswd users, LDAP users,
//! robots; failed logins counted per account and per client address), deciding what a principal
//! may do in a
//! project ([`Builtin::actions_in`]), issuing Docker-spec tokens with the intersection of what
//! was asked and what is allowed, and verifying them on registry requests.
//!
//! Invariants:
//! - a grant never exceeds what the principal may do at the moment of the grant;
//! - a token names the id of every project it grants access in; a request is refused when the
//!   project now has another id (deleted and re-created) or is gone;
//! - a token without `iat`, or with any claim malformed, is refused as `invalid_token`;
//! - an unknown account and a wrong password take the same time and give the same answer;
//! - with `auth.builtin.ldap` set, the directory decides who a user is and which groups it is
//!   in at every login; only local system administrators and robots log in without it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use super::accounts::{Accounts, Actor};
use super::keyring::KeyRing;
use super::ldap::{normalize_dn, LdapDirectory, LdapError, LdapUser};
use super::rbac::{robot_actions, Action, RobotPermission, Role};
use super::secret;
use super::token::{bearer_challenge, TokenVerifier};
use super::{challenge, credentials, AuthError, AuthRequest, Authenticate, Challenge, Htpasswd};
use super::{Identity, Scope};
use crate::config::BuiltinAuth;
use crate::meta::access::{now_ms, AccessStore, DirectoryUser, NewUser, Robot, User, UserSource};
use crate::meta::MetaError;

/// The longest token accepted, in bytes: anything longer is refused unread.
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// How long a refresh token is valid.
const REFRESH_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// The audience of refresh tokens (never accepted on registry requests).
const REFRESH_AUDIENCE_SUFFIX: &str = "#refresh";
/// Prefix of robot account names.
pub const ROBOT_PREFIX: &str = "robot$";
/// The message of [`LoginError::Unavailable`] when the LDAP directory cannot answer: what the
/// client is told (the reason, which names servers and accounts, goes to the log only).
pub const LDAP_UNAVAILABLE: &str = "the LDAP directory is unavailable; the registry's operator \
     should check auth.builtin.ldap and the server log";

/// Who is asking, once credentials are checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    Anonymous,
    /// A user, with the ids of the groups it belongs to (read at login).
    User {
        user: User,
        groups: Vec<i64>,
    },
    Robot(Robot),
}

impl Principal {
    /// The name tokens and the audit log use (`""` for anonymous).
    pub fn name(&self) -> &str {
        match self {
            Principal::Anonymous => "",
            Principal::User { user, .. } => &user.username,
            Principal::Robot(r) => &r.name,
        }
    }

    pub fn is_sysadmin(&self) -> bool {
        matches!(self, Principal::User { user, .. } if user.sysadmin)
    }
}

/// Why a login failed.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("invalid username or password")]
    InvalidCredentials,
    /// Too many failed logins for the account or from the address: retry after this many
    /// seconds.
    #[error("too many failed logins; retry in {0} s")]
    Throttled(u64),
    #[error("the user store is unavailable: {0}")]
    Unavailable(String),
}

impl From<MetaError> for LoginError {
    fn from(e: MetaError) -> Self {
        LoginError::Unavailable(e.to_string())
    }
}

/// A token issued by [`Builtin::issue`].
#[derive(Clone, Debug)]
pub struct IssuedToken {
    pub token: String,
    pub expires_in: u64,
    /// Unix seconds.
    pub issued_at: i64,
    pub refresh_token: Option<String>,
    /// What was granted.
    pub access: Vec<Scope>,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: String,
    exp: i64,
    nbf: i64,
    iat: i64,
    jti: String,
    access: Vec<GrantedAccess<'a>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    projects: &'a BTreeMap<String, i64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    groups: Vec<i64>,
}

#[derive(Serialize)]
struct GrantedAccess<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    name: &'a str,
    actions: &'a [String],
}

/// The built-in token service.
pub struct Builtin {
    store: Arc<dyn AccessStore>,
    keys: KeyRing,
    settings: BuiltinAuth,
    expiration: Duration,
    window: Duration,
    htpasswd: Option<Arc<Htpasswd>>,
    ldap: Option<LdapDirectory>,
}

impl std::fmt::Debug for Builtin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builtin")
            .field("service", &self.settings.service)
            .finish()
    }
}

impl Builtin {
    /// Starts the service on `store`: loads (or makes) the signing keys and, when the store has
    /// no user called `admin` and `admin_password` is given, creates the first administrator.
    pub async fn start(
        settings: &BuiltinAuth,
        store: Arc<dyn AccessStore>,
        admin_password: Option<&str>,
    ) -> Result<Builtin, AuthError> {
        let expiration: Duration = settings.expiration.into();
        if expiration.is_zero() {
            return Err(AuthError::Config(
                "auth.builtin.expiration must be longer than 0s".into(),
            ));
        }
        let keys = KeyRing::open(
            store.clone(),
            key_overlap(settings),
            settings.keyrotation.into(),
        )
        .await?;
        let htpasswd = match &settings.htpasswd {
            Some(path) => Some(Arc::new(Htpasswd::open(
                "berth",
                std::path::Path::new(path),
            )?)),
            None => None,
        };
        let ldap = match &settings.ldap {
            Some(_) if htpasswd.is_some() => {
                return Err(AuthError::Config(
                    "auth.builtin.ldap and auth.builtin.htpasswd are both set: with ldap, users \
                     log in against the directory only; remove one"
                        .into(),
                ))
            }
            Some(config) => {
                let directory = LdapDirectory::new(config.clone())
                    .map_err(|e| AuthError::Config(format!("auth.builtin.ldap: {e}")))?;
                if let Err(error) = directory.ping().await {
                    tracing::warn!(%error, "auth.builtin.ldap: the directory does not answer yet");
                }
                Some(directory)
            }
            None => None,
        };
        let builtin = Builtin {
            store,
            keys,
            settings: settings.clone(),
            expiration,
            window: settings.loginwindow.into(),
            htpasswd,
            ldap,
        };
        if let Some(password) = admin_password.filter(|p| !p.is_empty()) {
            builtin.ensure_admin(password).await?;
        }
        Ok(builtin)
    }

    pub fn store(&self) -> &Arc<dyn AccessStore> {
        &self.store
    }

    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    pub fn service(&self) -> &str {
        &self.settings.service
    }

    /// Whether pulls are written to the audit log.
    pub fn audits_pulls(&self) -> bool {
        self.settings.audit.pulls
    }

    async fn ensure_admin(&self, password: &str) -> Result<(), AuthError> {
        let unavailable = |e: MetaError| AuthError::Unavailable(e.to_string());
        if self
            .store
            .user_by_name("admin")
            .await
            .map_err(unavailable)?
            .is_some()
        {
            return Ok(());
        }
        let password = password.to_string();
        let hash = tokio::task::spawn_blocking(move || secret::hash_password(&password))
            .await
            .map_err(|e| AuthError::Config(format!("hashing the admin password: {e}")))?;
        let admin = NewUser {
            username: "admin".into(),
            realname: "system admin".into(),
            password: Some(hash),
            sysadmin: true,
            ..NewUser::default()
        };
        match self.store.create_user(admin, UserSource::Local).await {
            Ok(_) | Err(MetaError::Conflict(_)) => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// The realm announced in challenges: the configured one, else `origin/service/token`.
    pub fn realm(&self, origin: &str) -> String {
        match &self.settings.realm {
            Some(r) if !r.is_empty() => r.clone(),
            _ => format!("{origin}/service/token"),
        }
    }

    /// Harbor's name for where users come from: `ldap_auth` with `auth.builtin.ldap`, else
    /// `db_auth`.
    pub fn auth_mode(&self) -> &'static str {
        if self.ldap.is_some() {
            "ldap_auth"
        } else {
            "db_auth"
        }
    }

    /// Checks `username` and `password` and returns who that is.
    ///
    /// Failed logins are counted per account and client address together, and per account and
    /// per address alone. Past `loginattempts` failures of one account from one address within
    /// `loginwindow` (or ten times that for the account from anywhere, or from the address for
    /// any account), further logins are refused with [`LoginError::Throttled`] until the window
    /// ends, whatever the password; the same account from elsewhere and other accounts from
    /// there are not affected until their own limits.
    ///
    /// With `auth.builtin.ldap` set (Harbor's `ldap_auth`), a user name that is not a local
    /// account is checked against the directory: on success the user's record (source LDAP) is
    /// created or updated from the directory (e-mail, display name, sysadmin from `groupadmindn`
    /// membership) and its groups become exactly those read now, so a user who left a group or
    /// the admin group loses what it gave at this login. Local accounts log in only when they
    /// are system administrators (the first `admin`), as Harbor allows only `admin` to; other
    /// local and htpasswd accounts are refused. Robots log in as always. A wrong password, an
    /// unknown user and a name two entries carry count as failures; a directory that cannot
    /// answer is [`LoginError::Unavailable`] with [`LDAP_UNAVAILABLE`] and counts nothing.
    ///
    /// A successful login is an audit entry; [`Builtin::authenticate`] is the same check
    /// without that entry, for requests that carry credentials each time.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        client: Option<IpAddr>,
    ) -> Result<Principal, LoginError> {
        let principal = self.authenticate(username, password, client).await?;
        self.audit(&principal, "login", "user", username, client, true, "")
            .await;
        Ok(principal)
    }

    /// The checks of [`Builtin::login`] (throttling, failures counted and audited) for the
    /// Basic credentials of one API request: a success is not an audit entry, or every request
    /// would be one.
    pub async fn authenticate(
        &self,
        username: &str,
        password: &str,
        client: Option<IpAddr>,
    ) -> Result<Principal, LoginError> {
        let attempts = i64::from(self.settings.loginattempts.max(1));
        let limits = throttle_keys(username, client, attempts);
        let window = self.window.as_millis() as i64;
        for (key, limit) in &limits {
            let (count, start) = self.store.failures(key, window).await?;
            if count >= *limit {
                let left = (start + window - now_ms()).max(1000);
                return Err(LoginError::Throttled((left as u64).div_ceil(1000)));
            }
        }
        let found = self.check_credentials(username, password).await?;
        match found {
            Some(principal) => {
                self.store.clear_failures(&limits[0].0).await?;
                Ok(principal)
            }
            None => {
                for (key, _) in &limits {
                    self.store.count_failure(key, window).await?;
                }
                self.audit_as(username, "login", "user", username, client, false, "")
                    .await;
                Err(LoginError::InvalidCredentials)
            }
        }
    }

    async fn check_credentials(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Option<Principal>, LoginError> {
        if password.is_empty() || username.is_empty() {
            return Ok(None);
        }
        if username.starts_with(ROBOT_PREFIX) {
            let robot = self.store.robot_by_name(username).await?;
            return Ok(robot
                .filter(|r| secret::verify_secret(&r.secret, password))
                .filter(|r| !r.disabled && (r.expires_at < 0 || r.expires_at > now_ms() / 1000))
                .map(Principal::Robot));
        }
        let user = self.store.user_by_name(username).await?;
        if let Some(directory) = &self.ldap {
            return self
                .check_directory(directory, user, username, password)
                .await;
        }
        if let Some(user) = &user {
            if user.source == UserSource::Ldap {
                // Its password lives in a directory that is no longer configured.
                burn(password).await;
                return Ok(None);
            }
            if let Some(hash) = &user.password {
                let ok = secret::check_password(hash, password).await;
                return Ok(ok.then(|| Principal::User {
                    user: user.clone(),
                    groups: Vec::new(),
                }));
            }
        }
        if let Some(h) = &self.htpasswd {
            if user
                .as_ref()
                .is_none_or(|u| u.source == UserSource::Htpasswd)
            {
                let (h, name, pw) = (h.clone(), username.to_string(), password.to_string());
                let checked = tokio::task::spawn_blocking(move || h.verify(&name, &pw))
                    .await
                    .unwrap_or(Err(AuthError::InvalidCredentials));
                return match checked {
                    Ok(_) => {
                        let user = match user {
                            Some(u) => u,
                            None => self.external_user(username, UserSource::Htpasswd).await?,
                        };
                        Ok(Some(Principal::User {
                            user,
                            groups: Vec::new(),
                        }))
                    }
                    Err(AuthError::Config(e)) => Err(LoginError::Unavailable(e)),
                    Err(_) => Ok(None),
                };
            }
        }
        if user.is_none() {
            burn(password).await;
        }
        Ok(None)
    }

    /// [`check_credentials`](Self::check_credentials) with the directory configured.
    async fn check_directory(
        &self,
        directory: &LdapDirectory,
        user: Option<User>,
        username: &str,
        password: &str,
    ) -> Result<Option<Principal>, LoginError> {
        match user {
            Some(user) if user.source == UserSource::Local && user.sysadmin => {
                let Some(hash) = &user.password else {
                    return Ok(None);
                };
                let ok = secret::check_password(hash, password).await;
                return Ok(ok.then_some(Principal::User {
                    user,
                    groups: Vec::new(),
                }));
            }
            Some(user) if user.source != UserSource::Ldap => {
                tracing::debug!(
                    username,
                    "login refused: only system administrators log in locally while LDAP is set"
                );
                burn(password).await;
                return Ok(None);
            }
            _ => {}
        }
        let found = match directory.login(username, password).await {
            Ok(found) => found,
            Err(LdapError::InvalidCredentials) => return Ok(None),
            Err(LdapError::Ambiguous(reason)) => {
                tracing::warn!(username, %reason, "LDAP login refused");
                return Ok(None);
            }
            Err(LdapError::Unavailable(reason) | LdapError::Config(reason)) => {
                tracing::warn!(username, %reason, "LDAP login failed: the directory is unavailable");
                return Err(LoginError::Unavailable(LDAP_UNAVAILABLE.into()));
            }
        };
        match self.sync_directory_user(&found).await? {
            Some((user, groups)) => Ok(Some(Principal::User { user, groups })),
            None => Ok(None),
        }
    }

    /// Records what the directory said of `found`; `None` when its name belongs to an account
    /// of another source (which the directory must not take over).
    async fn sync_directory_user(
        &self,
        found: &LdapUser,
    ) -> Result<Option<(User, Vec<i64>)>, LoginError> {
        let record = DirectoryUser {
            username: found.username.clone(),
            email: found.email.clone().unwrap_or_default(),
            realname: found
                .display_name
                .clone()
                .unwrap_or_else(|| found.username.clone()),
            ldap_dn: found.dn.clone(),
            sysadmin: found.admin,
            groups: found
                .groups
                .iter()
                .map(|g| (g.name.clone(), normalize_dn(&g.dn)))
                .collect(),
        };
        // A second try: two first logins at once race to create the record.
        for _ in 0..2 {
            match self.store.sync_directory_user(&record).await {
                Ok(synced) => return Ok(Some(synced)),
                Err(MetaError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        tracing::warn!(
            username = %found.username,
            "LDAP login refused: the name belongs to an account that is not an LDAP user"
        );
        Ok(None)
    }

    /// Whether `user` may still log in (and so refresh a session) with the current settings.
    fn admits(&self, user: &User) -> bool {
        match (&self.ldap, user.source) {
            (Some(_), UserSource::Ldap) => true,
            (Some(_), UserSource::Local) => user.sysadmin,
            (Some(_), UserSource::Htpasswd) => false,
            (None, UserSource::Ldap) => false,
            (None, UserSource::Local | UserSource::Htpasswd) => true,
        }
    }

    /// The user record of an account whose password lives elsewhere, made at its first login.
    async fn external_user(&self, username: &str, source: UserSource) -> Result<User, LoginError> {
        let new = NewUser {
            username: username.to_string(),
            realname: username.to_string(),
            ..NewUser::default()
        };
        match self.store.create_user(new, source).await {
            Ok(u) => Ok(u),
            Err(MetaError::Conflict(_)) => self
                .store
                .user_by_name(username)
                .await?
                .ok_or(LoginError::InvalidCredentials),
            Err(e) => Err(e.into()),
        }
    }

    /// What `principal` may do to the repositories of the project `project` now, and the
    /// project's id (0 when there is no such project).
    pub async fn actions_in(
        &self,
        principal: &Principal,
        project: &str,
    ) -> Result<(Vec<Action>, i64), MetaError> {
        let found = self.store.project_by_name(project).await?;
        let id = found.as_ref().map_or(0, |p| p.id);
        if principal.is_sysadmin() {
            return Ok((Action::ALL.to_vec(), id));
        }
        let Some(project) = found else {
            return Ok((Vec::new(), 0));
        };
        let mut actions: Vec<Action> = Vec::new();
        if project.public {
            actions.push(Action::Pull);
        }
        match principal {
            Principal::Anonymous => {}
            Principal::User { user, groups } => {
                for role in self.store.roles(project.id, user.id, groups).await? {
                    if let Some(role) = Role::from_id(role) {
                        actions.extend(role.actions());
                    }
                }
            }
            Principal::Robot(r) => {
                if r.project_id.is_none_or(|p| p == project.id) {
                    let perms: Vec<RobotPermission> =
                        serde_json::from_value(r.permissions.clone()).unwrap_or_default();
                    actions.extend(robot_actions(&perms, &project.name));
                }
            }
        }
        actions.sort();
        actions.dedup();
        Ok((actions, id))
    }

    /// The part of `requested` that `principal` may have, and the ids of the projects it is in.
    /// Scopes on other resource types, unknown actions and names that are not repositories are
    /// left out (a partial grant is not an error).
    pub async fn grant(
        &self,
        principal: &Principal,
        requested: &[Scope],
    ) -> Result<(Vec<Scope>, BTreeMap<String, i64>), MetaError> {
        let mut granted = Vec::new();
        let mut projects = BTreeMap::new();
        for scope in super::scope::merge(requested) {
            match scope.kind.as_str() {
                "repository" => {
                    if scope.name.parse::<crate::oci::name::RepoName>().is_err() {
                        continue;
                    }
                    let project = project_of(&scope.name);
                    let (allowed, id) = self.actions_in(principal, project).await?;
                    let actions: Vec<String> = scope
                        .actions
                        .iter()
                        .filter(|a| {
                            let wanted = Action::parse(a);
                            !wanted.is_empty() && wanted.iter().all(|w| allowed.contains(w))
                        })
                        .cloned()
                        .collect();
                    if !actions.is_empty() {
                        projects.insert(project.to_string(), id);
                        granted.push(Scope {
                            kind: scope.kind.clone(),
                            name: scope.name.clone(),
                            actions,
                        });
                    }
                }
                "registry" if scope.name == "catalog" && principal.is_sysadmin() => {
                    granted.push(scope.clone());
                }
                _ => {}
            }
        }
        Ok((granted, projects))
    }

    /// Issues a token for `principal` with `access` (already granted), and a refresh token when
    /// `offline` and the principal is not anonymous.
    pub async fn issue(
        &self,
        principal: &Principal,
        access: Vec<Scope>,
        projects: BTreeMap<String, i64>,
        offline: bool,
    ) -> Result<IssuedToken, AuthError> {
        let now = now_ms() / 1000;
        let expires_in = self.expiration.as_secs();
        let granted: Vec<GrantedAccess<'_>> = access
            .iter()
            .map(|s| GrantedAccess {
                kind: &s.kind,
                name: &s.name,
                actions: &s.actions,
            })
            .collect();
        let claims = Claims {
            iss: &self.settings.issuer,
            sub: principal.name(),
            aud: self.settings.service.clone(),
            exp: now + expires_in as i64,
            nbf: now - 1,
            iat: now,
            jti: secret::random_hex(16),
            access: granted,
            projects: &projects,
            groups: Vec::new(),
        };
        let token = self.keys.sign(&claims).await?;
        let refresh_token = match principal {
            Principal::Anonymous => None,
            _ if !offline => None,
            _ => {
                let no_projects = BTreeMap::new();
                let groups = match principal {
                    Principal::User { groups, .. } => groups.clone(),
                    _ => Vec::new(),
                };
                let claims = Claims {
                    aud: format!("{}{REFRESH_AUDIENCE_SUFFIX}", self.settings.service),
                    exp: now + REFRESH_LIFETIME.as_secs() as i64,
                    jti: secret::random_hex(16),
                    access: Vec::new(),
                    projects: &no_projects,
                    groups,
                    ..claims
                };
                Some(self.keys.sign(&claims).await?)
            }
        };
        Ok(IssuedToken {
            token,
            expires_in,
            issued_at: now,
            refresh_token,
            access,
        })
    }

    /// Who a refresh token belongs to, now: refused when it is not one of ours, has expired, or
    /// its account is gone, disabled or changed since (a new password revokes it), or may no
    /// longer log in. An LDAP user is read again from the directory (with the search account):
    /// refused when the directory no longer has it, or when its groups or admin membership
    /// changed since the token was issued (the change is recorded, and the user logs in again
    /// with its password to get a session with its new groups).
    pub async fn principal_of_refresh(&self, token: &str) -> Result<Principal, AuthError> {
        let audience = format!("{}{REFRESH_AUDIENCE_SUFFIX}", self.settings.service);
        let identity = self.verify_with(token, &audience, "").await?;
        let issued = identity.issued_at.ok_or(AuthError::InvalidClaims)?;
        let name = identity.subject.as_str();
        if name.starts_with(ROBOT_PREFIX) {
            let robot = self
                .store
                .robot_by_name(name)
                .await
                .map_err(|e| AuthError::Unavailable(e.to_string()))?;
            return match robot {
                Some(r)
                    if !r.disabled
                        && r.updated_at / 1000 <= issued
                        && (r.expires_at < 0 || r.expires_at > now_ms() / 1000) =>
                {
                    Ok(Principal::Robot(r))
                }
                _ => Err(AuthError::InvalidCredentials),
            };
        }
        let user = self
            .store
            .user_by_name(name)
            .await
            .map_err(|e| AuthError::Unavailable(e.to_string()))?;
        let user = match user {
            Some(user) if self.admits(&user) => user,
            _ => return Err(AuthError::InvalidCredentials),
        };
        let (user, groups) = match (&self.ldap, user.source) {
            (Some(directory), UserSource::Ldap) => {
                let found = match directory.lookup(&user.username).await {
                    Ok(found) => found,
                    Err(LdapError::Unavailable(reason) | LdapError::Config(reason)) => {
                        tracing::warn!(username = %user.username, %reason,
                            "LDAP refresh failed: the directory is unavailable");
                        return Err(AuthError::Unavailable(LDAP_UNAVAILABLE.into()));
                    }
                    Err(_) => return Err(AuthError::InvalidCredentials),
                };
                let (now, groups) = match self.sync_directory_user(&found).await {
                    Ok(Some(synced)) => synced,
                    Ok(None) => return Err(AuthError::InvalidCredentials),
                    Err(e) => return Err(AuthError::Unavailable(e.to_string())),
                };
                // Compared directly, not only through `updated_at`, whose seconds may equal
                // the token's.
                let mut granted = identity.groups.clone();
                granted.sort_unstable();
                granted.dedup();
                if now.updated_at != user.updated_at || groups != granted {
                    return Err(AuthError::InvalidCredentials);
                }
                (now, groups)
            }
            _ => (user, identity.groups),
        };
        if user.updated_at / 1000 > issued {
            return Err(AuthError::InvalidCredentials);
        }
        Ok(Principal::User { user, groups })
    }

    async fn verify_with(
        &self,
        token: &str,
        audience: &str,
        realm: &str,
    ) -> Result<Identity, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed);
        }
        let kid = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::Malformed)?
            .kid;
        let keys = self.keys.verifying_keys(kid.as_deref()).await?;
        let verifier = TokenVerifier::with_keys(realm, audience, &self.settings.issuer, keys);
        let identity = verifier.verify(token)?;
        if identity.issued_at.is_none() {
            return Err(AuthError::InvalidClaims);
        }
        Ok(identity)
    }

    /// Checks a registry request's bearer token: signature, claims, the access it needs, and
    /// that each project it touches is still the one the token was granted in.
    async fn verify_request(&self, token: &str, needed: &[Scope]) -> Result<Identity, AuthError> {
        let identity = self.verify_with(token, &self.settings.service, "").await?;
        if !identity.allows_all(needed) {
            return Err(AuthError::InsufficientScope);
        }
        for scope in needed.iter().filter(|s| s.kind == "repository") {
            let project = project_of(&scope.name);
            let Some(granted_id) = identity.projects.get(project) else {
                return Err(AuthError::InsufficientScope);
            };
            let now_id = self
                .store
                .project_by_name(project)
                .await
                .map_err(|e| AuthError::Unavailable(e.to_string()))?
                .map_or(0, |p| p.id);
            if now_id != *granted_id {
                return Err(AuthError::ProjectChanged);
            }
        }
        Ok(identity)
    }

    /// Writes an audit entry for `principal` (best effort: a failure is logged).
    #[allow(clippy::too_many_arguments)]
    pub async fn audit(
        &self,
        principal: &Principal,
        operation: &str,
        resource_type: &str,
        resource: &str,
        client: Option<IpAddr>,
        success: bool,
        detail: &str,
    ) {
        let name = match principal {
            Principal::Anonymous => "anonymous",
            p => p.name(),
        };
        self.audit_as(
            name,
            operation,
            resource_type,
            resource,
            client,
            success,
            detail,
        )
        .await;
    }

    #[allow(clippy::too_many_arguments)]
    async fn audit_as(
        &self,
        username: &str,
        operation: &str,
        resource_type: &str,
        resource: &str,
        client: Option<IpAddr>,
        success: bool,
        detail: &str,
    ) {
        let actor = Actor {
            name: username.to_string(),
            client,
        };
        Accounts::new(self.store.clone())
            .by(actor)
            .record_entry(operation, resource_type, resource, success, detail)
            .await;
    }
}

#[async_trait]
impl Authenticate for Builtin {
    async fn authenticate(&self, req: &AuthRequest<'_>) -> Result<Identity, Challenge> {
        let realm = self.realm(req.origin);
        let fail = |error: AuthError| {
            if let AuthError::Unavailable(_) = error {
                return challenge(503, None, error, req.needed);
            }
            let www = bearer_challenge(
                &realm,
                &self.settings.service,
                req.needed,
                error.challenge_error(),
            );
            challenge(401, Some(www), error, req.needed)
        };
        let Some(token) = req.authorization.and_then(|a| credentials(a, "bearer")) else {
            return Err(fail(AuthError::MissingCredentials));
        };
        self.verify_request(token, req.needed).await.map_err(fail)
    }
}

/// A password check whose result is thrown away, so that refusing an account takes as long as
/// checking its password.
async fn burn(password: &str) {
    let password = password.to_string();
    let _ = tokio::task::spawn_blocking(move || secret::burn_password_check(&password)).await;
}

/// How long a superseded signing key still verifies: as long as anything it signed may live.
pub fn key_overlap(settings: &BuiltinAuth) -> Duration {
    Duration::from(settings.expiration).max(REFRESH_LIFETIME) + Duration::from_secs(60)
}

/// The project of a repository: its first path component.
pub fn project_of(repository: &str) -> &str {
    repository.split('/').next().unwrap_or(repository)
}

/// The failed-login counters a login attempt is checked against, with their limits: the
/// account from this address, the account from anywhere, the address for any account.
fn throttle_keys(username: &str, client: Option<IpAddr>, attempts: i64) -> Vec<(String, i64)> {
    let ip = client.map(|c| c.to_string()).unwrap_or_default();
    vec![
        (format!("login:{ip}:{username}"), attempts),
        (format!("user:{username}"), attempts * 10),
        (format!("addr:{ip}"), attempts * 10),
    ]
}
