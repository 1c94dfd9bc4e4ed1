//! Login against an LDAP directory or Active Directory.
//!
//! Owns the LDAP side of a password login: find the user's entry with the search account, prove
//! the password with a bind as that entry on a connection of its own, then read the user's groups
//! (the membership attribute of the entry and, when configured, a search of the group subtree).
//!
//! It must not know about HTTP, tokens or the metadata store: it answers "who is this, and in which
//! groups", nothing more. Invariants: a login never succeeds without a bind as the user's own DN
//! with a non-empty password (an empty password would be an unauthenticated bind, which servers
//! accept as anonymous); every value put in a filter is escaped; every network step is bounded by
//! the configured timeout; passwords never reach an error or a log line. Each login opens its own
//! connections and closes them, so a directory change is seen at the next login.
//!
//! Its settings, [`LdapConfig`], are the `auth.builtin.ldap` section of the configuration.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ldap3::{ldap_escape, Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

pub use crate::config::{LdapConfig, LdapScope};

/// Result code of a bind refused for a wrong DN or password.
const RC_INVALID_CREDENTIALS: u32 = 49;
/// Result code of a search whose base DN does not exist.
const RC_NO_SUCH_OBJECT: u32 = 32;
/// Longest user name sent to the server; longer ones are refused without asking it.
const MAX_USERNAME_LEN: usize = 256;
/// Attributes read for a display name, in order of preference.
const DISPLAY_NAME_ATTRS: [&str; 2] = ["displayName", "cn"];
/// Attribute read for the e-mail address.
const EMAIL_ATTR: &str = "mail";

impl From<LdapScope> for Scope {
    fn from(scope: LdapScope) -> Self {
        match scope {
            LdapScope::Base => Scope::Base,
            LdapScope::OneLevel => Scope::OneLevel,
            LdapScope::Subtree => Scope::Subtree,
        }
    }
}

/// Why a login or a check of the directory failed.
#[derive(Debug, thiserror::Error)]
pub enum LdapError {
    /// Unknown user, wrong or empty password: the same answer for all, so names cannot be probed.
    #[error("invalid user name or password")]
    InvalidCredentials,
    /// The directory could not answer: down, too slow, TLS refused, search account refused.
    #[error("LDAP server unavailable: {0}")]
    Unavailable(String),
    /// The LDAP settings are wrong; the message names the key to fix.
    #[error("LDAP configuration: {0}")]
    Config(String),
    /// More than one entry carries the login name, so the user cannot be told apart.
    #[error("ambiguous LDAP user: {0}")]
    Ambiguous(String),
}

/// A user whose password the directory accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdapUser {
    /// DN of the user's entry.
    pub dn: String,
    /// Login name as the directory spells it (the `uid` attribute).
    pub username: String,
    /// `displayName`, or `cn` without one.
    pub display_name: Option<String>,
    /// `mail`.
    pub email: Option<String>,
    /// Groups the user belongs to, sorted by name.
    pub groups: Vec<LdapGroup>,
    /// Whether the user is in the `groupadmindn` group.
    pub admin: bool,
}

/// A group the user belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdapGroup {
    /// DN of the group's entry.
    pub dn: String,
    /// The group's name (`groupattribute`, or the value of the first RDN).
    pub name: String,
}

/// An LDAP directory that logs users in; cheap to share, it holds no connection.
#[derive(Debug, Clone)]
pub struct LdapDirectory {
    config: LdapConfig,
    tls: Option<Arc<ClientConfig>>,
    timeout: Duration,
}

impl LdapDirectory {
    /// Checks `config` and loads the TLS trust it names.
    pub fn new(config: LdapConfig) -> Result<Self, LdapError> {
        let tls_url = validate(&config)?;
        let tls = if tls_url || config.starttls {
            Some(tls_config(&config)?)
        } else {
            None
        };
        let timeout = Duration::from_secs(config.timeout);
        Ok(Self {
            config,
            tls,
            timeout,
        })
    }

    /// The settings this directory runs with.
    pub fn config(&self) -> &LdapConfig {
        &self.config
    }

    /// Checks that the server answers and accepts the search credentials.
    pub async fn ping(&self) -> Result<(), LdapError> {
        let mut session = self.connect().await?;
        let bound = self.bind_search_account(&mut session).await;
        session.close().await;
        bound
    }

