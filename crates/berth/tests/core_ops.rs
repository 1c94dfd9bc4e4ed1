//! The OCI API of the core, in process and as data: every case is one step (a request written as
//! plain HTTP data and the answer expected), run by a small interpreter against the axum router
//! over a memory blob store and a real SQLite metadata store, without a socket.
//!
//! Writing a case: `get("/v2/r/blobs/{b}").is(200).returns("b")`. Paths, header values and
//! expected text are templates: `{name}` is the sha256 digest of the fixture `name`,
//! `{name.len}` its length, `{name.sha512}` its sha512 digest, and any other `{var}` a value an
//! earlier step captured (`.capture("loc", "location")`). A failing step panics with its index,
//! its line, the request and the whole response.
//!
//! Over a core that reports events to the test's recording sink ([`Script::with_events`]), a
//! step may also name the events it adds to the outbox, in order, each summarized as
//! `action repo [digest] [tag=..] [from=..]`: `.emits(&["pull r {b}"])`, or `.emits(&[])`.
//!
//! The process-level suites (`oci_api.rs`, `bad_input.rs`) keep what needs a real socket: real
//! clients, bodies cut short, graceful shutdown, responses sent before a body is read.

mod common;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request};
use axum::Router;
use serde_json::Value;
use sha2::{Digest as _, Sha256, Sha512};
use tower::ServiceExt;

use berth::meta::{Change, MetaStore};
use berth::oci::manifest::Platform;
use berth::registry::events::{EventAction, EventSink, RegistryEvent};
use berth::registry::IndexChildren;
use common::pseudo_bytes as pseudo;

// ---- the core under test ----------------------------------------------------------------------

/// The router over a fresh core, its metadata store (for reading the outbox) and the directory
/// holding its database.
struct Core {
    app: Router,
    meta: Arc<dyn MetaStore>,
    _dir: tempfile::TempDir,
}

/// The one place that constructs the core: memory blob storage, SQLite metadata in a tempdir, the
/// registry (with this policy for the children of an index, and reporting events to `events`)
/// and the HTTP edge with default settings and no authentication.
async fn core(index_children: IndexChildren, events: Option<Arc<dyn EventSink>>) -> Core {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let meta = berth::meta::sqlite::SqliteMetaStore::open(&dir.path().join("meta.db"))
        .await
        .expect("open the SQLite metadata store");
    let meta: Arc<dyn MetaStore> = Arc::new(meta);
    let store = berth::storage::BlobStore::memory().expect("a memory blob store");
    let mut registry =
        berth::registry::Registry::new(meta.clone(), store).with_index_children(index_children);
    if let Some(sink) = events {
        registry = registry.with_events(sink);
    }
    let app = berth::http::router(
        Arc::new(registry),
        berth::http::EdgeSettings::default(),
        None,
    );
    Core {
        app,
        meta,
        _dir: dir,
    }
}

/// The outbox topic of the recording sink.
const TOPIC: &str = "test";

/// An event sink that records every event in the outbox under [`TOPIC`], as a JSON object of its
/// action, repository, digest, tag and source repository. With `lose_pulls`, the entries for a
/// pull also ask to delete an upload that does not exist, so the store refuses the whole write.
struct Recorder {
    lose_pulls: bool,
}

impl EventSink for Recorder {
    fn changes_for(&self, e: &RegistryEvent) -> Vec<Change> {
        let payload = serde_json::json!({
            "action": e.action.as_str(),
            "repo": e.repo.to_string(),
            "digest": e.digest.as_ref().map(|d| d.to_string()),
            "tag": e.tag.as_ref().map(|t| t.to_string()),
            "from": e.from.as_ref().map(|r| r.to_string()),
        });
        let mut changes = vec![Change::Enqueue {
            topic: TOPIC.into(),
            payload,
        }];
        if self.lose_pulls && e.action == EventAction::Pull {
            changes.push(Change::DeleteUpload { id: "nope".into() });
        }
        changes
    }

    fn wants(&self, _action: EventAction) -> bool {
        true
    }
}

/// A recorded event as steps name it: `action repo [digest] [tag=..] [from=..]`.
fn event_summary(payload: &Value) -> String {
    let text = |k: &str| payload[k].as_str().map(str::to_string);
    let mut parts = vec![
        text("action").unwrap_or_else(|| format!("<no action in {payload}>")),
        text("repo").unwrap_or_else(|| format!("<no repo in {payload}>")),
    ];
    parts.extend(text("digest"));
    parts.extend(text("tag").map(|t| format!("tag={t}")));
    parts.extend(text("from").map(|f| format!("from={f}")));
    parts.join(" ")
}

// ---- media types and fixture builders -----------------------------------------------------------

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// A descriptor of the fixture `name` (a template).
fn desc(media_type: &str, name: &str) -> String {
    format!(r#"{{"mediaType":"{media_type}","digest":"{{{name}}}","size":{{{name}.len}}}}"#)
}

/// An OCI image manifest over fixtures (a template).
fn image(config: &str, layers: &[&str]) -> String {
    let layers: Vec<String> = layers.iter().map(|l| desc(OCI_LAYER, l)).collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[{}]}}"#,
        desc(OCI_CONFIG, config),
        layers.join(",")
    )
}

/// A Docker schema 2 manifest over fixtures (a template).
fn docker_image(config: &str, layers: &[&str]) -> String {
    let layers: Vec<String> = layers.iter().map(|l| desc(DOCKER_LAYER, l)).collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{},"layers":[{}]}}"#,
        desc(DOCKER_CONFIG, config),
        layers.join(",")
    )
}

/// An OCI image index over manifest fixtures (a template).
fn index(children: &[&str]) -> String {
    let children: Vec<String> = children.iter().map(|c| desc(OCI_MANIFEST, c)).collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
        children.join(",")
    )
}

/// An artifact (an OCI image manifest over the empty config `empty`) referring to `subject`, with
/// optional annotations given as JSON text (a template).
fn artifact(artifact_type: &str, subject: &str, annotations: Option<&str>) -> String {
    let annotations = annotations
        .map(|a| format!(r#","annotations":{a}"#))
        .unwrap_or_default();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"{artifact_type}","config":{},"layers":[{}],"subject":{}{annotations}}}"#,
        desc(OCI_EMPTY, "empty"),
        desc(OCI_EMPTY, "empty"),
        desc(OCI_MANIFEST, subject)
    )
}

