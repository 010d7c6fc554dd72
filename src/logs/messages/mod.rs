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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

pub use matcher::{matches, Span};
pub use spec::{head, Kind};

/// One language's tables (made by build.rs).
pub struct LangData {
    /// Its name (`en`, `de`, `zh_CN`, …).
    pub name: &'static str,
    /// Every template's text, one after the other.
    pub text: &'static [u8],
    /// Little-endian u32s: counts (templates, heads, tails, bare templates), templates
    /// (offset, length, message: those filed by head, by tail, then the bare ones),
    /// heads and tails (offset, length, parent, first template, templates), then per
    /// message of the catalogue its template here (`u32::MAX`: none).
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

    /// Its line in `catalogue/en.txt` (0-based).
    pub fn number(self) -> usize {
        self.0 as usize
    }

    /// Its template in language `lang` (`LANGS` index), if that language has one.
    pub fn translation(self, lang: usize) -> Option<&'static [u8]> {
        let ix = Index { data: &LANGS[lang] };
        let t = ix.by_message(self)?;
        Some(ix.template(t).0)
    }

    /// The message with this English template, if the catalogue has it.
    pub fn of_template(template: &str) -> Option<Message> {
        let mut out = Vec::new();
        match lookup(0, template.as_bytes(), &mut out, None) {
            Some((found, _)) if found.template() == template => Some(found),
            // Too short to be filed for lookup (`LOG`), or shadowed by a longer one.
            _ => all().find(|m| m.template() == template),
        }
    }
}

/// The labels the server writes before a message (in English).
pub const PRIMARY_LABELS: [&str; 8] = [
    "LOG", "ERROR", "WARNING", "FATAL", "PANIC", "NOTICE", "INFO", "DEBUG",
];
/// Labels of the extra lines that belong to the message before them.
pub const SECONDARY_LABELS: [&str; 7] = [
    "DETAIL",
    "HINT",
    "CONTEXT",
    "STATEMENT",
    "QUERY",
    "LOCATION",
    "BACKTRACE",
];

fn labels() -> impl Iterator<Item = &'static str> {
    PRIMARY_LABELS.into_iter().chain(SECONDARY_LABELS)
}

/// The English label (`ERROR`, `DETAIL`, …) of a label a server wrote in one of the
/// catalogue's languages (`FEHLER`, `ANWEISUNG`, `ОШИБКА`), or the label itself when it
/// is English; `None` for a word that is no label.
pub fn english_label(word: &str) -> Option<&'static str> {
    label(word).map(|(l, _)| l)
}

/// [`english_label`] and the language the word is of (`LANGS` index; 0 for a word
/// that is English, or the same in English and the language).
pub fn label(word: &str) -> Option<(&'static str, usize)> {
    if let Some(l) = labels().find(|l| *l == word) {
        return Some((l, 0));
    }
    static TRANSLATED: OnceLock<HashMap<&'static str, (&'static str, usize)>> = OnceLock::new();
    TRANSLATED
        .get_or_init(|| {
            let mut map = HashMap::new();
            for label in labels() {
                // Severities are their own msgids; the extra lines' are "DETAIL:  ".
                let msgid = format!("{label}:  ");
                let Some(m) = Message::of_template(label).or_else(|| Message::of_template(&msgid))
                else {
                    continue;
                };
                for lang in 1..LANGS.len() {
                    let Some(t) = m
                        .translation(lang)
                        .and_then(|t| std::str::from_utf8(t).ok())
                    else {
                        continue;
                    };
                    let word = t.trim_end_matches([' ', ':', '\u{a0}']);
                    if !word.is_empty() && !word.contains(['%', '\n']) {
                        map.entry(word).or_insert((label, lang));
                    }
                }
            }
            map
        })
        .get(word)
        .copied()
}

/// The English of a whole text of language `lang` that is a template without
/// conversions (`Syntaxfehler` is `syntax error`): what a translated message prints
/// into another's argument.
pub fn english_text(lang: usize, text: &str) -> Option<&'static str> {
    let mut out = Vec::new();
    let (m, _) = lookup(lang, text.as_bytes(), &mut out, None)?;
    out.is_empty().then(|| m.template())
}

/// What stderr writes around the error's position at the end of a message, before and
/// after the number (` at character 15`, ` bei Zeichen 15`, ` (символ 15)`).
pub fn position_markers() -> &'static [(&'static str, &'static str)] {
    static MARKERS: OnceLock<Vec<(&'static str, &'static str)>> = OnceLock::new();
    MARKERS.get_or_init(|| {
        let mut v = vec![(" at character ", "")];
        if let Some(m) = Message::of_template(" at character %d") {
            for lang in 1..LANGS.len() {
                let marker = m
                    .translation(lang)
                    .and_then(|t| std::str::from_utf8(t).ok())
                    .and_then(|t| t.split_once("%d"))
                    .filter(|(b, a)| !b.is_empty() && !b.contains('%') && !a.contains('%'));
                if let Some(marker) = marker.filter(|m| !v.contains(m)) {
                    v.push(marker);
                }
            }
        }
        v
    })
}

