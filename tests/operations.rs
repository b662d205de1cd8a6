//! Issue 14: running handoffd as a service: its configuration file and environment, and the
//! CLI's scripting contract.

mod common;
use std::process::Command;

use common::*;

#[test]
fn a_server_started_from_a_config_file_and_the_environment_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let alice = client(tmp.path(), "alice");
    // Everything in the file but the listen address (HANDOFFD_LISTEN); the environment's
    // grace period wins over the file's.
    let mut server = TestServer::start_configured(
        &[&alice],
        "durable-timeout = 7\ngrace = 30\nadmins = [\"alice\"]",
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

    // --print-config says what the running server took, and from where.
    let printed = Command::new(&*HANDOFFD)
        .arg("--config")
        .arg(server.config_file())
        .arg("--print-config")
        .env("HANDOFFD_GRACE", "0")
        .output()
        .unwrap();
    assert!(printed.status.success());
    let printed = String::from_utf8_lossy(&printed.stdout);
    let file = server.config_file().display().to_string();
    for line in [
        format!("durable-timeout = 7  # {file}"),
        "grace = 0  # HANDOFFD_GRACE".to_owned(),
        "admins = [\"alice\"]".to_owned(),
        "max-connections = 8192  # default".to_owned(),
    ] {
        assert!(printed.contains(&line), "no {line:?} in\n{printed}");
    }

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
