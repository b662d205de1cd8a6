//! The CPU time the RDMA data path's threads spend, for the server's `data_cpu_ns` counter:
//! what direct mode saves is measured, not assumed.
//!
//! Every RDMA connection is served on one small runtime ([`metered_runtime`]) that runs
//! nothing else. A thread's CPU clock stands still while it sleeps, so the
//! runtime's CPU is each thread's clock, read when the thread is about to go idle (a worker
//! parking) and when it ends: one clock read per idle spell, none per request, and none at
//! all while every connection's peer moves bytes one-sidedly (no thread wakes).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

use crate::net::ServerStats;

thread_local! {
    /// The thread's CPU clock when its time was last counted.
    static COUNTED: Cell<Option<Duration>> = const { Cell::new(None) };
}

/// The thread begins: its CPU is counted from here.
fn started() {
    COUNTED.set(read());
}

/// The CPU this thread spent since it was last counted goes into `counter` (it is about to
/// sleep or end, or did work that may have left it off the workers).
fn count_spent(counter: &AtomicU64) {
    let Some(now) = read() else { return };
    if let Some(last) = COUNTED.replace(Some(now)) {
        let ns = now.saturating_sub(last).as_nanos();
        counter.fetch_add(u64::try_from(ns).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

/// Runs `f`, which may wait (on a disk, the store, a page-pinning registration), with the
/// other tasks of this worker handed to another thread meanwhile; what this thread spent is
/// counted into `counter` once `f` is done (a thread that gave its tasks away may go idle in
/// the blocking pool without parking).
pub fn may_block<T>(counter: &AtomicU64, f: impl FnOnce() -> T) -> T {
    let result = tokio::task::block_in_place(f);
    count_spent(counter);
    result
}

fn read() -> Option<Duration> {
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .ok()
        .map(Duration::from)
}

/// A multi-threaded runtime of `workers` threads named `name`, whose threads' CPU (workers
/// and any blocking-pool thread alike) goes into `stats.data_cpu_ns`.
pub fn metered_runtime(
    name: &str,
    workers: usize,
    stats: Arc<ServerStats>,
) -> std::io::Result<tokio::runtime::Runtime> {
    let (on_park, on_stop) = (stats.clone(), stats);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .thread_name(name)
        .enable_all()
        .on_thread_start(started)
        .on_thread_park(move || count_spent(&on_park.data_cpu_ns))
        .on_thread_stop(move || count_spent(&on_stop.data_cpu_ns))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spin(for_: Duration) {
        let start = read().unwrap();
        while read().unwrap() - start < for_ {
            std::hint::spin_loop();
        }
    }

    #[test]
    fn a_runtime_counts_the_cpu_its_tasks_spend_and_nothing_while_idle() {
        let stats = Arc::new(ServerStats::default());
        let rt = metered_runtime("cpu-test", 2, stats.clone()).unwrap();
        let counted = || stats.data_cpu_ns.load(Ordering::Relaxed);
        rt.block_on(async {
            let spinning = tokio::spawn(async { spin(Duration::from_millis(30)) });
            spinning.await.unwrap();
        });
        // The worker counts when it parks, right after the task.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while counted() < 30_000_000 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let spent = counted();
        assert!(spent >= 30_000_000, "{spent} ns counted for 30 ms of work");
        // Asleep, however long: nothing more (a thread's CPU clock stands still).
        std::thread::sleep(Duration::from_millis(200));
        let idle = counted() - spent;
        assert!(idle < 5_000_000, "{idle} ns counted while idle");
        drop(rt);
    }

    #[test]
    fn a_thread_counts_only_the_cpu_it_spent_since_last_counted() {
        let counter = AtomicU64::new(0);
        started();
        spin(Duration::from_millis(5));
        count_spent(&counter);
        let spent = counter.load(Ordering::Relaxed);
        assert!(spent >= 5_000_000, "{spent} ns");
        std::thread::sleep(Duration::from_millis(20));
        count_spent(&counter);
        let slept = counter.load(Ordering::Relaxed) - spent;
        assert!(slept < 2_000_000, "{slept} ns counted for a sleep");
    }
}
