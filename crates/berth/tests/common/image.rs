//! Test images generated on disk: real gzip'd tar layers, OCI image configs and manifests, a
//! multi-arch image index, Docker schema2 images, written as OCI image layouts (for
//! `skopeo copy oci:<dir>:<tag>`) or as skopeo `dir:` directories (which preserve the manifest
//! bytes exactly, whatever its media type).
//!
//! Everything is deterministic for a given seed, and different seeds give different content.
//! Digests are computed here, independently of the server, with `sha2`.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

pub const OCI_LAYOUT_VERSION: &str = "1.0.0";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Annotation carrying the tag of a manifest in an OCI layout's index.json.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// `sha256:<hex>` of some bytes.
pub fn digest(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// A content-addressed blob (layer, config, manifest or index) with its media type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    pub media_type: String,
    pub digest: String,
    pub data: Vec<u8>,
}

impl Blob {
    pub fn new(media_type: &str, data: Vec<u8>) -> Blob {
        Blob {
            media_type: media_type.to_string(),
            digest: digest(&data),
            data,
        }
    }

    /// An OCI content descriptor for this blob.
    pub fn descriptor(&self) -> Value {
        json!({
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.data.len(),
        })
    }

    /// The hex part of the digest (the file name under blobs/sha256/).
    pub fn hex(&self) -> &str {
        self.digest.strip_prefix("sha256:").expect("sha256 digest")
    }
}

/// A single-platform image: manifest + config + layers.
#[derive(Clone, Debug)]
pub struct Image {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    /// The image manifest (OCI or Docker schema2, per its media type).
    pub manifest: Blob,
    pub config: Blob,
    /// gzip-compressed tar layers, in order.
    pub layers: Vec<Blob>,
    /// Uncompressed tar of each layer, in order.
    pub layer_tars: Vec<Vec<u8>>,
    /// sha256 of each uncompressed tar (the config's rootfs.diff_ids).
    pub diff_ids: Vec<String>,
    /// The files of each layer (path, content).
    pub layer_files: Vec<Vec<(String, Vec<u8>)>>,
}

impl Image {
    /// Every blob the manifest refers to (config first, then layers).
    pub fn blobs(&self) -> Vec<&Blob> {
        let mut v = vec![&self.config];
        v.extend(self.layers.iter());
        v
    }

    /// The platform object of this image, as used in an image index.
    pub fn platform(&self) -> Value {
        let mut p = json!({"architecture": self.architecture, "os": self.os});
        if let Some(v) = &self.variant {
            p["variant"] = json!(v);
        }
        p
    }
}

/// A multi-platform image: an image index and its child images.
#[derive(Clone, Debug)]
pub struct MultiArch {
    /// The image index (OCI index or Docker manifest list, per its media type).
    pub index: Blob,
    pub images: Vec<Image>,
}

impl MultiArch {
    /// Every blob reachable from the index, except the index itself (child manifests, configs,
    /// layers), deduplicated.
    pub fn blobs(&self) -> Vec<&Blob> {
        let mut seen = BTreeSet::new();
        let mut v = Vec::new();
        for img in &self.images {
            for b in std::iter::once(&img.manifest).chain(img.blobs()) {
                if seen.insert(b.digest.clone()) {
                    v.push(b);
                }
            }
        }
        v
    }
}

/// splitmix64: a tiny deterministic PRNG (no external crate needed).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5851_f42d_4c95_7f2d)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// Deterministic pseudo-random bytes (incompressible), e.g. for large upload bodies.
pub fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    Rng::new(seed).bytes(n)
}

