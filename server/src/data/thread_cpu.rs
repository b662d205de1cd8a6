//! The CPU time the RDMA data path's threads spend, for the server's `data_cpu_ns` counter:
//! what direct mode saves is measured, not assumed.
//!
//! RDMA connections are served by a few threads that run nothing else
//! ([`super::workers::Workers`]). A thread's CPU clock stands still while it sleeps, so their
//! CPU is each thread's clock, read when the thread is about to go idle, and none at all
//! while every connection's peer moves bytes one-sidedly (no thread wakes). Work they hand
//! to their blocking pools (a flush, an attach, a write count's commit wait, a finished
//! connection's teardown) counts itself when done ([`counted`]); the
//! pools' own bookkeeping, and a handle's detach, are not counted.
//!
//! The clock is a system call (under emulation, a few percent of a thread serving 4 KiB
//! requests if read at every wait for a completion), so going idle reads it only once
//! [`MIN_SPELL`] has passed since it was last read (checked on a clock kept in memory): a
//! shorter spell is counted with the thread's next one.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

thread_local! {
    /// The thread's CPU clock when its time was last counted, and the (coarse) time then.
    static COUNTED: Cell<Option<(Duration, Duration)>> = const { Cell::new(None) };
}

/// How long a thread goes at least between two readings of its CPU clock when it goes idle.
pub const MIN_SPELL: Duration = Duration::from_millis(10);

/// The thread begins: its CPU is counted from here.
pub fn started() {
    COUNTED.set(read().zip(coarse_now()));
}

/// The thread is about to sleep: what it spent goes into `counter` if [`MIN_SPELL`] has
/// passed since it was last counted (else later, with the next spell).
pub fn going_idle(counter: &AtomicU64) {
    going_idle_at(coarse_now(), counter)
}

/// [`going_idle`] at time `now` (None: unknown, so it is counted).
fn going_idle_at(now: Option<Duration>, counter: &AtomicU64) {
    let due = match (COUNTED.get(), now) {
        (Some((_, at)), Some(now)) => now.saturating_sub(at) >= MIN_SPELL,
        _ => true,
    };
    if due {
        count_spent(counter);
    }
}

/// The CPU this thread spent since it was last counted goes into `counter`.
fn count_spent(counter: &AtomicU64) {
    let Some(now) = read() else { return };
    if let Some((last, _)) = COUNTED.replace(Some(now).zip(coarse_now())) {
        let ns = now.saturating_sub(last).as_nanos();
        counter.fetch_add(u64::try_from(ns).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

/// Runs `f` (on a blocking-pool thread) and counts the CPU the thread spent since it was
/// last counted into `counter`.
pub fn counted<T>(counter: &AtomicU64, f: impl FnOnce() -> T) -> T {
    let result = f();
    count_spent(counter);
    result
}

fn read() -> Option<Duration> {
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .ok()
        .map(Duration::from)
}

/// The time, to a scheduler tick: read from memory the kernel keeps current (no system call).
fn coarse_now() -> Option<Duration> {
    clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE)
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

    #[test]
    fn going_idle_soon_after_counting_waits_for_the_next_spell() {
        let counter = AtomicU64::new(0);
        started();
        let (_, began) = COUNTED.get().expect("counting");
        spin(Duration::from_millis(3));
        // (Times given, not read: the test does not depend on how the machine schedules it.)
        going_idle_at(Some(began + MIN_SPELL / 2), &counter);
        assert_eq!(counter.load(Ordering::Relaxed), 0, "a short spell goes on");
        spin(Duration::from_millis(3));
        going_idle_at(Some(began + MIN_SPELL), &counter);
        let spent = counter.load(Ordering::Relaxed);
        assert!(spent >= 6_000_000, "{spent} ns: both spells, counted once");
    }
}
