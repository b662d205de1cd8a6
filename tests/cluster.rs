//! Claim 41: active/passive failover over a real etcd (started here on 127.0.0.1) with real
//! `handoffd` processes sharing one root: the new active rebuilds the resume-key table from
//! etcd, a paused active is fenced, etcd outages and restarts lose nothing.

mod common;
use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::{start_node, Etcd, Node};
use common::*;
use handoff::{Channel, Client};

/// A cluster directory: the shared root, the clients file, and CLI helpers that list every
/// node (`--server A,B`), as a user of a pair would.
fn cluster_dir(clients: &[&TestClient]) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("root")).unwrap();
    let lines: Vec<String> = clients.iter().map(|c| c.identity.to_line()).collect();
    std::fs::write(tmp.path().join("clients"), lines.join("\n") + "\n").unwrap();
    tmp
}

fn cli(dir: &Path, nodes: &[&Node], who: &TestClient) -> Cli {
    Cli {
        server: nodes
            .iter()
            .map(|n| n.addr.as_str())
            .collect::<Vec<_>>()
            .join(","),
        identity: who.path.clone(),
        keys: dir.join(format!("{}.keys", who.identity.name)),
    }
}

/// One cluster test at a time: each runs an etcd and two servers on ports picked free just
/// before they start, and shares 2 cores with them.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Must-show 1: kill -9 the active; the passive is active within 10 s and serves the same
/// key with the same bytes, the open still denies a conflicting open until its durable
/// timeout, and its lock still holds.
#[test]
fn kill9_of_the_active_moves_keys_locks_and_denials_to_the_passive() {
    let _serial = one_at_a_time();
    let ids = tempfile::tempdir().unwrap();
    let (alice, bob) = (client(ids.path(), "alice"), client(ids.path(), "bob"));
    let dir = cluster_dir(&[&alice, &bob]);
    let etcd = Etcd::start();
    let opts = ["--durable-timeout", "15", "--grace", "1"];
    let mut a = start_node("a", dir.path(), &etcd, &opts);
    a.wait_active(Duration::from_secs(20));
    let b = start_node("b", dir.path(), &etcd, &opts);
    eventually(Duration::from_secs(20), || {
        b.log().contains("passive: waiting").then_some(())
    });
    assert!(!b.is_active(), "two active nodes");

    let data = random_bytes(3 << 20, 41);
    std::fs::write(dir.path().join("root/f"), &data).unwrap();
    let (al, bo) = (
        cli(dir.path(), &[&a, &b], &alice),
        cli(dir.path(), &[&a, &b], &bob),
    );
    let key = al.open(&["f", "--mode", "rw", "--lock", "0:4096"]);

    a.kill9();
    let took = b.wait_active(Duration::from_secs(10));
    eprintln!("passive became active {took:?} after kill -9 of the active");
    assert!(b.log().contains("recovered_opens=1"), "{}", b.log());

    let read = al.run(&["read", &key]).expect(0);
    assert_eq!(sha256(&read.stdout), sha256(&data));
    let patch = random_bytes(8192, 42);
    al.run_with(&["write", &key, "--offset", "4096"], Some(&patch))
        .expect(0);
    let mut want = data.clone();
    want[4096..4096 + 8192].copy_from_slice(&patch);
    let read = al.run(&["read", &key]).expect(0);
    assert_eq!(sha256(&read.stdout), sha256(&want));
    assert_eq!(
        sha256(&std::fs::read(dir.path().join("root/f")).unwrap()),
        sha256(&want)
    );

    let denied_at = Instant::now();
    let out = bo.run(&["open", "f", "--exclusive"]).expect(3);
    assert!(out.stderr.contains("sharing violation"), "{}", out.stderr);
    let out = bo.run(&["open", "f", "--lock", "0:10"]).expect(3);
    assert!(out.stderr.contains("lock conflict"), "{}", out.stderr);
    // After the durable timeout (counted from alice's last channel) the open is gone.
    eventually(Duration::from_secs(30), || {
        let out = bo.run(&["open", "f", "--exclusive"]);
        match out.code {
            0 => Some(()),
            3 => None,
            c => panic!("exit {c}: {}", out.stderr),
        }
    });
    assert!(denied_at.elapsed() > Duration::from_secs(5));
}

