//! Configuration: defaults, limits, every problem at once, secrets never shown, the
//! file strict and the environment as text.

use super::*;

fn keys(text: &str) -> Vec<String> {
    parse_str(text)
        .expect_err("config should be refused")
        .into_iter()
        .map(|p| p.key)
        .collect()
}

#[test]
fn minimal_config_gets_defaults() {
    let c = parse_str("[agent]\nproject_id = \"p\"\n").expect("valid");
    assert_eq!(c.database.pool_max_size, 4);
    assert_eq!(
        c.collection.sample_interval,
        Some(Duration::from_millis(1000))
    );
    assert_eq!(c.database.statement_timeout, Duration::from_millis(5000));
    assert_eq!(c.collection.interval, Duration::from_secs(60));
    assert_eq!(c.collection.activity_interval, Duration::from_secs(60));
    assert_eq!(c.listener.batch_max_events, 500);
    assert_eq!(c.buffer.max_bytes, 104_857_600);
    assert_eq!(c.breaker.fail_max, 5);
    assert!(c.listener.token.is_empty());
}

#[test]
fn session_sampling_is_refused_below_100_ms_and_counts_against_the_pool() {
    let at = |ms: &str| {
        parse_str(&format!(
            "[agent]\nproject_id='p'\n[collection]\nsample_interval_ms = {ms}\n"
        ))
    };
    assert_eq!(at("0").expect("off").collection.sample_interval, None);
    assert_eq!(
        at("100").expect("valid").collection.sample_interval,
        Some(Duration::from_millis(100))
    );
    assert_eq!(
        keys("[agent]\nproject_id='p'\n[collection]\nsample_interval_ms = 99\n"),
        ["collection.sample_interval_ms"]
    );
    // The sources share the connections: one is enough for all of them (they wait
    // their turn), so no pool size is refused for the number of sources.
    assert!(parse_str("[agent]\nproject_id='p'\n[database]\npool_max_size = 1\n").is_ok());
}

#[test]
fn every_problem_is_reported_at_once() {
    let k = keys(
        "[agent]\nbogus = 1\n[database]\npool_max_size = 6\nstatement_timeout_ms = 999\nport = \"x\"\n\
         [collection]\ninterval_s = 0\n[correlation]\napplication_name_pattern = '^(x)$'\n\
         [listener]\ncompression = \"brotli\"\n[nosuch]\na = 1\n",
    );
    assert_eq!(
        k,
        vec![
            "nosuch",
            "agent.bogus",
            "agent.project_id",
            "database.statement_timeout_ms",
            "database.port",
            "database.pool_max_size",
            "collection.interval_s",
            "correlation.application_name_pattern",
            "listener.compression",
        ]
    );
}

#[test]
fn safety_limits_are_enforced_at_the_edges() {
    let ok = parse_str(
        "[agent]\nproject_id=\"p\"\n[database]\npool_max_size=5\nstatement_timeout_ms=1000\n[collection]\ninterval_s=3600\n",
    )
    .expect("limits themselves are allowed");
    assert_eq!(ok.database.pool_max_size, 5);
    assert_eq!(ok.database.lock_timeout, Duration::from_millis(1000));
    assert_eq!(
        keys("[agent]\nproject_id=\"p\"\n[collection]\ninterval_s=3601\n"),
        vec!["collection.interval_s"]
    );
}

#[test]
fn token_file_is_read_and_never_printed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("token");
    std::fs::write(&f, "s3cret-token\n").expect("write");
    let c = parse_str(&format!(
        "[agent]\nproject_id=\"p\"\n[listener]\ntoken_file={:?}\n",
        f.display().to_string()
    ))
    .expect("valid");
    assert_eq!(c.listener.token.expose(), "s3cret-token");
    assert!(!format!("{c:?}").contains("s3cret"));
}

fn problems(text: &str) -> String {
    parse_str(text)
        .expect_err("config should be refused")
        .iter()
        .map(|p| format!("{}: {}\n", p.key, p.problem))
        .collect()
}

