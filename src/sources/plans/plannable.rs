//! What the agent may ask the server to plan, and how: only a text the lexer proves is
//! one statement, and only as a query that reads. Planning takes the locks the statement
//! would take: a `SELECT` takes AccessShareLock on what it reads, while an `INSERT`,
//! `UPDATE`, `DELETE` or `MERGE` takes RowExclusiveLock on its target and `FOR
//! UPDATE`/`FOR SHARE` RowShareLock, which a `CREATE INDEX` would have to wait for (and
//! queue everyone behind it). So a data-modifying statement is planned as the query that
//! finds its rows — `UPDATE t SET a = a + $1 WHERE id = $2` as `SELECT (a) IS NOT
//! DISTINCT FROM (a + $1) FROM t WHERE id = $2` (every parameter stays, so the server can
//! still infer its type), `DELETE FROM t USING u WHERE …` as `SELECT 1 FROM t, u WHERE
//! …`, `INSERT … SELECT` as its `SELECT` — which is the plan under its ModifyTable node.

use std::borrow::Cow;

use crate::sql::readonly::Writes;
use crate::sql::{Kind, Token};

/// Why a text is not planned; the reason is shipped and shown in status as it is.
pub type Refusal = &'static str;

/// What the server is asked to plan for a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToPlan<'a> {
    /// The query planned.
    pub text: Cow<'a, str>,
    /// `update`, `delete`, `insert` when that statement is planned as the query that
    /// finds its rows; `None` for a reading statement planned as it is.
    pub planned_as_select: Option<&'static str>,
}

/// The refusal of a utility statement or DDL: it has no plan at all (pg_plans passes
/// over it instead of counting it among the statements it could not plan).
pub const NOT_A_QUERY: Refusal = "not a query (a utility statement or DDL): only SELECT, VALUES, TABLE, WITH … SELECT and the rows of UPDATE, DELETE and INSERT … SELECT are planned";

/// The query the agent may plan for `text` (a pg_stat_statements text, constants as
/// `$n`), or why there is none.
pub fn plannable(text: &str) -> Result<ToPlan<'_>, Refusal> {
    let all = crate::sql::readonly::one_statement(text)?;
    let last = all.len() - 1;
    let s = Statement { text, tokens: &all };
    // A statement may start with parentheses: `(SELECT …) UNION (SELECT …)`.
    let first = s
        .tokens
        .iter()
        .position(|t| !(t.kind == Kind::Symbol && &text[t.start..t.end] == "("))
        .unwrap_or(0);
    match s.word(first).as_deref() {
        Some("select" | "values" | "table" | "with") => {
            s.reads(0)?;
            Ok(ToPlan {
                text: Cow::Borrowed(text[..s.tokens[last].end].trim_start()),
                planned_as_select: None,
            })
        }
        Some("update") if first == 0 => s.update().map(|t| ToPlan {
            text: Cow::Owned(t),
            planned_as_select: Some("update"),
        }),
        Some("delete") if first == 0 => s.delete().map(|t| ToPlan {
            text: Cow::Owned(t),
            planned_as_select: Some("delete"),
        }),
        Some("insert") if first == 0 => s.insert().map(|t| ToPlan {
            text: Cow::Borrowed(t),
            planned_as_select: Some("insert"),
        }),
        Some("merge") => Err("MERGE: planning it takes RowExclusiveLock on its target, and it has no one query that finds its rows"),
        _ => Err(NOT_A_QUERY),
    }
}

/// One statement's tokens (no blanks, no trailing semicolons).
struct Statement<'t, 'k> {
    text: &'t str,
    tokens: &'k [Token],
}

