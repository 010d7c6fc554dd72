//! The one way events reach the spool from the sources (the collectors and the log
//! reader): [`Handoff`] keeps what the spool has not taken yet — events, the state to
//! store with them, and a report of what had to be dropped — and [`hand_over`] sends it
//! as one `Enqueue`, retrying every second while the spool is away or failing. Nothing
//! is lost between the two: a failed hand-over puts the events back in front of newer
//! ones, and a loss report travels with the next hand-over that succeeds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use slog::{error, warn, Logger};

use super::SpoolActor;
use crate::catalogue::AgentEvent;
use crate::model::{Checkpoint, Enqueue, Event, Route, SpoolError};

/// Bytes of events ([`Event::bytes`]) kept in memory per source while the spool does
/// not take them; beyond this the oldest are dropped and counted (the spool is down for
/// long, which status reports loudly). Bytes, not events: 50,000 events (the count
/// before) of activity with 4 KB statements were 200 MB.
pub const MAX_PENDING_BYTES: usize = 16 << 20;

/// Wait before trying the spool again.
pub const RETRY: Duration = Duration::from_secs(1);

/// Events dropped from a backlog and not yet reported: the report travels with the next
/// hand-over to the spool, so the loss is shipped, not just logged.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DropReport {
    /// Events dropped since the last report that reached the spool.
    pub dropped: u64,
    /// Oldest collection time among them.
    pub oldest: Option<DateTime<Utc>>,
    /// Newest collection time among them.
    pub newest: Option<DateTime<Utc>>,
    /// Why (the last drop's cause).
    pub reason: String,
}

/// Why a backlog dropped events: the spool was away, or it was taking events and one
/// collection still made more than the backlog holds.
pub fn drop_reason(spool_took_recently: bool, cap: usize) -> String {
    let cap = if cap >= 1 << 20 {
        format!("{} MiB", cap >> 20)
    } else {
        format!("{} KiB", cap >> 10)
    };
    if spool_took_recently {
        format!(
            "one collection made more events than the source's in-memory backlog holds ({cap}) while the spool was taking them"
        )
    } else {
        format!(
            "the spool did not take events for long and the source's in-memory backlog ({cap}) was full"
        )
    }
}

/// The spool failing hand-overs (or away) for this long is the cause of a full backlog;
/// a shorter hiccup is not.
const SPOOL_AWAY: Duration = Duration::from_secs(5);

impl DropReport {
    /// Counts events about to be dropped.
    pub fn add(&mut self, dropped: &[Event]) {
        for e in dropped {
            self.dropped += 1;
            self.oldest = Some(
                self.oldest
                    .map_or(e.collected_at, |o| o.min(e.collected_at)),
            );
            self.newest = Some(
                self.newest
                    .map_or(e.collected_at, |n| n.max(e.collected_at)),
            );
        }
    }

    /// The `agent` event reporting the loss of `source`'s events, if any were dropped.
    pub fn event(&self, source: &str, host: &str) -> Option<Event> {
        if self.dropped == 0 {
            return None;
        }
        AgentEvent::EventsDropped {
            source: source.to_string(),
            dropped: self.dropped,
            oldest_collected_at: self.oldest,
            newest_collected_at: self.newest,
            reason: self.reason.clone(),
        }
        .event(host, Utc::now())
        .ok()
    }
}

/// What the spool made of a hand-over.
#[derive(Debug, Clone, PartialEq)]
pub enum Handed {
    /// These many events (of the source; a loss report not counted) are in the spool,
    /// which then held this backlog (bytes, see [`Backlog`](crate::model::Backlog)).
    Delivered(usize, u64),
    /// Nothing was taken; the events are kept and offered again.
    Failed(SpoolError),
}

/// What a hand-over took out of the backlog, kept until the spool answers.
#[derive(Debug)]
struct InFlight {
    /// The message's events (shared with it): the loss report first when `report`.
    events: Arc<Vec<Event>>,
    report: bool,
    checkpoint: Option<Checkpoint>,
    /// Dropped events the loss report in this hand-over accounts for.
    reported: u64,
}

impl InFlight {
    /// The source's events in it (not the loss report).
    fn len(&self) -> usize {
        self.events.len() - usize::from(self.report)
    }
}

