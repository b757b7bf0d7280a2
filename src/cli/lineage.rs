//! `cairn fork`, `clone`, `rollback` and `diff`: volumes made from
//! snapshots, and what changed between them.

use anyhow::bail;
use cairn_api_types::{CloneRequest, Extent, ForkRequest, RollbackRequest, Volume};
use clap::Args;
use reqwest::Method;

use super::output::{print_json, table, volume_table};
use super::{labels_map, parse_label, split_snapshot};
use crate::client::Client;
use crate::size::{format_size, parse_size};

#[derive(Debug, Args)]
pub(super) struct ForkArgs {
    /// NAME@TAG.
    snapshot: String,
    /// Name of the new volume.
    new: String,
    /// Size of the new volume (at least the snapshot's).
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    /// Refuse unless the snapshot has this label (K=V); repeatable.
    #[arg(long = "require-label", value_parser = parse_label)]
    require_labels: Vec<(String, String)>,
}

#[derive(Debug, Args)]
pub(super) struct CloneArgs {
    /// Source volume.
    name: String,
    /// Name of the clone (default NAME-clone-<unix-ts>).
    #[arg(long = "name")]
    new: Option<String>,
    /// Size of the clone (at least the source's).
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
}

#[derive(Debug, Args)]
pub(super) struct RollbackArgs {
    /// NAME@TAG.
    snapshot: String,
}

#[derive(Debug, Args)]
pub(super) struct DiffArgs {
    /// NAME@TAG.
    snapshot: String,
    /// NAME@BASE (same volume).
    base: Option<String>,
}

fn print_volume(as_json: bool, v: Volume, raw: &serde_json::Value) {
    if as_json {
        print_json(raw)
    } else {
        volume_table(&[v])
    }
}

pub(super) async fn fork(client: &Client, as_json: bool, args: ForkArgs) -> anyhow::Result<()> {
    let (v, t) = split_snapshot(&args.snapshot)?;
    let body = ForkRequest {
        name: args.new,
        size: args.size,
        require_labels: Some(labels_map(args.require_labels)),
    };
    let req = client
        .request(Method::POST, &format!("/volumes/{v}/snapshots/{t}/fork"))
        .json(&body);
    let (vol, raw): (Volume, _) = client.json(req).await?;
    print_volume(as_json, vol, &raw);
    Ok(())
}

pub(super) async fn clone(client: &Client, as_json: bool, args: CloneArgs) -> anyhow::Result<()> {
    let body = CloneRequest {
        name: args.new,
        size: args.size,
    };
    let req = client
        .request(Method::POST, &format!("/volumes/{}/clone", args.name))
        .json(&body);
    let (vol, raw): (Volume, _) = client.json(req).await?;
    print_volume(as_json, vol, &raw);
    Ok(())
}

pub(super) async fn rollback(client: &Client, as_json: bool, args: RollbackArgs) -> anyhow::Result<()> {
    let (v, t) = split_snapshot(&args.snapshot)?;
    let req = client
        .request(Method::POST, &format!("/volumes/{v}/rollback"))
        .json(&RollbackRequest { tag: t.to_string() });
    let (vol, raw): (Volume, _) = client.json(req).await?;
    print_volume(as_json, vol, &raw);
    Ok(())
}

pub(super) async fn diff(client: &Client, as_json: bool, args: DiffArgs) -> anyhow::Result<()> {
    let (v, t) = split_snapshot(&args.snapshot)?;
    let mut req = client.request(Method::GET, &format!("/volumes/{v}/snapshots/{t}/diff"));
    if let Some(base) = &args.base {
        let (bv, bt) = split_snapshot(base)?;
        if bv != v {
            bail!("diff compares two snapshots of one volume: {bv} is not {v}");
        }
        req = req.query(&[("base", bt)]);
    }
    let (extents, raw): (Vec<Extent>, _) = client.json(req).await?;
    if as_json {
        print_json(&raw)
    } else {
        table(
            &["OFFSET", "LENGTH"],
            extents
                .iter()
                .map(|e| vec![e.offset.to_string(), e.length.to_string()])
                .collect(),
        );
        let total: u64 = extents.iter().map(|e| e.length).sum();
        eprintln!("{} extents, {} changed", extents.len(), format_size(total));
    }
    Ok(())
}
