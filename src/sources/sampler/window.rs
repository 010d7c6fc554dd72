//! One window of session samples, aggregated: the plain core of the sampler. Every
//! sample adds each sampled session to the entry of its key (request, database, user,
//! statement, state, wait, backend type); when the window ends the entries become
//! `pg_activity_summary` payloads. Memory is bounded whatever the workload: at most
//! `max_keys` entries, beyond which samples go to one overflow entry (counted), every set
//! in an entry is capped, and the query texts — kept once per statement, not per key —
//! are held up to [`MAX_TEXT_BYTES`] per window (the rest counted, not kept).

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::sources::session::Session;

/// At most this many distinct pids, and blockers, are listed per entry.
const MAX_LISTED: usize = 64;

/// The most query text held by one window, bytes.
pub const MAX_TEXT_BYTES: usize = 4 << 20;

/// What names a statement: the server's query id and the agent's fingerprint.
type Identity = (Option<i64>, Option<String>);

/// One sampled session, as the sampler read it.
#[derive(Debug, Clone)]
pub struct Sampled {
    /// The session.
    pub session: Session,
    /// `backend_type`.
    pub backend_type: Option<String>,
    /// For a lock wait: the sessions blocking it (`pg_blocking_pids`), with their
    /// correlation ids when they were in the same sample.
    pub blockers: Vec<(i32, Option<String>)>,
}

/// What a summary is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Key {
    /// The request.
    pub correlation_id: Option<String>,
    /// Database.
    pub datname: Option<String>,
    /// Role.
    pub usename: Option<String>,
    /// The server's query id (PostgreSQL 14+).
    pub query_id: Option<i64>,
    /// The agent's fingerprint of the statement.
    pub query_fingerprint: Option<String>,
    /// `active`, `idle in transaction`, …
    pub state: Option<String>,
    /// `Lock`, `IO`, `LWLock`, … (none: on CPU).
    pub wait_event_type: Option<String>,
    /// The wait event.
    pub wait_event: Option<String>,
    /// `client backend`, `autovacuum worker`, …
    pub backend_type: Option<String>,
}

impl Key {
    fn of(s: &Sampled) -> Key {
        let x = &s.session;
        Key {
            correlation_id: x.correlation_id.clone(),
            datname: x.datname.clone(),
            usename: x.usename.clone(),
            query_id: x.query_id,
            query_fingerprint: x.query_fingerprint.clone(),
            state: x.state.clone(),
            wait_event_type: x.wait_event_type.clone(),
            wait_event: x.wait_event.clone(),
            backend_type: s.backend_type.clone(),
        }
    }

    /// A stable 64-bit hash of the key (FNV-1a over its JSON): part of the event id, so
    /// the same window and key always make the same id.
    pub fn hash(&self) -> String {
        crate::fingerprint::hash_hex(serde_json::to_string(self).unwrap_or_default().as_bytes())
    }
}

/// What was seen of one key in the window.
#[derive(Debug, Clone, Default)]
struct Entry {
    samples: u64,
    pids: BTreeSet<i32>,
    pids_more: bool,
    first_seen: Option<DateTime<Utc>>,
    last_seen: Option<DateTime<Utc>>,
    max_query_age_s: Option<f64>,
    blockers: BTreeSet<(i32, Option<String>)>,
    blockers_more: bool,
    query: Option<String>,
    query_truncated: bool,
}

impl Entry {
    fn add(&mut self, s: &Sampled, at: DateTime<Utc>) {
        self.samples += 1;
        if self.pids.len() < MAX_LISTED || self.pids.contains(&s.session.pid) {
            self.pids.insert(s.session.pid);
        } else {
            self.pids_more = true;
        }
        self.first_seen = Some(self.first_seen.map_or(at, |f| f.min(at)));
        self.last_seen = Some(self.last_seen.map_or(at, |l| l.max(at)));
        if let Some(a) = s.session.query_age_s {
            self.max_query_age_s = Some(self.max_query_age_s.map_or(a, |m| m.max(a)));
        }
        for b in &s.blockers {
            if self.blockers.len() < MAX_LISTED {
                self.blockers.insert(b.clone());
            } else if !self.blockers.contains(b) {
                self.blockers_more = true;
            }
        }
    }
}

/// A blocking session.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Blocker {
    /// Its pid.
    pub pid: i32,
    /// Its request, if it was seen in the same sample and carried one.
    pub correlation_id: Option<String>,
}

