//! Copying images between this registry and a remote one, blob by blob and byte for byte:
//! manifests and indexes are sent as they are stored (never re-serialised), so digests are the
//! same on both sides. What the other side has already is skipped; blobs stream in bounded
//! chunks, and an interrupted upload continues from what the destination acknowledged.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use reqwest::Method;

use crate::meta::{Change, MetaStore};
use crate::oci::digest::Digest;
use crate::oci::manifest;
use crate::oci::name::{Reference, RepoName, Tag};
use crate::registry::{Registry, RegistryError};
use crate::remote::client::{manifest_accept, Call};
use crate::remote::{Client, ClientError};

/// The largest piece of a blob sent (and held in memory) at once.
pub const CHUNK: u64 = 8 << 20;

/// Why a copy did not finish.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Worth trying again later: the other side is down, slow or refusing for now.
    #[error("{0}")]
    Retry(String),
    /// Trying again will not help (a refusal, content the other side rejects).
    #[error("{0}")]
    GiveUp(String),
}

impl From<ClientError> for CopyError {
    fn from(e: ClientError) -> CopyError {
        match e {
            ClientError::Unavailable(why) => CopyError::Retry(why),
            ClientError::Refused(why) => CopyError::GiveUp(why),
            ClientError::NotFound => CopyError::GiveUp("the remote answered 404".into()),
        }
    }
}

impl From<RegistryError> for CopyError {
    fn from(e: RegistryError) -> CopyError {
        match e {
            e @ (RegistryError::Unavailable(_) | RegistryError::StorageFull(_)) => {
                CopyError::Retry(e.to_string())
            }
            e => CopyError::GiveUp(e.to_string()),
        }
    }
}

type Result<T> = std::result::Result<T, CopyError>;

/// What a copy moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    /// Manifests sent (an index and each of its children count).
    pub manifests: u64,
    pub bytes: u64,
}

impl Copied {
    fn add(&mut self, other: Copied) {
        self.manifests += other.manifests;
        self.bytes += other.bytes;
    }
}

/// Uploads under way to a remote, by (repository, digest): where each continues. Kept in the
/// metadata store too (a setting per upload), so that an upload interrupted by this process's
/// end continues where the remote says it got to, on whichever instance copies next.
pub struct Uploads<'a> {
    meta: &'a dyn MetaStore,
    /// The rule copying (the settings' keys).
    rule: &'a str,
    at: Mutex<HashMap<(String, Digest), url::Url>>,
    /// Where on the remote each blob was last sent, to mount it from there.
    sent: Mutex<HashMap<Digest, String>>,
}

impl<'a> Uploads<'a> {
    pub fn new(meta: &'a dyn MetaStore, rule: &'a str) -> Uploads<'a> {
        Uploads {
            meta,
            rule,
            at: Mutex::new(HashMap::new()),
            sent: Mutex::new(HashMap::new()),
        }
    }

    fn key(&self, to: &str, digest: &Digest) -> String {
        format!("replication/upload/{}/{to}/{digest}", self.rule)
    }

    /// Where the upload of `digest` to `to` continues, if one was under way.
    async fn resume_point(&self, to: &str, digest: &Digest) -> Option<url::Url> {
        let key = (to.to_string(), digest.clone());
        if let Some(at) = self.at.lock().unwrap().get(&key) {
            return Some(at.clone());
        }
        let stored = self
            .meta
            .setting(&self.key(to, digest))
            .await
            .ok()
            .flatten()?;
        url::Url::parse(&stored).ok()
    }

    /// Notes where the upload of `digest` to `to` continues (best effort: without it, the
    /// upload starts over).
    async fn note(&self, to: &str, digest: &Digest, at: &url::Url) {
        self.at
            .lock()
            .unwrap()
            .insert((to.to_string(), digest.clone()), at.clone());
        let change = Change::SetSetting {
            key: self.key(to, digest),
            value: Some(at.to_string()),
        };
        if let Err(e) = self.meta.apply(vec![change]).await {
            tracing::debug!(error = %e, "could not note where an upload continues");
        }
    }

    /// Forgets the upload of `digest` to `to` (finished, or unknown to the remote).
    async fn forget(&self, to: &str, digest: &Digest) {
        self.at
            .lock()
            .unwrap()
            .remove(&(to.to_string(), digest.clone()));
        let change = Change::SetSetting {
            key: self.key(to, digest),
            value: None,
        };
        if let Err(e) = self.meta.apply(vec![change]).await {
            tracing::debug!(error = %e, "could not forget a finished upload");
        }
    }
}

