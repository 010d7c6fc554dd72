//! Reading a line back through a compiled prefix, in time linear in the line whatever
//! its fields contain, and finding *every* way it can be read.
//!
//! A client writes `application_name` (and, before authentication, the user and
//! database names), so a free-text field may hold the literal that follows it, a
//! severity label, or a whole forged prefix. Backtracking over such fields is
//! exponential and, worse, stops at the first reading that fits, which may be the
//! forged one. Instead:
//!
//! 1. *Splits*: every place where a label (`LOG:  `) could start the message body. The
//!    prefix must end exactly there.
//! 2. *Forward*: the set of positions each element boundary of the prefix can be at
//!    (a free-text field reaches every position after its start: a set `from x`; a
//!    literal keeps the positions where it occurs; a shaped field maps each position to
//!    its possible ends). One pass per element, linear in the line.
//! 3. *Backward*: from each split the prefix can end at, walk back through positions the
//!    forward pass reached, so every walk completes into a full reading; stop after a
//!    few. One reading means the line is unambiguous; several are compared by the caller.

use super::sessions::{self, Names, Sessions};
use super::{shape, Elem, Escape};

/// Readings enumerated before a line is declared ambiguous without looking further.
pub const MAX_PARSES: usize = 8;

/// The longest user or database name the server writes (NAMEDATALEN - 1).
const MAX_NAME: usize = 63;

/// Escapes of one prefix that are read back (more are matched but not kept).
const MAX_SPANS: usize = 24;

/// Where the fields of one reading are (on the stack, copied per reading: kept small,
/// positions as `u32` since a line is read in pieces far below 4 GiB).
#[derive(Clone, Copy)]
pub struct Spans {
    fields: [(Escape, u32, u32); MAX_SPANS],
    len: usize,
}

impl Spans {
    pub fn new() -> Spans {
        Spans {
            fields: [(Escape::Pid, 0, 0); MAX_SPANS],
            len: 0,
        }
    }

    /// Adds a field; false (and nothing kept) beyond [`MAX_SPANS`].
    pub fn push(&mut self, (esc, s, e): (Escape, usize, usize)) -> bool {
        if self.len < MAX_SPANS {
            self.fields[self.len] = (esc, s as u32, e as u32);
            self.len += 1;
            return true;
        }
        false
    }

    fn pop(&mut self) {
        self.len = self.len.saturating_sub(1);
    }

    /// The fields as (escape, start, end).
    pub fn iter(&self) -> impl Iterator<Item = (Escape, usize, usize)> + '_ {
        self.fields[..self.len]
            .iter()
            .map(|&(e, s, t)| (e, s as usize, t as usize))
    }
}

/// Where a message body could start: `LABEL:  text`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// Start of the label (the prefix ends here).
    pub at: usize,
    /// Length of the label.
    pub label_len: usize,
    /// Start of the text after `:  `.
    pub text: usize,
}

/// One complete reading of a line.
#[derive(Clone, Copy)]
pub struct Parse {
    /// Where its body starts.
    pub split: Split,
    /// Its fields.
    pub spans: Spans,
}

/// Positions one element boundary can be at.
#[derive(Debug, Default, Clone)]
struct Reach {
    /// Every position from here on (after a free-text field).
    from: Option<usize>,
    /// Otherwise these, ascending, without repeats.
    points: Vec<usize>,
    /// After a shaped field: (start, end) of each way it was read, so the walk back
    /// does not scan it again.
    edges: Vec<(usize, usize)>,
}

impl Reach {
    fn clear(&mut self) {
        self.from = None;
        self.points.clear();
        self.edges.clear();
    }

    fn is_empty(&self) -> bool {
        self.from.is_none() && self.points.is_empty()
    }

    fn contains(&self, p: usize) -> bool {
        match self.from {
            Some(x) => p >= x,
            None => self.points.binary_search(&p).is_ok(),
        }
    }

    fn min(&self) -> Option<usize> {
        self.from.or_else(|| self.points.first().copied())
    }

    /// The positions up to `q`, highest first.
    fn upto(&self, q: usize) -> impl Iterator<Item = usize> + '_ {
        let (range, pts) = match self.from {
            Some(x) if x <= q => (x..q + 1, &self.points[..0]),
            Some(_) => (0..0, &self.points[..0]),
            None => {
                let n = self.points.partition_point(|p| *p <= q);
                (0..0, &self.points[..n])
            }
        };
        range.rev().chain(pts.iter().rev().copied())
    }
}

/// Buffers reused from line to line (no allocation per line once warm).
#[derive(Default)]
pub struct Scratch {
    reach: Vec<Reach>,
    /// Candidate splits of the tier being tried.
    pub splits: Vec<Split>,
    /// Readings found.
    pub parses: Vec<Parse>,
    /// Where the run of boundaries that only one position can be at ends: the fields
    /// before it are the same in every reading, even when too many exist to list.
    pub certain: usize,
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scratch")
    }
}

