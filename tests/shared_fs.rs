//! Serving a shared file system safely: paths stay beneath the root, special files and slow
//! file systems cannot stall the server, keys follow files (not paths), denied opens leave no
//! trace. Each test is a hostile client's attempt on the real binaries.

mod common;
use std::os::unix::fs::symlink;
use std::time::{Duration, Instant};

use common::*;

const QUICK: Duration = Duration::from_secs(10);

#[test]
fn symlinks_that_leave_the_root_are_refused_and_name_the_path_not_the_target() {
    let tmp = tempfile::tempdir().unwrap();
    let alice = client(tmp.path(), "alice");
    let server = TestServer::start(&[&alice], &[]);
    let a = server.cli(&alice);
    let outside = tmp.path().join("elsewhere");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"host secret").unwrap();
    std::fs::write(outside.join("victim"), b"untouched").unwrap();
    symlink(outside.join("secret"), server.root().join("evil")).unwrap();
    symlink(&outside, server.root().join("r")).unwrap();
    symlink("../../elsewhere/secret", server.root().join("rel")).unwrap();

    // Reading through a link to a file outside the root.
    for name in ["evil", "rel", "r/secret"] {
        let out = a.run_within(QUICK, &["get", name]);
        assert_eq!(out.code, 3, "get {name}: {}", out.stderr);
        assert!(
            out.stdout.is_empty(),
            "get {name} printed bytes from outside the root"
        );
        assert!(out.stderr.contains(name), "{}", out.stderr);
        assert!(
            !out.stderr.contains("elsewhere"),
            "message leaks the target: {}",
            out.stderr
        );
    }
    // Writing and creating through a link to a directory outside the root.
    let out = a.run_with(&["put", "r/victim"], Some(b"overwritten"));
    assert_eq!(out.code, 3, "{}", out.stderr);
    let out = a.run_with(&["put", "r/new"], Some(b"planted"));
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"untouched");
    assert!(
        !outside.join("new").exists(),
        "a file was created outside the root"
    );

    // A link that stays beneath the root works.
    std::fs::create_dir(server.root().join("d")).unwrap();
    std::fs::write(server.root().join("d/data"), b"inside").unwrap();
    symlink("d/data", server.root().join("inside")).unwrap();
    assert_eq!(a.run(&["get", "inside"]).expect(0).stdout, b"inside");
}

