//! The fine class of a message (`subclass`: `unique_violation`, `checkpoint_complete`,
//! `autovacuum_completed`, …) and its figures as typed values, both from its template
//! in PostgreSQL's catalogue — so a message gets the same subclass and figures from
//! stderr with or without `%e`, csvlog and jsonlog, in English or in a translation.
//!
//! A rule names a template, the subclass it means and a name for each of its
//! arguments. Messages built from several templates (autovacuum's report: a line
//! each; `connection authorized` and its optional parts) add the figures of each part;
//! the DETAIL and CONTEXT lines add theirs (lock holders, the autovacuum a cancel
//! stopped), never a subclass.

mod rules;

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::{Map, Value};

use super::messages::{Found, Kind, Languages, Message, Span};

pub use rules::RULES;

/// One rule: a template and what it means.
#[derive(Debug)]
pub struct Rule {
    /// The subclass; `a/b`: `a` when the severity is FATAL, else `b` (a role that does
    /// not exist is a failed login at FATAL, an undefined object at ERROR). Empty for a
    /// part of a message (an autovacuum report's `pages:` line, a DETAIL).
    pub subclass: &'static str,
    /// The English template, as in `catalogue/en.txt`.
    pub template: &'static str,
    /// A name per argument, space-separated, in the template's order: `-` leaves it
    /// out; `.` is the previous number's fraction (`%ld.%03d`); `/` joins it to the
    /// previous with a slash (`%X/%X`, an LSN); `+` appends it to the previous text
    /// (`host=%s%s%s`); a name ending in `_pids` is a list of process ids; `[]` at the
    /// end collects the values of repeated lines into a list.
    pub args: &'static str,
    /// Figures the template itself says, `key=value` space-separated (`aggressive=true`).
    pub fixed: &'static str,
    /// The severities it is written at (space-separated; empty: any). A message at
    /// another severity is someone's text (a `RAISE`), not this event.
    pub severity: &'static str,
    /// Optional parts the message may go on with, each a template with a rule of its
    /// own (`connection authorized`'s ` database=%s`, ` SSL enabled (…)`).
    pub parts: &'static [&'static str],
}

impl Rule {
    /// The subclass at severity `sev` (English).
    pub fn subclass_at(&self, sev: &str) -> &'static str {
        match self.subclass.split_once('/') {
            Some((fatal, _)) if sev == "FATAL" => fatal,
            Some((_, other)) => other,
            None => self.subclass,
        }
    }
}

fn table() -> &'static Vec<Option<&'static Rule>> {
    static TABLE: OnceLock<Vec<Option<&'static Rule>>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let by_template: HashMap<&'static str, Message> =
            super::messages::all().map(|m| (m.template(), m)).collect();
        let mut t: HashMap<Message, &'static Rule> = RULES
            .iter()
            .filter_map(|r| Some((*by_template.get(r.template)?, r)))
            .collect();
        // `permission denied for table %s`, `must be owner of view %s`, … : one rule
        // per kind of object the catalogue has, the kind a figure.
        for m in super::messages::all() {
            let template = m.template();
            for (head, subclass) in [
                ("permission denied for ", "permission_denied"),
                ("must be owner of ", "permission_denied_owner"),
            ] {
                let Some(kind) = template
                    .strip_prefix(head)
                    .and_then(|r| r.strip_suffix(" %s").or_else(|| r.strip_suffix(" \"%s\"")))
                else {
                    continue;
                };
                if kind.contains('%') || t.contains_key(&m) {
                    continue;
                }
                let fixed: &'static str =
                    Box::leak(format!("object_kind={}", kind.replace(' ', "_")).into_boxed_str());
                let rule: &'static Rule = Box::leak(Box::new(Rule {
                    subclass,
                    template,
                    args: "object_name",
                    fixed,
                    severity: "ERROR",
                    parts: &[],
                }));
                t.insert(m, rule);
            }
        }
        // By the message's number: one index per message, no hashing.
        let mut by_number = vec![None; super::messages::all().count()];
        for (m, r) in t {
            by_number[m.number()] = Some(r);
        }
        by_number
    })
}

/// The rule of a message, if there is one.
pub fn rule_of(m: Message) -> Option<&'static Rule> {
    table().get(m.number()).copied().flatten()
}

