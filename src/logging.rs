//! Structured logging with slog: human-readable text on a terminal, JSON lines otherwise
//! (journald, files, CI). Messages are stable snake_case event names with the details in
//! key-value fields, never formatted into the text. Records of dependencies that use the
//! `log` crate are routed into the same drain, so nothing is printed past it.

use std::io::IsTerminal;

use slog::{o, Drain, Level, Logger};

/// How log records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Text on a terminal, JSON lines otherwise.
    Auto,
    /// Human-readable text.
    Text,
    /// One JSON object per line.
    Json,
}

/// Keeps the global `log` → slog bridge alive and, when dropped at the end of the
/// process, flushes the async drain: the last records (`shutdown_flushed`,
/// `agent_stopped`) are written before the process exits, even though actors on other
/// threads still hold logger clones.
pub struct LogGuard {
    _scope: slog_scope::GlobalLoggerGuard,
    _flush: slog_async::AsyncGuard,
}

/// Builds the root logger writing to stderr, and routes `log` records into it.
pub fn init(format: LogFormat, level: Level) -> (Logger, LogGuard) {
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let drain: Box<dyn Drain<Ok = (), Err = slog::Never> + Send> = if json {
        let d = slog_json::Json::new(std::io::stderr())
            .add_default_keys()
            .build()
            .fuse();
        Box::new(d)
    } else {
        let decorator = slog_term::TermDecorator::new().stderr().build();
        Box::new(slog_term::FullFormat::new(decorator).build().fuse())
    };
    // An async drain keeps a slow stderr (a stalled journald) from blocking the actors;
    // if its queue overflows it reports how many records it dropped.
    let (drain, flush) = slog_async::Async::new(drain)
        .chan_size(8192)
        .build_with_guard();
    let drain = drain.fuse();
    let drain = drain.filter_level(level).fuse();
    let log = Logger::root(drain, o!());
    let scope = slog_scope::set_global_logger(log.clone());
    // Dependencies (bb8, rustls, actix) log through `log`; forward their records. The
    // call fails only if a `log` logger was installed already, which we never do.
    let _ = slog_stdlog::init_with_level(log::Level::Warn);
    (
        log,
        LogGuard {
            _scope: scope,
            _flush: flush,
        },
    )
}

/// A logger that discards everything (for unit tests and the offline subcommands).
pub fn discard() -> Logger {
    Logger::root(slog::Discard, o!())
}
