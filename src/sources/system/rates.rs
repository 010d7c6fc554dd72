//! Counter arithmetic of the host source, as plain functions: rates over the real
//! elapsed time, and a counter that went backwards (a reset: device re-added, wrap,
//! reboot) gives no rate rather than a negative or enormous one.

/// The rate of a monotonic counter between two readings `secs` apart; `None` on a reset
/// or a zero interval.
pub fn rate(prev: u64, cur: u64, secs: f64) -> Option<f64> {
    if cur < prev || secs <= 0.0 {
        return None;
    }
    Some((cur - prev) as f64 / secs)
}

/// CPU time counters (jiffies) of /proc/stat's `cpu` line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct CpuTicks {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl CpuTicks {
    fn fields(&self) -> [u64; 8] {
        [
            self.user,
            self.nice,
            self.system,
            self.idle,
            self.iowait,
            self.irq,
            self.softirq,
            self.steal,
        ]
    }
}

/// Share of CPU time per state between two readings, in percent of all CPUs' time.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[allow(missing_docs)]
pub struct CpuPercent {
    pub user: f64,
    pub nice: f64,
    pub system: f64,
    pub idle: f64,
    pub iowait: f64,
    pub irq: f64,
    pub softirq: f64,
    pub steal: f64,
}

/// Percentages between two readings; `None` if any counter went backwards or no time
/// passed.
pub fn cpu_percent(prev: &CpuTicks, cur: &CpuTicks) -> Option<CpuPercent> {
    let (p, c) = (prev.fields(), cur.fields());
    if c.iter().zip(p.iter()).any(|(c, p)| c < p) {
        return None;
    }
    let d: Vec<f64> = c
        .iter()
        .zip(p.iter())
        .map(|(c, p)| (c - p) as f64)
        .collect();
    let total: f64 = d.iter().sum();
    if total <= 0.0 {
        return None;
    }
    let pct = |i: usize| (d[i] * 10_000.0 / total).round() / 100.0;
    Some(CpuPercent {
        user: pct(0),
        nice: pct(1),
        system: pct(2),
        idle: pct(3),
        iowait: pct(4),
        irq: pct(5),
        softirq: pct(6),
        steal: pct(7),
    })
}

/// Rounds a rate for shipping (two decimals are plenty for per-second figures).
pub fn round2(v: Option<f64>) -> Option<f64> {
    v.map(|v| (v * 100.0).round() / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_over_elapsed_time_and_resets() {
        assert_eq!(rate(100, 400, 2.0), Some(150.0));
        assert_eq!(rate(100, 100, 2.0), Some(0.0));
        assert_eq!(
            rate(400, 100, 2.0),
            None,
            "counter reset is not a negative rate"
        );
        assert_eq!(rate(1, 2, 0.0), None);
    }

    #[test]
    fn cpu_split_sums_to_100() {
        let a = CpuTicks {
            user: 100,
            nice: 0,
            system: 50,
            idle: 800,
            iowait: 10,
            irq: 0,
            softirq: 0,
            steal: 0,
        };
        let b = CpuTicks {
            user: 160,
            nice: 0,
            system: 70,
            idle: 900,
            iowait: 30,
            irq: 0,
            softirq: 0,
            steal: 0,
        };
        let p = cpu_percent(&a, &b).expect("percent");
        assert_eq!(
            (p.user, p.system, p.idle, p.iowait, p.steal),
            (30.0, 10.0, 50.0, 10.0, 0.0)
        );
        assert_eq!(cpu_percent(&b, &a), None);
        assert_eq!(cpu_percent(&a, &a), None);
    }
}
