//! Whether the agent may ask the server for a statement's plan: only a text the lexer
//! proves is one statement that reads — `SELECT`, `VALUES`, `TABLE` or `WITH` … `SELECT`
//! with no data-modifying part and no locking clause. Planning takes the locks the
//! statement would take: a `SELECT` takes AccessShareLock on what it reads, while an
//! `INSERT`/`UPDATE`/`DELETE`/`MERGE` takes RowExclusiveLock on its target and `FOR
//! UPDATE`/`FOR SHARE` RowShareLock, which a `CREATE INDEX` would have to wait for (and
//! queue everyone behind it). Their plans come from auto_explain instead.

use crate::sql::{Kind, Lexer};

/// Why a text is not planned; the reason is shipped and shown in status as it is.
pub type Refusal = &'static str;

/// Words that make a statement write (anywhere in it: a data-modifying CTE, a rule's
/// action spelled in a function call is not the planner's business).
const WRITES: &[&str] = &["insert", "update", "delete", "merge"];

/// `Ok` when the agent may plan `text` (a pg_stat_statements text, constants as `$n`).
pub fn plannable(text: &str) -> Result<(), Refusal> {
    if Lexer::new(text).any(|t| !t.closed) {
        return Err("the text ends inside a string, quoted name or comment (cut short)");
    }
    let tokens: Vec<_> = Lexer::new(text).filter(|t| !t.is_blank()).collect();
    let word = |i: usize| -> Option<String> {
        tokens
            .get(i)
            .filter(|t| t.kind == Kind::Word)
            .map(|t| text[t.start..t.end].to_ascii_lowercase())
    };
    let is_semicolon =
        |t: &crate::sql::Token| t.kind == Kind::Symbol && &text[t.start..t.end] == ";";
    let last = tokens
        .iter()
        .rposition(|t| !is_semicolon(t))
        .ok_or("an empty statement")?;
    if tokens[..last].iter().any(is_semicolon) {
        return Err("more than one statement");
    }
    // A statement may start with parentheses: `(SELECT …) UNION (SELECT …)`.
    let first = tokens
        .iter()
        .position(|t| !(t.kind == Kind::Symbol && &text[t.start..t.end] == "("))
        .unwrap_or(0);
    match word(first).as_deref() {
        Some("select" | "values" | "table" | "with") => {}
        Some(w) if WRITES.contains(&w) => {
            return Err("a data-modifying statement: planning it takes RowExclusiveLock on its target (its plans come from auto_explain)")
        }
        _ => return Err("not a query (a utility statement or DDL): only SELECT, VALUES, TABLE and WITH … SELECT are planned"),
    }
    for (i, t) in tokens.iter().enumerate() {
        let Some(w) = (t.kind == Kind::Word).then(|| word(i)).flatten() else {
            continue;
        };
        if WRITES.contains(&w.as_str()) && !(w == "update" && i > 0 && locking(&word(i - 1))) {
            return Err("a data-modifying part (INSERT, UPDATE, DELETE or MERGE inside it): planning it takes RowExclusiveLock");
        }
        if w == "for"
            && matches!(
                word(i + 1).as_deref(),
                Some("update" | "share" | "no" | "key")
            )
        {
            return Err("a locking clause (FOR UPDATE/SHARE): planning it takes RowShareLock");
        }
        if w == "into" {
            return Err("SELECT … INTO creates a table");
        }
    }
    Ok(())
}

/// The word before `UPDATE` in a locking clause (`FOR UPDATE`, `FOR NO KEY UPDATE`):
/// refused as a locking clause, with that reason.
fn locking(before: &Option<String>) -> bool {
    matches!(before.as_deref(), Some("for" | "key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_statements_are_planned() {
        for ok in [
            "SELECT * FROM t WHERE id = $1",
            "select a, count(*) from t join u using (id) group by a",
            "  /* app */ SELECT 1;",
            "(SELECT 1) UNION (SELECT 2)",
            "VALUES ($1, $2)",
            "TABLE t",
            "WITH x AS (SELECT * FROM t) SELECT * FROM x",
            "SELECT 'delete from t; insert' AS s, \"update\" FROM t",
            "SELECT $$ for update $$",
        ] {
            assert_eq!(plannable(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn anything_else_is_refused_with_its_reason() {
        for (text, why) in [
            ("INSERT INTO t VALUES ($1)", "data-modifying statement"),
            ("update t set v = $1", "data-modifying statement"),
            ("DELETE FROM t", "data-modifying statement"),
            (
                "MERGE INTO t USING u ON true WHEN MATCHED THEN DELETE",
                "data-modifying statement",
            ),
            (
                "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
                "data-modifying part",
            ),
            ("SELECT * FROM t FOR UPDATE", "locking clause"),
            ("SELECT * FROM t FOR NO KEY UPDATE", "locking clause"),
            ("select * from t for share", "locking clause"),
            ("SELECT * INTO new_t FROM t", "INTO"),
            ("SELECT 1; SELECT 2", "more than one"),
            ("SELECT 1; DROP TABLE t", "more than one"),
            ("VACUUM t", "not a query"),
            ("EXPLAIN SELECT 1", "not a query"),
            ("SET work_mem = $1", "not a query"),
            ("CREATE TABLE x AS SELECT 1", "not a query"),
            ("SELECT 'unterminated", "cut short"),
            ("SELECT 1 /* cut", "cut short"),
            (";", "empty"),
            ("", "empty"),
        ] {
            let got = plannable(text).expect_err(text);
            assert!(got.contains(why), "{text}: {got}");
        }
    }
}
