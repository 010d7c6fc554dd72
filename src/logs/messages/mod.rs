//! PostgreSQL's message catalogue: every message the server can write, named by its
//! English template (the `errmsg` text with its conversions, e.g. `relation "%s" does
//! not exist`) and read back into its arguments, in English or any of the server's
//! translations. The tables are made at build time from `catalogue/` (see its README).
//!
//! A message is found by its literal start: the templates' heads (the text before the
//! first conversion) are sorted, each knowing the longest other head it extends, so one
//! binary search gives every template whose head the message starts with, longest
//! first. Templates that start with a conversion are found by their literal end the
//! same way. Only those few candidates are then matched conversion by conversion.

mod matcher;
mod spec;

use std::sync::atomic::{AtomicU32, Ordering};

pub use matcher::Span;
pub use spec::Kind;

/// One language's tables (made by build.rs).
pub struct LangData {
    /// Its name (`en`, `de`, `zh_CN`, …).
    pub name: &'static str,
    /// Every template's text, one after the other.
    pub text: &'static [u8],
    /// Little-endian u32s: counts, templates (offset, length, message), heads and
    /// tails (offset, length, parent, first template, templates).
    pub index: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/catalogue.rs"));

/// A message of the catalogue (its line in `catalogue/en.txt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Message(u32);

impl Message {
    fn field(self, k: usize) -> u32 {
        word(MESSAGES, self.0 as usize * 4 + k)
    }

    /// The English template.
    pub fn template(self) -> &'static str {
        let (at, len) = (self.field(0) as usize, self.field(1) as usize);
        // The build wrote each template whole from UTF-8 text.
        std::str::from_utf8(&LANGS[0].text[at..at + len]).unwrap_or("")
    }

    /// The stable id: FNV-1a of the English template, as 16 hex digits.
    pub fn id(self) -> MessageId {
        MessageId(u64::from(self.field(2)) | (u64::from(self.field(3)) << 32))
    }

    /// The message with this English template, if the catalogue has it.
    pub fn of_template(template: &str) -> Option<Message> {
        let mut out = Vec::new();
        let (found, _) = lookup(0, template.as_bytes(), &mut out)?;
        (found.template() == template).then_some(found)
    }
}

/// A message's stable id (its English template's hash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageId(pub u64);

impl MessageId {
    /// The id as a JSON string: 16 hex digits in quotes.
    pub fn quoted(self) -> String {
        format!("\"{self}\"")
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl serde::Serialize for MessageId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A message read as a template of the catalogue.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// The template.
    pub message: Message,
    /// The language it was written in (`LANGS` index).
    pub lang: usize,
    /// The template it was read with (in that language's index).
    template: usize,
    /// Its arguments in the English template's order (a translation may print them in
    /// another): where each lies in the message.
    pub args: Vec<Span>,
}

impl Found {
    /// The arguments' text.
    pub fn arg_texts<'t>(&self, text: &'t str) -> Vec<&'t str> {
        self.args
            .iter()
            .map(|s| text.get(s.start as usize..s.end as usize).unwrap_or(""))
            .collect()
    }

    /// The language's name.
    pub fn language(&self) -> &'static str {
        LANGS[self.lang].name
    }

    /// The arguments of `text` read with the same template (`text` being the message
    /// rewritten, e.g. redacted), if it still reads as that template.
    pub fn rematch<'t>(&self, text: &'t str) -> Option<Vec<&'t str>> {
        let (template, m) = Index {
            data: &LANGS[self.lang],
        }
        .template(self.template);
        let mut spans = Vec::new();
        if !matcher::matches(template, text.as_bytes(), &mut spans) {
            return None;
        }
        if self.lang != 0 {
            spans = in_english_order(m, &spans);
        }
        let again = Found {
            args: spans,
            ..self.clone()
        };
        Some(again.arg_texts(text))
    }
}

/// The languages a log's messages have been found in: tried first, before the rest.
#[derive(Debug, Default)]
pub struct Languages {
    seen: AtomicU32,
}

impl Clone for Languages {
    fn clone(&self) -> Languages {
        Languages {
            seen: AtomicU32::new(self.seen.load(Ordering::Relaxed)),
        }
    }
}

