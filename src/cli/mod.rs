//! Command-line arguments and dispatch, one file per command group. Every
//! command but `serve` is a client of the REST API and speaks it through
//! the wire types of `cairn-api-types`; none of them links the store.

mod chunks;
mod data;
mod export;
mod lineage;
mod maintenance;
mod output;
mod serve;
mod snapshots;
mod sparse;
mod volumes;

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::anyhow;
use clap::{Args, Parser, Subcommand};

use crate::client::Client;

/// cairn: content-addressed block storage with millisecond snapshots, forks,
/// clones and rollbacks of VM disks.
///
/// `cairn serve` runs the server; every other command talks to it over its
/// REST API (address from --server or CAIRN_SERVER, token from CAIRN_TOKEN).
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about, long_about)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Global {
    /// cairn server URL.
    #[arg(
        long,
        global = true,
        env = "CAIRN_SERVER",
        default_value = "http://127.0.0.1:7878"
    )]
    server: String,
    /// Print the REST response body as one JSON document.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: REST API, NBD exports and background sealer.
    Serve(serve::ServeArgs),
    /// Create, list, show, grow and delete volumes.
    #[command(subcommand)]
    Volume(volumes::VolumeCmd),
    /// Write a raw image into a new volume, or into an existing one at --offset.
    Import(data::ImportArgs),
    /// Read a volume or snapshot (NAME or NAME@TAG) into a raw image.
    Export(export::ExportArgs),
    /// Take, list and delete snapshots.
    #[command(subcommand)]
    Snapshot(snapshots::SnapshotCmd),
    /// Create a new volume from a snapshot.
    Fork(lineage::ForkArgs),
    /// Snapshot a volume now and fork it.
    Clone(lineage::CloneArgs),
    /// Reset a volume's contents to one of its snapshots (NAME@TAG).
    Rollback(lineage::RollbackArgs),
    /// List the byte ranges that changed between NAME@TAG and NAME@BASE (or the empty disk).
    Diff(lineage::DiffArgs),
    /// Reclaim space: delete objects no volume or snapshot references
    /// (older than the grace period). Exits 1 if GC fails, so cron mails it.
    /// Needs an admin token when the server has a token file.
    Gc(maintenance::GcArgs),
    /// Scrub: re-read every object of all volumes and snapshots (or of
    /// NAME, or NAME@TAG) and check it. Exits 1 if anything is missing or
    /// corrupt.
    Verify(maintenance::VerifyArgs),
    /// Show the audit log.
    Events(maintenance::EventsArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(_) => crate::allocator::limit_arenas(),
        _ => crate::allocator::keep_freed(),
    }
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Serve(args) => serve::run(&runtime, args)?,
        command => {
            let client = Client::new(&cli.global.server, std::env::var("CAIRN_TOKEN").ok());
            runtime.block_on(run_client(&client, cli.global.json, command))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_client(client: &Client, as_json: bool, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(_) => unreachable!("handled by run"),
        Command::Volume(cmd) => volumes::run(client, as_json, cmd).await,
        Command::Import(args) => data::import(client, as_json, args).await,
        Command::Export(args) => export::export(client, args).await,
        Command::Snapshot(cmd) => snapshots::run(client, as_json, cmd).await,
        Command::Fork(args) => lineage::fork(client, as_json, args).await,
        Command::Clone(args) => lineage::clone(client, as_json, args).await,
        Command::Rollback(args) => lineage::rollback(client, as_json, args).await,
        Command::Diff(args) => lineage::diff(client, as_json, args).await,
        Command::Gc(args) => maintenance::gc(client, as_json, args).await,
        Command::Verify(args) => maintenance::verify(client, as_json, args).await,
        Command::Events(args) => maintenance::events(client, as_json, args).await,
    }
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("invalid label {text:?}: expected KEY=VALUE"))
}

fn split_snapshot(text: &str) -> anyhow::Result<(&str, &str)> {
    text.split_once('@')
        .filter(|(v, t)| !v.is_empty() && !t.is_empty())
        .ok_or_else(|| anyhow!("invalid snapshot {text:?}: write it as VOLUME@TAG"))
}

fn labels_map(labels: Vec<(String, String)>) -> BTreeMap<String, String> {
    labels.into_iter().collect()
}
