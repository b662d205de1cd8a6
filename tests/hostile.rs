//! Claims 5–6 and bad input: mutual authentication, and malformed frames that must only cost
//! the sender its own connection.

mod common;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[test]
fn wrong_secret_exits_5() {
    let tmp = tempfile::tempdir().unwrap();
    let c1 = client(tmp.path(), "c1");
    let server = TestServer::start(&[&c1], &[]);
    let forged = tmp.path().join("forged.id");
    write_private(&forged, &format!("c1:{}\n", "ab".repeat(32)));
    let out = Cli {
        identity: forged,
        ..server.cli(&c1)
    }
    .run(&["inbox"])
    .expect(5);
    assert!(out.stderr.contains("authenticate"), "{}", out.stderr);
    let stranger = client(tmp.path(), "stranger");
    let out = server.cli(&stranger).run(&["inbox"]).expect(5);
    assert!(out.stderr.contains("not known"), "{}", out.stderr);
    // The server is unharmed.
    server.cli(&c1).run(&["inbox"]).expect(0);
}

#[test]
fn a_server_holding_a_different_secret_is_detected_before_the_client_proves_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let c1 = client(tmp.path(), "c1");
    let elsewhere = tempfile::tempdir().unwrap();
    let impostor_view = client(elsewhere.path(), "c1"); // same name, other secret
    let server = TestServer::start(&[&impostor_view], &[]);
    // Watch the bytes the client sends through a relay.
    let relay = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let relay_addr = relay.local_addr().unwrap().to_string();
    let upstream = server.addr.clone();
    let watcher = std::thread::spawn(move || {
        let (mut down, _) = relay.accept().unwrap();
        let mut up = TcpStream::connect(upstream).unwrap();
        down.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        up.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // Hello from the client.
        let hello = read_frame(&mut down).expect("client hello");
        up.write_all(&hello).unwrap();
        // The challenge (with the server's proof) back.
        let challenge = read_frame(&mut up).expect("challenge");
        down.write_all(&challenge).unwrap();
        // Now the client must hang up without sending its proof.
        let mut rest = Vec::new();
        let _ = down.read_to_end(&mut rest);
        (hello[4], rest)
    });
    let out = Cli {
        server: relay_addr,
        ..server.cli(&c1)
    }
    .run(&["inbox"])
    .expect(5);
    assert!(
        out.stderr.contains("server failed to authenticate"),
        "{}",
        out.stderr
    );
    let (hello_kind, after_challenge) = watcher.join().unwrap();
    assert_eq!(hello_kind, 0x01);
    assert!(
        after_challenge.is_empty(),
        "client sent {} bytes after a bad server proof",
        after_challenge.len()
    );
}

fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut frame = len.to_vec();
    frame.resize(4 + u32::from_be_bytes(len) as usize, 0);
    s.read_exact(&mut frame[4..]).ok()?;
    Some(frame)
}

/// Sends `bytes`, half-closes, and returns whether the server closed the connection within
/// a few seconds (it must not hang or crash).
fn server_drops(addr: &str, bytes: &[u8]) -> bool {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut sink = Vec::new();
    // The server may answer (an AuthFailed) before closing; what matters is that it closes.
    s.read_to_end(&mut sink).is_ok()
}

#[test]
fn garbage_truncated_and_oversize_frames_drop_only_their_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let c1 = client(tmp.path(), "c1");
    let c2 = client(tmp.path(), "c2");
    let mut server = TestServer::start(&[&c1, &c2], &[]);
    let data = random_bytes(64 << 20, 9);
    let want = sha256(&data);
    server
        .cli(&c1)
        .run_with(&["put", "big"], Some(&data))
        .expect(0);

    // Two clients' transfers run while the attack goes on.
    let spawn_get = |cli: &Cli, channel: &str| {
        Command::new(HANDOFF)
            .args(["--server", &cli.server, "--identity"])
            .arg(&cli.identity)
            .args(["get", "big", "--channel", channel])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let gets = [
        spawn_get(&server.cli(&c1), "tcp"),
        spawn_get(&server.cli(&c2), "tls"),
    ];

    let mut hello = vec![];
    hello.extend_from_slice(&(1u32 + 8 + 16 + 1 + 2 + 2 + 32).to_be_bytes());
    hello.extend_from_slice(&[0x01, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2, b'c', b'1']);
    hello.extend_from_slice(&[0u8; 32]);
    hello.extend_from_slice(&[0u8; 16]);
    let attacks: Vec<(&str, Vec<u8>)> = vec![
        ("random bytes", random_bytes(4096, 10)),
        ("oversize length", vec![0xff, 0xff, 0xff, 0xff, 0x10, 0, 0]),
        (
            "just under the limit but never sent",
            (64u32 * 1024 + 25).to_be_bytes().to_vec(),
        ),
        ("undersize length", vec![0, 0, 0, 1, 0x10]),
        ("truncated frame", vec![0, 0, 0, 100, 0x01, 0, 0]),
        (
            "unknown type",
            [&30u32.to_be_bytes()[..], &[0x99], &[0u8; 29]].concat(),
        ),
        (
            "session frame before the handshake",
            [&25u32.to_be_bytes()[..], &[0x13], &[0u8; 24]].concat(),
        ),
        (
            "hello then garbage",
            [&hello[..], &random_bytes(100, 11)].concat(),
        ),
        ("empty", vec![]),
    ];
    for round in 0..5 {
        for (what, bytes) in &attacks {
            for addr in [&server.addr, &server.data_addr] {
                assert!(
                    server_drops(addr, bytes),
                    "round {round}: {what} on {addr} left the connection hanging"
                );
            }
        }
    }
    // A properly authenticated client that then sends a frame with a bad MAC is dropped too.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr = server.addr.clone();
    let identity = c1.identity.clone();
    let dropped = runtime.block_on(async move {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut chan = handoff_server::net::Channel::new(stream);
        chan.client_handshake(&identity).await.unwrap();
        // Inbox frame with a zero MAC.
        let mut frame = bytes::BytesMut::new();
        handoff_server::wire::encode_frame(&mut frame, 0x13, 0, &[], &[0; 16]).unwrap();
        chan.write_raw(&frame).await.unwrap();
        matches!(chan.recv().await, Ok(None) | Err(_))
    });
    assert!(dropped, "a forged frame was answered");

    for g in gets {
        let out = g.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(sha256(&out.stdout), want);
    }
    assert!(server.is_running());
    server.cli(&c2).run(&["inbox"]).expect(0);
}