#[test]
fn no_error_echoes_a_secret_or_the_text_around_it() {
    // A token of the wrong type.
    let p = problems("[agent]\nproject_id=\"p\"\n[listener]\ntoken = 987654321123\n");
    assert!(
        p.contains("listener.token: wrong type: expected a string, found an integer"),
        "{p}"
    );
    assert!(!p.contains("987654321123"), "{p}");
    // An unterminated string: the line is named, its text is not repeated.
    let p = problems("[agent]\nproject_id=\"p\"\n[listener]\ntoken = \"s3cret-unterminated\nurl = \"http://x:8080/\"\n");
    assert!(p.contains("not valid TOML at line 4"), "{p}");
    assert!(!p.contains("s3cret"), "{p}");
    // A secret in a key the structure does not expect.
    let p = problems("listener = \"s3cret-as-section\"\n");
    assert!(!p.contains("s3cret"), "{p}");
    // Credentials in the listener URL are masked.
    let p = problems("[agent]\nproject_id=\"p\"\n[listener]\nurl = \"ftp://u:s3cret-pw@h/x\"\n");
    assert!(p.contains("ftp://***@h/x"), "{p}");
    assert!(!p.contains("s3cret"), "{p}");
    // A token an HTTP header cannot carry.
    let p = problems("[agent]\nproject_id=\"p\"\n[listener]\ntoken = \"ab cd\"\n");
    assert!(p.contains("listener.token: holds spaces"), "{p}");
    assert!(!p.contains("ab cd"), "{p}");
}

#[test]
fn values_in_the_file_have_their_type_but_the_environment_is_text() {
    let p = problems(
        "[agent]\nproject_id=\"p\"\n[collection]\ninterval_s = \"1\"\nactivity = \"true\"\n",
    );
    assert!(
        p.contains("collection.interval_s: wrong type: expected an integer, found a string"),
        "{p}"
    );
    assert!(
        p.contains("collection.activity: wrong type: expected a boolean, found a string"),
        "{p}"
    );
    let mut tree = file_tree("[agent]\nproject_id=\"p\"\n").expect("toml");
    let vars = [
        ("POSTGRES_AGENT__COLLECTION__INTERVAL_S", "7"),
        ("POSTGRES_AGENT__COLLECTION__ACTIVITY", "false"),
        ("POSTGRES_AGENT__LISTENER__TOKEN", "12345"),
        ("OTHER", "x"),
    ]
    .map(|(k, v)| (k.into(), v.into()));
    let mut from_env = std::collections::BTreeMap::new();
    env_overrides(&mut tree, vars.into_iter(), &mut from_env).expect("env");
    assert_eq!(
        from_env.get("collection.interval_s").map(String::as_str),
        Some("POSTGRES_AGENT__COLLECTION__INTERVAL_S")
    );
    let c = finish(tree).expect("valid");
    assert_eq!(c.collection.interval, Duration::from_secs(7));
    assert!(!c.collection.activity);
    assert_eq!(
        c.listener.token.expose(),
        "12345",
        "a numeric token from the environment is text"
    );
    let mut tree = file_tree("").expect("toml");
    let bad = [("POSTGRES_AGENT__NOSECTION", "1")].map(|(k, v)| (k.into(), v.into()));
    assert!(env_overrides(&mut tree, bad.into_iter(), &mut from_env).is_err());

    // A bad value from the environment is named by its variable, not put in the file.
    let mut tree = file_tree("[agent]\nproject_id=\"p\"\n").expect("toml");
    let mut from_env = std::collections::BTreeMap::new();
    let vars = [("POSTGRES_AGENT__DATABASE__PORT", "abc")].map(|(k, v)| (k.into(), v.into()));
    env_overrides(&mut tree, vars.into_iter(), &mut from_env).expect("env");
    let e = ConfigError {
        path: "agent.toml".into(),
        problems: finish(tree).expect_err("port is not a number"),
        from_env,
    };
    let text = e.to_string();
    assert!(
        text.starts_with("1 problem(s) in the environment:\n  database.port (environment variable POSTGRES_AGENT__DATABASE__PORT): "),
        "{text}"
    );
    assert!(
        !text.contains("agent.toml") && !text.contains("abc"),
        "{text}"
    );
}

