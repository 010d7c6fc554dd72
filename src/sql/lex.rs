//! The lexer: SQL text into tokens that cover it byte for byte, by the rules of
//! PostgreSQL's scanner.
//!
//! Where PostgreSQL stops with an error (an unterminated string, `1abc`, `0x`), the lexer
//! goes on: texts reach the agent cut short at `track_activity_query_size`, and a text
//! the server refused is still logged. An unterminated string or comment runs to the end
//! of the text with `closed: false`; a number followed by letters is a number and a word
//! (as PostgreSQL before 15 read it).
//!
//! The one setting that changes the reading is `standard_conforming_strings`: off, a
//! plain `'…'` takes backslash escapes like `E'…'`. A text does not say which the server
//! used, so callers that must not be fooled read it both ways ([`Lexer::backslash_quotes`])
//! when it holds a backslash.

/// How a string constant was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringForm {
    /// `'…'`.
    Standard,
    /// `E'…'`: backslash escapes.
    Escape,
    /// `B'…'`.
    Bit,
    /// `X'…'`.
    Hex,
    /// `U&'…'` (a `UESCAPE '…'` after it is a word and a string of its own).
    Unicode,
    /// `$tag$…$tag$`.
    Dollar,
}

/// What a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Spaces, tabs, newlines, form feeds, vertical tabs.
    Space,
    /// `-- …` up to (not including) the newline.
    LineComment,
    /// `/* … */`, nested.
    BlockComment,
    /// A string constant; continued strings (`'a'` newline `'b'`) are one token.
    String(StringForm),
    /// The `N` of `N'…'`: PostgreSQL reads it as the keyword `NCHAR` before the string.
    National,
    /// A keyword or an unquoted identifier.
    Word,
    /// `"…"` or `U&"…"`.
    QuotedIdent,
    /// An integer or numeric constant.
    Number,
    /// `$1`.
    Param,
    /// An operator (`+`, `<=`, `->>`, `::`, `:=`, `..`) or one of `, ( ) [ ] . ; :`.
    Symbol,
    /// Any other byte (`$` alone, `{`, `\`, a NUL).
    Other,
}

/// One token: `text[start..end]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    /// What it is.
    pub kind: Kind,
    /// Byte offset of its first byte.
    pub start: usize,
    /// Byte offset after its last byte.
    pub end: usize,
    /// False for a string, quoted identifier or block comment that the text ends inside.
    pub closed: bool,
}

impl Token {
    /// Comments and whitespace: nothing to PostgreSQL's grammar.
    pub fn is_blank(&self) -> bool {
        matches!(
            self.kind,
            Kind::Space | Kind::LineComment | Kind::BlockComment
        )
    }

    /// The inside of a string constant, quoted identifier or block comment (`b` is the
    /// whole text): what is between its opening and its closing delimiter, or the end of
    /// the text when it has none. Other tokens are all inside.
    pub fn body(&self, b: &[u8]) -> (usize, usize) {
        let tag = |t: &Token| {
            b[t.start + 1..t.end]
                .iter()
                .position(|&c| c == b'$')
                .map_or(1, |n| n + 2)
        };
        let (open, close) = match self.kind {
            Kind::String(StringForm::Standard) => (1, 1),
            Kind::String(StringForm::Escape | StringForm::Bit | StringForm::Hex) => (2, 1),
            Kind::String(StringForm::Unicode) => (3, 1),
            Kind::String(StringForm::Dollar) => (tag(self), tag(self)),
            Kind::QuotedIdent if b[self.start] == b'"' => (1, 1),
            Kind::QuotedIdent => (3, 1),
            Kind::BlockComment => (2, 2),
            _ => (0, 0),
        };
        let start = (self.start + open).min(self.end);
        let end = if self.closed {
            self.end - close
        } else {
            self.end
        };
        (start, end.max(start))
    }

    /// A constant: a string (with the `N` of `N'…'`), a number.
    pub fn is_constant(&self) -> bool {
        matches!(self.kind, Kind::String(_) | Kind::Number | Kind::National)
    }
}

/// Tokens of a text, in order, covering every byte.
#[derive(Debug, Clone)]
pub struct Lexer<'a> {
    b: &'a [u8],
    at: usize,
    backslash: bool,
}

