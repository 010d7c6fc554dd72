//! `system`: the host, read from /proc with the `procfs` crate: CPU split, load, memory
//! and swap, per-disk and per-interface counters and rates, the filesystem of the data
//! directory, and the PostgreSQL processes' own CPU and memory — which tells a DBA
//! whether the host's load is the database's.

pub mod rates;
mod read;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Instant;

use chrono::Utc;
use serde::Serialize;

use super::{CollectFuture, Source};
use crate::config::Config;
use crate::db::Db;
use crate::model::{Event, EventKind};
use rates::{cpu_percent, rate, round2, CpuPercent, CpuTicks};

/// Counters of one block device.
#[derive(Debug, Clone, Copy, Default)]
struct DiskCounters {
    reads: u64,
    writes: u64,
    sectors_read: u64,
    sectors_written: u64,
    io_ms: u64,
    in_progress: u64,
}

/// Counters of one network interface.
#[derive(Debug, Clone, Copy, Default)]
struct NetCounters {
    rx_bytes: u64,
    tx_bytes: u64,
    rx_packets: u64,
    tx_packets: u64,
    rx_errors: u64,
    tx_errors: u64,
    rx_drops: u64,
    tx_drops: u64,
}

/// One reading of every counter, kept until the next one to compute rates.
#[derive(Debug, Clone)]
struct Reading {
    at: Instant,
    cpu: CpuTicks,
    disks: BTreeMap<String, DiskCounters>,
    nets: BTreeMap<String, NetCounters>,
    /// utime + stime of the PostgreSQL processes that exist now, by pid (a process that
    /// ends takes its ticks with it, so only pids present both times are compared).
    pg_ticks: BTreeMap<i32, u64>,
}

/// The server we watch on this host: its postmaster and data directory.
#[derive(Debug, Clone)]
struct PgTarget {
    postmaster: i32,
    data_dir: String,
}

#[derive(Default)]
struct State {
    prev: Option<Reading>,
    pg: Option<PgTarget>,
    procs: read::ProcFiles,
}

/// Reads the host.
pub struct SystemSource {
    host: String,
    /// The database runs on this host (Unix socket or loopback): its processes and data
    /// directory can be found. For a remote database only the host itself is reported.
    local_db: bool,
    state: Rc<RefCell<State>>,
}

