//! `cairn`: the server (`cairn serve`) and the command-line client.
//!
//! This binary only parses arguments, reads configuration and wires the
//! crates together; behaviour lives in `cairn-store` (and the API and NBD
//! crates).

mod cli;
mod client;
mod serve;
mod size;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cairn: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
