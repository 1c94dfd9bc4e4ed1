//! The three real-world Distribution configurations Berth must accept unchanged
//! (`tests/fixtures/distribution-configs`; the addresses in them are never contacted — these
//! tests only parse).

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth::config::{
    load_file, option_report, render_effective, GoDuration, Loaded, LogFormatter, LogLevel, Status,
    MASK,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/distribution-configs")
        .join(name)
}

fn load_fixture(name: &str, env: &[(&str, &str)]) -> Loaded {
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    let loaded = load_file(fixture(name), env).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(
        loaded.warnings.is_empty(),
        "{name}: unexpected warnings {:?}",
        loaded.warnings
    );
    loaded
}

fn status(loaded: &Loaded, key: &str) -> Option<Status> {
    option_report(&loaded.config)
        .into_iter()
        .find(|row| row.key == key)
        .map(|row| row.status)
}

#[test]
fn external_registry() {
    let loaded = load_fixture("external-registry.yml", &[]);
    let c = &loaded.config;
    assert_eq!(c.log.level, LogLevel::Debug);
    assert_eq!(c.log.formatter, LogFormatter::Text);
    assert_eq!(
        c.storage
            .filesystem
            .as_ref()
            .map(|fs| fs.rootdirectory.as_str()),
        Some("/var/lib/registry")
    );
    assert_eq!(c.storage.cache.blobdescriptor.as_deref(), Some("inmemory"));
    assert!(!c.storage.maintenance.uploadpurging.enabled);
    assert!(c.storage.delete.enabled);
    assert_eq!(c.http.addr, ":5000");
    assert_eq!(c.http.host.as_deref(), Some("https://hub.cloud.papub"));
    assert_eq!(c.http.debug.addr.as_deref(), Some(":5001"));
    let token = c.auth.token.as_ref().expect("token auth");
    assert_eq!(token.issuer.as_deref(), Some("caas-issuer"));
    assert_eq!(
        token.realm.as_deref(),
        Some("http://auth.cloud.papub:8080/ECA/token")
    );
    assert_eq!(token.service.as_deref(), Some("caas-registry"));
    assert_eq!(
        token.rootcertbundle.as_deref(),
        Some("/etc/registry/root.crt")
    );
    let endpoint = &c.notifications.endpoints[0];
    assert_eq!(endpoint.name, "notify");
    assert!(!endpoint.disabled);
    assert_eq!(endpoint.url, "http://100.68.3.15:8080/ECA/notify");
    assert_eq!(
        endpoint.timeout.map(GoDuration::get),
        Some(Duration::from_secs(300))
    );
    assert_eq!(endpoint.threshold, Some(5));
    assert_eq!(
        endpoint.backoff.map(GoDuration::get),
        Some(Duration::from_secs(30))
    );

    assert_eq!(status(&loaded, "auth.token"), Some(Status::Active));
    assert_eq!(
        status(&loaded, "notifications.endpoints"),
        Some(Status::Active)
    );
    assert_eq!(status(&loaded, "log.level"), Some(Status::Active));
    // This file leaves the formatter at its default, so it is not reported.
    assert_eq!(status(&loaded, "log.formatter"), None);
}

#[test]
fn internal_registry() {
    let loaded = load_fixture("internal-registry.yml", &[]);
    let c = &loaded.config;
    assert_eq!(c.log.formatter, LogFormatter::Json);
    assert!(c.auth.token.is_none());
    assert_eq!(c.http.host.as_deref(), Some("https://hub.cloud.pub"));
    let endpoint = &c.notifications.endpoints[0];
    assert_eq!(endpoint.url, "http://100.68.3.22:8080/PUB/notify");
    assert_eq!(endpoint.timeout, Some(GoDuration::from_secs(300)));
    assert_eq!(endpoint.backoff, Some(GoDuration::from_secs(30)));

    assert_eq!(status(&loaded, "log.formatter"), Some(Status::Active));
    assert_eq!(status(&loaded, "storage.cache"), Some(Status::Ignored));
    assert_eq!(status(&loaded, "auth.token"), None);
}

