//! The local disk driver: objects are files below a root directory, with the fast paths only a
//! local disk has.
//!
//! - Reads are memory-mapped windows: bytes go from the page cache to the socket without a copy
//!   of ours, and memory stays bounded (one window per stream in flight).
//! - Writes go to a temporary file in `berth/tmp` (on the same file system as every object, so a
//!   rename publishes it). A [`Durability::Deferred`] write is renamed into place without an
//!   fsync: it needs only survive a crash of the process, which the page cache does; `sync` makes
//!   it durable when it is published. A durable write is fsynced, renamed, and the directories
//!   leading to it are synced.
//! - `concat` (and `copy`, a concatenation of one) lets the kernel copy (`copy_file_range`):
//!   the bytes never pass through this process.
//! - `rename` is one rename(2), made durable by syncing the directories leading to the target.
//!
//! Invariant: a file at an object's path is complete and is never written again: objects are
//! only ever published by a rename, replaced by another rename, or unlinked. That is what makes
//! mapping them safe. A write that fails, is aborted or is dropped removes its temporary file;
//! only a crash leaves one, for [`Driver::purge_temporaries`].

use std::io::{self, Write as _};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::driver::{
    ByteStream, Capabilities, Driver, DriverError, DriverWriter, Durability, Entry, ErrorKind,
    Result,
};
use super::IO_CHUNK;

/// Where writes in progress live, relative to the root.
const TEMPORARIES: &str = "berth/tmp";

/// How much of a file is mapped at a time when streaming it. Mapped pages count in the process's
/// resident set while a window is alive, so this bounds memory per download.
const MAP_WINDOW: u64 = 2 << 20;

/// Objects as files below a root directory.
#[derive(Debug)]
pub struct FsDriver {
    root: PathBuf,
    temporaries: PathBuf,
}

impl FsDriver {
    /// The driver for the directory `root`, created if missing (with its temporaries directory).
    pub fn open(root: &Path) -> Result<FsDriver> {
        let failed =
            |doing: &str, e| DriverError::io(e, format_args!("{doing} {}", root.display()));
        std::fs::create_dir_all(root).map_err(|e| failed("creating", e))?;
        let root = root.canonicalize().map_err(|e| failed("resolving", e))?;
        let temporaries = root.join(TEMPORARIES);
        std::fs::create_dir_all(&temporaries)
            .map_err(|e| DriverError::io(e, format_args!("creating {}", temporaries.display())))?;
        Ok(FsDriver { root, temporaries })
    }

    fn full(&self, path: &str) -> PathBuf {
        self.root.join(path)
    }

    /// A fresh name for a write in progress.
    fn temporary(&self) -> PathBuf {
        self.temporaries
            .join(uuid::Uuid::new_v4().simple().to_string())
    }
}

/// Runs file system calls on a blocking thread.
async fn blocking<T, F>(f: F) -> io::Result<T>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)?
}

