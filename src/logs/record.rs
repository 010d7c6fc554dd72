//! One server message as read from the log, before classification: the same fields
//! whichever format it came from, each `None` when that format or prefix does not carry it.

/// The longest text kept per field; the rest is cut and the record marked `truncated`.
/// A 10 MB INSERT in a STATEMENT line should not become a 10 MB event.
pub const MAX_FIELD_BYTES: usize = 64 * 1024;

/// One server message (all its lines).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Record {
    /// Byte offset of its first line in the file.
    pub offset: u64,
    /// Byte offset just after its last line.
    pub end: u64,
    /// Timestamp as written (`%m`, `%t`, `log_time`, `timestamp`).
    pub timestamp: Option<String>,
    /// Unix time from `%n`.
    pub epoch: Option<f64>,
    /// Backend process id.
    pub pid: Option<i64>,
    /// Role name.
    pub user: Option<String>,
    /// Database name.
    pub database: Option<String>,
    /// `application_name`.
    pub application_name: Option<String>,
    /// Client host (and port).
    pub remote_host: Option<String>,
    /// Server address the client connected to (`%L`, PG18).
    pub local_address: Option<String>,
    /// Session id (`%c`).
    pub session_id: Option<String>,
    /// Line number within the session (`%l`).
    pub session_line: Option<i64>,
    /// Command tag / ps display (`%i`).
    pub command_tag: Option<String>,
    /// Backend type (`%b`, PG13+).
    pub backend_type: Option<String>,
    /// Virtual transaction id (`%v`).
    pub vxid: Option<String>,
    /// Transaction id (`%x`).
    pub xid: Option<String>,
    /// Query id (`%Q`, PG14+).
    pub query_id: Option<i64>,
    /// Parallel group leader pid (`%P`).
    pub leader_pid: Option<i64>,
    /// LOG, ERROR, … in English (a translated server's `FEHLER` is an `ERROR`).
    pub severity: Option<String>,
    /// The language its severity label was written in, when not English (the
    /// catalogue's `LANGS` index): where its message is looked up first.
    pub language: Option<u8>,
    /// SQLSTATE (`%e`, verbose inline code, csv/json column).
    pub sqlstate: Option<String>,
    /// The primary message.
    pub message: String,
    /// DETAIL.
    pub detail: Option<String>,
    /// HINT.
    pub hint: Option<String>,
    /// CONTEXT.
    pub context: Option<String>,
    /// STATEMENT (the statement that caused it).
    pub statement: Option<String>,
    /// QUERY (internal query).
    pub query: Option<String>,
    /// LOCATION (verbose: function, file:line).
    pub location: Option<String>,
    /// Character position of the error in the statement (or internal query).
    pub cursor_position: Option<i64>,
    /// The raw text of a line that fits no format (then `message` is empty).
    pub raw: Option<String>,
    /// Some field was cut at [`MAX_FIELD_BYTES`], or the record was longer than the
    /// reader's limit and was split.
    pub truncated: bool,
    /// The line could be read more than one way (a client wrote a separator or a
    /// severity label into a name): the fields the readings disagree on are left out,
    /// and when they disagree on where the message starts, so is the severity.
    pub ambiguous: bool,
    /// Lines without a prefix and without the continuation's leading tab (a relay such
    /// as syslog or a cloud log API dropped it) were read as this message's
    /// continuation: the reading is likely, not certain (a line another program wrote
    /// to the server's stderr would be read the same way).
    pub continued_without_tab: bool,
}

impl Record {
    /// A line that fits no format, kept with its text.
    pub fn unparsed(bytes: &[u8], offset: u64, end: u64) -> Record {
        let (raw, truncated) = text(bytes);
        Record {
            offset,
            end,
            raw: Some(raw),
            truncated,
            ..Default::default()
        }
    }
}

