//! Wiring: opens the stores under a data directory, builds the router, and serves it until a
//! shutdown signal, letting in-flight requests finish.

use std::future::Future;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::import;
use crate::meta::sqlite::SqliteMetaStore;
use crate::meta::MetaStore;
use crate::registry::Registry;
use crate::storage::BlobStore;

/// Where the registry keeps its data and where it listens.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub addr: String,
    /// Storage root for blobs and uploads; the SQLite database lives at `berth/meta.db` inside it.
    pub data: PathBuf,
}

/// Opens the blob store and metadata store of a data directory.
pub async fn open_stores(data: &Path) -> anyhow::Result<(BlobStore, Arc<dyn MetaStore>)> {
    let store =
        BlobStore::fs(data).with_context(|| format!("opening storage under {}", data.display()))?;
    let meta = SqliteMetaStore::open(&data.join("berth").join("meta.db"))
        .await
        .context("opening the metadata database")?;
    Ok((store, Arc::new(meta)))
}

/// Indexes a Distribution storage tree found in `store` into `meta`, unless that was done before.
pub async fn import_if_needed(store: &BlobStore, meta: &dyn MetaStore) -> anyhow::Result<()> {
    if !import::needs_import(store).await? {
        return Ok(());
    }
    eprintln!("found a Distribution storage tree that is not indexed yet; importing it");
    let report = import::import_distribution(store, meta, std::io::stderr().is_terminal())
        .await
        .context("importing the Distribution storage tree")?;
    eprintln!("import finished: {report}");
    Ok(())
}

/// Binds the listener and reports the bound address (`berth listening on ADDR` on stdout, which
/// scripts and tests read to learn an ephemeral port).
pub async fn bind(addr: &str) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    println!("berth listening on {local}");
    Ok((listener, local))
}

/// Runs the registry until `shutdown` completes.
pub async fn serve(
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (store, meta) = open_stores(&opts.data).await?;
    import_if_needed(&store, meta.as_ref()).await?;
    let registry = Arc::new(Registry::new(meta, store));
    let app = crate::http::router(registry, crate::http::EdgeSettings::default());
    let (listener, local) = bind(&opts.addr).await?;
    tracing::info!(%local, data = %opts.data.display(), "serving");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .context("serving")?;
    tracing::info!("shut down");
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}
