use super::*;

fn find(text: &str) -> Option<(String, &'static str, Vec<String>)> {
    let langs = Languages::default();
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
