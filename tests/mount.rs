//! Issue 13: unmodified programs on a real FUSE mount of handoff (the host's kernel FUSE,
//! `handoff mount`): cp in and out, namespace operations compared with a local directory,
//! and a program's open file surviving a kill -9 and restart of the server.

mod common;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::mounted::Mounted;
use common::*;

/// `path` holds exactly `blocks` 4 KiB blocks, each its index (big-endian u32) repeated, in
/// order: what the writers below write.
fn assert_blocks_in_order(path: &Path, blocks: usize) {
    let got = std::fs::read(path).unwrap();
    assert_eq!(got.len(), blocks * 4096);
    for (i, block) in got.chunks(4096).enumerate() {
        assert_eq!(block, (i as u32).to_be_bytes().repeat(1024), "block {i}");
    }
}

/// Runs `script` with sh in `dir`; its output and exit code.
fn sh(dir: &Path, script: &str) -> (String, i32) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

#[test]
fn cp_and_the_namespace_on_the_mount_behave_as_on_a_local_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let c1 = client(tmp.path(), "c1");
    let server = TestServer::start(&[&c1], &[]);
    let mnt = Mounted::new(
        &server.cli(&c1),
        &tmp.path().join("mnt"),
        &["--channel", "tcp"],
    );

    // 256 MiB in and out with cp: the same bytes, by sha256.
    let data = random_bytes(256 << 20, 21);
    let local = tmp.path().join("big.bin");
    std::fs::write(&local, &data).unwrap();
    let want = sha256(&data);
    drop(data);
    let status = Command::new("cp")
        .arg(&local)
        .arg(mnt.dir.join("big.bin"))
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        sha256(&std::fs::read(server.root().join("big.bin")).unwrap()),
        want
    );
    let back = tmp.path().join("back.bin");
    let status = Command::new("cp")
        .arg(mnt.dir.join("big.bin"))
        .arg(&back)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(sha256(&std::fs::read(&back).unwrap()), want);
    std::fs::remove_file(server.root().join("big.bin")).unwrap();

    // The same script in a local directory and on the mount: the same output, step by step.
    let script = r#"
        mkdir -p a/b/c; echo "mkdir -p: $?"
        mkdir -p a/b/c; echo "mkdir -p again: $?"
        mkdir a 2>/dev/null; echo "mkdir existing: $?"
        mkdir x/y 2>/dev/null; echo "mkdir without parent: $?"
        printf hello > a/f; echo "write: $?"
        cat a/f; echo
        printf 'more' >> a/f; cat a/f; echo
        mv a/f a/b/g; echo "mv: $?"
        ls a; ls a/b
        stat -c '%F %s %h' a a/b/g
        rmdir a/b 2>/dev/null; echo "rmdir non-empty: $?"
        rm a/b 2>/dev/null; echo "rm a directory: $?"
        rmdir a/b/g 2>/dev/null; echo "rmdir a file: $?"
        truncate -s 2 a/b/g; cat a/b/g; echo
        rm a/b/g; echo "rm: $?"
        rm a/b/g 2>/dev/null; echo "rm again: $?"
        rmdir a/b/c a/b; echo "rmdir: $?"
        mkdir d; printf x > d/in; mv d e; cat e/in; echo; ls
        mv e a/; ls -R a | sed 's/^.*://'
        rm -r a; echo "rm -r: $?"; ls
    "#;
    let local_dir = tmp.path().join("local");
    std::fs::create_dir(&local_dir).unwrap();
    let (want, want_code) = sh(&local_dir, script);
    let (got, got_code) = sh(&mnt.dir, script);
    assert_eq!(got, want, "mount log:\n{}", mnt.log());
    assert_eq!(got_code, want_code);
    assert_eq!(std::fs::read_dir(server.root()).unwrap().count(), 0);
}

