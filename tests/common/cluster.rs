//! Harness for the cluster tests: a real `etcd` on 127.0.0.1 and `handoffd` nodes that use it
//! as their store, each on a control port chosen before it starts (a passive node binds only
//! when it becomes active).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::HANDOFFD;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One etcd member with its data directory; restartable on the same ports and data.
pub struct Etcd {
    dir: tempfile::TempDir,
    pub client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    starts: u32,
}

impl Etcd {
    pub fn start() -> Self {
        let mut e = Etcd {
            dir: tempfile::tempdir().unwrap(),
            client_port: free_port(),
            peer_port: free_port(),
            child: None,
            starts: 0,
        };
        e.spawn();
        e
    }

    pub fn url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.client_port)
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.path().join(format!("etcd.{}.log", self.starts)))
            .unwrap();
        let child = Command::new("etcd")
            .arg("--name=test")
            .arg(format!("--data-dir={}", self.dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start etcd ({e}): install it with hw-setup/install-deps.sh (Debian etcd-server)")
            });
        self.child = Some(child);
        let start = Instant::now();
        while !self.healthy() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "etcd did not become healthy"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn healthy(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.client_port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_err() {
            return false;
        }
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.contains("\"health\":\"true\"")
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same ports with the same data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One `handoffd` of a cluster.
pub struct Node {
    pub name: String,
    pub addr: String,
    out: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// Starts node `name` over `root`, storing state in `etcd`; it becomes active or waits.
pub fn start_node(name: &str, dir: &Path, etcd: &Etcd, extra: &[&str]) -> Node {
    let addr = format!("127.0.0.1:{}", free_port());
    let out = dir.join(format!("{name}.out"));
    let log = dir.join(format!("{name}.log"));
    let child = Command::new(&*HANDOFFD)
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--state")
        .arg(dir.join(format!("state-{name}")))
        .arg("--clients")
        .arg(dir.join("clients"))
        .arg("--listen")
        .arg(&addr)
        .arg("--store")
        .arg(etcd.url())
        .arg("--cluster")
        .arg("test")
        .arg("--node")
        .arg(name)
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn handoffd");
    Node {
        name: name.into(),
        addr,
        out,
        log,
        child: Some(child),
    }
}

impl Node {
    pub fn is_active(&self) -> bool {
        std::fs::read_to_string(&self.out).is_ok_and(|s| s.contains("handoffd listening"))
    }

    /// Waits until this node serves; returns how long that took.
    pub fn wait_active(&self, limit: Duration) -> Duration {
        let start = Instant::now();
        while !self.is_active() {
            assert!(
                start.elapsed() < limit,
                "node {} did not become active within {limit:?}\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        start.elapsed()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {}", self.pid());
    }

    /// SIGSTOP: the process is frozen (its lease is not renewed) but its sockets stay open.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// Waits for the process to end by itself; its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        super::wait_exit(&mut self.child, limit)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(self.pid().to_string())
                .status();
        }
        self.kill9();
    }
}
