//! Trusted token-signing keys: loading the root certificate bundle and JWKS files, key IDs, and
//! X.509 chain verification for tokens that carry an `x5c` header.
//!
//! Owns: turning certificates and JWKs into `jsonwebtoken` [`DecodingKey`]s, the key IDs a token
//! header's `kid` may use to name a bundle key (RFC 7638 JWK thumbprint as Distribution 3, and the
//! libtrust fingerprint of Distribution 2 / docker_auth / GitLab), and checking that an `x5c`
//! chain ends in a bundle certificate.
//! Invariants: only keys read from the configured files are trusted; a chain is accepted only if
//! every link's signature verifies with its issuer's key, every certificate is within its
//! validity period, and every issuer other than a bundle root is a CA.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use sha2::{Digest as _, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_EC: &str = "1.2.840.10045.2.1";
const OID_ED25519: &str = "1.3.101.112";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";

/// Longest certificate chain followed (leaf + intermediates).
const MAX_CHAIN: usize = 8;

/// The kind of a public key, as far as choosing a JWS algorithm goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
    /// A symmetric key from a JWKS (`kty: oct`), for HS256/384/512.
    Hmac,
}

impl KeyKind {
    /// Whether a token signed with `alg` may be verified with a key of this kind.
    pub(crate) fn accepts(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        matches!(
            (self, alg),
            (KeyKind::Rsa, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
                | (KeyKind::P256, ES256)
                | (KeyKind::P384, ES384)
                | (KeyKind::Ed25519, EdDSA)
                | (KeyKind::Hmac, HS256 | HS384 | HS512)
        )
    }
}

/// A public key a token may be signed with.
#[derive(Clone)]
pub(crate) struct TrustedKey {
    pub(crate) key: DecodingKey,
    pub(crate) kind: KeyKind,
    /// Names a token header's `kid` may use for this key.
    pub(crate) kids: Vec<String>,
}

/// A certificate of the root bundle.
#[derive(Clone)]
pub(crate) struct Root {
    der: Vec<u8>,
    subject: Vec<u8>,
    key: TrustedKey,
}

/// Every key trusted to sign tokens.
#[derive(Clone, Default)]
pub(crate) struct KeySet {
    pub(crate) roots: Vec<Root>,
    /// Keys of the bundle certificates and of the JWKS.
    pub(crate) keys: Vec<TrustedKey>,
}

impl KeySet {
    /// Add every `CERTIFICATE` block of a PEM bundle; returns how many were added. Fails on a
    /// certificate that cannot be parsed or whose key type is not supported.
    pub(crate) fn add_pem_bundle(&mut self, pem_text: &[u8]) -> Result<usize, String> {
        let mut added = 0;
        for item in x509_parser::pem::Pem::iter_from_buffer(pem_text) {
            let pem = item.map_err(|e| format!("invalid PEM: {e}"))?;
            if pem.label != "CERTIFICATE" {
                continue;
            }
            self.add_cert_der(&pem.contents)?;
            added += 1;
        }
        Ok(added)
    }

    /// Add one DER certificate as a root.
    pub(crate) fn add_cert_der(&mut self, der: &[u8]) -> Result<(), String> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| format!("invalid certificate: {e}"))?;
        let key = cert_key(&cert)?;
        self.roots.push(Root {
            der: der.to_vec(),
            subject: cert.subject().as_raw().to_vec(),
            key: key.clone(),
        });
        self.keys.push(key);
        Ok(())
    }

    /// Add every key of a JWKS document; returns how many were added.
    pub(crate) fn add_jwks(&mut self, json: &[u8]) -> Result<usize, String> {
        let set: JwkSet = serde_json::from_slice(json).map_err(|e| format!("invalid JWKS: {e}"))?;
        for jwk in &set.keys {
            let kind = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => KeyKind::Rsa,
                AlgorithmParameters::EllipticCurve(p) => match p.curve {
                    jsonwebtoken::jwk::EllipticCurve::P256 => KeyKind::P256,
                    jsonwebtoken::jwk::EllipticCurve::P384 => KeyKind::P384,
                    _ => return Err("JWKS: unsupported elliptic curve".into()),
                },
                AlgorithmParameters::OctetKeyPair(_) => KeyKind::Ed25519,
                AlgorithmParameters::OctetKey(_) => KeyKind::Hmac,
                _ => return Err("JWKS: unsupported key type".into()),
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("JWKS: invalid key: {e}"))?;
            let mut kids = Vec::new();
            if let Some(kid) = &jwk.common.key_id {
                kids.push(kid.clone());
            }
            self.keys.push(TrustedKey { key, kind, kids });
        }
        Ok(set.keys.len())
    }

    /// Keys a token header's `kid` names.
    pub(crate) fn by_kid<'a>(&'a self, kid: &'a str) -> impl Iterator<Item = &'a TrustedKey> + 'a {
        self.keys
            .iter()
            .filter(move |k| k.kids.iter().any(|x| x == kid))
    }

    /// Verify an `x5c` chain (DER, leaf first) against the bundle at unix time `now`; returns
    /// the leaf's key.
    pub(crate) fn verify_chain(&self, chain: &[Vec<u8>], now: i64) -> Result<TrustedKey, String> {
        let leaf_der = chain.first().ok_or("empty x5c chain")?;
        let mut certs = Vec::with_capacity(chain.len());
        for der in chain.iter().take(MAX_CHAIN) {
            let (_, c) = X509Certificate::from_der(der)
                .map_err(|e| format!("invalid x5c certificate: {e}"))?;
            certs.push(c);
        }
        if chain.len() > MAX_CHAIN {
            return Err("x5c chain too long".into());
        }
        let leaf = &certs[0];
        check_time(leaf, now)?;
        let leaf_key = cert_key(leaf)?;

        let mut current = 0usize;
        let mut current_der: &[u8] = leaf_der;
        for _ in 0..MAX_CHAIN {
            let cert = &certs[current];
            // The certificate is itself a bundle certificate.
            if self.roots.iter().any(|r| r.der == current_der) {
                return Ok(leaf_key);
            }
            // Issued by a bundle certificate.
            let issuer = cert.issuer().as_raw();
            for root in self.roots.iter().filter(|r| r.subject == issuer) {
                let Ok((_, rc)) = X509Certificate::from_der(&root.der) else {
                    continue;
                };
                if check_time(&rc, now).is_ok() && signed_by(cert, &root.key) {
                    return Ok(leaf_key);
                }
            }
            // Issued by an intermediate of the chain.
            let next = (1..certs.len()).find(|&i| {
                i != current
                    && certs[i].subject().as_raw() == issuer
                    && is_ca(&certs[i])
                    && check_time(&certs[i], now).is_ok()
                    && cert_key(&certs[i]).is_ok_and(|k| signed_by(cert, &k))
            });
            match next {
                Some(i) => {
                    current = i;
                    current_der = &chain[i];
                }
                None => return Err("x5c chain does not lead to a trusted certificate".into()),
            }
        }
        Err("x5c chain too long".into())
    }
}

