//! Reading /proc (and statvfs) into a [`Reading`] and a [`Snapshot`]; finding the
//! server's postmaster through one of its backends.

use std::collections::BTreeMap;
use std::time::Instant;

use procfs::process::Process;
use procfs::{Current, CurrentSI, KernelStats, LoadAverage, Meminfo};

use super::rates::CpuTicks;
use super::{
    skip_disk, DiskCounters, FsSample, LoadSection, MemorySection, NetCounters, PgTarget, Reading,
    Snapshot,
};
use crate::db::{Db, DbError};
use crate::sources::CycleError;

/// Why the server's processes were not found.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    /// The database could not be asked for our backend's pid.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Our backend's /proc entry could not be read (another host, another pid
    /// namespace, or hidepid).
    #[error("cannot read /proc/{pid}: {error}")]
    Proc {
        /// The backend's pid.
        pid: i32,
        /// Why.
        error: String,
    },
    /// The backend's parent is not a postgres process (a pooler or a container between).
    #[error("the parent ({parent}) of our backend {backend} is not a postgres process")]
    NotPostmaster {
        /// The parent's pid.
        parent: i32,
        /// Our backend's pid.
        backend: i32,
    },
}

/// Finds the postmaster: the parent of the backend serving our own connection. The
/// connection is made for this and closed at once; it is not kept in a pool.
pub async fn discover(db: &Db) -> Result<PgTarget, DiscoverError> {
    let client = db.connect_once().await?;
    let row = client
        .query_one(
            "SELECT pg_backend_pid(), current_setting('data_directory')",
            &[],
        )
        .await
        .map_err(DbError::query)?;
    let backend: i32 = row.get(0);
    let data_dir: String = row.get(1);
    let postmaster = Process::new(backend)
        .and_then(|p| p.stat())
        .map_err(|e| DiscoverError::Proc {
            pid: backend,
            error: e.to_string(),
        })?
        .ppid;
    if !is_postmaster(postmaster) {
        return Err(DiscoverError::NotPostmaster {
            parent: postmaster,
            backend,
        });
    }
    Ok(PgTarget {
        postmaster,
        data_dir,
    })
}

/// True while `pid` is a running postgres process (it may have restarted under a new pid).
pub fn is_postmaster(pid: i32) -> bool {
    Process::new(pid)
        .and_then(|p| p.stat())
        .is_ok_and(|s| s.comm == "postgres" || s.comm == "postmaster")
}

fn host_err(what: &str, e: impl std::fmt::Display) -> CycleError {
    CycleError::Host {
        what: what.to_string(),
        error: e.to_string(),
    }
}

/// One reading of every counter, and the parts of the sample that need no history.
pub fn sample(
    target: Option<&PgTarget>,
    procs: &mut ProcFiles,
    notes: &mut Vec<String>,
) -> Result<(Reading, Snapshot), CycleError> {
    let at = Instant::now();
    let ks = KernelStats::current().map_err(|e| host_err("/proc/stat", e))?;
    let t = &ks.total;
    let cpu = CpuTicks {
        user: t.user,
        nice: t.nice,
        system: t.system,
        idle: t.idle,
        iowait: t.iowait.unwrap_or(0),
        irq: t.irq.unwrap_or(0),
        softirq: t.softirq.unwrap_or(0),
        steal: t.steal.unwrap_or(0),
    };
    let la = LoadAverage::current().map_err(|e| host_err("/proc/loadavg", e))?;
    let mi = Meminfo::current().map_err(|e| host_err("/proc/meminfo", e))?;
    let disks = procfs::diskstats()
        .map_err(|e| host_err("/proc/diskstats", e))?
        .into_iter()
        .filter(|d| !skip_disk(&d.name))
        .map(|d| {
            (
                d.name.clone(),
                DiskCounters {
                    reads: d.reads,
                    writes: d.writes,
                    sectors_read: d.sectors_read,
                    sectors_written: d.sectors_written,
                    io_ms: d.time_in_progress,
                    in_progress: d.in_progress,
                },
            )
        })
        .collect();
    let nets = procfs::net::dev_status()
        .map_err(|e| host_err("/proc/net/dev", e))?
        .into_values()
        .map(|n| {
            (
                n.name.clone(),
                NetCounters {
                    rx_bytes: n.recv_bytes,
                    tx_bytes: n.sent_bytes,
                    rx_packets: n.recv_packets,
                    tx_packets: n.sent_packets,
                    rx_errors: n.recv_errs,
                    tx_errors: n.sent_errs,
                    rx_drops: n.recv_drop,
                    tx_drops: n.sent_drop,
                },
            )
        })
        .collect();
    let mut pg_ticks = BTreeMap::new();
    let mut pg = None;
    let mut filesystem = None;
    if let Some(t) = target {
        let (count, rss) = pg_processes(t.postmaster, procs, &mut pg_ticks);
        pg = Some((t.postmaster, count, rss));
        match statvfs(&t.data_dir) {
            Ok(f) => filesystem = Some(f),
            Err(e) => notes.push(format!("filesystem: {e}")),
        }
    }
    let snapshot = Snapshot {
        cores: ks.cpu_time.len(),
        procs_running: ks.procs_running,
        procs_blocked: ks.procs_blocked,
        load: LoadSection {
            one: la.one,
            five: la.five,
            fifteen: la.fifteen,
        },
        memory: MemorySection {
            total: mi.mem_total,
            free: mi.mem_free,
            available: mi.mem_available,
            buffers: mi.buffers,
            cached: mi.cached,
            dirty: mi.dirty,
            writeback: mi.writeback,
            shmem: mi.shmem,
            swap_total: mi.swap_total,
            swap_free: mi.swap_free,
            swap_used: mi.swap_total.saturating_sub(mi.swap_free),
        },
        filesystem,
        pg,
    };
    Ok((
        Reading {
            at,
            cpu,
            disks,
            nets,
            pg_ticks,
        },
        snapshot,
    ))
}

