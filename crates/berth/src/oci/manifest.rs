//! Manifest parsing and validation: OCI image manifest and index, Docker schema2 manifest and
//! manifest list, and artifacts (an OCI manifest with `artifactType` or any config media type).
//!
//! This module never does I/O: it turns bytes plus a `Content-Type` into a [`ParsedManifest`] that
//! lists what the manifest references, so the core can check those references exist.

use serde::Deserialize;

use super::digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// The largest manifest accepted, as the spec recommends.
pub const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;

const SCHEMA1_MESSAGE: &str = "Docker schema1 manifests are deprecated and not supported; push the image as Docker schema2 or OCI (e.g. `skopeo copy --format v2s2` or `--format oci`)";

/// Whether a manifest is a single image (or artifact) or an index of manifests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestKind {
    Image,
    Index,
}

/// A content descriptor as it appears inside a manifest.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default)]
    pub urls: Vec<String>,
    #[serde(default)]
    pub artifact_type: Option<String>,
    /// For a manifest listed in an index: the platform it is for.
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// The platform of an index entry (the fields that select it: `os` and `architecture`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
}

/// A manifest an index lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Child {
    pub digest: Digest,
    pub platform: Option<Platform>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A validated manifest and what it references.
#[derive(Debug)]
pub struct ParsedManifest {
    pub media_type: String,
    pub kind: ManifestKind,
    /// Blobs that must be present in the repository (config and distributable layers).
    pub blobs: Vec<Digest>,
    /// Which of `blobs` is the image's config (`None` for an index).
    pub config: Option<Digest>,
    /// Manifests an index lists (which of them must be present is the core's policy).
    pub children: Vec<Child>,
    pub subject: Option<Digest>,
    /// The artifact type as the referrers API reports it: `artifactType`, else the config media type.
    pub artifact_type: Option<String>,
    /// The manifest's annotations as a JSON object, if any.
    pub annotations: Option<serde_json::Value>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ManifestError(pub String);

fn invalid(msg: impl Into<String>) -> ManifestError {
    ManifestError(msg.into())
}

/// Strips parameters (`; charset=...`) and whitespace from a Content-Type value.
pub fn essence(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

/// Whether a layer need not be present in the registry: foreign / non-distributable layers that
/// name URLs they are fetched from.
fn non_distributable(d: &Descriptor) -> bool {
    !d.urls.is_empty()
        && (d.media_type.contains("foreign") || d.media_type.contains("nondistributable"))
}

/// Parses and validates a manifest pushed with the given `Content-Type` (if any).
pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<ParsedManifest, ManifestError> {
    if body.len() > MAX_MANIFEST_SIZE {
        return Err(invalid(format!(
            "manifest is {} bytes; the limit is {MAX_MANIFEST_SIZE}",
            body.len()
        )));
    }
    let header = content_type.map(essence).filter(|c| !c.is_empty());
    if matches!(header, Some(DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED)) {
        return Err(invalid(SCHEMA1_MESSAGE));
    }
    let raw: RawManifest = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("manifest is not a valid JSON manifest: {e}")))?;
    match raw.schema_version {
        Some(2) => {}
        Some(1) => return Err(invalid(SCHEMA1_MESSAGE)),
        Some(v) => {
            return Err(invalid(format!(
                "schemaVersion {v} is not supported; expected 2"
            )))
        }
        None => return Err(invalid("manifest has no schemaVersion")),
    }
    // The media type: the body's `mediaType` and the Content-Type must agree when both are given.
    let generic = |c: &str| matches!(c, "application/json" | "application/octet-stream");
    let media_type = match (raw.media_type.as_deref(), header) {
        (Some(body_mt), Some(h)) if body_mt != h && !generic(h) => {
            return Err(invalid(format!(
                "Content-Type {h:?} does not match the manifest's mediaType {body_mt:?}"
            )))
        }
        (Some(body_mt), _) => body_mt.to_string(),
        (None, Some(h)) if !generic(h) => h.to_string(),
        // Neither names a type: infer the OCI type from the structure.
        (None, _) if raw.manifests.is_some() => OCI_INDEX.to_string(),
        (None, _) => OCI_MANIFEST.to_string(),
    };
    let kind = match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => ManifestKind::Image,
        OCI_INDEX | DOCKER_MANIFEST_LIST => ManifestKind::Index,
        DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED => return Err(invalid(SCHEMA1_MESSAGE)),
        other => {
            return Err(invalid(format!(
                "unsupported manifest media type {other:?}; expected one of {OCI_MANIFEST}, {OCI_INDEX}, {DOCKER_MANIFEST}, {DOCKER_MANIFEST_LIST}"
            )))
        }
    };
    let annotations = raw.annotations.map(serde_json::Value::Object);
    let subject = raw.subject.map(|s| s.digest);
    match kind {
        ManifestKind::Image => {
            if raw.manifests.is_some() {
                return Err(invalid(
                    "an image manifest must not have a `manifests` field",
                ));
            }
            let config = raw
                .config
                .ok_or_else(|| invalid("image manifest has no `config` descriptor"))?;
            let layers = raw.layers.unwrap_or_default();
            if media_type == DOCKER_MANIFEST && layers.is_empty() {
                return Err(invalid(
                    "a Docker schema2 manifest must have at least one layer",
                ));
            }
            let mut blobs = vec![config.digest.clone()];
            blobs.extend(
                layers
                    .iter()
                    .filter(|l| !non_distributable(l))
                    .map(|l| l.digest.clone()),
            );
            let artifact_type = raw
                .artifact_type
                .or_else(|| Some(config.media_type.clone()));
            Ok(ParsedManifest {
                media_type,
                kind,
                blobs,
                config: Some(config.digest.clone()),
                children: Vec::new(),
                subject,
                artifact_type,
                annotations,
            })
        }
        ManifestKind::Index => {
            if raw.config.is_some() || raw.layers.is_some() {
                return Err(invalid(
                    "an image index must not have `config` or `layers` fields",
                ));
            }
            let manifests = raw
                .manifests
                .ok_or_else(|| invalid("image index has no `manifests` array"))?;
            Ok(ParsedManifest {
                media_type,
                kind,
                blobs: Vec::new(),
                config: None,
                children: manifests
                    .into_iter()
                    .map(|m| Child {
                        digest: m.digest,
                        platform: m.platform,
                    })
                    .collect(),
                subject,
                artifact_type: raw.artifact_type,
                annotations,
            })
        }
    }
}

