//! `cairn import`: a raw image streamed to the server, with progress on
//! stderr.

use std::time::Instant;

use anyhow::{bail, Context};
use std::sync::Arc;

use bytes::Bytes;
use cairn_api_types::{CreateVolume, ImportResult, Volume};
use clap::Args;
use futures::stream::{BoxStream, StreamExt};
use reqwest::Method;
use std::io::{Read, Seek};

use super::output::{print_json, volume_table, Progress};
use crate::client::Client;
use crate::size::parse_size;

#[derive(Debug, Args)]
pub(super) struct ImportArgs {
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
}

pub(super) async fn import(client: &Client, as_json: bool, args: ImportArgs) -> anyhow::Result<()> {
    let ImportArgs {
        name,
        file,
        size,
        offset,
    } = args;
    let (name, file) = (name.as_str(), file.as_str());
    let length = if file == "-" {
        None
    } else {
        let f = std::fs::File::open(file).with_context(|| format!("opening {file}"))?;
        Some(f.metadata()?.len())
    };
    let progress = Arc::new(byte_counter::Counter::default());
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
    let result = match length {
        None => {
            let stdin = tokio_util::io::ReaderStream::with_capacity(tokio::io::stdin(), BLOCK).boxed();
            upload(client, name, stdin, offset, size, None, &progress).await
        }
        Some(len) => import_file(client, name, file, len, offset, size, &progress).await,
    };
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

/// Imports a file of `len` bytes. Into a new volume, a sparse file is sent
/// as its data runs only (the new volume reads zeros elsewhere); otherwise,
/// and into an existing volume (whose bytes under the file's holes must
/// become zeros), the whole file in one upload.
#[allow(clippy::too_many_arguments)]
async fn import_file(
    client: &Client,
    name: &str,
    file: &str,
    len: u64,
    offset: u64,
    size: Option<u64>,
    progress: &Arc<byte_counter::Counter>,
) -> anyhow::Result<(ImportResult, serde_json::Value)> {
    let probe = client.request(Method::GET, &format!("/volumes/{name}"));
    match client.json::<Volume>(probe).await {
        // Check the fit first: the server refuses an oversized upload before
        // reading it, which a streaming client would only see as a broken pipe.
        Ok((existing, _)) if offset.saturating_add(len) > existing.size => bail!(
            "import of {len} bytes at offset {offset} exceeds volume size {} (import_too_large)",
            existing.size
        ),
        Ok(_) => {
            let body = file_blocks(file, 0, len)?;
            return upload(client, name, body, offset, size, Some(len), progress).await;
        }
        Err(_) => {}
    }
    let runs = super::sparse::data_runs(file, len).with_context(|| format!("mapping the data of {file}"))?;
    if runs.iter().map(|r| r.1).sum::<u64>() == len {
        let body = file_blocks(file, 0, len)?;
        return upload(client, name, body, offset, size, Some(len), progress).await;
    }
    let size = size.unwrap_or_else(|| (offset + len).div_ceil(4096).max(1) * 4096);
    let create = CreateVolume {
        name: name.to_string(),
        size,
        chunk_size: None,
        labels: None,
    };
    client
        .send(client.request(Method::POST, "/volumes").json(&create))
        .await?;
    let sent = async {
        let mut at = 0;
        for (start, n) in runs {
            progress.add(start - at);
            let part = file_blocks(file, start, n)?;
            upload(client, name, part, offset + start, None, Some(n), progress).await?;
            at = start + n;
        }
        progress.add(len - at);
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = sent {
        // The volume holds part of the image: remove it, as a failed
        // one-request import would.
        let _ = client
            .send(client.request(Method::DELETE, &format!("/volumes/{name}")))
            .await;
        return Err(e);
    }
    let (volume, _) = client
        .json::<Volume>(client.request(Method::GET, &format!("/volumes/{name}")))
        .await?;
    let done = ImportResult { volume, bytes: len };
    let raw = serde_json::to_value(&done)?;
    Ok((done, raw))
}

/// Bytes read and sent at a time.
const BLOCK: usize = 1 << 20;

/// `len` bytes of `path` from `start`, read a block at a time on one
/// blocking thread (a few blocks ahead of the upload): one copy out of the
/// page cache, no hop to the blocking pool per read.
fn file_blocks(
    path: &str,
    start: u64,
    len: u64,
) -> anyhow::Result<BoxStream<'static, std::io::Result<Bytes>>> {
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
    file.seek(std::io::SeekFrom::Start(start))?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let mut left = len;
        while left > 0 {
            let want = left.min(BLOCK as u64);
            let mut block = Vec::with_capacity(want as usize);
            let read = match (&mut file).take(want).read_to_end(&mut block) {
                Ok(0) => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file ended early (truncated while importing?)",
                )),
                other => other,
            };
            match read {
                Ok(n) => left -= n as u64,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
            // The upload stopped (the request failed): nothing left to do.
            if tx.blocking_send(Ok(Bytes::from(block))).is_err() {
                return;
            }
        }
    });
    Ok(futures::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|block| (block, rx)) },
    )
    .boxed())
}

/// One upload of `body` to the volume at `offset` (`len` bytes when
/// known); creates the volume (of `size`, or the length rounded up) when
/// it does not exist.
async fn upload(
    client: &Client,
    name: &str,
    body: BoxStream<'static, std::io::Result<Bytes>>,
    offset: u64,
    size: Option<u64>,
    len: Option<u64>,
    progress: &Arc<byte_counter::Counter>,
) -> anyhow::Result<(ImportResult, serde_json::Value)> {
    let counter = progress.clone();
    let stream = body.map(move |chunk| {
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
    if let Some(len) = len {
        req = req.header(reqwest::header::CONTENT_LENGTH, len);
    }
    client.json::<ImportResult>(req).await
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
