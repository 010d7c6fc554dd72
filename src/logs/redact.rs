//! `[logs] redact`: bind parameters and literals out of what is shipped.

/// How much to take out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redact {
    /// Ship as written.
    None,
    /// Values of `parameters: $1 = '…'` lines become `?`.
    Parameters,
    /// Also string and number literals in statements and messages, and the values in
    /// `Key (…)=(…)` / `Failing row contains (…)` details.
    Literals,
}

impl Redact {
    /// From the config value (validated at load).
    pub fn parse(s: &str) -> Option<Redact> {
        match s {
            "none" => Some(Redact::None),
            "parameters" => Some(Redact::Parameters),
            "literals" => Some(Redact::Literals),
            _ => None,
        }
    }
}

/// `parameters: $1 = 'x', $2 = '42'` → `parameters: $1 = ?, $2 = ?`, wherever
/// `parameters: ` appears (DETAIL of a logged statement, CONTEXT of an error).
pub fn parameters(s: &str) -> Option<String> {
    let at = s.find("parameters: ")?;
    let mut out = String::with_capacity(s.len());
    out.push_str(&s[..at + "parameters: ".len()]);
    let b = s.as_bytes();
    let mut i = at + "parameters: ".len();
    while i < b.len() {
        if b[i..].starts_with(b" = '") {
            out.push_str(" = ?");
            i = skip_quoted(b, i + 3, b'\'');
        } else if b[i..].starts_with(b" = NULL") {
            out.push_str(" = ?");
            i += 7;
        } else {
            let ch = s[i..].chars().next().unwrap_or(' ');
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    Some(out)
}

/// What takes the place of a password.
const MASK: &str = "'***'";

/// Passwords out of SQL and connection strings, whatever `[logs] redact` says: the value
/// after `PASSWORD` (`CREATE/ALTER ROLE … PASSWORD '…'`, a user mapping's `OPTIONS
/// (password '…')`) and after `password=` in a connection string (`dblink`, `CREATE
/// SUBSCRIPTION … CONNECTION '…'`). `None` when there is none (no allocation).
pub fn passwords(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while let Some(k) = memchr::memchr2(b'p', b'P', &b[i..]).map(|k| i + k) {
        i = k + 1;
        let word = b
            .get(k..k + 8)
            .is_some_and(|w| w.eq_ignore_ascii_case(b"password"));
        let alone = k == 0 || !(b[k - 1].is_ascii_alphanumeric() || b[k - 1] == b'_');
        if !word || !alone {
            continue;
        }
        let mut j = k + 8;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        let conninfo = b.get(j) == Some(&b'=');
        let (from, to) = match b.get(j) {
            Some(b'=') => {
                let mut v = j + 1;
                while v < b.len() && b[v] == b' ' {
                    v += 1;
                }
                match b.get(v) {
                    Some(q @ (b'\'' | b'"')) => (v, skip_quoted(b, v, *q)),
                    Some(_) => {
                        let end = b[v..]
                            .iter()
                            .position(|c| {
                                c.is_ascii_whitespace() || matches!(c, b'\'' | b'"' | b')' | b',')
                            })
                            .map_or(b.len(), |e| v + e);
                        (v, end)
                    }
                    None => continue,
                }
            }
            Some(b'\'') => (j, skip_quoted(b, j, b'\'')),
            Some(b'E' | b'e') if b.get(j + 1) == Some(&b'\'') => (j, skip_escaped(b, j + 1)),
            Some(b'$') => match dollar_quoted(b, j) {
                Some(end) => (j, end),
                None => continue,
            },
            _ => continue,
        };
        if to <= from {
            continue;
        }
        let o = out.get_or_insert_with(|| String::with_capacity(s.len()));
        o.push_str(&s[copied..from]);
        o.push_str(if conninfo { "***" } else { MASK });
        copied = to;
        i = to;
    }
    let mut o = out?;
    o.push_str(&s[copied..]);
    Some(o)
}

/// Index after the quoted string starting at `b[start] == q` (doubled quotes escape).
pub(crate) fn skip_quoted(b: &[u8], start: usize, q: u8) -> usize {
    let mut i = start + 1;
    while i < b.len() {
        if b[i] == q {
            if b.get(i + 1) == Some(&q) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    b.len()
}

/// Replaces string literals (`'…'`, `E'…'`, `$tag$…$tag$`) and numbers with `?`;
/// identifiers (`"…"`, words with digits) and `$1` placeholders stay.
pub fn literals(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut copied = 0;
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    while i < b.len() {
        let c = b[i];
        let prev_ident = i > 0 && ident(b[i - 1]);
        let repl = if c == b'"' {
            i = skip_quoted(b, i, b'"');
            continue;
        } else if c == b'\'' {
            let escaped = i > 0 && matches!(b[i - 1], b'E' | b'e') && !(i > 1 && ident(b[i - 2]));
            let start = if escaped { i - 1 } else { i };
            let end = if escaped {
                skip_escaped(b, i)
            } else {
                skip_quoted(b, i, b'\'')
            };
            Some((start, end))
        } else if c == b'$' && !prev_ident {
            dollar_quoted(b, i).map(|end| (i, end))
        } else if c.is_ascii_digit() && !prev_ident {
            let mut j = i;
            while j < b.len() && (b[j].is_ascii_digit() || b[j] == b'.') {
                j += 1;
            }
            if j < b.len() && matches!(b[j], b'e' | b'E') {
                let k = j + 1 + usize::from(matches!(b.get(j + 1), Some(b'+' | b'-')));
                if b.get(k).is_some_and(u8::is_ascii_digit) {
                    j = k;
                    while j < b.len() && b[j].is_ascii_digit() {
                        j += 1;
                    }
                }
            }
            // "t1x" style words are identifiers, not numbers.
            if j < b.len() && ident(b[j]) && b[j] != b'$' {
                while j < b.len() && ident(b[j]) {
                    j += 1;
                }
                i = j;
                continue;
            }
            Some((i, j))
        } else {
            None
        };
        match repl {
            Some((start, end)) => {
                out.push_str(&s[copied..start]);
                out.push('?');
                copied = end;
                i = end;
            }
            None => i += 1,
        }
    }
    out.push_str(&s[copied..]);
    out
}

/// End of `E'…'` with backslash escapes; `i` is at the quote.
pub(crate) fn skip_escaped(b: &[u8], i: usize) -> usize {
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            b'\'' if b.get(j + 1) == Some(&b'\'') => j += 2,
            b'\'' => return j + 1,
            _ => j += 1,
        }
    }
    b.len()
}

/// End of a dollar-quoted string starting at `i` (`$$…$$`, `$tag$…$tag$`), or `None` for
/// a `$1` placeholder or a lone `$`.
pub(crate) fn dollar_quoted(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < b.len()
        && (b[j].is_ascii_alphabetic() || b[j] == b'_' || (j > i + 1 && b[j].is_ascii_digit()))
    {
        j += 1;
    }
    if b.get(j) != Some(&b'$') {
        return None;
    }
    let tag = &b[i..=j];
    let body = j + 1;
    let end = memchr::memmem::find(&b[body..], tag).map_or(b.len(), |n| body + n + tag.len());
    Some(end)
}

/// Detail lines that show row values: `Key (email)=(a@b.c) already exists.`,
/// `Failing row contains (1, secret).`
pub fn row_values(s: &str) -> String {
    let mut out = s.to_string();
    for (head, close) in [(")=(", ")"), ("Failing row contains (", ")")] {
        let mut from = 0;
        while let Some(at) = out[from..].find(head).map(|n| n + from) {
            let v = at + head.len();
            let Some(end) = out[v..].rfind(close).map(|n| n + v) else {
                break;
            };
            out.replace_range(v..end, "?");
            from = v + 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_pass() {
        let cases = [
            (
                "ALTER ROLE app PASSWORD 'hunter2'",
                "ALTER ROLE app PASSWORD '***'",
            ),
            (
                "create role x login password  'it''s'",
                "create role x login password  '***'",
            ),
            (
                "ALTER USER u WITH ENCRYPTED PASSWORD E'a\\'b' VALID UNTIL 'x'",
                "ALTER USER u WITH ENCRYPTED PASSWORD '***' VALID UNTIL 'x'",
            ),
            ("alter role r password $$p$$", "alter role r password '***'"),
            (
                "CREATE USER MAPPING FOR u SERVER s OPTIONS (user 'u', password 'pw')",
                "CREATE USER MAPPING FOR u SERVER s OPTIONS (user 'u', password '***')",
            ),
            (
                "select dblink_connect('host=h password=s3cr3t dbname=d')",
                "select dblink_connect('host=h password=*** dbname=d')",
            ),
            (
                "CONNECTION 'host=h password = \"pw x\" user=u'",
                "CONNECTION 'host=h password = *** user=u'",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(passwords(input).as_deref(), Some(want), "{input}");
        }
        for untouched in [
            "select password_hash from t",
            "ALTER ROLE r PASSWORD NULL",
            "no secret here",
            "passwords",
        ] {
            assert_eq!(passwords(untouched), None, "{untouched}");
        }
    }

    #[test]
    fn parameters_lose_their_values() {
        assert_eq!(
            parameters("parameters: $1 = 'it''s secret', $2 = '42', $3 = NULL").as_deref(),
            Some("parameters: $1 = ?, $2 = ?, $3 = ?")
        );
        assert_eq!(
            parameters("unnamed portal with parameters: $1 = 'x'").as_deref(),
            Some("unnamed portal with parameters: $1 = ?")
        );
        assert_eq!(parameters("nothing here"), None);
    }

    #[test]
    fn literals_become_placeholders() {
        assert_eq!(
            literals("select * from t1 where a = 'x''y' and b = 42 and c = E'\\'z' and d = $1 and e = 1.5e3"),
            "select * from t1 where a = ? and b = ? and c = ? and d = $1 and e = ?"
        );
        assert_eq!(
            literals("select $$secret$$, $f$x$f$, \"col 1\""),
            "select ?, ?, \"col 1\""
        );
        assert_eq!(literals("duration: 12.5 ms"), "duration: ? ms");
        assert_eq!(literals("naïve 'ü'"), "naïve ?");
        assert_eq!(literals("unterminated 'abc"), "unterminated ?");
    }

    #[test]
    fn row_values_are_hidden() {
        assert_eq!(
            row_values("Key (email)=(bob@example.com) already exists."),
            "Key (email)=(?) already exists."
        );
        assert_eq!(
            row_values("Failing row contains (1, secret, null)."),
            "Failing row contains (?)."
        );
    }
}