/// A message's subclass and figures.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Refined {
    /// The subclass, if a rule names one.
    pub subclass: Option<&'static str>,
    /// The figures.
    pub figures: Map<String, Value>,
    /// Where the statement a message carries lies in it (`statement: %s`): the event's
    /// statement, not a figure.
    pub statement: Option<Span>,
}

/// The subclass and figures of a message found as `found`, at severity `sev`
/// (English), with its DETAIL and CONTEXT.
pub fn refine(
    langs: &Languages,
    found: &Found,
    message: &str,
    sev: &str,
    detail: Option<&str>,
    context: Option<&str>,
) -> Refined {
    let mut out = Refined::default();
    let Some(rule) = rule_of(found.message) else {
        return out;
    };
    if !rule.severity.is_empty() && !rule.severity.split(' ').any(|s| s == sev) {
        return out;
    }
    let sub = rule.subclass_at(sev);
    out.subclass = (!sub.is_empty()).then_some(sub);
    out.statement = if rule.parts.is_empty() {
        figures(rule, found.lang, message, &found.args, &mut out.figures)
    } else {
        let mut args = found.args.clone();
        optional_parts(rule, found.lang, message, &mut args, &mut out.figures);
        figures(rule, found.lang, message, &args, &mut out.figures)
    };
    usage(langs, &mut out.figures);
    let matched_end = found.args.last().map_or(0, |s| s.end as usize);
    let template = found.message.template();
    if template.ends_with('\n') {
        // A report of several lines, each a template of its own.
        let head_end = message
            .get(matched_end..)
            .and_then(|r| r.find('\n'))
            .map_or(message.len(), |k| matched_end + k + 1);
        parts(langs, &message[head_end..], &mut out.figures);
    }
    for text in [detail, context].into_iter().flatten() {
        parts(langs, text, &mut out.figures);
    }
    finish(&mut out.figures);
    out
}

/// A message written as a head and optional parts (`connection authorized: user=%s`,
/// then ` database=%s`, ` application_name=%s`, ` SSL enabled (…)`): the head's last
/// argument reads to the message's end, so the parts are found in it by their literal
/// start in the message's language, cut off it and read with their own rules.
fn optional_parts(
    rule: &Rule,
    lang: usize,
    message: &str,
    args: &mut [Span],
    f: &mut Map<String, Value>,
) {
    let Some(last) = args.last_mut() else {
        return;
    };
    if last.kind != Kind::Text {
        return;
    }
    let start = last.start as usize;
    let Some(region) = message.get(start..) else {
        return;
    };
    let mut found: Vec<(usize, &Rule, &[u8])> = Vec::new();
    for part in rule.parts {
        let Some(m) = Message::of_template(part) else {
            continue;
        };
        let (Some(text), Some(part_rule)) = (m.translation(lang), rule_of(m)) else {
            continue;
        };
        let head = super::messages::head(text);
        if head.len() < 3 {
            continue;
        }
        if let Some(k) = memchr::memmem::find(region.as_bytes(), head) {
            found.push((k, part_rule, text));
        }
    }
    found.sort_by_key(|p| p.0);
    let Some(first) = found.first() else {
        return;
    };
    last.end = (start + first.0) as u32;
    for (i, (k, part_rule, text)) in found.iter().enumerate() {
        let end = found.get(i + 1).map_or(region.len(), |n| n.0);
        let Some(piece) = region.get(*k..end) else {
            continue;
        };
        let mut spans = Vec::new();
        if super::messages::matches(text, piece.as_bytes(), &mut spans) {
            figures(part_rule, lang, piece, &spans, f);
        }
    }
}

/// The figures of each line of `text` that is a part with a rule.
fn parts(langs: &Languages, text: &str, f: &mut Map<String, Value>) {
    let mut rest = text;
    while !rest.is_empty() {
        let end = rest.find('\n').map_or(rest.len(), |k| k + 1);
        let mut line = &rest[..end];
        rest = &rest[end..];
        // "index scan needed: " and its siblings start a line that goes on with a
        // template of its own.
        if let Some((how, after)) = index_scan(line) {
            f.insert("index_scan".into(), Value::from(how));
            line = after;
        }
        if let Some(found) = langs.find(line) {
            if let Some(rule) = rule_of(found.message) {
                if rule.subclass.is_empty() {
                    figures(rule, found.lang, line, &found.args, f);
                    usage(langs, f);
                }
            }
        }
    }
}