impl Record {
    /// stderr appends the error position to the message (` at character 15`) where the
    /// other formats have a column: moved to `cursor_position`, so all formats agree.
    pub fn split_cursor_position(&mut self) {
        // Nearly every message ends otherwise: no search for those.
        let Some(&last) = self.message.as_bytes().last() else {
            return;
        };
        if !last.is_ascii_digit() && last != b')' {
            return;
        }
        // In the server's language: ` bei Zeichen 15`, ` (символ 15)`.
        for (before, after) in super::messages::position_markers() {
            let Some(rest) = self.message.strip_suffix(after) else {
                continue;
            };
            let Some(i) = rest.rfind(before) else {
                continue;
            };
            let digits = &rest[i + before.len()..];
            if !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit()) {
                self.cursor_position = digits.parse().ok();
                self.message.truncate(i);
                return;
            }
        }
    }
}

/// Bytes as text: invalid UTF-8 replaced, cut at [`MAX_FIELD_BYTES`] on a char boundary.
pub fn text(bytes: &[u8]) -> (String, bool) {
    text_within(bytes, MAX_FIELD_BYTES)
}

/// The cap of a message: an `auto_explain` plan may be larger than other text
/// ([`super::explain::MAX_PLAN_BYTES`]), so that a plan of many nodes arrives whole.
pub fn message_cap(head: &[u8]) -> usize {
    if super::explain::is_plan_head(head) {
        super::explain::MAX_PLAN_BYTES
    } else {
        MAX_FIELD_BYTES
    }
}

/// A message's bytes as text, cut at [`message_cap`].
pub fn message_text(bytes: &[u8]) -> (String, bool) {
    text_within(bytes, message_cap(bytes))
}

/// Bytes as text, cut at `cap`.
fn text_within(bytes: &[u8], cap: usize) -> (String, bool) {
    let cut = bytes.len() > cap;
    let b = if cut { &bytes[..cap] } else { bytes };
    // ASCII (nearly every field) and then valid UTF-8 are checked by fast paths and
    // copied once.
    let mut s = if is_ascii(b) {
        // SAFETY: ASCII is UTF-8.
        unsafe { String::from_utf8_unchecked(b.to_vec()) }
    } else {
        match std::str::from_utf8(b) {
            Ok(t) => t.to_owned(),
            Err(_) => String::from_utf8_lossy(b).into_owned(),
        }
    };
    if cut {
        // A multi-byte char cut in half became U+FFFD; that is fine, it is marked.
        s.push('…');
    }
    (s, cut)
}

/// True when every byte is ASCII: 8 bytes at a time, which the standard library's check
/// does only for aligned runs of 16 and more (most fields are shorter: names,
/// severities, timestamps; `from_utf8` was a twentieth of the parser's instructions).
fn is_ascii(b: &[u8]) -> bool {
    let mut words = b.chunks_exact(8);
    let high = (&mut words).fold(0u64, |acc, w| {
        acc | u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]])
    });
    high & 0x8080_8080_8080_8080 == 0 && words.remainder().iter().all(u8::is_ascii)
}

/// Like [`text`], `None` for an empty field.
pub fn opt_text(bytes: &[u8], truncated: &mut bool) -> Option<String> {
    if bytes.is_empty() {
        return None;
    }
    let (s, cut) = text(bytes);
    *truncated |= cut;
    Some(s)
}

/// Appends a continuation line to a field (newlines kept), respecting the field cap;
/// true when something was cut.
pub fn append_line(field: &mut String, line: &[u8]) -> bool {
    let cap = message_cap(field.as_bytes());
    if field.len() >= cap {
        return true;
    }
    field.push('\n');
    let room = cap - field.len();
    let (s, _) = text_within(&line[..line.len().min(room)], cap);
    field.push_str(&s);
    line.len() > room
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_is_told_from_everything_else_at_every_position() {
        for len in 0..40 {
            for at in 0..len {
                for byte in [0x00, 0x41, 0x7f, 0x80, 0xc3, 0xff] {
                    let mut b = vec![b'a'; len];
                    b[at] = byte;
                    assert_eq!(is_ascii(&b), b.is_ascii(), "{byte:#x} at {at} of {len}");
                }
            }
        }
        // Whatever the path, the text is the same.
        assert_eq!(text(b"web@shop").0, "web@shop");
        assert_eq!(
            text("caf\u{e9} \u{1f600}".as_bytes()).0,
            "caf\u{e9} \u{1f600}"
        );
        assert_eq!(text(b"ab\xffcd\xc3").0, "ab\u{fffd}cd\u{fffd}");
        assert_eq!(
            text_within(b"abcdefghij", 4),
            ("abcd\u{2026}".to_string(), true)
        );
    }
}