/// Must-show 2: the active is paused past its lease; the passive takes over and a client
/// writes through it; the old active, resumed, writes nothing (it exits 75, fenced) and the
/// bytes written through the new active stay.
#[test]
fn a_paused_active_is_fenced_and_overwrites_nothing() {
    let _serial = one_at_a_time();
    let ids = tempfile::tempdir().unwrap();
    let alice = client(ids.path(), "alice");
    let dir = cluster_dir(&[&alice]);
    let etcd = Etcd::start();
    let opts = ["--lease-ttl", "3", "--grace", "1"];
    let mut a = start_node("a", dir.path(), &etcd, &opts);
    a.wait_active(Duration::from_secs(20));
    let b = start_node("b", dir.path(), &etcd, &opts);
    std::fs::write(dir.path().join("root/f"), vec![b'.'; 64 << 10]).unwrap();
    let al = cli(dir.path(), &[&a, &b], &alice);
    let key = al.open(&["f", "--mode", "rw"]);

    let rt = runtime();
    // A raw data channel to the active (no resuming elsewhere), held across the pause.
    let mut stale = rt.block_on(async {
        let mut c = Client::connect(&a.addr, &alice.identity).await.unwrap();
        let mut h = c.attach(&key, handoff::Transport::Tcp).await.unwrap();
        h.write_at(0, b"AAAA").await.unwrap();
        h
    });

    a.pause();
    b.wait_active(Duration::from_secs(15));
    // The client lists both: the paused one never answers, so it moves on to b.
    let newer = random_bytes(16 << 10, 7);
    al.run_with(&["write", &key, "--offset", "0"], Some(&newer))
        .expect(0);
    a.resume();

    let refused = rt.block_on(async {
        let w = stale.write_at(0, b"CCCC").await;
        let f = stale.flush().await;
        w.is_err() || f.is_err()
    });
    assert!(refused, "the fenced node accepted a write");
    let code = a.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(75), "{}", a.log());
    assert!(a.log().contains("fenced"), "{}", a.log());

    let mut want = vec![b'.'; 64 << 10];
    want[..newer.len()].copy_from_slice(&newer);
    let on_disk = std::fs::read(dir.path().join("root/f")).unwrap();
    assert_eq!(
        sha256(&on_disk),
        sha256(&want),
        "bytes written through b were lost"
    );
    let read = al.run(&["read", &key]).expect(0);
    assert_eq!(sha256(&read.stdout), sha256(&want));
}

/// Must-show 4: etcd down → state changes fail with a clear error (exit 6), reads through an
/// existing data channel go on; etcd back (restarted on the same data) → the same node
/// serves again and every open is still there.
#[test]
fn etcd_outage_and_restart_lose_no_open_and_reads_go_on() {
    let _serial = one_at_a_time();
    let ids = tempfile::tempdir().unwrap();
    let alice = client(ids.path(), "alice");
    let dir = cluster_dir(&[&alice]);
    let mut etcd = Etcd::start();
    let opts = ["--lease-ttl", "3", "--grace", "1"];
    let mut a = start_node("a", dir.path(), &etcd, &opts);
    a.wait_active(Duration::from_secs(20));
    let b = start_node("b", dir.path(), &etcd, &opts);
    let data = random_bytes(1 << 20, 3);
    for i in 0..20 {
        std::fs::write(dir.path().join(format!("root/f{i}")), &data).unwrap();
    }
    let al = cli(dir.path(), &[&a, &b], &alice);
    let keys: Vec<String> = (0..20).map(|i| al.open(&[&format!("f{i}")])).collect();

    let rt = runtime();
    let mut channel = rt.block_on(async {
        let mut c = Client::connect(&a.addr, &alice.identity).await.unwrap();
        c.open_data(&keys[0], Some(Channel::Tcp), false)
            .await
            .unwrap()
    });
    let read_all = |h: &mut handoff::DataHandle| {
        let mut got = Vec::new();
        rt.block_on(h.read_to(0, u64::MAX, &mut |c| {
            got.extend_from_slice(c);
            Ok(())
        }))
        .map(|_| sha256(&got))
    };

    etcd.kill();
    let out = eventually(Duration::from_secs(10), || {
        let out = al.run(&["open", "f1"]);
        (out.code != 0).then_some(out)
    });
    assert_eq!(out.code, 6, "{}", out.stderr);
    assert!(
        out.stderr.contains("etcd"),
        "not a clear error: {}",
        out.stderr
    );
    assert_eq!(read_all(&mut channel).unwrap(), sha256(&data));
    std::thread::sleep(Duration::from_secs(4)); // past the lease: still no panic, no exit
    assert!(a.is_running(), "{}", a.log());
    assert_eq!(read_all(&mut channel).unwrap(), sha256(&data));
    assert!(!a.log().contains("panicked"));

    etcd.restart();
    let extra = eventually(Duration::from_secs(15), || {
        let out = al.run(&["open", "f1"]);
        (out.code == 0).then(|| out.text())
    });
    assert!(a.is_running() && !b.is_active(), "the active node changed");
    for k in keys.iter().chain([&extra]) {
        al.run(&["resume", k]).expect(0);
    }
    assert_eq!(read_all(&mut channel).unwrap(), sha256(&data));
}

