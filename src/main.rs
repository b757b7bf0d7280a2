//! `cairn`: the server (`cairn serve`) and the command-line client.
//!
//! This binary only parses arguments, reads configuration and wires the
//! crates together; behaviour lives in `cairn-store` (and the API and NBD
//! crates).

mod cli;
mod client;
mod nbd;
mod serve;
mod size;

use clap::error::ErrorKind;
use clap::Parser;

/// Chunk-sized buffers (64 KiB and up: cached chunks, seal batches, NBD
/// payloads) are allocated on many blocking-pool threads; glibc kept them
/// in per-thread arenas after they were freed, and RSS ran ~300 MiB past
/// the live heap (heaptrack: 332 MiB live at a 620 MiB RSS peak in the
/// write-path bench's 4-volume phase). Served by mmap instead, they go
/// back to the system when freed (peak RSS 361 MiB in the same run).
fn return_large_buffers_to_the_system() {
    // SAFETY: mallopt only sets allocator parameters; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 10);
    }
}

fn main() -> std::process::ExitCode {
    return_large_buffers_to_the_system();
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            e.exit()
        }
        Err(e) => {
            // One line, as for every other failure; `--help` has the rest.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("cairn: {}", first.trim_start_matches("error: "));
            return std::process::ExitCode::from(2);
        }
    };
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cairn: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