#[test]
fn secret_files_hold_the_secret_alone_on_the_first_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = |key: &str, section: &str, f: &std::path::Path| {
        format!(
            "[agent]\nproject_id=\"p\"\n[{section}]\n{key}={:?}\n",
            f.display().to_string()
        )
    };
    let two = dir.path().join("two");
    std::fs::write(&two, "tok-1\ntok-2\n").expect("write");
    let p = problems(&conf("token_file", "listener", &two));
    assert!(
        p.contains("listener.token_file:") && p.contains("1 more non-empty line"),
        "{p}"
    );
    assert!(!p.contains("tok-1"), "{p}");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "pw-line\r\n\n").expect("write");
    let c = parse_str(&conf("password_file", "database", &pw)).expect("valid");
    assert_eq!(
        c.database.password.as_ref().map(|s| s.expose()),
        Some("pw-line")
    );
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\nsecret-on-line-2\n").expect("write");
    let p = problems(&conf("password_file", "database", &empty));
    assert!(p.contains("the first line is empty"), "{p}");
    assert!(!p.contains("secret-on-line-2"), "{p}");
}

#[test]
fn an_unknown_redact_value_is_refused() {
    assert_eq!(
        keys("[agent]\nproject_id=\"p\"\n[logs]\nredact = \"all\"\n"),
        vec!["logs.redact"]
    );
    // The database's texts have no bind parameters: literals or nothing.
    assert_eq!(
        keys("[agent]\nproject_id=\"p\"\n[collection]\nredact = \"parameters\"\n"),
        vec!["collection.redact"]
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 500, .. Default::default() })]

    /// Any text, broken any way: no panic, and the secret written in it never shows
    /// in a problem (the token, in any key or shape).
    #[test]
    fn any_text_loads_or_is_refused_without_showing_the_secret(
        pieces in proptest::collection::vec(proptest::sample::select(vec![
            "[agent]\n", "project_id = \"p\"\n", "[listener]\n", "token = ", "\"SECRETX",
            "SECRETX", "'SECRETX'", "\"\n", "\n", "= ", "[", "]", "url = \"http://u:SECRETX@h/\"\n",
            "interval_s = ", "1", "\"1\"", "[collection]\n", "{", "}", "SECRETX = 1\n",
            "token_file = \"/nonexistent/SECRETX\"\n", "\\", "\u{0}", "é", "#",
        ]), 0..16),
    ) {
        let text = pieces.concat();
        if let Err(problems) = parse_str(&text) {
            for p in problems {
                // A key name may be the secret's text itself (an unknown key
                // `SECRETX`): keys are named, values never.
                let shown = p.problem.replace("/nonexistent/SECRETX", "");
                proptest::prop_assert!(!shown.contains("SECRETX"), "{text:?}: {}: {}", p.key, p.problem);
            }
        }
    }
}

#[test]
fn default_pattern_extracts_the_id() {
    let c = parse_str("[agent]\nproject_id=\"p\"\n").expect("valid");
    let caps = c
        .correlation
        .application_name_pattern
        .captures("bitville-0f1c2b7e-0d3a-4c55-9a8e-1b2c3d4e5f60")
        .expect("matches");
    assert_eq!(&caps["id"], "0f1c2b7e-0d3a-4c55-9a8e-1b2c3d4e5f60");
}

