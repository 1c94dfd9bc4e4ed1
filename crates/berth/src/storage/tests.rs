//! The one test suite every backend passes, at two levels: `contract`, the driver boundary
//! itself, and `suite`, the blob store over it. Both run against every driver; the store's suite
//! runs also against drivers with capabilities masked off, so that each way the store publishes
//! (a rename, a copy, a concatenation inside the backend, a writer) is taken by some run.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use ::opendal::{services, Operator};

use super::*;

fn body(chunks: &[&[u8]]) -> impl Stream<Item = io::Result<Bytes>> + Send + Unpin {
    futures::stream::iter(
        chunks
            .iter()
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    )
}

async fn collect(s: ByteStream) -> io::Result<Vec<u8>> {
    let chunks: Vec<Bytes> = s.try_collect().await?;
    Ok(chunks.concat())
}

// ---- backends ---------------------------------------------------------------------------------

/// A driver under test, with the directories it lives in.
struct Backend {
    driver: Arc<dyn Driver>,
    root: Option<PathBuf>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Backend {
    fn store(&self) -> BlobStore {
        BlobStore::new(self.driver.clone())
    }
}

fn fs() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    Backend {
        driver: Arc::new(FsDriver::open(dir.path()).unwrap()),
        root: Some(dir.path().to_path_buf()),
        _dirs: vec![dir],
    }
}

fn memory() -> Backend {
    Backend {
        driver: Arc::new(OpenDalDriver::memory().unwrap()),
        root: None,
        _dirs: Vec::new(),
    }
}

/// OpenDAL's own fs service: an operator that renames and copies, which memory does not, so the
/// OpenDAL driver's paths for them run too.
fn opendal_fs() -> Backend {
    let (root, tmp) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let builder = services::Fs::default()
        .root(&root.path().to_string_lossy())
        .atomic_write_dir(&tmp.path().to_string_lossy());
    let driver = OpenDalDriver::new(Operator::new(builder).unwrap());
    assert!(driver.capabilities().rename && driver.capabilities().copy);
    Backend {
        driver: Arc::new(driver),
        root: Some(root.path().to_path_buf()),
        _dirs: vec![root, tmp],
    }
}

/// `backend` with some capabilities hidden by `hide`.
fn masked(backend: Backend, hide: impl FnOnce(&mut Capabilities)) -> Backend {
    let mut caps = backend.driver.capabilities();
    hide(&mut caps);
    Backend {
        driver: Arc::new(Masked {
            inner: backend.driver,
            caps,
        }),
        ..backend
    }
}

/// A driver with some of another's capabilities hidden, refusing the operations it hides: the
/// store's other publishing paths run on a real backend, and a store that called an operation
/// not declared would fail.
struct Masked {
    inner: Arc<dyn Driver>,
    caps: Capabilities,
}

#[async_trait::async_trait]
impl Driver for Masked {
    fn capabilities(&self) -> Capabilities {
        self.caps
    }
    async fn stat(&self, path: &str) -> driver::Result<Option<u64>> {
        self.inner.stat(path).await
    }
    async fn read(&self, path: &str, range: Range<u64>) -> driver::Result<ByteStream> {
        self.inner.read(path, range).await
    }
    async fn read_all(&self, path: &str) -> driver::Result<Bytes> {
        self.inner.read_all(path).await
    }
    async fn writer(
        &self,
        path: &str,
        durability: Durability,
    ) -> driver::Result<Box<dyn DriverWriter>> {
        self.inner.writer(path, durability).await
    }
    async fn sync(&self, path: &str) -> driver::Result<()> {
        self.inner.sync(path).await
    }
    async fn rename(&self, from: &str, to: &str) -> driver::Result<()> {
        if !self.caps.rename {
            return Err(DriverError::unsupported("rename"));
        }
        self.inner.rename(from, to).await
    }
    async fn copy(&self, from: &str, to: &str) -> driver::Result<()> {
        if !self.caps.copy {
            return Err(DriverError::unsupported("copy"));
        }
        self.inner.copy(from, to).await
    }
    async fn concat(&self, sources: &[String], to: &str) -> driver::Result<()> {
        if !self.caps.concat {
            return Err(DriverError::unsupported("concat"));
        }
        self.inner.concat(sources, to).await
    }
    async fn delete(&self, path: &str) -> driver::Result<()> {
        self.inner.delete(path).await
    }
    async fn delete_all(&self, dir: &str) -> driver::Result<()> {
        self.inner.delete_all(dir).await
    }
    async fn list(&self, dir: &str) -> driver::Result<Vec<Entry>> {
        self.inner.list(dir).await
    }
    async fn presign_read(
        &self,
        path: &str,
        expires: Duration,
    ) -> driver::Result<Option<url::Url>> {
        if !self.caps.presign_read {
            return Ok(None);
        }
        self.inner.presign_read(path, expires).await
    }
    async fn purge_temporaries(&self, cutoff: SystemTime) -> driver::Result<usize> {
        self.inner.purge_temporaries(cutoff).await
    }
}

// ---- the driver contract ----------------------------------------------------------------------

async fn put(driver: &dyn Driver, path: &str, data: &[u8]) {
    let mut w = driver.writer(path, Durability::Durable).await.unwrap();
    w.write(Bytes::copy_from_slice(data)).await.unwrap();
    w.commit().await.unwrap();
}

async fn read(driver: &dyn Driver, path: &str, range: Range<u64>) -> Vec<u8> {
    collect(driver.read(path, range).await.unwrap())
        .await
        .unwrap()
}

