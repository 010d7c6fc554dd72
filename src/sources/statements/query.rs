//! pg_statements' queries, each returning plain data. Server errors that mean "the
//! extension cannot be used" (not preloaded, no privilege, dropped) come back as a
//! [`Problem`] with its fix, not as a failed cycle.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use super::delta::{self, Column, Key, Values};
use crate::db::text::{raw_bytes, Lossy};
use crate::db::{describe, DbError};
use crate::model::Problem;
use crate::sql::redact::passwords;

/// The fix for an extension that is not loaded.
const PRELOAD_FIX: &str =
    "add pg_stat_statements to shared_preload_libraries in postgresql.conf and restart the server";

/// A query's result, or why the extension cannot be read.
pub type Found<T> = Result<Result<T, Problem>, DbError>;

/// The installed extension, as last seen.
#[derive(Debug, Clone, PartialEq)]
pub struct Extension {
    /// `pg_extension.extversion`.
    pub version: String,
    /// Quoted schema, ready to prefix object names.
    pub schema: String,
    /// The counters this version has.
    pub columns: Vec<Column>,
    /// 1.9+: `toplevel`.
    pub has_toplevel: bool,
    /// 1.9+: `pg_stat_statements_info`.
    pub has_info: bool,
}

/// `pg_stat_statements_info` (1.9+).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Info {
    /// When the statistics were last reset.
    pub stats_reset: Option<DateTime<Utc>>,
    /// Entries evicted since then.
    pub dealloc: Option<i64>,
}

/// The entries the server sent.
#[derive(Debug, Default)]
pub struct Rows {
    /// By key, values aligned with the extension's columns.
    pub entries: Vec<(Key, Values)>,
    /// Rows sent.
    pub read: usize,
    /// Rows without a queryid: other roles' entries, hidden without pg_read_all_stats.
    pub hidden: usize,
}

/// The server's clock and the installed extension with its columns, in one round
/// trip; the columns are asked again only when the version or schema differs from
/// `known`.
pub async fn extension(
    conn: &Client,
    known: Option<&Extension>,
) -> Result<(DateTime<Utc>, Result<Extension, Problem>), DbError> {
    let row = conn
        .query_one(
            "SELECT now(), current_database()::text, e.extversion, quote_ident(n.nspname)
             FROM (SELECT 1) one
             LEFT JOIN pg_extension e ON e.extname = 'pg_stat_statements'
             LEFT JOIN pg_namespace n ON n.oid = e.extnamespace",
            &[],
        )
        .await
        .map_err(DbError::query)?;
    let now: DateTime<Utc> = row.get(0);
    let (version, schema): (Option<String>, Option<String>) = (row.get(2), row.get(3));
    let (Some(version), Some(schema)) = (version, schema) else {
        let db: String = row.get(1);
        return Ok((
            now,
            Err(Problem::new(
                format!("extension pg_stat_statements is not installed in database {db}"),
                format!(
                    "CREATE EXTENSION pg_stat_statements; in database {db} (and {PRELOAD_FIX})"
                ),
            )),
        ));
    };
    if let Some(e) = known.filter(|e| e.version == version && e.schema == schema) {
        return Ok((now, Ok(e.clone())));
    }
    let view = format!("{schema}.pg_stat_statements");
    let cols: Vec<String> = conn
        .query(
            "SELECT attname::text FROM pg_attribute
             WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
            &[&view],
        )
        .await
        .map_err(DbError::query)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let has_info: bool = conn
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("{schema}.pg_stat_statements_info")],
        )
        .await
        .map_err(DbError::query)?
        .get(0);
    Ok((
        now,
        Ok(Extension {
            version,
            schema,
            has_toplevel: cols.iter().any(|c| c == "toplevel"),
            columns: delta::columns(&cols),
            has_info,
        }),
    ))
}

/// `pg_stat_statements_info`, when the extension has it.
pub async fn info(conn: &Client, ext: &Extension) -> Found<Info> {
    if !ext.has_info {
        return Ok(Ok(Info::default()));
    }
    let q = format!(
        "SELECT stats_reset, dealloc FROM {}.pg_stat_statements_info",
        ext.schema
    );
    match conn.query_one(&q, &[]).await {
        Ok(r) => Ok(Ok(Info {
            stats_reset: r.get(0),
            dealloc: r.get(1),
        })),
        Err(e) => unusable(e),
    }
}