/// Decode an `x5c` list (standard base64 DER certificates).
pub(crate) fn decode_x5c(list: &[String]) -> Result<Vec<Vec<u8>>, String> {
    list.iter()
        .map(|c| {
            STANDARD
                .decode(c)
                .map_err(|_| "invalid base64 in x5c".to_string())
        })
        .collect()
}

fn check_time(cert: &X509Certificate<'_>, now: i64) -> Result<(), String> {
    let v = cert.validity();
    if now < v.not_before.timestamp() || now > v.not_after.timestamp() {
        return Err("certificate outside its validity period".into());
    }
    Ok(())
}

fn is_ca(cert: &X509Certificate<'_>) -> bool {
    matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca)
}

/// Whether `cert`'s signature verifies with `issuer`'s key.
fn signed_by(cert: &X509Certificate<'_>, issuer: &TrustedKey) -> bool {
    let alg = match cert.signature_algorithm.algorithm.to_id_string().as_str() {
        "1.2.840.113549.1.1.11" => Algorithm::RS256,
        "1.2.840.113549.1.1.12" => Algorithm::RS384,
        "1.2.840.113549.1.1.13" => Algorithm::RS512,
        "1.2.840.10045.4.3.2" => Algorithm::ES256,
        "1.2.840.10045.4.3.3" => Algorithm::ES384,
        OID_ED25519 => Algorithm::EdDSA,
        _ => return false,
    };
    if !issuer.kind.accepts(alg) {
        return false;
    }
    let raw_sig: &[u8] = &cert.signature_value.data;
    let sig = match alg {
        Algorithm::ES256 => ecdsa_der_to_fixed(raw_sig, 32),
        Algorithm::ES384 => ecdsa_der_to_fixed(raw_sig, 48),
        _ => Some(raw_sig.to_vec()),
    };
    let Some(sig) = sig else { return false };
    let tbs: &[u8] = cert.tbs_certificate.as_ref();
    jsonwebtoken::crypto::verify(&URL_SAFE_NO_PAD.encode(sig), tbs, &issuer.key, alg)
        .unwrap_or(false)
}

/// ECDSA signatures in certificates are DER `SEQUENCE { INTEGER r, INTEGER s }`; JWS wants
/// `r || s`, each left-padded to the curve size.
fn ecdsa_der_to_fixed(der: &[u8], size: usize) -> Option<Vec<u8>> {
    fn read_len(b: &[u8]) -> Option<(usize, &[u8])> {
        let (&first, rest) = b.split_first()?;
        if first < 0x80 {
            return Some((first as usize, rest));
        }
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 2 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &x| (acc << 8) | x as usize);
        Some((len, &rest[n..]))
    }
    fn read_int(b: &[u8]) -> Option<(&[u8], &[u8])> {
        let (&tag, rest) = b.split_first()?;
        if tag != 0x02 {
            return None;
        }
        let (len, rest) = read_len(rest)?;
        if rest.len() < len {
            return None;
        }
        Some(rest.split_at(len))
    }
    let (&tag, rest) = der.split_first()?;
    if tag != 0x30 {
        return None;
    }
    let (len, body) = read_len(rest)?;
    if body.len() != len {
        return None;
    }
    let (r, body) = read_int(body)?;
    let (s, body) = read_int(body)?;
    if !body.is_empty() {
        return None;
    }
    let mut out = vec![0u8; 2 * size];
    for (i, v) in [r, s].into_iter().enumerate() {
        let v = strip_zeros(v);
        if v.len() > size {
            return None;
        }
        let end = (i + 1) * size;
        out[end - v.len()..end].copy_from_slice(v);
    }
    Some(out)
}

