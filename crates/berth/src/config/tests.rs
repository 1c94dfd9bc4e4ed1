//! Loading, validation, rendering and reporting, end to end through [`load`].

use std::time::Duration;

use super::*;

/// Shaped like the fixtures in `tests/fixtures/distribution-configs` (token auth,
/// notifications, access log off); addresses are made up.
const TOKEN_AUTH: &str = r#"
version: 0.1
log:
  level: debug
  formatter: json
  fields:
    service: registry
  accesslog:
    disabled: true
storage:
  cache:
    layerinfo: inmemory
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: /var/lib/registry
  maintenance:
    uploadpurging:
      enabled: false
  delete:
    enabled: true
http:
  addr: :5000
  secret: placeholder
  host: https://registry.example.test
  debug:
    addr: :5001
auth:
  token:
    issuer: test-issuer
    realm: http://auth.example.test:8080/token
    rootcertbundle: /etc/registry/root.crt
    service: test-registry
notifications:
  endpoints:
    - name: notify
      disabled: false
      url: http://events.example.test:8080/notify
      headers:
        Authorization: [Bearer sekrit]
      timeout: 300s
      threshold: 5
      backoff: 30s
"#;

const MINIMAL: &str = "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /data\n";

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load_ok(yaml: &str, vars: &[(&str, &str)]) -> Loaded {
    load(yaml, env(vars)).unwrap_or_else(|e| panic!("should load: {e}"))
}

fn load_err(yaml: &str, vars: &[(&str, &str)]) -> String {
    match load(yaml, env(vars)) {
        Ok(loaded) => panic!("should fail, loaded {:?}", loaded.config),
        Err(e) => e.to_string(),
    }
}

#[test]
fn token_auth_config_loads_with_all_values() {
    let loaded = load_ok(TOKEN_AUTH, &[]);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let c = &loaded.config;
    assert_eq!(c.version, "0.1");
    assert_eq!(c.log.level, LogLevel::Debug);
    assert_eq!(c.log.formatter, LogFormatter::Json);
    assert_eq!(c.log.fields["service"], Value::from("registry"));
    assert!(c.log.accesslog.disabled);
    let fs = c.storage.filesystem.as_ref().expect("filesystem driver");
    assert_eq!(fs.rootdirectory, "/var/lib/registry");
    assert_eq!(c.storage.cache.layerinfo.as_deref(), Some("inmemory"));
    assert!(!c.storage.maintenance.uploadpurging.enabled);
    assert_eq!(
        c.storage.maintenance.uploadpurging.age.get(),
        Duration::from_secs(168 * 3600)
    );
    assert!(c.storage.delete.enabled);
    assert_eq!(c.http.addr, ":5000");
    assert_eq!(c.http.secret.as_deref(), Some("placeholder"));
    assert_eq!(c.http.debug.addr.as_deref(), Some(":5001"));
    let token = c.auth.token.as_ref().expect("token auth");
    assert_eq!(
        token.realm.as_deref(),
        Some("http://auth.example.test:8080/token")
    );
    assert_eq!(token.service.as_deref(), Some("test-registry"));
    assert_eq!(token.issuer.as_deref(), Some("test-issuer"));
    let endpoint = &c.notifications.endpoints[0];
    assert_eq!(endpoint.name, "notify");
    assert!(!endpoint.disabled);
    assert_eq!(endpoint.timeout, Some(GoDuration::from_secs(300)));
    assert_eq!(endpoint.backoff, Some(GoDuration::from_secs(30)));
    assert_eq!(endpoint.threshold, Some(5));
}

#[test]
fn defaults_fill_a_minimal_config() {
    let c = load_ok(MINIMAL, &[]).config;
    assert_eq!(c.log.level, LogLevel::Info);
    assert_eq!(c.log.formatter, LogFormatter::Text);
    assert_eq!(c.http.addr, ":5000");
    assert_eq!(c.http.net, "tcp");
    assert!(c.storage.maintenance.uploadpurging.enabled);
    assert_eq!(
        c.storage.maintenance.uploadpurging.interval.get(),
        Duration::from_secs(24 * 3600)
    );
    assert!(!c.storage.delete.enabled);
    assert_eq!(c.catalog.maxentries, 1000);
    assert_eq!(c.http.debug.prometheus.path, "/metrics");
}

