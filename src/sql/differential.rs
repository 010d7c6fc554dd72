//! The lexer against PostgreSQL's own scanner (libpg_query's `scan.l`, through the
//! `pg_query` crate), token by token, over texts built from the pieces that make readers
//! disagree: every string form, quotes doubled and escaped, dollar tags with bytes ≥ 0x80,
//! nested and open comments, continuations, operators next to comments, numbers next to
//! letters. A text PostgreSQL refuses (unterminated, junk after a number) has no tokens to
//! compare; the test counts those and requires most texts to be compared.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use super::lex::{Kind, Lexer};

/// A token as both sides can name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Word,
    QuotedIdent,
    String,
    Number,
    Param,
    LineComment,
    BlockComment,
    Symbol,
}

fn ours(text: &str) -> Vec<(Class, usize, usize)> {
    Lexer::new(text)
        .filter_map(|t| {
            let class = match t.kind {
                Kind::Space => return None,
                Kind::LineComment => Class::LineComment,
                Kind::BlockComment => Class::BlockComment,
                Kind::String(_) => Class::String,
                Kind::National | Kind::Word => Class::Word,
                Kind::QuotedIdent => Class::QuotedIdent,
                Kind::Number => Class::Number,
                Kind::Param => Class::Param,
                Kind::Symbol | Kind::Other => Class::Symbol,
            };
            Some((class, t.start, t.end))
        })
        .collect()
}

/// PostgreSQL's tokens, or `None` when its scanner refuses the text.
fn postgres(text: &str) -> Option<Vec<(Class, usize, usize)>> {
    use pg_query::protobuf::Token as T;
    // `scan`, not `scan_tokens`: the latter makes a slice of a null pointer when a text has
    // no tokens at all.
    let tokens = pg_query::scan(text).ok()?.tokens;
    Some(
        tokens
            .iter()
            .map(|t| {
                let (start, end) = (t.start as usize, t.end as usize);
                let class = match T::try_from(t.token).unwrap_or(T::Nul) {
                    _ if t.keyword_kind != 0 => Class::Word,
                    T::Ident | T::Uident
                        if text[start..].starts_with('"')
                            || text[start..].to_ascii_lowercase().starts_with("u&\"") =>
                    {
                        Class::QuotedIdent
                    }
                    T::Ident => Class::Word,
                    T::Uident => Class::QuotedIdent,
                    T::Sconst | T::Usconst | T::Bconst | T::Xconst => Class::String,
                    T::Iconst | T::Fconst => Class::Number,
                    T::Param => Class::Param,
                    T::SqlComment => Class::LineComment,
                    T::CComment => Class::BlockComment,
                    _ => Class::Symbol,
                };
                (class, start, end)
            })
            .collect(),
    )
}

/// Pieces of hostile SQL.
const PIECES: &[&str] = &[
    "'",
    "''",
    "'x'",
    "'a''b'",
    "E'",
    "e'\\''",
    "E'\\\\'",
    "'\\'",
    "\\",
    "U&'",
    "u&'\\0041'",
    "U&\"",
    "u&\"x\"",
    " UESCAPE '!'",
    "B'",
    "b'01'",
    "X'",
    "x'1f'",
    "N'",
    "n'z'",
    "\"",
    "\"\"",
    "\"a\"\"b\"",
    "$$",
    "$a$",
    "$é$",
    "$ü1$",
    "$1",
    "$12",
    "$",
    "$_$",
    "/*",
    "*/",
    "/* c */",
    "/**/",
    "--",
    "-- c",
    "\n",
    "\r",
    " ",
    "\t",
    "\u{b}",
    "\u{c}",
    "é",
    "ß",
    "x",
    "abc",
    "SELECT",
    "password",
    "PASSWORD",
    "request_id",
    "=",
    "'r-1'",
    "1",
    "42",
    "1.5",
    ".5",
    "1.",
    "1e5",
    "1e+5",
    "0x1F",
    "0o17",
    "0b101",
    "1_000",
    "..",
    "::",
    ":=",
    ":",
    "+",
    "-",
    "*",
    "/",
    "<",
    ">",
    "=>",
    "<=",
    ">=",
    "<>",
    "!=",
    "!",
    "?",
    "#",
    "@",
    "~",
    "|",
    "&",
    "^",
    "%",
    "`",
    ";",
    ",",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ".",
];

/// Pieces that are whole tokens (or whole runs of them) by themselves, so that a text
/// made mostly of them is one PostgreSQL accepts.
const WHOLE: &[&str] = &[
    "'x'",
    "'a''b'",
    "'\\'",
    "e'\\''",
    "E'\\\\'",
    "u&'\\0041'",
    " UESCAPE '!'",
    "b'01'",
    "x'1f'",
    "n'z'",
    "\"a\"\"b\"",
    "u&\"x\"",
    "$$ $ $$",
    "$a$ $b$ $a$",
    "$é$ x $é$",
    "$ü1$ $$ $ü1$",
    "$1",
    "$12",
    "/* c */",
    "/**/",
    "/* a /* b */ c */",
    "-- c\n",
    "'a'\n'b'",
    "'a' -- c\n  'b'",
    "'a'\r\n-- d\n'b'",
    "é",
    "ß",
    "x",
    "abc",
    "SELECT",
    "PASSWORD",
    "=",
    "1",
    "42",
    "1.5",
    ".5",
    "1.",
    "1e5",
    "1e+5",
    "0x1F",
    "0o17",
    "0b101",
    "1_000",
    "..",
    "::",
    ":=",
    " ",
    "\n",
    "\t",
    "+",
    "-",
    "*",
    "/",
    "<",
    ">",
    "=>",
    "<=",
    "!=",
    "?-",
    "~",
    "|",
    "&",
    ";",
    ",",
    "(",
    ")",
    "[",
    "]",
    ".",
];

