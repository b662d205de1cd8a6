//! The kernel's own NFS server exporting a tmpfs, mounted back over RDMA (NFSv4.1, rpcrdma):
//! the peer of the mount suite. Set up as `../shared/RXE-GUEST.md` measured it: nfsd,
//! rpc_pipefs, rpcbind, an export with `fsid=0`, mountd, `rpc.nfsd`, then the RDMA listener
//! on port 20049 and a client mount to the machine's own RDMA address.
//!
//! This reconfigures the machine it runs on (kernel modules, /etc/exports, /etc/hosts, the
//! resolver, nfsd's lease time), so [`KnfsdMount::start`] refuses to run anywhere but the
//! throw-away rxe guest. Dropping it unmounts, stops nfsd and its daemons, and unmounts the
//! export.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::process::{mounted, run, wait_listening, Proc};

/// nfsd's RDMA port (the IANA one for NFS/RDMA).
pub const RDMA_PORT: u16 = 20049;
/// Bytes per NFS READ/WRITE: the same 1 MiB the handoff mount asks of FUSE.
const IO_SIZE: u32 = 1 << 20;

/// A running knfsd and the NFS/RDMA client mount of its export.
pub struct KnfsdMount {
    /// Where the export is mounted back (fio's files go here).
    pub dir: PathBuf,
    export: PathBuf,
    /// rpc.mountd and rpcbind, in the foreground so that dropping them stops them.
    daemons: Vec<Proc>,
    nfsd_started: bool,
}

fn write(path: &str, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {text:?} to {path}"))
}

/// Whether this is the rxe guest of hw-setup/rxe-guest.sh (which names itself so).
pub fn in_rxe_guest() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/hostname").is_ok_and(|h| h.trim() == "rxe-guest")
}

impl KnfsdMount {
    /// Exports a fresh tmpfs under `work` and mounts it back over RDMA to `ip` (this
    /// machine's address on its RDMA device).
    pub fn start(work: &Path, ip: &str) -> Result<KnfsdMount> {
        if !in_rxe_guest() {
            bail!(
                "the NFS/RDMA peer reconfigures this machine's NFS server and resolver; it runs \
                 only inside the rxe guest (bench/run.sh boots one)"
            );
        }
        let export = work.join("nfs-export");
        let dir = work.join("nfs-mnt");
        for d in [&export, &dir] {
            std::fs::create_dir_all(d)?;
        }
        let mut me = KnfsdMount {
            dir,
            export,
            daemons: Vec::new(),
            nfsd_started: false,
        };
        me.start_server(ip)?;
        me.mount(ip)?;
        Ok(me)
    }

    fn start_server(&mut self, ip: &str) -> Result<()> {
        run("modprobe", &["-a", "nfsd", "rpcrdma", "nfsv4"])
            .context("hw-setup/rxe-guest.sh ships these modules in the guest")?;
        if !mounted(Path::new("/proc/fs/nfsd")) {
            run("mount", &["-t", "nfsd", "nfsd", "/proc/fs/nfsd"])?;
        }
        let pipefs = Path::new("/var/lib/nfs/rpc_pipefs");
        std::fs::create_dir_all(pipefs)?;
        std::fs::create_dir_all("/var/lib/nfs/v4recovery")?;
        if !mounted(pipefs) {
            run(
                "mount",
                &["-t", "rpc_pipefs", "sunrpc", "/var/lib/nfs/rpc_pipefs"],
            )?;
        }
        // With no resolver, mountd and mount.nfs stall on name lookups.
        write("/etc/resolv.conf", "nameserver 127.0.0.1\n")?;
        let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        let line = format!("{ip} rxe-guest");
        if !hosts.lines().any(|l| l.trim() == line) {
            write("/etc/hosts", &format!("{hosts}\n{line}\n"))?;
        }
        // Before nfsd starts: 1 MiB READs and WRITEs, and a short grace period.
        write("/proc/fs/nfsd/max_block_size", &IO_SIZE.to_string())?;
        write("/proc/fs/nfsd/nfsv4leasetime", "10")?;
        write("/proc/fs/nfsd/nfsv4gracetime", "10")?;
        // A tmpfs, like the handoff server's root in the guest (/tmp); overlay is not
        // exportable.
        let export = self.export.to_string_lossy().into_owned();
        if !mounted(&self.export) {
            run(
                "mount",
                &["-t", "tmpfs", "-o", "mode=0777", "tmpfs", &export],
            )?;
        }
        write(
            "/etc/exports",
            &format!("{export} {ip}/24(rw,fsid=0,no_root_squash,insecure,no_subtree_check)\n"),
        )?;
        let rpcbind = Proc::spawn(
            Command::new("rpcbind")
                .args(["-f", "-w"])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .context("starting rpcbind")?;
        self.daemons.push(rpcbind);
        wait_listening(111, Duration::from_secs(20), "rpcbind")?;
        run("exportfs", &["-ra"])?;
        let mountd = Proc::spawn(
            Command::new("rpc.mountd")
                .arg("-F")
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .context("starting rpc.mountd")?;
        self.daemons.push(mountd);
        run("rpc.nfsd", &["8"])?;
        self.nfsd_started = true;
        write("/proc/fs/nfsd/portlist", &format!("rdma {RDMA_PORT}"))
    }

    fn mount(&self, ip: &str) -> Result<()> {
        let opts = format!("vers=4.1,proto=rdma,port={RDMA_PORT},rsize={IO_SIZE},wsize={IO_SIZE}");
        let dir = self.dir.to_string_lossy();
        run(
            "mount",
            &["-t", "nfs", "-o", &opts, &format!("{ip}:/"), &dir],
        )?;
        // The first OPEN waits out the server's grace period: wait here, untimed.
        let started = Instant::now();
        std::fs::write(self.dir.join(".ready"), b"ok")
            .context("creating a file on the NFS/RDMA mount")?;
        eprintln!(
            "mount: NFSv4.1 over RDMA mounted at {dir} (grace period {:.0} s)",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

impl Drop for KnfsdMount {
    fn drop(&mut self) {
        let quiet = |program: &str, args: &[&str]| {
            let _ = Command::new(program)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        if mounted(&self.dir) {
            quiet("umount", &["-f", "-l", &self.dir.to_string_lossy()]);
        }
        if self.nfsd_started {
            quiet("rpc.nfsd", &["0"]);
            quiet("exportfs", &["-ua"]);
        }
        // The daemons (Proc) are killed when the vector drops, after this.
        if mounted(&self.export) {
            quiet("umount", &["-l", &self.export.to_string_lossy()]);
        }
    }
}