#[test]
fn otlp_is_off_by_default_and_its_endpoint_gets_the_logs_path() {
    let base = "[agent]\nproject_id = \"p\"\n";
    let c = parse_str(base).expect("valid");
    assert_eq!(c.otlp.url, None);
    assert_eq!(c.outputs(), [crate::model::Output::Listener]);
    for (endpoint, url) in [
        ("http://collector:4318", "http://collector:4318/v1/logs"),
        ("http://collector:4318/", "http://collector:4318/v1/logs"),
        (
            "https://c.example/otlp/v1/logs",
            "https://c.example/otlp/v1/logs",
        ),
        ("https://c.example/otlp", "https://c.example/otlp/v1/logs"),
        // The path goes on the path, not after the query.
        ("http://h/?api_key=S", "http://h/v1/logs?api_key=S"),
        ("http://h/otlp?k=v&x=y#f", "http://h/otlp/v1/logs?k=v&x=y"),
        ("http://h/v1/logs/?k=v", "http://h/v1/logs?k=v"),
    ] {
        let c = parse_str(&format!("{base}[otlp]\nendpoint = \"{endpoint}\"\n")).expect("valid");
        assert_eq!(c.otlp.url.as_deref(), Some(url));
        assert_eq!(
            c.outputs(),
            [crate::model::Output::Listener, crate::model::Output::Otlp]
        );
        assert_eq!(c.otlp.service_name, "postgresql");
        assert_eq!(c.otlp.delivery.batch_max_events, 500);
    }
    // The listener off, OTLP on.
    let c = parse_str(&format!(
        "{base}[listener]\nurl = \"\"\n[otlp]\nendpoint = \"http://c:4318\"\n"
    ))
    .expect("valid");
    assert_eq!(c.outputs(), [crate::model::Output::Otlp]);
}

#[test]
fn nowhere_to_send_and_bad_otlp_settings_are_refused_by_name() {
    let base = "[agent]\nproject_id = \"p\"\n";
    assert_eq!(
        keys(&format!("{base}[listener]\nurl = \"\"\n")),
        ["listener.url"]
    );
    let p = problems(&format!(
        "{base}[otlp]\nendpoint = \"collector:4318\"\nbatch_max_events = 0\ncompression = \"zstd\"\nservice_name = \" \"\nfoo = 1\n"
    ));
    for key in [
        "otlp.endpoint",
        "otlp.batch_max_events",
        "otlp.compression",
        "otlp.service_name",
        "otlp.foo",
    ] {
        assert!(p.contains(&format!("{key}: ")), "{key} not named in:\n{p}");
    }
    let p = problems(&format!(
        "{base}[otlp]\nendpoint = \"http://c:4318\"\nheaders = {{ \"bad name\" = \"x\", \"Content-Type\" = \"y\", authorization = \"Bearer s3cret\\n\" }}\n"
    ));
    assert!(p.contains("\"bad name\" is not an HTTP header name"), "{p}");
    assert!(
        p.contains("\"Content-Type\" is set by the agent itself"),
        "{p}"
    );
    assert!(
        p.contains("the value of \"authorization\" holds control characters"),
        "{p}"
    );
    assert!(!p.contains("s3cret"), "{p}");
}

#[test]
fn otlp_headers_come_from_the_file_too_and_are_never_shown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("headers");
    std::fs::write(
        &file,
        "# for the collector\nAuthorization: Bearer s3cret\n\nX-Scope-OrgID: t1\n",
    )
    .expect("write");
    let c = parse_str(&format!(
        "[agent]\nproject_id = \"p\"\n[otlp]\nendpoint = \"http://c:4318\"\nheaders_file = \"{}\"\nheaders = {{ dd-api-key = \"k\" }}\n",
        file.display()
    ))
    .expect("valid");
    let names: Vec<&str> = c.otlp.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["dd-api-key", "Authorization", "X-Scope-OrgID"]);
    assert_eq!(c.otlp.headers[1].1.expose(), "Bearer s3cret");
    assert!(!format!("{c:?}").contains("s3cret"));
    // Twice (file and table) is refused; a line without a colon names its number.
    std::fs::write(&file, "dd-api-key: k2\nnonsense\n").expect("write");
    let p = problems(&format!(
        "[agent]\nproject_id = \"p\"\n[otlp]\nendpoint = \"http://c:4318\"\nheaders_file = \"{}\"\nheaders = {{ dd-api-key = \"k\" }}\n",
        file.display()
    ));
    assert!(p.contains("line 1 is given twice"), "{p}");
    assert!(p.contains("line 2: expected \"Name: value\""), "{p}");
    assert!(!p.contains("k2"), "{p}");
    // A secret written where the name goes (no colon after the name, one later) is
    // named by its line only.
    std::fs::write(
        &file,
        "Authorization Bearer S3CR:ET
X-Ok: 1
Bad Name: v4lue
",
    )
    .expect("write");
    let p = problems(&format!(
        "[agent]\nproject_id = \"p\"\n[otlp]\nendpoint = \"http://c:4318\"\nheaders_file = \"{}\"\n",
        file.display()
    ));
    assert!(
        p.contains("line 1: the name is not an HTTP header name"),
        "{p}"
    );
    assert!(
        p.contains("line 3: the name is not an HTTP header name"),
        "{p}"
    );
    for secret in ["S3CR", "Bearer", "Bad Name", "v4lue"] {
        assert!(!p.contains(secret), "{secret}: {p}");
    }
}

