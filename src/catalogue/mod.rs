//! What the agent reports about itself, in one place: the `kind: agent` events it
//! ships ([`AgentEvent`]) and the stable names of the lines it writes to its own log
//! ([`LOG_EVENTS`]). Users build alerts and dashboards on these names, so they are
//! contracts: a test keeps this list, the code and the README's list in step.

mod agent;

pub use agent::AgentEvent;

/// The names of the agent events, as in `data.event`.
pub const AGENT_EVENTS: &[&str] = &[
    "agent_started",
    "child_restarted",
    "events_dropped",
    "events_evicted",
    "role_changed",
    "spool_corrupt_moved_aside",
    "spool_file_replaced",
];

/// One line the agent writes to its log: its `msg` and what it means.
#[derive(Debug, Clone, Copy)]
pub struct LogEvent {
    /// The stable name (`msg` in JSON lines).
    pub name: &'static str,
    /// What happened.
    pub meaning: &'static str,
}

const fn e(name: &'static str, meaning: &'static str) -> LogEvent {
    LogEvent { name, meaning }
}

/// Every name the agent logs under, by the part of the agent that logs it.
pub const LOG_EVENTS: &[LogEvent] = &[
    // The process and its supervisor.
    e("agent_started", "the daemon is up"),
    e("agent_stopped", "the daemon exits"),
    e("runtime_failed", "the async runtime could not start"),
    e(
        "state_dir_unusable",
        "the state directory cannot be created or written",
    ),
    e(
        "state_dir_permissions_tightened",
        "a state file or directory wider than 0700/0600 was tightened",
    ),
    e("panic", "a thread panicked (its child is restarted)"),
    e(
        "child_started",
        "a child (collector, log reader, spool, shipper) started",
    ),
    e(
        "child_down",
        "a child stopped, panicked or hung; restarted after a backoff",
    ),
    e(
        "supervisor_lost",
        "the supervisor itself failed; the process exits 1 for systemd to restart it",
    ),
    e(
        "metrics_listening",
        "the Prometheus endpoint (`[metrics] listen`) serves",
    ),
    e(
        "metrics_listen_failed",
        "the metrics address cannot be bound; the agent runs on without it and tries again every 10 s",
    ),
    e(
        "metrics_recovered",
        "the metrics address could be bound after failing",
    ),
    e(
        "syslog_listening",
        "the syslog receiver (`[syslog] listen`) takes messages over TCP and UDP",
    ),
    e(
        "syslog_listen_failed",
        "the syslog address cannot be bound; the receiver is restarted after a backoff",
    ),
    e(
        "syslog_prefix",
        "the log_line_prefix a server's syslog messages are read with (asked of the server)",
    ),
    e(
        "syslog_tls_refused",
        "a TLS sender's handshake failed or did not finish; its connection is closed",
    ),
    e(
        "syslog_stream_unreadable",
        "a TCP sender's stream is not syslog framing; its connection is closed",
    ),
    e(
        "metrics_stopped",
        "the endpoint was closed (a reload moved or removed it)",
    ),
    e(
        "agent_event_not_spooled",
        "an agent event could not be spooled (the spool is down)",
    ),
    e("signal_received", "a signal arrived"),
    e(
        "signal_setup_failed",
        "the signal handlers could not be installed",
    ),
    e(
        "reload_applied",
        "SIGHUP: the new config was taken; changed children restarted",
    ),
    e(
        "reload_rejected",
        "SIGHUP: the new config is invalid; the old one stays",
    ),
    e("status_dump", "SIGUSR1: the status snapshot"),
    e("status_write_failed", "status.json could not be written"),
    e(
        "shutdown_started",
        "SIGTERM/SIGINT: collection stops, the spool is flushed",
    ),
    e(
        "shutdown_work_in_progress_spooled",
        "at shutdown the collectors' work in progress (the sampler's open window) went to the spool",
    ),
    e(
        "shutdown_flushed",
        "the final flush ended (batches sent, spool drained or not)",
    ),
    e(
        "shutdown_flush_incomplete",
        "the final flush did not finish within the grace period",
    ),
    e(
        "shutdown_cut_short",
        "a second SIGTERM/SIGINT cut the flush short (exit 143)",
    ),
    // Database sessions and the sampling sources.
    e(
        "db_connect_failed",
        "the database could not be reached (the cycle fails, the next one retries)",
    ),
    e(
        "db_backend_lingered",
        "the backend of a closed connection did not end within 5 minutes (stopped or stuck): its slot is given back",
    ),
    e(
        "db_tls_setup_failed",
        "the TLS settings towards the database could not be built",
    ),
    e("collect_cycle_done", "a collection finished (debug)"),
    e(
        "collect_cycle_failed",
        "a collection failed (database down, timeout)",
    ),
    e(
        "collect_cycle_skipped",
        "a tick came while the previous collection still ran",
    ),
    e(
        "collector_backlog_overflow",
        "the in-memory backlog overflowed while the spool was away; shipped as events_dropped",
    ),
    e(
        "source_state_changed",
        "a source became available, degraded or unavailable (with the fix)",
    ),
    // The server log.
    e(
        "log_settings_read",
        "the server's log settings (where and how it logs)",
    ),
    e(
        "log_settings_unavailable",
        "the server's log settings could not be read",
    ),
    e(
        "log_reading_paused",
        "the spool holds 40 % of its cap in events not shipped yet: the log waits in its file",
    ),
    e(
        "log_reading_resumed",
        "the spool shipped below 30 % of its cap: the log is read on",
    ),
    e(
        "log_messages_localized",
        "most severity labels the log shows are translated: classification by SQLSTATE only",
    ),
    e(
        "log_source_planned",
        "which files are followed, in which format, with which prefix",
    ),
    e(
        "log_prefix_incomplete",
        "the stderr prefix lacks fields the agent needs",
    ),
    e(
        "log_file_opened",
        "a log file was opened (resumed at the stored position or not)",
    ),
    e("log_file_closed", "a log file was left (deleted)"),
    e("log_rotation_detected", "the log moved on to a new file"),
    e(
        "log_truncation_detected",
        "a log file was truncated (copytruncate)",
    ),
    e(
        "log_position_lost",
        "the stored file is gone; reading the current one from its start",
    ),
    // The spool.
    e("spool_opened", "the spool is open (depth, cap, size)"),
    e(
        "spool_open_failed",
        "the spool could not be opened (the child restarts)",
    ),
    e(
        "spool_corrupt_moved_aside",
        "an unreadable spool was moved aside; a fresh one started",
    ),
    e(
        "spool_file_replaced",
        "the spool file was deleted or replaced; its contents were carried over",
    ),
    e(
        "spool_reattach_failed",
        "a deleted spool could not be recreated",
    ),
    e("spool_error", "a spool read or write failed"),
    e(
        "spool_enqueue_failed",
        "the spool did not take a collector's or the log reader's events (kept, retried)",
    ),
    e(
        "buffer_eviction_complete",
        "the spool went over its cap and evicted its oldest events",
    ),
    e(
        "events_quarantined",
        "events the listener refused on their own were put aside",
    ),
    // Delivery.
    e("batch_posted", "a batch was accepted (debug)"),
    e(
        "batch_ack_retried",
        "a batch the listener took is acknowledged again locally (debug)",
    ),
    e("ship_failed", "a delivery attempt failed (network, status)"),
    e(
        "otlp_records_rejected",
        "the OTLP receiver accepted a batch but said it dropped some records (partial success); they are not sent again",
    ),
    e(
        "ship_spool_failed",
        "the shipper could not read or acknowledge the spool",
    ),
    e(
        "ship_ack_not_recorded",
        "the listener took a batch whose deletion failed; it is never re-sent",
    ),
    e(
        "batch_refused_splitting",
        "the listener refused a batch (400/413/422); splitting it",
    ),
    e(
        "batch_split_done",
        "a split ended: parts acknowledged, events quarantined",
    ),
    e(
        "event_refused",
        "a single event the listener refuses on its own",
    ),
    e(
        "circuit_open_buffering",
        "the breaker opened: no request until the probe",
    ),
    e(
        "circuit_probe",
        "the one probe after the breaker's reset timeout",
    ),
    e(
        "circuit_probe_failed",
        "the probe failed: the breaker opens again",
    ),
    e("circuit_closed", "the probe succeeded: shipping resumes"),
    e(
        "listener_recovered",
        "the listener accepts again after failures",
    ),
    e(
        "listener_token_refused",
        "the listener refuses the token (401/403): nothing is sent",
    ),
    e("listener_token_accepted", "the token is accepted again"),
    e(
        "output_recovered",
        "an output other than the listener (the OTLP receiver) accepts again after failures",
    ),
    e(
        "output_credentials_refused",
        "the OTLP receiver refuses the agent's credentials (401/403): nothing is sent to it; the listener goes on",
    ),
    e(
        "output_credentials_accepted",
        "the OTLP receiver accepts the credentials again",
    ),
];

#[cfg(test)]
mod tests;
