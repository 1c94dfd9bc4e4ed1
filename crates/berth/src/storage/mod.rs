//! The blob store: content-addressed blobs and in-progress upload data, over a storage driver.
//!
//! Owns the storage layout, digest verification and the write-then-publish protocol, written once
//! against the [`Driver`] boundary (`driver.rs`) and the [`Capabilities`] a driver declares: no
//! code here asks which backend it is. The drivers: `fs.rs`, the local disk with its fast paths
//! (memory-mapped reads, upload parts without per-part fsync, concatenation in the kernel), and
//! `opendal.rs`, any OpenDAL operator (memory now, object stores through the same code). Knows
//! nothing about repositories, tags or HTTP: which repository may see which blob is the metadata
//! store's business.
//!
//! Layout (below the driver's root). Blobs use the same paths as Distribution's storage driver,
//! so a Distribution root directory can be served without copying a blob:
//! - `docker/registry/v2/blobs/<alg>/<first two hex>/<hex>/data` — a published blob or manifest.
//! - `berth/uploads/<upload id>/<offset, 20 digits>-<nonce>` — one part per chunk of an upload.
//! - `berth/tmp/` — the local disk driver's writes in progress.
//!
//! Invariants:
//! - A blob path only ever holds complete, verified, durable content. Bytes are hashed before
//!   they are published, or on their way to a writer of the blob that is committed only when the
//!   digest matches; publishing is one step: a rename of synced data, a copy or concatenation
//!   inside the backend, or the commit of a durable write.
//! - An upload part at its name is complete (a driver's writer publishes on commit only), and
//!   every write gets a part name of its own, so concurrent or retried chunks never overwrite
//!   each other. Which parts make up an upload is decided by the metadata store (the session
//!   lists the parts it acknowledged), not by what is stored: other parts are residue and are
//!   ignored.
//! - A failed or aborted write leaves nothing behind, a full backend included.

mod backends;
mod driver;
mod fs;
mod opendal;
mod s3;
mod swift;

use std::io;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};

use crate::oci::digest::{Algorithm, Digest, Hasher};

pub use self::backends::{open, Backend};
pub use self::driver::{
    ByteStream, Capabilities, Driver, DriverError, DriverWriter, Durability, Entry, ErrorKind,
};
pub use self::fs::FsDriver;
pub use self::opendal::{OpenDalDriver, Tuning};
pub use self::swift::{SwiftAuth, SwiftDriver};

/// Prepares the process for the object stores' HTTP clients: ring as the TLS provider (they
/// bring none of their own) unless one is installed already, and OpenDAL's HTTP transport.
pub fn install_http_defaults() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    ::opendal::HttpTransporter::install_default(
        opendal_http_transport_reqwest::ReqwestTransport::default(),
    );
}

/// Size of the buffered writes to a backend, and of reads from it.
const IO_CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("content not found: {0}")]
    NotFound(String),
    #[error("content digest {actual} does not match the expected digest {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("upload data is incomplete: {0}")]
    Incomplete(String),
    /// A part the session acknowledged is gone: the upload was finished or cancelled meanwhile.
    #[error("upload data is gone: {0}")]
    PartMissing(String),
    #[error("reading the request body failed: {0}")]
    Body(io::Error),
    /// The backend has no space left: nothing was published.
    #[error("no space left: {0}")]
    Full(String),
    /// Any other failure of the backend; its [`DriverError::kind`] tells a throttled or
    /// unavailable backend (worth a retry) from refused credentials or a fault.
    #[error("storage backend error: {0}")]
    Backend(DriverError),
}

impl From<DriverError> for StorageError {
    fn from(e: DriverError) -> Self {
        match e.kind() {
            ErrorKind::NotFound => StorageError::NotFound(e.to_string()),
            ErrorKind::Full => StorageError::Full(e.to_string()),
            _ => StorageError::Backend(e),
        }
    }
}

pub type Result<T> = std::result::Result<T, StorageError>;

/// Blob and upload storage over one driver.
#[derive(Clone)]
pub struct BlobStore {
    driver: Arc<dyn Driver>,
    capabilities: Capabilities,
}

