//! The control channel's server: one task per connection, one request at a time, each decided
//! by the core through [`Shared`].

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use super::accept::{accept_loop, handshake};
use super::admission::{Seat, Ticket};
use super::shared::Shared;
use super::Channel;
use super::Timeouts;
use crate::state::resume_key::SEALED_LEN;
use crate::state::{CoreError, HandleId, OpenRequest};
use crate::wire::{FileInfo, Message, INBOX_PAGE};
use crate::Error;

pub struct ControlServer {
    listener: TcpListener,
    shared: Shared,
}

impl ControlServer {
    pub async fn bind(addr: SocketAddr, shared: Shared) -> Result<Self, Error> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self::from_listener(listener, shared))
    }

    pub fn from_listener(listener: TcpListener, shared: Shared) -> Self {
        Self { listener, shared }
    }

    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        Ok(self.listener.local_addr()?)
    }

    pub async fn serve(self) -> Result<(), Error> {
        let shared = self.shared.clone();
        accept_loop(
            &self.listener,
            &self.shared.admission,
            "control",
            move |stream, ticket| handle_connection(stream, shared.clone(), ticket),
        )
        .await
    }
}

async fn handle_connection(stream: TcpStream, shared: Shared, ticket: Ticket) -> Result<(), Error> {
    stream.set_nodelay(true)?;
    let mut chan = Channel::new(stream);
    let (client, seat) = handshake(&mut chan, &shared, ticket).await?;
    tracing::debug!(client, "authenticated");
    chan.set_timeouts(Timeouts {
        frame: Some(shared.config.limits.frame_timeout),
        idle: shared.config.limits.idle_timeout,
    });
    let mut handles = Vec::new();
    let result = serve_requests(&mut chan, &shared, &client, &seat, &mut handles).await;
    for h in handles {
        shared.detach_off_runtime(h).await;
    }
    match result {
        Err(Error::Goodbye(why)) => {
            tracing::info!(
                client,
                "closing a control connection: {why}; its opens stay durable"
            );
            say_goodbye(chan, why).await;
            Ok(())
        }
        Err(Error::Idle(after)) => {
            tracing::info!(
                client,
                "closing an idle control connection; its opens stay durable"
            );
            say_goodbye(
                chan,
                format!("closed after {} s without a request", after.as_secs()),
            )
            .await;
            Ok(())
        }
        other => other,
    }
}

