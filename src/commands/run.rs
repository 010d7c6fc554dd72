//! `run`: the daemon.

use actix::Actor;
use slog::{crit, error, warn, Logger};

use crate::cli::{Cli, EXIT_OTHER};
use crate::config::Config;
use crate::supervisor::Supervisor;
use crate::{logging, signals, state_dir};

/// Runs the daemon until SIGTERM/SIGINT; returns the exit code.
pub fn run(cli: &Cli, config: Config) -> i32 {
    let (log, _guard) = logging::init(cli.log_format, cli.log_level);
    install_panic_hook(log.clone());
    // Before anything is created: the spool and the status dump are private.
    state_dir::private_umask();
    match state_dir::prepare(&config.agent.state_dir) {
        Ok(t) if t.dir || !t.files.is_empty() => {
            warn!(log, "state_dir_permissions_tightened"; "dir" => %config.agent.state_dir.display(),
                  "dir_was_open" => t.dir, "files" => t.files.join(","));
        }
        Ok(_) => {}
        Err(e) => {
            crit!(log, "state_dir_unusable"; "dir" => %config.agent.state_dir.display(), "error" => %e);
            return EXIT_OTHER;
        }
    }
    let system = actix_rt::System::new();
    let path = cli.config.clone();
    let sup_log = log.clone();
    system.block_on(async move {
        match Supervisor::new(path, config, sup_log.clone()) {
            Ok(s) => signals::spawn(s.start(), sup_log),
            Err(e) => {
                crit!(sup_log, "runtime_failed"; "error" => %format!("cannot start the connection thread: {e}"));
                actix_rt::System::current().stop_with_code(EXIT_OTHER);
            }
        }
    });
    match system.run_with_code() {
        Ok(code) => code,
        Err(e) => {
            error!(log, "runtime_failed"; "error" => %e);
            EXIT_OTHER
        }
    }
}

/// Panics are logged as structured events (with the thread, which names the child) and
/// not just printed; the supervisor then restarts the child that panicked.
fn install_panic_hook(log: Logger) {
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let location = info.location().map(|l| l.to_string()).unwrap_or_default();
        error!(log, "panic"; "thread" => thread.name().unwrap_or("unnamed"),
               "message" => message, "location" => location);
    }));
}