fn blob_path(d: &Digest) -> String {
    format!(
        "docker/registry/v2/blobs/{}/{}/{}/data",
        d.algorithm().as_str(),
        &d.hex()[..2],
        d.hex()
    )
}

const UPLOADS: &str = "berth/uploads/";

fn upload_dir(upload: &str) -> String {
    format!("{UPLOADS}{upload}/")
}

fn part_path(upload: &str, part: &str) -> String {
    format!("{UPLOADS}{upload}/{part}")
}

/// A fresh, unique name for the part of an upload that starts at `offset`.
pub fn new_part_name(offset: u64) -> String {
    format!("{offset:020}-{}", uuid::Uuid::new_v4().simple())
}

impl BlobStore {
    /// A store over `driver`.
    pub fn new(driver: Arc<dyn Driver>) -> BlobStore {
        let capabilities = driver.capabilities();
        BlobStore {
            driver,
            capabilities,
        }
    }

    /// A store on the local filesystem under `root` (created if missing).
    pub fn fs(root: &Path) -> Result<BlobStore> {
        Ok(BlobStore::new(Arc::new(FsDriver::open(root)?)))
    }

    /// A store in memory (tests).
    pub fn memory() -> Result<BlobStore> {
        Ok(BlobStore::new(Arc::new(OpenDalDriver::memory()?)))
    }

    /// The size of a published blob, or `None` when it is not stored.
    pub async fn stat_blob(&self, d: &Digest) -> Result<Option<u64>> {
        Ok(self.driver.stat(&blob_path(d)).await?)
    }

    /// Streams `range` of a published blob.
    pub async fn read_blob(&self, d: &Digest, range: Range<u64>) -> Result<ByteStream> {
        self.driver
            .read(&blob_path(d), range)
            .await
            .map_err(|e| not_found_as(e, d))
    }

    /// Whether [`BlobStore::blob_url`] can hand out URLs.
    pub fn can_redirect(&self) -> bool {
        self.capabilities.presign_read
    }

    /// A URL from which a client can fetch the published blob `d` directly from the backend,
    /// valid for `lifetime`; `None` when the backend hands out no such URLs.
    pub async fn blob_url(&self, d: &Digest, lifetime: Duration) -> Result<Option<url::Url>> {
        if !self.capabilities.presign_read {
            return Ok(None);
        }
        Ok(self.driver.presign_read(&blob_path(d), lifetime).await?)
    }

    /// Reads a whole (small) blob, e.g. a manifest.
    pub async fn read_blob_bytes(&self, d: &Digest) -> Result<Bytes> {
        self.driver
            .read_all(&blob_path(d))
            .await
            .map_err(|e| not_found_as(e, d))
    }

    /// Stores `data` as the blob `d` unless it is already stored. The caller has verified that
    /// `data` hashes to `d`.
    pub async fn put_blob_bytes(&self, d: &Digest, data: Bytes) -> Result<()> {
        if self.stat_blob(d).await?.is_some() {
            return Ok(());
        }
        // Write-then-publish: a durable write appears at the blob path whole, or not at all.
        self.write_whole(&blob_path(d), data).await
    }

    /// Deletes the published blob `d` (nothing happens if it is not stored). Only a collector
    /// that claimed the blob in the metadata store may call this.
    pub async fn delete_blob(&self, d: &Digest) -> Result<()> {
        Ok(self.driver.delete(&blob_path(d)).await?)
    }

    /// Writes one chunk of an upload as the part `part` (see [`new_part_name`]), feeding `hasher`
    /// (which must cover exactly the upload's bytes before this chunk) with every byte. Returns the
    /// number of bytes written. Nothing is left at the part's name if the body fails part-way.
    pub async fn write_part<S>(
        &self,
        upload: &str,
        part: &str,
        body: S,
        hasher: Option<&mut Hasher>,
    ) -> Result<u64>
    where
        S: Stream<Item = io::Result<Bytes>> + Send + Unpin,
    {
        // Deferred: a part needs to survive a crash of this process only; publishing it syncs
        // it first, so a power cut can cost an upload in progress, never a published blob.
        let mut w = self
            .driver
            .writer(&part_path(upload, part), Durability::Deferred)
            .await?;
        let mut body = hashing(body, hasher);
        let mut written = 0u64;
        let copied: Result<()> = async {
            while let Some(chunk) = body.try_next().await? {
                written += chunk.len() as u64;
                w.write(chunk).await?;
            }
            Ok(())
        }
        .await;
        commit_or_abort(w, copied).await?;
        Ok(written)
    }

