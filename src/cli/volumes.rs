//! `cairn volume ...`: create, list, show, warm, resize, delete.

use anyhow::{anyhow, bail};
use cairn_api_types::{CreateVolume, Hydration, RepairReport, ResizeVolume, Volume, VolumeList};
use clap::Subcommand;
use reqwest::Method;
use serde_json::json;
use std::time::Instant;

use super::output::{hydration_line, print_json, volume_table, Progress};
use super::{labels_map, parse_label};
use crate::client::Client;
use crate::size::{format_size, parse_size};

#[derive(Debug, Subcommand)]
pub(super) enum VolumeCmd {
    /// Create an empty volume.
    Create {
        /// RFC 1123 label.
        name: String,
        /// Size, e.g. 10G (a multiple of 4 KiB).
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Chunk size (power of two, 4K..4M; server default 64K).
        #[arg(long, value_parser = parse_size)]
        chunk_size: Option<u64>,
        /// Label K=V; repeatable.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// List volumes.
    List,
    /// Show one volume.
    Show {
        /// Volume name.
        name: String,
    },
    /// Fetch the volume's data that is not local yet (remote object
    /// stores) into the local chunk cache, showing progress.
    Warm {
        /// Volume name.
        name: String,
        /// Start warming and return at once.
        #[arg(long)]
        no_wait: bool,
    },
    /// Bring a `damaged` volume back into service: replay every write-back
    /// log record that still reads, drop the unreadable ones and list them.
    Repair {
        /// Volume name.
        name: String,
    },
    /// Grow a volume.
    Resize {
        /// Volume name.
        name: String,
        /// New size (not smaller than the current one).
        #[arg(long, value_parser = parse_size)]
        size: u64,
    },
    /// Delete a volume and, unless --keep-snapshots, its snapshots.
    Delete {
        /// Volume name.
        name: String,
        /// Keep the volume's snapshots (forks of them stay usable either way).
        #[arg(long)]
        keep_snapshots: bool,
    },
}

pub(super) async fn run(client: &Client, as_json: bool, command: VolumeCmd) -> anyhow::Result<()> {
    match command {
        VolumeCmd::Create {
            name,
            size,
            chunk_size,
            labels,
        } => {
            let body = CreateVolume {
                name,
                size,
                chunk_size,
                labels: Some(labels_map(labels)),
            };
            let (v, raw): (Volume, _) = client
                .json(client.request(Method::POST, "/volumes").json(&body))
                .await?;
            if as_json {
                print_json(&raw)
            } else {
                volume_table(&[v])
            }
        }
        VolumeCmd::List => {
            let (list, raw): (VolumeList, _) = client.json(client.request(Method::GET, "/volumes")).await?;
            if as_json {
                print_json(&raw)
            } else {
                volume_table(&list.volumes)
            }
        }
        VolumeCmd::Show { name } => {
            let (v, raw): (Volume, _) = client
                .json(client.request(Method::GET, &format!("/volumes/{name}")))
                .await?;
            if as_json {
                print_json(&raw)
            } else {
                volume_table(std::slice::from_ref(&v));
                if let Some(d) = &v.damage {
                    println!("damaged: {d}");
                }
                if let Some(h) = &v.hydration {
                    println!("{}", hydration_line(h));
                }
                if let Some(src) = &v.cloned_from {
                    println!("cloned from: {src}");
                }
                if !v.labels.is_empty() {
                    let labels: Vec<String> = v.labels.iter().map(|(k, val)| format!("{k}={val}")).collect();
                    println!("labels: {}", labels.join(", "));
                }
            }
        }
        VolumeCmd::Warm { name, no_wait } => warm(client, as_json, &name, no_wait).await?,
        VolumeCmd::Repair { name } => {
            let (report, raw): (RepairReport, _) = client
                .json(client.request(Method::POST, &format!("/volumes/{name}/repair")))
                .await?;
            if as_json {
                print_json(&raw)
            } else {
                for d in &report.dropped {
                    println!(
                        "dropped {} bytes of log generation {} at byte {}: {}",
                        d.length, d.generation, d.at, d.reason
                    );
                }
                println!(
                    "{name} repaired: {} unreadable records dropped ({})",
                    report.dropped.len(),
                    format_size(report.dropped_bytes)
                );
            }
        }
        VolumeCmd::Resize { name, size } => {
            let req = client
                .request(Method::PATCH, &format!("/volumes/{name}"))
                .json(&ResizeVolume { size });
            let (v, raw): (Volume, _) = client.json(req).await?;
            if as_json {
                print_json(&raw)
            } else {
                volume_table(&[v])
            }
        }
        VolumeCmd::Delete { name, keep_snapshots } => {
            let req = client
                .request(Method::DELETE, &format!("/volumes/{name}"))
                .query(&[("keep_snapshots", keep_snapshots)]);
            client.send(req).await?;
            if as_json {
                print_json(&json!({}))
            } else {
                println!("deleted {name}")
            }
        }
    }
    Ok(())
}

/// Starts a warm and, unless `no_wait`, follows it to the end.
async fn warm(client: &Client, as_json: bool, name: &str, no_wait: bool) -> anyhow::Result<()> {
    let (mut h, mut raw): (Hydration, _) = client
        .json(client.request(Method::POST, &format!("/volumes/{name}/warm")))
        .await?;
    let started = Instant::now();
    let mut progress = Progress::new("warm", Some(h.total_bytes));
    while h.warming && !no_wait {
        progress.update(h.local_bytes, false);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let (v, _): (Volume, serde_json::Value) = client
            .json(client.request(Method::GET, &format!("/volumes/{name}")))
            .await?;
        h = v
            .hydration
            .ok_or_else(|| anyhow!("the server did not report hydration"))?;
        raw = serde_json::to_value(&h)?;
    }
    if as_json {
        print_json(&raw);
    } else {
        println!(
            "{name}: {} after {:.1} s",
            hydration_line(&h),
            started.elapsed().as_secs_f64()
        );
    }
    match (&h.warm_error, no_wait) {
        (Some(e), false) => bail!("warm of {name} stopped: {e}"),
        _ => Ok(()),
    }
}
