//! Wiring of `handoffd`: the store, the core, the control listener, the data listener (TCP and
//! TLS on one port) and the timer task.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use std::sync::Arc;

use handoff_datapath::tcp::ServerIdentity;
use handoff_server::auth::ClientDirectory;
use handoff_server::cluster::{Cluster, EtcdUrl, Health};
use handoff_server::data::DataServer;
use handoff_server::net::{ControlServer, Limits, ServerConfig, Shared, Stop};

use super::store_fault::FailingStore;
use handoff_server::state::{CoreConfig, Quotas, ServerCore};
use handoff_server::store::{EtcdStore, RedbStore, Store};
use handoff_server::wire::{Endpoint, EndpointKind};
use rand::RngCore;
use tokio::net::TcpListener;

#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub root: PathBuf,
    pub state: PathBuf,
    pub clients: PathBuf,
    pub listen: SocketAddr,
    pub data_listen: Option<SocketAddr>,
    /// RDMA (rdma_cm) listen addresses: the IP of an RDMA-capable netdev and a port. Several
    /// give the client one QP per address (multichannel).
    pub rdma_listen: Vec<SocketAddr>,
    /// Threads serving every RDMA connection.
    pub rdma_workers: usize,
    pub durable_timeout: Duration,
    pub grace: Duration,
    /// Connection caps and stall timeouts.
    pub limits: Limits,
    /// Per-client quotas on opens, locks and passed keys.
    pub quotas: Quotas,
    pub store: StoreChoice,
    /// Client names allowed to drain this server.
    pub admins: Vec<String>,
    /// Server identity names allowed to drain into this one.
    pub peers: Vec<String>,
    /// The identity file this server presents when it drains into a peer.
    pub peer_identity: Option<PathBuf>,
    /// Where Prometheus scrapes `/metrics` (none: no metrics endpoint).
    pub metrics_listen: Option<SocketAddr>,
    /// Replace a damaged, empty or missing embedded store with a new one (keeping the old
    /// file aside) instead of refusing to start.
    pub reset_state: bool,
}

/// Where the server keeps its state.
#[derive(Clone, Debug)]
pub enum StoreChoice {
    /// A redb database under `--state` (one server).
    Embedded,
    /// etcd, shared by an active/passive group of servers over one `--root`.
    Etcd {
        url: EtcdUrl,
        cluster: String,
        node: String,
        lease_ttl: Duration,
    },
}

/// A started server: its bound addresses and the tasks that serve them.
pub struct Running {
    pub control_addr: SocketAddr,
    pub data_addr: SocketAddr,
    /// Where `/metrics` is served, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    pub recovered_opens: usize,
    /// The cluster membership, when the store is etcd.
    pub cluster: Option<Arc<Cluster>>,
    /// Raised when the server must stop at once (fenced, or its store failed).
    pub stop: Arc<Stop>,
    /// The server's state: settled into the store on a clean stop.
    pub shared: Shared,
    tasks: tokio::task::JoinSet<anyhow::Result<()>>,
}

impl Running {
    /// Serves until a listener fails.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        match self.tasks.join_next().await {
            Some(r) => r.context("server task panicked")?,
            None => Ok(()),
        }
    }
}

/// The clients list (and who of them are admins and peers) and this server's own identity
/// towards its peers, each refused if other users may read it.
fn read_secrets(
    opts: &ServerOptions,
) -> anyhow::Result<(ClientDirectory, Option<handoff_server::auth::Identity>)> {
    let directory = read_clients(opts)?;
    let peer_identity = match &opts.peer_identity {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--peer-identity {}", path.display()))?;
            handoff_datapath::secrets::check_private(path)
                .map_err(handoff_server::Error::from)
                .context("--peer-identity")?;
            Some(
                handoff_server::auth::Identity::parse(&text)
                    .with_context(|| format!("--peer-identity {}", path.display()))?,
            )
        }
    };
    Ok((directory, peer_identity))
}

/// The clients file, refused if others may read it; warns of admins and peers it lacks.
fn read_clients(opts: &ServerOptions) -> anyhow::Result<ClientDirectory> {
    let clients = std::fs::read_to_string(&opts.clients)
        .with_context(|| format!("--clients {}", opts.clients.display()))?;
    handoff_datapath::secrets::check_private(&opts.clients)
        .map_err(handoff_server::Error::from)
        .context("--clients")?;
    let directory = ClientDirectory::parse(&clients)
        .with_context(|| format!("--clients {}", opts.clients.display()))?;
    if directory.is_empty() {
        tracing::warn!(
            "--clients {} lists no client: nobody can connect",
            opts.clients.display()
        );
    }
    for (flag, name) in opts
        .admins
        .iter()
        .map(|n| ("--admins", n))
        .chain(opts.peers.iter().map(|n| ("--peers", n)))
    {
        if !directory.contains(name) {
            tracing::warn!("{flag} names {name:?}, which --clients does not list");
        }
    }
    Ok(directory)
}