/// The languages the catalogue reads besides English.
pub fn languages() -> Vec<&'static str> {
    LANGS[1..].iter().map(|l| l.name).collect()
}

/// How many arguments a template prints (its conversions, `%m` included).
pub fn count_conversions(template: &str) -> usize {
    spec::pieces(template.as_bytes())
        .filter(|p| matches!(p, spec::Piece::Conv(..)))
        .count()
}

/// Every message of the catalogue.
pub fn all() -> impl Iterator<Item = Message> {
    (0..(MESSAGES.len() / 16) as u32).map(Message)
}

/// A message's stable id (its English template's hash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageId(pub u64);

impl MessageId {
    /// The id as a JSON string: 16 hex digits in quotes.
    pub fn quoted(self) -> [u8; 18] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [b'"'; 18];
        for (i, b) in out[1..17].iter_mut().enumerate() {
            *b = HEX[((self.0 >> (60 - 4 * i)) & 0xf) as usize];
        }
        out
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
#[derive(Debug)]
pub struct Languages {
    seen: AtomicU32,
    /// The English head the last message was found by, when no other head extends it:
    /// a log is mostly a few kinds of message, and a message that starts with it needs
    /// no search (`u32::MAX`: none).
    last_leaf: AtomicU32,
}

impl Default for Languages {
    fn default() -> Languages {
        Languages {
            seen: AtomicU32::new(0),
            last_leaf: AtomicU32::new(u32::MAX),
        }
    }
}

impl Clone for Languages {
    fn clone(&self) -> Languages {
        Languages {
            seen: AtomicU32::new(self.seen.load(Ordering::Relaxed)),
            last_leaf: AtomicU32::new(self.last_leaf.load(Ordering::Relaxed)),
        }
    }
}

impl Languages {
    /// The template of `text`: English first, then the languages seen before.
    pub fn find(&self, text: &str) -> Option<Found> {
        self.find_hinted(text, None)
    }

    /// Takes the language of a locale name (`lc_messages`: `de_DE.UTF-8`, `zh_CN.utf8`)
    /// as seen, so that its messages are found without a guess.
    pub fn prefer_locale(&self, locale: &str) {
        let name = locale.split(['.', '@']).next().unwrap_or("");
        let lang = LANGS
            .iter()
            .position(|l| l.name == name)
            .or_else(|| {
                let short = name.split('_').next().unwrap_or("");
                LANGS.iter().position(|l| l.name == short)
            })
            .filter(|&l| l > 0);
        if let Some(l) = lang {
            self.seen.fetch_or(1 << l, Ordering::Relaxed);
        }
    }

