//! The CPU time a data-path thread spends on a request, for the server's `data_cpu_ns`
//! counter: what direct mode saves is measured, not assumed.

use std::sync::atomic::{AtomicU64, Ordering};

use nix::time::{clock_gettime, ClockId};

/// This thread's CPU clock when a request began.
pub struct ThreadCpu(Option<std::time::Duration>);

impl ThreadCpu {
    pub fn now() -> Self {
        Self(read())
    }

    /// Adds the CPU time this thread spent since [`ThreadCpu::now`] to `counter`.
    pub fn spent(self, counter: &AtomicU64) {
        if let (Some(start), Some(end)) = (self.0, read()) {
            let ns = end.saturating_sub(start).as_nanos();
            counter.fetch_add(u64::try_from(ns).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
    }
}

fn read() -> Option<std::time::Duration> {
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .ok()
        .map(std::time::Duration::from)
}
