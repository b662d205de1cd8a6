//! The mount: the same fio jobs (bs=1M, O_DIRECT, libaio, queue depths 1 and 8, write then
//! read) on a `handoff mount` whose data channels are RDMA and on the kernel's own NFSv4.1
//! over RDMA (knfsd exporting a tmpfs, mounted back over the same rxe device), next to
//! `ib_write_bw` / `ib_read_bw` at the same 1 MiB. Runs only in the rxe guest.
//!
//! Trials are interleaved (perftest, then every fio job on both mounts, the order of the two
//! mounts alternating from trial to trial), so a ratio pairs numbers taken moments apart; a
//! row's rate is the median of its trials and its ratios the median of the pairs, with their
//! range.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{size_label, Ctx};
use crate::knfsd::KnfsdMount;
use crate::process::{machine_busy_seconds, process_cpu, Proc};
use crate::results::{median, Ratio, Row};
use crate::servers::start_handoffd;

const PORT: u16 = 7491;
/// fio's block size, and so the bytes per FUSE / NFS request.
const BLOCK: u64 = 1 << 20;
const HANDOFF: &str = "handoff mount";
const NFS: &str = "NFSv4.1/RDMA";
/// fio jobs in the order one trial runs them (writes first: they lay out the file).
const JOBS: [(&str, u64); 4] = [("write", 1), ("write", 8), ("read", 1), ("read", 8)];

/// A `handoff mount --foreground` child, unmounted and stopped when dropped.
struct FuseMount {
    dir: PathBuf,
    log: PathBuf,
    proc: Proc,
}

