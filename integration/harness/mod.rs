//! The integration-test harness: a throwaway PostgreSQL cluster per test, a recording
//! HTTP listener on 127.0.0.1:0, and the real agent binary driven with real signals.

pub mod agent;
pub mod listener;
pub mod otlp;
pub mod pg;
pub mod prometheus;

use std::time::{Duration, Instant};

/// Polls `f` every 50 ms until it returns `Some` or `timeout` passes; panics with `what`
/// on timeout. Tests wait with this, never with a bare sleep.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// True when the tests run as root (CI does): PostgreSQL must then run as `nobody`.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A fresh temporary directory that an unprivileged server process may write into.
pub fn shared_tempdir(prefix: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create tempdir");
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777))
        .expect("chmod tempdir");
    d
}
