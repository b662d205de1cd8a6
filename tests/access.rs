//! Claims 1–4, 18–23, 28–30, 42, 44: modes, locks, duplicate handles, passing handles.

mod common;
use common::*;

#[test]
fn locked_bytes_are_denied_to_other_handles_but_not_to_duplicates_of_the_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let (c1, c2) = (client(tmp.path(), "c1"), client(tmp.path(), "c2"));
    let server = TestServer::start(&[&c1, &c2], &[]);
    let data = random_bytes(64 << 10, 3);
    std::fs::write(server.root().join("f"), &data).unwrap();
    let (a, b) = (server.cli(&c1), server.cli(&c2));

    let holder = a.open(&["f", "--mode", "rw", "--lock", "1000:100"]);
    let other = b.open(&["f", "--mode", "rw"]);
    for channel in ["tcp", "tls"] {
        let r = b
            .run(&[
                "read",
                &other,
                "--offset",
                "1050",
                "--len",
                "10",
                "--channel",
                channel,
            ])
            .expect(3);
        assert!(r.stderr.contains("locked"), "{}", r.stderr);
        b.run_with(
            &["write", &other, "--offset", "990", "--channel", channel],
            Some(b"0123456789AB"),
        )
        .expect(3);
    }
    // Outside the range the other handle works.
    let r = b
        .run(&["read", &other, "--offset", "1100", "--len", "10"])
        .expect(0);
    assert_eq!(r.stdout, &data[1100..1110]);
    // Duplicates of the holder (a new data channel each time) read and write the range.
    let r = a
        .run(&["read", &holder, "--offset", "1000", "--len", "100"])
        .expect(0);
    assert_eq!(r.stdout, &data[1000..1100]);
    a.run_with(&["write", &holder, "--offset", "1000"], Some(b"mine"))
        .expect(0);
    assert_eq!(
        &std::fs::read(server.root().join("f")).unwrap()[1000..1004],
        b"mine"
    );
    // A conflicting lock at open time is refused; unlocking frees the range.
    b.run(&["open", "f", "--lock", "1090:20"]).expect(3);
    a.run(&["unlock", &holder, "1000:100"]).expect(0);
    b.run(&["read", &other, "--offset", "1050", "--len", "10"])
        .expect(0);
    b.run(&["lock", &other, "1000:10"]).expect(0);
    a.run(&["read", &holder, "--offset", "1005", "--len", "1"])
        .expect(3);
}

#[test]
fn a_duplicate_handle_has_exactly_the_open_s_rights() {
    let tmp = tempfile::tempdir().unwrap();
    let c1 = client(tmp.path(), "c1");
    let server = TestServer::start(&[&c1], &[]);
    std::fs::write(server.root().join("f"), b"abc").unwrap();
    let cli = server.cli(&c1);
    let ro = cli.open(&["f", "--mode", "r"]);
    let r = cli.run_with(&["write", &ro], Some(b"zzz")).expect(3);
    assert!(r.stderr.contains("read-only"), "{}", r.stderr);
    assert_eq!(std::fs::read(server.root().join("f")).unwrap(), b"abc");
    let rw = cli.open(&["f", "--mode", "rw", "--share", "r"]);
    let info = cli.run(&["resume", &rw, "--json"]).expect(0).json();
    assert_eq!(
        (info["mode"].as_str(), info["share"].as_str()),
        (Some("rw"), Some("r"))
    );
    // rw shares only reading: a second writer is refused, a reader is fine.
    cli.run(&["open", "f", "--mode", "rw"]).expect(3);
    cli.open(&["f", "--mode", "r"]);
}

#[test]
fn passing_a_handle_client_to_client_and_through_the_inbox() {
    let tmp = tempfile::tempdir().unwrap();
    let (c1, c2, c3) = (
        client(tmp.path(), "c1"),
        client(tmp.path(), "c2"),
        client(tmp.path(), "c3"),
    );
    let server = TestServer::start(&[&c1, &c2, &c3], &[]);
    let data = random_bytes(2 << 20, 4);
    std::fs::write(server.root().join("f"), &data).unwrap();
    let (a, b, c) = (server.cli(&c1), server.cli(&c2), server.cli(&c3));

    let key = a.open(&["f", "--mode", "r", "--exclusive"]);
    let passed = a.run(&["pass", &key, "--to", "c2"]).expect(0).text();
    assert_ne!(passed, key);
    // Client to client: c2 was handed the printed key and reads the exclusive open with it.
    assert_eq!(
        sha256(&b.run(&["read", &passed]).expect(0).stdout),
        sha256(&data)
    );
    // Via the server: c2's inbox holds it.
    assert_eq!(b.run(&["inbox"]).expect(0).text(), passed);
    // c1's own key is not c2's; the passed key is not c3's or c1's.
    b.run(&["read", &key]).expect(3);
    c.run(&["read", &passed]).expect(3);
    a.run(&["read", &passed]).expect(3);
    assert!(c.run(&["inbox"]).expect(0).text().is_empty());
    // An altered key is refused before lookup.
    let mut altered = passed.clone().into_bytes();
    altered[20] = if altered[20] == b'A' { b'B' } else { b'A' };
    b.run(&["read", std::str::from_utf8(&altered).unwrap()])
        .expect(4);
    // Passing to an unknown client is refused; the server keeps serving.
    a.run(&["pass", &key, "--to", "nobody"]).expect(4);
    assert_eq!(
        sha256(&a.run(&["read", &key]).expect(0).stdout),
        sha256(&data)
    );
    // Closing the open ends every grant of it.
    a.run(&["close", &key]).expect(0);
    b.run(&["read", &passed]).expect(4);
    assert!(b.run(&["inbox"]).expect(0).text().is_empty());
}
