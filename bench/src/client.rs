//! A lean HTTP/1.1 client: one keep-alive connection per worker (hyper's `conn::http1`),
//! request bodies that are empty, in memory, or PRNG bytes streamed on the fly, and response
//! readers that hash what they receive.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::{anyhow, bail, Context as _, Result};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, HOST, USER_AGENT};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use sha2::{Digest as _, Sha256};
use tokio::net::TcpStream;

use crate::data;

/// A request body.
#[derive(Clone)]
pub enum ReqBody {
    Empty,
    Bytes(Option<Bytes>),
    /// Bytes `pos..end` of PRNG stream `seed`, produced chunk by chunk as the socket takes them.
    Prng {
        seed: u64,
        pos: u64,
        end: u64,
    },
}

const PRNG_CHUNK: u64 = 256 * 1024;

impl ReqBody {
    pub fn bytes(b: Bytes) -> ReqBody {
        ReqBody::Bytes(Some(b))
    }

    pub fn len(&self) -> u64 {
        match self {
            ReqBody::Empty => 0,
            ReqBody::Bytes(b) => b.as_ref().map_or(0, |b| b.len() as u64),
            ReqBody::Prng { pos, end, .. } => end - pos,
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        match this {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Bytes(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ReqBody::Prng { seed, pos, end } => {
                if pos >= end {
                    return Poll::Ready(None);
                }
                let n = (*end - *pos).min(PRNG_CHUNK);
                let mut v = vec![0u8; n as usize];
                data::fill(*seed, *pos, &mut v);
                *pos += n;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(v)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.len() == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len())
    }
}

/// Where the registry is: socket address, `Host` header and path prefix (without trailing `/`).
pub struct Target {
    pub addr: SocketAddr,
    pub host: HeaderValue,
    pub prefix: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("--url must start with http:// (plain HTTP only): {url}"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let host = authority.replace("localhost", "127.0.0.1");
        // A numeric address as it is; a name resolved once, here (the first address it has).
        let addr: SocketAddr = match host.parse() {
            Ok(addr) => addr,
            Err(_) => std::net::ToSocketAddrs::to_socket_addrs(&host)
                .with_context(|| format!("--url: cannot resolve {authority:?} (HOST:PORT)"))?
                .next()
                .ok_or_else(|| anyhow!("--url: {authority:?} resolves to no address"))?,
        };
        Ok(Target {
            addr,
            host: HeaderValue::from_str(authority)?,
            prefix: path.to_string(),
        })
    }

    /// Turns a `Location`/`Link` value (absolute URL or path) into a request path on this target.
    pub fn path_of(&self, location: &str) -> String {
        let loc = location.trim();
        if let Some(rest) = loc
            .strip_prefix("http://")
            .or_else(|| loc.strip_prefix("https://"))
        {
            match rest.find('/') {
                Some(i) => rest[i..].to_string(),
                None => "/".to_string(),
            }
        } else if loc.starts_with('/') {
            loc.to_string()
        } else {
            format!("{}/{}", self.prefix, loc)
        }
    }
}

/// One keep-alive connection, reopened when the server closes it.
pub struct Conn {
    target: Arc<Target>,
    sender: Option<SendRequest<ReqBody>>,
    /// HTTP requests sent on this connection object (those of `side` included).
    pub requests: u64,
    /// A keep-alive connection to the host that redirects point at (an object store's
    /// presigned URLs), kept while they keep pointing at the same host.
    side: Option<Box<Conn>>,
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE
    )
}

impl Conn {
    pub fn new(target: Arc<Target>) -> Conn {
        Conn {
            target,
            sender: None,
            requests: 0,
            side: None,
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    pub async fn connect(&mut self) -> Result<()> {
        let stream = TcpStream::connect(self.target.addr)
            .await
            .with_context(|| format!("connecting to {}", self.target.addr))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        self.sender = Some(sender);
        Ok(())
    }

    /// Sends one request. `path` is a path on the server (with the target's prefix already in it,
    /// as `p()` makes). A request that fails before any response is retried once on a fresh
    /// connection if it is idempotent (keep-alive races).
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(HeaderName, &str)],
        body: ReqBody,
    ) -> Result<Response<Incoming>> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
                self.connect().await?;
            }
            let sender = self.sender.as_mut().expect("connected");
            if sender.ready().await.is_err() {
                self.sender = None;
                if attempt < 3 {
                    continue;
                }
                bail!("connection to {} keeps closing", self.target.addr);
            }
            let mut req = Request::builder().method(method.clone()).uri(path);
            {
                let h = req.headers_mut().expect("builder");
                h.insert(HOST, self.target.host.clone());
                h.insert(USER_AGENT, HeaderValue::from_static("berth-bench"));
                if body.len() > 0 || matches!(method, Method::PUT | Method::PATCH | Method::POST) {
                    h.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
                }
                for (k, v) in headers {
                    h.insert(k.clone(), HeaderValue::from_str(v)?);
                }
            }
            let req = req.body(body.clone())?;
            self.requests += 1;
            match sender.send_request(req).await {
                Ok(resp) => {
                    if resp
                        .headers()
                        .get(http::header::CONNECTION)
                        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"))
                    {
                        // hyper closes after this response; make the next request reconnect.
                        self.sender = None;
                    }
                    return Ok(resp);
                }
                Err(e) => {
                    self.sender = None;
                    if attempt < 2 && idempotent(&method) {
                        continue;
                    }
                    return Err(anyhow!("{method} {path}: {e}"));
                }
            }
        }
    }

    /// Sends a request and requires `want` as the status; returns the response with its body
    /// still unread.
    pub async fn expect(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(HeaderName, &str)],
        body: ReqBody,
        want: &[StatusCode],
    ) -> Result<Response<Incoming>> {
        let resp = self.send(method.clone(), path, headers, body).await?;
        if !want.contains(&resp.status()) {
            let status = resp.status();
            let text = read_all(resp).await.unwrap_or_default();
            let text = String::from_utf8_lossy(&text[..text.len().min(400)]).into_owned();
            bail!("{method} {path}: status {status} (wanted {want:?}): {text}");
        }
        Ok(resp)
    }
}

