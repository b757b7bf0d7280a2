//! `cairn gc`, `cairn verify` and `cairn events`: reclaiming space,
//! scrubbing and the audit log.

use anyhow::bail;
use std::io::IsTerminal;

use cairn_api_types::{EventList, GcReport, GcRequest, GcStatus, VerifyReport};
use clap::Args;
use reqwest::Method;

use super::output::{gc_progress_line, gc_summary, print_json, table, time_text};
use super::split_snapshot;
use crate::client::Client;
use crate::size::format_size;

#[derive(Debug, Args)]
pub(super) struct GcArgs {
    /// Report what would be reclaimed; delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Keep unreferenced objects younger than this (0s, 90s, 15m, 1h, 2d).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    grace: std::time::Duration,
}

#[derive(Debug, Args)]
pub(super) struct VerifyArgs {
    /// NAME or NAME@TAG (default: everything the token sees; the whole
    /// store for an admin token or without a token file).
    target: Option<String>,
}

#[derive(Debug, Args)]
pub(super) struct EventsArgs {
    /// Only events of this volume.
    #[arg(long)]
    volume: Option<String>,
    /// From this RFC 3339 time (or event number) on.
    #[arg(long)]
    since: Option<String>,
}

pub(super) async fn gc(client: &Client, as_json: bool, args: GcArgs) -> anyhow::Result<()> {
    let body = GcRequest {
        dry_run: Some(args.dry_run),
        grace_seconds: Some(args.grace.as_secs()),
    };
    let run = client.json::<GcReport>(client.request(Method::POST, "/gc").json(&body));
    tokio::pin!(run);
    // On a terminal, the run's progress once a second while it lasts.
    let show = std::io::stderr().is_terminal();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.tick().await;
    let (report, raw) = loop {
        tokio::select! {
            done = &mut run => break done?,
            _ = tick.tick(), if show => {
                if let Ok((GcStatus { running: Some(p), .. }, _)) =
                    client.json::<GcStatus>(client.request(Method::GET, "/gc")).await
                {
                    eprintln!("{}", gc_progress_line(&p));
                }
            }
        }
    };
    if as_json {
        print_json(&raw)
    } else {
        println!("{}", gc_summary(&report));
    }
    Ok(())
}

pub(super) async fn verify(client: &Client, as_json: bool, args: VerifyArgs) -> anyhow::Result<()> {
    let target = args.target;
    let body = match target.as_deref() {
        None => serde_json::json!({}),
        Some(t) => match t.split_once('@') {
            Some(_) => {
                let (volume, tag) = split_snapshot(t)?;
                serde_json::json!({ "volume": volume, "tag": tag })
            }
            None => serde_json::json!({ "volume": t }),
        },
    };
    let (report, raw): (VerifyReport, _) = client
        .json(client.request(Method::POST, "/verify").json(&body))
        .await?;
    if as_json {
        print_json(&raw)
    } else {
        println!(
            "checked {} objects ({}) of {} volumes and snapshots in {} ms: {} missing, {} corrupt",
            report.objects_checked,
            format_size(report.bytes_checked),
            report.targets,
            report.duration_ms,
            report.missing,
            report.corrupt
        );
        let rows = report
            .problems
            .iter()
            .flat_map(|p| {
                p.affected.iter().map(move |a| {
                    let source = match &a.tag {
                        Some(tag) => format!("{}@{tag}", a.volume),
                        None => a.volume.clone(),
                    };
                    vec![
                        p.problem.clone(),
                        p.kind.clone(),
                        p.id[..16].to_string(),
                        source,
                        a.offset.to_string(),
                        a.length.to_string(),
                    ]
                })
            })
            .collect::<Vec<_>>();
        if !rows.is_empty() {
            table(
                &["PROBLEM", "KIND", "OBJECT", "AFFECTS", "OFFSET", "LENGTH"],
                rows,
            );
        }
    }
    if !report.is_clean() {
        bail!(
            "verify found {} missing and {} corrupt objects",
            report.missing,
            report.corrupt
        );
    }
    Ok(())
}

pub(super) async fn events(client: &Client, as_json: bool, args: EventsArgs) -> anyhow::Result<()> {
    let EventsArgs { volume, since } = args;
    let mut query = Vec::new();
    if let Some(v) = &volume {
        query.push(("volume", v.as_str()));
    }
    if let Some(s) = &since {
        query.push(("since", s.as_str()));
    }
    let (list, raw): (EventList, _) = client
        .json(client.request(Method::GET, "/events").query(&query))
        .await?;
    if as_json {
        print_json(&raw)
    } else {
        table(
            &["SEQ", "TIME", "KIND", "VOLUME", "TAG", "ACTOR", "DETAIL"],
            list.events
                .iter()
                .map(|e| {
                    vec![
                        e.seq.to_string(),
                        time_text(&e.time),
                        e.kind.clone(),
                        e.volume.clone().unwrap_or_default(),
                        e.tag.clone().unwrap_or_default(),
                        e.actor.clone(),
                        e.detail.to_string(),
                    ]
                })
                .collect(),
        );
    }
    Ok(())
}