    /// Logs `username` in with `password` and reads the user's groups.
    pub async fn login(&self, username: &str, password: &str) -> Result<LdapUser, LdapError> {
        if username.is_empty() || password.is_empty() || username.len() > MAX_USERNAME_LEN {
            tracing::debug!("LDAP login refused: empty password, or empty or overlong user name");
            return Err(LdapError::InvalidCredentials);
        }
        let mut search = self.connect().await?;
        let result = self.login_with(&mut search, username, password).await;
        search.close().await;
        match &result {
            Ok(user) => tracing::debug!(username, dn = %user.dn, admin = user.admin, "LDAP login"),
            Err(error) => tracing::debug!(username, %error, "LDAP login failed"),
        }
        result
    }

    /// Reads `username`'s entry and groups with the search account alone, without a password:
    /// whether the user still exists, and in which groups, for a session that outlives its
    /// login (a refresh token). `InvalidCredentials` when no entry carries the name.
    pub async fn lookup(&self, username: &str) -> Result<LdapUser, LdapError> {
        if username.is_empty() || username.len() > MAX_USERNAME_LEN {
            return Err(LdapError::InvalidCredentials);
        }
        let mut search = self.connect().await?;
        let result = self.lookup_with(&mut search, username).await;
        search.close().await;
        result
    }

    async fn lookup_with(
        &self,
        search: &mut Session,
        username: &str,
    ) -> Result<LdapUser, LdapError> {
        self.bind_search_account(search).await?;
        let entry = self.find_user(search, username).await?;
        let groups = self.user_groups(search, &entry, username).await?;
        Ok(self.user_from(entry, username, groups))
    }

    async fn login_with(
        &self,
        search: &mut Session,
        username: &str,
        password: &str,
    ) -> Result<LdapUser, LdapError> {
        self.bind_search_account(search).await?;
        let entry = self.find_user(search, username).await?;
        self.bind_as_user(&entry.dn, password).await?;
        let groups = self.user_groups(search, &entry, username).await?;
        Ok(self.user_from(entry, username, groups))
    }

    async fn connect(&self) -> Result<Session, LdapError> {
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(self.timeout)
            .set_starttls(self.config.starttls)
            .set_no_tls_verify(!self.config.verifycert);
        if let Some(tls) = &self.tls {
            settings = settings.set_config(Arc::clone(tls));
        }
        let url = self.config.url.as_str();
        let opened =
            tokio::time::timeout(self.timeout, LdapConnAsync::with_settings(settings, url));
        let (conn, ldap) = match opened.await {
            Ok(Ok(opened)) => opened,
            Ok(Err(error)) => return Err(self.unreachable(&error)),
            Err(_) => return Err(self.timed_out("connecting")),
        };
        ldap3::drive!(conn);
        Ok(Session {
            ldap,
            timeout: self.timeout,
        })
    }

    async fn bind_search_account(&self, session: &mut Session) -> Result<(), LdapError> {
        let dn = &self.config.searchdn;
        match session.bind(dn, &self.config.searchpassword).await {
            Ok(0) => Ok(()),
            Ok(rc) if dn.is_empty() => Err(LdapError::Unavailable(format!(
                "the server at {} refused the anonymous bind (result code {rc}): set `searchdn` \
                 and `searchpassword`",
                self.config.url
            ))),
            Ok(RC_INVALID_CREDENTIALS) => Err(LdapError::Unavailable(format!(
                "the server at {} refused the search account `{dn}`: check `searchdn` and \
                 `searchpassword`",
                self.config.url
            ))),
            Ok(rc) => Err(LdapError::Unavailable(format!(
                "the server at {} refused the bind of the search account `{dn}` (result code \
                 {rc}): check `searchdn` and `searchpassword`",
                self.config.url
            ))),
            Err(error) => Err(self.failed("binding the search account", &error)),
        }
    }

    async fn find_user(&self, session: &mut Session, username: &str) -> Result<Entry, LdapError> {
        let config = &self.config;
        let filter = and_filter(
            &config.filter,
            &format!("({}={})", config.uid, ldap_escape(username)),
        );
        let attrs = self.user_attributes();
        let mut entries = self
            .search(session, &config.basedn, config.scope, &filter, &attrs)
            .await?;
        match entries.len() {
            0 => {
                tracing::debug!(username, "no LDAP entry for this user name");
                Err(LdapError::InvalidCredentials)
            }
            1 => Ok(entries.remove(0)),
            n => Err(LdapError::Ambiguous(format!(
                "{n} entries under `{}` match {filter}: make `uid` unique, or narrow `basedn`, \
                 `scope` or `filter`",
                config.basedn
            ))),
        }
    }