/// Rereads the clients file on every SIGHUP: added clients may connect at once; removed ones
/// (and ones whose secret changed) lose their connections, while their opens stay durable.
/// A file that cannot be used leaves the clients as they were.
async fn reload_clients_on_hangup(
    opts: ServerOptions,
    shared: Shared,
    mut hangups: tokio::signal::unix::Signal,
) -> anyhow::Result<()> {
    while hangups.recv().await.is_some() {
        let o = opts.clone();
        let read = tokio::task::spawn_blocking(move || read_clients(&o)).await?;
        match read {
            Err(e) => tracing::error!("SIGHUP: {e:#}; the clients stay as they were"),
            Ok(directory) => {
                let n = directory.len();
                let change = shared.admission.replace_directory(directory);
                tracing::info!(
                    clients = n,
                    added = ?change.added,
                    removed = ?change.removed,
                    changed = ?change.changed,
                    connections_closed = change.closed,
                    "SIGHUP: reloaded the clients file"
                );
            }
        }
    }
    Ok(())
}

/// The data endpoints clients are told about: TCP and TLS on one port, and each RDMA address.
fn advertised(data_addr: SocketAddr, rdma: &[SocketAddr]) -> Vec<Endpoint> {
    [EndpointKind::Tcp, EndpointKind::Tls]
        .into_iter()
        .map(|kind| Endpoint {
            kind,
            addr: data_addr.to_string(),
        })
        .chain(rdma.iter().map(|a| Endpoint {
            kind: EndpointKind::Rdma,
            addr: a.to_string(),
        }))
        .collect()
}

pub async fn start(opts: ServerOptions) -> anyhow::Result<Running> {
    let root = std::fs::canonicalize(&opts.root)
        .with_context(|| format!("--root {}: cannot use it", opts.root.display()))?;
    anyhow::ensure!(
        root.is_dir(),
        "--root {} is not a directory",
        root.display()
    );
    make_private_dir(&opts.state).with_context(|| format!("--state {}", opts.state.display()))?;
    let (directory, peer_identity) = read_secrets(&opts)?;
    // Served from the start, so a taken port stops the server at once and a passive node of
    // a group (which waits below for the lease) still answers scrapes, as not active; the
    // server's own series join once it serves.
    let serving: Arc<std::sync::OnceLock<Shared>> = Arc::default();
    let metrics_addr = match opts.metrics_listen {
        None => None,
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("--metrics-listen {addr}"))?;
            let handle = handoff_server::net::metrics::install()
                .map_err(|e| anyhow::anyhow!("--metrics-listen: {e}"))?;
            let bound = listener.local_addr()?;
            tokio::spawn(handoff_server::net::metrics_http::serve(
                listener,
                serving.clone(),
                handle,
            ));
            Some(bound)
        }
    };
    // Watched from the start: SIGHUP's default action would end the server.
    let hangups =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).context("SIGHUP")?;
    let (store, cluster) = open_store(&opts).await?;
    // (An etcd read blocks this thread briefly, as the redb read does.)
    let snapshot = store.load().context("reading the state store")?;
    let config = CoreConfig {
        durable_timeout_ms: opts.durable_timeout.as_millis() as u64,
        grace_ms: opts.grace.as_millis() as u64,
        quotas: opts.quotas,
        ..CoreConfig::default()
    };
    let now = handoff_server::net::now_ms();
    let core = ServerCore::recover(config, snapshot, now, rand::rngs::OsRng.next_u64());
    let recovered_opens = core.open_count();

    let tls = ServerIdentity::load_or_create(&opts.state).context("TLS certificate")?;
    let control = TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("--listen {}", opts.listen))?;
    let control_addr = control.local_addr()?;
    let data_want = opts
        .data_listen
        .unwrap_or_else(|| SocketAddr::new(control_addr.ip(), 0));
    let data = TcpListener::bind(data_want)
        .await
        .with_context(|| format!("--data-listen {data_want}"))?;
    let data_addr = data.local_addr()?;

    let shared = Shared::new(
        core,
        store,
        ServerConfig {
            root: handoff_server::net::Root::open(&root)
                .with_context(|| format!("--root {}", root.display()))?,
            endpoints: advertised(data_addr, &opts.rdma_listen),
            tls_fingerprint: Some(tls.fingerprint()),
            max_kept_files: kept_files_limit(&opts.limits),
            limits: opts.limits.clone(),
            admins: opts.admins.clone(),
            peers: opts.peers.clone(),
            peer_identity,
        },
        directory,
    )?;

    if !opts.rdma_listen.is_empty() {
        let serving =
            handoff_server::data::rdma::start(&opts.rdma_listen, shared.clone(), opts.rdma_workers);
        serving.with_context(|| {
            format!(
                "--rdma-listen {:?} (is rdma_rxe or an RDMA NIC up on that address?)",
                opts.rdma_listen
            )
        })?;
    }
    let stop = shared.stop.clone();
    let mut tasks = tokio::task::JoinSet::new();
    if shared.draining().is_some() {
        let s = shared.clone();
        tokio::spawn(handoff_server::net::resume_drain(s));
    }
    if cluster.is_some() {
        tasks.spawn(watch_lease(shared.clone()));
    }
    tasks.spawn(reload_clients_on_hangup(
        opts.clone(),
        shared.clone(),
        hangups,
    ));
    let _ = serving.set(shared.clone());
    let timers = shared.clone();
    tasks.spawn(async move {
        timers.run_timers().await;
        Ok(())
    });
    let control = ControlServer::from_listener(control, shared.clone());
    tasks.spawn(async move { control.serve().await.context("control listener") });
    let data = DataServer::from_listener(data, shared.clone(), Some(tls.server_config()?));
    tasks.spawn(async move { data.serve().await.context("data listener") });
    Ok(Running {
        control_addr,
        data_addr,
        metrics_addr,
        recovered_opens,
        cluster,
        stop,
        shared,
        tasks,
    })
}