#[test]
fn a_program_writing_through_the_mount_never_notices_the_server_killed_and_restarted() {
    let tmp = tempfile::tempdir().unwrap();
    let c1 = client(tmp.path(), "c1");
    let mut server = TestServer::start(&[&c1], &[]);
    let mnt = Mounted::new(
        &server.cli(&c1),
        &tmp.path().join("mnt"),
        &["--channel", "tcp"],
    );

    // A block every 100 ms, each naming its index; fsync every tenth.
    const BLOCKS: usize = 60;
    let writer = Command::new("python3")
        .arg("-c")
        .arg(
            r#"
import os, sys, time
f = open(sys.argv[1], "wb", buffering=0)
for i in range(int(sys.argv[2])):
    f.write(i.to_bytes(4, "big") * 1024)
    if i % 10 == 9:
        os.fsync(f.fileno())
    time.sleep(0.1)
f.close()
"#,
        )
        .arg(mnt.dir.join("log.bin"))
        .arg(BLOCKS.to_string())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once some blocks are in, the server dies without warning and comes back.
    eventually(Duration::from_secs(20), || {
        let len = std::fs::metadata(server.root().join("log.bin")).ok()?.len();
        (len >= 10 * 4096).then_some(())
    });
    server.kill9();
    std::thread::sleep(Duration::from_millis(500));
    server.restart();
    let out = writer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the writer saw an error: {}\nmount log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        mnt.log()
    );
    assert_blocks_in_order(&server.root().join("log.bin"), BLOCKS);
    assert!(
        mnt.log().contains("resuming by key"),
        "the data channel never broke: the test did not test anything\n{}",
        mnt.log()
    );
}

#[test]
fn readers_sharing_one_descriptor_read_true_bytes_through_a_server_kill_and_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let c1 = client(tmp.path(), "c1");
    let mut server = TestServer::start(&[&c1], &[]);
    // 32 blocks of 1 MiB, block i is its index (big-endian u32) repeated.
    std::fs::write(server.root().join("blocks.bin"), numbered_blocks(32)).unwrap();
    let mnt = Mounted::new(
        &server.cli(&c1),
        &tmp.path().join("mnt"),
        &["--channel", "tcp"],
    );
    // Eight threads read 1 MiB blocks through ONE descriptor at once (the mount serves
    // overlapping requests on several data channels of the open), checking each block. A
    // line after the first full pass; then they go on until told to stop.
    let mut readers = python(
        &format!(
            r#"{BLOCK_READERS}
fd = os.open(sys.argv[1], os.O_RDONLY)
readers = BlockReaders(fd, 32, 8)
readers.wait_for(32)
print("read", flush=True)
sys.stdin.readline()
readers.wait_for(readers.reads + 64)
print(readers.verdict(), flush=True)
"#
        ),
        &mnt.dir.join("blocks.bin"),
    );
    assert_eq!(read_line(&mut readers), "read", "mount log:\n{}", mnt.log());
    server.kill9();
    std::thread::sleep(Duration::from_millis(500));
    server.restart();
    use std::io::Write;
    writeln!(readers.stdin.as_mut().unwrap()).unwrap();
    let verdict = read_line(&mut readers);
    let out = readers.wait_with_output().unwrap();
    assert!(
        verdict.starts_with("ok") && out.status.success(),
        "{verdict} {}\nmount log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        mnt.log()
    );
    assert!(
        mnt.log().contains("resuming by key"),
        "no data channel broke: the test did not test anything\n{}",
        mnt.log()
    );
}

/// Python for the tests below: `BlockReaders(fd, blocks, threads)` starts `threads` threads
/// that pread 1 MiB blocks of `fd` (block i is its index, big-endian u32, repeated), each
/// thread going on from its own start, and check every one. An exception in a thread (EIO
/// is an `OSError`) is an error like wrong bytes; `wait_for(n)` waits (a minute at most)
/// until `n` blocks were read or an error came, and `verdict()` stops the threads and says
/// "ok N reads" or what went wrong.
const BLOCK_READERS: &str = r#"
import os, sys, threading, time
class BlockReaders:
    def __init__(self, fd, blocks, threads):
        self.fd, self.blocks, self.reads, self.errors = fd, blocks, 0, []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(t,)) for t in range(threads)]
        for t in self.threads: t.start()
    def run(self, i):
        try:
            while not self.stop.is_set():
                b = i % self.blocks
                got = os.pread(self.fd, 1 << 20, b << 20)
                if got != b.to_bytes(4, "big") * (1 << 18):
                    self.errors.append("block %d: %d bytes, starting %r" % (b, len(got), got[:8]))
                    return
                with self.lock: self.reads += 1
                i += 1
        except Exception as e:
            self.errors.append(repr(e))
    def wait_for(self, n):
        deadline = time.monotonic() + 60
        while self.reads < n and not self.errors:
            if time.monotonic() > deadline:
                self.errors.append("only %d of %d reads in a minute" % (self.reads, n))
            self.stop.wait(0.05)
    def verdict(self):
        self.stop.set()
        for t in self.threads: t.join()
        return "errors: %s" % self.errors if self.errors else "ok %d reads" % self.reads
