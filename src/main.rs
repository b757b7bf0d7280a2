//! `cairn`: the server (`cairn serve`) and the command-line client.
//!
//! This binary only parses arguments, reads configuration and wires the
//! crates together; behaviour lives in `cairn-store` (and the API and NBD
//! crates).

mod allocator;
mod cli;
mod client;
mod nbd;
mod priority;
mod serve;
mod size;

use clap::error::ErrorKind;
use clap::Parser;

fn main() -> std::process::ExitCode {
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