/// How many files the server may keep open for opens: its descriptor limit, less room for
/// every listener's connections (control, data, RDMA: a session holds several descriptors),
/// the file-system calls in flight, the store and the process itself.
fn kept_files_limit(limits: &Limits) -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
    // Two descriptors a connection at most (a socket, the file its data channel reads).
    let connections = limits.connection_fds().saturating_mul(2);
    if limit < connections {
        tracing::warn!(
            "the descriptor limit ({limit}) is below what the connection caps may use \
             ({connections} for --max-connections {} and --max-unauthenticated {}, two each): \
             raise RLIMIT_NOFILE (LimitNOFILE= under systemd) or lower the caps; past the \
             limit, new connections wait in the kernel's backlog",
            limits.max_connections,
            limits.max_unauthenticated
        );
    }
    let reserve = connections
        .saturating_add(2 * handoff_server::net::FS_CALLS)
        .saturating_add(256);
    limit.saturating_sub(reserve).max(16)
}

/// The state directory holds the resume-key MAC key and the TLS key: only its owner may
/// enter it. Made 0700 if new; an existing one open to others is closed (and said so).
fn make_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            "--state {} was open to group or others (mode {mode:04o}); made 0700",
            dir.display()
        );
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// The embedded store, or (with etcd) this node's cluster membership and the shared store
/// once this node is active: a passive node waits here, before binding any listener.
async fn open_store(
    opts: &ServerOptions,
) -> anyhow::Result<(Box<dyn Store>, Option<Arc<Cluster>>)> {
    match &opts.store {
        StoreChoice::Embedded => {
            let store = RedbStore::open(&opts.state.join("handoff.redb"), opts.reset_state)
                .with_context(|| {
                    format!("opening the state store under {}", opts.state.display())
                })?;
            Ok((FailingStore::wrap(Box::new(store)), None))
        }
        StoreChoice::Etcd {
            url,
            cluster,
            node,
            lease_ttl,
        } => {
            let (u, c, n, ttl) = (url.clone(), cluster.clone(), node.clone(), *lease_ttl);
            let member = tokio::task::spawn_blocking(move || Cluster::connect(&u, &c, &n, ttl))
                .await?
                .with_context(|| format!("--store {url}"))?;
            tracing::info!(node = %node, cluster = %cluster, "joined; campaigning to be the active node");
            let advertise = opts.listen.to_string();
            let m = member.clone();
            tokio::task::spawn_blocking(move || m.campaign(&advertise))
                .await?
                .with_context(|| format!("--store {url}: election"))?;
            Ok((Box::new(EtcdStore::new(member.clone())), Some(member)))
        }
    }
}

/// Follows this node's lease: a fenced node stops at once (exit 75, see `Running::stop`) so
/// it serves nothing more; while etcd is unreachable the server refuses state changes and keeps serving reads;
/// when etcd answers again, what was deferred meanwhile is written.
async fn watch_lease(shared: Shared) -> anyhow::Result<()> {
    let mut was_active = true;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        match shared.health() {
            Health::Fenced(why) => {
                shared.stop.fenced(&why);
                // handoffd exits on the stop; this task must not end first (an ended task
                // reads as a clean shutdown).
                std::future::pending::<()>().await;
            }
            Health::Suspended(why) if was_active => {
                tracing::warn!("{why}");
                was_active = false;
            }
            Health::Active if !was_active => {
                tracing::info!("etcd answers again: serving state changes");
                was_active = true;
                if let Err(e) = shared.run(|_, _| Ok(())).await {
                    tracing::warn!("writing deferred state: {e}");
                }
            }
            _ => {}
        }
    }
}
