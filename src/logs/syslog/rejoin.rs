//! PostgreSQL's messages put back together from what its `write_syslog` sent: each
//! message is one or more syslog messages `[SEQ-CHUNK] text` (one per line of the
//! message, a line over `PG_SYSLOG_LIMIT` bytes cut into several, at a space when it can),
//! `[SEQ] text` when it fit in one; without `syslog_sequence_numbers`, no prefix at all.
//! Chunks are joined per sending process (host and pid) in the order they arrived; a
//! message is complete when the same process sends its next one, when it has waited
//! `idle` (the last chunk of a process that then stays quiet), or at the end.
//!
//! A chunk boundary is a line break unless the cut was PostgreSQL's: the chunk before it
//! is as long as the limit allows, or the next starts with the space it was cut at
//! followed by a word that would have crossed the limit. (A line of 897–900 bytes that
//! ends the message's line is read as cut for length: the protocol cannot tell the two
//! apart, and a cut is by far the likelier.) Plain code: time is passed in.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::header::Header;

/// PostgreSQL's `PG_SYSLOG_LIMIT`: the longest chunk it sends.
pub const PG_SYSLOG_LIMIT: usize = 900;

/// One PostgreSQL message, whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The sending host (`None`: the header had none).
    pub host: Option<String>,
    /// The sending process.
    pub pid: Option<u32>,
    /// PostgreSQL's sequence number of the message in that process.
    pub seq: Option<u64>,
    /// The first chunk's syslog timestamp, as written.
    pub timestamp: Option<String>,
    /// The message: its lines, each as the log's stderr form has it.
    pub text: Vec<u8>,
    /// Chunks are missing (lost in transit, or the first arrived before the agent
    /// listened), or it was cut at the cap.
    pub incomplete: bool,
}

/// `[SEQ-CHUNK] ` or `[SEQ] ` at the start of a message, and the text after it.
pub fn marks(msg: &[u8]) -> (Option<u64>, Option<u32>, &[u8]) {
    let none = (None, None, msg);
    // Relays keep the space that follows a 3164 tag in front of the message.
    let Some(rest) = msg.strip_prefix(b"[").or_else(|| msg.strip_prefix(b" [")) else {
        return none;
    };
    let Some(close) = rest.iter().take(32).position(|b| *b == b']') else {
        return none;
    };
    let Ok(inside) = std::str::from_utf8(&rest[..close]) else {
        return none;
    };
    let body = &rest[close + 1..];
    let body = body.strip_prefix(b" ").unwrap_or(body);
    match inside.split_once('-') {
        Some((seq, chunk)) => match (number::<u64>(seq), number::<u32>(chunk)) {
            (Some(s), Some(c)) => (Some(s), Some(c), body),
            _ => none,
        },
        None => match number::<u64>(inside) {
            Some(s) => (Some(s), None, body),
            None => none,
        },
    }
}

/// Digits only (no sign, no spaces), as a number.
fn number<T: std::str::FromStr>(s: &str) -> Option<T> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// Whether `next` goes on the line `prev_len` bytes long (PostgreSQL cut it for length)
/// rather than starting a new line.
fn same_line(prev_len: usize, next: &[u8]) -> bool {
    // A multibyte character at the cut is left whole: up to 3 bytes short of the limit.
    if prev_len + 3 >= PG_SYSLOG_LIMIT {
        return true;
    }
    let Some((first, rest)) = next.split_first() else {
        return false;
    };
    if !first.is_ascii_whitespace() {
        return false;
    }
    let word = rest.iter().take_while(|b| !b.is_ascii_whitespace()).count();
    word + prev_len + 4 >= PG_SYSLOG_LIMIT
}

struct Pending {
    seq: u64,
    next_chunk: u32,
    last_len: usize,
    text: Vec<u8>,
    timestamp: Option<String>,
    incomplete: bool,
    at: Instant,
}

/// The chunks of every process, joined.
pub struct Rejoin {
    pending: HashMap<(Option<String>, u32), Pending>,
    /// The longest message kept (the rest of it is dropped, the message `incomplete`).
    max_bytes: usize,
    /// The most processes with a message in progress (beyond, the oldest is let go).
    max_pending: usize,
    idle: Duration,
}

impl Rejoin {
    /// Joins messages up to `max_bytes`, for at most `max_pending` processes at once,
    /// each complete after `idle` without a chunk.
    pub fn new(max_bytes: usize, max_pending: usize, idle: Duration) -> Rejoin {
        Rejoin {
            pending: HashMap::new(),
            max_bytes,
            max_pending,
            idle,
        }
    }

