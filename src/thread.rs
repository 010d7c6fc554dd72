//! Threads named after what runs on them, so `top -H` and `/proc/<pid>/task/*/comm` say
//! which child uses the CPU (arbiters are otherwise all "actix-rt|system:0|…").

/// Names the calling thread (the kernel keeps 15 bytes of it).
pub fn name_thread(name: &str) {
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes; `buf` is
    // 16 bytes and its last byte stays 0.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, buf.as_ptr() as libc::c_ulong, 0, 0, 0);
    }
}