"#;

/// The blocks [`BLOCK_READERS`] checks, `n` of them, as a file's bytes.
fn numbered_blocks(n: u32) -> Vec<u8> {
    (0..n)
        .flat_map(|i| i.to_be_bytes().repeat(1 << 18))
        .collect()
}

#[test]
fn overlapping_reads_of_one_open_are_not_lost_because_another_open_writes_the_file() {
    // The mount attaches more data channels to an open while its requests overlap; the
    // server's report on such an attach says whether other opens wrote the file since this
    // one last looked. That is a live open's normal life under the default rwd sharing, not
    // a lost open: only an open that expired and was granted again onto a changed file is.
    let tmp = tempfile::tempdir().unwrap();
    let c1 = client(tmp.path(), "c1");
    let server = TestServer::start(&[&c1], &[]);
    std::fs::write(server.root().join("shared.bin"), numbered_blocks(32)).unwrap();
    let mnt = Mounted::new(
        &server.cli(&c1),
        &tmp.path().join("mnt"),
        &["--channel", "tcp"],
    );
    let mut program = python(
        &format!(
            r#"{BLOCK_READERS}
r = os.open(sys.argv[1], os.O_RDONLY)
w = os.open(sys.argv[1], os.O_RDWR)
os.pread(r, 4096, 0)
# Another open writes (past the blocks the readers check) before and while they read.
os.pwrite(w, b"w" * 4096, 32 << 20)
os.fsync(w)
readers = BlockReaders(r, 32, 8)
n = 0
while readers.reads < 96 and not readers.errors and n < 2000:
    os.pwrite(w, b"w" * 4096, (32 << 20) + (n % 16) * 4096)
    n += 1
readers.wait_for(96)
print(readers.verdict(), flush=True)
"#
        ),
        &mnt.dir.join("shared.bin"),
    );
    let verdict = read_line(&mut program);
    let out = program.wait_with_output().unwrap();
    assert!(
        verdict.starts_with("ok") && out.status.success(),
        "{verdict} {}\nmount log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        mnt.log()
    );
    assert!(
        !mnt.log().contains("lost"),
        "an open was marked lost:\n{}",
        mnt.log()
    );
}

/// A python process that runs `script` with the path and reports by lines on stdout; it
/// reads a line on stdin when told to go on.
fn python(script: &str, path: &Path) -> std::process::Child {
    Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn read_line(child: &mut std::process::Child) -> String {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim().to_owned()
}

/// Tries an fcntl write lock on `start`..`start + len` of `path` (opened read-write) without
/// waiting: "locked", or the errno's name.
fn try_lock(path: &Path, start: u64, len: u64) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            r#"
import errno, fcntl, os, sys
f = open(sys.argv[1], "r+b")
try:
    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, int(sys.argv[3]), int(sys.argv[2]))
    print("locked")
except OSError as e:
    print(errno.errorcode[e.errno])
