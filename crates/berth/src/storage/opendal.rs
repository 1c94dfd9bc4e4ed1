//! A driver over any OpenDAL operator: the memory backend, and the object stores (S3, Swift,
//! Azure, GCS, OSS) that `backends.rs` opens from the configuration.
//!
//! Capabilities are the operator's own declared ones, never guessed from its scheme. Objects
//! appear whole: an OpenDAL writer publishes on close (one put, or the completion of a multipart
//! upload) and its abort discards; the services this driver is for make a copy or a rename
//! appear whole too (a large copy on S3 is a multipart copy, completed in one step). They are
//! durable when a write completes, so `sync` does nothing. Only the basic calls are made:
//! deletes go one object at a time (no batch delete, which some S3 gateways lack), and listings
//! are taken in whatever order the backend returns them.

use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use opendal::layers::RetryLayer;
use opendal::{services, Operator};

use super::driver::{
    delete_each, is_full, ByteStream, Capabilities, Driver, DriverError, DriverWriter, Durability,
    Entry, ErrorKind, Result,
};
use super::s3::MultipartUploads;
use super::IO_CHUNK;

/// Objects in an OpenDAL operator.
#[derive(Debug)]
pub struct OpenDalDriver {
    op: Operator,
    capabilities: Capabilities,
    tuning: Tuning,
    /// The multipart uploads of an S3 bucket, aborted by `purge_temporaries` when stale.
    multipart: Option<MultipartUploads>,
}

/// How the driver sizes and spreads its transfers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// The size of the pieces a writer sends: the part size of a multipart upload (at least the
    /// backend's minimum, 5 MiB on S3). A writer holds up to `write_concurrency` of them.
    pub write_chunk: usize,
    /// Parts of one write in flight at once.
    pub write_concurrency: usize,
    /// The part size of a server-side copy done in parts (S3's multipart copy); `None` copies in
    /// one call up to the backend's limit (5 GiB on S3) and in parts of that limit beyond it.
    pub copy_chunk: Option<usize>,
    /// Parts of one copy in flight at once.
    pub copy_concurrency: usize,
    /// Objects deleted at once when a directory is removed (one call per object).
    pub delete_concurrency: usize,
    /// The size of each request a read is cut into; `None` reads a range with one streamed
    /// request (what object stores serve fastest).
    pub read_chunk: Option<usize>,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            write_chunk: IO_CHUNK,
            write_concurrency: 1,
            copy_chunk: None,
            copy_concurrency: 1,
            delete_concurrency: 8,
            read_chunk: Some(IO_CHUNK),
        }
    }
}

impl OpenDalDriver {
    pub fn new(op: Operator) -> OpenDalDriver {
        OpenDalDriver::with_tuning(op, Tuning::default())
    }

    pub fn with_tuning(op: Operator, tuning: Tuning) -> OpenDalDriver {
        let c = op.info().capability();
        let capabilities = Capabilities {
            rename: c.rename,
            copy: c.copy,
            // S3's composition is made here, not by OpenDAL: see `with_multipart`.
            concat: false,
            concat_min_part: 0,
            streamed_writes: c.write_can_multi || c.write_can_append,
            presign_read: c.presign_read,
        };
        OpenDalDriver {
            op,
            capabilities,
            tuning,
            multipart: None,
        }
    }

    /// The S3 calls OpenDAL does not make, on this driver's bucket: `concat` composes objects
    /// inside the bucket (a multipart upload of server-side part copies), and
    /// `purge_temporaries` aborts the multipart uploads that writes cut short by a crash left
    /// open.
    pub fn with_multipart(mut self, uploads: MultipartUploads) -> OpenDalDriver {
        self.multipart = Some(uploads);
        self.capabilities.concat = true;
        self.capabilities.concat_min_part = super::s3::MIN_PART;
        self
    }

