//! A registry with the built-in token service (`auth: {builtin: {...}}`) on a temporary data
//! directory, the `berth user|project|robot` commands on its database, and token requests to
//! its `/service/token`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use super::cli::run;
use super::{Launch, Registry};

/// The first administrator's password (`BERTH_ADMIN_PASSWORD`).
pub const ADMIN_PASSWORD: &str = "Admin12345";

/// A running registry with built-in authentication.
pub struct BuiltinRegistry {
    pub reg: Registry,
    pub config: PathBuf,
    _dir: tempfile::TempDir,
}

/// The configuration file of a registry on `data` with `auth.builtin` set to `builtin` (YAML
/// mapping body, indented under `builtin:`; may be empty) and extra top-level YAML.
pub fn write_config(dir: &Path, data: &Path, builtin: &str, extra: &str) -> PathBuf {
    let path = dir.join("config.yml");
    let builtin = if builtin.trim().is_empty() {
        " {}".to_string()
    } else {
        format!("\n{}", indent(builtin, 6))
    };
    let text = format!(
        "version: 0.1\n\
         log:\n  level: warn\n\
         storage:\n  delete:\n    enabled: true\n  filesystem:\n    rootdirectory: {}\n\
         http:\n  addr: 127.0.0.1:0\n\
         auth:\n  builtin:{builtin}\n{extra}",
        data.display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

fn indent(text: &str, n: usize) -> String {
    text.lines()
        .map(|l| format!("{}{l}", " ".repeat(n)))
        .collect::<Vec<_>>()
        .join("\n")
}

impl BuiltinRegistry {
    pub fn start() -> BuiltinRegistry {
        BuiltinRegistry::start_with("", "")
    }

    /// With `builtin` settings (YAML under `auth.builtin`) and extra top-level YAML.
    pub fn start_with(builtin: &str, extra: &str) -> BuiltinRegistry {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = write_config(dir.path(), &dir.path().join("data"), builtin, extra);
        let reg = launch(&config);
        BuiltinRegistry {
            reg,
            config,
            _dir: dir,
        }
    }

    /// The storage root (and database directory) the configuration names.
    pub fn data(&self) -> PathBuf {
        self._dir.path().join("data")
    }

    /// Another instance on the same configuration (the same data directory and database).
    pub fn another_instance(&self) -> Registry {
        launch(&self.config)
    }

    /// `berth <args> --config <this configuration>`, whose stdout is returned (panics on
    /// failure). `password` is given as `BERTH_PASSWORD`.
    pub fn berth(&self, args: &[&str], password: Option<&str>) -> String {
        let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
        c.args(args).arg("--config").arg(&self.config);
        c.env("RUST_LOG", "warn");
        match password {
            Some(p) => c.env("BERTH_PASSWORD", p),
            None => c.env_remove("BERTH_PASSWORD"),
        };
        run(&mut c)
    }

    pub fn add_user(&self, name: &str, password: &str) {
        self.berth(&["user", "add", name], Some(password));
    }

    pub fn add_project(&self, name: &str, public: bool) {
        let mut args = vec!["project", "add", name];
        if public {
            args.push("--public");
        }
        self.berth(&args, None);
    }

    pub fn add_member(&self, project: &str, user: &str, role: &str) {
        self.berth(
            &["project", "member", "add", project, user, "--role", role],
            None,
        );
    }

    /// A robot of `project` with repository `access` (`pull,push`); its name and secret.
    pub fn add_robot(&self, project: &str, name: &str, access: &str) -> (String, String) {
        let out = self.berth(&["robot", "add", project, name, "--access", access], None);
        let field = |key: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in {out}"))
                .trim()
                .to_string()
        };
        (field("name:"), field("secret:"))
    }

    /// `GET /service/token` with Basic `credentials` (none: anonymous) and `scopes`: the
    /// status and the JSON body.
    pub async fn token(&self, credentials: Option<(&str, &str)>, scopes: &[&str]) -> (u16, Value) {
        token_from(&self.reg, &reqwest::Client::new(), credentials, scopes).await
    }

    /// The token of a successful request (panics otherwise).
    pub async fn token_ok(&self, credentials: Option<(&str, &str)>, scopes: &[&str]) -> String {
        let (status, body) = self.token(credentials, scopes).await;
        assert_eq!(status, 200, "token request for {scopes:?}: {body}");
        body["token"].as_str().expect("token").to_string()
    }
}

fn launch(config: &Path) -> Registry {
    let launch = Launch {
        args: vec![config.to_string_lossy().into_owned()],
        env: vec![("BERTH_ADMIN_PASSWORD".into(), ADMIN_PASSWORD.into())],
        ..Launch::default()
    };
    Registry::launch(&launch).unwrap_or_else(|e| panic!("{e}"))
}

/// `GET /service/token` on `reg` through `client`.
pub async fn token_from(
    reg: &Registry,
    client: &reqwest::Client,
    credentials: Option<(&str, &str)>,
    scopes: &[&str],
) -> (u16, Value) {
    let mut url = reg.url("/service/token?service=berth");
    for s in scopes {
        url.push_str("&scope=");
        url.push_str(&super::oci::encode_query_value(s));
    }
    let mut req = client.get(&url);
    if let Some((user, password)) = credentials {
        req = req.basic_auth(user, Some(password));
    }
    let resp = req.send().await.expect("token request");
    let status = resp.status().as_u16();
    let body = resp.bytes().await.expect("token body");
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, json)
}

