//! The `berth` command line: parses arguments, sets up logging, and runs the registry.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "berth", version, about = "An OCI container image registry")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:5000", env = "BERTH_ADDR")]
        addr: String,
        /// Data directory: blobs, uploads and the metadata database.
        #[arg(long, default_value = "./berth-data", env = "BERTH_DATA")]
        data: PathBuf,
    },
    /// Index storage written by another registry into Berth's metadata, without copying blobs.
    #[command(subcommand)]
    Import(ImportSource),
}

#[derive(Subcommand)]
enum ImportSource {
    /// A CNCF Distribution (registry:2) storage root directory (the one holding `docker/`).
    /// Idempotent and resumable; `berth serve` runs it automatically on first start.
    Distribution {
        /// The root directory.
        dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_http=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Serve { addr, data } => runtime.block_on(berth::server::serve(
            berth::server::ServeOptions { addr, data },
            berth::server::shutdown_signal(),
        )),
        Command::Import(ImportSource::Distribution { dir }) => runtime.block_on(async {
            let (store, meta) = berth::server::open_stores(&dir).await?;
            let report = berth::import::import_distribution(
                &store,
                meta.as_ref(),
                std::io::stderr().is_terminal(),
            )
            .await?;
            println!("{report}");
            Ok(())
        }),
    }
}