    /// [`Languages::find`] for a message whose label was written in language `hint`
    /// (`FEHLER`: German). The languages not seen yet are tried too when the label or
    /// the message says it is not English (a label of that language, a character
    /// outside ASCII), by their heads and tails only: each session may set its own
    /// `lc_messages`, and what no language has (an application's `RAISE`) must not cost
    /// a full search in every one.
    pub fn find_hinted(&self, text: &str, hint: Option<usize>) -> Option<Found> {
        let mut spans = Vec::new();
        let b = text.as_bytes();
        let leaf = &self.last_leaf;
        if let Some((m, template)) = lookup(0, b, &mut spans, Some(leaf)) {
            return Some(Found {
                message: m,
                lang: 0,
                template,
                args: spans,
            });
        }
        let seen = self.seen.load(Ordering::Relaxed);
        let hint = hint.filter(|&l| l > 0 && l < LANGS.len());
        let foreign = hint.is_some() || !text.is_ascii();
        let order = hint
            .into_iter()
            .chain((1..LANGS.len()).filter(|&l| seen & (1 << l) != 0 && Some(l) != hint))
            .map(|l| (l, true))
            .chain(
                (1..LANGS.len())
                    .filter(|&l| foreign && seen & (1 << l) == 0 && Some(l) != hint)
                    .map(|l| (l, false)),
            );
        for (lang, full) in order {
            let found = if full {
                lookup(lang, b, &mut spans, None)
            } else {
                lookup_keyed(lang, b, &mut spans)
            };
            if let Some((m, template)) = found {
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
    /// No other key extends it.
    leaf: bool,
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
    fn bare(&self) -> usize {
        self.w(3) as usize
    }
    /// How many bytes of template `i` are literal.
    fn literal(&self, i: usize) -> usize {
        self.w(4 + 4 * i + 3) as usize
    }
    /// The template of message `m` (its first form), if the language has one.
    fn by_message(&self, m: Message) -> Option<usize> {
        let base = 4 + 4 * self.templates() + 5 * (self.heads() + self.tails());
        let t = self.w(base + m.0 as usize);
        (t != u32::MAX).then_some(t as usize)
    }
    fn template(&self, i: usize) -> (&'static [u8], Message) {
        let base = 4 + 4 * i;
        let (at, len) = (self.w(base) as usize, self.w(base + 1) as usize);
        (&self.data.text[at..at + len], Message(self.w(base + 2)))
    }
    fn key(&self, tails: bool, i: usize) -> Key {
        let base = 4 + 4 * self.templates() + 5 * (i + if tails { self.heads() } else { 0 });
        let len = self.w(base + 1);
        Key {
            at: self.w(base) as usize,
            len: (len & !(1 << 31)) as usize,
            leaf: len & (1 << 31) != 0,
            parent: self.w(base + 2),
            first: self.w(base + 3) as usize,
            count: self.w(base + 4) as usize,
        }
    }
    fn bytes(&self, k: Key) -> &'static [u8] {
        &self.data.text[k.at..k.at + k.len]
    }
}

/// A match with less literal text than this (`server %s`) may be a catch-all: a
/// template found by its end, or one with neither head nor tail, that has more is
/// taken instead.
const SPECIFIC: usize = 10;

/// The message of `text` in language `lang` and the template it was read with, its
/// arguments in `out` (in the language's order).
/// [`lookup`] by heads and tails only, without the templates that have neither.
fn lookup_keyed(lang: usize, text: &[u8], out: &mut Vec<Span>) -> Option<(Message, usize)> {
    let ix = Index { data: &LANGS[lang] };
    by_key(&ix, false, text, out, None).or_else(|| by_key(&ix, true, text, out, None))
}

/// `leaf`: the head a message was last found by, tried first (and set).
fn lookup(
    lang: usize,
    text: &[u8],
    out: &mut Vec<Span>,
    leaf: Option<&AtomicU32>,
) -> Option<(Message, usize)> {
    let ix = Index { data: &LANGS[lang] };
    let mut best: Option<(Message, usize, usize)> = None;
    let mut spans = Vec::new();
    let mut take = |m: Message, t: usize, spans: &mut Vec<Span>, out: &mut Vec<Span>| {
        let literal = ix.literal(t);
        if best.is_none_or(|(_, _, l)| literal > l) {
            best = Some((m, t, literal));
            std::mem::swap(out, spans);
        }
        // English is the language whose catch-alls are known to be short; a
        // translation's words may be longer (a Cyrillic letter is two bytes), so every
        // candidate is weighed there.
        lang == 0 && best.is_some_and(|(_, _, l)| l >= SPECIFIC)
    };
    for tails in [false, true] {
        if let Some((m, t)) = by_key(&ix, tails, text, &mut spans, leaf.filter(|_| !tails)) {
            if take(m, t, &mut spans, out) {
                return best.map(|(m, t, _)| (m, t));
            }
        }
    }
    // Templates with neither a head nor a tail to find them by (`%s at or near "%s"`),
    // most literal text first.
    let n = ix.templates();
    for t in n - ix.bare()..n {
        let (template, m) = ix.template(t);
        if matcher::matches(template, text, &mut spans) {
            take(m, t, &mut spans, out);
            break;
        }
    }
    best.map(|(m, t, _)| (m, t))
}

/// The first template found by the message's start (`tails`: end) that matches it.
fn by_key(
    ix: &Index,
    tails: bool,
    text: &[u8],
    out: &mut Vec<Span>,
    leaf: Option<&AtomicU32>,
) -> Option<(Message, usize)> {
    if let Some(last) = leaf.map(|l| l.load(Ordering::Relaxed)) {
        if (last as usize) < ix.heads() {
            let k = ix.key(false, last as usize);
            if text.starts_with(ix.bytes(k)) {
                // No longer head exists: the chain starts here.
                return chain(ix, false, last, k.len, text, out, None);
            }
        }
    }
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
        return None;
    }
    let i = (lo - 1) as u32;
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
    chain(ix, tails, i, common, text, out, leaf)
}

/// The first template that matches, from key `i` through the keys it extends: those
/// no longer than `common` (the bytes key `i` shares with the message) are its
/// start (end). A leaf key that found one is remembered in `leaf`.
fn chain(
    ix: &Index,
    tails: bool,
    mut i: u32,
    common: usize,
    text: &[u8],
    out: &mut Vec<Span>,
    leaf: Option<&AtomicU32>,
) -> Option<(Message, usize)> {
    while i != u32::MAX {
        let k = ix.key(tails, i as usize);
        if k.len <= common {
            for t in k.first..k.first + k.count {
                let (template, m) = ix.template(t);
                if matcher::matches(template, text, out) {
                    if let Some(l) = leaf.filter(|_| k.leaf) {
                        l.store(i, Ordering::Relaxed);
                    }
                    return Some((m, t));
                }
            }
        }
        i = k.parent;
    }
    None
}

/// Compares two byte strings from their ends.
fn rev_cmp(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.iter().rev().cmp(b.iter().rev())
}

#[cfg(test)]
mod tests;