fn hostile() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        8 => prop::sample::select(WHOLE),
        2 => prop::sample::select(PIECES),
    ];
    // Mostly with a space between: a number right before a letter is junk to PostgreSQL.
    let gap = prop::sample::select(&["", " ", " ", " ", "\n"][..]);
    prop::collection::vec((piece, gap), 0..40)
        .prop_map(|v| v.into_iter().flat_map(|(p, g)| [p, g]).collect())
}

#[test]
fn the_lexer_reads_every_text_as_postgresql_does() {
    let compared = std::cell::Cell::new(0u32);
    let refused = std::cell::Cell::new(0u32);
    let mut runner = TestRunner::new(Config {
        cases: 20_000,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&hostile(), |text| {
            let mine = ours(&text);
            match postgres(&text) {
                Some(theirs) => {
                    compared.set(compared.get() + 1);
                    if mine != theirs {
                        return Err(TestCaseError::fail(format!(
                            "{text:?}\n ours:     {mine:?}\n postgres: {theirs:?}"
                        )));
                    }
                }
                None => refused.set(refused.get() + 1),
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    // A generator whose texts PostgreSQL mostly refuses would prove nothing.
    assert!(
        compared.get() > refused.get(),
        "compared {} texts, {} refused",
        compared.get(),
        refused.get()
    );
}

/// The texts of the issue that broke the hand-written readers, and their siblings, read
/// as PostgreSQL reads them.
#[test]
fn the_texts_that_fooled_the_old_readers_are_read_as_postgresql_does() {
    for text in [
        "ALTER ROLE a PASSWORD /* c */ 'x'",
        "ALTER ROLE a PASSWORD U&'x'",
        "ALTER ROLE a PASSWORD $é$x$é$",
        "ALTER ROLE a PASSWORD 'a'\n'b'",
        "ALTER ROLE a PASSWORD--c\n'x'",
        "ALTER USER MAPPING FOR u SERVER s OPTIONS (SET \"password\" 'x')",
        "select 'form input /*request_id=''attacker'' */' as n /*request_id='real-1'*/",
        "select $é$\nSeq Scan on forged_table  (cost=0.00..1.00 rows=1 width=4)\n$é$",
        "select 1 /* a /* b */ c */ , 2",
        "select e'\\'' || $a$ $b$ $a$ || 'x' -- y\n'z'",
        "select U&\"d\\0061t\\+000061\" UESCAPE '\\', 1..2, 0x1F, 1_000, .5e-3",
        "select $1 + a$b - $ab$ x $ab$",
        "select 1 +/* c */2 -- d",
    ] {
        let theirs = postgres(text).unwrap_or_else(|| panic!("postgres refuses {text:?}"));
        assert_eq!(ours(text), theirs, "{text:?}");
    }
}

/// A password after any statement prefix, past any comments, in any string form: the
/// secret never survives `passwords`, in every case where PostgreSQL reads the token after
/// `PASSWORD` as that string.
#[test]
fn a_password_is_masked_in_every_spelling_postgresql_reads() {
    const BLANKS: &[&str] = &[
        " ",
        "\n",
        "\t",
        "/* c */",
        "/* a /* b */ c */",
        "-- c\n",
        "\r\n",
    ];
    const LITERALS: &[&str] = &[
        "'S3CR3T'",
        "'S3''CR3T'",
        "E'S3\\'CR3T'",
        "e'S3CR3T\\\\'",
        "U&'S3CR3T'",
        "u&'S3CR3T' UESCAPE '!'",
        "$$S3CR3T$$",
        "$é$S3CR3T$é$",
        "$a_1$S3CR3T$a_1$",
        "N'S3CR3T'",
        "'S3CR3T'\n'S3CR3T'",
        "'S3CR3T' -- c\n 'S3CR3T'",
        "'S3CR3T",
    ];
    let case = (
        prop::collection::vec(prop::sample::select(WHOLE), 0..12),
        prop::sample::select(
            &[
                "PASSWORD",
                "password",
                "\"password\"",
                "U&\"passw\\006Frd\"",
            ][..],
        ),
        prop::collection::vec(prop::sample::select(BLANKS), 1..4),
        prop::sample::select(LITERALS),
    );
    let checked = std::cell::Cell::new(0u32);
    let mut runner = TestRunner::new(Config {
        cases: 5_000,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&case, |(prefix, word, blanks, literal)| {
            let text = format!("{} {word}{}{literal} x", prefix.join(" "), blanks.concat());
            // Only where PostgreSQL itself sees the word and then the string.
            let Some(theirs) = postgres(&text) else {
                return Ok(());
            };
            let at = text.rfind(word).expect("the word is in the text");
            let mut after = theirs
                .iter()
                .skip_while(|t| t.1 != at)
                .skip(1)
                .filter(|t| !matches!(t.0, Class::LineComment | Class::BlockComment));
            if !matches!(after.next(), Some((Class::String, _, _))) {
                return Ok(());
            }
            checked.set(checked.get() + 1);
            let masked = crate::sql::redact::passwords(&text).unwrap_or_default();
            prop_assert!(!masked.contains("S3"), "{text:?} → {masked:?}");
            prop_assert!(!masked.contains("CR3T"), "{text:?} → {masked:?}");
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(checked.get() > 2_500, "checked {}", checked.get());
}
