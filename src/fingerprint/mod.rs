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
//!
//! The fingerprint is stable across releases: the text is read with the one SQL lexer,
//! and every text that the reader of earlier releases read as PostgreSQL does has the
//! fingerprint it had (the tests compare the two over generated statements). Texts that
//! reader misread — `E'…'`, `B'…'`, `X'…'` or `N'…'` right after a word (`SELECT E'…'`),
//! a `U&'…'` string, a string continued on the next line, a backslash
//! before the closing quote of a plain string — now get the fingerprint of what the
//! server ran.

use crate::sql::{Kind, Lexer};

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

/// The normalized text the fingerprint hashes: tokens joined by one space. Tokens are
/// [`crate::sql`]'s, as PostgreSQL reads them; operators and punctuation are one token per
/// character (as they always were here, so fingerprints did not change with the lexer).
pub fn normalize(sql: &str) -> String {
    let mut tokens: Vec<Token> = Vec::new();
    for t in Lexer::new(sql) {
        let text = &sql[t.start..t.end];
        match t.kind {
            // The `N` of `N'…'` belongs to its string: one constant.
            Kind::Space | Kind::LineComment | Kind::BlockComment | Kind::National => {}
            Kind::String(_) | Kind::Number | Kind::Param => tokens.push(Token::Constant),
            Kind::Word => tokens.push(Token::Text(text.to_lowercase())),
            Kind::QuotedIdent => tokens.push(Token::Text(text.to_string())),
            Kind::Symbol | Kind::Other => {
                tokens.extend(text.chars().map(|c| Token::Text(c.to_string())));
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
mod previous;

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

    /// Statements as applications write them: every piece is one the reader of earlier
    /// releases read as PostgreSQL does.
    const STATEMENT_PIECES: &[&str] = &[
        "SELECT",
        "select",
        "from",
        "WHERE",
        "t",
        "Orders",
        "a_b",
        "x$y",
        "é",
        "\"Mixed\"",
        "\"a\"\"b\"",
        "1",
        "42",
        "1.5",
        "1e3",
        "1_000",
        "'x'",
        "'it''s'",
        ", E'a\\'b'",
        "$$x$$",
        "$t$ y $t$",
        "$é$ z $é$",
        ", B'01'",
        ", N'n'",
        ", X'1f'",
        "$1",
        "$12",
        "=",
        "<=",
        "->>",
        "::",
        "+",
        "-",
        "*",
        "(",
        ")",
        ",",
        ";",
        "[",
        "]",
        ".",
        "/* c */",
        "/* a /* b */ c */",
        "in (1, 2, 3)",
        "values ($1, $2), ($3, $4)",
    ];

    #[test]
    fn fingerprints_are_those_of_earlier_releases() {
        let statement = prop::collection::vec(prop::sample::select(STATEMENT_PIECES), 0..30)
            .prop_map(|v| v.join(" "));
        let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
            cases: 5_000,
            failure_persistence: None,
            ..Default::default()
        });
        runner
            .run(&statement, |text| {
                prop_assert_eq!(normalize(&text), previous::normalize(&text), "{}", text);
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
        // Line comments end at the newline, in both.
        for text in ["select 1 -- c\n, 2", "select a -- c\nfrom t"] {
            assert_eq!(normalize(text), previous::normalize(text), "{text}");
        }
    }

    #[test]
    fn texts_the_old_reader_misread_get_the_fingerprint_of_what_the_server_ran() {
        // A plan or a client's text could forge tokens inside these.
        assert_eq!(normalize("select U&'d\\0061t' from t"), "select ? from t");
        // `E'…'` right after a word was read as the word `e` and a string: a session's
        // text and pg_stat_statements' `$1` got different fingerprints.
        assert_eq!(
            normalize("select E'\\n', B'1' from t"),
            normalize("select $1, $2 from t")
        );
        assert_eq!(normalize("select 'a'\n'b' from t"), "select ? from t");
        assert_eq!(normalize("select 'C:\\' , x from t"), "select ? , x from t");
        assert_eq!(
            normalize("select $é$ it's $é$ from t"),
            normalize("select $1 from t")
        );
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
