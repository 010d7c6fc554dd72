//! The matcher against lines of every shape the server writes, lines that clients
//! tried to forge, and (property) random prefixes with random field values rendered the
//! way `log_line_prefix` expands them.

use proptest::prelude::*;

use super::*;

/// (record, label or "?" when undecided, text)
fn parse(prefix: &str, line: &str) -> Option<(Record, String, String)> {
    let p = Prefix::compile(prefix);
    let mut r = Record::default();
    let b = p.parse_line(line.as_bytes(), &mut r)?;
    Some((
        r,
        b.label.unwrap_or("?").to_string(),
        String::from_utf8_lossy(b.text).into_owned(),
    ))
}

#[test]
fn default_prefix() {
    let (r, label, text) = parse(
        "%m [%p] ",
        "2026-11-26 17:35:07.123 UTC [4242] LOG:  checkpoint starting: time",
    )
    .expect("match");
    assert_eq!(r.timestamp.as_deref(), Some("2026-11-26 17:35:07.123 UTC"));
    assert_eq!(r.pid, Some(4242));
    assert_eq!(label, "LOG");
    assert_eq!(text, "checkpoint starting: time");
    assert!(!r.ambiguous);
}

#[test]
fn free_text_fields_with_spaces_and_separators() {
    let (r, label, _) = parse(
        "%m [%p] app=%a,user=%u,db=%d,%e ",
        "2026-11-26 17:35:07.123 UTC [7] app=my app, x,user=postgres,db=shop,42P01 ERROR:  relation \"t\" does not exist",
    )
    .expect("match");
    assert_eq!(label, "ERROR");
    assert_eq!(r.application_name.as_deref(), Some("my app, x"));
    assert_eq!(r.user.as_deref(), Some("postgres"));
    assert_eq!(r.database.as_deref(), Some("shop"));
    assert_eq!(r.sqlstate.as_deref(), Some("42P01"));
    assert_eq!(r.pid, Some(7));
    assert!(!r.ambiguous);
}

#[test]
fn backend_type_with_space() {
    let (r, _, text) = parse(
        "%t [%p] %b: ",
        "2026-11-26 17:35:07 CET [9] client backend: ERROR:  boom",
    )
    .expect("match");
    assert_eq!(r.backend_type.as_deref(), Some("client backend"));
    assert_eq!(text, "boom");
}

#[test]
fn padding_and_q() {
    let prefix = "%m %-8p %q%-10u@%d ";
    let (r, _, _) = parse(
        prefix,
        "2026-11-26 17:35:07.123 UTC 51       alice     @shop LOG:  statement: select 1",
    )
    .expect("session line");
    assert_eq!(r.pid, Some(51));
    assert_eq!(r.user.as_deref(), Some("alice"));
    assert_eq!(r.database.as_deref(), Some("shop"));
    // A non-session process stops at %q.
    let (r, label, text) = parse(
        prefix,
        "2026-11-26 17:35:07.123 UTC 50       LOG:  checkpoint starting: time",
    )
    .expect("non-session line");
    assert_eq!(r.pid, Some(50));
    assert_eq!(r.user, None);
    assert_eq!(
        (label.as_str(), text.as_str()),
        ("LOG", "checkpoint starting: time")
    );
}

