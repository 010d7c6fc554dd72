//! Integration tests against the real thing: a throwaway PostgreSQL cluster per test,
//! a real HTTP listener on 127.0.0.1:0, and the real binary driven by real signals.

mod harness;

mod activity;
mod cli;
mod connection_cap;
mod custom;
mod dashboards;
mod delivery;
mod delivery_policy;
mod exporter;
mod fleet;
mod health;
mod locks;
mod log_language;
mod log_prefixes;
mod logs;
mod metrics;
mod not_utf8;
mod otlp;
mod plans;
mod plans_agent;
mod privileges;
mod project;
mod redirects;
mod sampler;
mod signals;
mod spool_files;
mod sql_text;
mod statements;
mod supervision;
mod syslog;
mod system;
mod tls;
