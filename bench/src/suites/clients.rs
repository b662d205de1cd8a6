//! Concurrency: 1, 4, 16, 64 clients, each with its own control connection, open and data
//! channel, reading its share of one file at once. Aggregate MiB/s (all bytes ÷ the start to
//! the last client's end; every client keeps its connections until all are done, so no
//! disconnect falls inside the others' transfers), server CPU per GiB and server resident
//! memory with every channel attached. Then N-to-1 writes: the same clients
//! each write their own part of one shared file in small requests (the opens take turns on
//! the file, so each request is news to the others: a count per request).

use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::Instant;

use anyhow::{Context, Result};
use handoff::data::RdmaHandle;
use handoff::{Channel, Client, DataHandle, Mode};

use super::{make_file, open_key, Ctx};
use crate::process::{rss_mib, CpuMeter};
use crate::results::{merge_rounds, Ratio, Row};
use crate::servers::start_handoffd;

/// Bytes per RDMA request here: 8 in flight per client, 16 registered slots each.
const RDMA_REQUEST: usize = 256 << 10;
/// Bytes per TCP read call.
const TCP_BLOCK: u64 = 1 << 20;
/// Bytes per write request in the N-to-1 rows: small, as ranks' checkpoint pieces are.
const WRITE_BLOCK: u64 = 64 << 10;

/// What each client does with its share of the file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Write,
}
const PORT: u16 = 7481;

pub fn run(ctx: &Ctx, rows: &mut Vec<Row>) -> Result<()> {
    let root = ctx.dir("clients-root")?;
    let total: u64 = if ctx.smoke { 16 << 20 } else { 128 << 20 };
    make_file(&root.join("shared.bin"), total)?;
    let listen: Vec<String> = ctx
        .rdma_ips
        .iter()
        .take(1)
        .map(|ip| format!("{ip}:{PORT}"))
        .collect();
    let srv = start_handoffd(&ctx.bin_dir, &ctx.work, &root, &ctx.clients_file, &listen)?;
    let mut channels = vec![Channel::Tcp];
    if !listen.is_empty() {
        channels.insert(0, Channel::Rdma);
    }
    let rdma: Vec<SocketAddr> = listen.iter().map(|a| a.parse()).collect::<Result<_, _>>()?;
    make_file(&root.join("written.bin"), total)?;
    // Rounds of every row, so each round's counts ran minutes apart at most and the ratio of
    // the most clients to the best of fewer is taken within a round.
    let trials = if ctx.smoke { 1 } else { super::TRIALS };
    let mut rounds = Vec::new();
    for trial in 1..=trials {
        let mut round = Vec::new();
        for op in [Op::Read, Op::Write] {
            for &channel in &channels {
                for &n in &ctx.client_counts {
                    let row = measure(ctx, &srv, channel, &rdma, n, total, op)
                        .with_context(|| format!("{n} clients over {channel}"))?;
                    eprintln!(
                        "clients {n:>3} over {channel}, {} trial {trial}: {:.1} MiB/s",
                        row.op, row.rate
                    );
                    round.push(row);
                }
            }
        }
        rounds.push(round);
    }
    let mut merged = merge_rounds(&rounds);
    set_scaling_ratios(&mut merged);
    rows.extend(merged);
    Ok(())
}

fn measure(
    ctx: &Ctx,
    srv: &crate::servers::Handoffd,
    channel: Channel,
    rdma: &[SocketAddr],
    n: u64,
    total: u64,
    op: Op,
) -> Result<Row> {
    let share = total / n;
    let ready = Arc::new(Barrier::new(n as usize + 1));
    let go = Arc::new(Barrier::new(n as usize + 1));
    let done = Arc::new(Barrier::new(n as usize));
    let mut threads = Vec::new();
    for i in 0..n {
        let (ready, go, done) = (ready.clone(), go.clone(), done.clone());
        let (addr, identity, rdma) = (srv.addr.clone(), ctx.identity.clone(), rdma.to_vec());
        threads.push(std::thread::spawn(move || -> Result<(u64, Instant)> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let mut setup = rt.block_on(async {
                let mut control = Client::connect(&addr, &identity).await?;
                let key = match op {
                    Op::Read => open_key(&mut control, "shared.bin", Mode::Read).await?,
                    Op::Write => open_key(&mut control, "written.bin", Mode::ReadWrite).await?,
                };
                let data = match channel {
                    Channel::Rdma => {
                        let sealed = handoff::parse_key(&key)?;
                        DataHandle::Rdma(Box::new(
                            RdmaHandle::connect(rdma, &identity, &sealed, false, RDMA_REQUEST)
                                .await?,
                        ))
                    }
                    _ => control.open_data(&key, Some(channel), false).await?,
                };
                anyhow::Ok((control, data))
            });
            // Every thread reaches all three barriers, even after a failed setup.
            ready.wait();
            go.wait();
            let moved = match &mut setup {
                Ok((_, data)) => rt.block_on(transfer(data, channel, op, i, share)),
                Err(_) => Ok(0),
            };
            let end = Instant::now();
            // Each client holds its connections until every client is done, so the row times
            // transfers only: no client's disconnect (its QP, regions and thread torn down
            // in this same guest) falls inside the others' transfers.
            done.wait();
            setup?;
            Ok((moved?, end))
        }));
    }
    ready.wait();
    let rss = rss_mib(srv.proc.pid());
    let cpu0 = CpuMeter::start(srv.proc.pid());
    let started = Instant::now();
    go.wait();
    let mut moved = 0;
    let mut last = started;
    for t in threads {
        let (m, done) = t
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        moved += m;
        last = last.max(done);
    }
    let secs = (last - started).as_secs_f64();
    let cpu = cpu0.seconds();
    anyhow::ensure!(moved == share * n, "moved {moved} of {} bytes", share * n);
    let size = match (op, channel) {
        (Op::Write, _) => WRITE_BLOCK,
        (Op::Read, Channel::Rdma) => RDMA_REQUEST as u64,
        (Op::Read, _) => TCP_BLOCK,
    };
    Ok(Row {
        suite: "clients".into(),
        tool: format!("handoff {channel}"),
        op: match op {
            Op::Read => "read",
            Op::Write => "N-to-1 write",
        }
        .into(),
        clients: n,
        server_rss_mib: Some(rss),
        ..Row::moved(size, moved, secs, cpu)
    })
}