    fn user_attributes(&self) -> Vec<String> {
        let mut attrs = vec![
            self.config.uid.clone(),
            EMAIL_ATTR.to_owned(),
            self.config.groupmembershipattribute.clone(),
        ];
        attrs.extend(DISPLAY_NAME_ATTRS.iter().map(|a| (*a).to_owned()));
        attrs
    }

    async fn bind_as_user(&self, dn: &str, password: &str) -> Result<(), LdapError> {
        let mut session = self.connect().await?;
        let bound = session.bind(dn, password).await;
        session.close().await;
        match bound {
            Ok(0) => Ok(()),
            Ok(RC_INVALID_CREDENTIALS) => Err(LdapError::InvalidCredentials),
            Ok(rc) => Err(LdapError::Unavailable(format!(
                "the server at {} refused the bind of `{dn}` with result code {rc}",
                self.config.url
            ))),
            Err(error) => Err(self.failed("binding as the user", &error)),
        }
    }

    async fn user_groups(
        &self,
        session: &mut Session,
        user: &Entry,
        username: &str,
    ) -> Result<Vec<LdapGroup>, LdapError> {
        let mut groups = GroupSet::default();
        for dn in user.values(&self.config.groupmembershipattribute) {
            let name = first_rdn_value(dn).unwrap_or_else(|| dn.clone());
            groups.insert(dn, name);
        }
        for entry in self.search_groups(session, &user.dn, username).await? {
            groups.replace(&entry.dn, self.group_name(&entry));
        }
        let admin_dn = &self.config.groupadmindn;
        if !admin_dn.is_empty() && !groups.contains(admin_dn) {
            if let Some(entry) = self.admin_group(session, &user.dn, username).await? {
                groups.replace(&entry.dn, self.group_name(&entry));
            }
        }
        Ok(groups.into_sorted())
    }

    fn group_name(&self, entry: &Entry) -> String {
        entry
            .first(&self.config.groupattribute)
            .cloned()
            .or_else(|| first_rdn_value(&entry.dn))
            .unwrap_or_else(|| entry.dn.clone())
    }

    async fn search_groups(
        &self,
        session: &mut Session,
        user_dn: &str,
        username: &str,
    ) -> Result<Vec<Entry>, LdapError> {
        let config = &self.config;
        if config.groupbasedn.is_empty() {
            return Ok(Vec::new());
        }
        let filter = and_filter(&config.groupfilter, &member_filter(user_dn, username));
        let attrs = [config.groupattribute.clone()];
        self.search(
            session,
            &config.groupbasedn,
            config.groupscope,
            &filter,
            &attrs,
        )
        .await
    }

    /// The `groupadmindn` entry when the user is a member, for an admin group that neither
    /// `memberOf` nor the group search turned up (it may lie outside `groupbasedn`).
    async fn admin_group(
        &self,
        session: &mut Session,
        user_dn: &str,
        username: &str,
    ) -> Result<Option<Entry>, LdapError> {
        let admin_dn = &self.config.groupadmindn;
        let filter = member_filter(user_dn, username);
        let attrs = [self.config.groupattribute.clone()];
        match session
            .search(admin_dn, LdapScope::Base, &filter, &attrs)
            .await
        {
            Ok((mut entries, 0)) => Ok(entries.pop()),
            Ok((_, RC_NO_SUCH_OBJECT)) => {
                tracing::warn!(groupadmindn = %admin_dn, "the LDAP admin group does not exist");
                Ok(None)
            }
            Ok((_, rc)) => Err(LdapError::Unavailable(format!(
                "reading `groupadmindn` `{admin_dn}` failed with result code {rc}"
            ))),
            Err(error) => Err(self.failed("reading the admin group", &error)),
        }
    }