impl<'a> Lexer<'a> {
    /// Reads `text` as a server with `standard_conforming_strings = on` does.
    pub fn new(text: &'a str) -> Lexer<'a> {
        Lexer::bytes(text.as_bytes())
    }

    /// Reads bytes that may not be UTF-8 (the scanner itself is byte-based).
    pub fn bytes(b: &'a [u8]) -> Lexer<'a> {
        Lexer {
            b,
            at: 0,
            backslash: false,
        }
    }

    /// Reads `'…'` with backslash escapes, as a server with
    /// `standard_conforming_strings = off` does.
    pub fn backslash_quotes(mut self) -> Lexer<'a> {
        self.backslash = true;
        self
    }

    fn token(&mut self, kind: Kind, end: usize, closed: bool) -> Token {
        let t = Token {
            kind,
            start: self.at,
            end,
            closed,
        };
        self.at = end;
        t
    }
}

impl Iterator for Lexer<'_> {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        let b = self.b;
        let i = self.at;
        let c = *b.get(i)?;
        let next = b.get(i + 1).copied();
        let t = match c {
            _ if is_space(c) => {
                let end = i + b[i..].iter().take_while(|&&x| is_space(x)).count();
                self.token(Kind::Space, end, true)
            }
            b'-' if next == Some(b'-') => self.token(Kind::LineComment, line_end(b, i), true),
            b'/' if next == Some(b'*') => {
                let (end, closed) = block_comment(b, i);
                self.token(Kind::BlockComment, end, closed)
            }
            b'\'' => {
                let form = if self.backslash {
                    Quoting::Escapes
                } else {
                    Quoting::Doubled
                };
                let (end, closed) = string(b, i, form);
                self.token(Kind::String(StringForm::Standard), end, closed)
            }
            b'e' | b'E' if next == Some(b'\'') => {
                let (end, closed) = string(b, i + 1, Quoting::Escapes);
                self.token(Kind::String(StringForm::Escape), end, closed)
            }
            b'b' | b'B' | b'x' | b'X' if next == Some(b'\'') => {
                let (end, closed) = string(b, i + 1, Quoting::Plain);
                let form = if c.eq_ignore_ascii_case(&b'b') {
                    StringForm::Bit
                } else {
                    StringForm::Hex
                };
                self.token(Kind::String(form), end, closed)
            }
            b'n' | b'N' if next == Some(b'\'') => self.token(Kind::National, i + 1, true),
            b'u' | b'U' if next == Some(b'&') && b.get(i + 2) == Some(&b'\'') => {
                let (end, closed) = string(b, i + 2, Quoting::Doubled);
                self.token(Kind::String(StringForm::Unicode), end, closed)
            }
            b'u' | b'U' if next == Some(b'&') && b.get(i + 2) == Some(&b'"') => {
                let (end, closed) = quoted_ident(b, i + 2);
                self.token(Kind::QuotedIdent, end, closed)
            }
            b'"' => {
                let (end, closed) = quoted_ident(b, i);
                self.token(Kind::QuotedIdent, end, closed)
            }
            b'$' => match next {
                Some(d) if d.is_ascii_digit() => {
                    let end = i + 1 + b[i + 1..].iter().take_while(|x| x.is_ascii_digit()).count();
                    self.token(Kind::Param, end, true)
                }
                _ => match dollar_string(b, i) {
                    Some((end, closed)) => {
                        self.token(Kind::String(StringForm::Dollar), end, closed)
                    }
                    None => self.token(Kind::Other, i + 1, true),
                },
            },
            b'0'..=b'9' => self.token(Kind::Number, number(b, i), true),
            b'.' if next.is_some_and(|d| d.is_ascii_digit()) => {
                self.token(Kind::Number, number(b, i), true)
            }
            _ if is_ident_start(c) => {
                let end = i + b[i..].iter().take_while(|&&x| is_ident_cont(x)).count();
                self.token(Kind::Word, end, true)
            }
            b':' if matches!(next, Some(b':' | b'=')) => self.token(Kind::Symbol, i + 2, true),
            b'.' if next == Some(b'.') => self.token(Kind::Symbol, i + 2, true),
            b',' | b'(' | b')' | b'[' | b']' | b'.' | b';' | b':' => {
                self.token(Kind::Symbol, i + 1, true)
            }
            _ if is_op_char(c) => self.token(Kind::Symbol, operator(b, i), true),
            _ => self.token(Kind::Other, i + 1, true),
        };
        Some(t)
    }
}

/// `[ \t\n\r\f\v]`.
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0c | 0x0b)
}

fn is_newline(c: u8) -> bool {
    c == b'\n' || c == b'\r'
}

/// `[A-Za-z\200-\377_]`: every byte of a multibyte character counts as a letter.
pub fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

