//! Child processes the runner starts, and what it reads about them from /proc.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// Clock ticks per second of /proc/*/stat times (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

/// A child process in a process group of its own, killed with everything it started (nginx's
/// workers, say) and reaped when dropped.
pub struct Proc(pub Child);

impl Proc {
    /// Starts `cmd` as the leader of a new process group.
    pub fn spawn(cmd: &mut Command) -> std::io::Result<Proc> {
        let child = cmd.process_group(0).spawn()?;
        groups().push(child.id());
        Ok(Proc(child))
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        kill_group(self.pid());
        let _ = self.0.wait();
    }
}

/// Process groups [`Proc::spawn`] made.
static GROUPS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn groups() -> std::sync::MutexGuard<'static, Vec<u32>> {
    GROUPS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Kills what [`survivors`] found (each process's whole group where it leads one).
pub fn kill_survivors(found: &[(u32, String)]) {
    for (pid, _) in found {
        kill_group(*pid);
        if let Ok(pid) = i32::try_from(*pid) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// SIGKILL to every process of group `pgid`.
fn kill_group(pgid: u32) {
    if let Ok(pgid) = i32::try_from(pgid) {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
}

/// Processes this runner started that are still alive: its own children, and members of any
/// process group a [`Proc`] led. A run that ends with any is measuring against its own
/// leftovers, so the runner kills them and says so.
pub fn survivors() -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Some(f) = stat_fields(pid) else { continue };
        // After the name: state, ppid, pgrp.
        let (state, ppid, pgrp) = (
            f.first().map(String::as_str),
            f.get(1).and_then(|v| v.parse::<u32>().ok()),
            f.get(2).and_then(|v| v.parse::<u32>().ok()),
        );
        if pid == me || state == Some("Z") {
            continue;
        }
        let ours = ppid == Some(me) || pgrp.is_some_and(|g| groups().contains(&g));
        if ours {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            found.push((pid, comm.trim().to_string()));
        }
    }
    found
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

/// CPU time of a process's threads (and of its child processes' threads: nginx's workers)
/// from a starting point. Read from /proc/PID/task/*/schedstat, in nanoseconds, where
/// /proc/PID/stat counts 10 ms ticks, too coarse for a few hundred MiB of one-sided reads.
/// Counted per thread, so a thread that exits in between takes only its own time away
/// (never the others'); a thread started in between counts in full.
pub struct CpuMeter {
    pid: u32,
    start: HashMap<u32, f64>,
}

impl CpuMeter {
    pub fn start(pid: u32) -> Self {
        Self {
            pid,
            start: thread_times(pid),
        }
    }

    /// CPU seconds used since [`start`](Self::start) by the threads alive now.
    pub fn seconds(&self) -> f64 {
        thread_times(self.pid)
            .into_iter()
            .map(|(tid, t)| t - self.start.get(&tid).copied().unwrap_or(0.0))
            .filter(|d| *d > 0.0)
            .sum::<f64>()
            .max(0.0) // an empty f64 sum is -0.0
    }
}

/// Seconds on a CPU of every thread of `pid` and of its child processes, by thread id.
fn thread_times(pid: u32) -> HashMap<u32, f64> {
    let mut out = HashMap::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default();
    for task in &tasks {
        let tid = task
            .file_name()
            .and_then(|n| n.to_str()?.parse::<u32>().ok());
        let ns = std::fs::read_to_string(task.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok());
        if let (Some(tid), Some(ns)) = (tid, ns) {
            out.insert(tid, ns / 1e9);
        }
        let children = std::fs::read_to_string(task.join("children")).unwrap_or_default();
        for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            out.extend(thread_times(child));
        }
    }
    out
}

/// CPU seconds (user + system) process `pid` has used, its exited threads included (from
/// /proc/PID/stat, in 10 ms ticks): for servers whose threads come and go with connections,
/// which a [`CpuMeter`] would miss.
pub fn process_cpu(pid: u32) -> f64 {
    stat_fields(pid).map_or(0.0, |f| ticks(&f, 11) + ticks(&f, 12))
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

/// Seconds the whole machine's CPUs were busy (user, nice, system, irq, softirq, steal:
/// every field of /proc/stat's `cpu` line but idle and iowait) since boot.
pub fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user already)
    [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| f.get(i).copied().unwrap_or(0.0))
        .sum::<f64>()
        / TICKS
}

/// Runs a command to completion; an error names it and carries its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {program} (hw-setup/install-deps.sh installs it)"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether `dir` is a mount point now (from /proc/self/mountinfo).
pub fn mounted(dir: &std::path::Path) -> bool {
    let dir = dir.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4).map(unescape_mount_path).as_deref() == Some(&*dir))
}

/// /proc/self/mountinfo writes a space, tab, newline and backslash in a path as `\040`,
/// `\011`, `\012` and `\134`.
fn unescape_mount_path(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_proc_takes_everything_it_started_with_it() {
        let proc = Proc::spawn(Command::new("sh").args(["-c", "sleep 60 & sleep 60"])).unwrap();
        let leader = proc.pid();
        let limit = Instant::now() + Duration::from_secs(10);
        // The shell, its background sleep and its foreground one.
        while survivors().len() < 3 && Instant::now() < limit {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(survivors().iter().any(|(p, _)| *p == leader));
        assert!(survivors().iter().filter(|(_, c)| c == "sleep").count() >= 2);
        drop(proc);
        let limit = Instant::now() + Duration::from_secs(10);
        while !survivors().is_empty() && Instant::now() < limit {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(survivors(), vec![], "a grandchild outlived its group");
    }

    #[test]
    fn mount_paths_with_spaces_are_unescaped() {
        assert_eq!(unescape_mount_path("/tmp/a\\040b\\134c"), "/tmp/a b\\c");
    }
}
