//! Pull-through caches: which repositories mirror which remote registry, and the fetches the
//! core asks for, through each remote's [`Client`].
//!
//! Two kinds: Distribution's `proxy` section mirrors every repository; a proxy-cache project
//! (Harbor's: a project with a `registry_id`) mirrors the repositories under its name, each
//! project its own registry. Which project mirrors what is looked up in the projects' store and
//! remembered for [`LOOKUP_TTL`], so a change made through another instance holds within it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use reqwest::Method;

use super::client::{manifest_accept, Client, ClientError, Endpoint};
use crate::config::Config;
use crate::meta::access::{AccessStore, RegistryRecord};
use crate::oci::digest::Digest;
use crate::oci::manifest::MAX_MANIFEST_SIZE;
use crate::oci::name::{Reference, RepoName, Tag};
use crate::registry::mirror::{FetchedManifest, Mirror, Upstream, UpstreamError};
use crate::storage::ByteStream;

/// Distribution's `proxy` section: every repository mirrors the remote's of the same name.
struct Cache {
    client: Arc<Client>,
    ttl: Duration,
    /// Docker Hub keeps official images under `library/`: a one-segment name is looked up there.
    library: bool,
}

/// How long a project's mirror (or its absence) and a registry record are remembered.
pub const LOOKUP_TTL: Duration = Duration::from_secs(5);

/// The pull-through caches of a registry.
#[derive(Default)]
pub struct Mirrors {
    proxy: Option<Cache>,
    projects: Option<Projects>,
}

/// Proxy-cache projects, from the projects' store.
struct Projects {
    store: Arc<dyn AccessStore>,
    /// Project name: when it was looked up, and the registry it mirrors.
    mirrors: Mutex<HashMap<String, (Instant, Option<i64>)>>,
    /// Registry id: when it was read, and its client.
    remotes: Mutex<HashMap<i64, (Instant, Remote)>>,
}

#[derive(Clone)]
struct Remote {
    updated_at: i64,
    client: Arc<Client>,
    library: bool,
}

impl Mirrors {
    /// The caches the configuration declares: Distribution's `proxy` section mirrors every
    /// repository. `None` when there is none.
    /// With `projects`, also the proxy-cache projects of that store.
    pub fn from_config(
        config: &Config,
        projects: Option<Arc<dyn AccessStore>>,
    ) -> anyhow::Result<Option<Mirrors>> {
        let projects = projects.map(|store| Projects {
            store,
            mirrors: Mutex::new(HashMap::new()),
            remotes: Mutex::new(HashMap::new()),
        });
        let Some(remote) = config.proxy.remoteurl.as_deref() else {
            return Ok(projects.map(|p| Mirrors {
                proxy: None,
                projects: Some(p),
            }));
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
            proxy: Some(Cache {
                client: Arc::new(client),
                ttl,
                library,
            }),
            projects,
        }))
    }

    /// The mirror of `repo` the configuration declares (the `proxy` section), if any.
    fn configured_mirror(&self, repo: &RepoName) -> Option<Mirror> {
        self.proxy.as_ref().map(|cache| Mirror {
            upstream: cache.client.endpoint().name.clone(),
            repository: upstream_repository(repo.as_str(), cache.library),
            ttl: cache.ttl,
        })
    }

    fn client(&self, mirror: &Mirror) -> Result<Arc<Client>, UpstreamError> {
        let configured = self
            .proxy
            .as_ref()
            .map(|c| c.client.clone())
            .filter(|c| c.endpoint().name == mirror.upstream);
        let from_store = || {
            let projects = self.projects.as_ref()?;
            let remotes = projects.remotes.lock().unwrap();
            remotes
                .values()
                .map(|(_, r)| r.client.clone())
                .find(|c| c.endpoint().name == mirror.upstream)
        };
        configured
            .or_else(from_store)
            .ok_or_else(|| UpstreamError::Refused {
                upstream: mirror.upstream.clone(),
                why: "no such remote registry is configured".into(),
            })
    }
}

impl Projects {
    fn unavailable(e: impl std::fmt::Display) -> UpstreamError {
        UpstreamError::Unavailable {
            upstream: "the projects' store".into(),
            why: e.to_string(),
        }
    }

    /// The registry the project `name` mirrors, if it is a proxy-cache project.
    async fn registry_of(&self, name: &str) -> Result<Option<i64>, UpstreamError> {
        if let Some((at, id)) = self.mirrors.lock().unwrap().get(name) {
            if at.elapsed() < LOOKUP_TTL {
                return Ok(*id);
            }
        }
        let project = self
            .store
            .project_by_name(name)
            .await
            .map_err(Projects::unavailable)?;
        let id = project.and_then(|p| p.registry_id);
        let mut mirrors = self.mirrors.lock().unwrap();
        if mirrors.len() > 10_000 {
            mirrors.clear();
        }
        mirrors.insert(name.to_string(), (Instant::now(), id));
        Ok(id)
    }

