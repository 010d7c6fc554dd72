//! Disk space held back for the spool's deletes. SQLite writes a delete to its WAL before
//! it frees anything, so on a full disk acknowledgements fail too: the listener has the
//! batch, the spool cannot forget it, and it is sent again and again. A file of
//! [`RESERVE_BYTES`] is kept allocated beside the spool; when a delete fails for space it
//! is given up and the delete retried. Appends stop while less than a floor is free, so
//! new events do not take the last bytes (collectors and the log reader keep theirs and
//! wait), and the reserve comes back once space does.

use std::path::{Path, PathBuf};

/// Size of the reserve file.
pub const RESERVE_BYTES: u64 = 4 << 20;
/// File name of the reserve inside `state_dir`.
pub const RESERVE_FILE: &str = "spool.reserve";

/// The reserve of one spool directory.
#[derive(Debug)]
pub struct Reserve {
    dir: PathBuf,
    path: PathBuf,
    /// Free space to report instead of asking the file system (tests).
    pub fake_free: Option<u64>,
}

impl Reserve {
    /// The reserve of `dir` (created by [`Reserve::ensure`]).
    pub fn new(dir: &Path) -> Reserve {
        Reserve {
            dir: dir.to_path_buf(),
            path: dir.join(RESERVE_FILE),
            fake_free: None,
        }
    }

    /// Bytes free for the agent on the spool's file system.
    pub fn free_bytes(&self) -> Option<u64> {
        if self.fake_free.is_some() {
            return self.fake_free;
        }
        let c = std::ffi::CString::new(self.dir.as_os_str().as_encoded_bytes()).ok()?;
        // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized output.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
        (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
    }

    /// True while the reserve file is in place.
    pub fn held(&self) -> bool {
        std::fs::metadata(&self.path).is_ok_and(|m| m.len() >= RESERVE_BYTES)
    }

    /// Puts the reserve (back) in place when there is room for it and some to spare;
    /// true when it is held afterwards.
    pub fn ensure(&mut self) -> bool {
        if self.held() {
            return true;
        }
        if self.free_bytes().is_some_and(|f| f < 2 * RESERVE_BYTES) {
            return false;
        }
        if self.fake_free.is_some() {
            return std::fs::write(&self.path, vec![0u8; RESERVE_BYTES as usize]).is_ok();
        }
        allocate(&self.path, RESERVE_BYTES).is_ok()
    }

    /// Gives the reserve up (a delete needs the room); true when there was one.
    pub fn release(&mut self) -> bool {
        std::fs::remove_file(&self.path).is_ok()
    }

    /// `Err` with the reason when appending `incoming` bytes would leave less than the
    /// floor free (what a delete and a checkpoint of it may need).
    pub fn room_for(&self, incoming: u64) -> Result<(), String> {
        let Some(free) = self.free_bytes() else {
            return Ok(());
        };
        let floor = RESERVE_BYTES / 2 + 2 * incoming;
        if free < floor {
            return Err(format!(
                "disk nearly full: {free} bytes free on the spool's file system, {floor} kept for acknowledgements; new events wait until space returns"
            ));
        }
        Ok(())
    }
}

/// A file of `len` bytes whose blocks are really allocated (a sparse file would free
/// nothing when removed).
fn allocate(path: &Path, len: u64) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let f = std::fs::File::create(path)?;
    // SAFETY: the descriptor is open for writing; offset and length are in range.
    let rc = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, len as libc::off_t) };
    if rc != 0 {
        drop(f);
        let _ = std::fs::remove_file(path);
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_held_released_and_kept_off_a_nearly_full_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = Reserve::new(dir.path());
        assert!(r.ensure(), "a roomy disk holds the reserve");
        assert_eq!(
            std::fs::metadata(dir.path().join(RESERVE_FILE))
                .expect("meta")
                .len(),
            RESERVE_BYTES
        );
        assert!(r.release());
        assert!(!r.held());
        r.fake_free = Some(RESERVE_BYTES);
        assert!(!r.ensure(), "not taken back while space is short");
        assert!(r.room_for(1000).is_ok(), "appends go on above the floor");
        r.fake_free = Some(RESERVE_BYTES / 4);
        assert!(r.room_for(1000).is_err(), "and stop below it");
        r.fake_free = Some(10 * RESERVE_BYTES);
        assert!(r.room_for(1000).is_ok());
        assert!(r.ensure());
    }
}
