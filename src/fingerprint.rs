//! `query_fingerprint`: the agent's own identity of a statement, for servers that give
//! none (`query_id` needs PostgreSQL 14 and `compute_query_id`). The text is normalized —
//! comments dropped, every constant and parameter (`42`, `'x'`, `$$…$$`, `$1`) made `?`,
//! a list of constants `(?, ?, ?)` made `(?)`, unquoted words lowercased, whitespace
//! folded — and hashed (64-bit FNV-1a, 16 hex digits). A statement as a session runs it
//! (`… id = 42`) and as pg_stat_statements shows it (`… id = $1`) get the same
//! fingerprint, on every server version.
//!
//! It is *not* `query_id`: the server's id hashes the parse tree, this hashes the text,
//! so `SELECT 1` and `select 1` agree here while two texts the planner treats alike may
//! differ. The names stay apart so that nobody joins one with the other.

/// The fingerprint of `sql`, or `None` when it has no statement text (empty, or only
/// comments).
pub fn fingerprint(sql: &str) -> Option<String> {
    let n = normalize(sql);
    if n.is_empty() {
        return None;
    }
    Some(hash_hex(n.as_bytes()))
}

/// FNV-1a, 64 bit, as 16 hex digits: stable across builds and platforms, documented,
/// cheap. Every id the agent derives from text uses it.
pub fn hash_hex(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The normalized text the fingerprint hashes: tokens joined by one space.
pub fn normalize(sql: &str) -> String {
    let b = sql.as_bytes();
    let mut tokens: Vec<Token> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            _ if c.is_ascii_whitespace() => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = b[i..]
                    .iter()
                    .position(|&x| x == b'\n')
                    .map_or(b.len(), |p| i + p + 1);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => i = block_comment_end(b, i),
            b'\'' => {
                i = quoted_end(b, i + 1, b'\'');
                tokens.push(Token::Constant);
            }
            // E'…' / B'…' / X'…' / N'…' / U&'…' strings.
            b'e' | b'E' | b'b' | b'B' | b'x' | b'X' | b'n' | b'N'
                if b.get(i + 1) == Some(&b'\'') && !prev_is_word(&tokens) =>
            {
                i = quoted_end(b, i + 2, b'\'');
                tokens.push(Token::Constant);
            }
            b'"' => {
                let end = quoted_end(b, i + 1, b'"');
                tokens.push(Token::Text(
                    String::from_utf8_lossy(&b[i..end]).into_owned(),
                ));
                i = end;
            }
            b'$' => {
                if let Some(end) = dollar_quote_end(b, i) {
                    i = end;
                    tokens.push(Token::Constant);
                } else {
                    // `$1` parameter (or a stray `$`).
                    let end = i + 1 + b[i + 1..].iter().take_while(|x| x.is_ascii_digit()).count();
                    tokens.push(if end > i + 1 {
                        Token::Constant
                    } else {
                        Token::Text("$".into())
                    });
                    i = end;
                }
            }
            b'0'..=b'9' => {
                i = number_end(b, i);
                tokens.push(Token::Constant);
            }
            b'.' if b.get(i + 1).is_some_and(u8::is_ascii_digit) && !prev_is_word(&tokens) => {
                i = number_end(b, i);
                tokens.push(Token::Constant);
            }
            _ if is_word_start(c) => {
                let end = i + b[i..].iter().take_while(|&&x| is_word_byte(x)).count();
                let word = String::from_utf8_lossy(&b[i..end]).to_lowercase();
                tokens.push(Token::Text(word));
                i = end;
            }
            _ => {
                // One punctuation or operator character (multi-byte UTF-8 kept whole).
                let len = utf8_len(c).min(b.len() - i);
                tokens.push(Token::Text(
                    String::from_utf8_lossy(&b[i..i + len]).into_owned(),
                ));
                i += len;
            }
        }
    }
    while matches!(tokens.last(), Some(Token::Text(t)) if t == ";") {
        tokens.pop();
    }
    squash_lists(&mut tokens);
    let mut out = String::with_capacity(sql.len().min(4096));
    for t in &tokens {
        if !out.is_empty() {
            out.push(' ');
        }
        match t {
            Token::Constant => out.push('?'),
            Token::Text(s) => out.push_str(s),
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Constant,
    Text(String),
}

fn prev_is_word(tokens: &[Token]) -> bool {
    matches!(tokens.last(), Some(Token::Text(t)) if t.bytes().last().is_some_and(is_word_byte))
}

fn is_word_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

/// After `/* … */`, nested as PostgreSQL nests them; the end of the text if unclosed.
pub(crate) fn block_comment_end(b: &[u8], start: usize) -> usize {
    let (mut i, mut depth) = (start + 2, 1);
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

/// After the closing `quote` of a quoted text starting at `i` (a doubled quote is part
/// of the text; a backslash escapes in E'' strings, harmless elsewhere for this use).
fn quoted_end(b: &[u8], mut i: usize, quote: u8) -> usize {
    while i < b.len() {
        if b[i] == b'\\' && quote == b'\'' {
            i += 2;
        } else if b[i] == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

/// After a `$tag$ … $tag$` string starting at `start`, if one starts there.
fn dollar_quote_end(b: &[u8], start: usize) -> Option<usize> {
    let tag_len = b[start + 1..]
        .iter()
        .take_while(|&&x| x.is_ascii_alphanumeric() || x == b'_' || x >= 0x80)
        .count();
    let close = start + 1 + tag_len;
    if b.get(close) != Some(&b'$') || b.get(start + 1).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let tag = &b[start..=close];
    let body = close + 1;
    let end = b[body..]
        .windows(tag.len())
        .position(|w| w == tag)
        .map_or(b.len(), |p| body + p + tag.len());
    Some(end)
}

/// After a numeric constant: digits, a fraction, an exponent.
fn number_end(b: &[u8], mut i: usize) -> usize {
    let digits = |b: &[u8], mut i: usize| {
        while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'_') {
            i += 1;
        }
        i
    };
    if b[i..].starts_with(b"0x") || b[i..].starts_with(b"0X") {
        i += 2;
        while i < b.len() && (b[i].is_ascii_hexdigit() || b[i] == b'_') {
            i += 1;
        }
        return i;
    }
    i = digits(b, i);
    if b.get(i) == Some(&b'.') {
        i = digits(b, i + 1);
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let j = i + 1 + usize::from(matches!(b.get(i + 1), Some(b'+' | b'-')));
        if b.get(j).is_some_and(u8::is_ascii_digit) {
            i = digits(b, j);
        }
    }
    i
}

/// `( ? , ? , ? )` → `( ? )`: lists of constants of any length are one statement.
fn squash_lists(tokens: &mut Vec<Token>) {
    let comma = Token::Text(",".into());
    let mut out: Vec<Token> = Vec::with_capacity(tokens.len());
    for t in tokens.drain(..) {
        let n = out.len();
        if t == Token::Constant && n >= 2 && out[n - 1] == comma && out[n - 2] == Token::Constant {
            out.pop();
            continue;
        }
        out.push(t);
    }
    *tokens = out;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn constants_parameters_case_and_comments_do_not_count() {
        let same = [
            "SELECT * FROM orders WHERE id = 42 AND note = 'it''s' /*traceparent='00-x'*/",
            "select *   from orders\n where id = $1 and note = $2;",
            "select * from ORDERS where id=$1 and note=E'a\\'b' -- trailing comment",
            "select * from orders where id = 1.5e3 and note = $tag$ body $tag$",
        ];
        let want = normalize(same[1]);
        assert_eq!(want, "select * from orders where id = ? and note = ?");
        for s in same {
            assert_eq!(normalize(s), want, "{s}");
            assert_eq!(fingerprint(s), fingerprint(same[1]), "{s}");
        }
    }

    #[test]
    fn what_changes_the_statement_changes_the_fingerprint() {
        let base = fingerprint("select a from t where id = 1");
        for other in [
            "select b from t where id = 1",
            "select a from u where id = 1",
            "select a from t where id > 1",
            "select \"A\" from t where id = 1",
        ] {
            assert_ne!(fingerprint(other), base, "{other}");
        }
        assert_eq!(
            normalize("select \"Mixed\" from t"),
            "select \"Mixed\" from t",
            "a quoted name keeps its case"
        );
    }

    #[test]
    fn lists_of_any_length_are_one_statement() {
        assert_eq!(
            normalize("select * from t where id in (1, 2, 3) and x = any('{1,2}')"),
            "select * from t where id in ( ? ) and x = any ( ? )"
        );
        assert_eq!(
            fingerprint("insert into t values ($1, $2), ($3, $4)"),
            fingerprint("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
        );
        // A function call's arguments are a list too: `f(1, 2)` and `f(1)` agree, the
        // function's name still tells statements apart.
        assert_ne!(fingerprint("select f(1)"), fingerprint("select g(1)"));
    }

    #[test]
    fn nothing_to_hash_is_no_fingerprint() {
        assert_eq!(fingerprint(""), None);
        assert_eq!(fingerprint("  /* only a comment */ -- and another"), None);
        assert_eq!(fingerprint(";"), None);
        let f = fingerprint("select 1").expect("a fingerprint");
        assert_eq!(f.len(), 16);
        assert!(f.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn unterminated_and_odd_text_ends_without_a_panic() {
        for s in [
            "select 'open",
            "select $a$ open",
            "select /* open",
            "select \"open",
            "$",
            "0x",
            "1e",
            "é'",
            "E'",
        ] {
            let _ = fingerprint(s);
        }
        assert_eq!(normalize("select $1::int, x$y"), "select ? : : int , x$y");
    }

    proptest! {
        /// Any text: no panic, and a constant's value never changes the fingerprint.
        #[test]
        fn any_text_and_any_constant(text in "\\PC{0,200}", n in any::<u32>(), s in "[a-z ]{0,20}") {
            let _ = fingerprint(&text);
            prop_assert_eq!(
                fingerprint(&format!("select x from t where a = {n} and b = '{s}'")),
                fingerprint("select x from t where a = $1 and b = $2")
            );
        }
    }
}
