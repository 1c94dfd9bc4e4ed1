//! Opening the configured storage backend: Distribution's `storage.<driver>` sections mapped to a
//! [`Driver`].
//!
//! `filesystem` is the local disk driver (`fs.rs`); `inmemory`, `s3`, `swift`, `azure`, `gcs`
//! and `oss` are OpenDAL services (`opendal.rs`; Swift through `swift.rs`, which keeps its token
//! fresh). Each object store gets OpenDAL's retry layer: throttled and temporarily failing
//! calls are retried with exponential backoff and jitter before an error reaches the store.
//! Keys keep Distribution's meaning and defaults; a key whose meaning cannot be kept is refused
//! here with a message that says what to write instead.

use std::sync::Arc;

use opendal::{services, Operator};

use super::driver::{Driver, DriverError, ErrorKind, Result};
use super::fs::FsDriver;
use super::opendal::{with_retries, without_certificate_checks, OpenDalDriver, Tuning};
use super::s3::{Bucket, MultipartUploads};
use super::swift::{SwiftAuth, SwiftDriver};
use crate::config::{Parameters, Storage, Swift, S3};

/// S3's smallest part of a multipart upload (all but the last part).
const S3_MIN_PART: u64 = 5 << 20;
/// Distribution's default part size on S3 and Swift.
const DEFAULT_CHUNK: u64 = 10 << 20;
/// Parts of one upload in flight at once: what keeps a single push near the backend's speed.
const WRITE_CONCURRENCY: usize = 4;

/// What every object store starts from: ranges read in one streamed request.
const OBJECT_STORE: Tuning = Tuning {
    write_chunk: DEFAULT_CHUNK as usize,
    write_concurrency: WRITE_CONCURRENCY,
    copy_chunk: None,
    copy_concurrency: 1,
    delete_concurrency: 8,
    read_chunk: None,
};

/// An opened backend: the driver, and what a person should know about it at start-up.
pub struct Backend {
    pub driver: Arc<dyn Driver>,
    /// The configured driver's name (`s3`, `filesystem`, ...).
    pub name: &'static str,
    /// Whether it hands out URLs that clients can fetch blobs from directly.
    pub object_store: bool,
    /// Warnings to log at start-up (a driver that is not covered by Berth's tests, say).
    pub warnings: Vec<String>,
}

/// Opens the one driver `storage` configures (validation has checked there is exactly one).
pub async fn open(storage: &Storage) -> Result<Backend> {
    crate::storage::install_http_defaults();
    let mut warnings = Vec::new();
    let (name, driver): (&'static str, Arc<dyn Driver>) = if let Some(fs) = &storage.filesystem {
        (
            "filesystem",
            Arc::new(FsDriver::open(std::path::Path::new(&fs.rootdirectory))?),
        )
    } else if storage.inmemory.is_some() {
        ("inmemory", Arc::new(OpenDalDriver::memory()?))
    } else if let Some(s3) = &storage.s3 {
        ("s3", Arc::new(s3_driver(s3, &mut warnings)?))
    } else if let Some(swift) = &storage.swift {
        ("swift", Arc::new(swift_driver(swift).await?))
    } else if let Some(p) = &storage.azure {
        warnings.push(untested("azure"));
        ("azure", Arc::new(azure_driver(p)?))
    } else if let Some(p) = &storage.gcs {
        warnings.push(untested("gcs"));
        ("gcs", Arc::new(gcs_driver(p)?))
    } else if let Some(p) = &storage.oss {
        warnings.push(untested("oss"));
        ("oss", Arc::new(oss_driver(p)?))
    } else {
        return Err(invalid("no storage driver is configured"));
    };
    Ok(Backend {
        driver,
        name,
        object_store: !matches!(name, "filesystem" | "inmemory"),
        warnings,
    })
}

fn untested(name: &str) -> String {
    format!(
        "storage driver {name} runs through OpenDAL's {name} service, which Berth's test suite \
         does not cover (it covers filesystem, inmemory, s3 and swift); check pushes and pulls \
         before relying on it"
    )
}

fn invalid(message: impl Into<String>) -> DriverError {
    DriverError::new(ErrorKind::Other, message)
}

fn opened(what: &'static str) -> impl Fn(opendal::Error) -> DriverError {
    move |e| DriverError::caused(ErrorKind::Other, format_args!("opening {what}"), e)
}

/// A part size from a configured `chunksize`: at least S3's minimum part.
fn part_size(chunksize: Option<u64>, key: &str) -> Result<usize> {
    let size = chunksize.unwrap_or(DEFAULT_CHUNK);
    if size < S3_MIN_PART {
        return Err(invalid(format!(
            "{key} is {size} bytes; it must be at least 5242880 (5 MiB), the smallest part \
             object stores accept"
        )));
    }
    Ok(size as usize)
}

