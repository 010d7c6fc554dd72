//! Cumulative statistics become deltas: the increase of every counter column between
//! two readings of the same row, with the server's resets told apart from traffic (a
//! new `stats_reset`, or a counter that went down). Plain code, unit-tested.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Instant;

use serde_json::{Number, Value};

use super::Row;

/// What a reading means next to the one before it.
#[derive(Debug, Clone, PartialEq)]
pub enum Compared {
    /// Nothing to compare with (the first reading of this row since the agent started).
    First,
    /// The server's counters were reset since the last reading (`stats_reset` moved or
    /// a counter went down): no deltas this time, the next reading has them again.
    Reset,
    /// The increase of every counter, over `interval_s` seconds.
    Deltas {
        /// Column → increase.
        deltas: Row,
        /// Seconds between the readings (the agent's clock).
        interval_s: f64,
    },
}

impl Compared {
    /// True when there are deltas and every one is zero (nothing happened).
    pub fn is_quiet(&self) -> bool {
        match self {
            Compared::Deltas { deltas, .. } => deltas.values().all(|v| v.as_f64() == Some(0.0)),
            _ => false,
        }
    }

    /// The deltas, if any.
    pub fn deltas(&self) -> Option<&Row> {
        match self {
            Compared::Deltas { deltas, .. } => Some(deltas),
            _ => None,
        }
    }

    /// Seconds between the readings, if compared.
    pub fn interval_s(&self) -> Option<f64> {
        match self {
            Compared::Deltas { interval_s, .. } => Some(*interval_s),
            _ => None,
        }
    }
}

/// How an event says what changed: `first` (nothing to compare with yet), `reset` (the
/// server's counters restarted), else `deltas` over `interval_s`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Change {
    /// The first reading since the agent started: no deltas yet.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub first: bool,
    /// The server's counters were reset since the last reading: no deltas this time.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reset: bool,
    /// Seconds since the last reading.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval_s: Option<f64>,
    /// The increase of each counter since the last reading.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deltas: Option<Row>,
}

impl From<Compared> for Change {
    fn from(c: Compared) -> Change {
        match c {
            Compared::First => Change {
                first: true,
                ..Change::default()
            },
            Compared::Reset => Change {
                reset: true,
                ..Change::default()
            },
            Compared::Deltas { deltas, interval_s } => Change {
                interval_s: Some(interval_s),
                deltas: Some(deltas),
                ..Change::default()
            },
        }
    }
}

/// The column with the server's reset time.
pub const STATS_RESET: &str = "stats_reset";

/// A counter's value: integers stay exact, times in ms are doubles.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Num {
    I(i64),
    F(f64),
}

impl Num {
    fn of(v: &Value) -> Option<Num> {
        v.as_i64().map(Num::I).or_else(|| v.as_f64().map(Num::F))
    }

    fn as_f64(self) -> f64 {
        match self {
            Num::I(i) => i as f64,
            Num::F(f) => f,
        }
    }
}

/// One reading, kept small: a table's counters one after another in the order of a
/// column list shared by every row of the same shape (every table of a cluster is
/// remembered between passes), an integer in as few bytes as it needs (most counters
/// of most tables are small).
#[derive(Debug)]
struct Sample {
    /// Its columns: an index into [`Readings::layouts`].
    layout: u32,
    /// Each column's value: an integer zigzag-encoded in 7-bit groups (the high bit says
    /// another follows), or a double's 8 bytes (`floats` says which).
    bytes: Box<[u8]>,
    /// Bit `i % 64` of word `i / 64` set: value `i` is a double. Empty when none is.
    floats: Box<[u64]>,
    reset: Option<Box<str>>,
    at: Instant,
}

impl Sample {
    fn is_float(&self, i: usize) -> bool {
        self.floats
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Every value, in column order.
    fn nums(&self) -> Vec<Num> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < self.bytes.len() {
            if self.is_float(out.len()) {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.bytes[at..at + 8]);
                out.push(Num::F(f64::from_le_bytes(b)));
                at += 8;
                continue;
            }
            let mut z = 0u64;
            let mut shift = 0;
            loop {
                let b = self.bytes[at];
                at += 1;
                z |= u64::from(b & 0x7f) << shift;
                shift += 7;
                if b & 0x80 == 0 {
                    break;
                }
            }
            out.push(Num::I(((z >> 1) as i64) ^ -((z & 1) as i64)));
        }
        out
    }
}

