//! Where the log is: a file named in `[logs] path`, a directory, or what the server
//! says (`current_logfiles` in its data directory, else the newest file of its
//! `log_directory`). And which file comes after the one being read.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::Format;
use crate::access::{blocked, Want, Who};

/// Which file names of a directory belong to the log.
type NameFilter = Box<dyn Fn(&str) -> bool>;

/// How the files of the log are found.
#[derive(Debug, Clone, PartialEq)]
pub enum Locator {
    /// One file, rotated by rename (`file` → `file.1`), copy-and-truncate or truncation.
    File(PathBuf),
    /// Every file with the format's extension in a directory, oldest first.
    Dir {
        /// The directory.
        dir: PathBuf,
        /// Which files.
        format: Format,
    },
    /// The server's logging collector: `current_logfiles`, else the newest file.
    Server {
        /// `data_directory` (where `current_logfiles` is).
        data_dir: PathBuf,
        /// `log_directory`, absolute.
        log_dir: PathBuf,
        /// Which of the server's destinations to follow.
        format: Format,
    },
}

/// A file that may be part of the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Its path.
    pub path: PathBuf,
    /// Device and inode.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Size now.
    pub size: u64,
    /// Modification time (ns).
    pub mtime: i128,
    /// Inode change time (ns): a rename sets it, so rotated files sort in the order
    /// they were rotated even when empty.
    pub ctime: i128,
}

impl Candidate {
    /// Stats `path`.
    pub fn of(path: &Path) -> Option<Candidate> {
        let m = fs::metadata(path).ok()?;
        if !m.is_file() {
            return None;
        }
        Some(Candidate {
            path: path.to_path_buf(),
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        })
    }
}

impl Locator {
    /// The file being written now.
    pub fn current(&self) -> Option<Candidate> {
        match self {
            Locator::File(p) => Candidate::of(p),
            Locator::Dir { .. } => self.candidates().pop(),
            Locator::Server {
                data_dir, format, ..
            } => current_logfile(data_dir, *format)
                .and_then(|p| Candidate::of(&p))
                .or_else(|| self.candidates().pop()),
        }
    }

