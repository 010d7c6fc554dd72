//! One syslog message's header: RFC 5424 (`<PRI>1 TIMESTAMP HOST APP PROCID MSGID SD
//! MSG`) or RFC 3164 as relays write it (`<PRI>Mmm dd hh:mm:ss HOST TAG[PID]: MSG`, the
//! timestamp also as RFC 3339, the host sometimes left out). Plain code over bytes:
//! nothing in a message is trusted to be UTF-8 or well formed; what cannot be read is a
//! [`HeaderError`] naming why, never a panic.

/// What the header says of a message, and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<'a> {
    /// Facility × 8 + severity.
    pub pri: u8,
    /// The timestamp as written (`None`: `-` or absent).
    pub timestamp: Option<&'a str>,
    /// The sending host (`None`: `-` or absent).
    pub host: Option<&'a str>,
    /// The program (`syslog_ident` for PostgreSQL; `None`: `-` or absent).
    pub app: Option<&'a str>,
    /// The sender's process id, when the header has one.
    pub pid: Option<u32>,
    /// The message itself (PostgreSQL's `[seq-chunk] …` text).
    pub msg: &'a [u8],
}

/// Why a message's header could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// It does not start with `<PRI>` (0–191).
    NoPriority,
    /// An RFC 5424 field is missing or not text.
    Truncated,
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HeaderError::NoPriority => "no <PRI> at its start (not syslog)",
            HeaderError::Truncated => "an RFC 5424 header cut short",
        })
    }
}

const MONTHS: [&[u8]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// Reads the header of one message (one datagram, one framed TCP message).
pub fn parse(raw: &[u8]) -> Result<Header<'_>, HeaderError> {
    let raw = trim_end_newline(raw);
    let (pri, rest) = priority(raw).ok_or(HeaderError::NoPriority)?;
    if let Some(after) = rest.strip_prefix(b"1 ") {
        return rfc5424(pri, after);
    }
    Ok(rfc3164(pri, rest))
}

fn trim_end_newline(mut b: &[u8]) -> &[u8] {
    while let [rest @ .., b'\n' | b'\r' | 0] = b {
        b = rest;
    }
    b
}

fn priority(raw: &[u8]) -> Option<(u8, &[u8])> {
    let rest = raw.strip_prefix(b"<")?;
    let end = rest.iter().take(4).position(|b| *b == b'>')?;
    let digits = &rest[..end];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let pri: u16 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    (pri <= 191).then_some((pri as u8, &rest[end + 1..]))
}

/// The next space-separated field and what follows its space.
fn field(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = b.iter().position(|c| *c == b' ')?;
    Some((&b[..end], &b[end + 1..]))
}

fn text(b: &[u8]) -> Option<&str> {
    std::str::from_utf8(b)
        .ok()
        .filter(|s| *s != "-" && !s.is_empty())
}

fn rfc5424(pri: u8, b: &[u8]) -> Result<Header<'_>, HeaderError> {
    let t = HeaderError::Truncated;
    let (timestamp, b) = field(b).ok_or(t)?;
    let (host, b) = field(b).ok_or(t)?;
    let (app, b) = field(b).ok_or(t)?;
    let (procid, b) = field(b).ok_or(t)?;
    let (_msgid, b) = field(b).ok_or(t)?;
    let msg = skip_structured_data(b).ok_or(t)?;
    let msg = msg.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(msg);
    Ok(Header {
        pri,
        timestamp: text(timestamp),
        host: text(host),
        app: text(app),
        pid: text(procid).and_then(|p| p.parse().ok()),
        msg,
    })
}

/// What follows the structured data (`-` or `[id k="v" …]…`, with `\"`, `\\` and `\]`
/// escaped in values), and its space.
fn skip_structured_data(b: &[u8]) -> Option<&[u8]> {
    if let Some(rest) = b.strip_prefix(b"-") {
        return Some(rest.strip_prefix(b" ").unwrap_or(rest));
    }
    let mut i = 0;
    while b.get(i) == Some(&b'[') {
        let mut quoted = false;
        i += 1;
        loop {
            match *b.get(i)? {
                b'\\' if quoted => i += 1,
                b'"' => quoted = !quoted,
                b']' if !quoted => break,
                _ => {}
            }
            i += 1;
        }
        i += 1;
    }
    if i == 0 {
        return None;
    }
    let rest = &b[i..];
    Some(rest.strip_prefix(b" ").unwrap_or(rest))
}

/// `Mmm dd hh:mm:ss` (15 bytes, the day space-padded).
fn bsd_timestamp(b: &[u8]) -> Option<(&str, &[u8])> {
    let ts = b.get(..15)?;
    let month = MONTHS.contains(&&ts[..3]);
    let shape = ts[3] == b' '
        && (ts[4] == b' ' || ts[4].is_ascii_digit())
        && ts[5].is_ascii_digit()
        && ts[6] == b' '
        && ts[9] == b':'
        && ts[12] == b':';
    if !(month && shape) {
        return None;
    }
    let rest = &b[15..];
    Some((
        std::str::from_utf8(ts).ok()?,
        rest.strip_prefix(b" ").unwrap_or(rest),
    ))
}

