//! A full disk: Berth's data directory (blobs and the SQLite metadata) on a small tmpfs the test
//! mounts. Pushes that do not fit answer 507 `STORAGE_FULL` with a message that says so, leave
//! nothing partial behind (no blob path, no upload part, no temporary file), do not advance an
//! upload session and do not disturb what was stored before; reads and the health check go on;
//! once space is freed the very same pushes succeed and pull back byte-exact.
//!
//! Needs root (to mount). Without it the test fails, unless `BERTH_SKIP_MOUNT_TESTS=1` says to
//! skip it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::oci::*;
use common::{sha256, sha512, Launch, Registry};
use reqwest::{RequestBuilder, Response};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// A tmpfs mounted for the test, unmounted when dropped (also on panic). Declare it before the
/// [`Registry`] that uses it, so the server is killed before the unmount.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` (e.g. `16m`); `None` when it cannot and the environment says to
    /// skip such tests.
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().expect("tempdir");
        let why = match Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
        {
            Ok(out) if out.status.success() => return Some(SmallDisk { dir }),
            Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
            Err(e) => format!("cannot run mount: {e}"),
        };
        if std::env::var("BERTH_SKIP_MOUNT_TESTS").as_deref() == Ok("1") {
            eprintln!("skipped: cannot mount a tmpfs ({why}) and BERTH_SKIP_MOUNT_TESTS=1");
            return None;
        }
        panic!(
            "mounting a tmpfs on {} failed ({why}): this test needs root; run it as root, or set \
             BERTH_SKIP_MOUNT_TESTS=1 to skip it",
            dir.path().display()
        );
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let done = Command::new("umount").arg(self.dir.path()).status();
        if !matches!(done, Ok(s) if s.success()) {
            // Something still holds a file open: detach it now, it goes when released.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// Starts `berth serve` with its data directory (blobs and metadata) at `data`, with a debug
/// listener.
fn start_berth(data: &Path) -> Registry {
    let launch = Launch {
        args: vec![
            "--addr".into(),
            "127.0.0.1:0".into(),
            "--data".into(),
            data.to_string_lossy().into_owned(),
        ],
        env: vec![("REGISTRY_HTTP_DEBUG_ADDR".into(), "127.0.0.1:0".into())],
        ..Launch::default()
    };
    let mut reg = Registry::launch(&launch).unwrap_or_else(|e| panic!("{e}"));
    reg.data = data.to_path_buf();
    reg
}

/// Bytes free on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> u64 {
    let out = Command::new("stat")
        .args(["-f", "-c", "%a %S"])
        .arg(dir)
        .output()
        .expect("run stat");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace().map(|n| n.parse::<u64>().unwrap());
    it.next().unwrap() * it.next().unwrap()
}

/// Fills the filesystem at `dir` with a file, leaving about `leave` bytes free.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0x5au8; 64 * KIB];
    while f.write_all(&chunk).is_ok() {}
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

/// The files of an upload session's data (its parts), by the session URL.
fn upload_files(data: &Path, session: &str) -> Vec<String> {
    let id = session.rsplit('/').next().unwrap();
    files_under(&data.join("berth/uploads").join(id))
}

fn blob_path(data: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').unwrap();
    data.join(format!(
        "docker/registry/v2/blobs/{alg}/{}/{hex}/data",
        &hex[..2]
    ))
}

