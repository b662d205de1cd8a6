//! The threads that serve every RDMA connection: a fixed few, each running the connections
//! given to it on a single-threaded runtime of its own (a connection waits for completions
//! through the runtime's reactor, not on a thread of its own). A new connection goes to the
//! thread serving the fewest, so the QPs of one client (one per NIC) land on different
//! threads.
//!
//! Why not one multi-threaded runtime: under soft-RoCE the thread that posts work does the
//! NIC's work too (packets built and copied inside `ibv_post_send`), for milliseconds at a
//! time; a connection woken behind it on the same worker waited (tokio's next-task slot is
//! not stolen), and reads striped over two NICs fell from 1.62 to 1.2 of one NIC's
//! `ib_write_bw`. Threads of their own keep two busy connections on two CPUs.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

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
    /// [`thread_cpu`]). They run until the process ends.
    pub fn start(name: &str, count: usize, stats: Arc<ServerStats>) -> std::io::Result<Self> {
        let mut threads = Vec::new();
        for _ in 0..count.max(1) {
            let (on_park, on_stop) = (stats.clone(), stats.clone());
            // (Start and stop are the blocking pool's threads: a file flush, say.)
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name(name)
                .on_thread_start(thread_cpu::started)
                .on_thread_park(move || thread_cpu::going_idle(&on_park.data_cpu_ns))
                .on_thread_stop(move || thread_cpu::count_spent(&on_stop.data_cpu_ns))
                .build()?;
            let handle = runtime.handle().clone();
            std::thread::Builder::new()
                .name(name.to_string())
                .spawn(move || {
                    thread_cpu::started();
                    runtime.block_on(std::future::pending::<()>());
                })?;
            threads.push(Worker {
                runtime: handle,
                load: Arc::default(),
            });
        }
        Ok(Self { threads })
    }

    /// Serves `connection` on the thread serving the fewest.
    pub fn spawn(&self, connection: impl Future<Output = ()> + Send + 'static) {
        let worker = self
            .threads
            .iter()
            .min_by_key(|w| w.load.load(Ordering::Relaxed))
            .expect("at least one worker");
        worker.load.fetch_add(1, Ordering::Relaxed);
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
    fn connections_go_to_the_least_busy_thread_and_give_it_back_when_they_end() {
        let workers = Workers::start("w-test", 2, Arc::default()).unwrap();
        let (release, wait) = tokio::sync::watch::channel(false);
        for _ in 0..3 {
            let mut wait = wait.clone();
            workers.spawn(async move {
                let _ = wait.wait_for(|done| *done).await;
            });
        }
        assert_eq!(workers.loads(), vec![2, 1]);
        release.send(true).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while workers.loads() != vec![0, 0] && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(workers.loads(), vec![0, 0]);
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