/// `section.key` of every key in a TOML or JSON tree of sections.
fn keys_of(tree: &serde_json::Value) -> std::collections::BTreeSet<String> {
    let mut keys = std::collections::BTreeSet::new();
    for (section, table) in tree.as_object().expect("sections") {
        for key in table.as_object().expect("a table").keys() {
            keys.insert(format!("{section}.{key}"));
        }
    }
    keys
}

#[test]
fn every_key_is_read_by_validation_and_shown_in_conf_agent_toml() {
    // The keys the binary knows (the raw structs), the keys validation settles, and the
    // keys of the documented example must be the same set.
    let known = raw::RawConfig::known_keys();
    let (_, settled) = validate::validate_settled(raw::RawConfig::default());
    let settled: std::collections::BTreeSet<String> = settled.into_keys().collect();
    assert_eq!(
        known, settled,
        "keys known but not validated, or the reverse"
    );
    let conf = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/agent.toml"))
        .expect("conf/agent.toml");
    let documented: toml::Table = conf.parse().expect("conf/agent.toml is TOML");
    let mut documented = keys_of(&serde_json::to_value(documented).expect("json"));
    // A key shown commented out (`# token_file = …`: it would change a default that
    // follows another key, or exclude one that is set) is documented too.
    let mut section = String::new();
    for line in conf.lines() {
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
        } else if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim_start();
            // The commented `[[servers]]` example: its sections are the top-level ones'.
            if let Some(s) = rest.strip_prefix('[').filter(|s| s.ends_with(']')) {
                section = s.trim_matches(|c| c == '[' || c == ']').to_string();
                continue;
            }
            if let Some((key, _)) = rest.split_once(" = ") {
                if !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    if section == "custom" {
                        assert!(raw::CUSTOM_KEYS.contains(&key), "[[custom]] example: {key}");
                        continue;
                    }
                    match section.strip_prefix("servers") {
                        Some("") => assert!(["name", "project_id"].contains(&key), "servers.{key}"),
                        Some(inner) => {
                            let inner = inner.trim_start_matches('.');
                            let key = format!("{inner}.{key}");
                            assert!(known.contains(&key), "[[servers]] example: {key}");
                        }
                        None => {
                            documented.insert(format!("{section}.{key}"));
                        }
                    }
                }
            }
        }
    }
    let missing: Vec<&String> = known.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "in the binary, not in conf/agent.toml: {missing:?}"
    );
    let extra: Vec<&String> = documented.difference(&known).collect();
    assert!(
        extra.is_empty(),
        "in conf/agent.toml, unknown to the binary: {extra:?}"
    );
}

