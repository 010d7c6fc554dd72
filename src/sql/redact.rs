//! `[logs] redact`: bind parameters and literals out of what is shipped, and passwords out
//! of everything. SQL is read with [`crate::sql`]'s lexer, as the server reads it.

use crate::sql::{Kind, Lexer, Token};

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
            i = quoted_end(b, i + 3, b'\'');
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

/// What takes the place of a password written as a string constant.
const MASK: &str = "'***'";

/// What takes the place of a password in a connection string.
const CONNINFO_MASK: &str = "***";

/// Passwords out of SQL and connection strings, whatever `[logs] redact` says:
/// - the string constant after the word `password` (a keyword or an option name, quoted
///   or not, `U&"…"` escapes decoded), in any form PostgreSQL reads as one (`'…'`,
///   `E'…'`, `U&'…'`, `N'…'`, dollar-quoted, continued over lines), past any comments
///   and an optional `=`: `CREATE/ALTER ROLE … PASSWORD …`, a user mapping's or a
///   server's `OPTIONS (password '…')`;
/// - the value after `password=` in a connection string (`dblink`, `CREATE SUBSCRIPTION
///   … CONNECTION '…'`, `primary_conninfo`), inside a string constant or in a message.
///
/// A text does not say whether the server read backslashes in `'…'` as escapes, so one
/// with a backslash is read both ways and what either reading calls a password is
/// masked. `None` when there is nothing to mask (no allocation).
pub fn passwords(s: &str) -> Option<String> {
    if !contains_ignore_case(s.as_bytes(), b"password")
        && !contains_ignore_case(s.as_bytes(), b"u&\"")
    {
        return None;
    }
    let mut spans = Vec::new();
    sql_passwords(s, Lexer::new(s), &mut spans);
    let backslash = s.contains('\\');
    if backslash {
        sql_passwords(s, Lexer::new(s).backslash_quotes(), &mut spans);
    }
    conninfo_passwords(s, 0, s.len(), false, &mut spans);
    for lexer in [
        Some(Lexer::new(s)),
        backslash.then(|| Lexer::new(s).backslash_quotes()),
    ]
    .into_iter()
    .flatten()
    {
        for t in lexer.filter(|t| matches!(t.kind, Kind::String(_))) {
            let (start, end) = t.body(s.as_bytes());
            conninfo_passwords(s, start, end, true, &mut spans);
        }
    }
    (!spans.is_empty()).then(|| replace(s, spans))
}

