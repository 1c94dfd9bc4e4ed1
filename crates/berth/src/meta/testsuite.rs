//! The behaviour every [`MetaStore`] implementation must have. Each implementation's tests call
//! [`run`] on a fresh, empty store.

use super::{BlobState, Change, Dependency, ManifestRecord, MetaError, MetaStore, Page};
use crate::oci::digest::{Algorithm, Digest};
use crate::oci::name::{Reference, RepoName, Tag};

fn repo(s: &str) -> RepoName {
    s.parse().unwrap()
}
fn tag(s: &str) -> Tag {
    s.parse().unwrap()
}
fn digest(s: &str) -> Digest {
    Digest::of(Algorithm::Sha256, s.as_bytes())
}
fn manifest(name: &str, subject: Option<&str>, artifact_type: &str) -> ManifestRecord {
    ManifestRecord {
        digest: digest(name),
        media_type: crate::oci::manifest::OCI_MANIFEST.into(),
        size: 100,
        artifact_type: Some(artifact_type.into()),
        subject: subject.map(digest),
        annotations: Some(serde_json::json!({"k": name})),
    }
}
fn required(names: &[&str]) -> Vec<Dependency> {
    names
        .iter()
        .map(|n| Dependency {
            digest: digest(n),
            required: true,
        })
        .collect()
}
fn page(after: Option<&str>, limit: Option<u32>) -> Page {
    Page {
        after: after.map(String::from),
        limit,
    }
}

