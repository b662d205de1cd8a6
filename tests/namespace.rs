//! Issue 13: namespace operations on the control channel (ls, stat, mkdir, rm, rmdir, mv,
//! truncate by path), confined beneath the root like opens, compared with what the same
//! operations do to a local directory; SMB's delete sharing between clients.

mod common;
use std::os::unix::fs::symlink;

use common::*;

#[test]
fn the_namespace_behaves_as_a_local_directory_would() {
    let tmp = tempfile::tempdir().unwrap();
    let c1 = client(tmp.path(), "c1");
    let server = TestServer::start(&[&c1], &[]);
    let root = server.root();
    let cli = server.cli(&c1);

    // mkdir -p makes every missing parent; again is no error; without -p an existing one is.
    cli.run(&["mkdir", "-p", "a/b/c"]).expect(0);
    cli.run(&["mkdir", "-p", "a/b/c"]).expect(0);
    assert!(root.join("a/b/c").is_dir());
    let r = cli.run(&["mkdir", "a/b"]).expect(1);
    assert!(r.stderr.contains("already exists"), "{}", r.stderr);
    // Without -p a missing parent is "no such file", as mkdir(1) says.
    cli.run(&["mkdir", "x/y"]).expect(4);

    // put from a local file and get to a local file, byte for byte.
    let data = random_bytes(3 << 20, 7);
    let local = tmp.path().join("local.bin");
    std::fs::write(&local, &data).unwrap();
    cli.run(&["put", local.to_str().unwrap(), "a/b/data.bin"])
        .expect(0);
    let back = tmp.path().join("back.bin");
    cli.run(&["get", "a/b/data.bin", back.to_str().unwrap()])
        .expect(0);
    assert_eq!(sha256(&std::fs::read(&back).unwrap()), sha256(&data));
    // The old forms still work: put REMOTE from stdin, get REMOTE to stdout; "-" as well.
    cli.run_with(&["put", "s.txt"], Some(b"stdin")).expect(0);
    cli.run_with(&["put", "-", "t.txt"], Some(b"dash"))
        .expect(0);
    assert_eq!(cli.run(&["get", "s.txt"]).expect(0).stdout, b"stdin");
    assert_eq!(cli.run(&["get", "t.txt", "-"]).expect(0).stdout, b"dash");

    // stat and ls agree with the local file system.
    let st = cli
        .run(&["stat", "a/b/data.bin", "--json"])
        .expect(0)
        .json();
    let meta = std::fs::metadata(root.join("a/b/data.bin")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(st["kind"], "regular file");
    assert_eq!(st["size"], meta.len());
    assert_eq!(st["ino"], meta.ino());
    assert_eq!(st["perm"], format!("{:04o}", meta.mode() & 0o7777));
    assert_eq!(st["mtime"].as_f64().unwrap().floor() as i64, meta.mtime());
    let dir = cli.run(&["stat", "/", "--json"]).expect(0).json();
    assert_eq!(dir["kind"], "directory");
    cli.run(&["stat", "nope"]).expect(4);

    let names = |out: &Out| -> Vec<String> { out.text().lines().map(str::to_owned).collect() };
    let mut local_names: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    local_names.sort();
    assert_eq!(names(&cli.run(&["ls"]).expect(0)), local_names);
    let long = cli.run(&["ls", "-l", "a/b"]).expect(0).text();
    let lines: Vec<&str> = long.lines().collect();
    assert_eq!(lines.len(), 2, "{long}");
    assert!(
        lines[0].starts_with("drwx") && lines[0].ends_with(" c"),
        "{long}"
    );
    assert!(
        lines[1].starts_with("-rw") && lines[1].contains(&(3u64 << 20).to_string()),
        "{long}"
    );
    // ls of a file lists the file.
    assert_eq!(
        names(&cli.run(&["ls", "a/b/data.bin"]).expect(0)),
        ["data.bin"]
    );

    // A directory longer than a page is listed whole, in order.
    cli.run(&["mkdir", "many"]).expect(0);
    let mut many: Vec<String> = (0..300).map(|i| format!("f{i:03}")).collect();
    for n in &many {
        std::fs::write(root.join("many").join(n), b"").unwrap();
    }
    many.sort();
    let listed = cli.run(&["ls", "many", "--json"]).expect(0).json();
    let listed: Vec<String> = listed["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, many);

    // mv renames (replacing a file at the target), rm removes files, rmdir empty directories.
    cli.run(&["mv", "s.txt", "a/moved.txt"]).expect(0);
    assert!(!root.join("s.txt").exists());
    assert_eq!(std::fs::read(root.join("a/moved.txt")).unwrap(), b"stdin");
    cli.run(&["mv", "t.txt", "a/moved.txt"]).expect(0);
    assert_eq!(std::fs::read(root.join("a/moved.txt")).unwrap(), b"dash");
    cli.run(&["mv", "nope", "a/x"]).expect(4);
    cli.run(&["mv", "a", "a/b/inside"]).expect(2);
    let r = cli.run(&["rmdir", "a/b"]).expect(1);
    assert!(r.stderr.contains("not empty"), "{}", r.stderr);
    let r = cli.run(&["rm", "a/b"]).expect(1);
    assert!(r.stderr.contains("is a directory"), "{}", r.stderr);
    cli.run(&["rmdir", "a/moved.txt"]).expect(1);
    cli.run(&["rm", "a/b/data.bin", "a/moved.txt"]).expect(0);
    cli.run(&["rmdir", "a/b/c", "a/b"]).expect(0);
    assert_eq!(std::fs::read_dir(root.join("a")).unwrap().count(), 0);
    cli.run(&["rm", "a/b/data.bin"]).expect(4);
}

#[test]
fn namespace_paths_stay_beneath_the_root() {
    let tmp = tempfile::tempdir().unwrap();
    let c1 = client(tmp.path(), "c1");
    let server = TestServer::start(&[&c1], &[]);
    let root = server.root();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"s").unwrap();
    symlink(&outside, root.join("escape")).unwrap();
    symlink("/nonexistent/target", root.join("dangling")).unwrap();
    let cli = server.cli(&c1);

    for args in [
        vec!["ls", "escape"],
        vec!["ls", ".."],
        vec!["stat", "escape/secret"],
        vec!["stat", "../outside/secret"],
        vec!["mkdir", "escape/new"],
        vec!["mkdir", "-p", "escape/new/deeper"],
        vec!["rm", "escape/secret"],
        vec!["rm", "../outside/secret"],
        vec!["mv", "escape/secret", "stolen"],
        vec!["rmdir", "escape/.."],
    ] {
        let r = cli.run(&args);
        assert_ne!(r.code, 0, "{args:?} succeeded");
    }
    assert!(outside.join("secret").exists());
    assert!(!outside.join("new").exists());
    assert!(!root.join("stolen").exists());
    // A link itself may be listed and removed (removing a link removes the link, never what
    // it points at).
    let ls = cli.run(&["ls", "-l"]).expect(0).text();
    assert!(
        ls.lines()
            .any(|l| l.starts_with('l') && l.ends_with("dangling")),
        "{ls}"
    );
    cli.run(&["rm", "escape"]).expect(0);
    assert!(outside.join("secret").exists());
}

#[test]
fn removing_or_renaming_a_file_another_client_holds_waits_for_its_delete_share() {
    let tmp = tempfile::tempdir().unwrap();
    let (alice, bob) = (client(tmp.path(), "alice"), client(tmp.path(), "bob"));
    let server = TestServer::start(&[&alice, &bob], &["--durable-timeout", "3"]);
    let root = server.root();
    for f in ["held", "shared", "mine"] {
        std::fs::write(root.join(f), b"data").unwrap();
    }
    let (a, b) = (server.cli(&alice), server.cli(&bob));
    let held = a.open(&["held", "--mode", "rw"]);
    a.open(&["shared", "--share", "rwd"]);
    a.open(&["mine"]);

    // bob is refused, and told who holds it, for rm, mv of it and mv onto it.
    for args in [
        vec!["rm", "held"],
        vec!["mv", "held", "elsewhere"],
        vec!["mv", "shared", "held"],
    ] {
        let r = b.run(&args).expect(3);
        assert!(r.stderr.contains("alice"), "{args:?}: {}", r.stderr);
    }
    assert!(root.join("held").exists() && root.join("shared").exists());
    // An open that shares delete lets bob rename and remove it.
    b.run(&["mv", "shared", "renamed"]).expect(0);
    b.run(&["rm", "renamed"]).expect(0);
    // alice's own open does not stand in her way.
    a.run(&["mv", "mine", "mine2"]).expect(0);
    a.run(&["rm", "mine2"]).expect(0);

    // Truncating by path: refused to bob while alice's open denies writing, or while she
    // locks bytes the change touches; never to alice herself.
    std::fs::write(root.join("sized"), vec![7u8; 1000]).unwrap();
    let reader = a.open(&["sized", "--share", "r"]);
    let r = b.run(&["truncate", "-s", "10", "sized"]).expect(3);
    assert!(r.stderr.contains("alice"), "{}", r.stderr);
    a.run(&["truncate", "-s", "500", "sized"]).expect(0);
    assert_eq!(std::fs::metadata(root.join("sized")).unwrap().len(), 500);
    a.run(&["close", &reader]).expect(0);
    let locker = a.open(&["sized", "--mode", "rw", "--lock", "100:10"]);
    b.run(&["truncate", "-s", "200", "sized"]).expect(0);
    b.run(&["truncate", "-s", "105", "sized"]).expect(3);
    assert_eq!(std::fs::metadata(root.join("sized")).unwrap().len(), 200);
    // alice's open is told the file changed when it resumes.
    let resumed = a.run(&["resume", &locker, "--json"]).expect(0).json();
    assert_eq!(resumed["changed_by_other"], true, "{resumed}");
    b.run(&["truncate", "-s", "1", "nope"]).expect(4);

    // The open is durable after alice's CLI exits; once she closes it, bob may remove it.
    a.run(&["close", &held]).expect(0);
    b.run(&["rm", "held"]).expect(0);
    assert!(!root.join("held").exists());
}