/// An endpoint with its scheme: as written if it has one, otherwise `https` unless `secure` is
/// off (Distribution's `secure`).
fn with_scheme(endpoint: &str, secure: bool) -> String {
    if endpoint.contains("://") {
        endpoint.trim_end_matches('/').to_string()
    } else {
        let scheme = if secure { "https" } else { "http" };
        format!("{scheme}://{}", endpoint.trim_end_matches('/'))
    }
}

/// Distribution's `rootdirectory` (or Swift's `prefix`) as an OpenDAL root: absolute, `/`-ended.
fn root_of(dir: Option<&str>) -> String {
    let dir = dir.unwrap_or("").trim_matches('/');
    if dir.is_empty() {
        "/".to_string()
    } else {
        format!("/{dir}/")
    }
}

fn s3_driver(c: &S3, warnings: &mut Vec<String>) -> Result<OpenDalDriver> {
    let bucket = c
        .bucket
        .as_deref()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| invalid("storage.s3.bucket is required"))?;
    let region = c
        .region
        .as_deref()
        .filter(|r| !r.is_empty())
        .ok_or_else(|| {
            invalid("storage.s3.region is required (for an S3-compatible service, its region name)")
        })?;
    if c.v4auth == Some(false) {
        warnings.push(
            "storage.s3.v4auth is false, but S3 signature version 2 is not supported: requests \
             are signed with version 4"
                .to_string(),
        );
    }
    let secure = c.secure.unwrap_or(true);
    let endpoint = match c.regionendpoint.as_deref().filter(|e| !e.is_empty()) {
        Some(e) => with_scheme(e, secure),
        None if c.accelerate == Some(true) => with_scheme("s3-accelerate.amazonaws.com", secure),
        None => with_scheme(&format!("s3.{region}.amazonaws.com"), secure),
    };
    // Gateways (MinIO, Garage, Ceph) are addressed by path; AWS by virtual host, unless
    // `forcepathstyle` says otherwise.
    let path_style = c
        .forcepathstyle
        .unwrap_or(c.regionendpoint.as_deref().is_some_and(|e| !e.is_empty()));
    let mut b = services::S3::default()
        .bucket(bucket)
        .region(region)
        .endpoint(&endpoint)
        .root(&root_of(c.rootdirectory.as_deref()));
    if !path_style {
        b = b.enable_virtual_host_style();
    }
    let root = root_of(c.rootdirectory.as_deref());
    let mut multipart = None;
    match (c.accesskey.as_deref(), c.secretkey.as_deref()) {
        (Some(a), Some(s)) if !a.is_empty() => {
            // Static keys: nothing is read from the environment or ~/.aws beside them.
            b = b
                .access_key_id(a)
                .secret_access_key(s)
                .disable_config_load();
            let at = Bucket {
                endpoint: &endpoint,
                name: bucket,
                path_style,
                region,
                root: &root,
                object_headers: object_headers(c),
            };
            multipart = Some(MultipartUploads::new(
                &at,
                a,
                s,
                c.skipverify == Some(true),
            )?);
        }
        (Some(a), _) if !a.is_empty() => {
            return Err(invalid(
                "storage.s3.accesskey is set without storage.s3.secretkey",
            ))
        }
        // The AWS default chain: environment, profile, web identity, instance metadata.
        _ => {}
    }
    if let Some(class) = c.storageclass.as_deref() {
        if !class.is_empty() && !class.eq_ignore_ascii_case("NONE") {
            b = b.default_storage_class(class);
        }
    }
    if c.encrypt == Some(true) {
        b = match c.keyid.as_deref().filter(|k| !k.is_empty()) {
            Some(key) => b.server_side_encryption_with_customer_managed_kms_key(key),
            None => b.server_side_encryption("AES256"),
        };
    }
    if let Some(acl) = c.objectacl.as_deref() {
        // `private` is every bucket's default; sending it would fail on gateways without ACLs.
        if !acl.is_empty() && acl != "private" {
            b = b.default_acl(acl);
        }
    }
    let mut op = with_retries(Operator::new(b).map_err(opened("the S3 bucket"))?);
    if c.skipverify == Some(true) {
        op = without_certificate_checks(op)?;
    }
    let copy_chunk = c
        .multipartcopychunksize
        .or(c.multipartcopythresholdsize)
        .map(|s| s.max(S3_MIN_PART) as usize);
    let tuning = Tuning {
        write_chunk: part_size(c.chunksize, "storage.s3.chunksize")?,
        write_concurrency: WRITE_CONCURRENCY,
        copy_chunk,
        copy_concurrency: c.multipartcopymaxconcurrency.unwrap_or(4).max(1) as usize,
        ..OBJECT_STORE
    };
    let driver = OpenDalDriver::with_tuning(op, tuning);
    Ok(match multipart {
        Some(m) => driver.with_multipart(m),
        None => {
            warnings.push(
                "storage.s3 has no static keys: chunked uploads are published by streaming their \
                 parts through Berth, and multipart uploads left open by a crash are not aborted \
                 by upload purging; give the bucket a lifecycle rule \
                 (AbortIncompleteMultipartUpload)"
                    .to_string(),
            );
            driver
        }
    })
}