/// `data` of a `system` event.
#[derive(Debug, Serialize)]
#[allow(missing_docs)]
pub struct SystemSample {
    /// Seconds since the previous sample; rates cover this span. Null on the first.
    pub elapsed_s: Option<f64>,
    /// True on the first sample: counters only, rates start with the next one.
    pub baseline: bool,
    pub cpu: CpuSection,
    pub load: LoadSection,
    pub memory: MemorySection,
    pub disks: Vec<DiskSample>,
    pub network: Vec<NetSample>,
    pub filesystem: Option<FsSample>,
    pub postgres: Option<PgSample>,
    /// Why a section is missing (no privilege, remote database, …).
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
#[allow(missing_docs)]
pub struct CpuSection {
    pub cores: usize,
    pub percent: Option<CpuPercent>,
    pub procs_running: Option<u32>,
    pub procs_blocked: Option<u32>,
}

#[derive(Debug, Serialize)]
#[allow(missing_docs)]
pub struct LoadSection {
    pub one: f32,
    pub five: f32,
    pub fifteen: f32,
}

/// Bytes.
#[derive(Debug, Serialize)]
#[allow(missing_docs)]
pub struct MemorySection {
    pub total: u64,
    pub free: u64,
    pub available: Option<u64>,
    pub buffers: u64,
    pub cached: u64,
    pub dirty: u64,
    pub writeback: u64,
    pub shmem: Option<u64>,
    pub swap_total: u64,
    pub swap_free: u64,
    pub swap_used: u64,
}

#[derive(Debug, Serialize)]
#[allow(missing_docs)]
pub struct DiskSample {
    pub name: String,
    pub reads_per_s: Option<f64>,
    pub writes_per_s: Option<f64>,
    pub read_bytes_per_s: Option<f64>,
    pub write_bytes_per_s: Option<f64>,
    /// Share of the interval the device was busy (`io_ticks`), percent.
    pub util_pct: Option<f64>,
    pub in_progress: u64,
    pub reads_total: u64,
    pub writes_total: u64,
    pub read_bytes_total: u64,
    pub write_bytes_total: u64,
    /// A counter went backwards since the previous sample: no rates this time.
    pub reset: bool,
}

#[derive(Debug, Serialize)]
#[allow(missing_docs)]
pub struct NetSample {
    pub name: String,
    pub rx_bytes_per_s: Option<f64>,
    pub tx_bytes_per_s: Option<f64>,
    pub rx_packets_per_s: Option<f64>,
    pub tx_packets_per_s: Option<f64>,
    pub rx_errors_per_s: Option<f64>,
    pub tx_errors_per_s: Option<f64>,
    pub rx_drops_per_s: Option<f64>,
    pub tx_drops_per_s: Option<f64>,
    pub rx_bytes_total: u64,
    pub tx_bytes_total: u64,
    pub reset: bool,
}

#[derive(Debug, Serialize)]
#[allow(missing_docs)]
pub struct FsSample {
    pub path: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub available_bytes: u64,
    pub used_pct: f64,
    pub inodes_total: u64,
    pub inodes_free: u64,
}

#[derive(Debug, Serialize)]
#[allow(missing_docs)]
pub struct PgSample {
    pub postmaster_pid: i32,
    pub processes: usize,
    /// CPU of all PostgreSQL processes, percent of one core.
    pub cpu_pct: Option<f64>,
    /// Sum of resident set sizes (shared buffers are counted once per process that
    /// touched them, so this overstates; it is the figure `ps` and `top` show).
    pub rss_bytes: u64,
}

/// Device names skipped by default: they are not disks.
pub fn skip_disk(name: &str) -> bool {
    name.starts_with("loop") || name.starts_with("ram") || name.starts_with("zram")
}

impl SystemSource {
    /// From the configuration.
    pub fn new(config: &Config) -> SystemSource {
        let h = config.database.host.as_str();
        SystemSource {
            host: config.id_host(),
            local_db: h.starts_with('/') || matches!(h, "localhost" | "127.0.0.1" | "::1"),
            state: Rc::new(RefCell::new(State::default())),
        }
    }
}

impl Source for SystemSource {
    fn kind(&self) -> EventKind {
        EventKind::System
    }