    /// Messages in progress.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Takes one syslog message; whole PostgreSQL messages go to `out`.
    pub fn push(&mut self, h: &Header<'_>, now: Instant, out: &mut Vec<Joined>) {
        let (seq, chunk, body) = marks(h.msg);
        // rsyslog's default escaping writes the tab PostgreSQL puts at the start of a
        // message's continuation lines as `#011`.
        let unescaped;
        let body = match body.strip_prefix(b"#011") {
            Some(rest) => {
                unescaped = [&b"\t"[..], rest].concat();
                &unescaped[..]
            }
            None => body,
        };
        let host = h.host.map(str::to_string);
        let whole = |seq, text: &[u8], incomplete| Joined {
            host: host.clone(),
            pid: h.pid,
            seq,
            timestamp: h.timestamp.map(str::to_string),
            text: text.to_vec(),
            incomplete,
        };
        let (Some(pid), Some(seq), Some(chunk)) = (h.pid, seq, chunk) else {
            // Not split (or no process to join it by): whole as it is, after whatever
            // that process had in progress.
            if let Some(pid) = h.pid {
                self.finish((host.clone(), pid), out);
            }
            out.push(whole(seq, body, false));
            return;
        };
        let key = (host.clone(), pid);
        if let Some(p) = self.pending.get_mut(&key) {
            if p.seq == seq && chunk >= p.next_chunk {
                // Chunks skipped in between were lost: a line break stands for them.
                let lost = chunk > p.next_chunk;
                if !lost && same_line(p.last_len, body) {
                    append(&mut p.text, body, self.max_bytes, &mut p.incomplete);
                } else {
                    append(&mut p.text, b"\n", self.max_bytes, &mut p.incomplete);
                    append(&mut p.text, body, self.max_bytes, &mut p.incomplete);
                }
                p.incomplete |= lost;
                p.next_chunk = chunk + 1;
                p.last_len = body.len();
                p.at = now;
                return;
            }
        }
        self.finish(key.clone(), out);
        if self.pending.len() >= self.max_pending {
            if let Some(oldest) = self
                .pending
                .iter()
                .min_by_key(|(_, p)| p.at)
                .map(|(k, _)| k.clone())
            {
                self.finish(oldest, out);
            }
        }
        let mut p = Pending {
            seq,
            next_chunk: chunk + 1,
            last_len: body.len(),
            text: Vec::with_capacity(body.len().max(256)),
            timestamp: h.timestamp.map(str::to_string),
            incomplete: chunk != 1,
            at: now,
        };
        append(&mut p.text, body, self.max_bytes, &mut p.incomplete);
        self.pending.insert(key, p);
    }

    /// Messages whose process sent nothing for `idle`, whole.
    pub fn flush_idle(&mut self, now: Instant, out: &mut Vec<Joined>) {
        let idle: Vec<(Option<String>, u32)> = self
            .pending
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.at) >= self.idle)
            .map(|(k, _)| k.clone())
            .collect();
        for k in idle {
            self.finish(k, out);
        }
    }

    /// Every message in progress, whole (at shutdown).
    pub fn flush_all(&mut self, out: &mut Vec<Joined>) {
        let all: Vec<(Option<String>, u32)> = self.pending.keys().cloned().collect();
        for k in all {
            self.finish(k, out);
        }
    }

    fn finish(&mut self, key: (Option<String>, u32), out: &mut Vec<Joined>) {
        if let Some(p) = self.pending.remove(&key) {
            out.push(Joined {
                host: key.0,
                pid: Some(key.1),
                seq: Some(p.seq),
                timestamp: p.timestamp,
                text: p.text,
                incomplete: p.incomplete,
            });
        }
    }
}