/// Must-show 5: 1 000 durable opens held across a failover all resume on the new active.
#[test]
fn a_thousand_durable_opens_all_resume_after_failover() {
    let _serial = one_at_a_time();
    let ids = tempfile::tempdir().unwrap();
    let alice = client(ids.path(), "alice");
    let dir = cluster_dir(&[&alice]);
    let etcd = Etcd::start();
    let opts = ["--grace", "1", "--durable-timeout", "600"];
    let mut a = start_node("a", dir.path(), &etcd, &opts);
    a.wait_active(Duration::from_secs(20));
    let b = start_node("b", dir.path(), &etcd, &opts);
    for i in 0..100 {
        std::fs::write(dir.path().join(format!("root/f{i}")), format!("file {i}")).unwrap();
    }
    let rt = runtime();
    let started = Instant::now();
    let keys: Vec<String> = rt.block_on(async {
        let mut c = Client::connect(&a.addr, &alice.identity).await.unwrap();
        let mut keys = Vec::new();
        for i in 0..1000 {
            let path = format!("f{}", i % 100);
            keys.push(c.open(&path, &Default::default()).await.unwrap().token);
        }
        keys
    });
    eprintln!("1000 opens through etcd in {:?}", started.elapsed());
    a.kill9();
    let took = b.wait_active(Duration::from_secs(10));
    eprintln!("b active {took:?} after kill -9 with 1000 opens held");
    assert!(b.log().contains("recovered_opens=1000"), "{}", b.log());
    let started = Instant::now();
    let resumed = rt.block_on(async {
        let mut c = Client::connect(&b.addr, &alice.identity).await.unwrap();
        let mut n = 0;
        for (i, k) in keys.iter().enumerate() {
            let mut h = c.open_data(k, Some(Channel::Tcp), false).await.unwrap();
            let mut got = Vec::new();
            h.read_to(0, u64::MAX, &mut |c| {
                got.extend_from_slice(c);
                Ok(())
            })
            .await
            .unwrap();
            assert_eq!(got, format!("file {}", i % 100).as_bytes());
            n += 1;
        }
        n
    });
    eprintln!(
        "1000 resumes (TCP duplicate handles) in {:?}",
        started.elapsed()
    );
    assert_eq!(resumed, 1000);
}

/// A library user's data handle rides out a failover by itself: its connection to the dead
/// active breaks, it resumes by key through the next listed server, and the transfer goes on.
#[test]
fn a_data_handle_resumes_by_itself_across_a_failover() {
    let _serial = one_at_a_time();
    let ids = tempfile::tempdir().unwrap();
    let alice = client(ids.path(), "alice");
    let dir = cluster_dir(&[&alice]);
    let etcd = Etcd::start();
    let opts = ["--lease-ttl", "3", "--grace", "1"];
    let mut a = start_node("a", dir.path(), &etcd, &opts);
    a.wait_active(Duration::from_secs(20));
    let b = start_node("b", dir.path(), &etcd, &opts);
    std::fs::write(dir.path().join("root/f"), b"").unwrap();
    let servers = format!("{},{}", a.addr, b.addr);
    let first = random_bytes(1 << 20, 5);
    let second = random_bytes(1 << 20, 6);

    let rt = runtime();
    let (mut h, token) = rt.block_on(async {
        let mut c = Client::connect(&servers, &alice.identity).await.unwrap();
        let opened = c
            .open(
                "f",
                &handoff::OpenOptions {
                    mode: handoff::Mode::ReadWrite,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let mut h = c
            .open_data(&opened.token, Some(Channel::Tcp), false)
            .await
            .unwrap();
        h.write_at(0, &first).await.unwrap();
        h.flush().await.unwrap();
        (h, opened.token)
    });
    a.kill9();
    // The CLI, given both servers and started before b is active, waits out the failover.
    assert!(!b.is_active());
    let cli = Cli {
        server: servers.clone(),
        identity: alice.path.clone(),
        keys: dir.path().join("alice.keys"),
    };
    let read = cli.run(&["read", &token]).expect(0);
    assert_eq!(sha256(&read.stdout), sha256(&first));
    let got = rt.block_on(async {
        // The next write finds the connection dead, resumes through b and is redone there.
        h.write_at(first.len() as u64, &second).await.unwrap();
        h.flush().await.unwrap();
        let mut got = Vec::new();
        h.read_to(0, u64::MAX, &mut |c| {
            got.extend_from_slice(c);
            Ok(())
        })
        .await
        .unwrap();
        got
    });
    assert!(b.is_active());
    let handoff::DataHandle::Stream(s) = &h else {
        panic!("asked for TCP")
    };
    assert_eq!(s.reconnects, 1);
    let want = [first, second].concat();
    assert_eq!(sha256(&got), sha256(&want));
    assert_eq!(
        sha256(&std::fs::read(dir.path().join("root/f")).unwrap()),
        sha256(&want)
    );
}
