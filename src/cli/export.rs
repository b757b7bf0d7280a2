//! `cairn export`: a volume or snapshot written to a file or standard
//! output, its zero runs written locally instead of fetched, its data runs
//! fetched as chunk records (stored frames, decoded here: see
//! [`super::chunks`]).

use anyhow::{anyhow, bail, Context};
use cairn_api_types::MapExtent;
use clap::Args;
use std::io::{BufWriter, Seek, Write};
use std::os::fd::AsFd;

use futures::StreamExt;
use reqwest::Method;

use super::chunks::{decoded, Part};
use super::output::Progress;
use super::sparse::SMALL_HOLE;
use crate::client::Client;

#[derive(Debug, Args)]
pub(super) struct ExportArgs {
    /// NAME or NAME@TAG.
    source: String,
    /// Output file, or - for standard output.
    file: String,
}

/// Zeros written per call where the output cannot skip a hole.
static ZEROS: [u8; 1 << 20] = [0; 1 << 20];
/// Bytes gathered before each write to a stream output (standard output
/// or a device): short pieces (part of a chunk) are gathered, while a
/// whole chunk of the default size or more is written as it is, without a
/// copy into the buffer.
const STREAM_BUFFER: usize = 64 << 10;

/// Exports an image: the map of the source first, then each data run
/// fetched and written in order, zero runs written locally (skipped in a
/// file, which stays sparse) without moving them over the network.
pub(super) async fn export(client: &Client, args: ExportArgs) -> anyhow::Result<()> {
    let (source, file) = (args.source.as_str(), args.file.as_str());
    let base = match source.split_once('@') {
        Some((v, t)) => format!("/volumes/{v}/snapshots/{t}"),
        None => format!("/volumes/{source}"),
    };
    let (_, shown) = client
        .json::<serde_json::Value>(client.request(Method::GET, &base))
        .await?;
    let size = shown["size"]
        .as_u64()
        .ok_or_else(|| anyhow!("the server's answer for {source} has no size"))?;
    let runs = map(client, &base, size).await?;
    let mut out = Output::open(file, size)?;
    let mut progress = Progress::new("export", Some(size));
    let mut done = 0u64;
    for (offset, length, zero) in runs {
        if !out.is_writing() {
            break;
        }
        if zero {
            out.send(vec![Part::Zeros(length)]).await;
            done += length;
        } else {
            let req = client
                .request(Method::GET, &format!("{base}/chunks"))
                .query(&[("offset", offset), ("length", length)]);
            let body = client.send(req).await?.bytes_stream();
            let end = done + length;
            let mut parts = std::pin::pin!(decoded(body, offset));
            while let Some(batch) = parts.next().await {
                let batch = batch.map_err(|e| {
                    anyhow!(
                        "export interrupted after {done} bytes ({e:#}): usually an object of {source} is missing or \
                         corrupt; `cairn verify {source}` shows which ranges"
                    )
                })?;
                let n: u64 = batch.iter().map(Part::len).sum();
                if !out.send(batch).await {
                    break;
                }
                done += n;
                if file != "-" {
                    progress.update(done, false);
                }
            }
            if done != end && out.is_writing() {
                bail!("export truncated: got {done} of {size} bytes");
            }
        }
    }
    let target = if file == "-" { "standard output" } else { file };
    out.finish().await.with_context(|| format!("writing {target}"))?;
    if file != "-" {
        progress.update(done, true);
    }
    Ok(())
}