#[test]
fn environment_beats_the_file() {
    let loaded = load_ok(
        TOKEN_AUTH,
        &[
            ("REGISTRY_HTTP_ADDR", "127.0.0.1:6000"),
            ("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", "/srv/registry"),
            ("REGISTRY_LOG_LEVEL", "warn"),
            ("REGISTRY_AUTH_TOKEN_REALM", "http://127.0.0.1:9/token"),
            ("REGISTRY_STORAGE_DELETE_ENABLED", "false"),
            ("REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_AGE", "2h"),
            (
                "REGISTRY_NOTIFICATIONS_ENDPOINTS",
                r#"[{"name": "e", "url": "http://127.0.0.1:9/e", "timeout": "1s"}]"#,
            ),
            ("HOME", "/root"),
        ],
    );
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let c = loaded.config;
    assert_eq!(c.http.addr, "127.0.0.1:6000");
    assert_eq!(
        c.storage.filesystem.map(|fs| fs.rootdirectory).as_deref(),
        Some("/srv/registry")
    );
    assert_eq!(c.log.level, LogLevel::Warn);
    assert_eq!(
        c.auth.token.and_then(|t| t.realm).as_deref(),
        Some("http://127.0.0.1:9/token")
    );
    assert!(!c.storage.delete.enabled);
    assert_eq!(
        c.storage.maintenance.uploadpurging.age,
        GoDuration::from_secs(7200)
    );
    assert_eq!(c.notifications.endpoints.len(), 1);
    assert_eq!(c.notifications.endpoints[0].name, "e");
    assert_eq!(
        c.notifications.endpoints[0].timeout,
        Some(GoDuration::from_secs(1))
    );
}

#[test]
fn environment_can_choose_the_storage_driver() {
    let loaded = load_ok(
        MINIMAL,
        &[
            ("REGISTRY_STORAGE", "s3"),
            ("REGISTRY_STORAGE_S3_BUCKET", "images"),
            ("REGISTRY_STORAGE_S3_REGION", "eu-west-1"),
            ("REGISTRY_STORAGE_S3_SECURE", "false"),
        ],
    );
    let c = loaded.config;
    assert!(c.storage.filesystem.is_none());
    let s3 = c.storage.s3.expect("s3 driver");
    assert_eq!(s3.bucket.as_deref(), Some("images"));
    assert_eq!(s3.secure, Some(false));

    // Without REGISTRY_STORAGE the variable adds a second driver, which Distribution refuses too.
    let err = load_err(MINIMAL, &[("REGISTRY_STORAGE_S3_BUCKET", "images")]);
    assert!(
        err.starts_with("storage: exactly one storage driver"),
        "{err}"
    );
    assert!(err.contains("filesystem, s3"), "{err}");

    let c = load_ok("version: 0.1", &[("REGISTRY_STORAGE", "inmemory")]).config;
    assert!(c.storage.inmemory.is_some());
}

#[test]
fn unknown_keys_warn_with_their_path_and_loading_continues() {
    let yaml = format!(
        "{MINIMAL}http:\n  adr: :6000\nnotifications:\n  endpoints:\n    - name: a\n      url: http://a.test/\n      treshold: 3\nfrobnicate: true\n"
    );
    let loaded = load_ok(&yaml, &[("REGISTRY_HTTP_ADRESS", "x")]);
    assert_eq!(loaded.config.http.addr, ":5000");
    let w = &loaded.warnings;
    assert!(
        w.contains(&"unknown configuration key http.adr".to_owned()),
        "{w:?}"
    );
    assert!(
        w.contains(&"unknown configuration key notifications.endpoints[0].treshold".to_owned()),
        "{w:?}"
    );
    assert!(
        w.contains(&"unknown configuration key frobnicate".to_owned()),
        "{w:?}"
    );
    assert!(
        w.iter().any(|m| m.contains("REGISTRY_HTTP_ADRESS")),
        "{w:?}"
    );
    assert_eq!(w.len(), 4, "{w:?}");
}

