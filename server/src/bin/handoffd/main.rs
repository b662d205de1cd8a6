//! `handoffd`: the handoff server.

mod config;
mod notify;
mod store_fault;
mod wiring;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use handoff_server::cluster::EtcdUrl;
use handoff_server::net::Limits;
use handoff_server::state::Quotas;
use tracing_subscriber::EnvFilter;
use wiring::{start, ServerOptions, StoreChoice};

/// Serves files under --root with durable, duplicable handles.
///
/// Clients authenticate with a pre-shared secret (see `handoff keygen`) over the control
/// channel (--listen), open files and get resume keys; they present the keys on the data
/// channel (--data-listen, plain TCP and TLS on one port) for duplicate handles. State is
/// written through to a database under --state before every reply, so a killed server
/// restarted with the same --state keeps every open, lock and key.
///
/// Every flag can also be set by an environment variable, HANDOFFD_ and the flag's name
/// (HANDOFFD_DURABLE_TIMEOUT=30), or in the TOML file --config names, the flag's name as
/// the key (durable-timeout = 30; a flag that repeats takes a list). A flag wins over the
/// environment, the environment over the file. --print-config shows the result.
///
/// Example:
///   handoff keygen alice -o alice.id && cp alice.id clients    # both mode 0600
///   handoffd --root /srv/data --state /var/lib/handoff --clients clients
///   handoffd --config /etc/handoff/handoffd.toml
#[derive(Parser, Debug)]
#[command(name = "handoffd", version, verbatim_doc_comment)]
struct Args {
    /// TOML file of settings (see above). Also HANDOFFD_CONFIG.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the effective configuration (each setting with where it came from) as a TOML
    /// file and exit.
    #[arg(long)]
    print_config: bool,
    /// Print this manual page (roff, section 8), as the package installs it, and exit.
    #[arg(long, hide = true)]
    man_page: bool,
    /// Directory whose files are served (client paths are relative to it). Required.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Directory for the state database and the TLS certificate (created if missing).
    /// Required.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Control-channel address.
    #[arg(long, default_value = "127.0.0.1:4455")]
    listen: SocketAddr,
    /// File of client identities, one `NAME:<64 hex>` line each (as `handoff keygen` prints);
    /// blank and # lines are ignored. It holds secrets: refused unless only its owner can
    /// read it (chmod 600). Required.
    #[arg(long)]
    clients: Option<PathBuf>,
    /// Seconds an open stays held after its last channel drops.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    durable_timeout: u64,
    /// Seconds after a restart in which only resumes are accepted (new opens wait).
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    grace: u64,
    /// Data-channel address (TCP and TLS). Default: the control address's host, any port.
    #[arg(long)]
    data_listen: Option<SocketAddr>,
    /// RDMA data-channel address (rdma_cm): the IP of an RDMA-capable interface and a port.
    /// Repeat it for one QP per interface (multichannel).
    #[arg(long, value_name = "ADDR")]
    rdma_listen: Vec<SocketAddr>,
    /// Threads that serve every RDMA connection, however many there are: each serves its
    /// share (a new one goes to the thread serving the fewest). Default: twice the CPUs, at
    /// least 4; raise it if the file system under --root can make a write wait long (it
    /// holds up the other connections of its thread).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    rdma_workers: Option<u16>,
    /// Keep state in etcd (`etcd://HOST:PORT[,HOST:PORT…]`) instead of the embedded database
    /// under --state: several handoffd over one --root then form an active/passive group, one
    /// active (it holds an etcd lease), the others waiting to take over.
    #[arg(long, value_name = "URL")]
    store: Option<EtcdUrl>,
    /// Name of the group of servers sharing one etcd store (with --store).
    #[arg(long, default_value = "handoff", requires = "store")]
    cluster: String,
    /// This server's name in the group (with --store). Default: HOSTNAME:--listen.
    #[arg(long, requires = "store")]
    node: Option<String>,
    /// Seconds the active server's etcd lease outlives its last renewal: a dead or paused
    /// active server is replaced after about this long (with --store).
    #[arg(long, default_value_t = 5, value_name = "SECS", requires = "store")]
    lease_ttl: u64,
    /// Client names (comma-separated) allowed to drain this server with `handoff admin
    /// drain`.
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    admins: Vec<String>,
    /// Servers (comma-separated names of their --peer-identity, listed in --clients too)
    /// allowed to drain into this one: to send it files and merge opens into its table.
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    peers: Vec<String>,
    /// Identity file (a `handoff keygen` line) this server presents when it drains into a
    /// peer; the peer must list that name in its --clients and --peers.
    #[arg(long, value_name = "FILE")]
    peer_identity: Option<PathBuf>,
    /// Start even though the embedded state store under --state is damaged, empty or
    /// missing: it is kept aside as handoff.redb.damaged-<time> and a new, empty store begins
    /// (every durable open, key and inbox is forgotten). Without it such a store stops the
    /// server.
    #[arg(long)]
    reset_state: bool,
    /// Serve Prometheus metrics (text exposition) at http://ADDR/metrics: bytes and requests
    /// by transport and client, latencies, store commits, opens by state, locks,
    /// connections and refusals, the node's role. Unauthenticated, like every exporter:
    /// bind it to localhost or a management network. Default: off.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Log lines on stderr: text (one line per event) or json (one JSON object per event,
    /// for log shippers). RUST_LOG picks what is logged (default: info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(flatten)]
    limits: LimitArgs,
}