    /// A driver over a fresh in-memory operator.
    pub fn memory() -> Result<OpenDalDriver> {
        let op = Operator::new(services::Memory::default()).map_err(failed("opening memory"))?;
        Ok(OpenDalDriver::new(op))
    }
}

/// The retry policy of every object store: up to 6 retries, 100 ms doubling to 10 s, jittered.
pub(super) fn with_retries(op: Operator) -> Operator {
    op.layer(
        RetryLayer::new()
            .with_jitter()
            .with_max_times(6)
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(10)),
    )
}

/// An operator whose HTTP client skips certificate verification (`skipverify`,
/// `insecureskipverify`).
pub(super) fn without_certificate_checks(op: Operator) -> Result<Operator> {
    let client = reqwest_opendal::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .map_err(|e| DriverError::caused(ErrorKind::Other, "building the HTTP client", e))?;
    let transport = opendal::HttpTransporter::new(
        opendal_http_transport_reqwest::ReqwestTransport::new(client),
    );
    let ctx = op.context().with_http_transport(transport);
    Ok(op.with_context(ctx))
}

/// Classifies an OpenDAL error met while `doing` something.
fn failed(doing: &'static str) -> impl Fn(opendal::Error) -> DriverError {
    move |e| {
        use opendal::ErrorKind as K;
        let kind = match e.kind() {
            K::NotFound => ErrorKind::NotFound,
            _ if is_full(&e) => ErrorKind::Full,
            K::ConditionNotMatch | K::AlreadyExists => ErrorKind::Precondition,
            K::RateLimited => ErrorKind::Throttled,
            K::PermissionDenied => ErrorKind::Auth,
            _ if e.is_temporary() => ErrorKind::Unavailable,
            _ => ErrorKind::Other,
        };
        DriverError::caused(kind, doing, e)
    }
}

/// Classifies an error of a byte stream, the OpenDAL error inside it when there is one.
fn stream_error(e: io::Error) -> DriverError {
    match e.downcast::<opendal::Error>() {
        Ok(e) => failed("read")(e),
        Err(e) => DriverError::io(e, "read"),
    }
}

fn is_not_found(e: &opendal::Error) -> bool {
    e.kind() == opendal::ErrorKind::NotFound
}

#[async_trait::async_trait]
impl Driver for OpenDalDriver {
    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    async fn stat(&self, path: &str) -> Result<Option<u64>> {
        match self.op.stat(path).await {
            Ok(m) if m.is_dir() => Ok(None),
            Ok(m) => Ok(Some(m.content_length())),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(failed("stat")(e)),
        }
    }

    async fn read(&self, path: &str, range: Range<u64>) -> Result<ByteStream> {
        if range.start > range.end {
            return Err(DriverError::new(
                ErrorKind::Other,
                format!(
                    "reading {path}: the range {}..{} ends before it starts",
                    range.start, range.end
                ),
            ));
        }
        let len = range.end - range.start;
        if len == 0 {
            // Nothing to fetch, so nothing would tell a missing object from an empty range.
            return match self.stat(path).await? {
                Some(size) if range.end <= size => Ok(Box::pin(futures::stream::empty())),
                Some(size) => Err(DriverError::new(
                    ErrorKind::Other,
                    format!(
                        "reading {path}: it holds {size} bytes, {} requested",
                        range.end
                    ),
                )),
                None => Err(DriverError::new(
                    ErrorKind::NotFound,
                    format!("reading {path}: not found"),
                )),
            };
        }
        let mut reader = self.op.reader_with(path);
        if let Some(chunk) = self.tuning.read_chunk {
            reader = reader.chunk(chunk);
        }
        let mut stream = reader
            .await
            .map_err(failed("read"))?
            .into_bytes_stream(range)
            .await
            .map_err(failed("read"))?;
        // OpenDAL opens the object on the first poll: wait for the first chunk, so that a missing
        // object is an error of `read` rather than of the stream.
        let first = stream.try_next().await.map_err(stream_error)?;
        Ok(Box::pin(ExactLength {
            inner: futures::stream::iter(first.map(Ok)).chain(stream),
            remaining: len,
            path: path.to_string(),
            ended: false,
        }))
    }

