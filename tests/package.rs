//! Issue 14: the Debian package. Built from the binaries under test with
//! `dist/build-deb.sh`, unpacked into a scratch root (`dpkg -x`), and what it installs is
//! used: the binaries run, the man pages render, the unit verifies (man pages included),
//! the example configuration loads and the completions are there.

mod common;
use std::path::Path;
use std::process::Command;

use common::*;

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_package_installs_binaries_man_pages_a_unit_that_verifies_and_completions() {
    let tmp = tempfile::tempdir().unwrap();
    let bin_dir = Path::new(HANDOFF).parent().unwrap();
    assert!(Path::new(&*HANDOFFD).exists());
    let deb = run_ok(
        Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/dist/build-deb.sh"))
            .arg("--bin-dir")
            .arg(bin_dir)
            .arg("--out")
            .arg(tmp.path())
            .arg("--no-compress"),
    );
    let deb = deb.trim();
    let info = run_ok(Command::new("dpkg-deb").args(["--info", deb]));
    assert!(
        info.contains("Package: handoff") && info.contains("Depends: "),
        "{info}"
    );
    assert!(
        run_ok(Command::new("dpkg-deb").args(["--info", deb, "conffiles"]))
            .contains("/etc/handoff/handoffd.toml")
    );

    let root = tmp.path().join("root");
    run_ok(Command::new("dpkg").arg("-x").arg(deb).arg(&root));
    let installed = |p: &str| root.join(p.trim_start_matches('/'));

    let version = run_ok(Command::new(installed("/usr/bin/handoffd")).arg("--version"));
    assert_eq!(
        version.trim(),
        format!("handoffd {}", env!("CARGO_PKG_VERSION"))
    );
    let version = run_ok(Command::new(installed("/usr/bin/handoff")).arg("--version"));
    assert!(version.starts_with("handoff "), "{version}");

    for (page, must) in [
        ("/usr/share/man/man8/handoffd.8.gz", "--durable-timeout"),
        ("/usr/share/man/man1/handoff.1.gz", "keygen"),
    ] {
        let text = run_ok(
            Command::new("man")
                .arg("-l")
                .arg(installed(page))
                .env("MANPAGER", "cat")
                .env("MANWIDTH", "100"),
        );
        assert!(text.contains(must), "{page}:\n{text}");
    }

    // The unit as installed, verified against the installed binary and man pages (verify
    // runs ExecStart's path and `man` for Documentation=).
    let unit = std::fs::read_to_string(installed("/lib/systemd/system/handoffd.service"))
        .unwrap()
        .replace(
            "/usr/bin/handoffd",
            installed("/usr/bin/handoffd").to_str().unwrap(),
        );
    let unit_path = tmp.path().join("handoffd.service");
    std::fs::write(&unit_path, unit).unwrap();
    let verified = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit_path)
        .env("MANPATH", installed("/usr/share/man"))
        .output()
        .unwrap();
    let complaints = String::from_utf8_lossy(&verified.stderr);
    assert!(
        verified.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify: {complaints}"
    );

    // The example configuration the package installs loads.
    let printed = run_ok(
        Command::new(installed("/usr/bin/handoffd"))
            .arg("--config")
            .arg(installed("/etc/handoff/handoffd.toml"))
            .arg("--print-config"),
    );
    assert!(
        printed.contains("clients = \"/etc/handoff/clients\""),
        "{printed}"
    );

    for (file, marker) in [
        (
            "/usr/share/bash-completion/completions/handoff",
            "_handoff()",
        ),
        (
            "/usr/share/zsh/vendor-completions/_handoff",
            "#compdef handoff",
        ),
        (
            "/usr/share/fish/vendor_completions.d/handoff.fish",
            "complete -c handoff",
        ),
        (
            "/usr/share/doc/handoff/grafana-dashboard.json",
            "handoff_data_bytes_total",
        ),
    ] {
        let text = std::fs::read_to_string(installed(file)).unwrap();
        assert!(text.contains(marker), "{file}");
    }
}
