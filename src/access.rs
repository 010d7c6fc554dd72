//! Why a user cannot reach a file: the first directory on the way it may not enter, or
//! the file itself it may not read or write, with its owner, group and mode, and the
//! exact command that would let it. `check` asks this for the service's user (when run
//! as root, root can read everything, so its own success proves nothing) and the log
//! source asks it for itself, so "permission denied" names the real place.

use std::ffi::{CStr, CString};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The account of the Debian package's service (`User=` of its systemd unit).
pub const SERVICE_USER: &str = "postgres-agent";

/// A user, with the groups that decide what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    /// Login name (the uid as text when it has none).
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group.
    pub gid: u32,
    /// Every group, the primary one included.
    pub groups: Vec<u32>,
}

impl Who {
    /// The user this process runs as.
    pub fn current() -> Who {
        // SAFETY: these calls only read the process's credentials.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let mut groups = vec![gid];
        // SAFETY: a first call with size 0 returns the count; the second fills a
        // buffer of that size.
        unsafe {
            let n = libc::getgroups(0, std::ptr::null_mut());
            if n > 0 {
                let mut v = vec![0 as libc::gid_t; n as usize];
                let m = libc::getgroups(n, v.as_mut_ptr());
                if m > 0 {
                    v.truncate(m as usize);
                    groups.extend(v);
                }
            }
        }
        groups.sort_unstable();
        groups.dedup();
        let name = user_name(uid).unwrap_or_else(|| uid.to_string());
        Who {
            name,
            uid,
            gid,
            groups,
        }
    }

    /// The account named `name`, with the groups the system database gives it (what a
    /// process started as that user would have).
    pub fn named(name: &str) -> Option<Who> {
        let c = CString::new(name).ok()?;
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        // SAFETY: getpwnam_r writes into `pw` and `buf` (of the given length) only.
        let (uid, gid) = unsafe {
            let mut pw: libc::passwd = std::mem::zeroed();
            let mut out: *mut libc::passwd = std::ptr::null_mut();
            let rc = libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut out);
            if rc != 0 || out.is_null() {
                return None;
            }
            (pw.pw_uid, pw.pw_gid)
        };
        let mut n: libc::c_int = 64;
        let mut groups: Vec<libc::gid_t> = vec![0; n as usize];
        loop {
            // SAFETY: `groups` holds `n` entries; getgrouplist writes at most that many
            // and sets `n` to the count (or the count needed, returning -1).
            let rc = unsafe { libc::getgrouplist(c.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
            if rc >= 0 {
                groups.truncate(n.max(0) as usize);
                break;
            }
            if n as usize <= groups.len() || n > 65536 {
                groups = vec![gid];
                break;
            }
            groups = vec![0; n as usize];
        }
        groups.sort_unstable();
        groups.dedup();
        Some(Who {
            name: name.to_string(),
            uid,
            gid,
            groups,
        })
    }

    /// Who `check` judges for: the package's service account when run as root and that
    /// account exists (the service runs as it), else this process's user.
    pub fn judged() -> Who {
        let me = Who::current();
        if me.uid == 0 {
            if let Some(service) = Who::named(SERVICE_USER) {
                return service;
            }
        }
        me
    }

    /// Its primary group's name.
    pub fn group(&self) -> String {
        group_name(self.gid).unwrap_or_else(|| self.gid.to_string())
    }

    fn in_group(&self, gid: u32) -> bool {
        self.groups.binary_search(&gid).is_ok() || self.gid == gid
    }
}

/// The login name of `uid`.
pub fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: getpwuid_r writes into `pw` and `buf` only; the name points into `buf`.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out);
        if rc != 0 || out.is_null() {
            return None;
        }
        Some(CStr::from_ptr(pw.pw_name).to_string_lossy().into_owned())
    }
}

/// The name of group `gid`.
pub fn group_name(gid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 64 * 1024];
    // SAFETY: getgrgid_r writes into `gr` and `buf` only; the name points into `buf`.
    unsafe {
        let mut gr: libc::group = std::mem::zeroed();
        let mut out: *mut libc::group = std::ptr::null_mut();
        let rc = libc::getgrgid_r(gid, &mut gr, buf.as_mut_ptr(), buf.len(), &mut out);
        if rc != 0 || out.is_null() {
            return None;
        }
        Some(CStr::from_ptr(gr.gr_name).to_string_lossy().into_owned())
    }
}

/// What is wanted of the last component of a path (every directory before it must be
/// entered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Read a file.
    Read,
    /// List a directory (read and enter it).
    List,
    /// Create files in a directory (write and enter it).
    Write,
}

/// The place that stops a user, as the mode bits tell it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// The file or directory.
    pub path: PathBuf,
    /// What was refused: "enter", "list", "read" or "create files in".
    pub verb: &'static str,
    /// Its owner's name.
    pub owner: String,
    /// Its group's name.
    pub group: String,
    /// Its permission bits.
    pub mode: u32,
    /// Is it a directory.
    pub dir: bool,
    /// The user's membership of its group.
    pub member: bool,
}

impl Blocked {
    /// One line: who may not do what where, and why.
    pub fn problem(&self, who: &Who) -> String {
        format!(
            "permission denied: user {} may not {} {} ({} {}:{} {:04o}{})",
            who.name,
            self.verb,
            self.path.display(),
            if self.dir { "directory" } else { "file" },
            self.owner,
            self.group,
            self.mode,
            if self.member {
                String::new()
            } else {
                format!(", and {} is not in group {}", who.name, self.group)
            }
        )
    }

