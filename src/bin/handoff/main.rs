//! `handoff`: the command-line client.

/// `println!` that ends the command quietly when stdout's reader went away (see [`stdout`]).
macro_rules! say {
    ($($arg:tt)*) => { $crate::stdout::line(format_args!($($arg)*)) };
}

mod admin;
mod mount;
mod namespace;
mod stdout;

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use handoff::exit::{self, UsageError};
use handoff::{ByteRange, Channel, Client, DataHandle, Identity, Mode, OpenOptions, ShareMode};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tracing_subscriber::EnvFilter;

/// Durable, duplicable file handles.
///
/// `open` prints a resume key and exits; the file stays open on the server for its durable
/// timeout. Any later command (even after a reboot, or from another client the key was passed
/// to) presents the key on a data channel for a duplicate handle with the same rights.
///
///   handoff keygen alice > ~/.config/handoff/identity
///   KEY=$(handoff open data/big.bin --mode rw --lock 0:4096)
///   handoff read "$KEY" --offset 0 --len 1048576 > part
///   handoff resume "$KEY" --json
///   handoff close "$KEY"
///
/// Exit codes: 0 ok, 2 usage, 3 denied (sharing/lock conflict, key not ours),
/// 4 no such file / key unknown or expired, 5 authentication failed, 6 unavailable (no
/// listed server answered, or its cluster store is unreachable: retry), 1 other.
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
struct Args {
    /// Server control address, or several comma-separated (an active/passive group: the
    /// first that answers is used). A drained server's referral is followed by itself.
    #[arg(
        long,
        env = "HANDOFF_SERVER",
        default_value = "127.0.0.1:4455",
        global = true
    )]
    server: String,
    /// This client's identity file (a `handoff keygen` line). Default:
    /// $XDG_CONFIG_HOME/handoff/identity, or ~/.config/handoff/identity.
    #[arg(long, env = "HANDOFF_IDENTITY", global = true)]
    identity: Option<PathBuf>,
    /// Print results as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug, Clone)]