impl<'t> Statement<'t, '_> {
    fn word(&self, i: usize) -> Option<String> {
        self.tokens
            .get(i)
            .filter(|t| t.kind == Kind::Word)
            .map(|t| self.text[t.start..t.end].to_ascii_lowercase())
    }

    fn symbol(&self, i: usize) -> Option<&'t str> {
        self.tokens
            .get(i)
            .filter(|t| t.kind == Kind::Symbol)
            .map(|t| &self.text[t.start..t.end])
    }

    /// The text from token `a` to the end of token `b - 1`.
    fn span(&self, a: usize, b: usize) -> &'t str {
        if a >= b {
            return "";
        }
        &self.text[self.tokens[a].start..self.tokens[b - 1].end]
    }

    /// Parenthesis depth before each token.
    fn depths(&self) -> Vec<i32> {
        let mut d = 0;
        self.tokens
            .iter()
            .enumerate()
            .map(|(i, _)| {
                let here = d;
                match self.symbol(i) {
                    Some("(" | "[") => d += 1,
                    Some(")" | "]") => d -= 1,
                    _ => {}
                }
                here
            })
            .collect()
    }

    /// The first token at depth 0 from `from` that is one of the words `words` (a
    /// `FROM` after `DISTINCT` — `IS DISTINCT FROM` — is no clause).
    fn clause(&self, depths: &[i32], from: usize, words: &[&str]) -> Option<usize> {
        (from..self.tokens.len()).find(|&i| {
            depths[i] == 0
                && self.word(i).is_some_and(|w| {
                    words.contains(&w.as_str())
                        && !(w == "from"
                            && self.word(i.wrapping_sub(1)).as_deref() == Some("distinct"))
                })
        })
    }

    /// `Ok` when the tokens from `from` only read: no data-modifying part, no locking
    /// clause, no `INTO`.
    fn reads(&self, from: usize) -> Result<(), Refusal> {
        match crate::sql::readonly::writes(self.text, self.tokens, from) {
            None => Ok(()),
            Some(Writes::Locks) => {
                Err("a locking clause (FOR UPDATE/SHARE): planning it takes RowShareLock")
            }
            Some(Writes::Modifies) => Err("a data-modifying part (INSERT, UPDATE, DELETE or MERGE inside a query): planning it takes RowExclusiveLock"),
            Some(Writes::Into) => Err("SELECT … INTO creates a table"),
        }
    }

    /// `UPDATE target SET … [FROM …] [WHERE …] [RETURNING …]` as the query that finds
    /// its rows, every assignment kept as a comparison so that each parameter stays
    /// where the server can infer its type.
    fn update(&self) -> Result<String, Refusal> {
        let d = self.depths();
        let set = self
            .clause(&d, 1, &["set"])
            .ok_or("an UPDATE without SET")?;
        let from = self.clause(&d, set + 1, &["from"]);
        let filter = self.clause(&d, set + 1, &["where"]);
        let returning = self.clause(&d, set + 1, &["returning"]);
        let end = |after: usize| {
            [from, filter, returning]
                .into_iter()
                .flatten()
                .filter(|&i| i > after)
                .min()
                .unwrap_or(self.tokens.len())
        };
        let assignments_end = end(set);
        let mut compared = Vec::new();
        let mut start = set + 1;
        for i in set + 1..=assignments_end {
            if i < assignments_end && !(d[i] == 0 && self.symbol(i) == Some(",")) {
                continue;
            }
            let eq = (start..i)
                .find(|&j| d[j] == 0 && self.symbol(j) == Some("="))
                .ok_or("an UPDATE assignment without =")?;
            if (eq + 1..i).any(|j| self.word(j).as_deref() == Some("default")) {
                return Err(
                    "an UPDATE that sets DEFAULT: no query finds its rows with the same parameters",
                );
            }
            compared.push(format!(
                "({}) IS NOT DISTINCT FROM ({})",
                self.span(start, eq),
                self.span(eq + 1, i)
            ));
            start = i + 1;
        }
        self.reads_after(set)?;
        let mut q = format!("SELECT {} FROM {}", compared.join(", "), self.span(1, set));
        if let Some(f) = from {
            q.push_str(", ");
            q.push_str(self.span(f + 1, end(f)));
        }
        self.push_where(&mut q, filter, end)?;
        Ok(q)
    }

    /// `DELETE FROM target [USING …] [WHERE …] [RETURNING …]` as the query that finds
    /// its rows.
    fn delete(&self) -> Result<String, Refusal> {
        let d = self.depths();
        if self.word(1).as_deref() != Some("from") {
            return Err("a DELETE without FROM");
        }
        let using = self.clause(&d, 2, &["using"]);
        let filter = self.clause(&d, 2, &["where"]);
        let returning = self.clause(&d, 2, &["returning"]);
        let end = |after: usize| {
            [using, filter, returning]
                .into_iter()
                .flatten()
                .filter(|&i| i > after)
                .min()
                .unwrap_or(self.tokens.len())
        };
        self.reads_after(1)?;
        let mut q = format!("SELECT 1 FROM {}", self.span(2, end(1)));
        if let Some(u) = using {
            q.push_str(", ");
            q.push_str(self.span(u + 1, end(u)));
        }
        self.push_where(&mut q, filter, end)?;
        Ok(q)
    }

    /// `INSERT INTO target [(columns)] SELECT …` as its query; `VALUES` inserts nothing
    /// to plan.
    fn insert(&self) -> Result<&'t str, Refusal> {
        let d = self.depths();
        let Some(query) = (2..self.tokens.len()).find(|&i| {
            d[i] == 0
                && (self.symbol(i) == Some("(")
                    && matches!(
                        self.word(i + 1).as_deref(),
                        Some("select" | "with" | "values" | "table")
                    )
                    || matches!(
                        self.word(i).as_deref(),
                        Some("select" | "with" | "values" | "table" | "default")
                    ))
        }) else {
            return Err("an INSERT without a query");
        };
        if matches!(self.word(query).as_deref(), Some("values" | "default")) {
            return Err("INSERT … VALUES: its plan is the row it inserts");
        }
        // Up to `ON CONFLICT` or `RETURNING` (a join's `ON` is the query's).
        let end = (query + 1..self.tokens.len())
            .find(|&i| {
                d[i] == 0
                    && match self.word(i).as_deref() {
                        Some("returning") => true,
                        Some("on") => self.word(i + 1).as_deref() == Some("conflict"),
                        _ => false,
                    }
            })
            .unwrap_or(self.tokens.len());
        let s = Statement {
            text: self.text,
            tokens: &self.tokens[query..end],
        };
        s.reads(0)?;
        Ok(self.span(query, end))
    }

    /// What follows `from` reads (the SET expressions, FROM, USING and WHERE clauses).
    fn reads_after(&self, from: usize) -> Result<(), Refusal> {
        Statement {
            text: self.text,
            tokens: &self.tokens[from + 1..],
        }
        .reads(0)
    }

    fn push_where(
        &self,
        q: &mut String,
        filter: Option<usize>,
        end: impl Fn(usize) -> usize,
    ) -> Result<(), Refusal> {
        if let Some(w) = filter {
            if self.word(w + 1).as_deref() == Some("current") {
                return Err("WHERE CURRENT OF a cursor");
            }
            q.push_str(" WHERE ");
            q.push_str(self.span(w + 1, end(w)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_is(text: &str) -> Result<ToPlan<'_>, Refusal> {
        Ok(ToPlan {
            text: Cow::Borrowed(text.trim_start().trim_end_matches(';')),
            planned_as_select: None,
        })
    }

    #[test]
    fn reading_statements_are_planned_as_they_are() {
        for ok in [
            "SELECT * FROM t WHERE id = $1",
            "select a, count(*) from t join u using (id) group by a",
            "(SELECT 1) UNION (SELECT 2)",
            "VALUES ($1, $2)",
            "TABLE t",
            "WITH x AS (SELECT * FROM t) SELECT * FROM x",
            "SELECT 'delete from t; insert' AS s, \"update\" FROM t",
            "SELECT $$ for update $$",
            "  SELECT 1;",
        ] {
            assert_eq!(plannable(ok), as_is(ok), "{ok}");
        }
    }

    #[test]
    fn a_data_modifying_statement_is_planned_as_the_query_that_finds_its_rows() {
        for (text, want, kind) in [
            (
                "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
                "SELECT (abalance) IS NOT DISTINCT FROM (abalance + $1) FROM pgbench_accounts WHERE aid = $2",
                "update",
            ),
            (
                "update only t as x set a = $1, (b, c) = ($2, lower($3)) from u where u.id = x.id and x.f is distinct from $4 returning x.a",
                "SELECT (a) IS NOT DISTINCT FROM ($1), ((b, c)) IS NOT DISTINCT FROM (($2, lower($3))) FROM only t as x, u WHERE u.id = x.id and x.f is distinct from $4",
                "update",
            ),
            (
                "update t set d = extract(year from now()), e = a is distinct from b",
                "SELECT (d) IS NOT DISTINCT FROM (extract(year from now())), (e) IS NOT DISTINCT FROM (a is distinct from b) FROM t",
                "update",
            ),
            (
                "DELETE FROM t WHERE created < $1 RETURNING id",
                "SELECT 1 FROM t WHERE created < $1",
                "delete",
            ),
            (
                "delete from t a using u where u.id = a.id",
                "SELECT 1 FROM t a, u WHERE u.id = a.id",
                "delete",
            ),
            (
                "INSERT INTO t (a, b) SELECT x, y FROM u WHERE z = $1 ON CONFLICT DO NOTHING",
                "SELECT x, y FROM u WHERE z = $1",
                "insert",
            ),
            (
                "insert into t select a.x from a join b on a.id = b.id on conflict (x) do nothing",
                "select a.x from a join b on a.id = b.id",
                "insert",
            ),
            (
                "insert into t with s as (select 1 a) select a from s returning *",
                "with s as (select 1 a) select a from s",
                "insert",
            ),
        ] {
            let got = plannable(text).expect(text);
            assert_eq!(got.text, want, "{text}");
            assert_eq!(got.planned_as_select, Some(kind), "{text}");
        }
    }

    #[test]
    fn anything_else_is_refused_with_its_reason() {
        for (text, why) in [
            ("INSERT INTO t VALUES ($1)", "INSERT … VALUES"),
            ("insert into t default values", "INSERT … VALUES"),
            (
                "MERGE INTO t USING u ON true WHEN MATCHED THEN DELETE",
                "MERGE",
            ),
            ("UPDATE t SET a = DEFAULT WHERE id = $1", "DEFAULT"),
            ("DELETE FROM t WHERE CURRENT OF c", "CURRENT OF"),
            (
                "UPDATE t SET a = (SELECT b FROM u FOR UPDATE)",
                "locking clause",
            ),
            (
                "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
                "data-modifying part",
            ),
            (
                "WITH x AS (SELECT 1) UPDATE t SET a = 1",
                "data-modifying part",
            ),
            ("insert into t select * from u for share", "locking clause"),
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