/// Whether a field may hold any text.
pub fn free_text(esc: Escape) -> bool {
    matches!(
        esc,
        Escape::App
            | Escape::User
            | Escape::Database
            | Escape::RemoteHostPort
            | Escape::RemoteHost
            | Escape::LocalAddress
            | Escape::BackendType
            | Escape::CommandTag
    )
}

/// Fields the server fills with an address or a host name, never with a space (host
/// names from DNS are checked by the resolver).
fn spaceless(esc: Escape) -> bool {
    matches!(
        esc,
        Escape::RemoteHost | Escape::RemoteHostPort | Escape::LocalAddress
    )
}

impl Scratch {
    /// Adds to `parses` the readings of `line` that end at one of `splits`, through
    /// `elems` and, for non-session processes, through `elems[..q_at]` (one forward
    /// pass serves both: the cut prefix is a prefix of the whole). False when more
    /// than [`MAX_PARSES`] exist (then `parses` holds some).
    pub fn read(
        &mut self,
        elems: &[Elem],
        q_at: Option<usize>,
        line: &[u8],
        sessions: &Sessions,
    ) -> bool {
        let Some(limit) = self.splits.iter().map(|s| s.at).max() else {
            return true;
        };
        let reached = forward(elems, q_at, line, limit, &mut self.reach);
        let lead = self.reach[..=reached]
            .iter()
            .take_while(|r| r.from.is_none() && r.points.len() == 1)
            .count();
        self.certain = lead.checked_sub(1).map_or(0, |j| self.reach[j].points[0]);
        // The pid, when it precedes every free field (it usually does): what the log
        // showed of its session narrows the readings as they are walked.
        let pid = (0..lead.saturating_sub(1)).find_map(|i| match elems[i] {
            Elem::Field {
                esc: Escape::Pid, ..
            } => {
                let v = &line[self.reach[i].points[0]..self.reach[i + 1].points[0]];
                std::str::from_utf8(v.trim_ascii())
                    .ok()?
                    .parse::<i64>()
                    .ok()
            }
            _ => None,
        });
        let session = pid.and_then(|p| sessions.get(p));
        let first = self.parses.len();
        for use_known in [true, false] {
            let mut constrained = false;
            for k in [Some(elems.len()), q_at].into_iter().flatten() {
                if k > reached {
                    continue;
                }
                for split in &self.splits {
                    if !self.reach[k].contains(split.at) {
                        continue;
                    }
                    let known = if use_known {
                        Known::of(&line[split.text.min(line.len())..], session)
                    } else {
                        Known::default()
                    };
                    constrained |= known.user.is_some() || known.database.is_some();
                    let walk = Walk {
                        elems,
                        line,
                        reach: &self.reach,
                        known,
                    };
                    let mut spans = Spans::new();
                    if !walk.back(k, split.at, *split, &mut spans, &mut self.parses) {
                        return false;
                    }
                }
            }
            // Knowledge that leaves no reading at all is stale (a pid reused without a
            // logged connection): read again without it.
            if self.parses.len() > first || !constrained {
                break;
            }
        }
        true
    }
}

impl Scratch {
    /// True when `line` can start with all of `elems` (nothing after them required).
    pub fn starts_with(&mut self, elems: &[Elem], line: &[u8]) -> bool {
        forward(elems, None, line, line.len(), &mut self.reach) == elems.len()
    }
}

/// What is known of the session a line belongs to: readings that name another user or
/// database are not what the server wrote.
#[derive(Debug, Default, Clone, Copy)]
pub struct Known<'a> {
    user: Option<&'a [u8]>,
    database: Option<&'a [u8]>,
}

impl<'a> Known<'a> {
    /// From the message itself when it is the session's `connection authorized` line
    /// (which names both), else from what earlier lines of the pid showed.
    fn of(text: &'a [u8], session: Option<Names<'a>>) -> Known<'a> {
        if let Some((user, database)) = sessions::authorized_names(text) {
            return Known {
                user: Some(user),
                database: Some(database),
            };
        }
        session.map_or_else(Known::default, |n| Known {
            user: n.user.map(str::as_bytes),
            database: n.database.map(str::as_bytes),
        })
    }

    fn allows(&self, esc: Escape, v: &[u8]) -> bool {
        let k = match esc {
            Escape::User => self.user,
            Escape::Database => self.database,
            _ => None,
        };
        k.is_none_or(|k| k == v)
    }
}

