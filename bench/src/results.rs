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

/// Fills `limit` and `ratio` of every row that has a peer: `peer(row)` names the tool it is
/// compared against; the peer row has the same suite, size, clients and held opens, and op
/// `peer_op`.
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
        if let Some(p) = found.filter(|p| p.rate > 0.0) {
            row.ratio = Some(row.rate / p.rate);
            row.limit = Some(format!("{} {}", p.tool, p.op));
        }
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
