//! The state directory is private: the spool holds query texts and log lines (a logged
//! `ALTER ROLE … PASSWORD` among them), so the directory is 0700 and every file in it
//! 0600, whatever the umask the agent was started with (outside systemd it is often
//! 022, which made the spool readable by every local user).

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Mode of the state directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of the files in it.
pub const FILE_MODE: u32 = 0o600;

/// Makes files this process creates from now on private (the spool, its WAL, the
/// status dump): group and others get nothing.
pub fn private_umask() {
    // SAFETY: umask only changes the process's file-creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// What [`prepare`] had to tighten.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tightened {
    /// The directory was wider than 0700.
    pub dir: bool,
    /// Files that were readable or writable by others.
    pub files: Vec<String>,
}

/// Creates `dir` (0700) or tightens it and the files in it to 0700/0600.
pub fn prepare(dir: &Path) -> io::Result<Tightened> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    let mut t = Tightened::default();
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode != DIR_MODE {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))?;
        t.dir = true;
    }
    for entry in std::fs::read_dir(dir)?.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(FILE_MODE))?;
            t.files
                .push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    Ok(t)
}

/// Prepares `dir` ([`prepare`]) and proves a file can be written in it: what the spool
/// needs before it opens there. A reload that moves the state directory is checked with
/// this before anything is stopped.
pub fn usable(dir: &Path) -> io::Result<()> {
    prepare(dir)?;
    let probe = dir.join(".probe");
    std::fs::write(&probe, b"x")?;
    std::fs::remove_file(&probe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wide_directory_and_its_files_are_tightened() {
        let base = tempfile::tempdir().expect("tempdir");
        let dir = base.path().join("state");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let f = dir.join("spool.db");
        std::fs::write(&f, b"x").expect("write");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let t = prepare(&dir).expect("prepare");
        assert!(t.dir);
        assert_eq!(t.files, vec!["spool.db".to_string()]);
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!((mode(&dir), mode(&f)), (DIR_MODE, FILE_MODE));
        assert_eq!(prepare(&dir).expect("again"), Tightened::default());
        let fresh = base.path().join("a/b");
        prepare(&fresh).expect("create");
        assert_eq!(mode(&fresh), DIR_MODE);
    }

    #[test]
    fn a_directory_that_cannot_be_made_is_not_usable() {
        let base = tempfile::tempdir().expect("tempdir");
        let file = base.path().join("file");
        std::fs::write(&file, b"x").expect("write");
        assert!(usable(&file.join("state")).is_err());
        assert!(usable(&base.path().join("state")).is_ok());
        assert!(!base.path().join("state/.probe").exists());
    }
}