/// The headers OpenDAL sends with every new object for `c`, for the objects composed outside
/// it: storage class and encryption.
fn object_headers(c: &S3) -> Vec<(String, String)> {
    let mut headers = Vec::new();
    if let Some(class) = c.storageclass.as_deref() {
        if !class.is_empty() && !class.eq_ignore_ascii_case("NONE") {
            headers.push(("x-amz-storage-class".to_string(), class.to_string()));
        }
    }
    if c.encrypt == Some(true) {
        match c.keyid.as_deref().filter(|k| !k.is_empty()) {
            Some(key) => {
                headers.push(("x-amz-server-side-encryption".into(), "aws:kms".into()));
                headers.push((
                    "x-amz-server-side-encryption-aws-kms-key-id".into(),
                    key.to_string(),
                ));
            }
            None => headers.push(("x-amz-server-side-encryption".into(), "AES256".into())),
        }
    }
    headers
}

async fn swift_driver(c: &Swift) -> Result<SwiftDriver> {
    let required = |v: &Option<String>, key: &str| {
        v.clone()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| invalid(format!("storage.swift.{key} is required")))
    };
    let auth = SwiftAuth {
        auth_url: required(&c.authurl, "authurl")?,
        username: required(&c.username, "username")?,
        password: required(&c.password, "password")?,
        version: c.authversion,
        tenant: c.tenant.clone(),
        tenant_id: c.tenantid.clone(),
        domain: c.domain.clone(),
        domain_id: c.domainid.clone(),
        tenant_domain: c.tenantdomain.clone(),
        tenant_domain_id: c.tenantdomainid.clone(),
        region: c.region.clone(),
        endpoint_type: c.endpointtype.clone(),
        insecure: c.insecureskipverify == Some(true),
    };
    if c.trustid.as_deref().is_some_and(|t| !t.is_empty()) {
        return Err(invalid(
            "storage.swift.trustid (Keystone trusts) is not supported; authenticate as the user \
             with username and password",
        ));
    }
    let container = required(&c.container, "container")?;
    let tuning = Tuning {
        write_chunk: part_size(
            c.chunksize.or(Some(DEFAULT_CHUNK)),
            "storage.swift.chunksize",
        )?,
        write_concurrency: WRITE_CONCURRENCY,
        ..OBJECT_STORE
    };
    SwiftDriver::connect(
        auth,
        container,
        root_of(c.prefix.as_deref()),
        c.secretkey.clone().filter(|k| !k.is_empty()),
        tuning,
    )
    .await
}

