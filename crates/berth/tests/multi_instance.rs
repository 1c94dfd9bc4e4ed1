//! Two `berth serve` processes sharing one data directory, and concurrent clients.
//!
//! Everything stored through one instance must be visible through the other, an upload session
//! may hop between instances, and concurrent pushes of the same content or the same tag must
//! all succeed and leave a consistent state.

mod common;

use common::oci::*;
use common::pseudo_bytes as blob_bytes;
use common::{sha256, Registry};
use futures::future::join_all;
use serde_json::json;

/// Two instances on the same data directory. Drop order (b, then a) removes the directory last.
fn pair() -> (Registry, Registry) {
    let a = Registry::start();
    let b = Registry::start_on(&a.data, &[]);
    (a, b)
}

/// The digest a tag resolves to on one instance (GET, checking the body hashes to it).
async fn resolve_tag(reg: &Registry, repo: &str, tag: &str) -> String {
    let resp = check_status(get_manifest(reg, repo, tag, None).await, 200).await;
    let d = must_header(&resp, "docker-content-digest");
    let body = resp.bytes().await.unwrap();
    assert_eq!(
        sha256(&body),
        d,
        "body of {repo}:{tag} hashes to its digest"
    );
    d
}

#[tokio::test]
async fn upload_hops_between_instances() {
    let (a, b) = pair();
    let repo = "shared/upload";
    let data = blob_bytes("hop", 90_000);
    let digest = sha256(&data);

    // Start on A.
    let url_a = start_upload(&a, repo).await;
    let url_a = patch_ok(&a, &url_a, &data[..30_000], Some(0)).await;

    // Status and next chunk on B.
    let url_b = on_instance(&b, &url_a);
    let resp = check_status(upload_status(&url_b).await, 204).await;
    assert_eq!(must_header(&resp, "range"), "0-29999");
    let url_b = patch_ok(&b, &url_b, &data[30_000..60_000], Some(30_000)).await;

    // A sees B's chunk.
    let url_a = on_instance(&a, &url_b);
    let resp = check_status(upload_status(&url_a).await, 204).await;
    assert_eq!(must_header(&resp, "range"), "0-59999");

    // Finish on A with the final chunk.
    let resp = finish_upload(&url_a, &digest, Some(&data[60_000..]), Some(60_000)).await;
    let resp = check_status(resp, 201).await;
    assert_eq!(must_header(&resp, "docker-content-digest"), digest);

    assert_blob(&a, repo, &data).await;
    assert_blob(&b, repo, &data).await;

    // The session is gone on both.
    expect_error(upload_status(&url_a).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
    expect_error(
        upload_status(&on_instance(&b, &url_a)).await,
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
}

#[tokio::test]
async fn streamed_upload_alternating_instances() {
    let (a, b) = pair();
    let repo = "shared/streamed";
    let data = blob_bytes("streamed-alt", 64_000);
    let digest = sha256(&data);
    let mut url = start_upload(&b, repo).await;
    for (i, chunk) in data.chunks(10_000).enumerate() {
        let reg = if i % 2 == 0 { &a } else { &b };
        let target = on_instance(reg, &url);
        let resp = check_status(patch_chunk(&target, chunk, None).await, 202).await;
        let end = ((i + 1) * 10_000).min(data.len()) - 1;
        assert_eq!(must_header(&resp, "range"), format!("0-{end}"));
        url = resolve(reg, &must_header(&resp, "location"));
    }
    let url = on_instance(&b, &url);
    check_status(finish_upload(&url, &digest, None, None).await, 201).await;
    assert_blob(&a, repo, &data).await;
    assert_blob(&b, repo, &data).await;
}

#[tokio::test]
async fn stale_offset_on_other_instance_is_rejected() {
    let (a, b) = pair();
    let data = blob_bytes("stale", 2_000);
    let url = start_upload(&a, "shared/stale").await;
    let url = patch_ok(&a, &url, &data[..1_000], Some(0)).await;
    // B must know the session is already at 1000 bytes.
    let url_b = on_instance(&b, &url);
    expect_error(
        patch_chunk(&url_b, &data[..1_000], Some(0)).await,
        416,
        "BLOB_UPLOAD_INVALID",
    )
    .await;
    let url_b = patch_ok(&b, &url_b, &data[1_000..], Some(1_000)).await;
    check_status(
        finish_upload(&on_instance(&a, &url_b), &sha256(&data), None, None).await,
        201,
    )
    .await;
    assert_blob(&b, "shared/stale", &data).await;
}

#[tokio::test]
async fn content_pushed_on_one_instance_is_visible_on_the_other() {
    let (a, b) = pair();
    let repo = "shared/content";
    let img = sample_image("visible");
    push_blob(&a, repo, &img.config).await;
    push_blob_chunked(&b, repo, &img.layer, 100).await;
    push_manifest_ok(&b, repo, "v1", OCI_MANIFEST, &img.manifest).await;

    for reg in [&a, &b] {
        assert_blob(reg, repo, &img.config).await;
        assert_blob(reg, repo, &img.layer).await;
        assert_manifest(reg, repo, "v1", OCI_MANIFEST, &img.manifest).await;
        assert_manifest(reg, repo, &img.digest, OCI_MANIFEST, &img.manifest).await;
        assert_eq!(list_tags(reg, repo).await, vec!["v1".to_string()]);
        let (_, v) = get_json(reg, "/v2/_catalog").await;
        assert_eq!(strings(&v["repositories"]), vec![repo.to_string()]);
    }

    // Referrers pushed on A are listed on B.
    push_blob(&a, repo, EMPTY_JSON).await;
    let art = artifact_manifest(
        Some("application/vnd.example.sig"),
        &empty_descriptor(),
        &[empty_descriptor()],
        Some(&img.descriptor()),
        None,
    );
    let art_d = push_manifest_ok(&a, repo, &sha256(&art), OCI_MANIFEST, &art).await;
    let (_, v) = get_json(&b, &format!("/v2/{repo}/referrers/{}", img.digest)).await;
    let list = v["manifests"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["digest"], json!(art_d));

    // Mount on B from a repository populated on A.
    let resp = client()
        .post(b.url(&format!(
            "/v2/shared/mounted/blobs/uploads/?mount={}&from={repo}",
            sha256(&img.layer)
        )))
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    check_status(resp, 201).await;
    assert_blob(&a, "shared/mounted", &img.layer).await;
}

#[tokio::test]
async fn deletes_are_visible_on_the_other_instance() {
    let (a, b) = pair();
    let repo = "shared/delete";
    let img = push_image(&a, repo, "v1", "shared-delete").await;
    push_manifest_ok(&a, repo, "v2", OCI_MANIFEST, &img.manifest).await;

    // Tag deleted on B.
    let resp = client()
        .delete(b.url(&format!("/v2/{repo}/manifests/v1")))
        .send()
        .await
        .unwrap();
    expect_status(resp, 202).await;
    expect_error(
        get_manifest(&a, repo, "v1", None).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    assert_eq!(list_tags(&a, repo).await, vec!["v2".to_string()]);

    // Manifest deleted on A.
    let resp = client()
        .delete(a.url(&format!("/v2/{repo}/manifests/{}", img.digest)))
        .send()
        .await
        .unwrap();
    expect_status(resp, 202).await;
    for reference in ["v2", img.digest.as_str()] {
        expect_error(
            get_manifest(&b, repo, reference, None).await,
            404,
            "MANIFEST_UNKNOWN",
        )
        .await;
    }

    // Blob deleted on B.
    let layer_d = sha256(&img.layer);
    let resp = client()
        .delete(b.url(&format!("/v2/{repo}/blobs/{layer_d}")))
        .send()
        .await
        .unwrap();
    expect_status(resp, 202).await;
    expect_error(get_blob(&a, repo, &layer_d).await, 404, "BLOB_UNKNOWN").await;

    // Upload cancelled on A is gone on B.
    let url = start_upload(&a, repo).await;
    let resp = client()
        .delete(&url)
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    expect_status(resp, 204).await;
    expect_error(
        upload_status(&on_instance(&b, &url)).await,
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pushes_of_the_same_blob_all_succeed() {
    let (a, b) = pair();
    let repo = "race/blob";
    let data = blob_bytes("same-blob", 400_000);
    let digest = sha256(&data);

    // Monolithic, 8 clients, both instances.
    let results = join_all((0..8).map(|i| {
        let reg = if i % 2 == 0 { &a } else { &b };
        let data = data.clone();
        let digest = digest.clone();
        async move { post_blob(reg, repo, &digest, data).await }
    }))
    .await;
    for resp in results {
        let resp = check_status(resp, 201).await;
        assert_eq!(must_header(&resp, "docker-content-digest"), digest);
    }
    assert_blob(&a, repo, &data).await;
    assert_blob(&b, repo, &data).await;

    // Chunked, 6 sessions, same content, into another repository, both instances.
    let repo2 = "race/blob-chunked";
    let results = join_all((0..6).map(|i| {
        let reg = if i % 2 == 0 { &a } else { &b };
        let data = data.clone();
        async move { push_blob_chunked(reg, repo2, &data, 64 * 1024).await }
    }))
    .await;
    for d in results {
        assert_eq!(d, digest);
    }
    assert_blob(&a, repo2, &data).await;
    assert_blob(&b, repo2, &data).await;
    // The first repository is unaffected.
    assert_blob(&b, repo, &data).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_puts_of_the_same_tag() {
    let (a, b) = pair();
    let repo = "race/tag";
    let x = sample_image("race-x");
    let y = sample_image("race-y");
    push_image_blobs(&a, repo, &x).await;
    push_image_blobs(&b, repo, &y).await;
    let candidates = [x.digest.clone(), y.digest.clone()];

    for round in 0..10 {
        let tag = format!("round-{round}");
        // Rounds alternate between cross-instance and same-instance races.
        let (r1, r2) = match round % 3 {
            0 => (&a, &b),
            1 => (&a, &a),
            _ => (&b, &b),
        };
        let (p1, p2) = tokio::join!(
            push_manifest(r1, repo, &tag, OCI_MANIFEST, &x.manifest),
            push_manifest(r2, repo, &tag, OCI_MANIFEST, &y.manifest),
        );
        let p1 = check_status(p1, 201).await;
        let p2 = check_status(p2, 201).await;
        assert_eq!(must_header(&p1, "docker-content-digest"), x.digest);
        assert_eq!(must_header(&p2, "docker-content-digest"), y.digest);

        let on_a = resolve_tag(&a, repo, &tag).await;
        let on_b = resolve_tag(&b, repo, &tag).await;
        assert!(candidates.contains(&on_a), "{tag} resolves to {on_a}");
        assert_eq!(
            on_a, on_b,
            "{tag} resolves differently on the two instances"
        );
        // Stable on re-read.
        assert_eq!(resolve_tag(&a, repo, &tag).await, on_a);
    }
    // Both manifests exist by digest; every tag is listed exactly once, on both instances.
    for reg in [&a, &b] {
        assert_manifest(reg, repo, &x.digest, OCI_MANIFEST, &x.manifest).await;
        assert_manifest(reg, repo, &y.digest, OCI_MANIFEST, &y.manifest).await;
        let tags = list_tags(reg, repo).await;
        let mut expected: Vec<String> = (0..10).map(|r| format!("round-{r}")).collect();
        expected.sort();
        assert_eq!(tags, expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_chunked_uploads() {
    let (a, b) = pair();
    let repo = "race/many";
    let blobs: Vec<Vec<u8>> = (0..24)
        .map(|i| blob_bytes(&format!("many-{i}"), 50_000 + i * 3_001))
        .collect();

    let results = join_all(blobs.iter().enumerate().map(|(i, data)| {
        let (a, b) = (&a, &b);
        async move {
            let digest = sha256(data);
            // Start on one instance, alternate chunks between the two, finish on the other.
            let first = if i % 2 == 0 { a } else { b };
            let second = if i % 2 == 0 { b } else { a };
            let mut url = start_upload(first, repo).await;
            let mut off = 0usize;
            let mut n = 0;
            while off < data.len() {
                let end = (off + 16_384).min(data.len());
                let reg = if n % 2 == 0 { first } else { second };
                url = patch_ok(
                    reg,
                    &on_instance(reg, &url),
                    &data[off..end],
                    Some(off as u64),
                )
                .await;
                off = end;
                n += 1;
            }
            let resp = finish_upload(&on_instance(second, &url), &digest, None, None).await;
            let resp = check_status(resp, 201).await;
            assert_eq!(must_header(&resp, "docker-content-digest"), digest);
            digest
        }
    }))
    .await;

    for (data, d) in blobs.iter().zip(&results) {
        assert_eq!(&sha256(data), d);
        assert_blob(&a, repo, data).await;
        assert_blob(&b, repo, data).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_tag_pushes_to_one_repository() {
    let (a, b) = pair();
    let repo = "race/tags";
    let img = sample_image("many-tags");
    push_image_blobs(&a, repo, &img).await;

    let results =
        join_all(
            (0..20).map(|i| {
                let reg = if i % 2 == 0 { &a } else { &b };
                let manifest = img.manifest.clone();
                async move {
                    push_manifest(reg, repo, &format!("t{i:02}"), OCI_MANIFEST, &manifest).await
                }
            }),
        )
        .await;
    for resp in results {
        check_status(resp, 201).await;
    }
    let mut expected: Vec<String> = (0..20).map(|i| format!("t{i:02}")).collect();
    expected.sort();
    for reg in [&a, &b] {
        assert_eq!(list_tags(reg, repo).await, expected);
        let (_, v) = get_json(reg, "/v2/_catalog").await;
        assert_eq!(strings(&v["repositories"]), vec![repo.to_string()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_chunks_for_the_same_offset() {
    // Two clients send different chunks for the same offset of one session (through different
    // instances, or the same one). At most one may be appended; the loser gets 416 (its start no longer matches
    // the session size), and the session holds exactly the winner's bytes.
    let (a, b) = pair();
    let repo = "race/session";
    for round in 0..6 {
        let x = blob_bytes(&format!("session-x-{round}"), 200_000);
        let y = blob_bytes(&format!("session-y-{round}"), 200_000);
        let url = start_upload(&a, repo).await;
        // Even rounds: through both instances; odd rounds: both through A (a client retrying a
        // PATCH whose first attempt is still in flight).
        let second = if round % 2 == 0 { &b } else { &a };
        let (url_a, url_b) = (on_instance(&a, &url), on_instance(second, &url));
        let (rx, ry) = tokio::join!(
            patch_chunk(&url_a, &x, Some(0)),
            patch_chunk(&url_b, &y, Some(0)),
        );
        let (sx, sy) = (rx.status().as_u16(), ry.status().as_u16());
        // The loser normally gets 416 BLOB_UPLOAD_INVALID (its start no longer matches); any
        // other client error that leaves the session intact is acceptable too.
        let loser_ok = |st: u16| st == 416 || st == 409 || st == 423;
        let winner = match (sx, sy) {
            (202, s) if loser_ok(s) => {
                if s == 416 {
                    expect_error(ry, 416, "BLOB_UPLOAD_INVALID").await;
                }
                &x
            }
            (s, 202) if loser_ok(s) => {
                if s == 416 {
                    expect_error(rx, 416, "BLOB_UPLOAD_INVALID").await;
                }
                &y
            }
            other => panic!("round {round}: expected one 202 and one rejection, got {other:?}"),
        };
        let resp = check_status(upload_status(&on_instance(&b, &url)).await, 204).await;
        assert_eq!(must_header(&resp, "range"), "0-199999");
        let loser = if std::ptr::eq(winner, &x) { &y } else { &x };
        let resp = finish_upload(&on_instance(&b, &url), &sha256(winner), None, None).await;
        let st = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert_eq!(
            st,
            201,
            "round {round}: finishing with the digest of the acknowledged (202) chunk {} failed; \
             the rejected (416) chunk is {}: {text}",
            sha256(winner),
            sha256(loser)
        );
        for reg in [&a, &b] {
            let resp = check_status(get_blob(reg, repo, &sha256(winner)).await, 200).await;
            let body = resp.bytes().await.unwrap();
            assert!(
                body.as_ref() == winner.as_slice(),
                "round {round}: blob {} is served with content hashing to {} ({} bytes); \
                 the rejected chunk hashes to {}",
                sha256(winner),
                sha256(&body),
                body.len(),
                sha256(loser)
            );
        }
        expect_error(
            get_blob(&a, repo, &sha256(loser)).await,
            404,
            "BLOB_UNKNOWN",
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_finishes_of_one_session() {
    // Two PUTs closing the same session at once (e.g. a retried request), via both instances:
    // each gets 201 or 404 BLOB_UPLOAD_UNKNOWN, at least one 201, and the blob is intact.
    let (a, b) = pair();
    let repo = "race/finish";
    for round in 0..6 {
        let data = blob_bytes(&format!("finish-{round}"), 300_000);
        let digest = sha256(&data);
        let url = start_upload(&a, repo).await;
        let url = patch_ok(&a, &url, &data, Some(0)).await;
        let second = if round % 2 == 0 { &b } else { &a };
        let (u1, u2) = (on_instance(&a, &url), on_instance(second, &url));
        let (r1, r2) = tokio::join!(
            finish_upload(&u1, &digest, None, None),
            finish_upload(&u2, &digest, None, None),
        );
        let mut created = 0;
        for r in [r1, r2] {
            match r.status().as_u16() {
                201 => {
                    created += 1;
                    assert_eq!(must_header(&r, "docker-content-digest"), digest);
                }
                404 => {
                    expect_error(r, 404, "BLOB_UPLOAD_UNKNOWN").await;
                }
                other => panic!(
                    "round {round}: concurrent finish got {other}: {}",
                    r.text().await.unwrap_or_default()
                ),
            }
        }
        assert!(created >= 1, "round {round}: no finish succeeded");
        assert_blob(&a, repo, &data).await;
        assert_blob(&b, repo, &data).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_manifest_delete_and_tag_push_stay_consistent() {
    // DELETE of a manifest racing a PUT of the same manifest under another tag. Whichever order
    // they take effect in, no tag may be left pointing at a missing manifest, and both
    // instances must agree.
    let (a, b) = pair();
    let repo = "race/delete";
    let img = sample_image("race-delete");
    push_image_blobs(&a, repo, &img).await;
    for round in 0..8 {
        push_manifest_ok(&a, repo, "old", OCI_MANIFEST, &img.manifest).await;
        let new_tag = format!("new-{round}");
        let (del_on, put_on) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let del_url = del_on.url(&format!("/v2/{repo}/manifests/{}", img.digest));
        let (del, put) = tokio::join!(
            async { client().delete(del_url).send().await.unwrap() },
            push_manifest(put_on, repo, &new_tag, OCI_MANIFEST, &img.manifest),
        );
        assert_eq!(del.status().as_u16(), 202, "round {round}: DELETE");
        assert_eq!(put.status().as_u16(), 201, "round {round}: PUT");

        for reg in [&a, &b] {
            let tags = list_tags(reg, repo).await;
            assert!(
                !tags.contains(&"old".to_string()),
                "round {round}: {tags:?}"
            );
            let by_digest = get_manifest(reg, repo, &img.digest, None).await;
            match by_digest.status().as_u16() {
                200 => {
                    // PUT won: the new tag resolves to it.
                    assert_eq!(tags, vec![new_tag.clone()], "round {round}");
                    assert_manifest(reg, repo, &new_tag, OCI_MANIFEST, &img.manifest).await;
                }
                404 => {
                    // DELETE won: no tag may remain.
                    assert!(tags.is_empty(), "round {round}: dangling tags {tags:?}");
                    expect_error(
                        get_manifest(reg, repo, &new_tag, None).await,
                        404,
                        "MANIFEST_UNKNOWN",
                    )
                    .await;
                }
                other => panic!("round {round}: GET by digest: {other}"),
            }
        }
        let on_a = get_manifest(&a, repo, &img.digest, None).await.status();
        let on_b = get_manifest(&b, repo, &img.digest, None).await.status();
        assert_eq!(on_a, on_b, "round {round}: instances disagree");
        // Clean up for the next round.
        if on_a.as_u16() == 200 {
            let resp = client()
                .delete(a.url(&format!("/v2/{repo}/manifests/{}", img.digest)))
                .send()
                .await
                .unwrap();
            expect_status(resp, 202).await;
        }
    }
}

/// Three processes started at the same moment on a new data directory: all of them bring up the
/// one SQLite file (its migrations applied once) and serve it.
#[tokio::test]
async fn instances_started_at_once_on_a_new_directory_all_serve() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let starts: Vec<_> = (0..3)
        .map(|_| {
            let data = data.clone();
            std::thread::spawn(move || Registry::start_on(&data, &[]))
        })
        .collect();
    let instances: Vec<Registry> = starts.into_iter().map(|t| t.join().unwrap()).collect();
    let content = blob_bytes("at once", 1000);
    push_blob(&instances[0], "at/once", &content).await;
    for reg in &instances {
        assert_blob(reg, "at/once", &content).await;
    }
}
