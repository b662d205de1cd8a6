//! `handoff`: the command-line client.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use handoff::exit::{self, UsageError};
use handoff::{ByteRange, Client, DataClient, Identity, Mode, OpenOptions, ShareMode, Transport};
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
/// 4 no such file / key unknown or expired, 5 authentication failed, 1 other.
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
struct Args {
    /// Server control address.
    #[arg(
        long,
        env = "HANDOFF_SERVER",
        default_value = "127.0.0.1:4455",
        global = true
    )]
    server: String,
    /// This client's identity file (a `handoff keygen` line).
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
    /// Data channel: tcp, tls (encrypted) or rdma. Default: the fastest the server offers.
    #[arg(long, value_parser = ["rdma", "tcp", "tls"])]
    channel: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Make a new identity: prints one line "NAME:<64 hex chars>" (give it to the server's
    /// --clients file, keep it as this client's --identity).
    Keygen { name: String },
    /// Open PATH and print its resume key; the open stays held (durable) after exit.
    Open {
        path: String,
        /// r (read-only) or rw (read/write).
        #[arg(long, default_value = "r")]
        mode: Mode,
        /// Share with nobody: every other open of the file is denied.
        #[arg(long, conflicts_with = "share")]
        exclusive: bool,
        /// What others may do meanwhile: rw (default), r, w or none.
        #[arg(long)]
        share: Option<ShareMode>,
        /// Lock bytes OFFSET:LEN against every other open (repeatable).
        #[arg(long, value_name = "OFFSET:LEN")]
        lock: Vec<ByteRange>,
        /// Create the file if it is missing (else exit 4).
        #[arg(long)]
        create: bool,
    },
    /// Read bytes through a duplicate handle to stdout.
    Read {
        key: String,
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Bytes to read (default: to end of file).
        #[arg(long)]
        len: Option<u64>,
        #[command(flatten)]
        channel: ChannelArg,
    },
    /// Write stdin through a duplicate handle at OFFSET.
    Write {
        key: String,
        #[arg(long, default_value_t = 0)]
        offset: u64,
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
    /// Open PATH, read all of it to stdout, close.
    Get {
        path: String,
        #[command(flatten)]
        channel: ChannelArg,
    },
    /// Create or truncate PATH, write stdin to it, close.
    Put {
        path: String,
        #[command(flatten)]
        channel: ChannelArg,
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
        Err(e) => {
            eprintln!("handoff: {e:#}");
            exit::for_error(&e)
        }
    };
    std::process::exit(code);
}

fn load_identity(path: Option<&PathBuf>) -> anyhow::Result<Identity> {
    let path = match path {
        Some(p) => p.clone(),
        None => {
            let home = std::env::var_os("HOME")
                .ok_or_else(|| UsageError("no --identity given and no $HOME".into()))?;
            PathBuf::from(home).join(".config/handoff/identity")
        }
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        UsageError(format!(
            "identity file {}: {e} (make one with `handoff keygen NAME`)",
            path.display()
        ))
    })?;
    Identity::parse(&text)
        .map_err(|e| UsageError(format!("identity file {}: {e}", path.display())).into())
}

fn transport(arg: &ChannelArg) -> anyhow::Result<Transport> {
    match arg.channel.as_deref() {
        None | Some("tcp") => Ok(Transport::Tcp),
        Some("tls") => Ok(Transport::Tls),
        Some("rdma") => Err(UsageError(
            "--channel rdma: this build of handoff has no RDMA transport yet; use tcp or tls"
                .into(),
        )
        .into()),
        Some(other) => Err(UsageError(format!("unknown channel {other}")).into()),
    }
}

/// Keeps printed keys in $HANDOFF_KEYS (default ~/.local/state/handoff/keys), so a rebooted
/// client still has them.
fn remember_key(server: &str, path: &str, token: &str) {
    let file = std::env::var_os("HANDOFF_KEYS")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state/handoff/keys"))
        });
    let Some(file) = file else { return };
    let write = || -> std::io::Result<()> {
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)?;
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

async fn read_to_stdout(data: &mut DataClient, offset: u64, len: u64) -> anyhow::Result<u64> {
    let total = len.min(data.info.size.saturating_sub(offset));
    let bar = progress(Some(total));
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    let n = data
        .read_to(offset, len, &mut |chunk| {
            bar.inc(chunk.len() as u64);
            out.write_all(chunk)
        })
        .await?;
    out.flush().context("writing to stdout")?;
    bar.finish_and_clear();
    Ok(n)
}

