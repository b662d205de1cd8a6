//! The CPU time a data-path thread spends serving requests, for the server's `data_cpu_ns`
//! counter: what direct mode saves is measured, not assumed.
//!
//! The thread's CPU clock is a system call. Read around every request it cost a fifth of an
//! RDMA connection thread's time at 4 KiB requests (perf in the rxe guest), and read before
//! every wait still an eighth once requests came 32 to a message, so it is read at the edges
//! of *busy spells*: when the thread takes a request after waiting, and when it is about to
//! wait once the spell has lasted [`BusyCpu::MIN_SPELL`] (a waiting thread spends no CPU, so
//! a spell that goes on across short waits counts the same), and every
//! [`BusyCpu::FLUSH_EVERY`] requests within a long spell. A shorter spell is counted with the
//! thread's next one, or at its end ([`BusyCpu::idle`]): the thread never wakes just to count,
//! so a connection whose peer moves bytes one-sidedly spends no CPU at all.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

/// One thread's CPU meter for the requests it serves.
#[derive(Default)]
pub struct BusyCpu {
    /// The thread's CPU clock when the current busy spell began, and the (coarse) time of day
    /// then (None: waiting).
    since: Option<(Duration, Duration)>,
    served: u32,
}

impl BusyCpu {
    /// Requests served in one spell before what they spent is counted anyway.
    pub const FLUSH_EVERY: u32 = 256;
    /// How long a spell lasts, at least, before a wait counts it ([`BusyCpu::pause`]).
    pub const MIN_SPELL: Duration = Duration::from_millis(10);

    /// A request is about to be served.
    pub fn begin(&mut self) {
        if self.since.is_none() {
            self.since = read().zip(coarse_now());
        }
    }

    /// A request was served: counted into `counter` with the rest of its spell, at the latest
    /// [`BusyCpu::FLUSH_EVERY`] requests on.
    pub fn served(&mut self, counter: &AtomicU64) {
        self.served += 1;
        if self.served >= Self::FLUSH_EVERY {
            self.idle(counter);
        }
    }

    /// The thread is about to wait: a spell that lasted [`BusyCpu::MIN_SPELL`] goes into
    /// `counter`; a shorter one goes on (with no clock read).
    pub fn pause(&mut self, counter: &AtomicU64) {
        self.pause_at(coarse_now(), counter);
    }

    /// [`BusyCpu::pause`] at time `now` (None: unknown, so the spell is counted).
    fn pause_at(&mut self, now: Option<Duration>, counter: &AtomicU64) {
        let lasted = |(_, began): (Duration, Duration)| {
            now.is_none_or(|now| now.saturating_sub(began) >= Self::MIN_SPELL)
        };
        if self.since.is_some_and(lasted) {
            self.idle(counter);
        }
    }

    /// The thread is done (or has nothing to do for long): the spell's CPU time goes into
    /// `counter`.
    pub fn idle(&mut self, counter: &AtomicU64) {
        self.served = 0;
        // (No clock read when no spell is open: a thread waiting again right after waiting.)
        if let Some((start, _)) = self.since.take() {
            if let Some(end) = read() {
                let ns = end.saturating_sub(start).as_nanos();
                counter.fetch_add(u64::try_from(ns).unwrap_or(u64::MAX), Ordering::Relaxed);
            }
        }
    }
}

fn read() -> Option<Duration> {
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .ok()
        .map(Duration::from)
}

/// The time, to a scheduler tick: read from memory the kernel keeps current (no system call,
/// no clock device).
fn coarse_now() -> Option<Duration> {
    clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE)
        .ok()
        .map(Duration::from)
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
    fn a_spell_is_counted_when_the_thread_goes_idle_or_after_enough_requests() {
        let counter = AtomicU64::new(0);
        let mut cpu = BusyCpu::default();
        cpu.begin();
        spin(Duration::from_millis(5));
        cpu.served(&counter);
        assert_eq!(counter.load(Ordering::Relaxed), 0, "not yet: still busy");
        cpu.idle(&counter);
        let spent = counter.load(Ordering::Relaxed);
        assert!(spent >= 5_000_000, "{spent} ns");
        // Idle again with no spell: nothing more.
        cpu.idle(&counter);
        assert_eq!(counter.load(Ordering::Relaxed), spent);
        // A long spell is counted every FLUSH_EVERY requests.
        for _ in 0..BusyCpu::FLUSH_EVERY {
            cpu.begin();
            cpu.served(&counter);
        }
        assert!(counter.load(Ordering::Relaxed) > spent);
    }

    #[test]
    fn a_short_spell_goes_on_across_a_wait_and_a_long_one_is_counted() {
        let counter = AtomicU64::new(0);
        let mut cpu = BusyCpu::default();
        cpu.begin();
        let began = cpu.since.expect("a spell").1;
        cpu.served(&counter);
        // (Times given, not read: the test does not depend on how the machine schedules it.)
        cpu.pause_at(Some(began + BusyCpu::MIN_SPELL / 2), &counter);
        assert_eq!(counter.load(Ordering::Relaxed), 0, "a short spell goes on");
        // Asleep: no CPU spent, however long.
        std::thread::sleep(Duration::from_millis(20));
        cpu.begin();
        spin(Duration::from_millis(3));
        cpu.pause_at(Some(began + BusyCpu::MIN_SPELL), &counter);
        let spent = counter.load(Ordering::Relaxed);
        assert!(
            (3_000_000..BusyCpu::MIN_SPELL.as_nanos() as u64).contains(&spent),
            "{spent} ns: the CPU, not the time asleep"
        );
    }
}