#[test]
fn servers_start_from_the_top_level_sections_and_override_them_key_by_key() {
    let c = parse_str(
        "[agent]\nproject_id = 'p'\nhostname = 'agent1'\n\
         [database]\nuser = 'watcher'\npool_max_size = 2\n\
         [collection]\ninterval_s = 30\n\
         [[servers]]\nname = 'orders'\n[servers.database]\nhost = '/run/pg-orders'\nport = 5433\n\
         [[servers]]\nname = 'billing.eu-1'\nproject_id = 'billing'\n\
         [servers.database]\nhost = '127.0.0.1'\npool_max_size = 1\n\
         [servers.collection]\nstatements = false\n[servers.logs]\npath = '/var/log/billing'\n",
    )
    .expect("valid");
    let names: Vec<Option<&str>> = c.servers.iter().map(|s| s.name.as_deref()).collect();
    assert_eq!(names, [Some("orders"), Some("billing.eu-1")]);
    let (orders, billing) = (&c.servers[0], &c.servers[1]);
    assert_eq!(orders.database.user, "watcher");
    assert_eq!(orders.database.port, 5433);
    assert_eq!(orders.database.pool_max_size, 2);
    assert_eq!(orders.project_id, "p");
    assert!(orders.collection.statements);
    assert_eq!(orders.collection.interval, Duration::from_secs(30));
    assert_eq!(billing.database.user, "watcher");
    assert_eq!(billing.database.pool_max_size, 1);
    assert!(!billing.collection.statements);
    assert_eq!(billing.collection.interval, Duration::from_secs(30));
    assert_eq!(billing.logs.path, "/var/log/billing");
    assert_eq!(billing.project_id, "billing");
    assert_eq!(c.projects(), [("billing.eu-1".into(), "billing".into())]);
    // Each server's view: its sections, its name on its events, its own event ids.
    let view = c.view(billing);
    assert_eq!(view.database.pool_max_size, 1);
    assert_eq!(view.server_name(), "billing.eu-1");
    assert_eq!(view.id_host(), "agent1/billing.eu-1");
    assert_eq!(view.agent.project_id, "billing");
    // The single-server form: the host's name, ids as before.
    let single = parse_str("[agent]\nproject_id='p'\nhostname='agent1'\n").expect("valid");
    assert_eq!(single.servers.len(), 1);
    assert_eq!(single.server_name(), "agent1");
    assert_eq!(single.id_host(), "agent1");
}

#[test]
fn a_server_on_another_host_has_no_host_metrics_and_no_log_unless_a_path_is_given() {
    // 192.0.2.0/24 is TEST-NET-1: never this host's.
    let c = parse_str(
        "[agent]\nproject_id = 'p'\n[collection]\nsystem = true\n\
         [[servers]]\nname = 'here'\n\
         [[servers]]\nname = 'there'\n[servers.database]\nhost = '192.0.2.7'\n\
         [[servers]]\nname = 'mounted'\n[servers.database]\nhost = '192.0.2.8'\n\
         [servers.logs]\npath = '/mnt/pglog'\n",
    )
    .expect("valid");
    let [here, there, mounted] = &c.servers[..] else {
        panic!("three servers");
    };
    assert!(here.local && here.collection.system && here.collection.logs);
    assert!(!there.local && !there.collection.system && !there.collection.logs);
    assert!(!mounted.collection.system && mounted.collection.logs);
}

#[test]
fn server_entries_are_checked_each_under_its_name() {
    let k = keys(
        "[agent]\nproject_id = 'p'\n\
         [[servers]]\nname = 'a'\n[servers.database]\npool_max_size = 9\nbogus = 1\n\
         [[servers]]\nname = 'a'\n\
         [[servers]]\nname = 'x/y'\n\
         [[servers]]\nport = 5432\n\
         [[servers]]\nname = 'b'\nnosuch = 1\nproject_id = ''\n",
    );
    assert_eq!(
        k,
        [
            "servers.a.database.bogus",
            "servers.a.database.pool_max_size",
            "servers[1].name",
            "servers[2].name",
            "servers[3].name",
            "servers.b.nosuch",
            "servers.b.project_id",
        ]
    );
    assert_eq!(
        keys("servers = []\n[agent]\nproject_id = 'p'\n"),
        ["servers"]
    );
    assert_eq!(
        keys("servers = [1]\n[agent]\nproject_id = 'p'\n"),
        ["servers[0]"]
    );
}

