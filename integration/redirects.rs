//! A listener that answers with a redirect: never followed, never an acknowledgement,
//! the offered location named (credentials masked) so the operator can fix the URL.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use crate::harness::agent::{bin, config, Agent, TOKEN};
use crate::harness::listener::{Listener, Mode, Received, REDIRECT_SECRET};
use crate::harness::pg::PgCluster;
use crate::harness::{shared_tempdir, wait_for};

#[test]
fn a_redirect_is_never_followed_and_acknowledges_nothing() {
    let pg = PgCluster::start("");
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    // A short breaker reset, so the redirects keep coming as probes.
    let toml = format!(
        "{}[breaker]\nreset_timeout_s = 1\n",
        config(dir.path(), &pg, &listener.url(), 1)
    );
    let agent = Agent::start(dir.path(), &toml, &[]);
    for code in [302, 307, 308, 301, 303] {
        listener.set_mode(Mode::Redirect(code));
        wait_for(
            &format!("two {code} answers"),
            Duration::from_secs(30),
            || {
                let n = listener
                    .received()
                    .iter()
                    .filter(|r| r.status == code)
                    .count();
                (n >= 2).then_some(())
            },
        );
    }
    let received = listener.received();
    // Nothing went to the offered location: no GET without a body (302/303), no
    // re-POST with the events and the token to another place (307/308).
    let elsewhere: Vec<&Received> = received
        .iter()
        .filter(|r| r.path != "/ingest/postgres")
        .collect();
    assert!(elsewhere.is_empty(), "followed a redirect: {elsewhere:?}");
    let redirected: BTreeSet<String> = received
        .iter()
        .filter(|r| (300..400).contains(&r.status))
        .flat_map(|r| r.event_ids())
        .collect();
    assert!(!redirected.is_empty());

    // The operator is told where it pointed, without the credentials in it.
    let st = agent.status();
    let last = st["children"]["shipper"]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        last.contains("redirecting to \"http://***@127.0.0.1:") && last.contains("not followed"),
        "{st}"
    );
    let out = Command::new(bin())
        .args(["check", "-c"])
        .arg(&agent.config_path)
        .output()
        .expect("check");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(69), "{text}");
    assert!(
        text.contains("redirecting to \"http://***@127.0.0.1:")
            && text.contains("never follows a redirect"),
        "{text}"
    );
    for shown in [text, agent.stderr(), st.to_string()] {
        assert!(
            !shown.contains(REDIRECT_SECRET),
            "a credential of the Location was shown"
        );
    }

    // Once the listener answers properly, every redirected event arrives: none was
    // deleted on the strength of a redirect.
    listener.set_mode(Mode::Ok);
    wait_for(
        "the redirected events delivered",
        Duration::from_secs(30),
        || {
            let accepted: BTreeSet<String> = listener
                .received()
                .iter()
                .filter(|r| r.status == 200)
                .flat_map(|r| r.event_ids())
                .collect();
            redirected.is_subset(&accepted).then_some(())
        },
    );
}