    fn user_from(&self, entry: Entry, username: &str, groups: Vec<LdapGroup>) -> LdapUser {
        let admin_dn = normalize_dn(&self.config.groupadmindn);
        let admin = !admin_dn.is_empty() && groups.iter().any(|g| normalize_dn(&g.dn) == admin_dn);
        let display_name = DISPLAY_NAME_ATTRS
            .iter()
            .find_map(|attr| entry.first(attr))
            .cloned();
        LdapUser {
            username: entry
                .first(&self.config.uid)
                .cloned()
                .unwrap_or_else(|| username.to_owned()),
            display_name,
            email: entry.first(EMAIL_ATTR).cloned(),
            dn: entry.dn,
            groups,
            admin,
        }
    }

    async fn search(
        &self,
        session: &mut Session,
        base: &str,
        scope: LdapScope,
        filter: &str,
        attrs: &[String],
    ) -> Result<Vec<Entry>, LdapError> {
        match session.search(base, scope, filter, attrs).await {
            Ok((entries, 0)) => Ok(entries),
            Ok((_, RC_NO_SUCH_OBJECT)) => Err(LdapError::Unavailable(format!(
                "the server at {} has no entry `{base}`: check `basedn` and `groupbasedn`",
                self.config.url
            ))),
            Ok((_, rc)) => Err(LdapError::Unavailable(format!(
                "the search for {filter} under `{base}` failed with result code {rc}"
            ))),
            Err(error) => Err(self.failed("searching", &error)),
        }
    }

    fn unreachable(&self, error: &ldap3::LdapError) -> LdapError {
        if let Some(tls) = tls_error(error) {
            let how = if self.config.starttls {
                "StartTLS"
            } else {
                "TLS"
            };
            return LdapError::Unavailable(format!(
                "{how} with {} failed: {tls}; give the server's CA in `ca`, or set `verifycert: \
                 false` to skip the check",
                self.config.url
            ));
        }
        LdapError::Unavailable(format!("cannot reach {}: {error}", self.config.url))
    }

    fn failed(&self, step: &str, error: &ldap3::LdapError) -> LdapError {
        if matches!(error, ldap3::LdapError::Timeout { .. }) {
            return self.timed_out(step);
        }
        LdapError::Unavailable(format!("{step} on {} failed: {error}", self.config.url))
    }

    fn timed_out(&self, step: &str) -> LdapError {
        LdapError::Unavailable(format!(
            "{} did not answer within {}s while {step}: check `url` and `timeout`",
            self.config.url, self.config.timeout
        ))
    }
}

/// One open connection; every operation on it is bounded by the timeout.
struct Session {
    ldap: Ldap,
    timeout: Duration,
}

impl Session {
    /// Simple bind; the result code, or the transport error.
    async fn bind(&mut self, dn: &str, password: &str) -> Result<u32, ldap3::LdapError> {
        let result = self
            .ldap
            .with_timeout(self.timeout)
            .simple_bind(dn, password)
            .await?;
        Ok(result.rc)
    }

    /// Search; the entries (references left out) and the result code.
    async fn search(
        &mut self,
        base: &str,
        scope: LdapScope,
        filter: &str,
        attrs: &[String],
    ) -> Result<(Vec<Entry>, u32), ldap3::LdapError> {
        let ldap3::SearchResult(entries, result) = self
            .ldap
            .with_timeout(self.timeout)
            .search(base, scope.into(), filter, attrs)
            .await?;
        let entries = entries
            .into_iter()
            .filter(|e| !e.is_ref() && !e.is_intermediate())
            .map(|e| Entry::from(SearchEntry::construct(e)))
            .collect();
        Ok((entries, result.rc))
    }

    /// Unbinds; the connection is dropped whatever the server says.
    async fn close(mut self) {
        if let Err(error) = self.ldap.unbind().await {
            tracing::trace!(%error, "LDAP unbind failed");
        }
    }
}

/// An entry with attribute names folded to lower case (LDAP names ignore case).
struct Entry {
    dn: String,
    attrs: HashMap<String, Vec<String>>,
}

impl From<SearchEntry> for Entry {
    fn from(entry: SearchEntry) -> Self {
        let attrs = entry
            .attrs
            .into_iter()
            .map(|(name, values)| (name.to_ascii_lowercase(), values))
            .collect();
        Self {
            dn: entry.dn,
            attrs,
        }
    }
}

impl Entry {
    fn values(&self, attr: &str) -> &[String] {
        self.attrs
            .get(&attr.to_ascii_lowercase())
            .map_or(&[], Vec::as_slice)
    }

