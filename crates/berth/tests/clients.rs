//! Real clients (skopeo, podman, the docker CLI, containerd's ctr) against the real server,
//! and podman and ctr pulling through redirects to an object store (a real Garage cluster).
//!
//! Every test generates its own images (tests/common/image.rs), uses its own temporary
//! directories (HOME, XDG dirs, auth file, TMPDIR, storage roots) and its own repositories, so
//! tests can run in parallel. Digests are always computed independently of the server and of the
//! clients (sha256 over the bytes read back).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::cli::{
    can_run, docker_inspect, parse_push_digest, run, run_bytes, run_fails, Ctr, DockerImages, Env,
    Podman, CONTAINERD_SOCK,
};
use common::image::{self, Blob};
use common::Registry;
use serde_json::Value;

fn oci_ref(dir: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", dir.display())
}

// ---------------------------------------------------------------------------------------------
// Direct HTTP checks (independent of the clients)
// ---------------------------------------------------------------------------------------------

const ACCEPT_ALL: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

struct Fetched {
    status: u16,
    content_type: Option<String>,
    docker_content_digest: Option<String>,
    body: Vec<u8>,
}

fn http_get(url: &str, accept: Option<&str>) -> Fetched {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut req = reqwest::Client::new().get(url);
        if let Some(a) = accept {
            req = req.header("Accept", a);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let h = |n: &str| {
            resp.headers()
                .get(n)
                .map(|v| v.to_str().unwrap().to_string())
        };
        let status = resp.status().as_u16();
        let content_type = h("content-type");
        let docker_content_digest = h("docker-content-digest");
        let body = resp.bytes().await.expect("body").to_vec();
        Fetched {
            status,
            content_type,
            docker_content_digest,
            body,
        }
    })
}

/// GET a manifest from the registry and check it is exactly `expected` (bytes, media type and
/// digest header).
fn assert_registry_manifest(reg: &Registry, repo: &str, reference: &str, expected: &Blob) {
    let f = http_get(
        &reg.url(&format!("/v2/{repo}/manifests/{reference}")),
        Some(ACCEPT_ALL),
    );
    assert_eq!(f.status, 200, "GET manifest {repo}:{reference}");
    assert_eq!(
        common::sha256(&f.body),
        expected.digest,
        "manifest {repo}:{reference} served with wrong content"
    );
    assert_eq!(f.body, expected.data);
    assert_eq!(
        f.content_type.as_deref(),
        Some(expected.media_type.as_str()),
        "Content-Type of manifest {repo}:{reference}"
    );
    assert_eq!(
        f.docker_content_digest.as_deref(),
        Some(expected.digest.as_str()),
        "Docker-Content-Digest of manifest {repo}:{reference}"
    );
}

/// GET a blob from the registry and check its bytes hash to `digest` and equal `expected`.
fn assert_registry_blob(reg: &Registry, repo: &str, digest: &str, expected: &[u8]) {
    let f = http_get(&reg.url(&format!("/v2/{repo}/blobs/{digest}")), None);
    assert_eq!(f.status, 200, "GET blob {repo}@{digest}");
    assert_eq!(common::sha256(&f.body), digest, "blob {digest} corrupt");
    assert_eq!(f.body, expected, "blob {digest} content");
}

