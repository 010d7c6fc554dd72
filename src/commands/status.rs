//! `status`: the last status dump of a running agent, for a person.

use crate::cli::{EXIT_OK, EXIT_UNAVAILABLE};
use crate::config::Config;
use crate::status;

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
