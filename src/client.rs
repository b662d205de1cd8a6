//! The client library: the control channel for opens, closes, passes and the inbox, and the
//! data channel for duplicate handles.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use handoff_core::auth::Identity;
use handoff_core::state::resume_key::{sealed_to_token, token_to_sealed};
use handoff_core::state::{ByteRange, CloseTarget, Mode, OpenSummary, ShareMode};
use handoff_core::wire::{Endpoint, EndpointKind, ErrorCode, FileInfo, Message, OpenParams};
use handoff_core::Error;
use handoff_datapath::tcp::{DataClient, Transport};
use handoff_datapath::ControlClient;

/// How to open a file.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    pub mode: Mode,
    pub share: ShareMode,
    pub locks: Vec<ByteRange>,
    pub create: bool,
    pub truncate: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            mode: Mode::Read,
            share: ShareMode::ALL,
            locks: Vec::new(),
            create: false,
            truncate: false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Opened {
    /// The printable resume key.
    pub token: String,
    pub handle: u64,
    pub info: FileInfo,
}

/// Where the server's data channel listens, and how to recognise its TLS certificate.
#[derive(Clone, Debug)]
pub struct Endpoints {
    pub list: Vec<Endpoint>,
    pub tls_fingerprint: Option<[u8; 32]>,
}

impl Endpoints {
    pub fn addr(&self, kind: EndpointKind) -> Option<&str> {
        self.list
            .iter()
            .find(|e| e.kind == kind)
            .map(|e| e.addr.as_str())
    }
}

/// How long a client given several servers waits for one of them to answer (a failover
/// takes the active's lease TTL, 5 s by default, plus its successor's start).
pub const FAILOVER_WAIT: Duration = Duration::from_secs(30);
/// Referrals followed for one request before giving up (a drained server refers to its peer;
/// a loop of referrals is a misconfiguration).
const MAX_REFERRALS: usize = 4;

/// What a planned drain moved (`handoff admin drain`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainReport {
    pub opens: u64,
    pub files_sent: u64,
    pub bytes_sent: u64,
}

/// An authenticated control connection to one server, which follows referrals (a drained
/// server names its peer) by reconnecting there.
pub struct Client {
    control: ControlClient,
    identity: Identity,
    server: SocketAddr,
    /// The servers as given (a data handle resumes through them when its connection breaks).
    servers: Vec<String>,
    /// How long `open` keeps retrying while a restarted server is in its grace period.
    pub grace_wait: Duration,
}

/// A printed key back to its sealed bytes; a malformed one is "key unknown".
pub fn parse_key(token: &str) -> Result<Vec<u8>, Error> {
    token_to_sealed(token).map_err(|e| Error::not_found(format!("resume key rejected: {e}")))
}

pub(crate) fn unexpected(msg: &Message) -> Error {
    Error::Protocol(format!("unexpected reply {:#04x}", msg.kind()))
}

/// Connects to the first of `list` that answers and authenticates. With one address its
/// error comes back as is; with several, one error names what each said.
async fn connect_first(
    list: &[String],
    identity: &Identity,
) -> Result<(ControlClient, SocketAddr), Error> {
    let mut why = Vec::new();
    for addr in list {
        let err = match ControlClient::connect(addr, identity).await {
            Ok(c) => {
                let peer = c.peer_addr()?;
                return Ok((c, peer));
            }
            Err(e) => e,
        };
        if list.len() == 1 {
            // The one server is down or unreachable: exit 6 (retry later), as when every
            // server of a group is; a refusal after connecting (authentication) stays itself.
            return Err(match err {
                Error::Io(e) => Error::Unreachable(format!("did not answer ({e})")),
                Error::TimedOut(_) | Error::Closed => {
                    Error::Unreachable(format!("did not answer ({err})"))
                }
                other => other,
            });
        }
        tracing::info!("server {addr}: {err}; trying the next one");
        why.push(format!("{addr}: {err}"));
    }
    Err(Error::Unreachable(format!(
        "no listed server answered ({})",
        why.join("; ")
    )))
}

