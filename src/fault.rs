//! Test-only fault injection, off unless `POSTGRES_AGENT_FAULT_DIR` is set, and absent
//! from release builds (the binary that ships): there the variable is never read, so no
//! environment can make the agent panic, hang or kill itself.
//!
//! The integration tests prove that the supervisor restarts a child that panicked or hung
//! by making the real binary do exactly that: a test writes `panic` or `hang` into
//! `$POSTGRES_AGENT_FAULT_DIR/<child>`, and the child takes (removes) the file at its next
//! cycle and obeys. Without the variable this costs one environment lookup per cycle.

use std::path::PathBuf;

/// The environment variable naming the fault directory.
pub const FAULT_DIR_ENV: &str = "POSTGRES_AGENT_FAULT_DIR";

/// A fault a test asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Panic inside the actor's handler.
    Panic,
    /// Block the child's thread (not just its future) for an hour.
    Hang,
    /// Keep answering pings but never finish another cycle (a future that is stuck).
    Stall,
    /// Stop at every start (a child that cannot work); left in place, not taken.
    Stop,
    /// SIGKILL the whole process right here (a crash at the worst moment, e.g. after
    /// the listener's 2xx and before the spool deleted the batch).
    Kill,
}

/// Takes the fault requested for `child`, if any (the request is removed first, so the
/// restarted child does not obey it again).
pub fn take(child: &str) -> Option<Fault> {
    let dir = fault_dir()?;
    let path = PathBuf::from(dir).join(child);
    let text = std::fs::read_to_string(&path).ok()?;
    std::fs::remove_file(&path).ok()?;
    match text.trim() {
        "panic" => Some(Fault::Panic),
        "hang" => Some(Fault::Hang),
        "stall" => Some(Fault::Stall),
        "kill" => Some(Fault::Kill),
        "stop" => Some(Fault::Stop),
        _ => None,
    }
}

/// A collector's in-memory backlog cap: `default`, unless a test wrote a smaller number
/// of bytes into `$POSTGRES_AGENT_FAULT_DIR/backlog_bytes` (debug builds only), so that
/// a test can fill it with a few hundred tables.
pub fn backlog_cap(default: usize) -> usize {
    fault_dir()
        .and_then(|d| std::fs::read_to_string(PathBuf::from(d).join("backlog_bytes")).ok())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(default)
}

/// The fault directory: only in debug builds (what the tests run).
fn fault_dir() -> Option<std::ffi::OsString> {
    if cfg!(debug_assertions) {
        std::env::var_os(FAULT_DIR_ENV)
    } else {
        None
    }
}

/// True while `$POSTGRES_AGENT_FAULT_DIR/<what>` says `fail`: the operation named
/// `what` fails with an error each time it is tried, until the test removes the file.
pub fn failing(what: &str) -> bool {
    let Some(dir) = fault_dir() else {
        return false;
    };
    std::fs::read_to_string(PathBuf::from(dir).join(what)).is_ok_and(|t| t.trim() == "fail")
}

/// The fault requested for `child`, left in place so that it repeats (for `stop`).
pub fn peek(child: &str) -> Option<Fault> {
    let dir = fault_dir()?;
    let text = std::fs::read_to_string(PathBuf::from(dir).join(child)).ok()?;
    (text.trim() == "stop").then_some(Fault::Stop)
}

/// Carries out a fault that needs no help from the child (panic, hang); a stall is up
/// to the child, which stops finishing cycles.
pub fn inject(child: &str, fault: Fault) {
    match fault {
        Fault::Panic => panic!("fault injection: {child} was asked to panic"),
        Fault::Hang => std::thread::sleep(std::time::Duration::from_secs(3600)),
        Fault::Stall | Fault::Stop => {}
        Fault::Kill => {
            // SAFETY: kill and getpid have no memory-safety preconditions.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
}
