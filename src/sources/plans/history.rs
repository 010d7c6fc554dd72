//! The last plan shape of each statement (per database and query id), kept in memory
//! and as a checkpoint in the spool, written in the same transaction as the events that
//! report it: after a restart a plan the agent already shipped is not new, and a change
//! that happened while it was down is still a change.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{Checkpoint, Logged, RowChanges};

use super::shape::Shape;

/// Name of the checkpoint in the spool.
pub const CHECKPOINT: &str = "pg_plans.history";

/// The value of the checkpoint: its version line (the entries are its rows).
const MAGIC: &[u8] = b"postgres-agent pg_plans history v1\n";

/// The most statements remembered; the ones seen longest ago go first.
pub const MAX_ENTRIES: usize = 5_000;

/// A statement: database oid and query id.
pub type Key = (u32, i64);

/// What is remembered of a statement's plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The plan's shape.
    pub shape: Shape,
    /// When that shape was first seen.
    pub since: DateTime<Utc>,
    /// When it was last seen.
    pub seen_at: DateTime<Utc>,
    /// The statement's mean execution time while it had this shape (ms), from the
    /// statement deltas of the cycles it was seen in.
    pub mean_ms: Option<f64>,
    /// The shapes auto_explain plans of the statement were read with (by shape hash),
    /// at most [`MAX_LOGGED_SHAPES`]: whether the server ran this plan.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub logged: BTreeMap<String, Logged>,
    /// The change to this shape, until its effect on the mean time is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<Change>,
    /// What the planner had to choose from when the shape was first seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Context>,
}

/// A plan change whose effect is not known yet: the statement's mean time with the new
/// shape is taken from a pg_statements cycle entirely after the change was seen (the
/// second after the one it was seen with: the first may straddle it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The shape before.
    pub from_hash: String,
    /// The mean time with it (ms).
    pub mean_ms_before: Option<f64>,
    /// When the pg_statements cycle the change was seen with was taken.
    pub seen_with: DateTime<Utc>,
    /// When the next one was taken.
    pub next: Option<DateTime<Utc>>,
}

impl Change {
    /// Given a pg_statements cycle taken at `at`: true when its times are all with the
    /// new shape (and the effect can be told); otherwise notes it.
    pub fn after(&mut self, at: DateTime<Utc>) -> bool {
        match self.next {
            None if at > self.seen_with => {
                self.next = Some(at);
                false
            }
            Some(next) => at > next,
            None => false,
        }
    }
}

/// What a plan was chosen with, besides the statistics: the indexes and extended
/// statistics on its tables, and the planner settings that are not their defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Context {
    /// `table.index` of the valid indexes.
    pub indexes: Vec<String>,
    /// `table.statistics` of the extended statistics objects.
    pub statistics: Vec<String>,
    /// Planner settings not at their default: name → value.
    pub settings: BTreeMap<String, String>,
}

/// A setting that differs between two contexts (`None`: at its default).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SettingChange {
    /// The setting.
    pub name: String,
    /// Its value with the old plan.
    pub from: Option<String>,
    /// Its value now.
    pub to: Option<String>,
}

/// What changed between the context of an old plan and a new one.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ContextChanges {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    /// Indexes created.
    pub indexes_added: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    /// Indexes dropped (or made invalid).
    pub indexes_dropped: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    /// Extended statistics created.
    pub statistics_added: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    /// Extended statistics dropped.
    pub statistics_dropped: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    /// Planner settings changed.
    pub settings: Vec<SettingChange>,
}

impl Context {
    /// What `self` (the old plan's) has that `now` has not, and the reverse.
    pub fn changes(&self, now: &Context) -> ContextChanges {
        let gone = |a: &[String], b: &[String]| -> Vec<String> {
            a.iter().filter(|x| !b.contains(x)).cloned().collect()
        };
        let mut names: Vec<&String> = self.settings.keys().chain(now.settings.keys()).collect();
        names.sort();
        names.dedup();
        ContextChanges {
            indexes_added: gone(&now.indexes, &self.indexes),
            indexes_dropped: gone(&self.indexes, &now.indexes),
            statistics_added: gone(&now.statistics, &self.statistics),
            statistics_dropped: gone(&self.statistics, &now.statistics),
            settings: names
                .into_iter()
                .filter_map(|n| {
                    let (from, to) = (self.settings.get(n), now.settings.get(n));
                    (from != to).then(|| SettingChange {
                        name: n.clone(),
                        from: from.cloned(),
                        to: to.cloned(),
                    })
                })
                .collect(),
        }
    }
}