impl FuseMount {
    fn start(ctx: &Ctx, server: &str, dir: &Path) -> Result<FuseMount> {
        std::fs::create_dir_all(dir)?;
        let log = dir.with_extension("log");
        let proc = Proc::spawn(
            Command::new(ctx.bin_dir.join("handoff"))
                .arg("--server")
                .arg(server)
                .arg("--identity")
                .arg(&ctx.clients_file)
                .args(["mount", "--foreground", "--channel", "rdma", "--log"])
                .arg(&log)
                .arg(dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit()),
        )
        .context("starting handoff mount")?;
        let mut me = FuseMount {
            dir: dir.to_path_buf(),
            log,
            proc,
        };
        let started = Instant::now();
        while !crate::process::mounted(dir) {
            if let Some(status) = me.proc.0.try_wait()? {
                bail!("handoff mount exited ({status}); its log:\n{}", me.log());
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!(
                    "handoff mount did not mount within 60 s; its log:\n{}",
                    me.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(me)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(&self.dir)
            .stderr(Stdio::null())
            .status();
        // `proc` is killed and reaped when it drops, after this.
    }
}

/// One fio job's result.
struct Fio {
    bytes: u64,
    secs: f64,
}

/// Runs one fio job on `file`; fails unless it moved every byte.
fn fio(file: &Path, op: &str, depth: u64, size: u64) -> Result<Fio> {
    let out = Command::new("fio")
        .args(["--name=job", "--ioengine=libaio", "--direct=1"])
        .args(["--fallocate=none", "--output-format=json"])
        .arg(format!("--bs={BLOCK}"))
        .arg(format!("--rw={op}"))
        .arg(format!("--iodepth={depth}"))
        .arg(format!("--size={size}"))
        .arg(format!("--filename={}", file.display()))
        .stdin(Stdio::null())
        .output()
        .context("running fio (hw-setup/install-deps.sh --rdma installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "fio {op} QD{depth} on {} failed: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // fio may print notices before its JSON.
    let json = text.find('{').map_or("", |i| &text[i..]);
    let report: serde_json::Value =
        serde_json::from_str(json).with_context(|| format!("fio printed no JSON: {text}"))?;
    let job = &report["jobs"][0][op];
    let bytes = job["io_bytes"].as_u64().unwrap_or(0);
    let ms = job["runtime"].as_f64().unwrap_or(0.0);
    if bytes != size || ms <= 0.0 {
        bail!(
            "fio {op} QD{depth} on {} moved {bytes} of {size} bytes",
            file.display()
        );
    }
    Ok(Fio {
        bytes,
        secs: ms / 1000.0,
    })
}

/// What one row collects across its trials.
#[derive(Default)]
struct Samples {
    rates: Vec<f64>,
    bytes: u64,
    secs: f64,
    server_cpu: f64,
    machine_cpu: f64,
    /// The handoff mount process's own CPU (the client side of the FUSE copies).
    client_cpu: f64,
}

type Key = (&'static str, &'static str, u64);

pub fn run(ctx: &Ctx, rows: &mut Vec<Row>) -> Result<()> {
    let Some(ip) = ctx.rdma_ips.first() else {
        bail!("the mount suite needs --rdma-ips (the guest sets HANDOFF_GUEST_IPS)");
    };
    if !Path::new("/dev/fuse").exists() {
        crate::process::run("modprobe", &["fuse"])?;
    }
    let size: u64 = if ctx.smoke { 16 << 20 } else { 256 << 20 };
    let trials = if ctx.smoke { 1 } else { 3 };
    let root = ctx.dir("mount-root")?;
    let listen = [format!("{ip}:{PORT}")];
    let srv = start_handoffd(&ctx.bin_dir, &ctx.work, &root, &ctx.clients_file, &listen)?;
    let handoff = FuseMount::start(ctx, &srv.addr, &ctx.work.join("handoff-mnt"))?;
    let nfs = KnfsdMount::start(&ctx.work, ip)?;
    let mut samples: BTreeMap<Key, Samples> = BTreeMap::new();
    for trial in 0..trials {
        for (tool, verb) in [("ib_write_bw", "write"), ("ib_read_bw", "read")] {
            let machine0 = machine_busy_seconds();
            let row = super::rdma::perftest(ctx, verb, BLOCK, size)?;
            let s = samples.entry((tool, verb, 0)).or_default();
            s.machine_cpu += machine_busy_seconds() - machine0;
            s.rates.push(row.rate);
            s.bytes += row.bytes;
            s.secs += row.secs;
            eprintln!("mount trial {trial} {tool}: {:.1} MiB/s", row.rate);
        }
        for (op, depth) in JOBS {
            let mut order = [(HANDOFF, &handoff.dir), (NFS, &nfs.dir)];
            if trial % 2 == 1 {
                order.reverse();
            }
            for (tool, dir) in order {
                // Each fio job opens the file anew, and each open's data channels (threads
                // on both sides) end with it: whole-process times count them.
                let server = process_cpu(srv.proc.pid());
                let client = process_cpu(handoff.proc.pid());
                let machine0 = machine_busy_seconds();
                let got = fio(&dir.join("fio.dat"), op, depth, size).with_context(|| {
                    if tool == HANDOFF {
                        format!("the mount's log:\n{}", handoff.log())
                    } else {
                        String::new()
                    }
                })?;
                let s = samples.entry((tool, op, depth)).or_default();
                s.machine_cpu += machine_busy_seconds() - machine0;
                if tool == HANDOFF {
                    s.server_cpu += process_cpu(srv.proc.pid()) - server;
                    s.client_cpu += process_cpu(handoff.proc.pid()) - client;
                }
                let rate = Row::mib_per_s(got.bytes, got.secs);
                s.rates.push(rate);
                s.bytes += got.bytes;
                s.secs += got.secs;
                eprintln!("mount trial {trial} {tool} {op} QD{depth}: {rate:.1} MiB/s");
            }
        }
    }
    rows.extend(rows_of(&samples));
    Ok(())
}

/// The suite's rows from its samples: medians, and each row's ratios to its peers.
fn rows_of(samples: &BTreeMap<Key, Samples>) -> Vec<Row> {
    let mut out = Vec::new();
    for (&(tool, op, depth), s) in samples {
        let mut ratios = Vec::new();
        if tool == HANDOFF {
            if let Some(nfs) = samples.get(&(NFS, op, depth)) {
                ratios.extend(Ratio::paired(&format!("{NFS} {op}"), &s.rates, &nfs.rates));
            }
        }
        // Either mount moves its bytes as the server-initiated handoff RDMA path does.
        let peer = super::rdma::perftest_peer("handoff rdma", op)
            .filter(|_| tool == HANDOFF || tool == NFS);
        if let Some(verb) = peer {
            let peer = if verb == "write" {
                "ib_write_bw"
            } else {
                "ib_read_bw"
            };
            if let Some(p) = samples.get(&(peer, verb, 0)) {
                ratios.extend(Ratio::paired(&format!("{peer} {verb}"), &s.rates, &p.rates));
            }
        }
        let gib = s.bytes as f64 / f64::from(1u32 << 30);
        let note = match tool {
            HANDOFF => format!(
                "mount process {:.2} s/GiB; fio bs={}, O_DIRECT, libaio",
                s.client_cpu / gib,
                size_label(BLOCK)
            ),
            NFS => format!("knfsd, tmpfs export, rsize=wsize={}", size_label(BLOCK)),
            _ => format!(
                "rxe0: RDMA {}, what a {} through either mount is on the wire",
                op.to_uppercase(),
                if op == "read" { "write" } else { "read" }
            ),
        };
        out.push(Row {
            suite: "mount".into(),
            tool: tool.into(),
            op: op.into(),
            size: BLOCK,
            depth,
            bytes: s.bytes,
            secs: s.secs,
            rate: median(&s.rates).unwrap_or(0.0),
            trials: s.rates.clone(),
            server_cpu_s_per_gib: (tool == HANDOFF)
                .then(|| Row::cpu_per_gib(s.server_cpu, s.bytes))
                .flatten(),
            machine_cpu_s_per_gib: Row::cpu_per_gib(s.machine_cpu, s.bytes),
            // The first ratio is the headline one (÷ NFS for the mount, ÷ perftest else).
            ratio: ratios.first().map(|r| r.median),
            limit: ratios.first().map(|r| r.limit.clone()),
            ratios,
            note: Some(note),
            ..Row::default()
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampled(rates: &[f64]) -> Samples {
        Samples {
            rates: rates.to_vec(),
            bytes: 3 << 30,
            secs: 30.0,
            ..Samples::default()
        }
    }

    #[test]
    fn the_mount_is_compared_with_nfs_and_perftest_trial_by_trial() {
        let mut samples = BTreeMap::new();
        samples.insert((HANDOFF, "read", 8), sampled(&[50.0, 60.0, 40.0]));
        samples.insert((NFS, "read", 8), sampled(&[50.0, 50.0, 50.0]));
        samples.insert(("ib_write_bw", "write", 0), sampled(&[100.0, 100.0, 80.0]));
        let rows = rows_of(&samples);
        let mount = rows.iter().find(|r| r.tool == HANDOFF).unwrap();
        assert_eq!(mount.rate, 50.0);
        assert_eq!(mount.depth, 8);
        assert_eq!(mount.ratios.len(), 2);
        let nfs = &mount.ratios[0];
        assert_eq!(nfs.limit, "NFSv4.1/RDMA read");
        assert_eq!((nfs.median, nfs.min, nfs.max), (1.0, 0.8, 1.2));
        assert!(nfs.spread() > 0.19, "±20 % is noisy");
        let perftest = &mount.ratios[1];
        assert_eq!(perftest.limit, "ib_write_bw write");
        assert_eq!(perftest.median, 0.5, "pairs 0.5, 0.6, 0.5");
        assert_eq!(mount.ratio, Some(1.0));
        let nfs_row = rows.iter().find(|r| r.tool == NFS).unwrap();
        assert_eq!(
            nfs_row.ratios.len(),
            1,
            "NFS is compared with perftest only"
        );
    }
}