    async fn read_all(&self, path: &str) -> Result<Bytes> {
        let buf = self.op.read(path).await.map_err(failed("read"))?;
        Ok(buf.to_bytes())
    }

    async fn writer(&self, path: &str, _durability: Durability) -> Result<Box<dyn DriverWriter>> {
        let w = self
            .op
            .writer_with(path)
            .chunk(self.tuning.write_chunk)
            .concurrent(self.tuning.write_concurrency)
            .await
            .map_err(failed("write"))?;
        Ok(Box::new(OpenDalWriter { w }))
    }

    async fn sync(&self, _path: &str) -> Result<()> {
        Ok(())
    }

    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        if !self.capabilities.rename {
            return Err(DriverError::unsupported("rename"));
        }
        self.op.rename(from, to).await.map_err(failed("rename"))
    }

    async fn copy(&self, from: &str, to: &str) -> Result<()> {
        if !self.capabilities.copy {
            return Err(DriverError::unsupported("copy"));
        }
        let mut copy = self
            .op
            .copier_with(from, to)
            .concurrent(self.tuning.copy_concurrency);
        if let Some(chunk) = self.tuning.copy_chunk {
            copy = copy.chunk(chunk);
        }
        let mut copier = copy.await.map_err(failed("copy"))?;
        if let Err(e) = copier.close().await {
            // A multipart copy cut short leaves parts behind until it is aborted.
            let _ = copier.abort().await;
            return Err(failed("copy")(e));
        }
        Ok(())
    }

    async fn concat(&self, sources: &[String], to: &str) -> Result<()> {
        let Some(uploads) = &self.multipart else {
            return Err(DriverError::unsupported("concat"));
        };
        let mut sized = Vec::with_capacity(sources.len());
        for source in sources {
            let size = self.stat(source).await?.ok_or_else(|| {
                DriverError::new(
                    ErrorKind::NotFound,
                    format!("concatenating {source}: not found"),
                )
            })?;
            if size > 0 {
                sized.push((source.clone(), size));
            }
        }
        // A last piece below the smallest part is uploaded, not copied: it is read (at most
        // 5 MiB), the rest stays in the bucket.
        let tail = match sized.last() {
            Some((last, size)) if *size < super::s3::MIN_PART => {
                let bytes = self.read_all(last).await?;
                sized.pop();
                Some(bytes)
            }
            _ => None,
        };
        uploads.compose(&sized, tail, to).await
    }

    async fn delete(&self, path: &str) -> Result<()> {
        match self.op.delete(path).await {
            Err(e) if !is_not_found(&e) => Err(failed("delete")(e)),
            _ => Ok(()),
        }
    }

    async fn delete_all(&self, dir: &str) -> Result<()> {
        delete_each(self, dir, self.tuning.delete_concurrency).await
    }

    async fn list(&self, dir: &str) -> Result<Vec<Entry>> {
        let dir = directory(dir);
        let mut lister = self
            .op
            .lister_with(&dir)
            .recursive(true)
            .await
            .map_err(failed("list"))?;
        let mut out = Vec::new();
        while let Some(entry) = lister.try_next().await.map_err(failed("list"))? {
            let meta = entry.metadata();
            if meta.is_dir() {
                continue;
            }
            // Listings of object stores carry size and time; others (memory) only the path.
            let (size, modified) = if meta.is_file() && meta.last_modified().is_some() {
                (meta.content_length(), meta.last_modified())
            } else {
                match self.op.stat(entry.path()).await {
                    Ok(m) if m.is_dir() => continue,
                    Ok(m) => (m.content_length(), m.last_modified()),
                    // Deleted since it was listed.
                    Err(e) if is_not_found(&e) => continue,
                    Err(e) => return Err(failed("stat")(e)),
                }
            };
            out.push(Entry {
                path: entry.path().to_string(),
                size,
                modified: modified.map(SystemTime::from),
            });
        }
        Ok(out)
    }

    async fn presign_read(&self, path: &str, expires: Duration) -> Result<Option<url::Url>> {
        if !self.capabilities.presign_read {
            return Ok(None);
        }
        let req = self
            .op
            .presign_read(path, expires)
            .await
            .map_err(failed("presign"))?;
        // A URL alone does not carry headers: a request that needs some cannot be handed out.
        if !req.header().is_empty() {
            return Ok(None);
        }
        let url = url::Url::parse(&req.uri().to_string()).map_err(|e| {
            DriverError::caused(ErrorKind::Other, "the presigned URL of the backend", e)
        })?;
        Ok(Some(url))
    }

    async fn purge_temporaries(&self, cutoff: SystemTime) -> Result<usize> {
        match &self.multipart {
            Some(uploads) => uploads.abort_older_than("", cutoff).await,
            None => Ok(0),
        }
    }
}