#[test]
fn bad_values_name_their_key() {
    let yaml = format!("{MINIMAL}  maintenance:\n    uploadpurging:\n      age: 5x\n");
    let err = load_err(&yaml, &[]);
    assert!(
        err.starts_with("storage.maintenance.uploadpurging.age: invalid duration \"5x\""),
        "{err}"
    );

    let err = load_err(
        MINIMAL,
        &[("REGISTRY_NOTIFICATIONS_ENDPOINTS_0_TIMEOUT", "soon")],
    );
    assert!(
        err.starts_with("notifications.endpoints[0].timeout: invalid duration"),
        "{err}"
    );

    let err = load_err(&format!("{MINIMAL}http: {{relativeurls: maybe}}\n"), &[]);
    assert!(err.starts_with("http.relativeurls: invalid type"), "{err}");

    let err = load_err(&format!("{MINIMAL}log: {{level: verbose}}\n"), &[]);
    assert!(
        err.starts_with("log.level: invalid log level \"verbose\""),
        "{err}"
    );
    // Distribution accepts exactly error, warn, info, debug (any case); not `warning`.
    let err = load_err(&format!("{MINIMAL}log: {{level: warning}}\n"), &[]);
    assert!(err.starts_with("log.level:"), "{err}");
    let c = load_ok(&format!("{MINIMAL}log: {{level: ERROR}}\n"), &[]).config;
    assert_eq!(c.log.level, LogLevel::Error);

    let err = load_err(&format!("{MINIMAL}log: {{formatter: xml}}\n"), &[]);
    assert!(
        err.starts_with("log.formatter: invalid log formatter"),
        "{err}"
    );
}

#[test]
fn durations_accept_go_strings_and_nanoseconds() {
    let yaml = format!(
        "{MINIMAL}http:\n  draintimeout: 1h30m\nredis:\n  dialtimeout: 100ms\n  readtimeout: 1000000\n  writetimeout: 0\n"
    );
    let c = load_ok(&yaml, &[]).config;
    assert_eq!(c.http.draintimeout, Some(GoDuration::from_secs(5400)));
    assert_eq!(
        c.redis.dialtimeout.map(GoDuration::get),
        Some(Duration::from_millis(100))
    );
    assert_eq!(
        c.redis.readtimeout.map(GoDuration::get),
        Some(Duration::from_millis(1))
    );
    assert_eq!(
        c.redis.writetimeout.map(GoDuration::get),
        Some(Duration::ZERO)
    );
}

#[test]
fn two_storage_drivers_fail() {
    let err = load_err(
        "version: 0.1\nstorage:\n  filesystem: {rootdirectory: /a}\n  inmemory:\n",
        &[],
    );
    assert!(
        err.starts_with("storage: exactly one storage driver"),
        "{err}"
    );
    let err = load_err("version: 0.1\nstorage: {delete: {enabled: true}}\n", &[]);
    assert!(err.starts_with("storage: no storage driver"), "{err}");
    let err = load_err("version: 0.1\nstorage: {ceph: {pool: x}}\n", &[]);
    assert!(
        err.starts_with("storage.ceph: unknown storage driver"),
        "{err}"
    );
}

#[test]
fn storage_driver_may_be_a_bare_name_or_empty() {
    for yaml in [
        "version: 0.1\nstorage: inmemory\n",
        "version: 0.1\nstorage:\n  inmemory:\n",
        "version: 0.1\nstorage:\n  inmemory: {}\n  cache:\n",
    ] {
        let loaded = load_ok(yaml, &[]);
        assert!(loaded.config.storage.inmemory.is_some(), "{yaml}");
        assert!(loaded.warnings.is_empty(), "{yaml}: {:?}", loaded.warnings);
    }
}

