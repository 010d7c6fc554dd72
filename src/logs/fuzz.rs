//! Arbitrary bytes into every log parser: no panic, positions that only move forward
//! within the buffer, every byte accounted for when the end is forced.

use proptest::prelude::*;

use super::{Flush, Format, LogParser};

/// Bytes that look a little like a log: fragments of every format among random bytes.
fn logish() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..12),
        proptest::sample::select(vec![
            &b"2026-11-26 10:00:00.001 UTC ["[..],
            b"] ",
            b"LOG:  ",
            b"ERROR:  ",
            b"STATEMENT:  ",
            b"DETAIL: ",
            b"\n",
            b"\r\n",
            b"\t",
            b"\"",
            b"\"\"",
            b",",
            b"{\"timestamp\":\"2026-11-26 10:00:00.001 UTC\",\"pid\":",
            b"}",
            b":",
            b"\xff\xfe",
            b"@",
            b"/",
            b"%",
        ])
        .prop_map(|b| b.to_vec()),
    ];
    proptest::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, .. ProptestConfig::default() })]

    #[test]
    fn no_parser_panics_or_loses_its_place(buf in logish(), base in 0u64..1_000_000) {
        for (format, prefix) in [
            (Format::Stderr, "%m [%p] %q%u@%d/%a "),
            (Format::Stderr, "%t:%r:%u@%d:[%p]:"),
            (Format::Stderr, ""),
            (Format::Csv, ""),
            (Format::Json, ""),
        ] {
            let mut p = LogParser::new(format, prefix);
            for flush in [Flush::No, Flush::Settled, Flush::Force] {
                let mut out = Vec::new();
                let used = p.parse(&buf, base, flush, &mut out, 1000);
                prop_assert!(used <= buf.len());
                for r in &out {
                    prop_assert!(r.offset >= base && r.end <= base + buf.len() as u64 && r.offset < r.end,
                        "{format:?} {flush:?}: {}..{} of {}", r.offset, r.end, buf.len());
                }
                if flush == Flush::Force && out.len() < 1000 {
                    prop_assert_eq!(used, buf.len(), "{:?}: forced, everything is read", format);
                }
            }
        }
    }
}
