//! Claims 7–8, 36–38: bytes through the second channel, plain TCP and TLS, on loopback.

mod common;
use common::*;

#[test]
fn put_then_get_64_mib_over_tcp_and_tls_is_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let c1 = client(tmp.path(), "c1");
    let server = TestServer::start(&[&c1], &[]);
    let cli = server.cli(&c1);
    let data = random_bytes(64 << 20, 1);
    let want = sha256(&data);
    for channel in ["tcp", "tls"] {
        let path = format!("big-{channel}.bin");
        cli.run_with(&["put", &path, "--channel", channel], Some(&data))
            .expect(0);
        assert_eq!(
            sha256(&std::fs::read(server.root().join(&path)).unwrap()),
            want,
            "{channel}: file on the server"
        );
        let got = cli.run(&["get", &path, "--channel", channel]).expect(0);
        assert_eq!(got.stdout.len(), data.len(), "{channel}");
        assert_eq!(sha256(&got.stdout), want, "{channel}: bytes read back");
    }
}

#[test]
fn read_and_write_at_offsets_through_a_key_after_the_opener_exited() {
    let tmp = tempfile::tempdir().unwrap();
    let c1 = client(tmp.path(), "c1");
    let server = TestServer::start(&[&c1], &[]);
    let cli = server.cli(&c1);
    let data = random_bytes(3 << 20, 2);
    std::fs::write(server.root().join("f"), &data).unwrap();
    // The control channel is gone before the data channel is made (claim 26).
    let key = cli.open(&["f", "--mode", "rw"]);
    for channel in ["tcp", "tls"] {
        let out = cli
            .run(&[
                "read",
                &key,
                "--offset",
                "1000",
                "--len",
                "5000",
                "--channel",
                channel,
            ])
            .expect(0);
        assert_eq!(out.stdout, &data[1000..6000], "{channel}");
    }
    // Reading past the end gives what is there.
    let tail = cli
        .run(&[
            "read",
            &key,
            "--offset",
            &(data.len() - 10).to_string(),
            "--len",
            "100",
        ])
        .expect(0);
    assert_eq!(tail.stdout, &data[data.len() - 10..]);
    // Write in the middle over TLS; the rest is untouched.
    cli.run_with(
        &["write", &key, "--offset", "4096", "--channel", "tls"],
        Some(b"HELLO"),
    )
    .expect(0);
    let mut want = data.clone();
    want[4096..4101].copy_from_slice(b"HELLO");
    assert_eq!(
        sha256(&std::fs::read(server.root().join("f")).unwrap()),
        sha256(&want)
    );
    let whole = cli.run(&["read", &key]).expect(0);
    assert_eq!(sha256(&whole.stdout), sha256(&want));
}

#[test]
fn user_errors_have_their_exit_codes_and_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let c1 = client(tmp.path(), "c1");
    let server = TestServer::start(&[&c1], &[]);
    let cli = server.cli(&c1);

    let missing = cli.run(&["open", "nope.bin"]).expect(4);
    assert!(
        missing.stderr.contains("no such file"),
        "{}",
        missing.stderr
    );
    assert_eq!(
        missing.stderr.trim().lines().count(),
        1,
        "{}",
        missing.stderr
    );
    cli.open(&["nope.bin", "--create"]);
    assert!(server.root().join("nope.bin").exists());

    // Outside the root: a denial (exit 3), and nothing is created beside it.
    cli.run(&["open", "../escape", "--create"]).expect(3);
    assert!(!server.root().join("../escape").exists());
    cli.run(&["open", "x", "--lock", "12"]).expect(2);
    cli.run(&["open", "x", "--mode", "wx"]).expect(2);
    cli.run(&["frobnicate"]).expect(2);
    cli.run(&["read", "not-a-key"]).expect(4);

    let key = cli.open(&["nope.bin"]);
    cli.run(&["close", &key]).expect(0);
    // A key replayed after close names nothing.
    cli.run(&["read", &key]).expect(4);
    cli.run(&["close", &key]).expect(4);

    // No server there: exit 6 (unavailable, retry) with a line naming the address.
    let gone = Cli {
        server: "127.0.0.1:1".into(),
        ..server.cli(&c1)
    }
    .run(&["inbox"])
    .expect(6);
    assert!(gone.stderr.contains("127.0.0.1:1"), "{}", gone.stderr);
    let noid = Cli {
        identity: tmp.path().join("missing.id"),
        ..server.cli(&c1)
    }
    .run(&["inbox"])
    .expect(2);
    assert!(noid.stderr.contains("keygen"), "{}", noid.stderr);
}

#[test]
fn keygen_prints_one_identity_line() {
    let out = std::process::Command::new(HANDOFF)
        .args(["keygen", "alice"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let line = String::from_utf8(out.stdout).unwrap();
    let (name, hex) = line.trim().split_once(':').unwrap();
    assert_eq!(name, "alice");
    assert_eq!(hex.len(), 64);
    assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
    let bad = std::process::Command::new(HANDOFF)
        .args(["keygen", "bad name"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}
