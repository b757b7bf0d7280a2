//! `cairn import` and `cairn export`: raw images streamed to and from
//! the server, with progress on stderr.

use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use cairn_api_types::{ImportResult, Volume};
use clap::Args;
use reqwest::Method;

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

#[derive(Debug, Args)]
pub(super) struct ExportArgs {
    /// NAME or NAME@TAG.
    source: String,
    /// Output file, or - for standard output.
    file: String,
}

pub(super) async fn import(client: &Client, as_json: bool, args: ImportArgs) -> anyhow::Result<()> {
    let ImportArgs {
        name,
        file,
        size,
        offset,
    } = args;
    let (name, file) = (name.as_str(), file.as_str());
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

pub(super) async fn export(client: &Client, args: ExportArgs) -> anyhow::Result<()> {
    let (source, file) = (args.source.as_str(), args.file.as_str());
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