/// Fills `reach[i]` with the positions after element `i - 1`; returns the last
/// boundary reached (`elems.len()` when the whole prefix can match).
fn forward(
    elems: &[Elem],
    q_at: Option<usize>,
    line: &[u8],
    limit: usize,
    reach: &mut Vec<Reach>,
) -> usize {
    if reach.len() < elems.len() + 1 {
        reach.resize_with(elems.len() + 1, Reach::default);
    }
    reach[0].clear();
    reach[0].points.push(0);
    let limit = limit.min(line.len());
    for (i, e) in elems.iter().enumerate() {
        let (done, rest) = reach.split_at_mut(i + 1);
        let (cur, next) = (&done[i], &mut rest[0]);
        next.clear();
        match e {
            Elem::Lit(l) => match cur.from {
                Some(x) if x <= limit => {
                    // Every occurrence, overlapping ones too (",," in ",,,").
                    let mut at = x;
                    while let Some(q) = l.0.find(&line[at..limit]) {
                        next.points.push(at + q + l.len());
                        at += q + 1;
                    }
                }
                Some(_) => {}
                None => next.points.extend(
                    cur.points
                        .iter()
                        .filter(|p| **p + l.len() <= limit && line[**p..].starts_with(l))
                        .map(|p| p + l.len()),
                ),
            },
            Elem::Field { esc, pad } if free_text(*esc) => {
                next.from = cur.min().map(|m| m + pad).filter(|m| *m <= limit);
            }
            Elem::Field { esc, pad } => {
                // The literal that follows bounds a trailing run, unless the prefix of
                // non-session processes ends here and a label may follow directly.
                let nb = match elems.get(i + 1) {
                    Some(Elem::Lit(l)) if q_at != Some(i + 1) => l.first().copied(),
                    _ => None,
                };
                let starts = match cur.from {
                    Some(x) => x..limit + 1,
                    None => 0..0,
                };
                for p in starts.chain(cur.points.iter().copied()) {
                    shape::ends(*esc, line, p, *pad, nb, &mut |e| {
                        if e <= limit {
                            next.edges.push((p, e));
                        }
                    });
                }
                next.points.extend(next.edges.iter().map(|e| e.1));
                next.points.sort_unstable();
                next.points.dedup();
            }
        }
        if next.is_empty() {
            return i;
        }
    }
    elems.len()
}

struct Walk<'a> {
    elems: &'a [Elem],
    line: &'a [u8],
    reach: &'a [Reach],
    known: Known<'a>,
}

impl Walk<'_> {
    /// Completes readings of elements `..i` ending at `q`; false once more than
    /// [`MAX_PARSES`] were found.
    fn back(
        &self,
        i: usize,
        q: usize,
        split: Split,
        spans: &mut Spans,
        out: &mut Vec<Parse>,
    ) -> bool {
        if i == 0 {
            if q == 0 {
                out.push(Parse {
                    split,
                    spans: *spans,
                });
            }
            return out.len() <= MAX_PARSES;
        }
        let before = &self.reach[i - 1];
        match &self.elems[i - 1] {
            Elem::Lit(l) => {
                if q >= l.len()
                    && self.line[q - l.len()..q] == l[..]
                    && before.contains(q - l.len())
                {
                    return self.back(i - 1, q - l.len(), split, spans, out);
                }
                true
            }
            Elem::Field { esc, pad } if free_text(*esc) => {
                let Some(top) = q.checked_sub(*pad) else {
                    return true;
                };
                for p in before.upto(top) {
                    // Starts come nearest first: once a host holds a space, every
                    // longer reading does too.
                    if spaceless(*esc) && self.line[p..q].trim_ascii().contains(&b' ') {
                        break;
                    }
                    if !self.field(*esc, *pad, p, q, i, split, spans, out) {
                        return false;
                    }
                }
                true
            }
            Elem::Field { esc, pad } => {
                for &(p, _) in self.reach[i].edges.iter().filter(|e| e.1 == q) {
                    if !self.field(*esc, *pad, p, q, i, split, spans, out) {
                        return false;
                    }
                }
                true
            }
        }
    }

    /// Takes field `esc` as `p..q` and walks on.
    #[allow(clippy::too_many_arguments)]
    fn field(
        &self,
        esc: Escape,
        pad: usize,
        p: usize,
        q: usize,
        i: usize,
        split: Split,
        spans: &mut Spans,
        out: &mut Vec<Parse>,
    ) -> bool {
        // Padding is spaces around the value; an unpadded value is kept as written,
        // spaces and all.
        let (s, e) = if pad > 0 {
            trim(self.line, p, q)
        } else {
            (p, q)
        };
        // The server cuts user and database names to NAMEDATALEN - 1 bytes: a longer
        // reading is not what it wrote.
        if matches!(esc, Escape::User | Escape::Database)
            && (e - s > MAX_NAME || !self.known.allows(esc, &self.line[s..e]))
        {
            return true;
        }
        let kept = spans.push((esc, s, e));
        let more = self.back(i - 1, p, split, spans, out);
        if kept {
            spans.pop();
        }
        more
    }
}

/// The bounds of `line[p..q]` without its leading and trailing spaces.
fn trim(line: &[u8], mut p: usize, mut q: usize) -> (usize, usize) {
    while p < q && line[p] == b' ' {
        p += 1;
    }
    while q > p && line[q - 1] == b' ' {
        q -= 1;
    }
    (p, q)
}
