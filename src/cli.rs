//! Command-line arguments and exit codes (sysexits, as design.md §4 promises).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::logging::LogFormat;

/// Everything went fine.
pub const EXIT_OK: i32 = 0;
/// Any other failure.
pub const EXIT_OTHER: i32 = 1;
/// The command line was wrong (EX_USAGE).
pub const EXIT_USAGE: i32 = 64;
/// A check failed: the database or listener is unavailable (EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: i32 = 69;
/// The configuration is invalid (EX_CONFIG); systemd does not restart on it.
pub const EXIT_CONFIG: i32 = 78;
/// A second SIGTERM/SIGINT cut the shutdown short (128 + SIGTERM, as a shell reports a
/// process ended by the signal): the spool keeps what was not flushed, but the final
/// flush to the listener did not finish.
pub const EXIT_CUT_SHORT: i32 = 143;

/// Where the config file is looked for when `-c` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/postgres-agent/agent.toml";

/// postgres-agent: watches a PostgreSQL server and its host and ships what it sees to a
/// central listener.
#[derive(Debug, Parser)]
#[command(name = "postgres-agent", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file (TOML); POSTGRES_AGENT__SECTION__KEY variables override it.
    #[arg(short = 'c', long = "config", global = true, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Log format: text on a terminal and JSON lines otherwise by default.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    pub log_format: LogFormat,
    /// Log level: error, warning, info, debug or trace.
    #[arg(long, global = true, default_value = "info", value_parser = parse_level)]
    pub log_level: slog::Level,
    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the daemon (the default).
    Run,
    /// Check the config, the database role and the listener; say how to fix what fails.
    Check,
    /// Collect every enabled source once and print the events as JSON lines.
    Once,
    /// Print the status of the running agent (from <state_dir>/status.json).
    Status,
    /// Print the effective configuration: every key, its value (secrets masked) and
    /// where it came from (default, file, environment).
    Config,
    /// Parse PostgreSQL log files offline and print one JSON event per line (the `data`
    /// of the pg_log events the daemon would ship).
    ParseLog(ParseLogArgs),
}

/// Arguments of `parse-log`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ParseLogArgs {
    /// auto (by file name and content), stderr, csvlog or jsonlog; default: the config's logs.format.
    #[arg(long)]
    pub format: Option<String>,
    /// log_line_prefix of stderr files; default: the config's logs.prefix, else '%m [%p] '.
    #[arg(long)]
    pub prefix: Option<String>,
    /// none, parameters or literals: see what would be shipped; default: the config's logs.redact.
    #[arg(long)]
    pub redact: Option<String>,
    /// The log files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

fn parse_level(s: &str) -> Result<slog::Level, String> {
    match s {
        "error" => Ok(slog::Level::Error),
        "warn" | "warning" => Ok(slog::Level::Warning),
        "info" => Ok(slog::Level::Info),
        "debug" => Ok(slog::Level::Debug),
        "trace" => Ok(slog::Level::Trace),
        _ => Err(format!("unknown level {s:?}")),
    }
}