#[test]
fn unknown_is_none_and_every_escape_parses() {
    let prefix = "%t|%m|%n|%p|%P|%c|%l|%s|%v|%x|%e|%Q|%i|%b|%r|%h|%L|%a|%u|%d|%%|%Z%";
    let line = "2026-11-26 17:35:07 UTC|2026-11-26 17:35:07.123 UTC|1764178507.123|77||6745f1.4d|3|2026-11-26 17:30:00 UTC|3/14|0|00000|-123|SELECT|client backend|[local]|[local]|10.0.0.1|[unknown]|bob|db|%|LOG:  x";
    let (r, _, text) = parse(prefix, line).expect("match");
    assert_eq!(r.epoch, Some(1764178507.123));
    assert_eq!(r.pid, Some(77));
    assert_eq!(r.leader_pid, None);
    assert_eq!(r.session_id.as_deref(), Some("6745f1.4d"));
    assert_eq!(r.session_line, Some(3));
    assert_eq!(r.vxid.as_deref(), Some("3/14"));
    assert_eq!(r.query_id, Some(-123));
    assert_eq!(r.command_tag.as_deref(), Some("SELECT"));
    assert_eq!(r.local_address.as_deref(), Some("10.0.0.1"));
    assert_eq!(r.application_name, None);
    assert_eq!(r.user.as_deref(), Some("bob"));
    assert_eq!(text, "x");
}

#[test]
fn non_matching_lines_and_localized_labels() {
    assert!(parse("%m [%p] ", "random garbage LOG:  x").is_none());
    assert!(parse("%m [%p] ", "").is_none());
    let (r, label, _) = parse(
        "%m [%p] ",
        "2026-11-26 17:35:07.123 UTC [4] FEHLER:  Relation »t« existiert nicht",
    )
    .expect("localized");
    assert_eq!(label, "FEHLER");
    assert_eq!(r.pid, Some(4));
}

#[test]
fn labels_written_with_a_space_before_the_colon_or_in_two_words() {
    for (line, want) in [
        (
            "2026-11-26 17:35:07.123 UTC [4] INSTRUCTION :  select 1",
            "INSTRUCTION",
        ),
        (
            "2026-11-26 17:35:07.123 UTC [4] ASTUCE :  Vérifiez",
            "ASTUCE",
        ),
        (
            "2026-11-26 17:35:07.123 UTC [4] 명령 구문:  select 1",
            "명령 구문",
        ),
    ] {
        let (r, label, text) = parse("%m [%p] ", line).expect(line);
        assert_eq!(label, want, "{line}");
        assert_eq!(r.pid, Some(4));
        assert!(
            text.starts_with("select 1") || text == "Vérifiez",
            "{line}: {text}"
        );
        assert!(crate::logs::prefix::is_secondary(&label), "{label}");
    }
    // A word the catalogue does not know as a label is not read as one before " : ".
    assert!(parse("%m [%p] ", "2026-11-26 17:35:07.123 UTC [4] RIEN :  x").is_none());
}

#[test]
fn shortcomings_name_what_is_missing() {
    assert_eq!(Prefix::compile("%m [%p] %a ").shortcomings().len(), 0);
    assert_eq!(Prefix::compile("%m [%p] ").shortcomings().len(), 1);
    assert_eq!(Prefix::compile("").shortcomings().len(), 3);
    assert_eq!(
        Prefix::compile("%m [%p] %q%u@%d/%a ").client_fields(),
        vec![Escape::User, Escape::Database, Escape::App]
    );
    assert!(Prefix::compile("%m [%p] %e ").client_fields().is_empty());
}

const DEBIAN_APP: &str = "%m [%p] %q%u@%d/%a ";

#[test]
fn a_severity_written_into_the_application_name_is_not_believed() {
    for app in [
        "bitville-11111111-2222-3333-4444-555555555555 PANIC:  x",
        "evil LOG:  duration: 123456.0 ms  statement: DROP",
        "x STATEMENT:  forged",
    ] {
        let line =
            format!("2026-11-26 17:35:07.123 UTC [55] bob@shop/{app} LOG:  statement: SELECT 1");
        let (r, label, text) = parse(DEBIAN_APP, &line).expect("match");
        assert!(r.ambiguous, "{app}");
        assert_eq!(label, "?", "{app}: undecided, not the forged label");
        assert_eq!(r.application_name, None, "{app}");
        // What every reading agrees on is kept; nothing is lost from the text.
        assert_eq!(r.pid, Some(55));
        assert_eq!(r.user.as_deref(), Some("bob"));
        assert!(text.ends_with("LOG:  statement: SELECT 1"), "{text}");
    }
}