/// Caps on connections and per-client quotas (the README's "Limits" table). A client that
/// hits one is refused with exit 3 and a message naming the flag.
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Limits")]
struct LimitArgs {
    /// Authenticated connections at once: control, data and RDMA together.
    #[arg(long, default_value_t = Limits::default().max_connections, value_name = "N")]
    max_connections: usize,
    /// Authenticated connections of one client at once.
    #[arg(long, default_value_t = Limits::default().max_client_connections, value_name = "N")]
    max_client_connections: usize,
    /// Connections still authenticating, in total; past it the oldest of the address with
    /// the most is closed to make room (they never take room from authenticated ones).
    #[arg(long, default_value_t = Limits::default().max_unauthenticated, value_name = "N")]
    max_unauthenticated: usize,
    /// Connections still authenticating from one IP address; past it that address's oldest
    /// is closed to make room.
    #[arg(long, default_value_t = Limits::default().max_unauthenticated_per_address, value_name = "N")]
    max_unauthenticated_per_address: usize,
    /// Seconds a frame may stay half-received, or a transfer make no progress, before the
    /// connection is closed.
    #[arg(long, default_value_t = Limits::default().frame_timeout.as_secs(), value_name = "SECS")]
    frame_timeout: u64,
    /// Seconds an authenticated control connection that holds no open may send no request
    /// before it is closed (clients reconnect by themselves). 0: never.
    #[arg(long, default_value_t = Limits::default().idle_timeout.map_or(0, |d| d.as_secs()), value_name = "SECS")]
    idle_timeout: u64,
    /// Seconds an RDMA data channel may be silent before the server probes its peer (a
    /// zero-length RDMA WRITE); a peer that does not answer within about 2 s is taken as
    /// gone, its handle detaches and the open's durable timeout starts.
    #[arg(long, default_value_t = Limits::default().rdma_probe_interval.as_secs(), value_name = "SECS")]
    rdma_probe_interval: u64,
    /// Opens one client may hold (durable ones included).
    #[arg(long, default_value_t = Quotas::default().max_client_opens, value_name = "N")]
    max_client_opens: usize,
    /// Byte-range locks one client may hold over all its opens.
    #[arg(long, default_value_t = Quotas::default().max_client_locks, value_name = "N")]
    max_client_locks: usize,
    /// Keys passed to one client that may wait in its inbox; a pass beyond it is refused
    /// (keys already there are never dropped).
    #[arg(long, default_value_t = Quotas::default().max_inbox, value_name = "N")]
    max_inbox: usize,
}

impl LimitArgs {
    fn limits(&self) -> Limits {
        Limits {
            max_connections: self.max_connections.max(1),
            max_client_connections: self.max_client_connections.max(1),
            max_unauthenticated: self.max_unauthenticated.max(1),
            max_unauthenticated_per_address: self.max_unauthenticated_per_address.max(1),
            frame_timeout: Duration::from_secs(self.frame_timeout.max(1)),
            idle_timeout: (self.idle_timeout > 0).then(|| Duration::from_secs(self.idle_timeout)),
            rdma_probe_interval: Duration::from_secs(self.rdma_probe_interval.max(1)),
        }
    }

