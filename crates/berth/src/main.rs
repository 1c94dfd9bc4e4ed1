//! The `berth` command line: parses arguments, sets up logging, and runs the registry.

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
    }
}
