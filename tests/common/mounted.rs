//! A `handoff mount` for a test, unmounted when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{Cli, HANDOFF};

/// A mount that is unmounted (lazily, so a test that failed half-way leaves nothing busy)
/// when dropped.
pub struct Mounted {
    pub dir: PathBuf,
    pub log: PathBuf,
}

impl Mounted {
    pub fn new(cli: &Cli, dir: &Path, extra: &[&str]) -> Self {
        assert!(
            Path::new("/dev/fuse").exists(),
            "these tests need FUSE (/dev/fuse)"
        );
        std::fs::create_dir_all(dir).unwrap();
        let log = dir.with_extension("log");
        let mut args = vec![
            "mount",
            dir.to_str().unwrap(),
            "--log",
            log.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        cli.run_within(Duration::from_secs(60), &args).expect(0);
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            mounts.contains(dir.to_str().unwrap()),
            "{} is not in the mount table",
            dir.display()
        );
        Mounted {
            dir: dir.to_path_buf(),
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let unmounted = Command::new(HANDOFF)
            .arg("umount")
            .arg(&self.dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.dir)
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}
