//! pg_statements' state between cycles, as plain code: the previous sample, whether a
//! cycle reads every entry or only the changed ones, how the rows the server sent make
//! the new sample, the deltas and the summary, what status says, and when the new
//! baseline is stored. The queries are in [`super::query`]; this reads nothing.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};

use super::baseline::{self, key_bytes, value_bytes, Baseline};
use super::delta::{diff, fingerprint, top_n, Delta, Key, Values};
use super::events::{Names, Summary};
use super::query::{Extension, Info, Rows};
use crate::model::{Checkpoint, Problem, RowChanges, SourceState};

/// Every this many cycles all entries are read, so that evicted ones are forgotten.
pub const RESYNC_EVERY: u32 = 10;

/// At most this many bytes of query texts (and their fingerprints) are remembered; all
/// are forgotten when full and the texts of the next deltas read again. Bytes, not
/// texts: 20,000 texts (the count before) of `max_query_length` 64 KB were 1.3 GB.
const TEXT_CACHE_BYTES: usize = 4 << 20;

/// How this cycle reads the counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPlan {
    /// Every entry (no previous sample, a reset, or time to forget evicted entries).
    pub full: bool,
    /// Fingerprints of the entries known with their calls: the server skips those.
    pub known: Vec<i64>,
    /// `stats_reset` changed since the previous sample.
    pub reset: bool,
}

/// The result of a cycle that read the counters.
#[derive(Debug)]
pub struct Concluded {
    /// The entries with new calls, the top `statements_max_rows` by execution time.
    pub deltas: Vec<Delta>,
    /// The previous sample's time and the seconds since: `None` for a baseline.
    pub since: Option<(DateTime<Utc>, f64)>,
    /// The cycle's summary.
    pub summary: Summary,
}

/// What is missing to name the deltas.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Missing {
    /// Query ids without a text yet.
    pub texts: Vec<i64>,
    /// A database oid without a name.
    pub databases: bool,
    /// A role oid without a name.
    pub roles: bool,
}

/// The state of the source between cycles.
#[derive(Debug)]
pub struct Tracker {
    /// The server's address (`host:port/dbname`).
    server: String,
    /// The server's address and which cluster in which role: a baseline of another
    /// (stored before a restart, or taken before a failover) is not diffed against.
    identity: String,
    persist: bool,
    max_rows: usize,
    /// The installed extension, as last seen.
    pub ext: Option<Extension>,
    prev: Option<Baseline>,
    /// The baseline read from disk at start was looked at (used once, if it fits).
    loaded: bool,
    /// The spool's rows hold `prev` (with the checkpoints handed over so far), so the
    /// next checkpoint may be a journal of changed entries; else it replaces them all.
    rows_hold_prev: bool,
    since_resync: u32,
    checkpoint: Option<Checkpoint>,
    /// Texts and names already read.
    pub names: Names,
    state: Option<SourceState>,
}

impl Tracker {
    /// A tracker for the server `identity` (`host:port/dbname`); `persist` stores the
    /// baseline with the events (the daemon; `once` does not).
    pub fn new(identity: String, persist: bool, max_rows: usize) -> Tracker {
        Tracker {
            server: identity.clone(),
            identity,
            persist,
            max_rows,
            ext: None,
            prev: None,
            loaded: false,
            rows_hold_prev: false,
            since_resync: 0,
            checkpoint: None,
            names: Names::default(),
            state: None,
        }
    }

    /// The `limit` entries of the last sample with the most execution time, summed by
    /// role, database and query id (top-level and nested alike), most first: (role
    /// oid, database oid, query id, and per `columns` name its total).
    pub fn top(&self, limit: usize, columns: &[&str]) -> Vec<((u32, u32, i64), Vec<f64>)> {
        let Some(b) = &self.prev else {
            return Vec::new();
        };
        let at = |name: &str| b.columns.iter().position(|c| c == name);
        let wanted: Vec<Option<usize>> = columns.iter().map(|c| at(c)).collect();
        if wanted.first().copied().flatten().is_none() {
            return Vec::new();
        }
        let mut sums: HashMap<(u32, u32, i64), Vec<f64>> = HashMap::new();
        for (k, v) in &b.entries {
            let sum = sums
                .entry((k.userid, k.dbid, k.queryid))
                .or_insert_with(|| vec![0.0; columns.len()]);
            for (s, i) in sum.iter_mut().zip(&wanted) {
                *s += i.and_then(|i| v.get(i)).copied().unwrap_or(0.0);
            }
        }
        let mut out: Vec<_> = sums.into_iter().collect();
        out.sort_by(|a, b| b.1[0].total_cmp(&a.1[0]).then(a.0.cmp(&b.0)));
        out.truncate(limit);
        out
    }

