#!/usr/bin/env python3
"""Writes PostgreSQL's message catalogue into catalogue/ from its translation files.

The server's translations (`postgres-<major>.mo`, one per language, installed by
Debian's postgresql-<major> under /usr/share/locale/<lang>/LC_MESSAGES/) pair every
translatable string of the server (each `errmsg`, `errdetail`, `errhint` template) in
English (the msgid) with its translation. The agent reads the English side to name
every message by its template, and the translations to read a server whose
`lc_messages` is not English back to the same template.

    scripts/catalogue.py                       # /usr/share/locale, postgres-15
    scripts/catalogue.py --major 16 --locale-dir /path/to/share/locale

Writes catalogue/en.txt (one English template a line, sorted) and
catalogue/<lang>.txt (line i: the translation of line i of en.txt, empty when that
language has none). Templates of en.txt that are kept by hand (catalogue/extra-en.txt:
messages of other major versions the files above lack) are added to en.txt too.
Escapes in every file: \\n, \\t, \\\\, and \\0 between a plural message's forms.
build.rs turns these files into the agent's lookup tables.
"""

import argparse
import glob
import os
import struct
import sys


def read_mo(path):
    """msgid -> msgstr (bytes) of a GNU .mo file."""
    data = open(path, "rb").read()
    magic = struct.unpack("<I", data[:4])[0]
    order = "<" if magic == 0x950412DE else ">"
    if struct.unpack(order + "I", data[:4])[0] != 0x950412DE:
        sys.exit(f"{path}: not a .mo file")
    _, _, count, ids_at, strs_at = struct.unpack(order + "5I", data[:20])
    out = {}
    for i in range(count):
        n, at = struct.unpack(order + "2I", data[ids_at + 8 * i : ids_at + 8 * i + 8])
        key = data[at : at + n]
        n, at = struct.unpack(order + "2I", data[strs_at + 8 * i : strs_at + 8 * i + 8])
        value = data[at : at + n]
        if key == b"" or b"\x04" in key:  # the header; messages with a context
            continue
        out[key] = value
    return out


def escape(b):
    s = b.decode("utf-8")
    return (
        s.replace("\\", "\\\\")
        .replace("\n", "\\n")
        .replace("\t", "\\t")
        .replace("\r", "\\r")
        .replace("\0", "\\0")
    )


def unescape(s):
    out, i = [], 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            out.append({"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\"}[s[i + 1]])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out).encode("utf-8")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--major", default="15")
    ap.add_argument("--locale-dir", default="/usr/share/locale")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "catalogue"))
    a = ap.parse_args()
    files = sorted(glob.glob(f"{a.locale_dir}/*/LC_MESSAGES/postgres-{a.major}.mo"))
    if not files:
        sys.exit(f"no postgres-{a.major}.mo under {a.locale_dir}")
    langs = {}
    for f in files:
        lang = f.split("/")[-3]
        langs[lang] = read_mo(f)
    ids = set()
    for d in langs.values():
        ids.update(d)
    extra = os.path.join(a.out, "extra-en.txt")
    if os.path.exists(extra):
        for line in open(extra, encoding="utf-8"):
            line = line.rstrip("\n")
            if line and not line.startswith("#"):
                ids.add(unescape(line))
    ordered = sorted(ids)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "en.txt"), "w", encoding="utf-8") as f:
        for k in ordered:
            f.write(escape(k) + "\n")
    for lang, d in sorted(langs.items()):
        with open(os.path.join(a.out, f"{lang}.txt"), "w", encoding="utf-8") as f:
            for k in ordered:
                v = d.get(k, b"")
                # A translation identical to the English adds nothing to look up.
                f.write((escape(v) if v != k else "") + "\n")
    print(f"{len(ordered)} templates, languages: {' '.join(sorted(langs))}")


if __name__ == "__main__":
    main()
