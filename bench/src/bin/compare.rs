//! Comparison runner: handoff next to the peer users already trust, on the same file, in the
//! same run, alternating, reporting ratios.
//!
//! Suite `tcp`: `handoff get` over the plain-TCP data channel (sendfile on the server) vs
//! `curl` from nginx with `sendfile on`, both on 127.0.0.1, page cache warm.
//!
//!   cargo build --release && cargo run --release -p handoff-bench --bin compare -- --size-mib 1024 --runs 5
//!
//! Writes `bench/results/tcp-loopback.json` and `.md`. Needs nginx and curl
//! (`hw-setup/install-deps.sh --bench`).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use handoff::Identity;
use rand::{RngCore, SeedableRng};
use serde_json::json;

struct Args {
    size_mib: u64,
    runs: usize,
    bin_dir: PathBuf,
    out_dir: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        size_mib: 1024,
        runs: 5,
        bin_dir: PathBuf::from("target/release"),
        out_dir: PathBuf::from("bench/results"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--size-mib" => a.size_mib = val()?.parse()?,
            "--runs" => a.runs = val()?.parse()?,
            "--bin-dir" => a.bin_dir = val()?.into(),
            "--out-dir" => a.out_dir = val()?.into(),
            "--help" | "-h" => {
                println!("compare [--size-mib N (1024)] [--runs N (5)] [--bin-dir target/release] [--out-dir bench/results]");
                std::process::exit(0);
            }
            other => bail!("unknown flag {other} (see --help)"),
        }
    }
    Ok(a)
}

/// Utime + stime of a process and its children threads, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    let read = |pid: u32| -> f64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return 0.0;
        };
        // Fields after the parenthesised command name.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            return 0.0;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ut: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        (ut + st) / ticks
    };
    let mut total = read(pid);
    if let Ok(children) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        for c in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            total += read(c);
        }
    }
    total
}

struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn make_file(path: &Path, mib: u64) -> Result<()> {
    if path
        .metadata()
        .map(|m| m.len() == mib << 20)
        .unwrap_or(false)
    {
        return Ok(());
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..mib {
        rng.fill_bytes(&mut block);
        f.write_all(&block)?;
    }
    f.flush()?;
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_nginx(work: &Path, root: &Path) -> Result<(Guard, u16, u32)> {
    let port = free_port()?;
    let conf = work.join("nginx.conf");
    let tmp = work.join("nginx-tmp");
    std::fs::create_dir_all(&tmp)?;
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\ndaemon off;\npid {w}/nginx.pid;\nerror_log {w}/nginx.err;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  sendfile on;\n  tcp_nopush on;\n  access_log off;\n\
               client_body_temp_path {t}; proxy_temp_path {t}; fastcgi_temp_path {t}; uwsgi_temp_path {t}; scgi_temp_path {t};\n\
               server {{ listen 127.0.0.1:{port}; root {r}; }}\n}}\n",
            w = work.display(),
            t = tmp.display(),
            r = root.display(),
        ),
    )?;
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(work)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nginx (install it with hw-setup/install-deps.sh --bench)")?;
    let pid = child.id();
    let guard = Guard(child);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok((guard, port, pid));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "nginx did not start; see {}",
        work.join("nginx.err").display()
    )
}

fn start_handoffd(
    bin: &Path,
    work: &Path,
    root: &Path,
    clients: &Path,
) -> Result<(Guard, String, u32)> {
    let state = work.join("state");
    let _ = std::fs::remove_dir_all(&state);
    let mut child = Command::new(bin.join("handoffd"))
        .arg("--root")
        .arg(root)
        .arg("--state")
        .arg(&state)
        .arg("--clients")
        .arg(clients)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| {
            format!(
                "starting {}/handoffd (cargo build --release first)",
                bin.display()
            )
        })?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("control="))
        .with_context(|| format!("handoffd did not start: {line:?}"))?
        .to_string();
    let pid = child.id();
    Ok((Guard(child), addr, pid))
}

