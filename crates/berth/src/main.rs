//! The `berth` command line: loads the configuration (Distribution's `config.yml` format, with
//! `REGISTRY_*` overrides), sets up logging, and runs the registry or one of its tools.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use berth::config::{self, Loaded, Status};
use berth::logging::{self, Format};
use berth::server::{self, Settings};

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
        /// A Distribution-format configuration file (`config.yml`, version 0.1). Without one,
        /// Berth's defaults apply (data in ./berth-data, listening on 0.0.0.0:5000).
        config: Option<PathBuf>,
        /// The configuration file, as a flag.
        #[arg(long = "config", value_name = "FILE", conflicts_with = "config")]
        config_flag: Option<PathBuf>,
        /// Address to listen on (overrides http.addr).
        #[arg(long, env = "BERTH_ADDR")]
        addr: Option<String>,
        /// Data directory for blobs, uploads and the metadata database (overrides the storage
        /// section with a filesystem root).
        #[arg(long, env = "BERTH_DATA")]
        data: Option<PathBuf>,
    },
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Index storage written by another registry into Berth's metadata, without copying blobs.
    #[command(subcommand)]
    Import(ImportSource),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file (with `REGISTRY_*` overrides), print the effective
    /// configuration with secrets masked, and list which options are active.
    Check {
        /// The configuration file.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum ImportSource {
    /// A CNCF Distribution (registry:2) storage root directory (the one holding `docker/`).
    /// Idempotent and resumable; `berth serve` runs it automatically on first start.
    Distribution {
        /// The root directory.
        dir: PathBuf,
        /// Index into the metadata database this configuration file names (its `database` or
        /// `sqlite` section) instead of the SQLite file under the root directory.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// Loads the configuration file (or Berth's defaults) with the process environment's overrides.
fn load(file: Option<&PathBuf>) -> anyhow::Result<Loaded> {
    let loaded = match file {
        Some(path) => config::load_file(path, std::env::vars())
            .with_context(|| format!("configuration {}", path.display()))?,
        None => config::load(server::DEFAULT_CONFIG, std::env::vars())
            .context("configuration from the environment")?,
    };
    Ok(loaded)
}

fn init_logging(cfg: &config::Config) -> tracing_appender::non_blocking::WorkerGuard {
    let format = match cfg.log.formatter {
        config::LogFormatter::Json => Format::Json,
        config::LogFormatter::Logstash => Format::Logstash,
        _ => Format::Text,
    };
    let fields = cfg
        .log
        .fields
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), serde_json::to_value(v).ok()?)))
        .collect();
    let level = format!("{},tower_http=warn", cfg.log.level.as_str());
    logging::init(&level, format, fields)
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Serve {
            config,
            config_flag,
            addr,
            data,
        } => {
            let Loaded {
                config: mut cfg,
                warnings,
            } = load(config.as_ref().or(config_flag.as_ref()))?;
            if let Some(addr) = addr {
                cfg.http.addr = addr;
            }
            if let Some(data) = data {
                cfg.storage.inmemory = None;
                cfg.storage.filesystem = Some(config::Filesystem {
                    rootdirectory: data.to_string_lossy().into_owned(),
                    ..Default::default()
                });
            }
            let _log = init_logging(&cfg);
            for w in &warnings {
                tracing::warn!("{w}");
            }
            server::report_options(&cfg);
            let settings = Settings::from_config(&cfg)?;
            runtime.block_on(server::serve(settings, server::shutdown_signal()))
        }
        Command::Config(ConfigCommand::Check { file }) => {
            let loaded = load(Some(&file))?;
            for w in &loaded.warnings {
                println!("warning: {w}");
            }
            Settings::from_config(&loaded.config)?;
            println!("# effective configuration (secrets masked)");
            println!("{}", config::render_effective(&loaded.config));
            println!("# options set");
            for opt in config::option_report(&loaded.config) {
                let status = match opt.status {
                    Status::Active => "active",
                    Status::NotImplemented => "not implemented yet (no effect)",
                    Status::Ignored => "accepted, not needed by Berth (no effect)",
                };
                println!("{:<48} {status}", opt.key);
            }
            println!("configuration is valid");
            Ok(())
        }
        Command::Import(ImportSource::Distribution { dir, config }) => {
            let _log = logging::init("warn", Format::Text, Default::default());
            let settings = match &config {
                Some(file) => Some(Settings::from_config(&load(Some(file))?.config)?),
                None => None,
            };
            runtime.block_on(async {
                let (store, meta) = match &settings {
                    Some(settings) => (
                        berth::storage::BlobStore::fs(&dir)?,
                        server::open_meta(&settings.meta).await?,
                    ),
                    None => server::open_stores(&dir).await?,
                };
                let report = berth::import::import_distribution(
                    &store,
                    meta.as_ref(),
                    std::io::stderr().is_terminal(),
                )
                .await?;
                println!("{report}");
                Ok(())
            })
        }
    }
}
