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
    if let Some(Command::Config) = &cli.command {
        return show_config(&cli.config);
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
        Command::ParseLog(_) | Command::Config => {
            unreachable!("handled before the config is loaded")
        }
    }
}

/// `config`: the effective configuration as TOML, each key with where its value came
/// from; secrets masked. A broken configuration is reported as `check` reports it (78).
fn show_config(path: &std::path::Path) -> i32 {
    use std::io::Write;
    let keys = match Config::load_effective(path) {
        Ok((_, keys)) => keys,
        Err(e) => {
            eprintln!("postgres-agent: configuration error: {e}");
            return EXIT_CONFIG;
        }
    };
    let text = render_config(path, &keys);
    // A closed pipe (`| head`) ends the output, not the process with a panic.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    EXIT_OK
}

/// The text of `config`: sections in order, the origin of each key aligned after it.
fn render_config(path: &std::path::Path, keys: &[crate::config::EffectiveKey]) -> String {
    use crate::config::Origin;
    let mut out = format!(
        "# The effective configuration of {} with the environment's overrides; secrets masked.\n",
        path.display()
    );
    let line = |k: &crate::config::EffectiveKey| {
        let name = k.key.split_once('.').map_or(k.key.as_str(), |(_, n)| n);
        format!("{name} = {}", k.value)
    };
    let width = keys
        .iter()
        .map(|k| line(k).len())
        .filter(|w| *w <= 48)
        .max()
        .unwrap_or(0);
    let mut section = "";
    for k in keys {
        let sec = k.key.split_once('.').map_or("", |(s, _)| s);
        if sec != section {
            out.push_str(&format!("\n[{sec}]\n"));
            section = sec;
        }
        let origin = match &k.origin {
            Origin::Default => "default".to_string(),
            Origin::File => "file".to_string(),
            Origin::Environment(var) => format!("environment {var}"),
        };
        out.push_str(&format!("{:<width$}  # {origin}\n", line(k)));
    }
    out
}