    /// The lengths of the named parts of an upload, checked to add up to `size`.
    async fn part_lengths(&self, upload: &str, parts: &[String], size: u64) -> Result<Vec<u64>> {
        let mut lengths = Vec::with_capacity(parts.len());
        for part in parts {
            match self.driver.stat(&part_path(upload, part)).await? {
                Some(len) => lengths.push(len),
                None => {
                    return Err(StorageError::PartMissing(format!(
                        "upload {upload}: part {part} is missing"
                    )))
                }
            }
        }
        let total: u64 = lengths.iter().sum();
        if total != size {
            return Err(StorageError::Incomplete(format!(
                "upload {upload}: parts hold {total} bytes, the session has {size}"
            )));
        }
        Ok(lengths)
    }

    /// Verifies an upload made of `parts` (in order, `size` bytes in all) against `expected` and
    /// publishes it as that blob. `known` is the digest already computed while the bytes streamed
    /// in, if the caller has one; otherwise the data is read back and hashed. The upload's data
    /// stays until [`BlobStore::delete_upload`] (a part published by a rename is gone from it).
    pub async fn commit_upload(
        &self,
        upload: &str,
        parts: &[String],
        size: u64,
        expected: &Digest,
        known: Option<Digest>,
    ) -> Result<()> {
        self.verify_and_publish(upload, parts, size, expected, known)
            .await
            .map_err(|e| match e {
                // The parts vanish under a concurrent finish or cancel of the same session.
                StorageError::NotFound(m) => {
                    StorageError::PartMissing(format!("upload {upload}: {m}"))
                }
                e => e,
            })
    }

    async fn verify_and_publish(
        &self,
        upload: &str,
        parts: &[String],
        size: u64,
        expected: &Digest,
        known: Option<Digest>,
    ) -> Result<()> {
        let lengths = self.part_lengths(upload, parts, size).await?;
        let sources: Vec<String> = parts.iter().map(|p| part_path(upload, p)).collect();
        // A digest of the expected algorithm computed while the bytes streamed in verifies them
        // without reading them back.
        let verified = match known.filter(|k| k.algorithm() == expected.algorithm()) {
            Some(k) => {
                check(expected, k)?;
                true
            }
            None => false,
        };
        let target = blob_path(expected);
        let stored = self.driver.stat(&target).await?.is_some();
        let caps = self.capabilities;
        match (sources.as_slice(), stored, verified) {
            ([], _, _) => {
                if !verified {
                    check(expected, expected.algorithm().hasher().finish())?;
                }
                if !stored {
                    self.write_whole(&target, Bytes::new()).await?;
                }
            }
            // Content-addressed: the blob is stored already, and these bytes are it.
            (_, true, true) => {}
            // Stored already; these bytes must still be shown to be it.
            (_, true, false) => self.pour(&sources, &lengths, None, Some(expected)).await?,
            ([one], false, _) if caps.rename || caps.copy => {
                if !verified {
                    check(
                        expected,
                        self.digest_of(one, size, expected.algorithm()).await?,
                    )?;
                }
                self.publish(one, &target).await?;
            }
            // Verified parts concatenated inside the backend, without passing through here.
            (_, false, true) if caps.concat && concatenable(&lengths, caps.concat_min_part) => {
                self.driver.concat(&sources, &target).await?
            }
            // Through a writer of the blob, committed only if the digest matches.
            (_, false, _) => {
                let verify = (!verified).then_some(expected);
                self.pour(&sources, &lengths, Some(&target), verify).await?
            }
        }
        Ok(())
    }