#[test]
fn this_host_is_a_socket_loopback_or_an_address_it_can_bind() {
    assert_eq!(is_this_host("/var/run/postgresql", 5432), Some(true));
    assert_eq!(is_this_host("127.0.0.1", 5432), Some(true));
    assert_eq!(is_this_host("::1", 5432), Some(true));
    // TEST-NET-1: never this machine's.
    assert_eq!(is_this_host("192.0.2.1", 5432), Some(false));
    assert_eq!(is_this_host("no-such-host.invalid", 5432), None);
}

#[test]
fn a_syslog_server_needs_a_receiver_an_own_ident_and_tls_its_certificate() {
    let base = "[agent]\nproject_id = 'p'\n";
    assert_eq!(
        keys(&format!("{base}[logs]\nsyslog_ident = 'postgres'\n")),
        ["logs.syslog_ident"]
    );
    assert_eq!(
        keys(&format!(
            "{base}[syslog]\nlisten = '127.0.0.1:5514'\n\
             [[servers]]\nname = 'a'\n[servers.logs]\nsyslog_ident = 'pg'\n\
             [[servers]]\nname = 'b'\n[servers.logs]\nsyslog_ident = 'pg'\n"
        )),
        ["servers.b.logs.syslog_ident"]
    );
    // Told apart by host: fine.
    assert!(parse_str(&format!(
        "{base}[syslog]\nlisten = '127.0.0.1:5514'\n\
         [[servers]]\nname = 'a'\n[servers.logs]\nsyslog_ident = 'pg'\nsyslog_host = 'h1'\n\
         [[servers]]\nname = 'b'\n[servers.logs]\nsyslog_ident = 'pg'\nsyslog_host = 'h2'\n"
    ))
    .is_ok());
    assert_eq!(
        keys(&format!("{base}[syslog]\nlisten_tls = '127.0.0.1:6514'\n")),
        ["syslog.listen_tls"]
    );
    assert_eq!(
        keys(&format!(
            "{base}[syslog]\ntls_cert = '/x'\ntls_key = '/y'\n"
        )),
        ["syslog.tls_cert"]
    );
    assert_eq!(
        keys(&format!(
            "{base}[syslog]\nlisten_tls = '127.0.0.1:6514'\ntls_cert = '/nonexistent.crt'\ntls_key = '/nonexistent.key'\n"
        )),
        ["syslog.tls_cert"]
    );
    assert_eq!(
        keys(&format!("{base}[syslog]\nlisten = 'nope'\n")),
        ["syslog.listen"]
    );
    // A remote server whose log arrives by syslog keeps its log source on.
    let c = parse_str(&format!(
        "{base}[syslog]\nlisten = '127.0.0.1:5514'\n\
         [[servers]]\nname = 'far'\n[servers.database]\nhost = '192.0.2.9'\n[servers.logs]\nsyslog_ident = 'pg'\n"
    ))
    .expect("valid");
    assert!(c.servers[0].collection.logs && !c.servers[0].collection.system);
}

const CUSTOM: &str = "[agent]\nproject_id = 'p'\n[database]\nstatement_timeout_ms = 4000\n";