    fn first(&self, attr: &str) -> Option<&String> {
        self.values(attr).first()
    }
}

/// Groups keyed by normalized DN, so one group named two ways counts once.
#[derive(Default)]
struct GroupSet {
    groups: HashMap<String, LdapGroup>,
}

impl GroupSet {
    fn insert(&mut self, dn: &str, name: String) {
        self.groups
            .entry(normalize_dn(dn))
            .or_insert_with(|| LdapGroup {
                dn: dn.to_owned(),
                name,
            });
    }

    /// Adds the group, or renames it when known: a found entry's name wins over an RDN guess.
    fn replace(&mut self, dn: &str, name: String) {
        let group = self
            .groups
            .entry(normalize_dn(dn))
            .or_insert_with(|| LdapGroup {
                dn: dn.to_owned(),
                name: String::new(),
            });
        group.name = name;
    }

    fn contains(&self, dn: &str) -> bool {
        self.groups.contains_key(&normalize_dn(dn))
    }

    fn into_sorted(self) -> Vec<LdapGroup> {
        let mut groups: Vec<LdapGroup> = self.groups.into_values().collect();
        groups.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.dn.cmp(&b.dn)));
        groups
    }
}

/// A DN in the form used to compare DNs: lower case, no spaces around `,` and `=`.
pub fn normalize_dn(dn: &str) -> String {
    let mut out = String::with_capacity(dn.len());
    // Length of `out` that trimming must not cut into (an escaped space is part of a value).
    let mut kept = 0;
    let mut skip_spaces = true;
    let mut chars = dn.trim().chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                out.push(c);
                if let Some(next) = chars.next() {
                    out.extend(next.to_lowercase());
                }
                kept = out.len();
                skip_spaces = false;
            }
            ',' | '=' => {
                out.truncate(out.trim_end().len().max(kept));
                out.push(c);
                kept = out.len();
                skip_spaces = true;
            }
            ' ' if skip_spaces => {}
            _ => {
                out.extend(c.to_lowercase());
                skip_spaces = false;
            }
        }
    }
    out
}

/// The value of a DN's first RDN, unescaped: `cn=a\, b,ou=x` gives `a, b`.
pub fn first_rdn_value(dn: &str) -> Option<String> {
    // Attribute types hold no `=` nor escapes, so the value starts after the first `=`.
    let (_, rest) = dn.trim().split_once('=')?;
    let bytes = rest.as_bytes();
    let mut value = Vec::new();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b',' | b'+' => break,
            b'\\' => {
                if let Some(decoded) = bytes.get(i + 1..i + 3).and_then(hex_byte) {
                    value.push(decoded);
                    i += 3;
                    continue;
                }
                value.extend(bytes.get(i + 1));
                i += 1;
            }
            b => value.push(b),
        }
        i += 1;
    }
    let value = String::from_utf8_lossy(&value).trim().to_owned();
    (!value.is_empty()).then_some(value)
}

/// The byte written as two hex digits, as in the DN escape `\2C`.
fn hex_byte(pair: &[u8]) -> Option<u8> {
    if !pair.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()
}

/// Matches a group listing the user by DN (`member`, `uniqueMember`) or by name (`memberUid`).
fn member_filter(user_dn: &str, username: &str) -> String {
    let dn = ldap_escape(user_dn);
    let name = ldap_escape(username);
    format!("(|(member={dn})(uniqueMember={dn})(memberUid={name}))")
}

/// `(&extra term)`, or `term` alone when no extra filter is set.
fn and_filter(extra: &str, term: &str) -> String {
    let extra = extra.trim();
    if extra.is_empty() {
        return term.to_owned();
    }
    if extra.starts_with('(') {
        format!("(&{extra}{term})")
    } else {
        format!("(&({extra}){term})")
    }
}