/// Whether an `Accept` header admits a manifest of `media_type`. No header (or an empty one)
/// admits everything, as do `*/*` and `application/*`.
pub fn accepts(accept: &[&str], media_type: &str) -> bool {
    let mut any = false;
    for value in accept {
        for item in value.split(',') {
            let item = essence(item);
            if item.is_empty() {
                continue;
            }
            any = true;
            if item == media_type || item == "*/*" || item == "application/*" {
                return true;
            }
        }
    }
    !any
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const D2: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

    fn image(media_type: Option<&str>) -> String {
        let mt = media_type
            .map(|m| format!(r#""mediaType":"{m}","#))
            .unwrap_or_default();
        format!(
            r#"{{"schemaVersion":2,{mt}"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":0}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D2}","size":2}}]}}"#
        )
    }

    #[test]
    fn image_manifest_references() {
        let m = parse(Some(OCI_MANIFEST), image(Some(OCI_MANIFEST)).as_bytes()).unwrap();
        assert_eq!(m.kind, ManifestKind::Image);
        assert_eq!(m.blobs.len(), 2);
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        // No mediaType in the body: the Content-Type decides.
        let m = parse(Some(DOCKER_MANIFEST), image(None).as_bytes()).unwrap();
        assert_eq!(m.media_type, DOCKER_MANIFEST);
    }

    #[test]
    fn rejects_mismatch_schema1_and_garbage() {
        let e = parse(Some(OCI_INDEX), image(Some(OCI_MANIFEST)).as_bytes()).unwrap_err();
        assert!(e.0.contains("does not match"), "{e}");
        let e = parse(Some(DOCKER_SCHEMA1_SIGNED), b"{}").unwrap_err();
        assert!(e.0.contains("schema1"), "{e}");
        let e = parse(
            None,
            br#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#,
        )
        .unwrap_err();
        assert!(e.0.contains("schema1"), "{e}");
        assert!(parse(Some(OCI_MANIFEST), b"{not json").is_err());
        assert!(parse(Some("application/x-unknown"), image(None).as_bytes()).is_err());
    }

    #[test]
    fn index_children_and_subject() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":1}}],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{D2}","size":1}}}}"#
        );
        let m = parse(Some(OCI_INDEX), body.as_bytes()).unwrap();
        assert_eq!(m.kind, ManifestKind::Index);
        assert_eq!(m.children[0].digest.to_string(), D1);
        assert_eq!(m.subject.unwrap().to_string(), D2);
    }

    #[test]
    fn accept_negotiation() {
        assert!(accepts(&[], OCI_MANIFEST));
        assert!(accepts(&["*/*"], OCI_MANIFEST));
        assert!(accepts(
            &[&format!("{DOCKER_MANIFEST}, {OCI_MANIFEST};q=0.5")],
            OCI_MANIFEST
        ));
        assert!(!accepts(&[DOCKER_MANIFEST], OCI_INDEX));
    }
}