    /// The cluster (system identifier) and role the next sample is of.
    pub fn on_cluster(&mut self, system_identifier: &str, role: &str) {
        self.identity = format!("{}#{system_identifier}/{role}", self.server);
    }

    /// The state for status.
    pub fn state(&self) -> Option<SourceState> {
        self.state.clone()
    }

    /// The baseline to store with the events of the last cycle, once: its header and
    /// the entries that changed (all of them for a new baseline).
    pub fn take_checkpoint(&mut self) -> Option<Checkpoint> {
        self.checkpoint.take()
    }

    /// This cycle's query texts or database and role names could not be read: its
    /// deltas ship without the missing ones (the counts are whole), and status says so
    /// until the next cycle.
    pub fn names_unread(&mut self, e: &crate::db::DbError) {
        self.state = Some(SourceState::Degraded(Problem::new(
            format!("query texts or database/role names could not be read ({e}); that cycle's counts shipped without them"),
            "nothing if it passes (they are read again with the next deltas); otherwise check the connection and database.statement_timeout_ms",
        )));
    }

    /// The extension cannot be read: the summary that says why.
    pub fn unavailable(&mut self, problem: Problem) -> Summary {
        self.ext = None;
        let s = Summary::unavailable(&problem.reason, &problem.fix);
        self.state = Some(SourceState::Unavailable(problem));
        s
    }

    /// The sample to diff against: the last one in memory, else the one stored before a
    /// restart (`stored`, asked once, with whether the spool's rows hold it), provided
    /// it is from this server, with these columns, and older than `now`.
    pub fn previous(
        &mut self,
        ext: &Extension,
        now: DateTime<Utc>,
        stored: impl FnOnce() -> Option<(Baseline, bool)>,
    ) -> Option<Baseline> {
        if !self.loaded {
            self.loaded = true;
            if self.prev.is_none() {
                if let Some((b, rows_hold_it)) = stored() {
                    self.prev = Some(b);
                    self.rows_hold_prev = rows_hold_it;
                }
            }
        }
        let columns: Vec<String> = ext.columns.iter().map(|c| c.name.clone()).collect();
        self.prev
            .take()
            .filter(|p| p.identity == self.identity && p.columns == columns && p.taken_at < now)
    }

    /// How to read this cycle: everything without a previous sample, after a reset and
    /// every [`RESYNC_EVERY`] cycles (to forget evicted entries); else only entries
    /// whose calls changed.
    pub fn read_plan(&mut self, ext: &Extension, prev: Option<&Baseline>, info: &Info) -> ReadPlan {
        let reset = prev.is_some_and(|p| p.stats_reset != info.stats_reset);
        self.since_resync += 1;
        let full = prev.is_none() || reset || self.since_resync >= RESYNC_EVERY;
        if full {
            self.since_resync = 0;
        }
        let calls = ext.columns.iter().position(|c| c.name == "calls");
        let known = match (full, prev, calls) {
            (false, Some(p), Some(ci)) => p
                .entries
                .iter()
                .map(|(k, v)| fingerprint(k, v[ci] as i64))
                .collect(),
            _ => vec![],
        };
        ReadPlan { full, known, reset }
    }