#[test]
fn a_name_full_of_spaces_hides_nothing() {
    let line = "2026-11-26 17:35:07.123 UTC [55] bob@shop/a b c d e f g h i j k l m n o p ERROR:  division by zero";
    let (r, label, text) = parse(DEBIAN_APP, line).expect("match");
    assert!(!r.ambiguous);
    assert_eq!(label, "ERROR");
    assert_eq!(
        r.application_name.as_deref(),
        Some("a b c d e f g h i j k l m n o p")
    );
    assert_eq!(text, "division by zero");
}

#[test]
fn a_name_that_looks_like_a_line_start_shifts_nothing() {
    // User and database may hold '@' and '/' too: which name ends where cannot be told
    // from this line alone, so none is given; the severity and pid are certain.
    let p = Prefix::compile(DEBIAN_APP);
    let line = b"2026-11-26 17:35:07.123 UTC [55] bob@shop/2026-11-26 17:35:07.123 UTC [99] x@y/z ERROR:  boom";
    let mut rd = Reader::default();
    let mut r = Record::default();
    let b = p.parse(line, &mut rd, &mut r).expect("match");
    assert!(r.ambiguous);
    assert_eq!((b.label, r.pid), (Some("ERROR"), Some(55)));
    assert_eq!(
        (
            r.user.as_deref(),
            r.database.as_deref(),
            r.application_name.as_deref()
        ),
        (None, None, None)
    );
    // Once the session's user and database are known, the line has one reading.
    let auth = b"2026-11-26 17:35:07.000 UTC [55] bob@shop/psql LOG:  connection authorized: user=bob database=shop application_name=psql";
    p.parse(auth, &mut rd, &mut Record::default())
        .expect("match");
    let mut r = Record::default();
    p.parse(line, &mut rd, &mut r).expect("match");
    assert!(!r.ambiguous);
    assert_eq!(r.database.as_deref(), Some("shop"));
    assert_eq!(
        r.application_name.as_deref(),
        Some("2026-11-26 17:35:07.123 UTC [99] x@y/z")
    );
}

#[test]
fn hosted_prefixes() {
    // Amazon RDS: no space before the severity; %r is host(port) or [local]; background
    // processes write empty fields.
    let rds = "%t:%r:%u@%d:[%p]:";
    let (r, label, text) = parse(
        rds,
        "2026-11-26 17:35:07 UTC:10.1.2.3(52044):app_user@shop:[812]:ERROR:  relation \"x\" does not exist",
    )
    .expect("rds session");
    assert_eq!(
        (label.as_str(), text.as_str()),
        ("ERROR", "relation \"x\" does not exist")
    );
    assert_eq!(r.remote_host.as_deref(), Some("10.1.2.3(52044)"));
    assert_eq!(r.user.as_deref(), Some("app_user"));
    assert_eq!(r.pid, Some(812));
    let (r, label, _) = parse(
        rds,
        "2026-11-26 17:35:07 UTC::@:[90]:LOG:  checkpoint starting: time",
    )
    .expect("rds background");
    assert_eq!((label.as_str(), r.pid, r.user), ("LOG", Some(90), None));
    // Azure: zones like -03; Heroku-like sql_error_code; Crunchy; Cloud SQL.
    let cases = [
        ("%t-%c-", "2026-11-26 17:35:07 -03-6745f1.4d-LOG:  x"),
        (
            "%m [%p]: [%l-1] db=%d,user=%u ",
            "2026-11-26 17:35:07.123 CEST [3]: [1-1] db=,user= LOG:  x",
        ),
        (
            "%m [%p]: [%l-1] db=%d,user=%u ",
            "2026-11-26 17:35:07.123 +0530 [3]: [2-1] db=shop,user=[unknown] LOG:  x",
        ),
        (" sql_error_code = %e ", " sql_error_code = 00000 LOG:  x"),
        (
            "%t [%p]: [%l-1] user=%u,db=%d,app=%a,client=%h ",
            "2026-11-26 17:35:07 UTC [5]: [7-1] user=u,db=d,app=psql,client=[local] LOG:  x",
        ),
        (
            "%m [%p-%l] %q%u@%d ",
            "2026-11-26 17:35:07.123 UTC [5-1] LOG:  x",
        ),
        (
            "%m [%p]: [%l-1] %q",
            "2026-11-26 17:35:07.123 UTC [5]: [1-1] LOG:  x",
        ),
        ("", "LOG:  x"),
    ];
    for (prefix, line) in cases {
        let (r, label, text) = parse(prefix, line).unwrap_or_else(|| panic!("{prefix:?}: {line}"));
        assert_eq!((label.as_str(), text.as_str()), ("LOG", "x"), "{prefix:?}");
        assert!(!r.ambiguous, "{prefix:?}");
    }
}

