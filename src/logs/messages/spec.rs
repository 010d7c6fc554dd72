//! A message template's pieces: its literal text and its printf conversions, as
//! PostgreSQL's `snprintf` writes them (`%s`, `%d`, `%ld.%03d`, `%X/%X`, `%.1f%%`,
//! positional `%2$s` in translations, `*` widths taking an argument of their own).
//! Shared by the build script (which indexes templates by their literal head and tail)
//! and the matcher, so both cut a template the same way.

/// What a conversion prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `%d`, `%i` (and their length modifiers): an optional sign and digits.
    Signed,
    /// `%u`, `%lu`, `%zu`: digits.
    Unsigned,
    /// `%x`, `%X`: hexadecimal digits.
    Hex,
    /// `%o`: octal digits.
    Octal,
    /// `%f`, `%.1f`: sign, digits and a point.
    Float,
    /// `%g`: like a float, with an exponent.
    General,
    /// `%c`: one character.
    Char,
    /// `%s`, `%m` (the error's text), `%p`: any text.
    Text,
}

impl Kind {
    /// True when a value of this kind is a number.
    pub fn is_number(self) -> bool {
        !matches!(self, Kind::Char | Kind::Text)
    }
}

/// One piece of a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Literal bytes (a `%%` ends one literal with its `%`; the next starts after it).
    Lit(&'a [u8]),
    /// A conversion: what it prints and which of the call's arguments it prints
    /// (0-based; a `*` width or precision takes an argument before it).
    Conv(Kind, u8),
}

/// The pieces of `t`, in order. A `%` that starts no valid conversion is literal.
pub fn pieces(t: &[u8]) -> Pieces<'_> {
    Pieces {
        t,
        at: 0,
        next_arg: 0,
    }
}

/// Iterator of [`pieces`].
#[derive(Clone)]
pub struct Pieces<'a> {
    t: &'a [u8],
    at: usize,
    next_arg: u8,
}

impl<'a> Iterator for Pieces<'a> {
    type Item = Piece<'a>;

    fn next(&mut self) -> Option<Piece<'a>> {
        let t = self.t;
        let start = self.at;
        if start >= t.len() {
            return None;
        }
        if t[start] != b'%' {
            let end = t[start..]
                .iter()
                .position(|&b| b == b'%')
                .map_or(t.len(), |k| start + k);
            self.at = end;
            return Some(Piece::Lit(&t[start..end]));
        }
        if t.get(start + 1) == Some(&b'%') {
            // "%%" prints one "%": a literal of its own.
            self.at = start + 2;
            return Some(Piece::Lit(&t[start..start + 1]));
        }
        match conversion(t, start + 1, &mut self.next_arg) {
            Some((kind, arg, end)) => {
                self.at = end;
                Some(Piece::Conv(kind, arg))
            }
            None => {
                // Not a conversion: the "%" is text.
                self.at = start + 1;
                Some(Piece::Lit(&t[start..start + 1]))
            }
        }
    }
}

/// Reads `[N$][flags][width][.precision][length]type` from `i` (after the `%`): the
/// kind, the argument it prints and where it ends.
fn conversion(t: &[u8], mut i: usize, next_arg: &mut u8) -> Option<(Kind, u8, usize)> {
    let position = |t: &[u8], i: usize| -> Option<(u8, usize)> {
        let digits = t[i..].iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || t.get(i + digits) != Some(&b'$') {
            return None;
        }
        let n: u8 = std::str::from_utf8(&t[i..i + digits]).ok()?.parse().ok()?;
        Some((n.checked_sub(1)?, i + digits + 1))
    };
    let explicit = position(t, i).map(|(n, end)| {
        i = end;
        n
    });
    while matches!(t.get(i), Some(b'-' | b'+' | b' ' | b'#' | b'0')) {
        i += 1;
    }
    // A `*` width or precision takes an argument (positional: `*N$`).
    let mut star = |t: &[u8], i: &mut usize| {
        if t.get(*i) == Some(&b'*') {
            *i += 1;
            match position(t, *i) {
                Some((_, end)) => *i = end,
                None => *next_arg = next_arg.saturating_add(1),
            }
        } else {
            while t.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
        }
    };
    star(t, &mut i);
    if t.get(i) == Some(&b'.') {
        i += 1;
        star(t, &mut i);
    }
    while matches!(
        t.get(i),
        Some(b'h' | b'l' | b'z' | b'j' | b't' | b'L' | b'q')
    ) {
        i += 1;
    }
    let kind = match t.get(i)? {
        b'd' | b'i' => Kind::Signed,
        b'u' => Kind::Unsigned,
        b'x' | b'X' => Kind::Hex,
        b'o' => Kind::Octal,
        b'f' | b'F' => Kind::Float,
        b'g' | b'G' | b'e' | b'E' => Kind::General,
        b'c' => Kind::Char,
        b's' | b'm' | b'p' => Kind::Text,
        _ => return None,
    };
    // `%m` prints errno's text and takes no argument.
    let arg = if t[i] == b'm' {
        u8::MAX
    } else if let Some(n) = explicit {
        n
    } else {
        let n = *next_arg;
        *next_arg = next_arg.saturating_add(1);
        n
    };
    Some((kind, arg, i + 1))
}

/// The literal bytes before the first `%` (how a template is found by the message's
/// start).
pub fn head(t: &[u8]) -> &[u8] {
    &t[..t.iter().position(|&b| b == b'%').unwrap_or(t.len())]
}

/// The literal bytes after the last `%` and its conversion (how a template that starts
/// with a conversion is found by the message's end).
// The build script indexes templates with it; the agent reads its tables.
#[allow(dead_code)]
pub fn tail(t: &[u8]) -> &[u8] {
    let mut it = pieces(t);
    let mut from = 0;
    loop {
        let before = it.at;
        if it.next().is_none() {
            break;
        }
        // A literal never starts with "%" unless it is a "%%" or a stray "%".
        if t[before] == b'%' {
            from = it.at;
        }
    }
    &t[from..]
}

/// How many bytes of `t` are literal: the more, the more specific the template.
// The build script stores it per template; the agent reads it from the tables.
#[allow(dead_code)]
pub fn literal_len(t: &[u8]) -> usize {
    pieces(t)
        .map(|p| match p {
            Piece::Lit(l) => l.len(),
            Piece::Conv(..) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_tails_and_literal_lengths() {
        let t = b"process %d still waiting for %s on %s after %ld.%03d ms";
        assert_eq!(head(t), b"process ");
        assert_eq!(tail(t), b" ms");
        assert_eq!(literal_len(t), t.len() - 13);
        assert_eq!(tail(b"\"%s\" is not a view"), b"\" is not a view");
        assert_eq!(tail(b"wrote %d buffers (%.1f%%)"), b")");
        assert_eq!(head(b"no conversion"), b"no conversion");
        assert_eq!(tail(b"no conversion"), b"no conversion");
        let p: Vec<Piece> = pieces(b"%2$s: %.*s%m").collect();
        assert_eq!(
            p,
            [
                Piece::Conv(Kind::Text, 1),
                Piece::Lit(b": "),
                Piece::Conv(Kind::Text, 1),
                Piece::Conv(Kind::Text, u8::MAX)
            ]
        );
    }
}
