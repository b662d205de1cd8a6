//! Issue 11: a thousand clients at once on loopback, as the ranks of a job start together;
//! then the server is killed and every one of them resumes.

mod common;
#[path = "../bench/src/swarm.rs"]
#[allow(dead_code)]
mod swarm;

use std::time::{Duration, Instant};

use common::*;
use handoff::{Channel, Mode, OpenOptions, ShareMode};

const CLIENTS: usize = 1000;
const FILE: u64 = 4 << 20;
const READ: u64 = 1 << 20;

fn resident_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024.0
}

#[test]
fn a_thousand_clients_read_at_once_keep_their_opens_and_all_resume_after_a_server_kill() {
    raise_fd_limit();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let tmp = tempfile::tempdir().unwrap();
    // Four identities, 250 clients each (a job's ranks share their user's identity).
    let ids: Vec<TestClient> = (0..4)
        .map(|i| client(tmp.path(), &format!("rank{i}")))
        .collect();
    let mut server = TestServer::start(&ids.iter().collect::<Vec<_>>(), &["--grace", "30"]);
    let data = random_bytes(FILE as usize, 11);
    std::fs::write(server.root().join("shared.bin"), &data).unwrap();
    let pid = server.pid();
    let (rss0, fds0) = (resident_mib(pid), fd_count(pid));
    let identities: Vec<handoff::Identity> = ids.iter().map(|c| c.identity.clone()).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let opts = OpenOptions {
        mode: Mode::Read,
        share: ShareMode::ALL,
        ..Default::default()
    };
    let offset = |i: usize| (i as u64 * READ) % (FILE - READ + 1);

    let start = Instant::now();
    let members = rt
        .block_on(swarm::join(
            &server.addr,
            &identities,
            CLIENTS,
            "shared.bin",
            &opts,
            Channel::Tcp,
        ))
        .unwrap();
    let joined = start.elapsed();
    let members = rt
        .block_on(swarm::read_each(members, offset, READ, READ))
        .unwrap();
    let took = start.elapsed();
    for (i, (_, got)) in members.iter().enumerate() {
        let at = offset(i) as usize;
        assert!(
            got == &data[at..at + READ as usize],
            "client {i} read other bytes"
        );
    }
    let (rss, fds) = (resident_mib(pid), fd_count(pid));
    let mut opens: Vec<Duration> = members.iter().map(|(m, _)| m.open_latency).collect();
    eprintln!(
        "{CLIENTS} clients: all joined in {joined:?}, all read 1 MiB in {took:?}; open latency \
         p50 {:?} p99 {:?}; server RSS {rss0:.0} → {rss:.0} MiB, descriptors {fds0} → {fds}",
        swarm::percentile(&mut opens, 50.0),
        swarm::percentile(&mut opens, 99.0),
    );
    // Bounded: per client two connections, the file kept for its open and the one its data
    // channel reads through.
    assert!(fds <= fds0 + 4 * CLIENTS + 64, "{fds} descriptors");
    assert!(rss < rss0 + 512.0, "{rss} MiB resident");
    let stats = server.cli(&ids[0]).run(&["stats"]).expect(0).json();
    eprintln!(
        "connections turned away while they all started: {}, closed to make room: {}",
        stats["connections_turned_away"], stats["connections_evicted"]
    );
    assert_eq!(
        stats["connections_authenticated"].as_u64(),
        Some(2 * CLIENTS as u64 + 1),
        "{stats}"
    );

    // kill -9 and restart: every handle resumes by its key on its next read.
    server.kill9();
    server.restart();
    let restarted = Instant::now();
    let members: Vec<swarm::Member> = members.into_iter().map(|(m, _)| m).collect();
    let members = rt
        .block_on(swarm::read_each(members, offset, READ, READ))
        .unwrap();
    let resumed = restarted.elapsed();
    for (i, (m, got)) in members.iter().enumerate() {
        let at = offset(i) as usize;
        assert!(
            got == &data[at..at + READ as usize],
            "client {i} after resume"
        );
        let handoff::DataHandle::Stream(h) = &m.data else {
            panic!("a TCP handle")
        };
        assert_eq!(h.reconnects, 1, "client {i} resumed once");
    }
    let pid = server.pid();
    eprintln!(
        "after kill -9 and restart, all {CLIENTS} resumed and read 1 MiB in {resumed:?}; \
         server RSS {:.0} MiB, descriptors {}",
        resident_mib(pid),
        fd_count(pid)
    );
    assert!(
        server.log().contains("recovered_opens=1000"),
        "every open was recovered"
    );
}