/// Tells the peer the connection closes (so it knows nothing it sent later was processed),
/// then closes it without a reset: a reset could discard the goodbye before it is read.
async fn say_goodbye(mut chan: Channel<TcpStream>, message: String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = chan.send(&Message::Goodbye { message }).await;
    let stream = chan.get_mut();
    let _ = stream.shutdown().await;
    // Read (and drop) what the peer still sends until it closes too, briefly.
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Handles a control connection remembers before it first forgets those of closed opens.
const PRUNE_HANDLES_AT: usize = 4096;

async fn serve_requests(
    chan: &mut Channel<TcpStream>,
    shared: &Shared,
    client: &str,
    seat: &Seat,
    handles: &mut Vec<HandleId>,
) -> Result<(), Error> {
    let mut prune_at = PRUNE_HANDLES_AT;
    loop {
        // A request under way is answered; one not started waits on the revocation too.
        let received = tokio::select! {
            r = chan.recv() => r,
            () = seat.revoked() => {
                return Err(Error::Goodbye(
                    "this client was removed from the server's clients file, or its secret \
                     changed"
                        .into(),
                ))
            }
        };
        let msg = match received {
            Ok(Some(msg)) => msg,
            Ok(None) => return Ok(()),
            // Idle, but holding opens: it stays (closing it would start their durable
            // timeouts under a client that is still there). Only one holding nothing is let go.
            Err(Error::Idle(_)) if shared.still_attached(handles) => continue,
            Err(e) => return Err(e),
        };
        let reply = match msg {
            // The one request that needs the channel itself: its key-wrap key.
            Message::Import {
                mac_key,
                records,
                counters,
            } => {
                let merged = match super::drain::require_peer(shared, client) {
                    Ok(()) => {
                        let key = chan.wrap_secret(&mac_key)?;
                        super::drain::import(shared, key, records, counters).await
                    }
                    Err(e) => Err(e),
                };
                chan.send(&merged.unwrap_or_else(|e| {
                    tracing::info!(client, "import refused: {e}");
                    e.to_message()
                }))
                .await?;
                continue;
            }
            msg => msg,
        };
        let reply = match dispatch(shared, client, reply).await {
            Ok((reply, handle)) => {
                handles.extend(handle);
                if handles.len() > prune_at {
                    // Forget the handles of opens closed since (bounded memory for a long
                    // connection that opens and closes without end). The scan runs under the
                    // state lock, so not on every request of a connection that holds many
                    // opens: only once what it holds has doubled since the last one.
                    shared.still_attached(handles);
                    prune_at = (2 * handles.len()).max(PRUNE_HANDLES_AT);
                }
                reply
            }
            Err(e) => {
                tracing::info!(client, "request refused: {e}");
                e.to_message()
            }
        };
        chan.send(&reply).await?;
    }
}

fn sealed_key(key: &[u8]) -> Result<(), Error> {
    if key.len() > 56 || key.len() < SEALED_LEN {
        return Err(Error::not_found("resume key rejected: wrong length"));
    }
    Ok(())
}

/// A new open: the file is opened (or created) beneath the root outside the server's lock,
/// the core decides on what was found, and only a granted open truncates.
async fn open(
    shared: &Shared,
    client: String,
    p: crate::wire::OpenParams,
) -> Result<(Vec<u8>, HandleId, FileInfo), Error> {
    shared.precheck_open(&client, &p)?;
    let (path, create, write) = (p.path.clone(), p.create, p.mode.can_write());
    let opened = shared
        .fs(move |s| {
            if create {
                // Creating changes the file system: not once the server is stopping.
                s.writable()?;
                s.config.root.create_file(&path)
            } else {
                s.config.root.open_file(&path, write)
            }
        })
        .await?;
    let req = OpenRequest {
        client: client.clone(),
        path: p.path.clone(),
        file_id: opened.identity.file_id(),
        mode: p.mode,
        share: p.share,
        locks: p.locks.clone(),
        pid: p.pid,
        truncate: p.truncate,
    };
    let size = opened.size;
    let file_id = req.file_id;
    // A truncation changes the file's bytes: refused once the server stops or drains, and
    // on its way from before the open (which counts it, and holds the file's change mark)
    // until it is counted again after the cut.
    let changing = match p.truncate {
        true => Some(shared.changing_bytes()?),
        false => None,
    };
    // The open and its cut in one call off the async workers: a request cancelled
    // meanwhile cannot leave the cut begun in the core and never ended.
    let (granted, truncated) = shared
        .fs(move |s| {
            let (granted, file) = s.open_blocking(req, opened)?;
            let Some(in_flight) = changing else {
                return Ok((granted, Ok(())));
            };
            let mut change = s.file_change_begun(file_id, Some(granted.handle), in_flight);
            let cut = s.may_land().and_then(|()| {
                change.may_have_landed();
                file.set_len(0)
                    .map_err(|e| Error::file_system("truncating the file", &e))
            });
            // Another open may have looked since the open counted it: counted again
            // (nothing is written if nobody looked), a failed cut too (it may have cut some).
            s.wrote(&mut change);
            Ok((granted, cut))
        })
        .await?;
    let key = granted.sealed.to_vec();
    if p.truncate {
        if let Err(e) = truncated {
            let k = key.clone();
            let closed = shared
                .run(move |core, _| Ok(core.close(&client, &k)?))
                .await;
            if let Err(why) = closed {
                // Not closed (the store is unreachable, say): at least give the handle back,
                // so the open's durable timeout runs.
                tracing::warn!("an open whose truncation failed could not be closed: {why}");
                shared.detach_off_runtime(granted.handle).await;
            }
            return Err(e);
        }
        shared
            .truncations
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    let info = FileInfo {
        mode: p.mode,
        share: p.share,
        locks: p.locks,
        size: if p.truncate { 0 } else { size },
    };
    Ok((key, granted.handle, info))
}

/// The server's counters and its admission counts.
fn stats_reply(shared: &Shared) -> Message {
    let mut counters = shared.stats.snapshot();
    let a = shared.admission.counts();
    counters.extend([
        ("connections_authenticated".into(), a.authenticated as u64),
        (
            "connections_unauthenticated".into(),
            a.unauthenticated as u64,
        ),
        ("connections_evicted".into(), a.evicted),
        ("connections_turned_away".into(), a.turned_away),
        ("connections_refused".into(), a.refused),
    ]);
    Message::StatsReply { counters }
}

/// A control request's name in the metrics.
fn request_name(msg: &Message) -> &'static str {
    match msg {
        Message::Open(_) => "open",
        Message::Close { .. } => "close",
        Message::Pass { .. } => "pass",
        Message::Inbox { .. } => "inbox",
        Message::Endpoints => "endpoints",
        Message::Lock { take: true, .. } => "lock",
        Message::Lock { take: false, .. } => "unlock",
        Message::Stats => "stats",
        Message::Stat { .. } => "stat",
        Message::List { .. } => "list",
        Message::MakeDir { .. } => "mkdir",
        Message::Remove { .. } => "remove",
        Message::Rename { .. } => "rename",
        Message::Truncate { .. } => "truncate",
        Message::AdminOpens { .. } | Message::AdminClose { .. } | Message::Drain { .. } => "admin",
        _ => "other",
    }
}

/// Serves one request, counted (and an open timed) in the metrics.
async fn dispatch(
    shared: &Shared,
    client: &str,
    msg: Message,
) -> Result<(Message, Option<HandleId>), Error> {
    let name = request_name(&msg);
    let started = std::time::Instant::now();
    let result = serve_request(shared, client, msg).await;
    super::metrics::control_request(name, result.is_ok());
    if name == "open" {
        super::metrics::request_took("open", started);
    }
    result
}

async fn serve_request(
    shared: &Shared,
    client: &str,
    msg: Message,
) -> Result<(Message, Option<HandleId>), Error> {
    let client = client.to_owned();
    let referral = match msg {
        Message::Inbox { .. } | Message::Endpoints => shared.referral(),
        _ => None,
    };
    match msg {
        Message::Open(p) => {
            let (key, handle, info) = open(shared, client, p).await?;
            Ok((Message::Opened { key, handle, info }, Some(handle)))
        }
        Message::Close { key } => {
            sealed_key(&key)?;
            shared
                .run(move |core, _| Ok(core.close(&client, &key)?))
                .await?;
            Ok((Message::Done, None))
        }
        Message::Pass { key, to } => {
            sealed_key(&key)?;
            if !shared.admission.directory().contains(&to) {
                return Err(Error::not_found(format!(
                    "no client named {to:?} is known to this server"
                )));
            }
            let key = shared
                .run(move |core, _| Ok(core.pass(&client, &key, &to)?))
                .await?;
            Ok((Message::Key { key: key.to_vec() }, None))
        }
        Message::Inbox { .. } | Message::Endpoints if referral.is_some() => {
            let peer = referral.unwrap_or_default();
            Err(Error::Core(CoreError::Referred { peer }))
        }
        Message::Inbox { after } => {
            let (keys, next) = shared.peek(|core| core.inbox_page(&client, after, INBOX_PAGE));
            Ok((Message::Keys { keys, next }, None))
        }
        Message::Stats => Ok((stats_reply(shared), None)),
        Message::Endpoints => Ok((
            Message::EndpointList {
                endpoints: shared.config.endpoints.clone(),
                tls_fingerprint: shared.config.tls_fingerprint,
            },
            None,
        )),
        Message::Lock { key, range, take } => {
            sealed_key(&key)?;
            shared
                .run(move |core, _| Ok(core.lock(&client, &key, range, take)?))
                .await?;
            Ok((Message::Done, None))
        }
        Message::Stat { .. }
        | Message::List { .. }
        | Message::MakeDir { .. }
        | Message::Remove { .. }
        | Message::Rename { .. }
        | Message::Truncate { .. } => {
            Ok((super::namespace::request(shared, &client, msg).await?, None))
        }
        Message::AdminOpens { .. } | Message::AdminClose { .. } => {
            Ok((super::admin::request(shared, &client, msg).await?, None))
        }
        Message::Drain { .. }
        | Message::ImportInbox { .. }
        | Message::Missing { .. }
        | Message::FileChunk { .. } => {
            Ok((super::drain::request(shared, &client, msg).await?, None))
        }
        other => Err(Error::Protocol(format!(
            "{:#04x} is not a control-channel request",
            other.kind()
        ))),
    }
}