#[test]
fn a_silent_connection_is_dropped_after_the_handshake_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let c1 = client(tmp.path(), "c1");
    let server = TestServer::start(&[&c1], &[]);
    let started = std::time::Instant::now();
    let mut conns: Vec<TcpStream> = [&server.addr, &server.data_addr]
        .iter()
        .map(|a| TcpStream::connect(a).unwrap())
        .collect();
    for s in &mut conns {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(
            s.read(&mut buf).unwrap(),
            0,
            "server closed the silent connection"
        );
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(19),
        "{waited:?}"
    );
    server.cli(&c1).run(&["inbox"]).expect(0);
}

/// The kernel's timer on the server end of a TCP connection, from /proc/net/tcp: (kind, in
/// seconds). Kind 2 is the keepalive timer.
fn server_side_timer(server_port: u16, client_port: u16) -> Option<(u32, f64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
        if port(f.get(1)?)? != server_port || port(f.get(2)?)? != client_port {
            return None;
        }
        let (kind, when) = f.get(5)?.split_once(':')?;
        Some((
            u32::from_str_radix(kind, 16).ok()?,
            u64::from_str_radix(when, 16).ok()? as f64 / 100.0,
        ))
    })
}

#[test]
fn a_client_that_vanishes_is_probed_by_tcp_keepalive_on_both_channels() {
    let tmp = tempfile::tempdir().unwrap();
    let c1 = client(tmp.path(), "c1");
    let server = TestServer::start(&[&c1], &[]);
    for addr in [&server.addr, &server.data_addr] {
        let s = TcpStream::connect(addr).unwrap();
        let (server_port, client_port) = (
            s.peer_addr().unwrap().port(),
            s.local_addr().unwrap().port(),
        );
        // Without keepalive an idle connection has no timer; with it, the keepalive timer
        // (kind 2) is armed for about 20 s, so a vanished client is noticed and detached.
        let (kind, secs) = eventually(Duration::from_secs(3), || {
            server_side_timer(server_port, client_port).filter(|t| t.0 != 0)
        });
        assert_eq!(kind, 2, "keepalive timer on the server end of {addr}");
        assert!(secs > 5.0 && secs <= 20.5, "probe after {secs} s");
    }
}

/// A data server that announces more bytes than the client asked for (broken or hostile):
/// the client library refuses the reply instead of overrunning the caller's buffer.
#[test]
fn a_server_announcing_more_bytes_than_asked_is_refused_not_a_panic() {
    use handoff_datapath::tcp::{DataClient, Transport};
    use handoff_server::net::Channel;
    use handoff_server::state::{Mode, ShareMode};
    use handoff_server::wire::{FileInfo, Message};

    let tmp = tempfile::tempdir().unwrap();
    let c1 = client(tmp.path(), "c1");
    let directory = handoff_server::auth::ClientDirectory::parse(&c1.identity.to_line()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let fake = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut chan = Channel::new(stream);
            chan.server_handshake(&directory, |_| Ok(())).await.unwrap();
            let _attach = chan.expect().await.unwrap();
            let info = FileInfo {
                mode: Mode::Read,
                share: ShareMode::ALL,
                locks: vec![],
                size: 10,
            };
            chan.send(&Message::Attached {
                handle: 1,
                info,
                report: Default::default(),
            })
            .await
            .unwrap();
            let _read = chan.expect().await.unwrap();
            chan.send(&Message::ReadData { len: 1 << 20 })
                .await
                .unwrap();
            let _ = chan.write_raw(&vec![0xAA; 1 << 20]).await;
            let _ = chan.flush().await;
        });
        let mut data = DataClient::connect(&addr, Transport::Tcp, None, &c1.identity, &[0; 50])
            .await
            .unwrap();
        let mut buf = [0u8; 10];
        let e = data.read_at(0, &mut buf).await.unwrap_err();
        assert!(e.to_string().contains("announced"), "{e}");
        assert_eq!(buf, [0u8; 10], "bytes past the reply were delivered");
        fake.await.unwrap();
    });
}