/// Severity labels as an untranslated server writes them (`DEBUG1`…`DEBUG5` in csvlog
/// and jsonlog).
fn english_severity(s: &str) -> bool {
    matches!(
        s,
        "LOG" | "ERROR" | "WARNING" | "FATAL" | "PANIC" | "NOTICE" | "INFO" | "DEBUG"
    ) || s
        .strip_prefix("DEBUG")
        .is_some_and(|n| matches!(n, "1" | "2" | "3" | "4" | "5"))
}

/// A severity as an English server writes it: a translated server's label
/// (`FEHLER`, `ОШИБКА`) in English, so that severities mean the same in every
/// language; a label the catalogue does not know stays as written.
pub fn english_severity_label(written: String) -> String {
    match super::messages::english_label(&written) {
        Some(e) if e != written => e.to_string(),
        _ => written,
    }
}

/// The language of a severity label as written (`LANGS` index), when not English.
pub fn label_language(written: &str) -> Option<u8> {
    super::messages::label(written)
        .map(|(_, l)| l as u8)
        .filter(|&l| l > 0)
}

/// Records with a severity needed before [`Language::judge`] says anything.
pub const JUDGED_AFTER: u32 = 20;

/// What the log shows of the server's message language: its severity labels are
/// translated with its messages, so they tell whether the messages can be read,
/// whatever `lc_messages` is called. A label of a language the catalogue has is read
/// as English when parsed; what stays foreign here is a language the agent cannot read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Language {
    /// Records with an English severity label.
    pub english: u32,
    /// Records with another one.
    pub other: u32,
    /// The first other label seen.
    pub example: Option<String>,
}

impl Language {
    /// Counts the severities of `records` (ambiguous lines, whose label a client may
    /// have written, are left out).
    pub fn count<'a>(&mut self, records: impl IntoIterator<Item = &'a Record>) {
        for r in records {
            let Some(s) = r.severity.as_deref().filter(|_| !r.ambiguous) else {
                continue;
            };
            if english_severity(s) {
                self.english += 1;
            } else {
                self.other += 1;
                if self.example.is_none() {
                    self.example = Some(s.chars().take(24).collect());
                }
            }
        }
    }

    /// `Some(true)` when most of at least [`JUDGED_AFTER`] labels are not English,
    /// `Some(false)` when most are, `None` before that many.
    pub fn judge(&self) -> Option<bool> {
        (self.english + self.other >= JUDGED_AFTER).then_some(self.other > self.english)
    }
}

#[cfg(test)]
mod language_tests {
    use super::*;

    fn rec(severity: &str, ambiguous: bool) -> Record {
        Record {
            severity: Some(severity.into()),
            ambiguous,
            ..Record::default()
        }
    }

    #[test]
    fn the_labels_decide_not_the_setting() {
        let mut l = Language::default();
        l.count(&vec![rec("LOG", false); 19]);
        assert_eq!(l.judge(), None);
        l.count(&[rec("DEBUG2", false)]);
        assert_eq!(l.judge(), Some(false));
        let mut de = Language::default();
        de.count(&vec![rec("HIBA", false); 15]);
        de.count(&vec![rec("LOG", false); 5]);
        de.count(&vec![rec("HIBA", true); 50]);
        assert_eq!(
            (de.judge(), de.example.as_deref()),
            (Some(true), Some("HIBA"))
        );
        // Forged labels in ambiguous lines do not count.
        let mut forged = Language::default();
        forged.count(&vec![rec("HIBA", true); 100]);
        assert_eq!(forged.judge(), None);
    }
}