/// At most this many `/proc/<pid>/stat` files are kept open between cycles (a server
/// with more backends has the rest opened each time).
const KEEP_OPEN: usize = 1000;

/// `/proc/<pid>/stat` of the server's processes, kept open: reading a kept file again
/// from its start gives fresh figures, and costs a third of opening it each cycle
/// (200 processes: 1.0 ms against 2.7 ms). A process that ended fails its read and its
/// file is dropped; a pid reused by a new process is a new file (the old one fails).
#[derive(Default)]
pub struct ProcFiles {
    files: std::collections::HashMap<i32, std::fs::File>,
    buf: Vec<u8>,
}

impl ProcFiles {
    /// utime + stime and resident pages of `pid`.
    fn read(&mut self, pid: i32) -> Option<(u64, u64)> {
        if let Some(f) = self.files.get(&pid) {
            if let Some(v) = read_at_start(f, &mut self.buf).and_then(|_| parse_stat(&self.buf)) {
                return Some(v);
            }
            self.files.remove(&pid);
        }
        let f = std::fs::File::open(format!("/proc/{pid}/stat")).ok()?;
        let v = read_at_start(&f, &mut self.buf).and_then(|_| parse_stat(&self.buf))?;
        if self.files.len() < KEEP_OPEN {
            self.files.insert(pid, f);
        }
        Some(v)
    }

    /// Closes the files of processes not in `alive`.
    fn keep_only(&mut self, alive: &BTreeMap<i32, u64>) {
        self.files.retain(|pid, _| alive.contains_key(pid));
    }
}

/// The whole of a `/proc` file, read from its start into `buf`. A read that returns
/// less than asked has reached the end: the kernel fills the buffer from the file's
/// text, made again for each read, so asking once more for the end (which a plain loop
/// does) would make it a second time.
fn read_at_start(f: &std::fs::File, buf: &mut Vec<u8>) -> Option<()> {
    use std::os::unix::fs::FileExt;
    buf.clear();
    buf.resize(4096, 0);
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(len * 2, 0);
        }
        let asked = buf.len() - len;
        match f.read_at(&mut buf[len..], len as u64) {
            Ok(0) => break,
            Ok(n) if n < asked => {
                len += n;
                break;
            }
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    buf.truncate(len);
    (len > 0).then_some(())
}

/// The postmaster and its children: count and total RSS; CPU ticks go into `ticks`.
/// The children come from `/proc/<pid>/task/<pid>/children`, so only the server's own
/// processes are read; on kernels without that file every process is looked at.
fn pg_processes(
    postmaster: i32,
    procs: &mut ProcFiles,
    ticks: &mut BTreeMap<i32, u64>,
) -> (usize, u64) {
    let page = procfs::page_size();
    let mut rss = 0;
    let children =
        std::fs::read_to_string(format!("/proc/{postmaster}/task/{postmaster}/children"));
    match children {
        Ok(text) => {
            let pids = std::iter::once(postmaster)
                .chain(text.split_whitespace().filter_map(|p| p.parse().ok()));
            for pid in pids {
                // A process that ended since the list was read is simply skipped.
                if let Some((t, pages)) = procs.read(pid) {
                    ticks.insert(pid, t);
                    rss += pages * page;
                }
            }
            procs.keep_only(ticks);
        }
        Err(_) => {
            let Ok(all) = procfs::process::all_processes() else {
                return (0, 0);
            };
            for stat in all.flatten().filter_map(|p| p.stat().ok()) {
                if stat.pid == postmaster || stat.ppid == postmaster {
                    ticks.insert(stat.pid, stat.utime + stat.stime);
                    rss += stat.rss * page;
                }
            }
        }
    }
    (ticks.len(), rss)
}

