//! Listeners: plain TCP with `TCP_NODELAY`, and HTTPS — a rustls server configuration from PEM
//! files (`http.tls`) and a listener that completes TLS handshakes off the accept path so one
//! slow client cannot stall the others. Both report the peer as [`PeerAddr`].

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// The client's address, as connection info of both the plain and the TLS listener.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// Builds the server configuration: certificate chain and key, and — when `client_cas` are
/// given — required client certificates signed by one of them.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_cas: &[String],
) -> anyhow::Result<ServerConfig> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading http.tls.certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing http.tls.certificate {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading http.tls.key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = if client_cas.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        for ca in client_cas {
            for c in CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("reading http.tls.clientcas entry {ca}"))?
            {
                roots
                    .add(c.with_context(|| format!("parsing http.tls.clientcas entry {ca}"))?)
                    .with_context(|| format!("adding client CA from {ca}"))?;
            }
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .context("building the client certificate verifier")?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .context("http.tls.certificate and http.tls.key do not form a usable pair")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A listener that yields TLS streams whose handshake has completed.
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<tokio::net::TcpStream>, SocketAddr)>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: ServerConfig) -> io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                // Once the listener is dropped (shutdown), stop accepting at once: the socket
                // closes with this task, so new connections are refused rather than dropped.
                let accepted = tokio::select! {
                    accepted = tcp.accept() => accepted,
                    _ = tx.closed() => break,
                };
                let (stream, peer) = match accepted {
                    Ok(x) => {
                        let _ = x.0.set_nodelay(true);
                        x
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(
                        std::time::Duration::from_secs(30),
                        acceptor.accept(stream),
                    )
                    .await;
                    match handshake {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { local, ready })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(x) => x,
            // The accept task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// Plain TCP with `TCP_NODELAY` on every connection: small responses (manifests, upload
/// acknowledgements) must not wait for Nagle's algorithm.
pub struct PlainListener(pub TcpListener);

impl axum::serve::Listener for PlainListener {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = axum::serve::Listener::accept(&mut self.0).await;
        let _ = io.set_nodelay(true);
        (io, addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, PlainListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, PlainListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// Binds a listener and reports the bound address (`<what> listening on ADDR` on stdout, which
/// scripts and tests read to learn an ephemeral port).
pub async fn bind(addr: &str, what: &str) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    println!("{what} listening on {local}");
    Ok((listener, local))
}

#[cfg(test)]
mod tests {
    /// A dropped TLS listener (shutdown) closes its socket at once: a new connection is refused,
    /// not accepted and then dropped.
    #[tokio::test]
    async fn a_dropped_tls_listener_refuses_new_connections() {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
        let config = super::server_config(&cert_path, &key_path, &[]).unwrap();
        let (tcp, addr) = super::bind("127.0.0.1:0", "test").await.unwrap();
        let listener = super::TlsListener::new(tcp, config).unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
        drop(listener);
        // Give the accept task a moment to see the listener gone (what is asserted is not how
        // fast, but that no connection is taken in afterwards).
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "a connection was accepted after the listener was dropped"
        );
    }
}
