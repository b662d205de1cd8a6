//! Claim 41: active/passive failover over a real etcd (started here on 127.0.0.1) with real
//! `handoffd` processes sharing one root: the new active rebuilds the resume-key table from
//! etcd, a paused active is fenced, etcd outages and restarts lose nothing.

mod common;
use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::{start_node, Etcd, Node};
use common::*;
use handoff::{Channel, Client};

/// What every cluster test starts from: a real etcd, node `a` active and node `b` passive
/// over one root, and the clients. Fields drop in order: the nodes before etcd, and the
/// one-at-a-time lock last.
struct Pair {
    a: Node,
    b: Node,
    etcd: Etcd,
    /// The shared root (`root/`) and the clients file.
    dir: tempfile::TempDir,
    clients: Vec<TestClient>,
    _ids: tempfile::TempDir,
    _serial: std::sync::MutexGuard<'static, ()>,
}

/// Starts a [`Pair`] serving the clients `names`, both nodes with `opts`. One test at a
/// time: each runs an etcd and two servers on ports picked free just before they start, and
/// shares 2 cores with them.
fn pair(names: &[&str], opts: &[&str]) -> Pair {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let serial = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let ids = tempfile::tempdir().unwrap();
    let clients: Vec<TestClient> = names.iter().map(|n| client(ids.path(), n)).collect();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("root")).unwrap();
    let lines: Vec<String> = clients.iter().map(|c| c.identity.to_line()).collect();
    write_private(&dir.path().join("clients"), &(lines.join("\n") + "\n"));
    let etcd = Etcd::start();
    let a = start_node("a", dir.path(), &etcd, opts);
    a.wait_active(Duration::from_secs(20));
    let b = start_node("b", dir.path(), &etcd, opts);
    eventually(Duration::from_secs(20), || {
        b.log().contains("passive: waiting").then_some(())
    });
    Pair {
        a,
        b,
        etcd,
        dir,
        clients,
        _ids: ids,
        _serial: serial,
    }
}

/// CLI helpers that list every node (`--server A,B`), as a user of a pair would.
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
    let mut p = pair(
        &["alice", "bob"],
        &["--durable-timeout", "15", "--grace", "1"],
    );
    let (alice, bob) = (&p.clients[0], &p.clients[1]);
    assert!(!p.b.is_active(), "two active nodes");

    let data = random_bytes(3 << 20, 41);
    std::fs::write(p.dir.path().join("root/f"), &data).unwrap();
    let (al, bo) = (
        cli(p.dir.path(), &[&p.a, &p.b], alice),
        cli(p.dir.path(), &[&p.a, &p.b], bob),
    );
    let key = al.open(&["f", "--mode", "rw", "--lock", "0:4096"]);

    p.a.kill9();
    let took = p.b.wait_active(Duration::from_secs(10));
    eprintln!("passive became active {took:?} after kill -9 of the active");
    assert!(p.b.log().contains("recovered_opens=1"), "{}", p.b.log());

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
        sha256(&std::fs::read(p.dir.path().join("root/f")).unwrap()),
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
    let mut p = pair(&["alice"], &["--lease-ttl", "3", "--grace", "1"]);
    let alice = &p.clients[0];
    std::fs::write(p.dir.path().join("root/f"), vec![b'.'; 64 << 10]).unwrap();
    let al = cli(p.dir.path(), &[&p.a, &p.b], alice);
    let key = al.open(&["f", "--mode", "rw"]);

    let rt = runtime();
    // A raw data channel to the active (no resuming elsewhere), held across the pause.
    let mut stale = rt.block_on(async {
        let mut c = Client::connect(&p.a.addr, &alice.identity).await.unwrap();
        let mut h = c.attach(&key, handoff::Transport::Tcp).await.unwrap();
        h.write_at(0, b"AAAA").await.unwrap();
        h
    });

    p.a.pause();
    p.b.wait_active(Duration::from_secs(15));
    // The client lists both: the paused one never answers, so it moves on to b.
    let newer = random_bytes(16 << 10, 7);
    al.run_with(&["write", &key, "--offset", "0"], Some(&newer))
        .expect(0);
    p.a.resume();

    let refused = rt.block_on(async {
        let w = stale.write_at(0, b"CCCC").await;
        let f = stale.flush().await;
        w.is_err() || f.is_err()
    });
    assert!(refused, "the fenced node accepted a write");
    let code = p.a.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(75), "{}", p.a.log());
    assert!(p.a.log().contains("fenced"), "{}", p.a.log());

    let mut want = vec![b'.'; 64 << 10];
    want[..newer.len()].copy_from_slice(&newer);
    let on_disk = std::fs::read(p.dir.path().join("root/f")).unwrap();
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
    let mut p = pair(&["alice"], &["--lease-ttl", "3", "--grace", "1"]);
    let alice = &p.clients[0];
    let data = random_bytes(1 << 20, 3);
    for i in 0..20 {
        std::fs::write(p.dir.path().join(format!("root/f{i}")), &data).unwrap();
    }
    let al = cli(p.dir.path(), &[&p.a, &p.b], alice);
    let keys: Vec<String> = (0..20).map(|i| al.open(&[&format!("f{i}")])).collect();

    let rt = runtime();
    let mut channel = rt.block_on(async {
        let mut c = Client::connect(&p.a.addr, &alice.identity).await.unwrap();
        c.open_data(&keys[0], Some(Channel::Tcp), false)
            .await
            .unwrap()
    });
    let mut read_sum = || sha256(&rt.block_on(read_all(&mut channel)));

    p.etcd.kill();
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
    assert_eq!(read_sum(), sha256(&data));
    std::thread::sleep(Duration::from_secs(4)); // past the lease: still no panic, no exit
    assert!(p.a.is_running(), "{}", p.a.log());
    assert_eq!(read_sum(), sha256(&data));
    assert!(!p.a.log().contains("panicked"));

    p.etcd.restart();
    let extra = eventually(Duration::from_secs(15), || {
        let out = al.run(&["open", "f1"]);
        (out.code == 0).then(|| out.text())
    });
    assert!(
        p.a.is_running() && !p.b.is_active(),
        "the active node changed"
    );
    for k in keys.iter().chain([&extra]) {
        al.run(&["resume", k]).expect(0);
    }
    assert_eq!(read_sum(), sha256(&data));
}

