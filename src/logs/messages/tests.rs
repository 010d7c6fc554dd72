use super::*;

fn find(text: &str) -> Option<(String, &'static str, Vec<String>)> {
    let langs = Languages::default();
    // A German server says so in lc_messages; its ASCII-only messages are found by it.
    langs.prefer_locale("de_DE.UTF-8");
    langs.find(text).map(|f| {
        (
            f.message.template().to_string(),
            f.language(),
            f.arg_texts(text).into_iter().map(str::to_string).collect(),
        )
    })
}

#[test]
fn english_messages_are_found_with_their_arguments() {
    let (t, lang, args) = find("relation \"orders\" does not exist").unwrap();
    assert_eq!((t.as_str(), lang), ("relation \"%s\" does not exist", "en"));
    assert_eq!(args, ["orders"]);
    let (t, _, args) =
        find("duplicate key value violates unique constraint \"orders_pkey\"").unwrap();
    assert_eq!(t, "duplicate key value violates unique constraint \"%s\"");
    assert_eq!(args, ["orders_pkey"]);
    let (t, _, args) =
        find("process 4242 still waiting for ShareLock on transaction 731 after 1000.072 ms")
            .unwrap();
    assert_eq!(t, "process %d still waiting for %s on %s after %ld.%03d ms");
    assert_eq!(
        args,
        ["4242", "ShareLock", "transaction 731", "1000", "072"]
    );
    // The most specific of the templates sharing a head.
    let (t, _, args) =
        find("connection authorized: user=app database=shop application_name=psql").unwrap();
    assert_eq!(
        t,
        "connection authorized: user=%s database=%s application_name=%s"
    );
    assert_eq!(args, ["app", "shop", "psql"]);
    // A template that starts with a conversion, found by its end.
    let (t, _, args) = find("\"orders\" is not a view").unwrap();
    assert_eq!(t, "\"%s\" is not a view");
    assert_eq!(args, ["orders"]);
    // Neither head nor tail: tried when nothing else matched.
    let (t, _, args) = find("syntax error at or near \"selec\"").unwrap();
    assert_eq!(t, "%s at or near \"%s\"");
    assert_eq!(args, ["syntax error", "selec"]);
    let (t, _, args) = find("server process (PID 77) was terminated by signal 9: Killed").unwrap();
    assert_eq!(t, "%s (PID %d) was terminated by signal %d: %s");
    assert_eq!(args, ["server process", "77", "9", "Killed"]);
}

#[test]
fn translations_give_the_english_template_and_its_arguments_in_its_order() {
    let (t, lang, args) = find("Relation »orders« existiert nicht").unwrap();
    assert_eq!((t.as_str(), lang), ("relation \"%s\" does not exist", "de"));
    assert_eq!(args, ["orders"]);
    let (t, lang, args) = find(
        "Prozess 4242 wartet immer noch auf ShareLock-Sperre auf Transaktion 731 nach 1000,072 ms",
    )
    .unwrap();
    assert_eq!(lang, "de");
    assert_eq!(t, "process %d still waiting for %s on %s after %ld.%03d ms");
    assert_eq!(
        args,
        ["4242", "ShareLock", "Transaktion 731", "1000", "072"]
    );
}

#[test]
fn ids_are_stable_and_unknown_text_is_no_message() {
    let m = Message::of_template("relation \"%s\" does not exist").unwrap();
    // FNV-1a 64 of the template: a change of this value renames every message.
    assert_eq!(m.id().to_string().len(), 16);
    assert_eq!(
        Message::of_template("relation \"%s\" does not exist").map(Message::id),
        Some(m.id())
    );
    assert_eq!(find("my application said hello"), None);
    assert_eq!(find(""), None);
}

#[test]
fn labels_of_translated_servers_are_read_in_english() {
    for (word, english) in [
        ("ERROR", Some("ERROR")),
        ("FEHLER", Some("ERROR")),
        ("ANWEISUNG", Some("STATEMENT")),
        ("ZUSAMMENHANG", Some("CONTEXT")),
        ("ОШИБКА", Some("ERROR")),
        ("ПОДРОБНОСТИ", Some("DETAIL")),
        ("СООБЩЕНИЕ", Some("LOG")),
        ("エラー", None),
        ("Fehler", None),
    ] {
        assert_eq!(english_label(word), english, "{word}");
    }
}

#[test]
fn another_language_is_guessed_from_its_label_or_its_letters_only() {
    let langs = Languages::default();
    // ASCII, no label: the server's language is not known yet, so not looked for.
    let ascii_german = "Division durch Null";
    assert_eq!(langs.find(ascii_german), None);
    // Its label says German.
    let de = LANGS.iter().position(|l| l.name == "de");
    let f = langs.find_hinted(ascii_german, de).unwrap();
    assert_eq!(f.message.template(), "division by zero");
    // Letters outside ASCII: every language is tried, and the one found is kept.
    let langs = Languages::default();
    let f = langs.find("отношение \"t\" не существует").unwrap();
    assert_eq!(
        (f.message.template(), f.language()),
        ("relation \"%s\" does not exist", "ru")
    );
    let f = langs.find("деление на ноль").unwrap();
    assert_eq!(f.language(), "ru");
    // Another locale name form.
    let langs = Languages::default();
    langs.prefer_locale("zh_CN.utf8");
    assert_eq!(langs.seen.load(Ordering::Relaxed).count_ones(), 1);
}
