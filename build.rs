//! Turns PostgreSQL's message catalogue (catalogue/*.txt, written by
//! scripts/catalogue.py from the server's translation files) into the lookup tables the
//! log reader matches messages with: per language the templates' text and an index of
//! their literal heads and tails, sorted, each knowing the longest other one it extends
//! (so that a message finds every template it could be in one binary search).

use std::fs;
use std::path::{Path, PathBuf};

#[allow(dead_code)]
#[path = "src/logs/messages/spec.rs"]
mod spec;

/// A head or tail shorter than this finds too many messages to be worth looking up by.
const MIN_KEY: usize = 4;
/// A template with neither (`%s at or near "%s"`) is tried on a message no other
/// template matched, if it has at least this much literal text.
const MIN_BARE_LITERAL: usize = 8;

fn unescape(line: &str) -> Vec<u8> {
    let b = line.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            out.push(match b[i + 1] {
                b'n' => b'\n',
                b't' => b'\t',
                b'r' => b'\r',
                b'0' => 0,
                other => other,
            });
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn fnv1a(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

struct Form {
    at: u32,
    len: u32,
    msg: u32,
    literal: usize,
}

/// Sorted unique keys with, for each, the longest other key it extends (its parent) and
/// the templates filed under it.
fn keyed(forms: &[(usize, Vec<u8>)], all: &[Form], reversed: bool) -> (Vec<u32>, Vec<u32>) {
    // (key as compared, key's offset in text, form index)
    let mut entries: Vec<(Vec<u8>, u32, usize)> = forms
        .iter()
        .map(|(f, key)| {
            let form = &all[*f];
            let at = if reversed {
                form.at + form.len - key.len() as u32
            } else {
                form.at
            };
            let cmp = if reversed {
                key.iter().rev().copied().collect()
            } else {
                key.clone()
            };
            (cmp, at, *f)
        })
        .collect();
    entries.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then(all[b.2].literal.cmp(&all[a.2].literal))
            .then(all[a.2].msg.cmp(&all[b.2].msg))
    });
    let mut order = Vec::new(); // form indexes in key order
    let mut keys: Vec<(Vec<u8>, u32, u32, u32)> = Vec::new(); // key, at, first, count
    for (k, at, f) in entries {
        match keys.last_mut() {
            Some(last) if last.0 == k => last.3 += 1,
            _ => keys.push((k, at, order.len() as u32, 1)),
        }
        order.push(f as u32);
    }
    let mut out = Vec::new();
    let mut stack: Vec<usize> = Vec::new();
    for (i, (k, at, first, count)) in keys.iter().enumerate() {
        while let Some(&top) = stack.last() {
            if k.starts_with(&keys[top].0) {
                break;
            }
            stack.pop();
        }
        let parent = stack.last().map_or(u32::MAX, |&p| p as u32);
        out.extend([*at, k.len() as u32, parent, *first, *count]);
        stack.push(i);
    }
    // A key no other extends (the next in order does not start with it) is a leaf: a
    // message that starts with it has no longer key. Marked in the length's top bit.
    for i in 0..keys.len() {
        let leaf = keys.get(i + 1).is_none_or(|n| !n.0.starts_with(&keys[i].0));
        if leaf {
            out[5 * i + 1] |= 1 << 31;
        }
    }
    (out, order)
}