/// Appends `i` zigzag-encoded in 7-bit groups.
fn push_int(out: &mut Vec<u8>, i: i64) {
    let mut z = ((i << 1) ^ (i >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// The last reading of each row, to compare the next one with. Counters are the
/// numeric columns that are not in `not_counters` (gauges such as `n_live_tup`, ids
/// such as `relid`).
#[derive(Debug)]
pub struct Readings<K> {
    last: HashMap<K, Sample>,
    names: Vec<String>,
    numbers: HashMap<String, u16>,
    /// The column lists rows were read with (by column number), shared.
    layouts: Vec<Box<[u16]>>,
    layout_ids: HashMap<Box<[u16]>, u32>,
    not_counters: &'static [&'static str],
}

impl<K: Hash + Eq + Clone> Readings<K> {
    /// Empty.
    pub fn new(not_counters: &'static [&'static str]) -> Readings<K> {
        Readings {
            last: HashMap::new(),
            names: Vec::new(),
            numbers: HashMap::new(),
            layouts: Vec::new(),
            layout_ids: HashMap::new(),
            not_counters,
        }
    }

    fn number(&mut self, name: &str) -> u16 {
        if let Some(n) = self.numbers.get(name) {
            return *n;
        }
        let n = self.names.len() as u16;
        self.names.push(name.to_string());
        self.numbers.insert(name.to_string(), n);
        n
    }

    fn layout(&mut self, columns: Vec<u16>) -> u32 {
        if let Some(id) = self.layout_ids.get(columns.as_slice()) {
            return *id;
        }
        let id = self.layouts.len() as u32;
        let columns: Box<[u16]> = columns.into();
        self.layouts.push(columns.clone());
        self.layout_ids.insert(columns, id);
        id
    }

    fn sample(&mut self, row: &Row, at: Instant) -> Sample {
        let mut columns = Vec::with_capacity(row.len());
        let mut bytes = Vec::with_capacity(row.len() * 3);
        let mut floats = vec![0u64; row.len().div_ceil(64)];
        for (k, v) in row {
            if k == STATS_RESET || self.not_counters.contains(&k.as_str()) {
                continue;
            }
            match Num::of(v) {
                Some(Num::I(i)) => push_int(&mut bytes, i),
                Some(Num::F(f)) => {
                    let at = columns.len();
                    floats[at / 64] |= 1 << (at % 64);
                    bytes.extend_from_slice(&f.to_le_bytes());
                }
                None => continue,
            }
            columns.push(self.number(k));
        }
        if floats.iter().all(|w| *w == 0) {
            floats.clear();
        }
        let reset = match row.get(STATS_RESET) {
            Some(Value::String(s)) => Some(s.as_str().into()),
            _ => None,
        };
        Sample {
            layout: self.layout(columns),
            bytes: bytes.into(),
            floats: floats.into(),
            reset,
            at,
        }
    }

    /// Compares `row` with the last reading of `key` and keeps it as the new last one.
    pub fn step(&mut self, key: K, row: &Row, now: Instant) -> Compared {
        let cur = self.sample(row, now);
        let compared = match self.last.get(&key) {
            Some(prev) => self.compare(prev, &cur),
            None => Compared::First,
        };
        self.last.insert(key, cur);
        compared
    }

    fn compare(&self, prev: &Sample, cur: &Sample) -> Compared {
        if prev.reset != cur.reset {
            return Compared::Reset;
        }
        let mut deltas = Row::new();
        let (was, is) = (
            &self.layouts[prev.layout as usize],
            &self.layouts[cur.layout as usize],
        );
        let (before, now) = (prev.nums(), cur.nums());
        for (i, n) in is.iter().enumerate() {
            let at = if prev.layout == cur.layout {
                Some(i)
            } else {
                was.iter().position(|m| m == n)
            };
            let Some(at) = at else {
                continue;
            };
            let d = match (before[at], now[i]) {
                (Num::I(a), Num::I(b)) => {
                    if b < a {
                        return Compared::Reset;
                    }
                    Value::from(b - a)
                }
                (a, b) => {
                    let (a, b) = (a.as_f64(), b.as_f64());
                    // Times in ms as doubles: a rounding wobble is not a reset.
                    if b < a - 1e-6 {
                        return Compared::Reset;
                    }
                    let d = ((b - a).max(0.0) * 1000.0).round() / 1000.0;
                    Number::from_f64(d).map_or(Value::Null, Value::Number)
                }
            };
            deltas.insert(self.names[*n as usize].clone(), d);
        }
        let interval_s = cur.at.saturating_duration_since(prev.at).as_secs_f64();
        Compared::Deltas {
            deltas,
            interval_s: (interval_s * 1000.0).round() / 1000.0,
        }
    }

    /// Forgets the rows not in `seen` (a dropped table, a database gone).
    pub fn keep_only(&mut self, seen: &std::collections::HashSet<K>) {
        self.last.retain(|k, _| seen.contains(k));
    }

    /// Forgets the rows `keep` says no to.
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.last.retain(|k, _| keep(k));
    }

    /// How many rows are remembered.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    /// True when no row is remembered.
    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(v: Value) -> Row {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn twice(a: Value, b: Value, not_counters: &'static [&'static str]) -> Compared {
        let mut r: Readings<u8> = Readings::new(not_counters);
        let t0 = Instant::now();
        r.step(0, &row(a), t0);
        r.step(0, &row(b), t0 + std::time::Duration::from_secs(10))
    }

    #[test]
    fn counters_become_increases_and_gauges_and_text_are_left_alone() {
        let a = json!({"relid": 1, "n_tup_ins": 10, "n_live_tup": 50, "blk_read_time": 1.5,
                       "relname": "t", "stats_reset": null, "wal_bytes": 18446744073709551000u64});
        let b = json!({"relid": 1, "n_tup_ins": 17, "n_live_tup": 40, "blk_read_time": 2.25,
                       "relname": "t", "stats_reset": null, "wal_bytes": 18446744073709551000u64});
        let c = twice(a.clone(), b, &["relid", "n_live_tup"]);
        assert_eq!(
            c,
            Compared::Deltas {
                deltas: row(json!({"n_tup_ins": 7, "blk_read_time": 0.75, "wal_bytes": 0.0})),
                interval_s: 10.0
            }
        );
        assert!(!c.is_quiet());
        assert!(twice(a.clone(), a, &["relid", "n_live_tup"]).is_quiet());
    }

    #[test]
    fn integers_of_every_size_and_doubles_between_them_are_kept_exactly() {
        let big = i64::MAX - 5;
        let a = json!({"a": 0, "b": 127, "t": 0.125, "c": 1_i64 << 40, "d": big, "e": -3});
        let b = json!({"a": 1, "b": 128, "t": 1.5, "c": (1_i64 << 40) + 3, "d": i64::MAX,
                       "e": -3});
        assert_eq!(
            twice(a, b, &[]).deltas(),
            Some(&row(
                json!({"a": 1, "b": 1, "t": 1.375, "c": 3, "d": 5, "e": 0})
            ))
        );
        let mut bytes = Vec::new();
        for i in [0, -1, 63, 64, i64::MIN, i64::MAX] {
            bytes.clear();
            push_int(&mut bytes, i);
            let s = Sample {
                layout: 0,
                bytes: bytes.clone().into(),
                floats: Box::default(),
                reset: None,
                at: Instant::now(),
            };
            assert_eq!(s.nums(), vec![Num::I(i)], "{i}");
        }
    }

    #[test]
    fn a_counter_going_down_or_a_new_stats_reset_is_a_reset() {
        let a = json!({"xact_commit": 10, "stats_reset": "2026-01-01"});
        let down = json!({"xact_commit": 3, "stats_reset": "2026-01-01"});
        let moved = json!({"xact_commit": 30, "stats_reset": "2026-02-01"});
        assert_eq!(twice(a.clone(), down.clone(), &[]), Compared::Reset);
        assert_eq!(twice(a.clone(), moved, &[]), Compared::Reset);
        // A gauge going down is not a reset.
        assert!(matches!(
            twice(a, down, &["xact_commit"]),
            Compared::Deltas { .. }
        ));
    }

    #[test]
    fn a_column_that_comes_or_goes_between_readings_is_compared_by_name() {
        // idx_scan is NULL until a table has an index; a double beside integers.
        let a = json!({"seq_scan": 1, "idx_scan": null, "blk_time": 0.5});
        let b = json!({"seq_scan": 4, "idx_scan": 7, "blk_time": 2.0});
        let c = json!({"seq_scan": 6, "blk_time": 2.5});
        assert_eq!(
            twice(a, b.clone(), &[]).deltas(),
            Some(&row(json!({"seq_scan": 3, "blk_time": 1.5})))
        );
        assert_eq!(
            twice(b, c, &[]).deltas(),
            Some(&row(json!({"seq_scan": 2, "blk_time": 0.5})))
        );
    }

    #[test]
    fn readings_compare_each_row_with_its_own_last_one() {
        let mut r: Readings<u32> = Readings::new(&[]);
        let t0 = Instant::now();
        let t1 = t0 + std::time::Duration::from_secs(60);
        assert_eq!(r.step(1, &row(json!({"n": 1})), t0), Compared::First);
        assert_eq!(r.step(2, &row(json!({"n": 100})), t0), Compared::First);
        let c = r.step(1, &row(json!({"n": 4})), t1);
        assert_eq!(c.deltas(), Some(&row(json!({"n": 3}))));
        assert_eq!(c.interval_s(), Some(60.0));
        r.keep_only(&[1].into_iter().collect());
        assert_eq!(r.len(), 1);
        assert_eq!(r.step(2, &row(json!({"n": 100})), t1), Compared::First);
    }
}