/// A part of a text to mask, and with what.
type Span = (usize, usize, &'static str);

/// The string constants that follow the word `password`.
fn sql_passwords(s: &str, lexer: Lexer<'_>, spans: &mut Vec<Span>) {
    let mut tokens = lexer.filter(|t| !t.is_blank()).peekable();
    while let Some(t) = tokens.next() {
        let Some(uescape) = password_name(s, &t, tokens.clone()) else {
            continue;
        };
        if uescape {
            tokens.nth(1);
        }
        if tokens
            .peek()
            .is_some_and(|n| n.kind == Kind::Symbol && &s[n.start..n.end] == "=")
        {
            tokens.next();
        }
        let start = match tokens.peek() {
            Some(n) if n.kind == Kind::National => {
                let at = n.start;
                tokens.next();
                at
            }
            Some(n) => n.start,
            None => continue,
        };
        if let Some(lit) = tokens.next_if(|n| matches!(n.kind, Kind::String(_))) {
            spans.push((start, lit.end, MASK));
        }
    }
}

/// `Some` for `password`, `PASSWORD`, `"password"` and `U&"p\\0061ssword"` (an option
/// name is the same option however it is spelled); `Some(true)` when a `UESCAPE '…'`
/// follows the name.
fn password_name(s: &str, t: &Token, after: impl Iterator<Item = Token>) -> Option<bool> {
    let text = &s[t.start..t.end];
    let password = |name: &str| name.eq_ignore_ascii_case("password");
    match t.kind {
        Kind::Word => password(text).then_some(false),
        Kind::QuotedIdent => {
            let unicode = text.as_bytes()[0] != b'"';
            let inner = &text[if unicode { 3 } else { 1 }..];
            let inner = inner
                .strip_suffix('"')
                .unwrap_or(inner)
                .replace("\"\"", "\"");
            if !unicode {
                return password(&inner).then_some(false);
            }
            // `U&"…" UESCAPE '!'` names its escape character.
            let mut after = after;
            let (escape, uescape) = match (after.next(), after.next()) {
                (Some(u), Some(c))
                    if s[u.start..u.end].eq_ignore_ascii_case("uescape")
                        && matches!(c.kind, Kind::String(_)) =>
                {
                    (s[c.start..c.end].chars().nth(1).unwrap_or('\\'), true)
                }
                _ => ('\\', false),
            };
            password(&unicode_unescape(&inner, escape)).then_some(uescape)
        }
        _ => None,
    }
}

/// The text of a `U&"…"` identifier with its `\XXXX` and `\+XXXXXX` escapes decoded
/// (an escape that is not one is kept as written: the name then is not `password`).
fn unicode_unescape(inner: &str, escape: char) -> String {
    let mut out = String::with_capacity(inner.len());
    let mut rest = inner;
    while let Some(at) = rest.find(escape) {
        out.push_str(&rest[..at]);
        let after = &rest[at + escape.len_utf8()..];
        let (digits, skip) = if let Some(long) = after.strip_prefix('+') {
            (long.get(..6), 7)
        } else {
            (after.get(..4), 4)
        };
        match digits
            .and_then(|d| u32::from_str_radix(d, 16).ok())
            .and_then(char::from_u32)
        {
            Some(c) => {
                out.push(c);
                rest = &after[skip..];
            }
            None if after.starts_with(escape) => {
                out.push(escape);
                rest = &after[escape.len_utf8()..];
            }
            None => {
                out.push(escape);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// `password=value` of a connection string in `s[from..to]`. Inside a string constant
/// (`in_string`), a quoted value runs to the end of the constant: its quotes are doubled
/// or escaped there, so where it ends depends on two quoting rules at once, and a little
/// more masked is better than a secret's tail shipped.
fn conninfo_passwords(s: &str, from: usize, to: usize, in_string: bool, spans: &mut Vec<Span>) {
    let b = &s.as_bytes()[..to];
    let mut i = from;
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
        if b.get(j) != Some(&b'=') {
            continue;
        }
        let mut v = j + 1;
        while v < b.len() && b[v] == b' ' {
            v += 1;
        }
        let end = match b.get(v) {
            Some(b'\'' | b'\\') if in_string => to,
            Some(q @ (b'\'' | b'"')) => quoted_end(b, v, *q),
            Some(_) => b[v..]
                .iter()
                .position(|c| c.is_ascii_whitespace() || matches!(c, b'\'' | b'"' | b')' | b','))
                .map_or(b.len(), |e| v + e),
            None => continue,
        };
        if end > v {
            spans.push((v, end, CONNINFO_MASK));
            i = end;
        }
    }
}

/// After the quoted value starting at `b[start] == q` (doubled quotes escape).
fn quoted_end(b: &[u8], start: usize, q: u8) -> usize {
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

fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    let first = [
        needle[0].to_ascii_lowercase(),
        needle[0].to_ascii_uppercase(),
    ];
    memchr::memchr2_iter(first[0], first[1], hay).any(|k| {
        hay.get(k..k + needle.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(needle))
    })
}

/// `s` with every span replaced: overlapping or touching spans become one, masked as a
/// string constant if any of them was one.
fn replace(s: &str, mut spans: Vec<Span>) -> String {
    spans.sort_by_key(|&(start, end, _)| (start, std::cmp::Reverse(end)));
    let mut out = String::with_capacity(s.len());
    let mut copied = 0;
    let mut spans = spans.into_iter().peekable();
    while let Some((start, mut end, mut mask)) = spans.next() {
        while let Some(&(s2, e2, m2)) = spans.peek() {
            if s2 > end {
                break;
            }
            end = end.max(e2);
            if m2 == MASK || m2 == "?" {
                mask = m2;
            }
            spans.next();
        }
        let start = start.max(copied);
        out.push_str(&s[copied..start]);
        out.push_str(mask);
        copied = end.max(copied);
    }
    out.push_str(&s[copied..]);
    out
}

/// Replaces constants — strings in every form, numbers — with `?`; identifiers, quoted
/// identifiers, keywords and `$1` parameters stay. A text with a backslash is read both
/// with and without backslash escapes and what either reading calls a constant goes.
pub fn literals(s: &str) -> String {
    let mut spans: Vec<Span> = Lexer::new(s)
        .filter(Token::is_constant)
        .map(|t| (t.start, t.end, "?"))
        .collect();
    if s.contains('\\') {
        spans.extend(
            Lexer::new(s)
                .backslash_quotes()
                .filter(Token::is_constant)
                .map(|t| (t.start, t.end, "?")),
        );
    }
    replace(s, spans)
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
            // Every spelling PostgreSQL reads as a string constant after PASSWORD.
            ("ALTER ROLE a PASSWORD /* c */ 'x'", "ALTER ROLE a PASSWORD /* c */ '***'"),
            ("ALTER ROLE a PASSWORD U&'x' UESCAPE '!'", "ALTER ROLE a PASSWORD '***' UESCAPE '!'"),
            ("ALTER ROLE a PASSWORD $é$x$é$", "ALTER ROLE a PASSWORD '***'"),
            ("ALTER ROLE a PASSWORD 'a'\n'b'", "ALTER ROLE a PASSWORD '***'"),
            ("ALTER ROLE a PASSWORD--c\n'x'", "ALTER ROLE a PASSWORD--c\n'***'"),
            ("ALTER ROLE a PASSWORD N'x'", "ALTER ROLE a PASSWORD '***'"),
            ("ALTER ROLE a PASSWORD 'a' -- c\n 'b' VALID UNTIL 'y'", "ALTER ROLE a PASSWORD '***' VALID UNTIL 'y'"),
            ("create role a password 'open", "create role a password '***'"),
            // The option of a user mapping or a server, quoted or not, added or set.
            (
                "ALTER USER MAPPING FOR u SERVER s OPTIONS (SET \"password\" 'x')",
                "ALTER USER MAPPING FOR u SERVER s OPTIONS (SET \"password\" '***')",
            ),
            (
                "ALTER SERVER s OPTIONS (ADD PassWord E'x')",
                "ALTER SERVER s OPTIONS (ADD PassWord '***')",
            ),
            (
                "ALTER USER MAPPING FOR u SERVER s OPTIONS (SET U&\"p\\0061ssword\" 'x')",
                "ALTER USER MAPPING FOR u SERVER s OPTIONS (SET U&\"p\\0061ssword\" '***')",
            ),
            (
                "ALTER USER MAPPING FOR u SERVER s OPTIONS (SET U&\"p!0061ssword\" UESCAPE '!' 'x')",
                "ALTER USER MAPPING FOR u SERVER s OPTIONS (SET U&\"p!0061ssword\" UESCAPE '!' '***')",
            ),
            // A connection string's quoted value inside a string constant: to the end of
            // the constant, however its quotes were escaped.
            (
                "CREATE SUBSCRIPTION s CONNECTION 'host=h password=''se cret'' user=u' PUBLICATION p",
                "CREATE SUBSCRIPTION s CONNECTION 'host=h password=***' PUBLICATION p",
            ),
            (
                "select dblink_connect(E'password=\\'se cret\\' host=h')",
                "select dblink_connect(E'password=***')",
            ),
            // With backslash escapes (standard_conforming_strings = off) `'a\'` does not
            // end where it does without them; what either reading calls the password goes.
            (
                "ALTER ROLE a PASSWORD 'x\\' , secret'",
                "ALTER ROLE a PASSWORD '***'",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(passwords(input).as_deref(), Some(want), "{input}");
        }
        for untouched in [
            "select password_hash from t",
            "select 'PASSWORD' || 'x'",
            "password authentication failed for user \"app\"",
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