#[test]
fn a_custom_query_gets_its_defaults_and_every_key_is_known() {
    let c = parse_str(&format!(
        "{CUSTOM}[[custom]]\nname = \"slot_lag\"\nquery = \"select slot_name, 1 as lag from pg_replication_slots;\"\n"
    ))
    .expect("valid");
    let q = &c.custom[0];
    assert_eq!(
        q.query,
        "select slot_name, 1 as lag from pg_replication_slots"
    );
    assert_eq!(q.databases, CustomDatabases::Connected);
    assert_eq!((q.max_rows, q.timeout), (1000, Duration::from_millis(4000)));
    assert_eq!(q.interval, c.collection.interval);
    assert_eq!((q.min_server_version, q.max_server_version), (None, None));
    // Every key given once: none unknown.
    let all = format!(
        "{CUSTOM}[[custom]]\nname = \"a\"\nquery = \"select 1 as n, 'x' as l\"\ndatabases = [\"db1\", \"db2\"]\n\
         interval_s = 30\nmax_rows = 10\ntimeout_ms = 1000\nmin_server_version = 130000\nmax_server_version = 170000\n\
         labels = [\"l\"]\ngauges = [\"n\"]\ncounters = []\n"
    );
    for key in raw::CUSTOM_KEYS {
        assert!(all.contains(&format!("\n{key} = ")), "{key}");
    }
    let c = parse_str(&all).expect("valid");
    let q = &c.custom[0];
    assert_eq!(
        q.databases,
        CustomDatabases::List(vec!["db1".into(), "db2".into()])
    );
    assert_eq!(
        (q.min_server_version, q.max_server_version),
        (Some(130000), Some(170000))
    );
    assert_eq!(
        (q.labels.clone(), q.gauges.clone()),
        (vec!["l".to_string()], vec!["n".to_string()])
    );
    let star = parse_str(&format!(
        "{CUSTOM}[[custom]]\nname = \"b\"\nquery = \"table t\"\ndatabases = \"*\"\n"
    ))
    .expect("valid");
    assert_eq!(star.custom[0].databases, CustomDatabases::All);
}

#[test]
fn a_custom_query_that_could_write_is_refused_at_load_with_its_key_and_why() {
    let entry = |name: &str, query: &str| {
        format!("[[custom]]\nname = \"{name}\"\nquery = \"\"\"{query}\"\"\"\n")
    };
    let text = format!(
        "{CUSTOM}{}{}{}{}{}{}",
        entry("ins", "insert into t values (1)"),
        entry("del", "delete from t where a = 1 returning *"),
        entry("two", "select 1; select 2"),
        entry("lock", "select * from t for update"),
        entry("cp", "copy t to stdout"),
        entry(
            "cte",
            "with d as (delete from t returning *) select * from d"
        ),
    );
    let p = problems(&text);
    for line in [
        "custom.ins.query: refused: INSERT: only a query that reads may run",
        "custom.del.query: refused: DELETE: only a query that reads may run",
        "custom.two.query: refused: more than one statement",
        "custom.lock.query: refused: a locking clause (FOR UPDATE/SHARE)",
        "custom.cp.query: refused: COPY: only a query that reads may run",
        "custom.cte.query: refused: a data-modifying part",
    ] {
        assert!(p.contains(line), "{line}\n{p}");
    }
}

#[test]
fn custom_entries_are_checked_key_by_key() {
    let p = problems(&format!(
        "{CUSTOM}[[custom]]\nname = \"Bad-Name\"\nquery = \"select 1\"\n\
         [[custom]]\nname = \"ok\"\nquery = \"select 1\"\n\
         [[custom]]\nname = \"ok\"\nquery = \"select 1\"\n\
         [[custom]]\nname = \"slow\"\nquery = \"select 1\"\ntimeout_ms = 9000\nmax_rows = 0\n\
         databases = 5\nlabels = [\"a\"]\ngauges = [\"a\"]\nmin_server_version = 170000\nmax_server_version = 150000\ncolour = 1\n"
    ));
    for line in [
        "custom[0].name: \"Bad-Name\": lowercase letters, digits and '_' only",
        "custom[2].name: \"ok\" names another [[custom]] query too",
        "custom.slow.timeout_ms: 9000 is out of range 1000..=4000",
        "custom.slow.max_rows: 0 is out of range 1..=100000",
        "custom.slow.databases: expected \"connected\"",
        "custom.slow.gauges: \"a\" is listed twice",
        "custom.slow.max_server_version: 150000 is below min_server_version 170000",
        "custom.slow.colour: unknown key",
    ] {
        assert!(p.contains(line), "{line}\n{p}");
    }
}