#[test]
fn version_must_be_0_1() {
    let err = load_err("version: 0.2\nstorage: inmemory\n", &[]);
    assert!(
        err.starts_with("version: unsupported configuration version \"0.2\""),
        "{err}"
    );
    let err = load_err("storage: inmemory\n", &[]);
    assert!(err.starts_with("version: missing"), "{err}");
    let err = load_err("", &[]);
    assert!(err.starts_with("version: missing"), "{err}");
    load_ok("version: '0.1'\nstorage: inmemory\n", &[]);
    // The version cannot be overridden from the environment.
    let loaded = load_ok(
        "version: 0.1\nstorage: inmemory\n",
        &[("REGISTRY_VERSION", "0.2")],
    );
    assert_eq!(loaded.config.version, "0.1");
    assert_eq!(loaded.warnings.len(), 1);
}

#[test]
fn cross_field_checks() {
    let cases = [
        ("http: {addr: '5000'}", "http.addr: invalid listen address"),
        (
            "http: {addr: 'localhost:http'}",
            "http.addr: invalid listen address",
        ),
        ("http: {net: udp}", "http.net: invalid value"),
        ("http: {host: registry.example.test}", "http.host:"),
        (
            "http: {tls: {certificate: /c.pem}}",
            "http.tls.key: required",
        ),
        (
            "http: {tls: {key: /k.pem}}",
            "http.tls.certificate: required",
        ),
        (
            "http: {tls: {certificate: /c, key: /k, minimumtls: tls1.9}}",
            "http.tls.minimumtls",
        ),
        (
            "auth: {htpasswd: {realm: r, path: /p}, silly: {realm: r, service: s}}",
            "auth: only one authentication method",
        ),
        (
            "auth: {ldap: {}}",
            "auth.ldap: unknown authentication method",
        ),
        (
            "auth: {token: {realm: 'http://a/', service: s, issuer: i}}",
            "auth.token.rootcertbundle",
        ),
        (
            "auth: {htpasswd: {realm: r}}",
            "auth.htpasswd.path: required",
        ),
        (
            "notifications: {endpoints: [{name: n, url: /relative}]}",
            "notifications.endpoints[0].url:",
        ),
        ("proxy: {remoteurl: docker.io}", "proxy.remoteurl:"),
        ("tags: {maxtags: -1}", "tags.maxtags"),
        ("gc: {pace: 0}", "gc.pace"),
        ("gc: {pace: 1.5}", "gc.pace"),
    ];
    for (extra, want) in cases {
        let err = load_err(&format!("{MINIMAL}{extra}\n"), &[]);
        assert!(err.starts_with(want), "{extra}: got {err}");
    }
    for addr in [":5000", "0.0.0.0:5000", "[::]:5000", "localhost:5000"] {
        load_ok(&format!("{MINIMAL}http: {{addr: '{addr}'}}\n"), &[]);
    }
    let c = load_ok(
        &format!("{MINIMAL}http: {{net: unix, addr: /run/registry.sock}}\n"),
        &[],
    )
    .config;
    assert_eq!(c.http.addr, "/run/registry.sock");
}

#[test]
fn scalars_fill_string_fields_like_go() {
    let c = load_ok(
        &format!("{MINIMAL}http: {{secret: 12345}}\nredis: {{password: true}}\n"),
        &[],
    )
    .config;
    assert_eq!(c.http.secret.as_deref(), Some("12345"));
    assert_eq!(c.redis.password.as_deref(), Some("true"));
}

#[test]
fn deprecated_loglevel_is_a_fallback() {
    let c = load_ok(&format!("{MINIMAL}loglevel: debug\n"), &[]).config;
    assert_eq!(c.log.level, LogLevel::Debug);
    assert_eq!(c.loglevel, None);
    let c = load_ok(
        &format!("{MINIMAL}loglevel: debug\nlog: {{level: error}}\n"),
        &[],
    )
    .config;
    assert_eq!(c.log.level, LogLevel::Error);
}

#[test]
fn headers_accept_lists_and_single_values() {
    let yaml = format!(
        "{MINIMAL}http:\n  headers:\n    X-Content-Type-Options: [nosniff]\n    Access-Control-Allow-Origin: '*'\n"
    );
    let c = load_ok(&yaml, &[]).config;
    assert_eq!(c.http.headers["X-Content-Type-Options"], vec!["nosniff"]);
    assert_eq!(c.http.headers["Access-Control-Allow-Origin"], vec!["*"]);
}