    /// The client of the registry `id`, made anew when its record changed.
    async fn remote(&self, id: i64) -> Result<Option<Remote>, UpstreamError> {
        if let Some((at, r)) = self.remotes.lock().unwrap().get(&id) {
            if at.elapsed() < LOOKUP_TTL {
                return Ok(Some(r.clone()));
            }
        }
        let Some(record) = self
            .store
            .registry(id)
            .await
            .map_err(Projects::unavailable)?
        else {
            self.remotes.lock().unwrap().remove(&id);
            return Ok(None);
        };
        let mut remotes = self.remotes.lock().unwrap();
        let reuse = remotes
            .get(&id)
            .filter(|(_, r)| r.updated_at == record.updated_at)
            .map(|(_, r)| r.clone());
        let remote = match reuse {
            Some(r) => r,
            None => {
                let (endpoint, library) =
                    endpoint_of(&record).map_err(|why| UpstreamError::Refused {
                        upstream: record.name.clone(),
                        why,
                    })?;
                let client = Client::new(endpoint).map_err(|e| UpstreamError::Refused {
                    upstream: record.name.clone(),
                    why: e.to_string(),
                })?;
                Remote {
                    updated_at: record.updated_at,
                    client: Arc::new(client),
                    library,
                }
            }
        };
        remotes.insert(id, (Instant::now(), remote.clone()));
        Ok(Some(remote))
    }
}

/// How to reach a registry record (and whether its one-segment names are under `library/`).
pub fn endpoint_of(r: &RegistryRecord) -> Result<(Endpoint, bool), String> {
    let url = if r.kind == "docker-hub" {
        // Harbor names Docker Hub by its web site; its registry is elsewhere.
        "https://registry-1.docker.io"
    } else {
        r.url.as_str()
    };
    let url = url::Url::parse(url).map_err(|e| format!("{}: {e}", r.url))?;
    let library = r.kind == "docker-hub" || is_docker_hub(&url);
    let (username, password) = if r.access_key.is_empty() {
        (None, None)
    } else {
        (Some(r.access_key.clone()), Some(r.access_secret.clone()))
    };
    Ok((
        Endpoint {
            name: r.name.clone(),
            url,
            username,
            password,
            insecure: r.insecure,
            ca: None,
            connections: super::client::DEFAULT_CONNECTIONS,
        },
        library,
    ))
}

/// The remote's name for `name`: Docker Hub keeps official images under `library/`.
fn upstream_repository(name: &str, library: bool) -> String {
    if library && !name.contains('/') {
        format!("library/{name}")
    } else {
        name.to_string()
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
    async fn mirror(&self, repo: &RepoName) -> Result<Option<Mirror>, UpstreamError> {
        if let Some(m) = self.configured_mirror(repo) {
            return Ok(Some(m));
        }
        let Some(projects) = &self.projects else {
            return Ok(None);
        };
        let Some((project, rest)) = repo.as_str().split_once('/') else {
            return Ok(None);
        };
        let Some(id) = projects.registry_of(project).await? else {
            return Ok(None);
        };
        let Some(remote) = projects.remote(id).await? else {
            return Ok(None);
        };
        Ok(Some(Mirror {
            upstream: remote.client.endpoint().name.clone(),
            repository: upstream_repository(rest, remote.library),
            // As Harbor's proxy caches: each pull of a tag asks the remote whether it moved.
            ttl: Duration::ZERO,
        }))
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

    async fn blob_size(
        &self,
        mirror: &Mirror,
        digest: &Digest,
    ) -> Result<Option<u64>, UpstreamError> {
        let client = self.client(mirror)?;
        let path = format!("{}/blobs/{digest}", mirror.repository);
        let head = client
            .send(Method::HEAD, &path, &pull_scope(mirror), None)
            .await;
        Ok(found(mirror, head)?.and_then(|answer| {
            answer
                .header("content-length")
                .and_then(|l| l.parse::<u64>().ok())
        }))
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

    #[test]
    fn names_map_to_the_upstream() {
        assert_eq!(upstream_repository("a/b", false), "a/b");
        assert_eq!(upstream_repository("alpine", false), "alpine");
        assert_eq!(upstream_repository("alpine", true), "library/alpine");
        assert_eq!(upstream_repository("grafana/loki", true), "grafana/loki");
        let hub = url::Url::parse("https://registry-1.docker.io").unwrap();
        assert!(is_docker_hub(&hub));
        assert!(!is_docker_hub(
            &url::Url::parse("http://127.0.0.1:5000").unwrap()
        ));
        let record = RegistryRecord {
            name: "hub".into(),
            kind: "docker-hub".into(),
            url: "https://hub.docker.com".into(),
            access_key: "u".into(),
            access_secret: "s".into(),
            ..RegistryRecord::default()
        };
        let (endpoint, library) = endpoint_of(&record).unwrap();
        assert_eq!(endpoint.url.as_str(), "https://registry-1.docker.io/");
        assert!(library);
        assert_eq!(endpoint.username.as_deref(), Some("u"));
        let anonymous = RegistryRecord {
            kind: "docker-registry".into(),
            url: "http://10.0.0.5:5000".into(),
            ..RegistryRecord::default()
        };
        let (endpoint, library) = endpoint_of(&anonymous).unwrap();
        assert_eq!((endpoint.username, library), (None, false));
    }
}