/// utime + stime and rss of a `/proc/<pid>/stat` line. The command name (field 2) is
/// in parentheses and may hold spaces and parentheses itself: fields are counted from
/// the last `)`.
fn parse_stat(line: &[u8]) -> Option<(u64, u64)> {
    let close = line.iter().rposition(|b| *b == b')')?;
    let rest = std::str::from_utf8(&line[close + 1..]).ok()?;
    // After the name: field 3 (state) is index 0, so field n is index n - 3.
    let mut fields = rest.split_ascii_whitespace();
    let utime: u64 = fields.nth(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let rss: i64 = fields.nth(24 - 16)?.parse().ok()?;
    Some((utime + stime, rss.max(0) as u64))
}

/// Space and inodes of the filesystem holding `path` (or its parent, if the agent may
/// not look inside the data directory, which is the usual case: it is mode 0700).
// The statvfs field types differ between platforms (u32 on some 32-bit ones).
#[allow(clippy::unnecessary_cast)]
fn statvfs(path: &str) -> Result<FsSample, String> {
    let try_one = |p: &str| -> std::io::Result<libc::statvfs> {
        let c = std::ffi::CString::new(p).map_err(std::io::Error::other)?;
        // SAFETY: `c` is a valid NUL-terminated string and `s` a properly sized,
        // writable statvfs struct that the call fills in.
        unsafe {
            let mut s: libc::statvfs = std::mem::zeroed();
            if libc::statvfs(c.as_ptr(), &mut s) == 0 {
                Ok(s)
            } else {
                Err(std::io::Error::last_os_error())
            }
        }
    };
    let parent = std::path::Path::new(path)
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "/".into());
    let s = try_one(path)
        .or_else(|_| try_one(&parent))
        .map_err(|e| format!("statvfs {path}: {e}"))?;
    let frsize = s.f_frsize as u64;
    let (total, free, avail) = (
        s.f_blocks as u64 * frsize,
        s.f_bfree as u64 * frsize,
        s.f_bavail as u64 * frsize,
    );
    let used = total.saturating_sub(free);
    // As df computes it: used / (used + available to unprivileged users).
    let used_pct = if used + avail > 0 {
        (used as f64 * 10_000.0 / (used + avail) as f64).round() / 100.0
    } else {
        0.0
    };
    Ok(FsSample {
        path: path.to_string(),
        total_bytes: total,
        free_bytes: free,
        available_bytes: avail,
        used_pct,
        inodes_total: s.f_files as u64,
        inodes_free: s.f_ffree as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        // A command name with a space and a closing parenthesis of its own.
        let line = b"4242 (postgres: a) b) S 1 4242 4242 0 -1 4194560 180 0 0 0 17 23 0 0 20 0 1 0 1234 222035968 3071 18446744073709551615 1 1 0 0 0 0 0 4096 16391 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(parse_stat(line), Some((40, 3071)));
        assert_eq!(parse_stat(b"4242 (x) S 1"), None);
        assert_eq!(parse_stat(b"garbage"), None);
    }

    #[test]
    fn files_are_read_whole_past_the_first_buffer_and_to_a_short_read() {
        let d = tempfile::tempdir().expect("tmp");
        let mut buf = Vec::new();
        for len in [0usize, 1, 4095, 4096, 4097, 10_000] {
            let p = d.path().join(format!("f{len}"));
            let text: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            std::fs::write(&p, &text).expect("write");
            let f = std::fs::File::open(&p).expect("open");
            assert_eq!(
                read_at_start(&f, &mut buf),
                (len > 0).then_some(()),
                "{len}"
            );
            assert_eq!(buf, text, "{len}");
        }
        let f = std::fs::File::open("/proc/self/limits").expect("limits");
        read_at_start(&f, &mut buf).expect("read");
        assert_eq!(buf, std::fs::read("/proc/self/limits").expect("read"));
    }

    #[test]
    fn kept_files_read_fresh_figures_and_ended_processes_are_dropped() {
        let me = std::process::id() as i32;
        let mut procs = ProcFiles::default();
        let (ticks, rss) = procs.read(me).expect("own stat");
        let st = Process::myself().and_then(|p| p.stat()).expect("procfs");
        // Read a moment apart: procfs' figure is the same or a little later.
        let theirs = st.utime + st.stime;
        assert!(
            ticks <= theirs && theirs <= ticks + 50,
            "{ticks} vs {theirs}"
        );
        assert!(rss > 0);
        assert_eq!(procs.files.len(), 1, "kept open");
        // Burn CPU: the kept file shows it.
        let t0 = std::time::Instant::now();
        let mut x = 0u64;
        while t0.elapsed() < std::time::Duration::from_millis(60) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        std::hint::black_box(x);
        let (later, _) = procs.read(me).expect("again");
        assert!(later > ticks, "{later} > {ticks}");
        // A child that ends: its kept file fails, is dropped, and the pid reads as gone.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = child.id() as i32;
        assert!(procs.read(pid).is_some());
        child.kill().expect("kill");
        child.wait().expect("reaped");
        assert_eq!(procs.read(pid), None);
        assert!(!procs.files.contains_key(&pid));
        procs.keep_only(&BTreeMap::new());
        assert!(procs.files.is_empty());
        assert_eq!(procs.read(-1), None);
    }
}