/// Pads a JSON object with an annotation so that it is exactly `total` bytes long.
fn pad_to(json: &str, total: usize) -> Vec<u8> {
    let head = json.strip_suffix('}').expect("a JSON object");
    let empty = format!(r#"{head},"annotations":{{"pad":""}}}}"#);
    let pad = total
        .checked_sub(empty.len())
        .expect("room for the padding");
    let out = format!(r#"{head},"annotations":{{"pad":"{}"}}}}"#, "p".repeat(pad));
    assert_eq!(out.len(), total);
    out.into_bytes()
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn sha512(data: &[u8]) -> String {
    format!("sha512:{}", hex::encode(Sha512::digest(data)))
}

// ---- steps --------------------------------------------------------------------------------------

/// A request body.
#[derive(Clone, Debug)]
enum Payload {
    None,
    Fixture(&'static str),
    Part(&'static str, Range<usize>),
    Text(String),
}

/// What a response body must be.
#[derive(Clone, Debug)]
enum BodyWant {
    Empty,
    Fixture(&'static str),
    Part(&'static str, Range<usize>),
    /// Exact text (a template).
    Text(String),
    /// A JSON fragment (a template): objects need the listed keys (`null` = absent or null),
    /// arrays the same elements in the same order, other values equality.
    Json(String),
    /// The array at a JSON pointer holds exactly these fragments, in any order.
    JsonSet(&'static str, Vec<String>),
}

/// What a response header must be.
#[derive(Clone, Debug)]
enum HeaderWant {
    /// Equal to the expanded template; a trailing `*` makes it a prefix.
    Is(String),
    Absent,
}

/// One operation and the answer expected.
#[derive(Clone, Debug)]
struct Step {
    method: Method,
    path: String,
    headers: Vec<(&'static str, String)>,
    payload: Payload,
    /// Send the body as a stream of frames with `Transfer-Encoding: chunked`, no length.
    chunked: bool,
    status: Option<u16>,
    code: Option<&'static str>,
    want_headers: Vec<(&'static str, HeaderWant)>,
    want_body: Option<BodyWant>,
    captures: Vec<(&'static str, &'static str)>,
    /// The events the step adds to the outbox, in order (templates); `None`: not checked.
    emits: Option<Vec<String>>,
    line: u32,
}

#[track_caller]
fn step(method: Method, path: impl Into<String>) -> Step {
    Step {
        method,
        path: path.into(),
        headers: Vec::new(),
        payload: Payload::None,
        chunked: false,
        status: None,
        code: None,
        want_headers: Vec::new(),
        want_body: None,
        captures: Vec::new(),
        emits: None,
        line: std::panic::Location::caller().line(),
    }
}

#[track_caller]
fn get(path: impl Into<String>) -> Step {
    step(Method::GET, path)
}
#[track_caller]
fn head(path: impl Into<String>) -> Step {
    step(Method::HEAD, path)
}
#[track_caller]
fn post(path: impl Into<String>) -> Step {
    step(Method::POST, path)
}
#[track_caller]
fn put(path: impl Into<String>) -> Step {
    step(Method::PUT, path)
}
#[track_caller]
fn patch(path: impl Into<String>) -> Step {
    step(Method::PATCH, path)
}
#[track_caller]
fn delete(path: impl Into<String>) -> Step {
    step(Method::DELETE, path)
}

impl Step {
    /// A request header (value is a template).
    fn h(mut self, name: &'static str, value: impl Into<String>) -> Step {
        self.headers.push((name, value.into()));
        self
    }
    /// `Content-Type` of the request.
    fn ct(self, value: &str) -> Step {
        self.h("content-type", value)
    }
    /// Sends the fixture `name` as the body.
    fn send(mut self, name: &'static str) -> Step {
        self.payload = Payload::Fixture(name);
        self
    }
    /// Sends bytes `range` of the fixture `name`.
    fn send_part(mut self, name: &'static str, range: Range<usize>) -> Step {
        self.payload = Payload::Part(name, range);
        self
    }
    /// Sends literal text (not expanded).
    fn send_text(mut self, text: impl Into<String>) -> Step {
        self.payload = Payload::Text(text.into());
        self
    }
    fn chunked(mut self) -> Step {
        self.chunked = true;
        self
    }
    fn is(mut self, status: u16) -> Step {
        self.status = Some(status);
        self
    }
    /// An OCI error: the status and a code in `{"errors":[{"code":..}]}`.
    fn err(mut self, status: u16, code: &'static str) -> Step {
        self.status = Some(status);
        self.code = Some(code);
        self
    }
    /// A response header equal to the template (a trailing `*`: starting with it).
    fn has(mut self, name: &'static str, value: impl Into<String>) -> Step {
        self.want_headers.push((name, HeaderWant::Is(value.into())));
        self
    }
    fn lacks(mut self, name: &'static str) -> Step {
        self.want_headers.push((name, HeaderWant::Absent));
        self
    }
    fn empty(mut self) -> Step {
        self.want_body = Some(BodyWant::Empty);
        self
    }
    fn returns(mut self, name: &'static str) -> Step {
        self.want_body = Some(BodyWant::Fixture(name));
        self
    }
    fn returns_part(mut self, name: &'static str, range: Range<usize>) -> Step {
        self.want_body = Some(BodyWant::Part(name, range));
        self
    }
    fn returns_text(mut self, text: impl Into<String>) -> Step {
        self.want_body = Some(BodyWant::Text(text.into()));
        self
    }
    fn json(mut self, fragment: impl Into<String>) -> Step {
        self.want_body = Some(BodyWant::Json(fragment.into()));
        self
    }
    fn json_set(mut self, pointer: &'static str, items: &[&str]) -> Step {
        let items = items.iter().map(|s| s.to_string()).collect();
        self.want_body = Some(BodyWant::JsonSet(pointer, items));
        self
    }
    /// Remembers a response header as the variable `var`.
    fn capture(mut self, var: &'static str, header: &'static str) -> Step {
        self.captures.push((var, header));
        self
    }
    /// Exactly these events (summaries, templates) are added to the outbox by this step.
    fn emits(mut self, events: &[&str]) -> Step {
        self.emits = Some(events.iter().map(|e| e.to_string()).collect());
        self
    }
}

// ---- the interpreter ----------------------------------------------------------------------------

/// A fresh core, its fixtures and the variables steps captured.
struct Script {
    core: Core,
    /// Whether the core reports events to a [`Recorder`].
    events: bool,
    fixtures: HashMap<String, Vec<u8>>,
    vars: HashMap<String, String>,
    ran: usize,
}

impl Script {
    async fn new() -> Script {
        Script::with(IndexChildren::All).await
    }

    /// A script over a core with this policy for the children of an index.
    async fn with(index_children: IndexChildren) -> Script {
        Script::build(index_children, None).await
    }

    /// A script over a core that reports events to a [`Recorder`].
    async fn with_events(lose_pulls: bool) -> Script {
        let sink = Arc::new(Recorder { lose_pulls });
        Script::build(IndexChildren::All, Some(sink)).await
    }

    async fn build(index_children: IndexChildren, events: Option<Arc<dyn EventSink>>) -> Script {
        let mut s = Script {
            events: events.is_some(),
            core: core(index_children, events).await,
            fixtures: HashMap::new(),
            vars: HashMap::new(),
            ran: 0,
        };
        // The OCI empty descriptor's content, used by every artifact.
        s.blob("empty", b"{}".to_vec());
        s
    }

    /// A fixture of raw bytes; defines `{name}`, `{name.len}` and `{name.sha512}`.
    fn blob(&mut self, name: &str, bytes: impl Into<Vec<u8>>) {
        let bytes = bytes.into();
        self.vars.insert(name.to_string(), sha256(&bytes));
        self.vars.insert(format!("{name}.sha512"), sha512(&bytes));
        self.vars
            .insert(format!("{name}.len"), bytes.len().to_string());
        self.fixtures.insert(name.to_string(), bytes);
    }

    /// A fixture from a template over earlier fixtures (e.g. a manifest).
    fn doc(&mut self, name: &str, template: &str) {
        let text = self.expand(template);
        self.blob(name, text);
    }

    /// Replaces every `{var}` whose name is made of `[A-Za-z0-9_.-]`; other braces stay.
    fn expand(&self, template: &str) -> String {
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let name_len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || "_.-".contains(c)))
                .unwrap_or(after.len());
            if name_len > 0 && after[name_len..].starts_with('}') {
                let name = &after[..name_len];
                let value = self
                    .vars
                    .get(name)
                    .unwrap_or_else(|| panic!("unknown variable {{{name}}} in {template:?}"));
                out.push_str(value);
                rest = &after[name_len + 1..];
            } else {
                out.push('{');
                rest = after;
            }
        }
        out.push_str(rest);
        out
    }

    fn fixture(&self, name: &str) -> &[u8] {
        self.fixtures
            .get(name)
            .unwrap_or_else(|| panic!("unknown fixture {name:?}"))
    }

    fn payload(&self, p: &Payload) -> Option<Vec<u8>> {
        match p {
            Payload::None => None,
            Payload::Fixture(n) => Some(self.fixture(n).to_vec()),
            Payload::Part(n, r) => Some(self.fixture(n)[r.clone()].to_vec()),
            Payload::Text(t) => Some(t.clone().into_bytes()),
        }
    }

    /// The outbox of the recording sink: `(seq, summary)` of every entry, in order.
    async fn outbox(&self) -> Vec<(i64, String)> {
        let entries = self
            .core
            .meta
            .outbox_peek(TOPIC, 100_000)
            .await
            .expect("read the outbox");
        entries
            .iter()
            .map(|e| (e.seq, event_summary(&e.payload)))
            .collect()
    }

    async fn run(&mut self, steps: Vec<Step>) {
        for s in steps {
            self.ran += 1;
            self.run_step(self.ran, s).await;
        }
    }

    async fn run_step(&mut self, index: usize, s: Step) {
        assert!(
            s.status.is_some(),
            "step {index} (line {}) expects no status: every step must be able to fail",
            s.line
        );
        let mut path = self.expand(&s.path);
        // A Location may already carry a query: further parameters then follow with `&`.
        if let Some(q) = path.find('?') {
            let (a, b) = path.split_at(q + 1);
            path = format!("{a}{}", b.replace('?', "&"));
        }
        assert!(
            s.emits.is_none() || self.events,
            "step {index} (line {}) expects events, but the core reports none",
            s.line
        );
        // The last entry of the outbox before the request.
        let seen = match s.emits {
            Some(_) => Some(self.outbox().await.last().map_or(0, |(seq, _)| *seq)),
            None => None,
        };
        let body = self.payload(&s.payload);
        let mut req = Request::builder().method(s.method.clone()).uri(&path);
        let mut sent_headers = Vec::new();
        for (k, v) in &s.headers {
            sent_headers.push((k.to_string(), self.expand(v)));
        }
        let explicit_length = s.headers.iter().any(|(k, _)| *k == "content-length");
        if s.chunked {
            sent_headers.push(("transfer-encoding".into(), "chunked".into()));
        } else if !explicit_length {
            // As an HTTP client does: a length for every body, and 0 for an empty write.
            match &body {
                Some(b) => sent_headers.push(("content-length".into(), b.len().to_string())),
                None if matches!(s.method, Method::POST | Method::PUT | Method::PATCH) => {
                    sent_headers.push(("content-length".into(), "0".into()))
                }
                None => {}
            }
        }
        for (k, v) in &sent_headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let bytes = body.clone().unwrap_or_default();
        let req_body = if s.chunked {
            let frames: Vec<Result<bytes::Bytes, std::io::Error>> = bytes
                .chunks(bytes.len().div_ceil(3).max(1))
                .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
                .collect();
            Body::from_stream(futures::stream::iter(frames))
        } else {
            Body::from(bytes.clone())
        };
        let req = req.body(req_body).expect("a well-formed request");
        let resp = self
            .core
            .app
            .clone()
            .oneshot(req)
            .await
            .expect("the router is infallible");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let got = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("the response body");

        let mut failures = Vec::new();
        let want = s.status.unwrap_or_default();
        if status != want {
            failures.push(format!("status {status}, expected {want}"));
        }
        if let Some(code) = s.code {
            match error_codes(&got) {
                Ok(codes) if codes.iter().any(|c| c == code) => {}
                Ok(codes) => failures.push(format!("error codes {codes:?}, expected {code}")),
                Err(e) => failures.push(format!("expected error {code}, but {e}")),
            }
        }
        for (name, w) in &s.want_headers {
            let value = headers
                .get(*name)
                .map(|v| v.to_str().unwrap_or("<not text>"));
            match (w, value) {
                (HeaderWant::Absent, None) => {}
                (HeaderWant::Absent, Some(v)) => {
                    failures.push(format!("header {name}: {v:?}, expected none"))
                }
                (HeaderWant::Is(t), v) => {
                    let t = self.expand(t);
                    let ok = match (t.strip_suffix('*'), v) {
                        (_, None) => false,
                        (Some(prefix), Some(v)) => v.starts_with(prefix),
                        (None, Some(v)) => v == t,
                    };
                    if !ok {
                        failures.push(format!("header {name}: {v:?}, expected {t:?}"));
                    }
                }
            }
        }
        if let Some(w) = &s.want_body {
            if let Err(e) = self.check_body(w, &got) {
                failures.push(e);
            }
        }
        if let (Some(want), Some(seen)) = (&s.emits, seen) {
            let want: Vec<String> = want.iter().map(|e| self.expand(e)).collect();
            let got: Vec<String> = self
                .outbox()
                .await
                .into_iter()
                .filter(|(seq, _)| *seq > seen)
                .map(|(_, e)| e)
                .collect();
            if got != want {
                failures.push(format!("events {got:?}, expected {want:?}"));
            }
        }
        for (var, name) in &s.captures {
            match headers.get(*name).and_then(|v| v.to_str().ok()) {
                Some(v) => {
                    self.vars.insert(var.to_string(), v.to_string());
                }
                None => failures.push(format!("no header {name} to capture as {{{var}}}")),
            }
        }
        if !failures.is_empty() {
            panic!(
                "step {index} (line {}) failed:\n  - {}\n\nrequest:\n  {} {path}\n{}  body: {}\n\nresponse:\n  {status}\n{}  body: {}\n",
                s.line,
                failures.join("\n  - "),
                s.method,
                sent_headers
                    .iter()
                    .map(|(k, v)| format!("  {k}: {v}\n"))
                    .collect::<String>(),
                show(&bytes),
                show_headers(&headers),
                show(&got),
            );
        }
    }

    fn check_body(&self, want: &BodyWant, got: &[u8]) -> Result<(), String> {
        let exact = |expected: &[u8]| {
            if got == expected {
                Ok(())
            } else {
                Err(format!(
                    "body of {} bytes ({}), expected {} bytes ({})",
                    got.len(),
                    sha256(got),
                    expected.len(),
                    sha256(expected)
                ))
            }
        };
        match want {
            BodyWant::Empty => exact(b""),
            BodyWant::Fixture(n) => exact(self.fixture(n)),
            BodyWant::Part(n, r) => exact(&self.fixture(n)[r.clone()]),
            BodyWant::Text(t) => exact(self.expand(t).as_bytes()),
            BodyWant::Json(fragment) => {
                let want = parse_json(&self.expand(fragment));
                let got: Value =
                    serde_json::from_slice(got).map_err(|e| format!("body is not JSON: {e}"))?;
                let mut errs = Vec::new();
                json_match(&want, &got, "", &mut errs);
                match errs.is_empty() {
                    true => Ok(()),
                    false => Err(errs.join("; ")),
                }
            }
            BodyWant::JsonSet(pointer, items) => {
                let got: Value =
                    serde_json::from_slice(got).map_err(|e| format!("body is not JSON: {e}"))?;
                let Some(Value::Array(list)) = got.pointer(pointer) else {
                    return Err(format!("no array at {pointer}"));
                };
                if list.len() != items.len() {
                    return Err(format!(
                        "{pointer} has {} elements, expected {}",
                        list.len(),
                        items.len()
                    ));
                }
                let mut used = vec![false; list.len()];
                for item in items {
                    let want = parse_json(&self.expand(item));
                    let found = (0..list.len()).find(|&i| {
                        let mut errs = Vec::new();
                        json_match(&want, &list[i], "", &mut errs);
                        !used[i] && errs.is_empty()
                    });
                    match found {
                        Some(i) => used[i] = true,
                        None => return Err(format!("no element of {pointer} matches {want}")),
                    }
                }
                Ok(())
            }
        }
    }
}

fn parse_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("bad JSON in a step ({e}): {text}"))
}

/// Whether `got` has everything `want` lists (see [`BodyWant::Json`]).
fn json_match(want: &Value, got: &Value, at: &str, errs: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, wv) in w {
                match g.get(k) {
                    Some(gv) => json_match(wv, gv, &format!("{at}/{k}"), errs),
                    None if wv.is_null() => {}
                    None => errs.push(format!("{at}/{k} is missing")),
                }
            }
        }
        (Value::Array(w), Value::Array(g)) if w.len() == g.len() => {
            for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                json_match(wv, gv, &format!("{at}/{i}"), errs);
            }
        }
        (w, g) if w == g => {}
        (w, g) => errs.push(format!("{at}: {g}, expected {w}")),
    }
}

fn error_codes(body: &[u8]) -> Result<Vec<String>, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON ({e})"))?;
    let errors = v["errors"]
        .as_array()
        .ok_or("the body has no \"errors\" array")?;
    Ok(errors
        .iter()
        .map(|e| e["code"].as_str().unwrap_or("<no code>").to_string())
        .collect())
}

