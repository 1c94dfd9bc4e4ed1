//! Pull-through caches: which repositories mirror which remote registry, and the fetches the
//! core asks for, through each remote's [`Client`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Method;

use super::client::{manifest_accept, Client, ClientError, Endpoint};
use crate::config::Config;
use crate::oci::digest::Digest;
use crate::oci::manifest::MAX_MANIFEST_SIZE;
use crate::oci::name::{Reference, RepoName, Tag};
use crate::registry::mirror::{FetchedManifest, Mirror, Upstream, UpstreamError};
use crate::storage::ByteStream;

/// One mirrored namespace.
struct Cache {
    /// Repositories under `prefix/` mirror the remote's repositories of the rest of the name;
    /// `None` mirrors every repository under its own name (Distribution's `proxy` section).
    prefix: Option<String>,
    client: Arc<Client>,
    ttl: Duration,
    /// Docker Hub keeps official images under `library/`: a one-segment name is looked up there.
    library: bool,
}

/// The pull-through caches of a registry.
#[derive(Default)]
pub struct Mirrors {
    caches: Vec<Cache>,
}

impl Mirrors {
    /// The caches the configuration declares: Distribution's `proxy` section mirrors every
    /// repository. `None` when there is none.
    pub fn from_config(config: &Config) -> anyhow::Result<Option<Mirrors>> {
        let Some(remote) = config.proxy.remoteurl.as_deref() else {
            return Ok(None);
        };
        let url = url::Url::parse(remote)?;
        let name = url.host_str().unwrap_or(remote).to_string();
        let library = is_docker_hub(&url);
        let client = Client::new(Endpoint {
            name,
            url,
            username: config.proxy.username.clone().filter(|u| !u.is_empty()),
            password: config.proxy.password.clone(),
            insecure: false,
            ca: None,
            connections: super::client::DEFAULT_CONNECTIONS,
        })?;
        let ttl = config.proxy.ttl.map(|d| d.0).unwrap_or(Duration::ZERO);
        Ok(Some(Mirrors {
            caches: vec![Cache {
                prefix: None,
                client: Arc::new(client),
                ttl,
                library,
            }],
        }))
    }

    fn client(&self, mirror: &Mirror) -> Result<&Client, UpstreamError> {
        self.caches
            .iter()
            .map(|c| c.client.as_ref())
            .find(|c| c.endpoint().name == mirror.upstream)
            .ok_or_else(|| UpstreamError::Refused {
                upstream: mirror.upstream.clone(),
                why: "no such remote is configured".into(),
            })
    }
}

/// Docker Hub's registry, under any of its names.
fn is_docker_hub(url: &url::Url) -> bool {
    matches!(
        url.host_str(),
        Some("registry-1.docker.io" | "docker.io" | "index.docker.io" | "registry.hub.docker.com")
    )
}

fn upstream_error(mirror: &Mirror, e: ClientError) -> Option<UpstreamError> {
    let upstream = mirror.upstream.clone();
    match e {
        ClientError::NotFound => None,
        ClientError::Unavailable(why) => Some(UpstreamError::Unavailable { upstream, why }),
        ClientError::Refused(why) => Some(UpstreamError::Refused { upstream, why }),
    }
}

/// `Ok(None)` for a 404, the error otherwise.
fn found<T>(mirror: &Mirror, r: Result<T, ClientError>) -> Result<Option<T>, UpstreamError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) => match upstream_error(mirror, e) {
            None => Ok(None),
            Some(e) => Err(e),
        },
    }
}

fn pull_scope(mirror: &Mirror) -> String {
    format!("repository:{}:pull", mirror.repository)
}

#[async_trait]
impl Upstream for Mirrors {
    fn mirror(&self, repo: &RepoName) -> Option<Mirror> {
        self.caches.iter().find_map(|cache| {
            let name = match &cache.prefix {
                None => repo.as_str(),
                Some(prefix) => repo
                    .as_str()
                    .strip_prefix(prefix.as_str())?
                    .strip_prefix('/')?,
            };
            let repository = if cache.library && !name.contains('/') {
                format!("library/{name}")
            } else {
                name.to_string()
            };
            Some(Mirror {
                upstream: cache.client.endpoint().name.clone(),
                repository,
                ttl: cache.ttl,
            })
        })
    }

