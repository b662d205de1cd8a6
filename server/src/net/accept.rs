//! Taking connections in, for every listener (control, TCP/TLS data): the accept loop with
//! admission, TCP keep-alive, and the server's side of the handshake.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use super::admission::{Admission, Seat, Ticket};
use super::shared::Shared;
use super::Channel;
use super::Timeouts;
use crate::Error;

/// How long a connection may take to authenticate before it is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server side of the handshake, bounded in time so a silent peer cannot hold a
/// connection slot. The authenticated client takes a seat (a refusal is answered with the
/// cap it hit), and from then on a frame that stalls half-way closes the connection.
pub async fn handshake<S>(
    chan: &mut Channel<S>,
    shared: &Shared,
    ticket: Ticket,
) -> Result<(String, Seat), Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // The seat is decided before the server's last handshake message, together with whether
    // admission closed this connection to make room meanwhile: a connection closed that way
    // ends without that message, so its client sees a handshake cut short and tries again
    // (a client told "welcome" and then closed would take it for a broken server).
    let directory = shared.admission.directory();
    let (client, seat) = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        chan.server_handshake(&directory, |client| {
            match shared.admission.authenticate(ticket, client, &directory) {
                Err(Error::Closed) => Err(Error::Closed),
                decided => Ok(decided),
            }
        }),
    )
    .await
    .map_err(|_| Error::Protocol("no authentication within 10 s".into()))?
    .inspect_err(|e| {
        if matches!(e, Error::Auth(_)) {
            super::metrics::connection_refused("auth_failed");
        }
    })?;
    chan.set_timeouts(Timeouts {
        frame: Some(shared.config.limits.frame_timeout),
        idle: None,
    });
    match seat {
        Ok(seat) => Ok((client, seat)),
        Err(e) => {
            tracing::info!(client, "connection refused: {e}");
            let _ = chan.send(&e.to_message()).await;
            Err(e)
        }
    }
}

/// How long an idle peer may be silent before the kernel probes it, the gap between probes,
/// and how many may go unanswered: a client that vanished without closing (power loss,
/// network outage) is noticed within about 35 s, its channels detach, and its opens' durable
/// timeouts start.
pub const KEEPALIVE: (Duration, Duration, u32) =
    (Duration::from_secs(20), Duration::from_secs(5), 3);

fn keep_alive(stream: &TcpStream) -> std::io::Result<()> {
    let (idle, interval, probes) = KEEPALIVE;
    let ka = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(interval)
        .with_retries(probes);
    socket2::SockRef::from(stream).set_tcp_keepalive(&ka)
}

/// Accepts connections until the listener fails, backing off briefly on accept errors, each
/// served by `handle` in its own task inside a span naming the channel and the peer. Every
/// connection is admitted with a [`Ticket`] (see [`Admission`]): one that admission closes to
/// make room before it authenticated ends at once.
pub async fn accept_loop<F, Fut, E>(
    listener: &TcpListener,
    admission: &Arc<Admission>,
    channel: &'static str,
    handle: F,
) -> Result<(), Error>
where
    F: Fn(TcpStream, Ticket) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(channel, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(e) = keep_alive(&stream) {
            tracing::warn!(channel, "cannot enable TCP keepalive: {e}");
        }
        let Some(ticket) = admission.arrive(peer.ip()) else {
            tracing::debug!(channel, %peer, "turned away: too many connections from this address are authenticating");
            continue; // dropping the stream closes it
        };
        let evicted = ticket.closer();
        let conn = handle(stream, ticket);
        tokio::spawn(
            async move {
                tokio::select! {
                    ended = conn => if let Err(e) = ended {
                        tracing::info!("connection ended: {e}");
                    },
                    _ = evicted.notified() => tracing::debug!(
                        "closed before it authenticated, to make room for newer connections"
                    ),
                }
            }
            .instrument(tracing::info_span!("conn", channel, %peer)),
        );
    }
}