fn append(text: &mut Vec<u8>, more: &[u8], max: usize, incomplete: &mut bool) {
    let room = max.saturating_sub(text.len());
    if more.len() > room {
        *incomplete = true;
    }
    text.extend_from_slice(&more[..more.len().min(room)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(pid: u32, msg: &'a [u8]) -> Header<'a> {
        Header {
            pri: 134,
            timestamp: Some("Dec  5 10:00:00"),
            host: Some("db1"),
            app: Some("postgres"),
            pid: Some(pid),
            msg,
        }
    }

    /// What PostgreSQL's write_syslog sends for `line` as message `seq`: its chunks.
    fn write_syslog(seq: u64, line: &str) -> Vec<String> {
        let limit = PG_SYSLOG_LIMIT;
        let bytes = line.as_bytes();
        if bytes.len() <= limit && !line.contains('\n') {
            return vec![format!("[{seq}] {line}")];
        }
        let (mut out, mut at, mut chunk) = (Vec::new(), 0, 0);
        while at < bytes.len() {
            if bytes[at] == b'\n' {
                at += 1;
                continue;
            }
            let line_end = bytes[at..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(bytes.len(), |i| at + i);
            let mut len = (line_end - at).min(limit);
            while !line.is_char_boundary(at + len) {
                len -= 1;
            }
            if at + len < bytes.len() && !bytes[at + len].is_ascii_whitespace() {
                let mut i = len - 1;
                while i > 0 && !bytes[at + i].is_ascii_whitespace() {
                    i -= 1;
                }
                if i > 0 {
                    len = i;
                }
            }
            chunk += 1;
            out.push(format!("[{seq}-{chunk}] {}", &line[at..at + len]));
            at += len;
        }
        out
    }

    fn join_all(messages: &[(u32, String)]) -> Vec<Joined> {
        let mut r = Rejoin::new(1 << 20, 100, Duration::from_secs(2));
        let mut out = Vec::new();
        let now = Instant::now();
        for (pid, m) in messages {
            r.push(&header(*pid, m.as_bytes()), now, &mut out);
        }
        r.flush_all(&mut out);
        out
    }

    #[test]
    fn an_escaped_tab_at_a_line_s_start_is_a_tab() {
        let got = join_all(&[(1, "[3-1] SELECT a".into()), (1, "[3-2] #011FROM t".into())]);
        assert_eq!(got[0].text, b"SELECT a\n\tFROM t");
    }

    #[test]
    fn marks_are_read_and_anything_else_is_text() {
        assert_eq!(marks(b"[7-2] x"), (Some(7), Some(2), &b"x"[..]));
        assert_eq!(marks(b"[7] x"), (Some(7), None, &b"x"[..]));
        assert_eq!(marks(b" [7-1] x"), (Some(7), Some(1), &b"x"[..]));
        assert_eq!(marks(b"[x] y"), (None, None, &b"[x] y"[..]));
        assert_eq!(marks(b"[-] y"), (None, None, &b"[-] y"[..]));
        assert_eq!(marks(b"[99999999999999999999999-1] y").0, None);
        assert_eq!(marks(b"plain"), (None, None, &b"plain"[..]));
    }

    #[test]
    fn split_messages_come_back_whole_with_their_lines_and_long_lines() {
        let long_words: String = (0..400).map(|i| format!("w{i} ")).collect();
        let one_word = "é".repeat(1000);
        let statement = "SELECT a,\n\t       b\n\tFROM t /* traceparent='00-ab' */";
        let cases = [
            "2026-12-05 10:00:00 UTC [42] LOG:  short".to_string(),
            format!("2026-12-05 10:00:00 UTC [42] LOG:  {long_words}\n2026-12-05 10:00:00 UTC [42] STATEMENT:  {statement}"),
            format!("[42] ERROR:  {one_word}x"),
            format!("{}\n\tnext", "y".repeat(500)),
        ];
        for (i, text) in cases.iter().enumerate() {
            // Another process's message interleaved with every chunk.
            let mut sent = Vec::new();
            for c in write_syslog(10 + i as u64, text) {
                sent.push((42, c));
                sent.push((43, format!("[{i}] other")));
            }
            let got = join_all(&sent);
            let mine: Vec<&Joined> = got.iter().filter(|j| j.pid == Some(42)).collect();
            assert_eq!(mine.len(), 1, "case {i}");
            assert_eq!(String::from_utf8_lossy(&mine[0].text), *text, "case {i}");
            assert!(!mine[0].incomplete);
            assert_eq!(
                got.iter().filter(|j| j.pid == Some(43)).count(),
                sent.len() / 2
            );
        }
    }

    #[test]
    fn a_lost_chunk_or_a_message_cut_short_is_incomplete_and_the_next_one_whole() {
        let got = join_all(&[
            (1, "[5-1] a".into()),
            (1, "[5-3] c".into()),
            (1, "[6-2] tail of a message begun before we listened".into()),
            (1, "[7] whole".into()),
        ]);
        let texts: Vec<(String, bool)> = got
            .iter()
            .map(|j| (String::from_utf8_lossy(&j.text).into_owned(), j.incomplete))
            .collect();
        assert_eq!(
            texts,
            [
                ("a\nc".to_string(), true),
                (
                    "tail of a message begun before we listened".to_string(),
                    true
                ),
                ("whole".to_string(), false),
            ]
        );
        // The cap: the message keeps its first bytes.
        let mut r = Rejoin::new(8, 10, Duration::from_secs(2));
        let mut out = Vec::new();
        r.push(&header(1, b"[1-1] 0123456"), Instant::now(), &mut out);
        r.push(&header(1, b"[1-2] 789"), Instant::now(), &mut out);
        r.flush_all(&mut out);
        assert_eq!(
            (out[0].text.as_slice(), out[0].incomplete),
            (&b"0123456\n"[..], true)
        );
    }

    #[test]
    fn a_quiet_process_s_message_is_whole_after_idle_and_the_pending_are_bounded() {
        let t0 = Instant::now();
        let mut r = Rejoin::new(1 << 20, 2, Duration::from_secs(2));
        let mut out = Vec::new();
        r.push(&header(1, b"[1-1] a"), t0, &mut out);
        r.flush_idle(t0 + Duration::from_millis(1999), &mut out);
        assert!(out.is_empty());
        r.flush_idle(t0 + Duration::from_secs(2), &mut out);
        assert_eq!(out.len(), 1);
        out.clear();
        for pid in 1..=3 {
            r.push(
                &header(pid, b"[1-1] a"),
                t0 + Duration::from_secs(pid as u64),
                &mut out,
            );
        }
        assert_eq!(r.pending(), 2);
        assert_eq!(out.iter().map(|j| j.pid).collect::<Vec<_>>(), [Some(1)]);
    }
}
