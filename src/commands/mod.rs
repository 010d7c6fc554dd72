//! The subcommands. This is the binary's edge: errors become messages for a person and
//! exit codes here, and nowhere else.

mod check;
mod once;
mod parse_log;
mod run;
mod status;

use clap::Parser;

use crate::cli::{Cli, Command, EXIT_CONFIG, EXIT_OK, EXIT_USAGE};
use crate::config::Config;

/// Parses the command line, runs the subcommand and returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
        }
    };
    // awc's TLS needs a process-wide crypto provider even for http:// URLs; installing
    // fails only if one is installed already, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Some(Command::ParseLog(args)) = &cli.command {
        return parse_log::parse_log(&cli, args);
    }
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) if matches!(cli.command, Some(Command::Status)) => {
            return status::status_despite(&cli.config, &e);
        }
        Err(e) => {
            eprintln!("postgres-agent: configuration error: {e}");
            return EXIT_CONFIG;
        }
    };
    match cli.command.clone().unwrap_or(Command::Run) {
        Command::Run => run::run(&cli, config),
        Command::Check => check::check(&cli, config),
        Command::Once => once::once(&cli, config),
        Command::Status => status::status(&config),
        Command::ParseLog(_) => unreachable!("handled before the config is loaded"),
    }
}