/// The claims of a JWT, unverified.
pub fn claims_of(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("jwt payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64 payload");
    serde_json::from_slice(&bytes).expect("json claims")
}

/// The actions a token grants on `repository`.
pub fn granted(token: &str, repository: &str) -> Vec<String> {
    let claims = claims_of(token);
    let mut out: Vec<String> = claims["access"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["type"] == "repository" && a["name"] == repository)
        .flat_map(|a| a["actions"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    out.sort();
    out
}

/// `req` with `token` as its bearer credentials.
pub fn bearer(req: reqwest::RequestBuilder, token: &str) -> reqwest::RequestBuilder {
    req.header("Authorization", format!("Bearer {token}"))
}

/// Pushes the blobs of a small image made from `seed` (a config and one layer) to `repo` with
/// `token`; the manifest that names them, not pushed.
pub async fn push_image_blobs(reg: &Registry, repo: &str, token: &str, seed: &str) -> Vec<u8> {
    let c = super::oci::client();
    let mut descriptors = Vec::new();
    for (i, media) in [
        "application/vnd.oci.image.config.v1+json",
        "application/vnd.oci.image.layer.v1.tar",
    ]
    .iter()
    .enumerate()
    {
        let data = super::pseudo_bytes(&format!("{seed}-{i}"), 1000 + i);
        let digest = super::sha256(&data);
        let resp = bearer(
            c.post(reg.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}"))),
            token,
        )
        .header("Content-Type", "application/octet-stream")
        .body(data.clone())
        .send()
        .await
        .unwrap();
        assert_eq!(resp.status(), 201, "blob push to {repo}");
        descriptors
            .push(serde_json::json!({"mediaType": media, "digest": digest, "size": data.len()}));
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptors[0],
        "layers": [descriptors[1]],
    });
    serde_json::to_vec(&manifest).unwrap()
}

/// PUTs `manifest` (an OCI image manifest) as `repo:reference` with `token`.
pub async fn put_manifest(
    reg: &Registry,
    repo: &str,
    reference: &str,
    token: &str,
    manifest: Vec<u8>,
) -> reqwest::Response {
    bearer(
        super::oci::client().put(reg.url(&format!("/v2/{repo}/manifests/{reference}"))),
        token,
    )
    .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
    .body(manifest)
    .send()
    .await
    .unwrap()
}

/// Pushes a small image (config + one layer + manifest) to `repo:tag` with `token`; the
/// manifest's digest.
pub async fn push_image(reg: &Registry, repo: &str, tag: &str, token: &str, seed: &str) -> String {
    let manifest = push_image_blobs(reg, repo, token, seed).await;
    let digest = super::sha256(&manifest);
    let resp = put_manifest(reg, repo, tag, token, manifest).await;
    assert_eq!(resp.status(), 201, "manifest push to {repo}:{tag}");
    digest
}