fn registry_tags(reg: &Registry, repo: &str) -> BTreeSet<String> {
    let f = http_get(&reg.url(&format!("/v2/{repo}/tags/list")), None);
    assert_eq!(f.status, 200, "GET tags/list of {repo}");
    let v: Value = serde_json::from_slice(&f.body).expect("tags list json");
    v["tags"]
        .as_array()
        .map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// Test image generation sanity (no server): the generator itself must produce valid layouts.
// ---------------------------------------------------------------------------------------------

#[test]
fn generated_images_are_valid() {
    let env = Env::new();

    // Determinism and seeding.
    assert_eq!(
        image::oci_image(1, 2).manifest,
        image::oci_image(1, 2).manifest
    );
    assert_ne!(
        image::oci_image(1, 2).manifest.digest,
        image::oci_image(2, 2).manifest.digest
    );
    let img = image::oci_image(7, 2);
    for (i, layer) in img.layers.iter().enumerate() {
        let tar = image::gunzip(&layer.data);
        assert_eq!(tar, img.layer_tars[i]);
        assert_eq!(common::sha256(&tar), img.diff_ids[i]);
        assert_eq!(image::untar_files(&tar), img.layer_files[i]);
    }

    // Single-arch OCI layout: skopeo reads it back exactly, umoci validates it.
    let single = env.path("single");
    image::write_image_layout(&single, "v1", &img);
    let raw = run(env
        .skopeo()
        .args(["inspect", "--raw", &oci_ref(&single, "v1")]));
    assert_eq!(raw.as_bytes(), &img.manifest.data[..]);
    let cfg = run(env
        .skopeo()
        .args(["inspect", "--config", "--raw", &oci_ref(&single, "v1")]));
    assert_eq!(cfg.as_bytes(), &img.config.data[..]);
    let inspect: Value = serde_json::from_str(&run(env
        .skopeo()
        .args(["inspect", &oci_ref(&single, "v1")])))
    .unwrap();
    assert_eq!(inspect["Architecture"], "amd64");
    assert_eq!(inspect["Os"], "linux");
    let layers: Vec<String> = img.layers.iter().map(|l| l.digest.clone()).collect();
    assert_eq!(inspect["Layers"], serde_json::json!(layers));
    run(env
        .cmd("umoci")
        .args(["stat", "--image", &format!("{}:v1", single.display())]));
    let unpacked = env.path("unpacked");
    run(env.cmd("umoci").args([
        "raw",
        "unpack",
        "--image",
        &format!("{}:v1", single.display()),
        unpacked.to_str().unwrap(),
    ]));
    assert_eq!(
        std::fs::read(unpacked.join("etc/berth/layer-1.conf")).unwrap(),
        img.layer_files[1][0].1
    );

    // A local copy preserves everything, and read_oci_layout sees all of it.
    let copy = env.path("single-copy");
    run(env
        .skopeo()
        .args(["copy", &oci_ref(&single, "v1"), &oci_ref(&copy, "v1")]));
    let a = image::read_oci_layout(&single, "v1");
    let b = image::read_oci_layout(&copy, "v1");
    assert_eq!(a.reachable.len(), 1 + 1 + 2);
    assert_eq!(a.top_digest, img.manifest.digest);
    assert_eq!(a.reachable, b.reachable);

    // Multi-arch layout.
    let m = image::oci_multi_arch(8);
    assert_ne!(m.images[0].layers[0].digest, m.images[1].layers[0].digest);
    let multi = env.path("multi");
    image::write_multi_arch_layout(&multi, "v1", &m);
    let raw = run(env
        .skopeo()
        .args(["inspect", "--raw", &oci_ref(&multi, "v1")]));
    assert_eq!(raw.as_bytes(), &m.index.data[..]);
    let arm = run(env.skopeo().args([
        "--override-arch",
        "arm64",
        "--override-variant",
        "v8",
        "inspect",
        "--config",
        "--raw",
        &oci_ref(&multi, "v1"),
    ]));
    assert_eq!(arm.as_bytes(), &m.images[1].config.data[..]);
    let multi_copy = env.path("multi-copy");
    run(env.skopeo().args([
        "copy",
        "--all",
        &oci_ref(&multi, "v1"),
        &oci_ref(&multi_copy, "v1"),
    ]));
    let a = image::read_oci_layout(&multi, "v1");
    assert_eq!(a.top_media_type, image::OCI_INDEX);
    assert_eq!(a.reachable.len(), 1 + 2 * (1 + 1 + 2));
    assert_eq!(
        a.reachable,
        image::read_oci_layout(&multi_copy, "v1").reachable
    );

    // Docker schema2 image in skopeo's dir: format.
    let d = image::docker_image(9, 2);
    let dir = env.path("docker-dir");
    image::write_dir_image(&dir, &d);
    let raw = run(env
        .skopeo()
        .args(["inspect", "--raw", &format!("dir:{}", dir.display())]));
    assert_eq!(raw.as_bytes(), &d.manifest.data[..]);
    let v: Value = serde_json::from_slice(&d.manifest.data).unwrap();
    assert_eq!(v["mediaType"], image::DOCKER_MANIFEST);
    let (manifest, blobs) = image::read_dir_image(&dir);
    assert_eq!(manifest, d.manifest.data);
    assert_eq!(blobs.len(), 3);
}

// ---------------------------------------------------------------------------------------------
// skopeo
// ---------------------------------------------------------------------------------------------

#[test]
fn skopeo_oci_single_arch_round_trip() {
    let reg = Registry::start();
    let env = Env::new();
    let host = reg.host();
    let img = image::oci_image(101, 3);
    let src = env.path("src");
    image::write_image_layout(&src, "v1", &img);
    let dest = format!("docker://{host}/clients/skopeo-single:v1");

    assert_eq!(
        env.skopeo_push(&[], &oci_ref(&src, "v1"), &dest),
        img.manifest.digest
    );

    // What the registry serves, checked directly.
    assert_registry_manifest(&reg, "clients/skopeo-single", "v1", &img.manifest);
    assert_registry_manifest(
        &reg,
        "clients/skopeo-single",
        &img.manifest.digest,
        &img.manifest,
    );
    for b in img.blobs() {
        assert_registry_blob(&reg, "clients/skopeo-single", &b.digest, &b.data);
    }

    // Copy back out, by tag and by digest: the layouts hold exactly the source's content.
    let source = image::read_oci_layout(&src, "v1");
    let back = env.path("back");
    run(env.skopeo().args([
        "copy",
        "--src-tls-verify=false",
        &dest,
        &oci_ref(&back, "v1"),
    ]));
    let got = image::read_oci_layout(&back, "v1");
    assert_eq!(got.top_digest, img.manifest.digest);
    assert_eq!(got.top_media_type, image::OCI_MANIFEST);
    assert_eq!(got.top, img.manifest.data);
    assert_eq!(
        got.reachable.keys().collect::<Vec<_>>(),
        source.reachable.keys().collect::<Vec<_>>()
    );
    assert_eq!(got.reachable, source.reachable);

    let by_digest = env.path("by-digest");
    run(env.skopeo().args([
        "copy",
        "--src-tls-verify=false",
        &format!(
            "docker://{host}/clients/skopeo-single@{}",
            img.manifest.digest
        ),
        &oci_ref(&by_digest, "d"),
    ]));
    assert_eq!(
        image::read_oci_layout(&by_digest, "d").reachable,
        source.reachable
    );

    // Registry-to-registry copy into another repository (blob mounts or re-uploads).
    run(env.skopeo().args([
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &dest,
        &format!("docker://{host}/clients/skopeo-single-copy:v2"),
    ]));
    assert_registry_manifest(&reg, "clients/skopeo-single-copy", "v2", &img.manifest);
    for b in img.blobs() {
        assert_registry_blob(&reg, "clients/skopeo-single-copy", &b.digest, &b.data);
    }

    // Pushing the same image again is idempotent.
    assert_eq!(
        env.skopeo_push(&[], &oci_ref(&src, "v1"), &dest),
        img.manifest.digest
    );
    assert_registry_manifest(&reg, "clients/skopeo-single", "v1", &img.manifest);
}

#[test]
fn skopeo_oci_multi_arch_round_trip() {
    let reg = Registry::start();
    let env = Env::new();
    let host = reg.host();
    let m = image::oci_multi_arch(102);
    let src = env.path("src");
    image::write_multi_arch_layout(&src, "v1", &m);
    let repo = "clients/skopeo-multi";
    let dest = format!("docker://{host}/{repo}:v1");

    assert_eq!(
        env.skopeo_push(&["--all"], &oci_ref(&src, "v1"), &dest),
        m.index.digest
    );

    assert_registry_manifest(&reg, repo, "v1", &m.index);
    for img in &m.images {
        assert_registry_manifest(&reg, repo, &img.manifest.digest, &img.manifest);
        for b in img.blobs() {
            assert_registry_blob(&reg, repo, &b.digest, &b.data);
        }
    }
    let raw = run(env
        .skopeo()
        .args(["inspect", "--raw", "--tls-verify=false", &dest]));
    assert_eq!(raw.as_bytes(), &m.index.data[..]);

    // Copy everything back out.
    let source = image::read_oci_layout(&src, "v1");
    let back = env.path("back");
    run(env.skopeo().args([
        "copy",
        "--all",
        "--src-tls-verify=false",
        &dest,
        &oci_ref(&back, "v1"),
    ]));
    let got = image::read_oci_layout(&back, "v1");
    assert_eq!(got.top_digest, m.index.digest);
    assert_eq!(got.top_media_type, image::OCI_INDEX);
    assert_eq!(got.top, m.index.data);
    assert_eq!(got.reachable.len(), 1 + 2 * 4);
    assert_eq!(got.reachable, source.reachable);

    // Platform selection: each platform resolves to its own child manifest.
    for (img, arch, variant) in [
        (&m.images[0], "amd64", None),
        (&m.images[1], "arm64", Some("v8")),
    ] {
        let out = env.path(&format!("one-{arch}"));
        let mut c = env.skopeo();
        c.args(["--override-os", "linux", "--override-arch", arch]);
        if let Some(v) = variant {
            c.args(["--override-variant", v]);
        }
        run(c.args([
            "copy",
            "--src-tls-verify=false",
            &dest,
            &oci_ref(&out, "one"),
        ]));
        let got = image::read_oci_layout(&out, "one");
        assert_eq!(got.top_digest, img.manifest.digest, "platform {arch}");
        assert_eq!(
            got.reachable,
            image::expected_blobs(&img.manifest, &img.blobs()),
            "platform {arch}"
        );
    }
}

#[test]
fn skopeo_docker_schema2_round_trip() {
    let reg = Registry::start();
    let env = Env::new();
    let host = reg.host();

    // (a) A native Docker schema2 image: manifest and blobs preserved byte for byte.
    let img = image::docker_image(103, 2);
    let src = env.path("src-dir");
    image::write_dir_image(&src, &img);
    let repo = "clients/skopeo-v2s2";
    let dest = format!("docker://{host}/{repo}:v1");
    assert_eq!(
        env.skopeo_push(&[], &format!("dir:{}", src.display()), &dest),
        img.manifest.digest
    );
    assert_registry_manifest(&reg, repo, "v1", &img.manifest);
    let f = http_get(
        &reg.url(&format!("/v2/{repo}/manifests/v1")),
        Some(image::DOCKER_MANIFEST),
    );
    assert_eq!(f.status, 200);
    assert_eq!(f.content_type.as_deref(), Some(image::DOCKER_MANIFEST));
    assert_eq!(f.body, img.manifest.data);

    let back = env.path("back-dir");
    run(env.skopeo().args([
        "copy",
        "--src-tls-verify=false",
        &dest,
        &format!("dir:{}", back.display()),
    ]));
    let (manifest, blobs) = image::read_dir_image(&back);
    assert_eq!(manifest, img.manifest.data);
    assert_eq!(common::sha256(&manifest), img.manifest.digest);
    let expected: BTreeMap<String, Vec<u8>> = img
        .blobs()
        .into_iter()
        .map(|b| (b.digest.clone(), b.data.clone()))
        .collect();
    assert_eq!(blobs, expected);
    let inspect: Value = serde_json::from_str(&run(env.skopeo().args([
        "inspect",
        "--tls-verify=false",
        &dest,
    ])))
    .unwrap();
    assert_eq!(inspect["Digest"], img.manifest.digest.as_str());

    // (b) Conversion at push time: an OCI layout pushed with --format v2s2.
    let oci = image::oci_image(104, 2);
    let oci_src = env.path("src-oci");
    image::write_image_layout(&oci_src, "v1", &oci);
    let conv = format!("docker://{host}/clients/skopeo-converted:v1");
    let pushed = env.skopeo_push(&["--format", "v2s2"], &oci_ref(&oci_src, "v1"), &conv);
    assert_ne!(
        pushed, oci.manifest.digest,
        "the manifest should have been converted"
    );
    let raw = run(env
        .skopeo()
        .args(["inspect", "--raw", "--tls-verify=false", &conv]));
    assert_eq!(common::sha256(raw.as_bytes()), pushed);
    let v: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(v["mediaType"], image::DOCKER_MANIFEST);
    assert_eq!(v["config"]["mediaType"], image::DOCKER_CONFIG);
    let layer_digests: Vec<&str> = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    let expected_layers: Vec<&str> = oci.layers.iter().map(|l| l.digest.as_str()).collect();
    assert_eq!(
        layer_digests, expected_layers,
        "layers must not be recompressed"
    );
    for l in v["layers"].as_array().unwrap() {
        assert_eq!(l["mediaType"], image::DOCKER_LAYER_GZIP);
    }
    let f = http_get(
        &reg.url("/v2/clients/skopeo-converted/manifests/v1"),
        Some(image::DOCKER_MANIFEST),
    );
    assert_eq!(f.status, 200);
    assert_eq!(f.content_type.as_deref(), Some(image::DOCKER_MANIFEST));
    assert_eq!(f.docker_content_digest.as_deref(), Some(pushed.as_str()));
    assert_eq!(common::sha256(&f.body), pushed);

    // Pull it back (twice): the digest is stable and the content is what was pushed.
    for i in 0..2 {
        let out = env.path(&format!("conv-back-{i}"));
        run(env.skopeo().args([
            "copy",
            "--src-tls-verify=false",
            &conv,
            &format!("dir:{}", out.display()),
        ]));
        let (manifest, blobs) = image::read_dir_image(&out);
        assert_eq!(common::sha256(&manifest), pushed);
        for l in &oci.layers {
            assert_eq!(blobs.get(&l.digest), Some(&l.data), "layer {}", l.digest);
        }
        let config_digest = v["config"]["digest"].as_str().unwrap();
        let config = blobs.get(config_digest).expect("config pulled");
        let config: Value = serde_json::from_slice(config).unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"],
            serde_json::json!(oci.diff_ids)
        );
    }
    // Pushing the same conversion again yields the same digest.
    assert_eq!(
        env.skopeo_push(
            &["--format", "v2s2"],
            &oci_ref(&oci_src, "v1"),
            &format!("docker://{host}/clients/skopeo-converted:again")
        ),
        pushed
    );
}