async fn listed(driver: &dyn Driver, dir: &str) -> Vec<(String, u64)> {
    let mut got: Vec<(String, u64)> = driver
        .list(dir)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.path, e.size))
        .collect();
    got.sort();
    got
}

fn owned(entries: &[(&str, u64)]) -> Vec<(String, u64)> {
    entries.iter().map(|(p, s)| (p.to_string(), *s)).collect()
}

async fn contract(driver: &dyn Driver) {
    let caps = driver.capabilities();

    // Missing objects: absent for stat, delete and list; an error of its kind for reads.
    assert_eq!(driver.stat("c/missing").await.unwrap(), None);
    let read_missing = driver.read("c/missing", 0..0).await.err().map(|e| e.kind());
    assert_eq!(read_missing, Some(ErrorKind::NotFound));
    let read_all_missing = driver.read_all("c/missing").await.unwrap_err().kind();
    assert_eq!(read_all_missing, ErrorKind::NotFound);
    driver.delete("c/missing").await.unwrap();
    driver.delete_all("c/missing/").await.unwrap();
    assert!(listed(driver, "c/missing/").await.is_empty());

    // A commit makes the object appear whole; nothing of it is visible before.
    for durability in [Durability::Durable, Durability::Deferred] {
        let mut w = driver.writer("c/obj", durability).await.unwrap();
        w.write(Bytes::from_static(b"hello ")).await.unwrap();
        w.write(Bytes::from_static(b"world")).await.unwrap();
        assert_eq!(driver.stat("c/obj").await.unwrap(), None, "{durability:?}");
        assert!(listed(driver, "c/").await.is_empty(), "{durability:?}");
        w.commit().await.unwrap();
        driver.sync("c/obj").await.unwrap();
        assert_eq!(driver.stat("c/obj").await.unwrap(), Some(11));
        assert_eq!(driver.read_all("c/obj").await.unwrap(), &b"hello world"[..]);
        driver.delete("c/obj").await.unwrap();
        assert_eq!(driver.stat("c/obj").await.unwrap(), None);
    }

    // A commit replaces what was at the path, whole; an abort or a dropped writer leaves what
    // was there, or nothing.
    put(driver, "c/obj", b"the first version, longer").await;
    put(driver, "c/obj", b"second").await;
    assert_eq!(driver.read_all("c/obj").await.unwrap(), &b"second"[..]);
    let mut w = driver.writer("c/obj", Durability::Durable).await.unwrap();
    w.write(Bytes::from_static(b"never")).await.unwrap();
    w.abort().await.unwrap();
    assert_eq!(driver.read_all("c/obj").await.unwrap(), &b"second"[..]);
    let mut w = driver.writer("c/new", Durability::Durable).await.unwrap();
    w.write(Bytes::from_static(b"never")).await.unwrap();
    w.abort().await.unwrap();
    let mut w = driver
        .writer("c/dropped", Durability::Deferred)
        .await
        .unwrap();
    w.write(Bytes::from_static(b"never")).await.unwrap();
    drop(w);
    assert_eq!(driver.stat("c/new").await.unwrap(), None);
    assert_eq!(driver.stat("c/dropped").await.unwrap(), None);
    assert_eq!(listed(driver, "c/").await, owned(&[("c/obj", 6)]));

    // An empty object.
    let w = driver.writer("c/empty", Durability::Durable).await.unwrap();
    w.commit().await.unwrap();
    assert_eq!(driver.stat("c/empty").await.unwrap(), Some(0));
    assert_eq!(read(driver, "c/empty", 0..0).await, b"");

    // Ranged reads at the edges, and past them.
    for (range, want) in [
        (0..0, &b""[..]),
        (0..6, &b"second"[..]),
        (0..1, &b"s"[..]),
        (5..6, &b"d"[..]),
        (6..6, &b""[..]),
        (2..4, &b"co"[..]),
    ] {
        assert_eq!(
            read(driver, "c/obj", range.clone()).await,
            want,
            "{range:?}"
        );
    }
    for range in [0..7, 6..7, 7..9] {
        let failed = match driver.read("c/obj", range.clone()).await {
            Err(_) => true,
            Ok(s) => collect(s).await.is_err(),
        };
        assert!(failed, "{range:?} is past the end of a 6-byte object");
    }

    // A large object written in chunks of several sizes (below, around and above the write
    // buffer), read whole and across chunk boundaries.
    let big: Vec<u8> = (0..(4 << 20) + 3).map(|i| (i % 251) as u8).collect();
    let mut w = driver.writer("c/big", Durability::Durable).await.unwrap();
    let cuts = [0, 1000, (1 << 20) + 1000, 3 << 20, big.len()];
    for piece in cuts.windows(2) {
        w.write(Bytes::copy_from_slice(&big[piece[0]..piece[1]]))
            .await
            .unwrap();
    }
    w.commit().await.unwrap();
    let len = big.len() as u64;
    assert_eq!(driver.stat("c/big").await.unwrap(), Some(len));
    assert!(read(driver, "c/big", 0..len).await == big, "whole");
    for (start, end) in [
        ((2 << 20) - 5, (2 << 20) + 5),
        ((1 << 20) - 1, (1 << 20) + 1),
        (1 << 20, len),
        (len - 1, len),
    ] {
        let got = read(driver, "c/big", start..end).await;
        assert!(got == big[start as usize..end as usize], "{start}..{end}");
    }

    // A listing holds every object below a directory, recursively, and nothing beside it.
    put(driver, "l/a", b"1").await;
    put(driver, "l/b/c", b"22").await;
    put(driver, "l/b/d", b"333").await;
    put(driver, "lx", b"1").await;
    put(driver, "l2/e", b"1").await;
    let below_l = owned(&[("l/a", 1), ("l/b/c", 2), ("l/b/d", 3)]);
    assert_eq!(listed(driver, "l/").await, below_l);
    assert_eq!(listed(driver, "l").await, below_l);
    assert_eq!(
        listed(driver, "l/b/").await,
        owned(&[("l/b/c", 2), ("l/b/d", 3)])
    );

    // Deleting one object, then a directory: what is beside them stays.
    driver.delete("l/a").await.unwrap();
    assert_eq!(driver.stat("l/a").await.unwrap(), None);
    driver.delete_all("l/b/").await.unwrap();
    assert!(listed(driver, "l/").await.is_empty());
    assert_eq!(driver.stat("lx").await.unwrap(), Some(1));
    assert_eq!(driver.stat("l2/e").await.unwrap(), Some(1));

    // The declared operations.
    if caps.rename {
        put(driver, "r/from", b"moved").await;
        put(driver, "r/old", b"replaced").await;
        driver.rename("r/from", "r/to/deeper").await.unwrap();
        assert_eq!(driver.stat("r/from").await.unwrap(), None);
        assert_eq!(driver.read_all("r/to/deeper").await.unwrap(), &b"moved"[..]);
        driver.rename("r/to/deeper", "r/old").await.unwrap();
        assert_eq!(driver.read_all("r/old").await.unwrap(), &b"moved"[..]);
        let e = driver.rename("r/missing", "r/x").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        assert_eq!(driver.stat("r/x").await.unwrap(), None);
    }
    if caps.copy {
        driver.copy("c/obj", "k/copy").await.unwrap();
        assert_eq!(driver.read_all("k/copy").await.unwrap(), &b"second"[..]);
        assert_eq!(driver.read_all("c/obj").await.unwrap(), &b"second"[..]);
        let e = driver.copy("k/missing", "k/x").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        assert_eq!(driver.stat("k/x").await.unwrap(), None);
    }
    if caps.concat {
        // The first source as small as the backend allows for a source that is not the last.
        let first = pattern(caps.concat_min_part.max(2) as usize, 6);
        put(driver, "n/1", &first).await;
        put(driver, "n/2", b"").await;
        put(driver, "n/3", b"cd").await;
        let sources: Vec<String> = ["n/1", "n/2", "n/3"].map(String::from).into();
        driver.concat(&sources, "n/all/x").await.unwrap();
        let all = driver.read_all("n/all/x").await.unwrap();
        assert_eq!(all.len(), first.len() + 2);
        assert!(all[..first.len()] == first[..] && &all[first.len()..] == b"cd");
        let missing = ["n/1".to_string(), "n/missing".to_string()];
        let e = driver.concat(&missing, "n/y").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        assert_eq!(driver.stat("n/y").await.unwrap(), None);
    }
    let url = driver
        .presign_read("c/obj", Duration::from_secs(60))
        .await
        .unwrap();
    if caps.presign_read {
        // A URL that anyone holding it can read the object from, with no credentials.
        let url = url.expect("a backend that presigns hands out a URL");
        let resp = reqwest::get(url.clone()).await.unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        assert_eq!(resp.bytes().await.unwrap(), &b"second"[..]);
        let resp = reqwest::Client::new()
            .get(url)
            .header("Range", "bytes=1-3")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 206);
        assert_eq!(resp.bytes().await.unwrap(), &b"eco"[..]);
    } else {
        assert_eq!(url, None);
    }
}

