//! `handoff mount`: the server's root as a local directory through FUSE, so unmodified
//! programs (cp, rsync, dd, fio, Python's open()) use handoff; and `handoff umount`.
//!
//! The mount runs as the user who starts it and shows every file as that user's; files it
//! creates belong on the server to the user handoffd runs as (the server's policy), with the
//! server's umask applied to mode 0666 (directories 0777).

mod errno;
mod fs;
mod inodes;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use fuser::MountOption;
use handoff::exit::UsageError;
use handoff::{Channel, Client, Identity, ShareMode};

/// What `handoff mount` was asked.
pub struct MountArgs {
    pub server: String,
    pub identity: Identity,
    pub mountpoint: PathBuf,
    pub channel: Option<Channel>,
    pub share: ShareMode,
    pub cache: bool,
    pub foreground: bool,
    pub log: Option<PathBuf>,
}

/// How long `handoff mount` waits for its background process to have mounted.
const MOUNT_WAIT: Duration = Duration::from_secs(30);

/// Mounts and serves until unmounted (in the foreground), or starts a background process
/// that does and returns once the mount is there. Returns the exit code.
pub fn run(args: MountArgs) -> anyhow::Result<i32> {
    if !args.mountpoint.is_dir() {
        return Err(UsageError(format!(
            "mount point {} is not a directory",
            args.mountpoint.display()
        ))
        .into());
    }
    if args.foreground {
        serve(args)
    } else {
        start_in_background(&args)
    }
}

fn serve(args: MountArgs) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let client = rt
        .block_on(Client::connect(&args.server, &args.identity))
        .with_context(|| format!("server {}", args.server))?;
    let owner = (
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
    );
    let fs = fs::HandoffFs::new(
        rt.handle().clone(),
        client,
        args.channel,
        args.share,
        args.cache,
        owner,
    );
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("handoff:{}", args.server)),
        MountOption::Subtype("handoff".into()),
        MountOption::CUSTOM(format!("max_read={}", fs::MAX_IO)),
    ];
    // Requests of several programs (or one program's queue) are served at once.
    config.n_threads = Some(8);
    let mut session = fuser::Session::new(fs, &args.mountpoint, &config)
        .with_context(|| format!("mount {}", args.mountpoint.display()))?;
    let mut unmounter = session.unmount_callable();
    let mountpoint = args.mountpoint.clone();
    rt.spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        tracing::info!("unmounting {} on a signal", mountpoint.display());
        if let Err(e) = unmounter.unmount() {
            tracing::error!("unmounting {}: {e}", mountpoint.display());
        }
    });
    tracing::info!("mounted {} at {}", args.server, args.mountpoint.display());
    session.run().context("serving the mount")?;
    Ok(handoff::exit::OK)
}

/// Starts this command again with `--foreground` as a process of its own (its log in a
/// file), and waits until the mount is there or the process has given up.
fn start_in_background(args: &MountArgs) -> anyhow::Result<i32> {
    use std::os::unix::process::CommandExt;
    let log = match &args.log {
        Some(l) => l.clone(),
        None => crate::xdg_dir("XDG_STATE_HOME", ".local/state")
            .context("no $XDG_STATE_HOME or $HOME for the mount's log (give --log FILE)")?
            .join("mount.log"),
    };
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    }
    let start = std::fs::metadata(&log).map_or(0, |m| m.len());
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("mount log {}", log.display()))?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .arg("--foreground")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(out)
        // Its own process group: the terminal's ^C does not reach it.
        .process_group(0)
        .spawn()
        .context("starting the mount's process")?;
    let started = Instant::now();
    loop {
        if is_mounted(&args.mountpoint) {
            return Ok(handoff::exit::OK);
        }
        if let Some(status) = child.try_wait()? {
            let mut text = String::new();
            let mut f = std::fs::File::open(&log)?;
            std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(start))?;
            f.read_to_string(&mut text)?;
            eprint!("{text}");
            return Ok(status.code().unwrap_or(handoff::exit::OTHER));
        }
        if started.elapsed() > MOUNT_WAIT {
            anyhow::bail!(
                "{} was not mounted within {} s; see {}",
                args.mountpoint.display(),
                MOUNT_WAIT.as_secs(),
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether a handoff file system is mounted at `path`.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(want) = path.canonicalize() else {
        return false;
    };
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    table.lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let fstype = fields
            .iter()
            .position(|f| *f == "-")
            .and_then(|i| fields.get(i + 1));
        fields.get(4).map(|m| m.replace("\\040", " ")) == Some(want.display().to_string())
            && fstype.is_some_and(|t| t.starts_with("fuse"))
    })
}

/// `handoff umount`: unmounts with fusermount3 (as any user), or umount(8) where there is
/// none (as root).
pub fn unmount(mountpoint: &Path) -> anyhow::Result<i32> {
    if !is_mounted(mountpoint) {
        return Err(UsageError(format!(
            "{} is not a mounted FUSE file system",
            mountpoint.display()
        ))
        .into());
    }
    let tried = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(mountpoint)
        .status();
    let status = match tried {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::process::Command::new("umount")
            .arg(mountpoint)
            .status()
            .context("running umount")?,
        Err(e) => return Err(e).context("running fusermount3"),
    };
    Ok(if status.success() {
        handoff::exit::OK
    } else {
        handoff::exit::OTHER
    })
}