#[test]
fn skopeo_inspect_list_tags_delete() {
    let reg = Registry::start();
    let env = Env::new();
    let host = reg.host();
    let repo = "clients/skopeo-tags";
    let a = image::oci_image(105, 2);
    let c = image::oci_image(106, 1);
    let src_a = env.path("a");
    let src_c = env.path("c");
    image::write_image_layout(&src_a, "v1", &a);
    image::write_image_layout(&src_c, "v1", &c);
    let r = |tag: &str| format!("docker://{host}/{repo}:{tag}");
    for (src, tag) in [(&src_a, "a"), (&src_a, "b"), (&src_c, "c")] {
        run(env.skopeo().args([
            "copy",
            "--dest-tls-verify=false",
            &oci_ref(src, "v1"),
            &r(tag),
        ]));
    }

    // inspect: the digest, platform and layers are those of the generated image.
    let inspect: Value = serde_json::from_str(&run(env.skopeo().args([
        "inspect",
        "--tls-verify=false",
        &r("a"),
    ])))
    .unwrap();
    assert_eq!(inspect["Digest"], a.manifest.digest.as_str());
    assert_eq!(inspect["Architecture"], "amd64");
    assert_eq!(inspect["Os"], "linux");
    assert_eq!(inspect["Labels"]["org.berth.test.seed"], "105");
    let layers: Vec<&str> = a.layers.iter().map(|l| l.digest.as_str()).collect();
    assert_eq!(inspect["Layers"], serde_json::json!(layers));
    let mut repo_tags: Vec<String> = inspect["RepoTags"]
        .as_array()
        .expect("RepoTags")
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    repo_tags.sort();
    assert_eq!(repo_tags, vec!["a", "b", "c"]);

    let raw = run(env
        .skopeo()
        .args(["inspect", "--raw", "--tls-verify=false", &r("b")]));
    assert_eq!(raw.as_bytes(), &a.manifest.data[..]);
    let cfg = run(env.skopeo().args([
        "inspect",
        "--config",
        "--raw",
        "--tls-verify=false",
        &r("c"),
    ]));
    assert_eq!(cfg.as_bytes(), &c.config.data[..]);
    let by_digest = format!("docker://{host}/{repo}@{}", c.manifest.digest);
    let raw = run(env
        .skopeo()
        .args(["inspect", "--raw", "--tls-verify=false", &by_digest]));
    assert_eq!(raw.as_bytes(), &c.manifest.data[..]);

    // list-tags
    let tags: Value = serde_json::from_str(&run(env.skopeo().args([
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{host}/{repo}"),
    ])))
    .unwrap();
    let listed: BTreeSet<String> = tags["Tags"]
        .as_array()
        .expect("Tags")
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, set(&["a", "b", "c"]));
    let err = run_fails(
        env.skopeo()
            .args(["inspect", "--tls-verify=false", &r("no-such-tag")]),
    );
    assert!(
        err.contains("manifest unknown") || err.contains("not found") || err.contains("404"),
        "unexpected error for a missing tag: {err}"
    );

    // delete: skopeo resolves the tag and deletes the manifest by digest, so both tags that
    // pointed at it are gone; the other image is untouched.
    run(env.skopeo().args(["delete", "--tls-verify=false", &r("a")]));
    run_fails(
        env.skopeo()
            .args(["inspect", "--tls-verify=false", &r("a")]),
    );
    run_fails(
        env.skopeo()
            .args(["inspect", "--raw", "--tls-verify=false", &r("b")]),
    );
    run_fails(env.skopeo().args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{host}/{repo}@{}", a.manifest.digest),
    ]));
    let f = http_get(
        &reg.url(&format!("/v2/{repo}/manifests/{}", a.manifest.digest)),
        Some(ACCEPT_ALL),
    );
    assert_eq!(f.status, 404, "deleted manifest still served");
    let raw = run(env
        .skopeo()
        .args(["inspect", "--raw", "--tls-verify=false", &r("c")]));
    assert_eq!(raw.as_bytes(), &c.manifest.data[..]);
    for b in c.blobs() {
        assert_registry_blob(&reg, repo, &b.digest, &b.data);
    }
    let tags: Value = serde_json::from_str(&run(env.skopeo().args([
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{host}/{repo}"),
    ])))
    .unwrap();
    assert_eq!(tags["Tags"], serde_json::json!(["c"]));
    assert_eq!(registry_tags(&reg, repo), set(&["c"]));

    // The deleted image can be pushed again.
    run(env.skopeo().args([
        "copy",
        "--dest-tls-verify=false",
        &oci_ref(&src_a, "v1"),
        &r("a"),
    ]));
    assert_registry_manifest(&reg, repo, "a", &a.manifest);
}