/// A source's events on their way to the spool.
pub struct Handoff {
    /// Where they go.
    pub(crate) spool: Route<SpoolActor>,
    log: Logger,
    source: &'static str,
    host: String,
    cap: usize,
    pending: Vec<Event>,
    /// [`Event::bytes`] of `pending`.
    pending_bytes: usize,
    checkpoint: Option<Checkpoint>,
    drops: DropReport,
    dropped_total: u64,
    in_flight: Option<InFlight>,
    /// The vector of the last hand-over the spool stored, emptied, when the spool kept
    /// no share of it and the source fills vectors again ([`Handoff::recycling`]).
    spare: Vec<Event>,
    recycle: bool,
    /// A retry is scheduled: never more than one, however often the source hands over
    /// while the spool is away.
    retry_pending: bool,
    /// Since when the spool's answers are failures (or its route is empty): tells a full
    /// backlog's cause. `None` while it takes events.
    failing_since: Option<Instant>,
    /// Ids of dropped events not yet told to the source, when it asked for them
    /// ([`Handoff::telling_losses`]).
    lost: Option<Vec<String>>,
    /// The server the events are about (see [`Handoff::for_server`]).
    server: Option<std::sync::Arc<str>>,
}

impl Handoff {
    /// An empty hand-off of `source`'s events on `host` to `spool`, keeping at most
    /// `cap` bytes of them; `log` says when the spool fails or the cap drops events.
    pub fn new(
        spool: Route<SpoolActor>,
        log: Logger,
        source: &'static str,
        host: &str,
        cap: usize,
    ) -> Handoff {
        Handoff {
            spool,
            log,
            source,
            host: host.to_string(),
            cap,
            pending: Vec::new(),
            pending_bytes: 0,
            checkpoint: None,
            drops: DropReport::default(),
            dropped_total: 0,
            in_flight: None,
            spare: Vec::new(),
            recycle: false,
            retry_pending: false,
            failing_since: None,
            lost: None,
            server: None,
        }
    }

    /// Names the server of every event handed over that names none.
    pub fn for_server(mut self, name: &str) -> Handoff {
        self.server = Some(std::sync::Arc::from(name));
        self
    }

    /// Keeps the ids of the events the cap drops for [`Handoff::take_lost`]: for a source
    /// that remembers what it shipped (a table's signature) and must forget what never
    /// reached the spool.
    pub fn telling_losses(mut self) -> Handoff {
        self.lost = Some(Vec::new());
        self
    }