/// Copies of this registry's content to one remote.
pub struct Push<'a> {
    pub core: &'a Registry,
    pub remote: &'a Client,
    pub uploads: &'a Uploads<'a>,
    /// The registry the content was first pushed to, carried to the remote.
    pub origin: &'a str,
    /// The rule copying (metrics).
    pub rule: &'a str,
}

impl Push<'_> {
    /// Copies the manifest `digest` of `from` (with everything it references) to `to`, under
    /// `tag` when given. Nothing is sent when the remote has it there already.
    pub async fn manifest(
        &self,
        from: &RepoName,
        to: &str,
        digest: &Digest,
        tag: Option<&Tag>,
    ) -> Result<Copied> {
        let scope = format!("repository:{to}:pull,push");
        let reference = match tag {
            Some(t) => t.to_string(),
            None => digest.to_string(),
        };
        if self.remote_has(to, &reference, digest, &scope).await? {
            return Ok(Copied::default());
        }
        let (descriptor, bytes) = self
            .core
            .replica_manifest(from, &Reference::Digest(digest.clone()))
            .await?;
        let parsed = manifest::parse(Some(&descriptor.media_type), &bytes)
            .map_err(|e| CopyError::GiveUp(format!("{from}@{digest}: {e}")))?;
        let mut copied = Copied::default();
        for child in &parsed.children {
            match Box::pin(self.manifest(from, to, &child.digest, None)).await {
                Ok(c) => copied.add(c),
                // An index may list what this registry does not hold (a sparse index).
                Err(CopyError::GiveUp(why)) if self.absent(from, &child.digest).await => {
                    tracing::debug!(%from, child = %child.digest, %why, "not copying an absent child");
                }
                Err(e) => return Err(e),
            }
        }
        for blob in &parsed.blobs {
            copied.bytes += self.blob(from, to, blob, &scope).await?;
        }
        let mut put = Call::new(
            Method::PUT,
            self.remote.url(&format!("{to}/manifests/{reference}"))?,
            &scope,
        );
        put.content_type = Some(&descriptor.media_type);
        put.body = Some(bytes.clone());
        put.headers
            .push(("berth-replication-origin", self.origin.to_string()));
        let answer = self.remote.call(put).await?;
        if let Some(d) = answer.digest() {
            if &d != digest {
                return Err(CopyError::GiveUp(format!(
                    "{} stored {to}:{reference} as {d}, not {digest}: it changed the manifest",
                    self.remote.endpoint().name
                )));
            }
        }
        copied.manifests += 1;
        copied.bytes += bytes.len() as u64;
        Ok(copied)
    }

    async fn absent(&self, from: &RepoName, digest: &Digest) -> bool {
        matches!(
            self.core
                .replica_manifest(from, &Reference::Digest(digest.clone()))
                .await,
            Err(RegistryError::ManifestUnknown(_) | RegistryError::NameUnknown(_))
        )
    }

    /// Whether the remote has `to:reference` as `digest`.
    async fn remote_has(
        &self,
        to: &str,
        reference: &str,
        digest: &Digest,
        scope: &str,
    ) -> Result<bool> {
        let accept = manifest_accept();
        let mut head = Call::new(
            Method::HEAD,
            self.remote.url(&format!("{to}/manifests/{reference}"))?,
            scope,
        );
        head.accept = Some(&accept);
        match self.remote.call(head).await {
            Ok(answer) => Ok(answer.digest().as_ref() == Some(digest)),
            Err(ClientError::NotFound) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Sends the blob `digest` of `from` to `to` unless it is there; returns the bytes sent.
    async fn blob(&self, from: &RepoName, to: &str, digest: &Digest, scope: &str) -> Result<u64> {
        let head = Call::new(
            Method::HEAD,
            self.remote.url(&format!("{to}/blobs/{digest}"))?,
            scope,
        );
        match self.remote.call(head).await {
            Ok(_) => return Ok(0),
            Err(ClientError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        let size = match self.core.blob_size(from, digest).await {
            Ok(size) => size,
            // A layer the image lists but this registry never had (pushed sparse).
            Err(RegistryError::BlobUnknown(_)) => {
                tracing::debug!(%from, %digest, "not copying a blob this registry does not hold");
                return Ok(0);
            }
            Err(e) => return Err(e.into()),
        };
        let resumed = self.uploads.resume_point(to, digest).await;
        let (mut location, mut offset) = match resumed {
            Some(at) => match self.upload_offset(&at, scope).await? {
                Some(offset) => (at, offset),
                None => self.start_upload(to, digest, scope).await?,
            },
            None => self.start_upload(to, digest, scope).await?,
        };
        if offset == u64::MAX {
            // Mounted from where it was sent before.
            self.uploads.forget(to, digest).await;
            return Ok(0);
        }
        self.uploads.note(to, digest, &location).await;
        let sent_from = offset;
        while offset < size {
            let end = (offset + CHUNK).min(size);
            let chunk = self.read(from, digest, offset, end).await?;
            let mut patch = Call::new(Method::PATCH, location.clone(), scope);
            patch.content_type = Some("application/octet-stream");
            patch
                .headers
                .push(("content-range", format!("{offset}-{}", end - 1)));
            let chunk_len = chunk.len() as u64;
            patch.body = Some(chunk);
            let answer = self.remote.call(patch).await?;
            location = self.remote.location(&answer)?;
            offset = end;
            self.uploads.note(to, digest, &location).await;
            metrics::counter!("berth_replication_bytes_total", "rule" => self.rule.to_string())
                .increment(chunk_len);
        }
        let mut finish = location.clone();
        finish
            .query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let mut put = Call::new(Method::PUT, finish, scope);
        put.content_type = Some("application/octet-stream");
        put.body = Some(Bytes::new());
        self.remote.call(put).await?;
        self.uploads.forget(to, digest).await;
        self.uploads
            .sent
            .lock()
            .unwrap()
            .insert(digest.clone(), to.to_string());
        Ok(size - sent_from)
    }

    /// Starts an upload of `digest` to `to`, mounting it from where it was sent before when
    /// the remote lets it (then the offset is `u64::MAX`).
    async fn start_upload(
        &self,
        to: &str,
        digest: &Digest,
        scope: &str,
    ) -> Result<(url::Url, u64)> {
        let mut url = self.remote.url(&format!("{to}/blobs/uploads/"))?;
        let from = self.uploads.sent.lock().unwrap().get(digest).cloned();
        if let Some(from) = from.filter(|f| f != to) {
            url.query_pairs_mut()
                .append_pair("mount", &digest.to_string())
                .append_pair("from", &from);
        }
        let answer = self
            .remote
            .call(Call::new(Method::POST, url, scope))
            .await?;
        let mounted = answer.status() == reqwest::StatusCode::CREATED;
        let location = self.remote.location(&answer)?;
        Ok((location, if mounted { u64::MAX } else { 0 }))
    }

    /// How much of an upload the remote holds (`None`: it no longer knows the upload).
    async fn upload_offset(&self, at: &url::Url, scope: &str) -> Result<Option<u64>> {
        match self
            .remote
            .call(Call::new(Method::GET, at.clone(), scope))
            .await
        {
            Ok(answer) => {
                // `Range: 0-N` holds N+1 bytes; `0-0` may mean none (Distribution's form).
                let end = answer
                    .header("range")
                    .and_then(|r| r.split_once('-'))
                    .and_then(|(_, end)| end.trim().parse::<u64>().ok());
                Ok(Some(match end {
                    Some(0) | None => 0,
                    Some(end) => end + 1,
                }))
            }
            Err(ClientError::NotFound) => Ok(None),
            Err(ClientError::Refused(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn read(&self, from: &RepoName, digest: &Digest, start: u64, end: u64) -> Result<Bytes> {
        let mut stream = self.core.replica_blob(from, digest, start..end).await?;
        let mut buf = BytesMut::with_capacity((end - start) as usize);
        while let Some(piece) = stream.next().await {
            let piece = piece.map_err(|e| CopyError::Retry(format!("reading {digest}: {e}")))?;
            buf.extend_from_slice(&piece);
        }
        if buf.len() as u64 != end - start {
            return Err(CopyError::Retry(format!("reading {digest}: short read")));
        }
        Ok(buf.freeze())
    }

    /// Deletes `to:reference` on the remote; one that is not there is deleted already.
    pub async fn delete(&self, to: &str, reference: &str) -> Result<()> {
        let scope = format!("repository:{to}:delete");
        let call = Call::new(
            Method::DELETE,
            self.remote.url(&format!("{to}/manifests/{reference}"))?,
            &scope,
        );
        match self.remote.call(call).await {
            Ok(_) | Err(ClientError::NotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Copies of a remote's content into this registry.
pub struct Pull<'a> {
    pub core: &'a Registry,
    pub remote: &'a Client,
}

impl Pull<'_> {
    /// The remote's repositories (every page of its catalog).
    pub async fn catalog(&self) -> Result<Vec<String>> {
        self.every_page("_catalog?n=1000", "registry:catalog:*", "repositories")
            .await?
            .ok_or_else(|| CopyError::GiveUp("the remote has no catalog (404)".into()))
    }

    /// The tags of the remote's `repo` (none when it has no such repository).
    pub async fn tags(&self, repo: &str) -> Result<Vec<String>> {
        let scope = format!("repository:{repo}:pull");
        let tags = self
            .every_page(&format!("{repo}/tags/list?n=1000"), &scope, "tags")
            .await?;
        Ok(tags.unwrap_or_default())
    }

    /// The names listed under `key` in every page of a listing, following `Link: rel="next"`
    /// (`None`: the remote answers 404).
    async fn every_page(&self, first: &str, scope: &str, key: &str) -> Result<Option<Vec<String>>> {
        let mut names = Vec::new();
        let mut url = self.remote.url(first)?;
        loop {
            let answer = match self
                .remote
                .call(Call::new(Method::GET, url.clone(), scope))
                .await
            {
                Ok(a) => a,
                Err(ClientError::NotFound) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let next = answer
                .header("link")
                .and_then(next_link)
                .map(str::to_string);
            let body = answer.bytes_limited(64 << 20).await?;
            let page: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| CopyError::GiveUp(format!("{first} is not JSON: {e}")))?;
            // `null` for a repository without tags, as Distribution answers.
            let page: Vec<String> = serde_json::from_value(page[key].clone()).unwrap_or_default();
            let empty = page.is_empty();
            names.extend(page);
            match next {
                Some(next) if !empty => url = self.remote.url(next.trim_start_matches("/v2/"))?,
                _ => return Ok(Some(names)),
            }
        }
    }

    /// Copies the remote's `from:tag` into `to` here, unless `to:tag` is that already.
    pub async fn tag(&self, from: &str, to: &RepoName, tag: &Tag) -> Result<Copied> {
        let scope = format!("repository:{from}:pull");
        let accept = manifest_accept();
        let mut head = Call::new(
            Method::HEAD,
            self.remote.url(&format!("{from}/manifests/{tag}"))?,
            &scope,
        );
        head.accept = Some(&accept);
        let remote_digest = self.remote.call(head).await?.digest();
        if let (Some(d), Ok(local)) = (
            &remote_digest,
            self.core.manifest(to, &Reference::Tag(tag.clone())).await,
        ) {
            if &local.digest == d {
                return Ok(Copied::default());
            }
        }
        self.manifest(from, to, &Reference::Tag(tag.clone()), &scope)
            .await
    }

    async fn manifest(
        &self,
        from: &str,
        to: &RepoName,
        reference: &Reference,
        scope: &str,
    ) -> Result<Copied> {
        if let Reference::Digest(_) = reference {
            if self.core.manifest(to, reference).await.is_ok() {
                return Ok(Copied::default());
            }
        }
        let accept = manifest_accept();
        let mut get = Call::new(
            Method::GET,
            self.remote.url(&format!("{from}/manifests/{reference}"))?,
            scope,
        );
        get.accept = Some(&accept);
        let answer = self.remote.call(get).await?;
        let media_type = answer.media_type();
        let declared = answer.digest();
        let bytes = answer.bytes_limited(manifest::MAX_MANIFEST_SIZE).await?;
        if let Some(d) = &declared {
            if &Digest::of(d.algorithm(), &bytes) != d {
                return Err(CopyError::GiveUp(format!(
                    "{from}:{reference} does not have the digest the remote declares ({d})"
                )));
            }
        }
        let parsed = manifest::parse(media_type.as_deref(), &bytes)
            .map_err(|e| CopyError::GiveUp(format!("{from}:{reference}: {e}")))?;
        let mut copied = Copied::default();
        for child in &parsed.children {
            let r = Reference::Digest(child.digest.clone());
            copied.add(Box::pin(self.manifest(from, to, &r, scope)).await?);
        }
        for blob in &parsed.blobs {
            if self.core.blob_size(to, blob).await.is_ok() {
                continue;
            }
            let get = Call::new(
                Method::GET,
                self.remote.url(&format!("{from}/blobs/{blob}"))?,
                scope,
            );
            let body = self.remote.call(get).await?.into_stream();
            copied.bytes += self.core.push_blob(to, blob, body).await?;
        }
        self.core
            .put_manifest(to, reference, &[], media_type.as_deref(), bytes.clone())
            .await?;
        copied.manifests += 1;
        copied.bytes += bytes.len() as u64;
        Ok(copied)
    }
}

/// The target of a `Link: <URL>; rel="next"` header.
fn next_link(link: &str) -> Option<&str> {
    let (target, params) = link.split_once(';')?;
    params
        .contains("rel=\"next\"")
        .then(|| target.trim().trim_start_matches('<').trim_end_matches('>'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_pages_are_read_from_link() {
        assert_eq!(
            next_link("</v2/_catalog?last=b&n=2>; rel=\"next\""),
            Some("/v2/_catalog?last=b&n=2")
        );
        assert_eq!(next_link("</v2/x>; rel=\"prev\""), None);
        assert_eq!(next_link("nonsense"), None);
    }
}
