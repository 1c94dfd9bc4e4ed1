//! Passwords and generated secrets.
//!
//! Invariants: user passwords are stored only as argon2id PHC strings; robot secrets are 32
//! random alphanumerics (about 190 bits) stored only as their SHA-256; comparisons of secrets are
//! constant-time; nothing here logs or returns a clear-text secret except [`generate_secret`].

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use sha2::{Digest as _, Sha256};

/// The argon2id hash of `password` (PHC string). CPU-heavy (tens of milliseconds): call from
/// a blocking task.
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .unwrap_or_default()
}

/// Whether `password` matches the PHC string `hash`. CPU-heavy, like [`hash_password`].
pub fn verify_password(hash: &str, password: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// How long a verified password is remembered, and how many are.
const VERIFIED_FOR: std::time::Duration = std::time::Duration::from_secs(300);
const VERIFIED_MAX: usize = 4096;

/// Passwords verified lately, as keyed SHA-256 of (hash, password) under a key drawn at start:
/// clients that send Basic credentials with every request (the management API's) would
/// otherwise pay an argon2 check each time. Keyed by the stored hash, an entry stops matching
/// the moment the password changes, on whichever instance changed it.
struct Verified {
    key: [u8; 32],
    seen: std::sync::Mutex<std::collections::HashMap<[u8; 32], std::time::Instant>>,
}

fn verified() -> &'static Verified {
    static V: std::sync::OnceLock<Verified> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        Verified {
            key,
            seen: Default::default(),
        }
    })
}

impl Verified {
    fn fingerprint(&self, hash: &str, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update((hash.len() as u64).to_be_bytes());
        h.update(hash.as_bytes());
        h.update(password.as_bytes());
        h.finalize().into()
    }
}

/// [`verify_password`] on a blocking task, skipped for a (hash, password) pair that verified
/// within the last few minutes. Only successes are remembered.
pub async fn check_password(hash: &str, password: &str) -> bool {
    let v = verified();
    let fp = v.fingerprint(hash, password);
    let now = std::time::Instant::now();
    {
        let seen = v.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen
            .get(&fp)
            .is_some_and(|at| now.duration_since(*at) < VERIFIED_FOR)
        {
            return true;
        }
    }
    let (h, p) = (hash.to_string(), password.to_string());
    let ok = tokio::task::spawn_blocking(move || verify_password(&h, &p))
        .await
        .unwrap_or(false);
    if ok {
        let mut seen = v.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= VERIFIED_MAX {
            seen.retain(|_, at| now.duration_since(*at) < VERIFIED_FOR);
            if seen.len() >= VERIFIED_MAX {
                seen.clear();
            }
        }
        seen.insert(fp, now);
    }
    ok
}

/// Spends as long as a password check on a value that cannot match, so a login for an unknown
/// account takes as long as one with a wrong password.
pub fn burn_password_check(password: &str) {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let hash = DUMMY.get_or_init(|| hash_password("not a password of anyone"));
    let _ = verify_password(hash, password);
}

/// Harbor's password rule: 8 to 128 characters with at least one upper-case letter, one
/// lower-case letter and one digit. The error says what is missing.
pub fn check_password_rule(password: &str) -> Result<(), String> {
    let n = password.chars().count();
    let ok = (8..=128).contains(&n)
        && password.chars().any(|c| c.is_ascii_uppercase())
        && password.chars().any(|c| c.is_ascii_lowercase())
        && password.chars().any(|c| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(
            "the password must be 8 to 128 characters long with at least one upper-case \
             letter, one lower-case letter and one digit"
                .into(),
        )
    }
}

/// A new random secret: 32 characters from `[A-Za-z0-9]`.
pub fn generate_secret() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(32);
    while out.len() < 32 {
        let mut buf = [0u8; 64];
        OsRng.fill_bytes(&mut buf);
        // 248 = 4 * 62: reject the top values so every character is equally likely.
        for b in buf.iter().filter(|b| **b < 248) {
            if out.len() == 32 {
                break;
            }
            out.push(ALPHABET[usize::from(*b) % ALPHABET.len()] as char);
        }
    }
    out
}

/// The stored form of a generated secret: SHA-256, hex.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Whether `secret` is the one whose [`hash_secret`] is `stored`, in constant time.
pub fn verify_secret(stored: &str, secret: &str) -> bool {
    let got = hash_secret(secret);
    got.len() == stored.len()
        && got
            .bytes()
            .zip(stored.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Random bytes as hex (token ids).
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    OsRng.fill_bytes(&mut buf);
    hex::encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_remembered_password_matches_only_its_own_hash() {
        let old = hash_password("Secret123");
        assert!(check_password(&old, "Secret123").await);
        assert!(check_password(&old, "Secret123").await, "remembered");
        assert!(!check_password(&old, "Secret124").await);
        // The password changed: the new hash does not accept the old password, however
        // recently it verified against the old hash.
        let new = hash_password("Other4567");
        assert!(!check_password(&new, "Secret123").await);
        assert!(check_password(&new, "Other4567").await);
        assert!(!check_password("garbage", "Secret123").await);
    }

    #[test]
    fn passwords() {
        let h = hash_password("Secret123");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&h, "Secret123"));
        assert!(!verify_password(&h, "secret123"));
        assert!(!verify_password("garbage", "Secret123"));
        assert!(check_password_rule("Secret123").is_ok());
        assert!(check_password_rule("secret123").is_err());
        assert!(check_password_rule("Sh0rt").is_err());
    }

    #[test]
    fn secrets() {
        let s = generate_secret();
        assert_eq!(s.len(), 32);
        assert!(s.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(s, generate_secret());
        let stored = hash_secret(&s);
        assert!(verify_secret(&stored, &s));
        assert!(!verify_secret(&stored, "nope"));
    }
}