#[test]
fn one_space_after_the_label_is_read_when_nothing_else_fits() {
    let (r, label, text) =
        parse("%m [%p] ", "2026-11-26 17:35:07.123 UTC [4] LOG: x").expect("one space");
    assert_eq!(
        (label.as_str(), text.as_str(), r.pid),
        ("LOG", "x", Some(4))
    );
}

#[test]
fn the_session_settles_names_with_separators() {
    let p = Prefix::compile("%m [%p] %q%u@%d ");
    let mut rd = Reader::default();
    let line = b"2026-11-26 17:35:07.123 UTC [8] alice@corp@shop LOG:  statement: select 1";
    let mut r = Record::default();
    p.parse(line, &mut rd, &mut r).expect("match");
    assert!(r.ambiguous, "alice / corp@shop or alice@corp / shop");
    assert_eq!((r.user.as_deref(), r.database.as_deref()), (None, None));
    // The connection line names both, so it settles itself and the lines after it.
    let auth = b"2026-11-26 17:35:07.123 UTC [8] alice@corp@shop LOG:  connection authorized: user=alice@corp database=shop application_name=psql";
    let mut r = Record::default();
    p.parse(auth, &mut rd, &mut r).expect("match");
    assert!(!r.ambiguous);
    assert_eq!(r.user.as_deref(), Some("alice@corp"));
    let mut r = Record::default();
    p.parse(line, &mut rd, &mut r).expect("match");
    assert!(!r.ambiguous);
    assert_eq!(
        (r.user.as_deref(), r.database.as_deref()),
        (Some("alice@corp"), Some("shop"))
    );
    // A new session on the same pid starts over.
    let received = b"2026-11-26 17:35:08.000 UTC [8] [unknown]@[unknown] LOG:  connection received: host=[local]";
    p.parse(received, &mut rd, &mut Record::default())
        .expect("match");
    let mut r = Record::default();
    p.parse(line, &mut rd, &mut r).expect("match");
    assert!(r.ambiguous);
    // So does a session that ended.
    p.parse(auth, &mut rd, &mut Record::default())
        .expect("match");
    let bye = b"2026-11-26 17:35:09.000 UTC [8] alice@corp@shop LOG:  disconnection: session time: 0:00:01.000 user=alice@corp database=shop host=[local]";
    p.parse(bye, &mut rd, &mut Record::default())
        .expect("match");
    let mut r = Record::default();
    p.parse(line, &mut rd, &mut r).expect("match");
    assert!(r.ambiguous);
}

#[test]
fn many_labels_in_a_name_stay_bounded_and_flagged() {
    let app = "LOG:  ".repeat(2000);
    let line = format!("2026-11-26 17:35:07.123 UTC [55] u@d/{app} LOG:  x");
    let (r, label, _) = parse(DEBIAN_APP, &line).expect("match");
    assert!(r.ambiguous);
    assert_eq!(label, "?");
    // The enumeration stopped early; what precedes the first free field is certain.
    assert_eq!(r.pid, Some(55));
    assert_eq!(r.timestamp.as_deref(), Some("2026-11-26 17:35:07.123 UTC"));
    assert_eq!(r.user, None);
}

