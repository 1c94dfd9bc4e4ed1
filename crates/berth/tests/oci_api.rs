//! Success paths of every OCI Distribution endpoint, exercised over HTTP against the real
//! `berth serve` binary. Each test starts its own server.

mod common;

use common::oci::*;
use common::pseudo_bytes as blob_bytes;
use common::{sha256, sha512, Registry};
use serde_json::{json, Value};
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Base endpoint
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn api_version_check() {
    let reg = Registry::start();
    let resp = client().get(reg.url("/v2/")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        header(&resp, "docker-distribution-api-version").as_deref(),
        Some("registry/2.0")
    );
}

// ---------------------------------------------------------------------------------------------
// Blob pull
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn monolithic_post_push_then_get_and_head() {
    let reg = Registry::start();
    let data = blob_bytes("mono", 10_000);
    let digest = sha256(&data);

    let resp = post_blob(&reg, "library/mono", &digest, data.clone()).await;
    let resp = check_status(resp, 201).await;
    assert_eq!(
        path_only(&reg, &must_header(&resp, "location")),
        format!("/v2/library/mono/blobs/{digest}")
    );
    assert_eq!(must_header(&resp, "docker-content-digest"), digest);

    // GET
    let resp = check_status(get_blob(&reg, "library/mono", &digest).await, 200).await;
    assert_eq!(must_header(&resp, "content-length"), data.len().to_string());
    assert_eq!(must_header(&resp, "docker-content-digest"), digest);
    assert_eq!(must_header(&resp, "accept-ranges"), "bytes");
    assert_eq!(
        must_header(&resp, "content-type"),
        "application/octet-stream"
    );
    let body = resp.bytes().await.unwrap();
    assert_eq!(sha256(&body), digest);
    assert!(body.as_ref() == data.as_slice());

    // HEAD: same headers, no body.
    let resp = client()
        .head(reg.url(&format!("/v2/library/mono/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(must_header(&resp, "content-length"), data.len().to_string());
    assert_eq!(must_header(&resp, "docker-content-digest"), digest);
    assert_eq!(must_header(&resp, "accept-ranges"), "bytes");
    assert_eq!(
        must_header(&resp, "content-type"),
        "application/octet-stream"
    );
    assert!(resp.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn blob_range_requests() {
    let reg = Registry::start();
    let data = blob_bytes("ranges", 1000);
    let digest = push_blob(&reg, "ranges", &data).await;
    let url = reg.url(&format!("/v2/ranges/blobs/{digest}"));

    let cases: &[(&str, usize, usize)] = &[
        ("bytes=0-99", 0, 99),
        ("bytes=100-199", 100, 199),
        ("bytes=990-999", 990, 999),
        ("bytes=500-", 500, 999),
        ("bytes=-10", 990, 999),
        ("bytes=0-0", 0, 0),
        // An end past the last byte is clamped (RFC 9110 14.1.2).
        ("bytes=900-5000", 900, 999),
        // A suffix longer than the representation selects all of it.
        ("bytes=-5000", 0, 999),
    ];
    for (range, a, b) in cases {
        let resp = client()
            .get(&url)
            .header("range", *range)
            .send()
            .await
            .unwrap();
        let resp = check_status(resp, 206).await;
        assert_eq!(
            must_header(&resp, "content-range"),
            format!("bytes {a}-{b}/1000"),
            "Content-Range for {range}"
        );
        assert_eq!(
            must_header(&resp, "content-length"),
            (b - a + 1).to_string(),
            "Content-Length for {range}"
        );
        let body = resp.bytes().await.unwrap();
        assert!(body.as_ref() == &data[*a..=*b], "body for {range}");
    }
}

#[tokio::test]
async fn blob_delete_removes_only_from_that_repository() {
    let reg = Registry::start();
    let data = blob_bytes("shared-del", 777);
    let digest = push_blob(&reg, "one", &data).await;
    assert_eq!(push_blob(&reg, "two", &data).await, digest);

    let resp = client()
        .delete(reg.url(&format!("/v2/one/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    expect_status(resp, 202).await;

    expect_error(get_blob(&reg, "one", &digest).await, 404, "BLOB_UNKNOWN").await;
    let resp = client()
        .head(reg.url(&format!("/v2/one/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);

    // The same blob in another repository is untouched.
    assert_blob(&reg, "two", &data).await;

    // And it can be pushed again to the first repository.
    assert_eq!(push_blob(&reg, "one", &data).await, digest);
    assert_blob(&reg, "one", &data).await;
}

// ---------------------------------------------------------------------------------------------
// Uploads
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn post_then_put_monolithic() {
    let reg = Registry::start();
    let data = blob_bytes("post-put", 4096);
    let digest = sha256(&data);

    let resp = check_status(post_upload(&reg, "pp/repo").await, 202).await;
    let location = must_header(&resp, "location");
    let uuid = must_header(&resp, "docker-upload-uuid");
    assert!(!uuid.is_empty());
    assert!(
        location.contains(&uuid),
        "Location {location} must contain the session id {uuid}"
    );
    assert!(
        path_only(&reg, &location).starts_with("/v2/pp/repo/blobs/uploads/"),
        "Location {location}"
    );
    assert_eq!(must_header(&resp, "range"), "0-0");

    let url = resolve(&reg, &location);
    let resp = finish_upload(&url, &digest, Some(&data), None).await;
    let resp = check_status(resp, 201).await;
    assert_eq!(
        path_only(&reg, &must_header(&resp, "location")),
        format!("/v2/pp/repo/blobs/{digest}")
    );
    assert_eq!(must_header(&resp, "docker-content-digest"), digest);
    assert_blob(&reg, "pp/repo", &data).await;
}

#[tokio::test]
async fn upload_sessions_are_distinct() {
    let reg = Registry::start();
    let a = check_status(post_upload(&reg, "sessions").await, 202).await;
    let b = check_status(post_upload(&reg, "sessions").await, 202).await;
    assert_ne!(
        must_header(&a, "docker-upload-uuid"),
        must_header(&b, "docker-upload-uuid")
    );
    assert_ne!(must_header(&a, "location"), must_header(&b, "location"));
}

#[tokio::test]
async fn chunked_upload_with_content_range_and_status() {
    let reg = Registry::start();
    let repo = "chunked/a/b";
    let data = blob_bytes("chunked", 300_000);
    let digest = sha256(&data);
    let mut url = start_upload(&reg, repo).await;

    // Fresh session status.
    let resp = check_status(upload_status(&url).await, 204).await;
    assert_eq!(must_header(&resp, "range"), "0-0");
    let uuid = must_header(&resp, "docker-upload-uuid");
    assert!(url.contains(&uuid));

    let bounds = [
        (0usize, 100_000usize),
        (100_000, 100_001),
        (100_001, 300_000),
    ];
    for (a, b) in bounds {
        let resp = patch_chunk(&url, &data[a..b], Some(a as u64)).await;
        let resp = check_status(resp, 202).await;
        assert_eq!(must_header(&resp, "range"), format!("0-{}", b - 1));
        assert_eq!(must_header(&resp, "docker-upload-uuid"), uuid);
        url = resolve(&reg, &must_header(&resp, "location"));
        assert!(url.contains(&uuid));

        let resp = check_status(upload_status(&url).await, 204).await;
        assert_eq!(must_header(&resp, "range"), format!("0-{}", b - 1));
        assert_eq!(must_header(&resp, "docker-upload-uuid"), uuid);
        assert!(resolve(&reg, &must_header(&resp, "location")).contains(&uuid));
    }

    let resp = check_status(finish_upload(&url, &digest, None, None).await, 201).await;
    assert_eq!(
        path_only(&reg, &must_header(&resp, "location")),
        format!("/v2/{repo}/blobs/{digest}")
    );
    assert_eq!(must_header(&resp, "docker-content-digest"), digest);
    assert_blob(&reg, repo, &data).await;
}

#[tokio::test]
async fn chunked_upload_final_chunk_in_put() {
    let reg = Registry::start();
    let data = blob_bytes("final-put", 50_000);
    let digest = sha256(&data);
    let url = start_upload(&reg, "finalput").await;
    let url = patch_ok(&reg, &url, &data[..20_000], Some(0)).await;
    let url = patch_ok(&reg, &url, &data[20_000..40_000], Some(20_000)).await;
    // Last chunk in the PUT, with a Content-Range.
    let resp = finish_upload(&url, &digest, Some(&data[40_000..]), Some(40_000)).await;
    let resp = check_status(resp, 201).await;
    assert_eq!(must_header(&resp, "docker-content-digest"), digest);
    assert_blob(&reg, "finalput", &data).await;

    // Last chunk in the PUT without a Content-Range.
    let data2 = blob_bytes("final-put-2", 9_999);
    let digest2 = sha256(&data2);
    let url = start_upload(&reg, "finalput").await;
    let url = patch_ok(&reg, &url, &data2[..5_000], Some(0)).await;
    let resp = finish_upload(&url, &digest2, Some(&data2[5_000..]), None).await;
    let resp = check_status(resp, 201).await;
    assert_eq!(must_header(&resp, "docker-content-digest"), digest2);
    assert_blob(&reg, "finalput", &data2).await;
}

#[tokio::test]
async fn streamed_patch_without_content_range_appends() {
    let reg = Registry::start();
    let data = blob_bytes("streamed", 70_001);
    let digest = sha256(&data);
    let url = start_upload(&reg, "streamed").await;

    let resp = check_status(patch_chunk(&url, &data[..30_000], None).await, 202).await;
    assert_eq!(must_header(&resp, "range"), "0-29999");
    let url = resolve(&reg, &must_header(&resp, "location"));
    let resp = check_status(patch_chunk(&url, &data[30_000..], None).await, 202).await;
    assert_eq!(must_header(&resp, "range"), "0-70000");
    let url = resolve(&reg, &must_header(&resp, "location"));

    let resp = check_status(finish_upload(&url, &digest, None, None).await, 201).await;
    assert_eq!(must_header(&resp, "docker-content-digest"), digest);
    assert_blob(&reg, "streamed", &data).await;
}

#[tokio::test]
async fn streamed_patch_with_chunked_transfer_encoding() {
    // A body of unknown length (Transfer-Encoding: chunked), as docker/containerd send.
    let reg = Registry::start();
    let data = blob_bytes("te-chunked", 200_000);
    let digest = sha256(&data);
    let url = start_upload(&reg, "techunked").await;
    let parts: Vec<Result<Vec<u8>, std::io::Error>> =
        data.chunks(16_384).map(|c| Ok(c.to_vec())).collect();
    let body = reqwest::Body::wrap_stream(futures::stream::iter(parts));
    let resp = client()
        .patch(&url)
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    let resp = check_status(resp, 202).await;
    assert_eq!(must_header(&resp, "range"), "0-199999");
    let url = resolve(&reg, &must_header(&resp, "location"));
    check_status(finish_upload(&url, &digest, None, None).await, 201).await;
    assert_blob(&reg, "techunked", &data).await;
}

#[tokio::test]
async fn empty_blob_upload() {
    let reg = Registry::start();
    let digest = sha256(b"");
    assert_eq!(
        digest,
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    let url = start_upload(&reg, "empty").await;
    let resp = check_status(finish_upload(&url, &digest, None, None).await, 201).await;
    assert_eq!(must_header(&resp, "docker-content-digest"), digest);
    let resp = check_status(get_blob(&reg, "empty", &digest).await, 200).await;
    assert_eq!(must_header(&resp, "content-length"), "0");
    assert!(resp.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn large_blob_chunked_upload() {
    let reg = Registry::start();
    let data = blob_bytes("large", 6 * 1024 * 1024 + 123);
    let digest = push_blob_chunked(&reg, "large", &data, 1024 * 1024).await;
    assert_eq!(digest, sha256(&data));
    assert_blob(&reg, "large", &data).await;
}

#[tokio::test]
async fn sha512_blob_monolithic() {
    let reg = Registry::start();
    let data = blob_bytes("sha512-mono", 5000);
    let digest = sha512(&data);
    let resp = check_status(post_blob(&reg, "s512", &digest, data.clone()).await, 201).await;
    assert_eq!(must_header(&resp, "docker-content-digest"), digest);
    assert_eq!(
        path_only(&reg, &must_header(&resp, "location")),
        format!("/v2/s512/blobs/{digest}")
    );
    let resp = check_status(get_blob(&reg, "s512", &digest).await, 200).await;
    assert_eq!(must_header(&resp, "docker-content-digest"), digest);
    assert_eq!(must_header(&resp, "content-length"), "5000");
    let body = resp.bytes().await.unwrap();
    assert_eq!(sha512(&body), digest);
}

#[tokio::test]
async fn sha512_blob_chunked() {
    let reg = Registry::start();
    let data = blob_bytes("sha512-chunked", 100_000);
    let digest = sha512(&data);
    let resp = client()
        .post(reg.url("/v2/s512c/blobs/uploads/?digest-algorithm=sha512"))
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    let resp = check_status(resp, 202).await;
    let url = resolve(&reg, &must_header(&resp, "location"));
    let url = patch_ok(&reg, &url, &data[..60_000], Some(0)).await;
    let resp = finish_upload(&url, &digest, Some(&data[60_000..]), Some(60_000)).await;
    let resp = check_status(resp, 201).await;
    assert_eq!(must_header(&resp, "docker-content-digest"), digest);
    let resp = check_status(get_blob(&reg, "s512c", &digest).await, 200).await;
    let body = resp.bytes().await.unwrap();
    assert!(body.as_ref() == data.as_slice());
}

#[tokio::test]
async fn cancel_upload() {
    let reg = Registry::start();
    let url = start_upload(&reg, "cancel").await;
    let url = patch_ok(&reg, &url, b"some bytes", Some(0)).await;
    let resp = client()
        .delete(&url)
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    expect_status(resp, 204).await;
    expect_error(upload_status(&url).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
    expect_error(
        patch_chunk(&url, b"more", Some(10)).await,
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    expect_error(
        finish_upload(&url, &sha256(b"some bytes"), None, None).await,
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    // Nothing was committed.
    expect_error(
        get_blob(&reg, "cancel", &sha256(b"some bytes")).await,
        404,
        "BLOB_UNKNOWN",
    )
    .await;
}

#[tokio::test]
async fn location_query_parameters_are_preserved_when_followed() {
    // Whatever the Location carries (query parameters included), following it verbatim
    // (and appending digest= with the right separator) must work.
    let reg = Registry::start();
    let data = blob_bytes("loc-query", 1234);
    let digest = sha256(&data);
    let url = start_upload(&reg, "locq").await;
    let url = patch_ok(&reg, &url, &data, Some(0)).await;
    let final_url = with_query(&url, "digest", &digest);
    assert_eq!(
        final_url.matches('?').count(),
        1,
        "exactly one query separator in {final_url}"
    );
    let resp = client()
        .put(&final_url)
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    check_status(resp, 201).await;
    assert_blob(&reg, "locq", &data).await;
}

// ---------------------------------------------------------------------------------------------
// Cross-repository mount
// ---------------------------------------------------------------------------------------------

async fn mount(reg: &Registry, repo: &str, digest: &str, from: Option<&str>) -> reqwest::Response {
    let mut url = with_query(
        &reg.url(&format!("/v2/{repo}/blobs/uploads/")),
        "mount",
        digest,
    );
    if let Some(f) = from {
        url = with_query(&url, "from", f);
    }
    client()
        .post(url)
        .header("content-length", "0")
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn mount_from_other_repository() {
    let reg = Registry::start();
    let data = blob_bytes("mount", 2048);
    let digest = push_blob(&reg, "src/repo", &data).await;
    expect_error(
        get_blob(&reg, "dst/repo", &digest).await,
        404,
        "BLOB_UNKNOWN",
    )
    .await;

    let resp = check_status(
        mount(&reg, "dst/repo", &digest, Some("src/repo")).await,
        201,
    )
    .await;
    assert_eq!(
        path_only(&reg, &must_header(&resp, "location")),
        format!("/v2/dst/repo/blobs/{digest}")
    );
    assert_eq!(must_header(&resp, "docker-content-digest"), digest);
    assert_blob(&reg, "dst/repo", &data).await;
    assert_blob(&reg, "src/repo", &data).await;

    // The mounted blob can be used by a manifest in the destination.
    let config = data.clone();
    let manifest = image_manifest(&descriptor(OCI_CONFIG, &config), &[]);
    push_manifest_ok(&reg, "dst/repo", "v1", OCI_MANIFEST, &manifest).await;
}

#[tokio::test]
async fn mount_without_from_finds_blob_anywhere() {
    let reg = Registry::start();
    let data = blob_bytes("mount-anywhere", 3000);
    let digest = push_blob(&reg, "somewhere/else", &data).await;
    let resp = check_status(mount(&reg, "target", &digest, None).await, 201).await;
    assert_eq!(
        path_only(&reg, &must_header(&resp, "location")),
        format!("/v2/target/blobs/{digest}")
    );
    assert_eq!(must_header(&resp, "docker-content-digest"), digest);
    assert_blob(&reg, "target", &data).await;
}

#[tokio::test]
async fn mount_of_unknown_blob_starts_an_upload_session() {
    let reg = Registry::start();
    let data = blob_bytes("mount-missing", 999);
    let digest = sha256(&data);
    // Make sure the source repository exists.
    push_blob(&reg, "src", b"unrelated").await;

    for from in [Some("src"), Some("never/existed"), None] {
        let resp = check_status(mount(&reg, "dst", &digest, from).await, 202).await;
        let location = must_header(&resp, "location");
        let uuid = must_header(&resp, "docker-upload-uuid");
        assert!(location.contains(&uuid));
        assert!(path_only(&reg, &location).starts_with("/v2/dst/blobs/uploads/"));
        // Not mounted.
        expect_error(get_blob(&reg, "dst", &digest).await, 404, "BLOB_UNKNOWN").await;
        // The session is usable.
        let url = resolve(&reg, &location);
        check_status(upload_status(&url).await, 204).await;
        if from.is_none() {
            let resp = finish_upload(&url, &digest, Some(&data), None).await;
            check_status(resp, 201).await;
            assert_blob(&reg, "dst", &data).await;
        }
    }
}

#[tokio::test]
async fn mount_from_repository_that_does_not_link_the_blob_is_not_a_mount() {
    let reg = Registry::start();
    let data = blob_bytes("mount-wrong-from", 500);
    let digest = push_blob(&reg, "holder", &data).await;
    push_blob(&reg, "other", b"other content").await;
    let resp = check_status(mount(&reg, "dst", &digest, Some("other")).await, 202).await;
    must_header(&resp, "location");
    expect_error(get_blob(&reg, "dst", &digest).await, 404, "BLOB_UNKNOWN").await;
}

// ---------------------------------------------------------------------------------------------
// Manifests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn push_and_pull_oci_image_manifest_by_tag() {
    let reg = Registry::start();
    let repo = "library/alpine";
    let img = sample_image("oci-tag");
    push_image_blobs(&reg, repo, &img).await;
    let resp = push_manifest(&reg, repo, "3.19", OCI_MANIFEST, &img.manifest).await;
    let resp = check_status(resp, 201).await;
    assert_eq!(must_header(&resp, "docker-content-digest"), img.digest);
    assert_eq!(
        path_only(&reg, &must_header(&resp, "location")),
        format!("/v2/{repo}/manifests/{}", img.digest)
    );
    assert!(header(&resp, "oci-subject").is_none());

    for reference in ["3.19", img.digest.as_str()] {
        let resp = get_manifest(&reg, repo, reference, Some(OCI_MANIFEST)).await;
        let resp = check_status(resp, 200).await;
        assert_eq!(must_header(&resp, "content-type"), OCI_MANIFEST);
        assert_eq!(must_header(&resp, "docker-content-digest"), img.digest);
        assert_eq!(
            must_header(&resp, "content-length"),
            img.manifest.len().to_string()
        );
        let body = resp.bytes().await.unwrap();
        assert!(body.as_ref() == img.manifest.as_slice());

        let resp = client()
            .head(reg.url(&format!("/v2/{repo}/manifests/{reference}")))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(must_header(&resp, "content-type"), OCI_MANIFEST);
        assert_eq!(must_header(&resp, "docker-content-digest"), img.digest);
        assert_eq!(
            must_header(&resp, "content-length"),
            img.manifest.len().to_string()
        );
        assert!(resp.bytes().await.unwrap().is_empty());
    }

    // Blobs referenced by the manifest are pullable.
    assert_blob(&reg, repo, &img.config).await;
    assert_blob(&reg, repo, &img.layer).await;
}

#[tokio::test]
async fn manifest_bytes_are_stored_exactly() {
    // Unusual but valid JSON formatting must be preserved byte for byte.
    let reg = Registry::start();
    let config = b"{\"os\":\"linux\"}".to_vec();
    push_blob(&reg, "exact", &config).await;
    let manifest = format!(
        "{{\n  \"schemaVersion\" : 2,\n\t\"mediaType\": \"{OCI_MANIFEST}\",\n  \"config\": {{ \"mediaType\": \"{OCI_CONFIG}\", \"size\": {}, \"digest\": \"{}\" }},\n  \"layers\": [ ],\n  \"annotations\": {{\"z\": \"\\u00e9 \\\"quoted\\\"\", \"a\": \"1\"}}\n}}\n",
        config.len(),
        sha256(&config)
    )
    .into_bytes();
    let digest = push_manifest_ok(&reg, "exact", "fmt", OCI_MANIFEST, &manifest).await;
    assert_eq!(digest, sha256(&manifest));
    assert_manifest(&reg, "exact", "fmt", OCI_MANIFEST, &manifest).await;
    assert_manifest(&reg, "exact", &digest, OCI_MANIFEST, &manifest).await;
}

#[tokio::test]
async fn push_manifest_by_digest() {
    let reg = Registry::start();
    let img = push_image_by_digest(&reg, "bydigest", "by-digest").await;
    assert_manifest(&reg, "bydigest", &img.digest, OCI_MANIFEST, &img.manifest).await;
    // No tag was created.
    assert_eq!(list_tags(&reg, "bydigest").await, Vec::<String>::new());
}

#[tokio::test]
async fn push_manifest_by_sha512_digest() {
    // The spec: Docker-Content-Digest "MUST be equal to the client provided digest".
    let reg = Registry::start();
    let repo = "bydigest512";
    let img = sample_image("by-sha512");
    push_image_blobs(&reg, repo, &img).await;
    let d512 = sha512(&img.manifest);
    let resp = push_manifest(&reg, repo, &d512, OCI_MANIFEST, &img.manifest).await;
    let resp = check_status(resp, 201).await;
    assert_eq!(must_header(&resp, "docker-content-digest"), d512);
    assert_eq!(
        path_only(&reg, &must_header(&resp, "location")),
        format!("/v2/{repo}/manifests/{d512}")
    );
    let resp = check_status(get_manifest(&reg, repo, &d512, None).await, 200).await;
    assert_eq!(must_header(&resp, "docker-content-digest"), d512);
    assert_eq!(must_header(&resp, "content-type"), OCI_MANIFEST);
    let body = resp.bytes().await.unwrap();
    assert!(body.as_ref() == img.manifest.as_slice());
}

#[tokio::test]
async fn docker_schema2_manifest_and_manifest_list() {
    let reg = Registry::start();
    let repo = "docker/img";
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer = blob_bytes("docker-layer", 4000);
    push_blob(&reg, repo, config).await;
    push_blob(&reg, repo, &layer).await;
    let manifest = docker_manifest(
        &descriptor(DOCKER_CONFIG, config),
        &[descriptor(DOCKER_LAYER, &layer)],
    );
    let digest = push_manifest_ok(&reg, repo, "amd64", DOCKER_MANIFEST, &manifest).await;
    assert_manifest(&reg, repo, "amd64", DOCKER_MANIFEST, &manifest).await;

    // A second platform, pushed by digest.
    let config2 =
        br#"{"architecture":"arm64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    push_blob(&reg, repo, config2).await;
    let manifest2 = docker_manifest(
        &descriptor(DOCKER_CONFIG, config2),
        &[descriptor(DOCKER_LAYER, &layer)],
    );
    let digest2 = sha256(&manifest2);
    push_manifest_ok(&reg, repo, &digest2, DOCKER_MANIFEST, &manifest2).await;

    let mut d1 = descriptor(DOCKER_MANIFEST, &manifest);
    d1["platform"] = json!({"architecture": "amd64", "os": "linux"});
    let mut d2 = descriptor(DOCKER_MANIFEST, &manifest2);
    d2["platform"] = json!({"architecture": "arm64", "os": "linux"});
    let list = docker_manifest_list(&[d1, d2]);
    let list_digest = push_manifest_ok(&reg, repo, "latest", DOCKER_MANIFEST_LIST, &list).await;
    assert_manifest(&reg, repo, "latest", DOCKER_MANIFEST_LIST, &list).await;
    assert_manifest(&reg, repo, &list_digest, DOCKER_MANIFEST_LIST, &list).await;
    assert_manifest(&reg, repo, &digest, DOCKER_MANIFEST, &manifest).await;
}

#[tokio::test]
async fn oci_image_index() {
    let reg = Registry::start();
    let repo = "multi/arch";
    let a = push_image_by_digest(&reg, repo, "index-a").await;
    let b = push_image(&reg, repo, "b-only", "index-b").await;
    let mut da = a.descriptor();
    da["platform"] = json!({"architecture": "amd64", "os": "linux"});
    let mut db = b.descriptor();
    db["platform"] = json!({"architecture": "arm64", "os": "linux"});
    let index = image_index(&[da, db]);
    let digest = push_manifest_ok(&reg, repo, "latest", OCI_INDEX, &index).await;
    assert_manifest(&reg, repo, "latest", OCI_INDEX, &index).await;
    assert_manifest(&reg, repo, &digest, OCI_INDEX, &index).await;

    // An index can also reference another index.
    let outer = image_index(&[descriptor(OCI_INDEX, &index)]);
    push_manifest_ok(&reg, repo, "nested", OCI_INDEX, &outer).await;
    assert_manifest(&reg, repo, "nested", OCI_INDEX, &outer).await;
}

#[tokio::test]
async fn artifact_manifests() {
    let reg = Registry::start();
    let repo = "artifacts";
    push_blob(&reg, repo, EMPTY_JSON).await;
    let payload = b"sbom payload".to_vec();
    push_blob(&reg, repo, &payload).await;

    // artifactType + empty config.
    let m1 = artifact_manifest(
        Some("application/vnd.example.sbom.v1"),
        &empty_descriptor(),
        &[descriptor("application/vnd.example.sbom.layer", &payload)],
        None,
        None,
    );
    push_manifest_ok(&reg, repo, "sbom", OCI_MANIFEST, &m1).await;
    assert_manifest(&reg, repo, "sbom", OCI_MANIFEST, &m1).await;

    // artifactType, empty config and the empty descriptor as the only layer.
    let m2 = artifact_manifest(
        Some("application/vnd.example.marker"),
        &empty_descriptor(),
        &[empty_descriptor()],
        None,
        Some(&json!({"org.example.k": "v"})),
    );
    push_manifest_ok(&reg, repo, "marker", OCI_MANIFEST, &m2).await;
    assert_manifest(&reg, repo, "marker", OCI_MANIFEST, &m2).await;

    // No artifactType, custom config media type.
    let cfg = b"{\"tool\":\"helm\"}".to_vec();
    push_blob(&reg, repo, &cfg).await;
    let m3 = artifact_manifest(
        None,
        &descriptor("application/vnd.cncf.helm.config.v1+json", &cfg),
        &[descriptor(
            "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
            &payload,
        )],
        None,
        None,
    );
    push_manifest_ok(&reg, repo, "chart", OCI_MANIFEST, &m3).await;
    assert_manifest(&reg, repo, "chart", OCI_MANIFEST, &m3).await;
}

#[tokio::test]
async fn manifest_with_subject_returns_oci_subject_even_if_subject_missing() {
    let reg = Registry::start();
    let repo = "subj";
    push_blob(&reg, repo, EMPTY_JSON).await;
    // The subject does not exist anywhere.
    let subject_content = b"{\"not\":\"pushed\"}";
    let subject = descriptor(OCI_MANIFEST, subject_content);
    let m = artifact_manifest(
        Some("application/vnd.example.sig"),
        &empty_descriptor(),
        &[empty_descriptor()],
        Some(&subject),
        None,
    );
    let digest = sha256(&m);
    let resp = check_status(
        push_manifest(&reg, repo, &digest, OCI_MANIFEST, &m).await,
        201,
    )
    .await;
    assert_eq!(must_header(&resp, "oci-subject"), sha256(subject_content));
    assert_eq!(must_header(&resp, "docker-content-digest"), digest);
    assert_manifest(&reg, repo, &digest, OCI_MANIFEST, &m).await;
}

#[tokio::test]
async fn accept_header_negotiation() {
    let reg = Registry::start();
    let repo = "accept";
    let img = push_image(&reg, repo, "v1", "accept").await;
    let accepts = [
        OCI_MANIFEST.to_string(),
        "*/*".to_string(),
        "application/*".to_string(),
        format!("{DOCKER_MANIFEST}, {OCI_INDEX}, {OCI_MANIFEST}"),
        format!("{DOCKER_MANIFEST};q=0.9, {OCI_MANIFEST};q=0.5"),
    ];
    for accept in accepts {
        let resp = get_manifest(&reg, repo, "v1", Some(&accept)).await;
        let resp = check_status(resp, 200).await;
        assert_eq!(must_header(&resp, "content-type"), OCI_MANIFEST, "{accept}");
        let body = resp.bytes().await.unwrap();
        assert!(body.as_ref() == img.manifest.as_slice());
    }
    // Several Accept header lines.
    let resp = client()
        .get(reg.url(&format!("/v2/{repo}/manifests/v1")))
        .header("accept", DOCKER_MANIFEST)
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    check_status(resp, 200).await;
    // GET by digest ignores a non-matching Accept.
    let resp = get_manifest(&reg, repo, &img.digest, Some(DOCKER_MANIFEST)).await;
    let resp = check_status(resp, 200).await;
    assert_eq!(must_header(&resp, "content-type"), OCI_MANIFEST);
}

#[tokio::test]
async fn retagging_moves_the_tag() {
    let reg = Registry::start();
    let repo = "retag";
    let a = push_image(&reg, repo, "latest", "retag-a").await;
    let b = push_image(&reg, repo, "latest", "retag-b").await;
    assert_ne!(a.digest, b.digest);
    assert_manifest(&reg, repo, "latest", OCI_MANIFEST, &b.manifest).await;
    // The old manifest is still there by digest.
    assert_manifest(&reg, repo, &a.digest, OCI_MANIFEST, &a.manifest).await;
    // Pushing the identical manifest again is fine (idempotent).
    push_manifest_ok(&reg, repo, "latest", OCI_MANIFEST, &b.manifest).await;
    assert_eq!(list_tags(&reg, repo).await, vec!["latest".to_string()]);
}

#[tokio::test]
async fn same_manifest_in_two_repositories() {
    let reg = Registry::start();
    let a = push_image(&reg, "repo/one", "t", "two-repos").await;
    let b = push_image(&reg, "repo/two", "t", "two-repos").await;
    assert_eq!(a.digest, b.digest);
    let resp = client()
        .delete(reg.url(&format!("/v2/repo/one/manifests/{}", a.digest)))
        .send()
        .await
        .unwrap();
    expect_status(resp, 202).await;
    expect_error(
        get_manifest(&reg, "repo/one", &a.digest, None).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    assert_manifest(&reg, "repo/two", "t", OCI_MANIFEST, &b.manifest).await;
}

#[tokio::test]
async fn delete_tag_keeps_manifest() {
    let reg = Registry::start();
    let repo = "deltag";
    let img = push_image(&reg, repo, "v1", "deltag").await;
    push_manifest_ok(&reg, repo, "v2", OCI_MANIFEST, &img.manifest).await;

    let resp = client()
        .delete(reg.url(&format!("/v2/{repo}/manifests/v1")))
        .send()
        .await
        .unwrap();
    expect_status(resp, 202).await;

    expect_error(
        get_manifest(&reg, repo, "v1", None).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    assert_manifest(&reg, repo, &img.digest, OCI_MANIFEST, &img.manifest).await;
    assert_manifest(&reg, repo, "v2", OCI_MANIFEST, &img.manifest).await;
    assert_eq!(list_tags(&reg, repo).await, vec!["v2".to_string()]);
}

#[tokio::test]
async fn delete_manifest_by_digest_removes_its_tags() {
    let reg = Registry::start();
    let repo = "delman";
    let img = push_image(&reg, repo, "a", "delman").await;
    push_manifest_ok(&reg, repo, "b", OCI_MANIFEST, &img.manifest).await;
    let other = push_image(&reg, repo, "c", "delman-other").await;

    let resp = client()
        .delete(reg.url(&format!("/v2/{repo}/manifests/{}", img.digest)))
        .send()
        .await
        .unwrap();
    expect_status(resp, 202).await;

    for reference in ["a", "b", img.digest.as_str()] {
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
        assert_eq!(resp.status().as_u16(), 404, "HEAD {reference}");
    }
    assert_eq!(list_tags(&reg, repo).await, vec!["c".to_string()]);
    assert_manifest(&reg, repo, "c", OCI_MANIFEST, &other.manifest).await;

    // It can be pushed again.
    push_manifest_ok(&reg, repo, "a", OCI_MANIFEST, &img.manifest).await;
    assert_manifest(&reg, repo, "a", OCI_MANIFEST, &img.manifest).await;
}

#[tokio::test]
async fn repository_names_with_separators_and_many_components() {
    let reg = Registry::start();
    let names = [
        "a",
        "a/b/c/d/e/f",
        "my.org/team_x/sub__proj/app-name",
        "x--y/z.z/w_w",
        "0/1/2",
    ];
    for (i, name) in names.iter().enumerate() {
        let img = push_image(&reg, name, "t", &format!("names-{i}")).await;
        assert_manifest(&reg, name, "t", OCI_MANIFEST, &img.manifest).await;
        assert_blob(&reg, name, &img.layer).await;
        assert_eq!(list_tags(&reg, name).await, vec!["t".to_string()]);
    }
    // A name of exactly 255 characters is valid.
    let long = format!("{}/{}", "a".repeat(127), "b".repeat(127));
    assert_eq!(long.len(), 255);
    let img = push_image(&reg, &long, "t", "long-name").await;
    assert_manifest(&reg, &long, "t", OCI_MANIFEST, &img.manifest).await;
}

#[tokio::test]
async fn tag_grammar_edges_are_accepted() {
    let reg = Registry::start();
    let repo = "tags/grammar";
    let img = push_image(&reg, repo, "base", "tag-grammar").await;
    let max = format!(
        "a{}",
        "Z9._-".repeat(26).chars().take(127).collect::<String>()
    );
    assert_eq!(max.len(), 128);
    let tags = [
        "_underscore",
        "A",
        "v1.2.3-rc.1_build",
        "UPPER.lower-09",
        max.as_str(),
    ];
    for t in tags {
        push_manifest_ok(&reg, repo, t, OCI_MANIFEST, &img.manifest).await;
        assert_manifest(&reg, repo, t, OCI_MANIFEST, &img.manifest).await;
    }
    // Mixed case: compare as sets (the spec allows ASCIIbetical or case-insensitive order).
    let mut expected: Vec<String> = tags.iter().map(|s| s.to_string()).collect();
    expected.push("base".into());
    expected.sort();
    let mut got = list_tags(&reg, repo).await;
    got.sort();
    assert_eq!(got, expected);
}

// ---------------------------------------------------------------------------------------------
// Tags list and catalog
// ---------------------------------------------------------------------------------------------

fn next_link(headers: &reqwest::header::HeaderMap) -> Option<String> {
    header_of(headers, "link")
}

#[tokio::test]
async fn tags_list_sorted_and_paginated() {
    let reg = Registry::start();
    let repo = "paged/tags";
    let img = push_image(&reg, repo, "zeta", "tags-list").await;
    // Only lowercase letters and digits, so byte-wise ("ASCIIbetical") and case-insensitive
    // lexical order (both allowed by the spec) agree.
    let others = ["alpha", "beta", "gamma", "1.0", "delta", "2", "alpha-2"];
    for t in others {
        push_manifest_ok(&reg, repo, t, OCI_MANIFEST, &img.manifest).await;
    }
    let mut all: Vec<String> = others.iter().map(|s| s.to_string()).collect();
    all.push("zeta".into());
    all.sort(); // byte-wise ("ASCIIbetical") order
    assert_eq!(list_tags(&reg, repo).await, all);

    // Full list: no Link header.
    let (h, _) = get_json(&reg, &format!("/v2/{repo}/tags/list")).await;
    assert!(next_link(&h).is_none());

    // Page through with n=3, following the Link header.
    let mut collected = Vec::new();
    let mut path = format!("/v2/{repo}/tags/list?n=3");
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages <= 10, "pagination does not terminate");
        let (h, v) = get_json(&reg, &path).await;
        assert_eq!(v["name"], json!(repo));
        let tags = strings(&v["tags"]);
        let start = collected.len();
        assert_eq!(tags, all[start..(start + 3).min(all.len())].to_vec());
        collected.extend(tags);
        match next_link(&h) {
            Some(link) => {
                let last = collected.last().unwrap();
                assert_eq!(
                    link,
                    format!("</v2/{repo}/tags/list?n=3&last={last}>; rel=\"next\"")
                );
                path = link
                    .trim_start_matches('<')
                    .split('>')
                    .next()
                    .unwrap()
                    .to_string();
            }
            None => break,
        }
    }
    assert_eq!(collected, all);
    assert_eq!(pages, 3); // 8 tags, pages of 3, 3, 2

    // n equal to the total: one page without Link.
    let (h, v) = get_json(&reg, &format!("/v2/{repo}/tags/list?n=8")).await;
    assert_eq!(strings(&v["tags"]), all);
    assert!(next_link(&h).is_none());

    // n = 0: empty list, no Link.
    let (h, v) = get_json(&reg, &format!("/v2/{repo}/tags/list?n=0")).await;
    assert_eq!(strings(&v["tags"]), Vec::<String>::new());
    assert!(next_link(&h).is_none());

    // last without n: everything after `last`.
    let (_, v) = get_json(&reg, &format!("/v2/{repo}/tags/list?last=alpha")).await;
    let after: Vec<String> = all
        .iter()
        .filter(|t| t.as_str() > "alpha")
        .cloned()
        .collect();
    assert_eq!(strings(&v["tags"]), after);

    // n and last together.
    let (h, v) = get_json(&reg, &format!("/v2/{repo}/tags/list?n=2&last=beta")).await;
    assert_eq!(strings(&v["tags"]), vec!["delta", "gamma"]);
    assert_eq!(
        next_link(&h).as_deref(),
        Some(format!("</v2/{repo}/tags/list?n=2&last=gamma>; rel=\"next\"").as_str())
    );

    // last = the final tag: empty, no Link.
    let (h, v) = get_json(&reg, &format!("/v2/{repo}/tags/list?n=5&last=zeta")).await;
    assert_eq!(strings(&v["tags"]), Vec::<String>::new());
    assert!(next_link(&h).is_none());
}

#[tokio::test]
async fn tags_list_of_repository_without_tags() {
    let reg = Registry::start();
    let img = push_image(&reg, "notags", "tmp", "notags").await;
    let resp = client()
        .delete(reg.url("/v2/notags/manifests/tmp"))
        .send()
        .await
        .unwrap();
    expect_status(resp, 202).await;
    // The repository still exists (it has a manifest) and lists no tags.
    assert_eq!(list_tags(&reg, "notags").await, Vec::<String>::new());
    assert_manifest(&reg, "notags", &img.digest, OCI_MANIFEST, &img.manifest).await;
}

#[tokio::test]
async fn catalog_sorted_and_paginated() {
    let reg = Registry::start();
    let repos = ["zz", "aa/bb", "aa", "m/n/o", "b-c", "aa/ba"];
    for (i, r) in repos.iter().enumerate() {
        push_image(&reg, r, "t", &format!("catalog-{i}")).await;
    }
    let mut all: Vec<String> = repos.iter().map(|s| s.to_string()).collect();
    all.sort();

    let (h, v) = get_json(&reg, "/v2/_catalog").await;
    assert_eq!(strings(&v["repositories"]), all);
    assert!(next_link(&h).is_none());

    let mut collected = Vec::new();
    let mut path = "/v2/_catalog?n=4".to_string();
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages <= 10, "pagination does not terminate");
        let (h, v) = get_json(&reg, &path).await;
        let page = strings(&v["repositories"]);
        let start = collected.len();
        assert_eq!(page, all[start..(start + 4).min(all.len())].to_vec());
        collected.extend(page);
        match next_link(&h) {
            Some(link) => {
                let last = collected.last().unwrap();
                assert_eq!(
                    link,
                    format!("</v2/_catalog?n=4&last={last}>; rel=\"next\"")
                );
                path = link
                    .trim_start_matches('<')
                    .split('>')
                    .next()
                    .unwrap()
                    .to_string();
            }
            None => break,
        }
    }
    assert_eq!(collected, all);
    assert_eq!(pages, 2);

    let (h, v) = get_json(&reg, "/v2/_catalog?n=0").await;
    assert_eq!(strings(&v["repositories"]), Vec::<String>::new());
    assert!(next_link(&h).is_none());

    let (_, v) = get_json(&reg, "/v2/_catalog?last=aa/bb").await;
    assert_eq!(
        strings(&v["repositories"]),
        vec!["b-c".to_string(), "m/n/o".to_string(), "zz".to_string()]
    );
}

#[tokio::test]
async fn catalog_of_empty_registry() {
    let reg = Registry::start();
    let (h, v) = get_json(&reg, "/v2/_catalog").await;
    assert_eq!(strings(&v["repositories"]), Vec::<String>::new());
    assert!(next_link(&h).is_none());
}

// ---------------------------------------------------------------------------------------------
// Referrers
// ---------------------------------------------------------------------------------------------

async fn get_referrers(
    reg: &Registry,
    repo: &str,
    digest: &str,
    filter: Option<&str>,
) -> reqwest::Response {
    let mut url = reg.url(&format!("/v2/{repo}/referrers/{digest}"));
    if let Some(f) = filter {
        url = with_query(&url, "artifactType", f);
    }
    client().get(url).send().await.unwrap()
}

async fn referrers_ok(
    reg: &Registry,
    repo: &str,
    digest: &str,
    filter: Option<&str>,
) -> (Option<String>, Vec<Value>) {
    let resp = check_status(get_referrers(reg, repo, digest, filter).await, 200).await;
    assert_eq!(must_header(&resp, "content-type"), OCI_INDEX);
    let applied = header(&resp, "oci-filters-applied");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["schemaVersion"], json!(2));
    assert_eq!(v["mediaType"], json!(OCI_INDEX));
    let manifests = v["manifests"]
        .as_array()
        .unwrap_or_else(|| panic!("manifests must be an array: {v}"))
        .clone();
    (applied, manifests)
}

fn by_digest(list: &[Value], digest: &str) -> Value {
    list.iter()
        .find(|d| d["digest"] == json!(digest))
        .cloned()
        .unwrap_or_else(|| panic!("{digest} not in referrers {list:?}"))
}

#[tokio::test]
async fn referrers_list_and_filter() {
    let reg = Registry::start();
    let repo = "refs/app";
    let subject_img = push_image(&reg, repo, "v1", "referrers-subject").await;
    let subject = subject_img.descriptor();
    push_blob(&reg, repo, EMPTY_JSON).await;

    // 1: artifact with artifactType and annotations.
    let sbom_ann = json!({"org.example.sbom.format": "json", "org.opencontainers.image.created": "2024-01-01T00:00:00Z"});
    let sbom = artifact_manifest(
        Some("application/vnd.example.sbom.v1"),
        &empty_descriptor(),
        &[empty_descriptor()],
        Some(&subject),
        Some(&sbom_ann),
    );
    let sbom_d = sha256(&sbom);
    let resp = check_status(
        push_manifest(&reg, repo, &sbom_d, OCI_MANIFEST, &sbom).await,
        201,
    )
    .await;
    assert_eq!(must_header(&resp, "oci-subject"), subject_img.digest);

    // 2: image manifest without artifactType: artifactType is the config media type.
    let sig_cfg = b"{\"sig\":true}".to_vec();
    push_blob(&reg, repo, &sig_cfg).await;
    let sig = artifact_manifest(
        None,
        &descriptor("application/vnd.example.signature.config.v1+json", &sig_cfg),
        &[empty_descriptor()],
        Some(&subject),
        None,
    );
    let sig_d = sha256(&sig);
    check_status(
        push_manifest(&reg, repo, &sig_d, OCI_MANIFEST, &sig).await,
        201,
    )
    .await;

    // 3: an index with a subject and no artifactType: artifactType omitted.
    let idx_ann = json!({"org.example.idx": "1"});
    let idx = image_index_with_subject(&[], &subject, None, Some(&idx_ann));
    let idx_d = sha256(&idx);
    let resp = check_status(
        push_manifest(&reg, repo, &idx_d, OCI_INDEX, &idx).await,
        201,
    )
    .await;
    assert_eq!(must_header(&resp, "oci-subject"), subject_img.digest);

    // 4: a referrer of something else must not show up.
    let other_subject = descriptor(OCI_MANIFEST, b"{\"other\":1}");
    let unrelated = artifact_manifest(
        Some("application/vnd.example.sbom.v1"),
        &empty_descriptor(),
        &[empty_descriptor()],
        Some(&other_subject),
        None,
    );
    check_status(
        push_manifest(&reg, repo, &sha256(&unrelated), OCI_MANIFEST, &unrelated).await,
        201,
    )
    .await;

    let (applied, list) = referrers_ok(&reg, repo, &subject_img.digest, None).await;
    assert!(applied.is_none());
    assert_eq!(list.len(), 3, "{list:?}");
    let d = by_digest(&list, &sbom_d);
    assert_eq!(d["mediaType"], json!(OCI_MANIFEST));
    assert_eq!(d["size"], json!(sbom.len()));
    assert_eq!(d["artifactType"], json!("application/vnd.example.sbom.v1"));
    assert_eq!(d["annotations"], sbom_ann);
    let d = by_digest(&list, &sig_d);
    assert_eq!(d["mediaType"], json!(OCI_MANIFEST));
    assert_eq!(d["size"], json!(sig.len()));
    assert_eq!(
        d["artifactType"],
        json!("application/vnd.example.signature.config.v1+json")
    );
    assert!(d.get("annotations").is_none() || d["annotations"] == json!({}));
    let d = by_digest(&list, &idx_d);
    assert_eq!(d["mediaType"], json!(OCI_INDEX));
    assert_eq!(d["size"], json!(idx.len()));
    assert!(
        d.get("artifactType").is_none(),
        "index without artifactType: {d}"
    );
    assert_eq!(d["annotations"], idx_ann);

    // Filter.
    let (applied, list) = referrers_ok(
        &reg,
        repo,
        &subject_img.digest,
        Some("application/vnd.example.sbom.v1"),
    )
    .await;
    assert_eq!(applied.as_deref(), Some("artifactType"));
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["digest"], json!(sbom_d));

    let (applied, list) = referrers_ok(
        &reg,
        repo,
        &subject_img.digest,
        Some("application/vnd.example.signature.config.v1+json"),
    )
    .await;
    assert_eq!(applied.as_deref(), Some("artifactType"));
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["digest"], json!(sig_d));

    let (applied, list) = referrers_ok(
        &reg,
        repo,
        &subject_img.digest,
        Some("application/vnd.nothing"),
    )
    .await;
    assert_eq!(applied.as_deref(), Some("artifactType"));
    assert!(list.is_empty());

    // Referrers are per repository.
    let (_, list) = referrers_ok(&reg, "refs/other", &subject_img.digest, None).await;
    assert!(list.is_empty());
}

#[tokio::test]
async fn referrers_empty_and_unknown_repository() {
    let reg = Registry::start();
    let img = push_image(&reg, "refs/empty", "v1", "refs-empty").await;
    let (_, list) = referrers_ok(&reg, "refs/empty", &img.digest, None).await;
    assert!(list.is_empty());
    // Unknown digest in known repository.
    let (_, list) = referrers_ok(&reg, "refs/empty", &sha256(b"nothing"), None).await;
    assert!(list.is_empty());
    // Unknown repository: still 200 with an empty list.
    let (_, list) = referrers_ok(&reg, "no/such/repo", &img.digest, None).await;
    assert!(list.is_empty());
}

#[tokio::test]
async fn referrer_pushed_before_subject_and_removed_on_delete() {
    let reg = Registry::start();
    let repo = "refs/order";
    let img = sample_image("refs-order");
    push_blob(&reg, repo, EMPTY_JSON).await;
    let art = artifact_manifest(
        Some("application/vnd.example.att"),
        &empty_descriptor(),
        &[empty_descriptor()],
        Some(&img.descriptor()),
        None,
    );
    let art_d = sha256(&art);
    let resp = check_status(
        push_manifest(&reg, repo, "att", OCI_MANIFEST, &art).await,
        201,
    )
    .await;
    assert_eq!(must_header(&resp, "oci-subject"), img.digest);

    // Before the subject exists.
    let (_, list) = referrers_ok(&reg, repo, &img.digest, None).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["digest"], json!(art_d));

    // After the subject is pushed.
    push_image_blobs(&reg, repo, &img).await;
    push_manifest_ok(&reg, repo, "v1", OCI_MANIFEST, &img.manifest).await;
    let (_, list) = referrers_ok(&reg, repo, &img.digest, None).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["digest"], json!(art_d));
    assert_eq!(
        list[0]["artifactType"],
        json!("application/vnd.example.att")
    );

    // Deleting the referrer removes it from the list.
    let resp = client()
        .delete(reg.url(&format!("/v2/{repo}/manifests/{art_d}")))
        .send()
        .await
        .unwrap();
    expect_status(resp, 202).await;
    let (_, list) = referrers_ok(&reg, repo, &img.digest, None).await;
    assert!(list.is_empty(), "{list:?}");
}

#[tokio::test]
async fn referrers_of_sha512_subject() {
    let reg = Registry::start();
    let repo = "refs/sha512";
    push_blob(&reg, repo, EMPTY_JSON).await;
    let subject_bytes = b"{\"some\":\"manifest\"}";
    let subject = json!({
        "mediaType": OCI_MANIFEST,
        "digest": sha512(subject_bytes),
        "size": subject_bytes.len(),
    });
    let art = artifact_manifest(
        Some("application/vnd.example.x"),
        &empty_descriptor(),
        &[empty_descriptor()],
        Some(&subject),
        None,
    );
    let resp = check_status(
        push_manifest(&reg, repo, &sha256(&art), OCI_MANIFEST, &art).await,
        201,
    )
    .await;
    assert_eq!(must_header(&resp, "oci-subject"), sha512(subject_bytes));
    let (_, list) = referrers_ok(&reg, repo, &sha512(subject_bytes), None).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["digest"], json!(sha256(&art)));
}

// ---------------------------------------------------------------------------------------------
// Graceful shutdown
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_lets_in_flight_upload_finish() {
    let mut reg = Registry::start();
    let data = blob_bytes("graceful", 20 * 8192);
    let digest = sha256(&data);
    let url = start_upload(&reg, "graceful").await;

    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let chunks: Vec<Vec<u8>> = data.chunks(8192).map(|c| c.to_vec()).collect();
    let stream = futures::stream::unfold(
        (chunks.into_iter(), Some(started_tx), 0usize),
        |(mut it, mut tx, i)| async move {
            let next = it.next()?;
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if i == 1 {
                // The first chunk has been handed to the connection: the request is in flight.
                if let Some(tx) = tx.take() {
                    let _ = tx.send(());
                }
            }
            Some((Ok::<_, std::io::Error>(next), (it, tx, i + 1)))
        },
    );
    let patch_url = url.clone();
    let request = tokio::spawn(async move {
        client()
            .patch(&patch_url)
            .header("content-type", "application/octet-stream")
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
    });

    started_rx.await.expect("upload stream started");
    let status = tokio::task::block_in_place(|| reg.terminate()).expect("exit status");

    let resp = request
        .await
        .unwrap()
        .expect("in-flight PATCH must complete despite SIGTERM");
    let resp = check_status(resp, 202).await;
    assert_eq!(must_header(&resp, "range"), format!("0-{}", data.len() - 1));
    assert!(
        status.success(),
        "berth exited with {status:?} after SIGTERM"
    );

    // The data written by the in-flight request was kept: finish the upload after a restart.
    reg.restart();
    let url = reg.url(&path_of(&reg, &must_header(&resp, "location")));
    let resp = check_status(upload_status(&url).await, 204).await;
    assert_eq!(must_header(&resp, "range"), format!("0-{}", data.len() - 1));
    check_status(finish_upload(&url, &digest, None, None).await, 201).await;
    assert_blob(&reg, "graceful", &data).await;
}

#[tokio::test]
async fn manifest_content_type_parameters_are_ignored() {
    // The registry SHOULD ignore parameters on the Content-Type of a manifest PUT, and SHOULD
    // NOT include parameters on the Content-Type it returns.
    let reg = Registry::start();
    let repo = "ctparams";
    let img = sample_image("ct-params");
    push_image_blobs(&reg, repo, &img).await;
    let ct = format!("{OCI_MANIFEST}; charset=utf-8");
    push_manifest_ok(&reg, repo, "v1", &ct, &img.manifest).await;
    assert_manifest(&reg, repo, "v1", OCI_MANIFEST, &img.manifest).await;
}

#[tokio::test]
async fn interrupted_patch_can_be_resumed() {
    // The "resumable push" use case: a PATCH dies half way; the client asks for the upload's
    // status and sends the rest from the offset the registry reports.
    let reg = Registry::start();
    let repo = "resume";
    let data = blob_bytes("resume", 400_000);
    let digest = sha256(&data);
    let url = start_upload(&reg, repo).await;
    let url = patch_ok(&reg, &url, &data[..1_000], Some(0)).await;

    // A streamed PATCH that sends some bytes and then fails on the client side.
    let parts: Vec<Result<Vec<u8>, std::io::Error>> = vec![
        Ok(data[1_000..50_000].to_vec()),
        Ok(data[50_000..120_000].to_vec()),
        Err(std::io::Error::other("client gave up")),
    ];
    let body = reqwest::Body::wrap_stream(futures::stream::iter(parts));
    let result = client()
        .patch(&url)
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await;
    if let Ok(resp) = &result {
        // If the registry answered at all, it must not have accepted a partial chunk as if it
        // were complete (the request body never ended).
        assert_ne!(resp.status().as_u16(), 202, "an aborted PATCH was accepted");
    }

    // Resume from wherever the registry says the upload is. The aborted request may still be
    // winding down on the server, so a 416 means: ask again.
    let mut url = url;
    let mut done = false;
    for _ in 0..20 {
        let resp = check_status(upload_status(&url).await, 204).await;
        let range = must_header(&resp, "range");
        url = resolve(&reg, &must_header(&resp, "location"));
        let end: usize = range
            .strip_prefix("0-")
            .and_then(|e| e.parse().ok())
            .unwrap_or_else(|| panic!("bad Range {range}"));
        let offset = end + 1;
        assert!(
            (1_000..=120_000).contains(&offset),
            "upload offset {offset} after the interrupted PATCH"
        );
        let resp = patch_chunk(&url, &data[offset..], Some(offset as u64)).await;
        match resp.status().as_u16() {
            202 => {
                assert_eq!(must_header(&resp, "range"), format!("0-{}", data.len() - 1));
                url = resolve(&reg, &must_header(&resp, "location"));
                done = true;
                break;
            }
            416 => continue,
            other => panic!(
                "resuming at {offset}: unexpected {other}: {}",
                resp.text().await.unwrap_or_default()
            ),
        }
    }
    assert!(done, "could not resume the upload");
    let resp = check_status(finish_upload(&url, &digest, None, None).await, 201).await;
    assert_eq!(must_header(&resp, "docker-content-digest"), digest);
    assert_blob(&reg, repo, &data).await;
}
