//! Issue 14: running handoffd as a service: its configuration file and environment, and the
//! CLI's scripting contract.

mod common;
use std::path::Path;
use std::process::Command;

use common::*;

/// `handoffd --config FILE EXTRA... --print-config` with `env`, which must succeed: what it
/// printed.
fn print_config(file: &Path, extra: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(&*HANDOFFD)
        .arg("--config")
        .arg(file)
        .args(extra)
        .arg("--print-config")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_server_started_from_a_config_file_and_the_environment_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let alice = client(tmp.path(), "alice");
    // Everything in the file but the listen address (HANDOFFD_LISTEN); the environment's
    // grace period wins over the file's.
    let mut server = TestServer::start_configured(
        &[&alice],
        "durable-timeout = 7\ngrace = 30\nadmins = [\"alice\"]\nlog-format = \"json\"",
        &[("HANDOFFD_GRACE", "0")],
    );
    let cli = server.cli(&alice);
    let data = random_bytes(1 << 20, 14);
    cli.run_with(&["put", "configured.bin"], Some(&data))
        .expect(0);
    assert_eq!(
        sha256(&cli.run(&["get", "configured.bin"]).expect(0).stdout),
        sha256(&data)
    );

    // Logs are one JSON object per line, for log shippers.
    let log = server.log();
    let ready = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"))
        })
        .find(|v| v["fields"]["message"] == "handoffd ready")
        .unwrap_or_else(|| panic!("no ready event in\n{log}"));
    assert_eq!(ready["level"], "INFO");

    // --print-config says what the running server took, and from where.
    let printed = print_config(&server.config_file(), &[], &[("HANDOFFD_GRACE", "0")]);
    let file = server.config_file().display().to_string();
    for line in [
        format!("durable-timeout = 7  # {file}"),
        "grace = 0  # HANDOFFD_GRACE".to_owned(),
        "admins = [\"alice\"]".to_owned(),
        "# max-connections = 8192  (default)".to_owned(),
    ] {
        assert!(printed.contains(&line), "no {line:?} in\n{printed}");
    }

    // What --print-config printed is a configuration file that gives the same settings.
    let again = tmp.path().join("printed.toml");
    std::fs::write(&again, printed.as_bytes()).unwrap();
    assert!(print_config(&again, &[], &[]).contains("grace = 0  # "));
    // A flag that needs a setting the file gives (--node needs --store) is taken.
    let group = tmp.path().join("group.toml");
    std::fs::write(&group, "store = \"etcd://127.0.0.1:1\"\n").unwrap();
    assert!(print_config(&group, &["--node", "n1"], &[]).contains("node = \"n1\"  # flag"));

    // The packaged example configuration is a valid file.
    let example = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/dist/handoffd.toml"));
    assert!(print_config(example, &[], &[]).contains("root = \"/srv/handoff\""));

    // A misspelt key stops the server with exit 2, naming the key and the file.
    let mut text = std::fs::read_to_string(server.config_file()).unwrap();
    text.push_str("durable-timout = 3\n");
    std::fs::write(server.config_file(), text).unwrap();
    let refused = server.start_refused(&[]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains(&file)
            && refused.stderr.contains("unknown key `durable-timout`")
            && refused.stderr.contains("did you mean `durable-timeout`?"),
        "{}",
        refused.stderr
    );
}