struct ChannelArg {
    /// Data channel: rdma, tcp or tls (encrypted). Default: rdma when the server offers it and
    /// this host has an RDMA device, else tcp.
    #[arg(long, value_parser = ["rdma", "tcp", "tls"])]
    channel: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Make a new identity: prints one line "NAME:<64 hex chars>" (give it to the server's
    /// --clients file, keep it as this client's --identity).
    Keygen {
        name: String,
        /// Write the identity to FILE (created with mode 0600; an existing file is not
        /// overwritten) instead of printing it.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Open PATH and print its resume key; the open stays held (durable) after exit.
    Open {
        path: String,
        /// r (read-only) or rw (read/write).
        #[arg(long, default_value = "r")]
        mode: Mode,
        /// Share with nobody: every other open of the file is denied.
        #[arg(long, conflicts_with = "share")]
        exclusive: bool,
        /// What others may do meanwhile: letters of r (read), w (write) and d (delete:
        /// remove or rename the file), or none. Default rw.
        #[arg(long)]
        share: Option<ShareMode>,
        /// Lock bytes OFFSET:LEN against every other open (repeatable).
        #[arg(long, value_name = "OFFSET:LEN")]
        lock: Vec<ByteRange>,
        /// Create the file if it is missing (else exit 4).
        #[arg(long)]
        create: bool,
    },
    /// Read bytes through a duplicate handle to stdout (with --json, a report on stderr:
    /// channel, bytes per RDMA QP, direct mode).
    Read {
        key: String,
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Bytes to read (default: to end of file).
        #[arg(long)]
        len: Option<u64>,
        /// RDMA direct mode: read the file's memory region one-sided (no server CPU); falls
        /// back to server-initiated reads if the server refuses or revokes it.
        #[arg(long)]
        direct: bool,
        #[command(flatten)]
        channel: ChannelArg,
    },
    /// Write stdin through a duplicate handle at OFFSET, then flush (with --json, a report
    /// on stdout).
    Write {
        key: String,
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// RDMA direct writes: put the bytes into the file's memory region one-sided (no
        /// server CPU for them). Granted to an open with mode rw that is the file's only open,
        /// for the file's existing bytes on a tmpfs-backed server; bytes past the end, or
        /// after another open revoked the grant, go through the server. --json says how many
        /// went direct ("direct_bytes").
        #[arg(long)]
        direct: bool,
        #[command(flatten)]
        channel: ChannelArg,
    },
    /// Take a duplicate handle and report whether others accessed or changed the file.
    Resume {
        key: String,
        #[command(flatten)]
        channel: ChannelArg,
    },
    /// Close the open (all its handles); its locks are released.
    Close { key: String },
    /// Pass the open to client NAME: prints a key for NAME and puts it in NAME's inbox.
    Pass {
        key: String,
        #[arg(long)]
        to: String,
    },
    /// Print the keys other clients passed to this one, one a line.
    Inbox,
    /// Print the server's counters (data-path work by the server, RDMA connections, direct
    /// grants and revocations) as JSON.
    Stats,
    /// Take a byte-range lock for an open.
    Lock {
        key: String,
        #[arg(value_name = "OFFSET:LEN")]
        range: ByteRange,
    },
    /// Release a byte-range lock.
    Unlock {
        key: String,
        #[arg(value_name = "OFFSET:LEN")]
        range: ByteRange,
    },
    /// Open REMOTE, read all of it to LOCAL (a file, created or truncated) or to stdout
    /// (no LOCAL, or -), close.
    ///
    ///   handoff get results/run1.h5 run1.h5
    ///   handoff get results/run1.h5 | h5dump -
    #[command(verbatim_doc_comment)]
    Get {
        remote: String,
        local: Option<PathBuf>,
        #[command(flatten)]
        channel: ChannelArg,
    },
    /// Create or truncate REMOTE and write LOCAL (a file) or stdin (no LOCAL, or -) to it,
    /// made durable (fdatasync) before it is closed.
    ///
    ///   handoff put run1.h5 results/run1.h5
    ///   tar c out/ | handoff put - results/out.tar
    #[command(verbatim_doc_comment)]
    Put {
        /// [LOCAL|-] REMOTE
        #[arg(num_args = 1..=2, required = true, value_name = "LOCAL|-] [REMOTE")]
        paths: Vec<String>,
        #[command(flatten)]
        channel: ChannelArg,
    },
    /// List a directory beneath the server's root (default: the root), one name a line; a
    /// file lists itself.
    Ls {
        /// Long lines: type and permissions, links, size, modification time (UTC).
        #[arg(short = 'l')]
        long: bool,
        #[arg(default_value = "/")]
        path: String,
    },
    /// A file's attributes: type, size, blocks, permissions, links, times.
    Stat { path: String },
    /// Make directories.
    Mkdir {
        /// Make missing parents too; an existing directory is no error.
        #[arg(short = 'p', long)]
        parents: bool,
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Remove files (or symbolic links). Refused (exit 3, naming the holder) while another
    /// client's open of the file does not share delete (`open --share rwd` does); this
    /// client's own opens never stand in the way.
    Rm {
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Remove empty directories.
    Rmdir {
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Set a file's size (cut it, or extend it with zeros). Refused while another client's
    /// open of it does not share write, or locks bytes the change touches.
    Truncate {
        /// The new size in bytes.
        #[arg(short = 's', long)]
        size: u64,
        path: String,
    },
    /// Rename FROM to TO, replacing a file at TO. Refused while another client's open of
    /// either does not share delete.
    Mv { from: String, to: String },
    /// Mount the server's root at MOUNTPOINT (FUSE): every open(2) there is a handoff open,
    /// reads and writes go over a data channel, fsync is a flush, and open files resume by
    /// their keys when the network drops or the server restarts. Runs in the background
    /// (log: --log) unless --foreground; unmount with `handoff umount MOUNTPOINT`.
    ///
    ///   handoff mount /mnt/handoff && cp big.h5 /mnt/handoff/runs/
    #[command(verbatim_doc_comment)]
    Mount {
        mountpoint: PathBuf,
        /// Stay in the foreground (logs on stderr); SIGINT or SIGTERM unmounts.
        #[arg(long)]
        foreground: bool,
        /// The background process's log (default: $XDG_STATE_HOME/handoff/mount.log).
        #[arg(long, value_name = "FILE")]
        log: Option<PathBuf>,
        /// What every open through the mount lets other clients do: letters of r, w and d
        /// (delete), or none. Default rwd, as POSIX programs expect; none makes each open
        /// exclusive (others' open(2) fails with EACCES until it is closed, or its durable
        /// timeout ends after this host vanished).
        #[arg(long, default_value = "rwd")]
        share: ShareMode,
        /// Keep file pages in this host's page cache between reads: faster small and repeated
        /// reads, with NFS's close-to-open consistency, but a descriptor whose open was lost
        /// (it expired while this host was away) may still read pages cached before. Default:
        /// every read and write goes to the server.
        #[arg(long)]
        cache: bool,
        #[command(flatten)]
        channel: ChannelArg,
    },
    /// Unmount a handoff mount (fusermount3 -u, or umount as root).
    Umount { mountpoint: PathBuf },
    /// Print a shell completion script for bash, zsh, fish, elvish or powershell.
    ///
    ///   handoff completions bash > /etc/bash_completion.d/handoff
    ///   handoff completions zsh > "${fpath[1]}/_handoff"
    ///   handoff completions fish > ~/.config/fish/completions/handoff.fish
    #[command(verbatim_doc_comment)]
    Completions { shell: clap_complete::Shell },
    /// Print this manual page (roff), as the package installs it.
    #[command(hide = true)]
    ManPage,
    /// Server administration (this client must be listed in the server's --admins).
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// Planned drain: the server (--server) sends its resume keys, opens, locks and file
    /// versions, and the files the peer lacks, to the peer; then it refers every client there
    /// (they follow by themselves and resume by key). The peer must list the server's
    /// --peer-identity in its --clients and --peers.
    ///
    ///   handoff --server A:4455 admin drain --to B:4455
    #[command(verbatim_doc_comment)]
    Drain {
        /// The peer's control address.
        #[arg(long, value_name = "ADDR")]
        to: String,
    },
    /// Every open of the server: slot, state (connected, durable, expired), the client that
    /// opened it, mode, share mode, channels holding it, when a durable open expires, its
    /// byte-range locks and path. Keys are never shown.
    ///
    ///   handoff admin opens
    ///   handoff admin opens --json | jq '.opens[] | select(.client == "alice")'
    #[command(verbatim_doc_comment)]
    Opens,
    /// Force-close opens, whoever holds them: their locks and share modes are released at
    /// once, and the holder's next use of the key (or of a handle it has) fails with exit 4,
    /// saying an administrator closed it. Name one of a key, a client or a path.
    ///
    ///   handoff admin close --client alice     # every open alice made or holds a key to
    ///   handoff admin close --path data/f.h5   # every open of that file
    ///   handoff admin close KEY                # the open of a key (anyone's)
    #[command(verbatim_doc_comment)]
    #[group(id = "target", required = true, multiple = false, args = ["key", "client", "path"])]
    Close {
        /// A resume key of the open.
        key: Option<String>,
        /// Every open this client made or holds a key to.
        #[arg(long, value_name = "NAME")]
        client: Option<String>,
        /// Every open of this file (its path beneath the root).
        #[arg(long, value_name = "PATH")]
        path: Option<String>,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .with_target(false)
        .init();
    let args = Args::parse();
    if let Command::ManPage = args.command {
        use clap::CommandFactory;
        let mut out = Vec::new();
        if let Err(e) = clap_mangen::Man::new(Args::command()).render(&mut out) {
            eprintln!("handoff: {e}");
            std::process::exit(exit::OTHER);
        }
        say!("{}", String::from_utf8_lossy(&out).trim_end());
        std::process::exit(exit::OK);
    }
    if let Command::Completions { shell } = args.command {
        use clap::CommandFactory;
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut Args::command(), "handoff", &mut out);
        say!("{}", String::from_utf8_lossy(&out).trim_end());
        std::process::exit(exit::OK);
    }
    // The mount serves from threads of its own (and may run for days): no runtime here.
    if matches!(args.command, Command::Mount { .. } | Command::Umount { .. }) {
        let code = mount_command(args).unwrap_or_else(|e| {
            eprintln!("handoff: {e:#}");
            exit::for_error(&e)
        });
        std::process::exit(code);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("handoff: cannot start: {e}");
            std::process::exit(exit::OTHER);
        }
    };
    let code = match runtime.block_on(run(args)) {
        Ok(code) => code,
        // The reader of stdout went away (`| head`): what it wanted, it has. Only that error:
        // a failure after it (closing the open) is still reported.
        Err(e) if stdout::is_closed_pipe(&e) => exit::OK,
        Err(e) => {
            eprintln!("handoff: {e:#}");
            exit::for_error(&e)
        }
    };
    std::process::exit(code);
}

fn mount_command(args: Args) -> anyhow::Result<i32> {
    match args.command {
        Command::Mount {
            mountpoint,
            foreground,
            log,
            share,
            cache,
            channel: ch,
        } => mount::run(mount::MountArgs {
            identity: load_identity(args.identity.as_ref())?,
            server: args.server,
            mountpoint,
            channel: channel(&ch)?,
            share,
            cache,
            foreground,
            log,
        }),
        Command::Umount { mountpoint } => mount::unmount(&mountpoint),
        _ => unreachable!("only mount and umount come here"),
    }
}

/// `$VAR/handoff` (`XDG_CONFIG_HOME`, `XDG_STATE_HOME`), or `~/FALLBACK/handoff` where the
/// variable is unset, empty or relative (which the XDG base directory spec says to ignore).
pub fn xdg_dir(var: &str, fallback: &str) -> Option<PathBuf> {
    let base = std::env::var_os(var)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(fallback)))?;
    Some(base.join("handoff"))
}

fn load_identity(path: Option<&PathBuf>) -> anyhow::Result<Identity> {
    let path = match path {
        Some(p) => p.clone(),
        None => xdg_dir("XDG_CONFIG_HOME", ".config")
            .ok_or_else(|| UsageError("no --identity given and no $HOME".into()))?
            .join("identity"),
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        UsageError(format!(
            "identity file {}: {e} (make one with `handoff keygen NAME -o FILE`)",
            path.display()
        ))
    })?;
    handoff_datapath::secrets::check_private(&path).map_err(handoff_core::Error::from)?;
    Identity::parse(&text)
        .map_err(|e| UsageError(format!("identity file {}: {e}", path.display())).into())
}

/// `keygen > FILE` under a usual umask makes a secret others can read: say so.
fn warn_if_stdout_is_exposed() {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata("/proc/self/fd/1") {
        if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
            eprintln!(
                "handoff: warning: the identity went to a file group or others can read; \
                 chmod 600 it, or use `handoff keygen NAME -o FILE`"
            );
        }
    }
}