/// `[A-Za-z\200-\377_0-9\$]`.
pub fn is_ident_cont(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

/// `[~!@#^&|`?+\-*/%<>=]`.
fn is_op_char(c: u8) -> bool {
    matches!(
        c,
        b'~' | b'!'
            | b'@'
            | b'#'
            | b'^'
            | b'&'
            | b'|'
            | b'`'
            | b'?'
            | b'+'
            | b'-'
            | b'*'
            | b'/'
            | b'%'
            | b'<'
            | b'>'
            | b'='
    )
}

/// End of a `--` comment: the next newline (not included) or the end of the text.
fn line_end(b: &[u8], i: usize) -> usize {
    b[i..]
        .iter()
        .position(|&x| is_newline(x))
        .map_or(b.len(), |n| i + n)
}

/// End of the block comment opening at `i`: nested `/*` opens another level, `*/` closes
/// one.
fn block_comment(b: &[u8], i: usize) -> (usize, bool) {
    let mut depth = 0usize;
    let mut j = i + 2;
    while j < b.len() {
        if b[j] == b'/' && b.get(j + 1) == Some(&b'*') {
            depth += 1;
            j += 2;
        } else if b[j] == b'*' && b.get(j + 1) == Some(&b'/') {
            j += 2;
            if depth == 0 {
                return (j, true);
            }
            depth -= 1;
        } else {
            j += 1;
        }
    }
    (b.len(), false)
}

/// How a quote inside a string constant is escaped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Quoting {
    /// `B'…'`, `X'…'`: not at all; `''` ends the string and starts another.
    Plain,
    /// `'…'`, `U&'…'`: `''`.
    Doubled,
    /// `E'…'` (and `'…'` without standard conforming strings): `''` and `\'`.
    Escapes,
}

/// End of the string constant whose opening quote is at `q`, continuations included:
/// a string followed by whitespace holding a newline and another quote goes on in the
/// same form (`'a'` newline `'b'` is `'ab'`).
fn string(b: &[u8], q: usize, quoting: Quoting) -> (usize, bool) {
    let mut j = q + 1;
    while j < b.len() {
        match b[j] {
            b'\\' if quoting == Quoting::Escapes => j += 2,
            b'\'' if quoting != Quoting::Plain && b.get(j + 1) == Some(&b'\'') => j += 2,
            b'\'' => match continuation(b, j + 1) {
                Some(next) => j = next + 1,
                None => return (j + 1, true),
            },
            _ => j += 1,
        }
    }
    (b.len(), false)
}

/// Where a string constant that closed just before `from` continues: the index of the
/// next opening quote when only whitespace and `--` comments with at least one newline
/// come between (scan.l's `{whitespace_with_newline}{quote}`).
fn continuation(b: &[u8], from: usize) -> Option<usize> {
    let mut newline = false;
    let mut j = from;
    loop {
        match *b.get(j)? {
            b' ' | b'\t' | 0x0c | 0x0b => j += 1,
            b'\n' | b'\r' => {
                newline = true;
                j += 1;
            }
            b'-' if b.get(j + 1) == Some(&b'-') => {
                j = line_end(b, j);
                if j == b.len() {
                    return None;
                }
            }
            b'\'' if newline => return Some(j),
            _ => return None,
        }
    }
}

/// End of the quoted identifier whose opening quote is at `q` (`""` is a quote in it), or
/// the end of the text. Plans and messages quote names the same way.
pub fn quoted_ident_end(b: &[u8], q: usize) -> usize {
    quoted_ident(b, q).0
}

/// End of the quoted identifier whose opening quote is at `q`, and whether it closed.
fn quoted_ident(b: &[u8], q: usize) -> (usize, bool) {
    let mut j = q + 1;
    while j < b.len() {
        if b[j] == b'"' {
            if b.get(j + 1) == Some(&b'"') {
                j += 2;
                continue;
            }
            return (j + 1, true);
        }
        j += 1;
    }
    (b.len(), false)
}

/// A dollar-quoted string at `i`: `$$` or `$tag$` where the tag is an identifier without
/// `$` (any byte ≥ 0x80 is a letter in it), up to the first repetition of the same
/// delimiter. `None` when no delimiter starts here (`$` alone, `$a` without its `$`).
pub fn dollar_string(b: &[u8], i: usize) -> Option<(usize, bool)> {
    let mut j = i + 1;
    if b.get(j).is_some_and(|&c| is_ident_start(c)) {
        j += 1;
        while b
            .get(j)
            .is_some_and(|&c| is_ident_start(c) || c.is_ascii_digit())
        {
            j += 1;
        }
    }
    if b.get(j) != Some(&b'$') {
        return None;
    }
    let tag = &b[i..=j];
    let body = j + 1;
    Some(match memchr::memmem::find(&b[body..], tag) {
        Some(n) => (body + n + tag.len(), true),
        None => (b.len(), false),
    })
}