    /// The commands that would let `who` through here (safe to paste: they add a group
    /// or a group permission bit, never open anything to others).
    pub fn fix(&self, who: &Who) -> String {
        // A directory to enter gets g+rx, not g+x alone: PostgreSQL refuses to start
        // on a data directory that is neither 0700 nor 0750.
        let (bits, needed) = match (self.dir, self.verb) {
            (true, "create files in") => ("g+rwx", 0o070),
            (true, _) => ("g+rx", 0o050),
            (false, _) => ("g+r", 0o040),
        };
        let group_has = |b: u32| self.mode & b == b;
        let mut steps = Vec::new();
        if !self.member {
            steps.push(format!("sudo usermod -aG {} {}", self.group, who.name));
        }
        if !group_has(needed) {
            steps.push(format!("sudo chmod {bits} {}", self.path.display()));
        }
        let mut fix = steps.join(" && ");
        if !self.member {
            fix.push_str(
                " (then restart the agent: a new group counts from the next login or start)",
            );
        }
        fix
    }
}

/// The first place on the way to `path` that the mode bits close to `who`: a directory
/// it may not enter, or `path` itself if `want` is refused. `None` when the bits allow
/// everything (an ACL or a security module may still refuse) or a part does not exist.
pub fn blocked(path: &Path, want: Want, who: &Who) -> Option<Blocked> {
    if who.uid == 0 {
        return None;
    }
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(path)
    };
    let mut at = PathBuf::new();
    let parts: Vec<_> = path.components().collect();
    for (i, c) in parts.iter().enumerate() {
        at.push(c);
        let last = i + 1 == parts.len();
        let meta = std::fs::metadata(&at).ok()?;
        let (verb, bits) = match (last, want) {
            (false, _) => ("enter", 0o1),
            (true, Want::Read) => ("read", 0o4),
            (true, Want::List) => ("list", 0o5),
            (true, Want::Write) => ("create files in", 0o3),
        };
        if !last && !meta.is_dir() {
            return None;
        }
        let mode = meta.mode() & 0o7777;
        let member = who.in_group(meta.gid());
        let granted = if meta.uid() == who.uid {
            (mode >> 6) & bits == bits
        } else if member {
            (mode >> 3) & bits == bits
        } else {
            mode & bits == bits
        };
        if !granted {
            return Some(Blocked {
                path: at,
                verb,
                owner: user_name(meta.uid()).unwrap_or_else(|| meta.uid().to_string()),
                group: group_name(meta.gid()).unwrap_or_else(|| meta.gid().to_string()),
                mode: mode & 0o777,
                dir: meta.is_dir(),
                member,
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn someone_else(dir_gid: u32) -> Who {
        Who {
            name: "visitor".into(),
            uid: 4_000_000,
            gid: 4_000_000,
            groups: vec![4_000_000, dir_gid + 1],
        }
    }

    #[test]
    fn the_first_closed_directory_is_named_with_its_fix() {
        let base = tempfile::tempdir().expect("tempdir");
        let data = base.path().join("data");
        let log = data.join("log");
        std::fs::create_dir_all(&log).expect("mkdir");
        std::fs::write(log.join("pg.log"), b"x").expect("write");
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let gid = std::fs::metadata(&data).expect("meta").gid();
        let who = someone_else(gid);
        let b = blocked(&log.join("pg.log"), Want::Read, &who).expect("blocked");
        assert_eq!(
            (b.path.as_path(), b.verb, b.mode, b.member),
            (data.as_path(), "enter", 0o700, false)
        );
        let fix = b.fix(&who);
        assert!(
            fix.starts_with(&format!(
                "sudo usermod -aG {} visitor && sudo chmod g+rx {}",
                b.group,
                data.display()
            )),
            "{fix}"
        );
        assert!(
            b.problem(&who).contains("may not enter"),
            "{}",
            b.problem(&who)
        );

        // A member of the group, with the directory open to it: the file is next.
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o750)).expect("chmod");
        std::fs::set_permissions(log.join("pg.log"), std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
        let member = Who {
            groups: vec![gid],
            ..who.clone()
        };
        let b = blocked(&log.join("pg.log"), Want::Read, &member).expect("blocked");
        assert_eq!((b.verb, b.member, b.dir), ("read", true, false));
        assert_eq!(
            b.fix(&member),
            format!("sudo chmod g+r {}", log.join("pg.log").display())
        );
        std::fs::set_permissions(log.join("pg.log"), std::fs::Permissions::from_mode(0o640))
            .expect("chmod");
        assert_eq!(blocked(&log.join("pg.log"), Want::Read, &member), None);
        // Root passes everywhere; a missing part is not a permission problem.
        assert_eq!(
            blocked(
                &log.join("pg.log"),
                Want::Read,
                &Who {
                    uid: 0,
                    ..who.clone()
                }
            ),
            None
        );
        assert_eq!(blocked(&log.join("nope"), Want::Read, &member), None);
    }

    #[test]
    fn a_directory_owned_by_someone_else_refuses_new_files() {
        let base = tempfile::tempdir().expect("tempdir");
        let state = base.path().join("state");
        std::fs::create_dir(&state).expect("mkdir");
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let gid = std::fs::metadata(&state).expect("meta").gid();
        let who = someone_else(gid);
        let b = blocked(&state, Want::Write, &who).expect("blocked");
        assert_eq!((b.verb, b.mode), ("create files in", 0o755));
        let me = Who::current();
        assert_eq!(blocked(&state, Want::Write, &me), None, "the owner may");
    }

    #[test]
    fn accounts_are_read_from_the_system() {
        let me = Who::current();
        assert!(me.groups.contains(&me.gid));
        let root = Who::named("root").expect("root exists");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(Who::named("no-such-user-here").is_none());
        assert!(Who::named("a\0b").is_none());
    }
}
