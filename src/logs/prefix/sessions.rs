//! What the log has established about each backend: its user and database.
//!
//! These two are fixed for a session's whole life, so a value read from an unambiguous
//! line of a pid can settle a later ambiguous line of the same pid (a user named
//! `a@b` in a `%u@%d` prefix). The application name is deliberately not kept: a client
//! can change it with `SET` at any moment, to a value that extends the old one with a
//! forged severity, so a name seen earlier proves nothing about a later line.
//!
//! A new session on a reused pid starts with a `connection received` line (forgets the
//! pid) and its `connection authorized: user=… database=…` line names both again; a
//! `disconnection` line ends it.
//!
//! The table lives as long as the agent and sees every short-lived backend, so an entry
//! is small (the names are kept once, by number) and a full table drops the half of it
//! whose lines are oldest, not all of it: the sessions still writing stay known.

use std::collections::HashMap;

/// Pids remembered at most (a bounded cache: losing a pid only makes some odd lines
/// ambiguous, never wrong).
const MAX_PIDS: usize = 4096;
/// Distinct names kept at most; beyond it the whole table starts again.
const MAX_NAMES: usize = 1024;
/// Names longer than the server allows (63 bytes) are not names; not kept.
const MAX_NAME: usize = 64;
/// "Not known" in an entry.
const NONE: u32 = u32::MAX;

/// User and database of one backend, as far as known.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Names<'a> {
    /// Session user.
    pub user: Option<&'a str>,
    /// Database.
    pub database: Option<&'a str>,
}

/// One pid: its names by number, and when a line of it last taught or confirmed them.
#[derive(Debug, Clone, Copy)]
struct Entry {
    user: u32,
    database: u32,
    seen: u64,
}

/// The sessions the log has shown, by pid.
#[derive(Debug, Default, Clone)]
pub struct Sessions {
    by_pid: HashMap<u32, Entry>,
    names: Vec<Box<str>>,
    numbers: HashMap<Box<str>, u32>,
    /// Counts calls of [`Sessions::learn`]: the age of an entry.
    clock: u64,
}

impl Sessions {
    /// What is known of `pid`.
    pub fn get(&self, pid: i64) -> Option<Names<'_>> {
        let e = self.by_pid.get(&u32::try_from(pid).ok()?)?;
        Some(Names {
            user: self.name(e.user),
            database: self.name(e.database),
        })
    }

    fn name(&self, n: u32) -> Option<&str> {
        self.names.get(n as usize).map(|s| &**s)
    }

    /// The number of `name`, given one if new (`None` when the names are full).
    fn number(&mut self, name: &str) -> Option<u32> {
        if let Some(n) = self.numbers.get(name) {
            return Some(*n);
        }
        if self.names.len() >= MAX_NAMES {
            return None;
        }
        let n = self.names.len() as u32;
        self.names.push(name.into());
        self.numbers.insert(name.into(), n);
        Some(n)
    }

    /// The numbers of both names (`None` when one does not fit).
    fn numbers_of(
        &mut self,
        user: Option<&str>,
        database: Option<&str>,
    ) -> Option<(Option<u32>, Option<u32>)> {
        let user = match user {
            Some(u) => Some(self.number(u)?),
            None => None,
        };
        let database = match database {
            Some(d) => Some(self.number(d)?),
            None => None,
        };
        Some((user, database))
    }

    /// Records the user and database of `pid` (either may be unknown: kept as it was).
    pub fn learn(&mut self, pid: i64, user: Option<&str>, database: Option<&str>) {
        let user = user.filter(|s| s.len() <= MAX_NAME);
        let database = database.filter(|s| s.len() <= MAX_NAME);
        let Ok(pid) = u32::try_from(pid) else { return };
        if user.is_none() && database.is_none() {
            return;
        }
        self.clock += 1;
        // Most lines repeat what is known: one lookup by pid, the names compared in place.
        let names = &self.names;
        if let Some(e) = self.by_pid.get_mut(&pid) {
            let same = |new: Option<&str>, old: u32| {
                new.is_none() || new == names.get(old as usize).map(|s| &**s)
            };
            if same(user, e.user) && same(database, e.database) {
                e.seen = self.clock;
                return;
            }
        }
        let mut numbers = self.numbers_of(user, database);
        if numbers.is_none() {
            // More distinct names than a cache should hold: start again.
            self.by_pid.clear();
            self.names.clear();
            self.numbers.clear();
            numbers = self.numbers_of(user, database);
        }
        let Some((user, database)) = numbers else {
            return;
        };
        if self.by_pid.len() >= MAX_PIDS && !self.by_pid.contains_key(&pid) {
            self.drop_oldest_half();
        }
        let e = self.by_pid.entry(pid).or_insert(Entry {
            user: NONE,
            database: NONE,
            seen: 0,
        });
        e.seen = self.clock;
        if let Some(u) = user {
            e.user = u;
        }
        if let Some(d) = database {
            e.database = d;
        }
    }

    /// Keeps the half of the pids whose lines came last.
    fn drop_oldest_half(&mut self) {
        let mut seen: Vec<u64> = self.by_pid.values().map(|e| e.seen).collect();
        let mid = seen.len() / 2;
        let (_, median, _) = seen.select_nth_unstable(mid);
        let median = *median;
        self.by_pid.retain(|_, e| e.seen > median);
    }

    /// A new session starts on `pid` (or it ended): what was known is stale.
    pub fn forget(&mut self, pid: i64) {
        if let Ok(pid) = u32::try_from(pid) {
            self.by_pid.remove(&pid);
        }
    }

    /// How many pids are known.
    pub fn len(&self) -> usize {
        self.by_pid.len()
    }

    /// True when nothing is known.
    pub fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
    }
}

