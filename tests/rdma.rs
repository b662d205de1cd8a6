//! Claims 9–10, 24–25, 26–27 over real soft-RoCE. These run inside the QEMU guest that
//! `hw-setup/test-rdma.sh` boots (real `rdma_rxe` devices rxe0 and rxe1), which runs them with
//! `--include-ignored` and HANDOFF_REQUIRE_RDMA=1 (a missing device fails them). A plain
//! `cargo test` on a host lists them as ignored.

mod common;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use handoff::{Client, DataHandle};

/// The guest's RDMA-capable addresses, or None (skip) on a host without them.
fn rdma_ips() -> Option<Vec<String>> {
    match std::env::var("HANDOFF_GUEST_IPS") {
        Ok(v) if !v.is_empty() => Some(v.split(',').map(str::to_string).collect()),
        _ => {
            assert!(
                std::env::var("HANDOFF_REQUIRE_RDMA").is_err(),
                "HANDOFF_REQUIRE_RDMA is set but no RDMA device is configured"
            );
            eprintln!("skipped: no RDMA device (run through hw-setup/test-rdma.sh)");
            None
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `--rdma-listen` arguments for the first `nics` guest addresses.
fn rdma_args(ips: &[String], nics: usize) -> Vec<String> {
    let port = free_port();
    ips.iter()
        .take(nics)
        .flat_map(|ip| ["--rdma-listen".to_string(), format!("{ip}:{port}")])
        .collect()
}

fn start(clients: &[&TestClient], ips: &[String], nics: usize, extra: &[&str]) -> TestServer {
    let mut args = rdma_args(ips, nics);
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    TestServer::start(clients, &refs)
}

fn stats(server: &TestServer, who: &TestClient) -> serde_json::Value {
    server.cli(who).run(&["stats"]).expect(0).json()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A duplicate handle of `key` over RDMA for `who` (direct mode asked for if `direct`), taken
/// on a control connection that is closed once it is made.
async fn rdma_handle(server: &TestServer, who: &TestClient, key: &str, direct: bool) -> DataHandle {
    let mut control = Client::connect(&server.addr, &who.identity).await.unwrap();
    control
        .open_data(key, Some(handoff::Channel::Rdma), direct)
        .await
        .unwrap()
}

/// The server's RDMA data endpoints, as its control channel lists them.
async fn rdma_addrs(control: &mut Client) -> Vec<std::net::SocketAddr> {
    control
        .endpoints()
        .await
        .unwrap()
        .list
        .iter()
        .filter(|e| e.kind == handoff_core::wire::EndpointKind::Rdma)
        .filter_map(|e| e.addr.parse().ok())
        .collect()
}

fn report(out: &Out) -> serde_json::Value {
    let line = out
        .stderr
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON report: {}", out.stderr));
    serde_json::from_str(line).unwrap()
}

#[test]
#[ignore = "needs RDMA devices: run through hw-setup/test-rdma.sh (the rxe guest)"]
fn rdma_read_and_write_256_mib_through_a_key_after_the_control_channel_closed() {
    let Some(ips) = rdma_ips() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (c1, c2) = (client(tmp.path(), "c1"), client(tmp.path(), "c2"));
    let server = start(&[&c1, &c2], &ips, 1, &["--metrics-listen", "127.0.0.1:0"]);
    let metrics = server.metrics_addr.clone().expect("a metrics address");
    let data = random_bytes(256 << 20, 21);
    std::fs::write(server.root().join("f"), &data).unwrap();
    let (a, b) = (server.cli(&c1), server.cli(&c2));

    // `open` exits: the control channel is gone before the RDMA channel is made.
    let key = a.open(&["f", "--mode", "rw", "--lock", "0:4096"]);
    let out = a
        .run(&["read", &key, "--channel", "rdma", "--json"])
        .expect(0);
    assert_eq!(out.stdout.len(), data.len());
    assert_eq!(sha256(&out.stdout), sha256(&data));
    let r = report(&out);
    assert_eq!(r["channel"], "rdma");
    assert_eq!(r["qps"][0]["bytes"], (256u64 << 20));
    let rdma_bytes = |direction: &str| {
        series(
            &scrape(&metrics),
            &format!(r#"handoff_data_bytes_total{{transport="rdma",direction="{direction}"}}"#),
        )
    };
    assert_eq!(rdma_bytes("read"), (256u64 << 20) as f64);
    // Read front to back, the file's four 64 MiB windows: the first waited for, the other
    // three registered ahead while the one before was being read.
    let windows = |s: &serde_json::Value| {
        (
            s["rdma_window_waits"].as_u64().unwrap(),
            s["rdma_windows_ahead"].as_u64().unwrap(),
        )
    };
    assert_eq!(windows(&stats(&server, &c1)), (1, 3));

    // Write 256 MiB over RDMA (server RDMA-READs from the client's buffers): on tmpfs (the
    // guest's /tmp) straight into the file's pages, and the file's mtime moves as for write(2).
    let path = server.root().join("f");
    let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let new = random_bytes(256 << 20, 22);
    a.run_with(&["write", &key, "--channel", "rdma"], Some(&new))
        .expect(0);
    assert_eq!(sha256(&std::fs::read(&path).unwrap()), sha256(&new));
    assert!(std::fs::metadata(&path).unwrap().modified().unwrap() > modified);
    assert_eq!(
        stats(&server, &c1)["rdma_in_place_bytes"].as_u64().unwrap(),
        256 << 20,
        "every byte of a write inside a tmpfs file lands in place"
    );
    // Writes in place have windows of their own (writable), registered ahead the same way.
    assert_eq!(windows(&stats(&server, &c1)), (2, 6));
    assert_eq!(rdma_bytes("write"), (256u64 << 20) as f64);
    assert_eq!(
        sha256(&a.run(&["read", &key, "--channel", "rdma"]).expect(0).stdout),
        sha256(&new)
    );

    // The duplicate handle obeys the open's mode and locks.
    let ro = b.open(&["f", "--mode", "r"]);
    let denied = b
        .run_with(&["write", &ro, "--channel", "rdma"], Some(b"nope"))
        .expect(3);
    assert!(denied.stderr.contains("read-only"), "{}", denied.stderr);
    b.run(&[
        "read",
        &ro,
        "--channel",
        "rdma",
        "--offset",
        "100",
        "--len",
        "10",
    ])
    .expect(3);
    let ok = b
        .run(&[
            "read",
            &ro,
            "--channel",
            "rdma",
            "--offset",
            "4096",
            "--len",
            "10",
        ])
        .expect(0);
    assert_eq!(ok.stdout, &new[4096..4106]);
    // The locker's own duplicate reads its range.
    let mine = a
        .run(&[
            "read",
            &key,
            "--channel",
            "rdma",
            "--offset",
            "100",
            "--len",
            "10",
        ])
        .expect(0);
    assert_eq!(mine.stdout, &new[100..110]);
}

#[test]
#[ignore = "needs RDMA devices: run through hw-setup/test-rdma.sh (the rxe guest)"]
fn forged_altered_and_foreign_keys_are_rejected_before_a_qp_is_accepted() {
    let Some(ips) = rdma_ips() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (c1, c2) = (client(tmp.path(), "c1"), client(tmp.path(), "c2"));
    let server = start(&[&c1, &c2], &ips, 1, &[]);
    std::fs::write(server.root().join("f"), b"rdma bytes").unwrap();
    let (a, b) = (server.cli(&c1), server.cli(&c2));
    let key = a.open(&["f"]);
    let before = stats(&server, &c1)["rdma_connections"].as_u64().unwrap();

    // Foreign: c2 presents c1's key (it cannot make c1's connect tag).
    let out = b.run(&["read", &key, "--channel", "rdma"]).expect(3);
    assert!(out.stderr.contains("another client"), "{}", out.stderr);
    // Altered: one character of the key changed.
    let mut altered = key.clone().into_bytes();
    altered[30] = if altered[30] == b'A' { b'B' } else { b'A' };
    a.run(&[
        "read",
        std::str::from_utf8(&altered).unwrap(),
        "--channel",
        "rdma",
    ])
    .expect(4);
    // Forged: a well-formed key under the wrong MAC key.
    let forged = handoff_server::state::KeySealer::new([7; 32]).to_token(
        &handoff_server::state::ResumeKey {
            file_id: 1,
            opened_at: 2,
            pid: 3,
            slot: 1,
            nonce: 4,
        },
    );
    a.run(&["read", &forged, "--channel", "rdma"]).expect(4);
    // Closed: a key replayed after close.
    let closed = a.open(&["f"]);
    a.run(&["close", &closed]).expect(0);
    a.run(&["read", &closed, "--channel", "rdma"]).expect(4);

    // None of them got a QP accepted; the server still serves.
    assert_eq!(
        stats(&server, &c1)["rdma_connections"].as_u64().unwrap(),
        before
    );
    assert_eq!(
        a.run(&["read", &key, "--channel", "rdma"]).expect(0).stdout,
        b"rdma bytes"
    );
    assert_eq!(
        stats(&server, &c1)["rdma_connections"].as_u64().unwrap(),
        before + 1
    );
}

#[test]
#[ignore = "needs RDMA devices: run through hw-setup/test-rdma.sh (the rxe guest)"]
fn two_nics_stripe_a_transfer_and_survive_losing_one() {
    let Some(ips) = rdma_ips() else { return };
    if ips.len() < 2 {
        assert!(
            std::env::var("HANDOFF_REQUIRE_RDMA").is_err(),
            "two NICs required"
        );
        eprintln!("skipped: one RDMA NIC");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let c1 = client(tmp.path(), "c1");
    let server = start(&[&c1], &ips, 2, &[]);
    let data = random_bytes(256 << 20, 23);
    std::fs::write(server.root().join("f"), &data).unwrap();
    let cli = server.cli(&c1);
    let key = cli.open(&["f"]);

    let out = cli
        .run(&["read", &key, "--channel", "rdma", "--json"])
        .expect(0);
    assert_eq!(sha256(&out.stdout), sha256(&data));
    let r = report(&out);
    let (q0, q1) = (
        r["qps"][0]["bytes"].as_u64().unwrap(),
        r["qps"][1]["bytes"].as_u64().unwrap(),
    );
    assert_eq!(q0 + q1, 256 << 20, "{r}");
    assert!(
        q0 >= 64 << 20 && q1 >= 64 << 20,
        "both QPs carry a share: {r}"
    );
    assert_ne!(r["qps"][0]["device"], r["qps"][1]["device"]);

    // Take the second NIC's RDMA device away mid-transfer. The reader's output goes to files
    // so it never waits on this test.
    let (out_path, err_path) = (tmp.path().join("out"), tmp.path().join("err"));
    let mut child = std::process::Command::new(HANDOFF)
        .args(["--server", &cli.server, "--identity"])
        .arg(&cli.identity)
        .args(["read", &key, "--channel", "rdma", "--json"])
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // Remove rxe1. The kernel tells every rdma_cm user (DEVICE_REMOVAL); the removal itself
    // completes only when each process has closed the device, which librdmacm does at exit,
    // so it runs in the background while the client carries on over rxe0.
    let mut removal = std::process::Command::new("rdma")
        .args(["link", "delete", "rxe1"])
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!(
                "the read did not finish after losing rxe1: {}",
                std::fs::read_to_string(&err_path).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = std::fs::read_to_string(&err_path).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(
        sha256(&std::fs::read(&out_path).unwrap()),
        sha256(&data),
        "bytes after losing a path"
    );
    drop(server); // the last holder of rxe1
    let removed = eventually(Duration::from_secs(60), || removal.try_wait().unwrap());
    assert!(removed.success(), "rxe1 removal failed");
    let r = report(&Out {
        code: 0,
        stdout: vec![],
        stderr,
    });
    assert!(
        !r["qps"][1]["failed"].is_null(),
        "the lost path is reported: {r}"
    );
    let _ = std::process::Command::new("rdma")
        .args(["link", "add", "rxe1", "type", "rxe", "netdev", "eth1"])
        .status();
}

#[test]
#[ignore = "needs RDMA devices: run through hw-setup/test-rdma.sh (the rxe guest)"]
fn direct_mode_reads_without_server_work_and_falls_back_when_revoked() {
    let Some(ips) = rdma_ips() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (c1, c2) = (client(tmp.path(), "c1"), client(tmp.path(), "c2"));
    let server = start(&[&c1, &c2], &ips, 1, &[]);
    let old = random_bytes(8 << 20, 24);
    std::fs::write(server.root().join("f"), &old).unwrap();
    let key = server.cli(&c1).open(&["f", "--mode", "r"]);

    let rt = runtime();
    rt.block_on(async {
        let mut data = rdma_handle(&server, &c1, &key, true).await;
        let before = stats(&server, &c1);
        let got = read_all(&mut data).await;
        assert_eq!(sha256(&got), sha256(&old));
        let after = stats(&server, &c1);
        // One-sided: the server posted no work for these 8 MiB.
        assert_eq!(after["rdma_server_bytes"], before["rdma_server_bytes"]);
        assert_eq!(after["direct_grants"].as_u64().unwrap(), 1);
        let DataHandle::Rdma(r) = &data else {
            panic!("not RDMA")
        };
        assert_eq!(r.direct_bytes(), 8 << 20);

        // A writer opens the file: the reader's rkey is revoked; the writer changes bytes.
        let b = server.cli(&c2);
        let wkey = b.open(&["f", "--mode", "rw"]);
        assert_eq!(
            stats(&server, &c1)["direct_revocations"].as_u64().unwrap(),
            1
        );
        let new = random_bytes(8 << 20, 25);
        b.run_with(&["write", &wkey, "--channel", "tcp"], Some(&new))
            .expect(0);

        // The reader's next read hits the revoked rkey, falls back, and sees the new bytes.
        let got = read_all(&mut data).await;
        assert_eq!(sha256(&got), sha256(&new));
        let DataHandle::Rdma(r) = &data else {
            panic!("not RDMA")
        };
        assert_eq!(r.fallbacks(), 1);
        let moved = stats(&server, &c1)["rdma_server_bytes"].as_u64().unwrap();
        assert!(
            moved >= 8 << 20,
            "the fallback read went through the server: {moved}"
        );
    });
}

#[test]
#[ignore = "needs RDMA devices: run through hw-setup/test-rdma.sh (the rxe guest)"]
fn direct_writes_take_no_server_cpu_fall_back_when_revoked_and_survive_kill_9() {
    let Some(ips) = rdma_ips() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (c1, c2) = (client(tmp.path(), "c1"), client(tmp.path(), "c2"));
    let mut server = start(&[&c1, &c2], &ips, 1, &[]);
    let fs_type = sh_out(&format!("stat -f -c %T {}", server.root().display()));
    assert_eq!(
        fs_type.trim(),
        "tmpfs",
        "direct writes are granted on tmpfs only; the guest's /tmp is one"
    );
    const SIZE: usize = 256 << 20;
    let path = server.root().join("f");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(SIZE as u64)
        .unwrap();
    let key = server.cli(&c1).open(&["f", "--mode", "rw"]);
    let new = random_bytes(SIZE, 31);
    let mut expected = new.clone();

    let rt = runtime();
    rt.block_on(async {
        let mut data = rdma_handle(&server, &c1, &key, true).await;
        // The first page takes the grant; the other 256 MiB go with no server CPU at all.
        data.write_at(0, &new[..4096]).await.unwrap();
        // (The server counts its RDMA threads' CPU as each goes idle: wait for the counter to
        // settle; nothing may be added while the bytes go.)
        let before = eventually(Duration::from_secs(10), || {
            let first = stats(&server, &c1);
            std::thread::sleep(Duration::from_millis(200));
            let second = stats(&server, &c1);
            (first["data_cpu_ns"] == second["data_cpu_ns"]).then_some(second)
        });
        assert_eq!(before["direct_grants"].as_u64().unwrap(), 1);
        data.write_at(4096, &new[4096..]).await.unwrap();
        let after = stats(&server, &c1);
        assert_eq!(after["data_cpu_ns"], before["data_cpu_ns"]);
        assert_eq!(after["rdma_server_bytes"], before["rdma_server_bytes"]);
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        data.flush().await.unwrap();
        assert_eq!(sha256(&std::fs::read(&path).unwrap()), sha256(&new));
        assert!(
            std::fs::metadata(&path).unwrap().modified().unwrap() > modified,
            "the flush of direct writes sets the file's mtime"
        );
        let DataHandle::Rdma(r) = &data else {
            panic!("not RDMA")
        };
        assert_eq!(r.direct_bytes(), SIZE as u64);
        assert_eq!(r.fallbacks(), 0);
        // Past the region granted, bytes go through the server, and a read on the same handle
        // sees them (the grant covers the file as it was).
        let tail = random_bytes(1 << 20, 34);
        data.write_at(SIZE as u64, &tail).await.unwrap();
        data.flush().await.unwrap();
        let mut back = Vec::new();
        data.read_to(SIZE as u64 - 4096, 4096 + tail.len() as u64, &mut |b| {
            back.extend_from_slice(b);
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(&back[..4096], &new[SIZE - 4096..]);
        assert_eq!(&back[4096..], &tail[..]);
        expected.extend_from_slice(&tail);

        // Another client opens the file, even just to read: the file is no longer the
        // writer's alone, so its grant is revoked; its next write falls back and lands.
        let reader = server.cli(&c2);
        let rkey = reader.open(&["f", "--mode", "r"]);
        assert_eq!(
            stats(&server, &c1)["direct_revocations"].as_u64().unwrap(),
            1
        );
        let patch = random_bytes(8 << 20, 32);
        expected[1 << 20..(1 << 20) + patch.len()].copy_from_slice(&patch);
        let posted = stats(&server, &c1)["rdma_server_bytes"].as_u64().unwrap();
        data.write_at(1 << 20, &patch).await.unwrap();
        data.flush().await.unwrap();
        let DataHandle::Rdma(r) = &data else {
            panic!("not RDMA")
        };
        assert_eq!(r.fallbacks(), 1);
        // The 256 MiB written and the 4 KiB read back one-sided; nothing since.
        assert_eq!(r.direct_bytes(), SIZE as u64 + 4096);
        let moved = stats(&server, &c1)["rdma_server_bytes"].as_u64().unwrap() - posted;
        assert!(
            moved >= 8 << 20,
            "the fallback went through the server: {moved}"
        );
        assert_eq!(sha256(&std::fs::read(&path).unwrap()), sha256(&expected));
        let seen = reader.run(&["read", &rkey, "--channel", "rdma"]).expect(0);
        assert_eq!(sha256(&seen.stdout), sha256(&expected));
    });

    // The CLI, then kill -9 once its flush returned: the bytes are there after a restart.
    std::fs::File::create(server.root().join("g"))
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let w = server.cli(&c1);
    let gkey = w.open(&["g", "--mode", "rw", "--exclusive"]);
    let bytes = random_bytes(64 << 20, 33);
    let out = w
        .run_with(
            &["write", &gkey, "--direct", "--channel", "rdma", "--json"],
            Some(&bytes),
        )
        .expect(0);
    assert_eq!(out.json()["direct_bytes"], 64u64 << 20);
    assert_eq!(out.json()["direct"], true);
    server.restart();
    let back = w.run(&["read", &gkey, "--channel", "rdma"]).expect(0);
    assert_eq!(sha256(&back.stdout), sha256(&bytes));
}

/// A file cut short under registered memory: pages pinned before the cut leave the file, so
/// a direct grant or a registered window that outlived the cut would take bytes that vanish.
#[test]
#[ignore = "needs RDMA devices: run through hw-setup/test-rdma.sh (the rxe guest)"]
fn writes_after_a_truncate_land_in_the_file_not_in_pages_it_let_go() {
    let Some(ips) = rdma_ips() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let c1 = client(tmp.path(), "c1");
    let server = start(&[&c1], &ips, 1, &[]);
    let path = server.root().join("h");
    std::fs::write(&path, random_bytes(8 << 20, 40)).unwrap();
    let cli = server.cli(&c1);
    let key = cli.open(&["h", "--mode", "rw"]);
    let rt = runtime();
    rt.block_on(async {
        let mut control = Client::connect(&server.addr, &c1.identity).await.unwrap();
        // One handle writes in place (its window registered), one holds a direct grant.
        let mut placed = control
            .open_data(&key, Some(handoff::Channel::Rdma), false)
            .await
            .unwrap();
        placed
            .write_at(0, &random_bytes(8 << 20, 41))
            .await
            .unwrap();
        let mut direct = control
            .open_data(&key, Some(handoff::Channel::Rdma), true)
            .await
            .unwrap();
        direct.write_at(0, &[7; 4096]).await.unwrap();
        let grants = stats(&server, &c1)["direct_grants"].as_u64().unwrap();
        assert!(grants >= 1, "the direct handle took a write grant");

        cli.run(&["truncate", "--size", "0", "h"]).expect(0);
        assert!(stats(&server, &c1)["direct_revocations"].as_u64().unwrap() >= 1);
        // The first write extends the file (through the server); the second, inside it
        // again, must land in the file's new page, not in the window mapped before the cut.
        placed.write_at(0, &[1; 4096]).await.unwrap();
        placed.write_at(0, &[2; 4096]).await.unwrap();
        placed.flush().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), vec![2; 4096]);
        // The direct handle's grant is gone: its write falls back and lands in the file.
        direct.write_at(0, &[3; 4096]).await.unwrap();
        direct.flush().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), vec![3; 4096]);
        let DataHandle::Rdma(r) = &direct else {
            panic!("not RDMA")
        };
        assert_eq!(r.fallbacks(), 1);
    });
}

#[test]
#[ignore = "needs RDMA devices: run through hw-setup/test-rdma.sh (the rxe guest)"]
fn killing_the_control_channel_mid_transfer_leaves_the_transfer_and_the_open_intact() {
    let Some(ips) = rdma_ips() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let c1 = client(tmp.path(), "c1");
    let server = start(&[&c1], &ips, 1, &["--durable-timeout", "60"]);
    let data = random_bytes(128 << 20, 26);
    std::fs::write(server.root().join("f"), &data).unwrap();

    // One runtime thread: the RDMA read must not block it, or the control channel could
    // only be killed after the transfer.
    let rt = runtime();
    let (key, got, at_kill) = rt.block_on(async {
        let mut control = Client::connect(&server.addr, &c1.identity).await.unwrap();
        let opened = control
            .open(
                "f",
                &handoff::OpenOptions {
                    mode: handoff::Mode::ReadWrite,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let mut data = control
            .open_data(&opened.token, Some(handoff::Channel::Rdma), false)
            .await
            .unwrap();
        let received = std::sync::atomic::AtomicU64::new(0);
        let finished = std::sync::atomic::AtomicBool::new(false);
        let reading = async {
            let mut got = Vec::with_capacity(128 << 20);
            let r = data
                .read_to(0, u64::MAX, &mut |c| {
                    got.extend_from_slice(c);
                    received.fetch_add(c.len() as u64, Ordering::Relaxed);
                    Ok(())
                })
                .await;
            finished.store(true, Ordering::Relaxed);
            r.map(|_| got)
        };
        // Kill the control connection (the one that opened the file) mid-transfer.
        let killing = async {
            while received.load(Ordering::Relaxed) < 8 << 20 && !finished.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let at = received.load(Ordering::Relaxed);
            drop(control);
            at
        };
        let (got, at_kill) = tokio::join!(reading, killing);
        (opened.token, got.unwrap(), at_kill)
    });
    assert!(
        at_kill < data.len() as u64,
        "the control channel was killed only after the read ({at_kill} bytes): the read blocked the runtime"
    );
    assert_eq!(sha256(&got), sha256(&data));
    // The open is still held: a resume gets a duplicate with the same mode, nothing to report.
    let r = server
        .cli(&c1)
        .run(&["resume", &key, "--json", "--channel", "rdma"])
        .expect(0)
        .json();
    assert_eq!(
        (r["mode"].as_str(), r["accessed_by_other"].as_bool()),
        (Some("rw"), Some(false))
    );

    // A handle that asks for requests larger than a registered slot still writes every byte.
    let pattern = random_bytes(24 << 20, 27);
    rt.block_on(async {
        let mut control = Client::connect(&server.addr, &c1.identity).await.unwrap();
        let addrs = rdma_addrs(&mut control).await;
        let sealed = handoff::parse_key(&key).unwrap();
        let mut h =
            handoff::data::RdmaHandle::connect(addrs, &c1.identity, &sealed, false, 16 << 20)
                .await
                .unwrap();
        h.write_at(0, &pattern).await.unwrap();
        h.flush().await.unwrap();
    });
    let on_disk = std::fs::read(server.root().join("f")).unwrap();
    assert_eq!(sha256(&on_disk[..pattern.len()]), sha256(&pattern));
}

#[test]
#[ignore = "needs RDMA devices: run through hw-setup/test-rdma.sh (the rxe guest)"]
fn a_refused_rdma_read_leaves_no_stale_replies_for_the_next_one() {
    let Some(ips) = rdma_ips() else { return };
    // One QP, then two striped QPs, both on rxe0: librdmacm keeps a device it used open
    // until the process exits, and another test removes rxe1 while this process lives.
    for paths in [1, 2] {
        let tmp = tempfile::tempdir().unwrap();
        let (c1, c2) = (client(tmp.path(), "c1"), client(tmp.path(), "c2"));
        let args: Vec<String> = (0..paths)
            .flat_map(|_| {
                [
                    "--rdma-listen".to_string(),
                    format!("{}:{}", ips[0], free_port()),
                ]
            })
            .collect();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = TestServer::start(&[&c1, &c2], &refs);
        let nics = paths;
        let data = random_bytes(32 << 20, 8);
        std::fs::write(server.root().join("f"), &data).unwrap();
        // c2 locks the first page: a read from 0 is refused on its first chunk, while the
        // chunks asked after it (up to a pipeline's depth, on every path) are answered.
        server
            .cli(&c2)
            .open(&["f", "--mode", "rw", "--lock", "0:4096"]);
        let key = server.cli(&c1).open(&["f"]);
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let mut control = Client::connect(&server.addr, &c1.identity).await.unwrap();
            let mut h = control
                .open_data(&key, Some(handoff::Channel::Rdma), false)
                .await
                .unwrap();
            let refused = h.read_to(0, u64::MAX, &mut |_| Ok(())).await.unwrap_err();
            assert!(refused.to_string().contains("locked"), "{refused}");
            // The next read on the same handle gets its own bytes, not the leftovers.
            for _ in 0..3 {
                let mut got = Vec::new();
                let n = h
                    .read_to(4 << 20, 8 << 20, &mut |c| {
                        got.extend_from_slice(c);
                        Ok(())
                    })
                    .await
                    .unwrap();
                assert_eq!(n, 8 << 20, "{nics} path(s)");
                assert_eq!(
                    sha256(&got),
                    sha256(&data[4 << 20..12 << 20]),
                    "{nics} NIC(s)"
                );
            }
            // A read whose caller stops taking bytes midway closes the handle: the next call
            // says so instead of meeting the abandoned read's replies.
            let stopped = h
                .read_to(4 << 20, 16 << 20, &mut |_| {
                    Err(std::io::Error::other("enough"))
                })
                .await
                .unwrap_err();
            assert!(stopped.to_string().contains("enough"), "{stopped}");
            let after = h.read_to(4 << 20, 4096, &mut |_| Ok(())).await.unwrap_err();
            assert!(after.to_string().contains("abandoned"), "{after}");

            // The same with 4 KiB requests, 32 to a message, striped message by message.
            let addrs = rdma_addrs(&mut control).await;
            let sealed = handoff::parse_key(&key).unwrap();
            let small =
                handoff::data::RdmaHandle::connect(addrs, &c1.identity, &sealed, false, 4096)
                    .await
                    .unwrap();
            let mut small = DataHandle::Rdma(Box::new(small));
            let refused = small
                .read_to(0, u64::MAX, &mut |_| Ok(()))
                .await
                .unwrap_err();
            assert!(refused.to_string().contains("locked"), "{refused}");
            for _ in 0..2 {
                let got = read_range(&mut small, 4 << 20, (8 << 20) + 123).await;
                assert_eq!(
                    sha256(&got),
                    sha256(&data[4 << 20..(12 << 20) + 123]),
                    "{nics} path(s), 4 KiB requests"
                );
            }
            if let DataHandle::Rdma(h) = &small {
                let carried = h.qp_reports().iter().filter(|q| q.bytes > 0).count();
                assert_eq!(carried, nics, "every path carries a share");
            }
        });
    }
}

#[test]
#[ignore = "needs RDMA devices: run through hw-setup/test-rdma.sh (the rxe guest)"]
fn four_kib_requests_go_many_to_a_message_and_keep_every_rule_of_single_ones() {
    let Some(ips) = rdma_ips() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (c1, c2) = (client(tmp.path(), "c1"), client(tmp.path(), "c2"));
    let server = start(&[&c1, &c2], &ips, 1, &[]);
    let path = server.root().join("f");
    let mut data = random_bytes((3 << 20) + 1234, 41);
    std::fs::write(&path, &data).unwrap();
    let key = server.cli(&c1).open(&["f", "--mode", "rw"]);
    let sealed = handoff::parse_key(&key).unwrap();
    let rt = runtime();
    rt.block_on(async {
        let mut control = Client::connect(&server.addr, &c1.identity).await.unwrap();
        let addrs = rdma_addrs(&mut control).await;
        // 4 KiB requests: 32 to a message, two messages in flight.
        let h = handoff::data::RdmaHandle::connect(addrs, &c1.identity, &sealed, false, 4096)
            .await
            .unwrap();
        let mut h = DataHandle::Rdma(Box::new(h));
        let read = read_range;
        // Whole file; an unaligned span; the end of the file inside a batch (the item that
        // meets it is short, every later one empty, and nothing after it is delivered).
        assert_eq!(sha256(&read(&mut h, 0, u64::MAX).await), sha256(&data));
        assert_eq!(read(&mut h, 1000, 300_001).await, data[1000..301_001]);
        let tail = data.len() as u64 - 10_000;
        assert_eq!(read(&mut h, tail, 1 << 20).await, data[tail as usize..]);

        // Writes inside the file (into its pages) and past its end (through bounce buffers).
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let inside = random_bytes((2 << 20) + 77, 42);
        h.write_at(5000, &inside).await.unwrap();
        data[5000..5000 + inside.len()].copy_from_slice(&inside);
        let past = random_bytes(300 << 10, 43);
        let end = data.len() - 100;
        h.write_at(end as u64, &past).await.unwrap();
        data.truncate(end);
        data.extend_from_slice(&past);
        h.flush().await.unwrap();
        assert_eq!(sha256(&std::fs::read(&path).unwrap()), sha256(&data));
        assert!(std::fs::metadata(&path).unwrap().modified().unwrap() > modified);

        // Another open locks one page in the middle of a batch: the read and the write that
        // reach it are refused, and the next calls on the same handle get their own answers.
        server
            .cli(&c2)
            .open(&["f", "--mode", "rw", "--lock", "40960:4096"]);
        let refused = h.read_to(0, 1 << 20, &mut |_| Ok(())).await.unwrap_err();
        assert!(refused.to_string().contains("locked"), "{refused}");
        assert_eq!(
            read(&mut h, 1 << 20, 64 << 10).await,
            data[1 << 20..(1 << 20) + (64 << 10)]
        );
        let refused = h.write_at(0, &vec![7u8; 1 << 20]).await.unwrap_err();
        assert!(refused.to_string().contains("locked"), "{refused}");
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(
            on_disk[40960..45056],
            data[40960..45056],
            "a locked page was written"
        );
        // The batch's other requests were each served on their own, as single ones are: the
        // pages before the locked one were written.
        assert!(on_disk[..40960].iter().all(|b| *b == 7));
        data[..1 << 20].copy_from_slice(&on_disk[..1 << 20]);
        // The next write is answered for its own bytes, not with a leftover answer.
        let again = random_bytes(64 << 10, 44);
        let mut rest = &again[..];
        let written = h
            .write_from(2 << 20, &mut |buf| {
                let n = rest.len().min(buf.len());
                buf[..n].copy_from_slice(&rest[..n]);
                rest = &rest[n..];
                Ok(n)
            })
            .await
            .unwrap();
        assert_eq!(written, again.len() as u64);
        data[2 << 20..(2 << 20) + again.len()].copy_from_slice(&again);
        assert_eq!(
            sha256(&std::fs::read(&path).unwrap()),
            sha256(&data),
            "{} bytes",
            data.len()
        );
    });
    // Each 4 KiB request was its own RDMA operation, counted as one, and came with others in
    // one message; writes inside the file went straight into its pages.
    let s = stats(&server, &c1);
    let requests = s["rdma_requests"].as_u64().unwrap();
    assert!(requests > (3 << 20) / 4096, "{s}");
    assert!(
        s["rdma_batched_requests"].as_u64().unwrap() > requests * 9 / 10,
        "{s}"
    );
    assert!(s["rdma_in_place_bytes"].as_u64().unwrap() >= 2 << 20, "{s}");
}

#[test]
#[ignore = "needs RDMA devices: run through hw-setup/test-rdma.sh (the rxe guest)"]
fn an_rdma_write_the_file_system_refuses_is_answered_and_the_handle_carries_on() {
    let Some(ips) = rdma_ips() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (c1, c2) = (client(tmp.path(), "c1"), client(tmp.path(), "c2"));
    let args = rdma_args(&ips, 1);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    // handoffd may write no file beyond 16 MiB: writes past it get EFBIG.
    let server =
        TestServer::start_wrapped(&[&c1, &c2], &refs, &["prlimit", "--fsize=16777216", "--"]);
    std::fs::write(server.root().join("f"), b"original").unwrap();
    let kb = server.cli(&c2).open(&["f", "--mode", "rw"]);
    let cli = server.cli(&c1);
    let key = cli.open(&["f", "--mode", "rw"]);
    let out = cli
        .run_with(
            &["write", &key, "--offset", "20000000", "--channel", "rdma"],
            Some(&random_bytes(4 << 20, 3)),
        )
        .expect(7);
    assert!(out.stderr.contains("EFBIG"), "{}", out.stderr);
    assert_eq!(std::fs::read(server.root().join("f")).unwrap(), b"original");
    let r = server
        .cli(&c2)
        .run(&["resume", &kb, "--json"])
        .expect(0)
        .json();
    assert_eq!(r["changed_by_other"], false, "nothing was written: {r}");
    // The server and the key carry on over RDMA.
    cli.run_with(&["write", &key, "--channel", "rdma"], Some(b"ORIG"))
        .expect(0);
    assert_eq!(std::fs::read(server.root().join("f")).unwrap(), b"ORIGinal");
    let r = server
        .cli(&c2)
        .run(&["resume", &kb, "--json"])
        .expect(0)
        .json();
    assert_eq!(r["changed_by_other"], true, "{r}");
}

async fn cycle(control: &mut Client, key: &str, data: &[u8]) {
    let mut h = control
        .open_data(key, Some(handoff::Channel::Rdma), false)
        .await
        .unwrap();
    let got = read_all(&mut h).await;
    assert_eq!(sha256(&got), sha256(data));
}

/// Counts of verbs objects the kernel holds (`rdma resource`), by kind.
fn rdma_resources() -> Vec<(String, u64)> {
    let out = std::process::Command::new("rdma")
        .args(["resource", "show"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        for pair in words.windows(2) {
            if ["pd", "cq", "qp", "cm_id", "mr", "ctx"].contains(&pair[0]) {
                *counts.entry(pair[0].to_string()).or_default() +=
                    pair[1].parse::<u64>().unwrap_or(0);
            }
        }
    }
    counts.into_iter().collect()
}

/// The `name value` fields of one line of `rdma resource show`.
fn resource_field(line: &str, name: &str) -> Option<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[0] == name)
        .map(|w| w[1].to_string())
}

/// Names of the server's threads that serve RDMA connections (all but the rdma_cm ones).
fn rdma_threads(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .filter(|name| name.starts_with("rdma-") && !name.starts_with("rdma-cm"))
        .collect()
}

/// Registered regions of exactly `len` bytes in the server's protection domains (`rdma
/// resource show mr`: `... mrlen N pdn P ...`). The kernel names the *thread* that made an
/// object, and a region's thread may have ended since; the server makes its PDs on its
/// long-lived `rdma-cm …` threads, so its regions are told by their PD.
fn server_regions(len: u64) -> usize {
    let pds: Vec<String> = sh_out("rdma resource show pd")
        .lines()
        .filter(|l| resource_field(l, "comm").is_some_and(|c| c == "rdma-cm"))
        .filter_map(|l| resource_field(l, "pdn"))
        .collect();
    // (None once the last connection is gone: a region holds its PD, so none is left then.)
    sh_out("rdma resource show mr")
        .lines()
        .filter(|l| {
            resource_field(l, "mrlen") == Some(len.to_string())
                && resource_field(l, "pdn").is_some_and(|p| pds.contains(&p))
        })
        .count()
}

#[test]
#[ignore = "needs RDMA devices: run through hw-setup/test-rdma.sh (the rxe guest)"]
fn sixteen_readers_of_one_file_register_its_pages_once_and_a_truncate_gives_new_ones() {
    let Some(ips) = rdma_ips() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let c1 = client(tmp.path(), "c1");
    let port = free_port();
    let listen = format!("{}:{port}", ips[0]);
    let server = TestServer::start(&[&c1], &["--rdma-listen", &listen, "--rdma-workers", "2"]);
    // Two windows: 64 MiB, and a 3 MiB tail (no other region the server makes is 3 MiB).
    const WINDOW: u64 = 64 << 20;
    let path = server.root().join("shared");
    let data = random_bytes((WINDOW + (3 << 20)) as usize, 50);
    std::fs::write(&path, &data).unwrap();
    let key = server.cli(&c1).open(&["shared", "--mode", "r"]);
    let rt = runtime();
    rt.block_on(async {
        let mut control = Client::connect(&server.addr, &c1.identity).await.unwrap();
        let mut readers = Vec::new();
        for _ in 0..16 {
            let h = control
                .open_data(&key, Some(handoff::Channel::Rdma), false)
                .await
                .unwrap();
            readers.push(h);
        }
        let head = &data[..1 << 20];
        let tail = &data[WINDOW as usize..WINDOW as usize + (1 << 20)];
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        for h in &mut readers {
            assert_eq!(read_range(h, 0, 1 << 20).await, head);
            assert_eq!(read_range(h, WINDOW, 1 << 20).await, tail);
        }
        // Reading is not writing: the file's modification time stays. Kernels before 6.2 pin
        // every registered page for writing, which sets it; there the server says so.
        let now = std::fs::metadata(&path).unwrap().modified().unwrap();
        if server
            .log()
            .contains("cannot register a read-only file mapping")
        {
            eprintln!("this kernel pins file windows for writing: mtime {modified:?} -> {now:?}");
        } else {
            assert_eq!(now, modified, "an RDMA read set the file's mtime");
        }
        // Sixteen connections, each window of the file pinned and registered once.
        assert_eq!(
            server_regions(WINDOW),
            1,
            "{}",
            sh_out("rdma resource show mr")
        );
        assert_eq!(server_regions(3 << 20), 1);
        // ... and served by the two threads asked for (and their blocking pools' threads,
        // which attached the handles), not a thread each.
        let serving = rdma_threads(server.pid());
        assert!(
            serving.len() <= 6,
            "{} threads serve 16 RDMA connections: {serving:?}",
            serving.len()
        );

        // Cut to 1 MiB past the first window, then grow it back to its old length from
        // outside with new bytes: the tail window has its old length again, and the other
        // readers still hold the one registered before the cut, over pages the cut let go.
        // The next read must register the file's pages anew and see the new bytes.
        server
            .cli(&c1)
            .run(&[
                "truncate",
                "--size",
                &(WINDOW + (1 << 20)).to_string(),
                "shared",
            ])
            .expect(0);
        let fresh = random_bytes(3 << 20, 51);
        std::os::unix::fs::FileExt::write_all_at(
            &std::fs::OpenOptions::new().write(true).open(&path).unwrap(),
            &fresh,
            WINDOW,
        )
        .unwrap();
        assert_eq!(read_range(&mut readers[0], WINDOW, 3 << 20).await, fresh);
        for h in &mut readers {
            assert_eq!(read_range(h, 0, 1 << 20).await, head);
            assert_eq!(read_range(h, WINDOW, 3 << 20).await, fresh);
        }
        assert_eq!(
            server_regions(WINDOW),
            1,
            "{}",
            sh_out("rdma resource show mr")
        );
        assert_eq!(server_regions(3 << 20), 1, "the old tail is let go");
        drop(readers);
        // The last reader gone, nothing of the file stays pinned.
        eventually(Duration::from_secs(20), || {
            (server_regions(WINDOW) == 0 && server_regions(3 << 20) == 0).then_some(())
        });
    });

    // A QP in the shared PD could use any direct grant there: a connection made without
    // asking for direct mode is refused one, even if it asks anyway; one that asked gets it.
    use handoff_datapath::rdma::client::{RdmaClient, CHUNK};
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    let sealed = handoff::parse_key(&key).unwrap();
    let mut shared = RdmaClient::connect_sized(addr, &c1.identity, &sealed, CHUNK, false).unwrap();
    assert!(
        !shared.map_direct(false).unwrap(),
        "a shared-PD QP got a direct grant"
    );
    let mut own = RdmaClient::connect_sized(addr, &c1.identity, &sealed, CHUNK, true).unwrap();
    assert!(own.map_direct(false).unwrap());
}

#[test]
#[ignore = "needs RDMA devices: run through hw-setup/test-rdma.sh (the rxe guest)"]
fn a_thousand_connect_transfer_disconnect_cycles_leak_nothing() {
    let Some(ips) = rdma_ips() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let c1 = client(tmp.path(), "c1");
    let server = start(&[&c1], &ips, 1, &[]);
    let data = random_bytes(256 << 10, 27);
    std::fs::write(server.root().join("f"), &data).unwrap();
    let key = server.cli(&c1).open(&["f", "--mode", "rw"]);
    let pid = server.pid();

    let rt = runtime();
    rt.block_on(async {
        let mut control = Client::connect(&server.addr, &c1.identity).await.unwrap();
        // Warm up (first-use allocations), then measure.
        cycle(&mut control, &key, &data).await;
        std::thread::sleep(Duration::from_millis(500));
        let (res0, fds0) = (rdma_resources(), fd_count(pid));
        let started = Instant::now();
        // rxe has been reported to stop accepting connections after about a thousand: see
        // whether it does here.
        for i in 0..1000 {
            cycle(&mut control, &key, &data).await;
            if i % 250 == 249 {
                eprintln!("{} cycles in {:?}", i + 1, started.elapsed());
            }
        }
        // Server threads finish tearing down asynchronously.
        let settled = eventually(Duration::from_secs(20), || {
            let now = (rdma_resources(), fd_count(pid));
            (now == (res0.clone(), fds0)).then_some(now)
        });
        assert_eq!(settled.0, res0);
    });
}

/// What a shell command prints (stdout and stderr).
fn sh_out(cmd: &str) -> String {
    let out = std::process::Command::new("sh")
        .args(["-c", &format!("{{ {cmd}; }} 2>&1")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command in the guest, failing the test if it fails.
fn sh(cmd: &str) {
    let st = std::process::Command::new("sh")
        .args(["-c", cmd])
        .status()
        .unwrap();
    assert!(st.success(), "`{cmd}` failed");
}

/// A second "host" inside the guest (whose kernel's rxe has no network-namespace support):
/// a veth pair hv0 (10.31.0.1, rxe device rxv0, the server's side) and hv1 (10.31.0.2, rxv1,
/// the client's side), with policy routing that sends traffic between the two addresses
/// through the pair instead of the loopback device (for locally sent packets, `iif lo`, and
/// for rdma_cm's check that a request arrived on the device its peer is reached through),
/// so the two RDMA devices really exchange packets. Torn down on drop.
struct ClientHost;

impl ClientHost {
    fn new() -> Self {
        Self::teardown();
        sh("set -e
            ip link add hv0 type veth peer name hv1
            ip addr add 10.31.0.1/32 dev hv0
            ip addr add 10.31.0.2/32 dev hv1
            ip link set hv0 up
            ip link set hv1 up
            for c in all hv0 hv1; do
              sysctl -qw net.ipv4.conf.$c.rp_filter=0 net.ipv4.conf.$c.accept_local=1
            done
            ip route add 10.31.0.1 dev hv1 src 10.31.0.2 table 31
            ip route add 10.31.0.2 dev hv0 src 10.31.0.1 table 32
            ip rule add pref 10 iif lo to 10.31.0.1 lookup 31
            ip rule add pref 11 iif lo to 10.31.0.2 lookup 32
            ip rule add pref 12 iif hv0 to 10.31.0.2 lookup 32
            ip rule add pref 13 iif hv1 to 10.31.0.1 lookup 31
            ip rule add pref 14 oif hv0 to 10.31.0.2 lookup 32
            ip rule add pref 15 oif hv1 to 10.31.0.1 lookup 31
            ip rule add pref 1000 lookup local
            while ip rule del pref 0 2>/dev/null; do :; done
            rdma link add rxv0 type rxe netdev hv0
            rdma link add rxv1 type rxe netdev hv1");
        ClientHost
    }

    /// Cuts the client's path: its netdev goes down (no DREQ, no FIN: the server hears
    /// nothing more from it).
    fn cut(&self) {
        sh("ip link set hv1 down");
    }

    fn teardown() {
        let _ = std::process::Command::new("sh")
            .args([
                "-c",
                "{ rdma link delete rxv1; rdma link delete rxv0; ip link del hv0; \
                 ip rule del pref 10; ip rule del pref 11; ip rule del pref 12; ip rule del pref 13; \
                 ip rule del pref 14; ip rule del pref 15; \
                 ip rule show pref 0 | grep -q . || ip rule add pref 0 lookup local; \
                 ip rule del pref 1000; \
                 ip route flush table 31; ip route flush table 32; } 2>/dev/null",
            ])
            .status();
    }
}

impl Drop for ClientHost {
    fn drop(&mut self) {
        Self::teardown();
    }
}

#[test]
#[ignore = "needs RDMA devices: run through hw-setup/test-rdma.sh (the rxe guest)"]
fn a_vanished_rdma_peer_is_detached_and_its_open_expires_for_others() {
    let Some(_) = rdma_ips() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (c1, c2) = (client(tmp.path(), "c1"), client(tmp.path(), "c2"));
    let host = ClientHost::new();
    let port = free_port();
    let rdma = format!("10.31.0.1:{port}");
    let server = TestServer::start_on(
        &[&c1, &c2],
        "10.31.0.1:0",
        &[
            "--rdma-listen",
            &rdma,
            "--rdma-probe-interval",
            "2",
            "--durable-timeout",
            "3",
        ],
        &[("RUST_LOG", "info,handoff_datapath=debug")],
    );
    std::fs::write(server.root().join("f"), b"held").unwrap();
    let key = server
        .cli(&c1)
        .open(&["f", "--mode", "rw", "--share", "none"]);
    // c1's RDMA data channel from the client's side (rxv1 to rxv0), attached and idle
    // (stdin stays open).
    let cli = server.cli(&c1);
    let mut holder = std::process::Command::new(HANDOFF)
        .args(["--server", &cli.server, "--identity"])
        .arg(&cli.identity)
        .args(["write", &key, "--channel", "rdma"])
        .env("RUST_LOG", "debug")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(tmp.path().join("holder.err")).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while stats(&server, &c2)["rdma_connections"] != 1 {
        assert!(
            started.elapsed() < Duration::from_secs(20) && holder.try_wait().unwrap().is_none(),
            "the holder did not attach over RDMA: {}\nserver: {}\n{}",
            std::fs::read_to_string(tmp.path().join("holder.err")).unwrap(),
            server.log(),
            sh_out("dmesg | tail -20; ip rule; rdma link; ip addr")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Past the durable timeout, the attached channel still holds the open.
    std::thread::sleep(Duration::from_secs(5));
    server
        .cli(&c2)
        .run(&["open", "f", "--mode", "rw"])
        .expect(3);
    // The client's path is cut: from now on the server hears nothing from it.
    host.cut();
    let cut = Instant::now();
    let detached = loop {
        if server.log().contains("handle detached") {
            break cut.elapsed();
        }
        assert!(
            cut.elapsed() < Duration::from_secs(40),
            "not detached: {}\n{}",
            server.log(),
            sh_out("rdma res show qp; rdma res show cm_id; ip -s link show hv0; ip -s link show hv1; ip rule; ip route show table 31; ip neigh")
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let granted = eventually(Duration::from_secs(40), || {
        (server.cli(&c2).run(&["open", "f", "--mode", "rw"]).code == 0).then(|| cut.elapsed())
    });
    eprintln!(
        "path cut: the server detached after {detached:?} (probe every 2 s), another client \
         was granted after {granted:?} (durable timeout 3 s)"
    );
    // The probe interval, then about 2 s of unanswered retries (ack timeout 268 ms × 7).
    assert!(detached < Duration::from_secs(10), "{detached:?}");
    // Not before the durable timeout (3 s, less this test's polling).
    assert!(
        granted >= detached + Duration::from_millis(2500),
        "{granted:?}"
    );
    let _ = holder.kill();
    let _ = holder.wait();
    drop(server);
    drop(host);
}

/// fio (bs=1M, O_DIRECT, queue depths 1 and 8, write then read) on a `handoff mount` whose
/// data channels are RDMA: it runs unchanged, moves every byte over RDMA, and the file it
/// wrote reads back the same through the mount as on the server.
#[test]
#[ignore = "needs RDMA devices: run through hw-setup/test-rdma.sh (the rxe guest)"]
fn fio_runs_unchanged_on_a_mount_over_rdma() {
    let Some(ips) = rdma_ips() else { return };
    if !std::path::Path::new("/dev/fuse").exists() {
        let loaded = std::process::Command::new("modprobe")
            .arg("fuse")
            .status()
            .unwrap();
        assert!(loaded.success(), "modprobe fuse failed");
    }
    let tmp = tempfile::tempdir().unwrap();
    let c1 = client(tmp.path(), "c1");
    let server = start(&[&c1], &ips, 1, &[]);
    let mnt = common::mounted::Mounted::new(
        &server.cli(&c1),
        &tmp.path().join("mnt"),
        &["--channel", "rdma"],
    );
    const SIZE: u64 = 64 << 20;
    let before = stats(&server, &c1)["rdma_server_bytes"].as_u64().unwrap();
    let connections = || stats(&server, &c1)["rdma_connections"].as_u64().unwrap();
    let mut attached = std::collections::HashMap::new();
    for (rw, depth) in [("write", 1), ("write", 8), ("read", 1), ("read", 8)] {
        let connections0 = connections();
        let out = std::process::Command::new("fio")
            .args([
                "--name=job",
                "--bs=1M",
                "--direct=1",
                "--ioengine=libaio",
                "--output-format=json",
            ])
            .arg(format!("--filename={}", mnt.dir.join("fio.dat").display()))
            .arg(format!("--rw={rw}"))
            .arg(format!("--iodepth={depth}"))
            .arg(format!("--size={SIZE}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "fio {rw} QD{depth}: {}\nmount log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            mnt.log()
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let job = &report["jobs"][0][rw];
        assert_eq!(
            job["io_bytes"].as_u64(),
            Some(SIZE),
            "fio {rw} QD{depth}: {job}"
        );
        eprintln!(
            "fio {rw} bs=1M QD{depth} on the RDMA mount: {:.1} MiB/s",
            job["bw_bytes"].as_f64().unwrap_or(0.0) / (1 << 20) as f64
        );
        attached.insert((rw, depth), connections() - connections0);
    }
    // io_submit's overlapping requests are served at once, on more data channels of the
    // open than one request at a time needs.
    for rw in ["write", "read"] {
        assert!(
            attached[&(rw, 8)] > attached[&(rw, 1)],
            "{rw}: QD8 attached {} RDMA connections, QD1 {}",
            attached[&(rw, 8)],
            attached[&(rw, 1)]
        );
    }
    let moved = stats(&server, &c1)["rdma_server_bytes"].as_u64().unwrap() - before;
    assert!(moved >= 4 * SIZE, "only {moved} bytes went over RDMA");
    let on_server = sha256(&std::fs::read(server.root().join("fio.dat")).unwrap());
    let through_mount = sha256(&std::fs::read(mnt.dir.join("fio.dat")).unwrap());
    assert_eq!(through_mount, on_server);
}