#[test]
fn a_fifo_is_refused_at_once_and_a_slow_open_stalls_nobody_else() {
    let tmp = tempfile::tempdir().unwrap();
    let (alice, bob) = (client(tmp.path(), "alice"), client(tmp.path(), "bob"));
    // `slow` takes 20 s to open, as on a file system whose server is not answering.
    let server = TestServer::start_with_env(
        &[&alice, &bob],
        &["--durable-timeout", "2"],
        &[("HANDOFFD_FAULT_SLOW_OPEN", "slow=20000")],
    );
    let (a, b) = (server.cli(&alice), server.cli(&bob));
    let fifo = server.root().join("f");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    std::fs::write(server.root().join("slow"), b"slow").unwrap();
    std::fs::write(server.root().join("x"), b"x").unwrap();
    std::fs::write(server.root().join("y"), b"y").unwrap();

    // A FIFO with no writer: refused, not waited on.
    let out = b.run_within(QUICK, &["open", "f"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(out.stderr.contains("not a regular file"), "{}", out.stderr);
    let out = b.run_within(QUICK, &["open", "f", "--mode", "rw"]);
    assert_eq!(out.code, 3, "{}", out.stderr);

    // alice's exclusive open of x goes durable (her CLI exits): its 2 s timeout runs.
    a.open(&["x", "--mode", "rw", "--exclusive"]);
    let started = Instant::now();
    let mut stuck = b.spawn(&["open", "slow"]);
    std::thread::sleep(Duration::from_millis(300));
    // Meanwhile everyone else is served: an open, a close, the inbox, and x's expiry.
    let t = Instant::now();
    let k = b.run_within(QUICK, &["open", "y"]).expect(0).text();
    b.run_within(QUICK, &["close", &k]).expect(0);
    b.run_within(QUICK, &["inbox"]).expect(0);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    eventually(Duration::from_secs(12), || {
        (b.run_within(QUICK, &["open", "x", "--mode", "rw"]).code == 0).then_some(())
    });
    assert!(
        stuck.try_wait().unwrap().is_none(),
        "the slow open finished before the others were tried ({:?})",
        started.elapsed()
    );
    let out = finish(stuck);
    assert_eq!(out.code, 0, "the slow open itself succeeds: {}", out.stderr);
}

#[test]
fn a_key_follows_its_file_when_another_is_moved_over_its_path() {
    let tmp = tempfile::tempdir().unwrap();
    let (alice, bob) = (client(tmp.path(), "alice"), client(tmp.path(), "bob"));
    let mut server = TestServer::start(&[&alice, &bob], &[]);
    let (a, b) = (server.cli(&alice), server.cli(&bob));
    std::fs::write(server.root().join("doc"), b"alice's document").unwrap();
    let ka = a.open(&["doc", "--mode", "rw"]);

    // Someone replaces doc; bob opens the new file exclusively.
    std::fs::write(server.root().join("doc.new"), b"bob's document!!").unwrap();
    std::fs::rename(server.root().join("doc.new"), server.root().join("doc")).unwrap();
    let kb = b.open(&["doc", "--mode", "rw", "--exclusive"]);

    // alice's key still names her file: her write lands there, not in bob's.
    a.run_with(&["write", &ka], Some(b"ALICE")).expect(0);
    assert_eq!(a.run(&["read", &ka]).expect(0).stdout, b"ALICE's document");
    assert_eq!(
        std::fs::read(server.root().join("doc")).unwrap(),
        b"bob's document!!"
    );
    let r = b.run(&["resume", &kb, "--json"]).expect(0).json();
    assert_eq!(r["changed_by_other"], false);

    // After a restart the path names another file: alice's key says so, it attaches to nothing.
    server.restart();
    let out = a.run(&["read", &ka]).expect(4);
    assert!(out.stderr.contains("replaced or removed"), "{}", out.stderr);
    assert_eq!(
        std::fs::read(server.root().join("doc")).unwrap(),
        b"bob's document!!"
    );
    // bob's own file is his again.
    assert_eq!(b.run(&["read", &kb]).expect(0).stdout, b"bob's document!!");
}

#[test]
fn a_denied_open_creates_and_truncates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (alice, bob) = (client(tmp.path(), "alice"), client(tmp.path(), "bob"));
    let mut server = TestServer::start(&[&alice, &bob], &["--grace", "30"]);
    let (a, b) = (server.cli(&alice), server.cli(&bob));
    a.run_with(&["put", "g"], Some(b"keep me")).expect(0);
    let _held = a.open(&["g", "--mode", "rw", "--exclusive"]);

    // A truncating open denied by a sharing violation leaves the file as it was.
    let out = b.run_with(&["put", "g"], Some(b"x")).expect(3);
    assert!(out.stderr.contains("sharing violation"), "{}", out.stderr);
    assert_eq!(std::fs::read(server.root().join("g")).unwrap(), b"keep me");

    // A create refused for what it asks (overlapping locks) creates nothing either.
    b.run(&["open", "h", "--create", "--lock", "0:10", "--lock", "5:10"])
        .expect(2);
    assert!(!server.root().join("h").exists(), "a refused create left h");

    // After a restart only resumes are served: a create waits (the CLI retries through the
    // grace period) and creates nothing meanwhile.
    server.restart();
    let mut waiting = b.spawn(&["put", "new"]);
    std::thread::sleep(Duration::from_millis(2500));
    assert!(waiting.try_wait().unwrap().is_none(), "put did not wait");
    assert!(
        !server.root().join("new").exists(),
        "a create refused in the grace period left a file behind"
    );
    waiting.kill().unwrap();
    waiting.wait().unwrap();
}

#[test]
fn a_write_the_file_system_refuses_is_answered_once_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (alice, bob) = (client(tmp.path(), "alice"), client(tmp.path(), "bob"));
    // handoffd may write no file beyond 16 MiB (RLIMIT_FSIZE): writes past it get EFBIG.
    let server =
        TestServer::start_wrapped(&[&alice, &bob], &[], &["prlimit", "--fsize=16777216", "--"]);
    let (a, b) = (server.cli(&alice), server.cli(&bob));
    std::fs::write(server.root().join("f"), b"original").unwrap();
    let kb = b.open(&["f", "--mode", "rw"]);
    let ka = a.open(&["f", "--mode", "rw"]);

    let out = a
        .run_with(
            &["write", &ka, "--offset", "20000000"],
            Some(b"beyond the limit"),
        )
        .expect(7);
    assert!(out.stderr.contains("EFBIG"), "{}", out.stderr);
    assert!(out.stderr.contains("File too large"), "{}", out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert_eq!(
        server
            .log()
            .matches("write refused by the file system")
            .count(),
        1,
        "the client sent the refused write again"
    );
    assert_eq!(std::fs::read(server.root().join("f")).unwrap(), b"original");
    // Nothing changed, so nobody is told it did.
    let r = b.run(&["resume", &kb, "--json"]).expect(0).json();
    assert_eq!(r["changed_by_other"], false);

    // The handle and the server carry on: a write that fits lands and is counted.
    a.run_with(&["write", &ka], Some(b"ORIG")).expect(0);
    assert_eq!(std::fs::read(server.root().join("f")).unwrap(), b"ORIGinal");
    let r = b.run(&["resume", &kb, "--json"]).expect(0).json();
    assert_eq!(r["changed_by_other"], true);
}

#[test]
fn opens_past_the_descriptor_budget_are_served_and_still_follow_their_file() {
    let tmp = tempfile::tempdir().unwrap();
    let alice = client(tmp.path(), "alice");
    // 300 descriptors, 4 + 4 connections: room to keep only the fewest files open (16).
    let server = TestServer::start_wrapped(
        &[&alice],
        &["--max-connections", "4", "--max-unauthenticated", "4"],
        &["prlimit", "--nofile=300:300", "--"],
    );
    let a = server.cli(&alice);
    let keys: Vec<String> = (0..80)
        .map(|i| {
            std::fs::write(server.root().join(format!("f{i}")), format!("file {i}")).unwrap();
            a.open(&[&format!("f{i}")])
        })
        .collect();
    for (i, key) in keys.iter().enumerate() {
        let out = a.run(&["read", key]).expect(0);
        assert_eq!(out.stdout, format!("file {i}").as_bytes());
    }
    // Files moved over the paths of the first open (kept) and of the last (past the budget):
    // the first key still reaches its own file, the last refuses the stranger.
    for i in [0, 79] {
        let other = server.root().join("other");
        std::fs::write(&other, b"someone else's").unwrap();
        std::fs::rename(&other, server.root().join(format!("f{i}"))).unwrap();
    }
    assert_eq!(a.run(&["read", &keys[0]]).expect(0).stdout, b"file 0");
    let out = a.run(&["read", &keys[79]]).expect(4);
    assert!(out.stderr.contains("replaced or removed"), "{}", out.stderr);
}

/// Unmounts a test mount however the test ends.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn files_with_the_same_inode_number_on_two_file_systems_are_two_files() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let (alice, bob) = (client(tmp.path(), "alice"), client(tmp.path(), "bob"));
    let server = TestServer::start(&[&alice, &bob], &[]);
    let mut mounts = Vec::new();
    for d in ["a", "b"] {
        let dir = server.root().join(d);
        std::fs::create_dir(&dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(&dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipped: cannot mount tmpfs here (not root?)");
            return;
        }
        mounts.push(Mounted(dir.clone()));
        std::fs::write(dir.join("f"), d).unwrap();
    }
    let ino = |d: &str| {
        std::fs::metadata(server.root().join(d).join("f"))
            .unwrap()
            .ino()
    };
    if ino("a") != ino("b") {
        eprintln!("skipped: the two tmpfs gave different inode numbers");
        return;
    }
    let (a, b) = (server.cli(&alice), server.cli(&bob));
    let ka = a.open(&["a/f", "--mode", "rw", "--exclusive"]);
    let kb = b.open(&["b/f", "--mode", "rw", "--exclusive"]);
    assert_eq!(a.run(&["read", &ka]).expect(0).stdout, b"a");
    assert_eq!(b.run(&["read", &kb]).expect(0).stdout, b"b");
    // The same file is still exclusive.
    let out = b.run(&["open", "a/f"]).expect(3);
    assert!(out.stderr.contains("sharing violation"), "{}", out.stderr);
    drop(mounts); // before the server's directory is removed
}
