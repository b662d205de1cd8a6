//! Issue 11: admission control, stall timeouts and quotas, against the real binaries, with
//! hostile peers driven from this process.

mod common;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use handoff_server::net::Channel;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn stats(cli: &Cli) -> serde_json::Value {
    cli.run(&["stats"]).expect(0).json()
}

/// Connections from `from` to `to` that send nothing; each one the server closes is opened
/// again a second later, until `stop`.
fn flood(
    rt: &tokio::runtime::Runtime,
    from: &str,
    to: &str,
    count: usize,
    stop: Arc<AtomicBool>,
) -> Arc<AtomicU64> {
    let closed = Arc::new(AtomicU64::new(0));
    let (from, to): (std::net::SocketAddr, std::net::SocketAddr) =
        (format!("{from}:0").parse().unwrap(), to.parse().unwrap());
    for _ in 0..count {
        let (stop, closed) = (stop.clone(), closed.clone());
        rt.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let sock = TcpSocket::new_v4().unwrap();
                sock.bind(from).unwrap();
                if let Ok(mut s) = sock.connect(to).await {
                    let mut b = [0u8; 64];
                    let ended = tokio::time::timeout(Duration::from_secs(60), s.read(&mut b));
                    tokio::select! {
                        _ = ended => { closed.fetch_add(1, Ordering::Relaxed); }
                        _ = async { while !stop.load(Ordering::Relaxed) {
                            tokio::time::sleep(Duration::from_millis(200)).await } } => return,
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    closed
}

#[test]
fn three_thousand_idle_connections_from_one_address_do_not_keep_others_waiting() {
    let limit = raise_fd_limit();
    assert!(
        limit > 4000,
        "this test needs 4000 descriptors, the limit is {limit}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let alice = client(tmp.path(), "alice");
    let server = TestServer::start(&[&alice], &[]);
    std::fs::write(server.root().join("f"), b"the bytes").unwrap();
    let a = server.cli(&alice);
    let rt = runtime();
    let stop = Arc::new(AtomicBool::new(false));
    // 127.0.0.2 is loopback too: the flood's one address, not alice's.
    let closed = flood(&rt, "127.0.0.2", &server.addr, 3000, stop.clone());
    std::thread::sleep(Duration::from_secs(3));
    let mut slowest = Duration::ZERO;
    for round in 0..5 {
        let t = Instant::now();
        let key = a
            .run_within(Duration::from_secs(2), &["open", "f"])
            .expect(0)
            .text();
        let out = a
            .run_within(Duration::from_secs(2), &["read", &key])
            .expect(0);
        assert_eq!(out.stdout, b"the bytes", "round {round}");
        a.run_within(Duration::from_secs(2), &["close", &key])
            .expect(0);
        slowest = slowest.max(t.elapsed());
    }
    let s = stats(&a);
    stop.store(true, Ordering::Relaxed);
    eprintln!(
        "slowest open+read+close under the flood: {slowest:?}; server: {s}; flood connections closed: {}",
        closed.load(Ordering::Relaxed)
    );
    assert!(
        s["connections_unauthenticated"].as_u64().unwrap() <= 256,
        "{s}"
    );
    let closed =
        s["connections_evicted"].as_u64().unwrap() + s["connections_turned_away"].as_u64().unwrap();
    assert!(closed >= 2000, "{s}");
}

/// An authenticated control connection that sends nothing more.
async fn authenticated(addr: &str, who: &TestClient) -> Channel<TcpStream> {
    let mut chan = Channel::new(TcpStream::connect(addr).await.unwrap());
    chan.client_handshake(&who.identity).await.unwrap();
    chan
}

#[test]
fn a_client_at_its_connection_cap_is_refused_by_name_and_others_are_served() {
    let tmp = tempfile::tempdir().unwrap();
    let (alice, bob) = (client(tmp.path(), "alice"), client(tmp.path(), "bob"));
    let server = TestServer::start(&[&alice, &bob], &["--max-client-connections", "4"]);
    let rt = runtime();
    let held: Vec<_> = (0..4)
        .map(|_| rt.block_on(authenticated(&server.addr, &alice)))
        .collect();
    let out = server.cli(&alice).run(&["stats"]).expect(3);
    assert!(
        out.stderr.contains("too many connections from alice")
            && out.stderr.contains("--max-client-connections 4"),
        "{}",
        out.stderr
    );
    let s = stats(&server.cli(&bob));
    assert_eq!(s["connections_refused"], 1, "{s}");
    drop(held);
    // Her seats come back when her connections go.
    eventually(Duration::from_secs(5), || {
        (server.cli(&alice).run(&["stats"]).code == 0).then_some(())
    });
}

#[test]
fn stalled_partial_frames_are_closed_after_the_frame_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let (alice, bob) = (client(tmp.path(), "alice"), client(tmp.path(), "bob"));
    let server = TestServer::start(
        &[&alice, &bob],
        &["--max-connections", "5", "--frame-timeout", "2"],
    );
    let rt = runtime();
    // Five authenticated connections each announce a 60 000-byte frame and send 10 bytes.
    let mut stalled: Vec<_> = (0..5)
        .map(|_| {
            rt.block_on(async {
                let mut chan = authenticated(&server.addr, &alice).await;
                let s = chan.get_mut();
                s.write_all(&60_000u32.to_be_bytes()).await.unwrap();
                s.write_all(&[0x13; 10]).await.unwrap();
                chan
            })
        })
        .collect();
    let start = Instant::now();
    // The server is full: bob is refused, by name of the cap.
    let out = server.cli(&bob).run(&["stats"]).expect(3);
    assert!(out.stderr.contains("--max-connections 5"), "{}", out.stderr);
    // Each stalled connection is closed after the timeout, not before.
    for chan in &mut stalled {
        let mut b = [0u8; 256];
        let n = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), chan.get_mut().read(&mut b)).await
        });
        assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "closed: {n:?}");
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(6),
        "{took:?}"
    );
    server.cli(&bob).run(&["stats"]).expect(0);
    assert!(server.log().contains("a frame stayed incomplete for 2 s"));
}

