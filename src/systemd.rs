//! sd_notify: `READY=1`, `STATUS=…`, `RELOADING=1` with `MONOTONIC_USEC`, `STOPPING=1`
//! and `WATCHDOG=1`. Every call is a no-op when the agent was not started by systemd
//! (no `NOTIFY_SOCKET`), so the same code runs under a terminal and in tests.

use std::time::Duration;

use sd_notify::NotifyState;

/// How often to pet a watchdog of `usec` microseconds: twice per period, as systemd
/// recommends, so one late timer tick does not get the agent killed.
pub fn pet_every(usec: Option<u64>) -> Option<Duration> {
    usec.filter(|u| *u > 0)
        .map(|u| Duration::from_micros(u) / 2)
}

/// The connection to the service manager.
pub struct Systemd {
    /// Half the `WATCHDOG_USEC` systemd asked for; `None` without a watchdog.
    watchdog_every: Option<Duration>,
}

impl Systemd {
    /// Reads `WATCHDOG_USEC` from the environment.
    pub fn from_env() -> Systemd {
        let mut usec = 0u64;
        let enabled = sd_notify::watchdog_enabled(false, &mut usec);
        Systemd {
            watchdog_every: pet_every(enabled.then_some(usec)),
        }
    }

    fn send(&self, states: &[NotifyState]) {
        // Nothing useful can be done if the notification socket fails; systemd notices a
        // missing READY or WATCHDOG on its own.
        let _ = sd_notify::notify(false, states);
    }

    /// Startup (or a reload) is complete.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// A free-form status line (`systemctl status` shows it).
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// A reload started (systemd ≥ 253 wants the monotonic timestamp with it).
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(ts) => self.send(&[NotifyState::Reloading, ts]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    /// Shutdown started.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    /// How often to pet the watchdog (half of `WATCHDOG_USEC`), if systemd wants it.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog_every
    }

    /// Pets the watchdog. Called from a timer on the supervisor's thread, so a wedged
    /// supervisor stops the pets and systemd restarts the agent.
    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_petted_twice_per_period() {
        assert_eq!(pet_every(Some(1_000_000)), Some(Duration::from_millis(500)));
        assert_eq!(pet_every(Some(30_000_000)), Some(Duration::from_secs(15)));
        assert_eq!(pet_every(Some(0)), None);
        assert_eq!(pet_every(None), None);
    }
}
