//! Many clients on the host over TCP: 256 and 1 000 clients start at once (as the ranks of a
//! job), each connects, opens one shared file and attaches a TCP data channel (open latency
//! p50/p99), then all read 1 MiB each at once (aggregate MiB/s, server CPU per GiB), with the
//! server's resident memory and descriptors while every channel is attached.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use handoff::{Channel, Mode, OpenOptions, ShareMode};

use super::{make_file, Ctx};
use crate::process::{rss_mib, CpuMeter};
use crate::results::Row;
use crate::servers::start_handoffd;
use crate::swarm;

/// Bytes each client reads.
const SHARE: u64 = 1 << 20;
/// The shared file: the clients' shares wrap around it (served from the page cache).
const FILE: u64 = 256 << 20;

pub fn run(ctx: &Ctx, rows: &mut Vec<Row>) -> Result<()> {
    let root = ctx.dir("many-root")?;
    make_file(&root.join("shared.bin"), FILE)?;
    for &n in &ctx.many_counts {
        // A fresh server each time, so memory and descriptors are this row's alone.
        let srv = start_handoffd(&ctx.bin_dir, &ctx.work, &root, &ctx.clients_file, &[])?;
        let row = measure(ctx, &srv, n as usize).with_context(|| format!("{n} clients"))?;
        eprintln!(
            "{n:>5} clients over tcp: {:.1} MiB/s, open p99 {:.0} ms, server RSS {:.0} MiB",
            row.rate,
            row.open_p99_ms.unwrap_or(0.0),
            row.server_rss_mib.unwrap_or(0.0)
        );
        rows.push(row);
    }
    Ok(())
}

fn measure(ctx: &Ctx, srv: &crate::servers::Handoffd, n: usize) -> Result<Row> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let opts = OpenOptions {
        mode: Mode::Read,
        share: ShareMode::ALL,
        ..Default::default()
    };
    let ids = [ctx.identity.clone()];
    let members = rt.block_on(swarm::join(
        &srv.addr,
        &ids,
        n,
        "shared.bin",
        &opts,
        Channel::Tcp,
    ))?;
    let mut opens: Vec<Duration> = members.iter().map(|m| m.open_latency).collect();
    let pid = srv.proc.pid();
    let rss = rss_mib(pid);
    let cpu = CpuMeter::start(pid);
    let started = Instant::now();
    let read = rt.block_on(swarm::read_each(
        members,
        |i| (i as u64 * SHARE) % FILE,
        SHARE,
        SHARE,
    ))?;
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu.seconds();
    let moved: u64 = read.iter().map(|(_, got)| got.len() as u64).sum();
    anyhow::ensure!(moved == SHARE * n as u64, "moved {moved} bytes");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(Row {
        suite: "many".into(),
        tool: "handoff tcp".into(),
        op: "read".into(),
        clients: n as u64,
        server_rss_mib: Some(rss),
        open_p50_ms: Some(ms(swarm::percentile(&mut opens, 50.0))),
        open_p99_ms: Some(ms(swarm::percentile(&mut opens, 99.0))),
        ..Row::moved(SHARE, moved, secs, cpu)
    })
}
