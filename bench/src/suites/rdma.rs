//! RDMA on the rxe devices: perftest (`ib_write_bw`, `ib_read_bw`: the limit) and handoff
//! over the same devices, each request size, reads and writes.
//!
//! handoff's requests are pipelined (8 per QP in flight), as perftest's messages are. A read
//! served by the server is an RDMA WRITE into the client, so its limit is `ib_write_bw`; a
//! write is an RDMA READ by the server and a direct-mode read an RDMA READ by the client,
//! so theirs is `ib_read_bw`.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use handoff::data::RdmaHandle;
use handoff::{Client, DataHandle, Mode};

use super::{make_file, open_key, size_label, Ctx};
use crate::process::{reaped_children_cpu, wait_listening, CpuMeter, Proc};
use crate::results::{merge_rounds, set_ratios, Row};
use crate::servers::start_handoffd;

const PORT: u16 = 7471;

pub fn run(ctx: &Ctx, rows: &mut Vec<Row>) -> Result<()> {
    if ctx.rdma_ips.is_empty() {
        bail!("the rdma suite needs --rdma-ips (the guest sets HANDOFF_GUEST_IPS)");
    }
    let root = ctx.dir("rdma-root")?;
    let file_bytes = ctx
        .sizes
        .iter()
        .map(|s| ctx.total_for(*s))
        .max()
        .unwrap_or(0);
    make_file(&root.join("rw.bin"), file_bytes)?;
    make_file(&root.join("ro.bin"), file_bytes)?;
    let listen: Vec<String> = ctx
        .rdma_ips
        .iter()
        .map(|ip| format!("{ip}:{PORT}"))
        .collect();
    let srv = start_handoffd(&ctx.bin_dir, &ctx.work, &root, &ctx.clients_file, &listen)?;
    let addrs: Vec<SocketAddr> = listen.iter().map(|a| a.parse()).collect::<Result<_, _>>()?;
    let rt = ctx.rt()?;
    let (rw, ro) = rt.block_on(async {
        let mut c = Client::connect(&srv.addr, &ctx.identity).await?;
        let rw = open_key(&mut c, "rw.bin", Mode::ReadWrite).await?;
        let ro = open_key(&mut c, "ro.bin", Mode::Read).await?;
        anyhow::Ok((rw, ro))
    })?;
    // Interleaved: each trial runs perftest and every handoff case back to back, so a ratio
    // pairs measurements taken a moment apart (the emulated CPU's speed drifts over minutes).
    let trials = if ctx.smoke { 1 } else { super::TRIALS };
    let mut mine = Vec::new();
    for &size in &ctx.sizes {
        let total = ctx.total_for(size);
        let mut samples: Vec<Vec<Row>> = Vec::new();
        for trial in 0..trials {
            let mut got = Vec::new();
            for verb in ["write", "read"] {
                got.push(perftest(ctx, verb, size, total)?);
            }
            // The TCP data channel on the same (emulated) CPUs: the reference for server CPU.
            got.push(
                tcp_reference(ctx, &srv, size, total, &ro)
                    .with_context(|| format!("handoff tcp read at {}", size_label(size)))?,
            );
            let mut cases = vec![("handoff rdma", "read", 1, &rw, false)];
            if addrs.len() > 1 && !ctx.smoke {
                cases.push(("handoff rdma 2 NICs", "read", 2, &rw, false));
            }
            cases.push(("handoff rdma", "write", 1, &rw, false));
            cases.push(("handoff rdma direct", "read", 1, &ro, true));
            cases.push(("handoff rdma direct", "write", 1, &rw, true));
            for (tool, op, nics, key, direct) in cases {
                let transfer = Transfer {
                    tool,
                    op,
                    size,
                    total,
                    direct,
                };
                got.push(
                    handoff(ctx, &srv.proc, &transfer, &addrs[..nics], key)
                        .with_context(|| format!("{tool} {op} at {}", size_label(size)))?,
                );
            }
            for row in &got {
                eprintln!(
                    "rdma {:>7} trial {trial} {} {}: {:.1} MiB/s",
                    size_label(size),
                    row.tool,
                    row.op,
                    row.rate
                );
            }
            samples.push(got);
        }
        mine.extend(merge_rounds(&samples));
    }
    set_ratios(&mut mine, |r| {
        let verb = perftest_peer(&r.tool, &r.op)?;
        Some((format!("ib_{verb}_bw"), verb.to_string()))
    });
    rows.extend(mine);
    Ok(())
}