    fn collect(&self, db: Rc<Db>) -> CollectFuture {
        let state = self.state.clone();
        let host = self.host.clone();
        let local_db = self.local_db;
        Box::pin(async move {
            let mut notes = Vec::new();
            let known = state
                .borrow()
                .pg
                .clone()
                .filter(|t| read::is_postmaster(t.postmaster));
            let target = match (known, local_db) {
                (Some(t), _) => Some(t),
                (None, false) => {
                    notes.push("postgres: the database is not on this host".to_string());
                    None
                }
                (None, true) => match read::discover(&db).await {
                    Ok(t) => Some(t),
                    Err(e) => {
                        notes.push(format!("postgres: cannot find the server's processes: {e}"));
                        None
                    }
                },
            };
            state.borrow_mut().pg = target.clone();
            let mut st = state.borrow_mut();
            let (reading, sample) = read::sample(target.as_ref(), &mut st.procs, &mut notes)?;
            let data = build(st.prev.as_ref(), &reading, sample, notes);
            st.prev = Some(reading);
            let now = Utc::now();
            let id = format!("system:{host}:{}", now.timestamp_micros());
            let ev = Event::new(id, EventKind::System, now, &data)
                .map_err(|e| super::CycleError::encode("sample", e))?;
            Ok(vec![ev])
        })
    }
}

/// Parts of a sample that need no previous reading.
pub struct Snapshot {
    cores: usize,
    procs_running: Option<u32>,
    procs_blocked: Option<u32>,
    load: LoadSection,
    memory: MemorySection,
    filesystem: Option<FsSample>,
    pg: Option<(i32, usize, u64)>,
}

/// Combines the current reading with the previous one into the shipped sample.
fn build(prev: Option<&Reading>, cur: &Reading, now: Snapshot, notes: Vec<String>) -> SystemSample {
    let secs = prev.map(|p| cur.at.duration_since(p.at).as_secs_f64());
    let r = |a: Option<u64>, b: u64| round2(a.zip(secs).and_then(|(a, s)| rate(a, b, s)));
    let disks = cur
        .disks
        .iter()
        .map(|(name, c)| {
            let p = prev.and_then(|p| p.disks.get(name));
            let reset = p.is_some_and(|p| {
                c.reads < p.reads
                    || c.writes < p.writes
                    || c.sectors_read < p.sectors_read
                    || c.sectors_written < p.sectors_written
                    || c.io_ms < p.io_ms
            });
            let p = p.filter(|_| !reset);
            DiskSample {
                name: name.clone(),
                reads_per_s: r(p.map(|p| p.reads), c.reads),
                writes_per_s: r(p.map(|p| p.writes), c.writes),
                read_bytes_per_s: r(p.map(|p| p.sectors_read * 512), c.sectors_read * 512),
                write_bytes_per_s: r(p.map(|p| p.sectors_written * 512), c.sectors_written * 512),
                util_pct: r(p.map(|p| p.io_ms), c.io_ms)
                    .map(|ms_per_s| (ms_per_s / 10.0).min(100.0)),
                in_progress: c.in_progress,
                reads_total: c.reads,
                writes_total: c.writes,
                read_bytes_total: c.sectors_read * 512,
                write_bytes_total: c.sectors_written * 512,
                reset,
            }
        })
        .collect();
    let network = cur
        .nets
        .iter()
        .map(|(name, c)| {
            let p = prev.and_then(|p| p.nets.get(name));
            let reset = p.is_some_and(|p| {
                c.rx_bytes < p.rx_bytes
                    || c.tx_bytes < p.tx_bytes
                    || c.rx_packets < p.rx_packets
                    || c.tx_packets < p.tx_packets
            });
            let p = p.filter(|_| !reset);
            NetSample {
                name: name.clone(),
                rx_bytes_per_s: r(p.map(|p| p.rx_bytes), c.rx_bytes),
                tx_bytes_per_s: r(p.map(|p| p.tx_bytes), c.tx_bytes),
                rx_packets_per_s: r(p.map(|p| p.rx_packets), c.rx_packets),
                tx_packets_per_s: r(p.map(|p| p.tx_packets), c.tx_packets),
                rx_errors_per_s: r(p.map(|p| p.rx_errors), c.rx_errors),
                tx_errors_per_s: r(p.map(|p| p.tx_errors), c.tx_errors),
                rx_drops_per_s: r(p.map(|p| p.rx_drops), c.rx_drops),
                tx_drops_per_s: r(p.map(|p| p.tx_drops), c.tx_drops),
                rx_bytes_total: c.rx_bytes,
                tx_bytes_total: c.tx_bytes,
                reset,
            }
        })
        .collect();
    let postgres = now.pg.map(|(postmaster_pid, processes, rss_bytes)| {
        // CPU of the processes present in both readings, over the elapsed time.
        let cpu_pct = prev.zip(secs).and_then(|(p, s)| {
            let ticks: u64 = cur
                .pg_ticks
                .iter()
                .filter_map(|(pid, t)| p.pg_ticks.get(pid).map(|pt| t.saturating_sub(*pt)))
                .sum();
            let tps = procfs::ticks_per_second() as f64;
            (s > 0.0).then(|| (ticks as f64 / tps / s * 10_000.0).round() / 100.0)
        });
        PgSample {
            postmaster_pid,
            processes,
            cpu_pct,
            rss_bytes,
        }
    });
    SystemSample {
        elapsed_s: secs.map(|s| (s * 1000.0).round() / 1000.0),
        baseline: prev.is_none(),
        cpu: CpuSection {
            cores: now.cores,
            percent: prev.and_then(|p| cpu_percent(&p.cpu, &cur.cpu)),
            procs_running: now.procs_running,
            procs_blocked: now.procs_blocked,
        },
        load: now.load,
        memory: now.memory,
        disks,
        network,
        filesystem: now.filesystem,
        postgres,
        notes,
    }
}
