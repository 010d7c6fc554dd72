//! `parse-log`: the daemon's parser run over files, offline. Prints the `data` of every
//! event as a JSON line on stdout and a summary per file (events, unparsed lines,
//! throughput) on stderr, so a user can check the parser on their own logs (and, with
//! `--redact`, see what would be shipped) before deploying.

use std::io::{BufWriter, Write};
use std::sync::mpsc::Receiver;
use std::time::Instant;

use crate::cli::{Cli, ParseLogArgs, EXIT_CONFIG, EXIT_OK, EXIT_OTHER, EXIT_USAGE};
use crate::config::Config;
use crate::logs::record::Record;
use crate::logs::tail::read_file;
use crate::logs::{Format, LogParser, Shaper, DEFAULT_PREFIX};
use crate::sql::redact::Redact;

/// Parses every file; exit 1 if one could not be read.
pub fn parse_log(cli: &Cli, args: &ParseLogArgs) -> i32 {
    // The config supplies defaults (prefix, redaction, correlation pattern) when there
    // is one; parse-log works without it.
    let config = if cli.config.exists() {
        match Config::load(&cli.config) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("postgres-agent: configuration error: {e}");
                return EXIT_CONFIG;
            }
        }
    } else {
        None
    };
    let logs = config.as_ref().map(|c| c.logs.clone());
    // A flag wins over the config; the config's values were validated when it loaded.
    let format = match args.format.as_deref().map(Format::parse) {
        Some(Ok(f)) => f,
        Some(Err(e)) => {
            eprintln!("postgres-agent: --format: {e}");
            return EXIT_USAGE;
        }
        None => logs.as_ref().and_then(|l| l.format),
    };
    let redact = match args.redact.as_deref() {
        Some(r) => match Redact::parse(r) {
            Some(r) => r,
            None => {
                eprintln!(
                    "postgres-agent: --redact: unknown value {r:?} (none, parameters, literals)"
                );
                return EXIT_USAGE;
            }
        },
        None => logs.as_ref().map_or(Redact::None, |l| l.redact),
    };
    let prefix = args
        .prefix
        .clone()
        .or_else(|| logs.map(|l| l.prefix).filter(|p| !p.is_empty()))
        .unwrap_or_else(|| DEFAULT_PREFIX.to_string());
    let pattern = config.map_or_else(crate::config::default_pattern, |c| {
        c.correlation.application_name_pattern
    });
    let shaper = Shaper::new(pattern, redact);
    let mut code = EXIT_OK;
    for file in &args.files {
        let f = format.unwrap_or_else(|| Format::sniff(file, &crate::logs::head(file)));
        let mut parser = LogParser::new(f, &prefix);
        let name = file.display().to_string();
        let started = Instant::now();
        // Two threads, like a pipe: this one reads and parses, the writer shapes each
        // message into its JSON line and writes it. Batches move between them through a
        // short queue (memory stays at a few reads' worth); order is kept.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Record>>(QUEUED_READS);
        let (done_tx, done) = std::sync::mpsc::channel::<Vec<Record>>();
        let (res, (events, unparsed, write_err)) = std::thread::scope(|s| {
            let writer = s.spawn(|| write_lines(rx, done_tx, &shaper, &name, f));
            // The writer hands each batch back once written: its records are freed
            // on this thread, which allocated them (glibc frees another thread's
            // memory under a lock both then wait on), and its vector is filled again.
            let res = read_file(file, &mut parser, |batch| {
                tx.send(batch).ok()?;
                Some(done.try_recv().unwrap_or_default())
            });
            drop(tx);
            (
                res,
                writer
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p)),
            )
        });
        if let Some(e) = write_err {
            // stdout closed (e.g. `| head`): stop quietly.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return code;
            }
            eprintln!("postgres-agent: writing output: {e}");
            return EXIT_OTHER;
        }
        match res {
            Ok(_) => {
                let secs = started.elapsed().as_secs_f64();
                let bytes = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
                eprintln!(
                    "postgres-agent: {name}: {} format, {events} events, {unparsed} unparsed lines, {:.1} MB in {:.3} s ({:.0} MB/s)",
                    f.as_str(),
                    bytes as f64 / 1e6,
                    secs,
                    bytes as f64 / 1e6 / secs.max(1e-9)
                );
                if f == Format::Stderr && unparsed > 0 && unparsed * 2 > events {
                    eprintln!(
                        "postgres-agent: {name}: most lines do not fit the prefix {prefix:?}; pass the server's log_line_prefix with --prefix"
                    );
                }
            }
            Err(e) => {
                eprintln!("postgres-agent: {name}: {e}");
                code = EXIT_OTHER;
            }
        }
    }
    code
}

/// Reads a file ahead of the writer by at most this many reads (2,000 messages each).
const QUEUED_READS: usize = 2;

/// The writer's side of [`parse_log`]: each message's `data` as a JSON line on stdout.
/// Returns the messages written, how many were lines that fit no format, and the write
/// error that stopped it (the reader then stops too: the queue is gone).
fn write_lines(
    rx: Receiver<Vec<Record>>,
    done: std::sync::mpsc::Sender<Vec<Record>>,
    shaper: &Shaper,
    name: &str,
    format: Format,
) -> (u64, u64, Option<std::io::Error>) {
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    let (mut events, mut unparsed) = (0u64, 0u64);
    let mut line = Vec::with_capacity(4096);
    for batch in rx {
        for r in &batch {
            events += 1;
            unparsed += u64::from(r.raw.is_some());
            line.clear();
            shaper.data(r, name, format).write_json(&mut line);
            line.push(b'\n');
            if let Err(e) = out.write_all(&line) {
                return (events, unparsed, Some(e));
            }
        }
        let _ = done.send(batch);
    }
    match out.flush() {
        Ok(()) => (events, unparsed, None),
        Err(e) => (events, unparsed, Some(e)),
    }
}
