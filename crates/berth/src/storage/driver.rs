//! The storage driver boundary: what the blob store needs of a backend that holds bytes.
//!
//! Modelled on Distribution's storage driver (`registry/storage/driver`) and on OpenDAL's declared
//! capabilities. A driver knows paths and bytes, never digests, blobs or uploads: the layout,
//! digest verification and the commit protocol live above it in [`super::BlobStore`], written
//! once against this trait. What a backend can do beyond the minimum is declared in
//! [`Capabilities`]; no code outside a driver asks which backend it is.
//!
//! Paths are relative, `/`-separated and free of `.` and `..` segments: they come from the
//! store's layout, never from a request. A path naming a directory (`list`, `delete_all`) ends
//! with `/`.
//!
//! The contract every driver passes (`tests::contract` runs it against each one):
//! - An object appears whole at its path or not at all: [`DriverWriter::commit`] publishes what
//!   was written, [`DriverWriter::abort`] (or dropping the writer) leaves nothing, and `rename`,
//!   `copy` and `concat` publish their result in one step.
//! - A missing object is not an error for `stat` (`None`), `delete` and `delete_all`, nor for
//!   `list` (nothing); `read` and `read_all` fail with [`ErrorKind::NotFound`].
//! - A range handed to `read` lies within the object; one that does not is an error, at the
//!   latest when the stream gets there.
//! - Listings come in no particular order; callers sort when they need one.
//! - Durability: when `rename`, `copy`, `concat` or the commit of a [`Durability::Durable`] write
//!   return, their result survives a power loss. A [`Durability::Deferred`] write survives a crash
//!   of the process once committed, and a power loss only after [`Driver::sync`]; on backends that
//!   are durable on commit the two are the same and `sync` does nothing.

use std::fmt;
use std::io;
use std::ops::Range;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::Stream;

/// A stream of object bytes.
pub type ByteStream = std::pin::Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

pub type Result<T> = std::result::Result<T, DriverError>;

/// What a backend can do beyond the operations every driver has. Declared by the driver (for
/// OpenDAL backends, derived from the operator's own declared capabilities), constant for its
/// lifetime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// [`Driver::rename`] moves an object to another path in one atomic step.
    pub rename: bool,
    /// [`Driver::copy`] copies an object inside the backend, its bytes never passing through
    /// this process.
    pub copy: bool,
    /// [`Driver::concat`] writes the concatenation of objects inside the backend (the local disk:
    /// the kernel's `copy_file_range`).
    pub concat: bool,
    /// The smallest source of a [`Driver::concat`] but the last (S3's smallest part, 5 MiB); 0
    /// when there is none. The store concatenates only sources that meet it.
    pub concat_min_part: u64,
    /// A writer streams what it is given to the backend as it goes (appends, multipart uploads),
    /// holding at most a chunk in memory; without it a writer holds the whole object until its
    /// commit (the memory backend, whose objects live in memory anyway).
    pub streamed_writes: bool,
    /// [`Driver::presign_read`] hands out URLs a client can fetch an object from directly.
    pub presign_read: bool,
}

/// How durable a committed write must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// It survives a power loss once committed: anything published at a blob path.
    Durable,
    /// It survives a crash of the process once committed, and a power loss after
    /// [`Driver::sync`]: upload parts, which are synced when they are published.
    Deferred,
}

/// An object found by [`Driver::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the driver's root, like every path given to a driver.
    pub path: String,
    pub size: u64,
    /// When it was last written, where the backend records it.
    pub modified: Option<SystemTime>,
}

/// A backend that stores objects at paths. Object safe: the store holds an `Arc<dyn Driver>`.
///
/// `rename`, `copy` and `concat` are called only when [`Driver::capabilities`] declares them;
/// their default bodies refuse.
#[async_trait::async_trait]
pub trait Driver: Send + Sync + 'static {
    fn capabilities(&self) -> Capabilities;

    /// The size of the object at `path`, or `None` when there is none.
    async fn stat(&self, path: &str) -> Result<Option<u64>>;

    /// Streams `range` of the object at `path`.
    async fn read(&self, path: &str, range: Range<u64>) -> Result<ByteStream>;

    /// Reads a whole (small) object: a manifest, a link or marker file.
    async fn read_all(&self, path: &str) -> Result<Bytes>;

    /// Starts writing an object at `path`; it appears there when the writer is committed,
    /// replacing any object that was.
    async fn writer(&self, path: &str, durability: Durability) -> Result<Box<dyn DriverWriter>>;

    /// Makes an object committed with [`Durability::Deferred`] durable; a no-op where commits
    /// are durable.
    async fn sync(&self, path: &str) -> Result<()>;

    /// Moves the object at `from` to `to` atomically, replacing any object at `to`.
    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let _ = (from, to);
        Err(DriverError::unsupported("rename"))
    }

    /// Copies the object at `from` to `to` inside the backend.
    async fn copy(&self, from: &str, to: &str) -> Result<()> {
        let _ = (from, to);
        Err(DriverError::unsupported("copy"))
    }

    /// Writes the concatenation of `sources`, in order, as the object at `to`.
    async fn concat(&self, sources: &[String], to: &str) -> Result<()> {
        let _ = (sources, to);
        Err(DriverError::unsupported("concat"))
    }

    /// Removes the object at `path`; there being none is not an error.
    async fn delete(&self, path: &str) -> Result<()>;

    /// Removes every object below the directory `dir`.
    async fn delete_all(&self, dir: &str) -> Result<()>;

    /// Every object below the directory `dir`, recursively, in no particular order.
    async fn list(&self, dir: &str) -> Result<Vec<Entry>>;

    /// A URL from which the object at `path` can be read until `expires` from now, when the
    /// backend hands such URLs out (`None` otherwise).
    async fn presign_read(&self, path: &str, expires: Duration) -> Result<Option<url::Url>>;

    /// Removes what writes cut short by a crash left behind (temporary files) if older than
    /// `cutoff`; returns how many were removed. Backends that write whole objects or nothing
    /// have nothing to remove.
    async fn purge_temporaries(&self, cutoff: SystemTime) -> Result<usize>;
}