#[tokio::test]
async fn driver_contract_fs() {
    contract(&*fs().driver).await;
}

#[tokio::test]
async fn driver_contract_memory() {
    contract(&*memory().driver).await;
}

#[tokio::test]
async fn driver_contract_opendal_fs() {
    contract(&*opendal_fs().driver).await;
}

#[test]
fn io_errors_are_classified() {
    let cases = [
        (io::ErrorKind::NotFound.into(), ErrorKind::NotFound),
        (io::ErrorKind::PermissionDenied.into(), ErrorKind::Auth),
        (io::ErrorKind::AlreadyExists.into(), ErrorKind::Precondition),
        (io::Error::from_raw_os_error(28), ErrorKind::Full),
        (io::Error::from_raw_os_error(122), ErrorKind::Full),
        (io::ErrorKind::TimedOut.into(), ErrorKind::Unavailable),
        (io::Error::from_raw_os_error(20), ErrorKind::Other),
    ];
    for (e, kind) in cases {
        let shown = format!("{e:?}");
        assert_eq!(DriverError::io(e, "doing").kind(), kind, "{shown}");
    }
}

#[test]
fn driver_errors_become_the_store_errors_callers_match() {
    let e = |kind| StorageError::from(DriverError::new(kind, "x"));
    assert!(matches!(e(ErrorKind::NotFound), StorageError::NotFound(_)));
    assert!(matches!(e(ErrorKind::Full), StorageError::Full(_)));
    for kind in [
        ErrorKind::Precondition,
        ErrorKind::Throttled,
        ErrorKind::Unavailable,
        ErrorKind::Auth,
        ErrorKind::Other,
    ] {
        assert!(matches!(e(kind), StorageError::Backend(b) if b.kind() == kind));
    }
}

// ---- the blob store ---------------------------------------------------------------------------