/// `{decdigit}(_?{decdigit})*` from `i`.
fn digits(b: &[u8], mut i: usize, digit: fn(&u8) -> bool) -> usize {
    while i < b.len() {
        if digit(&b[i]) {
            i += 1;
        } else if b[i] == b'_' && i > 0 && digit(&b[i - 1]) && b.get(i + 1).is_some_and(digit) {
            i += 2;
        } else {
            break;
        }
    }
    i
}

/// End of the number at `i` (a digit, or `.` before a digit): integers in bases 10, 16,
/// 8 and 2 with `_` between digits, `1.5`, `1.`, `.5`, exponents. `1..2` is `1`, `..`,
/// `2`; `1e` and `1e+` end before the `e` (PostgreSQL calls both junk).
fn number(b: &[u8], i: usize) -> usize {
    let dec = |c: &u8| c.is_ascii_digit();
    if b[i] == b'0' {
        let base: Option<fn(&u8) -> bool> = match b.get(i + 1) {
            Some(b'x' | b'X') => Some(|c| c.is_ascii_hexdigit()),
            Some(b'o' | b'O') => Some(|c| (b'0'..=b'7').contains(c)),
            Some(b'b' | b'B') => Some(|c| *c == b'0' || *c == b'1'),
            _ => None,
        };
        if let Some(digit) = base {
            let first = i + 2 + usize::from(b.get(i + 2) == Some(&b'_'));
            if b.get(first).is_some_and(digit) {
                return digits(b, first, digit);
            }
        }
    }
    let mut j = if b[i] == b'.' { i } else { digits(b, i, dec) };
    if b.get(j) == Some(&b'.') {
        if b.get(j + 1) == Some(&b'.') {
            return j;
        }
        j += 1;
        if b.get(j).is_some_and(dec) {
            j = digits(b, j, dec);
        }
    }
    if matches!(b.get(j), Some(b'e' | b'E')) {
        let k = j + 1 + usize::from(matches!(b.get(j + 1), Some(b'+' | b'-')));
        if b.get(k).is_some_and(dec) {
            j = digits(b, k, dec);
        }
    }
    j
}

