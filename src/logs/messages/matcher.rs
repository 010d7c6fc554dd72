//! Does a message read as a template, and with which arguments. A conversion that
//! prints a number takes the run of characters a number is written with; one that
//! prints text takes what lies before the next literal, trying each place that literal
//! occurs (a table named `a" does not exist` must not end the name early), within a
//! budget of attempts so that no message costs more than a bounded amount.

use super::spec::{pieces, Kind, Piece, Pieces};

/// Attempts per match: every place a text conversion could end counts one.
const BUDGET: u32 = 256;

/// One argument found: which argument of the call (a conversion's number), and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// The call's argument (0-based; `u8::MAX` for `%m`).
    pub arg: u8,
    /// What it prints.
    pub kind: Kind,
    /// Start in the message (bytes).
    pub start: u32,
    /// End in the message (bytes).
    pub end: u32,
}

/// True when `text` reads as `template`, with the arguments in `out` in the template's
/// order. A template ending in a line break may match the message's first lines only
/// (the rest is another template's: autovacuum's report is several).
pub fn matches(template: &[u8], text: &[u8], out: &mut Vec<Span>) -> bool {
    out.clear();
    let open_end = template.last() == Some(&b'\n');
    let mut budget = BUDGET;
    step(pieces(template), text, 0, open_end, out, &mut budget)
}

/// Matches the pieces left in `ps` from `pos`. The iterator is a few words: trying
/// another place for a text conversion clones it rather than cutting the template
/// into pieces up front.
fn step(
    mut ps: Pieces<'_>,
    text: &[u8],
    pos: usize,
    open_end: bool,
    out: &mut Vec<Span>,
    budget: &mut u32,
) -> bool {
    let Some(first) = ps.next() else {
        // A line of a longer text may keep its line break.
        return pos == text.len()
            || (pos + 1 == text.len() && text[pos] == b'\n')
            || (open_end && pos > 0 && text[pos - 1] == b'\n');
    };
    match first {
        Piece::Lit(l) => {
            text[pos..].starts_with(l) && step(ps, text, pos + l.len(), open_end, out, budget)
        }
        Piece::Conv(kind, arg) if kind != Kind::Text => {
            let run = number_run(kind, &text[pos..]);
            if run == 0 {
                return false;
            }
            push(out, arg, kind, pos, pos + run);
            let mark = out.len();
            if step(ps, text, pos + run, open_end, out, budget) {
                return true;
            }
            out.truncate(mark - 1);
            false
        }
        Piece::Conv(kind, arg) => {
            let mark = out.len();
            match ps.clone().next() {
                // The last piece: the text runs to the message's end.
                None => {
                    push(out, arg, kind, pos, text.len());
                    true
                }
                Some(Piece::Lit(l)) => {
                    let finder = memchr::memmem::find_iter(&text[pos..], l);
                    for k in finder {
                        if *budget == 0 {
                            break;
                        }
                        *budget -= 1;
                        push(out, arg, kind, pos, pos + k);
                        if step(ps.clone(), text, pos + k, open_end, out, budget) {
                            return true;
                        }
                        out.truncate(mark);
                    }
                    false
                }
                // Two conversions side by side ("%s%s"): each place a character ends,
                // from the shortest.
                Some(Piece::Conv(..)) => {
                    let mut end = pos;
                    loop {
                        if *budget == 0 {
                            return false;
                        }
                        *budget -= 1;
                        push(out, arg, kind, pos, end);
                        if step(ps.clone(), text, end, open_end, out, budget) {
                            return true;
                        }
                        out.truncate(mark);
                        if end >= text.len() {
                            return false;
                        }
                        end += utf8_len(text[end]);
                    }
                }
            }
        }
    }
}

fn push(out: &mut Vec<Span>, arg: u8, kind: Kind, start: usize, end: usize) {
    out.push(Span {
        arg,
        kind,
        start: start as u32,
        end: end as u32,
    });
}

