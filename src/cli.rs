//! Command-line arguments and dispatch. Every command but `serve` is a
//! client of the REST API.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use cairn_api::types::{EventList, Extent, ImportResult, Snapshot, SnapshotList, Volume, VolumeList};
use clap::{Args, Parser, Subcommand};
use reqwest::Method;
use serde_json::json;

use crate::client::Client;
use crate::serve::{serve, ServeConfig};
use crate::size::{format_size, parse_size};

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
    Serve(ServeArgs),
    /// Create, list, show, grow and delete volumes.
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Write a raw image into a new volume, or into an existing one at --offset.
    Import {
        /// Volume name.
        name: String,
        /// Raw image file, or - for standard input.
        file: String,
        /// Size of the new volume (default: the file's size rounded up to 4 KiB).
        #[arg(long, value_parser = parse_size)]
        size: Option<u64>,
        /// Byte offset to write at.
        #[arg(long, default_value_t = 0)]
        offset: u64,
    },
    /// Read a volume or snapshot (NAME or NAME@TAG) into a raw image.
    Export {
        /// NAME or NAME@TAG.
        source: String,
        /// Output file, or - for standard output.
        file: String,
    },
    /// Take, list and delete snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Create a new volume from a snapshot.
    Fork {
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
    },
    /// Snapshot a volume now and fork it.
    Clone {
        /// Source volume.
        name: String,
        /// Name of the clone (default NAME-clone-<unix-ts>).
        #[arg(long = "name")]
        new: Option<String>,
        /// Size of the clone (at least the source's).
        #[arg(long, value_parser = parse_size)]
        size: Option<u64>,
    },
    /// Reset a volume's contents to one of its snapshots (NAME@TAG).
    Rollback {
        /// NAME@TAG.
        snapshot: String,
    },
    /// List the byte ranges that changed between NAME@TAG and NAME@BASE (or the empty disk).
    Diff {
        /// NAME@TAG.
        snapshot: String,
        /// NAME@BASE (same volume).
        base: Option<String>,
    },
    /// Reclaim space: delete objects no volume or snapshot references
    /// (older than the grace period). Exits 1 if GC fails, so cron mails it.
    Gc {
        /// Report what would be reclaimed; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Keep unreferenced objects younger than this (0s, 90s, 15m, 1h, 2d).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        grace: std::time::Duration,
    },
    /// Scrub: re-read every object of all volumes and snapshots (or of
    /// NAME, or NAME@TAG) and check it. Exits 1 if anything is missing or
    /// corrupt.
    Verify {
        /// NAME or NAME@TAG (default: everything in the namespace).
        target: Option<String>,
    },
    /// Show the audit log.
    Events {
        /// Only events of this volume.
        #[arg(long)]
        volume: Option<String>,
        /// From this RFC 3339 time (or event number) on.
        #[arg(long)]
        since: Option<String>,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Directory for the catalog, journal and (by default) objects.
    #[arg(long, env = "CAIRN_DATA_DIR", default_value = "./cairn-data")]
    data_dir: PathBuf,
    /// REST API address.
    #[arg(long, env = "CAIRN_LISTEN", default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    /// NBD address: exports VOLUME (read-write) and VOLUME@TAG (read-only).
    #[arg(long, env = "CAIRN_NBD_LISTEN", default_value = "127.0.0.1:10809")]
    nbd_listen: SocketAddr,
    /// NBD transmission I/O: io-uring, tokio (portable), or auto (io_uring
    /// where the kernel allows it, else tokio, logged).
    #[arg(long, env = "CAIRN_NBD_TRANSPORT", default_value = "auto")]
    nbd_transport: cairn_nbd_server::Transport,
    /// Object store URL: file:///path, memory:// or s3://bucket/prefix
    /// (default file://<data-dir>/objects). S3 reads the standard AWS_*
    /// variables, plus AWS_ENDPOINT_URL and AWS_ALLOW_HTTP.
    #[arg(long, env = "CAIRN_OBJECT_STORE")]
    object_store: Option<String>,
    /// Chunk size of new volumes that do not choose one (power of two, 4K..4M).
    #[arg(long, env = "CAIRN_CHUNK_SIZE", default_value = "64K", value_parser = parse_size)]
    chunk_size: u64,
    /// Local disk for chunks of a remote (s3://) object store, under
    /// <data-dir>/cache; least recently used chunks are evicted past it
    /// (default: a quarter of the free space, at least 1G).
    #[arg(long, env = "CAIRN_CACHE_SIZE", value_parser = parse_size)]
    cache_size: Option<u64>,
    /// Memory for decompressed chunks and decoded manifest nodes (an
    /// eighth, at least 8M, goes to nodes).
    #[arg(long, env = "CAIRN_MEMORY_CACHE_SIZE", default_value = "256M", value_parser = parse_size)]
    memory_cache_size: u64,
    /// Local disk per volume for acknowledged writes not yet in the object
    /// store (the write-back backlog: its log files). Sealing starts at half
    /// of it (or after 2s idle, or when the oldest write is a minute old),
    /// so rewrites of a chunk coalesce. Past it writers wait for sealing; when the
    /// object store is unreachable (a seal failed on it, or see
    /// --store-timeout) they get ENOSPC (NBD) or 503 (HTTP).
    #[arg(long, env = "CAIRN_BACKLOG_SIZE", default_value = "2G", value_parser = parse_size)]
    backlog_size: u64,
    /// Seal a volume's acknowledged writes into the object store once it
    /// has had no write for this long (e.g. 2s, 500ms, 1m).
    #[arg(long, env = "CAIRN_SEAL_IDLE", default_value = "2s", value_parser = humantime::parse_duration)]
    seal_idle: std::time::Duration,
    /// A writer waiting for backlog room while the object store answers
    /// no request for this long gets ENOSPC (NBD) or 503 (HTTP), and so do
    /// later ones until a seal succeeds. While the store answers, writers
    /// past the backlog are slowed down, never refused.
    #[arg(long, env = "CAIRN_STORE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    store_timeout: std::time::Duration,
    /// Token file: one `TOKEN NAMESPACE` per line. Without it, everything is
    /// namespace `default` and only loopback addresses are allowed.
    #[arg(long, env = "CAIRN_TOKENS")]
    tokens: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum VolumeCmd {
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

#[derive(Debug, Subcommand)]
enum SnapshotCmd {
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

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("invalid label {text:?}: expected KEY=VALUE"))
}

fn gc_summary(r: &cairn_store::GcReport) -> String {
    format!(
        "{verb} {ro} objects ({rb}) of {so} scanned ({sb}); {mo} reachable ({mb}) from {roots} roots; \
         kept {yo} unreachable objects ({yb}) newer than the cutoff; dropped {stale} stale index entries; \
         took {ms} ms (mark {mark} ms, mark set {set})",
        verb = if r.dry_run { "would reclaim" } else { "reclaimed" },
        ro = r.reclaimed_objects,
        rb = format_size(r.reclaimed_bytes),
        so = r.scanned_objects,
        sb = format_size(r.scanned_bytes),
        mo = r.marked_objects,
        mb = format_size(r.marked_bytes),
        roots = r.roots,
        yo = r.skipped_young_objects,
        yb = format_size(r.skipped_young_bytes),
        stale = r.stale_index_entries,
        ms = r.duration_ms,
        mark = r.mark_ms,
        set = format_size(r.mark_set_bytes),
    )
}

fn split_snapshot(text: &str) -> anyhow::Result<(&str, &str)> {
    text.split_once('@')
        .filter(|(v, t)| !v.is_empty() && !t.is_empty())
        .ok_or_else(|| anyhow!("invalid snapshot {text:?}: write it as VOLUME@TAG"))
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Serve(args) => {
            init_logging();
            runtime.block_on(serve(ServeConfig {
                data_dir: args.data_dir,
                listen: args.listen,
                nbd_listen: args.nbd_listen,
                nbd_transport: args.nbd_transport,
                object_store: args.object_store,
                chunk_size: args.chunk_size,
                cache_size: args.cache_size,
                memory_cache_size: args.memory_cache_size,
                backlog_size: args.backlog_size,
                seal_idle: args.seal_idle,
                store_timeout: args.store_timeout,
                tokens: args.tokens,
            }))?;
            Ok(ExitCode::SUCCESS)
        }
        command => {
            let client = Client::new(&cli.global.server, std::env::var("CAIRN_TOKEN").ok());
            runtime.block_on(run_client(&client, cli.global.json, command))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_json(raw: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(raw).expect("JSON values serialise")
    );
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

fn time_text(t: &time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn volume_table(volumes: &[Volume]) {
    table(
        &["NAME", "SIZE", "STATE", "STORED", "UNIQUE", "CREATED", "FROM"],
        volumes
            .iter()
            .map(|v| {
                vec![
                    v.name.clone(),
                    format_size(v.size),
                    v.state.clone(),
                    format_size(v.stored_bytes),
                    format_size(v.unique_bytes),
                    time_text(&v.created_at),
                    v.from_snapshot.clone().unwrap_or_default(),
                ]
            })
            .collect(),
    );
}

fn snapshot_table(snapshots: &[Snapshot]) {
    table(
        &["VOLUME", "TAG", "SIZE", "CREATED", "SEALED"],
        snapshots
            .iter()
            .map(|s| {
                vec![
                    s.volume.clone(),
                    s.tag.clone(),
                    format_size(s.size),
                    time_text(&s.created_at),
                    if s.sealed { "yes" } else { "pending" }.to_string(),
                ]
            })
            .collect(),
    );
}

fn labels_map(labels: Vec<(String, String)>) -> BTreeMap<String, String> {
    labels.into_iter().collect()
}

async fn run_client(client: &Client, as_json: bool, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(_) => unreachable!("handled by run"),
        Command::Volume(VolumeCmd::Create {
            name,
            size,
            chunk_size,
            labels,
        }) => {
            let body =
                json!({"name": name, "size": size, "chunk_size": chunk_size, "labels": labels_map(labels)});
            let (v, raw): (Volume, _) = client
                .json(client.request(Method::POST, "/volumes").json(&body))
                .await?;
            if as_json {
                print_json(&raw)
            } else {
                volume_table(&[v])
            }
        }
        Command::Volume(VolumeCmd::List) => {
            let (list, raw): (VolumeList, _) = client.json(client.request(Method::GET, "/volumes")).await?;
            if as_json {
                print_json(&raw)
            } else {
                volume_table(&list.volumes)
            }
        }
        Command::Volume(VolumeCmd::Show { name }) => {
            let (v, raw): (Volume, _) = client
                .json(client.request(Method::GET, &format!("/volumes/{name}")))
                .await?;
            if as_json {
                print_json(&raw)
            } else {
                volume_table(std::slice::from_ref(&v));
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
        Command::Volume(VolumeCmd::Warm { name, no_wait }) => {
            warm(client, as_json, &name, no_wait).await?;
        }
        Command::Volume(VolumeCmd::Resize { name, size }) => {
            let req = client
                .request(Method::PATCH, &format!("/volumes/{name}"))
                .json(&json!({"size": size}));
            let (v, raw): (Volume, _) = client.json(req).await?;
            if as_json {
                print_json(&raw)
            } else {
                volume_table(&[v])
            }
        }
        Command::Volume(VolumeCmd::Delete { name, keep_snapshots }) => {
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
        Command::Import {
            name,
            file,
            size,
            offset,
        } => import(client, as_json, &name, &file, size, offset).await?,
        Command::Export { source, file } => export(client, &source, &file).await?,
        Command::Snapshot(SnapshotCmd::Create { name, tag, labels }) => {
            let req = client
                .request(Method::POST, &format!("/volumes/{name}/snapshots"))
                .json(&json!({"tag": tag, "labels": labels_map(labels)}));
            let (s, raw): (Snapshot, _) = client.json(req).await?;
            if as_json {
                print_json(&raw)
            } else {
                snapshot_table(&[s])
            }
        }
        Command::Snapshot(SnapshotCmd::List { name }) => {
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
        Command::Snapshot(SnapshotCmd::Delete { snapshot }) => {
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
        Command::Snapshot(SnapshotCmd::ExportRef { snapshot, file }) => {
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
        Command::Snapshot(SnapshotCmd::ImportRef { file, volume }) => {
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
        Command::Fork {
            snapshot,
            new,
            size,
            require_labels,
        } => {
            let (v, t) = split_snapshot(&snapshot)?;
            let body = json!({"name": new, "size": size, "require_labels": labels_map(require_labels)});
            let req = client
                .request(Method::POST, &format!("/volumes/{v}/snapshots/{t}/fork"))
                .json(&body);
            let (vol, raw): (Volume, _) = client.json(req).await?;
            if as_json {
                print_json(&raw)
            } else {
                volume_table(&[vol])
            }
        }
        Command::Clone { name, new, size } => {
            let req = client
                .request(Method::POST, &format!("/volumes/{name}/clone"))
                .json(&json!({"name": new, "size": size}));
            let (vol, raw): (Volume, _) = client.json(req).await?;
            if as_json {
                print_json(&raw)
            } else {
                volume_table(&[vol])
            }
        }
        Command::Rollback { snapshot } => {
            let (v, t) = split_snapshot(&snapshot)?;
            let req = client
                .request(Method::POST, &format!("/volumes/{v}/rollback"))
                .json(&json!({"tag": t}));
            let (vol, raw): (Volume, _) = client.json(req).await?;
            if as_json {
                print_json(&raw)
            } else {
                volume_table(&[vol])
            }
        }
        Command::Diff { snapshot, base } => {
            let (v, t) = split_snapshot(&snapshot)?;
            let mut req = client.request(Method::GET, &format!("/volumes/{v}/snapshots/{t}/diff"));
            if let Some(base) = &base {
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
        }
        Command::Gc { dry_run, grace } => {
            let body = serde_json::json!({ "dry_run": dry_run, "grace_seconds": grace.as_secs() });
            let (report, raw): (cairn_store::GcReport, _) = client
                .json(client.request(Method::POST, "/gc").json(&body))
                .await?;
            if as_json {
                print_json(&raw)
            } else {
                println!("{}", gc_summary(&report));
            }
        }
        Command::Verify { target } => {
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
            let (report, raw): (cairn_store::VerifyReport, _) = client
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
        }
        Command::Events { volume, since } => {
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
        }
    }
    Ok(())
}

fn hydration_line(h: &cairn_store::Hydration) -> String {
    format!(
        "local: {} of {} ({:.1}%){}{}",
        format_size(h.local_bytes),
        format_size(h.total_bytes),
        h.fraction * 100.0,
        if h.warming { ", warming" } else { "" },
        h.warm_error
            .as_deref()
            .map(|e| format!(" (last warm: {e})"))
            .unwrap_or_default()
    )
}

/// Starts a warm and, unless `no_wait`, follows it to the end.
async fn warm(client: &Client, as_json: bool, name: &str, no_wait: bool) -> anyhow::Result<()> {
    let (mut h, mut raw): (cairn_store::Hydration, _) = client
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

/// Prints progress to stderr at most once a second.
struct Progress {
    started: Instant,
    last: Instant,
    total: Option<u64>,
    label: &'static str,
}

impl Progress {
    fn new(label: &'static str, total: Option<u64>) -> Self {
        let now = Instant::now();
        Self {
            started: now,
            last: now,
            total,
            label,
        }
    }

    fn update(&mut self, done: u64, force: bool) {
        if !force && self.last.elapsed().as_millis() < 1000 {
            return;
        }
        self.last = Instant::now();
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = done as f64 / secs / (1 << 20) as f64;
        match self.total {
            Some(total) if total > 0 => eprintln!(
                "{}: {} of {} ({:.0}%), {:.1} MiB/s",
                self.label,
                format_size(done),
                format_size(total),
                done as f64 * 100.0 / total as f64,
                rate
            ),
            _ => eprintln!("{}: {}, {:.1} MiB/s", self.label, format_size(done), rate),
        }
    }
}

async fn import(
    client: &Client,
    as_json: bool,
    name: &str,
    file: &str,
    size: Option<u64>,
    offset: u64,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    let (reader, length): (Box<dyn tokio::io::AsyncRead + Send + Unpin>, Option<u64>) = if file == "-" {
        (Box::new(tokio::io::stdin()), None)
    } else {
        let f = tokio::fs::File::open(file)
            .await
            .with_context(|| format!("opening {file}"))?;
        let len = f.metadata().await?.len();
        (Box::new(f), Some(len))
    };
    // Check the fit first: the server refuses an oversized upload before
    // reading it, which a streaming client would only see as a broken pipe.
    if let Some(len) = length {
        let probe = client.request(Method::GET, &format!("/volumes/{name}"));
        if let Ok((existing, _)) = client.json::<Volume>(probe).await {
            if offset.saturating_add(len) > existing.size {
                bail!(
                    "import of {len} bytes at offset {offset} exceeds volume size {} (import_too_large)",
                    existing.size
                );
            }
        }
    }
    let progress = std::sync::Arc::new(byte_counter::Counter::default());
    let counter = progress.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(reader, 1 << 20).map(move |chunk| {
        if let Ok(bytes) = &chunk {
            counter.add(bytes.len() as u64);
        }
        chunk
    });
    let mut req = client
        .request(Method::PUT, &format!("/volumes/{name}/data"))
        .query(&[("offset", offset)])
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .body(reqwest::Body::wrap_stream(stream));
    if let Some(size) = size {
        req = req.query(&[("size", size)]);
    }
    if let Some(len) = length {
        req = req.header(reqwest::header::CONTENT_LENGTH, len);
    }
    let started = Instant::now();
    let reporter = {
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut p = Progress::new("import", length);
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                p.update(progress.get(), true);
            }
        })
    };
    let result = client.json::<ImportResult>(req).await;
    reporter.abort();
    let (done, raw) = result?;
    if as_json {
        print_json(&raw);
    } else {
        let mut p = Progress::new("import", length);
        p.started = started;
        p.update(done.bytes, true);
        volume_table(&[done.volume]);
    }
    Ok(())
}

async fn export(client: &Client, source: &str, file: &str) -> anyhow::Result<()> {
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    let path = match source.split_once('@') {
        Some((v, t)) => format!("/volumes/{v}/snapshots/{t}/data"),
        None => format!("/volumes/{source}/data"),
    };
    let response = client.send(client.request(Method::GET, &path)).await?;
    let total = response.content_length();
    let mut out: Box<dyn tokio::io::AsyncWrite + Unpin> = if file == "-" {
        Box::new(tokio::io::stdout())
    } else {
        Box::new(
            tokio::fs::File::create(file)
                .await
                .with_context(|| format!("creating {file}"))?,
        )
    };
    let mut progress = Progress::new("export", total);
    let mut done = 0u64;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            anyhow!(
                "export interrupted after {done} bytes ({e}): the server stopped the stream, usually because \
                 an object of {source} is missing or corrupt; `cairn verify {source}` shows which ranges"
            )
        })?;
        out.write_all(&chunk).await?;
        done += chunk.len() as u64;
        if file != "-" {
            progress.update(done, false);
        }
    }
    out.flush().await?;
    if total.is_some_and(|t| t != done) {
        bail!("export truncated: got {done} of {} bytes", total.unwrap_or(0));
    }
    if file != "-" {
        progress.update(done, true);
    }
    Ok(())
}

mod byte_counter {
    //! A byte counter shared between the upload stream and the progress printer.
    use std::sync::atomic::{AtomicU64, Ordering};

    #[derive(Default)]
    pub struct Counter(AtomicU64);

    impl Counter {
        pub fn add(&self, n: u64) {
            self.0.fetch_add(n, Ordering::Relaxed);
        }
        pub fn get(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
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
