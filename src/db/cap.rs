//! The cap on the agent's sockets to one server (`database.pool_max_size`).
//!
//! A slot is taken before a socket is opened and given back when the socket is closed —
//! not when its borrower lets go: a connection dropped while its backend still owes an
//! answer (a backend that is stopped, or still running a statement the agent gave up on)
//! stays open until the answer comes, and keeps its slot until then. The cap is one per
//! server for the whole process (held by its [`Server`](super::Server)): a reload that
//! builds a new pool shares it with the old pool's connections that are still open.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::time::Instant;

/// Open sockets and the cap on them.
#[derive(Debug)]
pub struct Cap {
    state: Mutex<State>,
    /// Woken when a slot is freed, the cap changes or an idle connection comes back.
    changed: Notify,
}

#[derive(Debug)]
struct State {
    open: u32,
    max: u32,
}

/// A taken slot: one open (or opening) socket. Freed on drop.
#[derive(Debug)]
pub struct Slot {
    cap: Arc<Cap>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.cap.lock().open -= 1;
        self.cap.changed.notify_waiters();
    }
}

impl Cap {
    /// A cap of `max` sockets.
    pub fn new(max: u32) -> Arc<Cap> {
        Arc::new(Cap {
            state: Mutex::new(State {
                open: 0,
                max: max.max(1),
            }),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the cap. Sockets over a lowered cap stay open; no new one opens until the
    /// open ones are under it.
    pub fn set_max(&self, max: u32) {
        self.lock().max = max.max(1);
        self.changed.notify_waiters();
    }

    /// The cap.
    pub fn max(&self) -> u32 {
        self.lock().max
    }

    /// Sockets open (or opening) now.
    pub fn open(&self) -> u32 {
        self.lock().open
    }

    /// A slot, if one is free now.
    pub fn try_take(self: &Arc<Cap>) -> Option<Slot> {
        let mut s = self.lock();
        (s.open < s.max).then(|| {
            s.open += 1;
            Slot { cap: self.clone() }
        })
    }

    /// Wakes the waiters to try again (an idle connection came back).
    pub fn wake(&self) {
        self.changed.notify_waiters();
    }

    /// Runs `attempt` now and again each time a slot is freed, the cap changes or an
    /// idle connection comes back, until it gives something or `deadline` passes.
    pub async fn wait_for<T>(
        &self,
        deadline: Instant,
        mut attempt: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the attempt, so a change between the two is not missed.
            changed.as_mut().enable();
            if let Some(v) = attempt() {
                return Some(v);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return attempt();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn slots_are_a_cap_until_given_back_and_a_lowered_cap_waits_for_the_open_ones() {
        let cap = Cap::new(2);
        let a = cap.try_take().expect("first");
        let b = cap.try_take().expect("second");
        assert!(cap.try_take().is_none());
        assert_eq!(cap.open(), 2);
        drop(a);
        let c = cap.try_take().expect("freed");
        cap.set_max(1);
        drop(c);
        assert!(cap.try_take().is_none(), "one still open, the cap is one");
        drop(b);
        assert!(cap.try_take().is_some());
        assert_eq!(cap.open(), 0);
    }

    #[test]
    fn a_waiter_is_woken_by_a_freed_slot_and_gives_up_at_its_deadline() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        rt.block_on(async {
            let cap = Cap::new(1);
            let held = cap.try_take().expect("slot");
            let deadline = Instant::now() + Duration::from_secs(5);
            let freer = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                drop(held);
            });
            let got = cap.wait_for(deadline, || cap.try_take()).await;
            assert!(got.is_some());
            assert_eq!(Instant::now() + Duration::from_secs(4), deadline);
            freer.await.expect("freer");
            let deadline = Instant::now() + Duration::from_secs(2);
            assert!(cap.wait_for(deadline, || cap.try_take()).await.is_none());
            assert_eq!(Instant::now(), deadline);
        });
    }
}
