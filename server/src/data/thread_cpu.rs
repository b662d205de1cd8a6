//! The CPU time a data-path thread spends serving requests, for the server's `data_cpu_ns`
//! counter: what direct mode saves is measured, not assumed.
//!
//! The thread's CPU clock is a system call. Read around every request it cost a fifth of an
//! RDMA connection thread's time at 4 KiB requests (perf in the rxe guest), so it is read at
//! the edges of each *busy spell* instead: when the thread takes a request after waiting, and
//! when it has waited a while with nothing to do (a waiting thread spends no CPU, so short
//! waits inside a spell change nothing; the caller says when), and every
//! [`BusyCpu::FLUSH_EVERY`] requests within a long spell.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

/// One thread's CPU meter for the requests it serves.
#[derive(Default)]
pub struct BusyCpu {
    /// The thread's CPU clock when the current busy spell began (None: waiting).
    since: Option<Duration>,
    served: u32,
}

impl BusyCpu {
    /// Requests served in one spell before what they spent is counted anyway.
    pub const FLUSH_EVERY: u32 = 256;

    /// A request is about to be served.
    pub fn begin(&mut self) {
        if self.since.is_none() {
            self.since = read();
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

    /// The thread has nothing to do: the spell's CPU time goes into `counter`.
    pub fn idle(&mut self, counter: &AtomicU64) {
        self.served = 0;
        // (No clock read when no spell is open: a thread waiting again right after waiting.)
        if let Some(start) = self.since.take() {
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
}