#[test]
fn an_idle_control_connection_is_closed_unless_it_holds_opens_and_the_client_carries_on() {
    let tmp = tempfile::tempdir().unwrap();
    let (alice, bob) = (client(tmp.path(), "alice"), client(tmp.path(), "bob"));
    let server = TestServer::start(
        &[&alice, &bob],
        &["--idle-timeout", "1", "--durable-timeout", "2"],
    );
    std::fs::write(server.root().join("f"), b"x").unwrap();
    let rt = runtime();
    rt.block_on(async {
        let mut holder = handoff::Client::connect(&server.addr, &alice.identity)
            .await
            .unwrap();
        let mut idler = handoff::Client::connect(&server.addr, &bob.identity)
            .await
            .unwrap();
        let opts = handoff::OpenOptions {
            mode: handoff_server::state::Mode::ReadWrite,
            share: handoff_server::state::ShareMode::NONE,
            ..Default::default()
        };
        let opened = holder.open("f", &opts).await.unwrap();
        // Past the idle timeout and the durable timeout after it.
        tokio::time::sleep(Duration::from_millis(4000)).await;
        // bob's connection held nothing: it was closed (with a goodbye), and his next
        // request reconnects by itself.
        assert!(idler.inbox().await.unwrap().is_empty());
        // alice's holds her open: it stayed, and so did the open (bob is still denied).
        let out = server.cli(&bob).run(&["open", "f", "--mode", "rw"]);
        assert_eq!(out.code, 3, "{}", out.stderr);
        holder.close(&opened.token).await.unwrap();
    });
    let log = server.log();
    assert_eq!(
        log.matches("closing an idle control connection").count(),
        1,
        "{log}"
    );
}

#[test]
fn a_client_past_its_open_quota_is_told_and_others_are_not() {
    let tmp = tempfile::tempdir().unwrap();
    let (alice, bob) = (client(tmp.path(), "alice"), client(tmp.path(), "bob"));
    let server = TestServer::start(&[&alice, &bob], &["--max-client-opens", "3"]);
    for i in 0..5 {
        std::fs::write(server.root().join(format!("f{i}")), b"x").unwrap();
    }
    let a = server.cli(&alice);
    let keys: Vec<String> = (0..3).map(|i| a.open(&[&format!("f{i}")])).collect();
    let out = a.run(&["open", "f3"]).expect(3);
    assert!(
        out.stderr.contains("quota") && out.stderr.contains("--max-client-opens 3"),
        "{}",
        out.stderr
    );
    server.cli(&bob).open(&["f3"]);
    a.run(&["close", &keys[0]]).expect(0);
    a.open(&["f3"]);
}

#[test]
fn five_thousand_passed_keys_are_all_listed_and_the_pass_past_the_cap_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (alice, bob) = (client(tmp.path(), "alice"), client(tmp.path(), "bob"));
    let server = TestServer::start(&[&alice, &bob], &["--max-inbox", "5000"]);
    for i in 0..80 {
        std::fs::write(server.root().join(format!("f{i}")), b"x").unwrap();
    }
    let rt = runtime();
    let (passed, refused) = rt.block_on(async {
        let mut c = handoff::Client::connect(&server.addr, &alice.identity)
            .await
            .unwrap();
        let mut passed = Vec::new();
        let mut key = String::new();
        for i in 0..5000 {
            // An open can be passed 63 times.
            if i % 63 == 0 {
                key = c
                    .open(&format!("f{}", i / 63), &Default::default())
                    .await
                    .unwrap()
                    .token;
            }
            passed.push(c.pass(&key, "bob").await.unwrap());
        }
        let refused = c.pass(&key, "bob").await.unwrap_err();
        (passed, refused)
    });
    let msg = refused.to_string();
    assert!(
        msg.contains("quota") && msg.contains("--max-inbox 5000"),
        "{msg}"
    );
    assert_eq!(handoff::exit::for_code(refused.code()), 3);
    let out = server.cli(&bob).run(&["inbox"]).expect(0);
    let listed: Vec<String> = out.text().lines().map(str::to_owned).collect();
    assert_eq!(listed.len(), 5000);
    assert_eq!(listed, passed, "every key, in the order passed, none lost");
    // One of them still works for bob.
    server.cli(&bob).run(&["read", &passed[0]]).expect(0);
}
