//! The threads that serve every RDMA connection: a fixed few, each running the connections
//! given to it on a single-threaded runtime of its own (a connection waits for completions
//! through the runtime's reactor, not on a thread of its own). A new connection goes to the
//! thread serving the fewest (ties taken in turn), so the QPs of one client (one per NIC)
//! land on different threads.
//!
//! Why not one multi-threaded runtime: under soft-RoCE the thread that posts work does the
//! NIC's work too (packets built and copied inside `ibv_post_send`), for milliseconds at a
//! time; a connection woken behind it on the same worker waited (tokio's next-task slot is
//! not stolen), and reads striped over two NICs fell from 1.62 to 1.2 of one NIC's
//! `ib_write_bw`. Threads of their own keep two busy connections on two CPUs.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::runtime::Handle;

use super::thread_cpu;
use crate::net::ServerStats;

/// How many threads serve RDMA connections by default: twice the CPUs, at least four.
pub fn default_count() -> usize {
    let cpus = std::thread::available_parallelism().map_or(2, usize::from);
    (2 * cpus).max(4)
}

pub struct Workers {
    threads: Vec<Worker>,
    /// Where the search for the least busy thread starts next (so ties go round), taken
    /// with the choice and its count as one step.
    next: Mutex<usize>,
}

struct Worker {
    runtime: Handle,
    /// Connections it serves now.
    load: Arc<AtomicUsize>,
}

/// Gives a worker's connection back when the connection's task ends (or panics).
struct Served(Arc<AtomicUsize>);

impl Drop for Served {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// Starts `count` threads named `name`, whose CPU goes into `stats.data_cpu_ns` (see
    /// [`thread_cpu`]). They run until the process ends (a panic that escapes the runtime
    /// is logged and the thread goes on serving).
    pub fn start(name: &str, count: usize, stats: Arc<ServerStats>) -> std::io::Result<Self> {
        let mut threads = Vec::new();
        for _ in 0..count.max(1) {
            let on_park = stats.clone();
            // (Started threads are the blocking pool's: work handed there counts itself, see
            // `thread_cpu::counted`.)
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name(name)
                .on_thread_start(thread_cpu::started)
                .on_thread_park(move || thread_cpu::going_idle(&on_park.data_cpu_ns))
                .build()?;
            let handle = runtime.handle().clone();
            std::thread::Builder::new()
                .name(name.to_string())
                .spawn(move || {
                    thread_cpu::started();
                    loop {
                        let serving = std::panic::catch_unwind(AssertUnwindSafe(|| {
                            runtime.block_on(std::future::pending::<()>())
                        }));
                        if let Err(panic) = serving {
                            tracing::error!(
                                "an RDMA serving thread's runtime panicked: {panic:?}; it goes on"
                            );
                        }
                    }
                })?;
            threads.push(Worker {
                runtime: handle,
                load: Arc::default(),
            });
        }
        Ok(Self {
            threads,
            next: Mutex::new(0),
        })
    }

    /// Serves `connection` on the thread serving the fewest.
    pub fn spawn(&self, connection: impl Future<Output = ()> + Send + 'static) {
        let worker = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let n = self.threads.len();
            let at = (0..n)
                .map(|i| (*next + i) % n)
                .min_by_key(|&i| self.threads[i].load.load(Ordering::Relaxed))
                .expect("at least one worker");
            *next = (at + 1) % n;
            let worker = &self.threads[at];
            worker.load.fetch_add(1, Ordering::Relaxed);
            worker
        };
        let served = Served(worker.load.clone());
        worker.runtime.spawn(async move {
            let _served = served;
            connection.await
        });
    }

    /// Connections each thread serves now.
    #[cfg(test)]
    pub fn loads(&self) -> Vec<usize> {
        let load = |w: &Worker| w.load.load(Ordering::Relaxed);
        self.threads.iter().map(load).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn connections_go_to_the_least_busy_thread_ties_in_turn_and_give_it_back_when_they_end() {
        let workers = Workers::start("w-test", 4, Arc::default()).unwrap();
        // Each connection runs until its sender is dropped.
        let mut held = Vec::new();
        let mut connect = || {
            let (keep, gone) = tokio::sync::oneshot::channel::<()>();
            workers.spawn(async move {
                let _ = gone.await;
            });
            held.push(keep);
        };
        for _ in 0..4 {
            connect();
        }
        assert_eq!(workers.loads(), vec![1, 1, 1, 1]);
        let settle = |want: Vec<usize>| {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while workers.loads() != want && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            assert_eq!(workers.loads(), want);
        };
        // The first thread's connection ends: the next goes there, and the one after (a
        // client's second QP, say) to another thread, not to the first again.
        held.remove(0);
        settle(vec![0, 1, 1, 1]);
        let mut held2 = Vec::new();
        for _ in 0..2 {
            let (keep, gone) = tokio::sync::oneshot::channel::<()>();
            workers.spawn(async move {
                let _ = gone.await;
            });
            held2.push(keep);
        }
        assert_eq!(workers.loads(), vec![1, 2, 1, 1]);
        held.clear();
        held2.clear();
        settle(vec![0, 0, 0, 0]);
    }

    #[test]
    fn a_worker_counts_the_cpu_its_connections_spend_and_nothing_while_idle() {
        let stats = Arc::new(ServerStats::default());
        let workers = Workers::start("w-cpu", 1, stats.clone()).unwrap();
        let counted = || stats.data_cpu_ns.load(Ordering::Relaxed);
        let (done, finished) = std::sync::mpsc::channel();
        workers.spawn(async move {
            thread_cpu::spin(Duration::from_millis(30));
            let _ = done.send(());
        });
        finished.recv().unwrap();
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
    }
}
