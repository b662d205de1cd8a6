//! Secrets stay private (identities, the clients list, the state directory, the keys file)
//! and the embedded state store is never silently replaced: a damaged one stops the server
//! with one line saying what to do.

mod common;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn chmod(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

#[test]
fn secrets_are_written_private_and_loose_ones_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let alice = client(tmp.path(), "alice");
    let mut server = TestServer::start(&[&alice], &[]);
    let a = server.cli(&alice);

    // keygen -o: mode 0600, and an existing identity is never overwritten.
    let id = tmp.path().join("new.id");
    a.run(&["keygen", "carol", "-o", id.to_str().unwrap()])
        .expect(0);
    assert_eq!(mode(&id), 0o600);
    let line = std::fs::read_to_string(&id).unwrap();
    assert!(line.starts_with("carol:"), "{line}");
    a.run(&["keygen", "dave", "-o", id.to_str().unwrap()])
        .expect(2);
    assert_eq!(std::fs::read_to_string(&id).unwrap(), line);

    // The state directory and everything in it: the owner's only.
    let state = server.dir.path().join("state");
    assert_eq!(mode(&state), 0o700);
    for f in std::fs::read_dir(&state).unwrap() {
        let f = f.unwrap().path();
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }

    // The keys file the CLI keeps.
    std::fs::write(server.root().join("f"), b"f").unwrap();
    a.open(&["f"]);
    assert_eq!(mode(&a.keys), 0o600);
    let keys_before = std::fs::read_to_string(&a.keys).unwrap();

    // A path with a newline would forge a line in it: refused, nothing recorded.
    let out = a.run(&["open", "x\nforged-key", "--create"]).expect(2);
    assert!(out.stderr.contains("control character"), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(&a.keys).unwrap(), keys_before);

    // An identity others can read: refused before anything is sent.
    chmod(&alice.path, 0o644);
    let out = a.run(&["inbox"]).expect(5);
    assert!(out.stderr.contains("chmod 600"), "{}", out.stderr);
    chmod(&alice.path, 0o600);
    a.run(&["inbox"]).expect(0);

    // A clients file others can read: the server does not start.
    chmod(&server.clients_file(), 0o640);
    let out = server.start_refused(&[]);
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(out.stderr.contains("chmod 600"), "{}", out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
}

#[test]
fn a_damaged_store_stops_the_server_with_one_line_and_is_never_replaced_silently() {
    let tmp = tempfile::tempdir().unwrap();
    let alice = client(tmp.path(), "alice");
    let mut server = TestServer::start(&[&alice], &[]);
    let a = server.cli(&alice);
    std::fs::write(server.root().join("f"), b"durable").unwrap();
    let key = a.open(&["f", "--mode", "rw"]);
    let store = server.dir.path().join("state/handoff.redb");
    server.kill9();
    let good = std::fs::read(&store).unwrap();

    type Damage<'a> = (&'a str, &'a dyn Fn(&Path));
    let damages: [Damage; 3] = [
        ("truncated to half", &|p| {
            let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
            f.set_len(good.len() as u64 / 2).unwrap();
        }),
        ("its header zeroed", &|p| {
            let mut f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
            f.seek(SeekFrom::Start(0)).unwrap();
            f.write_all(&[0u8; 8192]).unwrap();
        }),
        ("truncated to 0 bytes", &|p| {
            std::fs::File::create(p).unwrap();
        }),
    ];
    for (what, damage) in damages {
        std::fs::write(&store, &good).unwrap();
        damage(&store);
        let damaged = std::fs::read(&store).unwrap();
        let out = server.start_refused(&[]);
        assert_eq!(out.code, 1, "{what}: {}", out.stderr);
        assert!(!out.stderr.contains("panicked"), "{what}: {}", out.stderr);
        assert_eq!(
            out.stderr.trim().lines().count(),
            1,
            "{what}: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains("handoff.redb"),
            "{what}: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains("--reset-state"),
            "{what}: {}",
            out.stderr
        );
        assert_eq!(
            std::fs::read(&store).unwrap(),
            damaged,
            "{what}: the store was touched"
        );
    }
    // A removed store is not replaced either.
    std::fs::remove_file(&store).unwrap();
    let out = server.start_refused(&[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("missing"), "{}", out.stderr);

    // The intact store brings the open back.
    std::fs::write(&store, &good).unwrap();
    server.restart();
    assert_eq!(a.run(&["read", &key]).expect(0).stdout, b"durable");

    // Only when asked does a damaged store give way, and it is kept aside.
    server.kill9();
    std::fs::File::create(&store).unwrap();
    server.restart_with(&["--reset-state"]);
    let kept: Vec<_> = std::fs::read_dir(server.dir.path().join("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("handoff.redb.damaged-"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    a.run(&["read", &key]).expect(4);
    a.run(&["inbox"]).expect(0);
}
