//! Harbor's API clients for the management API's tests: harborapi (PyPI) in a virtual
//! environment under the workspace's `target/` (made here when missing; `scripts/test` makes
//! it too), the scripts of `tests/harbor_client/` run with it, and a small reqwest wrapper that
//! speaks to `/api/v2.0` with Basic credentials.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use serde_json::Value;

use crate::common::cli::output;
use crate::common::cli::report;

/// The client release the tests are written against.
pub const HARBORAPI: &str = "harborapi==0.26.2";

/// The workspace's `target/` (or `CARGO_TARGET_DIR`).
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"),
    }
}

/// The Python of the virtual environment holding harborapi, made (once per process) if absent.
pub fn python() -> PathBuf {
    static MAKING: Mutex<()> = Mutex::new(());
    let _one = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    let venv = target_dir().join("harbor-client-venv");
    let python = venv.join("bin").join("python");
    let has_client = |python: &Path| {
        Command::new(python)
            .args(["-c", "import harborapi"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if has_client(&python) {
        return python;
    }
    let mut make = Command::new("python3");
    make.args(["-m", "venv"]).arg(&venv);
    let out = output(&mut make);
    assert!(out.status.success(), "{}", report(&make, &out));
    let mut install = Command::new(venv.join("bin").join("pip"));
    install.args(["install", "--quiet", HARBORAPI]);
    let out = output(&mut install);
    assert!(out.status.success(), "{}", report(&install, &out));
    assert!(
        has_client(&python),
        "harborapi is not importable in {}",
        venv.display()
    );
    python
}

/// Runs `tests/harbor_client/<script> <args>`; its stdout. A failure panics with the script's
/// stderr (the assertion or HTTP error that stopped it).
pub fn run_script(script: &str, args: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("harbor_client")
        .join(script);
    let mut c = Command::new(python());
    c.arg(&path).args(args).env("PYTHONUNBUFFERED", "1");
    let out = output(&mut c);
    if !out.status.success() {
        panic!("the harborapi script failed:\n{}", report(&c, &out));
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An answer of the API: status, headers and JSON body (`Null` when there is none).
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    /// The code of an error answer (`errors[0].code`).
    pub fn code(&self) -> &str {
        self.body["errors"][0]["code"].as_str().unwrap_or("")
    }

    pub fn message(&self) -> &str {
        self.body["errors"][0]["message"].as_str().unwrap_or("")
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Who asks: Basic credentials or nobody.
pub type Who<'a> = Option<(&'a str, &'a str)>;

/// Sends `method path` (under `/api/v2.0`) as `who` with a JSON `body` (raw text, sent as is).
pub async fn call(
    base: &str,
    who: Who<'_>,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Answer {
    let client = crate::common::oci::client();
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = client.request(method, format!("{base}/api/v2.0{path}"));
    if let Some((user, password)) = who {
        req = req.basic_auth(user, Some(password));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req
            .header("Content-Type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await.expect("API request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("API body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
    }
}