    /// Ids of the events dropped since the last call (empty unless
    /// [`Handoff::telling_losses`]).
    pub fn take_lost(&mut self) -> Vec<String> {
        self.lost.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Bytes waiting for the spool, on their way included.
    pub fn backlog_bytes(&self) -> usize {
        self.pending_bytes
            + self
                .in_flight
                .as_ref()
                .map_or(0, |f| f.events.iter().map(Event::bytes).sum())
    }

    /// The cap on [`Handoff::backlog_bytes`] (before the oldest are dropped).
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Queues events (and the state that is true once they are stored, replacing an
    /// older one); returns how many old events had to be dropped for the cap.
    pub fn keep(&mut self, mut events: Vec<Event>, checkpoint: Option<Checkpoint>) -> usize {
        if let Some(server) = &self.server {
            for e in events.iter_mut().filter(|e| e.server.is_none()) {
                e.server = Some(server.clone());
            }
        }
        if let Some(newer) = checkpoint {
            self.checkpoint = Some(match self.checkpoint.take() {
                Some(older) => newer.after(older),
                None => newer,
            });
        }
        self.pending_bytes += events.iter().map(Event::bytes).sum::<usize>();
        if self.pending.is_empty() && events.capacity() <= events.len() + events.len() / 4 {
            // Moved whole: no copy of the batch into a new vector. (A vector with much
            // room to spare is copied instead: the spool may keep it until shipped.)
            self.pending = events;
        } else {
            self.pending.extend(events);
        }
        let mut over = 0;
        // The newest event always stays, even one larger than the cap.
        while self.pending_bytes > self.cap && over + 1 < self.pending.len() {
            self.pending_bytes -= self.pending[over].bytes();
            over += 1;
        }
        if over > 0 {
            self.drops.add(&self.pending[..over]);
            let away = self
                .failing_since
                .is_some_and(|t| t.elapsed() >= SPOOL_AWAY);
            self.drops.reason = drop_reason(!away, self.cap);
            if let Some(lost) = self.lost.as_mut() {
                lost.extend(self.pending[..over].iter().map(|e| e.id.clone()));
            }
            self.pending.drain(..over);
            self.dropped_total += over as u64;
        }
        over
    }

    /// Keeps the vector of each stored hand-over for [`Handoff::spare`]: for a source
    /// that fills one per batch (the log reader: 2,000 events, about 110 KB of vector).
    pub fn recycling(mut self) -> Handoff {
        self.recycle = true;
        self
    }

    /// The emptied vector of the last hand-over the spool stored and kept no share of,
    /// when [`Handoff::recycling`]: the source fills it again. Empty otherwise.
    pub fn spare(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.spare)
    }

    /// True when a retry should be scheduled now (none is pending); it then counts as
    /// pending until [`Handoff::retrying`].
    pub fn want_retry(&mut self) -> bool {
        !std::mem::replace(&mut self.retry_pending, true)
    }

    /// The scheduled retry runs.
    pub fn retrying(&mut self) {
        self.retry_pending = false;
    }

    /// Events dropped for the cap since start.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    /// Events waiting (on their way included).
    pub fn waiting(&self) -> usize {
        self.pending.len() + self.in_flight.as_ref().map_or(0, InFlight::len)
    }

    /// True when nothing waits and nothing is on its way.
    pub fn is_empty(&self) -> bool {
        self.waiting() == 0 && self.checkpoint.is_none() && self.in_flight.is_none()
    }

    /// The next message for the spool: the loss report first, then the events and the
    /// checkpoint. `None` when there is nothing to send or a hand-over is on its way.
    pub fn take(&mut self) -> Option<Enqueue> {
        if self.in_flight.is_some() || (self.pending.is_empty() && self.checkpoint.is_none()) {
            return None;
        }
        let mut events = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let checkpoint = self.checkpoint.take();
        let report = self.drops.event(self.source, &self.host);
        let with_report = report.is_some();
        if let Some(r) = report {
            events.insert(0, r);
        }
        let events = Arc::new(events);
        let msg = Enqueue {
            events: events.clone(),
            checkpoint: checkpoint.clone(),
        };
        self.in_flight = Some(InFlight {
            events,
            report: with_report,
            checkpoint,
            reported: self.drops.dropped,
        });
        Some(msg)
    }

    /// The spool's answer to the last [`Handoff::take`].
    pub fn taken(&mut self, result: Result<u64, SpoolError>) -> Handed {
        let Some(f) = self.in_flight.take() else {
            // An answer to nothing on its way: nothing of the source's was taken.
            return match result {
                Ok(backlog) => Handed::Delivered(0, backlog),
                Err(e) => Handed::Failed(e),
            };
        };
        match result {
            Ok(backlog) => {
                self.failing_since = None;
                // Reported: count only what was dropped since.
                self.drops.dropped -= f.reported.min(self.drops.dropped);
                if self.drops.dropped == 0 {
                    self.drops = DropReport::default();
                }
                let n = f.len();
                // The spool dropped its share of the message by now, unless it keeps
                // the events until they are shipped. Freed here, on the source's
                // thread, which made them.
                if let Ok(mut events) = Arc::try_unwrap(f.events) {
                    events.clear();
                    if self.recycle {
                        self.spare = events;
                    }
                }
                Handed::Delivered(n, backlog)
            }
            Err(e) => {
                self.failing_since.get_or_insert_with(Instant::now);
                // Back in front of what came meanwhile; the newer checkpoint wins
                // (taking in the row changes of the one that failed).
                // The spool dropped its share of the message by now: no copy.
                let mut back = Arc::try_unwrap(f.events).unwrap_or_else(|shared| (*shared).clone());
                if f.report {
                    // Made again, with any later losses, by the next hand-over.
                    back.remove(0);
                }
                let newer = std::mem::replace(&mut self.pending, back);
                // What comes back counts against the cap (it was not counted after the
                // hand-over took it, so a failing spool let the backlog grow past it).
                self.pending_bytes = self.pending.iter().map(Event::bytes).sum();
                let checkpoint = match (self.checkpoint.take(), f.checkpoint) {
                    (Some(newer), Some(failed)) => Some(newer.after(failed)),
                    (newer, failed) => newer.or(failed),
                };
                self.keep(newer, checkpoint);
                Handed::Failed(e)
            }
        }
    }
}

/// An actor that hands events to the spool through a [`Handoff`].
pub trait HandsOver: Actor<Context = Context<Self>> {
    /// Its hand-off.
    fn handoff(&mut self) -> &mut Handoff;
    /// Told after each answer of the spool (after a failure, a retry is already
    /// scheduled).
    fn handed(&mut self, outcome: &Handed, ctx: &mut Context<Self>);
}

/// Sends the actor's waiting events to the spool, again after each success while more
/// wait, and every [`RETRY`] while the spool is away or fails.
pub fn hand_over<A: HandsOver>(act: &mut A, ctx: &mut Context<A>) {
    let Some(spool) = act.handoff().spool.get() else {
        act.handoff().failing_since.get_or_insert_with(Instant::now);
        if !act.handoff().is_empty() {
            retry_later(act, ctx);
        }
        return;
    };
    let Some(msg) = act.handoff().take() else {
        return;
    };
    ctx.spawn(spool.send(msg).into_actor(act).map(|res, act, ctx| {
        // A spool that went away before answering is restarting.
        let result = res.unwrap_or(Err(SpoolError::Unavailable));
        let h = act.handoff();
        let dropped = h.dropped_total();
        let outcome = h.taken(result);
        log_overflow(&h.log, (h.dropped_total() - dropped) as usize);
        if let Handed::Failed(e) = &outcome {
            warn!(h.log, "spool_enqueue_failed"; "error" => %e, "events" => h.waiting());
            retry_later(act, ctx);
        }
        act.handed(&outcome, ctx);
        if matches!(outcome, Handed::Delivered(..)) {
            hand_over(act, ctx);
        }
    }));
}

/// Schedules one retry of [`hand_over`] in [`RETRY`], unless one is pending.
fn retry_later<A: HandsOver>(act: &mut A, ctx: &mut Context<A>) {
    if act.handoff().want_retry() {
        ctx.run_later(RETRY, |a, ctx| {
            a.handoff().retrying();
            hand_over(a, ctx);
        });
    }
}

/// Says loudly that a backlog overflowed (the loss is also shipped, see [`DropReport`]).
pub fn log_overflow(log: &Logger, dropped: usize) {
    if dropped > 0 {
        error!(log, "collector_backlog_overflow"; "dropped" => dropped,
               "effect" => "reported to the listener as an agent event once the spool takes events again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EventKind;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).expect("t")
    }

    fn ev(i: i64) -> Event {
        Event::new(format!("e{i}"), EventKind::PgActivity, at(i), &i).expect("e")
    }

    fn ids(m: &Enqueue) -> Vec<String> {
        m.events.iter().map(|e| e.id.clone()).collect()
    }

    fn cp(v: u8) -> Option<Checkpoint> {
        Some(Checkpoint::value("c", vec![v]))
    }

    /// A hand-off holding `cap` events of `ev`'s size.
    fn handoff(source: &'static str, cap: usize) -> Handoff {
        let log = Logger::root(slog::Discard, slog::o!());
        Handoff::new(Route::default(), log, source, "h", cap * ev(0).bytes())
    }

    fn reason(m: &Enqueue) -> String {
        let report: serde_json::Value = serde_json::from_str(m.events[0].data.get()).expect("json");
        report["reason"].as_str().unwrap_or_default().to_string()
    }

    #[test]
    fn a_full_backlog_says_its_real_cause_and_tells_the_source_what_it_lost() {
        // The spool took every hand-over: the collection was too large.
        let mut h = handoff("pg_tables", 2).telling_losses();
        h.keep(vec![ev(0), ev(1), ev(2)], None);
        assert_eq!(h.take_lost(), ["e0"]);
        assert!(h.take_lost().is_empty(), "told once");
        let m = h.take().expect("a message");
        assert!(
            reason(&m).starts_with("one collection made more events than"),
            "{}",
            reason(&m)
        );
        assert_eq!(h.taken(Ok(0)), Handed::Delivered(2, 0));
        // The spool fails for longer than a hiccup: it is the cause.
        h.keep(vec![ev(3)], None);
        h.take().expect("a message");
        assert!(matches!(
            h.taken(Err(SpoolError::Unavailable)),
            Handed::Failed(_)
        ));
        h.failing_since = Some(Instant::now() - SPOOL_AWAY);
        h.keep(vec![ev(4), ev(5)], None);
        assert_eq!(h.take_lost(), ["e3"]);
        let m = h.take().expect("a message");
        assert!(
            reason(&m).starts_with("the spool did not take events for long"),
            "{}",
            reason(&m)
        );
        // A source that does not track what it shipped keeps no ids.
        let mut plain = handoff("pg_activity", 1);
        plain.keep(vec![ev(0), ev(1)], None);
        assert!(plain.take_lost().is_empty());
        assert_eq!(plain.dropped_total(), 1);
    }

    #[test]
    fn dropped_events_are_reported_with_their_time_range_in_the_next_hand_over() {
        let mut h = handoff("pg_activity", 3);
        assert_eq!(h.keep(vec![ev(0), ev(1)], None), 0);
        assert_eq!(h.keep(vec![ev(2), ev(3), ev(4)], None), 2);
        assert_eq!(h.waiting(), 3);
        let m = h.take().expect("a message");
        let sent = ids(&m);
        assert_eq!(&sent[1..], ["e2", "e3", "e4"]);
        assert!(
            sent[0].starts_with("agent:h:events_dropped:pg_activity:"),
            "{sent:?}"
        );
        let report: serde_json::Value = serde_json::from_str(m.events[0].data.get()).expect("json");
        assert_eq!(report["event"], "events_dropped");
        assert_eq!(report["dropped"], 2);
        assert_eq!(report["oldest_collected_at"], "2023-11-14T22:13:20Z");
        assert_eq!(report["newest_collected_at"], "2023-11-14T22:13:21Z");
        assert!(h.take().is_none(), "one hand-over at a time");
        assert_eq!(h.taken(Ok(7)), Handed::Delivered(3, 7));
        assert!(h.is_empty());
        // Reported once: the next hand-over carries no report.
        h.keep(vec![ev(5)], None);
        assert_eq!(ids(&h.take().expect("message")), ["e5"]);
    }

    #[test]
    fn a_stored_batch_comes_back_to_its_source_unless_the_spool_keeps_a_share() {
        let mut h = handoff("pg_log", 3_000).recycling();
        let batch = Vec::with_capacity(2_000);
        let at = batch.as_ptr();
        let mut batch = batch;
        batch.extend((0..1_900).map(ev));
        h.keep(batch, None);
        let m = h.take().expect("message");
        assert_eq!(m.events.as_ptr(), at, "moved, not copied");
        drop(m);
        assert_eq!(h.taken(Ok(0)), Handed::Delivered(1_900, 0));
        let back = h.spare();
        assert_eq!(back.as_ptr(), at, "the same vector");
        assert_eq!(back.capacity(), 2_000);
        assert!(back.is_empty(), "its events freed on the source's thread");
        assert_eq!(h.spare().capacity(), 0, "handed back once");
        // The spool keeps the events (its tail): nothing comes back, nothing is copied.
        h.keep(vec![ev(2)], None);
        let kept = h.take().expect("message").events;
        assert_eq!(h.taken(Ok(0)), Handed::Delivered(1, 0));
        assert_eq!(h.spare().capacity(), 0);
        assert_eq!(kept[0].id, "e2");
        // A vector with much room to spare is copied to about its length (the spool may keep
        // it until shipped).
        let mut roomy = Vec::with_capacity(5_000);
        roomy.push(ev(4));
        let roomy_at = roomy.as_ptr();
        h.keep(roomy, None);
        let m = h.take().expect("message");
        assert_ne!(m.events.as_ptr(), roomy_at);
        assert!(m.events.capacity() <= 4, "{}", m.events.capacity());
        drop(m);
        h.taken(Ok(0));
        // A source that does not fill vectors again keeps none.
        let mut h = handoff("pg_activity", 10);
        h.keep(vec![ev(3)], None);
        drop(h.take());
        assert_eq!(h.taken(Ok(0)), Handed::Delivered(1, 0));
        assert_eq!(h.spare().capacity(), 0);
    }

    #[test]
    fn a_failed_hand_over_keeps_order_and_the_newest_checkpoint() {
        let mut h = handoff("pg_statements", 10);
        h.keep(vec![ev(0), ev(1)], cp(1));
        let m = h.take().expect("message");
        assert_eq!(m.checkpoint, cp(1));
        // Meanwhile the next cycle finished.
        h.keep(vec![ev(2)], cp(2));
        assert_eq!(h.waiting(), 3);
        assert_eq!(
            h.taken(Err(SpoolError::Full("no space left on device".into()))),
            Handed::Failed(SpoolError::Full("no space left on device".into()))
        );
        let m = h.take().expect("message again");
        assert_eq!(ids(&m), ["e0", "e1", "e2"]);
        assert_eq!(m.checkpoint, cp(2));
        // A failure with no newer cycle keeps the older checkpoint.
        h.taken(Err(SpoolError::Unavailable));
        let m = h.take().expect("message again");
        assert_eq!(m.checkpoint, cp(2));
        assert_eq!(h.taken(Ok(7)), Handed::Delivered(3, 7));
        assert!(h.take().is_none());
    }

    #[test]
    fn a_failure_while_over_the_cap_counts_the_overflow_once() {
        let mut h = handoff("pg_locks", 2);
        h.keep(vec![ev(0), ev(1)], None);
        let _ = h.take().expect("message");
        h.keep(vec![ev(2), ev(3)], None);
        h.taken(Err(SpoolError::Unavailable));
        let m = h.take().expect("message");
        let sent = ids(&m);
        assert_eq!(&sent[1..], ["e2", "e3"]);
        let report: serde_json::Value = serde_json::from_str(m.events[0].data.get()).expect("json");
        assert_eq!(report["dropped"], 2);
        assert_eq!(h.dropped_total(), 2);
    }

    /// What a failed hand-over gives back counts against the cap with what came
    /// meanwhile (it was not counted at all, so a failing spool let a backlog grow).
    #[test]
    fn what_a_failed_hand_over_gives_back_counts_against_the_cap() {
        let mut h = handoff("pg_activity", 4);
        h.keep((0..4).map(ev).collect(), None);
        let m = h.take().expect("message");
        h.keep(vec![ev(4)], None);
        drop(m);
        h.taken(Err(SpoolError::Unavailable));
        assert_eq!(h.waiting(), 4);
        assert_eq!(h.dropped_total(), 1);
        let m = h.take().expect("message");
        assert_eq!(&ids(&m)[1..], ["e1", "e2", "e3", "e4"]);
    }

    #[test]
    fn the_cap_counts_bytes_so_one_large_event_pushes_out_many_small_ones() {
        let mut h = handoff("pg_activity", 10);
        h.keep((0..8).map(ev).collect(), None);
        let big = Event::new(
            "big".into(),
            crate::model::EventKind::PgActivity,
            at(9),
            &"x".repeat(300),
        )
        .expect("big");
        // 8 small (67 bytes each) + one of 369 bytes in a cap of 670: the 4 oldest go.
        assert_eq!(h.keep(vec![big], None), 4);
        let m = h.take().expect("message");
        assert_eq!(&ids(&m)[1..], ["e4", "e5", "e6", "e7", "big"]);
        // One event larger than the whole cap is kept on its own (never an empty
        // backlog that drops everything it is given).
        h.taken(Ok(0));
        let huge = Event::new(
            "huge".into(),
            crate::model::EventKind::PgActivity,
            at(10),
            &"x".repeat(20 * ev(0).bytes()),
        )
        .expect("huge");
        h.keep(vec![ev(11)], None);
        assert_eq!(h.keep(vec![huge], None), 1);
        assert_eq!(ids(&h.take().expect("message"))[1..], ["huge"]);
    }

    #[test]
    fn one_retry_is_pending_at_a_time() {
        let mut h = handoff("pg_activity", 10);
        assert!(h.want_retry());
        assert!(
            !h.want_retry(),
            "a second cycle while the spool is away adds no timer"
        );
        assert!(!h.want_retry());
        h.retrying();
        assert!(h.want_retry());
    }

    #[test]
    fn a_checkpoint_alone_is_handed_over() {
        let mut h = handoff("pg_log", 10);
        assert!(h.take().is_none());
        h.keep(vec![], cp(7));
        let m = h.take().expect("a checkpoint-only message");
        assert!(m.events.is_empty());
        assert_eq!(h.taken(Ok(7)), Handed::Delivered(0, 7));
    }
}