/// Checks the settings; whether the URL asks for TLS from the first byte (`ldaps://`).
fn validate(config: &LdapConfig) -> Result<bool, LdapError> {
    let tls_url = validate_url(&config.url)?;
    if tls_url && config.starttls {
        return Err(config_error(
            "`starttls` is for ldap:// URLs; an ldaps:// URL is TLS already: drop one",
        ));
    }
    if config.basedn.trim().is_empty() {
        return Err(config_error(
            "`basedn` is empty: set the DN under which users are searched",
        ));
    }
    if config.searchdn.is_empty() != config.searchpassword.is_empty() {
        return Err(config_error(
            "set both `searchdn` and `searchpassword`, or neither for an anonymous search",
        ));
    }
    if config.timeout == 0 {
        return Err(config_error("`timeout` must be at least 1 second"));
    }
    validate_attribute("uid", &config.uid)?;
    validate_attribute("groupattribute", &config.groupattribute)?;
    validate_attribute("groupmembershipattribute", &config.groupmembershipattribute)?;
    validate_filter("filter", &config.filter)?;
    validate_filter("groupfilter", &config.groupfilter)?;
    Ok(tls_url)
}

fn validate_url(url: &str) -> Result<bool, LdapError> {
    let lower = url.trim().to_ascii_lowercase();
    let (tls, rest) = if let Some(rest) = lower.strip_prefix("ldaps://") {
        (true, rest)
    } else if let Some(rest) = lower.strip_prefix("ldap://") {
        (false, rest)
    } else {
        return Err(config_error(&format!(
            "`url` `{url}` must start with ldap:// or ldaps://"
        )));
    };
    if rest.trim_end_matches('/').is_empty() || rest.starts_with(':') {
        return Err(config_error(&format!(
            "`url` `{url}` names no host: write ldap://host:389 or ldaps://host:636"
        )));
    }
    Ok(tls)
}

fn validate_attribute(key: &str, value: &str) -> Result<(), LdapError> {
    let mut chars = value.chars();
    let starts_well = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if starts_well && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
        return Ok(());
    }
    Err(config_error(&format!(
        "`{key}` `{value}` is not an attribute name (letters, digits and `-`)"
    )))
}

fn validate_filter(key: &str, value: &str) -> Result<(), LdapError> {
    let filter = and_filter(value, "(objectClass=*)");
    if ldap3::parse_filter(&filter).is_ok() {
        return Ok(());
    }
    Err(config_error(&format!(
        "`{key}` `{value}` is not an LDAP filter; write it like (objectClass=person)"
    )))
}

fn config_error(message: &str) -> LdapError {
    LdapError::Config(message.to_owned())
}

/// The TLS client settings: ring, trusting `ca` or the system roots, or nothing when told not to.
fn tls_config(config: &LdapConfig) -> Result<Arc<ClientConfig>, LdapError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| LdapError::Config(format!("TLS settings: {e}")))?;
    let tls = if config.verifycert {
        let roots = match config.ca.as_deref().filter(|p| !p.as_os_str().is_empty()) {
            Some(path) => ca_roots(path)?,
            None => system_roots(),
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        tracing::warn!(url = %config.url, "LDAP server certificate is not verified (verifycert: false)");
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
            .with_no_client_auth()
    };
    Ok(Arc::new(tls))
}

