//! Fields whose shape the server fixes (pids, time stamps, SQLSTATEs, …): where such a
//! field starting at a position may end. Free-text fields (names, hosts) have no shape
//! and are handled by the matcher.

use super::Escape;

/// Calls `emit` with every position where a field `esc` starting at `p` can end
/// (padding included). Usually one; a trailing run (digits of `%p`, the zone of `%t`)
/// that the next literal could also start yields every length, unless `next` — the first
/// byte of the literal that follows, when one does — cannot be part of the run.
pub fn ends(
    esc: Escape,
    line: &[u8],
    p: usize,
    pad: usize,
    next: Option<u8>,
    emit: &mut impl FnMut(usize),
) {
    let mut q = p;
    // Right-aligned padding puts spaces first.
    while q < line.len() && line[q] == b' ' && q < p + pad {
        q += 1;
    }
    // A value shorter than the width is padded to it: a span short of it is not one.
    let mut out = |e: usize| {
        let e = pad_end(line, e, p, pad);
        if e >= p + pad {
            emit(e);
        }
    };
    // (fixed part end, run kind, minimum run length)
    let (fixed, run, min) = match esc {
        Escape::Time | Escape::SessionStart => match timestamp(line, q, false) {
            Some(z) => (z, Run::Zone, 1),
            None => return,
        },
        Escape::TimeMs => match timestamp(line, q, true) {
            Some(z) => (z, Run::Zone, 1),
            None => return,
        },
        Escape::Pid | Escape::SessionLine | Escape::Xid => (q, Run::Digits, 1),
        // Empty outside parallel workers.
        Escape::LeaderPid => (q, Run::Digits, 0),
        Escape::QueryId => (q + usize::from(line.get(q) == Some(&b'-')), Run::Digits, 1),
        Escape::Epoch => match run_len(line, q, Run::Digits) {
            n if n > 0 && line.get(q + n) == Some(&b'.') => (q + n + 1, Run::Digits, 1),
            _ => return,
        },
        Escape::SqlState => {
            let e = q + 5;
            if e <= line.len()
                && line[q..e]
                    .iter()
                    .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
            {
                out(e);
            }
            return;
        }
        Escape::SessionId => match run_len(line, q, Run::Hex) {
            n if n > 0 && line.get(q + n) == Some(&b'.') => (q + n + 1, Run::Hex, 1),
            _ => return,
        },
        // "3/12", or nothing for processes without a proc entry.
        Escape::Vxid => match run_len(line, q, Run::Digits) {
            n if n > 0 && line.get(q + n) == Some(&b'/') => (q + n + 1, Run::Digits, 1),
            _ => {
                out(q);
                return;
            }
        },
        _ => return,
    };
    let n = run_len(line, fixed, run);
    if n < min {
        return;
    }
    let only_longest = next.is_some_and(|b| !run.has(b));
    let shortest = if only_longest { n } else { min.max(1).min(n) };
    for len in (shortest..=n).rev() {
        out(fixed + len);
    }
    if min == 0 && n > 0 && !only_longest {
        out(fixed);
    }
}

/// Left-aligned padding puts spaces after the value.
fn pad_end(line: &[u8], mut e: usize, p: usize, pad: usize) -> usize {
    while e < line.len() && e < p + pad && line[e] == b' ' {
        e += 1;
    }
    e
}

#[derive(Clone, Copy)]
enum Run {
    Digits,
    Hex,
    /// A zone abbreviation as the server writes it: `UTC`, `CEST`, `-03`, `+0530`.
    Zone,
}

impl Run {
    fn has(self, c: u8) -> bool {
        match self {
            Run::Digits => c.is_ascii_digit(),
            Run::Hex => c.is_ascii_hexdigit(),
            Run::Zone => c.is_ascii_alphanumeric() || c == b'+' || c == b'-',
        }
    }
}

fn run_len(line: &[u8], p: usize, run: Run) -> usize {
    line.get(p..)
        .map_or(0, |s| s.iter().take_while(|c| run.has(**c)).count())
}

/// `YYYY-MM-DD HH:MM:SS[.mmm] ` at `p`; returns where the zone starts.
fn timestamp(line: &[u8], p: usize, ms: bool) -> Option<usize> {
    const SHAPE: &[u8; 19] = b"0000-00-00 00:00:00";
    let s = line.get(p..p + 19)?;
    let fits = s.iter().zip(SHAPE).all(|(c, m)| {
        if *m == b'0' {
            c.is_ascii_digit()
        } else {
            c == m
        }
    });
    if !fits {
        return None;
    }
    let mut q = p + 19;
    if ms {
        if line.get(q) != Some(&b'.') {
            return None;
        }
        let n = run_len(line, q + 1, Run::Digits);
        if n == 0 {
            return None;
        }
        q += 1 + n;
    }
    (line.get(q) == Some(&b' ')).then_some(q + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(esc: Escape, line: &str, pad: usize, next: Option<u8>) -> Vec<usize> {
        let mut v = Vec::new();
        ends(esc, line.as_bytes(), 0, pad, next, &mut |e| v.push(e));
        v
    }

    #[test]
    fn zones_of_every_shape_and_a_colon_after_them() {
        let t = "2026-11-26 17:35:07 UTC::@:[1]:";
        assert_eq!(all(Escape::Time, t, 0, Some(b':')), vec![23]);
        assert_eq!(
            all(Escape::Time, "2026-11-26 17:35:07 -03 [1]", 0, Some(b' ')),
            vec![23]
        );
        assert_eq!(
            all(
                Escape::TimeMs,
                "2026-11-26 17:35:07.5 CEST [1]",
                0,
                Some(b' ')
            ),
            vec![26]
        );
        assert_eq!(
            all(Escape::Time, "2026-11-26 17:35:07 +0530-", 0, None),
            vec![26, 25, 24, 23, 22, 21]
        );
        assert!(all(Escape::Time, "2026-11-26 17:35:07", 0, None).is_empty());
    }

    #[test]
    fn digits_padding_and_empty_fields() {
        assert_eq!(all(Escape::Pid, "123]", 0, Some(b']')), vec![3]);
        assert_eq!(all(Escape::Pid, "123", 0, None), vec![3, 2, 1]);
        assert_eq!(all(Escape::Pid, "12345", 4, None), vec![5, 4]);
        assert_eq!(all(Escape::Pid, "   12 x", 5, Some(b' ')), vec![5]);
        assert_eq!(all(Escape::Pid, "12    x", 5, Some(b'x')), vec![5]);
        assert_eq!(all(Escape::LeaderPid, "|", 0, Some(b'|')), vec![0]);
        assert_eq!(all(Escape::Vxid, "3/14 ", 0, Some(b' ')), vec![4]);
        assert_eq!(all(Escape::Vxid, " ", 0, Some(b' ')), vec![0]);
        assert_eq!(all(Escape::QueryId, "-42|", 0, Some(b'|')), vec![3]);
        assert_eq!(all(Escape::SessionId, "6745f1.4d ", 0, Some(b' ')), vec![9]);
        assert_eq!(all(Escape::SqlState, "42P01 ", 0, Some(b' ')), vec![5]);
        assert!(all(Escape::SqlState, "42p0", 0, None).is_empty());
        assert_eq!(
            all(Escape::Epoch, "1764178507.123 ", 0, Some(b' ')),
            vec![14]
        );
    }
}