/// The files of layer `layer` of the image with `seed`: a few small text and binary files.
pub fn layer_files(seed: u64, layer: usize) -> Vec<(String, Vec<u8>)> {
    let mut rng = Rng::new(seed.wrapping_mul(1_000_003).wrapping_add(layer as u64));
    let mut files = Vec::new();
    files.push((
        format!("etc/berth/layer-{layer}.conf"),
        format!("# berth test image\nseed = {seed}\nlayer = {layer}\n").into_bytes(),
    ));
    let text_len = 200 + rng.below(2000) as usize;
    let mut text = String::new();
    while text.len() < text_len {
        text.push_str(&format!(
            "line {} of seed {seed} layer {layer}\n",
            rng.below(100_000)
        ));
    }
    files.push((
        format!("usr/share/berth/{seed}/notes-{layer}.txt"),
        text.into_bytes(),
    ));
    // Some incompressible content so layers have a realistic, non-trivial size.
    let bin_len = 4096 + rng.below(28 * 1024) as usize;
    files.push((format!("opt/berth/data-{layer}.bin"), rng.bytes(bin_len)));
    if layer == 0 {
        files.push((
            "bin/hello".to_string(),
            format!("#!/bin/sh\necho hello from berth image {seed}\n").into_bytes(),
        ));
    }
    files
}

/// A deterministic (ustar, fixed mtime/owner) tar of the given files, with parent directories.
pub fn tar_bytes(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs = BTreeSet::new();
    for (path, _) in files {
        let mut cur = PathBuf::new();
        let p = Path::new(path);
        if let Some(parent) = p.parent() {
            for c in parent.components() {
                cur.push(c);
                dirs.insert(cur.clone());
            }
        }
    }
    for d in &dirs {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(0);
        b.append_data(&mut h, format!("{}/", d.display()), std::io::empty())
            .expect("tar dir");
    }
    for (path, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(if path.starts_with("bin/") {
            0o755
        } else {
            0o644
        });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, &data[..]).expect("tar file");
    }
    b.into_inner().expect("tar finish")
}

/// The (path, content) of every regular file in a tar.
pub fn untar_files(tar_data: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut a = tar::Archive::new(tar_data);
    let mut out = Vec::new();
    for e in a.entries().expect("tar entries") {
        let mut e = e.expect("tar entry");
        if e.header().entry_type() == tar::EntryType::Regular {
            let path = e.path().expect("path").display().to_string();
            let mut data = Vec::new();
            e.read_to_end(&mut data).expect("read tar entry");
            out.push((path, data));
        }
    }
    out
}

/// gzip (deterministic: no file name, mtime 0).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip finish")
}

pub fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .expect("gunzip");
    out
}

/// An uncompressed root filesystem tar for `docker import` (the files of a 1-layer image).
pub fn rootfs_tar(seed: u64) -> Vec<u8> {
    tar_bytes(&layer_files(seed, 0))
}

fn build_image(
    seed: u64,
    architecture: &str,
    variant: Option<&str>,
    nlayers: usize,
    docker: bool,
) -> Image {
    let (manifest_type, config_type, layer_type) = if docker {
        (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER_GZIP)
    } else {
        (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER_GZIP)
    };
    // Different architectures of the same seed must get different layers.
    let arch_salt = architecture
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    let content_seed = seed.wrapping_add(arch_salt.wrapping_mul(7919));
    let mut layer_files_v = Vec::new();
    let mut layer_tars = Vec::new();
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for i in 0..nlayers {
        let files = layer_files(content_seed, i);
        let t = tar_bytes(&files);
        diff_ids.push(digest(&t));
        layers.push(Blob::new(layer_type, gzip(&t)));
        layer_tars.push(t);
        layer_files_v.push(files);
    }
    let history: Vec<Value> = (0..nlayers)
        .map(|i| {
            json!({
                "created": "2024-01-01T00:00:00Z",
                "created_by": format!("berth test layer {i} (seed {seed})"),
            })
        })
        .collect();
    let mut config = json!({
        "created": "2024-01-01T00:00:00Z",
        "architecture": architecture,
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    format!("BERTH_SEED={seed}")],
            "Cmd": ["/bin/hello"],
            "Labels": {"org.berth.test.seed": seed.to_string()},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    });
    if let Some(v) = variant {
        config["variant"] = json!(v);
    }
    let config = Blob::new(
        config_type,
        serde_json::to_vec(&config).expect("config json"),
    );
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": config.descriptor(),
        "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
    });
    if !docker {
        manifest["annotations"] = json!({"org.berth.test.seed": seed.to_string()});
    }
    let manifest = Blob::new(
        manifest_type,
        serde_json::to_vec_pretty(&manifest).expect("manifest json"),
    );
    Image {
        os: "linux".into(),
        architecture: architecture.into(),
        variant: variant.map(str::to_string),
        manifest,
        config,
        layers,
        layer_tars,
        diff_ids,
        layer_files: layer_files_v,
    }
}