/// `2026-12-05T10:00:00.123456+00:00` as relays write it in place of the BSD stamp.
fn rfc3339_timestamp(b: &[u8]) -> Option<(&str, &[u8])> {
    let (ts, rest) = field(b)?;
    let looks = ts.len() >= 19 && ts[..4].iter().all(u8::is_ascii_digit) && ts[10] == b'T';
    looks.then(|| Some((std::str::from_utf8(ts).ok()?, rest)))?
}

/// A 3164 tag: `prog[pid]:` or `prog:` (the program up to `[` or `:`).
fn tag(b: &[u8]) -> Option<(&str, Option<u32>, &[u8])> {
    let end = b
        .iter()
        .take(64)
        .position(|c| matches!(c, b'[' | b':' | b' '))?;
    let app = std::str::from_utf8(&b[..end])
        .ok()
        .filter(|s| !s.is_empty())?;
    let mut rest = &b[end..];
    let mut pid = None;
    if let Some(r) = rest.strip_prefix(b"[") {
        let close = r.iter().take(12).position(|c| *c == b']')?;
        pid = std::str::from_utf8(&r[..close]).ok()?.parse().ok();
        rest = &r[close + 1..];
    }
    let rest = rest.strip_prefix(b":")?;
    Some((app, pid, rest.strip_prefix(b" ").unwrap_or(rest)))
}

fn rfc3164(pri: u8, b: &[u8]) -> Header<'_> {
    let (timestamp, b) = match bsd_timestamp(b).or_else(|| rfc3339_timestamp(b)) {
        Some((t, rest)) => (Some(t), rest),
        None => (None, b),
    };
    // `HOST TAG: MSG`, or `TAG: MSG` when the sender left its host out.
    if let Some((app, pid, msg)) = tag(b) {
        return Header {
            pri,
            timestamp,
            host: None,
            app: Some(app),
            pid,
            msg,
        };
    }
    if let Some((host, rest)) = field(b) {
        if let Some((app, pid, msg)) = tag(rest) {
            return Header {
                pri,
                timestamp,
                host: text(host),
                app: Some(app),
                pid,
                msg,
            };
        }
    }
    Header {
        pri,
        timestamp,
        host: None,
        app: None,
        pid: None,
        msg: b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc5424_with_and_without_structured_data() {
        let h =
            parse(b"<134>1 2026-12-05T10:00:00.123456+00:00 db1 postgres 4242 - - [7-1] LOG:  x\n")
                .expect("header");
        assert_eq!(h.pri, 134);
        assert_eq!(h.timestamp, Some("2026-12-05T10:00:00.123456+00:00"));
        assert_eq!(
            (h.host, h.app, h.pid),
            (Some("db1"), Some("postgres"), Some(4242))
        );
        assert_eq!(h.msg, b"[7-1] LOG:  x");
        let h = parse(
            b"<134>1 - db1 pg 7 ID47 [exampleSDID@32473 iut=\"3\" eventSource=\"a]b \\\"q\\\"\"][x@1 y=\"z\"] \xEF\xBB\xBFhello",
        )
        .expect("header");
        assert_eq!((h.timestamp, h.app, h.pid), (None, Some("pg"), Some(7)));
        assert_eq!(h.msg, b"hello");
        // A message with no body at all.
        assert_eq!(parse(b"<1>1 - - - - - -").expect("header").msg, b"");
        assert_eq!(parse(b"<1>1 - - -"), Err(HeaderError::Truncated));
    }

    #[test]
    fn rfc3164_as_relays_write_it() {
        let h =
            parse(b"<134>Dec  5 10:00:00 db1 postgres[4242]: [7-2] DETAIL:  y").expect("header");
        assert_eq!(h.timestamp, Some("Dec  5 10:00:00"));
        assert_eq!(
            (h.host, h.app, h.pid),
            (Some("db1"), Some("postgres"), Some(4242))
        );
        assert_eq!(h.msg, b"[7-2] DETAIL:  y");
        // Without the host (a local relay), and with an RFC 3339 stamp.
        let h = parse(b"<13>Dec 15 10:00:00 postgres[1]: z").expect("header");
        assert_eq!(
            (h.host, h.app, h.pid, h.msg),
            (None, Some("postgres"), Some(1), &b"z"[..])
        );
        let h = parse(b"<13>2026-12-05T10:00:00+01:00 h app: w").expect("header");
        assert_eq!(
            (h.host, h.app, h.pid, h.msg),
            (Some("h"), Some("app"), None, &b"w"[..])
        );
    }

    #[test]
    fn garbage_is_a_reason_never_a_panic() {
        assert_eq!(parse(b"hello"), Err(HeaderError::NoPriority));
        assert_eq!(parse(b"<999>x"), Err(HeaderError::NoPriority));
        assert_eq!(parse(b"<>x"), Err(HeaderError::NoPriority));
        assert_eq!(parse(b""), Err(HeaderError::NoPriority));
        // No tag: the body is what follows the stamp.
        let h = parse(b"<13>\xff\xfe odd").expect("header");
        assert_eq!((h.app, h.msg), (None, &b"\xff\xfe odd"[..]));
        for cut in 0..60 {
            let full = b"<134>1 2026-12-05T10:00:00Z db1 postgres 4242 - [a b=\"c\"] msg";
            let _ = parse(&full[..cut.min(full.len())]);
            let full = b"<134>Dec  5 10:00:00 db1 postgres[4242]: [7-2] x";
            let _ = parse(&full[..cut.min(full.len())]);
        }
    }
}
