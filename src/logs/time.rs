//! Server timestamps (`2026-11-26 17:35:07.123 UTC`) to RFC 3339. The server writes the
//! zone as an abbreviation of `log_timezone`; the common ones are known here, numeric
//! ones (`+03`, `-0330`) are read, and an unknown one leaves the timestamp as written.

/// Offsets of the zone abbreviations PostgreSQL writes for common `log_timezone`s.
const ZONES: &[(&str, i32)] = &[
    ("UTC", 0),
    ("GMT", 0),
    ("Z", 0),
    ("UCT", 0),
    ("WET", 0),
    ("WEST", 3600),
    ("BST", 3600),
    ("IST", 19800),
    ("CET", 3600),
    ("CEST", 7200),
    ("MET", 3600),
    ("MEST", 7200),
    ("EET", 7200),
    ("EEST", 10800),
    ("MSK", 10800),
    ("EST", -5 * 3600),
    ("EDT", -4 * 3600),
    ("CST", -6 * 3600),
    ("CDT", -5 * 3600),
    ("MST", -7 * 3600),
    ("MDT", -6 * 3600),
    ("PST", -8 * 3600),
    ("PDT", -7 * 3600),
    ("AKST", -9 * 3600),
    ("AKDT", -8 * 3600),
    ("HST", -10 * 3600),
    ("JST", 9 * 3600),
    ("KST", 9 * 3600),
    ("HKT", 8 * 3600),
    ("SGT", 8 * 3600),
    ("AWST", 8 * 3600),
    ("ACST", 34200),
    ("ACDT", 37800),
    ("AEST", 10 * 3600),
    ("AEDT", 11 * 3600),
    ("NZST", 12 * 3600),
    ("NZDT", 13 * 3600),
];

/// RFC 3339 (UTC, milliseconds) for a server timestamp, or `None` when the zone is not
/// known. Hand-parsed: it runs once per log event.
pub fn to_rfc3339(ts: &str) -> Option<String> {
    use chrono::{Datelike, NaiveDate, Timelike};
    let (local, zone) = ts.rsplit_once(' ')?;
    let secs = offset(zone)?;
    let b = local.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b' '
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    let millis = match b.get(19) {
        None => 0,
        Some(b'.') => {
            let frac = &b[20..];
            if frac.is_empty() || !frac.iter().all(u8::is_ascii_digit) {
                return None;
            }
            // First three digits, padded: ".5" is 500 ms.
            (0..3).fold(0u32, |acc, i| {
                acc * 10 + frac.get(i).map_or(0, |c| u32::from(c - b'0'))
            })
        }
        Some(_) => return None,
    };
    // Lines come many to a second: the second's conversion is kept for the next line
    // (exact: zones are whole seconds, so the milliseconds never change the rest).
    let key = SecondKey::new(&b[..19], zone.as_bytes());
    let cached = LAST_SECOND.with(|c| c.get().filter(|(k, _)| Some(*k) == key).map(|(_, v)| v));
    let head = match cached {
        Some(head) => head,
        None => {
            let naive = NaiveDate::from_ymd_opt(num(0..4)? as i32, num(5..7)?, num(8..10)?)?
                .and_hms_opt(num(11..13)?, num(14..16)?, num(17..19)?)?;
            let utc = if secs == 0 {
                naive
            } else {
                naive - chrono::Duration::seconds(i64::from(secs))
            };
            let year = u32::try_from(utc.year()).ok().filter(|y| *y <= 9999)?;
            // Written digit by digit: format! was a tenth of parse-log's time.
            let mut head = [0u8; 19];
            put(&mut head, 0, year, 4);
            put(&mut head, 5, utc.month(), 2);
            put(&mut head, 8, utc.day(), 2);
            put(&mut head, 11, utc.hour(), 2);
            put(&mut head, 14, utc.minute(), 2);
            put(&mut head, 17, utc.second(), 2);
            for (at, c) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')] {
                head[at] = c;
            }
            if let Some(k) = key {
                LAST_SECOND.with(|c| c.set(Some((k, head))));
            }
            head
        }
    };
    let mut out = [0u8; 24];
    out[..19].copy_from_slice(&head);
    out[19] = b'.';
    put(&mut out, 20, millis, 3);
    out[23] = b'Z';
    // Only ASCII digits and separators were written.
    String::from_utf8(out.to_vec()).ok()
}

