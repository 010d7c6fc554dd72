//! `once`: one collection of every enabled source, printed as JSON lines on stdout.
//! Nothing is spooled or shipped, so it is safe to run beside the daemon.

use std::io::Write;
use std::rc::Rc;

use crate::cli::{Cli, EXIT_OK, EXIT_UNAVAILABLE};
use crate::config::Config;
use crate::db::cycle_limit;
use crate::db::Db;
use crate::logging;
use crate::shipper::{event_json, Origin};
use crate::sources;

/// Runs every enabled source once; exit 69 if any failed.
pub fn once(cli: &Cli, config: Config) -> i32 {
    let (log, _guard) = logging::init(cli.log_format, cli.log_level);
    let system = actix_rt::System::new();
    let failed = system.block_on(async move {
        let mut failed = 0;
        // Each server as its children see it, one after the other.
        for server in &config.servers {
            let view = config.view(server);
            match once_for(&view, &log).await {
                Ok(n) => failed += n,
                Err(code) => return Err(code),
            }
        }
        if config.servers.iter().any(|s| s.collection.logs) {
            eprintln!(
                "postgres-agent: pg_log: the log is followed by the daemon, not sampled by once; `postgres-agent parse-log FILE` shows how a log file is parsed"
            );
        }
        Ok(failed)
    });
    let failed = match failed {
        Ok(n) => n,
        Err(code) => return code,
    };
    if failed == 0 {
        EXIT_OK
    } else {
        EXIT_UNAVAILABLE
    }
}

/// One server's sources once each; the number that failed (an exit code when none
/// could run).
async fn once_for(config: &Config, log: &slog::Logger) -> Result<usize, i32> {
    let server = match crate::db::Server::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot start the connection thread: {e}");
            return Err(crate::cli::EXIT_OTHER);
        }
    };
    let origin = Origin::of(config, server.facts());
    let mut failed = 0;
    let stdout = std::io::stdout();
    // Every enabled source, then each `[[custom]]` query (named as its child is).
    let mut all: Vec<(String, Box<dyn sources::Source>)> = sources::enabled(config)
        .into_iter()
        .filter_map(|(kind, _)| {
            Some((
                kind.as_str().to_string(),
                sources::make(kind, config, sources::Mode::Once)?,
            ))
        })
        .collect();
    for q in &config.custom {
        let source: Box<dyn sources::Source> =
            Box::new(sources::custom::CustomSource::new(config, q, false));
        all.push((format!("{}{}", crate::model::CUSTOM_CHILD, q.name), source));
    }
    for (name, source) in all {
        let db = Rc::new(Db::new(&config.database, &server, 1, log));
        let limit = source.cycle_limit(cycle_limit(&config.database));
        let res = match tokio::time::timeout(limit, source.collect(db)).await {
            Ok(r) => r,
            Err(_) => Err(sources::CycleError::Timeout(limit)),
        };
        match res {
            Ok(events) => {
                let mut out = stdout.lock();
                for e in &events {
                    let _ = writeln!(out, "{}", event_json(&origin, e));
                }
            }
            Err(e) => {
                failed += 1;
                match &config.servers[0].name {
                    Some(server) => eprintln!("postgres-agent: {server}/{name}: {e}"),
                    None => eprintln!("postgres-agent: {name}: {e}"),
                }
            }
        }
    }
    Ok(failed)
}