    /// Deltas and summary of the rows read (`rows`) against `prev`; the new sample (the
    /// rows, on top of `prev`'s entries when only changed ones were read) becomes the
    /// previous one, and is stored with the events when something changed or a new
    /// baseline began (a quiet cycle changes nothing worth a write: the older baseline
    /// has the same values, and no deltas depend on it). What is stored is a journal:
    /// the entries that changed and those forgotten, unless the stored rows must be
    /// replaced (a new baseline, a reset, a version 1 baseline).
    pub fn conclude(
        &mut self,
        ext: &Extension,
        prev: Option<Baseline>,
        plan: &ReadPlan,
        rows: Rows,
        info: &Info,
        now: DateTime<Utc>,
    ) -> Concluded {
        let reset = plan.reset;
        let hidden = rows.hidden;
        // Entries not read are unchanged: the rows alone give every delta.
        let mut deltas = match &prev {
            Some(p) => diff(
                &ext.columns,
                &p.entries,
                rows.entries.iter().map(|(k, v)| (k, v)),
                reset,
            ),
            None => vec![],
        };
        let replace = prev.is_none() || reset || !self.rows_hold_prev;
        let (entries, before, set) = merge(prev, plan.full, rows.entries, replace);
        let cur = Baseline {
            identity: self.identity.clone(),
            taken_at: now,
            stats_reset: info.stats_reset,
            dealloc: info.dealloc,
            columns: ext.columns.iter().map(|c| c.name.clone()).collect(),
            entries,
        };
        let changed = deltas.len();
        top_n(&mut deltas, &ext.columns, self.max_rows);
        let since = before.as_ref().map(|p| {
            (
                p.taken_at,
                (cur.taken_at - p.taken_at).num_milliseconds() as f64 / 1000.0,
            )
        });
        let summary = Summary {
            kind: "summary",
            available: true,
            reason: None,
            fix: None,
            extension_version: Some(ext.version.clone()),
            entries: cur.entries.len() + hidden,
            entries_hidden: hidden,
            rows_read: rows.read,
            baseline: before.is_none(),
            reset_detected: reset,
            dealloc_delta: before
                .as_ref()
                .and_then(|p| p.dealloc.zip(cur.dealloc))
                .map(|(a, b)| if reset || b < a { b } else { b - a }),
            changed,
            shipped: deltas.len(),
            interval_s: since.map(|(_, s)| s),
            names_error: None,
        };
        self.state = Some(state_of(before.is_none(), hidden, &ext.version));
        if self.persist && (replace || changed > 0 || !set.is_empty()) {
            self.store(&cur, replace, set);
        }
        self.prev = Some(cur);
        Concluded {
            deltas,
            since,
            summary,
        }
    }

    /// The checkpoint that stores `cur` with the next events: its header, and its
    /// entries as row changes (`set`), or all of them when `replace`. A journal after
    /// one not yet written merges with it (`Checkpoint::after`).
    fn store(&mut self, cur: &Baseline, replace: bool, mut set: RowSet) {
        if replace {
            set = cur
                .entries
                .iter()
                .map(|(k, v)| (key_bytes(k), Some(value_bytes(v))))
                .collect();
        }
        let c = Checkpoint {
            name: baseline::CHECKPOINT.to_string(),
            value: baseline::encode_header(cur),
            rows: RowChanges { replace, set },
        };
        self.checkpoint = Some(match self.checkpoint.take() {
            Some(older) => c.after(older),
            None => c,
        });
        self.rows_hold_prev = true;
    }

    /// What must be read to name `deltas`.
    pub fn missing(&self, deltas: &[Delta]) -> Missing {
        let mut texts: Vec<i64> = deltas
            .iter()
            .map(|d| d.key.queryid)
            .filter(|q| !self.names.texts.contains_key(q))
            .collect();
        texts.sort_unstable();
        texts.dedup();
        Missing {
            texts,
            databases: deltas
                .iter()
                .any(|d| !self.names.databases.contains_key(&d.key.dbid)),
            roles: deltas
                .iter()
                .any(|d| !self.names.roles.contains_key(&d.key.userid)),
        }
    }

    /// Remembers texts read (forgetting all when the cache is full), with the
    /// fingerprint of each text shorter than `max_len` bytes (a longer one was cut),
    /// taken before `redact` takes the literals out.
    pub fn add_texts(
        &mut self,
        texts: Vec<super::query::Text>,
        max_len: usize,
        redact: crate::sql::redact::Redact,
    ) {
        // A map entry and its key and String are about 64 bytes beside the text.
        let incoming: usize = texts.iter().map(|t| t.text.len() + 64).sum();
        if self.names.text_bytes + incoming > TEXT_CACHE_BYTES {
            self.names.texts.clear();
            self.names.fingerprints.clear();
            self.names.not_utf8.clear();
            self.names.text_bytes = 0;
        }
        for super::query::Text {
            queryid: id,
            text,
            not_utf8,
        } in texts
        {
            if not_utf8 {
                self.names.not_utf8.insert(id);
            } else {
                self.names.not_utf8.remove(&id);
            }
            if text.len() < max_len {
                if let Some(f) = crate::fingerprint::fingerprint(&text) {
                    self.names.text_bytes += f.len() + 64;
                    self.names.fingerprints.insert(id, f);
                }
            }
            let text = crate::sources::session::redacted(text, redact);
            self.names.text_bytes += text.len() + 64;
            if let Some(old) = self.names.texts.insert(id, text) {
                self.names.text_bytes -= (old.len() + 64).min(self.names.text_bytes);
            }
        }
    }
}

