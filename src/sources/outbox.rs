//! A source's way to hand events over before its cycle ends: a pass over many databases
//! sends each database's events as it finishes it, and waits before reading the next
//! until its collector's backlog has room, so one large pass never holds (nor drops)
//! more than the backlog's cap. The collector runs on the source's thread; the outbox
//! is a channel to it and a view of its backlog.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::model::Event;

/// What the collector says of its backlog: chunks received so far, and bytes waiting for
/// the spool after them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Chunks the collector has taken into its backlog.
    pub received: u64,
    /// Bytes in its backlog (on their way to the spool included).
    pub bytes: usize,
}

/// The source's end.
#[derive(Debug, Clone)]
pub struct Outbox {
    chunks: mpsc::UnboundedSender<Vec<Event>>,
    backlog: watch::Receiver<Backlog>,
    /// Room enough to send more: the backlog under this many bytes.
    room_below: usize,
    sent: std::rc::Rc<std::cell::Cell<u64>>,
}

/// The collector's end.
#[derive(Debug)]
pub struct Inbox {
    /// Chunks sent by the source.
    pub chunks: mpsc::UnboundedReceiver<Vec<Event>>,
    /// Where the collector tells its backlog.
    pub backlog: watch::Sender<Backlog>,
}

/// A connected pair; the source may send while the collector's backlog is under
/// `room_below` bytes.
pub fn outbox(room_below: usize) -> (Outbox, Inbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (btx, brx) = watch::channel(Backlog::default());
    (
        Outbox {
            chunks: tx,
            backlog: brx,
            room_below,
            sent: Default::default(),
        },
        Inbox {
            chunks: rx,
            backlog: btx,
        },
    )
}

/// The collector is gone (the source's cycle is being dropped with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

impl Outbox {
    /// Hands `events` to the collector, then waits (at most `wait`) until the collector
    /// took them in and its backlog has room for more. `Ok(false)` when the wait ran
    /// out: the events are with the collector, which keeps them within its cap.
    pub async fn send(&mut self, events: Vec<Event>, wait: Duration) -> Result<bool, Closed> {
        if events.is_empty() {
            return Ok(true);
        }
        self.chunks.send(events).map_err(|_| Closed)?;
        let n = self.sent.get() + 1;
        self.sent.set(n);
        let room = self.room_below;
        let ready = self.backlog.wait_for(|b| b.received >= n && b.bytes < room);
        match tokio::time::timeout(wait, ready).await {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(_)) => Err(Closed),
            Err(_) => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EventKind;

    fn ev(i: usize) -> Event {
        Event::new(
            format!("e{i}"),
            EventKind::PgTables,
            chrono::Utc::now(),
            &serde_json::json!({ "i": i }),
        )
        .expect("event")
    }

    #[test]
    fn a_send_waits_until_the_collector_took_it_in_and_has_room() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (mut out, mut inbox) = outbox(100);
            let collector = tokio::spawn(async move {
                let chunk = inbox.chunks.recv().await.expect("chunk");
                // Taken in, but the backlog is full for a while.
                inbox
                    .backlog
                    .send(Backlog {
                        received: 1,
                        bytes: 500,
                    })
                    .expect("send");
                tokio::time::sleep(Duration::from_secs(3)).await;
                inbox
                    .backlog
                    .send(Backlog {
                        received: 1,
                        bytes: 0,
                    })
                    .expect("send");
                (chunk.len(), inbox)
            });
            let start = tokio::time::Instant::now();
            assert_eq!(
                out.send(vec![ev(1), ev(2)], Duration::from_secs(60)).await,
                Ok(true)
            );
            assert_eq!(start.elapsed(), Duration::from_secs(3));
            let (n, inbox) = collector.await.expect("collector");
            assert_eq!(n, 2);
            // A second chunk the collector never takes in: the wait runs out.
            assert_eq!(
                out.send(vec![ev(3)], Duration::from_secs(5)).await,
                Ok(false)
            );
            drop(inbox);
            assert_eq!(
                out.send(vec![ev(4)], Duration::from_secs(5)).await,
                Err(Closed)
            );
        });
    }
}