/// The user and database named by a `connection authorized: user=U database=D …`
/// message (PostgreSQL 12–18 write the names in this order, unquoted).
pub fn authorized_names(text: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = text.strip_prefix(b"connection authorized: user=")?;
    let d = memchr::memmem::find(rest, b" database=")?;
    let user = &rest[..d];
    let after = &rest[d + 10..];
    let end = [
        &b" application_name="[..],
        b" SSL enabled",
        b" GSS ",
        b" identity=",
    ]
    .iter()
    .filter_map(|m| memchr::memmem::find(after, m))
    .min()
    .unwrap_or(after.len());
    Some((user, &after[..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_forgets_and_stays_bounded() {
        let mut s = Sessions::default();
        s.learn(1, Some("a@b"), None);
        s.learn(1, None, Some("shop"));
        assert_eq!(
            s.get(1),
            Some(Names {
                user: Some("a@b"),
                database: Some("shop")
            })
        );
        s.forget(1);
        assert!(s.get(1).is_none());
        for pid in 0..(MAX_PIDS as i64 + 10) {
            s.learn(pid, Some("u"), None);
        }
        assert!(s.len() <= MAX_PIDS);
        s.learn(7, Some(&"x".repeat(200)), None);
        assert_ne!(s.get(7).and_then(|n| n.user).map(str::len), Some(200));
        assert!(s.get(-1).is_none() && s.get(1 << 40).is_none());
    }

    #[test]
    fn a_full_table_keeps_the_sessions_still_writing() {
        let mut s = Sessions::default();
        // A long-lived session, then a stream of short ones (the agent's own
        // connections, pgbench -C); the long one writes now and then.
        s.learn(1, Some("app"), Some("shop"));
        for pid in 2..(3 * MAX_PIDS as i64) {
            s.learn(pid, Some("agent"), Some("postgres"));
            if pid % 1000 == 0 {
                s.learn(1, Some("app"), None);
            }
        }
        assert_eq!(
            s.get(1),
            Some(Names {
                user: Some("app"),
                database: Some("shop")
            })
        );
        let last = 3 * MAX_PIDS as i64 - 1;
        assert_eq!(s.get(last).and_then(|n| n.user), Some("agent"));
        // Half of the table went at each overflow, the oldest first.
        assert!(s.len() > MAX_PIDS / 2 && s.len() <= MAX_PIDS, "{}", s.len());
        assert!(s.get(2).is_none());
        // Two names, kept once each.
        assert_eq!(s.names.len(), 4);
    }

    #[test]
    fn too_many_names_start_the_table_again() {
        let mut s = Sessions::default();
        for pid in 0..MAX_NAMES as i64 {
            s.learn(pid, Some(&format!("u{pid}")), None);
        }
        assert_eq!(s.len(), MAX_NAMES);
        s.learn(5000, Some("one-more"), Some("db"));
        assert_eq!(s.len(), 1);
        assert_eq!(
            s.get(5000),
            Some(Names {
                user: Some("one-more"),
                database: Some("db")
            })
        );
        assert!(s.get(0).is_none());
    }

    #[test]
    fn names_of_connection_authorized() {
        assert_eq!(
            authorized_names(
                b"connection authorized: user=a b database=shop application_name=psql"
            ),
            Some((&b"a b"[..], &b"shop"[..]))
        );
        assert_eq!(
            authorized_names(
                b"connection authorized: user=u database=d SSL enabled (protocol=TLSv1.3)"
            ),
            Some((&b"u"[..], &b"d"[..]))
        );
        assert_eq!(authorized_names(b"connection received: host=[local]"), None);
    }
}