/// Row changes of a checkpoint: key → value, or `None` for a row removed.
type RowSet = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// The new sample's entries from the previous sample and the rows read: an incremental
/// read (`full` false) updates the previous entries; a full read replaces them. With
/// the previous sample: it too (for the deltas' interval), and — unless `replace` —
/// the rows that changed since, for the checkpoint's journal.
#[allow(clippy::type_complexity)]
fn merge(
    prev: Option<Baseline>,
    full: bool,
    rows: Vec<(Key, Values)>,
    replace: bool,
) -> (HashMap<Key, Values>, Option<Baseline>, RowSet) {
    let mut set = BTreeMap::new();
    match prev {
        Some(mut p) if !full => {
            let mut entries = std::mem::take(&mut p.entries);
            for (k, v) in rows {
                if !replace && entries.get(&k) != Some(&v) {
                    set.insert(key_bytes(&k), Some(value_bytes(&v)));
                }
                entries.insert(k, v);
            }
            (entries, Some(p), set)
        }
        Some(p) => {
            let entries: HashMap<_, _> = rows.into_iter().collect();
            if !replace {
                for (k, v) in &entries {
                    if p.entries.get(k) != Some(v) {
                        set.insert(key_bytes(k), Some(value_bytes(v)));
                    }
                }
                for k in p.entries.keys().filter(|k| !entries.contains_key(k)) {
                    set.insert(key_bytes(k), None);
                }
            }
            (entries, Some(p), set)
        }
        None => (rows.into_iter().collect(), None, set),
    }
}