fn pseudo(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A client with a timeout: a push on a full disk must be answered, never hang.
fn timed_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Sends a request the server may answer before it has read the whole body. The body is chosen
/// only a little larger than the free space, so the client has normally sent it all by then; if
/// the connection still goes down before the answer is read, the same request is sent again
/// (every request here is idempotent when it fails) and the reset is reported.
async fn send(what: &str, request: impl Fn() -> RequestBuilder) -> Response {
    let mut resets = Vec::new();
    loop {
        match request().send().await {
            Ok(resp) => {
                if !resets.is_empty() {
                    eprintln!("{what}: answered after transport errors: {resets:?}");
                }
                return resp;
            }
            Err(e) if e.is_timeout() => panic!("{what}: no answer within the timeout ({e})"),
            Err(e) if resets.len() < 3 => resets.push(format!("{e:?}")),
            Err(e) => panic!("{what}: no answer, transport errors: {resets:?}, then {e:?}"),
        }
    }
}

/// Asserts a 507 `STORAGE_FULL` whose message says the storage is full.
async fn expect_full(resp: Response, what: &str) {
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

/// `POST /v2/<repo>/blobs/uploads/?digest=` with the whole blob.
fn monolithic(reg: &Registry, repo: &str, digest: &str, data: &[u8]) -> RequestBuilder {
    let url = with_query(
        &reg.url(&format!("/v2/{repo}/blobs/uploads/")),
        "digest",
        digest,
    );
    timed_client()
        .post(url)
        .header("content-type", "application/octet-stream")
        .body(data.to_vec())
}

/// `PATCH` a chunk starting at `start`.
fn patch(session: &str, data: &[u8], start: u64) -> RequestBuilder {
    let end = start + data.len() as u64 - 1;
    timed_client()
        .patch(session)
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("{start}-{end}"))
        .body(data.to_vec())
}

/// `PUT <session>?digest=` without a body.
fn finish(session: &str, digest: &str) -> RequestBuilder {
    timed_client()
        .put(with_query(session, "digest", digest))
        .header("content-length", "0")
}

/// The session's `Range` as the upload status reports it.
async fn session_range(session: &str) -> String {
    let resp = check_status(upload_status(session).await, 204).await;
    must_header(&resp, "range")
}

/// Nothing of an upload in progress or of a temporary write is left.
fn assert_no_upload_residue(data: &Path, what: &str) {
    let residue: Vec<String> = files_under(&data.join("berth/uploads"))
        .into_iter()
        .chain(files_under(&data.join("berth/tmp")))
        .collect();
    assert!(
        residue.is_empty(),
        "{what}: partial data left behind: {residue:?}"
    );
}

fn assert_no_temporaries(data: &Path, what: &str) {
    let tmp = files_under(&data.join("berth/tmp"));
    assert!(tmp.is_empty(), "{what}: temporary files left: {tmp:?}");
}

async fn assert_serving(reg: &Registry, what: &str) {
    check_status(
        timed_client().get(reg.url("/v2/")).send().await.unwrap(),
        200,
    )
    .await;
    let health = format!(
        "http://{}/debug/health",
        reg.debug_addr.expect("debug listener")
    );
    let resp = timed_client().get(health).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{what}: /debug/health");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_pushes_on_a_full_disk_are_refused_and_leave_nothing() {
    let Some(disk) = SmallDisk::mount("16m") else {
        return;
    };
    let data = disk.path().join("data");
    let reg = start_berth(&data);
    let repo = "full/disk";

    // What was stored before the disk filled up.
    let img = push_image(&reg, repo, "v1", "before").await;
    let early = pseudo(1, 300 * KIB);
    let early_digest = push_blob(&reg, repo, &early).await;
    // Sessions with acknowledged parts, to be continued or finished on the full disk.
    let resumable = pseudo(2, 2 * MIB);
    let resumable_session = start_upload(&reg, repo).await;
    let resumable_session =
        patch_ok(&reg, &resumable_session, &resumable[..64 * KIB], Some(0)).await;
    // Two parts of 1 MiB each: concatenating them needs more than the space left below.
    let parted = pseudo(3, 2 * MIB);
    let mut parted_sessions = Vec::new();
    for _ in 0..2 {
        let s = start_upload(&reg, repo).await;
        let s = patch_ok(&reg, &s, &parted[..MIB], Some(0)).await;
        let s = patch_ok(&reg, &s, &parted[MIB..], Some(MIB as u64)).await;
        parted_sessions.push(s);
    }
    let (by_sha256, by_sha512) = (parted_sessions[0].clone(), parted_sessions[1].clone());

    // About 1 MiB left; every blob below is a little larger than that.
    let filler = fill(disk.path(), MIB as u64);
    let free = free_bytes(disk.path());
    assert!(
        free <= (MIB + 128 * KIB) as u64,
        "the filler left {free} bytes"
    );
    let mono = pseudo(4, 2 * MIB);
    let mono_digest = sha256(&mono);
    let chunked = pseudo(5, 2 * MIB);
    let chunked_digest = sha256(&chunked);

    // A monolithic push that does not fit.
    let resp = send("monolithic POST", || {
        monolithic(&reg, repo, &mono_digest, &mono)
    })
    .await;
    expect_full(resp, "monolithic POST").await;
    assert!(
        !blob_path(&data, &mono_digest).exists(),
        "no blob at the blob path"
    );
    assert_no_temporaries(&data, "monolithic POST");
    for s in [&resumable_session, &by_sha256, &by_sha512] {
        assert!(
            upload_files(&data, s).len() <= 2,
            "other sessions untouched"
        );
    }
    assert_eq!(
        files_under(&data.join("berth/uploads")).len(),
        1 + 2 + 2,
        "only the acknowledged parts of the open sessions remain"
    );

    // A chunked upload (POST, PATCH) whose chunk does not fit: the session does not advance
    // and the part it was writing is gone.
    let session = start_upload(&reg, repo).await;
    let resp = send("PATCH", || patch(&session, &chunked, 0)).await;
    expect_full(resp, "PATCH").await;
    assert_eq!(session_range(&session).await, "0-0", "session not advanced");
    assert!(
        upload_files(&data, &session).is_empty(),
        "no part of a failed PATCH"
    );
    assert_no_temporaries(&data, "PATCH");
    // The same content as the last chunk of the PUT fails the same way.
    let resp = send("PUT with the last chunk", || {
        timed_client()
            .put(with_query(&session, "digest", &chunked_digest))
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("0-{}", chunked.len() - 1))
            .body(chunked.clone())
    })
    .await;
    expect_full(resp, "PUT with the last chunk").await;
    assert!(!blob_path(&data, &chunked_digest).exists());
    assert_eq!(session_range(&session).await, "0-0", "session not advanced");
    assert!(
        upload_files(&data, &session).is_empty(),
        "no part of a failed PUT"
    );
    assert_no_temporaries(&data, "PUT with the last chunk");

    // A session with an acknowledged part: the chunk that does not fit leaves it as it was.
    let rest = &resumable[64 * KIB..];
    let resp = send("PATCH of a resumed session", || {
        patch(&resumable_session, rest, 64 * KIB as u64)
    })
    .await;
    expect_full(resp, "PATCH of a resumed session").await;
    assert_eq!(
        session_range(&resumable_session).await,
        format!("0-{}", 64 * KIB - 1),
        "a failed PATCH does not advance the session"
    );
    assert_eq!(upload_files(&data, &resumable_session).len(), 1);

    // Finishing sessions whose parts must be concatenated: with the digest computed while the
    // parts streamed in (the kernel concatenates), and with another algorithm (read back and
    // hashed through the operator).
    let parted_sha256 = sha256(&parted);
    let parted_sha512 = sha512(&parted);
    for (s, digest) in [(&by_sha256, &parted_sha256), (&by_sha512, &parted_sha512)] {
        let what = format!("PUT {digest}");
        let resp = send(&what, || finish(s, digest)).await;
        expect_full(resp, &what).await;
        assert!(!blob_path(&data, digest).exists(), "{what}: no blob");
        assert_eq!(
            upload_files(&data, s).len(),
            2,
            "{what}: only the two parts"
        );
        assert_no_temporaries(&data, &what);
        assert_eq!(session_range(s).await, format!("0-{}", 2 * MIB - 1));
    }

    // Reads go on, and everything stored before is intact.
    assert_serving(&reg, "on a full disk").await;
    assert_manifest(&reg, repo, "v1", OCI_MANIFEST, &img.manifest).await;
    assert_blob(&reg, repo, &img.config).await;
    assert_blob(&reg, repo, &img.layer).await;
    assert_blob(&reg, repo, &early).await;
    assert_eq!(early_digest, sha256(&early));

    // Space is freed: the very same pushes succeed and pull back byte-exact.
    std::fs::remove_file(&filler).unwrap();
    let resp = send("monolithic POST", || {
        monolithic(&reg, repo, &mono_digest, &mono)
    })
    .await;
    let resp = check_status(resp, 201).await;
    assert_eq!(
        header(&resp, "docker-content-digest"),
        Some(mono_digest.clone())
    );
    assert_blob(&reg, repo, &mono).await;

    let session = start_upload(&reg, repo).await;
    let resp = check_status(send("PATCH", || patch(&session, &chunked, 0)).await, 202).await;
    let next = resolve(&reg, &must_header(&resp, "location"));
    check_status(send("PUT", || finish(&next, &chunked_digest)).await, 201).await;
    assert_blob(&reg, repo, &chunked).await;

    // The sessions refused on the full disk are still usable.
    let resp = send("PATCH of a resumed session", || {
        patch(&resumable_session, rest, 64 * KIB as u64)
    })
    .await;
    let resp = check_status(resp, 202).await;
    let next = resolve(&reg, &must_header(&resp, "location"));
    check_status(
        send("PUT", || finish(&next, &sha256(&resumable))).await,
        201,
    )
    .await;
    assert_blob(&reg, repo, &resumable).await;
    for (s, digest) in [(&by_sha256, &parted_sha256), (&by_sha512, &parted_sha512)] {
        let resp = send("PUT", || finish(s, digest)).await;
        check_status(resp, 201).await;
        let got = check_status(get_blob(&reg, repo, digest).await, 200)
            .await
            .bytes()
            .await
            .unwrap();
        assert!(
            got.as_ref() == parted.as_slice(),
            "{digest} pulls back byte-exact"
        );
    }
    assert_no_upload_residue(&data, "after space was freed");
    assert_serving(&reg, "after space was freed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_and_metadata_writes_on_a_full_disk_are_refused_and_reads_go_on() {
    let Some(disk) = SmallDisk::mount("16m") else {
        return;
    };
    let data = disk.path().join("data");
    let reg = start_berth(&data);
    let repo = "full/manifests";
    let img = push_image(&reg, repo, "v1", "first").await;
    // The blobs of a second image go in while there is room.
    let second = sample_image("second");
    push_image_blobs(&reg, repo, &second).await;

    // No room at all: the manifest's bytes cannot be stored.
    let filler = fill(disk.path(), 0);
    let resp = push_manifest(&reg, repo, "v2", OCI_MANIFEST, &second.manifest).await;
    expect_full(resp, "manifest PUT").await;
    assert!(
        !blob_path(&data, &second.digest).exists(),
        "no manifest bytes at the blob path"
    );
    assert_no_upload_residue(&data, "manifest PUT");

    // Writes that only touch the database (a new tag on stored manifest bytes, a new upload
    // session, a mount): the database cannot grow either.
    let again = push_manifest(&reg, repo, "again", OCI_MANIFEST, &img.manifest).await;
    expect_full(again, "manifest PUT of stored bytes under a new tag").await;
    expect_full(post_upload(&reg, repo).await, "POST of an upload session").await;
    let mount = timed_client()
        .post(with_query(
            &reg.url("/v2/full/other/blobs/uploads/"),
            "mount",
            &sha256(&img.layer),
        ))
        .query(&[("from", repo)])
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    expect_full(mount, "cross-repository mount").await;

    // The refused tags do not exist; the first image still reads; the server is healthy.
    for tag in ["v2", "again"] {
        let missing = get_manifest(&reg, repo, tag, None).await;
        expect_error(missing, 404, "MANIFEST_UNKNOWN").await;
    }
    assert_manifest(&reg, repo, "v1", OCI_MANIFEST, &img.manifest).await;
    assert_blob(&reg, repo, &img.layer).await;
    assert_eq!(list_tags(&reg, repo).await, vec!["v1".to_string()]);
    assert_serving(&reg, "on a full disk").await;

    // Space is freed: the same writes succeed.
    std::fs::remove_file(&filler).unwrap();
    push_manifest_ok(&reg, repo, "v2", OCI_MANIFEST, &second.manifest).await;
    push_manifest_ok(&reg, repo, "again", OCI_MANIFEST, &img.manifest).await;
    start_upload(&reg, repo).await;
    assert_manifest(&reg, repo, "v2", OCI_MANIFEST, &second.manifest).await;
    assert_manifest(&reg, repo, "again", OCI_MANIFEST, &img.manifest).await;
    assert_eq!(
        list_tags(&reg, repo).await,
        vec!["again".to_string(), "v1".to_string(), "v2".to_string()]
    );
    assert_serving(&reg, "after space was freed").await;
}
