//! One measurement per row; a run's rows with the date, machine and command, as JSON.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Row {
    /// "rdma", "stream" (TCP/TLS on loopback), "clients" (concurrency), "many" (hundreds of
    /// clients on the host) or "opens".
    pub suite: String,
    /// What was measured, e.g. "ib_write_bw", "handoff rdma", "nginx http".
    pub tool: String,
    /// "read", "write", "open" or "resume".
    pub op: String,
    /// Bytes per request (message size for perftest); 0 where it does not apply.
    pub size: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub clients: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub held_opens: u64,
    pub bytes: u64,
    pub secs: f64,
    /// Throughput in MiB/s (bytes moved), or operations per second for the opens suite.
    pub rate: f64,
    /// Server process CPU (user + system) per GiB moved, or per 10^5 operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cpu_s_per_gib: Option<f64>,
    /// Server CPU spent before the timed part (connect, direct-mode registration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_setup_cpu_s: Option<f64>,
    /// The row this one is compared against (its `tool`), and rate ÷ that row's rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_rss_mib: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_mib: Option<f64>,
    /// Latency of the open request while many clients start at once (many suite).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_p99_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Requests in flight (fio's iodepth; mount suite).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub depth: u64,
    /// Every trial's rate, in the order run, where a row was measured more than once
    /// (`rate` is then their median).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trials: Vec<f64>,
    /// Ratios to peers measured in the same trials, interleaved with this row's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ratios: Vec<Ratio>,
    /// CPU of the whole machine (every process and the kernel, both ends) per GiB moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_cpu_s_per_gib: Option<f64>,
}

/// This row's rate ÷ a peer's, trial by trial: the median of the pairs and their range.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Ratio {
    /// The peer, e.g. "NFSv4.1/RDMA read" or "ib_write_bw write".
    pub limit: String,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub pairs: usize,
}

/// Pairs whose ratios spread wider than this around their median are flagged as noise.
pub const NOISY_SPREAD: f64 = 0.10;

impl Ratio {
    /// `ours[i] ÷ theirs[i]` for every trial both have (trial i of each ran back to back).
    pub fn paired(limit: &str, ours: &[f64], theirs: &[f64]) -> Option<Ratio> {
        // A trial that measured nothing (rate 0, or not finite) pairs with nothing.
        let each: Vec<f64> = ours
            .iter()
            .zip(theirs)
            .filter(|(o, t)| o.is_finite() && t.is_finite() && **o > 0.0 && **t > 0.0)
            .map(|(o, t)| o / t)
            .collect();
        Some(Ratio {
            limit: limit.to_string(),
            median: median(&each)?,
            min: each.iter().copied().fold(f64::MAX, f64::min),
            max: each.iter().copied().fold(f64::MIN, f64::max),
            pairs: each.len(),
        })
    }

    /// Half the min–max range as a fraction of the median: 0.1 is "±10 %".
    pub fn spread(&self) -> f64 {
        if self.median > 0.0 {
            (self.max - self.min) / 2.0 / self.median
        } else {
            0.0
        }
    }
}

/// The median (the mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Run {
    pub date: String,
    pub machine: String,
    pub command: String,
    pub rows: Vec<Row>,
}

impl Row {
    pub fn mib_per_s(bytes: u64, secs: f64) -> f64 {
        bytes as f64 / f64::from(1u32 << 20) / secs.max(1e-9)
    }

    /// A throughput row's numbers: `bytes` moved in `size`-byte requests in `secs`, with
    /// `server_cpu_s` of server CPU. The caller names the suite, tool and op.
    pub fn moved(size: u64, bytes: u64, secs: f64, server_cpu_s: f64) -> Row {
        Row {
            size,
            bytes,
            secs,
            rate: Row::mib_per_s(bytes, secs),
            server_cpu_s_per_gib: Row::cpu_per_gib(server_cpu_s, bytes),
            ..Row::default()
        }
    }

    pub fn cpu_per_gib(cpu_s: f64, bytes: u64) -> Option<f64> {
        (bytes > 0).then(|| cpu_s / (bytes as f64 / f64::from(1u32 << 30)))
    }
}

/// One row from the same measurement's interleaved trials (in the order run): the rate is
/// the median of the trials that measured something, times and bytes add up, CPU per GiB is
/// the median of the trials'. `None` for no trials.
pub fn merge_trials(trials: &[Row]) -> Option<Row> {
    let first = trials.first()?;
    let rates: Vec<f64> = trials.iter().map(|r| r.rate).collect();
    let measured: Vec<f64> = rates.iter().copied().filter(|r| *r > 0.0).collect();
    let cpu: Vec<f64> = trials
        .iter()
        .filter_map(|r| r.server_cpu_s_per_gib)
        .collect();
    let setup: Vec<f64> = trials.iter().filter_map(|r| r.server_setup_cpu_s).collect();
    Some(Row {
        rate: median(&measured).unwrap_or(0.0),
        bytes: trials.iter().map(|r| r.bytes).sum(),
        secs: trials.iter().map(|r| r.secs).sum(),
        server_cpu_s_per_gib: median(&cpu),
        server_setup_cpu_s: median(&setup),
        trials: if trials.len() > 1 { rates } else { Vec::new() },
        ..first.clone()
    })
}