/// An autovacuum report's `index scan needed: ` (or `not needed`, `bypassed`) and the
/// rest of its line, in English or a translation.
fn index_scan(line: &str) -> Option<(&'static str, &str)> {
    static PREFIXES: OnceLock<Vec<(String, &'static str)>> = OnceLock::new();
    let prefixes = PREFIXES.get_or_init(|| {
        let mut v = Vec::new();
        for (template, how) in [
            ("index scan bypassed by failsafe: ", "bypassed_by_failsafe"),
            ("index scan not needed: ", "not_needed"),
            ("index scan bypassed: ", "bypassed"),
            ("index scan needed: ", "needed"),
        ] {
            v.push((template.to_string(), how));
            if let Some(m) = Message::of_template(template) {
                for lang in 1..super::messages::languages().len() + 1 {
                    if let Some(t) = m
                        .translation(lang)
                        .and_then(|t| std::str::from_utf8(t).ok())
                    {
                        v.push((t.to_string(), how));
                    }
                }
            }
        }
        v
    });
    prefixes
        .iter()
        .find_map(|(p, how)| line.strip_prefix(p.as_str()).map(|rest| (*how, rest)))
}

/// `system usage: %s` prints a template of its own (`CPU: user: %d.%02d s, …`): its
/// figures replace the text when it reads as one.
fn usage(langs: &Languages, f: &mut Map<String, Value>) {
    let Some(Value::String(u)) = f.remove("usage") else {
        return;
    };
    let before = f.len();
    parts(langs, &u, f);
    if f.len() == before {
        f.insert("usage".into(), Value::String(u));
    }
}

/// The figures a rule names in `text`'s arguments; where its statement lies.
fn figures(
    rule: &Rule,
    lang: usize,
    text: &str,
    args: &[Span],
    f: &mut Map<String, Value>,
) -> Option<Span> {
    let mut last: Option<String> = None;
    let mut statement = None;
    for (name, span) in rule.args.split(' ').zip(args) {
        let mut s = text
            .get(span.start as usize..span.end as usize)
            .unwrap_or("");
        if lang != 0 && span.kind == Kind::Text {
            // A translated message prints translated words into its arguments too.
            s = super::messages::english_text(lang, s).unwrap_or(s);
        }
        match name {
            "-" | "" => {}
            "statement" => statement = Some(*span),
            "." => {
                if let Some(k) = &last {
                    if let (Some(Value::Number(w)), Ok(frac)) = (f.get(k), s.parse::<u32>()) {
                        if let Some(w) = w.as_f64() {
                            let scale = 10f64.powi(s.len() as i32);
                            let v = if w < 0.0 {
                                w - frac as f64 / scale
                            } else {
                                w + frac as f64 / scale
                            };
                            f.insert(k.clone(), num(round(v, s.len())));
                        }
                    }
                }
            }
            "/" | "+" => {
                if let Some(k) = &last {
                    if let Some(Value::String(prev)) = f.get_mut(k) {
                        if name == "/" {
                            prev.push('/');
                        }
                        prev.push_str(s);
                    }
                }
            }
            _ => {
                let (key, list) = match name.strip_suffix("[]") {
                    Some(k) => (k, true),
                    None => (name, false),
                };
                let v = if key.ends_with("_pids") && !list {
                    Value::Array(
                        s.split(", ")
                            .filter_map(|p| p.trim().parse::<i64>().ok())
                            .map(Value::from)
                            .collect(),
                    )
                } else {
                    typed(span.kind, s, key)
                };
                if list {
                    match f.get_mut(key) {
                        Some(Value::Array(a)) => a.push(v),
                        _ => {
                            f.insert(key.to_string(), Value::Array(vec![v]));
                        }
                    }
                } else {
                    f.insert(key.to_string(), v);
                }
                last = Some(key.to_string());
            }
        }
    }
    for kv in rule.fixed.split(' ').filter(|s| !s.is_empty()) {
        if let Some((k, v)) = kv.split_once('=') {
            let v = match v {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => v
                    .parse::<i64>()
                    .map_or_else(|_| Value::from(v), Value::from),
            };
            f.insert(k.to_string(), v);
        }
    }
    statement
}

/// A figure's value: a number when its conversion prints one, or when its name says
/// it is one (`duration: %s ms` prints a number as text); text for the parts of an LSN
/// (`%X/%X`) and values written in hexadecimal.
fn typed(kind: Kind, s: &str, key: &str) -> Value {
    if key.ends_with("lsn") || key.ends_with("_hex") {
        return Value::from(s);
    }
    if !kind.is_number() {
        let numeric = ["_ms", "_s", "_kb", "_bytes", "_pct"]
            .iter()
            .any(|u| key.ends_with(u));
        return match s.parse::<f64>() {
            Ok(v) if numeric && v.is_finite() => num(v),
            _ => Value::from(s),
        };
    }
    match kind {
        Kind::Signed => s
            .parse::<i64>()
            .map_or_else(|_| Value::from(s), Value::from),
        Kind::Unsigned => s
            .parse::<u64>()
            .map_or_else(|_| Value::from(s), Value::from),
        Kind::Hex => u64::from_str_radix(s, 16).map_or_else(|_| Value::from(s), Value::from),
        Kind::Octal => u64::from_str_radix(s, 8).map_or_else(|_| Value::from(s), Value::from),
        _ => s.parse::<f64>().map_or_else(|_| Value::from(s), num),
    }
}

fn num(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

fn round(v: f64, digits: usize) -> f64 {
    let p = 10f64.powi(digits as i32);
    (v * p).round() / p
}

/// Figures made from others: a disconnection's session in seconds, a lock's type,
/// a table's full name, an SSL connection's parts.
fn finish(f: &mut Map<String, Value>) {
    if let (Some(h), Some(m), Some(s)) = (
        f.get("session_hours").and_then(Value::as_f64),
        f.get("session_minutes").and_then(Value::as_f64),
        f.get("session_seconds").and_then(Value::as_f64),
    ) {
        f.insert("session_s".into(), num(round(h * 3600.0 + m * 60.0 + s, 3)));
        for k in ["session_hours", "session_minutes", "session_seconds"] {
            f.remove(k);
        }
    }
    // `host=%s%s%s`: the host, then " port=" and the port when there is one.
    if let Some(Value::String(h)) = f.get("host").cloned() {
        if let Some((host, port)) = h.split_once(" port=") {
            f.insert("host".into(), Value::from(host));
            if let Ok(p) = port.parse::<u16>() {
                f.insert("port".into(), Value::from(p));
            }
        }
    }
    if let Some(Value::String(r)) = f.get_mut("reason") {
        // "checkpoint starting: immediate force wait": the flags as written.
        *r = r.trim().to_string();
    }
    if let Some(Value::String(o)) = f.get("object") {
        // "transaction 731", "relation 16384 of database 5", "tuple (0,1) of relation …",
        // "advisory lock [5,1,0,1]", "virtual transaction 3/7".
        let kind: String = o
            .split(|c: char| c.is_ascii_digit() || c == '(' || c == '[')
            .next()
            .unwrap_or("")
            .trim()
            .replace(' ', "_");
        if !kind.is_empty() {
            f.insert("lock_type".into(), Value::from(kind));
        }
    }
    if let (Some(Value::String(d)), Some(Value::String(s)), Some(Value::String(t))) =
        (f.get("database"), f.get("schema"), f.get("relation"))
    {
        let full = format!("{d}.{s}.{t}");
        f.insert("table".into(), Value::from(full));
    }
    // "(id, region)=(…)": the columns only; the values are the row's data.
    if let Some(Value::String(k)) = f.get("key") {
        let cols = k
            .strip_prefix('(')
            .and_then(|r| r.split_once(")=("))
            .map(|(c, _)| c.to_string());
        f.remove("key");
        if let Some(c) = cols {
            f.insert("key_columns".into(), Value::from(c));
        }
    }
}

/// Every subclass a rule names (both sides of an `a/b` one), sorted.
pub fn subclass_names() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = table()
        .iter()
        .flatten()
        .flat_map(|r| r.subclass.split('/'))
        .filter(|s| !s.is_empty())
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;