    fn quotas(&self) -> Quotas {
        Quotas {
            max_client_opens: self.max_client_opens.max(1),
            max_client_locks: self.max_client_locks,
            max_inbox: self.max_inbox,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().with_current_span(true).init(),
    }
}

#[tokio::main]
async fn main() {
    let args = settings();
    init_logs(args.log_format);
    // A write past a file-size limit (RLIMIT_FSIZE) must fail with EFBIG, answered to the
    // client, instead of killing the server with SIGXFSZ: a handler that does nothing.
    let _xfsz = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(
        rustix::process::Signal::XFSZ.as_raw(),
    ));
    raise_fd_limit();
    if !args.rdma_listen.is_empty() {
        check_memlock_limit();
    }
    let required = |v: Option<PathBuf>, long: &str| {
        v.unwrap_or_else(|| {
            eprintln!(
                "handoffd: --{long} is required: give the flag, {} or `{long} = ...` in --config",
                config::env_name(long)
            );
            std::process::exit(2)
        })
    };
    let opts = ServerOptions {
        root: required(args.root, "root"),
        state: required(args.state, "state"),
        clients: required(args.clients, "clients"),
        listen: args.listen,
        data_listen: args.data_listen,
        rdma_listen: args.rdma_listen,
        rdma_workers: args
            .rdma_workers
            .map_or_else(handoff_server::data::rdma::workers, usize::from),
        durable_timeout: Duration::from_secs(args.durable_timeout),
        grace: Duration::from_secs(args.grace),
        limits: args.limits.limits(),
        quotas: args.limits.quotas(),
        admins: args.admins,
        peers: args.peers,
        peer_identity: args.peer_identity,
        reset_state: args.reset_state,
        metrics_listen: args.metrics_listen,
        store: match args.store {
            None => StoreChoice::Embedded,
            Some(url) => StoreChoice::Etcd {
                url,
                cluster: args.cluster,
                node: args.node.unwrap_or_else(|| {
                    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                        .map(|h| h.trim().to_owned())
                        .unwrap_or_else(|_| "localhost".into());
                    format!("{host}:{}", args.listen)
                }),
                lease_ttl: Duration::from_secs(args.lease_ttl.max(2)),
            },
        },
    };
    let running = match start(opts).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("handoffd: {e:#}");
            std::process::exit(start_failure_code(&e));
        }
    };
    tracing::info!(
        control = %running.control_addr,
        data = %running.data_addr,
        recovered_opens = running.recovered_opens,
        "handoffd ready"
    );
    // One line on stdout that scripts (and the tests) read to learn the bound ports.
    let metrics = running
        .metrics_addr
        .map_or(String::new(), |a| format!(" metrics={a}"));
    println!(
        "handoffd listening control={} data={}{metrics}",
        running.control_addr, running.data_addr
    );
    // Listeners bound, the table rebuilt from the store: systemd may start what depends on
    // this server.
    notify::notify(&format!(
        "READY=1\nSTATUS=serving: control {} data {}, {} opens recovered",
        running.control_addr, running.data_addr, running.recovered_opens
    ));
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("handoffd: cannot watch SIGTERM: {e}");
            std::process::exit(1);
        }
    };
    let cluster = running.cluster.clone();
    let stop = running.stop.clone();
    let shared = running.shared.clone();
    let result = tokio::select! {
        // First: a fatal cause wins over a task that ended because of it.
        biased;
        fatal = stop.wait() => {
            // Fenced, or the store failed: stop at once (a restart recovers the last state
            // the store took); a fenced node does not resign a lease it no longer holds.
            eprintln!("handoffd: {} (exit {})", fatal.why, fatal.code);
            std::process::exit(fatal.code);
        }
        r = running.wait() => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = term.recv() => Ok(()),
    };
    notify::notify("STOPPING=1");
    // Reads' access counts are written lazily (some by flushers on the RDMA serving
    // threads' runtimes, which nothing waits for at exit), and changes made while etcd was
    // unreachable wait for it: all of them go into the store now.
    let settled = match tokio::task::spawn_blocking(move || shared.settle()).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = settled {
        eprintln!("handoffd: the last access counts may not be in the store: {e}");
    }
    if let Some(fatal) = stop.fatal() {
        // The last commit found the node fenced, or the store failing.
        eprintln!("handoffd: {} (exit {})", fatal.why, fatal.code);
        std::process::exit(fatal.code);
    }
    if let Some(c) = cluster {
        // Hand over at once instead of making the passive node wait out the lease.
        c.resign();
    }
    if let Err(e) = result {
        eprintln!("handoffd: {e:#}");
        std::process::exit(1);
    }
    tracing::info!("handoffd stopped; state is on disk");
}

