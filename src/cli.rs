//! Command-line arguments and dispatch.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::serve::{serve, ServeConfig};
use crate::size::parse_size;

/// cairn: content-addressed block storage with millisecond snapshots, forks,
/// clones and rollbacks of VM disks.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: REST API, NBD exports, background sealer.
    Serve {
        /// Directory for the catalog, journal and (by default) objects.
        #[arg(long, env = "CAIRN_DATA_DIR", default_value = "./cairn-data")]
        data_dir: PathBuf,
        /// Object store URL: file:///path or memory:// (default file://<data-dir>/objects).
        #[arg(long, env = "CAIRN_OBJECT_STORE")]
        object_store: Option<String>,
        /// Chunk size of new volumes that do not choose one (power of two, 4K..4M).
        #[arg(long, env = "CAIRN_CHUNK_SIZE", default_value = "64K", value_parser = parse_size)]
        chunk_size: u64,
    },
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve {
            data_dir,
            object_store,
            chunk_size,
        } => {
            init_logging();
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(serve(ServeConfig {
                data_dir,
                object_store,
                chunk_size,
            }))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}
