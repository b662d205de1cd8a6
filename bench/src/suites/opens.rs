//! The control plane under load: opens per second and resumes (a key presented on a TCP data
//! channel for a duplicate handle) per second while 10^3, 10^4, 10^5 durable opens are held,
//! with the server's resident memory and store size at each level. Every open is committed
//! to the store before its reply, as in production.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use handoff::{Client, Mode, Transport};

use super::{make_file, open_key, Ctx};
use crate::process::{rss_mib, CpuMeter};
use crate::results::Row;
use crate::servers::{start_etcd, start_handoffd_with};

/// Connections that fill the table concurrently.
const FILLERS: u64 = 8;

pub fn run(ctx: &Ctx, rows: &mut Vec<Row>) -> Result<()> {
    let root = ctx.dir("opens-root")?;
    make_file(&root.join("held.bin"), 4096)?;
    make_file(&root.join("probe.bin"), 4096)?;
    // One identity holds every open here: lift its quota above the most held.
    let quota = (ctx.held.iter().max().copied().unwrap_or(0) * 2 + 10_000).to_string();
    let srv = start_handoffd_with(
        &ctx.bin_dir,
        &ctx.work,
        &root,
        &ctx.clients_file,
        &["--max-client-opens", &quota],
    )?;
    let probes: u64 = if ctx.smoke { 50 } else { 1000 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Four times as many here: at 8 connections 1000 opens take under 0.1 s, too short a
    // measurement for a ratio on a shared machine.
    concurrent_opens(ctx, &rt, &srv.addr, probes * 4, rows)?;
    // Held connections stay open, so their opens stay attached to a live control channel.
    let mut holders: Vec<Client> = Vec::new();
    let mut held = 0u64;
    for &level in &ctx.held {
        let fill_started = Instant::now();
        let add = level.saturating_sub(held);
        holders.extend(rt.block_on(fill(&srv.addr, &ctx.identity, add))?);
        held = level;
        eprintln!(
            "opens: {level} held (filled {add} in {:.1} s)",
            fill_started.elapsed().as_secs_f64()
        );
        let rss = rss_mib(srv.proc.pid());
        let store = dir_bytes(&srv.state) as f64 / f64::from(1u32 << 20);
        let probe = Probe {
            suite: "opens",
            tool: "handoff",
            level,
            probes,
        };
        let (mut open_row, mut resume_row) =
            rt.block_on(probe.measure(&srv.addr, &ctx.identity, srv.proc.pid()))?;
        for r in [&mut open_row, &mut resume_row] {
            r.server_rss_mib = Some(rss);
            r.store_mib = Some(store);
        }
        eprintln!(
            "opens: {level} held: {:.0} opens/s, {:.0} resumes/s, RSS {rss:.0} MiB, store {store:.1} MiB",
            open_row.rate, resume_row.rate
        );
        rows.push(open_row);
        rows.push(resume_row);
    }
    drop(holders);
    drop(srv);
    cluster_store(ctx, &rt, &root, probes, rows)
}

/// The same probe with the cluster store: one handoffd (the active node) keeping its state
/// in a real etcd on 127.0.0.1, with the smallest number of opens held. Its rates are given
/// as a ratio of the embedded store's at that level.
fn cluster_store(
    ctx: &Ctx,
    rt: &tokio::runtime::Runtime,
    root: &Path,
    probes: u64,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let level = ctx.held.first().copied().unwrap_or(1000);
    let etcd = start_etcd(&ctx.work)?;
    let store = format!("etcd://127.0.0.1:{}", etcd.port);
    let srv = start_handoffd_with(
        &ctx.bin_dir,
        &ctx.work,
        root,
        &ctx.clients_file,
        &["--store", &store, "--cluster", "bench"],
    )?;
    let holders = rt.block_on(fill(&srv.addr, &ctx.identity, level))?;
    let probe = Probe {
        suite: "cluster",
        tool: "handoff etcd",
        level,
        probes,
    };
    let (mut open_row, mut resume_row) =
        rt.block_on(probe.measure(&srv.addr, &ctx.identity, srv.proc.pid()))?;
    for r in [&mut open_row, &mut resume_row] {
        r.server_rss_mib = Some(rss_mib(srv.proc.pid()));
        let embedded = rows
            .iter()
            .find(|e| e.suite == "opens" && e.op == r.op && e.held_opens == level);
        r.ratio = embedded.map(|e| r.rate / e.rate);
        r.limit = Some(format!("handoff redb {}", r.op));
    }
    eprintln!(
        "opens: etcd store, {level} held: {:.0} opens/s, {:.0} resumes/s",
        open_row.rate, resume_row.rate
    );
    rows.push(open_row);
    rows.push(resume_row);
    drop(holders);
    Ok(())
}

/// Opens then resumes `probes` keys one after another on one connection, with the server's
/// CPU for each.
struct Probe {
    suite: &'static str,
    tool: &'static str,
    level: u64,
    probes: u64,
}

impl Probe {
    async fn measure(
        &self,
        addr: &str,
        identity: &handoff::Identity,
        pid: u32,
    ) -> Result<(Row, Row)> {
        let probes = self.probes;
        let mut c = Client::connect(addr, identity).await?;
        let cpu0 = CpuMeter::start(pid);
        let started = Instant::now();
        let mut keys = Vec::new();
        for _ in 0..probes {
            keys.push(open_key(&mut c, "probe.bin", Mode::Read).await?);
        }
        let open_secs = started.elapsed().as_secs_f64();
        let open_cpu = cpu0.seconds();
        let cpu0 = CpuMeter::start(pid);
        let started = Instant::now();
        for k in &keys {
            let d = c.attach(k, Transport::Tcp).await?;
            drop(d);
        }
        let resume_secs = started.elapsed().as_secs_f64();
        let resume_cpu = cpu0.seconds();
        for k in &keys {
            c.close(k).await?;
        }
        let row = |op: &str, secs: f64, cpu: f64| Row {
            suite: self.suite.into(),
            tool: self.tool.into(),
            op: op.into(),
            held_opens: self.level,
            secs,
            rate: probes as f64 / secs,
            note: Some(format!(
                "{probes} sequential on one connection; server CPU {:.0} µs each",
                cpu / probes as f64 * 1e6
            )),
            ..Row::default()
        };
        Ok((
            row("open", open_secs, open_cpu),
            row("resume", resume_secs, resume_cpu),
        ))
    }
}

/// Opens/s from one connection and from [`FILLERS`] at once, interleaved trials: what the
/// store's group commit buys (concurrent opens share one fsync). The many-connection row's
/// ratio is ÷ the one-connection row, trial by trial.
fn concurrent_opens(
    ctx: &Ctx,
    rt: &tokio::runtime::Runtime,
    addr: &str,
    probes: u64,
    rows: &mut Vec<Row>,
) -> Result<()> {
    // Five: the rate at one connection is bound by the disk's fsync, which on a shared
    // virtual disk spreads by a third from trial to trial.
    let trials = if ctx.smoke { 1 } else { 5 };
    let mut rates: [Vec<f64>; 2] = Default::default();
    for trial in 0..trials {
        for (i, conns) in [1, FILLERS].into_iter().enumerate() {
            let (secs, keys) = rt.block_on(timed_opens(addr, &ctx.identity, conns, probes))?;
            let rate = probes as f64 / secs;
            eprintln!("opens: trial {trial}, {conns} connections: {rate:.0} opens/s");
            rates[i].push(rate);
            rt.block_on(async {
                let mut c = Client::connect(addr, &ctx.identity).await?;
                for k in &keys {
                    c.close(k).await?;
                }
                anyhow::Ok(())
            })?;
        }
    }
    let row = |clients: u64, rates: &[f64]| Row {
        suite: "concurrency".into(),
        tool: "handoff".into(),
        op: "open".into(),
        clients,
        rate: crate::results::median(rates).unwrap_or(0.0),
        trials: if rates.len() > 1 {
            rates.to_vec()
        } else {
            Vec::new()
        },
        note: Some(format!(
            "{probes} opens over {clients} connections at once, each committed before its reply"
        )),
        ..Row::default()
    };
    let one = row(1, &rates[0]);
    let mut many = row(FILLERS, &rates[1]);
    let limit = "handoff open, 1 connection";
    if let Some(r) = crate::results::Ratio::paired(limit, &rates[1], &rates[0]) {
        many.ratio = Some(r.median);
        many.limit = Some(limit.into());
        many.ratios = vec![r];
    }
    rows.push(one);
    rows.push(many);
    Ok(())
}

/// `probes` opens of probe.bin over `conns` connections at once: the seconds they took (the
/// connections made first) and the keys.
async fn timed_opens(
    addr: &str,
    identity: &handoff::Identity,
    conns: u64,
    probes: u64,
) -> Result<(f64, Vec<String>)> {
    let mut clients = Vec::new();
    for _ in 0..conns {
        clients.push(Client::connect(addr, identity).await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        let n = probes / conns + u64::from((i as u64) < probes % conns);
        tasks.push(tokio::spawn(async move {
            let mut keys = Vec::new();
            for _ in 0..n {
                keys.push(open_key(&mut c, "probe.bin", Mode::Read).await?);
            }
            anyhow::Ok(keys)
        }));
    }
    let mut keys = Vec::new();
    for t in tasks {
        keys.extend(t.await.context("open task")??);
    }
    Ok((started.elapsed().as_secs_f64(), keys))
}

/// Opens `count` read-only handles of held.bin over `FILLERS` connections at once; returns
/// the connections (closing one would start its opens' durable timeouts).
async fn fill(addr: &str, identity: &handoff::Identity, count: u64) -> Result<Vec<Client>> {
    let mut tasks = Vec::new();
    for i in 0..FILLERS {
        let n = count / FILLERS + u64::from(i < count % FILLERS);
        let (addr, identity) = (addr.to_owned(), identity.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(&addr, &identity).await?;
            for _ in 0..n {
                open_key(&mut c, "held.bin", Mode::Read).await?;
            }
            anyhow::Ok(c)
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.context("filler task")??);
    }
    Ok(out)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
