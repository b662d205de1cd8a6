//! Claim 43: planned drain between two servers with separate roots and stores. The drained
//! server sends its keys, locks, versions and the files the peer lacks; its clients are
//! referred and resume by the keys they hold.

mod common;
use common::*;
use handoff::Identity;
use handoff_server::net::ControlClient;
use handoff_server::wire::{Message, OpenParams};
use handoff_server::{state::Mode, state::ShareMode, Error};

#[test]
fn drain_refers_clients_to_the_peer_with_locks_and_report_preserved() {
    let tmp = tempfile::tempdir().unwrap();
    let alice = client(tmp.path(), "alice");
    let bob = client(tmp.path(), "bob");
    let admin = client(tmp.path(), "admin");
    let srv_a = client(tmp.path(), "srv-a");
    // b knows a's server identity and lets it drain in; a lets `admin` drain it.
    let b = TestServer::start(&[&alice, &bob, &srv_a], &["--peers", "srv-a"]);
    let peer_id = srv_a.path.to_str().unwrap().to_owned();
    let a = TestServer::start(
        &[&alice, &bob, &admin],
        &["--admins", "admin", "--peer-identity", &peer_id],
    );
    let data = random_bytes(300_000, 43); // five FileChunks
    std::fs::write(a.root().join("f"), &data).unwrap();
    std::fs::write(a.root().join("g"), b"a's g").unwrap();
    std::fs::write(b.root().join("g"), b"b's own g").unwrap();

    let (al, bo) = (a.cli(&alice), a.cli(&bob));
    let key = al.open(&["f", "--mode", "rw", "--lock", "0:4096"]);
    let g = al.open(&["g"]);
    // A library user holds a data handle on a across the drain.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut held = rt.block_on(async {
        let mut c = handoff::Client::connect(&a.addr, &alice.identity)
            .await
            .unwrap();
        c.open_data(&g, Some(handoff::Channel::Tcp), false)
            .await
            .unwrap()
    });
    // bob changes f meanwhile: alice must still hear of it after the drain.
    let bkey = bo.open(&["f", "--mode", "rw"]);
    // alice passes g to bob, who has not collected it when the drain happens.
    let passed = al.run(&["pass", &g, "--to", "bob"]).expect(0).text();
    bo.run_with(
        &["write", &bkey, "--offset", "100000"],
        Some(b"bob was here"),
    )
    .expect(0);
    let mut want = data.clone();
    want[100_000..100_012].copy_from_slice(b"bob was here");

    // Only an administrator may drain.
    let out = al.run(&["admin", "drain", "--to", &b.addr]).expect(3);
    assert!(out.stderr.contains("--admins"), "{}", out.stderr);
    let out = a
        .cli(&admin)
        .run(&["--json", "admin", "drain", "--to", &b.addr])
        .expect(0);
    let r = out.json();
    assert_eq!(r["opens"], 3, "{r}"); // f twice, g once
    assert_eq!(r["files_sent"], 1, "only f was missing on b: {r}");
    assert_eq!(r["bytes_sent"], want.len(), "{r}");
    assert_eq!(
        sha256(&std::fs::read(b.root().join("f")).unwrap()),
        sha256(&want)
    );
    assert_eq!(std::fs::read(b.root().join("g")).unwrap(), b"b's own g");

    // alice still talks to a; she is referred to b and resumes there by her key.
    let out = al.run(&["--json", "resume", &key]).expect(0);
    let report = out.json();
    assert_eq!(report["changed_by_other"], true, "{report}");
    assert_eq!(report["locks"][0], "0:4096", "{report}");
    let read = al.run(&["read", &key]).expect(0);
    assert_eq!(sha256(&read.stdout), sha256(&want));
    // The lock moved with the open: bob (referred too) cannot take those bytes on b.
    let out = bo.run(&["open", "f", "--lock", "0:10"]).expect(3);
    assert!(out.stderr.contains("lock conflict"), "{}", out.stderr);
    // Writes through the old key land on b's copy.
    al.run_with(&["write", &key, "--offset", "0"], Some(b"ALICE"))
        .expect(0);
    assert_eq!(&std::fs::read(b.root().join("f")).unwrap()[..5], b"ALICE");

    // The held handle is referred on its next read and resumes on b (b's own g: b's file
    // wins, the open moved).
    let got = rt.block_on(read_all(&mut held));
    assert_eq!(got, b"b's own g");
    let handoff::DataHandle::Stream(s) = &held else {
        panic!("asked for TCP")
    };
    assert_eq!(s.reconnects, 1);

    // bob's inbox moved too (asked at a, answered by b), and the passed key works there.
    let inbox = bo.run(&["inbox"]).expect(0).text();
    assert_eq!(inbox.lines().collect::<Vec<_>>(), vec![passed.as_str()]);
    let read = bo.run(&["read", &passed]).expect(0);
    assert_eq!(read.stdout, b"b's own g");

    // a itself refuses new opens of the drained files, naming b.
    let referred = rt.block_on(async {
        let id = Identity::parse(&std::fs::read_to_string(&alice.path).unwrap()).unwrap();
        let mut c = ControlClient::connect(&a.addr, &id).await.unwrap();
        c.request(&Message::Open(OpenParams {
            path: "f".into(),
            mode: Mode::Read,
            share: ShareMode::ALL,
            locks: vec![],
            create: false,
            truncate: false,
            pid: 1,
        }))
        .await
    });
    match referred {
        Err(Error::Referred(peer)) => assert_eq!(peer, b.addr),
        other => panic!("expected a referral, got {other:?}"),
    }

    // The referral survives a restart of the drained server, and b's import a restart of b.
    let mut a = a;
    a.restart();
    let mut b = b;
    b.restart();
    let read = a.cli(&alice).run(&["read", &key, "--len", "5"]).expect(0);
    assert_eq!(read.stdout, b"ALICE");
}

#[test]
fn a_drain_to_an_unreachable_peer_fails_and_the_server_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let alice = client(tmp.path(), "alice");
    let admin = client(tmp.path(), "admin");
    let srv_a = client(tmp.path(), "srv-a");
    let peer_id = srv_a.path.to_str().unwrap().to_owned();
    let a = TestServer::start(
        &[&alice, &admin],
        &["--admins", "admin", "--peer-identity", &peer_id],
    );
    std::fs::write(a.root().join("f"), b"data").unwrap();
    let key = a.cli(&alice).open(&["f"]);
    let nobody = format!("127.0.0.1:{}", common::cluster::free_port());
    let out = a
        .cli(&admin)
        .run(&["admin", "drain", "--to", &nobody])
        .expect(1);
    assert!(out.stderr.contains("drain"), "{}", out.stderr);
    let read = a.cli(&alice).run(&["read", &key]).expect(0);
    assert_eq!(read.stdout, b"data");
}