/// The `data` of a `pg_activity_summary` event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The key.
    #[serde(flatten)]
    pub key: Key,
    /// True for the entry that took the samples beyond the key cap (its key fields are
    /// empty).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub overflow: bool,
    /// Start and end of the window.
    pub window_start: DateTime<Utc>,
    /// End of the window (of its part before the agent stopped, when `partial`).
    pub window_end: DateTime<Utc>,
    /// The window was cut short by a shutdown: its samples up to `window_end`; the rest
    /// of the window, if the agent runs again within it, comes as its own events.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
    /// Samples in which a session had this key.
    pub samples: u64,
    /// `samples` × the sampling interval: the database time of this key.
    pub seconds: f64,
    /// Distinct backends seen with it.
    pub pids: Vec<i32>,
    /// More than the listed pids were seen.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub pids_more: bool,
    /// First and last sample with it.
    pub first_seen: Option<DateTime<Utc>>,
    /// Last sample with it.
    pub last_seen: Option<DateTime<Utc>>,
    /// The longest-running statement seen (seconds since its start).
    pub max_query_age_s: Option<f64>,
    /// For lock waits: who blocked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub blockers: Vec<Blocker>,
    /// More blockers than listed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub blockers_more: bool,
    /// The statement's text, once per statement per window (null on the other keys of
    /// the same statement).
    pub query: Option<String>,
    /// The text was cut.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub query_truncated: bool,
}

/// The samples of one window.
#[derive(Debug)]
pub struct Window {
    /// When it began (aligned to its length).
    pub start: DateTime<Utc>,
    entries: HashMap<Key, Entry>,
    overflow: Entry,
    /// Samples put into the overflow entry.
    pub overflowed: u64,
    /// When the last sample was taken.
    pub last_sample: Option<DateTime<Utc>>,
    /// Texts by statement (a text without identity — cut, or not readable — is kept in
    /// its entry).
    texts: HashMap<Identity, (Key, String, bool)>,
    text_bytes: usize,
    /// Samples whose text was not kept because the window's texts reached
    /// [`MAX_TEXT_BYTES`].
    pub texts_omitted: u64,
    max_keys: usize,
}

impl Window {
    /// The window of length `len` that holds `at`.
    pub fn holding(at: DateTime<Utc>, len: std::time::Duration, max_keys: usize) -> Window {
        Window {
            start: aligned(at, len),
            entries: HashMap::new(),
            overflow: Entry::default(),
            overflowed: 0,
            last_sample: None,
            texts: HashMap::new(),
            text_bytes: 0,
            texts_omitted: 0,
            max_keys,
        }
    }

    /// True when `at` falls into this window (of length `len`).
    pub fn holds(&self, at: DateTime<Utc>, len: std::time::Duration) -> bool {
        aligned(at, len) == self.start
    }

    /// Adds one sample taken at `at`.
    pub fn add(&mut self, at: DateTime<Utc>, sample: &[Sampled]) {
        self.last_sample = Some(at);
        for s in sample {
            let key = Key::of(s);
            let known = self.entries.contains_key(&key);
            if !known && self.entries.len() >= self.max_keys {
                self.overflowed += 1;
                self.overflow.add(s, at);
                continue;
            }
            let text = self.text_for(&key, known, s);
            match text {
                // With the key that ran it: another request's constants are not this
                // one's. (The only clone of a key: once per statement per window.)
                Some((q, cut)) if key.query_id.is_some() || key.query_fingerprint.is_some() => {
                    let identity: Identity = (key.query_id, key.query_fingerprint.clone());
                    self.texts.insert(identity, (key.clone(), q, cut));
                    self.entries.entry(key).or_default().add(s, at);
                }
                Some((q, cut)) => {
                    let e = self.entries.entry(key).or_default();
                    e.add(s, at);
                    e.query = Some(q);
                    e.query_truncated = cut;
                }
                None if known => {
                    if let Some(e) = self.entries.get_mut(&key) {
                        e.add(s, at);
                    }
                }
                None => self.entries.entry(key).or_default().add(s, at),
            }
        }
    }

    /// The text of `s` to keep, if its statement (or its key, for a text without
    /// identity) has none yet and the window's texts have room.
    fn text_for(&mut self, key: &Key, known: bool, s: &Sampled) -> Option<(String, bool)> {
        let q = s.session.query.as_ref()?;
        let wanted = if key.query_id.is_some() || key.query_fingerprint.is_some() {
            !self
                .texts
                .contains_key(&(key.query_id, key.query_fingerprint.clone()))
        } else {
            !known || self.entries.get(key).is_none_or(|e| e.query.is_none())
        };
        if !wanted {
            return None;
        }
        if self.text_bytes + q.len() > MAX_TEXT_BYTES {
            self.texts_omitted += 1;
            return None;
        }
        self.text_bytes += q.len();
        Some((q.clone(), s.session.query_truncated))
    }

