//! The `postgres-agent` binary; everything lives in the library.

fn main() {
    limit_malloc_arenas();
    std::process::exit(postgres_agent::commands::main());
}

/// glibc gives each thread that allocates its own arena (up to 8 per core), each
/// holding freed memory of its own: the agent's few threads (collectors, the database
/// connections' driver, the spool, the shipper) took 29.7 MB of RSS where one arena
/// holds 20.5 MB (`scripts/overhead.sh`), at no measurable CPU cost — they seldom
/// allocate at the same moment. An operator's `MALLOC_ARENA_MAX` still wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before any thread
        // exists, so no allocation races with it.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}