/// Writes `v` as `width` decimal digits at `at`.
fn put(out: &mut [u8], at: usize, v: u32, width: usize) {
    let mut v = v;
    for i in (0..width).rev() {
        out[at + i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// A local second as written (`2026-11-26 17:35:07`) with its zone (up to 8 bytes).
#[derive(Clone, Copy, PartialEq)]
struct SecondKey([u8; 19], [u8; 8], u8);

impl SecondKey {
    fn new(local: &[u8], zone: &[u8]) -> Option<SecondKey> {
        let mut z = [0u8; 8];
        z.get_mut(..zone.len())?.copy_from_slice(zone);
        Some(SecondKey(local.try_into().ok()?, z, zone.len() as u8))
    }
}

thread_local! {
    /// The last second converted, and its UTC text (`2026-11-26T14:05:07`).
    static LAST_SECOND: std::cell::Cell<Option<(SecondKey, [u8; 19])>> =
        const { std::cell::Cell::new(None) };
}

/// RFC 3339 for `%n` (seconds since the epoch).
pub fn epoch_to_rfc3339(epoch: f64) -> Option<String> {
    let ms = (epoch * 1000.0).round() as i64;
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

fn offset(zone: &str) -> Option<i32> {
    if let Some(&(_, s)) = ZONES.iter().find(|(z, _)| *z == zone) {
        return Some(s);
    }
    // "+03", "-0330", "+05:30"
    let (sign, rest) = match zone.as_bytes().first()? {
        b'+' => (1, &zone[1..]),
        b'-' => (-1, &zone[1..]),
        _ => return None,
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let (h, m) = if digits.len() <= 2 {
        (digits.parse::<i32>().ok()?, 0)
    } else {
        let (h, m) = digits.split_at(digits.len() - 2);
        (h.parse::<i32>().ok()?, m.parse::<i32>().ok()?)
    };
    Some(sign * (h * 3600 + m * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones() {
        assert_eq!(
            to_rfc3339("2026-11-26 17:35:07.123 UTC").as_deref(),
            Some("2026-11-26T17:35:07.123Z")
        );
        assert_eq!(
            to_rfc3339("2026-11-26 18:35:07 CET").as_deref(),
            Some("2026-11-26T17:35:07.000Z")
        );
        assert_eq!(
            to_rfc3339("2026-11-26 21:05:07.5 +0330").as_deref(),
            Some("2026-11-26T17:35:07.500Z")
        );
        assert_eq!(to_rfc3339("2026-11-26 17:35:07 XYZT"), None);
        assert_eq!(
            to_rfc3339("0999-01-01 00:00:00.001 +01").as_deref(),
            Some("0998-12-31T23:00:00.001Z")
        );
        assert_eq!(
            to_rfc3339("2026-12-31 23:59:59.999 -0100").as_deref(),
            Some("2027-01-01T00:59:59.999Z")
        );
        assert_eq!(to_rfc3339("2026-02-30 00:00:00 UTC"), None, "no such day");
        assert_eq!(
            epoch_to_rfc3339(1764178507.123).as_deref(),
            Some("2025-11-26T17:35:07.123Z")
        );
    }

    #[test]
    fn a_second_kept_from_the_last_line_is_used_only_for_the_same_second_and_zone() {
        let t = |s: &str| to_rfc3339(s);
        assert_eq!(
            t("2026-11-26 18:35:07.001 CET").as_deref(),
            Some("2026-11-26T17:35:07.001Z")
        );
        // Same second and zone: other milliseconds.
        assert_eq!(
            t("2026-11-26 18:35:07.999 CET").as_deref(),
            Some("2026-11-26T17:35:07.999Z")
        );
        assert_eq!(
            t("2026-11-26 18:35:07 CET").as_deref(),
            Some("2026-11-26T17:35:07.000Z")
        );
        // Same local second, another zone (and one only a byte longer).
        assert_eq!(
            t("2026-11-26 18:35:07.5 UTC").as_deref(),
            Some("2026-11-26T18:35:07.500Z")
        );
        assert_eq!(
            t("2026-11-26 18:35:07.5 CEST").as_deref(),
            Some("2026-11-26T16:35:07.500Z")
        );
        assert_eq!(t("2026-11-26 18:35:07.5 CES"), None, "unknown zone");
        // The next second, then the cached one again.
        assert_eq!(
            t("2026-11-26 18:35:08.010 CEST").as_deref(),
            Some("2026-11-26T16:35:08.010Z")
        );
        assert_eq!(
            t("2026-11-26 18:35:07.020 CEST").as_deref(),
            Some("2026-11-26T16:35:07.020Z")
        );
        // A bad fraction or date is refused even when the second is cached.
        assert_eq!(t("2026-11-26 18:35:07.x CEST"), None);
        assert_eq!(t("2026-11-26 18:35:07.020 -0330123456").as_deref(), None);
        assert_eq!(t("2026-02-30 00:00:00 UTC"), None);
        assert_eq!(
            t("2026-02-30 00:00:00.5 UTC"),
            None,
            "not cached as a failure either"
        );
    }
}