/// A write in progress. Exactly one of `commit` and `abort` ends it; a writer dropped without
/// either (its request was cancelled) leaves nothing at its path either.
#[async_trait::async_trait]
pub trait DriverWriter: Send {
    async fn write(&mut self, chunk: Bytes) -> Result<()>;

    /// Publishes what was written: the object appears whole at the writer's path. On failure
    /// nothing appears and nothing of the write is left behind.
    async fn commit(self: Box<Self>) -> Result<()>;

    /// Discards what was written.
    async fn abort(self: Box<Self>) -> Result<()>;
}

/// What went wrong, as far as callers need to tell cases apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The object (or a directory leading to it) does not exist.
    NotFound,
    /// A condition of the operation does not hold (the object exists, or changed).
    Precondition,
    /// The backend asks to slow down; retrying later may succeed.
    Throttled,
    /// The backend cannot be reached or failed temporarily; retrying later may succeed.
    Unavailable,
    /// The backend refused the credentials or the permission.
    Auth,
    /// No space left (or the quota is used up): nothing was written.
    Full,
    Other,
}

/// An error of a driver: its kind and what it was doing.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct DriverError {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl DriverError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> DriverError {
        DriverError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// An error of kind `kind` caused by `source`; the message says what was being done.
    pub fn caused(
        kind: ErrorKind,
        doing: impl fmt::Display,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> DriverError {
        DriverError {
            kind,
            message: format!("{doing}: {source}"),
            source: Some(Box::new(source)),
        }
    }

    /// An I/O error met while `doing` something (e.g. "reading PATH"), classified.
    pub fn io(e: io::Error, doing: impl fmt::Display) -> DriverError {
        let kind = match e.kind() {
            io::ErrorKind::NotFound => ErrorKind::NotFound,
            io::ErrorKind::PermissionDenied => ErrorKind::Auth,
            io::ErrorKind::AlreadyExists => ErrorKind::Precondition,
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => ErrorKind::Full,
            io::ErrorKind::TimedOut => ErrorKind::Unavailable,
            _ if is_full(&e) => ErrorKind::Full,
            _ => ErrorKind::Other,
        };
        DriverError::caused(kind, doing, e)
    }

    /// An operation the driver does not declare was called: a bug in the caller.
    pub fn unsupported(operation: &str) -> DriverError {
        DriverError::new(
            ErrorKind::Other,
            format!("the storage driver does not support {operation}"),
        )
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

/// The kind of error an object store's HTTP status says (for the calls made without OpenDAL).
pub(super) fn http_status_kind(status: u16) -> ErrorKind {
    match status {
        401 | 403 => ErrorKind::Auth,
        404 => ErrorKind::NotFound,
        409 | 412 => ErrorKind::Precondition,
        413 | 507 => ErrorKind::Full,
        // 498 is Swift's rate limiting.
        429 | 498 | 503 => ErrorKind::Throttled,
        s if s >= 500 => ErrorKind::Unavailable,
        _ => ErrorKind::Other,
    }
}

/// Removes every object below `dir` with one delete per object, `concurrency` at a time: the
/// `delete_all` of object stores (batch deletes are not offered by every S3 gateway). The root
/// itself is refused.
pub(super) async fn delete_each(
    driver: &(impl Driver + ?Sized),
    dir: &str,
    concurrency: usize,
) -> Result<()> {
    use futures::{StreamExt, TryStreamExt};
    if dir.trim_matches('/').is_empty() {
        return Err(DriverError::new(
            ErrorKind::Other,
            "refusing to delete everything below the storage root",
        ));
    }
    let entries = driver.list(dir).await?;
    futures::stream::iter(entries)
        .map(|entry| async move { driver.delete(&entry.path).await })
        .buffer_unordered(concurrency.max(1))
        .try_collect::<()>()
        .await
}

/// Whether an error (or one of its causes) says the device is full.
pub(super) fn is_full(e: &(dyn std::error::Error + 'static)) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<io::Error>() {
            if matches!(
                io.kind(),
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
            ) || matches!(io.raw_os_error(), Some(ENOSPC | EDQUOT))
            {
                return true;
            }
        }
        cause = c.source();
    }
    // Some backends keep only the message of the cause.
    e.to_string().contains("No space left on device")
}