// ---------------------------------------------------------------------------------------------
// podman (vfs storage, private root)
// ---------------------------------------------------------------------------------------------

#[test]
fn podman_push_pull_round_trip() {
    let reg = Registry::start();
    let env = Env::new();
    let host = reg.host();
    let podman = Podman { env: &env };
    let img = image::oci_image(107, 2);
    let src = env.path("src");
    image::write_image_layout(&src, "v1", &img);
    let config_hex = img.config.hex().to_string();

    // Into podman's private storage from the OCI layout (skopeo writes the same store podman
    // reads); the image id is the config digest.
    let name = format!("{host}/clients/podman:v1");
    run(env
        .skopeo()
        .args(["copy", &oci_ref(&src, "v1"), &podman.storage_ref(&name)]));
    let id = run(podman.cmd().args(["images", "-q", "--no-trunc"]));
    assert_eq!(id.trim(), format!("sha256:{config_hex}"), "podman image id");
    let id = run(podman
        .cmd()
        .args(["image", "inspect", "--format", "{{.Id}}", &name]));
    assert_eq!(id.trim(), config_hex, "podman image id");

    let pushed = podman.push(&name);
    let f = http_get(
        &reg.url("/v2/clients/podman/manifests/v1"),
        Some(ACCEPT_ALL),
    );
    assert_eq!(f.status, 200);
    assert_eq!(
        common::sha256(&f.body),
        pushed,
        "registry serves a different manifest"
    );
    let manifest: Value = serde_json::from_slice(&f.body).unwrap();
    assert_eq!(manifest["config"]["digest"], img.config.digest.as_str());
    assert_registry_blob(&reg, "clients/podman", &img.config.digest, &img.config.data);
    // podman may recompress layers: check what it pushed decompresses to the diff_ids.
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), img.layers.len());
    for (l, diff_id) in layers.iter().zip(&img.diff_ids) {
        let d = l["digest"].as_str().unwrap();
        let blob = http_get(&reg.url(&format!("/v2/clients/podman/blobs/{d}")), None);
        assert_eq!(blob.status, 200);
        assert_eq!(common::sha256(&blob.body), d);
        assert_eq!(&common::sha256(&image::gunzip(&blob.body)), diff_id);
    }

    // Remove it locally, then pull it back from the registry.
    run(podman.cmd().args(["rmi", "--force", &config_hex]));
    let left = run(podman.cmd().args(["images", "-q", "--no-trunc"]));
    assert_eq!(left.trim(), "", "podman storage should be empty");
    run_fails(podman.cmd().args(["image", "inspect", &name]));

    run(podman.cmd().args(["pull", "--tls-verify=false", &name]));
    let inspect: Value =
        serde_json::from_str(&run(podman.cmd().args(["image", "inspect", &name]))).unwrap();
    let inspect = &inspect[0];
    assert_eq!(inspect["Id"], config_hex.as_str(), "{inspect}");
    assert_eq!(inspect["Digest"], pushed.as_str(), "{inspect}");
    let repo_digests: Vec<&str> = inspect["RepoDigests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        repo_digests.contains(&format!("{host}/clients/podman@{pushed}").as_str()),
        "RepoDigests {repo_digests:?}"
    );

    // And by digest.
    run(podman.cmd().args(["rmi", "--force", &config_hex]));
    run(podman.cmd().args([
        "pull",
        "--tls-verify=false",
        &format!("{host}/clients/podman@{pushed}"),
    ]));
    let id = run(podman.cmd().args([
        "image",
        "inspect",
        "--format",
        "{{.Id}}",
        &format!("{host}/clients/podman@{pushed}"),
    ]));
    assert_eq!(id.trim(), config_hex);
}

