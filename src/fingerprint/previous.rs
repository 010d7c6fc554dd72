//! The normalization of the releases before the one SQL lexer, kept as the tests' record
//! of what a fingerprint was: every text it read as PostgreSQL does must keep its
//! fingerprint (`fingerprint::tests`).

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
fn block_comment_end(b: &[u8], start: usize) -> usize {
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