#[test]
fn private_cloud_registry() {
    let loaded = load_fixture("private-cloud-registry.yml", &[]);
    let c = &loaded.config;
    assert_eq!(c.log.formatter, LogFormatter::Json);
    assert!(c.log.accesslog.disabled);
    assert_eq!(c.storage.cache.layerinfo.as_deref(), Some("inmemory"));
    assert_eq!(c.http.addr, ":80");
    assert_eq!(c.http.host.as_deref(), Some("https://hub.yun.paic.com.cn"));
    let token = c.auth.token.as_ref().expect("token auth");
    assert_eq!(
        token.realm.as_deref(),
        Some("http://ds.yun.paic.com.cn:9090/api/token")
    );
    assert_eq!(token.service.as_deref(), Some("caas-registry"));
    assert_eq!(token.issuer.as_deref(), Some("caas-issuer"));
    assert!(c.notifications.endpoints.is_empty());

    assert_eq!(status(&loaded, "auth.token"), Some(Status::Active));
    assert_eq!(status(&loaded, "log.formatter"), Some(Status::Active));
    assert_eq!(
        status(&loaded, "log.accesslog.disabled"),
        Some(Status::Active)
    );
    assert_eq!(status(&loaded, "http.addr"), Some(Status::Active));
}

/// What a test harness does to start Berth from these files: point storage, listeners and every
/// URL at local resources through the environment, leaving the file untouched.
#[test]
fn environment_redirects_fixtures_to_local_resources() {
    // (file, has token auth): setting a token realm on a file without auth would configure an
    // incomplete token method, which Distribution refuses as well.
    for (name, token_auth) in [
        ("external-registry.yml", true),
        ("internal-registry.yml", false),
        ("private-cloud-registry.yml", true),
    ] {
        let mut env = vec![
            (
                "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY",
                "/tmp/berth-test",
            ),
            ("REGISTRY_HTTP_ADDR", "127.0.0.1:0"),
            ("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0"),
            (
                "REGISTRY_NOTIFICATIONS_ENDPOINTS_0_URL",
                "http://127.0.0.1:1/notify",
            ),
        ];
        if token_auth {
            env.push(("REGISTRY_AUTH_TOKEN_REALM", "http://127.0.0.1:1/token"));
        }
        let loaded = load_fixture(name, &env);
        let c = &loaded.config;
        assert_eq!(
            c.storage
                .filesystem
                .as_ref()
                .map(|fs| fs.rootdirectory.as_str()),
            Some("/tmp/berth-test"),
            "{name}"
        );
        assert_eq!(c.http.addr, "127.0.0.1:0", "{name}");
        assert_eq!(c.auth.token.is_some(), token_auth, "{name}");
        if let Some(token) = &c.auth.token {
            assert_eq!(
                token.realm.as_deref(),
                Some("http://127.0.0.1:1/token"),
                "{name}"
            );
            assert_eq!(token.service.as_deref(), Some("caas-registry"), "{name}");
        }
        // The private-cloud file has no notifications: index 0 appends a new endpoint.
        assert_eq!(
            c.notifications.endpoints[0].url, "http://127.0.0.1:1/notify",
            "{name}"
        );
    }
}

#[test]
fn rendered_fixtures_hide_the_secret_and_load_again() {
    for name in [
        "external-registry.yml",
        "internal-registry.yml",
        "private-cloud-registry.yml",
    ] {
        let loaded = load_fixture(name, &[]);
        let rendered = render_effective(&loaded.config);
        assert!(!rendered.contains("placeholder"), "{name}:\n{rendered}");
        assert!(rendered.contains(MASK), "{name}:\n{rendered}");
        let again = berth::config::load(&rendered, Vec::new())
            .unwrap_or_else(|e| panic!("{name}: rendered config does not load: {e}\n{rendered}"));
        assert!(again.warnings.is_empty(), "{name}: {:?}", again.warnings);
        assert_eq!(again.config.storage, loaded.config.storage, "{name}");
        assert_eq!(
            again.config.notifications, loaded.config.notifications,
            "{name}"
        );
    }
}
