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
    // the most clients to the best of fewer is taken within a round. Every other round runs
    // the cases backwards, so no count always follows the same one (a cold start, or the
    // writes' aftermath, falls on different rows); each round's rows are kept in one order.
    let mut cases = Vec::new();
    for op in [Op::Read, Op::Write] {
        for &channel in &channels {
            for &n in &ctx.client_counts {
                cases.push((op, channel, n));
            }
        }
    }
    let trials = if ctx.smoke { 1 } else { super::TRIALS };
    let mut rounds = Vec::new();
    for trial in 1..=trials {
        let mut round: Vec<Option<Row>> = vec![None; cases.len()];
        let mut order: Vec<usize> = (0..cases.len()).collect();
        if trial % 2 == 0 {
            order.reverse();
        }
        for i in order {
            let (op, channel, n) = cases[i];
            let row = measure(ctx, &srv, channel, &rdma, n, total, op)
                .with_context(|| format!("{n} clients over {channel}"))?;
            eprintln!(
                "clients {n:>3} over {channel}, {} trial {trial}: {:.1} MiB/s",
                row.op, row.rate
            );
            round[i] = Some(row);
        }
        rounds.push(round.into_iter().flatten().collect());
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
    // The clients and this thread: all connected, go, all done.
    let course = Course::new(n as usize + 1);
    let mut threads = Vec::new();
    for i in 0..n {
        let mut course = course.clone();
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
            course.pass(); // connected (or failed to)
            course.pass(); // go
            let moved = match &mut setup {
                Ok((_, data)) => rt.block_on(transfer(data, channel, op, i, share)),
                Err(_) => Ok(0),
            };
            let end = Instant::now();
            // Each client holds its connections until every client is done, so the row times
            // transfers only: no client's disconnect (its QP, regions and thread torn down
            // in this same guest) falls inside the others' transfers.
            course.pass();
            setup?;
            Ok((moved?, end))
        }));
    }
    let mut course = course;
    course.pass();
    let rss = rss_mib(srv.proc.pid());
    let cpu0 = CpuMeter::start(srv.proc.pid());
    let started = Instant::now();
    course.pass();
    course.pass();
    // The server's CPU over the transfers, as the rate: not the disconnects that follow.
    let cpu = cpu0.seconds();
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

/// The barriers every client and the measuring thread pass in turn: all connected, go, all
/// done. Dropped early (a thread's error or panic), it passes the rest, so no other thread
/// waits for ever and the failure comes out of `join`.
#[derive(Clone)]
struct Course {
    barriers: Arc<[Barrier; 3]>,
    passed: usize,
}

impl Course {
    fn new(threads: usize) -> Self {
        Course {
            barriers: Arc::new(std::array::from_fn(|_| Barrier::new(threads))),
            passed: 0,
        }
    }

    fn pass(&mut self) {
        if let Some(b) = self.barriers.get(self.passed) {
            b.wait();
            self.passed += 1;
        }
    }
}

impl Drop for Course {
    fn drop(&mut self) {
        while self.passed < self.barriers.len() {
            self.pass();
        }
    }
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
/// Rows measured in different numbers of trials are not paired: the ratio of their medians.
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
        let group: Vec<&Row> = snapshot
            .iter()
            .filter(|r| r.tool == row.tool && r.op == row.op)
            .collect();
        if group.iter().any(|r| r.clients > row.clients) {
            continue;
        }
        let fewer: Vec<(f64, Vec<f64>)> = group
            .iter()
            .filter(|r| r.clients < row.clients)
            .map(|r| (r.rate, rates(r)))
            .collect();
        if fewer.is_empty() {
            continue;
        }
        let ours = rates(row);
        let paired = fewer.iter().all(|(_, t)| t.len() == ours.len());
        let (ours, best): (Vec<f64>, Vec<f64>) = if paired {
            let best = (0..ours.len())
                .map(|t| fewer.iter().map(|(_, f)| f[t]).fold(0.0, f64::max))
                .collect();
            (ours, best)
        } else {
            let best = fewer.iter().map(|(rate, _)| *rate).fold(0.0, f64::max);
            (vec![row.rate], vec![best])
        };
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

    fn row(tool: &str, op: &str, clients: u64, trials: &[f64]) -> Row {
        Row {
            suite: "clients".into(),
            tool: tool.into(),
            op: op.into(),
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
            row("handoff rdma", "read", 1, &[70.0, 75.0, 0.0]),
            row("handoff rdma", "read", 4, &[100.0, 110.0, 120.0]),
            row("handoff rdma", "read", 16, &[105.0, 100.0, 115.0]),
            row("handoff rdma", "read", 64, &[108.0, 88.0, 96.0]),
            row("handoff rdma", "write", 1, &[200.0, 200.0, 200.0]),
            row("handoff rdma", "write", 64, &[50.0, 60.0, 40.0]),
            row("handoff tcp", "read", 1, &[400.0]),
            row("handoff tcp", "read", 64, &[300.0]),
            row("handoff tcp", "write", 1, &[10.0, 20.0]),
            row("handoff tcp", "write", 64, &[15.0]),
        ];
        set_scaling_ratios(&mut rows);
        // Trial by trial: 108 ÷ 105 (16 clients were best), 88 ÷ 110, 96 ÷ 120 (a trial that
        // measured nothing is no one's best).
        let r = &rows[3].ratios[0];
        assert_eq!(r.pairs, 3);
        let near = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(near(r.median, 0.8), "{r:?}");
        assert!(near(r.min, 0.8) && near(r.max, 108.0 / 105.0), "{r:?}");
        assert_eq!(rows[3].limit.as_deref(), Some(FEWER));
        assert!(rows[..3].iter().all(|r| r.ratio.is_none()));
        // Each op against its own rows: writes 50/200, 60/200, 40/200.
        assert!(near(rows[5].ratio.unwrap(), 0.25), "{:?}", rows[5].ratios);
        // One trial: the rates themselves, and each channel against its own rows.
        assert_eq!(rows[7].ratio, Some(0.75));
        assert_eq!(rows[6].ratio, None);
        // Different numbers of trials: not paired, the medians (15 ÷ 15).
        assert_eq!((rows[9].ratio, rows[9].ratios[0].pairs), (Some(1.0), 1));
    }

    #[test]
    fn a_client_that_fails_or_panics_does_not_hold_up_the_others() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let course = Course::new(4);
            let mut early = course.clone();
            let failed = std::thread::spawn(move || -> Result<()> {
                early.pass();
                anyhow::bail!("setup failed")
            });
            let mut late = course.clone();
            let panicked = std::thread::spawn(move || {
                late.pass();
                late.pass();
                panic!("mid-transfer");
            });
            let mut whole = course.clone();
            let fine = std::thread::spawn(move || (0..3).for_each(|_| whole.pass()));
            let mut main = course;
            (0..3).for_each(|_| main.pass());
            let _ = tx.send((
                failed.join().map(|r| r.is_err()),
                panicked.join().is_err(),
                fine.join().is_ok(),
            ));
        });
        let got = rx.recv_timeout(std::time::Duration::from_secs(20));
        assert!(matches!(got, Ok((Ok(true), true, true))), "{got:?}");
    }
}
