//! The token signing keys of the built-in token service, shared through the metadata store.
//!
//! Owns: generating a key pair with its self-signed certificate on first start, signing with
//! the newest key, verifying with every key not yet retired, rotating with overlap.
//! Invariants: every instance sharing the store signs with the newest key it has loaded and
//! verifies with all unretired ones; a superseded key keeps verifying for `overlap` (at least as
//! long as the longest-lived token it signed); a token naming a key this instance has not loaded
//! makes it reload the keys (at most once a second) before refusing it.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};

use super::keys::{libtrust_kid, KeySet};
use super::AuthError;
use crate::meta::access::{now_ms, AccessStore, SigningKey};

/// How long loaded keys are used before they are read again (a rotation by another instance
/// reaches this one within that time; a token signed with a newer key reloads at once).
const RELOAD_AFTER: Duration = Duration::from_secs(10);
/// Reloads caused by unknown key ids are at least this far apart.
const MISS_RELOAD_GAP: Duration = Duration::from_secs(1);

pub struct KeyRing {
    store: Arc<dyn AccessStore>,
    overlap: Duration,
    rotation: Duration,
    loaded: RwLock<Loaded>,
}

#[derive(Clone)]
struct Loaded {
    at: Instant,
    signer: Option<Signer>,
    verify: KeySet,
    kids: Vec<String>,
    certificates: Vec<String>,
}

#[derive(Clone)]
struct Signer {
    kid: String,
    key: EncodingKey,
    created_at: i64,
}

impl KeyRing {
    /// Loads the keys, creating the first one if the store has none. `overlap`: how long a
    /// superseded key still verifies; `rotation`: how old the newest key may get before a new
    /// one replaces it (zero: never automatically).
    pub async fn open(
        store: Arc<dyn AccessStore>,
        overlap: Duration,
        rotation: Duration,
    ) -> Result<KeyRing, AuthError> {
        let ring = KeyRing {
            store,
            overlap,
            rotation,
            loaded: RwLock::new(Loaded {
                at: Instant::now(),
                signer: None,
                verify: KeySet::default(),
                kids: Vec::new(),
                certificates: Vec::new(),
            }),
        };
        ring.reload().await?;
        if ring.current().signer.is_none() {
            // Several instances may start at once: the store adds the first key only.
            ring.store
                .add_signing_key(generate()?, -1, now_ms())
                .await
                .map_err(store_error)?;
            ring.reload().await?;
        }
        Ok(ring)
    }

    fn current(&self) -> Loaded {
        self.loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn reload(&self) -> Result<(), AuthError> {
        let keys = self
            .store
            .signing_keys(now_ms())
            .await
            .map_err(store_error)?;
        let mut verify = KeySet::default();
        let mut kids = Vec::new();
        let mut certificates = Vec::new();
        for k in &keys {
            verify
                .add_pem_bundle(k.certificate.as_bytes())
                .map_err(|e| {
                    AuthError::Config(format!("stored token signing key {}: {e}", k.kid))
                })?;
            kids.push(k.kid.clone());
            certificates.push(k.certificate.clone());
        }
        // Newest first: the first key that has not been superseded signs.
        let signer = match keys.iter().find(|k| k.retire_at.is_none()).or(keys.first()) {
            Some(k) => Some(Signer {
                kid: k.kid.clone(),
                key: EncodingKey::from_ec_pem(k.private_key.as_bytes()).map_err(|e| {
                    AuthError::Config(format!("stored token signing key {}: {e}", k.kid))
                })?,
                created_at: k.created_at,
            }),
            None => None,
        };
        *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = Loaded {
            at: Instant::now(),
            signer,
            verify,
            kids,
            certificates,
        };
        Ok(())
    }

    /// The keys to verify a token whose header names `kid`, reloaded first when they are old
    /// or do not hold that key.
    pub(crate) async fn verifying_keys(&self, kid: Option<&str>) -> Result<KeySet, AuthError> {
        let loaded = self.current();
        let missing = kid.is_some_and(|k| !loaded.kids.iter().any(|have| have == k));
        let stale = loaded.at.elapsed() > RELOAD_AFTER;
        if stale || (missing && loaded.at.elapsed() > MISS_RELOAD_GAP) {
            self.reload().await?;
            return Ok(self.current().verify);
        }
        Ok(loaded.verify)
    }

    /// Signs `claims` with the newest key (rotating first when it is due).
    pub async fn sign(&self, claims: &impl serde::Serialize) -> Result<String, AuthError> {
        let mut loaded = self.current();
        if loaded.at.elapsed() > RELOAD_AFTER {
            self.reload().await?;
            loaded = self.current();
        }
        if let Some(s) = &loaded.signer {
            let age = Duration::from_millis((now_ms() - s.created_at).max(0) as u64);
            if !self.rotation.is_zero() && age > self.rotation {
                let due_before = now_ms() - self.rotation.as_millis() as i64;
                self.rotate_unless_newer(due_before).await?;
                loaded = self.current();
            }
        }
        let Some(signer) = loaded.signer else {
            return Err(AuthError::Config("no token signing key".into()));
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(signer.kid.clone());
        jsonwebtoken::encode(&header, claims, &signer.key)
            .map_err(|e| AuthError::Config(format!("signing a token: {e}")))
    }

    /// Replaces the signing key now; the old ones verify for the overlap. Returns the new key id.
    pub async fn rotate(&self) -> Result<String, AuthError> {
        self.rotate_unless_newer(now_ms()).await?;
        Ok(self.current().signer.map(|s| s.kid).unwrap_or_default())
    }

    async fn rotate_unless_newer(&self, unless_newer_than: i64) -> Result<(), AuthError> {
        let retire_at = now_ms() + self.overlap.as_millis() as i64;
        self.store
            .add_signing_key(generate()?, unless_newer_than, retire_at)
            .await
            .map_err(store_error)?;
        self.reload().await
    }

    /// The certificates of every key that verifies tokens now, PEM, newest first: the
    /// `rootcertbundle` of a registry that uses this service.
    pub async fn certificates(&self) -> Result<String, AuthError> {
        self.reload().await?;
        Ok(self.current().certificates.concat())
    }
}

fn store_error(e: crate::meta::MetaError) -> AuthError {
    AuthError::Unavailable(e.to_string())
}

/// A new P-256 key pair, its self-signed certificate and its key id (libtrust's form, which
/// Distribution matches against the certificates of its `rootcertbundle`).
fn generate() -> Result<SigningKey, AuthError> {
    let err = |e: rcgen::Error| AuthError::Config(format!("generating a token signing key: {e}"));
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "berth token signing key");
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2999, 12, 31);
    let cert = params.self_signed(&pair).map_err(err)?;
    Ok(SigningKey {
        kid: libtrust_kid(&rcgen::PublicKeyData::subject_public_key_info(&pair)),
        private_key: pair.serialize_pem(),
        certificate: cert.pem(),
        created_at: now_ms(),
        retire_at: None,
    })
}