/// Counters of every entry whose fingerprint is not in `known` (no query texts). The
/// anti-join on one int8 per entry is a hash anti-join: the cost is the function itself
/// plus about a millisecond for 5,000 entries.
pub async fn counters(conn: &Client, ext: &Extension, known: &[i64]) -> Found<Rows> {
    let toplevel = if ext.has_toplevel {
        "s.toplevel"
    } else {
        "true"
    };
    let exprs: Vec<&str> = ext.columns.iter().map(|c| c.expr.as_str()).collect();
    let q = format!(
        "SELECT s.userid::oid, s.dbid::oid, s.queryid, {toplevel}, {}
         FROM {}.pg_stat_statements(false) s
         WHERE NOT EXISTS (SELECT 1 FROM unnest($1::int8[]) AS k(f)
             WHERE k.f = (s.userid::int8 # (s.dbid::int8 << 32) # s.queryid
                          # (s.calls << 17) # ({toplevel}::int::int8 << 62)))",
        exprs.join(", "),
        ext.schema
    );
    // Streamed: a full read of thousands of entries is never held as rows as well as
    // values (the rows of 5,000 entries are 2 MB).
    let rows = match conn.query_raw(&q, [&known]).await {
        Ok(r) => r,
        Err(e) => return unusable(e),
    };
    let mut rows = std::pin::pin!(rows);
    use futures_core::Stream;
    let mut out = Rows {
        entries: Vec::new(),
        read: 0,
        hidden: 0,
    };
    while let Some(r) = std::future::poll_fn(|cx| rows.as_mut().poll_next(cx)).await {
        let r = match r {
            Ok(r) => r,
            Err(e) => return unusable(e),
        };
        out.read += 1;
        // Without pg_read_all_stats, other roles' entries have no queryid.
        let Some(queryid) = r.try_get::<_, Option<i64>>(2).map_err(DbError::query)? else {
            out.hidden += 1;
            continue;
        };
        let key = Key {
            userid: r.try_get(0).map_err(DbError::query)?,
            dbid: r.try_get(1).map_err(DbError::query)?,
            queryid,
            toplevel: r.try_get(3).map_err(DbError::query)?,
        };
        let mut values = Vec::with_capacity(ext.columns.len());
        for i in 0..ext.columns.len() {
            values.push(
                r.try_get::<_, Option<f64>>(4 + i)
                    .map_err(DbError::query)?
                    .unwrap_or(0.0),
            );
        }
        out.entries.push((key, values));
    }
    Ok(Ok(out))
}

/// A statement's text as read: lossily, passwords masked, flagged when its bytes were
/// not UTF-8.
#[derive(Debug, Clone, PartialEq)]
pub struct Text {
    /// queryid.
    pub queryid: i64,
    /// The normalized text.
    pub text: String,
    /// Its bytes were not UTF-8 (replaced by U+FFFD).
    pub not_utf8: bool,
}

/// Normalized texts of `queryids`, cut to `max_len` bytes, passwords masked.
pub async fn texts(
    conn: &Client,
    schema: &str,
    queryids: &[i64],
    max_len: u32,
) -> Result<Vec<Text>, DbError> {
    let q = format!(
        // Bytes, not characters: a text from a SQL_ASCII database is not UTF-8, and
        // left() on it fails the whole query ("invalid byte sequence").
        "SELECT DISTINCT ON (queryid) queryid, substr({}, 1, $1) FROM {schema}.pg_stat_statements(true) WHERE queryid = ANY($2)",
        raw_bytes("query"),
    );
    let rows = conn
        .query(&q, &[&(max_len as i32), &queryids])
        .await
        .map_err(DbError::query)?;
    Ok(rows.iter().map(statement_text).collect())
}

/// True for the errors of `pg_stat_statements(true)` in a database whose encoding
/// cannot hold a text some other database's session wrote (a `SQL_ASCII` database's
/// bytes that are not UTF-8): the function converts every entry's text, so one such
/// entry fails the whole call.
pub fn is_encoding_error(e: &DbError) -> bool {
    matches!(e, DbError::Query { sqlstate: Some(code), .. } if code == "22021" || code == "22P05")
}

/// `SQL_ASCII` databases the role may connect to: there `pg_stat_statements(true)`
/// converts nothing, so every text can be read (lossily).
pub async fn sql_ascii_databases(conn: &Client) -> Result<Vec<String>, DbError> {
    let rows = conn
        .query(
            "SELECT datname::text FROM pg_catalog.pg_database
             WHERE encoding = pg_catalog.pg_char_to_encoding('SQL_ASCII') AND datallowconn
               AND has_database_privilege(oid, 'CONNECT')
             ORDER BY datname LIMIT 5",
            &[],
        )
        .await
        .map_err(DbError::query)?;
    Ok(rows
        .iter()
        .filter_map(|r| r.try_get::<_, Lossy>(0).ok())
        .filter(|l| !l.replaced)
        .map(|l| l.text)
        .collect())
}

/// The schema of pg_stat_statements in the database `conn` is connected to, if it is
/// installed there.
pub async fn schema_here(conn: &Client) -> Result<Option<String>, DbError> {
    let row = conn
        .query_opt(
            "SELECT quote_ident(n.nspname) FROM pg_extension e
             JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_stat_statements'",
            &[],
        )
        .await
        .map_err(DbError::query)?;
    Ok(row.map(|r| r.get(0)))
}

/// Database names by oid.
pub async fn databases(conn: &Client) -> Result<HashMap<u32, String>, DbError> {
    let rows = conn
        .query("SELECT oid, datname::text FROM pg_database", &[])
        .await
        .map_err(DbError::query)?;
    Ok(names(&rows))
}

/// Role names by oid.
pub async fn roles(conn: &Client) -> Result<HashMap<u32, String>, DbError> {
    let rows = conn
        .query("SELECT oid, rolname::text FROM pg_roles", &[])
        .await
        .map_err(DbError::query)?;
    Ok(names(&rows))
}

/// A statement's text as shipped: read lossily (see [`crate::db::text`]), passwords
/// masked (utility statements such as `ALTER ROLE … PASSWORD '…'` keep their constants
/// in pg_stat_statements).
fn statement_text(r: &tokio_postgres::Row) -> Text {
    let l = r
        .try_get::<_, Option<Lossy>>(1)
        .ok()
        .flatten()
        .unwrap_or(Lossy {
            text: String::new(),
            replaced: false,
        });
    Text {
        queryid: r.get(0),
        text: passwords(&l.text).unwrap_or(l.text),
        not_utf8: l.replaced,
    }
}

/// oid → name, read lossily (a name created in a SQL_ASCII database need not be UTF-8).
fn names<K: for<'a> tokio_postgres::types::FromSql<'a> + std::hash::Hash + Eq>(
    rows: &[tokio_postgres::Row],
) -> HashMap<K, String> {
    rows.iter()
        .filter_map(|r| Some((r.try_get(0).ok()?, r.try_get::<_, Lossy>(1).ok()?.text)))
        .collect()
}

/// Server errors that mean "the extension cannot be used" rather than "the cycle failed".
fn unusable<T>(e: tokio_postgres::Error) -> Found<T> {
    let code = e.as_db_error().map(|d| d.code().code().to_string());
    let msg = describe(&e);
    match code.as_deref() {
        // object_not_in_prerequisite_state: "must be loaded via shared_preload_libraries"
        Some("55000") => Ok(Err(Problem::new(msg, PRELOAD_FIX))),
        // insufficient_privilege
        Some("42501") => Ok(Err(Problem::new(
            msg,
            "GRANT pg_read_all_stats TO the agent's role (pg_monitor includes it)",
        ))),
        // undefined_function / undefined_table: dropped between our two queries.
        Some("42883") | Some("42P01") => Ok(Err(Problem::new(
            msg,
            format!("CREATE EXTENSION pg_stat_statements; (and {PRELOAD_FIX})"),
        ))),
        _ => Err(DbError::query(e)),
    }
}