/// The source's state after a cycle: the first sets the baseline; hidden entries of
/// other roles degrade it.
fn state_of(first: bool, hidden: usize, version: &str) -> SourceState {
    if first {
        SourceState::Baseline(
            "the first sample sets the baseline; deltas start with the next".into(),
        )
    } else if hidden > 0 {
        SourceState::Degraded(Problem::new(
            // The count is in the summary (`entries_hidden`): a state is logged when it
            // changes, and a count would change it every cycle.
            "entries of other roles are hidden: their queryid is shown only to roles with pg_read_all_stats",
            "GRANT pg_read_all_stats TO the agent's role (pg_monitor includes it)",
        ))
    } else {
        SourceState::Working(format!("available (pg_stat_statements {version})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(queryid: i64, text: &str) -> super::super::query::Text {
        super::super::query::Text {
            queryid,
            text: text.to_string(),
            not_utf8: false,
        }
    }
    use crate::sources::statements::delta::columns;
    use crate::sources::statements::delta::tests::key;

    fn ext() -> Extension {
        let cols: Vec<String> = ["calls", "total_exec_time", "rows"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        Extension {
            version: "1.10".into(),
            schema: "public".into(),
            columns: columns(&cols),
            has_toplevel: true,
            has_info: true,
        }
    }

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).expect("t")
    }

    fn rows(entries: &[(i64, f64)]) -> Rows {
        Rows {
            entries: entries
                .iter()
                .map(|&(q, calls)| (key(q), vec![calls, calls * 2.0, calls]))
                .collect(),
            read: entries.len(),
            hidden: 0,
        }
    }

    /// One cycle through the tracker as the source runs it.
    fn cycle(
        t: &mut Tracker,
        now: i64,
        info: Info,
        server: &[(i64, f64)],
    ) -> (ReadPlan, Concluded) {
        let e = ext();
        let prev = t.previous(&e, at(now), || None);
        let plan = t.read_plan(&e, prev.as_ref(), &info);
        // The server skips the entries whose fingerprint it was given.
        let sent: Vec<(i64, f64)> = server
            .iter()
            .copied()
            .filter(|(q, c)| !plan.known.contains(&fingerprint(&key(*q), *c as i64)))
            .collect();
        let c = t.conclude(&e, prev, &plan, rows(&sent), &info, at(now));
        (plan, c)
    }

    #[test]
    fn another_cluster_or_role_starts_a_new_baseline_and_the_same_one_does_not() {
        let mut t = Tracker::new("h:5432/db".into(), true, 100);
        let info = Info::default();
        t.on_cluster("7001", "standby");
        cycle(&mut t, 0, info, &[(1, 3.0)]);
        t.on_cluster("7001", "standby");
        let (_, c) = cycle(&mut t, 60, info, &[(1, 5.0)]);
        assert_eq!(c.deltas.len(), 1, "the same cluster: compared");
        // Promoted: its counters are not diffed against the standby's sample.
        t.on_cluster("7001", "primary");
        let (plan, c) = cycle(&mut t, 120, info, &[(1, 9.0)]);
        assert!(plan.full && c.summary.baseline && c.deltas.is_empty());
        // Another cluster at the same address, with larger counters: not compared either.
        t.on_cluster("8002", "primary");
        let (_, c) = cycle(&mut t, 180, info, &[(1, 50.0)]);
        assert!(c.summary.baseline && c.deltas.is_empty());
        // A baseline stored under another cluster (before a restart) is not used.
        let mut stored = t.previous(&ext(), at(181), || None).expect("the sample");
        stored.identity = "h:5432/db#7001/primary".into();
        let mut after = Tracker::new("h:5432/db".into(), true, 100);
        after.on_cluster("8002", "primary");
        assert!(after
            .previous(&ext(), at(240), || Some((stored, true)))
            .is_none());
    }

    #[test]
    fn the_first_cycle_sets_the_baseline_and_the_next_ships_only_changes() {
        let mut t = Tracker::new("h:5432/db".into(), true, 100);
        let info = Info::default();
        let (plan, c) = cycle(&mut t, 0, info, &[(1, 3.0), (2, 5.0)]);
        assert!(plan.full && plan.known.is_empty());
        assert!(c.summary.baseline && c.deltas.is_empty() && c.since.is_none());
        assert!(matches!(t.state(), Some(SourceState::Baseline(_))));
        assert!(t.take_checkpoint().is_some(), "a new baseline is stored");

        let (plan, c) = cycle(&mut t, 60, info, &[(1, 3.0), (2, 9.0)]);
        assert!(!plan.full);
        assert_eq!(plan.known.len(), 2);
        assert_eq!(c.summary.rows_read, 1, "only the changed entry was sent");
        assert_eq!(c.summary.entries, 2);
        assert_eq!(c.deltas.len(), 1);
        assert_eq!(c.deltas[0].key.queryid, 2);
        assert_eq!(c.deltas[0].values[0], 4.0, "calls 5 → 9");
        assert_eq!(c.since, Some((at(0), 60.0)));
        assert_eq!(
            t.state().map(|s| s.to_string()).as_deref(),
            Some("available (pg_stat_statements 1.10)")
        );
        assert!(t.take_checkpoint().is_some());

        // Nothing changed: no deltas, and no write of an identical baseline.
        let (_, c) = cycle(&mut t, 120, info, &[(1, 3.0), (2, 9.0)]);
        assert!(c.deltas.is_empty());
        assert_eq!(c.summary.rows_read, 0);
        assert!(t.take_checkpoint().is_none());
    }

    #[test]
    fn the_stored_baseline_is_a_journal_of_changed_and_forgotten_entries() {
        let mut t = Tracker::new("h:5432/db".into(), true, 100);
        let info = Info::default();
        let keys = |c: &Checkpoint| -> Vec<(i64, bool)> {
            c.rows
                .set
                .iter()
                .map(|(k, v)| {
                    (
                        i64::from_le_bytes(k[8..16].try_into().expect("8")),
                        v.is_some(),
                    )
                })
                .collect()
        };
        cycle(&mut t, 0, info, &[(1, 1.0), (2, 1.0), (3, 1.0)]);
        let c = t.take_checkpoint().expect("baseline");
        assert!(c.rows.replace);
        assert_eq!(keys(&c), [(1, true), (2, true), (3, true)]);
        cycle(&mut t, 60, info, &[(1, 1.0), (2, 4.0), (3, 1.0)]);
        let c = t.take_checkpoint().expect("journal");
        assert!(!c.rows.replace);
        assert_eq!(keys(&c), [(2, true)], "only the entry that ran");
        // Two cycles whose checkpoints were not taken (not handed over yet) merge.
        cycle(&mut t, 120, info, &[(1, 2.0), (2, 4.0), (3, 1.0)]);
        cycle(&mut t, 180, info, &[(1, 2.0), (2, 4.0), (3, 5.0)]);
        let c = t.take_checkpoint().expect("journal");
        assert_eq!(keys(&c), [(1, true), (3, true)]);
        // The full read forgets entry 2 (evicted): its row goes.
        for i in 4..=RESYNC_EVERY as i64 + 2 {
            let (plan, _) = cycle(&mut t, i * 60, info, &[(1, 2.0), (3, 5.0)]);
            if plan.full {
                let c = t.take_checkpoint().expect("resync");
                assert!(!c.rows.replace);
                assert_eq!(keys(&c), [(2, false)]);
            } else {
                assert!(t.take_checkpoint().is_none(), "quiet cycle {i}");
            }
        }
        // A stored version 1 baseline (rows do not hold it): the first write replaces.
        let e = ext();
        let mut t = Tracker::new("h:5432/db".into(), true, 100);
        let stored = Baseline {
            identity: "h:5432/db".into(),
            taken_at: at(0),
            stats_reset: None,
            dealloc: None,
            columns: e.columns.iter().map(|c| c.name.clone()).collect(),
            entries: HashMap::from([(key(1), vec![1.0, 2.0, 1.0])]),
        };
        let prev = t.previous(&e, at(60), || Some((stored, false)));
        let plan = t.read_plan(&e, prev.as_ref(), &info);
        t.conclude(&e, prev, &plan, rows(&[(2, 1.0)]), &info, at(60));
        let c = t.take_checkpoint().expect("replace");
        assert!(c.rows.replace);
        assert_eq!(keys(&c), [(1, true), (2, true)]);
    }

    #[test]
    fn a_reset_reads_everything_and_counts_from_zero() {
        let mut t = Tracker::new("h:5432/db".into(), true, 100);
        let before = Info {
            stats_reset: Some(at(0)),
            dealloc: Some(7),
        };
        cycle(&mut t, 1, before, &[(1, 10.0)]);
        let after = Info {
            stats_reset: Some(at(30)),
            dealloc: Some(2),
        };
        let (plan, c) = cycle(&mut t, 60, after, &[(1, 4.0)]);
        assert!(plan.full && plan.reset);
        assert!(c.summary.reset_detected);
        assert_eq!(c.summary.dealloc_delta, Some(2), "counted from the reset");
        assert_eq!(c.deltas[0].values[0], 4.0, "not 4 − 10");
        assert!(!c.deltas[0].new, "after a reset no entry counts as new");
    }

    #[test]
    fn every_tenth_cycle_reads_everything_and_forgets_evicted_entries() {
        let mut t = Tracker::new("h:5432/db".into(), false, 100);
        let info = Info::default();
        cycle(&mut t, 0, info, &[(1, 1.0), (2, 1.0)]);
        let mut fulls = vec![];
        for i in 1..=RESYNC_EVERY as i64 {
            // Entry 2 was evicted from pg_stat_statements.
            let (plan, c) = cycle(&mut t, i * 60, info, &[(1, 1.0)]);
            fulls.push(plan.full);
            if plan.full {
                assert_eq!(c.summary.entries, 1, "the evicted entry is forgotten");
            } else {
                assert_eq!(c.summary.entries, 2, "not known to be gone yet");
            }
        }
        assert_eq!(fulls.iter().filter(|f| **f).count(), 1, "{fulls:?}");
        assert!(
            t.take_checkpoint().is_none(),
            "once never stores a baseline"
        );
    }

    #[test]
    fn a_stored_baseline_is_used_only_if_it_fits() {
        let e = ext();
        let stored = |identity: &str, taken: i64| Baseline {
            identity: identity.into(),
            taken_at: at(taken),
            stats_reset: None,
            dealloc: None,
            columns: e.columns.iter().map(|c| c.name.clone()).collect(),
            entries: HashMap::new(),
        };
        let mut t = Tracker::new("h:5432/db".into(), true, 100);
        assert!(t
            .previous(&e, at(10), || Some((stored("h:5432/db", 0), true)))
            .is_some());
        let mut t = Tracker::new("h:5432/db".into(), true, 100);
        assert!(t
            .previous(&e, at(10), || Some((stored("other:5432/db", 0), true)))
            .is_none());
        let mut t = Tracker::new("h:5432/db".into(), true, 100);
        assert!(
            t.previous(&e, at(10), || Some((stored("h:5432/db", 20), true)))
                .is_none(),
            "a baseline from the future (clock moved back) is no baseline"
        );
        // Asked once.
        assert!(t.previous(&e, at(30), || panic!("asked twice")).is_none());
    }

    #[test]
    fn hidden_entries_degrade_the_source_with_the_grant_that_fixes_it() {
        let mut t = Tracker::new("h:5432/db".into(), true, 100);
        let e = ext();
        cycle(&mut t, 0, Info::default(), &[(1, 1.0)]);
        let prev = t.previous(&e, at(60), || None);
        let plan = t.read_plan(&e, prev.as_ref(), &Info::default());
        let mut r = rows(&[(1, 2.0)]);
        r.hidden = 3;
        let c = t.conclude(&e, prev, &plan, r, &Info::default(), at(60));
        assert_eq!((c.summary.entries, c.summary.entries_hidden), (4, 3));
        let Some(SourceState::Degraded(p)) = t.state() else {
            panic!("{:?}", t.state())
        };
        assert!(p.fix.starts_with("GRANT pg_read_all_stats"), "{p:?}");
        let s = t.unavailable(Problem::new("gone", "create it"));
        assert!(!s.available);
        assert_eq!(s.reason.as_deref(), Some("gone"));
        assert!(t.ext.is_none());
    }

    #[test]
    fn the_text_cache_is_bounded_by_bytes() {
        let mut t = Tracker::new("h:5432/db".into(), true, 100);
        let big = "select 1 -- ".to_string() + &"x".repeat(100_000);
        // 45 texts of 100 kB are past the 4 MB: the cache starts over once.
        for q in 0..45 {
            t.add_texts(
                vec![text(q, &big)],
                1 << 20,
                crate::sql::redact::Redact::None,
            );
            assert!(
                t.names.text_bytes <= TEXT_CACHE_BYTES,
                "{q}: {}",
                t.names.text_bytes
            );
        }
        assert!(t.names.texts.len() < 45, "forgot the older texts");
        assert!(t.names.texts.contains_key(&44), "kept the newest");
        let held: usize = t.names.texts.values().map(|s| s.len() + 64).sum::<usize>()
            + t.names
                .fingerprints
                .values()
                .map(|s| s.len() + 64)
                .sum::<usize>();
        assert_eq!(t.names.text_bytes, held);
    }

    #[test]
    fn only_unknown_names_are_asked_for() {
        let mut t = Tracker::new("h:5432/db".into(), true, 100);
        let d = |q: i64| Delta {
            key: key(q),
            values: vec![1.0, 1.0, 1.0],
            new: true,
            counters_reset: false,
        };
        let m = t.missing(&[d(2), d(1), d(2)]);
        assert_eq!(
            m,
            Missing {
                texts: vec![1, 2],
                databases: true,
                roles: true
            }
        );
        t.add_texts(
            vec![
                text(1, "select $1"),
                text(3, "select 123456789"),
                text(4, "set x = 'on'"),
            ],
            16,
            crate::sql::redact::Redact::Literals,
        );
        assert_eq!(t.names.texts[&4], "set x = ?", "literals out");
        assert_eq!(
            t.names.fingerprints.get(&4),
            crate::fingerprint::fingerprint("set x = 'on'").as_ref(),
            "the fingerprint of the text before redaction"
        );
        assert_eq!(
            t.names.fingerprints.get(&1),
            crate::fingerprint::fingerprint("select 42").as_ref(),
            "the text's fingerprint, as a session running it would have"
        );
        assert!(
            !t.names.fingerprints.contains_key(&3),
            "a text as long as the cut may be cut: no fingerprint"
        );
        t.names.databases.insert(5, "db".into());
        t.names.roles.insert(10, "app".into());
        let m = t.missing(&[d(1), d(2)]);
        assert_eq!(
            m,
            Missing {
                texts: vec![2],
                databases: false,
                roles: false
            }
        );
    }
}