// ---- property: what the server would write reads back exactly, or flagged ----

#[derive(Debug, Clone)]
enum Piece {
    Lit(String),
    Esc(char, i32),
    Q,
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        3 => proptest::sample::select(vec![" ", "[", "] ", ":", "@", "/", ",", "=", "-", "|", "(", ")", " db=", "user="])
            .prop_map(|s| Piece::Lit(s.to_string())),
        4 => (
            proptest::sample::select(vec!['a', 'u', 'd', 'r', 'h', 'b', 'i', 'p', 't', 'm', 'n', 'e', 'c', 'l', 'v', 'x', 'Q', 'P', 'L']),
            prop_oneof![6 => Just(0i32), 1 => -12i32..12],
        )
            .prop_map(|(c, pad)| Piece::Esc(c, pad)),
        1 => Just(Piece::Q),
    ]
}

/// A client address or host name as the server writes it: never a space.
fn host() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        proptest::sample::select(vec![
            "a", "7", ".", ":", "[", "]", "(", ")", "-", "LOG:", "[local]",
        ]),
        0..5,
    )
    .prop_map(|v| v.concat())
}

/// Free text a client might choose: separators, brackets, severity words, digits.
fn name() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        proptest::sample::select(vec![
            "a",
            "b",
            "7",
            " ",
            ":",
            "[",
            "]",
            "@",
            "/",
            ",",
            "=",
            "-",
            "(",
            ")",
            "LOG:  ",
            "ERROR:  ",
            "PANIC: ",
            "DETAIL:  ",
            "2026-11-26 17:35:07 UTC",
            "%",
        ]),
        0..6,
    )
    .prop_map(|v| v.concat())
}

#[derive(Debug, Clone)]
struct Values {
    app: String,
    user: String,
    db: String,
    host: String,
    tag: String,
    pid: u32,
    session: bool,
    severity: &'static str,
    message: String,
}

fn values() -> impl Strategy<Value = Values> {
    (
        (name(), name(), name(), host(), name()),
        1u32..4_000_000,
        any::<bool>(),
        proptest::sample::select(vec![
            "LOG",
            "ERROR",
            "FATAL",
            "WARNING",
            "DETAIL",
            "STATEMENT",
        ]),
        name(),
    )
        .prop_map(
            |((app, mut user, mut db, host, tag), pid, session, severity, message)| {
                // The server cuts user and database names to 63 bytes (NAMEDATALEN - 1).
                user.truncate(63);
                db.truncate(63);
                Values {
                    app,
                    user,
                    db,
                    host,
                    tag,
                    pid,
                    session,
                    severity,
                    message,
                }
            },
        )
}