#[async_trait::async_trait]
impl Driver for FsDriver {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            rename: true,
            copy: true,
            concat: true,
            concat_min_part: 0,
            streamed_writes: true,
            presign_read: false,
        }
    }

    async fn stat(&self, path: &str) -> Result<Option<u64>> {
        let full = self.full(path);
        let found = blocking(move || match std::fs::metadata(full) {
            // A directory is not an object.
            Ok(m) => Ok(m.is_file().then_some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        })
        .await;
        found.map_err(|e| DriverError::io(e, format_args!("stat {path}")))
    }

    async fn read(&self, path: &str, range: Range<u64>) -> Result<ByteStream> {
        mapped_stream(self.full(path), range)
            .await
            .map_err(|e| DriverError::io(e, format_args!("reading {path}")))
    }

    async fn read_all(&self, path: &str) -> Result<Bytes> {
        let full = self.full(path);
        let data = blocking(move || std::fs::read(full)).await;
        data.map(Bytes::from)
            .map_err(|e| DriverError::io(e, format_args!("reading {path}")))
    }

    async fn writer(&self, path: &str, durability: Durability) -> Result<Box<dyn DriverWriter>> {
        let temporary = self.temporary();
        let created = {
            let temporary = temporary.clone();
            blocking(move || std::fs::File::create(temporary)).await
        };
        let file = created
            .map_err(|e| DriverError::io(e, format_args!("creating {}", temporary.display())))?;
        Ok(Box::new(FsWriter {
            file: Arc::new(file),
            temporary,
            target: self.full(path),
            root: self.root.clone(),
            durability,
            buf: BytesMut::new(),
            done: false,
        }))
    }

    async fn sync(&self, path: &str) -> Result<()> {
        let full = self.full(path);
        let synced = blocking(move || std::fs::File::open(full)?.sync_data()).await;
        synced.map_err(|e| DriverError::io(e, format_args!("syncing {path}")))
    }

    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (source, target, root) = (self.full(from), self.full(to), self.root.clone());
        let renamed = blocking(move || {
            create_parent(&target)?;
            std::fs::rename(&source, &target)?;
            sync_dirs(&root, &target)
        })
        .await;
        renamed.map_err(|e| DriverError::io(e, format_args!("renaming {from} to {to}")))
    }

    async fn copy(&self, from: &str, to: &str) -> Result<()> {
        self.concat(&[from.to_string()], to).await
    }

    async fn concat(&self, sources: &[String], to: &str) -> Result<()> {
        let sources: Vec<PathBuf> = sources.iter().map(|s| self.full(s)).collect();
        let (temporary, target, root) = (self.temporary(), self.full(to), self.root.clone());
        let written = blocking(move || {
            let written = (|| {
                let mut out = std::fs::File::create(&temporary)?;
                for source in &sources {
                    // `io::copy` between files is `copy_file_range` on Linux.
                    io::copy(&mut std::fs::File::open(source)?, &mut out)?;
                }
                out.sync_data()?;
                create_parent(&target)?;
                std::fs::rename(&temporary, &target)?;
                sync_dirs(&root, &target)
            })();
            if written.is_err() {
                let _ = std::fs::remove_file(&temporary);
            }
            written
        })
        .await;
        written.map_err(|e| DriverError::io(e, format_args!("writing {to}")))
    }

    async fn delete(&self, path: &str) -> Result<()> {
        let full = self.full(path);
        let removed = blocking(move || match std::fs::remove_file(full) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        })
        .await;
        removed.map_err(|e| DriverError::io(e, format_args!("deleting {path}")))
    }

    async fn delete_all(&self, dir: &str) -> Result<()> {
        if dir.trim_matches('/').is_empty() {
            return Err(DriverError::new(
                ErrorKind::Other,
                "refusing to delete everything below the storage root",
            ));
        }
        let full = self.full(dir);
        let removed = blocking(move || match std::fs::remove_dir_all(full) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        })
        .await;
        removed.map_err(|e| DriverError::io(e, format_args!("deleting {dir}")))
    }

    async fn list(&self, dir: &str) -> Result<Vec<Entry>> {
        let rel = dir.trim_end_matches('/').to_string();
        let (start, skip) = (self.full(&rel), self.temporaries.clone());
        let listed = blocking(move || {
            let mut out = Vec::new();
            walk(&start, &rel, &skip, &mut out)?;
            Ok(out)
        })
        .await;
        listed.map_err(|e| DriverError::io(e, format_args!("listing {dir}")))
    }

    async fn presign_read(&self, _path: &str, _expires: Duration) -> Result<Option<url::Url>> {
        Ok(None)
    }

    async fn purge_temporaries(&self, cutoff: SystemTime) -> Result<usize> {
        let dir = self.temporaries.clone();
        let removed = blocking(move || {
            let mut removed = 0;
            let entries = match std::fs::read_dir(&dir) {
                Ok(d) => d,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                // A write that ends meanwhile removes or renames its file itself.
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                if meta.is_file() && meta.modified()? < cutoff {
                    match std::fs::remove_file(entry.path()) {
                        Ok(()) => removed += 1,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            Ok(removed)
        })
        .await;
        removed.map_err(|e| DriverError::io(e, format_args!("purging {TEMPORARIES}")))
    }
}

/// Collects the files below `dir` (whose path relative to the root is `rel`), skipping `skip`
/// (the temporaries). A directory that vanishes meanwhile holds nothing.
fn walk(dir: &Path, rel: &str, skip: &Path, out: &mut Vec<Entry>) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        // Every name the layout makes is UTF-8; anything else is not one of ours.
        let Some(name) = name.to_str() else {
            continue;
        };
        let path = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let kind = entry.file_type()?;
        if kind.is_dir() {
            let sub = entry.path();
            if sub != skip {
                walk(&sub, &path, skip, out)?;
            }
        } else if kind.is_file() {
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            out.push(Entry {
                path,
                size: meta.len(),
                modified: meta.modified().ok(),
            });
        }
    }
    Ok(())
}

fn create_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => std::fs::create_dir_all(dir),
        None => Ok(()),
    }
}

