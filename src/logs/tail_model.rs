//! Model-based test of the tailer: random sequences of writes, partial writes, rotations
//! by rename, copy-and-truncate, truncation, polls and restarts (a new tailer from the
//! last position handed out) against real files. The model is the list of lines written;
//! whatever happened, the tailer must deliver exactly those lines, in order, once.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::locate::Locator;
use super::tail::{Position, StartAt, Tailer};
use super::{LogParser, DEFAULT_PREFIX};

#[derive(Debug, Clone)]
enum Op {
    /// Complete lines.
    Write(u8),
    /// The first bytes of the next line (the rest comes with the next Write/Finish).
    Partial(u8),
    /// Rename the file away and start a new one (logrotate `create`).
    Rename,
    /// Copy the file, then truncate it (logrotate `copytruncate`), after at least one
    /// poll since the file started.
    CopyTruncate,
    /// Truncate in place once the reader has read everything (a plain `> file`).
    Truncate,
    /// A poll.
    Poll,
    /// Drop the tailer and start a new one from the last position.
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..6).prop_map(Op::Write),
        1 => (1u8..40).prop_map(Op::Partial),
        1 => Just(Op::Rename),
        1 => Just(Op::CopyTruncate),
        1 => Just(Op::Truncate),
        4 => Just(Op::Poll),
        1 => Just(Op::Restart),
    ]
}

/// Rotations are ordered by file times, which the kernel keeps at clock-tick
/// resolution (1–4 ms); real rotations are never closer than that.
fn tick() {
    std::thread::sleep(std::time::Duration::from_millis(10));
}

fn line(n: usize) -> String {
    // Messages of different lengths, some with a continuation line.
    let extra = if n.is_multiple_of(7) {
        "\n\tcontinued"
    } else {
        ""
    };
    format!(
        "2026-11-26 10:00:00.000 UTC [{}] LOG:  line-{n} {}{extra}\n",
        100 + n % 3,
        "x".repeat(n % 50)
    )
}

struct World {
    dir: PathBuf,
    path: PathBuf,
    written: usize,
    /// Bytes of the next line already written.
    partial: usize,
    rotations: usize,
    tailer: Tailer,
    last: Option<Position>,
    got: Vec<String>,
}

impl World {
    fn new(dir: &Path) -> World {
        let path = dir.join("pg.log");
        fs::write(&path, b"").expect("create");
        World {
            dir: dir.to_path_buf(),
            tailer: Tailer::new(Locator::File(path.clone()), None, StartAt::Beginning),
            path,
            written: 0,
            partial: 0,
            rotations: 0,
            last: None,
            got: Vec::new(),
        }
    }

    fn append(&self, b: &[u8]) {
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.path)
            .expect("open");
        f.write_all(b).expect("write");
    }

    fn finish_partial(&mut self) {
        if self.partial > 0 {
            let l = line(self.written);
            self.append(&l.as_bytes()[self.partial..]);
            self.written += 1;
            self.partial = 0;
        }
    }

    fn poll(&mut self, parser: &mut LogParser) -> bool {
        let p = self.tailer.poll(parser, 50).expect("poll");
        let moved = !p.records.is_empty() || p.position != self.last;
        for r in p.records {
            assert!(r.raw.is_none(), "unparsed: {:?}", r.raw);
            self.got
                .push(r.message.split(' ').next().unwrap_or("").to_string());
        }
        if p.position.is_some() {
            self.last = p.position;
        }
        moved || p.more
    }

    /// Polls until nothing moves for a few polls (the last message needs the file to
    /// be seen twice at the same size).
    fn drain(&mut self, parser: &mut LogParser) {
        let mut quiet = 0;
        for _ in 0..500 {
            if self.poll(parser) {
                quiet = 0;
            } else {
                quiet += 1;
                if quiet >= 3 {
                    return;
                }
            }
        }
        panic!("the tailer never settled");
    }

    fn apply(&mut self, op: &Op, parser: &mut LogParser) {
        match op {
            Op::Write(n) => {
                self.finish_partial();
                for _ in 0..*n {
                    self.append(line(self.written).as_bytes());
                    self.written += 1;
                }
            }
            Op::Partial(k) => {
                self.finish_partial();
                let l = line(self.written);
                let k = (*k as usize).min(l.len() - 1);
                self.append(&l.as_bytes()[..k]);
                self.partial = k;
            }
            Op::Rename => {
                self.finish_partial();
                tick();
                self.rotations += 1;
                let to = self.dir.join(format!("pg.log.r{}", self.rotations));
                fs::rename(&self.path, to).expect("rename");
                fs::write(&self.path, b"").expect("create");
            }
            Op::CopyTruncate => {
                self.finish_partial();
                tick();
                // A copy is recognized by the file's first line; a reader that has not
                // polled since the file got its first line cannot know it (documented).
                self.poll(parser);
                self.rotations += 1;
                let to = self.dir.join(format!("pg.log.c{}", self.rotations));
                fs::copy(&self.path, to).expect("copy");
                OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(&self.path)
                    .expect("truncate");
            }
            Op::Truncate => {
                self.finish_partial();
                self.drain(parser);
                OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(&self.path)
                    .expect("truncate");
            }
            Op::Poll => {
                self.poll(parser);
            }
            Op::Restart => {
                self.tailer = Tailer::new(
                    Locator::File(self.path.clone()),
                    self.last.clone(),
                    StartAt::Beginning,
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, .. ProptestConfig::default() })]

    #[test]
    fn every_line_exactly_once_in_order(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().expect("tmp");
        let mut parser = LogParser::new(super::Format::Stderr, DEFAULT_PREFIX);
        let mut w = World::new(dir.path());
        // The agent is running (has opened the log) before the first write.
        w.poll(&mut parser);
        for op in &ops {
            w.apply(op, &mut parser);
        }
        w.finish_partial();
        w.drain(&mut parser);
        let want: Vec<String> = (0..w.written).map(|n| format!("line-{n}")).collect();
        prop_assert_eq!(&w.got, &want);
    }
}
