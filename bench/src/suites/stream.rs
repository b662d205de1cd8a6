//! TCP and TLS on loopback: handoff's data channel next to nginx serving the same files to
//! curl (`sendfile on` for plain HTTP; TLS for HTTPS; WebDAV PUT for uploads). For each
//! request size S, both fetch (or store) an S-byte file total/S times over one connection,
//! connection setup included. The median of `runs` alternating runs is kept.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use handoff::{Channel, Client, Mode, OpenOptions};

use super::{make_file, open_key, size_label, Ctx};
use crate::process::CpuMeter;
use crate::results::{set_ratios, Row};
use crate::servers::{start_handoffd, start_nginx, Handoffd};

pub fn run(ctx: &Ctx, runs: usize, rows: &mut Vec<Row>) -> Result<()> {
    let root = ctx.dir("stream-root")?;
    for &size in &ctx.sizes {
        make_file(&root.join(file_name(size)), size)?;
    }
    let nginx = start_nginx(&ctx.work, &root)?;
    let srv = start_handoffd(&ctx.bin_dir, &ctx.work, &root, &ctx.clients_file, &[])?;
    let mut mine = Vec::new();
    for &size in &ctx.sizes {
        let n = (ctx.stream_total_for(size) / size).max(1);
        let cases: [(&str, &str); 8] = [
            ("nginx http", "read"),
            ("handoff tcp", "read"),
            ("nginx https", "read"),
            ("handoff tls", "read"),
            ("nginx http", "write"),
            ("handoff tcp", "write"),
            ("nginx https", "write"),
            ("handoff tls", "write"),
        ];
        let mut samples: Vec<Vec<Row>> = vec![Vec::new(); cases.len()];
        for run in 0..runs.max(1) {
            // Alternate the order so neither side always runs on a warmer machine.
            let order: Vec<usize> = if run % 2 == 0 {
                (0..cases.len()).collect()
            } else {
                (0..cases.len()).rev().collect()
            };
            for i in order {
                let (tool, op) = cases[i];
                let row = if tool.starts_with("nginx") {
                    let scheme = if tool.ends_with("https") {
                        "https"
                    } else {
                        "http"
                    };
                    let port = if scheme == "https" {
                        nginx.https
                    } else {
                        nginx.http
                    };
                    curl(&root, scheme, port, nginx.proc.pid(), op, size, n)
                } else {
                    let channel = if tool.ends_with("tls") {
                        Channel::Tls
                    } else {
                        Channel::Tcp
                    };
                    handoff(ctx, &srv, channel, op, size, n)
                }
                .with_context(|| format!("{tool} {op} at {}", size_label(size)))?;
                samples[i].push(Row {
                    suite: "stream".into(),
                    tool: tool.into(),
                    op: op.into(),
                    ..row
                });
            }
            let _ = std::fs::remove_dir_all(root.join("up"));
            std::fs::create_dir_all(root.join("up"))?;
        }
        for mut s in samples {
            s.sort_by(|a, b| a.rate.total_cmp(&b.rate));
            let mid = s.swap_remove(s.len() / 2);
            eprintln!(
                "stream {:>7} {} {}: {:.1} MiB/s",
                size_label(size),
                mid.tool,
                mid.op,
                mid.rate
            );
            mine.push(Row {
                note: Some(format!("median of {runs}, {n} requests per run")),
                ..mid
            });
        }
    }
    set_ratios(&mut mine, |r| match r.tool.as_str() {
        "handoff tcp" => Some(("nginx http".into(), r.op.clone())),
        "handoff tls" => Some(("nginx https".into(), r.op.clone())),
        _ => None,
    });
    rows.extend(mine);
    Ok(())
}

fn file_name(size: u64) -> String {
    format!("f{size}.bin")
}

/// curl fetching (or PUTting) the S-byte file `n` times over one kept-alive connection.
fn curl(
    root: &Path,
    scheme: &str,
    port: u16,
    pid: u32,
    op: &str,
    size: u64,
    n: u64,
) -> Result<Row> {
    let name = file_name(size);
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-f", "-k"]).stdout(Stdio::null());
    if op == "read" {
        cmd.arg(format!("{scheme}://127.0.0.1:{port}/{name}?[1-{n}]"));
    } else {
        cmd.arg("-T")
            .arg(root.join(&name))
            .arg(format!("{scheme}://127.0.0.1:{port}/up/w[1-{n}]"));
    }
    let cpu0 = CpuMeter::start(pid);
    let started = Instant::now();
    let status = cmd.status().context("running curl")?;
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu0.seconds();
    if !status.success() {
        bail!("curl {op} over {scheme} failed: {status}");
    }
    if op == "write" {
        let last = root.join("up").join(format!("w{n}"));
        if last.metadata().map(|m| m.len()).unwrap_or(0) != size {
            bail!("nginx did not store {}", last.display());
        }
    }
    Ok(Row::moved(size, size * n, secs, cpu))
}

/// handoff's data channel: open (control channel, untimed), then attach and read the S-byte
/// file `n` times (or write S bytes `n` times at successive offsets), timed.
fn handoff(
    ctx: &Ctx,
    srv: &Handoffd,
    channel: Channel,
    op: &str,
    size: u64,
    n: u64,
) -> Result<Row> {
    let rt = ctx.rt()?;
    let pid = srv.proc.pid();
    rt.block_on(async {
        let mut control = Client::connect(&srv.addr, &ctx.identity).await?;
        let key = if op == "read" {
            open_key(&mut control, &file_name(size), Mode::Read).await?
        } else {
            let opts = OpenOptions {
                mode: Mode::ReadWrite,
                create: true,
                truncate: true,
                ..OpenOptions::default()
            };
            control.open(&format!("up/h{size}.bin"), &opts).await?.token
        };
        let block = vec![0x5au8; size as usize];
        let cpu0 = CpuMeter::start(pid);
        let started = Instant::now();
        let mut data = control.open_data(&key, Some(channel), false).await?;
        let mut bytes = 0u64;
        for i in 0..n {
            bytes += if op == "read" {
                data.read_to(0, size, &mut |_| Ok(())).await?
            } else {
                data.write_at(i * size, &block).await?;
                size
            };
        }
        let secs = started.elapsed().as_secs_f64();
        let cpu = cpu0.seconds();
        drop(data);
        control.close(&key).await?;
        if bytes != size * n {
            bail!("moved {bytes} of {} bytes", size * n);
        }
        Ok(Row::moved(size, bytes, secs, cpu))
    })
}
