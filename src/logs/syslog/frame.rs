//! Syslog over TCP: where one message ends in the stream. RFC 6587's two framings, told
//! apart by each message's first byte: octet counting (`LEN SP MSG`, a digit first) and
//! non-transparent framing (a message up to LF; `<` first). Plain code: a buffer in, one
//! step out, so the reader keeps no partial state of its own beyond unconsumed bytes.

/// What the start of a buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A whole message at `start..end`; `used` bytes of the buffer are done with.
    Message {
        /// Where it starts.
        start: usize,
        /// Where it ends.
        end: usize,
        /// Bytes consumed, framing included.
        used: usize,
    },
    /// More bytes are needed.
    More,
    /// Bytes that are no message: a blank line, or (part of) one longer than the cap,
    /// skipped and counted.
    Skip {
        /// Bytes consumed.
        used: usize,
        /// A newline-framed message over the cap goes on after them: call again with
        /// `skipping` until its LF.
        within: bool,
    },
    /// The stream is not syslog framing (an octet count that is not one): the
    /// connection is closed, nothing after this can be found again.
    Garbage,
}

/// The first step of `buf`. `skipping`: a too-long newline-framed message is being
/// skipped up to its LF. `max`: the longest message taken.
pub fn step(buf: &[u8], skipping: bool, max: usize) -> Step {
    if skipping {
        return match buf.iter().position(|b| *b == b'\n') {
            Some(i) => Step::Skip {
                used: i + 1,
                within: false,
            },
            None if buf.is_empty() => Step::More,
            None => Step::Skip {
                used: buf.len(),
                within: true,
            },
        };
    }
    let Some(first) = buf.first() else {
        return Step::More;
    };
    if first.is_ascii_digit() {
        return octet_counted(buf, max);
    }
    // Blank lines between messages are nothing.
    if *first == b'\n' || *first == b'\r' || *first == 0 {
        return Step::Skip {
            used: 1,
            within: false,
        };
    }
    match buf.iter().position(|b| *b == b'\n') {
        Some(end) if end <= max => Step::Message {
            start: 0,
            end,
            used: end + 1,
        },
        Some(end) => Step::Skip {
            used: end + 1,
            within: false,
        },
        None if buf.len() > max => Step::Skip {
            used: buf.len(),
            within: true,
        },
        None => Step::More,
    }
}

fn octet_counted(buf: &[u8], max: usize) -> Step {
    let digits = buf
        .iter()
        .take(10)
        .take_while(|b| b.is_ascii_digit())
        .count();
    match buf.get(digits) {
        None if digits < 10 => return Step::More,
        Some(b' ') => {}
        _ => return Step::Garbage,
    }
    let Some(len) = std::str::from_utf8(&buf[..digits])
        .ok()
        .and_then(|d| d.parse::<usize>().ok())
    else {
        return Step::Garbage;
    };
    let start = digits + 1;
    if len > max {
        // Skipped as it arrives: the count says where the next one starts.
        let have = buf.len() - start;
        return if have >= len {
            Step::Skip {
                used: start + len,
                within: false,
            }
        } else {
            Step::More
        };
    }
    if buf.len() < start + len {
        return Step::More;
    }
    Step::Message {
        start,
        end: start + len,
        used: start + len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message of `stream`, read in pieces of `piece` bytes as a socket gives them.
    fn messages(stream: &[u8], piece: usize, max: usize) -> (Vec<Vec<u8>>, usize, bool) {
        let mut buf: Vec<u8> = Vec::new();
        let (mut out, mut skipped, mut skipping) = (Vec::new(), 0, false);
        for chunk in stream.chunks(piece) {
            buf.extend_from_slice(chunk);
            loop {
                match step(&buf, skipping, max) {
                    Step::Message { start, end, used } => {
                        out.push(buf[start..end].to_vec());
                        buf.drain(..used);
                        skipping = false;
                    }
                    Step::Skip { used, within } => {
                        skipping = within;
                        skipped += used;
                        buf.drain(..used);
                    }
                    Step::More => break,
                    Step::Garbage => return (out, skipped, true),
                }
            }
        }
        (out, skipped, false)
    }

    #[test]
    fn both_framings_whatever_the_pieces() {
        let stream = b"<1>a\n10 <2>b\nline2\n<3>c\r\n\n5 <4>dd";
        for piece in 1..stream.len() {
            let (m, _, garbage) = messages(stream, piece, 100);
            assert!(!garbage);
            assert_eq!(
                m,
                [&b"<1>a"[..], b"<2>b\nline2", b"<3>c\r", b"<4>dd"],
                "pieces of {piece}"
            );
        }
    }

    #[test]
    fn a_message_over_the_cap_is_skipped_and_the_next_one_read() {
        let stream = b"<1>0123456789\n<2>ok\n15 <3>0123456789ab3 <4>";
        for piece in 1..stream.len() {
            let (m, skipped, garbage) = messages(stream, piece, 8);
            assert!(!garbage);
            assert_eq!(m, [&b"<2>ok"[..], b"<4>"], "pieces of {piece}");
            assert_eq!(skipped, 14 + 18, "pieces of {piece}");
        }
    }

    #[test]
    fn a_count_that_is_not_one_closes_the_stream() {
        assert_eq!(step(b"12x <1>", false, 100), Step::Garbage);
        assert_eq!(step(b"12345678901 ", false, 100), Step::Garbage);
        assert_eq!(step(b"123", false, 100), Step::More);
    }
}