#[test]
fn render_masks_secrets_and_loads_again() {
    let yaml = format!(
        "{TOKEN_AUTH}redis:\n  addr: localhost:6379\n  password: redispw\nproxy:\n  remoteurl: https://upstream.example.test\n  username: u\n  password: proxypw\n"
    );
    let config = load_ok(&yaml, &[]).config;
    let rendered = render_effective(&config);
    for secret in ["placeholder", "sekrit", "redispw", "proxypw"] {
        assert!(!rendered.contains(secret), "{secret} leaked:\n{rendered}");
    }
    assert!(rendered.contains(MASK), "{rendered}");
    assert!(rendered.contains("timeout: 5m0s"), "{rendered}");

    let again = load_ok(&rendered, &[]);
    assert!(again.warnings.is_empty(), "{:?}", again.warnings);
    assert_eq!(again.config.http.secret.as_deref(), Some(MASK));
    assert_eq!(again.config.storage, config.storage);
    assert_eq!(again.config.log, config.log);

    let s3 = load_ok(
        "version: 0.1\nstorage:\n  s3: {bucket: b, region: r, accesskey: AKIA1, secretkey: s3cr3t}\n",
        &[],
    )
    .config;
    let rendered = render_effective(&s3);
    assert!(
        !rendered.contains("AKIA1") && !rendered.contains("s3cr3t"),
        "{rendered}"
    );

    let inmemory = render_effective(&load_ok("version: 0.1\nstorage: inmemory\n", &[]).config);
    assert!(inmemory.contains("inmemory: {}"), "{inmemory}");
}

#[test]
fn option_report_lists_what_the_user_set() {
    let report = option_report(&load_ok(TOKEN_AUTH, &[]).config);
    let status = |key: &str| {
        report
            .iter()
            .find(|row| row.key == key)
            .map(|row| row.status)
    };
    assert_eq!(status("auth.token"), Some(Status::Active));
    assert_eq!(status("log.formatter"), Some(Status::Active));
    assert_eq!(status("log.level"), Some(Status::Active));
    assert_eq!(status("log.fields"), Some(Status::Active));
    assert_eq!(status("storage.filesystem"), Some(Status::Active));
    assert_eq!(status("storage.cache"), Some(Status::Ignored));
    assert_eq!(
        status("storage.maintenance.uploadpurging"),
        Some(Status::Active)
    );
    assert_eq!(status("notifications.endpoints"), Some(Status::Active));
    // Defaults the user did not change are not reported.
    assert_eq!(status("http.addr"), None);
    assert_eq!(status("storage.filesystem.rootdirectory"), None);
    assert_eq!(status("storage.filesystem.maxthreads"), None);
    // Rows for a covered section are merged.
    assert!(
        !report.iter().any(|row| row.key.starts_with("auth.token.")),
        "{report:?}"
    );

    let yaml = "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /data\n    maxthreads: 50\nhttp: {net: unix, addr: /s}\nredis: {addr: 'r:6379'}\n";
    let report = option_report(&load_ok(yaml, &[]).config);
    let status = |key: &str| {
        report
            .iter()
            .find(|row| row.key == key)
            .map(|row| row.status)
    };
    assert_eq!(
        status("storage.filesystem.maxthreads"),
        Some(Status::Ignored)
    );
    assert_eq!(status("http.net"), Some(Status::NotImplemented));
    assert_eq!(status("redis"), Some(Status::Ignored));
}

#[test]
fn reference_covers_every_optional_section() {
    // The environment mapper can only reach keys the reference shows; a section left `None` in
    // `schema_reference` would hide its keys. Every mapping-valued Option must be present.
    let reference = serde_yaml::to_value(Config::schema_reference()).expect("serializes");
    let storage = &reference["storage"];
    for driver in [
        "filesystem",
        "inmemory",
        "s3",
        "swift",
        "azure",
        "gcs",
        "oss",
    ] {
        assert!(storage[driver].is_mapping(), "{driver}");
    }
    for method in AUTH_METHODS {
        assert!(reference["auth"][method].is_mapping(), "{method}");
    }
    assert!(reference["proxy"]["exec"].is_mapping());
    assert!(reference["notifications"]["endpoints"][0].is_mapping());
}