    async fn manifest_digest(
        &self,
        mirror: &Mirror,
        tag: &Tag,
    ) -> Result<Option<Digest>, UpstreamError> {
        let client = self.client(mirror)?;
        let path = format!("{}/manifests/{tag}", mirror.repository);
        let accept = manifest_accept();
        let head = client
            .send(Method::HEAD, &path, &pull_scope(mirror), Some(&accept))
            .await;
        match found(mirror, head)? {
            None => Ok(None),
            Some(answer) => match answer.digest() {
                Some(d) => Ok(Some(d)),
                // No digest on HEAD (some registries): the content says it.
                None => Ok(self
                    .manifest(mirror, &Reference::Tag(tag.clone()))
                    .await?
                    .map(|m| Digest::of(crate::oci::digest::Algorithm::Sha256, &m.bytes))),
            },
        }
    }

    async fn manifest(
        &self,
        mirror: &Mirror,
        reference: &Reference,
    ) -> Result<Option<FetchedManifest>, UpstreamError> {
        let client = self.client(mirror)?;
        let path = format!("{}/manifests/{reference}", mirror.repository);
        let accept = manifest_accept();
        let got = client
            .send(Method::GET, &path, &pull_scope(mirror), Some(&accept))
            .await;
        let Some(answer) = found(mirror, got)? else {
            return Ok(None);
        };
        let refused = |why: String| UpstreamError::Refused {
            upstream: mirror.upstream.clone(),
            why,
        };
        let media_type = answer
            .media_type()
            .ok_or_else(|| refused(format!("{path} came without a Content-Type")))?;
        let declared = answer.digest();
        let bytes = answer
            .bytes_limited(MAX_MANIFEST_SIZE)
            .await
            .map_err(|e| upstream_error(mirror, e).unwrap_or_else(|| refused("404".into())))?;
        // The bytes are what the remote says they are (the core checks a digest reference).
        if let Some(d) = declared {
            if Digest::of(d.algorithm(), &bytes) != d {
                return Err(refused(format!(
                    "the manifest {path} does not have the digest the remote declares ({d})"
                )));
            }
        }
        Ok(Some(FetchedManifest { media_type, bytes }))
    }

    async fn blob(
        &self,
        mirror: &Mirror,
        digest: &Digest,
    ) -> Result<Option<ByteStream>, UpstreamError> {
        let client = self.client(mirror)?;
        let path = format!("{}/blobs/{digest}", mirror.repository);
        let got = client
            .send(Method::GET, &path, &pull_scope(mirror), None)
            .await;
        Ok(found(mirror, got)?.map(|answer| answer.into_stream()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirrors(prefix: Option<&str>, url: &str) -> Mirrors {
        let client = Client::new(Endpoint {
            name: "up".into(),
            url: url::Url::parse(url).unwrap(),
            username: None,
            password: None,
            insecure: false,
            ca: None,
            connections: 1,
        })
        .unwrap();
        Mirrors {
            caches: vec![Cache {
                prefix: prefix.map(str::to_string),
                client: Arc::new(client),
                ttl: Duration::ZERO,
                library: is_docker_hub(&url::Url::parse(url).unwrap()),
            }],
        }
    }

    fn upstream_name(m: &Mirrors, repo: &str) -> Option<String> {
        m.mirror(&repo.parse().unwrap()).map(|m| m.repository)
    }

    #[test]
    fn names_map_to_the_upstream() {
        let all = mirrors(None, "http://127.0.0.1:5000");
        assert_eq!(upstream_name(&all, "a/b").as_deref(), Some("a/b"));
        assert_eq!(upstream_name(&all, "alpine").as_deref(), Some("alpine"));
        let hub = mirrors(None, "https://registry-1.docker.io");
        assert_eq!(
            upstream_name(&hub, "alpine").as_deref(),
            Some("library/alpine")
        );
        assert_eq!(
            upstream_name(&hub, "grafana/loki").as_deref(),
            Some("grafana/loki")
        );
        let project = mirrors(Some("hub"), "https://registry-1.docker.io");
        assert_eq!(
            upstream_name(&project, "hub/alpine").as_deref(),
            Some("library/alpine")
        );
        assert_eq!(upstream_name(&project, "hubx/alpine"), None);
        assert_eq!(upstream_name(&project, "hub"), None);
        assert_eq!(upstream_name(&project, "other/alpine"), None);
    }
}