    /// Keys held.
    pub fn keys(&self) -> usize {
        self.entries.len()
    }

    /// The summaries of the window, ending at `end`, sampled every `interval`.
    pub fn close(self, end: DateTime<Utc>, interval: std::time::Duration) -> Vec<Summary> {
        let secs = interval.as_secs_f64();
        let start = self.start;
        // The statement's text goes with the key whose session ran it.
        let mut texts: HashMap<Key, (String, bool)> = self
            .texts
            .into_values()
            .map(|(key, q, cut)| (key, (q, cut)))
            .collect();
        // Summaries in key order: the same window always reads the same.
        let mut entries: Vec<(Key, Entry)> = self.entries.into_iter().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<Summary> = entries
            .into_iter()
            .map(|(key, mut e)| {
                if let Some((q, cut)) = texts.remove(&key) {
                    e.query = Some(q);
                    e.query_truncated = cut;
                }
                summary(key, e, false, start, end, secs)
            })
            .collect();
        if self.overflow.samples > 0 {
            out.push(summary(
                Key::default_overflow(),
                self.overflow,
                true,
                start,
                end,
                secs,
            ));
        }
        out
    }
}

impl Key {
    fn default_overflow() -> Key {
        Key {
            correlation_id: None,
            datname: None,
            usename: None,
            query_id: None,
            query_fingerprint: None,
            state: None,
            wait_event_type: None,
            wait_event: None,
            backend_type: None,
        }
    }
}

fn summary(
    key: Key,
    e: Entry,
    overflow: bool,
    window_start: DateTime<Utc>,
    window_end: DateTime<Utc>,
    secs: f64,
) -> Summary {
    Summary {
        key,
        overflow,
        window_start,
        window_end,
        partial: false,
        samples: e.samples,
        seconds: (e.samples as f64 * secs * 1000.0).round() / 1000.0,
        pids: e.pids.into_iter().collect(),
        pids_more: e.pids_more,
        first_seen: e.first_seen,
        last_seen: e.last_seen,
        max_query_age_s: e.max_query_age_s,
        blockers: e
            .blockers
            .into_iter()
            .map(|(pid, correlation_id)| Blocker {
                pid,
                correlation_id,
            })
            .collect(),
        blockers_more: e.blockers_more,
        query_truncated: e.query.is_some() && e.query_truncated,
        query: e.query,
    }
}