// ---------------------------------------------------------------------------------------------
// docker CLI (the machine's Docker Engine; 127.0.0.0/8 registries are insecure by default)
// ---------------------------------------------------------------------------------------------

#[test]
fn docker_cli_push_pull_round_trip() {
    let env = Env::new();
    if !can_run(
        "docker_cli_push_pull_round_trip",
        env.docker_available(),
        "BERTH_SKIP_DOCKER",
    ) {
        return;
    }
    let reg = Registry::start();
    let host = reg.host();
    let unique = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let repo = format!("clients/docker-{unique}");
    let name = format!("{host}/{repo}:v1");
    let mut images = DockerImages {
        env: &env,
        refs: vec![name.clone()],
    };

    // docker import a generated root filesystem.
    let seed = 108;
    let rootfs = env.path("rootfs.tar");
    std::fs::write(&rootfs, image::rootfs_tar(seed)).unwrap();
    let id = run(env
        .cmd("docker")
        .args(["import", rootfs.to_str().unwrap(), &name]))
    .trim()
    .to_string();
    assert!(id.starts_with("sha256:"), "docker import output: {id}");
    images.refs.push(id.clone());

    let out = run(env.cmd("docker").args(["push", &name]));
    let pushed = parse_push_digest(&out);

    // The registry holds exactly that manifest, whose config is the image id and whose layer
    // holds the files we imported.
    let f = http_get(
        &reg.url(&format!("/v2/{repo}/manifests/v1")),
        Some(ACCEPT_ALL),
    );
    assert_eq!(f.status, 200);
    assert_eq!(common::sha256(&f.body), pushed);
    assert_eq!(f.docker_content_digest.as_deref(), Some(pushed.as_str()));
    let manifest: Value = serde_json::from_slice(&f.body).unwrap();
    assert_eq!(manifest["config"]["digest"], id.as_str());
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    let d = layers[0]["digest"].as_str().unwrap();
    let blob = http_get(&reg.url(&format!("/v2/{repo}/blobs/{d}")), None);
    assert_eq!(blob.status, 200);
    assert_eq!(common::sha256(&blob.body), d);
    let files: BTreeMap<String, Vec<u8>> = image::untar_files(&image::gunzip(&blob.body))
        .into_iter()
        .map(|(p, c)| (p.trim_start_matches("./").to_string(), c))
        .collect();
    for (path, content) in image::layer_files(seed, 0) {
        assert_eq!(
            files.get(&path),
            Some(&content),
            "file {path} in the pushed layer"
        );
    }

    let inspect = docker_inspect(&env, &name);
    let want_repo_digest = format!("{host}/{repo}@{pushed}");
    assert!(
        inspect["RepoDigests"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == want_repo_digest.as_str()),
        "RepoDigests after push: {}",
        inspect["RepoDigests"]
    );

    // Remove locally and pull back.
    run(env.cmd("docker").args(["rmi", &name]));
    run_fails(env.cmd("docker").args(["image", "inspect", &id]));
    let out = run(env.cmd("docker").args(["pull", &name]));
    assert!(
        out.contains(&format!("Digest: {pushed}")),
        "docker pull output:\n{out}"
    );
    let inspect = docker_inspect(&env, &name);
    assert_eq!(inspect["Id"], id.as_str());
    assert!(
        inspect["RepoDigests"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == want_repo_digest.as_str()),
        "RepoDigests after pull: {}",
        inspect["RepoDigests"]
    );

    // Pushing the same image to another repository (docker tries a cross-repository mount of
    // the layer it knows came from the first one): same manifest digest, same layer bytes.
    let repo2 = format!("{repo}-copy");
    let name2 = format!("{host}/{repo2}:v1");
    images.refs.push(name2.clone());
    run(env.cmd("docker").args(["tag", &name, &name2]));
    let out = run(env.cmd("docker").args(["push", &name2]));
    assert_eq!(
        parse_push_digest(&out),
        pushed,
        "docker push output:\n{out}"
    );
    let f = http_get(
        &reg.url(&format!("/v2/{repo2}/manifests/v1")),
        Some(ACCEPT_ALL),
    );
    assert_eq!(f.status, 200);
    assert_eq!(common::sha256(&f.body), pushed);
    let copy = http_get(&reg.url(&format!("/v2/{repo2}/blobs/{d}")), None);
    assert_eq!(copy.status, 200);
    assert_eq!(copy.body, blob.body);
    run(env.cmd("docker").args(["rmi", &name2]));
    run(env.cmd("docker").args(["rmi", &name]));

    // docker also pulls an OCI image pushed by skopeo.
    let img = image::oci_image(109, 2);
    let src = env.path("src");
    image::write_image_layout(&src, "v1", &img);
    let oci_name = format!("{host}/{repo}:oci");
    images.refs.push(oci_name.clone());
    run(env.skopeo().args([
        "copy",
        "--dest-tls-verify=false",
        &oci_ref(&src, "v1"),
        &format!("docker://{oci_name}"),
    ]));
    let out = run(env.cmd("docker").args(["pull", &oci_name]));
    assert!(
        out.contains(&format!("Digest: {}", img.manifest.digest)),
        "docker pull output:\n{out}"
    );
    let inspect = docker_inspect(&env, &oci_name);
    assert_eq!(inspect["Id"], img.config.digest.as_str());
    run(env.cmd("docker").args(["rmi", &oci_name]));
    run_fails(env.cmd("docker").args(["image", "inspect", &oci_name]));

    // ... and a multi-arch OCI index: docker picks the linux/amd64 child.
    let m = image::oci_multi_arch(112);
    let multi_src = env.path("multi");
    image::write_multi_arch_layout(&multi_src, "v1", &m);
    let multi_name = format!("{host}/{repo}:multi");
    images.refs.push(multi_name.clone());
    run(env.skopeo().args([
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &oci_ref(&multi_src, "v1"),
        &format!("docker://{multi_name}"),
    ]));
    let out = run(env.cmd("docker").args(["pull", &multi_name]));
    assert!(
        out.contains(&format!("Digest: {}", m.index.digest)),
        "docker pull output:\n{out}"
    );
    let inspect = docker_inspect(&env, &multi_name);
    assert_eq!(inspect["Id"], m.images[0].config.digest.as_str());
    assert_eq!(inspect["Architecture"], "amd64");
    run(env.cmd("docker").args(["rmi", &multi_name]));
    run_fails(env.cmd("docker").args(["image", "inspect", &multi_name]));
}