/// Must-show 5: 1 000 durable opens held across a failover all resume on the new active.
#[test]
fn a_thousand_durable_opens_all_resume_after_failover() {
    let mut p = pair(&["alice"], &["--grace", "1", "--durable-timeout", "600"]);
    let alice = &p.clients[0];
    for i in 0..100 {
        std::fs::write(p.dir.path().join(format!("root/f{i}")), format!("file {i}")).unwrap();
    }
    let rt = runtime();
    let started = Instant::now();
    let keys: Vec<String> = rt.block_on(async {
        let mut c = Client::connect(&p.a.addr, &alice.identity).await.unwrap();
        let mut keys = Vec::new();
        for i in 0..1000 {
            let path = format!("f{}", i % 100);
            keys.push(c.open(&path, &Default::default()).await.unwrap().token);
        }
        keys
    });
    eprintln!("1000 opens through etcd in {:?}", started.elapsed());
    p.a.kill9();
    let took = p.b.wait_active(Duration::from_secs(10));
    eprintln!("b active {took:?} after kill -9 with 1000 opens held");
    assert!(p.b.log().contains("recovered_opens=1000"), "{}", p.b.log());
    let started = Instant::now();
    let resumed = rt.block_on(async {
        let mut c = Client::connect(&p.b.addr, &alice.identity).await.unwrap();
        let mut n = 0;
        for (i, k) in keys.iter().enumerate() {
            let mut h = c.open_data(k, Some(Channel::Tcp), false).await.unwrap();
            let got = read_all(&mut h).await;
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
    let mut p = pair(&["alice"], &["--lease-ttl", "3", "--grace", "1"]);
    let alice = &p.clients[0];
    std::fs::write(p.dir.path().join("root/f"), b"").unwrap();
    let servers = format!("{},{}", p.a.addr, p.b.addr);
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
    p.a.kill9();
    // The CLI, given both servers and started before b is active, waits out the failover.
    assert!(!p.b.is_active());
    let cli = Cli {
        server: servers.clone(),
        identity: alice.path.clone(),
        keys: p.dir.path().join("alice.keys"),
    };
    let read = cli.run(&["read", &token]).expect(0);
    assert_eq!(sha256(&read.stdout), sha256(&first));
    let got = rt.block_on(async {
        // The next write finds the connection dead, resumes through b and is redone there.
        h.write_at(first.len() as u64, &second).await.unwrap();
        h.flush().await.unwrap();
        let got = read_all(&mut h).await;
        got
    });
    assert!(p.b.is_active());
    let handoff::DataHandle::Stream(s) = &h else {
        panic!("asked for TCP")
    };
    assert_eq!(s.reconnects, 1);
    let want = [first, second].concat();
    assert_eq!(sha256(&got), sha256(&want));
    assert_eq!(
        sha256(&std::fs::read(p.dir.path().join("root/f")).unwrap()),
        sha256(&want)
    );
}