/// Rounds of the same measurements, round after round (each round's rows in the same order),
/// merged row by row with [`merge_trials`].
pub fn merge_rounds(rounds: &[Vec<Row>]) -> Vec<Row> {
    let cases = rounds.first().map_or(0, Vec::len);
    (0..cases)
        .filter_map(|i| {
            let runs: Vec<Row> = rounds.iter().filter_map(|t| t.get(i).cloned()).collect();
            merge_trials(&runs)
        })
        .collect()
}

/// Fills `limit` and `ratio` of every row that has a peer: `peer(row)` names the tool it is
/// compared against; the peer row has the same suite, size, clients and held opens, and op
/// `peer_op`. Where both rows were measured in interleaved trials, the ratio is the median of
/// the trial-by-trial ratios, with their range in `ratios`.
pub fn set_ratios(rows: &mut [Row], peer: impl Fn(&Row) -> Option<(String, String)>) {
    let snapshot = rows.to_vec();
    for row in rows.iter_mut() {
        let Some((tool, op)) = peer(row) else {
            continue;
        };
        let found = snapshot.iter().find(|p| {
            p.tool == tool
                && p.op == op
                && p.suite == row.suite
                && p.size == row.size
                && p.clients == row.clients
        });
        let Some(p) = found.filter(|p| p.rate > 0.0) else {
            continue;
        };
        let limit = format!("{} {}", p.tool, p.op);
        if row.trials.len() > 1 && row.trials.len() == p.trials.len() {
            if let Some(r) = Ratio::paired(&limit, &row.trials, &p.trials) {
                row.ratio = Some(r.median);
                row.ratios = vec![r];
            }
        } else {
            row.ratio = Some(row.rate / p.rate);
        }
        row.limit = Some(limit);
    }
}

/// "2026-11-25T18:00Z" now, from `date -u` (no time crate needed for one stamp).
pub fn now_stamp() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%MZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// "2 cores, Linux 6.1.0-…, QEMU TCG guest" style description of where this runs.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    format!("{cores} CPUs ({model}), Linux {}", kernel.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(rate: f64, cpu: f64) -> Row {
        Row {
            suite: "rdma".into(),
            tool: "handoff rdma".into(),
            op: "read".into(),
            size: 1 << 20,
            bytes: 1 << 30,
            secs: 1.0,
            rate,
            server_cpu_s_per_gib: Some(cpu),
            ..Row::default()
        }
    }

    #[test]
    fn trials_merge_to_the_median_of_those_that_measured_something() {
        let rows = [
            trial(100.0, 1.0),
            trial(0.0, 9.0),
            trial(80.0, 2.0),
            trial(120.0, 3.0),
        ];
        let merged = merge_trials(&rows).unwrap();
        assert_eq!(
            merged.rate, 100.0,
            "the failed (0) trial stays out of the median"
        );
        assert_eq!(merged.trials, vec![100.0, 0.0, 80.0, 120.0]);
        assert_eq!(merged.bytes, 4 << 30);
        assert_eq!(merged.server_cpu_s_per_gib, Some(2.5));
        assert!(merge_trials(&[]).is_none());
    }

    #[test]
    fn interleaved_rows_are_compared_pair_by_pair_and_noise_is_visible() {
        let mut ours = trial(100.0, 1.0);
        ours.trials = vec![90.0, 100.0, 130.0];
        let mut peer = trial(100.0, 1.0);
        peer.tool = "ib_write_bw".into();
        peer.op = "write".into();
        peer.trials = vec![100.0, 100.0, f64::NAN];
        let mut rows = vec![ours, peer];
        set_ratios(&mut rows, |r| {
            (r.tool == "handoff rdma").then(|| ("ib_write_bw".into(), "write".into()))
        });
        let r = &rows[0].ratios[0];
        assert_eq!(r.pairs, 2, "a pair with a non-finite side is dropped");
        assert_eq!((r.min, r.max), (0.9, 1.0));
        assert_eq!(rows[0].ratio, Some(r.median));
        assert_eq!(rows[0].limit.as_deref(), Some("ib_write_bw write"));
        let noisy = Ratio::paired("x", &[80.0, 120.0], &[100.0, 100.0]).unwrap();
        assert!(noisy.spread() > NOISY_SPREAD);
    }
}