/// The settings from flags, the environment and the --config file; --print-config prints
/// them and exits. A bad setting exits 2 naming it and where it came from.
fn settings() -> Args {
    use clap::{CommandFactory, FromArgMatches};
    let cmd = Args::command();
    if std::env::args_os().skip(1).any(|a| a == "--man-page") {
        let mut out = Vec::new();
        if let Err(e) = clap_mangen::Man::new(cmd).section("8").render(&mut out) {
            eprintln!("handoffd: {e}");
            std::process::exit(1);
        }
        print!("{}", String::from_utf8_lossy(&out));
        std::process::exit(0);
    }
    // Only HANDOFFD_ variables are read, and one that is not UTF-8 is a bad setting (another
    // program's variables may be anything).
    let mut env = std::collections::BTreeMap::new();
    for (k, v) in std::env::vars_os() {
        let Some(k) = k.to_str().filter(|k| k.starts_with(config::ENV_PREFIX)) else {
            continue;
        };
        match v.into_string() {
            Ok(v) => {
                env.insert(k.to_owned(), v);
            }
            Err(_) if k.starts_with("HANDOFFD_FAULT_") => {}
            Err(_) => {
                eprintln!("handoffd: {k}: the value is not UTF-8");
                std::process::exit(2);
            }
        }
    }
    let layered = match config::parse(&cmd, std::env::args_os().collect(), &env) {
        Ok(l) => l,
        Err(config::ConfigError::Clap(e)) => e.exit(),
        Err(e) => {
            eprintln!("handoffd: {e}");
            std::process::exit(2);
        }
    };
    let args = Args::from_arg_matches(&layered.matches).unwrap_or_else(|e| e.exit());
    if args.print_config {
        print!("{}", config::print(&cmd, &layered));
        std::process::exit(0);
    }
    args
}

/// Exit status of a server that could not start: 5 for a secret file open to others (as the
/// CLI's authentication failures), 75 when fenced and 70 when the store refused the first
/// write (as once serving), 1 otherwise.
fn start_failure_code(e: &anyhow::Error) -> i32 {
    use handoff_server::auth::AuthError;
    use handoff_server::net::{EXIT_FENCED, EXIT_STORE_FAILED};
    use handoff_server::store::StoreError;
    use handoff_server::Error;
    e.chain()
        .find_map(|c| match c.downcast_ref::<Error>()? {
            Error::Auth(AuthError::Exposed(_)) => Some(5),
            Error::Store(StoreError::Fenced(_)) => Some(EXIT_FENCED),
            Error::Store(StoreError::Failed(_)) => Some(EXIT_STORE_FAILED),
            _ => None,
        })
        .unwrap_or(1)
}

/// Registered memory the RDMA data path needs at least: one connection's buffers and file
/// windows.
const MIN_MEMLOCK: u64 = 64 << 20;

/// RDMA registers (pins) memory, which RLIMIT_MEMLOCK caps for a process without
/// CAP_IPC_LOCK; past the cap every registration fails and RDMA clients are refused one by
/// one. Say so at start, with what to set, instead.
fn check_memlock_limit() {
    use rustix::process::{getrlimit, Resource};
    let Some(bytes) = getrlimit(Resource::Memlock).current else {
        return; // unlimited
    };
    if has_ipc_lock() {
        return; // CAP_IPC_LOCK: the limit does not apply
    }
    let fix = "set LimitMEMLOCK=infinity in the systemd unit (the packaged one does), \
               `ulimit -l unlimited`, or memlock in /etc/security/limits.conf";
    if bytes < MIN_MEMLOCK {
        eprintln!(
            "handoffd: --rdma-listen needs to register memory, but RLIMIT_MEMLOCK is {} KiB \
             (at least {} MiB is needed): {fix}",
            bytes / 1024,
            MIN_MEMLOCK >> 20
        );
        std::process::exit(1);
    }
    if bytes < 1 << 30 {
        tracing::warn!(
            "RLIMIT_MEMLOCK is {} MiB: only a few RDMA connections can register their \
             buffers at once; {fix}",
            bytes >> 20
        );
    }
}

/// Whether this process has CAP_IPC_LOCK (bit 14 of the effective set in
/// /proc/self/status), which lifts the locked-memory limit.
fn has_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// Every durable open keeps its file open (so its key follows the file, not the path): raise
/// the soft limit on descriptors to the hard one, as servers holding many files do.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return;
    }
    limit.current = limit.maximum;
    match setrlimit(Resource::Nofile, limit) {
        Ok(()) => tracing::debug!(max = ?limit.maximum, "descriptor limit raised"),
        Err(e) => tracing::warn!(
            "cannot raise the descriptor limit ({e}): at most {:?} files can be held open",
            getrlimit(Resource::Nofile).current
        ),
    }
}