fn show(body: &[u8]) -> String {
    const MAX: usize = 2000;
    if body.is_empty() {
        return "(empty)".into();
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX)]);
    match body.len() > MAX {
        true => format!("{text}... ({} bytes in all)", body.len()),
        false => text.into_owned(),
    }
}

fn show_headers(h: &HeaderMap) -> String {
    h.iter()
        .map(|(k, v)| format!("  {k}: {}\n", v.to_str().unwrap_or("<not text>")))
        .collect()
}

// ---- cases --------------------------------------------------------------------------------------
//
// The step tables are kept one case to a line or a few (`rustfmt::skip`): they are data.

/// A repository name of several components, used by most cases.
const R: &str = "team/app/sub";

/// Fixtures of two images: `cfg`, `layer` and `m1` over them; `cfg2` and `m2` over `cfg2`, `layer`.
fn images(t: &mut Script) {
    t.blob("cfg", br#"{"architecture":"amd64","os":"linux"}"#.to_vec());
    t.blob("cfg2", br#"{"architecture":"arm64","os":"linux"}"#.to_vec());
    t.blob("layer", pseudo("layer", 2000));
    t.doc("m1", &image("cfg", &["layer"]));
    t.doc("m2", &image("cfg2", &["layer"]));
}

/// Monolithic pushes of the blob fixtures `names` into `repo`.
fn push_blobs(repo: &str, names: &[&'static str]) -> Vec<Step> {
    names
        .iter()
        .map(|n| {
            post(format!("/v2/{repo}/blobs/uploads/?digest={{{n}}}"))
                .send(n)
                .is(201)
        })
        .collect()
}

/// A push of the manifest fixture `name` into `repo` under `reference`.
#[track_caller]
fn push_manifest(repo: &str, reference: &str, name: &'static str) -> Step {
    put(format!("/v2/{repo}/manifests/{reference}"))
        .ct(OCI_MANIFEST)
        .send(name)
        .is(201)
}

#[tokio::test]
#[rustfmt::skip]
async fn base_and_routing() {
    let mut t = Script::new().await;
    t.run(vec![
        get("/v2/").is(200).returns_text("{}")
            .has("docker-distribution-api-version", "registry/2.0")
            .has("content-type", "application/json"),
        get("/v2").is(200).returns_text("{}"),
        // No endpoint at the end of the path.
        get("/v2/team/app/nothing/here").err(404, "UNSUPPORTED"),
        get("/v2/team/manifests/").err(404, "UNSUPPORTED"),
        // An endpoint, with a method it does not have.
        post(format!("/v2/{R}/tags/list")).err(405, "UNSUPPORTED"),
        patch(format!("/v2/{R}/manifests/v1")).err(405, "UNSUPPORTED"),
        put(format!("/v2/{R}/blobs/{}", sha256(b"x"))).send_text("x").err(405, "UNSUPPORTED"),
    ])
    .await;
}

#[tokio::test]
#[rustfmt::skip]
async fn blobs() {
    let mut t = Script::new().await;
    t.blob("b", pseudo("blob b", 1000));
    t.blob("other", b"only in another repository".to_vec());
    t.blob("zero", Vec::new());
    t.blob("never", b"never pushed".to_vec());
    let blob = |d: &str| format!("/v2/{R}/blobs/{{{d}}}");
    let mut steps = push_blobs(R, &["b"]);
    steps.extend(push_blobs("elsewhere", &["other"]));
    steps.extend(vec![
        // Whole blob.
        get(blob("b")).is(200).returns("b")
            .has("content-length", "{b.len}").has("content-type", "application/octet-stream")
            .has("docker-content-digest", "{b}").has("accept-ranges", "bytes")
            .has("etag", "\"{b}\""),
        head(blob("b")).is(200).empty()
            .has("content-length", "{b.len}").has("docker-content-digest", "{b}"),
        // Ranges.
        get(blob("b")).h("range", "bytes=0-9").is(206).returns_part("b", 0..10)
            .has("content-range", "bytes 0-9/1000").has("content-length", "10"),
        get(blob("b")).h("range", "bytes=990-").is(206).returns_part("b", 990..1000)
            .has("content-range", "bytes 990-999/1000"),
        get(blob("b")).h("range", "bytes=-10").is(206).returns_part("b", 990..1000),
        get(blob("b")).h("range", "bytes=900-5000").is(206).returns_part("b", 900..1000)
            .has("content-range", "bytes 900-999/1000"),
        get(blob("b")).h("range", "bytes=0-0").is(206).returns_part("b", 0..1),
        head(blob("b")).h("range", "bytes=10-19").is(206).empty()
            .has("content-range", "bytes 10-19/1000").has("content-length", "10"),
        // Several ranges, or another unit: the whole blob.
        get(blob("b")).h("range", "bytes=0-1,4-5").is(200).returns("b"),
        get(blob("b")).h("range", "items=0-1").is(200).returns("b"),
        // Unsatisfiable ranges.
        get(blob("b")).h("range", "bytes=1000-").is(416).has("content-range", "bytes */1000"),
        get(blob("b")).h("range", "bytes=5-2").is(416).has("content-range", "bytes */1000"),
        get(blob("b")).h("range", "bytes=-0").is(416),
        get(blob("b")).h("range", "bytes=x-1").is(416),
        // Unknown, or known only to another repository.
        get(blob("never")).err(404, "BLOB_UNKNOWN"),
        head(blob("never")).is(404).lacks("docker-content-digest"),
        get(blob("other")).err(404, "BLOB_UNKNOWN"),
        get(blob("other")).h("range", "bytes=0-3").err(404, "BLOB_UNKNOWN"),
        get("/v2/no/such/repo/blobs/{b}").err(404, "BLOB_UNKNOWN"),
        get("/v2/elsewhere/blobs/{other}").is(200).returns("other"),
        // Malformed digests and names.
        get(format!("/v2/{R}/blobs/sha256:abc")).err(400, "DIGEST_INVALID"),
        get(format!("/v2/{R}/blobs/notadigest")).err(400, "DIGEST_INVALID"),
        get(format!("/v2/{R}/blobs/sha256:{}", "A".repeat(64))).err(400, "DIGEST_INVALID"),
        get(format!("/v2/{R}/blobs/sha512:{}", "a".repeat(64))).err(400, "DIGEST_INVALID"),
        get(format!("/v2/{R}/blobs/md5:{}", "a".repeat(32))).err(400, "DIGEST_INVALID"),
        head(format!("/v2/{R}/blobs/sha256:abc")).is(400),
        get("/v2/Team/app/blobs/{b}").err(400, "NAME_INVALID"),
        get("/v2/team//app/blobs/{b}").err(400, "NAME_INVALID"),
        get("/v2/team/app-/blobs/{b}").err(400, "NAME_INVALID"),
        get(format!("/v2/{}/blobs/{{b}}", "a".repeat(256))).err(400, "NAME_INVALID"),
        head("/v2/Team/blobs/{b}").is(400),
        // A sha512 digest, and the empty blob.
        post(format!("/v2/{R}/blobs/uploads/?digest={{b.sha512}}")).send("b").is(201)
            .has("docker-content-digest", "{b.sha512}")
            .has("location", format!("/v2/{R}/blobs/{{b.sha512}}")),
        get(blob("b.sha512")).is(200).returns("b").has("docker-content-digest", "{b.sha512}"),
        post(format!("/v2/{R}/blobs/uploads/?digest={{zero}}")).is(201),
        get(blob("zero")).is(200).has("content-length", "0").empty(),
        get(blob("zero")).h("range", "bytes=0-").is(416).has("content-range", "bytes */0"),
        // Delete removes the blob from one repository only.
        post("/v2/second/blobs/uploads/?digest={b}").send("b").is(201),
        delete(blob("b")).is(202).empty().has("docker-content-digest", "{b}"),
        get(blob("b")).err(404, "BLOB_UNKNOWN"),
        head(blob("b")).is(404),
        get("/v2/second/blobs/{b}").is(200).returns("b"),
        get(blob("b.sha512")).is(200).returns("b"),
        delete(blob("b")).err(404, "BLOB_UNKNOWN"),
        delete(blob("never")).err(404, "BLOB_UNKNOWN"),
        delete(blob("other")).err(404, "BLOB_UNKNOWN"),
        delete(format!("/v2/{R}/blobs/sha256:abc")).err(400, "DIGEST_INVALID"),
        delete("/v2/Team/blobs/{b}").err(400, "NAME_INVALID"),
        // Deleted, then pushed again.
        post(format!("/v2/{R}/blobs/uploads/?digest={{b}}")).send("b").is(201),
        get(blob("b")).is(200).returns("b"),
    ]);
    t.run(steps).await;
}

#[tokio::test]
#[rustfmt::skip]
async fn upload_sessions() {
    let mut t = Script::new().await;
    t.blob("u", pseudo("upload u", 300));
    t.blob("v", pseudo("upload v", 100));
    t.blob("w", b"pushed with the wrong digest".to_vec());
    t.blob("never", b"never pushed".to_vec());
    let start = || post(format!("/v2/{R}/blobs/uploads/"));
    let blob = |d: &str| format!("/v2/{R}/blobs/{{{d}}}");
    t.run(vec![
        // Start, then status.
        start().is(202).empty()
            .has("location", format!("/v2/{R}/blobs/uploads/*"))
            .has("range", "0-0").has("docker-upload-uuid", "*")
            .capture("s1", "location").capture("id1", "docker-upload-uuid"),
        get("{s1}").is(204).has("range", "0-0").has("location", "{s1}")
            .has("docker-upload-uuid", "{id1}"),
        get(format!("/v2/{R}/blobs/uploads/{{id1}}")).is(204),
        // A chunk with Content-Range, then out of order: overlapping, repeated, leaving a gap.
        patch("{s1}").h("content-range", "0-99").send_part("u", 0..100).is(202)
            .has("range", "0-99").has("location", "{s1}").has("docker-upload-uuid", "{id1}"),
        patch("{s1}").h("content-range", "50-149").send_part("u", 50..150)
            .err(416, "BLOB_UPLOAD_INVALID").has("range", "0-99").has("location", "{s1}"),
        patch("{s1}").h("content-range", "0-99").send_part("u", 0..100)
            .err(416, "BLOB_UPLOAD_INVALID").has("range", "0-99"),
        patch("{s1}").h("content-range", "150-199").send_part("u", 150..200)
            .err(416, "BLOB_UPLOAD_INVALID").has("range", "0-99"),
        get("{s1}").is(204).has("range", "0-99"),
        // A malformed Content-Range, or one that disagrees with the length: nothing appended.
        patch("{s1}").h("content-range", "abc").send_part("u", 100..110)
            .err(400, "BLOB_UPLOAD_INVALID"),
        patch("{s1}").h("content-range", "100-").send_part("u", 100..110)
            .err(400, "BLOB_UPLOAD_INVALID"),
        patch("{s1}").h("content-range", "109-100").send_part("u", 100..110)
            .err(400, "BLOB_UPLOAD_INVALID"),
        patch("{s1}").h("content-range", "100-119").send_part("u", 100..110)
            .err(400, "BLOB_UPLOAD_INVALID"),
        get("{s1}").is(204).has("range", "0-99"),
        // A streamed chunk (no Content-Range, no length), then one with a `bytes ` prefix.
        patch("{s1}").send_part("u", 100..200).chunked().is(202).has("range", "0-199"),
        patch("{s1}").h("content-range", "bytes 200-299/300").send_part("u", 200..300)
            .is(202).has("range", "0-299"),
        // Finish without a last chunk.
        put("{s1}?digest={u}").is(201).empty()
            .has("location", blob("u")).has("docker-content-digest", "{u}"),
        get(blob("u")).is(200).returns("u"),
        // A finished session is gone.
        get("{s1}").err(404, "BLOB_UPLOAD_UNKNOWN"),
        patch("{s1}").h("content-range", "300-309").send_part("v", 0..10)
            .err(404, "BLOB_UPLOAD_UNKNOWN"),
        put("{s1}?digest={u}").err(404, "BLOB_UPLOAD_UNKNOWN"),
        delete("{s1}").err(404, "BLOB_UPLOAD_UNKNOWN"),
        // The whole blob in the PUT.
        start().is(202).capture("s2", "location"),
        put("{s2}?digest={v}").send("v").is(201).has("docker-content-digest", "{v}"),
        get(blob("v")).is(200).returns("v"),
        // The last chunk in the PUT with Content-Range (out of order first), and without.
        start().is(202).capture("s3", "location"),
        patch("{s3}").h("content-range", "0-39").send_part("v", 0..40).is(202),
        put("{s3}?digest={v}").h("content-range", "30-99").send_part("v", 30..100)
            .err(416, "BLOB_UPLOAD_INVALID").has("range", "0-39"),
        put("{s3}?digest={v}").h("content-range", "50-99").send_part("v", 50..100)
            .err(416, "BLOB_UPLOAD_INVALID").has("range", "0-39"),
        get("{s3}").is(204).has("range", "0-39"),
        put("{s3}?digest={v}").h("content-range", "40-99").send_part("v", 40..100)
            .is(201).has("docker-content-digest", "{v}"),
        start().is(202).capture("s4", "location"),
        patch("{s4}").send_part("u", 0..120).is(202).has("range", "0-119"),
        put("{s4}?digest={u}").send_part("u", 120..300).is(201),
        get(blob("u")).is(200).returns("u"),
        // PUT without a digest, with a malformed one, with the wrong one.
        start().is(202).capture("s5", "location"),
        patch("{s5}").send_part("v", 0..60).is(202),
        put("{s5}").err(400, "DIGEST_INVALID"),
        put("{s5}?digest=sha256:abc").err(400, "DIGEST_INVALID"),
        put("{s5}?digest={never}").err(400, "DIGEST_INVALID"),
        get(blob("never")).err(404, "BLOB_UNKNOWN"),
        // The session survives a refused finish, and finishes with the right digest.
        get("{s5}").is(204).has("range", "0-59"),
        put("{s5}?digest={v}").send_part("v", 60..100).is(201),
        // The wrong digest with the last chunk in the PUT: stored under neither.
        start().is(202).capture("s6", "location"),
        put("{s6}?digest={never}").send("w").err(400, "DIGEST_INVALID"),
        get(blob("w")).err(404, "BLOB_UNKNOWN"),
        get(blob("never")).err(404, "BLOB_UNKNOWN"),
        // Cancel.
        start().is(202).capture("s7", "location"),
        patch("{s7}").send_part("w", 0..10).is(202),
        delete("{s7}").is(204).empty(),
        get("{s7}").err(404, "BLOB_UPLOAD_UNKNOWN"),
        delete("{s7}").err(404, "BLOB_UPLOAD_UNKNOWN"),
        put("{s7}?digest={w}").send("w").err(404, "BLOB_UPLOAD_UNKNOWN"),
        get(blob("w")).err(404, "BLOB_UNKNOWN"),
        // The upload id of another repository, and unknown ids.
        start().is(202).capture("s8", "location").capture("id8", "docker-upload-uuid"),
        patch("{s8}").send_part("w", 0..5).is(202),
        get("/v2/other/repo/blobs/uploads/{id8}").err(404, "BLOB_UPLOAD_UNKNOWN"),
        patch("/v2/other/repo/blobs/uploads/{id8}").h("content-range", "5-9")
            .send_part("w", 5..10).err(404, "BLOB_UPLOAD_UNKNOWN"),
        put("/v2/other/repo/blobs/uploads/{id8}?digest={w}").send_part("w", 5..28)
            .err(404, "BLOB_UPLOAD_UNKNOWN"),
        delete("/v2/other/repo/blobs/uploads/{id8}").err(404, "BLOB_UPLOAD_UNKNOWN"),
        get("/v2/other/repo/blobs/{w}").err(404, "BLOB_UNKNOWN"),
        get("{s8}").is(204).has("range", "0-4"),
        get(format!("/v2/{R}/blobs/uploads/no-such-upload")).err(404, "BLOB_UPLOAD_UNKNOWN"),
        patch(format!("/v2/{R}/blobs/uploads/3f1d3e8a-0000-4000-8000-000000000000")).send("w")
            .err(404, "BLOB_UPLOAD_UNKNOWN"),
        // Bad names.
        post("/v2/Team/blobs/uploads/").err(400, "NAME_INVALID"),
        get("/v2/Team/blobs/uploads/{id8}").err(400, "NAME_INVALID"),
    ])
    .await;
}

#[tokio::test]
#[rustfmt::skip]
async fn monolithic_pushes_and_mounts() {
    let mut t = Script::new().await;
    t.blob("m", pseudo("mounted", 500));
    t.blob("x", b"the real content".to_vec());
    t.blob("never", b"never pushed".to_vec());
    t.run(vec![
        // Monolithic POST.
        post(format!("/v2/{R}/blobs/uploads/?digest={{x}}")).send("x").is(201).empty()
            .has("location", format!("/v2/{R}/blobs/{{x}}"))
            .has("docker-content-digest", "{x}"),
        get(format!("/v2/{R}/blobs/{{x}}")).is(200).returns("x"),
        post("/v2/mono/bad/blobs/uploads/?digest={never}").send("x").err(400, "DIGEST_INVALID"),
        post("/v2/mono/bad/blobs/uploads/?digest={never.sha512}").send("x")
            .err(400, "DIGEST_INVALID"),
        post("/v2/mono/bad/blobs/uploads/?digest=sha256:abc").send("x")
            .err(400, "DIGEST_INVALID"),
        get("/v2/mono/bad/blobs/{x}").err(404, "BLOB_UNKNOWN"),
        get("/v2/mono/bad/blobs/{never}").err(404, "BLOB_UNKNOWN"),
        post("/v2/Mono/blobs/uploads/?digest={x}").send("x").err(400, "NAME_INVALID"),
        // Mount from a repository that has the blob.
        post("/v2/src/repo/blobs/uploads/?digest={m}").send("m").is(201),
        get("/v2/dst/repo/blobs/{m}").err(404, "BLOB_UNKNOWN"),
        post("/v2/dst/repo/blobs/uploads/?mount={m}&from=src/repo").is(201).empty()
            .has("location", "/v2/dst/repo/blobs/{m}").has("docker-content-digest", "{m}"),
        get("/v2/dst/repo/blobs/{m}").is(200).returns("m"),
        get("/v2/src/repo/blobs/{m}").is(200).returns("m"),
        // Without `from`: found wherever it is.
        post(format!("/v2/{R}/blobs/uploads/?mount={{m}}")).is(201)
            .has("location", format!("/v2/{R}/blobs/{{m}}")),
        get(format!("/v2/{R}/blobs/{{m}}")).is(200).returns("m"),
        // Not mountable: an upload session instead, which works.
        post("/v2/dst/repo/blobs/uploads/?mount={never}&from=src/repo").is(202)
            .has("location", "/v2/dst/repo/blobs/uploads/*").has("range", "0-0")
            .has("docker-upload-uuid", "*").capture("s1", "location"),
        get("{s1}").is(204).has("range", "0-0"),
        get("/v2/dst/repo/blobs/{never}").err(404, "BLOB_UNKNOWN"),
        put("{s1}?digest={never}").send("never").is(201),
        get("/v2/dst/repo/blobs/{never}").is(200).returns("never"),
        // From a repository that does not link it, or does not exist.
        post("/v2/third/blobs/uploads/?mount={m}&from=mono/bad").is(202)
            .has("location", "/v2/third/blobs/uploads/*"),
        post("/v2/third/blobs/uploads/?mount={m}&from=never/existed").is(202),
        get("/v2/third/blobs/{m}").err(404, "BLOB_UNKNOWN"),
        post("/v2/third/blobs/uploads/?mount={x}").is(201),
        get("/v2/third/blobs/{x}").is(200).returns("x"),
        // Malformed mount parameters.
        post("/v2/third/blobs/uploads/?mount=sha256:abc&from=src/repo")
            .err(400, "DIGEST_INVALID"),
        post("/v2/third/blobs/uploads/?mount={m}&from=Src/Repo").err(400, "NAME_INVALID"),
        post("/v2/third/blobs/uploads/?mount={m}&from=a//b").err(400, "NAME_INVALID"),
    ])
    .await;
}

#[tokio::test]
#[rustfmt::skip]
async fn manifests() {
    let mut t = Script::new().await;
    images(&mut t);
    t.blob("nolayer", b"never pushed layer".to_vec());
    t.doc("missing", &image("cfg", &["layer", "nolayer"]));
    t.doc("m3", &image("cfg", &[]));
    t.doc("idx", &index(&["m1", "m2"]));
    t.doc("idx_missing", &index(&["m1", "m3"]));
    t.doc("dm", &docker_image("cfg", &["layer"]));
    t.doc("sig", &artifact("application/vnd.example.sig", "m1", None));
    let big_ok = pad_to(&t.expand(&image("cfg", &[])), 4 * 1024 * 1024);
    t.blob("big_ok", big_ok);
    let big = pad_to(&t.expand(&image("cfg", &[])), 4 * 1024 * 1024 + 1);
    t.blob("big", big);
    t.blob("never", b"never pushed".to_vec());
    let m = |reference: &str| format!("/v2/{R}/manifests/{reference}");
    let mut steps = vec![
        // Blobs first: a refused push leaves no repository behind.
        put(m("v1")).ct(OCI_MANIFEST).send("m1").err(400, "MANIFEST_BLOB_UNKNOWN"),
        get(m("v1")).err(404, "NAME_UNKNOWN"),
    ];
    steps.extend(push_blobs(R, &["cfg", "layer"]));
    steps.extend(vec![
        put(m("v1")).ct(OCI_MANIFEST).send("missing").err(400, "MANIFEST_BLOB_UNKNOWN"),
        put(m("{missing}")).ct(OCI_MANIFEST).send("missing").err(400, "MANIFEST_BLOB_UNKNOWN"),
        get(m("{missing}")).err(404, "MANIFEST_UNKNOWN"),
        // By tag.
        put(m("v1")).ct(OCI_MANIFEST).send("m1").is(201).empty()
            .has("location", m("{m1}")).has("docker-content-digest", "{m1}")
            .lacks("oci-subject"),
        get(m("v1")).h("accept", OCI_MANIFEST).is(200).returns("m1")
            .has("content-type", OCI_MANIFEST).has("docker-content-digest", "{m1}")
            .has("content-length", "{m1.len}").has("etag", "\"{m1}\""),
        get(m("v1")).is(200).returns("m1"),
        get(m("v1")).h("accept", "*/*").is(200).returns("m1"),
        get(m("v1")).h("accept", format!("{DOCKER_MANIFEST}, {OCI_MANIFEST}")).is(200),
        head(m("v1")).h("accept", OCI_MANIFEST).is(200).empty()
            .has("content-type", OCI_MANIFEST).has("docker-content-digest", "{m1}")
            .has("content-length", "{m1.len}"),
        // By digest.
        get(m("{m1}")).is(200).returns("m1")
            .has("docker-content-digest", "{m1}").has("content-type", OCI_MANIFEST),
        head(m("{m1}")).is(200).empty().has("docker-content-digest", "{m1}"),
        // By tag, Accept must admit the stored type; by digest it is not consulted.
        get(m("v1")).h("accept", DOCKER_MANIFEST).err(404, "MANIFEST_UNKNOWN"),
        head(m("v1")).h("accept", DOCKER_MANIFEST).is(404),
        get(m("{m1}")).h("accept", DOCKER_MANIFEST).is(200).has("content-type", OCI_MANIFEST),
        // Push by digest: no tag.
        put(m("{m2}")).ct(OCI_MANIFEST).send("m2").err(400, "MANIFEST_BLOB_UNKNOWN"),
    ]);
    steps.extend(push_blobs(R, &["cfg2"]));
    steps.extend(vec![
        put(m("{m2}")).ct(OCI_MANIFEST).send("m2").is(201)
            .has("location", m("{m2}")).has("docker-content-digest", "{m2}"),
        get(m("{m2}")).is(200).returns("m2"),
        get(format!("/v2/{R}/tags/list")).is(200).json(r#"{"tags":["v1"]}"#),
        put(m("{m2.sha512}")).ct(OCI_MANIFEST).send("m2").is(201)
            .has("docker-content-digest", "{m2.sha512}").has("location", m("{m2.sha512}")),
        get(m("{m2.sha512}")).is(200).returns("m2").has("docker-content-digest", "{m2.sha512}"),
        // Refused pushes.
        put(m("{m1}")).ct(OCI_MANIFEST).send("m2").err(400, "DIGEST_INVALID"),
        put(m("{m2.sha512}")).ct(OCI_MANIFEST).send("m1").err(400, "DIGEST_INVALID"),
        put(m("v2")).ct(OCI_MANIFEST).send_text("{").err(400, "MANIFEST_INVALID"),
        put(m("v2")).ct(OCI_MANIFEST).send_text("not json").err(400, "MANIFEST_INVALID"),
        put(m("v2")).ct(OCI_MANIFEST).send_text("[]").err(400, "MANIFEST_INVALID"),
        put(m("v2")).ct(OCI_MANIFEST).err(400, "MANIFEST_INVALID"),
        put(m("v2")).ct(OCI_INDEX).send("m1").err(400, "MANIFEST_INVALID"),
        put(m("v2")).ct(OCI_MANIFEST).send("idx").err(400, "MANIFEST_INVALID"),
        put(m(".bad")).ct(OCI_MANIFEST).send("m1").err(400, "TAG_INVALID"),
        put(m("-dash")).ct(OCI_MANIFEST).send("m1").err(400, "TAG_INVALID"),
        put(m("t+plus")).ct(OCI_MANIFEST).send("m1").err(400, "TAG_INVALID"),
        put(m(&"a".repeat(129))).ct(OCI_MANIFEST).send("m1").err(400, "TAG_INVALID"),
        put(m(&"a".repeat(128))).ct(OCI_MANIFEST).send("m1").is(201),
        put(m("sha256:abc")).ct(OCI_MANIFEST).send("m1").err(400, "DIGEST_INVALID"),
        put("/v2/Team/manifests/v1").ct(OCI_MANIFEST).send("m1").err(400, "NAME_INVALID"),
        get(m("v2")).err(404, "MANIFEST_UNKNOWN"),
        // The size limit is 4 MiB.
        put(m("big")).ct(OCI_MANIFEST).send("big").err(413, "SIZE_INVALID"),
        get(m("big")).err(404, "MANIFEST_UNKNOWN"),
        put(m("big")).ct(OCI_MANIFEST).send("big_ok").is(201),
        get(m("big")).is(200).returns("big_ok"),
        // Unknown manifests and repositories.
        get(m("nope")).err(404, "MANIFEST_UNKNOWN"),
        head(m("nope")).is(404).lacks("docker-content-digest"),
        get(m("{never}")).err(404, "MANIFEST_UNKNOWN"),
        head(m("{never}")).is(404),
        get(m("{layer}")).err(404, "MANIFEST_UNKNOWN"),
        get("/v2/unknown/repo/manifests/v1").err(404, "NAME_UNKNOWN"),
        get("/v2/unknown/repo/manifests/{m1}").err(404, "NAME_UNKNOWN"),
        head("/v2/unknown/repo/manifests/v1").is(404),
        get("/v2/Team/manifests/v1").err(400, "NAME_INVALID"),
        head("/v2/Team/manifests/v1").is(400),
        get(m("sha256:abc")).err(400, "DIGEST_INVALID"),
        // An index, pushed after its children (and refused before they all exist).
        put(m("multi")).ct(OCI_INDEX).send("idx_missing").err(400, "MANIFEST_BLOB_UNKNOWN"),
        put(m("multi")).ct(OCI_INDEX).send("idx").is(201)
            .has("docker-content-digest", "{idx}").lacks("oci-subject"),
        get(m("multi")).h("accept", OCI_INDEX).is(200).returns("idx")
            .has("content-type", OCI_INDEX),
        get(m("multi")).h("accept", OCI_MANIFEST).err(404, "MANIFEST_UNKNOWN"),
        get(m("{idx}")).is(200).returns("idx").has("content-type", OCI_INDEX),
        // A manifest with a subject.
        post(format!("/v2/{R}/blobs/uploads/?digest={{empty}}")).send("empty").is(201),
        put(m("{sig}")).ct(OCI_MANIFEST).send("sig").is(201)
            .has("oci-subject", "{m1}").has("docker-content-digest", "{sig}"),
        get(m("{sig}")).is(200).returns("sig"),
        // A Docker schema 2 manifest.
        put(m("docker")).ct(DOCKER_MANIFEST).send("dm").is(201),
        get(m("docker")).h("accept", DOCKER_MANIFEST).is(200).returns("dm")
            .has("content-type", DOCKER_MANIFEST),
        // Retagging moves the tag.
        push_manifest(R, "latest", "m1"),
        push_manifest(R, "latest", "m2"),
        get(m("latest")).is(200).returns("m2"),
        // Deleting a tag keeps the manifest.
        delete(m("v1")).is(202).empty(),
        get(m("v1")).err(404, "MANIFEST_UNKNOWN"),
        delete(m("v1")).err(404, "MANIFEST_UNKNOWN"),
        get(m("{m1}")).is(200).returns("m1"),
        // Deleting by digest takes its tags along.
        delete(m("{m2}")).is(202).empty(),
        get(m("{m2}")).err(404, "MANIFEST_UNKNOWN"),
        get(m("latest")).err(404, "MANIFEST_UNKNOWN"),
        head(m("{m2}")).is(404),
        delete(m("{m2}")).err(404, "MANIFEST_UNKNOWN"),
        // Pushed again after a delete.
        push_manifest(R, "latest", "m2"),
        get(m("latest")).is(200).returns("m2"),
        // Unknown and malformed deletes.
        delete(m("nope")).err(404, "MANIFEST_UNKNOWN"),
        delete(m("{never}")).err(404, "MANIFEST_UNKNOWN"),
        delete("/v2/unknown/repo/manifests/v1").is(404),
        delete("/v2/unknown/repo/manifests/{m1}").is(404),
        delete(m(".bad")).err(400, "TAG_INVALID"),
        delete(m("sha256:abc")).err(400, "DIGEST_INVALID"),
        delete("/v2/Team/manifests/v1").err(400, "NAME_INVALID"),
    ]);
    t.run(steps).await;
}

#[tokio::test]
#[rustfmt::skip]
async fn read_by_impossible_reference_is_unknown() {
    let mut t = Script::new().await;
    images(&mut t);
    let m = |reference: &str| format!("/v2/{R}/manifests/{reference}");
    let mut steps = push_blobs(R, &["cfg", "layer"]);
    steps.extend(vec![
        push_manifest(R, "v1", "m1"),
        // Neither a valid tag nor a digest: no manifest can be stored under it.
        get(m(".INVALID_MANIFEST_NAME")).err(404, "MANIFEST_UNKNOWN"), // new
        head(m(".INVALID_MANIFEST_NAME")).is(404), // new
        get(m("-dash")).err(404, "MANIFEST_UNKNOWN"), // new
        head(m(&"a".repeat(129))).is(404), // new
        // Writing under one is still refused as an invalid tag.
        put(m(".INVALID_MANIFEST_NAME")).ct(OCI_MANIFEST).send("m1").err(400, "TAG_INVALID"),
        get(m("v1")).is(200).returns("m1"),
    ]);
    t.run(steps).await;
}

#[tokio::test]
#[rustfmt::skip]
async fn tags_list() {
    let mut t = Script::new().await;
    images(&mut t);
    let tags = format!("/v2/{R}/tags/list");
    let mut steps = push_blobs(R, &["cfg", "layer"]);
    for tag in ["d", "b", "1.0", "a", "c"] {
        steps.push(push_manifest(R, tag, "m1"));
    }
    steps.extend(vec![
        get(&tags).is(200).lacks("link").has("content-type", "application/json")
            .json(format!(r#"{{"name":"{R}","tags":["1.0","a","b","c","d"]}}"#)),
        // Pages, following the Link header.
        get(format!("{tags}?n=2")).is(200).json(r#"{"tags":["1.0","a"]}"#)
            .has("link", format!(r#"<{tags}?n=2&last=a>; rel="next""#)),
        get(format!("{tags}?n=2&last=a")).is(200).json(r#"{"tags":["b","c"]}"#)
            .has("link", format!(r#"<{tags}?n=2&last=c>; rel="next""#)),
        get(format!("{tags}?n=2&last=c")).is(200).json(r#"{"tags":["d"]}"#).lacks("link"),
        get(format!("{tags}?n=5")).is(200).json(r#"{"tags":["1.0","a","b","c","d"]}"#)
            .lacks("link"),
        get(format!("{tags}?n=0")).is(200).json(r#"{"tags":[]}"#).lacks("link"),
        get(format!("{tags}?last=b")).is(200).json(r#"{"tags":["c","d"]}"#).lacks("link"),
        get(format!("{tags}?last=d")).is(200).json(r#"{"tags":[]}"#),
        get(format!("{tags}?last=0")).is(200).json(r#"{"tags":["1.0","a","b","c","d"]}"#),
        get(format!("{tags}?n=abc")).is(400),
        get(format!("{tags}?n=-1")).is(400),
        // Deleting a tag removes it from the list.
        delete(format!("/v2/{R}/manifests/b")).is(202),
        get(&tags).is(200).json(r#"{"tags":["1.0","a","c","d"]}"#),
        // Unknown and malformed repositories.
        get("/v2/unknown/repo/tags/list").err(404, "NAME_UNKNOWN"),
        get("/v2/Team/tags/list").err(400, "NAME_INVALID"),
    ]);
    // A repository that holds only a blob exists, without tags.
    steps.extend(push_blobs("blobs/only", &["cfg"]));
    steps.push(get("/v2/blobs/only/tags/list").is(200).json(r#"{"name":"blobs/only","tags":[]}"#));
    t.run(steps).await;
}

#[tokio::test]
#[rustfmt::skip]
async fn catalog() {
    let mut t = Script::new().await;
    images(&mut t);
    let mut steps = vec![
        get("/v2/_catalog").is(200).json(r#"{"repositories":[]}"#).lacks("link"),
    ];
    for repo in ["c", R, "a/x", "b"] {
        steps.extend(push_blobs(repo, &["cfg", "layer"]));
        steps.push(push_manifest(repo, "v1", "m1"));
    }
    // A repository with only blobs is not listed.
    steps.extend(push_blobs("blobs/only", &["cfg"]));
    steps.extend(vec![
        get("/v2/_catalog").is(200).lacks("link").has("content-type", "application/json")
            .json(format!(r#"{{"repositories":["a/x","b","c","{R}"]}}"#)),
        get("/v2/_catalog?n=2").is(200).json(r#"{"repositories":["a/x","b"]}"#)
            .has("link", r#"</v2/_catalog?n=2&last=b>; rel="next""#),
        get("/v2/_catalog?n=2&last=b").is(200).lacks("link")
            .json(format!(r#"{{"repositories":["c","{R}"]}}"#)),
        get("/v2/_catalog?n=1&last=a/x").is(200).json(r#"{"repositories":["b"]}"#)
            .has("link", r#"</v2/_catalog?n=1&last=b>; rel="next""#),
        get("/v2/_catalog?n=3").is(200).has("link", r#"</v2/_catalog?n=3&last=c>; rel="next""#),
        get("/v2/_catalog?last=b").is(200).json(format!(r#"{{"repositories":["c","{R}"]}}"#)),
        get("/v2/_catalog?n=0").is(200).json(r#"{"repositories":[]}"#).lacks("link"),
        get("/v2/_catalog?n=abc").is(400),
        get("/v2/_catalog?n=1.5").is(400),
    ]);
    t.run(steps).await;
}

#[tokio::test]
#[rustfmt::skip]
async fn referrers() {
    let mut t = Script::new().await;
    images(&mut t);
    let ann = r#"{"org.example.format":"json"}"#;
    t.doc("sbom", &artifact("application/vnd.example.sbom", "m1", Some(ann)));
    t.doc("sig", &artifact("application/vnd.example.sig", "m1", None));
    t.doc("unrelated", &artifact("application/vnd.example.sbom", "m2", None));
    let refs = |d: &str| format!("/v2/{R}/referrers/{{{d}}}");
    // The descriptors expected in the index.
    let sbom = format!(r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{{sbom}}","size":{{sbom.len}},
        "artifactType":"application/vnd.example.sbom","annotations":{ann}}}"#);
    let sig = format!(r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{{sig}}","size":{{sig.len}},
        "artifactType":"application/vnd.example.sig","annotations":null}}"#);
    let unrelated = r#"{"digest":"{unrelated}"}"#.to_string();
    let mut steps = push_blobs(R, &["cfg", "layer", "empty"]);
    steps.extend(vec![
        // A referrer pushed before its subject is listed.
        put(format!("/v2/{R}/manifests/{{sbom}}")).ct(OCI_MANIFEST).send("sbom").is(201)
            .has("oci-subject", "{m1}"),
        get(refs("m1")).is(200).json_set("/manifests", &[&sbom]),
        push_manifest(R, "v1", "m1"),
        put(format!("/v2/{R}/manifests/sig")).ct(OCI_MANIFEST).send("sig").is(201)
            .has("oci-subject", "{m1}"),
        // Its subject m2 is never pushed.
        put(format!("/v2/{R}/manifests/{{unrelated}}")).ct(OCI_MANIFEST).send("unrelated")
            .is(201).has("oci-subject", "{m2}"),
        get(refs("m1")).is(200).has("content-type", OCI_INDEX).lacks("oci-filters-applied")
            .json(format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}"}}"#)),
        get(refs("m1")).is(200).json_set("/manifests", &[&sbom, &sig]),
        get(refs("m2")).is(200).json_set("/manifests", &[&unrelated]),
        // Filtered by artifactType.
        get(format!("{}?artifactType=application/vnd.example.sig", refs("m1"))).is(200)
            .has("oci-filters-applied", "artifactType").has("content-type", OCI_INDEX)
            .json_set("/manifests", &[&sig]),
        get(format!("{}?artifactType=application/vnd.example.sbom", refs("m1"))).is(200)
            .json_set("/manifests", &[&sbom]),
        get(format!("{}?artifactType=application/vnd.nothing", refs("m1"))).is(200)
            .has("oci-filters-applied", "artifactType").json(r#"{"manifests":[]}"#),
        get(format!("{}?artifactType=", refs("m1"))).is(200).lacks("oci-filters-applied")
            .json_set("/manifests", &[&sbom, &sig]),
        // Unknown subjects and repositories: an empty index.
        get(refs("layer")).is(200).has("content-type", OCI_INDEX)
            .json(format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[]}}"#)),
        get("/v2/no/such/repo/referrers/{m1}").is(200).json(r#"{"manifests":[]}"#),
        // Malformed.
        get(format!("/v2/{R}/referrers/sha256:abc")).err(400, "DIGEST_INVALID"),
        get(format!("/v2/{R}/referrers/notadigest")).err(400, "DIGEST_INVALID"),
        get("/v2/Team/referrers/{m1}").err(400, "NAME_INVALID"),
        // Deleting a referrer removes it.
        delete(format!("/v2/{R}/manifests/{{sig}}")).is(202),
        get(refs("m1")).is(200).json_set("/manifests", &[&sbom]),
    ]);
    t.run(steps).await;
}

/// An OCI index whose children name platforms: `(manifest fixture, os/architecture or "")`.
fn index_for(children: &[(&str, &str)]) -> String {
    let children: Vec<String> = children
        .iter()
        .map(|(c, platform)| {
            let d = desc(OCI_MANIFEST, c);
            match platform.split_once('/') {
                Some((os, arch)) => format!(
                    r#"{},"platform":{{"os":"{os}","architecture":"{arch}"}}}}"#,
                    d.strip_suffix('}').expect("a JSON object")
                ),
                None => d,
            }
        })
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
        children.join(",")
    )
}

/// Fixtures for sparse cases: `m1` (pushed with its blobs), `absent` (a manifest never pushed),
/// `sparse_image` (over `cfg` and a layer never pushed) and indexes over them.
fn sparse_fixtures(t: &mut Script) -> Vec<Step> {
    images(t);
    t.blob("lost", b"a layer never pushed".to_vec());
    t.doc("absent", &image("cfg2", &["layer"]));
    t.doc("sparse_image", &image("cfg", &["layer", "lost"]));
    t.doc("no_config", &image("cfg2", &["layer"]));
    t.doc(
        "amd_absent",
        &index_for(&[("absent", "linux/amd64"), ("m1", "linux/arm64")]),
    );
    t.doc(
        "arm_absent",
        &index_for(&[("m1", "linux/amd64"), ("absent", "linux/arm64")]),
    );
    t.doc(
        "unplatformed_absent",
        &index_for(&[("m1", "linux/amd64"), ("absent", "")]),
    );
    let mut steps = push_blobs(R, &["cfg", "layer"]);
    steps.push(push_manifest(R, "v1", "m1"));
    steps
}

#[tokio::test]
#[rustfmt::skip]
async fn indexes_need_their_children_by_default() {
    let mut t = Script::new().await;
    let mut steps = sparse_fixtures(&mut t);
    let m = |reference: &str| format!("/v2/{R}/manifests/{reference}");
    steps.extend(vec![
        put(m("i")).ct(OCI_INDEX).send("amd_absent").err(400, "MANIFEST_BLOB_UNKNOWN"),
        put(m("{amd_absent}")).ct(OCI_INDEX).send("amd_absent").err(400, "MANIFEST_BLOB_UNKNOWN"),
        put(m("i")).ct(OCI_INDEX).send("arm_absent").err(400, "MANIFEST_BLOB_UNKNOWN"),
        put(m("i")).ct(OCI_INDEX).send("unplatformed_absent").err(400, "MANIFEST_BLOB_UNKNOWN"),
        get(m("{amd_absent}")).err(404, "MANIFEST_UNKNOWN"),
        put(m("s")).ct(OCI_MANIFEST).send("sparse_image").err(400, "MANIFEST_BLOB_UNKNOWN"),
        get(m("i")).err(404, "MANIFEST_UNKNOWN"),
    ]);
    t.run(steps).await;
}

#[tokio::test]
#[rustfmt::skip]
async fn sparse_manifests_with_platforms_none() {
    let mut t = Script::with(IndexChildren::None).await;
    let mut steps = sparse_fixtures(&mut t);
    let m = |reference: &str| format!("/v2/{R}/manifests/{reference}");
    steps.extend(vec![
        put(m("i")).ct(OCI_INDEX).send("amd_absent").is(201).has("docker-content-digest", "{amd_absent}"),
        get(m("i")).is(200).returns("amd_absent"),
        // The absent child is still unknown.
        get(m("{absent}")).err(404, "MANIFEST_UNKNOWN"),
        // An image may lack a layer, never its config.
        put(m("s")).ct(OCI_MANIFEST).send("sparse_image").is(201),
        get(m("s")).is(200).returns("sparse_image"),
        get(format!("/v2/{R}/blobs/{{lost}}")).err(404, "BLOB_UNKNOWN"),
        put(m("nc")).ct(OCI_MANIFEST).send("no_config").err(400, "MANIFEST_BLOB_UNKNOWN"),
    ]);
    t.run(steps).await;
}

#[tokio::test]
#[rustfmt::skip]
async fn sparse_indexes_for_listed_platforms() {
    let amd64 = Platform { os: "linux".into(), architecture: "amd64".into() };
    let mut t = Script::with(IndexChildren::Platforms(vec![amd64])).await;
    let mut steps = sparse_fixtures(&mut t);
    let m = |reference: &str| format!("/v2/{R}/manifests/{reference}");
    steps.extend(vec![
        // The listed platform's child must be present ...
        put(m("i")).ct(OCI_INDEX).send("amd_absent").err(400, "MANIFEST_BLOB_UNKNOWN"),
        // ... another platform's need not be, nor one that names no platform (as Distribution).
        put(m("i")).ct(OCI_INDEX).send("arm_absent").is(201),
        put(m("j")).ct(OCI_INDEX).send("unplatformed_absent").is(201),
        get(m("j")).is(200).returns("unplatformed_absent"),
        // Image layers are still checked.
        put(m("s")).ct(OCI_MANIFEST).send("sparse_image").err(400, "MANIFEST_BLOB_UNKNOWN"),
    ]);
    t.run(steps).await;
}

#[tokio::test]
#[rustfmt::skip]
async fn tag_parameter_on_a_push_by_digest() {
    let mut t = Script::new().await;
    images(&mut t);
    let mut steps = push_blobs(R, &["cfg", "cfg2", "layer"]);
    let m = |reference: &str| format!("/v2/{R}/manifests/{reference}");
    steps.extend(vec![
        put(m("{m1}?tag=a")).ct(OCI_MANIFEST).send("m1").is(201).has("oci-tag", "a"),
        put(m("{m1}?tag=b&tag=c&tag=d")).ct(OCI_MANIFEST).send("m1").is(201)
            .has("oci-tag", "b, c, d").has("docker-content-digest", "{m1}"),
        get(m("a")).is(200).returns("m1"),
        get(m("b")).is(200).returns("m1"),
        get(m("c")).is(200).returns("m1").has("docker-content-digest", "{m1}"),
        get(m("d")).is(200).returns("m1"),
        // Any digest algorithm: by sha512, with tags.
        put(m("{m2.sha512}?tag=x&tag=y")).ct(OCI_MANIFEST).send("m2").is(201)
            .has("oci-tag", "x, y").has("docker-content-digest", "{m2.sha512}"),
        get(m("x")).is(200).returns("m2").has("docker-content-digest", "{m2.sha512}"),
        get(m("y")).is(200).returns("m2"),
        put(m("{m2.sha512}?tag=z")).ct(OCI_MANIFEST).send("m2").is(201).has("oci-tag", "z"),
        get(m("z")).is(200).returns("m2"),
        get(m("{m2.sha512}")).is(200).returns("m2").has("docker-content-digest", "{m2.sha512}"),
        // A bad tag refuses the whole push: nothing is tagged.
        put(m("{m2}?tag=ok&tag=-bad")).ct(OCI_MANIFEST).send("m2").err(400, "TAG_INVALID"),
        put(m("{m2}?tag=.bad")).ct(OCI_MANIFEST).send("m2").err(400, "TAG_INVALID"),
        put(m("{m2.sha512}?tag=ok&tag=a+b")).ct(OCI_MANIFEST).send("m2").err(400, "TAG_INVALID"),
        get(m("ok")).err(404, "MANIFEST_UNKNOWN"),
        // A push by tag takes the parameter's tags too.
        put(m("e?tag=f")).ct(OCI_MANIFEST).send("m2").is(201).has("oci-tag", "e, f"),
        get(m("f")).is(200).returns("m2"),
        // Without the parameter there is no OCI-Tag header.
        put(m("{m1}")).ct(OCI_MANIFEST).send("m1").is(201).lacks("oci-tag"),
        get(format!("/v2/{R}/tags/list")).is(200)
            .json(r#"{"tags":["a","b","c","d","e","f","x","y","z"]}"#),
    ]);
    t.run(steps).await;
}

#[tokio::test]
#[rustfmt::skip]
async fn events_of_changes_and_reads() {
    let mut t = Script::with_events(false).await;
    images(&mut t);
    t.blob("src_only", pseudo("in the source repository", 300));
    t.blob("never", b"never pushed".to_vec());
    t.doc("missing", &image("cfg", &["layer", "never"]));
    const A: &str = "ev/app";
    let m = |reference: &str| format!("/v2/{A}/manifests/{reference}");
    let blob = |d: &str| format!("/v2/{A}/blobs/{{{d}}}");
    t.run(vec![
        // Blob pushes: monolithic, and a session that reports only when it finishes.
        post(format!("/v2/{A}/blobs/uploads/?digest={{cfg}}")).send("cfg").is(201)
            .emits(&["push ev/app {cfg}"]),
        post(format!("/v2/{A}/blobs/uploads/")).is(202).capture("s1", "location").emits(&[]),
        patch("{s1}").send_part("layer", 0..1000).is(202).emits(&[]),
        put("{s1}?digest={layer}").send_part("layer", 1000..2000).is(201)
            .emits(&["push ev/app {layer}"]),
        post(format!("/v2/{A}/blobs/uploads/?digest={{cfg2}}")).send("cfg2").is(201)
            .emits(&["push ev/app {cfg2}"]),
        // Refused blob pushes and a cancelled session: nothing happened.
        post(format!("/v2/{A}/blobs/uploads/?digest={{never}}")).send("cfg")
            .err(400, "DIGEST_INVALID").emits(&[]),
        post(format!("/v2/{A}/blobs/uploads/")).is(202).capture("s2", "location").emits(&[]),
        put("{s2}?digest={never}").send("cfg").err(400, "DIGEST_INVALID").emits(&[]),
        delete("{s2}").is(204).emits(&[]),
        // Mounts name where the blob came from, with `from` or without.
        post("/v2/ev/src/blobs/uploads/?digest={src_only}").send("src_only").is(201)
            .emits(&["push ev/src {src_only}"]),
        post("/v2/ev/third/blobs/uploads/?mount={src_only}").is(201)
            .emits(&["mount ev/third {src_only} from=ev/src"]),
        post(format!("/v2/{A}/blobs/uploads/?mount={{src_only}}&from=ev/src")).is(201)
            .emits(&["mount ev/app {src_only} from=ev/src"]),
        post(format!("/v2/{A}/blobs/uploads/?mount={{never}}&from=ev/src")).is(202)
            .emits(&[]),
        // Manifests: one push per tag set, or one without a tag.
        put(m("v1")).ct(OCI_MANIFEST).send("missing").err(400, "MANIFEST_BLOB_UNKNOWN")
            .emits(&[]),
        put(m("{missing}?tag=t")).ct(OCI_MANIFEST).send("missing")
            .err(400, "MANIFEST_BLOB_UNKNOWN").emits(&[]),
        put(m("{m1}?tag=.bad")).ct(OCI_MANIFEST).send("m1").err(400, "TAG_INVALID").emits(&[]),
        put(m("{m1}")).ct(OCI_MANIFEST).send("m2").err(400, "DIGEST_INVALID").emits(&[]),
        put(m("v1")).ct(OCI_MANIFEST).send("m1").is(201).emits(&["push ev/app {m1} tag=v1"]),
        put(m("{m1}?tag=a&tag=b")).ct(OCI_MANIFEST).send("m1").is(201)
            .emits(&["push ev/app {m1} tag=a", "push ev/app {m1} tag=b"]),
        put(m("{m2}")).ct(OCI_MANIFEST).send("m2").is(201).emits(&["push ev/app {m2}"]),
        put(m("{m2.sha512}?tag=c")).ct(OCI_MANIFEST).send("m2").is(201)
            .emits(&["push ev/app {m2.sha512} tag=c"]),
        // Pulls: GETs of manifests (by tag or digest) and blobs; not HEADs, not misses.
        get(m("v1")).is(200).returns("m1").emits(&["pull ev/app {m1} tag=v1"]),
        get(m("{m1}")).is(200).returns("m1").emits(&["pull ev/app {m1}"]),
        get(m("c")).is(200).returns("m2").emits(&["pull ev/app {m2.sha512} tag=c"]),
        get(blob("cfg")).is(200).returns("cfg").emits(&["pull ev/app {cfg}"]),
        get(blob("layer")).h("range", "bytes=0-9").is(206).returns_part("layer", 0..10)
            .emits(&["pull ev/app {layer}"]),
        get("/v2/ev/third/blobs/{src_only}").is(200).returns("src_only")
            .emits(&["pull ev/third {src_only}"]),
        head(m("v1")).is(200).emits(&[]),
        head(m("{m1}")).is(200).emits(&[]),
        head(blob("cfg")).is(200).emits(&[]),
        get(m("nope")).err(404, "MANIFEST_UNKNOWN").emits(&[]),
        get(blob("never")).err(404, "BLOB_UNKNOWN").emits(&[]),
        get(blob("layer")).h("range", "bytes=5000-").is(416).emits(&[]),
        get(format!("/v2/{A}/tags/list")).is(200).emits(&[]),
        get("/v2/_catalog").is(200).emits(&[]),
        get(format!("/v2/{A}/referrers/{{m1}}")).is(200).emits(&[]),
        // Deletes: a tag, a manifest, a blob; a miss reports nothing.
        delete(m("a")).is(202).emits(&["delete ev/app tag=a"]),
        delete(m("a")).err(404, "MANIFEST_UNKNOWN").emits(&[]),
        delete(m("{m1}")).is(202).emits(&["delete ev/app {m1}"]),
        delete(m("{m1}")).err(404, "MANIFEST_UNKNOWN").emits(&[]),
        get(m("b")).err(404, "MANIFEST_UNKNOWN").emits(&[]),
        delete(blob("cfg2")).is(202).emits(&["delete ev/app {cfg2}"]),
        delete(blob("cfg2")).err(404, "BLOB_UNKNOWN").emits(&[]),
    ])
    .await;
}

#[tokio::test]
#[rustfmt::skip]
async fn a_pull_is_served_when_its_event_cannot_be_written() {
    // The store refuses every pull's outbox write (and so records none of it).
    let mut t = Script::with_events(true).await;
    images(&mut t);
    let m = |reference: &str| format!("/v2/{R}/manifests/{reference}");
    let mut steps = push_blobs(R, &["cfg", "layer"]);
    steps.extend(vec![
        push_manifest(R, "v1", "m1").emits(&["push team/app/sub {m1} tag=v1"]),
        get(m("v1")).is(200).returns("m1").has("docker-content-digest", "{m1}").emits(&[]),
        get(m("{m1}")).is(200).returns("m1").emits(&[]),
        get(format!("/v2/{R}/blobs/{{layer}}")).is(200).returns("layer")
            .has("content-length", "{layer.len}").emits(&[]),
        get(format!("/v2/{R}/blobs/{{layer}}")).h("range", "bytes=10-19").is(206)
            .returns_part("layer", 10..20).emits(&[]),
        // Changes are still reported.
        delete(m("v1")).is(202).emits(&["delete team/app/sub tag=v1"]),
    ]);
    t.run(steps).await;
}