/// A linux/amd64 OCI image with `nlayers` layers.
pub fn oci_image(seed: u64, nlayers: usize) -> Image {
    build_image(seed, "amd64", None, nlayers, false)
}

/// An OCI image for a given architecture.
pub fn oci_image_for(
    seed: u64,
    architecture: &str,
    variant: Option<&str>,
    nlayers: usize,
) -> Image {
    build_image(seed, architecture, variant, nlayers, false)
}

/// A linux/amd64 Docker schema2 image (Docker media types throughout).
pub fn docker_image(seed: u64, nlayers: usize) -> Image {
    build_image(seed, "amd64", None, nlayers, true)
}

/// An OCI image index with linux/amd64 and linux/arm64/v8 children.
pub fn oci_multi_arch(seed: u64) -> MultiArch {
    let images = vec![
        build_image(seed, "amd64", None, 2, false),
        build_image(seed, "arm64", Some("v8"), 2, false),
    ];
    let manifests: Vec<Value> = images
        .iter()
        .map(|img| {
            let mut d = img.manifest.descriptor();
            d["platform"] = img.platform();
            d
        })
        .collect();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
        "annotations": {"org.berth.test.seed": seed.to_string()},
    });
    MultiArch {
        index: Blob::new(
            OCI_INDEX,
            serde_json::to_vec_pretty(&index).expect("index json"),
        ),
        images,
    }
}

/// Write `blob` under `<dir>/blobs/sha256/<hex>`.
fn write_blob(dir: &Path, blob: &Blob) {
    let p = dir.join("blobs").join("sha256").join(blob.hex());
    std::fs::create_dir_all(p.parent().unwrap()).expect("mkdir blobs");
    std::fs::write(&p, &blob.data).expect("write blob");
}

/// Write an OCI image layout whose index.json refers to `top` (a manifest or index) under
/// `tag`, containing `top` and `blobs`.
pub fn write_oci_layout(dir: &Path, tag: &str, top: &Blob, blobs: &[&Blob]) {
    std::fs::create_dir_all(dir).expect("mkdir layout");
    std::fs::write(
        dir.join("oci-layout"),
        serde_json::to_vec(&json!({"imageLayoutVersion": OCI_LAYOUT_VERSION})).unwrap(),
    )
    .expect("write oci-layout");
    write_blob(dir, top);
    for b in blobs {
        write_blob(dir, b);
    }
    let mut desc = top.descriptor();
    desc["annotations"] = json!({ REF_NAME: tag });
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [desc],
    });
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec_pretty(&index).unwrap(),
    )
    .expect("write index.json");
}

/// Write a single-platform image as an OCI layout (`oci:<dir>:<tag>`).
pub fn write_image_layout(dir: &Path, tag: &str, img: &Image) {
    write_oci_layout(dir, tag, &img.manifest, &img.blobs());
}

/// Write a multi-platform image as an OCI layout whose index.json points to the image index.
pub fn write_multi_arch_layout(dir: &Path, tag: &str, m: &MultiArch) {
    write_oci_layout(dir, tag, &m.index, &m.blobs());
}

/// Write an image in skopeo's `dir:` format: `manifest.json` (bytes preserved exactly), one
/// file per blob named by its hex digest, and a `version` file.
pub fn write_dir_image(dir: &Path, img: &Image) {
    std::fs::create_dir_all(dir).expect("mkdir dir image");
    std::fs::write(dir.join("version"), "Directory Transport Version: 1.1\n").expect("version");
    std::fs::write(dir.join("manifest.json"), &img.manifest.data).expect("manifest.json");
    for b in img.blobs() {
        std::fs::write(dir.join(b.hex()), &b.data).expect("blob");
    }
}

