//! The CPU time the RDMA data path's threads spend, for the server's `data_cpu_ns` counter:
//! what direct mode saves is measured, not assumed.
//!
//! RDMA connections are served by a few threads that run nothing else
//! ([`super::workers::Workers`]). A thread's CPU clock stands still while it sleeps, so their
//! CPU is each thread's clock, read when the thread is about to go idle and when it ends: one
//! clock read per idle spell, none per request, and none at all while every connection's
//! peer moves bytes one-sidedly (no thread wakes).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

thread_local! {
    /// The thread's CPU clock when its time was last counted.
    static COUNTED: Cell<Option<Duration>> = const { Cell::new(None) };
}

/// The thread begins: its CPU is counted from here.
pub fn started() {
    COUNTED.set(read());
}

/// The CPU this thread spent since it was last counted goes into `counter` (it is about to
/// sleep or end).
pub fn count_spent(counter: &AtomicU64) {
    let Some(now) = read() else { return };
    if let Some(last) = COUNTED.replace(Some(now)) {
        let ns = now.saturating_sub(last).as_nanos();
        counter.fetch_add(u64::try_from(ns).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

fn read() -> Option<Duration> {
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .ok()
        .map(Duration::from)
}

/// Spends `for_` of this thread's CPU.
#[cfg(test)]
pub fn spin(for_: Duration) {
    let start = read().unwrap();
    while read().unwrap() - start < for_ {
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