/// The source's runs `(offset, length, zero)` covering `[0, size)`, zero
/// runs shorter than [`SMALL_HOLE`] folded into the data around them.
async fn map(client: &Client, base: &str, size: u64) -> anyhow::Result<Vec<(u64, u64, bool)>> {
    let mut runs: Vec<(u64, u64, bool)> = Vec::new();
    let mut pos = 0;
    while pos < size {
        // One answer may end early (a bounded number of runs): ask again.
        let req = client
            .request(Method::GET, &format!("{base}/map"))
            .query(&[("offset", pos)]);
        let (part, _) = client.json::<Vec<MapExtent>>(req).await?;
        if part.is_empty() {
            bail!("the server's map of {base} ends at {pos} of {size} bytes");
        }
        for run in part {
            if run.offset != pos {
                bail!("the server's map of {base} has a gap at {pos}");
            }
            let zero = run.zero && run.length >= SMALL_HOLE;
            match runs.last_mut() {
                Some(last) if !last.2 && !zero => last.1 += run.length,
                _ => runs.push((run.offset, run.length, zero)),
            }
            pos += run.length;
        }
    }
    Ok(runs)
}

/// Where an export goes, written on one blocking thread fed through a
/// short queue of batches: the decoded blocks are written as they are,
/// with no hop to the blocking pool per block and no copy per write.
struct Output {
    ops: Option<tokio::sync::mpsc::Sender<Vec<Part>>>,
    writer: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Output {
    /// Starts writing to `file` (`-`: standard output), `size` bytes in all.
    fn open(file: &str, size: u64) -> anyhow::Result<Self> {
        let sink = if file == "-" {
            let stdout = std::io::stdout().as_fd().try_clone_to_owned()?;
            Sink::Stream(BufWriter::with_capacity(
                STREAM_BUFFER,
                std::fs::File::from(stdout),
            ))
        } else {
            let f = std::fs::File::create(file).with_context(|| format!("creating {file}"))?;
            // A device or pipe keeps what a skipped hole would leave behind.
            match f.metadata()?.is_file() {
                true => Sink::File(f),
                false => Sink::Stream(BufWriter::with_capacity(STREAM_BUFFER, f)),
            }
        };
        let (ops, mut queue) = tokio::sync::mpsc::channel(8);
        let writer = tokio::task::spawn_blocking(move || {
            let mut sink = sink;
            while let Some(batch) = queue.blocking_recv() {
                for part in batch {
                    sink.apply(part)?;
                }
            }
            sink.finish(size)
        });
        Ok(Self {
            ops: Some(ops),
            writer,
        })
    }

    /// Queues `batch`; false once the writer has stopped (on an error, which
    /// [`Output::finish`] returns).
    async fn send(&mut self, batch: Vec<Part>) -> bool {
        match &self.ops {
            Some(ops) if ops.send(batch).await.is_ok() => true,
            _ => {
                self.ops = None;
                false
            }
        }
    }

    fn is_writing(&self) -> bool {
        self.ops.is_some()
    }

    /// Waits for everything queued to be written; the writer's error if it
    /// stopped on one.
    async fn finish(mut self) -> std::io::Result<()> {
        self.ops = None;
        self.writer.await.map_err(std::io::Error::other)?
    }
}

/// A regular file (holes skipped, so it stays sparse) or anything else
/// (holes written as zeros).
enum Sink {
    File(std::fs::File),
    Stream(BufWriter<std::fs::File>),
}

impl Sink {
    fn apply(&mut self, part: Part) -> std::io::Result<()> {
        match (self, part) {
            (Sink::File(f), Part::Data(data)) => f.write_all(&data),
            (Sink::Stream(s), Part::Data(data)) => s.write_all(&data),
            (Sink::File(f), Part::Zeros(length)) => {
                f.seek(std::io::SeekFrom::Current(length as i64)).map(drop)
            }
            (Sink::Stream(s), Part::Zeros(mut length)) => {
                while length > 0 {
                    let n = length.min(ZEROS.len() as u64) as usize;
                    s.write_all(&ZEROS[..n])?;
                    length -= n as u64;
                }
                Ok(())
            }
        }
    }

    /// Flushes; a file gets its full size (a trailing hole included).
    fn finish(self, size: u64) -> std::io::Result<()> {
        match self {
            Sink::File(f) => f.set_len(size),
            Sink::Stream(mut s) => s.flush(),
        }
    }
}