/// The prefix as the server writes it (elog.c `log_line_prefix`), and its source text.
fn render(pieces: &[Piece], v: &Values) -> (String, String) {
    let mut src = String::new();
    let mut out = String::new();
    let mut stopped = false;
    for p in pieces {
        match p {
            Piece::Lit(l) => {
                src.push_str(&l.replace('%', "%%"));
                if !stopped {
                    out.push_str(l);
                }
            }
            Piece::Q => {
                src.push_str("%q");
                stopped |= !v.session;
            }
            Piece::Esc(c, pad) => {
                if *pad != 0 {
                    src.push_str(&format!("%{pad}{c}"));
                } else {
                    src.push_str(&format!("%{c}"));
                }
                if stopped {
                    continue;
                }
                let unknown = |s: &str| {
                    if s.is_empty() {
                        "[unknown]".to_string()
                    } else {
                        s.to_string()
                    }
                };
                let text = match c {
                    'a' if v.session => unknown(&v.app),
                    'u' if v.session => unknown(&v.user),
                    'd' if v.session => unknown(&v.db),
                    'a' | 'u' | 'd' | 'r' | 'h' | 'i' if !v.session => String::new(),
                    'r' | 'h' | 'L' => v.host.clone(),
                    'i' => v.tag.clone(),
                    'b' => "client backend".to_string(),
                    'p' => v.pid.to_string(),
                    'P' => String::new(),
                    't' => "2026-11-26 17:35:07 CEST".to_string(),
                    'm' => "2026-11-26 17:35:07.123 -03".to_string(),
                    'n' => "1764178507.123".to_string(),
                    'e' => "22012".to_string(),
                    'c' => "6745f1.4d".to_string(),
                    'l' => "12".to_string(),
                    'v' => "3/14".to_string(),
                    'x' => "0".to_string(),
                    'Q' => "-4242".to_string(),
                    _ => String::new(),
                };
                let w = pad.unsigned_abs() as usize;
                if *pad > 0 {
                    out.push_str(&format!("{text:>w$}"));
                } else if *pad < 0 {
                    out.push_str(&format!("{text:<w$}"));
                } else {
                    out.push_str(&text);
                }
            }
        }
    }
    (src, out)
}

/// The value `%c` must read back as; `None` when it cannot be told (a padded copy of a
/// value with edge spaces: padding is spaces too).
fn expect_name(pieces: &[Piece], c: char, v: &Values, s: &str) -> Option<Option<String>> {
    let pads: Vec<i32> = pieces
        .iter()
        .filter_map(|p| match p {
            Piece::Esc(x, pad) if *x == c => Some(*pad),
            _ => None,
        })
        .collect();
    if pads.is_empty() || !v.session || s.is_empty() || s == "[unknown]" {
        return Some(None);
    }
    if pads.iter().any(|p| *p != 0) && s.trim_matches(' ') != s {
        return None;
    }
    Some((s != "[unknown]").then(|| s.to_string()))
}

fn before_q(pieces: &[Piece], c: char) -> bool {
    pieces
        .iter()
        .take_while(|p| !matches!(p, Piece::Q))
        .any(|p| matches!(p, Piece::Esc(x, _) if *x == c))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn a_written_line_reads_back_exactly_or_flagged(
        pieces in proptest::collection::vec(piece(), 0..9),
        v in values(),
    ) {
        let (src, prefix) = render(&pieces, &v);
        let line = format!("{prefix}{}:  {}", v.severity, v.message);
        let p = Prefix::compile(&src);
        let mut r = Record::default();
        let body = p.parse_line(line.as_bytes(), &mut r);
        prop_assert!(body.is_some(), "{src:?} did not read {line:?}");
        let body = body.expect("checked");
        if r.ambiguous {
            return Ok(());
        }
        prop_assert_eq!(body.label, Some(v.severity), "{:?} {:?}", src, line);
        prop_assert_eq!(String::from_utf8_lossy(body.text).into_owned(), v.message.clone());
        for (c, got, val) in [
            ('a', &r.application_name, &v.app),
            ('u', &r.user, &v.user),
            ('d', &r.database, &v.db),
        ] {
            if let Some(want) = expect_name(&pieces, c, &v, val) {
                prop_assert_eq!(got, &want, "%{} in {:?}: {:?}", c, src, line);
            }
        }
        let has = |c: char| pieces.iter().any(|p| matches!(p, Piece::Esc(x, _) if *x == c));
        if has('p') && (v.session || before_q(&pieces, 'p')) {
            prop_assert_eq!(r.pid, Some(i64::from(v.pid)), "{:?} {:?}", src, line);
        }
        if has('e') && (v.session || before_q(&pieces, 'e')) {
            prop_assert_eq!(r.sqlstate.as_deref(), Some("22012"));
        }
    }
}