/// A string parameter of a driver kept as written (`azure`, `gcs`, `oss`).
fn param(p: &Parameters, key: &str) -> Option<String> {
    match p.get(key)? {
        serde_yaml::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn required_param(p: &Parameters, driver: &str, key: &str) -> Result<String> {
    param(p, key).ok_or_else(|| invalid(format!("storage.{driver}.{key} is required")))
}

fn azure_driver(p: &Parameters) -> Result<OpenDalDriver> {
    let account = required_param(p, "azure", "accountname")?;
    let realm = param(p, "realm").unwrap_or_else(|| "core.windows.net".to_string());
    let endpoint =
        param(p, "serviceurl").unwrap_or_else(|| format!("https://{account}.blob.{realm}"));
    let mut b = services::Azblob::default()
        .endpoint(&endpoint)
        .account_name(&account)
        .container(&required_param(p, "azure", "container")?)
        .root(&root_of(param(p, "rootdirectory").as_deref()));
    if let Some(key) = param(p, "accountkey") {
        b = b.account_key(&key);
    }
    let op = with_retries(Operator::new(b).map_err(opened("the Azure container"))?);
    Ok(OpenDalDriver::with_tuning(
        op,
        Tuning {
            write_chunk: DEFAULT_CHUNK as usize,
            write_concurrency: WRITE_CONCURRENCY,
            ..OBJECT_STORE
        },
    ))
}

fn gcs_driver(p: &Parameters) -> Result<OpenDalDriver> {
    let mut b = services::Gcs::default()
        .bucket(&required_param(p, "gcs", "bucket")?)
        .root(&root_of(param(p, "rootdirectory").as_deref()));
    if let Some(keyfile) = param(p, "keyfile") {
        b = b.credential_path(&keyfile);
    }
    let chunk = param(p, "chunksize")
        .and_then(|c| c.parse::<u64>().ok())
        .unwrap_or(DEFAULT_CHUNK);
    let op = with_retries(Operator::new(b).map_err(opened("the GCS bucket"))?);
    Ok(OpenDalDriver::with_tuning(
        op,
        Tuning {
            // GCS resumable uploads take parts of multiples of 256 KiB.
            write_chunk: (chunk.max(S3_MIN_PART) as usize).next_multiple_of(256 << 10),
            write_concurrency: 1,
            ..OBJECT_STORE
        },
    ))
}

fn oss_driver(p: &Parameters) -> Result<OpenDalDriver> {
    let secure = param(p, "secure").is_none_or(|s| s != "false");
    let endpoint = match param(p, "endpoint") {
        Some(e) => with_scheme(&e, secure),
        None => {
            let region = required_param(p, "oss", "region")?;
            let internal = if param(p, "internal").as_deref() == Some("true") {
                "-internal"
            } else {
                ""
            };
            with_scheme(&format!("{region}{internal}.aliyuncs.com"), secure)
        }
    };
    let mut b = services::Oss::default()
        .bucket(&required_param(p, "oss", "bucket")?)
        .endpoint(&endpoint)
        .root(&root_of(param(p, "rootdirectory").as_deref()));
    if let Some(id) = param(p, "accesskeyid") {
        b = b.access_key_id(&id);
    }
    if let Some(secret) = param(p, "accesskeysecret") {
        b = b.access_key_secret(&secret);
    }
    if param(p, "encrypt").as_deref() == Some("true") {
        b = b.server_side_encryption("AES256");
    }
    let chunk = param(p, "chunksize").and_then(|c| c.parse::<u64>().ok());
    let op = with_retries(Operator::new(b).map_err(opened("the OSS bucket"))?);
    Ok(OpenDalDriver::with_tuning(
        op,
        Tuning {
            write_chunk: part_size(chunk, "storage.oss.chunksize")?,
            write_concurrency: WRITE_CONCURRENCY,
            ..OBJECT_STORE
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_roots() {
        assert_eq!(with_scheme("minio:9000", false), "http://minio:9000");
        assert_eq!(with_scheme("minio:9000/", true), "https://minio:9000");
        assert_eq!(with_scheme("http://h:1", true), "http://h:1");
        assert_eq!(root_of(None), "/");
        assert_eq!(root_of(Some("/")), "/");
        assert_eq!(root_of(Some("/registry/v2")), "/registry/v2/");
        assert_eq!(root_of(Some("reg")), "/reg/");
    }

    #[test]
    fn part_sizes_below_the_minimum_are_refused() {
        assert_eq!(part_size(None, "k").unwrap(), 10 << 20);
        assert_eq!(part_size(Some(5 << 20), "k").unwrap(), 5 << 20);
        let e = part_size(Some(1 << 20), "storage.s3.chunksize").unwrap_err();
        assert!(e.to_string().contains("storage.s3.chunksize"), "{e}");
    }

    #[tokio::test]
    async fn incomplete_s3_and_swift_sections_say_what_is_missing() {
        let mut storage = Storage {
            s3: Some(S3::default()),
            ..Storage::default()
        };
        let e = open(&storage).await.err().unwrap();
        assert!(e.to_string().contains("storage.s3.bucket"), "{e}");
        storage.s3.as_mut().unwrap().bucket = Some("b".into());
        let e = open(&storage).await.err().unwrap();
        assert!(e.to_string().contains("storage.s3.region"), "{e}");
        storage.s3.as_mut().unwrap().region = Some("r".into());
        storage.s3.as_mut().unwrap().accesskey = Some("a".into());
        let e = open(&storage).await.err().unwrap();
        assert!(e.to_string().contains("secretkey"), "{e}");

        let storage = Storage {
            swift: Some(Swift {
                authurl: Some("http://127.0.0.1:1/auth/v1.0".into()),
                ..Swift::default()
            }),
            ..Storage::default()
        };
        let e = open(&storage).await.err().unwrap();
        assert!(e.to_string().contains("storage.swift.username"), "{e}");
    }
}