/// [`perftest_once`], tried up to three times: perftest on rxe under emulation occasionally
/// reports a failed or zero run.
pub(super) fn perftest(ctx: &Ctx, verb: &str, size: u64, total: u64) -> Result<Row> {
    let mut row = perftest_once(ctx, verb, size, total);
    for _ in 0..2 {
        match &row {
            Ok(r) if r.rate > 0.0 => break,
            Ok(_) => eprintln!("ib_{verb}_bw reported 0 MiB/s; running it again"),
            Err(e) => eprintln!("{e:#}; running it again"),
        }
        row = perftest_once(ctx, verb, size, total);
    }
    row
}

/// One perftest run on the first rxe device: a server, then a client to the first IP.
/// Rate is perftest's average ("MB/sec", which perftest counts in MiB); server CPU is
/// what the reaped server process used.
fn perftest_once(ctx: &Ctx, verb: &str, size: u64, total: u64) -> Result<Row> {
    let tool = format!("ib_{verb}_bw");
    let dev = ctx.rdma_devices.first().context("no rxe device named")?;
    let iters = (total / size).max(5).to_string(); // perftest needs at least 5
    let port = crate::process::free_port()?.to_string();
    let args = [
        "-d",
        dev,
        "-s",
        &size.to_string(),
        "-n",
        &iters,
        "-F",
        "-p",
        &port,
    ];
    // In a group of its own, so a failed run below leaves no server behind.
    let mut server = Proc::spawn(
        Command::new(&tool)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .with_context(|| {
        format!("starting {tool} (hw-setup/install-deps.sh --rdma installs perftest)")
    })?;
    wait_listening(port.parse()?, Duration::from_secs(20), &tool)?;
    let started = Instant::now();
    let out = Command::new(&tool)
        .args(args)
        .arg(&ctx.rdma_ips[0])
        .stderr(Stdio::null())
        .output()?;
    let secs = started.elapsed().as_secs_f64();
    let before = reaped_children_cpu();
    let status = server.0.wait()?;
    let server_cpu = reaped_children_cpu() - before;
    let text = String::from_utf8_lossy(&out.stdout);
    let rate = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() >= 4 && f[0] == size.to_string())
        .and_then(|f| f[3].parse::<f64>().ok());
    let Some(rate) = rate.filter(|_| out.status.success() && status.success()) else {
        bail!(
            "{tool} at {size} bytes failed (client {}, server {status}):\n{text}",
            out.status
        );
    };
    let bytes = size * iters.parse::<u64>()?;
    Ok(Row {
        suite: "rdma".into(),
        tool,
        op: verb.into(),
        size,
        bytes,
        secs,
        rate,
        server_cpu_s_per_gib: Row::cpu_per_gib(server_cpu, bytes),
        note: Some(format!(
            "{} on {dev}",
            if verb == "write" {
                "RDMA WRITE"
            } else {
                "RDMA READ"
            }
        )),
        ..Row::default()
    })
}

/// Which perftest a handoff RDMA row is held against (the verb of `ib_<verb>_bw`): a read
/// served by the server is an RDMA WRITE into the client; a write (the server RDMA-READs the
/// client's buffer) and a direct read are RDMA READs; a direct write is the client's own RDMA
/// WRITE.
pub(super) fn perftest_peer(tool: &str, op: &str) -> Option<&'static str> {
    match (tool, op) {
        ("handoff rdma" | "handoff rdma 2 NICs", "read") => Some("write"),
        ("handoff rdma", "write") | ("handoff rdma direct", "read") => Some("read"),
        ("handoff rdma direct", "write") => Some("write"),
        _ => None,
    }
}

/// One handoff transfer to measure.
struct Transfer<'a> {
    tool: &'a str,
    op: &'a str,
    size: u64,
    total: u64,
    /// Direct mode: one-sided reads, or writes into the file's region.
    direct: bool,
}

