//! What the log has established about each backend: its user and database.
//!
//! These two are fixed for a session's whole life, so a value read from an unambiguous
//! line of a pid can settle a later ambiguous line of the same pid (a user named
//! `a@b` in a `%u@%d` prefix). The application name is deliberately not kept: a client
//! can change it with `SET` at any moment, to a value that extends the old one with a
//! forged severity, so a name seen earlier proves nothing about a later line.
//!
//! A new session on a reused pid starts with a `connection received` line (forgets the
//! pid) and its `connection authorized: user=… database=…` line names both again.

use std::collections::HashMap;

/// Pids remembered at most; beyond it the table starts again (a bounded cache: losing
/// it only makes some odd lines ambiguous, never wrong).
const MAX_PIDS: usize = 4096;
/// Names longer than the server allows (63 bytes) are not names; not kept.
const MAX_NAME: usize = 64;

/// User and database of one backend, as far as known.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Names {
    /// Session user.
    pub user: Option<Box<str>>,
    /// Database.
    pub database: Option<Box<str>>,
}

/// The sessions the log has shown, by pid.
#[derive(Debug, Default, Clone)]
pub struct Sessions {
    by_pid: HashMap<i64, Names>,
}

impl Sessions {
    /// What is known of `pid`.
    pub fn get(&self, pid: i64) -> Option<&Names> {
        self.by_pid.get(&pid)
    }

    /// Records the user and database of `pid` (either may be unknown: kept as it was).
    pub fn learn(&mut self, pid: i64, user: Option<&str>, database: Option<&str>) {
        let user = user.filter(|s| s.len() <= MAX_NAME);
        let database = database.filter(|s| s.len() <= MAX_NAME);
        if user.is_none() && database.is_none() {
            return;
        }
        // Most lines repeat what is known: no allocation for them.
        if let Some(n) = self.by_pid.get(&pid) {
            let same =
                |new: Option<&str>, old: &Option<Box<str>>| new.is_none() || new == old.as_deref();
            if same(user, &n.user) && same(database, &n.database) {
                return;
            }
        }
        let (user, database) = (user.map(Box::from), database.map(Box::from));
        if self.by_pid.len() >= MAX_PIDS && !self.by_pid.contains_key(&pid) {
            self.by_pid.clear();
        }
        let n = self.by_pid.entry(pid).or_default();
        if user.is_some() {
            n.user = user;
        }
        if database.is_some() {
            n.database = database;
        }
    }

    /// A new session starts on `pid` (or it ended): what was known is stale.
    pub fn forget(&mut self, pid: i64) {
        self.by_pid.remove(&pid);
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
        assert_eq!(s.get(1).and_then(|n| n.user.as_deref()), Some("a@b"));
        assert_eq!(s.get(1).and_then(|n| n.database.as_deref()), Some("shop"));
        s.forget(1);
        assert!(s.get(1).is_none());
        for pid in 0..(MAX_PIDS as i64 + 10) {
            s.learn(pid, Some("u"), None);
        }
        assert!(s.len() <= MAX_PIDS);
        s.learn(7, Some(&"x".repeat(200)), None);
        assert_ne!(
            s.get(7).and_then(|n| n.user.as_deref()).map(str::len),
            Some(200)
        );
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