async fn suite(store: BlobStore) {
    // Single part, digest computed while streaming.
    let data = b"hello world";
    let d = Digest::of(Algorithm::Sha256, data);
    let mut h = Algorithm::Sha256.hasher();
    let p0 = new_part_name(0);
    let n = store
        .write_part("u1", &p0, body(&[b"hello ", b"world"]), Some(&mut h))
        .await
        .unwrap();
    assert_eq!(n, 11);
    assert_eq!(store.stat_blob(&d).await.unwrap(), None);
    store
        .commit_upload("u1", &[p0], 11, &d, Some(h.finish()))
        .await
        .unwrap();
    store.delete_upload("u1").await.unwrap();
    assert_eq!(store.stat_blob(&d).await.unwrap(), Some(11));
    let got = collect(store.read_blob(&d, 6..11).await.unwrap()).await;
    assert_eq!(got.unwrap(), b"world");
    let past_end = match store.read_blob(&d, 6..12).await {
        Err(_) => true,
        Ok(s) => collect(s).await.is_err(),
    };
    assert!(past_end, "a range past the end of a blob fails");

    // Several parts, sha512, with a competing part for the same offset that does not count.
    let d512 = Digest::of(Algorithm::Sha512, b"abcdef");
    let (a, b, rival) = (new_part_name(0), new_part_name(2), new_part_name(2));
    store
        .write_part("u2", &a, body(&[b"ab"]), None)
        .await
        .unwrap();
    store
        .write_part("u2", &b, body(&[b"cd", b"ef"]), None)
        .await
        .unwrap();
    store
        .write_part("u2", &rival, body(&[b"XXXX"]), None)
        .await
        .unwrap();
    let parts = [a, b];
    let wrong = Digest::of(Algorithm::Sha512, b"abcdeg");
    assert!(matches!(
        store.commit_upload("u2", &parts, 6, &wrong, None).await,
        Err(StorageError::DigestMismatch { .. })
    ));
    assert_eq!(store.stat_blob(&wrong).await.unwrap(), None);
    store
        .commit_upload("u2", &parts, 6, &d512, None)
        .await
        .unwrap();
    assert_eq!(store.read_blob_bytes(&d512).await.unwrap(), &b"abcdef"[..]);

    // Several parts whose digest was computed while they streamed in.
    let dk = Digest::of(Algorithm::Sha256, b"xyz!");
    let (a, b) = (new_part_name(0), new_part_name(1));
    store
        .write_part("u6", &a, body(&[b"x"]), None)
        .await
        .unwrap();
    store
        .write_part("u6", &b, body(&[b"yz!"]), None)
        .await
        .unwrap();
    let parts = [a, b];
    let known_wrong = Digest::of(Algorithm::Sha256, b"xyz?");
    assert!(matches!(
        store
            .commit_upload("u6", &parts, 4, &dk, Some(known_wrong))
            .await,
        Err(StorageError::DigestMismatch { .. })
    ));
    assert_eq!(store.stat_blob(&dk).await.unwrap(), None);
    store
        .commit_upload("u6", &parts, 4, &dk, Some(dk.clone()))
        .await
        .unwrap();
    assert_eq!(store.read_blob_bytes(&dk).await.unwrap(), &b"xyz!"[..]);

    // One part without a digest (read back and hashed), and with one of another algorithm (not
    // taken for the expected one): a wrong digest publishes nothing and keeps the part.
    let d7 = Digest::of(Algorithm::Sha512, b"single");
    let p = new_part_name(0);
    store
        .write_part("u7", &p, body(&[b"sin", b"gle"]), None)
        .await
        .unwrap();
    let sha256 = Some(Digest::of(Algorithm::Sha256, b"single"));
    let wrong7 = Digest::of(Algorithm::Sha512, b"singlE");
    assert!(matches!(
        store
            .commit_upload("u7", std::slice::from_ref(&p), 6, &wrong7, sha256.clone())
            .await,
        Err(StorageError::DigestMismatch { .. })
    ));
    assert_eq!(store.stat_blob(&wrong7).await.unwrap(), None);
    store
        .commit_upload("u7", std::slice::from_ref(&p), 6, &d7, sha256)
        .await
        .unwrap();
    assert_eq!(store.read_blob_bytes(&d7).await.unwrap(), &b"single"[..]);

    // A blob stored already: the same bytes again are fine, other bytes claiming its digest are
    // refused (with and without a digest computed on the way), and it stays as it was.
    for (upload, bytes, ok) in [("u8", &b"single"[..], true), ("u9", &b"double"[..], false)] {
        let p = new_part_name(0);
        store
            .write_part(upload, &p, body(&[bytes]), None)
            .await
            .unwrap();
        let committed = store
            .commit_upload(upload, std::slice::from_ref(&p), 6, &d7, None)
            .await;
        assert_eq!(committed.is_ok(), ok, "{upload}: {committed:?}");
        if !ok {
            assert!(matches!(
                committed,
                Err(StorageError::DigestMismatch { .. })
            ));
            let known = Digest::of(Algorithm::Sha512, bytes);
            assert!(matches!(
                store
                    .commit_upload(upload, std::slice::from_ref(&p), 6, &d7, Some(known))
                    .await,
                Err(StorageError::DigestMismatch { .. })
            ));
        }
        store.delete_upload(upload).await.unwrap();
    }
    let (a, b) = (new_part_name(0), new_part_name(3));
    store
        .write_part("u10", &a, body(&[b"dou"]), None)
        .await
        .unwrap();
    store
        .write_part("u10", &b, body(&[b"ble"]), None)
        .await
        .unwrap();
    assert!(matches!(
        store.commit_upload("u10", &[a, b], 6, &d7, None).await,
        Err(StorageError::DigestMismatch { .. })
    ));
    assert_eq!(store.read_blob_bytes(&d7).await.unwrap(), &b"single"[..]);
    assert_eq!(store.verify_blob(&d7).await.unwrap(), Some(6));

    // Missing parts and wrong totals are detected, not papered over.
    let p = new_part_name(0);
    store
        .write_part("u3", &p, body(&[b"ab"]), None)
        .await
        .unwrap();
    assert!(matches!(
        store
            .commit_upload("u3", std::slice::from_ref(&p), 3, &d, None)
            .await,
        Err(StorageError::Incomplete(_))
    ));
    assert!(matches!(
        store
            .commit_upload("u3", &[p.clone(), new_part_name(2)], 2, &d, None)
            .await,
        Err(StorageError::PartMissing(_))
    ));
    // A part removed (never acknowledged) is missing; removing it again is no error.
    store.delete_part("u3", &p).await.unwrap();
    store.delete_part("u3", &p).await.unwrap();
    assert!(matches!(
        store
            .commit_upload("u3", std::slice::from_ref(&p), 2, &d, None)
            .await,
        Err(StorageError::PartMissing(_))
    ));

    // Empty blob, and a failing body leaves no part behind.
    let empty = Digest::of(Algorithm::Sha256, b"");
    store
        .commit_upload("u4", &[], 0, &empty, None)
        .await
        .unwrap();
    assert_eq!(store.stat_blob(&empty).await.unwrap(), Some(0));
    assert_eq!(
        collect(store.read_blob(&empty, 0..0).await.unwrap())
            .await
            .unwrap(),
        b""
    );
    let failing = futures::stream::iter(vec![
        Ok(Bytes::from_static(b"x")),
        Err(io::Error::other("client went away")),
    ]);
    let p = new_part_name(0);
    assert!(matches!(
        store.write_part("u5", &p, failing, None).await,
        Err(StorageError::Body(_))
    ));
    assert!(matches!(
        store.commit_upload("u5", &[p], 1, &d, None).await,
        Err(StorageError::PartMissing(_))
    ));

    // Manifest-style whole writes are idempotent.
    let m = Digest::of(Algorithm::Sha256, b"{}");
    store
        .put_blob_bytes(&m, Bytes::from_static(b"{}"))
        .await
        .unwrap();
    store
        .put_blob_bytes(&m, Bytes::from_static(b"{}"))
        .await
        .unwrap();
    assert_eq!(store.read_blob_bytes(&m).await.unwrap(), &b"{}"[..]);
    assert!(matches!(
        store.read_blob_bytes(&wrong).await,
        Err(StorageError::NotFound(_))
    ));
    assert!(matches!(
        store.read_blob(&wrong, 0..0).await.err(),
        Some(StorageError::NotFound(_))
    ));

    // Verification of stored blobs: intact, missing, corrupt.
    assert_eq!(store.verify_blob(&m).await.unwrap(), Some(2));
    assert_eq!(store.verify_blob(&wrong).await.unwrap(), None);
    let corrupt = Digest::of(Algorithm::Sha256, b"the real content");
    store
        .write_file(&blob_path(&corrupt), Bytes::from_static(b"other content"))
        .await
        .unwrap();
    assert!(matches!(
        store.verify_blob(&corrupt).await,
        Err(StorageError::DigestMismatch { .. })
    ));

    // Files that are not blobs: listed sorted, below a directory only.
    store
        .write_file("f/b/c", Bytes::from_static(b"c"))
        .await
        .unwrap();
    store
        .write_file("f/a", Bytes::from_static(b"a"))
        .await
        .unwrap();
    store
        .write_file("fx", Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(store.list_files("f/").await.unwrap(), ["f/a", "f/b/c"]);
    assert_eq!(
        store.list_files("none/").await.unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        store.read_file("f/b/c").await.unwrap(),
        Some(Bytes::from_static(b"c"))
    );
    assert_eq!(store.read_file("f/missing").await.unwrap(), None);

    // Upload data by age, gone once the upload is deleted.
    let p = new_part_name(0);
    store
        .write_part("u11", &p, body(&[b"kept"]), None)
        .await
        .unwrap();
    let later = SystemTime::now() + Duration::from_secs(3600);
    let old = store.upload_data_older_than(later).await.unwrap();
    for kept in ["u2", "u6", "u10", "u11"] {
        assert!(old.iter().any(|id| id == kept), "{kept} in {old:?}");
    }
    for gone in ["u1", "u4", "u5", "u8", "u9"] {
        assert!(!old.iter().any(|id| id == gone), "{gone} in {old:?}");
    }
    let young = store
        .upload_data_older_than(SystemTime::UNIX_EPOCH)
        .await
        .unwrap();
    assert_eq!(young, Vec::<String>::new());
    for n in 1..=11 {
        store.delete_upload(&format!("u{n}")).await.unwrap();
    }
    assert_eq!(
        store.upload_data_older_than(later).await.unwrap(),
        Vec::<String>::new()
    );
    // Every write of the suite cleaned up after itself.
    assert_eq!(store.remove_stale_temporaries(later).await.unwrap(), 0);
}

#[tokio::test]
async fn store_suite_fs() {
    let backend = fs();
    suite(backend.store()).await;
    // Published blobs use Distribution's layout.
    let d = Digest::of(Algorithm::Sha256, b"hello world");
    let root = backend.root.as_ref().unwrap();
    assert!(root.join(blob_path(&d)).is_file());
    // Deleted uploads leave no directories behind.
    let uploads: Vec<_> = std::fs::read_dir(root.join(UPLOADS)).unwrap().collect();
    assert_eq!(uploads.len(), 0, "{uploads:?}");
}

#[tokio::test]
async fn store_suite_memory() {
    suite(memory().store()).await;
}

#[tokio::test]
async fn store_suite_opendal_fs() {
    suite(opendal_fs().store()).await;
}

#[tokio::test]
async fn store_suite_publishing_by_copy() {
    suite(masked(fs(), |c| c.rename = false).store()).await;
    suite(masked(opendal_fs(), |c| c.rename = false).store()).await;
}

#[tokio::test]
async fn store_suite_publishing_through_a_writer() {
    let writer_only = |c: &mut Capabilities| {
        c.rename = false;
        c.copy = false;
        c.concat = false;
    };
    suite(masked(fs(), writer_only).store()).await;
}

// ---- object stores ----------------------------------------------------------------------------

#[path = "../../tests/common/garage.rs"]
mod garage;

/// The `storage.s3` section for a bucket of a Garage cluster (as a user writes it for one).
fn s3_config(g: &garage::Garage, bucket: &str) -> crate::config::S3 {
    crate::config::S3 {
        accesskey: Some(g.access_key().to_string()),
        secretkey: Some(g.secret_key().to_string()),
        region: Some(g.region().to_string()),
        regionendpoint: Some(g.endpoint()),
        bucket: Some(bucket.to_string()),
        rootdirectory: Some("/registry".to_string()),
        chunksize: Some(5 << 20),
        ..Default::default()
    }
}

/// A driver on a bucket of `g`, opened from the configuration as the server opens it.
async fn s3(g: &garage::Garage, bucket: &str) -> Arc<dyn Driver> {
    let storage = crate::config::Storage {
        s3: Some(s3_config(g, bucket)),
        ..Default::default()
    };
    let backend = open(&storage).await.unwrap();
    assert_eq!(backend.name, "s3");
    assert!(backend.warnings.is_empty(), "{:?}", backend.warnings);
    backend.driver
}

/// Bytes that differ from one offset to the next, so a misplaced part shows.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64 * 31 + seed as u64 * 7 + (i as u64 >> 12)) as u8)
        .collect()
}