async fn write_from_stdin(data: &mut DataClient, mut offset: u64) -> anyhow::Result<u64> {
    const BLOCK: usize = 16 << 20;
    let bar = progress(None);
    let mut stdin = std::io::stdin().lock();
    let mut buf = vec![0u8; BLOCK];
    let mut total = 0u64;
    loop {
        let mut filled = 0;
        while filled < BLOCK {
            let n = stdin.read(&mut buf[filled..]).context("reading stdin")?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        data.write_at(offset, &buf[..filled]).await?;
        offset += filled as u64;
        total += filled as u64;
        bar.inc(filled as u64);
    }
    data.flush().await?;
    bar.finish_and_clear();
    Ok(total)
}

async fn run(args: Args) -> anyhow::Result<i32> {
    if let Command::Keygen { name } = &args.command {
        let id = Identity::generate(name).map_err(|e| UsageError(e.to_string()))?;
        println!("{}", id.to_line());
        return Ok(exit::OK);
    }
    let identity = load_identity(args.identity.as_ref())?;
    let mut client = Client::connect(&args.server, &identity)
        .await
        .with_context(|| format!("server {}", args.server))?;
    match args.command {
        Command::Keygen { .. } => unreachable!("handled above"),
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
            let opened = client
                .open(&path, &opts)
                .await
                .with_context(|| format!("open {path}"))?;
            remember_key(&args.server, &path, &opened.token);
            if args.json {
                println!(
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
                println!("{}", opened.token);
            }
        }
        Command::Read {
            key,
            offset,
            len,
            channel,
        } => {
            let mut data = client.attach(&key, transport(&channel)?).await?;
            drop(client);
            read_to_stdout(&mut data, offset, len.unwrap_or(u64::MAX)).await?;
        }
        Command::Write {
            key,
            offset,
            channel,
        } => {
            let mut data = client.attach(&key, transport(&channel)?).await?;
            drop(client);
            let n = write_from_stdin(&mut data, offset).await?;
            if args.json {
                println!("{}", json!({ "written": n }));
            }
        }
        Command::Resume { key, channel } => {
            let t = transport(&channel)?;
            match client.attach(&key, t).await {
                Ok(data) => {
                    let r = data.report;
                    if args.json {
                        println!(
                            "{}",
                            json!({
                                "granted": true,
                                "accessed_by_other": r.accessed_by_other,
                                "changed_by_other": r.changed_by_other,
                                "reopened": r.reopened,
                                "mode": data.info.mode.to_string(),
                                "share": data.info.share.to_string(),
                                "locks": data.info.locks.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
                                "size": data.info.size,
                                "handle": data.handle,
                                "channel": t.to_string(),
                            })
                        );
                    } else {
                        println!(
                            "resumed handle {} (mode {}, {} bytes){}\naccessed by another client: {}\nchanged by another client: {}",
                            data.handle,
                            data.info.mode,
                            data.info.size,
                            if r.reopened { "; the open had expired and was granted again" } else { "" },
                            if r.accessed_by_other { "yes" } else { "no" },
                            if r.changed_by_other { "yes" } else { "no" },
                        );
                    }
                }
                Err(err) => {
                    // A denied resume still tells what happened meanwhile.
                    let report = handoff::exit::report_of(&err);
                    if let (Some(r), true) = (report, args.json) {
                        println!(
                            "{}",
                            json!({
                                "granted": false,
                                "accessed_by_other": r.accessed_by_other,
                                "changed_by_other": r.changed_by_other,
                                "reopened": false,
                            })
                        );
                    } else if let Some(r) = report {
                        println!(
                            "not resumed\naccessed by another client: {}\nchanged by another client: {}",
                            if r.accessed_by_other { "yes" } else { "no" },
                            if r.changed_by_other { "yes" } else { "no" },
                        );
                    }
                    return Err(anyhow::Error::new(err).context("resume"));
                }
            }
        }
        Command::Close { key } => client.close(&key).await.context("close")?,
        Command::Pass { key, to } => {
            let passed = client.pass(&key, &to).await.context("pass")?;
            println!("{passed}");
        }
        Command::Inbox => {
            let keys = client.inbox().await.context("inbox")?;
            if args.json {
                println!("{}", json!({ "keys": keys }));
            } else {
                for k in keys {
                    println!("{k}");
                }
            }
        }
        Command::Lock { key, range } => client.lock(&key, range, true).await.context("lock")?,
        Command::Unlock { key, range } => {
            client.lock(&key, range, false).await.context("unlock")?
        }
        Command::Get { path, channel } => {
            let t = transport(&channel)?;
            let opened = client
                .open(&path, &OpenOptions::default())
                .await
                .with_context(|| format!("open {path}"))?;
            let result = async {
                let mut data = client.attach(&opened.token, t).await?;
                read_to_stdout(&mut data, 0, u64::MAX).await
            }
            .await;
            let closed = client.close(&opened.token).await;
            result.with_context(|| format!("get {path}"))?;
            closed.context("close")?;
        }
        Command::Put { path, channel } => {
            let t = transport(&channel)?;
            let opts = OpenOptions {
                mode: Mode::ReadWrite,
                create: true,
                truncate: true,
                ..OpenOptions::default()
            };
            let opened = client
                .open(&path, &opts)
                .await
                .with_context(|| format!("open {path}"))?;
            let result = async {
                let mut data = client.attach(&opened.token, t).await?;
                write_from_stdin(&mut data, 0).await
            }
            .await;
            let closed = client.close(&opened.token).await;
            let n = result.with_context(|| format!("put {path}"))?;
            closed.context("close")?;
            if args.json {
                println!("{}", json!({ "written": n }));
            }
        }
    }
    Ok(exit::OK)
}
