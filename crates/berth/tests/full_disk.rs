//! A full disk: Berth's data directory (blobs and the SQLite metadata) on a small tmpfs the test
//! mounts. Pushes that do not fit answer 507 `STORAGE_FULL` with a message that says so, leave
//! nothing partial behind, and do not disturb what was stored before; reads go on; once space is
//! freed the same pushes succeed.
//!
//! Needs root (to mount). Without it the test fails, unless `BERTH_SKIP_MOUNT_TESTS=1` says to
//! skip it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::oci::*;
use common::{sha256, Registry};

/// A tmpfs mounted for the test, unmounted when dropped (also on panic).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        if out.status.success() {
            return Some(SmallDisk { dir });
        }
        let why = String::from_utf8_lossy(&out.stderr).to_string();
        if std::env::var("BERTH_SKIP_MOUNT_TESTS").as_deref() == Ok("1") {
            eprintln!("skipped: cannot mount a tmpfs ({why}) and BERTH_SKIP_MOUNT_TESTS=1");
            return None;
        }
        panic!("mounting a tmpfs failed ({why}): run as root, or set BERTH_SKIP_MOUNT_TESTS=1");
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the filesystem at `dir` with a file, leaving about `leave` bytes free.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0x5au8; 64 << 10];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.flush();
    let len = f.metadata().unwrap().len();
    f.set_len(len.saturating_sub(leave)).unwrap();
    path
}

/// Files under `dir` (recursively), as paths relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

fn blob_path(data: &Path, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    data.join(format!(
        "docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ))
}

fn pseudo(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Asserts a 507 `STORAGE_FULL` whose message says the storage is full.
async fn expect_full(resp: reqwest::Response, what: &str) {
    let errors = expect_error(resp, 507, "STORAGE_FULL").await;
    assert!(
        errors.iter().any(|e| e
            .message
            .as_deref()
            .unwrap_or("")
            .contains("storage is full")),
        "{what}: the message must say the storage is full: {errors:?}"
    );
}

/// Nothing of an upload in progress or of a temporary write is left.
fn assert_no_upload_residue(data: &Path) {
    let residue: Vec<String> = files_under(&data.join("berth/uploads"))
        .into_iter()
        .chain(files_under(&data.join("berth/tmp")))
        .collect();
    assert!(residue.is_empty(), "partial data left behind: {residue:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_pushes_clearly_and_keeps_serving() {
    let Some(disk) = SmallDisk::mount("24m") else {
        return;
    };
    let data = disk.path().join("data");
    let reg = Registry::start_on(&data, &[]);
    let repo = "full/disk";

    // What was stored before the disk filled up.
    let img = push_image(&reg, repo, "v1", "before").await;
    let early = pseudo(1, 300 << 10);
    let early_digest = push_blob(&reg, repo, &early).await;

    let filler = fill(disk.path(), 1 << 20);
    let big = pseudo(2, 4 << 20);
    let big_digest = sha256(&big);

    // A monolithic push that does not fit.
    expect_full(
        post_blob(&reg, repo, &big_digest, big.clone()).await,
        "monolithic push",
    )
    .await;
    assert!(
        !blob_path(&data, &big_digest).exists(),
        "no blob at the blob path"
    );
    assert_no_upload_residue(&data);

    // A chunked upload whose chunk does not fit: the session does not advance.
    let session = start_upload(&reg, repo).await;
    expect_full(patch_chunk(&session, &big, Some(0)).await, "PATCH").await;
    let status = check_status(upload_status(&session).await, 204).await;
    assert_eq!(
        header(&status, "range").as_deref(),
        Some("0-0"),
        "session not advanced"
    );
    assert!(
        files_under(&data.join("berth/tmp")).is_empty(),
        "the failed chunk's temporary file is removed"
    );
    // Finishing with the whole content in the last chunk fails the same way.
    let finish = finish_upload(&session, &big_digest, Some(&big), Some(0)).await;
    expect_full(finish, "PUT with the last chunk").await;
    assert!(!blob_path(&data, &big_digest).exists());

    // Reads go on, and everything stored before is intact.
    check_status(client().get(reg.url("/v2/")).send().await.unwrap(), 200).await;
    assert_manifest(&reg, repo, "v1", OCI_MANIFEST, &img.manifest).await;
    assert_blob(&reg, repo, &img.layer).await;
    assert_blob(&reg, repo, &early).await;

    // Space is freed: the very same pushes succeed and pull back byte-exact.
    std::fs::remove_file(&filler).unwrap();
    let resp = check_status(post_blob(&reg, repo, &big_digest, big.clone()).await, 201).await;
    assert_eq!(
        header(&resp, "docker-content-digest"),
        Some(big_digest.clone())
    );
    assert_blob(&reg, repo, &big).await;
    let other = format!("{repo}-chunked");
    let session = start_upload(&reg, &other).await;
    let next = patch_ok(&reg, &session, &big, Some(0)).await;
    check_status(finish_upload(&next, &big_digest, None, None).await, 201).await;
    assert_blob(&reg, &other, &big).await;
    assert_eq!(early_digest, sha256(&early));
    assert_no_upload_residue(&data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_push_on_a_full_disk_is_refused_and_reads_go_on() {
    let Some(disk) = SmallDisk::mount("16m") else {
        return;
    };
    let data = disk.path().join("data");
    let reg = Registry::start_on(&data, &[]);
    let repo = "full/manifests";
    let img = push_image(&reg, repo, "v1", "first").await;
    // The blobs of a second image go in while there is room.
    let second = sample_image("second");
    push_image_blobs(&reg, repo, &second).await;

    // No room at all: the manifest (its bytes, or the metadata transaction) cannot be stored.
    let filler = fill(disk.path(), 0);
    let resp = push_manifest(&reg, repo, "v2", OCI_MANIFEST, &second.manifest).await;
    expect_full(resp, "manifest PUT").await;
    assert!(
        !blob_path(&data, &second.digest).exists(),
        "no manifest bytes at the blob path"
    );
    assert_no_upload_residue(&data);
    // The refused tag does not exist; the first image still reads.
    let missing = get_manifest(&reg, repo, "v2", None).await;
    expect_error(missing, 404, "MANIFEST_UNKNOWN").await;
    assert_manifest(&reg, repo, "v1", OCI_MANIFEST, &img.manifest).await;
    assert_eq!(list_tags(&reg, repo).await, vec!["v1".to_string()]);

    std::fs::remove_file(&filler).unwrap();
    push_manifest_ok(&reg, repo, "v2", OCI_MANIFEST, &second.manifest).await;
    assert_manifest(&reg, repo, "v2", OCI_MANIFEST, &second.manifest).await;
}
