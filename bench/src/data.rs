//! Deterministic test data: blob bytes from a counter-based PRNG (any byte range can be made
//! on its own, so uploads stream without holding blobs in memory), their digests, and the
//! manifests that reference them.

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// What clients send on manifest requests (Distribution 2.8 refuses OCI manifests to clients
/// that do not accept them).
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

pub const MIB: u64 = 1 << 20;

/// One 64-bit word of the stream `seed` at word index `k` (splitmix64 of a counter).
#[inline(always)]
fn word(seed: u64, k: u64) -> u64 {
    let mut z = seed
        .wrapping_add(k.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x632B_E59B_D9B4_E019);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fills `buf` with the bytes at `offset..offset + buf.len()` of stream `seed`.
pub fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut pos = 0usize;
    let mut off = offset;
    // Unaligned head.
    while pos < buf.len() && !off.is_multiple_of(8) {
        buf[pos] = word(seed, off / 8).to_le_bytes()[(off % 8) as usize];
        pos += 1;
        off += 1;
    }
    let mut k = off / 8;
    let mut chunks = buf[pos..].chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&word(seed, k).to_le_bytes());
        k += 1;
    }
    let rem = chunks.into_remainder();
    if !rem.is_empty() {
        let w = word(seed, k).to_le_bytes();
        let n = rem.len();
        rem.copy_from_slice(&w[..n]);
    }
}

pub fn gen_bytes(seed: u64, len: u64) -> Bytes {
    let mut v = vec![0u8; len as usize];
    fill(seed, 0, &mut v);
    Bytes::from(v)
}

pub fn sha256_hex(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A blob made of PRNG bytes: seed, length and digest.
#[derive(Clone, Debug)]
pub struct Blob {
    pub seed: u64,
    pub len: u64,
    pub digest: String,
    /// Kept in memory when small (or when the content is not PRNG bytes, e.g. a config).
    pub bytes: Option<Bytes>,
}

impl Blob {
    /// A PRNG blob; small ones (<= 4 MiB) are kept in memory.
    pub fn prng(seed: u64, len: u64) -> Blob {
        if len <= 4 * MIB {
            let b = gen_bytes(seed, len);
            return Blob {
                seed,
                len,
                digest: sha256_hex(&b),
                bytes: Some(b),
            };
        }
        let mut h = Sha256::new();
        let mut buf = vec![0u8; MIB as usize];
        let mut off = 0;
        while off < len {
            let n = (len - off).min(MIB) as usize;
            fill(seed, off, &mut buf[..n]);
            h.update(&buf[..n]);
            off += n as u64;
        }
        Blob {
            seed,
            len,
            digest: format!("sha256:{}", hex::encode(h.finalize())),
            bytes: None,
        }
    }

    pub fn literal(data: Bytes) -> Blob {
        Blob {
            seed: 0,
            len: data.len() as u64,
            digest: sha256_hex(&data),
            bytes: Some(data),
        }
    }
}

/// A manifest's exact bytes and digest.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub bytes: Bytes,
    pub digest: String,
}

fn descriptor(media_type: &str, b: &Blob) -> String {
    format!(
        r#"{{"mediaType":"{media_type}","digest":"{}","size":{}}}"#,
        b.digest, b.len
    )
}

/// An OCI image manifest with `config` and `layers`, padded with an annotation to at least
/// `min_len` bytes.
pub fn manifest(config: &Blob, layers: &[Blob], min_len: usize) -> Manifest {
    let layers: Vec<String> = layers.iter().map(|l| descriptor(OCI_LAYER, l)).collect();
    let build = |pad: &str| {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[{}],"annotations":{{"org.opencontainers.image.title":"berth-bench{pad}"}}}}"#,
            descriptor(OCI_CONFIG, config),
            layers.join(",")
        )
    };
    let mut text = build("");
    if text.len() < min_len {
        let pad = "-".repeat(min_len - text.len());
        text = build(&pad);
    }
    let bytes = Bytes::from(text);
    Manifest {
        digest: sha256_hex(&bytes),
        bytes,
    }
}

/// A small image config (distinct per `label`).
pub fn config(label: &str) -> Blob {
    Blob::literal(Bytes::from(format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Labels":{{"bench":"{label}"}}}},"rootfs":{{"type":"layers","diff_ids":[]}}}}"#
    )))
}

/// The fixed data set that the read scenarios pull (same bytes on every registry and nginx).
pub struct PullSet {
    pub repo: String,
    pub tag: String,
    pub small: Vec<Blob>,
    pub big: Vec<Blob>,
    pub config: Blob,
    pub manifest: Manifest,
}

pub const PULL_REPO: &str = "bench/pull";
pub const SMALL_BLOBS: usize = 64;
pub const BIG_BLOBS: usize = 2;
pub const BIG_LEN: u64 = 256 * MIB;

impl PullSet {
    pub fn new() -> PullSet {
        let small: Vec<Blob> = (0..SMALL_BLOBS as u64)
            .map(|i| Blob::prng(1000 + i, MIB))
            .collect();
        let big: Vec<Blob> = (0..BIG_BLOBS as u64)
            .map(|i| Blob::prng(2000 + i, BIG_LEN))
            .collect();
        let config = config("pull");
        let manifest = manifest(&config, &small[..5], 1100);
        PullSet {
            repo: PULL_REPO.into(),
            tag: "latest".into(),
            small,
            big,
            config,
            manifest,
        }
    }

    /// Every blob the manifest and the pull scenarios need.
    pub fn blobs(&self) -> Vec<&Blob> {
        let mut v: Vec<&Blob> = vec![&self.config];
        v.extend(self.small.iter());
        v.extend(self.big.iter());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_is_position_independent() {
        let whole = gen_bytes(7, 1000);
        let mut part = vec![0u8; 333];
        fill(7, 101, &mut part);
        assert_eq!(&whole[101..434], &part[..]);
    }

    #[test]
    fn big_digest_matches_in_memory() {
        let len = 5 * MIB + 3;
        let b = Blob::prng(9, len);
        assert_eq!(b.digest, sha256_hex(&gen_bytes(9, len)));
    }

    #[test]
    fn manifest_is_padded() {
        let c = config("x");
        let m = manifest(&c, &[Blob::prng(1, 10)], 1100);
        assert_eq!(m.bytes.len(), 1100);
        let v: serde_json::Value = serde_json::from_slice(&m.bytes).unwrap();
        assert_eq!(v["schemaVersion"], 2);
    }
}
