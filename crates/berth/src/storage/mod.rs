//! The blob store: content-addressed blobs and in-progress upload data, over an OpenDAL operator.
//!
//! Owns the storage layout and the write-then-publish protocol. Knows nothing about repositories,
//! tags or HTTP: which repository may see which blob is the metadata store's business.
//!
//! Layout (under the operator's root). Blobs use the same paths as Distribution's storage driver,
//! so a Distribution root directory can be served without copying a blob:
//! - `docker/registry/v2/blobs/<alg>/<first two hex>/<hex>/data` — a published blob or manifest.
//! - `berth/uploads/<upload id>/<offset, 20 digits>-<nonce>` — one part per chunk of an upload.
//! - `berth/uploads/<upload id>/data` — the concatenation of several parts while it is verified.
//!
//! Invariants:
//! - A blob path only ever holds complete, verified content: data is written under another name,
//!   hashed, fsynced, and then published with one rename (on backends without rename, a copy
//!   whose target write is itself atomic).
//! - An upload part at its final name is complete (writes go through a temporary name), and every
//!   write gets a part name of its own, so concurrent or retried chunks never overwrite each other.
//!   Which parts make up an upload is decided by the metadata store (the session lists the parts
//!   it acknowledged), not by what is on disk: other parts are residue and are ignored.

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use opendal::{services, ErrorKind, Operator};

use crate::oci::digest::{Digest, Hasher};

/// Size of the buffered writes to the backend, and of reads from it.
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
    #[error("storage backend error: {0}")]
    Backend(opendal::Error),
    #[error("storage I/O error: {0}")]
    Io(io::Error),
}

/// Whether an error (or one of its causes) says the device is full.
fn is_full(e: &(dyn std::error::Error + 'static)) -> bool {
    const ENOSPC: i32 = 28;
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::StorageFull || io.raw_os_error() == Some(ENOSPC) {
                return true;
            }
        }
        cause = c.source();
    }
    // Some backends keep only the message of the cause.
    e.to_string().contains("No space left on device")
}

impl From<io::Error> for StorageError {
    fn from(e: io::Error) -> Self {
        if is_full(&e) {
            StorageError::Full(e.to_string())
        } else {
            StorageError::Io(e)
        }
    }
}

impl From<opendal::Error> for StorageError {
    fn from(e: opendal::Error) -> Self {
        if is_full(&e) {
            StorageError::Full(e.to_string())
        } else {
            StorageError::Backend(e)
        }
    }
}

pub type Result<T> = std::result::Result<T, StorageError>;

/// A stream of blob bytes.
pub type ByteStream = std::pin::Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// Blob and upload storage over one OpenDAL operator.
#[derive(Clone)]
pub struct BlobStore {
    op: Operator,
    /// For the local filesystem backend: its root, so that directories can be fsynced after a
    /// rename (OpenDAL syncs file data, not the directory entries that make a rename durable).
    fs_root: Option<PathBuf>,
}

fn blob_path(d: &Digest) -> String {
    format!(
        "docker/registry/v2/blobs/{}/{}/{}/data",
        d.algorithm().as_str(),
        &d.hex()[..2],
        d.hex()
    )
}

fn upload_dir(upload: &str) -> String {
    format!("berth/uploads/{upload}/")
}

fn part_path(upload: &str, part: &str) -> String {
    format!("berth/uploads/{upload}/{part}")
}

/// A fresh, unique name for the part of an upload that starts at `offset`.
pub fn new_part_name(offset: u64) -> String {
    format!("{offset:020}-{}", uuid::Uuid::new_v4().simple())
}

impl BlobStore {
    /// A store on the local filesystem under `root` (created if missing).
    pub fn fs(root: &Path) -> Result<BlobStore> {
        std::fs::create_dir_all(root)?;
        let root = root.canonicalize()?;
        let tmp = root.join("berth").join("tmp");
        std::fs::create_dir_all(&tmp)?;
        let builder = services::Fs::default()
            .root(&root.to_string_lossy())
            .atomic_write_dir(&tmp.to_string_lossy());
        Ok(BlobStore {
            op: Operator::new(builder)?,
            fs_root: Some(root),
        })
    }