/// What a `dir:` image directory holds: the manifest bytes and every other file (blobs by
/// digest), with each blob file verified to hash to its name.
pub fn read_dir_image(dir: &Path) -> (Vec<u8>, BTreeMap<String, Vec<u8>>) {
    let manifest = std::fs::read(dir.join("manifest.json")).expect("read manifest.json");
    let mut blobs = BTreeMap::new();
    for e in std::fs::read_dir(dir).expect("read dir image") {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().to_string();
        if name == "manifest.json" || name == "version" || name.ends_with(".signature") {
            continue;
        }
        let data = std::fs::read(e.path()).unwrap();
        let d = format!("sha256:{name}");
        assert_eq!(
            digest(&data),
            d,
            "blob file {name} in {} is corrupt",
            dir.display()
        );
        blobs.insert(d, data);
    }
    (manifest, blobs)
}

/// An OCI layout read back from disk.
#[derive(Debug)]
pub struct LayoutContents {
    /// The descriptor index.json holds for the requested tag.
    pub top_media_type: String,
    pub top_digest: String,
    pub top: Vec<u8>,
    /// Every blob reachable from the top manifest/index (including the top itself), by digest.
    /// Each was verified to hash to its digest.
    pub reachable: BTreeMap<String, Vec<u8>>,
}

/// Read an OCI layout: find `tag` in index.json and walk everything reachable from it
/// (indexes → manifests → config + layers), verifying every blob's digest and size.
pub fn read_oci_layout(dir: &Path, tag: &str) -> LayoutContents {
    let layout: Value =
        serde_json::from_slice(&std::fs::read(dir.join("oci-layout")).expect("read oci-layout"))
            .expect("oci-layout json");
    assert!(
        layout["imageLayoutVersion"].is_string(),
        "bad oci-layout: {layout}"
    );
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).expect("read index.json"))
            .expect("index.json json");
    let desc = index["manifests"]
        .as_array()
        .expect("index.json manifests")
        .iter()
        .find(|d| d["annotations"][REF_NAME] == tag)
        .unwrap_or_else(|| panic!("tag {tag} not in {}/index.json: {index}", dir.display()))
        .clone();
    let top_digest = desc["digest"].as_str().expect("digest").to_string();
    let top_media_type = desc["mediaType"].as_str().unwrap_or_default().to_string();
    let mut reachable = BTreeMap::new();
    walk(dir, &desc, &mut reachable);
    LayoutContents {
        top: reachable[&top_digest].clone(),
        top_media_type,
        top_digest,
        reachable,
    }
}

fn read_layout_blob(dir: &Path, desc: &Value) -> Vec<u8> {
    let d = desc["digest"].as_str().expect("descriptor digest");
    let (alg, hex) = d.split_once(':').expect("digest alg");
    let data = std::fs::read(dir.join("blobs").join(alg).join(hex))
        .unwrap_or_else(|e| panic!("blob {d} missing from {}: {e}", dir.display()));
    assert_eq!(alg, "sha256", "unexpected digest algorithm {d}");
    assert_eq!(digest(&data), d, "blob {d} in {} is corrupt", dir.display());
    if let Some(size) = desc["size"].as_u64() {
        assert_eq!(data.len() as u64, size, "blob {d} size mismatch");
    }
    data
}

fn walk(dir: &Path, desc: &Value, out: &mut BTreeMap<String, Vec<u8>>) {
    let d = desc["digest"].as_str().expect("digest").to_string();
    if out.contains_key(&d) {
        return;
    }
    let data = read_layout_blob(dir, desc);
    let media_type = desc["mediaType"].as_str().unwrap_or_default().to_string();
    out.insert(d, data.clone());
    match media_type.as_str() {
        OCI_INDEX | DOCKER_LIST => {
            let v: Value = serde_json::from_slice(&data).expect("index json");
            for m in v["manifests"].as_array().expect("manifests") {
                walk(dir, m, out);
            }
        }
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let v: Value = serde_json::from_slice(&data).expect("manifest json");
            walk(dir, &v["config"], out);
            for l in v["layers"].as_array().expect("layers") {
                walk(dir, l, out);
            }
        }
        _ => {}
    }
}

/// The (digest → bytes) map of everything `top` refers to, including `top` itself.
pub fn expected_blobs(top: &Blob, blobs: &[&Blob]) -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    m.insert(top.digest.clone(), top.data.clone());
    for b in blobs {
        m.insert(b.digest.clone(), b.data.clone());
    }
    m
}