#[test]
fn the_scripting_contract_holds_for_a_down_server_a_closed_pipe_and_xdg_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let alice = client(tmp.path(), "alice");
    let server = TestServer::start(&[&alice], &[]);
    let cli = server.cli(&alice);

    // One listed server that refuses connections: exit 6 (unavailable: retry), as for a
    // group of servers none of which answers.
    let down = Cli {
        // Port 1 (tcpmux) listens nowhere here; a port freed by the test could be taken by
        // a server another test starts meanwhile.
        server: "127.0.0.1:1".into(),
        identity: cli.identity.clone(),
        keys: cli.keys.clone(),
    };
    let out = down.run(&["ls"]).expect(6);
    assert!(out.stderr.contains("did not answer"), "{}", out.stderr);

    // A reader that stops early (`| head -c 10`) ends the command quietly, exit 0, and the
    // open `get` made is closed on the way out: an exclusive open is granted at once.
    let data = random_bytes(64 << 20, 3);
    cli.run_with(&["put", "big.bin"], Some(&data)).expect(0);
    let key = cli.open(&["big.bin"]);
    for args in [vec!["read", key.as_str()], vec!["get", "big.bin"]] {
        let mut child = cli.spawn(&args);
        let mut head = [0u8; 10];
        use std::io::Read;
        child.stdout.take().unwrap().read_exact(&mut head).unwrap();
        assert_eq!(head, data[..10]);
        // The pipe's read end is closed here (dropped above).
        let out = finish(child);
        assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
        assert!(out.stderr.is_empty(), "{args:?}: {}", out.stderr);
    }
    cli.run(&["close", &key]).expect(0);
    let ex = cli.open(&["big.bin", "--exclusive"]);
    cli.run(&["close", &ex]).expect(0);

    // Completion scripts for the shells, with no server or identity needed.
    for (shell, marker) in [
        ("bash", "_handoff()"),
        ("zsh", "#compdef handoff"),
        ("fish", "complete -c handoff"),
    ] {
        let out = Command::new(HANDOFF)
            .args(["completions", shell])
            .env_remove("HANDOFF_IDENTITY")
            .output()
            .unwrap();
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && script.contains(marker),
            "{shell}: {script:.200}"
        );
        assert!(
            script.contains("admin") && script.contains("mount"),
            "{shell}"
        );
    }

    // With no --identity and no $HANDOFF_KEYS: the identity is under $XDG_CONFIG_HOME and
    // the keys go under $XDG_STATE_HOME (not $HOME).
    let config = tmp.path().join("xdg-config");
    let state = tmp.path().join("xdg-state");
    std::fs::create_dir_all(config.join("handoff")).unwrap();
    std::fs::copy(&alice.path, config.join("handoff/identity")).unwrap();
    let out = Command::new(HANDOFF)
        .args(["--server", &server.addr, "open", "big.bin"])
        .env_remove("HANDOFF_IDENTITY")
        .env_remove("HANDOFF_KEYS")
        .env("HOME", tmp.path().join("nohome"))
        .env("XDG_CONFIG_HOME", &config)
        .env("XDG_STATE_HOME", &state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let kept = std::fs::read_to_string(state.join("handoff/keys")).unwrap();
    assert!(kept.contains(&key), "{kept}");
    assert!(!tmp.path().join("nohome").exists());
}