    /// A store in memory (tests).
    pub fn memory() -> Result<BlobStore> {
        Ok(BlobStore {
            op: Operator::new(services::Memory::default())?,
            fs_root: None,
        })
    }

    /// The size of a published blob, or `None` when it is not stored.
    pub async fn stat_blob(&self, d: &Digest) -> Result<Option<u64>> {
        match self.op.stat(&blob_path(d)).await {
            Ok(m) => Ok(Some(m.content_length())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Streams `range` of a published blob.
    pub async fn read_blob(&self, d: &Digest, range: Range<u64>) -> Result<ByteStream> {
        if let Some(root) = &self.fs_root {
            return mapped_stream(root.join(blob_path(d)), range, d).await;
        }
        let reader = self
            .op
            .reader_with(&blob_path(d))
            .chunk(IO_CHUNK)
            .await
            .map_err(|e| not_found_or(e, d))?;
        let stream = reader.into_bytes_stream(range).await?;
        Ok(Box::pin(stream))
    }

    /// Reads a whole (small) blob, e.g. a manifest.
    pub async fn read_blob_bytes(&self, d: &Digest) -> Result<Bytes> {
        let buf = self
            .op
            .read(&blob_path(d))
            .await
            .map_err(|e| not_found_or(e, d))?;
        Ok(buf.to_bytes())
    }

    /// Stores `data` as the blob `d` unless it is already stored. The caller has verified that
    /// `data` hashes to `d`.
    pub async fn put_blob_bytes(&self, d: &Digest, data: Bytes) -> Result<()> {
        if self.stat_blob(d).await?.is_some() {
            return Ok(());
        }
        // Write-then-publish: the fs writer writes a temporary file, fsyncs it and renames it
        // into place on close (a failed write is aborted, which removes it); then the directory
        // entries are synced.
        let path = blob_path(d);
        self.write_whole(&path, data).await?;
        self.sync_dirs(&path).await
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
        if let Some(root) = &self.fs_root {
            return write_local_part(root, &part_path(upload, part), body, hasher).await;
        }
        let mut w = self
            .op
            .writer_with(&part_path(upload, part))
            .chunk(IO_CHUNK)
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
        close_or_abort(w, copied).await?;
        Ok(written)
    }

    /// The lengths of the named parts of an upload, checked to add up to `size`.
    async fn part_lengths(&self, upload: &str, parts: &[String], size: u64) -> Result<Vec<u64>> {
        let mut lengths = Vec::with_capacity(parts.len());
        for part in parts {
            match self.op.stat(&part_path(upload, part)).await {
                Ok(m) => lengths.push(m.content_length()),
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    return Err(StorageError::PartMissing(format!(
                        "upload {upload}: part {part} is missing"
                    )))
                }
                Err(e) => return Err(e.into()),
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
    /// stays until [`BlobStore::delete_upload`].
    pub async fn commit_upload(
        &self,
        upload: &str,
        parts: &[String],
        size: u64,
        expected: &Digest,
        known: Option<Digest>,
    ) -> Result<()> {
        // The parts vanish under a concurrent finish or cancel of the same session.
        let gone = |e: StorageError| match e {
            StorageError::Backend(e) if e.kind() == ErrorKind::NotFound => {
                StorageError::PartMissing(format!("upload {upload}: {e}"))
            }
            StorageError::Io(e) if e.kind() == io::ErrorKind::NotFound => {
                StorageError::PartMissing(format!("upload {upload}: {e}"))
            }
            e => e,
        };
        async {
            let lengths = self.part_lengths(upload, parts, size).await?;
            let known = known.filter(|k| k.algorithm() == expected.algorithm());
            let source = match parts {
                [] => None,
                [one] => Some(part_path(upload, one)),
                _ => {
                    let data = format!("berth/uploads/{upload}/data");
                    match (&self.fs_root, &known) {
                        // The digest is known already: let the kernel concatenate the parts
                        // (copy_file_range) without the bytes passing through this process.
                        (Some(root), Some(k)) => {
                            let files: Vec<PathBuf> = parts
                                .iter()
                                .map(|p| root.join(part_path(upload, p)))
                                .collect();
                            concat_files(files, root.join(&data)).await?;
                            check(expected, k.clone())?;
                        }
                        _ => {
                            // Concatenate through the operator, hashing on the way.
                            let mut hasher = expected.algorithm().hasher();
                            let mut w = self.op.writer_with(&data).chunk(IO_CHUNK).await?;
                            let copied: Result<()> = async {
                                for (part, len) in parts.iter().zip(&lengths) {
                                    let mut s = self
                                        .op
                                        .reader_with(&part_path(upload, part))
                                        .chunk(IO_CHUNK)
                                        .await?
                                        .into_bytes_stream(0..*len)
                                        .await?;
                                    while let Some(chunk) = s.try_next().await? {
                                        hasher.update(&chunk);
                                        w.write(chunk).await?;
                                    }
                                }
                                Ok(())
                            }
                            .await;
                            close_or_abort(w, copied).await?;
                            check(expected, hasher.finish())?;
                        }
                    }
                    Some(data)
                }
            };
            if parts.len() <= 1 {
                let actual = match (known, &source) {
                    (Some(k), _) => k,
                    (None, None) => expected.algorithm().hasher().finish(),
                    (None, Some(path)) => self.hash(path, size, expected).await?,
                };
                check(expected, actual)?;
            }
            if self.stat_blob(expected).await?.is_none() {
                let target = blob_path(expected);
                match &source {
                    None => self.write_whole(&target, Bytes::new()).await?,
                    // Publish: one atomic rename (fs) of verified, fsynced data.
                    Some(path) => {
                        self.sync_file(path).await?;
                        self.publish(path, &target).await?
                    }
                }
                self.sync_dirs(&target).await?;
            }
            Ok(())
        }
        .await
        .map_err(gone)
    }

    async fn hash(&self, path: &str, size: u64, expected: &Digest) -> Result<Digest> {
        let mut hasher = expected.algorithm().hasher();
        let mut s = self
            .op
            .reader_with(path)
            .chunk(IO_CHUNK)
            .await?
            .into_bytes_stream(0..size)
            .await?;
        while let Some(chunk) = s.try_next().await? {
            hasher.update(&chunk);
        }
        Ok(hasher.finish())
    }

    /// Writes a whole object (what `Operator::write` does), aborting the write when it fails: on
    /// the `fs` backend an unfinished write sits in a temporary file under `berth/tmp` that only
    /// an abort removes, and after a full disk it must not keep the space.
    async fn write_whole(&self, path: &str, data: impl Into<opendal::Buffer>) -> Result<()> {
        let mut w = self.op.writer(path).await?;
        let written = w.write(data).await.map_err(StorageError::from);
        close_or_abort(w, written).await
    }

    async fn publish(&self, from: &str, to: &str) -> Result<()> {
        let cap = self.op.info().capability();
        if cap.rename {
            self.op.rename(from, to).await?;
        } else {
            // No rename (e.g. memory): a whole-object write is itself atomic there.
            let data = self.op.read(from).await?;
            self.write_whole(to, data).await?;
        }
        Ok(())
    }

    /// Hashes a stored blob and returns its size if its content matches its digest, `None` if it
    /// is missing, and `DigestMismatch` if it is corrupt.
    pub async fn verify_blob(&self, d: &Digest) -> Result<Option<u64>> {
        let Some(size) = self.stat_blob(d).await? else {
            return Ok(None);
        };
        check(d, self.hash(&blob_path(d), size, d).await?)?;
        Ok(Some(size))
    }

    /// Every file below `prefix` (recursively), as paths relative to the store's root.
    pub async fn list_files(&self, prefix: &str) -> Result<Vec<String>> {
        let mut lister = self.op.lister_with(prefix).recursive(true).await?;
        let mut files = Vec::new();
        while let Some(entry) = lister.try_next().await? {
            if entry.metadata().is_file() {
                files.push(entry.path().to_string());
            }
        }
        Ok(files)
    }

    /// Reads a small file that is not a blob (a link or marker file); `None` if absent.
    pub async fn read_file(&self, path: &str) -> Result<Option<Bytes>> {
        match self.op.read(path).await {
            Ok(b) => Ok(Some(b.to_bytes())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes a small file that is not a blob (e.g. a marker), atomically and durably.
    pub async fn write_file(&self, path: &str, data: Bytes) -> Result<()> {
        self.write_whole(path, data).await?;
        self.sync_dirs(path).await
    }

    /// Upload ids that have data in storage and whose newest file is older than `cutoff`.
    pub async fn upload_data_older_than(
        &self,
        cutoff: std::time::SystemTime,
    ) -> Result<Vec<String>> {
        let mut newest: std::collections::HashMap<String, std::time::SystemTime> =
            std::collections::HashMap::new();
        let mut lister = self
            .op
            .lister_with("berth/uploads/")
            .recursive(true)
            .await?;
        while let Some(entry) = lister.try_next().await? {
            let Some(rest) = entry.path().strip_prefix("berth/uploads/") else {
                continue;
            };
            let Some((id, _)) = rest.split_once('/') else {
                continue;
            };
            if !entry.metadata().is_file() {
                continue;
            }
            let modified = match entry.metadata().last_modified() {
                Some(t) => t.into(),
                None => match self.op.stat(entry.path()).await {
                    Ok(m) => m
                        .last_modified()
                        .map(Into::into)
                        .unwrap_or(std::time::SystemTime::UNIX_EPOCH),
                    Err(_) => continue,
                },
            };
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

    /// Removes temporary files (of writes that never completed, e.g. cut short by a crash) older
    /// than `cutoff`. Returns how many were removed. Local filesystem only: other backends write
    /// whole objects or nothing.
    pub async fn remove_stale_temporaries(&self, cutoff: std::time::SystemTime) -> Result<usize> {
        let Some(root) = self.fs_root.clone() else {
            return Ok(0);
        };
        let removed = tokio::task::spawn_blocking(move || -> io::Result<usize> {
            let mut removed = 0;
            let dir = match std::fs::read_dir(root.join("berth/tmp")) {
                Ok(d) => d,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(e),
            };
            for entry in dir.flatten() {
                let meta = entry.metadata()?;
                if meta.is_file() && meta.modified()? < cutoff {
                    std::fs::remove_file(entry.path())?;
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
        .map_err(io::Error::other)??;
        Ok(removed)
    }

    /// Removes one part of an upload (one the session never acknowledged).
    pub async fn delete_part(&self, upload: &str, part: &str) -> Result<()> {
        self.op.delete(&part_path(upload, part)).await?;
        Ok(())
    }

    /// Removes everything stored for an upload.
    pub async fn delete_upload(&self, upload: &str) -> Result<()> {
        self.op
            .delete_with(&upload_dir(upload))
            .recursive(true)
            .await?;
        Ok(())
    }

    /// Makes a file's data durable (fs only: other backends' writes are durable when they
    /// complete).
    async fn sync_file(&self, path: &str) -> Result<()> {
        let Some(root) = &self.fs_root else {
            return Ok(());
        };
        let full = root.join(path);
        tokio::task::spawn_blocking(move || std::fs::File::open(full)?.sync_data())
            .await
            .map_err(io::Error::other)??;
        Ok(())
    }

    /// Makes the directory entries leading to `path` durable (fs only; a no-op elsewhere).
    async fn sync_dirs(&self, path: &str) -> Result<()> {
        let Some(root) = self.fs_root.clone() else {
            return Ok(());
        };
        let full = root.join(path);
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            let mut dir = full.parent();
            while let Some(d) = dir {
                std::fs::File::open(d)?.sync_all()?;
                if d == root {
                    break;
                }
                dir = d.parent();
            }
            Ok(())
        })
        .await
        .map_err(io::Error::other)??;
        Ok(())
    }
}

/// Closes `w` (making what was written visible at its name) if writing succeeded; otherwise, or if
/// closing fails, aborts it, so that nothing of a failed write — a full disk, a body cut short —
/// is left (OpenDAL removes an unfinished write only when asked to). Aborting is on the failure
/// path only.
async fn close_or_abort(mut w: opendal::Writer, written: Result<()>) -> Result<()> {
    let closed = match written {
        Ok(()) => w.close().await.map(|_| ()).map_err(StorageError::from),
        Err(e) => Err(e),
    };
    if closed.is_err() {
        // The write has failed already: an abort that fails too (nothing left to remove, or a
        // backend without abort) changes nothing about what the caller is told.
        let _ = w.abort().await;
    }
    closed
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

/// Writes an upload part to a local file: under a temporary name, renamed into place when the
/// body is complete. Not fsynced: a part only needs to survive a crash of this process (the page
/// cache does that); a power loss can cost an upload in progress, never a published blob —
/// publishing syncs the data first.
/// On failure (a full disk, a body cut short) the temporary file is removed and nothing is at
/// the part's name.
async fn write_local_part<S>(
    root: &Path,
    rel: &str,
    body: S,
    hasher: Option<&mut Hasher>,
) -> Result<u64>
where
    S: Stream<Item = io::Result<Bytes>> + Send + Unpin,
{
    let target = root.join(rel);
    let tmp = root
        .join("berth/tmp")
        .join(format!("part-{}", uuid::Uuid::new_v4().simple()));
    let (file, tmp) = tokio::task::spawn_blocking(move || -> io::Result<_> {
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir)?;
        }
        Ok((Arc::new(std::fs::File::create(&tmp)?), (tmp, target)))
    })
    .await
    .map_err(io::Error::other)??;
    let (tmp, target) = tmp;
    // Writes the buffered bytes on a blocking thread, handing the buffer over (no copy).
    let flush = |buf: &mut bytes::BytesMut| {
        let data = std::mem::replace(buf, bytes::BytesMut::with_capacity(IO_CHUNK)).freeze();
        let file = file.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                use std::io::Write;
                (&*file).write_all(&data)
            })
            .await
            .map_err(io::Error::other)?
        }
    };
    let mut buf = bytes::BytesMut::with_capacity(IO_CHUNK);
    let mut written = 0u64;
    let mut body = hashing(body, hasher);
    let result: Result<()> = async {
        while let Some(chunk) = body.try_next().await? {
            written += chunk.len() as u64;
            buf.extend_from_slice(&chunk);
            if buf.len() >= IO_CHUNK {
                flush(&mut buf).await?;
            }
        }
        if !buf.is_empty() {
            flush(&mut buf).await?;
        }
        Ok(())
    }
    .await;
    // A rename can fail for want of space too (a directory that must grow on a full disk).
    let renamed = match result {
        Ok(()) => tokio::fs::rename(&tmp, &target)
            .await
            .map_err(StorageError::from),
        Err(e) => Err(e),
    };
    match renamed {
        Ok(()) => Ok(written),
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            Err(e)
        }
    }
}

/// How much of a local blob is mapped at a time when streaming it. Mapped pages count in the
/// process's resident set while a window is alive, so this bounds memory per download.
const MAP_WINDOW: u64 = 2 << 20;

/// Maps `len` bytes of `file` from `offset`, with the pages read in up front.
fn map_window(file: &std::fs::File, offset: u64, len: u64) -> io::Result<Bytes> {
    // SAFETY: published blob files are immutable: never written again and never truncated
    // (removing one unlinks it, which leaves an open mapping intact), so the mapped bytes
    // cannot change or vanish while the `Bytes` that owns the mapping lives.
    let map = unsafe {
        memmap2::MmapOptions::new()
            .offset(offset)
            .len(len as usize)
            .populate()
            .map(file)?
    };
    Ok(Bytes::from_owner(map))
}

/// Streams a range of a local blob as memory-mapped windows: the bytes go from the page cache to
/// the socket without being copied through a buffer of ours, and memory stays bounded (one
/// window per stream in flight).
async fn mapped_stream(path: PathBuf, range: Range<u64>, d: &Digest) -> Result<ByteStream> {
    let first_len = (range.end - range.start).min(MAP_WINDOW);
    let opened = tokio::task::spawn_blocking(move || -> io::Result<_> {
        let file = std::fs::File::open(&path)?;
        // Mapping past the end of a file faults on access: refuse ranges the file does not hold.
        let len = file.metadata()?.len();
        if len < range.end {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} holds {len} bytes, {} requested",
                    path.display(),
                    range.end
                ),
            ));
        }
        let first = if first_len > 0 {
            map_window(&file, range.start, first_len)?
        } else {
            Bytes::new()
        };
        Ok((Arc::new(file), first))
    })
    .await
    .map_err(io::Error::other)?;
    let (file, first) = match opened {
        Ok(x) => x,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(StorageError::NotFound(d.to_string()))
        }
        Err(e) => return Err(e.into()),
    };
    let end = range.end;
    let rest = futures::stream::try_unfold(range.start + first_len, move |pos| {
        let file = file.clone();
        async move {
            if pos >= end {
                return Ok(None);
            }
            let len = (end - pos).min(MAP_WINDOW);
            let window = tokio::task::spawn_blocking(move || map_window(&file, pos, len))
                .await
                .map_err(io::Error::other)??;
            Ok(Some((window, pos + len)))
        }
    });
    let head = futures::stream::iter((first_len > 0).then_some(Ok(first)));
    Ok(Box::pin(head.chain(rest)))
}

/// Writes the concatenation of `parts` to `target` (local files): under a temporary name, fsynced,
/// then renamed into place. `std::io::copy` between files uses `copy_file_range` on Linux.
async fn concat_files(parts: Vec<PathBuf>, target: PathBuf) -> Result<()> {
    tokio::task::spawn_blocking(move || -> io::Result<()> {
        let tmp = target.with_extension(format!("partial-{}", uuid::Uuid::new_v4().simple()));
        let result = (|| {
            let mut out = std::fs::File::create(&tmp)?;
            for p in &parts {
                io::copy(&mut std::fs::File::open(p)?, &mut out)?;
            }
            out.sync_all()?;
            std::fs::rename(&tmp, &target)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    })
    .await
    .map_err(io::Error::other)??;
    Ok(())
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

fn not_found_or(e: opendal::Error, d: &Digest) -> StorageError {
    if e.kind() == ErrorKind::NotFound {
        StorageError::NotFound(d.to_string())
    } else {
        e.into()
    }
}

/// The one test suite every backend must pass.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::digest::Algorithm;

    fn body(chunks: &[&[u8]]) -> impl Stream<Item = io::Result<Bytes>> + Send + Unpin {
        futures::stream::iter(
            chunks
                .iter()
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        )
    }

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
        let got: Vec<Bytes> = store
            .read_blob(&d, 6..11)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(got.concat(), b"world");

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
        store
            .commit_upload("u6", &parts, 4, &dk, Some(dk.clone()))
            .await
            .unwrap();
        assert_eq!(store.read_blob_bytes(&dk).await.unwrap(), &b"xyz!"[..]);

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
                .commit_upload("u3", &[p, new_part_name(2)], 2, &d, None)
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
    }

    #[tokio::test]
    async fn memory_backend() {
        suite(BlobStore::memory().unwrap()).await;
    }

    #[tokio::test]
    async fn a_failed_write_through_the_operator_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::fs(dir.path()).unwrap();
        let temporaries = || {
            std::fs::read_dir(dir.path().join("berth/tmp"))
                .unwrap()
                .count()
        };
        let mut w = store.op.writer("berth/uploads/u/data").await.unwrap();
        w.write(Bytes::from_static(b"partial")).await.unwrap();
        assert_eq!(
            temporaries(),
            1,
            "the fs backend writes under berth/tmp first"
        );
        let failed = Err(StorageError::Full("no space left".into()));
        assert!(matches!(
            close_or_abort(w, failed).await,
            Err(StorageError::Full(_))
        ));
        assert_eq!(temporaries(), 0);
        assert!(!dir.path().join("berth/uploads/u/data").exists());

        let mut w = store.op.writer("berth/uploads/u/data").await.unwrap();
        w.write(Bytes::from_static(b"whole")).await.unwrap();
        close_or_abort(w, Ok(())).await.unwrap();
        assert_eq!(temporaries(), 0);
        assert_eq!(
            std::fs::read(dir.path().join("berth/uploads/u/data")).unwrap(),
            b"whole"
        );
    }

    #[tokio::test]
    async fn fs_backend() {
        let dir = tempfile::tempdir().unwrap();
        suite(BlobStore::fs(dir.path()).unwrap()).await;
        // Published blobs use Distribution's layout.
        let d = Digest::of(Algorithm::Sha256, b"hello world");
        assert!(dir.path().join(blob_path(&d)).is_file());
    }
}