    /// The files of the log, oldest first: by inode change time (creation, last write,
    /// or the rename that rotated it), then modification time, then name.
    pub fn candidates(&self) -> Vec<Candidate> {
        let (dir, keep): (PathBuf, NameFilter) = match self {
            Locator::File(p) => {
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let dir = p
                    .parent()
                    .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
                // Rotated siblings (`file.1`, `file-20261126`), not their compressed
                // archives: those are new files with fresh times and unreadable content.
                (
                    dir,
                    Box::new(move |n: &str| {
                        n.starts_with(&name)
                            && ![".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip"]
                                .iter()
                                .any(|ext| n.ends_with(ext))
                    }),
                )
            }
            Locator::Dir { dir, format }
            | Locator::Server {
                log_dir: dir,
                format,
                ..
            } => {
                let ext = format!(".{}", format.extension());
                (dir.clone(), Box::new(move |n: &str| n.ends_with(&ext)))
            }
        };
        let mut v: Vec<Candidate> = fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| keep(&e.file_name().to_string_lossy()))
            .filter_map(|e| Candidate::of(&e.path()))
            .collect();
        v.sort_by(|a, b| (a.ctime, a.mtime, &a.path).cmp(&(b.ctime, b.mtime, &b.path)));
        // The named file is the one being written: it comes last whatever its time (a
        // truncation and the copy before it can share a timestamp tick).
        if let Locator::File(p) = self {
            if let Some(i) = v.iter().position(|c| &c.path == p) {
                let named = v.remove(i);
                v.push(named);
            }
        }
        v
    }

    /// The file to read after the one with `dev`/`ino` is finished, if there is one.
    pub fn next_after(&self, dev: u64, ino: u64) -> Option<Candidate> {
        let same = |c: &Candidate| c.dev == dev && c.ino == ino;
        // While the named file is the one being read, nothing comes after it (a copy
        // someone makes beside it is not a rotation).
        if let Locator::File(p) = self {
            if Candidate::of(p).is_some_and(|c| same(&c)) {
                return None;
            }
        }
        // Otherwise the next file by modification time: a renamed file is followed by
        // the one renamed after it (several rotations while the agent was stopped), and
        // at last by the file being written; a copytruncate copy by the original.
        let all = self.candidates();
        match all.iter().position(same) {
            Some(i) => all.into_iter().skip(i + 1).find(|c| !same(c)),
            // Ours is gone from the directory: go to the file being written.
            None => self.current().filter(|c| !same(c)),
        }
    }

    /// Why `who` cannot read the log, when the mode bits say so: the problem (the
    /// directory or file, its owner, group and mode) and the commands that fix it.
    pub fn permission_problem(&self, who: &Who) -> Option<(String, String)> {
        let b = match self {
            Locator::File(p) => blocked(p, Want::Read, who)?,
            Locator::Dir { dir, .. } | Locator::Server { log_dir: dir, .. } => {
                blocked(dir, Want::List, who).or_else(|| {
                    self.current()
                        .and_then(|c| blocked(&c.path, Want::Read, who))
                })?
            }
        };
        let mut fix = b.fix(who);
        if !b.dir || matches!(self, Locator::Server { .. }) {
            fix.push_str(
                "; for the files the server writes next: log_file_mode = 0640 in postgresql.conf, then SELECT pg_reload_conf()",
            );
        }
        if let Locator::Server { data_dir, .. } = self {
            if b.path == *data_dir {
                fix.push_str(
                    "; a data directory may be 0750 (PostgreSQL accepts 0700 or 0750), or move the log out of it: log_directory = '/var/log/postgresql'",
                );
            }
        }
        Some((b.problem(who), fix))
    }

    /// A short description for status.
    pub fn describe(&self) -> String {
        match self {
            Locator::File(p) => format!("file {}", p.display()),
            Locator::Dir { dir, format } => {
                format!("newest *.{} in {}", format.extension(), dir.display())
            }
            Locator::Server {
                log_dir, format, ..
            } => format!(
                "the server's {} log in {}",
                format.as_str(),
                log_dir.display()
            ),
        }
    }
}

/// The file `current_logfiles` names for `format`, if the file is readable.
pub fn current_logfile(data_dir: &Path, format: Format) -> Option<PathBuf> {
    let text = fs::read_to_string(data_dir.join("current_logfiles")).ok()?;
    let rel = text.lines().find_map(|l| {
        let (dest, path) = l.split_once(' ')?;
        (dest == format.as_str()).then(|| path.to_string())
    })?;
    let p = PathBuf::from(rel);
    Some(if p.is_absolute() { p } else { data_dir.join(p) })
}

/// The destinations `current_logfiles` lists, if readable.
pub fn current_formats(data_dir: &Path) -> Vec<Format> {
    let Ok(text) = fs::read_to_string(data_dir.join("current_logfiles")) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(d, _)| Format::parse(d).ok().flatten())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_logfiles_and_order() {
        let d = tempfile::tempdir().expect("tmp");
        let log = d.path().join("log");
        fs::create_dir(&log).expect("mkdir");
        fs::write(log.join("a.log"), "1\n").expect("w");
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(log.join("b.log"), "2\n").expect("w");
        fs::write(log.join("b.csv"), "2\n").expect("w");
        fs::write(
            d.path().join("current_logfiles"),
            "stderr log/a.log\ncsvlog log/b.csv\n",
        )
        .expect("w");
        let s = Locator::Server {
            data_dir: d.path().to_path_buf(),
            log_dir: log.clone(),
            format: Format::Stderr,
        };
        assert_eq!(s.current().map(|c| c.path), Some(log.join("a.log")));
        let a = Candidate::of(&log.join("a.log")).expect("a");
        assert_eq!(
            s.next_after(a.dev, a.ino).map(|c| c.path),
            Some(log.join("b.log"))
        );
        assert_eq!(current_formats(d.path()), vec![Format::Stderr, Format::Csv]);
        let dir = Locator::Dir {
            dir: log.clone(),
            format: Format::Stderr,
        };
        assert_eq!(dir.current().map(|c| c.path), Some(log.join("b.log")));
    }
}
