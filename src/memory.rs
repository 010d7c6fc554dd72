//! The allocator's settings: how much freed memory the process keeps.

/// glibc gives each thread that allocates its own arena (up to 8 per core), each
/// holding freed memory of its own: with the agent's few threads (collectors, the
/// database connections' driver, the spool, the shipper) that costs a third more RSS
/// than one arena (BENCHMARKS.md), and one arena costs no measurable CPU — they seldom
/// allocate at the same moment. An operator's `MALLOC_ARENA_MAX` still wins. Call
/// before any thread exists.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before any thread
        // exists, so no allocation races with it.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

/// Gives freed memory back to the system. glibc returns only the top of the heap by
/// itself; what a cycle freed in the middle (a statements read, a batch) stays
/// resident until reused. Called every 10 s (a walk over the free chunks: cheap).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages of the allocator's own heap; it
    // takes the arena's lock like any allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}
