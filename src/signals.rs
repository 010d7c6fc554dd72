//! Unix signals, turned into one enum in one place and forwarded to the supervisor:
//! SIGTERM/SIGINT stop, SIGHUP reloads, SIGUSR1 dumps status.

use actix::Addr;
use slog::{error, info, warn, Logger};
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::EXIT_CUT_SHORT;
use crate::supervisor::{CutShort, DumpStatus, Reload, Shutdown, Supervisor};

/// What a signal asks of the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT.
    Terminate,
    /// SIGHUP.
    Reload,
    /// SIGUSR1.
    DumpStatus,
}

/// Listens for signals on the current (supervisor's) runtime until the system stops.
/// The handlers are installed before this returns (a signal that arrives before the
/// loop first runs is queued, not fatal), so call it before the supervisor starts
/// anything a signal could be aimed at.
pub fn spawn(supervisor: Addr<Supervisor>, log: Logger) {
    let kinds = [
        SignalKind::terminate(),
        SignalKind::interrupt(),
        SignalKind::hangup(),
        SignalKind::user_defined1(),
    ];
    let mut streams = Vec::new();
    for k in kinds {
        match signal(k) {
            Ok(s) => streams.push(s),
            Err(e) => {
                error!(log, "signal_setup_failed"; "error" => %e);
                return;
            }
        }
    }
    actix_rt::spawn(async move {
        let [term, int, hup, usr1] = &mut streams[..] else {
            return;
        };
        let mut stopping = false;
        loop {
            let sig = tokio::select! {
                _ = term.recv() => Signal::Terminate,
                _ = int.recv() => Signal::Terminate,
                _ = hup.recv() => Signal::Reload,
                _ = usr1.recv() => Signal::DumpStatus,
            };
            info!(log, "signal_received"; "signal" => format!("{sig:?}"));
            match sig {
                Signal::Terminate if !stopping => {
                    stopping = true;
                    supervisor.do_send(Shutdown);
                }
                // A second SIGTERM while flushing: the operator is impatient. Leave now,
                // but through the runtime, so that the log drain is flushed on the way
                // out and the exit code says the shutdown did not finish.
                Signal::Terminate => {
                    warn!(log, "shutdown_cut_short"; "reason" => "a second SIGTERM/SIGINT arrived during the final flush; unsent events stay in the spool",
                          "exit_code" => EXIT_CUT_SHORT);
                    supervisor.do_send(CutShort);
                }
                Signal::Reload => supervisor.do_send(Reload),
                Signal::DumpStatus => supervisor.do_send(DumpStatus { trigger: "sigusr1" }),
            }
        }
    });
}