/// Runs `cmd` with stdout to /dev/null and returns MiB/s for `bytes`.
fn timed(mut cmd: Command, bytes: u64) -> Result<f64> {
    let start = Instant::now();
    let status = cmd.stdout(Stdio::null()).status()?;
    let secs = start.elapsed().as_secs_f64();
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(bytes as f64 / (1u64 << 20) as f64 / secs)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let work = PathBuf::from("target/bench-work")
        .canonicalize()
        .or_else(|_| {
            std::fs::create_dir_all("target/bench-work")?;
            PathBuf::from("target/bench-work").canonicalize()
        })?;
    let root = work.join("root");
    std::fs::create_dir_all(&root)?;
    let file = root.join("bench.bin");
    eprintln!("compare: preparing a {} MiB file", args.size_mib);
    make_file(&file, args.size_mib)?;
    let bytes = args.size_mib << 20;
    let id = Identity::generate("bench")?;
    let id_file = work.join("bench.id");
    std::fs::write(&id_file, id.to_line())?;

    let (_nginx, port, nginx_pid) = start_nginx(&work, &root)?;
    let (_handoffd, addr, handoffd_pid) = start_handoffd(&args.bin_dir, &work, &root, &id_file)?;
    // Warm the page cache so both read from memory.
    std::io::copy(&mut std::fs::File::open(&file)?, &mut std::io::sink())?;

    let curl = || {
        let mut c = Command::new("curl");
        c.args([
            "-s",
            "-o",
            "/dev/null",
            &format!("http://127.0.0.1:{port}/bench.bin"),
        ]);
        c
    };
    let handoff = || {
        let mut c = Command::new(args.bin_dir.join("handoff"));
        c.args(["--server", &addr, "--identity"])
            .arg(&id_file)
            .args(["get", "bench.bin", "--channel", "tcp"]);
        c.env("HANDOFF_KEYS", work.join("keys"));
        c
    };
    let (mut nginx_rates, mut handoff_rates) = (Vec::new(), Vec::new());
    let (mut nginx_cpu, mut handoff_cpu) = (0.0, 0.0);
    for run in 0..args.runs {
        // Alternate the order so neither always runs on a warmer machine.
        for which in if run % 2 == 0 { [0, 1] } else { [1, 0] } {
            if which == 0 {
                let before = cpu_seconds(nginx_pid);
                nginx_rates.push(timed(curl(), bytes)?);
                nginx_cpu += cpu_seconds(nginx_pid) - before;
            } else {
                let before = cpu_seconds(handoffd_pid);
                handoff_rates.push(timed(handoff(), bytes)?);
                handoff_cpu += cpu_seconds(handoffd_pid) - before;
            }
        }
        eprintln!(
            "run {run}: nginx+curl {:.0} MiB/s, handoff get {:.0} MiB/s",
            nginx_rates[run], handoff_rates[run]
        );
    }
    let gib_total = (bytes as f64 / (1u64 << 30) as f64) * args.runs as f64;
    let (n, h) = (median(&mut nginx_rates), median(&mut handoff_rates));
    let result = json!({
        "suite": "tcp-loopback",
        "date": String::from_utf8_lossy(&Command::new("date").arg("-u").arg("+%Y-%m-%dT%H:%MZ").output()?.stdout).trim(),
        "machine": format!("{} cores, {}", std::thread::available_parallelism().map_or(0, |n| n.get()), std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim()),
        "size_mib": args.size_mib,
        "runs": args.runs,
        "results": [
            { "tool": "nginx sendfile + curl", "op": "read", "mib_per_s": n, "server_cpu_s_per_gib": nginx_cpu / gib_total },
            { "tool": "handoff get (tcp)", "op": "read", "mib_per_s": h, "server_cpu_s_per_gib": handoff_cpu / gib_total, "ratio": h / n },
        ],
    });
    std::fs::create_dir_all(&args.out_dir)?;
    std::fs::write(
        args.out_dir.join("tcp-loopback.json"),
        serde_json::to_string_pretty(&result)? + "\n",
    )?;
    let table = format!(
        "| tool | op | size | MiB/s (median of {runs}) | server CPU s/GiB | ratio |\n|---|---|---|---|---|---|\n\
         | nginx `sendfile on` + curl | read | {size} MiB | {n:.0} | {nc:.2} | 1.00 |\n\
         | handoff get --channel tcp | read | {size} MiB | {h:.0} | {hc:.2} | **{r:.2}** |\n",
        runs = args.runs,
        size = args.size_mib,
        nc = nginx_cpu / gib_total,
        hc = handoff_cpu / gib_total,
        r = h / n,
    );
    std::fs::write(args.out_dir.join("tcp-loopback.md"), &table)?;
    print!("{table}");
    Ok(())
}