/// handoff over RDMA: connect (untimed), then move `total` bytes in `size`-byte requests.
fn handoff(
    ctx: &Ctx,
    server: &crate::process::Proc,
    t: &Transfer<'_>,
    addrs: &[SocketAddr],
    key: &str,
) -> Result<Row> {
    let Transfer {
        tool,
        op,
        size,
        total,
        direct,
    } = *t;
    let setup0 = CpuMeter::start(server.pid());
    let sealed = handoff::parse_key(key)?;
    let handle = RdmaHandle::connect(
        addrs.to_vec(),
        &ctx.identity,
        &sealed,
        direct,
        size as usize,
    );
    let handle = ctx.rt()?.block_on(handle)?;
    if direct && op == "read" && !handle.is_direct() {
        bail!("direct mode was refused (see handoffd's log)");
    }
    let mut data = DataHandle::Rdma(Box::new(handle));
    // The first request is setup, untimed, as perftest registers its buffer before it starts
    // its clock: a direct write's takes the grant (registering the file), a server-initiated
    // one's has the server register the file window it serves from (64 MiB of the file,
    // pinned on first use). Its server CPU is in the setup column.
    let first = size.min(total) as usize;
    match (op, direct) {
        ("write", true) => ctx.rt()?.block_on(data.write_at(0, &[0; 4096]))?,
        ("write", false) => ctx.rt()?.block_on(data.write_at(0, &vec![0; first]))?,
        (_, false) => {
            ctx.rt()?
                .block_on(data.read_to(0, first as u64, &mut |_| Ok(())))?;
        }
        // (A direct read's grant was taken when it connected.)
        (_, true) => {}
    }
    let setup = setup0.seconds();
    let cpu0 = CpuMeter::start(server.pid());
    let rt = ctx.rt()?;
    let started = Instant::now();
    let moved = rt.block_on(async {
        match op {
            "read" => data.read_to(0, total, &mut |_| Ok(())).await,
            _ => {
                let mut left = total;
                data.write_from(0, &mut |buf| {
                    let n = left.min(buf.len() as u64) as usize;
                    left -= n as u64;
                    Ok(n)
                })
                .await
            }
        }
    })?;
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu0.seconds();
    if moved != total {
        bail!("moved {moved} of {total} bytes");
    }
    if direct && op == "write" {
        ctx.rt()?.block_on(data.flush())?;
        match &data {
            DataHandle::Rdma(h) if h.direct_bytes() >= total => {}
            _ => bail!("direct writes were refused or revoked (see handoffd's log)"),
        }
    }
    let note = match &data {
        DataHandle::Rdma(h) if direct => {
            Some(format!("one-sided, {} bytes direct", h.direct_bytes()))
        }
        DataHandle::Rdma(h) => Some(
            h.qp_reports()
                .iter()
                .map(|q| format!("{} {} MiB", q.device, q.bytes >> 20))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        DataHandle::Stream(_) => None,
    };
    Ok(Row {
        suite: "rdma".into(),
        tool: tool.into(),
        op: op.into(),
        server_setup_cpu_s: Some(setup),
        note,
        ..Row::moved(size, moved, secs, cpu)
    })
}

/// handoff's TCP data channel on the guest's loopback, `size`-byte reads: what the server's
/// CPU per GiB is when it moves the bytes itself through sockets.
fn tcp_reference(
    ctx: &Ctx,
    srv: &crate::servers::Handoffd,
    size: u64,
    total: u64,
    key: &str,
) -> Result<Row> {
    let pid = srv.proc.pid();
    ctx.rt()?.block_on(async {
        let mut control = Client::connect(&srv.addr, &ctx.identity).await?;
        let mut data = control
            .open_data(key, Some(handoff::Channel::Tcp), false)
            .await?;
        let cpu0 = CpuMeter::start(pid);
        let started = Instant::now();
        let mut moved = 0;
        while moved < total {
            let n = data
                .read_to(moved, size.min(total - moved), &mut |_| Ok(()))
                .await?;
            anyhow::ensure!(n > 0, "file shorter than {total} bytes");
            moved += n;
        }
        let secs = started.elapsed().as_secs_f64();
        let cpu = cpu0.seconds();
        Ok(Row {
            suite: "rdma".into(),
            tool: "handoff tcp".into(),
            op: "read".into(),
            note: Some("TCP data channel, guest loopback (CPU reference)".into()),
            ..Row::moved(size, moved, secs, cpu)
        })
    })
}