/// Creates `path` with mode 0600 holding `text`; an existing file is left alone.
fn write_secret(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => UsageError(format!(
                "{} exists; not overwriting an identity (remove it first)",
                path.display()
            )),
            _ => UsageError(format!("{}: {e}", path.display())),
        })?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

fn channel(arg: &ChannelArg) -> anyhow::Result<Option<Channel>> {
    match arg.channel.as_deref() {
        None => Ok(None),
        Some("tcp") => Ok(Some(Channel::Tcp)),
        Some("tls") => Ok(Some(Channel::Tls)),
        Some("rdma") => Ok(Some(Channel::Rdma)),
        Some(other) => Err(UsageError(format!("unknown channel {other}")).into()),
    }
}

/// The transfer report `--json` prints for read/write/get/put (on stderr where stdout
/// carries the bytes).
fn transfer_report(data: &mut DataHandle, op: &str, bytes: u64) -> serde_json::Value {
    let mut v = json!({ "op": op, "bytes": bytes });
    match data {
        DataHandle::Stream(d) => {
            v["channel"] = json!(d.transport.to_string());
            v["reconnects"] = json!(d.reconnects);
        }
        DataHandle::Rdma(r) => {
            v["channel"] = json!("rdma");
            v["direct"] = json!(r.want_direct && r.direct_bytes() > 0);
            v["direct_bytes"] = json!(r.direct_bytes());
            v["fallbacks"] = json!(r.fallbacks());
            v["qps"] = r
                .qp_reports()
                .iter()
                .map(|q| json!({ "addr": q.addr.to_string(), "device": q.device, "bytes": q.bytes, "failed": q.failed }))
                .collect();
        }
    }
    v
}