fn build(lines: &[Vec<u8>], out_dir: &Path, name: &str) {
    let mut text = Vec::new();
    let mut all: Vec<Form> = Vec::new();
    for (msg, line) in lines.iter().enumerate() {
        if line.is_empty() {
            continue;
        }
        for form in line.split(|&b| b == 0) {
            if form.is_empty() {
                continue;
            }
            all.push(Form {
                at: text.len() as u32,
                len: form.len() as u32,
                msg: msg as u32,
                literal: spec::literal_len(form),
            });
            text.extend_from_slice(form);
        }
    }
    let mut by_head = Vec::new();
    let mut by_tail = Vec::new();
    let mut bare = Vec::new();
    for (i, f) in all.iter().enumerate() {
        let t = &text[f.at as usize..(f.at + f.len) as usize];
        let (h, tl) = (spec::head(t), spec::tail(t));
        if h.len() >= MIN_KEY {
            by_head.push((i, h.to_vec()));
        } else if tl.len() >= MIN_KEY {
            by_tail.push((i, tl.to_vec()));
        } else if f.literal >= MIN_BARE_LITERAL {
            bare.push(i as u32);
        }
    }
    bare.sort_by_key(|&i| {
        (
            std::cmp::Reverse(all[i as usize].literal),
            all[i as usize].msg,
        )
    });
    let (heads, head_order) = keyed(&by_head, &all, false);
    let (tails, tail_order) = keyed(&by_tail, &all, true);
    let mut idx: Vec<u32> = Vec::new();
    let n_tpl = head_order.len() + tail_order.len() + bare.len();
    idx.extend([
        n_tpl as u32,
        (heads.len() / 5) as u32,
        (tails.len() / 5) as u32,
        bare.len() as u32,
    ]);
    for &f in head_order
        .iter()
        .chain(tail_order.iter())
        .chain(bare.iter())
    {
        let f = &all[f as usize];
        idx.extend([f.at, f.len, f.msg, f.literal as u32]);
    }
    idx.extend(heads);
    // Tails' template numbers follow the heads' templates.
    let shift = head_order.len() as u32;
    for (k, v) in tails.iter().enumerate() {
        idx.push(if k % 5 == 3 { v + shift } else { *v });
    }
    // Per message, its template (the first form filed): found by the message's number.
    let mut by_message = vec![u32::MAX; lines.len()];
    for (t, &f) in head_order
        .iter()
        .chain(tail_order.iter())
        .chain(bare.iter())
        .enumerate()
    {
        let m = all[f as usize].msg as usize;
        if by_message[m] == u32::MAX {
            by_message[m] = t as u32;
        }
    }
    idx.extend(by_message);
    fs::write(out_dir.join(format!("{name}.text")), &text).unwrap();
    let bytes: Vec<u8> = idx.iter().flat_map(|v| v.to_le_bytes()).collect();
    fs::write(out_dir.join(format!("{name}.index")), bytes).unwrap();
}

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("catalogue");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed=catalogue");
    println!("cargo:rerun-if-changed=src/logs/messages/spec.rs");
    let read = |name: &str| -> Vec<Vec<u8>> {
        let p = dir.join(name);
        let s = fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        s.lines().map(unescape).collect()
    };
    let en = read("en.txt");
    build(&en, &out_dir, "en");
    // Each message: its English template's place (the first form) and its id.
    let mut messages: Vec<u8> = Vec::new();
    let mut at = 0u32;
    for line in &en {
        let first = line.split(|&b| b == 0).next().unwrap_or(&[]);
        let id = fnv1a(first);
        for v in [at, first.len() as u32, id as u32, (id >> 32) as u32] {
            messages.extend(v.to_le_bytes());
        }
        for form in line.split(|&b| b == 0).filter(|f| !f.is_empty()) {
            at += form.len() as u32;
        }
    }
    fs::write(out_dir.join("messages.bin"), messages).unwrap();
    let mut langs: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let lang = name.strip_suffix(".txt")?;
            (lang != "en" && !lang.starts_with("extra")).then(|| lang.to_string())
        })
        .collect();
    langs.sort();
    let mut code = String::from(
        "/// Every language of the catalogue, English first.\npub static LANGS: &[LangData] = &[\n",
    );
    for lang in std::iter::once("en".to_string()).chain(langs.iter().cloned()) {
        if lang != "en" {
            let lines = read(&format!("{lang}.txt"));
            assert_eq!(
                lines.len(),
                en.len(),
                "catalogue/{lang}.txt: not one line per line of en.txt"
            );
            build(&lines, &out_dir, &lang);
        }
        code.push_str(&format!(
            "    LangData {{ name: {lang:?}, text: include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{lang}.text\")), index: include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{lang}.index\")) }},\n"
        ));
    }
    code.push_str("];\n/// Per message: its English template's offset and length in `LANGS[0].text`, its id.\npub static MESSAGES: &[u8] = include_bytes!(concat!(env!(\"OUT_DIR\"), \"/messages.bin\"));\n");
    fs::write(out_dir.join("catalogue.rs"), code).unwrap();
}
