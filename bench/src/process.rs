//! Child processes the runner starts, and what it reads about them from /proc.

use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// Clock ticks per second of /proc/*/stat times (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

/// A child process killed (and reaped) when dropped.
pub struct Proc(pub Child);

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The fields of /proc/PID/stat after the parenthesised command name.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn ticks(f: &[String], i: usize) -> f64 {
    f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / TICKS
}

/// CPU seconds of a process (every live thread) and of its child processes (nginx's
/// workers), from /proc/PID/task/*/schedstat: nanoseconds on a CPU, where /proc/PID/stat
/// counts 10 ms ticks, too coarse for a few hundred MiB of one-sided reads. Threads that
/// exited are not counted: measure across windows in which the server's threads live.
pub fn cpu_seconds(pid: u32) -> f64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default();
    let own: f64 = tasks
        .iter()
        .filter_map(|t| std::fs::read_to_string(t.join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .sum::<f64>()
        / 1e9;
    let children = tasks
        .iter()
        .filter_map(|t| std::fs::read_to_string(t.join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .map(cpu_seconds)
        .sum::<f64>();
    own + children
}

/// CPU seconds of this process's reaped children (cutime + cstime): the difference across a
/// `wait` is the CPU the reaped child used.
pub fn reaped_children_cpu() -> f64 {
    stat_fields(std::process::id()).map_or(0.0, |f| ticks(&f, 13) + ticks(&f, 14))
}

/// Resident memory of a process in MiB (VmRSS).
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// A TCP port nothing listens on right now.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Whether some socket listens on TCP `port` (any address), from /proc/net/tcp{,6}: unlike
/// a probe connection, this does not use up a one-shot server's accept.
pub fn listening(port: u16) -> bool {
    let want = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|file| {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.get(1).is_some_and(|a| a.ends_with(&want)) && f.get(3) == Some(&"0A")
            })
    })
}

/// Waits up to `limit` for `port` to be listened on.
pub fn wait_listening(port: u16, limit: Duration, what: &str) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if listening(port) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{what} did not listen on port {port} within {limit:?}")
}