impl Languages {
    /// The template of `text`: English first, then the languages seen before, then the
    /// others while no other language has been seen (a server writes in one language
    /// unless its sessions set their own `lc_messages`).
    pub fn find(&self, text: &str) -> Option<Found> {
        let mut spans = Vec::new();
        let b = text.as_bytes();
        if let Some((m, template)) = lookup(0, b, &mut spans) {
            return Some(Found {
                message: m,
                lang: 0,
                template,
                args: spans,
            });
        }
        let seen = self.seen.load(Ordering::Relaxed);
        for lang in (1..LANGS.len()).filter(|l| seen == 0 || seen & (1 << l) != 0) {
            if let Some((m, template)) = lookup(lang, b, &mut spans) {
                self.seen.fetch_or(1 << lang, Ordering::Relaxed);
                let args = in_english_order(m, &spans);
                return Some(Found {
                    message: m,
                    lang,
                    template,
                    args,
                });
            }
        }
        None
    }
}

/// A translation's arguments put in the order the English template prints them.
fn in_english_order(m: Message, spans: &[Span]) -> Vec<Span> {
    spec::pieces(m.template().as_bytes())
        .filter_map(|p| match p {
            spec::Piece::Conv(_, arg) => spans.iter().find(|s| s.arg == arg).copied(),
            spec::Piece::Lit(_) => None,
        })
        .collect()
}

fn word(b: &[u8], i: usize) -> u32 {
    b.get(4 * i..4 * i + 4)
        .map_or(0, |w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
}

/// One language's index, read in place.
struct Index {
    data: &'static LangData,
}

#[derive(Clone, Copy)]
struct Key {
    at: usize,
    len: usize,
    parent: u32,
    first: usize,
    count: usize,
}

impl Index {
    fn w(&self, i: usize) -> u32 {
        word(self.data.index, i)
    }
    fn templates(&self) -> usize {
        self.w(0) as usize
    }
    fn heads(&self) -> usize {
        self.w(1) as usize
    }
    fn tails(&self) -> usize {
        self.w(2) as usize
    }
    fn template(&self, i: usize) -> (&'static [u8], Message) {
        let base = 3 + 3 * i;
        let (at, len) = (self.w(base) as usize, self.w(base + 1) as usize);
        (&self.data.text[at..at + len], Message(self.w(base + 2)))
    }
    fn key(&self, tails: bool, i: usize) -> Key {
        let base = 3 + 3 * self.templates() + 5 * (i + if tails { self.heads() } else { 0 });
        Key {
            at: self.w(base) as usize,
            len: self.w(base + 1) as usize,
            parent: self.w(base + 2),
            first: self.w(base + 3) as usize,
            count: self.w(base + 4) as usize,
        }
    }
    fn bytes(&self, k: Key) -> &'static [u8] {
        &self.data.text[k.at..k.at + k.len]
    }
}

/// The message of `text` in language `lang`, its arguments in `out` (in the
/// language's order).
fn lookup(lang: usize, text: &[u8], out: &mut Vec<Span>) -> Option<(Message, usize)> {
    let ix = Index { data: &LANGS[lang] };
    for tails in [false, true] {
        let n = if tails { ix.tails() } else { ix.heads() };
        // The greatest key not after the message: every key the message starts (ends)
        // with is it or one of the keys it extends.
        let (mut lo, mut hi) = (0, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            let k = ix.bytes(ix.key(tails, mid));
            let not_after = if tails {
                rev_cmp(k, text) != std::cmp::Ordering::Greater
            } else {
                k <= text
            };
            if not_after {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo == 0 {
            continue;
        }
        let mut i = (lo - 1) as u32;
        let first = ix.bytes(ix.key(tails, i as usize));
        let common = if tails {
            first
                .iter()
                .rev()
                .zip(text.iter().rev())
                .take_while(|(a, b)| a == b)
                .count()
        } else {
            first.iter().zip(text).take_while(|(a, b)| a == b).count()
        };
        while i != u32::MAX {
            let k = ix.key(tails, i as usize);
            if k.len <= common {
                for t in k.first..k.first + k.count {
                    let (template, m) = ix.template(t);
                    if matcher::matches(template, text, out) {
                        return Some((m, t));
                    }
                }
            }
            i = k.parent;
        }
    }
    None
}

/// Compares two byte strings from their ends.
fn rev_cmp(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.iter().rev().cmp(b.iter().rev())
}

#[cfg(test)]
mod tests;
