//! The cap on the agent's sockets to one server (`database.pool_max_size`).
//!
//! A slot is taken before a socket is opened and given back when the socket is closed —
//! not when its borrower lets go: a connection dropped while its backend still owes an
//! answer (a backend that is stopped, or still running a statement the agent gave up on)
//! stays open until the answer comes, and keeps its slot until then. The cap is one per
//! server for the whole process (held by its [`Server`](super::Server)): a reload that
//! builds a new pool shares it with the old pool's connections that are still open.
//! Every server's cap sits under the process-wide one (`[agent] max_connections`): a
//! socket takes a slot of both.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::time::Instant;

/// Open sockets and the cap on them.
#[derive(Debug)]
pub struct Cap {
    state: Mutex<State>,
    /// Woken when a slot is freed, the cap changes or an idle connection comes back.
    changed: Notify,
    /// The process-wide cap every server's sockets count against too (`[agent]
    /// max_connections`), if any.
    parent: Option<Arc<Cap>>,
    /// The pools whose idle connections hold slots of this cap (on the process-wide
    /// cap: every server's), asked to close one when a waiter finds it full.
    holders: Mutex<Vec<std::sync::Weak<dyn Reclaim>>>,
}

/// A pool that keeps idle connections, each holding a slot.
pub trait Reclaim: Send + Sync {
    /// Closes one idle connection (its slot is freed once the server closed its end);
    /// false when it has none.
    fn close_idle(&self) -> bool;
}

#[derive(Debug)]
struct State {
    open: u32,
    max: u32,
}

/// A taken slot: one open (or opening) socket. Freed on drop (and its slot under the
/// process-wide cap with it).
#[derive(Debug)]
pub struct Slot {
    cap: Arc<Cap>,
    _parent: Option<Box<Slot>>,
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
        Cap::make(max, None)
    }

    /// A cap of `max` sockets whose every socket also takes a slot of `parent`.
    pub fn under(max: u32, parent: Arc<Cap>) -> Arc<Cap> {
        Cap::make(max, Some(parent))
    }

    fn make(max: u32, parent: Option<Arc<Cap>>) -> Arc<Cap> {
        Arc::new(Cap {
            state: Mutex::new(State {
                open: 0,
                max: max.max(1),
            }),
            changed: Notify::new(),
            parent,
            holders: Mutex::new(Vec::new()),
        })
    }

    /// Registers a pool that holds idle connections under this cap and the one above.
    pub fn register(&self, pool: std::sync::Weak<dyn Reclaim>) {
        if let Some(p) = &self.parent {
            let mut h = p.holders.lock().unwrap_or_else(|e| e.into_inner());
            h.retain(|w| w.strong_count() > 0);
            h.push(pool);
        }
    }

    /// When the process-wide cap is what keeps a slot from this one's waiters, asks
    /// another server's pool to close an idle connection: idle sockets of one server
    /// never starve another's sources.
    pub fn reclaim(&self) {
        let Some(p) = &self.parent else {
            return;
        };
        // One lock at a time (`try_take` holds this cap's, then the parent's).
        let own_full = {
            let s = self.lock();
            s.open >= s.max
        };
        let all_full = {
            let s = p.lock();
            s.open >= s.max
        };
        if own_full || !all_full {
            return;
        }
        let holders: Vec<Arc<dyn Reclaim>> = p
            .holders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .collect();
        for h in holders {
            if h.close_idle() {
                return;
            }
        }
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
        if s.open >= s.max {
            return None;
        }
        // Locks are taken in one order: this cap's, then the parent's.
        let parent = match &self.parent {
            Some(p) => Some(Box::new(p.try_take()?)),
            None => None,
        };
        s.open += 1;
        Some(Slot {
            cap: self.clone(),
            _parent: parent,
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
            // A slot another server frees under the process-wide cap counts too.
            let freed = self.parent.as_ref().map(|p| p.changed.notified());
            let mut freed = std::pin::pin!(freed);
            // Registered before the attempt, so a change between the two is not missed.
            changed.as_mut().enable();
            if let Some(f) = freed.as_mut().as_pin_mut() {
                f.enable();
            }
            if let Some(v) = attempt() {
                return Some(v);
            }
            let either = async {
                match freed.as_mut().as_pin_mut() {
                    Some(f) => tokio::select! { _ = changed => {}, _ = f => {} },
                    None => changed.await,
                }
            };
            if tokio::time::timeout_at(deadline, either).await.is_err() {
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
    fn every_servers_slot_counts_under_the_process_wide_cap() {
        let all = Cap::new(3);
        let a = Cap::under(2, all.clone());
        let b = Cap::under(2, all.clone());
        let a1 = a.try_take().expect("a1");
        let _a2 = a.try_take().expect("a2");
        let b1 = b.try_take().expect("b1");
        assert!(a.try_take().is_none(), "a's own cap");
        assert!(b.try_take().is_none(), "the process's cap: 3 open");
        assert_eq!((all.open(), b.open()), (3, 1));
        drop(a1);
        assert_eq!(all.open(), 2);
        let _b2 = b.try_take().expect("a slot a gave back");
        drop(b1);
        assert_eq!((all.open(), b.open()), (2, 1));
    }

    #[derive(Default)]
    struct Pool {
        idle: Mutex<Vec<Slot>>,
    }

    impl Reclaim for Pool {
        fn close_idle(&self) -> bool {
            self.idle.lock().expect("idle").pop().is_some()
        }
    }

    #[test]
    fn a_server_waiting_on_the_process_wide_cap_gets_another_servers_idle_slot() {
        let all = Cap::new(2);
        let a = Cap::under(2, all.clone());
        let b = Cap::under(2, all.clone());
        let pool = Arc::new(Pool::default());
        let holder: Arc<dyn Reclaim> = pool.clone();
        a.register(Arc::downgrade(&holder));
        pool.idle
            .lock()
            .expect("idle")
            .extend([a.try_take().expect("a1"), a.try_take().expect("a2")]);
        assert!(b.try_take().is_none());
        // b's own cap has room: the process-wide one is full, so a's idle one closes.
        b.reclaim();
        assert_eq!(pool.idle.lock().expect("idle").len(), 1);
        let b1 = b.try_take().expect("the slot a gave up");
        drop(b1);
        // Room under the process-wide cap: nothing of a's is closed.
        b.reclaim();
        assert_eq!(pool.idle.lock().expect("idle").len(), 1);
        // A server at its own cap: its waiters wait for its own slots, not a's.
        let c = Cap::under(1, all.clone());
        let _c1 = c.try_take().expect("c1");
        c.reclaim();
        assert_eq!(pool.idle.lock().expect("idle").len(), 1);
    }

    #[test]
    fn a_waiter_is_woken_by_a_slot_another_server_frees() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        rt.block_on(async {
            let all = Cap::new(1);
            let a = Cap::under(1, all.clone());
            let b = Cap::under(1, all.clone());
            let held = a.try_take().expect("slot");
            let deadline = Instant::now() + Duration::from_secs(5);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                drop(held);
            });
            assert!(b.wait_for(deadline, || b.try_take()).await.is_some());
            assert_eq!(Instant::now() + Duration::from_secs(4), deadline);
        });
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
