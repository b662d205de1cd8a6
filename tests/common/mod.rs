//! Harness for end-to-end tests: real `handoffd` processes on 127.0.0.1 and the real `handoff`
//! CLI, asserting what a user sees (bytes by checksum, exit codes, JSON reports).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod cluster;
pub mod mounted;

use handoff::Identity;
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

pub const HANDOFF: &str = env!("CARGO_BIN_EXE_handoff");
/// The server binary: built by the `handoff-server` package next to the CLI (cargo builds a
/// package's own binaries for its tests only, so `hw-setup/test-all.sh` and
/// `hw-setup/test-rdma.sh` build it first: `cargo build --workspace --bins`).
pub static HANDOFFD: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let path = Path::new(HANDOFF).with_file_name("handoffd");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins{}` before these tests \
         (hw-setup/test-all.sh does)",
        path.display(),
        if cfg!(debug_assertions) {
            ""
        } else {
            " --release"
        }
    );
    path.to_string_lossy().into_owned()
});

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub addr: String,
    pub data_addr: String,
    /// Where `/metrics` is served (with `--metrics-listen`).
    pub metrics_addr: Option<String>,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    /// A program (and its arguments) that runs handoffd, e.g. `prlimit --fsize=N --`.
    wrapper: Vec<String>,
    /// Started as `handoffd --config FILE` with the listen address in `HANDOFFD_LISTEN`,
    /// every other setting in the file.
    config: Option<PathBuf>,
    child: Option<Child>,
    starts: u32,
}

/// A client identity written to a file, as `handoff keygen` would.
pub struct TestClient {
    pub identity: Identity,
    pub path: PathBuf,
}

pub fn client(dir: &Path, name: &str) -> TestClient {
    let identity = Identity::generate(name, &mut rand::rngs::OsRng).unwrap();
    let path = dir.join(format!("{name}.id"));
    write_private(&path, &(identity.to_line() + "\n"));
    TestClient { identity, path }
}

impl TestServer {
    /// Starts `handoffd` serving `<tmp>/root` for the given clients.
    pub fn start(clients: &[&TestClient], extra: &[&str]) -> Self {
        Self::start_with_env(clients, extra, &[])
    }

    /// [`TestServer::start`] with extra environment variables for `handoffd`.
    pub fn start_with_env(clients: &[&TestClient], extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut s = Self::prepare(clients, extra, env, &[]);
        s.spawn();
        s
    }

    /// [`TestServer::start`] with the control channel on `listen` (an address and port 0).
    pub fn start_on(
        clients: &[&TestClient],
        listen: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut s = Self::prepare(clients, extra, env, &[]);
        s.addr = listen.to_owned();
        s.spawn();
        s
    }

    /// Starts `handoffd` through `wrapper` (a program and its arguments, e.g. `prlimit`).
    pub fn start_wrapped(clients: &[&TestClient], extra: &[&str], wrapper: &[&str]) -> Self {
        let mut s = Self::prepare(clients, extra, &[], wrapper);
        s.spawn();
        s
    }

    /// The directory, root and clients file of a server not started yet.
    fn prepare(
        clients: &[&TestClient],
        extra: &[&str],
        env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("root")).unwrap();
        let lines: Vec<String> = clients.iter().map(|c| c.identity.to_line()).collect();
        write_private(&dir.path().join("clients"), &(lines.join("\n") + "\n"));
        TestServer {
            dir,
            addr: "127.0.0.1:0".into(),
            data_addr: String::new(),
            metrics_addr: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            wrapper: wrapper.iter().map(|w| w.to_string()).collect(),
            config: None,
            child: None,
            starts: 0,
        }
    }

    /// Starts `handoffd --config FILE` and nothing else on its command line: the file sets
    /// the root, state and clients (and `settings`, lines of TOML), the environment
    /// (`HANDOFFD_LISTEN`, and `env`) the rest.
    pub fn start_configured(clients: &[&TestClient], settings: &str, env: &[(&str, &str)]) -> Self {
        let mut s = Self::prepare(clients, &[], env, &[]);
        let path = s.dir.path().join("handoffd.toml");
        let text = format!(
            "root = {:?}\nstate = {:?}\nclients = {:?}\n{settings}\n",
            s.root(),
            s.dir.path().join("state"),
            s.clients_file()
        );
        std::fs::write(&path, text).unwrap();
        s.config = Some(path);
        s.spawn();
        s
    }

    /// The `--config` file of a server started by [`TestServer::start_configured`].
    pub fn config_file(&self) -> PathBuf {
        self.config.clone().expect("started from a config file")
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn clients_file(&self) -> PathBuf {
        self.dir.path().join("clients")
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(
            self.dir
                .path()
                .join(format!("handoffd.{}.log", self.starts)),
        )
        .unwrap();
        let mut child = self
            .handoffd(&self.addr)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn handoffd");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with("handoffd listening"),
            "handoffd did not start: {line:?}\n{}",
            self.log()
        );
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(str::to_owned)
        };
        self.addr = field("control=").unwrap();
        self.data_addr = field("data=").unwrap();
        self.metrics_addr = field("metrics=");
        self.child = Some(child);
    }

    /// `handoffd` (through the wrapper, if any) with this server's arguments.
    fn handoffd(&self, listen: &str) -> Command {
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&*HANDOFFD);
                c
            }
            None => Command::new(&*HANDOFFD),
        };
        if let Some(config) = &self.config {
            cmd.arg("--config")
                .arg(config)
                .env("HANDOFFD_LISTEN", listen)
                .args(&self.extra);
            return cmd;
        }
        cmd.arg("--root")
            .arg(self.root())
            .arg("--state")
            .arg(self.dir.path().join("state"))
            .arg("--clients")
            .arg(self.clients_file())
            .arg("--listen")
            .arg(listen)
            .args(&self.extra);
        cmd
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(
            self.dir
                .path()
                .join(format!("handoffd.{}.log", self.starts)),
        )
        .unwrap_or_default()
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Runs `handoffd` with this server's arguments plus `extra` (the server itself stopped
    /// first), expecting it to refuse to start: its exit code and stderr. Panics if it is
    /// still running after 20 s.
    pub fn start_refused(&mut self, extra: &[&str]) -> Out {
        self.kill9();
        let mut child = self
            .handoffd("127.0.0.1:0")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn handoffd");
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("handoffd started (or hung) where it should have refused");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        }
    }

    /// Starts again with `extra` arguments added for good.
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.kill9();
        self.extra.extend(extra.iter().map(|s| s.to_string()));
        self.spawn();
    }

    /// Stops with SIGTERM (a clean stop: the server settles its state), waits up to 30 s
    /// for it to exit 0, and starts again as [`TestServer::restart`] does.
    pub fn restart_clean(&mut self) {
        let pid = self.pid().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        assert_eq!(self.wait_exit(Duration::from_secs(30)), Some(0));
        self.spawn();
    }

    /// Starts again with the same --state, root, clients and control address.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Waits up to `limit` for the server to exit on its own; its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        wait_exit(&mut self.child, limit)
    }

    /// Drops the extra environment (test hooks) for later starts.
    pub fn clear_env(&mut self) {
        self.env.clear();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    pub fn cli(&self, who: &TestClient) -> Cli {
        Cli {
            server: self.addr.clone(),
            identity: who.path.clone(),
            keys: self.dir.path().join(format!("{}.keys", who.identity.name)),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct Cli {
    pub server: String,
    pub identity: PathBuf,
    pub keys: PathBuf,
}

#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Out {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).trim().to_string()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// Asserts the exit code, showing stderr when it differs.
    pub fn expect(self, code: i32) -> Self {
        assert_eq!(self.code, code, "exit code; stderr: {}", self.stderr);
        self
    }
}

impl Cli {
    pub fn run(&self, args: &[&str]) -> Out {
        self.run_with(args, None)
    }

    /// Starts the CLI without waiting for it (stdin empty, output captured).
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn handoff")
    }

    /// Runs the CLI; panics (after killing it) if it takes longer than `limit`.
    pub fn run_within(&self, limit: Duration, args: &[&str]) -> Out {
        let mut child = self.spawn(args);
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > limit {
                let _ = child.kill();
                panic!("`handoff {}` took longer than {limit:?}", args.join(" "));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        finish(child)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(HANDOFF);
        cmd.arg("--server")
            .arg(&self.server)
            .arg("--identity")
            .arg(&self.identity)
            .args(args)
            .env("HANDOFF_KEYS", &self.keys)
            .env_remove("HANDOFF_SERVER")
            .env_remove("HANDOFF_IDENTITY");
        cmd
    }

    pub fn run_with(&self, args: &[&str], stdin: Option<&[u8]>) -> Out {
        let mut child = self
            .command(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn handoff");
        let feeder = stdin.map(|data| {
            let mut pipe = child.stdin.take().unwrap();
            let data = data.to_vec();
            std::thread::spawn(move || {
                let _ = pipe.write_all(&data);
            })
        });
        let out = finish(child);
        if let Some(f) = feeder {
            f.join().unwrap();
        }
        out
    }

    /// `open` with args; returns the printed key.
    pub fn open(&self, args: &[&str]) -> String {
        let mut all = vec!["open"];
        all.extend_from_slice(args);
        let out = self.run(&all).expect(0);
        let key = out.text();
        assert_eq!(key.lines().count(), 1, "open prints one line: {key:?}");
        key
    }
}

/// Writes a file of secrets (an identity, a clients list) readable by its owner only, as
/// `handoff keygen -o` does; the CLI and the server refuse looser ones.
pub fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Waits for a CLI process and collects what it printed.
pub fn finish(child: Child) -> Out {
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "the CLI panicked: {stderr}");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr,
    }
}

pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

pub fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// All of the file behind a duplicate handle, read from offset 0.
pub async fn read_all(h: &mut handoff::DataHandle) -> Vec<u8> {
    read_range(h, 0, u64::MAX).await
}

/// Up to `len` bytes at `offset` through `h`.
pub async fn read_range(h: &mut handoff::DataHandle, offset: u64, len: u64) -> Vec<u8> {
    let mut got = Vec::new();
    h.read_to(offset, len, &mut |c| {
        got.extend_from_slice(c);
        Ok(())
    })
    .await
    .unwrap();
    got
}

/// Retries `f` until it returns Some or `limit` passes.
pub fn eventually<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "condition not met within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Descriptors process `pid` holds open now (0 if it is gone).
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Raises this process's descriptor limit to its hard limit (a test holding thousands of
/// connections needs them); returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    l.current = l.maximum;
    let _ = setrlimit(Resource::Nofile, l);
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Waits up to `limit` for `child` to exit by itself; its exit code (the child is then gone).
pub fn wait_exit(child: &mut Option<Child>, limit: Duration) -> Option<i32> {
    let start = Instant::now();
    let running = child.as_mut().expect("running");
    loop {
        if let Some(status) = running.try_wait().unwrap() {
            *child = None;
            return status.code();
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET /metrics` from a server's `--metrics-listen` address: the body.
pub fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.to_owned()
}

/// The value of the series `name{labels}` exactly as written (0 if absent).
pub fn series(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}
