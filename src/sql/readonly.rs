//! Whether a text is one statement that only reads, as the server will read it: the
//! lexer (PostgreSQL's scanner) finds the statements and the words, so a `;` or a
//! `DELETE` inside a string, a quoted name or a comment is neither.

use super::{Kind, Lexer, Token};

/// Words that make a statement write (anywhere in a reading one: a data-modifying CTE).
const WRITES: &[&str] = &["insert", "update", "delete", "merge"];

/// What in a reading statement would write or lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes {
    /// A locking clause (`FOR UPDATE`, `FOR NO KEY UPDATE`, `FOR SHARE`, `FOR KEY SHARE`).
    Locks,
    /// A data-modifying part (`INSERT`, `UPDATE`, `DELETE`, `MERGE` in a `WITH`).
    Modifies,
    /// `SELECT … INTO`, which creates a table.
    Into,
}

/// The word of token `i` (an unquoted keyword or name, lowercased).
pub fn word(text: &str, tokens: &[Token], i: usize) -> Option<String> {
    tokens
        .get(i)
        .filter(|t| t.kind == Kind::Word)
        .map(|t| text[t.start..t.end].to_ascii_lowercase())
}

/// The first thing from token `from` on (`tokens`: the non-blank tokens of `text`)
/// that would write or lock, if any.
pub fn writes(text: &str, tokens: &[Token], from: usize) -> Option<Writes> {
    (from..tokens.len()).find_map(|i| {
        let w = word(text, tokens, i)?;
        if w == "for"
            && matches!(
                word(text, tokens, i + 1).as_deref(),
                Some("update" | "share" | "no" | "key")
            )
        {
            return Some(Writes::Locks);
        }
        if WRITES.contains(&w.as_str()) {
            return Some(Writes::Modifies);
        }
        (w == "into").then_some(Writes::Into)
    })
}

/// One statement of `text`: its non-blank tokens without the trailing semicolons, or
/// why there is not exactly one.
pub fn one_statement(text: &str) -> Result<Vec<Token>, &'static str> {
    if Lexer::new(text).any(|t| !t.closed) {
        return Err("the text ends inside a string, quoted name or comment (cut short)");
    }
    let mut all: Vec<Token> = Lexer::new(text).filter(|t| !t.is_blank()).collect();
    let is_semicolon = |t: &Token| t.kind == Kind::Symbol && &text[t.start..t.end] == ";";
    let last = all
        .iter()
        .rposition(|t| !is_semicolon(t))
        .ok_or("an empty statement")?;
    if all[..last].iter().any(is_semicolon) {
        return Err("more than one statement");
    }
    all.truncate(last + 1);
    Ok(all)
}

/// `text` as one query that only reads — `SELECT`, `VALUES`, `TABLE` or `WITH … SELECT`,
/// without a locking clause, a data-modifying part or `INTO` — from its first token to
/// its last (trailing semicolons left out), or why it is not one.
pub fn read_only(text: &str) -> Result<&str, String> {
    let tokens = one_statement(text).map_err(str::to_string)?;
    let first = tokens
        .iter()
        .position(|t| !(t.kind == Kind::Symbol && &text[t.start..t.end] == "("))
        .unwrap_or(0);
    match word(text, &tokens, first).as_deref() {
        Some("select" | "values" | "table" | "with") => {}
        Some(w) => {
            return Err(format!(
                "{}: only a query that reads may run (SELECT, VALUES, TABLE or WITH … SELECT)",
                w.to_ascii_uppercase()
            ))
        }
        None => {
            return Err("not a query: only SELECT, VALUES, TABLE or WITH … SELECT may run".into())
        }
    }
    match writes(text, &tokens, 0) {
        Some(Writes::Locks) => {
            Err("a locking clause (FOR UPDATE/SHARE): it locks the rows it reads".into())
        }
        Some(Writes::Modifies) => {
            Err("a data-modifying part (INSERT, UPDATE, DELETE or MERGE inside the query)".into())
        }
        Some(Writes::Into) => Err("SELECT … INTO creates a table".into()),
        None => Ok(&text[tokens[0].start..tokens[tokens.len() - 1].end]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_reading_query_passes_and_everything_else_says_why() {
        assert_eq!(read_only("  select 1;; "), Ok("select 1"));
        assert_eq!(
            read_only("with x as (select 1) select * from x -- note\n;"),
            Ok("with x as (select 1) select * from x")
        );
        assert_eq!(
            read_only("(select 1) union (select 2)"),
            Ok("(select 1) union (select 2)")
        );
        assert_eq!(
            read_only("select ';delete from t' as s"),
            Ok("select ';delete from t' as s")
        );
        assert_eq!(
            read_only("select 1 as \"update\""),
            Ok("select 1 as \"update\"")
        );
        for (text, why) in [
            (
                "insert into t values (1)",
                "INSERT: only a query that reads",
            ),
            (
                "delete from t returning *",
                "DELETE: only a query that reads",
            ),
            ("select 1; select 2", "more than one statement"),
            ("copy t to stdout", "COPY: only a query that reads"),
            ("set work_mem = '1GB'", "SET: only a query that reads"),
            ("select * from t for update", "a locking clause"),
            ("select * from t for no key update", "a locking clause"),
            (
                "with d as (delete from t returning *) select * from d",
                "a data-modifying part",
            ),
            ("select * into t2 from t", "SELECT … INTO creates a table"),
            ("select 'unterminated", "the text ends inside a string"),
            ("  ;  ", "an empty statement"),
            ("", "an empty statement"),
        ] {
            let got = read_only(text).expect_err(text);
            assert!(got.starts_with(why), "{text}: {got}");
        }
    }
}
