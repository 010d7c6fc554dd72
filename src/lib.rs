//! postgres-agent: a daemon that watches a PostgreSQL server and its host and ships what
//! it sees to a central listener, so that slow queries, lock pile-ups and errors can be
//! tied to the web requests that caused them.
//!
//! A map of the crate (ARCHITECTURE.md has the longer version):
//!
//! - [`config`] reads the TOML file and environment overrides in two stages and enforces
//!   the safety limits.
//! - [`model`] owns every type that crosses an actor boundary: events, batches, health
//!   reports, and the [`model::Route`] through which senders reach a child that may have
//!   been restarted.
//! - [`supervisor`] starts every child on its own arbiter (thread), notices children that
//!   panicked, stopped or hung, and restarts them under a [`supervisor::RestartPolicy`].
//! - [`collector`] runs one source per actor on a schedule; [`sources`] holds the sources
//!   themselves (SQL and row mapping), [`db`] the connection pool with its limits.
//! - [`spool`] (`[buffer]` in the config) is the SQLite spool: every event is on disk before it is shipped.
//! - [`shipper`] POSTs batches to the listener and acknowledges them back to the spool.
//! - [`state_dir`] keeps the spool and status private (0700/0600 whatever the umask).
//! - [`status`] is the snapshot written on SIGUSR1; [`signals`] and [`systemd`] connect the
//!   process to its service manager.
//! - [`sql`] reads SQL text as PostgreSQL's scanner does: the one lexer behind redaction,
//!   correlation comments, fingerprints and the statement in front of a plan.
//! - [`commands`] implements the CLI subcommands on top of all of the above.

#![deny(missing_docs)]

pub mod access;
pub mod backoff;
pub mod base;
pub mod board;
pub mod catalogue;
pub mod cli;
pub mod collector;
pub mod commands;
pub mod config;
pub mod correlation;
pub mod db;
pub mod fault;
pub mod fingerprint;
pub mod logging;
pub mod logs;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod shipper;
pub mod signals;
pub mod sources;
pub mod spool;
pub mod sql;
pub mod state_dir;
pub mod status;
pub mod supervisor;
pub mod systemd;
pub mod thread;

/// The agent's version, as sent to the listener.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