#[test]
fn reference_shows_the_database_section() {
    let reference = serde_yaml::to_value(Config::schema_reference()).expect("serializes");
    assert!(reference["database"].is_mapping());
    assert!(reference["database"]["pool"].is_mapping());
    assert!(reference["sqlite"].is_mapping());
}

#[test]
fn database_section_loads_and_is_checked() {
    let yaml = format!(
        "{MINIMAL}database:\n  enabled: true\n  host: db.example.test\n  port: 5433\n  user: registry\n  password: dbsecret\n  dbname: registry\n  sslmode: verify-full\n  sslrootcert: /etc/ca.pem\n  connecttimeout: 5s\n  pool:\n    maxopen: 20\n    maxidle: 5\n    maxlifetime: 1h\n    maxidletime: 5m\nsqlite:\n  path: /var/lib/berth/meta.db\n"
    );
    let loaded = load_ok(&yaml, &[]);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let db = loaded.config.database.clone().expect("database section");
    assert!(db.enabled);
    assert_eq!(
        (
            db.host.as_str(),
            db.port,
            db.user.as_str(),
            db.dbname.as_str()
        ),
        ("db.example.test", 5433, "registry", "registry")
    );
    assert_eq!(db.sslmode, "verify-full");
    assert_eq!(db.connecttimeout, Some(GoDuration::from_secs(5)));
    assert_eq!(db.pool.maxopen, Some(20));
    assert_eq!(db.pool.maxidletime, Some(GoDuration::from_secs(300)));
    assert_eq!(
        loaded.config.sqlite.path.as_deref(),
        Some("/var/lib/berth/meta.db")
    );

    for mode in [
        "disable",
        "allow",
        "prefer",
        "require",
        "verify-ca",
        "verify-full",
    ] {
        load_ok(&format!("{MINIMAL}database: {{sslmode: {mode}}}\n"), &[]);
    }
    let cases = [
        // A misspelt mode must not quietly mean something weaker, enabled or not.
        (
            "database: {sslmode: verify_full}",
            "database.sslmode: invalid value \"verify_full\"",
        ),
        (
            "database: {sslmode: Require}",
            "database.sslmode: invalid value",
        ),
        ("database: {sslmode: ''}", "database.sslmode: invalid value"),
        (
            "database: {enabled: true, host: '', user: u, dbname: d}",
            "database.host: required when database.enabled is true",
        ),
        (
            "database: {enabled: true, user: u}",
            "database.dbname: required when database.enabled is true",
        ),
        (
            "database: {enabled: true, host: h, dbname: d}",
            "database.user: required when database.enabled is true",
        ),
        (
            "database: {enabled: true, host: h, user: '  ', dbname: d}",
            "database.user: required",
        ),
        ("database: {port: 70000}", "database.port:"),
        (
            "database: {pool: {maxopen: many}}",
            "database.pool.maxopen:",
        ),
        (
            "database: {connecttimeout: soon}",
            "database.connecttimeout: invalid duration",
        ),
        ("sqlite: {path: ''}", "sqlite.path: must not be empty"),
    ];
    for (extra, want) in cases {
        let err = load_err(&format!("{MINIMAL}{extra}\n"), &[]);
        assert!(err.starts_with(want), "{extra}: got {err}");
    }
    // Disabled, the section needs nothing but a valid sslmode (host defaults to localhost).
    let c = load_ok(&format!("{MINIMAL}database: {{enabled: false}}\n"), &[]).config;
    assert_eq!(c.database.map(|d| d.host).as_deref(), Some("localhost"));
}

