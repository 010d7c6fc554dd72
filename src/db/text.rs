//! Text from the server read as bytes. A `SQL_ASCII` database stores and passes on its
//! bytes unconverted, so a query text, a database or role name seen through the
//! statistics views need not be UTF-8; the driver's `String` refuses such a value and
//! with it the whole cycle of a source. Here it is decoded lossily (U+FFFD) and the row
//! flagged, so one odd session blinds nothing.

use std::error::Error;

use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::Row;

/// A text (or `bytea`: raw bytes of a text, e.g. `textsend(query)`) column, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lossy {
    /// The text; invalid sequences replaced by U+FFFD, an incomplete sequence at the end
    /// (a cut at a byte limit) dropped.
    pub text: String,
    /// Some bytes were not UTF-8.
    pub replaced: bool,
}

impl Lossy {
    /// Decodes `raw`.
    pub fn decode(raw: &[u8]) -> Lossy {
        let body = &raw[..raw.len() - incomplete_tail(raw)];
        match std::str::from_utf8(body) {
            Ok(s) => Lossy {
                text: s.to_string(),
                replaced: false,
            },
            Err(_) => Lossy {
                text: String::from_utf8_lossy(body).into_owned(),
                replaced: true,
            },
        }
    }
}

/// Bytes at the end that start a character but stop before its end (a value cut at a
/// byte limit): dropped rather than shown as a bad byte.
fn incomplete_tail(raw: &[u8]) -> usize {
    for back in 1..=raw.len().min(3) {
        let b = raw[raw.len() - back];
        if b & 0xC0 == 0x80 {
            continue;
        }
        let need = match b {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return 0,
        };
        return if need > back { back } else { 0 };
    }
    0
}

impl<'a> FromSql<'a> for Lossy {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Lossy, Box<dyn Error + Sync + Send>> {
        Ok(Lossy::decode(raw))
    }

    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::BYTEA | Type::UNKNOWN
        )
    }
}

/// SQL for the bytes of text expression `expr` as they are stored, as `bytea`, whatever
/// the encodings: `textsend` converts to the client's UTF-8 (and in a `SQL_ASCII`
/// server verifies the bytes and fails the whole query on one bad byte), so there the
/// bytes come unconverted through `convert_to(…, 'SQL_ASCII')`. Decode with [`Lossy`].
pub fn raw_bytes(expr: &str) -> String {
    format!(
        "(CASE WHEN current_setting('server_encoding') = 'SQL_ASCII' \
         THEN convert_to({expr}, 'SQL_ASCII') ELSE textsend({expr}) END)"
    )
}

/// Reads text column `col` lossily; sets `replaced` when its bytes were not UTF-8.
pub fn text(
    r: &Row,
    col: &str,
    replaced: &mut bool,
) -> Result<Option<String>, tokio_postgres::Error> {
    Ok(r.try_get::<_, Option<Lossy>>(col)?.map(|l| {
        *replaced |= l.replaced;
        l.text
    }))
}

/// A name (role, schema) as SQL reads it whatever it is: always in double quotes, so a
/// keyword, capitals or a quote in it stay the name.
pub fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_that_are_not_utf8_are_replaced_and_flagged() {
        assert_eq!(Lossy::decode(b"select 1").text, "select 1");
        let l = Lossy::decode(b"/* c\xff */ SELECT 42");
        assert_eq!(
            (l.text.as_str(), l.replaced),
            ("/* c\u{fffd} */ SELECT 42", true)
        );
        // A cut in the middle of "é" is a cut, not bad text.
        let l = Lossy::decode(b"caf\xc3");
        assert_eq!((l.text.as_str(), l.replaced), ("caf", false));
        let l = Lossy::decode(b"\xff caf\xc3");
        assert_eq!((l.text.as_str(), l.replaced), ("\u{fffd} caf", true));
    }
}