/// Makes the directory entries leading to `path` durable, up to and including `root` (a rename
/// or a new directory is durable only once its directory is synced).
fn sync_dirs(root: &Path, path: &Path) -> io::Result<()> {
    let mut dir = path.parent();
    while let Some(d) = dir {
        std::fs::File::open(d)?.sync_all()?;
        if d == root {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

/// A write to a temporary file, renamed into place by `commit`.
struct FsWriter {
    /// Shared with the blocking thread of a write in flight.
    file: Arc<std::fs::File>,
    temporary: PathBuf,
    target: PathBuf,
    root: PathBuf,
    durability: Durability,
    /// Bytes not yet written: small chunks are gathered into writes of [`IO_CHUNK`].
    buf: BytesMut,
    /// Committed or aborted: the temporary file is no longer this writer's to remove.
    done: bool,
}

impl FsWriter {
    /// Writes `data` on a blocking thread, handing it over (no copy).
    async fn write_out(&self, data: Bytes) -> Result<()> {
        let file = self.file.clone();
        let written = blocking(move || (&*file).write_all(&data)).await;
        written.map_err(|e| DriverError::io(e, format_args!("writing {}", self.target.display())))
    }

    async fn remove_temporary(&mut self) -> Result<()> {
        self.done = true;
        let temporary = self.temporary.clone();
        let removed = blocking(move || match std::fs::remove_file(temporary) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        })
        .await;
        removed
            .map_err(|e| DriverError::io(e, format_args!("removing {}", self.temporary.display())))
    }
}

#[async_trait::async_trait]
impl DriverWriter for FsWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        if self.buf.is_empty() {
            if chunk.len() >= IO_CHUNK {
                // Large enough on its own: written as it is, without gathering it first.
                return self.write_out(chunk).await;
            }
            self.buf.reserve(IO_CHUNK);
        }
        self.buf.extend_from_slice(&chunk);
        if self.buf.len() >= IO_CHUNK {
            let data = std::mem::take(&mut self.buf).freeze();
            self.write_out(data).await?;
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        if !self.buf.is_empty() {
            let data = std::mem::take(&mut self.buf).freeze();
            if let Err(e) = self.write_out(data).await {
                let _ = self.remove_temporary().await;
                return Err(e);
            }
        }
        // From here the blocking thread finishes the write (or removes the file) even if this
        // future is dropped.
        self.done = true;
        let durable = self.durability == Durability::Durable;
        let (file, temporary, target, root) = (
            self.file.clone(),
            self.temporary.clone(),
            self.target.clone(),
            self.root.clone(),
        );
        let published = blocking(move || {
            // Write-then-publish: durable data first, then the rename, then its directories.
            let published = (|| {
                if durable {
                    file.sync_data()?;
                }
                create_parent(&target)?;
                // A rename can fail for want of space too (a directory that must grow).
                std::fs::rename(&temporary, &target)?;
                if durable {
                    sync_dirs(&root, &target)?;
                }
                Ok(())
            })();
            if published.is_err() {
                let _ = std::fs::remove_file(&temporary);
            }
            published
        })
        .await;
        published
            .map_err(|e| DriverError::io(e, format_args!("publishing {}", self.target.display())))
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.remove_temporary().await
    }
}

impl Drop for FsWriter {
    fn drop(&mut self) {
        if !self.done {
            // Neither committed nor aborted: the request writing was cancelled. One unlink, on
            // this path only.
            let _ = std::fs::remove_file(&self.temporary);
        }
    }
}

/// Maps `len` bytes of `file` from `offset`, with the pages read in up front.
fn map_window(file: &std::fs::File, offset: u64, len: u64) -> io::Result<Bytes> {
    // SAFETY: objects are immutable once at their path: never written again and never truncated
    // (see the module's invariant; removing one unlinks it, which leaves an open mapping intact),
    // so the mapped bytes cannot change or vanish while the `Bytes` that owns the mapping lives.
    let map = unsafe {
        memmap2::MmapOptions::new()
            .offset(offset)
            .len(len as usize)
            .populate()
            .map(file)?
    };
    Ok(Bytes::from_owner(map))
}

/// Streams a range of a file as memory-mapped windows.
async fn mapped_stream(path: PathBuf, range: Range<u64>) -> io::Result<ByteStream> {
    if range.start > range.end {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the range {}..{} ends before it starts",
                range.start, range.end
            ),
        ));
    }
    let first_len = (range.end - range.start).min(MAP_WINDOW);
    let (file, first) = blocking(move || {
        let file = std::fs::File::open(&path)?;
        // Mapping past the end of a file faults on access: refuse ranges the file does not hold.
        let len = file.metadata()?.len();
        if len < range.end {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("it holds {len} bytes, {} requested", range.end),
            ));
        }
        let first = if first_len > 0 {
            map_window(&file, range.start, first_len)?
        } else {
            Bytes::new()
        };
        Ok((Arc::new(file), first))
    })
    .await?;
    let end = range.end;
    let rest = futures::stream::try_unfold(range.start + first_len, move |pos| {
        let file = file.clone();
        async move {
            if pos >= end {
                return Ok(None);
            }
            let len = (end - pos).min(MAP_WINDOW);
            let window = blocking(move || map_window(&file, pos, len)).await?;
            Ok(Some((window, pos + len)))
        }
    });
    let head = futures::stream::iter((first_len > 0).then_some(Ok(first)));
    Ok(Box::pin(head.chain(rest)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temporaries(root: &Path) -> usize {
        std::fs::read_dir(root.join(TEMPORARIES)).unwrap().count()
    }

    #[tokio::test]
    async fn every_way_a_write_ends_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let driver = FsDriver::open(dir.path()).unwrap();
        for durability in [Durability::Durable, Durability::Deferred] {
            let mut w = driver.writer("a/b", durability).await.unwrap();
            w.write(Bytes::from_static(b"partial")).await.unwrap();
            w.write(Bytes::from(vec![7u8; IO_CHUNK])).await.unwrap();
            assert_eq!(temporaries(dir.path()), 1, "writes go to berth/tmp first");
            assert!(!dir.path().join("a/b").exists());
            w.abort().await.unwrap();
            assert_eq!(temporaries(dir.path()), 0, "aborted");

            let mut w = driver.writer("a/b", durability).await.unwrap();
            w.write(Bytes::from_static(b"partial")).await.unwrap();
            drop(w);
            assert_eq!(temporaries(dir.path()), 0, "dropped");
            assert!(!dir.path().join("a/b").exists());

            let mut w = driver.writer("a/b", durability).await.unwrap();
            w.write(Bytes::from_static(b"whole")).await.unwrap();
            w.commit().await.unwrap();
            assert_eq!(temporaries(dir.path()), 0, "committed");
            assert_eq!(std::fs::read(dir.path().join("a/b")).unwrap(), b"whole");
            std::fs::remove_file(dir.path().join("a/b")).unwrap();
        }

        // A commit that cannot publish (the target's parent is a file) removes its file too.
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        let mut w = driver.writer("file/b", Durability::Durable).await.unwrap();
        w.write(Bytes::from_static(b"whole")).await.unwrap();
        assert!(w.commit().await.is_err());
        assert_eq!(temporaries(dir.path()), 0, "failed commit");
        assert!(driver
            .concat(&["file".to_string()], "file/c")
            .await
            .is_err());
        assert_eq!(temporaries(dir.path()), 0, "failed concatenation");
    }

    #[tokio::test]
    async fn writes_in_progress_are_not_listed_and_stale_ones_are_purged() {
        let dir = tempfile::tempdir().unwrap();
        let driver = FsDriver::open(dir.path()).unwrap();
        let mut w = driver
            .writer("berth/x", Durability::Deferred)
            .await
            .unwrap();
        w.write(Bytes::from_static(b"open")).await.unwrap();
        assert!(driver.list("berth/").await.unwrap().is_empty());
        assert!(driver.list("").await.unwrap().is_empty());

        // What a crash leaves: a temporary file nobody will commit.
        std::fs::write(dir.path().join(TEMPORARIES).join("left"), b"x").unwrap();
        assert_eq!(temporaries(dir.path()), 2);
        assert_eq!(
            driver
                .purge_temporaries(SystemTime::UNIX_EPOCH)
                .await
                .unwrap(),
            0
        );
        let later = SystemTime::now() + Duration::from_secs(3600);
        assert_eq!(driver.purge_temporaries(later).await.unwrap(), 2);
        assert_eq!(temporaries(dir.path()), 0);
        // The writer whose file was purged fails to publish and leaves nothing.
        assert!(w.commit().await.is_err());
        assert_eq!(driver.stat("berth/x").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_path_through_a_file_is_an_error_not_a_missing_object() {
        // What the storage probe relies on to report a broken root.
        let dir = tempfile::tempdir().unwrap();
        let driver = FsDriver::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("docker"), b"not a directory").unwrap();
        let e = driver.stat("docker/registry/v2/x").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Other, "{e}");
        assert!(driver.read("docker/x", 0..0).await.is_err());
    }
}