/// End of the operator at `i`: a run of operator characters, cut before a comment that
/// starts inside it, and without trailing `+`/`-` unless it holds a character no SQL
/// operator has (so `=-1` is `=`, `-`, `1` but `?-` stays one operator).
fn operator(b: &[u8], i: usize) -> usize {
    let run = b[i..].iter().take_while(|&&c| is_op_char(c)).count();
    let op = &b[i..i + run];
    let mut n = op
        .windows(2)
        .position(|w| w == b"/*" || w == b"--")
        .unwrap_or(run);
    // A comment at the very start was taken by the comment rules.
    n = n.max(1);
    if n > 1 && matches!(op[n - 1], b'+' | b'-') {
        let special = op[..n - 1].iter().any(|c| {
            matches!(
                c,
                b'~' | b'!' | b'@' | b'#' | b'^' | b'&' | b'|' | b'`' | b'?' | b'%'
            )
        });
        if !special {
            while n > 1 && matches!(op[n - 1], b'+' | b'-') {
                n -= 1;
            }
        }
    }
    i + n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lex(s: &str) -> Vec<(Kind, &str)> {
        Lexer::new(s)
            .filter(|t| t.kind != Kind::Space)
            .map(|t| (t.kind, &s[t.start..t.end]))
            .collect()
    }

    #[test]
    fn strings_in_every_form() {
        use Kind::String as S;
        use StringForm::*;
        assert_eq!(
            lex("'a''b' E'c\\'d' B'10' x'1F' U&'\\0041' $$x$$ $é$ $a$ $é$"),
            vec![
                (S(Standard), "'a''b'"),
                (S(Escape), "E'c\\'d'"),
                (S(Bit), "B'10'"),
                (S(Hex), "x'1F'"),
                (S(Unicode), "U&'\\0041'"),
                (S(Dollar), "$$x$$"),
                (S(Dollar), "$é$ $a$ $é$"),
            ]
        );
        assert_eq!(
            lex("N'x'"),
            vec![(Kind::National, "N"), (S(Standard), "'x'")]
        );
        // A bit string does not double its quote: two strings.
        assert_eq!(lex("B'1''0'"), vec![(S(Bit), "B'1'"), (S(Standard), "'0'")]);
    }

    #[test]
    fn continued_strings_are_one_token_only_across_a_newline() {
        use Kind::String as S;
        use StringForm::*;
        assert_eq!(lex("'a'\n'b'"), vec![(S(Standard), "'a'\n'b'")]);
        assert_eq!(
            lex("'a' -- c\n  -- d\n 'b' x"),
            vec![(S(Standard), "'a' -- c\n  -- d\n 'b'"), (Kind::Word, "x")]
        );
        assert_eq!(
            lex("'a' 'b'"),
            vec![(S(Standard), "'a'"), (S(Standard), "'b'")]
        );
        assert_eq!(
            lex("'a' /* c */\n'b'"),
            vec![
                (S(Standard), "'a'"),
                (Kind::BlockComment, "/* c */"),
                (S(Standard), "'b'")
            ]
        );
        // A continued E'' string keeps its escapes.
        assert_eq!(lex("E'a'\n'\\''"), vec![(S(Escape), "E'a'\n'\\''")]);
    }

    #[test]
    fn comments_nest_and_end_operators() {
        assert_eq!(
            lex("a/* x /* y */ z */b"),
            vec![
                (Kind::Word, "a"),
                (Kind::BlockComment, "/* x /* y */ z */"),
                (Kind::Word, "b")
            ]
        );
        assert_eq!(
            lex("a+--c\nb"),
            vec![
                (Kind::Word, "a"),
                (Kind::Symbol, "+"),
                (Kind::LineComment, "--c"),
                (Kind::Word, "b")
            ]
        );
        assert_eq!(
            lex("=-1"),
            vec![
                (Kind::Symbol, "="),
                (Kind::Symbol, "-"),
                (Kind::Number, "1")
            ]
        );
        assert_eq!(lex("?-"), vec![(Kind::Symbol, "?-")]);
        assert_eq!(lex("/* open"), vec![(Kind::BlockComment, "/* open")]);
        assert!(!Lexer::new("/* open").next().expect("token").closed);
    }

    #[test]
    fn numbers_params_and_words() {
        assert_eq!(
            lex("1..2 1.5e3 .5 0x1F 1_000 $1 a$b 1abc"),
            vec![
                (Kind::Number, "1"),
                (Kind::Symbol, ".."),
                (Kind::Number, "2"),
                (Kind::Number, "1.5e3"),
                (Kind::Number, ".5"),
                (Kind::Number, "0x1F"),
                (Kind::Number, "1_000"),
                (Kind::Param, "$1"),
                (Kind::Word, "a$b"),
                (Kind::Number, "1"),
                (Kind::Word, "abc"),
            ]
        );
        assert_eq!(
            lex("$ $a"),
            vec![(Kind::Other, "$"), (Kind::Other, "$"), (Kind::Word, "a")]
        );
        assert_eq!(
            lex("x::int"),
            vec![(Kind::Word, "x"), (Kind::Symbol, "::"), (Kind::Word, "int")]
        );
    }

    #[test]
    fn bodies_are_what_the_delimiters_enclose() {
        for (s, want) in [
            ("'a''b'", "a''b"),
            ("E'x'", "x"),
            ("U&'x'", "x"),
            ("$tag$x$tag$", "x"),
            ("$$$$", ""),
            ("$é$open", "open"),
            ("'open", "open"),
            ("U&\"x\"", "x"),
            ("/* c */", " c "),
            ("/* open", " open"),
        ] {
            let t = Lexer::new(s).next().expect("token");
            let (a, b) = t.body(s.as_bytes());
            assert_eq!(&s[a..b], want, "{s}");
        }
    }

    #[test]
    fn backslashes_escape_plain_strings_only_when_asked() {
        let s = "'a\\' x '";
        assert_eq!(Lexer::new(s).count(), 5);
        let t: Vec<Token> = Lexer::new(s).backslash_quotes().collect();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].end, s.len());
        assert!(t[0].closed);
    }

    #[test]
    fn tokens_cover_every_byte_of_any_text() {
        for s in [
            "", "'", "E'\\", "$a$", "$é", "U&", "u&\"", "\"", "--", "/*/", "0x", "1e+", "é",
            "\u{0b}x", "B'", "N", "a\u{0}b",
        ] {
            let mut at = 0;
            for t in Lexer::new(s) {
                assert_eq!(t.start, at, "{s:?}");
                assert!(t.end > t.start, "{s:?}");
                assert!(s.is_char_boundary(t.end), "{s:?}");
                at = t.end;
            }
            assert_eq!(at, s.len(), "{s:?}");
        }
    }
}