// ---------------------------------------------------------------------------------------------
// containerd (ctr), as kubelet would pull
// ---------------------------------------------------------------------------------------------

#[test]
fn containerd_pull_single_and_multi_arch() {
    let env = Env::new();
    let socket = if Path::new(CONTAINERD_SOCK).exists() {
        Ok(())
    } else {
        Err(format!("containerd socket {CONTAINERD_SOCK} is missing"))
    };
    if !can_run(
        "containerd_pull_single_and_multi_arch",
        socket,
        "BERTH_SKIP_CONTAINERD",
    ) {
        return;
    }
    let reg = Registry::start();
    let host = reg.host();
    let single = image::oci_image(110, 2);
    let multi = image::oci_multi_arch(111);
    let single_dir = env.path("single");
    let multi_dir = env.path("multi");
    image::write_image_layout(&single_dir, "v1", &single);
    image::write_multi_arch_layout(&multi_dir, "v1", &multi);
    let single_ref = format!("{host}/clients/ctr-single:v1");
    let multi_ref = format!("{host}/clients/ctr-multi:v1");
    run(env.skopeo().args([
        "copy",
        "--dest-tls-verify=false",
        &oci_ref(&single_dir, "v1"),
        &format!("docker://{single_ref}"),
    ]));
    run(env.skopeo().args([
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &oci_ref(&multi_dir, "v1"),
        &format!("docker://{multi_ref}"),
    ]));

    let mut ctr = Ctr {
        env: &env,
        ns: format!("berth-test-{}", uuid::Uuid::new_v4().simple()),
        refs: vec![single_ref.clone(), multi_ref.clone()],
    };

    // Single-arch pull (fetch + unpack).
    run(ctr
        .cmd()
        .args(["images", "pull", "--plain-http", &single_ref]));
    // Multi-arch pull of every platform.
    run(ctr.cmd().args([
        "images",
        "pull",
        "--plain-http",
        "--all-platforms",
        &multi_ref,
    ]));

    let images = ctr.images();
    assert_eq!(
        images.get(&single_ref),
        Some(&single.manifest.digest),
        "{images:?}"
    );
    assert_eq!(
        images.get(&multi_ref),
        Some(&multi.index.digest),
        "{images:?}"
    );
    let content = ctr.content();
    let mut want: BTreeSet<String> = BTreeSet::new();
    want.insert(single.manifest.digest.clone());
    want.extend(single.blobs().iter().map(|b| b.digest.clone()));
    want.insert(multi.index.digest.clone());
    want.extend(multi.blobs().iter().map(|b| b.digest.clone()));
    let missing: Vec<&String> = want.difference(&content).collect();
    assert!(
        missing.is_empty(),
        "containerd content is missing {missing:?}"
    );
    // containerd verified every digest while fetching; double-check a few blobs' bytes.
    for b in std::iter::once(&single.config).chain(multi.images[1].layers.iter()) {
        let got = run_bytes(ctr.cmd().args(["content", "get", &b.digest]));
        assert_eq!(common::sha256(&got), b.digest);
        assert_eq!(got, b.data);
    }
    let check = run(ctr.cmd().args(["images", "check"]));
    for r in [&single_ref, &multi_ref] {
        let line = check
            .lines()
            .find(|l| l.starts_with(r.as_str()))
            .unwrap_or_else(|| panic!("{r} not in `ctr images check`:\n{check}"));
        assert!(line.contains("complete"), "ctr images check: {line}");
    }

    // Remove images and the namespace.
    for r in [&single_ref, &multi_ref] {
        run(ctr.cmd().args(["images", "rm", "--sync", r]));
    }
    assert!(ctr.images().is_empty());
    let result = ctr.cleanup();
    ctr.ns.clear();
    if let Err(e) = result {
        panic!("cannot remove the containerd namespace: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Pulls redirected to an object store
// ---------------------------------------------------------------------------------------------

/// A Berth on a bucket of a real Garage cluster (S3), blob pulls redirected to presigned URLs.
fn registry_on_s3(garage: &common::garage::Garage, dir: &Path) -> Registry {
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1
storage:
{}sqlite:
  path: {}
http:
  addr: 127.0.0.1:0
",
            garage.s3_section(garage.bucket()),
            dir.join("meta.db").display()
        ),
    )
    .unwrap();
    let launch = common::Launch {
        args: vec![config.to_string_lossy().into_owned()],
        ..common::Launch::default()
    };
    Registry::launch(&launch).unwrap_or_else(|e| panic!("berth on S3: {e}"))
}

#[test]
fn podman_and_containerd_follow_redirects_to_s3() {
    let env = Env::new();
    let garage = common::garage::Garage::start();
    let reg = registry_on_s3(&garage, &env.path("berth"));
    let host = reg.host();
    let img = image::oci_image(120, 2);
    let src = env.path("src");
    image::write_image_layout(&src, "v1", &img);
    let name = format!("{host}/clients/redirected:v1");
    run(env.skopeo().args([
        "copy",
        "--dest-tls-verify=false",
        &oci_ref(&src, "v1"),
        &format!("docker://{name}"),
    ]));
    // Blob pulls answer 307 to the object store.
    let layer = &img.layers[0];
    let out = run(env.cmd("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        &reg.url(&format!("/v2/clients/redirected/blobs/{}", layer.digest)),
    ]));
    let (code, location) = out.split_once(' ').unwrap();
    assert_eq!(code, "307", "{out}");
    assert!(location.starts_with(&garage.endpoint()), "{location}");

    // podman pulls it into its private storage: the image id is the config's digest.
    let podman = Podman { env: &env };
    run(podman.cmd().args(["pull", "--tls-verify=false", &name]));
    let id = run(podman
        .cmd()
        .args(["image", "inspect", "--format", "{{.Id}}", &name]));
    assert_eq!(format!("sha256:{}", id.trim()), img.config.digest);

    // containerd fetches every blob through the redirects and verifies each digest.
    let socket = if Path::new(CONTAINERD_SOCK).exists() {
        Ok(())
    } else {
        Err(format!("containerd socket {CONTAINERD_SOCK} is missing"))
    };
    if !can_run(
        "podman_and_containerd_follow_redirects_to_s3",
        socket,
        "BERTH_SKIP_CONTAINERD",
    ) {
        return;
    }
    let mut ctr = Ctr {
        env: &env,
        ns: format!("berth-test-{}", uuid::Uuid::new_v4().simple()),
        refs: vec![name.clone()],
    };
    run(ctr.cmd().args(["images", "pull", "--plain-http", &name]));
    assert_eq!(
        ctr.images().get(&name),
        Some(&img.manifest.digest),
        "ctr images ls"
    );
    let content = ctr.content();
    for b in img.blobs() {
        assert!(content.contains(&b.digest), "containerd lacks {}", b.digest);
    }
    let got = run_bytes(ctr.cmd().args(["content", "get", &layer.digest]));
    assert_eq!(got, layer.data);
    let result = ctr.cleanup();
    ctr.ns.clear();
    if let Err(e) = result {
        panic!("cannot remove the containerd namespace: {e}");
    }
}