"#,
        )
        .arg(path)
        .arg(start.to_string())
        .arg(len.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Tries open(2) of `path` for reading: "opened", or the errno's name.
fn try_open(path: &Path) -> String {
    match std::fs::File::open(path) {
        Ok(_) => "opened".into(),
        Err(e) => match e.raw_os_error() {
            Some(13) => "EACCES".into(),
            Some(16) => "EBUSY".into(),
            _ => format!("{e}"),
        },
    }
}

#[test]
fn two_mounts_are_two_clients_for_locks_and_exclusive_opens() {
    let tmp = tempfile::tempdir().unwrap();
    let (alice, bob) = (client(tmp.path(), "alice"), client(tmp.path(), "bob"));
    let server = TestServer::start(&[&alice, &bob], &["--durable-timeout", "3"]);
    std::fs::write(server.root().join("f"), vec![0u8; 4096]).unwrap();
    let a = Mounted::new(
        &server.cli(&alice),
        &tmp.path().join("a"),
        &["--channel", "tcp"],
    );
    let b = Mounted::new(
        &server.cli(&bob),
        &tmp.path().join("b"),
        &["--channel", "tcp"],
    );

    // alice's process locks bytes 0..100 and holds them.
    let mut holder = python(
        r#"
import fcntl, sys
f = open(sys.argv[1], "r+b")
fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 100, 0)
print("locked", flush=True)
sys.stdin.readline()
fcntl.lockf(f, fcntl.LOCK_UN, 100, 0)
print("unlocked", flush=True)
sys.stdin.readline()
"#,
        &a.dir.join("f"),
    );
    assert_eq!(read_line(&mut holder), "locked");
    // bob's process on the other mount: refused inside the range, granted outside it.
    let refused = try_lock(&b.dir.join("f"), 50, 10);
    assert!(refused == "EAGAIN" || refused == "EACCES", "{refused}");
    assert_eq!(try_lock(&b.dir.join("f"), 200, 100), "locked");
    // Once alice unlocks, bob gets it.
    use std::io::Write;
    holder.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
    assert_eq!(read_line(&mut holder), "unlocked");
    assert_eq!(try_lock(&b.dir.join("f"), 50, 10), "locked");
    holder.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
    assert!(holder.wait().unwrap().success());

    // A mount whose opens share nothing: while its process holds the file, bob's open(2)
    // is refused; when that host vanishes (its mount killed), the open stays durable and
    // keeps bob out until its timeout, then bob's open succeeds.
    let excl_dir = tmp.path().join("excl");
    let excl = Mounted::new(
        &server.cli(&alice),
        &excl_dir,
        &["--channel", "tcp", "--share", "none"],
    );
    let mut reader = python(
        r#"
import sys
f = open(sys.argv[1], "rb")
print("open", flush=True)
sys.stdin.readline()
"#,
        &excl.dir.join("f"),
    );
    assert_eq!(read_line(&mut reader), "open");
    assert_eq!(try_open(&b.dir.join("f")), "EACCES");
    // The mount process dies without closing anything.
    let killed = Command::new("pkill")
        .args(["-9", "-f"])
        .arg(format!("mount {} ", excl_dir.display()))
        .status()
        .unwrap();
    assert!(
        killed.success(),
        "the exclusive mount's process was not found"
    );
    let _ = reader.kill();
    let gone = std::time::Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(try_open(&b.dir.join("f")), "EACCES");
    eventually(Duration::from_secs(15), || {
        (try_open(&b.dir.join("f")) == "opened").then_some(())
    });
    assert!(
        gone.elapsed() >= Duration::from_secs(2),
        "granted after {:?}, before the durable timeout",
        gone.elapsed()
    );
}