/// Sends SIGHUP to `pid`.
fn hangup(pid: u32) {
    let sent = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

#[test]
fn sighup_rereads_the_clients_file_adding_and_removing_clients_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (alice, bob, carol) = (
        client(tmp.path(), "alice"),
        client(tmp.path(), "bob"),
        client(tmp.path(), "carol"),
    );
    let server = TestServer::start(&[&alice, &bob], &["--durable-timeout", "60"]);
    let (a, b, c) = (server.cli(&alice), server.cli(&bob), server.cli(&carol));
    let data = random_bytes(64 << 20, 5);
    a.run_with(&["put", "big.bin"], Some(&data)).expect(0);
    c.run(&["ls"]).expect(5);
    // Bob holds the file exclusively, and is in the middle of reading it: his `read` waits
    // on a full pipe with its control and data connections open.
    let held = b.open(&["big.bin", "--exclusive"]);
    let mut reading = b.spawn(&["read", &held]);
    let mut head = [0u8; 4096];
    use std::io::Read;
    let mut pipe = reading.stdout.take().unwrap();
    pipe.read_exact(&mut head).unwrap();

    // The file now lists alice and carol: bob is removed, carol added.
    let lines = [&alice, &carol].map(|c| c.identity.to_line()).join("\n");
    write_private(&server.clients_file(), &(lines + "\n"));
    hangup(server.pid());
    eventually(std::time::Duration::from_secs(10), || {
        server
            .log()
            .contains("SIGHUP: reloaded the clients file")
            .then_some(())
    });
    let log = server.log();
    assert!(
        log.contains("added=[\"carol\"]")
            && log.contains("removed=[\"bob\"]")
            && log
                .split("connections_closed=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next()?.parse::<u32>().ok())
                .is_some_and(|n| n >= 1),
        "{log}"
    );

    // Carol is served at once (she opens a file); bob is not, and his transfer under way is
    // cut off.
    std::fs::write(server.root().join("carol.txt"), b"hi").unwrap();
    let carols = c.open(&["carol.txt"]);
    c.run(&["close", &carols]).expect(0);
    b.run(&["ls"]).expect(5);
    let mut rest = Vec::new();
    let _ = pipe.read_to_end(&mut rest);
    let out = finish(reading);
    assert_eq!(
        out.code, 5,
        "bob's read went on after he was removed: {}",
        out.stderr
    );
    assert!(4096 + rest.len() < data.len());
    // His open stays, durable: the file is still his alone until it expires.
    let denied = a.run(&["open", "big.bin"]).expect(3);
    assert!(denied.stderr.contains("bob"), "{}", denied.stderr);
    drop(held);

    // A clients file that cannot be used (open to others) changes nothing: carol, whom it
    // no longer lists, is still served.
    write_private(&server.clients_file(), &(alice.identity.to_line() + "\n"));
    std::fs::set_permissions(
        server.clients_file(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    hangup(server.pid());
    eventually(std::time::Duration::from_secs(10), || {
        server
            .log()
            .contains("the clients stay as they were")
            .then_some(())
    });
    c.run(&["ls"]).expect(0);
}

#[test]
fn an_administrator_lists_the_opens_and_evicts_a_holder_so_another_client_is_granted() {
    let tmp = tempfile::tempdir().unwrap();
    let (alice, bob, root) = (
        client(tmp.path(), "alice"),
        client(tmp.path(), "bob"),
        client(tmp.path(), "root"),
    );
    let server = TestServer::start(
        &[&alice, &bob, &root],
        &["--admins", "root", "--durable-timeout", "300"],
    );
    let (a, b, admin) = (server.cli(&alice), server.cli(&bob), server.cli(&root));
    std::fs::create_dir_all(server.root().join("job")).unwrap();
    std::fs::write(server.root().join("job/out.h5"), vec![7u8; 8192]).unwrap();
    // Alice's job holds the file exclusively with a lock, then "hangs" (the CLI has exited:
    // the open is durable for 300 s).
    let key = a.open(&[
        "job/out.h5",
        "--mode",
        "rw",
        "--exclusive",
        "--lock",
        "0:4096",
    ]);
    b.run(&["open", "job/out.h5"]).expect(3);

    let listed = admin.run(&["admin", "opens", "--json"]).expect(0).json();
    let opens = listed["opens"].as_array().unwrap();
    assert_eq!(opens.len(), 1, "{listed}");
    let o = &opens[0];
    assert_eq!(o["client"], "alice");
    assert_eq!(o["path"], "job/out.h5");
    assert_eq!(o["mode"], "rw");
    assert_eq!(o["share"], "none");
    assert_eq!(o["locks"], serde_json::json!(["0:4096"]));
    assert_eq!(o["state"], "durable");
    assert!(o["deadline_ms"].as_u64().unwrap() > 0);
    assert!(!listed.to_string().contains(&key), "a key was shown");
    let table = admin.run(&["admin", "opens"]).expect(0).text();
    assert!(
        table.contains("durable") && table.contains("alice") && table.contains("job/out.h5"),
        "{table}"
    );

    // Only administrators: bob may neither list nor close.
    let refused = b.run(&["admin", "opens"]).expect(3);
    assert!(
        refused.stderr.contains("not an administrator"),
        "{}",
        refused.stderr
    );
    b.run(&["admin", "close", "--client", "alice"]).expect(3);

    let closed = admin
        .run(&["admin", "close", "--client", "alice", "--json"])
        .expect(0)
        .json();
    assert_eq!(closed["closed"], 1);
    // Bob is granted at once; alice's next use says what happened, exit 4.
    let bobs = b.open(&["job/out.h5", "--mode", "rw", "--exclusive"]);
    let told = a.run(&["read", &key, "--len", "10"]).expect(4);
    assert!(
        told.stderr.contains("an administrator closed this open"),
        "{}",
        told.stderr
    );
    // Closing by path and by key; nothing left to close is exit 4.
    admin.run(&["admin", "close", &bobs]).expect(0);
    admin
        .run(&["admin", "close", "--path", "job/out.h5"])
        .expect(4);
    admin.run(&["admin", "close"]).expect(2);
}

/// Runs `promtool check metrics` (Debian's `prometheus` package) on `text`.
fn promtool_check(text: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; hw-setup/install-deps.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_pass_promtool_and_move_by_what_the_clients_did() {
    let tmp = tempfile::tempdir().unwrap();
    let alice = client(tmp.path(), "alice");
    let server = TestServer::start(&[&alice], &["--metrics-listen", "127.0.0.1:0"]);
    let addr = server.metrics_addr.clone().expect("a metrics address");
    let cli = server.cli(&alice);
    let data = random_bytes(64 << 20, 9);
    cli.run_with(&["put", "m.bin"], Some(&data)).expect(0);

    let before = scrape(&addr);
    promtool_check(&before);
    let got = cli.run(&["get", "m.bin", "--channel", "tcp"]).expect(0);
    assert_eq!(sha256(&got.stdout), sha256(&data));
    let got = cli.run(&["get", "m.bin", "--channel", "tls"]).expect(0);
    assert_eq!(sha256(&got.stdout), sha256(&data));
    let key = cli.open(&["m.bin", "--mode", "rw"]);
    cli.run(&["lock", &key, "0:4096"]).expect(0);
    let held = scrape(&addr);
    cli.run(&["close", &key]).expect(0);
    let after = scrape(&addr);
    promtool_check(&after);

    let moved = |name: &str| series(&after, name) - series(&before, name);
    let mib64 = (64u64 << 20) as f64;
    let tcp_read = r#"handoff_data_bytes_total{transport="tcp",direction="read"}"#;
    let tls_read = r#"handoff_data_bytes_total{transport="tls",direction="read"}"#;
    assert_eq!(moved(tcp_read), mib64, "{after}");
    assert_eq!(moved(tls_read), mib64, "{after}");
    assert_eq!(
        moved(r#"handoff_client_data_bytes_total{client="alice",direction="read"}"#),
        2.0 * mib64
    );
    assert!(moved(r#"handoff_data_operations_total{transport="tcp",op="read"}"#) >= 1.0);
    assert!(moved(r#"handoff_data_operations_total{transport="tls",op="read"}"#) >= 1.0);
    // Opens: two gets and the open; one lock; the gets' closes and the close.
    assert_eq!(
        moved(r#"handoff_control_requests_total{request="open",result="ok"}"#),
        3.0
    );
    assert_eq!(
        moved(r#"handoff_control_requests_total{request="lock",result="ok"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"handoff_control_requests_total{request="close",result="ok"}"#),
        3.0
    );
    assert!(moved(r#"handoff_request_duration_seconds_count{op="open"}"#) >= 3.0);
    assert!(moved(r#"handoff_request_duration_seconds_count{op="resume"}"#) >= 2.0);
    assert!(series(&after, "handoff_store_commit_duration_seconds_count") > 0.0);
    // While the key was held (its CLI gone): one durable open with its lock; none after.
    assert_eq!(series(&held, r#"handoff_opens{state="durable"}"#), 1.0);
    assert_eq!(series(&held, "handoff_locks"), 1.0);
    assert_eq!(series(&after, r#"handoff_opens{state="durable"}"#), 0.0);
    assert_eq!(series(&after, "handoff_locks"), 0.0);
    assert_eq!(series(&after, "handoff_active"), 1.0);
    // A client the server does not know is counted as a refusal.
    let stranger = client(tmp.path(), "mallory");
    server.cli(&stranger).run(&["ls"]).expect(5);
    assert_eq!(
        series(
            &scrape(&addr),
            r#"handoff_connection_refusals_total{reason="auth_failed"}"#
        ),
        1.0
    );
    // Every series the packaged Grafana dashboard queries is one the server exports.
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dist/grafana-dashboard.json"
    ))
    .unwrap();
    let queried: std::collections::BTreeSet<&str> = dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("handoff_"))
        .collect();
    assert!(queried.len() > 10, "{queried:?}");
    for name in queried {
        assert!(
            after.lines().any(|l| l.starts_with(name)),
            "the dashboard queries {name}, which /metrics does not have"
        );
    }
    // `handoff stats` counts the stream bytes too (tcp_bytes was always 0).
    let stats = cli.run(&["stats"]).expect(0).json();
    assert!(
        stats["tcp_bytes"].as_u64().unwrap() >= 3 * (64 << 20),
        "{stats}"
    );
}

#[test]
fn the_systemd_unit_verifies_and_readiness_reaches_systemd_once_serving() {
    let tmp = tempfile::tempdir().unwrap();
    // The packaged unit, with ExecStart pointing at the binary under test (verify checks
    // that it exists). Man pages come with the package, so they are not checked here.
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dist/handoffd.service"
    ))
    .unwrap()
    .replace("/usr/bin/handoffd", &HANDOFFD);
    let path = tmp.path().join("handoffd.service");
    std::fs::write(&path, unit).unwrap();
    let verified = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd; hw-setup/install-deps.sh installs it)");
    let complaints = String::from_utf8_lossy(&verified.stderr);
    assert!(
        verified.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify: {complaints}"
    );

    // Type=notify: READY=1 arrives on $NOTIFY_SOCKET once the server serves.
    let socket_path = tmp.path().join("notify");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let alice = client(tmp.path(), "alice");
    let server = TestServer::start_with_env(
        &[&alice],
        &[],
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())],
    );
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("no READY=1 from handoffd");
    let said = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(said.starts_with("READY=1\nSTATUS=serving"), "{said}");
    assert!(said.contains(&server.addr), "{said}");
    server.cli(&alice).run(&["ls"]).expect(0);
}

#[test]
fn rdma_under_too_low_a_locked_memory_limit_is_refused_at_start_saying_what_to_set() {
    let tmp = tempfile::tempdir().unwrap();
    let alice = client(tmp.path(), "alice");
    // Without CAP_IPC_LOCK (dropped from the bounding set, as for a non-root service) and
    // with 64 KiB of lockable memory: serving without RDMA is fine, RDMA is refused.
    let mut server = TestServer::start_wrapped(
        &[&alice],
        &[],
        &[
            "setpriv",
            "--bounding-set",
            "-ipc_lock",
            "prlimit",
            "--memlock=65536",
            "--",
        ],
    );
    server.cli(&alice).run(&["ls"]).expect(0);
    let refused = server.start_refused(&["--rdma-listen", "127.0.0.1:9"]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("RLIMIT_MEMLOCK is 64 KiB")
            && refused.stderr.contains("LimitMEMLOCK=infinity"),
        "{}",
        refused.stderr
    );
}