impl Conn {
    /// `method location` (a redirect's target: a path on this target, or an absolute `http://`
    /// URL, sent with that URL's own `Host`, as a presigned URL is signed for it), requiring
    /// `want`. Another host is reached on this worker's side connection.
    pub async fn follow(
        &mut self,
        method: Method,
        location: &str,
        want: &[StatusCode],
    ) -> Result<Response<Incoming>> {
        let loc = location.trim();
        let (authority, path) = match loc.strip_prefix("http://") {
            Some(rest) => match rest.find('/') {
                Some(i) => (&rest[..i], rest[i..].to_string()),
                None => (rest, "/".to_string()),
            },
            None if loc.starts_with("https://") => {
                bail!("redirect to {loc}: plain HTTP only")
            }
            None => {
                let path = self.target.path_of(loc);
                return self.expect(method, &path, &[], ReqBody::Empty, want).await;
            }
        };
        if self.target.host.as_bytes() == authority.as_bytes() {
            return self.expect(method, &path, &[], ReqBody::Empty, want).await;
        }
        if self
            .side
            .as_ref()
            .is_none_or(|s| s.target.host.as_bytes() != authority.as_bytes())
        {
            let target = Target::parse(&format!("http://{authority}"))
                .with_context(|| format!("redirect to {loc}"))?;
            self.side = Some(Box::new(Conn::new(Arc::new(target))));
        }
        let side = self.side.as_mut().expect("side connection");
        let before = side.requests;
        let resp = side.expect(method, &path, &[], ReqBody::Empty, want).await;
        self.requests += side.requests - before;
        resp
    }
}

/// A pulled body whose digest did not match: always fatal for the whole run.
#[derive(Debug)]
pub struct DigestMismatch(pub String);

impl std::fmt::Display for DigestMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DIGEST MISMATCH: {}", self.0)
    }
}

impl std::error::Error for DigestMismatch {}

pub async fn read_all(resp: Response<Incoming>) -> Result<Bytes> {
    Ok(resp.into_body().collect().await?.to_bytes())
}

/// Reads a body to the end, hashing it; fails with [`DigestMismatch`] unless it is `want`
/// (`sha256:<hex>`) and `want_len` bytes long. Returns the length.
pub async fn read_verify(
    resp: Response<Incoming>,
    want: &str,
    want_len: u64,
    what: &str,
) -> Result<u64> {
    let mut body = resp.into_body();
    let mut h = Sha256::new();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.with_context(|| format!("reading {what}"))?;
        if let Ok(data) = frame.into_data() {
            n += data.len() as u64;
            h.update(&data);
        }
    }
    let got = format!("sha256:{}", hex::encode(h.finalize()));
    if got != want || n != want_len {
        return Err(DigestMismatch(format!(
            "{what}: expected {want} ({want_len} bytes), got {got} ({n} bytes)"
        ))
        .into());
    }
    Ok(n)
}

/// Checks in-memory bytes against a digest.
pub fn verify_bytes(data: &[u8], want: &str, what: &str) -> Result<()> {
    let got = data::sha256_hex(data);
    if got != want {
        return Err(DigestMismatch(format!("{what}: expected {want}, got {got}")).into());
    }
    Ok(())
}

pub fn header<'a>(resp: &'a Response<Incoming>, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The `rel="next"` target of a `Link` header, if any.
pub fn next_link(resp: &Response<Incoming>) -> Option<String> {
    for v in resp.headers().get_all(http::header::LINK) {
        let Ok(s) = v.to_str() else { continue };
        for part in s.split(',') {
            if part.contains("rel=\"next\"") || part.contains("rel=next") {
                let start = part.find('<')?;
                let end = part.find('>')?;
                return Some(part[start + 1..end].to_string());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_become_paths() {
        let t = Target::parse("http://127.0.0.1:5000").unwrap();
        assert_eq!(
            t.path_of("http://127.0.0.1:5000/v2/a/blobs/uploads/x?_state=y"),
            "/v2/a/blobs/uploads/x?_state=y"
        );
        assert_eq!(t.path_of("/v2/a/blobs/uploads/x"), "/v2/a/blobs/uploads/x");
        let t = Target::parse("http://localhost:5000/reg/").unwrap();
        assert_eq!(t.prefix, "/reg");
        assert_eq!(t.addr.port(), 5000);
        assert!(Target::parse("https://127.0.0.1:5000").is_err());
        let named = Target::parse("http://LOCALHOST:5000").unwrap();
        assert!(named.addr.ip().is_loopback());
        assert_eq!(named.host, "LOCALHOST:5000");
    }
}