#[test]
fn a_descriptor_whose_open_expired_and_was_changed_by_another_client_fails_with_eio() {
    let tmp = tempfile::tempdir().unwrap();
    let (alice, bob) = (client(tmp.path(), "alice"), client(tmp.path(), "bob"));
    let mut server =
        TestServer::start(&[&alice, &bob], &["--durable-timeout", "1", "--grace", "1"]);
    std::fs::write(server.root().join("f"), b"original").unwrap();
    let mnt = Mounted::new(
        &server.cli(&alice),
        &tmp.path().join("mnt"),
        &["--channel", "tcp"],
    );
    let mut program = python(
        r#"
import os, sys
f = open(sys.argv[1], "r+b", buffering=0)
print(f.read(8).decode(), flush=True)
sys.stdin.readline()
try:
    f.seek(0)
    print(f.read(8).decode(), flush=True)
except OSError as e:
    print("error", e.errno, flush=True)
"#,
        &mnt.dir.join("f"),
    );
    assert_eq!(read_line(&mut program), "original");
    // alice's host stops answering (the mount frozen) while the server restarts; the open
    // expires and bob changes the file.
    let frozen = Command::new("pkill")
        .args(["-STOP", "-f"])
        .arg(format!("mount {} ", mnt.dir.display()))
        .status()
        .unwrap();
    assert!(frozen.success());
    server.restart();
    std::thread::sleep(Duration::from_secs(4));
    server
        .cli(&bob)
        .run_with(&["put", "f"], Some(b"CHANGED!"))
        .expect(0);
    Command::new("pkill")
        .args(["-CONT", "-f"])
        .arg(format!("mount {} ", mnt.dir.display()))
        .status()
        .unwrap();
    use std::io::Write;
    program.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
    // Never bob's bytes through alice's old descriptor: EIO, and the mount says why.
    assert_eq!(
        read_line(&mut program),
        "error 5",
        "mount log:\n{}",
        mnt.log()
    );
    assert!(mnt.log().contains("changed"), "{}", mnt.log());
    // A new open(2) sees the file as it is now.
    assert_eq!(std::fs::read(mnt.dir.join("f")).unwrap(), b"CHANGED!");
}

/// A TCP relay to `target` whose connections can all be cut at once (the listener stays).
struct Relay {
    addr: String,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Relay {
    fn to(target: &str) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (target, kept) = (target.to_owned(), conns.clone());
        std::thread::spawn(move || {
            for inbound in listener.incoming() {
                let Ok(inbound) = inbound else { return };
                let Ok(outbound) = std::net::TcpStream::connect(&target) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (inbound.try_clone().unwrap(), outbound.try_clone().unwrap()),
                    (outbound.try_clone().unwrap(), inbound.try_clone().unwrap()),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
                kept.lock().unwrap().extend([inbound, outbound]);
            }
        });
        Relay { addr, conns }
    }

    /// Cuts every connection relayed so far; returns how many there were.
    fn cut(&self) -> usize {
        let conns: Vec<_> = self.conns.lock().unwrap().drain(..).collect();
        for c in &conns {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        conns.len() / 2
    }
}

#[test]
fn a_program_writing_through_the_mount_never_notices_its_control_channel_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let c1 = client(tmp.path(), "c1");
    let server = TestServer::start(&[&c1], &[]);
    // The mount reaches the control channel through the relay; data channels go straight
    // to the server's data endpoint, which the control channel names.
    let relay = Relay::to(&server.addr);
    let mut cli = server.cli(&c1);
    cli.server = relay.addr.clone();
    let mnt = Mounted::new(&cli, &tmp.path().join("mnt"), &["--channel", "tcp"]);

    const BLOCKS: usize = 40;
    let mut writer = python(
        r#"
import os, sys, time
f = open(sys.argv[1], "wb", buffering=0)
for i in range(40):  # BLOCKS
    f.write(i.to_bytes(4, "big") * 1024)
    if i == 10:
        print("ten", flush=True)
    time.sleep(0.1)
f.close()
print("done", flush=True)
"#,
        &mnt.dir.join("log.bin"),
    );
    assert_eq!(read_line(&mut writer), "ten");
    assert!(
        relay.cut() >= 1,
        "no control connection went through the relay"
    );
    // While the control channel is down the namespace still answers (it reconnects).
    assert!(mnt.dir.join("log.bin").exists());
    assert_eq!(read_line(&mut writer), "done", "mount log:\n{}", mnt.log());
    assert!(writer.wait().unwrap().success());
    assert_blocks_in_order(&server.root().join("log.bin"), BLOCKS);
    // The close after the last write (a FUSE release, sent after close(2) returns) needs
    // the control channel: it connects again, or the test tested nothing.
    eventually(Duration::from_secs(20), || {
        mnt.log().contains("control channel broke").then_some(())
    });
}