/// How many bytes at the start of `b` a number of this kind is written with.
fn number_run(kind: Kind, b: &[u8]) -> usize {
    let sign = usize::from(
        matches!(kind, Kind::Signed | Kind::Float | Kind::General) && b.first() == Some(&b'-'),
    );
    let body = &b[sign..];
    let n = match kind {
        Kind::Signed | Kind::Unsigned => body.iter().take_while(|c| c.is_ascii_digit()).count(),
        Kind::Hex => body.iter().take_while(|c| c.is_ascii_hexdigit()).count(),
        Kind::Octal => body
            .iter()
            .take_while(|c| (b'0'..=b'7').contains(c))
            .count(),
        Kind::Float => {
            if let Some(w) = special_float(body) {
                w
            } else {
                body.iter()
                    .take_while(|c| c.is_ascii_digit() || **c == b'.')
                    .count()
            }
        }
        Kind::General => {
            if let Some(w) = special_float(body) {
                w
            } else {
                let mut n = 0;
                while n < body.len() {
                    let c = body[n];
                    let exp_sign =
                        (c == b'+' || c == b'-') && n > 0 && matches!(body[n - 1], b'e' | b'E');
                    if c.is_ascii_digit() || c == b'.' || c == b'e' || c == b'E' || exp_sign {
                        n += 1;
                    } else {
                        break;
                    }
                }
                n
            }
        }
        Kind::Char => return b.first().map_or(0, |&c| utf8_len(c).min(b.len())),
        Kind::Text => 0,
    };
    if n == 0 {
        0
    } else {
        sign + n
    }
}

fn special_float(b: &[u8]) -> Option<usize> {
    ["Infinity", "inf", "NaN", "nan"]
        .iter()
        .find(|w| b.starts_with(w.as_bytes()))
        .map(|w| w.len())
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xF0..=0xF7 => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(t: &str, m: &str) -> Option<Vec<String>> {
        let mut out = Vec::new();
        matches(t.as_bytes(), m.as_bytes(), &mut out).then(|| {
            out.iter()
                .map(|s| m[s.start as usize..s.end as usize].to_string())
                .collect()
        })
    }

    #[test]
    fn text_and_numbers() {
        assert_eq!(
            args(
                "relation \"%s\" does not exist",
                "relation \"t1\" does not exist"
            ),
            Some(vec!["t1".into()])
        );
        // A name holding the literal that follows it: the later place is tried too.
        assert_eq!(
            args(
                "relation \"%s\" does not exist",
                "relation \"a\" does not exist\" does not exist"
            ),
            Some(vec!["a\" does not exist".into()])
        );
        assert_eq!(
            args(
                "process %d still waiting for %s on %s after %ld.%03d ms",
                "process 12 still waiting for ShareLock on transaction 7 after 1000.123 ms"
            ),
            Some(vec![
                "12".into(),
                "ShareLock".into(),
                "transaction 7".into(),
                "1000".into(),
                "123".into()
            ])
        );
        assert_eq!(
            args("wrote %d buffers (%.1f%%)", "wrote 3 buffers (0.0%)"),
            Some(vec!["3".into(), "0.0".into()])
        );
        assert_eq!(
            args("at %X/%X", "at 0/1A2B3C4"),
            Some(vec!["0".into(), "1A2B3C4".into()])
        );
        assert_eq!(args("count %d", "count x"), None);
        assert_eq!(args("count %d", "count 5 more"), None);
        assert_eq!(args("no conversion", "no conversion"), Some(vec![]));
        assert_eq!(args("no conversion", "no conversion!"), None);
    }

    #[test]
    fn a_template_ending_in_a_line_break_may_be_the_first_lines() {
        let m = "automatic vacuum of table \"d.s.t\": index scans: 0\npages: 0 removed, 1 remain";
        assert_eq!(
            args(
                "automatic vacuum of table \"%s.%s.%s\": index scans: %d\n",
                m
            ),
            Some(vec!["d".into(), "s".into(), "t".into(), "0".into()])
        );
        assert_eq!(args("index scans: %d", "index scans: 0\nmore"), None);
    }

    #[test]
    fn side_by_side_conversions_and_positional_arguments() {
        assert_eq!(
            args("starting:%s%s", "starting: time"),
            Some(vec!["".into(), " time".into()])
        );
        let mut out = Vec::new();
        assert!(matches(b"%2$s von %1$s", "b von a".as_bytes(), &mut out));
        assert_eq!((out[0].arg, out[1].arg), (1, 0));
    }

    #[test]
    fn the_budget_bounds_a_hostile_message() {
        // Every "x" is a place the first text could end; none matches in the end.
        let m = "a".to_string() + &"x".repeat(10_000) + "!";
        assert_eq!(args("a%sx%sx%sx%s?", &m), None);
    }
}