/// Client `i`'s part: the `len` bytes from `i * len` of the file it opened, read or written.
async fn transfer(
    data: &mut DataHandle,
    channel: Channel,
    op: Op,
    i: u64,
    len: u64,
) -> Result<u64> {
    let base = i * len;
    if op == Op::Write {
        let block = vec![i as u8; WRITE_BLOCK as usize];
        let mut put = 0;
        while put < len {
            let n = WRITE_BLOCK.min(len - put);
            data.write_at(base + put, &block[..n as usize]).await?;
            put += n;
        }
        return Ok(put);
    }
    if channel == Channel::Rdma {
        return Ok(data.read_to(base, len, &mut |_| Ok(())).await?);
    }
    let mut got = 0;
    while got < len {
        got += data
            .read_to(base + got, TCP_BLOCK.min(len - got), &mut |_| Ok(()))
            .await?;
    }
    Ok(got)
}

/// What the most clients' row of each channel and op is held against.
pub const FEWER: &str = "the best of fewer clients";

/// Gives the row with the most clients of each channel and op its ratio to the best of the
/// fewer counts: trial by trial (the best of that trial's fewer counts), median and range.
fn set_scaling_ratios(rows: &mut [Row]) {
    let rates = |r: &Row| {
        if r.trials.is_empty() {
            vec![r.rate]
        } else {
            r.trials.clone()
        }
    };
    let snapshot = rows.to_vec();
    for row in rows.iter_mut() {
        let same = |r: &&Row| r.tool == row.tool && r.op == row.op;
        let fewer: Vec<Vec<f64>> = snapshot
            .iter()
            .filter(same)
            .filter(|r| r.clients < row.clients)
            .map(rates)
            .collect();
        if fewer.is_empty()
            || snapshot
                .iter()
                .filter(same)
                .any(|r| r.clients > row.clients)
        {
            continue;
        }
        let ours = rates(row);
        let best: Vec<f64> = (0..ours.len())
            .map(|t| {
                fewer
                    .iter()
                    .filter_map(|f| f.get(t).copied())
                    .fold(0.0, f64::max)
            })
            .collect();
        if let Some(r) = Ratio::paired(FEWER, &ours, &best) {
            row.ratio = Some(r.median);
            row.limit = Some(FEWER.into());
            row.ratios = vec![r];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(tool: &str, clients: u64, trials: &[f64]) -> Row {
        Row {
            suite: "clients".into(),
            tool: tool.into(),
            op: "read".into(),
            clients,
            rate: crate::results::median(trials).unwrap(),
            trials: if trials.len() > 1 {
                trials.to_vec()
            } else {
                Vec::new()
            },
            ..Row::default()
        }
    }

    #[test]
    fn the_most_clients_are_held_against_each_trials_best_of_fewer() {
        let mut rows = vec![
            row("handoff rdma", 1, &[70.0, 75.0, 80.0]),
            row("handoff rdma", 4, &[100.0, 110.0, 120.0]),
            row("handoff rdma", 16, &[105.0, 100.0, 115.0]),
            row("handoff rdma", 64, &[90.0, 99.0, 108.0]),
            row("handoff tcp", 1, &[400.0]),
            row("handoff tcp", 64, &[300.0]),
        ];
        set_scaling_ratios(&mut rows);
        // Trial by trial: 90 ÷ 105 (16 clients were best), 99 ÷ 110, 108 ÷ 120.
        let r = &rows[3].ratios[0];
        assert_eq!((r.pairs, r.median), (3, 0.9));
        assert!((r.min - 90.0 / 105.0).abs() < 1e-9 && (r.max - 0.9).abs() < 1e-9);
        assert_eq!(rows[3].limit.as_deref(), Some(FEWER));
        assert!(rows[..3].iter().all(|r| r.ratio.is_none()));
        // One trial: the rates themselves, and each channel against its own rows.
        assert_eq!(rows[5].ratio, Some(0.75));
        assert_eq!(rows[4].ratio, None);
    }
}
