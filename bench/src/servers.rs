//! The servers a run measures: handoffd, and nginx as the HTTP peer (sendfile for plain
//! HTTP, TLS with the same file, WebDAV PUT for uploads).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process::{free_port, wait_listening, Proc};

pub struct Handoffd {
    pub proc: Proc,
    /// Control-channel address.
    pub addr: String,
    pub state: PathBuf,
}

/// Starts handoffd on 127.0.0.1 (any port) with a fresh `--state` under `work`, serving
/// `root`, with one `--rdma-listen` per address in `rdma`.
pub fn start_handoffd(
    bin_dir: &Path,
    work: &Path,
    root: &Path,
    clients: &Path,
    rdma: &[String],
) -> Result<Handoffd> {
    let extra: Vec<&str> = rdma
        .iter()
        .flat_map(|a| ["--rdma-listen", a.as_str()])
        .collect();
    start_handoffd_with(bin_dir, work, root, clients, &extra)
}

/// [`start_handoffd`] with any other handoffd arguments.
pub fn start_handoffd_with(
    bin_dir: &Path,
    work: &Path,
    root: &Path,
    clients: &Path,
    extra: &[&str],
) -> Result<Handoffd> {
    let state = work.join("state");
    let _ = std::fs::remove_dir_all(&state);
    let mut cmd = Command::new(bin_dir.join("handoffd"));
    cmd.arg("--root")
        .arg(root)
        .arg("--state")
        .arg(&state)
        .arg("--clients")
        .arg(clients)
        .args(["--listen", "127.0.0.1:0", "--grace", "0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd.args(extra);
    let mut proc = Proc::spawn(&mut cmd).with_context(|| {
        format!(
            "starting {}/handoffd (build it with cargo build --release)",
            bin_dir.display()
        )
    })?;
    let stdout = proc.0.stdout.take().context("handoffd stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("control="))
        .with_context(|| format!("handoffd did not start: {line:?}"))?
        .to_string();
    Ok(Handoffd { proc, addr, state })
}

/// A single-member etcd with its data under the run's scratch space.
pub struct Etcd {
    pub proc: Proc,
    pub port: u16,
}

/// Starts etcd on 127.0.0.1 (the cluster store handoffd's `--store etcd://` uses).
pub fn start_etcd(work: &Path) -> Result<Etcd> {
    let dir = work.join("etcd");
    let _ = std::fs::remove_dir_all(&dir);
    let (port, peer) = (free_port()?, free_port()?);
    let proc = Proc::spawn(
        Command::new("etcd")
            .arg("--name=bench")
            .arg(format!("--data-dir={}", dir.display()))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{port}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{port}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!("--initial-cluster=bench=http://127.0.0.1:{peer}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .context("starting etcd (hw-setup/install-deps.sh installs Debian's etcd-server)")?;
    wait_listening(port, Duration::from_secs(20), "etcd")?;
    Ok(Etcd { proc, port })
}

pub struct Nginx {
    pub proc: Proc,
    pub http: u16,
    pub https: u16,
}

/// Starts nginx (one worker, `sendfile on`, access log off) serving `root` over HTTP and
/// HTTPS (a self-signed certificate made with openssl), and accepting PUT under /up/.
pub fn start_nginx(work: &Path, root: &Path) -> Result<Nginx> {
    let dir = work.join("nginx");
    std::fs::create_dir_all(dir.join("tmp"))?;
    std::fs::create_dir_all(root.join("up"))?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if !cert.exists() {
        let status = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=127.0.0.1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::null())
            .status()
            .context("running openssl (hw-setup/install-deps.sh --bench installs it)")?;
        if !status.success() {
            bail!("openssl could not make the nginx test certificate");
        }
    }
    let (http, https) = (free_port()?, free_port()?);
    // As root, nginx's workers would run as nobody and could not store PUTs under `root`.
    let user = if running_as_root() {
        "user root;\n"
    } else {
        ""
    };
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "{user}worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  sendfile on;\n  tcp_nopush on;\n  access_log off;\n  keepalive_requests 1000000;\n\
             \x20 client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;\n\
             \x20 uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n\
             \x20 server {{\n    listen 127.0.0.1:{http};\n    listen 127.0.0.1:{https} ssl;\n\
             \x20   ssl_certificate {c};\n    ssl_certificate_key {k};\n    root {r};\n\
             \x20   location /up/ {{ dav_methods PUT; client_max_body_size 0; client_body_buffer_size 1m; }}\n  }}\n}}\n",
            d = dir.display(),
            c = cert.display(),
            k = key.display(),
            r = root.display(),
        ),
    )?;
    let proc = Proc::spawn(
        Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .context("starting nginx (hw-setup/install-deps.sh --bench installs it)")?;
    wait_listening(http, Duration::from_secs(10), "nginx")
        .with_context(|| format!("see {}", dir.join("error.log").display()))?;
    wait_listening(https, Duration::from_secs(10), "nginx")?;
    Ok(Nginx { proc, http, https })
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next().map(|u| u == "0"))
        .unwrap_or(false)
}