/// `dir` with the trailing `/` OpenDAL uses to name a directory (a prefix of objects).
fn directory(dir: &str) -> String {
    if dir.is_empty() || dir.ends_with('/') {
        dir.to_string()
    } else {
        format!("{dir}/")
    }
}

struct OpenDalWriter {
    w: opendal::Writer,
}

#[async_trait::async_trait]
impl DriverWriter for OpenDalWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.w.write(chunk).await.map_err(failed("write"))
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        match self.w.close().await {
            Ok(_) => Ok(()),
            Err(e) => {
                // OpenDAL discards an unfinished write only when asked to. The write has failed
                // already: an abort that fails too changes nothing about what the caller is told.
                let _ = self.w.abort().await;
                Err(failed("write")(e))
            }
        }
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.w.abort().await.map_err(failed("abort"))
    }
}

/// A stream of the `remaining` bytes expected from the backend: one that ends early fails instead
/// of passing for the whole range (a truncated response, a range past the end of the object).
struct ExactLength<S> {
    inner: S,
    remaining: u64,
    path: String,
    ended: bool,
}

impl<S> Stream for ExactLength<S>
where
    S: Stream<Item = io::Result<Bytes>> + Unpin,
{
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let next = ready!(Pin::new(&mut self.inner).poll_next(cx));
        Poll::Ready(match next {
            Some(Ok(chunk)) => {
                self.remaining = self.remaining.saturating_sub(chunk.len() as u64);
                Some(Ok(chunk))
            }
            Some(Err(e)) => {
                self.ended = true;
                Some(Err(e))
            }
            None => {
                self.ended = true;
                (self.remaining > 0).then(|| {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{}: {} bytes missing", self.path, self.remaining),
                    ))
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opendal_errors_are_classified() {
        use opendal::{Error, ErrorKind as K};
        let full =
            Error::new(K::Unexpected, "write failed").set_source(io::Error::from_raw_os_error(28));
        let cases = [
            (Error::new(K::NotFound, "gone"), ErrorKind::NotFound),
            (
                Error::new(K::ConditionNotMatch, "etag"),
                ErrorKind::Precondition,
            ),
            (
                Error::new(K::AlreadyExists, "exists"),
                ErrorKind::Precondition,
            ),
            (
                Error::new(K::RateLimited, "slow down"),
                ErrorKind::Throttled,
            ),
            (Error::new(K::PermissionDenied, "denied"), ErrorKind::Auth),
            (full, ErrorKind::Full),
            (
                Error::new(K::Unexpected, "connection reset").set_temporary(),
                ErrorKind::Unavailable,
            ),
            (Error::new(K::Unexpected, "500"), ErrorKind::Other),
        ];
        for (e, kind) in cases {
            let shown = e.to_string();
            assert_eq!(failed("op")(e).kind(), kind, "{shown}");
        }
    }
}