    /// Publishes the verified object at `from` as the blob path `to`, in one step. Only when the
    /// driver can rename or copy.
    async fn publish(&self, from: &str, to: &str) -> Result<()> {
        if self.capabilities.rename {
            // Write-then-publish: the data is made durable, then renamed into place (a rename the
            // driver makes durable itself).
            self.driver.sync(from).await?;
            self.driver.rename(from, to).await?;
        } else {
            // A copy inside the backend, which appears whole.
            self.driver.copy(from, to).await?;
        }
        Ok(())
    }

    /// Streams `sources` (of `lengths` bytes) in order into a new object at `target`, when given,
    /// and through a hasher, when `verify` is given; `target` is committed only if their digest
    /// is `verify`, and aborted otherwise.
    async fn pour(
        &self,
        sources: &[String],
        lengths: &[u64],
        target: Option<&str>,
        verify: Option<&Digest>,
    ) -> Result<()> {
        let mut hasher = verify.map(|d| d.algorithm().hasher());
        let mut w = match target {
            Some(t) => Some(self.driver.writer(t, Durability::Durable).await?),
            None => None,
        };
        let poured: Result<()> = async {
            for (source, len) in sources.iter().zip(lengths) {
                let mut s = self.driver.read(source, 0..*len).await?;
                while let Some(chunk) = s.try_next().await.map_err(read_failed(source))? {
                    if let Some(h) = hasher.as_mut() {
                        h.update(&chunk);
                    }
                    if let Some(w) = w.as_mut() {
                        w.write(chunk).await?;
                    }
                }
            }
            if let (Some(h), Some(d)) = (hasher, verify) {
                check(d, h.finish())?;
            }
            Ok(())
        }
        .await;
        match w {
            Some(w) => commit_or_abort(w, poured).await,
            None => poured,
        }
    }

    async fn digest_of(&self, path: &str, size: u64, algorithm: Algorithm) -> Result<Digest> {
        let mut hasher = algorithm.hasher();
        let mut s = self.driver.read(path, 0..size).await?;
        while let Some(chunk) = s.try_next().await.map_err(read_failed(path))? {
            hasher.update(&chunk);
        }
        Ok(hasher.finish())
    }

    /// Writes a whole object durably: it appears at `path` whole or not at all, and nothing of a
    /// failed write is left (after a full disk it must not keep the space).
    async fn write_whole(&self, path: &str, data: Bytes) -> Result<()> {
        let mut w = self.driver.writer(path, Durability::Durable).await?;
        let written = if data.is_empty() {
            Ok(())
        } else {
            w.write(data).await.map_err(StorageError::from)
        };
        commit_or_abort(w, written).await
    }

    /// Hashes a stored blob and returns its size if its content matches its digest, `None` if it
    /// is missing, and `DigestMismatch` if it is corrupt.
    pub async fn verify_blob(&self, d: &Digest) -> Result<Option<u64>> {
        let Some(size) = self.stat_blob(d).await? else {
            return Ok(None);
        };
        check(d, self.digest_of(&blob_path(d), size, d.algorithm()).await?)?;
        Ok(Some(size))
    }

    /// Every file below the directory `prefix` (recursively) with when it was last written,
    /// where the backend says.
    pub async fn list_entries(&self, prefix: &str) -> Result<Vec<(String, Option<SystemTime>)>> {
        Ok(self
            .driver
            .list(prefix)
            .await?
            .into_iter()
            .map(|e| (e.path, e.modified))
            .collect())
    }

    /// Every file below the directory `prefix` (recursively), as paths relative to the store's
    /// root, sorted.
    pub async fn list_files(&self, prefix: &str) -> Result<Vec<String>> {
        let mut files: Vec<String> = self
            .driver
            .list(prefix)
            .await?
            .into_iter()
            .map(|e| e.path)
            .collect();
        files.sort_unstable();
        Ok(files)
    }