pub async fn run(store: &dyn MetaStore) {
    failures_in_a_group_undo_nothing_else(store).await;
    let a = repo("team/app");
    let b = repo("other");
    assert!(!store.repository_exists(&a).await.unwrap());
    assert_eq!(store.tags(&a, &Page::default()).await.unwrap(), None);

    // Blob links are per repository.
    store
        .apply(vec![
            Change::LinkBlob {
                repo: a.clone(),
                digest: digest("config"),
                size: 10,
                mounted_from: None,
            },
            Change::LinkBlob {
                repo: a.clone(),
                digest: digest("layer"),
                size: 20,
                mounted_from: None,
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        store.blob_in_repo(&a, &digest("layer")).await.unwrap(),
        Some(20)
    );
    assert_eq!(
        store.blob_in_repo(&b, &digest("layer")).await.unwrap(),
        None
    );
    assert_eq!(
        store.repos_with_blob(&digest("layer"), 10).await.unwrap(),
        vec![(a.clone(), 20)]
    );
    // ... and recorded once, globally, in the blob table.
    let layer = store.blob(&digest("layer")).await.unwrap().unwrap();
    assert_eq!((layer.size, layer.state), (20, BlobState::Stored));
    assert!(layer.last_referenced_at >= layer.created_at && layer.created_at > 0);
    assert_eq!(store.blob(&digest("never")).await.unwrap(), None);

    // A manifest whose blob is missing is refused, and the whole transaction with it.
    let err = store
        .apply(vec![
            Change::LinkBlob {
                repo: b.clone(),
                digest: digest("x"),
                size: 1,
                mounted_from: None,
            },
            Change::PutManifest {
                repo: b.clone(),
                manifest: manifest("m0", None, "t"),
                blobs: required(&["layer"]),
                children: vec![],
            },
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, MetaError::MissingReference(d) if d == digest("layer")));
    assert_eq!(store.blob_in_repo(&b, &digest("x")).await.unwrap(), None);
    // The blob table rolls back with the transaction.
    assert_eq!(store.blob(&digest("x")).await.unwrap(), None);

    // Manifest + tag in one transaction; resolvable by tag and digest.
    let m1 = manifest("m1", None, "application/vnd.oci.image.config.v1+json");
    store
        .apply(vec![
            Change::PutManifest {
                repo: a.clone(),
                manifest: m1.clone(),
                blobs: required(&["config", "layer"]),
                children: vec![],
            },
            Change::SetTag {
                repo: a.clone(),
                tag: tag("v1"),
                digest: m1.digest.clone(),
            },
            Change::Enqueue {
                topic: "push".into(),
                payload: serde_json::json!({"tag": "v1"}),
            },
        ])
        .await
        .unwrap();
    let by_tag = store
        .manifest(&a, &Reference::Tag(tag("v1")))
        .await
        .unwrap();
    assert_eq!(by_tag, Some(m1.clone()));
    let by_digest = store
        .manifest(&a, &Reference::Digest(m1.digest.clone()))
        .await
        .unwrap();
    assert_eq!(by_digest, Some(m1.clone()));
    assert_eq!(
        store
            .manifest(&b, &Reference::Tag(tag("v1")))
            .await
            .unwrap(),
        None
    );

    // The manifest itself is in the blob table (its bytes are stored as a blob).
    assert_eq!(store.blob(&m1.digest).await.unwrap().unwrap().size, 100);

    // An index needs its required children in the same repository.
    let child = |d: &Digest, required| Dependency {
        digest: d.clone(),
        required,
    };
    let idx = manifest("idx", None, "idx");
    let err = store
        .apply(vec![Change::PutManifest {
            repo: a.clone(),
            manifest: idx.clone(),
            blobs: vec![],
            children: vec![child(&m1.digest, true), child(&digest("nope"), true)],
        }])
        .await
        .unwrap_err();
    assert!(matches!(err, MetaError::MissingReference(d) if d == digest("nope")));
    store
        .apply(vec![Change::PutManifest {
            repo: a.clone(),
            manifest: idx.clone(),
            blobs: vec![],
            children: vec![child(&m1.digest, true)],
        }])
        .await
        .unwrap();
    // A sparse image: a layer that is not required may be absent.
    let sparse_image = manifest("sparse-image", None, "t");
    let mut blobs = required(&["config"]);
    blobs.push(Dependency {
        digest: digest("absent layer"),
        required: false,
    });
    store
        .apply(vec![Change::PutManifest {
            repo: a.clone(),
            manifest: sparse_image,
            blobs,
            children: vec![],
        }])
        .await
        .unwrap();
    // A sparse index: children that are not required may be absent.
    let sparse = manifest("sparse", None, "idx");
    store
        .apply(vec![Change::PutManifest {
            repo: a.clone(),
            manifest: sparse.clone(),
            blobs: vec![],
            children: vec![child(&m1.digest, true), child(&digest("absent"), false)],
        }])
        .await
        .unwrap();
    assert!(store
        .manifest(&a, &Reference::Digest(sparse.digest.clone()))
        .await
        .unwrap()
        .is_some());
    // A tag may only point at a recorded manifest.
    let err = store
        .apply(vec![Change::SetTag {
            repo: a.clone(),
            tag: tag("x"),
            digest: digest("nope"),
        }])
        .await
        .unwrap_err();
    assert!(matches!(err, MetaError::MissingReference(_)));

    // Tags: sorted, paginated, moved atomically.
    let names = ["b", "a", "c", "A", "v1"];
    for t in names {
        store
            .apply(vec![Change::SetTag {
                repo: a.clone(),
                tag: tag(t),
                digest: idx.digest.clone(),
            }])
            .await
            .unwrap();
    }
    let all = store.tags(&a, &Page::default()).await.unwrap().unwrap();
    assert_eq!(all, vec!["A", "a", "b", "c", "v1"]);
    assert_eq!(
        store
            .tags(&a, &page(Some("a"), Some(2)))
            .await
            .unwrap()
            .unwrap(),
        vec!["b", "c"]
    );
    assert_eq!(
        store
            .manifest(&a, &Reference::Tag(tag("v1")))
            .await
            .unwrap()
            .unwrap()
            .digest,
        idx.digest
    );

    // Catalog lists repositories with manifests only.
    assert_eq!(
        store.repositories(&Page::default()).await.unwrap(),
        vec!["team/app"]
    );
    store
        .apply(vec![Change::PutManifest {
            repo: repo("aaa"),
            manifest: manifest("cfgless", None, "t"),
            blobs: vec![],
            children: vec![],
        }])
        .await
        .unwrap();
    assert_eq!(
        store.repositories(&page(None, Some(1))).await.unwrap(),
        vec!["aaa"]
    );
    assert_eq!(
        store
            .repositories(&page(Some("aaa"), Some(5)))
            .await
            .unwrap(),
        vec!["team/app"]
    );

    // Referrers, with and without an artifactType filter.
    let sig = manifest("sig", Some("m1"), "application/vnd.example.sig");
    let sbom = manifest("sbom", Some("m1"), "application/vnd.example.sbom");
    for m in [&sig, &sbom] {
        store
            .apply(vec![Change::PutManifest {
                repo: a.clone(),
                manifest: m.clone(),
                blobs: vec![],
                children: vec![],
            }])
            .await
            .unwrap();
    }
    let refs = store.referrers(&a, &digest("m1"), None).await.unwrap();
    assert_eq!(refs.len(), 2);
    let only = store
        .referrers(&a, &digest("m1"), Some("application/vnd.example.sbom"))
        .await
        .unwrap();
    assert_eq!(only, vec![sbom.clone()]);
    assert!(store
        .referrers(&b, &digest("m1"), None)
        .await
        .unwrap()
        .is_empty());

    // Deleting a manifest removes its tags; deleting a tag leaves the manifest.
    store
        .apply(vec![Change::DeleteTag {
            repo: a.clone(),
            tag: tag("A"),
        }])
        .await
        .unwrap();
    assert!(store
        .manifest(&a, &Reference::Digest(idx.digest.clone()))
        .await
        .unwrap()
        .is_some());
    store
        .apply(vec![Change::DeleteManifest {
            repo: a.clone(),
            digest: idx.digest.clone(),
        }])
        .await
        .unwrap();
    assert_eq!(
        store.tags(&a, &Page::default()).await.unwrap().unwrap(),
        Vec::<String>::new()
    );
    assert!(matches!(
        store
            .apply(vec![Change::DeleteManifest {
                repo: a.clone(),
                digest: idx.digest.clone()
            }])
            .await,
        Err(MetaError::NotFound(_))
    ));
    assert!(matches!(
        store
            .apply(vec![Change::DeleteTag {
                repo: a.clone(),
                tag: tag("zz")
            }])
            .await,
        Err(MetaError::NotFound(_))
    ));
    store
        .apply(vec![Change::UnlinkBlob {
            repo: a.clone(),
            digest: digest("layer"),
        }])
        .await
        .unwrap();
    assert_eq!(
        store.blob_in_repo(&a, &digest("layer")).await.unwrap(),
        None
    );
    assert!(matches!(
        store
            .apply(vec![Change::UnlinkBlob {
                repo: a.clone(),
                digest: digest("layer")
            }])
            .await,
        Err(MetaError::NotFound(_))
    ));

    // Upload sessions advance only from their current offset.
    store
        .apply(vec![Change::CreateUpload {
            id: "u1".into(),
            repo: b.clone(),
            owner: "alice".into(),
        }])
        .await
        .unwrap();
    let u = store.upload("u1").await.unwrap().unwrap();
    assert_eq!((u.repo.clone(), u.size), (b.clone(), 0));
    assert_eq!(u.owner, "alice", "the session keeps who started it");
    let advance = |from, to, part: &str| Change::AdvanceUpload {
        id: "u1".into(),
        from,
        to,
        part: part.into(),
    };
    store.apply(vec![advance(0, 5, "p0")]).await.unwrap();
    assert!(matches!(
        store.apply(vec![advance(0, 9, "rival")]).await,
        Err(MetaError::Conflict(_))
    ));
    store.apply(vec![advance(5, 7, "p5")]).await.unwrap();
    let u = store.upload("u1").await.unwrap().unwrap();
    assert_eq!(
        (u.size, u.parts),
        (7, vec!["p0".to_string(), "p5".to_string()])
    );
    let idle = store.idle_uploads(i64::MAX, 10).await.unwrap();
    assert_eq!(
        idle.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(),
        vec!["u1"]
    );
    assert!(store.idle_uploads(0, 10).await.unwrap().is_empty());
    store
        .apply(vec![Change::DeleteUpload { id: "u1".into() }])
        .await
        .unwrap();
    assert_eq!(store.upload("u1").await.unwrap(), None);
    assert!(matches!(
        store.apply(vec![advance(7, 8, "p7")]).await,
        Err(MetaError::NotFound(_))
    ));

    // The outbox holds events written with their change, per topic, in order, until each topic
    // acknowledges them.
    for payload in [2, 3] {
        store
            .apply(vec![
                Change::Enqueue {
                    topic: "push".into(),
                    payload: serde_json::json!(payload),
                },
                Change::Enqueue {
                    topic: "other".into(),
                    payload: serde_json::json!(payload),
                },
            ])
            .await
            .unwrap();
    }
    let events = store.outbox_peek("push", 10).await.unwrap();
    let payloads: Vec<_> = events.iter().map(|e| e.payload.clone()).collect();
    assert_eq!(
        payloads,
        vec![
            serde_json::json!({"tag": "v1"}),
            serde_json::json!(2),
            serde_json::json!(3)
        ]
    );
    assert!(events.iter().all(|e| e.topic == "push"));
    assert_eq!(store.outbox_peek("push", 1).await.unwrap().len(), 1);
    store.outbox_ack("push", events[1].seq).await.unwrap();
    let left = store.outbox_peek("push", 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].payload, serde_json::json!(3));
    // Another topic's events are untouched by that acknowledgement.
    assert_eq!(store.outbox_peek("other", 10).await.unwrap().len(), 2);

    collection(store).await;
    settings_and_replication_progress(store).await;
}

/// Leases between two stores sharing one database (two instances).
pub async fn leases(a: &dyn MetaStore, b: &dyn MetaStore) {
    use std::time::Duration;
    let ttl = Duration::from_secs(30);
    let held = a
        .lease_acquire("job", "instance-a", ttl)
        .await
        .unwrap()
        .expect("a free lease is taken");
    assert_eq!(held.holder, "instance-a");
    assert_eq!(b.lease_holder("job").await.unwrap(), Some(held.clone()));
    // Held: nobody else takes it; its holder renews it.
    assert_eq!(
        b.lease_acquire("job", "instance-b", ttl).await.unwrap(),
        None
    );
    assert!(a.lease_renew(&held, ttl).await.unwrap());
    // Other names are independent.
    assert!(b
        .lease_acquire("other job", "instance-b", ttl)
        .await
        .unwrap()
        .is_some());
    // Released: the next taker gets a larger token, and the old holder can no longer renew.
    a.lease_release(&held).await.unwrap();
    assert_eq!(a.lease_holder("job").await.unwrap(), None);
    let taken = b
        .lease_acquire("job", "instance-b", ttl)
        .await
        .unwrap()
        .expect("a released lease is taken");
    assert!(taken.token > held.token);
    assert!(!a.lease_renew(&held, ttl).await.unwrap());
    // Expired: taken over without its holder's help.
    let short = Duration::from_millis(200);
    assert!(b.lease_renew(&taken, short).await.unwrap());
    assert_eq!(
        a.lease_acquire("job", "instance-a", ttl).await.unwrap(),
        None
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(b.lease_holder("job").await.unwrap(), None);
    let again = a
        .lease_acquire("job", "instance-a", ttl)
        .await
        .unwrap()
        .expect("an expired lease is taken");
    assert!(again.token > taken.token);
    assert!(!b.lease_renew(&taken, ttl).await.unwrap());
}

/// Two stores (two instances) on one database, each behind its own cache: what one commits,
/// the other reads on its very next lookup.
pub async fn shared(a: &dyn MetaStore, b: &dyn MetaStore) {
    let r = repo("shared/app");
    let other = repo("shared/other");
    for store in [a, b] {
        assert!(!store.repository_exists(&r).await.unwrap());
    }
    let one = manifest("one", None, "t");
    let two = manifest("two", None, "t");
    for m in [&one, &two] {
        a.apply(vec![Change::PutManifest {
            repo: r.clone(),
            manifest: m.clone(),
            blobs: vec![],
            children: vec![],
        }])
        .await
        .unwrap();
    }
    let latest = Reference::Tag(tag("latest"));
    assert!(b.repository_exists(&r).await.unwrap());
    assert_eq!(b.manifest(&r, &latest).await.unwrap(), None);
    for i in 0..50 {
        let (writer, reader) = if i % 2 == 0 { (a, b) } else { (b, a) };
        let want = if i % 3 == 0 { &one } else { &two };
        writer
            .apply(vec![Change::SetTag {
                repo: r.clone(),
                tag: tag("latest"),
                digest: want.digest.clone(),
            }])
            .await
            .unwrap();
        let got = reader.manifest(&r, &latest).await.unwrap().unwrap();
        assert_eq!(got.digest, want.digest, "read {i} through the other store");
        // A change to another repository leaves this one's entries served, and correct.
        writer
            .apply(vec![Change::LinkBlob {
                repo: other.clone(),
                digest: digest(&format!("blob {i}")),
                size: 1,
                mounted_from: None,
            }])
            .await
            .unwrap();
        assert_eq!(
            reader.manifest(&r, &latest).await.unwrap().unwrap().digest,
            want.digest
        );
        assert_eq!(
            reader
                .blob_in_repo(&other, &digest(&format!("blob {i}")))
                .await
                .unwrap(),
            Some(1)
        );
    }
    let page = Page::default();
    assert_eq!(
        b.tags(&r, &page).await.unwrap(),
        Some(vec!["latest".into()])
    );
    a.apply(vec![Change::DeleteTag {
        repo: r.clone(),
        tag: tag("latest"),
    }])
    .await
    .unwrap();
    assert_eq!(b.tags(&r, &page).await.unwrap(), Some(vec![]));
    assert_eq!(b.manifest(&r, &latest).await.unwrap(), None);
    assert_eq!(
        b.repositories(&page).await.unwrap(),
        vec!["shared/app".to_string()]
    );
    a.apply(vec![Change::PutManifest {
        repo: other.clone(),
        manifest: one.clone(),
        blobs: vec![],
        children: vec![],
    }])
    .await
    .unwrap();
    assert_eq!(
        b.repositories(&page).await.unwrap(),
        vec!["shared/app".to_string(), "shared/other".to_string()]
    );
}

/// Many callers at once (one write group, or several): the ones whose changes fail get their
/// error and leave nothing behind; every other caller's changes commit.
/// A setting is written once (the first writer wins); replication progress adds up, keeping the
/// last error until another one.
async fn settings_and_replication_progress(store: &dyn MetaStore) {
    assert_eq!(store.setting("registry_id").await.unwrap(), None);
    for value in ["first", "second"] {
        store
            .apply(vec![Change::InitSetting {
                key: "registry_id".into(),
                value: value.into(),
            }])
            .await
            .unwrap();
    }
    assert_eq!(
        store.setting("registry_id").await.unwrap().as_deref(),
        Some("first")
    );
    let step = |images, failures, error: Option<&str>, at| {
        Change::ReplicationProgress(crate::meta::ReplicationProgress {
            rule: "to-dr".into(),
            images,
            bytes: images * 100,
            failures,
            error: error.map(str::to_string),
            updated_at: at,
        })
    };
    store.apply(vec![step(2, 0, None, 1)]).await.unwrap();
    store
        .apply(vec![step(0, 1, Some("refused"), 2)])
        .await
        .unwrap();
    store.apply(vec![step(3, 0, None, 3)]).await.unwrap();
    // Copies are kept newest first, per rule; a copy recorded with its outbox entry removes it.
    store
        .apply(vec![Change::Enqueue {
            topic: "replication/to-dr".into(),
            payload: serde_json::json!({"n": 1}),
        }])
        .await
        .unwrap();
    let queued = store.outbox_peek("replication/to-dr", 10).await.unwrap();
    assert_eq!(queued.len(), 1);
    let copy = |rule: &str, reference: &str, at| {
        Change::ReplicationCopy(crate::meta::ReplicationCopy {
            rule: rule.into(),
            action: "push".into(),
            repository: "team/app".into(),
            reference: reference.into(),
            outcome: "copied".into(),
            bytes: 7,
            error: None,
            finished_at: at,
        })
    };
    store
        .apply(vec![
            copy("to-dr", "v1", 1),
            Change::Dequeue {
                topic: "replication/to-dr".into(),
                seq: queued[0].seq,
            },
        ])
        .await
        .unwrap();
    store
        .apply(vec![copy("other", "v1", 2), copy("to-dr", "v2", 3)])
        .await
        .unwrap();
    assert!(store
        .outbox_peek("replication/to-dr", 10)
        .await
        .unwrap()
        .is_empty());
    let mine = store.replication_history(Some("to-dr"), 10).await.unwrap();
    let refs: Vec<&str> = mine.iter().map(|c| c.reference.as_str()).collect();
    assert_eq!(refs, ["v2", "v1"]);
    assert_eq!(store.replication_history(None, 10).await.unwrap().len(), 3);
    assert_eq!(
        store.replication_history(None, 1).await.unwrap()[0].rule,
        "to-dr"
    );
    let p = store.replication_progress().await.unwrap();
    assert_eq!(p.len(), 1);
    assert_eq!(
        (
            p[0].images,
            p[0].bytes,
            p[0].failures,
            p[0].error.as_deref(),
            p[0].updated_at
        ),
        (5, 500, 1, Some("refused"), 3)
    );
}

async fn failures_in_a_group_undo_nothing_else(store: &dyn MetaStore) {
    let r = repo("group/app");
    let calls = (0..24).map(|i| {
        let mut changes = vec![Change::LinkBlob {
            repo: r.clone(),
            digest: digest(&format!("group blob {i}")),
            size: i,
            mounted_from: None,
        }];
        if i % 3 == 0 {
            // A tag on a manifest that does not exist: the whole change list fails.
            changes.push(Change::SetTag {
                repo: r.clone(),
                tag: tag(&format!("t{i}")),
                digest: digest("no such manifest"),
            });
        }
        store.apply(changes)
    });
    let outcomes = futures::future::join_all(calls).await;
    for (i, outcome) in outcomes.into_iter().enumerate() {
        let linked = store
            .blob_in_repo(&r, &digest(&format!("group blob {i}")))
            .await
            .unwrap();
        if i % 3 == 0 {
            assert!(
                matches!(outcome, Err(MetaError::MissingReference(_))),
                "call {i}"
            );
            assert_eq!(linked, None, "call {i} failed, yet its blob is linked");
        } else {
            outcome.unwrap_or_else(|e| panic!("call {i}: {e}"));
            assert_eq!(linked, Some(i as u64), "call {i}");
        }
    }
}

/// The garbage collection protocol: reservations, claims, what a claim spares, forgetting,
/// links no manifest names, manifests nothing keeps, and the history of runs.
async fn collection(store: &dyn MetaStore) {
    let r = repo("gc/app");
    let later = super::rows::now() + 10;
    let listed = |found: Vec<super::BlobRecord>, d: &Digest| found.iter().any(|b| &b.digest == d);
    let reserve = |id: &str, name: &str| Change::ReserveBlob {
        id: id.into(),
        digest: digest(name),
        size: 5,
    };
    let release = |id: &str| Change::ReleaseBlob { id: id.into() };
    let claim = |name: &str, before: i64| Change::ClaimBlob {
        digest: digest(name),
        before,
    };

    // A reserved blob is recorded, and not collectable until released.
    let x = digest("gc x");
    store.apply(vec![reserve("r1", "gc x")]).await.unwrap();
    let rec = store.blob(&x).await.unwrap().unwrap();
    assert_eq!((rec.size, rec.state), (5, BlobState::Stored));
    assert!(!listed(
        store.collectable_blobs(later, None, 1000).await.unwrap(),
        &x
    ));
    store.apply(vec![claim("gc x", later)]).await.unwrap();
    assert_eq!(
        store.blob(&x).await.unwrap().unwrap().state,
        BlobState::Stored
    );
    store.apply(vec![release("r1")]).await.unwrap();
    let err = store.apply(vec![release("r1")]).await.unwrap_err();
    assert!(matches!(err, MetaError::NotFound(_)), "{err:?}");
    // Within the grace period it is kept; past it, collectable and claimed.
    let past = rec.last_referenced_at;
    assert!(!listed(
        store.collectable_blobs(past, None, 1000).await.unwrap(),
        &x
    ));
    store.apply(vec![claim("gc x", past)]).await.unwrap();
    assert_eq!(
        store.blob(&x).await.unwrap().unwrap().state,
        BlobState::Stored
    );
    assert!(listed(
        store.collectable_blobs(later, None, 1000).await.unwrap(),
        &x
    ));
    store.apply(vec![claim("gc x", later)]).await.unwrap();
    assert_eq!(
        store.blob(&x).await.unwrap().unwrap().state,
        BlobState::Deleting
    );
    assert!(listed(store.claimed_blobs(1000).await.unwrap(), &x));
    // Claimed: neither a reservation nor a link of it commits, and neither leaves anything.
    let err = store.apply(vec![reserve("r2", "gc x")]).await.unwrap_err();
    assert!(
        matches!(err, MetaError::BlobCollecting(ref d) if d == &x),
        "{err:?}"
    );
    let link = |repo: &RepoName, name: &str, from: Option<&RepoName>| Change::LinkBlob {
        repo: repo.clone(),
        digest: digest(name),
        size: 5,
        mounted_from: from.cloned(),
    };
    let err = store.apply(vec![link(&r, "gc x", None)]).await.unwrap_err();
    assert!(matches!(err, MetaError::BlobCollecting(_)), "{err:?}");
    assert_eq!(store.blob_in_repo(&r, &x).await.unwrap(), None);
    // Forgotten, it can be reserved (and published) afresh.
    store
        .apply(vec![Change::ForgetBlob { digest: x.clone() }])
        .await
        .unwrap();
    assert_eq!(store.blob(&x).await.unwrap(), None);
    assert!(!listed(store.claimed_blobs(1000).await.unwrap(), &x));
    store
        .apply(vec![reserve("r3", "gc x"), release("r3")])
        .await
        .unwrap();

    // A linked blob is never claimed; a mount needs its source to link it in the same commit.
    let y = digest("gc y");
    store
        .apply(vec![
            reserve("r4", "gc y"),
            link(&r, "gc y", None),
            release("r4"),
        ])
        .await
        .unwrap();
    store.apply(vec![claim("gc y", later)]).await.unwrap();
    assert_eq!(
        store.blob(&y).await.unwrap().unwrap().state,
        BlobState::Stored
    );
    let other = repo("gc/other");
    let err = store
        .apply(vec![link(&other, "gc y", Some(&repo("gc/none")))])
        .await
        .unwrap_err();
    assert!(matches!(err, MetaError::NotFound(_)), "{err:?}");
    store
        .apply(vec![link(&other, "gc y", Some(&r))])
        .await
        .unwrap();

    // Links no manifest names are listed and removed; a manifest's are kept.
    let links = store.unreferenced_links(later, 10_000).await.unwrap();
    assert!(links.contains(&(r.clone(), y.clone())), "{links:?}");
    store
        .apply(vec![Change::PutManifest {
            repo: r.clone(),
            manifest: manifest("gc m", None, "t"),
            blobs: required(&["gc y"]),
            children: vec![],
        }])
        .await
        .unwrap();
    let links = store.unreferenced_links(later, 10_000).await.unwrap();
    assert!(!links.contains(&(r.clone(), y.clone())), "{links:?}");
    assert!(links.contains(&(other.clone(), y.clone())), "{links:?}");
    let unlink = |repo: &RepoName| Change::UnlinkUnreferenced {
        repo: repo.clone(),
        digest: y.clone(),
        before: later,
    };
    store.apply(vec![unlink(&r), unlink(&other)]).await.unwrap();
    assert_eq!(store.blob_in_repo(&r, &y).await.unwrap(), Some(5));
    assert_eq!(store.blob_in_repo(&other, &y).await.unwrap(), None);
    // Named by a manifest, the blob is still not claimed; nor is the manifest's own record.
    store
        .apply(vec![claim("gc y", later), claim("gc m", later)])
        .await
        .unwrap();
    assert_eq!(
        store.blob(&y).await.unwrap().unwrap().state,
        BlobState::Stored
    );
    assert_eq!(
        store.blob(&digest("gc m")).await.unwrap().unwrap().state,
        BlobState::Stored
    );

    // A push of a recorded manifest under a new tag relies on its row, checked in the commit.
    let recorded = |name: &str| Change::RequireManifest {
        repo: r.clone(),
        digest: digest(name),
    };
    store.apply(vec![recorded("gc m")]).await.unwrap();
    let err = store.apply(vec![recorded("gc never")]).await.unwrap_err();
    assert!(matches!(err, MetaError::NotFound(_)), "{err:?}");

    // An untagged manifest is listed until a tag keeps it; the guard refuses a kept one.
    let m = digest("gc m");
    let untagged = store.untagged_manifests(later, None, 10_000).await.unwrap();
    assert!(untagged.contains(&(r.clone(), m.clone())), "{untagged:?}");
    // Listed in pages: each page starts after the last of the one before.
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .untagged_manifests(later, after.as_ref(), 1)
            .await
            .unwrap();
        let Some(last) = page.last().cloned() else {
            break;
        };
        paged.extend(page);
        after = Some(last);
    }
    assert_eq!(paged, untagged);
    let guard = Change::RequireUnkeptManifest {
        repo: r.clone(),
        digest: m.clone(),
        before: later,
    };
    store.apply(vec![guard.clone()]).await.unwrap();
    store
        .apply(vec![Change::SetTag {
            repo: r.clone(),
            tag: tag("v1"),
            digest: m.clone(),
        }])
        .await
        .unwrap();
    let untagged = store.untagged_manifests(later, None, 10_000).await.unwrap();
    assert!(!untagged.contains(&(r.clone(), m.clone())), "{untagged:?}");
    let err = store.apply(vec![guard]).await.unwrap_err();
    assert!(matches!(err, MetaError::Conflict(_)), "{err:?}");

    // Expired reservations protect nothing.
    store.apply(vec![reserve("r5", "gc z")]).await.unwrap();
    store
        .apply(vec![Change::ExpireReservations { before: later }])
        .await
        .unwrap();
    assert!(listed(
        store.collectable_blobs(later, None, 10_000).await.unwrap(),
        &digest("gc z")
    ));

    // The history of runs, newest first.
    for status in ["success", "stopped"] {
        let run = super::CollectionRun {
            started_at: 1,
            finished_at: 2,
            kind: "manual".into(),
            status: status.into(),
            blobs_deleted: 3,
            bytes_freed: 40,
            ..Default::default()
        };
        store
            .apply(vec![Change::RecordCollection(run)])
            .await
            .unwrap();
    }
    // Collections asked for wait, oldest first, until one holder takes each.
    for by in ["alice", "bob"] {
        let request = super::CollectionRequest {
            requested_by: by.into(),
            dry_run: by == "bob",
            ..Default::default()
        };
        store
            .apply(vec![Change::RequestCollection(request)])
            .await
            .unwrap();
    }
    let asked = store.collection_requests(10).await.unwrap();
    assert_eq!(asked.len(), 2);
    assert_eq!(
        (asked[0].requested_by.as_str(), asked[1].dry_run),
        ("alice", true)
    );
    let take = Change::TakeCollectionRequest { id: asked[0].id };
    store.apply(vec![take.clone()]).await.unwrap();
    let err = store.apply(vec![take]).await.unwrap_err();
    assert!(matches!(err, MetaError::NotFound(_)), "{err:?}");
    assert_eq!(store.collection_requests(10).await.unwrap().len(), 1);

    let runs = store.collection_runs(10).await.unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(
        (runs[0].status.as_str(), runs[0].bytes_freed),
        ("stopped", 40)
    );
    assert!(runs[0].id > runs[1].id);

    // Schedules: set, changed (keeping their creation), removed.
    assert_eq!(store.schedule("gc").await.unwrap(), None);
    let set = |cron: &str, at: i64| {
        Change::SetSchedule(crate::meta::ScheduleRecord {
            name: "gc".into(),
            cron: cron.into(),
            parameters: serde_json::json!({"delete_untagged": true}),
            created_at: at,
            updated_at: at,
        })
    };
    store.apply(vec![set("0 0 0 * * *", 1000)]).await.unwrap();
    store.apply(vec![set("0 0 * * * *", 2000)]).await.unwrap();
    let s = store.schedule("gc").await.unwrap().unwrap();
    assert_eq!(
        (s.cron.as_str(), s.created_at, s.updated_at),
        ("0 0 * * * *", 1000, 2000)
    );
    assert_eq!(s.parameters["delete_untagged"], true);
    for _ in 0..2 {
        store
            .apply(vec![Change::RemoveSchedule { name: "gc".into() }])
            .await
            .unwrap();
    }
    assert_eq!(store.schedule("gc").await.unwrap(), None);
}