fn strip_zeros(v: &[u8]) -> &[u8] {
    let first = v.iter().position(|&b| b != 0).unwrap_or(v.len());
    &v[first..]
}

/// The public key of a certificate, with the key IDs that may name it.
fn cert_key(cert: &X509Certificate<'_>) -> Result<TrustedKey, String> {
    let spki = cert.public_key();
    let data: &[u8] = &spki.subject_public_key.data;
    let oid = spki.algorithm.algorithm.to_id_string();
    let mut kids = vec![libtrust_kid(spki.raw)];
    let (key, kind) = match oid.as_str() {
        OID_RSA => {
            let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = spki.parsed() else {
                return Err("invalid RSA public key in certificate".into());
            };
            let (n, e) = (strip_zeros(rsa.modulus), strip_zeros(rsa.exponent));
            kids.push(thumbprint(&format!(
                r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
                URL_SAFE_NO_PAD.encode(e),
                URL_SAFE_NO_PAD.encode(n)
            )));
            (DecodingKey::from_rsa_der(data), KeyKind::Rsa)
        }
        OID_EC => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string());
            let (kind, crv, size) = match curve.as_deref() {
                Some(OID_P256) => (KeyKind::P256, "P-256", 32),
                Some(OID_P384) => (KeyKind::P384, "P-384", 48),
                _ => return Err("unsupported elliptic curve in certificate (P-256, P-384)".into()),
            };
            if data.len() != 1 + 2 * size || data[0] != 4 {
                return Err("unsupported EC point encoding in certificate".into());
            }
            let (x, y) = data[1..].split_at(size);
            // RFC 7638 uses fixed-size coordinates; Distribution 3 strips leading zero bytes.
            // Both name the key.
            for (x, y) in [(x, y), (strip_zeros(x), strip_zeros(y))] {
                let kid = thumbprint(&format!(
                    r#"{{"crv":"{crv}","kty":"EC","x":"{}","y":"{}"}}"#,
                    URL_SAFE_NO_PAD.encode(x),
                    URL_SAFE_NO_PAD.encode(y)
                ));
                if !kids.contains(&kid) {
                    kids.push(kid);
                }
            }
            (DecodingKey::from_ec_der(data), kind)
        }
        OID_ED25519 => {
            kids.push(thumbprint(&format!(
                r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
                URL_SAFE_NO_PAD.encode(data)
            )));
            (DecodingKey::from_ed_der(data), KeyKind::Ed25519)
        }
        other => {
            return Err(format!(
                "unsupported public key algorithm {other} in certificate"
            ))
        }
    };
    Ok(TrustedKey { key, kind, kids })
}

fn thumbprint(canonical_json: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical_json.as_bytes()))
}

/// The libtrust key ID (Distribution 2.x, docker_auth, GitLab): SHA-256 of the DER
/// SubjectPublicKeyInfo, truncated to 240 bits, base32, in groups of 4 separated by `:`.
pub(crate) fn libtrust_kid(spki_der: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let hash = Sha256::digest(spki_der);
    let bytes = &hash[..30];
    let mut b32 = String::with_capacity(48);
    for chunk in bytes.chunks(5) {
        let v = chunk.iter().fold(0u64, |acc, &b| (acc << 8) | b as u64);
        for i in (0..8).rev() {
            b32.push(ALPHABET[((v >> (i * 5)) & 31) as usize] as char);
        }
    }
    let groups: Vec<&str> = (0..12).map(|i| &b32[i * 4..i * 4 + 4]).collect();
    groups.join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_to_fixed() {
        // r = 0x00ff (leading zero for sign), s = 0x01
        let der = [0x30, 0x07, 0x02, 0x02, 0x00, 0xff, 0x02, 0x01, 0x01];
        let out = ecdsa_der_to_fixed(&der, 4).unwrap();
        assert_eq!(out, vec![0, 0, 0, 0xff, 0, 0, 0, 1]);
        assert!(ecdsa_der_to_fixed(&der[..8], 4).is_none());
        assert!(ecdsa_der_to_fixed(&[0x31, 0x00], 4).is_none());
    }

    #[test]
    fn libtrust_format() {
        let kid = libtrust_kid(b"anything");
        assert_eq!(kid.len(), 59);
        assert_eq!(kid.split(':').count(), 12);
        assert!(kid
            .chars()
            .all(|c| c == ':' || c.is_ascii_uppercase() || ('2'..='7').contains(&c)));
    }
}