    /// Reads a small file that is not a blob (a link or marker file); `None` if absent.
    pub async fn read_file(&self, path: &str) -> Result<Option<Bytes>> {
        match self.driver.read_all(path).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes a small file that is not a blob (e.g. a marker), atomically and durably.
    pub async fn write_file(&self, path: &str, data: Bytes) -> Result<()> {
        self.write_whole(path, data).await
    }

    /// Upload ids that have data in storage and whose newest file is older than `cutoff` (a
    /// backend that records no times makes every upload old).
    pub async fn upload_data_older_than(&self, cutoff: SystemTime) -> Result<Vec<String>> {
        let mut newest: std::collections::HashMap<String, SystemTime> =
            std::collections::HashMap::new();
        for entry in self.driver.list(UPLOADS).await? {
            let Some(rest) = entry.path.strip_prefix(UPLOADS) else {
                continue;
            };
            let Some((id, _)) = rest.split_once('/') else {
                continue;
            };
            let modified = entry.modified.unwrap_or(SystemTime::UNIX_EPOCH);
            let e = newest.entry(id.to_string()).or_insert(modified);
            if modified > *e {
                *e = modified;
            }
        }
        Ok(newest
            .into_iter()
            .filter(|(_, t)| *t < cutoff)
            .map(|(id, _)| id)
            .collect())
    }

    /// Removes what writes that never completed (cut short by a crash) left behind, if older
    /// than `cutoff`. Returns how many were removed; backends that write whole objects or nothing
    /// have none.
    pub async fn remove_stale_temporaries(&self, cutoff: SystemTime) -> Result<usize> {
        Ok(self.driver.purge_temporaries(cutoff).await?)
    }

    /// Removes one part of an upload (one the session never acknowledged).
    pub async fn delete_part(&self, upload: &str, part: &str) -> Result<()> {
        Ok(self.driver.delete(&part_path(upload, part)).await?)
    }

    /// Removes everything stored for an upload.
    pub async fn delete_upload(&self, upload: &str) -> Result<()> {
        Ok(self.driver.delete_all(&upload_dir(upload)).await?)
    }
}

/// Whether parts of `lengths` can be concatenated by a backend whose sources but the last must
/// hold `min` bytes (empty parts add nothing and are left out).
fn concatenable(lengths: &[u64], min: u64) -> bool {
    let nonempty: Vec<u64> = lengths.iter().copied().filter(|l| *l > 0).collect();
    match nonempty.split_last() {
        Some((_, init)) => init.iter().all(|l| *l >= min),
        None => false,
    }
}

/// Commits `w` (making what was written appear at its path) if writing succeeded; otherwise
/// aborts it, so that nothing of a failed write — a full disk, a body cut short — is left. A
/// commit that fails leaves nothing either (the driver's contract).
async fn commit_or_abort(w: Box<dyn DriverWriter>, written: Result<()>) -> Result<()> {
    match written {
        Ok(()) => Ok(w.commit().await?),
        Err(e) => {
            // The write has failed already: an abort that fails too changes nothing about what
            // the caller is told.
            let _ = w.abort().await;
            Err(e)
        }
    }
}

/// The body of an upload with every chunk fed to `hasher` (when given) on the way; a failing body
/// becomes [`StorageError::Body`].
fn hashing<'a, S>(
    body: S,
    mut hasher: Option<&'a mut Hasher>,
) -> impl Stream<Item = Result<Bytes>> + Send + Unpin + 'a
where
    S: Stream<Item = io::Result<Bytes>> + Send + Unpin + 'a,
{
    body.map(move |chunk| match chunk {
        Ok(chunk) => {
            if let Some(h) = hasher.as_deref_mut() {
                h.update(&chunk);
            }
            Ok(chunk)
        }
        Err(e) => Err(StorageError::Body(e)),
    })
}

/// An error in the middle of reading `path` back from the backend.
fn read_failed(path: &str) -> impl Fn(io::Error) -> StorageError + '_ {
    move |e| DriverError::io(e, format_args!("reading {path}")).into()
}

fn check(expected: &Digest, actual: Digest) -> Result<()> {
    if &actual == expected {
        Ok(())
    } else {
        Err(StorageError::DigestMismatch {
            expected: expected.clone(),
            actual,
        })
    }
}

fn not_found_as(e: DriverError, d: &Digest) -> StorageError {
    if e.kind() == ErrorKind::NotFound {
        StorageError::NotFound(d.to_string())
    } else {
        e.into()
    }
}

#[cfg(test)]
mod tests;