/// The most auto_explain shapes remembered per statement; the one read longest ago
/// goes first.
pub const MAX_LOGGED_SHAPES: usize = 8;

/// Every statement's last shape.
#[derive(Debug, Default)]
pub struct History {
    entries: HashMap<Key, Entry>,
    /// Keys changed since the last checkpoint (`None`: removed).
    changed: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

/// A checkpoint row's key.
fn key_bytes(k: &Key) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.extend(k.0.to_le_bytes());
    out.extend(k.1.to_le_bytes());
    out
}

fn key_of(b: &[u8]) -> Option<Key> {
    (b.len() == 12).then(|| {
        (
            u32::from_le_bytes(b[0..4].try_into().unwrap_or_default()),
            i64::from_le_bytes(b[4..12].try_into().unwrap_or_default()),
        )
    })
}

impl History {
    /// The history stored in the spool of `state_dir` (empty when there is none or it
    /// cannot be read: every plan is then new once).
    pub fn load(state_dir: &Path) -> History {
        let Some((value, rows)) =
            crate::spool::read_checkpoint_with_rows(state_dir, CHECKPOINT, true)
        else {
            return History::default();
        };
        History::decode(&value, &rows)
    }

    fn decode(value: &[u8], rows: &[(Vec<u8>, Vec<u8>)]) -> History {
        if value != MAGIC {
            return History::default();
        }
        let entries = rows
            .iter()
            .filter_map(|(k, v)| Some((key_of(k)?, serde_json::from_slice(v).ok()?)))
            .collect();
        History {
            entries,
            changed: BTreeMap::new(),
        }
    }

    /// The entry of `key`.
    pub fn get(&self, key: &Key) -> Option<&Entry> {
        self.entries.get(key)
    }