impl Client {
    /// Connects to `servers`: one control address, or several comma-separated (the members
    /// of an active/passive group, in any order), of which the first that answers is used.
    pub async fn connect(servers: &str, identity: &Identity) -> Result<Self, Error> {
        let list: Vec<String> = servers
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if list.is_empty() {
            return Err(Error::bad_request("no server address given"));
        }
        // A group of servers with none answering is most likely between an active's death
        // and its successor's start: wait that out rather than fail the command.
        let started = Instant::now();
        let (control, server) = loop {
            match connect_first(&list, identity).await {
                Err(Error::Unreachable(why))
                    if list.len() > 1 && started.elapsed() < FAILOVER_WAIT =>
                {
                    tracing::warn!("{why}; waiting for a failover");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                other => break other?,
            }
        };
        Ok(Self {
            control,
            identity: identity.clone(),
            server,
            servers: list,
            grace_wait: Duration::from_secs(120),
        })
    }

    /// Connects the control channel again, to whichever listed server answers (after the
    /// server restarted, failed over or cut the connection). Opens are not affected: they are
    /// the server's, reached by key.
    pub async fn reconnect(&mut self) -> Result<(), Error> {
        let fresh = Client::connect(&self.servers.join(","), &self.identity).await?;
        self.control = fresh.control;
        self.server = fresh.server;
        Ok(())
    }

    /// The control address this client is connected to now (after any referral).
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// One request; a referral reconnects to the peer it names and asks again, and so does a
    /// goodbye (the server closed an idle connection without reading the request).
    pub(crate) async fn request(&mut self, msg: &Message) -> Result<Message, Error> {
        let mut hops = 0;
        let mut reconnected = false;
        loop {
            match self.control.request(msg).await {
                Err(Error::Goodbye(why)) if !reconnected => {
                    reconnected = true;
                    tracing::debug!(
                        "server {} closed the connection ({why}); reconnecting",
                        self.server
                    );
                    let (control, server) =
                        connect_first(&[self.server.to_string()], &self.identity).await?;
                    self.control = control;
                    self.server = server;
                }
                Err(Error::Referred(peer)) if hops < MAX_REFERRALS => {
                    hops += 1;
                    tracing::info!(
                        "server {} was drained; following its referral to {peer}",
                        self.server
                    );
                    let (control, server) = connect_first(&[peer], &self.identity).await?;
                    self.control = control;
                    self.server = server;
                }
                other => return other,
            }
        }
    }

    /// Admin: drains the connected server into `to` (a control address); from then on its
    /// clients are referred there.
    pub async fn drain(&mut self, to: &str) -> Result<DrainReport, Error> {
        match self
            .control
            .request(&Message::Drain { to: to.to_owned() })
            .await?
        {
            Message::Drained {
                opens,
                files_sent,
                bytes_sent,
            } => Ok(DrainReport {
                opens,
                files_sent,
                bytes_sent,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// Admin: every open of the server, with its holders, locks, channels and deadline.
    pub async fn admin_opens(&mut self) -> Result<Vec<OpenSummary>, Error> {
        self.pages(
            |after| Message::AdminOpens { after },
            |reply| match reply {
                Message::OpenList { opens, next } => Ok((opens, next)),
                other => Err(unexpected(&other)),
            },
        )
        .await
    }

    /// Every item of a paged request: `ask(cursor)` from cursor 0 until a reply's next
    /// cursor is 0 (or does not move on).
    async fn pages<T>(
        &mut self,
        ask: impl Fn(u64) -> Message,
        page: impl Fn(Message) -> Result<(Vec<T>, u64), Error>,
    ) -> Result<Vec<T>, Error> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let (items, next) = page(self.request(&ask(after)).await?)?;
            all.extend(items);
            if next == 0 || next <= after {
                return Ok(all);
            }
            after = next;
        }
    }

    /// Admin: force-closes the opens `target` names; how many were closed.
    pub async fn admin_close(&mut self, target: &CloseTarget) -> Result<u64, Error> {
        let (key, client, path) = target.to_fields();
        match self
            .request(&Message::AdminClose { key, client, path })
            .await?
        {
            Message::ClosedOpens { count } => Ok(count),
            other => Err(unexpected(&other)),
        }
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Opens `path`. While the server is in its post-restart grace period, waits and retries.
    pub async fn open(&mut self, path: &str, opts: &OpenOptions) -> Result<Opened, Error> {
        let started = Instant::now();
        let msg = Message::Open(OpenParams {
            path: path.to_owned(),
            mode: opts.mode,
            share: opts.share,
            locks: opts.locks.clone(),
            create: opts.create,
            truncate: opts.truncate,
            pid: std::process::id(),
        });
        loop {
            match self.request(&msg).await {
                Ok(Message::Opened { key, handle, info }) => {
                    return Ok(Opened {
                        token: sealed_to_token(&key),
                        handle,
                        info,
                    })
                }
                Ok(other) => return Err(unexpected(&other)),
                Err(Error::Remote {
                    code: ErrorCode::Grace,
                    retry_after_ms,
                    ..
                }) if started.elapsed() < self.grace_wait => {
                    let wait = Duration::from_millis(retry_after_ms.clamp(100, 5_000));
                    tracing::warn!(
                        "server is in its grace period after a restart; retrying in {wait:?}"
                    );
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub(crate) async fn expect_done(&mut self, msg: Message) -> Result<(), Error> {
        match self.request(&msg).await? {
            Message::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Closes the open the key names (every handle of it).
    pub async fn close(&mut self, token: &str) -> Result<(), Error> {
        self.expect_done(Message::Close {
            key: parse_key(token)?,
        })
        .await
    }

    /// Passes the open to client `to`; returns the key made for it.
    pub async fn pass(&mut self, token: &str, to: &str) -> Result<String, Error> {
        match self
            .request(&Message::Pass {
                key: parse_key(token)?,
                to: to.to_owned(),
            })
            .await?
        {
            Message::Key { key } => Ok(sealed_to_token(&key)),
            other => Err(unexpected(&other)),
        }
    }

    /// Every key passed to this client whose open still exists, oldest first (fetched a page
    /// at a time).
    pub async fn inbox(&mut self) -> Result<Vec<String>, Error> {
        self.pages(
            |after| Message::Inbox { after },
            |reply| match reply {
                Message::Keys { keys, next } => Ok((keys, next)),
                other => Err(unexpected(&other)),
            },
        )
        .await
    }

    /// The server's counters.
    pub async fn stats(&mut self) -> Result<Vec<(String, u64)>, Error> {
        match self.request(&Message::Stats).await? {
            Message::StatsReply { counters } => Ok(counters),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn lock(&mut self, token: &str, range: ByteRange, take: bool) -> Result<(), Error> {
        self.expect_done(Message::Lock {
            key: parse_key(token)?,
            range,
            take,
        })
        .await
    }

    /// The server's data endpoints, with unspecified hosts replaced by the control peer's.
    pub async fn endpoints(&mut self) -> Result<Endpoints, Error> {
        match self.request(&Message::Endpoints).await? {
            Message::EndpointList {
                endpoints,
                tls_fingerprint,
            } => {
                let list = endpoints
                    .into_iter()
                    .map(|e| Endpoint {
                        addr: self.reachable(&e.addr),
                        ..e
                    })
                    .collect();
                Ok(Endpoints {
                    list,
                    tls_fingerprint,
                })
            }
            other => Err(unexpected(&other)),
        }
    }

    fn reachable(&self, addr: &str) -> String {
        match addr.parse::<SocketAddr>() {
            Ok(a) if a.ip().is_unspecified() => {
                SocketAddr::new(self.server.ip(), a.port()).to_string()
            }
            _ => addr.to_owned(),
        }
    }

    /// A duplicate handle for `token` on `channel` (None: RDMA if the server offers it and
    /// this host has a device, else TCP). `direct` asks RDMA direct mode (one-sided reads; writes where granted).
    pub async fn open_data(
        &mut self,
        token: &str,
        channel: Option<crate::Channel>,
        direct: bool,
    ) -> Result<crate::DataHandle, handoff_datapath::DataError> {
        let request = handoff_datapath::rdma::client::CHUNK;
        self.open_data_sized(token, channel, direct, request).await
    }

    /// [`open_data`](Self::open_data) whose RDMA requests carry at most `rdma_request` bytes
    /// each (up to 8 of them in flight): smaller requests pipeline a caller's single large
    /// read or write.
    pub async fn open_data_sized(
        &mut self,
        token: &str,
        channel: Option<crate::Channel>,
        direct: bool,
        rdma_request: usize,
    ) -> Result<crate::DataHandle, handoff_datapath::DataError> {
        use crate::Channel;
        let eps = self.endpoints().await?;
        let rdma: Vec<SocketAddr> = eps
            .list
            .iter()
            .filter(|e| e.kind == EndpointKind::Rdma)
            .filter_map(|e| e.addr.parse().ok())
            .collect();
        let channel = channel.unwrap_or(if !rdma.is_empty() && crate::data::host_has_rdma() {
            Channel::Rdma
        } else {
            Channel::Tcp
        });
        match channel {
            Channel::Rdma => {
                if rdma.is_empty() {
                    return Err(Error::bad_request(
                        "the server offers no RDMA endpoint (start handoffd with --rdma-listen)",
                    )
                    .into());
                }
                let key = parse_key(token)?;
                let identity = self.identity.clone();
                let h = crate::data::RdmaHandle::connect(
                    rdma,
                    &identity,
                    &key,
                    direct,
                    rdma_request.clamp(1, handoff_datapath::rdma::client::CHUNK),
                )
                .await?;
                Ok(crate::DataHandle::Rdma(Box::new(h)))
            }
            Channel::Tcp | Channel::Tls => {
                let transport = if channel == Channel::Tls {
                    Transport::Tls
                } else {
                    Transport::Tcp
                };
                let client = self.attach_with(token, transport, &eps).await?;
                // Resuming goes through every server given, plus the one a referral led to.
                let here = self.server.to_string();
                let mut servers = self.servers.clone();
                if !servers.contains(&here) {
                    servers.insert(0, here);
                }
                let resume = crate::stream_handle::Resume {
                    servers: servers.join(","),
                    identity: self.identity.clone(),
                    token: token.to_owned(),
                    transport,
                };
                Ok(crate::DataHandle::Stream(Box::new(
                    crate::StreamHandle::new(client, Some(resume)),
                )))
            }
        }
    }

    /// A duplicate handle for `token` over a TCP or TLS data channel.
    pub async fn attach(
        &mut self,
        token: &str,
        transport: Transport,
    ) -> Result<DataClient, handoff_datapath::DataError> {
        let eps = self.endpoints().await?;
        self.attach_with(token, transport, &eps).await
    }

    async fn attach_with(
        &self,
        token: &str,
        transport: Transport,
        eps: &Endpoints,
    ) -> Result<DataClient, handoff_datapath::DataError> {
        let key = parse_key(token)?;
        let kind = match transport {
            Transport::Tcp => EndpointKind::Tcp,
            Transport::Tls => EndpointKind::Tls,
        };
        let addr = eps
            .addr(kind)
            .ok_or_else(|| {
                Error::bad_request(format!("the server offers no {transport} data endpoint"))
            })?
            .to_owned();
        DataClient::connect(&addr, transport, eps.tls_fingerprint, &self.identity, &key).await
    }
}
