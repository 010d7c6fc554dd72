//! `status`: the last status dump of a running agent, for a person.

use crate::cli::{EXIT_OK, EXIT_UNAVAILABLE};
use crate::config::Config;
use crate::status;

/// The running agent's status when the config file cannot be loaded now: the agent
/// keeps the configuration it last accepted (a reload of a broken file is rejected), so
/// its status is what the operator needs, with the file's problems as a line of it.
/// Without a status dump the config problem is the answer (exit 78).
pub fn status_despite(path: &std::path::Path, problem: &crate::config::ConfigError) -> i32 {
    let dir = crate::config::state_dir_hint(path);
    match status::read(&dir) {
        Ok(s) => {
            print!("{}", status::render(&s, chrono::Utc::now()));
            println!(
                "config    {} cannot be loaded now; the running agent keeps the configuration it last accepted (a reload would be rejected):\n          {}",
                path.display(),
                problem.to_string().replace('\n', "\n          ")
            );
            EXIT_OK
        }
        Err(_) => {
            eprintln!("postgres-agent: configuration error: {problem}");
            crate::cli::EXIT_CONFIG
        }
    }
}

/// Prints `<state_dir>/status.json`, saying how old it is.
pub fn status(config: &Config) -> i32 {
    match status::read(&config.agent.state_dir) {
        Ok(s) => {
            print!("{}", status::render(&s, chrono::Utc::now()));
            EXIT_OK
        }
        Err(e) => {
            eprintln!(
                "postgres-agent: {e}\nIs the agent running with this config (agent.state_dir)?"
            );
            EXIT_UNAVAILABLE
        }
    }
}