/// The start of the window of length `len` holding `at` (windows aligned to the epoch,
/// so every agent cuts the same windows).
fn aligned(at: DateTime<Utc>, len: std::time::Duration) -> DateTime<Utc> {
    let len_us = (len.as_micros() as i64).max(1);
    let us = at.timestamp_micros();
    DateTime::from_timestamp_micros(us - us.rem_euclid(len_us)).unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn session(pid: i32, corr: Option<&str>, wait: Option<&str>, age: f64) -> Sampled {
        Sampled {
            session: Session {
                pid,
                datname: Some("shop".into()),
                usename: Some("app".into()),
                application_name: None,
                client_addr: None,
                state: Some("active".into()),
                wait_event_type: wait.map(|_| "Lock".to_string()),
                wait_event: wait.map(str::to_string),
                query: Some("update t set v = v + 1 where id = 1".into()),
                query_truncated: false,
                query_id: Some(77),
                query_fingerprint: Some("f".into()),
                xact_age_s: None,
                query_age_s: Some(age),
                state_age_s: None,
                backend_xid: None,
                correlation_id: corr.map(str::to_string),
                correlation_source: None,
                trace_id: None,
                span_id: None,
                not_utf8: false,
            },
            backend_type: Some("client backend".into()),
            blockers: vec![],
        }
    }

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_040 + s, 0).expect("t")
    }

    const LEN: Duration = Duration::from_secs(60);

    #[test]
    fn texts_are_held_once_per_statement_and_by_bytes() {
        let mut w = Window::holding(at(0), LEN, 100_000);
        // 3 requests running one statement: one text.
        for r in 0..3 {
            w.add(at(0), &[session(r, Some(&format!("req-{r}")), None, 1.0)]);
        }
        assert_eq!(w.text_bytes, "update t set v = v + 1 where id = 1".len());
        // Distinct statements of 64 KiB each: held until the window's budget is spent.
        let big = MAX_TEXT_BYTES / (64 << 10) + 10;
        for i in 0..big {
            let mut s = session(100, Some("bulk"), None, 1.0);
            s.session.query_fingerprint = Some(format!("f{i}"));
            s.session.query_id = Some(i as i64 + 1000);
            s.session.query = Some("x".repeat(64 << 10));
            w.add(at(1), &[s.clone()]);
            w.add(at(2), &[s]);
        }
        let kept = (MAX_TEXT_BYTES - 35) / (64 << 10);
        assert_eq!(w.text_bytes, 35 + kept * (64 << 10));
        // Each statement that did not fit counts once per sample that carried it.
        assert_eq!(w.texts_omitted, 2 * (big - kept) as u64);
        let out = w.close(at(60), Duration::from_secs(1));
        let with_text = out.iter().filter(|s| s.query.is_some()).count();
        // The shared statement once, the big ones as far as the budget went.
        assert_eq!(with_text, 1 + kept);
        // The shared text goes with the request that supplied it.
        let shared: Vec<_> = out
            .iter()
            .filter(|s| s.key.query_fingerprint.as_deref() == Some("f") && s.query.is_some())
            .map(|s| s.key.correlation_id.as_deref())
            .collect();
        assert_eq!(shared, vec![Some("req-0")]);
        assert_eq!(out.len(), 3 + big);
    }

    #[test]
    fn a_request_running_three_seconds_is_three_samples_of_one_key() {
        let mut w = Window::holding(at(0), LEN, 100);
        assert_eq!(
            w.start,
            DateTime::from_timestamp(1_700_000_040, 0).expect("t")
        );
        for s in 0..3 {
            w.add(at(s), &[session(10, Some("req-1"), None, s as f64 + 0.5)]);
        }
        // Another request, waiting on a lock held by req-1's backend.
        let mut waiting = session(11, Some("req-2"), Some("transactionid"), 1.0);
        waiting.blockers = vec![(10, Some("req-1".into()))];
        w.add(at(1), std::slice::from_ref(&waiting));
        w.add(at(2), std::slice::from_ref(&waiting));
        assert!(w.holds(at(59), LEN) && !w.holds(at(60), LEN));
        let out = w.close(at(60), Duration::from_secs(1));
        assert_eq!(out.len(), 2);
        let run = out
            .iter()
            .find(|s| s.key.correlation_id.as_deref() == Some("req-1"))
            .expect("req-1");
        assert_eq!(
            (run.samples, run.seconds, run.pids.clone()),
            (3, 3.0, vec![10])
        );
        assert_eq!((run.first_seen, run.last_seen), (Some(at(0)), Some(at(2))));
        assert_eq!(run.max_query_age_s, Some(2.5));
        let wait = out
            .iter()
            .find(|s| s.key.correlation_id.as_deref() == Some("req-2"))
            .expect("req-2");
        assert_eq!((wait.samples, wait.seconds), (2, 2.0));
        assert_eq!(wait.key.wait_event_type.as_deref(), Some("Lock"));
        assert_eq!(
            wait.blockers,
            vec![Blocker {
                pid: 10,
                correlation_id: Some("req-1".into())
            }]
        );
        // The statement's text once per window: both keys run the same statement.
        let texts = out.iter().filter(|s| s.query.is_some()).count();
        assert_eq!(texts, 1);
    }

    #[test]
    fn keys_beyond_the_cap_go_to_one_counted_overflow_entry() {
        let mut w = Window::holding(at(0), LEN, 2);
        for i in 0..5 {
            let id = format!("req-{i}");
            w.add(at(i), &[session(100 + i as i32, Some(&id), None, 0.1)]);
        }
        assert_eq!(w.keys(), 2);
        assert_eq!(w.overflowed, 3);
        let out = w.close(at(60), Duration::from_millis(500));
        assert_eq!(out.len(), 3);
        let o = out.last().expect("overflow");
        assert!(o.overflow && o.key.correlation_id.is_none());
        assert_eq!((o.samples, o.seconds), (3, 1.5));
        assert_eq!(o.pids, vec![102, 103, 104]);
    }

    #[test]
    fn the_id_of_a_key_is_stable_and_its_own() {
        let a = Key::of(&session(1, Some("a"), None, 0.0));
        let b = Key::of(&session(2, Some("b"), None, 0.0));
        assert_eq!(
            a.hash(),
            Key::of(&session(9, Some("a"), None, 5.0)).hash(),
            "pid and age are not the key"
        );
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.hash().len(), 16);
    }

    #[test]
    fn sets_are_capped() {
        let mut w = Window::holding(at(0), LEN, 10);
        let many: Vec<Sampled> = (0..200).map(|p| session(p, None, None, 0.0)).collect();
        w.add(at(0), &many);
        let out = w.close(at(60), Duration::from_secs(1));
        assert_eq!(out[0].samples, 200);
        assert_eq!(out[0].pids.len(), MAX_LISTED);
        assert!(out[0].pids_more);
    }
}
