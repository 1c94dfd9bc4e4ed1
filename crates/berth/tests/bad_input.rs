//! Failure paths of the OCI Distribution API: every bad request must get the right status and
//! OCI error code, must not change stored state, and the server must keep serving good requests
//! afterwards.

mod common;

use common::oci::*;
use common::{sha256, sha512, Registry};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};

static HEALTH_SEQ: AtomicUsize = AtomicUsize::new(0);

/// After a bad request: the server still answers `/v2/` and can still store and serve a blob.
async fn assert_healthy(reg: &Registry) {
    let resp = client()
        .get(reg.url("/v2/"))
        .send()
        .await
        .expect("GET /v2/");
    assert_eq!(resp.status().as_u16(), 200, "GET /v2/ after a bad request");
    let n = HEALTH_SEQ.fetch_add(1, Ordering::SeqCst);
    let data = format!("health check blob #{n}").into_bytes();
    push_blob(reg, "health/check", &data).await;
    assert_blob(reg, "health/check", &data).await;
}

fn valid_digest() -> String {
    sha256(b"whatever")
}

/// Assert a 404 whose code is one of `codes` (used where the spec leaves the choice open).
async fn expect_404_one_of(resp: reqwest::Response, codes: &[&str]) {
    let url = resp.url().to_string();
    let st = resp.status().as_u16();
    let body = resp.bytes().await.unwrap();
    assert_eq!(st, 404, "{url}: {}", String::from_utf8_lossy(&body));
    let errors = parse_errors(&body).unwrap();
    assert!(
        errors.iter().any(|e| codes.contains(&e.code.as_str())),
        "{url}: expected one of {codes:?}, got {errors:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Names, tags, digests
// ---------------------------------------------------------------------------------------------

const BAD_NAMES: &[&str] = &[
    "Upper",
    "library/Ubuntu",
    "-lead",
    "trail-",
    "trail.",
    "_lead",
    "a..b",
    "a.-b",
    "a___b",
    "a/-b",
    "a/.b",
    "a//b",
    "a/b_",
    "a$b",
];

#[tokio::test]
async fn invalid_repository_names_on_every_endpoint() {
    let reg = Registry::start();
    let img = push_image(&reg, "valid/repo", "v1", "bad-names").await;
    let long = "a".repeat(256);
    let mut names: Vec<String> = BAD_NAMES.iter().map(|s| s.to_string()).collect();
    names.push(long);
    names.push(format!("{}/{}", "a".repeat(128), "b".repeat(127))); // 256 chars
    let d = valid_digest();
    for name in &names {
        let c = client();
        let cases = vec![
            ("GET blob", c.get(reg.url(&format!("/v2/{name}/blobs/{d}")))),
            (
                "DELETE blob",
                c.delete(reg.url(&format!("/v2/{name}/blobs/{d}"))),
            ),
            (
                "POST upload",
                c.post(reg.url(&format!("/v2/{name}/blobs/uploads/")))
                    .header("content-length", "0"),
            ),
            (
                "POST monolithic",
                c.post(reg.url(&format!(
                    "/v2/{name}/blobs/uploads/?digest={}",
                    sha256(b"x")
                )))
                .body(b"x".to_vec()),
            ),
            (
                "GET manifest",
                c.get(reg.url(&format!("/v2/{name}/manifests/v1"))),
            ),
            (
                "PUT manifest",
                c.put(reg.url(&format!("/v2/{name}/manifests/v1")))
                    .header("content-type", OCI_MANIFEST)
                    .body(img.manifest.clone()),
            ),
            (
                "DELETE manifest",
                c.delete(reg.url(&format!("/v2/{name}/manifests/{}", img.digest))),
            ),
            ("GET tags", c.get(reg.url(&format!("/v2/{name}/tags/list")))),
            (
                "GET referrers",
                c.get(reg.url(&format!("/v2/{name}/referrers/{}", img.digest))),
            ),
        ];
        for (what, req) in cases {
            let resp = req.send().await.unwrap();
            let st = resp.status().as_u16();
            let body = resp.bytes().await.unwrap();
            assert_eq!(
                st,
                400,
                "{what} with name {name:?}: {}",
                String::from_utf8_lossy(&body)
            );
            let errors = parse_errors(&body).unwrap();
            assert!(
                errors.iter().any(|e| e.code == "NAME_INVALID"),
                "{what} with name {name:?}: {errors:?}"
            );
        }
        // HEAD: status only.
        let resp = c
            .head(reg.url(&format!("/v2/{name}/manifests/v1")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400, "HEAD manifest {name:?}");
    }
    assert_healthy(&reg).await;
    // Nothing leaked into the catalog.
    let (_, v) = get_json(&reg, "/v2/_catalog").await;
    let mut repos = strings(&v["repositories"]);
    repos.retain(|r| r != "health/check");
    repos.sort();
    assert_eq!(repos, vec!["valid/repo".to_string()]);
}

#[tokio::test]
async fn invalid_tags() {
    let reg = Registry::start();
    let repo = "tags/bad";
    let img = push_image(&reg, repo, "good", "bad-tags").await;
    let too_long = "a".repeat(129);
    let bad = ["-dash", ".dot", "tag+plus", "t@g", too_long.as_str()];
    for tag in bad {
        expect_error(
            push_manifest(&reg, repo, tag, OCI_MANIFEST, &img.manifest).await,
            400,
            "TAG_INVALID",
        )
        .await;
        // Nothing can exist under an impossible reference: a read finds nothing.
        expect_error(
            get_manifest(&reg, repo, tag, None).await,
            404,
            "MANIFEST_UNKNOWN",
        )
        .await;
        let resp = client()
            .delete(reg.url(&format!("/v2/{repo}/manifests/{tag}")))
            .send()
            .await
            .unwrap();
        expect_error(resp, 400, "TAG_INVALID").await;
        assert_healthy(&reg).await;
    }
    // Tags list unchanged.
    assert_eq!(list_tags(&reg, repo).await, vec!["good".to_string()]);
}

fn bad_digests() -> Vec<String> {
    vec![
        "sha256:abc".to_string(),
        format!("sha256:{}", "A".repeat(64)),
        format!("sha256:{}", "a".repeat(65)),
        format!("sha256:{}g", "a".repeat(63)),
        format!("sha512:{}", "a".repeat(64)),
        format!("sha512:{}", "a".repeat(127)),
        format!("md5:{}", "a".repeat(32)),
        format!("sha384:{}", "a".repeat(96)),
        format!("SHA256:{}", "a".repeat(64)),
        format!(":{}", "a".repeat(64)),
        "sha256:".to_string(),
        "v1:2".to_string(),
    ]
}

#[tokio::test]
async fn invalid_digest_references() {
    let reg = Registry::start();
    let repo = "digests/bad";
    let img = push_image(&reg, repo, "v1", "bad-digests").await;
    for d in bad_digests() {
        let c = client();
        let cases = vec![
            (
                "GET manifest",
                c.get(reg.url(&format!("/v2/{repo}/manifests/{d}"))),
            ),
            (
                "PUT manifest",
                c.put(reg.url(&format!("/v2/{repo}/manifests/{d}")))
                    .header("content-type", OCI_MANIFEST)
                    .body(img.manifest.clone()),
            ),
            (
                "DELETE manifest",
                c.delete(reg.url(&format!("/v2/{repo}/manifests/{d}"))),
            ),
            ("GET blob", c.get(reg.url(&format!("/v2/{repo}/blobs/{d}")))),
            (
                "DELETE blob",
                c.delete(reg.url(&format!("/v2/{repo}/blobs/{d}"))),
            ),
            (
                "GET referrers",
                c.get(reg.url(&format!("/v2/{repo}/referrers/{d}"))),
            ),
        ];
        for (what, req) in cases {
            let resp = req.send().await.unwrap();
            let st = resp.status().as_u16();
            let body = resp.bytes().await.unwrap();
            assert_eq!(st, 400, "{what} {d}: {}", String::from_utf8_lossy(&body));
            let errors = parse_errors(&body).unwrap();
            assert!(
                errors.iter().any(|e| e.code == "DIGEST_INVALID"),
                "{what} {d}: {errors:?}"
            );
        }
        let resp = c
            .head(reg.url(&format!("/v2/{repo}/blobs/{d}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400, "HEAD blob {d}");
    }
    // Blob and referrers paths take only digests: a bare word is a malformed digest too.
    for path in [
        format!("/v2/{repo}/blobs/notadigest"),
        format!("/v2/{repo}/referrers/notadigest"),
    ] {
        let resp = client().get(reg.url(&path)).send().await.unwrap();
        expect_error(resp, 400, "DIGEST_INVALID").await;
    }
    assert_healthy(&reg).await;
    assert_manifest(&reg, repo, "v1", OCI_MANIFEST, &img.manifest).await;
}

// ---------------------------------------------------------------------------------------------
// Blobs
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn unknown_blobs() {
    let reg = Registry::start();
    let data = b"exists only in repo a".to_vec();
    let digest = push_blob(&reg, "a", &data).await;
    push_blob(&reg, "b", b"something else in b").await;

    // Unknown digest in an existing repository.
    let unknown = sha256(b"never pushed");
    expect_error(get_blob(&reg, "a", &unknown).await, 404, "BLOB_UNKNOWN").await;
    // Unknown sha512 digest.
    expect_error(
        get_blob(&reg, "a", &sha512(b"never pushed")).await,
        404,
        "BLOB_UNKNOWN",
    )
    .await;
    // Exists in another repository, not linked here.
    expect_error(get_blob(&reg, "b", &digest).await, 404, "BLOB_UNKNOWN").await;
    for (repo, d) in [("a", &unknown), ("b", &digest)] {
        let resp = client()
            .head(reg.url(&format!("/v2/{repo}/blobs/{d}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 404);
        assert!(header(&resp, "docker-content-digest").is_none());
    }
    // Range request on a blob not linked here.
    let resp = client()
        .get(reg.url(&format!("/v2/b/blobs/{digest}")))
        .header("range", "bytes=0-3")
        .send()
        .await
        .unwrap();
    expect_error(resp, 404, "BLOB_UNKNOWN").await;
    // Repository that does not exist at all.
    expect_404_one_of(
        get_blob(&reg, "no/such/repo", &digest).await,
        &["BLOB_UNKNOWN", "NAME_UNKNOWN"],
    )
    .await;
    // DELETE of unknown / unlinked blobs.
    for (repo, d) in [("a", &unknown), ("b", &digest)] {
        let resp = client()
            .delete(reg.url(&format!("/v2/{repo}/blobs/{d}")))
            .send()
            .await
            .unwrap();
        expect_error(resp, 404, "BLOB_UNKNOWN").await;
    }
    assert_healthy(&reg).await;
    assert_blob(&reg, "a", &data).await;
}

#[tokio::test]
async fn delete_blob_twice() {
    let reg = Registry::start();
    let digest = push_blob(&reg, "twice", b"delete me twice").await;
    let url = reg.url(&format!("/v2/twice/blobs/{digest}"));
    expect_status(client().delete(&url).send().await.unwrap(), 202).await;
    expect_error(
        client().delete(&url).send().await.unwrap(),
        404,
        "BLOB_UNKNOWN",
    )
    .await;
    assert_healthy(&reg).await;
}

#[tokio::test]
async fn unsatisfiable_ranges() {
    let reg = Registry::start();
    let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    let digest = push_blob(&reg, "range/bad", &data).await;
    let url = reg.url(&format!("/v2/range/bad/blobs/{digest}"));
    for range in [
        "bytes=1000-1001",
        "bytes=1000-",
        "bytes=5000-6000",
        "bytes=-0",
    ] {
        let resp = client()
            .get(&url)
            .header("range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 416, "Range {range}");
        assert_eq!(
            must_header(&resp, "content-range"),
            "bytes */1000",
            "Range {range}"
        );
        assert_healthy(&reg).await;
    }
    assert_blob(&reg, "range/bad", &data).await;
}

#[tokio::test]
async fn monolithic_upload_with_wrong_digest() {
    let reg = Registry::start();
    let data = b"the real content".to_vec();
    let claimed = sha256(b"some other content");
    expect_error(
        post_blob(&reg, "mono/bad", &claimed, data.clone()).await,
        400,
        "DIGEST_INVALID",
    )
    .await;
    assert_healthy(&reg).await;
    // Stored under neither digest.
    for d in [&claimed, &sha256(&data)] {
        expect_404_one_of(
            get_blob(&reg, "mono/bad", d).await,
            &["BLOB_UNKNOWN", "NAME_UNKNOWN"],
        )
        .await;
    }
    // A sha512 claim that does not match.
    expect_error(
        post_blob(&reg, "mono/bad", &sha512(b"nope"), data.clone()).await,
        400,
        "DIGEST_INVALID",
    )
    .await;
    assert_healthy(&reg).await;
}

#[tokio::test]
async fn monolithic_upload_with_malformed_digest() {
    let reg = Registry::start();
    for d in bad_digests() {
        expect_error(
            post_blob(&reg, "mono/malformed", &d, b"abc".to_vec()).await,
            400,
            "DIGEST_INVALID",
        )
        .await;
    }
    assert_healthy(&reg).await;
}

#[tokio::test]
async fn finish_upload_with_wrong_or_missing_digest() {
    let reg = Registry::start();
    let data = b"chunk data for a bad finish".to_vec();

    // Wrong digest.
    let url = start_upload(&reg, "finish/bad").await;
    let url = patch_ok(&reg, &url, &data, Some(0)).await;
    expect_error(
        finish_upload(&url, &sha256(b"not it"), None, None).await,
        400,
        "DIGEST_INVALID",
    )
    .await;
    assert_healthy(&reg).await;
    expect_404_one_of(
        get_blob(&reg, "finish/bad", &sha256(&data)).await,
        &["BLOB_UNKNOWN", "NAME_UNKNOWN"],
    )
    .await;

    // Wrong digest with the final chunk in the PUT.
    let url = start_upload(&reg, "finish/bad").await;
    expect_error(
        finish_upload(&url, &sha256(b"not it either"), Some(&data), None).await,
        400,
        "DIGEST_INVALID",
    )
    .await;
    assert_healthy(&reg).await;

    // Missing digest parameter.
    let url = start_upload(&reg, "finish/bad").await;
    let url = patch_ok(&reg, &url, &data, Some(0)).await;
    let resp = client()
        .put(&url)
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    expect_error(resp, 400, "DIGEST_INVALID").await;
    assert_healthy(&reg).await;

    // Malformed digest parameter.
    for d in bad_digests() {
        let url = start_upload(&reg, "finish/bad").await;
        expect_error(
            finish_upload(&url, &d, Some(&data), None).await,
            400,
            "DIGEST_INVALID",
        )
        .await;
    }
    assert_healthy(&reg).await;
    expect_404_one_of(
        get_blob(&reg, "finish/bad", &sha256(&data)).await,
        &["BLOB_UNKNOWN", "NAME_UNKNOWN"],
    )
    .await;
}

#[tokio::test]
async fn out_of_order_chunks_are_rejected_and_session_stays_usable() {
    let reg = Registry::start();
    let data: Vec<u8> = (0..30u8).collect();
    let digest = sha256(&data);
    let url = start_upload(&reg, "order").await;

    // First chunk must start at 0.
    let resp = patch_chunk(&url, &data[5..10], Some(5)).await;
    expect_error(resp, 416, "BLOB_UPLOAD_INVALID").await;
    let resp = check_status(upload_status(&url).await, 204).await;
    assert_eq!(must_header(&resp, "range"), "0-0");

    let url = patch_ok(&reg, &url, &data[..10], Some(0)).await;
    // Overlapping, repeated, and gapped chunks.
    for start in [0usize, 5, 9, 11, 20] {
        let end = (start + 5).min(data.len());
        let resp = patch_chunk(&url, &data[start..end], Some(start as u64)).await;
        expect_error(resp, 416, "BLOB_UPLOAD_INVALID").await;
        let resp = check_status(upload_status(&url).await, 204).await;
        assert_eq!(
            must_header(&resp, "range"),
            "0-9",
            "after bad start {start}"
        );
        assert_healthy(&reg).await;
    }
    // The session continues normally.
    let url = patch_ok(&reg, &url, &data[10..20], Some(10)).await;
    let resp = finish_upload(&url, &digest, Some(&data[20..]), Some(20)).await;
    let resp = check_status(resp, 201).await;
    assert_eq!(must_header(&resp, "docker-content-digest"), digest);
    assert_blob(&reg, "order", &data).await;
}

#[tokio::test]
async fn out_of_order_final_chunk_in_put_is_rejected() {
    // "If the final chunk is uploaded out of order, the registry MUST respond with a 416".
    let reg = Registry::start();
    let data: Vec<u8> = (0..30u8).collect();
    let digest = sha256(&data);
    let url = start_upload(&reg, "order/final").await;
    let url = patch_ok(&reg, &url, &data[..10], Some(0)).await;
    for start in [5usize, 15] {
        let resp = finish_upload(&url, &digest, Some(&data[start..]), Some(start as u64)).await;
        expect_error(resp, 416, "BLOB_UPLOAD_INVALID").await;
        let resp = check_status(upload_status(&url).await, 204).await;
        assert_eq!(
            must_header(&resp, "range"),
            "0-9",
            "after final chunk at {start}"
        );
        assert_healthy(&reg).await;
    }
    let resp = finish_upload(&url, &digest, Some(&data[10..]), Some(10)).await;
    check_status(resp, 201).await;
    assert_blob(&reg, "order/final", &data).await;
}

#[tokio::test]
async fn malformed_content_range() {
    // Berth tolerates some variants the spec's grammar (`^[0-9]+-[0-9]+$`) does not allow
    // (`bytes=` / `bytes ` prefixes, a `/<size>` suffix, spaces); these are unparseable or
    // self-contradictory in any reading.
    let reg = Registry::start();
    let cases: &[(&str, &[u8])] = &[
        ("0-", b"01234"),
        ("-4", b"01234"),
        ("abc", b"01234"),
        ("x-4", b"01234"),
        ("0-x", b"01234"),
        ("4-0", b"01234"),
        ("", b"01234"),
        // Range length disagrees with the body length.
        ("0-9", b"01234"),
        ("0-1", b"01234"),
    ];
    let mut failures = Vec::new();
    for (cr, body) in cases {
        let url = start_upload(&reg, "crange").await;
        let resp = client()
            .patch(&url)
            .header("content-type", "application/octet-stream")
            .header("content-range", *cr)
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        let st = resp.status().as_u16();
        let b = resp.bytes().await.unwrap();
        let ok = st == 400
            && parse_errors(&b)
                .map(|e| e.iter().any(|e| e.code == "BLOB_UPLOAD_INVALID"))
                .unwrap_or(false);
        if !ok {
            failures.push(format!(
                "Content-Range {cr:?}: {st} {}",
                String::from_utf8_lossy(&b)
            ));
        }
        // Nothing was appended.
        let resp = check_status(upload_status(&url).await, 204).await;
        if must_header(&resp, "range") != "0-0" {
            failures.push(format!(
                "Content-Range {cr:?}: session grew to {}",
                must_header(&resp, "range")
            ));
        }
        assert_healthy(&reg).await;
    }
    assert!(
        failures.is_empty(),
        "expected 400 BLOB_UPLOAD_INVALID:\n{}",
        failures.join("\n")
    );
}

#[tokio::test]
async fn unknown_upload_sessions() {
    let reg = Registry::start();
    push_blob(&reg, "sess", b"make the repo exist").await;
    let ids = [
        "3f1d3e8a-0000-4000-8000-000000000000".to_string(),
        "not-a-uuid".to_string(),
    ];
    for id in &ids {
        let url = reg.url(&format!("/v2/sess/blobs/uploads/{id}"));
        expect_error(upload_status(&url).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
        expect_error(
            patch_chunk(&url, b"data", Some(0)).await,
            404,
            "BLOB_UPLOAD_UNKNOWN",
        )
        .await;
        expect_error(
            finish_upload(&url, &sha256(b"data"), Some(b"data"), None).await,
            404,
            "BLOB_UPLOAD_UNKNOWN",
        )
        .await;
        let resp = client().delete(&url).send().await.unwrap();
        expect_error(resp, 404, "BLOB_UPLOAD_UNKNOWN").await;
        assert_healthy(&reg).await;
    }
}

#[tokio::test]
async fn upload_session_is_bound_to_its_repository() {
    let reg = Registry::start();
    let data = b"bound to repo a".to_vec();
    let url = start_upload(&reg, "repo/a").await;
    let url = patch_ok(&reg, &url, &data[..5], Some(0)).await;
    let path = path_of(&reg, &url);
    assert!(path.starts_with("/v2/repo/a/blobs/uploads/"), "{path}");
    let other = reg.url(&path.replacen("/v2/repo/a/", "/v2/repo/b/", 1));

    expect_error(upload_status(&other).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
    expect_error(
        patch_chunk(&other, &data[5..], Some(5)).await,
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    expect_error(
        finish_upload(&other, &sha256(&data), Some(&data[5..]), None).await,
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    expect_error(
        client().delete(&other).send().await.unwrap(),
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    expect_404_one_of(
        get_blob(&reg, "repo/b", &sha256(&data)).await,
        &["BLOB_UNKNOWN", "NAME_UNKNOWN"],
    )
    .await;

    // The session in repo/a is unaffected.
    let resp = check_status(upload_status(&url).await, 204).await;
    assert_eq!(must_header(&resp, "range"), "0-4");
    let url = patch_ok(&reg, &url, &data[5..], Some(5)).await;
    check_status(finish_upload(&url, &sha256(&data), None, None).await, 201).await;
    assert_blob(&reg, "repo/a", &data).await;
}

#[tokio::test]
async fn completed_upload_session_is_gone() {
    let reg = Registry::start();
    let data = b"finish once".to_vec();
    let url = start_upload(&reg, "done").await;
    let url = patch_ok(&reg, &url, &data, Some(0)).await;
    check_status(finish_upload(&url, &sha256(&data), None, None).await, 201).await;
    expect_error(upload_status(&url).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
    expect_error(
        patch_chunk(&url, b"more", Some(data.len() as u64)).await,
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    expect_error(
        finish_upload(&url, &sha256(&data), None, None).await,
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    assert_blob(&reg, "done", &data).await;
    assert_healthy(&reg).await;
}

// ---------------------------------------------------------------------------------------------
// Manifests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_manifest_json() {
    let reg = Registry::start();
    let repo = "manifest/json";
    let good = push_image(&reg, repo, "v1", "malformed-json").await;
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{".to_vec(),
        b"not json at all".to_vec(),
        b"[]".to_vec(),
        b"\"a string\"".to_vec(),
        b"null".to_vec(),
        b"{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\","
            .to_vec(),
        vec![0xff, 0xfe, 0x00, 0x7b],
    ];
    for body in bodies {
        for reference in ["v1", "v2"] {
            let resp = push_manifest(&reg, repo, reference, OCI_MANIFEST, &body).await;
            expect_error(resp, 400, "MANIFEST_INVALID").await;
        }
        // By digest, with a digest that matches the bad bytes.
        let resp = push_manifest(&reg, repo, &sha256(&body), OCI_MANIFEST, &body).await;
        expect_error(resp, 400, "MANIFEST_INVALID").await;
        assert_healthy(&reg).await;
    }
    // The existing tag was not overwritten and no new tag appeared.
    assert_manifest(&reg, repo, "v1", OCI_MANIFEST, &good.manifest).await;
    assert_eq!(list_tags(&reg, repo).await, vec!["v1".to_string()]);
}

#[tokio::test]
async fn content_type_and_media_type_mismatch() {
    let reg = Registry::start();
    let repo = "manifest/mismatch";
    let img = push_image(&reg, repo, "v1", "mismatch").await;
    let index = image_index(&[img.descriptor()]);
    let docker_cfg = img.config.clone();
    let docker = docker_manifest(&descriptor(DOCKER_CONFIG, &docker_cfg), &[]);
    let cases: Vec<(&str, &[u8])> = vec![
        (OCI_INDEX, &img.manifest),
        (DOCKER_MANIFEST, &img.manifest),
        (OCI_MANIFEST, &index),
        (DOCKER_MANIFEST_LIST, &index),
        (OCI_MANIFEST, &docker),
    ];
    for (ct, body) in cases {
        let resp = push_manifest(&reg, repo, "mismatch", ct, body).await;
        expect_error(resp, 400, "MANIFEST_INVALID").await;
        assert_healthy(&reg).await;
    }
    assert_eq!(list_tags(&reg, repo).await, vec!["v1".to_string()]);
}

#[tokio::test]
async fn schema1_manifests_are_rejected() {
    let reg = Registry::start();
    let repo = "manifest/schema1";
    push_image(&reg, repo, "v1", "schema1").await;
    let layer = b"schema1 layer".to_vec();
    let layer_digest = push_blob(&reg, repo, &layer).await;
    let s1 = serde_json::to_vec(&json!({
        "schemaVersion": 1,
        "name": repo,
        "tag": "old",
        "architecture": "amd64",
        "fsLayers": [{"blobSum": layer_digest}],
        "history": [{"v1Compatibility": "{\"id\":\"x\"}"}],
    }))
    .unwrap();
    let mut s1_typed: serde_json::Value = serde_json::from_slice(&s1).unwrap();
    s1_typed["mediaType"] = json!(DOCKER_SCHEMA1);
    let s1_typed = serde_json::to_vec(&s1_typed).unwrap();
    let mut s1_signed: serde_json::Value = serde_json::from_slice(&s1).unwrap();
    s1_signed["signatures"] =
        json!([{"header": {"alg": "ES256"}, "signature": "abc", "protected": "def"}]);
    let s1_signed = serde_json::to_vec(&s1_signed).unwrap();

    let cases: Vec<(&str, &[u8])> = vec![
        (DOCKER_SCHEMA1, &s1),
        (DOCKER_SCHEMA1, &s1_typed),
        (DOCKER_SCHEMA1_SIGNED, &s1_signed),
        // schemaVersion 1 under an OCI / schema2 content type.
        (OCI_MANIFEST, &s1),
        (DOCKER_MANIFEST, &s1),
    ];
    for (ct, body) in cases {
        let resp = push_manifest(&reg, repo, "old", ct, body).await;
        let errors = expect_error(resp, 400, "MANIFEST_INVALID").await;
        let text: String = errors
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e.message.clone().unwrap_or_default(),
                    e.detail.clone().map(|d| d.to_string()).unwrap_or_default()
                )
            })
            .collect::<String>()
            .to_lowercase()
            .replace([' ', '-', '_'], "");
        assert!(
            text.contains("schema1") || text.contains("schemaversion1"),
            "error for {ct} should mention schema1: {errors:?}"
        );
        assert_healthy(&reg).await;
    }
    expect_error(
        get_manifest(&reg, repo, "old", None).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
}

#[tokio::test]
async fn manifest_referencing_unknown_blobs() {
    let reg = Registry::start();
    let repo = "manifest/blobs";
    let good = push_image(&reg, repo, "v1", "unknown-blobs").await;
    let present_cfg = good.config.clone();
    let present_layer = good.layer.clone();
    let missing = b"this blob was never uploaded".to_vec();
    // A blob that only exists in a different repository.
    let elsewhere = b"blob living in another repository".to_vec();
    push_blob(&reg, "some/other/repo", &elsewhere).await;

    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "missing config",
            image_manifest(
                &descriptor(OCI_CONFIG, &missing),
                &[descriptor(OCI_LAYER, &present_layer)],
            ),
        ),
        (
            "missing layer",
            image_manifest(
                &descriptor(OCI_CONFIG, &present_cfg),
                &[
                    descriptor(OCI_LAYER, &present_layer),
                    descriptor(OCI_LAYER, &missing),
                ],
            ),
        ),
        (
            "config only in another repo",
            image_manifest(&descriptor(OCI_CONFIG, &elsewhere), &[]),
        ),
        (
            "layer only in another repo",
            image_manifest(
                &descriptor(OCI_CONFIG, &present_cfg),
                &[descriptor(OCI_LAYER, &elsewhere)],
            ),
        ),
        (
            "docker manifest with missing layer",
            docker_manifest(
                &descriptor(DOCKER_CONFIG, &present_cfg),
                &[descriptor(DOCKER_LAYER, &missing)],
            ),
        ),
        (
            "artifact with missing empty config",
            artifact_manifest(
                Some("application/vnd.example"),
                &empty_descriptor(),
                &[],
                None,
                None,
            ),
        ),
    ];
    for (what, body) in cases {
        let ct = if what.starts_with("docker") {
            DOCKER_MANIFEST
        } else {
            OCI_MANIFEST
        };
        let digest = sha256(&body);
        let resp = push_manifest(&reg, repo, "v1", ct, &body).await;
        let resp_url = resp.url().to_string();
        let st = resp.status().as_u16();
        let b = resp.bytes().await.unwrap();
        assert_eq!(
            st,
            400,
            "{what} ({resp_url}): {}",
            String::from_utf8_lossy(&b)
        );
        let errors = parse_errors(&b).unwrap();
        assert!(
            errors.iter().any(|e| e.code == "MANIFEST_BLOB_UNKNOWN"),
            "{what}: {errors:?}"
        );
        // By digest as well.
        let resp = push_manifest(&reg, repo, &digest, ct, &body).await;
        expect_error(resp, 400, "MANIFEST_BLOB_UNKNOWN").await;
        // Not stored.
        expect_error(
            get_manifest(&reg, repo, &digest, None).await,
            404,
            "MANIFEST_UNKNOWN",
        )
        .await;
        assert_healthy(&reg).await;
    }
    // The tag still points at the good manifest.
    assert_manifest(&reg, repo, "v1", OCI_MANIFEST, &good.manifest).await;
}

#[tokio::test]
async fn manifest_referencing_deleted_blob() {
    let reg = Registry::start();
    let repo = "manifest/deleted-blob";
    let img = sample_image("deleted-blob");
    push_image_blobs(&reg, repo, &img).await;
    let resp = client()
        .delete(reg.url(&format!("/v2/{repo}/blobs/{}", sha256(&img.layer))))
        .send()
        .await
        .unwrap();
    expect_status(resp, 202).await;
    expect_error(
        push_manifest(&reg, repo, "v1", OCI_MANIFEST, &img.manifest).await,
        400,
        "MANIFEST_BLOB_UNKNOWN",
    )
    .await;
    assert_healthy(&reg).await;
}

#[tokio::test]
async fn index_referencing_unknown_manifests() {
    let reg = Registry::start();
    let repo = "index/bad";
    let present = push_image_by_digest(&reg, repo, "index-present").await;
    let absent = sample_image("index-absent"); // never pushed
    let elsewhere = push_image_by_digest(&reg, "index/elsewhere", "index-elsewhere").await;

    let cases: Vec<(&str, Vec<u8>)> = vec![
        (OCI_INDEX, image_index(&[absent.descriptor()])),
        (
            OCI_INDEX,
            image_index(&[present.descriptor(), absent.descriptor()]),
        ),
        (OCI_INDEX, image_index(&[elsewhere.descriptor()])),
        (
            DOCKER_MANIFEST_LIST,
            docker_manifest_list(&[absent.descriptor()]),
        ),
    ];
    for (ct, body) in cases {
        expect_error(
            push_manifest(&reg, repo, "multi", ct, &body).await,
            400,
            "MANIFEST_BLOB_UNKNOWN",
        )
        .await;
        expect_error(
            push_manifest(&reg, repo, &sha256(&body), ct, &body).await,
            400,
            "MANIFEST_BLOB_UNKNOWN",
        )
        .await;
        assert_healthy(&reg).await;
    }
    expect_error(
        get_manifest(&reg, repo, "multi", None).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
}

#[tokio::test]
async fn manifest_put_by_mismatching_digest() {
    let reg = Registry::start();
    let repo = "manifest/digest";
    let img = sample_image("mismatching-digest");
    push_image_blobs(&reg, repo, &img).await;
    push_manifest_ok(&reg, repo, "v1", OCI_MANIFEST, &img.manifest).await;
    let other = sample_image("something-else");
    // Well-formed digests (sha256 and sha512) that are not the body's.
    for wrong in [other.digest.clone(), sha512(b"not the manifest")] {
        expect_error(
            push_manifest(&reg, repo, &wrong, OCI_MANIFEST, &img.manifest).await,
            400,
            "DIGEST_INVALID",
        )
        .await;
        expect_error(
            get_manifest(&reg, repo, &wrong, None).await,
            404,
            "MANIFEST_UNKNOWN",
        )
        .await;
        assert_healthy(&reg).await;
    }
}

/// A PUT over a raw TCP connection: writes the request (ignoring write errors, since the server
/// may reject it early and close) while reading the response. Returns status, the raw header
/// block and the body (by Content-Length, or up to EOF).
async fn raw_put_manifest(
    reg: &Registry,
    path: &str,
    content_type: &str,
    body: &[u8],
    chunked: bool,
) -> (u16, String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(reg.addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let mut head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nConnection: close\r\n",
        reg.host()
    );
    let payload: Vec<u8> = if chunked {
        head.push_str("Transfer-Encoding: chunked\r\n\r\n");
        let mut p = Vec::with_capacity(body.len() + 1024);
        for c in body.chunks(64 * 1024) {
            p.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            p.extend_from_slice(c);
            p.extend_from_slice(b"\r\n");
        }
        p.extend_from_slice(b"0\r\n\r\n");
        p
    } else {
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        body.to_vec()
    };
    let writer = tokio::spawn(async move {
        if wr.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for c in payload.chunks(16 * 1024) {
            if wr.write_all(c).await.is_err() {
                return;
            }
        }
        let _ = wr.flush().await;
        // Keep the write half open until the response has been read.
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        drop(wr);
    });
    let mut buf = Vec::new();
    let mut tmp = vec![0u8; 64 * 1024];
    let (status, headers, body_start, content_length) = loop {
        let n = rd.read(&mut tmp).await.unwrap_or(0);
        if n == 0 {
            panic!(
                "connection closed before a complete response header: {:?}",
                String::from_utf8_lossy(&buf)
            );
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let headers = String::from_utf8_lossy(&buf[..pos]).to_string();
            let status: u16 = headers
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("bad status line: {headers}"));
            let cl = headers.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())
                    .flatten()
            });
            break (status, headers, pos + 4, cl);
        }
    };
    let mut body = buf[body_start..].to_vec();
    loop {
        if let Some(cl) = content_length {
            if body.len() >= cl {
                body.truncate(cl);
                break;
            }
        }
        match rd.read(&mut tmp).await {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&tmp[..n]),
        }
    }
    writer.abort();
    (status, headers, body)
}

fn padded_manifest(config: &[u8], total: usize) -> Vec<u8> {
    let build = |pad: usize| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [],
            "annotations": {"org.example.padding": "p".repeat(pad)},
        }))
        .unwrap()
    };
    let base = build(0).len();
    assert!(total >= base);
    let m = build(total - base);
    assert_eq!(m.len(), total);
    m
}

#[tokio::test]
async fn manifest_size_limit() {
    let reg = Registry::start();
    let repo = "manifest/size";
    let cfg = b"{\"size\":\"test\"}".to_vec();
    push_blob(&reg, repo, &cfg).await;

    // Exactly 4 MiB is accepted.
    let ok = padded_manifest(&cfg, 4 * 1024 * 1024);
    push_manifest_ok(&reg, repo, "big", OCI_MANIFEST, &ok).await;
    assert_manifest(&reg, repo, "big", OCI_MANIFEST, &ok).await;

    // One byte more is not, nor is much more; with a Content-Length and with a chunked body.
    // Sent over a raw socket that keeps reading while it writes: the registry may answer before
    // it has read the whole body, and the answer must still reach the client.
    for size in [4 * 1024 * 1024 + 1, 5 * 1024 * 1024] {
        let too_big = padded_manifest(&cfg, size);
        for chunked in [false, true] {
            let (status, headers, body) = raw_put_manifest(
                &reg,
                &format!("/v2/{repo}/manifests/too-big"),
                OCI_MANIFEST,
                &too_big,
                chunked,
            )
            .await;
            assert_eq!(
                status,
                413,
                "size {size} chunked={chunked}: {}",
                String::from_utf8_lossy(&body)
            );
            assert!(
                headers
                    .to_ascii_lowercase()
                    .contains("content-type: application/json"),
                "{headers}"
            );
            let errors = parse_errors(&body).unwrap();
            assert!(
                errors.iter().any(|e| e.code == "SIZE_INVALID"),
                "{errors:?}"
            );
            assert_healthy(&reg).await;
        }
    }
    expect_error(
        get_manifest(&reg, repo, "too-big", None).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
}

#[tokio::test]
async fn unknown_manifests_and_repositories() {
    let reg = Registry::start();
    let repo = "known/repo";
    let img = push_image(&reg, repo, "v1", "unknown-manifests").await;
    let unknown_digest = sha256(b"no such manifest");

    for reference in ["nope", unknown_digest.as_str()] {
        expect_error(
            get_manifest(&reg, repo, reference, None).await,
            404,
            "MANIFEST_UNKNOWN",
        )
        .await;
        let resp = client()
            .head(reg.url(&format!("/v2/{repo}/manifests/{reference}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 404);
        assert!(header(&resp, "docker-content-digest").is_none());
        assert!(resp.bytes().await.unwrap().is_empty());
        let resp = client()
            .delete(reg.url(&format!("/v2/{repo}/manifests/{reference}")))
            .send()
            .await
            .unwrap();
        expect_error(resp, 404, "MANIFEST_UNKNOWN").await;
    }
    // The blob digest of a layer is not a manifest.
    expect_error(
        get_manifest(&reg, repo, &sha256(&img.layer), None).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;

    // Repository that does not exist.
    for reference in ["v1", img.digest.as_str()] {
        expect_error(
            get_manifest(&reg, "unknown/repo", reference, None).await,
            404,
            "NAME_UNKNOWN",
        )
        .await;
        let resp = client()
            .head(reg.url(&format!("/v2/unknown/repo/manifests/{reference}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 404);
        // The spec only requires a 404 here.
        let resp = client()
            .delete(reg.url(&format!("/v2/unknown/repo/manifests/{reference}")))
            .send()
            .await
            .unwrap();
        expect_404_one_of(resp, &["NAME_UNKNOWN", "MANIFEST_UNKNOWN"]).await;
    }
    let resp = client()
        .get(reg.url("/v2/unknown/repo/tags/list"))
        .send()
        .await
        .unwrap();
    expect_error(resp, 404, "NAME_UNKNOWN").await;
    assert_healthy(&reg).await;
    assert_manifest(&reg, repo, "v1", OCI_MANIFEST, &img.manifest).await;
}

#[tokio::test]
async fn accept_header_excluding_stored_type() {
    let reg = Registry::start();
    let repo = "accept/bad";
    let img = push_image(&reg, repo, "v1", "accept-bad").await;
    for accept in [
        DOCKER_MANIFEST.to_string(),
        format!("{DOCKER_MANIFEST}, {DOCKER_MANIFEST_LIST}, {OCI_INDEX}"),
        "text/plain".to_string(),
    ] {
        let resp = get_manifest(&reg, repo, "v1", Some(&accept)).await;
        expect_error(resp, 404, "MANIFEST_UNKNOWN").await;
        let resp = client()
            .head(reg.url(&format!("/v2/{repo}/manifests/v1")))
            .header("accept", &accept)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 404, "HEAD with Accept {accept}");
        // By digest the manifest is always returned.
        let resp = get_manifest(&reg, repo, &img.digest, Some(&accept)).await;
        let resp = check_status(resp, 200).await;
        assert_eq!(must_header(&resp, "content-type"), OCI_MANIFEST);
        assert_healthy(&reg).await;
    }
}

#[tokio::test]
async fn delete_tag_twice() {
    let reg = Registry::start();
    let repo = "deltag/twice";
    let img = push_image(&reg, repo, "v1", "deltag-twice").await;
    let url = reg.url(&format!("/v2/{repo}/manifests/v1"));
    expect_status(client().delete(&url).send().await.unwrap(), 202).await;
    expect_error(
        client().delete(&url).send().await.unwrap(),
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    let url = reg.url(&format!("/v2/{repo}/manifests/{}", img.digest));
    expect_status(client().delete(&url).send().await.unwrap(), 202).await;
    expect_error(
        client().delete(&url).send().await.unwrap(),
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    assert_healthy(&reg).await;
}

#[tokio::test]
async fn error_responses_are_json() {
    // Every error path above checks this via expect_error; here one of each class, plus the
    // `message` field being a string when present.
    let reg = Registry::start();
    let resp = get_blob(&reg, "Bad", &valid_digest()).await;
    let errors = expect_error(resp, 400, "NAME_INVALID").await;
    for e in errors {
        assert!(e.code.chars().all(|c| c.is_ascii_uppercase() || c == '_'));
    }
    let resp = get_manifest(&reg, "nothing/here", "v1", None).await;
    expect_error(resp, 404, "NAME_UNKNOWN").await;
    assert_healthy(&reg).await;
}

#[tokio::test]
async fn invalid_pagination_parameters() {
    // Not a non-negative integer: a 400 whose error codes are ones the spec defines (the spec:
    // "The `code` field MUST be one of the following").
    let reg = Registry::start();
    push_image(&reg, "pages", "v1", "pagination").await;
    for q in ["n=abc", "n=-1", "n=1.5"] {
        for path in [
            format!("/v2/pages/tags/list?{q}"),
            format!("/v2/_catalog?{q}"),
        ] {
            let resp = client().get(reg.url(&path)).send().await.unwrap();
            let st = resp.status().as_u16();
            let ct = header(&resp, "content-type").unwrap_or_default();
            let body = resp.bytes().await.unwrap();
            assert_eq!(st, 400, "{path}: {}", String::from_utf8_lossy(&body));
            assert!(ct.starts_with("application/json"), "{path}: {ct}");
            let errors = parse_errors(&body).unwrap();
            assert!(!errors.is_empty());
            for e in &errors {
                assert!(
                    KNOWN_ERROR_CODES.contains(&e.code.as_str()),
                    "{path}: error code {:?} is not one of the spec's codes",
                    e.code
                );
            }
        }
        assert_healthy(&reg).await;
    }
    assert_eq!(list_tags(&reg, "pages").await, vec!["v1".to_string()]);
}

#[tokio::test]
async fn invalid_mount_parameters() {
    let reg = Registry::start();
    let data = b"mount source".to_vec();
    let digest = push_blob(&reg, "mount/src", &data).await;
    let post = |q: String| {
        let url = reg.url(&format!("/v2/mount/dst/blobs/uploads/?{q}"));
        async move {
            client()
                .post(url)
                .header("content-length", "0")
                .send()
                .await
                .unwrap()
        }
    };
    for bad in bad_digests() {
        let resp = post(format!("mount={}&from=mount/src", encode_query_value(&bad))).await;
        expect_error(resp, 400, "DIGEST_INVALID").await;
    }
    for bad_from in ["Mount/Src", "-x", "a//b"] {
        let resp = post(format!("mount={digest}&from={bad_from}")).await;
        expect_error(resp, 400, "NAME_INVALID").await;
    }
    assert_healthy(&reg).await;
    expect_404_one_of(
        get_blob(&reg, "mount/dst", &digest).await,
        &["BLOB_UNKNOWN", "NAME_UNKNOWN"],
    )
    .await;
}