/// Keeps printed keys in $HANDOFF_KEYS (default $XDG_STATE_HOME/handoff/keys, or
/// ~/.local/state/handoff/keys), so a rebooted client still has them.
fn remember_key(server: &str, path: &str, token: &str) {
    let file = std::env::var_os("HANDOFF_KEYS")
        .map(PathBuf::from)
        .or_else(|| xdg_dir("XDG_STATE_HOME", ".local/state").map(|d| d.join("keys")));
    let Some(file) = file else { return };
    // Keys are capabilities (with this client's identity): private like the identity.
    let write = || -> std::io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&file)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        writeln!(f, "{token} {server} {path}")
    };
    if let Err(e) = write() {
        tracing::warn!("could not record the key in {}: {e}", file.display());
    }
}

fn progress(total: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() || total.is_some_and(|t| t < 8 << 20) {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(t) => ProgressBar::new(t),
        None => ProgressBar::new_spinner(),
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bytes}/{total_bytes} {wide_bar} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Reads up to `len` bytes at `offset` through `data` into `out` (stdout or a local file),
/// with a progress bar on a terminal.
async fn read_to(
    data: &mut DataHandle,
    offset: u64,
    len: u64,
    out: impl Write + Send,
) -> anyhow::Result<u64> {
    let total = len.min(data.info().size.saturating_sub(offset));
    let bar = progress(Some(total));
    let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
    let n = data
        .read_to(offset, len, &mut |chunk| {
            bar.inc(chunk.len() as u64);
            out.write_all(chunk)
        })
        .await?;
    out.flush()?;
    bar.finish_and_clear();
    Ok(n)
}

/// Writes everything `input` (stdin or a local file of `size` bytes) gives through `data`
/// at `offset`, then makes it durable, with a progress bar on a terminal.
async fn write_from(
    data: &mut DataHandle,
    offset: u64,
    mut input: impl Read + Send,
    size: Option<u64>,
) -> anyhow::Result<u64> {
    let bar = progress(size);
    // The input is read straight into the channel's (registered, for RDMA) buffers.
    let n = data
        .write_from(offset, &mut |buf| {
            let mut filled = 0;
            while filled < buf.len() {
                let n = input.read(&mut buf[filled..])?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            bar.inc(filled as u64);
            Ok(filled)
        })
        .await?;
    data.flush().await?;
    bar.finish_and_clear();
    Ok(n)
}

/// `open`: prints the resume key (with the open's state under --json) and remembers it.
async fn open(
    client: &mut Client,
    server: &str,
    path: &str,
    opts: &OpenOptions,
    json: bool,
) -> anyhow::Result<()> {
    let opened = client
        .open(path, opts)
        .await
        .with_context(|| format!("open {path}"))?;
    remember_key(server, path, &opened.token);
    if json {
        say!(
            "{}",
            json!({
                "key": opened.token,
                "handle": opened.handle,
                "mode": opened.info.mode.to_string(),
                "share": opened.info.share.to_string(),
                "locks": opened.info.locks.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
                "size": opened.info.size,
            })
        );
    } else {
        say!("{}", opened.token);
    }
    Ok(())
}

/// `resume`: what happened to the file meanwhile, granted or not (a denied resume still
/// tells).
fn print_resume(
    resumed: Result<DataHandle, handoff_datapath::DataError>,
    json: bool,
) -> anyhow::Result<()> {
    match resumed {
        Ok(data) => {
            let r = data.report();
            let info = data.info();
            let handle = data.handle();
            let used = match &data {
                DataHandle::Stream(d) => d.transport.to_string(),
                DataHandle::Rdma(_) => "rdma".to_string(),
            };
            if json {
                say!(
                    "{}",
                    json!({
                        "granted": true,
                        "accessed_by_other": r.accessed_by_other,
                        "changed_by_other": r.changed_by_other,
                        "reopened": r.reopened,
                        "mode": info.mode.to_string(),
                        "share": info.share.to_string(),
                        "locks": info.locks.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
                        "size": info.size,
                        "handle": handle,
                        "channel": used,
                    })
                );
            } else {
                say!(
                    "resumed handle {} (mode {}, {} bytes){}\naccessed by another client: {}\nchanged by another client: {}",
                    handle,
                    info.mode,
                    info.size,
                    if r.reopened { "; the open had expired and was granted again" } else { "" },
                    if r.accessed_by_other { "yes" } else { "no" },
                    if r.changed_by_other { "yes" } else { "no" },
                );
            }
        }
        Err(err) => {
            // A denied resume still tells what happened meanwhile.
            let report = handoff::exit::report_of(&err);
            if let (Some(r), true) = (report, json) {
                say!(
                    "{}",
                    json!({
                        "granted": false,
                        "accessed_by_other": r.accessed_by_other,
                        "changed_by_other": r.changed_by_other,
                        "reopened": false,
                    })
                );
            } else if let Some(r) = report {
                say!(
                    "not resumed\naccessed by another client: {}\nchanged by another client: {}",
                    if r.accessed_by_other { "yes" } else { "no" },
                    if r.changed_by_other { "yes" } else { "no" },
                );
            }
            return Err(anyhow::Error::new(err).context("resume"));
        }
    }
    Ok(())
}

/// The local end of `get` and `put`: a file, or stdout / stdin (None).
enum Local {
    Get(Option<PathBuf>),
    Put(Option<(PathBuf, std::fs::File)>),
}

/// `get` (`put`): opens `path`, reads it whole to the local file or stdout (writes the local
/// file or stdin into it) over a data channel, and closes it, even when the transfer failed.
/// Returns the transfer's report.
async fn whole_file(
    client: &mut Client,
    path: &str,
    opts: &OpenOptions,
    channel: Option<Channel>,
    local: Local,
) -> anyhow::Result<serde_json::Value> {
    let what = match local {
        Local::Get(_) => "get",
        Local::Put(_) => "put",
    };
    let opened = client
        .open(path, opts)
        .await
        .with_context(|| format!("open {path}"))?;
    let result = async {
        let mut data = client.open_data(&opened.token, channel, false).await?;
        let n = match local {
            Local::Put(None) => write_from(&mut data, 0, std::io::stdin(), None).await?,
            Local::Put(Some((name, file))) => {
                let size = file.metadata().map(|m| m.len()).ok();
                write_from(&mut data, 0, file, size)
                    .await
                    .with_context(|| format!("from {}", name.display()))?
            }
            Local::Get(None) => read_to(&mut data, 0, u64::MAX, stdout::Stdout)
                .await
                .context("writing to stdout")?,
            Local::Get(Some(name)) => {
                let file = std::fs::File::create(&name)
                    .map_err(|e| UsageError(format!("{}: {e}", name.display())))?;
                read_to(&mut data, 0, u64::MAX, file)
                    .await
                    .with_context(|| format!("writing {}", name.display()))?
            }
        };
        anyhow::Ok(transfer_report(&mut data, what, n))
    }
    .await;
    let closed = client.close(&opened.token).await;
    match (result, closed) {
        (Ok(report), Ok(())) => Ok(report),
        (Ok(_), Err(e)) => Err(e).context("close"),
        // The reader of stdout went away, and the close failed: the failure is what counts.
        (Err(_), Err(e)) if stdout::closed() => Err(e).context("close"),
        (Err(e), _) => Err(e).with_context(|| format!("{what} {path}")),
    }
}

/// `keygen`: a new identity, into a file made mode 0600 or onto stdout.
fn keygen(name: &str, output: Option<&std::path::Path>) -> anyhow::Result<()> {
    let id =
        Identity::generate(name, &mut rand::rngs::OsRng).map_err(|e| UsageError(e.to_string()))?;
    match output {
        Some(path) => write_secret(path, &(id.to_line() + "\n"))?,
        None => {
            say!("{}", id.to_line());
            warn_if_stdout_is_exposed();
        }
    }
    Ok(())
}

/// `admin drain`: hands every open of `server` to `to`.
/// One item per line, or `{"name": [...]}` under --json.
fn print_list(name: &str, items: &[String], json: bool) {
    if json {
        say!("{}", json!({ name: items }));
    } else {
        for item in items {
            say!("{item}");
        }
    }
}

/// `read` (Some length: to stdout) or `write` (None: from stdin) at `offset` on a data
/// handle; under --json, the transfer's report (on stderr after a read's bytes).
async fn stream(
    mut data: DataHandle,
    offset: u64,
    read: Option<u64>,
    json: bool,
) -> anyhow::Result<()> {
    match read {
        Some(len) => {
            let n = read_to(&mut data, offset, len, stdout::Stdout)
                .await
                .context("writing to stdout")?;
            if json {
                eprintln!("{}", transfer_report(&mut data, "read", n));
            }
        }
        None => {
            let n = write_from(&mut data, offset, std::io::stdin(), None).await?;
            if json {
                say!("{}", transfer_report(&mut data, "write", n));
            }
        }
    }
    Ok(())
}

/// `stats`: the server's counters as one JSON object.
fn counters_json(counters: Vec<(String, u64)>) -> serde_json::Value {
    let map: serde_json::Map<String, serde_json::Value> =
        counters.into_iter().map(|(k, v)| (k, json!(v))).collect();
    serde_json::Value::Object(map)
}

async fn run(args: Args) -> anyhow::Result<i32> {
    if let Command::Keygen { name, output } = &args.command {
        keygen(name, output.as_deref())?;
        return Ok(exit::OK);
    }
    let identity = load_identity(args.identity.as_ref())?;
    let mut client = Client::connect(&args.server, &identity)
        .await
        .with_context(|| format!("server {}", args.server))?;
    match args.command {
        Command::Keygen { .. }
        | Command::Mount { .. }
        | Command::Umount { .. }
        | Command::Completions { .. }
        | Command::ManPage => {
            unreachable!("handled above")
        }
        Command::Open {
            path,
            mode,
            exclusive,
            share,
            lock,
            create,
        } => {
            let share = if exclusive {
                ShareMode::NONE
            } else {
                share.unwrap_or(ShareMode::ALL)
            };
            let opts = OpenOptions {
                mode,
                share,
                locks: lock,
                create,
                truncate: false,
            };
            open(&mut client, &args.server, &path, &opts, args.json).await?;
        }
        Command::Read {
            key,
            offset,
            len,
            direct,
            channel: ch,
        } => {
            let data = client.open_data(&key, channel(&ch)?, direct).await?;
            drop(client);
            stream(data, offset, Some(len.unwrap_or(u64::MAX)), args.json).await?;
        }
        Command::Write {
            key,
            offset,
            direct,
            channel: ch,
        } => {
            let data = client.open_data(&key, channel(&ch)?, direct).await?;
            drop(client);
            stream(data, offset, None, args.json).await?;
        }
        Command::Resume { key, channel: ch } => {
            let resumed = client.open_data(&key, channel(&ch)?, false).await;
            print_resume(resumed, args.json)?;
        }
        Command::Close { key } => client.close(&key).await.context("close")?,
        Command::Pass { key, to } => {
            let passed = client.pass(&key, &to).await.context("pass")?;
            say!("{passed}");
        }
        Command::Inbox => {
            let keys = client.inbox().await.context("inbox")?;
            print_list("keys", &keys, args.json);
        }
        Command::Stats => {
            let counters = client.stats().await.context("stats")?;
            say!("{}", counters_json(counters));
        }
        Command::Lock { key, range } => client.lock(&key, range, true).await.context("lock")?,
        Command::Unlock { key, range } => {
            client.lock(&key, range, false).await.context("unlock")?
        }
        Command::Get {
            remote,
            local,
            channel: ch,
        } => {
            let opts = OpenOptions::default();
            let local = local.filter(|p| p.as_os_str() != "-");
            let report = whole_file(
                &mut client,
                &remote,
                &opts,
                channel(&ch)?,
                Local::Get(local),
            )
            .await?;
            if args.json {
                eprintln!("{report}");
            }
        }
        Command::Ls { long, path } => namespace::ls(&mut client, &path, long, args.json).await?,
        Command::Stat { path } => namespace::stat(&mut client, &path, args.json).await?,
        Command::Mkdir { parents, paths } => {
            for p in &paths {
                client
                    .make_dir(p, parents)
                    .await
                    .with_context(|| format!("mkdir {p}"))?;
            }
        }
        Command::Rm { paths } => {
            for p in &paths {
                client.remove(p).await.with_context(|| format!("rm {p}"))?;
            }
        }
        Command::Rmdir { paths } => {
            for p in &paths {
                client
                    .remove_dir(p)
                    .await
                    .with_context(|| format!("rmdir {p}"))?;
            }
        }
        Command::Truncate { size, path } => client
            .truncate(&path, size)
            .await
            .with_context(|| format!("truncate {path}"))?,
        Command::Mv { from, to } => client
            .rename(&from, &to)
            .await
            .with_context(|| format!("mv {from} {to}"))?,
        Command::Admin { command } => match command {
            AdminCommand::Drain { to } => {
                admin::drain(&mut client, &args.server, &to, args.json).await?
            }
            AdminCommand::Opens => admin::opens(&mut client, args.json).await?,
            AdminCommand::Close {
                key,
                client: who,
                path,
            } => admin::close(&mut client, key, who, path, args.json).await?,
        },
        Command::Put { paths, channel: ch } => {
            let opts = OpenOptions {
                mode: Mode::ReadWrite,
                create: true,
                truncate: true,
                ..OpenOptions::default()
            };
            let (local, remote) = match paths.as_slice() {
                [remote] => (None, remote),
                [local, remote] => (
                    Some(PathBuf::from(local)).filter(|p| p.as_os_str() != "-"),
                    remote,
                ),
                _ => unreachable!("clap takes one or two"),
            };
            let source = Local::Put(match local {
                Some(path) => {
                    let f = std::fs::File::open(&path)
                        .map_err(|e| UsageError(format!("{}: {e}", path.display())))?;
                    Some((path, f))
                }
                None => None,
            });
            let report = whole_file(&mut client, remote, &opts, channel(&ch)?, source).await?;
            if args.json {
                say!("{report}");
            }
        }
    }
    Ok(exit::OK)
}
