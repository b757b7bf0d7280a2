//! `cairn export`: a volume or snapshot written to a file or standard
//! output, its zero runs written locally instead of fetched.

use anyhow::{anyhow, bail, Context};
use cairn_api_types::MapExtent;
use clap::Args;
use futures::StreamExt;
use reqwest::Method;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

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
/// or a device): one write per MiB, not one per network frame.
const STREAM_BUFFER: usize = 1 << 20;

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
    let mut out = if file == "-" {
        Output::Stream(Box::new(tokio::io::BufWriter::with_capacity(
            STREAM_BUFFER,
            tokio::io::stdout(),
        )))
    } else {
        let f = tokio::fs::File::create(file)
            .await
            .with_context(|| format!("creating {file}"))?;
        // A device or pipe keeps what a skipped hole would leave behind.
        match f.metadata().await?.is_file() {
            true => Output::File(f),
            false => Output::Stream(Box::new(tokio::io::BufWriter::with_capacity(STREAM_BUFFER, f))),
        }
    };
    let mut progress = Progress::new("export", Some(size));
    let mut done = 0u64;
    for (offset, length, zero) in runs {
        if zero {
            out.zeros(length).await?;
            done += length;
        } else {
            let req = client
                .request(Method::GET, &format!("{base}/data"))
                .query(&[("offset", offset), ("length", length)]);
            let mut body = client.send(req).await?.bytes_stream();
            let end = done + length;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| {
                    anyhow!(
                        "export interrupted after {done} bytes ({e}): the server stopped the stream, usually because \
                         an object of {source} is missing or corrupt; `cairn verify {source}` shows which ranges"
                    )
                })?;
                out.write(&chunk).await?;
                done += chunk.len() as u64;
                if file != "-" {
                    progress.update(done, false);
                }
            }
            if done != end {
                bail!("export truncated: got {done} of {size} bytes");
            }
        }
    }
    out.finish(size).await?;
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

/// Where an export goes: a regular file (holes skipped, so it stays
/// sparse) or anything else (holes written as zeros).
enum Output {
    File(tokio::fs::File),
    Stream(Box<dyn tokio::io::AsyncWrite + Unpin>),
}

impl Output {
    async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Output::File(f) => f.write_all(data).await,
            Output::Stream(s) => s.write_all(data).await,
        }
    }

    async fn zeros(&mut self, mut length: u64) -> std::io::Result<()> {
        match self {
            Output::File(f) => f.seek(std::io::SeekFrom::Current(length as i64)).await.map(drop),
            Output::Stream(s) => {
                while length > 0 {
                    let n = length.min(ZEROS.len() as u64) as usize;
                    s.write_all(&ZEROS[..n]).await?;
                    length -= n as u64;
                }
                Ok(())
            }
        }
    }

    /// Flushes; a file gets its full size (a trailing hole included).
    async fn finish(self, size: u64) -> std::io::Result<()> {
        match self {
            Output::File(mut f) => {
                f.flush().await?;
                f.set_len(size).await
            }
            Output::Stream(mut s) => s.flush().await,
        }
    }
}
