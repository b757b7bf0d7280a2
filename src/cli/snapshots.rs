//! `cairn snapshot ...`: create, list, delete, export-ref, import-ref.

use anyhow::Context;
use cairn_api_types::{CreateSnapshot, Snapshot, SnapshotList};
use clap::Subcommand;
use reqwest::Method;
use serde_json::json;

use super::output::{print_json, snapshot_table};
use super::{labels_map, parse_label, split_snapshot};
use crate::client::Client;

#[derive(Debug, Subcommand)]
pub(super) enum SnapshotCmd {
    /// Snapshot a volume.
    Create {
        /// Volume name.
        name: String,
        /// Tag (default: the UTC time, YYYYMMDD-HHMMSS).
        #[arg(long)]
        tag: Option<String>,
        /// Label K=V; repeatable.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// List snapshots of one volume, or of all.
    List {
        /// Volume name.
        name: Option<String>,
    },
    /// Delete a snapshot (NAME@TAG).
    Delete {
        /// NAME@TAG.
        snapshot: String,
    },
    /// Write a snapshot's reference (root hash, size, labels) for a server
    /// over the same bucket to import.
    ExportRef {
        /// NAME@TAG.
        snapshot: String,
        /// Output file, or - for stdout.
        #[arg(default_value = "-")]
        file: String,
    },
    /// Import a snapshot reference exported by a server over the same
    /// bucket; fork it to use it. Chunks are fetched on first read.
    ImportRef {
        /// Reference file, or - for stdin.
        #[arg(default_value = "-")]
        file: String,
        /// Volume to hold the snapshot here (default: the exported volume's name).
        #[arg(long)]
        volume: Option<String>,
    },
}

pub(super) async fn run(client: &Client, as_json: bool, command: SnapshotCmd) -> anyhow::Result<()> {
    match command {
        SnapshotCmd::Create { name, tag, labels } => {
            let body = CreateSnapshot {
                tag,
                labels: Some(labels_map(labels)),
            };
            let req = client
                .request(Method::POST, &format!("/volumes/{name}/snapshots"))
                .json(&body);
            let (s, raw): (Snapshot, _) = client.json(req).await?;
            if as_json {
                print_json(&raw)
            } else {
                snapshot_table(&[s])
            }
        }
        SnapshotCmd::List { name } => {
            let path = match &name {
                Some(n) => format!("/volumes/{n}/snapshots"),
                None => "/snapshots".to_string(),
            };
            let (list, raw): (SnapshotList, _) = client.json(client.request(Method::GET, &path)).await?;
            if as_json {
                print_json(&raw)
            } else {
                snapshot_table(&list.snapshots)
            }
        }
        SnapshotCmd::Delete { snapshot } => {
            let (v, t) = split_snapshot(&snapshot)?;
            client
                .send(client.request(Method::DELETE, &format!("/volumes/{v}/snapshots/{t}")))
                .await?;
            if as_json {
                print_json(&json!({}))
            } else {
                println!("deleted {snapshot}")
            }
        }
        SnapshotCmd::ExportRef { snapshot, file } => {
            let (v, t) = split_snapshot(&snapshot)?;
            let (_, raw): (serde_json::Value, _) = client
                .json(client.request(Method::GET, &format!("/volumes/{v}/snapshots/{t}/ref")))
                .await?;
            let text = serde_json::to_string_pretty(&raw)? + "\n";
            if file == "-" {
                print!("{text}");
            } else {
                std::fs::write(&file, text).with_context(|| format!("writing {file}"))?;
                if !as_json {
                    println!("wrote the reference of {snapshot} to {file}");
                }
            }
        }
        SnapshotCmd::ImportRef { file, volume } => {
            let text = if file == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading the reference from stdin")?
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?
            };
            let reference: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{file} is not a snapshot reference (JSON)"))?;
            let req = client
                .request(Method::POST, "/snapshots/import")
                .json(&json!({"ref": reference, "volume": volume}));
            let (s, raw): (Snapshot, _) = client.json(req).await?;
            if as_json {
                print_json(&raw)
            } else {
                println!(
                    "imported {}@{} (root {}); fork it to write",
                    s.volume, s.tag, s.root
                );
            }
        }
    }
    Ok(())
}
