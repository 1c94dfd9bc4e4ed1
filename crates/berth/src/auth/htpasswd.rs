//! HTTP Basic authentication against an Apache htpasswd file (bcrypt entries), as Distribution's
//! `auth.htpasswd`.
//!
//! Owns: reading the file (`user:hash` lines; blank lines and `#` comments skipped; re-read when
//! its modification time changes), checking a user's password, and the `Basic` challenge.
//! Invariants:
//! - only bcrypt hashes (`$2y$`, `$2a$`, `$2b$`) ever match; other entries never authenticate;
//! - an unknown user costs one bcrypt computation too (against a dummy hash), so timing does not
//!   reveal which users exist;
//! - a successful check is remembered (keyed by a salted SHA-256 of user, password and stored
//!   hash; never the password itself) so that a client sending Basic credentials on every request
//!   does not pay a bcrypt computation each time; changing the file's entry invalidates it;
//! - passwords are never logged.
//!
//! `verify` is CPU-bound (tens of milliseconds per bcrypt check): call it from
//! `tokio::task::spawn_blocking` on a cold credential.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use sha2::{Digest as _, Sha256};

use super::{quote, AuthError, Identity};
use crate::config::HtpasswdAuth;

/// Hash compared against when the user is unknown (cost 5, matches nothing).
const DUMMY_HASH: &str = "$2a$05$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// Remembered successful checks kept at most (the set is cleared when full).
const MAX_REMEMBERED: usize = 4096;

/// An htpasswd file and the realm announced in the challenge.
pub struct Htpasswd {
    realm: String,
    path: PathBuf,
    state: Mutex<State>,
    /// Random per-process salt of the remembered-success keys.
    salt: [u8; 16],
}

impl std::fmt::Debug for Htpasswd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Htpasswd")
            .field("realm", &self.realm)
            .field("path", &self.path)
            .finish()
    }
}

#[derive(Default)]
struct State {
    modified: Option<SystemTime>,
    entries: HashMap<String, String>,
    verified: HashSet<[u8; 32]>,
}

impl Htpasswd {
    /// Build from the parsed `auth.htpasswd` section; `realm` and `path` are required and the
    /// file must be readable and well formed (errors are `AuthError::Config`).
    pub fn from_config(cfg: &HtpasswdAuth) -> Result<Htpasswd, AuthError> {
        let realm = cfg
            .realm
            .clone()
            .ok_or_else(|| AuthError::Config("auth.htpasswd.realm is required".into()))?;
        let path = cfg
            .path
            .clone()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| AuthError::Config("auth.htpasswd.path is required".into()))?;
        Htpasswd::open(&realm, Path::new(&path))
    }

    /// Open an htpasswd file.
    pub fn open(realm: &str, path: &Path) -> Result<Htpasswd, AuthError> {
        let h = Htpasswd {
            realm: realm.to_string(),
            path: path.to_path_buf(),
            state: Mutex::new(State::default()),
            salt: *uuid::Uuid::new_v4().as_bytes(),
        };
        {
            let mut st = h.lock();
            h.refresh(&mut st)?;
        }
        Ok(h)
    }

    /// The realm announced in the challenge.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// Check a user's password. `Ok` grants everything (an [`Identity::unrestricted`] named after
    /// the user); a wrong password or unknown user is `InvalidCredentials`; a file that became
    /// unreadable or malformed is `Config` (the edge answers 500 for it, as Distribution).
    pub fn verify(&self, user: &str, password: &str) -> Result<Identity, AuthError> {
        let hash = {
            let mut st = self.lock();
            self.refresh(&mut st)?;
            st.entries.get(user).cloned()
        };
        let Some(hash) = hash else {
            let _ = bcrypt::verify(password, DUMMY_HASH);
            return Err(AuthError::InvalidCredentials);
        };
        let key = self.remember_key(user, password, &hash);
        if self.lock().verified.contains(&key) {
            return Ok(Identity::unrestricted(user));
        }
        let bcrypt_entry = ["$2y$", "$2a$", "$2b$"].iter().any(|p| hash.starts_with(p));
        if !bcrypt_entry || !bcrypt::verify(password, &hash).unwrap_or(false) {
            return Err(AuthError::InvalidCredentials);
        }
        let mut st = self.lock();
        if st.verified.len() >= MAX_REMEMBERED {
            st.verified.clear();
        }
        st.verified.insert(key);
        Ok(Identity::unrestricted(user))
    }

    /// `Basic realm="<realm>"`.
    pub fn challenge(&self) -> String {
        format!("Basic realm={}", quote(&self.realm))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (plain maps): keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember_key(&self, user: &str, password: &str, hash: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.salt);
        for part in [user, password, hash] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().into()
    }

    /// Re-read the file if its modification time changed.
    fn refresh(&self, st: &mut State) -> Result<(), AuthError> {
        let cfg_err = |e: String| AuthError::Config(format!("auth.htpasswd.path: {e}"));
        let meta = std::fs::metadata(&self.path)
            .map_err(|e| cfg_err(format!("cannot read {}: {e}", self.path.display())))?;
        let modified = meta.modified().ok();
        if modified.is_some() && st.modified == modified {
            return Ok(());
        }
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| cfg_err(format!("cannot read {}: {e}", self.path.display())))?;
        st.entries = parse(&text).map_err(cfg_err)?;
        st.modified = modified;
        st.verified.clear();
        Ok(())
    }
}

/// Parse htpasswd text: `user:hash` per line, blank lines and `#` comments skipped.
fn parse(text: &str) -> Result<HashMap<String, String>, String> {
    let mut entries = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = t.split_once(':') else {
            // Do not echo the line: it may hold a secret.
            return Err(format!("invalid entry at line {}", i + 1));
        };
        entries.insert(user.to_string(), hash.to_string());
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_lines() {
        let e = parse("# comment\n\n  alice:$2y$05$abc  \nbob:x:y\n").unwrap();
        assert_eq!(e["alice"], "$2y$05$abc");
        assert_eq!(e["bob"], "x:y");
        assert!(parse("nocolon\n").is_err());
    }

    #[test]
    fn verify_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        let hash = bcrypt::hash("s3cret", 4)
            .unwrap()
            .replacen("$2b$", "$2y$", 1);
        std::fs::write(&path, format!("alice:{hash}\ncarol:{{SHA}}abcdef\n")).unwrap();
        let h = Htpasswd::open("Registry Realm", &path).unwrap();
        assert_eq!(h.challenge(), r#"Basic realm="Registry Realm""#);
        let id = h.verify("alice", "s3cret").unwrap();
        assert_eq!(id.subject, "alice");
        assert!(id.unrestricted);
        // Remembered success.
        assert!(h.verify("alice", "s3cret").is_ok());
        assert!(matches!(
            h.verify("alice", "wrong"),
            Err(AuthError::InvalidCredentials)
        ));
        assert!(matches!(
            h.verify("nobody", "s3cret"),
            Err(AuthError::InvalidCredentials)
        ));
        assert!(matches!(
            h.verify("carol", "x"),
            Err(AuthError::InvalidCredentials)
        ));
        // Replace the file (new mtime): alice's old password no longer works.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let hash2 = bcrypt::hash("other", 4).unwrap();
        std::fs::write(&path, format!("alice:{hash2}\n")).unwrap();
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(later).unwrap();
        assert!(h.verify("alice", "s3cret").is_err());
        assert!(h.verify("alice", "other").is_ok());
    }
}