    /// How many statements it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when it holds none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records `entry` for `key`, forgetting the statement seen longest ago when full.
    pub fn put(&mut self, key: Key, entry: Entry) {
        self.changed
            .insert(key_bytes(&key), serde_json::to_vec(&entry).ok());
        self.entries.insert(key, entry);
        if self.entries.len() > MAX_ENTRIES {
            if let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.seen_at)
                .map(|(k, _)| *k)
            {
                self.entries.remove(&oldest);
                self.changed.insert(key_bytes(&oldest), None);
            }
        }
    }

    /// Adds auto_explain plans of shape `hash` read for the statement of `key`; false
    /// when the statement has no entry (the agent never planned it).
    pub fn logged(&mut self, key: Key, hash: &str, seen: Logged) -> bool {
        let Some(e) = self.entries.get_mut(&key) else {
            return false;
        };
        let l = e.logged.entry(hash.to_string()).or_insert(Logged {
            runs: 0,
            last_at: seen.last_at,
        });
        l.runs += seen.runs;
        l.last_at = l.last_at.max(seen.last_at);
        while e.logged.len() > MAX_LOGGED_SHAPES {
            let Some(oldest) = e
                .logged
                .iter()
                .min_by_key(|(_, l)| l.last_at)
                .map(|(h, _)| h.clone())
            else {
                break;
            };
            e.logged.remove(&oldest);
        }
        self.changed
            .insert(key_bytes(&key), serde_json::to_vec(&*e).ok());
        true
    }

    /// What changed since the last call, to store with this cycle's events.
    pub fn take_checkpoint(&mut self) -> Option<Checkpoint> {
        if self.changed.is_empty() {
            return None;
        }
        Some(Checkpoint {
            name: CHECKPOINT.into(),
            value: MAGIC.to_vec(),
            rows: RowChanges {
                replace: false,
                set: std::mem::take(&mut self.changed),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(hash: &str) -> Entry {
        Entry {
            shape: Shape {
                hash: hash.into(),
                nodes: vec!["Seq Scan on t".into()],
            },
            since: Utc::now(),
            seen_at: Utc::now(),
            mean_ms: Some(1.5),
            logged: BTreeMap::new(),
            change: None,
            context: None,
        }
    }

    #[test]
    fn round_trips_through_the_spool() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(History::load(dir.path()).is_empty());
        let mut h = History::default();
        h.put((5, -42), entry("00000000000000aa"));
        h.put((6, 7), entry("00000000000000bb"));
        let c = h.take_checkpoint().expect("changed");
        assert!(h.take_checkpoint().is_none(), "nothing changed since");
        let mut spool = crate::spool::Spool::open(dir.path()).expect("spool");
        spool.append_with(&[], Some(&c)).expect("append");
        drop(spool);
        let back = History::load(dir.path());
        assert_eq!(back.len(), 2);
        assert_eq!(back.get(&(5, -42)), h.get(&(5, -42)));
        assert_eq!(
            back.get(&(6, 7)).map(|e| e.shape.hash.as_str()),
            Some("00000000000000bb")
        );
        // Garbage is no history.
        assert!(History::decode(b"other", &[]).is_empty());
        assert!(History::decode(MAGIC, &[(vec![1, 2], b"{}".to_vec())]).is_empty());
    }

    #[test]
    fn a_change_is_measured_from_the_second_statements_cycle_after_it() {
        let t0 = Utc::now();
        let at = |s: i64| t0 + chrono::Duration::seconds(s);
        let mut c = Change {
            from_hash: "aa".into(),
            mean_ms_before: Some(0.1),
            seen_with: at(0),
            next: None,
        };
        assert!(!c.after(at(0)), "the cycle it was seen with");
        assert!(!c.after(at(10)), "the next may straddle it");
        assert_eq!(c.next, Some(at(10)));
        assert!(!c.after(at(10)), "the same cycle again");
        assert!(c.after(at(20)));
    }

    #[test]
    fn a_context_change_names_the_indexes_statistics_and_settings_that_came_and_went() {
        let old = Context {
            indexes: vec!["orders.orders_pkey".into(), "orders.orders_customer".into()],
            statistics: vec![],
            settings: [("random_page_cost".to_string(), "1.1".to_string())].into(),
        };
        let now = Context {
            indexes: vec!["orders.orders_pkey".into()],
            statistics: vec!["orders.orders_dep".into()],
            settings: [("enable_seqscan".to_string(), "off".to_string())].into(),
        };
        let c = old.changes(&now);
        assert_eq!(c.indexes_dropped, ["orders.orders_customer"]);
        assert!(c.indexes_added.is_empty());
        assert_eq!(c.statistics_added, ["orders.orders_dep"]);
        assert_eq!(
            c.settings,
            [
                SettingChange {
                    name: "enable_seqscan".into(),
                    from: None,
                    to: Some("off".into())
                },
                SettingChange {
                    name: "random_page_cost".into(),
                    from: Some("1.1".into()),
                    to: None
                },
            ]
        );
        assert_eq!(old.changes(&old), ContextChanges::default());
    }

    #[test]
    fn auto_explain_shapes_are_counted_per_statement_and_the_oldest_goes_first() {
        let mut h = History::default();
        let t0 = Utc::now();
        let at = |s: i64| t0 + chrono::Duration::seconds(s);
        let seen = |runs, s| Logged {
            runs,
            last_at: at(s),
        };
        assert!(!h.logged((1, 1), "aa", seen(1, 0)), "no entry: not kept");
        h.put((1, 1), entry("aa"));
        h.take_checkpoint();
        assert!(h.logged((1, 1), "aa", seen(2, 5)));
        assert!(h.logged((1, 1), "aa", seen(3, 1)));
        let e = h.get(&(1, 1)).expect("entry");
        assert_eq!(e.logged["aa"], seen(5, 5));
        assert!(h.take_checkpoint().is_some(), "stored with the cycle");
        for i in 0..MAX_LOGGED_SHAPES as i64 {
            h.logged((1, 1), &format!("b{i}"), seen(1, 10 + i));
        }
        let e = h.get(&(1, 1)).expect("entry");
        assert_eq!(e.logged.len(), MAX_LOGGED_SHAPES);
        assert!(!e.logged.contains_key("aa"), "read longest ago: gone");
    }

    #[test]
    fn the_statement_seen_longest_ago_goes_first() {
        let mut h = History::default();
        let old = Entry {
            seen_at: Utc::now() - chrono::Duration::hours(1),
            ..entry("01")
        };
        h.put((1, 1), old);
        for i in 0..MAX_ENTRIES as i64 {
            h.put((2, i), entry("02"));
        }
        assert_eq!(h.len(), MAX_ENTRIES);
        assert!(h.get(&(1, 1)).is_none());
        let c = h.take_checkpoint().expect("changed");
        assert_eq!(c.rows.set.get(&key_bytes(&(1, 1))), Some(&None));
    }
}