#[test]
fn database_and_sqlite_keys_take_environment_overrides() {
    let yaml = format!(
        "{MINIMAL}database:\n  enabled: true\n  host: file-host\n  user: registry\n  dbname: registry\n"
    );
    let loaded = load_ok(
        &yaml,
        &[
            ("REGISTRY_DATABASE_HOST", "env-host.example.test"),
            ("REGISTRY_DATABASE_PASSWORD", "from-env"),
            ("REGISTRY_DATABASE_POOL_MAXOPEN", "42"),
            ("REGISTRY_SQLITE_PATH", "/srv/meta.db"),
        ],
    );
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let db = loaded.config.database.expect("database section");
    assert_eq!(db.host, "env-host.example.test");
    assert_eq!(db.password.as_deref(), Some("from-env"));
    assert_eq!(db.pool.maxopen, Some(42));
    assert_eq!(
        db.user, "registry",
        "keys the environment does not name stay"
    );
    assert_eq!(loaded.config.sqlite.path.as_deref(), Some("/srv/meta.db"));

    // Without a section in the file, the variables create it.
    let loaded = load_ok(
        MINIMAL,
        &[
            ("REGISTRY_DATABASE_ENABLED", "true"),
            ("REGISTRY_DATABASE_HOST", "h"),
            ("REGISTRY_DATABASE_USER", "u"),
            ("REGISTRY_DATABASE_DBNAME", "d"),
            ("REGISTRY_DATABASE_POOL_MAXOPEN", "3"),
        ],
    );
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let db = loaded
        .config
        .database
        .expect("database section from the environment");
    assert!(db.enabled);
    assert_eq!((db.host.as_str(), db.pool.maxopen), ("h", Some(3)));
    assert_eq!(
        db.port, 5432,
        "defaults fill what the environment leaves out"
    );

    // A bad value from the environment names the key like one from the file.
    let err = load_err(MINIMAL, &[("REGISTRY_DATABASE_POOL_MAXOPEN", "lots")]);
    assert!(err.starts_with("database.pool.maxopen:"), "{err}");
    let err = load_err(
        MINIMAL,
        &[
            ("REGISTRY_DATABASE_ENABLED", "true"),
            ("REGISTRY_DATABASE_USER", "u"),
        ],
    );
    assert!(err.starts_with("database.dbname: required"), "{err}");
}

#[test]
fn database_password_is_masked() {
    let yaml = format!(
        "{MINIMAL}database:\n  enabled: true\n  host: h\n  user: u\n  dbname: d\n  password: pg-s3cret\n"
    );
    let config = load_ok(&yaml, &[("REGISTRY_SQLITE_PATH", "/m.db")]).config;
    let rendered = render_effective(&config);
    assert!(!rendered.contains("pg-s3cret"), "{rendered}");
    assert!(rendered.contains(MASK), "{rendered}");
    let again = load_ok(&rendered, &[]).config;
    assert_eq!(
        again.database.as_ref().and_then(|d| d.password.as_deref()),
        Some(MASK)
    );
    assert_eq!(again.database.map(|d| d.host), Some("h".to_owned()));
    assert_eq!(again.sqlite.path.as_deref(), Some("/m.db"));
    // The original is untouched: masking works on a copy.
    assert_eq!(
        config.database.and_then(|d| d.password).as_deref(),
        Some("pg-s3cret")
    );
}