#[tokio::test]
async fn driver_contract_s3() {
    let g = garage::Garage::start();
    let driver = s3(&g, g.bucket()).await;
    let caps = driver.capabilities();
    assert!(
        caps.copy && caps.streamed_writes && caps.presign_read,
        "{caps:?}"
    );
    assert!(caps.concat && caps.concat_min_part == 5 << 20, "{caps:?}");
    assert!(!caps.rename, "{caps:?}");
    contract(&*driver).await;
}

#[tokio::test]
async fn store_suite_s3() {
    let g = garage::Garage::start();
    let driver = s3(&g, g.bucket()).await;
    suite(BlobStore::new(driver.clone())).await;
    // The store's objects are below the configured root, at Distribution's paths.
    let d = Digest::of(Algorithm::Sha256, b"hello world");
    let storage = crate::config::Storage {
        s3: Some(crate::config::S3 {
            rootdirectory: None,
            ..s3_config(&g, g.bucket())
        }),
        ..Default::default()
    };
    let unrooted = open(&storage).await.unwrap().driver;
    assert!(unrooted
        .stat(&format!("registry/{}", blob_path(&d)))
        .await
        .unwrap()
        .is_some());
    // The suite's writes left no multipart upload open.
    assert_eq!(
        driver
            .purge_temporaries(SystemTime::now() + Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn s3_large_objects_go_in_parts_copy_in_parts_and_compose() {
    let g = garage::Garage::start();
    let bucket = g.create_bucket("large");
    let mut config = s3_config(&g, &bucket);
    // Server-side copies in parts of 5 MiB: the multipart copy runs on a 12 MiB object.
    config.multipartcopychunksize = Some(5 << 20);
    let storage = crate::config::Storage {
        s3: Some(config),
        ..Default::default()
    };
    let driver = open(&storage).await.unwrap().driver;
    let data = pattern(12 << 20, 3);
    let mut w = driver.writer("big/a", Durability::Durable).await.unwrap();
    // Chunks of an odd size: parts are cut at the configured size whatever the writes are.
    for chunk in data.chunks(777_777) {
        w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    assert_eq!(
        driver.stat("big/a").await.unwrap(),
        None,
        "visible before commit"
    );
    w.commit().await.unwrap();
    assert_eq!(driver.stat("big/a").await.unwrap(), Some(data.len() as u64));
    assert_eq!(read(&*driver, "big/a", 0..data.len() as u64).await, data);
    driver.copy("big/a", "big/b").await.unwrap();
    let len = data.len() as u64;
    assert_eq!(read(&*driver, "big/b", 0..len).await, data);
    assert_eq!(
        read(&*driver, "big/b", (5 << 20) - 3..(5 << 20) + 3).await,
        data[(5 << 20) - 3..(5 << 20) + 3]
    );

    // A store over it publishes a 12 MiB upload of one part by a copy, and of three parts
    // through a writer, both verified.
    let store = BlobStore::new(driver.clone());
    let d = Digest::of(Algorithm::Sha256, &data);
    let mut h = Algorithm::Sha256.hasher();
    store
        .write_part("u1", "p0", body(&[&data]), Some(&mut h))
        .await
        .unwrap();
    store
        .commit_upload("u1", &["p0".into()], len, &d, Some(h.finish()))
        .await
        .unwrap();
    assert_eq!(store.verify_blob(&d).await.unwrap(), Some(len));
    let other = pattern(12 << 20, 9);
    let d2 = Digest::of(Algorithm::Sha256, &other);
    let (a, rest) = other.split_at(4 << 20);
    let (b, c) = rest.split_at(1 << 20);
    for (name, part) in [("p0", a), ("p1", b), ("p2", c)] {
        store
            .write_part("u2", name, body(&[part]), None)
            .await
            .unwrap();
    }
    let parts: Vec<String> = ["p0", "p1", "p2"].map(String::from).into();
    store
        .commit_upload("u2", &parts, len, &d2, None)
        .await
        .unwrap();
    assert_eq!(store.verify_blob(&d2).await.unwrap(), Some(len));
    // Parts of 6, 5 and 1 MiB whose digest streamed in: composed inside the bucket.
    let third = pattern(12 << 20, 11);
    let d3 = Digest::of(Algorithm::Sha256, &third);
    let (a, rest) = third.split_at(6 << 20);
    let (b, c) = rest.split_at(5 << 20);
    let mut h = Algorithm::Sha256.hasher();
    for (name, part) in [("p0", a), ("p1", b), ("p2", c)] {
        store
            .write_part("u3", name, body(&[part]), Some(&mut h))
            .await
            .unwrap();
    }
    store
        .commit_upload("u3", &parts, len, &d3, Some(h.finish()))
        .await
        .unwrap();
    assert_eq!(store.verify_blob(&d3).await.unwrap(), Some(len));
    assert_eq!(
        read(&*driver, &blob_path(&d3), (6 << 20) - 2..(6 << 20) + 2).await,
        third[(6 << 20) - 2..(6 << 20) + 2]
    );
    store.delete_upload("u1").await.unwrap();
    store.delete_upload("u2").await.unwrap();
    store.delete_upload("u3").await.unwrap();
    // Garage's listings catch up with deletes a moment later under load: wait for them (a
    // part that stays listed for 30 s is still a failure).
    let mut left = store.list_files(UPLOADS).await.unwrap();
    for _ in 0..300 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        left = store.list_files(UPLOADS).await.unwrap();
    }
    assert_eq!(left, Vec::<String>::new());
}

#[tokio::test]
async fn s3_multipart_uploads_left_open_are_aborted_by_purging() {
    let g = garage::Garage::start();
    let driver = s3(&g, g.bucket()).await;
    // A write that dies with its process: parts sent, the upload never completed nor aborted.
    let mut w = driver
        .writer(
            "berth/uploads/x/00000000000000000000-dead",
            Durability::Deferred,
        )
        .await
        .unwrap();
    // More than the parts a writer keeps in flight (4 of 5 MiB): the writes return only once
    // the first parts, and so the multipart upload, are in the bucket.
    for chunk in pattern(26 << 20, 1).chunks(1 << 20) {
        w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    // Dropped without a commit or an abort, as a killed process leaves it.
    drop(w);
    assert_eq!(
        driver
            .stat("berth/uploads/x/00000000000000000000-dead")
            .await
            .unwrap(),
        None
    );
    // Not older than the cutoff yet: kept.
    let past = SystemTime::now() - Duration::from_secs(3600);
    assert_eq!(driver.purge_temporaries(past).await.unwrap(), 0);
    let future = SystemTime::now() + Duration::from_secs(3600);
    assert_eq!(driver.purge_temporaries(future).await.unwrap(), 1);
    assert_eq!(driver.purge_temporaries(future).await.unwrap(), 0);
}

#[tokio::test]
async fn s3_reads_go_on_with_one_node_of_three_stopped() {
    let mut g = garage::Garage::start();
    let driver = s3(&g, g.bucket()).await;
    let data = pattern(3 << 20, 5);
    put(&*driver, "n/obj", &data).await;
    g.stop_node(2);
    for _ in 0..5 {
        assert_eq!(read(&*driver, "n/obj", 0..data.len() as u64).await, data);
    }
    // Writes too: two copies of three make a quorum.
    put(&*driver, "n/obj2", b"written with a node down").await;
    g.start_node(2);
    assert_eq!(
        driver.read_all("n/obj2").await.unwrap(),
        &b"written with a node down"[..]
    );
}

#[tokio::test]
async fn s3_with_wrong_keys_is_an_auth_error() {
    let g = garage::Garage::start_nodes(1);
    let mut config = s3_config(&g, g.bucket());
    config.secretkey = Some("0".repeat(64));
    let storage = crate::config::Storage {
        s3: Some(config),
        ..Default::default()
    };
    let driver = open(&storage).await.unwrap().driver;
    let e = driver.stat("x").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
    let store = BlobStore::new(driver);
    let e = store
        .stat_blob(&Digest::of(Algorithm::Sha256, b"x"))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, StorageError::Backend(b) if b.kind() == ErrorKind::Auth),
        "{e}"
    );
}

#[path = "../../tests/common/swift.rs"]
mod swift_server;

/// A driver on a new container of `s`, opened from a `storage.swift` section as the server
/// opens it (with the Temp-URL key, so that it presigns).
async fn swift(s: &swift_server::Swift, container: &str) -> Arc<dyn Driver> {
    let storage = crate::config::Storage {
        swift: Some(crate::config::Swift {
            authurl: Some(s.auth_url()),
            username: Some(s.username().to_string()),
            password: Some(s.password().to_string()),
            container: Some(s.create_container(container)),
            prefix: Some("/registry".to_string()),
            chunksize: Some(5 << 20),
            secretkey: Some(s.temp_url_key().to_string()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let backend = open(&storage).await.unwrap();
    assert_eq!(backend.name, "swift");
    backend.driver
}

/// A driver on the whole container `name` of `s`, no root: it sees the segments of large objects
/// beside the registry's objects.
async fn swift_container(s: &swift_server::Swift, name: &str) -> Arc<dyn Driver> {
    let storage = crate::config::Storage {
        swift: Some(crate::config::Swift {
            authurl: Some(s.auth_url()),
            username: Some(s.username().to_string()),
            password: Some(s.password().to_string()),
            container: Some(name.to_string()),
            ..Default::default()
        }),
        ..Default::default()
    };
    open(&storage).await.unwrap().driver
}

#[tokio::test]
async fn driver_contract_and_store_suite_swift() {
    let s = swift_server::Swift::start();
    let driver = swift(&s, "contract").await;
    let caps = driver.capabilities();
    assert!(
        caps.copy && caps.streamed_writes && caps.presign_read,
        "{caps:?}"
    );
    contract(&*driver).await;
    suite(BlobStore::new(swift(&s, "suite").await)).await;
}

#[tokio::test]
async fn swift_large_objects_are_written_in_segments_and_deleted_with_them() {
    let s = swift_server::Swift::start();
    let driver = swift(&s, "large").await;
    let data = pattern(11 << 20, 4);
    let mut w = driver.writer("big/a", Durability::Durable).await.unwrap();
    for chunk in data.chunks(1_000_003) {
        w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    w.commit().await.unwrap();
    let len = data.len() as u64;
    assert_eq!(driver.stat("big/a").await.unwrap(), Some(len));
    assert_eq!(read(&*driver, "big/a", 0..len).await, data);
    driver.copy("big/a", "big/b").await.unwrap();
    assert_eq!(read(&*driver, "big/b", 0..len).await, data);

    // The segments live in the container beside the registry's root; a driver on the whole
    // container sees them.
    let container = swift_container(&s, "large").await;
    let segments = || async { container.list(".segments/").await.unwrap().len() };
    assert!(segments().await >= 3, "an 11 MiB object in 5 MiB segments");
    driver.delete("big/a").await.unwrap();
    driver.delete("big/b").await.unwrap();
    assert_eq!(segments().await, 0, "segments left behind");
    assert_eq!(driver.stat("big/a").await.unwrap(), None);
}

#[tokio::test]
async fn swift_tokens_are_renewed_when_they_expire() {
    // Tokens that live 4 s: the driver renews one before it expires (after half its life),
    // and after a 401 for one that expired meanwhile.
    let s = swift_server::Swift::start_with_token_life(4);
    let driver = swift(&s, "renewal").await;
    put(&*driver, "t/one", b"first").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(driver.read_all("t/one").await.unwrap(), &b"first"[..]);
    put(&*driver, "t/two", b"second").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(driver.read_all("t/two").await.unwrap(), &b"second"[..]);
}

#[tokio::test]
async fn swift_with_a_wrong_password_says_so_at_start() {
    let s = swift_server::Swift::start();
    let storage = crate::config::Storage {
        swift: Some(crate::config::Swift {
            authurl: Some(s.auth_url()),
            username: Some(s.username().to_string()),
            password: Some("wrong".to_string()),
            container: Some("c".to_string()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let e = open(&storage).await.err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
    assert!(e.to_string().contains("401"), "{e}");
}

#[tokio::test]
async fn s3_listing_tells_a_missing_bucket_and_refused_keys_apart() {
    // What the server checks at start-up, before it serves anything.
    let g = garage::Garage::start_nodes(1);
    let missing = crate::config::Storage {
        s3: Some(s3_config(&g, "no-such-bucket")),
        ..Default::default()
    };
    let driver = open(&missing).await.unwrap().driver;
    // OpenDAL calls a missing bucket a configuration error; its message names it.
    let e = driver.list("berth/probe/").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Other, "{e}");
    assert!(e.to_string().contains("NoSuchBucket"), "{e}");
    let mut refused = s3_config(&g, g.bucket());
    refused.accesskey = Some("GK000000000000000000000000".to_string());
    let refused = crate::config::Storage {
        s3: Some(refused),
        ..Default::default()
    };
    let driver = open(&refused).await.unwrap().driver;
    let e = driver.list("berth/probe/").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
    let fine = s3(&g, g.bucket()).await;
    assert!(fine.list("berth/probe/").await.unwrap().is_empty());
}

#[tokio::test]
async fn swift_segments_of_a_write_cut_short_are_purged() {
    let s = swift_server::Swift::start();
    let driver = swift(&s, "cut").await;
    // A large object written whole, whose segments must stay.
    let kept = pattern(6 << 20, 8);
    put(&*driver, "kept/obj", &kept).await;
    let container = swift_container(&s, "cut").await;
    // What a write that died with its process leaves: segments named as OpenDAL names them
    // (`.segments/<object><write id>/<number>`), and no manifest.
    let write = ".segments/registry/berth/uploads/x/0-dead9f1c2a4e-5b6d-4c3a-9e8f-0123456789ab";
    for n in ["00000001", "00000002"] {
        put(&*container, &format!("{write}/{n}"), &pattern(1 << 20, 2)).await;
    }
    let segments = || async { container.list(".segments/").await.unwrap() };
    let before = segments().await.len();
    assert_eq!(before, 4);
    let past = SystemTime::now() - Duration::from_secs(3600);
    assert_eq!(driver.purge_temporaries(past).await.unwrap(), 0);
    let future = SystemTime::now() + Duration::from_secs(3600);
    let mut purged = 0;
    // Segments may still be on their way when the writer is dropped.
    for _ in 0..50 {
        purged += driver.purge_temporaries(future).await.unwrap();
        if purged > 0 && segments().await.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(purged >= 1, "nothing purged of {before} segments");
    let left = segments().await;
    assert_eq!(left.len(), 2, "the kept object's two segments: {left:?}");
    assert!(left.iter().all(|e| e.path.contains("kept/obj")), "{left:?}");
    assert_eq!(read(&*driver, "kept/obj", 0..kept.len() as u64).await, kept);
}