fn ca_roots(path: &Path) -> Result<RootCertStore, LdapError> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            LdapError::Config(format!("`ca` {shown}: cannot read PEM certificates: {e}"))
        })?;
    if certs.is_empty() {
        return Err(LdapError::Config(format!(
            "`ca` {shown} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        )));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| LdapError::Config(format!("`ca` {shown}: unusable certificate: {e}")))?;
    }
    Ok(roots)
}

fn system_roots() -> RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::warn!(%error, "reading the system's CA certificates");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if ignored > 0 {
        tracing::warn!(ignored, "system CA certificates that could not be used");
    }
    if added == 0 {
        tracing::warn!("no system CA certificate found: set `ca` for the LDAP server");
    }
    roots
}

/// The rustls error behind a failed connection, if TLS is what failed.
fn tls_error(error: &ldap3::LdapError) -> Option<&rustls::Error> {
    match error {
        ldap3::LdapError::Rustls { source } => Some(source),
        ldap3::LdapError::Io { source } => source.get_ref()?.downcast_ref::<rustls::Error>(),
        _ => None,
    }
}

/// Accepts any server certificate (`verifycert: false`) but still checks the handshake signatures.
#[derive(Debug)]
struct AnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn normalizes_dns() {
        let cases = [
            (
                "CN=Admins, OU=Groups ,DC=Example,DC=org",
                "cn=admins,ou=groups,dc=example,dc=org",
            ),
            ("cn = a b , dc = x", "cn=a b,dc=x"),
            ("  cn=x  ", "cn=x"),
            ("cn=a\\, B,dc=x", "cn=a\\, b,dc=x"),
            ("cn=trail\\ ,dc=x", "cn=trail\\ ,dc=x"),
            ("", ""),
        ];
        for (dn, want) in cases {
            assert_eq!(normalize_dn(dn), want, "{dn}");
        }
    }

    #[test]
    fn first_rdn_values() {
        let cases = [
            ("cn=devs,ou=groups,dc=x", Some("devs")),
            ("CN=Domain Admins,CN=Users,DC=corp", Some("Domain Admins")),
            ("cn=a\\, b,dc=x", Some("a, b")),
            ("cn=a\\2C b\\c3\\a9,dc=x", Some("a, bé")),
            ("cn=a+uid=b,dc=x", Some("a")),
            ("dc=x", Some("x")),
            ("novalue", None),
            ("cn=,dc=x", None),
        ];
        for (dn, want) in cases {
            assert_eq!(first_rdn_value(dn).as_deref(), want, "{dn}");
        }
    }

    #[test]
    fn builds_filters() {
        assert_eq!(and_filter("", "(uid=a)"), "(uid=a)");
        assert_eq!(
            and_filter(" (objectClass=person) ", "(uid=a)"),
            "(&(objectClass=person)(uid=a))"
        );
        assert_eq!(
            and_filter("objectClass=person", "(uid=a)"),
            "(&(objectClass=person)(uid=a))"
        );
    }

    #[test]
    fn reads_scopes_as_numbers_or_names() {
        for (text, want) in [
            ("0", LdapScope::Base),
            ("1", LdapScope::OneLevel),
            ("2", LdapScope::Subtree),
            ("base", LdapScope::Base),
            ("onelevel", LdapScope::OneLevel),
            ("SubTree", LdapScope::Subtree),
        ] {
            let scope: LdapScope = serde_yaml::from_str(text).expect(text);
            assert_eq!(scope, want, "{text}");
        }
        assert!(serde_yaml::from_str::<LdapScope>("3").is_err());
        assert!(serde_yaml::from_str::<LdapScope>("deep").is_err());
    }

    #[test]
    fn fills_defaults() {
        let config: LdapConfig =
            serde_yaml::from_str("url: ldap://h\nbasedn: dc=x\nscope: 1").expect("config");
        assert_eq!(config.uid, "uid");
        assert_eq!(config.scope, LdapScope::OneLevel);
        assert_eq!(config.groupscope, LdapScope::Subtree);
        assert_eq!(config.timeout, 5);
        assert!(config.verifycert);
        assert_eq!(config.groupattribute, "cn");
        assert_eq!(config.groupmembershipattribute, "memberof");
    }

    fn valid() -> LdapConfig {
        LdapConfig {
            url: "ldap://127.0.0.1:389".to_owned(),
            basedn: "dc=example,dc=org".to_owned(),
            ..LdapConfig::default()
        }
    }

    #[test]
    fn rejects_bad_settings() {
        type Change = fn(&mut LdapConfig);
        let cases: [(&str, Change); 8] = [
            ("url", |c| c.url = "http://h".to_owned()),
            ("url", |c| c.url = "ldap://".to_owned()),
            ("basedn", |c| c.basedn = " ".to_owned()),
            ("starttls", |c| {
                c.url = "ldaps://h".to_owned();
                c.starttls = true;
            }),
            ("searchpassword", |c| c.searchdn = "cn=a".to_owned()),
            ("uid", |c| c.uid = "u(id".to_owned()),
            ("filter", |c| c.filter = "(objectClass=person".to_owned()),
            ("ca", |c| {
                c.url = "ldaps://h".to_owned();
                c.ca = Some(PathBuf::from("/nonexistent/ca.pem"));
            }),
        ];
        for (key, change) in cases {
            let mut config = valid();
            change(&mut config);
            match LdapDirectory::new(config) {
                Err(LdapError::Config(message)) => {
                    assert!(message.contains(key), "{key}: {message}")
                }
                other => panic!("{key}: {other:?}"),
            }
        }
        assert!(LdapDirectory::new(valid()).is_ok());
    }

    #[test]
    fn hides_the_search_password() {
        let config = LdapConfig {
            searchpassword: "hunter2".to_owned(),
            ..valid()
        };
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