#[test]
fn trusted_proxies_are_parsed_at_load() {
    let yaml = format!(
        "{MINIMAL}http:\n  trustedproxies:\n    - 10.0.0.0/8\n    - 192.0.2.7\n    - fd00::/8\n    - ::1\n"
    );
    let c = load_ok(&yaml, &[]).config;
    let shown: Vec<String> = c
        .http
        .trustedproxies
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(shown, ["10.0.0.0/8", "192.0.2.7/32", "fd00::/8", "::1/128"]);
    assert_eq!(
        c.http.trustedproxies[0].network(),
        "10.0.0.0".parse::<std::net::IpAddr>().unwrap()
    );
    assert_eq!(c.http.trustedproxies[0].prefix_len(), 8);
    assert_eq!(c.http.trustedproxies[3].prefix_len(), 128);

    // One entry may be written without a list, as an environment variable naturally is.
    let c = load_ok(MINIMAL, &[("REGISTRY_HTTP_TRUSTEDPROXIES", "127.0.0.1/32")]).config;
    assert_eq!(c.http.trustedproxies.len(), 1);
    let c = load_ok(
        MINIMAL,
        &[(
            "REGISTRY_HTTP_TRUSTEDPROXIES",
            "[10.1.0.0/16, '2001:db8::/32']",
        )],
    )
    .config;
    assert_eq!(c.http.trustedproxies.len(), 2);
    let c = load_ok(
        &format!("{MINIMAL}http: {{trustedproxies: [10.0.0.1]}}\n"),
        &[("REGISTRY_HTTP_TRUSTEDPROXIES_1", "10.0.0.2")],
    )
    .config;
    assert_eq!(c.http.trustedproxies.len(), 2);
    assert!(load_ok(MINIMAL, &[]).config.http.trustedproxies.is_empty());

    // A bad entry names its index; nothing is widened or guessed.
    let cases = [
        (
            "[10.0.0.0/8, proxy.internal]",
            "http.trustedproxies[1]: invalid IP address or range",
        ),
        (
            "[10.0.0.0/33]",
            "http.trustedproxies[0]: invalid IP address or range",
        ),
        ("[192.168.1.10/24]", "http.trustedproxies[0]:"),
        ("['*']", "http.trustedproxies[0]:"),
        ("['']", "http.trustedproxies[0]:"),
        ("[[10.0.0.1]]", "http.trustedproxies[0]:"),
        ("{a: 10.0.0.1}", "http.trustedproxies:"),
        (
            "not-an-address",
            "http.trustedproxies: invalid IP address or range",
        ),
    ];
    for (value, want) in cases {
        let err = load_err(
            &format!("{MINIMAL}http: {{trustedproxies: {value}}}\n"),
            &[],
        );
        assert!(err.starts_with(want), "{value}: got {err}");
    }
    let err = load_err(MINIMAL, &[("REGISTRY_HTTP_TRUSTEDPROXIES_0", "10.0.0.300")]);
    assert!(err.starts_with("http.trustedproxies[0]:"), "{err}");
    let err = load_err(&yaml, &[("REGISTRY_HTTP_TRUSTEDPROXIES_2", "fd00::1/8")]);
    assert!(err.starts_with("http.trustedproxies[2]:"), "{err}");

    // The effective configuration prints them so that they load again.
    let c = load_ok(&yaml, &[]).config;
    let again = load_ok(&render_effective(&c), &[]).config;
    assert_eq!(again.http.trustedproxies, c.http.trustedproxies);
}

#[test]
fn option_report_marks_the_edge_and_database_keys_active() {
    let yaml = format!(
        "{MINIMAL}http:\n  draintimeout: 30s\n  relativeurls: true\n  trustedproxies: [10.0.0.0/8]\nhealth:\n  storagedriver:\n    enabled: true\n    interval: 5s\n    threshold: 3\ndatabase:\n  enabled: true\n  host: h\n  user: u\n  dbname: d\n  pool: {{maxopen: 4}}\nsqlite:\n  path: /m.db\n"
    );
    let report = option_report(&load_ok(&yaml, &[]).config);
    let status = |key: &str| {
        report
            .iter()
            .find(|row| row.key == key)
            .map(|row| row.status)
    };
    for key in [
        "http.draintimeout",
        "http.relativeurls",
        "http.trustedproxies",
        "health.storagedriver",
        "database",
        "sqlite.path",
    ] {
        assert_eq!(status(key), Some(Status::Active), "{key}: {report:?}");
    }
    assert!(
        !report.iter().any(|row| row.status != Status::Active),
        "{report:?}"
    );
    // Other health checks are still reported as not implemented.
    let report = option_report(
        &load_ok(
            &format!("{MINIMAL}health:\n  tcp:\n    - addr: 'db:5432'\n"),
            &[],
        )
        .config,
    );
    assert!(
        report
            .iter()
            .any(|row| row.key.starts_with("health") && row.status == Status::NotImplemented),
        "{report:?}"
    );
}
